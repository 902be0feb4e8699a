"""Method comparison: train the same concepts with several adapter methods at matched budgets, evaluate each
method's concepts alone and composed, and tabulate CLIP-T / CLIP-I per method and concept.

The table has the shape of the SBoRA paper's diffusion comparison (arXiv 2407.05413, Table "multi-concept
customization"): methods as rows, text and image alignment per concept as columns, once for each concept alone
and once inside the composition of all of them, with the retention (composed / alone) that this library adds.

**Matched budgets.** Every method trains for the same steps with the same learning rate, batch, resolution and
seed (one `TrainConfig` for all). Ranks follow a stated rule:

- ``params`` (default): the first method gets `rank`; every other method gets the rank whose trainable-parameter
  count on the targeted layers is nearest to the first's (counted exactly, by injecting and counting). SBoRA and
  ortho train one factor, so they get about twice LoRA's rank; bora_block's block scales cost a little more. A
  slot method whose nearest rank exceeds its slot capacity (n concepts x rank must fit each layer) gets the
  largest rank that fits, and the table says so.
- ``rank``: every method gets `rank`; parameter counts then differ, and the table shows them.

Each method's concepts train one after another on disjoint slots of one `SlotLedger` (`train_concepts`), then
`evaluate_concepts` draws and scores them. Outputs under the output folder::

    <out>/<method>/train/   adapter files, slots.json, checkpoints
    <out>/<method>/eval/    images, per-image reports, evaluation.json
    <out>/comparison.json .csv .md .png
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..adapters import available, get
from ..atomic import atomic_path, write_text
from ..callbacks import Callback
from ..config import AdapterConfig, TrainConfig
from ..errors import ConfigError
from ..inject import concepts as model_concepts
from ..inject import eject, find_targets, inject, remove, wrappers
from ..train import ConceptLike, train_concepts
from .report import check_version
from .results import EvaluationReport, SettingScores
from .run_settings import EvalConcept, RunSettings
from .runs import evaluate_base, evaluate_concepts
from .scorer import ClipScorer

__all__ = [
    "RANK_RULES",
    "CompareConcept",
    "CompareSettings",
    "Comparison",
    "MethodBudget",
    "MethodResult",
    "compare_methods",
    "match_budgets",
    "trainable_parameters",
]

COMPARISON_VERSION = 1
RANK_RULES = ("params", "rank")
_PROBE = "__budget_probe__"
# progress(message, done, total) over the methods' train and evaluate phases.
CompareProgress = Callable[[str, int, int], None]


# ----------------------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class MethodBudget:
    """The rank a method trains with and what it costs: trainable parameters per concept on the targeted layers,
    and their ratio to the reference method's."""

    method: str
    rank: int
    blocks: int | None
    trainable_params: int
    ratio: float
    note: str = ""

    def adapter_config(self, targets: str | tuple[str, ...], seed: int) -> AdapterConfig:
        return AdapterConfig(
            method=self.method, rank=self.rank, blocks=self.blocks, targets=targets, seed=seed
        )


def trainable_parameters(unet: nn.Module, config: AdapterConfig) -> int:
    """Trainable values one concept with `config` adds to `unet` (counted by injecting it and taking it off)."""
    inject(unet, config, name=_PROBE)
    try:
        return sum(
            param.numel()
            for _, wrapper in wrappers(unet)
            if _PROBE in wrapper.adapters
            for param in wrapper.adapters[_PROBE].parameters()
        )
    finally:
        remove(unet, _PROBE)


