"""Procedural high-resolution street scenes: the project's default, always-available dataset.

A pinhole camera looks down a street: road and sidewalks on a ground plane, building facades and
hedges on both sides, a distant backdrop at the street's end, sky above. Things stand on the ground at
depths drawn log-uniformly, so their image sizes span orders of magnitude: cars, pedestrians,
cyclists ("rider", bicycle included, as there is no bicycle class), poles (1-3 px wide at 1024 px
width), traffic lights and signs (a few px when distant), trees.

The regime is the one SparseRefine works in (its LR HRNet-W48 errs on ~3% of Cityscapes' pixels):
the large "stuff" regions (dark asphalt, bright paved sidewalks, blue skies, textured facades with
windows, green vegetation) are easy for a dense CNN at either resolution, and the errors sit on
boundaries and on small and thin things. Among the things, class is deliberately not a function of
colour: cars, clothes and signs draw from overlapping palettes; shading, shadows, fog and noise blur
the rest. What separates some of them is fine detail that only survives at full resolution: riders
wear 1-px striped vests (pedestrians wear plain or coarse stripes), the back of a sign has a 1-px
bright rim (a traffic light housing has lamps), poles are 1-3 px wide. Images are anti-aliased;
labels are hard, with a void ego-vehicle hood (label 255) at the bottom as in Cityscapes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from methods.datasets.base import SegDataset, SegSample

EMBEDDED_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "vegetation",
    "sky",
    "pole",
    "traffic light",
    "traffic sign",
    "person",
    "rider",
    "car",
)
# "Things": countable objects; the rest is "stuff".
EMBEDDED_THING_CLASSES: tuple[str, ...] = ("pole", "traffic light", "traffic sign", "person", "rider", "car")
GENERATOR_VERSION = "5"
MIN_SIZE = (64, 128)
MAX_SIZE = (1024, 2048)
IGNORE = 255

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, POLE, LIGHT, SIGN, PERSON, RIDER, CAR = range(11)

# Shared palettes: clothes, car bodies and sign plates draw from overlapping colour sets on purpose.
_NEUTRALS = np.array(
    [[235, 235, 232], [175, 177, 180], [120, 122, 125], [70, 72, 75], [35, 36, 40], [150, 140, 120]],
    dtype=np.float32,
)
_COLOURS = np.array(
    [[170, 35, 35], [40, 70, 150], [30, 110, 60], [200, 170, 40], [110, 60, 40], [90, 50, 120], [60, 140, 170]],
    dtype=np.float32,
)
_FACADES = np.array(
    [[190, 175, 150], [150, 150, 150], [160, 90, 70], [215, 210, 200], [110, 100, 90], [175, 160, 120]],
    dtype=np.float32,
)
_SKIN = np.array([[230, 190, 160], [190, 140, 100], [120, 80, 55], [90, 60, 40]], dtype=np.float32)


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 12.0) -> np.ndarray:
    return palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3).astype(np.float32)


def _palette_colour(rng: np.random.Generator) -> np.ndarray:
    return _pick(rng, _NEUTRALS if rng.random() < 0.5 else _COLOURS)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Unit-variance-ish value noise with features about ``cell`` pixels wide (separable bilinear)."""
    grid_h, grid_w = int(height / cell) + 2, int(width / cell) + 2
    grid = rng.standard_normal((grid_h, grid_w), dtype=np.float32)
    ys = np.arange(height, dtype=np.float32) / cell
    xs = np.arange(width, dtype=np.float32) / cell
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    rows = grid[y0] * (1 - fy) + grid[y0 + 1] * fy
    return rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at height ``cam_h`` (m); world X is lateral (m), z depth (m), elev height (m)."""

    focal: float
    horizon: float
    vx: float
    cam_h: float

    def x(self, lateral: float, depth: float) -> float:
        return self.vx + lateral * self.focal / depth

    def y(self, elev: float, depth: float) -> float:
        return self.horizon + (self.cam_h - elev) * self.focal / depth

    def px(self, metres: float, depth: float) -> float:
        return metres * self.focal / depth


@dataclass
class _Box:
    """A clipped pixel rectangle with pixel-centre coordinates relative to an object's anchor."""

    rows: slice
    cols: slice
    u: np.ndarray  # [1, w] x - anchor_x, px
    v: np.ndarray  # [h, 1] y - anchor_y, px


