"""Cityscapes-layout and folder data sets on tiny trees written here, and their errors."""

import io
import json
import shutil
import signal
import struct
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segdistill.data.folder as folder_module
from segdistill.config import DataConfig
from segdistill.data.base import (
    ClassesSpec,
    LabelMapping,
    SampleFiles,
    SegmentationDataset,
    check_headers,
    group_consecutive,
    image_size,
    read_image,
    read_mask,
)
from segdistill.data.cityscapes import (
    CityscapesDataset,
    GtFineMap,
    foggy_betas,
    has_labelled_pixels,
)
from segdistill.data.folder import FolderDataset, folder_splits, load_classes, parse_classes
from segdistill.data.labels import CLASS_NAMES, LABEL_ID_TO_TRAIN_ID, TRAIN_ID_COLORS, colorize
from segdistill.data.transforms import build_train_transform
from segdistill.errors import ConfigError, DataError
from segdistill.interrupts import ignore_ctrl_c

H, W = 6, 8
# Label ids: 7 road (train id 0), 26 car (13), 0 unlabeled (void).
LABEL_IDS = np.array([[7, 26, 0, 7, 7, 26, 26, 0]] * H, dtype=np.uint8)
TRAIN_IDS = np.array([[0, 13, 255, 0, 0, 13, 13, 255]] * H, dtype=np.uint8)