def _max_rank(unet: nn.Module, method: str, targets: str | tuple[str, ...], concepts: int) -> int:
    """The largest rank that fits every targeted layer: slot methods need `concepts` x rank indices of their
    space per layer; the others are capped at min(out, in), past which a low-rank factor stops being low-rank."""
    space = get(method).slot_space
    sizes = []
    for path in find_targets(unet, targets):
        layer = unet.get_submodule(path)
        if space is None:
            sizes.append(min(layer.out_features, layer.in_features))
        else:
            sizes.append((layer.out_features if space == "out" else layer.in_features) // concepts)
    return min(sizes)


def match_budgets(
    unet: nn.Module,
    methods: Sequence[str],
    *,
    rank: int = 4,
    rule: str = "params",
    concepts: int = 1,
    targets: str | tuple[str, ...] = "attention",
    blocks: int | None = None,
) -> list[MethodBudget]:
    """Each method's rank under `rule` (see the module docstring); the first method is the reference at `rank`.

    `unet` must hold no concepts (probes are injected and removed). `blocks` applies to bora_block (default 4).
    """
    methods = list(methods)
    if not methods:
        raise ConfigError("compare needs at least one method")
    unknown = [m for m in methods if m not in available()]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(available())}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods must be distinct, got {', '.join(methods)}")
    if rule not in RANK_RULES:
        raise ConfigError(f"rank rule must be one of {', '.join(RANK_RULES)}, got {rule!r}")
    present = model_concepts(unet)
    if present:
        raise ConfigError(
            f"the UNet already holds concepts ({', '.join(present)}); match budgets on a clean base"
        )

    def config(method: str, r: int) -> AdapterConfig:
        return AdapterConfig(
            method=method, rank=r, blocks=blocks if method == "bora_block" else None, targets=targets
        )

    reference_cap = _max_rank(unet, methods[0], targets, concepts)
    if rank > reference_cap:
        raise ConfigError(
            f"rank {rank} does not fit {methods[0]} with {concepts} concept(s) on these layers (at most "
            f"{reference_cap}); lower --rank"
        )
    reference = trainable_parameters(unet, config(methods[0], rank))
    budgets = []
    for method in methods:
        cap = _max_rank(unet, method, targets, concepts)
        note = ""
        if method == methods[0]:
            chosen = rank
        elif rule == "rank":
            if rank > cap:
                raise ConfigError(
                    f"rank {rank} does not fit {method} with {concepts} concept(s) (at most {cap}); lower --rank"
                )
            chosen = rank
        else:
            chosen = _nearest_rank(
                lambda r, m=method: trainable_parameters(unet, config(m, r)), reference, cap
            )
            if chosen == cap and trainable_parameters(unet, config(method, cap)) < reference:
                note = f"capped at rank {cap}: slot capacity of the smallest layer for {concepts} concept(s)"
        params = trainable_parameters(unet, config(method, chosen))
        budgets.append(
            MethodBudget(
                method=method,
                rank=chosen,
                blocks=config(method, chosen).blocks,
                trainable_params=params,
                ratio=params / reference,
                note=note,
            )
        )
    return budgets


def _nearest_rank(count: Callable[[int], int], target: int, cap: int) -> int:
    """The rank in 1..cap whose count is nearest to `target` (counts grow with rank: a binary search finds the
    first rank at or above the target, then it is compared with the one below)."""
    low, high = 1, cap
    while low < high:
        middle = (low + high) // 2
        if count(middle) >= target:
            high = middle
        else:
            low = middle + 1
    if low > 1 and abs(count(low - 1) - target) <= abs(count(low) - target):
        return low - 1
    return low


# ------------------------------------------------------------------------------------------------- the run
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


@dataclass(frozen=True)
class MethodResult:
    budget: MethodBudget
    report: EvaluationReport


