"""Placement by layout guidance (bora_diffusion.layout_guidance) on the embedded base's tiny layout, tiny SD 2.x
and tiny SDXL.

What is checked: the guidance finds a word's tokens in every prompt (a concept token as all its vectors), its
energy (the word's attention share outside its box, squared) is what the layers report and falls as the latent
is steered, on every base (SDXL's added conditioning rerun as the pipeline passed it); the steered picture differs
from the plain one and the manifest records the placements; bad placements are one `error:` line before the base
loads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import bora_diffusion.pipeline
from bora_diffusion.cli import main
from bora_diffusion.embedded import build_tiny_pipeline
from bora_diffusion.embeddings import add_token
from bora_diffusion.errors import ConfigError
from bora_diffusion.layout_guidance import Placement, parse_placement, placed_sampling

LEFT = (0.0, 0.0, 0.5, 1.0)
SIDE = 64  # pixels
PROMPT = "a red toy beside a blue cup"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(each_tiny_base):
    return each_tiny_base[1]


def draw(pipe, placements, prompt: str = PROMPT, **knobs):
    """Four steps at guidance 3, steered by `placements` (none: plain); (images, the guidance or None)."""
    with placed_sampling(pipe, placements, height=SIDE, width=SIDE, guidance=3.0, **knobs) as steering:
        steer = {}
        if steering is not None:
            steering.begin([prompt])
            steer = {"callback_on_step_end": steering}
        images = pipe(
            prompt,
            num_inference_steps=4,
            guidance_scale=3.0,
            height=SIDE,
            width=SIDE,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **steer,
        ).images
    return images, steering


def test_the_guidance_finds_a_words_tokens_and_a_concept_tokens_vectors():
    pipe = build_tiny_pipeline(seed=0)
    add_token(pipe.tokenizer, pipe.text_encoder, "zq-thing", count=3, init_word="toy")
    placements = [Placement("zq-thing", LEFT), Placement("cup", (0.5, 0.0, 1.0, 1.0))]
    with placed_sampling(pipe, placements, height=SIDE, width=SIDE, guidance=3.0) as steering:
        steering.begin(["a zq-thing beside a cup", "a cup, a cup and a zq-thing"])
        # "a zq-thing beside a cup" -> <start> a zq-thing zq-thing_1 zq-thing_2 beside a cup <end>
        assert [positions.tolist() for positions in steering.rows[0]] == [[2, 3, 4], [7]]
        assert [positions.tolist() for positions in steering.rows[1]] == [[8, 9, 10], [2, 5]]
        with pytest.raises(ConfigError, match="placement: the prompt 'a red toy' does not name 'zq-thing'"):
            steering.begin(["a red toy"])


def test_steering_pulls_the_words_attention_into_its_box_on_every_base(pipe):
    plain, _ = draw(pipe, [])
    steered, steering = draw(pipe, [Placement("toy", LEFT)], rate=RATE_FOR_TINY)
    # Steps 1 to 3 are steered (after step 0, for the next one), 3 updates each; E is a squared share in [0, 1].
    assert len(steering.energies) == 3 and all(len(step) == 3 for step in steering.energies)
    assert all(0 <= e <= 1 for step in steering.energies for e in step)
    first, last = steering.energies[0][0], steering.energies[-1][-1]
    assert last < first, steering.energies  # the word's attention gathered inside its box
    assert np.abs(steered - plain).max() > 1e-3  # and the picture moved with it
    # Once the box holds the whole image, nothing lies outside it: no energy, no gradient, the plain picture.
    whole, steering = draw(pipe, [Placement("toy", (0.0, 0.0, 1.0, 1.0))], rate=RATE_FOR_TINY)
    assert max(e for step in steering.energies for e in step) < 1e-9
    np.testing.assert_allclose(whole, plain, atol=1e-6)


# The tiny random bases attend far more diffusely than a trained one, so their gradients are small: a larger rate
# shows the same descent in four steps.
RATE_FOR_TINY = 2000.0


def test_placement_specs_and_their_errors(tmp_path, monkeypatch, capsys):
    assert parse_placement("0,0,0.5,1=huzd", "--place 1") == Placement(
        "huzd", (0.0, 0.0, 0.5, 1.0), "--place 1"
    )

    def no_base(*_, **__):
        raise AssertionError("the base model loaded before the bad placement was refused")

    monkeypatch.setattr(bora_diffusion.pipeline, "load_base", no_base)
    for extra, message in [
        (["--place", "0,0,1.2,1=huzd"], "--place 1: box 0,0,1.2,1 leaves the image"),
        (["--place", "0,0,0.5,1=a huzd"], "--place 1: 'a huzd' is not one word"),
        (["--place", "0,0,0.5,1=huzd", "--region", "0.5,0,1,1=a cup"], "--place: give --region or --place"),
    ]:
        argv = ["generate", "--prompt", "a huzd circle", *extra, "--out", str(tmp_path / "gen")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_generate_places_and_records_it(tmp_path, capsys):
    prompt = "a red circle to the left of a blue square on a white background"  # the world's grammar
    argv = ["generate", "--prompt", prompt, "--steps", "3", "--seed", "0"]
    assert main([*argv, "--place", "0,0,0.5,1=circle", "--out", str(tmp_path / "placed")]) == 0
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "placed" / "manifest.json").read_text())
    assert manifest["placements"] == [{"word": "circle", "box": [0, 0, 0.5, 1], "where": "--place 1"}]
    assert "placements" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())
    placed = np.asarray(Image.open(tmp_path / "placed" / "p00-s0.png"), dtype=np.int16)
    plain = np.asarray(Image.open(tmp_path / "plain" / "p00-s0.png"), dtype=np.int16)
    assert np.abs(placed - plain).max() > 0
    assert main([*argv, "--place", "0,0,0.5,1=dog", "--out", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --place 1: the prompt {prompt!r} does not name 'dog'"), err
    assert not (tmp_path / "missing" / "manifest.json").exists()
