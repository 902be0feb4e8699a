"""Stable Diffusion 1.5's shape with random weights, for benchmarks on machines that cannot download the real one.

A speed or memory benchmark needs SD 1.5's cost, not its knowledge: the same layers, widths and token counts. This
module holds SD 1.5's configs (runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/, scheduler/) once, for
`bench_adapters.py --sd15` (a UNet alone) and `bench_train.py --sd15` (a whole pipeline folder). The tokenizer is
the embedded default's, which uses CLIP's own byte-pair vocabulary (49,408 entries), so prompts cost what they cost
on SD 1.5.

    .venv/bin/python scripts/sd15_shaped.py /tmp/sd15-shaped    # writes a diffusers folder (about 4.3 GB in fp32)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

VAE_FACTOR = 8  # latents are 1/8 of the image side
TEXT_TOKENS = 77


def unet_config() -> dict[str, Any]:
    """SD 1.5's unet/config.json (the keys that set its shape)."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
    }


def vae_config() -> dict[str, Any]:
    """SD 1.5's vae/config.json."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }


def text_config() -> dict[str, Any]:
    """SD 1.5's text_encoder/config.json: CLIP ViT-L/14's text tower."""
    return {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": TEXT_TOKENS,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    }


def scheduler_config() -> dict[str, Any]:
    """SD 1.5's noise schedule (its scheduler/ folder holds a PNDM sampler over these betas)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "skip_prk_steps": True,
    }


def write_pipeline(folder: Path, seed: int = 0) -> Path:
    """Write a random-weight SD-1.5-shaped `StableDiffusionPipeline` to `folder` (diffusers layout)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bora_diffusion.pipeline import load_base

    tokenizer = load_base(None).tokenizer  # the embedded default's: CLIP's vocabulary
    if len(tokenizer) > text_config()["vocab_size"]:
        raise SystemExit(f"the embedded tokenizer holds {len(tokenizer)} tokens, more than CLIP's 49,408")
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_config()),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config())),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**unet_config()),
        scheduler=PNDMScheduler(**scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the pipeline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_pipeline(args.folder, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
