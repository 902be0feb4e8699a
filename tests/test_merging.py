"""Merging on the shipped world base, end to end: do concepts on disjoint slots stay themselves when fused?

Three shipped world concepts train one after another with their own concept.toml recipe (sbora_fa rank 4 on
the cross-attention keys and values under prompt lock 2, 500 steps of 4 images, the token's embedding too as 3
vectors under word lock 10) on one slot ledger; then each concept's `world` prompts are drawn with it alone and with all three fused into one model
(same prompts and seeds) and scored by the shipped world CLIP. A merge that works keeps, for every concept, the
prompt's background and companion (context accuracy), the prompt as a whole (CLIP-T) and the concept's look
(CLIP-I and identity) near their alone values. The failure this guards against is the one the project hit:
updates that fire on every prompt, so the fused model draws one patchwork of all the concepts whatever it is
asked.

Measured with this test's settings (release 2 of the shipped base), alone -> fused:

    concept        context       CLIP-T           CLIP-I          identity
    band-triangle  0.72 -> 0.69   0.442 ->  0.438  0.555 -> 0.576  0.83 -> 0.83
    bolt-circle    0.69 -> 0.66   0.123 ->  0.079  0.594 -> 0.628  0.50 -> 0.33
    spiral-star    0.84 -> 0.78   0.473 ->  0.476  0.584 -> 0.633  0.25 -> 0.33

The recipe before (600 steps of one image, prompt lock 1) measured 0.78 -> 0.69, 0.468 -> 0.454, 0.532 ->
0.542, 0.83 -> 0.83 (band-triangle), 0.69 -> 0.62, 0.066 -> 0.049, 0.645 -> 0.671, 0.50 -> 0.33
(bolt-circle) and 0.84 -> 0.81, 0.429 -> 0.432, 0.593 -> 0.622, 0.42 -> 0.50 (spiral-star).

The one-vector recipe before (400 steps, no word lock, commit 40f4be0) kept every identity (0.83, 0.58, 0.67)
and context within 0.06, for less learned alone. Without the lock (commit 29509e8) the same run passed with
less to spare (band-triangle
CLIP-T 0.478 -> 0.411, bolt-circle identity 0.42 -> 0.25, spiral-star context 0.81 -> 0.62). Stronger
recipes fail it: rank 8 and 800 steps under lock 1 (band-triangle identity 0.92 -> 0.50), or at lr 2e-3 under
lock 2 (band-triangle identity 0.83 -> 0.42, CLIP-T 0.419 -> 0.267): spiral-star takes band-triangle over. And
with the adapters on every attention projection, unlocked (`train_and_evaluate(out, 2, targets="attention")` on
the recipe of commit 29509e8), the fused model stops following the prompt:

    band-triangle  0.75 -> 0.56   0.477 ->  0.202  0.489 -> 0.599  0.83 -> 0.33
    bolt-circle    0.66 -> 0.56  -0.080 -> -0.147  0.747 -> 0.763  0.17 -> 0.00
    spiral-star    0.78 -> 0.38   0.479 ->  0.221  0.556 -> 0.781  0.67 -> 1.00

which fails each check below for at least one concept, except the CLIP-I retention: a patchwork of the
concepts' palettes is close to each concept's references, so CLIP-I alone cannot see this failure.

Skipped when the package has no shipped world base (a checkout without the weight files).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bora_diffusion.concept import load_concept
from bora_diffusion.embedded import EMBEDDED_NAME, default_pipeline, shipped_base_dir
from bora_diffusion.evaluation import (
    EvalConcept,
    EvaluationReport,
    RunSettings,
    evaluate_concepts,
)
from bora_diffusion.generate import SamplingSettings
from bora_diffusion.inject import eject
from bora_diffusion.train import train_concepts
from bora_diffusion.world.scoring import WorldScorer as ClipScorer

REPO = Path(__file__).resolve().parent.parent
CONCEPTS = ("band-triangle", "bolt-circle", "spiral-star")
SETTINGS = RunSettings(
    prompt_set="world",
    images_per_prompt=2,
    sampling=SamplingSettings(steps=15, guidance=3.0),
    before=False,
    other_words=(),  # drift is the personalization test's; this one asks what fusing keeps
)

pytestmark = [
    pytest.mark.skipif(
        not (shipped_base_dir() / "unet.safetensors").exists(),
        reason="no shipped world base in this checkout",
    ),
    pytest.mark.slow,
]


def train_and_evaluate(out: Path, threads: int, targets: str | None = None) -> EvaluationReport:
    """Train CONCEPTS on one ledger (their own recipe, or on `targets` instead), evaluate alone and fused."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pipe = default_pipeline()
        pipe.set_progress_bar_config(disable=True)
        concepts = [load_concept(REPO / "concepts" / name) for name in CONCEPTS]
        jobs = [(c, c.train.adapter_config(targets=targets), c.train.train_config()) for c in concepts]
        files = train_concepts(pipe, jobs, out_dir=out / "train", base_name=EMBEDDED_NAME)
        eject(pipe.unet)  # evaluation loads each setting's files onto the bare base itself
        items = [EvalConcept(file, concept.folder) for file, concept in zip(files, concepts, strict=True)]
        scorer = ClipScorer("default", device="cpu")
        return evaluate_concepts(
            pipe, items, scorer, out / "eval", base_name=EMBEDDED_NAME, settings=SETTINGS
        )
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def report(tmp_path_factory, end_to_end_threads) -> EvaluationReport:
    return train_and_evaluate(tmp_path_factory.mktemp("merging"), end_to_end_threads)


def test_fused_concepts_keep_the_prompt_and_their_identity(report):
    for concept in report.concepts:
        alone, fused = concept.alone, concept.composed
        print(
            f"{concept.name}: context {alone.context:.2f} -> {fused.context:.2f}, CLIP-T {alone.clip_t:.3f} -> "
            f"{fused.clip_t:.3f}, CLIP-I {alone.clip_i:.3f} -> {fused.clip_i:.3f}, identity {alone.identity:.2f}"
            f" -> {fused.identity:.2f}"
        )
    for concept in report.concepts:
        alone, fused = concept.alone, concept.composed
        # The measure: each concept keeps 95% of its single-concept image alignment.
        assert concept.retention("clip_i") >= 0.95, concept.name
        # The prompt survives fusion (worst drop measured 0.054; every projection adapted: 0.275).
        assert fused.clip_t >= alone.clip_t - 0.15, concept.name
        # Its background and companion too (worst 0.06; every projection: 0.40).
        assert fused.context >= alone.context - 0.3, concept.name
        # And the concept is still told apart from the others (worst 0.00; every projection: 0.50).
        assert fused.identity >= alone.identity - 0.34, concept.name
