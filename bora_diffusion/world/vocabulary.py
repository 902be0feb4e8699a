"""The words of the world and what each one means in pixels.

Every attribute a caption can name is listed here once, with the numbers the renderer draws it by, so that a
caption and its image can never disagree: the sampler picks words, the renderer looks their meaning up here.

The values are chosen to be told apart at 32 px by a small model: eight hues far from each other (no brown,
no grey, which a darker stripe or an outline could be mistaken for), two sizes nearly a factor two apart, and
positions in separate thirds of the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "BACKGROUND_TEXTURES",
    "COLORS",
    "PLACES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "WORDS",
]

# The things a scene holds; geometry is in render.py.
SHAPES: tuple[str, ...] = ("circle", "ring", "square", "triangle", "star", "cross", "diamond", "heart")

# Object and background colors (sRGB). An object never shares its background's color.
COLORS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (214, 40, 40),
        "orange": (247, 135, 30),
        "yellow": (246, 214, 46),
        "green": (46, 160, 67),
        "blue": (38, 86, 214),
        "purple": (128, 58, 180),
        "pink": (244, 128, 188),
        "white": (246, 246, 246),
    }
)

# Size word -> (mean, spread) of the object's extent: the side of its box as a fraction of the image side.
# Spreads never overlap, so a "large" object is always larger than a "small" one.
SIZES: Mapping[str, tuple[float, float]] = MappingProxyType({"small": (0.25, 0.025), "large": (0.44, 0.03)})

# One object: phrase -> its center (x, y) as fractions of the image side, y down; jittered by PLACE_JITTER.
PLACES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "on the left": (0.28, 0.5),
        "on the right": (0.72, 0.5),
        "at the top": (0.5, 0.28),
        "at the bottom": (0.5, 0.72),
        "in the center": (0.5, 0.5),
    }
)
PLACE_JITTER = 0.04

# Two objects, "A <relation> B": relation -> (A's center, B's center) before jitter. The axis the relation
# names keeps the two in separate halves; the other axis is free within RELATION_FREEDOM.
RELATIONS: Mapping[str, tuple[tuple[float, float], tuple[float, float]]] = MappingProxyType(
    {
        "above": ((0.5, 0.27), (0.5, 0.73)),
        "below": ((0.5, 0.73), (0.5, 0.27)),
        "to the left of": ((0.27, 0.5), (0.73, 0.5)),
        "to the right of": ((0.73, 0.5), (0.27, 0.5)),
    }
)
RELATION_FREEDOM = 0.16

# "plain" is left out of captions ("on a green background"); the others are named ("on a striped green ...").
BACKGROUND_TEXTURES: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")

# Every word a caption can hold, for tests and for tokens that must not collide with the world.
WORDS: frozenset[str] = frozenset(
    word
    for phrase in (
        *SHAPES,
        *COLORS,
        *SIZES,
        *PLACES,
        *RELATIONS,
        *BACKGROUND_TEXTURES,
        "a an on background",
    )
    for word in phrase.split()
)
