"""The Train tab's form: method presets, and a checked training job built from what the user entered.

Every field is checked here with its name and the fix in the message, so a typo reads as a sentence in the page
(or in the API client's error), never as a traceback. Concepts come from an upload (stored by `DataDir`) or
from a folder of the app's concepts directory picked by name: only names that directory lists are accepted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..adapters import available
from ..concept import Concept, TrainDefaults, load_concept
from ..config import AdapterConfig, TrainConfig
from ..errors import ConfigError
from ..inject import TARGET_PRESETS
from .storage import DataDir, safe_name

SOURCES = ("upload", "folder")
MAX_STEPS = 100_000


@dataclass(frozen=True)
class Preset:
    """Starting values for a method; the TrainConfig defaults (DreamBooth-LoRA recipe, LR raised for the tiny
    embedded base) unless the method asks for something else."""

    rank: int = 4
    blocks: int | None = None
    steps: int = 200
    learning_rate: float = 1e-3


PRESETS: dict[str, Preset] = {
    "lora": Preset(),
    "dora": Preset(),
    # One factor trains, the other is a fixed slot selection (or basis): same rank and LR as LoRA, and disjoint
    # slots keep several concepts mergeable.
    "sbora_fa": Preset(),
    "sbora_fb": Preset(),
    "ortho": Preset(),
    # b blocks of rank r: the update has rank b*r, so keep r small.
    "bora_block": Preset(rank=2, blocks=4),
    "bora_bidim": Preset(),
}


def preset(method: str) -> Preset:
    if method not in available():
        raise ConfigError(f"method: choose one of {', '.join(available())}, got {method!r}")
    return PRESETS.get(method, Preset())


@dataclass(frozen=True)
class Recipe:
    """The Train form's values for a concept folder: what `bora-diffusion train <folder>` would use."""

    method: str
    rank: int
    blocks: int
    steps: int
    learning_rate: float
    resolution: int
    train_embedding: bool
    # A TARGET_PRESETS name: which projections the adapters sit on; None for a folder's own regular expressions,
    # which the form cannot show (left empty, `build` trains the folder's own).
    targets: str | None
    lock_weight: float  # prompt locking (bora_diffusion.locking); 0: off
    embedding_vectors: int  # vectors of the trained token (read when train_embedding is on)
    word_lock_weight: float  # keeps the other words' text states while the token trains; 0: off


def folder_recipe(root: Path | None, folder: str) -> Recipe:
    """A concept folder's concept.toml [train] values over its method's preset, so that picking a folder shows
    (and, left as it is, trains) the concept's own recipe, as the command line does."""
    own = load_concept(_known_folder(root, folder)).train
    method = own.method or "sbora_fa"
    start = preset(method)
    targets = own.targets or AdapterConfig.targets
    return Recipe(
        method=method,
        rank=own.rank or start.rank,
        blocks=own.blocks or start.blocks or PRESETS["bora_block"].blocks,
        steps=own.steps or start.steps,
        learning_rate=own.learning_rate or start.learning_rate,
        resolution=own.resolution or TrainConfig.resolution,
        train_embedding=bool(own.train_embedding),
        targets=targets if isinstance(targets, str) else None,
        lock_weight=own.lock_weight or TrainConfig.lock_weight,
        embedding_vectors=own.embedding_vectors or TrainConfig.embedding_vectors,
        word_lock_weight=own.word_lock_weight or TrainConfig.word_lock_weight,
    )


def _known_folder(root: Path | None, folder: str) -> Path:
    """The path of concept folder `folder` of `root`; only names `concept_folders` lists are accepted."""
    known = concept_folders(root)
    if folder not in known:
        raise ConfigError(
            f"folder: pick one of the concept folders ({', '.join(known) or 'none'}), got {folder!r}"
        )
    return root / folder


def concept_folders(root: Path | None) -> list[str]:
    """The concept folders (holding a concept.toml) of the app's concepts directory, by name."""
    if root is None or not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "concept.toml").is_file())


@dataclass(frozen=True)
class Form:
    """What the Train tab sends. Numbers arrive as floats from the page; they must still be whole where needed."""

    source: str
    files: tuple[str, ...] = ()
    folder: str = ""
    name: str = ""
    token: str = ""
    class_word: str = ""
    method: str = "sbora_fa"
    rank: float = 4
    blocks: float | None = None
    steps: float = 200
    learning_rate: float = 1e-3
    sample_every: float = 0
    resolution: float = 64
    # The last five: None means the concept folder's own choice. Only Python callers of `build` can send None:
    # the page, and gradio's HTTP API for a caller that leaves a field out, send the field's shown value.
    # Also train the token's own text embedding (ED-LoRA).
    train_embedding: bool | None = None
    # Which projections the adapters sit on (a TARGET_PRESETS name).
    targets: str | None = None
    # Prompt locking's weight (bora_diffusion.locking; 0: off).
    lock_weight: float | None = None
    # How many vectors the trained token has (textual inversion's number of vectors).
    embedding_vectors: float | None = None
    # The word lock's weight (bora_diffusion.locking.WordLock; 0: off).
    word_lock_weight: float | None = None


