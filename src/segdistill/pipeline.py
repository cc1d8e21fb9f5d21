"""The experiment pipeline: from a data set to `results.json` and `report.html`, in steps.

`segdistill demo` and `segdistill experiment CONFIG` both call `run_pipeline`; they differ
only in the experiment config (schema: the dataclasses below and docs/experiments.md).
The steps, in order, each one a function of this module:

    data         generate SynthStreets into data.root unless it is there (`prepare_data`),
                 and the students' unlabelled images with an `unlabeled` section
    pretrain     only with a `pretrain` section: train a network of the students'
                 architecture on other data and keep its encoder, which the baseline and
                 every student start from (`pretrain_encoder`; the papers' ImageNet weights)
    pretrain-teacher  only with `pretrain.teacher: true`: the same for the teacher's
                 architecture; the teacher (every member) starts from that encoder
    teacher      train the teacher: the members of a deep ensemble, an MC-dropout network
                 or one network (`train_teacher`)
    baseline     train the student's network on labels only (`train_network`); skipped
                 when `baseline.member` names an ensemble member instead
    student-N    distil each student from the teacher (`train_network`), the teacher's
                 per-pixel outputs cached when the student's methods allow it
    baseline-sK, with `seeds: K > 1`: the baseline and every student again with their
    student-N-sK  seed + k, for k = 1..K-1 (the table and the checks take the mean)
    evaluate     every model on the test split and every shifted copy (`evaluate_models`)
    ood-detectors  each model's image-level OOD flag, its threshold set on the validation
                 images (`fit_ood_detectors`), saved as the model's ood_detector.json
    bench        latency, parameters and FLOPs of every model (`bench_models`)
    ablation-N   sub-ensembles of the trained members, or one student retrained for each
                 value of a config key (`sub_ensembles`, `sweep`)
    report       results.json, table.md and report.html (`write_results`)

Resumable: a step writes `stages/<step>.json` (its duration and outputs) when it has
finished, and a later run skips every step that has one, whose outputs are all there
(`Step.outputs`) and whose inputs, the outputs of the steps it needs (`Step.needs`), are
the bytes it read (`OutputDigests`); the data step is checked on every run. A network
whose training was interrupted resumes from its last checkpoint; a finished ensemble
member is skipped. The run directory remembers its experiment (`experiment.yaml`): running
another experiment config into it is refused rather than mixing the two, and so is a
second run while one is writing there (`RUN_DIR/.lock`).

Run directory:

    RUN_DIR/experiment.yaml     the experiment config as run (overrides applied)
    RUN_DIR/.lock               held by the run writing there
    RUN_DIR/stages/<step>.json  one marker per finished step (its time, peak memory and
                                the digests of what it read)
    RUN_DIR/pretrain/           run directory of the pre-training network and its
                                encoder.safetensors (only with a `pretrain` section)
    RUN_DIR/pretrain-teacher/   the same for the teacher (only with `pretrain.teacher`)
    RUN_DIR/teacher/            ensemble directory (member_XX/, manifest.json) or run directory
    RUN_DIR/baseline/           run directory (absent when the baseline is an ensemble member)
    RUN_DIR/students/<name>/    run directories
    RUN_DIR/baseline-s<k>/, RUN_DIR/students/<name>-s<k>/
                                the same, trained with seed + k (`seeds: K`, k = 1..K-1)
    RUN_DIR/cache/<name>/       cached teacher outputs of each student (or shared: `cache`)
    RUN_DIR/evaluation/         results.json and figures/ of `segdistill.evaluate`
    RUN_DIR/ood_detectors.json  each model's OOD flag: threshold, aggregator, its file
    RUN_DIR/bench.json          `segdistill.bench` results
    RUN_DIR/ablations/<name>/   the networks and results of each ablation
    RUN_DIR/results.json        everything, for every model (module `write_results`)
    RUN_DIR/table.md            the paper-shaped table and the checks
    RUN_DIR/report.html         the HTML report
"""

from __future__ import annotations

import dataclasses
import datetime
import filecmp
import functools
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import safetensors.torch
import torch
import yaml

from segdistill import __version__, memory
from segdistill.bench import (
    SIZE_NOTE,
    benchmark,
    input_groups,
    input_text,
    paired_ratio,
    to_json,
)
from segdistill.checkpoints import (
    CONFIG_FILE,
    RUN_WEIGHTS,
    atomic_write,
    load_segmenter,
    remove_unfinished_writes,
)
from segdistill.config import (
    SAME_RECIPE_MAY_CHANGE,
    SegConfig,
    _convert,
    config_differences,
    format_differences,
    load_config,
    replace_values,
    to_dict,
)
from segdistill.data.folder import require_images_below
from segdistill.data.shifts import SHIFT_KINDS
from segdistill.data.synthstreets import SynthConfig, generate
from segdistill.defaults import DETECTOR_FILE, RESULTS_FILE, RESUME_CHECKPOINT
from segdistill.ensemble import member_config, train_member, write_manifest
from segdistill.errors import ConfigError, DataError, read_text
from segdistill.evaluate import REFERENCE_SPLIT, SCHEMA_EXPERIMENT, evaluate, find_splits, json_text
from segdistill.methods import METHODS
from segdistill.metrics.segmentation import removal_point
from segdistill.models.teachers import DISAGREEMENT_SIGNALS, MANIFEST_FILE, Ensemble
from segdistill.ood_detector import scored_map
from segdistill.output_paths import check_output_folder, held_folder
from segdistill.predict import find_images, fit_ood_detector, score_images
from segdistill.predictor import UNCERTAINTY_SOURCES, Predictor, default_device, load_predictor
from segdistill.report import Claims, dig, write_report
from segdistill.train import train

STAGES_DIR = "stages"
EXPERIMENT_FILE = "experiment.yaml"
ENCODER_FILE = "encoder.safetensors"  # a pre-training run's encoder (`pretrain_encoder`)
REPORT_FILE = "report.html"
TABLE_FILE = "table.md"
ABLATION_ROWS = "rows.json"  # an ablation's rows, in its folder

# ----------------------------------------------------------------------------------------
# The experiment config
# ----------------------------------------------------------------------------------------


@dataclass
class SynthSpec:
    """SynthStreets parameters (`segdistill.data.synthstreets.SynthConfig`); size is
    [height, width]."""

    size: list[int] = field(default_factory=lambda: [128, 256])
    train: int = 600
    val: int = 100
    test: int = 100
    seed: int = 0
    shifts: list[str] = field(default_factory=lambda: list(SHIFT_KINDS))
    object_scale: float = 1.0
    crowd: float = 1.0


@dataclass
class DataSpec:
    """The data set of every network and of the evaluation. root: a Cityscapes-layout
    folder (relative to the working directory); synth: generate SynthStreets there with
    these parameters when it is absent (null: the folder must exist, e.g. Cityscapes)."""

    root: str = "data/synthstreets"
    synth: SynthSpec | None = None


@dataclass
class UnlabeledSpec:
    """Images without labels on which every student's distillation terms learn too
    (`distill.unlabeled_root`; the cross-entropy skips them): NfS-SegNet's students learn
    from extra frames labelled by the teacher. root: a folder searched below for png / jpg
    images (e.g. Cityscapes' leftImg8bit/train_extra; not a data set's root, whose label
    pngs would be read as images too). synth: generate SynthStreets into
    `root` when absent, its train split only (`val`, `test` and `shifts` are not
    generated); its images, root/leftImg8bit/train, are then the ones used (the labels
    under gtFine/ are not read)."""

    root: str
    synth: SynthSpec | None = None

    @property
    def images(self) -> str:
        """The folder of the images (`distill.unlabeled_root`)."""
        return str(Path(self.root) / "leftImg8bit" / "train") if self.synth else self.root


@dataclass(kw_only=True)
class PretrainSpec:
    """The students' encoder, pre-trained on other data: it stands in for the ImageNet
    weights the papers start their students from (nothing is downloaded). A network of the
    students' architecture is trained with `config` (+ the experiment's `set`, then this
    `set`) on `data`, its own folder (SynthStreets generated there from `data.synth`, e.g.
    another seed); the baseline and every student then load its encoder
    (`model.encoder_weights`) and start their decoder and heads fresh. teacher: also
    pre-train the teacher's encoder the same way (with the teacher's `model` section), for
    papers whose teachers start from ImageNet weights too (Karine et al., He et al.)."""

    config: str
    set: dict[str, Any] = field(default_factory=dict)
    data: DataSpec
    teacher: bool = False


@dataclass(kw_only=True)
class TeacherSpec:
    """The teacher. config: a training config file (relative to the experiment file);
    set: dotted overrides of it; kind: "ensemble" (`members` networks, member i with seed
    + i), "mc_dropout" (one network with model.mc_dropout > 0, `samples` passes) or
    "single" (one network)."""

    name: str = "teacher"
    kind: Literal["ensemble", "mc_dropout", "single"] = "ensemble"
    config: str
    set: dict[str, Any] = field(default_factory=dict)
    members: int = 5
    samples: int = 8


