"""Merge benchmark: the twelve world concepts fused into one model, ours against the merge baselines, in one run.

    source scripts/env.sh
    .venv/bin/python scripts/bench_merge.py --cache /tmp/twelve-cache --out /tmp/twelve-cache/bench

1. **Training** (skipped for every file already in the cache, resumed from its checkpoints otherwise): the
   concepts with their own concept.toml [train] recipe (sbora_fa on disjoint slots of one ledger) into
   `<cache>/ours`, and again with `--method lora` at the same rank, steps and everything else into
   `<cache>/lora`, each set with one `bora-diffusion train` over all the folders, as scripts/main.sh does.
   `--train-flags "--targets attention"` trains both sets with those flags over the recipes (give such a run a
   `--cache` of its own: the cache knows files, not the flags they were trained with).
2. **Scoring**, every setting on the same prompts (prompt set `world`) and seeds, by the shipped world CLIP:
   each concept alone (ours; lora), and the twelve merged into one model: ours fused (the slots' exact sum,
   `merge.compose(fuse=True)`), naive LoRA summing (`fusion.naive_sum`), Mix-of-Show gradient fusion of the lora
   concepts (`fusion.gradient_fusion`, each concept's layer inputs recorded on its own training captions),
   LoRACLR's contrastive fusion of the lora concepts (`fusion.contrastive_fusion`, on the text states at each
   concept's token positions of its training captions), and the same gradient fusion of ours. Per setting:
   CLIP-T, CLIP-I, context accuracy and identity (the share of a concept's images that match its own references
   best among all twelve; chance 1/12); per merge, the retention of CLIP-I and identity (merged / alone over the
   concepts' means, and each concept's CLIP-I ratio) and the merge time (the fusion step only, recording
   included; every file is loaded live first).

Writes `<out>/merge.json` (every number, per concept), `<out>/merge.md` (the tables) and the images under
`<out>/<setting>/<concept>/`. Numbers, the command and the machine go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bora_diffusion.atomic import write_text
from bora_diffusion.concept import Concept, load_concepts
from bora_diffusion.evaluation.identity import identity_shares
from bora_diffusion.evaluation.images import reference_images
from bora_diffusion.evaluation.prompt_sets import fill_prompts, load_prompt_set
from bora_diffusion.fusion import (
    concept_rows,
    contrastive_fusion,
    fused_weights,
    gradient_fusion,
    naive_sum,
    record_grams,
    record_inputs,
)
from bora_diffusion.generate import SamplingSettings, generate
from bora_diffusion.inject import eject, merge
from bora_diffusion.merge import compose
from bora_diffusion.pipeline import EMBEDDED_GUIDANCE, load_base
from bora_diffusion.text import PromptEncoder
from bora_diffusion.world import NOVEL_CONCEPTS
from bora_diffusion.world.scoring import WorldScorer

ROOT = Path(__file__).resolve().parent.parent
ISSUE_RETENTION = 0.98  # issue 22: fused, at least 0.98 of the alone CLIP-I and identity
ISSUE_IDENTITY = 0.6  # and identity alone at least 0.6 on average
SETTINGS = ("ours_alone", "ours_fused", "ours_mos", "lora_alone", "lora_sum", "lora_mos", "lora_clr")
MERGES = ("ours_fused", "lora_sum", "lora_mos", "lora_clr", "ours_mos")
ALONE_OF = {
    "ours_fused": "ours_alone",
    "lora_sum": "lora_alone",
    "lora_mos": "lora_alone",
    "lora_clr": "lora_alone",
    "ours_mos": "ours_alone",
}


def train(cache: Path, folders: list[Path], label: str, flags: list[str]) -> list[Path]:
    """The concepts' files in `<cache>/<label>`, trained (or resumed) by the CLI with `flags` over their own
    recipes where any is missing."""
    out = cache / label
    files = [out / f"{folder.name}.safetensors" for folder in folders]
    if all(file.is_file() for file in files):
        return files
    command = [sys.executable, "-m", "bora_diffusion.cli", "train", *map(str, folders), "--out", str(out)]
    command += ["--checkpoint-every", "100", "--resume", "--quiet", *flags]
    subprocess.run(command, check=True)
    return files


class Bench:
    """Draws and scores one setting at a time on one base pipeline."""

    def __init__(
        self, concepts: list[Concept], out: Path, images: int, steps: int, guidance: float = EMBEDDED_GUIDANCE
    ) -> None:
        self.concepts = concepts
        self.out = out
        self.seeds = list(range(images))
        self.sampling = SamplingSettings(steps=steps, guidance=guidance)
        self.pipe = load_base(None)
        self.scorer = WorldScorer("default", device="cpu")
        templates = load_prompt_set("world")
        self.prompts = {c.name: fill_prompts(templates, c.token, c.class_word) for c in concepts}
        self.references = {c.name: reference_images(c.folder) for c in concepts}
        self.results: dict[str, dict] = {}

    def draw(self, setting: str, names: list[str] | None = None) -> dict[str, list[Path]]:
        """Every concept's prompts x seeds with the model as it is now (or `names` only)."""
        drawn = {}
        for concept in self.concepts:
            if names is None or concept.name in names:
                folder = self.out / setting / concept.name
                prompts = self.prompts[concept.name]
                drawn[concept.name] = generate(
                    self.pipe, prompts, self.seeds, folder, settings=self.sampling
                ).images
        return drawn

    def score(self, setting: str, drawn: dict[str, list[Path]], merge_seconds: float | None = None) -> None:
        per_concept = {}
        for concept in self.concepts:
            images = drawn[concept.name]
            texts = [prompt for prompt in self.prompts[concept.name] for _ in self.seeds]
            text = self.scorer.text_alignment(images, texts, tokens={concept.token: concept.class_word})
            image = self.scorer.image_alignment(images, self.references[concept.name])
            context = self.scorer.context_accuracy(images, text.texts)
            per_concept[concept.name] = {
                "clip_t": text.mean,
                "clip_i": image.mean,
                "context": None if context is None else context[0],
            }
        identity = identity_shares(self.scorer, drawn, self.references)
        for name, share in identity.items():
            per_concept[name]["identity"] = share
        means = {
            key: statistics.fmean(row[key] for row in per_concept.values())
            for key in ("clip_t", "clip_i", "identity")
        }
        self.results[setting] = {"concepts": per_concept, "means": means, "merge_seconds": merge_seconds}
        print(f"{setting}: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()), flush=True)

    def alone(self, setting: str, files: list[Path]) -> None:
        drawn = {}
        for concept, file in zip(self.concepts, files, strict=True):
            try:
                compose(self.pipe, [(file, 1.0)])
                drawn |= self.draw(setting, [concept.name])
            finally:
                eject(self.pipe.unet)
        self.score(setting, drawn)

    def merged(self, setting: str, files: list[Path], fuse: Callable[[], dict | None]) -> None:
        """Load every file live, time `fuse()` (None: it merged in place; else fused weights to put in), draw."""
        try:
            report = compose(self.pipe, [(file, 1.0) for file in files])
            self.names = list(report.concepts)
            start = time.perf_counter()
            weights = fuse()
            seconds = time.perf_counter() - start
            if weights is None:
                drawn = self.draw(setting)
            else:
                with fused_weights(self.pipe.unet, weights):
                    drawn = self.draw(setting)
        finally:
            eject(self.pipe.unet)
        self.score(setting, drawn, seconds)

    def gradient_fused(self) -> dict:
        """Mix-of-Show: each concept's layer inputs on its own training captions, one denoising step each
        (the cross-attention keys and values read the text alone, the same at every step), then least squares."""
        captions = {c.name: [c.instance_prompt(path) for path in c.images] for c in self.concepts}

        def run(name: str) -> None:
            self.pipe(
                captions[name], num_inference_steps=1, guidance_scale=EMBEDDED_GUIDANCE, output_type="latent"
            )

        grams = record_grams(self.pipe.unet, self.names, run)
        return gradient_fusion(self.pipe.unet, self.names, grams)

    def contrastive_fused(self) -> dict:
        """LoRACLR: each concept's text states at its token's positions (its vectors and the end token) on its own
        training captions, read once by the UNet so that every adapted layer records them, then the descent."""
        encoder, unet = PromptEncoder(self.pipe), self.pipe.unet
        concepts = {c.name: c for c in self.concepts}
        size = unet.config.sample_size
        latents = torch.randn(
            1, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0)
        )

        def run(name: str) -> None:
            concept = concepts[name]
            ids = encoder.tokenize([concept.instance_prompt(path) for path in concept.images])  # (N, 1, 77)
            states = encoder.encode_ids(ids).states  # (N, 77, D); recording runs without gradients
            rows = concept_rows(ids[:, 0], self.pipe.tokenizer, concept.token)  # (N, 77)
            unet(latents, 500, encoder_hidden_states=states[rows][None])  # (1, R, D): the rows alone

        inputs = record_inputs(unet, self.names, run)
        return contrastive_fusion(unet, self.names, inputs)


