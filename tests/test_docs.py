"""README.md, docs/*.md and the configs' comments stay true to the code: every
`segdistill ...` command they show parses with the real command line, every `--set KEY`
names a key of the config it sets (the config named on the line, loaded as the command
would load it), and the config snippets load. Nothing is run; each test lists all the
lines that fail, as FILE:LINE with the error, not only the first.

Commands are read from fenced blocks of shell (or unlabelled) code: backslash
continuations joined, `# comments` dropped, the commands of `cmd && segdistill ...`,
`/usr/bin/time -v segdistill ...`, `srun ...`, loops, `-m segdistill.cli` and `--wrap
"segdistill ..."` included. Synopsis lines (`[--opt X]`, `a|b`) are read with their
optional parts and each alternative; placeholders (CONFIG, DIR, N, HxW, `$VAR`, `...`)
become harmless values (`_fill`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import itertools
import re
import shlex
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import yaml

from segdistill.cli import build_parser
from segdistill.commands.train import load_run_config
from segdistill.config import SegConfig, load_config, replace_values, to_dict
from segdistill.errors import SegdistillError
from segdistill.methods import METHODS, PIXEL_METHODS
from segdistill.models import ARCHITECTURES
from segdistill.models.encoders import ENCODERS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIG_FILES = sorted((ROOT / "configs").rglob("*.yaml"))
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}

# What a placeholder stands for (the command's own name for CONFIG), else its lower case.
CONFIG_FOR = {
    "train": "configs/quick/train_baseline.yaml",
    "ensemble": "configs/quick/train_baseline.yaml",
    "distill": "configs/quick/distill_kd.yaml",
    "experiment": "configs/quick/dudes.yaml",
}
PLACEHOLDERS = {"N": "2", "B": "2", "K": "2", "I": "1", "HxW": "64x128", "THRESHOLD": "0.5"}
# Words after which `segdistill` is a command, not a word of prose.
WRAPPERS = {"time", "/usr/bin/time", "-v", "srun", "do", "then", "exec", "nice", "env"}


@dataclass
class Command:
    where: str  # FILE:LINE
    argv: list[str]


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _logical_lines(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """(first line number, text) with backslash continuations joined (the first line's
    indentation kept)."""
    start, parts = None, []
    for number, text in lines:
        start = number if start is None else start
        parts.append(text.rstrip().removesuffix("\\").rstrip() if parts else text.rstrip())
        if text.rstrip().endswith("\\"):
            parts[-1] = parts[-1].removesuffix("\\")
            continue
        yield start, " ".join([parts[0], *(part.strip() for part in parts[1:])])
        start, parts = None, []
    if parts:
        yield start, " ".join([parts[0], *(part.strip() for part in parts[1:])])


def _shell_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The logical lines of the shell (and unlabelled) fenced blocks of a Markdown file."""
    block: list[tuple[int, str]] | None = None
    language = ""
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if text.strip().startswith("```"):
            if block is None:
                block, language = [], text.strip()[3:].strip()
            else:
                if language in SHELL_BLOCKS:
                    yield from _logical_lines(block)
                block = None
        elif block is not None:
            block.append((number, text))


