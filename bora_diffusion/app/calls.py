"""Malformed API calls answered in words: every call's inputs are checked against their components before gradio
preprocesses them.

Gradio answers a call with too few arguments, or a string for a `gr.Number`, with an exception it does not show
(the client reads `{"error": null}` or "The upstream Gradio app has raised an exception"), takes a number for a
`gr.Textbox` as its digits, and drops arguments beyond the last. `Blocks` refuses each instead, naming the
endpoint's parameter (the handler's argument name, as the API page lists it) and what it takes. The page itself
always sends well-typed values, and None (an empty field) passes: the handlers say what the field needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_function_params


def parameter_names(block_fn: Any) -> list[str]:
    """The API names of an event's inputs: its handler's argument names, else the components' labels."""
    names = [name for name, *_ in get_function_params(block_fn.fn)] if block_fn.fn else []
    return [
        names[i] if i < len(names) else str(getattr(block, "label", None) or f"input {i}")
        for i, block in enumerate(block_fn.inputs)
    ]


def _choices(block: Any) -> list[Any] | None:
    """The values a Dropdown or Radio allows, None when it takes any (allow_custom_value)."""
    if getattr(block, "allow_custom_value", False):
        return None
    return [value for _, value in block.choices]


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _is_file(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("path"), str)


def problem(block: Any, value: Any) -> str | None:
    """What is wrong with `value` sent to `block`, in words; None when gradio may take it."""
    if value is None:
        return None
    if isinstance(block, gr.Number):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "give a number"
    if isinstance(block, gr.Checkbox):
        return None if isinstance(value, bool) else "give true or false"
    if isinstance(block, gr.Textbox):
        return None if isinstance(value, str) else "give text"
    if isinstance(block, gr.Dropdown | gr.Radio):
        allowed = _choices(block)
        many = getattr(block, "multiselect", False)
        items = value if many and isinstance(value, list) else [value]
        if many and not isinstance(value, list):
            return "give a list"
        for item in items:
            if not isinstance(item, str):
                return "give text" if not many else "give a list of names"
            if allowed is not None and item not in allowed:
                return f"choose one of {', '.join(map(str, allowed))}"
        return None
    if isinstance(block, gr.File):
        files = value if isinstance(value, list) else [value]
        ok = all(_is_file(item) for item in files) and (block.file_count != "single" or len(files) == 1)
        if not ok:
            return f"give uploaded files (gradio_client.handle_file(path) for each), got {_shown(value)}"
        suffixes = [t.lower() for t in block.file_types or () if t.startswith(".")]
        for item in files:
            shown = item.get("orig_name") or Path(item["path"]).name
            if suffixes and Path(shown).suffix.lower() not in suffixes:
                return f"{shown} is not one of {', '.join(suffixes)}"
    return None


def check_call(block_fn: Any, inputs: Sequence[Any], state: Any = None) -> None:
    """Raise a gr.Error naming the first missing or ill-typed input of a call to `block_fn`."""
    names = parameter_names(block_fn)
    endpoint = block_fn.api_name or block_fn.name
    if len(inputs) < len(block_fn.inputs):
        missing = ", ".join(names[len(inputs) :])
        raise gr.Error(
            f"{endpoint}: missing {missing}; it takes {len(names)} argument(s): {', '.join(names)}",
            print_exception=False,
        )
    if len(inputs) > len(block_fn.inputs):
        # gradio drops the extra ones; a caller who sent them meant something the endpoint would not do.
        raise gr.Error(
            f"{endpoint}: got {len(inputs)} argument(s), but it takes {len(names)}: {', '.join(names) or 'none'}",
            print_exception=False,
        )
    for name, block, value in zip(names, block_fn.inputs, inputs, strict=True):
        if state is not None and block._id in state:
            block = state[block._id]  # its choices as this session's page has them
        wrong = problem(block, value)
        if wrong:
            # A file's payload holds the server's cache path: its problem names the file the user knows.
            got = "" if isinstance(block, gr.File) else f", got {_shown(value)}"
            raise gr.Error(f"{name}: {wrong}{got}", print_exception=False)


class Blocks(gr.Blocks):
    """gr.Blocks whose calls are checked by `check_call` first (see the module docstring)."""

    async def preprocess_data(self, block_fn, inputs, state, *args, **kwargs):
        check_call(block_fn, inputs, state)
        return await super().preprocess_data(block_fn, inputs, state, *args, **kwargs)
