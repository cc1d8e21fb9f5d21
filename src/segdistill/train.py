"""Supervised training and distillation with Lightning: `train(cfg) -> run directory`.

Read from the top: `train` builds the network, the data and, for a distillation, the
teacher and the methods, then hands a `SegmentationTask` to a Lightning `Trainer`.

- The loss: a `MethodSet` (`segdistill.methods`). Without distillation it is the empty set,
  i.e. the cross-entropy with the labels (ignore_index excluded); with distillation the
  methods add their terms. Every term is logged as `train/<term>`.
- The optimiser (DUDES section 3.3): SGD with momentum 0.9 and weight decay 5e-4, lr 0.01
  for the encoder and 10x for everything else (decoder, heads, method adapters), decayed
  per step by (1 - step / total_steps) ** 0.9 over the whole run; AdamW as an option.
- Validation: the mIoU over the whole validation set (one confusion matrix, merged over
  processes), logged as `val/miou` after every epoch.
- Checkpoints (`RunCheckpoints`): `checkpoints/last.ckpt` (Lightning's resumable state)
  after every epoch (and every N steps if asked), `last.safetensors` after every epoch and
  `best.safetensors` when `val/miou` improves (`trainer.keep_best`). Written atomically;
  none after a failed step.
- Reproducibility: every training epoch is a function of (seed, epoch) only
  (`EpochLoader`), so a run resumed from an end-of-epoch checkpoint ends with the same
  weights as an uninterrupted one (bit for bit on the CPU).
- A NaN or infinite loss stops the run with a `TrainingError` naming the step; so do
  weights that are not finite (a divergence whose losses were finite), before validation
  or a checkpoint.
- Distillation extras (`cfg.distill`): a student initialised from a pre-trained one
  (`init_from`, Holder & Shafique), unlabelled images (`unlabeled_root`), cached teacher
  targets (`teacher_cache`, `segdistill.teacher_cache`) and He et al.'s stage 1 (the
  translators train before the first step, `SegmentationTask.on_fit_start`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import functools
import itertools
import logging
import math
import os
import random
import shutil
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, Subset

from segdistill.atomic import atomic_write, atomic_write_text, remove_unfinished_writes
from segdistill.checkpoints import (
    CONFIG_FILE,
    build_model,
    load_segmenter,
    read_architecture,
    save_weights,
    weights_path,
)
from segdistill.config import (
    RESUME_MAY_CHANGE,
    DataConfig,
    ModelConfig,
    OptimConfig,
    SegConfig,
    config_differences,
    dump_config,
    format_differences,
    load_config,
    network_differences,
)
from segdistill.data.base import (
    ClassesSpec,
    LabelMapping,
    SampleFiles,
    SegmentationDataset,
    check_headers,
)
from segdistill.data.cityscapes import CityscapesDataset
from segdistill.data.folder import FolderDataset, require_images_below
from segdistill.data.labels import IGNORE_INDEX
from segdistill.data.transforms import build_eval_transform, build_train_transform
from segdistill.defaults import RESUME_CHECKPOINT
from segdistill.distributed import print_once
from segdistill.errors import CheckpointError, ConfigError, TrainingError, short_reason
from segdistill.interrupts import CtrlC, ignore_ctrl_c, stop_on_ctrl_c
from segdistill.methods import PIXEL_METHODS, MethodSet, build_methods, train_translator
from segdistill.metrics import SegmentationEvaluator
from segdistill.models import Segmenter
from segdistill.models.teachers import DISAGREEMENT_SIGNALS, Teacher, build_teacher
from segdistill.output_paths import check_output_folder, held_folder
from segdistill.outputs import SIGNAL_NAMES, SegOutput, TeacherSignals
from segdistill.predictor import padded_segmenter_prediction
from segdistill.teacher_cache import TeacherCacheDataset, cache_key, open_or_build, valid_mask

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
    from torch.utils.data.dataloader import _BaseDataLoaderIter

# State-dict prefixes `distill.init_from` loads; everything else (the heads) starts fresh.
PRETRAINED_PARTS = ("encoder.", "decoder.")
# Side of the dummy image used to read the feature-tap channels of student and teacher.
_PROBE_SIZE = 64
# What a training run reads: labelled images, with the teacher's cached maps or without.
TrainingSet = SegmentationDataset | TeacherCacheDataset


def train(cfg: SegConfig, resume: bool = False) -> Path:
    """Train (or distil, when `cfg.distill` is set) into `cfg.run.dir`; return that folder.

    resume: continue from `RUN_DIR/checkpoints/last.ckpt`. Without it, a run directory that
    already holds a checkpoint is refused rather than overwritten. A second run into a run
    directory in use is refused (`output_paths.held_folder`).
    """
    run_dir = cfg.run.path()
    check_output_folder(run_dir, "run.dir")
    # DDP's other processes write in rank 0's run directory: rank 0 holds it for them.
    # (`rank` is set from the launcher's environment when Lightning is imported.)
    rank = rank_zero_only.rank  # type: ignore[attr-defined]
    held = held_folder(run_dir) if rank == 0 else contextlib.nullcontext()
    with held:
        return _train(cfg, resume)


def check_accelerator(accelerator: str, key: str = "trainer.accelerator") -> None:
    """ConfigError for a GPU accelerator without CUDA; `key`: the setting as the user gives
    it (an experiment's `set.trainer.accelerator`)."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{key}={accelerator!r}: CUDA is not available (no GPU, or a CPU-only torch); "
            f"--set {key}=auto trains on what there is"
        )


