"""How many CPU threads torch runs a model with: one for a tiny model, torch's own choice for the rest.

A tiny model's ops (the embedded base's UNet has 2.4M parameters and works on 8 x 8 latents) are too small to
share among threads, and on a busy machine sharing them costs far more than it gains: every op ends at a barrier
where OpenMP threads wait for the slowest, and a thread the kernel has just given to another process's turn keeps
the others waiting a whole time slice, thousands of times a step. Measured on 2 cores (docs/benchmarks.md, "CPU
threads on a busy machine", `scripts/bench_threads.py`): idle, 2 threads train the main job's first concept
1.17x faster than 1; beside two busy processes, 1 thread is 2.6x faster than 2, and 1.9x slower than idle where
2 threads are 4.9x slower. A large model's GEMMs
are long enough to pay for the barriers, so it keeps torch's default. `--threads N` (or OMP_NUM_THREADS, which
torch reads itself) decides instead.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import ConfigError

TINY_MODEL_PARAMETERS = 100_000_000  # SD 1.5's UNet has 860M, the embedded base's 2.4M


def threads_for(model: nn.Module, requested: int | None = None) -> int | None:
    """The intra-op thread count to run `model` with: `requested` when given, 1 for a tiny model, None (leave
    torch's choice) for a large model or when the user set OMP_NUM_THREADS."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"--threads must be a positive integer, got {requested!r}")
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return 1 if sum(p.numel() for p in model.parameters()) < TINY_MODEL_PARAMETERS else None


def use_threads(model: nn.Module, requested: int | None = None) -> int:
    """Set torch's intra-op thread count for `model` (see `threads_for`) and return the count in use."""
    count = threads_for(model, requested)
    if count is not None:
        torch.set_num_threads(count)
    return torch.get_num_threads()
