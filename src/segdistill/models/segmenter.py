"""Segmenter: encoder -> decoder -> heads -> SegOutput, and `build_segmenter`.

One forward for every architecture (the smp pattern); an architecture is only a row of
`ARCHITECTURES` saying which decoder to use and with which defaults.

Feature taps in `SegOutput.features` (references to tensors the forward makes anyway,
no copies):
- "encoder_c1" .. "encoder_c5" ("encoder_c6" for NfS-Net): every encoder level, c_i at
  nominal stride 2**i (actual stride `encoder.strides[i - 1]`).
- "encoder_out": the last encoder level, before the MC dropout.
- "decoder_aspp" (DeepLabV3+): the ASPP block's output, [B, model.decoder_channels, h, w]
  (256 by default) at the encoder's output stride, before the decoder fuses the stride-4
  level.
- "decoder_out": the decoder feature the heads read ([B, decoder.out_channels, h, w]:
  stride 4 for DeepLabV3+, the encoder output stride for PSPNet, 32 for NfS-SegNet; for
  "plain" the encoder's last level itself).
`SegOutput.aux_logits` is keyed by encoder level ("c4", "c5") when aux heads are on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from segdistill.errors import ConfigError
from segdistill.models.decoders import (
    Decoder,
    DeepLabV3PlusDecoder,
    LightDecoder,
    PlainDecoder,
    PSPDecoder,
    mc_dropout_layer,
    resize,
)
from segdistill.models.encoders import (
    Encoder,
    build_encoder,
    load_encoder_weights,
    lookup,
    scale_channels,
)
from segdistill.models.heads import HOLDER_HEAD_CHANNELS, AuxHead, build_heads
from segdistill.outputs import SegOutput


def _to_size(head_output: Tensor, size: torch.Size) -> Tensor:
    """A head's map upsampled to the input size, in the default memory layout even when the
    network runs channels-last: a softmax over the classes of a full-size channels-last
    map is 2.4 times slower on the CPU (19 x 512 x 1024), while converting the head's
    small map first costs next to nothing."""
    return resize(head_output.contiguous(), size)


class Segmenter(nn.Module):
    """A segmentation network returning class scores, optional uncertainty and taps.

    encoder:          module with `forward(x) -> list[Tensor]`, `out_channels`, `strides`.
    decoder:          module with `forward(features) -> Tensor` and `out_channels`.
    uncertainty_head: None, "scalar" (DUDES) or "per_class" (Holder), see `heads.py`.
    mc_dropout:       p of the MCDropout after the last encoder level (the decoder owns
                      the one at its deepest level); 0 for none. Inactive in eval mode
                      until a teacher switches them to train mode
                      (`teachers.mc_dropout_layers` finds them).
    aux_levels:       encoder levels ("c4", ...) that get an auxiliary classifier.
    head_channels:    hidden width of the per-class heads (default: the decoder's).
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        num_classes: int,
        uncertainty_head: str | None = None,
        mc_dropout: float = 0.0,
        aux_levels: Sequence[str] = (),
        head_channels: int | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ConfigError(f"num_classes={num_classes!r} must be a positive integer")
        self.encoder = encoder
        self.encoder_dropout = mc_dropout_layer(mc_dropout)
        self.decoder = decoder
        self.num_classes = num_classes
        # The head's kind, for callers that must know what its channels mean (eq. 8's
        # OOD map needs the per-class head) without inspecting its layers.
        self.uncertainty_kind = uncertainty_head
        self.level_names = [f"c{i}" for i in range(1, len(encoder.out_channels) + 1)]
        self.seg_head, self.uncertainty_head = build_heads(
            uncertainty_head, decoder.out_channels, num_classes, head_channels
        )
        unknown = [level for level in aux_levels if level not in self.level_names]
        if unknown:
            raise ConfigError(f"aux head levels {unknown} not in encoder levels {self.level_names}")
        self.aux_heads = nn.ModuleDict(
            {
                level: AuxHead(encoder.out_channels[self.level_names.index(level)], num_classes)
                for level in aux_levels
            }
        )

    def forward(self, x: Tensor) -> SegOutput:
        """x [B, 3, H, W] normalised -> SegOutput with logits [B, C, H, W], uncertainty
        [B, K, H, W] in [0, 1] or None, feature taps and aux logits [B, C, H, W]."""
        size = x.shape[-2:]
        features = self.encoder(x)
        taps = {f"encoder_{name}": f for name, f in zip(self.level_names, features)}
        taps["encoder_out"] = features[-1]
        features = [*features[:-1], self.encoder_dropout(features[-1])]
        decoded, decoder_taps = self.decoder.forward_taps(features)
        taps |= decoder_taps
        taps["decoder_out"] = decoded
        logits = _to_size(self.seg_head(decoded), size)
        uncertainty = None
        if self.uncertainty_head is not None:
            # Upsample then squash, as smp's head does with its activation: stays in [0, 1].
            uncertainty = torch.sigmoid(_to_size(self.uncertainty_head(decoded), size))
        aux_logits = {
            level: _to_size(head(features[self.level_names.index(level)]), size)
            for level, head in self.aux_heads.items()
        }
        return SegOutput(logits, uncertainty, taps, aux_logits)


@dataclass(frozen=True)
class Architecture:
    """How an arch name wires an encoder to a decoder.

    decoder:        decoder class, called (encoder_channels, encoder_strides, channels,
                    mc_dropout).
    output_stride:  the encoder output stride the architecture uses unless
                    encoder_options says otherwise; None keeps the encoder's default.
    channels:       decoder channels of the paper network (scaled down with the encoder
                    width below 1 unless decoder_channels is given).
    aux_levels:     encoder levels that get auxiliary heads when aux_heads is on.
    """

    decoder: type[Decoder]
    output_stride: int | None
    channels: int
    aux_levels: tuple[str, ...]


ARCHITECTURES: dict[str, Architecture] = {
    # DUDES / Holder / He: smp's DeepLabV3Plus defaults (output stride 16, 256 channels).
    # Two differences from smp, with the same parameters: bilinear upsampling with
    # align_corners=False (smp's UpsamplingBilinear2d: True), and a dilated stage keeps its
    # first conv at the previous dilation as torchvision's replace_stride_with_dilation
    # does (smp dilates every conv of it): a slightly different receptive field.
    "deeplabv3plus": Architecture(DeepLabV3PlusDecoder, 16, 256, ("c4",)),
    # Karine et al.: PSPNet at output stride 8 with the layer3 (c4) auxiliary head.
    "pspnet": Architecture(PSPDecoder, 8, 512, ("c4",)),
    # Oh et al.: NfS-SegNet; JA-KD reads auxiliary outputs at strides 16 and 32.
    "nfs": Architecture(LightDecoder, None, 128, ("c4", "c5")),
    # He et al.'s student: the encoder (output stride 16) straight into the 1x1 classifier,
    # no ASPP, no decoder; "decoder_out" is then the encoder's last feature map.
    "plain": Architecture(PlainDecoder, 16, 0, ("c4",)),
}


def build_segmenter(
    arch: str,
    encoder: str,
    num_classes: int,
    uncertainty_head: str | None = None,
    encoder_options: Mapping[str, float] | None = None,
    mc_dropout: float = 0.0,
    aux_heads: bool = False,
    encoder_weights: str | Path | None = None,
    decoder_channels: int | None = None,
) -> Segmenter:
    """Build `arch` ("deeplabv3plus", "pspnet", "nfs", "plain") on `encoder` (see ENCODERS).

    encoder_options:  `output_stride` (default: the architecture's) and `width`.
    encoder_weights:  optional local ImageNet state dict loaded into the encoder.
    decoder_channels: default: the architecture's, times the encoder width when it is
                      below 1 (tiny models and NfS-SegNet's reduced students).
    """
    spec = lookup(ARCHITECTURES, arch, "arch")
    options = dict(encoder_options or {})
    if spec.output_stride is not None:
        options.setdefault("output_stride", spec.output_stride)
    enc = build_encoder(encoder, **options)
    if encoder_weights is not None:
        load_encoder_weights(enc, encoder_weights)
    width = min(1.0, options.get("width", 1.0))
    if decoder_channels is None:
        decoder_channels = scale_channels(spec.channels, width)
    elif not (isinstance(decoder_channels, int) and decoder_channels >= 1):
        raise ConfigError(f"decoder_channels={decoder_channels!r} must be a positive integer")
    decoder = spec.decoder(enc.out_channels, enc.strides, decoder_channels, mc_dropout)
    return Segmenter(
        enc,
        decoder,
        num_classes,
        uncertainty_head,
        mc_dropout,
        spec.aux_levels if aux_heads else (),
        # Holder & Shafique's 256 at this width, but never wider than the head's input.
        head_channels=min(decoder.out_channels, scale_channels(HOLDER_HEAD_CHANNELS, width)),
    )


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters, as the papers count them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
