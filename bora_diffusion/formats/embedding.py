"""A concept's trained token embedding as a textual-inversion file, beside its LoRA export.

A LoRA file holds only the UNet's update; a concept trained with `train_embedding` also needs its token's vector,
which every peer ships as a separate textual-inversion file. We write the layout that A1111 and ComfyUI read
(`emb_params`, (n_vectors, D), safetensors) and that diffusers' `load_textual_inversion(path, token=...)` reads
too, so one file serves them all. An SDXL concept's token has rows on both text encoders; its file holds them
as `clip_l` (N, 768) and `clip_g` (N, 1280), the SDXL embedding layout A1111 and ComfyUI read, which diffusers
loads one encoder at a time:

    state = safetensors.torch.load_file(path)
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .factors import write_safetensors
from .native import AdapterFile, read_adapter

EMBEDDING_KEY = "emb_params"  # A1111's key; diffusers reads it as well
SDXL_KEYS = ("clip_l", "clip_g")  # SDXL embeddings: the first text encoder's rows, then the second's


def embedding_path(lora_path: str | os.PathLike) -> Path:
    """Where the embedding goes beside a LoRA export: `<stem>.embedding.safetensors`."""
    lora_path = Path(lora_path)
    return lora_path.with_name(f"{lora_path.stem}.embedding.safetensors")


def export_embedding(
    source: str | os.PathLike | AdapterFile, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32
) -> Path | None:
    """Write the file's trained token embedding to `path` atomically and return it; None when it has none."""
    adapter = source if isinstance(source, AdapterFile) else read_adapter(source)
    rows = adapter.token_embeddings  # one (N, D_e) per text encoder: diffusers adds `token`, `token_1`, ...
    if not rows:
        return None
    if len(rows) == 1:
        tensors = {EMBEDDING_KEY: rows[0].to(dtype)}
    else:
        tensors = {key: vectors.to(dtype) for key, vectors in zip(SDXL_KEYS, rows, strict=True)}
    metadata = {"format": "pt", "token": adapter.token or "", "name": adapter.name}
    return write_safetensors(path, tensors, metadata)
