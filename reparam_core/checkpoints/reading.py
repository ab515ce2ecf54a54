"""Reading checkpoints safely: safetensors, or torch files (zip or legacy) through an unpickler that
never executes anything from the file (``unpickler.py``).

A torch file that pickles objects other than tensors (a yacs config, an ``argparse.Namespace``,
NumPy scalars...) still yields its tensors; those objects become inert data. Wrappers
(``{"state_dict": ...}``, ``{"model": ...}``, EMA copies) and ``module.`` / ``_orig_mod.``
prefixes are removed.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file as load_safetensors_file
from torch import Tensor

from ..errors import CheckpointError
from .unpickler import Loading, RefusedGlobal, plain, safe_pickle_module

MODEL_KEYS = ("state_dict", "model", "module", "net", "weights")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
WRAPPER_KEYS = MODEL_KEYS + EMA_KEYS
MMENGINE_EMA = "ema_state_dict"  # mmengine's EMAHook swaps: state_dict holds the EMA, this the model
Weights = Literal["auto", "model", "ema"]


class Checkpoint(NamedTuple):
    """A checkpoint's tensors, notes on what was skipped or chosen, and which weights they are:
    ``model``, ``ema``, or ``only`` (no choice to make)."""

    state: dict[str, Tensor]
    notes: list[str]
    weights: str


PREFIXES = ("module.", "_orig_mod.")
RESAVE_HINT = (
    "re-save the weights alone, e.g. torch.save(model.state_dict(), 'ckpt.pt') or "
    "safetensors.torch.save_file(model.state_dict(), 'ckpt.safetensors')"
)


def read_checkpoint(
    source: str | Path | bytes, name: str | None = None, weights: Weights = "auto"
) -> Checkpoint:
    """Tensors of a checkpoint file (or its bytes), unwrapped and unprefixed, with notes.

    ``weights``: ``model`` (the training weights), ``ema`` (the exponential moving average) or
    ``auto`` (the model's when the checkpoint has both; see :func:`select_weights`). Zip files are
    memory-mapped, not copied. ``name`` is how errors refer to the checkpoint (default: its path).
    """
    if isinstance(source, bytes):
        return _read(source, io.BytesIO(source), name or "<upload>", weights)
    path = Path(source)
    label = name or str(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {label}: {exc.strerror}") from None
    return _read(head, path, label, weights)


def _read(head: bytes, source: Path | io.BytesIO, name: str, weights: Weights) -> Checkpoint:
    if zipfile.is_zipfile(source) or not _looks_like_safetensors(head):
        obj, notes = _torch_load(source, name)
        chosen, kind, note = select_weights(obj, weights, name)
        state = unwrap(chosen, name)
        _check_layouts(state, name)
        return Checkpoint(state, notes + ([note] if note else []), kind)
    if weights == "ema":
        raise CheckpointError(
            f"{name}: a safetensors file holds one set of weights; weights=ema needs a wrapper"
        )
    try:
        if isinstance(source, Path):
            return Checkpoint(dict(load_safetensors_file(source)), [], "only")
        return Checkpoint(dict(load_safetensors_bytes(source.getvalue())), [], "only")
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{name}: not a readable safetensors file, or truncated ({exc})") from None


def select_weights(obj: Any, weights: Weights, name: str = "checkpoint") -> tuple[Any, str, str | None]:
    """The model or EMA weights of a training checkpoint: ``(weights, kind, note)``.

    Model weights live under ``state_dict``, ``model``, ... and EMA weights under
    ``state_dict_ema``, ``model_ema`` or ``ema`` (timm, DingXiaoH/RepVGG). mmengine (MMPretrain)
    saves the EMA under ``state_dict`` and the model under ``ema_state_dict``. ``auto`` takes the
    model weights; the note says which key was converted and what else was there.
    """
    if not isinstance(obj, dict):
        return _only(obj, weights, name)
    model_key = next((k for k in MODEL_KEYS if isinstance(obj.get(k), dict)), None)
    ema_key = next((k for k in EMA_KEYS if isinstance(obj.get(k), dict)), None)
    if isinstance(obj.get(MMENGINE_EMA), dict) and model_key == "state_dict":
        model_key, ema_key = MMENGINE_EMA, "state_dict"
    if ema_key is None:
        return _only(obj, weights, name)
    if weights == "ema":
        note = f"converted the EMA weights under {ema_key!r}" + (
            f" (model weights under {model_key!r})" if model_key else ""
        )
        return obj[ema_key], "ema", note
    if model_key is None:
        if weights == "model":
            raise CheckpointError(
                f"{name}: weights=model, but the checkpoint has only EMA weights ({ema_key!r})"
            )
        return obj[ema_key], "ema", f"converted the EMA weights under {ema_key!r} (no model weights)"
    chosen = obj[model_key]
    if model_key == MMENGINE_EMA:  # mmengine keeps the averaged model's own keys and a step counter
        chosen = {k: v for k, v in chosen.items() if k != "steps"}
    note = f"converted the model weights under {model_key!r}; EMA weights under {ema_key!r} also present"
    return chosen, "model", note + " (weights=ema converts those)"


def _only(obj: Any, weights: Weights, name: str) -> tuple[Any, str, str | None]:
    if weights == "ema":
        raise CheckpointError(
            f"{name}: weights=ema, but the checkpoint has no EMA weights (looked for {', '.join(EMA_KEYS)})"
        )
    return obj, "only", None


def _check_layouts(state: dict[str, Tensor], name: str) -> None:
    """Every tensor must be backed by its own bytes: a broadcast view (stride 0) of a tiny storage
    could claim 10^15 elements that every later step would walk through."""
    for key, tensor in state.items():
        needed = tensor.numel() * tensor.element_size()
        broadcast = any(s == 0 for s, n in zip(tensor.stride(), tensor.shape, strict=True) if n > 1)
        if needed > tensor.untyped_storage().nbytes() or broadcast:
            raise CheckpointError(
                f"{name}: tensor {key} {list(tensor.shape)} is a view larger than its storage"
            )


def _looks_like_safetensors(head: bytes) -> bool:
    """A safetensors file starts with its header's length (little-endian u64), then ``{``."""
    return len(head) >= 9 and head[8:9] == b"{"


def _torch_load(source: Path | io.BytesIO, name: str) -> tuple[Any, list[str]]:
    zipped = zipfile.is_zipfile(source)
    _check_archive(source, zipped, name)
    size = source.stat().st_size if isinstance(source, Path) else len(source.getbuffer())
    record = Loading(max_bytes=size)
    module = safe_pickle_module(record)
    mmap = zipped and isinstance(source, Path)  # tensors paged in as read; legacy files cannot be mapped
    try:
        obj = torch.load(source, map_location="cpu", weights_only=False, pickle_module=module, mmap=mmap)
        if not zipped:
            record.check_legacy_coverage()
        obj = plain(obj)
    except RefusedGlobal as exc:
        raise CheckpointError(
            f"{name}: refused: it references {exc.name}, which can only mean running code "
            f"(nothing was executed); {RESAVE_HINT}"
        ) from None
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    except Exception as exc:  # torch and pickle raise many types for malformed files
        raise CheckpointError(
            f"{name}: neither safetensors nor a readable torch checkpoint (corrupt or truncated?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    notes = [f"ignored pickled object {qualified} (never executed)" for qualified in sorted(record.ignored)]
    return obj, notes


def _check_archive(source: Path | io.BytesIO, zipped: bool, name: str) -> None:
    """Refuse before reading: TorchScript archives (``torch.jit.save``) carry code that
    ``torch.load`` would hand to ``torch.jit.load`` and run; the pre-1.0 tar format extracts
    files; a zip whose entries expand past the file's own size is a decompression bomb
    (``torch.save`` stores entries uncompressed, and torch allocates each entry's declared size)."""
    if zipped:
        with zipfile.ZipFile(source) as archive:
            entries = archive.infolist()
        if any(e.filename.endswith("/constants.pkl") or "/code/" in e.filename for e in entries):
            raise CheckpointError(
                f"{name}: a TorchScript archive (it carries code, which is never run here); {RESAVE_HINT}"
            )
        size = source.stat().st_size if isinstance(source, Path) else len(source.getbuffer())
        expanded = sum(e.file_size for e in entries)
        if expanded > size:
            raise CheckpointError(
                f"{name}: a compressed archive that expands to {expanded} bytes from {size} "
                f"(torch.save never compresses; refused unread); {RESAVE_HINT}"
            )
    elif _is_tar(source):
        raise CheckpointError(
            f"{name}: the tar-based torch format (before PyTorch 0.4) is not read; {RESAVE_HINT}"
        )
    if isinstance(source, io.BytesIO):
        source.seek(0)


def _is_tar(source: Path | io.BytesIO) -> bool:
    """A POSIX tar archive: ``ustar`` at offset 257 (stricter than ``tarfile.is_tarfile``)."""
    if isinstance(source, io.BytesIO):
        return source.getbuffer()[257:262].tobytes() == b"ustar"
    with source.open("rb") as handle:
        handle.seek(257)
        return handle.read(5) == b"ustar"


def unwrap(obj: Any, name: str = "checkpoint") -> dict[str, Tensor]:
    """Find the state dict inside common wrappers and strip DataParallel/compile prefixes."""
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return _strip_prefixes({str(k): v for k, v in obj.items()})
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, dict) and any(isinstance(v, Tensor) for v in obj.values()):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
        return _strip_prefixes(tensors)
    raise CheckpointError(
        f"{name}: found no state dict (a mapping of names to tensors), also not under any of "
        f"{', '.join(WRAPPER_KEYS)}; {RESAVE_HINT}"
    )


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_values(state: dict[str, Tensor]) -> None:
    """Refuse floats other than float16/bfloat16/float32/float64 (float8, complex), NaN/Inf values
    and negative BN running variances, naming every offending key."""
    exotic = [
        f"{k} ({v.dtype})"
        for k, v in state.items()
        if (v.is_floating_point() or v.is_complex()) and v.dtype not in WEIGHT_DTYPES
    ]
    if exotic:
        raise CheckpointError(f"weights must be float16/bfloat16/float32/float64, not {listing(exotic)}")
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not _all_finite(v)]
    negative = [k for k, v in state.items() if k.endswith("running_var") and bool((v < 0).any())]
    problems = []
    if non_finite:
        problems.append(f"NaN/Inf values in {listing(non_finite)}")
    if negative:
        problems.append(f"negative BN running_var in {listing(negative)}")
    if problems:
        raise CheckpointError("; ".join(problems))


def _all_finite(tensor: Tensor) -> bool:
    # A sum is non-finite if any element is (or if it overflows: then check element-wise).
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def listing(keys: list[str], limit: int = 12) -> str:
    """``"N tensors: a, b, ... (k more)"`` for error messages that name every offender."""
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} tensors: {shown}" + (
        f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    )
