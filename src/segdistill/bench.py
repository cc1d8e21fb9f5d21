"""Speed of model sources side by side, and the ratios of DUDES Table 3, in one run.

For each source (a student, a baseline, an ensemble teacher or an MC-dropout teacher, any
`segdistill.predictor` source): parameters, FLOPs, forward latency and throughput; then
the latency ratios teacher / student and student / baseline with their goals.

Protocol:
- One random normal batch [B, 3, H, W] (seed 0) on the device, the same for every model,
  padded with 0 for each model as `segdistill predict` pads it for that model (to the
  next multiple of 32, or of its largest encoder stride; `ModelBench.input_size`), so
  that a size that is not a multiple costs what it costs in deployment. Models with
  different multiples may then run at different sizes: the report says so, and marks
  the ratios of such pairs (their ratio includes the larger input's cost).
- What is timed is one `Predictor.predict` call: the whole prediction with its
  uncertainty, i.e. a student's forward with its uncertainty head, a baseline's forward,
  an ensemble's N member forwards plus the statistics, MC dropout's K passes.
- `warmup` untimed calls per model, then `repeats` timed calls, round robin: call r of
  every model, then call r + 1 of every model. A drift of the machine's load (another
  process, CPU frequency, heat) then touches all models alike, which keeps the ratios of
  one run fair.
- CPU: `time.perf_counter` around the call. CUDA: a `torch.cuda.Event` pair recorded
  around the call, after a synchronize, read after the end event completes (kernels run
  asynchronously: a host timer would measure their launch).
- Latency: the median over the timed calls; spread: the interquartile range (q25..q75)
  and min..max. Throughput: B / median latency, images per second.
- Threads: `torch.set_num_threads(threads)` when given; the count in effect is reported.

FLOPs: one `predict` call under `torch.utils.flop_counter.FlopCounterMode`, which counts
convolutions and matrix products at 2 FLOPs per multiply-accumulate: GFLOPs = 2 x GMACs
(halve them to compare with papers that count multiply-adds). Element-wise work (batch
norm in eval mode, activations, softmax, interpolation, pooling, the ensemble statistics)
is not counted. Reported per image (the batch's count / B).

Ratios (DUDES: student 18.5 ms, baseline 18.3 ms, teacher 217.1 ms): every teacher /
student pair, goal >= the teacher's passes (N members or K MC-dropout samples: the student
replaces that many forwards of a network of its size by one), and every student / baseline
pair, goal <= 1.02 (the uncertainty head costs at most 2%). A ratio is the median over the
repeats of the ratio of the two calls of one repeat (`paired_ratio`): those calls run back
to back, so a change of the machine's load between repeats cancels out, which the ratio of
the two medians does not do (its medians may come from different repeats). On a steady
machine both agree. Each ratio comes with a distribution-free 95 % interval of that
median (`median_interval`), and is marked unresolved where the goal lies inside it.
"""

from __future__ import annotations

import functools
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from segdistill.errors import ConfigError
from segdistill.predictor import (
    TEACHER_KINDS,
    Predictor,
    default_device,
    input_multiple,
    pad_to_multiple,
    unique_names,
)
from segdistill.tables import text_table

HEAD_OVERHEAD_GOAL = 1.02
# Coverage of the interval given with each latency ratio (`median_interval`).
INTERVAL_LEVEL = 0.95
FLOPS_CONVENTION = (
    "2 FLOPs per multiply-accumulate of convolutions and matrix products "
    "(torch.utils.flop_counter), per image; element-wise ops not counted"
)
SIZE_NOTE = (
    "models padded to different input sizes: a latency ratio of two of them includes the "
    "cost of the larger input"
)


@dataclass
class ModelBench:
    """One source's numbers. flops: per image; input_size: the padded [H, W] it ran at;
    runs_ms: timed calls in order."""

    name: str
    source: str
    kind: str
    passes: int
    uncertainty_source: str
    parameters: int
    flops: float
    batch: int
    input_size: tuple[int, int]
    runs_ms: list[float] = field(default_factory=list)

    def latency(self) -> dict[str, float]:
        """median, q25, q75, min and max of the timed calls, in ms."""
        runs = np.asarray(self.runs_ms)
        q25, median, q75 = np.percentile(runs, [25, 50, 75])
        return {
            "median": float(median),
            "q25": float(q25),
            "q75": float(q75),
            "min": float(runs.min()),
            "max": float(runs.max()),
        }

    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch / (self.latency()["median"] / 1e3)


