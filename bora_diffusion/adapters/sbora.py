"""Standard-Basis LoRA (Po et al., arXiv 2407.05413): one factor is frozen to standard basis vectors.

- `sbora_fa`: A = rows `index` of I_in, only B (out, r) trains. dW[:, index] = s * B: r input columns change.
- `sbora_fb`: B = columns `index` of I_out, only A (r, in) trains. dW[index, :] = s * A: r output rows change.

The one-hot factor is never built on the forward path: FA gathers `x[..., index]`, FB scatters into the output
channels `index`, and merging is one `index_add_` on the weight. That is what makes the update regional, cheap,
and exactly additive across concepts whose slots (`index`) are disjoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .base import AdapterLayer, Slot
from .fast import gather_add, scatter_add

if TYPE_CHECKING:
    from ..config import AdapterConfig  # a type only: config imports this package, not the other way round


class SBoRAFA(AdapterLayer):
    method = "sbora_fa"
    grouping = "gather"
    slot_space = "in"

    def __init__(
        self, base: nn.Linear, config: AdapterConfig, generator: torch.Generator, slot: Slot | None = None
    ) -> None:
        super().__init__(base, config, slot)
        self.B = nn.Parameter(torch.zeros(self.out_features, self.rank, device=base.weight.device))

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        delta = self.B.new_zeros(self.out_features, self.in_features)
        return delta.index_copy(1, self.index, self.scaling * self.B)  # (out, in), nonzero in columns `index`

    def add_delta(self, result: Tensor, x: Tensor, base_out: Tensor, base: nn.Linear) -> Tensor:
        # A gather, never a one-hot matmul: (..., in) -> (..., r), then B's projection added in one GEMM. The
        # backward keeps x[..., index] (tokens, r) alone, not x (tokens, in).
        return gather_add(result, x, self.index, self.B, self.scale * self.scaling)  # (..., out)

    def merge_into(self, weight: Tensor, factor: float, base_weight: Tensor) -> None:
        weight.index_add_(1, self.index, (factor * self.scaling * self.B).to(weight.dtype))

    def lora_factors(self) -> tuple[Tensor, Tensor, float]:
        down = self.B.new_zeros(self.rank, self.in_features)
        down[torch.arange(self.rank), self.index] = 1.0  # (r, in): rows of the identity
        return down, self.B, self.scaling


class SBoRAFB(AdapterLayer):
    method = "sbora_fb"
    slot_space = "out"

    def __init__(
        self, base: nn.Linear, config: AdapterConfig, generator: torch.Generator, slot: Slot | None = None
    ) -> None:
        super().__init__(base, config, slot)
        self.A = nn.Parameter(torch.zeros(self.rank, self.in_features, device=base.weight.device))

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        delta = self.A.new_zeros(self.out_features, self.in_features)
        return delta.index_copy(0, self.index, self.scaling * self.A)  # (out, in), nonzero in rows `index`

    def add_delta(self, result: Tensor, x: Tensor, base_out: Tensor, base: nn.Linear) -> Tensor:
        # (..., in) -> (..., r), scattered into output channels `index` of a copy of `result` (fast.py).
        return scatter_add(result, x, self.A, self.index, self.scale * self.scaling)  # (..., out)

    def merge_into(self, weight: Tensor, factor: float, base_weight: Tensor) -> None:
        weight.index_add_(0, self.index, (factor * self.scaling * self.A).to(weight.dtype))

    def lora_factors(self) -> tuple[Tensor, Tensor, float]:
        up = self.A.new_zeros(self.out_features, self.rank)
        up[self.index, torch.arange(self.rank)] = 1.0  # (out, r): columns of the identity
        return self.A, up, self.scaling
