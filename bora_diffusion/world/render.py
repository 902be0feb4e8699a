"""Drawing scenes: PIL shapes on cached numpy-made background patterns, at twice the size and averaged down.

Speed matters (the base model trains on hundreds of thousands of images): a scene is a cached pattern mask
composited in PIL, one or two PIL polygons and PIL's 2x2 box reduction, all in C. Supersampling by 2 gives
anti-aliased edges, so the same scene at 32 px is a faithful smaller copy, not a jagged one.

Each object is filled with its color and outlined in a darker shade of the same color, which keeps an orange
star readable on a yellow background without adding a color the caption does not name.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import COLORS

if TYPE_CHECKING:
    from .scenes import Background, Scene, Thing

__all__ = [
    "SUPERSAMPLE",
    "background_array",
    "background_image",
    "object_masks",
    "render_scene",
    "shape_polygon",
]

SUPERSAMPLE = 2
PATTERN_SHADE = 0.28  # how much darker a background's stripes, checks and dots are
OUTLINE_SHADE = 0.45  # how much darker an object's outline is


# ----------------------------------------------------------------------------------------------- backgrounds
@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centers of an n x n canvas as fractions of the side: (u [1, n] along x, v [n, 1] along y)."""
    centers = (np.arange(n, dtype=np.float32) + 0.5) / n
    return centers[None, :], centers[:, None]


@lru_cache(maxsize=512)
def _pattern(texture: str, period: float, angle: int, n: int) -> Image.Image:
    """Where a background's pattern is drawn, as an 'L' mask (255 on the pattern; all 0 for "plain").
    Cached: the sampler draws periods and angles from short lists, so there are few distinct patterns."""
    u, v = _grid(n)
    theta = math.radians(angle)
    a = u * math.cos(theta) + v * math.sin(theta)  # [n, n]: coordinate across the stripes
    b = -u * math.sin(theta) + v * math.cos(theta)  # [n, n]: coordinate along them
    if texture == "striped":
        on = np.floor(a / (period / 2)) % 2 == 1
    elif texture == "checkered":
        on = (np.floor(a / (period / 2)) + np.floor(b / (period / 2))) % 2 == 1
    elif texture == "dotted":
        da = (a % period) - period / 2  # [n, n]: offset from the nearest dot center
        db = (b % period) - period / 2
        on = da * da + db * db < (0.24 * period) ** 2
    else:
        on = np.zeros((n, n), dtype=bool)
    return Image.fromarray(on.astype(np.uint8) * 255)


def _rgb(color: tuple[int, int, int], darken: float = 0.0) -> tuple[int, int, int]:
    r, g, b = (round(channel * (1.0 - darken)) for channel in color)
    return r, g, b


def background_image(background: Background, n: int) -> Image.Image:
    """The background as an RGB n x n image."""
    color = COLORS[background.color]
    base = Image.new("RGB", (n, n), color)
    if background.texture == "plain":
        return base
    pattern = Image.new("RGB", (n, n), _rgb(color, PATTERN_SHADE))
    return Image.composite(
        pattern, base, _pattern(background.texture, background.period, background.angle, n)
    )


def background_array(background: Background, n: int) -> np.ndarray:
    """The background as a float32 [n, n, 3] array (0..255)."""
    return np.asarray(background_image(background, n), dtype=np.float32)


# ------------------------------------------------------------------------------------------------------ shapes
def _regular(points: int, outer: float, inner: float | None = None) -> list[tuple[float, float]]:
    """A regular polygon (or a star when `inner` is given) with a vertex straight up, in unit coordinates."""
    count = points * (2 if inner is not None else 1)
    out = []
    for i in range(count):
        radius = outer if inner is None or i % 2 == 0 else inner
        phi = -math.pi / 2 + 2 * math.pi * i / count
        out.append((radius * math.cos(phi), radius * math.sin(phi)))
    return out


