"""Typed, frozen configs, validated when they are built. Files and the CLI go through `to_dict` / `from_dict`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

INITS = ("kaiming", "gaussian")


@dataclass(frozen=True)
class AdapterConfig:
    """How to build one concept's adapters.

    `rank` is r; `alpha` defaults to r so that the scaling s = alpha / r is 1 (diffusers' DreamBooth recipe).
    `blocks` is b of `bora_block` (default 4) and must stay None for every other method.
    `init` picks the trainable down factor's init for the methods that have one: "kaiming" (uniform, a=sqrt(5),
    like a fresh nn.Linear) or "gaussian" (N(0, 1/r^2)).
    `seed` seeds the initialization (each layer derives its own generator from it and its module path).
    `targets` is a preset name ("attention", "cross_kv", "self_attention") or a tuple of regular expressions
    matched against module paths.
    """

    method: str
    rank: int = 4
    alpha: float | None = None
    blocks: int | None = None
    init: str = "kaiming"
    seed: int = 0
    targets: str | tuple[str, ...] = "attention"

    def __post_init__(self) -> None:
        from .adapters import available  # late import: the registry imports this module

        if self.method not in available():
            raise ConfigError(f"method {self.method!r} is unknown; choose one of {', '.join(available())}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"alpha must be positive (or omitted to mean alpha = rank), got {self.alpha!r}")
        if self.method == "bora_block":
            if self.blocks is None:
                object.__setattr__(self, "blocks", 4)
            elif not isinstance(self.blocks, int) or self.blocks < 1:
                raise ConfigError(f"blocks must be a positive integer, got {self.blocks!r}")
        elif self.blocks is not None:
            raise ConfigError(f"blocks is an option of bora_block only; remove it for method {self.method!r}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scaling(self) -> float:
        """s = alpha / r: the fixed factor on the low-rank update."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if isinstance(self.targets, tuple):
            data["targets"] = list(self.targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown adapter config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if "method" not in data:
            raise ConfigError("adapter config has no 'method' field")
        return cls(**data)
