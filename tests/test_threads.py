"""The memory-bound conversion stages run on MEMORY_BOUND_THREADS intra-op threads; the gate on all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from reparam_core import conversion
from reparam_core.threads import MEMORY_BOUND_THREADS, intra_op_threads
from tests.helpers import TINY, state_of


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


def test_the_count_is_lowered_inside_and_restored_after_even_on_errors() -> None:
    outside = torch.get_num_threads()
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == outside
    with pytest.raises(RuntimeError), intra_op_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == outside


def test_never_raised_above_the_current_count() -> None:
    outside = torch.get_num_threads()
    with intra_op_threads(outside + 4):
        assert torch.get_num_threads() == outside


def test_conversion_fuses_on_few_threads_and_validates_on_all(monkeypatch: pytest.MonkeyPatch) -> None:
    outside = torch.get_num_threads()
    seen: dict[str, int] = {}

    def spy(name: str, real: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen[name] = torch.get_num_threads()
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(conversion, "fused_state_dict", spy("fuse", conversion.fused_state_dict))
    monkeypatch.setattr(conversion, "load_into", spy("load", conversion.load_into))
    monkeypatch.setattr(conversion, "run_gate", spy("gate", conversion.run_gate))
    assert conversion.convert(TINY, state_of(TINY)).report.passed
    assert seen == {"load": MEMORY_BOUND_THREADS, "fuse": MEMORY_BOUND_THREADS, "gate": outside}
    assert torch.get_num_threads() == outside
