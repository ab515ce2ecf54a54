"""Conversion jobs: the pipeline run off the event loop, then stored and registered."""

from .conversions import ConversionOutcome, Conversions, Upload

__all__ = ["ConversionOutcome", "Conversions", "Upload"]
