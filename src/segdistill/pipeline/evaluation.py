"""Evaluation, the OOD flags, speed and the ablations of the trained networks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from segdistill.bench import benchmark, to_json
from segdistill.defaults import DETECTOR_FILE, RESULTS_FILE
from segdistill.evaluate import evaluate, find_splits
from segdistill.jsonfiles import write_json
from segdistill.models.teachers import MANIFEST_FILE, Ensemble
from segdistill.pipeline.checks import mean_over_seeds, metric_value, std_over_seeds
from segdistill.pipeline.experiment import AblationSpec, LoadedExperiment, seeded_name
from segdistill.pipeline.networks import sweep_config, sweep_seed_offsets, teacher_config
from segdistill.pipeline.run_dir import ABLATION_ROWS, RunPaths
from segdistill.predict import find_images, fit_ood_detector, score_images
from segdistill.predictor import UNCERTAINTY_SOURCES, Predictor, default_device, load_predictor


def model_sources(exp: LoadedExperiment, paths: RunPaths, seeds: int = 1) -> list[tuple[str, Path]]:
    """(name, directory) of the teacher, then of the baseline and the students trained
    with each of the first `seeds` seed offsets, named as in the experiment
    (`seeded_name`)."""
    spec = exp.spec
    sources = [(spec.teacher.name, paths.teacher)]
    for offset in range(seeds):
        baseline = (seeded_name(spec.baseline.name, offset), paths.baseline(spec.baseline, offset))
        students = [
            (seeded_name(s.name, offset), paths.student(s.name, offset)) for s in spec.students
        ]
        sources += [baseline, *students]
    return sources


def load_models(exp: LoadedExperiment, paths: RunPaths, seeds: int = 1) -> list[Predictor]:
    """The models of `model_sources`, loaded and named."""
    spec = exp.spec
    predictors = []
    for name, source in model_sources(exp, paths, seeds):
        predictor = load_predictor(source, mc_samples=spec.teacher.samples)
        predictor.name = name
        predictors.append(predictor)
    return predictors


def _evaluate(
    exp: LoadedExperiment,
    predictors: list[Predictor],
    out_dir: Path,
    splits: list[str] | None,
    figures: bool,
) -> dict[str, Any]:
    settings = exp.spec.evaluate
    return evaluate(
        predictors,
        exp.spec.data.root,
        splits,
        batch_size=settings.batch_size,
        out_dir=out_dir,
        write_homes=False,
        max_images=settings.max_images,
        num_samples=settings.num_samples,
        mc_samples=exp.spec.teacher.samples,
        device=settings.device,
        channels_last=settings.channels_last,
        make_figures=figures,
    )


def evaluate_models(exp: LoadedExperiment, paths: RunPaths) -> dict[str, Any]:
    """Every model (every seed's baseline and students) on every split ->
    evaluation/results.json and figures."""
    models = load_models(exp, paths, exp.spec.seeds)
    results = _evaluate(exp, models, paths.evaluation, exp.spec.evaluate.splits, True)
    return {"results": str(paths.evaluation / RESULTS_FILE), "splits": results["data"]["splits"]}


def fit_ood_detectors(exp: LoadedExperiment, paths: RunPaths) -> dict[str, Any]:
    """Every model's `ImageOODDetector`, its threshold flagging at most DEFAULT_FPR of the
    validation images (`segdistill.predict.fit_ood_detector`, as `segdistill predict
    --ood-reference` fits one), saved in the model's directory as ood_detector.json for
    `predict --ood-detector`; and the share of each evaluated split's images (the ones the
    evaluation used) it flags, scored as `predict` scores them. Their summaries go to
    ood_detectors.json."""
    spec, settings = exp.spec, exp.spec.evaluate
    device = default_device(settings.device)
    val_split = teacher_config(exp, paths).data.val_split
    references = [
        image.path for image in find_images([Path(spec.data.root) / "leftImg8bit" / val_split])
    ]
    evaluated = json.loads((paths.evaluation / RESULTS_FILE).read_text())["data"]["splits"]
    splits = find_splits(spec.data.root)
    images = {
        name: [files.image for files in splits[name].dataset().samples][: settings.max_images]
        for name in evaluated
        if name != val_split  # at most `fpr` there by construction
    }
    detectors = {}
    for predictor in load_models(exp, paths, spec.seeds):
        assert predictor.home is not None  # every model of an experiment has its directory
        predictor.to(device, settings.channels_last)
        detector = fit_ood_detector(predictor, references, batch_size=settings.batch_size)
        detector.save(predictor.home / DETECTOR_FILE)
        scores = {
            name: score_images(
                predictor,
                files,
                detector.aggregator,
                batch_size=settings.batch_size,
                desc=f"OOD flags ({predictor.name}, {name})",
            )
            for name, files in images.items()
        }
        detectors[predictor.name] = {
            **detector.summary(),
            "reference_split": val_split,
            "file": (predictor.home / DETECTOR_FILE).relative_to(paths.root).as_posix(),
            "flagged": flagged_shares(detector.threshold, scores),
        }
    write_json(paths.ood_detectors, detectors)
    return {"results": str(paths.ood_detectors)}


def flagged_shares(threshold: float, scores: dict[str, list[float]]) -> dict[str, float]:
    """{split: share of its image scores strictly above `threshold`} (splits with images)."""
    return {
        split: float(np.mean(np.asarray(values) > threshold))
        for split, values in scores.items()
        if values
    }


def bench_models(exp: LoadedExperiment, paths: RunPaths) -> dict[str, Any]:
    """Latency, parameters and FLOPs of every model, timed round robin -> bench.json
    (the first seed's networks: the other seeds' have the same architectures)."""
    settings = exp.spec.bench
    result = benchmark(
        load_models(exp, paths),
        (settings.size[0], settings.size[1]),
        settings.batch,
        repeats=settings.repeats,
        warmup=settings.warmup,
        device=settings.device,
        threads=settings.threads,
        channels_last=settings.channels_last,
    )
    write_json(paths.bench, to_json(result))
    return {"results": str(paths.bench)}


# The numbers an ablation row holds per model.
ABLATION_METRICS = (
    "miou",
    "class_mean_uncertainty",
    "pixel_mean_uncertainty",
    "misclassification_auroc",
    "ece",
    "miou_gain_removed_50",
)


def _ablation_rows(
    results: dict[str, Any], split: str, keys: list[tuple[str, Any]]
) -> list[dict[str, Any]]:
    """One row per model of an ablation's evaluation: (row key, value), then the metrics."""
    rows = []
    for (key, value), model in zip(keys, results["models"]):
        row = {key: value, "parameters": model["parameters"]}
        row.update({name: metric_value(model, name, split) for name in ABLATION_METRICS})
        rows.append(row)
    return rows


