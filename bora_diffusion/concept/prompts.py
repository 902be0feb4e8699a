"""A concept's prompt templates: "{token}" and "{class_word}" filled in, and every problem a template can have."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .problems import type_name

PLACEHOLDERS = ("token", "class_word")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def fill(template: str, token: str, class_word: str) -> str:
    """`template` with "{token}" and "{class_word}" replaced (no other braces are touched)."""
    return template.replace("{token}", token).replace("{class_word}", class_word)


def placeholder_problem(what: str, text: str) -> str | None:
    """A problem if `text` holds braces other than {token} and {class_word} (a typo such as {tokn})."""
    rest = fill(text, "", "")
    if "{" not in rest and "}" not in rest:
        return None
    found = _PLACEHOLDER.search(rest)
    shown = found.group(0) if found else "a stray brace"
    return f"{what} has {shown}: only {{token}} and {{class_word}} are filled in"


def prompt_problems(instance_prompt: Any, class_prompt: Any, sample_prompts: Any) -> list[str]:
    """Every problem of a set of prompt templates (of any type, as read from TOML)."""
    problems = []
    if not isinstance(sample_prompts, list | tuple):
        problems.append(f"sample_prompts must be an array of strings, got {type_name(sample_prompts)}")
        sample_prompts = ()
    texts = [("instance_prompt", instance_prompt), ("class_prompt", class_prompt)]
    texts += [(f"sample_prompts[{i}]", text) for i, text in enumerate(sample_prompts)]
    for what, text in texts:
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{what} must be a non-empty string, got {text!r}")
            continue
        problem = placeholder_problem(what, text)
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
        problems = prompt_problems(self.instance_prompt, self.class_prompt, self.sample_prompts)
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_prompt": self.instance_prompt,
            "class_prompt": self.class_prompt,
            "sample_prompts": list(self.sample_prompts),
        }
