"""Rendering: a supersampled, depth-tested numpy pass of a scene into an image, its labels,
instances and depth (`render`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segdistill.data.synthstreets.constants import (
    EGO,
    FAR,
    HOOD_DEPTH,
    NEAR,
    OUT_OF_ROI,
    ROAD,
    SIDEWALK,
    SKY,
    SUPERSAMPLE,
    TERRAIN,
)
from segdistill.data.synthstreets.scene import Camera, Caster, Scene, Sky, Street, Surface
from segdistill.data.synthstreets.shapes import segments_distance2
from segdistill.data.synthstreets.styles import Style
from segdistill.data.synthstreets.textures import tex


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
    cloud = tex(az * 3.0, el * 8.0, 20.0, sky.offset)
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
        return segments_distance2(x, z, a, b) <= ((c.x1 - c.x0) / 2) ** 2
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
