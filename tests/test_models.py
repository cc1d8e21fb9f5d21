"""Networks: torchvision naming, strides, output shapes, parity counts, weights loading."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import (
    build_encoder,
    build_segmenter,
    count_parameters,
    load_encoder_weights,
)
from segdistill.models.decoders import DeepLabV3PlusDecoder, LightDecoder, PSPDecoder
from segdistill.models.teachers import mc_dropout_layers

NUM_CLASSES = 19
TINY = {"width": 0.25}


# ----------------------------------------------------------------- torchvision reference
# An independent description of torchvision's ImageNet state dicts (classifier excluded):
# (key, shape) in registration order.


def _bn(prefix: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    names = ("weight", "bias", "running_mean", "running_var")
    return [(f"{prefix}.{n}", (channels,)) for n in names] + [(f"{prefix}.num_batches_tracked", ())]


def _conv(prefix: str, out_ch: int, in_ch: int, kernel: int) -> list[tuple[str, tuple]]:
    return [(f"{prefix}.weight", (out_ch, in_ch, kernel, kernel))]


def torchvision_resnet_keys(layers: list[int], bottleneck: bool) -> list[tuple[str, tuple]]:
    keys = _conv("conv1", 64, 3, 7) + _bn("bn1", 64)
    expansion = 4 if bottleneck else 1
    inplanes = 64
    for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(blocks):
            p = f"layer{index}.{b}"
            if bottleneck:
                keys += _conv(f"{p}.conv1", planes, inplanes, 1) + _bn(f"{p}.bn1", planes)
                keys += _conv(f"{p}.conv2", planes, planes, 3) + _bn(f"{p}.bn2", planes)
                keys += _conv(f"{p}.conv3", planes * 4, planes, 1) + _bn(f"{p}.bn3", planes * 4)
            else:
                keys += _conv(f"{p}.conv1", planes, inplanes, 3) + _bn(f"{p}.bn1", planes)
                keys += _conv(f"{p}.conv2", planes, planes, 3) + _bn(f"{p}.bn2", planes)
            if b == 0 and (index > 1 or inplanes != planes * expansion):
                keys += _conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                keys += _bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return keys


def torchvision_mobilenet_v2_keys() -> list[tuple[str, tuple]]:
    keys = _conv("features.0.0", 32, 3, 3) + _bn("features.0.1", 32)
    blocks = [(1, 16)] + [(6, 24)] * 2 + [(6, 32)] * 3 + [(6, 64)] * 4 + [(6, 96)] * 3
    blocks += [(6, 160)] * 3 + [(6, 320)]
    in_ch = 32
    for index, (t, out_ch) in enumerate(blocks, start=1):
        p = f"features.{index}.conv"
        hidden = in_ch * t
        depthwise = (hidden, 1, 3, 3)
        if t == 1:
            keys += [(f"{p}.0.0.weight", depthwise)] + _bn(f"{p}.0.1", hidden)
            keys += _conv(f"{p}.1", out_ch, hidden, 1) + _bn(f"{p}.2", out_ch)
        else:
            keys += _conv(f"{p}.0.0", hidden, in_ch, 1) + _bn(f"{p}.0.1", hidden)
            keys += [(f"{p}.1.0.weight", depthwise)] + _bn(f"{p}.1.1", hidden)
            keys += _conv(f"{p}.2", out_ch, hidden, 1) + _bn(f"{p}.3", out_ch)
        in_ch = out_ch
    return keys + _conv("features.18.0", 1280, 320, 1) + _bn("features.18.1", 1280)


def _layout(module: torch.nn.Module) -> list[tuple[str, tuple]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


@pytest.mark.parametrize(
    ("name", "expected", "params"),
    [
        # torchvision's totals less the classifier (512 or 2048 x 1000 + 1000): ResNet-18
        # 11,689,512, ResNet-34 21,797,672, ResNet-50 25,557,032, ResNet-101 44,549,160.
        ("resnet18", torchvision_resnet_keys([2, 2, 2, 2], False), 11_176_512),
        ("resnet34", torchvision_resnet_keys([3, 4, 6, 3], False), 21_284_672),
        ("resnet50", torchvision_resnet_keys([3, 4, 6, 3], True), 23_508_032),
        ("resnet101", torchvision_resnet_keys([3, 4, 23, 3], True), 42_500_160),
        ("mobilenetv2", torchvision_mobilenet_v2_keys(), 2_223_872),
    ],
)
def test_encoder_matches_torchvision_layout(name: str, expected: list, params: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        encoder = build_encoder(name)
    assert _layout(encoder) == expected
    assert count_parameters(encoder) == params


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "mobilenetv2", "nfsnet"])
def test_width_keeps_names(name: str) -> None:
    with torch.device("meta"):
        full, tiny = build_encoder(name), build_encoder(name, **TINY)
    assert list(full.state_dict()) == list(tiny.state_dict())
    assert count_parameters(tiny) < count_parameters(full) / 4


@pytest.mark.parametrize(
    ("width", "stem", "channels"),
    [
        # torchvision / Sandler et al.: channels x width rounded to the nearest multiple of
        # 8, raised by 8 where that loses over 10 % (0.35: 32 x 0.35 = 11.2 -> 16); the last
        # 1x1 conv keeps 1280 below width 1 and widens above (MobileNetV2-1.4: 1792).
        (0.35, 16, [8, 8, 16, 32, 1280]),
        (0.5, 16, [8, 16, 16, 48, 1280]),
        # 0.75: 24 x 0.75 = 18 rounds to 16, 11 % under, so 24 (torchvision's 0.75 network)
        (0.75, 24, [16, 24, 24, 72, 1280]),
        (1.4, 48, [24, 32, 48, 136, 1792]),
    ],
)
def test_mobilenetv2_width_multiplier(width: float, stem: int, channels: list[int]) -> None:
    with torch.device("meta"):
        encoder = build_encoder("mobilenetv2", width=width)
    assert encoder.features[0][0].out_channels == stem
    assert encoder.out_channels == channels


@pytest.mark.parametrize("name", ["resnet50", "nfsnet"])
def test_width_scales_every_layer(name: str) -> None:
    """ResNet and NfS-Net multiply every channel count by `width` (rounded), the image's
    3 input channels aside: layer by layer against the full-width network."""
    with torch.device("meta"):
        full, narrow = build_encoder(name), build_encoder(name, width=0.75)
    pairs = [
        (a, b)
        for a, b in zip(full.modules(), narrow.modules(), strict=True)
        if isinstance(a, torch.nn.Conv2d)
    ]
    assert pairs
    for a, b in pairs:
        assert b.out_channels == round(a.out_channels * 0.75)
        assert b.in_channels == (3 if a.in_channels == 3 else round(a.in_channels * 0.75))


def test_nfs_segnet_convolutions_have_no_bias() -> None:
    """Oh et al.: "we perform all convolutions without bias terms" (encoder and decoder;
    only the 1x1 classifiers have one)."""
    model = build_segmenter("nfs", "nfsnet", NUM_CLASSES, "scalar", TINY)
    for part in (model.encoder, model.decoder):
        assert all(m.bias is None for m in part.modules() if isinstance(m, torch.nn.Conv2d))


# ----------------------------------------------------------------- strides and shapes


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2", "nfsnet"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_encoder_levels(name: str, output_stride: int) -> None:
    encoder = build_encoder(name, output_stride=output_stride, **TINY).eval()
    levels = len(encoder.out_channels)
    assert encoder.strides == [min(2**i, output_stride) for i in range(1, levels + 1)]
    assert encoder.output_stride == output_stride
    # Even and odd sides: a level at stride s is ceil(side / s), dilated levels included.
    for height, width in [(64, 64), (97, 193)]:
        with torch.no_grad():
            features = encoder(torch.randn(1, 3, height, width))
        assert [tuple(f.shape) for f in features] == [
            (1, c, -(-height // s), -(-width // s))
            for c, s in zip(encoder.out_channels, encoder.strides)
        ]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_a_resnet_refusal_names_the_encoder_asked_for(name: str) -> None:
    """The name comes from the layers (18 = 2 x 8 block convs + stem + classifier)."""
    with pytest.raises(ConfigError, match=rf"output_stride=4 is not supported by {name};"):
        build_encoder(name, output_stride=4, **TINY)


def test_nfsnet_default_has_extra_stride_64_stage() -> None:
    encoder = build_encoder("nfsnet", **TINY)
    assert encoder.strides == [2, 4, 8, 16, 32, 64]
    assert encoder.output_stride == 64


# ----------------------------------------------------------------- dilation schedule
# (kernel, stride, dilation, padding) of every convolution larger than 1x1, in order, written
# out by hand from torchvision's / DeepLab's rule: once the running stride reaches the output
# stride, a stride-2 step becomes stride 1, the layer where it would have stepped keeps the
# previous dilation and the layers after it double it.


def _spatial_convs(module: torch.nn.Module) -> list[tuple[int, int, int, int]]:
    return [
        (m.kernel_size[0], m.stride[0], m.dilation[0], m.padding[0])
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1
    ]


def _k3(stride: int, dilation: int) -> tuple[int, int, int, int]:
    return (3, stride, dilation, dilation)


def _stage(first: tuple, rest: tuple, count: int) -> list[tuple]:
    """A stage's layers: the one where it (would) step, then the others."""
    return [first] + [rest] * (count - 1)


