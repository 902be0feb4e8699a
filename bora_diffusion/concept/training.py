"""A concept's own training settings, concept.toml's [train] table: which keys it has, their checks, and how its
values lie over the trainer's.

Nothing here lists a setting: the keys come from the settings schema (bora_diffusion.settings). They are, in
the order files are written, the adapter settings a recipe sets (`method`, `rank`, `alpha`) and every method's
own options (`config.adapter_settings()`, e.g. `blocks` of bora_block), then `targets` (a preset name or regular
expressions, which no Setting describes: bora_diffusion.inject checks them), then every `TrainConfig` setting
(`settings_of(TrainConfig)`). A concept.toml may set any of them; the files written before the schema hold a
subset of them and load as they did. A key left out, like a value of None given here, means "the trainer's
default": so a concept cannot ask for an optional setting's None (no clipping, say), only the CLI can.

A method's option belongs to that method: it is checked under a method that declares it (the concept's own
method when it names one, else the first that does), and `adapter_config` drops it when another method is chosen
over the concept's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .. import adapters
from ..config import AdapterConfig, TrainConfig, adapter_settings, all_option_names
from ..errors import ConfigError, TargetError
from ..inject import target_patterns
from ..settings import Setting, settings_of
from .problems import type_name, unknown_keys

TARGETS = "targets"  # the one [train] key without a Setting (see the module docstring)
_WANTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def train_settings() -> dict[str, Setting | None]:
    """Every [train] key in the order files are written, with its Setting (None for `targets`). Read from the
    registry at each call, so a method registered later brings its options."""
    adapter = {described.name: described for described in adapter_settings()}
    training = {described.name: described for described in settings_of(TrainConfig)}
    clash = sorted(set(adapter) & set(training))
    if clash:  # one flat table holds both, so a key must say which it is
        raise TypeError(f"method option(s) {', '.join(clash)} share a name with a training setting")
    return {**adapter, TARGETS: None, **training}


def _type_problem(key: str, described: Setting | None, value: Any) -> str | None:
    if described is None:
        ok = isinstance(value, str) or (
            isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
        )
        wanted = "a preset name or an array of regular expressions"
    else:
        kinds = (int, float) if described.kind is float else described.kind
        ok = isinstance(value, kinds) and (described.kind is bool or not isinstance(value, bool))
        wanted = _WANTED[described.kind]
    return None if ok else f"{key} must be {wanted}, got {type_name(value)} {value!r}"


def _checked(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the values of a [train] table that are set, as TrainDefaults holds them; every problem of the table).

    The value rules are AdapterConfig's and TrainConfig's own, applied one key at a time so that a bad rank does
    not hide a bad learning rate."""
    described = train_settings()
    options = all_option_names()
    problems = unknown_keys(data, list(described), "")
    given = {}
    for key, setting in described.items():
        if data.get(key) is not None:
            problem = _type_problem(key, setting, data[key])
            if problem:
                problems.append(problem)
            else:
                given[key] = data[key]
    method = given.get("method")
    if method is not None:
        try:
            adapters.get(method)
        except ConfigError as error:
            problems.append(str(error))
            method = None  # judge the other keys under a valid method
    values = {"method": method} if method is not None else {}
    for key, value in given.items():
        if key in ("method", TARGETS):
            continue
        try:
            if key in options:
                # Under the concept's own method, so an option of another method is refused as AdapterConfig
                # refuses it; with none named, under the first method that declares it.
                probe = method or adapters.option_owners(key)[0]
                values[key] = AdapterConfig(probe, **{key: value}).options[key]
            else:
                values[key] = described[key].check(value)  # an int made a float for a float setting
        except ConfigError as error:
            problems.append(str(error))
    if TARGETS in given:
        try:
            target_patterns(given[TARGETS])
            values[TARGETS] = tuple(given[TARGETS]) if isinstance(given[TARGETS], list) else given[TARGETS]
        except TargetError as error:
            problems.append(str(error))
    return values, problems


def train_problems(data: Mapping[str, Any]) -> list[str]:
    """Every problem of a [train] table (empty: TrainDefaults(**data) takes it)."""
    return _checked(data)[1]


class TrainDefaults:
    """A concept's own training settings; a key not given (or given as None) means "the trainer's default".

    `TrainDefaults(rank=2, steps=300, lr_schedule="cosine")` takes any [train] key (the module
    docstring lists them) and checks it by the same rules as `AdapterConfig` and `TrainConfig`; a bad one is a
    ConfigError naming every problem. Read a value as an attribute (`train.rank`, None when not set), the
    method options that are set as `train.options`, everything set as `to_dict()`. Immutable and hashable.
    """

    __slots__ = ("_values",)
    _values: dict[str, Any]

    def __init__(self, **values: Any) -> None:
        checked, problems = _checked(values)
        if problems:
            raise ConfigError("; ".join(problems))
        order = list(train_settings())  # file order, whatever the order of the keywords
        object.__setattr__(self, "_values", {key: checked[key] for key in order if key in checked})

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values == self._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        values = getattr(self, "_values", {})  # {} while a refused __init__ is shown in a traceback
        return f"TrainDefaults({', '.join(f'{key}={value!r}' for key, value in values.items())})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._values,))  # pickle and copy go through the checks again

    @property
    def options(self) -> dict[str, Any]:
        """The method options this concept sets, e.g. {"blocks": 4}."""
        names = all_option_names()
        return {key: value for key, value in self._values.items() if key in names}

    def to_dict(self) -> dict[str, Any]:
        """The keys that are set, in file order, TOML- and JSON-ready."""
        data = dict(self._values)
        if isinstance(data.get(TARGETS), tuple):
            data[TARGETS] = list(data[TARGETS])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainDefaults:
        return cls(**data)

    def adapter_config(self, default_method: str = "lora", **overrides: Any) -> AdapterConfig:
        """The adapter settings: `overrides` that are not None (e.g. CLI flags) beat the concept's values, which
        beat AdapterConfig's defaults; `default_method` applies when neither names a method."""
        keys = [described.name for described in adapter_settings()] + [TARGETS]
        values = {key: self._values[key] for key in keys if key in self._values}
        values.update({key: value for key, value in overrides.items() if value is not None})
        values.setdefault("method", default_method)
        for name in self.options.keys() - adapters.option_names(values["method"]):
            if overrides.get(name) is None:
                # The concept's option belongs to its own method choice, not to a method chosen over it.
                values.pop(name)
        return AdapterConfig(**values)

    def train_config(self, base: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
        """`base` (default: TrainConfig()) with the concept's values, then the non-None `overrides`, on top."""
        keys = [described.name for described in settings_of(TrainConfig)]
        values = {key: self._values[key] for key in keys if key in self._values}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return dataclasses.replace(base if base is not None else TrainConfig(), **values)


def _rebuild(values: Mapping[str, Any]) -> TrainDefaults:
    return TrainDefaults(**values)


def _reader(name: str) -> property:
    return property(lambda self: self._values.get(name), doc=f"the concept's {name}, None when not set")


# `train.rank`, `train.blocks`, ...: one attribute a key, made from the schema (a method registered after this
# import is read through `options`).
for _name in train_settings():
    setattr(TrainDefaults, _name, _reader(_name))
del _name
