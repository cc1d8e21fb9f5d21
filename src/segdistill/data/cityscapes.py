"""Cityscapes-layout data sets: real Cityscapes, Foggy/Rain Cityscapes and SynthStreets.

Layout under `root` (the official one; SynthStreets and its shifted copies use it too):

    leftImg8bit/{split}/{city}/{base}_leftImg8bit.png
    gtFine/{split}/{city}/{base}_gtFine_labelTrainIds.png   (preferred when present)
    gtFine/{split}/{city}/{base}_gtFine_labelIds.png        (mapped to train ids)

with `base` = `{city}_{seq}_{frame}`. The weather variants only swap the image folder and
file suffix and share `gtFine`:

    foggy: leftImg8bit_foggy/{split}/{city}/{base}_leftImg8bit_foggy_beta_{beta}.png
    rain:  leftImg8bit_rain/{split}/{city}/{base}_leftImg8bit_rain_{rain_pattern}.png
           (rain_pattern is a glob, e.g. "alpha_0.01_beta_0.005_dropsize_0.01_pattern_1";
           the default "*" takes every rain rendering)

A sample's name is its image file stem without "_leftImg8bit", so it is `base` for the clean
images and stays unique for the variants ("{base}_foggy_beta_0.02").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import id2label

from segdistill.data.base import (
    LabelMapping,
    MapReader,
    SampleFiles,
    SegmentationDataset,
    read_mask,
)
from segdistill.data.folder import CLASSES_FILE
from segdistill.data.labels import (
    CLASS_NAMES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    NUM_CLASSES,
    TRAIN_ID_COLORS,
)
from segdistill.data.transforms import Sample
from segdistill.errors import ConfigError, DataError

TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
DEPTH_SUFFIX = "_depth.png"
DEPTH_SCALE = 0.01  # depth PNGs (SynthStreets) store centimetres; maps["depth"] is in metres
VARIANTS = ("clean", "foggy", "rain")


def image_location(
    variant: str, beta: float | str = 0.02, rain_pattern: str = "*"
) -> tuple[str, str]:
    """(image folder, file-name glob) of a variant: "clean", "foggy" or "rain". `beta` may
    be a glob too ("*": every fog density)."""
    if variant == "clean":
        return "leftImg8bit", "*_leftImg8bit.png"
    if variant == "foggy":
        return "leftImg8bit_foggy", f"*_leftImg8bit_foggy_beta_{beta}.png"
    if variant == "rain":
        return "leftImg8bit_rain", f"*_leftImg8bit_rain_{rain_pattern}.png"
    raise DataError(f"unknown Cityscapes variant {variant!r}; use one of {', '.join(VARIANTS)}")


def base_name(image: Path) -> str:
    """`{city}_{seq}_{frame}` of any variant's image file: the stem before "_leftImg8bit"."""
    return image.name.split("_leftImg8bit")[0]


def gt_path(image: Path, suffix: str) -> Path:
    """The gtFine file of an image at root/{image folder}/{split}/{city}/: root/gtFine/... ."""
    split_dir = image.parent.parent
    root = split_dir.parent.parent
    return root / "gtFine" / split_dir.name / image.parent.name / f"{base_name(image)}{suffix}"


def label_mappings(ignore_index: int) -> dict[str, LabelMapping]:
    """How each gtFine file kind becomes train ids, by file suffix.

    labelIds: the official table (unknown ids are errors, void ids become `ignore_index`);
    labelTrainIds: 0..18 as they are and 255 (the file format's void) -> `ignore_index`.
    """

    def train_id(file_value: int) -> int:
        # The files and the official table write void as 255; the caller may want another value.
        return ignore_index if file_value == IGNORE_INDEX else file_value

    label_ids = {i: train_id(int(LABEL_ID_TO_TRAIN_ID[i])) for i in id2label if i >= 0}
    train_ids = {i: train_id(i) for i in [*range(NUM_CLASSES), IGNORE_INDEX]}
    return {
        LABEL_IDS_SUFFIX: LabelMapping(label_ids, ignore_index),
        TRAIN_IDS_SUFFIX: LabelMapping(train_ids, ignore_index),
    }


