"""Methods: paper coefficients, CE counted once, gradients, needs, and the builder's errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from segdistill import losses, methods
from segdistill.data.labels import IGNORE_INDEX
from segdistill.errors import ConfigError, TrainingError
from segdistill.outputs import SIGNAL_NAMES, SegOutput, TeacherSignals
from test_losses import np_ja_kd_map, np_lower_median

B, C, H, W = 2, 4, 8, 8


def _target(all_ignore: bool = False) -> torch.Tensor:
    target = torch.randint(0, C, (B, H, W))
    target[0, :2] = IGNORE_INDEX
    if all_ignore:
        target[:] = IGNORE_INDEX
    return target


def _student(unc_channels: int | None = None, aux: bool = False) -> SegOutput:
    """A student whose tensors are leaves with grad, features OS16-like (H/2) with 3 channels."""
    unc = None
    if unc_channels is not None:
        unc = torch.rand(B, unc_channels, H, W).requires_grad_()
    return SegOutput(
        logits=torch.randn(B, C, H, W, requires_grad=True),
        uncertainty=unc,
        features={"encoder_out": torch.randn(B, 3, H // 4, W // 4, requires_grad=True)},
        aux_logits={"mid": torch.randn(B, C, H, W, requires_grad=True)} if aux else {},
    )


def _teacher() -> TeacherSignals:
    """Teacher signals as leaves with requires_grad, to prove no gradient reaches them."""
    probs = torch.softmax(torch.randn(B, C, H, W), dim=1)
    return TeacherSignals(
        mean_probs=probs.clone().requires_grad_(),
        std=(torch.rand(B, C, H, W) * 0.2).requires_grad_(),
        pred_std=(torch.rand(B, 1, H, W) * 0.2).requires_grad_(),
        variance=torch.rand(B, 1, H, W).requires_grad_(),
        logits=probs.log().requires_grad_(),
        features={"encoder_out": torch.rand(B, 5, H // 2, W // 2, requires_grad=True)},
    )


def _teacher_leaves(teacher: TeacherSignals) -> list[torch.Tensor]:
    values = [v for v in vars(teacher).values() if isinstance(v, torch.Tensor)]
    return values + list(teacher.features.values())


def _trained_adaptation(**options) -> methods.Adaptation:
    method = methods.Adaptation(student_channels=3, teacher_channels=5, **options)
    features = [torch.rand(B, 5, H // 2, W // 2) for _ in range(2)]
    methods.train_translator(features, method.translator)
    return method


def _all_methods() -> list[methods.Method]:
    return [
        methods.KD(),
        methods.Holder(),
        methods.DUDES(),
        methods.SelfAttention(student_channels=3, teacher_channels=5),
        _trained_adaptation(),
        methods.JAKD(),
        methods.UKD(),
        methods.CWD(student_channels=C, teacher_channels=C),
    ]


def test_the_shared_method_tests_cover_every_registered_method() -> None:
    """A method added to METHODS must be added to `_all_methods` (the gradient and needs
    tests run over it), or this fails."""
    assert sorted(m.name for m in _all_methods()) == sorted(methods.METHODS)


def _student_for(method: methods.Method) -> SegOutput:
    unc = {"holder": C, "dudes": 1}.get(method.name)
    return _student(unc, aux=True)


@pytest.mark.parametrize("method", _all_methods(), ids=lambda m: m.name)
def test_gradients_reach_student_and_adapters_not_teacher(method):
    student, teacher = _student_for(method), _teacher()
    method.train()
    terms = method(student, teacher, _target())
    assert terms and all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert all(t.grad is None for t in _teacher_leaves(teacher))
    read = [student.logits, student.uncertainty, *student.features.values()]
    assert any(t is not None and t.grad is not None for t in read)
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    if isinstance(method, methods.Adaptation):
        assert trainable and all(p.grad is None for p in method.translator.parameters())
        assert not method.translator.training


@pytest.mark.parametrize("method", _all_methods(), ids=lambda m: m.name)
def test_needs_are_signal_names(method):
    assert method.needs <= SIGNAL_NAMES
    assert ("features" in method.needs) == bool(method.teacher_taps)


def test_a_signal_not_asked_for_is_named_with_the_fix() -> None:
    """A method that reads a signal missing from its `needs` gets a KeyError saying so,
    not None (which failed later, far from the cause)."""
    teacher = TeacherSignals(mean_probs=torch.ones(1, 2, 1, 1))
    assert teacher.require("mean_probs") is teacher.mean_probs
    with pytest.raises(KeyError, match="teacher signal 'pred_std' was not computed; add it to"):
        teacher.require("pred_std")


def test_kd_term_is_hinton_with_t_squared():
    student, teacher = _student(), _teacher()
    got = methods.KD(temperature=3.0)(student, teacher, _target())["kl"]
    expected = losses.kd(student.logits, teacher.logits, 3.0)
    assert got.item() == pytest.approx(expected.item())
    assert methods.KD().needs == {"logits"}


def test_holder_total_is_eq4_with_alpha_0_1_and_beta_1_1():
    student, teacher, target = _student(C), _teacher(), _target()
    out = methods.build_methods([{"name": "holder"}], num_classes=C)(student, teacher, target)
    s = student.logits.detach().double().numpy()
    m = teacher.mean_probs.detach().double().numpy()
    q = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    l_dist = (m * (np.log(m) - np.log(q))).sum(axis=1).mean()  # T = 1, all pixels
    l_unc = ((student.uncertainty.detach().numpy() - teacher.std.detach().numpy()) ** 2).mean()
    l_cls = losses.cross_entropy(student.logits, target).item()
    assert out["task/ce"].item() == pytest.approx(0.1 * l_cls, rel=1e-5)
    assert out["holder/dist"].item() == pytest.approx(l_dist, rel=1e-5)
    assert out["holder/uncertainty_mse"].item() == pytest.approx(1.1 * l_unc, rel=1e-5)
    expected = l_dist + 0.1 * l_cls + 1.1 * l_unc
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_dudes_is_ce_plus_rmsle_on_all_pixels():
    student, teacher, target = _student(1), _teacher(), _target()
    out = methods.build_methods([{"name": "dudes"}], num_classes=C)(student, teacher, target)
    rmsle = losses.rmsle(student.uncertainty, teacher.pred_std)  # void pixels included
    ce = losses.cross_entropy(student.logits, target)
    assert out["dudes/uncertainty_rmsle"].item() == pytest.approx(rmsle.item())
    assert out["loss"].item() == pytest.approx((ce + rmsle).item())
    labelled_only = methods.DUDES(distill_void=False)(student, teacher, target)
    valid = target != IGNORE_INDEX
    expected = losses.rmsle(student.uncertainty, teacher.pred_std, valid)
    assert labelled_only["uncertainty_rmsle"].item() == pytest.approx(expected.item())


def test_uncertainty_head_missing_names_the_config_key():
    with pytest.raises(ConfigError, match="uncertainty_head: scalar"):
        methods.DUDES()(_student(None), _teacher(), _target())
    with pytest.raises(ConfigError, match="uncertainty_head: per_class"):
        methods.Holder()(_student(1), _teacher(), _target())


def test_self_attention_coefficients_and_channel_adapter():
    method = methods.SelfAttention(student_channels=3, teacher_channels=5)
    assert isinstance(method.adapter, torch.nn.Conv2d)
    assert method.adapter.weight.shape == (5, 3, 1, 1)
    student, teacher = _student(), _teacher()
    out = method(student, teacher, _target())
    adapted = torch.nn.functional.interpolate(
        method.adapter(student.features["encoder_out"]),
        size=(H // 2, W // 2),
        mode="bilinear",
        align_corners=False,
    )
    sa = losses.self_attention_loss(adapted, teacher.features["encoder_out"], 4.0, 0.4)
    kd = losses.cwd(student.logits, teacher.logits, 4.0)
    assert out["sa"].item() == pytest.approx(14 * sa.item(), rel=1e-5)
    assert out["cwd"].item() == pytest.approx(3 * kd.item(), rel=1e-5)


def test_self_attention_mse_distance_option():
    method = methods.SelfAttention(student_channels=3, teacher_channels=5, distance="mse")
    student, teacher = _student(), _teacher()
    teacher_map = teacher.features["encoder_out"]
    student_map = torch.nn.functional.interpolate(
        method.adapter(student.features["encoder_out"]),
        size=teacher_map.shape[-2:],
        mode="bilinear",
    )
    expected = losses.self_attention_loss(student_map, teacher_map, 4.0, 0.4, distance="mse")
    out = method(student, teacher, _target())
    assert out["sa"].item() == pytest.approx(14 * expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="distance='l1'"):
        methods.SelfAttention(student_channels=5, teacher_channels=5, distance="l1")


def test_self_attention_zero_when_features_match():
    method = methods.SelfAttention(student_channels=5, teacher_channels=5)
    assert isinstance(method.adapter, torch.nn.Identity)
    teacher = _teacher()
    student = SegOutput(logits=teacher.logits.detach().clone(), features=dict(teacher.features))
    out = method(student, teacher, _target())
    assert out["sa"].item() == 0.0
    # Exactly: both sides' logs come from log_softmax (log(softmax) left ~1e-6 of round-off).
    assert out["cwd"].item() == 0.0


def test_cwd_on_logits_by_default_and_zero_on_match():
    method = methods.CWD(student_channels=C, teacher_channels=C)
    assert method.needs == {"logits"} and not method.teacher_taps
    teacher = _teacher()
    student = SegOutput(logits=teacher.logits.detach().clone())
    assert method(student, teacher, _target())["cwd"].item() == pytest.approx(0.0, abs=1e-6)
    s = _student()
    got = method(s, teacher, _target())["cwd"]
    assert got.item() == pytest.approx(3 * losses.cwd(s.logits, teacher.logits, 4.0).item())


def test_cwd_on_features_resizes_and_adapts():
    method = methods.CWD(3, 5, student_tap="encoder_out", teacher_tap="encoder_out")
    assert method.needs == {"features"} and method.teacher_taps == {"encoder_out"}
    out = method(_student(), _teacher(), _target())
    assert torch.isfinite(out["cwd"])


def test_cwd_on_features_resizes_the_student_to_the_teacher_map():
    """The student map (OS16-like, H/4) is brought to the teacher's size (H/2), not the
    teacher's down to the student's: a student map constant per channel stays constant
    through the 1x1 adapter and the bilinear resize, so each of its channels is uniform over
    the teacher's H/2 * W/2 positions, and the term is 3 T^2 / C sum_c KL(phi(t_c) || 1/N)
    (Karine eq. 5) at the teacher's resolution."""
    method = methods.CWD(3, 5, student_tap="encoder_out", teacher_tap="encoder_out")
    levels = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float32)
    features = levels.view(1, 3, 1, 1).expand(B, 3, H // 4, W // 4).clone()
    student = SegOutput(logits=torch.randn(B, C, H, W), features={"encoder_out": features})
    teacher = _teacher()
    t = _np(teacher.features["encoder_out"]).reshape(B, 5, -1) / 4.0  # N = H/2 * W/2
    log_p = t - t.max(axis=2, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=2, keepdims=True))
    kl = (np.exp(log_p) * (log_p - np.log(1.0 / t.shape[2]))).sum(axis=2)  # [B, 5]
    got = method(student, teacher, _target())["cwd"]
    assert got.item() == pytest.approx(3 * 4.0**2 * kl.mean(), rel=1e-5)


