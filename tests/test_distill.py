"""Distillation end to end on 32x64 SynthStreets with tiny students and a tiny randomly
initialised ensemble, on the CPU: every method lowers its loss, the teacher gets no
gradient, He et al.'s stage 1 runs once (not again on resume), Holder's two-stage start,
unlabelled images, cached and online signals together, and `segdistill distill`."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from segdistill import train as training
from segdistill.checkpoints import build_model, save_weights
from segdistill.cli import main
from segdistill.config import SegConfig, load_config, replace_values
from segdistill.errors import ConfigError, DataError
from segdistill.methods import METHODS, build_methods
from segdistill.models.teachers import MCDropout, mc_dropout_layers
from segdistill.outputs import TeacherSignals
from segdistill.teacher_cache import VALID_MAP, valid_mask
from test_teacher_cache import TINY_MODEL, write_ensemble, write_synthstreets

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "quick"
TINY_CONFIG = """\
data: {{root: {root}, crop_size: [32, 64], batch_size: 2, num_workers: 0}}
model: {{encoder_options: {{width: 0.125}}}}
trainer: {{max_epochs: 1, accelerator: cpu, log_every_n_steps: 1}}
distill: {{teacher: {{kind: ensemble, path: {teacher}}}}}
"""
# The student options each method needs.
STUDENTS = {
    "holder": ["model.uncertainty_head=per_class"],
    "dudes": ["model.uncertainty_head=scalar"],
}
FEATURES = {"student_tap": "encoder_out", "teacher_tap": "encoder_out"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthstreets(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ensemble(tmp_path_factory.mktemp("ensemble"))


def tiny_config(
    directory: Path, synth: Path, teacher: Path, overrides: list[str] = ()
) -> SegConfig:
    """The tiny distillation config (1 epoch of 2 steps) with run.dir = directory / "run"."""
    path = directory / "tiny.yaml"
    path.write_text(TINY_CONFIG.format(root=synth, teacher=teacher))
    return load_config(path, [f"run.dir={directory / 'run'}", *overrides])


def read_metrics(run_dir: Path, version: int = 0) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "csv" / f"version_{version}" / "metrics.csv") as file:
        return list(csv.DictReader(file))


def method_loss(terms: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return sum(value for key, value in terms.items() if key.startswith(f"{name}/"))


# Every registered method alone (`test_every_method_is_trained_end_to_end`), and two variants.
LOWERING_SPECS = [
    [{"name": "kd"}],
    [{"name": "holder"}],
    [{"name": "dudes"}],
    [{"name": "self_attention"}],
    [{"name": "adaptation"}],
    [{"name": "ja_kd"}],
    [{"name": "ukd"}],
    [{"name": "cwd"}],
    [{"name": "cwd", "options": FEATURES}],
    [{"name": "dudes"}, {"name": "cwd", "weight": 0.5}],
]


def test_every_method_is_trained_end_to_end() -> None:
    """A method added to METHODS must be added to LOWERING_SPECS, or this fails."""
    alone = {specs[0]["name"] for specs in LOWERING_SPECS if len(specs) == 1}
    assert alone == set(METHODS)


@pytest.mark.parametrize(
    "specs",
    LOWERING_SPECS,
    ids=lambda specs: "+".join(s["name"] + ("_features" if "options" in s else "") for s in specs),
)
def test_each_method_lowers_its_loss_on_a_fixed_batch(
    tmp_path: Path, synth: Path, ensemble: Path, specs: list[dict]
) -> None:
    names = [spec["name"] for spec in specs]
    overrides = [o for name in names for o in STUDENTS.get(name, [])]
    cfg = tiny_config(tmp_path, synth, ensemble, [*overrides, f"distill.methods={specs}"])
    model = build_model(cfg.model, 19)
    methods, teacher = training.build_distillation(cfg, model)
    dataset = training.build_dataset(cfg.data, "train", train=True)
    batch = default_collate([dataset[0], dataset[1]])
    for _, tap, translator in methods.translators_to_train():  # He et al. stage 1
        training.train_translator(
            training.TeacherFeatures(teacher, [batch], tap, torch.device("cpu")), translator
        )
    task = training.SegmentationTask(
        model, cfg.optim, methods, teacher, total_steps=100, num_classes=19
    )
    optimizer = task.configure_optimizers()["optimizer"]
    history = []
    for _ in range(15):
        terms = methods(model(batch["image"]), task.teacher_signals(batch), batch["label"])
        losses = {name: method_loss(terms, name) for name in names}
        history.append({name: loss.item() for name, loss in losses.items()})
        # The methods' own terms: the CE would pull towards labels the random teacher ignores.
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    for name in names:
        first = sum(h[name] for h in history[:3]) / 3
        last = sum(h[name] for h in history[-3:]) / 3
        assert last < first, (name, [h[name] for h in history])


def test_signals_come_from_the_cache_where_it_has_them_and_from_the_teacher_otherwise() -> None:
    methods = build_methods(
        [{"name": "dudes"}, {"name": "cwd"}], 3, student_channels={}, teacher_channels={}
    )
    asked = []

    class Teacher(torch.nn.Module):
        def signals(self, images: torch.Tensor, needs: frozenset[str]) -> TeacherSignals:
            assert not torch.is_grad_enabled()
            asked.append(set(needs))
            return TeacherSignals(logits=torch.zeros(2, 3, 4, 4))

    task = training.SegmentationTask(
        build_model(TINY_MODEL, 3),
        SegConfig().optim,
        methods,
        Teacher(),
        total_steps=1,
        num_classes=3,
    )
    pred_std = torch.rand(2, 1, 4, 4)
    batch = {"image": torch.zeros(2, 3, 4, 4), "maps": {"pred_std": pred_std}}
    signals = task.teacher_signals(batch)
    assert asked == [{"logits"}] and signals.pred_std is pred_std
    assert signals.logits.shape == (2, 3, 4, 4)


def teacher_probe(monkeypatch: pytest.MonkeyPatch) -> list:
    """Capture the teacher `train` builds; its modules record (training, grad enabled) at
    every forward."""
    built = []
    real_build_teacher = training.build_teacher

    def build_and_watch(kind: str, path: str, samples: int = 8):
        teacher = real_build_teacher(kind, path, samples)
        teacher.calls = []
        for module in teacher.modules():
            module.register_forward_pre_hook(
                lambda m, args: teacher.calls.append((m, m.training, torch.is_grad_enabled()))
            )
        built.append(teacher)
        return teacher

    monkeypatch.setattr(training, "build_teacher", build_and_watch)
    return built


@pytest.mark.parametrize("kind", ["ensemble", "mc_dropout"])
def test_the_teacher_gets_no_gradient_and_stays_in_eval_mode(
    tmp_path: Path, synth: Path, ensemble: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "ensemble":
        path = ensemble
    else:
        path = tmp_path / "mc.safetensors"
        config = TINY_MODEL.__class__(**{**vars(TINY_MODEL), "mc_dropout": 0.2})
        save_weights(path, build_model(config, 19), config)
    built = teacher_probe(monkeypatch)
    samples = ", samples: 2" if kind == "mc_dropout" else ""  # an ensemble reads none
    cfg = tiny_config(
        tmp_path,
        synth,
        path,
        [
            f"distill.teacher={{kind: {kind}, path: {path}{samples}}}",
            "model.uncertainty_head=scalar",
            # adaptation: He et al.'s stage 1 runs the teacher too, before the first step
            "distill.methods=[{name: dudes}, {name: kd}, {name: adaptation}]",
        ],
    )
    training.train(cfg)
    (teacher,) = built
    fresh = training.build_teacher(kind, str(path), 2)
    for (name, param), original in zip(teacher.named_parameters(), fresh.parameters()):
        assert param.grad is None and not param.requires_grad, name
        assert torch.equal(param, original), name
    for (name, buffer), original in zip(teacher.named_buffers(), fresh.buffers()):
        assert torch.equal(buffer, original), name  # batch-norm statistics did not move
    sampling = set(mc_dropout_layers(teacher)) if isinstance(teacher, MCDropout) else set()
    assert teacher.calls and not any(grad for _, _, grad in teacher.calls)
    # In eval mode whenever it runs, except the MC-dropout layers while sampling.
    assert all(not training_mode for m, training_mode, _ in teacher.calls if m not in sampling)
    assert any(training_mode for m, training_mode, _ in teacher.calls) == bool(sampling)
    assert not any(m.training for m in teacher.modules())


def translator_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if ".translator." in k}


@pytest.fixture
def translator_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of steps of every stage-1 translator training, as they happen."""
    steps: list[int] = []
    real_train_translator = training.train_translator

    def count(features, translator):
        history = real_train_translator(features, translator)
        steps.append(len(history))
        return history

    monkeypatch.setattr(training, "train_translator", count)
    return steps


