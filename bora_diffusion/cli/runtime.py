"""Where a command runs: this process's rank under a multi-process launch, the device and CPU threads the base runs
with, and the base's default guidance. Every group of commands shares these."""

from __future__ import annotations

import argparse
import os


def process_rank() -> int:
    """This process's rank under a launcher that starts several (accelerate launch, torchrun, mpirun); 0 when
    alone. Read from the launcher's environment, so that it needs no process group."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def device(args: argparse.Namespace) -> str:
    """Where the base runs: `--device`, else this process's GPU (under a multi-process launch, the one its local
    rank names, as accelerate assigns them), else the CPU."""
    import torch

    from ..errors import ConfigError

    if getattr(args, "device", None):
        try:
            kind = torch.device(args.device).type
        except RuntimeError:
            raise ConfigError(f"--device {args.device!r} is not a device: give cuda, cuda:N or cpu") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"--device {args.device}: no CUDA GPU is visible to torch here; use --device cpu"
            )
        return args.device
    if not torch.cuda.is_available():
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK", "")
    return f"cuda:{local_rank}" if local_rank.isdigit() else "cuda"


def base_pipeline(args: argparse.Namespace, *, on_device: bool = True):
    """The base `--base` names, on `device(args)` (or the CPU: `on_device=False`), with its CPU threads chosen for
    its size unless `--threads` says (bora_diffusion.threads)."""
    from ..pipeline import load_base
    from ..threads import use_threads

    pipe = load_base(args.base, device=device(args) if on_device else "cpu")
    use_threads(pipe.unet, getattr(args, "threads", None))
    return pipe


def guidance(args: argparse.Namespace) -> float:
    """`--guidance`, else the base's own default (3 on the embedded base, 7.5 on others)."""
    from ..pipeline import default_guidance

    return default_guidance(args.base) if args.guidance is None else args.guidance
