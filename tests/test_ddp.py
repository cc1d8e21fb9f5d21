"""Distributed data parallel: `segdistill train --devices 2` on the CPU (gloo backend).

Lightning's DDP launcher re-runs the command line for the second process, so the test runs
the real CLI in a subprocess, then loads the checkpoint it wrote.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only

from segdistill.checkpoints import load_segmenter
from segdistill.config import load_config
from segdistill.distributed import is_rank_zero, print_once
from segdistill.metrics import SegmentationEvaluator
from segdistill.predictor import load_predictor
from segdistill.train import build_dataset
from test_train import TINY_CONFIG, write_tiny_cityscapes


def test_two_process_ddp_training_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    data_root = write_tiny_cityscapes(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(root=data_root))
    run_dir = tmp_path / "run"
    # One thread per process: the two processes share the CI machine's two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "segdistill.cli", "train", str(config)]
    command += ["--run-dir", str(run_dir), "--devices", "2"]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Printed by the first process only (the launcher's second one shares its stdout).
    assert result.stdout.count(f"run directory: {run_dir}") == 1

    # 8 images, 4 per process, batches of 2: 2 steps per epoch, 2 epochs.
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4
    model, _ = load_segmenter(run_dir)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).logits.shape == (1, 19, 32, 32)
    with open(run_dir / "logs" / "csv" / "version_0" / "metrics.csv") as file:
        mious = [float(row["val/miou"]) for row in csv.DictReader(file) if row["val/miou"]]
    assert len(mious) == 2
    # The last validation (the final weights) is over the whole set, every image once,
    # as `segdistill evaluate` measures it, not a mean of the two processes' shares.
    cfg = load_config(run_dir / "config.yaml")
    val_set = build_dataset(cfg.data, "val", train=False)
    predictor = load_predictor(run_dir / "checkpoints" / "last.safetensors")
    whole = SegmentationEvaluator(19, inputs="probs")
    shares = [SegmentationEvaluator(19, inputs="probs") for _ in range(2)]
    with torch.no_grad():
        for index in range(len(val_set)):
            sample = val_set[index]
            probs = predictor.predict_padded(sample["image"][None]).probs
            whole.update(probs, None, sample["label"][None])
            shares[index % 2].update(probs, None, sample["label"][None])
    expected = whole.compute()["segmentation"]["miou"]
    assert mious[-1] == pytest.approx(expected, abs=1e-6)
    share_mean = np.mean([s.compute()["segmentation"]["miou"] for s in shares])
    assert share_mean != pytest.approx(expected, abs=1e-6)  # the check can tell them apart


def test_only_rank_zero_prints(monkeypatch, capsys) -> None:
    assert is_rank_zero()  # a single process
    print_once("from rank 0")
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    assert not is_rank_zero()
    print_once("from rank 1")
    assert capsys.readouterr().out == "from rank 0\n"
