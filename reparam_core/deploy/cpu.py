"""What this CPU can do for inference: the vector and matrix extensions that decide which serving
precisions are fast, read from ``/proc/cpuinfo`` (Linux) with PyTorch's own dispatch level as a
fallback elsewhere.

bfloat16 on the CPU is only served where the CPU computes it natively (``avx512_bf16`` or AMX):
without them every bf16 operation is emulated and slower than float32.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch
from pydantic import BaseModel

CPUINFO = Path("/proc/cpuinfo")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


class CpuCapabilities(BaseModel):
    """The CPU's name, the inference-relevant flags it has, and PyTorch's dispatch level
    (``torch.backends.cpu.get_cpu_capability()``: DEFAULT, AVX2, AVX512...)."""

    model: str
    avx2: bool
    avx512f: bool
    avx512_bf16: bool
    amx_bf16: bool
    amx_int8: bool
    torch_capability: str
    source: str  # where the flags come from: /proc/cpuinfo, or torch when it is not readable

    @property
    def bf16(self) -> bool:
        """Native bfloat16 arithmetic (AVX512-BF16 dot products or AMX tiles)."""
        return self.avx512_bf16 or self.amx_bf16

    def flags(self) -> list[str]:
        return [flag for flag in FLAGS if getattr(self, flag)]


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """The model name and the flags of the first processor in ``/proc/cpuinfo`` text."""
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def capabilities_from(model: str, flags: set[str], torch_capability: str, source: str) -> CpuCapabilities:
    return CpuCapabilities(
        model=model or platform.processor() or platform.machine(),
        torch_capability=torch_capability,
        source=source,
        **{flag: flag in flags for flag in FLAGS},
    )


@functools.cache
def cpu_capabilities() -> CpuCapabilities:
    """This machine's CPU (read once per process)."""
    level = torch.backends.cpu.get_cpu_capability()
    try:
        model, flags = parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        model, flags = "", set()
    if flags:
        return capabilities_from(model, flags, level, str(CPUINFO))
    # No /proc/cpuinfo (macOS, Windows): what PyTorch dispatches to says AVX2 / AVX-512, not bf16.
    implied = {"AVX2": {"avx2"}, "AVX512": {"avx2", "avx512f"}}.get(level, set())
    return capabilities_from(model, implied, level, "torch")
