"""Checkpoint key layouts: ours, the papers' official code, timm and MMPretrain, mapped onto ours.

The layout is detected, not declared: every known format's renaming is tried and the one that
matches the model's own keys best wins. Whether a checkpoint is in training or deploy (already
fused) form is read from the keys too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import Tensor

Rule = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]


def _rules(*pairs: tuple[str, str | Callable[[re.Match[str]], str]]) -> tuple[Rule, ...]:
    return tuple((re.compile(pattern), replacement) for pattern, replacement in pairs)


def _stage(offset: int) -> Callable[[re.Match[str]], str]:
    return lambda m: f"stages.{int(m.group(1)) - offset}."


@dataclass(frozen=True)
class KeyFormat:
    """A source layout: regex renames applied in order, then ``moves`` (renames that depend on the
    block's other keys), and the keys that only this layout has (``markers``, to name it without a
    model to match against)."""

    name: str
    rules: tuple[Rule, ...] = ()
    markers: re.Pattern[str] | None = None
    moves: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None

    def map_key(self, key: str) -> str:
        for pattern, replacement in self.rules:
            key = pattern.sub(replacement, key)
        return key

    def apply(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        mapped = {self.map_key(k): v for k, v in state.items()}
        return self.moves(mapped) if self.moves is not None else mapped


_BLOCK_BN = re.compile(r"^(.*\.)?bn\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def _bn_after_se(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """QARepVGG with SE: the official block's post-sum ``bn`` follows its SE gate, so ours lives in
    the SE module (``se.bn``). Only blocks with RepVGG branches, an SE and a block-level ``bn`` move
    (RepOpt-VGG's CSLA blocks keep their ``bn``: it comes before their SE)."""

    def target(key: str) -> str:
        match = _BLOCK_BN.match(key)
        if match is None:
            return key
        block = match.group(1) or ""
        if f"{block}se.reduce.weight" in state and f"{block}conv_kxk.conv.weight" in state:
            return f"{block}se.bn.{match.group(2)}"
        return key

    return {target(k): v for k, v in state.items()}


_BLOCK_OFFICIAL = (
    # RepVGG (DingXiaoH/RepVGG) and RepOpt-VGG; QARepVGG (cxxgtxy/QARepVGG, and YOLOv6's
    # QARepVGGBlock / QARepVGGBlockV2: the same block keys) adds a block-level post-sum ``bn``
    (r"\.rbr_dense\.", ".conv_kxk."),
    (r"\.rbr_1x1\.", ".conv_1x1."),
    (r"\.rbr_identity\.", ".identity."),
    (r"\.se\.down\.", ".se.reduce."),
    (r"\.se\.up\.", ".se.expand."),
    # MobileOne (apple/ml-mobileone)
    (r"\.rbr_conv\.", ".conv_kxk."),
    (r"\.rbr_scale\.", ".conv_scale."),
    (r"\.rbr_skip\.", ".identity."),
    # ACNet
    (r"\.(square|ver|hor)_conv\.", r".\1.conv."),
    (r"\.(square|ver|hor)_bn\.", r".\1.bn."),
    # DBB
    (r"\.dbb_origin\.", ".origin."),
    (r"\.dbb_1x1_kxk\.(idconv1|conv1)\.", ".seq_conv1."),
    (r"\.dbb_1x1_kxk\.bn1\.bn\.", ".seq_bn_pad.bn."),
    (r"\.dbb_1x1_kxk\.conv2\.", ".seq_conv2."),
    (r"\.dbb_1x1_kxk\.bn2\.", ".seq_bn."),
    (r"\.dbb_1x1\.", ".conv_1x1."),
    (r"\.dbb_avg\.conv\.", ".avg_conv."),
    (r"\.dbb_avg\.bn\.bn\.", ".avg_bn_pad.bn."),
    (r"\.dbb_avg\.avgbn\.", ".avg_bn."),
    # OREPA, OREPA_1x1, OREPA_LargeConv (weight0, weight1, ...) and OREPA-VGG (rbr_dense -> conv_kxk)
    # use the official parameter and buffer names: nothing to rename.
)

FORMATS: tuple[KeyFormat, ...] = (
    KeyFormat("native"),
    KeyFormat(
        "official",
        _rules(
            (r"^stage0\.", "stem."),
            (r"^stage(\d+)\.", _stage(1)),
            (r"^linear\.", "head.fc."),
            *_BLOCK_OFFICIAL,
        ),
        moves=_bn_after_se,
        markers=re.compile(
            r"^stage0\.|^linear\.|\.(rbr_\w+|square_conv|dbb_\w+|weight_(orepa|or1x1|rbr)_\w+)"
        ),
    ),
    KeyFormat(
        "timm",
        _rules((r"\.attn\.fc1\.", ".se.reduce."), (r"\.attn\.fc2\.", ".se.expand.")),
        # timm's byobnet names RepVGG / MobileOne branches as our own layout does.
        markers=re.compile(
            r"\.attn\.fc[12]\.|\.reparam_conv\.|^(stem|stages\.\d+\.\d+)\.(conv_kxk|conv_1x1|conv_scale)\."
        ),
    ),
    KeyFormat(
        "mmpretrain",
        _rules(
            (r"^backbone\.(stem|stage_?0)\.", "stem."),
            (r"^backbone\.stage_?(\d+)\.", _stage(1)),
            (r"\.branch_3x3\.", ".conv_kxk."),
            (r"\.branch_1x1\.", ".conv_1x1."),
            (r"\.branch_conv_list\.", ".conv_kxk."),
            (r"\.branch_scale\.", ".conv_scale."),
            (r"\.branch_norm\.", ".identity."),
            (r"\.norm\.", ".bn."),
            (r"\.(se_layer|se)\.conv1\.conv\.", ".se.reduce."),
            (r"\.(se_layer|se)\.conv2\.conv\.", ".se.expand."),
        ),
        markers=re.compile(r"^backbone\.|\.branch_(3x3|1x1|norm|conv_list|scale|reparam)\."),
    ),
)
FORMATS_BY_NAME = {fmt.name: fmt for fmt in FORMATS}

# Keys that only a fused (deploy-form) checkpoint has, by source.
DEPLOY_MARKERS = re.compile(
    r"\.(rbr_reparam|reparam_conv|branch_reparam|fused_conv|dbb_reparam|orepa_reparam|or1x1_reparam"
    r"|or_large_reparam)\."
)

FAMILY_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("mobileone", re.compile(r"\.(conv_kxk\.\d+|rbr_conv|branch_conv_list)\.")),
    ("orepa_vgg", re.compile(r"\.weight_rbr_origin$")),
    ("orepa", re.compile(r"\.weight_(orepa|or1x1)_")),
    ("dbb", re.compile(r"\.(dbb_origin|origin)\.")),
    ("acb", re.compile(r"\.(square_conv|square\.conv)\.")),
    ("csla", re.compile(r"\.scale_conv\.")),
    ("repvgg", re.compile(r"\.(rbr_dense|conv_kxk|branch_3x3)\.")),
    ("conv_bn", re.compile(r"\.conv\.weight$")),
    # deploy (already fused) layouts
    ("repvgg", re.compile(r"\.rbr_reparam\.weight$")),
    ("acb", re.compile(r"\.fused_conv\.weight$")),
    ("dbb", re.compile(r"\.dbb_reparam\.weight$")),
    ("orepa", re.compile(r"\.(orepa_reparam|or1x1_reparam|or_large_reparam)\.weight$")),
)
# timm's and MMPretrain's fused convs: RepVGG, or MobileOne when some are depthwise.
FUSED_SHARED = re.compile(r"\.(reparam_conv|branch_reparam)\.weight$")