def test_stage_one_trains_the_translator_before_fitting_and_not_again_on_resume(
    tmp_path: Path, synth: Path, ensemble: Path, translator_steps: list[int]
) -> None:
    calls = translator_steps
    cfg = tiny_config(tmp_path, synth, ensemble, ["distill.methods=[{name: adaptation}]"])
    run_dir = training.train(cfg)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    after_first_epoch = translator_state(checkpoint)
    assert calls == [2]  # one epoch: both full batches of the training set
    assert after_first_epoch["methods.methods.adaptation.translator.trained"].item() is True
    assert {"train/adaptation/adapt", "train/adaptation/affinity"} <= set(read_metrics(run_dir)[0])

    resumed = load_config(run_dir / "config.yaml", ["trainer.max_epochs=2"])
    training.train(resumed, resume=True)
    assert len(calls) == 1  # restored from last.ckpt with `trained` set: no second stage 1
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 4
    for key, value in translator_state(checkpoint).items():
        assert torch.equal(value, after_first_epoch[key]), key  # frozen in stage 2


def test_stage_one_honours_limit_train_batches(
    tmp_path: Path, synth: Path, ensemble: Path, translator_steps: list[int]
) -> None:
    overrides = ["distill.methods=[{name: adaptation}]", "trainer.limit_train_batches=1"]
    training.train(tiny_config(tmp_path, synth, ensemble, overrides))
    assert translator_steps == [1]


