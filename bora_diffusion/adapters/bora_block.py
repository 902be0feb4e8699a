"""Block-Diversified LoRA (arXiv 2508.06953): a diagonal scale per (output block, input block) pair raises the rank.

A (r, in) is split into b input blocks A_j, B (out, r) into b output blocks B_i (uneven sizes allowed, as
`torch.tensor_split` cuts them). A raw tensor sigma (b, b, r) gives the diagonal scales

    Sigma[i, j] = exp(clamp(sigma[i, j] / (mean(|sigma|) + 1e-6), -10, 10))       (fp32, differentiated through)
    dW[block i, block j] = s * B_i @ diag(Sigma[i, j]) @ A_j

so dW reaches rank min(out, in, b r) where LoRA of rank r stays at r, for r (out + in) + b^2 r parameters.
The dense form is the exact LoRA factorization of rank b r returned by `lora_factors`; the forward works
block-wise and never forms it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..settings import Setting
from .base import AdapterLayer, Slot, init_down

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

    def add_delta(self, result: Tensor, x: Tensor, base_out: Tensor, base: nn.Linear) -> Tensor:
        x = x.to(self.dtype)
        scales = self.block_scales().to(self.dtype)  # (b, b, r)
        x_blocks = x.tensor_split(self.blocks, dim=-1)  # b x (..., in_j)
        a_blocks = self.A.tensor_split(self.blocks, dim=1)  # b x (r, in_j)
        b_blocks = self.B.tensor_split(self.blocks, dim=0)  # b x (out_i, r)
        u = torch.stack(
            [F.linear(x_j, a_j) for x_j, a_j in zip(x_blocks, a_blocks, strict=True)], dim=-2
        )  # (..., b, r)
        z = torch.einsum("ijr,...jr->...ir", scales, u)  # (..., b, r): z_i = sum_j Sigma[i, j] * u_j
        delta = torch.cat(
            [F.linear(z[..., i, :], b_i) for i, b_i in enumerate(b_blocks)], dim=-1
        )  # (..., out)
        return result + ((self.scale * self.scaling) * delta).to(result.dtype)
