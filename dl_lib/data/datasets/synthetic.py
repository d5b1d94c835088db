"""Embedded street scenes: a procedural dataset written in the exact Cityscapes layout.

Each image is a street seen from a car: a road with lane markings running to a vanishing point,
sidewalks, facades (buildings with windows, walls, fences), trees and terrain, sky with a gradient
and clouds, and objects drawn far-to-near so that near ones occlude far ones: poles with traffic
signs and traffic lights, cars, trucks, buses, persons, riders on bicycles and motorcycles, static
clutter and sometimes the ego vehicle's hood (void). Colours come from one shared palette (a car
can have a facade's colour), materials share textures, and lighting (brightness, colour cast,
shadows) and noise vary, so a model has to use shape and context, not colour alone.

Files (``<city>_<seq:06d>_000019`` stems, as in Cityscapes)::

    <root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png       (uint8, Cityscapes label ids)
    <root>/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png  (uint8, train ids, 255 = ignore)
    <root>/gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png    (uint16, id*1000+k for instance
                                                                    classes, else the label id)
    <root>/manifest.json                                           (version, seed, sizes, counts)

Registered as ``synthetic_cityscapes_{train,val}`` (in ``builtin.py``). Generated on first use into ``$DL_DATASETS/synthetic_cityscapes`` (atomically: a temp folder
renamed into place), or ahead of time with::

    python -m dl_lib.data.datasets.synthetic --root DIR --num-train 200 --num-val 50 --size 256 512 --seed 0
"""
import argparse
import json
import logging
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from dl_lib.data.datasets.common import dataset_path
from dl_lib.data.datasets.file_lock import exclusive_lock, replace_dir

__all__ = ["GENERATOR_VERSION", "render_scene", "generate_synthetic_cityscapes",
           "ensure_synthetic_cityscapes", "SYNTHETIC_OPTIONS", "ID_TO_TRAINID"]

logger = logging.getLogger(__name__)

# Bump when the drawing changes: datasets on disk with another version are regenerated.
GENERATOR_VERSION = 1

# Defaults of the registered synthetic_cityscapes_{train,val}; change before first use if needed.
SYNTHETIC_OPTIONS = dict(num_train=200, num_val=50, size=(256, 512), seed=0)

CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}

# Cityscapes label ids used by the generator
UNLABELED, EGO, STATIC = 0, 1, 4
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 32, 33
INSTANCE_IDS = {lab.id for lab in _CS_LABELS if lab.hasInstances and lab.id >= 0}

ID_TO_TRAINID = np.full(256, 255, dtype=np.uint8)
for _lab in _CS_LABELS:
    if 0 <= _lab.id < 256 and 0 <= _lab.trainId < 255:
        ID_TO_TRAINID[_lab.id] = _lab.trainId

# One palette for facades, vehicles and clothes: colour alone must not give the class.
PALETTE = np.array([
    [200, 200, 200], [150, 150, 150], [90, 90, 95], [40, 40, 45], [230, 225, 210], [190, 160, 120],
    [150, 100, 70], [170, 60, 50], [60, 80, 150], [200, 190, 90], [110, 130, 100], [240, 240, 240],
    [120, 90, 140], [80, 120, 140], [210, 130, 70], [30, 60, 40],
], dtype=np.float32)

# Materials select a texture field; several classes share each one.
M_FLAT, M_GRAIN, M_BRICK, M_FOLIAGE, M_STRIPES = 0, 1, 2, 3, 4


