"""The `bora-diffusion` command: thin subcommands over the library.

Every user mistake surfaces as one line `error: ...` on stderr and exit status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

# Offline by default: never hang on a model hub this machine cannot reach. A user with network access can
# export HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from . import __version__
from .errors import BoraError

BASE_HELP = "base model: 'embedded' (default, tiny, offline), a local diffusers folder, or a hub id"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BoraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bora-diffusion",
        description="Concept tuning for Stable Diffusion with adapters that merge without concept bleeding.",
    )
    parser.add_argument("--version", action="version", version=f"bora-diffusion {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    methods = commands.add_parser(
        "methods",
        help="run every adapter method once on a base UNet and print a table",
        description="For each adapter method: inject it on the base UNet, take one training step, check that the "
        "fused model equals the live one, save its file, remove it and check the UNet is restored bit for bit.",
    )
    methods.add_argument("--base", default=None, help=BASE_HELP)
    methods.add_argument("--rank", type=int, default=4, help="adapter rank r (default 4)")
    methods.add_argument(
        "--targets", default="attention", help="attention (default), cross_kv or self_attention"
    )
    methods.add_argument("--method", action="append", help="only this method (repeatable); default: all")
    methods.add_argument("--out", default=None, help="folder to keep the adapter files in (default: discard)")
    methods.set_defaults(run=run_methods)

    inspect = commands.add_parser("inspect", help="show what an adapter file holds")
    inspect.add_argument("file", help="a .safetensors adapter file written by bora-diffusion")
    inspect.set_defaults(run=run_inspect)

    slots = commands.add_parser("slots", help="show a slot ledger: which concept owns which indices")
    slots.add_argument("ledger", help="a slots.json ledger (training writes one next to its adapter files)")
    slots.set_defaults(run=run_slots)

    compose = commands.add_parser(
        "compose",
        help="check how concept files interfere, optionally fuse them and save the fused pipeline",
        description="Load concept files onto the base, report slot overlaps and interference per layer "
        "(JSON with --report, one line on screen), and with --save write the fused pipeline in diffusers layout.",
    )
    _add_concept_args(compose)
    compose.add_argument("--report", help="write the per-layer interference report to this JSON file")
    compose.add_argument("--save", help="fuse the concepts and save the whole pipeline to this folder")
    compose.set_defaults(run=run_compose)

    generate = commands.add_parser(
        "generate",
        help="generate images with concepts: every prompt with every seed, a manifest and a grid",
        description="Prompts may use the concepts' tokens, e.g. 'a photo of <zq-kettle> kettle on a table'.",
    )
    _add_concept_args(generate)
    generate.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    generate.add_argument("--seed", type=int, action="append", help="a seed (repeatable; default 0 1 2 3)")
    generate.add_argument("--negative", default="", help="negative prompt")
    generate.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    generate.add_argument(
        "--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)"
    )
    generate.add_argument("--fuse", action="store_true", help="fuse the concepts into the weights (faster)")
    generate.add_argument(
        "--out", required=True, help="output folder for the images, manifest.json and grid.png"
    )
    generate.set_defaults(run=run_generate)
    return parser


def _add_concept_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "concepts",
        nargs="*",
        metavar="FILE[:SCALE]",
        help="concept adapter files, each with an optional scale",
    )
    parser.add_argument("--base", default=None, help=BASE_HELP)
    parser.add_argument("--force", action="store_true", help="compose even if concepts share slots")


def run_methods(args: argparse.Namespace) -> int:
    from .pipeline import base_name, load_base
    from .selfcheck import check_methods

    pipe = load_base(args.base)
    name = base_name(args.base)
    layers = None
    print(f"base: {name}   rank: {args.rank}   targets: {args.targets}")
    header = f"{'method':<11} {'layers':>6} {'trainable':>10} {'file KiB':>9} {'step s':>7} {'loss before > after':>20} {'|fused-live|':>13} restored"
    print(header)
    print("-" * len(header))

    def show(result) -> None:
        nonlocal layers
        layers = result.layers
        print(
            f"{result.method:<11} {result.layers:>6} {result.trainable:>10,} {result.file_bytes / 1024:>9.1f} "
            f"{result.step_seconds:>7.3f} {result.loss_before:>9.4f} > {result.loss_after:<8.4f} {result.fuse_error:>13.2e} "
            f"{'bit-exact' if result.restored_exactly else 'NO'}"
        )

    results = check_methods(
        pipe.unet,
        base_name=name,
        rank=args.rank,
        targets=args.targets,
        methods=args.method,
        out_dir=args.out,
        on_result=show,
    )
    failed = [
        r.method
        for r in results
        if not r.restored_exactly or r.fuse_error > 1e-3 or not r.loss_after < r.loss_before
    ]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(results)} methods: one step lowers the loss, fused == live, UNet restored bit for bit")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from .formats import read_adapter

    info = read_adapter(args.file)
    params = sum(t.numel() for k, t in info.tensors.items() if not k.endswith(".index"))
    print(f"file:        {info.path}")
    print(f"concept:     {info.name}   token: {info.token or '-'}   class word: {info.class_word or '-'}")
    print(f"method:      {info.config.method}   rank: {info.config.rank}   scaling: {info.config.scaling:g}")
    print(f"config:      {info.config.to_dict()}")
    print(f"base model:  {info.base_name}   fingerprint: {info.fingerprint}")
    print(f"layers:      {len(info.layers)}   tensors: {len(info.tensors)}   values: {params:,}")
    if info.slot_space:
        slots = info.slots()
        first = next(iter(slots))
        print(
            f"slots:       {info.slot_space} space, ledger seed {info.slot_seed}; e.g. {first}: {slots[first].tolist()}"
        )
    print(f"written by:  bora-diffusion {info.library_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _parse_concepts(items: list[str]) -> list[tuple[str, float]]:
    """'dog.safetensors:0.8' -> ('dog.safetensors', 0.8); a path without ':SCALE' gets 1.0."""
    parsed = []
    for item in items:
        path, sep, scale = item.rpartition(":")
        if sep and path and _is_number(scale):
            parsed.append((path, float(scale)))
        else:
            parsed.append((item, 1.0))
    return parsed


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _composed(args: argparse.Namespace, *, fuse: bool):
    from .merge import compose
    from .pipeline import load_base

    pipe = load_base(args.base)
    report = compose(pipe.unet, _parse_concepts(args.concepts), fuse=fuse, force=args.force)
    return pipe, report


def run_compose(args: argparse.Namespace) -> int:
    from .errors import ConfigError

    if not args.concepts:
        raise ConfigError("compose needs at least one concept file")
    pipe, report = _composed(args, fuse=bool(args.save))
    print(report.summary())
    if args.report:
        report.save(args.report)
        print(f"report: {args.report}")
    if args.save:
        from .inject import bake

        bake(pipe.unet)  # plain Linears holding the fused weights: any diffusers tool can load the folder
        from .embedded import silenced_progress_bars

        with silenced_progress_bars():
            pipe.save_pretrained(args.save)
        print(f"fused pipeline: {args.save}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from .generate import SamplingSettings, generate
    from .pipeline import base_name

    pipe, report = _composed(args, fuse=args.fuse)
    settings = SamplingSettings(steps=args.steps, guidance=args.guidance, negative_prompt=args.negative)
    record = {"base_model": base_name(args.base), "fused": args.fuse, "concepts": report.concepts}
    result = generate(
        pipe, args.prompt, args.seed or [0, 1, 2, 3], args.out, settings=settings, record=record
    )
    if report.concepts:
        print(report.summary())
    print(f"{len(result.images)} images, grid {result.grid}, manifest {result.manifest}")
    return 0


def run_slots(args: argparse.Namespace) -> int:
    from .slots import SPACES, SlotLedger

    ledger = SlotLedger.load(args.ledger)
    print(f"ledger: {args.ledger}   seed: {ledger.seed}   concepts: {len(ledger.concepts())}")
    for concept in ledger.concepts():
        for space in SPACES:
            slots = ledger.slots(concept, space)
            if slots:
                layer, indices = next(iter(slots.items()))
                print(
                    f"{concept:<20} {space:<6} {len(slots):>4} layers, rank {len(indices)}; e.g. {layer}: {indices}"
                )
    return 0
