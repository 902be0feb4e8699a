"""Does the embedded base follow prompts? The world CLIP reads its generations of held-out captions.

    source scripts/env.sh
    .venv/bin/python scripts/bench_base.py [--images 200] [--steps 20] [--guidance 3] [--json out.json]

Draws `--images` held-out world scenes (the evaluation seed, never trained on), generates each scene's caption
once with the base (seed = the scene's index), and scores the generations exactly as the world CLIP's own
held-out renders are scored (`bora_diffusion.world.clip_eval.evaluate`): caption retrieval among the true
caption and 5 one-attribute distractors (chance 1/6), and per-attribute classification. The renders of the same
scenes are scored beside them, and the renders after a round trip through the base's VAE (encode, decode the
posterior mean), so the gaps between the lines say what the CLIP cannot read, what the VAE loses and what the
UNet and text encoder lose.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from bora_diffusion.embedded import default_pipeline
from bora_diffusion.pipeline import EMBEDDED_GUIDANCE
from bora_diffusion.world.clip import WorldClip
from bora_diffusion.world.clip_eval import evaluate, held_out_scenes


def vae_round_trip(pipe, images: list[Image.Image]) -> list[Image.Image]:
    """`images` encoded by the pipeline's VAE and decoded from the posterior mean: what the UNet could at best give."""
    pixels = pipe.image_processor.preprocess(images)  # (N, 3, H, W) in [-1, 1]
    with torch.no_grad():
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample
    return pipe.image_processor.postprocess(decoded, output_type="pil")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=EMBEDDED_GUIDANCE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the two reports here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    scenes = held_out_scenes(args.images)
    pipe = default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    started = time.time()
    generated = []
    for index, scene in enumerate(scenes):
        generator = torch.Generator().manual_seed(index)
        result = pipe(
            scene.caption(), num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generator
        )
        generated.append(result.images[0])
    seconds = (time.time() - started) / len(scenes)
    renders = [scene.render() for scene in scenes]
    clip = WorldClip.load()
    reports = {
        "base generations": evaluate(clip, generated, scenes),
        "renders through the VAE": evaluate(clip, vae_round_trip(pipe, renders), scenes),
        "world renders": evaluate(clip, renders, scenes),
    }
    for name, report in reports.items():
        print(f"{name}:")
        for line in report.lines():
            print(f"  {line}")
    print(f"{seconds:.2f} s per generated image ({args.steps} steps, guidance {args.guidance:g})")
    if args.json:
        data = {name: report.__dict__ for name, report in reports.items()}
        data["settings"] = vars(args) | {"json": str(args.json), "seconds_per_image": round(seconds, 3)}
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
