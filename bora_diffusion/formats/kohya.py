"""kohya's LoRA layout (sd-scripts), the one AUTOMATIC1111, Forge and ComfyUI read, and diffusers too.

One `.safetensors` with three entries per adapted Linear, named after the UNet module path with every `.` turned
into `_` behind a `lora_unet_` prefix:

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight   down (R, in)
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight     up   (out, R)
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha              alpha, 0-dim fp32

and W' = W0 + (alpha / R) * up @ down, R being lora_down's first dimension. An export keeps the factors as the
method gives them and writes alpha = s * R, so alpha / R reproduces s (exactly for integer alphas, s = 1 above all;
otherwise to one fp32 rounding); alpha stays fp32 when the factors are written in fp16. The text encoder's layers
(`lora_te_...`) and conv LoRA never come from us; on import they are skipped and reported. The safetensors metadata
follows sd-scripts (`ss_network_module`, `ss_network_dim`, `ss_network_alpha`, `ss_base_model_version`, ...), which
A1111 and model browsers show; the loaders themselves read only the tensors.

Underscores are ambiguous (`to_q` holds one), so an import maps names back by matching the base UNet's own module
paths, never by splitting.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import AdapterFileError
from .convert import (
    KOHYA_TEXT_ENCODER,
    PROVENANCE_KEY,
    ForeignLora,
    check_dtype,
    exact_lora_factors,
    provenance,
    resolve_layers,
    write_safetensors,
)
from .native import AdapterFile

UNET_PREFIX = "lora_unet_"
_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha", "lora_mid.weight": "mid"}
# sd-scripts' ss_base_model_version, told apart by the cross-attention K/V input width (the text embedding).
_BASE_VERSIONS = {768: "sd_v1", 1024: "sd_v2", 2048: "sdxl_base_v1-0"}
_ARCHITECTURES = {"sd_v1": "stable-diffusion-v1/lora", "sdxl_base_v1-0": "stable-diffusion-xl-v1-base/lora"}


def kohya_name(path: str) -> str:
    """`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q` -> `lora_unet_down_blocks_0_..._attn1_to_q`."""
    return UNET_PREFIX + path.replace(".", "_")


def export_kohya(
    source: str | os.PathLike | AdapterFile,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    base_model_version: str | None = None,
) -> Path:
    """Write a native adapter file (path or AdapterFile) as a kohya LoRA file at `path`, atomically.

    Exact for every additive method (fp32); dora and bora_bidim raise NotExportableError. `base_model_version`
    (sd-scripts' `ss_base_model_version`: "sd_v1", "sd_v2", "sdxl_base_v1-0") is inferred from the layers' text
    width when omitted, and left out of the metadata when it cannot be. Returns the path.
    """
    check_dtype(dtype)
    adapter, factors = exact_lora_factors(source)
    tensors: dict[str, Tensor] = {}
    ranks: set[int] = set()
    alphas: set[float] = set()
    for layer, (down, up, scaling) in factors.items():
        name = kohya_name(layer)
        if f"{name}.alpha" in tensors:
            raise AdapterFileError(
                f"{adapter.path}: layers {layer} and another one share the kohya name {name}; "
                "export this adapter in the diffusers layout instead"
            )
        rank = down.shape[0]
        alpha = scaling * rank  # readers scale by alpha / rank
        tensors[f"{name}.lora_down.weight"] = down.to(dtype)  # (R, in)
        tensors[f"{name}.lora_up.weight"] = up.to(dtype)  # (out, R)
        tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)  # 0-dim, as sd-scripts saves it
        ranks.add(rank)
        alphas.add(float(tensors[f"{name}.alpha"]))
    version = base_model_version or _infer_base_version(adapter.layers)
    metadata = {
        "ss_network_module": "networks.lora",
        # sd-scripts writes "Dynamic" for files whose layers differ (resize_lora --dynamic_method).
        "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
        "ss_network_alpha": str(alphas.pop()) if len(alphas) == 1 else "Dynamic",
        "ss_output_name": adapter.name,
        "ss_sd_model_name": adapter.base_name,
        "ss_training_comment": _comment(adapter),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.implementation": "diffusers",
        "modelspec.title": adapter.name,
        PROVENANCE_KEY: provenance(adapter),
    }
    if version is not None:
        metadata["ss_base_model_version"] = version
        metadata["ss_v2"] = str(version.startswith("sd_v2"))  # A1111 tells SD2 files by this flag
        if version in _ARCHITECTURES:
            metadata["modelspec.architecture"] = _ARCHITECTURES[version]
    return write_safetensors(path, tensors, metadata)


def parse_kohya(
    tensors: dict[str, Tensor], metadata: dict[str, str], unet: nn.Module, source: Path
) -> ForeignLora:
    """The UNet layers of a kohya-layout file, their names resolved against `unet`, each with s = alpha / r.

    `metadata` is not needed: sd-scripts' `ss_network_alpha` only summarizes the per-layer `.alpha` tensors.
    """
    paths: dict[str, list[str]] = {}  # kohya name -> module paths of `unet` that spell it
    for path, _ in unet.named_modules():
        if path:
            paths.setdefault(kohya_name(path), []).append(path)
    text_encoder: set[str] = set()
    # module path -> {"down" | "up" | "alpha" | "mid": the file's key}
    entries: dict[str, dict[str, str]] = {}
    for key in tensors:
        name, _, suffix = key.partition(".")
        if name.startswith(KOHYA_TEXT_ENCODER):
            text_encoder.add(name)
            continue
        if suffix == "dora_scale":
            raise AdapterFileError(
                f"{source}: a DoRA file ({key}); DoRA rescales the base weight, so it cannot become a LoRA "
                "concept: fuse it into the base model with the tool that made it, and use that as the base"
            )
        role = _ROLES.get(suffix)
        if role is None:
            raise AdapterFileError(
                f"{source}: key {key} is not part of a kohya LoRA (lora_down/lora_up/alpha); LyCORIS files "
                "(LoHa, LoKr, OFT) are not LoRA and cannot be imported"
            )
        found = paths.get(name, [])
        if not found:
            raise AdapterFileError(
                f"{source}: key {key} names no layer of this base UNet (nothing is spelled {name}); the file was "
                "made for another base model (an SDXL file from sd-scripts uses names like "
                "lora_unet_input_blocks_4_1_...): import it against that base"
            )
        if len(found) > 1:
            raise AdapterFileError(
                f"{source}: key {key} could name {' or '.join(found)} in this UNet; import it in the diffusers "
                "layout, which keeps the dots"
            )
        entries.setdefault(found[0], {})[role] = key

    def scaling(path: str, rank: int, roles: dict[str, str]) -> float:
        # No alpha entry means alpha = rank in sd-scripts and every reader.
        return float(tensors[roles["alpha"]].item()) / rank if "alpha" in roles else 1.0

    layers, not_linear = resolve_layers(entries, tensors, unet, source, scaling)
    return ForeignLora(layers=layers, text_encoder=tuple(sorted(text_encoder)), not_linear=not_linear)


def _infer_base_version(layers: dict[str, tuple[int, int]]) -> str | None:
    widths = {in_ for path, (_, in_) in layers.items() if re.search(r"attn2\.to_[kv]$", path)}
    return _BASE_VERSIONS.get(widths.pop()) if len(widths) == 1 else None


def _comment(adapter: AdapterFile) -> str:
    concept = {"token": adapter.token, "class_word": adapter.class_word}
    return f"bora-diffusion {adapter.config.method} concept {adapter.name!r} {json.dumps(concept)}"
