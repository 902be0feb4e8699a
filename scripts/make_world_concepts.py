"""Write the world's novel concepts into concepts/: objects the world's base model has never seen.

    .venv/bin/python scripts/make_world_concepts.py [--out concepts] [--seed 0]

One folder per concept of `bora_diffusion.world.NOVEL_CONCEPTS` (see novel.py for what each looks like), each
with 8 RGB PNGs of 64 px, a caption per image and concept.toml. Views vary in turn, mirror image, size,
position and background (the world's own background vocabulary, so captions can name it: "a large {token}
{class_word} on a dotted pink background"); two of the eight are small. The class word is the vocabulary
shape the concept is a kind of, which the base model knows; the token is a made-up word whose BPE pieces no
other shipped concept shares (kettle's "qwiv" and robot's "bxj" included).

Every draw comes from a numpy Generator seeded by the concept's name and --seed: a second run writes
byte-identical files. The output is checked with `load_concepts` (with kettle and robot, when present) before
the script reports success. The existing folders are left alone.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bora_diffusion.atomic import atomic_path, write_text
from bora_diffusion.concept import Prompts, TrainDefaults, load_concepts, write_caption, write_concept_toml
from bora_diffusion.seeding import derive_seed
from bora_diffusion.world import COLORS, NOVEL_CONCEPTS, novel_concept, sample_background, sample_view

SIZE = 64
IMAGES_PER_CONCEPT = 8
SMALL_IMAGES = 2  # how many views are drawn small (the rest take the full range)
SMALL_EXTENT = (0.28, 0.34)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "concepts"
# Each concept trains its token's own embedding (ED-LoRA) at textual inversion's learning rate. On release 1 of
# the world base the embedding doubled the CLIP-I gain of a 200-step run over the adapters alone (+0.136 against
# +0.070, mean of notched-ring, spiral-star and eye-heart).
EMBEDDING_LR = 5e-3
# The adapters sit on the cross-attention keys and values only (Custom Diffusion's choice), because the concepts
# are made to be fused: with every attention projection adapted, six 400-step concepts summed into one model
# drew the same patchwork for every prompt (identity 0.19, chance 0.17; worst concept's CLIP-I retention 0.62),
# and on the keys and values they stay apart (identity 0.31 of 0.37 alone; worst retention 0.98) at a fourth of
# the parameters, for a smaller gain alone (+0.136 against +0.160). docs/benchmarks.md, "Which layers to adapt".
TARGETS = "cross_kv"
# Prompt locking (bora_diffusion.locking) keeps the keys and values of the concept's captions without its token.
# Under lock weight 1 the six concepts fused keep all of their prompt (CLIP-T retention 1.03 against 0.76,
# context 0.71 against 0.56) and their identity (0.35, against 0.31 unlocked), and alone lose less of it (CLIP-T
# -0.043 against -0.069), for less gain alone (+0.109 against +0.136 CLIP-I). Recipes that gain more (rank 8,
# 800 steps, lr 2e-3: +0.164) lose identity when fused. docs/benchmarks.md, "Prompt locking".
RANK = 4
LEARNING_RATE = 1e-3
# The token stands for 3 vectors (textual inversion's "number of vectors"): one vector gives every pixel that
# reads the token the same value, several let an object's parts read different ones. Alone that costs the prompt
# (4 vectors: CLIP-T -0.155, context 0.69 -> 0.57), because the causal text encoder lets the token rewrite every
# word after it; the word lock (bora_diffusion.locking.WordLock) keeps those words as the initial token found
# them. 3 vectors under word lock 10 for 600 steps, over training seeds 0-2: CLIP-I gain +0.139 against +0.116,
# CLIP-T +0.001 against -0.055, every concept above 0.95 of its CLIP-I fused; fused it keeps less of the prompt
# (CLIP-T retention 0.88 against 0.99). docs/benchmarks.md, "Several vectors per token".
EMBEDDING_VECTORS = 3
WORD_LOCK_WEIGHT = 10.0
# 4 images a step under prompt lock 2 for 500 steps, over training seeds 0-2 (one image a step under lock 1 for
# 600 steps before): CLIP-I gain +0.170 / +0.159 / +0.167 against +0.161 / +0.140 / +0.116, CLIP-T -0.015 against
# +0.001 on the mean, the worst fused concept's CLIP-I retention 1.020 / 1.067 / 0.974 against 0.982 / 1.069 /
# 0.980, and no more drift (what other words in the token's place pick up: -0.006 against -0.001). A larger batch
# learns more per step; the stronger lock and 100 steps fewer keep the fused concepts apart (at 600 steps the
# worst kept 0.949). docs/benchmarks.md, "Several vectors per token" and "Drift".
BATCH_SIZE = 4
LOCK_WEIGHT = 2.0
TRAIN_STEPS = 500

# Made-up tokens: none is a word of the CLIP vocabulary, and their BPE pieces are all different, from each other
# and from the world's words (zor|p, v|lek, yo|xt, gli|x, wo|zt, hu|z|d, me|fk, jor|n, ta|vr, fe|sh, mur|l,
# gor|f; the examples use q|wiv and b|xj). tests/test_world_concepts.py checks it.
TOKENS: Mapping[str, str] = {
    "spiral-star": "zorp",
    "notched-ring": "vlek",
    "eye-heart": "yoxt",
    "band-triangle": "glix",
    "quad-cross": "wozt",
    "bolt-circle": "huzd",
    "melon-circle": "mefk",
    "window-square": "jorn",
    "kite-diamond": "tavr",
    "oval-ring": "fesh",
    "bowtie-triangle": "murl",
    "sun-star": "gorf",
}


def make_concept(out: Path, name: str, seed: int) -> Path:
    """Write concept `name` into `out/name` and return the folder."""
    concept = novel_concept(name)
    folder = out / name
    rng = np.random.default_rng(derive_seed("bora-diffusion world concept", name, seed))
    used: set[str] = set()
    for index in range(IMAGES_PER_CONCEPT):
        # A background color not used yet in this folder while any is left, never one of the concept's own.
        fresh = concept.colors | used if len(concept.colors | used) < len(COLORS) else concept.colors
        view = sample_view(name, rng, background=sample_background(rng, avoid=frozenset(fresh)))
        if index < SMALL_IMAGES:
            view = dataclasses.replace(view, extent=float(rng.uniform(*SMALL_EXTENT)))
        used.add(view.background.color)
        path = folder / f"{name}_{index:02d}.png"
        with atomic_path(path) as tmp:
            view.render(SIZE).save(tmp, format="PNG")
        write_caption(path, f"a {view.size_word} {{token}} {{class_word}} on {view.background.phrase()}")
    write_concept_toml(
        folder,
        TOKENS[name],
        concept.class_word,
        description=concept.description,
        prompts=Prompts(
            instance_prompt="a {token} {class_word}",
            class_prompt="a {class_word}",
            sample_prompts=(
                "a {token} {class_word} on a blue background",
                "a small {token} {class_word} on a striped yellow background",
                "a {token} {class_word} above a small red circle on a green background",
            ),
        ),
        train=TrainDefaults(
            method="sbora_fa",
            rank=RANK,
            targets=TARGETS,
            steps=TRAIN_STEPS,
            learning_rate=LEARNING_RATE,
            batch_size=BATCH_SIZE,
            lock_weight=LOCK_WEIGHT,
            word_lock_weight=WORD_LOCK_WEIGHT,
            resolution=SIZE,
            train_embedding=True,
            embedding_learning_rate=EMBEDDING_LR,
            embedding_vectors=EMBEDDING_VECTORS,
        ),
    )
    write_text(
        folder / "README.md",
        f"# {name}\n\nNovel world concept drawn by `scripts/make_world_concepts.py` (seed {seed}); the world's "
        f"scenes never show it.\n\n{concept.description}\n\nToken `{TOKENS[name]}`, class word "
        f"`{concept.class_word}`; this file is ignored by the concept loader.\n",
    )
    return folder


def make_world_concepts(out: str | Path = DEFAULT_OUT, seed: int = 0) -> list[Path]:
    """Write every novel concept under `out`, check them together with the other shipped concepts."""
    out = Path(out)
    folders = [make_concept(out, name, seed) for name in NOVEL_CONCEPTS]
    others = [out / name for name in ("kettle", "robot") if (out / name / "concept.toml").is_file()]
    load_concepts([*others, *folders], min_size=SIZE)
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the concept folders go")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    args = parser.parse_args(argv)
    for folder in make_world_concepts(args.out, args.seed):
        print(f"{folder}: {len(list(folder.glob('*.png')))} images, token {TOKENS[folder.name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
