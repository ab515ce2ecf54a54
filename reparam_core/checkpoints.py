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
from torch import Tensor

from .errors import CheckpointError

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


def read_checkpoint(source: str | Path | bytes) -> tuple[dict[str, Tensor], list[str]]:
    """Tensors of a checkpoint file (or its bytes), unwrapped and unprefixed; notes on what was skipped."""
    data = _read_bytes(source)
    name = str(source) if not isinstance(source, bytes) else "<upload>"
    if data[:1] == b"{" or name.endswith(".safetensors"):
        try:
            return dict(load_safetensors_bytes(data)), []
        except (SafetensorError, ValueError, RuntimeError) as exc:
            if name.endswith(".safetensors"):
                raise CheckpointError(f"{name}: not a readable safetensors file ({exc})") from None
    obj, notes = _torch_load(data, name)
    return unwrap(obj, name), notes


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {source}: {exc.strerror}") from None


def _torch_load(data: bytes, name: str) -> tuple[Any, list[str]]:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CheckpointError(
            f"{name}: not a safetensors or torch zip checkpoint (truncated, or the legacy pickle format "
            f"that cannot be read without unpickling); {RESAVE_HINT}"
        )
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(f"{name}: corrupt or truncated torch checkpoint ({exc})") from None
    placeholders = [_placeholder(qualified) for qualified in unsafe]
    try:
        with torch.serialization.safe_globals(placeholders):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for malformed archives
        raise CheckpointError(
            f"{name}: cannot be loaded safely ({type(exc).__name__}: {exc}); {RESAVE_HINT}"
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
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    negative = [k for k, v in state.items() if k.endswith("running_var") and bool((v < 0).any())]
    problems = []
    if non_finite:
        problems.append(f"NaN/Inf values in {_listing(non_finite)}")
    if negative:
        problems.append(f"negative BN running_var in {_listing(negative)}")
    if problems:
        raise CheckpointError("; ".join(problems))


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} tensors: {shown}" + (
        f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    )
