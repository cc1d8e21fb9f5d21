"""Anomalies: objects that never occur in the training scenes (animals, crates, ...)
pasted into test scenes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from segdistill.data.synthstreets.constants import ANOMALY, Material, Shape
from segdistill.data.synthstreets.layout import Builder
from segdistill.data.synthstreets.scene import Scene
from segdistill.data.synthstreets.shapes import (
    blob,
    capsules,
    color,
    mirrored,
    pick,
    rings,
    textured,
)
from segdistill.data.synthstreets.textures import tex, tex_offset


def _animal_shape(length: float, height: float) -> Shape:
    """A quadruped in profile, facing +x: body, four legs, neck, head, tail."""
    L, H = length, height
    return capsules(
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


def _add_anomaly(b: Builder, x: float, z: float) -> None:
    """One object of no known class on the road: an animal, debris or lost cargo."""
    rng = b.rng
    kind = rng.choice(["animal", "debris", "cargo", "tyre"])
    if kind == "animal":
        length, height = rng.uniform(0.7, 2.2), rng.uniform(0.5, 1.5)
        shape = _animal_shape(length, height)
        if rng.random() < 0.5:
            shape = mirrored(shape, length)
        rgb = pick(rng, ((0.45, 0.3, 0.18), (0.1, 0.08, 0.07), (0.85, 0.82, 0.75)))
        material = textured(rgb, rng, 0.25, 10.0)
    elif kind == "debris":
        length, height = rng.uniform(0.6, 2.0), rng.uniform(0.2, 0.6)
        shape = blob(length, 2 * height, rng, 0.5)
        material = textured(pick(rng, ((0.5, 0.48, 0.45), (0.4, 0.3, 0.2))), rng, 0.35, 15.0)
    elif kind == "cargo":
        length, height = rng.uniform(0.5, 1.4), rng.uniform(0.4, 1.1)
        shape = None
        rgb = pick(rng, ((0.65, 0.5, 0.3), (0.2, 0.35, 0.7), (0.85, 0.4, 0.1), (0.5, 0.42, 0.3)))
        material = _crate_material(rgb, rng)
    else:
        length = height = rng.uniform(0.55, 0.8)
        shape = rings([(length / 2, height / 2)], height / 2, 0.15)
        material = textured(color((0.07, 0.07, 0.08)), rng, 0.2, 20.0)
    b.front(z, (x - length / 2, x + length / 2), (0.0, height), ANOMALY, material, shape)
    b.shadow(x - length / 2, x + length / 2, z, z + 0.5, 0.0, height)


def _crate_material(rgb: np.ndarray, rng: np.random.Generator) -> Material:
    """A box or crate: planks or tape bands."""
    offset = tex_offset(rng)
    plank = rng.uniform(0.1, 0.25)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = rgb * (1.0 + 0.1 * tex(x, y, 25.0, offset))[:, None]
        out[(y % plank) < 0.02] *= 0.6
        return out

    return material


def add_anomalies(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with 1 to 3 anomalies on empty road 8 to 40 m ahead: the first in
    the camera's lane (so nearly every image shows one), the others in any lane with room."""
    builder = Builder(rng, scene.style, scene.street)
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
