"""The command line answers `--help` and argument errors without loading torch, and the
package's names still load on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import segdistill
from segdistill.cli import COMMAND_MODULES, build_parser, main

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
        (["export", "m", "--atol", "0"], "--atol: must be a finite number > 0, not 0"),
        (["export", "m", "--atol", "inf"], "--atol: must be a finite number > 0, not inf"),
        (["bench", "m", "--size", "64x64", "--batch", "0"], "--batch: must be >= 1, not 0"),
        (["bench", "m", "--size", "64x64", "--repeats", "0"], "--repeats: must be >= 1"),
        (["bench", "m", "--size", "64x64", "--warmup", "-1"], "--warmup: must be >= 0"),
        (["bench", "m", "--size", "64x64", "--threads", "0"], "--threads: must be >= 1"),
        (["evaluate", "m", "--data", "d", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["evaluate", "m", "--data", "d", "--max-images", "0"], "--max-images: must be >= 1"),
        (["predict", "m", "x.png", "--out", "o", "--batch-size", "0"], "--batch-size: must be"),
        (["data", "synth", "--out", "o", "--val", "-1"], "--val: must be >= 0, not -1"),
        (["data", "synth", "--out", "o", "--workers", "0"], "--workers: must be >= 1"),
        (["data", "synth", "--out", "o", "--seed", "-1"], "--seed: must be >= 0, not -1"),
        (["ensemble", "c.yaml", "--members", "0"], "--members: must be >= 1, not 0"),
        (["ensemble", "c.yaml", "--member", "-1"], "--member: must be >= 0, not -1"),
        (["train", "c.yaml", "--devices", "0"], "--devices: must be >= 1, not 0"),
        (["demo", "--members", "0"], "--members: must be >= 1, not 0"),
        # It ended in a StopIteration traceback.
        (["evaluate", "m", "--data", "d", "--splits", " , "], "--splits: no split name in"),
        # matplotlib's "Format 'foo' is not supported" traceback, after the work.
        (["data", "preview", "d", "--out", "s.foo"], "s.foo: .foo is not an image format"),
        # One dropout pass has no spread; 0 or -3 were taken for non-MC models.
        (
            ["predict", "m", "x.png", "--out", "o", "--mc-samples", "1"],
            "--mc-samples: must be >= 2",
        ),
        (["evaluate", "m", "--data", "d", "--mc-samples", "0"], "--mc-samples: must be >= 2"),
        (["bench", "m", "--size", "8x8", "--mc-samples", "-3"], "--mc-samples: must be >= 2"),
        # Every pixel is >= a negative threshold: a flag that flags everything.
        (
            ["predict", "m", "x.png", "--out", "o", "--distrust-above", "-1"],
            "--distrust-above: must be a finite number >= 0, not -1",
        ),
        # It ran the whole export before the exporter refused.
        (["export", "m", "--opset", "0"], "--opset: must be >= 1, not 0"),
        # evaluate took any text and failed after checking its data; predict and bench
        # refused cuda:1, which evaluate took.
        (["evaluate", "m", "--data", "d", "--device", "gpu"], "device must be auto, cpu, cuda"),
        (["predict", "m", "x.png", "--out", "o", "--device", "mps"], "not 'mps'"),
        (["bench", "m", "--size", "8x8", "--device", "cuda:x"], "not 'cuda:x'"),
        (["bench", "m", "--size", "8x8", "--device", "cuda:"], "not 'cuda:'"),
        # Refused after the model had loaded; 1 would flag every image.
        (["predict", "m", "x.png", "--out", "o", "--ood-fpr", "1"], "--ood-fpr: must be a share"),
        (["predict", "m", "x.png", "--out", "o", "--ood-fpr", "nan"], "--ood-fpr: must be a fin"),
        (["predict", "m", "x.png", "--out", "o", "--ood-fpr", "-0.1"], "--ood-fpr: must be a fin"),
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
    "argv",
    [
        ["evaluate", "m", "--data", "d"],
        ["predict", "m", "x.png", "--out", "o"],
        ["bench", "m", "--size", "8x8"],
    ],
)
def test_every_command_that_runs_models_takes_the_same_devices(argv: list[str]) -> None:
    parser = build_parser()
    # auto (and no --device) is None: default_device picks CUDA when there is one.
    assert parser.parse_args(argv).device is None
    assert parser.parse_args([*argv, "--device", "auto"]).device is None
    for device in ("cpu", "cuda", "cuda:1"):
        assert parser.parse_args([*argv, "--device", device]).device == device


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


def test_the_bounds_of_argument_values_are_inclusive(tmp_path: Path) -> None:
    """The smallest allowed values parse: 0 images of a split, 1 worker, the smallest
    SynthStreets size written with a capital X (height first)."""
    args = build_parser().parse_args(
        ["data", "synth", "--out", str(tmp_path), "--size", "16X32", "--val", "0", "--workers", "1"]
    )
    assert (args.size, args.val, args.workers) == ((16, 32), 0, 1)
    args = build_parser().parse_args(["export", "m", "--format", "onnx", "--atol", "1e-12"])
    assert args.atol == 1e-12
    args = build_parser().parse_args(["bench", "m", "--size", "8x8", "--mc-samples", "2"])
    assert args.mc_samples == 2
    args = build_parser().parse_args(["predict", "m", "x", "--out", "o", "--distrust-above", "0"])
    assert args.distrust_above == 0.0


def test_the_mc_samples_default_is_the_documented_one() -> None:
    # docs/evaluation.md: load_predictor(source, mc_samples=8), as the commands pass it on.
    for argv in (["evaluate", "m", "--data", "d"], ["predict", "m", "x.png", "--out", "o"]):
        assert build_parser().parse_args(argv).mc_samples == 8


def test_the_synth_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    # docs/synthstreets.md: 128x256, 600 / 100 / 100 images, seed 0, every shift, 1 and 1.
    args = build_parser().parse_args(["data", "synth", "--out", str(tmp_path)])
    assert (args.size, args.train, args.val, args.test, args.seed) == ((128, 256), 600, 100, 100, 0)
    assert args.shifts == ("fog", "rain", "night", "newcity", "anomaly")
    assert (args.object_scale, args.crowd) == (1.0, 1.0)


def test_output_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """`segdistill data info DIR | head -1`: a BrokenPipeError traceback when head had
    gone; Unix tools stop quietly, with the exit status of SIGPIPE (141)."""
    argv = ["data", "synth", "--size", "16x32", "--train", "1", "--val", "0", "--test", "0"]
    argv += ["--shifts", "none", "--workers", "1", "--out", str(tmp_path / "synth")]
    process = subprocess.Popen(
        [sys.executable, "-m", "segdistill.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()  # the reader goes before anything is written
    error = process.communicate(timeout=120)[1]
    assert process.returncode == 141, error
    assert "Traceback" not in error and "BrokenPipeError" not in error, error


# A folder no one can make: /proc takes no new entries, whoever asks (root included), so
# this stands for a read-only mount or a folder without write permission.
UNMAKEABLE = Path("/proc/segdistill-cannot-be-made")
needs_proc = pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")


def exit_status(argv: list[str]) -> int:
    """main's exit status, whether argparse (SystemExit) or the command gives it."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return int(exit_info.code or 0)