def test_translator_reconstructs_odd_and_even_sizes_and_freezes():
    translator = methods.Translator(4)
    for size in [(5, 7), (6, 8)]:
        code, recon = translator(torch.rand(1, 4, *size))
        assert code.shape[-2:] == ((size[0] + 1) // 2, (size[1] + 1) // 2)
        assert recon.shape == (1, 4, *size)
    features = [torch.rand(2, 4, 6, 8) for _ in range(3)]
    history = methods.train_translator(features, translator, epochs=2)
    assert len(history) == 6 and all(np.isfinite(history))
    assert bool(translator.trained) and not translator.training
    assert not any(p.requires_grad for p in translator.parameters())
    with pytest.raises(TrainingError, match="re-iterable"):
        methods.train_translator((f for f in features), methods.Translator(4), epochs=2)


def test_adaptation_needs_stage_one_then_gives_weighted_terms():
    method = methods.Adaptation(student_channels=3, teacher_channels=5)
    ms = methods.MethodSet([("adaptation", method, 1.0)])
    assert [(n, tap) for n, tap, _ in ms.translators_to_train()] == [("adaptation", "encoder_out")]
    with pytest.raises(TrainingError, match="stage 1"):
        method(_student(), _teacher(), _target())
    methods.train_translator([torch.rand(B, 5, H // 2, W // 2)], method.translator)
    assert ms.translators_to_train() == []
    student, teacher = _student(), _teacher()
    method.eval()
    out = method(student, teacher, _target())
    code = method.translator.encode(teacher.features["encoder_out"])
    # teacher OS8 (H/2) -> code at H/4, the student's size: no resize needed here
    assert code.shape[-2:] == student.features["encoder_out"].shape[-2:]
    adapted = method.adapter(student.features["encoder_out"])
    assert out["adapt"].item() == pytest.approx(50 * losses.adaptation_loss(adapted, code).item())
    assert out["affinity"].item() == pytest.approx(losses.affinity_loss(adapted, code).item())


def test_adaptation_resizes_student_to_the_translated_knowledge():
    method = _trained_adaptation()
    student = _student()
    student.features["encoder_out"] = torch.randn(B, 3, 3, 3, requires_grad=True)
    out = method(student, _teacher(), _target())
    assert torch.isfinite(out["adapt"]) and torch.isfinite(out["affinity"])


def test_adaptation_terms_zero_when_adapted_student_matches_code():
    method = _trained_adaptation()
    method.eval()
    teacher = _teacher()
    code = method.translator.encode(teacher.features["encoder_out"])
    method.adapter = torch.nn.Identity()  # adapted student == translated teacher knowledge
    student = SegOutput(logits=teacher.logits.detach(), features={"encoder_out": code * 2.0})
    out = method(student, teacher, _target())
    assert out["adapt"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["affinity"].item() == pytest.approx(0.0, abs=1e-6)


def test_ja_kd_output_and_aux_terms():
    student, teacher = _student(aux=True), _teacher()
    out = methods.JAKD(aux_weight=0.4)(student, teacher, _target())
    assert set(out) == {"out", "aux_mid"}
    p = teacher.mean_probs
    assert out["out"].item() == pytest.approx(losses.ja_kd(student.logits, p).item())
    aux = losses.ja_kd(student.aux_logits["mid"], p)
    assert out["aux_mid"].item() == pytest.approx(0.4 * aux.item())


def test_ukd_mask_is_median_binarisation():
    student, teacher, target = _student(), _teacher(), _target()
    out = methods.UKD()(student, teacher, target)
    s = student.logits.detach().double().numpy()
    p_hat = teacher.mean_probs.detach().double().numpy()
    var = teacher.variance.detach().double().numpy()
    mask = np.stack([var[b, 0] > np.sort(var[b].ravel())[(H * W - 1) // 2] for b in range(B)])
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    diff = p - p_hat
    smooth = np.where(np.abs(diff) < 1, 0.5 * diff**2, np.abs(diff) - 0.5)
    per_pixel = (-p_hat * np.log(p) + 0.5 * smooth).sum(axis=1)
    assert out["out"].item() == pytest.approx((mask * per_pixel).mean(), rel=1e-5)
    assert methods.UKD().needs == {"mean_probs", "variance"}


def test_method_set_counts_ce_once_and_logs_every_term():
    ms = methods.build_methods([{"name": "dudes"}, {"name": "cwd", "weight": 0.5}], num_classes=C)
    student, teacher, target = _student(1), _teacher(), _target()
    out = ms(student, teacher, target)
    assert set(out) == {"loss", "task/ce", "dudes/uncertainty_rmsle", "cwd/cwd"}
    ce = losses.cross_entropy(student.logits, target)
    assert out["task/ce"].item() == pytest.approx(ce.item())
    cwd = 0.5 * 3 * losses.cwd(student.logits, teacher.logits, 4.0)
    assert out["cwd/cwd"].item() == pytest.approx(cwd.item(), rel=1e-6)
    parts = sum(v for k, v in out.items() if k != "loss")
    assert out["loss"].item() == pytest.approx(parts.item())
    assert ms.needs == {"pred_std", "logits"}


def test_method_set_ce_weight_rule():
    holder = methods.MethodSet([("holder", methods.Holder(), 1.0)])
    assert holder.ce_weight == pytest.approx(0.1)
    both = methods.MethodSet([("holder", methods.Holder(), 1.0), ("kd", methods.KD(), 0.5)])
    assert both.ce_weight == pytest.approx(0.5)
    assert methods.MethodSet([]).ce_weight == 1.0  # plain supervised training
    explicit = methods.build_methods([{"name": "holder"}], num_classes=C, ce_weight=0.7)
    assert explicit.ce_weight == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="nothing to train"):
        methods.MethodSet([], ce_weight=0.0)


def _numpy_ce(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> float:
    """Mean cross-entropy over the non-ignored pixels, in numpy (float64)."""
    x = logits.detach().double().numpy()
    t = target.numpy()
    log_probs = x - x.max(1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(1, keepdims=True))
    b, h, w = np.nonzero(t != ignore_index)
    return float(-log_probs[b, t[b, h, w], h, w].mean())


def test_aux_ce_weight_adds_each_aux_outputs_label_ce():
    """Deep supervision (`model.aux_loss_weight`): w x CE of every auxiliary output on the
    labels, void pixels ignored, beside the CE of the main output."""
    student, target = _student(aux=True), _target()
    student.aux_logits["deep"] = torch.randn(B, C, H, W, requires_grad=True)
    out = methods.MethodSet(aux_ce_weight=0.4)(student, _teacher(), target)
    assert set(out) == {"loss", "task/ce", "task/aux_ce_mid", "task/aux_ce_deep"}
    assert out["task/ce"].item() == pytest.approx(_numpy_ce(student.logits, target), rel=1e-5)
    for level in ("mid", "deep"):
        expected = 0.4 * _numpy_ce(student.aux_logits[level], target)
        assert out[f"task/aux_ce_{level}"].item() == pytest.approx(expected, rel=1e-5)
    parts = sum(v for k, v in out.items() if k != "loss")
    assert out["loss"].item() == pytest.approx(parts.item())
    out["loss"].backward()
    assert student.aux_logits["deep"].grad is not None
    # Without the weight the aux outputs get no term (ja_kd / ukd distil them instead).
    assert set(methods.MethodSet()(_student(aux=True), _teacher(), target)) == {"loss", "task/ce"}


def test_aux_ce_weight_needs_aux_outputs():
    with pytest.raises(ConfigError, match=r"model.aux_loss_weight=0.4 .*model.aux_heads: true"):
        methods.build_methods([{"name": "kd"}], num_classes=C, aux_ce_weight=0.4).check_student(
            _student()
        )
    with pytest.raises(ConfigError, match="aux_ce_weight"):
        methods.MethodSet(aux_ce_weight=-1.0)


def test_all_ignore_batch_gives_finite_loss_and_gradients():
    ms = methods.build_methods(
        [{"name": "dudes"}, {"name": "ja_kd", "options": {"distill_void": False}}],
        num_classes=C,
    )
    student = _student(1)
    out = ms(student, _teacher(), _target(all_ignore=True))
    assert out["task/ce"].item() == 0.0 and out["ja_kd/out"].item() == 0.0
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(student.logits.grad).all()


def test_build_methods_channels_taps_and_needs():
    ms = methods.build_methods(
        [
            {"name": "self_attention", "weight": 1.0, "options": {}},
            {"name": "adaptation", "options": {"lambda_affinity": 2.0}},
            {"name": "ukd", "options": {"median_over": "batch"}},
        ],
        num_classes=C,
        student_channels={"encoder_out": 3},
        teacher_channels={"encoder_out": 5},
        ignore_index=7,
    )
    sa = ms.methods["self_attention"]
    assert sa.adapter.weight.shape == (5, 3, 1, 1)
    assert ms.methods["adaptation"].lambda_affinity == 2.0
    assert ms.methods["ukd"].median_over == "batch" and ms.ignore_index == 7
    assert ms.needs == {"logits", "features", "mean_probs", "variance"}
    assert ms.teacher_taps == ms.student_taps == {"encoder_out"}
    trainable = {n for n, p in ms.named_parameters() if p.requires_grad}
    assert any(n.startswith("methods.adaptation.adapter") for n in trainable)
    assert not any("translator" in n for n in trainable)


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ([{"name": "dudez"}], r"methods\[0\]\.name.*did you mean 'dudes'"),
        ([{"name": "kd", "options": {"temprature": 2}}], r"options\.temprature.*'temperature'"),
        ([{"name": "kd", "wieght": 2}], r"wieght.*did you mean 'weight'"),
        ([{"name": "kd", "options": {"temperature": 0}}], r"temperature=0 must be > 0"),
        ([{"name": "kd", "options": {"temperature": "hot"}}], r"must be a number"),
        ([{"name": "kd", "weight": -1}], r"weight=-1"),
        ([{"name": "ukd", "options": {"median_over": "pixel"}}], r"median_over='pixel'"),
        ([{"name": "kd"}, {"name": "kd"}], r"listed twice"),
        ([{"name": "adaptation"}], r"teacher_tap: the teacher has no feature tap 'encoder_out'"),
        (
            [{"name": "cwd", "options": {"student_tap": "encoder_ot", "teacher_tap": "logits"}}],
            r"did you mean 'encoder_out'",
        ),
        (["kd"], r"expected a mapping"),
        ([{"name": "kd", "options": ["temperature"]}], r"options: expected a mapping"),
    ],
)
def test_build_methods_errors_name_the_key(specs, match):
    with pytest.raises(ConfigError, match=match):
        methods.build_methods(specs, num_classes=C, student_channels={"encoder_out": 3})


def test_missing_feature_tap_at_forward_is_a_config_error():
    method = methods.SelfAttention(3, 5, student_tap="decoder_out")
    with pytest.raises(ConfigError, match="student_tap='decoder_out'"):
        method(_student(), _teacher(), _target())


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _cropped_teacher_valid() -> torch.Tensor:
    """A cache's crop padding: image 1's right three columns have no teacher output."""
    teacher_valid = torch.ones(B, H, W, dtype=torch.bool)
    teacher_valid[1, :, 5:] = False
    return teacher_valid


@pytest.mark.parametrize("distill_void", [True, False])
def test_pixel_terms_average_over_the_labelled_pixels_where_the_teacher_exists(distill_void):
    """Each pixel-wise term against numpy over the pixels that count: where the teacher's
    signals exist (`teacher_valid`) and, with distill_void false, that are labelled. The
    teacher's values elsewhere are noise, not a constant that softens to a uniform
    distribution like the padding's zeros, so a term that reads them shows it."""
    torch.manual_seed(1)
    student, teacher, target = _student(C), _teacher(), _target()
    target[1, 6:, :2] = IGNORE_INDEX  # void where the teacher exists (image 0's: `_target`)
    teacher_valid = _cropped_teacher_valid()  # labelled pixels without a teacher output
    mask = teacher_valid.numpy()
    if not distill_void:
        mask = mask & (target != IGNORE_INDEX).numpy()
    s, m = _np(student.logits), _np(teacher.mean_probs)
    log_q = _np_log_softmax(s)

    kd = methods.KD(temperature=2.0, distill_void=distill_void)
    got = kd(student, teacher, target, teacher_valid)["kl"]
    log_p2, log_q2 = _np_log_softmax(np.log(m) / 2.0), _np_log_softmax(s / 2.0)
    kl_t2 = (np.exp(log_p2) * (log_p2 - log_q2)).sum(axis=1)
    assert got.item() == pytest.approx(4.0 * kl_t2[mask].mean(), rel=1e-5)

    holder = methods.Holder(distill_void=distill_void)(student, teacher, target, teacher_valid)
    kl = (m * (np.log(m) - log_q)).sum(axis=1)
    assert holder["dist"].item() == pytest.approx(kl[mask].mean(), rel=1e-5)
    squared = ((_np(student.uncertainty) - _np(teacher.std)) ** 2).mean(axis=1)
    assert holder["uncertainty_mse"].item() == pytest.approx(1.1 * squared[mask].mean(), rel=1e-5)

    dudes_student = _student(1)
    dudes = methods.DUDES(distill_void=distill_void)(dudes_student, teacher, target, teacher_valid)
    log_diff = np.log1p(_np(dudes_student.uncertainty)) - np.log1p(_np(teacher.pred_std))
    expected = np.sqrt((log_diff[:, 0] ** 2)[mask].mean())
    assert dudes["uncertainty_rmsle"].item() == pytest.approx(expected, rel=1e-5)

    ja_kd = methods.JAKD(alpha=0.3, distill_void=distill_void)
    got = ja_kd(student, teacher, target, teacher_valid)["out"]
    assert got.item() == pytest.approx(np_ja_kd_map(s, m, 0.3)[mask].mean(), rel=1e-5)


@pytest.mark.parametrize("median_over", ["image", "batch"])
def test_ukd_thresholds_at_the_median_of_the_pixels_where_the_teacher_exists(median_over):
    """U-KD (NfS-SegNet eq. 3) with a cache's crop padding: the variance is binarised at
    the (lower) median of the valid pixels, of each image or of the batch, with alpha as
    given; the images' variances differ in scale, so the two medians select differently."""
    torch.manual_seed(2)
    student, teacher, target = _student(), _teacher(), _target()
    teacher.variance = (teacher.variance * torch.tensor([1.0, 10.0])[:, None, None, None]).detach()
    teacher_valid = _cropped_teacher_valid()
    valid = teacher_valid.numpy()
    variance = _np(teacher.variance)[:, 0]
    if median_over == "image":
        thresholds = [np_lower_median(variance[b][valid[b]]) for b in range(B)]
    else:
        thresholds = [np_lower_median(variance[valid])] * B
    uncertain = np.stack([variance[b] > thresholds[b] for b in range(B)])
    per_pixel = np_ja_kd_map(_np(student.logits), _np(teacher.mean_probs), 0.3)
    expected = (uncertain * per_pixel)[valid].mean()
    ukd = methods.UKD(alpha=0.3, median_over=median_over)
    got = ukd(student, teacher, target, teacher_valid)["out"]
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_method_options_reach_their_terms():
    """Coefficients and hyper-parameters other than the papers' defaults are the ones the
    terms use (each loss is checked against its equation in test_losses.py)."""
    student, teacher, target = _student(C), _teacher(), _target()
    holder = methods.Holder(temperature=3.0, beta=0.7)(student, teacher, target)
    log_mean = teacher.mean_probs.log()
    expected = losses.kd(student.logits, log_mean, 3.0)
    assert holder["dist"].item() == pytest.approx(expected.item(), rel=1e-6)
    expected = 0.7 * losses.uncertainty_mse(student.uncertainty, teacher.std)
    assert holder["uncertainty_mse"].item() == pytest.approx(expected.item(), rel=1e-6)

    cwd = methods.CWD(C, C, temperature=2.0, lambda_cwd=0.5)(student, teacher, target)["cwd"]
    expected = 0.5 * losses.cwd(student.logits, teacher.logits, 2.0)
    assert cwd.item() == pytest.approx(expected.item(), rel=1e-6)

    sa = methods.SelfAttention(5, 5, temperature=2.0, beta=0.9, lambda_sa=2.0, lambda_kd=5.0)
    five = SegOutput(  # the teacher's channels and size: no adapter, no resize
        logits=student.logits, features={"encoder_out": torch.randn(B, 5, H // 2, W // 2)}
    )
    out = sa(five, teacher, target)
    expected = 2.0 * losses.self_attention_loss(
        five.features["encoder_out"], teacher.features["encoder_out"], 2.0, 0.9
    )
    assert out["sa"].item() == pytest.approx(expected.item(), rel=1e-6)
    expected = 5.0 * losses.cwd(student.logits, teacher.logits, 2.0)
    assert out["cwd"].item() == pytest.approx(expected.item(), rel=1e-6)

    adaptation = _trained_adaptation(lambda_adapt=7.0, lambda_affinity=2.0)
    adaptation.eval()
    out = adaptation(student, teacher, target)
    code = adaptation.translator.encode(teacher.features["encoder_out"])
    adapted = adaptation.adapter(student.features["encoder_out"])
    expected = 7.0 * losses.adaptation_loss(adapted, code)
    assert out["adapt"].item() == pytest.approx(expected.item(), rel=1e-6)
    expected = 2.0 * losses.affinity_loss(adapted, code)
    assert out["affinity"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_translator_loss_is_eq1_with_the_given_sparsity_weight():
    translator = methods.Translator(4).eval()
    features = torch.rand(2, 4, 6, 8, dtype=torch.float64)
    translator.double()
    code, reconstruction = translator(features)
    mse = ((_np(reconstruction) - _np(features)) ** 2).mean()
    for weight in (1e-7, 0.5):
        expected = mse + weight * np.abs(_np(code)).sum()
        got = translator.reconstruction_loss(features, sparsity_weight=weight)
        assert got.item() == pytest.approx(expected, rel=1e-10)


def test_train_translator_steps_on_eq1_with_its_sparsity_weight():
    """Stage 1 minimises He et al. eq. 1 with the `sparsity_weight` it is given: the first
    step's loss is the MSE of the (train-mode) reconstruction plus w * sum |E(F_t)|."""
    torch.manual_seed(0)
    features = [torch.rand(2, 4, 6, 8, dtype=torch.float64)]
    initial = methods.Translator(4).double()
    reference = copy.deepcopy(initial).train()  # BN on the batch's statistics, as in training
    with torch.no_grad():
        code, reconstruction = reference(features[0])
    mse = ((_np(reconstruction) - _np(features[0])) ** 2).mean()
    l1 = np.abs(_np(code)).sum()
    assert l1 > 0
    for weight in (0.0, 0.5):
        history = methods.train_translator(features, copy.deepcopy(initial), sparsity_weight=weight)
        assert history[0] == pytest.approx(mse + weight * l1, rel=1e-10)


def test_a_configured_ignore_index_reaches_the_ce_terms_and_the_methods():
    """data.ignore_index may be any value outside the classes: build_methods hands it to
    the set's label cross-entropies (main and auxiliary) and to each method's mask of the
    labelled pixels (distill_void false), none of which may fall back to 255."""
    torch.manual_seed(4)
    void = C
    student, teacher, target = _student(C, aux=True), _teacher(), _target()
    target[target == IGNORE_INDEX] = void
    specs = [
        {"name": "kd", "options": {"temperature": 1.0, "distill_void": False}},
        {"name": "holder", "options": {"distill_void": False}},
    ]
    ms = methods.build_methods(specs, num_classes=C, ignore_index=void, aux_ce_weight=0.4)
    out = ms(student, teacher, target)
    labelled = (target != void).numpy()
    s, m = _np(student.logits), _np(teacher.mean_probs)
    kl = (m * (np.log(m) - _np_log_softmax(s))).sum(axis=1)
    assert out["kd/kl"].item() == pytest.approx(kl[labelled].mean(), rel=1e-5)
    squared = ((_np(student.uncertainty) - _np(teacher.std)) ** 2).mean(axis=1)
    expected = 1.1 * squared[labelled].mean()
    assert out["holder/uncertainty_mse"].item() == pytest.approx(expected, rel=1e-5)
    expected = _numpy_ce(student.logits, target, void)  # ce_weight max(1 * 1, 1 * 0.1)
    assert out["task/ce"].item() == pytest.approx(expected, rel=1e-5)
    expected = 0.4 * _numpy_ce(student.aux_logits["mid"], target, void)
    assert out["task/aux_ce_mid"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["ja_kd", "ukd"])
def test_aux_terms_count_the_same_pixels_as_the_output_term(name):
    """NfS-SegNet's auxiliary JA-KD / U-KD terms average over the pixels the output term
    does: labelled (distill_void false) and where the teacher's signals exist."""
    torch.manual_seed(3)
    student, teacher, target = _student(aux=True), _teacher(), _target()
    teacher_valid = _cropped_teacher_valid()
    valid = teacher_valid.numpy()
    mask = valid & (target != IGNORE_INDEX).numpy()
    uncertain = np.ones((B, H, W), dtype=bool)
    if name == "ukd":
        variance = _np(teacher.variance)[:, 0]
        thresholds = [np_lower_median(variance[b][valid[b]]) for b in range(B)]
        uncertain = np.stack([variance[b] > thresholds[b] for b in range(B)])
    method = methods.METHODS[name](alpha=0.3, aux_weight=0.4, distill_void=False)
    out = method(student, teacher, target, teacher_valid)
    m = _np(teacher.mean_probs)
    for key, logits in (("out", student.logits), ("aux_mid", student.aux_logits["mid"])):
        per_pixel = uncertain * np_ja_kd_map(_np(logits), m, 0.3)
        weight = 0.4 if key == "aux_mid" else 1.0
        assert out[key].item() == pytest.approx(weight * per_pixel[mask].mean(), rel=1e-5)


def test_kd_defaults_to_t_2_on_every_pixel():
    """KD's default (He et al. Table 3's best pixel-wise T = 2, void pixels distilled):
    4 KL(softmax(t / 2) || softmax(s / 2)) averaged over all pixels."""
    torch.manual_seed(5)
    student, teacher, target = _student(), _teacher(), _target()
    out = methods.build_methods([{"name": "kd"}], num_classes=C)(student, teacher, target)
    log_p = _np_log_softmax(np.log(_np(teacher.mean_probs)) / 2.0)
    log_q = _np_log_softmax(_np(student.logits) / 2.0)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    assert out["kd/kl"].item() == pytest.approx(4.0 * kl.mean(), rel=1e-5)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "kd", "options": {"temperature": float("nan")}},
        {"name": "kd", "options": {"temperature": float("inf")}},
        {"name": "cwd", "options": {"lambda_cwd": float("inf")}},
        {"name": "holder", "options": {"beta": float("nan")}},
        {"name": "kd", "weight": float("nan")},
    ],
)
def test_non_finite_method_numbers_are_config_errors(spec):
    """`options` is a free mapping, so the config's finite-number check does not reach it:
    `{temperature: .nan}` was built and trained to a NaN loss (inf: NaN too), where every
    other setting at inf or nan is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"nan|inf"):
        methods.build_methods([spec], num_classes=C)
