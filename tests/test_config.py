"""Config loading: defaults, `extends`, `--set` overrides, validation and its messages."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from segdistill.checkpoints import build_model
from segdistill.cli import main
from segdistill.config import (
    SegConfig,
    config_differences,
    dump_config,
    format_differences,
    from_dict,
    load_config,
    network_differences,
    replace_values,
)
from segdistill.data.folder import load_classes
from segdistill.errors import ConfigError, DataError
from segdistill.pipeline.experiment import load_experiment


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "empty.yaml", ""))
    assert cfg == SegConfig()
    assert cfg.data.crop_size == [128, 256] and cfg.data.ignore_index == 255
    assert cfg.model.encoder_options == {"width": 1.0}  # output_stride: the architecture's
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.01, 0.9)
    assert (cfg.optim.weight_decay, cfg.optim.poly_power, cfg.optim.decoder_lr_mult) == (
        0.0005,
        0.9,
        10.0,
    )
    assert cfg.distill is None and cfg.run.dir is None


def test_extends_and_overrides_merge_mappings_and_replace_values(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    write(
        tmp_path / "base" / "base.yaml",
        "data: {root: base_root, crop_size: [64, 64]}\nmodel: {encoder_options: {width: 0.5}}\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "extends: base/base.yaml\noptim: {lr: 1e-3}\ndata: {batch_size: 4}\n",
    )
    cfg = load_config(
        child,
        [
            "data.crop_size=[32,48]",
            "model.encoder=resnet50",
            "model.encoder_options.output_stride=8",
            "distill.teacher.path=teachers/ens",
            "distill.methods=[{name: kd, weight: 2}]",
        ],
    )
    assert cfg.data.root == "base_root" and cfg.data.batch_size == 4
    assert cfg.data.crop_size == [32, 48]
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string
    assert cfg.model.encoder == "resnet50"
    assert cfg.model.encoder_options == {"output_stride": 8, "width": 0.5}
    assert cfg.distill.teacher.path == "teachers/ens"
    assert cfg.distill.methods[0].name == "kd" and cfg.distill.methods[0].weight == 2.0


def test_dumped_config_loads_back_equal(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.yaml", "seed: 3\n"), ["ensemble.vary={optim.lr: [1, 2]}"])
    assert load_config(write(tmp_path / "out.yaml", dump_config(cfg))) == cfg


def test_config_differences_list_the_changed_leaf_settings(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "seed: 3\n")
    before = load_config(path)
    after = load_config(
        path,
        [
            "trainer.max_epochs=20",
            "trainer.devices=2",
            "model.encoder_options.width=0.5",
            "ensemble.vary={optim.lr: [1, 2]}",
        ],
    )
    assert config_differences(before, after, ignore=("trainer.devices",)) == [
        ("model.encoder_options", before.model.encoder_options, after.model.encoder_options),
        ("trainer.max_epochs", 10, 20),
        ("ensemble.vary", {}, {"optim.lr": [1, 2]}),
    ]
    assert after.model.encoder_options["width"] == 0.5
    assert config_differences(before, after, ignore=("trainer", "model", "ensemble")) == []
    assert config_differences(before, before) == []


def test_a_network_of_a_moved_run_directory_names_the_same_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path below the experiment run directory a network was trained in matches the same
    place below the one it lies in now, however the two are spelled (copied, moved up or
    down, relative or absolute); a path elsewhere only when it names the same bytes."""
    monkeypatch.chdir(tmp_path)

    def network(root: str, weights: str) -> SegConfig:
        values = {
            "run.dir": f"{root}/students/kd",
            "run.experiment_dir": root,
            "model.encoder_weights": weights,
        }
        return replace_values(SegConfig(), values, "t")

    moves = {
        "runs/a": "runs/b",  # cp -r runs/a runs/b
        "a": "runs/a",  # mv a runs/a
        "runs/a_": "a_",  # mv runs/a_ a_
        "runs/c": str(tmp_path / "runs" / "c"),  # the same directory, given absolute
    }
    for old, new in moves.items():
        before = network(old, f"{old}/pretrain/encoder.safetensors")
        copied = network(new, f"{new}/pretrain/encoder.safetensors")
        assert network_differences(before, copied) == []
        elsewhere = network(new, f"{new}/other/encoder.safetensors")
        assert [key for key, _, _ in network_differences(before, elsewhere)] == [
            "model.encoder_weights"
        ]

    # old/exp copied to new/exp: old/w and new/w lie outside both, so only their bytes count.
    for folder, content in (("old", b"weights"), ("new", b"other weights")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "w.safetensors").write_bytes(content)
    before, after = network("old/exp", "old/w.safetensors"), network("new/exp", "new/w.safetensors")
    assert [key for key, _, _ in network_differences(before, after)] == ["model.encoder_weights"]
    (tmp_path / "new" / "w.safetensors").write_bytes(b"weights")
    assert network_differences(before, after) == []

    # Trained outside an experiment (no run.experiment_dir): a path is just a path.
    alone = replace_values(before, {"run.experiment_dir": None}, "t")
    moved = replace_values(alone, {"model.encoder_weights": "runs/b/pretrain/w"}, "t")
    assert [key for key, _, _ in network_differences(alone, moved)] == ["model.encoder_weights"]


