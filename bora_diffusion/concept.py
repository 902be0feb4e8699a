"""Concept folders: the images of one concept with its token, class word, prompts and training defaults.

One folder per concept; the folder's name is the concept's name, which names its adapter and adapter file, so it
holds letters, digits, '-' and '_' only::

    concepts/kettle/
      concept.toml     token, class word, prompts, training defaults (below)
      kettle_00.png    images: .png .jpg .jpeg .webp, RGB-convertible, at least `min_size` px on each side
      kettle_00.txt    optional caption of kettle_00.png (kohya's convention); "{token}" and "{class_word}"
                       are filled in, and it must mention the token (as "{token}" or literally)
      kettle_01.png
      README.md        ignored, like hidden files, Thumbs.db and desktop.ini

`concept.toml`, with every optional key at its default::

    token = "qwiv"                  # required: the made-up word that summons the concept in prompts
    class_word = "kettle"           # required: what the concept is, in plain words
    description = ""                # optional, for people and the app

    [prompts]
    instance_prompt = "a photo of {token} {class_word}"   # images without a caption file; must hold {token}
    class_prompt = "a photo of a {class_word}"             # prior preservation; must not hold {token}
    sample_prompts = ["a photo of {token} {class_word}"]  # drawn during and after training

    [train]                         # every key optional; an omitted key means "the trainer's default"
    method = "sbora_fa"             # rank, alpha, blocks (bora_block only), targets: as AdapterConfig
    rank = 4
    steps = 400                     # learning_rate, batch_size, resolution, prior_weight, lock_weight:
                                    # as TrainConfig
    train_embedding = false         # also train the token's text embedding (ED-LoRA); embedding_learning_rate,
                                    # embedding_vectors (how many vectors the token stands for) and
                                    # word_lock_weight (as TrainConfig) go with it

Choosing the token. By default training tunes the UNet and leaves the text encoder frozen, so the token reaches
the UNet as the pieces the base tokenizer splits it into (with `train_embedding`, the token instead becomes one
new token, or `embedding_vectors` of them, with its own trained embedding, bora_diffusion.embeddings). A token
that is itself one word of the vocabulary ("dog", but also DreamBooth's "sks", the name of a rifle, and kohya's
"ohwx") arrives with the meaning the base model already gives it, which training then overwrites: `load_concept`
refuses it. A made-up string splits into several rare pieces ("qwiv" -> "q", "wiv"), and that is fine: the adapter
learns their combination. Give every concept its own pieces: "<zq-kettle>" and "<zq-robot>" differ only in their
class words, which the prompts hold anyway, so they cannot tell two merged concepts apart; and common pieces (the
"my" and "dog" of "<my-dog>") drift with the concept wherever else they are used.

`load_concept` collects every problem of a folder and raises one `ConceptError` that lists them all in one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from .atomic import write_text
from .errors import ConceptError, ConfigError

if TYPE_CHECKING:
    from .config import AdapterConfig, TrainConfig

__all__ = [
    "CONCEPT_FILE",
    "IMAGE_EXTENSIONS",
    "Concept",
    "ConceptError",
    "Prompts",
    "Tokenizer",
    "TrainDefaults",
    "concept_toml",
    "fill",
    "load_concept",
    "load_concepts",
    "write_caption",
    "write_concept_toml",
]

CONCEPT_FILE = "concept.toml"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_EXTENSION = ".txt"
PLACEHOLDERS = ("token", "class_word")
DEFAULT_MIN_SIZE = 64
# Files operating systems drop into folders; never the user's data, so they are not problems.
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
# The concept name keys adapters in an nn.ModuleDict (no '.') and names files: keep it portable.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_EXPECTED = f"expected {', '.join(IMAGE_EXTENSIONS)}"


class Tokenizer(Protocol):
    """What the checks need of a tokenizer (any Hugging Face CLIPTokenizer has it)."""

    model_max_length: int
    all_special_tokens: list[str]

    def get_vocab(self) -> dict[str, int]: ...

    def tokenize(self, text: str) -> list[str]: ...


# --------------------------------------------------------------------------------------------- prompts and defaults
def fill(template: str, token: str, class_word: str) -> str:
    """`template` with "{token}" and "{class_word}" replaced (no other braces are touched)."""
    return template.replace("{token}", token).replace("{class_word}", class_word)


def _placeholder_problem(what: str, text: str) -> str | None:
    """A problem if `text` holds braces other than {token} and {class_word} (a typo such as {tokn})."""
    rest = fill(text, "", "")
    if "{" not in rest and "}" not in rest:
        return None
    found = _PLACEHOLDER.search(rest)
    shown = found.group(0) if found else "a stray brace"
    return f"{what} has {shown}: only {{token}} and {{class_word}} are filled in"


def _prompt_problems(instance_prompt: Any, class_prompt: Any, sample_prompts: Any) -> list[str]:
    """Every problem of a set of prompt templates (of any type, as read from TOML)."""
    problems = []
    if not isinstance(sample_prompts, list | tuple):
        problems.append(f"sample_prompts must be an array of strings, got {_type_name(sample_prompts)}")
        sample_prompts = ()
    texts = [("instance_prompt", instance_prompt), ("class_prompt", class_prompt)]
    texts += [(f"sample_prompts[{i}]", text) for i, text in enumerate(sample_prompts)]
    for what, text in texts:
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{what} must be a non-empty string, got {text!r}")
            continue
        problem = _placeholder_problem(what, text)
        if problem:
            problems.append(problem)
    if isinstance(instance_prompt, str) and "{token}" not in instance_prompt:
        problems.append(
            f"instance_prompt {instance_prompt!r} has no {{token}}: the images would not teach it"
        )
    if isinstance(class_prompt, str) and "{token}" in class_prompt:
        # Prior preservation keeps the plain class as the base draws it; the token there defeats its purpose.
        problems.append(
            f"class_prompt {class_prompt!r} must not hold {{token}}: it describes the plain class"
        )
    return problems


@dataclass(frozen=True)
class Prompts:
    """Prompt templates; "{token}" and "{class_word}" are filled in by `Concept`."""

    instance_prompt: str = "a photo of {token} {class_word}"
    class_prompt: str = "a photo of a {class_word}"
    sample_prompts: tuple[str, ...] = ("a photo of {token} {class_word}",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_prompts", tuple(self.sample_prompts))
        problems = _prompt_problems(self.instance_prompt, self.class_prompt, self.sample_prompts)
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_prompt": self.instance_prompt,
            "class_prompt": self.class_prompt,
            "sample_prompts": list(self.sample_prompts),
        }


_ADAPTER_FIELDS = ("method", "rank", "alpha", "blocks", "targets")
_TRAINING_FIELDS = (
    "steps", "learning_rate", "batch_size", "resolution", "prior_weight", "lock_weight", "word_lock_weight",
    "train_embedding", "embedding_learning_rate", "embedding_vectors",
)  # fmt: skip
_INT_FIELDS = frozenset({"rank", "blocks", "steps", "batch_size", "resolution", "embedding_vectors"})
_FLOAT_FIELDS = frozenset(
    {"alpha", "learning_rate", "prior_weight", "lock_weight", "word_lock_weight", "embedding_learning_rate"}
)
_BOOL_FIELDS = frozenset({"train_embedding"})


@dataclass(frozen=True)
class TrainDefaults:
    """A concept's own training settings; None means "the trainer's default". Values are checked by the same
    rules as `AdapterConfig` (method, rank, alpha, blocks, targets) and `TrainConfig` (the rest)."""

    method: str | None = None
    rank: int | None = None
    alpha: float | None = None
    blocks: int | None = None
    targets: str | tuple[str, ...] | None = None
    steps: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    resolution: int | None = None
    prior_weight: float | None = None
    lock_weight: float | None = None
    word_lock_weight: float | None = None
    train_embedding: bool | None = None
    embedding_learning_rate: float | None = None
    embedding_vectors: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))  # TOML's `alpha = 4` means 4.0
        problems = _train_problems(self.to_dict())
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (None left out), TOML- and JSON-ready."""
        data = {key: value for key, value in dataclasses.asdict(self).items() if value is not None}
        if isinstance(data.get("targets"), tuple):
            data["targets"] = list(data["targets"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainDefaults:
        problems = _train_problems(data)
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(**data)

    def adapter_config(self, default_method: str = "lora", **overrides: Any) -> AdapterConfig:
        """The adapter settings: `overrides` that are not None (e.g. CLI flags) beat the concept's values, which
        beat AdapterConfig's defaults; `default_method` applies when neither names a method."""
        from .config import AdapterConfig

        values = {key: getattr(self, key) for key in _ADAPTER_FIELDS if getattr(self, key) is not None}
        values.update({key: value for key, value in overrides.items() if value is not None})
        values.setdefault("method", default_method)
        if values["method"] != "bora_block" and overrides.get("blocks") is None:
            # The concept's blocks belong to its own bora_block choice, not to a method chosen over it.
            values.pop("blocks", None)
        return AdapterConfig(**values)

    def train_config(self, base: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
        """`base` (default: TrainConfig()) with the concept's values, then the non-None `overrides`, on top."""
        from .config import TrainConfig

        values = {key: getattr(self, key) for key in _TRAINING_FIELDS if getattr(self, key) is not None}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return dataclasses.replace(base if base is not None else TrainConfig(), **values)


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}
    return names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)


def _type_problem(key: str, value: Any) -> str | None:
    if key in _INT_FIELDS:
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif key in _FLOAT_FIELDS:
        ok, wanted = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif key in _BOOL_FIELDS:
        ok, wanted = isinstance(value, bool), "true or false"
    elif key == "targets":
        ok = isinstance(value, str) or (
            isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
        )
        wanted = "a preset name or an array of regular expressions"
    else:
        ok, wanted = isinstance(value, str), "a string"
    return None if ok else f"{key} must be {wanted}, got {_type_name(value)} {value!r}"


def _unknown_keys(data: Mapping[str, Any], known: Sequence[str], where: str) -> list[str]:
    problems = []
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            problems.append(f"unknown key {where}{key!r} ({hint})")
    return problems


def _train_problems(data: Mapping[str, Any]) -> list[str]:
    """Every problem of a [train] table; the value rules are AdapterConfig's and TrainConfig's own."""
    from .config import AdapterConfig, TrainConfig
    from .errors import TargetError
    from .inject import target_patterns

    known = _ADAPTER_FIELDS + _TRAINING_FIELDS
    problems = _unknown_keys(data, known, "")
    values = {}
    for key in known:
        if data.get(key) is not None:
            problem = _type_problem(key, data[key])
            if problem:
                problems.append(problem)
            else:
                values[key] = data[key]
    method = values.get("method")
    if method is not None:
        try:
            AdapterConfig(method=method)
        except ConfigError as error:
            problems.append(str(error))
            method = None  # judge the other fields under a valid method
    checks: list[tuple[type, dict[str, Any]]] = []
    for key in ("rank", "alpha", "blocks"):
        if key in values:
            probe = method or ("bora_block" if key == "blocks" else "lora")
            checks.append((AdapterConfig, {"method": probe, key: values[key]}))
    checks += [(TrainConfig, {key: values[key]}) for key in _TRAINING_FIELDS if key in values]
    # One constructor call per field, so a bad rank does not hide a bad learning rate.
    for cls, kwargs in checks:
        try:
            cls(**kwargs)
        except ConfigError as error:
            problems.append(str(error))
    if "targets" in values:
        try:
            target_patterns(values["targets"])
        except TargetError as error:
            problems.append(str(error))
    return problems


# ------------------------------------------------------------------------------------------------------ the concept
def _token_problems(token: str) -> list[str]:
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


def _class_word_problems(class_word: str, token: str | None) -> list[str]:
    if not class_word.strip():
        return ["class_word is empty"]
    if "{" in class_word or "}" in class_word:
        return [f"class_word {class_word!r} must not contain {{ or }}"]
    if token and _token_key(token) == _token_key(class_word):
        return [
            f"token {token!r} equals the class word: make the token a made-up word, e.g. 'zq{token.lower()}'"
        ]
    return []


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
    prompts: Prompts = Prompts()
    train: TrainDefaults = TrainDefaults()
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "images", tuple(sorted(Path(image) for image in self.images)))
        captions = {Path(image): text for image, text in self.captions.items()}
        problems = _token_problems(self.token) + _class_word_problems(self.class_word, self.token)
        if not _NAME.match(self.name):
            problems.append(_name_problem(self.name))
        if not self.images:
            problems.append("no images")
        problems += [
            f"caption for {image.name}, which is not one of the images"
            for image in captions
            if image not in self.images
        ]
        if problems:
            raise ConceptError(_message(f"concept {self.name!r}", problems), problems)
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


