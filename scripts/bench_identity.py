"""How much identity can the embedded base hold? Fresh views of the twelve world concepts, scored as generations are.

    source scripts/env.sh
    .venv/bin/python scripts/bench_identity.py [--views 16] [--vae DIR] [--json out.json]

Identity (bora_diffusion/evaluation/identity.py) is the share of a concept's images whose CLIP-I is highest
against its own references among all twelve concepts'. A perfect generator would draw new views of each concept:
this bench renders `--views` of them per concept (a seed stream apart from the references' own,
scripts/make_world_concepts.py) and scores them against the shipped reference folders, three ways:

- **fresh views**: the renders themselves, what the world CLIP can tell apart at all;
- **through the base's VAE**: each render encoded and decoded (posterior mean), the best any UNet on this VAE can
  give, since every generation is a decoded latent;
- **through `--vae DIR`** (optional): the same round trip through another AutoencoderKL folder, e.g. a new
  `scripts/train_world_base.py vae` run, to read a VAE recipe against the shipped one before training a UNet on it.

The gap between the first two lines is the identity the VAE loses; the gap between the second and the merge
bench's "ours alone" (docs/benchmarks.md) is what the UNet and the concept training lose.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from bora_diffusion.atomic import write_text
from bora_diffusion.evaluation.identity import identity_shares
from bora_diffusion.evaluation.images import reference_images
from bora_diffusion.pipeline import load_base
from bora_diffusion.seeding import derive_seed
from bora_diffusion.world import NOVEL_CONCEPTS
from bora_diffusion.world.novel import sample_view
from bora_diffusion.world.scoring import WorldScorer

from bench_base import vae_round_trip

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64  # the references' and the embedded base's resolution


def fresh_views(name: str, count: int) -> list[Image.Image]:
    """`count` random views of concept `name`, from a seed stream the references were not drawn from."""
    rng = np.random.default_rng(derive_seed("bora-diffusion identity bench", name))
    return [sample_view(name, rng).render(SIZE) for _ in range(count)]


def score(scorer: WorldScorer, images: dict[str, list], references: dict[str, list[Path]]) -> dict:
    """Identity and CLIP-I per concept, and their means over the concepts."""
    identity = identity_shares(scorer, images, references)
    clip_i = {name: scorer.image_alignment(images[name], references[name]).mean for name in images}
    return {
        "identity": identity,
        "clip_i": clip_i,
        "means": {
            "identity": statistics.fmean(identity.values()),
            "clip_i": statistics.fmean(clip_i.values()),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=16, help="fresh views per concept")
    parser.add_argument("--vae", type=Path, help="another AutoencoderKL folder to read beside the base's")
    parser.add_argument(
        "--concepts", type=Path, default=ROOT / "concepts", help="the reference folders' parent"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    references = {name: reference_images(args.concepts / name) for name in NOVEL_CONCEPTS}
    views = {name: fresh_views(name, args.views) for name in NOVEL_CONCEPTS}
    pipe = load_base(None)
    settings = {
        "fresh views": views,
        "through the base's VAE": {name: vae_round_trip(pipe, images) for name, images in views.items()},
    }
    if args.vae:
        pipe.vae = AutoencoderKL.from_pretrained(args.vae).eval()
        settings[f"through {args.vae}"] = {
            name: vae_round_trip(pipe, images) for name, images in views.items()
        }
    scorer = WorldScorer("default", device="cpu")
    results = {setting: score(scorer, images, references) for setting, images in settings.items()}

    names = list(NOVEL_CONCEPTS)
    print(f"identity (chance 1/{len(names)}) and CLIP-I of {args.views} fresh views per concept, world CLIP:")
    print(f"{'':18}" + "".join(f"{setting[:26]:>28}" for setting in results))
    print(f"{'':18}" + f"{'identity':>14} {'CLIP-I':>13}" * len(results))
    for name in [*names, "mean"]:
        cells = []
        for result in results.values():
            identity = result["means"]["identity"] if name == "mean" else result["identity"][name]
            clip_i = result["means"]["clip_i"] if name == "mean" else result["clip_i"][name]
            cells.append(f"{identity:14.2f} {clip_i:13.3f}")
        print(f"{name:18}" + "".join(cells))
    if args.json:
        record = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        write_text(args.json, json.dumps({"settings": record, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
