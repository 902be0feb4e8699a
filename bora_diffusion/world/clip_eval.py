"""How well a CLIP reads the world: caption retrieval among one-attribute distractors, attribute classification.

- Retrieval: each image against its true caption and `distractors` captions that differ in one attribute each
  (distinct attributes); a hit when the true caption scores highest. Chance is 1 / (1 + distractors).
- Classification: for each attribute of each image, the captions with that attribute set to every value of the
  vocabulary (8 shapes, 8 colors, 2 sizes, 5 places or 4 relations, 8 background colors, 4 textures); a hit when
  the true value scores highest. Reported per attribute kind (a one-thing scene's layout as "place", a
  two-thing scene's as "relation") and overall (chance: the mean of 1 / #values).

Both take images and their `Scene`s, so the same code measures held-out world renders and a base model's
generations of those scenes' captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .clip import WorldClip
from .distractors import attribute_kind, attribute_variants, attributes, distractors
from .scenes import Scene, sample_scene

__all__ = ["ClipReport", "evaluate", "held_out_scenes"]

HELD_OUT_SEED = 1_000_003  # training streams use small seeds; this one is never trained on
# The attribute kinds a report lists, in caption order.
KINDS = ("shape", "color", "size", "place", "relation", "background color", "background texture")


@dataclass(frozen=True)
class ClipReport:
    images: int
    retrieval: float
    retrieval_chance: float
    classification: float
    classification_chance: float
    per_attribute: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"caption retrieval among 1 true + {round(1 / self.retrieval_chance) - 1} one-attribute distractors: "
            f"{self.retrieval:.1%} (chance {self.retrieval_chance:.1%}), {self.images} images",
            f"attribute classification: {self.classification:.1%} (chance {self.classification_chance:.1%})",
        ]
        out += [f"  {name}: {value:.1%}" for name, value in self.per_attribute.items()]
        return out


def held_out_scenes(count: int, seed: int = HELD_OUT_SEED) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(count)]


def _kind(attribute: str, scene: Scene) -> str:
    """The attribute's kind, with the layout split: a "place" for one thing, a "relation" between two."""
    kind = attribute_kind(attribute)
    if kind == "layout":
        return "place" if len(scene.things) == 1 else "relation"
    return kind


def evaluate(
    clip: WorldClip, images: Sequence, scenes: Sequence[Scene], distractor_count: int = 5, seed: int = 0
) -> ClipReport:
    """Retrieval and classification of `images` (PIL, one per scene) against their `scenes`' captions."""
    rng = np.random.default_rng(seed)
    # Every question first (texts are shared across images), then one pass of each tower.
    questions: list[tuple[int, str, list[str], int]] = []  # (image, kind, candidate texts, right answer)
    for index, scene in enumerate(scenes):
        questions.append(
            (index, "retrieval", [scene.caption(), *distractors(scene, rng, distractor_count)], 0)
        )
        for attribute in attributes(scene):
            texts = [text for _, text in attribute_variants(scene, attribute)]
            questions.append((index, _kind(attribute, scene), texts, texts.index(scene.caption())))
    unique = sorted({text for _, _, texts, _ in questions for text in texts})
    position = {text: i for i, text in enumerate(unique)}
    scores = clip.embed_images(list(images)) @ clip.embed_texts(unique).T  # [N, texts]
    hits: dict[str, list[bool]] = {}
    chance: list[float] = []
    for index, kind, texts, answer in questions:
        picked = int(scores[index, [position[text] for text in texts]].argmax())
        hits.setdefault(kind, []).append(picked == answer)
        if kind != "retrieval":
            chance.append(1 / len(texts))
    retrieval = hits.pop("retrieval")
    every = [hit for kind_hits in hits.values() for hit in kind_hits]
    return ClipReport(
        images=len(scenes),
        retrieval=float(np.mean(retrieval)),
        retrieval_chance=1 / (1 + distractor_count),
        classification=float(np.mean(every)),
        classification_chance=float(np.mean(chance)),
        per_attribute={kind: float(np.mean(hits[kind])) for kind in KINDS if kind in hits},
    )
