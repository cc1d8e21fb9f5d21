"""The run directory: where each output lives (`RunPaths`), what a step is (`Step`),
its marker, and when a finished step must run again (`OutputDigests`, `why_again`)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segdistill import memory
from segdistill.atomic import atomic_write_text
from segdistill.checkpoints import RUN_WEIGHTS
from segdistill.config import SegConfig, format_differences
from segdistill.errors import ConfigError
from segdistill.jsonfiles import write_json
from segdistill.pipeline.experiment import BaselineSpec, Experiment, seeded_name

STAGES_DIR = "stages"
EXPERIMENT_FILE = "experiment.yaml"
ENCODER_FILE = "encoder.safetensors"  # a pre-training run's encoder (`pretrain_encoder`)
REPORT_FILE = "report.html"
TABLE_FILE = "table.md"
ABLATION_ROWS = "rows.json"  # an ablation's rows, in its folder


@dataclass(frozen=True)
class RunPaths:
    """Where each output of an experiment lives (the package doc, `segdistill.pipeline`)."""

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
    runs again. `optional_outputs`: files it may leave or not (a network's best weights),
    read by the steps that need it where they exist: their digests, or their absence,
    are inputs of those steps as the outputs' are. `every_run`: run it even when
    finished (the data step: cheap, and it finds a data folder that was deleted or
    replaced). `names_run_dir`: its outputs name the
    run directory's paths (the report's results.json): it runs again when the run
    directory was copied or moved, or is given another spelling. `settings`: experiment
    settings it reads beyond its inputs' files, as text (the report's table and checks):
    recorded with its inputs, so that a change runs it again."""

    name: str
    title: str
    run: Callable[[], dict[str, Any]]
    trains: tuple[SegConfig, ...] = ()
    needs: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()
    optional_outputs: tuple[Path, ...] = ()
    every_run: bool = False
    names_run_dir: bool = False
    settings: str = ""

    def missing_outputs(self) -> list[Path]:
        """The `outputs` not on disk."""
        return [path for path in self.outputs if not path.exists()]


def network_outputs(configs: Sequence[SegConfig]) -> tuple[Path, ...]:
    """The weights file each trained network leaves (written after every epoch)."""
    return tuple(cfg.run.path() / RUN_WEIGHTS[-1] for cfg in configs)


def network_best_weights(configs: Sequence[SegConfig]) -> tuple[Path, ...]:
    """The best-validation weights file each trained network may leave (none without
    validation): what evaluation and the students read where it exists."""
    return tuple(cfg.run.path() / RUN_WEIGHTS[0] for cfg in configs)


def run_step(
    step: Step,
    marker: Path,
    inputs: dict[str, str],
    optional: Sequence[str],
    number: int,
    count: int,
    start: float,
) -> None:
    """Run `step`, then write its marker (its time, peak memory, summary, `inputs` and
    which of them are `optional` outputs, `OutputDigests.optional_names`)."""
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
    write_json(
        marker,
        {
            "step": step.name,
            "seconds": seconds,
            "finished": finished,
            **used,
            **outputs,
            "inputs": inputs,
            "optional_inputs": sorted(optional),
        },
    )
    total = time.perf_counter() - start
    print(
        f"[{number}/{count}] {step.name}: done in {seconds:.1f} s ({total:.1f} s so "
        f"far), peak RSS {used['peak_rss_mib'] / 1024:.2f} GiB",
        flush=True,
    )


def why_again(
    step: Step, marker: Path, inputs: dict[str, str], root: Path, optional: Sequence[str] = ()
) -> str | None:
    """Why `step` runs: None when it never finished (or runs on every run), else what has
    changed since it finished; "" when nothing has and it may be skipped. `optional`: the
    names in `inputs` that are optional outputs (`OutputDigests.optional_names`)."""
    if step.every_run or not marker.is_file():
        return None
    missing = step.missing_outputs()
    if missing:
        return f"{_short(missing[0], root)} is missing"
    record = json.loads(marker.read_text())
    # A marker written before the inputs were recorded is trusted, as it was then; one
    # written before optional outputs were recorded, as to them.
    recorded = record.get("inputs", inputs)
    if "optional_inputs" not in record:
        inputs = {name: digest for name, digest in inputs.items() if name not in optional}
    changed = sorted(
        name for name in {*inputs, *recorded} if inputs.get(name) != recorded.get(name)
    )
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return f"{', '.join(changed[:3])}{more} changed since it ran"
    return ""


RUN_DIR_INPUT = "run directory"  # a step input that is no file (`Step.names_run_dir`)
SETTINGS_INPUT = "settings"  # another (`Step.settings`, as its SHA-256)


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
        outputs not written yet, and optional outputs not written, are left out (the step
        that writes them runs first). With
        `names_run_dir`, also {"run directory": its path as given}; with `settings`,
        {"settings": their SHA-256}."""
        paths = [
            path
            for need in step.needs
            for path in (*self.steps[need].outputs, *self.steps[need].optional_outputs)
        ]
        found = {_short(path, self.root): self.of(path) for path in paths if path.is_file()}
        if step.names_run_dir:
            found[RUN_DIR_INPUT] = str(self.root)
        if step.settings:
            found[SETTINGS_INPUT] = hashlib.sha256(step.settings.encode()).hexdigest()
        return found

    def optional_names(self, step: Step) -> list[str]:
        """The names `inputs` gives the optional outputs of the steps `step` needs, present
        or not."""
        return [
            _short(path, self.root)
            for need in step.needs
            for path in self.steps[need].optional_outputs
        ]

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


def _same(before: Any, after: Any) -> bool:
    """Equal plain data, of the same types at every depth: in a config 1 and 1.0 (or 1 and
    true) are other values, as YAML writes them, and a sweep names its steps and folders
    after them (`width-1`, `width-1.0`)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return before.keys() == after.keys() and all(_same(before[k], after[k]) for k in before)
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)):
        return len(before) == len(after) and all(map(_same, before, after))
    return type(before) is type(after) and before == after


