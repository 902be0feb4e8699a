"""The adapter methods, registered by id, and `wrap_linear` to adapt one nn.Linear.

A new method is one file with an `AdapterLayer` subclass plus one line in `_METHODS`; it then joins the test
matrix (tests/test_methods.py) on its own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import AdapterConfig
from ..errors import ConfigError
from ..seeding import generator as seeded_generator
from .base import AdaptedLinear, AdapterLayer, Slot
from .bora_bidim import BiDimensional
from .bora_block import BlockDiversified
from .dora import DoRA
from .lora import LoRA
from .ortho import Ortho, orthogonal_basis
from .sbora import SBoRAFA, SBoRAFB

_METHODS: dict[str, type[AdapterLayer]] = {
    cls.method: cls for cls in (LoRA, DoRA, SBoRAFA, SBoRAFB, Ortho, BlockDiversified, BiDimensional)
}

__all__ = [
    "AdaptedLinear",
    "AdapterLayer",
    "Slot",
    "available",
    "build",
    "get",
    "orthogonal_basis",
    "wrap_linear",
]


def available() -> list[str]:
    """The registered method ids, in a stable order."""
    return list(_METHODS)


def get(method: str) -> type[AdapterLayer]:
    try:
        return _METHODS[method]
    except KeyError:
        raise ConfigError(f"method {method!r} is unknown; choose one of {', '.join(_METHODS)}") from None


def build(base: nn.Linear, config: AdapterConfig, *, path: str, slot: Slot | None = None) -> AdapterLayer:
    """One adapter layer for `base`, its init drawn from a generator seeded by (config.seed, path)."""
    return get(config.method)(base, config, seeded_generator("adapter-init", config.seed, path), slot)


def wrap_linear(
    linear: nn.Linear,
    method: str,
    *,
    name: str = "default",
    rank: int = 4,
    alpha: float | None = None,
    index: Tensor | list[int] | None = None,
    blocks: int | None = None,
    seed: int = 0,
) -> AdaptedLinear:
    """Wrap one nn.Linear (or add a concept to an existing wrapper) outside any UNet.

    `index` gives the slot for the methods that take one (`sbora_fa`, `sbora_fb`, `ortho`); when omitted, a slot
    ledger seeded by `seed` allocates one that no other concept on this wrapper holds.
    """
    from ..inject import (
        ledger_from_model,
    )  # late import: inject builds on this package, not the other way round

    config = AdapterConfig(method=method, rank=rank, alpha=alpha, blocks=blocks, seed=seed)
    wrapper = linear if isinstance(linear, AdaptedLinear) else AdaptedLinear(linear)
    cls = get(method)
    slot = None
    if cls.slot_space is not None:
        if index is None:
            size = wrapper.out_features if cls.slot_space == "out" else wrapper.in_features
            ledger = ledger_from_model(wrapper, seed)  # the wrapper itself has module path ""
            index = ledger.allocate(name, cls.slot_space, {"": size}, rank)[""]
        slot = Slot(torch.as_tensor(index, dtype=torch.int64), seed)
    elif index is not None:
        raise ConfigError(f"method {method!r} takes no slot index; drop index=")
    wrapper.add(name, build(wrapper.base, config, path=name, slot=slot))
    return wrapper
