"""What a base's UNet reads of a prompt: its text encoders' states, and on SDXL the pooled embedding too.

- SD 1.x / 2.x: one CLIP text encoder; the cross-attention reads its last hidden states (N, 77, D), D = 768 on
  SD 1.x and 1024 on SD 2.x (whose OpenCLIP encoder ships without its last layer, so "last" is OpenCLIP's
  penultimate).
- SDXL: two encoders, CLIP ViT-L and OpenCLIP ViT-bigG. The cross-attention reads both penultimate hidden states
  side by side (N, 77, 768 + 1280 = 2048), and the UNet's added conditioning reads the second encoder's projected
  pooled output (N, 1280) as `text_embeds`, beside the time ids of each image (`data.TimeIds`).

This is how diffusers' `StableDiffusionXLPipeline.encode_prompt` and its `train_dreambooth_lora_sdxl.py` compute
them, so what a concept trains on is what the stock pipeline later feeds it. Every other module asks this one
for a prompt's conditioning and never looks at `pipe.text_encoder` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .embeddings import spell_out


@dataclass(frozen=True)
class TextStates:
    """A batch of prompts as the UNet reads them."""

    states: Tensor  # (N, 77, D): what the cross-attention's keys and values read
    pooled: Tensor | None = None  # (N, P): SDXL's `text_embeds`; None on SD 1.x / 2.x

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, index) -> TextStates:
        return TextStates(self.states[index], None if self.pooled is None else self.pooled[index])

    def to(self, device, dtype: torch.dtype | None = None) -> TextStates:
        pooled = None if self.pooled is None else self.pooled.to(device, dtype)
        return TextStates(self.states.to(device, dtype), pooled)

    @staticmethod
    def cat(parts: Sequence[TextStates]) -> TextStates:
        pooled = [part.pooled for part in parts]
        joined = None if any(p is None for p in pooled) else torch.cat(pooled)  # type: ignore[arg-type]
        return TextStates(torch.cat([part.states for part in parts]), joined)


class PromptEncoder:
    """A base pipeline's text side: one (tokenizer, text encoder) pair on SD 1.x / 2.x, two on SDXL.

    Token ids travel as (N, E, 77), one row per encoder E, because SDXL's two tokenizers may pad differently.
    """

    def __init__(self, pipe) -> None:
        pairs = [(pipe.tokenizer, pipe.text_encoder)]
        second = getattr(pipe, "text_encoder_2", None)
        if second is not None:
            pairs.append((pipe.tokenizer_2, second))
        self.tokenizers = [tokenizer for tokenizer, _ in pairs]
        self.encoders: list[nn.Module] = [encoder for _, encoder in pairs]
        self.dual = second is not None  # SDXL's conditioning: penultimate states side by side, pooled output

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """Prompts -> token ids (N, E, 77), padded to each tokenizer's length as the pipelines pad them, every
        multi-vector token spelled out as they spell it (bora_diffusion.embeddings)."""
        rows = [
            tokenizer(
                spell_out(prompts, tokenizer),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids  # (N, 77)
            for tokenizer in self.tokenizers
        ]
        return torch.stack(rows, dim=1)  # (N, E, 77)

    def encode_ids(self, ids: Tensor) -> TextStates:
        """Token ids (N, E, 77) -> TextStates, in float32. Differentiable: a trained token embedding gets its
        gradient through here."""
        if not self.dual:
            encoder = self.encoders[0]
            return TextStates(encoder(ids[:, 0].to(encoder.device))[0].float())  # (N, 77, D)
        states, pooled = [], None
        for row, encoder in enumerate(self.encoders):
            out = encoder(ids[:, row].to(encoder.device), output_hidden_states=True)
            states.append(out.hidden_states[-2].float())  # (N, 77, D_e): the penultimate layer
            pooled = out[0].float()  # the last encoder's projected pooled output (N, P)
        return TextStates(torch.cat(states, dim=-1), pooled)  # (N, 77, sum D_e)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextStates:
        """Prompts -> TextStates, without gradients (cached prompt embeddings, locks, references)."""
        return self.encode_ids(self.tokenize(prompts))
