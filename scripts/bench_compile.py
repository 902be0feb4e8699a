"""--compile measured: UNet training steps and denoising steps, compiled (torch.compile, inductor) against not.

The UNet runs as training and generation run it: a training step is forward, backward and an AdamW step on one
concept's sbora_fa adapter (batch 1, the trainer's noise-prediction shape); a denoising step is one no-grad UNet
forward at batch 2 (classifier-free guidance). Compile time (the first compiled call, less one steady step) is
reported apart from the steady-state step time; both variants run in this one process, side by side, with the
load average printed, so the ratio is fair on a busy machine.

    python scripts/bench_compile.py                   # the embedded base, on the CPU
    python scripts/bench_compile.py --sd15 --device cuda --resolution 512
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bora_diffusion import AdapterConfig
from bora_diffusion.compiling import compile_problem, compile_unet
from bora_diffusion.inject import inject, mark_trainable, set_active
from bora_diffusion.pipeline import load_base
from bora_diffusion.threads import use_threads


def unet_inputs(unet, batch: int, side: int, device: str) -> tuple[torch.Tensor, ...]:
    c = unet.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c.in_channels, side, side, generator=g).to(device)  # (B, C, h, w) latents
    t = torch.full((batch,), 500, device=device)  # (B,) timesteps
    text = torch.randn(batch, 77, c.cross_attention_dim, generator=g).to(device)  # (B, 77, D) text states
    return x, t, text


def timed(step, count: int, device: str) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds of each of the next `count`)."""

    def once() -> float:
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = once()
    return first, [once() for _ in range(count)]


def measure(unet, kind: str, compiled: bool, args) -> tuple[float, float]:
    """(compile seconds, median steady step seconds) of `kind` ("train" or "denoise")."""
    torch._dynamo.reset()
    model = compile_unet(unet) if compiled else unet
    side = args.resolution // 8
    if kind == "train":
        unet.train()
        x, t, text = unet_inputs(unet, 1, side, args.device)
        optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            model(x, t, encoder_hidden_states=text).sample.float().pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    else:
        unet.eval()
        x, t, text = unet_inputs(unet, 2, side, args.device)

        def step() -> None:
            with torch.no_grad():
                model(x, t, encoder_hidden_states=text)

    first, steady = timed(step, args.steps, args.device)
    median = statistics.median(steady)
    return max(first - median, 0.0), median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd15", action="store_true", help="the SD-1.5-shaped UNet (scripts/sd15_shaped.py)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=64, help="image side in px (latents are 1/8)")
    parser.add_argument("--steps", type=int, default=20, help="steady steps timed after the first")
    args = parser.parse_args()
    if args.sd15:
        from sd15_shaped import write_pipeline

        folder = Path(tempfile.mkdtemp()) / "sd15"
        pipe = load_base(str(write_pipeline(folder)), device=args.device)
    else:
        pipe = load_base(device=args.device)
    unet = pipe.unet
    threads = use_threads(unet)
    inject(unet, AdapterConfig(method="sbora_fa", rank=4), name="c")
    set_active(unet, ["c"])
    mark_trainable(unet, ["c"])
    problem = compile_problem(torch.device(args.device).type)
    print(f"torch {torch.__version__}, {args.device}, {threads} thread(s), load before {os.getloadavg()[0]:.2f}, "
          f"inductor: {problem or 'available'}")  # fmt: skip
    print("| step | uncompiled ms | compiled ms | compiled / uncompiled | compile s |")
    print("|---|---|---|---|---|")
    for kind in ("train", "denoise"):
        _, plain = measure(unet, kind, False, args)
        compile_s, fast = measure(unet, kind, True, args)
        print(f"| {kind} | {plain * 1e3:.1f} | {fast * 1e3:.1f} | {fast / plain:.2f}x | {compile_s:.0f} |")
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
