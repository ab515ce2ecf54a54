"""QARepVGG blocks (Chu et al., "Make RepVGG Greater Again", arXiv 2212.01593): RepVGG's branches,
summed, then one more BN: ``act(bn(se(sum)))``.

Three forms, as the official code trains them (cxxgtxy/QARepVGG ``repvgg.py``, meituan/YOLOv6
``yolov6/layers/common.py``):

* ``qarepvgg`` (the paper's default, ``QARepVGGBlockV2``; YOLOv6's ``QARepVGGBlock``):
  kxk conv-BN + bare 1x1 conv + plain identity;
* ``qarepvgg_v1`` (``QARepVGGBlockV1``): kxk conv-BN + 1x1 conv-BN + identity BN;
* ``qarepvgg_avg`` (YOLOv6's ``QARepVGGBlockV2``): the default form plus a kxk average pooling
  branch (zero padded, padding counted) wherever the identity is.

Without SE the post-sum BN folds into the conv. With SE it sits after the gate, which is not
linear: the BN stays a layer of its own, inside the SE module (``se.bn``), in both forms.
"""

from __future__ import annotations

from typing import ClassVar, Unpack

import torch.nn.functional as F
from torch import Tensor, nn

from ..deploy.spec import ConvLayerSpec
from ..fusion.transforms import KernelBias, add_centred_, add_identity_, avg_pool_kernel
from .base import ConvOptions, ReparamBlock, register_block
from .branches import ConvBN, bn_affine, bn_kernel_bias

BN_EPS = 1e-5  # the post-sum BN's, unless the net sets its BNs' epsilon


@register_block
class QARepVGGBlock(ReparamBlock):
    """``act(bn(se(kxk-BN(x) + 1x1(x) + x)))``; the identity exists when ``in == out`` and
    ``stride == 1`` (unless ``use_identity=False``)."""

    family = "qarepvgg"
    branch_bn: ClassVar[bool] = False  # BN on the 1x1 and identity branches (V1)
    avg_branch: ClassVar[bool] = False  # YOLOv6's average pooling beside the identity

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        use_identity: bool = True,
        **options: Unpack[ConvOptions],
    ) -> None:
        se = options.get("se")
        if se is not None and se.norm_eps is None:  # the post-sum BN comes after the SE gate
            options["se"] = se.model_copy(update={"norm_eps": BN_EPS})
        super().__init__(in_channels, out_channels, kernel_size, **options)
        s, d, g, mode = self.stride, self.dilation, self.groups, self.padding_mode
        self.conv_kxk = ConvBN(in_channels, out_channels, kernel_size, s, self.padding, d, g, mode)
        self.conv_1x1: ConvBN | nn.Conv2d = (
            ConvBN(in_channels, out_channels, 1, s, 0, 1, g, mode)
            if self.branch_bn
            else nn.Conv2d(in_channels, out_channels, 1, s, 0, 1, g, bias=False)
        )
        identity = use_identity and self.has_identity
        self.identity: nn.Module | None = None
        if identity:
            self.identity = nn.BatchNorm2d(out_channels) if self.branch_bn else nn.Identity()
        self.use_avg = self.avg_branch and identity
        self.bn = nn.BatchNorm2d(out_channels) if se is None else None

    def linear_forward(self, x: Tensor) -> Tensor:
        out = self.conv_kxk(x) + self.conv_1x1(x)
        if self.identity is not None:
            out = out + self.identity(x)
        if self.use_avg:
            out = out + self._average(x)
        return self.bn(out) if self.bn is not None else out

    def _average(self, x: Tensor) -> Tensor:
        """``AvgPool2d(k, 1, k // 2)`` (zeros counted); other padding modes pad as the conv does."""
        k, p = self.kernel_size, self.padding
        if self.padding_mode == "zeros":
            return F.avg_pool2d(x, k, 1, p, count_include_pad=True)
        return F.avg_pool2d(F.pad(x, [p] * 4, mode=self.padding_mode), k, 1, 0)

    def kernel_bias_rows(self, rows: slice) -> KernelBias:
        kernel, bias = self.conv_kxk.kernel_bias(rows)
        if isinstance(self.conv_1x1, ConvBN):
            k1, b1 = self.conv_1x1.kernel_bias(rows)
            kernel, bias = add_centred_(kernel, k1), bias + b1
        else:
            kernel = add_centred_(kernel, self.conv_1x1.weight[rows])
        first = rows.start or 0
        if isinstance(self.identity, nn.BatchNorm2d):
            factor, shift = bn_affine(self.identity, rows)
            kernel, bias = add_identity_(kernel, factor, first_row=first), bias + shift
        elif self.identity is not None:
            kernel = add_identity_(kernel, kernel.new_ones(kernel.shape[0]), first_row=first)
        if self.use_avg:
            kernel = (
                kernel + avg_pool_kernel(self.out_channels, self.groups, self.kernel_size, like=kernel)[rows]
            )
        if self.bn is None:  # the BN sits after the SE gate: not foldable, kept in ``se.bn``
            return kernel, bias
        return bn_kernel_bias(kernel, self.bn, conv_bias=bias, rows=rows)

    def layer_spec(self) -> ConvLayerSpec:
        spec = super().layer_spec()
        if spec.se is None or self.se is None or self.se.bn is None:
            return spec
        se = spec.se.model_copy(update={"norm_eps": self.se.bn.eps})  # as the net set it
        return spec.model_copy(update={"se": se})


@register_block
class QARepVGGV1Block(QARepVGGBlock):
    """``act(bn(se(kxk-BN(x) + 1x1-BN(x) + BN(x))))`` (the official ``QARepVGGBlockV1``)."""

    family = "qarepvgg_v1"
    branch_bn = True


@register_block
class QARepVGGAvgBlock(QARepVGGBlock):
    """The default form plus ``AvgPool2d(k, 1, k // 2)`` beside the identity (YOLOv6's
    ``QARepVGGBlockV2``). Average pooling has no dilated form: no dilation."""

    family = "qarepvgg_avg"
    avg_branch = True
    supports_dilation = False
