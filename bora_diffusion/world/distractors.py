"""Captions that are wrong in exactly one attribute: hard negatives for training, distractors for measuring.

A model that only matches "there is a star" passes an easy retrieval test; a distractor that differs from the
truth in one word (the star's color, the relation "above" turned "below", the background's texture) asks for
every attribute to be seen. `attribute_variants(scene, attribute)` gives every one-word change of one
attribute; `distractors(scene, rng, count)` draws one-attribute changes of distinct attributes.

A changed caption is a distractor only if it describes a different picture: "a red star above a red star" and
"a red star below a red star" are the same scene, so layout changes are skipped when both things read alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from .scenes import Scene
from .vocabulary import BACKGROUND_TEXTURES, COLORS, PLACES, RELATIONS, SHAPES, SIZES

__all__ = ["attribute_kind", "attribute_variants", "attributes", "distractors"]


def attribute_kind(attribute: str) -> str:
    """ "shape 1" -> "shape"; "layout" and the background attributes are their own kinds."""
    return attribute if attribute.startswith(("background", "layout")) else attribute.split()[0]


def attributes(scene: Scene) -> list[str]:
    """The attributes a caption of `scene` names: "shape 0", "color 0", "size 0" per thing, "layout",
    "background color", "background texture"."""
    names = [f"{what} {i}" for i in range(len(scene.things)) for what in ("shape", "color", "size")]
    if len(scene.things) == 1 or scene.things[0].phrase() != scene.things[1].phrase():
        names.append("layout")
    return [*names, "background color", "background texture"]


def _values(scene: Scene, attribute: str) -> tuple[str, ...]:
    what = attribute.split()[0] if attribute.split()[0] != "background" else attribute
    if what == "layout":
        return tuple(PLACES) if len(scene.things) == 1 else tuple(RELATIONS)
    table = {
        "shape": SHAPES,
        "color": tuple(COLORS),
        "size": tuple(SIZES),
        "background color": tuple(COLORS),
        "background texture": BACKGROUND_TEXTURES,
    }
    return table[what]


def _with(scene: Scene, attribute: str, value: str) -> Scene:
    """`scene` with `attribute` set to `value` (geometry untouched: only the caption is meant)."""
    if attribute == "layout":
        return dataclasses.replace(scene, layout=value)
    if attribute == "background color":
        return dataclasses.replace(scene, background=dataclasses.replace(scene.background, color=value))
    if attribute == "background texture":
        return dataclasses.replace(scene, background=dataclasses.replace(scene.background, texture=value))
    what, index = attribute.split()
    things = list(scene.things)
    things[int(index)] = dataclasses.replace(things[int(index)], **{what: value})
    return dataclasses.replace(scene, things=tuple(things))


def attribute_variants(scene: Scene, attribute: str) -> list[tuple[str, str]]:
    """(value, caption) for every value of `attribute`, the scene's own value included, in vocabulary order."""
    return [(value, _with(scene, attribute, value).caption()) for value in _values(scene, attribute)]


def distractors(
    scene: Scene, rng: np.random.Generator, count: int, weights: Mapping[str, float] | None = None
) -> list[str]:
    """`count` captions, each wrong in one attribute of `scene`, the attributes distinct while there are enough
    (then repeating attributes with other values); no caption twice, never the true one.

    `weights` maps an attribute kind ("shape", "color", "size", "layout", "background color", "background
    texture") to how much more often it is picked first (default 1 each: a uniform order)."""
    truth = scene.caption()
    names = attributes(scene)
    if weights is None:
        order = [names[i] for i in rng.permutation(len(names))]
    else:
        p = np.asarray([weights.get(attribute_kind(name), 1.0) for name in names], dtype=np.float64)
        order = [names[i] for i in rng.choice(len(names), size=len(names), replace=False, p=p / p.sum())]
    out: list[str] = []
    while len(out) < count:
        for attribute in order:
            wrong = [caption for _, caption in attribute_variants(scene, attribute) if caption != truth]
            wrong = [caption for caption in wrong if caption not in out]
            if wrong:
                out.append(wrong[int(rng.integers(len(wrong)))])
                if len(out) == count:
                    break
    return out
