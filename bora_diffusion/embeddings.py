"""A concept token's own text embedding, trained beside the UNet adapters: textual inversion (arXiv 2208.01618)
and Mix-of-Show's ED-LoRA (arXiv 2305.18292).

Without it, a made-up token such as "qwiv" reaches the text encoder as BPE pieces ("q" + "wiv") whose embeddings
already mean something, and only the UNet adapters learn the concept (DreamBooth). With it, the token becomes one
new entry of the tokenizer whose embedding vector trains with the adapters. ED-LoRA reports that this gives each
concept a distinct identity in the text space, which is what composing several concepts needs.

The base embedding matrix is never resized or written: `TokenEmbeddings` wraps the text encoder's input embedding
and substitutes each added token's vector where its id appears. So the base weights stay bit-identical, the
tokens of several concepts coexist, and a token's vector can be swapped without touching anything else.
`bake_tokens` turns the wrapper into a plain, larger embedding matrix when a pipeline is saved.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .seeding import derive_seed


class TokenEmbeddings(nn.Module):
    """The text encoder's token embedding plus one trainable vector per added token.

    Added tokens have ids past the base vocabulary (the tokenizer appends them); the base embedding looks up a
    clamped id there, which the substitution then overwrites.
    """

    def __init__(self, base: nn.Embedding) -> None:
        super().__init__()
        self.base = base
        self.token_ids: list[int] = []
        self.vectors = nn.ParameterList()  # one (D,) vector per entry of token_ids

    @property
    def weight(self) -> Tensor:
        """The base matrix (V, D): what code that reads `embedding.weight` for its dtype or width expects."""
        return self.base.weight

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: Tensor) -> Tensor:
        known = input_ids.clamp(max=self.base.num_embeddings - 1)
        embeds = self.base(known)  # (..., D)
        for token_id, vector in zip(self.token_ids, self.vectors, strict=True):
            here = (input_ids == token_id).unsqueeze(-1)  # (..., 1)
            embeds = torch.where(here, vector.to(embeds.dtype), embeds)
        return embeds

    def vector(self, token_id: int) -> nn.Parameter | None:
        if token_id in self.token_ids:
            return self.vectors[self.token_ids.index(token_id)]
        return None


def token_embeddings(text_encoder: nn.Module) -> TokenEmbeddings:
    """The text encoder's `TokenEmbeddings`, installed in place of its input embedding on first use."""
    current = text_encoder.get_input_embeddings()
    if isinstance(current, TokenEmbeddings):
        return current
    wrapper = TokenEmbeddings(current)
    text_encoder.set_input_embeddings(wrapper)
    return wrapper


def add_token(
    tokenizer,
    text_encoder: nn.Module,
    token: str,
    vector: Tensor | None = None,
    *,
    init_word: str | None = None,
    source: str = "token",
) -> nn.Parameter:
    """Make `token` one token of `tokenizer` with its own embedding vector on `text_encoder`; return that vector.

    The vector is `vector` when given (a trained one, from a file), else the mean embedding of `init_word`'s
    pieces (textual inversion's initializer token: the class word starts the concept near its class), else a
    draw at the base embeddings' scale. Adding a token again replaces its vector. `source` names what asks, for
    the error messages.
    """
    wrapper = token_embeddings(text_encoder)
    width = wrapper.embedding_dim
    if vector is not None and tuple(vector.shape) != (width,):
        raise ConfigError(
            f"{source}: the embedding of token {token!r} has shape {tuple(vector.shape)} but this text encoder "
            f"embeds in {width} dimensions; it was trained on another base model, load that base"
        )
    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id < wrapper.base.num_embeddings:
        raise ConfigError(
            f"{source}: token {token!r} is already a word of the text encoder's vocabulary (id {token_id}); "
            "training its embedding would change that word everywhere: pick a made-up token"
        )
    pieces = tokenizer(token, add_special_tokens=False).input_ids
    if pieces != [token_id]:
        raise ConfigError(
            f"{source}: token {token!r} does not tokenize as one token ({len(pieces)} pieces); "
            "use one made-up word without spaces or punctuation"
        )
    base = wrapper.base.weight.detach()  # (V, D)
    if vector is None:
        vector = _initial_vector(tokenizer, base, init_word, token)
    param = wrapper.vector(token_id)
    if param is None:
        param = nn.Parameter(vector.detach().to(base.device, torch.float32).clone(), requires_grad=False)
        wrapper.token_ids.append(token_id)
        wrapper.vectors.append(param)
    else:
        with torch.no_grad():
            param.copy_(vector)
    return param


def _initial_vector(tokenizer, base: Tensor, init_word: str | None, token: str) -> Tensor:
    if init_word:
        ids = tokenizer(init_word, add_special_tokens=False).input_ids
        known = [i for i in ids if i < len(base)]
        if known:
            return base[known].float().mean(0)  # (D,)
    # No usable init word: a draw with the spread of the base embeddings, seeded by the token (reproducible).
    generator = torch.Generator().manual_seed(derive_seed("token-embedding", token))
    return torch.randn(base.shape[1], generator=generator) * base.float().std()


@torch.no_grad()
def bake_tokens(text_encoder: nn.Module) -> None:
    """Replace the `TokenEmbeddings` (if any) by a plain embedding matrix with the added tokens' vectors appended
    as rows, so that `save_pretrained` writes a text encoder (and, with it, the tokenizer that already knows the
    tokens) that any diffusers tool loads."""
    wrapper = text_encoder.get_input_embeddings()
    if not isinstance(wrapper, TokenEmbeddings):
        return
    base = wrapper.base
    rows = max(wrapper.token_ids, default=base.num_embeddings - 1) + 1
    plain = nn.Embedding(rows, base.embedding_dim, device=base.weight.device, dtype=base.weight.dtype)
    plain.weight.copy_(wrapper(torch.arange(rows, device=base.weight.device)))  # (rows, D)
    plain.weight.requires_grad_(False)
    text_encoder.set_input_embeddings(plain)
    text_encoder.config.vocab_size = rows
