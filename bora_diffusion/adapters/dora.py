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
    grouping = None  # not additive: its delta depends on W0, so it runs alone

    def __init__(
        self, base: nn.Linear, config: AdapterConfig, generator: torch.Generator, slot: Slot | None = None
    ) -> None:
        super().__init__(base, config, generator, slot)
        self.magnitude = nn.Parameter(
            norm_out(base.weight.detach())
        )  # (out,) = ||W0||_out, so W' = W0 at init

    def _norm_scale(self, base_weight: Tensor) -> tuple[Tensor, Tensor]:
        """(c = magnitude / sg(||V||_out) (out,), V = W0 + s B A (out, in) without a graph); the norm is taken
        once a step."""
        with torch.no_grad():
            v = base_weight.to(self.dtype) + super().delta_weight()  # (out, in)
            v_norm = norm_out(v)
        return self.magnitude / v_norm.to(self.magnitude.dtype), v

    def delta_weight(self, base_weight: Tensor) -> Tensor:
        v = base_weight.to(self.dtype) + super().delta_weight()  # (out, in)
        return self._norm_scale(base_weight)[0][:, None] * v - base_weight.to(self.dtype)

    def add_delta(self, result: Tensor, x: Tensor, base_out: Tensor, base: nn.Linear) -> Tensor:
        # W' x - W0 x = (c - 1) * (W0 x) + s * (c B) A x: the base output is reused, W' is never formed. The
        # first term is one fused pass (addcmul); c moves onto B (out, r) rather than onto the (tokens, out)
        # product, so the second is LoRA's two GEMMs adding into the first.
        frozen = base_out if base.bias is None else base_out - base.bias  # W0 x, bias not rescaled
        c, _ = self._norm_scale(base.weight)  # (out,)
        shifted = torch.addcmul(result, frozen, (self.scale * (c - 1)).to(result.dtype))  # (..., out)
        return low_rank_add(shifted, x, self.A, c[:, None] * self.B, self.scale * self.scaling)

    def forward_whole(self, x: Tensor, base: nn.Linear) -> Tensor | None:
        # Alone on the layer, W' x + bias is one GEMM through W' = c V, which the norm already built (no graph
        # through it: fast.scaled_linear's backward is written by hand), with no pass over the (tokens, out)
        # output beside it.
        if not self.whole_applies(base):
            return None
        c, v = self._norm_scale(base.weight)
        merged = (c.detach()[:, None] * v).to(base.weight.dtype)  # (out, in), W'
        return scaled_linear(x, merged, base.bias, self.A, self.B, c, None, self.scaling)

    def lora_factors(self) -> None:
        return None
