"""The data step and the networks' steps: the configs each network trains with, and
the checks that a finished network still matches them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import safetensors.torch

from segdistill.atomic import atomic_write
from segdistill.checkpoints import CONFIG_FILE, load_segmenter
from segdistill.config import (
    SAME_RECIPE_MAY_CHANGE,
    SegConfig,
    format_differences,
    load_config,
    network_differences,
    replace_values,
)
from segdistill.data.base import folders_overlap
from segdistill.data.folder import require_images_below
from segdistill.data.synthstreets import SynthConfig, generate
from segdistill.defaults import RESUME_CHECKPOINT
from segdistill.ensemble import member_config, train_member, write_manifest
from segdistill.errors import CheckpointError, ConfigError, DataError
from segdistill.evaluate import find_splits, select_splits
from segdistill.methods import METHODS
from segdistill.models import build_encoder, load_encoder_weights
from segdistill.models.teachers import DISAGREEMENT_SIGNALS
from segdistill.pipeline.checks import split_metric_name
from segdistill.pipeline.experiment import (
    AblationSpec,
    DataSpec,
    Experiment,
    LoadedExperiment,
    StudentSpec,
    UnlabeledSpec,
    seeded_name,
)
from segdistill.pipeline.run_dir import ENCODER_FILE, RunPaths, Step
from segdistill.predictor import default_device
from segdistill.train import check_accelerator, train


def prepare_all_data(spec: Experiment) -> dict[str, Any]:
    """The `data` step: the data set of every network and, with an `unlabeled` section, the
    students' unlabelled images; then the split names the experiment reads are checked
    against it (`check_split_names`), before any network trains."""
    prepared = prepare_data(spec.data)
    if spec.unlabeled is not None:
        prepared["unlabeled"] = prepare_unlabeled(spec.unlabeled)
    check_split_names(spec)
    if spec.unlabeled is not None:
        check_unlabeled_apart(spec)
    return prepared


def check_unlabeled_apart(spec: Experiment) -> None:
    """ConfigError when the unlabelled images' folder holds, lies in, or is a folder of
    the data set that the students must not learn from as images: the images of the
    validation split and of every evaluated split (the students would have seen them),
    and any split's masks (they would be read as images)."""
    assert spec.unlabeled is not None
    images = Path(spec.unlabeled.images)
    available = find_splits(Path(spec.data.root))
    evaluated = {split.name for split in select_splits(available, spec.evaluate.splits)}
    for split in available.values():
        folders = [("masks", split.masks)]
        if split.name in evaluated or split.name == "val":
            folders.append(("images", split.images))
        for what, folder in folders:
            if folders_overlap(images, folder):
                raise ConfigError(
                    f"unlabeled.root={spec.unlabeled.root!r}: its images would include the "
                    f"{what} of the data set's {split.name!r} split ({folder}); give a "
                    "folder of other images only, e.g. Cityscapes' leftImg8bit/train_extra"
                )


def check_split_names(spec: Experiment) -> None:
    """ConfigError naming a split that `evaluate.splits`, the table, a check or an ablation
    reads and the data set (or the evaluation) does not have. Found after training, such a
    typo cost the training: the corrected config is another experiment, refused in that
    run directory."""
    available = find_splits(Path(spec.data.root))
    try:
        evaluated = [split.name for split in select_splits(available, spec.evaluate.splits)]
    except DataError as error:
        raise ConfigError(f"evaluate.splits: {error}") from None
    named: list[tuple[str, str | None]] = [("table.split", spec.table.split)]
    named += [
        (f"table.columns {c!r}", split_metric_name(c, "table")[1]) for c in spec.table.columns
    ]
    named += [(f"check {c.name!r}", split_metric_name(c.metric, "check")[1]) for c in spec.checks]
    for where, split in named:
        if split is not None and split not in evaluated:
            raise ConfigError(
                f"{where}: split {split!r} is not evaluated (evaluate.splits gives "
                f"{', '.join(evaluated)}); its values would be missing ('-') and the check fail"
            )
    for ablation in spec.ablations:
        if ablation.split not in available:
            raise ConfigError(
                f"ablation {ablation.name!r}: split {ablation.split!r} not found under "
                f"{spec.data.root}; available: {', '.join(available)}"
            )


