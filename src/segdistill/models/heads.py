"""Output heads: class scores, uncertainty, auxiliary class scores.

A head maps the decoder feature [B, Cin, h, w] to [B, K, h, w] at the same resolution;
the Segmenter upsamples to the input size and applies the sigmoid to uncertainty.

Head pairs by `uncertainty_head` (see `HEAD_PAIRS`):
- None:        segmentation head only, a 1x1 conv to C classes (smp's SegmentationHead).
- "scalar":    DUDES (Landgraf et al.): the same 1x1 segmentation head plus an identical
               head with 1 output channel (sigmoid), 257 parameters at 256 channels.
- "per_class": Holder & Shafique: the output layer is replaced by a prediction head and an
               uncertainty head, each a 3x3 conv-BN-ReLU then a 1x1 conv to C channels
               (sigmoid on the uncertainty). The 3x3 conv has `hidden` channels: the
               paper's 256 at full width, narrowed with `width` like every other layer
               (at width 0.25, 256-channel heads would cost 4x the whole network), and
               never more than its input's (`build_segmenter` chooses it): on DeepLabV3+
               that is the decoder's own width, while a network without a decoder (the
               `plain` arch, 1280 channels out of MobileNetV2 at any width) would
               otherwise get two 1280 x 1280 3x3 convolutions, 13 times the network.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from segdistill.models.encoders import lookup

# Width of Holder & Shafique's heads' 3x3 conv in the paper (at full network width).
HOLDER_HEAD_CHANNELS = 256


def pointwise_head(in_ch: int, out_ch: int) -> nn.Conv2d:
    """1x1 conv with bias: [B, in_ch, h, w] -> [B, out_ch, h, w]."""
    return nn.Conv2d(in_ch, out_ch, 1)


class HolderHead(nn.Sequential):
    """Holder & Shafique's head: 3x3 conv-BN-ReLU from in_ch to `hidden` channels (256 on
    the full-width decoder), 1x1 conv to out_ch."""

    def __init__(self, in_ch: int, out_ch: int, hidden: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_ch, 1),
        )


class AuxHead(nn.Sequential):
    """Auxiliary classifier on an encoder level (PSPNet's layer3 head, JA-KD's
    intermediate outputs): 3x3 conv-BN-ReLU to in_ch / 4 channels (1024 -> 256 in Zhao et
    al.), Dropout(0.1), 1x1 conv to the classes."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        hidden = max(1, in_ch // 4)
        super().__init__(
            nn.Conv2d(in_ch, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(hidden, num_classes, 1),
        )


def _scalar(in_ch: int, num_classes: int, hidden: int) -> tuple[nn.Module, nn.Module]:
    return pointwise_head(in_ch, num_classes), pointwise_head(in_ch, 1)


def _per_class(in_ch: int, num_classes: int, hidden: int) -> tuple[nn.Module, nn.Module]:
    return HolderHead(in_ch, num_classes, hidden), HolderHead(in_ch, num_classes, hidden)


# uncertainty_head name -> (segmentation head, uncertainty head) constructor, called with
# (input channels, classes, hidden channels of a head that has a hidden layer).
HEAD_PAIRS: dict[str, Callable[[int, int, int], tuple[nn.Module, nn.Module]]] = {
    "scalar": _scalar,
    "per_class": _per_class,
}


def build_heads(
    uncertainty_head: str | None, in_ch: int, num_classes: int, hidden: int | None = None
) -> tuple[nn.Module, nn.Module | None]:
    """(segmentation head -> C channels, uncertainty head -> K channels or None); `hidden`:
    the width of the per-class heads' 3x3 conv (default `in_ch`)."""
    if uncertainty_head is None:
        return pointwise_head(in_ch, num_classes), None
    pair = lookup(HEAD_PAIRS, uncertainty_head, "uncertainty_head")
    return pair(in_ch, num_classes, in_ch if hidden is None else hidden)
