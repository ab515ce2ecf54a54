"""Conversion jobs: the pipeline run off the event loop, then stored and registered."""

from .conversions import ConversionOutcome, ConversionRequest, Conversions, Upload

__all__ = ["ConversionOutcome", "ConversionRequest", "Conversions", "Upload"]
