"""The shipped concepts: every folder in concepts/ loads and validates, together, and the world's novel
concepts are all there."""

from __future__ import annotations

from pathlib import Path

from bora_diffusion.concept import load_concepts
from bora_diffusion.world import NOVEL_CONCEPTS, SHAPES

CONCEPTS = Path(__file__).resolve().parent.parent / "concepts"


def test_every_shipped_concept_loads_together():
    folders = sorted(path.parent for path in CONCEPTS.glob("*/concept.toml"))
    concepts = load_concepts(folders, min_size=64)  # also refuses shared tokens and names
    names = {concept.name for concept in concepts}
    assert {"kettle", "robot", *NOVEL_CONCEPTS} <= names
    for concept in concepts:
        if concept.name in NOVEL_CONCEPTS:
            assert concept.class_word in SHAPES  # a class the world's base model knows
            assert 6 <= len(concept.images) <= 10
            assert all(concept.token in caption for caption in concept.captions.values())
