"""The experiment config: its schema (the dataclasses below, docs/experiments.md),
reading it with overrides, and checking it before anything runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from segdistill.config import from_dict, parse_assignment
from segdistill.data.base import folders_overlap
from segdistill.data.shifts import SHIFT_KINDS
from segdistill.defaults import DEFAULT_MC_SAMPLES
from segdistill.errors import ConfigError, read_yaml
from segdistill.evaluate import REFERENCE_SPLIT
from segdistill.pipeline.checks import PER_CLASS_METRICS, split_metric_name


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
    images (e.g. Cityscapes' leftImg8bit/train_extra): not a data set's root, nor a folder
    holding the images of a split that is validated or evaluated on, or any split's masks
    (`check_unlabeled_apart`). synth: generate SynthStreets into
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
    "single" (one network). `members` is read by an ensemble only and `samples` by an
    MC-dropout teacher only: another value than the default for a kind that ignores it is
    an error (`check_experiment`), as it would change nothing."""

    name: str = "teacher"
    kind: Literal["ensemble", "mc_dropout", "single"] = "ensemble"
    config: str
    set: dict[str, Any] = field(default_factory=dict)
    members: int = 5
    samples: int = DEFAULT_MC_SAMPLES


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
    model.encoder_options.width), once with the student's seed, or with `every_seed` once
    per seed of the experiment (`seeds`; the rows then hold the mean and sample std over
    them). Both are evaluated on `split`."""

    name: str
    kind: Literal["sub_ensembles", "sweep"]
    sizes: list[int] = field(default_factory=list)
    student: str | None = None
    key: str | None = None
    values: list[Any] = field(default_factory=list)
    every_seed: bool = False
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
    - order: the models' values must not increase along the list (at least two models;
      no bounds, min_count or reference).

    The quantity must lie within [min, max] (either may be null); with `strict`, strictly
    inside (min < quantity < max) and, for `order`, the values must decrease: a claim
    that one model beats another is not met by a tie. For a per-class metric
    (a list), at least `min_count` classes (default: all) must lie within the bounds;
    `min_count` is refused on any other metric.
    In the file, `min: members` is the teacher's member count and "{members}" in `name`
    that number (`load_experiment`): an ensemble costs as many networks as it has members,
    so its latency over one student's should be at least that (DUDES Table 3). "{size}"
    in `name` is the benchmark's `bench.size`, e.g. 512x1024."""

    name: str
    metric: str
    models: list[str]
    compare: Literal["value", "difference", "abs_difference", "ratio", "order"] = "value"
    reference: str | None = None
    min: float | None = None
    max: float | None = None
    min_count: int | None = None
    strict: bool = False


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


# Top-level keys of a training config that no experiment config has (`data` is in both;
# `seed` alone is more likely a misspelt `seeds`, which the unknown-key error suggests).
TRAINING_KEYS = ("model", "trainer", "optim", "distill", "ensemble", "run", "init_seed")


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> LoadedExperiment:
    """Read an experiment YAML, apply `KEY=VALUE` overrides (VALUE is YAML, e.g.
    `teacher.members=3`), check it. ConfigError names the file and the key."""
    path = Path(path)
    raw = read_yaml(path, "experiment config", ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment config must be a mapping, got {raw!r}")
    training = [key for key in TRAINING_KEYS if key in raw]
    if training:
        # Its first unknown key ("seed": did you mean "seeds"?) would mislead.
        raise ConfigError(
            f"{path} is a training config (it has {', '.join(training)}), not an experiment: "
            f"run it with `segdistill train {path}` (or `distill`, `ensemble`)"
        )
    raw.setdefault("name", path.stem)
    for assignment in overrides:
        _set_dotted(raw, assignment, path)
    _resolve_checks(raw)
    source = f"{path} (with --set overrides)" if overrides else str(path)
    spec = from_dict(Experiment, raw, source)
    check_experiment(spec, source)
    return LoadedExperiment(spec, path)


_TEACHER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TeacherSpec)}


def _resolve_checks(raw: dict[str, Any]) -> None:
    """Put the teacher's member count (`teacher.members`, after the overrides) in place of
    a check's `min: members` and of "{members}" in its name, and the benchmark's size
    (`bench.size`, e.g. "512x1024") in place of "{size}" (`CheckSpec`)."""
    teacher = raw.get("teacher")
    members = (
        teacher.get("members", _TEACHER_DEFAULTS["members"]) if isinstance(teacher, dict) else None
    )
    bench = raw.get("bench")
    size = (bench if isinstance(bench, dict) else {}).get("size", BenchSpec().size)
    size_text = "x".join(map(str, size)) if isinstance(size, list) else str(size)
    for check in raw.get("checks") or []:
        if not isinstance(check, dict):
            continue  # the schema check names it
        if check.get("min") == "members":
            check["min"] = members
        if isinstance(check.get("name"), str):
            name = check["name"].replace("{members}", str(members))
            check["name"] = name.replace("{size}", size_text)


