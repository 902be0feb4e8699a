"""Regional composition: several concepts in one picture, each in its own region with its own prompt.

Mix-of-Show's regionally controllable sampling (arXiv 2305.18292, section 3.3), done on our adapters. Every
cross-attention layer of the UNet gets `RegionalProcessor`, which computes the layer once for the global prompt and
once per region r with that region's prompt states, and mixes the results per image token:

    out = sum_r m_r * out_r + (1 - sum_r m_r) * out_global

where m_r is region r's mask resized to the layer's token grid (the share of each token's cell the region covers).

Live composition isolates concepts exactly: while out_r is computed only region r's concepts are active on the
layer's projections (the concepts' default targets, `cross_kv`, are the to_k / to_v that read the text), so a token
inside region r (m_r = 1) reads nothing of another concept's factors. Fused composition cannot do that: the fused
weights hold every concept's delta, and although disjoint slots give each concept its own input columns of to_k /
to_v, every text token has a value in every column, so region r's prompt still passes through the other concepts'
deltas. In fused mode a region only changes what the cross-attention reads; docs/benchmarks.md ("Regional
composition") measures how much each mode keeps the concepts apart.

Classifier-free guidance: the unconditional half of the batch reads the pipeline's own unconditional (negative)
states in every region, with that region's concepts, so guidance pushes each region toward its own prompt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from .adapters.base import AdaptedLinear
from .errors import ConfigError
from .text import PromptEncoder

__all__ = ["Region", "RegionalProcessor", "concepts_named", "parse_region", "regional_sampling", "token_grid"]

_NUMBER = r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*"
_BOX = re.compile(rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$")


@dataclass(frozen=True)
class Region:
    """Where one region is and what it draws.

    `box` is (x0, y0, x1, y1) in fractions of the image (0, 0 is the top left corner), or `mask` an (H, W) float
    tensor in [0, 1] at any size (stretched to the image). `concepts`: the concept names active inside the region
    (live composition); None means every concept whose token the prompt names, resolved by `concepts_named`.
    `where` names the region in error messages (the CLI's "--region 2").
    """

    prompt: str
    box: tuple[float, float, float, float] | None = None
    mask: Tensor | None = None
    concepts: tuple[str, ...] | None = None
    where: str = "region"

    def __post_init__(self) -> None:
        if (self.box is None) == (self.mask is None):
            raise ConfigError(f"{self.where}: give a box (x0,y0,x1,y1) or a mask image, exactly one of them")
        if not str(self.prompt).strip():
            raise ConfigError(
                f"{self.where}: the prompt is empty; write what to draw there, e.g. '0,0,0.5,1=a dog'"
            )
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not all(math.isfinite(v) and 0 <= v <= 1 for v in self.box):
                raise ConfigError(
                    f"{self.where}: box {_show(self.box)} leaves the image; give x0,y0,x1,y1 as fractions from 0 to 1"
                )
            if x0 >= x1 or y0 >= y1:
                raise ConfigError(
                    f"{self.where}: box {_show(self.box)} is empty; x0 must be below x1 and y0 below y1 "
                    "(x0,y0 is the top left corner), e.g. 0,0,0.5,1"
                )
        elif self.mask.ndim != 2 or not bool(((self.mask >= 0) & (self.mask <= 1)).all()):
            raise ConfigError(f"{self.where}: a mask is one (H, W) plane of values from 0 to 1")

    def grid_mask(self, height: int, width: int) -> Tensor:
        """The region on a (height, width) token grid: the share of each cell it covers, (height, width) float32."""
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            return _coverage(y0, y1, height)[:, None] * _coverage(x0, x1, width)[None, :]  # (h, 1) * (1, w)
        plane = self.mask.float()[None, None]  # (1, 1, H, W)
        return F.adaptive_avg_pool2d(plane, (height, width))[0, 0]  # (h, w): each cell's mean cover

    def to_dict(self) -> dict:
        shape = None if self.mask is None else list(self.mask.shape)
        return {"prompt": self.prompt, "box": self.box, "mask_shape": shape, "concepts": self.concepts}


def _show(box: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in box)


def _coverage(start: float, end: float, cells: int) -> Tensor:
    """Share of each of `cells` equal cells of [0, 1] that [start, end] covers: (cells,) float32."""
    edges = torch.arange(cells + 1, dtype=torch.float64) / cells  # (cells + 1,)
    covered = (
        torch.minimum(edges[1:], torch.tensor(end)) - torch.maximum(edges[:-1], torch.tensor(start))
    ).clamp(0)
    return (covered * cells).float()


def parse_region(text: str, where: str) -> Region:
    """'x0,y0,x1,y1=prompt' (a box in fractions) or 'mask.png=prompt' (a grayscale image, white = inside)."""
    spot, sep, prompt = str(text).partition("=")
    if not sep or not spot.strip():
        raise ConfigError(
            f"{where}: {text!r} is not BOX=PROMPT or MASK=PROMPT; write e.g. '0,0,0.5,1=a huzd circle'"
        )
    if _BOX.match(spot):
        box = tuple(float(v) for v in spot.split(","))
        return Region(prompt.strip(), box=box, where=where)  # type: ignore[arg-type]
    if "," in spot and not Path(spot).exists():
        raise ConfigError(
            f"{where}: box {spot!r} is not four numbers x0,y0,x1,y1 (fractions of the image), e.g. 0,0,0.5,1"
        )
    return Region(prompt.strip(), mask=read_mask(spot, where), where=where)


def read_mask(path: str | Path, where: str) -> Tensor:
    """A mask image as an (H, W) float tensor in [0, 1] (its luminance; white = inside the region)."""
    try:
        with Image.open(path) as image:
            plane = np.asarray(image.convert("L"), dtype=np.float32) / 255.0  # (H, W)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ConfigError(
            f"{where}: mask {str(path)!r} is not a readable image ({type(err).__name__}); give a PNG or JPEG "
            "whose white part is the region, or a box x0,y0,x1,y1"
        ) from err
    if not plane.any():
        raise ConfigError(f"{where}: mask {str(path)!r} is black everywhere; paint the region white")
    return torch.from_numpy(plane)


def check_regions(regions: Sequence[Region]) -> None:
    """Refuse two boxes that overlap: which prompt a shared token should read has no good answer (masks may
    overlap; where their sum passes 1 they are shared in proportion)."""
    boxes = [r for r in regions if r.box is not None]
    for i, first in enumerate(boxes):
        for second in boxes[i + 1 :]:
            a, b = first.box, second.box
            if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                raise ConfigError(
                    f"{second.where}: box {_show(b)} overlaps {first.where}'s {_show(a)}; make the boxes meet "
                    "at most at an edge (e.g. 0,0,0.5,1 and 0.5,0,1,1)"
                )


def concepts_named(prompt: str, tokens: Mapping[str, str | None]) -> tuple[str, ...]:
    """The concepts (name -> token) whose token the prompt names as a word, in the order of `tokens`."""
    words = set(re.findall(r"[\w-]+", prompt.lower()))
    return tuple(name for name, token in tokens.items() if token and token.lower() in words)


def token_grid(tokens: int, latent_height: int, latent_width: int) -> tuple[int, int]:
    """The (h, w) grid of an attention level with `tokens` tokens: the latent halved (rounding up, as the
    UNet's stride-2 convolutions do) until it holds that many cells."""
    height, width = latent_height, latent_width
    while height * width > tokens:
        height, width = -(-height // 2), -(-width // 2)
    if height * width != tokens:
        raise ValueError(f"{tokens} tokens are no level of a {latent_height}x{latent_width} latent")
    return height, width


class RegionalPlan:
    """What the processors share during one sampling call: the regions, their prompt states and the latent size."""

    def __init__(self, regions: Sequence[Region], states: Tensor, latent: tuple[int, int], guided: bool):
        self.regions = list(regions)
        self.states = states  # (R, 77, D): each region's prompt as the cross-attention reads it
        self.latent = latent
        self.guided = guided  # the batch is [unconditional; conditional] halves
        self._masks: dict[int, Tensor] = {}

    def masks(self, tokens: int) -> Tensor:
        """(R, tokens) region weights on this level's grid, scaled down where overlapping masks pass 1."""
        if tokens not in self._masks:
            height, width = token_grid(tokens, *self.latent)
            masks = torch.stack([r.grid_mask(height, width).flatten() for r in self.regions])  # (R, h * w)
            total = masks.sum(0, keepdim=True)  # (1, h * w)
            self._masks[tokens] = torch.where(total > 1, masks / total.clamp_min(1e-12), masks)
        return self._masks[tokens]

    def region_states(self, index: int, encoder_hidden_states: Tensor) -> Tensor:
        """The states region `index` reads, batched like the pipeline's: (N, 77, D)."""
        batch = encoder_hidden_states.shape[0]
        half = batch // 2 if self.guided else 0
        cond = self.states[index : index + 1].to(encoder_hidden_states)  # (1, 77, D)
        cond = cond.expand(batch - half, -1, -1)  # (N - half, 77, D)
        return torch.cat([encoder_hidden_states[:half], cond])  # unconditional rows kept as given


class RegionalProcessor:
    """An attention processor for one cross-attention layer: the layer's own processor, run for the global
    prompt and for each region, mixed by the regions' masks (see the module docstring)."""

    def __init__(self, inner, plan: RegionalPlan) -> None:
        self.inner = inner
        self.plan = plan

    def __call__(
        self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None, *args, **kwargs
    ):
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        masks = self.plan.masks(hidden_states.shape[1]).to(hidden_states)  # (R, T)
        out = self.inner(
            attn, hidden_states, encoder_hidden_states, *args, **kwargs
        )  # (N, T, C): global prompt
        mixed = out * (1 - masks.sum(0))[None, :, None]  # (N, T, C) * (1, T, 1)
        for index, region in enumerate(self.plan.regions):
            states = self.plan.region_states(index, encoder_hidden_states)
            with only_concepts(attn, region.concepts):
                out = self.inner(attn, hidden_states, states, *args, **kwargs)  # (N, T, C)
            mixed = mixed + masks[index][None, :, None] * out
        return mixed


@contextmanager
def only_concepts(module: nn.Module, names: Sequence[str] | None) -> Iterator[None]:
    """Within the block, only `names` (of those active) take part in the module's adapted projections; None
    leaves them as they are. Fused concepts sit in the weights and stay."""
    if names is None:
        yield
        return
    layers = [m for m in module.modules() if isinstance(m, AdaptedLinear)]
    before = [list(layer.active) for layer in layers]
    try:
        for layer, active in zip(layers, before, strict=True):
            layer.active = [name for name in active if name in names]
        yield
    finally:
        for layer, active in zip(layers, before, strict=True):
            layer.active = active


def resolved(regions: Sequence[Region], tokens: Mapping[str, str | None]) -> list[Region]:
    """The regions with `concepts` filled in from their prompts where they were left None."""
    return [
        region
        if region.concepts is not None
        else replace(region, concepts=concepts_named(region.prompt, tokens))
        for region in regions
    ]


def cross_attentions(unet: nn.Module) -> list[nn.Module]:
    """The UNet's cross-attention layers (diffusers' `attn2`, the ones that read the text)."""
    return [
        m for m in unet.modules() if getattr(m, "is_cross_attention", False) and hasattr(m, "set_processor")
    ]


@contextmanager
def regional_sampling(
    pipe, regions: Sequence[Region], *, height: int | None, width: int | None, guidance: float
) -> Iterator[RegionalPlan | None]:
    """Within the block, every call of `pipe` draws with `regions` (nothing changes without regions).

    `height` / `width` are the image's (None: the model's native size); `guidance` tells whether the pipeline
    batches an unconditional half (it does above 1, as diffusers decides). Regions whose `concepts` is None get
    every loaded concept (resolve them by token first with `resolved`).
    """
    if not regions:
        yield None
        return
    check_regions(regions)
    scale = pipe.vae_scale_factor
    native = pipe.unet.config.sample_size
    latent = ((height // scale) if height else native, (width // scale) if width else native)
    states = PromptEncoder(pipe).encode([r.prompt for r in regions]).states  # (R, 77, D)
    plan = RegionalPlan(regions, states.to(pipe.unet.device, pipe.unet.dtype), latent, guidance > 1)
    with wrapped_processors(pipe.unet, lambda inner: RegionalProcessor(inner, plan)):
        yield plan


@contextmanager
def wrapped_processors(unet: nn.Module, wrap) -> Iterator[None]:
    """Within the block, every cross-attention layer's processor is `wrap(its own processor)`."""
    layers = cross_attentions(unet)
    before = [layer.processor for layer in layers]
    try:
        for layer, inner in zip(layers, before, strict=True):
            layer.set_processor(wrap(inner))
        yield
    finally:
        for layer, inner in zip(layers, before, strict=True):
            layer.set_processor(inner)