def retention(results: dict) -> dict:
    rows = {}
    for merged in MERGES:
        if merged not in results or ALONE_OF[merged] not in results:
            continue  # a part of a run drawn without its alone setting: --combine pairs them
        alone = results[ALONE_OF[merged]]
        ratios = {
            name: row["clip_i"] / alone["concepts"][name]["clip_i"]
            for name, row in results[merged]["concepts"].items()
        }
        rows[merged] = {
            "clip_i": results[merged]["means"]["clip_i"] / alone["means"]["clip_i"],
            "identity": results[merged]["means"]["identity"] / max(alone["means"]["identity"], 1e-9),
            "clip_t": results[merged]["means"]["clip_t"] / alone["means"]["clip_t"],
            "worst_clip_i": min(ratios.values()),
            "worst_concept": min(ratios, key=ratios.get),
        }
    return rows


def tables(results: dict, kept: dict, names: list[str]) -> str:
    chance = 1 / len(names)
    lines = [
        f"| setting | CLIP-T | CLIP-I | identity (chance {chance:.2f}) | CLIP-I kept | identity kept | worst CLIP-I kept | merge time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, result in results.items():
        means, row = result["means"], kept.get(setting)
        cells = [f"{means['clip_t']:.3f}", f"{means['clip_i']:.3f}", f"{means['identity']:.2f}"]
        if row:
            cells += [
                f"{row['clip_i']:.3f}",
                f"{row['identity']:.3f}",
                f"{row['worst_clip_i']:.3f} ({row['worst_concept']})",
            ]
            cells.append(f"{result['merge_seconds']:.2f} s")
        else:
            cells += ["", "", "", ""]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| concept | " + " | ".join(f"{s} CLIP-I / id" for s in results) + " |",
        "|---" * (len(results) + 1) + "|",
    ]
    for name in names:
        cells = [
            f"{r['concepts'][name]['clip_i']:.3f} / {r['concepts'][name]['identity']:.2f}"
            for r in results.values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache", type=Path, required=True, help="trained files: <cache>/ours and <cache>/lora"
    )
    parser.add_argument("--out", type=Path, required=True, help="images, merge.json and merge.md")
    parser.add_argument("--concepts", nargs="+", default=list(NOVEL_CONCEPTS), help="world concept names")
    parser.add_argument("--images", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=EMBEDDED_GUIDANCE,
        help=f"sampling guidance (default {EMBEDDED_GUIDANCE:g}, the embedded base's)",
    )
    parser.add_argument(
        "--train-flags",
        type=shlex.split,
        default=[],
        metavar='"FLAGS"',
        help='flags for both sets\' training, over their recipes, e.g. "--targets attention" (own --cache)',
    )
    parser.add_argument(
        "--only", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="settings to run (default: all)"
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="OUT",
        help="only write <out>/merge.* from these runs' merge.json",
    )
    args = parser.parse_args(argv)
    if args.combine:  # parts of one run drawn by parallel processes (one per core), each with its own --only
        parts = [json.loads((folder / "merge.json").read_text()) for folder in args.combine]
        results = {name: result for part in parts for name, result in part["settings"].items()}
        return report(args, argv, results, {"parts": [part["command"] for part in parts]})
    torch.set_num_threads(
        1
    )  # a tiny model: one thread stalls least on a busy machine (bora_diffusion.threads)
    folders = [ROOT / "concepts" / name for name in args.concepts]
    concepts = load_concepts(folders, min_size=64)
    ours_flags, lora_flags = args.train_flags, [*args.train_flags, "--method", "lora"]
    ours = (
        train(args.cache, folders, "ours", ours_flags) if any(s.startswith("ours") for s in args.only) else []
    )
    lora = (
        train(args.cache, folders, "lora", lora_flags) if any(s.startswith("lora") for s in args.only) else []
    )
    bench = Bench(concepts, args.out, args.images, args.steps, args.guidance)
    settings: list[tuple[str, Callable[[], None]]] = [
        ("ours_alone", lambda: bench.alone("ours_alone", ours)),
        ("lora_alone", lambda: bench.alone("lora_alone", lora)),
        ("ours_fused", lambda: bench.merged("ours_fused", ours, lambda: merge(bench.pipe.unet))),
        ("lora_sum", lambda: bench.merged("lora_sum", lora, lambda: naive_sum(bench.pipe.unet, bench.names))),
        ("lora_mos", lambda: bench.merged("lora_mos", lora, bench.gradient_fused)),
        ("lora_clr", lambda: bench.merged("lora_clr", lora, bench.contrastive_fused)),
        ("ours_mos", lambda: bench.merged("ours_mos", ours, bench.gradient_fused)),
    ]
    started = time.perf_counter()
    for name, run in settings:
        if name in args.only:
            run()
    return report(args, argv, bench.results, {"seconds": time.perf_counter() - started})


def report(args: argparse.Namespace, argv: list[str] | None, results: dict, extra: dict) -> int:
    """Write <out>/merge.json and merge.md, in the settings' order, and print the tables."""
    results = {name: results[name] for name in SETTINGS if name in results}
    kept = retention(results)
    record = {
        "command": " ".join(["scripts/bench_merge.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)",
        **extra,
        "settings": results,
        "retention": kept,
        "targets": {"retention": ISSUE_RETENTION, "identity_alone": ISSUE_IDENTITY},
    }
    write_text(args.out / "merge.json", json.dumps(record, indent=2) + "\n")
    text = tables(results, kept, args.concepts)
    write_text(args.out / "merge.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
