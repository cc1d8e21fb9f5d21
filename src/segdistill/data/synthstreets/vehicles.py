"""Vehicles: cars, vans, trucks, buses and trams, their faces and kinds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segdistill.data.synthstreets.constants import BUS, CAR, TRAIN, TRUCK, Material, Shape
from segdistill.data.synthstreets.layout import Builder
from segdistill.data.synthstreets.shapes import (
    capsules,
    color,
    jitter,
    mirrored,
    mirrored_material,
    pick,
    textured,
)
from segdistill.data.synthstreets.textures import tex, tex_offset


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
    glass = jitter(rng, _GLASS, 0.03)
    lamp = color((0.95, 0.92, 0.8)) if front else color((0.7, 0.06, 0.05))
    clearance, belt, window_top = kind.clearance, kind.belt * h, kind.rear_window * h
    lamp_y = clearance + 0.3 if kind.name == "truck" else belt - 0.12 * h
    offset = tex_offset(rng)

    def half_width(y: np.ndarray) -> np.ndarray:
        above = np.clip((y - belt) / max(h - belt, 1e-3), 0, 1)
        return w / 2 * (1 - kind.taper * above)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        body = (y >= clearance) & (np.abs(x - w / 2) <= half_width(y))
        wheels = (y < clearance + 0.05) & (np.abs(np.abs(x - w / 2) - w * 0.36) < w * 0.09)
        return body | wheels

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = paint * (1.0 + 0.04 * tex(x, y, 20.0, offset))[:, None]
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
    glass = jitter(rng, _GLASS, 0.03)
    clearance, belt, wheel_r = kind.clearance, kind.belt * h, kind.wheel
    wheels = [(a * length, wheel_r) for a in kind.axles]
    offset = tex_offset(rng)

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
        out = paint * (1.0 + 0.04 * tex(x, y, 20.0, offset))[:, None]
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


def add_vehicle(b: Builder, kind: str, x: float, z: float, oncoming: bool) -> float:
    """A box-like vehicle centred at X = x whose near end is at Z = z: its end face and,
    if it is beside the camera axis, the flank facing the camera. Returns its length."""
    rng = b.rng
    spec = _VEHICLES[kind]
    length, w, h = (rng.uniform(*r) for r in (spec.length, spec.width, spec.height))
    palette = b.style.car_paints if spec.label == CAR else b.style.big_paints
    paint = pick(rng, palette, 0.04)
    instance = b.instance(spec.label)
    shape, material = _end_face(spec, w, h, oncoming, paint, rng)
    b.front(z, (x - w / 2, x + w / 2), (0.0, h), spec.label, material, shape, instance=instance)
    flank_x = x - w / 2 if x - w / 2 > 0.05 else x + w / 2 if x + w / 2 < -0.05 else None
    if flank_x is not None:
        shape, material = _side_face(spec, length, h, paint, rng)
        if oncoming:  # the near end is the front: mirror the profile
            shape, material = mirrored(shape, length), mirrored_material(material, length)
        b.side(flank_x, (z, z + length), (0.0, h), spec.label, material, shape, instance=instance)
    if kind == "tram":  # the pantograph: thin bars above the roof
        bars = capsules(
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
            textured(color((0.2, 0.2, 0.2)), rng, 0.05),
            bars,
            instance=instance,
        )
    b.shadow(x - w / 2, x + w / 2, z, z + length, 0.0, h)
    return length


def vehicle_kind(rng: np.random.Generator, crowd: float) -> str:
    """Cars mostly; `crowd` multiplies the shares of trucks and buses."""
    truck, bus = min(0.3, 0.03 * crowd), min(0.2, 0.02 * crowd)
    shares = [1.0 - 0.08 - truck - bus, 0.08, truck, bus]
    return str(rng.choice(["car", "van", "truck", "bus"], p=shares))
