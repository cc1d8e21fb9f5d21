"""The Cityscapes label table, taken from the official `cityscapesscripts` package.

Label ids (0..33, -1) are what `*_gtFine_labelIds.png` files hold; train ids (0..18, 255)
are what networks predict. Everything else in segdistill speaks train ids.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19

# The 19 evaluation classes, indexed by train id.
CLASS_NAMES: tuple[str, ...] = tuple(
    label.name
    for label in sorted(
        (lb for lb in _CITYSCAPES_LABELS if lb.trainId not in (255, -1)),
        key=lambda lb: lb.trainId,
    )
)

# [19, 3] uint8 colours of the evaluation classes, indexed by train id.
TRAIN_ID_COLORS = np.array(
    [
        lb.color
        for lb in sorted(
            (lb for lb in _CITYSCAPES_LABELS if lb.trainId not in (255, -1)),
            key=lambda lb: lb.trainId,
        )
    ],
    dtype=np.uint8,
)

# Label id -> train id lookup over 0..255 (unknown ids map to the ignore value).
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label in _CITYSCAPES_LABELS:
    if _label.id >= 0:
        LABEL_ID_TO_TRAIN_ID[_label.id] = _label.trainId if _label.trainId >= 0 else IGNORE_INDEX

# Train id -> label id (the evaluation scripts read label ids).
TRAIN_ID_TO_LABEL_ID = np.zeros(256, dtype=np.uint8)
for _label in _CITYSCAPES_LABELS:
    if 0 <= _label.trainId < NUM_CLASSES and _label.id >= 0:
        TRAIN_ID_TO_LABEL_ID[_label.trainId] = _label.id

# Label ids used for void pixels in generated data.
VOID_LABEL_IDS = {
    "unlabeled": 0,
    "ego vehicle": 1,
    "out of roi": 3,
    "static": 4,
    "dynamic": 5,
}


def colorize(train_ids: np.ndarray, palette: np.ndarray = TRAIN_ID_COLORS) -> np.ndarray:
    """[H, W] train ids -> [H, W, 3] uint8 colours; ignore pixels are black."""
    out = np.zeros((*train_ids.shape, 3), dtype=np.uint8)
    valid = train_ids < len(palette)
    out[valid] = palette[train_ids[valid]]
    return out
