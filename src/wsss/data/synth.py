"""The embedded dataset: a procedural benchmark that poses the WSSS problem on a CPU in seconds.

Each foreground class is a shape family with its own colour and texture statistics; images hold
1-3 objects on textured backgrounds. Two properties make it a *weakly supervised* problem rather
than a toy:

* **Context bias.** Every class has a preferred background style, used with probability
  ``context_prob`` when the class is in the image, so a classifier trained on tags learns to fire
  on background too (the noise that WSSS methods fight).
* **Partial discriminativeness.** The class texture is strong on one side of each object and faint
  on the other, so CAMs tend to cover the most textured part, not the whole object.

Masks follow VOC: 0 background, 1..K objects, 255 on a thin void band along every object
boundary. Each image is drawn by its own numpy ``Generator`` seeded from (seed, split, index), so
any subset can be regenerated, resumed or parallelised with identical results.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss.data.palette import IGNORE_INDEX, write_label_png
from wsss.errors import ConfigError, DataError
from wsss.files import atomic_path, write_json, write_text

# Bump when a change alters the generated pixels: a dataset made by another version is then
# reported as "different parameters" instead of being silently reused.
GENERATOR_VERSION = 1

SPLITS: tuple[str, ...] = ("train", "val")
PARAMS_FILE = "synth.json"
META_FILE = "synth_meta.json"
JPEG_QUALITY = 95

_SUPERSAMPLE = 2  # sub-pixels per axis when computing object coverage (anti-aliased edges)
_MIN_VISIBLE_FRACTION = 0.5  # an object must keep this much of its own area after occlusion
_MIN_AREA_FRACTION = 0.015  # and at least this fraction of the image
_PLACEMENT_TRIES = 12
_NUM_OBJECTS_PROBS = (0.45, 0.35, 0.20)  # P(1), P(2), P(3) objects per image
_PIXEL_NOISE_STD = 3.0


# ----------------------------------------------------------------------------- shape families
# Each family is an "inside" test on normalised local coordinates (u, v): the object spans roughly
# the unit disc before the per-object radius, aspect and rotation are applied.

Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _regular_polygon(n: int, scale: float = 1.0) -> Shape:
    """Regular n-gon with circumradius ``scale``: inside every edge's half-plane."""
    apothem = math.cos(math.pi / n) * scale

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = np.ones(u.shape, dtype=bool)
        for k in range(n):
            phi = 2.0 * math.pi * k / n - math.pi / 2.0
            out &= u * math.cos(phi) + v * math.sin(phi) <= apothem
        return out

    return inside


def _star(points: int, inner: float) -> Shape:
    """Star polygon: straight edges between outer vertices (radius 1) and inner ones."""
    half = math.pi / points
    dx, dy = inner * math.cos(half) - 1.0, inner * math.sin(half)  # edge vector, outer → inner vertex

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        theta = np.arctan2(v, u) + math.pi / 2.0
        phi = np.abs(np.mod(theta, 2.0 * half) - half)  # angle from the nearest inner vertex…
        phi = half - phi  # …turned into angle from the nearest outer vertex
        r_edge = dy / (np.cos(phi) * dy - np.sin(phi) * dx)
        return np.hypot(u, v) <= r_edge

    return inside


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.52**2)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u / 1.15) ** 2 + (v / 0.55) ** 2 <= 1.0


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) / 0.7 + np.abs(v) / 1.05 <= 1.0


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.78**2)


def _semicircle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + (v + 0.45) ** 2 <= 1.1**2) & (v >= -0.45)


def _frame(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    m = np.maximum(np.abs(u), np.abs(v))
    return (m <= 0.88) & (m >= 0.5)


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    shaft = (np.abs(v) <= 0.22) & (u >= -1.0) & (u <= 0.1)
    head = (u >= 0.1) & (u <= 1.0) & (np.abs(v) <= 0.75 * (1.0 - u) / 0.9)
    return shaft | head


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u * 1.2, v * 1.2 + 0.15
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


def _trapezoid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    half_width = 0.5 + 0.45 * (v + 0.7) / 1.4
    return (np.abs(v) <= 0.7) & (np.abs(u) <= half_width)


def _bar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 1.05) & (np.abs(v) <= 0.3)


