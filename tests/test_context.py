"""Context accuracy: the questions a world prompt asks about its background and companion, and the world CLIP
answering them on the world's own renders."""

from __future__ import annotations

from collections import Counter

import pytest

from bora_diffusion.errors import ConfigError
from bora_diffusion.evaluation.prompt_sets import fill_prompts, load_prompt_set
from bora_diffusion.world.clip_eval import held_out_scenes
from bora_diffusion.world.context import KINDS, context_accuracy, context_questions
from bora_diffusion.world.scoring import WorldScorer as ClipScorer
from bora_diffusion.world.vocabulary import BACKGROUND_TEXTURES, COLORS, SHAPES


def _one_word_changed(text: str, other: str) -> bool:
    """`other` is `text` with one word replaced, added or dropped ("plain" is never written), articles aside
    (they follow the next word: "an orange" but "a red" background)."""
    words, others = Counter(text.split()), Counter(other.split())
    removed, added = words - others, others - words
    for article in ("a", "an"):
        removed.pop(article, None)
        added.pop(article, None)
    return sum(removed.values()) <= 1 and sum(added.values()) <= 1 and bool(removed + added)


def test_a_companion_prompt_asks_four_questions_each_changing_one_word():
    text = "a large circle above a small red square on an orange background"
    questions = {q.kind: q for q in context_questions(text)}
    assert list(questions) == list(KINDS)
    sizes = [len(questions[kind].texts) for kind in KINDS]
    assert sizes == [len(COLORS), len(BACKGROUND_TEXTURES), len(COLORS), len(SHAPES)]
    for question in questions.values():
        assert question.texts[question.answer] == text
        assert len(set(question.texts)) == len(question.texts)
        for other in question.texts:
            assert other == text or _one_word_changed(text, other), other
    assert "on a red background" in questions["background color"].texts[0]
    assert questions["background texture"].texts[1].endswith("on a striped orange background")
    assert "small blue square" in " ".join(questions["companion color"].texts)
    assert "small red heart" in " ".join(questions["companion shape"].texts)


def test_every_world_prompt_asks_about_its_background_and_other_grammars_ask_nothing():
    filled = fill_prompts(load_prompt_set("world"), "huzd", "circle")
    texts = [text.replace("huzd ", "") for text in filled]  # the scoring texts: token -> class word
    kinds = [[q.kind for q in context_questions(text)] for text in texts]
    assert all(k[:2] == ["background color", "background texture"] for k in kinds)
    assert sum("companion shape" in k for k in kinds) == 2  # the two prompts with a companion object
    assert context_questions("a photo of a dog on the beach") == []
    assert context_questions("a large circle on a green lawn") == []
    no_background = context_questions("a large circle above a small red square")
    assert [q.kind for q in no_background] == ["companion color", "companion shape"]


def test_world_clip_reads_the_context_of_world_renders_and_not_of_shuffled_ones():
    scenes = held_out_scenes(64)
    images = [scene.render() for scene in scenes]
    captions = [scene.caption() for scene in scenes]
    scorer = ClipScorer("default", device="cpu")
    accuracy, per_kind = context_accuracy(scorer, images, captions)
    assert accuracy > 0.9 and per_kind["background color"] > 0.95, per_kind  # measured 0.95, 1.00
    shuffled, _ = context_accuracy(scorer, images[1:] + images[:1], captions)
    assert shuffled < 0.3  # measured 0.13 (chance about 0.16)
    assert context_accuracy(scorer, images[:2], ["a photo of a dog", "a cat"]) is None
    with pytest.raises(ConfigError, match="2 images but 1 texts"):
        context_accuracy(scorer, images[:2], captions[:1])
