"""Composition: several concept files on one base, live (switchable, weighted) or fused into the weights.

Concepts on disjoint slots (SBoRA, ortho) fuse exactly: their deltas touch disjoint input columns, output rows or
orthogonal input directions, so the fused layer is the plain sum and no concept's inputs see another's update.
Overlapping slots in the same space are refused, naming layers and concepts, unless the caller forces them. Every
other combination composes by summing deltas (the non-additive methods through their merged-weight difference),
with an interference report per layer:

- `overlap`: slot indices two concepts share in the same space;
- `cosine`: cosine between the two flattened deltas (how much they push the same weights);
- `cross_in` = ||dW_i dW_j^T|| / (||dW_i|| ||dW_j||): how much the two updates read the same input directions
  (0 for disjoint FA columns and for ortho: an input meant for one concept passes the other's update untouched);
- `cross_out` = ||dW_i^T dW_j|| / (||dW_i|| ||dW_j||): how much they write the same output directions (0 for
  disjoint FB rows).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .atomic import write_text
from .embeddings import add_token
from .errors import ConfigError, SlotError
from .formats import AdapterFile, load_adapter, read_adapter
from .inject import concepts, merge, set_active, set_scale, wrappers
from .text import PromptEncoder

# A concept's weight is a multiplier on its delta. Trained concepts act at 1; a few times that already
# overwhelms the base, and far beyond it (1e30) the fp32 activations overflow into a black image. 10 leaves
# room for exaggeration and negation (a negative scale subtracts the concept) without reaching that.
MAX_SCALE = 10.0


def check_scale(scale: float, where: str) -> float:
    """`scale` if it is a finite number with |scale| <= MAX_SCALE; else a ConfigError naming `where`."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ConfigError(
            f"{where}: scale {scale!r} is not a finite number; give one from -10 to 10, e.g. 0.8"
        )
    if abs(scale) > MAX_SCALE:
        raise ConfigError(
            f"{where}: scale {scale:g} is outside -{MAX_SCALE:g}..{MAX_SCALE:g}; concepts act at 1 and far "
            "larger scales overflow the image to black: give one from -10 to 10"
        )
    return float(scale)


@dataclass(frozen=True)
class PairInterference:
    layer: str
    first: str
    second: str
    overlap: int
    cosine: float
    cross_in: float
    cross_out: float


@dataclass
class CompositionReport:
    """What was composed and how the concepts interfere. `self_attention` names the concepts that adapt a
    self-attention layer together with another concept: such an update reads image features, so it acts on every
    prompt, and measured on the world concepts (docs/benchmarks.md, "Which layers to adapt") fused concepts on
    every attention projection blended into one patchwork where concepts on the cross-attention keys and values
    stayed apart. Disjoint slots keep the weights apart, not the activations."""

    concepts: dict[str, dict]  # name -> {"file", "method", "scale", "slot_space"}
    fused: bool
    pairs: list[PairInterference] = field(default_factory=list)
    self_attention: list[str] = field(default_factory=list)

    def summary(self) -> str:
        names = ", ".join(f"{n} x{c['scale']:g}" for n, c in self.concepts.items())
        how = "fused" if self.fused else "live"
        if not self.pairs:
            return f"{len(self.concepts)} concept(s) {how}: {names}; nothing to compare"
        layers = len({p.layer for p in self.pairs})
        text = (
            f"{len(self.concepts)} concepts {how} ({names}) on {layers} layers: slot overlap "
            f"{sum(p.overlap for p in self.pairs)} indices, max |cos| {max(abs(p.cosine) for p in self.pairs):.3f}, "
            f"max cross term in {max(p.cross_in for p in self.pairs):.3f} / out {max(p.cross_out for p in self.pairs):.3f}"
        )
        if self.self_attention:
            text += (
                f"; {', '.join(self.self_attention)} adapt self-attention, which acts on every prompt, so they may "
                "bleed into each other (concepts meant to be fused train best with targets cross_kv)"
            )
        return text

    def to_dict(self) -> dict:
        return {
            "concepts": self.concepts,
            "fused": self.fused,
            "summary": self.summary(),
            "pairs": [asdict(p) for p in self.pairs],
            "self_attention": self.self_attention,
        }

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1))


