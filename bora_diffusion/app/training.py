"""The Train tab's form: its fields, the method presets, and a checked training job built from a named form.

The fields are the settings schema's (bora_diffusion.settings): the method and rank, every option some method
declares (`blocks` of `bora_block`, ...), and the training settings the tab shows, each with the type, range and
help written where the setting is declared. A request is a `Form`: the concept's source, plus the settings it
gives by their schema names; a setting left out (or None) takes the recipe's value, which is the concept
folder's own concept.toml over the method's preset. Every value is checked with its name in the message, so a
mistake reads as a sentence in the page or in the API client's error, never as a traceback. Concepts come from
an upload (stored by `DataDir`) or from a folder of the app's concepts directory picked by name: only names
that directory lists are accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import adapters
from ..concept import Concept, TrainDefaults, load_concept
from ..config import AdapterConfig, TrainConfig, adapter_settings, option_settings
from ..errors import ConfigError
from ..inject import TARGET_PRESETS
from ..settings import Setting, settings_of
from .storage import DataDir, safe_name

SOURCES = ("upload", "folder")
CONCEPT_FIELDS = ("source", "folder", "name", "token", "class_word")  # where the images come from
MAX_STEPS = 100_000
# A shared server caps what one request may ask of it; the schema allows more (the CLI runs on the user's own
# machine). A whole number no rule bounds (say a method's option) is capped at MAX_WHOLE.
APP_MAXIMA = {
    "rank": 1024,
    "steps": MAX_STEPS,
    "sample_every": MAX_STEPS,
    "resolution": 2048,
    "learning_rate": 1.0,
    "lock_weight": 1000,
    "word_lock_weight": 1000,
    # More vectors than the text encoder's 77 positions minus start and end could never be read.
    "embedding_vectors": 75,
}
MAX_WHOLE = 1024
# The training settings the tab shows (the rest keep the concept's or the trainer's value), in the page's order.
TRAIN_FIELDS = (
    "steps", "learning_rate", "sample_every", "resolution", "train_embedding", "lock_weight", "embedding_vectors",
    "word_lock_weight",
)  # fmt: skip
# Which projections the adapters sit on. Not a library Setting (the library also takes regular expressions);
# the form offers the presets only, and None keeps a folder's own.
TARGETS = Setting(
    "targets", str, AdapterConfig.targets, "which projections the adapters sit on",
    choices=tuple(TARGET_PRESETS), optional=True,
)  # fmt: skip
DEFAULT_METHOD = AdapterConfig.method


def _capped(setting: Setting) -> Setting:
    cap = APP_MAXIMA.get(setting.name, MAX_WHOLE if setting.kind is int else None)
    if cap is None or (setting.maximum is not None and setting.maximum <= cap):
        return setting
    return dataclasses.replace(setting, maximum=cap)


def form_settings() -> tuple[Setting, ...]:
    """The Train tab's settings, in the page's order: method, rank, every method's options, the training
    settings of TRAIN_FIELDS and the layers. Read from the registry on each call, so a method registered later
    (a plugin, a test's dummy) has its options here too."""
    shared = [s for s in adapter_settings() if s.name in ("method", "rank")]
    own = list(option_settings())
    train = {s.name: s for s in settings_of(TrainConfig)}
    fields = [*shared, *own, *(train[name] for name in TRAIN_FIELDS)]
    fields.insert(len(fields) - 3, TARGETS)  # beside the prompt lock, which depends on it
    return tuple(_capped(s) for s in fields)


def option_owner(name: str) -> str | None:
    """The method that declares option `name` (None for a shared setting): the form labels its field with it."""
    return next(iter(adapters.option_owners(name)), None)


def preset_fields() -> tuple[str, ...]:
    """What picking a method resets: rank, the options, steps and learning rate (`method_preset`'s outputs)."""
    own = tuple(s.name for s in form_settings() if option_owner(s.name))
    return ("rank", *own, "steps", "learning_rate")


def recipe_fields() -> tuple[str, ...]:
    """What a concept folder's recipe fills in (`folder_recipe`'s outputs): every field but sample_every, which
    concept.toml does not hold, so picking a folder keeps what the user set."""
    return tuple(s.name for s in form_settings() if s.name != "sample_every")


def preset(method: str) -> dict[str, Any]:
    """Every form field's starting value for `method`: the schema's defaults, with the method's suggested rank
    (a method whose update has more directions than its rank asks for a smaller one)."""
    if not isinstance(method, str):
        raise ConfigError(
            f"method must be a string, one of {', '.join(adapters.available())}, got {method!r}"
        )
    cls = adapters.get(method)  # names the known methods when it is wrong
    values = {s.name: s.default for s in form_settings()}
    return {**values, "method": method, "rank": cls.suggested_rank}


def _own(concept: Concept) -> dict[str, Any]:
    """The form fields a concept's concept.toml sets; targets only as a preset name the form can show."""
    own = {key: value for key, value in concept.train.to_dict().items() if value is not None}
    if not isinstance(own.get("targets", ""), str):
        own["targets"] = None
    return own


def folder_recipe(root: Path | None, folder: str) -> dict[str, Any]:
    """A concept folder's concept.toml [train] values over its method's preset, so that picking a folder shows
    (and, left as it is, trains) the concept's own recipe, as the command line does. `targets` is None for a
    folder's own regular expressions, which the form cannot show (left empty, `build` trains the folder's)."""
    own = _own(load_concept(_known_folder(root, folder)))
    start = preset(own.get("method", DEFAULT_METHOD))
    return {name: own.get(name, start[name]) for name in recipe_fields()}


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
    """A Train request: where the images come from, and the settings it gives by their schema names
    (`form_settings`); a setting it leaves out takes the recipe's value (see the module docstring)."""

    source: str = "upload"
    files: tuple[str, ...] = ()
    folder: str = ""
    name: str = ""
    token: str = ""
    class_word: str = ""
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, files: tuple[str, ...] = ()) -> Form:
        """A form from what an API client sends: one JSON object whose keys are CONCEPT_FIELDS and the
        settings' names. An unknown key is refused with the closest known one; the values are checked by
        `build`."""
        known = (*CONCEPT_FIELDS, *(s.name for s in form_settings()))
        if not isinstance(data, Mapping):
            raise ConfigError(f"form: give a JSON object with the fields {', '.join(known)}, got {data!r}")
        if "files" in data:
            raise ConfigError(
                "files: send the images as train_start's second argument (files), not in the form"
            )
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
                raise ConfigError(f"form: unknown field {key!r} ({hint})")
        for key in CONCEPT_FIELDS:
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ConfigError(f"{key} must be a string, got {data[key]!r}")
        concept = {key: data.get(key) or "" for key in CONCEPT_FIELDS}
        concept["source"] = concept["source"] or "upload"
        settings = {key: value for key, value in data.items() if key not in CONCEPT_FIELDS}
        return cls(**concept, files=tuple(files), settings=settings)