def _comment_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The commands of a YAML file's comments: indented (`#   segdistill ...`) or after a
    colon (`# Pre-train first:  segdistill ...`), continued on the next comment line; not
    prose that names the program (`# segdistill has no GoogLeNet`, `(segdistill data ...)`)."""
    comments = [
        (number, text.split("#", 1)[1])
        for number, text in enumerate(path.read_text().splitlines(), 1)
        if text.lstrip().startswith("#")
    ]
    for number, text in _logical_lines(comments):
        match = re.match(r"(?:\s{2,}|.*:\s+)(segdistill\s.*)", text)
        if match:
            yield number, match.group(1)


def _variants(text: str) -> list[str]:
    """A synopsis (`--out DIR [--labels X]`, `--format onnx|torchscript`) as the lines it
    allows: the optional parts in, one line per alternative; another line as it is."""
    if not re.search(r"(?<!\S)\[-", text):
        return [text]
    text = re.sub(r"(?<!\S)\[|\](?!\S)", "", text)
    words = [word.split("|") for word in text.split()]
    return [" ".join(choice) for choice in itertools.product(*words)]


def _is_operator(token: str) -> bool:
    return bool(token) and set(token) <= set("();<>|&")


def _commands_in(text: str) -> Iterator[list[str]]:
    """The argument lists of the `segdistill` commands of one shell line."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    for index, token in enumerate(tokens):
        before = tokens[index - 1] if index else ""
        if token.startswith("segdistill "):  # a quoted command: sbatch --wrap "..."
            yield from _commands_in(token)
            continue
        command = token == "segdistill" and (
            not before
            or _is_operator(before)
            or before in WRAPPERS
            or before.endswith(":")
            or re.fullmatch(r"[A-Za-z_]\w*=\S*", before) is not None
        )
        if not (command or (token == "segdistill.cli" and before == "-m")):
            continue
        argv = []
        for word in tokens[index + 1 :]:
            if _is_operator(word):
                break
            argv.append(word)
        yield argv


def _fill(argv: list[str]) -> list[str]:
    """Placeholders as harmless values: CONFIG the command's usual config, `$VAR` 0,
    `...` left out, N / HxW / THRESHOLD numbers, another capitalised word its lower case."""
    command = argv[0] if argv else ""
    filled = []
    for word in argv:
        word = re.sub(r"\\?\$\{?[A-Za-z_]\w*\}?", "0", word)
        if word == "...":
            continue
        bare = word.removesuffix("...")
        if bare == "CONFIG":
            word = CONFIG_FOR.get(command, "config.yaml")
        elif re.fullmatch(r"[A-Z][A-Z0-9_]*|HxW", bare):
            word = PLACEHOLDERS.get(bare, bare.lower())
        filled.append(word)
    return filled


def documented_commands(docs: list[Path], configs: list[Path]) -> list[Command]:
    """The `segdistill` commands of the Markdown files' shell blocks and of the YAML files'
    comments, placeholders filled; a line with unbalanced quotes is a command
    `["<the error>"]`, which no parser takes."""
    commands = []
    sources = [(path, _shell_lines(path)) for path in docs]
    sources += [(path, _comment_lines(path)) for path in configs]
    for path, lines in sources:
        for number, text in lines:
            if "segdistill" not in text:
                continue
            where = f"{_relative(path)}:{number}"
            for variant in _variants(text):
                try:
                    found = list(_commands_in(variant))
                except ValueError as error:  # unbalanced quotes
                    if re.match(r"\s*segdistill\s", variant):
                        commands.append(Command(where, [f"<{error}>"]))
                    continue
                commands.extend(Command(where, _fill(argv)) for argv in found)
    return commands


COMMANDS = documented_commands(DOCS, CONFIG_FILES)


def _prose(path: Path) -> str:
    """A Markdown file with its fenced blocks blanked (line numbers kept)."""
    lines, fenced = [], False
    for text in path.read_text().splitlines():
        if text.strip().startswith("```"):
            fenced = not fenced
            text = ""
        lines.append("" if fenced else text)
    return "\n".join(lines)


def inline_spans() -> list[tuple[str, str]]:
    """(FILE:LINE, text) of the `code spans` of the Markdown files' prose."""
    spans = []
    for path in DOCS:
        text = _prose(path)
        for match in re.finditer(r"`([^`]+)`", text):
            number = text.count("\n", 0, match.start()) + 1
            spans.append((f"{_relative(path)}:{number}", " ".join(match.group(1).split())))
    return spans


