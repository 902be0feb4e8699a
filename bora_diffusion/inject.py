"""Putting adapters into a model: target Linears by module path, wrap them, and manage concepts model-wide.

Adapters sit on the attention projections' Linears, never on the attention processors, so every processor
(SDPA, xformers, sliced) keeps working. Each target Linear is replaced by one `AdaptedLinear`, which holds one
adapter per concept; the functions below act on all of them at once. State dicts are keyed by module path
(`<path>.<tensor>`), never by position, so a file made for one UNet loads into any UNet of the same shapes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .adapters import AdaptedLinear, Slot, build, get
from .config import AdapterConfig
from .errors import AdapterFileError, ConfigError, TargetError
from .slots import SlotLedger, slot_size

_PROJECTIONS = r"(to_q|to_k|to_v|to_out\.0)"
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": (rf"attn[12]\.{_PROJECTIONS}$",),  # all self- and cross-attention projections (default)
    "cross_kv": (r"attn2\.(to_k|to_v)$",),  # Custom Diffusion: only what the text conditions
    "self_attention": (rf"attn1\.{_PROJECTIONS}$",),
}


def target_patterns(targets: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A preset name, or regular expressions searched in module paths."""
    if isinstance(targets, str):
        if targets in TARGET_PRESETS:
            return TARGET_PRESETS[targets]
        raise TargetError(
            f"unknown target preset {targets!r}; presets are {', '.join(TARGET_PRESETS)} "
            "(or pass a list of regular expressions)"
        )
    patterns = tuple(targets)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise TargetError(
                f"target pattern {pattern!r} is not a valid regular expression: {error}"
            ) from None
    return patterns


def find_targets(model: nn.Module, targets: str | tuple[str, ...] | list[str] = "attention") -> list[str]:
    """Module paths of the Linears (adapted or not) whose path matches a target pattern, in model order."""
    patterns = [re.compile(p) for p in target_patterns(targets)]
    linears = [path for path, module in _linears(model)]
    found = [path for path in linears if any(p.search(path) for p in patterns)]
    if not found:
        kinds = Counter(_layer_kind(p) for p in linears)
        listing = ", ".join(f"{kind} (x{count})" for kind, count in sorted(kinds.items()))
        raise TargetError(
            f"targets {list(target_patterns(targets))} match no Linear in this model; "
            f"it has: {listing or 'no Linear layers'}"
        )
    return found


def _layer_kind(path: str) -> str:
    """A path without its container prefix: "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2" -> "ff.net.2"."""
    parts = path.split(".")
    containers = [i for i in range(1, len(parts)) if parts[i].isdigit() and parts[i - 1].endswith("s")]
    return ".".join(parts[containers[-1] + 1 :] if containers else parts)


def wrappers(model: nn.Module) -> Iterator[tuple[str, AdaptedLinear]]:
    """Every `AdaptedLinear` of the model with its module path."""
    for path, module in model.named_modules():
        if isinstance(module, AdaptedLinear):
            yield path, module


def inject(
    model: nn.Module,
    config: AdapterConfig,
    *,
    name: str,
    ledger: SlotLedger | None = None,
    slots: dict[str, Tensor] | None = None,
    paths: list[str] | None = None,
) -> list[str]:
    """Add concept `name` with `config` to every target Linear of `model`; return the module paths.

    `paths` overrides `config.targets` with exact module paths (a file loads onto the layers it was made on).

    Methods with slots take them from `slots` (module path -> index) when given, else from `ledger`; without a
    ledger, one is rebuilt from the slots the model's other concepts already hold, so concepts injected into the
    same model one after another never overlap.
    """
    paths = find_targets(model, config.targets) if paths is None else list(paths)
    for path, wrapper in wrappers(model):
        if path in paths and name in wrapper.adapters:
            raise ConfigError(
                f"concept {name!r} is already in this model (layer {path}); remove it or pick another name"
            )
    space = get(config.method).slot_space
    seed = 0
    if space is not None and slots is None:
        ledger = ledger if ledger is not None else ledger_from_model(model)
        sizes = {path: _size(model.get_submodule(path), space) for path in paths}
        slots = ledger.allocate(name, space, sizes, config.rank)
    if ledger is not None:
        seed = ledger.seed
    elif space is not None:
        seed = _model_slot_seed(model)
    for path in paths:
        wrapper = _wrap(model, path)
        slot = None if space is None else Slot(slots[path], seed)
        wrapper.add(name, build(wrapper.base, config, path=path, slot=slot))
    return paths