def save(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    """Write an array as PNG/JPEG; palette=True stores uint8 [H, W] as palette indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        image = Image.frombytes("P", array.shape[::-1], array.tobytes())
        image.putpalette(list(range(256)) * 3)
    else:
        image = Image.fromarray(array)
    image.save(path)
    return path


def image_array(seed: int, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def cityscapes_image(root: Path, split: str, base: str, suffix: str = "", folder: str = "") -> Path:
    """Writes {folder or leftImg8bit}/{split}/{city}/{base}_leftImg8bit{suffix}.png."""
    city = base.split("_")[0]
    folder = folder or "leftImg8bit"
    name = f"{base}_leftImg8bit{suffix}.png"
    return save(root / folder / split / city / name, image_array(len(base) + len(suffix)))


def gt_file(root: Path, split: str, base: str, kind: str, array: np.ndarray) -> Path:
    city = base.split("_")[0]
    return save(root / "gtFine" / split / city / f"{base}_gtFine_{kind}.png", array)


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    """Two cities, three labelIds-only images in val."""
    for base in ("zurich_000001_000019", "aachen_000000_000019", "aachen_000000_000020"):
        cityscapes_image(tmp_path, "val", base)
        gt_file(tmp_path, "val", base, "labelIds", LABEL_IDS)
    return tmp_path


def test_label_ids_are_mapped_to_train_ids_and_samples_sorted(cityscapes):
    dataset = CityscapesDataset(cityscapes, "val")
    assert dataset.names == [
        "aachen_000000_000019",
        "aachen_000000_000020",
        "zurich_000001_000019",
    ]
    sample = dataset.load(2)
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (H, W, 3)
    image_file = cityscapes / "leftImg8bit/val/zurich/zurich_000001_000019_leftImg8bit.png"
    assert np.array_equal(sample["image"], np.asarray(Image.open(image_file)))
    assert np.array_equal(sample["label"], TRAIN_IDS)
    assert sample["maps"] == {} and sample["name"] == "zurich_000001_000019"
    assert sample["index"] == 2
    assert dataset.classes == CLASS_NAMES and dataset.num_classes == 19


def test_label_train_ids_files_are_preferred(cityscapes):
    other = np.full((H, W), 5, np.uint8)
    gt_file(cityscapes, "val", "aachen_000000_000019", "labelTrainIds", other)
    dataset = CityscapesDataset(cityscapes, "val")
    assert np.array_equal(dataset.load(0)["label"], other)
    assert np.array_equal(dataset.load(1)["label"], TRAIN_IDS)


def test_ignore_index_is_a_parameter(cityscapes):
    label = CityscapesDataset(cityscapes, "val", ignore_index=250).load(0)["label"]
    assert np.array_equal(label, np.where(TRAIN_IDS == 255, 250, TRAIN_IDS))
    assert CityscapesDataset(cityscapes, "val", ignore_index=19).ignore_index == 19


@pytest.mark.parametrize("ignore_index", [-1, -100, 5, 18, 256])
def test_an_ignore_index_outside_19_to_255_is_refused(cityscapes, ignore_index):
    """PyTorch's -100 does not fit the 8-bit labels (an OverflowError naming nothing), and
    a class id would merge the void pixels into that class."""
    with pytest.raises(
        ConfigError, match=rf"ignore_index={ignore_index} must be an integer from 19"
    ):
        CityscapesDataset(cityscapes, "val", ignore_index=ignore_index)


@pytest.mark.parametrize("layout", ["same", "masks_inside", "images_inside"])
def test_images_and_masks_in_one_folder_are_refused(folder, layout):
    """Every image below images_dir is listed, so a mask there was read as an image and
    the error said it had no mask ('a_mask': expected a_mask_mask.png)."""
    images, masks = {
        "same": (folder / "images", folder / "images"),
        "masks_inside": (folder / "images", folder / "images" / "masks"),
        "images_inside": (folder / "masks" / "images", folder / "masks"),
    }[layout]
    with pytest.raises(DataError, match="are one folder or one holds the other") as err:
        FolderDataset(images, masks, folder / "classes.yaml", mask_suffix="_mask.png")
    assert str(images) in str(err.value) and str(masks) in str(err.value)


def test_getitem_gives_tensors_that_collate(cityscapes):
    dataset = CityscapesDataset(cityscapes, "val")
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, H, W) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (2, H, W)
    assert batch["name"] == ["aachen_000000_000019", "aachen_000000_000020"]


def test_foggy_variant_picks_one_beta(cityscapes):
    for beta in ("0.01", "0.02"):
        cityscapes_image(
            cityscapes, "val", "aachen_000000_000019", f"_foggy_beta_{beta}", "leftImg8bit_foggy"
        )
    dataset = CityscapesDataset(cityscapes, "val", variant="foggy", beta=0.02)
    assert dataset.names == ["aachen_000000_000019_foggy_beta_0.02"]
    assert np.array_equal(dataset.load(0)["label"], TRAIN_IDS)


def test_rain_variant_takes_a_pattern_glob(cityscapes):
    for pattern in (1, 2):
        suffix = f"_rain_alpha_0.01_beta_0.005_dropsize_0.01_pattern_{pattern}"
        cityscapes_image(cityscapes, "val", "aachen_000000_000019", suffix, "leftImg8bit_rain")
    assert len(CityscapesDataset(cityscapes, "val", variant="rain")) == 2
    one = CityscapesDataset(cityscapes, "val", variant="rain", rain_pattern="*_pattern_2")
    assert one.names == ["aachen_000000_000019_rain_alpha_0.01_beta_0.005_dropsize_0.01_pattern_2"]


def test_a_shift_folder_is_a_cityscapes_root(tmp_path):
    root = tmp_path / "shifts" / "fog_0.02"
    cityscapes_image(root, "test", "town_000000_000001")
    gt_file(root, "test", "town_000000_000001", "labelTrainIds", TRAIN_IDS)
    assert len(CityscapesDataset(root, "test")) == 1


def test_depth_and_custom_maps(cityscapes):
    depth_cm = np.full((H, W), 1234, np.uint16)
    gt_file(cityscapes, "val", "aachen_000000_000019", "labelIds", LABEL_IDS)
    save(cityscapes / "gtFine/val/aachen/aachen_000000_000019_depth.png", depth_cm)

    def ones(files: SampleFiles) -> np.ndarray:
        return np.ones((2, H, W))

    dataset = CityscapesDataset(cityscapes, "val", depth=True, maps={"ones": ones})
    maps = dataset.load(0)["maps"]
    np.testing.assert_allclose(maps["depth"], 12.34, rtol=1e-6)
    assert maps["depth"].shape == (1, H, W) and maps["ones"].shape == (2, H, W)
    assert maps["ones"].dtype == np.float32
    out = dataset[0]
    assert out["maps"]["depth"].shape == (1, H, W)


def test_gt_fine_map_reads_any_sibling_png(cityscapes):
    anomaly = np.zeros((H, W), np.uint8)
    anomaly[1, 2] = 1
    save(cityscapes / "gtFine/val/aachen/aachen_000000_000019_gtFine_anomaly.png", anomaly)
    reader = GtFineMap("_gtFine_anomaly.png")
    dataset = CityscapesDataset(cityscapes, "val", maps={"anomaly": reader})
    assert np.array_equal(dataset.load(0)["maps"]["anomaly"][0], anomaly)
    with pytest.raises(DataError, match="aachen_000000_000020_gtFine_anomaly.png: file not found"):
        dataset.load(1)


def test_unlabeled_images_are_allowed_on_request(cityscapes):
    cityscapes_image(cityscapes, "val", "bonn_000000_000001")
    dataset = CityscapesDataset(cityscapes, "val", allow_unlabeled=True)
    assert np.all(dataset.load(dataset.names.index("bonn_000000_000001"))["label"] == 255)


def test_train_transform_reaches_every_output(cityscapes):
    dataset = CityscapesDataset(cityscapes, "val", transform=build_train_transform((4, 4)))
    out = dataset[0]
    assert out["image"].shape == (3, 4, 4) and out["label"].shape == (4, 4)


# --- Cityscapes input errors -------------------------------------------------------------


def test_missing_mask_names_image_and_expected_path(cityscapes):
    image = cityscapes_image(cityscapes, "val", "bonn_000000_000001")
    with pytest.raises(DataError) as err:
        CityscapesDataset(cityscapes, "val")
    assert str(image) in str(err.value)
    assert "gtFine/val/bonn/bonn_000000_000001_gtFine_labelIds.png" in str(err.value)


def test_empty_data_set_names_root_and_pattern(cityscapes):
    base = "aachen_000000_000019"
    cityscapes_image(cityscapes, "val", base, "_foggy_beta_0.01", "leftImg8bit_foggy")
    pattern = r"matching leftImg8bit_foggy/val/\*/\*_leftImg8bit_foggy_beta_0\.005\.png"
    with pytest.raises(DataError, match=pattern) as err:
        CityscapesDataset(cityscapes, "val", variant="foggy", beta=0.005)
    assert str(cityscapes) in str(err.value)
    (cityscapes / "leftImg8bit/test").mkdir()
    with pytest.raises(DataError, match="leftImg8bit/test"):
        CityscapesDataset(cityscapes, "test")


def test_missing_split_or_root_or_unknown_variant(cityscapes):
    with pytest.raises(DataError, match="split folders .*: val"):
        CityscapesDataset(cityscapes, "train")
    with pytest.raises(DataError, match="nowhere"):
        CityscapesDataset(cityscapes / "nowhere", "val")
    with pytest.raises(DataError, match="snowy"):
        CityscapesDataset(cityscapes, "val", variant="snowy")


def test_unknown_label_ids_are_listed_with_the_file(cityscapes):
    bad = LABEL_IDS.copy()
    bad[0, :2] = [40, 99]
    path = gt_file(cityscapes, "val", "aachen_000000_000019", "labelIds", bad)
    with pytest.raises(DataError, match="40, 99") as err:
        CityscapesDataset(cityscapes, "val").load(0)
    assert str(path) in str(err.value)


def test_train_ids_outside_the_classes_are_listed(cityscapes):
    path = gt_file(cityscapes, "val", "aachen_000000_000019", "labelTrainIds", TRAIN_IDS + 19)
    with pytest.raises(DataError, match="19, 32") as err:
        CityscapesDataset(cityscapes, "val").load(0)
    assert str(path) in str(err.value)


def test_official_label_ids_and_train_ids_files_decode_to_the_same_train_ids(tmp_path):
    """One polygons file holding every label of the official table (group and negative-id
    labels included), rendered by cityscapesscripts as `_gtFine_labelIds.png` in one tree and
    as `_gtFine_labelTrainIds.png` (what createTrainIdLabelImgs writes) in another: both
    trees give the train ids of the official rendering, every class among them."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.helpers.labels import labels as official
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    names = [label.name for label in official] + ["cargroup"]
    height, width = 4, 2 * len(names)
    objects = [
        {"label": name, "polygon": [[2 * i, 0], [2 * i + 1, 0], [2 * i + 1, 3], [2 * i, 3]]}
        for i, name in enumerate(names)
    ]
    annotation = Annotation()
    annotation.fromJsonText(
        json.dumps({"imgHeight": height, "imgWidth": width, "objects": objects})
    )
    label_ids = np.asarray(createLabelImage(annotation, "ids"), dtype=np.uint8)
    train_ids = np.asarray(createLabelImage(annotation, "trainIds"), dtype=np.uint8)
    assert set(range(19)) <= set(np.unique(train_ids).tolist())
    labels = {}
    for kind, array in (("labelIds", label_ids), ("labelTrainIds", train_ids)):
        root = tmp_path / kind
        image = root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
        save(image, image_array(0, height, width))
        gt_file(root, "train", "aachen_000000_000019", kind, array)
        labels[kind] = CityscapesDataset(root, "train").load(0)["label"]
    assert np.array_equal(labels["labelTrainIds"], train_ids)
    assert np.array_equal(labels["labelIds"], train_ids)


def test_size_mismatch_names_both_files_and_sizes(cityscapes):
    mask = gt_file(cityscapes, "val", "aachen_000000_000019", "labelIds", LABEL_IDS[:, :5])
    with pytest.raises(DataError, match="5x6.*8x6") as err:
        CityscapesDataset(cityscapes, "val").load(0)
    assert str(mask) in str(err.value)
    assert "aachen_000000_000019_leftImg8bit.png" in str(err.value)


def test_map_of_the_wrong_size_is_an_error(cityscapes):
    maps = {"bad": lambda files: np.zeros((H + 1, W))}
    with pytest.raises(DataError, match="'bad'.*8x7"):
        CityscapesDataset(cityscapes, "val", maps=maps).load(0)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_image_names_the_file(cityscapes, damage):
    path = cityscapes / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not an image")
    with pytest.raises(DataError, match="corrupt") as err:
        CityscapesDataset(cityscapes, "val").load(0)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grey_rgba_and_palette_images_become_rgb(cityscapes, mode):
    path = cityscapes / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    Image.fromarray(image_array(0)).convert(mode).save(path)
    image = CityscapesDataset(cityscapes, "val").load(0)["image"]
    assert image.shape == (H, W, 3) and image.dtype == np.uint8


def test_16_bit_images_are_refused(cityscapes):
    path = save(
        cityscapes / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png",
        np.full((H, W), 4000, np.uint16),
    )
    with pytest.raises(DataError, match="16-bit") as err:
        CityscapesDataset(cityscapes, "val").load(0)
    assert str(path) in str(err.value)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC (the PNG specification, section 5.3)."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def write_png(
    path: Path, width: int, height: int, bits: int, color_type: int, rows: bytes | None
) -> Path:
    """A PNG written by hand, for what PIL cannot write; rows: the filtered scanlines
    (None: no IDAT, a header alone)."""
    header = struct.pack(">IIBBBBB", width, height, bits, color_type, 0, 0, 0)
    data = b"" if rows is None else png_chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + data + png_chunk(b"IEND", b"")
    )
    return path


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A PNG with 16 bits per colour channel ([H, W, 3] RGB or [H, W, 4] RGBA uint16):
    PIL cannot write one, but opens it as 8-bit RGB."""
    height, width, channels = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    return write_png(path, width, height, 16, {3: 2, 4: 6}[channels], rows)


def write_low_bit_grey_png(path: Path, values: np.ndarray, bits: int) -> Path:
    """A grey PNG of `bits` (1, 2 or 4) bits a pixel storing `values` [H, W], packed
    most significant first as the PNG specification says; PIL cannot write 2 or 4 bits."""
    height, width = values.shape
    per_byte = 8 // bits
    padded = np.zeros((height, -(-width // per_byte) * per_byte), np.uint8)
    padded[:, :width] = values
    rows = b""
    for row in padded:
        groups = row.reshape(-1, per_byte).astype(int)
        shifts = [8 - bits * (k + 1) for k in range(per_byte)]
        packed = bytes(int(sum(v << t for v, t in zip(group, shifts))) for group in groups)
        rows += b"\x00" + packed
    return write_png(path, width, height, bits, 0, rows)


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_pngs_are_refused_not_cut_to_8_bits(cityscapes, channels):
    path = cityscapes / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    write_png16(path, np.full((H, W, channels), 4000, np.uint16))  # 12-bit sensor values
    assert Image.open(path).mode in ("RGB", "RGBA")  # what PIL would decode silently
    for read in (lambda: CityscapesDataset(cityscapes, "val").load(0), lambda: read_image(path)):
        with pytest.raises(DataError, match="16-bit") as err:
            read()
        assert str(path) in str(err.value)
    with pytest.raises(DataError, match="16-bit"):
        check_headers(CityscapesDataset(cityscapes, "val").samples)


def test_an_exif_rotated_photo_is_turned_upright(tmp_path):
    """A camera JPEG stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to
    view) is read as viewers show it; its mask must be the upright size."""
    upright = np.zeros((20, 40, 3), np.uint8)
    upright[:, :20] = 255  # left half white, as the viewer shows it
    stored = np.rot90(upright, k=1)  # [40, 20]: what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "photo.jpg", exif=exif)
    image = read_image(tmp_path / "photo.jpg")
    assert image.shape == (20, 40, 3)
    assert image[:, :18].mean() > 240 and image[:, 22:].mean() < 15  # JPEG rounding at the edge
    # The header check compares the mask with the upright size, as loading will.
    mapping = LabelMapping.identity(2, 255)
    upright_mask = save(tmp_path / "upright.png", np.zeros((20, 40), np.uint8))
    sideways_mask = save(tmp_path / "sideways.png", np.zeros((40, 20), np.uint8))
    # The sizes it returns (the training crop notice reads them) are upright too.
    assert check_headers([SampleFiles("photo", tmp_path / "photo.jpg", upright_mask, mapping)]) == [
        (20, 40)
    ]
    with pytest.raises(
        DataError,
        match=r"sideways.png is 20x40 .* is 40x20 \(turned upright by its EXIF orientation 6; "
        r"stored 20x40",
    ):
        check_headers([SampleFiles("photo", tmp_path / "photo.jpg", sideways_mask, mapping)])


def test_a_damaged_exif_block_is_a_data_error_naming_the_file(tmp_path):
    """Intact pixels behind an EXIF block PIL cannot decode: every reader names the file
    instead of raising PIL's SyntaxError."""
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(path, exif=b"Exif\0\0GARBAGEGARBAGE")
    mask = save(tmp_path / "mask.png", np.zeros((20, 40), np.uint8))
    samples = [SampleFiles("photo", path, mask, LabelMapping.identity(2, 255))]
    for read in (
        lambda: read_image(path),
        lambda: image_size(path),
        lambda: check_headers(samples),
    ):
        with pytest.raises(DataError, match="photo.png: damaged EXIF block"):
            read()


