"""The experiment pipeline: from a data set to `results.json` and `report.html`, in steps.

`segdistill demo` and `segdistill experiment CONFIG` both call `run_pipeline`; they differ
only in the experiment config (schema: `experiment.py` and docs/experiments.md). The
steps, in order (`run.plan`), each one a function of `networks.py`, `evaluation.py` or
`results.py`:

    data         generate SynthStreets into data.root unless it is there (`prepare_data`),
                 and the students' unlabelled images with an `unlabeled` section
    pretrain     only with a `pretrain` section: train a network of the students'
                 architecture on other data and keep its encoder, which the baseline and
                 every student start from (`pretrain_encoder`; the papers' ImageNet weights)
    pretrain-teacher  only with `pretrain.teacher: true`: the same for the teacher's
                 architecture; the teacher (every member) starts from that encoder
    teacher      train the teacher: the members of a deep ensemble, an MC-dropout network
                 or one network (`train_teacher`)
    baseline     train the student's network on labels only (`train_network`); skipped
                 when `baseline.member` names an ensemble member instead
    student-N    distil each student from the teacher (`train_network`), the teacher's
                 per-pixel outputs cached when the student's methods allow it
    baseline-sK, with `seeds: K > 1`: the baseline and every student again with their
    student-N-sK  seed + k, for k = 1..K-1 (the table and the checks take the mean)
    evaluate     every model on the test split and every shifted copy (`evaluate_models`)
    ood-detectors  each model's image-level OOD flag, its threshold set on the validation
                 images (`fit_ood_detectors`), saved as the model's ood_detector.json
    bench        latency, parameters and FLOPs of every model (`bench_models`)
    ablation-N   sub-ensembles of the trained members, or one student retrained for each
                 value of a config key (`sub_ensembles`, `sweep`)
    report       results.json, table.md and report.html (`results.write_results`)

Resumable: a step writes `stages/<step>.json` (its duration and outputs) when it has
finished, and a later run skips every step that has one, whose outputs are all there
(`Step.outputs`) and whose inputs, the outputs of the steps it needs (`Step.needs`), are
the bytes it read (`OutputDigests`); the data step is checked on every run. A network
whose training was interrupted resumes from its last checkpoint; a finished ensemble
member is skipped. The run directory remembers its experiment (`experiment.yaml`): running
another experiment config into it is refused rather than mixing the two (but the seeds,
and the title, table and checks only the report reads, may change: `MAY_CHANGE_IN_PLACE`),
and so is a second run while one is writing there (`RUN_DIR/.lock`).

Run directory:

    RUN_DIR/experiment.yaml     the experiment config as run (overrides applied)
    RUN_DIR/.lock               held by the run writing there
    RUN_DIR/stages/<step>.json  one marker per finished step (its time, peak memory and
                                the digests of what it read)
    RUN_DIR/pretrain/           run directory of the pre-training network and its
                                encoder.safetensors (only with a `pretrain` section)
    RUN_DIR/pretrain-teacher/   the same for the teacher (only with `pretrain.teacher`)
    RUN_DIR/teacher/            ensemble directory (member_XX/, manifest.json) or run directory
    RUN_DIR/baseline/           run directory (absent when the baseline is an ensemble member)
    RUN_DIR/students/<name>/    run directories
    RUN_DIR/baseline-s<k>/, RUN_DIR/students/<name>-s<k>/
                                the same, trained with seed + k (`seeds: K`, k = 1..K-1)
    RUN_DIR/cache/<name>/       cached teacher outputs of each student (or shared: `cache`)
    RUN_DIR/evaluation/         results.json and figures/ of `segdistill.evaluate`
    RUN_DIR/ood_detectors.json  each model's OOD flag: threshold, aggregator, its file
    RUN_DIR/bench.json          `segdistill.bench` results
    RUN_DIR/ablations/<name>/   the networks and results of each ablation
    RUN_DIR/results.json        everything, for every model (`results.write_results`)
    RUN_DIR/table.md            the paper-shaped table and the checks
    RUN_DIR/report.html         the HTML report

Modules, in the order a newcomer reads them:

    experiment   the experiment config: schema, `load_experiment`, `check_experiment`
    run          `plan` (the steps) and `run_pipeline` (the loop over them)
    run_dir      `RunPaths`, `Step`, the markers and when a finished step runs again
    networks     the data step, each network's training config, the training steps
    evaluation   evaluation, OOD flags, bench and ablations of the trained networks
    checks       metrics by name (table columns) and the paper claims' checks
    results      results.json, table.md, the printed summary and the report
"""

from segdistill.pipeline.experiment import LoadedExperiment, load_experiment
from segdistill.pipeline.run import run_pipeline

__all__ = ["LoadedExperiment", "load_experiment", "run_pipeline"]