@dataclass(frozen=True)
class Ratio:
    """A latency ratio of two models of this run against its goal."""

    label: str  # "teacher/student" or "student/baseline"
    numerator: str
    denominator: str
    value: float
    goal: str  # e.g. ">= 5" or "<= 1.02"
    met: bool
    same_input_size: bool  # else the ratio includes the larger input's cost (SIZE_NOTE)
    # INTERVAL_LEVEL interval of the median per-repeat ratio; None for too few repeats.
    interval: tuple[float, float] | None
    # The goal's bound lies inside `interval`: this run cannot tell met from not met.
    unresolved: bool


@dataclass
class BenchResult:
    """Settings of the run, each model's numbers and the ratios."""

    settings: dict[str, Any]
    models: list[ModelBench]
    ratios: list[Ratio]


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of `call()` (2 per multiply-accumulate, see the module docstring)."""
    counter = FlopCounterMode(display=False)
    with counter:
        call()
    return counter.get_total_flops()


def make_timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function timing one call in ms on `device` (see the module docstring)."""
    if device.type == "cuda":

        def time_cuda(call: Callable[[], object]) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            call()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return time_cuda

    def time_cpu(call: Callable[[], object]) -> float:
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1e3

    return time_cpu


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (Linux) or architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _repeat_ratios(numerator_ms: Sequence[float], denominator_ms: Sequence[float]) -> np.ndarray:
    """numerator[r] / denominator[r] for every repeat r (calls of the same repeat)."""
    if len(numerator_ms) != len(denominator_ms) or not numerator_ms:
        raise ValueError(
            f"paired latencies need the same number of calls, got {len(numerator_ms)} and "
            f"{len(denominator_ms)}"
        )
    return np.asarray(numerator_ms, dtype=float) / np.asarray(denominator_ms, dtype=float)


def paired_ratio(numerator_ms: Sequence[float], denominator_ms: Sequence[float]) -> float:
    """Median over repeats r of numerator[r] / denominator[r] (calls of the same repeat)."""
    return float(np.median(_repeat_ratios(numerator_ms, denominator_ms)))


def median_interval(
    values: Sequence[float] | np.ndarray, level: float = INTERVAL_LEVEL
) -> tuple[float, float] | None:
    """A distribution-free interval for the median of what `values` sample: the k-th
    smallest and the k-th largest value, k as large as keeps the coverage >= `level`.

    Each value falls below the true median with probability 1/2, so the count below is
    Binomial(n, 1/2) and the median lies outside [x_(k), x_(n+1-k)] with probability
    2 P(B <= k - 1). None when even [min, max] covers less than `level` (n < 6 at 0.95).
    """
    ordered = np.sort(np.asarray(values, dtype=float))
    count = len(ordered)
    allowed = 1.0 - level
    below = 0  # sum of C(n, i) for i < k: P(B <= k - 1) * 2**n, exact in integers
    k = 0
    while k + 1 <= (count + 1) // 2:
        # Integer division first: 2**n overflows a float beyond 1023 repeats.
        if 2 * (below + math.comb(count, k)) / 2**count > allowed:
            break
        below += math.comb(count, k)
        k += 1
    if k == 0:
        return None
    return float(ordered[k - 1]), float(ordered[count - k])


def paired_ratio_interval(
    numerator_ms: Sequence[float], denominator_ms: Sequence[float]
) -> tuple[float, tuple[float, float] | None]:
    """`paired_ratio` and the INTERVAL_LEVEL interval of that median (`median_interval`;
    None for fewer than 6 repeats)."""
    per_repeat = _repeat_ratios(numerator_ms, denominator_ms)
    return float(np.median(per_repeat)), median_interval(per_repeat)


def unresolved(interval: tuple[float, float] | None, *bounds: float | None) -> bool:
    """Whether a goal's bound (None: no bound) lies strictly inside `interval`: the run
    that measured it cannot tell met from not met (None: no interval, nothing claimed)."""
    return interval is not None and any(
        bound is not None and interval[0] < bound < interval[1] for bound in bounds
    )


def _ratio(
    label: str, numerator: ModelBench, denominator: ModelBench, bound: float, at_least: bool
) -> Ratio:
    """The paired ratio of two models' calls against the goal `>= bound` or `<= bound`."""
    value, interval = paired_ratio_interval(numerator.runs_ms, denominator.runs_ms)
    return Ratio(
        label,
        numerator.name,
        denominator.name,
        value,
        f"{'>=' if at_least else '<='} {bound}",
        value >= bound if at_least else value <= bound,
        numerator.input_size == denominator.input_size,
        interval,
        unresolved(interval, bound),
    )


