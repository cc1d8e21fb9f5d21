"""`segdistill predict`: files written, sizes, accuracy maps, input rules, labels, the
image-level OOD flag."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segdistill import figures
from segdistill import predict as predict_module
from segdistill.checkpoints import load_segmenter, save_weights
from segdistill.cli import main
from segdistill.config import ModelConfig
from segdistill.data.base import ClassesSpec, LabelMapping
from segdistill.data.folder import files_below, load_classes
from segdistill.data.labels import IGNORE_INDEX, TRAIN_ID_COLORS
from segdistill.data.transforms import build_eval_transform
from segdistill.defaults import AGGREGATORS, DETECTOR_FILE
from segdistill.errors import ConfigError, DataError, OutputError
from segdistill.models import build_segmenter
from segdistill.ood_detector import ImageOODDetector, threshold_at_fpr
from segdistill.predict import (
    ACCURACY_VOID,
    UINT16_MAX,
    UNFINISHED_FILE,
    InputImage,
    PredictSummary,
    find_images,
    fit_ood_detector,
    match_labels,
    predict_arrays,
    predict_files,
    read_label,
    write_outputs,
)
from segdistill.predictor import (
    PER_CLASS_OOD_SOURCE,
    input_multiple,
    load_predictor,
    pad_to_multiple,
)

CLASSES = 19
CITY_IMAGE = "aachen_000000_000019_leftImg8bit.png"


def save_tiny(path: Path, head: str | None = "scalar", mc_dropout: float = 0.0) -> Path:
    """A tiny DeepLabV3+ (ResNet-18 at width 0.125) saved as a weights file."""
    config = ModelConfig(
        encoder_options={"output_stride": 16, "width": 0.125},
        uncertainty_head=head,
        mc_dropout=mc_dropout,
    )
    model = build_segmenter(
        config.arch,
        config.encoder,
        CLASSES,
        head,
        encoder_options=config.encoder_options,
        mc_dropout=mc_dropout,
    )
    save_weights(path, model, config)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    # Seeded: the weights must not depend on which test of the module asked first.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return save_tiny(tmp_path_factory.mktemp("student") / "student.safetensors")


def files_in(folder: Path) -> set[str]:
    """The files under `folder`, as POSIX paths relative to it."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_writes_every_output_at_the_image_size(tmp_path, student) -> None:
    images = tmp_path / "images"
    write_png(images / "aachen" / CITY_IMAGE, rgb(32, 64))
    write_png(images / "gray.png", rgb(40, 70)[..., 0])  # odd size: padded and cropped back
    rgba = np.concatenate([rgb(33, 65, seed=1), np.full((33, 65, 1), 128, np.uint8)], axis=2)
    write_png(images / "rgba.png", rgba)
    label = np.random.default_rng(2).integers(0, CLASSES, (32, 64)).astype(np.uint8)
    write_png(tmp_path / "gt" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png", label)
    out = tmp_path / "out"

    found = find_images([images])
    summary = predict_files(
        load_predictor(student), found, out, labels=tmp_path / "gt", batch_size=2, progress=False
    )

    assert (summary.images, summary.labelled) == (3, 1)
    assert any("grayscale" in n and "gray.png" in n for n in summary.notices)
    assert any("RGBA" in n and "rgba.png" in n for n in summary.notices)
    assert any("no label" in n and "gray.png" in n for n in summary.notices)
    # Named by the path below the input folder: the outputs mirror its sub-folders.
    city_name = "aachen/aachen_000000_000019_leftImg8bit"
    sizes = {city_name: (32, 64), "gray": (40, 70), "rgba": (33, 65)}
    for name, size in sizes.items():
        assert read(out / "pred" / f"{name}.png").shape == size
        for kind in ("seg", "overlay", "uncertainty"):
            assert read(out / kind / f"{name}.png").shape == (*size, 3)
        raw = Image.open(out / "uncertainty16" / f"{name}.png")
        assert raw.mode == "I;16" and raw.size == size[::-1]
        assert (out / "panel" / f"{name}.png").is_file()
    assert [p.relative_to(out) for p in (out / "accuracy").rglob("*.png")] == [
        Path("accuracy", "aachen", CITY_IMAGE)
    ]
    index = json.loads((out / "predict.json").read_text())
    assert index["kind"] == "student" and index["encodings"]["uncertainty"]["max"] == 0.5
    assert [entry["name"] for entry in index["images"]] == list(sizes)
    assert index["images"][0]["label"].endswith("_gtFine_labelTrainIds.png")


def test_only_the_chosen_outputs_are_written(tmp_path, student, capsys) -> None:
    write_png(tmp_path / "in" / "a.png", rgb(32, 48))
    write_png(tmp_path / "gt" / "a.png", np.zeros((32, 48), np.uint8))
    predictor = load_predictor(student)
    every = dict(labels=tmp_path / "gt", progress=False)
    predict_files(predictor, [tmp_path / "in" / "a.png"], tmp_path / "all", **every)
    chosen = ["uncertainty16", "accuracy", "pred"]
    summary = predict_files(
        predictor, [tmp_path / "in" / "a.png"], tmp_path / "some", outputs=chosen, **every
    )
    folders = sorted(p.name for p in (tmp_path / "some").iterdir() if p.is_dir())
    assert folders == ["accuracy", "pred", "uncertainty16"]
    record = json.loads(summary.summary.read_text())["images"][0]
    assert list(record["files"]) == ["pred", "uncertainty16", "accuracy"]
    for kind in chosen:
        assert np.array_equal(
            read(tmp_path / "some" / kind / "a.png"), read(tmp_path / "all" / kind / "a.png")
        )
    with pytest.raises(ConfigError, match="unknown output kind\\(s\\) 'heat'; choose from pred"):
        predict_files(predictor, [tmp_path / "in" / "a.png"], tmp_path / "x", outputs=["heat"])
    argv = ["predict", str(student), str(tmp_path / "in"), "--out", str(tmp_path / "none")]
    assert main([*argv, "--outputs", "none"]) == 0
    assert [p.name for p in (tmp_path / "none").iterdir()] == ["predict.json"]
    assert main([*argv, "--outputs", "pred,panel"]) == 0
    usage_errors = {
        "pred,heat": "unknown output kind(s) 'heat'; choose from pred",
        "pred,": "unknown output kind(s) ''",
        "none,pred": "'none' stands alone",
    }
    for text, message in usage_errors.items():
        with pytest.raises(SystemExit):  # argparse's usage error, exit status 2
            main([*argv, "--outputs", text])
        assert message in capsys.readouterr().err
    # A kind the other arguments cannot make is refused, not silently skipped.
    assert main([*argv, "--outputs", "pred,accuracy"]) == 2
    assert "--outputs accuracy needs --labels" in capsys.readouterr().err
    assert main([*argv, "--outputs", "distrust"]) == 2
    assert "--outputs distrust needs --distrust-above" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == [
        "panel",
        "pred",
        "predict.json",
    ]


def test_distrust_mask_marks_the_pixels_at_or_above_the_threshold(
    tmp_path, student, capsys
) -> None:
    write_png(tmp_path / "in" / "a.png", rgb(40, 70))
    write_png(tmp_path / "in" / "b.png", rgb(32, 48, seed=5))
    predictor = load_predictor(student)
    plain = predict_files(predictor, sorted((tmp_path / "in").iterdir()), tmp_path / "p")
    u16 = read(tmp_path / "p" / "uncertainty16" / "a.png").astype(np.float64) / UINT16_MAX
    threshold = float(np.median(u16))  # about half the pixels of image a
    assert json.loads(plain.summary.read_text())["distrust_above"] is None
    assert not (tmp_path / "p" / "distrust").exists()

    argv = ["predict", str(student), str(tmp_path / "in"), "--out", str(tmp_path / "d")]
    assert main([*argv, "--distrust-above", str(threshold)]) == 0
    mask = read(tmp_path / "d" / "distrust" / "a.png")
    assert set(np.unique(mask)) <= {0, 255} and mask.shape == (40, 70)
    # The same pixels as thresholding the map (up to the 16-bit rounding of the file).
    near = np.abs(u16 - threshold) < 1e-4
    assert np.array_equal((mask == 255)[~near], (u16 >= threshold)[~near])
    index = json.loads((tmp_path / "d" / "predict.json").read_text())
    assert index["distrust_above"] == threshold
    record = index["images"][0]
    assert record["distrust_share"] == pytest.approx((mask == 255).mean())
    assert record["files"]["distrust"] == "distrust/a.png"
    shares = [r["distrust_share"] * r["height"] * r["width"] for r in index["images"]]
    assert f"distrust: {sum(shares) / (40 * 70 + 32 * 48):.1%} of the pixels" in (
        capsys.readouterr().out
    )
    # Without the masks, the share is still counted but no folder is named.
    only_pred = ["--distrust-above", str(threshold), "--outputs", "pred"]
    assert main([*argv[:-1], str(tmp_path / "d2"), *only_pred]) == 0
    out = capsys.readouterr().out
    assert "of the pixels have an uncertainty" in out and "distrust/" not in out
    assert not (tmp_path / "d2" / "distrust").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--distrust-above", "nan"])
    assert exit_info.value.code == 2
    assert "--distrust-above: must be a finite number >= 0, not nan" in capsys.readouterr().err


def test_a_write_that_fails_leaves_no_truncated_picture(tmp_path, student, monkeypatch) -> None:
    image = write_png(tmp_path / "in" / "a.png", rgb(32, 48))
    predictor = load_predictor(student)

    def save_half_then_fail(self, file, *args, **kwargs):
        file.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", save_half_then_fail)
    with pytest.raises(OutputError, match=r"cannot write .*a.png \(No space left"):
        predict_files(predictor, [image], tmp_path / "out", outputs=["pred"], progress=False)
    # No picture; only the record of what the next run is to remove.
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == [UNFINISHED_FILE]


def test_outputs_match_the_predictor_on_the_padded_image(tmp_path, student) -> None:
    image = rgb(40, 70)
    write_png(tmp_path / "a.png", image)
    predictor = load_predictor(student)
    predict_files(predictor, [tmp_path / "a.png"], tmp_path / "out", progress=False)

    x = torch.from_numpy(build_eval_transform()({"image": image})["image"]).permute(2, 0, 1)
    padded = pad_to_multiple(x[None], 32)
    assert padded.shape[-2:] == (64, 96)
    expected = predictor.predict(padded)
    pred = read(tmp_path / "out" / "pred" / "a.png")
    assert np.array_equal(pred, expected.probs[0, :, :40, :70].argmax(0).numpy())
    u16 = read(tmp_path / "out" / "uncertainty16" / "a.png").astype(np.float64) / UINT16_MAX
    np.testing.assert_allclose(u16, expected.uncertainty[0, 0, :40, :70].numpy(), atol=1e-4)


def test_results_do_not_depend_on_the_batch(tmp_path, student) -> None:
    # Padded: 64x96, 32x64, 64x96, 64x96; batches of 3 are [0], [1], [2, 3].
    sizes = [(40, 70), (32, 64), (64, 96), (50, 90)]
    paths = [write_png(tmp_path / f"{i}.png", rgb(*size, seed=i)) for i, size in enumerate(sizes)]
    predictor = load_predictor(student)
    for batch_size in (1, 3):
        predict_files(
            predictor, paths, tmp_path / f"b{batch_size}", batch_size=batch_size, progress=False
        )
    # Up to float rounding of batched convolutions; other padding would change whole maps.
    for path in paths:
        one, three = (
            read(tmp_path / b / "uncertainty16" / path.name).astype(int) for b in ("b1", "b3")
        )
        assert np.abs(one - three).max() <= 7  # 1e-4 of the 16-bit scale
        one, three = (read(tmp_path / b / "pred" / path.name) for b in ("b1", "b3"))
        assert (one == three).mean() > 0.99


def test_mc_dropout_results_do_not_depend_on_the_batch(tmp_path) -> None:
    # Its masks are drawn per call: in one call for a batch, an image's masks would be
    # the slice of its place in the batch.
    source = save_tiny(tmp_path / "mc.safetensors", head=None, mc_dropout=0.3)
    paths = [write_png(tmp_path / "in" / f"{i}.png", rgb(32, 48, seed=i)) for i in range(3)]
    predictor = load_predictor(source, mc_samples=4)
    assert predictor.kind == "mc_dropout"
    for batch_size in (1, 3):
        predict_files(
            predictor, paths, tmp_path / f"b{batch_size}", batch_size=batch_size, progress=False
        )
    for path in paths:
        one, three = (read(tmp_path / b / "uncertainty16" / path.name) for b in ("b1", "b3"))
        assert np.array_equal(one, three)


@pytest.mark.parametrize(
    ("suffix", "stored", "train_ids"),
    [
        # labelTrainIds hold train ids and 255; labelIds go through the official table.
        ("_gtFine_labelTrainIds.png", [0, 13, 255], [0, 13, IGNORE_INDEX]),
        ("_gtFine_labelIds.png", [7, 26, 0], [0, 13, IGNORE_INDEX]),
    ],
)
def test_accuracy_map_is_white_where_wrong_on_valid_pixels(
    tmp_path, student, suffix, stored, train_ids
) -> None:
    write_png(tmp_path / "img" / CITY_IMAGE, rgb(32, 64))
    pattern = np.random.default_rng(3).integers(0, 3, (32, 64))
    write_png(
        tmp_path / "gt" / f"aachen_000000_000019{suffix}", np.array(stored, np.uint8)[pattern]
    )
    out = tmp_path / "out"
    predict_files(
        load_predictor(student),
        [tmp_path / "img" / CITY_IMAGE],
        out,
        labels=tmp_path / "gt",
        progress=False,
    )

    name = CITY_IMAGE.removesuffix(".png")
    accuracy = read(out / "accuracy" / f"{name}.png")
    pred = read(out / "pred" / f"{name}.png").astype(np.int64)
    label = np.array(train_ids)[pattern]
    valid = label != IGNORE_INDEX
    assert np.array_equal(accuracy[valid] == 255, pred[valid] != label[valid])
    assert np.array_equal(accuracy[valid] == 0, pred[valid] == label[valid])
    assert (accuracy[~valid] == ACCURACY_VOID).all()


def test_label_with_the_image_stem_and_size_resize(tmp_path, student) -> None:
    write_png(tmp_path / "img" / "x.png", rgb(40, 70))
    write_png(tmp_path / "gt" / "x.png", np.zeros((40, 70), np.uint8))
    out = tmp_path / "out"
    summary = predict_files(
        load_predictor(student),
        [tmp_path / "img" / "x.png"],
        out,
        labels=tmp_path / "gt",
        size=(32, 64),
        progress=False,
    )
    assert summary.labelled == 1
    for kind in ("pred", "accuracy", "uncertainty16"):
        assert read(out / kind / "x.png").shape == (40, 70)


def test_sixteen_bit_image_is_refused_naming_it(tmp_path, student) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((32, 64), 4000, np.uint16)).save(path)
    with pytest.raises(DataError, match=r"deep\.png.*16-bit"):
        predict_files(load_predictor(student), [path], tmp_path / "out", progress=False)