# --------------------------------------------------------------------------------------------------------- loading
def _message(label: str, problems: Sequence[str]) -> str:
    count = len(problems)
    return f"{label}: {count} problem{'' if count == 1 else 's'}: {'; '.join(problems)}"


def _name_problem(name: str) -> str:
    return (
        f"folder name {name!r} cannot name a concept (it names the adapter and its file): "
        "use letters, digits, '-' and '_'"
    )


@dataclass
class _Settings:
    """What concept.toml says, as far as it could be read."""

    token: str | None = None
    class_word: str | None = None
    description: str = ""
    prompts: Prompts = field(default_factory=Prompts)
    train: TrainDefaults = field(default_factory=TrainDefaults)


def _read_settings(path: Path, problems: list[str]) -> _Settings | None:
    """Parse concept.toml, appending every problem; None when there is no usable file at all."""
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("*.toml") if not p.name.startswith("."))
        hint = (
            f" (found {', '.join(others)}: rename it)"
            if others
            else ' (it holds token = "..." and class_word = "...")'
        )
        problems.append(f"no {CONCEPT_FILE}{hint}")
        return None
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        problems.append(f"{CONCEPT_FILE} is not UTF-8 text")
        return None
    except tomllib.TOMLDecodeError as error:
        # tomllib's message ends with "(at line L, column C)", which is what the user needs to find it.
        problems.append(f"{CONCEPT_FILE} is not valid TOML: {error}")
        return None
    except OSError as error:
        problems.append(f"{CONCEPT_FILE} cannot be read ({error.strerror})")
        return None

    where = f"{CONCEPT_FILE}: "
    settings = _Settings()
    problems += [
        where + p for p in _unknown_keys(data, ("token", "class_word", "description", "prompts", "train"), "")
    ]
    for key in ("token", "class_word", "description"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{where}{key} must be a string, got {_type_name(value)} {value!r}")
        elif value is not None:
            setattr(settings, key, value.strip())
    for key, example in (("token", "zq" + path.parent.name.lower()), ("class_word", "dog")):
        if data.get(key) is None:
            what = "a made-up word" if key == "token" else "what the concept is"
            problems.append(f'{CONCEPT_FILE} has no {key} (add e.g. {key} = "{example}": {what})')

    tables = {}
    for key in ("prompts", "train"):
        value = data.get(key, {})
        if isinstance(value, dict):
            tables[key] = value
        else:
            problems.append(f"{where}{key} must be a table ([{key}]), got {_type_name(value)} {value!r}")
    prompts = tables.get("prompts", {})
    defaults = Prompts()
    known_prompts = tuple(defaults.to_dict())
    prompt_problems = _unknown_keys(prompts, known_prompts, "")
    values = {key: prompts.get(key, getattr(defaults, key)) for key in known_prompts}
    prompt_problems += _prompt_problems(**values)
    if not prompt_problems:
        settings.prompts = Prompts(**values)
    problems += [f"{where}[prompts] {p}" for p in prompt_problems]

    train_problems = _train_problems(tables.get("train", {}))
    if train_problems:
        problems += [f"{where}[train] {p}" for p in train_problems]
    else:
        settings.train = TrainDefaults(**tables.get("train", {}))
    return settings


def _not_an_image(path: Path) -> str:
    """The problem with a file that has no image extension; says how to fix an image in another format."""
    try:
        with Image.open(path) as image:
            kind = image.format
    except Exception:  # PIL raises many types for non-images; any of them means "not an image"
        kind = None
    if kind in ("PNG", "JPEG", "MPO", "WEBP"):
        extension = {"PNG": ".png", "WEBP": ".webp"}.get(kind, ".jpg")
        return (
            f"{path.name} is a {kind} image without an image extension: rename it to {path.stem}{extension}"
        )
    if kind:
        return f"{path.name} is a {kind} image, which is not read here: convert it to PNG ({_EXPECTED})"
    return f"{path.name} is not an image ({_EXPECTED})"


def _image_problems(path: Path, min_size: int) -> list[str]:
    name = path.name
    try:
        with Image.open(path) as image:
            image.verify()  # structure and checksums (PNG CRCs), without decoding
        with Image.open(path) as image:
            image.load()  # decodes every pixel: catches truncated data that verify() never reads
            problems = []
            width, height = image.size
            if width < min_size or height < min_size:
                problems.append(f"{name} is {width}x{height}, smaller than {min_size} px")
            if image.mode in ("I", "F") or image.mode.startswith("I;"):
                # PIL converts these to RGB by clipping at 255: a 16-bit photo turns white, silently.
                problems.append(
                    f"{name} has 16-bit or float pixels (mode {image.mode}), which turn to RGB by clipping at "
                    "255: save it as 8-bit RGB"
                )
                return problems
            try:
                image.convert("RGB")
            except Exception as error:  # any failure of PIL's converters means training cannot read it
                problems.append(f"{name} is in mode {image.mode}, which cannot be converted to RGB ({error})")
                return problems
            # Transparent pixels are no problem: training flattens them onto white (data.flatten).
            return problems
    except Image.UnidentifiedImageError:
        return [f"{name} is not an image, whatever its extension says"]
    except OSError as error:
        reason = error.strerror or str(error)
        return [f"{name} is a corrupt or unreadable image ({reason})"]
    except Exception as error:
        # PIL's decoders also raise SyntaxError, ValueError, struct.error... for broken files.
        return [f"{name} is a corrupt image ({error})"]


def _caption_problems(
    caption: Path, images: Sequence[Path], token: str | None
) -> tuple[Path | None, str | None, list[str]]:
    """(the image it captions, its text, problems)."""
    matches = [image for image in images if image.stem == caption.stem]
    if not matches:
        named = [image for image in images if image.name == caption.stem]  # kettle.png.txt
        hint = f"name it {named[0].stem}.txt" if named else "name it like its image: a.png -> a.txt"
        return None, None, [f"{caption.name} is a caption without an image ({hint})"]
    if len(matches) > 1:
        names = " or ".join(image.name for image in matches)
        return None, None, [f"{caption.name} could caption {names}: give the images different names"]
    try:
        text = " ".join(caption.read_text(encoding="utf-8").split())
    except UnicodeDecodeError:
        return None, None, [f"{caption.name} is not UTF-8 text"]
    except OSError as error:
        return None, None, [f"{caption.name} cannot be read ({error.strerror})"]
    if not text:
        empty = f"{caption.name} is empty: write a caption, or delete it to use the instance prompt"
        return None, None, [empty]
    problems = []
    placeholder = _placeholder_problem(caption.name, text)
    if placeholder:
        problems.append(placeholder)
    if token and "{token}" not in text and token.lower() not in text.lower():
        problems.append(f"{caption.name} does not mention {{token}}, so its image would not teach the token")
    return matches[0], text, problems


def _vocabulary_problems(token: str, tokenizer: Tokenizer, vocab: Mapping[str, int]) -> list[str]:
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


def _length_problem(what: str, text: str, tokenizer: Tokenizer) -> str | None:
    limit = getattr(tokenizer, "model_max_length", 0)
    if not 0 < limit < 10_000:  # tokenizers without a real limit report a huge sentinel
        return None
    length = len(tokenizer.tokenize(text)) + 2  # + start and end tokens
    if length <= limit:
        return None
    return f"{what} is {length} tokens long, the text encoder reads {limit}: the rest would be cut off"


def _token_key(token: str) -> str:
    # CLIP lower-cases and collapses whitespace, so tokens that differ only so are the same token.
    return " ".join(token.lower().split())


def _scan(folder: Path, min_size: int, problems: list[str]) -> tuple[list[Path], list[Path]]:
    """The folder's images and caption files, sorted by name; every other file's problem is appended."""
    images, captions = [], []
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        entries = []
        problems.append(f"cannot list the folder ({error.strerror})")
    inside = folder.resolve()
    for path in entries:
        lower = path.name.lower()
        if path.name.startswith(".") or lower.startswith("readme") or lower in _IGNORED_NAMES:
            continue
        if path.name == CONCEPT_FILE:
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            # A link out of the folder trains on files the folder does not hold; refused so the folder is the
            # whole concept (copy the file in instead).
            problems.append(
                f"{path.name} is a link to {path.resolve()}, outside the folder: copy the file in"
            )
        elif path.exists() and not path.is_dir() and not path.is_file():
            # FIFOs, sockets, devices: opening a FIFO blocks until a writer comes, so these are never opened.
            problems.append(f"{path.name} is not a regular file (a pipe, socket or device): remove it")
        elif path.is_dir():
            problems.append(f"{path.name}/ is a folder: images go directly into the concept folder")
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        elif path.suffix.lower() == CAPTION_EXTENSION:
            captions.append(path)
        else:
            problems.append(_not_an_image(path))
    if not images:
        problems.append(f"no images (add {', '.join(IMAGE_EXTENSIONS)} files)")
    for image in images:
        problems += _image_problems(image, min_size)
    return images, captions


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
    if not _NAME.match(name):
        problems.append(_name_problem(name))
    settings = _read_settings(folder / CONCEPT_FILE, problems)
    token = settings.token if settings else None
    class_word = settings.class_word if settings else None
    if token is not None:
        problems += _token_problems(token)
    if class_word is not None:
        problems += _class_word_problems(class_word, token)
    if token and tokenizer is not None:
        problems += _vocabulary_problems(token, tokenizer, tokenizer.get_vocab())
    if token:
        taken = {_token_key(other) for other in other_tokens}
        if _token_key(token) in taken:
            problems.append(
                f"token {token!r} is already the token of another concept: each concept needs its own"
            )

    images, captions = _scan(folder, min_size, problems)

    texts: dict[Path, str] = {}
    for caption in captions:
        image, text, caption_problems = _caption_problems(caption, images, token)
        problems += caption_problems
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
        problems += [p for what, text in prompts if (p := _length_problem(what, text, tokenizer))]

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


def _default_tokenizer() -> Tokenizer:
    # The OpenAI CLIP vocabulary, which SD 1.x, 2.x and SDXL all share; built offline.
    from .embedded import clip_tokenizer

    return clip_tokenizer()


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
        tokenizer = _default_tokenizer()
    concept, problems, _ = _inspect(folder, min_size, other_tokens, tokenizer)
    if concept is None:
        raise ConceptError(_message(str(folder), problems), problems)
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
        tokenizer = _default_tokenizer()
    results = [_inspect(folder, min_size, other_tokens, tokenizer) for folder in folders]
    problems = {index: list(result[1]) for index, result in enumerate(results)}
    seen_tokens: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    for index, (folder, (_, _, token)) in enumerate(zip(folders, results, strict=True)):
        if token:
            first = seen_tokens.setdefault(_token_key(token), index)
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
        message = " | ".join(_message(str(folder), found) for folder, found in failed)
        if len(folders) > 1:
            message = f"{len(failed)} of {len(folders)} concept folders have problems: {message}"
        flat = [f"{folder}: {problem}" for folder, found in failed for problem in found]
        raise ConceptError(message, flat)
    return [concept for concept, _, _ in results if concept is not None]


# --------------------------------------------------------------------------------------------------------- writing
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)  # repr round-trips, and its forms (1e-05, 0.0001, 4.0) are all valid TOML floats
    if isinstance(value, str):
        escaped = []
        for char in value:
            if char in '"\\':
                escaped.append("\\" + char)
            elif ord(char) < 0x20 or ord(char) == 0x7F:  # TOML forbids raw control characters in strings
                escaped.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char, f"\\u{ord(char):04X}"))
            else:
                escaped.append(char)
        return '"' + "".join(escaped) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_line(key: str, value: Any) -> str:
    line = f"{key} = {_toml_value(value)}"
    if isinstance(value, list | tuple) and len(line) > 100:  # one item a line, so people can edit the list
        return f"{key} = [\n" + "".join(f"    {_toml_value(item)},\n" for item in value) + "]"
    return line


