"""What a training run is built from before its first step: the accelerator, the concept token's trainable rows,
the optimizer (AdamW or 8-bit AdamW, the token rows in a group of their own), the learning-rate schedule, the
attention backend, and prior preservation's class images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_path
from ..config import TrainConfig
from ..embeddings import add_token
from ..errors import ConfigError
from ..seeding import derive_seed
from ..text import PromptEncoder


def make_accelerator(config: TrainConfig, unet):
    """A fresh accelerate Accelerator for one run: `config`'s mixed precision and gradient accumulation, on the
    CPU when `unet` is there."""
    # accelerate is heavy: imported when a run starts, not with the package.
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one state per process and refuses a second Accelerator with another mixed precision;
    # one process (the app, a notebook, a test run) trains many concepts, each with its own settings. The
    # process group (PartialState) is kept, so this is safe under `accelerate launch`.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation,
        cpu=unet.device.type == "cpu",
    )
    if config.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("mixed_precision 'fp16' needs a GPU; use 'no' or 'bf16' on the CPU")
    return accelerator


def add_trainable_token(text: PromptEncoder, concept, count: int) -> list[torch.nn.Parameter]:
    """Make `concept`'s token a new token of `count` vectors that train, starting from its class word's
    embedding, on every text encoder of `text` (SDXL's two each get their own rows, as SDXL textual-inversion
    files carry `clip_l` and `clip_g`); return the rows, (N, D_e) per encoder."""
    rows = []
    for tokenizer, encoder in zip(text.tokenizers, text.encoders, strict=True):
        encoder.requires_grad_(False)
        vectors = add_token(
            tokenizer,
            encoder,
            concept.token,
            count=count,
            init_word=concept.class_word,
            source=f"concept {concept.name!r}",
        )
        rows.append(vectors.requires_grad_(True))
    return rows


def make_optimizer(
    params, embeddings: list[torch.nn.Parameter], config: TrainConfig
) -> torch.optim.Optimizer:
    """The optimizer over the adapter's `params` and, when the token trains, its `embeddings` rows."""
    if config.adam_8bit:
        try:
            import bitsandbytes as bnb  # optional: only 8-bit AdamW needs it
        except ImportError:
            raise ConfigError(
                "adam_8bit needs bitsandbytes: pip install bitsandbytes; or use plain AdamW (adam_8bit: false)"
            ) from None
        cls = bnb.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    groups = [{"params": params}]
    if embeddings:
        # Weight decay would pull the token towards the origin, away from the words it sits among.
        lr = config.embedding_learning_rate or config.learning_rate
        groups.append({"params": embeddings, "lr": lr, "weight_decay": 0.0})
    return cls(groups, lr=config.learning_rate, weight_decay=config.weight_decay)


def lr_schedule(optimizer, config: TrainConfig):
    """diffusers' learning-rate schedule `config.lr_schedule` over `config.steps`, after its warmup."""
    from diffusers.optimization import get_scheduler  # diffusers is heavy: imported when a run starts

    return get_scheduler(
        config.lr_schedule,
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.steps,
    )


def set_attention(unet, attention: str) -> None:
    """Switch `unet` to xformers' attention when asked; 'sdpa', diffusers' default, needs nothing."""
    if attention == "xformers":
        try:
            import xformers  # noqa: F401 (optional, GPU only: checked before the UNet asks for it)
        except ImportError:
            raise ConfigError(
                "attention 'xformers' needs the xformers package (GPU only); use 'sdpa'"
            ) from None
        unet.enable_xformers_memory_efficient_attention()


def ensure_class_images(pipe, prompt: str, folder: Path, count: int, config: TrainConfig) -> list[Path]:
    """`count` images of the class for prior preservation: those in `folder`, completed by generating with the base
    model (before any adapter is injected, seeded per image so the set is reproducible)."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    for i in range(len(existing), count):
        generator = torch.Generator().manual_seed(derive_seed("class-image", config.seed, prompt, i))
        image = pipe(
            prompt,
            generator=generator,
            num_inference_steps=20,
            height=config.resolution,
            width=config.resolution,
        ).images[0]
        path = folder / f"class-{i:04d}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        existing.append(path)
    return existing[:count]