def test_differences_are_shown_as_the_config_file_writes_them(tmp_path: Path) -> None:
    distill = "distill={teacher: {path: t}, methods: [{name: dudes}]}"
    before = load_config(write(tmp_path / "c.yaml", ""), [distill])
    after = replace_values(before, {"distill.methods": [{"name": "kd"}], "optim.lr": 0.02}, "t")
    text = format_differences(config_differences(before, after))
    assert (
        "distill.methods: [{'name': 'dudes'" in text and "-> [{'name': 'kd', 'weight': 1.0" in text
    )
    assert "MethodSpec" not in text and "optim.lr: 0.01 -> 0.02" in text


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("optim: {lrr: 0.1}\n", [], "c.yaml: unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        (
            "",
            ["optim.batch_size=3"],
            "unknown key 'optim.batch_size'; did you mean 'data.batch_size'",
        ),
        ("", ["model.encodr=x"], "unknown key 'model.encodr'; did you mean 'model.encoder'"),
        ("crop_size: [1, 2]\n", [], "unknown key 'crop_size'; did you mean 'data.crop_size'"),
        (
            "distill: {teacher: {path: t}, methods: [{name: kd, wieght: 1}]}\n",
            [],
            "unknown key 'distill.methods[0].wieght'; did you mean 'distill.methods[0].weight'",
        ),
    ],
)
def test_unknown_key_is_named_with_the_closest_valid_one(
    tmp_path: Path, text: str, overrides: list[str], expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path / "c.yaml", text), overrides)
    assert expected in str(error.value)


