"""Checking a data set file by file, and its class statistics (`segdistill data info`).

`own_data_set(root)` says which Cityscapes-layout or folder data set lies at `root` (not
SynthStreets) and opens its splits one at a time (`OwnDataSet`).

`survey(dataset)` decodes every sample of a `SegmentationDataset` as training reads it
(image and mask, the mask's values through its mapping) and counts, per class id, its pixels
and the images it occurs in. A sample that cannot be read does not stop the survey: its
error, which names the file, is listed, so that one pass finds every bad file of a data
set instead of one per training run. In a split where some images have a mask, each image
without one is listed too (its mask is missing); a split without any mask is unlabelled
(e.g. a test split), which is no problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segdistill.data.base import SegmentationDataset
from segdistill.data.cityscapes import CityscapesDataset, image_location, split_folders
from segdistill.data.folder import (
    CLASSES_FILE,
    IMAGES_DIR,
    MASKS_DIR,
    FolderDataset,
    folder_splits,
    images_below,
    is_folder_data_set,
    masks_below,
)
from segdistill.data.synthstreets import META_FILE, PARTIAL_FILE
from segdistill.errors import DataError

# Class ids and the ignore value all fit in 0..255 (data.ignore_index is checked so).
ID_RANGE = 256


@dataclass
class Survey:
    """What `survey` found in one split.

    masks: images with a mask file; class_pixels / class_images: [256] pixels of each class
    id (the ignore value included) and the number of labelled images it occurs in;
    unlabeled: readable images without a mask (not counted in the class statistics);
    problems: the errors of the samples that could not be read and, in a split with masks,
    the images without one (each names its file); masks_without_image: the mask files no
    image matches (`SegmentationDataset.masks_without_image`); unread_masks: image files
    among the masks that are not read (`SegmentationDataset.unread_masks`).
    """

    name: str
    images: int
    masks: int = 0
    unlabeled: int = 0
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(ID_RANGE, np.int64))
    class_images: np.ndarray = field(default_factory=lambda: np.zeros(ID_RANGE, np.int64))
    problems: list[str] = field(default_factory=list)
    masks_without_image: list[Path] = field(default_factory=list)
    unread_masks: list[Path] = field(default_factory=list)


def survey(dataset: SegmentationDataset, name: str, progress: bool = True) -> Survey:
    """Read every sample of `dataset` (module docstring); `name` labels the split."""
    masks = sum(files.label is not None for files in dataset.samples)
    found = Survey(name, len(dataset), masks)
    for index in tqdm(range(len(dataset)), desc=name, unit="image", disable=not progress):
        try:
            label = dataset.load(index)["label"]  # an image without a mask is still read
        except DataError as error:
            found.problems.append(str(error))
            continue
        files = dataset.samples[index]
        if files.label is None:
            found.unlabeled += 1  # its all-void label is no class statistic
            if masks:
                found.problems.append(
                    f"{files.image}: no mask, though other images of {name} have one "
                    f"(images with a mask: {masks} of {len(dataset)})"
                )
            continue
        counts = np.bincount(label.ravel().astype(np.int64), minlength=ID_RANGE)
        found.class_pixels += counts
        found.class_images += counts > 0
    found.masks_without_image = list(dataset.masks_without_image)
    found.unread_masks = list(dataset.unread_masks)
    return found


@dataclass(frozen=True)
class OwnDataSet:
    """A Cityscapes-layout or folder data set that is not SynthStreets.

    layout: where a split's images lie, below `root`; splits: the split folders holding
    images; skipped: the folders where splits lie that hold none (`__MACOSX`, an empty
    folder); open: a split's data set, images without a mask kept (to be counted). Splits
    are opened one at a time, so that a bad split stops only what reads it.
    masks_without_image: the masks of the skipped folders' splits (a folder data set's
    `masks/` beside an `images/` without images, e.g. all .tif).
    """

    root: Path
    kind: str
    layout: str
    splits: list[str]
    skipped: list[Path]
    open: Callable[[str], SegmentationDataset]
    masks_without_image: list[Path] = field(default_factory=list)


def own_data_set(root: Path) -> OwnDataSet | None:
    """The Cityscapes-layout or folder data set at `root` (no meta.json); None for
    SynthStreets or anything else. DataError when `root` is no folder, or when no split
    folder holds images."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {root} {what}")
    if (root / META_FILE).exists() or (root / PARTIAL_FILE).exists():
        return None
    if is_folder_data_set(root):
        holding = {root / split / IMAGES_DIR: split for split in folder_splits(root)}
        empty = [folder for folder in holding if not images_below(folder)]
        data = OwnDataSet(
            root,
            f"folder data set ({CLASSES_FILE})",
            f"<split>/{IMAGES_DIR}/",
            [split for folder, split in holding.items() if folder not in empty],
            empty,
            lambda split: FolderDataset.split(root, split, allow_unlabeled=True),
            [path for folder in empty for _, path in masks_below(folder.parent / MASKS_DIR)],
        )
    elif (root / "leftImg8bit").is_dir():
        splits = split_folders(root)
        folders = sorted(d for d in (root / "leftImg8bit").iterdir() if d.is_dir())
        data = OwnDataSet(
            root,
            "Cityscapes layout",
            f"leftImg8bit/<split>/<city>/{image_location('clean')[1]}",
            splits,
            [folder for folder in folders if folder.name not in splits],
            lambda split: CityscapesDataset(root, split, allow_unlabeled=True),
        )
    else:
        return None
    if not data.splits:
        skipped = f" ({', '.join(map(str, data.skipped))} hold none)" if data.skipped else ""
        raise DataError(
            f"{root}: {data.kind} without any split folder holding images: expected "
            f"{root}/{data.layout}{skipped}"
        )
    return data
