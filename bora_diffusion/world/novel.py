"""Novel concepts: objects the base model never sees, with an identity the world's words cannot describe.

World objects are one color (plus a darker outline of it) and one of the eight vocabulary shapes. Each novel
concept breaks both rules at once: a silhouette no vocabulary shape has (seven points, notches, an eye, round
arm ends) painted with a fixed multi-color scheme and a navy outline. Its class word is the vocabulary shape it
is closest to ("star", "ring"...), as DreamBooth's class word is "dog" for one particular dog: the base model
knows the class, only tuning can teach the individual.

A view varies everything except the identity: turn (up to MAX_TURN degrees), mirror image, size, position and
the background, drawn from the same `Background` vocabulary as scenes so captions can name it.
`scenes()` never yields these: they are not in `SHAPES` and their colors never share one object there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image

from .render import SUPERSAMPLE, background_array
from .scenes import Background, sample_background
from .vocabulary import SIZES

__all__ = [
    "NOVEL_CONCEPTS",
    "NovelConcept",
    "NovelView",
    "Painter",
    "novel_concept",
    "placed_view",
    "render_novel",
    "sample_view",
]

MAX_TURN = 35.0
EXTENT_RANGE = (0.28, 0.68)  # side of the object's box as a fraction of the image side
NAVY = (26, 32, 88)

# A painter maps object coordinates (u, v in [-1, 1], y down, each [n, n]) to (inside: bool [n, n],
# rgb: float32 [n, n, 3]).
Painter = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _rgb(*colors: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(colors, dtype=np.float32)  # [k, 3]


def _inside_polygon(u: np.ndarray, v: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorized over pixels: bool, shaped like `u`."""
    inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True):
        if y0 == y1:
            continue
        crosses = (v >= min(y0, y1)) & (v < max(y0, y1))
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)  # where the edge is at this pixel's row
        inside ^= crosses & (u < x_at)
    return inside


