"""Naive LoRA summing: every concept's delta added to the base weight, W = W0 + sum_i s_i dW_i.

What a user gets by loading several LoRAs at once in A1111, ComfyUI or diffusers' `set_adapters`. Nothing keeps
the concepts apart: on a layer two concepts both adapt, each concept's inputs also pass through the other's update.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..inject import wrappers


@torch.no_grad()
def naive_sum(unet: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """The summed weight, (out, in), of every layer at least one of `names` adapts, each delta at its scale."""
    fused: dict[str, Tensor] = {}
    for path, layer in wrappers(unet):
        present = [name for name in names if name in layer.adapters]
        if not present:
            continue
        w0 = layer.original_weight
        weight = w0.detach().clone()
        for name in present:
            adapter = layer.adapters[name]
            weight += adapter.scale * adapter.delta_weight(w0).to(weight.dtype)  # (out, in)
        fused[path] = weight
    if not fused:
        raise ConfigError(f"none of {', '.join(names)} adapts a layer of this UNet; load the concepts first")
    return fused
