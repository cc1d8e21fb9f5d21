"""Teachers against a direct stacked computation, plus their contracts: only what is asked,
frozen, MC-dropout modes, streaming members (bounded memory), loading and the builder."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from segdistill.checkpoints import save_weights
from segdistill.config import ModelConfig
from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import MCDropout as MCDropoutLayer
from segdistill.models import build_segmenter, teachers
from segdistill.models.teachers import (
    Ensemble,
    MCDropout,
    SignalAccumulator,
    Single,
    build_teacher,
)
from segdistill.outputs import SIGNAL_NAMES, SegOutput

CLASSES = 5
STATISTICS = frozenset(SIGNAL_NAMES - {"logits", "features"})


class TinyNet(nn.Module):
    """conv3x3 -> BN -> ReLU -> (MC dropout) -> dropout -> conv1x1: a random segmenter.

    `dropout` is the p of an MC-dropout layer (None: no such layer); the ordinary Dropout(0.5)
    stands for ASPP's training dropout, which MC sampling must leave off. `scale` sharpens
    the logits so some probabilities sit near 0 and 1. `calls` records, per forward, whether
    the MC dropout, the ordinary dropout and batch norm were in train mode.
    """

    def __init__(self, dropout: float | None = None, scale: float = 3.0, hidden: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, hidden, 3, padding=1)
        self.bn = nn.BatchNorm2d(hidden)
        self.mc = MCDropoutLayer(dropout) if dropout is not None else nn.Identity()
        self.regular = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(hidden, CLASSES, 1)
        self.scale = scale
        self.calls: list[tuple[bool, bool, bool]] = []
        with torch.no_grad():  # non-trivial running statistics, so eval and train BN differ
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: Tensor) -> SegOutput:
        self.calls.append((self.mc.training, self.regular.training, self.bn.training))
        hidden = self.regular(self.mc(F.relu(self.bn(self.conv1(x)))))
        return SegOutput(logits=self.conv2(hidden) * self.scale, features={"hidden": hidden})


class FixedLogits(nn.Module):
    """Returns the same logits [1, C, H, W] whatever the input."""

    def __init__(self, logits: Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: Tensor) -> SegOutput:
        return SegOutput(logits=self.logits.expand(x.shape[0], -1, -1, -1).clone())


def images(b: int = 2, h: int = 6, w: int = 8) -> Tensor:
    return torch.randn(b, 3, h, w)


def entropy64(p: Tensor) -> Tensor:
    return -torch.xlogy(p, p).sum(1, keepdim=True)


def stacked_reference(members: list[nn.Module], x: Tensor, unbiased: bool = False) -> dict:
    """The statistics of the members' float32 probabilities stacked [N, B, C, H, W], computed
    in float64."""
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x).logits, dim=1) for m in members]).double()
    mean = probs.mean(0)
    std = probs.std(0, correction=1 if unbiased else 0)
    entropy = entropy64(mean)
    return {
        "mean_probs": mean,
        "std": std,
        "pred_std": std.gather(1, mean.argmax(1, keepdim=True)),
        "variance": std.pow(2).mean(1, keepdim=True),
        "entropy": entropy,
        "mutual_info": entropy - torch.stack([entropy64(p) for p in probs]).mean(0),
    }


def assert_matches(signals, reference: dict, atol: float = 1e-5) -> None:
    for name, expected in reference.items():
        value = getattr(signals, name)
        assert value.dtype == torch.float32, name
        assert value.shape == expected.shape, name
        torch.testing.assert_close(value.double(), expected, atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("unbiased", [False, True])
def test_ensemble_matches_stacked_reference(n: int, unbiased: bool) -> None:
    members = [TinyNet() for _ in range(n)]
    x = images()
    signals = Ensemble(members, unbiased_std=unbiased).signals(x, STATISTICS)
    assert_matches(signals, stacked_reference(members, x, unbiased))
    assert signals.pred_std.shape == (2, 1, 6, 8)


def test_std_of_saturated_probabilities_has_no_cancellation() -> None:
    # p(class 0) ~ 1 - 3e-6 with a spread of a few float32 ulps (std ~ 3e-7): E[p^2] - E[p]^2
    # in float32 errs by up to sqrt(eps) ~ 2e-4 there, while the Welford update stays within
    # half an ulp of 1 (3e-8), the resolution of the float32 probabilities themselves; the
    # classes near 0 keep full relative precision.
    base = torch.zeros(1, CLASSES, 2, 2)
    base[:, 0] = 14.0
    members = [FixedLogits(base + 0.1 * i * torch.rand(1, CLASSES, 2, 2)) for i in range(6)]
    x = images(1, 2, 2)
    std = Ensemble(members).signals(x, {"std"}).std.double()
    expected = stacked_reference(members, x)["std"]
    assert 0 < expected[:, 0].min() and expected[:, 0].max() < 1e-6
    assert (std - expected).abs().max() < 3e-8
    torch.testing.assert_close(std[:, 1:], expected[:, 1:], rtol=1e-5, atol=0)

    probs = torch.stack([torch.softmax(m(x).logits, 1) for m in members])
    naive = ((probs**2).mean(0) - probs.mean(0) ** 2).clamp(min=0).sqrt()
    assert (naive.double() - expected).abs().max() > 1e-7


def test_logits_and_features() -> None:
    members = [TinyNet() for _ in range(3)]
    x = images()
    signals = Ensemble(members).signals(x, {"logits", "mean_probs", "features"})
    torch.testing.assert_close(signals.logits, signals.mean_probs.log())
    torch.testing.assert_close(torch.softmax(signals.logits, 1), signals.mean_probs)
    torch.testing.assert_close(signals.features["hidden"], members[0](x).features["hidden"])

    single = Single(members[1]).signals(x, {"logits", "features"})
    expected = members[1](x)
    assert torch.equal(single.logits, expected.logits)
    assert torch.equal(single.features["hidden"], expected.features["hidden"])


def test_features_alone_run_only_the_first_member() -> None:
    members = [TinyNet() for _ in range(3)]
    x = images()
    signals = Ensemble(members).signals(x, {"features"})
    assert [len(m.calls) for m in members] == [1, 0, 0]
    torch.testing.assert_close(signals.features["hidden"], members[0](x).features["hidden"])
    Ensemble(members).signals(x, {"features", "mean_probs"})
    assert [len(m.calls) for m in members] == [3, 1, 1]


def test_features_alone_take_one_deterministic_pass_of_an_mc_dropout_teacher() -> None:
    """The K sampling passes ran and were thrown away when only the taps were asked for
    (a cached distillation's online part, He's translator training): K + 1 forwards for
    one (found by a mutation audit)."""
    model = TinyNet(dropout=0.5)
    x = images()
    signals = MCDropout(model, samples=5).signals(x, {"features"})
    assert len(model.calls) == 1 and not any(model.calls[0])  # dropout off: as trained
    torch.testing.assert_close(signals.features["hidden"], model(x).features["hidden"])
    model.calls.clear()
    MCDropout(model, samples=5).signals(x, {"features", "std"})
    assert len(model.calls) == 6


def test_ensemble_logits_stay_finite_when_a_probability_underflows() -> None:
    logits = torch.zeros(1, CLASSES, 1, 1)
    logits[:, 0] = 200.0  # exp(-200) underflows float32: the other classes get p = 0
    signals = Ensemble([FixedLogits(logits)]).signals(images(1, 1, 1), {"logits"})
    assert torch.isfinite(signals.logits).all()


def test_single_member_has_no_spread() -> None:
    member = TinyNet()
    x = images()
    for teacher in (Ensemble([member]), Single(member)):
        signals = teacher.signals(x, STATISTICS)
        for name in ("std", "pred_std", "variance", "mutual_info"):
            assert torch.equal(getattr(signals, name), torch.zeros_like(getattr(signals, name)))
        torch.testing.assert_close(signals.mean_probs, torch.softmax(member(x).logits, 1))


def test_mutual_information_of_agreeing_members_is_zero_not_negative() -> None:
    """Identical members: H(mean) - mean H(p_i) is 0, and float32 rounding of the mean of
    the members' entropies (which left -1e-7 at hundreds of these pixels) must not make
    it negative (mutual information is >= 0, Jensen)."""
    logits = torch.randn(2, 19, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    members = [FixedLogits(logits) for _ in range(3)]
    signals = Ensemble(members).signals(images(2, 16, 16), {"mutual_info", "entropy"})
    assert signals.mutual_info.min() >= 0.0 and signals.mutual_info.max() < 1e-6
    assert signals.entropy.max() > 0.1


@pytest.mark.parametrize("name", sorted(SIGNAL_NAMES))
def test_computes_only_what_was_asked(name: str) -> None:
    signals = Ensemble([TinyNet(), TinyNet()]).signals(images(), {name})
    for other in SIGNAL_NAMES - {"features"}:
        assert (getattr(signals, other) is not None) == (other == name), other
    assert bool(signals.features) == (name == "features")


def test_mean_alone_accumulates_no_spread_and_no_member_entropy() -> None:
    accumulator = SignalAccumulator({"mean_probs", "entropy"})
    for member in (TinyNet(), TinyNet()):
        accumulator.add(member(images()))
    assert accumulator.m2 is None and accumulator.entropy_sum is None
    assert accumulator.first_logits is None and accumulator.features == {}


def test_needs_are_validated() -> None:
    teacher = Single(TinyNet())
    with pytest.raises(ValueError, match="'mean_prob'"):
        teacher.signals(images(), {"mean_prob", "std"})
    with pytest.raises(ValueError, match="not the string"):
        teacher.signals(images(), "std")


def test_members_must_agree_on_classes() -> None:
    other = FixedLogits(torch.zeros(1, CLASSES + 1, 6, 8))
    with pytest.raises(
        ValueError,
        match=r"shape \(2, 6, 6, 8\), the first gave \(2, 5, 6, 8\); teacher members must "
        "give maps of one shape",
    ):
        Ensemble([TinyNet(), other]).signals(images(), {"mean_probs"})


def test_constructor_errors() -> None:
    with pytest.raises(ConfigError):
        Ensemble([])
    with pytest.raises(ConfigError, match="two"):
        Ensemble([TinyNet()], unbiased_std=True)
    with pytest.raises(ConfigError, match="MC-dropout layer"):
        MCDropout(TinyNet())  # ordinary training dropout is not MC dropout
    # One pass has no spread: its std would be 0 everywhere, a degenerate uncertainty.
    for samples in (0, 1):
        with pytest.raises(ConfigError, match=f"samples >= 2.*got {samples}"):
            MCDropout(TinyNet(dropout=0.5), samples=samples)


def test_teachers_are_frozen_and_give_no_gradients() -> None:
    teacher = Ensemble([TinyNet(), TinyNet()])
    teacher.train()  # what a Lightning module does to its children each epoch
    assert not any(module.training for module in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())

    x = images().requires_grad_(True)
    signals = teacher.signals(x, SIGNAL_NAMES)
    produced = [v for v in vars(signals).values() if isinstance(v, Tensor)]
    assert len(produced) == 7 and not any(v.requires_grad for v in produced)
    assert not any(v.requires_grad for v in signals.features.values())

    student = nn.Conv2d(3, CLASSES + 1, 1)
    out = student(x)
    loss = F.kl_div(F.log_softmax(out[:, :CLASSES], 1), signals.mean_probs, reduction="sum")
    loss = loss + F.mse_loss(torch.sigmoid(out[:, CLASSES:]), signals.pred_std)
    loss.backward()
    assert student.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_mc_dropout_switches_only_dropout_and_restores_modes() -> None:
    model = TinyNet(dropout=0.5)
    teacher = MCDropout(model, samples=4)
    teacher.signals(images(), {"mean_probs", "std"})
    assert model.calls == [(True, False, False)] * 4  # only the MC dropout in train mode
    assert not any(module.training for module in teacher.modules())

    model.calls.clear()
    x = images()
    signals = teacher.signals(x, {"mean_probs", "features"})
    assert model.calls == [(False, False, False)] + [(True, False, False)] * 4  # taps: no MC
    assert not any(module.training for module in teacher.modules())
    with torch.no_grad():
        torch.testing.assert_close(signals.features["hidden"], model(x).features["hidden"])


@pytest.mark.parametrize("unbiased", [False, True])
def test_mc_dropout_samples_differ_and_match_their_stack(unbiased: bool) -> None:
    model = TinyNet(dropout=0.5)
    x = images()
    signals = MCDropout(model, samples=6, seed=3, unbiased_std=unbiased).signals(x, STATISTICS)
    assert signals.std.max() > 0.05 and signals.mutual_info.max() > 0.0

    # The same seed gives the same samples, so the stacked reference sees them too.
    model.mc.train()
    with torch.random.fork_rng():
        torch.manual_seed(3)
        reference = stacked_reference([model] * 6, x, unbiased)
    model.mc.eval()
    assert_matches(signals, reference)


def test_mc_dropout_seed_is_reproducible_and_leaves_global_rng_alone() -> None:
    x = images()
    seeded = MCDropout(TinyNet(dropout=0.5), samples=3, seed=7)
    state = torch.random.get_rng_state()
    first = seeded.signals(x, {"mean_probs"}).mean_probs
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(seeded.signals(x, {"mean_probs"}).mean_probs, first)

    unseeded = MCDropout(TinyNet(dropout=0.5), samples=3)
    a = unseeded.signals(x, {"mean_probs"}).mean_probs
    assert not torch.equal(unseeded.signals(x, {"mean_probs"}).mean_probs, a)


def test_mc_dropout_with_p0_equals_single() -> None:
    model = TinyNet(dropout=0.0)
    x = images()
    mc = MCDropout(model, samples=5).signals(x, STATISTICS)
    single = Single(model).signals(x, STATISTICS)
    for name in STATISTICS:
        torch.testing.assert_close(getattr(mc, name), getattr(single, name), msg=name)
    assert torch.equal(mc.std, torch.zeros_like(mc.std))


class _LargestResult(TorchFunctionMode):
    """Records the largest tensor any torch function returns inside the block."""

    largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, Tensor):
                self.largest = max(self.largest, value.numel())
        return result


class _Probe(nn.Module):
    """Wraps a member; records how many earlier members' outputs are alive when it runs."""

    def __init__(self, net: nn.Module, refs: list, alive_at_call: list):
        super().__init__()
        self.net, self.refs, self.alive_at_call = net, refs, alive_at_call

    def forward(self, x: Tensor) -> SegOutput:
        self.alive_at_call.append(sum(ref() is not None for ref in self.refs))
        out = self.net(x)
        self.refs += [weakref.ref(out.logits), weakref.ref(out.features["hidden"])]
        return out


