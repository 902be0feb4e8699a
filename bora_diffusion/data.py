"""Training data: images to tensors, cached latents and prompt embeddings, seeded batches.

Images are resized on the shorter side and center-cropped to the training resolution, then scaled to [-1, 1]
as the VAE expects. Latents are the VAE posterior's mean times the VAE's scaling factor (kohya caches the same),
so an uncached run matches a cached one up to float rounding (the VAE then encodes batches of another shape) and
a resumed run is bit-exact. Each image keeps its SDXL time ids (its size before resizing, the crop's top-left
corner, the training size), which an SDXL UNet reads beside the text; other bases ignore them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from .text import PromptEncoder, TextStates

BACKGROUND = (255, 255, 255)


def has_transparency(image: Image.Image) -> bool:
    """Whether any pixel of `image` is less than fully opaque (RGBA, LA, P or L with a transparent color)."""
    return bool(image.has_transparency_data) and image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def flatten(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """`image` as RGB, its transparent pixels composited onto `background` (white, as most trainers do);
    a plain convert("RGB") would show the hidden colour under them, often black."""
    if not has_transparency(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, background)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def load_image(path: str | Path, resolution: int) -> tuple[Tensor, Tensor]:
    """One image as (3, resolution, resolution) float32 in [-1, 1], and its SDXL time ids (6,): original height
    and width, crop top and left (in the resized image, as diffusers' SDXL DreamBooth script records them), target
    height and width."""
    with Image.open(path) as opened:
        image = flatten(ImageOps.exif_transpose(opened))  # phone photos store their rotation in EXIF
    original_width, original_height = image.size
    scale = resolution / min(image.size)
    width, height = (max(resolution, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)  # (H, W, 3)
    time_ids = torch.tensor(
        [original_height, original_width, top, left, resolution, resolution], dtype=torch.float32
    )
    return pixels.permute(2, 0, 1).contiguous(), time_ids  # (3, H, W), (6,)


@torch.no_grad()
def encode_images(vae, images: Tensor, *, batch_size: int = 8) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> latents (N, C, H / f, W / f), the posterior mean times the scaling factor."""
    latents = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(vae.device, vae.dtype)
        latents.append(vae.encode(batch).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(latents).float()


@dataclass
class Batch:
    """One training batch: images (latents, or pixels when latents are not cached), their text (states, or
    token ids when the token's embedding trains and the text must be encoded every step) and their time ids."""

    images: Tensor  # (B, C, h, w) latents or (B, 3, H, W) pixels
    text: TextStates | Tensor  # TextStates, or token ids (B, E, 77)
    time_ids: Tensor  # (B, 6)


@dataclass
class EncodedSet:
    """Images as latents (or pixels, when latents are not cached) with the prompt embedding of each (or the
    prompt's token ids, when the text encoder's input trains and the embedding must be recomputed every step)."""

    images: Tensor  # (N, C, h, w) latents, or (N, 3, H, W) pixels when `encoded` is False
    text: TextStates | Tensor  # TextStates, or token ids (N, E, 77) when `text_encoded` is False
    time_ids: Tensor  # (N, 6) SDXL's micro-conditioning of each image
    encoded: bool
    text_encoded: bool = True

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, size: int, generator: torch.Generator, *, keep: slice = slice(None)) -> Batch:
        """The rows `keep` of a batch of `size` drawn with replacement by `generator` (the only randomness, so
        resume is exact): data-parallel processes draw the same global batch and each keeps its shard."""
        index = torch.randint(len(self.images), (size,), generator=generator)[keep]  # (len(keep),)
        return Batch(self.images[index], self.text[index], self.time_ids[index])


def encode_set(
    pipe,
    images: Sequence[Path],
    prompts: Sequence[str],
    resolution: int,
    *,
    cache_latents: bool,
    cache_text: bool = True,
) -> EncodedSet:
    loaded = [load_image(path, resolution) for path in images]
    pixels = torch.stack([image for image, _ in loaded])  # (N, 3, H, W)
    time_ids = torch.stack([ids for _, ids in loaded])  # (N, 6)
    encoder = PromptEncoder(pipe)
    text = encoder.encode(prompts) if cache_text else encoder.tokenize(prompts)
    if cache_latents:
        pixels = encode_images(pipe.vae, pixels)
    return EncodedSet(pixels, text, time_ids, encoded=cache_latents, text_encoded=cache_text)
