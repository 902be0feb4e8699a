"""Importing a foreign LoRA file: telling the diffusers and kohya layouts apart, and a native file out of its
factors (the exports, and what both layouts share, are in factors.py).

A foreign file becomes a native `lora` concept with alpha = rank (s = 1): each layer's own scale (alpha_l / r_l)
is folded into its up factor, and layers of lower rank are zero-padded to the file's largest rank (zero rows of A,
zero columns of B add nothing), so the imported delta equals the file's delta layer by layer. Parts that cannot
live in a UNet-Linear adapter (text encoder, conv LoRA) are skipped and listed in the report.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..config import AdapterConfig
from ..errors import AdapterFileError
from ..inject import inject, load_adapter_state_dict
from .diffusers_lora import parse_diffusers
from .factors import (
    DIFFUSERS_TEXT_ENCODER,
    KOHYA_TEXT_ENCODER,
    NotExportableError,
    exact_lora_factors,
    zero_linear,
)
from .kohya import parse_kohya
from .native import FORMAT, read_safetensors, save_adapter, unet_layout

# NotExportableError and exact_lora_factors lived here before factors.py: still importable from here.
__all__ = [
    "ForeignFile",
    "ImportReport",
    "NotExportableError",
    "detect_layout",
    "exact_lora_factors",
    "import_lora",
    "read_foreign",
]

Layout = Literal["diffusers", "kohya"]

# The file diffusers' `save_lora_weights(folder)` writes; importing such a folder reads it.
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
_KOHYA_KEY = re.compile(r"^lora_(unet|te\d?)_\w+\.\w+(\.weight)?$")
_DIFFUSERS_SUFFIX = re.compile(
    r"(\.lora_[AB]\.weight|\.lora\.(down|up)\.weight|_lora\.(down|up)\.weight"
    r"|\.lora_linear_layer\.(down|up)\.weight|\.lora_magnitude_vector(\.weight)?|\.lora_B\.bias|\.alpha)$"
)


@dataclass(frozen=True)
class ImportReport:
    """What `import_lora` did: the native file it wrote and everything it left out, by name."""

    source: Path
    output: Path
    layout: Layout
    name: str
    rank: int  # the native file's rank: the largest rank among the file's UNet layers
    layers: tuple[str, ...]  # module paths imported
    padded: dict[str, int]  # module path -> its own rank, for layers zero-padded up to `rank`
    skipped_text_encoder: tuple[str, ...]  # the file's text-encoder layer names (not imported)
    skipped_not_linear: dict[
        str, str
    ]  # module path -> type, for LoRA on non-Linear layers (conv; not imported)

    def summary(self) -> str:
        """One line for a CLI or a log."""
        parts = [f"imported {len(self.layers)} UNet layer(s) at rank {self.rank} from {self.layout} file"]
        if self.padded:
            parts.append(f"{len(self.padded)} lower-rank layer(s) zero-padded to rank {self.rank}")
        for prefix, count in skipped_groups(self.skipped_text_encoder):
            parts.append(f"skipped {count} text-encoder layer(s) ({prefix}*)")
        if self.skipped_not_linear:
            kinds = sorted(set(self.skipped_not_linear.values()))
            parts.append(f"skipped {len(self.skipped_not_linear)} non-Linear layer(s) ({', '.join(kinds)})")
        line = f"{self.source.name}: " + "; ".join(parts)
        if self.skipped_text_encoder:
            line += (
                "\nwarning: the text-encoder layers were not imported (a UNet adapter cannot hold them), so this "
                "concept will not reproduce the original LoRA's effect in full; it holds the UNet part only"
            )
        return line


def skipped_groups(names: Sequence[str]) -> list[tuple[str, int]]:
    """Skipped layer names as (common prefix, count), one group per text encoder (kohya's lora_te1_ / lora_te2_,
    diffusers' text_encoder. / text_encoder_2.), so the list stays one line however many layers there are."""
    groups: dict[str, list[str]] = {}
    for name in names:
        owner = max(
            (p for p in (*KOHYA_TEXT_ENCODER, *DIFFUSERS_TEXT_ENCODER) if name.startswith(p)),
            key=len,
            default="",
        )
        groups.setdefault(owner, []).append(name)
    return [(_common_prefix(members), len(members)) for _, members in sorted(groups.items())]


def _common_prefix(names: list[str]) -> str:
    """The longest string every name starts with (layer names, not paths: character by character)."""
    first, last = min(names), max(names)
    size = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last))
    )
    return first[:size]


@dataclass(frozen=True)
class ForeignFile:
    """A foreign LoRA file, read once: `bora-diffusion import` reads it to refuse a bad file before the base
    loads, then hands these very tensors to `import_lora`."""

    given: Path  # as named: the .safetensors file, or a diffusers folder holding one
    path: Path  # the .safetensors file read
    tensors: dict[str, Tensor]
    metadata: dict[str, str]

    @property
    def stem(self) -> str:
        """The concept name it suggests: a diffusers folder's name (its file is always the same), else the file's."""
        return self.given.name if self.given != self.path else self.path.stem


def read_foreign(path: str | os.PathLike) -> ForeignFile:
    """A foreign LoRA file's tensors and metadata. Only safetensors: a pickled .bin/.ckpt could run code."""
    given = path = Path(path)
    if path.is_dir():  # what diffusers' save_lora_weights writes: a folder holding one weights file
        inside = path / DIFFUSERS_WEIGHTS
        if not inside.is_file():
            raise AdapterFileError(
                f"{path}: a folder with no {DIFFUSERS_WEIGHTS} in it (what diffusers' save_lora_weights "
                "writes); name the LoRA .safetensors file itself"
            )
        path = inside
    tensors, metadata = read_safetensors(
        path,
        "LoRA file",
        "only .safetensors LoRA files are imported (convert a .bin/.ckpt with a trusted tool first)",
    )
    return ForeignFile(given, path, tensors, metadata)


