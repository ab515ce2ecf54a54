"""Input sizes the conversion gate probes with, derived from conv geometry (see docs/gate.md).

A conv is local: an output pixel depends only on its window. So a fused layer equals its training
block on every input size once it does on an input whose outputs show every kind of window the
layer has: one whose window lies wholly inside the input (every kernel tap, the bias), and ones
that read each border's padding (top/left always, bottom/right at one of the two stride
alignments). :func:`block_probe_size` is the smallest such input, non-square so that anything
that mixes the two axes (squeeze-excitation pooling) is exercised too. :func:`wiring_probe_size`
is the smallest input on which every strided layer of a whole net still sees at least 3 pixels
per axis, so a dropped, added or misplaced stride changes the output (and every layer more pixels
than its padding, as reflect padding needs).
"""

from __future__ import annotations

from .deploy.spec import ConvLayerSpec, DeploySpec

MIN_STRIDED_INPUT = 3  # pixels per axis every strided layer sees in the wiring probe
SEARCH_LIMIT = 4096  # probe sizes are tiny; a bound on the searches all the same


def output_size(size: int, layer: ConvLayerSpec) -> int:
    """Output extent of ``layer`` along an axis of ``size`` input pixels."""
    span = layer.dilation * (layer.kernel_size - 1)
    return (size + 2 * layer.padding - span - 1) // layer.stride + 1


def _windows(size: int, layer: ConvLayerSpec) -> tuple[int, bool, int]:
    """(outputs, some window lies wholly inside the input, far-side padding pixels the last reads)."""
    span = layer.dilation * (layer.kernel_size - 1)
    count = max(output_size(size, layer), 0)
    starts = [o * layer.stride - layer.padding for o in range(count)]
    inside = any(a >= 0 and a + span <= size - 1 for a in starts)
    far = max(0, starts[-1] + span - size + 1) if starts else 0
    return count, inside, far


def _fits(size: int, layer: ConvLayerSpec) -> bool:
    count, inside, _ = _windows(size, layer)
    return count >= 2 and inside


def block_probe_size(layer: ConvLayerSpec) -> tuple[int, int]:
    """``(H, W)``, ``H < W``: the smallest input with a window wholly inside it and at least two
    outputs per axis, whose last window along H reads all of the bottom padding; W is the next
    size that fits and, where the stride allows it, reads a different amount of the right
    padding, so both stride alignments are covered."""
    h = next(
        size
        for size in range(1, SEARCH_LIMIT)
        if _fits(size, layer) and _windows(size, layer)[2] == layer.padding
    )
    fitting = [size for size in range(h + 1, h + 1 + layer.stride) if _fits(size, layer)]
    other = [size for size in fitting if _windows(size, layer)[2] != layer.padding]
    return h, (other or fitting or [h + 1])[0]


def _least_input(layer: ConvLayerSpec) -> int:
    """Pixels per axis ``layer`` must see: 3 when strided; more than its padding, which reflect
    and circular padding need."""
    return max(MIN_STRIDED_INPUT if layer.stride > 1 else 1, layer.padding + 1)


def wiring_probe_size(spec: DeploySpec) -> tuple[int, int]:
    """``(H, W)``, ``W = H + 1``: the smallest input on which every strided layer of ``spec`` sees at
    least ``MIN_STRIDED_INPUT`` pixels per axis and every layer more pixels than its padding."""
    layers = [layer for _, layer in spec.layers()]
    for h in range(1, SEARCH_LIMIT):
        size = h
        for layer in layers:
            if size < _least_input(layer):
                break
            size = output_size(size, layer)
        else:
            return h, h + 1
    raise ValueError("no wiring probe size found")  # unreachable: strides are bounded by the spec