@dataclass(kw_only=True)
class BaselineSpec:
    """The student's network trained on labels only: its own training `config` (+ `set`),
    or `member: i`, ensemble member i (when the members are trained with the baseline's
    config, member 0 has its seed too and would come out identical)."""

    name: str = "baseline"
    config: str | None = None
    set: dict[str, Any] = field(default_factory=dict)
    member: int | None = None


@dataclass(kw_only=True)
class StudentSpec:
    """One distilled student: a distillation config (its `distill.methods` and student
    `model`), whose teacher the pipeline sets. init_from_baseline: start from the
    baseline's weights (Holder & Shafique's two-stage recipe); teacher_cache: cache the
    teacher's per-pixel outputs (only for methods that read nothing but those); cache: the
    cache folder's name under RUN_DIR/cache (default: the student's name): students with
    one name share it, and one pass of the teacher, when their `distill.cache_signals`
    name what all of them read."""

    name: str
    config: str
    set: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    init_from_baseline: bool = False
    teacher_cache: bool = True
    cache: str | None = None


@dataclass
class EvaluateSpec:
    """`segdistill.evaluate.evaluate` settings. splits: null = the test split and every
    shifted copy; max_images: the first N images of each split."""

    splits: list[str] | None = None
    max_images: int | None = None
    batch_size: int = 4
    num_samples: int = 3
    device: str | None = None
    channels_last: bool = False


@dataclass
class BenchSpec:
    """`segdistill.bench.benchmark` settings; size is [height, width]."""

    size: list[int] = field(default_factory=lambda: [512, 1024])
    batch: int = 1
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    channels_last: bool = False


@dataclass(kw_only=True)
class AblationSpec:
    """An ablation. kind "sub_ensembles": the teacher ensemble's first k members for each
    k in `sizes`, evaluated without retraining (DUDES Fig. 5). kind "sweep": `student`
    retrained with the dotted config `key` set to each of `values` (NfS-SegNet Fig. 8:
    model.encoder_options.width). Both are evaluated on `split`."""

    name: str
    kind: Literal["sub_ensembles", "sweep"]
    sizes: list[int] = field(default_factory=list)
    student: str | None = None
    key: str | None = None
    values: list[Any] = field(default_factory=list)
    split: str = REFERENCE_SPLIT


@dataclass
class TableSpec:
    """The paper-shaped table: one row per model, one column per metric name (`METRICS`,
    optionally `name@split`, e.g. `miou@fog_0.02`, `ood_auroc@night`)."""

    title: str = ""
    columns: list[str] = field(default_factory=lambda: ["miou", "latency_ms"])
    split: str = REFERENCE_SPLIT


@dataclass(kw_only=True)
class CheckSpec:
    """A claim of the paper, checked on the results. For each of `models`, the `metric`
    (a `METRICS` name, optionally @split) is compared, by `compare`:

    - value: the metric itself;
    - difference / abs_difference / ratio: against the `reference` model's metric
      (model - reference, |model - reference|, model / reference);
    - order: the models' values must not increase along the list (no bounds).

    The quantity must lie within [min, max] (either may be null). For a per-class metric
    (a list), at least `min_count` classes (default: all) must lie within the bounds.
    In the file, `min: members` is the teacher's member count and "{members}" in `name`
    that number (`load_experiment`): an ensemble costs as many networks as it has members,
    so its latency over one student's should be at least that (DUDES Table 3)."""

    name: str
    metric: str
    models: list[str]
    compare: Literal["value", "difference", "abs_difference", "ratio", "order"] = "value"
    reference: str | None = None
    min: float | None = None
    max: float | None = None
    min_count: int | None = None


@dataclass(kw_only=True)
class Experiment:
    """A whole comparison: a teacher, a baseline and students, evaluated, benchmarked and
    tabulated. set: dotted overrides applied to every network's training config (e.g. a
    smaller `trainer.max_epochs` for a quick run); unlabeled: extra images for the
    students only (`UnlabeledSpec`); run_dir: default output folder; seeds:
    how many times the baseline and each student are trained, the k-th time with their
    config's seed + k (the teacher once): the table shows the mean +- std over the seeds
    and the checks compare the means."""

    name: str
    title: str = ""
    paper: str = ""
    run_dir: str | None = None
    data: DataSpec = field(default_factory=DataSpec)
    unlabeled: UnlabeledSpec | None = None
    set: dict[str, Any] = field(default_factory=dict)
    seeds: int = 1
    pretrain: PretrainSpec | None = None
    teacher: TeacherSpec
    baseline: BaselineSpec = field(default_factory=BaselineSpec)
    students: list[StudentSpec] = field(default_factory=list)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    bench: BenchSpec = field(default_factory=BenchSpec)
    ablations: list[AblationSpec] = field(default_factory=list)
    table: TableSpec = field(default_factory=TableSpec)
    checks: list[CheckSpec] = field(default_factory=list)


