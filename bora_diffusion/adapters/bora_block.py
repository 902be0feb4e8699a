"""Block-Diversified LoRA (arXiv 2508.06953): a diagonal scale per (output block, input block) pair raises the rank.

A (r, in) is split into b input blocks A_j, B (out, r) into b output blocks B_i (uneven sizes allowed, as
`torch.tensor_split` cuts them). A raw tensor sigma (b, b, r) gives the diagonal scales

    Sigma[i, j] = exp(clamp(sigma[i, j] / (mean(|sigma|) + 1e-6), -10, 10))       (fp32, differentiated through)
    dW[block i, block j] = s * B_i @ diag(Sigma[i, j]) @ A_j

so dW reaches rank min(out, in, b r) where LoRA of rank r stays at r, for r (out + in) + b^2 r parameters.
The dense form is the exact LoRA factorization of rank b r returned by `lora_factors`. The forward uses that
factorization too, built in a few vectorized ops on the small factors (never b^2 block products), and runs as
LoRA's two GEMMs at rank b r; it never forms the dense (out, in) delta.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..settings import Setting
from .base import AdapterLayer, Slot, init_down
from .fast import low_rank_add

if TYPE_CHECKING:
    from ..config import AdapterConfig  # a type only: config imports this package, not the other way round


class BlockDiversified(AdapterLayer):
    method = "bora_block"
    options = (
        Setting("blocks", int, 4, "blocks b: the weight is cut into b x b blocks, each with its own diagonal "
                "scale, so the update reaches rank b r", positive=True),
    )  # fmt: skip
    suggested_rank = 2  # b blocks of rank r give rank b r: keep r small

    def __init__(
        self, base: nn.Linear, config: AdapterConfig, generator: torch.Generator, slot: Slot | None = None
    ) -> None:
        super().__init__(base, config, slot)
        self.blocks = config.options["blocks"]
        if self.blocks > min(self.out_features, self.in_features):
            raise ConfigError(
                f"bora_block: blocks={self.blocks} exceeds min(out, in) = {min(self.out_features, self.in_features)} "
                f"of a ({self.out_features}, {self.in_features}) layer; use blocks <= {min(self.out_features, self.in_features)}"
            )
        device = base.weight.device
        bound = self.rank**-0.5
        self.A = nn.Parameter(init_down((self.rank, self.in_features), config.init, generator, device))
        self.B = nn.Parameter(torch.zeros(self.out_features, self.rank, device=device))
        sigma = torch.empty(self.blocks, self.blocks, self.rank).uniform_(-bound, bound, generator=generator)
        self.sigma = nn.Parameter(sigma.to(device))
        # The block each input feature (and each output unit) falls in, as `tensor_split` cuts them; plain attributes,
        # not buffers, so that the adapter's tensors (and its files) stay what they were.
        self._in_block = torch.cat(
            [
                torch.full((len(part),), j)
                for j, part in enumerate(torch.arange(self.in_features).tensor_split(self.blocks))
            ]
        )  # (in,) int64
        out_block = torch.cat(
            [
                torch.full((len(part),), i)
                for i, part in enumerate(torch.arange(self.out_features).tensor_split(self.blocks))
            ]
        )  # (out,) int64
        # Made here, on the CPU: one_hot on a GPU checks its input's range, a sync on every forward.
        self._out_mask = torch.nn.functional.one_hot(out_block, self.blocks).bool()  # (out, b)

    def block_scales(self) -> Tensor:
        """Sigma (b, b, r) in fp32: the normalized, clamped exponential of the raw sigma."""
        raw = self.sigma.float()
        return torch.exp(torch.clamp(raw / (raw.abs().mean() + 1e-6), -10.0, 10.0))

    def lora_factors(self) -> tuple[Tensor, Tensor, float]:
        """up = blockdiag(B_1..B_b) (out, b r); down (b r, in) with block-row i = [Sigma[i, j] * A_j for j]."""
        scales = self.block_scales().to(self.dtype)  # (b, b, r)
        a_blocks = self.A.tensor_split(self.blocks, dim=1)  # b x (r, in_j)
        b_blocks = self.B.tensor_split(self.blocks, dim=0)  # b x (out_i, r)
        up = torch.block_diag(*b_blocks)  # (out, b r)
        down = torch.cat(
            [
                torch.cat([scales[i, j, :, None] * a_j for j, a_j in enumerate(a_blocks)], dim=1)
                for i in range(self.blocks)
            ],
            dim=0,
        )  # (b r, in)
        return down, up, self.scaling

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        down, up, scaling = self.lora_factors()
        return scaling * up @ down  # (out, b r) @ (b r, in) -> (out, in)

    def fast_factors(self) -> tuple[Tensor, Tensor]:
        """`lora_factors`' (down (b r, in), up (out, b r)) in four vectorized ops, for the forward pass."""
        if self._in_block.device != self.A.device:  # moved once, after the module moved
            self._in_block = self._in_block.to(self.A.device)
            self._out_mask = self._out_mask.to(self.A.device)
        scales = self.block_scales().to(self.dtype)  # (b, b, r)
        # down[i r + k, col] = Sigma[i, block(col), k] * A[k, col]
        per_column = scales.permute(0, 2, 1).index_select(2, self._in_block)  # (b, r, b) -> (b, r, in)
        down = (per_column * self.A).reshape(self.blocks * self.rank, self.in_features)  # (b r, in)
        # up[o, i r + k] = B[o, k] where o lies in output block i, else 0: block-diagonal
        up = (self._out_mask.to(self.dtype)[:, :, None] * self.B[:, None, :]).reshape(
            self.out_features, self.blocks * self.rank
        )
        return down, up

    def add_delta(self, result: Tensor, x: Tensor, base_out: Tensor, base: nn.Linear) -> Tensor:
        # The rank-(b r) factorization as two GEMMs; the zeros of the block-diagonal up factor cost b times a
        # rank-r GEMM's arithmetic, but one launch, and at these ranks a GEMM is bound by reading x and writing
        # the output, not by its width.
        down, up = self.fast_factors()
        return low_rank_add(result, x, down, up, self.scale * self.scaling)  # (..., out)
