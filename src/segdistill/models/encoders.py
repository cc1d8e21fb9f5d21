"""Encoders: ResNet-18/34/50/101, MobileNetV2 and the NfS-Net fast encoder.

Every encoder follows one contract:

- `forward(x [B, 3, H, W]) -> list[Tensor]`: one feature map per level, fine to coarse.
  Level `c_i` (list index i - 1) has nominal stride 2**i: c1 = 2, c2 = 4, c3 = 8, c4 = 16,
  c5 = 32 (and c6 = 64 for NfS-Net). The actual stride is capped at `output_stride`:
  levels past it keep the resolution and use dilated convolutions instead (DeepLab's
  atrous trick, torchvision's `replace_stride_with_dilation`).
- `out_channels: list[int]` and `strides: list[int]`, one entry per level.
- `output_stride: int`, the stride of the last level.

ResNet and MobileNetV2 keep torchvision's module names, so their ImageNet state dicts
(without the classifier `fc.*` / `classifier.*`) load with a plain `load_state_dict`;
`load_encoder_weights` reads such a file. `width` multiplies the channel counts (names
unchanged, shapes scaled); width 1 is exactly torchvision's network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from segdistill.errors import CheckpointError, ConfigError, did_you_mean, short_reason

T = TypeVar("T")

# Options every encoder constructor takes; `build_encoder` refuses any other key.
ENCODER_OPTIONS = ("output_stride", "width")

# Key prefixes of the ImageNet classifiers in torchvision checkpoints, never loaded.
CLASSIFIER_PREFIXES = ("fc.", "classifier.")


class Encoder(nn.Module):
    """The contract of every encoder (module docstring); each sets these in `__init__`."""

    out_channels: list[int]
    strides: list[int]
    output_stride: int


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """`table[name]`, or a ConfigError that lists the valid names and the closest one."""
    if name in table:
        return table[name]
    hint = did_you_mean(name, table)
    raise ConfigError(f"unknown {what} {name!r}: choose one of {sorted(table)}{hint}")


def scale_channels(channels: int, width: float) -> int:
    """`channels * width` rounded, at least 1 (ResNet and NfS-Net width multiplier)."""
    return max(1, round(channels * width))


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's MobileNetV2 channel rounding: nearest multiple of `divisor`, never
    below `divisor` nor more than 10 % under `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def init_weights(module: nn.Module) -> None:
    """torchvision's initialisation: He-normal (fan_out) convolutions, zero conv biases,
    unit/zero BatchNorm. Used by encoders and decoders; heads keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class StrideSchedule:
    """Turns a network's stride-2 steps into strides or dilations for an output stride.

    While the running stride is below `output_stride`, a step halves the resolution;
    after that it keeps the resolution and doubles the dilation of the layers that
    follow. The stepping layer itself keeps the previous dilation, as torchvision's ResNet
    and the DeepLab reference code do.
    """

    def __init__(self, output_stride: int) -> None:
        self.output_stride = output_stride
        self.stride = 1
        self.dilation = 1

    def step(self) -> tuple[int, int, int]:
        """Take one nominal stride-2 step: (stride, dilation of the stepping layer,
        dilation of the layers after it)."""
        previous = self.dilation
        if self.stride * 2 > self.output_stride:
            self.dilation *= 2
            return 1, previous, self.dilation
        self.stride *= 2
        return 2, previous, self.dilation


def check_output_stride(output_stride: int, valid: Sequence[int], encoder: str) -> None:
    if output_stride not in valid:
        raise ConfigError(
            f"encoder_options.output_stride={output_stride!r} is not supported by {encoder}; "
            f"choose one of {list(valid)}"
        )