RESNET18_OS8 = [
    (7, 2, 1, 3),
    *_stage(_k3(1, 1), _k3(1, 1), 4),  # layer1 (two blocks, two 3x3 each)
    *_stage(_k3(2, 1), _k3(1, 1), 4),  # layer2: stride 8
    *_stage(_k3(1, 1), _k3(1, 2), 4),  # layer3: its first conv keeps dilation 1
    *_stage(_k3(1, 2), _k3(1, 4), 4),  # layer4: its first conv keeps dilation 2
]
RESNET50_OS16 = [
    (7, 2, 1, 3),
    *_stage(_k3(1, 1), _k3(1, 1), 3),  # layer1: one 3x3 (conv2) per bottleneck
    *_stage(_k3(2, 1), _k3(1, 1), 4),  # layer2
    *_stage(_k3(2, 1), _k3(1, 1), 6),  # layer3: stride 16
    *_stage(_k3(1, 1), _k3(1, 2), 3),  # layer4: dilated
]
# MobileNetV2: stem, then the depthwise conv of features.1..17 (Sandler et al., Table 2).
MOBILENETV2_OS8 = [
    _k3(2, 1),
    _k3(1, 1),  # features.1
    *_stage(_k3(2, 1), _k3(1, 1), 2),  # features.2-3: stride 4
    *_stage(_k3(2, 1), _k3(1, 1), 3),  # features.4-6: stride 8
    *_stage(_k3(1, 1), _k3(1, 2), 4),  # features.7-10 (64 channels): dilation 2 after
    *_stage(_k3(1, 2), _k3(1, 2), 3),  # features.11-13 (96)
    *_stage(_k3(1, 2), _k3(1, 4), 3),  # features.14-16 (160): dilation 4 after
    _k3(1, 4),  # features.17 (320)
]
# NfS-Net: the stem, then 2 + 3 + 4 + 4 + 2 dense 3x3 layers; c5 and c6 would pool.
NFSNET_OS16 = [_k3(2, 1)] + [_k3(1, 1)] * 9 + [_k3(1, 2)] * 4 + [_k3(1, 4)] * 2


@pytest.mark.parametrize(
    ("name", "output_stride", "expected"),
    [
        ("resnet18", 8, RESNET18_OS8),
        ("resnet50", 16, RESNET50_OS16),
        ("mobilenetv2", 8, MOBILENETV2_OS8),
        ("nfsnet", 16, NFSNET_OS16),
    ],
)
def test_dilated_levels_follow_the_deeplab_schedule(
    name: str, output_stride: int, expected: list
) -> None:
    """The receptive field the output stride promises: strides and dilations per conv."""
    with torch.device("meta"):
        encoder = build_encoder(name, output_stride=output_stride)
    assert _spatial_convs(encoder) == expected
    if name == "nfsnet":  # the pools of the dilated stages are gone, the others stay
        pools = [isinstance(s.pool, torch.nn.MaxPool2d) for s in encoder.stages]
        assert pools == [True, True, True, False, False]


