"""Generation: prompts x seeds through the (adapted) pipeline, images with a manifest next to them, and a grid.

Each image gets its own generator seeded by its seed, so an image depends only on (prompt, seed, settings, model)
and never on the batch it was drawn in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from .atomic import atomic_path, write_text
from .compiling import compile_pipeline
from .errors import ConfigError
from .layout_guidance import Placement, placed_sampling
from .regions import Region, regional_sampling


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 25
    guidance: float = 7.5
    negative_prompt: str = ""
    height: int | None = None  # None: the model's native size
    width: int | None = None
    batch_size: int = 4
    compile: bool = False  # compile the pipeline's UNet in place first (bora_diffusion.compiling)

    def __post_init__(self) -> None:
        if self.steps < 1:  # named alone: a user who gave --steps 0 never set the batch size
            raise ConfigError(
                f"steps: {self.steps} is not a whole number from 1 up; give e.g. 25 (the default)"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: {self.batch_size} is not a whole number from 1 up; give e.g. 4")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ConfigError(
                f"guidance: {self.guidance:g} is not a number from 0 up (e.g. 3 or 7.5; below 1 turns guidance off)"
            )
        for label, side in (("height", self.height), ("width", self.width)):
            if side is not None and (
                isinstance(side, bool) or not isinstance(side, int) or side < 8 or side % 8
            ):
                # the VAE halves the image 3 times and the UNet's blocks again: other sizes fail deep inside
                raise ConfigError(f"{label}: {side!r} is not a positive multiple of 8; give e.g. 64 or 512")


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits


def check_request(prompts: list[str], seeds: list[int]) -> None:
    """Refuse what cannot be drawn, before any model is loaded: no prompt, a blank one, a seed out of 0..2**64-1."""
    if not prompts or not seeds:
        raise ConfigError("give at least one prompt and one seed")
    for prompt in prompts:
        if not str(prompt).strip():
            raise ConfigError("prompt: an empty prompt draws nothing in particular; write what to draw")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed: {seed!r} is not a whole number from 0 to 2**64-1 ({MAX_SEED})")


@dataclass(frozen=True)
class Generated:
    images: list[Path]
    grid: Path
    manifest: Path


def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    out_dir: str | Path,
    *,
    settings: SamplingSettings = SamplingSettings(),
    record: dict | None = None,
    regions: Sequence[Region] = (),
    placements: Sequence[Placement] = (),
) -> Generated:
    """Generate every prompt with every seed into `out_dir`; `record` (base model, concepts, scales) goes into the
    manifest as given. `regions` (bora_diffusion.regions) draw each of their prompts in their own part of every
    image, the prompts then being the global prompt around them; `placements` (bora_diffusion.layout_guidance) draw
    what a word of every prompt names inside a box (not with regions)."""
    check_request(prompts, seeds)
    if regions and placements:
        raise ConfigError("give regions or placements, not both: placement steers the plain prompt")
    out_dir = Path(out_dir)
    jobs = [(p, prompt, seed) for p, prompt in enumerate(prompts) for seed in seeds]
    if settings.compile:
        compile_pipeline(pipe)
    images: list[Image.Image] = []
    size = {"height": settings.height, "width": settings.width, "guidance": settings.guidance}
    with regional_sampling(pipe, regions, **size), placed_sampling(pipe, placements, **size) as steering:
        for start in range(0, len(jobs), settings.batch_size):
            chunk = jobs[start : start + settings.batch_size]
            steer = {}
            if steering is not None:
                steering.begin([prompt for _, prompt, _ in chunk])
                steer = {"callback_on_step_end": steering}
            result = pipe(
                [prompt for _, prompt, _ in chunk],
                negative_prompt=[settings.negative_prompt] * len(chunk) if settings.negative_prompt else None,
                generator=[torch.Generator().manual_seed(seed) for _, _, seed in chunk],
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                height=settings.height,
                width=settings.width,
                **steer,
            )
            images.extend(result.images)
    paths, entries = [], []
    for (p, prompt, seed), image in zip(jobs, images, strict=True):
        path = out_dir / f"p{p:02d}-s{seed}.png"
        _save_png(image, path)
        paths.append(path)
        entries.append({"file": path.name, "prompt": prompt, "seed": seed})
    grid = out_dir / "grid.png"
    _save_png(image_grid(images, rows=len(prompts)), grid)
    manifest = out_dir / "manifest.json"
    write_text(
        manifest,
        json.dumps(
            {
                **(record or {}),
                "settings": asdict(settings),
                **({"regions": [region.to_dict() for region in regions]} if regions else {}),
                **({"placements": [asdict(placement) for placement in placements]} if placements else {}),
                "images": entries,
                "grid": grid.name,
            },
            indent=1,
        ),
    )
    return Generated(paths, grid, manifest)


def image_grid(images: list[Image.Image], rows: int) -> Image.Image:
    """Images in `rows` rows, filled row by row (prompts down, seeds across)."""
    cols = -(-len(images) // rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * width, (i // cols) * height))
    return grid


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