def test_members_are_streamed_never_stacked() -> None:
    # Bounded memory in N: each member's outputs are released before the next member runs,
    # and no tensor larger than one [B, C, H, W] probability map is ever made.
    refs: list = []
    alive_at_call: list[int] = []
    members = [_Probe(TinyNet(), refs, alive_at_call) for _ in range(6)]
    x = images(2, 6, 8)
    with _LargestResult() as mode:
        Ensemble(members).signals(x, STATISTICS)
    assert alive_at_call == [0] * 6
    assert mode.largest == 2 * CLASSES * 6 * 8


def _fake_loader(made: list[Path]):
    def load_segmenter(path: Path):
        made.append(Path(path))
        return TinyNet(dropout=0.1), {"path": str(path)}

    return load_segmenter


def test_from_manifest_resolves_paths_relative_to_the_manifest(tmp_path, monkeypatch) -> None:
    made: list[Path] = []
    monkeypatch.setattr(teachers, "load_segmenter", _fake_loader(made))
    checkpoints = [f"member_{i:02d}/checkpoints/best.safetensors" for i in range(3)]
    manifest = {"members": [{"checkpoint": c, "seed": i} for i, c in enumerate(checkpoints)]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    for path in (tmp_path, tmp_path / "manifest.json"):
        made.clear()
        teacher = Ensemble.from_manifest(path)
        assert made == [tmp_path / c for c in checkpoints] and len(teacher.members) == 3
        assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize(
    "content",
    [
        None,
        "{not json",
        '{"members": []}',
        '{"members": [{}]}',
        # A checkpoint that is no path: a TypeError traceback from `folder / 5`.
        '{"members": [{"checkpoint": 5}]}',
        '{"members": [{"checkpoint": null}]}',
    ],
)
def test_from_manifest_errors(tmp_path, monkeypatch, content) -> None:
    monkeypatch.setattr(teachers, "load_segmenter", _fake_loader([]))
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(CheckpointError, match="manifest"):
        Ensemble.from_manifest(tmp_path)


def test_build_teacher(tmp_path, monkeypatch) -> None:
    made: list[Path] = []
    monkeypatch.setattr(teachers, "load_segmenter", _fake_loader(made))
    (tmp_path / "manifest.json").write_text(json.dumps({"members": [{"checkpoint": "a"}]}))
    assert isinstance(build_teacher("ensemble", tmp_path), Ensemble)
    mc = build_teacher("mc_dropout", tmp_path / "m.safetensors", samples=3)
    assert isinstance(mc, MCDropout) and mc.samples == 3
    assert isinstance(build_teacher("single", tmp_path / "s.safetensors"), Single)
    assert made == [tmp_path / "a", tmp_path / "m.safetensors", tmp_path / "s.safetensors"]
    with pytest.raises(ConfigError, match="did you mean 'ensemble'"):
        build_teacher("ensamble", tmp_path)


def save_segmenter(path: Path, arch: str, encoder: str, mc_dropout: float = 0.0) -> nn.Module:
    config = ModelConfig(arch, encoder, encoder_options={"width": 0.25}, mc_dropout=mc_dropout)
    model = build_segmenter(
        arch, encoder, CLASSES, encoder_options=config.encoder_options, mc_dropout=mc_dropout
    )
    save_weights(path, model, config)
    return model.eval()


def test_teachers_from_saved_segmenters(tmp_path) -> None:
    checkpoints = [f"member_{i:02d}/checkpoints/best.safetensors" for i in range(2)]
    members = [save_segmenter(tmp_path / c, "deeplabv3plus", "resnet18") for c in checkpoints]
    manifest = {"members": [{"checkpoint": c} for c in checkpoints]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    x = images(1, 64, 64)

    ensemble = build_teacher("ensemble", tmp_path)
    signals = ensemble.signals(x, {"mean_probs", "pred_std", "features"})
    assert_matches(signals, {"mean_probs": stacked_reference(members, x)["mean_probs"]})
    assert signals.pred_std.shape == (1, 1, 64, 64)
    assert set(signals.features) >= {"encoder_out", "decoder_out"}

    save_segmenter(tmp_path / "mc.safetensors", "deeplabv3plus", "resnet18", mc_dropout=0.5)
    teacher = build_teacher("mc_dropout", tmp_path / "mc.safetensors", samples=3)
    seen: list[tuple[bool, bool]] = []
    for module in teacher.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout2d)):
            module.register_forward_pre_hook(
                lambda m, _: seen.append((isinstance(m, MCDropoutLayer), m.training))
            )
    signals = teacher.signals(x, {"std"})
    assert signals.std.max() > 0
    assert {(True, True), (False, False)} == set(seen)  # ASPP's dropout stays off
    assert not any(module.training for module in teacher.modules())

    single = build_teacher("single", tmp_path / checkpoints[0]).signals(x, {"logits"})
    with torch.no_grad():
        torch.testing.assert_close(single.logits, members[0](x).logits)