def prepare_unlabeled(unlabeled: UnlabeledSpec) -> dict[str, Any]:
    """Generate the train split of `unlabeled.synth` into its root unless it is there;
    check that the images folder holds images (the error names it otherwise)."""
    if unlabeled.synth is not None:
        train_only = dataclasses.replace(unlabeled.synth, val=0, test=0, shifts=[])
        prepare_data(DataSpec(root=unlabeled.root, synth=train_only))
    images = require_images_below(Path(unlabeled.images), "unlabeled")
    return {"images": unlabeled.images, "count": len(images)}


def prepare_data(data: DataSpec) -> dict[str, Any]:
    """Generate SynthStreets into data.root unless the same data set is there; without a
    `synth` section, check that the folder holds images."""
    root = Path(data.root)
    synth = data.synth
    if synth is None:
        splits = find_splits(root)
        if "train" not in splits:
            raise DataError(f"{root} has no train split (leftImg8bit/train/...)")
        return {"root": str(root), "generated": False, "splits": list(splits)}
    # SynthSpec holds SynthConfig's fields, as YAML gives them (lists, not tuples).
    values = dataclasses.asdict(synth)
    config = SynthConfig(**{**values, "size": tuple(synth.size), "shifts": tuple(synth.shifts)})
    generated = generate(root, config, workers=os.cpu_count() or 1)
    if not generated:
        print(f"  {root}: already there (same SynthStreets parameters)")
    return {"root": str(root), "generated": generated}


def network_config(
    exp: LoadedExperiment,
    config: str,
    values: dict[str, Any],
    paths: RunPaths,
    run_dir: Path,
    role: str,
    data_root: str | None = None,
) -> SegConfig:
    """A network's training config: the file `config` (relative to the experiment file),
    then the experiment's `set`, then `values`; data.root (default: the experiment's),
    run.dir and run.experiment_dir are forced."""
    path = exp.config_path(config)
    if not path.is_file():
        # load_config's own error would name the file only, not the experiment's key.
        raise ConfigError(
            f"{exp.path}: the {role} names the training config {config!r}, but {path} "
            "does not exist (config paths are relative to the experiment file)"
        )
    cfg = load_config(path)
    forced = {
        "data.root": data_root or exp.spec.data.root,
        "run.dir": str(run_dir),
        "run.experiment_dir": str(paths.root),
    }
    return replace_values(cfg, {**exp.spec.set, **values, **forced}, f"{exp.path} ({role})")


def teacher_config(exp: LoadedExperiment, paths: RunPaths) -> SegConfig:
    """The teacher's training config; with `pretrain.teacher`, its encoder starts from the
    teacher's pre-trained one."""
    teacher = exp.spec.teacher
    values = {**teacher.set, "ensemble.members": teacher.members}
    if exp.spec.pretrain is not None and exp.spec.pretrain.teacher:
        values["model.encoder_weights"] = str(paths.pretrained_teacher_encoder)
    return network_config(exp, teacher.config, values, paths, paths.teacher, "teacher")


def pretrain_config(exp: LoadedExperiment, paths: RunPaths) -> SegConfig:
    """The students' pre-training network: `pretrain.config` + the experiment's and the
    pretrain's `set`, on the pretrain data."""
    pretrain = exp.spec.pretrain
    assert pretrain is not None
    return network_config(
        exp, pretrain.config, pretrain.set, paths, paths.pretrain, "pretrain", pretrain.data.root
    )


def pretrain_teacher_config(exp: LoadedExperiment, paths: RunPaths) -> SegConfig:
    """The teacher's pre-training network: the students' pre-training recipe
    (`pretrain_config`) with the teacher's whole `model` section (architecture, encoder,
    width, output stride), from random weights."""
    teacher = exp.spec.teacher
    teacher_cfg = network_config(exp, teacher.config, teacher.set, paths, paths.teacher, "teacher")
    cfg = pretrain_config(exp, paths)
    # Replaced whole, not merged: no encoder option of the students' network may leak in.
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(teacher_cfg.model, encoder_weights=None),
        run=dataclasses.replace(cfg.run, dir=str(paths.pretrain_teacher)),
    )


def _encoder_start(exp: LoadedExperiment, paths: RunPaths) -> dict[str, Any]:
    """`model.encoder_weights` for the baseline and the students: the pre-trained encoder
    when the experiment has a `pretrain` section, else nothing."""
    if exp.spec.pretrain is None:
        return {}
    return {"model.encoder_weights": str(paths.pretrained_encoder)}


