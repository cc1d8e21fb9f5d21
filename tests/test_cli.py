"""The command line answers `--help` and argument errors without loading torch, and the
package's names still load on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import segdistill
from segdistill.cli import COMMAND_MODULES, main

HEAVY_MODULES = ("torch", "lightning", "matplotlib")


def _modules_loaded_by(code: str) -> set[str]:
    """Which of HEAVY_MODULES a fresh interpreter has imported after running `code` (the
    last line it prints: `code` may print help texts before)."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return set(result.stdout.splitlines()[-1].split()) if result.stdout.strip() else set()


def test_building_every_commands_parser_loads_no_heavy_module() -> None:
    # Each command's parser is built (as `--help` builds it) and its help text formatted.
    code = (
        "from segdistill.cli import build_parser\n"
        "parser = build_parser()\n"
        "actions = [a for a in parser._actions if a.choices and hasattr(a, '_name_parser_map')]\n"
        "for sub in actions[0].choices.values():\n"
        "    sub.format_help()\n"
    )
    assert _modules_loaded_by(code) == set()


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["train", "--help"]])
def test_help_prints_without_a_heavy_module(argv: list[str]) -> None:
    code = (
        "import sys\nfrom segdistill.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
    )
    assert _modules_loaded_by(code) == set()


def test_the_package_names_load_on_first_use() -> None:
    assert _modules_loaded_by("import segdistill") == set()
    assert "torch" in _modules_loaded_by("from segdistill import load_predictor")
    for name in segdistill.__all__:
        assert getattr(segdistill, name) is not None
    assert set(segdistill.__all__) <= set(dir(segdistill))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = segdistill.nothing  # type: ignore[attr-defined]


def test_every_command_is_listed() -> None:
    names = {module.__name__.rsplit(".", 1)[1] for module in COMMAND_MODULES}
    assert names == {
        "demo", "experiment", "data", "train", "distill", "evaluate", "predict", "export",
        "bench", "report",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "m", "x.png", "--out", "o", "--size", "0x64"], "size must be positive"),
        (["bench", "m", "--size", "64x-1"], "size must be positive"),
        (["evaluate", "m", "--data", "d", "--workers", "-1"], "--workers: must be >= 0"),
        (["evaluate", "m", "--data", "d", "--num-samples", "x"], "expected an integer"),
        (["data", "preview", "d", "--scenes", "0"], "--scenes: must be >= 1, not 0"),
        # a negative count is measured against the bound it breaks, not the workers' 0
        (["data", "preview", "d", "--scenes", "-2"], "--scenes: must be >= 1, not -2"),
        (["predict", "m", "x.png", "--out", "o", "--vmax", "nan"], "--vmax: must be a finite"),
        (["export", "m", "--atol", "-1"], "--atol: must be a finite number > 0, not -1"),
        (["export", "m", "--atol", "x"], "--atol: expected a number, not 'x'"),
        (["bench", "m", "--size", "64x64", "--batch", "0"], "--batch: must be >= 1, not 0"),
        (["bench", "m", "--size", "64x64", "--repeats", "0"], "--repeats: must be >= 1"),
        (["bench", "m", "--size", "64x64", "--warmup", "-1"], "--warmup: must be >= 0"),
        (["bench", "m", "--size", "64x64", "--threads", "0"], "--threads: must be >= 1"),
        (["evaluate", "m", "--data", "d", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["evaluate", "m", "--data", "d", "--max-images", "0"], "--max-images: must be >= 1"),
        (["predict", "m", "x.png", "--out", "o", "--batch-size", "0"], "--batch-size: must be"),
        (["data", "synth", "--out", "o", "--val", "-1"], "--val: must be >= 0, not -1"),
        (["data", "synth", "--out", "o", "--workers", "0"], "--workers: must be >= 1"),
        (["ensemble", "c.yaml", "--members", "0"], "--members: must be >= 1, not 0"),
        (["ensemble", "c.yaml", "--member", "-1"], "--member: must be >= 0, not -1"),
        (["train", "c.yaml", "--devices", "0"], "--devices: must be >= 1, not 0"),
        (["demo", "--members", "0"], "--members: must be >= 1, not 0"),
    ],
)
def test_argument_values_are_checked_when_parsed(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (["evaluate", "m", "--data", "d", "--out", "{file}"], "folder"),
        (["predict", "m", "x.png", "--out", "{file}"], "folder"),
        (["train", "c.yaml", "--run-dir", "{file}"], "folder"),
        (["experiment", "c.yaml", "--run-dir", "{file}/run"], "folder"),
        (["data", "synth", "--out", "{file}"], "folder"),
        (["export", "m", "--out", "{folder}"], "file"),
        (["bench", "m", "--json", "{folder}"], "file"),
        (["report", "m", "--out", "{folder}"], "file"),
        (["data", "preview", "d", "--out", "{folder}"], "file"),
        (["report", "m", "--out", "{file}/report.html"], "file"),
    ],
)
def test_an_output_path_that_cannot_be_written_is_refused_when_parsed(
    argv: list[str], kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before any work: not at the end of an evaluation, with an OSError traceback."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder").mkdir()
    paths = {"file": tmp_path / "afile", "folder": tmp_path / "afolder"}
    argv = [word.format(file=paths["file"], folder=paths["folder"]) for word in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    if argv[-1].startswith(str(paths["file"]) + "/"):
        assert f"{paths['file']} is a file, so no folder can be made there" in error
    elif kind == "folder":
        assert f"{paths['file']} is a file; give a folder" in error
    else:
        assert f"{paths['folder']} is a folder; give a file name" in error


def test_a_config_file_after_set_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    # --set takes every word after it, so argparse would only say "config is required".
    with pytest.raises(SystemExit):
        main(["train", "--set", "optim.lr=0.1", "my.yaml"])
    assert "'my.yaml' is not KEY=VALUE" in capsys.readouterr().err