@dataclass(frozen=True)
class LoadedExperiment:
    """An experiment and the file it came from (config paths are relative to its folder)."""

    spec: Experiment
    path: Path

    def config_path(self, relative: str) -> Path:
        return self.path.parent / relative


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> LoadedExperiment:
    """Read an experiment YAML, apply `KEY=VALUE` overrides (VALUE is YAML, e.g.
    `teacher.members=3`), check it. ConfigError names the file and the key."""
    path = Path(path)
    text = read_text(path, "experiment config", ConfigError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment config must be a mapping, got {raw!r}")
    raw.setdefault("name", path.stem)
    for assignment in overrides:
        _set_dotted(raw, assignment, path)
    _resolve_members(raw)
    source = f"{path} (with --set overrides)" if overrides else str(path)
    spec = _convert(Experiment, raw, "", source)
    check_experiment(spec, source)
    return LoadedExperiment(spec, path)


_MEMBERS_DEFAULT = next(f.default for f in dataclasses.fields(TeacherSpec) if f.name == "members")


def _resolve_members(raw: dict[str, Any]) -> None:
    """Put the teacher's member count (`teacher.members`, after the overrides) in place of
    a check's `min: members` and of "{members}" in its name (`CheckSpec`)."""
    teacher = raw.get("teacher")
    members = teacher.get("members", _MEMBERS_DEFAULT) if isinstance(teacher, dict) else None
    for check in raw.get("checks") or []:
        if not isinstance(check, dict):
            continue  # the schema check names it
        if check.get("min") == "members":
            check["min"] = members
        if isinstance(check.get("name"), str):
            check["name"] = check["name"].replace("{members}", str(members))


def _set_dotted(raw: dict[str, Any], assignment: str, path: Path) -> None:
    """Apply "a.b=VALUE" to the raw mapping (VALUE read as YAML); a number indexes a list,
    e.g. `students.0.set.seed=1`."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. teacher.members=3")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML ({error})") from error
    parts = key.strip().split(".")
    # Below a `set` mapping the rest is one dotted training-config key:
    # set.trainer.max_epochs=1 -> raw["set"]["trainer.max_epochs"] = 1.
    if "set" in parts[:-1]:
        cut = parts.index("set") + 1
        parts = [*parts[:cut], ".".join(parts[cut:])]
    node: dict[str, Any] | list[Any] = raw
    for part in parts[:-1]:
        if isinstance(node, list):
            child = node[_list_index(node, part, assignment, path)]
        else:
            child = node.setdefault(part, {})
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"--set {assignment}: {part!r} of {path} is not a mapping or list")
        node = child
    if isinstance(node, list):
        node[_list_index(node, parts[-1], assignment, path)] = value
    else:
        node[parts[-1]] = value


def _list_index(items: list[Any], part: str, assignment: str, path: Path) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(
            f"--set {assignment}: {part!r} is not an index of a list of {len(items)} in {path}"
        )
    return int(part)


def check_experiment(spec: Experiment, source: str) -> None:
    """The rules the types cannot express: unique model names, references that exist,
    known metric names."""

    def fail(message: str) -> None:
        raise ConfigError(f"{source}: {message}")

    trained = [spec.baseline.name, *(s.name for s in spec.students)]
    names = [spec.teacher.name, *trained]
    seeded = [seeded_name(name, k) for name in trained for k in range(1, spec.seeds)]
    if len(set(names + seeded)) != len(names + seeded):
        fail(f"model names must be unique, got {names} (and {seeded} for the other seeds)")
    if spec.teacher.kind == "ensemble" and spec.teacher.members < 1:
        fail(f"teacher.members={spec.teacher.members} must be >= 1")
    if spec.teacher.kind == "mc_dropout" and spec.teacher.samples < 2:
        fail(f"teacher.samples={spec.teacher.samples} must be >= 2 (the std of one pass is 0)")
    if spec.seeds < 1:
        fail(f"seeds={spec.seeds} must be >= 1")
    baseline = spec.baseline
    if (baseline.config is None) == (baseline.member is None):
        fail("baseline needs exactly one of `config` (train it) or `member` (an ensemble member)")
    if spec.seeds > 1 and baseline.member is not None:
        fail(
            f"seeds={spec.seeds} trains the baseline once per seed: give it a `config`, not "
            "`member` (an ensemble member has one seed)"
        )
    if baseline.member is not None and not (
        spec.teacher.kind == "ensemble" and 0 <= baseline.member < spec.teacher.members
    ):
        fail(f"baseline.member={baseline.member} is not a member of the teacher ensemble")
    if spec.unlabeled is not None:
        if Path(spec.unlabeled.root) == Path(spec.data.root):
            fail("unlabeled.root must be another folder than data.root (other images)")
        if not spec.students:
            fail("unlabeled images are for the students' distillation: there are no students")
    if spec.pretrain is not None:
        if Path(spec.pretrain.data.root) == Path(spec.data.root):
            fail("pretrain.data.root must be another folder than data.root (other data)")
        if baseline.member is not None:
            fail(
                "with `pretrain` the baseline must be trained (`config`), so that it starts "
                "from the same pre-trained encoder as the students, not an ensemble member"
            )
    students = {s.name for s in spec.students}
    for ablation in spec.ablations:
        where = f"ablation {ablation.name!r}"
        if ablation.kind == "sub_ensembles":
            if spec.teacher.kind != "ensemble":
                fail(f"{where}: sub_ensembles needs an ensemble teacher")
            if not ablation.sizes or not all(
                1 <= k <= spec.teacher.members for k in ablation.sizes
            ):
                members = spec.teacher.members
                fail(f"{where}: sizes={ablation.sizes} must be member counts 1..{members}")
        elif ablation.student not in students or not ablation.key or not ablation.values:
            fail(
                f"{where}: a sweep needs `student` (one of {sorted(students)}), `key` and `values`"
            )
        elif spec.pretrain is not None and ablation.key.startswith("model.encoder"):
            fail(
                f"{where}: sweeping {ablation.key} changes the encoder, which then no longer "
                "fits the pre-trained one (`pretrain`)"
            )
    for column in spec.table.columns:
        _metric_name(column, f"{source}: table.columns")
    for check in spec.checks:
        where = f"{source}: check {check.name!r}"
        _metric_name(check.metric, where)
        for name in [*check.models, *([check.reference] if check.reference else [])]:
            if name not in names:
                raise ConfigError(f"{where}: unknown model {name!r} (models: {names})")
        if check.compare in ("difference", "abs_difference", "ratio") and not check.reference:
            raise ConfigError(f"{where}: compare={check.compare} needs a reference model")
        if check.compare != "order" and check.min is None and check.max is None:
            raise ConfigError(f"{where}: give min, max or both")


# ----------------------------------------------------------------------------------------
# Paths and steps
# ----------------------------------------------------------------------------------------


def seeded_name(name: str, seed_offset: int) -> str:
    """The name (and folder) of a network trained with its config's seed + seed_offset:
    the name itself for offset 0, else `name-s<offset>`."""
    return name if seed_offset == 0 else f"{name}-s{seed_offset}"


@dataclass(frozen=True)
class RunPaths:
    """Where each output of an experiment lives (module doc)."""

    root: Path

    @property
    def pretrain(self) -> Path:
        return self.root / "pretrain"

    @property
    def pretrained_encoder(self) -> Path:
        return self.pretrain / ENCODER_FILE

    @property
    def pretrain_teacher(self) -> Path:
        return self.root / "pretrain-teacher"

    @property
    def pretrained_teacher_encoder(self) -> Path:
        return self.pretrain_teacher / ENCODER_FILE

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    def baseline(self, spec: BaselineSpec, seed_offset: int = 0) -> Path:
        if spec.member is not None:
            return self.teacher / f"member_{spec.member:02d}"
        return self.root / seeded_name("baseline", seed_offset)

    def student(self, name: str, seed_offset: int = 0) -> Path:
        return self.root / "students" / seeded_name(name, seed_offset)

    def cache(self, name: str) -> Path:
        return self.root / "cache" / name

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def bench(self) -> Path:
        return self.root / "bench.json"

    @property
    def ood_detectors(self) -> Path:
        return self.root / "ood_detectors.json"

    def ablation(self, name: str) -> Path:
        return self.root / "ablations" / name

    def stage(self, step: str) -> Path:
        return self.root / STAGES_DIR / f"{step}.json"


@dataclass(frozen=True)
class Step:
    """One step: `run()` does the work and returns a small JSON-able summary of it.
    `trains`: the configs of the networks it trains, which a finished step's networks must
    still match (`check_finished_networks`). `needs`: the steps whose outputs it reads;
    when one of them has written other bytes since this one ran, this one runs again
    (`OutputDigests`). `outputs`: the files it leaves; a finished step with one missing
    runs again. `every_run`: run it even when finished (the data step: cheap, and it finds
    a data folder that was deleted or replaced)."""

    name: str
    title: str
    run: Callable[[], dict[str, Any]]
    trains: tuple[SegConfig, ...] = ()
    needs: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()
    every_run: bool = False

    def missing_outputs(self) -> list[Path]:
        """The `outputs` not on disk."""
        return [path for path in self.outputs if not path.exists()]


def network_outputs(configs: Sequence[SegConfig]) -> tuple[Path, ...]:
    """The weights file each trained network leaves (written after every epoch)."""
    return tuple(cfg.run.path() / RUN_WEIGHTS[-1] for cfg in configs)


def plan(exp: LoadedExperiment, paths: RunPaths) -> list[Step]:
    """The steps of an experiment, in order (module doc)."""
    spec = exp.spec
    where = spec.data.root
    if spec.unlabeled is not None:
        where += f", unlabeled images in {spec.unlabeled.images}"
    steps = [
        Step(
            "data",
            f"data set in {where}",
            functools.partial(prepare_all_data, spec),
            every_run=True,
        )
    ]
    # What the baseline and the students start from, and the teacher with pretrain.teacher.
    encoder_start: tuple[str, ...] = ()
    teacher_start: tuple[str, ...] = ()
    if spec.pretrain is not None:
        encoder_start = ("pretrain",)
        steps.append(
            Step(
                "pretrain",
                f"pre-train the students' encoder on {spec.pretrain.data.root}",
                functools.partial(
                    pretrain_encoder, spec.pretrain.data, pretrain_config(exp, paths)
                ),
                (pretrain_config(exp, paths),),
                outputs=(paths.pretrained_encoder,),
            )
        )
        if spec.pretrain.teacher:
            teacher_start = ("pretrain-teacher",)
            steps.append(
                Step(
                    "pretrain-teacher",
                    f"pre-train the teacher's encoder on {spec.pretrain.data.root}",
                    functools.partial(
                        pretrain_encoder, spec.pretrain.data, pretrain_teacher_config(exp, paths)
                    ),
                    (pretrain_teacher_config(exp, paths),),
                    outputs=(paths.pretrained_teacher_encoder,),
                )
            )
    teacher = spec.teacher
    what = f"{teacher.members}-member ensemble" if teacher.kind == "ensemble" else teacher.kind
    members = teacher_networks(exp, paths)
    manifest = (paths.teacher / MANIFEST_FILE,) if teacher.kind == "ensemble" else ()
    steps.append(
        Step(
            "teacher",
            f"train the teacher {teacher.name!r} ({what})",
            functools.partial(train_teacher, exp, paths),
            members,
            needs=teacher_start,
            outputs=(*network_outputs(members), *manifest),
        )
    )
    by_offset = [trained_configs(exp, paths, offset) for offset in range(spec.seeds)]
    if spec.pretrain is not None:  # every seed has the same encoder: the first one tells
        check_pretrain_fits(exp, pretrain_config(exp, paths), by_offset[0])
    check_shared_caches(exp, by_offset[0])
    check_teacher_spread(exp, by_offset[0])
    # The networks every model of the results is, and those of the first seed (benchmarked).
    networks, first_seed, first_baseline = ["teacher"], ["teacher"], "teacher"
    for offset, trained in enumerate(by_offset):
        baseline_step = "teacher"  # the baseline is an ensemble member
        if spec.baseline.member is None:
            name = seeded_name(spec.baseline.name, offset)
            baseline_step = seeded_name("baseline", offset)
            steps.append(
                Step(
                    baseline_step,
                    f"train the baseline {name!r} on labels only (seed {trained[name].seed})",
                    functools.partial(train_network, trained[name]),
                    (trained[name],),
                    needs=encoder_start,
                    outputs=network_outputs([trained[name]]),
                )
            )
            networks.append(baseline_step)
        for student in spec.students:
            name = seeded_name(student.name, offset)
            cfg = trained[name]
            assert cfg.distill is not None  # a student's config always has one
            methods = ", ".join(m.name for m in cfg.distill.methods)
            starts = (baseline_step,) if student.init_from_baseline else ()
            steps.append(
                Step(
                    f"student-{name}",
                    f"distil the student {name!r} ({methods}; seed {cfg.seed})",
                    functools.partial(train_network, cfg),
                    (cfg,),
                    needs=("teacher", *encoder_start, *starts),
                    outputs=network_outputs([cfg]),
                )
            )
            networks.append(f"student-{name}")
        if offset == 0:
            first_seed, first_baseline = list(networks), baseline_step
    homes = [source for _, source in model_sources(exp, paths, spec.seeds)]
    steps.append(
        Step(
            "evaluate",
            "evaluate every model",
            functools.partial(evaluate_models, exp, paths),
            needs=tuple(networks),
            outputs=(paths.evaluation / RESULTS_FILE,),
        )
    )
    steps.append(
        Step(
            "ood-detectors",
            "fit each model's OOD flag on the validation images",
            functools.partial(fit_ood_detectors, exp, paths),
            needs=("evaluate", *networks),
            outputs=(paths.ood_detectors, *(home / DETECTOR_FILE for home in homes)),
        )
    )
    size = "x".join(map(str, spec.bench.size))
    steps.append(
        Step(
            "bench",
            f"benchmark every model at {size}",
            functools.partial(bench_models, exp, paths),
            needs=tuple(first_seed),
            outputs=(paths.bench,),
        )
    )
    for ablation in spec.ablations:
        rows = (paths.ablation(ablation.name) / ABLATION_ROWS,)
        if ablation.kind == "sweep":
            student = next(s for s in spec.students if s.name == ablation.student)
            starts = (first_baseline,) if student.init_from_baseline else ()
            trained_steps = []
            for value in ablation.values:
                cfg = sweep_config(exp, paths, ablation, value)
                trained_steps.append(f"ablation-{ablation.name}-{value}")
                steps.append(
                    Step(
                        trained_steps[-1],
                        f"ablation {ablation.name}: train {ablation.student!r} with "
                        f"{ablation.key}={value}",
                        functools.partial(train_network, cfg),
                        (cfg,),
                        needs=("teacher", *encoder_start, *starts),
                        outputs=network_outputs([cfg]),
                    )
                )
            run = functools.partial(sweep, exp, paths, ablation)
            needs = tuple(trained_steps)
        else:
            run = functools.partial(sub_ensembles, exp, paths, ablation)
            needs = ("teacher",)
        steps.append(
            Step(
                f"ablation-{ablation.name}",
                f"ablation {ablation.name}",
                run,
                needs=needs,
                outputs=rows,
            )
        )
    steps.append(
        Step(
            "report",
            "write results.json and report.html",
            functools.partial(write_results, exp, paths, [step.name for step in steps]),
            needs=tuple(step.name for step in steps if not step.every_run),
            outputs=(paths.root / RESULTS_FILE, paths.root / TABLE_FILE, paths.root / REPORT_FILE),
        )
    )
    return steps


def run_pipeline(exp: LoadedExperiment, run_dir: str | Path) -> dict[str, Any]:
    """Run every step of `exp` not finished before into `run_dir`; print progress and the
    summary; return the content of results.json.

    A finished step (its marker written) is skipped unless one of its outputs is missing
    or what it read has changed since (`_why_again`): a student trained again is
    evaluated again, in this run or, if this one is stopped, in the next."""
    paths = RunPaths(Path(run_dir))
    check_output_folder(paths.root, "run directory")
    steps = plan(exp, paths)  # a config the plan refuses leaves the directory as it was
    with held_folder(paths.root):
        for step in steps:  # before the claim: a config refused here records nothing
            if paths.stage(step.name).is_file():
                check_finished_networks(step, paths.stage(step.name))
        claim_run_dir(exp.spec, paths, steps)
        # No other run writes here (the lock): any temporary file is a killed write's.
        remove_unfinished_writes(paths.root, recursive=True)
        start = time.perf_counter()
        title = exp.spec.title or exp.spec.name
        print(f"{title}: {len(steps)} steps into {paths.root}", flush=True)
        digests = OutputDigests(paths.root, {step.name: step for step in steps})
        for number, step in enumerate(steps, 1):
            marker = paths.stage(step.name)
            head = f"[{number}/{len(steps)}] {step.name}: {step.title}"
            inputs = digests.inputs(step)
            again = _why_again(step, marker, inputs, paths.root)
            if again == "":
                print(f"{head} - done before, skipped", flush=True)
                continue
            print(f"{head} ...{f' (again: {again})' if again else ''}", flush=True)
            marker.unlink(missing_ok=True)
            _run_step(step, marker, inputs, number, len(steps), start)
    results = json.loads((paths.root / RESULTS_FILE).read_text())
    print()
    print(format_summary(results))
    print(f"\nresults: {paths.root / RESULTS_FILE}\nreport:  {paths.root / REPORT_FILE}")
    return results


def _run_step(
    step: Step, marker: Path, inputs: dict[str, str], number: int, count: int, start: float
) -> None:
    """Run `step`, then write its marker (its time, peak memory, summary and `inputs`)."""
    began = time.perf_counter()
    with memory.StepPeak() as peak:
        outputs = step.run()
    seconds = time.perf_counter() - began
    missing = step.missing_outputs()
    if missing:  # e.g. a finished training whose weights file was deleted: nothing to resume
        raise ConfigError(
            f"step {step.name!r} ended without {missing[0]}: delete what the step wrote "
            f"before ({missing[0].parent}) to run it from nothing"
        )
    used = peak.usage()
    finished = datetime.datetime.now().isoformat(timespec="seconds")
    _write_json(
        marker,
        {
            "step": step.name,
            "seconds": seconds,
            "finished": finished,
            **used,
            **outputs,
            "inputs": inputs,
        },
    )
    total = time.perf_counter() - start
    print(
        f"[{number}/{count}] {step.name}: done in {seconds:.1f} s ({total:.1f} s so "
        f"far), peak RSS {used['peak_rss_mib'] / 1024:.2f} GiB",
        flush=True,
    )


def _why_again(step: Step, marker: Path, inputs: dict[str, str], root: Path) -> str | None:
    """Why `step` runs: None when it never finished (or runs on every run), else what has
    changed since it finished; "" when nothing has and it may be skipped."""
    if step.every_run or not marker.is_file():
        return None
    missing = step.missing_outputs()
    if missing:
        return f"{_short(missing[0], root)} is missing"
    # A marker written before the inputs were recorded is trusted, as it was then.
    recorded = json.loads(marker.read_text()).get("inputs", inputs)
    changed = sorted(
        name for name in {*inputs, *recorded} if inputs.get(name) != recorded.get(name)
    )
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return f"{', '.join(changed[:3])}{more} changed since it ran"
    return ""


class OutputDigests:
    """SHA-256 of the steps' output files, each read once while it stays the same file
    (size and modification time). A step's marker records the digests of what it read
    (`inputs`): when a step it needs ran again and wrote other bytes (a retrained student,
    a new evaluation), it runs again; when the bytes are the same (a deleted encoder file
    written again), it need not."""

    def __init__(self, root: Path, steps: dict[str, Step]) -> None:
        self.root = root
        self.steps = steps
        self.known: dict[Path, tuple[tuple[int, int], str]] = {}

    def inputs(self, step: Step) -> dict[str, str]:
        """{output of a step that `step` needs, relative to the run directory: SHA-256};
        outputs not written yet are left out (the step that writes them runs first)."""
        paths = [path for need in step.needs for path in self.steps[need].outputs]
        return {_short(path, self.root): self.of(path) for path in paths if path.is_file()}

    def of(self, path: Path) -> str:
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        if path in self.known and self.known[path][0] == key:
            return self.known[path][1]
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        self.known[path] = (key, digest.hexdigest())
        return self.known[path][1]


def _short(path: Path, root: Path) -> str:
    """`path` relative to `root` where it lies below it."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _without_added_settings(current: Any, recorded: Any) -> Any:
    """`current` (an experiment as plain data) without the keys, at any depth, that
    `recorded` lacks and that hold None or False: a section or switch added to the schema
    after the run started is absent from its record, and left off it changes nothing."""
    if not isinstance(current, dict) or not isinstance(recorded, dict):
        return current
    return {
        key: _without_added_settings(value, recorded[key]) if key in recorded else value
        for key, value in current.items()
        if key in recorded or not (value is None or value is False)
    }


def _differences(before: Any, after: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, before, after) of every value that differs between two plain-data
    trees (mappings are descended into; a list is one value; a missing key is None)."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return [] if before == after else [(key, before, after)]
    found = []
    for name in [*before, *(k for k in after if k not in before)]:
        below = f"{key}.{name}" if key else str(name)
        found += _differences(before.get(name), after.get(name), below)
    return found


def claim_run_dir(spec: Experiment, paths: RunPaths, steps: Sequence[Step] = ()) -> None:
    """Record the experiment in the run directory, or refuse a directory where another one
    finished a step (its finished steps would be skipped and mixed into the results). A
    directory whose run stopped before its first step finished (e.g. a wrong data.root)
    holds nothing of it: the new experiment replaces the record.

    Finished steps without a record (a run directory started with a copy of another's
    steps, or whose experiment.yaml was deleted): those of `steps` that train networks
    are kept, as `check_finished_networks` compares each network with its config; the
    others (evaluate, bench, report, ...) cannot be checked and run again."""
    record = paths.root / EXPERIMENT_FILE
    current = dataclasses.asdict(spec)
    text = yaml.safe_dump(current, sort_keys=False)
    finished = sorted(p.stem for p in (paths.root / STAGES_DIR).glob("*.json"))
    if finished and not record.is_file():
        unchecked = [s.name for s in steps if s.name in finished and not (s.trains or s.every_run)]
        for name in unchecked:
            paths.stage(name).unlink()
        if unchecked:
            print(
                f"{paths.root}: no {EXPERIMENT_FILE} says which experiment ran its steps "
                f"there; running again those that cannot be checked: {', '.join(unchecked)}",
                flush=True,
            )
    if record.is_file():
        recorded = yaml.safe_load(record.read_text())
        comparable = _without_added_settings(current, recorded)
        if recorded == comparable:
            return
        changed = format_differences(_differences(recorded, comparable))
        if finished:
            raise ConfigError(
                f"{paths.root} holds the results of another experiment config ({changed}; "
                f"compared with {record}; finished steps: {', '.join(finished)}): choose "
                f"another --run-dir, or delete {paths.root} to start again"
            )
        print(
            f"{paths.root}: no step of the experiment recorded there had finished; "
            f"starting this one instead ({changed})",
            flush=True,
        )
    atomic_write(record, lambda file: file.write(text.encode()))


# ----------------------------------------------------------------------------------------
# Data and training
# ----------------------------------------------------------------------------------------


def prepare_all_data(spec: Experiment) -> dict[str, Any]:
    """The `data` step: the data set of every network and, with an `unlabeled` section, the
    students' unlabelled images."""
    prepared = prepare_data(spec.data)
    if spec.unlabeled is not None:
        prepared["unlabeled"] = prepare_unlabeled(spec.unlabeled)
    return prepared


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
    run_dir: Path,
    role: str,
    data_root: str | None = None,
) -> SegConfig:
    """A network's training config: the file `config` (relative to the experiment file),
    then the experiment's `set`, then `values`; data.root (default: the experiment's) and
    run.dir are forced."""
    cfg = load_config(exp.config_path(config))
    forced = {"data.root": data_root or exp.spec.data.root, "run.dir": str(run_dir)}
    return replace_values(cfg, {**exp.spec.set, **values, **forced}, f"{exp.path} ({role})")


