"""The two classes every method shares.

`AdapterLayer` is one concept's adapter on one frozen Linear. A method implements its math once:
`delta_weight()` (the dense W' - W0, for merging, exports and tests) and, where it pays, `add_delta()`, a forward
that never builds the dense matrix, and `forward_whole()`, the layer's whole output W' x + bias for when the
adapter is the only live one (a non-additive method may need a second pass through W0 for the difference alone).
Everything else (scale, enable, merge, unmerge, several concepts per layer)
lives once in `AdaptedLinear`, the wrapper that takes the Linear's place in the model.

Conventions (docs/methods.md): W0 has shape (out, in); A is (r, in), the down factor; B is (out, r), the up
factor; `scaling` is s = alpha / r, fixed by the config; `scale` is the concept's weight in a composition, set by
the user (1.0 by default). The effective weight of a layer is W0 + sum_k scale_k * (W'_k - W0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, SlotError
from ..settings import Setting
from ..slots import slot_size
from .grouped import grouped_forward

if TYPE_CHECKING:
    from ..config import AdapterConfig  # a type only: config imports this package, not the other way round

NORM_FLOOR = 1e-8


@dataclass(frozen=True)
class Slot:
    """A concept's slot on one layer: `index` (r,) int64 into the method's slot space, and the ledger seed that
    the shared orthogonal basis of `ortho` is rebuilt from."""

    index: Tensor
    seed: int = 0


def norm_out(weight: Tensor) -> Tensor:
    """Per-output L2 norm of an (out, in) weight, in fp32 with a floor: shape (out,)."""
    return torch.linalg.vector_norm(weight.float(), dim=1).clamp_min(NORM_FLOOR)


def norm_in(weight: Tensor) -> Tensor:
    """Per-input L2 norm of an (out, in) weight, in fp32 with a floor: shape (in,)."""
    return torch.linalg.vector_norm(weight.float(), dim=0).clamp_min(NORM_FLOOR)


def init_down(shape: tuple[int, int], init: str, generator: torch.Generator, device: torch.device) -> Tensor:
    """A trainable down factor (r, in): Kaiming-uniform with a = sqrt(5), like a fresh nn.Linear, or N(0, 1/r^2)."""
    factor = torch.empty(shape, device="cpu")
    if init == "gaussian":
        nn.init.normal_(factor, std=1.0 / shape[0], generator=generator)
    else:
        nn.init.kaiming_uniform_(factor, a=math.sqrt(5), generator=generator)
    return factor.to(device)


class AdapterLayer(nn.Module):
    """One concept on one Linear. Subclasses define the tensors and the math; see the module docstring.

    Class attributes a method sets:
    - `method`: its registry id.
    - `additive`: True when W' - W0 does not depend on W0, so deltas of several concepts simply add and the
      layer exports as exact LoRA factors. DoRA-like methods are not additive.
    - `slot_space`: the index space its slots live in ("in" features, "out" units, or "ortho" basis columns),
      None when the method takes no slots.
    - `options`: the settings only this method has (`blocks` of `bora_block`), each a `Setting`; they arrive in
      `config.options`, checked and defaulted, and the CLI, concept.toml and the app offer them from here.
    - `suggested_rank`: the rank the app's form starts at for this method.
    - `grouping`: how several live concepts of this method on one layer add up as one product in generation
      (`grouped.py`): "gather" (a one-hot down factor `index`, an up factor `B`), "low_rank" (factors `A`, `B`),
      or None, each concept then running its own forward.
    """

    method: ClassVar[str]
    additive: ClassVar[bool] = True
    slot_space: ClassVar[str | None] = None
    options: ClassVar[tuple[Setting, ...]] = ()
    suggested_rank: ClassVar[int] = 4
    grouping: ClassVar[str | None] = None

    def __init__(self, base: nn.Linear, config: AdapterConfig, slot: Slot | None = None) -> None:
        super().__init__()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.rank = config.rank
        self.scaling = config.scaling
        self.scale = 1.0
        self.config = config
        if self.slot_space is None:
            if slot is not None:
                raise SlotError(f"method {self.method!r} takes no slot index; drop it")
            return
        if slot is None:
            raise SlotError(f"method {self.method!r} needs a slot index; get one from the slot allocator")
        size = slot_size(self.slot_space, self.in_features, self.out_features)
        index = torch.as_tensor(slot.index, dtype=torch.int64, device="cpu").flatten()
        if index.numel() != self.rank or index.unique().numel() != self.rank:
            raise SlotError(f"slot index must hold {self.rank} distinct indices, got {index.tolist()}")
        if int(index.min()) < 0 or int(index.max()) >= size:
            raise SlotError(f"slot index {index.tolist()} is out of range for {self.slot_space} size {size}")
        self.register_buffer("index", index.to(base.weight.device))
        self.slot_seed = slot.seed

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the adapter computes in (its first tensor's); inputs are cast to it, results cast back."""
        return next(t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point()).dtype

    def delta_weight(self, base_weight: Tensor) -> Tensor:
        """The dense update W' - W0 for this layer, shape (out, in), at scale 1."""
        raise NotImplementedError

    def add_delta(self, result: Tensor, x: Tensor, base_out: Tensor, base: nn.Linear) -> Tensor:
        """Return `result + scale * (W' - W0) x` out of place. `base_out` is base(x), bias included.

        The default goes through the dense delta; methods override it with a path that never forms it.
        """
        delta = F.linear(x.to(self.dtype), self.delta_weight(base.weight))
        return result + (self.scale * delta).to(result.dtype)

    def forward_whole(self, x: Tensor, base: nn.Linear) -> Tensor | None:
        """The layer's whole output, `base(x) + scale * (W' - W0) x`, when this adapter is the only live one on
        it; None (the default) has the wrapper add `add_delta` to base(x) instead."""
        return None

    def whole_applies(self, base: nn.Linear) -> bool:
        """Whether W' x alone is the layer's output: at scale 1 (otherwise W0 x is needed beside it) and with a
        frozen base (`forward_whole` paths give the base weight and bias no gradient)."""
        frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
        return self.scale == 1.0 and frozen

    def merge_into(self, weight: Tensor, factor: float, base_weight: Tensor) -> None:
        """Add `factor * (W' - W0)` into `weight` in place. `base_weight` is W0, before any merge."""
        weight.add_(self.delta_weight(base_weight).to(weight.dtype), alpha=factor)

    def lora_factors(self) -> tuple[Tensor, Tensor, float] | None:
        """Exact LoRA factors `(down (R, in), up (out, R), s)` with W' - W0 = s * up @ down, or None."""
        return None

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