def wrap_linear(
    linear: nn.Linear,
    method: str,
    *,
    name: str = "default",
    rank: int = 4,
    alpha: float | None = None,
    index: Tensor | list[int] | None = None,
    seed: int = 0,
    **options: object,
) -> AdaptedLinear:
    """Wrap one nn.Linear (or add a concept to an existing wrapper) outside any UNet.

    `index` gives the slot for the methods that take one (`sbora_fa`, `sbora_fb`, `ortho`); when omitted, a slot
    ledger seeded by `seed` allocates one that no other concept on this wrapper holds. `options` are the
    method's own (`blocks=4` for `bora_block`).
    """
    config = AdapterConfig(method, rank=rank, alpha=alpha, seed=seed, **options)
    wrapper = linear if isinstance(linear, AdaptedLinear) else AdaptedLinear(linear)
    space = get(method).slot_space
    slot = None
    if space is not None:
        if index is None:
            ledger = ledger_from_model(wrapper, seed)  # the wrapper itself has module path ""
            index = ledger.allocate(name, space, {"": _size(wrapper, space)}, rank)[""]
        slot = Slot(torch.as_tensor(index, dtype=torch.int64), seed)
    elif index is not None:
        raise ConfigError(f"method {method!r} takes no slot index; drop index=")
    wrapper.add(name, build(wrapper.base, config, path=name, slot=slot))
    return wrapper


def ledger_from_model(model: nn.Module, seed: int | None = None) -> SlotLedger:
    """A ledger holding the slots the model's concepts already own (seed: theirs, else 0)."""
    ledger = SlotLedger(seed=_model_slot_seed(model) if seed is None else seed)
    for path, wrapper in wrappers(model):
        for name, adapter in wrapper.adapters.items():
            if adapter.slot_space is not None:
                size = _size(wrapper, adapter.slot_space)
                ledger.record(name, adapter.slot_space, path, size, adapter.index.tolist())
    return ledger


def concepts(model: nn.Module) -> list[str]:
    """Names of the concepts present in the model, in the order they were added."""
    names: dict[str, None] = {}
    for _, wrapper in wrappers(model):
        names.update(dict.fromkeys(wrapper.adapters))
    return list(names)


def set_active(model: nn.Module, names: list[str]) -> None:
    """Only these concepts take part in forward (an empty list gives the base model)."""
    _check_names(model, names)
    for _, wrapper in wrappers(model):
        wrapper.set_active([n for n in names if n in wrapper.adapters])


def set_scale(model: nn.Module, name: str, scale: float) -> None:
    """The concept's weight in the model: its delta is multiplied by `scale` (live, and at the next merge)."""
    _check_names(model, [name])
    for _, wrapper in wrappers(model):
        if name in wrapper.adapters:
            wrapper.adapters[name].scale = float(scale)


def merge(model: nn.Module, names: list[str] | None = None) -> None:
    """Fuse concepts (default: the active ones) into the base weights; forward then costs nothing extra."""
    if names is not None:
        _check_names(model, names)
    for _, wrapper in wrappers(model):
        wrapper.merge(None if names is None else [n for n in names if n in wrapper.adapters])


def unmerge(model: nn.Module) -> None:
    """Restore every fused weight exactly."""
    for _, wrapper in wrappers(model):
        wrapper.unmerge()


def remove(model: nn.Module, name: str) -> None:
    """Delete one concept from every layer; layers left without adapters become plain Linears again."""
    _check_names(model, [name])
    for path, wrapper in list(wrappers(model)):
        if name in wrapper.adapters:
            wrapper.delete(name)
        if not wrapper.adapters:
            _replace(model, path, wrapper.base)


