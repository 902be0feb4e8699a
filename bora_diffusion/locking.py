"""Prompt locking: while a concept trains, the prompts without its token keep the keys and values the base
gives them; and word locking: the other words of its own prompts keep what they say when its token embedding
trains (`WordLock`, at the end).

Adapters on the cross-attention keys and values (`targets = "cross_kv"`) change what every word of a prompt says
to the image, not only what the concept's token says: trained on "a qwiv kettle on a table", they also learn to
make "table", "a" and the padding draw the kettle's colors, because nothing in the denoising loss tells those
words apart from the token. Alone that goes unseen; fused with other concepts it is how each concept's look
leaks into every other concept's prompts (docs/benchmarks.md measures it). The lock penalizes that leak
directly: the change the concept's adapters make to the keys and values of its own captions with the token
taken out, and of its class prompt. Those prompts' text-encoder states are computed once, before training:

    lock = mean over locked layers l of  ||W'_l H - W_l H||^2 / ||W_l H||^2

    H:    (prompts, 77, D) the text states the cross-attention reads for the locked prompts (text.PromptEncoder),
          padding included
    W_l:  the layer's base weight; W'_l: the same layer with the concept's adapter

added to the denoising loss at `TrainConfig.lock_weight`. The token itself stays free to move the keys and values
(its states are not in H), and so does the token's own embedding (what that does to the words after the token
is the word lock's, below). The layers locked are the adapted projections that read the text encoder's states
(`attn2.to_k`, `attn2.to_v`); adapters on projections that read image features are left to the denoising loss
alone.

It is a cheap cousin of DreamBooth's prior preservation (which asks the UNet's whole output to stay put on class
images, at the price of generating them and of a second forward pass per step) and of Perfusion's key-locking
(arXiv 2305.01644, which pins the concept's keys to its class word's): one small matrix product per locked layer
and step, no images.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .adapters import AdaptedLinear
from .errors import ConfigError
from .inject import TARGET_PRESETS, wrappers
from .text import PromptEncoder

# The projections whose input is the text encoder's states, not image features.
TEXT_READING = TARGET_PRESETS["cross_kv"]


def lock_prompts(token: str, prompts: Iterable[str], class_prompt: str) -> list[str]:
    """The prompts to lock: `prompts` (a concept's captions) with `token` taken out, and `class_prompt`;
    deduplicated and sorted, so the same concept always locks the same states."""
    removed = {
        " ".join(re.sub(rf"(?<!\w){re.escape(token)}(?!\w)", " ", prompt).split()) for prompt in prompts
    }
    return sorted(removed | {class_prompt})


class PromptLock:
    """The lock penalty of concept `name`'s adapters on `states`, the locked prompts' text-encoder states."""

    def __init__(self, unet: nn.Module, name: str, states: Tensor) -> None:
        patterns = [re.compile(p) for p in TEXT_READING]
        self.layers: list[AdaptedLinear] = [
            layer
            for path, layer in wrappers(unet)
            if name in layer.adapters and any(p.search(path) for p in patterns)
        ]
        if not self.layers:
            raise ConfigError(
                f"lock_weight: concept {name!r} has no adapter on a layer that reads the text encoder "
                "(attn2.to_k, attn2.to_v); adapt them (targets 'cross_kv' or 'attention') or set lock_weight 0"
            )
        self.states = states.detach().to(self.layers[0].weight)  # (N, 77, D), on the UNet's device and dtype
        with torch.no_grad():
            # ||W_l H||^2 per element, so every layer counts the same whatever its width or scale.
            self.base_power = [
                max(float(layer.base(self.states).float().pow(2).mean()), 1e-12) for layer in self.layers
            ]

    def __call__(self) -> Tensor:
        """The mean relative squared change of the locked prompts' keys and values under the layers' active
        adapters (in training: the concept's own); a scalar, differentiable in the adapters, 0 while they are."""
        terms = []
        for layer, power in zip(self.layers, self.base_power, strict=True):
            with torch.no_grad():
                base = layer.base(self.states)  # (N, 77, out)
            terms.append((layer(self.states) - base).float().pow(2).mean() / power)
        return torch.stack(terms).mean()


class WordLock:
    """The word lock of a concept whose token embedding trains: the other words of its own captions keep the
    text-encoder states the token's initial embedding gave them.

    The text encoder is causal, so a token's embedding reaches the state of every word after it (and of the
    padding, which the UNet reads too): an embedding trained only to draw the concept also learns to rewrite "on a
    green background", and the image drops it. Measured on the world concepts, this is what made a token of
    several vectors lose its prompts (docs/benchmarks.md). The penalty is

        mean over captions c and positions j outside the token of  ||S_c[j] - S0_c[j]||^2 / mean ||S0||^2

    with S the captions' states now and S0 their states at the initial embedding (computed once), which costs a
    text-encoder pass over the captions per step. The token's own positions stay free. On SDXL, S is both
    encoders' states side by side (what the UNet reads), so the lock covers both; the pooled embedding is left
    free: it sums up the whole prompt, token included, which the concept is meant to change.
    """

    def __init__(self, encoder: PromptEncoder, captions: list[str], token_names: list[str]) -> None:
        self.encoder = encoder
        self.ids = encoder.tokenize(captions)  # (N, E, 77), a multi-vector token spelled out
        # Every position but the token's; SDXL's two tokenizers split a caption alike, so their masks agree.
        token_ids = torch.tensor(encoder.tokenizers[0].convert_tokens_to_ids(token_names))
        self.words = ~torch.isin(self.ids[:, 0], token_ids)  # (N, 77)
        with torch.no_grad():
            self.reference = encoder.encode_ids(self.ids).states  # (N, 77, D) at the initial embedding
        self.power = max(float(self.reference[self.words].pow(2).mean()), 1e-12)

    def __call__(self) -> Tensor:
        """The mean relative squared change of the other words' states; a scalar, differentiable in the token's
        embedding, 0 while it is at its initial value."""
        states = self.encoder.encode_ids(self.ids).states  # (N, 77, D)
        return (states - self.reference)[self.words].pow(2).mean() / self.power
