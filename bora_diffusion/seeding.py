"""Deterministic seeds derived from names, so every random draw has an explicit, reproducible origin.

Python's `hash()` is salted per process, so it cannot be used; sha256 is stable across runs and machines.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any sequence of printable parts, e.g. `derive_seed(0, "down_blocks.0...to_q")`."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    """A CPU `torch.Generator` seeded by `derive_seed(*parts)`."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))