def _train(cfg: SegConfig, resume: bool) -> Path:
    check_accelerator(cfg.trainer.accelerator)
    run_dir = _prepare_run_dir(cfg, resume)
    train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
    if cfg.distill is not None and cfg.distill.unlabeled_root is not None:
        train_set = add_unlabeled_images(train_set, Path(cfg.distill.unlabeled_root))
    val_set = build_dataset(cfg.data, cfg.data.val_split, train=False)
    # A bad file would otherwise stop the run where a batch first reads it: a validation
    # file after a whole epoch of training.
    sizes = check_headers([*train_set.samples, *val_set.samples])
    notice_images_under_crop(train_set.samples, sizes[: len(train_set)], cfg.data.crop_size)
    world_size = cfg.trainer.devices * cfg.trainer.num_nodes
    batches = batches_per_epoch(
        len(train_set), world_size, cfg.data.batch_size, cfg.trainer.limit_train_batches
    )
    if batches < 1:
        raise ConfigError(
            f"{cfg.data.root} split {cfg.data.train_split!r} has {len(train_set)} images: not "
            f"one full batch of data.batch_size={cfg.data.batch_size} per process "
            f"({world_size} processes)"
        )
    if len(val_set) < world_size:
        raise ConfigError(
            f"{cfg.data.root} split {cfg.data.val_split!r} has {len(val_set)} images, fewer "
            f"than the {world_size} processes"
        )

    init_seed = cfg.seed if cfg.init_seed is None else cfg.init_seed
    L.seed_everything(init_seed, workers=True, verbose=False)  # the initial weights
    model = build_model(cfg.model, cfg.data.num_classes)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the rest of the run
    methods = MethodSet(ignore_index=cfg.data.ignore_index, aux_ce_weight=cfg.model.aux_loss_weight)
    teacher: Teacher | None = None
    training_set: TrainingSet = train_set
    if cfg.distill is not None:
        if cfg.distill.init_from is not None and not resume:  # resumed: weights from last.ckpt
            init_from_pretrained(model, cfg.model, cfg.distill.init_from)
        methods, teacher = build_distillation(cfg, model)
        if cfg.distill.teacher_cache is not None:
            training_set, teacher = attach_teacher_cache(cfg, methods, teacher, train_set)
    task = SegmentationTask(
        model,
        cfg.optim,
        methods,
        teacher,
        # Lightning steps after every `accumulate` batches and after an epoch's last one.
        total_steps=-(-batches // cfg.trainer.accumulate_grad_batches) * cfg.trainer.max_epochs,
        num_classes=cfg.data.num_classes,
        ignore_index=cfg.data.ignore_index,
        channels_last=cfg.trainer.channels_last,
        example_size=tuple(cfg.data.crop_size),
    )
    # Set for every run, not only when changed: an experiment trains many networks in one
    # process and each must get its own config's setting.
    torch.set_float32_matmul_precision(cfg.trainer.matmul_precision)
    ctrl_c = CtrlC()
    trainer = build_trainer(
        cfg, run_dir, classes=val_set.classes_spec, callbacks=[StopOnCtrlC(ctrl_c)]
    )
    if trainer.is_global_zero:
        text = dump_config(cfg)
        atomic_write_text(run_dir / CONFIG_FILE, text)
    data = SegDataModule(training_set, val_set, cfg.data.batch_size, cfg.data.num_workers, cfg.seed)
    ckpt_path = run_dir / RESUME_CHECKPOINT if resume else None
    try:
        with ctrl_c.watching(), _quiet_lightning():
            trainer.fit(task, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        # Lightning ends a Ctrl-C with exit(1) after its shutdown, Ctrl-C ignored from then
        # on: give the caller the interrupt (the CLI exits 130) and Ctrl-C back.
        if not trainer.interrupted:
            raise
        _restore_ctrl_c()
        raise KeyboardInterrupt from None
    except Exception:
        # Whatever broke while the interrupt was on its way (a loader that lost its
        # workers), the user pressed Ctrl-C: say that, not the error it caused.
        if not ctrl_c.pressed:
            raise
        _restore_ctrl_c()
        raise KeyboardInterrupt from None
    return run_dir


def _restore_ctrl_c() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def worker_init(rank: int, worker_id: int) -> None:
    """A training DataLoader worker's start: Lightning's seeding of its generators (the
    draws of the worker_init_fn `seed_everything(workers=True)` adds; with one of ours it
    adds none), and Ctrl-C left to the main process (`ignore_ctrl_c`, `StopOnCtrlC`)."""
    ignore_ctrl_c(worker_id)
    pl_worker_init_function(worker_id, rank=rank)


# What Lightning says about its own code at every fit, which no setting of ours changes:
# SegmentationTask moves batches itself (on_after_batch_transfer, by design) and
# Lightning's pytree helper uses a deprecated torch name.
_LIGHTNING_NOISE = (
    r"You have overridden `on_after_batch_transfer` in `LightningModule`",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _LIGHTNING_NOISE:
            warnings.filterwarnings("ignore", message=message)
        yield


class EndProgressBarsOnError(Callback):
    """On an error or an interrupt, end the progress bars' lines before the error is
    printed. Lightning leaves them open: "error: ..." went on the bar's line, and the bar
    was drawn once more under it when it was garbage-collected, so a run that had stopped
    ended on a bar (at 100 % after a validation error)."""

    def on_exception(self, trainer: L.Trainer, *args: Any) -> None:
        bars = trainer.progress_bar_callback
        for name in ("val_progress_bar", "train_progress_bar"):
            try:
                getattr(bars, name).close()
            except (AttributeError, TypeError):  # no such bar, or not started yet
                continue


class StopOnCtrlC(Callback):
    """Raises a recorded Ctrl-C (`interrupts.CtrlC`) at the start of the next training or
    validation batch, inside Lightning's fit, so that its shutdown handles it."""

    def __init__(self, ctrl_c: CtrlC) -> None:
        self.ctrl_c = ctrl_c

    def on_train_batch_start(self, *args: Any) -> None:
        self.ctrl_c.check()

    def on_validation_batch_start(self, *args: Any) -> None:
        self.ctrl_c.check()


def _prepare_run_dir(cfg: SegConfig, resume: bool) -> Path:
    run_dir = cfg.run.path()
    checkpoint = run_dir / RESUME_CHECKPOINT
    if resume and not checkpoint.is_file():
        raise CheckpointError(
            f"cannot resume: {checkpoint} does not exist (the run stopped before its first "
            "checkpoint, or never started): run the same command without --resume, which "
            "starts it from nothing"
        )
    saved = run_dir / CONFIG_FILE
    if resume and not saved.is_file():
        # Training writes it before its first checkpoint: without it nothing says that the
        # checkpoint's network and recipe are this config's.
        raise CheckpointError(
            f"cannot resume {run_dir}: its {CONFIG_FILE} is missing, so the checkpoint cannot "
            "be checked against this config; put it back, or train into a new --run-dir"
        )
    if resume:
        # Another batch, model or recipe would be mixed into the run's half-done training.
        before = load_config(saved)
        allowed = (*RESUME_MAY_CHANGE, "trainer.max_epochs")
        changed = network_differences(before, cfg, ignore=allowed)
        if cfg.trainer.max_epochs < before.trainer.max_epochs:
            # Fewer epochs would leave the weights of more under a config that says fewer.
            changed.append(
                ("trainer.max_epochs", before.trainer.max_epochs, cfg.trainer.max_epochs)
            )
        if changed:
            raise ConfigError(
                f"cannot resume {run_dir} with another config ({format_differences(changed)}; "
                f"compared with {saved}): set them back, or train into a new --run-dir"
            )
        if before.trainer.max_epochs != cfg.trainer.max_epochs:
            print_once(
                f"notice: resuming {run_dir} with trainer.max_epochs {before.trainer.max_epochs}"
                f" -> {cfg.trainer.max_epochs}: the poly learning-rate schedule is recomputed "
                "over the new length, so the learning rate changes where the run resumes"
            )
    if not resume and checkpoint.exists():
        raise ConfigError(
            f"{run_dir} already holds a run ({checkpoint}); pass --resume to continue it or "
            "choose another --run-dir"
        )
    # Rank 0 of the first node only: the others start when it has begun, or at once on
    # other nodes of a shared file system.
    rank = rank_zero_only.rank  # type: ignore[attr-defined]
    first = rank == 0 and os.environ.get("NODE_RANK", "0") == "0"
    if not resume and saved.is_file() and first:
        _set_aside_earlier_start(run_dir, load_config(saved), cfg)
    # Nothing writes in the run directory before this run starts; a killed write's leftover
    # is a checkpoint's size, and preemptions add them up.
    remove_unfinished_writes(run_dir / "checkpoints")
    return run_dir


EARLIER_STARTS = "earlier_starts"  # where a restarted run's abandoned start is kept


def _set_aside_earlier_start(run_dir: Path, before: SegConfig, cfg: SegConfig) -> None:
    """A start of a run that stopped before its first resumable checkpoint (a Ctrl-C, a
    kill, an out-of-memory error or a NaN loss in its first epoch) left its config, its logs
    and maybe weights, but nothing to resume. Started again (the same config, or one fixed:
    a smaller batch, a lower learning rate), the run starts from nothing, and the earlier
    start's weights, logs and config move to `RUN/earlier_starts/<time>/`: left in place
    they would pass for this run's (`best_validation` read the abandoned start's mIoU), and
    deleted they might be a model whose last.ckpt was removed to save space."""
    stale = [*sorted((run_dir / "checkpoints").glob("*.safetensors")), run_dir / "logs"]
    stale = [path for path in stale if path.exists()]
    if not stale:
        return
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    kept = run_dir / EARLIER_STARTS / stamp
    suffix = 1
    while kept.exists():  # two restarts within a second
        kept = run_dir / EARLIER_STARTS / f"{stamp}-{suffix}"
        suffix += 1
    kept.mkdir(parents=True)
    shutil.copy2(run_dir / CONFIG_FILE, kept / CONFIG_FILE)
    for path in stale:
        with contextlib.suppress(FileNotFoundError):  # another node's process moved it
            shutil.move(path, kept / path.name)
    changed = config_differences(before, cfg, ignore=RESUME_MAY_CHANGE)
    differences = f" with another config ({format_differences(changed)})" if changed else ""
    print_once(
        f"notice: {run_dir} held a start of this run that stopped before its first resumable "
        f"checkpoint; starting it again from nothing{differences}. The earlier start's "
        f"weights and logs are in {kept}"
    )


def notice_images_under_crop(
    samples: Sequence[SampleFiles], sizes: Sequence[tuple[int, int]], crop_size: Sequence[int]
) -> None:
    """A notice when training images (sizes: (H, W) each) are smaller than the crop in
    either side: their crops are mostly void padding, which trains nothing and still costs
    the compute of a whole crop."""
    crop_height, crop_width = crop_size
    under = [i for i, (h, w) in enumerate(sizes) if h < crop_height or w < crop_width]
    if not under:
        return
    smallest = min(under, key=lambda i: sizes[i][0] * sizes[i][1])
    fit_height = min(crop_height, *(h for h, _ in sizes))
    fit_width = min(crop_width, *(w for _, w in sizes))
    print_once(
        f"notice: {len(under)} of {len(sizes)} training images are smaller than "
        f"data.crop_size {crop_height}x{crop_width} (the smallest: "
        f"{sizes[smallest][0]}x{sizes[smallest][1]}, {samples[smallest].image}); their "
        f"crops are padded with void pixels, which train nothing. A crop of at most "
        f"{fit_height}x{fit_width} fits every image: --set "
        f"data.crop_size=[{fit_height},{fit_width}]"
    )


def build_dataset(data_cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    """The `split` of the configured data set, with the training augmentation if `train`
    (else normalisation only); ConfigError if its classes disagree with the config."""
    if train:
        transform = build_train_transform(
            data_cfg.crop_size,
            data_cfg.scale_range,
            data_cfg.hflip,
            data_cfg.color_jitter,
            data_cfg.ignore_index,
        )
    else:
        transform = build_eval_transform()
    root = Path(data_cfg.root)
    if data_cfg.format == "cityscapes":
        dataset: SegmentationDataset = CityscapesDataset(
            root, split, transform, data_cfg.ignore_index
        )
    else:
        dataset = FolderDataset.split(root, split, transform)
    for key, expected, found in (
        ("num_classes", data_cfg.num_classes, dataset.num_classes),
        ("ignore_index", data_cfg.ignore_index, dataset.ignore_index),
    ):
        if expected != found:
            # The config states the class set (the model is built from it before any data
            # is read); the error gives the setting that fits the data.
            raise ConfigError(
                f"data.{key}={expected} but the data set in {root} has {found}: set "
                f"data.{key}: {found} in the config, or --set data.{key}={found}"
            )
    return dataset


def build_distillation(cfg: SegConfig, model: nn.Module) -> tuple[MethodSet, Teacher]:
    """The teacher and the methods of `cfg.distill`. Feature-level methods size their
    adapters from the channels of the feature taps, read from one forward pass of student
    and teacher on a small dummy image. That pass also checks, before any training (or a
    teacher cache that may take hours), that the teacher predicts the data set's classes,
    that the student has what the methods read (e.g. an uncertainty head) and that the
    teacher has the spread they read (ConfigError otherwise)."""
    assert cfg.distill is not None
    spec = cfg.distill.teacher
    assert spec.path is not None  # validate_config requires it
    if not Path(spec.path).exists():
        # The configs point at where their own commands put the teacher; another
        # --run-dir puts it elsewhere.
        raise CheckpointError(
            f"the teacher {spec.path} does not exist: train it first, or point "
            "distill.teacher.path at it (--set distill.teacher.path=DIR)"
        )
    teacher = build_teacher(spec.kind, spec.path, spec.samples)
    probe = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)
    model.eval()  # batch norm cannot run in train mode on one 1x1 feature
    with torch.no_grad():
        student_output = model(probe)
        teacher_signals = teacher.signals(probe, {"features", "mean_probs"})
    model.train()
    assert teacher_signals.mean_probs is not None  # asked for
    teacher_classes = teacher_signals.mean_probs.shape[1]
    if teacher_classes != cfg.data.num_classes:
        # Caught here, the losses would fail on shapes, or (DUDES) train on nonsense.
        raise ConfigError(
            f"distill.teacher.path={spec.path!r} predicts {teacher_classes} classes, but "
            f"data.num_classes is {cfg.data.num_classes}: distil a teacher of this data set"
        )
    methods = build_methods(
        [dataclasses.asdict(method) for method in cfg.distill.methods],
        cfg.data.num_classes,
        student_channels={name: t.shape[1] for name, t in student_output.features.items()},
        teacher_channels={name: t.shape[1] for name, t in teacher_signals.features.items()},
        ignore_index=cfg.data.ignore_index,
        aux_ce_weight=cfg.model.aux_loss_weight,
    )
    methods.check_student(student_output)
    _check_teacher_disagrees(spec.kind, teacher, methods)
    return methods, teacher


def _check_teacher_disagrees(kind: str, teacher: Teacher, methods: MethodSet) -> None:
    """ConfigError when methods read the teacher's spread (DUDES' pred_std, Holder's std,
    U-KD's variance) from a teacher of one pass, whose spread is zero everywhere: the
    student would learn to be certain everywhere."""
    readers = {
        name: sorted(method.needs & DISAGREEMENT_SIGNALS)
        for name, method in methods.named_methods()
        if method.needs & DISAGREEMENT_SIGNALS
    }
    if readers and teacher.passes < 2:
        read = "; ".join(f"{name} reads {', '.join(signals)}" for name, signals in readers.items())
        raise ConfigError(
            f"distill.teacher.kind={kind!r} gives one forward pass, whose spread is 0 "
            f"everywhere ({read}): distil an ensemble (kind: ensemble) or an MC-dropout "
            "network (kind: mc_dropout)"
        )


def add_unlabeled_images(dataset: SegmentationDataset, folder: Path) -> SegmentationDataset:
    """`dataset` plus every image (png/jpg) in `folder` and its sub-folders as an unlabelled
    sample (label all `ignore_index`): the cross-entropy skips them and the teacher's signals
    teach the student there, as in NfS-SegNet's incremental training on teacher-labelled
    images. Sub-folders are searched because extra data usually comes in city folders
    (Cityscapes' leftImg8bit/train_extra/<city>/); a sample is named by its path below
    `folder`, so equal file names in two folders stay two samples."""
    images = require_images_below(folder, "distill.unlabeled_root")
    mapping = LabelMapping.identity(dataset.num_classes, dataset.ignore_index)
    unlabeled = [
        SampleFiles(
            f"unlabeled/{p.relative_to(folder).with_suffix('').as_posix()}", p, None, mapping
        )
        for p in images
    ]
    return SegmentationDataset(
        [*dataset.samples, *unlabeled],
        dataset.classes,
        dataset.colors,
        dataset.ignore_index,
        dataset.transform,
        classes_file=dataset.classes_file,
    )


def init_from_pretrained(model: nn.Module, model_cfg: ModelConfig, source: str) -> None:
    """Holder & Shafique's two-stage recipe, stage 2 start: load the encoder and decoder of a
    student pre-trained with labels (a run directory, or a weights file) into `model`; its
    heads (segmentation, uncertainty, auxiliary) keep their fresh initialisation. The
    pre-trained network must have the same arch, encoder and encoder options (a
    ConfigError otherwise); its head weights are skipped, whatever their shapes."""
    path = weights_path(source)
    pretrained_cfg, _ = read_architecture(path)
    for key in ("arch", "encoder", "encoder_options", "decoder_channels"):
        theirs, ours = getattr(pretrained_cfg, key), getattr(model_cfg, key)
        if theirs != ours:
            raise ConfigError(
                f"distill.init_from={source!r}: its model.{key} is {theirs!r}, this "
                f"student's {ours!r}; pre-train the student with the same network"
            )
    state = load_segmenter(path)[0].state_dict()
    body = {key: value for key, value in state.items() if key.startswith(PRETRAINED_PARTS)}
    # strict=False for the heads only: the body must match exactly (same architecture).
    missing, unexpected = model.load_state_dict(body, strict=False)
    assert not unexpected and not any(k.startswith(PRETRAINED_PARTS) for k in missing)
    rank_zero_info(
        f"distill.init_from: encoder and decoder from {path}; skipped its "
        f"{_modules(state.keys() - body.keys())}; fresh: {_modules(missing)}"
    )


def _modules(keys: Any) -> str:
    """ "seg_head, uncertainty_head (6 tensors)": the top-level modules of state-dict keys."""
    names = sorted({key.split(".")[0] for key in keys})
    return f"{', '.join(names) or 'nothing'} ({len(keys)} tensors)"


def attach_teacher_cache(
    cfg: SegConfig, methods: MethodSet, teacher: Teacher, train_set: SegmentationDataset
) -> tuple[TeacherCacheDataset, Teacher | None]:
    """Open (or build) `distill.teacher_cache` for the signals only pixel-wise methods read
    and wrap the training set so its samples carry them. Returns the wrapped set and the
    teacher, or None when the cache covers every signal the methods need (the teacher is
    then not kept in memory)."""
    assert cfg.distill is not None and cfg.distill.teacher_cache is not None
    signals = methods.pixel_needs
    if not signals:
        shared = methods.pixel_needs_read_online
        why = (
            f"what the pixel-wise methods read ({', '.join(sorted(shared))}) is read by an "
            "online method too, so it comes from the teacher"
            if shared
            else "none of the methods reads per-pixel teacher outputs a cache can hold ("
            f"{', '.join(PIXEL_METHODS)} do); the others run the teacher online"
        )
        raise ConfigError(
            f"distill.teacher_cache={cfg.distill.teacher_cache!r}: nothing to cache: {why}; "
            "remove distill.teacher_cache"
        )
    stored = frozenset(cfg.distill.cache_signals or signals)
    cacheable = SIGNAL_NAMES - {"features"}
    if not stored <= cacheable or not signals <= stored:
        raise ConfigError(
            f"distill.cache_signals={sorted(stored)} must name signals of "
            f"{sorted(cacheable)} and include {sorted(signals)}, which the methods read"
        )
    spec = cfg.distill.teacher
    kind = f"mc_dropout(samples={spec.samples})" if spec.kind == "mc_dropout" else spec.kind
    key = cache_key(teacher, kind, stored, cfg.distill.cache_scale, train_set)
    device = _local_device(cfg.trainer.accelerator)
    cache = open_or_build(cfg.distill.teacher_cache, teacher, key, train_set, device)
    cache = cache.only(signals)  # a shared cache may hold other students' signals too
    online = methods.needs - cache.signals
    return TeacherCacheDataset(train_set, cache), (teacher if online else None)


def _local_device(accelerator: str) -> torch.device:
    """This process's device before Lightning sets up: its local GPU if it trains on one."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        # torchrun and Lightning's own launcher set LOCAL_RANK; plain `srun` SLURM_LOCALID.
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def batches_per_epoch(
    num_images: int, world_size: int, batch_size: int, limit: int | float | None
) -> int:
    """Training batches per epoch and process: full batches of one process's share
    (`EpochLoader`), cut by `trainer.limit_train_batches` (a count, or a fraction) as
    Lightning does."""
    batches = num_images // world_size // batch_size
    if isinstance(limit, int):
        return min(batches, limit)
    if isinstance(limit, float):
        return int(batches * limit)
    return batches


class _DropCloudLoggerTip(logging.Filter):
    """Drops Lightning's tip to install its cloud logger (litlogger), which it prints at
    every Trainer: an experiment builds one per network, and this toolkit runs offline."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropCloudLoggerTip())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes and `weights_only=True` loads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(path, lambda file: torch.save(checkpoint, file))

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Lightning's default map location is the CPU; the strategy moves tensors later.
        location: Any = "cpu" if map_location is None else map_location
        try:
            return super().load_checkpoint(path, map_location=location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:  # torch raises a different type for each kind of damage
            raise CheckpointError(
                f"{path}: cannot be read as a training checkpoint ({short_reason(error)}): it is "
                "truncated or corrupt, or holds objects other than tensors and plain values, "
                "which segdistill never unpickles; delete it to train again from the start"
            ) from error


def best_validation(run_dir: Path) -> tuple[float, int] | None:
    """(best val/miou, the epoch it came after, counted from 1) over the run's CSV logs, a
    resumed run's new version folders included: the epoch whose weights best.safetensors
    holds. None before the first validation."""
    best = None
    logs = (run_dir / "logs" / "csv").glob("version_*/metrics.csv")
    # In the order the sessions ran: version_10 after version_2.
    for path in sorted(logs, key=lambda log: int(log.parent.name.removeprefix("version_"))):
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                if row.get("val/miou"):
                    miou = float(row["val/miou"])
                    if best is None or miou > best[0]:  # the first of equal ones, as saved
                        best = (miou, int(row["epoch"]) + 1)
    return best


def build_trainer(
    cfg: SegConfig,
    run_dir: Path,
    classes: ClassesSpec | None = None,
    callbacks: Sequence[Callback] = (),
) -> L.Trainer:
    """The Lightning Trainer of a run: loggers and checkpoints in `run_dir`; the weights
    files carry `classes` (the data set's) when given; `callbacks` run first."""
    t = cfg.trainer
    try:
        return _lightning_trainer(cfg, run_dir, classes, callbacks)
    except MisconfigurationException as error:  # e.g. more devices than the machine has
        raise ConfigError(
            f"Lightning refuses trainer.accelerator={t.accelerator!r}, devices={t.devices}, "
            f"num_nodes={t.num_nodes}, precision={t.precision!r}: {error}"
        ) from error


def _lightning_trainer(
    cfg: SegConfig, run_dir: Path, classes: ClassesSpec | None, callbacks: Sequence[Callback]
) -> L.Trainer:
    t = cfg.trainer
    distributed = t.devices * t.num_nodes > 1
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        # static_graph: heads no loss reads (aux heads without an aux loss, uncertainty heads
        # in plain supervised training) are found once instead of failing DDP's gradient
        # reduction.
        strategy=DDPStrategy(static_graph=True) if distributed else "auto",
        precision=t.precision,
        max_epochs=t.max_epochs,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        benchmark=not t.deterministic,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm="norm",
        # EpochLoader shards the data itself (Lightning's sampler would not be resumable).
        use_distributed_sampler=False,
        # RunCheckpoints writes every checkpoint; Lightning's own callback is not used.
        enable_checkpointing=False,
        # On SLURM, Lightning's requeue on SIGUSR1 is off: it saves an hpc_ckpt_N.ckpt that
        # --resume (last.ckpt) never reads, a full checkpoint more per requeue. A requeued
        # job continues from last.ckpt instead (`segdistill train`, the ensemble and the
        # experiment pipeline resume by themselves).
        plugins=[
            AtomicCheckpointIO(),
            *([SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []),
        ],
        logger=[
            CSVLogger(run_dir / "logs", name="csv"),
            TensorBoardLogger(run_dir / "logs", name="tensorboard"),
        ],
        callbacks=[
            *callbacks,
            RunCheckpoints(
                run_dir / "checkpoints",
                cfg.model,
                classes,
                t.checkpoint_every_n_steps,
                t.keep_best,
            ),
            LearningRateMonitor(logging_interval="step"),
            EndProgressBarsOnError(),
        ],
        default_root_dir=run_dir,
    )


class SegmentationTask(L.LightningModule):
    """One network trained with a MethodSet's loss; validation mIoU every epoch.

    model:      a segmenter returning `SegOutput`, with an `.encoder` (its parameters get
                the base lr, all others `decoder_lr_mult` times it).
    methods:    the loss; None is plain cross-entropy (`MethodSet()`).
    teacher:    gives the signals the methods need (`methods.needs`) that the batch does not
                carry (`signals_from_batch`). Frozen, in eval mode, never trained.
    total_steps: optimiser steps of the whole run (the poly schedule reaches 0 there).
    channels_last: hold the model and the methods' modules, and each batch's images, in
                the channels-last memory format (`trainer.channels_last`).
    example_size: (H, W) of the training crops, for the model summary's FLOPs and sizes.
    """

    teacher: Teacher | None  # set past nn.Module's registration, see __init__

    def __init__(
        self,
        model: Segmenter,
        optim_cfg: OptimConfig,
        methods: MethodSet | None = None,
        teacher: Teacher | None = None,
        *,
        total_steps: int,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        channels_last: bool = False,
        example_size: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        if example_size is not None:
            # Lightning's model summary runs it once (eval mode, no grad) to count the
            # network's FLOPs per crop and show its input and output sizes.
            self.example_input_array = {"image": torch.zeros(1, 3, *example_size)}
        self.methods = methods if methods is not None else MethodSet(ignore_index=ignore_index)
        # Deliberately not a submodule: the teacher is not trained, must not be written
        # into every checkpoint, and DDP must not wrap it or broadcast its buffers each
        # step. `on_fit_start` moves it to the task's device.
        object.__setattr__(self, "teacher", teacher)
        self.optim_cfg = optim_cfg
        self.total_steps = total_steps
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.channels_last = channels_last
        if channels_last:  # the student and the methods' adapters; not the teacher
            self.to(memory_format=torch.channels_last)
        self.val_evaluator = self._new_evaluator()

    def forward(self, image: Tensor) -> SegOutput:
        """The student's output for images [B, 3, H, W] (what the model summary runs)."""
        return self.model(image)

    def _new_evaluator(self) -> SegmentationEvaluator:
        # Only the mIoU is read here; coarse uncertainty bins keep the update cheap.
        return SegmentationEvaluator(
            self.num_classes,
            inputs="probs",
            ignore_index=self.ignore_index,
            num_bins=10,
            plot_bins=10,
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> Any:
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)
        self._train_translators()

    def on_train_start(self) -> None:
        # A resumed run restored its optimiser's learning rates from last.ckpt: those of the
        # old schedule's next step. With a longer run (trainer.max_epochs raised) the poly
        # schedule is another; set the rates of this one at the restored step, or the first
        # step would run at the old rate (0 for a finished run). A fresh run is unchanged.
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)  # the poly one
            step = scheduler.last_epoch
            for group, base, factor in zip(
                scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas
            ):
                group["lr"] = base * factor(step)

    def _train_translators(self) -> None:
        """He et al.'s stage 1, before the first step: every translator awaiting it
        (`MethodSet.translators_to_train`) trains for one epoch on the teacher's features of
        the training images (their training augmentation, full batches, as many as
        `trainer.limit_train_batches` allows, so a short trial stays short). A resumed run has
        restored the translators, `trained` flag included, from last.ckpt before this hook,
        so stage 1 is not redone. Every process trains on all images; with several
        processes the first one's translator is then broadcast to the others."""
        pending = self.methods.translators_to_train()
        if not pending:
            return
        if self.teacher is None:
            raise TrainingError("stage 1 (the translators) needs the teacher's features")
        # Lightning sets `trainer.datamodule` in fit(); its Trainer class does not declare it.
        data: SegDataModule = self.trainer.datamodule  # type: ignore[attr-defined]
        loader = DataLoader(
            data.train_set,
            batch_size=data.batch_size,
            shuffle=True,
            num_workers=data.num_workers,
            worker_init_fn=ignore_ctrl_c,
            drop_last=True,  # batch norm in the translator needs full batches
        )
        batches = batches_per_epoch(
            len(data.train_set), 1, data.batch_size, self.trainer.limit_train_batches
        )
        for name, tap, translator in pending:
            features = TeacherFeatures(self.teacher, loader, tap, self.device, batches)
            history = train_translator(features, translator)
            rank_zero_info(
                f"method {name!r}, stage 1: translator trained on the teacher's {tap!r} "
                f"features, {len(history)} steps, reconstruction loss "
                f"{history[0]:.4g} -> {history[-1]:.4g}"
            )
            if self.trainer.world_size > 1:
                for tensor in translator.state_dict().values():
                    if tensor.is_floating_point():  # weights and batch-norm statistics
                        torch.distributed.broadcast(tensor, src=0)

    def signals_from_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The teacher signals the methods need that the batch carries, `{name:
        batch["maps"][name]}` (a teacher cache adds them to the samples, see
        `segdistill.teacher_cache`); the teacher computes the others."""
        maps = batch.get("maps") or {}
        return {name: maps[name] for name in self.methods.needs if name in maps}

    def teacher_signals(self, batch: dict[str, Any]) -> TeacherSignals:
        """What the methods need from the teacher: from the batch's cache where it has them,
        from the teacher (under no_grad) for the rest."""
        cached: dict[str, Any] = self.signals_from_batch(batch)
        online = self.methods.needs - cached.keys()
        if not online:
            return TeacherSignals(**cached)
        if self.teacher is None:
            raise TrainingError(
                f"the methods need teacher signals {sorted(online)}, but there is no teacher "
                "(distill.teacher.path) and the batch does not carry them"
            )
        with torch.no_grad():
            signals = self.teacher.signals(batch["image"], online)
        return dataclasses.replace(signals, **cached)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        output = self.model(batch["image"])
        signals = self.teacher_signals(batch)
        # Cached maps exist only inside the image, not on crop padding: mask it out.
        teacher_valid = valid_mask(batch.get("maps") or {})
        terms = self.methods(output, signals, batch["label"], teacher_valid)
        self._stop_unless_finite(terms["loss"], batch_idx)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict(
            {f"train/{name}": value for name, value in terms.items() if name != "loss"},
            batch_size=batch_size,
        )
        return terms["loss"]

    def _stop_unless_finite(self, loss: Tensor, batch_idx: int) -> None:
        """TrainingError before the update when the loss is NaN or infinite on any process
        (all processes stop together; the last checkpoint stays the last good one)."""
        finite = bool(torch.isfinite(loss))
        if self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        raise TrainingError(
            f"the loss is not finite (here {loss.item()}) at global step {self.global_step}, "
            f"epoch {self.current_epoch}, batch {batch_idx}; training stopped before this "
            "update and wrote no checkpoint after it (train again with a lower optim.lr in "
            "a new --run-dir; --resume would continue with the same settings)"
        )

    def stop_unless_weights_finite(self) -> None:
        """TrainingError when a weight or statistic of the network is NaN or infinite: a run
        can diverge with every loss finite (the last update overflows), and such weights
        would be validated into NaN and saved. Every process holds the same weights, so
        all stop together."""
        tensors = itertools.chain(self.model.named_parameters(), self.model.named_buffers())
        diverged = [
            name
            for name, tensor in tensors
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
        ]
        if diverged:
            more = f" and {len(diverged) - 1} more" if len(diverged) > 1 else ""
            raise TrainingError(
                f"the network's weights are not finite ({diverged[0]}{more}) at global step "
                f"{self.global_step}, epoch {self.current_epoch}: training diverged although "
                "every loss was finite; no checkpoint was written after it (train again with "
                "a lower optim.lr in a new --run-dir)"
            )

    def on_validation_epoch_start(self) -> None:
        self.stop_unless_weights_finite()
        self.val_evaluator.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Whole images, padded as `segdistill evaluate` and `predict` pad them, so the
        # validation mIoU is the one they would measure.
        probs = padded_segmenter_prediction(self.model, batch["image"]).probs
        self.val_evaluator.update(probs, None, batch["label"])

    def on_validation_epoch_end(self) -> None:
        evaluator = self.val_evaluator
        if self.trainer.world_size > 1:
            # Every process saw a share of the images: merge the confusion matrices.
            states: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, evaluator.state_dict())
            evaluator = self._new_evaluator()
            for state in states:
                part = self._new_evaluator()
                part.load_state_dict(state)
                evaluator.merge(part)
        miou = evaluator.compute()["segmentation"]["miou"]
        # Every process holds the same merged value: averaging over processes keeps it.
        self.log("val/miou", math.nan if miou is None else miou, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        cfg = self.optim_cfg
        encoder = [p for p in self.model.encoder.parameters() if p.requires_grad]
        in_encoder = {id(p) for p in encoder}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in in_encoder]
        groups = [
            {"params": encoder, "lr": cfg.lr},
            {"params": others, "lr": cfg.lr * cfg.decoder_lr_mult},
        ]
        if cfg.name == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total, power = self.total_steps, cfg.poly_power
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1.0 - step / total) ** power
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class TeacherFeatures:
    """The teacher's feature tap `tap` [B, C, h, w] on the first `max_batches` batches of
    `loader` (all when None), computed on `device` without gradient; re-iterable (each
    iteration is one pass over the loader), as `train_translator` needs."""

    def __init__(
        self,
        teacher: Teacher,
        loader: DataLoader,
        tap: str,
        device: torch.device,
        max_batches: int | None = None,
    ):
        self.teacher = teacher
        self.loader = loader
        self.tap = tap
        self.device = device
        self.max_batches = max_batches

    def __iter__(self) -> Iterator[Tensor]:
        for batch in stop_on_ctrl_c(itertools.islice(self.loader, self.max_batches)):
            images = batch["image"].to(self.device)
            yield self.teacher.signals(images, {"features"}).features[self.tap]


class RunCheckpoints(Callback):
    """Writes a run's checkpoints into `directory`:

    - `last.ckpt`: Lightning's resumable state (weights, optimiser, schedule, loop
      progress, which also fixes the data order to come), after every epoch and every
      `every_n_steps` steps;
    - `last.safetensors` after every epoch, `best.safetensors` when `val/miou` improved
      (unless not `keep_best`; weights with their architecture and `classes`,
      `segdistill.checkpoints`).

    All writes are atomic. A step that raises (e.g. a NaN loss) never reaches these hooks,
    and weights that are not finite stop the run before a write, so no checkpoint is
    written after a divergence.
    """

    def __init__(
        self,
        directory: Path,
        model_config: ModelConfig,
        classes: ClassesSpec | None = None,
        every_n_steps: int | None = None,
        keep_best: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.model_config = model_config
        self.classes = classes
        self.keep_best = keep_best
        self.every_n_steps = every_n_steps
        self.best_miou = -math.inf

    def on_train_batch_end(
        self, trainer: L.Trainer, task: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        # With gradient accumulation only some batches end with an optimiser step (Lightning
        # steps after every `accumulate_grad_batches`); a checkpoint between them would lose
        # the gradients summed so far. None at the epoch's last batch: the epoch's own
        # checkpoint follows its validation, and a resume from one written before it would
        # skip that validation and train the next epoch with this epoch's seed (Lightning
        # counts the epoch done only after it made the next epoch's loader).
        stepped = (idx + 1) % trainer.accumulate_grad_batches == 0 and (
            idx + 1 != trainer.num_training_batches
        )
        if self.every_n_steps and stepped and trainer.global_step % self.every_n_steps == 0:
            assert isinstance(task, SegmentationTask)
            task.stop_unless_weights_finite()
            self._save_resumable(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        assert isinstance(task, SegmentationTask)
        task.stop_unless_weights_finite()
        miou = trainer.callback_metrics.get("val/miou")
        improved = False
        if miou is not None and float(miou) > self.best_miou:
            self.best_miou, improved = float(miou), True
        if trainer.is_global_zero:
            for name in ("best", "last") if improved and self.keep_best else ("last",):
                save_weights(
                    self.directory / f"{name}.safetensors",
                    task.model,
                    self.model_config,
                    self.classes,
                )
        self._save_resumable(trainer)

    def _save_resumable(self, trainer: L.Trainer) -> None:
        # Called by every process in DDP (it synchronises them; the first one writes).
        # weights_only=False: the full training state, not only the weights.
        trainer.save_checkpoint(self.directory / "last.ckpt", weights_only=False)

    def state_dict(self) -> dict[str, float]:
        return {"best_miou": self.best_miou}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_miou = float(state_dict["best_miou"])


class SegDataModule(L.LightningDataModule):
    """Training and validation loaders, made per process once Lightning knows its rank."""

    def __init__(
        self,
        train_set: TrainingSet,
        val_set: SegmentationDataset,
        batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.train_set = train_set
        self.val_set = val_set
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    def _fitting(self) -> L.Trainer:
        if self.trainer is None:
            raise TrainingError("SegDataModule makes its loaders for a Trainer's fit()")
        return self.trainer

    def train_dataloader(self) -> EpochLoader:
        trainer = self._fitting()
        return EpochLoader(
            self.train_set,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            seed=self.seed,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            # The epochs Lightning has run through (restored from the checkpoint on resume).
            # `current` is a _ProcessedTracker, declared as its base class in Lightning.
            epoch=lambda: trainer.fit_loop.epoch_progress.current.processed,  # type: ignore[attr-defined]
        )

    def val_dataloader(self) -> DataLoader:
        # Every image exactly once over the processes (a padded sampler would count some
        # twice), one at a time because full images may differ in size.
        trainer = self._fitting()
        rank, world_size = trainer.global_rank, trainer.world_size
        share = Subset(self.val_set, range(rank, len(self.val_set), world_size))
        return DataLoader(
            share,
            batch_size=1,
            num_workers=self.num_workers,
            worker_init_fn=functools.partial(worker_init, rank),
        )


def epoch_seed(seed: int, epoch: int) -> int:
    """The 32-bit seed of `epoch` in a run seeded `seed`. Pairs are hashed, not added: with
    seed + epoch, ensemble member s + 1 would replay member s's epochs one epoch later."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed the global torch (CPU and CUDA), numpy and `random` generators."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class EpochShard(Sampler[int]):
    """This process's share of a permutation drawn from `self.seed`: every process draws
    the same permutation and takes every `world_size`-th index from `rank`; the tail that
    does not divide evenly is left out, so all processes get as many batches."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.size = size
        self.rank = rank
        self.world_size = world_size
        self.seed = 0

    def __len__(self) -> int:
        return self.size // self.world_size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed))
        return iter(order[self.rank : len(self) * self.world_size : self.world_size].tolist())


class EpochLoader(DataLoader):
    """The training loader: every epoch is a function of (seed, epoch) only.

    Each `iter()` starts an epoch. It first reseeds torch, numpy and `random` with
    `epoch_seed(seed, epoch())`; the shuffled order, the DataLoader worker seeds (drawn
    from torch's generator), the augmentations and the dropout of the epoch all follow
    from it. A run resumed from an end-of-epoch checkpoint therefore replays the very
    epochs an uninterrupted run sees. Incomplete batches are dropped (batch norm needs
    full ones).

    epoch: returns the index of the epoch being started (read at `iter()` time, because
    Lightning creates the first iterator of a resumed run before it calls `set_epoch`).
    """

    def __init__(
        self,
        dataset: TrainingSet,
        *,
        batch_size: int,
        num_workers: int,
        seed: int,
        rank: int,
        world_size: int,
        epoch: Callable[[], int],
    ) -> None:
        shard = EpochShard(len(dataset), rank, world_size)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=shard,
            num_workers=num_workers,
            worker_init_fn=functools.partial(worker_init, rank),
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
        )
        self.shard = shard
        self.seed = seed
        self.epoch = epoch

    def __iter__(self) -> _BaseDataLoaderIter:
        seed = epoch_seed(self.seed, self.epoch())
        seed_all(seed)
        self.shard.seed = seed
        return super().__iter__()