@dataclass(frozen=True)
class Comparison:
    """The methods' budgets and evaluation reports; renders as rows, Markdown, CSV, JSON and a bar chart."""

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
            alone_t, alone_i = _means(result.report, "alone")
            text = f"{result.budget.method} r{result.budget.rank}: T {alone_t:.4f} I {alone_i:.4f}"
            if result.report.concepts and result.report.concepts[0].composed is not None:
                comp_t, comp_i = _means(result.report, "composed")
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
        buffer = io.StringIO()
        rows = self.rows()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
        return buffer.getvalue()

    def markdown(self) -> str:
        """The SBoRA-shaped tables: methods as rows, CLIP-T / CLIP-I per concept, alone then composed."""
        names = self.concept_names
        first = self.results[0].report
        c, run = first.conventions, self.settings.run
        lines = [
            f"- Base `{self.base_model}`; conventions: {c.backbone} {c.weights or 'random init'} "
            f"({c.preset_name or 'custom'}): text {c.describe_text()}; image {c.describe_image()}.",
            f"- Budget: {self.settings.rule_text()}.",
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
            cells += [f"{value:.4f}" for value in _means(first, "base")]
            cells += [_mean_of(first, "base", "identity"), _mean_of(first, "base", "context")]
            lines.append(_md_row(cells))
        for result in self.results:
            b, report = result.budget, result.report
            cells = [b.method, str(b.rank), f"{b.trainable_params:,} ({b.ratio:.2f}x)"]
            for concept in report.concepts:
                cells += [_cell(concept.alone, "clip_t"), _cell(concept.alone, "clip_i")]
            cells += [f"{value:.4f}" for value in _means(report, "alone")]
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
            for result in self.results:
                report = result.report
                cells = [result.budget.method]
                for concept in report.concepts:
                    cells += [_cell(concept.composed, "clip_t"), _cell(concept.composed, "clip_i")]
                cells += [f"{value:.4f}" for value in _means(report, "composed")]
                cells += [_mean_retention(report, "clip_t"), _mean_retention(report, "clip_i")]
                cells += [_mean_of(report, "composed", "identity"), _mean_of(report, "composed", "context")]
                lines.append(_md_row(cells))
        notes = [f"{r.budget.method}: {r.budget.note}" for r in self.results if r.budget.note]
        if notes:
            lines += ["", "Notes: " + "; ".join(notes) + "."]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | os.PathLike[str], *, stem: str = "comparison") -> dict[str, Path]:
        """Write `<stem>.json`, `.csv`, `.md` and the bar chart `.png` atomically; return the paths by kind."""
        from .chart import comparison_chart

        out_dir = Path(out_dir)
        paths = {kind: out_dir / f"{stem}.{kind}" for kind in ("json", "csv", "md", "png")}
        write_text(paths["json"], json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        write_text(paths["csv"], self.csv())
        write_text(paths["md"], self.markdown())
        with atomic_path(paths["png"]) as tmp:
            comparison_chart(self).save(tmp, format="PNG", optimize=True)
        return paths


def _cell(scores: SettingScores, metric: str) -> str:
    sem = getattr(scores, f"{metric}_sem")
    mean = getattr(scores, metric)
    return f"{mean:.4f}" if sem is None else f"{mean:.4f} +- {sem:.4f}"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _means(report: EvaluationReport, setting: str) -> tuple[float, float]:
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


def _seen_from(up: str, setting: str, name: str, scores: Mapping[str, SettingScores]) -> SettingScores | None:
    """A base setting's scores of concept `name`, its folder written from a method's eval folder (`up` leads
    from there to the output folder); None when that setting did not run."""
    if name not in scores:
        return None
    return dataclasses.replace(scores[name], folder=f"{up}/{setting}/{name}")


def compare_methods(
    pipe,
    concepts: Sequence[CompareConcept],
    scorer: ClipScorer,
    out_dir: str | os.PathLike[str],
    *,
    base_name: str,
    settings: CompareSettings = CompareSettings(),
    callbacks: Sequence[Callback] = (),
    progress: CompareProgress | None = None,
    resume: bool = False,
) -> Comparison:
    """Train `concepts` with each method of `settings` at matched budgets, evaluate them alone and composed,
    and write the comparison files into `out_dir`. `callbacks` see training; `progress` sees each phase.
    With `resume`, training continues from the checkpoints already in `out_dir` (a finished method is not
    trained again)."""
    if not concepts:
        raise ConfigError("compare needs at least one concept")
    out_dir = Path(out_dir)
    budgets = match_budgets(
        pipe.unet,
        settings.methods,
        rank=settings.rank,
        rule=settings.rule,
        concepts=len(concepts),
        targets=settings.targets,
        blocks=settings.blocks,
    )
    # The base before tuning is the same for every method (same prompts, seeds and base): scored once, first,
    # while the pipeline's tokenizer still reads the tokens as the base does (training adds trained ones).
    pairs = [(item.concept, item.references) for item in concepts]
    base = (
        evaluate_base(pipe, pairs, scorer, out_dir, base_name=base_name, settings=settings.run)
        if settings.run.before
        else {}
    )
    base_other = (
        evaluate_base(
            pipe, pairs, scorer, out_dir, base_name=base_name, settings=settings.run, other_words=True
        )
        if settings.run.before and settings.run.other_words
        else {}
    )
    run = dataclasses.replace(settings.run, before=False)
    results = []
    total = 2 * len(budgets)
    for index, budget in enumerate(budgets):
        folder = out_dir / budget.method
        if progress is not None:
            progress(f"{budget.method}: train rank {budget.rank}", 2 * index, total)
        adapter = budget.adapter_config(settings.targets, settings.train.seed)
        jobs = [(item.concept, adapter, settings.train) for item in concepts]
        try:
            files = train_concepts(
                pipe, jobs, out_dir=folder / "train", base_name=base_name, callbacks=callbacks, resume=resume
            )
        finally:
            eject(pipe.unet)  # the next method starts from the bare base
        if progress is not None:
            progress(f"{budget.method}: evaluate", 2 * index + 1, total)
        report = evaluate_concepts(
            pipe,
            [EvalConcept(path, item.references) for path, item in zip(files, concepts, strict=True)],
            scorer,
            folder / "eval",
            base_name=base_name,
            settings=run,
        )
        if base:
            # The base images live beside the methods' folders; the report points at them from where it is.
            up = os.path.relpath(out_dir, folder / "eval")
            concepts_with_base = tuple(
                dataclasses.replace(
                    c,
                    base=_seen_from(up, "base", c.name, base),
                    base_other=_seen_from(up, "base_other", c.name, base_other),
                )
                for c in report.concepts
            )
            report = dataclasses.replace(report, concepts=concepts_with_base, settings=settings.run)
            report.save(folder / "eval" / "evaluation.json")
        results.append(MethodResult(budget, report))
    if progress is not None:
        progress("done", total, total)
    comparison = Comparison(settings=settings, base_model=base_name, results=tuple(results))
    comparison.save(out_dir)
    return comparison
