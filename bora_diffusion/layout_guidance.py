"""Placement: draw what a word of the prompt names inside a box, by layout guidance (Chen, Laina and Vedaldi,
"Training-Free Layout Control with Cross-Attention Guidance", arXiv 2304.03373, backward guidance).

Where a base draws an object is decided early, by the noise and the self-attention; a prompt that names two
concepts "to the left of" each other leaves their places to chance, and a crop of the left half holds half of
one. Placement steers it. Each placement (box, word) finds the word's tokens in every image's prompt (a concept's
token stands for all its vectors). After each of the first `steps` denoising steps the UNet runs once more on the
conditional batch, every cross-attention layer reports the share of the attention the word's tokens draw from
image tokens outside the box, and the latent for the next step moves down the gradient of

    E = mean over layers and placements of  outside^2,      z <- z - rate * dE/dz   (`iterations` times)

so the word's attention, and with it its object, gathers inside the box. It runs as the pipelines'
`callback_on_step_end`, so it works on every pipeline that has one (SD 1.x, 2.x, SDXL), and reruns the UNet with
the conditioning the pipeline last passed it (SDXL's added conditioning too); each image of a batch is steered by
its own E. The picture is otherwise the plain prompt's: every image token reads the whole prompt, every loaded
concept is active everywhere. (Regions, `regions.py`, give parts of the picture prompts of their own; steering
their prompts this way measured no better than regions alone, docs/benchmarks.md.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .embeddings import spell_out
from .errors import ConfigError
from .regions import Region, parse_region, token_grid, wrapped_processors
from .text import PromptEncoder

__all__ = ["LayoutGuidance", "Placement", "parse_placement", "placed_sampling"]

# Measured on the world base (docs/benchmarks.md, "Regional composition"): 10 of 20 DDIM steps, 3 updates each.
RATE = 60.0
STEPS = 10
ITERATIONS = 3


@dataclass(frozen=True)
class Placement:
    """Draw what `word` names inside `box` (x0, y0, x1, y1 in fractions of the image, 0, 0 the top left)."""

    word: str
    box: tuple[float, float, float, float]
    where: str = "placement"


def parse_placement(text: str, where: str) -> Placement:
    """'x0,y0,x1,y1=word' (the CLI's --place), checked like a region's box."""
    region = parse_region(text, where)
    if region.box is None:
        raise ConfigError(
            f"{where}: a placement takes a box x0,y0,x1,y1, not a mask image, e.g. '0,0,0.5,1=huzd'"
        )
    word = region.prompt.strip()
    if len(word.split()) != 1:
        raise ConfigError(
            f"{where}: {word!r} is not one word; name the one word of the prompt to place, e.g. its concept token"
        )
    return Placement(word, region.box, where)


class LayoutGuidance:
    """One sampling call's guidance: the cross-attention processors report into it, and it is the pipeline's
    `callback_on_step_end`. `energies` holds, per steered step, E before each of its updates."""

    def __init__(
        self,
        pipe,
        placements: Sequence[Placement],
        latent: tuple[int, int],
        guided: bool,
        *,
        rate: float = RATE,
        steps: int = STEPS,
        iterations: int = ITERATIONS,
    ):
        self.pipe = pipe
        self.placements = list(placements)
        self.regions = [Region(p.word, box=p.box, where=p.where) for p in placements]  # for their grid masks
        self.latent = latent
        self.guided = guided  # the pipeline's batch is [unconditional; conditional] halves
        self.rate, self.steps, self.iterations = rate, steps, iterations
        self.encoder = PromptEncoder(pipe)
        self.rows: list[list[Tensor]] = []  # per image of the call, per placement: the word's positions
        # during a steering pass: per layer, image and placement, the share of the word's attention outside
        self.outside: list[Tensor] | None = None
        self.energies: list[list[float]] = []
        self._call: tuple[tuple, dict] | None = None
        self._masks: dict[int, Tensor] = {}
        self._hook = pipe.unet.register_forward_pre_hook(self._keep, with_kwargs=True)

    def close(self) -> None:
        self._hook.remove()

    def begin(self, prompts: Sequence[str]) -> None:
        """Before a pipeline call with these prompts: find each placement's word in each of them."""
        tokenizer = self.encoder.tokenizers[0]
        ids = self.encoder.tokenize(list(prompts))[:, 0]  # (N, 77): the first tokenizer's
        words = [  # each placement's word as token ids (a concept token: all its vectors)
            torch.tensor(tokenizer(spell_out([p.word], tokenizer), add_special_tokens=False).input_ids[0])
            for p in self.placements
        ]
        self.rows = []
        for prompt, row in zip(prompts, ids, strict=True):
            found = []
            for placement, pieces in zip(self.placements, words, strict=True):
                positions = torch.isin(row, pieces.to(row.dtype)).nonzero().flatten()
                if not len(positions):
                    raise ConfigError(
                        f"{placement.where}: the prompt {prompt!r} does not name {placement.word!r}; place a word "
                        "the prompt has (a concept's token, or a word like 'circle')"
                    )
                found.append(positions)
            self.rows.append(found)

    def masks(self, tokens: int) -> Tensor:
        """(P, tokens) placement boxes on this level's grid (the share of each cell a box covers)."""
        if tokens not in self._masks:
            height, width = token_grid(tokens, *self.latent)
            self._masks[tokens] = torch.stack([r.grid_mask(height, width).flatten() for r in self.regions])
        return self._masks[tokens]

    def report(self, attn, hidden_states: Tensor, states: Tensor) -> None:
        """In a steering pass, one cross-attention layer's share of each placement's attention outside its box."""
        batch, tokens, _ = hidden_states.shape
        heads = attn.heads
        query = attn.to_q(hidden_states).view(batch, tokens, heads, -1).transpose(1, 2)  # (N, h, T, c)
        key = attn.to_k(states).view(batch, states.shape[1], heads, -1).transpose(1, 2)  # (N, h, 77, c)
        probs = (query @ key.transpose(-1, -2) * attn.scale).softmax(-1).mean(1)  # (N, T, 77)
        masks = self.masks(tokens).to(probs)  # (P, T)
        for image, found in enumerate(self.rows):
            for mask, positions in zip(masks, found, strict=True):
                drawn = probs[image][:, positions].mean(-1)  # (T,): how much each image token reads the word
                self.outside.append(1 - (drawn * mask).sum() / drawn.sum().clamp_min(1e-12))

    def _keep(self, _module, args, kwargs) -> None:
        if self.outside is None:  # the pipeline's own call, not a steering pass
            self._call = (args, kwargs)

    def __call__(self, pipe, step: int, _timestep, outputs: dict) -> dict:
        following = step + 1
        timesteps = pipe.scheduler.timesteps
        if following >= min(self.steps, len(timesteps)) or self._call is None or not self.rows:
            return outputs
        timestep = timesteps[following]
        latents = outputs["latents"]
        energies = []
        with torch.enable_grad():
            for _ in range(self.iterations):
                z = latents.detach().requires_grad_(True)
                energy = self.energy(pipe.scheduler.scale_model_input(z, timestep), timestep)
                # Each image's latent moves by the gradient of its own E, however many images share the call.
                (gradient,) = torch.autograd.grad(energy * len(self.rows), z)
                energies.append(float(energy.detach()))
                latents = (z - self.rate * gradient).detach()
        self.energies.append(energies)
        outputs["latents"] = latents
        return outputs

    def energy(self, sample: Tensor, timestep) -> Tensor:
        """E (the mean over the call's images) for their latents, from one UNet pass on the conditional half."""
        args, kwargs = self._call
        kwargs = {key: _conditional(value, self.guided) for key, value in kwargs.items()}
        extra = tuple(_conditional(value, self.guided) for value in args[2:])
        self.outside = []
        try:
            self.pipe.unet(sample, timestep, *extra, **kwargs)
            shares = torch.stack(self.outside)  # (layers x images x placements,)
        finally:
            self.outside = None
        return shares.square().mean()


class _ReportingProcessor:
    """A cross-attention layer's own processor, reporting to the guidance during its steering passes."""

    def __init__(self, inner, guidance: LayoutGuidance) -> None:
        self.inner = inner
        self.guidance = guidance

    def __call__(
        self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None, *args, **kwargs
    ):
        if (
            self.guidance.outside is not None
            and encoder_hidden_states is not None
            and hidden_states.ndim == 3
        ):
            self.guidance.report(attn, hidden_states, encoder_hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def _conditional(value, halve: bool):
    """The conditional half of a [unconditional; conditional] batched value (tensors, dicts of tensors)."""
    if isinstance(value, dict):
        return {key: _conditional(inner, halve) for key, inner in value.items()}
    if halve and isinstance(value, Tensor) and value.ndim > 0:
        return value[value.shape[0] // 2 :]
    return value


@contextmanager
def placed_sampling(
    pipe, placements: Sequence[Placement], *, height: int | None, width: int | None, guidance: float, **knobs
) -> Iterator[LayoutGuidance | None]:
    """Within the block, the yielded guidance steers every call of `pipe` that gets it as `callback_on_step_end`
    after `begin(prompts)` (None without placements). `knobs`: rate, steps, iterations."""
    if not placements:
        yield None
        return
    scale = pipe.vae_scale_factor
    native = pipe.unet.config.sample_size
    latent = ((height // scale) if height else native, (width // scale) if width else native)
    steering = LayoutGuidance(pipe, placements, latent, guidance > 1, **knobs)
    try:
        with wrapped_processors(pipe.unet, lambda inner: _ReportingProcessor(inner, steering)):
            yield steering
    finally:
        steering.close()