def detect_layout(keys: list[str], metadata: dict[str, str], source: str | os.PathLike) -> Layout:
    """The layout of a LoRA file from its keys: kohya (`lora_unet_<path_with_underscores>.lora_down.weight`) or
    diffusers (`unet.<module path>.lora_A.weight`, `.lora.down.weight`, ...); anything else is refused."""
    if metadata.get("format") == FORMAT:
        raise AdapterFileError(
            f"{source}: already a native bora-diffusion adapter; load it with formats.load_adapter, no import needed"
        )
    if not keys:
        raise AdapterFileError(f"{source}: the file holds no tensors; it is not a LoRA file")
    kohya = [k for k in keys if _KOHYA_KEY.match(k)]
    diffusers = [k for k in keys if not _KOHYA_KEY.match(k) and _DIFFUSERS_SUFFIX.search(k)]
    unknown = sorted(set(keys) - set(kohya) - set(diffusers))
    if kohya and diffusers:
        raise AdapterFileError(
            f"{source}: mixes kohya keys (e.g. {kohya[0]}) with diffusers keys (e.g. {diffusers[0]}); "
            "split it into one file per layout"
        )
    if unknown:
        raise AdapterFileError(
            f"{source}: key {unknown[0]} is neither kohya LoRA (lora_unet_....lora_down.weight) nor diffusers "
            f"LoRA (unet.....lora_A.weight) ({len(unknown)} such key(s), e.g. {', '.join(unknown[:3])}); "
            "only plain LoRA files are imported (LyCORIS LoHa/LoKr/OFT are not LoRA)"
        )
    return "kohya" if kohya else "diffusers"


def import_lora(
    path: str | os.PathLike | ForeignFile,
    unet: nn.Module,
    out: str | os.PathLike,
    *,
    base_name: str,
    name: str | None = None,
    token: str | None = None,
    class_word: str | None = None,
) -> ImportReport:
    """Import a diffusers- or kohya-layout LoRA file as a native `lora` concept and write it to `out`.

    `unet` is the base UNet the file was made for: its module paths resolve kohya's underscore names (which are
    ambiguous: `to_q`), and its Linear shapes are checked against the factors. It is only read, never changed.
    `base_name` is recorded in the native file (e.g. `pipeline.base_name(base)`); `name` defaults to the file's
    stem. `path` may be a file `read_foreign` already read, which is then not read again. The layout is detected
    from the keys. Per-layer alphas are folded into the up factors (alpha = rank); layers of lower rank are
    zero-padded to the largest rank, so the result is exact. Text-encoder and conv parts are skipped and listed in
    the returned report.
    """
    file = path if isinstance(path, ForeignFile) else read_foreign(path)
    source, tensors, metadata = file.path, file.tensors, file.metadata
    layout = detect_layout(list(tensors), metadata, source)
    parse = parse_kohya if layout == "kohya" else parse_diffusers
    foreign = parse(tensors, metadata, unet, source)
    if not foreign.layers:
        skipped = [*foreign.text_encoder, *foreign.not_linear]
        raise AdapterFileError(
            f"{source}: no LoRA layer for a Linear of this UNet (keys e.g. {', '.join(sorted(tensors)[:3])}"
            f"{'; only text-encoder or conv parts: ' + ', '.join(skipped[:3]) if skipped else ''}); "
            "nothing to import into a UNet adapter"
        )
    name = name or file.stem  # a folder names its concept
    rank = max(down.shape[0] for down, _, _ in foreign.layers.values())
    shapes = {layer: (up.shape[0], down.shape[1]) for layer, (down, up, _) in foreign.layers.items()}
    state: dict[str, Tensor] = {}
    for layer, (down, up, scaling) in foreign.layers.items():
        own = down.shape[0]
        state[f"{layer}.A"] = torch.cat([down, down.new_zeros(rank - own, down.shape[1])])  # (rank, in)
        state[f"{layer}.B"] = torch.cat(
            [up * scaling, up.new_zeros(up.shape[0], rank - own)], dim=1
        )  # (out, rank)
    paths = list(foreign.layers)
    config = AdapterConfig(method="lora", rank=rank, targets=tuple(f"^{re.escape(p)}$" for p in paths))
    skeleton = _skeleton(shapes)
    inject(skeleton, config, name=name, paths=paths)
    load_adapter_state_dict(skeleton, name, state, source=str(source))
    output = save_adapter(
        out,
        skeleton,
        name,
        config,
        base_name=base_name,
        token=token,
        class_word=class_word,
        layout=unet_layout(unet),  # the skeleton has no config: record the real base's
    )
    return ImportReport(
        source=source,
        output=output,
        layout=layout,
        name=name,
        rank=rank,
        layers=tuple(paths),
        padded={p: d.shape[0] for p, (d, _, _) in foreign.layers.items() if d.shape[0] != rank},
        skipped_text_encoder=foreign.text_encoder,
        skipped_not_linear=dict(foreign.not_linear),
    )


def _skeleton(shapes: dict[str, tuple[int, int]]) -> nn.Module:
    """A module tree holding only zero Linears at the given paths (out, in): what `inject` and `save_adapter`
    need, without copying a multi-GB base UNet."""
    root = nn.Module()
    for path, (out, in_) in shapes.items():
        *parents, leaf = path.split(".")
        node = root
        for part in parents:
            if part not in node._modules:
                node.add_module(part, nn.Module())
            node = node._modules[part]
        node.add_module(leaf, zero_linear(out, in_))
    return root
