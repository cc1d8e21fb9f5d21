"""SynthStreets: procedural driving scenes written in the Cityscapes layout.

A level pinhole camera looks along +Z over the ground plane Y = 0 (X right, Y up, metres),
so every pixel has a metric depth. A scene is a street (road, sidewalks, lots with
buildings or parks, cross streets) plus vertical planar patches ("surfaces") that face the
camera (constant Z) or the street (constant X): facades, walls, fences, poles, lights,
signs, trees, people, riders and vehicles. Rendering is numpy only: a 2x supersampled
depth-tested pass (each surface drawn inside its image bounding box), then 2x2 box
averaging for the image (anti-aliased boundaries) and the 2x2 majority sample for labels,
instances and depth. Lighting (sun, ambient, cast shadows on the ground, aerial haze) and a
sensor model (exposure, vignetting, shot and read noise) vary per image.

Layout written by `generate(root, SynthConfig(...))`:

    DIR/meta.json                                   written last: no meta.json = incomplete
    DIR/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png          RGB uint8
    DIR/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png          Cityscapes label ids, uint8
    DIR/gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png     train ids 0..18, 255 void
    DIR/gtFine/{split}/{city}/{stem}_gtFine_instanceIds.png       uint16: id*1000+k for
                                                   instance classes, the label id elsewhere
    DIR/gtFine/{split}/{city}/{stem}_depth.png     uint16 depth along the optical axis in
                                                   centimetres; 0 = sky (no finite depth)
    DIR/shifts/{shift}/leftImg8bit/test/...        the test split under a shift, same names
    DIR/shifts/{shift}/gtFine/test/...             its labels and depth (for fog_*, rain and
                                                   night hard links to the clean files)
    DIR/shifts/anomaly/gtFine/test/{city}/{stem}_gtFine_anomaly.png
                                                   uint8: 1 anomaly, 0 in-distribution, 255
                                                   other void (ego hood, out of ROI, clutter)

with `stem = {city}_{seq:06d}_{frame:06d}`, frame 000019 (Cityscapes annotates the 20th
frame of each snippet) and seq the index of the image within its city. Splits use disjoint
cities (`CITIES`). Shifts: `fog_0.005`, `fog_0.01`, `fog_0.02`, `rain`, `night`, `newcity`,
`anomaly` (see `segdistill.data.shifts`).

Determinism: every image draws from its own generator seeded by (seed, split, index) (and
the shift name for shift noise), so the same seed and GENERATOR_VERSION give byte-identical
files whatever the number of worker processes.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.helpers.labels import id2label, name2label
from PIL import Image
from scipy.ndimage import maximum_filter, minimum_filter, uniform_filter
from tqdm import tqdm

from segdistill.data import shifts
from segdistill.data.labels import (
    CLASS_NAMES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    VOID_LABEL_IDS,
)
from segdistill.data.shifts import ShiftSpec
from segdistill.errors import DataError
from segdistill.interrupts import ignore_ctrl_c

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


# --------------------------------------------------------------------------------------
# Styles: what makes a city look like itself.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """Camera rig, layout statistics, palettes and textures of one city style.

    Colours are albedos in [0, 1]; ranges are (low, high) for uniform draws.
    """

    name: str
    focal: float  # focal length / image width
    horizon: float  # horizon row / image height
    camera_height: tuple[float, float]
    hood_top: float  # top of the ego hood at the image centre / image height
    hood_paint: RGB
    lanes: tuple[int, ...]
    lane_width: tuple[float, float]
    sidewalk_width: tuple[float, float]
    building_height: tuple[float, float]
    park_share: float  # fraction of lots that are green instead of built
    tree_row_share: float  # probability of a row of street trees along a side
    pedestrians: float  # mean pedestrians per scene
    asphalt: RGB
    marking: RGB
    centre_marking: RGB
    sidewalk: RGB
    sidewalk_tile: float  # paving tile size in metres
    curb: RGB
    grass: tuple[RGB, ...]
    foliage: tuple[RGB, ...]
    facades: tuple[RGB, ...]
    window: RGB
    floor_height: tuple[float, float]
    car_paints: tuple[RGB, ...]
    big_paints: tuple[RGB, ...]  # trucks, buses and trams share them (look-alikes)
    sky_zenith: RGB
    sky_horizon: RGB
    # Drawing size of thin street furniture (poles, signs, traffic lights, fence bars) and
    # of people and two-wheelers, relative to life size. Above 1 they stay resolvable at a
    # low image size by a network that predicts at stride 4 (see SynthConfig.object_scale).
    object_scale: float = 1.0
    # Multiplies how often the rare classes occur: pedestrians, riders and two-wheelers
    # (and the motorcycles' share of them), trucks and buses, walls and fences (the gaps
    # between buildings that hold one, their length, and park boundaries).
    crowd: float = 1.0


DEFAULT_STYLE = Style(
    name="default",
    focal=1.0,
    horizon=0.42,
    camera_height=(1.3, 1.55),
    hood_top=0.86,
    hood_paint=(0.08, 0.09, 0.11),
    lanes=(2, 3, 3, 4),
    lane_width=(2.9, 3.5),
    sidewalk_width=(1.8, 4.0),
    building_height=(7.0, 24.0),
    park_share=0.38,
    tree_row_share=0.6,
    pedestrians=5.0,
    asphalt=(0.36, 0.36, 0.38),
    marking=(0.85, 0.85, 0.82),
    centre_marking=(0.85, 0.85, 0.82),
    sidewalk=(0.44, 0.43, 0.42),
    sidewalk_tile=0.4,
    curb=(0.55, 0.55, 0.54),
    grass=((0.33, 0.42, 0.17), (0.40, 0.44, 0.22), (0.46, 0.44, 0.28)),
    foliage=((0.20, 0.33, 0.11), (0.26, 0.38, 0.14), (0.31, 0.40, 0.17), (0.36, 0.42, 0.19)),
    facades=(
        (0.62, 0.58, 0.50),
        (0.55, 0.55, 0.55),
        (0.74, 0.72, 0.67),
        (0.55, 0.33, 0.26),
        (0.70, 0.60, 0.42),
        (0.45, 0.40, 0.36),
        (0.60, 0.52, 0.47),
    ),
    window=(0.16, 0.19, 0.23),
    floor_height=(2.9, 3.6),
    car_paints=(
        (0.82, 0.82, 0.82),
        (0.58, 0.59, 0.61),
        (0.10, 0.10, 0.11),
        (0.32, 0.33, 0.35),
        (0.55, 0.10, 0.10),
        (0.12, 0.20, 0.45),
        (0.15, 0.28, 0.20),
        (0.68, 0.66, 0.60),
    ),
    big_paints=(
        (0.85, 0.85, 0.83),
        (0.75, 0.12, 0.10),
        (0.88, 0.72, 0.15),
        (0.15, 0.30, 0.58),
        (0.55, 0.56, 0.56),
    ),
    sky_zenith=(0.33, 0.52, 0.82),
    sky_horizon=(0.76, 0.82, 0.90),
)

# "New city": another rig (wider lens, higher mount, small hood), wider roads with yellow
# markings, red pavers, taller pastel buildings, autumn trees, other paints and a hazier
# sky -- the way A2D2 differs from Cityscapes. It is rendered, not post-processed.
NEWCITY_STYLE = Style(
    name="newcity",
    focal=0.8,
    horizon=0.47,
    camera_height=(1.6, 1.8),
    hood_top=0.93,
    hood_paint=(0.55, 0.56, 0.58),
    lanes=(3, 4, 4, 5),
    lane_width=(3.3, 3.8),
    sidewalk_width=(3.0, 6.0),
    building_height=(12.0, 40.0),
    park_share=0.4,
    tree_row_share=0.7,
    pedestrians=3.0,
    asphalt=(0.46, 0.44, 0.42),
    marking=(0.90, 0.90, 0.88),
    centre_marking=(0.85, 0.70, 0.15),
    sidewalk=(0.56, 0.38, 0.33),
    sidewalk_tile=0.25,
    curb=(0.66, 0.64, 0.60),
    grass=((0.50, 0.50, 0.25), (0.55, 0.52, 0.30)),
    foliage=((0.55, 0.40, 0.12), (0.45, 0.42, 0.14), (0.60, 0.30, 0.10)),
    facades=(
        (0.80, 0.70, 0.62),
        (0.62, 0.72, 0.78),
        (0.85, 0.80, 0.55),
        (0.70, 0.62, 0.72),
        (0.88, 0.88, 0.86),
    ),
    window=(0.30, 0.38, 0.42),
    floor_height=(3.3, 4.0),
    car_paints=(
        (0.90, 0.90, 0.92),
        (0.85, 0.55, 0.10),
        (0.20, 0.45, 0.30),
        (0.40, 0.20, 0.45),
        (0.06, 0.06, 0.07),
    ),
    big_paints=((0.20, 0.55, 0.35), (0.90, 0.90, 0.90), (0.60, 0.10, 0.30)),
    sky_zenith=(0.55, 0.62, 0.72),
    sky_horizon=(0.82, 0.82, 0.80),
)


# --------------------------------------------------------------------------------------
# Textures: one fixed, tileable noise table sampled at surface coordinates.
# --------------------------------------------------------------------------------------

_TEX = 256  # noise table size (texels)
_TEX_ORIGIN = 65536.0  # keeps texel coordinates positive for any world position


@functools.lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """[256, 256] float32 tileable fractal noise, zero mean, unit std.

    Fixed (its own seed), so textures never depend on the process; images vary by the
    random offset and scale at which they sample it.
    """
    rng = np.random.default_rng(20240229)
    table = np.zeros((_TEX, _TEX))
    for cells, weight in ((8, 1.0), (16, 0.7), (32, 0.5), (64, 0.35), (128, 0.25), (256, 0.2)):
        rep = _TEX // cells
        grid = np.kron(rng.standard_normal((cells, cells)), np.ones((rep, rep)))
        # Smooth the blocks twice so each octave is a field of bumps, not squares.
        table += weight * uniform_filter(uniform_filter(grid, rep, mode="wrap"), rep, mode="wrap")
    return ((table - table.mean()) / table.std()).astype(np.float32)


def _offset(rng: np.random.Generator) -> tuple[float, float]:
    """A random texture origin (texels)."""
    u, v = rng.uniform(0, _TEX, 2)
    return float(u) + _TEX_ORIGIN, float(v) + _TEX_ORIGIN


def _tex(x: np.ndarray, y: np.ndarray, scale: float, offset: tuple[float, float]) -> np.ndarray:
    """Noise at coordinates x, y (metres, same shape) with `scale` texels per metre."""
    i = (x * scale + offset[0]).astype(np.int32) & (_TEX - 1)
    j = (y * scale + offset[1]).astype(np.int32) & (_TEX - 1)
    return _noise_table().ravel()[(j << 8) | i]  # one flat lookup (_TEX = 256)


def _cell_noise(i: np.ndarray, j: np.ndarray, offset: tuple[float, float]) -> np.ndarray:
    """One noise value per integer cell (i, j): window panes, paving tiles."""
    row = (j * 37 + int(offset[1])) & (_TEX - 1)
    return _noise_table().ravel()[(row << 8) | ((i * 23 + int(offset[0])) & (_TEX - 1))]


# --------------------------------------------------------------------------------------
# Scene description.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """Level pinhole camera `height` metres over the ground, looking along +Z.

    focal: focal length / image width; horizon: horizon row / image height.
    """

    height: float
    focal: float
    horizon: float


@dataclass(frozen=True)
class Surface:
    """A vertical planar patch.

    facing "front": the plane Z = pos, facing the camera, spanning X in [s0, s1];
    facing "side": the plane X = pos, facing the street, spanning Z in [s0, s1].
    It spans heights Y in [t0, t1]; `shape` cuts its outline (None: the whole rectangle)
    and `material` gives its albedo, both at local coordinates (x from s0, y from t0).
    `outline`, for see-through objects (fences, two-wheelers), is the region labelled as
    the surface where nothing nearer is, gaps included, as an annotator's polygon would
    be; the gaps still show what is behind. None: the label follows `shape`.
    """

    facing: str
    pos: float
    s0: float
    s1: float
    t0: float
    t1: float
    label: int
    instance: int
    material: Material
    shape: Shape | None = None
    outline: Shape | None = None


@dataclass(frozen=True)
class Caster:
    """Casts a shadow on the ground: footprint [x0, x1] x [z0, z1] occupied at heights
    [y0, y1]; round: a blob (tree crown) whose shadow is a disc, else a box."""

    x0: float
    x1: float
    z0: float
    z1: float
    y0: float
    y1: float
    round: bool = False


@dataclass(frozen=True)
class Lighting:
    """Sun (unit vector towards it), direct and ambient light colours, camera exposure."""

    sun: tuple[float, float, float]
    direct: RGB
    ambient: RGB
    exposure: float
    visibility: float  # metres; aerial haze: contrast falls to 1/e at this distance

    def shade(self, normal: tuple[float, float, float]) -> np.ndarray:
        """[3] light on a surface with this unit normal (shadows are the ground's)."""
        lit = max(0.0, float(np.dot(normal, self.sun)))
        return (np.asarray(self.ambient) + lit * np.asarray(self.direct)).astype(np.float32)


@dataclass(frozen=True)
class Lots:
    """Ground beyond one sidewalk, in slices of Z: edges [K] (first 0) and the ground
    label id of each slice (sidewalk: paved forecourt, terrain: park, road: cross street)."""

    edges: tuple[float, ...]
    labels: tuple[int, ...]

    def label_at(self, z: np.ndarray) -> np.ndarray:
        """[...] ground label ids at depths z."""
        index = np.searchsorted(np.asarray(self.edges), z, side="right") - 1
        return np.asarray(self.labels, dtype=np.uint8)[np.clip(index, 0, len(self.labels) - 1)]


@dataclass(frozen=True)
class Street:
    """The ground: carriageway X in [road_left, road_right]; on each side a curb band, an
    optional grass verge, and the sidewalk; lots beyond; cross streets over Z ranges; the
    ground materials (world X, Z -> albedo)."""

    road_left: float
    road_right: float
    sidewalk_left: float
    sidewalk_right: float
    verge_left: float  # width of the grass strip beyond the curb, 0 when there is none
    verge_right: float
    crossings: tuple[tuple[float, float], ...]
    lots_left: Lots
    lots_right: Lots
    road_material: Material
    sidewalk_material: Material
    terrain_material: Material

    @property
    def walk_left(self) -> float:
        """X of the outer edge of the left sidewalk."""
        return self.road_left - self.verge_left - self.sidewalk_left

    @property
    def walk_right(self) -> float:
        """X of the outer edge of the right sidewalk."""
        return self.road_right + self.verge_right + self.sidewalk_right

    def pavement(self, side: int) -> tuple[float, float]:
        """(x_min, x_max) of the paved part of a sidewalk (-1 left, 1 right), where people
        walk: between the verge (or curb) and the outer edge."""
        if side < 0:
            return self.walk_left, self.road_left - CURB - self.verge_left
        return self.road_right + CURB + self.verge_right, self.walk_right

    def crosses(self, z0: float, z1: float) -> bool:
        """Whether [z0, z1] overlaps a cross street or the crosswalk before it (nothing
        stands or parks there)."""
        return any(z0 < c1 and z1 > c0 - CROSSWALK for c0, c1 in self.crossings)

    def verge(self, side: int) -> tuple[float, float]:
        """(x_min, x_max) of a side's grass verge (empty when its width is 0)."""
        if side < 0:
            return self.road_left - CURB - self.verge_left, self.road_left - CURB
        return self.road_right + CURB, self.road_right + CURB + self.verge_right


@dataclass(frozen=True)
class Sky:
    """Zenith and horizon colours, cloud cover in [0, 1], cloud texture origin."""

    zenith: RGB
    horizon: RGB
    clouds: float
    offset: tuple[float, float]


@dataclass(frozen=True)
class Scene:
    """Everything `render` needs; independent of the output resolution.

    free_lanes: (x_left, x_right, z_free) per lane, the camera's lane first: the road is
    empty from the camera to z_free (at least 12 m in the camera's lane), where anomalies
    may be placed.
    """

    style: Style
    camera: Camera
    lighting: Lighting
    sky: Sky
    street: Street
    surfaces: tuple[Surface, ...]
    casters: tuple[Caster, ...]
    free_lanes: tuple[tuple[float, float, float], ...]
    sensor_seed: int


# --------------------------------------------------------------------------------------
# Shapes and materials (closures over their parameters; local metres in, arrays out).
# --------------------------------------------------------------------------------------


def _color(rgb: Sequence[float]) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32)


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float = 0.06) -> np.ndarray:
    """A colour varied a little in brightness and tint, so no two objects are identical."""
    brightness, *tint = rng.uniform(-1.0, 1.0, 4).tolist()  # python floats: fast scalars
    gain = 1 + 1.5 * amount * brightness
    varied = [float(c) * gain + amount * t for c, t in zip(rgb, tint)]
    return np.array([min(max(c, 0.02), 0.98) for c in varied], dtype=np.float32)