class _Canvas:
    """Label ids, instance ids, base colours and materials drawn together, painter's order."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.label = np.zeros((h, w), np.uint8)
        self.inst = np.zeros((h, w), np.int32)
        self.color = np.zeros((h, w, 3), np.float32)
        self.material = np.zeros((h, w), np.uint8)
        self.count: Dict[int, int] = {}

    def new_instance(self, label_id: int) -> int:
        if label_id not in INSTANCE_IDS:
            return label_id
        k = self.count.get(label_id, 0)
        self.count[label_id] = k + 1
        return label_id * 1000 + k

    def poly(self, polys, label_id: int, color, material: int = M_FLAT, inst: Optional[int] = None):
        """Fill polygons (list of K×2 arrays, x/y pixels) with a label, colour and material."""
        pts = [np.round(np.asarray(p, np.float64)).astype(np.int32) for p in polys]
        if not pts:
            return
        cv2.fillPoly(self.label, pts, int(label_id))
        cv2.fillPoly(self.inst, pts, int(label_id if inst is None else inst))
        cv2.fillPoly(self.color, pts, tuple(float(c) for c in color))
        cv2.fillPoly(self.material, pts, int(material))

    def paint(self, polys, color, material: Optional[int] = None):
        """Recolour (windows, wheels, markings) without changing labels."""
        pts = [np.round(np.asarray(p, np.float64)).astype(np.int32) for p in polys]
        if pts:
            cv2.fillPoly(self.color, pts, tuple(float(c) for c in color))
            if material is not None:
                cv2.fillPoly(self.material, pts, int(material))

    def circle(self, center, radius, label_id, color, material=M_FLAT, inst=None, thickness=-1):
        c = (int(round(center[0])), int(round(center[1])))
        r = max(1, int(round(radius)))
        cv2.circle(self.label, c, r, int(label_id), thickness)
        cv2.circle(self.inst, c, r, int(label_id if inst is None else inst), thickness)
        cv2.circle(self.color, c, r, tuple(float(x) for x in color), thickness)
        cv2.circle(self.material, c, r, int(material), thickness)

    def line(self, p0, p1, thickness, label_id, color, inst=None):
        a = (int(round(p0[0])), int(round(p0[1])))
        b = (int(round(p1[0])), int(round(p1[1])))
        t = max(1, int(round(thickness)))
        cv2.line(self.label, a, b, int(label_id), t)
        cv2.line(self.inst, a, b, int(label_id if inst is None else inst), t)
        cv2.line(self.color, a, b, tuple(float(x) for x in color), t)
        cv2.line(self.material, a, b, M_FLAT, t)


class _Street:
    """Perspective of a straight street: lateral offset X and height Z are in pixels at the bottom
    row (scale s = 1); a point at scale s (0 = horizon) is at x = vx + X*s, y = yh + (H-yh)*s - Z*s."""

    def __init__(self, h, w, yh, vx):
        self.h, self.w, self.yh, self.vx = h, w, yh, vx

    def pt(self, X, s, Z=0.0):
        return (self.vx + X * s, self.yh + (self.h - self.yh) * s - Z * s)

    def quad_ground(self, X0, X1, s0, s1):
        return [self.pt(X0, s0), self.pt(X1, s0), self.pt(X1, s1), self.pt(X0, s1)]

    def quad_facade(self, X, s0, s1, Z0, Z1):
        return [self.pt(X, s0, Z0), self.pt(X, s1, Z0), self.pt(X, s1, Z1), self.pt(X, s0, Z1)]


def _pick(rng, n=1):
    return PALETTE[rng.integers(len(PALETTE), size=n)]


def _jitter(rng, color, amount=20.0):
    return np.clip(np.asarray(color, np.float32) + rng.normal(0, amount, 3), 0, 255)


def _draw_sky_and_ground(cv: _Canvas, st: _Street, rng):
    h, w, yh = cv.h, cv.w, int(st.yh)
    top = np.array([rng.uniform(40, 120), rng.uniform(90, 160), rng.uniform(170, 250)], np.float32)
    bottom = np.clip(top + rng.uniform(40, 100), 0, 255)
    t = np.linspace(0, 1, max(yh, 1), dtype=np.float32)[:, None, None]
    cv.label[:yh] = SKY
    cv.inst[:yh] = SKY
    cv.color[:yh] = top * (1 - t) + bottom * t
    cv.material[:yh] = M_FLAT
    for _ in range(rng.integers(0, 5)):  # clouds: soft white blobs, still sky
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, yh * 0.7)))
        axes = (int(rng.uniform(0.05, 0.15) * w), int(rng.uniform(0.03, 0.08) * h))
        cv2.ellipse(cv.color, c, axes, 0, 0, 360, (235.0, 235.0, 240.0), -1)
    # far ground beyond the facades: terrain
    cv.poly([[(0, yh), (w, yh), (w, h), (0, h)]], TERRAIN, _jitter(rng, (110, 130, 70), 25), M_GRAIN)


def _draw_skyline(cv: _Canvas, st: _Street, rng):
    """Distant buildings and trees along the horizon (behind everything else)."""
    x = 0.0
    while x < cv.w:
        bw = rng.uniform(0.04, 0.12) * cv.w
        bh = rng.uniform(0.03, 0.2) * cv.h
        if rng.random() < 0.75:
            cv.poly([[(x, st.yh + 2), (x + bw, st.yh + 2), (x + bw, st.yh - bh), (x, st.yh - bh)]],
                    BUILDING, _jitter(rng, _pick(rng)[0]), M_BRICK)
        else:
            cv.circle((x + bw / 2, st.yh - bh / 3), bw / 2, VEGETATION, _jitter(rng, (60, 100, 50)), M_FOLIAGE)
        x += bw


def _draw_side(cv: _Canvas, st: _Street, rng, side: int, Xr: float, Xs: float):
    """One side of the street: sidewalk (or terrain) strip, then facades at X = side*Xs."""
    h = cv.h
    # sidewalk / terrain strip between road edge and facades, drawn in depth segments
    walk_col = _jitter(rng, _pick(rng)[0] * 0.5 + 90, 15)
    cv.poly([st.quad_ground(side * Xr, side * Xs, 0.0, 1.3)], SIDEWALK, walk_col, M_BRICK)
    if rng.random() < 0.4:  # grass verge next to the road
        Xg = Xr + rng.uniform(0.2, 0.4) * (Xs - Xr)
        s0, s1 = sorted(rng.uniform(0.05, 1.3, 2))
        cv.poly([st.quad_ground(side * Xr, side * Xg, s0, s1)], TERRAIN,
                _jitter(rng, (100, 140, 60), 25), M_GRAIN)
    # kerb line: paint only
    cv.paint([st.quad_ground(side * Xr, side * (Xr + 4), 0.0, 1.3)], (170, 170, 170))

    # facades, far to near, segments uniform in depth d = 1/s
    d = 30.0
    while d > 0.6:
        seg = rng.uniform(1.0, 6.0) if d > 3 else rng.uniform(0.4, 1.2)
        d0, d1 = d, max(d - seg, 0.5)
        s0, s1 = 1.0 / d0, 1.0 / d1
        kind = rng.choice(["building", "building", "building", "wall", "trees", "gap"],
                          p=[0.25, 0.2, 0.15, 0.15, 0.15, 0.1])
        X = side * Xs
        if kind == "building":
            Z = rng.uniform(0.5, 1.6) * h
            col = _jitter(rng, _pick(rng)[0])
            cv.poly([st.quad_facade(X, s0, s1, 0, Z)], BUILDING, col, M_BRICK)
            _windows(cv, st, rng, X, d0, d1, Z, col)
        elif kind == "wall":
            Z = rng.uniform(0.08, 0.2) * h
            cv.poly([st.quad_facade(X, s0, s1, 0, Z)], WALL, _jitter(rng, _pick(rng)[0]), M_GRAIN)
            Zb = rng.uniform(0.5, 1.2) * h  # a building set back behind the wall
            cv.poly([st.quad_facade(X * 1.3, 1 / (d0 + 1), 1 / (d1 + 1), Z * 0.9, Zb)], BUILDING,
                    _jitter(rng, _pick(rng)[0]), M_BRICK)
        elif kind == "trees":
            for dd in np.arange(d1, d0, 0.7 if d1 > 2 else 0.35)[::-1]:
                s = 1.0 / dd
                x, yg = st.pt(X * rng.uniform(0.85, 1.0), s)
                r = rng.uniform(0.12, 0.25) * h * s
                cv.poly([[(x - r * 0.1, yg), (x + r * 0.1, yg), (x + r * 0.1, yg - 2 * r),
                          (x - r * 0.1, yg - 2 * r)]], VEGETATION, (70, 50, 35), M_GRAIN)
                for _ in range(3):
                    cv.circle((x + rng.normal(0, r * 0.3), yg - 2.2 * r + rng.normal(0, r * 0.3)), r,
                              VEGETATION, _jitter(rng, (55, 95, 45), 20), M_FOLIAGE)
        # 'gap': the far terrain shows through
        if kind != "trees" and rng.random() < 0.3:  # fence along the sidewalk's outer edge
            Zf = rng.uniform(0.06, 0.12) * h
            cv.poly([st.quad_facade(side * (Xs - 6), s0, s1, 0, Zf)], FENCE,
                    _jitter(rng, _pick(rng)[0]), M_STRIPES)
        d = d1


def _windows(cv, st, rng, X, d0, d1, Z, col):
    """A grid of windows on a facade between depths d0 > d1 and height Z (colour only)."""
    ncol = max(1, int((d0 - d1) * rng.uniform(1.0, 2.0)))
    nrow = max(1, int(Z / (0.12 * cv.h)))
    dd = np.linspace(d0, d1, ncol + 1)
    zz = np.linspace(0.1 * Z, Z, nrow + 1)
    wincol = _jitter(rng, col * rng.uniform(0.3, 0.6), 10)
    polys = []
    for i in range(ncol):
        a, b = dd[i] - 0.2 * (dd[i] - dd[i + 1]), dd[i + 1] + 0.2 * (dd[i] - dd[i + 1])
        for j in range(nrow):
            z0 = zz[j] + 0.2 * (zz[j + 1] - zz[j])
            z1 = zz[j + 1] - 0.15 * (zz[j + 1] - zz[j])
            polys.append(st.quad_facade(X, 1 / a, 1 / b, z0, z1))
    cv.paint(polys, wincol, M_FLAT)


def _draw_road(cv: _Canvas, st: _Street, rng, Xr: float):
    gray = rng.uniform(60, 120)
    cv.poly([st.quad_ground(-Xr, Xr, 0.0, 1.3)], ROAD, _jitter(rng, (gray, gray, gray + 5), 8), M_GRAIN)
    # dashed centre and lane lines (paint only: still road)
    lanes = [0.0] if rng.random() < 0.5 else [-Xr / 3, Xr / 3]
    for X in lanes:
        d = 40.0
        dashes = []
        while d > 0.8:
            d1 = d - 1.2
            dashes.append(st.quad_ground(X - 5, X + 5, 1 / d, 1 / max(d1, 0.5)))
            d = d1 - 1.2
        cv.paint(dashes, (225, 225, 215), M_FLAT)


def _person(cv, st, rng, X, s, label=PERSON, Zbase=0.0, inst=None):
    """A standing (or, for riders, sitting: Zbase > 0) person; returns nothing."""
    inst = cv.new_instance(label) if inst is None else inst
    H = rng.uniform(0.38, 0.5) * cv.h
    x, yg = st.pt(X, s, Zbase)
    hs = H * s
    wid = 0.22 * hs
    shirt, pants, skin = _pick(rng)[0], _pick(rng)[0], _jitter(rng, (200, 160, 130), 25)
    if label == PERSON:  # legs
        step = rng.uniform(-0.06, 0.06) * hs
        cv.poly([[(x - wid * 0.45, yg), (x - wid * 0.05, yg), (x, yg - 0.48 * hs), (x - wid * 0.45 + step, yg - 0.48 * hs)],
                 [(x + wid * 0.05, yg), (x + wid * 0.45, yg), (x + wid * 0.45 - step, yg - 0.48 * hs), (x, yg - 0.48 * hs)]],
                label, pants, M_GRAIN, inst)
        top = yg - 0.45 * hs
    else:
        top = yg
    cv.poly([[(x - wid / 2, top), (x + wid / 2, top), (x + wid * 0.45, top - 0.38 * hs),
              (x - wid * 0.45, top - 0.38 * hs)]], label, shirt, M_GRAIN, inst)
    cv.line((x - wid / 2, top - 0.35 * hs), (x - wid * 0.7, top - 0.05 * hs), wid * 0.25, label, shirt, inst)
    cv.line((x + wid / 2, top - 0.35 * hs), (x + wid * 0.7, top - 0.05 * hs), wid * 0.25, label, shirt, inst)
    cv.circle((x, top - 0.45 * hs), 0.09 * hs, label, skin, M_FLAT, inst)


def _vehicle(cv, st, rng, X, s, label):
    inst = cv.new_instance(label)
    x, yg = st.pt(X, s)
    scale = {CAR: 1.0, TRUCK: 1.15, BUS: 1.25}[label]
    wid = rng.uniform(0.22, 0.3) * cv.w * scale * s
    col = _jitter(rng, _pick(rng)[0], 15)
    if label == CAR:
        body_h, cab_h = 0.32 * wid, 0.28 * wid
        cv.poly([[(x - wid / 2, yg - 0.06 * wid), (x + wid / 2, yg - 0.06 * wid),
                  (x + wid / 2, yg - body_h), (x - wid / 2, yg - body_h)]], label, col, M_FLAT, inst)
        cv.poly([[(x - 0.42 * wid, yg - body_h), (x + 0.42 * wid, yg - body_h),
                  (x + 0.3 * wid, yg - body_h - cab_h), (x - 0.3 * wid, yg - body_h - cab_h)]],
                label, col, M_FLAT, inst)
        cv.paint([[(x - 0.36 * wid, yg - body_h - 0.03 * wid), (x + 0.36 * wid, yg - body_h - 0.03 * wid),
                   (x + 0.27 * wid, yg - body_h - cab_h + 0.04 * wid), (x - 0.27 * wid, yg - body_h - cab_h + 0.04 * wid)]],
                 (40, 50, 60))
        top = yg - body_h
    else:
        hgt = (0.95 if label == TRUCK else 1.05) * wid
        cv.poly([[(x - wid / 2, yg - 0.06 * wid), (x + wid / 2, yg - 0.06 * wid), (x + wid / 2, yg - hgt),
                  (x - wid / 2, yg - hgt)]], label, col, M_STRIPES if label == TRUCK else M_FLAT, inst)
        if label == BUS:  # rows of windows
            cv.paint([[(x - 0.45 * wid, yg - 0.55 * wid), (x + 0.45 * wid, yg - 0.55 * wid),
                       (x + 0.45 * wid, yg - 0.95 * wid), (x - 0.45 * wid, yg - 0.95 * wid)]], (30, 40, 50))
        else:
            cv.paint([[(x - 0.5 * wid, yg - 0.5 * wid), (x + 0.5 * wid, yg - 0.5 * wid),
                       (x + 0.5 * wid, yg - 0.54 * wid), (x - 0.5 * wid, yg - 0.54 * wid)]], col * 0.5)
        top = yg - 0.3 * wid
    # wheels (part of the vehicle), lights
    for sx in (-0.38, 0.38):
        cv.poly([[(x + sx * wid - 0.08 * wid, yg), (x + sx * wid + 0.08 * wid, yg),
                  (x + sx * wid + 0.08 * wid, yg - 0.1 * wid), (x + sx * wid - 0.08 * wid, yg - 0.1 * wid)]],
                label, (20, 20, 20), M_FLAT, inst)
        cv.paint([[(x + sx * wid - 0.07 * wid, top + 0.05 * wid), (x + sx * wid + 0.07 * wid, top + 0.05 * wid),
                   (x + sx * wid + 0.07 * wid, top + 0.11 * wid), (x + sx * wid - 0.07 * wid, top + 0.11 * wid)]],
                 (220, 40, 30))


def _two_wheeler(cv, st, rng, X, s, label):
    inst = cv.new_instance(label)
    x, yg = st.pt(X, s)
    L = rng.uniform(0.2, 0.28) * cv.h * s  # side view: wheelbase
    r = 0.3 * L
    col = _jitter(rng, _pick(rng)[0], 15)
    thick = max(3, 0.11 * L)
    for dx in (-L / 2, L / 2):
        cv.circle((x + dx, yg - r), r, label, (25, 25, 25), M_FLAT, inst,
                  thickness=-1 if label == MOTORCYCLE else int(max(2, thick)))
    if label == MOTORCYCLE:
        cv.poly([[(x - L / 2, yg - 1.2 * r), (x + L / 2, yg - 1.2 * r), (x + 0.3 * L, yg - 2.6 * r),
                  (x - 0.4 * L, yg - 2.4 * r)]], label, col, M_FLAT, inst)
    else:
        cv.line((x - L / 2, yg - r), (x, yg - r), thick, label, col, inst)
        cv.line((x, yg - r), (x + L / 4, yg - 2.8 * r), thick, label, col, inst)
        cv.line((x - L / 2, yg - r), (x - L / 6, yg - 2.7 * r), thick, label, col, inst)
        cv.line((x - L / 6, yg - 2.7 * r), (x + L / 4, yg - 2.8 * r), thick, label, col, inst)
        cv.line((x + L / 4, yg - 2.8 * r), (x + L / 2, yg - r), thick, label, col, inst)
    # the rider sits above the saddle (a separate instance of class rider)
    _person(cv, st, rng, X, s, label=RIDER, Zbase=2.4 * r / s)


def _pole(cv, st, rng, X, s):
    x, yg = st.pt(X, s)
    Hp = rng.uniform(0.5, 0.7) * cv.h * s
    wp = max(4.0, 0.024 * cv.w * s)
    cv.poly([[(x - wp / 2, yg), (x + wp / 2, yg), (x + wp / 2, yg - Hp), (x - wp / 2, yg - Hp)]],
            POLE, _jitter(rng, (110, 110, 115), 30), M_FLAT)
    r = max(5.0, 0.065 * cv.h * s)
    what = rng.choice(["sign", "light", "both", "none"], p=[0.35, 0.35, 0.2, 0.1])
    if what in ("sign", "both"):
        cy = yg - Hp * rng.uniform(0.55, 0.8)
        col = _jitter(rng, PALETTE[rng.choice([7, 8, 9, 11])], 10)
        shape = rng.integers(3)
        if shape == 0:
            cv.circle((x, cy), r, SIGN, col)
            cv.circle((x, cy), r * 0.6, SIGN, _pick(rng)[0])
        elif shape == 1:
            cv.poly([[(x - r, cy - r), (x + r, cy - r), (x + r, cy + r), (x - r, cy + r)]], SIGN, col)
        else:
            cv.poly([[(x - r, cy + r * 0.8), (x + r, cy + r * 0.8), (x, cy - r)]], SIGN, col)
    if what in ("light", "both"):
        bw, bh = 1.3 * r, 3.2 * r
        top = yg - Hp
        cx = x + (bw * 0.8 if rng.random() < 0.5 else 0)
        cv.poly([[(cx - bw / 2, top), (cx + bw / 2, top), (cx + bw / 2, top + bh), (cx - bw / 2, top + bh)]],
                LIGHT, _jitter(rng, (35, 35, 35), 10))
        lit = rng.integers(3)
        for k, lamp in enumerate([(230, 40, 30), (240, 190, 40), (40, 220, 90)]):
            c = lamp if k == lit else (70, 70, 70)
            cv.circle((cx, top + bh * (k + 0.5) / 3), bw * 0.3, LIGHT, c)


def _static(cv, st, rng, X, s):
    x, yg = st.pt(X, s)
    b = rng.uniform(0.04, 0.08) * cv.h * s
    cv.poly([[(x - b / 2, yg), (x + b / 2, yg), (x + b / 2, yg - 1.4 * b), (x - b / 2, yg - 1.4 * b)]],
            STATIC, _jitter(rng, _pick(rng)[0]), M_GRAIN)


def _texture_fields(rng, h, w) -> np.ndarray:
    """One field per material, values roughly in [-1, 1] (multiplicative contrast)."""
    small = rng.normal(0, 1, (h // 8 + 1, w // 8 + 1)).astype(np.float32)
    blotch = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 1, (h, w)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(4, 8)
    brick = ((np.floor(yy / period) % 2 == 0) | ((xx + 3 * (np.floor(yy / period) % 2)) % (2 * period) < 1.5))
    stripes = np.sin(xx * 2 * np.pi / rng.uniform(3, 7))
    return np.stack([
        0.02 * fine,                                  # flat
        0.06 * fine + 0.06 * blotch,                  # grain: asphalt, grass, concrete, cloth
        0.08 * (brick.astype(np.float32) - 0.5) + 0.03 * fine,   # brick / tiles
        0.25 * np.tanh(1.5 * blotch) + 0.08 * fine,   # foliage
        0.15 * stripes + 0.03 * fine,                 # fences, truck panels
    ])


def render_scene(rng: np.random.Generator, height: int = 256, width: int = 512
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one street scene.

    Returns ``(image, label_ids, instance_ids)``: H×W×3 uint8 RGB, H×W uint8 Cityscapes label ids,
    H×W int32 instance ids (``id*1000+k`` for instance classes, else the label id).
    """
    h, w = height, width
    cv = _Canvas(h, w)
    st = _Street(h, w, yh=rng.uniform(0.36, 0.48) * h, vx=rng.uniform(0.38, 0.62) * w)
    _draw_sky_and_ground(cv, st, rng)
    _draw_skyline(cv, st, rng)
    Xr = rng.uniform(0.3, 0.5) * w       # road half width at the bottom row
    sides = {}
    for side in (-1, 1):
        Xs = Xr + rng.uniform(0.25, 0.5) * w
        sides[side] = Xs
        _draw_side(cv, st, rng, side, Xr, Xs)
    _draw_road(cv, st, rng, Xr)

    # objects, sorted far (small s) to near so nearer ones occlude
    objs = []
    for side in (-1, 1):
        Xs = sides[side]
        for s in rng.uniform(0.25, 0.9, rng.integers(1, 4)):
            objs.append((s, "pole", side * (Xr + 0.15 * (Xs - Xr))))
        for s in rng.uniform(0.25, 1.0, rng.integers(1, 4)):
            objs.append((s, "person", side * rng.uniform(Xr + 0.2 * (Xs - Xr), Xs * 0.95)))
        for s in rng.uniform(0.2, 0.9, rng.integers(0, 2)):
            objs.append((s, "static", side * rng.uniform(Xr + 0.5 * (Xs - Xr), Xs * 0.95)))
    for s in rng.uniform(0.12, 0.75, rng.integers(1, 5)):
        kind = rng.choice(["car", "car", "car", "truck", "bus"])
        objs.append((s, kind, rng.uniform(-0.7, 0.7) * Xr))
    for s in rng.uniform(0.35, 1.0, rng.integers(1, 3)):
        objs.append((s, rng.choice(["bicycle", "motorcycle"]), rng.choice([-1, 1]) * rng.uniform(0.6, 0.9) * Xr))
    objs.sort(key=lambda o: o[0])
    for s, kind, X in objs:
        if kind == "pole":
            _pole(cv, st, rng, X, s)
        elif kind == "person":
            _person(cv, st, rng, X, s)
        elif kind == "static":
            _static(cv, st, rng, X, s)
        elif kind in ("car", "truck", "bus"):
            _vehicle(cv, st, rng, X, s, {"car": CAR, "truck": TRUCK, "bus": BUS}[kind])
        else:
            _two_wheeler(cv, st, rng, X, s, MOTORCYCLE if kind == "motorcycle" else BICYCLE)

    if rng.random() < 0.4:  # ego vehicle hood (void)
        hh = rng.uniform(0.06, 0.12) * h
        cv2.ellipse(cv.label, (w // 2, int(h + hh * 0.5)), (int(w * 0.7), int(hh * 1.5)), 0, 180, 360, EGO, -1)
        cv2.ellipse(cv.inst, (w // 2, int(h + hh * 0.5)), (int(w * 0.7), int(hh * 1.5)), 0, 180, 360, EGO, -1)
        cv2.ellipse(cv.color, (w // 2, int(h + hh * 0.5)), (int(w * 0.7), int(hh * 1.5)), 0, 180, 360,
                    tuple(float(c) for c in _pick(rng)[0]), -1)

    # shading: materials' textures, global light, colour cast, shadows, noise
    tex = _texture_fields(rng, h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    img = cv.color * (1.0 + tex[cv.material, yy, xx])[..., None]
    shade = np.ones((h, w), np.float32)
    for _ in range(rng.integers(0, 3)):
        side = rng.choice([-1, 1])
        s0, s1 = sorted(rng.uniform(0.05, 1.3, 2))
        poly = np.array(st.quad_ground(side * sides[side] * 1.2, side * rng.uniform(-0.5, 1.0) * Xr, s0, s1))
        cv2.fillPoly(shade, [np.round(poly).astype(np.int32)], float(rng.uniform(0.5, 0.8)))
    light = rng.uniform(0.6, 1.3) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    img = img * shade[..., None] * light
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img = img + rng.normal(0, rng.uniform(2, 7), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), cv.label, cv.inst


# ----------------------------------------------------------------------------------------------
# Writing the dataset
# ----------------------------------------------------------------------------------------------
def _manifest(num_train, num_val, size, seed) -> dict:
    return {"generator_version": GENERATOR_VERSION, "seed": int(seed), "num_train": int(num_train),
            "num_val": int(num_val), "height": int(size[0]), "width": int(size[1])}


def _write_split(root, split, n, size, seed, split_index, progress):
    from tqdm import tqdm

    cities = CITIES[split]
    for i in tqdm(range(n), desc=f"synthetic_cityscapes {split}", unit="img", disable=not progress):
        rng = np.random.default_rng([int(seed), split_index, i])
        img, label_ids, inst = render_scene(rng, size[0], size[1])
        city = cities[i % len(cities)]
        stem = f"{city}_{i:06d}_000019"
        idir = os.path.join(root, "leftImg8bit", split, city)
        gdir = os.path.join(root, "gtFine", split, city)
        os.makedirs(idir, exist_ok=True)
        os.makedirs(gdir, exist_ok=True)
        cv2.imwrite(os.path.join(idir, stem + "_leftImg8bit.png"), img[:, :, ::-1])
        cv2.imwrite(os.path.join(gdir, stem + "_gtFine_labelIds.png"), label_ids)
        cv2.imwrite(os.path.join(gdir, stem + "_gtFine_labelTrainIds.png"), ID_TO_TRAINID[label_ids])
        cv2.imwrite(os.path.join(gdir, stem + "_gtFine_instanceIds.png"), inst.astype(np.uint16))


def generate_synthetic_cityscapes(root: str, num_train: int = 200, num_val: int = 50,
                                  size: Sequence[int] = (256, 512), seed: int = 0,
                                  progress: bool = True) -> str:
    """Write the dataset into ``root`` atomically (a temporary sibling folder renamed into place,
    replacing whatever ``root`` held). Deterministic: the same arguments give identical files."""
    root = os.path.abspath(root)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_split(tmp, "train", num_train, size, seed, 0, progress)
        _write_split(tmp, "val", num_val, size, seed, 1, progress)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(_manifest(num_train, num_val, size, seed), f, indent=1, sort_keys=True)
        replace_dir(tmp, root)  # also replaces an incomplete or outdated one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _read_manifest(root) -> Optional[dict]:
    try:
        with open(os.path.join(root, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_synthetic_cityscapes(root: Optional[str] = None, num_train: Optional[int] = None,
                                num_val: Optional[int] = None, size: Optional[Sequence[int]] = None,
                                seed: Optional[int] = None, progress: bool = True) -> str:
    """Return ``root`` (default ``$DL_DATASETS/synthetic_cityscapes``), generating it first when it
    is missing, incomplete or was made with another generator version / seed / sizes. Unset
    arguments come from ``SYNTHETIC_OPTIONS``."""
    opts = dict(SYNTHETIC_OPTIONS)
    for k, v in dict(num_train=num_train, num_val=num_val, size=size, seed=seed).items():
        if v is not None:
            opts[k] = v
    root = os.path.abspath(root or dataset_path("synthetic_cityscapes"))
    want = _manifest(opts["num_train"], opts["num_val"], opts["size"], opts["seed"])
    if _read_manifest(root) == want:
        return root
    with exclusive_lock(root + ".lock"):
        if _read_manifest(root) != want:  # another process may have finished meanwhile
            logger.info("Generating the synthetic street scenes into %s (%s)", root, want)
            generate_synthetic_cityscapes(root, opts["num_train"], opts["num_val"], opts["size"],
                                          opts["seed"], progress=progress)
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description="Write the embedded street scenes in Cityscapes layout.")
    p.add_argument("--root", default=None, help="output folder (default $DL_DATASETS/synthetic_cityscapes)")
    p.add_argument("--num-train", type=int, default=SYNTHETIC_OPTIONS["num_train"])
    p.add_argument("--num-val", type=int, default=SYNTHETIC_OPTIONS["num_val"])
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=list(SYNTHETIC_OPTIONS["size"]))
    p.add_argument("--seed", type=int, default=SYNTHETIC_OPTIONS["seed"])
    a = p.parse_args(argv)
    root = generate_synthetic_cityscapes(a.root or dataset_path("synthetic_cityscapes"),
                                         a.num_train, a.num_val, tuple(a.size), a.seed)
    print(f"wrote {a.num_train} train + {a.num_val} val images ({a.size[0]}x{a.size[1]}) to {root}")


if __name__ == "__main__":
    main()
