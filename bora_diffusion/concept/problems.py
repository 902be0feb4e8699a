"""How the concept checks word what they find: type names, unknown keys with a close match, one line for many.

Every check of a concept folder collects problems as short strings instead of raising at the first, so one
`ConceptError` can list them all; these are the phrasings they share.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any


def type_name(value: Any) -> str:
    """The TOML type of `value` in words, for "must be ..., got a string 'fast'"."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}
    return names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)


def unknown_keys(data: Mapping[str, Any], known: Sequence[str], where: str) -> list[str]:
    """A problem for every key of `data` not in `known`, with the closest known key as the likely typo."""
    problems = []
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            problems.append(f"unknown key {where}{key!r} ({hint})")
    return problems


def message(label: str, problems: Sequence[str]) -> str:
    """`label: N problems: a; b; c`, the one line a ConceptError shows."""
    count = len(problems)
    return f"{label}: {count} problem{'' if count == 1 else 's'}: {'; '.join(problems)}"
