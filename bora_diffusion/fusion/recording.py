"""What each concept's model feeds its adapted layers: the inputs the data-driven merge baselines fit to.

Forward hooks on the adapted layers record while the caller's `run(name)` drives the model with only that
concept active; a `fold` decides what is kept of each batch of inputs (Mix-of-Show keeps their Gram matrix,
LoRACLR the rows themselves). The active adapters are put back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..inject import set_active, wrappers

# (what was kept so far or None, the new inputs [tokens, in]) -> what is kept now
Fold = Callable[[Tensor | None, Tensor], Tensor]


@torch.no_grad()
def record(
    unet: nn.Module, names: Sequence[str], run: Callable[[str], None], fold: Fold
) -> dict[str, dict[str, Tensor]]:
    """For each concept: module path -> `fold` over every input the layer received while `run(name)` ran with
    that concept alone active, for the layers that concept adapts."""
    layers = dict(wrappers(unet))
    previous = {path: list(layer.active) for path, layer in layers.items()}
    recorded: dict[str, dict[str, Tensor]] = {}
    try:
        for name in names:
            mine = {path: layer for path, layer in layers.items() if name in layer.adapters}
            if not mine:
                raise ConfigError(f"concept {name!r} adapts no layer of this UNet; load it first")
            kept: dict[str, Tensor] = {}
            handles = [layer.register_forward_hook(_hook(kept, path, fold)) for path, layer in mine.items()]
            try:
                set_active(unet, [name])
                run(name)
            finally:
                for handle in handles:
                    handle.remove()
            missing = sorted(set(mine) - set(kept))
            if missing:
                raise ConfigError(f"run({name!r}) never reached layer {missing[0]}; it must drive the UNet")
            recorded[name] = kept
    finally:
        for path, active in previous.items():
            layers[path].set_active(active)
    return recorded


def _hook(kept: dict[str, Tensor], path: str, fold: Fold):
    def hook(_module, args, _output) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1])  # [tokens, in]
        kept[path] = fold(kept.get(path), x)

    return hook
