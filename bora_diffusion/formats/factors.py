"""What the diffusers and kohya LoRA layouts share, in both directions: exact factors out of a native file (exports),
a foreign file's factors resolved against a base UNet (imports), and the file writing and naming both use.

Every additive method (lora, sbora_fa, sbora_fb, ortho, bora_block) has exact LoRA factors
`(down (R, in), up (out, R), s)` with W' - W0 = s * up @ down (docs/methods.md). `exact_lora_factors` rebuilds
each layer of a native file on a zero Linear of the recorded shape and asks it for them, so no base model is
needed. DoRA-like methods (dora, bora_bidim) rescale W0 itself, so no factors exist and they are refused.

The layout modules (diffusers_lora, kohya) build on this one, and convert (the import) on them, so the three
import each other in one direction only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from .. import __version__
from ..adapters import Slot, build, get
from ..atomic import atomic_path
from ..errors import AdapterFileError, ConfigError
from ..inject import find_targets
from .native import AdapterFile, read_adapter

LoraFactors = tuple[Tensor, Tensor, float]  # (down (R, in), up (out, R), s): W' - W0 = s * up @ down

EXPORT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The safetensors metadata key under which exports record where they came from (JSON).
PROVENANCE_KEY = "bora_diffusion"

# Prefixes of the text-encoder parts of a LoRA file (kohya; diffusers), which a UNet adapter cannot hold.
KOHYA_TEXT_ENCODER = ("lora_te_", "lora_te1_", "lora_te2_")
DIFFUSERS_TEXT_ENCODER = ("text_encoder.", "text_encoder_2.")


class NotExportableError(AdapterFileError):
    """The adapter's method has no exact LoRA factors (its update depends on the base weight)."""


@dataclass(frozen=True)
class ForeignLora:
    """A foreign file's UNet part, parsed and resolved against the base UNet; what the import writes."""

    layers: dict[str, LoraFactors]  # module path -> (down (r, in), up (out, r), s) in fp32
    text_encoder: tuple[str, ...] = ()  # the file's text-encoder layer names, skipped
    not_linear: dict[str, str] = field(
        default_factory=dict
    )  # module path -> its type here (conv LoRA), skipped


# --- exports -----------------------------------------------------------------------------------------------


def exact_lora_factors(source: str | os.PathLike | AdapterFile) -> tuple[AdapterFile, dict[str, LoraFactors]]:
    """The native file (a path, or an AdapterFile already read) and its exact factors per module path, in fp32.

    Raises NotExportableError for methods whose update depends on the base weight (dora, bora_bidim).
    """
    adapter = source if isinstance(source, AdapterFile) else read_adapter(source)
    method = adapter.config.method
    cls = get(method)
    if not cls.additive:
        raise NotExportableError(
            f"{adapter.path}: method {method!r} cannot be exported as LoRA: its update rescales the base weight "
            "itself, so no exact low-rank factors exist; fuse it into the base model instead "
            f"(`bora-diffusion compose {adapter.path} --save FOLDER` writes the fused pipeline)"
        )
    slots = adapter.slots() if cls.slot_space else {}
    by_layer: dict[str, dict[str, Tensor]] = {path: {} for path in adapter.layers}
    for key, tensor in adapter.tensors.items():
        layer, _, name = key.rpartition(".")  # tensor names (A, B, index, sigma, ...) hold no dots
        by_layer[layer][name] = tensor
    factors: dict[str, LoraFactors] = {}
    for path, (out, in_) in adapter.layers.items():
        slot = Slot(slots[path], adapter.slot_seed) if cls.slot_space else None
        layer = build(zero_linear(out, in_), adapter.config, path=path, slot=slot)
        try:
            layer.load_state_dict(by_layer[path])
        except (RuntimeError, KeyError) as error:
            first = str(error).strip().splitlines()[0]
            raise AdapterFileError(
                f"{adapter.path}: layer {path} does not hold the tensors of a {method} layer ({first}); "
                "the file is corrupt"
            ) from None
        result = layer.lora_factors()
        if result is None:
            raise NotExportableError(
                f"{adapter.path}: method {method!r} is marked additive but gives no LoRA factors; "
                "fuse it into the base model instead"
            )
        with torch.no_grad():
            down, up, scaling = result
            factors[path] = (
                down.detach().float().contiguous(),
                up.detach().float().contiguous(),
                float(scaling),
            )
    return adapter, factors