def test_a_weights_file_given_as_an_ensemble_says_which_kind_it_needs(tmp_path: Path) -> None:
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(b"\xbb\x45\x00binary weights, not UTF-8 \xff\xfe")
    with pytest.raises(CheckpointError, match=r"best.safetensors is not JSON .* kind 'single'"):
        Ensemble.from_manifest(weights)


@pytest.mark.parametrize("name", ["mean_probs", "entropy", "logits"])
def test_signals_without_spread_match_numpy(name: str) -> None:
    """Asked without std/pred_std/variance, the mean is accumulated on its own path (no
    m2): it must still be the mean of every member's softmax, checked in numpy float64."""
    members = [TinyNet() for _ in range(4)]
    x = images()
    signals = Ensemble(members).signals(x, {name})
    with torch.no_grad():
        logits = np.stack([m(x).logits.double().numpy() for m in members])  # [N, B, C, H, W]
    probs = np.exp(logits - logits.max(2, keepdims=True))
    probs /= probs.sum(2, keepdims=True)
    mean = probs.mean(0)
    expected = {
        "mean_probs": mean,
        "entropy": -(mean * np.log(mean)).sum(1, keepdims=True),
        "logits": np.log(mean),
    }[name]
    np.testing.assert_allclose(getattr(signals, name).numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_give_float32_statistics(dtype: torch.dtype) -> None:
    """Members may return bf16/fp16 logits (autocast); the statistics are float32, computed
    from the logits upcast before the softmax."""
    gen = torch.Generator().manual_seed(0)
    logits = [(torch.randn(1, CLASSES, 3, 4, generator=gen) * 4).to(dtype) for _ in range(3)]
    x = images(1, 3, 4)
    signals = Ensemble([FixedLogits(v) for v in logits]).signals(x, STATISTICS)
    reference = stacked_reference([FixedLogits(v.float()) for v in logits], x)
    assert_matches(signals, reference)


def _numpy_softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-3, keepdims=True))
    return e / e.sum(-3, keepdims=True)