def _differences(before: Any, after: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, before, after) of every value that differs (`_same`) between two
    plain-data trees (mappings are descended into, and lists of one length item by item,
    `students.0.label`; a list that grew or shrank is one value; a missing key is None)."""
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        pairs = [(str(index), b, a) for index, (b, a) in enumerate(zip(before, after))]
    elif isinstance(before, dict) and isinstance(after, dict):
        names = [*before, *(k for k in after if k not in before)]
        pairs = [(str(name), before.get(name), after.get(name)) for name in names]
    else:
        return [] if _same(before, after) else [(key, before, after)]
    found = []
    for name, b, a in pairs:
        found += _differences(b, a, f"{key}.{name}" if key else name)
    return found


# Experiment settings (top-level keys) that may change in a run directory holding finished
# steps. More seeds add networks beside the trained ones, whose steps are the same: each
# network is still compared with its config before its step is skipped
# (`check_finished_networks`), and the steps that read the networks (evaluation, report)
# run again because their recorded inputs change. The title, the table and the checks are
# read by the report step alone, which records them (`Step.settings`) and runs again.
REPORT_SETTINGS = ("title", "paper", "table", "checks")
MAY_CHANGE_IN_PLACE = ("seeds", *REPORT_SETTINGS)


def report_settings(spec: Experiment) -> str:
    """The settings only the report step reads, as text (`Step.settings`)."""
    values = dataclasses.asdict(spec)
    return json.dumps({key: values[key] for key in REPORT_SETTINGS}, sort_keys=True)


def _may_change_in_place(key: str) -> bool:
    return key.split(".")[0] in MAY_CHANGE_IN_PLACE


def finished_steps(paths: RunPaths, steps: Sequence[Step]) -> list[str]:
    """The steps with a marker, but those of `steps` that run on every run (the data
    step): their marker keeps nothing that a change could mix into the results."""
    every_run = {step.name for step in steps if step.every_run}
    markers = (paths.root / STAGES_DIR).glob("*.json")
    return sorted(p.stem for p in markers if p.stem not in every_run)


def refuse_another_experiment(spec: Experiment, paths: RunPaths, steps: Sequence[Step]) -> None:
    """ConfigError when the run directory records another experiment than `spec` (beyond
    MAY_CHANGE_IN_PLACE) and a step of it has finished (`finished_steps`), with every
    difference and the way to keep the steps the change does not touch. Checked before
    each finished network is compared with its config, so the first error names the whole
    change."""
    record = paths.root / EXPERIMENT_FILE
    finished = finished_steps(paths, steps)
    if not (finished and record.is_file()):
        return
    recorded = yaml.safe_load(record.read_text())
    differences = _differences(
        recorded, _without_added_settings(dataclasses.asdict(spec), recorded)
    )
    if not all(_may_change_in_place(key) for key, _, _ in differences):
        raise ConfigError(
            f"{paths.root} holds the results of another experiment config "
            f"({format_differences(differences)}; compared with {record}; finished steps: "
            f"{', '.join(finished)}): choose another --run-dir (a step this change does not "
            "touch, e.g. the teacher, is kept by starting the new one with its folder and "
            "stages/ markers: docs/experiments.md, 'One experiment per run directory'), or "
            f"delete {paths.root} to start again"
        )


def claim_run_dir(spec: Experiment, paths: RunPaths, steps: Sequence[Step] = ()) -> None:
    """Record the experiment in the run directory, or refuse a directory where another one
    finished a step (its finished steps would be skipped and mixed into the results). A
    directory whose run stopped before its first step finished (e.g. a wrong data.root)
    holds nothing of it: the new experiment replaces the record.

    `seeds` may change (MAY_CHANGE_IN_PLACE): 3 seeds become 10 by training 7 more; so may
    the title, the table and the checks, which only the report reads.

    Finished steps without a record (a run directory started with a copy of another's
    steps, or whose experiment.yaml was deleted): those of `steps` that train networks
    are kept, as `check_finished_networks` compares each network with its config; the
    others (evaluate, bench, report, ...) cannot be checked and run again."""
    record = paths.root / EXPERIMENT_FILE
    current = dataclasses.asdict(spec)
    text = yaml.safe_dump(current, sort_keys=False)
    finished = finished_steps(paths, steps)
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
        refuse_another_experiment(spec, paths, steps)
        recorded = yaml.safe_load(record.read_text())
        comparable = _without_added_settings(current, recorded)
        if _same(recorded, comparable):
            return
        changed = format_differences(_differences(recorded, comparable))
        if finished:
            print(
                f"{paths.root}: {changed}; the finished steps are kept (each network "
                "checked against its config), and those that read what changed run again",
                flush=True,
            )
        else:
            print(
                f"{paths.root}: no step of the experiment recorded there had finished; "
                f"starting this one instead ({changed})",
                flush=True,
            )
    atomic_write_text(record, text)
