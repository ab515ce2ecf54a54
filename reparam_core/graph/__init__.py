"""Generic re-parameterization of any traceable model: a graph pass, no per-block fusion code.

It cross-checks the blocks' own ``equivalent_kernel_bias``: it derives every kernel from the traced
graph with the pure transforms of ``reparam_core.fusion`` only.
"""

from .fuse import GraphFusion, GraphFusionReport, GraphRegion, UnmergedOp, fuse_graph, reparameterize_graph

__all__ = [
    "GraphFusion",
    "GraphFusionReport",
    "GraphRegion",
    "UnmergedOp",
    "fuse_graph",
    "reparameterize_graph",
]