@pytest.mark.parametrize("unbiased", [False, True])
def test_spread_statistics_match_numpy_for_disagreeing_members(unbiased: bool) -> None:
    """std (Holder eq. 3), pred_std (DUDES), variance (NfS U-KD) and BALD against numpy
    float64 on members that disagree on the predicted class: pred_std is the std at the
    class the mean predicts, which here differs from the class of the largest std and from
    some members' own predictions."""
    gen = torch.Generator().manual_seed(1)
    logits = [torch.randn(2, CLASSES, 3, 4, generator=gen) * 3 for _ in range(4)]
    signals = Ensemble([FixedLogits(v) for v in logits], unbiased_std=unbiased).signals(
        images(2, 3, 4), STATISTICS
    )
    probs = _numpy_softmax(np.stack([v.double().numpy() for v in logits]))  # [N, B, C, H, W]
    mean = probs.mean(0)
    var = probs.var(0, ddof=1 if unbiased else 0)
    predicted = mean.argmax(1)[:, None]
    assert (predicted != np.sqrt(var).argmax(1)[:, None]).any()  # the case that matters
    assert (predicted != probs.argmax(2)[:, :, None]).any()
    entropy = -(mean * np.log(mean)).sum(1, keepdims=True)
    member_entropy = -(probs * np.log(probs)).sum(2, keepdims=True).mean(0)
    expected = {
        "mean_probs": mean,
        "std": np.sqrt(var),
        "pred_std": np.take_along_axis(np.sqrt(var), predicted, 1),
        "variance": var.mean(1, keepdims=True),
        "entropy": entropy,
        "mutual_info": entropy - member_entropy,
    }
    for name, value in expected.items():
        np.testing.assert_allclose(
            getattr(signals, name).numpy(), value, rtol=1e-4, atol=1e-6, err_msg=name
        )


