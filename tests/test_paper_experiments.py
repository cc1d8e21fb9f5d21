"""Every paper experiment (configs/paper/*.yaml) runs from its first step to its report.

The paper configs are meant for Cityscapes on GPUs, where a step that fails after the
ensemble has trained for days costs the most. Here each runs on a tiny Cityscapes-layout
tree (12 images of 64x128 with random labels) and local 'ImageNet' files of the right
keys, with only the sizes overridden: crop, batch, epochs, width, device, members and
the bench size. Everything else (architectures, output strides, methods, their options,
teacher kinds, caches, ablations, checks) is the config's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from segdistill.cli import main
from segdistill.models.encoders import build_encoder

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper"
WIDTH = 0.25
SIZE = (64, 128)
# The sizes a CPU runs in seconds; the configs' own settings stay.
SMALL = [
    "set.data.crop_size=[64,64]",
    "set.data.batch_size=2",
    "set.data.num_workers=0",
    "set.trainer.max_epochs=1",
    "set.trainer.accelerator=cpu",
    "set.trainer.precision=32-true",
    f"set.model.encoder_options.width={WIDTH}",
    f"bench.size=[{SIZE[0]},{SIZE[1]}]",
    "bench.device=cpu",
    "bench.repeats=1",
    "bench.warmup=0",
]
# Per config: fewer members and ablation points than the paper's.
FEWER = {
    "dudes.yaml": ["teacher.members=2", "ablations.0.sizes=[2]"],
    "holder.yaml": ["teacher.members=2"],
    "karine.yaml": [],
    "he.yaml": [],
    "nfs.yaml": ["ablations.0.values=[0.25]"],
}


def test_every_paper_experiment_is_run_here() -> None:
    experiments = {p.name for p in PAPER.glob("*.yaml") if not p.name.startswith("train_")}
    assert experiments == set(FEWER)


@pytest.fixture(scope="module")
def cityscapes_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with data/cityscapes (8 train, 4 val images, labelTrainIds
    masks holding every class and void) and weights/<encoder>-imagenet.pth files."""
    root = tmp_path_factory.mktemp("paper")
    rng = np.random.default_rng(0)
    height, width = SIZE
    for split, city, count in (("train", "aachen", 8), ("val", "frankfurt", 4)):
        images = root / "data" / "cityscapes" / "leftImg8bit" / split / city
        masks = root / "data" / "cityscapes" / "gtFine" / split / city
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for index in range(count):
            label = np.full((height, width), 255, np.uint8)
            for class_id in range(19):
                y, x = rng.integers(0, height - 16), rng.integers(0, width - 16)
                label[y : y + rng.integers(8, 16), x : x + rng.integers(8, 16)] = class_id
            image = rng.integers(0, 60, (height, width, 3)) + (label[..., None] % 19) * 10
            base = f"{city}_{index:06d}_000019"
            Image.fromarray(image.astype(np.uint8)).save(images / f"{base}_leftImg8bit.png")
            Image.fromarray(label).save(masks / f"{base}_gtFine_labelTrainIds.png")
    (root / "weights").mkdir()
    for name in ("resnet18", "resnet50", "resnet101", "mobilenetv2"):
        state = build_encoder(name, width=WIDTH).state_dict()
        torch.save(state, root / "weights" / f"{name}-imagenet.pth")
    return root


@pytest.mark.parametrize("config", sorted(FEWER))
def test_a_paper_experiment_runs_to_its_report(
    config: str, cityscapes_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(cityscapes_tree)  # the configs' data/ and weights/ paths
    spec = yaml.safe_load((PAPER / config).read_text())
    run_dir = cityscapes_tree / "runs" / config.removesuffix(".yaml")
    args = ["experiment", str(PAPER / config), "--run-dir", str(run_dir)]
    assert main([*args, "--set", *SMALL, *FEWER[config]]) == 0

    results = json.loads((run_dir / "results.json").read_text())
    names = [spec["teacher"]["name"], spec["baseline"]["name"]]
    names += [student["name"] for student in spec["students"]]
    models = {model["name"]: model for model in results["models"]}
    assert sorted(models) == sorted(names)
    for model in models.values():
        val = model["splits"]["val"]
        assert val["num_images"] == 4
        assert 0.0 <= val["segmentation"]["miou"] <= 1.0
    assert [row[0] for row in results["table"]["rows"]] == list(models)
    members = str(results["experiment"]["config"]["teacher"]["members"])
    assert {check["name"] for check in results["checks"]} == {
        check["name"].replace("{members}", members) for check in spec["checks"]
    }
    assert all(isinstance(check["passed"], bool) for check in results["checks"])
    assert (run_dir / "report.html").is_file()
