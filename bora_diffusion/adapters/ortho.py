"""Orthogonal Adaptation (Po et al., arXiv 2312.02432): the frozen down factor comes from a shared orthogonal basis.

Every concept rebuilds the same O_n for input width n from the ledger seed, and owns r of its columns (its slot):
A = O_n[:, index].T is frozen, B (out, r) trains. Concepts on disjoint columns have mutually orthonormal A rows,
so one concept's update barely touches another's inputs and their deltas sum without interference. SBoRA-FA is
the special case O = I. The math after A is LoRA's, so it is inherited.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..seeding import generator as seeded_generator
from .base import AdapterLayer, Slot
from .lora import LoRA

if TYPE_CHECKING:
    from ..config import AdapterConfig  # a type only: config imports this package, not the other way round


@lru_cache(maxsize=16)
def orthogonal_basis(n: int, seed: int) -> Tensor:
    """O_n (n, n), orthogonal: Q of the QR decomposition of a standard-normal matrix seeded by (seed, n), in fp32,
    with signs fixed so that diag(R) > 0 (which makes Q unique). Read-only: callers index into it."""
    gaussian = torch.randn(n, n, generator=seeded_generator("ortho-basis", seed, n), dtype=torch.float32)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r))[None, :]  # flip column j where R[j, j] < 0


class Ortho(LoRA):
    method = "ortho"
    slot_space = "ortho"

    def __init__(
        self, base: nn.Linear, config: AdapterConfig, generator: torch.Generator, slot: Slot | None = None
    ) -> None:
        AdapterLayer.__init__(self, base, config, slot)  # LoRA's init would draw a trainable A
        device = base.weight.device
        basis = orthogonal_basis(self.in_features, slot.seed)  # (in, in)
        # A buffer, not a parameter: frozen, and saved with the adapter so a file is self-contained.
        self.register_buffer(
            "A", basis[:, torch.as_tensor(slot.index, dtype=torch.int64)].T.contiguous().to(device)
        )  # (r, in)
        self.B = nn.Parameter(torch.zeros(self.out_features, self.rank, device=device))