def _offset_seed(cfg: SegConfig, seed_offset: int, source: str) -> SegConfig:
    """The config with its seed + seed_offset (`Experiment.seeds`)."""
    if seed_offset == 0:
        return cfg
    return replace_values(cfg, {"seed": cfg.seed + seed_offset}, source)


def baseline_config(exp: LoadedExperiment, paths: RunPaths, seed_offset: int = 0) -> SegConfig:
    """The baseline's training config, with its seed + seed_offset."""
    baseline = exp.spec.baseline
    assert baseline.config is not None
    values = {**baseline.set, **_encoder_start(exp, paths)}
    run_dir = paths.baseline(baseline, seed_offset)
    cfg = network_config(exp, baseline.config, values, paths, run_dir, "baseline")
    return _offset_seed(cfg, seed_offset, f"{exp.path} (baseline)")


def student_config(
    exp: LoadedExperiment,
    paths: RunPaths,
    student: StudentSpec,
    values: dict[str, Any] | None = None,
    run_dir: Path | None = None,
    seed_offset: int = 0,
) -> SegConfig:
    """A student's distillation config with its seed + seed_offset: its teacher is the
    experiment's, its baseline (init_from_baseline) the one of the same seed offset;
    `values` and `run_dir` serve the sweeps. Every seed reads the same teacher cache (it
    depends on the teacher and the images only)."""
    teacher = exp.spec.teacher
    distill = {
        "distill.teacher": {
            "kind": teacher.kind,
            "path": str(paths.teacher),
            "samples": teacher.samples,
        },
        "distill.teacher_cache": (
            str(paths.cache(student.cache or student.name)) if student.teacher_cache else None
        ),
        **(
            {"distill.unlabeled_root": exp.spec.unlabeled.images}
            if exp.spec.unlabeled is not None
            else {}
        ),
        "distill.init_from": (
            str(paths.baseline(exp.spec.baseline, seed_offset))
            if student.init_from_baseline
            else None
        ),
    }
    cfg = network_config(
        exp,
        student.config,
        {**student.set, **(values or {}), **distill, **_encoder_start(exp, paths)},
        paths,
        run_dir or paths.student(student.name, seed_offset),
        f"student {student.name}",
    )
    if cfg.distill is None:
        raise ConfigError(
            f"{exp.path}: student {student.name!r}: {student.config} has no distill section"
        )
    return _offset_seed(cfg, seed_offset, f"{exp.path} (student {student.name})")


def trained_configs(
    exp: LoadedExperiment, paths: RunPaths, seed_offset: int
) -> dict[str, SegConfig]:
    """{name: config} of the baseline (unless it is an ensemble member) and every student
    trained with their seed + seed_offset, named by `seeded_name`."""
    spec = exp.spec
    configs = {}
    if spec.baseline.member is None:
        name = seeded_name(spec.baseline.name, seed_offset)
        configs[name] = baseline_config(exp, paths, seed_offset)
    for student in spec.students:
        name = seeded_name(student.name, seed_offset)
        configs[name] = student_config(exp, paths, student, seed_offset=seed_offset)
    return configs


def check_shared_caches(exp: LoadedExperiment, configs: dict[str, SegConfig]) -> None:
    """Students that share a cache folder must ask it for the same contents, or each would
    rebuild it for the next: the same `distill.cache_signals` (set), `cache_scale` and
    unlabelled images."""
    folders: dict[str, list[str]] = {}
    for student in exp.spec.students:
        if student.teacher_cache:
            folders.setdefault(student.cache or student.name, []).append(student.name)
    for folder, names in folders.items():
        if len(names) < 2:
            continue
        wanted = {}
        for name in names:
            distill = configs[name].distill
            assert distill is not None  # student_config refuses a config without it
            signals = tuple(sorted(distill.cache_signals or ())) or None
            wanted[name] = (signals, distill.cache_scale, distill.unlabeled_root)
        if len(set(wanted.values())) > 1 or any(w[0] is None for w in wanted.values()):
            raise ConfigError(
                f"{exp.path}: students {names} share the teacher cache {folder!r}: give each "
                "the same distill.cache_signals (every signal any of them reads), cache_scale "
                f"and unlabeled_root; they have {wanted}"
            )


