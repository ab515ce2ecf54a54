"""The conversion pipeline: checkpoint + spec -> verified plain deploy net.

Steps (each timed): read the checkpoint safely, build the training net without allocating
weights, map and strictly check the keys, load in float64 on the device, fuse every block, prove
equivalence (float64 gate at the spec's input size and at a smaller non-square size; float32
error of the stored weights reported and bounded), cast to the storage dtype.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from .blocks import ReparamBlock
from .build import build_deploy_model, build_train_model
from .checkpoints import check_values, listing, read_checkpoint
from .errors import CheckpointError, EquivalenceError
from .fusion import fused_state_dict
from .key_formats import detect_format, guess_family, is_deploy_form
from .plain import DeploySpec, PlainNet
from .reparameterize import count_convs, reparameterize
from .serving import ServingOptions, ServingReport, prepare_for_serving
from .spec import ArchSpec, parse_spec
from .validate import EquivalenceReport, measure, random_input, resolve_device, tf32_disabled

# The stored float32 net may not be less accurate than the training net itself run in float32
# (deep nets amplify rounding differently; well-conditioned ones show ~1e-6): it passes when its
# error is at most FP32_SLACK times the training form's own float32 error, or FP32_FLOOR.
FP32_SLACK = 10.0
FP32_FLOOR = 1e-5
# The same rule holds for the serving configuration, against the training net run in the serving
# precision; the floors (about 10x-80x each format's unit roundoff) only matter when that net is
# itself unusually accurate.
SERVING_FLOORS = {torch.float32: FP32_FLOOR, torch.float16: 1e-2, torch.bfloat16: 5e-2}
MIN_COVERAGE = 0.5


class ConversionReport(BaseModel):
    """What was converted and how closely the deploy net reproduces the training net."""

    arch: str
    checkpoint_format: str
    checkpoint_notes: list[str]
    device: str
    tolerance: float
    passed: bool
    fp64: list[EquivalenceReport]
    fp32: EquivalenceReport | None
    fp32_train: EquivalenceReport | None
    serving: ServingReport | None = None
    params_train: int
    params_deploy: int
    convs_train: int
    convs_deploy: int
    torch_version: str


@dataclass
class ConversionResult:
    deploy_model: PlainNet
    deploy_spec: DeploySpec
    report: ConversionReport
    timings: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().contiguous() for k, v in self.deploy_model.state_dict().items()}


class _Timer:
    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.timings: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress is not None:
            self.progress(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.timings[name] = round(time.perf_counter() - start, 6)


def convert(
    spec: ArchSpec | dict[str, Any] | str | Path,
    checkpoint: str | Path | bytes | dict[str, Tensor],
    *,
    device: str | torch.device = "auto",
    validate: bool = True,
    tolerance: float = 1e-9,
    storage_dtype: torch.dtype = torch.float32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    checkpoint_name: str | None = None,
    serving: ServingOptions | None = None,
) -> ConversionResult:
    """Convert a training checkpoint to a verified deploy net. Raises ``EquivalenceError`` (with the
    report attached) when the gate fails, ``CheckpointError``/``SpecError`` for bad input.
    ``progress`` is called with each stage's name as it starts; ``checkpoint_name`` is how errors
    name the checkpoint (default: its path). With ``serving``, the net prepared that way (precision,
    memory format, compilation) is checked too, in its own stage, and held to the same bound
    relative to the training net run in that precision."""
    timer = _Timer(progress)
    target = resolve_device(device)
    with timer.stage("parse"):
        arch = parse_spec(spec)
    with timer.stage("read"):
        if isinstance(checkpoint, dict):
            state, notes = dict(checkpoint), list[str]()
        else:
            state, notes = read_checkpoint(checkpoint, checkpoint_name)
        check_values(state)
    with timer.stage("build"):
        model = build_train_model(arch, device="meta")
        fmt = _load_strict(model, state, target)
        model.eval()
    with timer.stage("fuse"):
        weights = fused_state_dict(model, storage_dtype)
    with timer.stage("assemble"):
        deploy_spec = model.deploy_spec(meta={"arch_spec": arch.model_dump(mode="json")})
        stored = _storage_model(deploy_spec, weights)
    fp64: list[EquivalenceReport] = []
    fp32 = fp32_train = served = None
    if validate:
        with timer.stage("validate"):
            # Re-fused in float64 through the blocks' own modules: a second path to the same weights.
            deploy = reparameterize(model.double())
            fp64, fp32, fp32_train, first = _gate(arch, model, deploy, stored, target, tolerance, seed)
        if serving is not None:
            with timer.stage("serving"):
                served = _serving_check(model, stored, deploy_spec, serving, target, first, fp32_train)
    report = ConversionReport(
        arch=arch.name,
        checkpoint_format=fmt,
        checkpoint_notes=notes,
        device=str(target),
        tolerance=tolerance,
        passed=all(r.passed for r in fp64)
        and (fp32 is None or fp32.passed)
        and (served is None or served.equivalence.passed),
        fp64=fp64,
        fp32=fp32,
        fp32_train=fp32_train,
        serving=served,
        params_train=_params(model),
        params_deploy=_params(stored),
        convs_train=count_convs(model),
        convs_deploy=count_convs(stored),
        torch_version=torch.__version__,
    )
    if validate and not report.passed:
        raise EquivalenceError(f"equivalence gate failed for {arch.name}: {_failures(report)}", report)
    return ConversionResult(stored, deploy_spec, report, timer.timings)


def _failures(report: ConversionReport) -> str:
    failed = [r for r in report.fp64 if not r.passed]
    if report.fp32 is not None and not report.fp32.passed:
        failed.append(report.fp32)
    if report.serving is not None and not report.serving.equivalence.passed:
        failed.append(report.serving.equivalence)
    return "; ".join(
        f"{r.dtype} at {'x'.join(map(str, r.input_shape))}: max relative error {r.max_rel_error:.3e} "
        f"> tolerance {r.tolerance or 0:.3g}"
        for r in failed
    )


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_strict(model: nn.Module, state: dict[str, Tensor], device: torch.device) -> str:
    """Map ``state`` onto ``model`` (built on the meta device) and load it; returns the format name.

    Every missing key, unexpected key and shape mismatch is reported at once.
    """
    expected = model.state_dict()
    blocks = [name for name, m in model.named_modules() if isinstance(m, ReparamBlock)]
    fused_keys = [f"{name}.conv.{leaf}" for name in blocks for leaf in ("weight", "bias")]
    if is_deploy_form(state, fused_keys):
        raise CheckpointError(
            "checkpoint is in deploy form (its blocks are already fused into single convs); "
            "conversion needs the training-form checkpoint with every branch"
        )
    match = detect_format(state, expected)
    if match.coverage < MIN_COVERAGE:
        family = guess_family(state)
        looks = f"; its keys look like a {family!r} checkpoint" if family else ""
        raise CheckpointError(
            f"checkpoint does not fit the spec: only {match.matched} of {match.expected} expected keys "
            f"found in any known layout (native, official, timm, mmpretrain){looks}; "
            f"e.g. it has {', '.join(list(state)[:3])}"
        )
    mapped = match.state
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in mapped and k not in optional]
    unexpected = [k for k in mapped if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch in {listing(shapes)}")
    if problems:
        raise CheckpointError(
            f"checkpoint ({match.format} layout) does not match the spec: " + "; ".join(problems)
        )
    separable = all(m.row_separable for m in model.modules() if isinstance(m, ReparamBlock))
    tensors = {k: _to(v, device, keep_kernels=separable) for k, v in mapped.items()}
    for key in optional - tensors.keys():
        tensors[key] = torch.zeros((), dtype=torch.long, device=device)
    model.load_state_dict(tensors, strict=True, assign=True)
    return match.format


def _to(tensor: Tensor, device: torch.device, keep_kernels: bool) -> Tensor:
    """Move to ``device``; floats become float64, except conv kernels when fusion only scales them
    (the fused result is float64 by type promotion; the net is upcast whole only to be validated)."""
    if not tensor.is_floating_point() or (keep_kernels and tensor.ndim == 4):
        return tensor.to(device=device)
    return tensor.to(device=device, dtype=torch.float64)


def _storage_model(spec: DeploySpec, weights: dict[str, Tensor]) -> PlainNet:
    """The deploy net rebuilt from its spec alone (as a server will), holding ``weights`` on the CPU."""
    with torch.device("meta"):
        plain = build_deploy_model(spec)
    plain.load_state_dict({k: v.to("cpu") for k, v in weights.items()}, strict=True, assign=True)
    return plain.eval()


def gate_shapes(arch: ArchSpec, batch: int = 2) -> list[tuple[int, int, int, int]]:
    """The spec's input size, plus a smaller non-square one (borders and SE pooling differ there)."""
    h, w = arch.input_size
    small_h, small_w = max(8, h // 2 + 1), max(8, w // 2 + 9)
    if small_h == small_w:
        small_w += 2
    return [(batch, arch.in_channels, h, w), (1, arch.in_channels, small_h, small_w)]


def _gate(
    arch: ArchSpec,
    model: nn.Module,
    deploy: nn.Module,
    stored: PlainNet,
    device: torch.device,
    tolerance: float,
    seed: int,
) -> tuple[list[EquivalenceReport], EquivalenceReport, EquivalenceReport, tuple[Tensor, Tensor]]:
    """fp64 training vs fp64 fused net at every gate shape; at the first, the stored fp32 net and
    (as the baseline it is held to) the training net in fp32, both against the fp64 reference.
    The first shape's input and reference output are returned too, for the serving check."""
    model.double()
    deploy.double()
    fp64: list[EquivalenceReport] = []
    with tf32_disabled(), torch.inference_mode():
        for i, shape in enumerate(gate_shapes(arch)):
            x = random_input(shape, seed + i).to(device)
            reference = model(x)
            fp64.append(measure(reference, deploy(x), shape, torch.float64, device, tolerance))
            if i == 0:
                stored_dtype = next(stored.parameters()).dtype
                train_out = model.to(stored_dtype)(x.to(stored_dtype))
                fp32_train = measure(reference, train_out, shape, stored_dtype, device, None)
                model.double()
                bound = max(FP32_FLOOR, FP32_SLACK * fp32_train.max_rel_error)
                out = stored.to(device)(x.to(stored_dtype))
                fp32 = measure(reference, out, shape, stored_dtype, device, bound)
                stored.to("cpu")
                first = (x, reference)
    return fp64, fp32, fp32_train, first


def _serving_check(
    model: nn.Module,
    stored: PlainNet,
    deploy_spec: DeploySpec,
    options: ServingOptions,
    device: torch.device,
    first: tuple[Tensor, Tensor],
    fp32_train: EquivalenceReport,
) -> ServingReport:
    """The stored net prepared as ``options`` say (and warmed up, compiling if asked) against the
    float64 training net on the gate's first input (``first``: input and reference output),
    bounded by the training net's own error in the serving precision (``fp32_train`` already is
    that for fp32)."""
    x, reference = first
    shape = tuple(x.shape)
    dtype = options.dtype
    with tf32_disabled():
        if fp32_train.dtype == str(dtype).removeprefix("torch."):  # the gate ran it already
            baseline = fp32_train
        else:
            with torch.inference_mode():
                baseline = measure(reference, model.to(dtype)(x.to(dtype)), shape, dtype, device, None)
                model.double()
        served = prepare_for_serving(copy.deepcopy(stored), deploy_spec, options, device, (1, shape[0]))
        output = served.logits(x.float())
    bound = max(SERVING_FLOORS[dtype], FP32_SLACK * baseline.max_rel_error)
    return ServingReport(
        options=options,
        device=str(device),
        equivalence=measure(reference, output, shape, dtype, device, bound),
        train_same_precision=baseline,
        compile_seconds=served.compile_seconds,
        warmup_seconds=served.warmup_seconds,
    )
