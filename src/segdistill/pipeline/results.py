"""results.json, the paper-shaped table, the summary and the report."""

from __future__ import annotations

import dataclasses
import json
import platform
import re
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch

from segdistill import __version__
from segdistill.bench import SIZE_NOTE, input_groups, input_text, paired_ratio
from segdistill.config import to_dict
from segdistill.defaults import RESULTS_FILE
from segdistill.evaluate import SCHEMA_EXPERIMENT
from segdistill.jsonfiles import write_json
from segdistill.ood_detector import scored_map
from segdistill.pipeline.checks import (
    mean_over_seeds,
    metric_header,
    run_check,
    seed_values,
    split_metric_name,
    std_over_seeds,
)
from segdistill.pipeline.experiment import LoadedExperiment, TableSpec, seeded_name
from segdistill.pipeline.networks import (
    pretrain_config,
    pretrain_teacher_config,
    teacher_config,
    trained_configs,
)
from segdistill.pipeline.run_dir import (
    ABLATION_ROWS,
    REPORT_FILE,
    TABLE_FILE,
    RunPaths,
)
from segdistill.report import Claims, with_remark, write_report
from segdistill.tables import markdown_table, text_table


def versions() -> dict[str, str]:
    """The software the results were made with."""
    return {
        "segdistill": __version__,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _speed(model: dict[str, Any], bench: dict[str, Any], roles: dict[str, str]) -> dict[str, Any]:
    """A model's bench numbers plus its latency ratios to the teacher and the baseline."""
    by_name = {m["name"]: m for m in bench["models"]}
    mine = by_name[model["name"]]
    speed = {key: mine[key] for key in ("passes", "gflops_per_image", "images_per_s")}
    speed["latency_ms"] = mine["latency_ms"]
    for role in ("teacher", "baseline"):
        other = next(name for name, r in roles.items() if r == role)
        runs = mine["latency_ms"]["runs"], by_name[other]["latency_ms"]["runs"]
        speed[f"latency_vs_{role}"] = paired_ratio(*runs)
    return speed


def _rebase_figures(figures: dict[str, str], prefix: str) -> dict[str, str]:
    return {key: f"{prefix}/{path}" for key, path in figures.items()}


def paper_table(spec: TableSpec, models: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """{"title", "columns": [header...], "metrics": [name...], "rows": [[model, label,
    value...]], "std": [[std...]]}: one row per model (`models`: name -> its results.json
    entries, one per seed), each value the mean over the seeds (None when not evaluated),
    with its sample standard deviation in `std` (None for one seed)."""
    rows, spread = [], []
    for name, seeds in models.items():
        values = [seed_values(seeds, column, spec.split) for column in spec.columns]
        rows.append([name, seeds[0].get("label", ""), *(mean_over_seeds(v) for v in values)])
        spread.append([std_over_seeds(v) for v in values])
    headers = ["model", "label", *(metric_header(c) for c in spec.columns)]
    return {
        "title": spec.title,
        "split": spec.split,
        "columns": headers,
        "metrics": spec.columns,
        "rows": rows,
        "std": spread,
        "seeds": {name: len(seeds) for name, seeds in models.items()},
    }


def write_results(
    exp: LoadedExperiment, paths: RunPaths, step_order: Sequence[str]
) -> dict[str, Any]:
    """Merge the evaluation, the speed numbers, the ablations, the config and the
    versions into results.json; write table.md and report.html. step_order: the names of
    the steps before this one, in the order `plan` runs them (the stages' order in
    results.json)."""
    spec = exp.spec
    evaluation = json.loads((paths.evaluation / RESULTS_FILE).read_text())
    bench = json.loads(paths.bench.read_text())
    detectors = json.loads(paths.ood_detectors.read_text())
    roles = {spec.teacher.name: "teacher", spec.baseline.name: "baseline"}
    labels = {spec.teacher.name: "teacher", spec.baseline.name: "labels only"}
    for student in spec.students:
        roles[student.name] = "student"
        labels[student.name] = student.label or student.name
    # name of a network -> (its model's name, seed offset)
    seed_of = {
        seeded_name(name, offset): (name, offset)
        for name in roles
        for offset in range(1 if name == spec.teacher.name else spec.seeds)
    }
    models = evaluation["models"]
    by_model: dict[str, list[dict[str, Any]]] = {name: [] for name in roles}
    for model in models:
        name, offset = seed_of[model["name"]]
        model["role"] = roles[name]
        model["label"] = labels[name]
        model["seed_offset"] = offset
        if offset == 0:
            model["speed"] = _speed(model, bench, roles)
        model["figures"] = _rebase_figures(model.get("figures", {}), paths.evaluation.name)
        if model["name"] in detectors:
            model["ood_flag"] = detectors[model["name"]]
        by_model[name].append(model)
    # The plan's steps only: a marker left by a step of an earlier plan describes nothing here.
    markers = {
        name: json.loads(paths.stage(name).read_text())
        for name in step_order
        if paths.stage(name).is_file()
    }
    ablations = {
        a.name: json.loads((paths.ablation(a.name) / ABLATION_ROWS).read_text())
        for a in spec.ablations
    }
    networks = {spec.teacher.name: teacher_config(exp, paths)}
    for offset in range(spec.seeds):
        networks.update(trained_configs(exp, paths, offset))
    results = {
        "schema": SCHEMA_EXPERIMENT,
        "experiment": {
            "name": spec.name,
            "title": spec.title,
            "paper": spec.paper,
            "config_file": str(exp.path),
            "config": dataclasses.asdict(spec),
            "networks": {name: to_dict(cfg) for name, cfg in networks.items()},
            "pretrain": to_dict(pretrain_config(exp, paths)) if spec.pretrain else None,
            "pretrain_teacher": (
                to_dict(pretrain_teacher_config(exp, paths))
                if spec.pretrain and spec.pretrain.teacher
                else None
            ),
        },
        "versions": versions(),
        "data": evaluation["data"],
        "models": models,
        "figures": _rebase_figures(evaluation.get("figures", {}), paths.evaluation.name),
        # null for an evaluation written before it recorded its settings
        "evaluation": {"settings": evaluation.get("settings")},
        "bench": {"settings": bench["settings"], "ratios": bench["ratios"]},
        "ablations": ablations,
        "table": paper_table(spec.table, by_model),
        "checks": [
            o for check in spec.checks for o in run_check(check, by_model, spec.table.split)
        ],
        "stages": {name: marker["seconds"] for name, marker in markers.items()},
        "stage_peak_rss_mib": {
            name: marker["peak_rss_mib"]
            for name, marker in markers.items()
            if "peak_rss_mib" in marker  # markers written before it was recorded lack it
        },
    }
    write_json(paths.root / RESULTS_FILE, results)
    (paths.root / TABLE_FILE).write_text(format_markdown(results))
    title = spec.title or spec.name
    report = paths.root / REPORT_FILE
    write_report([paths.root / RESULTS_FILE], report, title, experiment_claims(results))
    return {"results": str(paths.root / RESULTS_FILE), "report": str(paths.root / REPORT_FILE)}


def _ood_flag_cells(results: dict[str, Any]) -> list[list[str]] | None:
    """Header and one row per model of the first seed: the share of each split's images
    its OOD flag raises. None when no model has one or no split was evaluated besides the
    one its threshold was set on."""
    models = [m for m in results["models"] if m.get("ood_flag") and m["seed_offset"] == 0]
    splits = list(models[0]["ood_flag"]["flagged"]) if models else []
    if not splits:
        return None
    rows = [["model", "threshold", *splits]]
    for model in models:
        flag = model["ood_flag"]
        shares = [flag["flagged"].get(split) for split in splits]
        cells = ["-" if share is None else f"{share:.0%}" for share in shares]
        rows.append([model["name"], f"{flag['threshold']:.4g}", *cells])
    return rows


def _ood_flag_title(results: dict[str, Any]) -> str:
    flagged = [m for m in results["models"] if m.get("ood_flag")]
    flag = flagged[0]["ood_flag"]
    own_maps = [
        f"{m['name']}: {scored_map(m['ood_flag'])}"
        for m in flagged
        if scored_map(m["ood_flag"]) != "uncertainty"
    ]
    maps = f" ({'; '.join(own_maps)})" if own_maps else ""
    return (
        f"images flagged as OOD (each model's threshold: at most {flag['fpr']:.0%} of the "
        f"{flag['reference_images']} {flag['reference_split']} images above it, "
        f"{flag['aggregator']} uncertainty{maps}; `segdistill predict --ood-detector`):"
    )


def table_caption(results: dict[str, Any]) -> str:
    """The caption of the paper-shaped table: its title (else the experiment's name) and
    the split it was measured on, unless the title names it ("... on the SynthStreets test
    split"); inside the title's closing bracket when it ends with one."""
    table = results["table"]
    title = table["title"] or results["experiment"]["name"]
    split = table["split"]
    if re.search(rf"\b{re.escape(split)}\b", title):
        return title
    return with_remark(title, f"split {split}")


def experiment_claims(results: dict[str, Any]) -> Claims:
    """The table and the checks of an experiment's results.json, for the HTML report."""
    table = results["table"]
    flags = _ood_flag_cells(results)
    bench = _bench_line(results)
    calls = _paired_calls(results)
    return Claims(
        title=table_caption(results),
        header=table["columns"],
        rows=_table_cells(table)[1:],
        tables=[
            *([(_ood_flag_title(results), flags[0], flags[1:])] if flags else []),
            *(
                (title, cells[0], cells[1:])
                for title, cells in (
                    _ablation_table(name, ablation)
                    for name, ablation in results["ablations"].items()
                )
            ),
        ],
        notes=[bench] if bench else [],
        checks=[(outcome["passed"], _check_line(outcome, calls)) for outcome in results["checks"]],
        steps=[
            (name, seconds, results.get("stage_peak_rss_mib", {}).get(name))
            for name, seconds in results["stages"].items()
        ],
    )


def _cell(value: Any, name: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return (
            f"{value:.2f}" if name in ("latency_ms", "gflops", "parameters_m") else f"{value:.4f}"
        )
    return str(value)


def _table_cells(table: dict[str, Any]) -> list[list[str]]:
    """Header and rows as text: mean +- std where a model has several seeds."""
    names = ["", "", *table["metrics"]]
    body = []
    for row, spread in zip(table["rows"], table["std"]):
        cells = [_cell(v, n) for v, n in zip(row, names)]
        for column, std in enumerate(spread, 2):
            if std is not None:
                cells[column] += f" ± {_cell(std, names[column])}"
        body.append(cells)
    return [table["columns"], *body]


def _is_latency_ratio(outcome: dict[str, Any]) -> bool:
    return outcome["metric"] == "latency_ms" and outcome["compare"] == "ratio"


def _paired_calls(results: dict[str, Any]) -> int | None:
    """How many paired calls a latency check's ratio is the median of: the bench's timed
    calls per model (None in results.json without bench settings)."""
    return ((results.get("bench") or {}).get("settings") or {}).get("repeats")


def _bench_line(results: dict[str, Any]) -> str | None:
    """Where the table or a check shows a latency: how the bench measured it (one run,
    its device, threads and input size, padded per model) and what a latency check's
    ratio is, so that a ratio and the table's medians are not read as a contradiction.
    None otherwise."""
    shown = any(
        split_metric_name(name, "table")[0] == "latency_ms" for name in results["table"]["metrics"]
    )
    checked = any(_is_latency_ratio(outcome) for outcome in results["checks"])
    settings = (results.get("bench") or {}).get("settings")
    if not (shown or checked) or not settings:
        return None
    layout = ", channels-last" if settings.get("channels_last") else ""
    sizes = f"; {SIZE_NOTE}" if len(input_groups(settings)) > 1 else ""
    return (
        f"Latency: median of {settings['repeats']} timed calls per model in one bench run, "
        f"batch {input_text(settings)} on {settings['device']} "
        f"({settings['device_name']}), {settings['threads']} threads{layout}, torch "
        f"{settings['torch']}; the models' calls alternate (round robin), and a latency "
        "check's ratio is the median of the per-call ratios of calls run back to back, "
        f"not the ratio of the medians above{sizes}."
    )


def _check_line(outcome: dict[str, Any], paired_calls: int | None = None) -> str:
    """One check outcome in words: PASS/FAIL, the claim, the model and the measured value.
    A latency ratio says it is the median of `paired_calls` paired per-call ratios (the
    bench's timed calls per model)."""
    verdict = "PASS" if outcome["passed"] else "FAIL"
    if outcome["compare"] == "order":
        values = ", ".join(f"{m} {_cell(v)}" for m, v in zip(outcome["models"], outcome["value"]))
        return f"{verdict}  {outcome['name']}: {values}"
    against = f" vs {outcome['reference']}" if outcome["reference"] else ""
    # "strict" is absent from the results.json of runs before it existed: inclusive then.
    words = (">", "<") if outcome.get("strict") else (">=", "<=")
    bounds = " and ".join(
        f"{word} {outcome[key]}"
        for word, key in zip(words, ("min", "max"))
        if outcome[key] is not None
    )
    if "of" in outcome:
        measured = (
            f"{outcome['value']} of {outcome['of']} classes {bounds} (need "
            f"{outcome['min_count']}; {outcome['defined']} have a value)"
        )
    elif _is_latency_ratio(outcome):
        calls = f"{paired_calls} " if paired_calls else ""
        measured = (
            f"ratio {_cell(outcome['value'])}, the median of {calls}per-call ratios paired "
            f"within the bench run, not the ratio of the median latencies (goal {bounds})"
        )
        interval = outcome.get("interval_95")  # absent in results.json before it existed
        if interval is not None:
            measured += f", 95 % interval {_cell(interval[0])}..{_cell(interval[1])}"
            if outcome.get("unresolved"):
                measured += " (unresolved: the goal lies inside it; more bench.repeats decide)"
    else:
        measured = f"{outcome['compare']} {_cell(outcome['value'])} (goal {bounds})"
    if "per_seed" in outcome:
        seeds = ", ".join(_cell(v) for v in outcome["per_seed"])
        measured += f"; mean of {len(outcome['per_seed'])} seeds, each: {seeds}"
    return f"{verdict}  {outcome['name']} - {outcome['model']}{against}: {measured}"


def _ablation_lines(name: str, ablation: dict[str, Any]) -> list[str]:
    title, cells = _ablation_table(name, ablation)
    return [f"{title}:", *text_table(cells)]


def _ablation_table(name: str, ablation: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """An ablation's title and its table as text cells (header first), for the printed
    summary, table.md and the HTML report."""
    rows = ablation["rows"]
    keys = [key for key in rows[0] if key != "std"]
    cells = [keys]
    for row in rows:
        spread = row.get("std", {})
        cells.append(
            [
                _cell(row[k], k)
                + (f" ± {_cell(spread[k], k)}" if spread.get(k) is not None else "")
                for k in keys
            ]
        )
    seeds = ablation.get("seeds")
    trained = ""
    if seeds is not None:  # a sweep: the networks it trained per value
        trained = f", seed {seeds[0]}" if len(seeds) == 1 else f", mean ± std of seeds {seeds}"
    return f"ablation {name} ({ablation['kind']}, {ablation['split']}{trained})", cells


def format_summary(results: dict[str, Any]) -> str:
    """The printed summary: the paper-shaped table, the ablations and the checks."""
    table = results["table"]
    lines = [f"{table_caption(results)}:"]
    lines += text_table(_table_cells(table))
    bench = _bench_line(results)
    if bench:
        lines += [bench]
    flags = _ood_flag_cells(results)
    if flags:
        lines += ["", _ood_flag_title(results), *text_table(flags)]
    for name, ablation in results["ablations"].items():
        lines += ["", *_ablation_lines(name, ablation)]
    if results["checks"]:
        passed = sum(o["passed"] for o in results["checks"])
        calls = _paired_calls(results)
        lines += ["", f"checks: {passed} of {len(results['checks'])} pass"]
        lines += [_check_line(o, calls) for o in results["checks"]]
    return "\n".join(lines)


def format_markdown(results: dict[str, Any]) -> str:
    """table.md: the summary as Markdown (tables as pipes, checks as a list)."""
    table = results["table"]
    experiment = results["experiment"]
    cells = _table_cells(table)
    lines = [f"# {experiment['title'] or experiment['name']}", ""]
    if experiment["paper"]:
        lines += [experiment["paper"], ""]
    lines += [table_caption(results), "", *markdown_table(cells)]
    bench = _bench_line(results)
    if bench:
        lines += ["", bench]
    flags = _ood_flag_cells(results)
    if flags:
        lines += ["", _ood_flag_title(results), "", *markdown_table(flags)]
    for name, ablation in results["ablations"].items():
        lines += ["", "```", *_ablation_lines(name, ablation), "```"]
    if results["checks"]:
        calls = _paired_calls(results)
        lines += ["", "Checks:", ""] + [f"- {_check_line(o, calls)}" for o in results["checks"]]
    return "\n".join(lines) + "\n"
