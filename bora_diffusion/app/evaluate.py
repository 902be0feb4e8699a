"""Evaluate & compare: the library's evaluation run (`evaluation.runs.evaluate_concepts`) on picked concepts.

Each picked concept's prompts are generated and scored on the base before tuning, with the concept alone, and
with two or more also composed with the others, so one table shows what training gained, compares methods (each
row names its concept's method) and shows what composing costs each concept (retention, identity). The CLIP
model is loaded once per backbone and kept; the app's `--clip` option picks backbone and weights (nothing is
downloaded here, so the weights must be cached or a local file).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..concept import load_concept
from ..config import TrainConfig
from ..errors import ConfigError
from ..evaluation import WeightsError, preset
from ..evaluation.budgets import RANK_RULES
from ..evaluation.compare import CompareConcept, CompareSettings, Comparison, compare_methods
from ..evaluation.runs import EvalConcept, EvaluationReport, RunSettings, evaluate_concepts
from ..generate import SamplingSettings
from ..pipeline import default_guidance
from ..world.scoring import WorldScorer as ClipScorer
from . import library
from .models import Pipelines
from .storage import DataDir

COLUMNS = [
    "concept",
    "method",
    "setting",
    "CLIP-T",
    "CLIP-I",
    "retention T",
    "retention I",
    "identity",
    "context",
    "images",
]
MAX_IMAGES_PER_PROMPT = 8


@dataclass(frozen=True)
class ClipChoice:
    """Which CLIP the app scores with; None keeps the preset's own (the shipped world CLIP for
    "default", ViT-B-32 / openai for the published presets)."""

    backbone: str | None = None
    weights: str | None = None
    random_weights: bool = False  # smoke runs and tests: a random init, scores mean nothing


class Scorers:
    """One ClipScorer per (backbone, weights), built on first use and shared across requests."""

    def __init__(self, choice: ClipChoice) -> None:
        self.choice = choice
        self._lock = threading.Lock()
        self._by_model: dict[tuple, ClipScorer] = {}

    def get(self, conventions_name: str) -> ClipScorer:
        overrides = {}
        if self.choice.backbone:
            overrides["backbone"] = self.choice.backbone
        if self.choice.random_weights:
            overrides["weights"] = None
        elif self.choice.weights:
            overrides["weights"] = self.choice.weights
        conventions = preset(conventions_name, **overrides)
        key = (conventions.backbone, conventions.weights)
        with self._lock:
            if key not in self._by_model:
                try:
                    self._by_model[key] = ClipScorer(conventions, device="cpu")
                except WeightsError as error:
                    raise WeightsError(
                        f"{error} | In the app: restart it with --clip BACKBONE:/path/to/weights.pt (a local "
                        "file), or --clip BACKBONE:random for a smoke run whose scores mean nothing"
                    ) from None
            return self._by_model[key].with_conventions(conventions)


def run(
    data: DataDir,
    pipelines: Pipelines,
    scorers: Scorers,
    names: Sequence[str],
    *,
    prompt_set: str,
    conventions: str,
    images_per_prompt: int,
    steps: int,
    fuse: bool = True,
    progress=None,
) -> tuple[EvaluationReport, str]:
    """Evaluate the picked concepts; return the report and the folder it was written to."""
    names = list(names or [])
    if not names:
        raise ConfigError("concepts: pick at least one trained concept to evaluate")
    if not isinstance(images_per_prompt, int | float) or not 1 <= images_per_prompt <= MAX_IMAGES_PER_PROMPT:
        raise ConfigError(f"images per prompt: give 1 to {MAX_IMAGES_PER_PROMPT}, got {images_per_prompt!r}")
    if not isinstance(steps, int | float) or not 1 <= steps <= 150:
        raise ConfigError(f"steps: give 1 to 150, got {steps!r}")
    specs = []
    for name in names:
        info = library.adapter(data, name)
        references = data.sidecar(name).get("images")
        if not references:
            raise ConfigError(
                f"concepts: {name!r} has no reference images on record (it was not trained in this app); "
                "evaluate it with `bora-diffusion` and its concept folder"
            )
        specs.append(EvalConcept(file=info.path, references=references))
    settings = RunSettings(
        prompt_set=prompt_set,
        images_per_prompt=int(images_per_prompt),
        sampling=SamplingSettings(steps=int(steps), guidance=default_guidance(pipelines.base)),
        composed=len(specs) > 1,
        fuse=fuse,
        other_words=(),  # the page's table has no drift column: no images it would not show
    )
    scorer = scorers.get(conventions)
    out = data.new_folder("evaluations")
    with pipelines.borrow() as pipe:
        report = evaluate_concepts(
            pipe, specs, scorer, out, base_name=pipelines.name, settings=settings, progress=progress
        )
    for result in report.concepts:
        data.update_sidecar(
            result.name,
            scores={"clip_t": result.alone.clip_t, "clip_i": result.alone.clip_i, "conventions": conventions},
        )
    return report, str(out)


def table(report: EvaluationReport) -> list[list]:
    """One row per concept and setting (base before tuning, alone, composed), in COLUMNS order."""
    rows = []
    for result in report.concepts:
        settings = (("base", result.base), ("alone", result.alone), ("composed", result.composed))
        for setting, scores in settings:
            if scores is None:
                continue
            composed = setting == "composed"
            rows.append(
                [
                    result.name,
                    "-" if setting == "base" else result.method,
                    setting,
                    round(scores.clip_t, 4),
                    round(scores.clip_i, 4),
                    _round(result.retention("clip_t")) if composed else None,
                    _round(result.retention("clip_i")) if composed else None,
                    _round(scores.identity),
                    _round(scores.context),
                    scores.images,
                ]
            )
    return rows


def bars(report: EvaluationReport) -> list[dict]:
    """Rows for the bar chart: one bar per concept, metric and setting, side by side (a plot that stacked them
    would add CLIP-T to CLIP-I)."""
    out = []
    for row in table(report):
        for metric, score in (("CLIP-T", row[3]), ("CLIP-I", row[4])):
            out.append({"bar": f"{row[0]} {metric} {row[2]}", "score": score, "metric": f"{metric} {row[2]}"})
    return out


COMPARE_COLUMNS = [
    "method", "rank", "trainable params", "concept", "CLIP-T alone", "CLIP-I alone", "CLIP-T composed",
    "CLIP-I composed", "retention T", "retention I",
]  # fmt: skip
MAX_COMPARE_STEPS = 5000


def compare(
    data: DataDir,
    pipelines: Pipelines,
    scorers: Scorers,
    folders: Sequence[str],
    methods: Sequence[str],
    *,
    known_folders: Sequence[str],
    concepts_root,
    rank: int,
    rule: str,
    steps: int,
    prompt_set: str,
    conventions: str,
    images_per_prompt: int,
    sample_steps: int,
) -> tuple[Comparison, str]:
    """The library's method comparison (`compare_methods`) on concept folders of the app's concepts directory:
    each method trains the concepts at a matched budget, then each is evaluated alone and composed."""
    folders, methods = list(folders or []), list(methods or [])
    if not folders:
        raise ConfigError("folders: pick at least one concept folder to train with each method")
    unknown = [name for name in folders if name not in known_folders]
    if unknown:
        raise ConfigError(f"folders: {', '.join(map(repr, unknown))} not among {', '.join(known_folders)}")
    if len(methods) < 2:
        raise ConfigError("methods: pick at least two methods to compare")
    if rule not in RANK_RULES:
        raise ConfigError(f"rank rule: choose one of {', '.join(RANK_RULES)}, got {rule!r}")
    for value, field, high in (
        (rank, "rank", 256),
        (steps, "steps", MAX_COMPARE_STEPS),
        (images_per_prompt, "images per prompt", MAX_IMAGES_PER_PROMPT),
        (sample_steps, "sampling steps", 150),
    ):
        if not isinstance(value, int | float) or not float(value).is_integer() or not 1 <= value <= high:
            raise ConfigError(f"{field}: give a whole number from 1 to {high}, got {value!r}")
    items = [CompareConcept(load_concept(concepts_root / name), concepts_root / name) for name in folders]
    settings = CompareSettings(
        methods=tuple(methods),
        rank=int(rank),
        rule=rule,
        train=TrainConfig(steps=int(steps)),
        run=RunSettings(
            prompt_set=prompt_set,
            images_per_prompt=int(images_per_prompt),
            sampling=SamplingSettings(steps=int(sample_steps), guidance=default_guidance(pipelines.base)),
            other_words=(),  # likewise
        ),
    )
    scorer = scorers.get(conventions)
    out = data.new_folder("evaluations")
    with pipelines.borrow() as pipe:
        comparison = compare_methods(pipe, items, scorer, out, base_name=pipelines.name, settings=settings)
    return comparison, str(out)


def compare_table(comparison: Comparison) -> list[list]:
    keys = [
        "method", "rank", "trainable_params", "concept", "clip_t_alone", "clip_i_alone", "clip_t_composed",
        "clip_i_composed", "retention_t", "retention_i",
    ]  # fmt: skip
    return [[_round(r[k]) if isinstance(r[k], float) else r[k] for k in keys] for r in comparison.rows()]


def compare_bars(comparison: Comparison) -> list[dict]:
    """One bar per method, concept and metric (alone), side by side."""
    out = []
    for row in comparison.rows():
        for metric, key in (("CLIP-T", "clip_t_alone"), ("CLIP-I", "clip_i_alone")):
            label = f"{row['method']} r{row['rank']} {row['concept']} {metric}"
            out.append({"bar": label, "score": round(row[key], 4), "metric": f"{metric} {row['method']}"})
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
