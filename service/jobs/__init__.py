"""Conversion jobs: the pipeline run off the event loop, then stored and registered."""

from .conversions import JOINED, STAGES, ConversionOutcome, ConversionRequest, Conversions, Upload
from .exports import Exports
from .runner import JobRunner

__all__ = [
    "JOINED",
    "STAGES",
    "ConversionOutcome",
    "ConversionRequest",
    "Conversions",
    "Exports",
    "JobRunner",
    "Upload",
]
