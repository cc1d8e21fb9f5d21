"""The scene description: camera, lighting, sky, street, the surfaces and the shadow
casters (what `sample_scene` draws and `render` renders)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segdistill.data.synthstreets.constants import CROSSWALK, CURB, RGB, Material, Shape
from segdistill.data.synthstreets.styles import Style


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
