"""One schema for every setting: its type, default, allowed range and help, written once where it is declared.

A `Setting` describes one value a user can set: a field of `TrainConfig` or `AdapterConfig`
(bora_diffusion.config, declared there with `setting(...)`), or an option a method declares on its adapter class
(`AdapterLayer.options`, e.g. `blocks` of `bora_block`). Everything that reads or shows settings derives from these
descriptions instead of restating them: the configs' validation, the CLI flags, concept.toml's `[train]` table
and the app's form. So a new setting, or a method with a new option, is written in one place.

This module is a leaf: it imports nothing of the package but its errors, so every floor above can use it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

KINDS = (bool, int, float, str)


@dataclass(frozen=True)
class Setting:
    """One user-settable value.

    `kind` is bool, int, float or str (a float setting also takes an int: TOML's `alpha = 4` means 4.0).
    `minimum` is an inclusive lower bound, `positive` an exclusive one at 0, `maximum` an inclusive upper bound;
    `choices` lists the strings a str setting allows. `optional` lets the value be None, whose meaning the help
    says ("off", "the same as --lr", ...). `flag` is the CLI's name when it is not `--<name with dashes>`.
    """

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    flag: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TypeError(f"setting {self.name}: kind must be one of bool, int, float, str")

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def wanted(self) -> str:
        """What a valid value is, in words: "a positive integer", "a number in [0, 1]", "one of a, b"."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "a string"
        noun = "integer" if self.kind is int else "number"
        if self.positive and self.maximum is None:
            return "a positive integer" if self.kind is int else "positive"
        if self.minimum == 0 and self.maximum is None:
            return "a non-negative integer" if self.kind is int else ">= 0"
        low = "0 <" if self.positive else (f"{self.minimum:g} <=" if self.minimum is not None else "")
        high = f"<= {self.maximum:g}" if self.maximum is not None else ""
        bounds = f" {low} {self.name} {high}".rstrip() if low or high else ""
        return f"an {noun}{bounds}" if noun == "integer" else f"a {noun}{bounds}"

    def check(self, value: Any) -> Any:
        """`value` if it is allowed (an int made a float for a float setting), else a ConfigError that names the
        setting, says what it must be and shows what it got."""
        if value is None:
            if self.optional:
                return None
            raise self._error(value)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise self._error(value)
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise self._error(value)
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(value, not_a_number=True)
        if (
            (self.kind is int and not isinstance(value, int))
            or not math.isfinite(value)
            or (self.positive and not value > 0)
            or (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
        ):
            raise self._error(value)
        return float(value) if self.kind is float else value

    def _error(self, value: Any, not_a_number: bool = False) -> ConfigError:
        wanted = self.wanted()
        if not_a_number and self.kind is float and not wanted.startswith("a "):
            wanted = (
                "a positive number" if wanted == "positive" else f"a number {wanted}"
            )  # not "positive, got 'x'"
        omit = " (or omitted)" if self.optional else ""
        return ConfigError(f"{self.name} must be {wanted}{omit}, got {value!r}")


def setting(default: Any, help: str, kind: type | None = None, **rules: Any) -> Any:
    """A dataclass field described by a `Setting`: `x: int = setting(4, "what x is", minimum=1)`.

    The setting's name is the field's, filled in by `settings_of`; `kind` defaults to the default's type
    (give it when the default is None).
    """
    kind = kind or type(default)
    return dataclasses.field(default=default, metadata={"setting": (kind, help, rules)})


@functools.cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings of a config dataclass, in field order (fields without `setting(...)` are not settings)."""
    found = []
    for field in dataclasses.fields(cls):
        if "setting" in field.metadata:
            kind, help, rules = field.metadata["setting"]
            found.append(Setting(field.name, kind, field.default, help, **rules))
    return tuple(found)


def check_settings(instance: Any) -> Iterator[tuple[str, Any]]:
    """(name, checked value) for every setting of a config dataclass instance; the first bad one raises."""
    for described in settings_of(type(instance)):
        yield described.name, described.check(getattr(instance, described.name))
