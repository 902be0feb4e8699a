"""Sample grid and CPU speed of the world base: rows are prompts, columns seeds, first column the world's own render.

    python scripts/sample_world_base.py --out docs/img/base_samples.png            # the shipped embedded default
    python scripts/sample_world_base.py --pipeline /tmp/world_base/pipeline         # a training run's folder

Each row is a caption of a scene drawn by `bora_diffusion.world` (seeded), shown first as the world renders it,
then as the base generates it from the caption alone, so a reader can judge prompt following at a glance. Prints
the seconds per image at 64 px (batch 1, after one warm-up call): wall clock and this process's CPU time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw

from bora_diffusion.embedded import default_pipeline
from bora_diffusion.pipeline import EMBEDDED_GUIDANCE
from bora_diffusion.world import sample_scene

PROMPTS_SEED = 4242  # scenes for the rows; never the training streams' seeds (0 and 1)


def row_scenes(count: int) -> list:
    """`count` world scenes, alternating one-thing and two-thing layouts as the sampler draws them."""
    rng = np.random.default_rng(PROMPTS_SEED)
    return [sample_scene(rng) for _ in range(count)]


def generate(
    pipe: StableDiffusionPipeline, prompt: str, seed: int, steps: int, guidance: float
) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    result = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=64,
        width=64,
        generator=generator,
    )
    return result.images[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", type=Path, default=None, help="a diffusers folder; default: embedded")
    parser.add_argument("--out", type=Path, default=Path("docs/img/base_samples.png"))
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=EMBEDDED_GUIDANCE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=int, default=2, help="pixel repeat of each 64 px tile in the PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = (
        default_pipeline()
        if args.pipeline is None
        else StableDiffusionPipeline.from_pretrained(args.pipeline)
    )
    pipe.set_progress_bar_config(disable=True)

    scenes = row_scenes(args.rows)
    tile, label = 64 * args.scale, 14
    grid = Image.new("RGB", ((args.seeds + 1) * tile, args.rows * (tile + label)), "white")
    draw = ImageDraw.Draw(grid)
    generate(pipe, "warm up", 0, args.steps, args.guidance)
    timings, cpu_timings = [], []
    for row, scene in enumerate(scenes):
        caption = scene.caption()
        top = row * (tile + label)
        draw.text((2, top + 1), caption, fill="black")
        grid.paste(scene.render(64).resize((tile, tile), Image.NEAREST), (0, top + label))
        for column in range(args.seeds):
            tic, cpu_tic = time.perf_counter(), time.process_time()
            image = generate(pipe, caption, column, args.steps, args.guidance)
            timings.append(time.perf_counter() - tic)
            # CPU seconds of this process (all threads): on a shared machine the honest half of the speed figure.
            cpu_timings.append(time.process_time() - cpu_tic)
            grid.paste(image.resize((tile, tile), Image.NEAREST), ((column + 1) * tile, top + label))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(
        f"{len(timings)} images at 64 px, {args.steps} DDIM steps, guidance {args.guidance}, "
        f"{args.threads} threads: {np.mean(timings):.3f} s/image mean wall, {np.median(timings):.3f} median, "
        f"{np.mean(cpu_timings):.3f} CPU s/image -> {args.out}"
    )


if __name__ == "__main__":
    main()
