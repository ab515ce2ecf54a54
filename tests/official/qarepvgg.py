"""The official QARepVGG blocks as their training code computes, written down independently for the
tests: cxxgtxy/QARepVGG ``repvgg.py`` (``QARepVGGBlockV1``, ``QARepVGGBlockV2``, ``SEBlock``, the
``RepVGG`` net with ``stage0``, ``stageN.i``, ``linear`` and its ``g2_map``/``g4_map``) and
meituan/YOLOv6 ``yolov6/layers/common.py`` (``QARepVGGBlock``, ``QARepVGGBlockV2`` with its
``rbr_avg``). Key names are those the official modules register; the forward is theirs in eval
mode (``drop_path`` is the identity there). No code of ours is used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .random_params import Params, bn_params, randn

KINDS = ("cxx_v1", "cxx_v2", "yolov6", "yolov6_v2")  # official class: see BLOCK_CLASS
BLOCK_CLASS = {
    "cxx_v1": "cxxgtxy QARepVGGBlockV1",
    "cxx_v2": "cxxgtxy QARepVGGBlockV2",
    "yolov6": "YOLOv6 QARepVGGBlock",
    "yolov6_v2": "YOLOv6 QARepVGGBlockV2",
}
EPS = 1e-5  # nn.BatchNorm2d's default: every official BN here


@dataclass(frozen=True)
class Layer:
    prefix: str  # "stage0", "stage1.0", ...
    kind: str
    cin: int
    cout: int
    stride: int = 1
    groups: int = 1
    se: bool = False  # use_se (cxxgtxy only: YOLOv6 raises NotImplementedError)

    @property
    def identity(self) -> bool:  # ``out_channels == in_channels and stride == 1``
        return self.cin == self.cout and self.stride == 1


def _conv(gen: torch.Generator, cout: int, cin_per_group: int, k: int) -> Tensor:
    return randn(gen, cout, cin_per_group, k, k, std=(3 * cin_per_group * k * k) ** -0.5)


def block_params(layer: Layer, gen: torch.Generator) -> Params:
    """What the official block's ``state_dict()`` holds."""
    p, cin, cout, ig = layer.prefix, layer.cin, layer.cout, layer.cin // layer.groups
    state: Params = {}
    if layer.se:  # SEBlock(out_channels, internal_neurons=out_channels // 16): down, up (1x1, bias)
        rd = cout // 16
        state |= {
            f"{p}.se.down.weight": _conv(gen, rd, cout, 1),
            f"{p}.se.down.bias": randn(gen, rd, std=0.1),
            f"{p}.se.up.weight": _conv(gen, cout, rd, 1),
            f"{p}.se.up.bias": randn(gen, cout, std=0.1),
        }
    # rbr_dense: conv_bn (cxxgtxy) / ConvModule(bias=False, activation_type=None) (YOLOv6)
    state[f"{p}.rbr_dense.conv.weight"] = _conv(gen, cout, ig, 3)
    state |= bn_params(f"{p}.rbr_dense.bn", cout, gen)
    if layer.kind == "cxx_v1":  # RepVGGBlock's conv_bn 1x1 and BatchNorm2d identity are kept
        state[f"{p}.rbr_1x1.conv.weight"] = _conv(gen, cout, ig, 1)
        state |= bn_params(f"{p}.rbr_1x1.bn", cout, gen)
        if layer.identity:
            state |= bn_params(f"{p}.rbr_identity", cin, gen)
    else:  # nn.Conv2d(..., 1, bias=False); identity and avg pooling have no tensors
        state[f"{p}.rbr_1x1.weight"] = _conv(gen, cout, ig, 1)
    state |= bn_params(f"{p}.bn", cout, gen)
    return state


def _bn(x: Tensor, s: Params, p: str) -> Tensor:
    return F.batch_norm(
        x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"], False, 0.0, EPS
    )


