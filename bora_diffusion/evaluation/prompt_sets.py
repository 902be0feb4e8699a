"""Prompt sets for evaluation runs, as templates with "{token}" and "{class_word}" placeholders.

- ``dreambench-object`` / ``dreambench-live``: the 25 prompts DreamBooth (Ruiz et al., CVPR 2023, arXiv
  2208.12242) used per subject, for objects and for live subjects (dogs, cats). Each concept is generated with
  them and scored by CLIP-T (prompt fidelity) and CLIP-I (subject fidelity); the DreamBench protocol draws 4
  images per prompt.
- ``quick-object`` / ``quick-live``: 4 prompts from the matching DreamBench set, for smoke runs and validation
  during training; subsets, so a quick score is a score on part of the full protocol.
- ``world``: 6 prompts for concepts of the embedded world (backgrounds and companion objects, in the world's
  caption grammar), the set the world CLIP can read; `scripts/bench_quality.py` scores with it.

The sets are plain text files in `prompts/` (one template per line, "#" starts a comment), so a set can be read
and diffed without Python.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from importlib import resources

from ..concept import fill
from ..errors import ConfigError

__all__ = ["fill_prompts", "fill_with_words", "load_prompt_set", "prompt_sets"]

_SETS = ("dreambench-object", "dreambench-live", "quick-object", "quick-live", "world")


def prompt_sets() -> tuple[str, ...]:
    """The names `load_prompt_set` accepts."""
    return _SETS


def load_prompt_set(name: str) -> tuple[str, ...]:
    """The templates of the named set, in their published order."""
    if name not in _SETS:
        close = difflib.get_close_matches(name, _SETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown prompt set {name!r}; {hint}known: {', '.join(_SETS)}")
    text = (resources.files(__package__) / "prompts" / f"{name.replace('-', '_')}.txt").read_text(
        encoding="utf-8"
    )
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def fill_prompts(templates: tuple[str, ...] | list[str], token: str, class_word: str) -> list[str]:
    """The templates with the concept's token and class word filled in, e.g. "a qwiv kettle on the beach"."""
    return [fill(template, token, class_word) for template in templates]


def fill_with_words(
    templates: tuple[str, ...] | list[str], words: Sequence[str], class_word: str
) -> list[str]:
    """Every template with every one of `words` in the token's place (template-major): the prompts whose images
    measure a concept's drift (evaluation.runs), e.g. "a qorb kettle on the beach", "a vlok kettle on the beach"."""
    return [fill(template, word, class_word) for template in templates for word in words]
