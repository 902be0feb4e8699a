"""The questions a world prompt asks about its context: the world's grammar for context accuracy.

Context accuracy (`bora_diffusion.evaluation.context`) asks, for each context attribute a prompt names, whether
CLIP picks the prompt's own text among its one-attribute variants. In the world's caption grammar (the `world`
prompt set) the background closes the prompt ("... on a striped blue background") and a companion is
"<size> <color> <shape>", so a prompt asks about the background's color and texture and the companion's color and
shape, each among every value the world has: chance is 1 / 8 for colors and shapes, 1 / 4 for textures. The
concept's words are the same in every candidate: CLIP-T falls when "huzd circle" is drawn as its references'
rimmed disc (which the world CLIP reads as a ring) even when the background and the companion are exactly the
prompt's; context accuracy does not.

A text in another grammar (or without a background) asks nothing, so real-checkpoint runs with other prompt sets
are left as they were. `WORLD_GRAMMAR` is what `world.scoring.WorldScorer` carries.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..evaluation.context import ContextGrammar, Embedder, Question
from ..evaluation.context import context_accuracy as grammar_accuracy
from ..evaluation.images import ImageSource
from .scenes import Background
from .vocabulary import BACKGROUND_TEXTURES, COLORS, SHAPES, SIZES

__all__ = ["KINDS", "WORLD_GRAMMAR", "context_accuracy", "context_questions"]

KINDS = ("background color", "background texture", "companion color", "companion shape")


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


WORLD_GRAMMAR = ContextGrammar(KINDS, context_questions)


def context_accuracy(
    scorer: Embedder, images: Sequence[ImageSource], texts: Sequence[str]
) -> tuple[float, dict[str, float]] | None:
    """Context accuracy in the world's grammar: the share of right picks over every question the `texts` (one
    per image) ask, and per kind; None when they ask nothing."""
    return grammar_accuracy(scorer, images, texts, WORLD_GRAMMAR)
