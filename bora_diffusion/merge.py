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
import torch.nn.functional as F
from torch import Tensor, nn

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
    """Pairwise interference of these concepts on every layer both adapt (deltas at scale 1, against W0).

    Where every concept on a layer has exact low-rank factors (the additive methods), the four numbers come from
    rank-sized Gram matrices of the factors, all pairs at once, in float64: ten concepts on SD 1.5's 128
    projections then cost milliseconds where the dense (out, out) and (in, in) products of every pair took
    minutes. Other layers go through the dense deltas.
    """
    pairs = []
    for path, wrapper in wrappers(unet):
        present = [n for n in names if n in wrapper.adapters]
        if len(present) < 2:
            continue
        adapters = [wrapper.adapters[n] for n in present]
        factors = [_factors(a) for a in adapters]
        if all(f is not None for f in factors):
            values = _factored_measures(factors)
        else:
            values = _dense_measures([a.delta_weight(wrapper.original_weight).float() for a in adapters])
        for i, j in itertools.combinations(range(len(present)), 2):
            a, b = adapters[i], adapters[j]
            overlap = 0
            if a.slot_space is not None and a.slot_space == b.slot_space:
                overlap = len(set(a.index.tolist()) & set(b.index.tolist()))
            cosine, cross_in, cross_out = (float(v[i][j]) for v in values)
            pairs.append(
                PairInterference(
                    layer=path,
                    first=present[i],
                    second=present[j],
                    overlap=overlap,
                    cosine=cosine,
                    cross_in=cross_in,
                    cross_out=cross_out,
                )
            )
    return pairs


def _factors(adapter) -> tuple[Tensor, Tensor] | None:
    """(up (out, R), down (R, in)) in float64 with dW = up @ down at scale 1, or None for a non-additive method."""
    exact = adapter.lora_factors() if adapter.additive else None
    if exact is None:
        return None
    down, up, scaling = exact
    return scaling * up.double(), down.double()


def _dense_measures(deltas: list[Tensor]) -> tuple[list[list[float]], ...]:
    """(cosine, cross_in, cross_out) matrices over the concepts from their dense (out, in) deltas."""
    k = len(deltas)
    cosine, cross_in, cross_out = ([[0.0] * k for _ in range(k)] for _ in range(3))
    for i, j in itertools.combinations(range(k), 2):
        d1, d2 = deltas[i], deltas[j]
        norms = (d1.norm() * d2.norm()).clamp_min(1e-12)
        cosine[i][j] = float((d1 * d2).sum() / norms)
        cross_in[i][j] = float((d1 @ d2.T).norm() / norms)  # (out, in) @ (in, out) -> (out, out)
        cross_out[i][j] = float((d1.T @ d2).norm() / norms)  # (in, out) @ (out, in) -> (in, in)
    return cosine, cross_in, cross_out


def _factored_measures(factors: list[tuple[Tensor, Tensor]]) -> tuple[list[list[float]], ...]:
    """(cosine, cross_in, cross_out) matrices over the concepts from factors dW_k = U_k D_k, never forming a
    dense delta. With UU[k, l] = U_k^T U_l and DD[k, l] = D_k D_l^T (R x R each):
    <dW_k, dW_l> = sum(UU[k, l] * DD[k, l]); ||dW_k dW_l^T||^2 = sum((DD[k, l]^T UU[k, k] DD[k, l]) * UU[l, l]);
    ||dW_k^T dW_l||^2 = sum((UU[k, l]^T DD[k, k] UU[k, l]) * DD[l, l]). Ranks are padded with zeros (exact)."""
    rank = max(up.shape[1] for up, _ in factors)
    ups = torch.stack([F.pad(up, (0, rank - up.shape[1])) for up, _ in factors])  # (K, out, R)
    downs = torch.stack([F.pad(down, (0, 0, 0, rank - down.shape[0])) for _, down in factors])  # (K, R, in)
    uu = torch.einsum("kor,lop->klrp", ups, ups)  # (K, K, R, R): U_k^T U_l
    dd = torch.einsum("kri,lpi->klrp", downs, downs)  # (K, K, R, R): D_k D_l^T
    inner = (uu * dd).sum((-2, -1))  # (K, K): <dW_k, dW_l>
    norm = inner.diagonal().clamp_min(0).sqrt()  # (K,)
    norms = (norm[:, None] * norm[None, :]).clamp_min(1e-12)  # (K, K)
    g, p = uu.diagonal().permute(2, 0, 1), dd.diagonal().permute(2, 0, 1)  # (K, R, R): U_k^T U_k, D_k D_k^T
    # Batched (R, R) matmuls, not one four-operand einsum, which spent milliseconds a layer choosing its path.
    shared_in = ((dd.mT @ (g[:, None] @ dd)) * g[None, :]).sum((-2, -1))  # (K, K): ||dW_k dW_l^T||^2
    shared_out = ((uu.mT @ (p[:, None] @ uu)) * p[None, :]).sum((-2, -1))  # (K, K): ||dW_k^T dW_l||^2
    return (
        (inner / norms).tolist(),
        (shared_in.clamp_min(0).sqrt() / norms).tolist(),
        (shared_out.clamp_min(0).sqrt() / norms).tolist(),
    )


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