def check_width(width: float) -> None:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ConfigError(f"encoder_options.width={width!r} must be a positive number")


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias, padded to keep the size (divided by `stride`)."""
    return nn.Conv2d(
        in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convolutions and a shortcut (torchvision names)."""

    expansion = 1
    layers = 2  # weighted layers, which a ResNet's name counts

    def __init__(
        self, inplanes: int, planes: int, stride: int, dilation: int, first_dilation: int
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, first_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50/101 block: 1x1 reduce, 3x3 (strided / dilated), 1x1 expand x4.

    Its one 3x3 conv (conv2) is where a first block steps, so it takes `first_dilation`
    (equal to `dilation` in later blocks); `dilation` is there for the block signature
    shared with BasicBlock, where conv2 comes after the step.
    """

    expansion = 4
    layers = 3  # weighted layers, which a ResNet's name counts

    def __init__(
        self, inplanes: int, planes: int, stride: int, dilation: int, first_dilation: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, first_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_downsample(inplanes: int, outplanes: int, stride: int) -> nn.Sequential | None:
    """The 1x1 projection shortcut (`downsample.0/1`), only where the shape changes."""
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes)
    )


class ResNetEncoder(Encoder):
    """ResNet with torchvision's state-dict layout, without `avgpool` / `fc`.

    Levels: c1 = stem conv-BN-ReLU (stride 2, 64 channels), c2..c5 = layer1..layer4
    (strides 4, 8, 16, 32, capped at `output_stride` in {8, 16, 32} by dilating layer3 /
    layer4). Dilation follows torchvision: the conv where a dilated layer would have
    stepped keeps the previous dilation, the 3x3 convs after it take the new one.
    """

    # Added by name in __init__ (torchvision's state-dict keys).
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        output_stride: int = 32,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        # Its weighted layers: the stem conv, the blocks' convs and the classifier it drops.
        name = f"resnet{block.layers * sum(layers) + 2}"
        check_output_stride(output_stride, (8, 16, 32), name)
        check_width(width)
        stem = scale_channels(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        schedule = StrideSchedule(output_stride)
        schedule.step()  # conv1
        schedule.step()  # maxpool
        self.out_channels = [stem]
        self.strides = [2]
        inplanes = stem
        for index, (base, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            planes = scale_channels(base, width)
            # layer1 follows the max-pool at stride 4; each later layer is one stride-2 step.
            stride, first_dilation, dilation = (1, 1, 1) if index == 1 else schedule.step()
            stage = [block(inplanes, planes, stride, dilation, first_dilation)]
            inplanes = planes * block.expansion
            stage += [block(inplanes, planes, 1, dilation, dilation) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            self.out_channels.append(inplanes)
            self.strides.append(schedule.stride)
        self.output_stride = schedule.stride
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [B, 3, H, W] -> [c1, c2, c3, c4, c5], c_i [B, out_channels[i-1], H/s_i, W/s_i]."""
        c1 = self.relu(self.bn1(self.conv1(x)))
        features = [c1]
        x = self.maxpool(c1)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


# --------------------------------------------------------------------------- MobileNetV2


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation for MobileNetV2 (names `0` conv, `1` BN)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped when t = 1), 3x3 depthwise, 1x1 linear
    projection; residual when the nominal stride is 1 and the width is unchanged."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        expand_ratio: int,
        nominal_stride: int,
        dilation: int,
    ) -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        self.use_res_connect = nominal_stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, dilation, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t, channels c, repeats n, stride s) of Sandler et al., Table 2.
