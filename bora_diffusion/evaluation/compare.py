"""Method comparison: train the same concepts with several adapter methods at matched budgets, evaluate each
method's concepts alone and composed, and tabulate CLIP-T / CLIP-I per method and concept.

The table has the shape of the SBoRA paper's diffusion comparison (arXiv 2407.05413, Table "multi-concept
customization"): methods as rows, text and image alignment per concept as columns, once for each concept alone
and once inside the composition of all of them, with the retention (composed / alone) that this library adds.

The pieces: `budgets.py` matches the budgets (the rank rules), `compare_settings.py` says what is compared,
`comparison.py` holds the outcome and `renderers.py` draws its tables and chart. This module runs it: each
method's concepts train one after another on disjoint slots of one `SlotLedger` (`train_concepts`), then
`evaluate_concepts` draws and scores them; the base before tuning is drawn once for all methods. Outputs under
the output folder::

    <out>/<method>/train/   adapter files, slots.json, checkpoints
    <out>/<method>/eval/    images, per-image reports, evaluation.json
    <out>/comparison.json .csv .md .png
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..callbacks import Callback
from ..errors import ConfigError
from ..inject import eject
from ..train import train_concepts
from .budgets import match_budgets
from .compare_settings import CompareConcept, CompareSettings
from .comparison import Comparison, MethodResult
from .results import SettingScores
from .run_settings import EvalConcept
from .runs import evaluate_base, evaluate_concepts
from .scorer import ClipScorer

__all__ = ["CompareProgress", "compare_methods"]

# progress(message, done, total) over the methods' train and evaluate phases.
CompareProgress = Callable[[str, int, int], None]
_DEFAULT_SETTINGS = CompareSettings()  # frozen: one instance serves every call's default


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
    settings: CompareSettings = _DEFAULT_SETTINGS,
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
