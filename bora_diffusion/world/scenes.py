"""Scenes of the world: what is in a picture, the seeded sampler that invents one, and the caption that says it.

A `Scene` is pure data: one or two objects (shape, color, size word plus the exact extent, center and angle the
renderer draws) on a background (color, texture plus the pattern's period and angle). The words and the numbers
are drawn together by `sample_scene`, so the caption is always true of the pixels; `Scene.render` draws it.

`scenes(seed)` is the endless stream the base model and the small CLIP train on: one `numpy.random.Generator`
seeded once, so the same seed gives the same images and captions, in the same order, on any machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .vocabulary import (
    BACKGROUND_TEXTURES,
    COLORS,
    PLACE_JITTER,
    PLACES,
    RELATION_FREEDOM,
    RELATIONS,
    SHAPES,
    SIZES,
)

__all__ = ["Background", "Scene", "Thing", "article", "sample_background", "sample_scene", "scenes"]

NATIVE_SIZE = 64
# Stripe, checker and dot periods as fractions of the image side: at least 4 px at 32 px.
PERIODS = (0.125, 0.1875, 0.25)
STRIPE_ANGLES = (0, 45, 90, 135)
MAX_ANGLE = 15.0  # degrees either way: more and a square turns into a diamond
ROUND_SHAPES = frozenset({"circle", "ring"})


@dataclass(frozen=True)
class Thing:
    """One object: its words and the exact geometry they were drawn as (fractions of the image side, y down)."""

    shape: str
    color: str
    size: str
    extent: float  # side of the box the unit outline fills, before turning
    x: float  # center
    y: float
    angle: float = 0.0  # degrees, counter-clockwise

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; known: {', '.join(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; known: {', '.join(SIZES)}")

    def phrase(self) -> str:
        """ "small red star" (without the article)."""
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Background:
    """A background color with a texture; `period` (fraction of the side) and `angle` (degrees) shape it."""

    color: str
    texture: str = "plain"
    period: float = 0.1875
    angle: int = 0

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"unknown background color {self.color!r}; known: {', '.join(COLORS)}")
        if self.texture not in BACKGROUND_TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}; known: {', '.join(BACKGROUND_TEXTURES)}")

    def phrase(self) -> str:
        """ "a striped green background"; a plain one is just "a green background"."""
        words = (
            f"{self.color} background"
            if self.texture == "plain"
            else f"{self.texture} {self.color} background"
        )
        return f"{article(words)} {words}"


@dataclass(frozen=True)
class Scene:
    """One or two `Thing`s on a `Background`. `layout` is a key of PLACES for one thing ("on the left"), a key
    of RELATIONS for two ("above": things[0] is above things[1])."""

    things: tuple[Thing, ...]
    background: Background
    layout: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "things", tuple(self.things))
        if len(self.things) == 1 and self.layout not in PLACES:
            raise ValueError(f"one thing needs a place ({', '.join(PLACES)}), got {self.layout!r}")
        if len(self.things) == 2 and self.layout not in RELATIONS:
            raise ValueError(f"two things need a relation ({', '.join(RELATIONS)}), got {self.layout!r}")
        if len(self.things) not in (1, 2):
            raise ValueError(f"a scene holds one or two things, got {len(self.things)}")

    def caption(self) -> str:
        """ "a small red star above a large blue ring on a striped green background"."""
        first, background = _with_article(self.things[0].phrase()), self.background.phrase()
        if len(self.things) == 1:
            return f"{first} {self.layout} on {background}"
        return f"{first} {self.layout} {_with_article(self.things[1].phrase())} on {background}"

    def render(self, size: int = NATIVE_SIZE) -> Image.Image:
        """The scene as an RGB image of `size` x `size` px (64 native; 32 works too)."""
        from .render import render_scene

        return render_scene(self, size)


def article(phrase: str) -> str:
    """ "an" before a vowel sound ("an orange background"), else "a"."""
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


# -------------------------------------------------------------------------------------------------- sampling
def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_background(rng: np.random.Generator, avoid: frozenset[str] = frozenset()) -> Background:
    """A random background whose color is none of `avoid` (the objects' colors)."""
    color = _pick(rng, [name for name in COLORS if name not in avoid])
    texture = _pick(rng, BACKGROUND_TEXTURES)
    period = PERIODS[int(rng.integers(len(PERIODS)))]
    angle = STRIPE_ANGLES[int(rng.integers(len(STRIPE_ANGLES)))]
    return Background(color=color, texture=texture, period=period, angle=angle)


def _sample_thing(rng: np.random.Generator, x: float, y: float) -> Thing:
    shape = _pick(rng, SHAPES)
    size = _pick(rng, tuple(SIZES))
    mean, spread = SIZES[size]
    angle = 0.0 if shape in ROUND_SHAPES else float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
    return Thing(
        shape=shape,
        color=_pick(rng, tuple(COLORS)),
        size=size,
        extent=float(mean + rng.uniform(-spread, spread)),
        x=x,
        y=y,
        angle=angle,
    )


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random scene: one thing at a place or two things in a relation, on a background of another color.
    Every draw comes from `rng`, in a fixed order."""
    if rng.random() < 0.5:
        layout = _pick(rng, tuple(PLACES))
        cx, cy = PLACES[layout]
        jitter = rng.uniform(-PLACE_JITTER, PLACE_JITTER, size=2)
        things: tuple[Thing, ...] = (_sample_thing(rng, cx + float(jitter[0]), cy + float(jitter[1])),)
    else:
        layout = _pick(rng, tuple(RELATIONS))
        centers = []
        vertical = layout in ("above", "below")
        for cx, cy in RELATIONS[layout]:
            free = float(rng.uniform(-RELATION_FREEDOM, RELATION_FREEDOM))
            along = float(rng.uniform(-0.02, 0.02))
            centers.append((cx + free, cy + along) if vertical else (cx + along, cy + free))
        things = tuple(_sample_thing(rng, x, y) for x, y in centers)
    background = sample_background(rng, avoid=frozenset(thing.color for thing in things))
    return Scene(things=things, background=background, layout=layout)


def scenes(seed: int, size: int = NATIVE_SIZE) -> Iterator[tuple[Image.Image, str]]:
    """Endless (image, caption) pairs, the same for the same seed."""
    rng = np.random.default_rng(seed)
    while True:
        scene = sample_scene(rng)
        yield scene.render(size), scene.caption()