def form_description() -> str:
    """train_start's API description, from the schema: every key of the form and what it takes."""
    settings = "; ".join(f"{s.name}: {s.wanted()} (default {s.default!r}), {s.help}" for s in form_settings())
    return (
        "Queue a training job. form: one JSON object with source ('upload' or 'folder'), folder (a name "
        "concept_folders lists), name, token, class_word (an upload needs all three), and any of these "
        f"settings (left out: the folder's own, then the method's preset): {settings}. files: the images of "
        "an upload (gradio_client.handle_file(path) for each). Returns the job id and its status."
    )


def _given(form: Form) -> dict[str, Any]:
    """The settings the form gives (None: not given), each checked by its Setting; a whole float from the page
    (4.0) counts as the integer it is."""
    described = {s.name: s for s in form_settings()}
    unknown = sorted(set(form.settings) - set(described))
    if unknown:
        raise ConfigError(f"form: unknown field(s) {', '.join(unknown)}; known: {', '.join(described)}")
    given = {}
    for name, value in form.settings.items():
        if value is None or (name == "targets" and value == ""):
            continue
        setting = described[name]
        if setting.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        given[name] = setting.check(value)
    if given.get("resolution", 8) % 8:
        raise ConfigError(f"resolution must be a multiple of 8 (the VAE's factor), got {given['resolution']}")
    return given


def _check_lock(weight: float, targets: str | tuple[str, ...] | None) -> None:
    if weight > 0 and targets == "self_attention":
        raise ConfigError(
            "lock_weight: the prompt lock keeps the cross-attention keys and values, which 'self_attention' "
            "does not adapt; set it to 0 or pick other targets"
        )


def build(
    form: Form,
    data: DataDir,
    concepts_root: Path | None,
    check_name: Callable[[str], None] = lambda name: None,
) -> tuple[Concept, AdapterConfig, TrainConfig]:
    """Check the form, store an upload, and return what the job trains. `check_name` raises when a name is
    taken; it runs before an upload is stored, so a clash never overwrites a trained concept's images."""
    given = _given(form)
    if form.source == "folder":
        path = _known_folder(concepts_root, form.folder)
        own = _own(load_concept(path))
    elif form.source == "upload":
        own = {}
    else:
        raise ConfigError(f"source: choose one of {', '.join(SOURCES)}, got {form.source!r}")
    method = given.get("method", own.get("method", DEFAULT_METHOD))
    recipe = {**preset(method), **own, **given}  # the method's preset, the folder's own, the form's
    _check_lock(recipe["lock_weight"], recipe["targets"])  # before an upload is stored

    if form.source == "upload":
        if not str(form.name or "").strip():
            raise ConfigError(
                "name: give the new concept a name (letters, digits, '-' and '_'), e.g. 'my-mug'"
            )
        for field, value in (("token", form.token), ("class_word", form.class_word)):
            if not str(value or "").strip():
                raise ConfigError(f"{field}: required for an upload (e.g. token 'zqmug', class_word 'mug')")
        check_name(safe_name(form.name, "name"))
        # The upload's concept.toml keeps the recipe it trains with, so the CLI trains the folder alike.
        declared = adapters.option_names(method)
        kept = {
            k: v for k, v in recipe.items() if k != "sample_every" and (k in declared or not option_owner(k))
        }
        concept = data.store_upload(
            list(form.files or ()),
            form.name,
            form.token,
            form.class_word,
            train=TrainDefaults.from_dict(kept),
            min_size=recipe["resolution"],
        )
    else:
        concept = load_concept(path, min_size=recipe["resolution"])
        if str(form.name or "").strip():
            concept = dataclasses.replace(concept, name=safe_name(form.name, "name"))
        check_name(concept.name)

    targets = given.get("targets") or concept.train.targets or AdapterConfig.targets
    options = {o.name: recipe.get(o.name) for o in adapters.get(method).options}
    adapter = AdapterConfig(method, rank=recipe["rank"], targets=targets, **options)
    train = {name: given.get(name) for name in TRAIN_FIELDS}  # None: the concept's own, then TrainConfig's
    config = concept.train_config(TrainConfig(sample_every=recipe["sample_every"]), **train)
    _check_lock(config.lock_weight, targets)  # a folder's own lock or layers
    return concept, adapter, config