def _hourglass(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(v) <= 0.95) & (np.abs(u) <= 0.85 * np.abs(v) + 0.1)


def _tee(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    top = (np.abs(v - 0.7) <= 0.26) & (np.abs(u) <= 0.95)
    stem = (np.abs(u) <= 0.26) & (v >= -1.0) & (v <= 0.7)
    return top | stem


SHAPE_FUNCTIONS: dict[str, Shape] = {
    "disc": _disc,
    "square": _regular_polygon(4, 1.2),
    "triangle": _regular_polygon(3, 1.25),
    "ring": _ring,
    "cross": _cross,
    "star": _star(5, 0.45),
    "ellipse": _ellipse,
    "hexagon": _regular_polygon(6, 1.0),
    "diamond": _diamond,
    "crescent": _crescent,
    "pentagon": _regular_polygon(5, 1.05),
    "semicircle": _semicircle,
    "frame": _frame,
    "arrow": _arrow,
    "heart": _heart,
    "trapezoid": _trapezoid,
    "bar": _bar,
    "hourglass": _hourglass,
    "octagram": _star(8, 0.6),
    "tee": _tee,
}
SHAPE_FAMILIES: tuple[str, ...] = tuple(SHAPE_FUNCTIONS)
MAX_CLASSES = len(SHAPE_FAMILIES)

TEXTURES: tuple[str, ...] = ("stripes", "checker", "dots", "noise", "waves", "rings")
BACKGROUND_PATTERNS: tuple[str, ...] = (
    "linear_gradient",
    "radial_gradient",
    "clouds",
    "grain",
    "stripes",
    "checker",
    "grid",
    "blotches",
)
# Colour contrast between the two tints of each background pattern: periodic patterns stay faint.
_BACKGROUND_CONTRAST = {
    "linear_gradient": 0.30,
    "radial_gradient": 0.28,
    "clouds": 0.26,
    "grain": 0.14,
    "stripes": 0.13,
    "checker": 0.12,
    "grid": 0.16,
    "blotches": 0.20,
}


def synth_class_names(num_classes: int) -> list[str]:
    """Foreground class names (without background) for a dataset with ``num_classes`` classes."""
    _check_num_classes(num_classes)
    return list(SHAPE_FAMILIES[:num_classes])


def num_background_styles(num_classes: int) -> int:
    """Enough styles that every class gets its own preferred one."""
    return max(len(BACKGROUND_PATTERNS), num_classes)


def preferred_style(class_id: int, num_classes: int) -> int:
    """The background style class ``class_id`` (1..K) appears on with probability ``context_prob``."""
    return (class_id - 1) % num_background_styles(num_classes)


# ----------------------------------------------------------------------------- appearance tables
# Fixed functions of the class / style index (not of the seed), so a class looks the same in every
# dataset: the seed changes layouts, not what a "disc" is.


def _frac(x: float) -> float:
    return x - math.floor(x)


@dataclass(frozen=True)
class ClassAppearance:
    """Colour and texture statistics of one foreground class."""

    hue: float
    saturation: float
    value: float
    second_hue_shift: float  # hue offset of the texture's dark phase
    texture: str
    period: float  # texture period as a fraction of the image size
    strength: float  # texture contrast on the object's strong side


def class_appearance(class_id: int) -> ClassAppearance:
    """Appearance of class ``class_id`` (1-based)."""
    i = class_id - 1
    return ClassAppearance(
        hue=_frac(0.02 + i * 0.618034),
        saturation=0.55 + 0.3 * _frac(i * 0.4142 + 0.3),
        value=0.7 + 0.22 * _frac(i * 0.7321 + 0.5),
        second_hue_shift=(-0.07, 0.0, 0.07)[i % 3],
        texture=TEXTURES[i % len(TEXTURES)],
        period=0.07 + 0.07 * _frac(i * 0.3819 + 0.15),
        strength=0.8 + 0.2 * _frac(i * 0.2361),
    )


@dataclass(frozen=True)
class BackgroundStyle:
    """Pattern and tint of one background style."""

    pattern: str
    hue: float
    saturation: float
    value: float


def background_style(style_id: int) -> BackgroundStyle:
    """Background style ``style_id`` (0-based): low-saturation tints, one pattern each."""
    return BackgroundStyle(
        pattern=BACKGROUND_PATTERNS[style_id % len(BACKGROUND_PATTERNS)],
        hue=_frac(0.11 + style_id * 0.381966),
        saturation=0.12 + 0.22 * _frac(style_id * 0.5306 + 0.2),
        value=0.38 + 0.3 * _frac(style_id * 0.7071 + 0.4),
    )


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV (hue wraps, s and v clipped) → RGB float array in 0..255."""
    r, g, b = colorsys.hsv_to_rgb(_frac(h), min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array([r, g, b], dtype=np.float64) * 255.0


# ----------------------------------------------------------------------------- texture fields


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Value noise in [0, 1]: a random grid of about ``cells`` cells, smoothly interpolated."""
    h, w = shape
    n = max(1, round(cells))
    grid = rng.random((n + 2, n + 2))
    scale = n / max(h, w)
    ys = (np.arange(h) + 0.5) * scale + rng.random()
    xs = (np.arange(w) + 0.5) * scale + rng.random()
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    ty, tx = ys - y0, xs - x0
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)  # smoothstep: no visible grid lines
    y0, x0 = np.minimum(y0, n), np.minimum(x0, n)
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    ty, tx = ty[:, None], tx[None, :]
    return (g00 * (1 - tx) + g01 * tx) * (1 - ty) + (g10 * (1 - tx) + g11 * tx) * ty


