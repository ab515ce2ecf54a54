"""Reading checkpoints safely: safetensors, or torch files through ``weights_only`` unpickling only.

Nothing in a checkpoint is ever executed. A torch file that pickles objects other than tensors
(a training config, an ``argparse.Namespace``...) still yields its tensors: every such global is
replaced by an inert placeholder before loading, so no constructor or function named in the file
runs. Wrappers (``{"state_dict": ...}``, ``{"model": ...}``, EMA copies) and ``module.`` /
``_orig_mod.`` prefixes are removed.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file as load_safetensors_file
from torch import Tensor

from ..errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "ema", "module", "net", "weights")
PREFIXES = ("module.", "_orig_mod.")
RESAVE_HINT = (
    "re-save the weights alone, e.g. torch.save(model.state_dict(), 'ckpt.pt') or "
    "safetensors.torch.save_file(model.state_dict(), 'ckpt.safetensors')"
)


class _Inert:
    """Stands in for any pickled global that is not a tensor type: accepts and ignores everything."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


def _placeholder(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (_Inert,), {"__module__": module, "__qualname__": name})


def read_checkpoint(
    source: str | Path | bytes, name: str | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """Tensors of a checkpoint file (or its bytes), unwrapped and unprefixed; notes on what was skipped.

    Files are memory-mapped, not copied: tensors are paged in as the conversion reads them.
    ``name`` is how errors refer to the checkpoint (default: its path).
    """
    if isinstance(source, bytes):
        return _read(source, io.BytesIO(source), name or "<upload>")
    path = Path(source)
    label = name or str(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {label}: {exc.strerror}") from None
    return _read(head, path, label)


def _read(head: bytes, source: Path | io.BytesIO, name: str) -> tuple[dict[str, Tensor], list[str]]:
    if zipfile.is_zipfile(source):
        obj, notes = _torch_load(source, name)
        return unwrap(obj, name), notes
    try:
        if isinstance(source, Path):
            return dict(load_safetensors_file(source)), []
        return dict(load_safetensors_bytes(source.getvalue())), []
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        kind = "safetensors file" if head[8:9] == b"{" or name.endswith(".safetensors") else "checkpoint"
        raise CheckpointError(
            f"{name}: not a readable {kind}: neither safetensors nor a torch zip archive, or truncated "
            f"({exc}); the legacy non-zip torch format cannot be read without unpickling: {RESAVE_HINT}"
        ) from None


def _torch_load(source: Path | io.BytesIO, name: str) -> tuple[Any, list[str]]:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(f"{name}: corrupt or truncated torch checkpoint ({exc})") from None
    placeholders: list[Any] = [_placeholder(qualified) for qualified in unsafe]
    mmap = isinstance(source, Path)
    try:
        with torch.serialization.safe_globals(placeholders):
            obj = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for malformed archives
        reason = f"it references {', '.join(unsafe)}, which safe loading refuses" if unsafe else str(exc)
        raise CheckpointError(
            f"{name}: cannot be loaded safely ({reason}; nothing was executed); {RESAVE_HINT}"
        ) from None
    notes = [f"ignored pickled object {qualified} (never executed)" for qualified in unsafe]
    return obj, notes


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


def check_values(state: dict[str, Tensor]) -> None:
    """Refuse NaN/Inf values and negative BN running variances, naming every offending key."""
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