class AdaptedLinear(nn.Module):
    """A frozen nn.Linear plus named adapters, one per concept. It takes the Linear's place in the model.

    Forward adds the active, unmerged adapters to base(x), or lets a lone one compute the whole output when it
    can (`AdapterLayer.forward_whole`). `merge` fuses adapters into the base weight after
    keeping a copy of the original; `unmerge` restores that copy, so it is bit-exact for every method.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"AdaptedLinear wraps nn.Linear, got {type(base).__name__}")
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.merged: list[str] = []
        self._original_weight: Tensor | None = None  # W0 while anything is merged; not part of state_dict

    # The wrapped Linear's attributes, for code that reads them off the projection (diffusers does).
    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def original_weight(self) -> Tensor:
        """W0: the base weight as it was before any merge."""
        return self.base.weight if self._original_weight is None else self._original_weight

    def add(self, name: str, adapter: AdapterLayer, *, active: bool = True) -> AdapterLayer:
        if name in self.adapters:
            raise ConfigError(
                f"adapter {name!r} already exists on this layer; delete it first or pick another name"
            )
        if (adapter.in_features, adapter.out_features) != (self.in_features, self.out_features):
            raise ValueError(
                f"adapter {name!r} is for a ({adapter.out_features}, {adapter.in_features}) weight, "
                f"this layer's is ({self.out_features}, {self.in_features})"
            )
        self.adapters[name] = adapter
        if active:
            self.active.append(name)
        return adapter

    def delete(self, name: str) -> None:
        self._require(name)
        if name in self.merged:
            self.unmerge()
        del self.adapters[name]
        if name in self.active:
            self.active.remove(name)

    def set_active(self, names: list[str]) -> None:
        """Which adapters take part in forward, in order. An empty list gives the base layer."""
        for name in names:
            self._require(name)
        self.active = list(names)

    def forward(self, x: Tensor) -> Tensor:
        live = [name for name in self.active if name not in self.merged]
        if len(live) == 1:
            whole = self.adapters[live[0]].forward_whole(x, self.base)
            if whole is not None:
                return whole
        result = self.base(x)
        if len(live) > 1 and not torch.is_grad_enabled():  # generation: one product per kind (grouped.py)
            return grouped_forward(self, live, result, x)
        base_out = result
        for name in live:
            result = self.adapters[name].add_delta(result, x, base_out, self.base)
        return result

    @torch.no_grad()
    def merge(self, names: list[str] | None = None) -> None:
        """Fuse adapters (default: the active ones) into the base weight, each at its current `scale`.

        Every delta is computed against the original W0, so the order of merging never matters, also for the
        methods whose delta depends on W0.
        """
        names = list(self.active if names is None else names)
        for name in names:
            self._require(name)
        todo = [name for name in names if name not in self.merged]
        if not todo:
            return
        weight = self.base.weight
        if self._original_weight is None:
            self._original_weight = weight.detach().clone()
        for name in todo:
            adapter = self.adapters[name]
            adapter.merge_into(weight.data, adapter.scale, self._original_weight)
            self.merged.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight exactly as it was before the first merge."""
        if self._original_weight is None:
            return
        self.base.weight.data.copy_(self._original_weight)
        self._original_weight = None
        self.merged = []

    def bake(self) -> nn.Linear:
        """Fuse the active adapters for good and return the base Linear, which now holds the fused weight."""
        self.merge()
        self._original_weight = None
        return self.base

    def _require(self, name: str) -> None:
        if name not in self.adapters:
            raise ConfigError(
                f"no adapter {name!r} on this layer; it has {', '.join(self.adapters) or 'none'}"
            )

    def extra_repr(self) -> str:
        return f"active={self.active}, merged={self.merged}"
