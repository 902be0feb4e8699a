"""Alignment reports: per-image and mean scores together with every convention that produced them.

A report is self-describing, so a number read months later can still be reproduced or compared: it records the
conventions (backbone, weights, scale, clipping, prefix, token rule, pairing), how the weights were resolved
(tag and origin, or file and SHA-256), the image and reference counts, the exact text each image was scored
against, and the software it ran on. `to_dict` / `save` write it as JSON; `summary` is one line for logs and the
app.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..errors import ConfigError
from .conventions import Conventions

__all__ = ["METRICS", "AlignmentReport"]

REPORT_VERSION = 1
# "clip-t": each generated image against its prompt; "clip-i": generated images against reference images.
METRICS = ("clip-t", "clip-i")


def check_version(data: Mapping[str, Any], key: str, expected: int, what: str) -> None:
    """Refuse a saved report (of any kind: `what`) written in another format version than this code reads."""
    version = data.get(key)
    if version != expected:
        raise ConfigError(
            f"{what} version {version!r} is not {expected}: read it with the version that wrote it"
        )


@dataclass(frozen=True)
class AlignmentReport:
    """One CLIP-T or CLIP-I measurement.

    `scores[i]` belongs to `images[i]`; `mean` is the headline number. For CLIP-T, `prompts[i]` is the prompt
    the image was generated with and `texts[i]` the exact string the text encoder saw. For CLIP-I,
    `pair_scores[i][j]` scores `images[i]` against `references[j]`, and each image's score pools its row by the
    pairing rule.
    """

    metric: str
    mean: float
    scores: tuple[float, ...]
    images: tuple[str, ...]
    conventions: Conventions
    weights: Mapping[str, Any]
    environment: Mapping[str, Any] = field(default_factory=dict)
    prompts: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    tokens: Mapping[str, str] = field(default_factory=dict)
    references: tuple[str, ...] = ()
    pair_scores: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if len(self.scores) != len(self.images):
            raise ConfigError(f"{len(self.scores)} scores for {len(self.images)} images")

    @property
    def image_count(self) -> int:
        return len(self.images)

    @property
    def reference_count(self) -> int:
        return len(self.references)

    def summary(self) -> str:
        """One line: the number, what it was computed over, and the conventions behind it."""
        c = self.conventions
        weights = c.weights if c.weights is not None else "random init"
        named = f", preset {c.preset_name}" if c.preset_name else ", custom conventions"
        if self.metric == "clip-t":
            head = f"CLIP-T {self.mean:.4f} over {self.image_count} images"
            how = c.describe_text()
        else:
            pairs = self.image_count * self.reference_count
            head = (
                f"CLIP-I {self.mean:.4f} over {self.image_count} images x {self.reference_count} references "
                f"({pairs} pairs)"
            )
            how = c.describe_image()
        return f"{head} | {c.backbone} {weights} | {how}{named}"

    def to_dict(self) -> dict[str, Any]:
        per_image: list[dict[str, Any]] = []
        for i, (image, score) in enumerate(zip(self.images, self.scores, strict=True)):
            entry: dict[str, Any] = {"image": image, "score": score}
            if self.metric == "clip-t":
                entry.update(prompt=self.prompts[i], text=self.texts[i])
            per_image.append(entry)
        data: dict[str, Any] = {
            "report_version": REPORT_VERSION,
            "metric": self.metric,
            "mean": self.mean,
            "image_count": self.image_count,
            "summary": self.summary(),
            "conventions": self.conventions.to_dict(),
            "weights": dict(self.weights),
            "environment": dict(self.environment),
        }
        if self.metric == "clip-t":
            data["tokens"] = dict(self.tokens)
        else:
            data["reference_count"] = self.reference_count
            data["references"] = list(self.references)
            data["pair_scores"] = [list(row) for row in self.pair_scores]
        data["per_image"] = per_image
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON report atomically (a crash never leaves half a file) and return its path."""
        write_text(path, self.to_json() + "\n")
        return Path(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlignmentReport:
        check_version(data, "report_version", REPORT_VERSION, "report")
        per_image = data["per_image"]
        clip_t = data["metric"] == "clip-t"
        return cls(
            metric=data["metric"],
            mean=float(data["mean"]),
            scores=tuple(float(entry["score"]) for entry in per_image),
            images=tuple(entry["image"] for entry in per_image),
            conventions=Conventions.from_dict(data["conventions"]),
            weights=dict(data["weights"]),
            environment=dict(data.get("environment", {})),
            prompts=tuple(entry["prompt"] for entry in per_image) if clip_t else (),
            texts=tuple(entry["text"] for entry in per_image) if clip_t else (),
            tokens=dict(data.get("tokens", {})),
            references=tuple(data.get("references", ())),
            pair_scores=tuple(tuple(float(x) for x in row) for row in data.get("pair_scores", ())),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AlignmentReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
