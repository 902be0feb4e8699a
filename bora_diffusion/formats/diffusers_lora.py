"""The diffusers LoRA layout: what stock `StableDiffusionPipeline.load_lora_weights(path)` reads.

One `.safetensors` with two tensors per adapted Linear, keyed by the UNet module path under a `unet.` prefix:

    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight   down (R, in)
    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight   up   (out, R)

and W' = W0 + up @ down: the file has no alpha keys, which diffusers reads as alpha = rank (scale 1), so an export
folds s into `up`. `key_style="peft"` (default) writes peft's `lora_A` / `lora_B` names, which diffusers 0.42 loads
with no key conversion at all (`unet.save_lora_adapter` writes the same); `key_style="legacy"` writes
`...to_q.lora.down.weight` / `.lora.up.weight` as the DreamBooth LoRA script saves them (diffusers converts them on
load, silently). Imports also read the older attention-processor names (`...attn1.processor.to_q_lora.down.weight`),
per-layer `.alpha` keys, and the `lora_adapter_metadata` (r, lora_alpha, alpha_pattern, use_rslora) that
`save_lora_weights` records.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import AdapterFileError
from .factors import (
    DIFFUSERS_TEXT_ENCODER,
    PROVENANCE_KEY,
    ForeignLora,
    check_dtype,
    exact_lora_factors,
    provenance,
    resolve_layers,
    write_safetensors,
)
from .native import AdapterFile

KeyStyle = Literal["peft", "legacy"]
_SUFFIXES: dict[KeyStyle, tuple[str, str]] = {
    "peft": (".lora_A.weight", ".lora_B.weight"),
    "legacy": (".lora.down.weight", ".lora.up.weight"),
}
# Import: key suffix -> role, after `_normalize` (which rewrites the attention-processor spelling of old files).
_READ_ROLES = (
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".alpha", "alpha"),
)
_ATTN_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


def export_diffusers(
    source: str | os.PathLike | AdapterFile,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    key_style: KeyStyle = "peft",
) -> Path:
    """Write a native adapter file (path or AdapterFile) as a diffusers LoRA file at `path`, atomically.

    Exact for every additive method (fp32); dora and bora_bidim raise NotExportableError. Returns the path.
    """
    check_dtype(dtype)
    if key_style not in _SUFFIXES:
        raise ValueError(f"key_style must be one of {', '.join(_SUFFIXES)}, got {key_style!r}")
    adapter, factors = exact_lora_factors(source)
    down_suffix, up_suffix = _SUFFIXES[key_style]
    tensors: dict[str, Tensor] = {}
    for layer, (down, up, scaling) in factors.items():
        # No alpha keys means alpha = rank in every reader, so s goes into up (exact when s = 1, the default).
        tensors[f"unet.{layer}{down_suffix}"] = down.to(dtype)  # (R, in)
        tensors[f"unet.{layer}{up_suffix}"] = (up * scaling).to(dtype)  # (out, R)
    # "format": "pt" is what diffusers' own save_lora_weights writes; the provenance key is ignored by readers.
    return write_safetensors(path, tensors, {"format": "pt", PROVENANCE_KEY: provenance(adapter)})


def parse_diffusers(
    tensors: dict[str, Tensor], metadata: dict[str, str], unet: nn.Module, source: Path
) -> ForeignLora:
    """The UNet layers of a diffusers-layout file, resolved against `unet`, each with its scale."""
    config = _adapter_metadata(metadata, source)
    if config.get("use_dora") or any("lora_magnitude_vector" in key for key in tensors):
        raise AdapterFileError(
            f"{source}: a DoRA file (lora_magnitude_vector); DoRA rescales the base weight, so it cannot become "
            "a LoRA concept: load it in diffusers, fuse it, and use that pipeline as the base instead"
        )
    if any(key.endswith(".lora_B.bias") for key in tensors):
        raise AdapterFileError(
            f"{source}: the file's LoRA layers carry a bias (lora_B.bias), which a LoRA concept cannot hold; "
            "fuse it into the base model in diffusers instead"
        )
    text_encoder: set[str] = set()
    entries: dict[str, dict[str, str]] = {}  # module path -> {"down" | "up" | "alpha": the file's key}
    for original in tensors:
        if original.startswith(DIFFUSERS_TEXT_ENCODER):
            text_encoder.add(_text_encoder_layer(original))
            continue
        key = _normalize(original)
        match = next(((suffix, role) for suffix, role in _READ_ROLES if key.endswith(suffix)), None)
        if match is None:
            raise AdapterFileError(
                f"{source}: key {original} is not a LoRA down/up weight or alpha of the diffusers layout; "
                "only plain LoRA files are imported"
            )
        suffix, role = match
        entries.setdefault(key[: -len(suffix)], {})[role] = original

    def scaling(path: str, rank: int, roles: dict[str, str]) -> float:
        return _scaling(path, rank, config, tensors[roles["alpha"]] if "alpha" in roles else None)

    layers, not_linear = resolve_layers(entries, tensors, unet, source, scaling)
    return ForeignLora(layers=layers, text_encoder=tuple(sorted(text_encoder)), not_linear=not_linear)


def _normalize(key: str) -> str:
    """A UNet key as `<module path><suffix>`: without the `unet.` prefix, attention-processor names rewritten
    (`attn1.processor.to_out_lora.down.weight` -> `attn1.to_out.0.lora.down.weight`)."""
    key = key.removeprefix("unet.")
    match = _ATTN_PROCESSOR.search(key)
    if match:
        projection = "to_out.0" if match.group(1) == "to_out" else match.group(1)
        key = f"{key[: match.start()]}.{projection}.lora.{match.group(2)}.weight"
    return key


def _text_encoder_layer(key: str) -> str:
    """The layer name of a text-encoder key, for the report."""
    for marker in (".lora_A.", ".lora_B.", ".lora.", ".lora_linear_layer.", "_lora.", ".alpha"):
        if marker in key:
            return key.split(marker)[0]
    return key


def _adapter_metadata(metadata: dict[str, str], source: Path) -> dict[str, object]:
    """diffusers' `lora_adapter_metadata` for the UNet (`unet.`-prefixed LoraConfig fields), or {}."""
    raw = metadata.get(_METADATA_KEY)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise AdapterFileError(
            f"{source}: unreadable {_METADATA_KEY} metadata ({error}); the file is corrupt"
        ) from None
    return {k.removeprefix("unet."): v for k, v in packed.items() if k.startswith("unet.")}


def _scaling(layer: str, rank: int, config: dict[str, object], alpha_key: Tensor | None) -> float:
    """The layer's s as peft computes it: alpha / r, alpha from the metadata's alpha_pattern, then its
    lora_alpha, then a `.alpha` key, else alpha = r; alpha / sqrt(r) for rslora."""
    alpha: float | None = None
    for pattern, value in dict(config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", layer):  # peft's get_pattern_key rule
            alpha = float(value)
            break
    if alpha is None and config.get("lora_alpha") is not None:
        alpha = float(config["lora_alpha"])  # type: ignore[arg-type]
    if alpha is None and alpha_key is not None:
        alpha = float(alpha_key.item())
    if alpha is None:
        return 1.0
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
