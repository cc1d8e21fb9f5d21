"""Decoders: DeepLabV3+, PSPNet, NfS-SegNet's light asymmetric decoder, and none (plain).

Every decoder takes the encoder's feature list (fine to coarse, see `encoders.py`) and
returns one feature map `[B, out_channels, h, w]` that the heads turn into class scores.
All share one constructor signature, `(encoder_channels, encoder_strides, channels,
mc_dropout)`, so `segmenter.build_segmenter` picks one by name.

`mc_dropout > 0` puts an `MCDropout` at the decoder's deepest level (the MC-dropout
teacher of NfS-SegNet drops out "at the layers which have the most compressed features
with low resolution"). It is inactive in eval mode unless a teacher switches it on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdistill.errors import ConfigError
from segdistill.models.encoders import ConvBNPReLU, init_weights


class Decoder(nn.Module):
    """The contract of every decoder (module docstring): `forward(features) -> [B,
    out_channels, h, w]`; `forward_taps` also returns named intermediate maps that the
    Segmenter exposes as feature taps (none by default)."""

    out_channels: int

    def forward_taps(self, features: Sequence[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self(features), {}


class MCDropout(nn.Dropout2d):
    """Channel dropout used for Monte Carlo sampling at inference.

    A Dropout2d like any other, but its own type, so `teachers.mc_dropout_layers` finds
    exactly these (and not the ordinary training dropout of ASPP or PSPNet) for the
    MC-dropout teacher to switch into train mode.
    """


def mc_dropout_layer(p: float) -> nn.Module:
    """An MCDropout(p), or an Identity when p is 0 (no sampling, no cost)."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"model.mc_dropout={p!r} must be in [0, 1)")
    return MCDropout(p) if p > 0 else nn.Identity()


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Convolution without bias, BatchNorm, ReLU."""
    padding = (kernel - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def separable_conv_bn_relu(in_ch: int, out_ch: int, dilation: int = 1) -> nn.Sequential:
    """3x3 depthwise then 1x1 pointwise convolution (no biases), BatchNorm, ReLU.

    The layout of segmentation_models_pytorch's SeparableConv2d + BN + ReLU: index 0 is
    the (depthwise, pointwise) pair, 1 the BatchNorm.
    """
    separable = nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch, bias=False),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
    )
    return nn.Sequential(separable, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of [B, C, h, w] to `size` (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def level_with_stride(strides: Sequence[int], stride: int, decoder: str) -> int:
    """Index of the encoder level with the given actual stride."""
    if stride not in strides:
        raise ConfigError(
            f"{decoder} needs an encoder level at stride {stride}; the encoder has {list(strides)}"
        )
    return list(strides).index(stride)


# --------------------------------------------------------------------------- DeepLabV3+

# ASPP rates of Chen et al. (2018) per output stride: (6, 12, 18) at 16, doubled at 8.
# segmentation_models_pytorch (whose DeepLabV3+ DUDES adapts) takes (12, 24, 36) at any
# stride: the same parameters, a wider view. Chen et al.'s keep the taps inside the small
# maps of the quick scale (8 x 16 at stride 16), where rate 12 would read mostly padding.
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with separable convolutions (as in smp).

    Branches: 1x1 conv, three separable 3x3 convs at `rates`, image pooling (global
    average, 1x1 conv, broadcast back); concatenated, projected by 1x1 conv-BN-ReLU,
    then Dropout(0.5) as in segmentation_models_pytorch.
    """

    def __init__(self, in_ch: int, out_ch: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [conv_bn_relu(in_ch, out_ch)]
            + [separable_conv_bn_relu(in_ch, out_ch, rate) for rate in rates]
        )
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_ch, out_ch))
        self.project = nn.Sequential(
            conv_bn_relu((len(rates) + 2) * out_ch, out_ch), nn.Dropout(0.5)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x [B, in_ch, h, w] -> [B, out_ch, h, w]."""
        pooled = self.pooling(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([conv(x) for conv in self.convs] + [pooled], dim=1))


class PlainDecoder(Decoder):
    """No decoder: the encoder's last feature map goes to the heads as it is (He et al.'s
    student, which "does not involve the ASPP and the decoder"). `channels` is unused, and
    so is `mc_dropout`: the Segmenter's MC dropout after the encoder already drops this
    map."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        channels: int,
        mc_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.out_channels = encoder_channels[-1]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return features[-1]


