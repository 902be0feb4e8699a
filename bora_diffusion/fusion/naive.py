"""Naive LoRA summing: every concept's delta added to the base weight, W = W0 + sum_i s_i dW_i.

What a user gets by loading several LoRAs at once in A1111, ComfyUI or diffusers' `set_adapters`. Nothing keeps
the concepts apart: on a layer two concepts both adapt, each concept's inputs also pass through the other's update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..inject import wrappers


@torch.no_grad()
def concept_deltas(unet: nn.Module, names: Sequence[str]) -> dict[str, tuple[Tensor, dict[str, Tensor]]]:
    """Per layer at least one of `names` adapts: W0 and, by concept, each one's s_i dW_i there, all (out, in)."""
    deltas: dict[str, tuple[Tensor, dict[str, Tensor]]] = {}
    for path, layer in wrappers(unet):
        present = [name for name in names if name in layer.adapters]
        if present:
            w0 = layer.original_weight
            adapters = {name: layer.adapters[name] for name in present}
            deltas[path] = (w0, {n: a.scale * a.delta_weight(w0).to(w0.dtype) for n, a in adapters.items()})
    if not deltas:
        raise ConfigError(f"none of {', '.join(names)} adapts a layer of this UNet; load the concepts first")
    return deltas


@torch.no_grad()
def naive_sum(unet: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """The summed weight, (out, in), of every layer at least one of `names` adapts, each delta at its scale."""
    fused: dict[str, Tensor] = {}
    for path, (w0, deltas) in concept_deltas(unet, names).items():
        weight = w0.detach().clone()
        for delta in deltas.values():
            weight += delta  # (out, in)
        fused[path] = weight
    return fused
