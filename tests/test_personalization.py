"""Personalization on the shipped world base, end to end: does training a concept actually teach it?

The default training run of one shipped world concept on the embedded base (its concept.toml recipe: 500 steps
of 4 images, adapters on the cross-attention keys and values under prompt lock 2 plus the token's own
embedding as 3 vectors under word lock 10, ED-LoRA),
then the concept's prompts generated on the base and on the tuned model with the same seeds, scored by the
shipped world CLIP against the concept's reference images (CLIP-I, the "default" conventions). The gain must
clear a margin that a broken trainer cannot reach:

- gradients that never reach the adapter or the embedding leave the adapter at zero and the token at its
  initial vectors (its class word's embedding, three times), so the tuned model is the base reading "circle
  circle circle circle" where the prompt says "huzd circle": it scores near the base (measured once by cutting
  them, below);
- prompting other words in the token's place (the evaluation's panel of eight made-up words, every prompt with
  every word) must not score the gain either (drift, over the base reading the same words): the identity has to
  be bound to the token, not smeared over everything the model draws.

Measured with this test's settings (release 2 of the shipped base, the world CLIP, the 500-step recipe of 4
images a step): base 0.216, tuned 0.614 (gain +0.398); other words 0.308 on the base, 0.328 tuned (drift
+0.020). With `torch.Tensor.backward` replaced by a no-op (no gradient reaches the adapter or the token) the
tuned model scores 0.241 (gain +0.024, drift +0.000) and the test fails. The recipe before (600 steps of one
image, prompt lock 1) gained +0.183 (drift -0.011; with one other word, notched-ring's token "vlek", as the test
read it then: +0.008). The one-vector 400-step recipe before (commit 40f4be0)
gained +0.414 here (other token +0.027, -0.152 with no gradient; those other-token figures, down to release
1's below, were taken over the base reading the concept's token, not the other one): bolt-circle, at guidance
5, learns less under the new recipe, while the six concepts' mean at guidance 3 learns more
(docs/benchmarks.md). Unlocked, the one-vector recipe gained +0.439 (other token +0.005); on every attention
projection +0.489 (other token -0.010), the 200-step recipe +0.341 (other token +0.104); on release 1 the test
measured +0.176 and -0.115 (-0.219 with no gradient); before the world concepts trained their token (adapters
only, 150 steps), +0.195 and -0.079 (+0.000 with no gradient).

With that one word the check failed a recipe: 4 images a step (`batch_size = 4`, under prompt lock 2) gained
+0.446 with the token and +0.162 with "vlek" (0.246 -> 0.408). Which words pick a concept up varies a lot (under
4 images a step "vlok" +0.21, "qorb" -0.06), so one word was a tripwire rather than a measure; over the panel
the same recipe drifts +0.015 (docs/benchmarks.md, "Drift"). At 600 steps its worst fused concept sat on the
issue's 0.95 retention line; at 500 steps it did not, and the concepts train that way now.

Sampling uses guidance 5, not the base's default 3: at 3 (with the previous world CLIP) the same run gained
+0.282 with its token but +0.228 with the other one (the update binds to the class word "circle" nearly as
much as to the token), which the check on other words below refuses; at 5 the token carries the identity.

Skipped when the package has no shipped world base (a checkout without the weight files).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bora_diffusion.concept import load_concept
from bora_diffusion.embedded import EMBEDDED_NAME, default_pipeline, shipped_base_dir
from bora_diffusion.evaluation import fill_prompts, fill_with_words, load_prompt_set
from bora_diffusion.evaluation.run_settings import OTHER_WORDS
from bora_diffusion.generate import SamplingSettings, generate
from bora_diffusion.inject import eject
from bora_diffusion.merge import compose
from bora_diffusion.train import train_concepts
from bora_diffusion.world.scoring import WorldScorer as ClipScorer

REPO = Path(__file__).resolve().parent.parent


CONCEPT = "bolt-circle"
MARGIN = 0.15  # CLIP-I gain the run must reach (the target); with gradients cut it scored +0.024
SEEDS = [0, 1]
SAMPLING = SamplingSettings(steps=15, guidance=5.0)

pytestmark = [
    pytest.mark.skipif(
        not (shipped_base_dir() / "unet.safetensors").exists(),
        reason="no shipped world base in this checkout",
    ),
    pytest.mark.slow,
]


def image_alignment(pipe, concept, scorer, out, other_words: bool = False) -> float:
    """CLIP-I of the world prompts with the concept's token (seeds SEEDS), or with the evaluation's panel of
    other words in its place (every prompt with every word, once at seed 0, as the evaluation's drift reads)."""
    templates = load_prompt_set("world")
    if other_words:
        prompts, seeds = fill_with_words(templates, OTHER_WORDS, concept.class_word), [0]
    else:
        prompts, seeds = fill_prompts(templates, concept.token, concept.class_word), SEEDS
    images = generate(pipe, prompts, seeds, out, settings=SAMPLING).images
    return scorer.image_alignment(images, list(concept.images)).mean


@pytest.fixture(scope="module")
def run(tmp_path_factory, end_to_end_threads):
    """The base's scores, then one training run; returns (pipe, concept, tuned file, scorer, out, base scores with
    the token and with the other words). The base is scored first: training adds the concept's token to this
    pipeline's tokenizer. It is scored with the other words too, because a made-up word alone moves the base's
    images (and their CLIP-I) a lot: "vlok circle" scores 0.10 against the references, "trev circle" 0.39."""
    out = tmp_path_factory.mktemp("personalization")
    before = torch.get_num_threads()
    torch.set_num_threads(end_to_end_threads)
    try:
        pipe = default_pipeline()
        pipe.set_progress_bar_config(disable=True)
        concept = load_concept(REPO / "concepts" / CONCEPT)
        scorer = ClipScorer("default", device="cpu")
        base = {
            "token": image_alignment(pipe, concept, scorer, out / "base"),
            "other": image_alignment(pipe, concept, scorer, out / "base-other", other_words=True),
        }
        adapter = concept.train.adapter_config()
        config = concept.train.train_config()  # the concept's own recipe: the default run of `train`
        [file] = train_concepts(
            pipe, [(concept, adapter, config)], out_dir=out / "train", base_name=EMBEDDED_NAME
        )
        eject(pipe.unet)
        yield pipe, concept, file, scorer, out, base
    finally:
        torch.set_num_threads(before)


def test_training_raises_image_alignment_by_the_margin(run):
    pipe, concept, file, scorer, out, base = run
    base, other_base = base["token"], base["other"]
    compose(pipe, [(file, 1.0)])
    try:
        tuned = image_alignment(pipe, concept, scorer, out / "tuned")
        wrong = image_alignment(pipe, concept, scorer, out / "tuned-other", other_words=True)
    finally:
        eject(pipe.unet)
    drift = wrong - other_base
    print(
        f"CLIP-I base {base:.3f} tuned {tuned:.3f} (gain {tuned - base:+.3f}); other words base "
        f"{other_base:.3f} tuned {wrong:.3f} (drift {drift:+.3f})"
    )
    assert tuned - base >= MARGIN
    # Other words before the class word may pick up some of the concept (DreamBooth's language drift: the
    # update also binds to "circle"), but far less than the trained token and below the margin.
    assert drift < MARGIN
    assert tuned - base > 2 * drift
