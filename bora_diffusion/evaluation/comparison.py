"""The outcome of a method comparison: each method's budget and evaluation report (`MethodResult`), and the
`Comparison` of them all: one row per method and concept, a one-line summary, and its JSON, read back exactly
(to redraw the tables or the chart without rerunning). Its CSV, Markdown and chart are `renderers.py`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, write_text
from .budgets import MethodBudget
from .compare_settings import CompareSettings
from .renderers import comparison_chart, comparison_csv, comparison_markdown, setting_means
from .report import check_version
from .results import EvaluationReport

__all__ = ["COMPARISON_VERSION", "Comparison", "MethodResult"]

COMPARISON_VERSION = 1


@dataclass(frozen=True)
class MethodResult:
    """One method of the comparison: the budget it trained with and the report of its evaluation."""

    budget: MethodBudget
    report: EvaluationReport


@dataclass(frozen=True)
class Comparison:
    """The methods' budgets and evaluation reports; as rows and JSON here, as CSV, Markdown and a bar chart through
    `renderers.py`."""

    settings: CompareSettings
    base_model: str
    results: tuple[MethodResult, ...]

    @property
    def concept_names(self) -> tuple[str, ...]:
        return self.results[0].report.names if self.results else ()

    def rows(self) -> list[dict[str, Any]]:
        """One row per method and concept (the CSV): budget, CLIP-T / CLIP-I before tuning, alone and composed,
        retention, identity, context, and CLIP-I with other words in the token's place (base, alone, drift)."""
        rows = []
        for result in self.results:
            budget = result.budget
            for concept in result.report.concepts:
                composed = concept.composed
                rows.append(
                    {
                        "method": budget.method,
                        "rank": budget.rank,
                        "trainable_params": budget.trainable_params,
                        "param_ratio": round(budget.ratio, 4),
                        "concept": concept.name,
                        "clip_t_base": concept.base.clip_t if concept.base else None,
                        "clip_i_base": concept.base.clip_i if concept.base else None,
                        "clip_t_alone": concept.alone.clip_t,
                        "clip_i_alone": concept.alone.clip_i,
                        "clip_t_composed": composed.clip_t if composed else None,
                        "clip_i_composed": composed.clip_i if composed else None,
                        "retention_t": concept.retention("clip_t"),
                        "retention_i": concept.retention("clip_i"),
                        "identity_base": concept.base.identity if concept.base else None,
                        "identity_alone": concept.alone.identity,
                        "identity_composed": composed.identity if composed else None,
                        "context_base": concept.base.context if concept.base else None,
                        "context_alone": concept.alone.context,
                        "context_composed": composed.context if composed else None,
                        "clip_i_base_other": concept.base_other.clip_i if concept.base_other else None,
                        "clip_i_alone_other": concept.alone_other.clip_i if concept.alone_other else None,
                        "drift_i": concept.drift("clip_i"),
                        "drift_i_sem": concept.drift_sem("clip_i"),
                        "clip_t_alone_sem": concept.alone.clip_t_sem,
                        "clip_i_alone_sem": concept.alone.clip_i_sem,
                        "clip_t_composed_sem": composed.clip_t_sem if composed else None,
                        "clip_i_composed_sem": composed.clip_i_sem if composed else None,
                        "images": concept.alone.images,
                    }
                )
        return rows

    def summary(self) -> str:
        """One line: each method's mean CLIP-T / CLIP-I over the concepts, alone and composed."""
        parts = []
        for result in self.results:
            alone_t, alone_i = setting_means(result.report, "alone")
            text = f"{result.budget.method} r{result.budget.rank}: T {alone_t:.4f} I {alone_i:.4f}"
            if result.report.concepts and result.report.concepts[0].composed is not None:
                comp_t, comp_i = setting_means(result.report, "composed")
                text += f" (composed T {comp_t:.4f} I {comp_i:.4f})"
            parts.append(text)
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        first = self.results[0].report if self.results else None
        return {
            "comparison_version": COMPARISON_VERSION,
            "summary": self.summary(),
            "base_model": self.base_model,
            "settings": self.settings.to_dict(),
            "conventions": first.conventions.to_dict() if first else None,
            "weights": dict(first.weights) if first else None,
            "budgets": [dataclasses.asdict(result.budget) for result in self.results],
            "rows": self.rows(),
            "reports": {result.budget.method: result.report.to_dict() for result in self.results},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        """Read back `to_dict` (e.g. a saved comparison.json, to redraw the table or chart without rerunning)."""
        check_version(data, "comparison_version", COMPARISON_VERSION, "comparison")
        reports = data["reports"]
        return cls(
            settings=CompareSettings.from_dict(data["settings"]),
            base_model=data["base_model"],
            results=tuple(
                MethodResult(MethodBudget(**budget), EvaluationReport.from_dict(reports[budget["method"]]))
                for budget in data["budgets"]
            ),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Comparison:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def csv(self) -> str:
        """The rows as CSV (`renderers.comparison_csv`)."""
        return comparison_csv(self.rows())

    def markdown(self) -> str:
        """The SBoRA-shaped tables: methods as rows, CLIP-T / CLIP-I per concept, alone then composed."""
        return comparison_markdown(self.settings, self.base_model, self.results)

    def save(self, out_dir: str | os.PathLike[str], *, stem: str = "comparison") -> dict[str, Path]:
        """Write `<stem>.json`, `.csv`, `.md` and the bar chart `.png` atomically; return the paths by kind."""
        out_dir = Path(out_dir)
        paths = {kind: out_dir / f"{stem}.{kind}" for kind in ("json", "csv", "md", "png")}
        write_text(paths["json"], json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        write_text(paths["csv"], self.csv())
        write_text(paths["md"], self.markdown())
        with atomic_path(paths["png"]) as tmp:
            comparison_chart(self.base_model, self.settings.rule, self.results).save(
                tmp, format="PNG", optimize=True
            )
        return paths
