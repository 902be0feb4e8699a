"""The identity-ceiling benchmark (scripts/bench_identity.py) on the shipped base: every concept gets a row in
every setting, fresh views are told apart, and `--vae` reads another VAE through the same round trip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bora_diffusion.embedded import shipped_base_dir
from bora_diffusion.world import NOVEL_CONCEPTS

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_identity  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shipped_base_dir() / "unet.safetensors").exists(), reason="no shipped world base in this checkout"
)


def test_fresh_views_and_both_round_trips_are_scored(tmp_path):
    from bora_diffusion.pipeline import load_base

    vae = tmp_path / "vae"
    load_base(None).vae.save_pretrained(vae)  # the base's own VAE, read again through --vae
    out = tmp_path / "identity.json"
    assert bench_identity.main(["--views", "4", "--threads", "1", "--vae", str(vae), "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    fresh, base_vae, other_vae = results.values()
    for result in results.values():
        assert set(result["identity"]) == set(NOVEL_CONCEPTS) == set(result["clip_i"])
        assert all(0.0 <= share <= 1.0 for share in result["identity"].values())
    assert (
        fresh["means"]["identity"] >= 0.8
    )  # the world CLIP tells held-out renders apart (test_world_concepts)
    assert fresh["means"]["clip_i"] > base_vae["means"]["clip_i"]  # a round trip loses detail
    # What docs/benchmarks.md reads off it: the shipped VAE loses identity on average (0.69 of 0.95 at 32 views)
    # and all of notched-ring's. A base whose VAE keeps it (release 3) updates this line.
    assert base_vae["means"]["identity"] < fresh["means"]["identity"] - 0.1
    assert base_vae["identity"]["notched-ring"] <= 0.25
    # The same VAE by another road scores the same.
    assert other_vae["identity"] == base_vae["identity"]
    assert other_vae["clip_i"] == pytest.approx(base_vae["clip_i"], abs=1e-6)