def test_rgb_masks_are_refused(cityscapes):
    gt_file(cityscapes, "val", "aachen_000000_000019", "labelIds", image_array(1))
    with pytest.raises(DataError, match="single-channel"):
        CityscapesDataset(cityscapes, "val").load(0)


# --- the official label table, boundaries of the stored values ---------------------------

# The official Cityscapes table (cityscapesscripts/helpers/labels.py), written out by hand:
# train id of each label id 0..33 (255: void).
OFFICIAL_TRAIN_IDS = [
    255, 255, 255, 255, 255, 255, 255,  # unlabeled, ego vehicle, rectification border,
    # out of roi, static, dynamic, ground
    0, 1, 255, 255, 2, 3, 4,  # road, sidewalk, parking, rail track, building, wall, fence
    255, 255, 255, 5, 255, 6, 7,  # guard rail, bridge, tunnel, pole, polegroup, light, sign
    8, 9, 10, 11, 12, 13, 14, 15,  # vegetation, terrain, sky, person, rider, car, truck, bus
    255, 255, 16, 17, 18,  # caravan, trailer, train, motorcycle, bicycle
]  # fmt: skip


def test_every_label_id_becomes_its_official_train_id(cityscapes):
    """All 34 label ids in one labelIds mask, each decoded as the official table says
    (bicycle, id 33, is last in the table and next to the void license plate, id -1)."""
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    gt_file(cityscapes, "val", "aachen_000000_000019", "labelIds", ids)
    image = cityscapes / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"
    save(image, image_array(0, 2, 17))
    label = CityscapesDataset(cityscapes, "val").load(0)["label"]
    assert label.tolist() == np.reshape(OFFICIAL_TRAIN_IDS, (2, 17)).tolist()
    assert LABEL_ID_TO_TRAIN_ID[:34].tolist() == OFFICIAL_TRAIN_IDS
    assert CLASS_NAMES[:3] == ("road", "sidewalk", "building") and CLASS_NAMES[-1] == "bicycle"


def test_every_train_id_and_void_pass_through_a_train_ids_mask(cityscapes):
    values = np.array([[*range(19), 255]] * 2, np.uint8)  # 0..18 and void
    gt_file(cityscapes, "val", "aachen_000000_000019", "labelTrainIds", values)
    save(
        cityscapes / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png",
        image_array(0, 2, 20),
    )
    assert CityscapesDataset(cityscapes, "val").load(0)["label"].tolist() == values.tolist()
    relabelled = CityscapesDataset(cityscapes, "val", ignore_index=250).load(0)["label"]
    assert relabelled[:, :19].tolist() == values[:, :19].tolist()
    assert (relabelled[:, 19] == 250).all()


@pytest.mark.parametrize("value", [34, 255])
def test_the_first_label_id_past_the_table_is_an_error_not_a_crash(cityscapes, value):
    """Label ids stop at 33: 34 (the table's length) and 255 are unknown."""
    bad = LABEL_IDS.copy()
    bad[0, 0] = value
    path = gt_file(cityscapes, "val", "aachen_000000_000019", "labelIds", bad)
    with pytest.raises(DataError, match=rf"mask holds unknown values {value} \(allowed") as err:
        CityscapesDataset(cityscapes, "val").load(0)
    assert str(path) in str(err.value)


def test_negative_stored_values_are_unknown_not_read_from_the_end_of_the_table():
    """A 32-bit mask (e.g. a TIFF) may hold -1; numpy would index the table from its end
    (identity's last entry is the ignore value 255, so -1 would pass as void)."""
    mapping = LabelMapping.identity(2, 255)
    with pytest.raises(DataError, match=r"m\.png: mask holds unknown values -1 \(allowed"):
        mapping.decode(np.array([[0, 1, -1]], np.int32), Path("m.png"))
    assert mapping.decode(np.array([[0, 1, 255]], np.int32), Path("m.png")).tolist() == [
        [0, 1, 255]
    ]


def test_a_bilevel_mask_stores_0_and_1(folder):
    """A mode "1" PNG (what some tools write for two classes) reads as class ids 0 and 1."""
    mask = np.array([[0, 1, 1, 0]] * 4, bool)
    Image.fromarray(mask).save(folder / "masks" / "a.png")
    assert Image.open(folder / "masks" / "a.png").mode == "1"
    check_headers(make_folder(folder).samples)
    label = make_folder(folder).load(0)["label"]
    assert label.dtype == np.uint8 and label.tolist() == mask.astype(int).tolist()


def test_a_decompression_bomb_header_is_a_data_error_naming_the_file(tmp_path):
    """A PNG header claiming 30000 x 30000 pixels: PIL refuses it before decoding."""
    path = write_png(tmp_path / "bomb.png", 30000, 30000, 8, 2, None)
    for read in (lambda: read_image(path), lambda: image_size(path)):
        # Not "corrupt or truncated": the file is fine, only too large for PIL's guard.
        with pytest.raises(DataError, match="bomb.png: too large to read .*split it into tiles"):
            read()