def test_unknown_key_in_a_base_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "trainer: {max_epoch: 3}\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown key 'trainer\.max_epoch'"):
        load_config(child)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.batch_size=true", "data.batch_size=True must be an integer"),
        ("optim.name=adam", "must be one of 'sgd', 'adamw'; did you mean 'adamw'?"),
        (
            "distill.teacher.kind=ensembel",
            "distill.teacher.kind='ensembel' must be one of 'ensemble', 'mc_dropout', 'single'; "
            "did you mean 'ensemble'?",
        ),
        ("data.batch_size=1", "data.batch_size=1 must be >= 2"),
        # Values that would train silently wrong: nothing learned (lr 0), momentum that
        # never forgets, a network that drops every activation, no epoch at all.
        ("optim.lr=0", "optim.lr=0.0 must be > 0"),
        ("optim.momentum=1", "optim.momentum=1.0 must be in [0, 1)"),
        ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 must be >= 0"),
        ("optim.decoder_lr_mult=0", "optim.decoder_lr_mult=0.0 must be > 0"),
        ("model.mc_dropout=1", "model.mc_dropout=1.0 must be in [0, 1)"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be >= 1"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0 must be > 0 or null"),
        (
            "trainer.checkpoint_every_n_steps=0",
            "trainer.checkpoint_every_n_steps=0 must be > 0 or null",
        ),
        ("data.crop_size=[32]", "data.crop_size=[32] must be [height, width], both >= 1"),
        ("data.scale_range=[0, 2]", "data.scale_range=[0.0, 2.0] must be [low, high], 0 < low"),
        ("data.ignore_index=256", "data.ignore_index=256 must be in 0..255"),
        (
            "distill={teacher: {path: t}, methods: [{name: kd}], cache_scale: 1.5}",
            "distill.cache_scale=1.5 must be in (0, 1]",
        ),
        ("data.ignore_index=-1", "data.ignore_index=-1 must be in 0..255"),
        ("data.scale_range=[2.0, 0.5]", "data.scale_range=[2.0, 0.5] must be [low, high]"),
        ("data.ignore_index=3", "data.ignore_index=3 must not be a class id"),
        ("distill.methods=[{weight: 1}]", "distill.methods[0].name is required"),
        ("distill.methods=[{name: kd}]", "distill.teacher.path=None must be set"),
        ("ensemble.vary={optim.lrx: [1]}", "unknown key 'optim.lrx'; did you mean 'optim.lr'"),
        ("ensemble.vary={optim.lr: [abc]}", "optim.lr='abc' must be a number"),
        ("optim.lr", "expected KEY=VALUE"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1.0 must be > 0 or null"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be >= 1"),
        ("trainer.matmul_precision=tf32", "must be one of 'highest', 'high', 'medium'"),
        (
            "optim.lr=[1,",
            "--set optim.lr=[1,: the value is not valid YAML (while parsing a flow node: "
            "expected the node content, but found '<stream end>' at line 1, column 4)",
        ),
        ("data.crop_size=5", "data.crop_size=5 must be a list (each item an integer)"),
        ("data=3", "data=3 must be a mapping"),
        ("model.encoder_options=[1]", "model.encoder_options=[1] must be a mapping"),
        (
            "trainer.limit_train_batches=abc",
            "trainer.limit_train_batches='abc' must be an integer or a number or null",
        ),
        ("distill.cache_signals=3", "distill.cache_signals=3 must be a list (each item a string)"),
        ("seed=4294967296", "seed=4294967296 must be in 0..4294967295 (numpy's seed range)"),
        ("seed=-1", "seed=-1 must be in 0..4294967295"),
        ("init_seed=-5", "init_seed=-5 must be in 0..4294967295 or null"),
        (
            "distill={teacher: {kind: mc_dropout, path: t, samples: 1}, methods: [{name: ukd}]}",
            "distill.teacher.samples=1 must be >= 2",
        ),
        (
            "distill={teacher: {kind: ensemble, path: t, samples: 5}, methods: [{name: kd}]}",
            "distill.teacher.samples=5 must be left out: an MC-dropout teacher reads it, kind "
            "'ensemble' ignores it",
        ),
        ("model.aux_loss_weight=-0.4", "model.aux_loss_weight=-0.4 must be >= 0"),
        ("model.aux_loss_weight=.nan", "model.aux_loss_weight=nan must be a number (a finite"),
        ("optim.poly_power=inf", "optim.poly_power=inf must be a number (a finite number)"),
        ("optim.lr=.inf", "optim.lr=inf must be a number (a finite number)"),
        ("data.scale_range=[0.5, .inf]", "data.scale_range[1]=inf must be a number (a finite"),
        (
            "model.aux_loss_weight=0.4",
            "model.aux_loss_weight=0.4 must be 0 without auxiliary heads (set model.aux_heads: "
            "true)",
        ),
    ],
)
def test_invalid_values_are_named(tmp_path: Path, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path / "c.yaml", ""), [override])
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1,\n", "c.yaml: not valid YAML"),
        ("- 1\n- 2\n", "c.yaml: a config must be a mapping of sections, got [1, 2]"),
        ("extends: 3\n", "c.yaml: extends=3 must be a file path"),
    ],
)
def test_a_broken_config_file_is_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path / "c.yaml", text))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)  # one line: PyYAML's own text quotes the input


