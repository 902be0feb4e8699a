"""The comparison rendered for people: its CSV, the SBoRA-shaped Markdown tables and the bar chart.

Pure functions of a comparison's parts (its settings, base model and per-method results), so they sit below
`comparison.py`, whose `Comparison.csv()`, `.markdown()` and `.save()` call them. A result is anything with a
`budget` and a `report` (`MethodOutcome`); the chart's drawing is `chart.bar_panels`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from PIL import Image

from .budgets import MethodBudget
from .chart import bar_panels
from .compare_settings import CompareSettings
from .results import EvaluationReport, SettingScores

__all__ = ["MethodOutcome", "comparison_chart", "comparison_csv", "comparison_markdown", "setting_means"]


class MethodOutcome(Protocol):
    """One method of a comparison: the budget it trained with and the report of its evaluation."""

    budget: MethodBudget
    report: EvaluationReport


def comparison_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows (`Comparison.rows()`) as CSV, None as an empty cell."""
    buffer = io.StringIO()
    rows = list(rows)
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return buffer.getvalue()


def comparison_markdown(settings: CompareSettings, base_model: str, results: Sequence[MethodOutcome]) -> str:
    """The SBoRA-shaped tables: methods as rows, CLIP-T / CLIP-I per concept, alone then composed."""
    first = results[0].report
    names = first.names
    c, run = first.conventions, settings.run
    lines = [
        f"- Base `{base_model}`; conventions: {c.backbone} {c.weights or 'random init'} "
        f"({c.preset_name or 'custom'}): text {c.describe_text()}; image {c.describe_image()}.",
        f"- Budget: {settings.rule_text()}.",
        f"- Images: prompt set `{run.prompt_set}`, {run.images_per_prompt} seed(s) per prompt, "
        f"{run.sampling.steps} sampling steps, guidance {run.sampling.guidance:g}; each score is the mean over "
        "the images +- its standard error over images.",
        "",
        "**Each concept alone**",
        "",
    ]
    head = ["method", "rank", "params"] + [f"{n} {m}" for n in names for m in ("CLIP-T", "CLIP-I")]
    head += ["mean CLIP-T", "mean CLIP-I", "identity", "context"]
    lines += [_md_row(head), _md_row(["---"] * len(head))]
    if first.concepts and all(concept.base is not None for concept in first.concepts):
        cells = ["base (before tuning)", "-", "0"]
        for concept in first.concepts:
            cells += [_cell(concept.base, "clip_t"), _cell(concept.base, "clip_i")]
        cells += [f"{value:.4f}" for value in setting_means(first, "base")]
        cells += [_mean_of(first, "base", "identity"), _mean_of(first, "base", "context")]
        lines.append(_md_row(cells))
    for result in results:
        b, report = result.budget, result.report
        cells = [b.method, str(b.rank), f"{b.trainable_params:,} ({b.ratio:.2f}x)"]
        for concept in report.concepts:
            cells += [_cell(concept.alone, "clip_t"), _cell(concept.alone, "clip_i")]
        cells += [f"{value:.4f}" for value in setting_means(report, "alone")]
        cells += [_mean_of(report, "alone", "identity"), _mean_of(report, "alone", "context")]
        lines.append(_md_row(cells))
    if first.concepts and first.concepts[0].composed is not None:
        lines += [
            "",
            f"**All {len(names)} concepts composed** (retention = composed / alone; identity = share of images "
            f"matching their own concept's references best, chance {1 / len(names):.2f}; context = share of "
            "the prompts' background and companion attributes read right)",
            "",
        ]
        head = ["method"] + [f"{n} {m}" for n in names for m in ("CLIP-T", "CLIP-I")]
        head += ["mean CLIP-T", "mean CLIP-I", "retention T", "retention I", "identity", "context"]
        lines += [_md_row(head), _md_row(["---"] * len(head))]
        for result in results:
            report = result.report
            cells = [result.budget.method]
            for concept in report.concepts:
                cells += [_cell(concept.composed, "clip_t"), _cell(concept.composed, "clip_i")]
            cells += [f"{value:.4f}" for value in setting_means(report, "composed")]
            cells += [_mean_retention(report, "clip_t"), _mean_retention(report, "clip_i")]
            cells += [_mean_of(report, "composed", "identity"), _mean_of(report, "composed", "context")]
            lines.append(_md_row(cells))
    notes = [f"{r.budget.method}: {r.budget.note}" for r in results if r.budget.note]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def comparison_chart(base_model: str, rule: str, results: Sequence[MethodOutcome]) -> Image.Image:
    """CLIP-T and CLIP-I per method: for each concept a solid bar alone and a light bar composed."""
    names = results[0].report.names if results else ()
    composed = bool(results) and results[0].report.concepts[0].composed is not None
    settings = ("alone", "composed") if composed else ("alone",)
    series = [
        (f"{name} {setting}", i, setting == "composed")
        for i, name in enumerate(names)
        for setting in settings
    ]
    groups = [result.budget.method for result in results]
    panels = []
    for metric, label in (("clip_t", "CLIP-T (text alignment)"), ("clip_i", "CLIP-I (image alignment)")):
        values: dict[str, list[float | None]] = {}
        errors: dict[str, list[float | None]] = {}
        for result in results:
            cells = [getattr(c, setting) for c in result.report.concepts for setting in settings]
            values[result.budget.method] = [getattr(cell, metric) for cell in cells]
            errors[result.budget.method] = [getattr(cell, f"{metric}_sem") for cell in cells]
        panels.append((label, values, errors))
    c = results[0].report.conventions if results else None
    title = (
        f"{base_model}: {c.backbone} {c.weights or 'random init'}, {c.preset_name or 'custom'} "
        f"conventions; {rule} rule"
        if c
        else ""
    )
    return bar_panels(panels, groups, series, title=title, legend_columns=len(settings))


def _cell(scores: SettingScores, metric: str) -> str:
    sem = getattr(scores, f"{metric}_sem")
    mean = getattr(scores, metric)
    return f"{mean:.4f}" if sem is None else f"{mean:.4f} +- {sem:.4f}"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def setting_means(report: EvaluationReport, setting: str) -> tuple[float, float]:
    """The concepts' mean CLIP-T and mean CLIP-I in `setting` of `report`."""
    scores = [getattr(concept, setting) for concept in report.concepts]
    return (
        sum(s.clip_t for s in scores) / len(scores),
        sum(s.clip_i for s in scores) / len(scores),
    )


def _mean_of(report: EvaluationReport, setting: str, score: str) -> str:
    """The concepts' mean `score` ("identity" or "context") in `setting`; "-" where a concept has none (identity
    in a run of one concept, context on prompts outside the world's grammar)."""
    values = [getattr(getattr(concept, setting), score) for concept in report.concepts]
    return "-" if None in values else f"{sum(values) / len(values):.2f}"


def _mean_retention(report: EvaluationReport, metric: str) -> str:
    values = [c.retention(metric) for c in report.concepts]
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    mean = f"{sum(known) / len(known):.3f}"
    return mean if len(known) == len(values) else f"{mean} ({len(known)} of {len(values)})"