@pytest.mark.parametrize("mode", ["F", "I"])
def test_float_and_32_bit_images_are_refused(tmp_path, mode):
    """A TIFF of floats or 32-bit integers (`predict` reads any file it is given)."""
    path = tmp_path / "depth.tif"
    Image.fromarray(np.full((4, 6), 1000, np.float32 if mode == "F" else np.int32)).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(DataError, match=rf"depth\.tif: {mode} image \(16-bit or float\)"):
        read_image(path)


# EXIF orientation -> the upright view of the stored pixels, from the EXIF specification
# (where the stored 0th row and 0th column lie in the view).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_every_exif_orientation_is_read_upright_and_checked_at_the_upright_size(
    tmp_path, orientation
):
    stored = image_array(orientation, 3, 5)  # 3 x 5: every turn and mirror differs
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"  # lossless, so every pixel can be compared
    Image.fromarray(stored).save(path, exif=exif)
    upright = UPRIGHT[orientation](stored)
    assert np.array_equal(read_image(path), upright)
    assert image_size(path) == upright.shape[:2]
    mapping = LabelMapping.identity(2, 255)
    mask = save(tmp_path / "mask.png", np.zeros(upright.shape[:2], np.uint8))
    check_headers([SampleFiles("photo", path, mask, mapping)])
    if orientation >= 5:  # a mask of the stored (sideways) size is refused
        sideways = save(tmp_path / "sideways.png", np.zeros(stored.shape[:2], np.uint8))
        with pytest.raises(DataError, match="sideways.png is 5x3"):
            check_headers([SampleFiles("photo", path, sideways, mapping)])


def test_an_exif_block_after_the_pixels_is_read_by_every_reader_alike(tmp_path):
    """A PNG may store its eXIf chunk after the pixel data; decoding finds it, the header
    does not. `read_image` follows the header as `image_size` and `check_headers` do, so a
    mask checked before training is not refused by the loader mid-run."""
    stored = image_array(1, 2, 4)
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "PNG")
    data = buffer.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn, were it applied
    late = png_chunk(b"eXIf", exif.tobytes().removeprefix(b"Exif\x00\x00"))
    end = data.rindex(b"IEND") - 4  # before the IEND chunk's length
    path = tmp_path / "late.png"
    path.write_bytes(data[:end] + late + data[end:])
    assert Image.open(path).getexif().get(0x0112) == 6  # PIL does see it after decoding
    assert image_size(path) == (2, 4)
    assert np.array_equal(read_image(path), stored)
    mask = save(tmp_path / "mask.png", np.zeros((2, 4), np.uint8))
    check_headers([SampleFiles("late", path, mask, LabelMapping.identity(2, 255))])


def test_a_mask_with_its_own_exif_orientation_is_not_read_sideways(tmp_path):
    """A photo and its mask both stored sideways with EXIF orientation 6 (a tool that kept
    the photo's EXIF on the mask): every viewer shows them upright and aligned. The image is
    turned upright; the mask must be too, or be refused, never read sideways against it (a
    square image gives no size mismatch to catch it)."""
    upright_image = np.zeros((4, 4, 3), np.uint8)
    upright_image[:, :2] = 255  # left half white
    upright_mask = np.zeros((4, 4), np.uint8)
    upright_mask[:, :2] = 1  # class 1 on the white half
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to view: stored = upright turned back
    root = tmp_path / "own"
    for folder, array in (("images", upright_image), ("masks", upright_mask)):
        (root / "train" / folder).mkdir(parents=True)
        stored = np.ascontiguousarray(np.rot90(array, k=1))
        Image.fromarray(stored).save(root / "train" / folder / "a.png", exif=exif)
    (root / "classes.yaml").write_text(
        "classes: [{name: dark, color: [0, 0, 0]}, {name: white, color: [255, 255, 255]}]\n"
    )
    dataset = FolderDataset.split(root, "train")
    sample = dataset.load(0)
    assert np.array_equal(sample["image"], upright_image)
    assert np.array_equal(sample["label"], upright_mask)
    # The header check sees the mask upright too: a 4x6 pair stored 6x4 passes it.
    for folder, shape in (("images", (4, 6, 3)), ("masks", (4, 6))):
        stored = np.ascontiguousarray(np.rot90(np.zeros(shape, np.uint8), k=1))
        Image.fromarray(stored).save(root / "train" / folder / "b.png", exif=exif)
    assert check_headers(FolderDataset.split(root, "train").samples) == [(4, 4), (4, 6)]


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_grey_masks_of_fewer_than_8_bits_give_their_stored_values(tmp_path, bits):
    """PIL decodes a 2- or 4-bit grey PNG scaled to 0..255: a 2-bit mask's class 1 read
    as 85 (refused as an unknown value) and its class 3 as 255 (void, silently)."""
    values = np.arange(12, dtype=np.uint8).reshape(3, 4) % (1 << bits)
    path = write_low_bit_grey_png(tmp_path / "m.png", values, bits)
    assert Image.open(path).mode in ("1", "L")  # a grey mask, not a palette one
    assert np.array_equal(read_mask(path), values)


def test_the_header_check_refuses_a_mask_that_is_not_single_channel(cityscapes):
    mask = gt_file(cityscapes, "val", "aachen_000000_000019", "labelIds", image_array(1))
    with pytest.raises(DataError, match="mode RGB; store class values in a single-channel") as err:
        check_headers(CityscapesDataset(cityscapes, "val").samples)
    assert str(mask) in str(err.value)


def test_a_map_of_more_than_three_dimensions_is_named(cityscapes):
    maps = {"deep": lambda files: np.zeros((1, 2, H, W))}
    with pytest.raises(DataError, match=r"map 'deep' .*expected \[H, W\] or \[K, H, W\]"):
        CityscapesDataset(cityscapes, "val", maps=maps).load(0)


def test_labelled_pixels_are_looked_for_in_the_first_masks(tmp_path):
    void = np.full((H, W), 255, np.uint8)
    for i, mask in enumerate([void, void, TRAIN_IDS]):
        gt_file(tmp_path, "val", f"city_{i:06d}_000019", "labelTrainIds", mask)
    assert has_labelled_pixels(tmp_path, "val")  # the third mask shows road and car
    for i, label_ids in enumerate([np.zeros((H, W), np.uint8), np.full((H, W), 1, np.uint8)]):
        gt_file(tmp_path, "test", f"city_{i:06d}_000019", "labelIds", label_ids)
    assert not has_labelled_pixels(tmp_path, "test")  # unlabeled, ego vehicle: void
    gt_file(tmp_path, "test", "city_000002_000019", "labelIds", LABEL_IDS)
    assert has_labelled_pixels(tmp_path, "test")
    assert not has_labelled_pixels(tmp_path, "train")  # no masks


def test_foggy_betas_come_lightest_first_and_must_be_numbers(cityscapes):
    for beta in ("0.02", "0.005", "0.01"):
        suffix = f"_foggy_beta_{beta}"
        cityscapes_image(cityscapes, "val", "aachen_000000_000019", suffix, "leftImg8bit_foggy")
    assert foggy_betas(cityscapes, "val") == [0.005, 0.01, 0.02]
    suffix = "_foggy_beta_nan"
    cityscapes_image(cityscapes, "val", "aachen_000000_000020", suffix, "leftImg8bit_foggy")
    with pytest.raises(DataError, match=r"beta_nan\.png: cannot read its fog beta 'nan'"):
        foggy_betas(cityscapes, "val")


# --- FolderDataset -----------------------------------------------------------------------

