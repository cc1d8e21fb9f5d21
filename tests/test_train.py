"""Training end to end on a tiny Cityscapes-layout data set and a tiny DeepLabV3+, on CPU.

Covers the run directory, resume after an interruption (bit-identical weights), a NaN
loss, the optimiser recipe, validation mIoU over the whole set, teacher signals,
distillation and deep-ensemble members.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from segdistill import train as training
from segdistill.checkpoints import build_model, load_segmenter, read_classes, weights_path
from segdistill.cli import main
from segdistill.commands import train as train_command
from segdistill.config import (
    ModelConfig,
    OptimConfig,
    SegConfig,
    dump_config,
    load_config,
    replace_values,
)
from segdistill.ensemble import MEMBER_FILE, check_finished_members, member_config
from segdistill.errors import CheckpointError, ConfigError, DataError, TrainingError
from segdistill.interrupts import CtrlC, stop_on_ctrl_c
from segdistill.methods import build_methods
from segdistill.metrics import SegmentationEvaluator
from segdistill.models.teachers import build_teacher, member_weights
from segdistill.output_paths import held_folder
from segdistill.outputs import TeacherSignals
from segdistill.predictor import load_predictor

TINY_CONFIG = """\
data: {{root: {root}, crop_size: [32, 32], batch_size: 2, num_workers: 0}}
model: {{encoder_options: {{width: 0.125}}}}
trainer: {{max_epochs: 2, accelerator: cpu, log_every_n_steps: 1}}
"""


def write_tiny_cityscapes(root: Path, train: int = 8, val: int = 4) -> Path:
    """A Cityscapes-layout tree of 32x48 images whose colour follows the label (3 classes),
    so a tiny network learns something in a few steps."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            base = f"tiny_000000_{i:06d}"
            image = root / "leftImg8bit" / split / "tiny" / f"{base}_leftImg8bit.png"
            label = root / "gtFine" / split / "tiny" / f"{base}_gtFine_labelTrainIds.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            ids = rng.integers(0, 3, (32, 48), dtype=np.uint8)
            ids[:4] = 255  # some void pixels
            rgb = np.minimum(ids, 3)[..., None] * 70 + rng.integers(0, 40, (32, 48, 3))
            Image.fromarray(rgb.astype(np.uint8)).save(image)
            Image.fromarray(ids).save(label)
    return root


