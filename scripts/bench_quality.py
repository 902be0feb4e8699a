"""Quality benchmark: every adapter method at matched budgets on the shipped world concepts, alone and composed,
beside the base model before tuning. The project's miniature of SBoRA's diffusion table (arXiv 2407.05413).

    source scripts/env.sh
    .venv/bin/python scripts/bench_quality.py --targets cross_kv --steps 600 --lock-weight 1 --train-embedding \
        --embedding-lr 5e-3 --embedding-vectors 3 --word-lock-weight 10   # all methods, the concepts' own recipe
    .venv/bin/python scripts/bench_quality.py --methods lora sbora_fa --concepts concepts/spiral-star --images 2

What runs, in order, all on the embedded default (or `--base`) and scored by the scorer's default backbone (the
shipped world CLIP) under the "default" conventions:

1. **Base before tuning**: each concept's prompts (prompt set `world`: backgrounds and companion objects, token
   included) generated with the same seeds as every method, scored against the concept's references; and again
   with made-up other words in the token's place (`--other-words`), against which each method's drift is read.
2. **Each method** (both steps are `bora_diffusion.evaluation.compare_methods`): trained on every concept at matched budgets
   (`--rank` for the first method, the others at the rank whose trainable-parameter count is nearest), then each
   concept generated alone and with all concepts composed into one model (fused), with its retention =
   composed / alone. Slot methods (sbora_fa, sbora_fb, ortho) get disjoint slots from one ledger, so composing
   them is an exact sum of non-overlapping updates; the dense methods (lora, dora, bora_block, bora_bidim) are
   composed by summing their deltas: the **lora row's composed setting is naive LoRA summing**, the baseline.
   Each concept alone is also drawn with the other words: its CLIP-I gain there is the concept's **drift**, how
   much of it other words pick up (DreamBooth's language drift; near 0 when the concept is bound to its token).

Writes `<out>/quality.md` (the summary table: means over concepts, the change over the base, retention mean and
worst concept, identity and context accuracy), `<out>/quality.json`, `<out>/quality.png` (bar chart) and everything `compare` writes
(`comparison.md` with per-concept cells, `comparison.csv`, images, per-image reports). `--resume` continues an
interrupted run from its training checkpoints; `--redraw` rewrites the quality.* files from a finished run. Numbers, the command and the machine go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from bora_diffusion.adapters import available as all_methods
from bora_diffusion.atomic import atomic_path, write_text
from bora_diffusion.concept import Concept, load_concepts
from bora_diffusion.config import TrainConfig
from bora_diffusion.evaluation import (
    CompareConcept,
    CompareSettings,
    Comparison,
    RunSettings,
    SettingScores,
    compare_methods,
)
from bora_diffusion.evaluation.chart import bar_panels
from bora_diffusion.evaluation.run_settings import OTHER_WORDS
from bora_diffusion.generate import SamplingSettings
from bora_diffusion.inject import TARGET_PRESETS
from bora_diffusion.pipeline import EMBEDDED_GUIDANCE, base_name, load_base
from bora_diffusion.world.scoring import WorldScorer as ClipScorer
from bora_diffusion.world.vocabulary import SHAPES

REPO = Path(__file__).resolve().parent.parent


def world_concepts() -> list[Path]:
    """The shipped concept folders the world CLIP can read: those whose class word is one of the world's shapes
    (kettle and robot are photo-style examples for real checkpoints; their class words are not world words)."""
    folders = sorted(p.parent for p in (REPO / "concepts").glob("*/concept.toml"))
    return [folder for folder in folders if _class_word(folder) in SHAPES]


def _class_word(folder: Path) -> str:
    return tomllib.loads((folder / "concept.toml").read_text(encoding="utf-8")).get("class_word", "")


def _mean_sem(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None)


def summary_rows(base: dict[str, SettingScores], comparison: Comparison) -> list[dict[str, Any]]:
    """One row per model: means over concepts alone and composed, change over the base, retention."""
    names = list(base)
    base_t = statistics.fmean(base[n].clip_t for n in names)
    base_i = statistics.fmean(base[n].clip_i for n in names)
    rows: list[dict[str, Any]] = [
        {
            "model": "base (before tuning)",
            "rank": None,
            "params": 0,
            "clip_t": base_t,
            "clip_i": base_i,
            "identity": _mean_of([base[n] for n in names], "identity"),
            "context": _mean_of([base[n] for n in names], "context"),
        }
    ]
    for result in comparison.results:
        concepts = {c.name: c for c in result.report.concepts}
        row: dict[str, Any] = {
            "model": result.budget.method,
            "rank": result.budget.rank,
            "params": result.budget.trainable_params,
            "clip_t": statistics.fmean(concepts[n].alone.clip_t for n in names),
            "clip_i": statistics.fmean(concepts[n].alone.clip_i for n in names),
            "identity": _mean_of([concepts[n].alone for n in names], "identity"),
            "context": _mean_of([concepts[n].alone for n in names], "context"),
        }
        row["delta_t"], row["delta_i"] = row["clip_t"] - base_t, row["clip_i"] - base_i
        if row["context"] is not None and rows[0]["context"] is not None:
            row["delta_context"] = row["context"] - rows[0]["context"]
        # Per concept: how far above its own base score the tuned model got (the personalization gain).
        row["gain_i_min"] = min(concepts[n].gain("clip_i") for n in names)
        drift = [concepts[n].drift("clip_i") for n in names]
        if None not in drift:  # the same gain with other words in the token's place: language drift
            row["drift_i"] = statistics.fmean(drift)
            row["drift_i_max"] = max(drift)
            row["drift_i_worst"] = names[drift.index(row["drift_i_max"])]
        if all(concepts[n].composed is not None for n in names):
            row["clip_t_composed"] = statistics.fmean(concepts[n].composed.clip_t for n in names)
            row["clip_i_composed"] = statistics.fmean(concepts[n].composed.clip_i for n in names)
            row["identity_composed"] = _mean_of([concepts[n].composed for n in names], "identity")
            row["context_composed"] = _mean_of([concepts[n].composed for n in names], "context")
            # Ratio of the means: per-concept ratios blow up when a concept's alone score is near zero.
            row["retention_i"] = row["clip_i_composed"] / row["clip_i"] if row["clip_i"] > 0 else None
            row["retention_t"] = row["clip_t_composed"] / row["clip_t"] if row["clip_t"] > 0 else None
            retention = [concepts[n].retention("clip_i") for n in names]
            known = [r for r in retention if r is not None]
            row["retention_i_min"] = min(known) if known else None
            row["retention_i_worst"] = names[retention.index(row["retention_i_min"])] if known else None
        rows.append(row)
    return rows


def _mean_of(scores: list[SettingScores], field: str) -> float | None:
    """The mean "identity" or "context" over concepts; None where one of them has none."""
    values = [getattr(s, field) for s in scores]
    return None if None in values else statistics.fmean(values)


def _fmt(value: Any, spec: str = ".3f", signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+{spec}}" if signed else f"{value:{spec}}"


def markdown(rows: list[dict[str, Any]], comparison: Comparison, concepts: int, wall_s: float) -> str:
    run = comparison.settings.run
    lines = [
        f"{concepts} concepts; {comparison.settings.rule_text()}. Prompt set `{run.prompt_set}`, "
        f"{run.images_per_prompt} seeds per prompt, {run.sampling.steps} DDIM steps, guidance "
        f"{run.sampling.guidance:g}; {wall_s / 60:.0f} min in all. Means over the concepts.",
        "",
        "**Each concept alone** (gain = tuned - base, same prompts and seeds; drift = the CLIP-I gain again with "
        f"other words in the token's place, every prompt with each of {', '.join(run.other_words)}: what other "
        "words pick up of the concept)",
        "",
        "| model | rank | params | CLIP-T | CLIP-I | CLIP-T vs base | CLIP-I vs base | worst concept's CLIP-I gain "
        "| drift | worst concept's drift | identity | context (vs base) |",
        "|" + "---|" * 12,
    ]
    for row in rows:
        cells = [row["model"], "-" if row["rank"] is None else str(row["rank"]), f"{row['params']:,}"]
        cells += [_fmt(row["clip_t"]), _fmt(row["clip_i"]), _fmt(row.get("delta_t"), signed=True)]
        cells += [_fmt(row.get("delta_i"), signed=True), _fmt(row.get("gain_i_min"), signed=True)]
        worst_drift = row.get("drift_i_max")
        cells.append(_fmt(row.get("drift_i"), signed=True))
        cells.append("-" if worst_drift is None else f"{worst_drift:+.3f} ({row['drift_i_worst']})")
        cells.append(_fmt(row.get("identity"), ".2f"))
        context, delta = _fmt(row.get("context"), ".2f"), row.get("delta_context")
        cells.append(context if delta is None else f"{context} ({delta:+.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"**All {concepts} composed into one model** (fused). Retention = composed mean / alone mean; the lora row is "
        "naive LoRA summing, the slot methods sum disjoint slots of one ledger. Identity = share of a concept's "
        f"images that match its own references best among the {concepts} concepts' (chance {1 / concepts:.2f}). "
        "Context = share of the prompts' background and companion attributes the world CLIP reads right.",
        "",
        "| model | CLIP-T composed | CLIP-I composed | retention T | retention I | worst concept's retention I "
        "| identity alone | identity composed | context alone | context composed |",
        "|" + "---|" * 10,
    ]
    for row in rows[1:]:
        worst = row.get("retention_i_min")
        cells = [row["model"], _fmt(row.get("clip_t_composed")), _fmt(row.get("clip_i_composed"))]
        cells += [_fmt(row.get("retention_t")), _fmt(row.get("retention_i"))]
        cells.append("-" if worst is None else f"{worst:.3f} ({row['retention_i_worst']})")
        cells += [_fmt(row.get("identity"), ".2f"), _fmt(row.get("identity_composed"), ".2f")]
        cells += [_fmt(row.get("context"), ".2f"), _fmt(row.get("context_composed"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(base: dict[str, SettingScores], comparison: Comparison):
    """CLIP-T, CLIP-I, identity and context per model (means over concepts, error bars: standard error over
    concepts); the base as one bar, each method alone (solid) and composed (light). Identity and context are
    drawn when every concept has them: CLIP-I alone cannot tell a kept concept from a shared patchwork."""
    names = list(base)
    groups = ["base", *(r.budget.method for r in comparison.results)]
    metrics = [("clip_t", "CLIP-T (text alignment)"), ("clip_i", "CLIP-I (image alignment)")]
    metrics += [
        (metric, title)
        for metric, title in (
            ("identity", f"identity (chance {1 / len(names):.2f})"),
            ("context", "context (background, companion)"),
        )
        if all(getattr(base[n], metric) is not None for n in names)
    ]
    panels = []
    for metric, title in metrics:
        values: dict[str, list[float | None]] = {}
        errors: dict[str, list[float | None]] = {}
        mean, sem = _mean_sem([getattr(base[n], metric) for n in names])
        values["base"], errors["base"] = [mean, None], [sem, None]
        for result in comparison.results:
            concepts = {c.name: c for c in result.report.concepts}
            alone = _mean_sem([getattr(concepts[n].alone, metric) for n in names])
            composed_scores = [concepts[n].composed for n in names]
            composed = (
                _mean_sem([getattr(s, metric) for s in composed_scores])
                if all(composed_scores)
                else (None, None)
            )
            values[result.budget.method] = [alone[0], composed[0]]
            errors[result.budget.method] = [alone[1], composed[1]]
        panels.append((title, values, errors))
    series = [("alone (base: before tuning)", 0, False), (f"all {len(names)} composed", 0, True)]
    return bar_panels(panels, groups, series, title="bora-diffusion quality benchmark (world concepts)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--concepts", nargs="+", type=Path, help="concept folders (default: the world concepts)"
    )
    parser.add_argument("--methods", nargs="+", default=list(all_methods()), help="default: every method")
    parser.add_argument(
        "--rank",
        type=int,
        default=2,
        help="rank of the first method; the others match params (default 2: lora at 2 puts the slot methods at "
        "rank 4, the world concepts' own)",
    )
    parser.add_argument(
        "--targets", default="attention", help=f"adapter target preset: {', '.join(TARGET_PRESETS)}"
    )
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="training steps per concept")
    parser.add_argument("--lr", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument(
        "--train-embedding", action="store_true", help="train each concept's token embedding too (ED-LoRA)"
    )
    parser.add_argument(
        "--embedding-lr", type=float, default=None, help="the token embedding's learning rate (default: --lr)"
    )
    parser.add_argument(
        "--embedding-vectors",
        type=int,
        default=1,
        help="vectors per trained token embedding (textual inversion's number of vectors)",
    )
    parser.add_argument(
        "--prior-weight",
        type=float,
        default=0.0,
        help="prior preservation weight for every concept (0 = off)",
    )
    parser.add_argument(
        "--lock-weight",
        type=float,
        default=0.0,
        help="lock the prompts without each concept's token, for every method (0 = off; bora_diffusion.locking)",
    )
    parser.add_argument(
        "--word-lock-weight",
        type=float,
        default=0.0,
        help="with --train-embedding: keep the other words of each concept's captions (0 = off)",
    )
    parser.add_argument(
        "--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting (default: off)"
    )
    parser.add_argument(
        "--seed", type=int, default=TrainConfig.seed, help="training seed: slots, initialization, noise"
    )
    parser.add_argument("--images", type=int, default=4, help="seeds per prompt")
    parser.add_argument("--sampling-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=EMBEDDED_GUIDANCE)
    parser.add_argument(
        "--other-words",
        nargs="+",
        default=list(OTHER_WORDS),
        help=f"drawn in the token's place to measure drift (default {' '.join(OTHER_WORDS)})",
    )
    parser.add_argument("--base", default=None, help="default: the embedded world base")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_quality")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--redraw", action="store_true", help="rewrite quality.* from a finished run in --out"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.redraw:  # the tables and chart again from a finished run's files, nothing trained or drawn
        comparison = Comparison.load(args.out / "comparison.json")
        previous = json.loads((args.out / "quality.json").read_text())
        return write_outputs(comparison, args.out, previous["command"], previous["wall_s"])

    folders = args.concepts or world_concepts()
    concepts: list[Concept] = load_concepts(folders)
    pipe = load_base(args.base)
    name = base_name(args.base)
    scorer = ClipScorer("default", device="cpu")
    run = RunSettings(
        prompt_set="world",
        images_per_prompt=args.images,
        sampling=SamplingSettings(steps=args.sampling_steps, guidance=args.guidance),
        other_words=tuple(args.other_words),
    )
    train = TrainConfig(
        steps=args.steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        train_embedding=args.train_embedding,
        embedding_learning_rate=args.embedding_lr,
        embedding_vectors=args.embedding_vectors,
        prior_weight=args.prior_weight,
        lock_weight=args.lock_weight,
        word_lock_weight=args.word_lock_weight,
        snr_gamma=args.snr_gamma,
        seed=args.seed,
    )
    settings = CompareSettings(
        methods=tuple(args.methods), rank=args.rank, targets=args.targets, train=train, run=run
    )
    started = time.time()

    def progress(message: str, done: int, total: int) -> None:
        print(f"[{time.time() - started:6.0f} s] {done}/{total} {message}", flush=True)

    comparison = compare_methods(
        pipe,
        [CompareConcept(concept, concept.folder) for concept in concepts],
        scorer,
        args.out,
        base_name=name,
        settings=settings,
        progress=progress,
        resume=args.resume,
    )
    command = "python scripts/bench_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return write_outputs(comparison, args.out, command, time.time() - started)


def write_outputs(comparison: Comparison, out: Path, command: str, wall: float) -> int:
    """quality.md, quality.json and quality.png from a comparison whose reports carry the base setting."""
    base = {c.name: c.base for c in comparison.results[0].report.concepts}  # before tuning, scored once
    rows = summary_rows(base, comparison)
    table = markdown(rows, comparison, len(base), wall)
    write_text(out / "quality.md", table)
    record = {
        "command": command,
        "base_model": comparison.base_model,
        "concepts": list(base),
        "base": {n: s.__dict__ for n, s in base.items()},
        "rows": rows,
        "wall_s": round(wall, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    write_text(out / "quality.json", json.dumps(record, indent=1) + "\n")
    with atomic_path(out / "quality.png") as tmp:
        chart(base, comparison).save(tmp, format="PNG", optimize=True)
    print(table)
    print(f"wrote {out / 'quality.md'}, quality.json, quality.png and comparison.* ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
