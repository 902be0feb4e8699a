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

SDXL is the exception to the naming: sd-scripts trains it on SDXL's original UNet, whose module names are SGM's
(`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`, `lora_unet_middle_block_1_...`,
`lora_unet_output_blocks_0_1_...`; formats/sgm_names.py), and marks the file `ss_base_model_version`
"sdxl_base_v1-0" and modelspec architecture "stable-diffusion-xl-v1-base/lora". An SDXL adapter (its file records a
base UNet with addition_embed_type "text_time"; older files: a 2048-wide cross-attention) exports the same way.

Underscores are ambiguous (`to_q` holds one), so an import maps names back by matching the base UNet's own module
paths, never by splitting; on an SDXL base both spellings of each path are matched, SGM and diffusers-style.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import AdapterFileError
from .factors import (
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
from .sgm_names import SDXL, BlockLayout, to_sgm

UNET_PREFIX = "lora_unet_"
SDXL_VERSION = "sdxl_base_v1-0"
_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha", "lora_mid.weight": "mid"}
# sd-scripts' ss_base_model_version, told apart by the cross-attention K/V input width (the text embedding).
_BASE_VERSIONS = {768: "sd_v1", 1024: "sd_v2", 2048: SDXL_VERSION}
# modelspec architecture and implementation, as sd-scripts' sai_model_spec.py writes them for a LoRA (an SDXL LoRA
# names SGM modules, so its implementation is Stability's generative-models). SD 2.x's architecture depends on
# v-prediction and resolution, which an adapter file does not record: it gets none.
_ARCHITECTURES = {"sd_v1": "stable-diffusion-v1/lora", SDXL_VERSION: "stable-diffusion-xl-v1-base/lora"}
_IMPLEMENTATIONS = {SDXL_VERSION: "https://github.com/Stability-AI/generative-models"}


def kohya_name(path: str) -> str:
    """`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q` -> `lora_unet_down_blocks_0_..._attn1_to_q`."""
    return UNET_PREFIX + path.replace(".", "_")


def sgm_kohya_name(path: str, layout: BlockLayout = SDXL) -> str | None:
    """`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> `lora_unet_input_blocks_4_1_..._attn1_to_q`
    on an SDXL UNet (sd-scripts' SDXL naming), or None for a path with no SGM name."""
    sgm = to_sgm(path, layout)
    return None if sgm is None else kohya_name(sgm)


def is_sdxl(layout: Mapping | None) -> bool:
    """Whether a UNet config (or a file's recorded `unet_layout`) is SDXL's: time ids and pooled text as added
    conditioning, which only SDXL-family UNets take."""
    return bool(layout) and layout.get("addition_embed_type") == "text_time"


def export_kohya(
    source: str | os.PathLike | AdapterFile,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    base_model_version: str | None = None,
) -> Path:
    """Write a native adapter file (path or AdapterFile) as a kohya LoRA file at `path`, atomically.

    Exact for every additive method (fp32); dora and bora_bidim raise NotExportableError. `base_model_version`
    (sd-scripts' `ss_base_model_version`: "sd_v1", "sd_v2", "sdxl_base_v1-0") is inferred when omitted: SDXL from
    the base UNet the file records, otherwise from the layers' text width; it is left out of the metadata when it
    cannot be told. SDXL files get sd-scripts' SGM layer names. Returns the path.
    """
    check_dtype(dtype)
    adapter, factors = exact_lora_factors(source)
    version = base_model_version or _infer_base_version(adapter)
    layout = _block_layout(adapter) if version == SDXL_VERSION else None
    tensors: dict[str, Tensor] = {}
    ranks: set[int] = set()
    alphas: set[float] = set()
    for layer, (down, up, scaling) in factors.items():
        name = kohya_name(layer) if layout is None else sgm_kohya_name(layer, layout)
        if name is None:
            raise AdapterFileError(
                f"{adapter.path}: layer {layer} has no name in SDXL's original UNet, which SDXL kohya files use; "
                "export this adapter in the diffusers layout instead"
            )
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
    metadata = {
        "ss_network_module": "networks.lora",
        # sd-scripts writes "Dynamic" for files whose layers differ (resize_lora --dynamic_method).
        "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
        "ss_network_alpha": str(alphas.pop()) if len(alphas) == 1 else "Dynamic",
        "ss_output_name": adapter.name,
        "ss_sd_model_name": adapter.base_name,
        "ss_training_comment": _comment(adapter),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.implementation": _IMPLEMENTATIONS.get(version, "diffusers"),
        "modelspec.title": adapter.name,
        PROVENANCE_KEY: provenance(adapter),
    }
    if version is not None:
        metadata["ss_base_model_version"] = version
        metadata["ss_v2"] = str(version.startswith("sd_v2"))  # A1111 tells SD2 files by this flag
        if version in _ARCHITECTURES:
            metadata["modelspec.architecture"] = _ARCHITECTURES[version]
    resolution = (adapter.training or {}).get("resolution")
    if isinstance(resolution, int):  # what the concept was trained at
        metadata["modelspec.resolution"] = f"{resolution}x{resolution}"
    return write_safetensors(path, tensors, metadata)


def parse_kohya(
    tensors: dict[str, Tensor], metadata: dict[str, str], unet: nn.Module, source: Path
) -> ForeignLora:
    """The UNet layers of a kohya-layout file, their names resolved against `unet`, each with s = alpha / r.

    `metadata` is not needed: sd-scripts' `ss_network_alpha` only summarizes the per-layer `.alpha` tensors.
    """
    config = getattr(unet, "config", None)
    layout = BlockLayout.from_config(config) if is_sdxl(config) else None
    paths: dict[str, list[str]] = {}  # kohya name -> module paths of `unet` that spell it
    for path, _ in unet.named_modules():
        if path:
            paths.setdefault(kohya_name(path), []).append(path)
            # SDXL: sd-scripts' SGM spelling too (input_blocks / middle_block / output_blocks)
            sgm = sgm_kohya_name(path, layout) if layout is not None else None
            if sgm is not None:
                paths.setdefault(sgm, []).append(path)
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


def _infer_base_version(adapter: AdapterFile) -> str | None:
    if is_sdxl(adapter.unet_layout):
        return SDXL_VERSION
    widths = {in_ for path, (_, in_) in adapter.layers.items() if re.search(r"attn2\.to_[kv]$", path)}
    return _BASE_VERSIONS.get(widths.pop()) if len(widths) == 1 else None


def _block_layout(adapter: AdapterFile) -> BlockLayout:
    """The block numbering of the file's base UNet: recorded in the file, or (older files) the SDXL base's."""
    if not adapter.unet_layout:
        return SDXL
    try:
        return BlockLayout.from_config(adapter.unet_layout)
    except (KeyError, TypeError, ValueError) as error:
        raise AdapterFileError(
            f"{adapter.path}: its base UNet's blocks cannot be numbered as SDXL's ({error}); "
            "export this adapter in the diffusers layout instead"
        ) from None


def _comment(adapter: AdapterFile) -> str:
    concept = {"token": adapter.token, "class_word": adapter.class_word}
    return f"bora-diffusion {adapter.config.method} concept {adapter.name!r} {json.dumps(concept)}"