def _assignments(text: str) -> list[list[str]]:
    """The KEY=VALUE words after each `--set` of a piece of prose, one list per `--set`,
    placeholder values filled (`_fill_value`)."""
    found = []
    for match in re.finditer(r"--set\s+(.*)", text):
        rest = match.group(1).replace("`", " ")
        try:
            words = shlex.split(rest)
        except ValueError:
            words = rest.split()
        group = []
        for word in words:
            if not re.match(r"[a-z_][\w.]*=", word):
                break
            group.append(_fill_value(word if word.endswith("...") else word.rstrip(".,;)")))
        found.append(group)
    return found


def _fill_value(assignment: str) -> str:
    """KEY=N, KEY=DIR, KEY=... with a harmless value."""
    key, value = assignment.split("=", 1)
    if value == "...":
        value = "x"
    elif re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
        value = PLACEHOLDERS.get(value, value.lower())
    return f"{key}={value}"


def set_fragments() -> list[tuple[str, Path | None, list[str]]]:
    """(FILE:LINE, config, [KEY=VALUE, ...]) of the `--set` words outside full commands: in a
    config's comments they set that config; in the docs' prose (config None) the config is
    not named. An error message quoted in the docs (`unknown key ...`) is left out."""
    fragments = []
    for path in CONFIG_FILES:
        comments = [
            (number, text.split("#", 1)[1])
            for number, text in enumerate(path.read_text().splitlines(), 1)
            if text.lstrip().startswith("#")
        ]
        for number, text in _logical_lines(comments):
            if "segdistill " in text:  # a command: checked with its own config
                continue
            fragments += [
                (f"{_relative(path)}:{number}", path, group)
                for group in _assignments(text)
                if group
            ]
    for where, text in inline_spans():
        if text.startswith("segdistill ") or "unknown key" in text:
            continue
        fragments += [(where, None, group) for group in _assignments(text) if group]
    return fragments


INLINE_COMMANDS = [
    Command(where, _fill(shlex.split(text)[1:]))
    for where, text in inline_spans()
    if text.startswith("segdistill ")
]


def _strict_parser() -> argparse.ArgumentParser:
    """The command line with abbreviated options refused: `--teacher-cach` works (while
    no other option starts so) but the docs should spell the option out."""
    parser = build_parser()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        current.allow_abbrev = False
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
    return parser


def _parse(argv: list[str]):
    """The parsed namespace, or the last line argparse printed when it refused."""
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
        try:
            return _strict_parser().parse_args(argv), None
        except SystemExit:
            return None, (printed.getvalue().strip().splitlines() or ["exit"])[-1]


def _load(args, run_dir: Path) -> None:
    """Load the config as the command would before its work starts (ConfigError on an
    unknown --set key or a bad value): training configs with --set, --devices,
    --members...; experiments planned, which builds every network's config with its
    `set` keys."""
    if args.command in ("train", "distill", "ensemble"):
        cfg = load_run_config(args)
        if args.command == "distill":
            assert cfg.distill is not None, f"{args.config} has no distill section"
            if args.teacher_cache is not None:
                replace_values(cfg, {"distill.teacher_cache": str(args.teacher_cache)}, "test")
        _build_methods(cfg)
        if args.command == "ensemble":
            if args.members is not None:
                cfg = replace_values(cfg, {"ensemble.members": args.members}, "--members")
            members = cfg.ensemble.members
            assert args.member is None or args.member < members, f"--member >= {members} members"
    elif args.command in ("experiment", "demo"):
        overrides = list(args.overrides)
        if args.command == "demo" and args.members is not None:
            overrides.append(f"teacher.members={args.members}")
        _plan(args.config, overrides, run_dir)