def test_unreadable_image_is_named(tmp_path, student) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"broken\.png"):
        predict_files(load_predictor(student), [path], tmp_path / "out", progress=False)


def test_a_folder_names_the_images_in_formats_it_is_not_searched_for(tmp_path, capsys) -> None:
    """Frames saved as .bmp / .TIF beside .png ones were left out without a word, while a
    .bmp given by name is read."""
    frames = tmp_path / "frames"
    png = write_png(frames / "000001.png", rgb(4, 4))
    for name in ("000002.bmp", "sub/000003.BMP", "000004.TIF", "._000005.bmp"):
        (frames / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb(4, 4)).save(
            frames / name, format="BMP" if "bmp" in name.lower() else "TIFF"
        )
    assert find_images([frames]) == [InputImage(png, "000001")]
    err = capsys.readouterr().err
    # Hidden files (macOS `._` copies) are not counted.
    assert f"{frames} also holds images that folders are not searched for (2 .bmp, 1 .tif;" in err
    assert find_images([frames / "000002.bmp"]) == [InputImage(frames / "000002.bmp", "000002")]
    assert "not searched for" not in capsys.readouterr().err


def test_a_folder_of_frames_linked_into_an_input_folder_is_searched(tmp_path) -> None:
    """Path.rglob does not enter a linked folder: a drive's frames linked from storage gave
    'no images found'."""
    storage = write_png(tmp_path / "storage" / "000001.png", rgb(4, 4)).parent
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "drive").symlink_to(storage, target_is_directory=True)
    found = find_images([tmp_path / "frames"])
    assert found == [InputImage(tmp_path / "frames" / "drive" / "000001.png", "drive/000001")]


