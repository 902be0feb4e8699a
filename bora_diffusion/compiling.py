"""torch.compile for the UNet, opt-in (`--compile`, `compile=True`), with one clear fallback where it cannot run.

Inductor, torch.compile's default backend, writes C++ (CPU) or Triton (GPU) kernels at the first call, so it
needs a working C++ compiler (g++ or clang; MSVC's cl on Windows) and a torch whose dynamo runs on this Python
and platform. Where any of that is missing the failure would otherwise come deep inside the first training or
denoising step, as a long traceback; instead `compile_problem` compiles and runs a tiny function once per device
type and backend, up front, and a run that cannot compile goes on uncompiled after one line on stderr that says
why and how to fix it.

Training compiles a wrapper (`compile_unet`), so the pipeline's own UNet, its module paths and its state dict
keys stay as they were (no `_orig_mod.` prefix in checkpoints or adapter files); generation compiles the
pipeline's UNet in place (`compile_pipeline`), so the pipeline keeps the same object and its paths too.
The adapters' autograd Functions (adapters/fast.py) trace without graph breaks: the tiny base's UNet with an
sbora_fa adapter is one graph (`torch._dynamo.explain`).
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import nn

BACKEND = "inductor"
FIX = (
    "install a C++ compiler (g++ or clang; MSVC's cl on Windows) and a torch whose torch.compile supports this "
    "Python and platform, or leave out --compile"
)


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) * 2 + 1  # (4,): one fused kernel, enough to need the compiler


@functools.cache
def compile_problem(device_type: str = "cpu", backend: str = BACKEND) -> str | None:
    """Why torch.compile with `backend` cannot run on `device_type` here, or None when it can (checked once)."""
    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is None or not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if hasattr(dynamo, "is_dynamo_supported") and not dynamo.is_dynamo_supported():
        return f"torch {torch.__version__}'s dynamo does not support Python {sys.version.split()[0]} on {sys.platform}"
    try:
        x = torch.arange(4.0, device=device_type)  # (4,)
        got = torch.compile(_probe, backend=backend, fullgraph=True, dynamic=False)(x)
        if not torch.equal(got.cpu(), _probe(x).cpu()):
            return "a compiled test function computed a wrong result"
    except Exception as error:  # a missing compiler, an unsupported platform...: each library raises its own
        lines = [line for line in str(error).splitlines() if line.strip()]
        return f"{type(error).__name__}: {lines[0][:160] if lines else 'no message'}"
    return None


def compile_problem_for(module: nn.Module, backend: str = BACKEND) -> str | None:
    """`compile_problem` on the device `module`'s parameters live on; the line on stderr when there is one."""
    device_type = next(module.parameters()).device.type
    problem = compile_problem(device_type, backend)
    if problem is not None:
        print(f"warning: --compile: torch.compile cannot run here ({problem}); running uncompiled. To compile, "
              f"{FIX}", file=sys.stderr)  # fmt: skip
    return problem


def compile_unet(unet: nn.Module, *, mode: str | None = None, backend: str | None = None) -> nn.Module:
    """`unet` compiled (a wrapper; `unet` itself is untouched), or `unet` itself where compiling cannot run."""
    backend = backend or BACKEND
    if compile_problem_for(unet, backend) is not None:
        return unet
    return torch.compile(unet, mode=mode, backend=backend)


def compile_pipeline(pipe, *, mode: str | None = None, backend: str | None = None) -> bool:
    """Compile `pipe.unet` in place (`nn.Module.compile`: same object, same paths and keys) unless it already
    is or compiling cannot run here; True when it is compiled afterwards."""
    unet, backend = pipe.unet, backend or BACKEND
    if getattr(unet, "_compiled_call_impl", None) is not None:
        return True
    if compile_problem_for(unet, backend) is not None:
        return False
    unet.compile(mode=mode, backend=backend)
    return True