def _plan(config: Path, overrides: list[str], run_dir: Path) -> None:
    """Load an experiment and, with overrides, plan its steps: that builds every network's
    config with the `set` keys, as `segdistill experiment` does before it runs one (the
    config files alone are planned in test_pipeline.py). The plan is made for at most 2
    seeds: `seeds=10` builds the same configs 10 times (loading checks the seeds as
    given). Each config with its overrides once."""
    key = (str(config), tuple(overrides))
    if key in _PLANNED:
        return
    from segdistill.pipeline import LoadedExperiment, load_experiment
    from segdistill.pipeline.networks import trained_configs
    from segdistill.pipeline.run import plan
    from segdistill.pipeline.run_dir import RunPaths

    loaded = load_experiment(config, overrides)
    if overrides:
        spec = dataclasses.replace(loaded.spec, seeds=min(loaded.spec.seeds, 2))
        plan(LoadedExperiment(spec, loaded.path), RunPaths(run_dir))
    if any("distill" in override.split("=")[0] for override in overrides):
        for cfg in trained_configs(loaded, RunPaths(run_dir), 0).values():
            _build_methods(cfg)
    _PLANNED.add(key)


def _build_methods(cfg: SegConfig) -> None:
    """Build the distillation methods of `cfg` (unknown method names and options are
    ConfigErrors only then, when training starts). The feature taps the methods read
    are given 8 channels each: the networks are not built, so the tap names go unchecked."""
    if cfg.distill is None:
        return
    from segdistill.methods import METHODS, build_methods

    taps = {}
    for spec in cfg.distill.methods:
        params = inspect.signature(METHODS[spec.name]).parameters if spec.name in METHODS else {}
        for side in ("student", "teacher"):
            default = params[f"{side}_tap"].default if f"{side}_tap" in params else None
            tap = spec.options.get(f"{side}_tap", default)
            if isinstance(tap, str):
                taps[tap] = 8
    build_methods(cfg.distill.methods, cfg.data.num_classes, taps, taps)


_PLANNED: set[tuple[str, tuple[str, ...]]] = set()


EXAMPLE_DOC = """\
Prose that names segdistill train is no command; nor is `segdistill evaluate` here.

```bash
segdistill train CONFIG --set optim.lr=0.02 \\
    --run-dir runs/x   # a comment
rm -rf runs/demo && /usr/bin/time -v segdistill demo
for i in 0 1; do CUDA_VISIBLE_DEVICES=$i segdistill ensemble CONFIG --member $i & done; wait
sbatch --wrap "segdistill ensemble CONFIG --member \\$SLURM_ARRAY_TASK_ID"
torchrun --nnodes 2 -m segdistill.cli train CONFIG --devices 4
segdistill export SOURCE --format onnx|torchscript [--out FILE] [--opset N]
segdistill evaluate RUN... --data DIR --set "a=[{b: 1}]" | tee log
```

```python
segdistill = "not a shell block"
```
"""

EXAMPLE_CONFIG = """\
# segdistill has no GoogLeNet (prose); first (segdistill data ...).
# Pre-train first:  segdistill train configs/quick/train_baseline.yaml
#   segdistill distill configs/quick/distill_kd.yaml --teacher-cache runs/c \\
#       --set distill.cache_scale=0.5
seed: 0
"""


def test_the_commands_are_read_as_a_shell_reads_them(tmp_path: Path) -> None:
    """The extraction: continued lines, comments, commands after `&&`, wrappers, loops,
    quoted commands, `-m segdistill.cli`, synopses; prose and Python left out."""
    (tmp_path / "doc.md").write_text(EXAMPLE_DOC)
    (tmp_path / "config.yaml").write_text(EXAMPLE_CONFIG)
    found = documented_commands([tmp_path / "doc.md"], [tmp_path / "config.yaml"])
    train = "configs/quick/train_baseline.yaml"
    assert [(command.where, command.argv) for command in found] == [
        ("doc.md:4", ["train", train, "--set", "optim.lr=0.02", "--run-dir", "runs/x"]),
        ("doc.md:6", ["demo"]),
        ("doc.md:7", ["ensemble", train, "--member", "0"]),
        ("doc.md:8", ["ensemble", train, "--member", "0"]),
        ("doc.md:9", ["train", train, "--devices", "4"]),
        ("doc.md:10", ["export", "source", "--format", "onnx", "--out", "file", "--opset", "2"]),
        (
            "doc.md:10",
            ["export", "source", "--format", "torchscript", "--out", "file", "--opset", "2"],
        ),
        ("doc.md:11", ["evaluate", "run", "--data", "dir", "--set", "a=[{b: 1}]"]),
        ("config.yaml:2", ["train", train]),
        (
            "config.yaml:3",
            [
                "distill",
                "configs/quick/distill_kd.yaml",
                "--teacher-cache",
                "runs/c",
                "--set",
                "distill.cache_scale=0.5",
            ],
        ),
    ]


