"""The `train` command: concept folders in, adapter files out, and the hint for resuming an interrupted run."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .flags import TRAIN_FLAGS, adapter_flag_names, adapter_setting
from .runtime import base_pipeline, process_rank


def run_train(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from ..callbacks import ProgressBar, TensorBoardLog
    from ..concept import DEFAULT_MIN_SIZE, load_concepts
    from ..pipeline import base_name
    from ..train import train_concepts

    check_writable(args.out, folder=True, what="--out")
    min_size = args.resolution or DEFAULT_MIN_SIZE
    # Folders first, with the CLIP tokenizer SD 1.x, 2.x and SDXL share: a refusal costs no base load.
    load_concepts(args.concepts, min_size=min_size)
    pipe = base_pipeline(args)
    concepts = load_concepts(args.concepts, min_size=min_size, tokenizer=pipe.tokenizer)
    _note_transparency(concepts)
    # Flags not given are None, so the concept's own values stand under them.
    adapter_flags = {key: getattr(args, key) for key in adapter_flag_names()}
    train_flags = {key: getattr(args, key) for key in TRAIN_FLAGS}
    default_method = adapter_setting("method").default
    jobs = []
    for concept in concepts:
        adapter = concept.train.adapter_config(default_method=default_method, **adapter_flags)
        config = concept.train.train_config(**train_flags)
        if not config.sample_prompts and config.sample_every:
            config = dataclasses.replace(
                config, sample_prompts=tuple(concept.fill(p) for p in concept.prompts.sample_prompts)
            )
        jobs.append((concept, adapter, config))
    main_process = process_rank() == 0  # under a multi-process launch one bar, one log, one report
    callbacks = [] if args.quiet or not main_process else [ProgressBar()]
    if args.tensorboard and main_process:
        callbacks.append(TensorBoardLog(Path(args.out) / "logs"))
    try:
        paths = train_concepts(
            pipe,
            jobs,
            out_dir=args.out,
            base_name=base_name(args.base),
            callbacks=callbacks,
            resume=args.resume,
        )
    except KeyboardInterrupt:
        if main_process:
            print(_interrupted_message(args), file=sys.stderr)
        return 130
    if not main_process:
        return 0
    for (concept, adapter, config), path in zip(jobs, paths, strict=True):
        token = f", token {concept.token!r} trained too" if config.train_embedding else ""
        print(f"{concept.name}: {adapter.method} rank {adapter.rank}, {config.steps} steps{token} -> {path}")
    print(f"slots: {Path(args.out) / 'slots.json'}")
    return 0


def _note_transparency(concepts) -> None:
    """Say which images training flattens onto white (data.flatten), so no one wonders at the background."""
    from PIL import Image

    from ..data import has_transparency

    for concept in concepts:
        flat = []
        for image in concept.images:
            with Image.open(image) as opened:
                if has_transparency(opened):
                    flat.append(image.name)
        if flat:
            print(
                f"{concept.name}: {', '.join(flat)} have transparent pixels: flattened onto white",
                file=sys.stderr,
            )


def _interrupted_message(args: argparse.Namespace) -> str:
    from ..train import CHECKPOINTS, newest_checkpoint

    root = Path(args.out) / CHECKPOINTS
    steps = [found for folder in sorted(root.glob("*")) if (found := newest_checkpoint(folder)) is not None]
    argv = " ".join(getattr(args, "argv", None) or ["train", *args.concepts, "--out", str(args.out)])
    resume = argv if "--resume" in argv.split() else f"{argv} --resume"
    if not steps:
        return (
            f"interrupted before the first checkpoint; nothing to resume: run `bora-diffusion {argv}` again"
        )
    step = max(int(path.name.split("-")[1]) for path in steps)
    return f"interrupted; the checkpoint of step {step} in {root} is intact; resume with `bora-diffusion {resume}`"