def test_init_from_loads_encoder_and_decoder_and_keeps_the_new_heads_fresh(
    tmp_path: Path,
) -> None:
    torch.manual_seed(1)
    pretrained = build_model(TINY_MODEL, 19)
    save_weights(tmp_path / "pre.safetensors", pretrained, TINY_MODEL)
    holder = TINY_MODEL.__class__(**{**vars(TINY_MODEL), "uncertainty_head": "per_class"})
    torch.manual_seed(2)
    student = build_model(holder, 19)
    fresh = {k: v.clone() for k, v in student.state_dict().items()}
    training.init_from_pretrained(student, holder, str(tmp_path / "pre.safetensors"))
    theirs = pretrained.state_dict()
    for key, value in student.state_dict().items():
        if key.startswith(("encoder.", "decoder.")):
            assert torch.equal(value, theirs[key]), key
        else:
            assert key.startswith(("seg_head.", "uncertainty_head.")), key
            assert torch.equal(value, fresh[key]), key

    wider = TINY_MODEL.__class__(encoder_options={"output_stride": 16, "width": 0.25})
    with pytest.raises(ConfigError, match="its model.encoder_options is .* this student's"):
        training.init_from_pretrained(
            build_model(wider, 19), wider, str(tmp_path / "pre.safetensors")
        )
    # Another decoder width: named, not torch's size-mismatch traceback.
    slimmer = TINY_MODEL.__class__(**{**vars(TINY_MODEL), "decoder_channels": 8})
    with pytest.raises(ConfigError, match="its model.decoder_channels is None, this student's 8"):
        training.init_from_pretrained(
            build_model(slimmer, 19), slimmer, str(tmp_path / "pre.safetensors")
        )


class _Started(Exception):
    """Stops `train` where the distillation is built, right after the student's start."""


