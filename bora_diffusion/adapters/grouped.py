"""Several live additive concepts on one layer as one grouped product, for inference.

Live composition runs every concept's own forward: each `sbora_fa` concept gathers its r input columns and adds a
(tokens, out) product into the result, so k concepts read and write the output k times. Their sum is itself one
adapter: the concatenated slot indices (k r,) gathered once, and the concatenated up factors (out, k r), each
scaled by its concept's scale * s, added by one addmm. LoRA and ortho concepts concatenate the same way, their
down factors (k R, in) stacked. The result is the plain loop's sum up to float rounding (the order of additions
differs), never an approximation.

Only under no_grad (generation): training keeps each concept's own autograd path. The concatenated factors are
cached on the layer and rebuilt when the set of live concepts, a scale, a tensor's version (an optimizer step or
a loaded file) or its storage changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .fast import gather_add, low_rank_add

if TYPE_CHECKING:
    from .base import AdaptedLinear, AdapterLayer

# The two kinds (`AdapterLayer.grouping`): a one-hot down factor given by `index` and a trained up factor B
# (out, r), as sbora_fa's; or a dense down factor A (R, in) and an up factor B (out, R), as lora's and ortho's.
GATHER, LOW_RANK = "gather", "low_rank"


def _key(adapter: AdapterLayer) -> tuple:
    tensors = (adapter.index, adapter.B) if adapter.grouping == GATHER else (adapter.A, adapter.B)
    return (id(adapter), adapter.scale, *((t.data_ptr(), t._version) for t in tensors))


def _build(adapters: list[AdapterLayer]) -> tuple[Tensor, Tensor] | None:
    """(down side, up (out, sum r) scaled) of one kind: the concatenated indices or down factors."""
    if len(adapters) < 2:
        return None
    dtype = adapters[0].B.dtype
    up = torch.cat([a.B * (a.scale * a.scaling) for a in adapters], dim=1).to(dtype)  # (out, sum r)
    if adapters[0].grouping == GATHER:
        return torch.cat([a.index for a in adapters]), up  # (sum r,)
    return torch.cat([a.A.to(dtype) for a in adapters]), up  # (sum R, in)


def grouped_forward(layer: AdaptedLinear, live: list[str], result: Tensor, x: Tensor) -> Tensor:
    """`result` plus the deltas of the `live` adapters, the groupable ones as one product per kind."""
    adapters = [layer.adapters[name] for name in live]
    base_out = result
    gather = [a for a in adapters if a.grouping == GATHER and a.B.dtype == adapters[0].B.dtype]
    low_rank = [a for a in adapters if a.grouping == LOW_RANK and a.B.dtype == adapters[0].B.dtype]
    key = tuple(_key(a) for a in (*gather, *low_rank))
    cached = getattr(layer, "_grouped", None)
    if cached is None or cached[0] != key:
        cached = (key, _build(gather), _build(low_rank))
        layer._grouped = cached
    _, gathered, stacked = cached
    grouped = set()
    if gathered is not None:
        result = gather_add(result, x, gathered[0], gathered[1], 1.0)  # (..., out)
        grouped.update(map(id, gather))
    if stacked is not None:
        result = low_rank_add(result, x, stacked[0], stacked[1], 1.0)  # (..., out)
        grouped.update(map(id, low_rank))
    for adapter in adapters:
        if id(adapter) not in grouped:
            result = adapter.add_delta(result, x, base_out, layer.base)
    return result
