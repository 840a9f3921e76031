"""Drawing synthetic scenes: textured backgrounds and filled shapes, anti-aliased by supersampling."""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# RGB of each object colour; kept far apart so small, JPEG-compressed shapes stay nameable.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (35, 160, 55),
    "cyan": (35, 200, 215),
    "blue": (35, 70, 215),
    "purple": (135, 50, 190),
    "pink": (245, 125, 195),
}
# Background tones: (base, pattern) grey levels; no tone shares a name with an object colour.
TONE_LEVELS: dict[str, tuple[int, int]] = {
    "white": (236, 205),
    "gray": (128, 98),
    "black": (26, 66),
}
TEXTURES = ("plain", "striped", "dotted", "checkered", "grainy")


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # int32: the texture masks are integer arithmetic on these grids, a third faster than on int64.
    y, x = np.mgrid[0:size, 0:size].astype(np.int32)
    return y, x


def background(tone: str, texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(size, size, 3)`` uint8 background of a grey ``tone`` with a ``texture``."""
    base, pattern = TONE_LEVELS[tone]
    y, x = _grid(size)
    period = max(4, int(size * rng.uniform(0.08, 0.16)))
    if texture == "plain":
        mask = np.zeros((size, size), dtype=bool)
    elif texture == "striped":
        direction = rng.integers(3)
        coord = (x, y, x + y)[direction]
        mask = (coord // (period // 2 or 1)) % 2 == 1
    elif texture == "dotted":
        cy, cx = (y % period) - period / 2, (x % period) - period / 2
        mask = cy**2 + cx**2 <= (period * 0.22) ** 2
    elif texture == "checkered":
        mask = ((x // period) + (y // period)) % 2 == 1
    elif texture == "grainy":
        mask = np.zeros((size, size), dtype=bool)
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    grey = np.where(mask, pattern, base).astype(np.float32)
    noise = 22.0 if texture == "grainy" else 3.0
    grey += rng.standard_normal(grey.shape, dtype=np.float32) * noise
    # A faint colour cast keeps backgrounds from being perfectly neutral, as photos never are.
    cast = rng.uniform(-6, 6, size=3).astype(np.float32)
    # One contiguous plane per channel: numpy broadcasts ``grey[..., None] + cast`` over an inner
    # axis of 3 about 10x slower, and the corpus draws tens of thousands of backgrounds.
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    for channel in range(3):
        rgb[..., channel] = np.clip(grey + cast[channel], 0, 255)
    return rgb


def _rotate(points: Sequence[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + (px - cx) * cos - (py - cy) * sin, cy + (px - cx) * sin + (py - cy) * cos) for px, py in points]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int], angle: float = 0.0) -> None:
    """Draw a filled ``shape`` whose bounding box is about ``2r`` wide, centred on (cx, cy)."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        return
    if shape == "square":
        h = r * 0.86
        points = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "triangle":
        # Slightly oversized: a triangle covers less of its box than the other shapes.
        t = r * 1.12
        points = [(cx + t * math.cos(a), cy + t * math.sin(a) + t * 0.2) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    elif shape == "cross":
        w = r * 0.34
        points = [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx + w, cy + w),
            (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]
    elif shape == "heart":
        # Two lobes and a point; kept upright (a rotated heart reads as another shape at 16 px).
        lobe = r * 0.52
        draw.ellipse((cx - 2 * lobe + r * 0.04, cy - r * 0.85, cx + r * 0.04, cy - r * 0.85 + 2 * lobe), fill=fill)
        draw.ellipse((cx - r * 0.04, cy - r * 0.85, cx + 2 * lobe - r * 0.04, cy - r * 0.85 + 2 * lobe), fill=fill)
        draw.polygon([(cx - r * 0.98, cy - r * 0.22), (cx + r * 0.98, cy - r * 0.22), (cx, cy + r * 0.95)], fill=fill)
        return
    else:
        raise ValueError(f"unknown shape {shape!r}")
    draw.polygon(_rotate(points, cx, cy, angle), fill=fill)


SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")


def render_scene(
    objects: Sequence[dict],
    tone: str,
    texture: str,
    size: int,
    rng: np.random.Generator,
    supersample: int = 2,
) -> Image.Image:
    """Render objects (dicts with ``shape``, ``rgb``, ``x``, ``y``, ``radius`` in [0,1] units, ``angle``).

    Drawing happens at ``supersample`` times the size and is reduced with a box filter, which
    gives anti-aliased edges at a fraction of the cost of PIL's per-primitive anti-aliasing.
    """
    big = size * supersample
    image = Image.fromarray(background(tone, texture, big, rng))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_shape(draw, obj["shape"], obj["x"] * big, obj["y"] * big, obj["radius"] * big, tuple(obj["rgb"]), obj.get("angle", 0.0))
    if supersample > 1:
        image = image.resize((size, size), Image.BOX)
    return image