def test_input_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty: no images found .*\*\.png, \*\.jpg"):
        find_images([tmp_path / "empty"])
    with pytest.raises(DataError, match=r"drive\.mp4: segdistill has no video decoder.*ffmpeg"):
        find_images([tmp_path / "drive.mp4"])
    with pytest.raises(DataError, match="no such file"):
        find_images([tmp_path / "missing.png"])
    with pytest.raises(DataError, match=r"DRIVE\.MP4: segdistill has no video decoder"):
        find_images([tmp_path / "DRIVE.MP4"])
    # A folder of frames named like a video is a folder.
    frame = write_png(tmp_path / "drive.mp4" / "000001.png", rgb(4, 4))
    assert find_images([tmp_path / "drive.mp4"]) == [InputImage(frame, "000001")]
    frame.unlink()
    (tmp_path / "drive.mp4").rmdir()
    write_png(tmp_path / "a" / "x.png", rgb(4, 4))
    write_png(tmp_path / "b" / "x.png", rgb(4, 4))
    with pytest.raises(
        DataError, match=r"a/x\.png and .*b/x\.png would both write outputs named 'x'"
    ):
        find_images([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(DataError, match=r"a/x\.png and .*b/x\.png would both write"):
        find_images([tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"])
    # The folder that holds both tells them apart by their sub-folders.
    assert [image.name for image in find_images([tmp_path])] == ["a/x", "b/x"]
    # Two files of one folder and one name (x.png, x.jpg): passing the folder cannot help.
    write_png(tmp_path / "a" / "x.jpg", rgb(4, 4))
    with pytest.raises(DataError, match=r"named 'x'; rename one of them, or convert it"):
        find_images([tmp_path / "a"])
    (tmp_path / "a" / "x.jpg").unlink()
    with pytest.raises(
        DataError, match=r"x\.png is among the inputs twice \(named 'a/x' and 'x'\)"
    ):
        find_images([tmp_path, tmp_path / "a"])
    with pytest.raises(DataError, match="among the inputs twice"):
        find_images([tmp_path / "a" / "x.png", tmp_path / "a" / "x.png"])


def test_label_errors_name_the_files(tmp_path, student) -> None:
    predictor = load_predictor(student)
    a = write_png(tmp_path / "img" / "a.png", rgb(32, 64))
    b = write_png(tmp_path / "img" / "b.png", rgb(32, 64, seed=1))
    assert find_images([a]) == [InputImage(a, "a")]  # a single image file
    label = write_png(tmp_path / "a_label.png", np.zeros((32, 64), np.uint8))

    def run(images: list[Path], labels: Path, **options: float) -> PredictSummary:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        return predict_files(predictor, images, out, labels=labels, progress=False, **options)

    assert run([a], label).labelled == 1  # one label file for one image
    with pytest.raises(DataError, match=r"a_label\.png is one file but there are 2 images"):
        run([a, b], label)
    with pytest.raises(DataError, match=r"labels .*nowhere: no such file or folder"):
        run([a], tmp_path / "nowhere")
    write_png(tmp_path / "gt" / "x" / "a.png", np.zeros((32, 64), np.uint8))
    write_png(tmp_path / "gt" / "y" / "a.png", np.zeros((32, 64), np.uint8))
    with pytest.raises(DataError, match=r"a\.png: several label files match under .*gt"):
        run([a], tmp_path / "gt")
    write_png(tmp_path / "small" / "a.png", np.zeros((16, 64), np.uint8))
    with pytest.raises(DataError, match=r"small/a\.png is 64x16 \(WxH\) but its image is 64x32"):
        run([a], tmp_path / "small")
    with pytest.raises(ConfigError, match="--batch-size must be >= 1, got 0"):
        run([a], label, batch_size=0)
    with pytest.raises(ConfigError, match="--vmax must be a finite number > 0, got 0"):
        run([a], label, vmax=0)


def test_a_cityscapes_named_label_is_read_by_the_classes_of_the_network(tmp_path, student) -> None:
    """A Cityscapes-named labelIds file was always read by the official 19-class table: a
    6-class model of a folder data set made from Cityscapes labelIds had its accuracy map
    scored against train ids 0..18, every pixel of ids 6..18 counted wrong, without a word."""
    label_ids = np.array([[7, 26, 0], [8, 26, 7]], np.uint8)  # road, car, unlabeled, sidewalk
    path = write_png(tmp_path / "gt" / "aachen_000000_000019_gtFine_labelIds.png", label_ids)
    official = read_label(path, (2, 3), 19)
    assert official.tolist() == [[0, 13, IGNORE_INDEX], [1, 13, 0]]
    # Matched case-insensitively, so read as Cityscapes' in upper case too.
    upper = write_png(tmp_path / "upper" / "aachen_000000_000019_gtFine_labelIds.PNG", label_ids)
    assert read_label(upper, (2, 3), 19).tolist() == official.tolist()
    with pytest.raises(DataError, match=r"holds class ids \[13\] but the network predicts 6"):
        read_label(path, (2, 3), 6)  # car is train id 13: scored, it would count as wrong
    mine = LabelMapping({7: 0, 8: 1, 26: 2, 0: IGNORE_INDEX}, IGNORE_INDEX)  # mask_values
    assert read_label(path, (2, 3), 6, stored=mine).tolist() == [[0, 2, 255], [1, 2, 0]]
    plain = write_png(tmp_path / "gt" / "plain.png", np.array([[0, 5, 9]], np.uint8))
    # A train id the network does not predict (6 for 6 classes) is refused, not scored.
    train_ids = write_png(
        tmp_path / "gt" / "aachen_000000_000019_gtFine_labelTrainIds.png",
        np.array([[0, 5, 6]], np.uint8),
    )
    with pytest.raises(DataError, match=r"holds class ids \[6\] but the network predicts 6"):
        read_label(train_ids, (1, 3), 6)
    train_ids.unlink()
    with pytest.raises(DataError, match=r"plain\.png: mask holds unknown values 9"):
        read_label(plain, (1, 3), 6)  # class ids: the identity of 6 classes
    # Classes without mask_values (a Cityscapes-layout run's) keep the official table.
    write_png(tmp_path / "img" / CITY_IMAGE, rgb(2, 3))
    names = tuple(f"c{k}" for k in range(CLASSES))
    cityscapes = ClassesSpec(names, np.zeros((CLASSES, 3), np.uint8))
    out = tmp_path / "out"
    images = [tmp_path / "img" / CITY_IMAGE]
    predict_files(
        load_predictor(student), images, out, labels=tmp_path / "gt", classes=cityscapes,
        outputs=("pred", "accuracy"), progress=False,
    )  # fmt: skip
    accuracy = read(out / "accuracy" / CITY_IMAGE)
    pred = read(out / "pred" / CITY_IMAGE)
    expected = np.where(pred == official, figures.ACCURACY_RIGHT, figures.ACCURACY_WRONG)
    expected[official == IGNORE_INDEX] = figures.ACCURACY_VOID
    assert np.array_equal(accuracy, expected)


def test_frames_in_natural_order_and_output_folder_skipped(tmp_path) -> None:
    frames = tmp_path / "frames"
    for index in (10, 2, 1):
        write_png(frames / f"frame_{index}.png", rgb(4, 4))
    write_png(frames / "out" / "pred" / "frame_1.png", rgb(4, 4))
    found = find_images([frames], exclude=frames / "out")
    assert [image.name for image in found] == ["frame_1", "frame_2", "frame_10"]


def test_an_earlier_runs_output_folder_inside_the_input_folder_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`predict M in --out in/out`, then `predict M in --out elsewhere`: the second run
    took the first one's pictures for inputs (and failed on its 16-bit maps)."""
    frames = tmp_path / "frames"
    write_png(frames / "frame_1.png", rgb(4, 4))
    for earlier, mark in (("out", "predict.json"), ("stopped", "predict.unfinished.jsonl")):
        write_png(frames / earlier / "pred" / "frame_1.png", rgb(4, 4))
        (frames / earlier / mark).write_text("{}")
    assert [image.name for image in find_images([frames])] == ["frame_1"]
    notice = capsys.readouterr().err
    assert f"skipped the 2 images of earlier predict outputs in {frames / 'out'}, " in notice
    assert find_images([frames], exclude=frames / "out")[0].name == "frame_1"
    assert "in " + str(frames / "stopped") in capsys.readouterr().err  # not its own --out
    (frames / "frame_1.png").unlink()
    with pytest.raises(DataError, match="or in earlier predict outputs"):
        find_images([frames])


def test_an_input_folder_is_walked_once(tmp_path: Path, monkeypatch) -> None:
    """Images, formats not searched and earlier outputs come from one walk: a folder of
    frames on a network disk was listed three times."""
    frames = tmp_path / "frames"
    write_png(frames / "frame_1.png", rgb(4, 4))
    Image.fromarray(rgb(4, 4)).save(frames / "frame_2.bmp")
    write_png(frames / "out" / "pred" / "frame_1.png", rgb(4, 4))
    (frames / "out" / "predict.json").write_text("{}")
    walked: list[Path] = []

    def counted(folder: Path) -> list[Path]:
        walked.append(folder)
        return files_below(folder)

    monkeypatch.setattr(predict_module, "files_below", counted)
    assert [image.name for image in find_images([frames])] == ["frame_1"]
    assert walked == [frames]


def test_outputs_and_labels_mirror_the_input_sub_folders(tmp_path, student, capsys) -> None:
    # Two drives whose frames share file names: each keeps its own outputs and label.
    frames, gt, out = tmp_path / "frames", tmp_path / "gt", tmp_path / "out"
    for drive in (1, 2):
        for frame in (1, 2):
            write_png(frames / f"drive_{drive}" / f"{frame:06d}.png", rgb(32, 64, seed=frame))
        write_png(gt / f"drive_{drive}" / "000001.png", np.full((32, 64), drive, np.uint8))
    predictor = load_predictor(student)
    summary = predict_files(
        predictor,
        find_images([frames]),
        out,
        labels=gt,
        outputs=["pred", "accuracy"],
        progress=False,
    )
    assert (summary.images, summary.labelled) == (4, 2)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == [
        f"{kind}/drive_{drive}/{frame:06d}.png"
        for kind, frames_of_kind in (("accuracy", (1,)), ("pred", (1, 2)))
        for drive in (1, 2)
        for frame in frames_of_kind
    ]
    index = json.loads((out / "predict.json").read_text())
    labels = {entry["name"]: entry["label"] for entry in index["images"]}
    assert labels["drive_2/000001"] == str((gt / "drive_2" / "000001.png").resolve())
    assert labels["drive_1/000002"] is None
    # Each accuracy map is read against its own drive's label (class 1 or 2 everywhere).
    for drive in (1, 2):
        pred = read(out / "pred" / f"drive_{drive}" / "000001.png")
        accuracy = read(out / "accuracy" / f"drive_{drive}" / "000001.png")
        assert np.array_equal(accuracy == 0, pred == drive)
    # A re-run of one drive removes the other's files and the folders they leave empty.
    predict_files(predictor, find_images([frames]), out, outputs=["pred"], progress=False)
    predict_files(
        predictor, find_images([frames / "drive_1"]), out, outputs=["pred"], progress=False
    )
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "pred",
        "pred/000001.png",
        "pred/000002.png",
        "predict.json",
    ]


def test_cli_predict_with_an_ensemble(tmp_path, capsys) -> None:
    members = [save_tiny(tmp_path / "ens" / f"m{i}.safetensors", head=None) for i in range(2)]
    manifest = {"members": [{"checkpoint": p.name} for p in members]}
    (tmp_path / "ens" / "manifest.json").write_text(json.dumps(manifest))
    write_png(tmp_path / "frames" / "000001.png", rgb(32, 64))
    code = main(
        ["predict", str(tmp_path / "ens"), str(tmp_path / "frames"), "--out", str(tmp_path / "o")]
    )
    assert code == 0
    assert "ensemble" in capsys.readouterr().out
    assert read(tmp_path / "o" / "uncertainty16" / "000001.png").shape == (32, 64)
    assert main(["predict", str(tmp_path / "ens"), str(tmp_path / "nothing"), "--out", "o"]) == 2


def test_cli_channels_last_writes_the_same_maps(tmp_path, student, capsys) -> None:
    write_png(tmp_path / "in" / "a.png", rgb(40, 70, seed=3))
    for name, extra in (("plain", []), ("nhwc", ["--channels-last"])):
        argv = [str(student), str(tmp_path / "in"), "--out", str(tmp_path / name), *extra]
        assert main(["predict", *argv, "--device", "cpu"]) == 0
    assert np.array_equal(read(tmp_path / "plain/pred/a.png"), read(tmp_path / "nhwc/pred/a.png"))
    plain = read(tmp_path / "plain/uncertainty16/a.png").astype(np.int64)
    nhwc = read(tmp_path / "nhwc/uncertainty16/a.png").astype(np.int64)
    assert np.abs(plain - nhwc).max() <= 2  # 16-bit steps of rounding


# ------------------------------------------------------------- image-level OOD flag


@pytest.fixture(scope="module")
def ood_reference(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("reference")
    return [write_png(folder / f"r{i}.png", rgb(32, 48, seed=10 + i)) for i in range(10)]


def test_ood_fit_scores_each_reference_as_predict_does(tmp_path, student, ood_reference) -> None:
    predictor = load_predictor(student)
    detector = fit_ood_detector(
        predictor, ood_reference, aggregator="median", fpr=0.2, batch_size=3, progress=False
    )
    # Independently: the predictor's map of each image alone, as predict writes it.
    summary = predict_files(predictor, ood_reference, tmp_path / "out", progress=False)
    index = json.loads(summary.summary.read_text())
    for record, score in zip(index["images"], detector.reference_scores):
        u16 = read(tmp_path / "out" / record["files"]["uncertainty16"]) / 65535.0
        assert score == pytest.approx(np.median(u16), abs=1e-4)
        assert record["image_scores"]["median"] == pytest.approx(score, abs=1e-6)
        assert set(record["image_scores"]) == set(AGGREGATORS)
    assert detector.threshold == threshold_at_fpr(detector.reference_scores, 0.2)
    assert (detector.reference_images, detector.aggregator, detector.fpr) == (10, "median", 0.2)
    assert (detector.model, detector.kind, detector.passes) == ("student", "student", 1)


DEPLOYMENT = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()


def _documented_predict_layout() -> dict[str, set[str]]:
    """The keys the `predict.json` row of docs/deployment.md's output table names in
    backticks: "top" those outside parentheses and in groups "(`a`, `b`)", and for a group
    "(`name`: ...)" `name` on top and the keys in the rest under `name`."""
    cell = DEPLOYMENT[DEPLOYMENT.index("| `predict.json` |") :].split("|")[2]
    layout, depth, group, outside = {"top": set()}, 0, "", ""
    for char in cell:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth or char == ")":
            group += char
        else:
            outside += char
        if depth == 0 and group:
            if named := re.match(r"\(`(\w+)`:", group):
                layout[named.group(1)] = set(re.findall(r"`(\w+)`", group[named.end() :]))
                group = named.group(0)
            layout["top"] |= set(re.findall(r"`(\w+)`", group))
            group = ""
    layout["top"] |= set(re.findall(r"`(\w+)`", outside))
    return layout


def _documented_detector_keys() -> set[str]:
    """The keys of ood_detector.json that docs/deployment.md lists."""
    start = DEPLOYMENT.index("The file's keys: ")
    return set(re.findall(r"`(\w+)`", DEPLOYMENT[start : DEPLOYMENT.index(";", start)]))


def test_ood_flags_are_the_scores_above_the_threshold(tmp_path, student, ood_reference) -> None:
    predictor = load_predictor(student)
    detector = fit_ood_detector(predictor, ood_reference, fpr=0.2, progress=False)
    # The references themselves: at most 2 of 10 flagged, exactly those above it.
    summary = predict_files(
        predictor, ood_reference, tmp_path / "out", ood=detector, progress=False
    )
    index = json.loads(summary.summary.read_text())
    scores = np.array([r["ood_score"] for r in index["images"]])
    flags = np.array([r["ood"] for r in index["images"]])
    np.testing.assert_allclose(scores, detector.reference_scores, atol=1e-6)
    assert np.array_equal(flags, scores > detector.threshold)
    assert summary.flagged == flags.sum() == index["ood"]["flagged"] <= 2
    assert index["ood"]["threshold"] == detector.threshold
    assert "reference_scores" not in index["ood"]
    # docs/deployment.md names every key of predict.json and ood_detector.json
    layout = _documented_predict_layout()
    assert layout["top"] == set(index) and layout["run"] == set(index["run"])
    always = {"name", "image", "label", "height", "width", "files", "image_scores"}
    for record in index["images"]:  # no --distrust-above, all of the references' size
        assert set(record) == always | {"ood", "ood_score"} <= layout["images"]
    assert layout["images"] - set(record) == {"distrust_share", "ood_not_calibrated"}
    detector_file = tmp_path / "det.json"
    detector.save(detector_file)
    documented = _documented_detector_keys()
    assert documented == set(json.loads(detector_file.read_text()))
    assert set(index["ood"]) == documented - {"reference_scores"} | {"flagged"}
    assert read(tmp_path / "out" / "ood_scores.png").ndim == 3
    unflagged = predict_files(predictor, ood_reference[:1], tmp_path / "plain", progress=False)
    assert json.loads(unflagged.summary.read_text())["ood"] is None
    assert not (tmp_path / "plain" / "ood_scores.png").exists()


def test_ood_figure_shows_the_threshold_and_the_flagged_count() -> None:
    figure = figures.ood_flags([0.1, 0.2, 0.3, 0.4], [0.05, 0.35, 0.5], 0.3, "mean", "t")
    ax = figure.axes[0]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [
        "reference (4 images, in-distribution)",
        "predicted (2 of 3 flagged)",
        "threshold 0.3",
    ]
    assert list(ax.lines[0].get_xdata()) == [0.3, 0.3]
    # Each histogram is a share of its own images.
    heights = [patch.get_path().vertices[:, 1].max() for patch in ax.patches]
    assert heights == pytest.approx([0.25, 1 / 3])


def test_ood_detector_refuses_another_model_or_size(tmp_path, student, ood_reference) -> None:
    detector = fit_ood_detector(load_predictor(student), ood_reference, progress=False)
    # The same weights under another name and path are the same model.
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(student.read_bytes())
    predict_files(load_predictor(renamed), ood_reference, tmp_path / "ok", ood=detector)
    torch.manual_seed(1)
    other = load_predictor(save_tiny(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="weights '[0-9a-f]{12}\\.\\.\\.' \\(given '[0-9a-f]{12}"):
        predict_files(other, ood_reference, tmp_path / "out", ood=detector, progress=False)
    baseline = load_predictor(save_tiny(tmp_path / "baseline.safetensors", head=None))
    with pytest.raises(ConfigError, match="kind 'student' \\(given 'baseline'\\)"):
        predict_files(baseline, ood_reference, tmp_path / "out", ood=detector, progress=False)
    with pytest.raises(ConfigError, match="resize_to None \\(given \\[32, 32\\]\\)"):
        predict_files(
            load_predictor(student),
            ood_reference,
            tmp_path / "out",
            size=(32, 32),
            ood=detector,
            progress=False,
        )


def test_a_per_class_student_scores_ood_images_from_holders_eq_8_map(
    tmp_path, student, ood_reference
) -> None:
    """Holder & Shafique 5.3 aggregate eq. 8's map, the mean over the classes of the head's
    per-class std, not the predicted class's value that the uncertainty pictures show."""
    weights = save_tiny(tmp_path / "holder.safetensors", head="per_class")
    predictor = load_predictor(weights)
    detector = fit_ood_detector(predictor, ood_reference, aggregator="median", progress=False)
    assert detector.ood_source == PER_CLASS_OOD_SOURCE
    summary = predict_files(predictor, ood_reference, tmp_path / "out", progress=False)
    index = json.loads(summary.summary.read_text())
    assert index["ood_source"] == PER_CLASS_OOD_SOURCE
    network = load_segmenter(weights)[0].eval()
    normalise = build_eval_transform()
    for path, record, score in zip(ood_reference, index["images"], detector.reference_scores):
        image = torch.from_numpy(normalise({"image": read(path)})["image"]).permute(2, 0, 1)
        padded = torch.nn.functional.pad(image[None], (0, 16))  # 48 -> 64, as predict pads
        with torch.no_grad():
            per_class = network(padded).uncertainty[0, :, :, :48].numpy()  # [C, H, W]
        eq8 = per_class.mean(axis=0)
        expected = {"min": eq8.min(), "mean": eq8.mean(), "median": np.median(eq8)}
        expected["max"] = eq8.max()
        expected["median_plus_min_over_max"] = (np.median(eq8) + eq8.min()) / eq8.max()
        for aggregator, value in expected.items():
            assert record["image_scores"][aggregator] == pytest.approx(value, rel=1e-5)
        assert score == pytest.approx(np.median(eq8), rel=1e-5)
        shown = read(tmp_path / "out" / record["files"]["uncertainty16"]) / 65535.0
        assert abs(np.median(shown) - np.median(eq8)) > 1e-3  # the other map
    # A detector file from before ood_source scored the predicted class's value.
    path = tmp_path / DETECTOR_FILE
    detector.save(path)
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "ood_source"}
    path.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="ood_source 'student head \\(per-class, predicted"):
        ImageOODDetector.load(path).check_model(predictor, None, path)
    # Such a file of any other model scored the map it still scores.
    scalar = load_predictor(student)
    fit_ood_detector(scalar, ood_reference[:2], progress=False).save(path)
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "ood_source"}
    path.write_text(json.dumps(old))
    ImageOODDetector.load(path).check_model(scalar, None, path)


def test_predict_arrays_computes_an_ood_map_only_where_it_is_not_the_uncertainty(
    tmp_path, student
) -> None:
    """A scalar head's OOD map IS its uncertainty: one array, not a second copy cut from a
    second batch; a per-class head's is eq. 8's map, the mean of its head over the classes,
    an array of its own."""
    images = [rgb(40, 48, seed=1), rgb(33, 60, seed=2)]  # both enter the network at 64x64
    scalar = load_predictor(student)
    multiple = input_multiple(scalar.segmenters())
    for size in (None, (32, 32)):
        for image, result in zip(images, predict_arrays(scalar, images, multiple, size)):
            assert result.uncertainty.shape == image.shape[:2]
            assert result.ood_map is result.uncertainty
    weights = save_tiny(tmp_path / "holder.safetensors", head="per_class")
    holder = load_predictor(weights)
    network = load_segmenter(weights)[0].eval()
    normalise = build_eval_transform()
    for image, result in zip(images, predict_arrays(holder, images, multiple)):
        x = torch.from_numpy(normalise({"image": image})["image"]).permute(2, 0, 1)[None]
        height, width = image.shape[:2]
        padded = torch.nn.functional.pad(x, (0, 64 - width, 0, 64 - height))
        with torch.no_grad():
            per_class = network(padded).uncertainty[0, :, :height, :width].numpy()
        assert not np.shares_memory(result.ood_map, result.uncertainty)
        np.testing.assert_allclose(result.ood_map, per_class.mean(axis=0), rtol=1e-5)
        assert np.abs(result.ood_map - result.uncertainty).max() > 1e-3
    for image, result in zip(images, predict_arrays(holder, images, multiple, (32, 32))):
        assert result.ood_map.shape == result.uncertainty.shape == image.shape[:2]
        assert not np.shares_memory(result.ood_map, result.uncertainty)


def test_cli_fits_saves_and_reuses_an_ood_detector(
    tmp_path, student, ood_reference, capsys
) -> None:
    inputs = tmp_path / "inputs"
    for i in range(3):
        write_png(inputs / f"x{i}.png", rgb(32, 48, seed=i))
    write_png(inputs / "grey.png", np.full((32, 48, 3), 128, np.uint8))
    folder = str(ood_reference[0].parent)
    fit = ["predict", str(student), str(inputs), "--out", str(tmp_path / "a")]
    assert main([*fit, "--ood-reference", folder, "--ood-fpr", "0.1"]) == 0
    out = capsys.readouterr().out
    saved = ImageOODDetector.load(tmp_path / "a" / DETECTOR_FILE)
    assert saved.fpr == 0.1 and saved.reference_images == 10
    assert f"{saved.threshold:.4g}" in out and "flagged as unlike the reference" in out
    first = json.loads((tmp_path / "a" / "predict.json").read_text())

    reuse = ["predict", str(student), str(inputs), "--out", str(tmp_path / "b")]
    assert main([*reuse, "--ood-detector", str(tmp_path / "a" / DETECTOR_FILE)]) == 0
    second = json.loads((tmp_path / "b" / "predict.json").read_text())
    assert [r["ood"] for r in second["images"]] == [r["ood"] for r in first["images"]]
    assert second["ood"] == first["ood"]
    assert not (tmp_path / "b" / DETECTOR_FILE).exists()
    assert saved.reference_sizes == [[32, 48]]
    assert not any("ood_not_calibrated" in record for record in second["images"])
    # An image of a size the references lacked: flagged all the same, but said so.
    write_png(tmp_path / "big" / "y.png", rgb(64, 96))
    big = ["predict", str(student), str(tmp_path / "big"), "--out", str(tmp_path / "c")]
    capsys.readouterr()
    assert main([*big, "--ood-detector", str(tmp_path / "a" / DETECTOR_FILE)]) == 0
    assert "64x96 images were not among the OOD references (32x48 HxW)" in capsys.readouterr().err
    record = json.loads((tmp_path / "c" / "predict.json").read_text())["images"][0]
    assert record["ood_not_calibrated"].startswith("64x96 images")

    capsys.readouterr()
    detector = str(tmp_path / "a" / DETECTOR_FILE)
    assert main([*reuse, "--ood-detector", detector, "--ood-fpr", "0.2"]) == 2
    assert "--ood-fpr and --ood-aggregator" in capsys.readouterr().err
    assert main([*reuse, "--ood-detector", detector, "--size", "64x96"]) == 2
    assert detector in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # refused when parsed
        main([*fit, "--ood-reference", folder, "--ood-fpr", "1"])
    assert exit_info.value.code == 2
    assert "--ood-fpr: must be a share below 1" in capsys.readouterr().err
    assert main([*fit, "--ood-reference", str(tmp_path / "none")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    # An output folder inside the reference folder is not read as references on a rerun.
    refs = shutil.copytree(folder, tmp_path / "refs")
    inside = ["predict", str(student), str(inputs), "--out", str(refs / "out")]
    for _ in range(2):
        assert main([*inside, "--ood-reference", str(refs)]) == 0
        assert ImageOODDetector.load(refs / "out" / DETECTOR_FILE).reference_images == 10
    capsys.readouterr()
    assert main([*reuse, "--ood-fpr", "0.2"]) == 2
    assert "give --ood-reference" in capsys.readouterr().err
    assert main([*reuse, "--ood-detector", str(tmp_path / "x")]) == 2
    assert "no such OOD detector file" in capsys.readouterr().err


def test_a_classes_file_reads_the_labels_and_colours_the_classes(tmp_path, student, capsys) -> None:
    # A folder data set storing class k as 100 + k and void as 0, with its own colours.
    colours = [[k, 2 * k, 255 - k] for k in range(CLASSES)]
    entries = "".join(f"  - {{name: c{k}, color: {colours[k]}}}\n" for k in range(CLASSES))
    values = ", ".join([f"{100 + k}: {k}" for k in range(CLASSES)] + ["0: 255"])
    classes = tmp_path / "classes.yaml"
    classes.write_text(f"classes:\n{entries}mask_values: {{{values}}}\n")
    write_png(tmp_path / "img" / "x.png", rgb(32, 64))
    ids = np.random.default_rng(0).integers(0, CLASSES + 1, (32, 64))  # CLASSES: void
    write_png(tmp_path / "gt" / "x.png", np.where(ids == CLASSES, 0, 100 + ids).astype(np.uint8))
    out = tmp_path / "out"
    argv = ["predict", str(student), str(tmp_path / "img"), "--out", str(out)]
    assert main([*argv, "--labels", str(tmp_path / "gt"), "--classes", str(classes)]) == 0
    pred = read(out / "pred" / "x.png")
    assert np.array_equal(read(out / "seg" / "x.png"), np.array(colours, np.uint8)[pred])
    label = np.where(ids == CLASSES, IGNORE_INDEX, ids)  # the mapping, by hand
    expected = np.where(pred == label, figures.ACCURACY_RIGHT, figures.ACCURACY_WRONG)
    expected[label == IGNORE_INDEX] = figures.ACCURACY_VOID
    assert np.array_equal(read(out / "accuracy" / "x.png"), expected)
    # Without it, the stored values 100.. are not class ids: refused, naming the file.
    capsys.readouterr()
    assert main([*argv, "--labels", str(tmp_path / "gt")]) == 2
    assert "x.png: mask holds unknown values" in capsys.readouterr().err
    three = tmp_path / "three.yaml"
    three.write_text("classes: [{name: a, color: [0, 0, 0]}, {name: b, color: [1, 1, 1]}]\n")
    assert main([*argv, "--classes", str(three)]) == 2
    assert "lists 2 classes, but" in capsys.readouterr().err
    # Weights that carry these classes (as a run on that data set writes them) need no
    # --classes: the same pictures, and predict.json names the classes.
    model, config = load_segmenter(student)
    carried = tmp_path / "carried.safetensors"
    save_weights(carried, model, config, load_classes(classes))
    again = tmp_path / "again"
    argv = ["predict", str(carried), str(tmp_path / "img"), "--out", str(again)]
    assert main([*argv, "--labels", str(tmp_path / "gt")]) == 0
    for kind in ("pred", "seg", "accuracy"):
        assert np.array_equal(read(again / kind / "x.png"), read(out / kind / "x.png")), kind
    summary = json.loads((again / "predict.json").read_text())
    assert summary["class_names"] == [f"c{k}" for k in range(CLASSES)]
    # How the files were made, to audit them later.
    run = summary["run"]
    assert run["weights"] == load_predictor(carried).fingerprint() and run["passes"] == 1
    assert run["batch_size"] == 1 and run["device"] == "cpu" and run["segdistill"]
    assert summary["images"][0]["image"] == str((tmp_path / "img" / "x.png").resolve())
    # An explicit --classes still wins over the stored ones.
    assert main([*argv, "--classes", str(three)]) == 2


def test_colour_labels_are_read_by_the_classes_files_colours(tmp_path, student, capsys) -> None:
    """A classes file with mask_colors, given or carried in the weights, reads --labels
    colour masks, whatever their names (a Cityscapes-named one too)."""
    colours = [[k, 2 * k, 255 - k] for k in range(CLASSES)]
    entries = "".join(f"  - {{name: c{k}, color: {colours[k]}}}\n" for k in range(CLASSES))
    classes = tmp_path / "classes.yaml"
    classes.write_text(f"classes:\n{entries}mask_colors: true\nvoid_colors: [[9, 9, 9]]\n")
    write_png(tmp_path / "img" / "x_leftImg8bit.png", rgb(32, 64))
    ids = np.random.default_rng(0).integers(0, CLASSES + 1, (32, 64))  # CLASSES: void
    painted = np.array([*colours, [9, 9, 9]], np.uint8)[ids]
    write_png(tmp_path / "gt" / "x_gtFine_labelIds.png", painted)
    label = np.where(ids == CLASSES, IGNORE_INDEX, ids)  # the colours, by hand
    for weights, extra in (
        (student, ["--classes", str(classes)]),
        (tmp_path / "carried.safetensors", []),
    ):
        if not extra:
            model, config = load_segmenter(student)
            save_weights(weights, model, config, load_classes(classes))
        out = tmp_path / f"out_{weights.stem}"
        argv = ["predict", str(weights), str(tmp_path / "img"), "--out", str(out)]
        assert main([*argv, "--labels", str(tmp_path / "gt"), *extra]) == 0
        pred = read(out / "pred" / "x_leftImg8bit.png")
        expected = np.where(pred == label, figures.ACCURACY_RIGHT, figures.ACCURACY_WRONG)
        expected[label == IGNORE_INDEX] = figures.ACCURACY_VOID
        assert np.array_equal(read(out / "accuracy" / "x_leftImg8bit.png"), expected)
    # Without the classes file the colour mask is refused, naming the setting.
    capsys.readouterr()
    argv = ["predict", str(student), str(tmp_path / "img"), "--out", str(tmp_path / "plain")]
    assert main([*argv, "--labels", str(tmp_path / "gt")]) == 2
    assert "mode RGB; " in capsys.readouterr().err


def test_a_label_with_an_upper_case_suffix_is_found(tmp_path, student) -> None:
    write_png(tmp_path / "img" / "x.png", rgb(32, 64))
    write_png(tmp_path / "gt" / "x.PNG", np.zeros((32, 64), np.uint8))
    summary = predict_files(
        load_predictor(student), [tmp_path / "img" / "x.png"], tmp_path / "out",
        labels=tmp_path / "gt", progress=False,
    )  # fmt: skip
    assert summary.labelled == 1


def test_a_sideways_camera_photo_is_predicted_upright_with_a_notice(tmp_path, student) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 90 degrees off: viewers turn it clockwise
    stored = np.ascontiguousarray(np.rot90(rgb(32, 64), k=1))  # [64, 32]
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif)
    summary = predict_files(
        load_predictor(student), [tmp_path / "photo.jpg"], tmp_path / "out", progress=False
    )
    assert read(tmp_path / "out" / "pred" / "photo.png").shape == (32, 64)
    assert any("turned upright by its EXIF orientation 6" in n for n in summary.notices)


def test_the_output_folder_never_overwrites_an_input_or_keeps_a_previous_runs_files(
    tmp_path, student, capsys
) -> None:
    out = tmp_path / "out"
    for name in ("a", "b"):
        write_png(tmp_path / "in" / f"{name}.png", rgb(32, 64))
    base = ["predict", str(student), "--out", str(out)]
    assert main([*base, str(tmp_path / "in")]) == 0
    # A named input inside the output folder (here where its own outputs go) is refused.
    inside = write_png(out / "seg" / "cam.png", rgb(32, 64))
    before = inside.read_bytes()
    assert main([*base, str(inside)]) == 2
    assert "lies in the output folder" in capsys.readouterr().err
    assert inside.read_bytes() == before
    # A folder whose images all lie in the output folder says so.
    assert main(["predict", str(student), str(out), "--out", str(out)]) == 2
    assert "images lie in the output folder" in capsys.readouterr().err
    # A re-run with one image and one kind leaves none of the first run's pictures.
    assert main([*base, str(tmp_path / "in" / "a.png"), "--outputs", "pred"]) == 0
    assert "removed 11 files of earlier runs" in capsys.readouterr().err  # 12 - pred/a
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["pred/a.png", "seg/cam.png"]  # the user's own file stays
    # --out naming a file, and a missing --labels, are refused before any work.
    with pytest.raises(SystemExit) as exit_info:  # refused by the argument parser
        main([*base[:-1], str(inside), str(tmp_path / "in")])
    assert exit_info.value.code == 2 and "is a file; give a folder" in capsys.readouterr().err
    missing = [*base, str(tmp_path / "in"), "--labels", str(tmp_path / "none")]
    assert main([*missing, "--ood-reference", str(tmp_path / "in")]) == 2
    assert "--labels" in capsys.readouterr().err and not (out / DETECTOR_FILE).exists()


def test_an_ood_fit_on_too_few_references_says_so(tmp_path, student, capsys) -> None:
    write_png(tmp_path / "ref" / "r.png", rgb(32, 64))
    write_png(tmp_path / "in" / "x.png", rgb(32, 64, seed=1))
    argv = ["predict", str(student), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--ood-reference", str(tmp_path / "ref"), "--outputs", "none"]) == 0
    assert "1 reference images cannot resolve a 5 % false-alarm rate" in capsys.readouterr().err


def test_the_masks_of_a_folder_data_sets_split_are_no_ood_references(
    tmp_path, student, capsys
) -> None:
    # The docs name "the validation split" as the reference; for a folder data set that
    # is root/val, which holds masks/ beside images/. Its grey masks must not be scored
    # as in-distribution images (they would set the threshold): either they are left
    # out, or the command refuses and names the images folder to give instead.
    root = tmp_path / "root"
    entries = "".join(f"  - {{name: c{k}, color: [{k}, 0, 0]}}\n" for k in range(CLASSES))
    root.mkdir()
    (root / "classes.yaml").write_text(f"classes:\n{entries}")
    for i in range(3):
        write_png(root / "val" / "images" / f"v{i}.png", rgb(32, 64, seed=20 + i))
        write_png(root / "val" / "masks" / f"v{i}.png", np.full((32, 64), i, np.uint8))
    write_png(tmp_path / "in" / "x.png", rgb(32, 64, seed=1))
    argv = ["predict", str(student), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    code = main([*argv, "--ood-reference", str(root / "val"), "--outputs", "none"])
    if code == 0:
        assert ImageOODDetector.load(tmp_path / "out" / DETECTOR_FILE).reference_images == 3
    else:
        assert str(root / "val" / "images") in capsys.readouterr().err


def test_an_unreadable_frame_stops_the_run_or_is_skipped(tmp_path, student, capsys) -> None:
    for i in (1, 2, 4):
        write_png(tmp_path / "frames" / f"f{i}.png", rgb(32, 64, seed=i))
    (tmp_path / "frames" / "f3.png").write_text("not an image")
    # Pixels intact, EXIF block damaged: which way is up is unknown.
    Image.fromarray(rgb(32, 64, seed=5)).save(tmp_path / "frames" / "f5.png", exif=b"Exif\0\0bad")
    argv = ["predict", str(student), str(tmp_path / "frames"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--outputs", "pred"]) == 2
    assert "f3.png: cannot read the image" in capsys.readouterr().err
    (tmp_path / "frames" / "f3.png").rename(tmp_path / "f3.png")
    assert main([*argv, "--outputs", "pred"]) == 2
    assert "f5.png: damaged EXIF block" in capsys.readouterr().err
    (tmp_path / "f3.png").rename(tmp_path / "frames" / "f3.png")
    assert main([*argv, "--outputs", "pred", "--skip-unreadable"]) == 0
    assert "2 unreadable image(s) skipped" in capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "out" / "pred").iterdir())
    assert written == ["f1.png", "f2.png", "f4.png"]
    summary = json.loads((tmp_path / "out" / "predict.json").read_text())
    skipped = [(Path(s["image"]).name, s["error"]) for s in summary["skipped"]]
    assert [name for name, _ in skipped] == ["f3.png", "f5.png"]
    assert "cannot read" in skipped[0][1] and "damaged EXIF block" in skipped[1][1]
    assert [Path(record["image"]).name for record in summary["images"]] == [
        "f1.png",
        "f2.png",
        "f4.png",
    ]


def test_a_failed_runs_outputs_are_removed_by_the_next_run(tmp_path, student, capsys) -> None:
    out = tmp_path / "out"
    mine = write_png(out / "pred" / "mine.png", rgb(8, 8))  # the user's own file
    argv = ["predict", str(student), "--out", str(out), "--outputs", "pred,seg"]
    # Runs that stop half way (the last of three images is corrupt) leave the pictures of
    # the images before it, and no predict.json lists them.
    for name in ("f", "h"):
        for i in (1, 2):
            write_png(tmp_path / name / f"{name}{i}.png", rgb(32, 64, seed=i))
        (tmp_path / name / f"{name}3.png").write_text("not an image")
        assert main([*argv, str(tmp_path / name)]) == 2
        assert {"pred/f1.png", "seg/f1.png", f"pred/{name}1.png"} <= files_in(out)
    assert not (out / "predict.json").exists()
    failed = files_in(out) - {"pred/mine.png", UNFINISHED_FILE}
    # A record line that a stopped run left half written lists nothing.
    with (out / UNFINISHED_FILE).open("a") as record:
        record.write('"pred/mi')
    # The next run, on other images, removes both failed runs' pictures, not the user's.
    write_png(tmp_path / "g" / "g.png", rgb(32, 64))
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "g")]) == 0
    assert f"removed {len(failed)} files of earlier runs" in capsys.readouterr().err
    assert files_in(out) == {"pred/g.png", "pred/mine.png", "predict.json", "seg/g.png"}
    assert mine.is_file()


def test_a_classes_file_of_another_count_is_refused_before_the_ood_fit(
    tmp_path, student, capsys, monkeypatch
) -> None:
    def fit(*args: object, **kwargs: object) -> None:
        pytest.fail("the OOD detector was fitted before the classes file was checked")

    monkeypatch.setattr("segdistill.predict.fit_ood_detector", fit)
    write_png(tmp_path / "in" / "x.png", rgb(32, 64))
    two = tmp_path / "two.yaml"
    two.write_text("classes: [{name: a, color: [0, 0, 0]}, {name: b, color: [1, 1, 1]}]\n")
    out = tmp_path / "out"
    argv = ["predict", str(student), str(tmp_path / "in"), "--out", str(out)]
    assert main([*argv, "--classes", str(two), "--ood-reference", str(tmp_path / "in")]) == 2
    err = capsys.readouterr().err
    assert f"{two} lists 2 classes, but" in err and f"predicts {CLASSES}" in err
    assert not out.exists()  # no detector, no pictures


# ------------------------------------------------ what the pictures hold, value by value

IMAGENET_MEAN_BY_HAND = np.array([0.485, 0.456, 0.406])
IMAGENET_STD_BY_HAND = np.array([0.229, 0.224, 0.225])


def test_size_resizes_the_image_bilinearly_and_every_map_back_from_its_crop(
    tmp_path, student
) -> None:
    """--size H x W, here neither a multiple of 32 nor the image's aspect: the normalised
    image is resized bilinearly to H x W, padded at the bottom and right, and the H x W crop
    of the probabilities and the uncertainty is resized bilinearly back to the image size.
    Computed here from the network's raw output with numpy and torch's interpolate."""
    image = rgb(30, 50)
    write_png(tmp_path / "a.png", image)
    out = tmp_path / "out"
    kinds = ["pred", "uncertainty16"]
    predict_files(
        load_predictor(student), [tmp_path / "a.png"], out, size=(40, 24), outputs=kinds,
        progress=False,
    )  # fmt: skip
    normalised = (image / 255.0 - IMAGENET_MEAN_BY_HAND) / IMAGENET_STD_BY_HAND
    x = torch.from_numpy(normalised.astype(np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(40, 24), mode="bilinear", align_corners=False)
    x = F.pad(x, (0, 32 - 24, 0, 64 - 40))  # to multiples of 32: 64 x 32
    with torch.no_grad():
        output = load_segmenter(student)[0].eval()(x)

    def back(maps: torch.Tensor) -> np.ndarray:
        crop = maps[..., :40, :24]
        return F.interpolate(crop, size=(30, 50), mode="bilinear", align_corners=False)[0].numpy()

    probs = back(output.logits.softmax(dim=1))
    top2 = np.sort(probs, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4  # not a near tie
    pred = read(out / "pred" / "a.png")
    assert pred.shape == (30, 50) and clear.mean() > 0.9
    assert np.array_equal(pred[clear], probs.argmax(axis=0)[clear])
    u16 = read(out / "uncertainty16" / "a.png") / UINT16_MAX
    np.testing.assert_allclose(u16, back(output.uncertainty)[0], atol=1e-4)


def test_the_pictures_hold_the_documented_colours(tmp_path, student) -> None:
    """seg: the Cityscapes train-id colours for weights without classes; overlay: the image
    and those colours 50/50; uncertainty: magma on the fixed scale 0..vmax."""
    image = rgb(32, 48)
    write_png(tmp_path / "a.png", image)
    out = tmp_path / "out"
    predictor = load_predictor(student)
    (result,) = predict_arrays(predictor, [image], 32)
    vmax = 1.2 * float(result.uncertainty.max())  # above every pixel: nothing saturates
    kinds = ["pred", "seg", "overlay", "uncertainty", "uncertainty16"]
    predict_files(
        predictor, [tmp_path / "a.png"], out, vmax=vmax, outputs=kinds, progress=False
    )  # fmt: skip
    pred = read(out / "pred" / "a.png")
    assert TRAIN_ID_COLORS[[0, 1, 13]].tolist() == [[128, 64, 128], [244, 35, 232], [0, 0, 142]]
    seg = read(out / "seg" / "a.png")
    assert np.array_equal(seg, TRAIN_ID_COLORS[pred])
    blend = (image.astype(np.int64) + seg.astype(np.int64)) / 2
    assert np.array_equal(read(out / "overlay" / "a.png"), np.rint(blend))
    u = read(out / "uncertainty16" / "a.png") / UINT16_MAX
    assert u.max() < vmax
    expected = matplotlib.colormaps["magma"](u / vmax, bytes=True)[..., :3].astype(np.int64)
    heat = read(out / "uncertainty" / "a.png").astype(np.int64)
    # The 16-bit rounding of u may move a pixel to the neighbouring entry of the colour map.
    assert np.abs(heat - expected).max() <= 6 and (heat == expected).all(axis=2).mean() > 0.9


def test_class_ids_beyond_255_and_the_uncertainty_extremes_survive_the_files(tmp_path) -> None:
    pred = np.array([[0, 255, 256, 299]])
    uncertainty = np.array([[0.0, 0.5, 1.0, 1.0]], np.float32)
    kinds = ["pred", "uncertainty16"]
    palette = np.zeros((300, 3), np.uint8)  # a 300-class network: 16-bit class ids
    write_outputs(tmp_path, "x", rgb(1, 4), pred, uncertainty, None, palette=palette,
                  title="x", kinds=kinds)  # fmt: skip
    assert read(tmp_path / "pred" / "x.png").tolist() == [[0, 255, 256, 299]]
    assert read(tmp_path / "uncertainty16" / "x.png").tolist() == [[0, 32768, 65535, 65535]]
    write_outputs(tmp_path, "y", rgb(1, 4), pred % 256, uncertainty, None,
                  palette=palette[:256], title="y", kinds=kinds)  # fmt: skip
    with Image.open(tmp_path / "pred" / "y.png") as img:
        assert img.mode == "L"  # up to 256 classes: 8-bit
    assert read(tmp_path / "pred" / "y.png").tolist() == [[0, 255, 0, 43]]
    # 257 classes: id 256 needs the 16 bits (8 would store it as 0).
    write_outputs(tmp_path, "z", rgb(1, 2), np.array([[0, 256]]), uncertainty[:, :2], None,
                  palette=palette[:257], title="z", kinds=["pred"])  # fmt: skip
    assert read(tmp_path / "pred" / "z.png").tolist() == [[0, 256]]


def test_the_distrust_threshold_itself_is_distrusted(tmp_path, student) -> None:
    """'>= T': with T the image's smallest uncertainty, every pixel is marked."""
    image = write_png(tmp_path / "a.png", rgb(32, 48))
    predictor = load_predictor(student)
    (result,) = predict_arrays(predictor, [read(image)], 32)
    lowest = float(result.uncertainty.min())
    summary = predict_files(
        predictor, [image], tmp_path / "out", distrust_above=lowest, outputs=["distrust"],
        progress=False,
    )  # fmt: skip
    assert (read(tmp_path / "out" / "distrust" / "a.png") == 255).all()
    assert summary.distrusted == summary.pixels == 32 * 48
    # A negative threshold would flag every pixel of every image: refused, as on the CLI.
    with pytest.raises(ConfigError, match=r"--distrust-above must be a finite number >= 0"):
        predict_files(predictor, [image], tmp_path / "o2", distrust_above=-0.5, progress=False)


def test_train_ids_are_preferred_to_label_ids_and_both_to_the_stem(tmp_path) -> None:
    image = InputImage(write_png(tmp_path / "img" / CITY_IMAGE, rgb(4, 4)), "x")
    gt = tmp_path / "gt"
    blank = np.zeros((4, 4), np.uint8)
    stem = write_png(gt / CITY_IMAGE, blank)
    label_ids = write_png(gt / "aachen_000000_000019_gtFine_labelIds.png", blank)
    train_ids = write_png(gt / "aachen_000000_000019_gtFine_labelTrainIds.png", blank)
    assert match_labels([image], gt) == {image.path: train_ids}
    train_ids.unlink()
    assert match_labels([image], gt) == {image.path: label_ids}
    label_ids.unlink()
    assert match_labels([image], gt) == {image.path: stem}
    # A labels folder that is the images' folder does not match an image to itself.
    assert match_labels([image], tmp_path / "img") == {image.path: None}


def test_explicit_classes_win_over_those_the_weights_carry(tmp_path, student) -> None:
    """Their colours draw the classes and their ignore value reads the labels, not the
    weights' own classes."""
    write_png(tmp_path / "img" / "a.png", rgb(32, 48))
    ids = np.random.default_rng(4).integers(0, CLASSES + 1, (32, 48))  # CLASSES: void
    label = write_png(tmp_path / "gt.png", np.where(ids == CLASSES, 100, ids).astype(np.uint8))
    predictor = load_predictor(student)
    names = tuple(f"c{k}" for k in range(CLASSES))
    predictor.classes = ClassesSpec(names, np.zeros((CLASSES, 3), np.uint8))  # as stored
    colours = np.arange(3 * CLASSES, dtype=np.uint8).reshape(CLASSES, 3) * 4
    given = ClassesSpec(names, colours, ignore_index=100)
    out = tmp_path / "out"
    predict_files(
        predictor, [tmp_path / "img" / "a.png"], out, labels=label, classes=given,
        outputs=["pred", "seg", "accuracy"], progress=False,
    )  # fmt: skip
    pred = read(out / "pred" / "a.png")
    assert np.array_equal(read(out / "seg" / "a.png"), colours[pred])
    expected = np.where(pred == ids, figures.ACCURACY_RIGHT, figures.ACCURACY_WRONG)
    expected[ids == CLASSES] = figures.ACCURACY_VOID
    assert np.array_equal(read(out / "accuracy" / "a.png"), expected)


def test_cli_options_reach_the_run_and_its_record(tmp_path, student) -> None:
    """--size, --vmax, --batch-size and --channels-last as predict.json records them."""
    for i in range(2):
        write_png(tmp_path / "in" / f"{i}.png", rgb(30, 50, seed=i))
    out = tmp_path / "out"
    argv = ["predict", str(student), str(tmp_path / "in"), "--out", str(out), "--device", "cpu"]
    options = ["--size", "40x24", "--vmax", "0.25", "--batch-size", "2", "--channels-last"]
    assert main([*argv, *options, "--outputs", "pred"]) == 0
    index = json.loads((out / "predict.json").read_text())
    assert index["resize_to"] == [40, 24] and index["encodings"]["uncertainty"]["max"] == 0.25
    assert index["run"]["batch_size"] == 2 and index["run"]["channels_last"] is True
    assert read(out / "pred" / "0.png").shape == (30, 50)
    mc = save_tiny(tmp_path / "mc.safetensors", head=None, mc_dropout=0.3)
    argv = ["predict", str(mc), str(tmp_path / "in" / "0.png"), "--out", str(tmp_path / "mc")]
    assert main([*argv, "--mc-samples", "3", "--outputs", "none"]) == 0
    assert json.loads((tmp_path / "mc" / "predict.json").read_text())["run"]["passes"] == 3


def test_the_ood_flag_scores_images_with_the_detectors_aggregator(
    tmp_path, student, ood_reference
) -> None:
    predictor = load_predictor(student)
    references = ood_reference[:4]
    detector = fit_ood_detector(predictor, references, aggregator="max", fpr=0.25, progress=False)
    summary = predict_files(
        predictor, references, tmp_path / "out", ood=detector, outputs=[], progress=False
    )
    for record in json.loads(summary.summary.read_text())["images"]:
        scores = record["image_scores"]
        assert record["ood_score"] == scores["max"] != scores["mean"]
        assert record["ood"] == (record["ood_score"] > detector.threshold)


def test_distrust_thresholds_the_uncertainty_not_the_ood_map(tmp_path) -> None:
    """A per-class head has two maps: the predicted class's value (the uncertainty, the
    pictures) and eq. 8's mean over the classes (the OOD scores). --distrust-above flags
    pixels by the uncertainty, as its help and the error operating points say."""
    weights = save_tiny(tmp_path / "holder.safetensors", head="per_class")
    predictor = load_predictor(weights)
    image = write_png(tmp_path / "a.png", rgb(32, 48))
    (result,) = predict_arrays(predictor, [read(image)], 32)
    threshold = float(np.median(result.uncertainty))
    # The two maps mark other pixels at this threshold: the test tells them apart.
    assert ((result.ood_map >= threshold) != (result.uncertainty >= threshold)).mean() > 0.1
    summary = predict_files(
        predictor, [image], tmp_path / "out", distrust_above=threshold,
        outputs=["uncertainty16", "distrust"], progress=False,
    )  # fmt: skip
    u16 = read(tmp_path / "out" / "uncertainty16" / "a.png") / UINT16_MAX
    mask = read(tmp_path / "out" / "distrust" / "a.png") == 255
    near = np.abs(u16 - threshold) < 1e-4
    assert np.array_equal(mask[~near], (u16 >= threshold)[~near])
    record = json.loads(summary.summary.read_text())["images"][0]
    assert record["distrust_share"] == pytest.approx(mask.mean())


def test_cli_fits_the_detector_with_the_aggregator_and_size_asked_for(
    tmp_path, student, ood_reference
) -> None:
    """--ood-aggregator and --size reach the fit: the saved detector scores with that
    aggregator on images resized to that size, and the run that uses it flags by it."""
    write_png(tmp_path / "in" / "x.png", rgb(30, 50))
    out = tmp_path / "out"
    argv = ["predict", str(student), str(tmp_path / "in"), "--out", str(out), "--outputs", "none"]
    folder = str(ood_reference[0].parent)
    options = ["--ood-reference", folder, "--ood-aggregator", "max", "--size", "40x24"]
    assert main([*argv, *options]) == 0
    saved = ImageOODDetector.load(out / DETECTOR_FILE)
    assert (saved.aggregator, saved.resize_to) == ("max", [40, 24])
    # Each reference's score is the max of its map, as predict writes it at that size.
    scored = predict_files(
        load_predictor(student), ood_reference[:2], tmp_path / "refs", size=(40, 24),
        outputs=["uncertainty16"], progress=False,
    )  # fmt: skip
    for record, score in zip(
        json.loads(scored.summary.read_text())["images"], saved.reference_scores
    ):
        u16 = read(tmp_path / "refs" / record["files"]["uncertainty16"]) / UINT16_MAX
        assert score == pytest.approx(u16.max(), abs=1e-4)
    record = json.loads((out / "predict.json").read_text())["images"][0]
    assert record["ood_score"] == record["image_scores"]["max"]


def test_a_file_name_with_dollar_signs_is_drawn_as_written(tmp_path: Path) -> None:
    """A panel's title and captions come from file names; `img$a_b_c$.png` was parsed as
    mathtext by the layout and failed the run ("Double subscript")."""
    from segdistill.data.preview import draw_sheet
    from segdistill.predict import draw_panel

    picture = np.zeros((8, 16, 3), np.uint8)
    draw_panel(
        tmp_path / "panel.png",
        "img$a_b_c$.png",
        [("image img$a_b_c$", picture)],
        np.zeros((8, 16), np.float32),
    )
    assert Image.open(tmp_path / "panel.png").size[0] > 100
    draw_sheet([[("a$b_c_d$", picture)]], ["row$x_y_z$"], "sheet$a_b_c$", tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size[0] > 100


def test_an_ood_fpr_of_zero_flags_no_reference_image(tmp_path, student, ood_reference) -> None:
    """--ood-fpr 0 is allowed (the rate must lie in [0, 1)): the threshold is then the
    largest reference score, so none of the reference images is flagged. The command
    ended in a ZeroDivisionError traceback from its "too few references" notice
    (5 / fpr), after it had saved the detector and before it predicted anything."""
    folder = ood_reference[0].parent
    out = tmp_path / "out"
    argv = ["predict", str(student), str(folder), "--out", str(out), "--outputs", "none"]
    assert main([*argv, "--ood-reference", str(folder), "--ood-fpr", "0"]) == 0
    saved = json.loads((out / DETECTOR_FILE).read_text())
    assert saved["fpr"] == 0.0
    assert saved["threshold"] == max(saved["reference_scores"])
    records = json.loads((out / "predict.json").read_text())["images"]
    assert len(records) == len(ood_reference)
    assert not any(record["ood"] for record in records)


def test_only_the_first_notices_are_printed_and_all_are_kept(tmp_path, student, capsys) -> None:
    """A folder of grey frames printed one notice per frame; the first PRINTED_NOTICES
    are printed, then one line, and predict.json lists every notice."""
    from segdistill.predict import PRINTED_NOTICES

    frames = tmp_path / "frames"
    count = PRINTED_NOTICES + 3
    for k in range(count):
        write_png(frames / f"{k:03d}.png", rgb(32, 32, seed=k)[..., 0])
    out = tmp_path / "out"
    summary = predict_files(load_predictor(student), find_images([frames]), out, progress=False)
    err = capsys.readouterr().err
    assert len(summary.notices) == count
    assert err.count("grayscale image converted to RGB") == PRINTED_NOTICES
    assert "further notices are not printed (predict.json lists them all" in err
    assert f"{frames / f'{count - 1:03d}.png'}" not in err  # the last one: kept, not printed
    document = json.loads((out / "predict.json").read_text())
    assert document["notices"] == summary.notices


def test_the_notice_after_the_printed_ones_says_where_the_rest_are(capsys) -> None:
    """The line that says further notices are not printed comes right after the last
    printed one (the next notice), once; every notice is kept."""
    from segdistill.predict import PRINTED_NOTICES, _notifier

    notices: list[str] = []
    notify = _notifier(notices, "see the list")
    for k in range(PRINTED_NOTICES + 1):
        notify(f"n{k}")
    lines = capsys.readouterr().err.splitlines()
    expected = [f"notice: n{k}" for k in range(PRINTED_NOTICES)]
    assert lines == [*expected, "notice: further notices are not printed (see the list)"]
    notify("later")
    assert capsys.readouterr().err == ""
    assert notices == [f"n{k}" for k in range(PRINTED_NOTICES + 1)] + ["later"]


def test_cli_says_how_many_notices_were_printed(tmp_path, student, capsys, monkeypatch) -> None:
    """The closing line says "listed above" only when every notice was printed (here
    PRINTED_NOTICES is patched: two grey frames give two notices); past it, how many were
    printed and where all are."""
    import segdistill.predict

    for k in range(2):
        write_png(tmp_path / "frames" / f"{k}.png", rgb(32, 32, seed=k)[..., 0])
    argv = ["predict", str(student), str(tmp_path / "frames"), "--device", "cpu", "--out"]
    monkeypatch.setattr(segdistill.predict, "PRINTED_NOTICES", 2)
    assert main([*argv, str(tmp_path / "all")]) == 0
    assert "2 notice(s), listed above; all in predict.json (notices)" in capsys.readouterr().out
    monkeypatch.setattr(segdistill.predict, "PRINTED_NOTICES", 1)
    assert main([*argv, str(tmp_path / "first")]) == 0
    out = capsys.readouterr().out
    assert "2 notice(s), the first 1 printed above; all in predict.json (notices)" in out


def test_predict_arrays_pads_to_the_input_multiple_by_default(student) -> None:
    """Without `multiple`, images are padded as `segdistill predict` pads them: to the
    next multiple of the encoder's output stride, 32 for a ResNet-18 (20x40 -> 32x64)."""
    predictor = load_predictor(student)
    shapes = []
    predict = predictor.predict

    def spy(batch, *args, **kwargs):
        shapes.append(tuple(batch.shape))
        return predict(batch, *args, **kwargs)

    predictor.predict = spy  # type: ignore[method-assign]
    (result,) = predict_arrays(predictor, [rgb(20, 40)])
    assert shapes == [(1, 3, 32, 64)]
    assert result.classes.shape == result.uncertainty.shape == (20, 40)


def test_ood_figure_legend_hides_no_bar() -> None:
    """The legend of ood_scores.png covers no bar of either histogram. The demo's DUDES
    student (4 reference images, 12 predicted, scores 0.433-0.445) had bars across the
    whole width; the legend, placed by matplotlib's "best" inside the axes, sat on them."""
    reference = [0.4377, 0.4405, 0.4407, 0.4444]
    predicted = [0.4328, 0.4335, 0.4338, 0.4357, 0.438, 0.4385]
    predicted += [0.439, 0.4392, 0.4388, 0.4423, 0.4432, 0.4382]
    figure = figures.ood_flags(reference, predicted, 0.4445, "mean", "dudes")
    ax = figure.axes[0]
    figures.png_bytes(figure)
    legend = ax.get_legend().get_window_extent()
    covered = []
    for patch in ax.patches:  # one StepPatch per histogram
        heights, edges, _ = patch.get_data()
        for low, high, height in zip(edges[:-1], edges[1:], heights):
            if height <= 0:
                continue
            (x0, y0), (x1, y1) = ax.transData.transform([(low, 0.0), (high, height)])
            if x0 < legend.x1 and legend.x0 < x1 and y0 < legend.y1 and legend.y0 < y1:
                covered.append((float(low), float(height)))
    assert covered == []


def test_panel_colour_bar_says_what_it_measures(tmp_path, monkeypatch) -> None:
    """panel/NAME.png's colour bar is labelled (what the heat map measures, on the fixed
    scale 0..vmax), as the sample figures of `segdistill evaluate` label theirs; an
    unlabelled bar left the reader to guess whether the colours are a per-image stretch."""
    from segdistill.predict import draw_panel

    drawn = []
    monkeypatch.setattr(figures, "save", lambda figure, path, dpi=None: drawn.append(figure))
    picture = rgb(16, 32)
    draw_panel(tmp_path / "p.png", "a", [("image", picture)], np.zeros((16, 32)), vmax=0.5)
    (figure,) = drawn
    (bar,) = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    label = bar.get_ylabel() or bar.get_xlabel()
    assert "0.5" in label
