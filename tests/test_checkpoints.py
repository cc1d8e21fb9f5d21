"""Weights files: round trip, atomic writes, architecture checks, weights_only loading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from segdistill import atomic, checkpoints
from segdistill.atomic import atomic_write, remove_unfinished_writes
from segdistill.checkpoints import (
    build_model,
    load_segmenter,
    load_weights_into,
    read_classes,
    save_weights,
)
from segdistill.config import ModelConfig
from segdistill.data.base import ClassesSpec
from segdistill.errors import CheckpointError, OutputError
from segdistill.models import MCDropout
from segdistill.train import AtomicCheckpointIO

TINY = ModelConfig(encoder_options={"output_stride": 16, "width": 0.125})


def tiny_model(num_classes: int = 3, config: ModelConfig = TINY) -> torch.nn.Module:
    return build_model(config, num_classes)


def test_load_segmenter_rebuilds_the_saved_network(tmp_path: Path) -> None:
    config = ModelConfig(
        encoder_options={"output_stride": 16, "width": 0.125}, uncertainty_head="scalar"
    )
    model = tiny_model(4, config)
    save_weights(tmp_path / "w.safetensors", model, config)

    loaded, loaded_config = load_segmenter(tmp_path / "w.safetensors")
    assert loaded_config == config and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert loaded(x).uncertainty.shape == (1, 1, 32, 32)


def test_run_directory_prefers_best_over_last(tmp_path: Path) -> None:
    save_weights(tmp_path / "checkpoints" / "last.safetensors", tiny_model(3), TINY)
    assert checkpoints.weights_path(tmp_path).name == "last.safetensors"
    save_weights(tmp_path / "checkpoints" / "best.safetensors", tiny_model(5), TINY)
    model, _ = load_segmenter(tmp_path)
    assert model.num_classes == 5
    with pytest.raises(CheckpointError, match="has no weights"):
        load_segmenter(tmp_path / "checkpoints")


def test_failed_write_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, tiny_model(3), TINY)
    before = path.read_bytes()

    def half_then_fail(file) -> None:
        file.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OutputError, match=r"cannot write .*w.safetensors \(disk full\)"):
        atomic_write(path, half_then_fail)

    # The bytes are written, but the flush to disk fails.
    def fsync_fails(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(atomic.os, "fsync", fsync_fails)
    with pytest.raises(OutputError, match="I/O error"):
        save_weights(path, tiny_model(7), TINY)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp left
    assert load_segmenter(path)[0].num_classes == 3
    # A file where the folder should be made: named, nothing written.
    with pytest.raises(OutputError, match=r"cannot write .*w.safetensors/x.json \(File exists\)"):
        atomic_write(path / "x.json", lambda file: file.write(b"{}"))


def test_a_killed_writes_leftover_is_removed_and_nothing_else(tmp_path: Path) -> None:
    # What atomic_write leaves when the process is killed between write and rename.
    leftover = tmp_path / ".last.ckpt.4242.0a1b2c3d.tmp"
    leftover.write_bytes(b"half a checkpoint")
    kept = [tmp_path / "last.ckpt", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in kept:
        path.write_bytes(b"x")
    remove_unfinished_writes(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    remove_unfinished_writes(tmp_path / "absent")  # no folder yet: nothing to do


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        (lambda: tiny_model(5), "seg_head.weight: checkpoint (3, "),
        (
            lambda: tiny_model(
                3, ModelConfig(encoder="resnet34", encoder_options=TINY.encoder_options)
            ),
            "missing keys",
        ),
        (
            lambda: tiny_model(3, ModelConfig(arch="pspnet", encoder_options=TINY.encoder_options)),
            "unexpected keys",
        ),
    ],
)
def test_weights_of_another_architecture_are_refused(tmp_path: Path, other, expected: str) -> None:
    save_weights(tmp_path / "w.safetensors", tiny_model(3), TINY)
    with pytest.raises(CheckpointError) as error:
        load_weights_into(other(), tmp_path / "w.safetensors")
    message = str(error.value)
    assert "saved from deeplabv3plus/resnet18 with 3 classes" in message
    assert expected in message


def test_unreadable_files_are_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_segmenter(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as error:
        load_segmenter(tmp_path / "junk.safetensors")
    assert "exported" not in str(error.value)
    # An export given as a model: the message says where the weights are.
    for name in ("best.onnx", "best.torchscript.pt"):
        (tmp_path / name).write_bytes(b"an exported network")
        with pytest.raises(CheckpointError, match="it is an exported network .* give the run"):
            load_segmenter(tmp_path / name)
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no architecture metadata"):
        load_segmenter(tmp_path / "plain.safetensors")
    # Metadata naming an architecture this version lacks (written by hand, or by another
    # version): the error names the file.
    unknown = '{"model": {"arch": "unet"}, "num_classes": 3}'
    metadata = {checkpoints.ARCHITECTURE_KEY: unknown}
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(tmp_path / "u.safetensors"), metadata)
    with pytest.raises(CheckpointError, match=r"u.safetensors: its architecture .*'unet'"):
        load_segmenter(tmp_path / "u.safetensors")


class NotATensor:
    """An arbitrary object: `torch.load(weights_only=True)` must refuse to unpickle it."""


def test_lightning_checkpoint_io_is_atomic_and_loads_weights_only(
    tmp_path: Path, monkeypatch
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, path)
    assert io.load_checkpoint(path)["epoch"] == 1

    def rename_fails(*args: object) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(atomic.os, "replace", rename_fails)
    with pytest.raises(OutputError, match=r"cannot write .*last.ckpt \(rename failed\)"):
        io.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]

    io.save_checkpoint({"epoch": 3, "evil": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="UnpicklingError: not plain tensors: ") as error:
        io.load_checkpoint(path)
    # What torch found (the class it refused), not its advice to load with weights_only=False.
    assert "NotATensor" in str(error.value) and "weights_only" not in str(error.value)


def test_a_killed_exports_staging_folder_is_left_to_the_export(tmp_path: Path) -> None:
    # export.py stages an ONNX file in a folder ".NAME.XXXX.export" beside it.
    staging = tmp_path / ".best.onnx.ab12cd34.export"
    staging.mkdir()
    folder = tmp_path / ".named.like.a.write.tmp"  # a folder is never a write's leftover
    folder.mkdir()
    unfinished = tmp_path / ".last.ckpt.7.0a1b2c3d.tmp"
    unfinished.write_bytes(b"half")
    remove_unfinished_writes(tmp_path)
    assert staging.is_dir() and folder.is_dir() and not unfinished.exists()


def test_weights_carry_the_classes_they_were_trained_on(tmp_path: Path) -> None:
    classes = ClassesSpec(
        ("road", "car", "pole"),
        np.array([[128, 64, 128], [0, 0, 142], [153, 153, 153]], np.uint8),
        ignore_index=200,
        mask_values={0: 200, 7: 0, 26: 1, 300: 2},
    )
    path = tmp_path / "w.safetensors"
    save_weights(path, tiny_model(3), TINY, classes)
    stored = read_classes(path)
    assert stored is not None and stored.names == classes.names
    assert np.array_equal(stored.colors, classes.colors) and stored.ignore_index == 200
    assert stored.mask_values == {0: 200, 7: 0, 26: 1, 300: 2}
    raw = np.array([[0, 7], [26, 300]])
    assert stored.mapping.decode(raw, path).tolist() == [[200, 0], [1, 2]]
    # Weights written without classes (older files, or no data set) have none.
    save_weights(tmp_path / "plain.safetensors", tiny_model(3), TINY)
    assert read_classes(tmp_path / "plain.safetensors") is None
    with pytest.raises(ValueError, match="3 class names for a network of 4 classes"):
        save_weights(tmp_path / "x.safetensors", tiny_model(4), TINY, classes)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ("{not json", "unreadable"),
        ('{"classes": [{"name": "a", "color": [0, 0]}]}', r"classes\[0\].color must be"),
        ('{"classes": [{"name": "a", "color": [0, 0, 0]}], "colour": 1}', "unknown keys"),
    ],
)
def test_damaged_classes_metadata_is_named(tmp_path: Path, stored: str, message: str) -> None:
    path = tmp_path / "w.safetensors"
    tensors = {k: v.contiguous() for k, v in tiny_model(1).state_dict().items()}
    safetensors.torch.save_file(tensors, path, metadata={checkpoints.CLASSES_KEY: stored})
    with pytest.raises(CheckpointError, match=rf"w.safetensors \(metadata .*{message}"):
        read_classes(path)


def test_the_network_is_built_as_its_model_config_says() -> None:
    """Every network setting reaches the network: one left at the architecture's default
    would train and save another network than the config and the file's metadata say."""
    config = ModelConfig(
        encoder_options={"output_stride": 16, "width": 0.125},
        decoder_channels=16,
        mc_dropout=0.25,
        aux_heads=True,
        uncertainty_head="per_class",
    )
    model = build_model(config, 3)
    state = model.state_dict()
    assert state["decoder.aspp.0.convs.0.0.weight"].shape[0] == 16  # default: 256 x 0.125
    assert {m.p for m in model.modules() if isinstance(m, MCDropout)} == {0.25}
    assert any(key.startswith("aux_heads.") for key in state)
    output = model.eval()(torch.zeros(1, 3, 32, 32))
    assert output.uncertainty.shape == (1, 3, 32, 32) and output.aux_logits


