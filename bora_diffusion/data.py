"""Training data: images to tensors, cached latents and prompt embeddings, seeded batches.

Images are resized on the shorter side and center-cropped to the training resolution, then scaled to [-1, 1]
as the VAE expects. Latents are the VAE posterior's mean times the VAE's scaling factor (kohya caches the same),
which makes a cached run and an uncached run identical and a resumed run bit-exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from .embeddings import spell_out


def load_image(path: str | Path, resolution: int) -> Tensor:
    """One image as (3, resolution, resolution) float32 in [-1, 1]."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")  # phone photos store their rotation in EXIF
    scale = resolution / min(image.size)
    width, height = (max(resolution, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)  # (H, W, 3)
    return pixels.permute(2, 0, 1).contiguous()  # (3, H, W)


@torch.no_grad()
def encode_images(vae, images: Tensor, *, batch_size: int = 8) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> latents (N, C, H / f, W / f), the posterior mean times the scaling factor."""
    latents = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(vae.device, vae.dtype)
        latents.append(vae.encode(batch).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(latents).float()


def tokenize(tokenizer, prompts: Sequence[str]) -> Tensor:
    """Prompts -> token ids (N, 77), padded to the tokenizer's length as Stable Diffusion pipelines do, with each
    multi-vector token spelled out as they do (bora_diffusion.embeddings)."""
    return tokenizer(
        spell_out(prompts, tokenizer),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_ids(text_encoder, ids: Tensor) -> Tensor:
    """Token ids (N, 77) -> the text encoder's last hidden states (N, 77, D), as the UNet's cross-attention reads
    them. Differentiable: a trained token embedding gets its gradient through here."""
    return text_encoder(ids.to(text_encoder.device))[0].float()


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str]) -> Tensor:
    """Prompts -> (N, 77, D) hidden states, without gradients (for cached prompt embeddings)."""
    return encode_ids(text_encoder, tokenize(tokenizer, prompts))


@dataclass
class EncodedSet:
    """Images as latents (or pixels, when latents are not cached) with the prompt embedding of each (or the
    prompt's token ids, when the text encoder's input trains and the embedding must be recomputed every step)."""

    images: Tensor  # (N, C, h, w) latents, or (N, 3, H, W) pixels when `encoded` is False
    text: Tensor  # (N, 77, D) hidden states, or (N, 77) token ids when `text_encoded` is False
    encoded: bool
    text_encoded: bool = True

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A batch drawn with replacement by `generator` (the only randomness, so resume is exact)."""
        index = torch.randint(len(self.images), (size,), generator=generator)
        return self.images[index], self.text[index]


def encode_set(
    pipe,
    images: Sequence[Path],
    prompts: Sequence[str],
    resolution: int,
    *,
    cache_latents: bool,
    cache_text: bool = True,
) -> EncodedSet:
    pixels = torch.stack([load_image(path, resolution) for path in images])
    if cache_text:
        text = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts)
    else:
        text = tokenize(pipe.tokenizer, prompts)
    if cache_latents:
        pixels = encode_images(pipe.vae, pixels)
    return EncodedSet(pixels, text, encoded=cache_latents, text_encoded=cache_text)