def zero_linear(out: int, in_: int) -> nn.Linear:
    """A bias-free Linear (out, in) whose weight is an all-zero view of one scalar: the shape without the memory.

    Additive methods never read W0's values, only its shape and device, so a 1280x1280 layer costs nothing.
    """
    with torch.device("meta"):
        linear = nn.Linear(in_, out, bias=False)  # skips the random init on real memory
    linear.weight = nn.Parameter(torch.zeros(()).expand(out, in_), requires_grad=False)  # (out, in), stride 0
    return linear


def check_dtype(dtype: torch.dtype) -> None:
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(
            f"export dtype must be one of {', '.join(str(d) for d in EXPORT_DTYPES)}, got {dtype}; "
            "fp32 is exact, fp16 halves the file"
        )


def provenance(adapter: AdapterFile) -> str:
    """JSON for the PROVENANCE_KEY metadata entry: which native file and method an export came from."""
    return json.dumps(
        {
            "method": adapter.config.method,
            "config": adapter.config.to_dict(),
            "concept": {"name": adapter.name, "token": adapter.token, "class_word": adapter.class_word},
            "base_model": adapter.base_name,
            "fingerprint": adapter.fingerprint,
            "library_version": __version__,
        },
        sort_keys=True,
    )


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """Write contiguous CPU tensors and string metadata to `path` atomically."""
    target = Path(path)
    with atomic_path(target) as tmp:
        safetensors.torch.save_file(
            {key: t.detach().cpu().contiguous() for key, t in tensors.items()}, str(tmp), metadata=metadata
        )
    return target


# --- imports -----------------------------------------------------------------------------------------------


def resolve_layers(
    entries: dict[str, dict[str, str]],
    tensors: dict[str, Tensor],
    unet: nn.Module,
    source: Path,
    scaling: Callable[[str, int, dict[str, str]], float],
) -> tuple[dict[str, LoraFactors], dict[str, str]]:
    """Factors per UNet Linear from `entries` (module path -> {"down" | "up" | "alpha": the file's key}), and the
    module paths that are not Linears here (module path -> type name), which are skipped.

    `scaling(path, rank, roles)` gives a layer's s. A path this UNet does not have, or factors that do not fit
    its Linear, is an error: the file was made for another base model.
    """
    linears = find_targets(unet, ("",))  # every Linear (an adapted one once, by its own path), in model order
    order = {path: i for i, path in enumerate(linears)}
    layers: dict[str, LoraFactors] = {}
    not_linear: dict[str, str] = {}
    for path, roles in sorted(entries.items(), key=lambda item: (order.get(item[0], len(order)), item[0])):
        key = next(iter(roles.values()))
        for role in ("down", "up"):
            if role not in roles:
                raise AdapterFileError(
                    f"{source}: {key} has no matching {role} weight; the file is incomplete or not a LoRA file"
                )
        if path not in order:
            try:
                module = unet.get_submodule(path)
            except AttributeError:
                raise AdapterFileError(
                    f"{source}: key {key} names layer {path}, which this base UNet does not have; the file was "
                    "made for another base model (SD 1.x, 2.x or SDXL?): import it against that base"
                ) from None
            not_linear[path] = type(module).__name__  # conv LoRA (LoCon): no Linear adapter can hold it
            continue
        extra = sorted(set(roles) - {"down", "up", "alpha"})
        if extra:
            raise AdapterFileError(
                f"{source}: {roles[extra[0]]} is a conv-only LoRA part on the Linear {path}; the file is malformed"
            )
        down, up = (_as_matrix(tensors[roles[role]]) for role in ("down", "up"))  # (r, in), (out, r)
        linear = unet.get_submodule(path)
        if down.shape[0] != up.shape[1] or (up.shape[0], down.shape[1]) != (
            linear.out_features,
            linear.in_features,
        ):
            raise AdapterFileError(
                f"{source}: {key} has down {tuple(down.shape)} and up {tuple(up.shape)}, which do not factor this "
                f"UNet's ({linear.out_features}, {linear.in_features}) Linear; the file was made for another base"
            )
        layers[path] = (down, up, scaling(path, down.shape[0], roles))
    return layers, not_linear


def _as_matrix(tensor: Tensor) -> Tensor:
    """A factor in fp32 as a matrix; a 1x1-conv factor (r, in, 1, 1) of a Linear is the same matrix."""
    if tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):
        tensor = tensor.flatten(1)  # (r, in, 1, 1) -> (r, in)
    return tensor.float()
