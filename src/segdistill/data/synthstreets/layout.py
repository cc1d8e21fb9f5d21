"""Scene sampling, the base: the `Builder` objects are added through, and the camera,
lighting, sky, lanes, lots and street of a scene."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cityscapesscripts.helpers.labels import id2label

from segdistill.data.synthstreets.constants import FAR, ROAD, SIDEWALK, TERRAIN, Material, Shape
from segdistill.data.synthstreets.scene import Camera, Caster, Lighting, Lots, Sky, Street, Surface
from segdistill.data.synthstreets.shapes import jitter, pick, textured
from segdistill.data.synthstreets.styles import Style
from segdistill.data.synthstreets.textures import cell_noise, tex, tex_offset


class Builder:
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
        instance id is a new one (instance classes) unless given, e.g. to share it;
        `outline` (see-through objects) is what its label covers (see `Surface`)."""
        self._add("front", z, xs, ys, label, material, shape, instance, outline)

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
        """Add a street-facing patch in the plane X = x over Z range zs, heights ys (the
        rest as `front`)."""
        self._add("side", x, zs, ys, label, material, shape, instance, outline)

    def _add(
        self,
        facing: str,
        pos: float,
        span: tuple[float, float],
        ys: tuple[float, float],
        label: int,
        material: Material,
        shape: Shape | None,
        instance: int | None,
        outline: Shape | None,
    ) -> None:
        instance = self.instance(label) if instance is None else instance
        surface = Surface(facing, pos, *span, *ys, label, instance, material, shape, outline)
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


def sample_camera(rng: np.random.Generator, style: Style) -> Camera:
    return Camera(
        height=rng.uniform(*style.camera_height),
        focal=style.focal,
        horizon=style.horizon + rng.normal(0.0, 0.015),
    )


def sample_lighting(rng: np.random.Generator) -> Lighting:
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


def sample_sky(rng: np.random.Generator, style: Style, lighting: Lighting) -> Sky:
    grey = lighting.direct[0] < 0.3  # overcast: a pale grey sky
    zenith = jitter(rng, (0.68, 0.70, 0.73) if grey else style.sky_zenith, 0.04)
    horizon = jitter(rng, (0.80, 0.81, 0.82) if grey else style.sky_horizon, 0.03)
    return Sky(tuple(zenith), tuple(horizon), rng.uniform(0.0, 0.8), tex_offset(rng))


@dataclass(frozen=True)
class Lanes:
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
    lanes: Lanes,
    crossings: tuple[tuple[float, float], ...],
) -> Material:
    """Asphalt with wear, lane markings, crosswalks with stop lines, tram rails (world X, Z)."""
    asphalt = jitter(rng, style.asphalt, 0.04)
    marking = jitter(rng, style.marking, 0.03)
    centre = jitter(rng, style.centre_marking, 0.03)
    offset = tex_offset(rng)
    dividers, centre_x, rails = lanes.dividers(), lanes.centre_line(), lanes.rails()
    edges = (lanes.left + 0.3, lanes.right - 0.3)
    forward_from = lanes.left + lanes.oncoming * lanes.width  # stop lines span these lanes
    dash, gap = rng.uniform(2.5, 4.0), rng.uniform(5.0, 9.0)

    def material(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        wear = 0.06 * tex(x, z, 30.0, offset) + 0.08 * tex(x, z, 1.5, offset)
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
    stone = jitter(rng, style.sidewalk, 0.04)
    curb = jitter(rng, style.curb, 0.03)
    tile = style.sidewalk_tile * rng.uniform(0.8, 1.3)
    tiled = rng.random() < 0.7  # plain slabs look even more like asphalt
    offset = tex_offset(rng)

    def material(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = stone * (1.0 + 0.07 * tex(x, z, 30.0, offset))[:, None]
        if tiled:
            fx, fz = (x / tile) % 1.0, (z / tile) % 1.0
            cell = cell_noise((x // tile).astype(np.int32), (z // tile).astype(np.int32), offset)
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
class Lot:
    z0: float
    z1: float
    kind: str  # "building", "park" or "crossing"


def _sample_lots(
    rng: np.random.Generator,
    style: Style,
    z_end: float,
    crossings: tuple[tuple[float, float], ...],
) -> list[Lot]:
    """Slices of one side of the street from the camera to z_end (and one far slice)."""
    lots: list[Lot] = []
    z = 0.0
    for c0, c1 in [*crossings, (z_end, FAR)]:
        while z < c0 - 1.0:
            end = min(z + rng.uniform(8, 32), c0)
            kind = "park" if rng.random() < style.park_share else "building"
            lots.append(Lot(z, end, kind))
            z = end
        lots.append(Lot(c0, c1, "crossing"))
        z = c1
    return lots


def _lots_ground(lots: Sequence[Lot]) -> Lots:
    label = {"building": SIDEWALK, "park": TERRAIN, "crossing": ROAD}
    return Lots(tuple(lot.z0 for lot in lots), tuple(label[lot.kind] for lot in lots))


@dataclass(frozen=True)
class _Layout:
    """What object placement needs beyond the Street: lanes, the lots of each side (-1
    left, 1 right), and where the street ends."""

    lanes: Lanes
    lots: dict[int, list[Lot]]
    z_end: float


def _sample_lanes(rng: np.random.Generator, style: Style) -> Lanes:
    count = int(rng.choice(style.lanes))
    width = rng.uniform(*style.lane_width)
    oncoming = count // 2 if rng.random() < 0.75 else 0
    ego = int(rng.integers(oncoming, count))
    left = -(ego + 0.5) * width + rng.uniform(-0.4, 0.4)
    tram = int(rng.integers(count)) if rng.random() < 0.1 else None
    return Lanes(tuple(left + (k + 0.5) * width for k in range(count)), width, oncoming, ego, tram)


def sample_street(rng: np.random.Generator, style: Style) -> tuple[Street, _Layout]:
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
        terrain_material=textured(pick(rng, style.grass), rng, 0.12, 35.0),
    )
    return street, _Layout(lanes, lots, z_end)
