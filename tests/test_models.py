"""Networks: torchvision naming, strides, output shapes, parity counts, weights loading."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import (
    build_encoder,
    build_segmenter,
    count_parameters,
    load_encoder_weights,
)
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
        ("resnet18", torchvision_resnet_keys([2, 2, 2, 2], False), 11_176_512),
        ("resnet50", torchvision_resnet_keys([3, 4, 6, 3], True), 23_508_032),
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


# ----------------------------------------------------------------- strides and shapes


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2", "nfsnet"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_encoder_levels(name: str, output_stride: int) -> None:
    encoder = build_encoder(name, output_stride=output_stride, **TINY).eval()
    levels = len(encoder.out_channels)
    assert encoder.strides == [min(2**i, output_stride) for i in range(1, levels + 1)]
    assert encoder.output_stride == output_stride
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [
        (1, c, 64 // s, 64 // s) for c, s in zip(encoder.out_channels, encoder.strides)
    ]


def test_nfsnet_default_has_extra_stride_64_stage() -> None:
    encoder = build_encoder("nfsnet", **TINY)
    assert encoder.strides == [2, 4, 8, 16, 32, 64]
    assert encoder.output_stride == 64


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
        (lambda: build_encoder("resnet18", width=0), "width=0"),
        (lambda: build_segmenter("nfs", "nfsnet", 19, mc_dropout=1.0), "mc_dropout=1.0"),
    ],
)
def test_config_errors_name_the_value(build, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()