def test_two_member_spread_by_hand() -> None:
    """p1 = (0.9, 0.1), p2 = (0.5, 0.5): mean (0.7, 0.3), population variance 0.04 per
    class (std 0.2), unbiased 0.08; BALD = H(0.7, 0.3) - (H(0.9, 0.1) + H(0.5, 0.5)) / 2."""
    logits = [torch.tensor([0.9, 0.1]).log(), torch.tensor([0.5, 0.5]).log()]
    members = [FixedLogits(v.view(1, 2, 1, 1)) for v in logits]
    x = images(1, 1, 1)

    def h(*p: float) -> float:
        return -sum(q * np.log(q) for q in p)

    for unbiased, var in ((False, 0.04), (True, 0.08)):
        signals = Ensemble(members, unbiased_std=unbiased).signals(x, STATISTICS)
        np.testing.assert_allclose(signals.std.flatten(), [var**0.5] * 2, rtol=1e-5)
        np.testing.assert_allclose(signals.pred_std.item(), var**0.5, rtol=1e-5)
        np.testing.assert_allclose(signals.variance.item(), var, rtol=1e-5)
        np.testing.assert_allclose(signals.entropy.item(), h(0.7, 0.3), rtol=1e-5)
        bald = h(0.7, 0.3) - (h(0.9, 0.1) + h(0.5, 0.5)) / 2
        np.testing.assert_allclose(signals.mutual_info.item(), bald, rtol=1e-4)