def teacher_config(exp: LoadedExperiment, paths: RunPaths) -> SegConfig:
    """The teacher's training config; with `pretrain.teacher`, its encoder starts from the
    teacher's pre-trained one."""
    teacher = exp.spec.teacher
    values = {**teacher.set, "ensemble.members": teacher.members}
    if exp.spec.pretrain is not None and exp.spec.pretrain.teacher:
        values["model.encoder_weights"] = str(paths.pretrained_teacher_encoder)
    return network_config(exp, teacher.config, values, paths.teacher, "teacher")


def pretrain_config(exp: LoadedExperiment, paths: RunPaths) -> SegConfig:
    """The students' pre-training network: `pretrain.config` + the experiment's and the
    pretrain's `set`, on the pretrain data."""
    pretrain = exp.spec.pretrain
    assert pretrain is not None
    return network_config(
        exp, pretrain.config, pretrain.set, paths.pretrain, "pretrain", pretrain.data.root
    )


def pretrain_teacher_config(exp: LoadedExperiment, paths: RunPaths) -> SegConfig:
    """The teacher's pre-training network: the students' pre-training recipe
    (`pretrain_config`) with the teacher's whole `model` section (architecture, encoder,
    width, output stride), from random weights."""
    teacher = exp.spec.teacher
    teacher_cfg = network_config(exp, teacher.config, teacher.set, paths.teacher, "teacher")
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
    cfg = network_config(exp, baseline.config, values, run_dir, "baseline")
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
        changed = [
            (key, old, new)
            for key, old, new in config_differences(
                load_config(saved), cfg, ignore=SAME_RECIPE_MAY_CHANGE
            )
            if not _same_file(old, new)
        ]
        if changed:
            raise ConfigError(
                f"step {step.name!r} trained {cfg.run.dir} with another config than the "
                f"experiment gives it now ({format_differences(changed)}; compared with "
                f"{saved}): set it back, choose another --run-dir, or delete {marker} and "
                f"{cfg.run.dir} to train it again"
            )