class DeepLabV3PlusDecoder(Decoder):
    """DeepLabV3+ decoder (Chen et al. 2018), structured as segmentation_models_pytorch's.

    ASPP on the last encoder level (rates from its output stride, `ASPP_RATES`), a
    separable 3x3 conv-BN-ReLU, [MC dropout], bilinear upsampling to the stride-4 level,
    concatenation with a 48-channel 1x1 projection of that level, and a separable 3x3
    conv-BN-ReLU. Output: [B, channels, H/4, W/4].
    """

    low_level_channels = 48

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        channels: int = 256,
        mc_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        output_stride = encoder_strides[-1]
        if output_stride not in ASPP_RATES:
            raise ConfigError(
                f"deeplabv3plus needs encoder output_stride in {sorted(ASPP_RATES)}, "
                f"got {output_stride}"
            )
        self.low_level = level_with_stride(encoder_strides, 4, "deeplabv3plus")
        self.aspp = nn.Sequential(
            ASPP(encoder_channels[-1], channels, ASPP_RATES[output_stride]),
            separable_conv_bn_relu(channels, channels),
        )
        self.dropout = mc_dropout_layer(mc_dropout)
        self.block1 = conv_bn_relu(encoder_channels[self.low_level], self.low_level_channels)
        self.block2 = separable_conv_bn_relu(channels + self.low_level_channels, channels)
        self.out_channels = channels
        init_weights(self)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """features (encoder levels) -> [B, channels, H/4, W/4]."""
        return self.forward_taps(features)[0]

    def forward_taps(self, features: Sequence[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The output and "decoder_aspp", the ASPP block's [B, channels, h, w] at the
        encoder's output stride (He et al.'s teacher features at stride 8)."""
        low = self.block1(features[self.low_level])
        context = self.aspp(features[-1])
        deep = resize(self.dropout(context), low.shape[-2:])
        return self.block2(torch.cat([deep, low], dim=1)), {"decoder_aspp": context}


# --------------------------------------------------------------------------- PSPNet


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module (Zhao et al. 2017): average-pool to bins 1, 2, 3
    and 6, 1x1 conv-BN-ReLU to in_ch / 4 each, upsample, concatenate with the input.
    Output: [B, 2 * in_ch, h, w]."""

    bins = (1, 2, 3, 6)

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_ch, in_ch // len(self.bins)))
            for b in self.bins
        )
        self.out_channels = in_ch + len(self.bins) * (in_ch // len(self.bins))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize(branch(x), size) for branch in self.branches], dim=1)


class PSPDecoder(Decoder):
    """PSPNet decoder (Zhao et al. 2017, the teacher and student of Karine et al.).

    Pyramid pooling on the last encoder level (output stride 8 by default), [MC dropout],
    3x3 conv-BN-ReLU to `channels` (512), Dropout(0.1) as in the reference code.
    Output: [B, channels, H/8, W/8]. The auxiliary layer3 head is a Segmenter aux head.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        channels: int = 512,
        mc_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(encoder_channels[-1])
        self.dropout = mc_dropout_layer(mc_dropout)
        self.bottleneck = nn.Sequential(
            conv_bn_relu(self.ppm.out_channels, channels, kernel=3), nn.Dropout2d(0.1)
        )
        self.out_channels = channels
        init_weights(self)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """features (encoder levels) -> [B, channels, h, w] at the last level's size."""
        return self.bottleneck(self.dropout(self.ppm(features[-1])))


# --------------------------------------------------------------------------- NfS-SegNet


class LightDecoder(Decoder):
    """NfS-SegNet's shallow decoder (Oh et al., section III-B): it "simply doubles" the
    resolution of the encoder output.

    The last level is projected by a 1x1 conv to `channels`, [MC dropout], upsampled x2
    to the previous level, concatenated with a 1x1 projection of that level and fused by
    one 3x3 conv. Conv (no bias) + BN + PReLU, as in the encoder. Output:
    [B, channels, h, w] at the second-to-last level's size (stride 32 for NfS-Net).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        channels: int = 128,
        mc_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.deep = ConvBNPReLU(encoder_channels[-1], channels, 1)
        self.dropout = mc_dropout_layer(mc_dropout)
        self.skip = ConvBNPReLU(encoder_channels[-2], channels, 1)
        self.fuse = ConvBNPReLU(2 * channels, channels, 3)
        self.out_channels = channels
        init_weights(self)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """features (encoder levels) -> [B, channels, h, w] at features[-2]'s size."""
        skip = self.skip(features[-2])
        deep = resize(self.dropout(self.deep(features[-1])), skip.shape[-2:])
        return self.fuse(torch.cat([deep, skip], dim=1))