def test_ensemble_logits_are_the_log_of_tiny_mean_probabilities() -> None:
    """log(m) must stay the log of the mean down to float32's smallest normal numbers (a
    KD loss on these logits sees softmax(log m) = m), not be floored at some epsilon:
    class probabilities of e^-30 .. e^-80 are checked against numpy's log-softmax."""
    base = torch.tensor([0.0, -30.0, -60.0, -80.0, 1.0]).view(1, CLASSES, 1, 1)
    logits = [base, base + torch.tensor([0.0, 2.0, -3.0, 1.0, 0.0]).view(1, CLASSES, 1, 1)]
    signals = Ensemble([FixedLogits(v) for v in logits]).signals(
        images(1, 1, 1), {"logits", "mean_probs"}
    )
    probs = _numpy_softmax(np.stack([v.double().numpy() for v in logits]))
    expected = np.log(probs.mean(0))
    assert expected.min() < -75
    np.testing.assert_allclose(signals.logits.numpy(), expected, rtol=1e-5)


def test_unbiased_std_of_one_pass_is_an_error_not_nan() -> None:
    """N - 1 = 0: the accumulator refuses instead of returning 0 / 0 = NaN maps (the
    teachers refuse earlier, at construction)."""
    accumulator = SignalAccumulator({"std"}, unbiased_std=True)
    accumulator.add(TinyNet()(images()))
    with pytest.raises(ValueError, match="at least two forward passes"):
        accumulator.result()


