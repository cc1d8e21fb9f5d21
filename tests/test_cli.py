"""The command line answers `--help` and argument errors without loading torch, and the
package's names still load on first use."""

from __future__ import annotations

import subprocess
import sys

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
    ],
)
def test_argument_values_are_checked_when_parsed(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_config_file_after_set_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    # --set takes every word after it, so argparse would only say "config is required".
    with pytest.raises(SystemExit):
        main(["train", "--set", "optim.lr=0.1", "my.yaml"])
    assert "'my.yaml' is not KEY=VALUE" in capsys.readouterr().err