def tiny_config(directory: Path, data_root: Path, overrides: list[str] = ()) -> SegConfig:
    """The tiny config (2 epochs of 4 steps) with `run.dir` = directory / "run"."""
    path = directory / "tiny.yaml"
    path.write_text(TINY_CONFIG.format(root=data_root))
    return load_config(path, [f"run.dir={directory / 'run'}", *overrides])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cityscapes(tmp_path_factory.mktemp("tiny_cityscapes"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """One uninterrupted tiny run, shared by the tests that only read it."""
    torch.manual_seed(123)  # the run must not depend on the global RNG state before it
    return training.train(tiny_config(tmp_path_factory.mktemp("trained"), data_root))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "csv" / "version_0" / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_run_directory_holds_config_checkpoints_and_logs(trained_run: Path) -> None:
    assert load_config(trained_run / "config.yaml").run.dir == str(trained_run)
    for name in ("best.safetensors", "last.safetensors", "last.ckpt"):
        assert (trained_run / "checkpoints" / name).is_file()
    assert list((trained_run / "logs" / "tensorboard" / "version_0").glob("events.out.*"))
    rows = read_metrics(trained_run)
    assert {"train/loss", "train/task/ce", "val/miou", "lr-SGD/pg1", "lr-SGD/pg2"} <= set(rows[0])
    mious = [float(row["val/miou"]) for row in rows if row["val/miou"]]
    assert len(mious) == 2 and all(0.0 <= m <= 1.0 for m in mious)
    model, model_config = load_segmenter(trained_run)
    assert model.num_classes == 19 and model_config.encoder_options["width"] == 0.125
    state = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 8


def fail_at_training_step(monkeypatch: pytest.MonkeyPatch, step: int, poison) -> None:
    """Make the `step`-th (0-based) training forward pass call `poison(output)`, or
    `poison(output, model)` when it takes two arguments."""
    real_build_model = training.build_model

    def build_model_with_hook(model_config, num_classes):
        model = real_build_model(model_config, num_classes)
        calls = []

        def hook(module, inputs, output):
            if module.training:
                calls.append(None)
                if len(calls) == step + 1:
                    takes_model = poison.__code__.co_argcount == 2
                    return poison(output, module) if takes_model else poison(output)
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(training, "build_model", build_model_with_hook)


class SimulatedCrash(Exception):
    pass


def test_resume_after_interruption_ends_with_identical_weights(
    tmp_path: Path, data_root: Path, trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tmp_path, data_root)

    def crash(output):
        raise SimulatedCrash

    # Step 6 is in the middle of the second epoch; the first one's checkpoint exists.
    fail_at_training_step(monkeypatch, 6, crash)
    with pytest.raises(SimulatedCrash):
        training.train(cfg)
    monkeypatch.undo()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 4

    torch.manual_seed(999)  # a resumed run must not depend on the global RNG state either
    training.train(cfg, resume=True)
    resumed = load_file(tmp_path / "run" / "checkpoints" / "last.safetensors")
    uninterrupted = load_file(trained_run / "checkpoints" / "last.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key


def test_checkpoint_every_n_steps_allows_resuming_mid_epoch(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tmp_path, data_root, ["trainer.checkpoint_every_n_steps=3"])

    def crash(output):
        raise SimulatedCrash

    fail_at_training_step(monkeypatch, 3, crash)  # the last step of the first epoch
    with pytest.raises(SimulatedCrash):
        training.train(cfg)
    monkeypatch.undo()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3
    training.train(cfg, resume=True)
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 8


def test_accumulated_batches_make_one_step_and_the_schedule_counts_steps(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 batches per epoch, one step per 3: steps after batches 3 and 4 (the epoch's last).
    cfg = tiny_config(
        tmp_path,
        data_root,
        ["trainer.accumulate_grad_batches=3", "trainer.checkpoint_every_n_steps=1"],
    )
    saved_at = []
    real_save = training.RunCheckpoints._save_resumable

    def record(self, trainer):
        saved_at.append(trainer.global_step)
        real_save(self, trainer)

    monkeypatch.setattr(training.RunCheckpoints, "_save_resumable", record)
    run = training.train(cfg)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4
    # The poly schedule spans the 4 optimiser steps, not the 8 batches: it ends at lr 0.
    schedule = state["lr_schedulers"][0]
    assert schedule["last_epoch"] == 4 and schedule["_last_lr"] == [0.0, 0.0]
    # One mid-epoch checkpoint per optimiser step (none between accumulated batches), and
    # at each epoch's end the epoch's own only: one written at its last batch, before its
    # validation, would resume without that validation and with the wrong epoch's seed.
    assert saved_at == [1, 2, 3, 4]


def test_a_run_killed_in_validation_resumes_with_that_validation_and_the_epochs_seeds(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step checkpoint written at an epoch's last batch (step 4 of 4, every 2 steps),
    then a kill in that epoch's validation: the resume skipped the validation and trained
    epoch 1 with epoch 0's seed. Now the last step checkpoint is step 2's."""
    cfg = tiny_config(tmp_path, data_root, ["trainer.checkpoint_every_n_steps=2"])
    real_validation_step = training.SegmentationTask.validation_step

    def killed(self, *args):
        if self.trainer.sanity_checking:
            return real_validation_step(self, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.SegmentationTask, "validation_step", killed)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg)
    checkpoint = Path(cfg.run.dir) / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2
    monkeypatch.setattr(training.SegmentationTask, "validation_step", real_validation_step)
    seeds: list[int] = []
    real_seed_all = training.seed_all
    monkeypatch.setattr(
        training, "seed_all", lambda seed: (seeds.append(seed), real_seed_all(seed))
    )
    run = training.train(cfg, resume=True)
    epoch_seeds = [int(np.random.SeedSequence([cfg.seed, e]).generate_state(1)[0]) for e in (0, 1)]
    assert seeds[-2:] == epoch_seeds
    validated = set()
    for log in (run / "logs" / "csv").glob("version_*/metrics.csv"):
        validated |= {row["epoch"] for row in csv.DictReader(log.open()) if row.get("val/miou")}
    assert validated == {"0", "1"}


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nan_logits(output):
        output.logits = output.logits * float("nan")
        return output

    fail_at_training_step(monkeypatch, 5, nan_logits)
    with pytest.raises(TrainingError, match=r"not finite .* global step 5, epoch 1, batch 1"):
        training.train(tiny_config(tmp_path, data_root))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4
    weights = load_file(checkpoints / "last.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_an_error_ends_the_progress_bars_lines_before_it_is_printed(tmp_path: Path) -> None:
    """Lightning leaves its bars open on an error: 'error: ...' went on the bar's line and
    the bar was drawn again after it (stdout and stderr to one file, or a terminal)."""
    closed: list[str] = []

    class Bar:
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    class Bars:
        train_progress_bar = Bar("train")

        @property
        def val_progress_bar(self) -> Bar:
            raise TypeError("not set yet")  # as Lightning's before the first validation

    trainer = types.SimpleNamespace(progress_bar_callback=Bars())
    training.EndProgressBarsOnError().on_exception(trainer, None, RuntimeError("x"))
    assert closed == ["train"]
    training.EndProgressBarsOnError().on_exception(
        types.SimpleNamespace(progress_bar_callback=None), None, RuntimeError("x")
    )  # no progress bar at all
    trainer = training.build_trainer(SegConfig(), tmp_path)
    assert any(isinstance(c, training.EndProgressBarsOnError) for c in trainer.callbacks)


def test_lightnings_notes_about_its_own_code_are_not_shown(tmp_path: Path, data_root: Path) -> None:
    """Every training printed two warnings about Lightning's internals that no setting
    changes (on_after_batch_transfer is overridden by design; a deprecated torch name)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training.train(tiny_config(tmp_path, data_root))
    shown = [str(w.message) for w in caught]
    assert not [m for m in shown if "on_after_batch_transfer" in m or "LeafSpec" in m], shown


def test_a_start_stopped_before_its_first_checkpoint_is_set_aside_by_the_next(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A run stopped in its first epoch leaves its config, logs and maybe weights but no
    last.ckpt. Trained again, the summary reported the abandoned start's best mIoU; its
    files now move aside, also when the restart fixes the config (here the lr)."""

    def nan_logits(output):
        output.logits = output.logits * float("nan")
        return output

    with monkeypatch.context() as patch:
        fail_at_training_step(patch, 2, nan_logits)
        with pytest.raises(TrainingError):
            training.train(tiny_config(tmp_path, data_root))
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.ckpt").exists()
    # As a start that validated once before it stopped would leave them:
    abandoned = run / "logs" / "csv" / "version_0"
    abandoned.mkdir(parents=True, exist_ok=True)
    (abandoned / "metrics.csv").write_text("epoch,step,val/miou\n0,3,0.99\n")
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "best.safetensors").write_bytes(b"an abandoned start's weights")
    capsys.readouterr()
    training.train(tiny_config(tmp_path, data_root, ["optim.lr=0.02"]))
    out = capsys.readouterr().out
    assert "starting it again from nothing with another config (optim.lr: 0.01 -> 0.02)" in out
    (kept,) = (run / "earlier_starts").iterdir()
    assert str(kept) in out
    assert (kept / "best.safetensors").read_bytes() == b"an abandoned start's weights"
    assert (kept / "logs" / "csv" / "version_0" / "metrics.csv").is_file()
    assert load_config(kept / "config.yaml").optim.lr == 0.01
    best = training.best_validation(run)
    assert best is not None and best[0] != 0.99
    assert [p.name for p in (run / "logs" / "csv").iterdir()] == ["version_0"]
    load_segmenter(run / "checkpoints" / "best.safetensors")  # this run's weights


@pytest.mark.parametrize("validates", [True, False])
def test_weights_that_diverge_with_finite_losses_stop_training_before_a_checkpoint(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch, validates: bool
) -> None:
    """A batch-norm statistic overflows: every training loss stays finite (training uses
    the batch's statistics) but evaluation would give NaN. The run stops before it
    validates or writes those weights, whether or not the epoch ends with a validation."""

    def overflow_a_statistic(output, model):
        batch_norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        # A new tensor: the forward pass's autograd graph holds the old one.
        batch_norm.running_var = torch.full_like(batch_norm.running_var, float("inf"))
        return output

    fail_at_training_step(monkeypatch, 5, overflow_a_statistic)
    cfg = tiny_config(
        tmp_path, data_root, [] if validates else ["trainer.check_val_every_n_epoch=5"]
    )
    with pytest.raises(TrainingError, match=r"weights are not finite \(encoder\..*running_var"):
        training.train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4
    weights = load_file(checkpoints / "last.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    # Weights that diverged anyway (written by hand here) are refused when loaded.
    weights["seg_head.weight"][0, 0] = float("nan")
    with safe_open(str(checkpoints / "last.safetensors"), framework="pt") as saved:
        save_file(weights, str(tmp_path / "nan.safetensors"), saved.metadata())
    with pytest.raises(
        CheckpointError, match="holds NaN or infinite weights \\(seg_head.weight\\)"
    ):
        load_segmenter(tmp_path / "nan.safetensors")


def test_a_mid_epoch_checkpoint_is_not_written_after_the_weights_diverged(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trainer.checkpoint_every_n_steps writes last.ckpt between validations: weights that
    diverged with finite losses stop the run there too, and the last good one stays."""

    def overflow_a_statistic(output, model):
        batch_norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        batch_norm.running_var = torch.full_like(batch_norm.running_var, float("inf"))
        return output

    fail_at_training_step(monkeypatch, 1, overflow_a_statistic)  # the second step
    overrides = ["trainer.checkpoint_every_n_steps=1", "trainer.max_epochs=1"]
    with pytest.raises(TrainingError, match=r"weights are not finite .* at global step 2, epoch 0"):
        training.train(tiny_config(tmp_path, data_root, overrides))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 1
    weights = [w for w in state["state_dict"].values() if w.is_floating_point()]
    assert weights and all(torch.isfinite(w).all() for w in weights)


def test_ctrl_c_ends_in_an_interrupt_that_resume_continues(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lightning shuts down on Ctrl-C and calls exit(1); the caller gets the interrupt.
    def ctrl_c(output):
        raise KeyboardInterrupt

    fail_at_training_step(monkeypatch, 5, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_config(tmp_path, data_root))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again
    monkeypatch.undo()
    leftover = tmp_path / "run" / "checkpoints" / ".last.ckpt.1.0a1b2c3d.tmp"  # a killed write
    leftover.write_bytes(b"half")
    training.train(tiny_config(tmp_path, data_root), resume=True)
    assert not leftover.exists()
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8  # 2 epochs of 4 steps


def ctrl_c_when(
    ready: Callable[[], bool], command: list[str], env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run `command` as a terminal's job (its own process group), press Ctrl-C there (the
    whole group gets SIGINT) once `ready()`, and return its exit code and output."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
        # Ctrl-C handled, as in a terminal, whatever started the tests (a background
        # job's children inherit it ignored, and Python then installs no handler).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ready() and process.poll() is None:
        assert time.monotonic() < deadline, f"not ready after 120 s: {command}"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    return process.returncode, output


def test_a_terminals_ctrl_c_with_loader_workers_stops_cleanly_and_resumes(
    tmp_path: Path, data_root: Path
) -> None:
    """A terminal's Ctrl-C reaches every process of its group, the DataLoader workers too.
    Sent as the first epoch ends (validation and the next epoch's loaders start: a worker
    killed by it then broke the run with "DataLoader worker exited unexpectedly" and a
    traceback), the run stops through Lightning's shutdown: exit 130, one line, and
    --resume continues it."""
    config = tiny_config(tmp_path, data_root)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "segdistill.cli", "train", str(tmp_path / "tiny.yaml")]
    command += ["--run-dir", str(run), "--set", "data.num_workers=2", "trainer.max_epochs=10"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    returncode, output = ctrl_c_when((run / "checkpoints" / "last.ckpt").exists, command, env)
    assert returncode == 130, output[-3000:]
    assert "interrupted: run the same command again" in output
    assert "Traceback" not in output and "exited unexpectedly" not in output
    stopped_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 4 <= stopped_at < 40
    resumed = replace_values(config, {"data.num_workers": 2, "trainer.max_epochs": 10}, "t")
    training.train(resumed, resume=True)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 40


def test_the_first_ctrl_c_stops_at_the_next_batch_a_second_at_once() -> None:
    ctrl_c = CtrlC()
    stop = training.StopOnCtrlC(ctrl_c)
    with pytest.raises(KeyboardInterrupt), ctrl_c.watching():  # still pressed on leaving
        handler = signal.getsignal(signal.SIGINT)
        assert callable(handler)
        stop.on_train_batch_start()  # nothing pressed: training goes on
        handler(signal.SIGINT, None)  # recorded, not raised where it landed
        assert ctrl_c.pressed
        with pytest.raises(KeyboardInterrupt):
            stop.on_train_batch_start()
        with pytest.raises(KeyboardInterrupt):
            stop.on_validation_batch_start()
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_in_a_finaliser_gets_a_notice_and_stops_at_the_next_check(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A DataLoader's `__del__` or a fork hook (each epoch with workers) cannot raise: Python
    printed "Exception ignored in ..." with a traceback, and the press seemed lost."""
    hook = sys.unraisablehook
    ctrl_c = CtrlC()
    with pytest.raises(KeyboardInterrupt), ctrl_c.watching():
        handler = signal.getsignal(signal.SIGINT)
        assert callable(handler)
        handler(signal.SIGINT, None)  # the first press, recorded

        class Finalised:
            def __del__(self) -> None:
                handler(signal.SIGINT, None)  # the second press lands in a finaliser

        Finalised()  # dropped at once: its __del__ runs here
        gc.collect()
        assert ctrl_c.pressed
    err = capfd.readouterr().err
    assert "landed while Python was cleaning up" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert sys.unraisablehook is hook


def test_other_errors_in_finalisers_are_still_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: reported.append(report.exc_type))

    class Broken:
        def __del__(self) -> None:
            raise ValueError("a real bug")

    with CtrlC().watching():
        Broken()
        gc.collect()
    assert reported == [ValueError]


def test_a_watched_loop_gives_out_no_item_after_ctrl_c() -> None:
    """Evaluate's batches and predict's images: the item being worked on is finished,
    the next is not started."""
    given = []
    with pytest.raises(KeyboardInterrupt):
        for item in stop_on_ctrl_c(range(5)):
            given.append(item)
            if item == 1:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]
    assert given == [0, 1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_during_the_last_item_still_stops_the_work_after_it() -> None:
    """No check follows the last batch of a loop or of a training run: the press was
    reported ("stopping before the next batch or image") and then lost, and the work
    after it ran on."""
    given = []
    with pytest.raises(KeyboardInterrupt):
        for item in stop_on_ctrl_c(range(3)):
            given.append(item)
            if item == 2:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]
    assert given == [0, 1, 2]
    run = CtrlC()
    with pytest.raises(KeyboardInterrupt), run.watching():
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with CtrlC().watching():
        pass  # nothing pressed: nothing raised


def test_a_loop_inside_a_watched_run_stops_on_the_runs_ctrl_c() -> None:
    """He et al.'s stage 1 runs inside the training run's watch: a Ctrl-C pressed during
    it, or before it began, stops it before the next batch instead of after its epoch."""

    class FeatureTeacher:
        def signals(self, images: torch.Tensor, wanted: set[str]) -> TeacherSignals:
            return TeacherSignals(features={"tap": images})

    batches = [{"image": torch.full((1, 1, 2, 2), float(i))} for i in range(4)]
    features = training.TeacherFeatures(FeatureTeacher(), batches, "tap", torch.device("cpu"))
    run = CtrlC()
    with pytest.raises(KeyboardInterrupt), run.watching():  # and on leaving
        seen = []
        with pytest.raises(KeyboardInterrupt):
            for tapped in features:
                seen.append(int(tapped.max()))
                if len(seen) == 2:
                    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]
        assert seen == [0, 1] and run.pressed  # the run's own Ctrl-C recorded it
        with pytest.raises(KeyboardInterrupt):
            next(iter(features))  # pressed before the loop: not one batch
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04 truncated", "RuntimeError"),
        (b"", "EOFError"),
        (b"hello world text", "KeyError"),
        (None, "UnpicklingError"),  # objects weights_only refuses
    ],
)
def test_an_unreadable_or_unsafe_resume_checkpoint_is_named(
    trained_run: Path, tmp_path: Path, content: bytes | None, message: str
) -> None:
    run = shutil.copytree(trained_run, tmp_path / "run")
    checkpoint = run / "checkpoints" / "last.ckpt"
    if content is None:  # a pickle that would run code when loaded without weights_only
        torch.save({"state_dict": {}, "payload": Path("/tmp")}, checkpoint)
    else:
        checkpoint.write_bytes(content)
    cfg = replace_values(load_config(run / "config.yaml"), {"run.dir": str(run)}, "test")
    with pytest.raises(
        CheckpointError, match=f"last.ckpt: cannot be read as a training checkpoint \\({message}"
    ):
        training.train(replace_values(cfg, {"trainer.max_epochs": 3}, "test"), resume=True)


def write_tiny_folder(root: Path) -> Path:
    """The folder format: {split}/images, {split}/masks by stem, classes.yaml (3 classes)."""
    rng = np.random.default_rng(1)
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            ids = rng.integers(0, 3, (32, 48), dtype=np.uint8)
            rgb = ids[..., None] * 70 + rng.integers(0, 40, (32, 48, 3))
            for folder, array in (("images", rgb.astype(np.uint8)), ("masks", ids)):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / split / folder / f"frame{i}.png")
    colors = ([0, 0, 0], [255, 0, 0], [0, 255, 0])
    classes = [{"name": f"class{k}", "color": color} for k, color in enumerate(colors)]
    (root / "classes.yaml").write_text(json.dumps({"classes": classes}))
    return root


def test_training_on_a_folder_data_set(tmp_path: Path) -> None:
    root = write_tiny_folder(tmp_path / "folder")
    folder = ["data.format=folder", "data.num_classes=3", "trainer.max_epochs=1"]
    run_dir = training.train(tiny_config(tmp_path, root, folder))
    model, _ = load_segmenter(run_dir)
    assert model.num_classes == 3
    assert [row["val/miou"] for row in read_metrics(run_dir) if row["val/miou"]]
    # The weights carry the data set's classes, for predict and export.
    classes = read_classes(run_dir / "checkpoints" / "last.safetensors")
    assert classes is not None and classes.names == ("class0", "class1", "class2")
    assert classes.colors.tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    # The config's classes must be the data set's.
    (tmp_path / "other").mkdir()
    with pytest.raises(
        ConfigError,
        match=r"data.num_classes=19 but the data set in .* has 3: set .*--set data.num_classes=3",
    ):
        training.train(tiny_config(tmp_path / "other", root, ["data.format=folder"]))


def test_a_folder_data_set_read_as_cityscapes_names_the_format_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user who sets data.root and num_classes but forgets data.format=folder (the default
    # is cityscapes) must be told what to change: the root holds classes.yaml and
    # {split}/images, which `data info` and `evaluate` already recognise as a folder set.
    root = write_tiny_folder(tmp_path / "folder")
    monkeypatch.setattr(training, "build_trainer", None)  # never reached
    with pytest.raises(DataError, match=r"data\.format.*folder"):
        training.train(tiny_config(tmp_path, root, ["data.num_classes=3"]))


def test_a_folder_data_set_with_other_split_names_names_them_and_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Splits called training/validation: the error said only "image folder .../train/images
    # does not exist", where the Cityscapes layout lists the split folders it has.
    root = write_tiny_folder(tmp_path / "folder")
    for old, new in (("train", "training"), ("val", "validation")):
        (root / old).rename(root / new)
    monkeypatch.setattr(training, "build_trainer", None)  # never reached
    folder = ["data.format=folder", "data.num_classes=3"]
    with pytest.raises(DataError, match=r"training, validation.*data\.train_split"):
        training.train(tiny_config(tmp_path, root, folder))


@pytest.mark.parametrize("fault", ["junk image", "mask of another size", "RGB mask"])
def test_a_bad_validation_file_stops_the_run_before_it_trains(
    tmp_path: Path, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_tiny_cityscapes(tmp_path / "data", train=4, val=2)
    image = next((root / "leftImg8bit" / "val").rglob("*.png"))
    mask = next((root / "gtFine" / "val").rglob("*.png"))
    if fault == "junk image":
        image.write_bytes(b"junk")
    elif fault == "mask of another size":
        Image.fromarray(np.zeros((16, 48), np.uint8)).save(mask)
    else:
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(mask)
    monkeypatch.setattr(training, "build_trainer", None)  # never reached
    with pytest.raises(DataError, match=(image if fault == "junk image" else mask).name):
        training.train(tiny_config(tmp_path, root))


def test_too_few_training_images_for_one_batch_is_an_error(tmp_path: Path) -> None:
    root = write_tiny_cityscapes(tmp_path / "data", train=1, val=1)
    with pytest.raises(ConfigError, match=r"split 'train' has 1 images: not one full batch"):
        training.train(tiny_config(tmp_path, root))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_accelerator_without_cuda_is_refused_before_the_run_starts(
    tmp_path: Path, data_root: Path
) -> None:
    cfg = tiny_config(tmp_path, data_root, ["trainer.accelerator=gpu"])
    with pytest.raises(ConfigError, match="trainer.accelerator='gpu': CUDA is not available"):
        training.train(cfg)
    assert not (tmp_path / "run").exists()
    # The folders made for a deeper run directory go too (runs/a/ stayed, empty).
    (tmp_path / "runs" / "kept.txt").parent.mkdir()
    (tmp_path / "runs" / "kept.txt").write_text("x")
    deeper = replace_values(cfg, {"run.dir": str(tmp_path / "runs" / "a" / "b")}, "t")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        training.train(deeper)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["kept.txt"]


def test_a_second_run_into_a_run_directory_in_use_is_refused(
    tmp_path: Path, data_root: Path
) -> None:
    """Two runs into one run directory wrote the same checkpoints, and one's start deleted
    the other's unfinished writes."""
    cfg = tiny_config(tmp_path, data_root)
    with held_folder(tmp_path / "run"):
        with pytest.raises(ConfigError, match=r"run is in use by another run \(pid \d+ on "):
            training.train(cfg)
    training.train(cfg)  # free again
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_settings_lightning_refuses_are_a_config_error(tmp_path: Path) -> None:
    cfg = replace_values(SegConfig(), {"trainer.accelerator": "mps"}, "test")
    with pytest.raises(ConfigError, match="Lightning refuses trainer.accelerator='mps'"):
        training.build_trainer(cfg, tmp_path)


def test_a_run_directory_is_not_overwritten_and_resume_needs_a_checkpoint(
    tmp_path: Path, data_root: Path, trained_run: Path
) -> None:
    with pytest.raises(ConfigError, match="pass --resume"):
        training.train(load_config(trained_run / "config.yaml"))
    with pytest.raises(CheckpointError, match="cannot resume: .* without --resume, which starts"):
        training.train(tiny_config(tmp_path, data_root), resume=True)
    with pytest.raises(ConfigError, match="run.dir is not set"):
        training.train(SegConfig())
    (tmp_path / "a_file").write_text("x")
    in_the_way = replace_values(
        tiny_config(tmp_path, data_root), {"run.dir": str(tmp_path / "a_file")}, "t"
    )
    with pytest.raises(ConfigError, match="run.dir .*a_file is a file; give a folder"):
        training.train(in_the_way)


SLURM_JOB = {  # what srun sets for one task (Lightning's SLURMEnvironment reads them)
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_ID": "42",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


def test_a_requeued_slurm_job_continues_its_run_without_resume(
    trained_run: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A requeued SLURM job runs its batch script again as submitted, without --resume:
    the run directory was refused ("pass --resume") and the job ended."""
    run = shutil.copytree(trained_run, tmp_path / "run")
    config = tmp_path / "tiny.yaml"
    config.write_text((run / "config.yaml").read_text())
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["train", str(config), "--run-dir", str(run), "--set", "trainer.max_epochs=3"]
    )
    for name, value in SLURM_JOB.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the first start: nothing is resumed
    with pytest.raises(ConfigError, match="pass --resume"):
        args.func(args)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    capsys.readouterr()
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"SLURM requeued this job: continuing the run from {run / 'checkpoints'}" in out
    before = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (before["epoch"], after["epoch"]) == (1, 2)  # one more epoch, resumed


def test_distill_resumes_a_requeued_job_as_train_does(
    tmp_path: Path, data_root: Path, monkeypatch
) -> None:
    """`segdistill distill` ends in the same `train_and_report` as `segdistill train`."""
    from segdistill.commands import distill as distill_command

    asked: list[bool] = []
    monkeypatch.setattr(training, "train", lambda cfg, resume: asked.append(resume) or tmp_path)
    monkeypatch.setattr(training, "best_validation", lambda run_dir: None)
    cfg = tiny_config(tmp_path, data_root)
    (cfg.run.path() / "checkpoints").mkdir(parents=True)
    (cfg.run.path() / "checkpoints" / "last.ckpt").write_bytes(b"state")
    args = argparse.Namespace(
        config=str(tmp_path / "tiny.yaml"),
        overrides=["distill={teacher: {kind: single, path: t.safetensors}, methods: [{name: kd}]}"],
        devices=None,
        num_nodes=None,
        run_dir=str(cfg.run.path()),
        teacher_cache=None,
        resume=False,
    )
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert distill_command.run_distill(args) == 0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert distill_command.run_distill(args) == 0
    assert asked == [True, False]


def test_on_slurm_lightnings_own_requeue_is_off(tmp_path: Path, monkeypatch) -> None:
    """Lightning's SIGUSR1 requeue saves an hpc_ckpt_N.ckpt that no resume reads: a full
    checkpoint more per requeue, and its progress lost; the job resumes from last.ckpt."""
    for name, value in SLURM_JOB.items():
        monkeypatch.setenv(name, value)
    cfg = replace_values(SegConfig(), {"trainer.accelerator": "cpu"}, "test")
    environment = training.build_trainer(cfg, tmp_path)._accelerator_connector.cluster_environment
    assert type(environment).__name__ == "SLURMEnvironment"
    assert environment.auto_requeue is False


def test_resume_refuses_a_config_that_changes_what_the_run_computes(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = shutil.copytree(trained_run, tmp_path / "run")
    saved = replace_values(load_config(run / "config.yaml"), {"run.dir": str(run)}, "test")
    state = (run / "checkpoints" / "last.ckpt").read_bytes()
    for changes, listed in (
        ({"data.batch_size": 4}, "data.batch_size: 2 -> 4"),
        (
            {"trainer.accumulate_grad_batches": 2, "optim.lr": 0.1},
            "optim.lr: 0.01 -> 0.1; trainer.accumulate_grad_batches: 1 -> 2",
        ),
        # More processes: a larger batch per step, fewer steps, another schedule.
        ({"trainer.devices": 2}, "trainer.devices: 1 -> 2"),
        ({"data.num_workers": 1}, "data.num_workers: 0 -> 1"),  # other augmentations
        ({"trainer.max_epochs": 1}, "trainer.max_epochs: 2 -> 1"),  # only longer
        # Fewer batches an epoch: fewer steps, another poly schedule.
        ({"trainer.limit_train_batches": 2}, "trainer.limit_train_batches: None -> 2"),
        # Another data order, another precision or clipping of the steps, and a network
        # whose weights load all the same (dropout has none) would go on unnoticed.
        ({"seed": 1}, "seed: 0 -> 1"),
        ({"trainer.precision": "bf16-mixed"}, "trainer.precision: '32-true' -> 'bf16-mixed'"),
        ({"trainer.gradient_clip_val": 1.0}, "trainer.gradient_clip_val: None -> 1.0"),
        ({"model.mc_dropout": 0.1}, "model.mc_dropout: 0.0 -> 0.1"),
    ):
        with pytest.raises(ConfigError, match="cannot resume") as error:
            training.train(replace_values(saved, changes, "test"), resume=True)
        assert listed in str(error.value) and "config.yaml" in str(error.value)
    # Without its config.yaml nothing says the checkpoint is this config's network.
    (run / "config.yaml").rename(run / "config.yaml.bak")
    with pytest.raises(CheckpointError, match="config.yaml is missing, so the checkpoint cannot"):
        training.train(replace_values(saved, {"model.encoder_options.width": 0.25}, "t"), True)
    (run / "config.yaml.bak").rename(run / "config.yaml")
    # Where it runs may change: the finished run resumes (and has nothing left to do).
    allowed = {"trainer.log_every_n_steps": 5, "trainer.checkpoint_every_n_steps": 3}
    assert training.train(replace_values(saved, allowed, "test"), resume=True) == run
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == state
    # More epochs continue the run, with a notice that the schedule is stretched.
    capsys.readouterr()
    training.train(replace_values(saved, {"trainer.max_epochs": 3}, "test"), resume=True)
    assert "trainer.max_epochs 2 -> 3: the poly learning-rate schedule" in capsys.readouterr().out
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    # Its first step (8 of 12) already runs at the new schedule's rate, not the old one's 0.
    latest = max((run / "logs" / "csv").glob("version_*"), key=lambda p: int(p.name[8:]))
    with open(latest / "metrics.csv") as file:
        rates = {
            row["step"]: (row["lr-SGD/pg1"], row["lr-SGD/pg2"])
            for row in csv.DictReader(file)
            if row["lr-SGD/pg1"]
        }
    encoder, rest = (float(rate) for rate in rates["8"])
    assert encoder == pytest.approx(0.01 * (1 - 8 / 12) ** 0.9)
    assert rest == pytest.approx(0.1 * (1 - 8 / 12) ** 0.9)  # the decoder's group too


def test_decoder_gets_ten_times_the_encoder_lr_with_poly_decay() -> None:
    model = build_model(SegConfig().model, 3)
    methods = build_methods(
        [{"name": "self_attention"}],
        3,
        student_channels={"encoder_out": 512},
        teacher_channels={"encoder_out": 256},  # differs: the method adds an adapter
    )
    task = training.SegmentationTask(model, OptimConfig(), methods, total_steps=100, num_classes=3)
    config = task.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    encoder, rest = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.SGD)
    assert (encoder["lr"], rest["lr"]) == (pytest.approx(0.01), pytest.approx(0.1))
    assert (encoder["momentum"], encoder["weight_decay"]) == (0.9, 0.0005)
    assert len(encoder["params"]) == len(list(model.encoder.parameters()))
    # Everything else, the method's trainable parts included, is in the decoder group.
    assert len(encoder["params"]) + len(rest["params"]) == len(list(task.parameters()))
    assert any(p is q for q in methods.parameters() for p in rest["params"])
    for _ in range(50):
        optimizer.step()
        schedule.step()
    assert encoder["lr"] == pytest.approx(0.01 * 0.5**0.9)
    assert rest["lr"] == pytest.approx(0.1 * 0.5**0.9)
    # The config's momentum and weight decay, not DUDES' values, in both groups.
    sgd = training.SegmentationTask(
        model, OptimConfig(momentum=0.5, weight_decay=0.002), total_steps=10, num_classes=3
    ).configure_optimizers()["optimizer"]
    assert [(g["momentum"], g["weight_decay"]) for g in sgd.param_groups] == [(0.5, 0.002)] * 2
    adamw_cfg = OptimConfig(name="adamw", lr=1e-4, weight_decay=0.03, decoder_lr_mult=5)
    adamw = training.SegmentationTask(
        model, adamw_cfg, total_steps=10, num_classes=3
    ).configure_optimizers()["optimizer"]
    assert isinstance(adamw, torch.optim.AdamW)
    # The config's weight decay, not AdamW's default (0.01), in both groups.
    assert [group["weight_decay"] for group in adamw.param_groups] == [0.03, 0.03]
    assert [group["lr"] for group in adamw.param_groups] == [
        pytest.approx(1e-4),
        pytest.approx(5e-4),
    ]


def test_gradient_clipping_reaches_the_trainer(tmp_path: Path) -> None:
    plain = training.build_trainer(SegConfig(), tmp_path / "plain")
    assert plain.gradient_clip_val is None
    cfg = replace_values(SegConfig(), {"trainer.gradient_clip_val": 0.5}, "test")
    trainer = training.build_trainer(cfg, tmp_path / "clipped")
    assert trainer.gradient_clip_val == 0.5
    assert trainer.gradient_clip_algorithm == "norm"  # a str enum


def test_each_run_sets_its_float32_matmul_precision(tmp_path: Path, data_root: Path) -> None:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # left over from an earlier run
    try:
        for setting in ("high", "highest"):
            (tmp_path / setting).mkdir()
            overrides = [f"trainer.matmul_precision={setting}", "trainer.max_epochs=1"]
            training.train(tiny_config(tmp_path / setting, data_root, overrides))
            assert torch.get_float32_matmul_precision() == setting
    finally:
        torch.set_float32_matmul_precision(before)


def test_channels_last_trains_the_network_and_its_images_in_that_format(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bool, bool]] = []
    plain_step = training.SegmentationTask.training_step

    def recording_step(task, batch, batch_idx):  # noqa: ANN001, ANN202
        convs = [p for p in task.model.parameters() if p.dim() == 4]
        in_format = all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        image = batch["image"].is_contiguous(memory_format=torch.channels_last)
        seen.append((in_format, image))
        return plain_step(task, batch, batch_idx)

    monkeypatch.setattr(training.SegmentationTask, "training_step", recording_step)
    for flag in (True, False):
        (tmp_path / str(flag)).mkdir()
        overrides = [f"trainer.channels_last={flag}", "trainer.max_epochs=1"]
        run = training.train(tiny_config(tmp_path / str(flag), data_root, overrides))
        weights = load_file(run / "checkpoints" / "last.safetensors")
        assert all(w.is_contiguous() and bool(torch.isfinite(w).all()) for w in weights.values())
        assert load_segmenter(run) is not None  # the saved weights load as usual
    assert seen == [(True, True)] * 4 + [(False, False)] * 4


def test_a_channels_last_step_computes_the_same_gradients() -> None:
    """Up to rounding, with dropout off: dropout draws its mask in memory order, so with it a
    channels-last run is another random draw, not the same numbers."""
    cfg = ModelConfig(encoder_options={"output_stride": 16, "width": 0.125})
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    tasks = [
        training.SegmentationTask(
            copy.deepcopy(model), OptimConfig(), total_steps=1, num_classes=3, channels_last=flag
        )
        for flag in (False, True)
    ]
    # 8 images of different brightness: the ASPP's image-pooling branch batch-normalises
    # one pooled value per image and channel, and over 4 alike images rounding differences
    # grow to several per cent of some gradients (measured: 7 % at 4 images, 2.5e-5 at 8).
    images = torch.randn(8, 3, 64, 64) + torch.arange(8.0).view(8, 1, 1, 1)
    labels = torch.randint(0, 3, (8, 64, 64))
    for task in tasks:
        task.train()
        for module in task.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
        batch = task.on_after_batch_transfer({"image": images, "label": labels}, 0)
        wanted = torch.channels_last if task.channels_last else torch.contiguous_format
        assert batch["image"].is_contiguous(memory_format=wanted)
        task.methods(task.model(batch["image"]), TeacherSignals(), labels)["loss"].backward()
    plain, channels_last = (dict(task.model.named_parameters()) for task in tasks)
    for name, parameter in plain.items():
        difference = (channels_last[name].grad - parameter.grad).abs().max()
        assert difference <= 1e-3 * parameter.grad.abs().max() + 1e-9, name


def test_the_trainer_does_not_advertise_lightnings_cloud_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Lightning logs the tip through this logger at every Trainer; its other lines stay.
    with caplog.at_level("INFO", logger="lightning.pytorch.utilities.rank_zero"):
        training.build_trainer(SegConfig(), tmp_path / "run")
    messages = [record.getMessage() for record in caplog.records]
    assert any("GPU available" in message for message in messages)
    assert not any("litlogger" in message for message in messages)


def test_validation_miou_is_computed_over_the_whole_set(trained_run: Path) -> None:
    cfg = load_config(trained_run / "config.yaml")
    val_set = training.build_dataset(cfg.data, "val", train=False)
    model = load_segmenter(trained_run)[0]
    task = training.SegmentationTask(model, cfg.optim, total_steps=1, num_classes=19)
    data = training.SegDataModule(val_set, val_set, batch_size=2, num_workers=0, seed=0)
    with pytest.raises(TrainingError, match="for a Trainer's fit"):
        data.val_dataloader()  # no Trainer attached yet
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    logged = trainer.validate(task, datamodule=data, verbose=False)[0]["val/miou"]

    # What `segdistill evaluate` measures: the images (32x48, not multiples of 32) padded.
    predictor = load_predictor(trained_run)
    whole = SegmentationEvaluator(19, inputs="probs")
    unpadded = SegmentationEvaluator(19, inputs="logits")
    per_image = []
    with torch.no_grad():
        for index in range(len(val_set)):
            sample = val_set[index]
            probs = predictor.predict_padded(sample["image"][None]).probs
            whole.update(probs, None, sample["label"][None])
            unpadded.update(model.eval()(sample["image"][None]).logits, None, sample["label"][None])
            one = SegmentationEvaluator(19, inputs="probs")
            one.update(probs, None, sample["label"][None])
            per_image.append(one.compute()["segmentation"]["miou"])
    assert logged == pytest.approx(whole.compute()["segmentation"]["miou"])
    assert logged != pytest.approx(float(np.mean(per_image)))
    assert logged != pytest.approx(unpadded.compute()["segmentation"]["miou"])


class FrozenTeacher(torch.nn.Module):
    """Records that it runs without gradients; returns a constant pred_std."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def signals(self, images: torch.Tensor, needs: frozenset[str]) -> TeacherSignals:
        assert not torch.is_grad_enabled() and needs == {"pred_std"}
        self.calls += 1
        return TeacherSignals(pred_std=torch.full((images.shape[0], 1, 4, 4), 0.1))


def test_teacher_signals_come_from_the_batch_cache_or_the_frozen_teacher() -> None:
    methods = build_methods([{"name": "dudes"}], 3)
    assert methods.needs == {"pred_std"}
    model = build_model(SegConfig().model, 3)
    teacher = FrozenTeacher()
    task = training.SegmentationTask(
        model, OptimConfig(), methods, teacher, total_steps=1, num_classes=3
    )
    images = torch.zeros(2, 3, 4, 4)
    signals = task.teacher_signals({"image": images, "maps": {}})
    assert teacher.calls == 1 and signals.pred_std.shape == (2, 1, 4, 4)

    cached = torch.rand(2, 1, 4, 4)
    signals = task.teacher_signals({"image": images, "maps": {"pred_std": cached}})
    assert teacher.calls == 1 and signals.pred_std is cached

    no_teacher = training.SegmentationTask(
        model, OptimConfig(), methods, total_steps=1, num_classes=3
    )
    with pytest.raises(TrainingError, match="no teacher"):
        no_teacher.teacher_signals({"image": images, "maps": {}})
    plain = training.SegmentationTask(model, OptimConfig(), total_steps=1, num_classes=3)
    assert plain.teacher_signals({"image": images}) == TeacherSignals()


def test_distillation_logs_every_method_term(
    tmp_path: Path, data_root: Path, trained_run: Path
) -> None:
    teacher = trained_run / "checkpoints" / "best.safetensors"
    cfg = tiny_config(
        tmp_path,
        data_root,
        [
            "trainer.max_epochs=1",
            "model.uncertainty_head=scalar",
            # A single teacher has no spread for DUDES: methods that read its outputs only.
            "distill.teacher.kind=single",
            f"distill.teacher.path={teacher}",
            "distill.methods=[{name: ja_kd}, {name: kd, weight: 0.5}]",
        ],
    )
    run_dir = training.train(cfg)
    columns = set(read_metrics(run_dir)[0])
    assert {"train/loss", "train/task/ce", "train/ja_kd/out", "train/kd/kl"} <= columns
    assert load_segmenter(run_dir)[1].uncertainty_head == "scalar"


def test_a_missing_teacher_names_the_setting_that_points_at_it(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # configs/quick/distill_dudes.yaml points at runs/quick/ensemble; a user whose ensemble
    # went to --run-dir runs/ens gets only "ensemble manifest ... does not exist", without
    # the key (distill.teacher.path) that changes it.
    monkeypatch.setattr(training, "build_trainer", None)  # never reached
    cfg = tiny_config(
        tmp_path,
        data_root,
        [
            "model.uncertainty_head=scalar",
            f"distill.teacher.path={tmp_path / 'no_ensemble'}",
            "distill.methods=[{name: dudes}]",
        ],
    )
    with pytest.raises(CheckpointError, match=r"no_ensemble.*distill\.teacher\.path"):
        training.train(cfg)


def test_aux_loss_weight_trains_the_aux_heads_on_the_labels(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deep supervision: with `model.aux_loss_weight` the aux head learns from the labels
    (its CE logged per level); without it nothing trains a plain run's aux head."""
    trained = {}
    for weight in (0.0, 0.4):
        (tmp_path / str(weight)).mkdir()
        cfg = tiny_config(
            tmp_path / str(weight),
            data_root,
            ["trainer.max_epochs=1", "model.aux_heads=true", f"model.aux_loss_weight={weight}"],
        )
        start = initial_weights(cfg, monkeypatch)
        monkeypatch.undo()
        run_dir = training.train(cfg)
        end = load_segmenter(run_dir)[0].state_dict()
        aux = [k for k in start if k.startswith("aux_heads.") and k.endswith(".weight")]
        trained[weight] = any(not torch.equal(start[k], end[k]) for k in aux)
        columns = set(read_metrics(run_dir)[0])
        assert ("train/task/aux_ce_c4" in columns) == (weight > 0)
    assert trained == {0.0: False, 0.4: True}


def run_ensemble(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    args = parser.parse_args(["ensemble", *argv])
    assert args.func(args) == 0


def test_run_arguments_set_devices_nodes_and_the_default_run_directory(
    tmp_path: Path, data_root: Path, monkeypatch
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(root=data_root))
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    monkeypatch.chdir(tmp_path)
    args = parser.parse_args(["train", str(config), "--devices", "4", "--num-nodes", "2"])
    cfg = train_command.load_run_config(args)
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)
    assert cfg.run.dir == str(Path("runs") / "tiny")  # runs/<config name>
    args = parser.parse_args(["ensemble", str(config), "--members", "2", "--member", "2"])
    with pytest.raises(ConfigError, match=r"--member 2 is not a member index \(0..1\)"):
        args.func(args)


def test_the_train_command_resumes_when_asked_and_reports_the_best_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--resume, --run-dir (before run.dir) and --devices reach the training; the last line
    names the best validation mIoU of the CSV log and the epochs it came after."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(root=tmp_path) + "run: {dir: elsewhere}\n")
    # Epochs count from 0 in the log: the best of "run", 0.5, came after 2 epochs.
    logs = {"run": "0,3,0.25\n1,7,0.5\n2,11,0.375\n", "single": "0,3,0.125\n"}
    calls = []

    def fake_train(cfg: SegConfig, resume: bool = False) -> Path:
        run_dir = Path(cfg.run.dir)
        calls.append((run_dir, resume, cfg.trainer.devices))
        log = run_dir / "logs" / "csv" / "version_0" / "metrics.csv"
        log.parent.mkdir(parents=True)
        log.write_text("epoch,step,val/miou\n" + logs[run_dir.name])
        return run_dir

    monkeypatch.setattr(training, "train", fake_train)
    run, single = tmp_path / "run", tmp_path / "single"
    assert main(["train", str(config), "--run-dir", str(run), "--resume", "--devices", "3"]) == 0
    assert calls.pop() == (run, True, 3)
    out = capsys.readouterr().out
    assert f"run directory: {run} (" in out
    assert "; best val mIoU 0.5000 after 2 epochs, in checkpoints/best.safetensors)" in out
    argv = ["train", str(config), "--run-dir", str(single), "--set", "trainer.keep_best=false"]
    assert main(argv) == 0
    assert calls.pop() == (single, False, 1)
    assert "; best val mIoU 0.1250 after 1 epoch, not kept)" in capsys.readouterr().out


def _documented_keys_by_depth(doc: str, after: str) -> dict[int, set[str]]:
    """The quoted keys of the first ```json block after `after` in docs/`doc`, by how many
    "{" enclose them (the keys of sibling records pooled)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / doc).read_text()
    start = text.index("```json", text.index(after)) + 7
    depth, keys = 0, {}
    for key, brace in re.findall(r'"([^"]*)"\s*:|([{}])', text[start : text.index("```", start)]):
        depth += {"{": 1, "}": -1}.get(brace, 0)
        if key:
            keys.setdefault(depth, set()).add(key)
    return keys


def test_ensemble_members_differ_and_are_listed_in_the_manifest(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(root=data_root))
    ensemble_dir = tmp_path / "ensemble"
    common = [str(config), "--run-dir", str(ensemble_dir), "--members", "2"]
    vary = ["--set", "trainer.max_epochs=1", "ensemble.vary={optim.lr: [0.01, 0.02]}"]
    run_ensemble(*common, "--member", "1", *vary)  # e.g. one SLURM array task
    assert "manifest.json: 1 of 2 members finished" in capsys.readouterr().out
    manifest = json.loads((ensemble_dir / "manifest.json").read_text())
    assert [m["name"] for m in manifest["members"]] == ["member_01"]
    # One of two planned members is no 1-member teacher (a stopped run, an array task
    # still training): loading it says so and how to go on (not `--members 1`, which
    # would train member_00 and keep it, not member_01).
    unfinished = rf"ensemble {ensemble_dir} is unfinished: 1 of its 2 planned members"
    with pytest.raises(CheckpointError, match=unfinished + r".* \(finished: member_01\)$"):
        build_teacher("ensemble", ensemble_dir)

    run_ensemble(*common, *vary)  # member 1 is skipped, member 0 trained
    manifest = json.loads((ensemble_dir / "manifest.json").read_text())
    assert manifest["planned_members"] == 2
    members = manifest["members"]
    assert [(m["seed"], m["variations"]) for m in members] == [
        (0, {"optim.lr": 0.01}),
        (1, {"optim.lr": 0.02}),
    ]
    assert members[0]["checkpoint"] == "member_00/checkpoints/best.safetensors"
    assert members[0]["model"]["encoder_options"]["width"] == 0.125
    # docs/training.md writes the manifest out by hand: the same keys, in it and in each
    # member (whose model config and variations it gives as examples only).
    documented = _documented_keys_by_depth("training.md", "manifest.json` is rebuilt")
    assert documented[1] == set(manifest)
    assert all(documented[2] == set(m) for m in members)
    member_cfg = load_config(ensemble_dir / "member_01" / "config.yaml")
    assert (member_cfg.seed, member_cfg.optim.lr) == (1, 0.02)
    weights = [load_file(ensemble_dir / m["checkpoint"]) for m in members]
    assert not torch.equal(weights[0]["seg_head.weight"], weights[1]["seg_head.weight"])

    before = (ensemble_dir / "member_00" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    run_ensemble(*common, *vary)  # everything finished: nothing is retrained
    assert (ensemble_dir / "member_00" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before
    assert len(build_teacher("ensemble", ensemble_dir).members) == 2
    # A finished member of another recipe is not mixed into the ensemble; where it runs may
    # change.
    with pytest.raises(ConfigError, match=r"member_00 finished with another config \(seed"):
        run_ensemble(*common, *vary, "seed=5")
    with pytest.raises(ConfigError, match=r"optim.momentum: 0.9 -> 0.5"):
        run_ensemble(*common, *vary, "optim.momentum=0.5")
    run_ensemble(*common, *vary, "data.num_workers=1", "trainer.log_every_n_steps=7")
    # Nor does a new member of another recipe train beside them; the ensemble may grow.
    grown = [str(config), "--run-dir", str(ensemble_dir), "--members", "3", "--member", "2"]
    with pytest.raises(ConfigError, match=r"member_00 finished with another config"):
        run_ensemble(*grown, *vary, "optim.momentum=0.5")
    assert not (ensemble_dir / "member_02").exists()
    run_ensemble(*grown, *vary)
    manifest = json.loads((ensemble_dir / "manifest.json").read_text())
    assert [m["name"] for m in manifest["members"]] == ["member_00", "member_01", "member_02"]


def test_each_epoch_order_depends_only_on_seed_and_epoch() -> None:
    def epoch_order(seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
        loader = training.EpochLoader(
            list(range(10)),
            batch_size=2,
            num_workers=0,
            seed=seed,
            rank=rank,
            world_size=world_size,
            epoch=lambda: epoch,
        )
        return [int(i) for batch in loader for i in batch]

    assert epoch_order(0, 3) == epoch_order(0, 3)
    assert epoch_order(0, 3) != epoch_order(0, 4) and epoch_order(0, 3) != epoch_order(1, 3)
    # seed + epoch collisions do not repeat an order (ensemble members seeded s, s + 1).
    assert epoch_order(0, 1) != epoch_order(1, 0)
    shards = [epoch_order(0, 2, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]  # 3 per process, full batches of 2
    assert len(set(sum(shards, []))) == 6


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.arch=unet", r"model: unknown arch 'unet'"),
        ("model.encoder_options={width: -1}", r"model: encoder_options.width=-1"),
    ],
)
def test_a_network_setting_the_model_cannot_take_names_the_model_section(
    tmp_path: Path, data_root: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        training.train(tiny_config(tmp_path, data_root, [override]))


def test_each_process_builds_its_teacher_cache_on_its_own_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under plain `srun` only SLURM_LOCALID names the process's GPU: every rank used cuda:0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    assert training._local_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert training._local_device("gpu") == torch.device("cuda", 3)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's wins
    assert training._local_device("cuda") == torch.device("cuda", 1)
    assert training._local_device("cpu") == torch.device("cpu")


def test_best_validation_reads_every_session_of_a_run(tmp_path: Path) -> None:
    logs = tmp_path / "logs" / "csv"
    (logs / "version_0").mkdir(parents=True)
    (logs / "version_1").mkdir(parents=True)
    assert training.best_validation(tmp_path) is None  # no validation yet
    (logs / "version_0" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/miou\n0,9,2.1,\n0,9,,0.30\n1,19,,0.42\n"
    )
    # A resumed session: a later epoch equal to the best does not replace it (best.safetensors
    # is written on improvement only), a better one does.
    (logs / "version_1" / "metrics.csv").write_text("epoch,step,val/miou\n2,29,0.42\n")
    assert training.best_validation(tmp_path) == (0.42, 2)
    (logs / "version_1" / "metrics.csv").write_text("epoch,step,val/miou\n2,29,0.42\n3,39,0.5\n")
    assert training.best_validation(tmp_path) == (0.5, 4)
    # Sessions in the order they ran, not as text sorts their folders: a tie in the 11th
    # session (version_10) does not displace the 3rd's (version_2) earlier epoch.
    for version, row in ((2, "5,59,0.6"), (10, "20,209,0.6")):
        (logs / f"version_{version}").mkdir()
        (logs / f"version_{version}" / "metrics.csv").write_text(f"epoch,step,val/miou\n{row}\n")
    assert training.best_validation(tmp_path) == (0.6, 6)


class _Built(Exception):
    """Stops `train` right after it built the network (its initial weights)."""


def initial_weights(cfg: SegConfig, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    built: dict[str, torch.Tensor] = {}

    def build_and_stop(model_config: ModelConfig, num_classes: int) -> torch.nn.Module:
        model = build_model(model_config, num_classes)
        built.update({k: v.clone() for k, v in model.state_dict().items()})
        raise _Built

    monkeypatch.setattr(training, "build_model", build_and_stop)
    with pytest.raises(_Built):
        training.train(cfg)
    return built


def test_a_copied_experiments_finished_member_names_its_places_in_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ensemble teacher half trained in runs/a (members start from runs/a's pre-trained
    encoder), copied to runs/b: the finished member is kept there, not refused for naming
    runs/a's encoder; a member naming another place is."""
    monkeypatch.chdir(tmp_path)

    def teacher(root: str, encoder: str = "pretrain-teacher") -> SegConfig:
        values = {
            "run.dir": f"{root}/teacher",
            "run.experiment_dir": root,
            "model.encoder_weights": f"{root}/{encoder}/encoder.safetensors",
            "ensemble.members": 2,
        }
        return replace_values(SegConfig(), values, "t")

    member = member_config(teacher("runs/a"), Path("runs/a/teacher"), 0)
    copied = tmp_path / "runs/b/teacher/member_00"
    copied.mkdir(parents=True)
    (copied / "config.yaml").write_text(dump_config(member))
    (copied / MEMBER_FILE).write_text("{}")
    check_finished_members(teacher("runs/b"), Path("runs/b/teacher"))
    with pytest.raises(ConfigError, match="model.encoder_weights: 'runs/a/pretrain-teacher"):
        check_finished_members(teacher("runs/b", "pretrain"), Path("runs/b/teacher"))


def test_same_init_members_start_from_the_same_weights(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segdistill.ensemble import member_config

    cfg = tiny_config(tmp_path, data_root, ["seed=3"])
    weights = {}
    for same_init in (False, True):
        ensemble = replace_values(cfg, {"ensemble.same_init": same_init}, "test")
        members = [member_config(ensemble, tmp_path / str(same_init), i) for i in (0, 1)]
        assert [m.seed for m in members] == [3, 4]  # data order and augmentation differ
        assert [m.init_seed for m in members] == ([3, 3] if same_init else [None, None])
        weights[same_init] = [initial_weights(m, monkeypatch) for m in members]
    first, second = weights[True]
    assert all(torch.equal(first[k], second[k]) for k in first)  # Holder: identical starts
    first, second = weights[False]
    assert not all(torch.equal(first[k], second[k]) for k in first)


def test_same_init_members_start_from_the_init_seed_given() -> None:
    """With `ensemble.same_init` and an explicit `init_seed`, every member starts from that
    seed's weights (not from `seed`), while each keeps its own seed + index."""
    from segdistill.ensemble import member_config

    values = {"seed": 3, "init_seed": 42, "ensemble.same_init": True}
    cfg = replace_values(SegConfig(), values, "test")
    members = [member_config(cfg, Path("ensemble"), i) for i in (0, 1, 2)]
    assert [(m.seed, m.init_seed) for m in members] == [(3, 42), (4, 42), (5, 42)]


def test_a_member_resumes_where_it_stopped_and_records_its_own_variations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Member 1 stopped mid-training (last.ckpt, no member.json): the re-run resumes it
    instead of refusing (or restarting) it, and every member's entry gives its own seed,
    variation and model, whatever network the ensemble's config names."""
    from segdistill import ensemble

    calls = []

    def trained(cfg: SegConfig, resume: bool = False) -> Path:  # what train leaves
        run = cfg.run.path()
        calls.append((run.name, cfg.seed, cfg.model.mc_dropout, resume))
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(dump_config(cfg))
        (run / "checkpoints" / "last.safetensors").write_bytes(b"weights")
        return run

    monkeypatch.setattr(ensemble, "train", trained)
    values = {"seed": 10, "ensemble.members": 3, "ensemble.vary": {"model.mc_dropout": [0.0, 0.2]}}
    cfg = replace_values(SegConfig(), values, "test")
    folder = tmp_path / "ensemble"
    stopped = member_config(cfg, folder, 1).run.path()
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "checkpoints" / "last.ckpt").write_bytes(b"state")
    for index in range(3):
        ensemble.train_member(cfg, folder, index)
    assert calls == [
        ("member_00", 10, 0.0, False),
        ("member_01", 11, 0.2, True),
        ("member_02", 12, 0.0, False),
    ]
    entry = json.loads((folder / "member_01" / MEMBER_FILE).read_text())
    assert entry["name"] == "member_01" and entry["seed"] == 11
    assert entry["variations"] == {"model.mc_dropout": 0.2}
    assert entry["model"]["mc_dropout"] == 0.2 and entry["num_classes"] == 19
    assert entry["checkpoint"] == "member_01/checkpoints/last.safetensors"
    assert ensemble.write_manifest(folder, 3) == (3, [])
    ensemble.train_member(cfg, folder, 1)  # finished: skipped
    assert len(calls) == 3


def test_the_manifest_lists_the_finished_members_in_order(tmp_path: Path) -> None:
    """member_01 still training (no member.json): the manifest holds 0 and 2, in that
    order, says 3 were planned, and write_manifest reports 2 finished."""
    from segdistill.ensemble import write_manifest

    entries = {0: {"name": "member_00", "checkpoint": "a"}, 2: {"name": "member_02"}}
    for index in range(3):
        member = tmp_path / f"member_{index:02d}"
        member.mkdir()
        if index in entries:
            (member / MEMBER_FILE).write_text(json.dumps(entries[index]))
    (tmp_path / "member_old").mkdir()  # set aside by hand: not a member
    (tmp_path / "member_old" / MEMBER_FILE).write_text(json.dumps({"name": "old"}))
    assert write_manifest(tmp_path, 3) == (2, [])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == {"planned_members": 3, "members": [entries[0], entries[2]]}
    # Fewer members planned (--members 2): member_02 stays on disk, out of the ensemble;
    # it was listed, and a 3-member teacher loaded under planned_members 2.
    assert write_manifest(tmp_path, 2) == (1, ["member_02"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == {"planned_members": 2, "members": [entries[0]]}


def test_an_interrupted_member_resumes_in_a_grown_ensemble(tmp_path: Path, data_root: Path) -> None:
    """The docs let an ensemble grow (`--members` larger), but a member interrupted before
    was refused: "cannot resume ... with another config (ensemble.members: 2 -> 3)"."""
    from segdistill import ensemble

    cfg = tiny_config(tmp_path, data_root, ["trainer.max_epochs=1"])
    folder = tmp_path / "ensemble"
    two = replace_values(cfg, {"ensemble.members": 2}, "t")
    stopped = training.train(member_config(two, folder, 1))  # no member.json: interrupted
    three = replace_values(cfg, {"ensemble.members": 3, "trainer.max_epochs": 2}, "t")
    ensemble.train_member(three, folder, 1)
    state = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 1 and (stopped / MEMBER_FILE).is_file()


def test_an_unfinished_ensembles_error_offers_to_keep_only_the_first_members(
    tmp_path: Path,
) -> None:
    """`--members K` keeps member_00 .. member_{K-1}: offered when only member_01 of 2 had
    finished, it trained a new member_00 instead. A manifest listing more members than it
    plans is refused (it loaded as the larger teacher)."""
    manifest = tmp_path / "manifest.json"

    def load(names: list[str], planned: int) -> None:
        members = [{"name": name, "checkpoint": f"{name}/w.safetensors"} for name in names]
        manifest.write_text(json.dumps({"planned_members": planned, "members": members}))
        member_weights(tmp_path)

    with pytest.raises(CheckpointError, match=r"or keep the 1 with `... --members 1`$"):
        load(["member_00"], 2)
    with pytest.raises(CheckpointError) as error:
        load(["member_01"], 2)
    assert str(error.value).endswith("(finished members are skipped) (finished: member_01)")
    with pytest.raises(CheckpointError, match="lists 3 members but plans 2"):
        load(["member_00", "member_01", "member_02"], 2)


def test_only_rank_zero_writes_a_members_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    from segdistill import ensemble

    trained = []
    monkeypatch.setattr(ensemble, "train", lambda cfg, resume=False: trained.append(cfg.seed))
    monkeypatch.setattr(ensemble, "weights_path", lambda run: run / "w.safetensors")
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    ensemble.train_member(SegConfig(), tmp_path, 0)
    assert trained == [0]  # every process trains
    assert not (tmp_path / "member_00" / MEMBER_FILE).exists()


def test_without_keep_best_the_run_is_evaluated_on_its_last_weights(
    tmp_path: Path, data_root: Path
) -> None:
    run_dir = training.train(tiny_config(tmp_path, data_root, ["trainer.keep_best=false"]))
    assert not (run_dir / "checkpoints" / "best.safetensors").exists()
    assert weights_path(run_dir).name == "last.safetensors"


@pytest.mark.parametrize(
    ("overrides", "steps_per_epoch"),
    [
        # 4 batches an epoch, one optimiser step per 3: steps after batches 3 and 4.
        (["trainer.accumulate_grad_batches=3"], 2),
        # 60 % of the 4 batches: Lightning runs int(2.4) = 2 of them.
        (["trainer.limit_train_batches=0.6"], 2),
    ],
)
def test_every_step_runs_at_the_poly_rate_of_the_steps_the_run_takes(
    tmp_path: Path, data_root: Path, overrides: list[str], steps_per_epoch: int
) -> None:
    """lr * (1 - step / total) ** power, the total being the optimiser steps the run
    really takes; the decoder group at decoder_lr_mult times that."""
    recipe = ["optim.lr=0.02", "optim.poly_power=2.0", "optim.decoder_lr_mult=4"]
    run = training.train(tiny_config(tmp_path, data_root, [*overrides, *recipe]))
    total = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert total == 2 * steps_per_epoch
    rates = {
        int(row["step"]): (float(row["lr-SGD/pg1"]), float(row["lr-SGD/pg2"]))
        for row in read_metrics(run)
        if row["lr-SGD/pg1"]
    }
    assert sorted(rates) == list(range(total))
    for step, (encoder, rest) in rates.items():
        expected = 0.02 * (1 - step / total) ** 2.0
        assert encoder == pytest.approx(expected), step
        assert rest == pytest.approx(4 * expected), step


def test_best_weights_are_the_best_validations_and_a_resume_keeps_them(tmp_path: Path) -> None:
    """best.safetensors holds the epoch of the highest val/miou (the first of equal ones);
    the best score so far travels in last.ckpt, so a resumed run does not take a worse
    epoch for the best one."""
    model_config = ModelConfig(encoder_options={"output_stride": 16, "width": 0.125})
    model = build_model(model_config, 3)
    task = training.SegmentationTask(model, OptimConfig(), total_steps=1, num_classes=3)
    resumable: list[bool] = []
    trainer = types.SimpleNamespace(
        callback_metrics={},
        is_global_zero=True,
        save_checkpoint=lambda path, weights_only: resumable.append(weights_only),
    )

    def end_epoch(callback: training.RunCheckpoints, epoch: int, miou: float | None) -> None:
        with torch.no_grad():
            model.seg_head.weight.fill_(epoch)  # the weights say which epoch wrote them
        trainer.callback_metrics = {} if miou is None else {"val/miou": torch.tensor(miou)}
        callback.on_train_epoch_end(trainer, task)

    def epoch_in(name: str) -> float:
        return float(load_file(tmp_path / f"{name}.safetensors")["seg_head.weight"].flatten()[0])

    callback = training.RunCheckpoints(tmp_path, model_config)
    for epoch, miou in enumerate([0.25, 0.5, None, 0.375, 0.5]):
        end_epoch(callback, epoch, miou)
    assert (epoch_in("best"), epoch_in("last")) == (1, 4)
    assert resumable == [False] * 5  # the full training state, every epoch

    resumed = training.RunCheckpoints(tmp_path, model_config)
    resumed.load_state_dict(callback.state_dict())
    end_epoch(resumed, 5, 0.375)
    assert (epoch_in("best"), epoch_in("last")) == (1, 5)
    end_epoch(resumed, 6, 0.75)
    assert (epoch_in("best"), epoch_in("last")) == (6, 6)


def test_the_resumable_checkpoint_holds_the_best_validation_so_far(trained_run: Path) -> None:
    state = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    (best,) = [s["best_miou"] for key, s in state["callbacks"].items() if "RunCheckpoints" in key]
    mious = [float(row["val/miou"]) for row in read_metrics(trained_run) if row["val/miou"]]
    assert best == pytest.approx(max(mious))


def test_each_epoch_is_seeded_from_the_run_seed_and_its_index(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every epoch draws other crops, flips and order (not epoch 0's again), also the
    first epoch of a resumed run."""
    seeds: list[int] = []
    real_seed_all = training.seed_all

    def record(seed: int) -> None:
        seeds.append(seed)
        real_seed_all(seed)

    monkeypatch.setattr(training, "seed_all", record)
    expected = [int(np.random.SeedSequence([5, e]).generate_state(1)[0]) for e in range(3)]
    cfg = tiny_config(tmp_path, data_root, ["seed=5"])
    training.train(cfg)
    assert seeds == expected[:2]
    seeds.clear()
    training.train(replace_values(cfg, {"trainer.max_epochs": 3}, "test"), resume=True)
    assert seeds == expected[2:]


def test_the_trainer_takes_the_configs_trainer_settings(tmp_path: Path) -> None:
    values = {
        "trainer.accelerator": "cpu",
        "trainer.max_epochs": 6,
        "trainer.limit_train_batches": 3,
        "trainer.limit_val_batches": 0.5,
        "trainer.check_val_every_n_epoch": 2,
        "trainer.log_every_n_steps": 7,
        "trainer.accumulate_grad_batches": 4,
        "trainer.precision": "bf16-mixed",
    }
    trainer = training.build_trainer(replace_values(SegConfig(), values, "test"), tmp_path)
    assert (trainer.max_epochs, trainer.limit_train_batches, trainer.limit_val_batches) == (
        6,
        3,
        0.5,
    )
    assert (trainer.check_val_every_n_epoch, trainer.log_every_n_steps) == (2, 7)
    assert (trainer.accumulate_grad_batches, trainer.precision) == (4, "bf16-mixed")


def test_loader_workers_leave_ctrl_c_to_the_main_process() -> None:
    """A terminal's Ctrl-C reaches the DataLoader workers too; one killed by it broke the
    run ("DataLoader worker exited unexpectedly") before the main process could stop it."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        training.worker_init(0, 0)  # what every training and validation worker runs first
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_infinite_loss_stops_training_like_a_nan_one(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_forward = training.MethodSet.forward

    def overflowing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        terms = real_forward(self, *args, **kwargs)
        terms["loss"] = terms["loss"] + float("inf")
        return terms

    monkeypatch.setattr(training.MethodSet, "forward", overflowing)
    with pytest.raises(TrainingError, match=r"not finite \(here inf\) at global step 0"):
        training.train(tiny_config(tmp_path, data_root))
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_a_loss_that_is_not_finite_on_another_process_stops_every_process() -> None:
    """Each process's verdict on its loss is combined with the others' (all must be
    finite): a NaN on one process, all-reduced into every gradient, must stop all of
    them before the update, not only the process that computed it."""
    model = build_model(ModelConfig(encoder_options={"output_stride": 16, "width": 0.125}), 3)
    task = training.SegmentationTask(model, OptimConfig(), total_steps=1, num_classes=3)

    class TwoProcesses:
        """This process and one whose loss is NaN, reduced as DDPStrategy reduces."""

        def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
            finite_count = int(decision) + int(False)  # the other one: not finite
            return finite_count == 2 if all else finite_count > 0

    task.trainer = types.SimpleNamespace(strategy=TwoProcesses(), global_step=7, current_epoch=1)
    with pytest.raises(TrainingError, match=r"not finite .* global step 7, epoch 1, batch 3"):
        task._stop_unless_finite(torch.tensor(0.5), 3)


def test_processes_of_every_node_count_in_the_batches_and_the_validation_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """devices x num_nodes processes share the images: 4 training images over 3 nodes
    leave none a full batch of 2; 2 validation images cannot feed 3 processes."""
    monkeypatch.setattr(training, "build_trainer", None)  # never reached
    root = write_tiny_cityscapes(tmp_path / "data", train=4, val=2)
    nodes = ["trainer.devices=1", "trainer.num_nodes=3"]
    with pytest.raises(ConfigError, match=r"not one full batch .* \(3 processes\)"):
        training.train(tiny_config(tmp_path, root, nodes))
    root = write_tiny_cityscapes(tmp_path / "data2", train=12, val=2)
    with pytest.raises(ConfigError, match=r"has 2 images, fewer than the 3 processes"):
        training.train(tiny_config(tmp_path, root, nodes))
    # Per process: 10 // 3 = 3 images, one batch of 2 (the tail of each share is dropped).
    assert training.batches_per_epoch(10, 3, 2, None) == 1
    assert training.batches_per_epoch(10, 1, 2, None) == 5
    assert training.batches_per_epoch(10, 1, 2, 3) == 3
    assert training.batches_per_epoch(10, 1, 2, 0.5) == 2


@pytest.mark.parametrize(("devices", "nodes"), [(2, 1), (1, 2), (1, 1)])
def test_several_processes_train_with_ddp_and_a_static_graph(
    tmp_path: Path, devices: int, nodes: int
) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    values = {"trainer.accelerator": "cpu", "trainer.devices": devices, "trainer.num_nodes": nodes}
    trainer = training.build_trainer(replace_values(SegConfig(), values, "test"), tmp_path)
    ddp = isinstance(trainer.strategy, DDPStrategy)
    assert ddp == (devices * nodes > 1)
    if ddp:  # heads no loss reads (aux, uncertainty) would fail DDP's reduction without it
        assert trainer.strategy._ddp_kwargs.get("static_graph") is True


def test_only_the_first_node_sets_an_earlier_start_aside(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a shared file system rank 0 of node 1 sees the run directory node 0 is starting:
    it must not move that start's files aside too."""
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)  # a start that stopped before its first checkpoint
    (run / "config.yaml").write_text(dump_config(tiny_config(tmp_path, data_root, ["seed=4"])))
    cfg = tiny_config(tmp_path, data_root)
    monkeypatch.setenv("NODE_RANK", "1")
    training._prepare_run_dir(cfg, resume=False)
    assert not (run / "earlier_starts").exists()
    monkeypatch.setenv("NODE_RANK", "0")
    training._prepare_run_dir(cfg, resume=False)
    assert len(list((run / "earlier_starts").iterdir())) == 1


class _Draws(torch.utils.data.Dataset):
    """Returns (index, a draw of numpy's global generator): what an augmentation sees."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, float(np.random.random())


def _fitting(rank: int) -> types.SimpleNamespace:
    current = types.SimpleNamespace(processed=0)
    loop = types.SimpleNamespace(epoch_progress=types.SimpleNamespace(current=current))
    return types.SimpleNamespace(global_rank=rank, world_size=2, fit_loop=loop)


def test_each_process_trains_and_validates_on_its_own_share_with_its_own_draws() -> None:
    """Two processes: disjoint training shards (seeded the same, drawn per rank), disjoint
    validation shares covering every image once, and loader workers whose augmentation
    draws differ between the processes (Lightning seeds workers from rank and worker id)."""
    train_seen, val_seen, draws = [], [], []
    for rank in (0, 1):
        data = training.SegDataModule(_Draws(), _Draws(), 2, num_workers=1, seed=0)
        data.trainer = _fitting(rank)
        batches = list(data.train_dataloader())
        train_seen.append(sorted(int(i) for batch in batches for i in batch[0]))
        draws.append([float(d) for batch in batches for d in batch[1]])
        val_seen.append([int(batch[0]) for batch in data.val_dataloader()])
    assert [len(s) for s in train_seen] == [4, 4]
    assert sorted(train_seen[0] + train_seen[1]) == list(range(8))
    assert val_seen == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert draws[0] != draws[1]


def test_training_images_smaller_than_the_crop_get_a_notice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from segdistill.data.base import LabelMapping, SampleFiles

    mapping = LabelMapping.identity(2, 255)
    samples = [SampleFiles(name, Path(f"{name}.png"), None, mapping) for name in "abc"]
    # 64x256 fits a 64x128 crop; 48x300 is too low, 100x90 too narrow.
    training.notice_images_under_crop(samples, [(64, 256), (48, 300), (100, 90)], (64, 128))
    out = capsys.readouterr().out
    assert "2 of 3 training images are smaller than data.crop_size 64x128" in out
    # The smallest by area is named; the crop that fits takes each side's minimum.
    assert "the smallest: 100x90, c.png" in out
    assert "--set data.crop_size=[48,90]" in out
    # The smallest by area, not by the sum of its sides: 10x500 (5000 pixels) is smaller
    # than 80x80 (6400), whose sides sum to less.
    training.notice_images_under_crop(samples, [(80, 80), (10, 500), (200, 600)], (100, 600))
    assert "the smallest: 10x500, b.png" in capsys.readouterr().out
    # Images only too narrow: the fitting crop keeps the crop's height (64), not the
    # images' larger one (200).
    training.notice_images_under_crop(samples, [(200, 50), (300, 90), (250, 140)], (64, 128))
    assert "--set data.crop_size=[64,50]" in capsys.readouterr().out
    training.notice_images_under_crop(samples, [(50, 200), (90, 300), (140, 250)], (64, 128))
    assert "--set data.crop_size=[50,128]" in capsys.readouterr().out
    # Images at least as large as the crop on both sides: nothing is said.
    training.notice_images_under_crop(samples, [(64, 128), (128, 256), (64, 130)], (64, 128))
    assert capsys.readouterr().out == ""


def test_training_says_when_its_images_are_smaller_than_the_crop(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The notice reaches a training run: the tiny 32x48 images under a 64x64 crop. The
    run is stopped right after the data checks (nothing needs training here)."""

    class Stop(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> int:
        raise Stop

    monkeypatch.setattr(training, "batches_per_epoch", stop)
    with pytest.raises(Stop):
        training.train(tiny_config(tmp_path, data_root, ["data.crop_size=[64,64]"]))
    out = capsys.readouterr().out
    assert "8 of 8 training images are smaller than data.crop_size 64x64" in out
    assert "--set data.crop_size=[32,48]" in out