def _pick(rng: np.random.Generator, palette: Sequence[RGB], amount: float = 0.05) -> np.ndarray:
    return _jitter(rng, palette[int(rng.integers(len(palette)))], amount)


def _textured(
    rgb: np.ndarray, rng: np.random.Generator, amp: float = 0.08, scale: float = 25.0
) -> Material:
    """Material: a colour with fractal brightness noise."""
    offset = _offset(rng)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return rgb * (1.0 + amp * _tex(x, y, scale, offset))[:, None]

    return material


def _leafy(rgb: np.ndarray, rng: np.random.Generator) -> Material:
    """Material: foliage, bright and dark clumps at two scales."""
    offset = _offset(rng)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        clumps = 0.2 * _tex(x, y, 6.0, offset) + 0.22 * _tex(x, y, 40.0, offset)
        return rgb * np.clip(1.0 + clumps, 0.4, 1.6)[:, None]

    return material


def _facade(rng: np.random.Generator, style: Style, wall: np.ndarray) -> Material:
    """Material: a building wall with a grid of windows above a ground floor of shop
    windows and doors; panes vary (reflections, curtains, lights)."""
    offset = _offset(rng)
    floor = rng.uniform(*style.floor_height)
    bay = rng.uniform(2.2, 4.0)
    win_w, win_h = rng.uniform(0.35, 0.6), rng.uniform(0.4, 0.6)
    glass = _jitter(rng, style.window, 0.04)
    frame = wall * rng.uniform(0.75, 1.2)
    shop = rng.random() < 0.5

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = wall * (1.0 + 0.07 * _tex(x, y, 20.0, offset))[:, None]
        column, fx = np.divmod(x / bay, 1.0)
        storey, fy = np.divmod(y / floor, 1.0)
        across = np.abs(fx - 0.5)
        upper = storey >= 1
        sill = upper & (across < win_w / 2 + 0.04) & (np.abs(fy - 0.5 + win_h / 2) < 0.03)
        out[sill] = frame
        window = upper & (across < win_w / 2) & (np.abs(fy - 0.5) < win_h / 2)
        pane = _cell_noise(column[window].astype(np.int32), storey[window].astype(np.int32), offset)
        out[window] = glass * (1.0 + 0.35 * np.clip(pane, -1.5, 2.5))[:, None]
        if shop:
            out[~upper & (fy < 0.8) & (y > 0.4) & (across < 0.42)] = glass * 0.8
        return out

    return material


def _blob(w: float, h: float, rng: np.random.Generator, rough: float = 0.35) -> Shape:
    """An ellipse with a ragged, noisy rim (crowns, bushes, debris)."""
    offset = _offset(rng)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r2 = (2 * x / w - 1) ** 2 + (2 * y / h - 1) ** 2
        return r2 <= 1.0 - rough * (0.5 + 0.5 * _tex(x, y, 12.0, offset))

    return shape


def _segments_distance2(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N] squared distance from points (x, y) to the segment a-b (2-vectors)."""
    d = b - a
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2


def _capsules(parts: Sequence[tuple[tuple[float, float], tuple[float, float], float]]) -> Shape:
    """A union of capsules (thick segments): ((x0, y0), (x1, y1), radius) in metres."""
    arrays = [(np.asarray(a, np.float32), np.asarray(b, np.float32), r) for a, b, r in parts]

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(x.shape, dtype=bool)
        for a, b, r in arrays:
            inside |= _segments_distance2(x, y, a, b) <= r * r
        return inside

    return shape


def _rings(centres: Sequence[tuple[float, float]], radius: float, width: float) -> Shape:
    """Wheels as rings (tyres) of outer `radius` and rim `width`, plus a small hub."""

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(x.shape, dtype=bool)
        for cx, cy in centres:
            r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            inside |= (np.abs(r - radius + width / 2) <= width / 2) | (r <= 0.06)
        return inside

    return shape


def _discs(centres: Sequence[tuple[float, float]], radius: float) -> Shape:
    """Filled wheels: what an outline around a wheel covers, spokes and gaps included."""
    return _rings(centres, radius, 2 * radius)


def _whole(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The whole rectangle of a surface (an outline without holes)."""
    return np.ones(x.shape, dtype=bool)


def _union(*shapes: Shape) -> Shape:
    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = shapes[0](x, y)
        for other in shapes[1:]:
            inside |= other(x, y)
        return inside

    return shape


def _mirrored(shape: Shape, length: float) -> Shape:
    """The same outline facing the other way along x."""
    return lambda x, y: shape(length - x, y)


# --------------------------------------------------------------------------------------
# Scene sampling.
# --------------------------------------------------------------------------------------


class _Builder:
    """Collects surfaces and shadow casters and numbers instances (id * 1000 + k)."""

    def __init__(self, rng: np.random.Generator, style: Style, street: Street) -> None:
        self.rng = rng
        self.style = style
        self.street = street
        self.surfaces: list[Surface] = []
        self.casters: list[Caster] = []
        self._counts: dict[int, int] = {}

    def instance(self, label: int) -> int:
        """A new instance id for instance classes, the label id for the others."""
        if not id2label[label].hasInstances:
            return label
        k = self._counts.get(label, 0)
        self._counts[label] = k + 1
        return label * 1000 + k

    def front(
        self,
        z: float,
        xs: tuple[float, float],
        ys: tuple[float, float],
        label: int,
        material: Material,
        shape: Shape | None = None,
        instance: int | None = None,
        outline: Shape | None = None,
    ) -> None:
        """Add a camera-facing patch at depth z over X range xs and height range ys; the
        instance id is a new one (instance classes) unless given, e.g. to share it."""
        instance = self.instance(label) if instance is None else instance
        surface = Surface("front", z, *xs, *ys, label, instance, material, shape, outline)
        self.surfaces.append(surface)

    def side(
        self,
        x: float,
        zs: tuple[float, float],
        ys: tuple[float, float],
        label: int,
        material: Material,
        shape: Shape | None = None,
        instance: int | None = None,
        outline: Shape | None = None,
    ) -> None:
        """Add a street-facing patch in the plane X = x over Z range zs, heights ys."""
        instance = self.instance(label) if instance is None else instance
        surface = Surface("side", x, *zs, *ys, label, instance, material, shape, outline)
        self.surfaces.append(surface)

    def shadow(
        self,
        x0: float,
        x1: float,
        z0: float,
        z1: float,
        y0: float,
        y1: float,
        round: bool = False,
    ) -> None:
        self.casters.append(Caster(min(x0, x1), max(x0, x1), z0, z1, y0, y1, round))


def _sample_camera(rng: np.random.Generator, style: Style) -> Camera:
    return Camera(
        height=rng.uniform(*style.camera_height),
        focal=style.focal,
        horizon=style.horizon + rng.normal(0.0, 0.015),
    )


def _sample_lighting(rng: np.random.Generator) -> Lighting:
    """Sunny (low to high sun, any direction) or overcast (soft light, no shadows)."""
    elevation = np.radians(rng.uniform(15, 60))
    azimuth = rng.uniform(0, 2 * np.pi)
    sun = (
        float(np.cos(elevation) * np.sin(azimuth)),
        float(np.sin(elevation)),
        float(np.cos(elevation) * np.cos(azimuth)),
    )
    overcast = rng.random() < 0.3
    direct = rng.uniform(0.1, 0.2) if overcast else rng.uniform(0.55, 0.8)
    ambient = rng.uniform(0.6, 0.75) if overcast else rng.uniform(0.32, 0.45)
    warm = rng.uniform(0.0, 0.12)
    return Lighting(
        sun=sun,
        direct=(direct, direct * (1 - warm / 2), direct * (1 - warm)),
        ambient=(ambient * (1 - warm / 2), ambient, ambient * (1 + warm / 2)),
        exposure=rng.uniform(0.9, 1.15),
        visibility=rng.uniform(500, 2500),
    )


def _sample_sky(rng: np.random.Generator, style: Style, lighting: Lighting) -> Sky:
    grey = lighting.direct[0] < 0.3  # overcast: a pale grey sky
    zenith = _jitter(rng, (0.68, 0.70, 0.73) if grey else style.sky_zenith, 0.04)
    horizon = _jitter(rng, (0.80, 0.81, 0.82) if grey else style.sky_horizon, 0.03)
    return Sky(tuple(zenith), tuple(horizon), rng.uniform(0.0, 0.8), _offset(rng))


@dataclass(frozen=True)
class _Lanes:
    """The carriageway, lane by lane from the left: lane centres (X), lane width; the first
    `oncoming` lanes carry oncoming traffic; the camera drives in lane `ego`; a tram runs
    in lane `tram` (None: no tram)."""

    x: tuple[float, ...]
    width: float
    oncoming: int
    ego: int
    tram: int | None

    @property
    def count(self) -> int:
        return len(self.x)

    @property
    def left(self) -> float:
        return self.x[0] - self.width / 2

    @property
    def right(self) -> float:
        return self.x[-1] + self.width / 2

    def dividers(self) -> list[float]:
        """X of the dashed lines between lanes of the same direction."""
        return [self.left + k * self.width for k in range(1, self.count) if k != self.oncoming]

    def centre_line(self) -> float | None:
        """X of the line between the directions (None on a one-way street)."""
        return self.left + self.oncoming * self.width if self.oncoming else None

    def rails(self) -> tuple[float, ...]:
        """X of the tram rails (standard gauge, 1.435 m)."""
        return () if self.tram is None else (self.x[self.tram] - 0.72, self.x[self.tram] + 0.72)


