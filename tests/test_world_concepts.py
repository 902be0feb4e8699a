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


def test_world_tokens_are_made_up_and_share_no_bpe_piece():
    import sys

    from bora_diffusion.clip_tokenizer import clip_tokenizer
    from bora_diffusion.world import WORDS

    sys.path.insert(0, str(CONCEPTS.parent / "scripts"))
    from make_world_concepts import TOKENS

    assert set(TOKENS) == set(NOVEL_CONCEPTS) and len(NOVEL_CONCEPTS) == 12
    tokenizer = clip_tokenizer()
    vocab = tokenizer.get_vocab()
    # The world's words and the examples' tokens: a concept token may share no piece with them either.
    taken = {piece for word in (*WORDS, "qwiv", "bxj") for piece in tokenizer.tokenize(word)}
    seen: dict[str, str] = {}
    for name, token in TOKENS.items():
        assert token + "</w>" not in vocab, f"{token} is a CLIP word"
        for piece in tokenizer.tokenize(token):
            assert piece not in taken, f"{name}'s {token} shares {piece!r} with a world word"
            assert piece not in seen, f"{name}'s {token} shares {piece!r} with {seen.get(piece)}"
            seen[piece] = name


def test_world_references_tell_the_twelve_concepts_apart():
    """Identity is only meaningful if the world CLIP tells the concepts' own references apart: held-out views
    (seeds no folder uses) of each concept must match its own references best well above chance (1/12)."""
    import numpy as np

    from bora_diffusion.evaluation.identity import identity_shares
    from bora_diffusion.world import render_novel
    from bora_diffusion.world.scoring import WorldScorer

    views = {
        name: [render_novel(name, np.random.default_rng(1000 + i)) for i in range(8)]
        for name in NOVEL_CONCEPTS
    }
    references = {name: sorted((CONCEPTS / name).glob("*.png")) for name in NOVEL_CONCEPTS}
    shares = identity_shares(WorldScorer("default", device="cpu"), views, references)
    assert sum(shares.values()) / len(shares) >= 0.8
    assert min(shares.values()) >= 0.5
