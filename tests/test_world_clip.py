"""The world CLIP: its training pieces are exact, its file round-trips, and the shipped weights read the world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bora_diffusion.errors import ConfigError
from bora_diffusion.evaluation import Conventions
from bora_diffusion.evaluation.identity import identity_shares
from bora_diffusion.evaluation.images import reference_images
from bora_diffusion.world import sample_scene
from bora_diffusion.world.clip import WEIGHTS_FILE, WorldClip, build_model, save_world_clip, tokenizer
from bora_diffusion.world.clip_eval import evaluate, held_out_scenes
from bora_diffusion.world.clip_training import (
    Batch,
    TrainSettings,
    clip_loss,
    colorless_caption,
    encode_text,
    make_batch,
    second_view,
    tokenize_captions,
    training_vocabulary,
)
from bora_diffusion.world.distractors import attribute_variants, attributes, distractors
from bora_diffusion.world.random_objects import random_object_views
from bora_diffusion.world.scoring import WorldScorer as ClipScorer

shipped = pytest.mark.skipif(not WEIGHTS_FILE.is_file(), reason="no shipped world-clip weights")
REPO = Path(__file__).resolve().parents[1]


def _scenes(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(count)]


def test_distractors_are_wrong_in_one_attribute_each():
    rng = np.random.default_rng(0)
    for scene in _scenes(100):
        truth = scene.caption()
        wrong = distractors(scene, rng, 5)
        assert len(set(wrong)) == 5 and truth not in wrong
        one_change = {text for a in attributes(scene) for _, text in attribute_variants(scene, a)}
        assert set(wrong) <= one_change
        for attribute in attributes(scene):
            assert truth in [text for _, text in attribute_variants(scene, attribute)]


def test_fast_tokenization_and_truncated_text_tower_are_exact():
    captions = [scene.caption() for scene in _scenes(50)]
    tokens = tokenize_captions(captions)  # [50, L]
    full = tokenizer()(captions)  # [50, context]
    assert torch.equal(tokens, full[:, : tokens.shape[1]]) and not full[:, tokens.shape[1] :].any()
    model = build_model(seed=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens), model.encode_text(full), rtol=1e-5, atol=1e-5)


def test_file_round_trip_keeps_trained_rows_and_zeroes_the_rest(tmp_path):
    vocabulary = training_vocabulary()
    model = build_model(vocab_size=len(vocabulary.ids), seed=2)
    path = save_world_clip(model, vocabulary, tmp_path / "clip.safetensors")
    loaded = WorldClip.load(path).model
    table = loaded.token_embedding.weight  # [49408, width]
    ids = torch.tensor(vocabulary.ids)
    expected = model.token_embedding.weight.detach().half().float()
    torch.testing.assert_close(table[ids], expected)
    unused = torch.ones(table.shape[0], dtype=torch.bool)
    unused[ids] = False
    assert not table[unused].any()
    captions = [scene.caption() for scene in _scenes(4)]
    with torch.no_grad():
        compact = encode_text(model, vocabulary.encode(tokenize_captions(captions)))
        restored = loaded.encode_text(tokenizer()(captions))
    torch.testing.assert_close(restored, compact, rtol=0.02, atol=0.02)  # fp16 weights in the file


@shipped
def test_shipped_clip_picks_the_right_caption_well_above_chance():
    scenes = held_out_scenes(48)
    report = evaluate(WorldClip.load(), [scene.render() for scene in scenes], scenes)
    assert report.retrieval_chance == pytest.approx(1 / 6)
    assert report.retrieval >= 0.6, report.lines()
    assert report.classification >= 0.8, report.lines()
    # A lone thing's place and two things' relation are reported apart (the base learns them very differently).
    kinds = {"shape", "color", "size", "place", "relation", "background color", "background texture"}
    assert set(report.per_attribute) == kinds


@shipped
def test_scorer_default_backbone_is_the_shipped_world_clip():
    conventions = Conventions(backbone="world-clip", weights="embedded", token_rule="keep")
    scorer = ClipScorer(conventions, device="cpu")
    assert scorer._loaded.weights.kind == "embedded"
    scenes = _scenes(6, seed=5)
    images = [scene.render() for scene in scenes]
    right = scorer.text_alignment(images, [scene.caption() for scene in scenes])
    rng = np.random.default_rng(0)
    wrong_captions = [distractors(scene, rng, 1)[0] for scene in scenes]
    wrong = scorer.text_alignment(images, wrong_captions)
    assert right.mean > wrong.mean


def test_a_second_view_keeps_the_objects_and_changes_the_background():
    rng = np.random.default_rng(7)
    for _ in range(50):
        scene = sample_scene(rng)
        view = second_view(scene, rng)
        assert [(t.shape, t.color, t.size) for t in view.things] == [
            (t.shape, t.color, t.size) for t in scene.things
        ]
        assert view.background.color != scene.background.color
        assert view.background.color not in {t.color for t in scene.things}
        assert view.layout == scene.layout


def test_identity_views_add_an_image_to_image_term_and_nothing_else():
    """The batch carries P second views after the B captioned images; with weight 0 the loss is exactly the
    caption loss of the B images, and the identity term adds a positive InfoNCE on top."""
    vocabulary = training_vocabulary()
    settings = TrainSettings(batch_size=6, hard_negatives=1, identity_pairs=3, identity_weight=1.0)
    batch = make_batch(np.random.default_rng(0), settings, vocabulary)
    assert batch.images.shape[0] == 9 and batch.pairs == 3 and batch.tokens.shape[0] == 12
    model = build_model(vocab_size=len(vocabulary.ids), seed=0).eval()  # eval: per-image features
    with torch.no_grad():
        without, accuracy = clip_loss(model, batch, identity_weight=0.0)
        plain, plain_accuracy = clip_loss(model, Batch(images=batch.images[:6], tokens=batch.tokens))
        weighted, _ = clip_loss(model, batch, identity_weight=1.0)
    assert without.item() == pytest.approx(plain.item(), abs=1e-5) and accuracy == plain_accuracy
    assert weighted.item() > without.item() + 0.1  # ln(3) ~ 1.1 for an untrained model


def test_a_colorless_caption_drops_object_colors_and_nothing_else():
    from bora_diffusion.world.vocabulary import COLORS

    rng = np.random.default_rng(3)
    dropped_all = 0
    for _ in range(60):
        scene = sample_scene(rng)
        full, partial = scene.caption().split(), colorless_caption(scene, rng).split()
        missing = len(full) - len(partial)
        assert 1 <= missing <= len(scene.things)
        assert [w for w in full if w not in COLORS] == [w for w in partial if w not in COLORS]
        assert partial[-2:] == full[-2:]  # "... <color> background": the background keeps its color
        dropped_all += missing == len(scene.things) == 2
    assert dropped_all > 0


@shipped
def test_identity_tells_two_shipped_concepts_apart_and_sees_a_swap():
    """Each concept's own references match it best (identity 1), and images of the other concept score 0: what a
    composed model that drew the wrong concept would get. (Not every pair of shipped concepts is this far apart
    for the world CLIP: docs/benchmarks.md lists each concept's identity among all six.)"""
    scorer = ClipScorer(device="cpu")
    names = ("bolt-circle", "eye-heart")
    references = {name: reference_images(REPO / "concepts" / name) for name in names}
    assert identity_shares(scorer, references, references) == {name: 1.0 for name in names}
    swapped = {names[0]: references[names[1]], names[1]: references[names[0]]}
    assert identity_shares(scorer, swapped, references) == {name: 0.0 for name in names}
    with pytest.raises(ConfigError, match="two or more concepts"):
        identity_shares(scorer, {names[0]: references[names[0]]}, references)


def test_random_objects_join_the_identity_term_as_pairs_and_nothing_else():
    """Q random objects add 2Q images after the captioned ones (first views, then second views): with weight 0
    the loss is exactly the caption loss, with weight 1 the identity term adds a positive InfoNCE over them."""
    vocabulary = training_vocabulary()
    settings = TrainSettings(batch_size=6, hard_negatives=1, novel_pairs=2, identity_weight=1.0)
    batch = make_batch(np.random.default_rng(0), settings, vocabulary)
    assert batch.images.shape[0] == 10 and batch.novel_pairs == 2 and batch.tokens.shape[0] == 12
    model = build_model(vocab_size=len(vocabulary.ids), seed=0).eval()
    with torch.no_grad():
        without, _ = clip_loss(model, batch, identity_weight=0.0)
        plain, _ = clip_loss(model, Batch(images=batch.images[:6], tokens=batch.tokens))
        weighted, _ = clip_loss(model, batch, identity_weight=1.0)
    assert without.item() == pytest.approx(plain.item(), abs=1e-5)
    assert weighted.item() > without.item() + 0.1  # ln(2) ~ 0.7 for an untrained model


def test_random_objects_are_seeded_and_two_views_show_one_object():
    first, second = random_object_views(np.random.default_rng(3))
    again = random_object_views(np.random.default_rng(3))
    for view, same in zip((first, second), again, strict=True):
        assert np.array_equal(np.asarray(view), np.asarray(same))
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    other = random_object_views(np.random.default_rng(4))[0]
    assert not np.array_equal(np.asarray(first), np.asarray(other))
