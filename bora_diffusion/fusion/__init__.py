"""Merge baselines: other ways of fusing several concepts into one set of weights, to compare ours against.

The library's own composition is `bora_diffusion.merge` (disjoint slots, fused by summing exactly). These are the
baselines the literature measures merges by, one algorithm per file, each a function from a UNet holding the
concepts' adapters (loaded live, e.g. `merge.compose(pipe, files)`) to fused weights, one (out, in) matrix per
adapted layer:

- `naive.py`: naive LoRA summing, W0 + sum_i dW_i (what A1111 and ComfyUI do with several LoRAs);
- `gradient.py`: Mix-of-Show's gradient fusion (Gu et al., NeurIPS 2023, arXiv 2305.18292), per layer the
  least-squares weight that reproduces every concept's layer outputs on that concept's own recorded inputs;
- `contrastive.py`: LoRACLR's contrastive fusion (Simsar et al., CVPR 2025, arXiv 2412.09622), per layer an
  offset descended so that each concept's outputs on its own inputs match its model's and stay a margin away
  from every other concept's.

`recording.py` records the layer inputs the last two fit to.

`fused_weights` puts such weights into the UNet for as long as a `with` block runs and restores the base after.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..inject import set_active, wrappers
from .contrastive import concept_rows, contrastive_fusion, contrastive_weight, record_inputs
from .gradient import gradient_fusion, least_squares, record_grams
from .naive import naive_sum

__all__ = [
    "FusedLayers",
    "concept_rows",
    "contrastive_fusion",
    "contrastive_weight",
    "fused_weights",
    "gradient_fusion",
    "least_squares",
    "naive_sum",
    "record_grams",
    "record_inputs",
]

# module path -> the fused weight of that Linear, (out, in)
FusedLayers = Mapping[str, Tensor]


@contextmanager
def fused_weights(unet: nn.Module, weights: FusedLayers) -> Iterator[None]:
    """Inside the block every layer of `weights` has its fused weight and no adapter is active, so the UNet
    computes with the fused model alone; after it, the base weights and the adapters that were active are back."""
    layers = dict(wrappers(unet))
    unknown = sorted(set(weights) - set(layers))
    if unknown:
        raise ConfigError(f"fused weights for layers the UNet does not adapt: {', '.join(unknown[:3])}")
    active = {path: list(layer.active) for path, layer in layers.items()}
    if any(layer.merged for layer in layers.values()):
        raise ConfigError(
            "the UNet has merged adapters; compose the concepts live before fusing them another way"
        )
    saved = {path: layers[path].base.weight.detach().clone() for path in weights}
    try:
        set_active(unet, [])
        with torch.no_grad():
            for path, weight in weights.items():
                layers[path].base.weight.copy_(weight)
        yield
    finally:
        with torch.no_grad():
            for path, weight in saved.items():
                layers[path].base.weight.copy_(weight)
        for path, names in active.items():
            layers[path].set_active(names)