def _same_file(before: Any, after: Any) -> bool:
    """Whether two settings name files with the same bytes: a run directory started with a
    copy of another's steps (experiments.md) names its own copy of, e.g., the encoder
    weights the network started from."""
    if not (isinstance(before, str) and isinstance(after, str)):
        return False
    first, second = Path(before), Path(after)
    return first.is_file() and second.is_file() and filecmp.cmp(first, second, shallow=False)


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
    exp: LoadedExperiment, paths: RunPaths, ablation: AblationSpec, value: Any
) -> SegConfig:
    """The config of one sweep network: the student's, with `key` set to `value`."""
    assert ablation.key is not None
    student = next(s for s in exp.spec.students if s.name == ablation.student)
    run_dir = paths.ablation(ablation.name) / f"{ablation.key.rsplit('.', 1)[-1]}={value}"
    return student_config(exp, paths, student, {ablation.key: value}, run_dir)


# ----------------------------------------------------------------------------------------
# Evaluation, speed and ablations
# ----------------------------------------------------------------------------------------


def model_sources(exp: LoadedExperiment, paths: RunPaths, seeds: int = 1) -> list[tuple[str, Path]]:
    """(name, directory) of the teacher, then of the baseline and the students trained
    with each of the first `seeds` seed offsets, named as in the experiment
    (`seeded_name`)."""
    spec = exp.spec
    sources = [(spec.teacher.name, paths.teacher)]
    for offset in range(seeds):
        baseline = (seeded_name(spec.baseline.name, offset), paths.baseline(spec.baseline, offset))
        students = [
            (seeded_name(s.name, offset), paths.student(s.name, offset)) for s in spec.students
        ]
        sources += [baseline, *students]
    return sources


def load_models(exp: LoadedExperiment, paths: RunPaths, seeds: int = 1) -> list[Predictor]:
    """The models of `model_sources`, loaded and named."""
    spec = exp.spec
    predictors = []
    for name, source in model_sources(exp, paths, seeds):
        predictor = load_predictor(source, mc_samples=spec.teacher.samples)
        predictor.name = name
        predictors.append(predictor)
    return predictors


def _evaluate(
    exp: LoadedExperiment,
    predictors: list[Predictor],
    out_dir: Path,
    splits: list[str] | None,
    figures: bool,
) -> dict[str, Any]:
    settings = exp.spec.evaluate
    return evaluate(
        predictors,
        exp.spec.data.root,
        splits,
        batch_size=settings.batch_size,
        out_dir=out_dir,
        write_homes=False,
        max_images=settings.max_images,
        num_samples=settings.num_samples,
        mc_samples=exp.spec.teacher.samples,
        device=settings.device,
        channels_last=settings.channels_last,
        make_figures=figures,
    )


def evaluate_models(exp: LoadedExperiment, paths: RunPaths) -> dict[str, Any]:
    """Every model (every seed's baseline and students) on every split ->
    evaluation/results.json and figures."""
    models = load_models(exp, paths, exp.spec.seeds)
    results = _evaluate(exp, models, paths.evaluation, exp.spec.evaluate.splits, True)
    return {"results": str(paths.evaluation / RESULTS_FILE), "splits": results["data"]["splits"]}


def fit_ood_detectors(exp: LoadedExperiment, paths: RunPaths) -> dict[str, Any]:
    """Every model's `ImageOODDetector`, its threshold flagging at most DEFAULT_FPR of the
    validation images (`segdistill.predict.fit_ood_detector`, as `segdistill predict
    --ood-reference` fits one), saved in the model's directory as ood_detector.json for
    `predict --ood-detector`; and the share of each evaluated split's images (the ones the
    evaluation used) it flags, scored as `predict` scores them. Their summaries go to
    ood_detectors.json."""
    spec, settings = exp.spec, exp.spec.evaluate
    device = default_device(settings.device)
    val_split = teacher_config(exp, paths).data.val_split
    references = find_images([Path(spec.data.root) / "leftImg8bit" / val_split])
    evaluated = json.loads((paths.evaluation / RESULTS_FILE).read_text())["data"]["splits"]
    splits = find_splits(spec.data.root)
    images = {
        name: [files.image for files in splits[name].dataset().samples][: settings.max_images]
        for name in evaluated
        if name != val_split  # at most `fpr` there by construction
    }
    detectors = {}
    for predictor in load_models(exp, paths, spec.seeds):
        assert predictor.home is not None  # every model of an experiment has its directory
        predictor.to(device, settings.channels_last)
        detector = fit_ood_detector(predictor, references, batch_size=settings.batch_size)
        detector.save(predictor.home / DETECTOR_FILE)
        scores = {
            name: score_images(
                predictor,
                files,
                detector.aggregator,
                batch_size=settings.batch_size,
                desc=f"OOD flags ({predictor.name}, {name})",
            )
            for name, files in images.items()
        }
        detectors[predictor.name] = {
            **detector.summary(),
            "reference_split": val_split,
            "file": str(predictor.home / DETECTOR_FILE),
            "flagged": flagged_shares(detector.threshold, scores),
        }
    _write_json(paths.ood_detectors, detectors)
    return {"results": str(paths.ood_detectors)}


