"""LoRA: W' = W0 + s * B @ A, both factors trained (Hu et al., arXiv 2106.09685).

The baseline every other method is compared against; it must match peft's `LoraConfig(r, lora_alpha)` on
identical A and B, outputs and gradients alike (tests/test_oracles.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .base import AdapterLayer, Slot, init_down
from .fast import low_rank_add

if TYPE_CHECKING:
    from ..config import AdapterConfig  # a type only: config imports this package, not the other way round


class LoRA(AdapterLayer):
    method = "lora"
    grouping = "low_rank"

    def __init__(
        self, base: nn.Linear, config: AdapterConfig, generator: torch.Generator, slot: Slot | None = None
    ) -> None:
        super().__init__(base, config, slot)
        device = base.weight.device
        self.A = nn.Parameter(init_down((self.rank, self.in_features), config.init, generator, device))
        self.B = nn.Parameter(torch.zeros(self.out_features, self.rank, device=device))

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        return self.scaling * self.B @ self.A  # (out, r) @ (r, in) -> (out, in)

    def add_delta(self, result: Tensor, x: Tensor, base_out: Tensor, base: nn.Linear) -> Tensor:
        # Two GEMMs, the scale folded into the second (addmm), which adds into `result` (fast.py). Ortho
        # inherits this with A a buffer: then x is not even saved for the backward.
        return low_rank_add(result, x, self.A, self.B, self.scale * self.scaling)  # (..., out)

    def lora_factors(self) -> tuple[Tensor, Tensor, float]:
        return self.A, self.B, self.scaling
