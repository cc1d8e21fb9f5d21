"""Metrics by name (the table's columns, `metric_value`) and the paper claims' checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from segdistill.bench import paired_ratio_interval, unresolved
from segdistill.errors import ConfigError
from segdistill.evaluate import REFERENCE_SPLIT
from segdistill.metric_fields import SPLIT_METRICS, Better, dig, split_value
from segdistill.metrics.segmentation import removal_point

if TYPE_CHECKING:
    from segdistill.pipeline.experiment import CheckSpec


def _removal_gain(model: dict[str, Any], split: str, fraction: float = 0.5) -> float | None:
    """mIoU after removing the `fraction` most uncertain pixels minus the mIoU of all."""
    curve = dig(model, "splits", split, "uncertainty", "miou_vs_removed")
    point = removal_point(curve, fraction) if curve else None
    if point is None or curve["miou"][0] is None:
        return None
    after = curve["miou"][point]
    return None if after is None else after - curve["miou"][0]


def _best_ood_auroc(model: dict[str, Any], shifted: str) -> float | None:
    entry = dig(model, "ood", "sets", shifted)
    if not entry or entry["best_aggregator"] is None:
        return None
    return entry["by_aggregator"][entry["best_aggregator"]]["auroc"]


@dataclass(frozen=True)
class ResultMetric:
    """A metric an experiment's tables and checks name: its column header, its value on a
    split of a results.json model (`value(model, split)`), and which way it is better."""

    header: str
    value: Callable[[dict[str, Any], str], Any]
    better: Better


def _on_split(name: str) -> ResultMetric:
    field = SPLIT_METRICS[name]
    return ResultMetric(
        field.header, lambda model, split: split_value(model, split, name), field.better
    )


# Every metric by name: those of a split (`metric_fields.SPLIT_METRICS`), then those of a
# model. `ood_auroc` reads its "split" as the shifted set (best aggregator); anomaly, speed
# and size ignore it. The parameter count has no better side: a model's size, not a result.
METRICS: dict[str, ResultMetric] = {name: _on_split(name) for name in SPLIT_METRICS} | {
    "miou_gain_removed_50": ResultMetric("mIoU gain 50% removed", _removal_gain, "high"),
    "ood_auroc": ResultMetric("OOD AUROC", _best_ood_auroc, "high"),
    "anomaly_ap": ResultMetric(
        "anomaly AP", lambda model, split: dig(model, "anomaly", "ap"), "high"
    ),
    "latency_ms": ResultMetric(
        "latency ms", lambda model, split: dig(model, "speed", "latency_ms", "median"), "low"
    ),
    "gflops": ResultMetric(
        "GFLOPs", lambda model, split: dig(model, "speed", "gflops_per_image"), "low"
    ),
    "parameters_m": ResultMetric(
        "params (M)", lambda model, split: model["parameters"] / 1e6, None
    ),
}


def split_metric_name(name: str, where: str) -> tuple[str, str | None]:
    """ "metric" or "metric@split" -> (metric, split or None); ConfigError if unknown."""
    metric, _, split = name.partition("@")
    if metric not in METRICS:
        raise ConfigError(f"{where}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    return metric, split or None


def metric_value(model: dict[str, Any], name: str, split: str = REFERENCE_SPLIT) -> Any:
    """The metric `name` ("metric" or "metric@split") of one results.json model."""
    metric, at = split_metric_name(name, "metric")
    return METRICS[metric].value(model, at or split)


def metric_header(name: str) -> str:
    metric, at = split_metric_name(name, "metric")
    header = METRICS[metric].header
    return f"{header} {at}" if at else header


# Measured once per architecture: the bench times the first seed's networks only.
SPEED_METRICS = ("latency_ms", "gflops", "parameters_m")
# The metrics with a value per class (a list): compared class by class, never ordered.
PER_CLASS_METRICS = ("per_class_iou", "per_class_mean_uncertainty")


def seed_values(seeds: list[dict[str, Any]], name: str, split: str = REFERENCE_SPLIT) -> list[Any]:
    """The metric `name` of each seed's network of one model (`seeds`: its results.json
    entries, the first seed first); the first seed's only for the speed metrics."""
    metric, _ = split_metric_name(name, "metric")
    entries = seeds[:1] if metric in SPEED_METRICS else seeds
    return [metric_value(entry, name, split) for entry in entries]


def mean_over_seeds(values: list[Any]) -> Any:
    """The mean of per-seed values, class by class for lists; None where a seed has none
    (a seed without a list: None for the whole list)."""
    if any(value is None for value in values):
        return None
    if isinstance(values[0], list):
        return [mean_over_seeds(list(column)) for column in zip(*values)]
    return float(np.mean(values))


