"""The concepts of an evaluation run, read and checked before any image is drawn.

`prepare` reads every adapter file, prompt set and reference folder first, so a mistake in the last concept
fails in a second, not after the first concept's images; `Prepared` is a concept with a trained file,
`BaseItem` what a setting without its file needs (the base before tuning, or other words in the token's place).
The token checks refuse a pipeline whose tokenizer would read a concept's token through another concept's
trained vector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..embeddings import added_tokens
from ..errors import ConfigError
from ..formats import AdapterFile, read_adapter
from .errors import ConceptFileError
from .images import check_images, reference_images
from .prompt_sets import fill_prompts, fill_with_words, load_prompt_set
from .run_settings import EvalConcept, RunSettings

__all__ = ["BaseItem", "Prepared", "check_base_tokens", "check_leftover_tokens", "prepare"]


@dataclass(frozen=True)
class Prepared:
    """A concept checked and ready: its file read, its prompts filled, its references listed."""

    spec: EvalConcept
    info: AdapterFile
    prompt_set: str
    prompts: tuple[str, ...]
    references: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def token(self) -> str:
        return self.info.token or ""

    @property
    def tokens(self) -> tuple[str, ...]:
        return (self.token,)

    @property
    def class_word(self) -> str:
        return self.info.class_word or ""


def prepare(concepts: Sequence[EvalConcept], settings: RunSettings) -> list[Prepared]:
    """Read every file, prompt set and reference folder before any image is drawn, so a mistake in the last
    concept fails in a second, not after the first concept's generation."""
    if not concepts:
        raise ConfigError("evaluate needs at least one concept file")
    prepared: list[Prepared] = []
    names: dict[str, Path] = {}
    tokens: dict[str, Path] = {}
    for spec in concepts:
        info = read_adapter(spec.file)
        if not info.token or not info.class_word:
            missing = "token" if not info.token else "class word"
            raise ConceptFileError(
                f"{spec.file}: the file records no {missing}, so its prompts cannot be written; train it from a "
                "concept folder, or import it with `bora-diffusion import --token ... --class-word ...`"
            )
        if info.name in names:
            raise ConceptFileError(
                f"{spec.file}: concept name {info.name!r} is also the name of {names[info.name]}; evaluate "
                "each concept once"
            )
        if info.token.lower() in tokens:
            raise ConceptFileError(
                f"{spec.file}: token {info.token!r} is also the token of {tokens[info.token.lower()]}; two "
                "concepts with one token cannot be told apart in prompts"
            )
        if info.token.lower() in {word.lower() for word in settings.other_words}:
            raise ConceptFileError(
                f"{spec.file}: token {info.token!r} is also one of the run's other words (drawn in the token's "
                "place to measure drift); leave it out of the other words"
            )
        names[info.name], tokens[info.token.lower()] = spec.file, spec.file
        references = tuple(reference_images(spec.references))
        check_images(references, [str(path) for path in references])
        prompt_set = spec.prompt_set or settings.prompt_set
        prompts = tuple(fill_prompts(load_prompt_set(prompt_set), info.token, info.class_word))
        prepared.append(Prepared(spec, info, prompt_set, prompts, references))
    return prepared


def _added_tokens(pipe) -> set[str]:
    """The tokens earlier concepts added to this pipeline's tokenizer (lower case)."""
    return {token.lower() for token in added_tokens(pipe.tokenizer)}


def check_leftover_tokens(pipe, prepared: Sequence[Prepared]) -> None:
    """A token an earlier concept added to this pipeline's tokenizer keeps its trained embedding; a file without
    one would then be prompted through the other concept's vector. Refuse that instead of scoring it."""
    added = _added_tokens(pipe)
    for item in prepared:
        if item.info.token_embedding is None and item.token.lower() in added:
            raise ConfigError(
                f"{item.spec.file}: this pipeline's tokenizer already holds token {item.token!r} with an embedding "
                "added by an earlier concept, and this file has none of its own; evaluate on a freshly loaded base"
            )


@dataclass(frozen=True)
class BaseItem:
    """What the before-tuning setting needs of a concept: its prompts and references, no adapter file."""

    name: str
    tokens: tuple[str, ...]  # the words its prompts hold in the token's place: its token, or other words
    class_word: str
    prompt_set: str
    prompts: tuple[str, ...]
    references: tuple[Path, ...]

    @classmethod
    def of(cls, item: Prepared) -> BaseItem:
        return cls(item.name, item.tokens, item.class_word, item.prompt_set, item.prompts, item.references)

    def with_words(self, words: Sequence[str]) -> BaseItem:
        """The same concept prompted with other words in its token's place: every prompt with every word."""
        prompts = fill_with_words(load_prompt_set(self.prompt_set), words, self.class_word)
        return dataclasses.replace(self, tokens=tuple(words), prompts=tuple(prompts))


def check_base_tokens(pipe, items: Sequence[BaseItem]) -> None:
    """The base must read a concept's token as the base tokenizer does; a token an earlier concept added to this
    pipeline would be read through that concept's trained vector instead."""
    added = _added_tokens(pipe)
    for item in items:
        for token in item.tokens:
            if token.lower() in added:
                raise ConfigError(
                    f"this pipeline's tokenizer already holds token {token!r}, added by an earlier concept, so "
                    "its images before tuning would use that concept's embedding; score the base on a freshly "
                    "loaded pipeline, or turn the before-tuning setting off"
                )
