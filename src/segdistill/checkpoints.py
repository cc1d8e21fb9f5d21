"""Checkpoint files: safetensors weights that carry their architecture, written atomically.

A weights file is a safetensors file of the segmenter's state dict whose metadata holds,
under `ARCHITECTURE_KEY`, a JSON object {"model": ModelConfig fields, "num_classes": C}.
`load_segmenter` rebuilds the network from that alone, so an evaluation, a teacher or an
export needs nothing but the file. Under `CLASSES_KEY` it holds the training data set's
classes (`ClassesSpec.document()`, a classes.yaml as JSON: names, colours, ignore value,
mask values or mask colours), which `read_classes` returns, so predictions are drawn and
labels read the way the data set defines them. `load_weights_into` refuses weights that do
not fit the network (another architecture, encoder or class count) and lists the keys and
shapes that differ.

Every file here is written atomically (`segdistill.atomic`): a crash or a full disk leaves
the previous file intact, never a truncated one. Lightning's resumable checkpoint goes through
`train.AtomicCheckpointIO`, which writes the same way and loads with
`torch.load(..., weights_only=True)` (tensors and plain containers only, no arbitrary code).
This module does not import Lightning, so loading a model for inference does not either.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from segdistill.atomic import atomic_write
from segdistill.config import ModelConfig
from segdistill.data.base import ClassesSpec
from segdistill.data.folder import parse_classes
from segdistill.errors import CheckpointError, ConfigError, DataError
from segdistill.models import Segmenter, build_segmenter

ARCHITECTURE_KEY = "segdistill_architecture"
CLASSES_KEY = "segdistill_classes"
# Where a run directory keeps its weights; `load_segmenter(run_dir)` takes the first found.
RUN_WEIGHTS = ("checkpoints/best.safetensors", "checkpoints/last.safetensors")
# The run's resolved config, which `--resume` compares the new one with.
CONFIG_FILE = "config.yaml"


def save_weights(
    path: str | Path,
    model: Segmenter,
    model_config: ModelConfig,
    classes: ClassesSpec | None = None,
) -> None:
    """Write the segmenter's state dict, its architecture and (when given) the classes it
    was trained on as one safetensors file. ValueError when `model` is not the network
    `model_config` describes: the file would not load (`load_segmenter` rebuilds the
    network from the config)."""
    # Built on the meta device: shapes without memory or initialisation.
    with torch.device("meta"):
        described = build_model(
            dataclasses.replace(model_config, encoder_weights=None), model.num_classes
        )
    problems = _state_dict_problems(
        {key: tuple(value.shape) for key, value in model.state_dict().items()},
        {key: tuple(value.shape) for key, value in described.state_dict().items()},
        ("model", "config"),
    )
    if problems:
        raise ValueError(
            f"the model does not match its model config ({model_config.arch}/"
            f"{model_config.encoder}, {model.num_classes} classes), so {path} would not load: "
            + "; ".join(problems)
        )
    architecture = {"model": dataclasses.asdict(model_config), "num_classes": model.num_classes}
    metadata = {"format": "pt", ARCHITECTURE_KEY: json.dumps(architecture)}
    if classes is not None:
        if len(classes.names) != model.num_classes:
            raise ValueError(
                f"{len(classes.names)} class names for a network of {model.num_classes} classes"
            )
        # json writes mask_values' int keys as strings; read_classes reverts them
        metadata[CLASSES_KEY] = json.dumps(classes.document())
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(tensors, metadata=metadata)
    atomic_write(path, lambda file: file.write(data))


def read_architecture(path: str | Path) -> tuple[ModelConfig, int]:
    """(model config, number of classes) stored in a weights file."""
    path = Path(path)
    metadata = _open(path, lambda f: f.metadata()) or {}
    if ARCHITECTURE_KEY not in metadata:
        raise CheckpointError(
            f"{path} has no architecture metadata ({ARCHITECTURE_KEY!r}); it was not written "
            "by segdistill.checkpoints.save_weights"
        )
    try:
        architecture = json.loads(metadata[ARCHITECTURE_KEY])
        return ModelConfig(**architecture["model"]), int(architecture["num_classes"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable architecture metadata ({error})") from error


def read_classes(path_or_run_dir: str | Path) -> ClassesSpec | None:
    """The classes a weights file (or a run directory's, `weights_path`) was trained on;
    None for a file written without them (before segdistill stored them, or by a caller
    that gave none)."""
    path = weights_path(path_or_run_dir)
    metadata = _open(path, lambda f: f.metadata()) or {}
    if CLASSES_KEY not in metadata:
        return None
    where = f"{path} (metadata {CLASSES_KEY!r})"
    try:
        document = json.loads(metadata[CLASSES_KEY])
        if isinstance(document.get("mask_values"), dict):
            document["mask_values"] = {int(k): v for k, v in document["mask_values"].items()}
    except (json.JSONDecodeError, AttributeError, ValueError) as error:
        raise CheckpointError(f"{where}: unreadable ({error})") from error
    try:
        return parse_classes(document, where)
    except DataError as error:
        raise CheckpointError(str(error)) from error


def build_model(model_config: ModelConfig, num_classes: int) -> Segmenter:
    """The segmenter `model_config` describes, freshly initialised (the encoder from
    `encoder_weights` when that is set). A value the network cannot take is a ConfigError
    that names the `model` section, e.g. "model: unknown arch 'unet': ..."."""
    try:
        return build_segmenter(
            model_config.arch,
            model_config.encoder,
            num_classes,
            uncertainty_head=model_config.uncertainty_head,
            encoder_options=model_config.encoder_options,
            mc_dropout=model_config.mc_dropout,
            aux_heads=model_config.aux_heads,
            encoder_weights=model_config.encoder_weights,
            decoder_channels=model_config.decoder_channels,
        )
    except ConfigError as error:
        raise ConfigError(f"model: {error}") from error


def load_segmenter(path_or_run_dir: str | Path) -> tuple[Segmenter, ModelConfig]:
    """Build the segmenter a weights file (or a run directory's best, else last, weights)
    describes, load its weights and return it in eval mode with its model config."""
    path = weights_path(path_or_run_dir)
    model_config, num_classes = read_architecture(path)
    # All weights come from the file: skip the ImageNet encoder file (it may be absent).
    try:
        model = build_model(dataclasses.replace(model_config, encoder_weights=None), num_classes)
    except ConfigError as error:  # metadata written by hand or by another version
        raise CheckpointError(f"{path}: its architecture metadata is invalid: {error}") from error
    load_weights_into(model, path)
    return model.eval(), model_config


def weights_path(path_or_run_dir: str | Path) -> Path:
    """A weights file as given, or the best (else last) weights of a run directory."""
    path = Path(path_or_run_dir)
    if not path.is_dir():
        return path
    for candidate in RUN_WEIGHTS:
        if (path / candidate).is_file():
            return path / candidate
    raise CheckpointError(f"run directory {path} has no weights ({' or '.join(RUN_WEIGHTS)})")


def load_weights_into(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into `model`; CheckpointError unless keys and shapes all match
    and every value is finite."""
    path = Path(path)
    tensors = _open(path, lambda f: {key: f.get_tensor(key) for key in f.keys()})
    problems = _state_dict_problems(
        {key: tuple(value.shape) for key, value in tensors.items()},
        {key: tuple(value.shape) for key, value in model.state_dict().items()},
        ("checkpoint", "model"),
    )
    if problems:
        raise CheckpointError(
            f"{path} does not fit this model ({_saved_from(path)}); " + "; ".join(problems)
        )
    # A run can diverge with every loss finite (the last update overflows): its weights
    # would turn every prediction into NaN.
    diverged = [
        key
        for key, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if diverged:
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({_listing(diverged)}): the training that "
            "wrote it diverged; train again with a lower optim.lr"
        )
    model.load_state_dict(tensors)


def _state_dict_problems(
    found: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    roles: tuple[str, str],
) -> list[str]:
    """How the state dict shapes `found` differ from `expected` (named `roles` in the
    shape lines): shape mismatches, missing keys, unexpected keys, each listed; [] when
    they match."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    shapes = [
        f"{key}: {roles[0]} {found[key]} vs {roles[1]} {expected[key]}"
        for key in sorted(expected.keys() & found.keys())
        if found[key] != expected[key]
    ]
    return [
        f"{label} ({len(items)}): {_listing(items)}"
        for label, items in (
            ("shape mismatches", shapes),
            ("missing keys", missing),
            ("unexpected keys", unexpected),
        )
        if items
    ]


def _open(path: Path, read: Callable[[Any], Any]) -> Any:
    """`read(handle)` on an open safetensors file; CheckpointError if missing or corrupt."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            return read(handle)
    except (safetensors.SafetensorError, OSError) as error:
        # An export (`segdistill export`) is for deployment, not a model source here.
        exported = (
            "; it is an exported network (.onnx / .torchscript.pt): give the run directory "
            "or the .safetensors weights it was exported from"
            if path.suffix in (".onnx", ".pt")
            else ""
        )
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({error}){exported}"
        ) from error


def _saved_from(path: Path) -> str:
    """ "saved from ARCH/ENCODER with C classes", or why that is unknown."""
    try:
        model_config, num_classes = read_architecture(path)
    except CheckpointError:
        return "no architecture metadata"
    return f"saved from {model_config.arch}/{model_config.encoder} with {num_classes} classes"


def _listing(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown}, ... ({len(items) - limit} more)" if len(items) > limit else shown
