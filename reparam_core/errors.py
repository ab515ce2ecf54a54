"""Domain errors. Callers (CLI, HTTP service) translate these in one place.

ReparamError
├── SpecError            an architecture spec or block option is invalid or unsupported
├── UnknownNameError     a registry lookup for a name nobody registered (also a SpecError)
├── CheckpointError      a checkpoint cannot be read, or its tensors do not fit the model
├── ConversionError      a model cannot be re-parameterized (e.g. it is in training mode)
└── EquivalenceError     the fused model does not reproduce the training model
"""

from __future__ import annotations

from typing import Any


class ReparamError(Exception):
    """Base class of every error this library raises on purpose."""


class SpecError(ReparamError, ValueError):
    """An architecture spec or a block option is invalid or not supported by a family."""


class UnknownNameError(SpecError, KeyError):
    """A registry has no entry of that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(ReparamError, ValueError):
    """A checkpoint is unreadable, unsafe, or does not fit the model it is loaded into."""


class ConversionError(ReparamError, RuntimeError):
    """A model cannot be converted as asked."""


class EquivalenceError(ReparamError):
    """The deploy model failed the equivalence gate; ``report`` holds the measurements."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


def describe_validation_error(error: Exception, what: str) -> str:
    """One line per problem of a pydantic ``ValidationError``: ``what.field.path: message``."""
    errors = getattr(error, "errors", None)
    if errors is None:
        return f"{what}: {error}"
    lines = []
    for item in errors():
        where = ".".join(str(part) for part in item.get("loc", ()))
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{what}{'.' + where if where else ''}: {message}")
    return "; ".join(lines)
