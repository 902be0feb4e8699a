"""Matched budgets: the rank each method of a comparison trains with, and what it costs in trainable parameters.

Every method trains for the same steps with the same learning rate, batch, resolution and seed (one
`TrainConfig` for all). Ranks follow a stated rule:

- ``params`` (default): the first method gets `rank`; every other method gets the rank whose trainable-parameter
  count on the targeted layers is nearest to the first's (counted exactly, by injecting and counting). SBoRA and
  ortho train one factor, so they get about twice LoRA's rank; bora_block's block scales cost a little more. A
  slot method whose nearest rank exceeds its slot capacity (n concepts x rank must fit each layer) gets the
  largest rank that fits, and the table says so.
- ``rank``: every method gets `rank`; parameter counts then differ, and the table shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..adapters import available, get
from ..config import AdapterConfig
from ..errors import ConfigError
from ..inject import concepts as model_concepts
from ..inject import find_targets, inject, remove, wrappers

__all__ = ["RANK_RULES", "MethodBudget", "match_budgets", "trainable_parameters"]

RANK_RULES = ("params", "rank")
_PROBE = "__budget_probe__"


@dataclass(frozen=True)
class MethodBudget:
    """The rank a method trains with and what it costs: trainable parameters per concept on the targeted layers,
    and their ratio to the reference method's."""

    method: str
    rank: int
    blocks: int | None
    trainable_params: int
    ratio: float
    note: str = ""

    def adapter_config(self, targets: str | tuple[str, ...], seed: int) -> AdapterConfig:
        return AdapterConfig(
            method=self.method, rank=self.rank, blocks=self.blocks, targets=targets, seed=seed
        )


def trainable_parameters(unet: nn.Module, config: AdapterConfig) -> int:
    """Trainable values one concept with `config` adds to `unet` (counted by injecting it and taking it off)."""
    inject(unet, config, name=_PROBE)
    try:
        return sum(
            param.numel()
            for _, wrapper in wrappers(unet)
            if _PROBE in wrapper.adapters
            for param in wrapper.adapters[_PROBE].parameters()
        )
    finally:
        remove(unet, _PROBE)


def _max_rank(unet: nn.Module, method: str, targets: str | tuple[str, ...], concepts: int) -> int:
    """The largest rank that fits every targeted layer: slot methods need `concepts` x rank indices of their
    space per layer; the others are capped at min(out, in), past which a low-rank factor stops being low-rank."""
    space = get(method).slot_space
    sizes = []
    for path in find_targets(unet, targets):
        layer = unet.get_submodule(path)
        if space is None:
            sizes.append(min(layer.out_features, layer.in_features))
        else:
            sizes.append((layer.out_features if space == "out" else layer.in_features) // concepts)
    return min(sizes)


def match_budgets(
    unet: nn.Module,
    methods: Sequence[str],
    *,
    rank: int = 4,
    rule: str = "params",
    concepts: int = 1,
    targets: str | tuple[str, ...] = "attention",
    blocks: int | None = None,
) -> list[MethodBudget]:
    """Each method's rank under `rule` (see the module docstring); the first method is the reference at `rank`.

    `unet` must hold no concepts (probes are injected and removed). `blocks` applies to bora_block (default 4).
    """
    methods = list(methods)
    if not methods:
        raise ConfigError("compare needs at least one method")
    unknown = [m for m in methods if m not in available()]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(available())}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods must be distinct, got {', '.join(methods)}")
    if rule not in RANK_RULES:
        raise ConfigError(f"rank rule must be one of {', '.join(RANK_RULES)}, got {rule!r}")
    present = model_concepts(unet)
    if present:
        raise ConfigError(
            f"the UNet already holds concepts ({', '.join(present)}); match budgets on a clean base"
        )

    def config(method: str, r: int) -> AdapterConfig:
        return AdapterConfig(
            method=method, rank=r, blocks=blocks if method == "bora_block" else None, targets=targets
        )

    reference_cap = _max_rank(unet, methods[0], targets, concepts)
    if rank > reference_cap:
        raise ConfigError(
            f"rank {rank} does not fit {methods[0]} with {concepts} concept(s) on these layers (at most "
            f"{reference_cap}); lower --rank"
        )
    reference = trainable_parameters(unet, config(methods[0], rank))
    budgets = []
    for method in methods:
        cap = _max_rank(unet, method, targets, concepts)
        note = ""
        if method == methods[0]:
            chosen = rank
        elif rule == "rank":
            if rank > cap:
                raise ConfigError(
                    f"rank {rank} does not fit {method} with {concepts} concept(s) (at most {cap}); lower --rank"
                )
            chosen = rank
        else:
            chosen = _nearest_rank(
                lambda r, m=method: trainable_parameters(unet, config(m, r)), reference, cap
            )
            if chosen == cap and trainable_parameters(unet, config(method, cap)) < reference:
                note = f"capped at rank {cap}: slot capacity of the smallest layer for {concepts} concept(s)"
        params = trainable_parameters(unet, config(method, chosen))
        budgets.append(
            MethodBudget(
                method=method,
                rank=chosen,
                blocks=config(method, chosen).blocks,
                trainable_params=params,
                ratio=params / reference,
                note=note,
            )
        )
    return budgets


def _nearest_rank(count: Callable[[int], int], target: int, cap: int) -> int:
    """The rank in 1..cap whose count is nearest to `target` (counts grow with rank: a binary search finds the
    first rank at or above the target, then it is compared with the one below)."""
    low, high = 1, cap
    while low < high:
        middle = (low + high) // 2
        if count(middle) >= target:
            high = middle
        else:
            low = middle + 1
    if low > 1 and abs(count(low - 1) - target) <= abs(count(low) - target):
        return low - 1
    return low
