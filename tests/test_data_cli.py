"""`segdistill data synth | info | preview` through the command line entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdistill.cli import main
from segdistill.data import shifts
from segdistill.data import synthstreets as ss
from segdistill.data.folder import FolderDataset
from segdistill.data.labels import CLASS_NAMES
from segdistill.errors import DataError
from test_datasets import TRAIN_IDS, cityscapes_image, gt_file
from test_train import ctrl_c_when

TINY = ["--size", "64x128", "--train", "2", "--val", "1", "--test", "2", "--workers", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["data", "synth", "--out", str(root), *TINY]) == 0
    return root


def test_synth_writes_and_then_skips(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    meta = dataset / ss.META_FILE
    written = meta.stat().st_mtime_ns
    assert main(["data", "synth", "--out", str(dataset), *TINY]) == 0
    assert "already there" in capsys.readouterr().out
    assert meta.stat().st_mtime_ns == written


def test_info_prints_counts_and_frequencies(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "info", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "integrity: OK" in out
    assert "road" in out and "motorcycle" in out and "newcity" in out
    assert "interior (train)" in out


def test_interior_share_counts_the_train_labels(dataset: Path) -> None:
    _, reports = ss.check_dataset(dataset)
    train = next(r for r in reports if r.name == "train")
    labels = sorted((dataset / "gtFine" / "train").glob("*/*_gtFine_labelTrainIds.png"))
    expected = sum(ss.interior_counts(np.array(Image.open(p))) for p in labels)
    np.testing.assert_array_equal(train.class_interior, expected)
    assert np.all(train.class_interior <= train.class_pixels)
    assert 0 < train.class_interior.sum() < train.class_pixels.sum()


def test_info_tabulates_each_class_share_of_images_and_of_interior_pixels(
    dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    """The last two columns of a class's row: the share of the train images that show it,
    and the share of its own train pixels that lie inside (not of all pixels)."""
    labels = [
        np.array(Image.open(path))
        for path in sorted((dataset / "gtFine" / "train").glob("*/*_gtFine_labelTrainIds.png"))
    ]
    pixels = sum(np.bincount(label.ravel(), minlength=256) for label in labels)
    interior = sum(ss.interior_counts(label) for label in labels)
    assert main(["data", "info", str(dataset)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.endswith("%")}
    for name, class_id in (("road", 0), ("sky", 10), ("void", 255)):
        shown = sum(bool(np.any(label == class_id)) for label in labels)
        assert rows[name][-2] == f"{100 * shown / len(labels):.2f}%"
        assert rows[name][-1] == f"{100 * interior[class_id] / pixels[class_id]:.2f}%"


def test_info_names_a_truncated_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(root), *TINY, "--shifts", "none"]) == 0
    victim = sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    capsys.readouterr()
    assert main(["data", "info", str(root)]) == 1
    assert victim.name in capsys.readouterr().out


def test_info_names_a_label_file_of_the_wrong_size(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(root), *TINY, "--shifts", "none"]) == 0
    victim = sorted((root / "gtFine" / "train").glob("*/*_gtFine_labelTrainIds.png"))[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(victim)
    capsys.readouterr()
    assert main(["data", "info", str(root)]) == 1
    assert victim.name in capsys.readouterr().out
    # The preview drew it stretched to its panel, unnoticed.
    sheet = ["--out", str(tmp_path / "sheet.png"), "--split", "train", "--scenes", "99"]
    assert main(["data", "preview", str(root), *sheet]) == 2
    assert f"{victim} is 10x10 (WxH) but the data set's images are" in capsys.readouterr().err


def test_info_lists_every_bad_file_of_synthstreets(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Not only the first: a truncated label in val and a wrong-size one in train are both
    named, with the class table still printed from the good files; the library call
    without a problems list still stops at the first."""
    root = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(root), *TINY, "--shifts", "none"]) == 0
    truncated = sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[0]
    truncated.write_bytes(truncated.read_bytes()[:200])
    small = sorted((root / "gtFine" / "train").glob("*/*_gtFine_labelTrainIds.png"))[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    capsys.readouterr()
    assert main(["data", "info", str(root)]) == 1
    out = capsys.readouterr().out
    assert "integrity: 2 problem(s) in 5 images:" in out
    listed = out.split("integrity:")[1]
    assert truncated.name in listed and small.name in listed
    assert "class pixel frequencies" in out
    with pytest.raises(DataError, match=small.name):
        ss.check_dataset(root)  # train is checked before val


def test_preview_writes_a_contact_sheet(dataset: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    assert main(["data", "preview", str(dataset), "--out", str(sheet), "--scenes", "2"]) == 0
    width, height = Image.open(sheet).size
    assert width > 1000 and height > 200  # 10 panels (image, labels, depth, 7 shifts) per row


@pytest.mark.parametrize("command", ["info", "preview"])
def test_a_data_folder_that_is_not_there_is_said_so(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    """It was reported as a SynthStreets set without its meta.json."""
    out = ["--out", str(tmp_path / "sheet.png")] if command == "preview" else []
    assert main(["data", command, str(tmp_path / "nowhere"), *out]) == 2
    assert f"data folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def test_info_on_the_folder_above_a_data_set_points_at_it(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It said to generate SynthStreets into the folder above (`data synth --out data`),
    which holds the data sets."""
    above = tmp_path / "data"
    above.mkdir()
    (above / "synth").symlink_to(dataset)
    (above / "notes").mkdir()
    assert main(["data", "info", str(above)]) == 2
    error = capsys.readouterr().err
    assert f"{above} is not a data set (no meta.json) but holds {above / 'synth'}: give" in error
    assert "data synth" not in error
    assert main(["data", "info", str(above / "notes")]) == 2
    assert f"run `segdistill data synth --out {above / 'notes'}`" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["info", "preview"])
def test_a_split_of_a_folder_data_set_points_at_its_root(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    """Given root/train (a split) instead of root, the error said to generate SynthStreets
    into the user's own split folder (`data synth --out root/train`)."""
    root = tmp_path / "own"
    _save(root / "train" / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    _save(root / "train" / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    (root / "classes.yaml").write_text("classes: [{name: road, color: [1, 1, 1]}]\n")
    out = ["--out", str(tmp_path / "sheet.png")] if command == "preview" else []
    assert main(["data", command, str(root / "train"), *out]) == 2
    error = capsys.readouterr().err
    assert "data synth" not in error
    # It names the data set's root (not only the split folder given) as what to give.
    assert str(root) in error.replace(str(root / "train"), "")


def test_a_different_data_set_is_refused_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "synth"
    base = ["data", "synth", "--out", str(root), *TINY, "--shifts", "fog"]
    assert main(base) == 0
    assert main([*base, "--seed", "7"]) == 2
    assert "different SynthStreets data set" in capsys.readouterr().err
    assert ss.read_meta(root)["seed"] == 0
    assert main([*base, "--seed", "7", "--force"]) == 0
    assert ss.read_meta(root)["seed"] == 7
    assert not (root / "shifts" / "rain").exists()


def test_an_interrupted_generation_is_redone(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    args = ["data", "synth", "--out", str(root), *TINY, "--shifts", "none"]
    assert main(args) == 0
    (root / ss.META_FILE).unlink()  # as if killed before the last step
    (root / ss.PARTIAL_FILE).write_text("{}")
    leftover = root / f".{ss.META_FILE}.123.0a1b2c3d.tmp"  # killed while writing it
    leftover.write_text('{"half": ')
    assert main(["data", "info", str(root)]) == 2
    assert main(args) == 0
    assert main(["data", "info", str(root)]) == 0
    assert not leftover.exists()


def test_a_terminals_ctrl_c_stops_a_generation_in_workers_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the pool's workers too: each printed its own traceback
    before the main process said "interrupted"."""
    root = tmp_path / "synth"
    command = [sys.executable, "-m", "segdistill.cli", "data", "synth", "--out", str(root)]
    command += ["--train", "2000", "--val", "1", "--test", "1", "--shifts", "none"]
    command += ["--workers", "2"]
    returncode, output = ctrl_c_when(lambda: any(root.glob("leftImg8bit/train/*/*.png")), command)
    assert returncode == 130, output[-3000:]
    assert "interrupted: run the same command again" in output
    assert "Traceback" not in output and "PoolWorker" not in output, output[-3000:]
    assert not (root / ss.META_FILE).exists()  # unfinished: the next run redoes it


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_foreign_cityscapes_folder_is_refused_and_kept(
    tmp_path: Path, capsys, force: list[str]
) -> None:
    """A Cityscapes download (no meta.json) is never deleted, not even with --force."""
    image = tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    mask = tmp_path / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    for path in (image, mask):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a synthstreets file")
    assert main(["data", "synth", "--out", str(tmp_path), *TINY, *force]) == 2
    error = capsys.readouterr().err
    assert "holds leftImg8bit, gtFine but no meta.json: not a SynthStreets data set" in error
    assert "not even with --force" in error
    assert image.read_bytes() == mask.read_bytes() == b"not a synthstreets file"
    assert not (tmp_path / ss.META_FILE).exists()


def test_a_non_empty_folder_without_a_data_set_is_refused(tmp_path: Path, capsys) -> None:
    """A run directory given as --out: the set's folders were written among its files."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "metrics.json").write_text("{}")
    (run / "train.log").write_text("")
    assert main(["data", "synth", "--out", str(run), *TINY]) == 2
    error = capsys.readouterr().err
    assert f"{run} holds checkpoints, config.yaml, metrics.json (and 1 more) but no" in error
    assert f"e.g. {run / 'synthstreets'}" in error
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.yaml", "metrics.json", "train.log"
    ]  # fmt: skip
    # A folder holding hidden files only (.DS_Store) counts as empty.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"")
    assert main(["data", "synth", "--out", str(empty), *TINY, "--shifts", "none"]) == 0
    assert ss.read_meta(empty) is not None


@pytest.mark.parametrize("bad", [["--size", "64by128"], ["--shifts", "fog,snow"]])
def test_bad_arguments_exit_with_usage(tmp_path: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--out", str(tmp_path), *bad])
    assert exit_info.value.code == 2


def test_synth_object_scale_and_crowd_reach_the_meta(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    args = [*TINY, "--shifts", "none", "--object-scale", "2.5", "--crowd", "2"]
    assert main(["data", "synth", "--out", str(root), *args]) == 0
    params = ss.read_meta(root)["params"]
    assert params["object_scale"] == 2.5 and params["crowd"] == 2.0


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_info_of_a_folder_data_set_counts_its_classes_and_lists_every_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "own"
    masks = {
        "a": np.array([[0, 0, 1, 255]] * 4, np.uint8),  # 8 road, 4 car, 4 void
        "b": np.array([[1, 1, 1, 1]] * 4, np.uint8),  # 16 car
    }
    for name, mask in masks.items():
        _save(root / "train" / "images" / "cam" / f"{name}.png", np.zeros((4, 4, 3), np.uint8))
        _save(root / "train" / "masks" / "cam" / f"{name}.png", mask)
    (root / "classes.yaml").write_text(
        "classes: [{name: road, color: [1, 1, 1]}, {name: car, color: [2, 2, 2]}]\n"
    )
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "folder data set (classes.yaml), 2 classes" in out and "integrity: OK" in out
    rows = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line[:4] in ("road", "car ", "void")
    }
    # Pixels: 8, 20 and 4 of 32; images: road in 1 of 2, car in 2, void in 1.
    assert rows["road"] == ["25.00", "50.00%"]
    assert rows["car"] == ["62.50", "100.00%"]
    assert rows["void"] == ["12.50", "50.00%"]

    (root / "train" / "images" / "cam" / "a.png").write_bytes(b"junk")
    _save(root / "train" / "masks" / "cam" / "b.png", np.full((4, 4), 9, np.uint8))
    _save(root / "val" / "images" / "c.png", np.zeros((4, 4, 3), np.uint8))  # no mask
    assert main(["data", "info", str(root)]) == 1
    out = capsys.readouterr().out
    assert "val             1 images, none with a mask (unlabelled" in out
    assert "integrity: images that cannot be used: 2 of 3" in out
    assert (
        "cam/a.png: cannot read the image" in out
        and "cam/b.png: mask holds unknown values 9" in out
    )


def test_info_of_a_colour_mask_data_set_counts_the_classes_of_the_colours(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "own"
    road, car, void = (128, 64, 128), (0, 0, 142), (0, 0, 0)
    masks = {
        "a": np.array([[road, road, car, void]] * 4, np.uint8),  # 8 road, 4 car, 4 void
        "b": np.array([[car] * 4] * 4, np.uint8),  # 16 car
    }
    for name, mask in masks.items():
        _save(root / "train" / "images" / f"{name}.png", np.zeros((4, 4, 3), np.uint8))
        _save(root / "train" / "masks" / f"{name}.png", mask)
    (root / "classes.yaml").write_text(
        "classes: [{name: road, color: [128, 64, 128]}, {name: car, color: [0, 0, 142]}]\n"
        "mask_colors: true\nvoid_colors: [[0, 0, 0]]\n"
    )
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 classes, ignore value 255, masks in class colors (mask_colors; void colors: 1)" in out
    assert "class pixel frequencies (%, by mask color):" in out and "integrity: OK" in out
    rows = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line[:4] in ("road", "car ", "void")
    }
    # Pixels: 8, 20 and 4 of 32; images: road in 1 of 2, car in 2, void in 1.
    assert rows == {
        "road": ["25.00", "50.00%"],
        "car": ["62.50", "100.00%"],
        "void": ["12.50", "50.00%"],
    }
    masks["b"][0, 0] = (9, 9, 9)
    _save(root / "train" / "masks" / "b.png", masks["b"])
    assert main(["data", "info", str(root)]) == 1
    out = capsys.readouterr().out
    assert "integrity: images that cannot be used: 1 of 2" in out
    assert "b.png: mask holds colours that are no class's colour ([9, 9, 9]: 1 pixels)" in out


def test_info_lists_masks_without_their_image_and_surveys_past_an_empty_split(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "own"
    for name in ("a", "b"):
        _save(root / "train" / "images" / f"{name}.png", np.zeros((4, 4, 3), np.uint8))
        _save(root / "train" / "masks" / f"{name}.png", np.zeros((4, 4), np.uint8))
    (root / "train" / "images" / "b.png").unlink()  # its mask stays
    (root / "test" / "images").mkdir(parents=True)  # an empty split
    (root / "val" / "images").mkdir(parents=True)  # images not read (.tif), their masks
    (root / "val" / "images" / "c.tif").write_bytes(b"II*\x00")
    _save(root / "val" / "masks" / "c.png", np.zeros((4, 4), np.uint8))
    (root / "classes.yaml").write_text("classes: [{name: road, color: [1, 1, 1]}]\n")
    assert main(["data", "info", str(root)]) == 1
    out = capsys.readouterr().out
    assert "train           1 images" in out
    assert f"note: skipped {root / 'test' / 'images'}: no images" in out
    assert f"note: skipped {root / 'val' / 'images'}: no images" in out
    assert "integrity: images that cannot be used: 0 of 1; masks without an image: 2:" in out
    assert f"{root / 'train' / 'masks' / 'b.png'}: a mask without its image" in out
    assert f"{root / 'val' / 'masks' / 'c.png'}: a mask without its image" in out


def test_info_of_a_cityscapes_layout_maps_its_label_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = "city_000000_000000"
    _save(
        tmp_path / "leftImg8bit" / "val" / "city" / f"{base}_leftImg8bit.png",
        np.zeros((2, 4, 3), np.uint8),
    )
    label_ids = np.array([[7, 7, 26, 0]] * 2, np.uint8)  # road, road, car, unlabeled (void)
    _save(tmp_path / "gtFine" / "val" / "city" / f"{base}_gtFine_labelIds.png", label_ids)
    assert main(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Cityscapes layout, 19 classes" in out
    rows = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line.split()[:1] in (["road"], ["car"], ["void"])
    }
    assert rows == {"road": "50.00", "car": "25.00", "void": "25.00"}
    assert "integrity: OK (1 images, 1 with a mask, every file decoded)" in out
    assert "note: split train" not in out
    # The gtFine zip not unpacked: OK (every file decoded) said 'and their masks'.
    _save(
        tmp_path / "leftImg8bit" / "train" / "city" / f"{base}_leftImg8bit.png",
        np.zeros((2, 4, 3), np.uint8),
    )
    assert main(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "note: split train has no masks: training needs them" in out
    assert "integrity: OK (2 images, 1 with a mask, every file decoded)" in out


def test_an_image_without_a_mask_is_read_but_not_counted_as_void(tmp_path: Path) -> None:
    from segdistill.data.folder import FolderDataset
    from segdistill.data.survey import survey

    _save(tmp_path / "val" / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "val" / "masks" / "a.png", np.array([[0, 0, 255, 255]] * 4, np.uint8))
    _save(tmp_path / "val" / "images" / "b.png", np.zeros((4, 4, 3), np.uint8))  # no mask
    (tmp_path / "classes.yaml").write_text("classes: [{name: road, color: [1, 1, 1]}]\n")
    found = survey(FolderDataset.split(tmp_path, "val", allow_unlabeled=True), "val", False)
    assert (found.images, found.masks, found.unlabeled) == (2, 1, 1)
    assert found.problems == [
        f"{tmp_path}/val/images/b.png: no mask, though other images of val have one "
        "(images with a mask: 1 of 2)"
    ]
    assert (found.class_pixels[0], found.class_pixels[255]) == (8, 8)  # a.png only
    assert (found.class_images[0], found.class_images[255]) == (1, 1)


def test_preview_of_a_folder_data_set_draws_images_masks_and_overlays(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "own"
    for i in range(5):
        _save(root / "train" / "images" / "cam" / f"{i}.png", np.full((8, 16, 3), 40 * i, np.uint8))
        _save(root / "train" / "masks" / "cam" / f"{i}.png", np.full((8, 16), 7, np.uint8))
    _save(root / "val" / "images" / "x.png", np.zeros((8, 16, 3), np.uint8))  # no mask
    (root / "classes.yaml").write_text(
        "classes: [{name: road, color: [1, 1, 1]}, {name: car, color: [2, 2, 2]}]\n"
        "mask_values: {7: 1, 0: 255}\n"
    )
    sheet = tmp_path / "sheet.png"
    assert main(["data", "preview", str(root), "--out", str(sheet), "--scenes", "3"]) == 0
    assert "wrote" in capsys.readouterr().out and Image.open(sheet).size[0] > 500
    # The val split has no mask to show; an unknown split is named with the known ones.
    assert main(["data", "preview", str(root), "--out", str(sheet), "--split", "val"]) == 2
    assert (
        "nothing to preview; split val: none of its 1 images has a mask" in capsys.readouterr().err
    )
    assert main(["data", "preview", str(root), "--out", str(sheet), "--split", "test"]) == 2
    assert "no split 'test'; it has ['train', 'val']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "preview", str(root), "--out", str(sheet), "--scenes", "0"])


@pytest.mark.parametrize(
    ("count", "rows", "expected"),
    # 5 rows of 4: at 0, 4/3, 8/3 and 4, rounded to the nearest image
    [(10, 4, [0, 3, 6, 9]), (3, 5, [0, 1, 2]), (1, 4, [0]), (7, 1, [0]), (5, 4, [0, 1, 3, 4])],
)
def test_preview_rows_are_spread_over_the_split(count: int, rows: int, expected: list) -> None:
    from segdistill.data.preview import spread

    assert spread(count, rows) == expected


def _cityscapes(root: Path, split: str, masks: list[np.ndarray | None]) -> None:
    """One image per mask in root/leftImg8bit/split/city/, and its labelTrainIds mask
    (None: no mask)."""
    for i, mask in enumerate(masks):
        base = f"city_{i:06d}_000019"
        cityscapes_image(root, split, base)
        if mask is not None:
            gt_file(root, split, base, "labelTrainIds", mask)


ROAD_CAR = TRAIN_IDS  # 3/8 road, 3/8 car, 2/8 void
VOID = np.full_like(TRAIN_IDS, 255)  # as Cityscapes' test masks


@pytest.fixture
def sheets(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The title, legend labels and rows of (title, picture) panels of each contact sheet
    `data preview` draws."""
    drawn: list[dict] = []

    def draw(rows: list, labels: list, title: str, out: Path, legend: list | None = None) -> None:
        drawn.append(
            {
                "title": title,
                "legend": [patch.get_label() for patch in legend or []],
                "rows": rows,
            }
        )

    monkeypatch.setattr("segdistill.data.preview.draw_sheet", draw)
    return drawn


def test_preview_prefers_val_and_passes_over_splits_of_void_masks(
    tmp_path: Path, sheets: list[dict], capsys: pytest.CaptureFixture
) -> None:
    _cityscapes(tmp_path, "test", [VOID, VOID])
    _cityscapes(tmp_path, "train", [ROAD_CAR])
    _cityscapes(tmp_path, "val", [ROAD_CAR, ROAD_CAR])
    preview = ["data", "preview", str(tmp_path), "--out", str(tmp_path / "sheet.png")]
    assert main(preview) == 0
    assert "split val, 2 of 2 images" in sheets[-1]["title"]
    assert sheets[-1]["legend"] == ["road", "car", "void / ignore"]  # figures.class_legend's

    _cityscapes(tmp_path, "val", [VOID, VOID])
    assert main(preview) == 0
    assert "split train" in sheets[-1]["title"]
    assert "passes over split val: the 2 masks drawn show no class (all void)" in (
        capsys.readouterr().err
    )

    # Asked for, a split of void masks is drawn, with a note.
    assert main([*preview, "--split", "test"]) == 0
    assert "split test" in sheets[-1]["title"] and sheets[-1]["legend"] == ["void / ignore"]
    assert "note: split test: the 2 masks drawn show no class" in capsys.readouterr().err

    _cityscapes(tmp_path, "train", [VOID])
    assert main(preview) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: nothing to preview; split val: the 2 masks drawn show no class" in err
    assert "split train: the 1 masks drawn" in err and "split test: the 2 masks drawn" in err


def test_preview_names_the_folder_of_a_split_without_images(
    tmp_path: Path, sheets: list[dict], capsys: pytest.CaptureFixture
) -> None:
    _cityscapes(tmp_path, "train", [ROAD_CAR])
    (tmp_path / "leftImg8bit" / "val").mkdir()
    (tmp_path / "leftImg8bit" / "__MACOSX").mkdir()
    preview = ["data", "preview", str(tmp_path), "--out", str(tmp_path / "sheet.png")]
    assert main([*preview, "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/leftImg8bit/val: split 'val' holds no images (expected " in err
    assert err.strip().endswith("splits with images: train")
    assert main(preview) == 0 and "split train" in sheets[-1]["title"]


def test_preview_opens_only_the_split_it_draws(tmp_path: Path, sheets: list[dict]) -> None:
    _save(tmp_path / "train" / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "train" / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "val" / "images").mkdir(parents=True)  # no image: a broken split
    (tmp_path / "classes.yaml").write_text("classes: [{name: road, color: [1, 1, 1]}]\n")
    preview = ["data", "preview", str(tmp_path), "--out", str(tmp_path / "sheet.png")]
    assert main([*preview, "--split", "train"]) == 0
    assert main(preview) == 0 and "split train" in sheets[-1]["title"]


def test_info_lists_each_missing_mask_of_a_labelled_split(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _cityscapes(tmp_path, "train", [ROAD_CAR, None, ROAD_CAR, None])
    _cityscapes(tmp_path, "test", [None, None])  # unlabelled: a note, no problem
    assert main(["data", "info", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "test            2 images, none with a mask (unlabelled" in out
    assert "train           4 images, 2 without a mask (listed below)" in out
    assert "integrity: images that cannot be used: 2 of 6" in out
    # Every mask shows road: the images without one do not count (it said 50 %).
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:4] == "road"}
    assert rows["road"][-1] == "100.00%"
    for i in (1, 3):
        image = tmp_path / "leftImg8bit" / "train" / "city" / f"city_{i:06d}_000019_leftImg8bit.png"
        assert (
            f"{image}: no mask, though other images of train have one (images with a mask: 2 of 4)"
            in out
        )


def test_info_skips_folders_without_images_and_tabulates_train_per_image(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from segdistill.data.cityscapes import split_folders

    _cityscapes(tmp_path, "test", [VOID])
    _cityscapes(tmp_path, "train", [ROAD_CAR])
    (tmp_path / "leftImg8bit" / "__MACOSX" / "city").mkdir(parents=True)
    (tmp_path / "leftImg8bit" / "__MACOSX" / "city" / "._x_leftImg8bit.jpg").write_bytes(b"")
    assert split_folders(tmp_path) == ["test", "train"]
    assert main(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"skipped {tmp_path}/leftImg8bit/__MACOSX: no images (leftImg8bit/<split>/" in out
    assert "images (train)" in out and "images (test)" not in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:4] == "road"}
    assert rows["road"] == ["0.00", "37.50", "100.00%"]  # test, train, images (train)
    assert "images (train): the share of the masks of train that show each class" in out


def test_info_without_any_split_of_images_names_the_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "leftImg8bit" / "__MACOSX").mkdir(parents=True)
    assert main(["data", "info", str(tmp_path)]) == 2
    assert (
        f"{tmp_path}: Cityscapes layout without any split folder holding images: expected "
        f"{tmp_path}/leftImg8bit/<split>/<city>/*_leftImg8bit.png "
        f"({tmp_path}/leftImg8bit/__MACOSX hold none)"
    ) in capsys.readouterr().err


def test_preview_overlays_the_classes_and_leaves_void_pixels_as_they_are(
    tmp_path: Path, sheets: list[dict]
) -> None:
    """Four rows by default; the overlay is half image, half class colour on the labelled
    pixels and the image itself on the void ones."""
    for i in range(5):
        _save(tmp_path / "train" / "images" / f"{i}.png", np.full((2, 2, 3), 100 + i, np.uint8))
        _save(tmp_path / "train" / "masks" / f"{i}.png", np.array([[0, 1], [255, 1]], np.uint8))
    (tmp_path / "classes.yaml").write_text(
        "classes: [{name: road, color: [10, 20, 30]}, {name: car, color: [200, 0, 50]}]\n"
    )
    assert main(["data", "preview", str(tmp_path), "--out", str(tmp_path / "sheet.png")]) == 0
    assert "split train, 4 of 5 images" in sheets[-1]["title"]
    rows = sheets[-1]["rows"]
    assert len(rows) == 4
    (_, image), _, (_, overlay) = rows[0]
    value = image[0, 0, 0]
    expected = np.array(
        [
            [
                [value // 2 + 5, value // 2 + 10, value // 2 + 15],
                [value // 2 + 100, value // 2, value // 2 + 25],
            ],
            [[value] * 3, [value // 2 + 100, value // 2, value // 2 + 25]],
        ]
    )
    np.testing.assert_array_equal(overlay, expected)


def test_preview_of_synthstreets_draws_the_shifted_copies_of_the_test_split_only(
    dataset: Path, tmp_path: Path, sheets: list[dict]
) -> None:
    preview = ["data", "preview", str(dataset), "--out", str(tmp_path / "sheet.png")]
    assert main([*preview, "--split", "train", "--scenes", "1"]) == 0
    depth = "depth (log; near bright, sky black)"
    assert [name for name, _ in sheets[-1]["rows"][0]] == ["image", "labels", depth]
    assert main([*preview, "--scenes", "1"]) == 0  # the test split, with every copy
    row = sheets[-1]["rows"][0]
    # A legend of the classes the label panel shows (train ids read from the file).
    image = sorted((dataset / "leftImg8bit" / "test").glob("*/*_leftImg8bit.png"))[0]
    stem = image.name.removesuffix("_leftImg8bit.png")
    ids = np.array(
        Image.open(ss.SamplePaths.of(dataset, "test", image.parent.name, stem).train_ids)
    )
    shown = [CLASS_NAMES[c] for c in np.unique(ids) if c < len(CLASS_NAMES)]
    assert sheets[-1]["legend"] == shown + ["void / ignore"] * bool((ids == 255).any())
    assert [name for name, _ in row] == [
        "image", "labels", depth, "fog_0.005", "fog_0.01", "fog_0.02", "rain", "night",
        "newcity", "anomaly (red)",
    ]  # fmt: skip
    # The anomaly copy of the first test image, its anomaly pixels tinted red.
    copy = ss.SamplePaths.of(ss.shift_root(dataset, "anomaly"), "test", image.parent.name, stem)
    raw = np.array(Image.open(copy.image))
    anomalous = np.array(Image.open(copy.anomaly)) == shifts.ANOMALY
    assert anomalous.any()
    tinted = row[-1][1]
    np.testing.assert_array_equal(tinted[~anomalous], raw[~anomalous])
    assert np.all(tinted[anomalous][:, 0] >= 153) and np.all(tinted[anomalous][:, 1:] <= 103)


def test_shifts_without_a_test_split_are_named_in_a_notice(tmp_path: Path, capsys) -> None:
    """Shifted copies are made of the test split: --test 0 makes none, said, not silent."""
    args = ["--size", "16x32", "--train", "1", "--val", "0", "--test", "0", "--workers", "1"]
    assert main(["data", "synth", "--out", str(tmp_path / "s"), *args, "--shifts", "fog"]) == 0
    captured = capsys.readouterr()
    assert "notice: --shifts fog copies the test split, and --test 0 makes none" in captured.err
    assert "0 shifted copies" in captured.out
    assert main(["data", "synth", "--out", str(tmp_path / "t"), *args, "--shifts", "none"]) == 0
    assert "notice" not in capsys.readouterr().err


def test_the_synthstreets_preview_legend_holds_the_classes_of_every_scene(
    dataset: Path, tmp_path: Path, sheets: list[dict]
) -> None:
    """Both test scenes drawn (each holds classes the other lacks): the legend lists the
    classes of either label panel, not those of the first scene only."""
    preview = ["data", "preview", str(dataset), "--out", str(tmp_path / "sheet.png")]
    assert main([*preview, "--split", "test", "--scenes", "2"]) == 0
    ids = []
    for image in sorted((dataset / "leftImg8bit" / "test").glob("*/*_leftImg8bit.png")):
        stem = image.name.removesuffix("_leftImg8bit.png")
        path = ss.SamplePaths.of(dataset, "test", image.parent.name, stem).train_ids
        ids.append(np.array(Image.open(path)).ravel())
    assert len(ids) == len(sheets[-1]["rows"]) == 2
    every = np.concatenate(ids)
    shown = [CLASS_NAMES[c] for c in np.unique(every) if c < len(CLASS_NAMES)]
    assert sheets[-1]["legend"] == shown + ["void / ignore"] * bool((every == 255).any())


def test_info_names_masks_in_a_format_that_is_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Masks saved as JPEG (lossy, and not read: masks are PNG) in a split's masks/ are
    files that cannot be used: `data info` must name them, not report the split as
    unlabelled and the data set as OK."""
    root = tmp_path / "own"
    _save(root / "train" / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    _save(root / "train" / "masks" / "a.jpg", np.zeros((4, 4), np.uint8))
    (root / "classes.yaml").write_text("classes: [{name: road, color: [1, 1, 1]}]\n")
    assert main(["data", "info", str(root)]) == 1
    out = capsys.readouterr().out
    assert "integrity: OK" not in out
    jpeg = root / "train" / "masks" / "a.jpg"
    assert f"{jpeg}: not read as a mask: masks are lossless PNG" in out
    assert "images that cannot be used: 0 of 1; files in a masks folder not read as masks: 1" in out
    assert "is gtFine/ or masks/ there?" not in out  # it is there
    # Training and evaluation refuse the split, naming the file, not "an unlabelled split".
    with pytest.raises(DataError, match=r"1 files in a masks folder are not read as masks \("):
        FolderDataset.split(root, "train")