MOBILENETV2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2Encoder(Encoder):
    """MobileNetV2 `features.0..18` with torchvision's names, without `classifier`.

    Levels (as segmentation_models_pytorch splits it): c1 = features.0-1 (stride 2, 16 ch),
    c2 = features.2-3 (4, 24), c3 = features.4-6 (8, 32), c4 = features.7-13 (16, 96),
    c5 = features.14-18 (32, 1280). `width` is the usual width multiplier (channels rounded
    to multiples of 8; the last 1x1 conv keeps 1280 channels below width 1, as torchvision
    and the official checkpoints do, e.g. MobileNetV2-1.4 of He et al.). `output_stride`
    in {8, 16, 32} dilates the depthwise convolutions past it.
    """

    def __init__(self, output_stride: int = 32, width: float = 1.0) -> None:
        super().__init__()
        check_output_stride(output_stride, (8, 16, 32), "mobilenetv2")
        check_width(width)
        schedule = StrideSchedule(output_stride)
        in_ch = make_divisible(32 * width)
        last_ch = make_divisible(1280 * max(1.0, width))
        stride, _, _ = schedule.step()
        layers: list[nn.Module] = [ConvBNReLU6(3, in_ch, 3, stride)]
        # A level ends where the next stride-2 block starts (and after the last layer).
        level_ends: list[int] = []
        strides: list[int] = []
        out_channels: list[int] = []
        dilation = 1
        for t, c, n, s in MOBILENETV2_SETTINGS:
            out_ch = make_divisible(c * width)
            for i in range(n):
                nominal = s if i == 0 else 1
                if nominal == 2:
                    level_ends.append(len(layers))
                    strides.append(schedule.stride)
                    out_channels.append(in_ch)
                    stride, first_dilation, dilation = schedule.step()
                else:
                    stride, first_dilation = 1, dilation
                layers.append(InvertedResidual(in_ch, out_ch, stride, t, nominal, first_dilation))
                in_ch = out_ch
        layers.append(ConvBNReLU6(in_ch, last_ch, 1))
        level_ends.append(len(layers))
        strides.append(schedule.stride)
        out_channels.append(last_ch)
        self.features = nn.Sequential(*layers)
        self.level_ends = level_ends
        self.out_channels = out_channels
        self.strides = strides
        self.output_stride = schedule.stride
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [B, 3, H, W] -> [c1, .., c5], c_i [B, out_channels[i-1], H/s_i, W/s_i]."""
        features = []
        for index, layer in enumerate(self.features, start=1):
            x = layer(x)
            if index in self.level_ends:
                features.append(x)
        return features


# --------------------------------------------------------------------------- NfS-Net


class ConvBNPReLU(nn.Sequential):
    """Convolution without bias, BatchNorm, PReLU: NfS-Net's only compute layer.

    The paper lists convolution, PReLU, pooling and concatenation; its convolutions have no
    bias because a BatchNorm follows in training, which folds into the convolution at
    inference, so the deployed network has exactly those four layer types.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(out_ch),
        )


class DenseStage(nn.Module):
    """One NfS-Net stage: 2x2 max-pool, a dense block, a 1x1 compression.

    Dense block (DenseNet feature reuse): layer j sees the concatenation of the stage
    input and all earlier layer outputs and adds `growth` channels with a 3x3 conv. Blocks
    are short (2-4 layers), so re-concatenating the growing tensor costs little. The
    compression runs after the pooling, at the low resolution, where it is 4x cheaper.
    """

    def __init__(
        self, in_ch: int, layers: int, growth: int, out_ch: int, stride: int, dilation: int
    ) -> None:
        super().__init__()
        # ceil_mode: an odd side keeps its last row (1 -> 1, 5 -> 3), as the strided stem
        # conv does, so any image size works; sides divisible by 64 are unaffected.
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.dense = nn.ModuleList(
            ConvBNPReLU(in_ch + j * growth, growth, 3, dilation=dilation) for j in range(layers)
        )
        self.compress = ConvBNPReLU(in_ch + layers * growth, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)
        for layer in self.dense:
            x = torch.cat([x, layer(x)], dim=1)
        return self.compress(x)


# (dense layers, growth, output channels) per stage c2..c6 at full width.
NFSNET_STAGES = ((2, 16, 48), (3, 32, 112), (4, 56, 224), (4, 72, 352), (2, 96, 384))
NFSNET_STEM = 24


