"""Styles: what makes a city look like itself (colours, street widths, camera)."""

from __future__ import annotations

from dataclasses import dataclass

from segdistill.data.synthstreets.constants import RGB


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