def test_the_documented_commands_are_found() -> None:
    """The docs hold the commands the checks below check: an extraction that lost them
    would leave nothing to check."""
    where = {command.where.split(":")[0] for command in COMMANDS}
    assert {"README.md", "docs/training.md", "docs/results.md", "configs/quick/dudes.yaml"} <= where
    assert len(COMMANDS) > 80


def test_every_documented_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command the docs show is one the command line takes: no unknown option, no
    missing or extra argument, no removed command (parsing only; nothing runs)."""
    monkeypatch.chdir(ROOT)
    failures = []
    for command in COMMANDS:
        args, error = _parse(command.argv)
        if args is None:
            failures.append(f"{command.where}: segdistill {shlex.join(command.argv)}\n  {error}")
    assert not failures, f"{len(failures)} documented commands do not parse:\n" + "\n".join(
        failures
    )


def test_every_documented_set_key_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each `--set KEY=VALUE` of the docs names a key (and a value) the command's config
    takes: the training configs by `load_config`, an experiment's keys (and its networks'
    `set` keys) by loading and planning it."""
    monkeypatch.chdir(ROOT)
    failures, keys = [], 0
    for command in COMMANDS:
        args, _ = _parse(command.argv)
        if args is None:  # test_every_documented_command_parses reports it
            continue
        keys += len(getattr(args, "overrides", []))
        try:
            _load(args, tmp_path / "run")
        except (SegdistillError, AssertionError) as error:
            failures.append(f"{command.where}: segdistill {shlex.join(command.argv)}\n  {error}")
    assert keys > 30  # the lines with --set were found
    assert not failures, f"{len(failures)} documented commands are refused:\n" + "\n".join(failures)


def _subcommand(argv: list[str]):
    """The parser of the (sub-)command `argv` starts with, and the words after its name."""
    parser = build_parser()
    while True:
        (choices,) = [
            action.choices
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
        ] or [None]
        if choices is None or not argv or argv[0] not in choices:
            return parser, argv
        parser, argv = choices[argv[0]], argv[1:]


