"""What an evaluation run draws: the concepts to evaluate (`EvalConcept`) and how their images are drawn
(`RunSettings`: prompt set, seeds, sampler, which settings run, the other words that measure drift).

Both are frozen and validated at construction, so a mistake fails before any image is drawn; `RunSettings`
round-trips through the JSON of a report (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..generate import SamplingSettings
from .prompt_sets import load_prompt_set

__all__ = ["OTHER_WORDS", "EvalConcept", "RunSettings"]

# Made-up words whose images say how much of a concept other words pick up (every prompt with every word): each
# splits into pieces no world caption holds, as the concepts' own tokens do, and none is a shipped token.
OTHER_WORDS = ("qorb", "vlok", "kesh", "trev", "wunk", "plim", "brol", "dazm")


@dataclass(frozen=True)
class EvalConcept:
    """One concept to evaluate: its trained adapter file and the folder of its reference images.

    The token and class word come from the file's metadata (training records them). `prompt_set` overrides the
    run's set for this concept (e.g. "quick-live" for a dog next to an object); `scale` is its weight when
    composed and alone.
    """

    file: Path
    references: Path
    prompt_set: str | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", Path(self.file))
        object.__setattr__(self, "references", Path(self.references))
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, int | float)
            or not math.isfinite(self.scale)
        ):
            raise ConfigError(f"{self.file}: scale must be a finite number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))


@dataclass(frozen=True)
class RunSettings:
    """How images are drawn: the prompt set, N images per prompt with seeds `seed .. seed + N - 1`, the sampler
    settings, whether the base before tuning is scored too (`before`), and whether the composed setting runs
    (with 2+ concepts) fused into the weights or live. `force` composes concepts whose slots overlap (trained on
    separate ledgers) instead of refusing them. `other_words` are drawn in the token's place, every prompt with
    every word at the first seed, to measure drift (the base_other and alone_other settings); empty skips
    both."""

    prompt_set: str = "quick-object"
    images_per_prompt: int = 4
    seed: int = 0
    sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    before: bool = True
    composed: bool = True
    fuse: bool = True
    force: bool = False
    other_words: tuple[str, ...] = OTHER_WORDS

    def __post_init__(self) -> None:
        if isinstance(self.other_words, str):  # tuple("qorb") would be four one-letter words
            raise ConfigError(f"other_words must be a sequence of words, e.g. ({self.other_words!r},)")
        object.__setattr__(self, "other_words", tuple(self.other_words))
        for word in self.other_words:
            if not (isinstance(word, str) and word.isascii() and word.isalpha()):
                raise ConfigError(f"other words must be single words of ASCII letters, got {word!r}")
        load_prompt_set(self.prompt_set)  # an unknown name fails here, with the known ones listed
        if isinstance(self.images_per_prompt, bool) or not isinstance(self.images_per_prompt, int):
            raise ConfigError(f"images_per_prompt must be an integer, got {self.images_per_prompt!r}")
        if self.images_per_prompt < 1:
            raise ConfigError(f"images_per_prompt must be >= 1, got {self.images_per_prompt}")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.images_per_prompt))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["seeds"] = self.seeds
        data["other_words"] = list(self.other_words)  # as JSON reads it back
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSettings:
        values = {key: value for key, value in data.items() if key != "seeds"}
        values["sampling"] = SamplingSettings(**values.get("sampling", {}))
        values.setdefault("other_words", ())  # reports from before the other words had none
        return cls(**values)