def test_members_that_declare_different_class_counts_are_refused_when_built() -> None:
    """Two members (not only three or more) with different `num_classes` are a ConfigError
    at construction, naming the counts, before any image is run."""
    first, second = TinyNet(), TinyNet()
    first.num_classes, second.num_classes = CLASSES, CLASSES + 1
    with pytest.raises(ConfigError, match=r"different numbers of classes: \[5, 6\]"):
        Ensemble([first, second])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mc_dropout_seed_is_reproducible_on_cuda_and_leaves_its_rng_alone() -> None:
    """On a GPU the dropout masks come from the CUDA generator: the seed must reseed it (the
    same batch, the same signals, equal to a pass seeded by hand) and restore its state."""
    device = torch.device("cuda")
    model = TinyNet(dropout=0.5).to(device)
    x = images().to(device)
    teacher = MCDropout(model, samples=3, seed=7)
    state = torch.cuda.get_rng_state(device)
    first = teacher.signals(x, {"mean_probs", "std"})
    assert torch.equal(torch.cuda.get_rng_state(device), state)
    second = teacher.signals(x, {"mean_probs", "std"})
    assert torch.equal(second.mean_probs, first.mean_probs) and first.std.max() > 0.05
    model.mc.train()
    with torch.random.fork_rng(devices=[device.index or 0]):
        torch.manual_seed(7)
        reference = stacked_reference([model] * 3, x)
    model.mc.eval()
    torch.testing.assert_close(first.mean_probs.double(), reference["mean_probs"])
