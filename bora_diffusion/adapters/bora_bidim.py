"""Bi-dimensional Weight-Decomposed LoRA (arXiv 2412.06441): DoRA-like magnitudes on both axes.

    V = W0 + s * B @ A
    a = magnitude_out / sg(||V||_out)            (out,)   per-output step first, as DoRA does
    H = a[:, None] * V
    c = magnitude_in / sg(||H||_in)              (in,)    then per-input
    W' = diag(a) @ V @ diag(c)

The paper's text leaves the order of the two steps and the detaching open; we follow DoRA's convention, and this
file is the one place that choice lives. Not additive (the delta depends on W0): merges through the dense
difference, no exact LoRA export.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Slot, norm_in, norm_out
from .fast import low_rank_add, scaled_linear
from .lora import LoRA

if TYPE_CHECKING:
    from ..config import AdapterConfig  # a type only: config imports this package, not the other way round


class BiDimensional(LoRA):
    method = "bora_bidim"
    additive = False
    grouping = None  # not additive: its delta depends on W0, so it runs alone

    def __init__(
        self, base: nn.Linear, config: AdapterConfig, generator: torch.Generator, slot: Slot | None = None
    ) -> None:
        super().__init__(base, config, generator, slot)
        weight = base.weight.detach()
        self.magnitude_out = nn.Parameter(norm_out(weight))  # (out,) = ||W0||_out
        self.magnitude_in = nn.Parameter(norm_in(weight))  # (in,) = ||W0||_in; with B = 0, a = c = 1

    def _axis_scales(self, base_weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a (out,), c (in,), H = a V (out, in) without a graph); the norms are taken from V, once a step."""
        with torch.no_grad():
            v = base_weight.to(self.dtype) + super().delta_weight()  # (out, in)
            v_norm_out = norm_out(v)
            h = (self.magnitude_out / v_norm_out)[:, None] * v  # (out, in)
            h_norm_in = norm_in(h)
        a = self.magnitude_out / v_norm_out.to(self.dtype)
        c = self.magnitude_in / h_norm_in.to(self.dtype)
        return a, c, h

    def delta_weight(self, base_weight: Tensor) -> Tensor:
        a, c, _ = self._axis_scales(base_weight)
        w0 = base_weight.to(self.dtype)
        return a[:, None] * (w0 + super().delta_weight()) * c[None, :] - w0

    def add_delta(self, result: Tensor, x: Tensor, base_out: Tensor, base: nn.Linear) -> Tensor:
        # W' x - W0 x = a * W0 ((c - 1) x) + (a - 1) * W0 x + s * (a B) (A c) x. Written as differences so that it
        # is exactly zero at init (a = c = 1). The input-side scale needs one extra pass through W0, forward and
        # backward (the gradient of c reads W0^T of the output gradient): no algebra recovers W0 (c x) from
        # W0 x. Everything else rides on the small tensors: a and c move onto B (out, r) and A (r, in), so the
        # low-rank term is LoRA's two GEMMs, and the two (tokens, out) scalings are fused passes (addcmul).
        a, c, _ = self._axis_scales(base.weight)
        frozen = base_out if base.bias is None else base_out - base.bias  # W0 x
        weight = base.weight
        input_shift = F.linear((x.to(self.dtype) * (c - 1)).to(weight.dtype), weight)  # W0 ((c - 1) x)
        shifted = torch.addcmul(result, input_shift, (self.scale * a).to(result.dtype))  # (..., out)
        shifted = torch.addcmul(shifted, frozen, (self.scale * (a - 1)).to(result.dtype))  # + (a - 1) W0 x
        down, up = self.A * c[None, :], a[:, None] * self.B  # (r, in), (out, r)
        return low_rank_add(shifted, x, down, up, self.scale * self.scaling)

    def forward_whole(self, x: Tensor, base: nn.Linear) -> Tensor | None:
        # Alone on the layer, W' x + bias is one GEMM through W' = H diag(c), which the norms already built
        # (no graph through it: the backward, fast.scaled_linear's, is written by hand), where add_delta needs
        # base(x) and W0 ((c - 1) x), two.
        if not self.whole_applies(base):
            return None
        a, c, h = self._axis_scales(base.weight)
        merged = (h * c.detach()).to(base.weight.dtype)  # (out, in), W'
        return scaled_linear(x, merged, base.bias, self.A, self.B, a, c, self.scaling)

    def lora_factors(self) -> None:
        return None