CLASSES_YAML = """\
classes:
  - {name: background, color: [0, 0, 0]}
  - {name: object, color: [255, 0, 0]}
ignore_index: 255
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """images/{a.png, b.jpg}, masks/{a.png, b.png} storing 0, 1 and 255, classes.yaml."""
    mask = np.array([[0, 1, 255, 1]] * 4, np.uint8)
    save(tmp_path / "images" / "a.png", image_array(0, 4, 4))
    save(tmp_path / "images" / "b.jpg", image_array(1, 4, 4))
    save(tmp_path / "masks" / "a.png", mask)
    save(tmp_path / "masks" / "b.png", mask)
    (tmp_path / "classes.yaml").write_text(CLASSES_YAML)
    return tmp_path


def make_folder(root: Path, **kwargs) -> FolderDataset:
    return FolderDataset(root / "images", root / "masks", root / "classes.yaml", **kwargs)


def test_folder_data_set_matches_images_and_masks_by_stem(folder):
    dataset = make_folder(folder)
    assert dataset.names == ["a", "b"]
    assert dataset.classes == ("background", "object") and dataset.num_classes == 2
    assert dataset.colors.tolist() == [[0, 0, 0], [255, 0, 0]]
    sample = dataset.load(1)
    assert sample["image"].shape == (4, 4, 3)
    assert sample["label"][0].tolist() == [0, 1, 255, 1]
    assert dataset[0]["image"].shape == (3, 4, 4)


def test_folder_mask_values_map_stored_values(folder):
    save(folder / "masks" / "a.png", np.array([[10, 20, 0, 20]] * 4, np.uint8), palette=True)
    yaml_text = CLASSES_YAML + "mask_values: {0: 255, 10: 0, 20: 1}\n"
    (folder / "classes.yaml").write_text(yaml_text)
    dataset = make_folder(folder, allow_unlabeled=True)
    assert dataset.load(0)["label"][0].tolist() == [0, 1, 255, 1]
    with pytest.raises(DataError, match=r"b\.png: mask holds unknown values 1, 255 \(allowed"):
        dataset.load(1)  # b.png stores 1 and 255, which mask_values does not list


def test_folder_missing_masks_list_stems(folder):
    save(folder / "images" / "c.png", image_array(2, 4, 4))
    with pytest.raises(DataError, match=r"\['c'\].*masks/c\.png"):
        make_folder(folder)
    dataset = make_folder(folder, allow_unlabeled=True)
    assert np.all(dataset.load(2)["label"] == 255)
    unlabeled = FolderDataset(folder / "images", None, folder / "classes.yaml")
    assert all(s.label is None for s in unlabeled.samples)
    # A split without any mask is unlabelled, and said so (not "give every image its mask").
    shutil.rmtree(folder / "masks")
    with pytest.raises(DataError, match=r"images: an unlabelled split \(3 images, no mask; "):
        make_folder(folder)


def test_folder_bad_values_and_empty_folder(folder, tmp_path):
    save(folder / "masks" / "a.png", np.array([[0, 2, 7, 1]] * 4, np.uint8))
    with pytest.raises(DataError, match=r"values 2, 7") as err:
        make_folder(folder).load(0)
    assert "a.png" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty or its sub-folders matching \*\.png"):
        FolderDataset(tmp_path / "empty", None, folder / "classes.yaml")


def test_folder_sub_folders_are_searched_and_masks_matched_by_path(folder):
    # Two cities with the same file name: two samples, each with the mask at its path.
    for city, value in (("cityA", 0), ("cityB", 1)):
        save(folder / "images" / city / "x.png", image_array(4, 4, 4))
        save(folder / "masks" / city / "x.png", np.full((4, 4), value, np.uint8))
    dataset = make_folder(folder)
    assert dataset.names == ["a", "b", "cityA/x", "cityB/x"]
    assert [int(dataset.load(i)["label"][0, 0]) for i in (2, 3)] == [0, 1]
    (folder / "masks" / "cityB" / "x.png").unlink()
    with pytest.raises(DataError, match=r"\['cityB/x'\].*masks/cityB/x\.png"):
        make_folder(folder)


def test_folder_masks_without_their_image_are_named(folder):
    """A mask whose image is missing, misnamed or in a format not read (.tif) would drop
    its sample in silence: an error naming the masks; `data info`'s mode lists them."""
    (folder / "images" / "b.jpg").rename(folder / "images" / "b.tif")
    save(folder / "masks" / "sub" / "c.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError) as error:
        make_folder(folder)
    message = str(error.value)
    assert f"masks without an image in {folder / 'masks'}: 2 (['b.png', 'c.png']" in message
    assert f"expected e.g. {folder / 'images' / 'b'} with one of .png/.jpg/.jpeg" in message
    listed = make_folder(folder, allow_unlabeled=True)
    assert listed.names == ["a"]
    assert listed.masks_without_image == [folder / "masks" / "b.png", folder / "masks/sub/c.png"]


def test_folder_masks_match_an_upper_case_suffix(folder):
    (folder / "masks" / "a.png").rename(folder / "masks" / "a.PNG")
    dataset = make_folder(folder)
    assert dataset.samples[0].label == folder / "masks" / "a.PNG"
    assert dataset.load(0)["label"][0].tolist() == [0, 1, 255, 1]


def test_folder_duplicate_stems_are_an_error(folder):
    save(folder / "images" / "a.jpg", image_array(3, 4, 4))
    with pytest.raises(DataError, match=r"\['a'\]"):
        make_folder(folder)


def test_the_readmes_classes_yaml_is_a_valid_classes_file(tmp_path):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("**A folder data set.**")[1].split("```yaml\n")[1].split("```")[0]
    (tmp_path / "classes.yaml").write_text(example)
    spec = load_classes(tmp_path / "classes.yaml")
    assert spec.names == ("road", "car") and spec.ignore_index == 255


def test_the_documented_colour_classes_yaml_is_a_valid_classes_file(tmp_path):
    """README.md's and the folder module docstring's mask_colors examples."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("**A folder data set.**")[1]
    in_readme = section.split("```yaml\n")[2].split("```")[0]
    in_module = folder_module.__doc__.split("paint each pixel in its")[1]
    in_module = textwrap.dedent(in_module.split(":\n\n")[1].split("\n\n")[0])
    for example in (in_readme, in_module):
        assert "mask_colors: true" in example
        (tmp_path / "classes.yaml").write_text(example)
        spec = load_classes(tmp_path / "classes.yaml")
        assert spec.names == ("road", "car") and spec.mask_colors
        assert spec.void_colors == ((0, 0, 0),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("classes: []\n", "non-empty list"),
        ("classes:\n  - {name: a}\n", r"classes\[0\]\.color"),
        ("classes:\n  - {color: [1, 2, 3]}\n", r"classes\[0\] needs a 'name'"),
        ("classes:\n  - {name: a, color: [1, 2, 3]}\nignore_index: 0\n", "ignore_index"),
        ("classes:\n  - {name: a, color: [1, 2, 3]}\nmask_values: {3: 4}\n", "mask_values entry 3"),
        (  # a typo of a stored value: its lookup table once took all the memory
            "classes:\n  - {name: a, color: [1, 2, 3]}\nmask_values: {1099511627776: 0}\n",
            r"mask_values entry 1099511627776: 0 must map a stored value 0\.\.65535",
        ),
        ("classes:\n  - {name: a, color: [1, 2, 3]}\nignore: 255\n", r"unknown keys \['ignore'\]"),
        ("classes: [\n", "not valid YAML"),
        ("classes:\n  - {name: a, color: [256, 0, 0]}\n", r"classes\[0\]\.color must be"),
        ("classes:\n  - {name: a, color: [1.5, 0, 0]}\n", r"classes\[0\]\.color must be"),
        ("classes:\n  - {name: a, color: [1, 2]}\n", r"classes\[0\]\.color must be"),
        (
            "classes:\n  - {name: road, color: [1, 2, 3]}\n  - {name: car, color: [4, 5, 6]}\n"
            "  - {name: road, color: [7, 8, 9]}\n",
            r"classes\[2\] is named 'road' like classes\[0\]",
        ),
    ],
)
def test_classes_yaml_errors_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        load_classes(path)
    assert str(path) in str(err.value)


def test_folder_images_with_upper_case_suffixes_are_found(folder):
    """Cameras write IMG_1.JPG: without a mask folder (prediction, unlabeled distillation)
    nothing else would name an image left out."""
    save(folder / "images" / "c.JPG", image_array(2, 4, 4))
    save(folder / "images" / "d.PNG", image_array(3, 4, 4))
    unlabeled = FolderDataset(folder / "images", None, folder / "classes.yaml")
    assert unlabeled.names == ["a", "b", "c", "d"]


def test_folder_mask_suffix_pairs_masks_named_after_their_image(folder):
    for name in ("a", "b"):
        (folder / "masks" / f"{name}.png").rename(folder / "masks" / f"{name}_mask.png")
    (folder / "masks" / "b_mask.png").rename(folder / "masks" / "b_mask.PNG")
    dataset = make_folder(folder, mask_suffix="_mask.png")
    assert [s.label for s in dataset.samples] == [
        folder / "masks" / "a_mask.png",
        folder / "masks" / "b_mask.PNG",
    ]
    assert dataset.load(0)["label"][0].tolist() == [0, 1, 255, 1]
    # The suffix in any case, as `data info` counts masks: a_MASK.png is a's mask.
    (folder / "masks" / "a_mask.png").rename(folder / "masks" / "a_MASK.png")
    assert make_folder(folder, mask_suffix="_mask.png").samples[0].label == (
        folder / "masks" / "a_MASK.png"
    )
    save(folder / "masks" / "a_mask.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(
        DataError, match=r"two masks for the image named 'a': a_MASK\.png and a_mask\.png"
    ):
        make_folder(folder, mask_suffix="_mask.png")
    (folder / "masks" / "a_MASK.png").unlink()
    save(folder / "masks" / "c_mask.png", np.zeros((4, 4), np.uint8))  # no image c
    with pytest.raises(DataError, match=r"masks without an image .*: 1 \(\['c_mask.png'\]"):
        make_folder(folder, mask_suffix="_mask.png")


def test_folder_classes_spec_keeps_the_mask_values(folder):
    """The run's weights store the classes with their mask_values (`classes_spec`)."""
    (folder / "classes.yaml").write_text(CLASSES_YAML + "mask_values: {0: 0, 1: 1, 255: 255}\n")
    spec = make_folder(folder).classes_spec
    assert spec.names == ("background", "object") and spec.ignore_index == 255
    assert dict(spec.mask_values) == {0: 0, 1: 1, 255: 255}
    assert spec.document()["mask_values"] == {0: 0, 1: 1, 255: 255}


def test_the_ignore_index_may_be_the_first_value_past_the_classes(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text("classes:\n  - {name: a, color: [1, 2, 3]}\n  - {name: b, color: [4, 5, 6]}\n")
    assert load_classes(path).ignore_index == 255  # the default
    path.write_text(path.read_text() + "ignore_index: 2\n")
    assert load_classes(path).ignore_index == 2
    path.write_text(path.read_text().replace("ignore_index: 2", "ignore_index: 1"))
    with pytest.raises(
        DataError, match=r"ignore_index must be an integer from the number of classes \(2\) to 255"
    ):
        load_classes(path)
    # Past 255 a survey (`data info`) and the saved maps could not hold it.
    path.write_text(path.read_text().replace("ignore_index: 1", "ignore_index: 300"))
    with pytest.raises(DataError, match=r"classes\.yaml: ignore_index .* to 255, got 300"):
        load_classes(path)
    many = "".join(f"  - {{name: c{k}, color: [0, 0, 0]}}\n" for k in range(256))
    path.write_text("classes:\n" + many)
    with pytest.raises(
        DataError, match=r"classes\.yaml: 256 classes; a folder data set holds at most 255"
    ):
        load_classes(path)


@pytest.mark.parametrize(
    "mask_values",
    [
        "{-1: 0}",  # numpy would write the table's last entry
        "{'7': 0}",  # a quoted key: a string, not a stored value
        "{7: 2}",  # class ids are 0..1: 2 is one past them
        "{}",
    ],
)
def test_mask_values_entries_that_are_refused(tmp_path, mask_values):
    path = tmp_path / "classes.yaml"
    path.write_text(CLASSES_YAML + f"mask_values: {mask_values}\n")
    with pytest.raises(DataError, match="mask_values") as err:
        load_classes(path)
    assert str(path) in str(err.value)


def test_folder_splits_are_the_folders_holding_an_images_folder(folder, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(folder, root / "train")
    (root / "train" / "classes.yaml").rename(root / "classes.yaml")
    (root / "notes").mkdir()  # no images/ inside: no split
    (root / "val" / "images").mkdir(parents=True)
    assert folder_splits(root) == ["train", "val"]


def test_colorize_paints_classes_and_leaves_an_ignore_value_past_them_black():
    """A folder data set's ignore value may be the first id past its classes (2 here)."""
    palette = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    out = colorize(np.array([[0, 1, 2, 255]], np.uint8), palette)
    assert out.tolist() == [[[10, 20, 30], [40, 50, 60], [0, 0, 0], [0, 0, 0]]]
    assert TRAIN_ID_COLORS[0].tolist() == [128, 64, 128]  # road
    assert TRAIN_ID_COLORS[18].tolist() == [119, 11, 32]  # bicycle


# --- extending load, DataLoader workers --------------------------------------------------


class PatternDataset(SegmentationDataset):
    """An in-memory data set: what a wrapper overriding `load` looks like."""

    def __init__(self, transform) -> None:
        files = [SampleFiles(f"s{i}", Path(f"s{i}.png"), None, None) for i in range(4)]
        super().__init__(files, ("a", "b"), np.zeros((2, 3)), transform=transform)

    def load(self, index: int) -> dict:
        rows = np.arange(32)[:, None].repeat(32, 1)
        return {
            "image": np.stack([rows * 4] * 3, -1).astype(np.uint8),
            "label": (rows % 2).astype(np.uint8),
            "maps": {"rows": rows[None].astype(np.float32)},
            "name": f"s{index}",
            "index": index,
        }


def test_worker_augmentations_are_reproducible_and_differ_between_samples():
    def crops() -> torch.Tensor:
        dataset = PatternDataset(build_train_transform((8, 8)))
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
        return torch.cat([batch["maps"]["rows"] for batch in loader])

    torch.manual_seed(0)
    first = crops()
    torch.manual_seed(0)
    assert torch.equal(crops(), first)
    assert len({tuple(crop.flatten().tolist()) for crop in first}) == 4


class _FailingAt2(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        if index == 2:
            raise DataError("bad/img2.png: cannot read the image, corrupt or truncated")
        return index


def test_an_error_in_a_loader_worker_keeps_its_one_line_message() -> None:
    # PyTorch re-raises it with the worker's whole traceback as the message; the CLI
    # prints the message, which must name the file as it does without workers.
    with pytest.raises(DataError) as error:
        list(torch.utils.data.DataLoader(_FailingAt2(), num_workers=1))
    assert str(error.value) == "bad/img2.png: cannot read the image, corrupt or truncated"
    unrelated = "Caught DataError in DataLoader worker process 1. segdistill.errors.DataError: x"
    assert str(DataError(unrelated)) == unrelated  # only the exact wrapper is unwrapped


def test_group_consecutive_splits_at_max_size_and_at_each_key_change() -> None:
    words = ["aa", "bb", "cc", "d", "ee", "f", "g"]
    groups = [["aa", "bb"], ["cc"], ["d"], ["ee"], ["f", "g"]]  # key: the length
    assert list(group_consecutive(words, len, 2)) == groups
    assert list(group_consecutive(words, len, 5)) == [["aa", "bb", "cc"], ["d"], ["ee"], ["f", "g"]]
    assert list(group_consecutive(words, lambda _: 0, 1)) == [[w] for w in words]
    assert list(group_consecutive([], len, 2)) == []
    # Lazy: a group comes out as soon as the item that cannot join it has been read.
    read: list[str] = []

    def stream() -> Iterator[str]:
        for word in words:
            read.append(word)
            yield word

    lazy = group_consecutive(stream(), len, 2)
    assert next(lazy) == ["aa", "bb"] and read == ["aa", "bb", "cc"]
    with pytest.raises(ValueError, match="max_size must be >= 1, got 0"):
        next(group_consecutive(words, len, 0))


class _CtrlCProbe(torch.utils.data.Dataset):
    """Each item: whether the process that loads it ignores Ctrl-C."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return int(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)


def test_loader_workers_leave_ctrl_c_to_the_main_process():
    """A terminal's Ctrl-C reaches the workers too; with `ignore_ctrl_c` none dies of it."""
    # Ctrl-C handled, as in a terminal, whatever started the tests (a background job
    # inherits it ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        loader = torch.utils.data.DataLoader(
            _CtrlCProbe(), num_workers=1, worker_init_fn=ignore_ctrl_c
        )
        assert [int(flag) for flag in loader] == [1, 1]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the main keeps it
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("masks", [True, False])
def test_folder_images_sharing_a_name_are_refused_with_or_without_masks(folder, masks):
    """a.png and a.jpg would be two samples named "a" (their outputs overwrite each other),
    also when the images have no masks (prediction, unlabeled distillation)."""
    save(folder / "images" / "a.jpg", image_array(3, 4, 4))
    with pytest.raises(DataError, match=r"several images share the names \['a'\]") as err:
        FolderDataset(
            folder / "images", folder / "masks" if masks else None, folder / "classes.yaml"
        )
    assert str(folder / "images") in str(err.value)


def test_an_ignore_index_past_8_bits_is_refused(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text("classes:\n  - {name: a, color: [1, 2, 3]}\nignore_index: 256\n")
    with pytest.raises(DataError, match="ignore_index must be an integer") as err:
        load_classes(path)
    assert str(path) in str(err.value) and "256" in str(err.value)


@pytest.mark.parametrize("beta", ["0.020", "2e-2"])
def test_a_fog_beta_written_another_way_is_named_not_listed(cityscapes, beta):
    """A beta written "0.020" reads as 0.02, but the foggy data set of beta 0.02 looks for
    "_beta_0.02.png" and would find none of these images: listing 0.02 would promise an
    empty set."""
    suffix = f"_foggy_beta_{beta}"
    cityscapes_image(cityscapes, "val", "aachen_000000_000019", suffix, "leftImg8bit_foggy")
    with pytest.raises(DataError, match=rf"beta_{beta}\.png: cannot read its fog beta '{beta}'"):
        foggy_betas(cityscapes, "val")


def test_hidden_files_and_folders_are_no_images_or_masks(folder):
    """macOS writes `._a.png` (AppleDouble, no image) beside `a.png` on foreign disks:
    read as an image it failed `data info` and stopped training. Hidden files and
    folders are left out of images and masks alike."""
    for where in ("images", "masks"):
        (folder / where / "._a.png").write_bytes(b"AppleDouble resource fork")
        (folder / where / ".cache").mkdir()
        save(folder / where / ".cache" / "c.png", np.zeros((4, 4), np.uint8))
    dataset = make_folder(folder)
    assert dataset.names == ["a", "b"]
    assert [s.label.name for s in dataset.samples] == ["a.png", "b.png"]
    assert dataset.masks_without_image == []


def test_folders_linked_into_a_data_set_are_read_once(folder, tmp_path_factory) -> None:
    """City folders linked from shared storage (ln -s) are data set folders: Path.rglob
    skipped them, so their images and masks were not there. A link back up does not loop."""
    storage = tmp_path_factory.mktemp("storage")
    mask = np.array([[1, 0, 0, 1]] * 4, np.uint8)
    save(storage / "images" / "city" / "c.png", image_array(2, 4, 4))
    save(storage / "masks" / "city" / "c.png", mask)
    for kind in ("images", "masks"):
        (folder / kind / "city").symlink_to(storage / kind / "city", target_is_directory=True)
        (storage / kind / "city" / "up").symlink_to(folder / kind, target_is_directory=True)
    dataset = make_folder(folder)
    assert dataset.names == ["a", "b", "city/c"]
    assert dataset.load(2)["label"].tolist() == mask.tolist()


# --- Colour masks (classes.yaml mask_colors) ----------------------------------------------

COLOR_CLASSES_YAML = """\
classes:
  - {name: road, color: [128, 64, 128]}
  - {name: car, color: [0, 0, 142]}
  - {name: sky, color: [70, 130, 180]}
mask_colors: true
void_colors: [[0, 0, 0], [255, 255, 255]]
"""
CLASS_COLORS = [(128, 64, 128), (0, 0, 142), (70, 130, 180)]
VOID_COLORS = [(0, 0, 0), (255, 255, 255)]


def colour_mask(seed: int, height: int = 4, width: int = 5) -> np.ndarray:
    """uint8 [H, W, 3] of the class and void colours, each pixel drawn at random."""
    palette = np.array(CLASS_COLORS + VOID_COLORS, np.uint8)
    return palette[np.random.default_rng(seed).integers(0, len(palette), (height, width))]


def ids_by_hand(mask: np.ndarray) -> list[list[int]]:
    """The class id of each pixel of an [H, W, 3] colour mask, one pixel at a time."""
    by_colour = {colour: k for k, colour in enumerate(CLASS_COLORS)}
    by_colour.update({colour: 255 for colour in VOID_COLORS})
    return [[by_colour[tuple(int(c) for c in pixel)] for pixel in row] for row in mask]


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    """images/{a.png, b.png}, RGB masks/{a.png, b.png} of COLOR_CLASSES_YAML's colours."""
    for k, name in enumerate(("a", "b")):
        save(tmp_path / "images" / f"{name}.png", image_array(k, 4, 5))
        save(tmp_path / "masks" / f"{name}.png", colour_mask(k))
    (tmp_path / "classes.yaml").write_text(COLOR_CLASSES_YAML)
    return tmp_path


def test_colour_masks_give_each_pixel_the_class_of_its_colour(colour_folder):
    dataset = make_folder(colour_folder)
    assert check_headers(dataset.samples) == [(4, 5), (4, 5)]
    for index, name in enumerate(("a", "b")):
        label = dataset.load(index)["label"]
        expected = ids_by_hand(np.asarray(Image.open(colour_folder / "masks" / f"{name}.png")))
        assert label.dtype == np.uint8 and label.tolist() == expected
    # Both void colours occur, read as the ignore value.
    assert 255 in dataset.load(0)["label"]


def test_an_rgba_colour_mask_is_read_without_its_alpha(colour_folder):
    mask = colour_mask(3)
    alpha = np.random.default_rng(4).integers(0, 256, (4, 5, 1), dtype=np.uint8)
    save(colour_folder / "masks" / "a.png", np.concatenate([mask, alpha], axis=2))
    assert Image.open(colour_folder / "masks" / "a.png").mode == "RGBA"
    dataset = make_folder(colour_folder)
    check_headers(dataset.samples)
    assert dataset.load(0)["label"].tolist() == ids_by_hand(mask)


def test_a_palette_colour_mask_is_read_by_its_palettes_colours(colour_folder):
    """Indices 0..4 whose palette entries are the colours: the colours count, not the index."""
    indices = np.random.default_rng(5).integers(0, 5, (4, 5)).astype(np.uint8)
    image = Image.frombytes("P", (5, 4), indices.tobytes())
    image.putpalette([c for colour in CLASS_COLORS + VOID_COLORS for c in colour])
    image.save(colour_folder / "masks" / "a.png")
    dataset = make_folder(colour_folder)
    check_headers(dataset.samples)
    expected = ids_by_hand(np.array(CLASS_COLORS + VOID_COLORS, np.uint8)[indices])
    assert dataset.load(0)["label"].tolist() == expected


def test_a_16_bit_colour_mask_is_refused_not_cut_to_8_bits(colour_folder):
    path = write_png16(colour_folder / "masks" / "a.png", colour_mask(0).astype(np.uint16) * 257)
    assert Image.open(path).mode == "RGB"  # what PIL would decode silently
    dataset = make_folder(colour_folder)
    for read in (lambda: dataset.load(0), lambda: check_headers(dataset.samples)):
        with pytest.raises(DataError, match="RGB 16-bit image") as err:
            read()
        assert str(path) in str(err.value)


def test_an_unknown_colour_is_named_with_its_pixels_and_what_to_do(colour_folder):
    mask = colour_mask(0)
    mask[0, :3] = (9, 9, 9)
    mask[1, 0] = (1, 2, 3)
    path = save(colour_folder / "masks" / "a.png", mask)
    with pytest.raises(DataError) as err:
        make_folder(colour_folder).load(0)
    message = str(err.value)
    assert message.startswith(f"{path}: mask holds colours that are no class's colour")
    # The most frequent first, each with its pixel count.
    assert "([9, 9, 9]: 3 pixels, [1, 2, 3]: 1 pixels)" in message
    assert "classes.yaml" in message and "void_colors" in message


def test_a_colour_past_every_class_colour_is_unknown_not_an_index_error():
    """The sorted lookup lands past its last key for a colour above them all."""
    spec = ClassesSpec(("a", "b"), np.array([[0, 0, 1], [0, 0, 2]], np.uint8), mask_colors=True)
    raw = np.array([[1, 2, 0xFFFFFF]], np.int32)  # packed colours
    with pytest.raises(DataError, match=r"m\.png: .*\(\[255, 255, 255\]: 1 pixels\)"):
        spec.mapping.decode(raw, Path("m.png"))
    assert spec.mapping.decode(raw[:, :2], Path("m.png")).tolist() == [[0, 1]]


def test_a_grey_mask_is_refused_when_classes_yaml_says_colours(colour_folder):
    """Refused when read and by the header check (before training starts)."""
    grey = save(colour_folder / "masks" / "a.png", np.zeros((4, 5), np.uint8))
    dataset = make_folder(colour_folder)
    for read in (lambda: dataset.load(0), lambda: check_headers(dataset.samples)):
        with pytest.raises(DataError, match="mode L, but classes.yaml sets mask_colors") as err:
            read()
        assert str(err.value).startswith(str(grey))


def test_a_colour_mask_without_mask_colors_names_the_setting(folder):
    save(folder / "masks" / "a.png", colour_mask(0, 4, 4))
    dataset = make_folder(folder)
    for read in (lambda: dataset.load(0), lambda: check_headers(dataset.samples)):
        with pytest.raises(DataError, match="mode RGB; .*set mask_colors: true"):
            read()


def test_a_jpeg_colour_mask_is_refused(tmp_path):
    path = tmp_path / "m.jpg"
    Image.fromarray(colour_mask(0)).save(path)
    with pytest.raises(DataError, match=r"m\.jpg: a JPEG colour mask; save it as PNG"):
        read_mask(path, colors=True)


def test_a_phones_mpo_colour_mask_is_refused_like_a_jpeg(tmp_path):
    """A phone's JPEG opens as MPO (two frames): as lossy, whatever its file name says."""
    path = tmp_path / "m.png"
    frame = Image.fromarray(colour_mask(0))
    frame.save(path, format="MPO", save_all=True, append_images=[frame])
    assert Image.open(path).format == "MPO"
    with pytest.raises(DataError, match=r"m\.png: a MPO colour mask; save it as PNG"):
        read_mask(path, colors=True)


def test_a_colour_mask_with_an_exif_orientation_is_turned_upright(colour_folder):
    upright = colour_mask(6, 4, 6)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned back, viewed turned 90 degrees clockwise
    for folder, array in (("images", image_array(0, 4, 6)), ("masks", upright)):
        stored = np.ascontiguousarray(np.rot90(array, k=1))
        Image.fromarray(stored).save(colour_folder / folder / "a.png", exif=exif)
    dataset = make_folder(colour_folder)
    assert check_headers(dataset.samples)[0] == (4, 6)
    assert dataset.load(0)["label"].tolist() == ids_by_hand(upright)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("mask_values: {0: 0}\n", "mask_values and mask_colors contradict each other"),
        (
            "  - {name: lane, color: [0, 0, 142]}\n",
            r"classes\[3\] \(lane\) has the color \[0, 0, 142\] of classes\[1\] \(car\)",
        ),
        (
            "void_colors: [[1, 1, 1], [70, 130, 180]]\n",
            r"void_colors\[1\] \[70, 130, 180\] is the color of classes\[2\] \(sky\)",
        ),
        ("void_colors: [[0, 0]]\n", r"void_colors\[0\] must be \[r, g, b\] \(0\.\.255\)"),
        ("void_colors: [[0, 0, 256]]\n", r"void_colors\[0\] must be \[r, g, b\]"),
        ("void_colors: [[0, 0, 0, 0]]\n", r"void_colors\[0\] must be \[r, g, b\]"),  # RGBA
        ("void_colors: [0, 0, 0]\n", r"void_colors\[0\] must be \[r, g, b\]"),
        ("void_colors: black\n", "void_colors must be a list"),
    ],
)
def test_colour_settings_that_are_refused_name_the_file_and_entry(tmp_path, extra, message):
    base = COLOR_CLASSES_YAML.replace("void_colors: [[0, 0, 0], [255, 255, 255]]\n", "")
    # A class entry goes into the classes list; the other keys after it.
    if extra.startswith("  - "):
        text = base.replace("mask_colors: true\n", extra + "mask_colors: true\n")
    else:
        text = base + extra
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        load_classes(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CLASSES_YAML + "mask_colors: yes please\n", "mask_colors must be true or false"),
        (CLASSES_YAML + "void_colors: [[0, 0, 0]]\n", "void_colors needs mask_colors: true"),
    ],
)
def test_colour_keys_without_colour_masks_are_refused(tmp_path, text, message):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_classes(path)


