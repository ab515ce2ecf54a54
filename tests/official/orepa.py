"""JUGGHM/OREPA_CVPR2022 (commit 3ed037b) as its training code computes, written down independently
for the tests: official parameter shapes and names, its ``weight_gen`` formulas (``dwsc2full``'s
``[out/g, g, in/g, 8]`` view, ``id_tensor`` buffers, the stored averaging and prior buffers, the
uncorrected cross-correlation chain of ``OREPA_LargeConv``, ``OREPA_3x3_RepVGG``), and the
forward of a VGG-style net of such blocks (``models/repvgg.py`` with ``stage0``, ``stageN.i``,
``linear``). No code of ours is used here."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .random_params import Params, bn_params, randn


@dataclass(frozen=True)
class Layer:
    prefix: str  # e.g. "stage0", "stage1.0"
    kind: str  # "orepa", "orepa_1x1", "orepa_large", "orepa_vgg"
    cin: int
    cout: int
    k: int = 3
    stride: int = 1
    groups: int = 1


def _id_tensor(rows: int, per_group: int) -> Tensor:
    ident = torch.zeros(rows, per_group, 1, 1)  # float32, as the official buffer
    for r in range(rows):
        ident[r, r % per_group, 0, 0] = 1
    return ident


def _prior(out: int, k: int, gen: torch.Generator) -> Tensor:
    prior = torch.randn(out, k, k, generator=gen)  # taps the official fre_init leaves uninitialised
    half = out / 2
    for i in range(out):
        for h in range(3):
            for w in range(3):
                freq = (h + 0.5) * (i + 1) if i < half else (w + 0.5) * (i + 1 - half)
                prior[i, h, w] = torch.cos(torch.tensor(torch.pi * freq / 3))
    return prior


def orepa_params(p: str, cin: int, cout: int, k: int, groups: int, gen: torch.Generator) -> Params:
    """The state of an official ``OREPA`` (weight_only: no ``bn``)."""
    ig = cin // groups
    internal = cin if groups <= 4 else 2 * cin
    fan = ig * k * k
    return {
        f"{p}.weight_orepa_origin": randn(gen, cout, ig, k, k, std=fan**-0.5),
        f"{p}.weight_orepa_avg_conv": randn(gen, cout, ig, 1, 1, std=ig**-0.5),
        f"{p}.weight_orepa_pfir_conv": randn(gen, cout, ig, 1, 1, std=ig**-0.5),
        f"{p}.weight_orepa_avg_avg": torch.ones(k, k).mul(1.0 / k / k),  # float32 1/k^2
        f"{p}.weight_orepa_1x1": randn(gen, cout, ig, 1, 1, std=ig**-0.5),
        f"{p}.weight_orepa_1x1_kxk_idconv1": randn(gen, internal, ig, 1, 1, std=0.3),
        f"{p}.id_tensor": _id_tensor(internal, ig),
        f"{p}.weight_orepa_1x1_kxk_conv2": randn(gen, cout, internal // groups, k, k, std=fan**-0.5),
        f"{p}.weight_orepa_gconv_dw": randn(gen, cin * 8, 1, k, k, std=0.3),
        f"{p}.weight_orepa_gconv_pw": randn(gen, cout, cin * 8 // groups, 1, 1, std=(8 * ig) ** -0.5),
        f"{p}.vector": randn(gen, 6, cout, std=0.5),
        f"{p}.weight_orepa_prior": _prior(cout, k, gen),
    }


def orepa_weight(s: Params, p: str, cin: int, groups: int) -> Tensor:
    """``OREPA.weight_gen``."""
    v = s[f"{p}.vector"].double()
    k = s[f"{p}.weight_orepa_origin"].shape[-1]

    def rows(w: Tensor, r: int) -> Tensor:
        return torch.einsum("oihw,o->oihw", w, v[r])

    origin = rows(s[f"{p}.weight_orepa_origin"], 0)
    avg_conv = s[f"{p}.weight_orepa_avg_conv"].squeeze(3).squeeze(2)
    avg = rows(torch.einsum("oi,hw->oihw", avg_conv, s[f"{p}.weight_orepa_avg_avg"].double()), 1)
    pfir_conv = s[f"{p}.weight_orepa_pfir_conv"].squeeze(3).squeeze(2)
    pfir = rows(torch.einsum("oi,ohw->oihw", pfir_conv, s[f"{p}.weight_orepa_prior"].double()), 2)
    conv1 = (s[f"{p}.weight_orepa_1x1_kxk_idconv1"] + s[f"{p}.id_tensor"].double()).squeeze(3).squeeze(2)
    conv2 = s[f"{p}.weight_orepa_1x1_kxk_conv2"]
    if groups > 1:
        t, ig = conv1.shape
        o, tg, h, w = conv2.shape
        seq = torch.einsum(
            "gti,gothw->goihw", conv1.view(groups, t // groups, ig), conv2.view(groups, o // groups, tg, h, w)
        ).reshape(o, ig, h, w)
    else:
        seq = torch.einsum("ti,othw->oihw", conv1, conv2)
    seq = rows(seq, 3)
    one = rows(F.pad(s[f"{p}.weight_orepa_1x1"], [(k - 1) // 2] * 4), 4)
    gconv = rows(_dwsc2full(s[f"{p}.weight_orepa_gconv_dw"], s[f"{p}.weight_orepa_gconv_pw"], cin, groups), 5)
    return origin + avg + one + seq + pfir + gconv


def _dwsc2full(dw: Tensor, pw: Tensor, groups: int, groups_conv: int = 1) -> Tensor:
    t, ig, h, w = dw.shape
    o = pw.shape[0]
    tg, i = t // groups, ig * groups
    ogc, groups_gc = o // groups_conv, groups // groups_conv
    dw = dw.view(groups_conv, groups_gc, tg, ig, h, w)
    pw = pw.squeeze().view(ogc, groups_conv, groups_gc, tg)
    return torch.einsum("cgtihw,ocgt->cogihw", dw, pw).reshape(o, i // groups_conv, h, w)


def orepa_1x1_params(p: str, cin: int, cout: int, gen: torch.Generator) -> Params:
    t = cin if cout > cin else cout
    return {
        f"{p}.weight_or1x1_origin": randn(gen, cout, cin, 1, 1, std=cin**-0.5),
        f"{p}.weight_or1x1_l2i_conv1": randn(gen, t, cin, 1, 1, std=cin**-0.5),
        f"{p}.weight_or1x1_l2i_conv2": randn(gen, cout, t, 1, 1, std=t**-0.5),
        f"{p}.vector": randn(gen, 2, cout, std=0.5),
    }


def orepa_1x1_weight(s: Params, p: str) -> Tensor:
    v = s[f"{p}.vector"]
    origin = torch.einsum("oihw,o->oihw", s[f"{p}.weight_or1x1_origin"], v[0])
    l2i = torch.einsum("tihw,othw->oihw", s[f"{p}.weight_or1x1_l2i_conv1"], s[f"{p}.weight_or1x1_l2i_conv2"])
    return origin + torch.einsum("oihw,o->oihw", l2i, v[1])


def large_params(p: str, cin: int, cout: int, k: int, gen: torch.Generator) -> Params:
    widths = [cin] + [cout] * ((k - 1) // 2)
    state: Params = {}
    for i in range(len(widths) - 1):
        state |= orepa_params(f"{p}.weight{i}", widths[i], widths[i + 1], 3, 1, gen)
    return state


def large_weight(s: Params, p: str, cin: int, cout: int, k: int) -> Tensor:
    """``OREPA_LargeConv.weight_gen``: chained by conv2d(W.T, W_next, padding=2), no flip."""
    layers = (k - 1) // 2
    weight = orepa_weight(s, f"{p}.weight0", cin, 1).transpose(0, 1)
    for i in range(1, layers):
        weight = F.conv2d(weight, orepa_weight(s, f"{p}.weight{i}", cout, 1), padding=2)
    return weight.transpose(0, 1)


def orepa_vgg_params(p: str, cin: int, cout: int, stride: int, gen: torch.Generator) -> Params:
    d = f"{p}.rbr_dense"
    identity = cin == cout and stride == 1
    state: Params = {
        f"{d}.weight_rbr_origin": randn(gen, cout, cin, 3, 3, std=(9 * cin) ** -0.5),
        f"{d}.weight_rbr_avg_conv": randn(gen, cout, cin, 1, 1, std=cin**-0.5),
        f"{d}.weight_rbr_pfir_conv": randn(gen, cout, cin, 1, 1, std=cin**-0.5),
        f"{d}.weight_rbr_avg_avg": torch.ones(3, 3).mul(1.0 / 3 / 3),
        f"{d}.weight_rbr_1x1_kxk_idconv1": randn(gen, cin, cin, 1, 1, std=0.3),
        f"{d}.id_tensor": _id_tensor(cin, cin),
        f"{d}.weight_rbr_1x1_kxk_conv2": randn(gen, cout, cin, 3, 3, std=(9 * cin) ** -0.5),
        f"{d}.weight_rbr_gconv_dw": randn(gen, cin * 8, 1, 3, 3, std=0.3),
        f"{d}.weight_rbr_gconv_pw": randn(gen, cout, cin * 8, 1, 1, std=(8 * cin) ** -0.5),
        f"{d}.vector": randn(gen, 6 if identity else 5, cout, std=0.5),
        f"{d}.weight_rbr_prior": _prior(cout, 3, gen),
        **bn_params(f"{d}.bn", cout, gen),
        f"{p}.rbr_1x1.conv.weight": randn(gen, cout, cin, 1, 1, std=cin**-0.5),
        **bn_params(f"{p}.rbr_1x1.bn", cout, gen),
    }
    if identity:
        state |= bn_params(f"{p}.rbr_identity", cout, gen)
    return state


def orepa_vgg_dense_weight(s: Params, d: str) -> Tensor:
    """``OREPA_3x3_RepVGG.weight_gen`` (groups 1)."""
    v = s[f"{d}.vector"]

    def rows(w: Tensor, r: int) -> Tensor:
        return torch.einsum("oihw,o->oihw", w, v[r])

    origin = rows(s[f"{d}.weight_rbr_origin"], 0)
    avg = rows(
        torch.einsum("oihw,hw->oihw", s[f"{d}.weight_rbr_avg_conv"], s[f"{d}.weight_rbr_avg_avg"].double()), 1
    )
    pfir = rows(
        torch.einsum("oihw,ohw->oihw", s[f"{d}.weight_rbr_pfir_conv"], s[f"{d}.weight_rbr_prior"].double()), 2
    )
    conv1 = (s[f"{d}.weight_rbr_1x1_kxk_idconv1"] + s[f"{d}.id_tensor"].double()).squeeze()
    seq = rows(torch.einsum("ti,othw->oihw", conv1, s[f"{d}.weight_rbr_1x1_kxk_conv2"]), 3)
    dw, pw = s[f"{d}.weight_rbr_gconv_dw"], s[f"{d}.weight_rbr_gconv_pw"]
    cin = dw.shape[0] // 8
    dense = torch.einsum("gtihw,ogt->ogihw", dw.view(cin, 8, 1, 3, 3), pw.squeeze().view(pw.shape[0], cin, 8))
    gconv = rows(dense.reshape(pw.shape[0], cin, 3, 3), 4)
    return origin + avg + seq + pfir + gconv


def _bn(x: Tensor, s: Params, p: str) -> Tensor:
    return F.batch_norm(
        x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"], False, 0.0, 1e-5
    )


def block_forward(x: Tensor, s: Params, layer: Layer) -> Tensor:
    p, k = layer.prefix, layer.k
    if layer.kind == "orepa_vgg":
        d = f"{p}.rbr_dense"
        out = _bn(F.conv2d(x, orepa_vgg_dense_weight(s, d), stride=layer.stride, padding=1), s, f"{d}.bn")
        one = F.conv2d(x, s[f"{p}.rbr_1x1.conv.weight"], stride=layer.stride)
        out = out + _bn(one, s, f"{p}.rbr_1x1.bn")
        if f"{p}.rbr_identity.weight" in s:
            out = out + _bn(x, s, f"{p}.rbr_identity")
        return torch.relu(out)
    if layer.kind == "orepa":
        weight = orepa_weight(s, p, layer.cin, layer.groups)
    elif layer.kind == "orepa_1x1":
        weight = orepa_1x1_weight(s, p)
    else:
        weight = large_weight(s, p, layer.cin, layer.cout, k)
    out = F.conv2d(x, weight, stride=layer.stride, padding=k // 2, groups=layer.groups)
    return torch.relu(_bn(out, s, f"{p}.bn"))


def net_params(layers: list[Layer], classes: int, gen: torch.Generator) -> Params:
    state: Params = {}
    for layer in layers:
        p = layer.prefix
        if layer.kind == "orepa":
            state |= orepa_params(p, layer.cin, layer.cout, layer.k, layer.groups, gen) | bn_params(
                f"{p}.bn", layer.cout, gen
            )
        elif layer.kind == "orepa_1x1":
            state |= orepa_1x1_params(p, layer.cin, layer.cout, gen) | bn_params(f"{p}.bn", layer.cout, gen)
        elif layer.kind == "orepa_large":
            state |= large_params(p, layer.cin, layer.cout, layer.k, gen) | bn_params(
                f"{p}.bn", layer.cout, gen
            )
        else:
            state |= orepa_vgg_params(p, layer.cin, layer.cout, layer.stride, gen)
    width = layers[-1].cout
    state["linear.weight"] = randn(gen, classes, width, std=width**-0.5)
    state["linear.bias"] = randn(gen, classes, std=0.1)
    return state


def net_forward(x: Tensor, s: Params, layers: list[Layer]) -> Tensor:
    for layer in layers:
        x = block_forward(x, s, layer)
    return F.linear(x.mean(dim=(2, 3)), s["linear.weight"], s["linear.bias"])
