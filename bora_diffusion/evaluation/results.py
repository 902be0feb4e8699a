"""What an evaluation run reports: one concept's scores in one setting (`SettingScores`), one concept across the
settings with its gain, drift and retention (`ConceptResult`), and the whole run (`EvaluationReport`, the
`evaluation.json` of a run folder), each read back from its JSON exactly.

The settings, in the order a report and its overview list them: "base" (no adapter: before tuning), "alone"
(the concept's file is the only adapter on the base), "composed" (every concept of the run is on it), and
"base_other" / "alone_other" (base and alone with other words in the token's place). How the run produces
them is `runs.py`; the rules each derived number follows are written into every report (`*_rule`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..errors import ConfigError
from .conventions import Conventions
from .report import check_version
from .run_settings import RunSettings

__all__ = [
    "RETENTION_MIN_SEMS",
    "SETTINGS",
    "ConceptResult",
    "EvaluationReport",
    "SettingScores",
    "format_ratio",
    "standard_error",
]

REPORT_VERSION = 1
# "base": no adapter (before tuning); "alone": the concept's file is the only adapter on the base; "composed":
# every concept of the run is on it; "base_other" and "alone_other": base and alone with other words in the
# token's place.
SETTINGS = ("base", "alone", "composed", "base_other", "alone_other")
# Retention is reported only when the alone mean is at least this many standard errors above zero (z >= 2: a
# mean that large arises by chance about 2% of the time when the true mean is zero).
RETENTION_MIN_SEMS = 2.0


@dataclass(frozen=True)
class SettingScores:
    """One concept's means in one setting, their standard errors, and where its images and per-image reports are
    (relative paths).

    `clip_t_sem` / `clip_i_sem` are the standard errors of the means over the generated images (sample standard
    deviation of the per-image scores / sqrt(images)); None with a single image. Images are the random draws of
    an evaluation, so this is the spread another set of seeds would show; it says when two methods tie.
    `identity` is the share of the images that match this concept's references best among every concept's of
    the run (`identity.identity_shares`); None in a run of one concept. `context` is the share of the prompts'
    background and companion attributes CLIP reads right in the images (`context.context_accuracy`); None when
    the prompts are not in the world's grammar.
    """

    clip_t: float
    clip_i: float
    images: int
    folder: str
    clip_t_sem: float | None = None
    clip_i_sem: float | None = None
    identity: float | None = None
    context: float | None = None


@dataclass(frozen=True)
class ConceptResult:
    """One concept: who it is, what it was prompted with, and its scores before tuning, alone and composed (the
    first and last optional), and with other words in its token's place (optional)."""

    name: str
    token: str
    class_word: str
    method: str
    file: str
    references: str
    reference_count: int
    prompt_set: str
    prompts: tuple[str, ...]
    alone: SettingScores
    composed: SettingScores | None = None
    base: SettingScores | None = None
    base_other: SettingScores | None = None
    alone_other: SettingScores | None = None

    def gain(self, metric: str) -> float | None:
        """alone - base for "clip_t" or "clip_i": what tuning changed; None without a base setting."""
        if metric not in ("clip_t", "clip_i"):
            raise ConfigError(f"metric must be 'clip_t' or 'clip_i', got {metric!r}")
        return None if self.base is None else getattr(self.alone, metric) - getattr(self.base, metric)

    def drift(self, metric: str) -> float | None:
        """alone_other - base_other for "clip_t" or "clip_i": what tuning changed in the images of other words in
        the token's place (language drift: near 0 when the concept is bound to its token); None without both."""
        if metric not in ("clip_t", "clip_i"):
            raise ConfigError(f"metric must be 'clip_t' or 'clip_i', got {metric!r}")
        if self.base_other is None or self.alone_other is None:
            return None
        return getattr(self.alone_other, metric) - getattr(self.base_other, metric)

    def drift_sem(self, metric: str) -> float | None:
        """The standard error of `drift(metric)` as if its two means were independent (the square root of the sum
        of their squared standard errors): an upper bound, since both settings draw the same prompts, words and
        seed; None where a standard error is missing."""
        if self.drift(metric) is None:
            return None
        sems = (getattr(self.alone_other, f"{metric}_sem"), getattr(self.base_other, f"{metric}_sem"))
        return None if None in sems else math.hypot(*sems)

    def retention(self, metric: str) -> float | None:
        """composed / alone for "clip_t" or "clip_i"; None without a composed setting or when the alone mean is
        not clearly above zero (`RETENTION_MIN_SEMS` standard errors; > 0 when a single image leaves no standard
        error), since the ratio would not mean "share kept"."""
        if metric not in ("clip_t", "clip_i"):
            raise ConfigError(f"metric must be 'clip_t' or 'clip_i', got {metric!r}")
        if self.composed is None:
            return None
        alone = getattr(self.alone, metric)
        sem = getattr(self.alone, f"{metric}_sem") or 0.0  # no standard error: only the sign rule remains
        if alone <= RETENTION_MIN_SEMS * sem:
            return None
        return getattr(self.composed, metric) / alone

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["prompts"] = list(self.prompts)
        data["retention"] = {"clip_t": self.retention("clip_t"), "clip_i": self.retention("clip_i")}
        data["gain"] = {"clip_t": self.gain("clip_t"), "clip_i": self.gain("clip_i")}
        data["drift"] = {"clip_t": self.drift("clip_t"), "clip_i": self.drift("clip_i")}
        data["drift_sem"] = {"clip_t": self.drift_sem("clip_t"), "clip_i": self.drift_sem("clip_i")}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptResult:
        derived = ("retention", "gain", "drift", "drift_sem")
        values = {key: value for key, value in data.items() if key not in derived}
        values["prompts"] = tuple(values["prompts"])
        values["alone"] = SettingScores(**values["alone"])
        for setting in ("composed", "base", "base_other", "alone_other"):
            values[setting] = SettingScores(**values[setting]) if values.get(setting) else None
        return cls(**values)