def test_two_classes_may_share_a_display_colour_without_colour_masks(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text("classes: [{name: a, color: [1, 1, 1]}, {name: b, color: [1, 1, 1]}]\n")
    assert not load_classes(path).mask_colors


def test_the_colour_settings_round_trip_through_the_document(colour_folder):
    """As the weights store them (JSON): read back, they decode masks as the file did."""
    spec = make_folder(colour_folder).classes_spec
    document = json.loads(json.dumps(spec.document()))
    assert document["mask_colors"] is True
    assert document["void_colors"] == [[0, 0, 0], [255, 255, 255]]
    again = parse_classes(document, "weights")
    assert again.mask_colors and again.void_colors == ((0, 0, 0), (255, 255, 255))
    assert again.mask_values is None and again.names == ("road", "car", "sky")
    mask = colour_mask(7)
    packed = read_mask(save(colour_folder / "m.png", mask), colors=True)
    assert again.mapping.decode(packed, Path("m.png")).tolist() == ids_by_hand(mask)
    # A document of single-channel masks has neither key, and still parses as one.
    plain = ClassesSpec(("a",), np.zeros((1, 3), np.uint8)).document()
    assert "mask_colors" not in plain and "void_colors" not in plain
    assert not parse_classes(plain, "old weights").mask_colors


def test_a_colour_mask_data_set_trains_through_the_training_entry(tmp_path):
    """Two splits of colour masks, read by `build_dataset` as a training run reads them."""
    from segdistill import train as training

    root = tmp_path / "own"
    masks = {}
    for split, seeds in (("train", (0, 1)), ("val", (2,))):
        for seed in seeds:
            save(root / split / "images" / f"i{seed}.png", image_array(seed, 8, 8))
            masks[split, seed] = colour_mask(seed, 8, 8)
            save(root / split / "masks" / f"i{seed}.png", masks[split, seed])
    (root / "classes.yaml").write_text(COLOR_CLASSES_YAML)
    cfg = DataConfig(root=str(root), format="folder", num_classes=3, crop_size=[4, 4])
    train_set = training.build_dataset(cfg, "train", train=True)
    val_set = training.build_dataset(cfg, "val", train=False)
    check_headers([*train_set.samples, *val_set.samples])
    for dataset, split, seeds in ((train_set, "train", (0, 1)), (val_set, "val", (2,))):
        for index, seed in enumerate(seeds):
            assert dataset.load(index)["label"].tolist() == ids_by_hand(masks[split, seed])
    sample = train_set[0]  # augmented: a 4x4 crop of class ids and void only
    assert sample["label"].shape == (4, 4)
    assert set(sample["label"].unique().tolist()) <= {0, 1, 2, 255}
    assert val_set.classes_spec.mask_colors  # what the run's weights store
    # Unlabelled images added for distillation keep the labelled ones' colour masks.
    save(tmp_path / "extra" / "e.png", image_array(9, 8, 8))
    both = training.add_unlabeled_images(train_set, tmp_path / "extra")
    assert both.classes_spec.document() == train_set.classes_spec.document()
    assert both.load(0)["label"].tolist() == ids_by_hand(masks["train", 0])