def test_every_inline_command_names_real_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The `segdistill ...` code spans of the prose: a whole command parses and loads as
    above; a fragment (`segdistill predict --ood-detector`) names a command and options it
    has."""
    monkeypatch.chdir(ROOT)
    failures = []
    for command in INLINE_COMMANDS:
        args, error = _parse(command.argv)
        if args is not None:
            try:
                _load(args, tmp_path / "run")
            except (SegdistillError, AssertionError) as refused:
                failures.append(f"{command.where}: {shlex.join(command.argv)}\n  {refused}")
            continue
        parser, rest = _subcommand(command.argv)
        known = {option for action in parser._actions for option in action.option_strings}
        if parser.prog == "segdistill" and command.argv and command.argv != ["--help"]:
            failures.append(f"{command.where}: no command {command.argv[0]!r}")
        unknown = [
            word for word in rest if word.startswith("-") and word.split("=")[0] not in known
        ]
        if unknown:
            failures.append(f"{command.where}: {parser.prog} has no option {unknown}")
    assert len(INLINE_COMMANDS) > 20
    assert not failures, "\n".join(failures)


def _experiment(path: Path) -> bool:
    raw = yaml.safe_load(path.read_text())
    return "students" in raw or "baseline" in raw


def test_every_set_fragment_names_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--set KEY=VALUE` in a config's comments is a key of that config (an experiment
    loaded and planned); one in the docs' prose a key of a training config or of one of the
    quick experiments (which one, the sentence says)."""
    from segdistill.pipeline import load_experiment

    monkeypatch.chdir(ROOT)
    experiments = [path for path in CONFIG_FILES if _experiment(path)]
    trainings = [ROOT / CONFIG_FOR["train"], ROOT / CONFIG_FOR["distill"]]
    fragments = set_fragments()
    failures = []
    for where, config, group in fragments:
        if config is not None and _experiment(config):
            loaders = [partial(_plan, config, group, tmp_path)]
        elif config is not None:
            loaders = [partial(load_config, config, group)]
        else:
            loaders = [partial(load_config, path, group) for path in trainings]
            loaders += [partial(load_experiment, path, group) for path in experiments]
        errors = []
        for loader in loaders:
            try:
                loader()
                break
            except SegdistillError as error:
                errors.append(str(error))
        else:
            failures.append(f"{where}: --set {shlex.join(group)}\n  {errors[0]}")
    assert len(fragments) > 15
    assert not failures, "\n".join(failures)


def config_sections() -> list[tuple[str, str]]:
    """(FILE:LINE, text) of the ```yaml blocks of the docs that show one or two sections
    of a training config (`distill:`, `ensemble:`): not the whole config (checked by
    test_config.py and below), an experiment (test_pipeline.py) or a classes file
    (test_datasets.py)."""
    sections = {field.name for field in dataclasses.fields(SegConfig)} - {"seed", "init_seed"}
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        for number, text in enumerate(lines, 1):
            if text.strip() != "```yaml":
                continue
            end = next(i for i in range(number, len(lines)) if lines[i].startswith("```"))
            block = "\n".join(lines[number:end]) + "\n"
            shown = yaml.safe_load(block)
            if isinstance(shown, dict) and set(shown) <= sections and len(shown) <= 2:
                found.append((f"{_relative(path)}:{number}", block))
    return found


def test_the_config_sections_of_the_docs_load(tmp_path: Path) -> None:
    """A config section the docs show (e.g. docs/methods.md's `distill:`) loads into a
    quick config and its methods build: unknown keys, methods and options and bad values
    are ConfigErrors."""
    shown = config_sections()
    assert len(shown) >= 3  # docs/methods.md (2), docs/training.md (ensemble)
    failures = []
    for where, block in shown:
        base = "distill_kd.yaml" if "distill" in yaml.safe_load(block) else "train_baseline.yaml"
        extends = ROOT / "configs" / "quick" / base
        (tmp_path / "section.yaml").write_text(f"extends: {extends}\n{block}")
        try:
            cfg = load_config(tmp_path / "section.yaml")
            _build_methods(cfg)
        except SegdistillError as error:
            failures.append(f"{where}: {error}")
            continue
        changed = [
            key
            for key in yaml.safe_load(block)
            if to_dict(cfg)[key] != to_dict(load_config(extends))[key]
        ]
        assert changed, f"{where}: the section changed nothing of {base}: was it read?"
    assert not failures, "\n".join(failures)


def _schema(cls: type) -> dict:
    """{field: its schema} of a config dataclass, read from its fields (a mapping field,
    free-form, as {})."""
    hints = typing.get_type_hints(cls)
    schema = {}
    for field in dataclasses.fields(cls):
        inner = [t for t in typing.get_args(hints[field.name]) if dataclasses.is_dataclass(t)]
        tp = hints[field.name] if dataclasses.is_dataclass(hints[field.name]) else None
        tp = tp or (
            inner[0] if inner and typing.get_origin(hints[field.name]) is not list else None
        )
        schema[field.name] = _schema(tp) if tp else {}
    return schema