def test_a_distillation_with_init_from_starts_from_the_pretrained_body(
    tmp_path: Path, synth: Path, ensemble: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holder's stage 2 through `train`: the student's encoder and decoder are the
    pre-trained ones when distillation starts, its heads the fresh ones."""
    cfg = tiny_config(tmp_path, synth, ensemble, ["distill.methods=[{name: kd}]"])
    torch.manual_seed(1)
    pretrained = build_model(cfg.model, cfg.data.num_classes)
    save_weights(tmp_path / "pre.safetensors", pretrained, cfg.model)
    cfg = replace_values(cfg, {"distill.init_from": str(tmp_path / "pre.safetensors")}, "t")
    started: dict[str, torch.Tensor] = {}

    def capture(cfg: SegConfig, model: torch.nn.Module) -> None:
        started.update({k: v.clone() for k, v in model.state_dict().items()})
        raise _Started

    monkeypatch.setattr(training, "build_distillation", capture)
    with pytest.raises(_Started):
        training.train(cfg)
    theirs = pretrained.state_dict()
    body = [key for key in theirs if key.startswith(("encoder.", "decoder."))]
    assert body and all(torch.equal(started[key], theirs[key]) for key in body)
    assert not torch.equal(started["seg_head.weight"], theirs["seg_head.weight"])


def test_unlabelled_images_are_distilled_from_the_teacher_alone(
    tmp_path: Path, synth: Path, ensemble: Path
) -> None:
    # Extra data comes in city folders (Cityscapes' train_extra): the search goes down, and
    # two files of one name in two folders stay two samples.
    unlabeled = tmp_path / "unlabeled"
    first, second = sorted((synth / "leftImg8bit" / "val").rglob("*.png"))
    for image, folder in ((first, unlabeled / "a"), (second, unlabeled / "b" / "c")):
        folder.mkdir(parents=True)
        shutil.copy(image, folder / "frame.png")
    (unlabeled / "notes.txt").write_text("not an image")
    cfg = tiny_config(
        tmp_path,
        synth,
        ensemble,
        [f"distill.unlabeled_root={unlabeled}", "distill.methods=[{name: ja_kd}]"],
    )
    labelled = training.build_dataset(cfg.data, "train", train=True)
    train_set = training.add_unlabeled_images(labelled, unlabeled)
    assert [s.name for s in train_set.samples[4:]] == ["unlabeled/a/frame", "unlabeled/b/c/frame"]
    batch = default_collate([train_set[4], train_set[5]])  # the two unlabelled images
    assert (batch["label"] == 255).all()
    model = build_model(cfg.model, 19)
    methods, teacher = training.build_distillation(cfg, model)
    task = training.SegmentationTask(
        model, cfg.optim, methods, teacher, total_steps=1, num_classes=19
    )
    terms = methods(model(batch["image"]), task.teacher_signals(batch), batch["label"])
    assert terms["task/ce"] == 0 and terms["ja_kd/out"] > 0
    terms["loss"].backward()
    assert model.seg_head.weight.grad.abs().sum() > 0

    run_dir = training.train(cfg)  # 3 steps: 6 images in batches of 2
    rows = [row for row in read_metrics(run_dir) if row["train/loss"]]
    assert len(rows) == 3 and all(float(row["train/ja_kd/out"]) > 0 for row in rows)

    # A folder without images (or no folder) stops the run, naming the setting.
    with pytest.raises(DataError, match=rf"distill.unlabeled_root: {unlabeled / 'a'} holds no"):
        (unlabeled / "a" / "frame.png").unlink()
        training.add_unlabeled_images(labelled, unlabeled / "a")
    with pytest.raises(DataError, match=r"distill.unlabeled_root: .*absent is not a folder"):
        training.add_unlabeled_images(labelled, tmp_path / "absent")


def test_a_cache_serves_the_pixel_methods_and_the_teacher_the_feature_methods(
    tmp_path: Path, synth: Path, ensemble: Path
) -> None:
    specs = [{"name": "dudes"}, {"name": "cwd", "weight": 0.5, "options": FEATURES}]
    cfg = tiny_config(
        tmp_path,
        synth,
        ensemble,
        [
            "model.uncertainty_head=scalar",
            f"distill.methods={specs}",
            f"distill.teacher_cache={tmp_path / 'cache'}",
        ],
    )
    run_dir = training.train(cfg)
    assert [p.name for p in sorted((tmp_path / "cache").iterdir())] == [
        "cache.json",
        "pred_std.f16",
    ]
    row = next(row for row in read_metrics(run_dir) if row["train/loss"])
    assert float(row["train/dudes/uncertainty_rmsle"]) > 0 and float(row["train/cwd/cwd"]) > 0

    (tmp_path / "other").mkdir()
    only_features = tiny_config(
        tmp_path / "other",
        synth,
        ensemble,
        ["distill.methods=[{name: cwd}]", f"distill.teacher_cache={tmp_path / 'cache'}"],
    )
    with pytest.raises(
        ConfigError,
        match=r"none of the methods reads per-pixel teacher outputs a cache can hold \(kd, "
        r"holder, dudes, ja_kd, ukd do\)",
    ):
        training.train(only_features)
    # KD's logits are read by CWD (on the logits) too: they come from the online teacher.
    kd_and_cwd = replace_values(
        only_features, {"distill.methods": [{"name": "kd"}, {"name": "cwd"}]}, "test"
    )
    with pytest.raises(
        ConfigError, match=r"pixel-wise methods read \(logits\) is read by an online"
    ):
        training.train(kd_and_cwd)


def test_one_cache_with_more_signals_serves_students_with_other_methods(
    tmp_path: Path, synth: Path, ensemble: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`distill.cache_signals` stores what several students read: the KD student builds the
    cache with logits and mean_probs, the JA-KD student then uses it as it is (no teacher
    pass), and each one's samples carry only its own signals."""
    cache = tmp_path / "shared"
    common = [f"distill.teacher_cache={cache}", "distill.cache_signals=[logits, mean_probs]"]
    seen = {}
    for method, needs in (("kd", "logits"), ("ja_kd", "mean_probs")):
        (tmp_path / method).mkdir()
        cfg = tiny_config(
            tmp_path / method, synth, ensemble, [f"distill.methods=[{{name: {method}}}]", *common]
        )
        model = build_model(cfg.model, 19)
        methods, teacher = training.build_distillation(cfg, model)
        train_set = training.build_dataset(cfg.data, "train", train=True)
        cached, online = training.attach_teacher_cache(cfg, methods, teacher, train_set)
        assert online is None and cached.cache.signals == {needs}
        assert set(cached.load(0)["maps"]) == {needs, VALID_MAP}
        seen[method] = cached.cache.maps(0, cached.load(0)["image"].shape[:2])[needs]
        assert ("building it" in capsys.readouterr().out) == (method == "kd")  # built once
    assert sorted(p.name for p in cache.iterdir()) == ["cache.json", "logits.f16", "mean_probs.f16"]
    # log(mean_probs) are the ensemble's logits: both students read one pass of the teacher.
    np.testing.assert_allclose(np.exp(seen["kd"]), seen["ja_kd"], atol=2e-3)

    wrong = tiny_config(tmp_path, synth, ensemble, ["distill.methods=[{name: ukd}]", *common])
    model = build_model(wrong.model, 19)
    methods, teacher = training.build_distillation(wrong, model)
    with pytest.raises(
        ConfigError,
        match=r"cache_signals=\['logits', 'mean_probs'\] .* include \['mean_probs', 'variance'\]",
    ):
        training.attach_teacher_cache(
            wrong, methods, teacher, training.build_dataset(wrong.data, "train", train=True)
        )


def test_cached_batches_mask_crop_padding() -> None:
    maps = {VALID_MAP: torch.ones(2, 1, 4, 4)}
    maps[VALID_MAP][1, :, 2:] = 0
    mask = valid_mask(maps)
    assert mask.shape == (2, 4, 4) and mask.sum() == 24 and not mask[1, 2:].any()
    assert valid_mask({}) is None


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_the_training_step_keeps_crop_padding_out_of_the_cached_terms() -> None:
    """`training_step` hands a cached batch's `teacher_valid` to the pixel-wise methods: the
    loss is the CE over the labelled pixels plus KD (T = 2) over the pixels inside the image,
    void ones included (distill_void), whatever the cache holds on the padding."""
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, 3).eval()  # no dropout: the same logits below
    methods = build_methods([{"name": "kd"}], 3)
    task = training.SegmentationTask(
        model, SegConfig().optim, methods, None, total_steps=1, num_classes=3
    )
    task.log = lambda *args, **kwargs: None  # no Trainer here
    task._stop_unless_finite = lambda *args: None
    label = torch.randint(0, 3, (2, 32, 32))
    label[0, :4] = 255  # void inside the image: KD counts it, the CE does not
    label[1, :, 20:] = 255  # crop padding
    valid = torch.ones(2, 1, 32, 32)
    valid[1, :, :, 20:] = 0
    image = torch.randn(2, 3, 32, 32)
    teacher = torch.randn(2, 3, 32, 32) * 3
    with torch.no_grad():
        s = model(image).logits.double().numpy()
    inside = valid[:, 0].bool().numpy()
    log_q = _np_log_softmax(s)
    ce = -np.take_along_axis(log_q, label.clamp(max=2)[:, None].numpy(), 1)[:, 0]
    ce = ce[label.numpy() != 255].mean()
    for padding in (0.0, 50.0):  # a cache pads with 0; any value must give the same loss
        logits = teacher.masked_fill(valid == 0, padding)
        log_p2 = _np_log_softmax(logits.double().numpy() / 2)
        kl = (np.exp(log_p2) * (log_p2 - _np_log_softmax(s / 2))).sum(axis=1)
        batch = {"image": image, "label": label, "maps": {"logits": logits, VALID_MAP: valid}}
        loss = task.training_step(batch, 0)
        assert loss.item() == pytest.approx(ce + 4 * kl[inside].mean(), rel=1e-5)