def _texture_field(
    name: str, u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator
) -> np.ndarray:
    """Class texture in [0, 1] on local pixel coordinates (it rotates with the object)."""
    two_pi = 2.0 * math.pi
    phase = rng.random() * two_pi
    if name == "stripes":
        return np.clip(0.5 + 1.4 * np.sin(two_pi * u / period + phase), 0.0, 1.0)
    if name == "checker":
        s = np.sin(two_pi * u / period + phase) * np.sin(two_pi * v / period + phase)
        return 0.5 + 0.5 * np.tanh(4.0 * s)
    if name == "dots":
        cu = np.mod(u / period + phase, 1.0) - 0.5
        cv = np.mod(v / period + phase, 1.0) - 0.5
        return np.clip((0.34 - np.hypot(cu, cv)) * 8.0 + 0.5, 0.0, 1.0)
    if name == "noise":
        return np.clip((_smooth_noise(rng, u.shape, max(u.shape) / period) - 0.5) * 2.2 + 0.5, 0.0, 1.0)
    if name == "waves":
        warped = u + 0.35 * period * np.sin(two_pi * v / (2.2 * period) + phase)
        return np.clip(0.5 + 1.4 * np.sin(two_pi * warped / period), 0.0, 1.0)
    if name == "rings":
        return np.clip(0.5 + 1.4 * np.sin(two_pi * np.hypot(u, v) / period + phase), 0.0, 1.0)
    raise ValueError(f"unknown texture {name!r}; known: {', '.join(TEXTURES)}")