class NfSNetEncoder(Encoder):
    """NfS-Net (Oh et al., section III-A) with NfS-SegNet's extra strided stage (III-B).

    Choices, where the paper gives no numbers (it gives no layer table):
    - Stem: one 3x3 stride-2 conv (24 channels) = c1; every later stage starts with a 2x2
      max-pool, so the resolution drops to 1/4 after a single convolution ("aggressively
      downsample in early stage").
    - Stages c2..c5 (strides 4..32) are dense blocks (DenseNet feature reuse by
      concatenation, no depthwise or grouped convolutions, no bias, PReLU), each closed by
      a 1x1 compression; channel counts grow with depth so that most computation sits in
      the encoder.
    - c6 is NfS-SegNet's extra strided stage (stride 64). The paper says the final map is
      "as small as 1/256 of the original image"; one extra stride-2 stage on a stride-32
      classifier gives 1/64 per side (1/4096 of the pixels), which is what we build: it is
      the structure the paper describes (one added stage with a stride).
    - Sizes are set so the full-width NfS-SegNet costs about 12 GMACs (24 GFLOPs) at
      2048x1024, the paper's 24.3 GFLOPs (benchmarks/models.py prints the figure).
    `width` scales every channel count (Oh et al., Fig. 8 students: 0.1/0.25/0.5/0.75).
    `output_stride` in {8, 16, 32, 64} replaces the pools past it by dilation.
    """

    def __init__(self, output_stride: int = 64, width: float = 1.0) -> None:
        super().__init__()
        check_output_stride(output_stride, (8, 16, 32, 64), "nfsnet")
        check_width(width)
        schedule = StrideSchedule(output_stride)
        stem = scale_channels(NFSNET_STEM, width)
        stride, _, _ = schedule.step()
        self.stem = ConvBNPReLU(3, stem, 3, stride)
        self.out_channels = [stem]
        self.strides = [schedule.stride]
        in_ch = stem
        stages = []
        for layers, growth, out_ch in NFSNET_STAGES:
            # The pool is the step; the dense 3x3 convs after it take the new dilation.
            stride, _, dilation = schedule.step()
            out_ch = scale_channels(out_ch, width)
            stages.append(
                DenseStage(in_ch, layers, scale_channels(growth, width), out_ch, stride, dilation)
            )
            self.out_channels.append(out_ch)
            self.strides.append(schedule.stride)
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.output_stride = schedule.stride
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [B, 3, H, W] -> [c1, .., c6], c_i [B, out_channels[i-1], H/s_i, W/s_i]."""
        x = self.stem(x)
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


# --------------------------------------------------------------------------- registry

ENCODERS: dict[str, Callable[..., Encoder]] = {
    "resnet18": partial(ResNetEncoder, BasicBlock, (2, 2, 2, 2)),
    "resnet34": partial(ResNetEncoder, BasicBlock, (3, 4, 6, 3)),
    "resnet50": partial(ResNetEncoder, Bottleneck, (3, 4, 6, 3)),
    "resnet101": partial(ResNetEncoder, Bottleneck, (3, 4, 23, 3)),
    "mobilenetv2": MobileNetV2Encoder,
    "nfsnet": NfSNetEncoder,
}


def build_encoder(name: str, **options: float) -> Encoder:
    """Build the encoder `name` (see ENCODERS) with options `output_stride` and `width`."""
    constructor = lookup(ENCODERS, name, "encoder")
    unknown = sorted(set(options) - set(ENCODER_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown encoder_options {unknown} for {name!r}: valid options are "
            f"{list(ENCODER_OPTIONS)}{did_you_mean(unknown[0], ENCODER_OPTIONS)}"
        )
    return constructor(**options)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"encoder weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader failure means the file is not usable weights
        raise CheckpointError(
            f"encoder weights {str(path)!r}: not a PyTorch or safetensors state dict "
            f"({short_reason(err)})"
        ) from err
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} is not a state dict (a mapping of names to tensors)")
    return dict(state)


def _listing(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local ImageNet state dict (`.pth`/`.pt` or `.safetensors`) into `encoder`.

    The classifier keys (`fc.*`, `classifier.*`) are dropped; every other key must match
    the encoder's names and shapes exactly, else a CheckpointError lists the missing,
    unexpected and mis-shaped keys (e.g. a ResNet file given to a MobileNetV2, or a width
    that differs from the file's).
    """
    path = Path(path)
    state = {
        k: v for k, v in _read_state_dict(path).items() if not k.startswith(CLASSIFIER_PREFIXES)
    }
    expected = encoder.state_dict()
    # Files saved before PyTorch 0.4.1 (torchvision's resnet18-5c106cde.pth, smp's and so
    # DUDES') lack BatchNorm's step counters, which load_state_dict fills in itself.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        parts = [
            f"{label} keys: {_listing(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped (file vs model)", misshaped),
            )
            if keys
        ]
        raise CheckpointError(
            f"encoder weights {str(path)!r} do not fit {type(encoder).__name__}: "
            + "; ".join(parts)
        )
    encoder.load_state_dict(state)
