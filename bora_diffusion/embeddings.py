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

A token may stand for several vectors (textual inversion's "number of vectors"): the tokenizer then holds
`tok`, `tok_1`, ..., `tok_{N-1}`, diffusers' multi-vector convention, and every prompt spells `tok` out as those N
tokens (`spell_out`; diffusers' pipelines do the same by themselves). One vector feeds every pixel that
attends to the token the same value; N of them let the parts of an object attend to different ones (on the
world concepts a token of 3 vectors drew objects in more of their colors, a few in two at once, where one
vector drew one; docs/benchmarks.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .seeding import derive_seed


class TokenEmbeddings(nn.Module):
    """The text encoder's token embedding plus trainable rows for added tokens: one (N, D) matrix per concept
    token, one row for each of its N vector tokens.

    Added tokens have ids past the base vocabulary (the tokenizer appends them); the base embedding looks up a
    clamped id there, which the substitution then overwrites.
    """

    def __init__(self, base: nn.Embedding) -> None:
        super().__init__()
        self.base = base
        self.token_ids: list[tuple[int, ...]] = []  # per concept token, the ids of its N vector tokens
        self.vectors = nn.ParameterList()  # per concept token, its (N, D) rows

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
        for ids, rows in zip(self.token_ids, self.vectors, strict=True):
            for token_id, vector in zip(ids, rows, strict=True):
                here = (input_ids == token_id).unsqueeze(-1)  # (..., 1)
                embeds = torch.where(here, vector.to(embeds.dtype), embeds)
        return embeds

    def set_rows(self, ids: tuple[int, ...], vectors: Tensor) -> nn.Parameter:
        """Give the concept token whose vector tokens are `ids` the (N, D) rows `vectors`; return the parameter.
        A token added before with as many vectors keeps its parameter (copied into); one added with another
        number of vectors is replaced."""
        index = next((i for i, known in enumerate(self.token_ids) if known[0] == ids[0]), None)
        if index is not None and self.token_ids[index] == ids:
            with torch.no_grad():
                self.vectors[index].copy_(vectors)
            return self.vectors[index]
        rows = nn.Parameter(
            vectors.detach().to(self.base.weight.device, torch.float32).clone(), requires_grad=False
        )
        if index is None:
            self.token_ids.append(ids)
            self.vectors.append(rows)
        else:
            self.token_ids[index] = ids
            self.vectors[index] = rows
        return rows


def token_embeddings(text_encoder: nn.Module) -> TokenEmbeddings:
    """The text encoder's `TokenEmbeddings`, installed in place of its input embedding on first use."""
    current = text_encoder.get_input_embeddings()
    if isinstance(current, TokenEmbeddings):
        return current
    wrapper = TokenEmbeddings(current)
    text_encoder.set_input_embeddings(wrapper)
    return wrapper


def vector_tokens(token: str, count: int) -> list[str]:
    """The tokens one concept token's `count` vectors go by: `tok`, `tok_1`, ..., `tok_{count-1}` (diffusers')."""
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def add_token(
    tokenizer,
    text_encoder: nn.Module,
    token: str,
    vectors: Tensor | None = None,
    *,
    count: int = 1,
    init_word: str | None = None,
    source: str = "token",
) -> nn.Parameter:
    """Make `token` a token of `tokenizer` with its own embedding on `text_encoder`; return its (N, D) rows.

    The rows are `vectors` when given (trained ones, from a file: (N, D), or (D,) for one), else `count` copies
    of the mean embedding of `init_word`'s pieces (textual inversion's initializer token: the class word starts
    the concept near its class), else a draw at the base embeddings' scale. With N > 1 the token stands for N
    tokens (`vector_tokens`) that prompts spell out (`spell_out`). Adding a token again replaces its rows.
    `source` names what asks, for the error messages.
    """
    wrapper = token_embeddings(text_encoder)
    width = wrapper.embedding_dim
    if vectors is not None:
        if vectors.ndim == 1:
            vectors = vectors.unsqueeze(0)  # (1, D)
        if vectors.ndim != 2 or vectors.shape[1] != width or len(vectors) < 1:
            raise ConfigError(
                f"{source}: the embedding of token {token!r} has shape {tuple(vectors.shape)} but this text "
                f"encoder embeds in {width} dimensions; it was trained on another base model, load that base"
            )
        count = len(vectors)
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"{source}: a token needs at least one embedding vector, got {count!r}")
    held = _vector_count(token, added_tokens(tokenizer))
    if held > count:  # a tokenizer cannot forget a token, and prompts would still spell out the extra ones
        raise ConfigError(
            f"{source}: this pipeline's tokenizer already holds token {token!r} as {held} vectors (an earlier "
            f"concept's), this one has {count}; load a fresh base"
        )
    names = vector_tokens(token, count)
    tokenizer.add_tokens(names)
    ids = tuple(tokenizer.convert_tokens_to_ids(name) for name in names)
    if ids[0] < wrapper.base.num_embeddings:
        raise ConfigError(
            f"{source}: token {token!r} is already a word of the text encoder's vocabulary (id {ids[0]}); "
            "training its embedding would change that word everywhere: pick a made-up token"
        )
    pieces = tokenizer(token, add_special_tokens=False).input_ids
    if pieces != [ids[0]]:
        raise ConfigError(
            f"{source}: token {token!r} does not tokenize as one token ({len(pieces)} pieces); "
            "use one made-up word without spaces or punctuation"
        )
    base = wrapper.base.weight.detach()  # (V, D)
    if vectors is None:
        vectors = _initial_vector(tokenizer, base, init_word, token).expand(count, -1)  # (N, D)
    return wrapper.set_rows(ids, vectors)


def spell_out(prompts: Sequence[str], tokenizer) -> list[str]:
    """The prompts with each multi-vector token written as its N tokens ("tok" -> "tok tok_1 tok_2"), the
    rewrite diffusers' pipelines make before they tokenize; one-vector tokens and other words stay as they are."""
    added = added_tokens(tokenizer)
    counts = {token: _vector_count(token, added) for token in added}
    spelled = {token: " ".join(vector_tokens(token, n)) for token, n in counts.items() if n > 1}
    if not spelled:
        return list(prompts)
    # A whole word only: "tok" inside "tok_1" or another made-up word stays.
    pattern = re.compile(
        r"(?<![\w-])("
        + "|".join(re.escape(t) for t in sorted(spelled, key=len, reverse=True))
        + r")(?![\w-])"
    )
    return [pattern.sub(lambda match: spelled[match.group(1)], prompt) for prompt in prompts]


def added_tokens(tokenizer) -> set[str]:
    """The tokens added to `tokenizer` on top of its vocabulary (by concepts, here or in diffusers)."""
    return set(getattr(tokenizer, "get_added_vocab", dict)())


def _vector_count(token: str, added: set[str]) -> int:
    """How many vectors `token` goes by among the tokenizer's `added` tokens (0: not added)."""
    if token not in added:
        return 0
    count = 1
    while f"{token}_{count}" in added:
        count += 1
    return count


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
    rows = max((max(ids) for ids in wrapper.token_ids), default=base.num_embeddings - 1) + 1
    plain = nn.Embedding(rows, base.embedding_dim, device=base.weight.device, dtype=base.weight.dtype)
    plain.weight.copy_(wrapper(torch.arange(rows, device=base.weight.device)))  # (rows, D)
    plain.weight.requires_grad_(False)
    text_encoder.set_input_embeddings(plain)
    text_encoder.config.vocab_size = rows