def test_a_cache_built_with_another_mc_dropout_sample_count_is_rebuilt(
    tmp_path: Path, synth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The MC-dropout samples change the teacher's maps, not its weights: they are part of
    the cache key, so a cache of 2 samples is never read by a student of a 3-sample teacher."""
    path = tmp_path / "mc.safetensors"
    config = TINY_MODEL.__class__(**{**vars(TINY_MODEL), "mc_dropout": 0.5})
    save_weights(path, build_model(config, 19), config)
    cache = tmp_path / "cache"
    printed, stored = [], []
    for samples in (2, 2, 3):
        cfg = tiny_config(
            tmp_path,
            synth,
            path,
            [
                f"distill.teacher={{kind: mc_dropout, path: {path}, samples: {samples}}}",
                "distill.methods=[{name: ja_kd}]",
                f"distill.teacher_cache={cache}",
            ],
        )
        methods, teacher = training.build_distillation(cfg, build_model(cfg.model, 19))
        train_set = training.build_dataset(cfg.data, "train", train=True)
        training.attach_teacher_cache(cfg, methods, teacher, train_set)
        printed.append(capsys.readouterr().out)
        stored.append((cache / "mean_probs.f16").read_bytes())
    assert "building it" in printed[0] and "building" not in printed[1]
    assert "stale: the teacher (its kind or weights) differs; rebuilding it" in printed[2]
    assert stored[0] == stored[1] != stored[2]


def test_a_distilled_student_keeps_its_auxiliary_cross_entropy(
    tmp_path: Path, synth: Path, ensemble: Path
) -> None:
    """`model.aux_loss_weight` trains the aux heads on the labels in a distillation too."""
    cfg = tiny_config(
        tmp_path,
        synth,
        ensemble,
        ["model.aux_heads=true", "model.aux_loss_weight=0.4", "distill.methods=[{name: kd}]"],
    )
    model = build_model(cfg.model, 19)
    methods, teacher = training.build_distillation(cfg, model)
    dataset = training.build_dataset(cfg.data, "train", train=True)
    batch = default_collate([dataset[0], dataset[1]])
    output = model(batch["image"])
    terms = methods(output, teacher.signals(batch["image"], methods.needs), batch["label"])
    assert output.aux_logits
    for level, aux_logits in output.aux_logits.items():
        expected = 0.4 * torch.nn.functional.cross_entropy(
            aux_logits, batch["label"], ignore_index=255
        )
        torch.testing.assert_close(terms[f"task/aux_ce_{level}"], expected)


def test_the_teacher_is_not_a_submodule_of_the_task() -> None:
    """The task holds the teacher outside its modules: no teacher tensor in its state dict
    (every checkpoint), and `task.train()` (Lightning, each epoch) leaves it in eval mode."""
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)).eval()
    task = training.SegmentationTask(
        build_model(TINY_MODEL, 3),
        SegConfig().optim,
        build_methods([{"name": "kd"}], 3),
        teacher,
        total_steps=1,
        num_classes=3,
    )
    task.train()
    assert task.teacher is teacher and not teacher.training
    assert not any(module is teacher for module in task.modules())
    assert not any(key.startswith("teacher") for key in task.state_dict())


def test_segdistill_distill_with_a_cache_writes_checkpoints_and_resumes(
    tmp_path: Path, synth: Path, ensemble: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = [
        f"data.root={synth}",
        "data.crop_size=[32,64]",
        "data.batch_size=2",
        "data.num_workers=0",
        "model.encoder_options.width=0.125",
        f"distill.teacher.path={ensemble}",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
    ]
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    command = ["distill", str(CONFIGS / "distill_dudes.yaml"), "--run-dir", str(run_dir)]
    assert main([*command, "--teacher-cache", str(cache), "--set", *tiny]) == 0
    out = capsys.readouterr().out
    assert "building it" in out and f"run directory: {run_dir}" in out
    for name in ("best.safetensors", "last.safetensors", "last.ckpt"):
        assert (run_dir / "checkpoints" / name).is_file()
    assert load_config(run_dir / "config.yaml").distill.teacher_cache == str(cache)
    assert "train/dudes/uncertainty_rmsle" in read_metrics(run_dir)[0]

    resume = [*command, "--teacher-cache", str(cache), "--resume"]
    assert main([*resume, "--set", *tiny, "trainer.max_epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "rebuilding" not in out  # the cache was reused
    # The last line names the best validation over both sessions' logs.
    scores = [
        (float(row["val/miou"]), int(row["epoch"]) + 1)
        for version in (0, 1)
        for row in read_metrics(run_dir, version)
        if row.get("val/miou")
    ]
    best = max(scores, key=lambda score: score[0])
    epochs = f"{best[1]} epoch" + ("s" if best[1] != 1 else "")  # counted from 1
    assert f"best val mIoU {best[0]:.4f} after {epochs}," in out
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert read_metrics(run_dir, version=1)


def test_segdistill_distill_needs_a_distill_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(CONFIGS / "train_baseline.yaml")
    assert main(["distill", config, "--run-dir", str(tmp_path / "run")]) == 2
    assert "no distill section" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("distill_*.yaml")), ids=lambda p: p.stem)
def test_quick_distillation_configs_build_their_methods(path: Path) -> None:
    cfg = load_config(path)
    channels = {"encoder_out": 128}
    methods = build_methods([vars(spec) for spec in cfg.distill.methods], 19, channels, channels)
    assert methods.methods and cfg.distill.teacher.path


@pytest.mark.slow
def test_two_process_distillation_shares_one_cache_build_and_one_stage_one(
    tmp_path: Path, ensemble: Path
) -> None:
    synth = write_synthstreets(tmp_path / "synth", train=8, val=2)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(root=synth, teacher=ensemble))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "segdistill.cli", "distill", str(config)]
    command += ["--run-dir", str(run_dir), "--devices", "2", "--teacher-cache", "cache"]
    command += ["--set", "model.uncertainty_head=scalar"]
    command += ["distill.methods=[{name: dudes}, {name: adaptation}]"]
    # One thread per process: the two processes share the CI machine's two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("building it") == 1  # the other process waited and used it
    assert output.count("stage 1: translator trained") == 1  # logged by the first process
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2  # 8 images, 4 per process, batches of 2
    assert state["state_dict"]["methods.methods.adaptation.translator.trained"].item()


def test_a_teacher_of_another_class_count_is_refused_before_training(
    tmp_path: Path, synth: Path, ensemble: Path
) -> None:
    # The ensemble predicts the 19 Cityscapes classes; this student is for 5.
    cfg = tiny_config(tmp_path, synth, ensemble, ["distill.methods=[{name: kd}]"])
    cfg = replace_values(cfg, {"data.num_classes": 5}, "test")
    with pytest.raises(ConfigError, match="predicts 19 classes, but data.num_classes is 5"):
        training.build_distillation(cfg, build_model(cfg.model, 5))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # One network has no spread: DUDES would regress 0 everywhere, U-KD weigh nothing.
        (
            [
                "distill.teacher.kind=single",
                "distill.methods=[{name: dudes}, {name: kd}]",
                *STUDENTS["dudes"],
            ],
            r"kind='single' gives one forward pass, whose spread is 0 .*\(dudes reads pred_std\)",
        ),
        (
            [
                "distill.teacher.kind=single",
                "distill.methods=[{name: holder}]",
                *STUDENTS["holder"],
            ],
            r"holder reads std",
        ),
        # The head a method reads is checked before any training or teacher cache.
        (
            ["distill.methods=[{name: holder}]", "model.uncertainty_head=scalar"],
            r"method 'holder' needs a student with model.uncertainty_head: per_class",
        ),
        (["distill.methods=[{name: dudes}]"], r"method 'dudes' needs .*uncertainty_head: scalar"),
    ],
)
def test_a_teacher_or_student_the_methods_cannot_use_is_refused_before_training(
    tmp_path: Path, synth: Path, ensemble: Path, overrides: list[str], message: str
) -> None:
    cfg = tiny_config(tmp_path, synth, ensemble, overrides)
    if cfg.distill is not None and cfg.distill.teacher.kind == "single":
        member = str(ensemble / "member_00.safetensors")
        cfg = replace_values(cfg, {"distill.teacher.path": member}, "test")
    with pytest.raises(ConfigError, match=message):
        training.build_distillation(cfg, build_model(cfg.model, 19))