def flagged_shares(threshold: float, scores: dict[str, list[float]]) -> dict[str, float]:
    """{split: share of its image scores strictly above `threshold`} (splits with images)."""
    return {
        split: float(np.mean(np.asarray(values) > threshold))
        for split, values in scores.items()
        if values
    }


def bench_models(exp: LoadedExperiment, paths: RunPaths) -> dict[str, Any]:
    """Latency, parameters and FLOPs of every model, timed round robin -> bench.json
    (the first seed's networks: the other seeds' have the same architectures)."""
    settings = exp.spec.bench
    result = benchmark(
        load_models(exp, paths),
        (settings.size[0], settings.size[1]),
        settings.batch,
        repeats=settings.repeats,
        warmup=settings.warmup,
        device=settings.device,
        threads=settings.threads,
        channels_last=settings.channels_last,
    )
    _write_json(paths.bench, to_json(result))
    return {"results": str(paths.bench)}


# The numbers an ablation row holds per model.
ABLATION_METRICS = (
    "miou",
    "class_mean_uncertainty",
    "pixel_mean_uncertainty",
    "misclassification_auroc",
    "ece",
    "miou_gain_removed_50",
)


def _ablation_rows(
    results: dict[str, Any], split: str, keys: list[tuple[str, Any]]
) -> list[dict[str, Any]]:
    """One row per model of an ablation's evaluation: (row key, value), then the metrics."""
    rows = []
    for (key, value), model in zip(keys, results["models"]):
        row = {key: value, "parameters": model["parameters"]}
        row.update({name: metric_value(model, name, split) for name in ABLATION_METRICS})
        rows.append(row)
    return rows


def sub_ensembles(exp: LoadedExperiment, paths: RunPaths, ablation: AblationSpec) -> dict[str, Any]:
    """The first k members of the trained ensemble for each k in `sizes`, evaluated on
    `split` without retraining (DUDES Fig. 5: mIoU and mean uncertainty vs members)."""
    members = Ensemble.from_manifest(paths.teacher).members
    predictors = [
        Predictor(
            Ensemble(list(members[:k])),
            name=f"{k}_members",
            kind="ensemble",
            uncertainty_source=UNCERTAINTY_SOURCES["ensemble"],
            source=paths.teacher / MANIFEST_FILE,
            home=None,
        )
        for k in ablation.sizes
    ]
    out = paths.ablation(ablation.name)
    results = _evaluate(exp, predictors, out, [ablation.split], False)
    rows = _ablation_rows(results, ablation.split, [("members", k) for k in ablation.sizes])
    _write_json(out / ABLATION_ROWS, {"kind": ablation.kind, "split": ablation.split, "rows": rows})
    return {"rows": str(out / ABLATION_ROWS)}


def sweep(exp: LoadedExperiment, paths: RunPaths, ablation: AblationSpec) -> dict[str, Any]:
    """The sweep's networks (trained by the steps before) evaluated on `split`."""
    predictors = []
    for value in ablation.values:
        predictor = load_predictor(sweep_config(exp, paths, ablation, value).run.path())
        predictor.name = f"{ablation.key}={value}"
        predictors.append(predictor)
    out = paths.ablation(ablation.name)
    results = _evaluate(exp, predictors, out, [ablation.split], False)
    keys = [(str(ablation.key), value) for value in ablation.values]
    rows = _ablation_rows(results, ablation.split, keys)
    content = {"kind": ablation.kind, "student": ablation.student, "split": ablation.split}
    _write_json(out / ABLATION_ROWS, {**content, "rows": rows})
    return {"rows": str(out / ABLATION_ROWS)}


# ----------------------------------------------------------------------------------------
# Metrics by name: the table columns and the checks
# ----------------------------------------------------------------------------------------


def _removal_gain(model: dict[str, Any], split: str, fraction: float = 0.5) -> float | None:
    """mIoU after removing the `fraction` most uncertain pixels minus the mIoU of all."""
    curve = dig(model, "splits", split, "uncertainty", "miou_vs_removed")
    point = removal_point(curve, fraction) if curve else None
    if point is None or curve["miou"][0] is None:
        return None
    after = curve["miou"][point]
    return None if after is None else after - curve["miou"][0]


def _best_ood_auroc(model: dict[str, Any], shifted: str) -> float | None:
    entry = dig(model, "ood", "sets", shifted)
    if not entry or entry["best_aggregator"] is None:
        return None
    return entry["by_aggregator"][entry["best_aggregator"]]["auroc"]


def _seg(*keys: str) -> Callable[[dict[str, Any], str], Any]:
    return lambda model, split: dig(model, "splits", split, *keys)


# name -> (column header, value of a results.json model on a split). `ood_auroc` reads its
# "split" as the shifted set (best aggregator); anomaly, speed and size ignore it.
METRICS: dict[str, tuple[str, Callable[[dict[str, Any], str], Any]]] = {
    "miou": ("mIoU", _seg("segmentation", "miou")),
    "per_class_iou": ("IoU per class", _seg("segmentation", "iou")),
    "pixel_accuracy": ("pixel acc.", _seg("segmentation", "pixel_accuracy")),
    "ece": ("ECE", _seg("calibration", "ece")),
    "misclassification_auroc": ("misc. AUROC", _seg("uncertainty", "misclassification", "auroc")),
    "misclassification_aupr": ("misc. AUPR", _seg("uncertainty", "misclassification", "aupr")),
    "misclassification_fpr95": ("misc. FPR95", _seg("uncertainty", "misclassification", "fpr95")),
    "aurc": ("AURC", _seg("uncertainty", "aurc")),
    "pavpu": ("pAvPU", _seg("uncertainty", "pavpu", "max")),
    "pixel_mean_uncertainty": ("mean unc.", _seg("uncertainty", "pixel_mean")),
    "class_mean_uncertainty": ("class-mean unc.", _seg("uncertainty", "class_mean")),
    "per_class_mean_uncertainty": ("unc. per class", _seg("uncertainty", "per_class_mean")),
    "miou_gain_removed_50": ("mIoU gain 50% removed", _removal_gain),
    "ood_auroc": ("OOD AUROC", _best_ood_auroc),
    "anomaly_ap": ("anomaly AP", lambda model, split: dig(model, "anomaly", "ap")),
    "latency_ms": ("latency ms", lambda model, split: dig(model, "speed", "latency_ms", "median")),
    "gflops": ("GFLOPs", lambda model, split: dig(model, "speed", "gflops_per_image")),
    "parameters_m": ("params (M)", lambda model, split: model["parameters"] / 1e6),
}


