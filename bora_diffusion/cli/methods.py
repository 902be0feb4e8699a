"""The `methods` self-check: its table, one row per adapter method, and the rule a method must pass."""

from __future__ import annotations

import argparse
import sys

from .runtime import base_pipeline

# The largest |fused - live| output difference a method may show: fusing is exact in exact arithmetic, so what
# is left is float32 rounding, far below this.
FUSE_TOLERANCE = 1e-3

HEADER = (
    f"{'method':<11} {'layers':>6} {'trainable':>10} {'file KiB':>9} {'step s':>7} {'loss before > after':>20} "
    f"{'|fused-live|':>13} restored"
)


def passed(result) -> bool:
    """The pass rule of one `selfcheck.MethodCheck`: the UNet is restored bit for bit once the method is removed,
    the fused model equals the live one, and one training step lowers the loss."""
    return (
        result.restored_exactly
        and result.fuse_error <= FUSE_TOLERANCE
        and result.loss_after < result.loss_before
    )


def row(result) -> str:
    """One method's line of the table, aligned under HEADER."""
    return (
        f"{result.method:<11} {result.layers:>6} {result.trainable:>10,} {result.file_bytes / 1024:>9.1f} "
        f"{result.step_seconds:>7.3f} {result.loss_before:>9.4f} > {result.loss_after:<8.4f} "
        f"{result.fuse_error:>13.2e} {'bit-exact' if result.restored_exactly else 'NO'}"
    )


def run_methods(args: argparse.Namespace) -> int:
    from ..pipeline import base_name
    from ..selfcheck import check_methods

    pipe = base_pipeline(args)
    name = base_name(args.base)
    print(f"base: {name}   rank: {args.rank}   targets: {args.targets}")
    print(HEADER)
    print("-" * len(HEADER))
    results = check_methods(
        pipe.unet,
        base_name=name,
        rank=args.rank,
        targets=args.targets,
        methods=args.method,
        out_dir=args.out,
        on_result=lambda result: print(row(result)),
    )
    failed = [result.method for result in results if not passed(result)]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(results)} methods: one step lowers the loss, fused == live, UNet restored bit for bit")
    return 0
