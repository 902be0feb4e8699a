"""Context accuracy: does the tuned model still draw what a world prompt says around the concept?

CLIP-T scores the whole prompt with the concept's token replaced by its class word, so it falls when the concept
stops looking like its class word ("huzd circle" drawn as its references' rimmed disc, which the world CLIP reads
as a ring) even when the background and the companion object are exactly the prompt's. Context accuracy asks
about those alone: for each context attribute a prompt names (the background's color and texture, the companion
object's color and shape), CLIP picks among the prompt's text with that one attribute set to every value the world
has; a hit is picking the prompt's own. The concept's words are the same in every candidate, so how the concept
is drawn cannot decide the pick. Chance is 1 / 8 for colors and shapes, 1 / 4 for textures.

Defined for prompts in the world's caption grammar (`bora_diffusion/world`, the `world` prompt set): the
background closes the prompt ("... on a striped blue background") and a companion is "<size> <color> <shape>".
A text that asks nothing (another grammar, no background) is skipped; a set of texts that asks nothing at all
has no context accuracy (None), so real-checkpoint runs with other prompt sets are left as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..world.scenes import Background
from ..world.vocabulary import BACKGROUND_TEXTURES, COLORS, SHAPES, SIZES
from .images import ImageSource
from .scorer import ClipScorer

__all__ = ["KINDS", "Question", "context_accuracy", "context_questions"]

KINDS = ("background color", "background texture", "companion color", "companion shape")


@dataclass(frozen=True)
class Question:
    kind: str  # one of KINDS
    texts: tuple[str, ...]  # the candidates: the text with the attribute set to each value
    answer: int  # texts[answer] is the text itself


def context_questions(text: str) -> list[Question]:
    """The questions `text` (a scoring text: the prompt with its token already replaced) asks about its
    context; each candidate differs from `text` in one attribute only."""
    head, on, tail = text.rpartition(" on ")
    background = _background(tail) if on else None
    questions = []
    if background is not None:
        color, texture = background
        for kind, values, phrase in (
            ("background color", tuple(COLORS), lambda value: Background(value, texture).phrase()),
            ("background texture", BACKGROUND_TEXTURES, lambda value: Background(color, value).phrase()),
        ):
            questions.append(_question(kind, text, [f"{head} on {phrase(value)}" for value in values]))
    words = text.split()
    for i in range(len(words) - 2):  # the companion: "<size> <color> <shape>" (the concept names no color)
        if words[i] in SIZES and words[i + 1] in COLORS and words[i + 2] in SHAPES:
            for kind, position, values in (
                ("companion color", i + 1, COLORS),
                ("companion shape", i + 2, SHAPES),
            ):
                texts = [" ".join([*words[:position], value, *words[position + 1 :]]) for value in values]
                questions.append(_question(kind, " ".join(words), texts))
    return [q for q in questions if q is not None]


def _background(phrase: str) -> tuple[str, str] | None:
    """(color, texture) of "a striped blue background" / "an orange background"; None for anything else."""
    words = phrase.split()
    if len(words) == 3:
        words = [words[0], "plain", *words[1:]]
    if (
        len(words) != 4
        or words[3] != "background"
        or words[2] not in COLORS
        or words[1] not in BACKGROUND_TEXTURES
    ):
        return None
    return words[2], words[1]


def _question(kind: str, text: str, texts: list[str]) -> Question | None:
    """None when the text is not one of its own candidates (an article or spacing the grammar would not
    write): such a question could not be answered right."""
    return Question(kind, tuple(texts), texts.index(text)) if text in texts else None


def context_accuracy(
    scorer: ClipScorer, images: Sequence[ImageSource], texts: Sequence[str]
) -> tuple[float, dict[str, float]] | None:
    """The share of right picks over every question the `texts` (one per image) ask, and per kind; None
    when they ask nothing."""
    if len(images) != len(texts):
        raise ConfigError(f"{len(images)} images but {len(texts)} texts: give one text per image")
    asked = [(index, question) for index, text in enumerate(texts) for question in context_questions(text)]
    if not asked:
        return None
    candidates = sorted({t for _, question in asked for t in question.texts})
    position = {t: i for i, t in enumerate(candidates)}
    used = sorted({index for index, _ in asked})
    row = {index: i for i, index in enumerate(used)}
    cos = scorer.embed_images([images[i] for i in used]).double() @ scorer.embed_texts(candidates).double().T
    hits: dict[str, list[bool]] = {}
    for index, question in asked:
        picked = int(torch.argmax(cos[row[index], [position[t] for t in question.texts]]))  # [candidates]
        hits.setdefault(question.kind, []).append(picked == question.answer)
    every = [hit for kind_hits in hits.values() for hit in kind_hits]
    return sum(every) / len(every), {
        kind: sum(hits[kind]) / len(hits[kind]) for kind in KINDS if kind in hits
    }