def split_folders(root: Path) -> list[str]:
    """The splits of a Cityscapes-layout tree: the folders in `root`/leftImg8bit that hold
    clean images (<city>/*_leftImg8bit.png), sorted. Other folders there (`__MACOSX` of an
    unpacked archive, an empty folder) are no split."""
    return variant_splits(root, "clean")


class GtFineMap:
    """Map reader: the single-channel PNG gtFine/{split}/{city}/{base}{suffix}, times `scale`,
    as float32 [1, H, W].

    E.g. SynthStreets' `GtFineMap("_depth.png", DEPTH_SCALE)` (metres, 0 = no depth, as the
    crop padding) or its OOD masks `GtFineMap("_gtFine_anomaly.png")` (1 anomaly, 0 inlier,
    255 void).
    """

    def __init__(self, suffix: str, scale: float = 1.0) -> None:
        self.suffix = suffix
        self.scale = scale

    def __call__(self, files: SampleFiles) -> np.ndarray:
        values = read_mask(gt_path(files.image, self.suffix)).astype(np.float32)
        return values[None] * self.scale

    def __repr__(self) -> str:
        return f"GtFineMap({self.suffix!r}, scale={self.scale})"


class CityscapesDataset(SegmentationDataset):
    """A Cityscapes-layout tree; samples sorted by image path.

    root:            the folder holding leftImg8bit*/ and gtFine/.
    split:           "train", "val", "test", or any split folder present.
    variant:         "clean", "foggy" (with `beta`) or "rain" (with the glob `rain_pattern`).
    depth:           add maps["depth"] [1, H, W] in metres from `{base}_depth.png` (uint16
                     centimetres; 0 = no depth, e.g. sky).
    maps:            further extra dense maps {name: reader(SampleFiles) -> [H, W] | [K, H, W]}.
    allow_unlabeled: images without gtFine files get an all-ignore label instead of an error
                     (e.g. unlabeled images for distillation).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[Sample], Sample] | None = None,
        ignore_index: int = IGNORE_INDEX,
        *,
        variant: str = "clean",
        beta: float = 0.02,
        rain_pattern: str = "*",
        depth: bool = False,
        maps: Mapping[str, MapReader] | None = None,
        allow_unlabeled: bool = False,
    ) -> None:
        if not (isinstance(ignore_index, int) and NUM_CLASSES <= ignore_index <= 255):
            # -1 or -100 (PyTorch's habit) does not fit the 8-bit labels, and a class id
            # would merge the void pixels into that class.
            raise ConfigError(
                f"ignore_index={ignore_index!r} must be an integer from {NUM_CLASSES} (the "
                "number of Cityscapes classes) to 255"
            )
        self.root = Path(root)
        self.split = split
        folder, pattern = image_location(variant, beta, rain_pattern)
        images = _find_images(self.root, folder, split, pattern)
        readers = dict(maps or {})
        if depth:
            readers["depth"] = GtFineMap(DEPTH_SUFFIX, DEPTH_SCALE)
        super().__init__(
            samples=_pair_with_labels(images, label_mappings(ignore_index), allow_unlabeled),
            classes=CLASS_NAMES,
            colors=TRAIN_ID_COLORS,
            ignore_index=ignore_index,
            transform=transform,
            maps=readers,
        )


def _find_images(root: Path, folder: str, split: str, pattern: str) -> list[Path]:
    """Sorted image files root/folder/split/*/pattern; DataError naming what was searched."""
    if not root.is_dir():
        raise DataError(f"data set root {root} does not exist or is not a folder")
    split_dir = root / folder / split
    if not split_dir.is_dir():
        parent = root / folder
        found = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        # A folder data set read in the Cityscapes layout, data.format's default.
        folder_set = (
            f"; {root} holds {CLASSES_FILE}, a folder data set: set data.format=folder"
            if (root / CLASSES_FILE).is_file()
            else ""
        )
        raise DataError(
            f"{split_dir} does not exist (split folders in {parent}: "
            f"{', '.join(found) or 'none'}){folder_set}"
        )
    images = sorted(split_dir.glob(f"*/{pattern}"))
    if not images:
        raise DataError(f"no images in {root} matching {folder}/{split}/*/{pattern}")
    return images


