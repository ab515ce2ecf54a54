"""The web console at ``/ui`` (docs/console.md): models, a version's proof, latency, a predict
playground and alias moves, as server-rendered pages with one small script and one stylesheet."""

from .latency import LatencySampler
from .pages import router

__all__ = ["LatencySampler", "router"]