def compose(
    model,
    files: list[tuple[str | Path, float]],
    *,
    fuse: bool = False,
    force: bool = False,
) -> CompositionReport:
    """Load each (file, scale) onto `model`, check interference, then leave them live or fuse them.

    `model` is a pipeline, or a bare UNet when no file carries a trained token embedding: a pipeline also gets
    each such token added to its tokenizer and text encoder (bora_diffusion.embeddings). Concept names come from
    the files; a name already taken gets a numeric suffix. Overlapping slots in the same space raise SlotError
    unless `force`.
    """
    unet = getattr(model, "unet", model)
    for path, scale in files:  # before anything is read or loaded
        check_scale(scale, str(path))
    infos = [read_adapter(path) for path, _ in files]
    if not force:
        check_slots(infos)  # before anything is loaded: a refused composition leaves the model untouched
    for info in infos:
        if info.token_embedding is None:
            continue
        if unet is model:
            raise ConfigError(
                f"{info.path}: carries a trained embedding for token {info.token!r}, which needs the text "
                "encoder: compose onto the pipeline, not its UNet"
            )
        text = PromptEncoder(model)
        if len(info.token_embeddings) != len(text.encoders):
            raise ConfigError(
                f"{info.path}: carries its token's embedding for {len(info.token_embeddings)} text encoder(s) "
                f"but this base has {len(text.encoders)}; it was trained on another base model, load that base"
            )
        for tokenizer, encoder, rows in zip(
            text.tokenizers, text.encoders, info.token_embeddings, strict=True
        ):
            add_token(tokenizer, encoder, info.token, rows, source=str(info.path))
    loaded: dict[str, AdapterFile] = {}
    for info, (_, scale) in zip(infos, files, strict=True):
        name = _free_name(unet, info.name)
        loaded[name] = load_adapter(info, unet, name=name)
        set_scale(unet, name, scale)
    pairs = interference(unet, list(loaded))
    set_active(unet, list(loaded))
    if fuse:
        merge(unet)
    report = CompositionReport(
        concepts={
            name: {
                "file": str(info.path),
                "method": info.config.method,
                "scale": scale,
                "slot_space": info.slot_space,
                "token": info.token,
                "token_embedding": info.token_embedding is not None,
                "base_model": info.base_name,
            }
            for (name, info), (_, scale) in zip(loaded.items(), files, strict=True)
        },
        fused=fuse,
        pairs=pairs,
        self_attention=_sharing_self_attention(unet, list(loaded)),
    )
    return report


def check_slots(infos: Sequence[AdapterFile]) -> None:
    """Raise SlotError naming the layers where two of these files own the same slot indices in the same space
    (read from the files alone, so nothing has to be loaded to refuse them)."""
    clashes = []
    for a, b in itertools.combinations(infos, 2):
        if a.slot_space is None or a.slot_space != b.slot_space:
            continue
        slots_a, slots_b = a.slots(), b.slots()
        for layer in sorted(set(slots_a) & set(slots_b)):
            shared = len(set(slots_a[layer].tolist()) & set(slots_b[layer].tolist()))
            if shared:
                clashes.append(f"{layer}: {a.name} and {b.name} share {shared}")
    if clashes:
        shown = "; ".join(clashes[:3])
        raise SlotError(
            f"{len(clashes)} layer(s) have overlapping slots ({shown}{'; ...' if len(clashes) > 3 else ''}); "
            "train the concepts on one slot ledger so their slots are disjoint, or pass force to sum them anyway"
        )


@torch.no_grad()
def interference(unet: nn.Module, names: list[str]) -> list[PairInterference]:
    """Pairwise interference of these concepts on every layer both adapt (deltas at scale 1, against W0)."""
    pairs = []
    for path, wrapper in wrappers(unet):
        present = [n for n in names if n in wrapper.adapters]
        if len(present) < 2:
            continue
        w0 = wrapper.original_weight
        deltas = {n: wrapper.adapters[n].delta_weight(w0).float() for n in present}  # (out, in) each
        for first, second in itertools.combinations(present, 2):
            a, b = wrapper.adapters[first], wrapper.adapters[second]
            overlap = 0
            if a.slot_space is not None and a.slot_space == b.slot_space:
                overlap = len(set(a.index.tolist()) & set(b.index.tolist()))
            d1, d2 = deltas[first], deltas[second]
            norms = (d1.norm() * d2.norm()).clamp_min(1e-12)
            shared_inputs = (d1 @ d2.T).norm() / norms  # (out, in) @ (in, out) -> (out, out)
            shared_outputs = (d1.T @ d2).norm() / norms  # (in, out) @ (out, in) -> (in, in)
            pairs.append(
                PairInterference(
                    layer=path,
                    first=first,
                    second=second,
                    overlap=overlap,
                    cosine=float((d1 * d2).sum() / norms),
                    cross_in=float(shared_inputs),
                    cross_out=float(shared_outputs),
                )
            )
    return pairs


def _sharing_self_attention(unet: nn.Module, names: list[str]) -> list[str]:
    """Those of `names` that adapt a self-attention layer (diffusers' `attn1`) another of them adapts too."""
    sharing = set()
    for path, wrapper in wrappers(unet):
        present = [n for n in names if n in wrapper.adapters]
        if ".attn1." in f".{path}." and len(present) > 1:
            sharing.update(present)
    return [n for n in names if n in sharing]


def _free_name(unet: nn.Module, name: str) -> str:
    taken = set(concepts(unet))
    if name not in taken:
        return name
    return next(f"{name}-{i}" for i in itertools.count(2) if f"{name}-{i}" not in taken)
