"""The fusion math: pure tensor transforms that merge linear branches into one conv.

``transforms`` holds the named transforms every block family composes (fold a BN, add branches,
pad a small kernel, identity and average-pool kernels, sequential merge, depth concat, scale);
``reparameterize`` swaps every block of any model for its fused conv; ``row_blocks`` is the fast
path that fuses a loaded training net a block of output channels at a time in float64, straight
into the storage dtype. Import those two by their module names (they sit above the block
families, which build on ``transforms``).
"""

from .transforms import (
    KernelBias,
    add_branches,
    add_centred_,
    add_identity_,
    avg_pool_kernel,
    bn_scale_shift,
    concat_depth,
    dilate,
    fold_bn,
    identity_kernel,
    merge_sequential,
    pad_to,
    scale,
)

__all__ = [
    "KernelBias",
    "add_branches",
    "add_centred_",
    "add_identity_",
    "avg_pool_kernel",
    "bn_scale_shift",
    "concat_depth",
    "dilate",
    "fold_bn",
    "identity_kernel",
    "merge_sequential",
    "pad_to",
    "scale",
]