@dataclass
class _Scene:
    rng: np.random.Generator
    height: int
    width: int
    cam: _Camera
    centre: float  # lateral offset of the road centre, m
    road_half: float
    sidewalk: float
    res: float  # width / 1024: pixel-width limits scale with resolution
    image: np.ndarray = field(init=False)
    label: np.ndarray = field(init=False)
    depth: np.ndarray = field(init=False)
    fine: np.ndarray = field(init=False)  # per-pixel texture noise
    medium: np.ndarray = field(init=False)  # ~6 px blobs
    large: np.ndarray = field(init=False)  # ~60 px blobs
    horizon_colour: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        h, w = self.height, self.width
        self.image = np.zeros((h, w, 3), dtype=np.float32)
        self.label = np.full((h, w), IGNORE, dtype=np.uint8)
        self.depth = np.zeros((h, w), dtype=np.float32)
        self.fine = self.rng.standard_normal((h, w), dtype=np.float32)
        self.medium = _smooth_noise(self.rng, h, w, 6.0 * self.res)
        self.large = _smooth_noise(self.rng, h, w, 60.0 * self.res)

    # --- primitives -------------------------------------------------------------------------
    def box(self, x0: float, y0: float, x1: float, y1: float, ax: float, ay: float) -> _Box | None:
        c0, c1 = max(0, math.floor(x0)), min(self.width, math.ceil(x1))
        r0, r1 = max(0, math.floor(y0)), min(self.height, math.ceil(y1))
        if c0 >= c1 or r0 >= r1:
            return None
        u = (np.arange(c0, c1, dtype=np.float32) + 0.5 - ax)[None, :]
        v = (np.arange(r0, r1, dtype=np.float32) + 0.5 - ay)[:, None]
        return _Box(slice(r0, r1), slice(c0, c1), u, v)

    def paint(self, box: _Box, mask: np.ndarray, cls: int, colour: np.ndarray, depth: float) -> None:
        """Write ``colour`` ([3] or [h,w,3]) and class ``cls`` where ``mask`` holds inside ``box``."""
        mask = np.broadcast_to(mask, (box.rows.stop - box.rows.start, box.cols.stop - box.cols.start))
        if not mask.any():
            return
        region = self.image[box.rows, box.cols]
        region[mask] = colour[mask] if colour.ndim == 3 else colour
        self.label[box.rows, box.cols][mask] = cls
        self.depth[box.rows, box.cols][mask] = depth

    def shade(self, box: _Box, base: np.ndarray, fine: float, medium: float) -> np.ndarray:
        """``base`` colour over the box with multiplicative texture from the shared noise fields."""
        t = 1.0 + fine * self.fine[box.rows, box.cols] + medium * self.medium[box.rows, box.cols]
        return base[None, None, :] * t[:, :, None]

    def vertical_bar(
        self, lateral: float, depth: float, elev0: float, elev1: float, width_m: float, cls: int, colour: np.ndarray
    ) -> None:
        """A thin vertical bar whose width is clipped to [1, 3] px (x resolution): poles and trunks."""
        cam = self.cam
        width_px = min(max(cam.px(width_m, depth), 1.0), 3.0 * self.res)
        cols = max(1, round(width_px))
        cx = cam.x(lateral, depth)
        c0 = math.floor(cx - cols / 2 + 0.5)
        box = self.box(c0, cam.y(elev1, depth), c0 + cols, cam.y(elev0, depth), cx, 0.0)
        if box is None:
            return
        # a lit edge on one side makes thin bars textured, not flat
        side_light = 1.0 + 0.12 * np.sign(box.u)
        col = colour[None, None, :] * (side_light[:, :, None] + 0.04 * self.fine[box.rows, box.cols][:, :, None])
        self.paint(box, np.ones((1, 1), dtype=bool), cls, col, depth)

    # --- stuff ------------------------------------------------------------------------------
    def paint_sky(self) -> None:
        rng = self.rng
        kind = rng.choice(2, p=[0.65, 0.35])
        top, bottom = {
            0: ([70, 120, 200], [175, 205, 235]),  # clear
            1: ([110, 130, 180], [235, 200, 165]),  # hazy evening
        }[int(kind)]
        top_c = np.array(top, np.float32) + rng.normal(0, 10, 3).astype(np.float32)
        bottom_c = np.array(bottom, np.float32) + rng.normal(0, 10, 3).astype(np.float32)
        cloud_bias, cloud_amount = rng.normal(0, 0.3), rng.uniform(0.2, 0.9)
        self.horizon_colour = bottom_c
        self.label[:] = SKY
        rows = slice(0, min(self.height, math.ceil(self.cam.horizon) + 1))  # the ground covers the rest
        t = np.clip(np.arange(rows.stop, dtype=np.float32) / max(self.cam.horizon, 1.0), 0, 1)[:, None, None]
        sky = top_c * (1 - t) + bottom_c * t
        clouds = np.clip(self.large[rows] * 0.8 + cloud_bias, 0, 1)[:, :, None] * np.float32(cloud_amount)
        self.image[rows] = sky * (1 - clouds) + np.float32(228) * clouds

    def paint_ground(self) -> None:
        rng, cam = self.rng, self.cam
        first = min(self.height - 1, max(0, math.floor(cam.horizon + 0.5)))
        rows = slice(first, self.height)
        ys = np.arange(first, self.height, dtype=np.float32)[:, None] + 0.5
        xs = np.arange(self.width, dtype=np.float32)[None, :] + 0.5
        below = ys > cam.horizon + 0.5
        dy = np.maximum(ys - cam.horizon, 0.5)
        z = cam.cam_h * cam.focal / dy  # [h,1]
        lat = (xs - cam.vx) * (cam.cam_h / dy) - self.centre  # [h,W], relative to the road centre
        alat = np.abs(lat)
        road = below & (alat < self.road_half)
        walk = below & (alat >= self.road_half) & (alat < self.road_half + self.sidewalk)
        beyond = below & ~road & ~walk
        fine, medium, large = self.fine[rows], self.medium[rows], self.large[rows]
        grey = rng.uniform(55, 95)  # asphalt: darker than any sidewalk paving
        road_c = np.array([grey, grey, grey * rng.uniform(0.98, 1.08)], np.float32)
        road_tex = 1 + 0.07 * fine + 0.08 * medium + 0.12 * large
        # lane markings: a dashed centre line and solid edge lines, in world units
        dash = (np.mod(z / 9.0, 1.0) < 0.45) & (np.abs(lat - rng.uniform(-0.3, 0.3)) < 0.08)
        edge = np.abs(alat - (self.road_half - 0.35)) < 0.07
        marking = (dash | edge) & road & (rng.random() < 0.85)
        marking_grey = np.float32(rng.uniform(185, 235))
        walk_c = _pick(rng, np.array([[178, 174, 165], [192, 165, 138], [176, 128, 108]], np.float32), 10)
        tiles = (np.mod(lat / 0.5, 1.0) < 0.08) | (np.mod(z / 0.5, 1.0) < 0.08)
        walk_tex = 1 + 0.05 * fine - 0.18 * tiles + 0.06 * medium
        curb = walk & (alat < self.road_half + 0.25)
        walk_tex[curb] = 1.2
        tex = np.where(road, road_tex, walk_tex)
        # one side of the street in a building's shadow
        shadow_side = rng.choice([-1.0, 1.0])
        shadow_edge = rng.uniform(-self.road_half, self.road_half + self.sidewalk)
        if rng.random() < 0.6:
            tex *= np.where(lat * shadow_side > shadow_edge, np.float32(0.75), np.float32(1.0))
        base = np.where(road[:, :, None], road_c, walk_c)
        ground = base * tex[:, :, None]
        ground[marking] = marking_grey
        image, label, depth = self.image[rows], self.label[rows], self.depth[rows]
        below = road | walk | beyond
        image[below] = ground[below]
        image[beyond] = self.horizon_colour * 0.7
        label[road] = ROAD
        label[walk] = SIDEWALK
        label[beyond] = BUILDING
        depth[below] = np.broadcast_to(z, below.shape)[below]

    def paint_backdrop(self, street_end: float) -> None:
        """Distant buildings closing the street at depth ``street_end``: small, a little hazy."""
        rng, cam = self.rng, self.cam
        xs = np.arange(self.width, dtype=np.float32) + 0.5
        lateral = (xs - cam.vx) * street_end / cam.focal
        segment = np.floor(lateral / rng.uniform(8, 20)).astype(np.int64)
        heights = 8 + 25 * np.abs(np.sin(segment * 12.9898 + rng.uniform(0, 100)))
        base = cam.y(0.0, street_end)
        top = base - heights * cam.focal / street_end
        colour = _pick(rng, _FACADES) * 0.75 + self.horizon_colour * 0.25
        r0, r1 = max(0, math.floor(top.min())), min(self.height, math.ceil(base) + 1)
        if r0 >= r1:
            return
        rows = slice(r0, r1)
        ys = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        mask = (ys >= top[None, :]) & (ys < base)
        img = colour * (1 + 0.05 * self.fine[rows] + 0.05 * self.medium[rows])[:, :, None]
        self.image[rows][mask] = img[mask]
        self.label[rows][mask] = BUILDING
        self.depth[rows][mask] = street_end

    def paint_facades(self, side: float, street_end: float) -> None:
        """Facades (or hedges) on one side: a vertical plane at lateral ``side * (road + sidewalk)``."""
        rng, cam = self.rng, self.cam
        plane = self.centre + side * (self.road_half + self.sidewalk)
        edges = np.cumsum(rng.uniform(6, 35, 64))
        is_hedge = rng.random(64) < 0.25
        block_height = np.where(is_hedge, rng.uniform(2.0, 9.0, 64), rng.uniform(7.0, 35.0, 64))
        facade_cs = np.stack([_pick(rng, _FACADES, 10) for _ in range(64)])
        hedge_palette = np.array([[55, 90, 45], [80, 110, 50], [45, 75, 40]], np.float32)
        hedge_cs = np.stack([_pick(rng, hedge_palette, 10) for _ in range(64)])
        spacing = rng.uniform(2.0, 3.5)
        window_c = np.array([50, 60, 75], np.float32) + np.float32(rng.uniform(0, 60))
        hedge_wiggle = _smooth_noise(rng, 1, self.width, 5)[0]

        xs = np.arange(self.width, dtype=np.float32) + 0.5
        with np.errstate(divide="ignore", invalid="ignore"):
            z_all = plane * cam.focal / (xs - cam.vx)
        valid = np.isfinite(z_all) & (z_all > 0.3) & (z_all < street_end)
        if not valid.any():
            return
        columns = np.flatnonzero(valid)
        cols = slice(int(columns[0]), int(columns[-1]) + 1)  # visible columns are contiguous
        z = z_all[cols]
        block = np.minimum(np.searchsorted(edges, z), 63)
        height_m = block_height[block]
        hedge_col = is_hedge[block]
        top_noise = np.where(hedge_col, 0.12 * height_m * hedge_wiggle[cols], 0.0)
        top = cam.horizon - (height_m + top_noise - cam.cam_h) * cam.focal / z
        base = cam.horizon + cam.cam_h * cam.focal / z
        r0, r1 = max(0, math.floor(top.min())), min(self.height, math.ceil(base.max()) + 1)
        if r0 >= r1:
            return
        rows = slice(r0, r1)
        ys = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        mask = (ys >= top[None, :]) & (ys < base[None, :])
        # facade texture: floors and windows in world units, per-block colours
        elev = cam.cam_h + (cam.horizon - ys) * (z / cam.focal)[None, :]
        floor_phase = np.mod(elev / 3.2, 1.0)
        window = (floor_phase > 0.35) & (floor_phase < 0.8) & (np.mod(z / spacing, 1.0)[None, :] > 0.3)
        window &= elev > 3.4
        fine, medium, large = self.fine[rows, cols], self.medium[rows, cols], self.large[rows, cols]
        tex = np.where(hedge_col[None, :], 1 + 0.3 * fine + 0.25 * medium, 1 + 0.05 * fine + 0.07 * medium)
        tex = np.where(elev < 3.2, tex * 0.7, tex)  # shop fronts
        base_c = np.where(hedge_col[:, None], hedge_cs[block], facade_cs[block])  # [w,3]
        img = base_c[None, :, :] * tex[:, :, None]
        windows = window & ~hedge_col[None, :]
        img[windows] = (window_c[None, None, :] * (1 + 0.25 * large)[:, :, None])[windows]
        labels = np.broadcast_to(np.where(hedge_col, VEGETATION, BUILDING).astype(np.uint8), mask.shape)
        self.image[rows, cols][mask] = img[mask]
        self.label[rows, cols][mask] = labels[mask]
        self.depth[rows, cols][mask] = np.broadcast_to(z[None, :], mask.shape)[mask]

    # --- things -----------------------------------------------------------------------------
    def tree(self, lateral: float, depth: float) -> None:
        rng, cam = self.rng, self.cam
        crown_elev, rx, ry = rng.uniform(4.0, 7.0), rng.uniform(1.3, 3.0), rng.uniform(1.5, 3.0)
        trunk_c = np.array([70, 55, 45], np.float32) * rng.uniform(0.7, 1.2)
        self.vertical_bar(lateral, depth, 0.0, crown_elev, 0.35, VEGETATION, trunk_c)
        cx, cy = cam.x(lateral, depth), cam.y(crown_elev, depth)
        prx, pry = cam.px(rx, depth), cam.px(ry, depth)
        box = self.box(cx - 1.3 * prx, cy - 1.3 * pry, cx + 1.3 * prx, cy + 1.3 * pry, cx, cy)
        if box is None:
            return
        r = (box.u / prx) ** 2 + (box.v / pry) ** 2
        mask = r < 1.0 + 0.15 * self.medium[box.rows, box.cols]
        base = _pick(rng, np.array([[50, 95, 40], [85, 120, 45], [95, 125, 50], [40, 70, 45]], np.float32), 12)
        col = self.shade(box, base, 0.25, 0.2)
        self.paint(box, mask, VEGETATION, col, depth)

    def pole(self, lateral: float, depth: float, attachment: str) -> None:
        rng, cam = self.rng, self.cam
        top = rng.uniform(4.5, 9.0)
        grey = rng.uniform(60, 170)
        colour = np.array([grey, grey, grey * rng.uniform(0.95, 1.1)], np.float32)
        self.vertical_bar(lateral, depth, 0.0, top, 0.14, POLE, colour)
        if attachment == "sign":
            elev = rng.uniform(2.0, min(3.2, top - 1.2))
            self.sign(lateral, depth, elev)
            if rng.random() < 0.3:  # a second plate above the first
                self.sign(lateral, depth, elev + 1.0)
        elif attachment == "light":
            self.light(lateral, depth, rng.uniform(2.4, min(4.0, top - 0.6)))
        elif attachment == "arm_light":
            # a horizontal arm over the road with a hanging light at its end
            reach = -np.sign(lateral - self.centre) * rng.uniform(2.0, 4.5)
            y = cam.y(top - 0.3, depth)
            thick = max(1.0, min(cam.px(0.12, depth), 3.0 * self.res))
            x0, x1 = sorted((cam.x(lateral, depth), cam.x(lateral + reach, depth)))
            box = self.box(x0, y - thick / 2, x1, y + thick / 2, x0, y)
            if box is not None:
                self.paint(box, np.ones((1, 1), bool), POLE, colour, depth)
            self.light(lateral + reach, depth, top - 1.4)

    def light(self, lateral: float, depth: float, elev: float) -> None:
        rng, cam = self.rng, self.cam
        w, h = cam.px(0.4, depth), cam.px(1.1, depth)
        cx, cy = cam.x(lateral, depth), cam.y(elev + 0.5, depth)
        box = self.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cx, cy)
        if box is None:
            return
        housing = _pick(rng, np.array([[40, 40, 42], [70, 70, 72], [150, 130, 40]], np.float32), 8)
        col = self.shade(box, housing, 0.05, 0.0)
        lit = rng.integers(3)
        lamp_colours = np.array([[255, 60, 40], [255, 190, 40], [60, 230, 120]], np.float32)
        for k in range(3):
            ly = (k - 1) * h / 3.2
            lamp = (box.u / (0.3 * w)) ** 2 + ((box.v - ly) / (0.13 * h)) ** 2 < 1.0
            lamp_c = lamp_colours[k] if k == lit else lamp_colours[k] * 0.25
            col = np.where(lamp[:, :, None], lamp_c, col)
        self.paint(box, np.ones((1, 1), bool), LIGHT, col, depth)

    def sign(self, lateral: float, depth: float, elev: float) -> None:
        rng, cam = self.rng, self.cam
        size = rng.uniform(0.6, 1.2)
        s = cam.px(size, depth)
        cx, cy = cam.x(lateral, depth), cam.y(elev + size / 2, depth)
        box = self.box(cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2, cx, cy)
        if box is None:
            return
        shape = rng.integers(3)
        nu, nv = box.u / (s / 2), box.v / (s / 2)
        if shape == 0:
            mask = np.ones_like(nu * nv, dtype=bool)
            rim = (np.abs(nu) > 1 - 2.0 / s) | (np.abs(nv) > 1 - 2.0 / s)
        elif shape == 1:
            r = np.sqrt(nu**2 + nv**2)
            mask, rim = r < 1.0, r > 1 - 2.0 / s
        else:  # triangle pointing up
            mask = (nv < 1.0) & (np.abs(nu) < (nv + 1.0) / 2.0)
            rim = (nv > 1 - 2.0 / s) | (np.abs(nu) > (nv + 1.0) / 2.0 - 2.0 / s)
        back = rng.random() < 0.35
        if back:  # the back of a sign: dark grey plate with a thin bright rim, like a light's housing
            plate = _pick(rng, np.array([[45, 45, 48], [75, 75, 78]], np.float32), 8)
            rim_c = plate + 70
        else:
            plate = _pick(rng, np.array([[30, 70, 160], [200, 40, 35], [220, 190, 40], [225, 225, 220]], np.float32))
            rim_c = np.array([235, 235, 235], np.float32) if plate.mean() < 170 else np.array([190, 30, 30], np.float32)
            symbol = (np.abs(nu) < 0.15) & (np.abs(nv) < 0.45)
            plate_img = self.shade(box, plate, 0.04, 0.0)
            plate_img[np.broadcast_to(symbol, plate_img.shape[:2])] = rim_c
        col = self.shade(box, plate, 0.04, 0.0) if back else plate_img
        col = np.where((rim & mask)[:, :, None], rim_c, col)
        self.paint(box, mask, SIGN, col, depth)

    def person(self, lateral: float, depth: float, cls: int = PERSON, elev: float = 0.0) -> None:
        rng, cam = self.rng, self.cam
        tall = rng.uniform(1.5, 1.95) * (0.82 if cls == RIDER else 1.0)
        h = cam.px(tall, depth)
        # a rider's legs end at the pedals (at ``elev``), 20 % of the body height above the feet
        feet = elev - 0.2 * tall if cls == RIDER else elev
        cx, foot = cam.x(lateral, depth), cam.y(feet, depth)
        box = self.box(cx - 0.3 * h, foot - h, cx + 0.3 * h, foot, cx, foot - h)
        if box is None:
            return
        u, v = box.u / h, box.v / h  # v: 0 at the head's top, 1 at the feet
        head = (u / 0.055) ** 2 + ((v - 0.07) / 0.07) ** 2 < 1.0
        torso = (np.abs(u) < 0.12) & (v >= 0.13) & (v < 0.55)
        stride = rng.uniform(0.0, 0.06)
        legs = (v >= 0.53) & (
            (np.abs(u - 0.045 - stride * (v - 0.53)) < 0.04) | (np.abs(u + 0.045 + stride * (v - 0.53)) < 0.04)
        )
        if cls == RIDER:
            legs &= v < 0.8  # seated: legs end at the pedals
        skin = _pick(rng, _SKIN, 8)
        top_c, bottom_c = _palette_colour(rng), _palette_colour(rng)
        col = self.shade(box, top_c, 0.05, 0.05)
        rows = np.arange(box.rows.start, box.rows.stop)[:, None]
        if cls == RIDER:  # a hi-vis vest of 1-px stripes: only visible at full resolution
            col = col * np.where(rows % 2 == 0, np.float32(1.35), np.float32(0.7))[:, :, None]
        elif rng.random() < 0.35:  # coarse stripes: a pedestrian's striped shirt
            col = (
                col
                * np.where((rows // max(3, round(0.04 * h))) % 2 == 0, np.float32(1.3), np.float32(0.75))[:, :, None]
            )
        col = np.where(legs[:, :, None], self.shade(box, bottom_c, 0.05, 0.05), col)
        col = np.where(head[:, :, None], skin, col)
        self.paint(box, head | torso | legs, cls, col, depth)

    def rider(self, lateral: float, depth: float) -> None:
        rng, cam = self.rng, self.cam
        wheel_r = cam.px(0.34, depth)
        cx, ground = cam.x(lateral, depth), cam.y(0.0, depth)
        side_view = rng.random() < 0.5
        half_w = 3.2 * wheel_r if side_view else 0.6 * wheel_r
        box = self.box(cx - half_w, ground - 2 * wheel_r - 1, cx + half_w, ground, cx, ground - wheel_r)
        if box is not None:
            frame_c = _palette_colour(rng)
            thick = max(0.6, cam.px(0.05, depth))
            if side_view:
                centres = (-1.6 * wheel_r, 1.6 * wheel_r)
                ring = np.zeros(np.broadcast_shapes(box.u.shape, box.v.shape), bool)
                for wx in centres:
                    ring |= np.abs(np.sqrt((box.u - wx) ** 2 + box.v**2) - wheel_r) < thick
                bar = (np.abs(box.v + 0.2 * wheel_r) < thick) & (np.abs(box.u) < 1.6 * wheel_r)
                mask = ring | bar
            else:
                mask = (np.abs(box.u) < max(0.5, thick)) & (np.abs(box.v) < wheel_r)
            col = np.where(mask[:, :, None], np.float32(25.0), frame_c)
            col = np.where(((np.abs(box.v + 0.2 * wheel_r) < thick) & mask)[:, :, None], frame_c, col)
            self.paint(box, mask, RIDER, np.broadcast_to(col, mask.shape + (3,)).copy(), depth)
        self.person(lateral, depth, cls=RIDER, elev=0.3)

    def car(self, lateral: float, depth: float) -> None:
        rng, cam = self.rng, self.cam
        w, h = cam.px(rng.uniform(1.7, 1.95), depth), cam.px(rng.uniform(1.35, 1.6), depth)
        cx, ground = cam.x(lateral, depth), cam.y(0.0, depth)
        # the car's shadow on the road, painted as road
        sbox = self.box(cx - 0.55 * w, ground - 0.06 * h, cx + 0.55 * w, ground + 0.05 * h, cx, ground)
        if sbox is not None:
            dark = self.image[sbox.rows, sbox.cols] * 0.45
            road_here = self.label[sbox.rows, sbox.cols] == ROAD
            self.paint(sbox, road_here, ROAD, dark, depth)
        box = self.box(cx - w / 2, ground - h, cx + w / 2, ground, cx, ground - h)
        if box is None:
            return
        u, v = box.u / w, box.v / h  # u in [-0.5, 0.5], v: 0 roof, 1 ground
        cabin = (v < 0.42) & (np.abs(u) < 0.36 + 0.12 * v / 0.42)
        body = (v >= 0.42) & (v < 0.88) & (np.abs(u) < 0.5)
        wheels = (v >= 0.85) & (np.abs(u) > 0.3) & (np.abs(u) < 0.47)
        mask = cabin | body | wheels
        paint = _palette_colour(rng)
        col = self.shade(box, paint, 0.03, 0.04) * (1.0 + 0.25 * (0.5 - v))[:, :, None]
        glass = (v > 0.07) & (v < 0.38) & (np.abs(u) < 0.3 + 0.12 * v / 0.42)
        glass_c = np.array([40, 50, 60], np.float32) + rng.uniform(0, 80) * (1 - v)[:, :, None]
        col = np.where(glass[:, :, None], glass_c, col)
        lamps = (v > 0.5) & (v < 0.62) & (np.abs(u) > 0.36) & (np.abs(u) < 0.48)
        col = np.where(lamps[:, :, None], np.array([200, 30, 30], np.float32), col)
        plate = (v > 0.66) & (v < 0.76) & (np.abs(u) < 0.1)
        col = np.where(plate[:, :, None], np.array([225, 225, 215], np.float32), col)
        col = np.where(wheels[:, :, None], np.float32(22.0), col)
        self.paint(box, mask, CAR, col, depth)

    def hood(self) -> None:
        """The ego vehicle's hood at the bottom edge: void (255), as in Cityscapes."""
        rng = self.rng
        hood_h = rng.uniform(0.04, 0.08) * self.height
        span = rng.uniform(0.7, 0.95) * self.width
        paint = _palette_colour(rng) * 0.5
        xs = np.arange(self.width, dtype=np.float32) + 0.5
        curve = self.height - hood_h * np.sqrt(np.clip(1 - ((xs - self.width / 2) / span) ** 2, 0, 1))
        rows = slice(max(0, math.floor(curve.min())), self.height)
        ys = np.arange(rows.start, self.height, dtype=np.float32)[:, None] + 0.5
        mask = ys >= curve[None, :]
        reflect = self.horizon_colour * 0.3
        large, fine = self.large[rows], self.fine[rows]
        img = (paint + reflect * (1 + large[:, :, None] * 0.5)) * (1 + 0.03 * fine)[:, :, None]
        self.image[rows][mask] = img[mask]
        self.label[rows][mask] = IGNORE
        self.depth[rows][mask] = 0.0

    # --- assembly ---------------------------------------------------------------------------
    def place_things(self, street_end: float) -> None:
        """Draw every object far to near (painter's algorithm)."""
        rng, cam = self.rng, self.cam
        c, road, walk = self.centre, self.road_half, self.sidewalk
        min_depth = cam.cam_h * cam.focal / (self.height - cam.horizon) + 0.5  # the bottom row's depth
        far = min(street_end, 200.0)

        def log_depth(near: float, far_: float) -> float:
            return float(np.exp(rng.uniform(np.log(max(near, min_depth)), np.log(far_))))

        jobs: list[tuple[float, Callable[[], None]]] = []

        def add(depth: float, draw: Callable[..., None], *args: object) -> None:
            jobs.append((depth, lambda: draw(*args)))

        for side in (-1.0, 1.0):
            z = rng.uniform(3.0, 12.0)
            while z < far:  # poles at the curb, some carrying lights or signs
                kind = rng.choice(["plain", "sign", "light", "arm_light"], p=[0.25, 0.35, 0.2, 0.2])
                add(z, self.pole, c + side * (road + rng.uniform(0.25, 0.5)), z, str(kind))
                z += rng.uniform(5.0, 20.0)
            z = rng.uniform(4.0, 15.0)
            while z < far and rng.random() < 0.9:  # trees along the sidewalk
                add(z, self.tree, c + side * (road + walk * rng.uniform(0.55, 0.85)), z)
                z += rng.uniform(8.0, 25.0)
        # people: the smallest still >= 3 px tall
        person_far = min(far, 1.7 * cam.focal / 3.0)
        for _ in range(rng.integers(8, 28)):
            side = rng.choice([-1.0, 1.0])
            z = log_depth(2.5, person_far)
            if rng.random() < 0.12:  # crossing the road
                add(z, self.person, c + rng.uniform(-road, road), z)
            else:
                add(z, self.person, c + side * (road + walk * rng.uniform(0.1, 0.9)), z)
        for _ in range(rng.integers(2, 7)):
            side = rng.choice([-1.0, 1.0])
            z = log_depth(3.5, person_far)
            add(z, self.rider, c + side * (road - rng.uniform(0.5, 1.8)), z)
        lanes = max(1, int(road // 3.2))
        for _ in range(rng.integers(4, 18)):
            lane = rng.integers(-lanes, lanes)
            z = log_depth(4.0, far)
            add(z, self.car, c + (lane + 0.5) * (road / lanes) + rng.uniform(-0.4, 0.4), z)
        for side in (-1.0, 1.0):  # parked cars along the curb
            z = rng.uniform(5.0, 30.0)
            while z < far and rng.random() < 0.7:
                add(z, self.car, c + side * (road - 1.1), z)
                z += rng.uniform(5.0, 25.0)
        for _, draw in sorted(jobs, key=lambda job: -job[0]):
            draw()

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        fog = rng.uniform(600.0, 2000.0)
        gain = (rng.uniform(0.65, 1.25) * (1 + rng.normal(0, 0.05, 3))).astype(np.float32)
        noise_sigma = np.float32(rng.uniform(1.5, 4.0))
        haze = (1.0 - np.exp(self.depth * np.float32(-1.0 / fog)))[:, :, None]
        img = self.image
        img += (self.horizon_colour - img) * haze
        img *= (1 + 0.08 * self.large)[:, :, None]
        img *= gain
        # anti-aliasing: a mild [1, 6, 1] / 8 blur keeps 1-px detail (at half contrast)
        img[1:-1] = (img[:-2] + 6 * img[1:-1] + img[2:]) * np.float32(1 / 8)
        img[:, 1:-1] = (img[:, :-2] + 6 * img[:, 1:-1] + img[:, 2:]) * np.float32(1 / 8)
        img += noise_sigma * rng.standard_normal(img.shape, dtype=np.float32)
        img += 0.5
        return np.clip(img, 0, 255).astype(np.uint8), self.label


def check_size(height: int, width: int) -> None:
    """Raise ValueError unless (height, width) is a supported scene size."""
    if not (MIN_SIZE[0] <= height <= MAX_SIZE[0] and MIN_SIZE[1] <= width <= MAX_SIZE[1]):
        raise ValueError(f"scene size must be between {MIN_SIZE} and {MAX_SIZE} (H, W); got ({height}, {width})")


def generate_scene(seed: int, height: int = 512, width: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (image uint8 [H,W,3] RGB, label uint8 [H,W], 255 = void).

    Deterministic: the same (seed, height, width) gives byte-identical arrays.
    """
    check_size(height, width)
    rng = np.random.default_rng(seed)
    cam = _Camera(
        focal=0.55 * width * rng.uniform(0.9, 1.1),
        horizon=height * rng.uniform(0.38, 0.48),
        vx=width * rng.uniform(0.42, 0.58),
        cam_h=rng.uniform(1.2, 1.6),
    )
    scene = _Scene(
        rng=rng,
        height=height,
        width=width,
        cam=cam,
        centre=rng.uniform(-2.0, 2.0),
        road_half=rng.uniform(3.5, 7.0),
        sidewalk=rng.uniform(3.5, 6.5),
        res=width / 1024.0,
    )
    street_end = rng.uniform(120.0, 450.0)
    scene.paint_sky()
    scene.paint_ground()
    scene.paint_backdrop(street_end)
    scene.paint_facades(-1.0, street_end)
    scene.paint_facades(1.0, street_end)
    scene.place_things(street_end)
    scene.hood()
    return scene.finish()


SPLIT_CODES = {"train": 0, "val": 1}


def sample_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of sample ``index`` of ``split``: disjoint across splits by construction."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; embedded splits: {', '.join(SPLIT_CODES)}")
    if not 0 <= index < 2**32:
        raise ValueError(f"sample index {index} out of range")
    return ((seed * len(SPLIT_CODES) + SPLIT_CODES[split]) << 32) | index


@dataclass(frozen=True)
class EmbeddedConfig:
    height: int = 512
    width: int = 1024
    num_train: int = 64
    num_val: int = 16
    seed: int = 0
    cache_dir: str | None = "results/cache"

    def cache_key(self) -> str:
        """Hash of everything that determines sample content (not the sample counts)."""
        text = json.dumps(
            {"generator": GENERATOR_VERSION, "height": self.height, "width": self.width, "seed": self.seed},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_npy_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached samples are shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EmbeddedDataset(SegDataset):
    """Generated street scenes, cached under ``<cache_dir>/embedded/<config hash>/`` as raw ``.npy``
    arrays (uint8; read ~50x faster than PNG, which matters as training reads every image many times)."""

    classes = EMBEDDED_CLASSES

    def __init__(self, config: EmbeddedConfig, split: str):
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown split {split!r}; embedded splits: {', '.join(SPLIT_CODES)}")
        self.config = config
        self.split = split
        self.length = config.num_train if split == "train" else config.num_val
        self.cache_path = (
            Path(config.cache_dir) / "embedded" / config.cache_key() if config.cache_dir is not None else None
        )

    def __len__(self) -> int:
        return self.length

    def seed_of(self, index: int) -> int:
        return sample_seed(self.config.seed, self.split, index)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H,W,3], label uint8 [H,W]) of sample ``index``, from the cache when present."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} {self.split} samples")
        cfg = self.config
        if self.cache_path is None:
            return generate_scene(self.seed_of(index), cfg.height, cfg.width)
        image_path = self.cache_path / f"{self.split}_{index:05d}.npy"
        label_path = self.cache_path / f"{self.split}_{index:05d}_label.npy"
        cached = self._load(image_path, label_path)
        if cached is not None:
            return cached
        image, label = generate_scene(self.seed_of(index), cfg.height, cfg.width)
        self._ensure_cache_dir()
        _write_npy_atomic(label_path, label)
        _write_npy_atomic(image_path, image)
        return image, label

    def _ensure_cache_dir(self) -> None:
        """Create the cache directory with a meta.json saying which generator settings filled it."""
        assert self.cache_path is not None
        meta = self.cache_path / "meta.json"
        if meta.exists():
            return
        self.cache_path.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        text = json.dumps(
            {"generator": GENERATOR_VERSION, "height": cfg.height, "width": cfg.width, "seed": cfg.seed}, indent=1
        )
        fd, tmp = tempfile.mkstemp(dir=self.cache_path, prefix="meta.json", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, meta)

    def _load(self, image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        if not (image_path.exists() and label_path.exists()):
            return None
        try:
            image, label = np.load(image_path, allow_pickle=False), np.load(label_path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable (e.g. truncated by a crash): regenerate
        expected = (self.config.height, self.config.width)
        if image.shape != (*expected, 3) or label.shape != expected or (image.dtype, label.dtype) != (np.uint8,) * 2:
            return None
        return image, label

    def __getitem__(self, index: int) -> SegSample:
        image, label = self.arrays(index)
        return SegSample(
            image=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            label=torch.from_numpy(label.astype(np.int64)),
            name=f"embedded_{self.split}_{index:05d}",
        )
