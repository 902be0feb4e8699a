"""The adapter methods, registered by id.

A new method is one file with an `AdapterLayer` subclass plus one line in `_METHODS`, options included: a method
declares its own (`AdapterLayer.options`) and the configs, CLI, concept.toml and the app take them from here. It
then joins the test matrix (tests/test_methods.py) on its own. `bora_diffusion.inject.wrap_linear` adapts one
nn.Linear outside any UNet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..errors import ConfigError
from ..seeding import generator as seeded_generator
from .base import AdaptedLinear, AdapterLayer, Slot
from .bora_bidim import BiDimensional
from .bora_block import BlockDiversified
from .dora import DoRA
from .lora import LoRA
from .ortho import Ortho, orthogonal_basis
from .sbora import SBoRAFA, SBoRAFB

if TYPE_CHECKING:
    from ..config import AdapterConfig  # a type only: config imports this package, not the other way round

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
    "option_names",
    "option_owners",
    "orthogonal_basis",
]


def available() -> list[str]:
    """The registered method ids, in a stable order."""
    return list(_METHODS)


def get(method: str) -> type[AdapterLayer]:
    """The adapter class of method id `method`; an unknown id is a ConfigError listing the known ones."""
    try:
        return _METHODS[method]
    except KeyError:
        raise ConfigError(f"method {method!r} is unknown; choose one of {', '.join(_METHODS)}") from None


def option_names(method: str) -> set[str]:
    """The names of the options `method` declares (`{"blocks"}` for bora_block)."""
    return {option.name for option in get(method).options}


def option_owners(name: str) -> list[str]:
    """The methods that declare an option called `name`, in registry order."""
    return [method for method in _METHODS if name in option_names(method)]


def build(base: nn.Linear, config: AdapterConfig, *, path: str, slot: Slot | None = None) -> AdapterLayer:
    """One adapter layer for `base`, its init drawn from a generator seeded by (config.seed, path)."""
    return get(config.method)(base, config, seeded_generator("adapter-init", config.seed, path), slot)
