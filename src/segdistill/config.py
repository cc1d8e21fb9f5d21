"""The run configuration: typed dataclasses <-> YAML, dotted `--set` overrides, validation.

A config file is YAML with the sections of `SegConfig`; every key is optional and
defaults to the values below (docs/training.md lists them). A file may start with
`extends: base.yaml` (a path relative to the file): the base is read first and the file
overrides it key by key (mappings merge, lists and values replace). `--set a.b=VALUE`
overrides come last; VALUE is read as YAML (`0.02`, `[64, 128]`, `null`, `{name: kd}`).

Every mistake is a `ConfigError` naming the file (or the `--set`), the dotted key and the
value; an unknown key comes with the closest valid one. Relative paths in a config
(`data.root`, `run.dir`, `distill.teacher.path`, ...) are relative to the working
directory, not to the file, so `--set data.root=...` means the same as the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import filecmp
import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from segdistill.defaults import DEFAULT_MC_SAMPLES
from segdistill.errors import ConfigError, did_you_mean, read_yaml, yaml_problem

T = TypeVar("T")


@dataclass
class DataConfig:
    """The data set and its augmentation (DUDES: scale 0.5-2, crop, horizontal flip).

    format: "cityscapes" (a Cityscapes-layout tree: real Cityscapes or SynthStreets) or
    "folder" (`root/{split}/images`, `root/{split}/masks`, `root/classes.yaml`, see
    `segdistill.data.folder`). crop_size is (height, width).
    """

    root: str = "data/synthstreets"
    format: Literal["cityscapes", "folder"] = "cityscapes"
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [128, 256])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    color_jitter: float = 0.2
    batch_size: int = 8
    num_workers: int = 2
    num_classes: int = 19
    ignore_index: int = 255


@dataclass
class ModelConfig:
    """The network, as `segdistill.models.build_segmenter` takes it (plus the class count,
    which lives in `data.num_classes`). encoder_weights: a local ImageNet state dict.
    decoder_channels: the decoder's width; None: the architecture's (256 for DeepLabV3+,
    512 for PSPNet, 128 for NfS-SegNet) times the encoder width when that is below 1.
    aux_heads: auxiliary classifiers on inner encoder levels (PSPNet's on layer3, NfS's at
    strides 16 and 32); they are trained by `aux_loss_weight` times the label cross-entropy
    on each (deep supervision; PSPNet's paper uses 0.4) and by the ja_kd / ukd terms, and
    are not part of the prediction."""

    arch: str = "deeplabv3plus"
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    # No output_stride: the architecture's unless a config gives one (models.segmenter).
    encoder_options: dict[str, Any] = field(default_factory=lambda: {"width": 1.0})
    uncertainty_head: Literal["scalar", "per_class"] | None = None
    mc_dropout: float = 0.0
    aux_heads: bool = False
    aux_loss_weight: float = 0.0
    decoder_channels: int | None = None


@dataclass
class OptimConfig:
    """The optimiser (DUDES section 3.3: SGD, lr 0.01, momentum 0.9, weight decay 5e-4,
    poly decay with power 0.9 per step, decoder lr 10x the encoder's). With "adamw",
    `momentum` is unused and lr should be much lower (e.g. 1e-4)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    poly_power: float = 0.9
    decoder_lr_mult: float = 10.0


@dataclass
class TrainerConfig:
    """Lightning Trainer settings. precision: "32-true", or mixed precision on a GPU with
    "16-mixed" or "bf16-mixed" (the DUDES recipe trains with mixed precision);
    limit_*_batches: a number of batches (int) or a fraction (float) per epoch;
    checkpoint_every_n_steps: also write `last.ckpt` every N optimiser steps (it is always
    written at the end of every epoch); accumulate_grad_batches: one optimiser step per N
    batches, their gradients summed (each loss divided by N), so that data.batch_size x N x
    processes is the batch the recipe asks for on a GPU that holds data.batch_size (batch
    norm still sees data.batch_size images); the last batches of an epoch step with
    fewer; gradient_clip_val: clip the gradient's total L2
    norm to this value before each step (None: no clipping), for losses whose scale
    dwarfs the cross-entropy early in training (Karine's 14 L_SA); matmul_precision: float32
    matrix products in full float32 ("highest", torch's default) or on a GPU's tensor cores
    with TF32 ("high") or bfloat16 ("medium"), torch.set_float32_matmul_precision; cuDNN
    convolutions follow their own TF32 switch (torch.backends.cudnn.allow_tf32);
    channels_last: train the network (and the methods' adapters) in the channels-last
    memory format, with images converted likewise: faster where the convolution kernels
    prefer it (benchmarks/README.md); gradients agree up to rounding, but dropout draws its
    masks in memory order, so a run is another random draw than without; keep_best: write
    `best.safetensors` whenever val/miou improves, which evaluation, teachers and
    `init_from` then load (else the last weights); false for runs reported on their own
    validation split (the paper configs on Cityscapes val), where picking the best epoch on
    it would flatter the result."""

    max_epochs: int = 10
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    devices: int = 1
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    num_nodes: int = 1
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    deterministic: bool = False
    checkpoint_every_n_steps: int | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    channels_last: bool = False
    keep_best: bool = True


@dataclass
class RunConfig:
    """Where the run writes: `dir` (the CLI fills it from --run-dir or runs/<config name>).
    `experiment_dir`: the experiment run directory the network belongs to (`segdistill
    experiment` sets it): the paths below it in a saved config are compared by their place
    in it, so a copied or moved run directory holds the same networks."""

    dir: str | None = None
    experiment_dir: str | None = None

    def path(self) -> Path:
        """`dir` as a Path; ConfigError when it is not set."""
        if self.dir is None:
            raise ConfigError("run.dir is not set: pass --run-dir DIR or set run.dir in the config")
        return Path(self.dir)


@dataclass
class TeacherConfig:
    """The teacher of a distillation: kind "ensemble" (path: an ensemble directory or its
    manifest.json), "mc_dropout" (path: a checkpoint; `samples` passes) or "single".
    Another `samples` than the default for a teacher that is not MC dropout is an error."""

    kind: Literal["ensemble", "mc_dropout", "single"] = "ensemble"
    path: str | None = None
    samples: int = DEFAULT_MC_SAMPLES


@dataclass
class MethodSpec:
    """One distillation method (`segdistill.methods`) with its weight and options."""

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillConfig:
    """Distillation: the teacher, the methods whose terms add up to the loss, and options.

    teacher_cache: a folder of the teacher's per-pixel outputs on the training images,
    built on first use and read image by image (`segdistill.teacher_cache`); cache_scale: their
    stored resolution relative to the image (0 < s <= 1); cache_signals: the signals the
    cache stores (null: those the methods read; a superset lets students with other methods
    share one cache folder and one pass of the teacher, e.g. [logits, mean_probs, variance]
    for KD, JA-KD and U-KD). init_from: a run directory or
    weights file of a student pre-trained with labels, whose encoder and decoder start the
    student (Holder & Shafique's two-stage recipe; the heads start fresh). unlabeled_root:
    a folder of images without labels (searched with its sub-folders) added to the
    training split (teacher soft labels only, as NfS-SegNet's incremental training).
    """

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    methods: list[MethodSpec] = field(default_factory=list)
    teacher_cache: str | None = None
    cache_scale: float = 1.0
    cache_signals: list[str] | None = None
    init_from: str | None = None
    unlabeled_root: str | None = None


@dataclass
class EnsembleConfig:
    """`segdistill ensemble`: how many members, and per-member variations.

    vary: {dotted key: [values]}; member i takes values[i % len(values)], e.g.
    `{optim.lr: [0.01, 0.005], data.color_jitter: [0.2, 0.4]}` (Holder & Shafique vary
    the optimiser, learning rate and augmentation). Every member also gets seed + i, which
    draws its data order and augmentation and, unless `same_init`, its initial weights;
    same_init: every member starts from the weights of init_seed (else seed), as Holder &
    Shafique's "identically initialised" members.
    """

    members: int = 5
    vary: dict[str, list[Any]] = field(default_factory=dict)
    same_init: bool = False


@dataclass
class SegConfig:
    """A whole run. `distill` is None for supervised training. seed: draws the initial
    weights, the data order and the augmentation; init_seed: draws the initial weights
    instead, when set (the ensemble's `same_init`)."""

    seed: int = 0
    init_seed: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distill: DistillConfig | None = None
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SegConfig:
    """Read a config file (following `extends`), apply `--set` overrides (a list of
    "KEY=VALUE" strings), validate."""
    if isinstance(overrides, str):  # would be read one character at a time
        raise TypeError(
            f"overrides must be a list of KEY=VALUE strings, not the string {overrides!r}"
        )
    raw = _merge(to_dict(SegConfig()), _read_file(Path(path), chain=()))
    for assignment in overrides:
        raw = _merge(raw, _parse_override(assignment))
    source = f"{path} (with --set overrides)" if overrides else str(path)
    cfg = _convert(SegConfig, raw, "", source)
    validate(cfg, source)
    return cfg


# Top-level keys of an experiment config (`segdistill experiment`) that no training config
# has: a file with them was given to the wrong command.
EXPERIMENT_KEYS = ("teacher", "baseline", "students", "checks", "table", "ablations")


def _refuse_an_experiment(raw: dict[str, Any], path: str | Path) -> None:
    """ConfigError naming `segdistill experiment` when `raw` is an experiment config: its
    first unknown key ("title") would send the user to edit a file that is fine."""
    found = [key for key in EXPERIMENT_KEYS if key in raw]
    if found:
        raise ConfigError(
            f"{path} is an experiment config (it has {', '.join(found)}), not a training "
            f"config: run it with `segdistill experiment {path}`"
        )


def replace_values(cfg: SegConfig, values: dict[str, Any], source: str) -> SegConfig:
    """A new, validated config with `{dotted key: value}` set (e.g. an ensemble member's
    seed and variations); `source` names where the values come from in errors."""
    raw = to_dict(cfg)
    for key, value in values.items():
        raw = _merge(raw, _nested(key, value, source))
    new = _convert(SegConfig, raw, "", source)
    validate(new, source)
    return new


def to_dict(cfg: SegConfig) -> dict[str, Any]:
    """The config as plain YAML-ready values."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: SegConfig) -> str:
    """The config as YAML text, sections in declaration order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# Settings a resumed run may change: where and how visibly it runs, not what it computes
# (nor how many members its ensemble has: an interrupted member resumes in a grown one).
# Not the processes (devices x nodes): the batch of a step and the steps of an epoch, and
# with them the poly schedule, follow from them. Not data.num_workers: the augmentations
# are drawn per worker, so another count gives other (equally good) weights.
RESUME_MAY_CHANGE = (
    "run.dir",
    "run.experiment_dir",
    "trainer.accelerator",
    "trainer.log_every_n_steps",
    "trainer.checkpoint_every_n_steps",
    "ensemble.members",
)
# Settings in which a finished network may differ from the config that would train it now
# and still count as trained by it (an ensemble member, an experiment's step): the loader
# workers change the random draws, not the recipe.
SAME_RECIPE_MAY_CHANGE = (*RESUME_MAY_CHANGE, "data.num_workers")


def format_differences(differences: list[tuple[str, Any, Any]]) -> str:
    """ "optim.lr: 0.01 -> 0.02; seed: 0 -> 1" from `config_differences`; values as the
    config file writes them (a method as {'name': 'kd', ...}, not MethodSpec(...))."""

    def shown(value: Any) -> str:
        if isinstance(value, list):
            return repr([_plain(item) for item in value])
        return repr(_plain(value))

    return "; ".join(f"{key}: {shown(old)} -> {shown(new)}" for key, old, new in differences)


def _plain(value: Any) -> Any:
    is_instance = dataclasses.is_dataclass(value) and not isinstance(value, type)
    return dataclasses.asdict(value) if is_instance else value


def config_differences(
    before: SegConfig, after: SegConfig, ignore: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """(dotted key, value before, value after) for every setting that differs, a setting
    being a field of the schema's sections (a mapping or list field is one setting), except
    the keys in `ignore` and the settings below them."""

    def settings(value: Any, prefix: str) -> dict[str, Any]:
        if not dataclasses.is_dataclass(value):
            return {prefix: value}
        found: dict[str, Any] = {}
        for item in dataclasses.fields(value):
            key = f"{prefix}.{item.name}" if prefix else item.name
            found |= settings(getattr(value, item.name), key)
        return found

    old, new = settings(before, ""), settings(after, "")
    skipped = tuple(f"{key}." for key in ignore)
    return [
        (key, old.get(key), new.get(key))
        for key in dict.fromkeys([*old, *new])
        if old.get(key) != new.get(key) and key not in ignore and not key.startswith(skipped)
    ]


def network_differences(
    before: SegConfig, after: SegConfig, ignore: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """`config_differences` of a trained network's saved config (`before`) and the config
    that would train it now, less the paths that name the same thing: the same place in
    its experiment run directory after a copy or a move of it (`run.experiment_dir`), or
    files with the same bytes (a run directory started with a copy of another's steps
    names its own copy of, e.g., the encoder weights)."""
    roots = before.run.experiment_dir, after.run.experiment_dir
    return [
        (key, old, new)
        for key, old, new in config_differences(before, after, ignore)
        if not (_same_place(old, new, *roots) or _same_file(old, new))
    ]


def _same_place(before: Any, after: Any, old_root: str | None, new_root: str | None) -> bool:
    """Whether two path settings lie at the same place below two experiment run
    directories (`runs/a/teacher` and `runs/b/teacher` for runs/a copied to runs/b)."""
    if not (isinstance(before, str) and isinstance(after, str) and old_root and new_root):
        return False
    first, second = Path(before), Path(after)
    old, new = Path(old_root), Path(new_root)
    return (
        first.is_relative_to(old)
        and second.is_relative_to(new)
        and first.relative_to(old) == second.relative_to(new)
    )


def _same_file(before: Any, after: Any) -> bool:
    """Whether two settings name files with the same bytes."""
    if not (isinstance(before, str) and isinstance(after, str)):
        return False
    first, second = Path(before), Path(after)
    return first.is_file() and second.is_file() and filecmp.cmp(first, second, shallow=False)


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda value: value >= low


def _positive_or_none(value: Any) -> bool:
    return value is None or value > 0


# numpy (and so Lightning's seed_everything) takes seeds of 32 bits.
MAX_SEED = 2**32 - 1


def _seed(value: int) -> bool:
    return 0 <= value <= MAX_SEED


# Value rules the types cannot express: (dotted key, check, what the value must be).
_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", _seed, f"be in 0..{MAX_SEED} (numpy's seed range)"),
    ("init_seed", lambda v: v is None or _seed(v), f"be in 0..{MAX_SEED} or null"),
    ("data.crop_size", lambda v: len(v) == 2 and min(v) >= 1, "be [height, width], both >= 1"),
    (
        "data.scale_range",
        lambda v: len(v) == 2 and 0 < v[0] <= v[1],
        "be [low, high], 0 < low <= high",
    ),
    ("data.color_jitter", _at_least(0), "be >= 0"),
    # The decoders' image pooling (ASPP, PSP) normalises one value per channel and image:
    # batch norm cannot train on a single image.
    ("data.batch_size", _at_least(2), "be >= 2 (batch norm trains on 2 or more images)"),
    ("data.ignore_index", lambda v: 0 <= v <= 255, "be in 0..255 (masks are read as 8 bit)"),
    ("data.num_workers", _at_least(0), "be >= 0"),
    ("data.num_classes", _at_least(1), "be >= 1"),
    ("model.mc_dropout", lambda v: 0 <= v < 1, "be in [0, 1)"),
    ("model.decoder_channels", _positive_or_none, "be > 0 or null"),
    ("model.aux_loss_weight", _at_least(0), "be >= 0"),
    ("optim.lr", lambda v: v > 0, "be > 0"),
    ("optim.momentum", lambda v: 0 <= v < 1, "be in [0, 1)"),
    ("optim.weight_decay", _at_least(0), "be >= 0"),
    ("optim.poly_power", _at_least(0), "be >= 0"),
    ("optim.decoder_lr_mult", lambda v: v > 0, "be > 0"),
    ("trainer.max_epochs", _at_least(1), "be >= 1"),
    ("trainer.devices", _at_least(1), "be >= 1"),
    ("trainer.num_nodes", _at_least(1), "be >= 1"),
    ("trainer.check_val_every_n_epoch", _at_least(1), "be >= 1"),
    ("trainer.log_every_n_steps", _at_least(1), "be >= 1"),
    ("trainer.limit_train_batches", _positive_or_none, "be > 0 or null"),
    ("trainer.limit_val_batches", _positive_or_none, "be > 0 or null"),
    ("trainer.checkpoint_every_n_steps", _positive_or_none, "be > 0 or null"),
    ("trainer.accumulate_grad_batches", _at_least(1), "be >= 1"),
    ("trainer.gradient_clip_val", _positive_or_none, "be > 0 or null"),
    ("ensemble.members", _at_least(1), "be >= 1"),
]


def validate(cfg: SegConfig, source: str) -> None:
    """Check the values the types cannot express (ranges, lengths, keys that go together)."""
    for key, check, rule in _RULES:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        _require(check(value), source, key, value, rule)
    data = cfg.data
    _require(
        not 0 <= data.ignore_index < data.num_classes,
        source,
        "data.ignore_index",
        data.ignore_index,
        f"not be a class id (0..{data.num_classes - 1})",
    )
    _require(
        cfg.model.aux_loss_weight == 0 or cfg.model.aux_heads,
        source,
        "model.aux_loss_weight",
        cfg.model.aux_loss_weight,
        "be 0 without auxiliary heads (set model.aux_heads: true)",
    )
    if cfg.distill is not None:
        distill = cfg.distill
        _require(
            bool(distill.methods),
            source,
            "distill.methods",
            distill.methods,
            "list at least one method, e.g. [{name: kd}]",
        )
        _require(
            distill.teacher.path is not None,
            source,
            "distill.teacher.path",
            distill.teacher.path,
            "be set (with a teacher cache too: its weights identify the cache)",
        )
        _require(
            0 < distill.cache_scale <= 1,
            source,
            "distill.cache_scale",
            distill.cache_scale,
            "be in (0, 1]",
        )
        _require(
            distill.teacher.samples >= 2,
            source,
            "distill.teacher.samples",
            distill.teacher.samples,
            "be >= 2 (an MC-dropout teacher's std over one pass is 0)",
        )
        _require(
            distill.teacher.kind == "mc_dropout" or distill.teacher.samples == DEFAULT_MC_SAMPLES,
            source,
            "distill.teacher.samples",
            distill.teacher.samples,
            "be left out: an MC-dropout teacher reads it, "
            f"kind {distill.teacher.kind!r} ignores it",
        )
    for key, values in cfg.ensemble.vary.items():
        _require(bool(values), source, f"ensemble.vary.{key}", values, "be a non-empty list")
        for value in values:
            _nested(key, value, f"{source}: ensemble.vary.{key}")


def _require(ok: bool, source: str, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {key}={value!r} must {rule}")


def parse_assignment(assignment: str, example: str) -> tuple[str, Any]:
    """ "a.b=VALUE" -> ("a.b", VALUE read as YAML), a `--set` override; ConfigError naming
    it when it is no KEY=VALUE (`example` shows one) or VALUE is not valid YAML."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. {example}")
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"--set {assignment}: the value is not valid YAML ({yaml_problem(error)})"
        ) from None


def _parse_override(assignment: str) -> dict[str, Any]:
    """ "a.b=VALUE" -> {"a": {"b": VALUE}} with VALUE read as YAML; key and type checked."""
    key, value = parse_assignment(assignment, "optim.lr=0.02")
    return _nested(key, value, f"--set {assignment}")


def _nested(key: str, value: Any, source: str) -> dict[str, Any]:
    """ "a.b", VALUE -> {"a": {"b": VALUE}}, checked on its own against the schema, so an
    unknown key or a wrong type is named precisely."""
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    _convert(SegConfig, nested, "", source)
    return nested


def _read_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The raw mapping of a config file with its `extends` chain merged in; each file is
    checked on its own so an error names the file that holds the mistake."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: `extends` forms a cycle: {cycle}")
    raw = read_yaml(path, "config file", ConfigError)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {raw!r}")
    _refuse_an_experiment(raw, path)
    base = raw.pop("extends", None)
    _convert(SegConfig, raw, "", str(path))
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends={base!r} must be a file path")
    return _merge(_read_file(path.parent / base, (*chain, resolved)), raw)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new mapping: `override` on top of `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(cls: type[T], raw: Any, source: str) -> T:
    """An instance of the config dataclass `cls` (e.g. `SegConfig`) from the raw mapping
    `raw` (parsed YAML): unknown keys, missing keys and wrong types are ConfigErrors that
    name `source` and the key."""
    converted: T = _convert(cls, raw, "", source)
    return converted


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    """`value` checked against the type `tp` (dataclasses recursively); ConfigError if not."""
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _type_error(tp, value, key, source)
        return _build(tp, value, key, source)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        arms = [arm for arm in get_args(tp) if arm is not type(None)]
        if len(arms) == 1:
            # "X | None" with a value: X's own error names the inner key that is wrong.
            return _convert(arms[0], value, key, source)
        for arm in arms:
            try:
                return _convert(arm, value, key, source)
            except ConfigError:
                continue
        raise _type_error(tp, value, key, source)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _type_error(tp, value, key, source, did_you_mean(value, get_args(tp)))
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(tp, value, key, source)
        (item,) = get_args(tp)
        return [_convert(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(tp, value, key, source)
        _, item = get_args(tp)
        return {k: _convert(item, v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, str):
        # PyYAML reads `1e-3` (no dot) as a string (YAML 1.1); accept it as the number.
        try:
            value = float(value)
        except ValueError:
            raise _type_error(tp, value, key, source) from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        # No setting means anything at inf or nan (`optim.poly_power=inf` trains one step).
        raise _type_error(tp, value, key, source, " (a finite number)")
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise _type_error(tp, value, key, source)


def _build(cls: type, raw: dict[str, Any], prefix: str, source: str) -> Any:
    """An instance of the dataclass `cls` from `raw`; unknown and missing keys are errors."""
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            # A close key of the same section first, then the closest key anywhere.
            close = difflib.get_close_matches(str(key), names, n=1)
            sibling = [f"{prefix}.{close[0]}" if prefix else close[0]] if close else []
            suggestion = did_you_mean(dotted, sibling or _dotted_keys(SegConfig))
            raise ConfigError(f"{source}: unknown key {dotted!r}{suggestion}")
    for f in fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in raw:
            raise ConfigError(f"{source}: {prefix}.{f.name} is required")
    kwargs = {
        key: _convert(hints[key], value, f"{prefix}.{key}" if prefix else key, source)
        for key, value in raw.items()
    }
    return cls(**kwargs)


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass `cls` ("data.root", "optim.lr", ...)."""
    keys = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        dotted = f"{prefix}{f.name}"
        keys.append(dotted)
        section = [
            a
            for a in (hints[f.name], *get_args(hints[f.name]))
            if isinstance(a, type) and dataclasses.is_dataclass(a)
        ]
        if section:
            keys += _dotted_keys(section[0], f"{dotted}.")
    return keys


def _type_error(tp: Any, value: Any, key: str, source: str, hint: str = "") -> ConfigError:
    return ConfigError(f"{source}: {key}={value!r} must be {_describe(tp)}{hint}")


def _describe(tp: Any) -> str:
    """A type in words for error messages."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return f"a list (each item {_describe(get_args(tp)[0])})"
    if origin is dict:
        return "a mapping"
    names = {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        type(None): "null",
        Any: "anything",
    }
    return names.get(tp, str(tp))
