"""People, riders and two-wheelers."""

from __future__ import annotations

from typing import Any

import numpy as np

from segdistill.data.synthstreets.constants import (
    BICYCLE,
    MOTORCYCLE,
    PERSON,
    RIDER,
    Material,
    Shape,
)
from segdistill.data.synthstreets.layout import Builder
from segdistill.data.synthstreets.shapes import (
    capsules,
    color,
    discs,
    mirrored,
    mirrored_material,
    pick,
    rings,
    union,
)
from segdistill.data.synthstreets.textures import tex, tex_offset


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
    skin = pick(rng, ((0.85, 0.66, 0.52), (0.62, 0.44, 0.32), (0.36, 0.24, 0.17)), 0.03)
    hair = pick(rng, ((0.1, 0.08, 0.06), (0.35, 0.25, 0.15), (0.7, 0.6, 0.4)), 0.03)
    return pick(rng, palette), pick(rng, palette), skin, hair


def _body_material(
    rng: np.random.Generator,
    trousers_top: float,
    neck: float,
    clothes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> Material:
    """Trousers below `trousers_top`, a top up to `neck`, skin and hair above (metres)."""
    trousers, top, skin, hair = clothes
    offset = tex_offset(rng)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.where((y < trousers_top)[:, None], trousers, top)
        out = np.where((y >= neck)[:, None], skin, out)
        out = np.where((y >= neck + 0.12)[:, None], hair, out)
        return out * (1.0 + 0.06 * tex(x, y, 40.0, offset))[:, None]

    return material


def add_person(b: Builder, x: float, z: float) -> None:
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
    b.front(z, (x - c, x + c), (0.0, h), PERSON, material, capsules(parts))
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
    frame = capsules([(a, b, geo["tube"]) for a, b in geo["frame"]])
    wheels = geo["wheels"], geo["radius"]
    return union(discs(*wheels) if outline else rings(*wheels, 0.05), frame)


def _motorcycle_shape(outline: bool = False) -> Shape:
    """Engine, tank, seat, fork and tyres; the outline fills the wheels."""
    body = capsules(
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
    return union(discs(*wheels) if outline else rings(*wheels, 0.1), body)


def _rider_shape(pose: dict) -> Shape:
    """A seated rider's profile: torso leaning to the handlebar, bent legs, head."""
    return capsules(
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


def add_two_wheeler(
    b: Builder, facing: str, pos: float, start: float, *, forward: bool, motor: bool, rider: bool
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
    paint = pick(rng, ((0.1, 0.1, 0.1), (0.6, 0.1, 0.1), (0.15, 0.25, 0.55), (0.7, 0.7, 0.7)))
    material = _two_wheeler_material(paint, geo, scale)
    if not forward:
        shape, material = mirrored(shape, length), mirrored_material(material, length)
        outline = mirrored(outline, length)
    add = b.side if facing == "side" else b.front
    add(pos, (start, start + length), (0.0, height), label, material, shape, outline=outline)
    if rider:
        body = _scaled(_rider_shape(geo["rider"]), scale)
        clothes = _clothes(rng)
        r_material = _body_material(
            rng, geo["rider"]["hip"][1] * scale + 0.1, 1.56 * scale, clothes
        )
        if not forward:
            body = mirrored(body, length)
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
    paint = pick(rng, ((0.1, 0.1, 0.1), (0.6, 0.1, 0.1), (0.15, 0.25, 0.55), (0.7, 0.7, 0.7)))
    tyre, lamp = color((0.06, 0.06, 0.07)), color((0.8, 0.08, 0.06))
    tyre_top = 0.62 if motor else 0.68

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.where((y < tyre_top)[:, None], tyre, paint)
        if motor:
            out[(np.abs(y - 0.8) < 0.05) & (np.abs(x - _REAR_WIDTH / 2) < 0.12)] = lamp
        return out

    return material


def add_two_wheeler_rear(b: Builder, x: float, z: float, *, motor: bool, rider: bool) -> None:
    """A bicycle or motorcycle seen from behind (or the front) at X = x, Z = z, with or
    without its rider, as camera-facing surfaces."""
    rng = b.rng
    scale = rng.uniform(0.9, 1.1) * b.style.object_scale
    w = _REAR_WIDTH * scale
    label = MOTORCYCLE if motor else BICYCLE
    machine = _scaled(capsules(_REAR_MACHINE[motor]), scale)
    b.front(
        z,
        (x - w / 2, x + w / 2),
        (0.0, 1.3 * scale),
        label,
        _rear_machine_material(rng, motor),
        machine,
    )
    if rider:
        body = _scaled(capsules(_REAR_RIDER[motor]), scale)
        material = _body_material(rng, 1.0 * scale, 1.5 * scale, _clothes(rng))
        b.front(z - 0.05, (x - w / 2, x + w / 2), (0.0, 1.85 * scale), RIDER, material, body)
    b.shadow(x - 0.3, x + 0.3, z, z + (2.1 if motor else 1.75), 0.0, 1.6 if rider else 1.1)


def _two_wheeler_material(paint: np.ndarray, geo: dict, scale: float) -> Material:
    """Black tyres, metal hubs, painted frame or body."""
    tyre, metal = color((0.06, 0.06, 0.07)), color((0.6, 0.6, 0.62))
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
