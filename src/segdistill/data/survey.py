"""Checking a data set file by file, and its class statistics (`segdistill data info`).

`survey(dataset)` decodes every sample of a `SegmentationDataset` as training reads it
(image and mask, the mask's values through its mapping) and counts, per class id, its pixels
and the images it occurs in. A sample that cannot be read does not stop the survey: its
error, which names the file, is listed, so that one pass finds every bad file of a data
set instead of one per training run. In a split where some images have a mask, each image
without one is listed too (its mask is missing); a split without any mask is unlabelled
(e.g. a test split), which is no problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segdistill.data.base import SegmentationDataset
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
    image matches (`SegmentationDataset.masks_without_image`).
    """

    name: str
    images: int
    masks: int = 0
    unlabeled: int = 0
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(ID_RANGE, np.int64))
    class_images: np.ndarray = field(default_factory=lambda: np.zeros(ID_RANGE, np.int64))
    problems: list[str] = field(default_factory=list)
    masks_without_image: list[Path] = field(default_factory=list)


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
                    f"{files.image}: no mask, though {masks} of the {len(dataset)} images "
                    f"of {name} have one"
                )
            continue
        counts = np.bincount(label.ravel().astype(np.int64), minlength=ID_RANGE)
        found.class_pixels += counts
        found.class_images += counts > 0
    found.masks_without_image = list(dataset.masks_without_image)
    return found