def std_over_seeds(values: list[Any]) -> float | None:
    """The sample standard deviation of per-seed numbers (None for one seed or a list)."""
    if len(values) < 2 or any(not isinstance(v, (int, float)) for v in values):
        return None
    return float(np.std(values, ddof=1))


def model_value(seeds: list[dict[str, Any]], name: str, split: str = REFERENCE_SPLIT) -> Any:
    """The metric `name` of one model: the mean over its seeds (`seed_values`)."""
    return mean_over_seeds(seed_values(seeds, name, split))


def _within(value: float | None, low: float | None, high: float | None, strict: bool) -> bool:
    """Whether `value` lies in [low, high] (None: unbounded), or in (low, high) if strict."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if strict:
        return (low is None or value > low) and (high is None or value < high)
    return (low is None or value >= low) and (high is None or value <= high)


def _combine(compare: str, value: Any, reference: Any) -> Any:
    """The compared quantity (lists element by element; None where a side is None, the
    whole list where the reference has none, as a model not evaluated there)."""
    if value is None or reference is None:
        return None
    if isinstance(value, list):
        return [_combine(compare, v, r) for v, r in zip(value, reference)]
    if compare == "difference":
        return value - reference
    if compare == "abs_difference":
        return abs(value - reference)
    return value / reference if reference else None


def _latency_ratio(
    model: dict[str, Any], reference: dict[str, Any]
) -> tuple[float, tuple[float, float] | None]:
    """Latency of `model` over `reference`, paired over the bench's repeats (the calls of
    one repeat run back to back), with the 95 % interval of that median
    (`segdistill.bench.paired_ratio_interval`)."""
    return paired_ratio_interval(
        dig(model, "speed", "latency_ms", "runs"), dig(reference, "speed", "latency_ms", "runs")
    )


def _per_seed(
    check: CheckSpec, seeds: list[dict[str, Any]], reference: list[dict[str, Any]], split: str
) -> list[Any]:
    """The checked quantity of each seed: seed k of the model against seed k of the
    reference (the teacher, trained once, against every seed)."""
    quantities = []
    for k, entry in enumerate(seeds):
        value = metric_value(entry, check.metric, split)
        if check.compare != "value":
            other = metric_value(reference[min(k, len(reference) - 1)], check.metric, split)
            value = _combine(check.compare, value, other)
        quantities.append(value)
    return quantities


def run_check(
    check: CheckSpec, models: dict[str, list[dict[str, Any]]], split: str
) -> list[dict[str, Any]]:
    """The outcome of one check: one entry per model (one for `order`), each with the
    measured quantity and `passed`. `models` maps a name to its results.json entries, one
    per seed: the quantity compares the means over the seeds (`model_value`); with more
    than one seed, `per_seed` gives it for each seed too (numbers only)."""
    base = {
        "name": check.name,
        "metric": check.metric,
        "compare": check.compare,
        "strict": check.strict,
    }
    values = {name: model_value(models[name], check.metric, split) for name in check.models}
    if check.compare == "order":
        ordered = list(values.values())
        pairs = list(zip(ordered, ordered[1:]))
        passed = None not in ordered and all(a > b if check.strict else a >= b for a, b in pairs)
        return [{**base, "models": check.models, "value": ordered, "passed": passed}]
    # The reference model's runs (one per seed); check_experiment made sure that every
    # comparison but "value" names one.
    reference_runs = models[check.reference] if check.reference else []
    outcomes = []
    for name, value in values.items():
        reference = None
        interval: dict[str, Any] = {}
        if check.metric == "latency_ms" and check.compare == "ratio":
            value, bounds = _latency_ratio(models[name][0], reference_runs[0])
            # A goal inside the interval: the verdict is this run's draw, not a finding.
            interval = {
                "interval_95": bounds,
                "unresolved": unresolved(bounds, check.min, check.max),
            }
        elif check.compare != "value":
            reference = model_value(reference_runs, check.metric, split)
            value = _combine(check.compare, value, reference)
        entry: dict[str, Any] = {
            **base,
            "model": name,
            "reference": check.reference,
            "min": check.min,
            "max": check.max,
            **interval,
        }
        speed = split_metric_name(check.metric, "metric")[0] in SPEED_METRICS
        if len(models[name]) > 1 and not speed and not isinstance(value, list):
            entry["per_seed"] = _per_seed(check, models[name], reference_runs, split)
        if isinstance(value, list):
            count = sum(_within(v, check.min, check.max, check.strict) for v in value)
            needed = len(value) if check.min_count is None else check.min_count
            outcomes.append(
                {
                    **entry,
                    "value": count,
                    "of": len(value),
                    "defined": sum(v is not None for v in value),
                    "min_count": needed,
                    "passed": count >= needed,
                }
            )
        else:
            outcomes.append(
                {
                    **entry,
                    "value": value,
                    "passed": _within(value, check.min, check.max, check.strict),
                }
            )
    return outcomes
