"""Command-line flags derived from the settings schema (bora_diffusion.settings), so no flag restates a setting.

Each `Setting` becomes one flag: its name (`Setting.cli_flag`), its type, its choices and its help with the
default in words. A value the setting refuses is a one-line error naming the flag, raised while the command line
is parsed, before anything loads. The method list and the methods' own options (say `blocks`) come from the
registry when the parser is built, so a newly registered method's option is a flag without a line here; no
method is named in this package.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import adapters
from ..config import AdapterConfig, TrainConfig, adapter_settings, option_settings
from ..errors import ConfigError
from ..settings import Setting, settings_of

# The train command's dests are TrainConfig's field names, so its flags pass to `train_config(**...)` as they are.
TRAIN_FLAGS = tuple(setting.name for setting in settings_of(TrainConfig))
MAX_METAVAR = 24  # characters of a {a,b,c} metavar; longer choice lists go into the help


@dataclass(frozen=True)
class SettingFlag:
    """One setting as one command's flag: `flag` is what the user types, `dest` the Namespace attribute."""

    setting: Setting
    flag: str
    dest: str


def setting_flags(
    settings: Iterable[Setting], *, flags: Mapping[str, str] = {}, dests: Mapping[str, str] = {}
) -> tuple[SettingFlag, ...]:
    """A flag per setting: `Setting.cli_flag` and the setting's name as dest, unless `flags` / `dests` (by
    setting name) say otherwise for this command."""
    return tuple(SettingFlag(s, flags.get(s.name, s.cli_flag), dests.get(s.name, s.name)) for s in settings)


def adapter_flag_names() -> tuple[str, ...]:
    """The train command's adapter dests: the recipe's adapter settings, every method's options, and targets."""
    return (*(s.name for s in adapter_settings()), "targets")


def adapter_setting(name: str) -> Setting:
    """The shared adapter setting `name` (method, rank or alpha)."""
    return next(s for s in settings_of(AdapterConfig) if s.name == name)


def methods_text() -> str:
    """The registered methods, comma-separated, read when the parser is built (so a new one is listed)."""
    return ", ".join(adapters.available())


def and_joined(names: Sequence[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return " and ".join(filter(None, [", ".join(names[:-1]), *names[-1:]]))


def compare_train_flags() -> tuple[SettingFlag, ...]:
    """compare's training flags: every training setting but the seed (the scoring --seed trains too), steps as
    --train-steps (--steps counts denoising steps there), and the dests compare has always had."""
    return setting_flags(
        (s for s in settings_of(TrainConfig) if s.name != "seed"),
        flags={"steps": "--train-steps"},
        dests={"steps": "train_steps", "learning_rate": "lr", "embedding_learning_rate": "embedding_lr"},
    )


def in_words(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_text(setting: Setting, owned_by: Sequence[str] = ()) -> str:
    """The setting's help with its default in words, unless the help already says it; an option also says
    whose it is: "blocks b: ... (<method> only; default 4)"."""
    notes = [f"{' and '.join(owned_by)} only"] if owned_by else []
    if "default" not in setting.help.lower():
        notes.append(f"default {in_words(setting.default)}")
    text = setting.help
    if notes and text.endswith(")"):  # "(0 = off)" -> "(0 = off; default 0)", not two brackets in a row
        text = f"{text[:-1]}; {'; '.join(notes)})"
    elif notes:
        text = f"{text} ({'; '.join(notes)})"
    return text.replace("%", "%%")  # argparse formats help with %


def checked(setting: Setting, text: str, flag: str) -> Any:
    """The flag's text as the setting's value, or a ConfigError naming the flag: "--rank: rank must be a
    positive integer, got 0"."""
    value: Any = text
    if setting.kind in (int, float):
        # A text that is no number stays text: the setting's check then says what it must be, showing it.
        with contextlib.suppress(ValueError):
            value = setting.kind(text)
    try:
        return setting.check(value)
    except ConfigError as error:
        raise ConfigError(f"{flag}: {error}") from None


class CheckedValue(argparse.Action):
    """Stores a flag's value checked by its setting (raised as a BoraError, so it is one `error:` line)."""

    def __init__(self, option_strings: list[str], dest: str, setting: Setting, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.setting = setting

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, checked(self.setting, values, option_string or self.dest))


def add_setting_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flags: Iterable[SettingFlag],
    *,
    helps: Mapping[str, str] = {},
    negatable: Iterable[str] = (),
    defaults: bool = False,
) -> None:
    """Add `flags` to `parser`. Their argparse default is None ("not given"), so a concept's own values win over
    unset flags, unless `defaults` puts the settings' defaults there (commands without concept values). A bool
    is a store_true flag, or --x / --no-x when it defaults to on or is in `negatable` (by setting name). `helps`
    replaces a setting's help on this command."""
    negatable = set(negatable)
    for item in flags:
        s = item.setting
        default = s.default if defaults else None
        text = helps.get(s.name) or help_text(
            s, adapters.option_owners(s.name) if s in option_settings() else ()
        )
        if s.kind is bool:
            action = argparse.BooleanOptionalAction if s.default or s.name in negatable else "store_true"
            parser.add_argument(item.flag, dest=item.dest, action=action, default=default, help=text)
            continue
        # Choices are checked by the setting (one error line), not by argparse; the metavar shows a few, the
        # help a longer list, which would crowd the usage line.
        metavar = "{" + ",".join(s.choices) + "}" if s.choices else None
        if metavar and len(metavar) > MAX_METAVAR:
            metavar = item.dest.upper()
            text = f"{text}: one of {', '.join(s.choices)}" if s.name not in helps else text
        parser.add_argument(
            item.flag,
            dest=item.dest,
            action=CheckedValue,
            setting=s,
            default=default,
            metavar=metavar,
            help=text,
        )


def given(args: argparse.Namespace, flags: Iterable[SettingFlag]) -> dict[str, Any]:
    """{setting name: value} of the flags given on the command line (None: not given)."""
    values = {item.setting.name: getattr(args, item.dest) for item in flags}
    return {name: value for name, value in values.items() if value is not None}
