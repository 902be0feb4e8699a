"""The scoring commands: `evaluate` (trained concepts alone and composed) and `compare` (methods at matched
budgets), with the options they share and the per-concept lines `evaluate` prints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .flags import compare_train_flags, given, option_settings, setting_flags
from .runtime import base_pipeline, device, guidance


def _scores_text(scores) -> str:
    """ "CLIP-T 0.2810  CLIP-I 0.3340  identity 0.83  context 0.92" (identity only in runs of two or more
    concepts, context only on prompts in the world's grammar)."""
    text = f"CLIP-T {scores.clip_t:.4f}  CLIP-I {scores.clip_i:.4f}"
    if scores.identity is not None:
        text += f"  identity {scores.identity:.2f}"
    return text if scores.context is None else f"{text}  context {scores.context:.2f}"


def _scoring(args: argparse.Namespace):
    """(device, pipeline, scorer, run settings) from the shared options; the scorer loads before the base, so
    missing CLIP weights fail before anything else is loaded."""

    from ..evaluation import RunSettings, preset
    from ..evaluation.run_settings import OTHER_WORDS
    from ..generate import SamplingSettings
    from ..world.scoring import WorldScorer

    where = device(args)
    overrides: dict[str, object] = {}
    if args.backbone:
        overrides["backbone"] = args.backbone
    if args.weights:
        overrides["weights"] = None if args.weights.lower() == "none" else args.weights
    settings = RunSettings(
        prompt_set=args.prompts,
        images_per_prompt=args.images,
        seed=args.seed,
        sampling=SamplingSettings(steps=args.steps, guidance=guidance(args)),
        before=not args.no_base,
        composed=not getattr(args, "no_composed", False),
        fuse=not getattr(args, "live", False),
        force=getattr(args, "force", False),
        # Drift is read against the base with the same words: without the base, their images would say nothing.
        other_words=() if args.no_other_words or args.no_base else _words(args.other_words) or OTHER_WORDS,
    )
    scorer = WorldScorer(preset(args.conventions, **overrides), device=where)
    pipe = base_pipeline(args)
    return pipe, scorer, settings


def _words(text: str | None) -> tuple[str, ...]:
    """'qorb,vlok' -> ('qorb', 'vlok'); None -> ()."""
    return tuple(word.strip() for word in text.split(",")) if text else ()


def _print_progress(message: str, done: int, total: int) -> None:
    if message != "done":
        print(f"[{done + 1}/{total}] {message}", file=sys.stderr)


def _parse_evaluated(items: list[str]):
    """'kettle.safetensors=concepts/kettle[@quick-live]' -> EvalConcept; the reference folder is required, the
    prompt set after '@' is optional (default: --prompts)."""
    from ..errors import ConfigError
    from ..evaluation import EvalConcept, load_prompt_set, prompt_sets

    parsed = []
    for item in items:
        file, sep, folder = item.partition("=")
        if not sep or not file or not folder:
            raise ConfigError(
                f"{item!r} names no reference folder: write FILE=FOLDER, e.g. "
                "runs/a/kettle.safetensors=concepts/kettle (the folder of the concept's own images)"
            )
        prompt_set = None
        head, at, tail = folder.rpartition("@")
        if at and (tail in prompt_sets() or not Path(folder).exists()):
            load_prompt_set(tail)  # an unknown set name fails here, listing the known ones
            folder, prompt_set = head, tail
        parsed.append(EvalConcept(Path(file), Path(folder), prompt_set=prompt_set))
    return parsed


def run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_concepts, reference_images
    from ..evaluation.results import RETENTION_MIN_SEMS, format_ratio
    from ..formats import read_adapter
    from ..pipeline import base_name

    concepts = _parse_evaluated(args.concepts)
    for concept in concepts:  # cheap checks first: a typo fails before CLIP and the base are loaded
        read_adapter(concept.file)
        reference_images(concept.references)
    pipe, scorer, settings = _scoring(args)
    report = evaluate_concepts(
        pipe,
        concepts,
        scorer,
        args.out,
        base_name=base_name(args.base),
        settings=settings,
        progress=_print_progress,
    )
    unreadable = False
    for result in report.concepts:
        if result.base is not None:
            print(f"{result.name:<12} base      {_scores_text(result.base)}")
        line = f"{result.name if result.base is None else '':<12} alone     {_scores_text(result.alone)}"
        if result.base is not None:
            line += f"  gain T {result.gain('clip_t'):+.4f} I {result.gain('clip_i'):+.4f}"
        print(line)
        if result.drift("clip_i") is not None:
            sem = result.drift_sem("clip_i")
            print(
                f"{'':<12} drift     CLIP-I {result.drift('clip_i'):+.4f}{'' if sem is None else f' +- {sem:.4f}'} "
                f"with other words in the token's place ({result.base_other.clip_i:.4f} on the base, "
                f"{result.alone_other.clip_i:.4f} tuned)"
            )
        if result.composed is not None:
            retention = {metric: result.retention(metric) for metric in ("clip_t", "clip_i")}
            unreadable |= None in retention.values()
            print(
                f"{'':<12} composed  {_scores_text(result.composed)}  "
                f"retention T {format_ratio(retention['clip_t'])} I {format_ratio(retention['clip_i'])}"
            )
    if unreadable:
        print(
            f"retention n/a: the alone mean is not {RETENTION_MIN_SEMS:g} standard errors above zero, so a ratio "
            "to it would be noise"
        )
    c = report.conventions
    print(f"conventions: {c.backbone} {c.weights or 'random init'} ({c.preset_name or 'custom'})")
    print(f"report: {Path(args.out) / 'evaluation.json'}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ..callbacks import ProgressBar
    from ..concept import load_concepts
    from ..config import TrainConfig
    from ..evaluation import CompareConcept, CompareSettings, compare_methods
    from ..pipeline import base_name

    # Concept folders give only the references: training is the same for every method, from the flags alone.
    train = TrainConfig(**given(args, compare_train_flags()), seed=args.seed)
    pipe, scorer, run_settings = _scoring(args)
    concepts = load_concepts(args.concepts, min_size=train.resolution, tokenizer=pipe.tokenizer)
    settings = CompareSettings(
        methods=tuple(args.method or ("lora", "sbora_fa")),
        rank=args.rank,
        rule=args.rank_rule,
        options=given(args, setting_flags(option_settings())),
        targets=args.targets,
        train=train,
        run=run_settings,
    )
    comparison = compare_methods(
        pipe,
        [CompareConcept(concept, concept.folder) for concept in concepts],
        scorer,
        args.out,
        base_name=base_name(args.base),
        settings=settings,
        callbacks=[] if args.quiet else [ProgressBar(leave=False)],
        progress=_print_progress,
        resume=args.resume,
    )
    print(comparison.markdown())
    out = Path(args.out)
    print(f"table: {out / 'comparison.md'}  csv: {out / 'comparison.csv'}  json: {out / 'comparison.json'}")
    print(f"chart: {out / 'comparison.png'}")
    return 0
