"""A whole scene: traffic lane by lane, riders, pedestrians and furniture placed along the
street (`sample_scene`)."""

from __future__ import annotations

import numpy as np

from segdistill.data.synthstreets.buildings import add_lots, add_street_end, add_tree
from segdistill.data.synthstreets.constants import PROFILE_MIN_OFFSET
from segdistill.data.synthstreets.furniture import (
    add_clutter,
    add_lamp,
    add_sign_post,
    add_traffic_light,
)
from segdistill.data.synthstreets.layout import (
    Builder,
    Lanes,
    sample_camera,
    sample_lighting,
    sample_sky,
    sample_street,
)
from segdistill.data.synthstreets.people import add_person, add_two_wheeler, add_two_wheeler_rear
from segdistill.data.synthstreets.scene import Scene
from segdistill.data.synthstreets.styles import DEFAULT_STYLE, Style
from segdistill.data.synthstreets.vehicles import add_vehicle, vehicle_kind


def _add_traffic(b: Builder, lanes: Lanes) -> list[tuple[float, float, float]]:
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
            z += add_vehicle(b, "tram", x, z, oncoming) + rng.uniform(10, 40)
        while z < 130:
            kind = "car" if parked and rng.random() < 0.9 else vehicle_kind(rng, b.style.crowd)
            if parked and (rng.random() < 0.25 or b.street.crosses(z, z + 5)):  # a free space
                z += rng.uniform(3, 8)
                continue
            lateral = rng.uniform(0.5, 0.9) if parked else rng.uniform(-0.3, 0.3)
            z += add_vehicle(b, kind, x + lateral, z, oncoming and not parked)
            z += rng.uniform(0.6, 2.5) if parked else rng.uniform(4, 35)
        half = lanes.width / 2
        free.append((x - half, x + half, z_first))
    free.insert(0, free.pop(lanes.ego))  # the camera's lane first: anomalies start there
    return free


def _add_kerb_rider(b: Builder, x: float, z: float, motor: bool, oncoming: bool) -> None:
    """A rider on the road: in profile when well beside the camera axis (the profile is
    then visible), else seen from behind (or the front, when oncoming)."""
    if abs(x) >= PROFILE_MIN_OFFSET:
        add_two_wheeler(b, "side", x, z, forward=not oncoming, motor=motor, rider=True)
    else:
        add_two_wheeler_rear(b, x, z, motor=motor, rider=True)


def _add_riders(b: Builder, lanes: Lanes) -> None:
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
            add_two_wheeler(
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
                    add_two_wheeler(b, "side", x, z, forward=forward, motor=motor, rider=False)


def _add_pedestrians(b: Builder) -> None:
    """People on the sidewalks (some in small groups) and on crosswalks."""
    rng = b.rng
    street = b.street
    for _ in range(int(rng.poisson(b.style.pedestrians * b.style.crowd))):
        lo, hi = street.pavement(int(rng.choice([-1, 1])))
        x, z = rng.uniform(lo + 0.3, hi - 0.3), rng.uniform(5, 70)
        for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
            add_person(b, x + rng.uniform(-0.5, 0.5), z + rng.uniform(-0.8, 0.8))
    for c0, _ in street.crossings:
        for _ in range(int(rng.poisson(1.0))):
            add_person(
                b, rng.uniform(street.road_left, street.road_right), c0 - rng.uniform(1.5, 3.5)
            )


def _add_furniture(b: Builder, lanes: Lanes) -> None:
    """Lamps, sign posts, traffic lights, street trees and clutter along both sidewalks."""
    rng = b.rng
    street = b.street
    for side, kerb in ((-1, street.road_left), (1, street.road_right)):
        pole_x = kerb + side * 0.45
        z = rng.uniform(3, 15)
        spacing = rng.uniform(20, 35)
        while z < 110 and rng.random() < 0.9:
            if not street.crosses(z - 0.5, z + 0.5):
                add_lamp(b, pole_x, z, side)
            z += spacing
        for _ in range(int(rng.integers(1, 5))):
            z = rng.uniform(5, 90)
            if not street.crosses(z - 0.5, z + 0.5):
                add_sign_post(b, pole_x + side * rng.uniform(0, 0.3), z)
        verge = street.verge(side)
        if rng.random() < b.style.tree_row_share:
            z = rng.uniform(4, 12)
            step = rng.uniform(7, 14)
            # In the verge when there is one, else in tree pits near the curb.
            tree_x = sum(verge) / 2 if verge[1] > verge[0] else kerb + side * rng.uniform(0.9, 1.4)
            while z < 90:
                height, radius = rng.uniform(5, 10), rng.uniform(1.5, 3.0)
                if not street.crosses(z - 1, z + 1):
                    add_tree(b, tree_x, z, height, radius)
                z += step * rng.uniform(0.8, 1.2)
        for _ in range(int(rng.integers(0, 4))):
            x, z = rng.uniform(*street.pavement(side)), rng.uniform(6, 60)
            if not street.crosses(z - 1, z + 1):
                add_clutter(b, x, z)
        for c0, _ in street.crossings:
            add_traffic_light(b, pole_x, c0 - 1.0, None)
            if side > 0 and rng.random() < 0.7:
                target = lanes.x[max(lanes.ego, lanes.oncoming)]
                add_traffic_light(b, pole_x + 0.3, c0 - 1.5, target)
    if not street.crossings and rng.random() < 0.5:  # a signalised pedestrian crossing
        z = rng.uniform(15, 50)
        for x in (street.road_left - 0.45, street.road_right + 0.45):
            add_traffic_light(b, x, z, None)


def sample_scene(rng: np.random.Generator, style: Style = DEFAULT_STYLE) -> Scene:
    """A random street scene. All randomness comes from `rng`, in a fixed order."""
    camera = sample_camera(rng, style)
    lighting = sample_lighting(rng)
    sky = sample_sky(rng, style, lighting)
    street, layout = sample_street(rng, style)
    builder = Builder(rng, style, street)
    for side, edge in ((-1, street.walk_left), (1, street.walk_right)):
        add_lots(builder, layout.lots[side], edge, side)
    add_street_end(builder, layout.z_end)
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