def check_before_training(exp: LoadedExperiment, unfinished: list[Step], steps: list[Step]) -> None:
    """What would otherwise fail after the teacher has trained (GPU-days at paper scale),
    for the `unfinished` steps of the plan `steps`: several processes for a network, an
    encoder weights file that is missing or does not fit its encoder (unless a step writes
    it, e.g. a pre-trained encoder), a benchmark or evaluation on a CUDA device this
    machine does not have."""
    configs = [cfg for step in unfinished for cfg in step.trains]
    for cfg in configs:
        try:
            check_accelerator(cfg.trainer.accelerator, "set.trainer.accelerator")
        except ConfigError as error:
            raise ConfigError(f"{exp.path}: {cfg.run.dir}: {error}") from None
        if cfg.trainer.devices * cfg.trainer.num_nodes > 1:
            # Lightning starts the extra processes by running the command line again: here
            # the whole experiment, which then finds its own run directory in use.
            raise ConfigError(
                f"{exp.path}: {cfg.run.dir}: trainer.devices={cfg.trainer.devices} x "
                f"num_nodes={cfg.trainer.num_nodes}: an experiment trains each network in one "
                "process; train ensemble members in parallel with `segdistill ensemble ... "
                "--member I --run-dir RUN_DIR/teacher` first (docs/experiments.md), or a "
                "network with `segdistill train --devices N`"
            )
    made = {path.resolve() for step in steps for path in step.outputs}
    checked: set[tuple[str, str, str]] = set()
    for cfg in configs:
        model = cfg.model
        weights = model.encoder_weights
        key = (str(weights), model.encoder, repr(sorted(model.encoder_options.items())))
        if weights is None or key in checked or Path(weights).resolve() in made:
            continue
        checked.add(key)
        try:
            load_encoder_weights(build_encoder(model.encoder, **model.encoder_options), weights)
        except CheckpointError as error:
            raise ConfigError(
                f"{exp.path}: {cfg.run.dir}: model.encoder_weights: {error} (the file must "
                f"be a {model.encoder} at model.encoder_options {model.encoder_options})"
            ) from None
    spec = exp.spec
    readers = {"bench.device": spec.bench.device, "evaluate.device": spec.evaluate.device}
    if any(step.name not in ("data", "report") for step in unfinished):
        for setting, device in readers.items():
            try:
                default_device(device)
            except ConfigError as error:
                raise ConfigError(f"{exp.path}: {setting}: {error}") from None


def check_teacher_spread(exp: LoadedExperiment, configs: dict[str, SegConfig]) -> None:
    """Refuse, before the teacher trains, students whose methods read the teacher's spread
    (DUDES, Holder, U-KD) from a teacher of one pass (kind single, or a 1-member
    ensemble), whose spread is 0 everywhere (`train.build_distillation` checks it too)."""
    teacher = exp.spec.teacher
    if not (teacher.kind == "single" or (teacher.kind == "ensemble" and teacher.members < 2)):
        return
    for student in exp.spec.students:
        distill = configs[student.name].distill
        assert distill is not None  # student_config refuses a config without it
        spread = [
            m.name
            for m in distill.methods
            if m.name in METHODS and METHODS[m.name].signals & DISAGREEMENT_SIGNALS
        ]
        if spread:
            raise ConfigError(
                f"{exp.path}: student {student.name!r} uses {', '.join(spread)}, which read "
                f"the teacher's spread, but the teacher ({teacher.kind}, one forward pass) "
                "has none: use an ensemble of 2 or more members or an MC-dropout teacher"
            )


def train_network(cfg: SegConfig) -> dict[str, Any]:
    """Train one network into cfg.run.dir, resuming an interrupted run."""
    run_dir = cfg.run.path()
    train(cfg, resume=(run_dir / RESUME_CHECKPOINT).is_file())
    return {"run_dir": str(run_dir)}


def _encoder_shape(cfg: SegConfig) -> tuple[str, Any]:
    """What decides the encoder's parameter shapes (the output stride only dilates)."""
    return cfg.model.encoder, cfg.model.encoder_options.get("width", 1.0)


