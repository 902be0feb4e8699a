"""Context accuracy: does the tuned model still draw what a prompt says around the concept?

CLIP-T scores the whole prompt with the concept's token replaced by its class word, so it falls when the concept
stops looking like its class word even when the background and the companion object are exactly the prompt's.
Context accuracy asks about those alone: for each context attribute a prompt names, CLIP picks among the
prompt's text with that one attribute set to every value the grammar has; a hit is picking the prompt's own. The
concept's words are the same in every candidate, so how the concept is drawn cannot decide the pick.

Which attributes a text names is its grammar's business (`ContextGrammar`): the world's, for prompts in its
caption grammar, is `bora_diffusion.world.context`, and the scorer that reads world prompts carries it
(`ClipScorer.context_grammar`). A text that asks nothing (another grammar, no background) is skipped; a set of
texts that asks nothing at all has no context accuracy (None), and neither has a scorer without a grammar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import ConfigError
from .images import ImageSource

__all__ = ["ContextGrammar", "Embedder", "Question", "context_accuracy"]


@dataclass(frozen=True)
class Question:
    kind: str  # one of its grammar's kinds
    texts: tuple[str, ...]  # the candidates: the text with the attribute set to each value
    answer: int  # texts[answer] is the text itself


@dataclass(frozen=True)
class ContextGrammar:
    """What a prompt grammar asks about a text's context: the kinds of question (in the order reports list
    them) and `questions(text)`, the questions one scoring text asks (none for a text outside the grammar)."""

    kinds: tuple[str, ...]
    questions: Callable[[str], list[Question]]


class Embedder(Protocol):
    """What context accuracy needs of a scorer: unit-norm image and text embeddings ([N, D] each)."""

    def embed_images(self, images: Sequence[ImageSource]) -> torch.Tensor: ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def context_accuracy(
    scorer: Embedder, images: Sequence[ImageSource], texts: Sequence[str], grammar: ContextGrammar
) -> tuple[float, dict[str, float]] | None:
    """The share of right picks over every question the `texts` (one per image) ask in `grammar`, and per kind;
    None when they ask nothing."""
    if len(images) != len(texts):
        raise ConfigError(f"{len(images)} images but {len(texts)} texts: give one text per image")
    asked = [(index, question) for index, text in enumerate(texts) for question in grammar.questions(text)]
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
        kind: sum(hits[kind]) / len(hits[kind]) for kind in grammar.kinds if kind in hits
    }