def _road_material(
    rng: np.random.Generator,
    style: Style,
    lanes: _Lanes,
    crossings: tuple[tuple[float, float], ...],
) -> Material:
    """Asphalt with wear, lane markings, crosswalks with stop lines, tram rails (world X, Z)."""
    asphalt = _jitter(rng, style.asphalt, 0.04)
    marking = _jitter(rng, style.marking, 0.03)
    centre = _jitter(rng, style.centre_marking, 0.03)
    offset = _offset(rng)
    dividers, centre_x, rails = lanes.dividers(), lanes.centre_line(), lanes.rails()
    edges = (lanes.left + 0.3, lanes.right - 0.3)
    forward_from = lanes.left + lanes.oncoming * lanes.width  # stop lines span these lanes
    dash, gap = rng.uniform(2.5, 4.0), rng.uniform(5.0, 9.0)

    def material(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        wear = 0.06 * _tex(x, z, 30.0, offset) + 0.08 * _tex(x, z, 1.5, offset)
        out = asphalt * (1.0 + wear)[:, None]
        dashed = (z % (dash + gap)) < dash
        for dx in dividers:
            out[(np.abs(x - dx) < 0.07) & dashed] = marking
        for ex in edges:
            out[np.abs(x - ex) < 0.08] = marking
        if centre_x is not None:
            out[np.abs(np.abs(x - centre_x) - 0.12) < 0.06] = centre
        for rx in rails:
            out[np.abs(x - rx) < 0.045] = (0.55, 0.55, 0.56)
        for z0, _ in crossings:
            zebra = (z > z0 - 4.0) & (z < z0 - 1.0) & ((x % 1.0) < 0.5)
            out[zebra] = marking
            out[(z > z0 - 4.8) & (z < z0 - 4.4) & (x > forward_from)] = marking
        return out

    return material


def _sidewalk_material(
    rng: np.random.Generator, style: Style, road: tuple[float, float]
) -> Material:
    """Paving tiles (or plain concrete) with a curb stone band along the road."""
    stone = _jitter(rng, style.sidewalk, 0.04)
    curb = _jitter(rng, style.curb, 0.03)
    tile = style.sidewalk_tile * rng.uniform(0.8, 1.3)
    tiled = rng.random() < 0.7  # plain slabs look even more like asphalt
    offset = _offset(rng)

    def material(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = stone * (1.0 + 0.07 * _tex(x, z, 30.0, offset))[:, None]
        if tiled:
            fx, fz = (x / tile) % 1.0, (z / tile) % 1.0
            cell = _cell_noise((x // tile).astype(np.int32), (z // tile).astype(np.int32), offset)
            out *= (1.0 + 0.05 * cell)[:, None]
            out[(fx < 0.06) | (fz < 0.06)] *= 0.8
        near_curb = (np.abs(x - road[0]) < 0.22) | (np.abs(x - road[1]) < 0.22)
        out[near_curb] = curb
        return out

    return material


def _sample_crossings(rng: np.random.Generator, z_end: float) -> tuple[tuple[float, float], ...]:
    """0 to 2 cross streets, as Z ranges, at least 30 m apart."""
    count = rng.choice([0, 1, 1, 2])
    crossings: list[tuple[float, float]] = []
    for _ in range(count):
        z0 = rng.uniform(18, z_end - 30)
        width = rng.uniform(10, 16)
        if all(z0 > c1 + 30 or z0 + width < c0 - 30 for c0, c1 in crossings):
            crossings.append((z0, z0 + width))
    return tuple(sorted(crossings))


@dataclass(frozen=True)
class _Lot:
    z0: float
    z1: float
    kind: str  # "building", "park" or "crossing"


def _sample_lots(
    rng: np.random.Generator,
    style: Style,
    z_end: float,
    crossings: tuple[tuple[float, float], ...],
) -> list[_Lot]:
    """Slices of one side of the street from the camera to z_end (and one far slice)."""
    lots: list[_Lot] = []
    z = 0.0
    for c0, c1 in [*crossings, (z_end, FAR)]:
        while z < c0 - 1.0:
            end = min(z + rng.uniform(8, 32), c0)
            kind = "park" if rng.random() < style.park_share else "building"
            lots.append(_Lot(z, end, kind))
            z = end
        lots.append(_Lot(c0, c1, "crossing"))
        z = c1
    return lots


def _lots_ground(lots: Sequence[_Lot]) -> Lots:
    label = {"building": SIDEWALK, "park": TERRAIN, "crossing": ROAD}
    return Lots(tuple(lot.z0 for lot in lots), tuple(label[lot.kind] for lot in lots))


@dataclass(frozen=True)
class _Layout:
    """What object placement needs beyond the Street: lanes, the lots of each side (-1
    left, 1 right), and where the street ends."""

    lanes: _Lanes
    lots: dict[int, list[_Lot]]
    z_end: float


def _sample_lanes(rng: np.random.Generator, style: Style) -> _Lanes:
    count = int(rng.choice(style.lanes))
    width = rng.uniform(*style.lane_width)
    oncoming = count // 2 if rng.random() < 0.75 else 0
    ego = int(rng.integers(oncoming, count))
    left = -(ego + 0.5) * width + rng.uniform(-0.4, 0.4)
    tram = int(rng.integers(count)) if rng.random() < 0.1 else None
    return _Lanes(tuple(left + (k + 0.5) * width for k in range(count)), width, oncoming, ego, tram)


def _sample_street(rng: np.random.Generator, style: Style) -> tuple[Street, _Layout]:
    """The road cross-section, cross streets and lots."""
    lanes = _sample_lanes(rng, style)
    z_end = rng.uniform(120, 240)
    crossings = _sample_crossings(rng, z_end)
    lots = {side: _sample_lots(rng, style, z_end, crossings) for side in (-1, 1)}
    street = Street(
        road_left=lanes.left,
        road_right=lanes.right,
        sidewalk_left=rng.uniform(*style.sidewalk_width),
        sidewalk_right=rng.uniform(*style.sidewalk_width),
        verge_left=rng.uniform(0.8, 1.8) if rng.random() < 0.35 else 0.0,
        verge_right=rng.uniform(0.8, 1.8) if rng.random() < 0.35 else 0.0,
        crossings=crossings,
        lots_left=_lots_ground(lots[-1]),
        lots_right=_lots_ground(lots[1]),
        road_material=_road_material(rng, style, lanes, crossings),
        sidewalk_material=_sidewalk_material(rng, style, (lanes.left, lanes.right)),
        terrain_material=_textured(_pick(rng, style.grass), rng, 0.12, 35.0),
    )
    return street, _Layout(lanes, lots, z_end)


# --- buildings, walls, fences, vegetation --------------------------------------------


def _add_building(b: _Builder, x: float, z0: float, z1: float, side: int, height: float) -> None:
    """A block: its facade along the street at X = x, its front wall facing the camera."""
    wall = _pick(b.rng, b.style.facades)
    material = _facade(b.rng, b.style, wall)
    depth = b.rng.uniform(12, 25)
    x_back = x + side * depth
    b.side(x, (z0, z1), (0.0, height), BUILDING, material)
    b.front(z0, (min(x, x_back), max(x, x_back)), (0.0, height), BUILDING, material)
    b.shadow(x, x_back, z0, z1, 0.0, height)


# Free-standing walls: concrete, dark concrete, sandstone, brick. Brick and grey concrete
# are close to facade colours; the courses and the coping tell a wall from a facade.
_WALL_STONES: tuple[RGB, ...] = (
    (0.60, 0.59, 0.56),
    (0.40, 0.40, 0.39),
    (0.72, 0.64, 0.50),
    (0.52, 0.27, 0.20),
)


def _masonry(rgb: np.ndarray, rng: np.random.Generator, height: float) -> Material:
    """Material: blocks in staggered courses with lighter mortar joints, under a coping
    (a cap band of another shade) along the top."""
    offset = _offset(rng)
    course = rng.uniform(0.25, 0.6)
    block = course * rng.uniform(1.5, 3.0)
    mortar = np.clip(rgb * 1.35, 0, 1)
    coping = np.clip(rgb * rng.choice([0.6, 1.4]), 0, 1)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = rgb * (1.0 + 0.1 * _tex(x, y, 12.0, offset))[:, None]
        row, fy = np.divmod(y / course, 1.0)
        fx = np.mod(x / block + 0.5 * (row % 2), 1.0)
        out[(fy < 0.12) | (fx < 0.06)] = mortar
        out[y > height - 0.15] = coping
        return out

    return material


def _add_wall(b: _Builder, x: float, z0: float, z1: float, height: float) -> None:
    """A free-standing wall along the street: masonry courses and a coping, low."""
    material = _masonry(_pick(b.rng, _WALL_STONES), b.rng, height)
    b.side(x, (z0, z1), (0.0, height), WALL, material)
    b.shadow(x, x, z0, z1, 0.0, height)


def _fence_shape(rng: np.random.Generator, height: float, scale: float) -> Shape:
    """Slats or a mesh with gaps, with top and bottom rails; bars `scale` times life size."""
    spacing = rng.uniform(0.1, 0.25) * scale
    bar = spacing * rng.uniform(0.25, 0.6)
    mesh = rng.random() < 0.3

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rails = (np.abs(y - height + 0.05) < 0.05) | (np.abs(y - 0.15) < 0.04)
        bars = (x % spacing) < bar
        if mesh:
            bars |= ((x + y) % spacing < bar * 0.5) | ((x - y) % spacing < bar * 0.5)
        posts = (x % 2.5) < 0.08
        return rails | bars | posts

    return shape


def _add_fence(b: _Builder, x: float, z0: float, z1: float, height: float) -> None:
    rgb = _pick(b.rng, ((0.35, 0.35, 0.35), (0.18, 0.28, 0.20), (0.45, 0.34, 0.24), (0.6,) * 3))
    material = _textured(rgb, b.rng, 0.08, 20.0)
    b.side(
        x,
        (z0, z1),
        (0.0, height),
        FENCE,
        material,
        _fence_shape(b.rng, height, b.style.object_scale),
        outline=_whole,
    )


def _add_hedge(b: _Builder, x: float, z0: float, z1: float, height: float) -> None:
    material = _leafy(_pick(b.rng, b.style.foliage), b.rng)
    offset = _offset(b.rng)

    def shape(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return ys < height * (0.85 + 0.15 * _tex(xs, ys * 0, 3.0, offset))

    b.side(x, (z0, z1), (0.0, height), VEGETATION, material, shape)
    b.shadow(x, x, z0, z1, 0.0, height)


def _crown_shape(blobs: Sequence[tuple[float, float, float]], rng: np.random.Generator) -> Shape:
    """A tree crown: overlapping discs (cx, cy, r in local metres) with ragged rims."""
    offset = _offset(rng)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        shrink = 1.0 - 0.35 * (0.5 + 0.5 * _tex(x, y, 12.0, offset))
        inside = np.zeros(x.shape, dtype=bool)
        for cx, cy, r in blobs:
            inside |= (x - cx) ** 2 + (y - cy) ** 2 <= r * r * shrink
        return inside

    return shape


def _crown_material(rgb: np.ndarray, rng: np.random.Generator, base: float, top: float) -> Material:
    """Foliage that is darker low in the crown (heights base..top), where it shades itself."""
    leafy = _leafy(rgb, rng)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return leafy(x, y) * (0.7 + 0.45 * np.clip((y - base) / (top - base), 0, 1))[:, None]

    return material


def _tree_material(trunk: np.ndarray, crown: Material, radius: float, trunk_top: float) -> Material:
    """Bark on the trunk (the centre column, below the crown), foliage elsewhere."""
    half = max(0.075, radius * 0.06)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = crown(x, y)
        bark = (np.abs(x - 1.5 * radius) < half) & (y < trunk_top)
        out[bark] = trunk
        return out

    return material


def _add_tree(b: _Builder, x: float, z: float, height: float, radius: float) -> None:
    """A tree as one surface: a trunk and a crown of overlapping ragged blobs (vegetation).

    Local box: 3 radii across (trunk in the middle), from the ground to the crown top.
    """
    rng = b.rng
    crown_base = height - 2 * radius
    trunk_top = crown_base + 0.3 * radius
    blobs = [
        (
            1.5 * radius * (1 + rng.uniform(-0.45, 0.45)),
            crown_base + radius * rng.uniform(0.7, 1.3),
            radius * rng.uniform(0.55, 0.8),
        )
        for _ in range(int(rng.integers(3, 6)))
    ]
    half = max(0.075, radius * 0.06)
    crown = _crown_shape(blobs, rng)
    crown_low = min(cy - r for _, cy, r in blobs)

    def shape(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        inside = (np.abs(xs - 1.5 * radius) < half) & (ys < trunk_top)
        up = ys >= crown_low  # the crown test only where a crown can be
        inside[up] |= crown(xs[up], ys[up])
        return inside

    top = crown_base + 2.2 * radius
    foliage = _crown_material(_pick(rng, b.style.foliage), rng, crown_base, top)
    material = _tree_material(_jitter(rng, (0.30, 0.24, 0.18)), foliage, radius, trunk_top)
    b.front(z, (x - 1.5 * radius, x + 1.5 * radius), (0.0, top), VEGETATION, material, shape)
    b.shadow(x - radius, x + radius, z - radius, z + radius, crown_base, height, round=True)


def _add_bush(b: _Builder, x: float, z: float) -> None:
    w, h = b.rng.uniform(0.8, 2.5), b.rng.uniform(0.5, 1.4)
    b.front(
        z,
        (x - w / 2, x + w / 2),
        (-0.1, h),
        VEGETATION,
        _leafy(_pick(b.rng, b.style.foliage), b.rng),
        _blob(w, 2 * (h + 0.1), b.rng, 0.3),
    )


def _add_park(b: _Builder, lot: _Lot, edge: float, side: int) -> None:
    """Grass (the ground), trees and bushes, a boundary along the sidewalk, and buildings
    far behind."""
    rng = b.rng
    weights = np.array([0.35, 0.3 * b.style.crowd, 0.2 * b.style.crowd, 0.15])
    boundary = rng.choice(["hedge", "fence", "wall", "none"], p=weights / weights.sum())
    if boundary == "hedge":
        _add_hedge(b, edge, lot.z0, lot.z1, rng.uniform(0.8, 1.8))
    elif boundary == "fence":
        _add_fence(b, edge, lot.z0, lot.z1, rng.uniform(1.0, 2.0))
    elif boundary == "wall":
        _add_wall(b, edge, lot.z0, lot.z1, rng.uniform(0.6, 2.2))
    for _ in range(int(rng.integers(1, 5))):
        _add_tree(
            b,
            edge + side * rng.uniform(2, 15),
            rng.uniform(lot.z0, lot.z1),
            rng.uniform(6, 14),
            rng.uniform(1.8, 3.5),
        )
    for _ in range(int(rng.integers(0, 4))):
        _add_bush(b, edge + side * rng.uniform(1, 10), rng.uniform(lot.z0, lot.z1))
    x_far = edge + side * rng.uniform(25, 45)
    _add_building(b, x_far, lot.z0, lot.z1, side, rng.uniform(8, 30))


def _add_lots(b: _Builder, lots: Sequence[_Lot], edge: float, side: int) -> None:
    """Fill one side of the street: buildings (with gaps holding a wall or fence), parks."""
    rng = b.rng
    for lot in lots:
        if lot.kind == "park":
            _add_park(b, lot, edge, side)
        elif lot.kind == "building":
            setback = rng.uniform(0, 1.5) if rng.random() < 0.4 else 0.0
            walled = rng.random() < 0.25 * b.style.crowd
            length = lot.z1 - lot.z0
            gap = (
                min(rng.uniform(2, 6) * b.style.crowd, length - 6) if walled and length > 10 else 0
            )
            height = rng.uniform(*b.style.building_height)
            _add_building(b, edge + side * setback, lot.z0, lot.z1 - gap, side, height)
            if gap:
                low = rng.uniform(1.0, 2.5)
                add = _add_wall if rng.random() < 0.5 else _add_fence
                add(b, edge, lot.z1 - gap, lot.z1, low)
        elif lot.z0 < FAR - 1:  # a cross street: the next block's corner faces the camera
            _add_building(
                b,
                edge + side * rng.uniform(0, 3),
                lot.z1,
                lot.z1 + 15,
                side,
                rng.uniform(*b.style.building_height),
            )


def _add_street_end(b: _Builder, z_end: float) -> None:
    """Where the street ends: a row of buildings across (T-junction), or a tree line and
    the skyline far away."""
    rng = b.rng
    if rng.random() < 0.5:
        x = -80.0
        while x < 80:
            w = rng.uniform(10, 30)
            height = rng.uniform(*b.style.building_height)
            z = z_end + 12 + rng.uniform(0, 6)
            b.front(
                z,
                (x, x + w),
                (0.0, height),
                BUILDING,
                _facade(rng, b.style, _pick(rng, b.style.facades)),
            )
            x += w
    for _ in range(int(rng.integers(3, 9))):
        _add_tree(
            b,
            rng.uniform(-60, 60),
            z_end + rng.uniform(20, 60),
            rng.uniform(8, 15),
            rng.uniform(3, 5),
        )
    _add_skyline(b)


def _add_skyline(b: _Builder) -> None:
    """Distant blocks along the horizon as one surface; the haze turns them pale."""
    rng = b.rng
    widths = rng.uniform(15, 60, 40)
    edges = np.cumsum(widths) - 400.0  # right edges of the blocks, from X = -400
    heights = np.where(rng.random(40) < 0.7, rng.uniform(10, 70, 40), 0.0).astype(np.float32)
    colors = np.stack([_pick(rng, b.style.facades) for _ in range(40)])
    offset = _offset(rng)

    def block(x: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(edges, x - 400.0), 39)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y < heights[block(x)]

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return colors[block(x)] * (1.0 + 0.1 * _tex(x, y, 2.0, offset))[:, None]

    b.front(450.0, (-400.0, 400.0), (0.0, 70.0), BUILDING, material, shape)


# --- street furniture -------------------------------------------------------------------


def _add_pole(b: _Builder, x: float, z: float, height: float, width: float) -> None:
    rgb = _pick(b.rng, ((0.45, 0.45, 0.46), (0.22, 0.22, 0.24), (0.20, 0.28, 0.22)))
    width *= b.style.object_scale
    b.front(
        z, (x - width / 2, x + width / 2), (0.0, height), POLE, _textured(rgb, b.rng, 0.05, 30.0)
    )
    b.shadow(x - width / 2, x + width / 2, z - width / 2, z + width / 2, 0.0, height)


def _add_lamp(b: _Builder, x: float, z: float, side: int) -> None:
    """A street lamp: a tall pole with an arm over the road and a lamp head (all pole)."""
    height = b.rng.uniform(6, 9)
    _add_pole(b, x, z, height, b.rng.uniform(0.12, 0.2))
    reach = b.rng.uniform(1.0, 2.2)
    arm = _textured(_color((0.4, 0.4, 0.42)), b.rng, 0.05)
    x_end = x - side * reach
    thick = 0.12 * b.style.object_scale
    b.front(z - 0.01, (min(x, x_end), max(x, x_end)), (height - thick, height), POLE, arm)
    head = 0.3 * b.style.object_scale
    b.front(z - 0.02, (x_end - head, x_end + head), (height - head, height), POLE, arm)


def _round_measure(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.sqrt(p**2 + q**2)


def _square_measure(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(p), np.abs(q))


def _diamond_measure(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.abs(p) + np.abs(q)


def _triangle_measure(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Scale about the centroid at which an upward triangle passes through (p, q)."""
    up = (q + 1) / 2
    return np.maximum(1.5 * (np.abs(p) + up) - 0.5, 1 - 3 * up)


# Sign faces: (outline measure, rim colour, inner colour, inner size). A point is on the
# sign where the measure of its centred coordinates p, q in [-1, 1] is <= 1, and inside
# the rim where it is below the inner size. Prohibitory red rings, mandatory blue discs,
# warning triangles, information panels, priority diamonds, and grey sign backs.
_RED, _WHITE = (0.75, 0.1, 0.1), (0.9, 0.9, 0.88)
_BLUE, _YELLOW, _GREY = (0.1, 0.25, 0.65), (0.9, 0.75, 0.1), (0.5, 0.5, 0.52)
_SIGNS = (
    (_round_measure, _RED, _WHITE, 0.75),
    (_round_measure, _WHITE, _BLUE, 0.9),
    (_triangle_measure, _RED, _WHITE, 0.6),
    (_square_measure, _WHITE, _BLUE, 0.88),
    (_diamond_measure, _WHITE, _YELLOW, 0.7),
    (_round_measure, _GREY, _GREY, 1.0),
)


def _sign_look(rng: np.random.Generator, scale: float) -> tuple[Shape, Material, float, float]:
    """A traffic sign face `scale` times life size: (shape, material, width, height) in
    metres."""
    measure, rim, inner, inner_size = _SIGNS[rng.integers(len(_SIGNS))]
    w = rng.uniform(0.5, 0.8)
    h = w * rng.uniform(0.7, 1.3) if measure is _square_measure else w
    w, h = w * scale, h * scale
    rim_rgb, inner_rgb = _color(rim), _color(inner)

    def centred(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return measure(2 * x / w - 1, 2 * y / h - 1)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return centred(x, y) <= 1.0

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.where((centred(x, y) < inner_size)[:, None], inner_rgb, rim_rgb)

    return shape, material, w, h


def _add_sign_post(b: _Builder, x: float, z: float) -> None:
    # A taller post when the faces are drawn larger, so that a stack of two stays clear
    # of the ground.
    height = b.rng.uniform(2.0, 2.8) * max(1.0, b.style.object_scale**0.5)
    _add_pole(b, x, z, height, 0.08)
    top = height
    for _ in range(int(b.rng.integers(1, 3))):
        shape, material, w, h = _sign_look(b.rng, b.style.object_scale)
        b.front(z - 0.05, (x - w / 2, x + w / 2), (top - h, top), SIGN, material, shape)
        top -= h + 0.05


def _light_material(rng: np.random.Generator, w: float, h: float, lamps: bool) -> Material:
    """A traffic light housing; facing the camera it shows three lamps, one lit."""
    housing = _jitter(rng, (0.1, 0.1, 0.1) if rng.random() < 0.7 else (0.5, 0.45, 0.15), 0.03)
    lit = int(rng.integers(3))
    colors = [_color(c) for c in ((0.95, 0.15, 0.1), (0.95, 0.7, 0.1), (0.2, 0.9, 0.4))]

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(housing, (x.size, 3)).copy()
        if lamps:
            for k, rgb in enumerate(colors):
                cy = h * (0.8 - 0.3 * k)
                on = (x - w / 2) ** 2 + (y - cy) ** 2 < (0.3 * w) ** 2
                out[on] = rgb if k == lit else rgb * 0.25
        return out

    return material


def _add_traffic_light(b: _Builder, x: float, z: float, overhead_to: float | None) -> None:
    """A light on its pole; with `overhead_to`, a tall pole with an arm reaching that X and
    a second light hanging above the lanes."""
    rng = b.rng
    height = rng.uniform(2.6, 3.4)
    w, h = 0.35 * b.style.object_scale, 0.95 * b.style.object_scale
    lamps = rng.random() < 0.75
    pole_height = rng.uniform(5.5, 6.5) if overhead_to is not None else height + 0.3
    _add_pole(b, x, z, pole_height, 0.14)
    b.front(
        z - 0.1,
        (x - w / 2 - 0.18, x + w / 2 - 0.18),
        (height, height + h),
        LIGHT,
        _light_material(rng, w, h, lamps),
    )
    if overhead_to is not None:
        arm = _textured(_color((0.35, 0.35, 0.37)), rng, 0.05)
        top = pole_height - 0.2
        b.front(z - 0.01, (min(x, overhead_to), max(x, overhead_to)), (top - 0.14, top), POLE, arm)
        b.front(
            z - 0.1,
            (overhead_to - w / 2, overhead_to + w / 2),
            (top - h - 0.1, top - 0.1),
            LIGHT,
            _light_material(rng, w, h, True),
        )


def _add_clutter(b: _Builder, x: float, z: float) -> None:
    """Void street clutter: bins, benches, utility boxes (static) and advertising
    columns (unlabeled)."""
    rng = b.rng
    kind = rng.choice(["bin", "bench", "box", "column"])
    w, h, label = {
        "bin": (0.6, 1.0, STATIC),
        "bench": (1.6, 0.85, STATIC),
        "box": (0.8, 1.3, STATIC),
        "column": (1.2, 3.0, UNLABELED),
    }[str(kind)]
    palette = ((0.25, 0.3, 0.25), (0.5, 0.5, 0.5), (0.6, 0.45, 0.2), (0.75, 0.72, 0.6))
    material = _textured(_pick(rng, palette), rng, 0.15, 8.0)
    b.front(z, (x - w / 2, x + w / 2), (0.0, h), label, material)
    b.shadow(x - w / 2, x + w / 2, z, z + 0.5, 0.0, h)


# --- people, riders, two-wheelers ---------------------------------------------------------


def _clothes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(trousers, top, skin, hair) colours; people and riders share them (look-alikes)."""
    palette = (
        (0.10, 0.10, 0.12),
        (0.20, 0.22, 0.35),
        (0.45, 0.40, 0.35),
        (0.60, 0.12, 0.12),
        (0.80, 0.80, 0.78),
        (0.30, 0.35, 0.22),
        (0.15, 0.25, 0.50),
        (0.70, 0.55, 0.25),
    )
    skin = _pick(rng, ((0.85, 0.66, 0.52), (0.62, 0.44, 0.32), (0.36, 0.24, 0.17)), 0.03)
    hair = _pick(rng, ((0.1, 0.08, 0.06), (0.35, 0.25, 0.15), (0.7, 0.6, 0.4)), 0.03)
    return _pick(rng, palette), _pick(rng, palette), skin, hair


def _body_material(
    rng: np.random.Generator,
    trousers_top: float,
    neck: float,
    clothes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> Material:
    """Trousers below `trousers_top`, a top up to `neck`, skin and hair above (metres)."""
    trousers, top, skin, hair = clothes
    offset = _offset(rng)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.where((y < trousers_top)[:, None], trousers, top)
        out = np.where((y >= neck)[:, None], skin, out)
        out = np.where((y >= neck + 0.12)[:, None], hair, out)
        return out * (1.0 + 0.06 * _tex(x, y, 40.0, offset))[:, None]

    return material


def _add_person(b: _Builder, x: float, z: float) -> None:
    """A pedestrian seen from the front or back: legs (standing or mid-stride), torso,
    arms and head, one camera-facing surface."""
    rng = b.rng
    h = rng.uniform(1.5, 1.95) * b.style.object_scale
    stride = rng.uniform(0.0, 0.12) * h
    w = 0.5 * h
    c = w / 2
    hip, shoulder = 0.5 * h, 0.8 * h
    parts = [
        ((c - 0.045 * h, hip), (c - 0.045 * h - stride / 2, 0.03 * h), 0.045 * h),
        ((c + 0.045 * h, hip), (c + 0.045 * h + stride / 2, 0.03 * h), 0.045 * h),
        ((c, 0.56 * h), (c, 0.77 * h), 0.11 * h),
        ((c - 0.13 * h, shoulder), (c - 0.16 * h, 0.5 * h), 0.03 * h),
        ((c + 0.13 * h, shoulder), (c + 0.16 * h, 0.5 * h), 0.03 * h),
        ((c, 0.84 * h), (c, 0.87 * h), 0.03 * h),
        ((c, 0.92 * h), (c, 0.94 * h), 0.06 * h),
    ]
    material = _body_material(rng, hip, 0.85 * h, _clothes(rng))
    b.front(z, (x - c, x + c), (0.0, h), PERSON, material, _capsules(parts))
    b.shadow(x - 0.2, x + 0.2, z - 0.15, z + 0.15, 0.0, h)


# Profiles (side views) in metres, rear of the two-wheeler at x = 0, facing +x.
_BICYCLE: dict[str, Any] = {
    "wheels": ((0.36, 0.34), (1.40, 0.34)),
    "radius": 0.34,
    "frame": (
        ((0.36, 0.34), (0.78, 0.30)),
        ((0.36, 0.34), (0.62, 0.88)),
        ((0.78, 0.30), (0.62, 0.88)),
        ((0.78, 0.30), (1.28, 0.74)),
        ((0.62, 0.88), (1.25, 0.92)),
        ((1.30, 0.74), (1.40, 0.34)),
        ((1.25, 0.92), (1.22, 1.04)),
        ((0.55, 0.93), (0.72, 0.93)),
    ),
    "tube": 0.025,
    "rider": {
        "hip": (0.62, 0.98),
        "knee": (0.95, 0.70),
        "foot": (0.85, 0.28),
        "shoulder": (0.98, 1.48),
        "head": (1.08, 1.66),
        "hand": (1.22, 1.05),
    },
}
_MOTORCYCLE: dict[str, Any] = {
    "wheels": ((0.38, 0.31), (1.72, 0.31)),
    "radius": 0.31,
    "rider": {
        "hip": (0.78, 0.98),
        "knee": (1.15, 0.85),
        "foot": (1.00, 0.42),
        "shoulder": (1.02, 1.52),
        "head": (1.12, 1.72),
        "hand": (1.48, 1.08),
    },
}


def _bicycle_shape(outline: bool = False) -> Shape:
    """Frame tubes and tyres; the outline fills the wheels."""
    geo = _BICYCLE
    frame = _capsules([(a, b, geo["tube"]) for a, b in geo["frame"]])
    wheels = geo["wheels"], geo["radius"]
    return _union(_discs(*wheels) if outline else _rings(*wheels, 0.05), frame)


def _motorcycle_shape(outline: bool = False) -> Shape:
    """Engine, tank, seat, fork and tyres; the outline fills the wheels."""
    body = _capsules(
        [
            ((0.75, 0.45), (1.15, 0.45), 0.17),
            ((1.00, 0.82), (1.35, 0.86), 0.13),
            ((0.45, 0.86), (1.00, 0.86), 0.08),
            ((0.20, 0.62), (0.55, 0.80), 0.06),
            ((1.72, 0.31), (1.50, 1.00), 0.04),
            ((1.45, 1.05), (1.55, 1.05), 0.04),
            ((0.30, 0.40), (0.90, 0.33), 0.05),
            ((1.58, 0.88), (1.60, 0.90), 0.09),
        ]
    )
    wheels = _MOTORCYCLE["wheels"], _MOTORCYCLE["radius"]
    return _union(_discs(*wheels) if outline else _rings(*wheels, 0.1), body)


def _rider_shape(pose: dict) -> Shape:
    """A seated rider's profile: torso leaning to the handlebar, bent legs, head."""
    return _capsules(
        [
            (pose["hip"], pose["shoulder"], 0.14),
            (pose["hip"], pose["knee"], 0.08),
            (pose["knee"], pose["foot"], 0.065),
            (pose["shoulder"], pose["hand"], 0.045),
            (pose["head"], pose["head"], 0.11),
        ]
    )


def _scaled(shape: Shape, scale: float) -> Shape:
    return lambda x, y: shape(x / scale, y / scale)


def _add_two_wheeler(
    b: _Builder, facing: str, pos: float, start: float, *, forward: bool, motor: bool, rider: bool
) -> None:
    """A bicycle or motorcycle in profile, with or without its rider.

    facing "side": moving along the street in the plane X = pos, from Z = start;
    facing "front": crossing the street in the plane Z = pos, from X = start.
    forward: the front wheel is at the larger coordinate.
    """
    rng = b.rng
    geo = _MOTORCYCLE if motor else _BICYCLE
    label = MOTORCYCLE if motor else BICYCLE
    scale = rng.uniform(0.9, 1.1) * b.style.object_scale
    length, height = (2.1 if motor else 1.75) * scale, 1.25 * scale
    make_shape = _motorcycle_shape if motor else _bicycle_shape
    shape, outline = _scaled(make_shape(), scale), _scaled(make_shape(outline=True), scale)
    paint = _pick(rng, ((0.1, 0.1, 0.1), (0.6, 0.1, 0.1), (0.15, 0.25, 0.55), (0.7, 0.7, 0.7)))
    material = _two_wheeler_material(rng, paint, geo, scale)
    if not forward:
        shape, material = _mirrored(shape, length), _mirrored_material(material, length)
        outline = _mirrored(outline, length)
    add = b.side if facing == "side" else b.front
    add(pos, (start, start + length), (0.0, height), label, material, shape, outline=outline)
    if rider:
        body = _scaled(_rider_shape(geo["rider"]), scale)
        clothes = _clothes(rng)
        r_material = _body_material(
            rng, geo["rider"]["hip"][1] * scale + 0.1, 1.56 * scale, clothes
        )
        if not forward:
            body = _mirrored(body, length)
        # The rider is a hair nearer than the machine so legs cover the frame.
        near = pos - 0.05 if facing == "front" else pos - 0.05 * np.sign(pos)
        add(near, (start, start + length), (0.0, 1.85 * scale), RIDER, r_material, body)
    if facing == "side":
        b.shadow(pos - 0.3, pos + 0.3, start, start + length, 0.0, 1.6 if rider else 1.0)
    else:
        b.shadow(start, start + length, pos - 0.3, pos + 0.3, 0.0, 1.6 if rider else 1.0)


# Rear views in metres across the machine (centre at x = 0.45) and up: a tyre seen edge-on,
# saddle or tail, handlebar; riders astride (look-alikes of people seen from behind).
_REAR_WIDTH = 0.9
_REAR_MACHINE = {
    False: (
        ((0.45, 0.02), (0.45, 0.66), 0.022),
        ((0.45, 0.66), (0.45, 0.92), 0.02),
        ((0.37, 0.92), (0.53, 0.92), 0.03),
        ((0.45, 0.90), (0.45, 1.02), 0.02),
        ((0.15, 1.02), (0.75, 1.02), 0.02),
    ),
    True: (
        ((0.45, 0.06), (0.45, 0.56), 0.07),
        ((0.30, 0.75), (0.60, 0.75), 0.10),
        ((0.35, 0.55), (0.55, 0.55), 0.06),
        ((0.65, 0.32), (0.75, 0.36), 0.05),
        ((0.07, 1.05), (0.83, 1.05), 0.025),
        ((0.09, 1.05), (0.05, 1.22), 0.02),
        ((0.81, 1.05), (0.85, 1.22), 0.02),
    ),
}
_REAR_RIDER = {
    False: (
        ((0.45, 0.98), (0.45, 1.42), 0.17),
        ((0.45, 1.60), (0.45, 1.60), 0.11),
        ((0.28, 1.38), (0.16, 1.03), 0.04),
        ((0.62, 1.38), (0.74, 1.03), 0.04),
        ((0.36, 0.95), (0.31, 0.62), 0.075),
        ((0.54, 0.95), (0.59, 0.62), 0.075),
        ((0.31, 0.62), (0.35, 0.30), 0.06),
        ((0.59, 0.62), (0.55, 0.30), 0.06),
    ),
    True: (
        ((0.45, 1.00), (0.45, 1.45), 0.19),
        ((0.45, 1.65), (0.45, 1.65), 0.14),
        ((0.27, 1.40), (0.09, 1.06), 0.045),
        ((0.63, 1.40), (0.81, 1.06), 0.045),
        ((0.33, 0.95), (0.17, 0.78), 0.08),
        ((0.57, 0.95), (0.73, 0.78), 0.08),
        ((0.17, 0.78), (0.23, 0.42), 0.065),
        ((0.73, 0.78), (0.67, 0.42), 0.065),
    ),
}


def _rear_machine_material(rng: np.random.Generator, motor: bool) -> Material:
    """Black tyre below, painted above, a red tail light on motorcycles."""
    paint = _pick(rng, ((0.1, 0.1, 0.1), (0.6, 0.1, 0.1), (0.15, 0.25, 0.55), (0.7, 0.7, 0.7)))
    tyre, lamp = _color((0.06, 0.06, 0.07)), _color((0.8, 0.08, 0.06))
    tyre_top = 0.62 if motor else 0.68

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.where((y < tyre_top)[:, None], tyre, paint)
        if motor:
            out[(np.abs(y - 0.8) < 0.05) & (np.abs(x - _REAR_WIDTH / 2) < 0.12)] = lamp
        return out

    return material


def _add_two_wheeler_rear(b: _Builder, x: float, z: float, *, motor: bool, rider: bool) -> None:
    """A bicycle or motorcycle seen from behind (or the front) at X = x, Z = z, with or
    without its rider, as camera-facing surfaces."""
    rng = b.rng
    scale = rng.uniform(0.9, 1.1) * b.style.object_scale
    w = _REAR_WIDTH * scale
    label = MOTORCYCLE if motor else BICYCLE
    machine = _scaled(_capsules(_REAR_MACHINE[motor]), scale)
    b.front(
        z,
        (x - w / 2, x + w / 2),
        (0.0, 1.3 * scale),
        label,
        _rear_machine_material(rng, motor),
        machine,
    )
    if rider:
        body = _scaled(_capsules(_REAR_RIDER[motor]), scale)
        material = _body_material(rng, 1.0 * scale, 1.5 * scale, _clothes(rng))
        b.front(z - 0.05, (x - w / 2, x + w / 2), (0.0, 1.85 * scale), RIDER, material, body)
    b.shadow(x - 0.3, x + 0.3, z, z + (2.1 if motor else 1.75), 0.0, 1.6 if rider else 1.1)


def _two_wheeler_material(
    rng: np.random.Generator, paint: np.ndarray, geo: dict, scale: float
) -> Material:
    """Black tyres, metal hubs, painted frame or body."""
    tyre, metal = _color((0.06, 0.06, 0.07)), _color((0.6, 0.6, 0.62))
    radius = geo["radius"] * scale
    centres = [(cx * scale, cy * scale) for cx, cy in geo["wheels"]]

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(paint, (x.size, 3)).copy()
        for cx, cy in centres:
            r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            out[(r > radius * 0.7) & (r <= radius * 1.05)] = tyre
            out[r <= 0.07] = metal
        return out

    return material


def _mirrored_material(material: Material, length: float) -> Material:
    return lambda x, y: material(length - x, y)


# --- vehicles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _VehicleKind:
    """Sizes (ranges, metres) and proportions of one kind of vehicle.

    clearance: body bottom above the road (m); belt: window line / height; rear_window:
    top of the rear window / height (0: none); taper: how much the cabin narrows towards
    the roof; wheel: wheel radius (m); axles: axle positions / length from the rear.
    """

    name: str
    label: int
    length: tuple[float, float]
    width: tuple[float, float]
    height: tuple[float, float]
    clearance: float
    belt: float
    rear_window: float
    taper: float
    wheel: float
    axles: tuple[float, ...]


_VEHICLES = {
    kind.name: kind
    for kind in (
        _VehicleKind(
            "car",
            CAR,
            (3.8, 4.8),
            (1.7, 1.9),
            (1.4, 1.6),
            0.25,
            0.62,
            0.95,
            0.18,
            0.32,
            (0.18, 0.8),
        ),
        _VehicleKind(
            "van", CAR, (4.8, 5.4), (1.9, 2.0), (1.9, 2.3), 0.3, 0.52, 0.9, 0.03, 0.34, (0.18, 0.8)
        ),
        _VehicleKind(
            "truck",
            TRUCK,
            (6.5, 10.0),
            (2.3, 2.5),
            (3.0, 3.8),
            0.7,
            1.0,
            0.0,
            0.03,
            0.5,
            (0.12, 0.28, 0.85),
        ),
        _VehicleKind(
            "bus",
            BUS,
            (11.0, 13.0),
            (2.45, 2.55),
            (3.0, 3.2),
            0.3,
            0.42,
            0.9,
            0.03,
            0.5,
            (0.2, 0.78),
        ),
        _VehicleKind(
            "tram",
            TRAIN,
            (26.0, 36.0),
            (2.4, 2.6),
            (3.3, 3.5),
            0.4,
            0.4,
            0.88,
            0.03,
            0.42,
            (0.12, 0.3, 0.7, 0.88),
        ),
    )
}
_GLASS = (0.12, 0.14, 0.17)
_TYRE = (0.06, 0.06, 0.07)


def _end_face(
    kind: _VehicleKind,
    w: float,
    h: float,
    front: bool,
    paint: np.ndarray,
    rng: np.random.Generator,
) -> tuple[Shape, Material]:
    """(shape, material) of a vehicle's rear (or front, when oncoming) face, w x h metres.

    Cars taper to a cabin above the belt line; trucks show a tall blind box over a bumper
    bar; vans, buses and trams a tall body with a large window. Lights at the lower corners.
    """
    glass = _jitter(rng, _GLASS, 0.03)
    lamp = _color((0.95, 0.92, 0.8)) if front else _color((0.7, 0.06, 0.05))
    clearance, belt, window_top = kind.clearance, kind.belt * h, kind.rear_window * h
    lamp_y = clearance + 0.3 if kind.name == "truck" else belt - 0.12 * h
    offset = _offset(rng)

    def half_width(y: np.ndarray) -> np.ndarray:
        above = np.clip((y - belt) / max(h - belt, 1e-3), 0, 1)
        return w / 2 * (1 - kind.taper * above)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        body = (y >= clearance) & (np.abs(x - w / 2) <= half_width(y))
        wheels = (y < clearance + 0.05) & (np.abs(np.abs(x - w / 2) - w * 0.36) < w * 0.09)
        return body | wheels

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = paint * (1.0 + 0.04 * _tex(x, y, 20.0, offset))[:, None]
        edge = np.abs(x - w / 2)
        window = (y > belt + 0.05 * h) & (y < window_top) & (edge < half_width(y) - 0.1)
        out[window] = glass * (1.0 + 0.5 * np.clip((y[window] - belt) / h, 0, 1))[:, None]
        out[(np.abs(y - lamp_y) < 0.07) & (edge > w / 2 - 0.3)] = lamp
        out[y < clearance + 0.05] = _TYRE
        if kind.name == "truck":  # the two rear doors
            out[(edge < 0.02) & (y > clearance + 0.2)] *= 0.5
        return out

    return shape, material


def _side_face(
    kind: _VehicleKind, length: float, h: float, paint: np.ndarray, rng: np.random.Generator
) -> tuple[Shape, Material]:
    """(shape, material) of a vehicle's flank, rear at x = 0 and front at x = length.

    Cars have a cabin between the pillars; trucks a windowless cargo box behind a cab;
    vans, buses and trams a long band of windows (how buses differ from trucks) and doors.
    """
    glass = _jitter(rng, _GLASS, 0.03)
    clearance, belt, wheel_r = kind.clearance, kind.belt * h, kind.wheel
    wheels = [(a * length, wheel_r) for a in kind.axles]
    offset = _offset(rng)

    def body(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        a = x / length
        if kind.name == "car":
            up = np.clip((y - belt) / (h - belt), 0, 1)
            cabin = (a > 0.2 + 0.1 * up) & (a < 0.75 - 0.12 * up)
            return (y >= clearance) & ((y < belt) | cabin)
        if kind.name == "truck":
            cab = (a > 0.78) & (y < 0.82 * h) & (a < 1 - 0.04 * np.clip(y - 0.6 * h, 0, None))
            box = (a < 0.75) & (y >= 0.9)
            chassis = y < 1.0
            return (y >= clearance) & (cab | chassis) | box
        return y >= clearance

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = body(x, y)
        for cx, cy in wheels:
            inside |= (x - cx) ** 2 + (y - cy) ** 2 <= wheel_r**2
        return inside

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = paint * (1.0 + 0.04 * _tex(x, y, 20.0, offset))[:, None]
        a = x / length
        if kind.name == "car":
            window = (y > belt + 0.04) & (y < h - 0.08) & (a > 0.23) & (a < 0.72)
        elif kind.name == "truck":
            window = (a > 0.82) & (y > 0.5 * h) & (y < 0.75 * h)
        else:
            pane = ((x % 1.6) > 0.12) & (y > belt) & (y < 0.85 * h)
            door = (np.abs(a - 0.5) < 0.04) | (np.abs(a - 0.9) < 0.03)
            window = pane | (door & (y > clearance + 0.1))
        out[window] = glass
        for cx, cy in wheels:
            r2 = (x - cx) ** 2 + (y - cy) ** 2
            out[r2 <= wheel_r**2] = _TYRE
            out[r2 <= (0.45 * wheel_r) ** 2] = (0.5, 0.5, 0.52)
        return out

    return shape, material


def _add_vehicle(b: _Builder, kind: str, x: float, z: float, oncoming: bool) -> float:
    """A box-like vehicle centred at X = x whose near end is at Z = z: its end face and,
    if it is beside the camera axis, the flank facing the camera. Returns its length."""
    rng = b.rng
    spec = _VEHICLES[kind]
    length, w, h = (rng.uniform(*r) for r in (spec.length, spec.width, spec.height))
    palette = b.style.car_paints if spec.label == CAR else b.style.big_paints
    paint = _pick(rng, palette, 0.04)
    instance = b.instance(spec.label)
    shape, material = _end_face(spec, w, h, oncoming, paint, rng)
    b.front(z, (x - w / 2, x + w / 2), (0.0, h), spec.label, material, shape, instance=instance)
    flank_x = x - w / 2 if x - w / 2 > 0.05 else x + w / 2 if x + w / 2 < -0.05 else None
    if flank_x is not None:
        shape, material = _side_face(spec, length, h, paint, rng)
        if oncoming:  # the near end is the front: mirror the profile
            shape, material = _mirrored(shape, length), _mirrored_material(material, length)
        b.side(flank_x, (z, z + length), (0.0, h), spec.label, material, shape, instance=instance)
    if kind == "tram":  # the pantograph: thin bars above the roof
        bars = _capsules(
            [
                ((0.3, 0.0), (1.2, 0.7), 0.03),
                ((1.2, 0.7), (0.6, 0.9), 0.03),
                ((0.2, 0.9), (1.4, 0.9), 0.03),
            ]
        )
        b.front(
            z + 3.0,
            (x - 0.7, x + 0.7),
            (h, h + 1.0),
            TRAIN,
            _textured(_color((0.2, 0.2, 0.2)), rng, 0.05),
            bars,
            instance=instance,
        )
    b.shadow(x - w / 2, x + w / 2, z, z + length, 0.0, h)
    return length


def _vehicle_kind(rng: np.random.Generator, crowd: float) -> str:
    """Cars mostly; `crowd` multiplies the shares of trucks and buses."""
    truck, bus = min(0.3, 0.03 * crowd), min(0.2, 0.02 * crowd)
    shares = [1.0 - 0.08 - truck - bus, 0.08, truck, bus]
    return str(rng.choice(["car", "van", "truck", "bus"], p=shares))


def _add_traffic(b: _Builder, lanes: _Lanes) -> list[tuple[float, float, float]]:
    """Moving and parked vehicles, lane by lane, and a tram on its rails. Returns the free
    stretch of each lane, (x_left, x_right, z_free), the camera's lane first."""
    rng = b.rng
    free = []
    parking = rng.random() < 0.5 and lanes.ego < lanes.count - 1
    for lane, x in enumerate(lanes.x):
        oncoming = lane < lanes.oncoming
        parked = parking and lane == lanes.count - 1
        z = rng.uniform(12, 35) if lane == lanes.ego else rng.uniform(5, 30)
        z_first = z
        if lane == lanes.tram:
            z += _add_vehicle(b, "tram", x, z, oncoming) + rng.uniform(10, 40)
        while z < 130:
            kind = "car" if parked and rng.random() < 0.9 else _vehicle_kind(rng, b.style.crowd)
            if parked and (rng.random() < 0.25 or b.street.crosses(z, z + 5)):  # a free space
                z += rng.uniform(3, 8)
                continue
            lateral = rng.uniform(0.5, 0.9) if parked else rng.uniform(-0.3, 0.3)
            z += _add_vehicle(b, kind, x + lateral, z, oncoming and not parked)
            z += rng.uniform(0.6, 2.5) if parked else rng.uniform(4, 35)
        half = lanes.width / 2
        free.append((x - half, x + half, z_first))
    free.insert(0, free.pop(lanes.ego))  # the camera's lane first: anomalies start there
    return free


def _add_kerb_rider(b: _Builder, x: float, z: float, motor: bool, oncoming: bool) -> None:
    """A rider on the road: in profile when well beside the camera axis (the profile is
    then visible), else seen from behind (or the front, when oncoming)."""
    if abs(x) >= PROFILE_MIN_OFFSET:
        _add_two_wheeler(b, "side", x, z, forward=not oncoming, motor=motor, rider=True)
    else:
        _add_two_wheeler_rear(b, x, z, motor=motor, rider=True)


def _add_riders(b: _Builder, lanes: _Lanes) -> None:
    """Cyclists along the kerb, motorcyclists in the lanes, riders crossing at cross
    streets (profiles facing the camera), parked bicycles and motorcycles."""
    rng = b.rng
    street = b.street
    crowd = b.style.crowd
    if rng.random() < 0.5 * crowd:
        for _ in range(int(rng.integers(1, 3))):
            x = street.road_right - rng.uniform(0.5, 1.0)
            _add_kerb_rider(b, x, rng.uniform(6, 45), motor=False, oncoming=False)
    if rng.random() < 0.3 * crowd:
        lane = int(rng.integers(lanes.count))
        x = lanes.x[lane] + rng.uniform(-0.8, 0.8)
        oncoming = lane < lanes.oncoming
        _add_kerb_rider(b, x, rng.uniform(8, 50), motor=True, oncoming=oncoming)
    for c0, c1 in street.crossings:
        if rng.random() < 0.5 * crowd:
            _add_two_wheeler(
                b,
                "front",
                rng.uniform(c0 + 2, c1 - 2),
                rng.uniform(-15, 12),
                forward=bool(rng.random() < 0.5),
                motor=bool(rng.random() < min(0.6, 0.3 * crowd)),
                rider=True,
            )
    for x in (street.walk_left + 0.5, street.walk_right - 0.5):
        if rng.random() < 0.35 * crowd and abs(x) >= PROFILE_MIN_OFFSET:
            motor = bool(rng.random() < min(0.6, 0.25 * crowd))
            for _ in range(int(rng.integers(1, 4))):
                forward = bool(rng.random() < 0.5)
                z = rng.uniform(6, 50)
                if not street.crosses(z, z + 2):
                    _add_two_wheeler(b, "side", x, z, forward=forward, motor=motor, rider=False)


def _add_pedestrians(b: _Builder) -> None:
    """People on the sidewalks (some in small groups) and on crosswalks."""
    rng = b.rng
    street = b.street
    for _ in range(int(rng.poisson(b.style.pedestrians * b.style.crowd))):
        lo, hi = street.pavement(int(rng.choice([-1, 1])))
        x, z = rng.uniform(lo + 0.3, hi - 0.3), rng.uniform(5, 70)
        for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
            _add_person(b, x + rng.uniform(-0.5, 0.5), z + rng.uniform(-0.8, 0.8))
    for c0, _ in street.crossings:
        for _ in range(int(rng.poisson(1.0))):
            _add_person(
                b, rng.uniform(street.road_left, street.road_right), c0 - rng.uniform(1.5, 3.5)
            )


def _add_furniture(b: _Builder, lanes: _Lanes) -> None:
    """Lamps, sign posts, traffic lights, street trees and clutter along both sidewalks."""
    rng = b.rng
    street = b.street
    for side, kerb in ((-1, street.road_left), (1, street.road_right)):
        pole_x = kerb + side * 0.45
        z = rng.uniform(3, 15)
        spacing = rng.uniform(20, 35)
        while z < 110 and rng.random() < 0.9:
            if not street.crosses(z - 0.5, z + 0.5):
                _add_lamp(b, pole_x, z, side)
            z += spacing
        for _ in range(int(rng.integers(1, 5))):
            z = rng.uniform(5, 90)
            if not street.crosses(z - 0.5, z + 0.5):
                _add_sign_post(b, pole_x + side * rng.uniform(0, 0.3), z)
        verge = street.verge(side)
        if rng.random() < b.style.tree_row_share:
            z = rng.uniform(4, 12)
            step = rng.uniform(7, 14)
            # In the verge when there is one, else in tree pits near the curb.
            tree_x = sum(verge) / 2 if verge[1] > verge[0] else kerb + side * rng.uniform(0.9, 1.4)
            while z < 90:
                height, radius = rng.uniform(5, 10), rng.uniform(1.5, 3.0)
                if not street.crosses(z - 1, z + 1):
                    _add_tree(b, tree_x, z, height, radius)
                z += step * rng.uniform(0.8, 1.2)
        for _ in range(int(rng.integers(0, 4))):
            x, z = rng.uniform(*street.pavement(side)), rng.uniform(6, 60)
            if not street.crosses(z - 1, z + 1):
                _add_clutter(b, x, z)
        for c0, _ in street.crossings:
            _add_traffic_light(b, pole_x, c0 - 1.0, None)
            if side > 0 and rng.random() < 0.7:
                target = lanes.x[max(lanes.ego, lanes.oncoming)]
                _add_traffic_light(b, pole_x + 0.3, c0 - 1.5, target)
    if not street.crossings and rng.random() < 0.5:  # a signalised pedestrian crossing
        z = rng.uniform(15, 50)
        for x in (street.road_left - 0.45, street.road_right + 0.45):
            _add_traffic_light(b, x, z, None)


def sample_scene(rng: np.random.Generator, style: Style = DEFAULT_STYLE) -> Scene:
    """A random street scene. All randomness comes from `rng`, in a fixed order."""
    camera = _sample_camera(rng, style)
    lighting = _sample_lighting(rng)
    sky = _sample_sky(rng, style, lighting)
    street, layout = _sample_street(rng, style)
    builder = _Builder(rng, style, street)
    for side, edge in ((-1, street.walk_left), (1, street.walk_right)):
        _add_lots(builder, layout.lots[side], edge, side)
    _add_street_end(builder, layout.z_end)
    _add_furniture(builder, layout.lanes)
    free_lanes = _add_traffic(builder, layout.lanes)
    _add_riders(builder, layout.lanes)
    _add_pedestrians(builder)
    return Scene(
        style=style,
        camera=camera,
        lighting=lighting,
        sky=sky,
        street=street,
        surfaces=tuple(builder.surfaces),
        casters=tuple(builder.casters),
        free_lanes=tuple(free_lanes),
        sensor_seed=int(rng.integers(2**31)),
    )


# --- anomalies ----------------------------------------------------------------------------


def _animal_shape(length: float, height: float) -> Shape:
    """A quadruped in profile, facing +x: body, four legs, neck, head, tail."""
    L, H = length, height
    return _capsules(
        [
            ((0.25 * L, 0.62 * H), (0.72 * L, 0.64 * H), 0.17 * H),
            ((0.28 * L, 0.55 * H), (0.26 * L, 0.0), 0.05 * H),
            ((0.36 * L, 0.55 * H), (0.40 * L, 0.0), 0.05 * H),
            ((0.66 * L, 0.55 * H), (0.62 * L, 0.0), 0.05 * H),
            ((0.72 * L, 0.55 * H), (0.76 * L, 0.0), 0.05 * H),
            ((0.75 * L, 0.70 * H), (0.86 * L, 0.88 * H), 0.07 * H),
            ((0.86 * L, 0.90 * H), (0.97 * L, 0.84 * H), 0.07 * H),
            ((0.10 * L, 0.70 * H), (0.22 * L, 0.66 * H), 0.03 * H),
        ]
    )


def _add_anomaly(b: _Builder, x: float, z: float) -> None:
    """One object of no known class on the road: an animal, debris or lost cargo."""
    rng = b.rng
    kind = rng.choice(["animal", "debris", "cargo", "tyre"])
    if kind == "animal":
        length, height = rng.uniform(0.7, 2.2), rng.uniform(0.5, 1.5)
        shape = _animal_shape(length, height)
        if rng.random() < 0.5:
            shape = _mirrored(shape, length)
        rgb = _pick(rng, ((0.45, 0.3, 0.18), (0.1, 0.08, 0.07), (0.85, 0.82, 0.75)))
        material = _textured(rgb, rng, 0.25, 10.0)
    elif kind == "debris":
        length, height = rng.uniform(0.6, 2.0), rng.uniform(0.2, 0.6)
        shape = _blob(length, 2 * height, rng, 0.5)
        material = _textured(_pick(rng, ((0.5, 0.48, 0.45), (0.4, 0.3, 0.2))), rng, 0.35, 15.0)
    elif kind == "cargo":
        length, height = rng.uniform(0.5, 1.4), rng.uniform(0.4, 1.1)
        shape = None
        rgb = _pick(rng, ((0.65, 0.5, 0.3), (0.2, 0.35, 0.7), (0.85, 0.4, 0.1), (0.5, 0.42, 0.3)))
        material = _crate_material(rgb, rng)
    else:
        length = height = rng.uniform(0.55, 0.8)
        shape = _rings([(length / 2, height / 2)], height / 2, 0.15)
        material = _textured(_color((0.07, 0.07, 0.08)), rng, 0.2, 20.0)
    b.front(z, (x - length / 2, x + length / 2), (0.0, height), ANOMALY, material, shape)
    b.shadow(x - length / 2, x + length / 2, z, z + 0.5, 0.0, height)


def _crate_material(rgb: np.ndarray, rng: np.random.Generator) -> Material:
    """A box or crate: planks or tape bands."""
    offset = _offset(rng)
    plank = rng.uniform(0.1, 0.25)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = rgb * (1.0 + 0.1 * _tex(x, y, 25.0, offset))[:, None]
        out[(y % plank) < 0.02] *= 0.6
        return out

    return material


def add_anomalies(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with 1 to 3 anomalies on empty road 8 to 40 m ahead: the first in
    the camera's lane (so nearly every image shows one), the others in any lane with room."""
    builder = _Builder(rng, scene.style, scene.street)
    ahead = scene.free_lanes[0]
    roomy = [lane for lane in scene.free_lanes if lane[2] >= 12.0]
    for k in range(int(rng.integers(1, 4))):
        x0, x1, z_free = ahead if k == 0 else roomy[rng.integers(len(roomy))]
        z = rng.uniform(8.0, min(40.0, z_free - 2.0))
        _add_anomaly(builder, rng.uniform(x0 + 0.8, x1 - 0.8), z)
    return replace(
        scene,
        surfaces=scene.surfaces + tuple(builder.surfaces),
        casters=scene.casters + tuple(builder.casters),
    )


# --------------------------------------------------------------------------------------
# Rendering.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """The camera at a pixel grid: focal length, principal column, horizon row (pixels)."""

    f: float
    cx: float
    v0: float
    height: float
    rows: int
    cols: int

    @classmethod
    def of(cls, camera: Camera, rows: int, cols: int) -> _View:
        return cls(camera.focal * cols, cols / 2, camera.horizon * rows, camera.height, rows, cols)


@dataclass
class _Canvas:
    """Supersampled buffers: colour [H, W, 3], label ids [H, W], instance ids, depth (m)."""

    color: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    depth: np.ndarray

    @classmethod
    def empty(cls, rows: int, cols: int) -> _Canvas:
        return cls(
            np.zeros((rows, cols, 3), np.float32),
            np.full((rows, cols), SKY, np.uint8),
            np.full((rows, cols), SKY, np.int32),
            np.full((rows, cols), np.inf, np.float32),
        )


@dataclass(frozen=True)
class Frame:
    """A rendered image and its ground truth at the output size.

    image [H, W, 3] uint8; label_ids [H, W] uint8 (Cityscapes ids); instance_ids [H, W]
    uint16; depth [H, W] float32 metres along the optical axis (inf for sky).
    """

    image: np.ndarray
    label_ids: np.ndarray
    instance_ids: np.ndarray
    depth: np.ndarray


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixel indices whose centres lie in [lo, hi), clipped to [0, size)."""
    start = min(max(math.ceil(lo - 0.5), 0), size)
    stop = min(max(math.ceil(hi - 0.5), 0), size)
    return start, stop


def _paint(
    canvas: _Canvas,
    r0: int,
    c0: int,
    mask: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    depth: np.floating | np.ndarray,
    surface: Surface,
    light: np.ndarray,
    outline: bool,
) -> None:
    """Write a surface into the canvas window at (r0, c0) where `mask` [h, w] holds (nearer
    than what is there, and within its extent) and its shape holds; with `outline`, write
    only the label and instance where its outline holds (the gaps of see-through objects).

    x: [w] local x per column; y: [h] per row or [h, w]; depth: a scalar or [w] per column.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return
    xs = x[cols]
    ys = y[rows] if y.ndim == 1 else y[rows, cols]
    shape = surface.outline if outline else surface.shape
    if shape is not None:
        keep = shape(xs, ys)
        rows, cols, xs, ys = rows[keep], cols[keep], xs[keep], ys[keep]
        if rows.size == 0:
            return
    flat = (rows + r0) * canvas.label.shape[1] + (cols + c0)
    canvas.label.reshape(-1)[flat] = surface.label
    canvas.instance.reshape(-1)[flat] = surface.instance
    if not outline:
        canvas.color.reshape(-1, 3)[flat] = surface.material(xs, ys) * light
        canvas.depth.reshape(-1)[flat] = depth[cols] if isinstance(depth, np.ndarray) else depth


def _not_nearer(
    canvas_depth: np.ndarray, depth: np.floating | np.ndarray, outline: bool
) -> np.ndarray:
    """Where a surface at `depth` is visible: nothing nearer drawn. In the outline pass,
    which runs after everything is drawn, the surface's own pixels (equal depth) count."""
    return canvas_depth >= depth if outline else canvas_depth > depth


def _draw_front(
    canvas: _Canvas, view: _View, s: Surface, light: np.ndarray, outline: bool = False
) -> None:
    if s.pos < NEAR:
        return
    k = view.f / s.pos
    c0, c1 = _span(view.cx + k * s.s0, view.cx + k * s.s1, view.cols)
    top, bottom = view.v0 + k * (view.height - s.t1), view.v0 + k * (view.height - s.t0)
    r0, r1 = _span(top, bottom, view.rows)
    if c0 >= c1 or r0 >= r1:
        return
    depth = np.float32(s.pos)
    mask = _not_nearer(canvas.depth[r0:r1, c0:c1], depth, outline)
    x = (np.arange(c0, c1, dtype=np.float32) + 0.5 - view.cx) / k - s.s0
    y = view.height - (np.arange(r0, r1, dtype=np.float32) + 0.5 - view.v0) / k - s.t0
    _paint(canvas, r0, c0, mask, x, y, depth, s, light, outline)


def _draw_side(
    canvas: _Canvas, view: _View, s: Surface, light: np.ndarray, outline: bool = False
) -> None:
    z0, z1 = max(s.s0, NEAR), s.s1
    if z1 <= z0 or abs(s.pos) < 1e-3:
        return
    u_near, u_far = view.cx + view.f * s.pos / z0, view.cx + view.f * s.pos / z1
    c0, c1 = _span(min(u_near, u_far), max(u_near, u_far), view.cols)
    tops = [view.v0 + view.f * (view.height - s.t1) / z for z in (z0, z1)]
    bottoms = [view.v0 + view.f * (view.height - s.t0) / z for z in (z0, z1)]
    r0, r1 = _span(min(tops), max(bottoms), view.rows)
    if c0 >= c1 or r0 >= r1:
        return
    u = np.arange(c0, c1, dtype=np.float32) + 0.5 - view.cx
    z = view.f * s.pos / np.where(np.abs(u) < 1e-3, np.float32(1e-3), u)
    z = np.clip(z, z0, z1).astype(np.float32)  # rounding at the ends of the span
    v = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - view.v0
    y = view.height - v * z[None, :] / view.f - s.t0
    inside = (y >= 0) & (y < s.t1 - s.t0)
    mask = _not_nearer(canvas.depth[r0:r1, c0:c1], z[None, :], outline) & inside
    _paint(canvas, r0, c0, mask, z - s.s0, y, z, s, light, outline)


def _normal(surface: Surface) -> tuple[float, float, float]:
    """Unit normal of the visible side of a surface (towards the camera / the street)."""
    if surface.facing == "front":
        return (0.0, 0.0, -1.0)
    return (-float(np.sign(surface.pos)), 0.0, 0.0)


def _first_ground_row(view: _View) -> int:
    """The first pixel row whose centre lies below the horizon."""
    return min(max(math.floor(view.v0 + 0.5), 0), view.rows)


def _draw_sky(canvas: _Canvas, view: _View, sky: Sky) -> None:
    """Horizon-to-zenith gradient with clouds, where nothing was drawn (depth still inf)."""
    rows, cols = np.nonzero(np.isinf(canvas.depth))
    el = (view.v0 - (rows.astype(np.float32) + 0.5)) / view.f  # tangent of the elevation
    az = (cols.astype(np.float32) + 0.5 - view.cx) / view.f
    t = (np.clip(el / 0.4, 0, 1) ** 0.7)[:, None]
    base = np.asarray(sky.horizon, np.float32) * (1 - t) + np.asarray(sky.zenith, np.float32) * t
    cloud = _tex(az * 3.0, el * 8.0, 20.0, sky.offset)
    cover = np.clip((cloud - 1.2 + 2.0 * sky.clouds) * 0.6, 0, 0.85)[:, None]
    canvas.color[rows, cols] = base * (1 - cover) + np.float32(0.9) * cover


def _ground_labels(street: Street, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """[N] label ids of the ground at world X, Z [N]: road, sidewalks, then the lots."""
    labels = np.where(x < 0, street.lots_left.label_at(z), street.lots_right.label_at(z))
    walk = (x > street.walk_left) & (x < street.walk_right)
    crossing = np.zeros(x.shape, dtype=bool)
    for z0, z1 in street.crossings:
        crossing |= (z >= z0) & (z < z1)
    labels[walk] = SIDEWALK
    for side in (-1, 1):
        lo, hi = street.verge(side)
        labels[(x > lo) & (x < hi)] = TERRAIN
    labels[(walk & crossing) | ((x >= street.road_left) & (x <= street.road_right))] = ROAD
    return labels.astype(np.uint8)


def _shadow_bounds(c: Caster, step: tuple[float, float]) -> tuple[float, float, float, float]:
    """(x_min, x_max, z_min, z_max) of a caster's shadow on the ground."""
    xs = [
        c.x0 + c.y0 * step[0],
        c.x1 + c.y0 * step[0],
        c.x0 + c.y1 * step[0],
        c.x1 + c.y1 * step[0],
    ]
    zs = [
        c.z0 + c.y0 * step[1],
        c.z1 + c.y0 * step[1],
        c.z0 + c.y1 * step[1],
        c.z1 + c.y1 * step[1],
    ]
    return min(xs), max(xs), min(zs), max(zs)


def _in_shadow(c: Caster, x: np.ndarray, z: np.ndarray, step: tuple[float, float]) -> np.ndarray:
    """[...] bool: ground points (x, z) that the caster hides from the sun.

    A point at height y above footprint point q falls on the ground at q + y * step, so a
    ground point p is shadowed when p - y * step lies in the footprint for some y in
    [y0, y1] (a box), or within the crown radius of the centre line (a round caster).
    """
    if c.round:
        centre = np.array([(c.x0 + c.x1) / 2, (c.z0 + c.z1) / 2], np.float32)
        a = centre + c.y0 * np.asarray(step, np.float32)
        b = centre + c.y1 * np.asarray(step, np.float32)
        return _segments_distance2(x, z, a, b) <= ((c.x1 - c.x0) / 2) ** 2
    lo = np.full(x.shape, c.y0, np.float32)
    hi = np.full(x.shape, c.y1, np.float32)
    for coord, start, end, d in ((x, c.x0, c.x1, step[0]), (z, c.z0, c.z1, step[1])):
        if abs(d) < 1e-6:
            hi = np.where((coord >= start) & (coord <= end), hi, -np.inf)
        else:
            l1, l2 = (coord - end) / d, (coord - start) / d
            lo = np.maximum(lo, np.minimum(l1, l2))
            hi = np.minimum(hi, np.maximum(l1, l2))
    return lo <= hi


def _ground_shadow(
    scene: Scene, view: _View, row0: int, x: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """[h, w] float32 1 where the ground (rows from row0) is in shadow, else 0."""
    shadow = np.zeros(x.shape, dtype=bool)
    sun = scene.lighting.sun
    if scene.lighting.direct[0] < 0.3:  # overcast: no hard shadows
        return shadow.astype(np.float32)
    step = (-sun[0] / sun[1], -sun[2] / sun[1])
    for c in scene.casters:
        x0, x1, z0, z1 = _shadow_bounds(c, step)
        if c.round:
            r = (c.x1 - c.x0) / 2
            x0, x1, z0, z1 = x0 - r, x1 + r, z0 - r, z1 + r
        z0 = max(z0, NEAR)
        if z1 <= z0:
            continue
        rows = _span(
            view.v0 + view.f * view.height / z1, view.v0 + view.f * view.height / z0, view.rows
        )
        us = [view.cx + view.f * xx / zz for xx in (x0, x1) for zz in (z0, z1)]
        cols = _span(min(us), max(us), view.cols)
        r0, r1 = max(rows[0] - row0, 0), max(rows[1] - row0, 0)
        if r0 >= r1 or cols[0] >= cols[1]:
            continue
        block = (slice(r0, r1), slice(*cols))
        shadow[block] |= _in_shadow(c, x[block], z[block], step)
    return shadow.astype(np.float32)


def _draw_ground(canvas: _Canvas, view: _View, scene: Scene) -> None:
    """Road, sidewalks, terrain and cross streets below the horizon, with cast shadows,
    on the pixels where nothing nearer was drawn (so hidden ground costs no shading)."""
    row0 = _first_ground_row(view)
    if row0 >= view.rows:
        return
    v = np.arange(row0, view.rows, dtype=np.float32) + 0.5 - view.v0
    z = np.minimum(view.f * view.height / np.maximum(v, 1e-3), FAR)[:, None]
    x = (np.arange(view.cols, dtype=np.float32) + 0.5 - view.cx)[None, :] * z / view.f
    z = np.broadcast_to(z, x.shape)
    visible = z < canvas.depth[row0:]
    xs, zs = x[visible], z[visible]
    labels = _ground_labels(scene.street, xs, zs)
    albedo = np.empty((xs.size, 3), np.float32)
    street = scene.street
    for label, material in (
        (ROAD, street.road_material),
        (SIDEWALK, street.sidewalk_material),
        (TERRAIN, street.terrain_material),
    ):
        where = labels == label
        if where.any():
            albedo[where] = material(xs[where], zs[where])
    light = scene.lighting
    shadow = _ground_shadow(scene, view, row0, x, z)[visible]
    ambient, direct = np.asarray(light.ambient, np.float32), np.asarray(light.direct, np.float32)
    sun_up = np.float32(light.sun[1])
    canvas.color[row0:][visible] = albedo * (ambient + direct * sun_up * (1 - shadow)[:, None])
    canvas.label[row0:][visible] = labels
    canvas.instance[row0:][visible] = labels
    canvas.depth[row0:][visible] = zs


def _apply_haze(color: np.ndarray, depth: np.ndarray, scene: Scene) -> None:
    """Aerial perspective, in place: distant surfaces fade to the horizon colour (the sky
    and the hood are left as they are). color [H, W, 3]; depth [H, W] metres."""
    t = np.exp(-depth / np.float32(scene.lighting.visibility))
    t[~np.isfinite(depth)] = 1.0
    haze = np.asarray(scene.sky.horizon, np.float32)
    color += (1 - t)[..., None] * (haze - color)


def _hood_mask(view: _View, style: Style) -> np.ndarray:
    """[H, W] bool: the ego vehicle's bonnet at the bottom, curving down to the sides."""
    u = (np.arange(view.cols, dtype=np.float32) + 0.5) / view.cols - 0.5
    edge = view.rows * (style.hood_top + 0.5 * u**2)
    rows = np.arange(view.rows, dtype=np.float32)[:, None] + 0.5
    return rows >= edge[None, :]


def _reserve_hood(canvas: _Canvas, hood: np.ndarray) -> None:
    """Claim the hood pixels first, at its distance, so nothing behind it is shaded."""
    canvas.label[hood] = EGO
    canvas.instance[hood] = EGO
    canvas.depth[hood] = HOOD_DEPTH


def _paint_hood(canvas: _Canvas, hood: np.ndarray, scene: Scene) -> None:
    """Colour the bonnet: dark paint mirroring the scene just above its edge."""
    rows, cols = np.nonzero(hood)
    top = np.argmax(hood, axis=0)  # [W] first hood row of each column
    mirror = np.clip(2 * top[cols] - rows, 0, hood.shape[0] - 1)
    paint = np.asarray(scene.style.hood_paint, np.float32) * scene.lighting.shade((0, 1, 0))
    canvas.color[rows, cols] = 0.7 * paint + 0.3 * canvas.color[mirror, cols]


def _nearest(surface: Surface) -> float:
    """Depth of the nearest point of a surface."""
    return surface.pos if surface.facing == "front" else surface.s0


def _box_reduce(color: np.ndarray, factor: int) -> np.ndarray:
    """[H*f, W*f, 3] -> [H, W, 3] mean of each f x f block."""
    total = sum(color[i::factor, j::factor] for i in range(factor) for j in range(factor))
    return total / np.float32(factor * factor)


def _majority_sample(labels: np.ndarray, factor: int) -> np.ndarray:
    """[H, W] index in 0..factor²-1 of the sample in each factor x factor block whose label
    is the most frequent (the first such in raster order on ties)."""
    h, w = labels.shape[0] // factor, labels.shape[1] // factor
    samples = labels.reshape(h, factor, w, factor).transpose(1, 3, 0, 2).reshape(-1, h, w)
    votes = (samples[:, None] == samples[None, :]).sum(axis=1)
    return votes.argmax(axis=0)


def _pick_samples(array: np.ndarray, index: np.ndarray, factor: int) -> np.ndarray:
    h, w = index.shape
    samples = array.reshape(h, factor, w, factor).transpose(1, 3, 0, 2).reshape(-1, h, w)
    return np.take_along_axis(samples, index[None], axis=0)[0]


def _sensor(color: np.ndarray, scene: Scene) -> np.ndarray:
    """[H, W, 3] scene light -> uint8: exposure, vignetting, shot and read noise."""
    rng = np.random.default_rng(scene.sensor_seed)
    h, w = color.shape[:2]
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    xx = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    vignette = 1.0 - 0.35 * (xx[None, :] ** 2 + yy[:, None] ** 2)
    signal = np.clip(color * (scene.lighting.exposure * vignette)[..., None], 0, 1)
    read = rng.uniform(0.006, 0.02)
    std = np.sqrt(read**2 + 0.002 * signal)
    noisy = signal + std * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)


def _roi_margin(label_ids: np.ndarray) -> None:
    """Mark the image border out of the region of interest, as Cityscapes does."""
    m = max(1, round(0.004 * label_ids.shape[1]))
    label_ids[:, :m] = OUT_OF_ROI
    label_ids[:, -m:] = OUT_OF_ROI
    label_ids[-m:, :] = OUT_OF_ROI


def render(scene: Scene, height: int, width: int) -> Frame:
    """Render a scene at height x width (supersampled SUPERSAMPLE x, then reduced)."""
    factor = SUPERSAMPLE
    view = _View.of(scene.camera, height * factor, width * factor)
    canvas = _Canvas.empty(view.rows, view.cols)
    hood = _hood_mask(view, scene.style)
    _reserve_hood(canvas, hood)
    lights = {
        n: scene.lighting.shade(n) for n in ((0.0, 0.0, -1.0), (1.0, 0.0, 0.0), (-1.0, 0.0, 0.0))
    }

    def draw(surface: Surface, outline: bool = False) -> None:
        by_facing = _draw_front if surface.facing == "front" else _draw_side
        by_facing(canvas, view, surface, lights[_normal(surface)], outline)

    # Nearest first: with the depth test, hidden parts then cost no material evaluation.
    for surface in sorted(scene.surfaces, key=_nearest):
        draw(surface)
    _draw_ground(canvas, view, scene)
    _draw_sky(canvas, view, scene.sky)
    # Then the labels of see-through objects over what shows through their gaps.
    for surface in scene.surfaces:
        if surface.outline is not None:
            draw(surface, outline=True)
    _paint_hood(canvas, hood, scene)
    color = _box_reduce(canvas.color, factor)
    pick = _majority_sample(canvas.label, factor)
    label_ids = _pick_samples(canvas.label, pick, factor)
    instance = _pick_samples(canvas.instance, pick, factor)
    depth = _pick_samples(canvas.depth, pick, factor)
    _apply_haze(color, np.where(label_ids == EGO, np.inf, depth), scene)
    _roi_margin(label_ids)
    # Instance ids keep id * 1000 + k only where the pixel still has that class.
    instance = np.where(instance // 1000 == label_ids, instance, label_ids).astype(np.uint16)
    return Frame(_sensor(color, scene), label_ids, instance, depth)


# --------------------------------------------------------------------------------------
# Files: names, writing, generation, checking.
# --------------------------------------------------------------------------------------

META_FILE = "meta.json"
# Present while a generation runs; a folder with it and no meta.json is an interrupted run.
PARTIAL_FILE = ".synthstreets-incomplete"
# Folders a generation writes (and a forced or resumed generation removes first).
OUTPUT_DIRS = ("leftImg8bit", "gtFine", "shifts")
SHIFTS_DIR = "shifts"
VALID_LABEL_IDS = np.zeros(256, dtype=bool)
VALID_LABEL_IDS[[label_id for label_id in id2label if label_id >= 0]] = True
INSTANCE_CLASSES = np.zeros(256, dtype=bool)
INSTANCE_CLASSES[[i for i, label in id2label.items() if i >= 0 and label.hasInstances]] = True
# Workers are forked where the OS can: spawning would re-import the package (and torch,
# seconds per worker) in each of them.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


@dataclass(frozen=True)
class SynthConfig:
    """What a SynthStreets data set is made of; equal configs give byte-identical files.

    size: (height, width) of every image; train / val / test: images per split;
    seed: the master seed (>= 0); shifts: shift kinds written for the test split
    (`segdistill.data.shifts.SHIFT_KINDS`).
    object_scale: drawing size of poles, signs, traffic lights, fence bars, people and
    two-wheelers relative to life size (1 = realistic). At 128x256 a real pole is 1-2
    pixels wide, below what a network predicting at stride 4 resolves; the quick configs
    draw them 2.5 times larger so that small networks learn those classes in CPU minutes.
    crowd: multiplies how often the rare classes occur (people, riders, two-wheelers and
    the motorcycles' share of them, trucks, buses, walls, fences); 1 = the Cityscapes-like
    imbalance.
    """

    size: tuple[int, int] = (128, 256)
    train: int = 600
    val: int = 100
    test: int = 100
    seed: int = 0
    shifts: tuple[str, ...] = shifts.SHIFT_KINDS
    object_scale: float = 1.0
    crowd: float = 1.0

    def __post_init__(self) -> None:
        height, width = self.size
        if not (MIN_SIZE[0] <= height <= MAX_SIZE[0] and MIN_SIZE[1] <= width <= MAX_SIZE[1]):
            raise DataError(
                f"image size {height}x{width} is outside {MIN_SIZE[0]}x{MIN_SIZE[1]} .. "
                f"{MAX_SIZE[0]}x{MAX_SIZE[1]} (height x width)"
            )
        for split in SPLITS:
            if self.count(split) < 0:
                raise DataError(f"--{split} must be >= 0, got {self.count(split)}")
        if self.seed < 0:
            raise DataError(f"seed must be >= 0, got {self.seed}")
        for name, value, high in (
            ("object_scale", self.object_scale, 4.0),
            ("crowd", self.crowd, 4.0),
        ):
            if not 0.5 <= value <= high:
                raise DataError(f"{name} must be in [0.5, {high}], got {value}")
        shifts.expand_shifts(self.shifts)  # raises on unknown kinds

    def count(self, split: str) -> int:
        """Number of images of a split."""
        return {"train": self.train, "val": self.val, "test": self.test}[split]

    def shift_specs(self) -> list[ShiftSpec]:
        """The shifted copies to write (none without test images)."""
        return shifts.expand_shifts(self.shifts) if self.test else []

    def params(self) -> dict:
        """The parameters that decide the files (compared to refuse or skip a rewrite)."""
        return {
            "version": GENERATOR_VERSION,
            "seed": self.seed,
            "size": list(self.size),
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "shifts": [spec.name for spec in self.shift_specs()],
            "object_scale": self.object_scale,
            "crowd": self.crowd,
        }

    def style(self, base: Style) -> Style:
        """`base` (DEFAULT_STYLE or NEWCITY_STYLE) with this data set's object scale and
        crowd."""
        return replace(base, object_scale=self.object_scale, crowd=self.crowd)


def image_name(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of image `index` of a split; cities take turns, seq counts per city."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{FRAME:06d}"


@dataclass(frozen=True)
class SamplePaths:
    """The files of one image in a Cityscapes-layout tree rooted at `root`."""

    image: Path
    label_ids: Path
    train_ids: Path
    instance_ids: Path
    depth: Path
    anomaly: Path

    @classmethod
    def of(cls, root: Path, split: str, city: str, stem: str) -> SamplePaths:
        images = root / "leftImg8bit" / split / city
        labels = root / "gtFine" / split / city
        return cls(
            image=images / f"{stem}_leftImg8bit.png",
            label_ids=labels / f"{stem}_gtFine_labelIds.png",
            train_ids=labels / f"{stem}_gtFine_labelTrainIds.png",
            instance_ids=labels / f"{stem}_gtFine_instanceIds.png",
            depth=labels / f"{stem}_depth.png",
            anomaly=labels / f"{stem}_gtFine_anomaly.png",
        )

    def ground_truth(self) -> tuple[Path, Path, Path, Path]:
        """The label and depth files that a photometric shift shares with the clean image."""
        return (self.label_ids, self.train_ids, self.instance_ids, self.depth)


def shift_root(root: Path, spec_name: str) -> Path:
    """The Cityscapes-layout tree of one shifted copy."""
    return root / SHIFTS_DIR / spec_name


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """[H, W] metres (inf = sky) -> uint16 centimetres, 0 for the sky."""
    cm = np.clip(np.rint(np.nan_to_num(depth, posinf=0.0) * DEPTH_UNITS_PER_METRE), 0, 65535)
    cm[np.isfinite(depth) & (cm == 0)] = 1  # a finite depth never reads as sky
    return cm.astype(np.uint16)


def decode_depth(stored: np.ndarray) -> np.ndarray:
    """uint16 centimetres -> [H, W] float32 metres, inf where 0 (the sky)."""
    depth = stored.astype(np.float32) / DEPTH_UNITS_PER_METRE
    depth[stored == 0] = np.inf
    return depth


def read_png(path: str | Path) -> np.ndarray:
    """A PNG as an array, fully decoded; DataError naming the file if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def read_depth(path: str | Path) -> np.ndarray:
    """[H, W] float32 depth in metres from a `_depth.png` (inf for the sky)."""
    return decode_depth(read_png(path))


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Run-length zlib: noisy photos barely compress anyway, and it is the fastest strategy
    # (a third faster than the default at level 1, and smaller for our images).
    Image.fromarray(array).save(path, compress_level=1, compress_type=zlib.Z_RLE)


def write_frame(frame: Frame, paths: SamplePaths, anomaly: bool = False) -> None:
    """Write an image, its three label files and depth (and the anomaly mask)."""
    _write_png(paths.image, frame.image)
    _write_png(paths.label_ids, frame.label_ids)
    _write_png(paths.train_ids, LABEL_ID_TO_TRAIN_ID[frame.label_ids])
    _write_png(paths.instance_ids, frame.instance_ids)
    _write_png(paths.depth, encode_depth(frame.depth))
    if anomaly:
        _write_png(paths.anomaly, shifts.anomaly_mask(frame.label_ids))


def _share_file(source: Path, target: Path) -> None:
    """Give `target` the content of `source`: a hard link where the file system allows
    (no second copy on disk), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def image_rng(seed: int, split: str, index: int, stream: str = "scene") -> np.random.Generator:
    """The generator of one image's `stream` ("scene", or a shift name for its noise)."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index, zlib.crc32(stream.encode())])


def _train_id_counts(label_ids: np.ndarray) -> np.ndarray:
    """[256] pixel count of each train id (255 = void)."""
    return np.bincount(LABEL_ID_TO_TRAIN_ID[label_ids].ravel(), minlength=256)


# `data info`'s interior share: a pixel whose neighbours up to this many pixels away (a
# square) all share its train id. The share says how much of a class is more than a
# boundary at the data set's resolution, where an ensemble's members tend to disagree.
INTERIOR_RADIUS = 2


def interior_counts(train_ids: np.ndarray, radius: int = INTERIOR_RADIUS) -> np.ndarray:
    """[256] pixel count of each train id over the pixels whose (2 radius + 1)^2
    neighbourhood holds only that id; train_ids: uint8 [H, W]. The image edge is not a
    boundary (the neighbourhood is clipped to the image)."""
    size = 2 * radius + 1
    uniform = maximum_filter(train_ids, size, mode="nearest") == minimum_filter(
        train_ids, size, mode="nearest"
    )
    return np.bincount(train_ids[uniform], minlength=256)


@dataclass(frozen=True)
class _Job:
    root: Path
    config: SynthConfig
    split: str
    index: int


def _run_job(job: _Job) -> dict[str, np.ndarray]:
    """Render and write one image (and, for test images, its shifted copies).

    Returns {group: [256] train id pixel counts}, groups being the split and shift names.
    """
    config = job.config
    height, width = config.size
    city, stem = image_name(job.split, job.index)
    scene = sample_scene(image_rng(config.seed, job.split, job.index), config.style(DEFAULT_STYLE))
    frame = render(scene, height, width)
    paths = SamplePaths.of(job.root, job.split, city, stem)
    write_frame(frame, paths)
    counts = {job.split: _train_id_counts(frame.label_ids)}
    for spec in config.shift_specs() if job.split == "test" else []:
        target = SamplePaths.of(shift_root(job.root, spec.name), job.split, city, stem)
        rng = image_rng(config.seed, job.split, job.index, spec.name)
        if spec.photometric:
            depth = decode_depth(encode_depth(frame.depth))  # exactly what the file holds
            _write_png(target.image, shifts.apply_photometric(spec, frame.image, depth, rng))
            for source, copy in zip(paths.ground_truth(), target.ground_truth()):
                _share_file(source, copy)
            counts[spec.name] = counts[job.split]
            continue
        if spec.kind == "newcity":
            newcity = config.style(NEWCITY_STYLE)
            shifted = sample_scene(image_rng(config.seed, job.split, job.index), newcity)
        else:
            shifted = add_anomalies(scene, rng)
        shifted_frame = render(shifted, height, width)
        write_frame(shifted_frame, target, anomaly=spec.kind == "anomaly")
        counts[spec.name] = _train_id_counts(shifted_frame.label_ids)
    return counts


class _Stats:
    """Per group: summed train id pixel counts and the number of images each id occurs in."""

    def __init__(self) -> None:
        self.pixels: dict[str, np.ndarray] = {}
        self.images: dict[str, np.ndarray] = {}

    def add(self, group: str, counts: np.ndarray) -> None:
        self.pixels[group] = self.pixels.get(group, 0) + counts
        self.images[group] = self.images.get(group, 0) + (counts > 0)

    @staticmethod
    def named(counts: np.ndarray) -> dict[str, int]:
        """[256] counts by train id -> {class name: count}, "void" for the ignore id."""
        named = {name: int(counts[i]) for i, name in enumerate(CLASS_NAMES)}
        named["void"] = int(counts[IGNORE_INDEX])
        return named

    def as_meta(self) -> dict:
        """class_pixels, class_frequencies (fraction of all pixels) and class_images (images
        a class occurs in), by group and class name."""
        out: dict[str, dict] = {"class_pixels": {}, "class_frequencies": {}, "class_images": {}}
        for group, pixels in self.pixels.items():
            total = max(int(pixels.sum()), 1)
            named = self.named(pixels)
            out["class_pixels"][group] = named
            out["class_frequencies"][group] = {n: round(c / total, 6) for n, c in named.items()}
            out["class_images"][group] = self.named(self.images[group])
        return out


def _jobs(root: Path, config: SynthConfig) -> list[_Job]:
    return [
        _Job(root, config, split, index) for split in SPLITS for index in range(config.count(split))
    ]


def _render_all(root: Path, config: SynthConfig, workers: int, progress: bool) -> _Stats:
    """Run every job, in worker processes when workers > 1, with a progress bar."""
    jobs = _jobs(root, config)
    stats = _Stats()
    bar = tqdm(total=len(jobs), desc="synthstreets", unit="img", disable=not progress)
    if workers > 1:
        context = multiprocessing.get_context(START_METHOD)
        with context.Pool(workers, initializer=ignore_ctrl_c) as pool:
            results = pool.imap(_run_job, jobs, chunksize=4)
            for counts in results:
                _collect(stats, counts, bar)
    else:
        for job in jobs:
            _collect(stats, _run_job(job), bar)
    bar.close()
    return stats


def _collect(stats: _Stats, counts: dict[str, np.ndarray], bar: tqdm) -> None:
    for group, group_counts in counts.items():
        stats.add(group, group_counts)
    bar.update()


def _meta(config: SynthConfig, stats: _Stats) -> dict:
    """The meta.json content: parameters, layout, counts and class statistics."""
    return {
        "generator": "segdistill synthstreets",
        "version": GENERATOR_VERSION,
        "params": config.params(),
        "seed": config.seed,
        "size": list(config.size),
        "label_files": {
            "labelIds": "Cityscapes label ids, uint8",
            "labelTrainIds": "train ids 0..18, 255 void, uint8",
            "instanceIds": "uint16, label id * 1000 + k for instance classes, else label id",
            "depth": "{stem}_depth.png in gtFine: uint16 centimetres along the optical axis, "
            "0 = sky",
            "anomaly": "{stem}_gtFine_anomaly.png (anomaly shift): 1 anomaly, 0 in-distribution,"
            " 255 other void",
        },
        "splits": {
            split: {"images": config.count(split), "cities": list(CITIES[split])}
            for split in SPLITS
        },
        "shifts": {
            spec.name: {
                "kind": spec.kind,
                "beta": spec.beta,
                "split": "test",
                "images": config.test,
                "root": f"{SHIFTS_DIR}/{spec.name}",
            }
            for spec in config.shift_specs()
        },
        **stats.as_meta(),
    }


def read_meta(root: Path) -> dict | None:
    """The meta.json of a data set folder, or None when there is none."""
    path = Path(root) / META_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def _write_json(path: Path, content: dict) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(temporary, path)


def _clear(root: Path) -> None:
    """Remove what a generation writes (never anything else in the folder)."""
    for name in OUTPUT_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)
    for name in (META_FILE, PARTIAL_FILE):
        (root / name).unlink(missing_ok=True)


def _check_target(root: Path, config: SynthConfig, force: bool) -> bool:
    """Whether to generate into `root`: False when the same data set is already there;
    DataError when another one (or foreign Cityscapes folders) is there without force."""
    if root.exists() and not root.is_dir():
        raise DataError(f"--out {root} is a file, not a folder")
    meta = read_meta(root)
    if meta is not None:
        if meta.get("params") == config.params():
            return False
        if not force:
            raise DataError(
                f"{root} already holds a different SynthStreets data set "
                f"(params {json.dumps(meta.get('params'))}, asked for "
                f"{json.dumps(config.params())}); delete it, replace it (`segdistill data "
                "synth --force`) or generate elsewhere (--out, or data.root in an experiment)"
            )
        return True
    interrupted = (root / PARTIAL_FILE).exists()
    foreign = [name for name in OUTPUT_DIRS if (root / name).exists()]
    if foreign and not interrupted and not force:
        raise DataError(
            f"{root} holds {', '.join(foreign)} but no {META_FILE}: not a SynthStreets data set; "
            "use --force to overwrite it or pick another --out"
        )
    return True


def generate(
    root: str | Path,
    config: SynthConfig,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
) -> bool:
    """Write a SynthStreets data set into `root`. Returns False when the same data set
    (same parameters in meta.json) is already there and nothing was done.

    An interrupted generation (no meta.json, the partial marker present) is redone from
    scratch; a different data set is replaced only with `force`.
    """
    root = Path(root)
    if not _check_target(root, config, force):
        return False
    _clear(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / PARTIAL_FILE, config.params())
    stats = _render_all(root, config, max(1, workers), progress)
    _write_json(root / META_FILE, _meta(config, stats))
    (root / PARTIAL_FILE).unlink()
    return True


@dataclass(frozen=True)
class GroupReport:
    """What `check_dataset` found in one split or shifted copy.

    kind: "clean" for a split, else the shift kind; class_pixels / class_images /
    class_interior: [256] pixels of each train id (255 void), the number of images each
    occurs in, and its pixels away from any other id (`interior_counts`).
    """

    name: str
    kind: str
    root: Path
    split: str
    images: int
    class_pixels: np.ndarray
    class_images: np.ndarray
    class_interior: np.ndarray


def _groups(root: Path, meta: dict) -> list[tuple[str, Path, str, str]]:
    """(name, tree root, split, kind) of every split and shifted copy meta.json lists."""
    groups = [(split, root, split, "clean") for split in meta.get("splits", {})]
    for name, info in meta.get("shifts", {}).items():
        groups.append((name, root / info["root"], info["split"], info["kind"]))
    return groups


def _check_shape(
    path: Path, array: np.ndarray, shape: tuple[int, ...], dtype: type[np.generic]
) -> None:
    if array.shape != shape or array.dtype != dtype:
        raise DataError(
            f"{path}: expected {np.dtype(dtype).name} {shape}, found {array.dtype.name} "
            f"{array.shape}"
        )


def _check_sample(
    paths: SamplePaths, size: tuple[int, int], anomaly: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one image's files; returns its [256] train id pixel counts, of all pixels
    and of the interior ones (`interior_counts`).

    Each file must decode, have the data set's size and type, and agree with the others:
    label ids from the official table, train ids = the table's mapping of them, instance
    ids id * 1000 + k only on instance classes, depth 0 (no depth) on all sky pixels.
    """
    _check_shape(paths.image, read_png(paths.image), (*size, 3), np.uint8)
    label_ids = read_png(paths.label_ids)
    _check_shape(paths.label_ids, label_ids, size, np.uint8)
    unknown = np.unique(label_ids[~VALID_LABEL_IDS[label_ids]])
    if unknown.size:
        raise DataError(f"{paths.label_ids}: label ids {unknown.tolist()} are not Cityscapes ids")
    train_ids = read_png(paths.train_ids)
    _check_shape(paths.train_ids, train_ids, size, np.uint8)
    if not np.array_equal(train_ids, LABEL_ID_TO_TRAIN_ID[label_ids]):
        raise DataError(f"{paths.train_ids}: train ids do not match {paths.label_ids.name}")
    instances = read_png(paths.instance_ids)
    _check_shape(paths.instance_ids, instances, size, np.uint16)
    owner = np.where(instances >= 1000, instances // 1000, instances)
    if not np.array_equal(owner, label_ids) or (
        np.any(~INSTANCE_CLASSES[label_ids] & (instances >= 1000))
    ):
        raise DataError(f"{paths.instance_ids}: instance ids do not match {paths.label_ids.name}")
    depth = read_png(paths.depth)
    _check_shape(paths.depth, depth, size, np.uint16)
    if np.any(depth[label_ids == SKY] != 0):
        raise DataError(f"{paths.depth}: sky pixels must have depth 0 (no finite depth)")
    if anomaly:
        mask = read_png(paths.anomaly)
        _check_shape(paths.anomaly, mask, size, np.uint8)
        if not np.array_equal(mask, shifts.anomaly_mask(label_ids)):
            raise DataError(f"{paths.anomaly}: anomaly mask does not match the void labels")
    return _train_id_counts(label_ids), interior_counts(train_ids)


def _image_files(tree: Path, split: str) -> list[Path]:
    return sorted((tree / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))


# What a user pointing `data info` or `data preview` at their own data should know.
NOT_SYNTHSTREETS = (
    "`data info` and `data preview` also take a Cityscapes-layout folder (leftImg8bit/, "
    "gtFine/) or a folder data set (classes.yaml)"
)


def check_dataset(
    root: str | Path, progress: bool = False, problems: list[str] | None = None
) -> tuple[dict, list[GroupReport]]:
    """Check a SynthStreets folder against its meta.json; returns (meta, one report per
    split and shifted copy). Raises DataError naming the first bad file or count, or with
    a `problems` list appends each one to it and goes on (`segdistill data info` lists
    them all); the statistics then leave the bad files out."""

    def bad(error: DataError) -> None:
        if problems is None:
            raise error
        problems.append(str(error))

    root = Path(root)
    meta = read_meta(root)
    if meta is None:
        state = "interrupted generation" if (root / PARTIAL_FILE).exists() else "not found"
        raise DataError(
            f"{root / META_FILE}: {state}; (re)run `segdistill data synth --out {root}` "
            f"({NOT_SYNTHSTREETS})"
        )
    size = tuple(meta["size"])
    groups = _groups(root, meta)
    expected = {name: info["images"] for name, info in meta["splits"].items()}
    expected |= {name: info["images"] for name, info in meta["shifts"].items()}
    reports = []
    for name, tree, split, kind in tqdm(groups, desc="checking", disable=not progress):
        images = _image_files(tree, split)
        whole = len(images) == expected[name]
        if not whole:
            bad(
                DataError(
                    f"{tree / 'leftImg8bit' / split}: {len(images)} images, meta.json says "
                    f"{expected[name]}"
                )
            )
        stats = _Stats()
        interior = np.zeros(256, np.int64)
        for image in images:
            stem = image.name.removesuffix("_leftImg8bit.png")
            paths = SamplePaths.of(tree, split, image.parent.name, stem)
            try:
                counts, inside = _check_sample(paths, size, kind == "anomaly")
            except DataError as error:
                bad(error)
                whole = False
                continue
            stats.add(name, counts)
            interior += inside
        pixels = stats.pixels.get(name, np.zeros(256, np.int64))
        class_images = stats.images.get(name, np.zeros(256, np.int64))
        stored = meta.get("class_pixels", {}).get(name)
        # Counts without the bad files cannot match meta.json's: those files were named.
        if whole and stored is not None and stored != _Stats.named(pixels):
            bad(DataError(f"{root / META_FILE}: class pixel counts of {name} do not match files"))
        reports.append(
            GroupReport(name, kind, tree, split, len(images), pixels, class_images, interior)
        )
    return meta, reports