def check_pretrain_fits(
    exp: LoadedExperiment, pretrain: SegConfig, networks: dict[str, SegConfig]
) -> None:
    """Refuse, before anything is trained, a network (the baseline, a student) whose
    encoder differs from the pre-training network's (its weights would not load)."""
    wanted = _encoder_shape(pretrain)
    for name, cfg in networks.items():
        if _encoder_shape(cfg) != wanted:
            encoder, width = _encoder_shape(cfg)
            raise ConfigError(
                f"{exp.path}: {name!r} has encoder {encoder} at width {width}, the "
                f"pre-training network {wanted[0]} at width {wanted[1]}: set the same "
                "model.encoder and model.encoder_options.width in pretrain.set"
            )


def pretrain_encoder(data: DataSpec, cfg: SegConfig) -> dict[str, Any]:
    """Generate the pre-training `data` (unless it is there), train the network of `cfg`
    on it and write its encoder's state dict to `ENCODER_FILE` in its run directory
    (atomically: a killed step leaves no partial file, and its re-run resumes the training)."""
    prepared = prepare_data(data)
    train_network(cfg)
    run_dir = cfg.run.path()
    model, _ = load_segmenter(run_dir)
    state = {name: tensor.contiguous() for name, tensor in model.encoder.state_dict().items()}
    data_bytes = safetensors.torch.save(state)
    encoder = run_dir / ENCODER_FILE
    atomic_write(encoder, lambda file: file.write(data_bytes))
    return {"data": prepared, "run_dir": str(run_dir), "encoder": str(encoder)}


def teacher_networks(exp: LoadedExperiment, paths: RunPaths) -> tuple[SegConfig, ...]:
    """The config of every network of the teacher: each ensemble member's, or the one."""
    cfg = teacher_config(exp, paths)
    if exp.spec.teacher.kind != "ensemble":
        return (cfg,)
    return tuple(member_config(cfg, paths.teacher, i) for i in range(exp.spec.teacher.members))


def check_finished_networks(step: Step, marker: Path) -> None:
    """Refuse to skip a finished step whose networks were trained with another config than
    the experiment now gives them (e.g. a training config it names was edited): they would
    be mixed into the results as if they were the new ones."""
    for cfg in step.trains:
        saved = cfg.run.path() / CONFIG_FILE
        if not saved.is_file():
            continue
        changed = network_differences(load_config(saved), cfg, ignore=SAME_RECIPE_MAY_CHANGE)
        if changed:
            raise ConfigError(
                f"step {step.name!r} trained {cfg.run.dir} with another config than the "
                f"experiment gives it now ({format_differences(changed)}; compared with "
                f"{saved}): set it back, choose another --run-dir, or delete {marker} and "
                f"{cfg.run.dir} to train it again"
            )


def train_teacher(exp: LoadedExperiment, paths: RunPaths) -> dict[str, Any]:
    """Train the teacher: every ensemble member (finished ones are skipped), or one
    network for an MC-dropout or single teacher."""
    cfg = teacher_config(exp, paths)
    teacher = exp.spec.teacher
    if teacher.kind != "ensemble":
        return train_network(cfg)
    for index in range(teacher.members):
        print(f"  ensemble member {index + 1} of {teacher.members}", flush=True)
        train_member(cfg, paths.teacher, index)
        write_manifest(paths.teacher, teacher.members)
    return {"run_dir": str(paths.teacher), "members": teacher.members}


def sweep_config(
    exp: LoadedExperiment,
    paths: RunPaths,
    ablation: AblationSpec,
    value: Any,
    seed_offset: int = 0,
) -> SegConfig:
    """The config of one sweep network: the student's of that seed offset, with `key` set
    to `value`, in `ablations/<name>/<key's last part>=<value>[-s<offset>]`."""
    assert ablation.key is not None
    student = next(s for s in exp.spec.students if s.name == ablation.student)
    folder = seeded_name(f"{ablation.key.rsplit('.', 1)[-1]}={value}", seed_offset)
    run_dir = paths.ablation(ablation.name) / folder
    return student_config(exp, paths, student, {ablation.key: value}, run_dir, seed_offset)


def sweep_seed_offsets(exp: LoadedExperiment, ablation: AblationSpec) -> range:
    """The seed offsets a sweep trains each value with: 0, or every one with every_seed."""
    return range(exp.spec.seeds if ablation.every_seed else 1)
