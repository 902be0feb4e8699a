"""The world: seeded scenes whose captions are true of their pixels, and novel concepts that scenes never show."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bora_diffusion.world import (
    COLORS,
    NOVEL_CONCEPTS,
    SHAPES,
    WORDS,
    Background,
    Scene,
    Thing,
    render_novel,
    sample_scene,
    sample_view,
    scenes,
)
from bora_diffusion.world.render import object_masks

PALETTE_NAMES = list(COLORS)
PALETTE = np.asarray([COLORS[name] for name in PALETTE_NAMES], dtype=np.float32)  # [k, 3]


def _many(seed: int, count: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(count)]


def _nearest_color(pixels: np.ndarray) -> str:
    """The palette color most pixels of `pixels` [m, 3] are nearest to."""
    distance = ((pixels[:, None, :].astype(np.float32) - PALETTE[None]) ** 2).sum(-1)  # [m, k]
    votes = np.bincount(distance.argmin(1), minlength=len(PALETTE_NAMES))
    return PALETTE_NAMES[int(votes.argmax())]


def _eroded(mask: np.ndarray) -> np.ndarray:
    """`mask` without its border pixels (the outline and the anti-aliased edge)."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def test_scenes_are_deterministic_for_a_seed():
    def first(seed: int) -> list[tuple[bytes, str]]:
        stream = scenes(seed)
        return [(image.tobytes(), caption) for image, caption in (next(stream) for _ in range(20))]

    assert first(7) == first(7)
    assert first(7) != first(8)
    image, caption = next(scenes(0))
    assert image.mode == "RGB" and image.size == (64, 64) and isinstance(caption, str)


def test_scene_renders_at_32_px_as_a_smaller_copy():
    scene = _many(1, 1)[0]
    small = np.asarray(scene.render(32), dtype=np.float32)
    shrunk = np.asarray(scene.render(64).resize((32, 32), Image.BOX), dtype=np.float32)
    assert small.shape == (32, 32, 3)
    assert np.abs(small - shrunk).mean() < 12


def test_captions_use_only_world_words_and_name_every_attribute():
    for scene in _many(2, 200):
        caption = scene.caption()
        assert set(caption.split()) <= WORDS, caption
        for thing in scene.things:
            assert thing.phrase() in caption
        assert caption.endswith(scene.background.phrase())
        assert scene.layout in caption


def test_rendered_colors_match_the_caption():
    for scene in _many(3, 150):
        pixels = np.asarray(scene.render(), dtype=np.float32)  # [64, 64, 3]
        masks = object_masks(scene)
        for thing, mask in zip(scene.things, masks, strict=True):
            core = _eroded(_eroded(mask))
            if core.sum() < 4:
                continue  # a small ring's band is too thin to have a core at 64 px
            assert _nearest_color(pixels[core]) == thing.color, scene.caption()
        outside = ~np.logical_or.reduce(masks)
        if scene.background.texture == "plain":
            assert _nearest_color(pixels[outside]) == scene.background.color, scene.caption()
        assert all(thing.color != scene.background.color for thing in scene.things)


def test_sizes_and_places_show_in_pixels():
    areas: dict[tuple[str, str], list[int]] = {}
    for scene in _many(4, 300):
        masks = object_masks(scene)
        centers = []
        for thing, mask in zip(scene.things, masks, strict=True):
            ys, xs = np.nonzero(mask)
            centers.append((xs.mean() / 64, ys.mean() / 64))
            if len(scene.things) == 1:
                areas.setdefault((thing.shape, thing.size), []).append(int(mask.sum()))
        if len(scene.things) == 1:
            (x, y), layout = centers[0], scene.layout
            expected = {
                "on the left": x < 0.4,
                "on the right": x > 0.6,
                "at the top": y < 0.4,
                "at the bottom": y > 0.6,
                "in the center": abs(x - 0.5) < 0.1 and abs(y - 0.5) < 0.1,
            }
            assert expected[layout], (scene.caption(), x, y)
        else:
            (x0, y0), (x1, y1) = centers
            expected = {
                "above": y0 < y1 - 0.3,
                "below": y0 > y1 + 0.3,
                "to the left of": x0 < x1 - 0.3,
                "to the right of": x0 > x1 + 0.3,
            }
            assert expected[scene.layout], (scene.caption(), centers)
    for shape in SHAPES:
        small, large = areas.get((shape, "small")), areas.get((shape, "large"))
        if small and large:
            assert max(small) * 1.8 < min(large), shape


def test_scene_objects_are_one_color_and_never_a_novel_concept():
    for scene in _many(5, 200):
        pixels = np.asarray(scene.render())
        for thing, mask in zip(scene.things, object_masks(scene), strict=True):
            assert thing.shape in SHAPES and thing.shape not in NOVEL_CONCEPTS
            core = _eroded(_eroded(mask))
            # Inside its outline a world object is its own color, at most darkened where the outline reaches in
            # at a concave corner: one hue, where every novel concept has several.
            color = np.asarray(COLORS[thing.color], dtype=np.float32)
            inner = pixels[core].astype(np.float32)  # [m, 3]
            brightness = inner @ color / (color @ color)  # [m]
            assert (np.abs(inner - brightness[:, None] * color) < 4).all(), scene.caption()
            if len(inner) >= 30:  # thin ring bands are mostly edge
                assert (inner == color).all(-1).mean() > 0.9, scene.caption()


@pytest.mark.parametrize("name", NOVEL_CONCEPTS)
def test_novel_concepts_vary_in_pose_but_keep_several_colors(name):
    first = render_novel(name, np.random.default_rng(0))
    assert first.size == (64, 64) and first.mode == "RGB"
    assert first.tobytes() == render_novel(name, np.random.default_rng(0)).tobytes()
    assert first.tobytes() != render_novel(name, np.random.default_rng(1)).tobytes()
    assert render_novel(name, np.random.default_rng(0), size=32).size == (32, 32)
    plain = Background("white")
    image = np.asarray(render_novel(name, np.random.default_rng(2), background=plain)).reshape(-1, 3)
    colors = {tuple(pixel) for pixel in image if tuple(pixel) != COLORS["white"]}
    # At least two flat colors of 8 pixels or more (the background and anti-aliased edges aside): a world
    # object has one.
    counts = {color: int((image == color).all(-1).sum()) for color in colors}
    assert sum(count >= 8 for count in counts.values()) >= 2, name


def test_novel_views_vary_size_and_background():
    rng = np.random.default_rng(0)
    views = [sample_view(NOVEL_CONCEPTS[0], rng) for _ in range(40)]
    assert len({view.size_word for view in views}) == 2
    assert len({view.background.color for view in views}) >= 4
    assert len({view.mirrored for view in views}) == 2


def test_bad_words_are_refused():
    with pytest.raises(ValueError, match="unknown shape"):
        Thing("blob", "red", "small", 0.25, 0.5, 0.5)
    with pytest.raises(ValueError, match="unknown texture"):
        Background("red", "wavy")
    with pytest.raises(ValueError, match="needs a place"):
        Scene((Thing("star", "red", "small", 0.25, 0.5, 0.5),), Background("blue"), "above")
