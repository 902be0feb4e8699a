"""concept.toml: reading it into the concept's settings with every problem found, and writing it back.

The writer is hand-written because tomllib only reads. What it writes is the settings' own `to_dict()`s: the
[prompts] templates and the [train] keys that are set, in the schema's order (bora_diffusion.concept.training),
so `load(write(x)) == x` for every kind of setting: booleans, integers, floats (written by repr, which
round-trips), strings and arrays of strings.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..errors import ConceptError
from .folder import CONCEPT_FILE
from .problems import message, type_name, unknown_keys
from .prompts import Prompts, prompt_problems
from .training import TrainDefaults, train_problems
from .words import class_word_problems, token_problems


@dataclass
class Settings:
    """What concept.toml says, as far as it could be read."""

    token: str | None = None
    class_word: str | None = None
    description: str = ""
    prompts: Prompts = field(default_factory=Prompts)
    train: TrainDefaults = field(default_factory=TrainDefaults)


def read_settings(path: Path, problems: list[str]) -> Settings | None:
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
    settings = Settings()
    problems += [
        where + p for p in unknown_keys(data, ("token", "class_word", "description", "prompts", "train"), "")
    ]
    for key in ("token", "class_word", "description"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{where}{key} must be a string, got {type_name(value)} {value!r}")
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
            problems.append(f"{where}{key} must be a table ([{key}]), got {type_name(value)} {value!r}")
    prompts = tables.get("prompts", {})
    defaults = Prompts()
    known_prompts = tuple(defaults.to_dict())
    found = unknown_keys(prompts, known_prompts, "")
    values = {key: prompts.get(key, getattr(defaults, key)) for key in known_prompts}
    found += prompt_problems(**values)
    if not found:
        settings.prompts = Prompts(**values)
    problems += [f"{where}[prompts] {p}" for p in found]

    found = train_problems(tables.get("train", {}))
    if found:
        problems += [f"{where}[train] {p}" for p in found]
    else:
        settings.train = TrainDefaults(**tables.get("train", {}))
    return settings


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
    problems = token_problems(token) + class_word_problems(class_word, token)
    if problems:
        raise ConceptError(message(CONCEPT_FILE, problems), problems)
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
