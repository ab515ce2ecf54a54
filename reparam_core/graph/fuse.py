"""``fuse_graph``: trace a model, merge every linear region into one conv, report what happened."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..blocks.base import raise_training
from .analysis import Analysis, analyse
from .emit import to_conv

CONV_FUNCTIONS = {F.conv2d, torch.conv2d}


class GraphRegion(BaseModel):
    output: str
    source: str
    convs_merged: int
    ops_merged: int
    kernel: list[int]
    stride: list[int]
    dilation: list[int]
    groups: int


class UnmergedOp(BaseModel):
    node: str
    op: str
    reason: str
    detail: str


class GraphFusionReport(BaseModel):
    regions: list[GraphRegion]
    convs_before: int
    convs_after: int
    params_before: int
    params_after: int
    unmerged: list[UnmergedOp]


@dataclass
class GraphFusion:
    module: fx.GraphModule
    report: GraphFusionReport


def fuse_graph(model: nn.Module, example_inputs: tuple[Tensor, ...] | Tensor) -> GraphFusion:
    """Merge every maximal linear region of ``model``'s graph into one conv.

    Kernels are derived from the graph itself (convs, eval BNs, adds, constant and per-channel
    scales, average pooling, padding, concatenation), composed in float64, and emitted in the
    model's dtype. Nonlinear ops, border effects, shapes computed at run time and unknown ops end
    a region; each is listed in the report with its reason. The model must be in eval mode.
    """
    if model.training:
        raise_training(type(model).__name__)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad():  # constants computed while tracing carry no autograd history
        gm = fx.GraphModule(model, _ConstantParameterTracer().trace(model))
        ShapeProp(gm).propagate(*inputs)
    convs_before = _count_convs(gm)
    with torch.no_grad():
        analysis = analyse(gm)
        regions = _rewrite(gm, analysis, _dtype(model), _device(model))
    fused = fx.GraphModule(gm, gm.graph)  # keeps only the attributes the new graph uses
    fused.eval()
    report = GraphFusionReport(
        regions=regions,
        convs_before=convs_before,
        convs_after=_count_convs(fused),
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in fused.parameters()),
        unmerged=[
            UnmergedOp(node=r.node, op=r.op, reason=r.kind, detail=r.detail) for r in analysis.refusals
        ],
    )
    return GraphFusion(fused, report)


class _ConstantParameterTracer(fx.Tracer):
    """Parameters and buffers read in ``forward`` stay real tensors, so code that computes kernels
    from them (OREPA's generator, DBB's identity-based 1x1, BN-then-pad values) runs at trace time
    and reaches the graph as constants."""

    def getattr(self, attr: str, attr_val: object, parameter_proxy_cache: dict) -> object:
        return attr_val


def reparameterize_graph(model: nn.Module, example_inputs: tuple[Tensor, ...] | Tensor) -> fx.GraphModule:
    """:func:`fuse_graph` without the report."""
    return fuse_graph(model, example_inputs).module


def _rewrite(
    gm: fx.GraphModule, analysis: Analysis, dtype: torch.dtype, device: torch.device
) -> list[GraphRegion]:
    regions = []
    graph = gm.graph
    replaced: dict[fx.Node, fx.Node] = {}  # a materialised value -> the node that now computes it
    for index, node in enumerate(n for n in list(graph.nodes) if n in analysis.materialise):
        merged = analysis.maps[node]
        source = replaced.get(merged.source, merged.source)  # type: ignore[call-overload]
        if merged.is_identity:
            node.replace_all_uses_with(source)
            replaced[node] = source
            continue
        if merged.convs == 0 and merged.ops <= 1 and _is_plain_conv(gm, node):
            continue
        conv = to_conv(merged, dtype, device)
        name = f"fused_{index}"
        gm.add_submodule(name, conv)
        with graph.inserting_after(node):
            replacement = graph.call_module(name, (source,))
        node.replace_all_uses_with(replacement)
        replaced[node] = replacement
        regions.append(
            GraphRegion(
                output=node.name,
                source=getattr(merged.source, "name", "?"),
                convs_merged=merged.convs,
                ops_merged=merged.ops,
                kernel=list(conv.kernel_size),
                stride=list(conv.stride),
                dilation=list(conv.dilation),
                groups=conv.groups,
            )
        )
    for node in list(graph.nodes):  # shape assertions (timm's BN checks ndim) held when traced
        if node in analysis.shape_checks and node.target is torch._assert:
            graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return regions


def _is_plain_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Conv2d)


def _dynamic(graph: fx.Graph) -> set[fx.Node]:
    dynamic: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(i in dynamic for i in node.all_input_nodes):
            dynamic.add(node)
    return dynamic


def _count_convs(gm: fx.GraphModule) -> int:
    """Convolutions applied to input-dependent tensors (not those computing kernels from parameters)."""
    dynamic = _dynamic(gm.graph)
    count = 0
    for node in gm.graph.nodes:
        if node not in dynamic:
            continue
        is_module = node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Conv2d)
        count += is_module or (node.op == "call_function" and node.target in CONV_FUNCTIONS)
    return count


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters()), torch.get_default_dtype())


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