def _heart() -> list[tuple[float, float]]:
    ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(ts) ** 3
    y = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
    x, y = x / 17.0, (y + 2.5) / 15.0  # fit [-1, 1], centered
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _plus(half_width: float) -> list[tuple[float, float]]:
    """A plus sign whose arms are 2 * `half_width` wide, clockwise from the top arm's left corner."""
    w = half_width
    quarter = [(-w, -1.0), (w, -1.0), (w, -w)]  # the top arm and the inner corner after it
    points = []
    for turn in range(4):  # each quarter turned 90 degrees clockwise on screen: (u, v) -> (-v, u)
        for u, v in quarter:
            for _ in range(turn):
                u, v = -v, u
            points.append((u, v))
    return points


# Unit outlines in [-1, 1]^2 (y down) for the polygonal shapes; circle and ring are ellipses.
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.84, -0.84), (0.84, -0.84), (0.84, 0.84), (-0.84, 0.84)],
    "triangle": [(0.0, -1.0), (1.0, 0.78), (-1.0, 0.78)],
    "star": _regular(5, 1.0, 0.45),
    "cross": _plus(0.32),
    "diamond": [(0.0, -1.0), (0.66, 0.0), (0.0, 1.0), (-0.66, 0.0)],
    "heart": _heart(),
}
RING_HOLE = 0.55  # inner radius of a ring, as a fraction of its outer radius


def shape_polygon(
    outline: list[tuple[float, float]], x: float, y: float, radius: float, angle: float
) -> list[tuple[float, float]]:
    """Unit `outline` scaled by `radius`, turned `angle` degrees counter-clockwise (on screen) and moved to
    (x, y); all in pixels."""
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # y points down, so a counter-clockwise turn on screen is (u, v) -> (u cos + v sin, -u sin + v cos).
    return [(x + radius * (u * cos + v * sin), y + radius * (-u * sin + v * cos)) for u, v in outline]


def _thing_mask(thing: Thing, n: int) -> Image.Image:
    """The object's silhouette on an n x n 'L' canvas (255 inside)."""
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    x, y, radius = thing.x * n, thing.y * n, thing.extent * n / 2
    if thing.shape in ("circle", "ring"):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
        if thing.shape == "ring":
            hole = radius * RING_HOLE
            draw.ellipse((x - hole, y - hole, x + hole, y + hole), fill=0)
    else:
        draw.polygon(shape_polygon(_OUTLINES[thing.shape], x, y, radius, thing.angle), fill=255)
    return mask


def _paint(draw: ImageDraw.ImageDraw, thing: Thing, n: int) -> None:
    """Draw `thing` on an n x n canvas: its color, outlined inside its edge in a darker shade of it."""
    fill, edge = _rgb(COLORS[thing.color]), _rgb(COLORS[thing.color], OUTLINE_SHADE)
    x, y, radius = thing.x * n, thing.y * n, thing.extent * n / 2
    width = SUPERSAMPLE  # one output pixel
    if thing.shape == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=edge, width=width)
    elif thing.shape == "ring":
        hole = radius * RING_HOLE
        band = round(radius - hole)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=edge, width=band)
        inner = radius - width
        draw.ellipse((x - inner, y - inner, x + inner, y + inner), outline=fill, width=band - 2 * width)
    else:
        points = shape_polygon(_OUTLINES[thing.shape], x, y, radius, thing.angle)
        draw.polygon(points, fill=fill, outline=edge, width=width)


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB `size` x `size` image, drawn at SUPERSAMPLE times the size and box-filtered down."""
    n = size * SUPERSAMPLE
    canvas = background_image(scene.background, n)
    draw = ImageDraw.Draw(canvas)
    for thing in scene.things:
        _paint(draw, thing, n)
    return canvas.reduce(SUPERSAMPLE)


def object_masks(scene: Scene, size: int = 64) -> list[np.ndarray]:
    """Each object's visible pixels in `render_scene(scene, size)`: bool [size, size] arrays (a pixel belongs
    to an object when it covers at least half of it and no later object covers it)."""
    n = size * SUPERSAMPLE
    masks = []
    for thing in scene.things:
        coverage = np.asarray(_thing_mask(thing, n), dtype=np.float32) / 255.0  # [n, n]
        masks.append(coverage.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)) >= 0.5)
    for i in range(len(masks)):
        for later in masks[i + 1 :]:
            masks[i] = masks[i] & ~later
    return masks
