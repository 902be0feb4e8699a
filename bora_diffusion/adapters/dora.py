"""DoRA: weight-decomposed LoRA (Liu et al., arXiv 2402.09353), exactly as peft implements it.

V = W0 + s * B @ A;  W' = magnitude[:, None] * V / sg(||V||_out), with the per-output norm detached. Not additive:
its delta depends on W0, so it merges through the dense difference and has no exact LoRA export. Must match
peft's `LoraConfig(use_dora=True)` on identical tensors (tests/test_oracles.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .base import Slot, norm_out
from .fast import low_rank_add, scaled_linear
from .lora import LoRA

if TYPE_CHECKING:
    from ..config import AdapterConfig  # a type only: config imports this package, not the other way round


class DoRA(LoRA):
    method = "dora"
    additive = False

    def __init__(
        self, base: nn.Linear, config: AdapterConfig, generator: torch.Generator, slot: Slot | None = None
    ) -> None:
        super().__init__(base, config, generator, slot)
        self.magnitude = nn.Parameter(
            norm_out(base.weight.detach())
        )  # (out,) = ||W0||_out, so W' = W0 at init

    def _norm_scale(self, base_weight: Tensor) -> Tensor:
        """c = magnitude / sg(||W0 + s B A||_out): shape (out,). The norm is taken without a graph, once a step."""
        with torch.no_grad():
            v_norm = norm_out(base_weight.to(self.dtype) + super().delta_weight())
        return self.magnitude / v_norm.to(self.magnitude.dtype)

    def delta_weight(self, base_weight: Tensor) -> Tensor:
        v = base_weight.to(self.dtype) + super().delta_weight()  # (out, in)
        return self._norm_scale(base_weight)[:, None] * v - base_weight.to(self.dtype)

    def add_delta(self, result: Tensor, x: Tensor, base_out: Tensor, base: nn.Linear) -> Tensor:
        # W' x - W0 x = (c - 1) * (W0 x) + s * (c B) A x: the base output is reused, W' is never formed. The
        # first term is one fused pass (addcmul); c moves onto B (out, r) rather than onto the (tokens, out)
        # product, so the second is LoRA's two GEMMs adding into the first.
        frozen = base_out if base.bias is None else base_out - base.bias  # W0 x, bias not rescaled
        c = self._norm_scale(base.weight)  # (out,)
        shifted = torch.addcmul(result, frozen, (self.scale * (c - 1)).to(result.dtype))  # (..., out)
        return low_rank_add(shifted, x, self.A, c[:, None] * self.B, self.scale * self.scaling)

    def forward_whole(self, x: Tensor, base: nn.Linear) -> Tensor | None:
        # Alone on the layer, W' x + bias = c * (W0 x + s B A x) + bias: c folds into W0 and B, so the forward
        # makes no (tokens, out) pass beside the GEMMs.
        if not self.whole_applies(base):
            return None
        return scaled_linear(
            x, base.weight, base.bias, self.A, self.B, self._norm_scale(base.weight), None, self.scaling
        )

    def lora_factors(self) -> None:
        return None
