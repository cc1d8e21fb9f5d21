"""Constants of the generator: its version, splits and cities, sizes and distances, the
Cityscapes label ids it draws, and the types of a surface's outline and material."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from cityscapesscripts.helpers.labels import name2label

from segdistill.data import shifts
from segdistill.data.labels import (
    VOID_LABEL_IDS,
)

GENERATOR_VERSION = "1.1"
SPLITS = ("train", "val", "test")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
CITIES = {
    "train": ("ashford", "brenton", "calder", "dunmore", "elmwood", "fairhaven"),
    "val": ("glenrock", "halden"),
    "test": ("ironbridge", "juniper"),
}
FRAME = 19
DEPTH_UNITS_PER_METRE = 100  # depth PNGs store centimetres
MAX_SIZE = (1024, 2048)
MIN_SIZE = (16, 32)
SUPERSAMPLE = 2
NEAR = 0.5  # metres; nothing nearer the camera is drawn
PROFILE_MIN_OFFSET = 2.5  # metres; side-plane profiles nearer the camera axis are slivers
CURB = 0.22  # metres; the curb stone band along the road, labelled sidewalk
CROSSWALK = 5.0  # metres before a cross street taken by the crosswalk and stop line
HOOD_DEPTH = 2.0  # metres; roughly where the bonnet is (keeps fog off it)
FAR = 650.0  # metres; the depth PNG range (65535 cm) with a margin

# Cityscapes label ids (what labelIds files hold), by the names of the official table.
ROAD, SIDEWALK = name2label["road"].id, name2label["sidewalk"].id
BUILDING, WALL, FENCE = name2label["building"].id, name2label["wall"].id, name2label["fence"].id
POLE, LIGHT = name2label["pole"].id, name2label["traffic light"].id
SIGN, VEGETATION = name2label["traffic sign"].id, name2label["vegetation"].id
TERRAIN, SKY = name2label["terrain"].id, name2label["sky"].id
PERSON, RIDER, CAR = name2label["person"].id, name2label["rider"].id, name2label["car"].id
TRUCK, BUS, TRAIN = name2label["truck"].id, name2label["bus"].id, name2label["train"].id
MOTORCYCLE, BICYCLE = name2label["motorcycle"].id, name2label["bicycle"].id
EGO, OUT_OF_ROI = VOID_LABEL_IDS["ego vehicle"], VOID_LABEL_IDS["out of roi"]
STATIC, UNLABELED = VOID_LABEL_IDS["static"], VOID_LABEL_IDS["unlabeled"]
ANOMALY = shifts.ANOMALY_LABEL_ID

RGB = tuple[float, float, float]
# Surface callables take local surface coordinates in metres, x along the surface from its
# start and y up from its bottom, as 1-D arrays of equal length.
Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]  # -> bool, inside the outline
Material = Callable[[np.ndarray, np.ndarray], np.ndarray]  # -> float32 [N, 3] albedo