def concept_toml(
    token: str,
    class_word: str,
    *,
    description: str = "",
    prompts: Prompts | None = None,
    train: TrainDefaults | None = None,
) -> str:
    """The text of a concept.toml (validated; raises ConceptError for a bad token or class word)."""
    problems = _token_problems(token) + _class_word_problems(class_word, token)
    if problems:
        raise ConceptError(_message(CONCEPT_FILE, problems), problems)
    prompts = prompts if prompts is not None else Prompts()
    train = train if train is not None else TrainDefaults()
    lines = [f"token = {_toml_value(token)}", f"class_word = {_toml_value(class_word)}"]
    if description:
        lines.append(f"description = {_toml_value(description)}")
    lines += ["", "[prompts]"]
    lines += [_toml_line(key, value) for key, value in prompts.to_dict().items()]
    lines += ["", "[train]  # a key left out means the trainer's default"]
    lines += [_toml_line(key, value) for key, value in train.to_dict().items()]
    return "\n".join(lines) + "\n"


def write_concept_toml(
    folder: str | Path,
    token: str,
    class_word: str,
    *,
    description: str = "",
    prompts: Prompts | None = None,
    train: TrainDefaults | None = None,
) -> Path:
    """Write `<folder>/concept.toml` atomically (creating the folder) and return its path.

    Only the settings are checked here; call `load_concept(folder)` once the images are in place.
    """
    path = Path(folder) / CONCEPT_FILE
    write_text(path, concept_toml(token, class_word, description=description, prompts=prompts, train=train))
    return path


def write_caption(image: str | Path, caption: str) -> Path:
    """Write `caption` (with "{token}" where the token goes) as the caption file of `image`, atomically."""
    image = Path(image)
    text = " ".join(caption.split())
    problem = "caption is empty" if not text else _placeholder_problem("caption", text)
    if problem:
        raise ConceptError(f"{image.name}: {problem}", [problem])
    path = image.with_suffix(CAPTION_EXTENSION)
    write_text(path, text + "\n")
    return path
