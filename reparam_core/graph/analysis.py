"""Which values of an fx graph are linear maps of which inputs, and why the others are not.

Every node is evaluated symbolically: constants (parameters and anything computed from them
alone, such as OREPA's generated kernels) are computed outright; tensors that depend on the
model input are ``AffineMap`` of a *source* (a placeholder, or the output of an op that is not
merged). A value consumed by anything that cannot absorb it is *materialised*: it becomes one conv
and a source for its consumers. Refusals are recorded with their reason.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..fusion.transforms import bn_scale_shift
from .affine import (
    AffineMap,
    Refused,
    add,
    avg_pool_kernel_depthwise,
    compose_conv,
    concat,
    pad,
    scale_channels,
)

NONLINEAR = {
    F.relu,
    torch.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    F.leaky_relu,
    F.elu,
    F.mish,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.softmax,
    torch.softmax,
    F.max_pool2d,
    torch.max_pool2d,
    torch.exp,
    torch.abs,
    torch.clamp,
}
NONLINEAR_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softmax,
    nn.MaxPool2d,
    nn.Mish,
)
PASSTHROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)
ADD = {operator.add, operator.iadd, torch.add}
SUB = {operator.sub, operator.isub, torch.sub}
MUL = {operator.mul, operator.imul, torch.mul}


@dataclass
class Refusal:
    node: str
    op: str
    kind: str
    detail: str


@dataclass
class Analysis:
    maps: dict[fx.Node, AffineMap] = field(default_factory=dict)
    constants: dict[fx.Node, Any] = field(default_factory=dict)
    materialise: set[fx.Node] = field(default_factory=set)
    refusals: list[Refusal] = field(default_factory=list)
    shape_checks: set[fx.Node] = field(default_factory=set)  # values computed from static shapes only


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[str(node.target)]).__name__
    target = node.target
    return getattr(target, "__name__", str(target))


class _Walker:
    def __init__(self, gm: fx.GraphModule, materialised: set[fx.Node]) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.result = Analysis(materialise=set(materialised))

    def run(self) -> Analysis:
        for node in self.gm.graph.nodes:
            self._visit(node)
        return self.result

    # -- values -------------------------------------------------------------------------
    def _value(self, arg: Any) -> Any:
        """A constant's value, an ``AffineMap`` for an input-dependent tensor, or the arg as is."""
        if isinstance(arg, fx.Node):
            if arg in self.result.constants:
                return self.result.constants[arg]
            return self._map_of(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._value(a) for a in arg)
        return arg

    def _map_of(self, node: fx.Node) -> AffineMap:
        if node in self.result.materialise or node not in self.result.maps:
            meta = node.meta.get("tensor_meta")
            if meta is None or len(meta.shape) != 4:
                raise Refused("unsupported op", f"input {node.name} is not a 4-D tensor")
            return AffineMap.identity(node, int(meta.shape[1]))
        return self.result.maps[node]

    def _visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            return
        if node.op == "get_attr":
            self.result.constants[node] = _fetch(self.gm, str(node.target))
            return
        if node.op == "output":
            for arg in node.all_input_nodes:
                self._boundary(arg)
            return
        inputs = node.all_input_nodes
        shape = _shape_query(node)
        if shape is not None:
            self.result.constants[node] = shape
            self.result.shape_checks.add(node)
            return
        if all(i in self.result.constants for i in inputs):
            self.result.constants[node] = self._evaluate(node)
            if any(i in self.result.shape_checks for i in inputs):
                self.result.shape_checks.add(node)
            return
        try:
            result = self._interpret(node)
            self._check_size(node, result)
            self.result.maps[node] = result
        except Refused as refusal:
            self.result.refusals.append(
                Refusal(node.name, _op_name(node, self.modules), refusal.kind, refusal.detail)
            )
            for arg in inputs:
                if arg not in self.result.constants:
                    self._boundary(arg)

    def _boundary(self, node: fx.Node) -> None:
        if node in self.result.maps:
            self.result.materialise.add(node)

    def _check_size(self, node: fx.Node, result: AffineMap) -> None:
        meta = node.meta.get("tensor_meta")
        source = result.source.meta.get("tensor_meta") if isinstance(result.source, fx.Node) else None
        if meta is None or source is None or len(meta.shape) != 4:
            raise Refused("data-dependent shape", "no static 4-D shape recorded for this value")
        expected = result.output_size(int(source.shape[2]), int(source.shape[3]))
        if tuple(meta.shape[2:]) != expected or int(meta.shape[1]) != result.kernel.shape[0]:
            raise Refused(
                "border effects", f"merged map would give {expected}, the op gives {tuple(meta.shape[2:])}"
            )

    def _evaluate(self, node: fx.Node) -> Any:
        args, kwargs = self._value(node.args), {k: self._value(v) for k, v in node.kwargs.items()}
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        return self.modules[str(node.target)](*args, **kwargs)

    # -- ops ----------------------------------------------------------------------------
    def _interpret(self, node: fx.Node) -> AffineMap:
        if node.op == "call_module":
            return self._module(node, self.modules[str(node.target)])
        args = self._value(node.args)
        kwargs = {k: self._value(v) for k, v in node.kwargs.items()}
        target = node.target if node.op == "call_function" else _METHODS.get(str(node.target))
        if target is None:
            raise Refused("unsupported op", f"method .{node.target}()")
        handler = _FUNCTIONS.get(target)  # type: ignore[arg-type]
        if handler is not None:
            return handler(args, kwargs)
        if target in NONLINEAR:
            raise Refused("nonlinear op", _op_name(node, self.modules))
        raise Refused("unsupported op", _op_name(node, self.modules))

    def _module(self, node: fx.Node, module: nn.Module) -> AffineMap:
        x = self._value(node.args[0])
        if isinstance(module, PASSTHROUGH_MODULES) and not module.training:
            return _need_map(x)
        if isinstance(module, nn.Conv2d):
            return compose_conv(
                _need_map(x),
                module.weight.detach(),
                _detached(module.bias),
                _pair(module.stride),
                _padding(module.padding),
                _pair(module.dilation),
                module.groups,
                module.padding_mode,
            )
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training or module.running_mean is None:
                raise Refused("nonlinear op", "batch norm in training mode (batch statistics)")
            return _batch_norm(
                _need_map(x), module.running_mean, module.running_var, module.weight, module.bias, module.eps
            )
        if isinstance(module, nn.AvgPool2d):
            return _avg_pool(
                _need_map(x),
                module.kernel_size,
                module.stride,
                module.padding,
                module.ceil_mode,
                module.count_include_pad,
                module.divisor_override,
            )
        if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
            mode = {"ReflectionPad2d": "reflect", "ReplicationPad2d": "replicate"}.get(
                type(module).__name__, "constant"
            )
            left, right, top, bottom = module.padding
            return pad(_need_map(x), (left, right, top, bottom), mode, float(getattr(module, "value", 0.0)))
        if isinstance(module, NONLINEAR_MODULES):
            raise Refused("nonlinear op", type(module).__name__)
        raise Refused("unsupported op", f"module {type(module).__name__}")


SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype"}


def _shape_query(node: fx.Node) -> Any:
    """``x.shape``, ``x.ndim``, ``x.dtype``, ``x.size()``, ``x.dim()`` of a traced tensor, from its
    recorded metadata (shapes are static in a traced graph); None for anything else."""
    if node.op == "call_function" and node.target is getattr and len(node.args) == 2:
        tensor, attribute = node.args
    elif node.op == "call_method" and node.target in ("size", "dim"):
        tensor, attribute = node.args[0], str(node.target)
    else:
        return None
    meta = tensor.meta.get("tensor_meta") if isinstance(tensor, fx.Node) else None
    if meta is None or attribute not in SHAPE_ATTRIBUTES | {"size", "dim"}:
        return None
    if attribute in ("ndim", "dim"):
        return len(meta.shape)
    if attribute == "dtype":
        return meta.dtype
    if attribute == "size" and len(node.args) > 1:
        return int(meta.shape[node.args[1]])
    return torch.Size(meta.shape)


def _detached(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return tensor.detach() if tensor is not None else None


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _padding(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        raise Refused("border effects", f"padding={value!r}")
    return _pair(value)


def _need_map(value: Any) -> AffineMap:
    if not isinstance(value, AffineMap):
        raise Refused("unsupported op", "operand is not a tensor that depends on the input")
    return value


def _batch_norm(x: AffineMap, mean: Any, var: Any, weight: Any, bias: Any, eps: float) -> AffineMap:
    def f64(value: Any) -> torch.Tensor | None:
        return value.double() if value is not None else None

    t, shift = bn_scale_shift(mean.double(), var.double(), f64(weight), f64(bias), eps)
    return scale_channels(x, t, shift)


def _avg_pool(
    x: AffineMap, kernel: Any, stride: Any, padding: Any, ceil: bool, include_pad: bool, divisor: Any
) -> AffineMap:
    if ceil or not include_pad or divisor is not None:
        raise Refused(
            "border effects", "average pooling with ceil_mode, count_include_pad=False or a divisor"
        )
    size = _pair(kernel)
    channels = x.kernel.shape[0]
    return compose_conv(
        x,
        avg_pool_kernel_depthwise(channels, size),
        None,
        _pair(stride or kernel),
        _pair(padding),
        (1, 1),
        channels,
        "zeros",
    )


def _constant_factor(value: Any) -> torch.Tensor:
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float64)
    if isinstance(value, torch.Tensor) and (
        value.numel() == 1 or (value.ndim >= 3 and value.shape[-2:] == (1, 1))
    ):
        return value.detach().double().reshape(-1)
    raise Refused("unsupported op", "scales by a tensor that is not per-channel")


def _add(args: tuple, kwargs: dict, sign: float = 1.0) -> AffineMap:
    if kwargs.get("alpha", 1) != 1:
        sign = sign * float(kwargs["alpha"])
    a, b = args[0], args[1]
    if isinstance(a, AffineMap) and isinstance(b, AffineMap):
        return add(a, b, sign)
    if isinstance(a, AffineMap):
        return scale_channels(a, torch.ones(1, dtype=torch.float64), sign * _constant_factor(b))
    if isinstance(b, AffineMap):  # constant +/- map
        return scale_channels(b, torch.full((1,), sign, dtype=torch.float64), _constant_factor(a))
    raise Refused("unsupported op", "add without an input-dependent tensor")


def _mul(args: tuple, kwargs: dict) -> AffineMap:
    a, b = args[0], args[1]
    if isinstance(a, AffineMap) and isinstance(b, AffineMap):
        raise Refused("nonlinear op", "product of two input-dependent tensors (gating)")
    x, factor = (a, b) if isinstance(a, AffineMap) else (b, a)
    return scale_channels(_need_map(x), _constant_factor(factor))


def _div(args: tuple, kwargs: dict) -> AffineMap:
    if isinstance(args[1], AffineMap):
        raise Refused("nonlinear op", "division by an input-dependent tensor")
    return scale_channels(_need_map(args[0]), 1.0 / _constant_factor(args[1]))


def _conv(args: tuple, kwargs: dict) -> AffineMap:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    values = {**dict(zip(names, args, strict=False)), **kwargs}
    if isinstance(values["weight"], AffineMap):
        raise Refused("nonlinear op", "convolution with an input-dependent kernel")
    return compose_conv(
        _need_map(values["input"]),
        values["weight"].detach(),
        _detached(values.get("bias")),
        _pair(values.get("stride", 1)),
        _padding(values.get("padding", 0)),
        _pair(values.get("dilation", 1)),
        int(values.get("groups", 1)),
        "zeros",
    )


def _functional_pad(args: tuple, kwargs: dict) -> AffineMap:
    names = ("input", "pad", "mode", "value")
    values = {**dict(zip(names, args, strict=False)), **kwargs}
    amounts = values["pad"]
    if len(amounts) != 4 or not all(isinstance(a, int) for a in amounts):
        raise Refused("data-dependent shape", "padding amounts computed from the input")
    return pad(
        _need_map(values["input"]),
        tuple(amounts),
        values.get("mode", "constant"),
        float(values.get("value") or 0.0),
    )


def _functional_bn(args: tuple, kwargs: dict) -> AffineMap:
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    values = {**dict(zip(names, args, strict=False)), **kwargs}
    if values.get("training", False):
        raise Refused("nonlinear op", "batch norm in training mode (batch statistics)")
    return _batch_norm(
        _need_map(values["input"]),
        values["running_mean"],
        values["running_var"],
        values.get("weight"),
        values.get("bias"),
        float(values.get("eps", 1e-5)),
    )


def _functional_avg_pool(args: tuple, kwargs: dict) -> AffineMap:
    names = (
        "input",
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
    )
    v = {**dict(zip(names, args, strict=False)), **kwargs}
    return _avg_pool(
        _need_map(v["input"]),
        v["kernel_size"],
        v.get("stride"),
        v.get("padding", 0),
        bool(v.get("ceil_mode", False)),
        bool(v.get("count_include_pad", True)),
        v.get("divisor_override"),
    )


def _cat(args: tuple, kwargs: dict) -> AffineMap:
    tensors = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if dim not in (1, -3) or not all(isinstance(t, AffineMap) for t in tensors):
        raise Refused("unsupported op", f"concatenation along dim {dim} or of constants")
    return concat(list(tensors))


def _identity(args: tuple, kwargs: dict) -> AffineMap:
    return _need_map(args[0])


def _dropout(args: tuple, kwargs: dict) -> AffineMap:
    training = kwargs.get("training", args[2] if len(args) > 2 else True)
    if training:
        raise Refused("nonlinear op", "dropout in training mode")
    return _need_map(args[0])


_FUNCTIONS: dict[Any, Callable[[tuple, dict], AffineMap]] = {
    **{f: _add for f in ADD},
    **{f: (lambda a, k: _add(a, k, -1.0)) for f in SUB},
    **{f: _mul for f in MUL},
    operator.truediv: _div,
    torch.div: _div,
    operator.neg: lambda a, k: scale_channels(_need_map(a[0]), torch.tensor(-1.0, dtype=torch.float64)),
    F.conv2d: _conv,
    torch.conv2d: _conv,
    F.pad: _functional_pad,
    F.batch_norm: _functional_bn,
    F.avg_pool2d: _functional_avg_pool,
    torch.cat: _cat,
    F.dropout: _dropout,
    "contiguous": _identity,
    "clone": _identity,
}
_METHODS: dict[str, Any] = {
    "add": torch.add,
    "add_": torch.add,
    "sub": torch.sub,
    "sub_": torch.sub,
    "mul": torch.mul,
    "mul_": torch.mul,
    "div": torch.div,
    "contiguous": "contiguous",
    "clone": "clone",
}


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def analyse(gm: fx.GraphModule) -> Analysis:
    """Run the walk to a fixed point: materialising a value can change what its consumers merge."""
    materialised: set[fx.Node] = set()
    refusals: dict[str, Refusal] = {}  # a refusal that materialised a value stays in the report
    while True:
        result = _Walker(gm, materialised).run()
        refusals.update((r.node, r) for r in result.refusals)
        if result.materialise == materialised:
            result.refusals = list(refusals.values())
            return result
        materialised = result.materialise
