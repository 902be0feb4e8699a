"""A concept's trained token embedding as a textual-inversion file, beside its LoRA export.

A LoRA file holds only the UNet's update; a concept trained with `train_embedding` also needs its token's vector,
which every peer ships as a separate textual-inversion file. We write the layout that A1111 and ComfyUI read
(`emb_params`, (n_vectors, D), safetensors) and that diffusers' `load_textual_inversion(path, token=...)` reads
too, so one file serves them all.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .convert import write_safetensors
from .native import AdapterFile, read_adapter

EMBEDDING_KEY = "emb_params"  # A1111's key; diffusers reads it as well


def embedding_path(lora_path: str | os.PathLike) -> Path:
    """Where the embedding goes beside a LoRA export: `<stem>.embedding.safetensors`."""
    lora_path = Path(lora_path)
    return lora_path.with_name(f"{lora_path.stem}.embedding.safetensors")


def export_embedding(
    source: str | os.PathLike | AdapterFile, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32
) -> Path | None:
    """Write the file's trained token embedding to `path` atomically and return it; None when it has none."""
    adapter = source if isinstance(source, AdapterFile) else read_adapter(source)
    if adapter.token_embedding is None:
        return None
    vectors = adapter.token_embedding.to(dtype)  # (N, D): diffusers adds them as `token`, `token_1`, ...
    metadata = {"format": "pt", "token": adapter.token or "", "name": adapter.name}
    return write_safetensors(path, {EMBEDDING_KEY: vectors}, metadata)