def _find_label(image: Path) -> tuple[Path, str] | None:
    """(gtFine file, its suffix) of an image, labelTrainIds first; None when there is none."""
    for suffix in (TRAIN_IDS_SUFFIX, LABEL_IDS_SUFFIX):
        path = gt_path(image, suffix)
        if path.is_file():
            return path, suffix
    return None


def _pair_with_labels(
    images: list[Path], mappings: dict[str, LabelMapping], allow_unlabeled: bool
) -> list[SampleFiles]:
    """One SampleFiles per image; DataError when masks are missing (unless allowed)."""
    samples, missing = [], []
    for image in images:
        name = image.stem.replace("_leftImg8bit", "", 1)
        found = _find_label(image)
        if found is None:
            missing.append(image)
            samples.append(SampleFiles(name, image, None, mappings[TRAIN_IDS_SUFFIX]))
        else:
            samples.append(SampleFiles(name, image, found[0], mappings[found[1]]))
    if missing and not allow_unlabeled:
        raise DataError(
            f"images without a mask: {len(missing)} of {len(images)}, e.g. {missing[0]}: expected "
            f"{gt_path(missing[0], LABEL_IDS_SUFFIX)} or {gt_path(missing[0], TRAIN_IDS_SUFFIX)} "
            "(give every image of the split its mask; images without one can teach a student "
            "as distill.unlabeled_root)"
        )
    return samples


def variant_splits(root: Path, variant: str) -> list[str]:
    """The split folders under `root` that hold images of `variant` ("foggy": any beta;
    "rain": any rain pattern), sorted."""
    folder, pattern = image_location(variant, beta="*")
    images = root / folder
    if not images.is_dir():
        return []
    return sorted(
        d.name for d in images.iterdir() if d.is_dir() and next(d.glob(f"*/{pattern}"), None)
    )


def foggy_betas(root: Path, split: str) -> list[float]:
    """The fog attenuations of the Foggy Cityscapes images in `split`, lightest first;
    DataError naming a file whose beta does not read back as `image_location` names it."""
    folder, pattern = image_location("foggy", beta="*")
    betas = set()
    for image in (root / folder / split).glob(f"*/{pattern}"):
        text = image.name.removesuffix(".png").rsplit("_beta_", 1)[-1]
        try:
            beta = float(text)
        except ValueError:
            beta = math.nan
        if not math.isfinite(beta) or not fnmatch(image.name, image_location("foggy", beta)[1]):
            raise DataError(
                f"{image}: cannot read its fog beta {text!r}; Foggy Cityscapes names its images "
                "*_leftImg8bit_foggy_beta_{0.005,0.01,0.02}.png"
            )
        betas.add(beta)
    return sorted(betas)


# Masks read to tell a labelled split from an unlabelled one: a labelled split shows classes
# in its first mask already, and an unlabelled one (all masks void) costs only these reads.
LABEL_PROBE = 3


def has_labelled_pixels(root: Path, split: str, probe: int = LABEL_PROBE) -> bool:
    """Whether any of the first `probe` masks of gtFine/`split` (labelTrainIds when the split
    has them, else labelIds) holds a pixel of a class. False without masks, and for the
    official test split, whose masks mark only the ego vehicle and the rectification
    border (void)."""
    mappings = label_mappings(IGNORE_INDEX)
    folder = root / "gtFine" / split
    for suffix in (TRAIN_IDS_SUFFIX, LABEL_IDS_SUFFIX):
        masks = sorted(folder.glob(f"*/*{suffix}"))[:probe]
        if masks:
            return any(
                (mappings[suffix].decode(read_mask(mask), mask) != IGNORE_INDEX).any()
                for mask in masks
            )
    return False
