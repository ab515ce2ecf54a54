"""Conversion jobs: the pipeline run off the event loop, then stored and registered."""

from .conversions import JOINED, STAGES, ConversionOutcome, ConversionRequest, Conversions, Upload
from .exports import ProgramExports

__all__ = [
    "JOINED",
    "STAGES",
    "ConversionOutcome",
    "ConversionRequest",
    "Conversions",
    "ProgramExports",
    "Upload",
]