def _se(x: Tensor, s: Params, p: str) -> Tensor:
    """SEBlock.forward."""
    pooled = x.mean((2, 3), keepdim=True)
    gate = F.conv2d(pooled, s[f"{p}.se.down.weight"], s[f"{p}.se.down.bias"])
    gate = F.conv2d(F.relu(gate), s[f"{p}.se.up.weight"], s[f"{p}.se.up.bias"])
    return x * torch.sigmoid(gate).view(-1, x.shape[1], 1, 1)


def block_forward(x: Tensor, s: Params, layer: Layer) -> Tensor:
    """``nonlinearity(bn(se(rbr_dense(x) + rbr_1x1(x) + id_out [+ avg_out])))`` in eval mode."""
    p, st, g = layer.prefix, layer.stride, layer.groups
    dense = _bn(
        F.conv2d(x, s[f"{p}.rbr_dense.conv.weight"], stride=st, padding=1, groups=g), s, f"{p}.rbr_dense.bn"
    )
    if layer.kind == "cxx_v1":
        one = _bn(F.conv2d(x, s[f"{p}.rbr_1x1.conv.weight"], stride=st, groups=g), s, f"{p}.rbr_1x1.bn")
        ident = _bn(x, s, f"{p}.rbr_identity") if layer.identity else 0
    else:
        one = F.conv2d(x, s[f"{p}.rbr_1x1.weight"], stride=st, groups=g)
        ident = x if layer.identity else 0
    out = dense + one + ident
    if layer.kind == "yolov6_v2" and layer.identity:  # nn.AvgPool2d(3, stride, padding=1)
        out = out + F.avg_pool2d(x, 3, st, 1)
    if layer.se:
        out = _se(out, s, p)
    return F.relu(_bn(out, s, f"{p}.bn"))


def repvgg_layers(
    kind: str,
    stem_width: int,
    stages: list[tuple[int, int]],
    groups_map: dict[int, int] | None = None,
    use_se: bool = False,
    strides: tuple[int, ...] = (2, 2, 2, 2),
) -> list[Layer]:
    """``RepVGG.__init__``: ``stage0`` (3 -> stem, stride 2, groups 1), then per stage ``(depth,
    width)`` blocks, the first at the stage's stride, groups from ``override_groups_map`` by layer
    index counted from 1; ``use_se`` on every block, the stem's too."""
    groups_map = groups_map or {}
    layers = [Layer("stage0", kind, 3, stem_width, 2, 1, use_se)]
    cin, index = stem_width, 1
    for n, ((depth, width), stride) in enumerate(zip(stages, strides, strict=False), start=1):
        for i in range(depth):
            g = groups_map.get(index, 1)
            layers.append(Layer(f"stage{n}.{i}", kind, cin, width, stride if i == 0 else 1, g, use_se))
            cin, index = width, index + 1
    return layers


G2_MAP = {layer: 2 for layer in range(2, 27, 2)}  # optional_groupwise_layers
G4_MAP = {layer: 4 for layer in range(2, 27, 2)}


def preset_layers(
    kind: str, num_blocks: list[int], multipliers: list[float], groups_map: dict[int, int] | None = None
) -> list[Layer]:
    """``create_QARepVGGBlockV2_A0`` and the like: widths ``int(64a), int(128a), int(256a),
    int(512b)``, stem ``min(64, int(64a))``."""
    widths = [int(base * m) for base, m in zip((64, 128, 256, 512), multipliers, strict=True)]
    return repvgg_layers(kind, min(64, widths[0]), list(zip(num_blocks, widths, strict=True)), groups_map)


def net_params(layers: list[Layer], classes: int, gen: torch.Generator) -> Params:
    state: Params = {}
    for layer in layers:
        state |= block_params(layer, gen)
    width = layers[-1].cout
    state["linear.weight"] = randn(gen, classes, width, std=width**-0.5)
    state["linear.bias"] = randn(gen, classes, std=0.1)
    return state


def net_forward(x: Tensor, s: Params, layers: list[Layer]) -> Tensor:
    """``RepVGG.forward``: the stages, global average pooling, ``linear``."""
    for layer in layers:
        x = block_forward(x, s, layer)
    return F.linear(x.mean(dim=(2, 3)), s["linear.weight"], s["linear.bias"])