@pytest.mark.parametrize(
    ("output_stride", "rates"), [(8, [12, 24, 36]), (16, [6, 12, 18]), (32, [3, 6, 9])]
)
def test_aspp_rates_follow_chen_et_al(output_stride: int, rates: list[int]) -> None:
    """Chen et al. (2018): atrous rates 6, 12, 18 at output stride 16, doubled at 8, on
    the three separable 3x3 branches; the separable conv after the ASPP is not dilated.
    At 32 they halve (rate x output stride stays 96 image pixels)."""
    options = {"output_stride": output_stride}
    with torch.device("meta"):
        model = build_segmenter("deeplabv3plus", "resnet18", NUM_CLASSES, encoder_options=options)
    depthwise = [
        (m.dilation[0], m.padding[0], m.groups == m.in_channels == m.out_channels)
        for m in model.decoder.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    # three ASPP branches, the conv after the ASPP, block2 (all depthwise separable)
    assert depthwise == [(r, r, True) for r in [*rates, 1, 1]]


# ----------------------------------------------------------------- forward references
# The encoders' forward written a second way, with torch.nn.functional from the state dict
# (torchvision's ResNet and MobileNetV2, NfS-Net as its docstring describes it), in eval
# mode with random batch-norm statistics so that every ReLU and every shortcut shows.


def _randomise_batch_norms(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.0, 0.5)


def _bn(x: torch.Tensor, s: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        s[f"{prefix}.running_mean"],
        s[f"{prefix}.running_var"],
        s[f"{prefix}.weight"],
        s[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def reference_resnet(s: dict, x: torch.Tensor, layers: list[int], bottleneck: bool) -> list:
    """torchvision's ResNet (v1.5: the stride in the 3x3 conv), output stride 32."""
    x = F.relu(_bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1"))
    features = [x]
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for index, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            p, stride = f"layer{index}.{b}", 2 if b == 0 and index > 1 else 1
            identity = x
            if f"{p}.downsample.0.weight" in s:
                shortcut = F.conv2d(x, s[f"{p}.downsample.0.weight"], stride=stride)
                identity = _bn(shortcut, s, f"{p}.downsample.1")
            if bottleneck:
                out = F.relu(_bn(F.conv2d(x, s[f"{p}.conv1.weight"]), s, f"{p}.bn1"))
                out = F.conv2d(out, s[f"{p}.conv2.weight"], stride=stride, padding=1)
                out = F.relu(_bn(out, s, f"{p}.bn2"))
                out = _bn(F.conv2d(out, s[f"{p}.conv3.weight"]), s, f"{p}.bn3")
            else:
                out = F.conv2d(x, s[f"{p}.conv1.weight"], stride=stride, padding=1)
                out = F.relu(_bn(out, s, f"{p}.bn1"))
                out = _bn(F.conv2d(out, s[f"{p}.conv2.weight"], padding=1), s, f"{p}.bn2")
            x = F.relu(out + identity)
        features.append(x)
    return features


# (t, nominal stride) of features.1..17, Sandler et al. Table 2.
MOBILENETV2_BLOCKS = [
    (1, 1),  # features.1 (16 channels)
    *_stage((6, 2), (6, 1), 2),  # 24
    *_stage((6, 2), (6, 1), 3),  # 32
    *_stage((6, 2), (6, 1), 4),  # 64
    *[(6, 1)] * 3,  # 96
    *_stage((6, 2), (6, 1), 3),  # 160
    (6, 1),  # 320
]


def reference_mobilenetv2(s: dict, x: torch.Tensor, output_stride: int) -> list:
    """torchvision's MobileNetV2 with DeepLab's output stride rule (TF slim mobilenet: once
    the stride reaches output_stride, a stride-2 layer takes stride 1 at the current rate and
    the rate doubles for the layers after it); a level ends before each stride-2 block."""
    x = F.relu6(_bn(F.conv2d(x, s["features.0.0.weight"], stride=2, padding=1), s, "features.0.1"))
    features, current, rate = [], 2, 1
    for index, (t, nominal) in enumerate(MOBILENETV2_BLOCKS, start=1):
        if nominal == 2:
            features.append(x)
        stride, r = 1, rate
        if nominal == 2 and current < output_stride:
            stride, current = 2, current * 2
        elif nominal == 2:
            rate *= 2
        p, j, h = f"features.{index}.conv", 0, x
        if t != 1:
            h = F.relu6(_bn(F.conv2d(h, s[f"{p}.0.0.weight"]), s, f"{p}.0.1"))
            j = 1
        w = s[f"{p}.{j}.0.weight"]
        h = F.conv2d(h, w, stride=stride, padding=r, dilation=r, groups=w.shape[0])
        h = F.relu6(_bn(h, s, f"{p}.{j}.1"))
        h = _bn(F.conv2d(h, s[f"{p}.{j + 1}.weight"]), s, f"{p}.{j + 2}")  # linear bottleneck
        x = x + h if nominal == 1 and x.shape[1] == h.shape[1] else h
    x = F.relu6(_bn(F.conv2d(x, s["features.18.0.weight"]), s, "features.18.1"))
    return [*features, x]


def reference_nfsnet(s: dict, x: torch.Tensor, stages: list[int]) -> list:
    """NfS-Net at output stride 64: a 3x3 stride-2 stem, then per stage a 2x2 max-pool
    (ceil), dense layers (3x3, each output concatenated to its input) and a 1x1
    compression; every conv without bias, then BN and a per-channel PReLU."""

    def cbp(x: torch.Tensor, p: str, padding: int = 0, stride: int = 1) -> torch.Tensor:
        out = _bn(F.conv2d(x, s[f"{p}.0.weight"], stride=stride, padding=padding), s, f"{p}.1")
        assert s[f"{p}.2.weight"].shape == (out.shape[1],)  # one PReLU slope per channel
        return F.prelu(out, s[f"{p}.2.weight"])

    x = cbp(x, "stem", padding=1, stride=2)
    features = [x]
    for i, layers in enumerate(stages):
        x = F.max_pool2d(x, 2, ceil_mode=True)
        for j in range(layers):
            x = torch.cat([x, cbp(x, f"stages.{i}.dense.{j}", padding=1)], dim=1)
        x = cbp(x, f"stages.{i}.compress")
        features.append(x)
    return features


@pytest.mark.parametrize(
    ("name", "options", "reference"),
    [
        ("resnet18", {}, lambda s, x: reference_resnet(s, x, [2, 2, 2, 2], False)),
        ("resnet50", {}, lambda s, x: reference_resnet(s, x, [3, 4, 6, 3], True)),
        ("mobilenetv2", {}, lambda s, x: reference_mobilenetv2(s, x, 32)),
        ("mobilenetv2", {"output_stride": 8}, lambda s, x: reference_mobilenetv2(s, x, 8)),
        # width 0.05: 96 and 160 channels both round to 8, so the block that would step to
        # stride 32 keeps its shape at output stride 16 yet has no shortcut (torchvision)
        (
            "mobilenetv2",
            {"output_stride": 16, "width": 0.05},
            lambda s, x: reference_mobilenetv2(s, x, 16),
        ),
        ("nfsnet", {}, lambda s, x: reference_nfsnet(s, x, [2, 3, 4, 4, 2])),
    ],
)
def test_encoder_forward_matches_a_functional_reference(
    name: str, options: dict, reference
) -> None:
    encoder = build_encoder(name, **{"width": 0.25, **options}).eval()
    _randomise_batch_norms(encoder)
    x = torch.randn(2, 3, 67, 45)  # odd sides: padding, pooling and ceil modes show
    with torch.no_grad():
        features = encoder(x)
        expected = reference(encoder.state_dict(), x)
    assert len(features) == len(expected)
    for level, (got, want) in enumerate(zip(features, expected), start=1):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"level c{level}")


# ----------------------------------------------------------------- decoder references
# Each decoder's forward written again from its state dict, on random encoder features
# large enough (40 x 40 at the deepest level) that every atrous rate reads real pixels.


def _cbr(x: torch.Tensor, s: dict, p: str, act=F.relu, padding: int = 0) -> torch.Tensor:
    """conv (no bias) - BN - activation, the layers `p.0`, `p.1`."""
    return act(_bn(F.conv2d(x, s[f"{p}.0.weight"], padding=padding), s, f"{p}.1"))


def _separable(x: torch.Tensor, s: dict, p: str, rate: int = 1) -> torch.Tensor:
    """smp's SeparableConv2d (3x3 depthwise at `rate`, 1x1 pointwise) - BN - ReLU."""
    depthwise = s[f"{p}.0.0.weight"]
    x = F.conv2d(x, depthwise, padding=rate, dilation=rate, groups=depthwise.shape[0])
    return F.relu(_bn(F.conv2d(x, s[f"{p}.0.1.weight"]), s, f"{p}.1"))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def reference_deeplabv3plus(s: dict, features: list, rates: tuple) -> tuple:
    """Chen et al. (2018) / smp: ASPP (1x1, three separable atrous 3x3, image pooling) on
    the last level, 1x1 projection, separable 3x3; upsampled to the stride-4 level and
    concatenated (deep first) with its 48-channel 1x1 projection; separable 3x3."""
    c5, c2 = features[-1], features[1]
    branches = [_cbr(c5, s, "aspp.0.convs.0")]
    branches += [_separable(c5, s, f"aspp.0.convs.{i}", r) for i, r in enumerate(rates, 1)]
    pooled = _cbr(c5.mean(dim=(2, 3), keepdim=True), s, "aspp.0.pooling.1")
    branches.append(pooled.expand_as(branches[0]))
    aspp = _separable(_cbr(torch.cat(branches, 1), s, "aspp.0.project.0"), s, "aspp.1")
    low = _cbr(c2, s, "block1")
    return _separable(torch.cat([_up(aspp, low), low], 1), s, "block2"), aspp


def reference_pspnet(s: dict, features: list) -> torch.Tensor:
    """Zhao et al.: average-pool the last level to 1, 2, 3, 6 bins, 1x1 conv-BN-ReLU each,
    upsample, concatenate after the input; 3x3 conv-BN-ReLU."""
    c5 = features[-1]
    pyramid = [c5] + [
        _up(_cbr(F.adaptive_avg_pool2d(c5, b), s, f"ppm.branches.{i}.1"), c5)
        for i, b in enumerate((1, 2, 3, 6))
    ]
    return _cbr(torch.cat(pyramid, 1), s, "bottleneck.0", padding=1)


def reference_light(s: dict, features: list) -> torch.Tensor:
    """Oh et al.'s shallow decoder: the last level (1x1) doubled onto the one before it
    (1x1), concatenated (deep first), fused by a 3x3; conv-BN-PReLU throughout."""

    def cbp(x: torch.Tensor, p: str, padding: int = 0) -> torch.Tensor:
        return _cbr(x, s, p, lambda y: F.prelu(y, s[f"{p}.2.weight"]), padding)

    skip = cbp(features[-2], "skip")
    return cbp(torch.cat([_up(cbp(features[-1], "deep"), skip), skip], 1), "fuse", padding=1)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplabv3plus_decoder_matches_a_functional_reference(output_stride: int) -> None:
    channels, strides = [8, 12, 16, 20, 24], [2, 4, 8, min(16, output_stride), output_stride]
    decoder = DeepLabV3PlusDecoder(channels, strides, channels=16).eval()
    _randomise_batch_norms(decoder)
    side = 40 * output_stride  # the input side that gives 40 x 40 at the last level
    features = [torch.randn(1, c, side // s, side // s) for c, s in zip(channels, strides)]
    rates = {8: (12, 24, 36), 16: (6, 12, 18)}[output_stride]
    with torch.no_grad():
        out, taps = decoder.forward_taps(features)
        expected, aspp = reference_deeplabv3plus(decoder.state_dict(), features, rates)
    assert out.shape == (1, 16, side // 4, side // 4)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(taps["decoder_aspp"], aspp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("decoder_class", "reference", "strides"),
    [
        (PSPDecoder, reference_pspnet, [2, 4, 8, 8, 8]),
        (LightDecoder, reference_light, [2, 4, 8, 16, 32, 64]),
    ],
)
def test_psp_and_light_decoders_match_a_functional_reference(
    decoder_class, reference, strides: list[int]
) -> None:
    channels = [8 + 4 * i for i in range(len(strides))]
    decoder = decoder_class(channels, strides, channels=16).eval()
    _randomise_batch_norms(decoder)
    features = [torch.randn(2, c, 384 // s, 256 // s) for c, s in zip(channels, strides)]
    with torch.no_grad():
        out = decoder(features)
        expected = reference(decoder.state_dict(), features)
    assert out.shape == (2, 16, *features[-1 if decoder_class is PSPDecoder else -2].shape[-2:])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["deeplabv3plus", "pspnet", "nfs"])
def test_mc_dropout_drops_whole_channels_of_the_deepest_maps(arch: str) -> None:
    """MC dropout (Oh et al.: at the most compressed, lowest-resolution features): the
    Segmenter's drops the last encoder level after its taps were taken, the decoder's the
    deepest decoder map (DeepLabV3+: the ASPP output; PSPNet: the pyramid; NfS-SegNet: the
    projected stride-64 map), each a channel dropout that the decoder output depends on."""
    encoder = "nfsnet" if arch == "nfs" else "resnet18"
    model = build_segmenter(arch, encoder, NUM_CLASSES, encoder_options=TINY, mc_dropout=0.5)
    model.eval()
    layers = mc_dropout_layers(model)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in layers:
        layer.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
        layer.train()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        out = model(x)
    assert len(seen) == 2
    (encoder_in, encoder_dropped), (decoder_in, decoder_dropped) = seen
    assert encoder_in is out.features["encoder_out"]
    assert encoder_in is out.features[f"encoder_c{len(model.encoder.out_channels)}"]
    for inp, dropped in seen:  # each channel is either zero or scaled by 1 / (1 - p)
        zero = (dropped == 0).flatten(2).all(-1)
        kept = torch.isclose(dropped, 2 * inp).flatten(2).all(-1)
        assert (zero | kept).all() and zero.any() and kept.any()
    c5 = model.encoder.out_channels[-1]
    if arch == "deeplabv3plus":
        assert decoder_in is out.features["decoder_aspp"]
    elif arch == "pspnet":  # the pyramid, whose first channels are the (dropped) last level
        assert decoder_in.shape == (2, 2 * c5, 16, 16)
        torch.testing.assert_close(decoder_in[:, :c5], encoder_dropped)
    else:
        assert decoder_in.shape == (2, model.decoder.out_channels, 2, 2)
    for layer in layers:
        layer.eval()
    with torch.no_grad():
        deterministic = model(x).features["decoder_out"]
    assert not torch.allclose(deterministic, out.features["decoder_out"])


# ----------------------------------------------------------------- segmenters


@pytest.mark.parametrize(
    ("arch", "encoder", "head", "channels"),
    [
        ("deeplabv3plus", "resnet18", "scalar", 1),
        ("deeplabv3plus", "mobilenetv2", "per_class", NUM_CLASSES),
        ("pspnet", "resnet18", None, 0),
        ("nfs", "nfsnet", "scalar", 1),
        ("plain", "mobilenetv2", "per_class", NUM_CLASSES),
    ],
)
def test_segmenter_outputs(arch: str, encoder: str, head: str | None, channels: int) -> None:
    model = build_segmenter(
        arch, encoder, NUM_CLASSES, uncertainty_head=head, encoder_options=TINY, aux_heads=True
    ).eval()
    x = torch.randn(2, 3, 72, 88)  # not a multiple of the output stride
    with torch.no_grad():
        out = model(x)
    assert out.logits.shape == (2, NUM_CLASSES, 72, 88)
    if head is None:
        assert out.uncertainty is None
    else:
        assert out.uncertainty.shape == (2, channels, 72, 88)
        assert 0.0 <= out.uncertainty.min() and out.uncertainty.max() <= 1.0
    levels = [f"encoder_c{i}" for i in range(1, len(model.encoder.out_channels) + 1)]
    aspp = {"decoder_aspp"} if arch == "deeplabv3plus" else set()
    assert set(out.features) == {*levels, "encoder_out", "decoder_out", *aspp}
    assert out.features["encoder_out"] is out.features[levels[-1]]
    assert out.features["decoder_out"].shape[1] == model.decoder.out_channels
    assert set(out.aux_logits) == ({"c4", "c5"} if arch == "nfs" else {"c4"})
    assert all(a.shape == out.logits.shape for a in out.aux_logits.values())


@pytest.mark.parametrize(
    ("arch", "encoder"),
    [
        ("deeplabv3plus", "resnet18"),
        ("deeplabv3plus", "mobilenetv2"),
        ("pspnet", "resnet18"),
        ("nfs", "nfsnet"),
        ("deeplabv3plus", "nfsnet"),
        ("plain", "nfsnet"),
        ("plain", "resnet18"),
    ],
)
def test_every_segmenter_takes_tiny_and_odd_image_sizes(arch: str, encoder: str) -> None:
    """Any image size gives maps of that size. NfS-Net's 2x2 max-pools flooring odd sides
    failed below 64 px (a 34x34 image reached its stride-64 stage at 0x0)."""
    model = build_segmenter(arch, encoder, NUM_CLASSES, encoder_options=TINY, aux_heads=True)
    model.eval()
    for size in [(1, 1), (5, 3), (33, 33), (34, 200), (37, 53), (32, 1024)]:
        with torch.no_grad():
            out = model(torch.randn(1, 3, *size))
        assert out.logits.shape == (1, NUM_CLASSES, *size), (size, out.logits.shape)
        assert torch.isfinite(out.logits).all()
        assert all(a.shape == out.logits.shape for a in out.aux_logits.values())


def test_a_channels_last_segmenter_gives_its_full_size_maps_in_the_default_layout() -> None:
    """The network runs channels-last, its upsampled maps do not (a softmax over the classes
    of a full-size channels-last map is much slower on the CPU)."""
    model = build_segmenter(
        "deeplabv3plus", "resnet18", NUM_CLASSES, "per_class", TINY, aux_heads=True
    ).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    decoded = out.features["decoder_out"]
    assert decoded.is_contiguous(memory_format=torch.channels_last) and not decoded.is_contiguous()
    maps = [out.logits, out.uncertainty, *out.aux_logits.values()]
    assert all(m.is_contiguous() for m in maps)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.uncertainty, expected.uncertainty, rtol=1e-4, atol=1e-5)


def test_segmenter_trains() -> None:
    model = build_segmenter("nfs", "nfsnet", NUM_CLASSES, "scalar", TINY, aux_heads=True)
    out = model(torch.randn(2, 3, 64, 64))
    loss = (
        out.logits.mean() + out.uncertainty.mean() + sum(a.mean() for a in out.aux_logits.values())
    )
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dudes_parity_counts() -> None:
    """DUDES Table 3: smp DeepLabV3Plus(encoder_name="resnet18", classes=19) and its
    student with the 1-channel uncertainty head (+257)."""
    with torch.device("meta"):
        baseline = build_segmenter("deeplabv3plus", "resnet18", NUM_CLASSES)
        student = build_segmenter("deeplabv3plus", "resnet18", NUM_CLASSES, "scalar")
    assert count_parameters(baseline) == 12_333_923
    assert count_parameters(student) - count_parameters(baseline) == 257


def test_he_student_has_no_aspp_and_no_decoder() -> None:
    """He et al.'s student (arch plain): MobileNetV2-1.0 at stride 16 into the 1x1
    classifier; 2,248,211 parameters = the encoder's 2,223,872 + 1280 x 19 + 19 (the paper's
    S1 lists 2.11 M). Its decoder_out tap is the encoder's last map."""
    model = build_segmenter("plain", "mobilenetv2", NUM_CLASSES)
    encoder = count_parameters(model.encoder)
    assert count_parameters(model) == 2_248_211 == encoder + 1280 * NUM_CLASSES + NUM_CLASSES
    out = model.eval()(torch.randn(1, 3, 64, 96))
    assert out.logits.shape == (1, NUM_CLASSES, 64, 96)
    assert out.features["decoder_out"] is out.features["encoder_out"]
    assert out.features["decoder_out"].shape == (1, 1280, 4, 6)  # stride 16
    # With an uncertainty head and MC dropout the map is dropped once, by the Segmenter.
    dropped = build_segmenter("plain", "mobilenetv2", 3, "scalar", mc_dropout=0.1)
    assert sum(isinstance(m, torch.nn.Dropout2d) for m in dropped.modules()) == 1


@pytest.mark.parametrize(
    ("arch", "encoder", "options", "channels", "stride"),
    [
        ("deeplabv3plus", "resnet50", {"output_stride": 8}, 256, 4),
        ("plain", "mobilenetv2", {}, 1280, 16),
    ],
)
def test_decoder_out_is_the_classifiers_input(
    arch: str, encoder: str, options: dict, channels: int, stride: int
) -> None:
    """The "decoder_out" tap is the last feature map before the classifier, the "last
    convolution features" He et al. distil: 256 channels at stride 4 for the paper's
    DeepLabV3+ ResNet-50 OS8 teacher, the encoder's 1280-channel stride-16 map for the
    plain MobileNetV2 student. The classifier on it gives the logits."""
    model = build_segmenter(arch, encoder, NUM_CLASSES, encoder_options=options).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
        decoded = out.features["decoder_out"]
        logits = torch.nn.functional.interpolate(
            model.seg_head(decoded), size=(64, 96), mode="bilinear", align_corners=False
        )
    assert decoded.shape == (1, channels, 64 // stride, 96 // stride)
    torch.testing.assert_close(logits, out.logits)


def test_decoder_aspp_is_the_aspp_output_at_the_encoder_stride() -> None:
    """DeepLabV3+'s "decoder_aspp" tap: the ASPP block's output, 256 channels at the
    encoder's output stride (8 for He et al.'s teacher), before the stride-4 fusion; the
    other decoders expose no such tap."""
    model = build_segmenter(
        "deeplabv3plus", "resnet50", NUM_CLASSES, encoder_options={"output_stride": 8}
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
        expected = model.decoder.aspp(out.features["encoder_out"])
    assert out.features["decoder_aspp"].shape == (1, 256, 8, 12)
    torch.testing.assert_close(out.features["decoder_aspp"], expected)
    plain = build_segmenter("plain", "mobilenetv2", NUM_CLASSES).eval()
    assert "decoder_aspp" not in plain(torch.randn(1, 3, 64, 96)).features


def test_holder_heads_follow_the_decoder_width() -> None:
    """Holder & Shafique: each head is a 3x3 conv-BN-ReLU with 256 channels then a 1x1 conv
    to C, on the full-width decoder; at width 0.25 the heads narrow with the decoder (64)."""
    for width, channels in ((1.0, 256), (0.25, 64)):
        options = {"width": width}
        with torch.device("meta"):
            plain = build_segmenter("deeplabv3plus", "resnet18", NUM_CLASSES, None, options)
            holder = build_segmenter("deeplabv3plus", "resnet18", NUM_CLASSES, "per_class", options)
        per_head = 9 * channels * channels + 2 * channels + (channels + 1) * NUM_CLASSES
        plain_head = (channels + 1) * NUM_CLASSES
        assert count_parameters(holder) - count_parameters(plain) == 2 * per_head - plain_head


@pytest.mark.parametrize(
    ("arch", "encoder", "width", "decoder", "in_ch", "hidden"),
    [
        # No decoder: MobileNetV2's 1280 channels at any width, the head at 256 x width.
        ("plain", "mobilenetv2", 1.0, None, 1280, 256),
        ("plain", "mobilenetv2", 0.25, None, 1280, 64),
        ("plain", "resnet18", 0.125, None, 64, 32),
        # PSPNet's decoder is 512 wide: the heads stay at the paper's 256.
        ("pspnet", "resnet18", 1.0, None, 512, 256),
        # A decoder narrower than 256 x width: the heads keep its width.
        ("deeplabv3plus", "resnet18", 1.0, 96, 96, 96),
    ],
)
def test_holder_heads_never_widen_past_the_papers_256(
    arch: str, encoder: str, width: float, decoder: int | None, in_ch: int, hidden: int
) -> None:
    """The 3x3 conv of each per-class head has min(input, 256 x width) channels: without a
    decoder it once kept MobileNetV2's 1280 (two 1280 x 1280 3x3 convs, 13 x the network)."""
    options = {"width": width}
    with torch.device("meta"):
        plain = build_segmenter(arch, encoder, NUM_CLASSES, None, options, decoder_channels=decoder)
        holder = build_segmenter(
            arch, encoder, NUM_CLASSES, "per_class", options, decoder_channels=decoder
        )
    assert holder.decoder.out_channels == in_ch
    conv = holder.uncertainty_head[0]
    assert (conv.in_channels, conv.out_channels) == (in_ch, hidden)
    per_head = 9 * in_ch * hidden + 2 * hidden + (hidden + 1) * NUM_CLASSES
    plain_head = (in_ch + 1) * NUM_CLASSES
    assert count_parameters(holder) - count_parameters(plain) == 2 * per_head - plain_head


def test_encoders_and_decoders_start_from_torchvisions_initialisation() -> None:
    """He-normal convolutions with fan_out (std sqrt(2 / (out_channels * k * k))), zero conv
    biases, unit / zero batch norm, in every encoder and decoder layer."""
    for arch, encoder in [("deeplabv3plus", "resnet18"), ("nfs", "nfsnet")]:
        model = build_segmenter(arch, encoder, NUM_CLASSES)
        for part in (model.encoder, model.decoder):
            for m in part.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    assert torch.equal(m.weight, torch.ones_like(m.weight))
                    assert torch.equal(m.bias, torch.zeros_like(m.bias))
                elif isinstance(m, torch.nn.Conv2d):
                    assert m.bias is None or not m.bias.any()
                    w = m.weight.detach()
                    if w.numel() >= 20_000:  # enough samples for a 5 % check of the std
                        expected = (2.0 / (w.shape[0] * w.shape[2] * w.shape[3])) ** 0.5
                        assert abs(w.std().item() / expected - 1) < 0.05, m
                        assert abs(w.mean().item()) < 0.05 * expected, m


def _holder_head(x: torch.Tensor, s: dict, p: str) -> torch.Tensor:
    """Holder & Shafique's head: 3x3 conv-BN-ReLU (same width), 1x1 conv with bias."""
    x = F.relu(_bn(F.conv2d(x, s[f"{p}.0.weight"], padding=1), s, f"{p}.1"))
    return F.conv2d(x, s[f"{p}.3.weight"], s[f"{p}.3.bias"])


@pytest.mark.parametrize(("head", "channels"), [("scalar", 1), ("per_class", NUM_CLASSES)])
def test_uncertainty_is_the_sigmoid_of_the_upsampled_head(head: str, channels: int) -> None:
    """DUDES: the segmentation head's 1x1 conv again, with 1 output channel; Holder: two
    3x3 conv-BN-ReLU + 1x1 heads. A sigmoid bounds the uncertainty: as smp's head, the map
    is upsampled (bilinear) first and squashed after, so every pixel is inside (0, 1)."""
    model = build_segmenter("deeplabv3plus", "resnet18", NUM_CLASSES, head, TINY).eval()
    _randomise_batch_norms(model)
    s = model.state_dict()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
        decoded = out.features["decoder_out"]
        if head == "scalar":
            logits = F.conv2d(decoded, s["seg_head.weight"], s["seg_head.bias"])
            raw = F.conv2d(decoded, s["uncertainty_head.weight"], s["uncertainty_head.bias"])
        else:
            logits = _holder_head(decoded, s, "seg_head")
            raw = _holder_head(decoded, s, "uncertainty_head")
    assert model.uncertainty_kind == head
    assert raw.shape == (2, channels, 16, 24)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(64, 96), mode="bilinear", align_corners=False)

    torch.testing.assert_close(out.logits, up(logits), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.uncertainty, 1 / (1 + torch.exp(-up(raw))))
    assert 0 < out.uncertainty.min() and out.uncertainty.max() < 1


@pytest.mark.parametrize(
    ("arch", "encoder", "stride", "decoder_stride"),
    [
        ("deeplabv3plus", "resnet18", 16, 4),
        ("pspnet", "resnet18", 8, 8),
        ("nfs", "nfsnet", 64, 32),
        ("plain", "mobilenetv2", 16, 16),
    ],
)
def test_architectures_default_output_strides(
    arch: str, encoder: str, stride: int, decoder_stride: int
) -> None:
    """docs/training.md: unset, the output stride is the arch's (DeepLabV3+ 16, PSPNet 8,
    NfS 64, plain 16), measured on the maps of a 128 x 192 image."""
    model = build_segmenter(arch, encoder, NUM_CLASSES, encoder_options=TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 192))
    assert out.features["encoder_out"].shape[-2:] == (128 // stride, 192 // stride)
    assert out.features["decoder_out"].shape[-2:] == (128 // decoder_stride, 192 // decoder_stride)


def test_pspnet_decoder_is_zhao_et_als() -> None:
    """Zhao et al.'s PSPNet on ResNet-50 (2048 channels at stride 8): four pooled branches,
    each a 1x1 conv 2048 -> 512 + BN; the 4096-channel concatenation reduced by a 3x3 conv
    to 512 + BN; the classifier reads those 512 channels."""
    with torch.device("meta"):
        model = build_segmenter("pspnet", "resnet50", NUM_CLASSES)
    branches = 4 * (2048 * 512 + 2 * 512)
    bottleneck = 4096 * 512 * 9 + 2 * 512
    assert count_parameters(model.decoder) == branches + bottleneck
    assert count_parameters(model.seg_head) == 512 * NUM_CLASSES + NUM_CLASSES


def test_aux_head_matches_a_functional_reference() -> None:
    """The auxiliary classifier, written again from its state dict: 3x3 conv-BN-ReLU on
    the encoder level, (dropout, off in eval), 1x1 conv with bias, bilinear upsampling to
    the image size."""
    model = build_segmenter("pspnet", "resnet18", NUM_CLASSES, None, TINY, aux_heads=True)
    model.eval()
    _randomise_batch_norms(model)
    s = model.state_dict()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 45, 67))
        c4 = out.features["encoder_c4"]
        hidden = F.relu(
            _bn(F.conv2d(c4, s["aux_heads.c4.0.weight"], padding=1), s, "aux_heads.c4.1")
        )
        scores = F.conv2d(hidden, s["aux_heads.c4.4.weight"], s["aux_heads.c4.4.bias"])
        expected = F.interpolate(scores, size=(45, 67), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.aux_logits["c4"], expected, rtol=1e-4, atol=1e-5)


def test_pspnet_aux_head_is_zhao_et_als() -> None:
    """PSPNet's auxiliary head on layer3 (1024 channels for ResNet-50): 3x3 conv to 256,
    BN, ReLU, dropout, 1x1 conv to the classes."""
    with torch.device("meta"):
        model = build_segmenter("pspnet", "resnet50", NUM_CLASSES, aux_heads=True)
    head = model.aux_heads["c4"]
    assert count_parameters(head) == 1024 * 9 * 256 + 2 * 256 + 256 * NUM_CLASSES + NUM_CLASSES


@pytest.mark.parametrize(
    ("encoder", "modules"),
    [
        ("resnet18", ["relu", "layer1", "layer2", "layer3", "layer4"]),
        # segdistill's MobileNetV2 levels: features.0-1, 2-3, 4-6, 7-13, 14-18
        ("mobilenetv2", ["features.1", "features.3", "features.6", "features.13", "features.18"]),
        ("nfsnet", ["stem", *[f"stages.{i}" for i in range(5)]]),
    ],
)
def test_encoder_taps_are_the_outputs_of_their_stages(encoder: str, modules: list[str]) -> None:
    """Feature taps "encoder_c<i>" are the very tensors the stage that ends level i returns
    (a forward hook on that module), what feature distillation reads."""
    model = build_segmenter("deeplabv3plus", encoder, NUM_CLASSES, encoder_options=TINY).eval()
    outputs: dict[str, torch.Tensor] = {}
    for name in modules:
        module = model.encoder.get_submodule(name)
        module.register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    for level, name in enumerate(modules, start=1):
        assert out.features[f"encoder_c{level}"] is outputs[name], (level, name)


def test_decoder_channels_scale_with_width_below_one_only() -> None:
    """build_segmenter: the arch's decoder channels times the width when it is below 1
    (DeepLabV3+ 256 -> 128 at 0.5), unchanged above (MobileNetV2-1.4 of He et al.)."""
    for width, channels in ((0.5, 128), (1.0, 256), (1.4, 256)):
        with torch.device("meta"):
            model = build_segmenter(
                "deeplabv3plus", "mobilenetv2", NUM_CLASSES, encoder_options={"width": width}
            )
        assert model.decoder.out_channels == channels


def test_count_parameters_counts_trainable_ones() -> None:
    """The papers count trainable parameters: a frozen encoder leaves the rest."""
    model = build_segmenter("plain", "mobilenetv2", NUM_CLASSES)
    model.encoder.requires_grad_(False)
    assert count_parameters(model) == 1280 * NUM_CLASSES + NUM_CLASSES
    assert count_parameters(model, trainable_only=False) == 2_248_211


def test_training_dropout_follows_the_reference_code() -> None:
    """Ordinary (non-MC) dropout: smp's ASPP Dropout(0.5); PSPNet's Dropout2d(0.1) before
    the classifier and in the auxiliary head (Zhao et al.'s reference code)."""

    def dropouts(model: torch.nn.Module) -> list[tuple[str, float]]:
        return [
            (type(m).__name__, m.p)
            for m in model.modules()
            if isinstance(m, torch.nn.modules.dropout._DropoutNd)
        ]

    with torch.device("meta"):
        deeplab = build_segmenter("deeplabv3plus", "resnet18", NUM_CLASSES)
        pspnet = build_segmenter("pspnet", "resnet18", NUM_CLASSES, aux_heads=True)
    assert dropouts(deeplab) == [("Dropout", 0.5)]
    assert dropouts(pspnet) == [("Dropout2d", 0.1), ("Dropout2d", 0.1)]


def test_mc_dropout_only_when_switched_on() -> None:
    model = build_segmenter("nfs", "nfsnet", NUM_CLASSES, encoder_options=TINY, mc_dropout=0.5)
    model.eval()
    assert len(mc_dropout_layers(model)) == 2
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
        for module in mc_dropout_layers(model):
            module.train()
        assert not torch.equal(model(x).logits, model(x).logits)
    plain = build_segmenter("nfs", "nfsnet", NUM_CLASSES, encoder_options=TINY)
    assert mc_dropout_layers(plain) == []


# ----------------------------------------------------------------- weights files


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_encoder_weights_round_trip(tmp_path, suffix: str) -> None:
    source = build_encoder("resnet18", **TINY)
    state = dict(source.state_dict())
    state["fc.weight"] = torch.zeros(1000, 128)  # an ImageNet classifier, to be dropped
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    target = build_encoder("resnet18", output_stride=8, **TINY)  # dilation changes no shape
    load_encoder_weights(target, path)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


def test_load_encoder_weights_drops_the_mobilenetv2_classifier(tmp_path) -> None:
    """torchvision's MobileNetV2 file ends with `classifier.1` (Dropout, Linear 1280 ->
    1000), which the encoder has no use for."""
    source = build_encoder("mobilenetv2", **TINY)
    state = dict(source.state_dict())
    state["classifier.1.weight"] = torch.zeros(1000, 1280)
    state["classifier.1.bias"] = torch.zeros(1000)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(state, path)
    target = build_encoder("mobilenetv2", output_stride=16, **TINY)
    load_encoder_weights(target, path)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


def test_weights_saved_before_batchnorm_counted_its_steps_load(tmp_path) -> None:
    """torchvision's resnet18-5c106cde.pth (smp's, so DUDES') predates PyTorch 0.4.1 and
    has no `num_batches_tracked`: load_state_dict accepts it, and so must we."""
    source = build_encoder("resnet18", **TINY)
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    assert len(state) < len(source.state_dict())
    path = tmp_path / "resnet18-old.pth"
    torch.save(state, path)
    target = build_encoder("resnet18", **TINY)
    load_encoder_weights(target, path)
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    del state["bn1.running_mean"]  # a real key missing is still refused
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys: bn1\.running_mean$"):
        load_encoder_weights(build_encoder("resnet18", **TINY), path)


def test_build_segmenter_loads_the_encoder_weights(tmp_path) -> None:
    source = build_encoder("resnet18", **TINY)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_segmenter("deeplabv3plus", "resnet18", 3, None, TINY, encoder_weights=path)
    state = model.encoder.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in source.state_dict().items())


def test_load_encoder_weights_refuses_other_arch(tmp_path) -> None:
    path = tmp_path / "mobilenet.pth"
    torch.save(build_encoder("mobilenetv2", **TINY).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"missing keys: conv1\.weight") as err:
        load_encoder_weights(build_encoder("resnet18", **TINY), path)
    assert "unexpected keys: features.0.0.weight" in str(err.value)

    torch.save(build_encoder("resnet18", width=0.5).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"mis-shaped .*conv1\.weight \(32, 3, 7, 7\)"):
        load_encoder_weights(build_encoder("resnet18", **TINY), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder_weights(build_encoder("resnet18", **TINY), tmp_path / "absent.pth")
    # An image or a text file: one line naming it, never torch's advice to unpickle it.
    for name, content in [("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(64)), ("notes.pth", b"e")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as err:
            load_encoder_weights(build_encoder("resnet18", **TINY), tmp_path / name)
        message = str(err.value)
        assert f"{name}': not a PyTorch or safetensors state dict (" in message
        assert "\n" not in message and "weights_only" not in message


# ----------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: build_segmenter("deeplabv3", "resnet18", 19), "did you mean 'deeplabv3plus'"),
        (lambda: build_segmenter("pspnet", "resnet19", 19), "did you mean 'resnet18'"),
        (lambda: build_segmenter("nfs", "nfsnet", 19, "scaler"), "did you mean 'scalar'"),
        (
            lambda: build_encoder("resnet18", outputstride=16),
            "unknown encoder_options ['outputstride'] for 'resnet18': valid options are "
            "['output_stride', 'width']; did you mean 'output_stride'?",
        ),
        (lambda: build_encoder("mobilenetv2", output_stride=4), "output_stride=4"),
        (lambda: build_encoder("resnet18", output_stride=4), "output_stride=4"),
        (lambda: build_encoder("nfsnet", output_stride=128), "output_stride=128"),
        (lambda: build_encoder("resnet18", width=0), "width=0"),
        (lambda: build_segmenter("nfs", "nfsnet", 19, mc_dropout=1.0), "mc_dropout=1.0"),
    ],
)
def test_config_errors_name_the_value(build, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()
