"""The NfS-SegNet experiments (configs/paper/nfs.yaml, configs/quick/nfs.yaml) built with the
code's own builders, without data: every student, its baseline and the Fig. 8 width sweep
are NfS-SegNet at the output stride the config states, although their files extend
DeepLabV3+ configs at output stride 16: the paper's 64 (Oh et al. III-B, the extra strided
stage), 24.3 GFLOPs at 2048x1024 at full width; at quick scale 16, for images 8 times
smaller per side (configs/quick/nfs.yaml says why)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segdistill.bench import count_flops
from segdistill.checkpoints import build_model
from segdistill.config import SegConfig, replace_values
from segdistill.pipeline.experiment import load_experiment
from segdistill.pipeline.networks import baseline_config, student_config, sweep_config
from segdistill.pipeline.run_dir import RunPaths

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NUM_CLASSES = 19


def planned_networks(path: Path, tmp_path: Path) -> list[SegConfig]:
    """The baseline's, every student's and every sweep network's config, as planned."""
    experiment = load_experiment(path)
    paths = RunPaths(tmp_path)
    configs = [baseline_config(experiment, paths)]
    configs += [student_config(experiment, paths, s) for s in experiment.spec.students]
    for ablation in experiment.spec.ablations:
        if ablation.kind == "sweep":
            configs += [sweep_config(experiment, paths, ablation, v) for v in ablation.values]
    return configs


@pytest.mark.parametrize(
    ("scale", "strides"),
    [("paper", [2, 4, 8, 16, 32, 64]), ("quick", [2, 4, 8, 16, 16, 16])],
)
def test_every_student_is_nfs_segnet_at_the_stated_output_stride(
    scale: str, strides: list[int], tmp_path: Path
) -> None:
    configs = planned_networks(CONFIGS / scale / "nfs.yaml", tmp_path)
    assert len(configs) == 8  # baseline, KD, JA-KD, U-KD and four widths
    for cfg in configs:
        assert (cfg.model.arch, cfg.model.encoder) == ("nfs", "nfsnet")
        with torch.device("meta"):
            network = build_model(cfg.model, NUM_CLASSES)
        # At the paper's stride the last two stages pool; at 16 they are dilated.
        assert network.encoder.strides == strides


def test_the_paper_student_costs_the_papers_gflops(tmp_path: Path) -> None:
    baseline = planned_networks(CONFIGS / "paper" / "nfs.yaml", tmp_path)[0]
    predicting = replace_values(baseline, {"model.aux_heads": False}, "test")  # training only
    with torch.device("meta"):
        network = build_model(predicting.model, NUM_CLASSES).eval()
        flops = count_flops(lambda: network(torch.empty(1, 3, 1024, 2048)))
    # The paper's 24.3; at output stride 16 the same network counts 55 GFLOPs.
    assert abs(flops / 24.3e9 - 1) < 0.05