def test_extends_cycle_and_missing_file_are_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("reader", "what", "error"),
    [
        (load_config, "config file", ConfigError),
        (load_experiment, "experiment config", ConfigError),
        (load_classes, "classes file", DataError),
    ],
)
def test_a_folder_or_a_binary_file_for_a_yaml_file_is_named(
    tmp_path: Path, reader: Callable[[Path], object], what: str, error: type[Exception]
) -> None:
    """A missing file, or a checkpoint, an image or a run folder given where a YAML file
    belongs."""
    missing = tmp_path / "missing.yaml"
    with pytest.raises(error, match=f"^{what} {re.escape(str(missing))} does not exist$"):
        reader(missing)
    binary = tmp_path / "best.safetensors"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(error, match=f"best.safetensors: not a text file, so not a {what}"):
        reader(binary)
    (tmp_path / "run").mkdir()
    with pytest.raises(error, match=f"{what} .*run is a folder; give the file"):
        reader(tmp_path / "run")


def test_the_cli_names_a_binary_config_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "best.safetensors").write_bytes(bytes(range(128, 256)))
    assert main(["train", str(tmp_path / "best.safetensors")]) == 2
    assert capsys.readouterr().err.strip().endswith("not a text file, so not a config file")


def test_replace_values_validates(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.yaml", ""))
    assert replace_values(cfg, {"seed": 4, "optim.lr": 0.5}, "test").optim.lr == 0.5
    with pytest.raises(ConfigError, match="member 1: optim.lr=-1.0 must be > 0"):
        replace_values(cfg, {"optim.lr": -1}, "member 1")


def test_overrides_given_as_one_string_are_refused(tmp_path: Path) -> None:
    """'seed=3' was read one character at a time ("--set s: expected KEY=VALUE")."""
    path = write(tmp_path / "c.yaml", "")
    with pytest.raises(TypeError, match="list of KEY=VALUE strings, not the string 'seed=3'"):
        load_config(path, "seed=3")  # type: ignore[arg-type]
    assert load_config(path, ["seed=3"]).seed == 3


@pytest.mark.parametrize(
    ("arch", "encoder", "stride"),
    [("deeplabv3plus", "resnet18", 16), ("pspnet", "resnet18", 8), ("nfs", "nfsnet", 64)],
)
def test_an_output_stride_no_config_gives_is_the_architectures(
    arch: str, encoder: str, stride: int
) -> None:
    # The default config names none, so `--set model.arch=pspnet` builds the PSPNet of
    # Karine et al. (stride 8) and `model.arch=nfs` NfS-SegNet (64), not DeepLabV3+'s 16.
    values = {"model.arch": arch, "model.encoder": encoder, "model.encoder_options.width": 0.125}
    cfg = replace_values(SegConfig(), values, "test")
    with torch.device("meta"):
        network = build_model(cfg.model, 3)
    assert network.encoder.strides[-1] == stride


def test_the_documented_defaults_are_the_code_defaults() -> None:
    """docs/training.md shows every key with its default: a default changed in the code
    alone (a shorter run, no flip, no best checkpoint) would silently train another recipe
    than the one users read."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    block = text.split("## Config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    documented = yaml.safe_load(block)
    assert documented["optim"]["poly_power"] == 0.9  # the block is the one meant
    assert SegConfig() == from_dict(SegConfig, documented, "docs/training.md")


def test_a_file_overrides_the_file_it_extends(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "optim: {lr: 0.5, momentum: 0.5}\ntrainer: {max_epochs: 7}\n")
    write(tmp_path / "middle.yaml", "extends: base.yaml\noptim: {lr: 0.2}\n")
    child = write(tmp_path / "child.yaml", "extends: middle.yaml\ntrainer: {max_epochs: 3}\n")
    cfg = load_config(child)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.trainer.max_epochs) == (0.2, 0.5, 3)
    assert load_config(child, ["optim.lr=0.1"]).optim.lr == 0.1