def _metric_name(name: str, where: str) -> tuple[str, str | None]:
    """ "metric" or "metric@split" -> (metric, split or None); ConfigError if unknown."""
    metric, _, split = name.partition("@")
    if metric not in METRICS:
        raise ConfigError(f"{where}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    return metric, split or None


def metric_value(model: dict[str, Any], name: str, split: str = REFERENCE_SPLIT) -> Any:
    """The metric `name` ("metric" or "metric@split") of one results.json model."""
    metric, at = _metric_name(name, "metric")
    return METRICS[metric][1](model, at or split)


def metric_header(name: str) -> str:
    metric, at = _metric_name(name, "metric")
    header = METRICS[metric][0]
    return f"{header} {at}" if at else header


# Measured once per architecture: the bench times the first seed's networks only.
SPEED_METRICS = ("latency_ms", "gflops", "parameters_m")


def seed_values(seeds: list[dict[str, Any]], name: str, split: str = REFERENCE_SPLIT) -> list[Any]:
    """The metric `name` of each seed's network of one model (`seeds`: its results.json
    entries, the first seed first); the first seed's only for the speed metrics."""
    metric, _ = _metric_name(name, "metric")
    entries = seeds[:1] if metric in SPEED_METRICS else seeds
    return [metric_value(entry, name, split) for entry in entries]


def _mean(values: list[Any]) -> Any:
    """The mean of per-seed values, class by class for lists; None where a seed has none."""
    if isinstance(values[0], list):
        return [_mean(list(column)) for column in zip(*values)]
    if any(value is None for value in values):
        return None
    return float(np.mean(values))


def _std(values: list[Any]) -> float | None:
    """The sample standard deviation of per-seed numbers (None for one seed or a list)."""
    if len(values) < 2 or any(not isinstance(v, (int, float)) for v in values):
        return None
    return float(np.std(values, ddof=1))


def model_value(seeds: list[dict[str, Any]], name: str, split: str = REFERENCE_SPLIT) -> Any:
    """The metric `name` of one model: the mean over its seeds (`seed_values`)."""
    return _mean(seed_values(seeds, name, split))


def _within(value: float | None, low: float | None, high: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _combine(compare: str, value: Any, reference: Any) -> Any:
    """The compared quantity (lists element by element; None where a side is None)."""
    if isinstance(value, list):
        return [_combine(compare, v, r) for v, r in zip(value, reference)]
    if value is None or reference is None:
        return None
    if compare == "difference":
        return value - reference
    if compare == "abs_difference":
        return abs(value - reference)
    return value / reference if reference else None


def _latency_ratio(model: dict[str, Any], reference: dict[str, Any]) -> float:
    """Latency of `model` over `reference`, paired over the bench's repeats (the calls of
    one repeat run back to back: `segdistill.bench.paired_ratio`)."""
    return paired_ratio(
        dig(model, "speed", "latency_ms", "runs"), dig(reference, "speed", "latency_ms", "runs")
    )


def _per_seed(
    check: CheckSpec, seeds: list[dict[str, Any]], reference: list[dict[str, Any]], split: str
) -> list[Any]:
    """The checked quantity of each seed: seed k of the model against seed k of the
    reference (the teacher, trained once, against every seed)."""
    quantities = []
    for k, entry in enumerate(seeds):
        value = metric_value(entry, check.metric, split)
        if check.compare != "value":
            other = metric_value(reference[min(k, len(reference) - 1)], check.metric, split)
            value = _combine(check.compare, value, other)
        quantities.append(value)
    return quantities


def run_check(
    check: CheckSpec, models: dict[str, list[dict[str, Any]]], split: str
) -> list[dict[str, Any]]:
    """The outcome of one check: one entry per model (one for `order`), each with the
    measured quantity and `passed`. `models` maps a name to its results.json entries, one
    per seed: the quantity compares the means over the seeds (`model_value`); with more
    than one seed, `per_seed` gives it for each seed too (numbers only)."""
    base = {"name": check.name, "metric": check.metric, "compare": check.compare}
    values = {name: model_value(models[name], check.metric, split) for name in check.models}
    if check.compare == "order":
        ordered = list(values.values())
        passed = None not in ordered and all(a >= b for a, b in zip(ordered, ordered[1:]))
        return [{**base, "models": check.models, "value": ordered, "passed": passed}]
    # The reference model's runs (one per seed); check_experiment made sure that every
    # comparison but "value" names one.
    reference_runs = models[check.reference] if check.reference else []
    outcomes = []
    for name, value in values.items():
        reference = None
        if check.metric == "latency_ms" and check.compare == "ratio":
            value = _latency_ratio(models[name][0], reference_runs[0])
        elif check.compare != "value":
            reference = model_value(reference_runs, check.metric, split)
            value = _combine(check.compare, value, reference)
        entry: dict[str, Any] = {
            **base,
            "model": name,
            "reference": check.reference,
            "min": check.min,
            "max": check.max,
        }
        speed = _metric_name(check.metric, "metric")[0] in SPEED_METRICS
        if len(models[name]) > 1 and not speed and not isinstance(value, list):
            entry["per_seed"] = _per_seed(check, models[name], reference_runs, split)
        if isinstance(value, list):
            count = sum(_within(v, check.min, check.max) for v in value)
            needed = len(value) if check.min_count is None else check.min_count
            outcomes.append(
                {
                    **entry,
                    "value": count,
                    "of": len(value),
                    "defined": sum(v is not None for v in value),
                    "min_count": needed,
                    "passed": count >= needed,
                }
            )
        else:
            outcomes.append(
                {**entry, "value": value, "passed": _within(value, check.min, check.max)}
            )
    return outcomes


# ----------------------------------------------------------------------------------------
# results.json, the table and the report
# ----------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """The software the results were made with."""
    return {
        "segdistill": __version__,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _speed(model: dict[str, Any], bench: dict[str, Any], roles: dict[str, str]) -> dict[str, Any]:
    """A model's bench numbers plus its latency ratios to the teacher and the baseline."""
    by_name = {m["name"]: m for m in bench["models"]}
    mine = by_name[model["name"]]
    speed = {key: mine[key] for key in ("passes", "gflops_per_image", "images_per_s")}
    speed["latency_ms"] = mine["latency_ms"]
    for role in ("teacher", "baseline"):
        other = next(name for name, r in roles.items() if r == role)
        runs = mine["latency_ms"]["runs"], by_name[other]["latency_ms"]["runs"]
        speed[f"latency_vs_{role}"] = paired_ratio(*runs)
    return speed


def _rebase_figures(figures: dict[str, str], prefix: str) -> dict[str, str]:
    return {key: f"{prefix}/{path}" for key, path in figures.items()}


def paper_table(spec: TableSpec, models: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """{"title", "columns": [header...], "metrics": [name...], "rows": [[model, label,
    value...]], "std": [[std...]]}: one row per model (`models`: name -> its results.json
    entries, one per seed), each value the mean over the seeds (None when not evaluated),
    with its sample standard deviation in `std` (None for one seed)."""
    rows, spread = [], []
    for name, seeds in models.items():
        values = [seed_values(seeds, column, spec.split) for column in spec.columns]
        rows.append([name, seeds[0].get("label", ""), *(_mean(v) for v in values)])
        spread.append([_std(v) for v in values])
    headers = ["model", "label", *(metric_header(c) for c in spec.columns)]
    return {
        "title": spec.title,
        "split": spec.split,
        "columns": headers,
        "metrics": spec.columns,
        "rows": rows,
        "std": spread,
        "seeds": {name: len(seeds) for name, seeds in models.items()},
    }


def write_results(
    exp: LoadedExperiment, paths: RunPaths, step_order: Sequence[str]
) -> dict[str, Any]:
    """Merge the evaluation, the speed numbers, the ablations, the config and the
    versions into results.json; write table.md and report.html. step_order: the names of
    the steps before this one, in the order `plan` runs them (the stages' order in
    results.json)."""
    spec = exp.spec
    evaluation = json.loads((paths.evaluation / RESULTS_FILE).read_text())
    bench = json.loads(paths.bench.read_text())
    detectors = json.loads(paths.ood_detectors.read_text())
    roles = {spec.teacher.name: "teacher", spec.baseline.name: "baseline"}
    labels = {spec.teacher.name: "teacher", spec.baseline.name: "labels only"}
    for student in spec.students:
        roles[student.name] = "student"
        labels[student.name] = student.label or student.name
    # name of a network -> (its model's name, seed offset)
    seed_of = {
        seeded_name(name, offset): (name, offset)
        for name in roles
        for offset in range(1 if name == spec.teacher.name else spec.seeds)
    }
    models = evaluation["models"]
    by_model: dict[str, list[dict[str, Any]]] = {name: [] for name in roles}
    for model in models:
        name, offset = seed_of[model["name"]]
        model["role"] = roles[name]
        model["label"] = labels[name]
        model["seed_offset"] = offset
        if offset == 0:
            model["speed"] = _speed(model, bench, roles)
        model["figures"] = _rebase_figures(model.get("figures", {}), paths.evaluation.name)
        if model["name"] in detectors:
            model["ood_flag"] = detectors[model["name"]]
        by_model[name].append(model)
    markers = {
        p.stem: json.loads(p.read_text()) for p in sorted((paths.root / STAGES_DIR).glob("*.json"))
    }
    order = {name: i for i, name in enumerate(step_order)}
    markers = dict(sorted(markers.items(), key=lambda item: order.get(item[0], len(order))))
    ablations = {
        a.name: json.loads((paths.ablation(a.name) / ABLATION_ROWS).read_text())
        for a in spec.ablations
    }
    networks = {spec.teacher.name: teacher_config(exp, paths)}
    for offset in range(spec.seeds):
        networks.update(trained_configs(exp, paths, offset))
    results = {
        "schema": SCHEMA_EXPERIMENT,
        "experiment": {
            "name": spec.name,
            "title": spec.title,
            "paper": spec.paper,
            "config_file": str(exp.path),
            "config": dataclasses.asdict(spec),
            "networks": {name: to_dict(cfg) for name, cfg in networks.items()},
            "pretrain": to_dict(pretrain_config(exp, paths)) if spec.pretrain else None,
            "pretrain_teacher": (
                to_dict(pretrain_teacher_config(exp, paths))
                if spec.pretrain and spec.pretrain.teacher
                else None
            ),
        },
        "versions": versions(),
        "data": evaluation["data"],
        "models": models,
        "figures": _rebase_figures(evaluation.get("figures", {}), paths.evaluation.name),
        # null for an evaluation written before it recorded its settings
        "evaluation": {"settings": evaluation.get("settings")},
        "bench": {"settings": bench["settings"], "ratios": bench["ratios"]},
        "ablations": ablations,
        "table": paper_table(spec.table, by_model),
        "checks": [
            o for check in spec.checks for o in run_check(check, by_model, spec.table.split)
        ],
        "stages": {name: marker["seconds"] for name, marker in markers.items()},
        "stage_peak_rss_mib": {
            name: marker["peak_rss_mib"]
            for name, marker in markers.items()
            if "peak_rss_mib" in marker  # markers written before it was recorded lack it
        },
    }
    _write_json(paths.root / RESULTS_FILE, results)
    (paths.root / TABLE_FILE).write_text(format_markdown(results))
    title = spec.title or spec.name
    report = paths.root / REPORT_FILE
    write_report([paths.root / RESULTS_FILE], report, title, experiment_claims(results))
    return {"results": str(paths.root / RESULTS_FILE), "report": str(paths.root / REPORT_FILE)}


def _ood_flag_cells(results: dict[str, Any]) -> list[list[str]] | None:
    """Header and one row per model of the first seed: the share of each split's images
    its OOD flag raises. None when no model has one or no split was evaluated besides the
    one its threshold was set on."""
    models = [m for m in results["models"] if m.get("ood_flag") and m["seed_offset"] == 0]
    splits = list(models[0]["ood_flag"]["flagged"]) if models else []
    if not splits:
        return None
    rows = [["model", "threshold", *splits]]
    for model in models:
        flag = model["ood_flag"]
        shares = [flag["flagged"].get(split) for split in splits]
        cells = ["-" if share is None else f"{share:.0%}" for share in shares]
        rows.append([model["name"], f"{flag['threshold']:.4g}", *cells])
    return rows


def _ood_flag_title(results: dict[str, Any]) -> str:
    flagged = [m for m in results["models"] if m.get("ood_flag")]
    flag = flagged[0]["ood_flag"]
    own_maps = [
        f"{m['name']}: {scored_map(m['ood_flag'])}"
        for m in flagged
        if scored_map(m["ood_flag"]) != "uncertainty"
    ]
    maps = f" ({'; '.join(own_maps)})" if own_maps else ""
    return (
        f"images flagged as OOD (each model's threshold: at most {flag['fpr']:.0%} of the "
        f"{flag['reference_images']} {flag['reference_split']} images above it, "
        f"{flag['aggregator']} uncertainty{maps}; `segdistill predict --ood-detector`):"
    )


def experiment_claims(results: dict[str, Any]) -> Claims:
    """The table and the checks of an experiment's results.json, for the HTML report."""
    table = results["table"]
    flags = _ood_flag_cells(results)
    bench = _bench_line(results)
    calls = _paired_calls(results)
    return Claims(
        title=f"{table['title'] or results['experiment']['name']} (split {table['split']})",
        header=table["columns"],
        rows=_table_cells(table)[1:],
        tables=[(_ood_flag_title(results), flags[0], flags[1:])] if flags else [],
        notes=[bench] if bench else [],
        checks=[(outcome["passed"], _check_line(outcome, calls)) for outcome in results["checks"]],
        steps=[
            (name, seconds, results.get("stage_peak_rss_mib", {}).get(name))
            for name, seconds in results["stages"].items()
        ],
    )


def _cell(value: Any, name: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return (
            f"{value:.2f}" if name in ("latency_ms", "gflops", "parameters_m") else f"{value:.4f}"
        )
    return str(value)


def _text_table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return lines


def _markdown_table(rows: list[list[str]]) -> list[str]:
    """Header row and body rows as a Markdown (pipe) table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]


def _table_cells(table: dict[str, Any]) -> list[list[str]]:
    """Header and rows as text: mean +- std where a model has several seeds."""
    names = ["", "", *table["metrics"]]
    body = []
    for row, spread in zip(table["rows"], table["std"]):
        cells = [_cell(v, n) for v, n in zip(row, names)]
        for column, std in enumerate(spread, 2):
            if std is not None:
                cells[column] += f" ± {_cell(std, names[column])}"
        body.append(cells)
    return [table["columns"], *body]


def _is_latency_ratio(outcome: dict[str, Any]) -> bool:
    return outcome["metric"] == "latency_ms" and outcome["compare"] == "ratio"


def _paired_calls(results: dict[str, Any]) -> int | None:
    """How many paired calls a latency check's ratio is the median of: the bench's timed
    calls per model (None in results.json without bench settings)."""
    return ((results.get("bench") or {}).get("settings") or {}).get("repeats")


def _bench_line(results: dict[str, Any]) -> str | None:
    """Where the table or a check shows a latency: how the bench measured it (one run,
    its device, threads and input size, padded per model) and what a latency check's
    ratio is, so that a ratio and the table's medians are not read as a contradiction.
    None otherwise."""
    shown = any(
        _metric_name(name, "table")[0] == "latency_ms" for name in results["table"]["metrics"]
    )
    checked = any(_is_latency_ratio(outcome) for outcome in results["checks"])
    settings = (results.get("bench") or {}).get("settings")
    if not (shown or checked) or not settings:
        return None
    layout = ", channels-last" if settings.get("channels_last") else ""
    sizes = f"; {SIZE_NOTE}" if len(input_groups(settings)) > 1 else ""
    return (
        f"Latency: median of {settings['repeats']} timed calls per model in one bench run, "
        f"batch {input_text(settings)} on {settings['device']} "
        f"({settings['device_name']}), {settings['threads']} threads{layout}, torch "
        f"{settings['torch']}; the models' calls alternate (round robin), and a latency "
        "check's ratio is the median of the per-call ratios of calls run back to back, "
        f"not the ratio of the medians above{sizes}."
    )


def _check_line(outcome: dict[str, Any], paired_calls: int | None = None) -> str:
    """One check outcome in words: PASS/FAIL, the claim, the model and the measured value.
    A latency ratio says it is the median of `paired_calls` paired per-call ratios (the
    bench's timed calls per model)."""
    verdict = "PASS" if outcome["passed"] else "FAIL"
    if outcome["compare"] == "order":
        values = ", ".join(f"{m} {_cell(v)}" for m, v in zip(outcome["models"], outcome["value"]))
        return f"{verdict}  {outcome['name']}: {values}"
    against = f" vs {outcome['reference']}" if outcome["reference"] else ""
    bounds = " and ".join(
        f"{word} {outcome[key]}"
        for word, key in ((">=", "min"), ("<=", "max"))
        if outcome[key] is not None
    )
    if "of" in outcome:
        measured = (
            f"{outcome['value']} of {outcome['of']} classes {bounds} (need "
            f"{outcome['min_count']}; {outcome['defined']} have a value)"
        )
    elif _is_latency_ratio(outcome):
        calls = f"{paired_calls} " if paired_calls else ""
        measured = (
            f"ratio {_cell(outcome['value'])}, the median of {calls}per-call ratios paired "
            f"within the bench run, not the ratio of the median latencies (goal {bounds})"
        )
    else:
        measured = f"{outcome['compare']} {_cell(outcome['value'])} (goal {bounds})"
    if "per_seed" in outcome:
        seeds = ", ".join(_cell(v) for v in outcome["per_seed"])
        measured += f"; mean of {len(outcome['per_seed'])} seeds, each: {seeds}"
    return f"{verdict}  {outcome['name']} - {outcome['model']}{against}: {measured}"


def _ablation_lines(name: str, ablation: dict[str, Any]) -> list[str]:
    rows = ablation["rows"]
    keys = list(rows[0])
    cells = [keys, *([_cell(row[k], k) for k in keys] for row in rows)]
    return [f"ablation {name} ({ablation['kind']}, {ablation['split']}):", *_text_table(cells)]


def format_summary(results: dict[str, Any]) -> str:
    """The printed summary: the paper-shaped table, the ablations and the checks."""
    table = results["table"]
    lines = [f"{table['title'] or results['experiment']['name']} ({table['split']}):"]
    lines += _text_table(_table_cells(table))
    bench = _bench_line(results)
    if bench:
        lines += [bench]
    flags = _ood_flag_cells(results)
    if flags:
        lines += ["", _ood_flag_title(results), *_text_table(flags)]
    for name, ablation in results["ablations"].items():
        lines += ["", *_ablation_lines(name, ablation)]
    if results["checks"]:
        passed = sum(o["passed"] for o in results["checks"])
        calls = _paired_calls(results)
        lines += ["", f"checks: {passed} of {len(results['checks'])} pass"]
        lines += [_check_line(o, calls) for o in results["checks"]]
    return "\n".join(lines)


def format_markdown(results: dict[str, Any]) -> str:
    """table.md: the summary as Markdown (tables as pipes, checks as a list)."""
    table = results["table"]
    experiment = results["experiment"]
    cells = _table_cells(table)
    lines = [f"# {experiment['title'] or experiment['name']}", ""]
    if experiment["paper"]:
        lines += [experiment["paper"], ""]
    lines += [f"{table['title']} (split {table['split']})", "", *_markdown_table(cells)]
    bench = _bench_line(results)
    if bench:
        lines += ["", bench]
    flags = _ood_flag_cells(results)
    if flags:
        lines += ["", _ood_flag_title(results), "", *_markdown_table(flags)]
    for name, ablation in results["ablations"].items():
        lines += ["", "```", *_ablation_lines(name, ablation), "```"]
    if results["checks"]:
        calls = _paired_calls(results)
        lines += ["", "Checks:", ""] + [f"- {_check_line(o, calls)}" for o in results["checks"]]
    return "\n".join(lines) + "\n"


def _write_json(path: Path, content: dict[str, Any]) -> None:
    text = json_text(content) + "\n"
    atomic_write(path, lambda file: file.write(text.encode()))