def _star7(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seven points, painted with a three-armed magenta / lime / navy spiral and a yellow eye in the middle."""
    points = []
    for i in range(14):
        radius = 1.0 if i % 2 == 0 else 0.56
        phi = -math.pi / 2 + math.pi * i / 7
        points.append((radius * math.cos(phi), radius * math.sin(phi)))
    inside = _inside_polygon(u, v, points)
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    arm = np.floor((phi / (2 * math.pi) * 3 + r * 2.2) % 3).astype(int)  # [n, n] in {0, 1, 2}
    rgb = _rgb((226, 40, 160), (150, 222, 40), NAVY)[arm]  # [n, n, 3]
    rgb[r < 0.2] = (250, 220, 40)
    return inside, rgb


def _notched_ring(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thick ring with four square notches, in eight teal and orange sectors, with white studs."""
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    quarter = (phi + math.pi / 4) % (math.pi / 2) - math.pi / 4  # angle from the nearest notch axis
    notch = (r > 0.8) & (np.abs(quarter) < 0.2)
    inside = (r <= 1.0) & (r >= 0.42) & ~notch
    sector = np.floor((phi + math.pi / 8) / (math.pi / 4)).astype(int) % 2  # [n, n] in {0, 1}
    rgb = _rgb((20, 160, 150), (250, 130, 30))[sector]
    stud_phi = (phi % (math.pi / 4)) - math.pi / 8  # angle from the middle of the sector
    studs = np.hypot(r - 0.62, stud_phi * 0.62) < 0.09
    rgb[studs] = (250, 250, 250)
    return inside, rgb


def _eye_heart(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A heart, blue on the left and pink on the right, with a large white eye and a navy pupil."""
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    xs = 16 * np.sin(t) ** 3 / 17.0
    ys = (2.5 - (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))) / 15.0
    inside = _inside_polygon(u, v, list(zip(xs.tolist(), ys.tolist(), strict=True)))
    # World colors in large parts: the first design's cyan and magenta are no world color, so the base's decoder
    # never learned to paint them, and its eye and pupil (radius 0.14, 2 px at 64 px) were too small to learn.
    rgb = np.where((u < 0)[..., None], _rgb((38, 86, 214))[0], _rgb((244, 128, 188))[0])  # [n, n, 3]
    eye = np.hypot(u, (v + 0.05) * 1.2) < 0.46
    rgb[eye] = (246, 246, 246)
    rgb[np.hypot(u - 0.06, v + 0.05) < 0.22] = NAVY
    return inside, rgb.astype(np.float32)


def _band_triangle(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A triangle in red, yellow, green and blue bands from the top, crossed by a black zig-zag."""
    inside = _inside_polygon(u, v, [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)])
    band = np.clip(np.floor((v + 1.0) / 1.8 * 4), 0, 3).astype(int)
    rgb = _rgb((220, 40, 40), (246, 214, 46), (46, 160, 67), (38, 86, 214))[band]  # [n, n, 3]
    zig = 0.25 + 0.12 * (np.abs(((u * 3) % 2) - 1) - 0.5)  # a triangle wave around v = 0.25
    rgb[np.abs(v - zig) < 0.07] = (15, 15, 15)
    return inside, rgb


def _quad_cross(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A cross with round arm ends, each arm its own color (red up, blue right, yellow down, green left), and
    a white square hub."""
    width = 0.3
    arms = ((np.abs(u) < width) & (np.abs(v) < 1.0 - width)) | (
        (np.abs(v) < width) & (np.abs(u) < 1.0 - width)
    )
    caps = np.zeros_like(arms)
    for cu, cv in ((0.0, -0.7), (0.7, 0.0), (0.0, 0.7), (-0.7, 0.0)):
        caps |= np.hypot(u - cu, v - cv) < width
    inside = arms | caps
    # Which arm: the larger coordinate decides; 0 up, 1 right, 2 down, 3 left.
    arm = np.where(np.abs(v) >= np.abs(u), np.where(v < 0, 0, 2), np.where(u > 0, 1, 3))
    rgb = _rgb((214, 40, 40), (38, 86, 214), (246, 214, 46), (46, 160, 67))[arm]
    rgb[(np.abs(u) < 0.2) & (np.abs(v) < 0.2)] = (250, 250, 250)
    return inside, rgb


def _bolt_circle(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A purple disc with an orange rim and a yellow lightning bolt across it."""
    r = np.hypot(u, v)
    inside = r <= 1.0
    rgb = np.empty((*r.shape, 3), dtype=np.float32)
    rgb[:] = (120, 50, 190)
    rgb[r > 0.8] = (250, 130, 30)
    bolt = [(0.15, -0.75), (-0.35, 0.08), (0.0, 0.08), (-0.15, 0.75), (0.38, -0.12), (0.02, -0.12)]
    rgb[_inside_polygon(u, v, bolt)] = (250, 222, 40)
    return inside, rgb


# The six below were added for twelve concepts at once (issue 22). The base draws world colors and big simple
# parts well and fine shapes poorly (shapes 69%, relations 54%; docs/results.md), so each is two or three world
# colors in large regions, a palette no other concept shares, on a simple silhouette no vocabulary shape has.


def _melon(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A half disc, flat side up, red inside a thick green rind, with three white seeds."""
    r = np.hypot(u, v + 0.5)  # [n, n]: the flat side's middle sits at v = -0.5
    inside = (r <= 1.0) & (v >= -0.5)
    rgb = np.empty((*np.broadcast_shapes(u.shape, v.shape), 3), dtype=np.float32)
    rgb[:] = (214, 40, 40)
    rgb[r > 0.72] = (46, 160, 67)
    for su, sv in ((-0.35, -0.25), (0.0, -0.05), (0.35, -0.25)):
        rgb[np.hypot(u - su, v - sv) < 0.09] = (246, 246, 246)
    return inside, rgb


def _window(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A square with rounded corners: four yellow panes in a thick blue frame and cross bars."""
    inside = (np.abs(u) ** 4 + np.abs(v) ** 4) <= 1.0  # a superellipse: a square with rounded corners
    frame = (np.abs(u) ** 4 + np.abs(v) ** 4 > 0.55) | (np.abs(u) < 0.13) | (np.abs(v) < 0.13)
    rgb = np.where(frame[..., None], _rgb((38, 86, 214))[0], _rgb((246, 214, 46))[0])  # [n, n, 3]
    return inside, rgb.astype(np.float32)


def _kite(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A kite, its short upper part orange and its long lower part blue, with a white disc where they meet."""
    top, side = -0.35, (0.75, -0.35)
    inside = _inside_polygon(u, v, [(0.0, -1.0), side, (0.0, 1.0), (-side[0], side[1])])
    rgb = np.where((v < top)[..., None], _rgb((247, 135, 30))[0], _rgb((38, 86, 214))[0])  # [n, n, 3]
    rgb[np.hypot(u, v - top) < 0.2] = (246, 246, 246)
    return inside, rgb.astype(np.float32)


def _oval_ring(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A wide, flat oval ring in four sectors, red and white by turns, like a life buoy seen from the side."""
    r = np.hypot(u, v / 0.62)  # an ellipse 1 wide and 0.62 high in object units
    inside = (r <= 1.0) & (r >= 0.42)
    phi = np.arctan2(v / 0.62, u)
    sector = np.floor((phi + math.pi / 4) / (math.pi / 2)).astype(int) % 2  # [n, n] in {0, 1}
    rgb = _rgb((214, 40, 40), (246, 246, 246))[sector]
    return inside, rgb


def _bowtie(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bow tie: two triangles meeting tip to tip, green on the left and purple on the right, tied by a
    yellow knot."""
    inside = _inside_polygon(
        u, v, [(-1.0, -0.75), (0.0, 0.0), (1.0, -0.75), (1.0, 0.75), (0.0, 0.0), (-1.0, 0.75)]
    )
    knot = (np.abs(u) < 0.22) & (np.abs(v) < 0.28)
    inside = inside | knot
    rgb = np.where((u < 0)[..., None], _rgb((46, 160, 67))[0], _rgb((128, 58, 180))[0])  # [n, n, 3]
    rgb[knot] = (246, 214, 46)
    return inside, rgb.astype(np.float32)


def _sun(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sun: a large yellow disc inside a crown of twelve short orange rays."""
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    ray = 1.0 - 0.3 * np.abs(((phi / (2 * math.pi) * 12) % 1.0) * 2 - 1)  # [n, n]: 1 at a tip, 0.7 between
    inside = r <= ray
    rgb = np.empty((*r.shape, 3), dtype=np.float32)
    rgb[:] = (247, 135, 30)
    rgb[r < 0.62] = (246, 214, 46)
    return inside, rgb


@dataclass(frozen=True)
class NovelConcept:
    """A novel concept's identity: its name, the vocabulary shape it is a kind of, what it looks like, the
    world colors it is mostly painted in (a background never takes them) and its painter."""

    name: str
    class_word: str
    description: str
    colors: frozenset[str]
    painter: Painter


def _concept(name: str, class_word: str, colors: set[str], painter: Painter) -> NovelConcept:
    return NovelConcept(
        name, class_word, " ".join((painter.__doc__ or "").split()), frozenset(colors), painter
    )


_CONCEPTS = (
    _concept("spiral-star", "star", {"pink", "green", "yellow"}, _star7),
    _concept("notched-ring", "ring", {"orange", "white"}, _notched_ring),
    _concept("eye-heart", "heart", {"blue", "pink", "white"}, _eye_heart),
    _concept("band-triangle", "triangle", {"red", "yellow", "green", "blue"}, _band_triangle),
    _concept("quad-cross", "cross", {"red", "blue", "yellow", "green", "white"}, _quad_cross),
    _concept("bolt-circle", "circle", {"purple", "orange", "yellow"}, _bolt_circle),
    _concept("melon-circle", "circle", {"red", "green", "white"}, _melon),
    _concept("window-square", "square", {"yellow", "blue"}, _window),
    _concept("kite-diamond", "diamond", {"orange", "blue", "white"}, _kite),
    _concept("oval-ring", "ring", {"red", "white"}, _oval_ring),
    _concept("bowtie-triangle", "triangle", {"green", "purple", "yellow"}, _bowtie),
    _concept("sun-star", "star", {"yellow", "orange"}, _sun),
)
CONCEPTS: Mapping[str, NovelConcept] = MappingProxyType({concept.name: concept for concept in _CONCEPTS})
NOVEL_CONCEPTS: tuple[str, ...] = tuple(CONCEPTS)


def novel_concept(name: str) -> NovelConcept:
    if name not in CONCEPTS:
        raise ValueError(f"unknown novel concept {name!r}; known: {', '.join(NOVEL_CONCEPTS)}")
    return CONCEPTS[name]


@dataclass(frozen=True)
class NovelView:
    """One picture of a novel concept: where, how large, how turned and on what background."""

    name: str
    background: Background
    extent: float  # side of the object's box, fraction of the image side
    x: float  # center, fractions of the image side, y down
    y: float
    angle: float  # degrees, counter-clockwise on screen
    mirrored: bool

    @property
    def size_word(self) -> str:
        """The vocabulary size word closest to this view's extent ("small" or "large")."""
        return min(SIZES, key=lambda word: abs(SIZES[word][0] - self.extent))

    def render(self, size: int = 64, painter: Painter | None = None) -> Image.Image:
        """The view as an RGB `size` x `size` image; `painter` draws another object than the concept `name`
        (the world CLIP's random objects, `random_objects.py`)."""
        n = size * SUPERSAMPLE
        canvas = background_array(self.background, n)  # [n, n, 3]
        centers = (np.arange(n, dtype=np.float32) + 0.5) / n
        radius = self.extent / 2
        dx = (centers[None, :] - self.x) / radius  # [1, n]
        dy = (centers[:, None] - self.y) / radius  # [n, 1]
        theta = math.radians(self.angle)
        # Undo the on-screen counter-clockwise turn (see render.shape_polygon): object coordinates per pixel.
        u = dx * math.cos(theta) - dy * math.sin(theta)  # [n, n]
        v = dx * math.sin(theta) + dy * math.cos(theta)  # [n, n]
        if self.mirrored:
            u = -u
        inside, rgb = (painter or novel_concept(self.name).painter)(u, v)
        # A navy outline: inside pixels with a 4-neighbour outside.
        padded = np.pad(inside, 1)
        core = inside & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        canvas = np.where(core[..., None], rgb, canvas)
        canvas = np.where((inside & ~core)[..., None], np.asarray(NAVY, dtype=np.float32), canvas)
        s = SUPERSAMPLE
        small = canvas.reshape(size, s, size, s, 3).mean(axis=(1, 3))  # [size, size, 3]
        return Image.fromarray(np.clip(np.rint(small), 0, 255).astype(np.uint8))


def sample_view(name: str, rng: np.random.Generator, background: Background | None = None) -> NovelView:
    """A random view of concept `name`; `background` fixes the background instead of drawing one."""
    return placed_view(name, rng, background, avoid=novel_concept(name).colors)


def placed_view(
    name: str,
    rng: np.random.Generator,
    background: Background | None = None,
    avoid: frozenset[str] = frozenset(),
) -> NovelView:
    """A random turn, mirror image, size and position of object `name`, on `background` or on a random one
    whose color is none of `avoid`."""
    extent = float(rng.uniform(*EXTENT_RANGE))
    room = (1.0 - extent) / 2 * 0.8  # how far the center may move and keep the object in the picture
    x, y = (float(value) for value in 0.5 + rng.uniform(-room, room, size=2))
    angle = float(rng.uniform(-MAX_TURN, MAX_TURN))
    mirrored = bool(rng.random() < 0.5)
    if background is None:
        background = sample_background(rng, avoid=avoid)
    return NovelView(name, background, extent, x, y, angle, mirrored)


def render_novel(
    name: str, rng: np.random.Generator, size: int = 64, background: Background | None = None
) -> Image.Image:
    """A random view of novel concept `name` as an RGB `size` x `size` image (see `sample_view`)."""
    return sample_view(name, rng, background).render(size)
