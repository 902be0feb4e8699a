"""The checks of a concept's words: its folder name, token and class word, against a tokenizer's vocabulary and
its prompt-length limit."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

# The concept name keys adapters in an nn.ModuleDict (no '.') and names files: keep it portable.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class Tokenizer(Protocol):
    """What the checks need of a tokenizer (any Hugging Face CLIPTokenizer has it)."""

    model_max_length: int
    all_special_tokens: list[str]

    def get_vocab(self) -> dict[str, int]: ...

    def tokenize(self, text: str) -> list[str]: ...


def default_tokenizer() -> Tokenizer:
    # The OpenAI CLIP vocabulary, which SD 1.x, 2.x and SDXL all share; built offline.
    from ..embedded import clip_tokenizer

    return clip_tokenizer()


def token_key(token: str) -> str:
    """The token as CLIP sees it: it lower-cases and collapses whitespace, so tokens that differ only so are
    the same token."""
    return " ".join(token.lower().split())


def name_problem(name: str) -> str:
    return (
        f"folder name {name!r} cannot name a concept (it names the adapter and its file): "
        "use letters, digits, '-' and '_'"
    )


def token_problems(token: str) -> list[str]:
    """What is wrong with a token whatever the tokenizer (the vocabulary check needs one)."""
    if not token.strip():
        return ["token is empty"]
    problems = []
    if any(char.isspace() for char in token):
        problems.append(
            f"token {token!r} has a space: a token is one made-up word (the class goes in class_word)"
        )
    if "{" in token or "}" in token:
        problems.append(f"token {token!r} must not contain {{ or }}")
    return problems


def class_word_problems(class_word: str, token: str | None) -> list[str]:
    if not class_word.strip():
        return ["class_word is empty"]
    if "{" in class_word or "}" in class_word:
        return [f"class_word {class_word!r} must not contain {{ or }}"]
    if token and token_key(token) == token_key(class_word):
        return [
            f"token {token!r} equals the class word: make the token a made-up word, e.g. 'zq{token.lower()}'"
        ]
    return []


def vocabulary_problems(token: str, tokenizer: Tokenizer, vocab: Mapping[str, int]) -> list[str]:
    if token in tokenizer.all_special_tokens:
        return [f"token {token!r} is a special token of the tokenizer: pick a made-up word"]
    # CLIP lower-cases text; a whole word of its BPE vocabulary ends in "</w>".
    word = token.lower() + "</w>"
    if word not in vocab:
        return []
    return [
        f"token {token!r} is already a word of the text encoder's vocabulary (id {vocab[word]}), so training "
        f"would overwrite what the base model knows by it: pick a made-up word such as 'zq{token.lower()}' "
        "(several rare pieces are fine: the adapter learns their combination)"
    ]


def length_problem(what: str, text: str, tokenizer: Tokenizer) -> str | None:
    limit = getattr(tokenizer, "model_max_length", 0)
    if not 0 < limit < 10_000:  # tokenizers without a real limit report a huge sentinel
        return None
    length = len(tokenizer.tokenize(text)) + 2  # + start and end tokens
    if length <= limit:
        return None
    return f"{what} is {length} tokens long, the text encoder reads {limit}: the rest would be cut off"
