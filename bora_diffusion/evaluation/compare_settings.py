"""What a method comparison compares: the concepts to train (`CompareConcept`) and the settings
(`CompareSettings`: the methods, the budget rule, one training config for all, how images are drawn), with
the budget rule stated in words as the tables print it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from ..train import ConceptLike
from .budgets import RANK_RULES
from .run_settings import RunSettings

__all__ = ["CompareConcept", "CompareSettings"]


@dataclass(frozen=True)
class CompareConcept:
    """A concept to train (a `Concept` from its folder, or anything with the fields training reads) and the
    folder of its reference images (for a concept folder: the folder itself)."""

    concept: ConceptLike
    references: Path


@dataclass(frozen=True)
class CompareSettings:
    """What is compared and under which budget: see the module docstring for the rank rules."""

    methods: tuple[str, ...] = ("lora", "sbora_fa")
    rank: int = 4
    rule: str = "params"
    blocks: int | None = None
    targets: str | tuple[str, ...] = "attention"
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    run: RunSettings = dataclasses.field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        if self.rule not in RANK_RULES:
            raise ConfigError(f"rank rule must be one of {', '.join(RANK_RULES)}, got {self.rule!r}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"rank must be a positive integer, got {self.rank!r}")

    def rule_text(self) -> str:
        """The budget rule in words, as the table states it."""
        common = (
            f"same {self.train.steps} steps, lr {self.train.learning_rate:g}, batch {self.train.batch_size}, "
            f"resolution {self.train.resolution}, seed {self.train.seed} for every method"
        )
        if self.train.train_embedding:
            embedding_lr = self.train.embedding_learning_rate or self.train.learning_rate
            common += f", each concept's token embedding trained too (ED-LoRA) at lr {embedding_lr:g}"
            if self.train.embedding_vectors > 1:
                common += f" as {self.train.embedding_vectors} vectors"
            if self.train.word_lock_weight > 0:
                common += f", its other words locked at weight {self.train.word_lock_weight:g}"
        if self.train.prior_weight > 0:
            common += f", prior preservation at weight {self.train.prior_weight:g}"
        if self.train.lock_weight > 0:
            common += f", prompts without the token locked at weight {self.train.lock_weight:g}"
        if self.train.snr_gamma is not None:
            common += f", Min-SNR-gamma loss weighting at gamma {self.train.snr_gamma:g}"
        if self.targets != "attention":
            common += f", targets {self.targets if isinstance(self.targets, str) else list(self.targets)}"
        if self.rule == "rank":
            return f"{common}; every method at rank {self.rank} (parameter counts differ)"
        return (
            f"{common}; {self.methods[0]} at rank {self.rank}, every other method at the rank whose trainable-"
            f"parameter count is nearest to {self.methods[0]}'s"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "rank": self.rank,
            "rule": self.rule,
            "rule_text": self.rule_text(),
            "blocks": self.blocks,
            "targets": self.targets if isinstance(self.targets, str) else list(self.targets),
            "train": self.train.to_dict(),
            "run": self.run.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareSettings:
        targets = data["targets"]
        return cls(
            methods=tuple(data["methods"]),
            rank=data["rank"],
            rule=data["rule"],
            blocks=data["blocks"],
            targets=targets if isinstance(targets, str) else tuple(targets),
            train=TrainConfig.from_dict(data["train"]),
            run=RunSettings.from_dict(data["run"]),
        )
