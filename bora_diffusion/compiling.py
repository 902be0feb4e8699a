"""Opt-in `torch.compile` of the UNet (`--compile`, `compile=True`), with one clear line where it cannot run.

The UNet is compiled in place (`nn.Module.compile`), so its `state_dict` keys stay what they were: checkpoints,
resume and saved files do not see a `_orig_mod.` prefix. Whether the compiler works is probed once, up front, on a
tiny function: inductor needs a C++ compiler on the CPU (and Triton on the GPU), and a run that found out at its
first step would fail mid-way. Where the probe fails, training and generation go on uncompiled and say why on
stderr, once.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# inductor, torch's default; tests swap in "aot_eager", which traces the same graphs (our autograd Functions
# included) without building C++ kernels, so a test does not wait minutes for the compiler.
BACKEND = "inductor"


@functools.cache
def compile_problem(backend: str = BACKEND) -> str | None:
    """Why `torch.compile` with `backend` cannot run here, in a line, or None when it can."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (it needs torch 2.0 or later)"
    try:
        probe = torch.compile(lambda x: x * 2 + 1, backend=backend, fullgraph=True)
        if not torch.equal(probe(torch.ones(4)), torch.full((4,), 3.0)):
            return f"the {backend} backend computed a wrong result on a probe"
    except Exception as err:  # any failure of the compiler stack means: do not compile
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        return f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
    finally:
        torch._dynamo.reset()
    return None


def compile_unet(unet: nn.Module, *, what: str) -> bool:
    """Compile `unet`'s forward in place for `what` ("training", "generation"); True if it was compiled.

    Where the compiler cannot run, one line on stderr says why and the UNet stays as it was.
    """
    problem = compile_problem(BACKEND)
    if problem is not None:
        print(
            f"warning: --compile: torch.compile cannot run here ({problem}); {what} goes on uncompiled. "
            "Install a C++ compiler (gcc or clang; MSVC on Windows) or leave out --compile",
            file=sys.stderr,
        )
        return False
    unet.compile(backend=BACKEND)
    return True


def uncompile(unet: nn.Module) -> None:
    """Undo `compile_unet`: the UNet's forward runs eagerly again (the compiled graphs are dropped)."""
    unet._compiled_call_impl = None  # what nn.Module.compile sets; None is its eager default


@contextmanager
def compiled_for(unet: nn.Module, enabled: bool, *, what: str) -> Iterator[bool]:
    """Within the block `unet` runs compiled when `enabled` (and the compiler can run); eager again after."""
    compiled = enabled and compile_unet(unet, what=what)
    try:
        yield compiled
    finally:
        if compiled:
            uncompile(unet)