def sub_ensembles(exp: LoadedExperiment, paths: RunPaths, ablation: AblationSpec) -> dict[str, Any]:
    """The first k members of the trained ensemble for each k in `sizes`, evaluated on
    `split` without retraining (DUDES Fig. 5: mIoU and mean uncertainty vs members)."""
    members = Ensemble.from_manifest(paths.teacher).members
    predictors = [
        Predictor(
            Ensemble(list(members[:k])),
            name=f"{k}_members",
            kind="ensemble",
            uncertainty_source=UNCERTAINTY_SOURCES["ensemble"],
            source=paths.teacher / MANIFEST_FILE,
            home=None,
        )
        for k in ablation.sizes
    ]
    out = paths.ablation(ablation.name)
    results = _evaluate(exp, predictors, out, [ablation.split], False)
    rows = _ablation_rows(results, ablation.split, [("members", k) for k in ablation.sizes])
    write_json(out / ABLATION_ROWS, {"kind": ablation.kind, "split": ablation.split, "rows": rows})
    return {"rows": str(out / ABLATION_ROWS)}


def sweep(exp: LoadedExperiment, paths: RunPaths, ablation: AblationSpec) -> dict[str, Any]:
    """The sweep's networks (trained by the steps before) evaluated on `split`: a row per
    value, of the student's seed, or with every_seed the mean over the seeds (its sample
    std under "std", the seeds under "seeds"). rows.json records the seeds."""
    offsets = sweep_seed_offsets(exp, ablation)
    predictors: list[Predictor] = []
    keys: list[tuple[str, Any]] = []
    seeds: list[int] = []
    for value in ablation.values:
        for offset in offsets:
            cfg = sweep_config(exp, paths, ablation, value, offset)
            predictor = load_predictor(cfg.run.path())
            predictor.name = seeded_name(f"{ablation.key}={value}", offset)
            predictors.append(predictor)
            keys.append((str(ablation.key), value))
            seeds.append(cfg.seed)
    out = paths.ablation(ablation.name)
    results = _evaluate(exp, predictors, out, [ablation.split], False)
    per_network = _ablation_rows(results, ablation.split, keys)
    rows = [_mean_row(per_network[i : i + len(offsets)]) for i in range(0, len(keys), len(offsets))]
    content: dict[str, Any] = {
        "kind": ablation.kind,
        "student": ablation.student,
        "split": ablation.split,
    }
    per_value = [seeds[i : i + len(offsets)] for i in range(0, len(seeds), len(offsets))]
    if all(value_seeds == per_value[0] for value_seeds in per_value):
        content["seeds"] = per_value[0]  # the seeds of each value's networks (not when swept)
    write_json(out / ABLATION_ROWS, {**content, "rows": rows})
    return {"rows": str(out / ABLATION_ROWS)}


def _mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One value's row from its seeds' rows: the metrics' means and, over several seeds,
    their sample std under "std"."""
    if len(rows) == 1:
        return rows[0]
    mean = {**rows[0]}
    mean.update({name: mean_over_seeds([row[name] for row in rows]) for name in ABLATION_METRICS})
    mean["std"] = {name: std_over_seeds([row[name] for row in rows]) for name in ABLATION_METRICS}
    return mean
