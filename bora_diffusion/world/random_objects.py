"""Random novel objects: an endless supply of multi-colored objects for the world CLIP to learn identity on.

CLIP-I asks whether two pictures show the same object. World scenes alone cannot teach that for the novel
concepts: every world object is one flat color in one of eight shapes, so a CLIP trained on them embeds a
multi-colored, patterned object near "some colorful thing", and the shipped concepts crowd together. Scored on
their own references (`evaluation/identity.py`), the world CLIP trained without these objects gave the six
concepts a mean identity of 0.56 (quad-cross 0.125); the shipped one, trained with them, gives 0.92.

Each object draws its own silhouette (star, polygon, blob or ring), its own 2-4 colors and its own pattern
(sectors, bands, spiral, rings) with an optional accent dot: the novel concepts' style (`novel.py`), drawn
independently of them. Two views of it (turned, mirrored, moved, resized, each on its own background) are a
positive pair of the CLIP's image-to-image identity term.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image

from .novel import Painter, placed_view

__all__ = ["random_object_views", "random_painter"]

SILHOUETTES = ("star", "polygon", "blob", "ring")
PATTERNS = ("sectors", "bands", "spiral", "rings")


def _color(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated, not too dark color (0..255)."""
    h, s, v = float(rng.random()), float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.55, 1.0))
    return tuple(255.0 * channel for channel in colorsys.hsv_to_rgb(h, s, v))


def _silhouette(rng: np.random.Generator):
    """inside(u, v, r, phi) -> bool [n, n] for a random silhouette filling the unit box."""
    kind = SILHOUETTES[int(rng.integers(len(SILHOUETTES)))]
    turn = float(rng.uniform(0, 2 * math.pi))
    if kind == "star" or kind == "polygon":
        points = int(rng.integers(3, 10 if kind == "star" else 9))
        inner = float(rng.uniform(0.35, 0.8)) if kind == "star" else math.cos(math.pi / points)

        def inside(u, v, r, phi):
            # Radius of the star / polygon outline at angle phi: linear between tips and notches in angle.
            sector = ((phi + turn) % (2 * math.pi / points)) / (2 * math.pi / points)  # [n, n] in [0, 1)
            edge = inner + (1 - inner) * np.abs(2 * sector - 1)
            return r <= edge

    elif kind == "blob":
        waves = [
            (int(rng.integers(2, 6)), float(rng.uniform(0.05, 0.2)), float(rng.uniform(0, 6.3)))
            for _ in range(2)
        ]

        def inside(u, v, r, phi):
            edge = 0.78 + sum(a * np.sin(k * phi + p) for k, a, p in waves)
            return r <= edge

    else:  # ring, with 0-5 notches
        hole = float(rng.uniform(0.3, 0.6))
        notches = int(rng.integers(0, 6))

        def inside(u, v, r, phi):
            ring = (r <= 1.0) & (r >= hole)
            if notches:
                angle = (phi + turn) % (2 * math.pi / notches) - math.pi / notches
                ring &= ~((r > 0.75) & (np.abs(angle) < 0.2))
            return ring

    return inside


def _pattern(rng: np.random.Generator, colors: int):
    """region(u, v, r, phi) -> int [n, n] in [0, colors): which color each pixel of the object takes."""
    kind = PATTERNS[int(rng.integers(len(PATTERNS)))]
    turn = float(rng.uniform(0, 2 * math.pi))
    count = int(rng.integers(colors, 9))
    if kind == "sectors":
        return lambda u, v, r, phi: np.floor(((phi + turn) % (2 * math.pi)) / (2 * math.pi) * count) % colors
    if kind == "bands":
        c, s = math.cos(turn), math.sin(turn)
        return lambda u, v, r, phi: np.clip(np.floor((u * c + v * s + 1) / 2 * count), 0, count - 1) % colors
    if kind == "spiral":
        twist = float(rng.uniform(1.0, 3.0))
        return lambda u, v, r, phi: np.floor((phi + turn) / (2 * math.pi) * colors + r * twist) % colors
    return lambda u, v, r, phi: np.floor(r * count) % colors


def random_painter(rng: np.random.Generator) -> Painter:
    """A random object's painter: (u, v) object coordinates -> (inside [n, n], rgb [n, n, 3])."""
    inside_of = _silhouette(rng)
    colors = int(rng.integers(2, 5))
    palette = np.asarray([_color(rng) for _ in range(colors)], dtype=np.float32)  # [colors, 3]
    region_of = _pattern(rng, colors)
    accent = None
    if rng.random() < 0.5:
        accent = (
            *(float(c) for c in rng.uniform(-0.3, 0.3, size=2)),
            float(rng.uniform(0.12, 0.25)),
            _color(rng),
        )

    def paint(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, phi = np.hypot(u, v), np.arctan2(v, u)  # [n, n]
        rgb = palette[region_of(u, v, r, phi).astype(int)]  # [n, n, 3]
        if accent is not None:
            cu, cv, radius, color = accent
            rgb[np.hypot(u - cu, v - cv) < radius] = color
        return inside_of(u, v, r, phi), rgb

    return paint


def random_object_views(rng: np.random.Generator, size: int = 64) -> tuple[Image.Image, Image.Image]:
    """Two pictures of one new random object, each turned, mirrored, placed and sized on its own background."""
    painter = random_painter(rng)
    return tuple(placed_view("random", rng).render(size, painter=painter) for _ in range(2))
