"""The concept itself: `Concept` (images, token, class word, prompts, training defaults) and loading folders into
concepts with every check, one folder (`load_concept`) or several that are used together (`load_concepts`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConceptError
from .folder import CONCEPT_FILE, DEFAULT_MIN_SIZE, caption_problems, scan
from .problems import message
from .prompts import Prompts, fill
from .toml_file import concept_toml, read_settings
from .training import TrainDefaults
from .words import (
    NAME,
    Tokenizer,
    class_word_problems,
    default_tokenizer,
    length_problem,
    name_problem,
    token_key,
    token_problems,
    vocabulary_problems,
)

if TYPE_CHECKING:
    from ..config import AdapterConfig, TrainConfig


@dataclass(frozen=True)
class Concept:
    """One concept: its images, token, class word, prompt templates and training defaults.

    `captions` maps every image to the prompt it trains with: its caption file's text, else the instance prompt,
    with "{token}" and "{class_word}" filled in. Built by `load_concept`, or directly (missing captions are then
    filled from the instance prompt).
    """

    name: str
    folder: Path
    token: str
    class_word: str
    images: tuple[Path, ...]
    captions: dict[Path, str] = field(default_factory=dict, hash=False)
    prompts: Prompts = field(default_factory=Prompts)
    train: TrainDefaults = field(default_factory=TrainDefaults)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "images", tuple(sorted(Path(image) for image in self.images)))
        captions = {Path(image): text for image, text in self.captions.items()}
        problems = token_problems(self.token) + class_word_problems(self.class_word, self.token)
        if not NAME.match(self.name):
            problems.append(name_problem(self.name))
        if not self.images:
            problems.append("no images")
        problems += [
            f"caption for {image.name}, which is not one of the images"
            for image in captions
            if image not in self.images
        ]
        if problems:
            raise ConceptError(message(f"concept {self.name!r}", problems), problems)
        default = self.fill(self.prompts.instance_prompt)
        object.__setattr__(self, "captions", {image: captions.get(image, default) for image in self.images})

    def fill(self, template: str) -> str:
        """`template` with this concept's token and class word in place of "{token}" and "{class_word}"."""
        return fill(template, self.token, self.class_word)

    def instance_prompt(self, image: str | Path) -> str:
        """The prompt `image` trains with: its caption, else the instance prompt, filled in."""
        image = Path(image)
        if image in self.captions:
            return self.captions[image]
        matches = [known for known in self.images if known.name == image.name]
        if len(matches) != 1:
            raise KeyError(f"{image} is not an image of concept {self.name!r}")
        return self.captions[matches[0]]

    @property
    def class_prompt(self) -> str:
        """The prior-preservation prompt, filled in."""
        return self.fill(self.prompts.class_prompt)

    @property
    def sample_prompts(self) -> tuple[str, ...]:
        """The sample / validation prompts, filled in."""
        return tuple(self.fill(prompt) for prompt in self.prompts.sample_prompts)

    def adapter_config(self, default_method: str = "lora", **overrides: Any) -> AdapterConfig:
        """See `TrainDefaults.adapter_config`."""
        return self.train.adapter_config(default_method, **overrides)

    def train_config(self, base: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
        """See `TrainDefaults.train_config`; also fills sample_prompts with the concept's when `base` has none."""
        config = self.train.train_config(base, **overrides)
        if not config.sample_prompts and overrides.get("sample_prompts") is None:
            config = dataclasses.replace(config, sample_prompts=self.sample_prompts)
        return config

    def to_toml(self) -> str:
        """This concept's `concept.toml` text (captions live in their own files)."""
        return concept_toml(
            self.token, self.class_word, description=self.description, prompts=self.prompts, train=self.train
        )


def _inspect(
    folder: Path, min_size: int, other_tokens: Iterable[str], tokenizer: Tokenizer | None
) -> tuple[Concept | None, list[str], str | None]:
    """(the concept or None, every problem, the token as far as it could be read)."""
    if not folder.exists():
        return None, ["folder does not exist"], None
    if not folder.is_dir():
        return None, ["is not a folder"], None
    problems: list[str] = []
    name = folder.resolve().name
    if not NAME.match(name):
        problems.append(name_problem(name))
    settings = read_settings(folder / CONCEPT_FILE, problems)
    token = settings.token if settings else None
    class_word = settings.class_word if settings else None
    if token is not None:
        problems += token_problems(token)
    if class_word is not None:
        problems += class_word_problems(class_word, token)
    if token and tokenizer is not None:
        problems += vocabulary_problems(token, tokenizer, tokenizer.get_vocab())
    if token:
        taken = {token_key(other) for other in other_tokens}
        if token_key(token) in taken:
            problems.append(
                f"token {token!r} is already the token of another concept: each concept needs its own"
            )

    images, captions = scan(folder, min_size, problems)

    texts: dict[Path, str] = {}
    for caption in captions:
        image, text, found = caption_problems(caption, images, token)
        problems += found
        if image is not None and text is not None:
            texts[image] = text

    if tokenizer is not None:
        # Filled with whatever token and class word could be read, so this is checked with everything else.
        filler = (token or "", class_word or "")
        prompts = [(image.name + "'s caption", fill(text, *filler)) for image, text in texts.items()]
        if settings is not None:
            templates = settings.prompts
            prompts += [("instance_prompt", fill(templates.instance_prompt, *filler))]
            prompts += [("class_prompt", fill(templates.class_prompt, *filler))]
            prompts += [
                (f"sample_prompts[{i}]", fill(t, *filler)) for i, t in enumerate(templates.sample_prompts)
            ]
        problems += [p for what, text in prompts if (p := length_problem(what, text, tokenizer))]

    if settings is None or problems:
        return None, problems, token
    assert token is not None and class_word is not None  # a missing one is a problem above
    concept = Concept(
        name=name,
        folder=folder.resolve(),
        token=token,
        class_word=class_word,
        images=tuple(image.resolve() for image in images),
        captions={image.resolve(): fill(text, token, class_word) for image, text in texts.items()},
        prompts=settings.prompts,
        train=settings.train,
        description=settings.description,
    )
    return concept, problems, token


def load_concept(
    folder: str | Path,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    other_tokens: Iterable[str] = (),
    tokenizer: Tokenizer | None = None,
) -> Concept:
    """Read and validate one concept folder; raise one `ConceptError` that lists every problem found.

    `min_size`: the smallest width and height accepted (use the training resolution). `other_tokens`: tokens
    already taken by other concepts (compared ignoring case, as CLIP does). `tokenizer`: the base model's, for
    the vocabulary and prompt-length checks; default: the CLIP tokenizer of SD 1.x, 2.x and SDXL.
    """
    folder = Path(folder)
    if tokenizer is None:
        tokenizer = default_tokenizer()
    concept, problems, _ = _inspect(folder, min_size, other_tokens, tokenizer)
    if concept is None:
        raise ConceptError(message(str(folder), problems), problems)
    return concept


def load_concepts(
    folders: Iterable[str | Path],
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    other_tokens: Iterable[str] = (),
    tokenizer: Tokenizer | None = None,
) -> list[Concept]:
    """Load several concept folders that are to be trained or used together.

    On top of each folder's own checks, no two may share a token or a name (names key the adapters); the
    error then names both folders. One `ConceptError` lists the problems of every folder.
    """
    folders = [Path(folder) for folder in folders]
    other_tokens = list(other_tokens)
    if tokenizer is None and folders:
        tokenizer = default_tokenizer()
    results = [_inspect(folder, min_size, other_tokens, tokenizer) for folder in folders]
    problems = {index: list(result[1]) for index, result in enumerate(results)}
    seen_tokens: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    for index, (folder, (_, _, token)) in enumerate(zip(folders, results, strict=True)):
        if token:
            first = seen_tokens.setdefault(token_key(token), index)
            if first != index:
                problems[index].append(f"token {token!r} is also the token of {folders[first]}")
        if folder.is_dir():
            first = seen_names.setdefault(folder.resolve().name, index)
            if first != index:
                problems[index].append(
                    f"name {folder.resolve().name!r} is also the name of {folders[first]} (names key the adapters)"
                )
    failed = [(folders[index], found) for index, found in problems.items() if found]
    if failed:
        text = " | ".join(message(str(folder), found) for folder, found in failed)
        if len(folders) > 1:
            text = f"{len(failed)} of {len(folders)} concept folders have problems: {text}"
        flat = [f"{folder}: {problem}" for folder, found in failed for problem in found]
        raise ConceptError(text, flat)
    return [concept for concept, _, _ in results if concept is not None]
