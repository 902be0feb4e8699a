"""Tiny SDXL and SD 2.x pipelines built from configs in well under a second, shaped like the real ones.

- `build_tiny_sdxl()`: SDXL's block layout in miniature (three levels, the first without attention, two resnets per
  down block and three per up block, two transformer layers in the deepest level and the mid block), so its module
  paths map onto sd-scripts' SGM names exactly as the real SDXL UNet's do; `addition_embed_type="text_time"`, a
  `CLIPTextModel` and a `CLIPTextModelWithProjection` whose penultimate states are concatenated (32 + 32 = 64 wide),
  the second one's projection (32) as the pooled embedding. Following diffusers' own SDXL test config.
- `build_tiny_sd2()`: SD 2.x's traits: v-prediction, linear projections in the transformers, a wider text state than
  the tiny SD 1.x base (64), attention heads given per level.

Both use the real CLIP tokenizer (built offline), as the real bases do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bora_diffusion.embedded import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer

TIME_EMBED_DIM = 8  # SDXL's addition_time_embed_dim is 256; six time ids each embed to this width


def _text_config(width: int, projection: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=3,  # SDXL reads the penultimate layer: keep a layer after it
        num_attention_heads=4,
        max_position_embeddings=CLIP_CONTEXT_LENGTH,
        hidden_act="gelu",
        projection_dim=projection or width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32, 32),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + 32,  # time ids + pooled text
            cross_attention_dim=64,
            norm_num_groups=16,
        )
        vae = _vae()
        text_encoder = CLIPTextModel(_text_config(32))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(32, projection=32))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd2(seed: int = 0) -> StableDiffusionPipeline:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=64,
            norm_num_groups=16,
        )
        vae = _vae()
        text_encoder = CLIPTextModel(_text_config(64))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_base(pipe, folder: Path) -> Path:
    """`pipe` saved in diffusers layout, what a user passes as `--base`."""
    pipe.save_pretrained(folder)
    return folder
