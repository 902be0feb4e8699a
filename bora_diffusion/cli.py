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
    return parser


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