@dataclass(frozen=True)
class EvaluationReport:
    """The outcome of `evaluate_concepts`: per concept its means alone and composed and its retention, with the
    conventions, weights, sampling settings and base model that produced them."""

    base_model: str
    conventions: Conventions
    weights: Mapping[str, Any]
    settings: RunSettings
    concepts: tuple[ConceptResult, ...]
    composition: Mapping[str, Any] | None = None
    environment: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def concept(self, name: str) -> ConceptResult:
        for result in self.concepts:
            if result.name == name:
                return result
        raise ConfigError(f"no concept {name!r} in this report; it has {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(result.name for result in self.concepts)

    def summary(self) -> str:
        """One line: each concept's CLIP-T / CLIP-I alone (and composed, with retention), then the conventions."""
        parts = []
        for r in self.concepts:
            text = f"{r.name}: T {r.alone.clip_t:.4f} I {r.alone.clip_i:.4f}{_identity_and_context(r.alone)}"
            if r.base is not None:
                text += f" (base T {r.base.clip_t:.4f} I {r.base.clip_i:.4f})"
            if r.drift("clip_i") is not None:
                text += f" drift I {r.drift('clip_i'):+.4f}"
            if r.composed is not None:
                kept_t, kept_i = format_ratio(r.retention("clip_t")), format_ratio(r.retention("clip_i"))
                text += (
                    f" | composed T {r.composed.clip_t:.4f} I {r.composed.clip_i:.4f}"
                    f"{_identity_and_context(r.composed)} (retention T {kept_t} I {kept_i})"
                )
            parts.append(text)
        c = self.conventions
        images = len(self.concepts[0].prompts) * self.settings.images_per_prompt if self.concepts else 0
        return (
            f"{'; '.join(parts)} | {images} images per concept and setting | {c.backbone} "
            f"{c.weights or 'random init'}, {c.preset_name or 'custom'} conventions"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_version": REPORT_VERSION,
            "summary": self.summary(),
            "base_model": self.base_model,
            "conventions": self.conventions.to_dict(),
            "weights": dict(self.weights),
            "settings": self.settings.to_dict(),
            "retention_rule": "composed mean / alone mean, same prompts and seeds; null unless the alone mean is "
            f"> 0 and > {RETENTION_MIN_SEMS:g} standard errors",
            "gain_rule": "alone mean - base mean (no adapter), same prompts and seeds",
            "drift_rule": "the gain again with the settings' other_words in the token's place, every prompt with "
            "every word at the first seed (alone_other - base_other): what other words pick up of the concept; "
            "null without other words",
            "identity_rule": "share of a concept's images whose CLIP-I is highest against its own references "
            "among every concept's of the run; null with one concept",
            "context_rule": "share of right picks when CLIP chooses each image's background color and texture and "
            "companion color and shape among the prompt's one-word variants (chance 1/8, 1/4); null for prompts "
            "outside the world's grammar",
            "concepts": [result.to_dict() for result in self.concepts],
            "composition": dict(self.composition) if self.composition is not None else None,
            "environment": dict(self.environment),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON report atomically and return its path."""
        write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        return Path(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationReport:
        check_version(data, "report_version", REPORT_VERSION, "evaluation report")
        return cls(
            base_model=data["base_model"],
            conventions=Conventions.from_dict(data["conventions"]),
            weights=dict(data["weights"]),
            settings=RunSettings.from_dict(data["settings"]),
            concepts=tuple(ConceptResult.from_dict(entry) for entry in data["concepts"]),
            composition=data.get("composition"),
            environment=dict(data.get("environment", {})),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvaluationReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def standard_error(scores: Sequence[float]) -> float | None:
    """Standard error of the mean of per-image scores: sample standard deviation / sqrt(n); None for n < 2."""
    if len(scores) < 2:
        return None
    return statistics.stdev(scores) / math.sqrt(len(scores))


def _identity_and_context(scores: SettingScores) -> str:
    """ " identity 0.67 context 0.92", each part only where it is defined."""
    text = "" if scores.identity is None else f" identity {scores.identity:.2f}"
    return text if scores.context is None else f"{text} context {scores.context:.2f}"


def format_ratio(value: float | None) -> str:
    """A retention for people: "0.953", or "n/a" where it is null."""
    return "n/a" if value is None else f"{value:.3f}"
