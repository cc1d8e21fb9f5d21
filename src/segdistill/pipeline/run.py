"""The plan of an experiment (its steps, in order) and the loop that runs them."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

from segdistill.atomic import remove_unfinished_writes
from segdistill.config import SegConfig, to_dict
from segdistill.defaults import DETECTOR_FILE, RESULTS_FILE
from segdistill.errors import ConfigError
from segdistill.models.teachers import MANIFEST_FILE
from segdistill.output_paths import check_output_folder, held_folder
from segdistill.pipeline.evaluation import (
    bench_models,
    evaluate_models,
    fit_ood_detectors,
    model_sources,
    sub_ensembles,
    sweep,
)
from segdistill.pipeline.experiment import LoadedExperiment, seeded_name
from segdistill.pipeline.networks import (
    check_before_training,
    check_finished_networks,
    check_pretrain_fits,
    check_shared_caches,
    check_teacher_spread,
    prepare_all_data,
    pretrain_config,
    pretrain_encoder,
    pretrain_teacher_config,
    sweep_config,
    sweep_seed_offsets,
    teacher_networks,
    train_network,
    train_teacher,
    trained_configs,
)
from segdistill.pipeline.results import format_summary, write_results
from segdistill.pipeline.run_dir import (
    ABLATION_ROWS,
    REPORT_FILE,
    TABLE_FILE,
    OutputDigests,
    RunPaths,
    Step,
    claim_run_dir,
    network_best_weights,
    network_outputs,
    refuse_another_experiment,
    report_settings,
    run_step,
    why_again,
)


def plan(exp: LoadedExperiment, paths: RunPaths) -> list[Step]:
    """The steps of an experiment, in order (the package doc, `segdistill.pipeline`)."""
    spec = exp.spec
    where = spec.data.root
    if spec.unlabeled is not None:
        where += f", unlabeled images in {spec.unlabeled.images}"
    steps = [
        Step(
            "data",
            f"data set in {where}",
            functools.partial(prepare_all_data, spec),
            every_run=True,
        )
    ]
    # What the baseline and the students start from, and the teacher with pretrain.teacher.
    encoder_start: tuple[str, ...] = ()
    teacher_start: tuple[str, ...] = ()
    if spec.pretrain is not None:
        pretrain = spec.pretrain
        pretrains = [("pretrain", "students'", pretrain_config, paths.pretrained_encoder)]
        if pretrain.teacher:
            pretrains.append(
                (
                    "pretrain-teacher",
                    "teacher's",
                    pretrain_teacher_config,
                    paths.pretrained_teacher_encoder,
                )
            )
        for name, whose, make_config, encoder in pretrains:
            cfg = make_config(exp, paths)
            steps.append(
                Step(
                    name,
                    f"pre-train the {whose} encoder on {pretrain.data.root}",
                    functools.partial(pretrain_encoder, pretrain.data, cfg),
                    (cfg,),
                    outputs=(encoder,),
                )
            )
        encoder_start = ("pretrain",)
        teacher_start = ("pretrain-teacher",) if pretrain.teacher else ()
    teacher = spec.teacher
    what = f"{teacher.members}-member ensemble" if teacher.kind == "ensemble" else teacher.kind
    members = teacher_networks(exp, paths)
    manifest = (paths.teacher / MANIFEST_FILE,) if teacher.kind == "ensemble" else ()
    steps.append(
        Step(
            "teacher",
            f"train the teacher {teacher.name!r} ({what})",
            functools.partial(train_teacher, exp, paths),
            members,
            needs=teacher_start,
            outputs=(*network_outputs(members), *manifest),
            optional_outputs=network_best_weights(members),
        )
    )
    by_offset = [trained_configs(exp, paths, offset) for offset in range(spec.seeds)]
    if spec.pretrain is not None:  # every seed has the same encoder: the first one tells
        check_pretrain_fits(exp, pretrain_config(exp, paths), by_offset[0])
    check_shared_caches(exp, by_offset[0])
    check_teacher_spread(exp, by_offset[0])
    # The networks every model of the results is, and those of the first seed (benchmarked).
    networks, first_seed, baseline_steps = ["teacher"], ["teacher"], []
    for offset, trained in enumerate(by_offset):
        baseline_step = "teacher"  # the baseline is an ensemble member
        if spec.baseline.member is None:
            name = seeded_name(spec.baseline.name, offset)
            baseline_step = seeded_name("baseline", offset)
            steps.append(
                Step(
                    baseline_step,
                    f"train the baseline {name!r} on labels only (seed {trained[name].seed})",
                    functools.partial(train_network, trained[name]),
                    (trained[name],),
                    needs=encoder_start,
                    outputs=network_outputs([trained[name]]),
                    optional_outputs=network_best_weights([trained[name]]),
                )
            )
            networks.append(baseline_step)
        for student in spec.students:
            name = seeded_name(student.name, offset)
            cfg = trained[name]
            assert cfg.distill is not None  # a student's config always has one
            methods = ", ".join(m.name for m in cfg.distill.methods)
            starts = (baseline_step,) if student.init_from_baseline else ()
            steps.append(
                Step(
                    f"student-{name}",
                    f"distil the student {name!r} ({methods}; seed {cfg.seed})",
                    functools.partial(train_network, cfg),
                    (cfg,),
                    needs=("teacher", *encoder_start, *starts),
                    outputs=network_outputs([cfg]),
                    optional_outputs=network_best_weights([cfg]),
                )
            )
            networks.append(f"student-{name}")
        baseline_steps.append(baseline_step)
        if offset == 0:
            first_seed = list(networks)
    homes = [source for _, source in model_sources(exp, paths, spec.seeds)]
    steps.append(
        Step(
            "evaluate",
            "evaluate every model",
            functools.partial(evaluate_models, exp, paths),
            needs=tuple(networks),
            outputs=(paths.evaluation / RESULTS_FILE,),
        )
    )
    steps.append(
        Step(
            "ood-detectors",
            "fit each model's OOD flag on the validation images",
            functools.partial(fit_ood_detectors, exp, paths),
            needs=("evaluate", *networks),
            outputs=(paths.ood_detectors, *(home / DETECTOR_FILE for home in homes)),
        )
    )
    size = "x".join(map(str, spec.bench.size))
    steps.append(
        Step(
            "bench",
            f"benchmark every model at {size}",
            functools.partial(bench_models, exp, paths),
            needs=tuple(first_seed),
            outputs=(paths.bench,),
        )
    )
    for ablation in spec.ablations:
        rows = (paths.ablation(ablation.name) / ABLATION_ROWS,)
        if ablation.kind == "sweep":
            student = next(s for s in spec.students if s.name == ablation.student)
            trained_steps = []
            trained_values: list[tuple[Any, Any]] = []  # (as given, as the config holds it)
            for value in ablation.values:
                for offset in sweep_seed_offsets(exp, ablation):
                    cfg = sweep_config(exp, paths, ablation, value, offset)
                    if offset == 0:
                        _refuse_repeated_value(
                            exp, ablation.name, ablation.key, value, cfg, trained_values
                        )
                    starts = (baseline_steps[offset],) if student.init_from_baseline else ()
                    trained_steps.append(seeded_name(f"ablation-{ablation.name}-{value}", offset))
                    steps.append(
                        Step(
                            trained_steps[-1],
                            f"ablation {ablation.name}: train {ablation.student!r} with "
                            f"{ablation.key}={value} (seed {cfg.seed})",
                            functools.partial(train_network, cfg),
                            (cfg,),
                            needs=("teacher", *encoder_start, *starts),
                            outputs=network_outputs([cfg]),
                            optional_outputs=network_best_weights([cfg]),
                        )
                    )
            run = functools.partial(sweep, exp, paths, ablation)
            needs = tuple(trained_steps)
        else:
            run = functools.partial(sub_ensembles, exp, paths, ablation)
            needs = ("teacher",)
        steps.append(
            Step(
                f"ablation-{ablation.name}",
                f"ablation {ablation.name}",
                run,
                needs=needs,
                outputs=rows,
            )
        )
    steps.append(
        Step(
            "report",
            "write results.json and report.html",
            functools.partial(write_results, exp, paths, [step.name for step in steps]),
            needs=tuple(step.name for step in steps if not step.every_run),
            outputs=(paths.root / RESULTS_FILE, paths.root / TABLE_FILE, paths.root / REPORT_FILE),
            names_run_dir=True,
            settings=report_settings(exp.spec),
        )
    )
    names = [step.name for step in steps]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        # A step's marker and outputs are named by it: the second would be skipped as done
        # (an ablation "w-1" and the value 1 of a sweep "w" are both "ablation-w-1").
        raise ConfigError(
            f"{exp.path}: two steps would be named {', '.join(map(repr, repeated))}; rename "
            "an ablation"
        )
    return steps


def run_pipeline(exp: LoadedExperiment, run_dir: str | Path) -> dict[str, Any]:
    """Run every step of `exp` not finished before into `run_dir`; print progress and the
    summary; return the content of results.json.

    A finished step (its marker written) is skipped unless one of its outputs is missing
    or what it read has changed since (`why_again`): a student trained again is
    evaluated again, in this run or, if this one is stopped, in the next."""
    paths = RunPaths(Path(run_dir))
    check_output_folder(paths.root, "run directory")
    steps = plan(exp, paths)  # a config the plan refuses leaves the directory as it was
    check_before_training(exp, [s for s in steps if not paths.stage(s.name).is_file()], steps)
    with held_folder(paths.root):
        refuse_another_experiment(exp.spec, paths, steps)  # the whole change, before any one step
        for step in steps:  # before the claim: a config refused here records nothing
            if paths.stage(step.name).is_file():
                check_finished_networks(step, paths.stage(step.name))
        claim_run_dir(exp.spec, paths, steps)
        # No other run writes here (the lock): any temporary file is a killed write's.
        remove_unfinished_writes(paths.root, recursive=True)
        start = time.perf_counter()
        title = exp.spec.title or exp.spec.name
        print(f"{title}: {len(steps)} steps into {paths.root}", flush=True)
        digests = OutputDigests(paths.root, {step.name: step for step in steps})
        for number, step in enumerate(steps, 1):
            marker = paths.stage(step.name)
            head = f"[{number}/{len(steps)}] {step.name}: {step.title}"
            inputs, optional = digests.inputs(step), digests.optional_names(step)
            again = why_again(step, marker, inputs, paths.root, optional)
            if again == "":
                print(f"{head} - done before, skipped", flush=True)
                continue
            print(f"{head} ...{f' (again: {again})' if again else ''}", flush=True)
            marker.unlink(missing_ok=True)
            run_step(step, marker, inputs, optional, number, len(steps), start)
    results = json.loads((paths.root / RESULTS_FILE).read_text())
    print()
    print(format_summary(results))
    print(f"\nresults: {paths.root / RESULTS_FILE}\nreport:  {paths.root / REPORT_FILE}")
    return results


def _refuse_repeated_value(
    exp: LoadedExperiment,
    name: str,
    key: str | None,
    value: Any,
    cfg: SegConfig,
    trained: list[tuple[Any, Any]],
) -> None:
    """ConfigError when a sweep value sets `key` as an earlier one did (0.001 and 1.0e-3, 1
    and 1.0): the same network would train twice and its row show twice. Compared as the
    training config holds them, after conversion to the key's type."""
    assert key is not None
    held: Any = to_dict(cfg)
    for part in key.split("."):
        held = held[part]
    for given, earlier in trained:
        if earlier == held:
            raise ConfigError(
                f"{exp.path}: ablation {name!r}: the values {given!r} and {value!r} both set "
                f"{key}={held!r}; give each value once"
            )
    trained.append((value, held))