def _set_dotted(raw: dict[str, Any], assignment: str, path: Path) -> None:
    """Apply "a.b=VALUE" to the raw mapping (VALUE read as YAML); a number indexes a list,
    e.g. `students.0.set.seed=1`."""
    key, value = parse_assignment(assignment, "teacher.members=3")
    parts = key.split(".")
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
    for key, reader in (("members", "ensemble"), ("samples", "mc_dropout")):
        value = getattr(spec.teacher, key)
        if spec.teacher.kind != reader and value != _TEACHER_DEFAULTS[key]:
            fail(
                f"teacher.{key}={value} is read by a teacher of kind {reader!r} only; this "
                f"teacher is kind={spec.teacher.kind!r}, which would ignore it"
            )
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
        unlabeled, data = Path(spec.unlabeled.root).resolve(), Path(spec.data.root).resolve()
        # A folder inside the data set (Cityscapes' leftImg8bit/train_extra) is checked
        # against its splits' folders once it exists (`check_unlabeled_apart`); one
        # generated there would mix two data sets.
        if data.is_relative_to(unlabeled) or (
            spec.unlabeled.synth is not None and unlabeled.is_relative_to(data)
        ):
            inside = "" if spec.unlabeled.synth is None else ", neither inside the other"
            fail(
                f"unlabeled.root={spec.unlabeled.root!r} must be another folder than "
                f"data.root={spec.data.root!r}{inside} (other images: the students would "
                "learn from the validation and test images)"
            )
        if not spec.students:
            fail("unlabeled images are for the students' distillation: there are no students")
    if spec.pretrain is not None:
        if folders_overlap(spec.pretrain.data.root, spec.data.root):
            fail(
                f"pretrain.data.root={spec.pretrain.data.root!r} must be another folder than "
                f"data.root={spec.data.root!r}, neither inside the other (other data)"
            )
        if baseline.member is not None:
            fail(
                "with `pretrain` the baseline must be trained (`config`), so that it starts "
                "from the same pre-trained encoder as the students, not an ensemble member"
            )
    students = {s.name for s in spec.students}
    ablation_names = [ablation.name for ablation in spec.ablations]
    if len(set(ablation_names)) != len(ablation_names):
        # One step and one rows file per name: the second would be "done before, skipped".
        fail(f"ablation names must be unique, got {ablation_names}")
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
            if ablation.every_seed:
                fail(f"{where}: every_seed is for sweeps (sub_ensembles retrain nothing)")
        elif ablation.student not in students or not ablation.key or not ablation.values:
            fail(
                f"{where}: a sweep needs `student` (one of {sorted(students)}), `key` and `values`"
            )
        elif spec.pretrain is not None and ablation.key.startswith("model.encoder"):
            fail(
                f"{where}: sweeping {ablation.key} changes the encoder, which then no longer "
                "fits the pre-trained one (`pretrain`)"
            )
    # The settings of the steps that come last, checked before anything trains.
    bench, evaluation = spec.bench, spec.evaluate
    if len(bench.size) != 2 or not all(isinstance(v, int) and v > 0 for v in bench.size):
        fail(f"bench.size={bench.size} must be [height, width], two positive integers")
    for key, value, low in (
        ("bench.batch", bench.batch, 1),
        ("bench.repeats", bench.repeats, 1),
        ("bench.warmup", bench.warmup, 0),
        ("evaluate.batch_size", evaluation.batch_size, 1),
        ("evaluate.num_samples", evaluation.num_samples, 0),
        ("evaluate.max_images", 1 if evaluation.max_images is None else evaluation.max_images, 1),
    ):
        if value < low:
            fail(f"{key}={value} must be >= {low}")
    for column in spec.table.columns:
        split_metric_name(column, f"{source}: table.columns")
    for check in spec.checks:
        where = f"{source}: check {check.name!r}"
        split_metric_name(check.metric, where)
        for name in [*check.models, *([check.reference] if check.reference else [])]:
            if name not in names:
                raise ConfigError(f"{where}: unknown model {name!r} (models: {names})")
        if check.compare in ("difference", "abs_difference", "ratio") and not check.reference:
            raise ConfigError(f"{where}: compare={check.compare} needs a reference model")
        if check.compare == "value" and check.reference:
            raise ConfigError(
                f"{where}: compare=value checks each model's own value, so reference="
                f"{check.reference!r} would be ignored; use compare=difference or ratio"
            )
        metric = split_metric_name(check.metric, where)[0]
        if check.compare == "order":
            # An ignored bound would read as checked: the order's only test is the order.
            given = [
                key
                for key, value in (
                    ("min", check.min),
                    ("max", check.max),
                    ("min_count", check.min_count),
                    ("reference", check.reference),
                )
                if value is not None
            ]
            if given:
                raise ConfigError(
                    f"{where}: compare=order takes no {', '.join(given)} (it checks that the "
                    "models' values do not increase along `models`); make a separate check"
                )
            if len(check.models) < 2:
                raise ConfigError(f"{where}: compare=order needs at least two models")
            if metric in PER_CLASS_METRICS:
                # Python orders lists by their first differing class: a check of nothing.
                raise ConfigError(
                    f"{where}: compare=order orders numbers, not the classes of {metric}"
                )
        elif check.min is None and check.max is None:
            raise ConfigError(f"{where}: give min, max or both")
        if check.min_count is not None:
            if metric not in PER_CLASS_METRICS:
                raise ConfigError(
                    f"{where}: min_count counts classes within the bounds, and {metric} has "
                    f"one value, not one per class (per-class metrics: "
                    f"{', '.join(PER_CLASS_METRICS)})"
                )
            if check.min_count < 1:
                raise ConfigError(f"{where}: min_count={check.min_count} must be >= 1")


def seeded_name(name: str, seed_offset: int) -> str:
    """The name (and folder) of a network trained with its config's seed + seed_offset:
    the name itself for offset 0, else `name-s<offset>`."""
    return name if seed_offset == 0 else f"{name}-s{seed_offset}"