def eject(model: nn.Module) -> None:
    """Remove every adapter: the model is left with its plain Linears and bit-identical original weights."""
    for path, wrapper in list(wrappers(model)):
        wrapper.unmerge()
        _replace(model, path, wrapper.base)


def bake(model: nn.Module) -> None:
    """Fuse the active concepts for good: the model is left with plain Linears holding the fused weights."""
    for path, wrapper in list(wrappers(model)):
        _replace(model, path, wrapper.bake())


def mark_trainable(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    """Freeze the whole model but the parameters of these concepts' adapters, and return those."""
    _check_names(model, names)
    model.requires_grad_(False)
    params = []
    for _, wrapper in wrappers(model):
        for name in names:
            if name in wrapper.adapters:
                for param in wrapper.adapters[name].parameters():
                    param.requires_grad_(True)
                    params.append(param)
    return params


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, Tensor]:
    """Concept `name`'s tensors keyed `<module path>.<tensor>` (parameters and buffers such as slot indices)."""
    _check_names(model, [name])
    return {
        f"{path}.{key}": tensor.detach()
        for path, wrapper in wrappers(model)
        if name in wrapper.adapters
        for key, tensor in wrapper.adapters[name].state_dict().items()
    }


def load_adapter_state_dict(
    model: nn.Module, name: str, state: dict[str, Tensor], *, source: str = "state"
) -> None:
    """Copy tensors into concept `name`, which must already be injected; every key must match exactly."""
    expected = {key: tensor for key, tensor in _adapter_tensors(model, name)}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = [
            f"missing {len(missing)} tensor(s), e.g. {missing[0]}" if missing else "",
            f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}" if extra else "",
        ]
        raise AdapterFileError(
            f"{source}: {'; '.join(p for p in parts if p)}; the file does not fit this model's "
            "adapter layout (other targets or method?)"
        )
    with torch.no_grad():
        for key, tensor in expected.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise AdapterFileError(
                    f"{source}: tensor {key} has shape {tuple(state[key].shape)}, "
                    f"this model needs {tuple(tensor.shape)}; the file was made for another base model"
                )
            tensor.copy_(state[key])


def _adapter_tensors(model: nn.Module, name: str) -> Iterator[tuple[str, Tensor]]:
    for path, wrapper in wrappers(model):
        if name in wrapper.adapters:
            adapter = wrapper.adapters[name]
            for key, tensor in (*adapter.named_parameters(), *adapter.named_buffers()):
                yield f"{path}.{key}", tensor


def _linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    skip = ""  # the Linear inside an AdaptedLinear is not a target of its own
    for path, module in model.named_modules():
        if skip and path.startswith(skip):
            continue
        if isinstance(module, AdaptedLinear):
            skip = path + "."
            yield path, module
        elif isinstance(module, nn.Linear):
            yield path, module


def _wrap(model: nn.Module, path: str) -> AdaptedLinear:
    module = model.get_submodule(path)
    if isinstance(module, AdaptedLinear):
        return module
    wrapper = AdaptedLinear(module)
    _replace(model, path, wrapper)
    return wrapper


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path), child, module)


def _size(linear: nn.Module, space: str) -> int:
    return slot_size(space, linear.in_features, linear.out_features)


def _model_slot_seed(model: nn.Module) -> int:
    """The ledger seed the model's slot concepts were allocated with (ortho bases depend on it), else 0."""
    for _, wrapper in wrappers(model):
        for adapter in wrapper.adapters.values():
            if adapter.slot_space is not None:
                return adapter.slot_seed
    return 0


def _check_names(model: nn.Module, names: list[str]) -> None:
    present = concepts(model)
    unknown = [n for n in names if n not in present]
    if unknown:
        raise ConfigError(
            f"no concept {', '.join(unknown)} in this model; it has {', '.join(present) or 'none'}"
        )