@needs_proc
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "{config}", "--run-dir", "{out}"],
        ["ensemble", "{config}", "--members", "1", "--run-dir", "{out}"],
        ["experiment", "{experiment}", "--run-dir", "{out}"],
        ["data", "synth", "--out", "{out}", "--size", "16x32", "--train", "1", "--val", "0"],
    ],
)
def test_an_output_folder_that_cannot_be_made_is_a_one_line_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It ended in a FileNotFoundError / PermissionError traceback (exit status 1) from
    mkdir, where `predict --out`, `report --out` and `bench --json` say `error: cannot write
    PATH` with exit status 2."""
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{root: {tmp_path / 'no-data'}}}\n")
    experiment = Path(__file__).resolve().parents[1] / "configs" / "quick" / "dudes.yaml"
    out = UNMAKEABLE / "run"
    argv = [w.format(config=config, experiment=experiment, out=out) for w in argv]
    if argv[0] == "data":
        argv += ["--test", "0", "--shifts", "none", "--workers", "1"]
    assert exit_status(argv) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert str(UNMAKEABLE) in error  # the message names the folder


def test_a_teacher_cache_that_is_a_file_is_refused_when_parsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--teacher-cache is a folder the cache is built in, as --run-dir and --out are; a file
    there was only found after the teacher and the data had loaded, with "incomplete (no
    cache.json); rebuilding it" printed first, and a stray FILE.lock left beside it."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "c.yaml", "--teacher-cache", str(tmp_path / "afile")])
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'afile'} is a file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


QUICK_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "quick"


@pytest.mark.parametrize(
    ("argv", "right_command"),
    [
        # An experiment file given to train: "unknown key 'title'".
        (["train", str(QUICK_CONFIGS / "dudes.yaml")], "segdistill experiment"),
        # A training config given to experiment: "unknown key 'seed'; did you mean
        # 'seeds'?", which sends the user to edit a config that is fine.
        (["experiment", str(QUICK_CONFIGS / "train_baseline.yaml")], "segdistill train"),
    ],
)
def test_a_config_of_the_other_command_names_the_command_it_is_for(
    argv: list[str], right_command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert argv[1] in error and right_command in error
    assert not (tmp_path / "run").exists()