def compute_ratios(models: Sequence[ModelBench]) -> list[Ratio]:
    """Every teacher / student and student / baseline pair of `models`, by kind."""
    teachers = [m for m in models if m.kind in TEACHER_KINDS]
    students = [m for m in models if m.kind == "student"]
    baselines = [m for m in models if m.kind == "baseline"]
    ratios = [
        _ratio("teacher/student", teacher, student, teacher.passes, at_least=True)
        for teacher in teachers
        for student in students
    ]
    ratios += [
        _ratio("student/baseline", student, baseline, HEAD_OVERHEAD_GOAL, at_least=False)
        for student in students
        for baseline in baselines
    ]
    return ratios


def _measure(
    predictors: Sequence[Predictor],
    shape: tuple[int, int, int, int],
    device: torch.device,
    repeats: int,
    warmup: int,
    channels_last: bool,
    progress: bool,
) -> list[ModelBench]:
    """Count FLOPs, warm up, then time `predict` round robin on one random batch of
    `shape` [B, 3, H, W], padded for each model to its own multiple; `progress`: a bar
    of the rounds on stderr."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(shape, generator=generator).to(device)
    batch = shape[0]
    by_multiple: dict[int, torch.Tensor] = {}  # models that pad alike share one copy
    inputs = []
    for predictor in predictors:
        multiple = input_multiple(predictor.segmenters())
        if multiple not in by_multiple:
            by_multiple[multiple] = pad_to_multiple(images, multiple)
        inputs.append(by_multiple[multiple])
    models = []
    for predictor, padded in zip(predictors, inputs):
        predictor.to(device, channels_last)
        models.append(
            ModelBench(
                name=predictor.name,
                source=str(predictor.source),
                kind=predictor.kind,
                passes=predictor.passes,
                uncertainty_source=predictor.uncertainty_source,
                parameters=predictor.parameters,
                flops=count_flops(functools.partial(predictor.predict, padded)) / batch,
                batch=batch,
                input_size=(padded.shape[-2], padded.shape[-1]),
            )
        )
    timer = make_timer(device)
    # One step per round of all models, updated between the timed calls, never inside.
    with tqdm(total=warmup + repeats, desc="bench", unit="round", disable=not progress) as bar:
        for _ in range(warmup):
            for predictor, padded in zip(predictors, inputs):
                predictor.predict(padded)
            bar.update()
        for _ in range(repeats):
            for predictor, padded, model in zip(predictors, inputs, models):
                model.runs_ms.append(timer(functools.partial(predictor.predict, padded)))
            bar.update()
    return models


def benchmark(
    predictors: Sequence[Predictor],
    size: tuple[int, int],
    batch: int = 1,
    *,
    repeats: int = 25,
    warmup: int = 5,
    device: str | None = "cpu",
    threads: int | None = None,
    channels_last: bool = False,
    progress: bool = True,
) -> BenchResult:
    """Measure `predictors` as the module docstring describes; device: "cpu", "cuda",
    "cuda:N", or None for CUDA when available (`default_device`); channels_last: every model
    and the images in the channels-last memory format (`Predictor.to`); progress: a bar
    of the warm-up and timed rounds on stderr (a few hundred repeats take minutes)."""
    if not predictors:
        raise ConfigError("bench needs at least one model source")
    if batch < 1 or repeats < 1 or warmup < 0 or min(size) < 1:
        raise ConfigError(
            f"need batch >= 1, repeats >= 1, warmup >= 0 and a positive size; got batch "
            f"{batch}, repeats {repeats}, warmup {warmup}, size {size[0]}x{size[1]}"
        )
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    target = default_device(device)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    # Names key the input sizes and the ratios: two "best" checkpoints must not share one.
    named = unique_names(list(predictors))
    try:
        used_threads = torch.get_num_threads()
        models = _measure(
            named, (batch, 3, *size), target, repeats, warmup, channels_last, progress
        )
    finally:
        torch.set_num_threads(previous_threads)
    settings = {
        "size": list(size),
        # What each model ran at; here too because results.json keeps only the settings.
        "input_sizes": {m.name: list(m.input_size) for m in models},
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "order": "round robin over models, per repeat",
        "device": target.type,
        "device_name": device_name(target),
        "threads": used_threads,
        "channels_last": channels_last,
        "torch": torch.__version__,
        "timer": "torch.cuda.Event" if target.type == "cuda" else "time.perf_counter",
        "flops": FLOPS_CONVENTION,
    }
    return BenchResult(settings, models, compute_ratios(models))


def to_json(result: BenchResult) -> dict[str, object]:
    """The result as plain JSON data (schema in docs/deployment.md)."""
    return {
        "settings": result.settings,
        "models": [
            {
                "name": m.name,
                "source": m.source,
                "kind": m.kind,
                "passes": m.passes,
                "uncertainty_source": m.uncertainty_source,
                "parameters": m.parameters,
                "input_size": list(m.input_size),
                "gflops_per_image": m.flops / 1e9,
                "latency_ms": {**m.latency(), "runs": m.runs_ms},
                "images_per_s": m.throughput(),
            }
            for m in result.models
        ],
        "ratios": [
            {
                "ratio": r.label,
                "numerator": r.numerator,
                "denominator": r.denominator,
                "value": r.value,
                "goal": r.goal,
                "met": r.met,
                "same_input_size": r.same_input_size,
                "interval_95": None if r.interval is None else list(r.interval),
                "unresolved": r.unresolved,
            }
            for r in result.ratios
        ],
    }


def input_groups(settings: dict[str, Any]) -> dict[tuple[int, int], list[str]]:
    """Input size the models ran at -> their names, from bench settings of any version:
    per model (`input_sizes`), one for all models (`input_size`, older results: no
    names) or none recorded (older still: taken as the requested `size`)."""
    sizes = settings.get("input_sizes") or {"": settings.get("input_size", settings["size"])}
    groups: dict[tuple[int, int], list[str]] = {}
    for name, (height, width) in sizes.items():
        groups.setdefault((height, width), []).append(name)
    return groups


def input_text(settings: dict[str, Any]) -> str:
    """The batch as requested, "B x 3 x H x W", and where padding changed it the padded
    size(s): one for all models, or each size with its models where they differ."""
    height, width = settings["size"]
    text = f"{settings['batch']} x 3 x {height} x {width}"
    groups = input_groups(settings)
    if len(groups) > 1:
        sizes = "; ".join(f"{h} x {w} for {', '.join(names)}" for (h, w), names in groups.items())
        return f"{text} (padded per model, as predict pads for it: {sizes})"
    ((padded_height, padded_width),) = groups
    if (padded_height, padded_width) == (height, width):
        return text
    return f"{text} (padded to {padded_height} x {padded_width})"


def format_result(result: BenchResult) -> str:
    """A readable report: settings, one row per model, the ratios with their goals."""
    s = result.settings
    lines = [
        f"batch {input_text(s)} on {s['device']} ({s['device_name']}), "
        f"{s['threads']} threads{', channels-last' if s['channels_last'] else ''}, torch "
        f"{s['torch']}; {s['warmup']} warm-up + "
        f"{s['repeats']} timed calls per model, round robin; timer {s['timer']}",
        "",
    ]
    rows = []
    for m in result.models:
        lat = m.latency()
        rows.append(
            [
                m.name,
                m.kind,
                str(m.passes),
                f"{m.parameters:,}",
                f"{m.flops / 1e9:.2f}",
                f"{lat['median']:.2f}",
                f"{lat['q25']:.2f}..{lat['q75']:.2f}",
                f"{lat['min']:.2f}..{lat['max']:.2f}",
                f"{m.throughput():.1f}",
            ]
        )
    header = [
        "model",
        "kind",
        "passes",
        "params",
        "GFLOPs/img",
        "median ms",
        "IQR ms",
        "min..max ms",
        "images/s",
    ]
    lines += text_table([header, *rows], right_aligned=True)
    lines.append(f"GFLOPs: {FLOPS_CONVENTION}.")
    if result.ratios:
        lines += ["", "latency ratios (median of the per-repeat ratios, this run):"]
        ratio_rows = [
            [
                r.label,
                f"{r.numerator} / {r.denominator}",
                f"{r.value:.3f}" + ("" if r.same_input_size else "*"),
                "-" if r.interval is None else f"{r.interval[0]:.3f}..{r.interval[1]:.3f}",
                r.goal,
                ("yes" if r.met else "NO") + (" (unresolved)" if r.unresolved else ""),
            ]
            for r in result.ratios
        ]
        header = ["ratio", "models", "value", f"{INTERVAL_LEVEL:.0%} interval", "goal", "met"]
        lines += text_table([header, *ratio_rows], right_aligned=True)
        if not all(r.same_input_size for r in result.ratios):
            lines.append(f"* {SIZE_NOTE}.")
        if any(r.interval is None for r in result.ratios):
            lines.append(f"- : fewer than 6 timed calls give no {INTERVAL_LEVEL:.0%} interval.")
        if any(r.unresolved for r in result.ratios):
            lines.append(
                "unresolved: the goal lies inside the interval, so this run cannot tell met "
                "from not met; more --repeats (or a quieter machine) decide it."
            )
    else:
        lines.append("no ratios: give a teacher and a student, or a student and a baseline")
    return "\n".join(lines)