def _missing(shown: dict, schema: dict, prefix: str = "") -> list[str]:
    """The keys of `shown` that `schema` lacks (not below free-form mappings)."""
    out = []
    for key, value in shown.items():
        if key not in schema:
            out.append(prefix + key)
        elif isinstance(value, dict) and schema[key]:
            out += _missing(value, schema[key], f"{prefix}{key}.")
    return out


def test_the_config_summary_of_architecture_md_is_the_schema() -> None:
    """docs/architecture.md sums the config up in one block (with `a|b` for choices): every
    key it shows exists, and every key of the schema is shown."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Config (YAML", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = yaml.safe_load(block)
    schema = _schema(SegConfig)
    assert schema["distill"]["teacher"]["kind"] == {}  # the schema is read into the sections
    assert _missing(shown, schema) == []
    assert _missing(schema, shown) == []


# Options of the other programs the docs show: tensorboard, sbatch / #SBATCH, torchrun.
OTHER_PROGRAMS_OPTIONS = {
    "--logdir",
    "--array",
    "--gres",
    "--wrap",
    "--nodes",
    "--ntasks-per-node",
    "--requeue",
    "--signal",
    "--nnodes",
    "--nproc-per-node",
    "--node-rank",
    "--master-addr",
    "--master-port",
}


def test_every_option_the_docs_name_exists() -> None:
    """An `--option` anywhere in the docs or the configs' comments (prose included, where
    the command is not always named) is an option of some segdistill command: one that a
    command lost stays in no sentence."""
    options, parsers = set(), [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            options.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
    assert {"--teacher-cache", "--ood-detector", "--object-scale", "--set"} <= options
    failures = [
        f"{_relative(path)}:{number}: {match.group(0)}"
        for path in (*DOCS, *CONFIG_FILES)
        for number, text in enumerate(path.read_text().splitlines(), 1)
        for match in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*", text)
        if match.group(0) not in options | OTHER_PROGRAMS_OPTIONS
    ]
    assert not failures, "no segdistill command has these options:\n" + "\n".join(failures)


def test_every_config_file_the_docs_name_exists() -> None:
    """configs/DIR/NAME.yaml named in the docs or the configs' comments is in the repository."""
    named = [
        (f"{_relative(path)}:{number}", match.group(0))
        for path in (*DOCS, *CONFIG_FILES)
        for number, text in enumerate(path.read_text().splitlines(), 1)
        for match in re.finditer(r"configs/[\w/.-]+\.yaml", text)
    ]
    assert len(named) > 50
    missing = [f"{where}: {name}" for where, name in named if not (ROOT / name).is_file()]
    assert not missing, "\n".join(missing)


def _listed(path: str, pattern: str) -> list[str]:
    """The names the one match of `pattern` in docs file `path` lists (its first group),
    split at commas, bars and spaces."""
    (found,) = re.findall(pattern, (ROOT / path).read_text())
    return sorted(name for name in re.split(r"[\s,|]+", found) if name)


def test_the_documented_name_lists_are_the_registries() -> None:
    """Where the docs list every method, encoder or architecture, the list is the code's:
    a name added to METHODS, ENCODERS or ARCHITECTURES fails here until the docs say it."""
    assert _listed("docs/methods.md", r"`name` is one of `([^`]+)`") == sorted(METHODS)
    assert _listed("docs/architecture.md", r"Method modules \(([^)]+)\)") == sorted(METHODS)
    pixel = r"restricts a pixel-wise method \(([^)]+)\)"
    assert _listed("docs/methods.md", pixel) == sorted(PIXEL_METHODS)
    assert _listed("docs/training.md", r"\n  encoder: \w+ +# ([^\n]+)") == sorted(ENCODERS)
    assert _listed("docs/training.md", r"\n  arch: \w+ +# ([\w |]+)") == sorted(ARCHITECTURES)