def _background_field(pattern: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Background pattern in [0, 1], HxW."""
    coords = (np.arange(size) + 0.5) / size - 0.5
    y, x = coords[:, None], coords[None, :]
    angle = rng.random() * 2.0 * math.pi
    proj = x * math.cos(angle) + y * math.sin(angle)
    if pattern == "linear_gradient":
        return np.clip(0.5 + proj * rng.uniform(0.8, 1.2), 0.0, 1.0)
    if pattern == "radial_gradient":
        cy, cx = rng.uniform(-0.4, 0.4, size=2)
        return np.clip(np.hypot(y - cy, x - cx) / 0.75, 0.0, 1.0)
    if pattern == "clouds":
        n = _smooth_noise(rng, (size, size), rng.uniform(2.5, 4.5))
        return (n - n.min()) / max(float(n.max() - n.min()), 1e-6)
    if pattern == "grain":
        fine = rng.random((size, size))
        return 0.5 * fine + 0.5 * _smooth_noise(rng, (size, size), 3.0)
    if pattern == "stripes":
        period = rng.uniform(0.1, 0.2)
        return 0.5 + 0.5 * np.sin(2.0 * math.pi * proj / period + rng.random() * 6.3)
    if pattern == "checker":
        period = rng.uniform(0.15, 0.28)
        ortho = -x * math.sin(angle) + y * math.cos(angle)
        s = np.sin(2.0 * math.pi * proj / period) * np.sin(2.0 * math.pi * ortho / period)
        return 0.5 + 0.5 * np.tanh(3.0 * s)
    if pattern == "grid":
        period = rng.uniform(0.12, 0.22)
        width = 0.012 + 0.01 * rng.random()
        dy = np.abs(np.mod(y / period, 1.0) - 0.5) * period
        dx = np.abs(np.mod(x / period, 1.0) - 0.5) * period
        return np.exp(-((np.minimum(dy, dx) / width) ** 2))
    if pattern == "blotches":
        n = _smooth_noise(rng, (size, size), rng.uniform(5.0, 8.0))
        return 1.0 / (1.0 + np.exp(-(n - 0.5) * 14.0))
    raise ValueError(f"unknown background pattern {pattern!r}; known: {', '.join(BACKGROUND_PATTERNS)}")


def _render_background(style_id: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 float background of ``style_id`` with per-image tint jitter."""
    style = background_style(style_id)
    hue = style.hue + rng.uniform(-0.03, 0.03)
    sat = style.saturation + rng.uniform(-0.05, 0.05)
    val = style.value + rng.uniform(-0.06, 0.06)
    contrast = _BACKGROUND_CONTRAST[style.pattern]
    dark = _rgb(hue, sat, val)
    light = _rgb(hue + 0.04, sat * 0.8, val + contrast)
    field = _background_field(style.pattern, size, rng)
    image = dark + field[..., None] * (light - dark)
    shade = 1.0 + 0.08 * (_smooth_noise(rng, (size, size), 2.0) - 0.5)  # uneven lighting
    return image * shade[..., None]


# ----------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class SynthParams:
    """Everything that determines the pixels of a synth dataset (besides split sizes)."""

    num_classes: int = 6
    size: int = 96
    seed: int = 0
    context_prob: float = 0.7


@dataclass
class _Placement:
    """Where and how one object is drawn (pixel units, angle in radians)."""

    class_id: int
    cy: float
    cx: float
    radius: float
    aspect: float
    angle: float


@dataclass
class SynthSample:
    """One generated image: RGB pixels, VOC-style mask and what was drawn."""

    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW uint8: 0 background, 1..K classes, 255 void band
    meta: dict[str, Any]


def _bbox(p: _Placement, size: int) -> tuple[int, int, int, int]:
    reach = p.radius * max(p.aspect, 1.0 / p.aspect) * 1.3 + 2.0
    y0, y1 = max(0, int(p.cy - reach)), min(size, math.ceil(p.cy + reach))
    x0, x1 = max(0, int(p.cx - reach)), min(size, math.ceil(p.cx + reach))
    return y0, y1, x0, x1


def _local_coords(p: _Placement, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotated pixel offsets from the object centre (columns ``xs``, rows ``ys``)."""
    dy, dx = ys[:, None] - p.cy, xs[None, :] - p.cx
    c, s = math.cos(p.angle), math.sin(p.angle)
    return c * dx + s * dy, -s * dx + c * dy


def _coverage(p: _Placement, box: tuple[int, int, int, int]) -> np.ndarray:
    """Fraction of each pixel inside the shape (supersampled), over ``box``."""
    y0, y1, x0, x1 = box
    k = _SUPERSAMPLE
    ys = y0 + (np.arange((y1 - y0) * k) + 0.5) / k
    xs = x0 + (np.arange((x1 - x0) * k) + 0.5) / k
    u, v = _local_coords(p, ys, xs)
    scale_u, scale_v = p.radius * math.sqrt(p.aspect), p.radius / math.sqrt(p.aspect)
    inside = SHAPE_FUNCTIONS[SHAPE_FAMILIES[p.class_id - 1]](u / scale_u, v / scale_v)
    return inside.reshape(y1 - y0, k, x1 - x0, k).mean(axis=(1, 3))


def _object_colours(
    p: _Placement, box: tuple[int, int, int, int], size: int, rng: np.random.Generator
) -> np.ndarray:
    """Textured, shaded RGB of the object over ``box`` (float, 0..255)."""
    look = class_appearance(p.class_id)
    y0, y1, x0, x1 = box
    u, v = _local_coords(p, np.arange(y0, y1) + 0.5, np.arange(x0, x1) + 0.5)
    hue = look.hue + rng.uniform(-0.035, 0.035)
    sat = look.saturation + rng.uniform(-0.1, 0.1)
    val = look.value + rng.uniform(-0.1, 0.08)
    bright = _rgb(hue, sat, val)
    dark = _rgb(hue + look.second_hue_shift, sat * 0.95, val * 0.5)
    period = look.period * size * rng.uniform(0.85, 1.15)
    texture = _texture_field(look.texture, u, v, period, rng)
    # Texture contrast fades across the object: one side is far more distinctive than the other.
    direction = rng.random() * 2.0 * math.pi
    side = (u * math.cos(direction) + v * math.sin(direction)) / p.radius
    strength = look.strength * np.clip(0.62 + 0.55 * side, 0.2, 1.0)
    mid = 0.5 * (bright + dark)
    colours = mid + ((texture - 0.5) * strength)[..., None] * (bright - dark)
    light = rng.random() * 2.0 * math.pi
    shade = 1.0 + 0.12 * (u * math.cos(light) + v * math.sin(light)) / p.radius
    return colours * shade[..., None]


def _sample_placement(class_id: int, num_objects: int, size: int, rng: np.random.Generator) -> _Placement:
    radius = size * rng.uniform(0.18, 0.42 - 0.06 * (num_objects - 1))
    margin = 0.65 * radius
    return _Placement(
        class_id=class_id,
        cy=float(rng.uniform(margin, size - margin)),
        cx=float(rng.uniform(margin, size - margin)),
        radius=float(radius),
        aspect=float(math.exp(rng.uniform(-0.25, 0.25))),
        angle=float(rng.uniform(0.0, 2.0 * math.pi)),
    )


def _void_band(instances: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2r+1)² neighbourhood holds another instance id: a band along every boundary."""
    h, w = instances.shape
    padded = np.pad(instances, radius, mode="edge")
    lo = instances.copy()
    hi = instances.copy()
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            window = padded[dy : dy + h, dx : dx + w]
            np.minimum(lo, window, out=lo)
            np.maximum(hi, window, out=hi)
    return lo != hi


def void_radius(size: int) -> int:
    """Void band half-width in pixels: 1 at 96x96 (a ~2 px band), growing with image size like VOC."""
    return max(1, round(size / 200))


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def render_sample(params: SynthParams, split: str, index: int) -> SynthSample:
    """Draw image ``index`` of ``split``; depends only on (params, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = _image_rng(params.seed, split, index)
    size, k = params.size, params.num_classes
    num_objects = int(rng.choice(len(_NUM_OBJECTS_PROBS), p=_NUM_OBJECTS_PROBS)) + 1
    # The first object cycles through the classes, so every class appears in any split of >= K images.
    wanted = [1 + index % k] + [int(c) for c in rng.integers(1, k + 1, size=num_objects - 1)]

    context_class = int(wanted[rng.integers(len(wanted))])
    context_used = bool(rng.random() < params.context_prob)
    style_id = (
        preferred_style(context_class, k) if context_used else int(rng.integers(num_background_styles(k)))
    )
    canvas = _render_background(style_id, size, rng)

    min_area = _MIN_AREA_FRACTION * size * size
    instances = np.zeros((size, size), dtype=np.int32)
    areas: list[int] = []
    objects: list[dict[str, Any]] = []
    for class_id in wanted:
        # The first object has nothing to hide, so it only needs enough area; it must never be dropped.
        tries = _PLACEMENT_TRIES if areas else 10 * _PLACEMENT_TRIES
        for _ in range(tries):
            p = _sample_placement(class_id, num_objects, size, rng)
            box = _bbox(p, size)
            cover = _coverage(p, box)
            own = cover >= 0.5
            area = int(own.sum())
            if area < min_area:
                continue
            trial = instances.copy()
            trial[box[0] : box[1], box[2] : box[3]][own] = len(areas) + 1
            if all(
                np.count_nonzero(trial == i + 1) >= max(_MIN_VISIBLE_FRACTION * a, min_area)
                for i, a in enumerate(areas)
            ):
                break
        else:
            if not areas:
                raise RuntimeError(
                    f"synth: could not place any object in {split} image {index} (size {size})"
                )
            continue  # could not place it without hiding an earlier object: drop it
        instances = trial
        areas.append(area)
        y0, y1, x0, x1 = box
        alpha = cover[..., None]
        region = canvas[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1] = region * (1.0 - alpha) + _object_colours(p, box, size, rng) * alpha
        objects.append(
            {
                "class": class_id,
                "shape": SHAPE_FAMILIES[class_id - 1],
                "center": [round(p.cy, 2), round(p.cx, 2)],
                "radius": round(p.radius, 2),
                "aspect": round(p.aspect, 3),
                "angle": round(p.angle, 3),
                "area": area,
            }
        )

    class_of_instance = np.array([0] + [o["class"] for o in objects], dtype=np.uint8)
    mask = class_of_instance[instances]
    mask[_void_band(instances, void_radius(size))] = IGNORE_INDEX
    for i, obj in enumerate(objects):
        obj["visible"] = int(np.count_nonzero(instances == i + 1))

    canvas += rng.normal(0.0, _PIXEL_NOISE_STD, size=canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    meta = {
        "background": style_id,
        "background_pattern": background_style(style_id).pattern,
        "context_class": context_class,
        "context_used": context_used,
        "classes": sorted({o["class"] for o in objects}),
        "objects": objects,
    }
    return SynthSample(image=image, mask=mask, meta=meta)


# ----------------------------------------------------------------------------- dataset on disk

_OUR_FILE = re.compile(r"^synth_(train|val)_\d{6}\.(jpg|png)$")


def sample_name(split: str, index: int) -> str:
    """File stem of image ``index`` of ``split``, e.g. ``synth_train_000123``."""
    return f"synth_{split}_{index:06d}"


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise ConfigError(
            f"synth num_classes must be an integer in 1..{MAX_CLASSES} (one shape family per class), "
            f"got {num_classes!r}"
        )


def _validate(params: SynthParams, num_train: int, num_val: int) -> None:
    _check_num_classes(params.num_classes)
    for key, value, low in (("num_train", num_train, 1), ("num_val", num_val, 0)):
        if not isinstance(value, int) or not low <= value <= 999_999:
            raise ConfigError(f"synth {key} must be an integer in {low}..999999, got {value!r}")
    if not isinstance(params.size, int) or not 32 <= params.size <= 4096:
        raise ConfigError(f"synth size must be an integer in 32..4096 pixels, got {params.size!r}")
    if not isinstance(params.seed, int) or params.seed < 0:
        raise ConfigError(f"synth seed must be a non-negative integer, got {params.seed!r}")
    if not 0.0 <= float(params.context_prob) <= 1.0:
        raise ConfigError(f"synth context_prob must lie in [0, 1], got {params.context_prob!r}")


def _read_params_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path} is unreadable ({exc}); delete the folder {path.parent} or pass overwrite=True"
        ) from exc


def _dataset_complete(root: Path, record: dict[str, Any]) -> bool:
    if record.get("status") != "complete":
        return False
    for split, count in record.get("counts", {}).items():
        for i in range(count):
            name = sample_name(split, i)
            if not (root / "JPEGImages" / f"{name}.jpg").is_file():
                return False
            if not (root / "SegmentationClass" / f"{name}.png").is_file():
                return False
        if not (root / "ImageSets" / "Segmentation" / f"{split}.txt").is_file():
            return False
    return (root / "classes.txt").is_file()


def _remove_old_samples(root: Path) -> None:
    """Delete only files this generator names, so stale images of a larger old dataset go away."""
    for sub in ("JPEGImages", "SegmentationClass"):
        folder = root / sub
        if folder.is_dir():
            for entry in folder.iterdir():
                if _OUR_FILE.match(entry.name):
                    entry.unlink()


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image, mode="RGB").save(tmp, format="JPEG", quality=JPEG_QUALITY, subsampling=0)


def _prepare_root(root: Path, wanted: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Return the existing record when ``root`` already holds this dataset; raise or clear otherwise."""
    if root.exists() and not root.is_dir():
        raise DataError(f"synth root {root} exists and is not a folder; choose a folder path")
    params_path = root / PARAMS_FILE
    if params_path.is_file():
        try:
            record = _read_params_file(params_path)
        except DataError:
            if not overwrite:
                raise
            record = {}  # our own damaged record: overwriting replaces it anyway
        same = record.get("params") == wanted
        if same and _dataset_complete(root, record):
            return record
        if not same and not overwrite:
            old = record.get("params", {})
            diff = ", ".join(
                f"{key}={old.get(key)!r} (asked {wanted[key]!r})"
                for key in wanted
                if old.get(key) != wanted[key]
            )
            raise DataError(
                f"{root} already holds a synth dataset made with different parameters: {diff}; "
                "pass overwrite=True (CLI: --overwrite) to replace it, or choose another root"
            )
        _remove_old_samples(root)
    elif root.exists() and any(root.iterdir()):
        raise DataError(
            f"{root} is not empty and holds no {PARAMS_FILE}, so it was not made by generate_synth; "
            "the generator will not write into another dataset: choose an empty or new folder"
        )
    return None


def generate_synth(
    root: str | os.PathLike,
    *,
    num_classes: int = 6,
    num_train: int = 800,
    num_val: int = 200,
    size: int = 96,
    seed: int = 0,
    context_prob: float = 0.7,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the synth benchmark into ``root`` in VOC layout and return its summary.

    A rerun with identical parameters over a complete dataset returns at once (``skipped``
    True); different parameters raise ``DataError`` unless ``overwrite``. ``synth.json`` is
    written first with status ``incomplete`` and rewritten as ``complete`` at the end, so an
    interrupted run is simply redone by the next call.
    """
    params = SynthParams(num_classes=num_classes, size=size, seed=seed, context_prob=float(context_prob))
    _validate(params, num_train, num_val)
    root = Path(root)
    counts = {"train": num_train, "val": num_val}
    wanted = {**asdict(params), "num_train": num_train, "num_val": num_val, "version": GENERATOR_VERSION}

    existing = _prepare_root(root, wanted, overwrite)
    if existing is not None:
        return {**existing, "root": str(root), "skipped": True}

    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / PARAMS_FILE, {"status": "incomplete", "params": wanted})
    names = synth_class_names(num_classes)
    write_text(root / "classes.txt", "\n".join(["background", *names]) + "\n")

    k = num_classes
    styles = num_background_styles(k)
    images_meta: dict[str, dict[str, Any]] = {}
    class_images = {split: dict.fromkeys(names, 0) for split in SPLITS}
    total = num_train + num_val
    with tqdm(total=total, desc="synth", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            split_names = []
            for index in range(counts[split]):
                sample = render_sample(params, split, index)
                name = sample_name(split, index)
                _write_jpeg(root / "JPEGImages" / f"{name}.jpg", sample.image)
                write_label_png(root / "SegmentationClass" / f"{name}.png", sample.mask)
                for c in sample.meta["classes"]:
                    class_images[split][names[c - 1]] += 1
                images_meta[name] = sample.meta
                split_names.append(name)
                bar.update(1)
            list_text = "".join(f"{n}\n" for n in split_names)
            write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", list_text)

    write_json(
        root / META_FILE,
        {
            "classes": ["background", *names],
            "background_styles": [{"id": s, **asdict(background_style(s))} for s in range(styles)],
            "preferred_style": {names[c - 1]: preferred_style(c, k) for c in range(1, k + 1)},
            "class_appearance": {names[c - 1]: asdict(class_appearance(c)) for c in range(1, k + 1)},
            "images": images_meta,
        },
    )
    record = {
        "status": "complete",
        "params": wanted,
        "counts": counts,
        "class_images": class_images,
        "void_radius": void_radius(size),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(root / PARAMS_FILE, record)
    return {**record, "root": str(root), "skipped": False}