@dataclass(frozen=True)
class FormatMatch:
    """The best layout for a checkpoint against a model's expected keys."""

    format: str
    state: dict[str, Tensor]
    matched: int
    expected: int

    @property
    def coverage(self) -> float:
        return self.matched / self.expected if self.expected else 0.0


def detect_format(state: dict[str, Tensor], expected: Iterable[str]) -> FormatMatch:
    """Try every format; the one whose renamed keys hit most of ``expected`` wins (ties: listed order)."""
    wanted = set(expected)
    best: FormatMatch | None = None
    for fmt in FORMATS:
        mapped = fmt.apply(state)
        hits = len(wanted.intersection(mapped))
        if best is None or hits > best.matched:
            best = FormatMatch(fmt.name, mapped, hits, len(wanted))
        if hits == len(wanted) == len(mapped):  # a perfect fit: no other layout can do better
            break
    assert best is not None
    return best


def identify_format(keys: Iterable[str]) -> KeyFormat:
    """The layout whose characteristic keys appear most (``native`` when none stands out), for a
    checkpoint with no model to match against (:func:`detect_format` is the exact test)."""
    keys = list(keys)
    counts = {
        fmt: sum(1 for k in keys if fmt.markers.search(k)) for fmt in FORMATS if fmt.markers is not None
    }
    best, count = max(counts.items(), key=lambda item: item[1])
    return best if count else FORMATS_BY_NAME["native"]


def is_deploy_form(keys: Iterable[str], deploy_expected: Iterable[str] = ()) -> bool:
    """Deploy (already fused) if it carries a fused-conv key of any known source, or our own deploy keys."""
    keys = list(keys)
    if any(DEPLOY_MARKERS.search(k) for k in keys):
        return True
    deploy = set(deploy_expected)
    return bool(deploy) and deploy.issubset(set(keys))


def guess_family(state: dict[str, Tensor]) -> str | None:
    """The block family whose characteristic keys appear most (for ``reparam inspect``), for
    training and fused checkpoints alike."""
    counts: dict[str, int] = {}
    for name, pattern in FAMILY_MARKERS:
        counts[name] = counts.get(name, 0) + sum(1 for k in state if pattern.search(k))
    fused = [v for k, v in state.items() if FUSED_SHARED.search(k)]
    if fused:
        depthwise = any(v.ndim == 4 and v.shape[1] == 1 for v in fused)
        shared = "mobileone" if depthwise else "repvgg"
        counts[shared] = counts.get(shared, 0) + len(fused)
    if counts.get("repvgg") and _post_sum_bn(state):
        counts["qarepvgg"] = counts.pop("repvgg")
    name, count = max(counts.items(), key=lambda item: item[1])
    return name if count else None


_RBR_DENSE = re.compile(r"^(.*\.)(rbr_dense|conv_kxk)\.conv\.weight$")


def _post_sum_bn(state: dict[str, Tensor]) -> bool:
    """Whether a block with RepVGG branches has a BN of its own after the sum (QARepVGG)."""
    blocks = {m.group(1) for k in state if (m := _RBR_DENSE.match(k))}
    return any(f"{b}bn.weight" in state or f"{b}se.bn.weight" in state for b in blocks)