def _number(value) -> float:
    """`value` as a float; NaN (which every range check refuses) when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _whole(value, field: str, low: int, high: int) -> int:
    number = _number(value)
    if not number.is_integer() or not low <= number <= high:
        raise ConfigError(f"{field}: give a whole number from {low} to {high}, got {value!r}")
    return int(number)


def _weight(value, field: str, example: int) -> float:
    weight = _number(value)
    if not 0 <= weight <= 1000:
        raise ConfigError(f"{field}: give a number from 0 (off) to 1000, e.g. {example}, got {value!r}")
    return weight


def _check_lock(weight: float, targets: str | tuple[str, ...] | None) -> None:
    if weight > 0 and targets == "self_attention":
        raise ConfigError(
            "prompt lock: it keeps the cross-attention keys and values, which 'self_attention' does not adapt; "
            "set it to 0 or pick other layers"
        )


def build(
    form: Form,
    data: DataDir,
    concepts_root: Path | None,
    check_name: Callable[[str], None] = lambda name: None,
) -> tuple[Concept, AdapterConfig, TrainConfig]:
    """Check the form, store an upload, and return what the job trains. `check_name` raises when a name is
    taken; it runs before an upload is stored, so a clash never overwrites a trained concept's images."""
    method = str(form.method or "")
    preset(method)  # names the known methods when it is wrong
    rank = _whole(form.rank, "rank", 1, 1024)
    steps = _whole(form.steps, "steps", 1, MAX_STEPS)
    resolution = _whole(form.resolution, "resolution", 8, 2048)
    sample_every = _whole(form.sample_every or 0, "sample every", 0, MAX_STEPS)
    blocks = _whole(form.blocks, "blocks", 1, 64) if method == "bora_block" else None
    learning_rate = _number(form.learning_rate)
    if not 0 < learning_rate < 1:
        raise ConfigError(
            f"learning rate: give a number between 0 and 1 (e.g. 1e-3), got {form.learning_rate!r}"
        )
    if resolution % 8:
        raise ConfigError(f"resolution: give a multiple of 8, got {resolution}")
    if form.targets is not None and form.targets not in TARGET_PRESETS:
        raise ConfigError(f"layers: choose one of {', '.join(TARGET_PRESETS)}, got {form.targets!r}")
    lock_weight = None if form.lock_weight is None else _weight(form.lock_weight, "prompt lock", 2)
    word_lock_weight = (
        None if form.word_lock_weight is None else _weight(form.word_lock_weight, "word lock", 10)
    )
    # A token of more vectors than the text encoder's 77 positions minus start and end could never be read.
    vectors = (
        None if form.embedding_vectors is None else _whole(form.embedding_vectors, "token vectors", 1, 75)
    )
    train_embedding = None if form.train_embedding is None else bool(form.train_embedding)
    _check_lock(lock_weight or 0, form.targets)  # before an upload is stored

    if form.source == "upload":
        if not str(form.name or "").strip():
            raise ConfigError(
                "name: give the new concept a name (letters, digits, '-' and '_'), e.g. 'my-mug'"
            )
        for field, value in (("token", form.token), ("class word", form.class_word)):
            if not str(value or "").strip():
                raise ConfigError(f"{field}: required for an upload (e.g. token 'zqmug', class word 'mug')")
        check_name(safe_name(form.name, "name"))
        concept = data.store_upload(
            list(form.files or ()),
            form.name,
            form.token,
            form.class_word,
            train=TrainDefaults(
                method=method,
                rank=rank,
                steps=steps,
                targets=form.targets,
                lock_weight=lock_weight or None,
                train_embedding=train_embedding,
                word_lock_weight=word_lock_weight or None,
                embedding_vectors=vectors,
            ),
            min_size=resolution,
        )
    elif form.source == "folder":
        concept = load_concept(_known_folder(concepts_root, form.folder), min_size=resolution)
        if str(form.name or "").strip():
            concept = dataclasses.replace(concept, name=safe_name(form.name, "name"))
        check_name(concept.name)
    else:
        raise ConfigError(f"source: choose 'upload' or 'folder', got {form.source!r}")

    targets = form.targets or concept.train.targets or AdapterConfig.targets  # an upload's own is unset
    adapter = AdapterConfig(method=method, rank=rank, blocks=blocks, targets=targets)
    base = TrainConfig(
        steps=steps, learning_rate=learning_rate, resolution=resolution, sample_every=sample_every
    )
    config = concept.train_config(
        base,
        steps=steps,
        learning_rate=learning_rate,
        resolution=resolution,
        train_embedding=train_embedding,
        lock_weight=lock_weight,
        word_lock_weight=word_lock_weight,
        embedding_vectors=vectors,
    )
    _check_lock(config.lock_weight, targets)  # a folder's own lock or layers
    return concept, adapter, config
