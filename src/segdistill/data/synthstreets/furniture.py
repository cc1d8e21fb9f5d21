"""Street furniture: poles, lamps, traffic lights and signs, clutter."""

from __future__ import annotations

import numpy as np

from segdistill.data.synthstreets.constants import (
    LIGHT,
    POLE,
    SIGN,
    STATIC,
    UNLABELED,
    Material,
    Shape,
)
from segdistill.data.synthstreets.layout import Builder
from segdistill.data.synthstreets.shapes import color, jitter, pick, textured


def _add_pole(b: Builder, x: float, z: float, height: float, width: float) -> None:
    rgb = pick(b.rng, ((0.45, 0.45, 0.46), (0.22, 0.22, 0.24), (0.20, 0.28, 0.22)))
    width *= b.style.object_scale
    b.front(
        z, (x - width / 2, x + width / 2), (0.0, height), POLE, textured(rgb, b.rng, 0.05, 30.0)
    )
    b.shadow(x - width / 2, x + width / 2, z - width / 2, z + width / 2, 0.0, height)


def add_lamp(b: Builder, x: float, z: float, side: int) -> None:
    """A street lamp: a tall pole with an arm over the road and a lamp head (all pole)."""
    height = b.rng.uniform(6, 9)
    _add_pole(b, x, z, height, b.rng.uniform(0.12, 0.2))
    reach = b.rng.uniform(1.0, 2.2)
    arm = textured(color((0.4, 0.4, 0.42)), b.rng, 0.05)
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
    rim_rgb, inner_rgb = color(rim), color(inner)

    def centred(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return measure(2 * x / w - 1, 2 * y / h - 1)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return centred(x, y) <= 1.0

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.where((centred(x, y) < inner_size)[:, None], inner_rgb, rim_rgb)

    return shape, material, w, h


def add_sign_post(b: Builder, x: float, z: float) -> None:
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
    housing = jitter(rng, (0.1, 0.1, 0.1) if rng.random() < 0.7 else (0.5, 0.45, 0.15), 0.03)
    lit = int(rng.integers(3))
    colors = [color(c) for c in ((0.95, 0.15, 0.1), (0.95, 0.7, 0.1), (0.2, 0.9, 0.4))]

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(housing, (x.size, 3)).copy()
        if lamps:
            for k, rgb in enumerate(colors):
                cy = h * (0.8 - 0.3 * k)
                on = (x - w / 2) ** 2 + (y - cy) ** 2 < (0.3 * w) ** 2
                out[on] = rgb if k == lit else rgb * 0.25
        return out

    return material


def add_traffic_light(b: Builder, x: float, z: float, overhead_to: float | None) -> None:
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
        arm = textured(color((0.35, 0.35, 0.37)), rng, 0.05)
        top = pole_height - 0.2
        b.front(z - 0.01, (min(x, overhead_to), max(x, overhead_to)), (top - 0.14, top), POLE, arm)
        b.front(
            z - 0.1,
            (overhead_to - w / 2, overhead_to + w / 2),
            (top - h - 0.1, top - 0.1),
            LIGHT,
            _light_material(rng, w, h, True),
        )


def add_clutter(b: Builder, x: float, z: float) -> None:
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
    material = textured(pick(rng, palette), rng, 0.15, 8.0)
    b.front(z, (x - w / 2, x + w / 2), (0.0, h), label, material)
    b.shadow(x - w / 2, x + w / 2, z, z + 0.5, 0.0, h)