def test_weights_with_keys_the_network_lacks_are_refused(tmp_path: Path) -> None:
    """Extra tensors (here the auxiliary heads) mean another network, even when every
    tensor the model has is there."""
    with_aux = ModelConfig(encoder_options=TINY.encoder_options, aux_heads=True)
    save_weights(tmp_path / "w.safetensors", tiny_model(3, with_aux), with_aux)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(\d+\): aux_heads\."):
        load_weights_into(tiny_model(3), tmp_path / "w.safetensors")


def test_a_model_unlike_its_config_is_not_saved(tmp_path: Path) -> None:
    """Weights written with the config of another network would fail only when loaded,
    maybe on another machine: save_weights refuses them, names what differs and writes
    nothing."""
    path = tmp_path / "w.safetensors"
    with_head = ModelConfig(encoder_options=TINY.encoder_options, uncertainty_head="scalar")
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): uncertainty_head\.") as error:
        save_weights(path, tiny_model(3, with_head), TINY)
    assert "does not match its model config (deeplabv3plus/resnet18, 3 classes)" in str(error.value)
    wider = ModelConfig(encoder_options={"output_stride": 16, "width": 0.25})
    first = r"decoder\.aspp\.0\.convs\.0\.0\.weight: model \(32, 64, 1, 1\) vs config \(64, 128,"
    with pytest.raises(ValueError, match=r"shape mismatches \(147\): " + first):
        save_weights(path, tiny_model(3), wider)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_weights_load_without_the_encoder_file_they_started_from(tmp_path: Path) -> None:
    """The ImageNet encoder file of model.encoder_weights is only the start of training:
    a teacher or evaluation loads every weight from the checkpoint, also once that file
    is gone."""
    model = tiny_model(3)
    started_from = ModelConfig(
        encoder_options=TINY.encoder_options, encoder_weights=str(tmp_path / "gone.pth")
    )
    save_weights(tmp_path / "w.safetensors", model, started_from)
    loaded, config = load_segmenter(tmp_path / "w.safetensors")
    assert config.encoder_weights == str(tmp_path / "gone.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_infinite_weights_are_refused_like_nan_ones(tmp_path: Path) -> None:
    """A batch-norm statistic that overflowed to inf turns every prediction into NaN."""
    model = tiny_model(3)
    batch_norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    batch_norm.running_var.fill_(float("inf"))
    save_weights(tmp_path / "w.safetensors", model, TINY)
    with pytest.raises(CheckpointError, match=r"NaN or infinite weights \(encoder\..*running_var"):
        load_segmenter(tmp_path / "w.safetensors")
