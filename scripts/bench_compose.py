"""Composition speed: fusing 10 concepts into an SD-1.5-shaped UNet, and the denoising step fused and live.

A UNet of SD 1.5's shape with random weights (scripts/sd15_shaped.py; `--tiny` for a miniature of the same layout)
gets `--concepts` concepts of one method on disjoint slots from the library's own slot ledger, injected through
`bora_diffusion.inject` with their zero factors perturbed, and saved as adapter files. Per row (method x targets):

- fuse: `inject.merge` of all concepts (what `compose(..., fuse=True)` runs after loading), the files already
  loaded; each round undone by `unmerge`, which restores the weights bit for bit.
- compose from files: `merge.compose(unet, files, fuse=True)`, what `bora-diffusion compose --save` and
  `generate --fuse` run: reading the files, the slot check, loading, the interference report and the fuse.
- the UNet's denoising step (one forward, classifier-free guidance batch 2, under no_grad as in the pipeline) for
  the bare base (plain Linears), the concepts fused (baked into plain Linears, `compose --save`'s model), 1 live
  and 5 live (the first concepts active, unmerged). The four are timed interleaved in one process, each round in
  a new seeded random order, and compared to the bare base by the median of their per-round ratios.

The fused and the live model are also checked to compute the same output (the largest difference, relative to
the output's largest magnitude). How many CPUs other processes kept busy meanwhile (from /proc/stat) and the load
average are reported with each row: on a shared machine only rows near 0 are worth comparing.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_compose.py --json /tmp/bench_compose.json
    .venv/bin/python scripts/bench_compose.py --tiny --resolution 64 --rounds 1   # the code path in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bora_diffusion.config import AdapterConfig
from bora_diffusion.formats import save_adapter
from bora_diffusion.inject import bake, eject, inject, merge, set_active, unmerge, wrappers
from bora_diffusion.merge import compose
from bora_diffusion.slots import SlotLedger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adapters import cpu_snapshot, foreign_cpus, git_commit, shared_copy

from sd15_shaped import TEXT_TOKENS, VAE_FACTOR, unet_config

ROWS = ("sbora_fa:cross_kv", "sbora_fa:attention", "lora:cross_kv", "lora:attention")
LIVE_COUNTS = (1, 5)


def tiny_unet_config() -> dict[str, Any]:
    """SD 1.5's layout (three cross-attention levels over one plain one) at a few channels, for tests."""
    return {
        **unet_config(),
        "block_out_channels": (48, 48, 64, 64),  # room for 10 concepts of rank 4 on every input
        "layers_per_block": 1,
        "cross_attention_dim": 48,
        "norm_num_groups": 8,
    }


def build_unet(tiny: bool, seed: int) -> nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**(tiny_unet_config() if tiny else unet_config()))
    return unet.requires_grad_(False).eval()


def make_inputs(unet: nn.Module, resolution: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Latents (2, 4, side, side), timesteps (2,) and text states (2, 77, cross) of one CFG step."""
    generator = torch.Generator().manual_seed(seed)
    side = resolution // VAE_FACTOR
    latents = torch.randn(2, unet.config.in_channels, side, side, generator=generator)
    text = torch.randn(2, TEXT_TOKENS, unet.config.cross_attention_dim, generator=generator)
    return latents, torch.tensor([500, 500]), text


def add_concepts(unet: nn.Module, method: str, targets: str, count: int, rank: int, seed: int) -> list[str]:
    """`count` concepts on one slot ledger (disjoint slots for the slot methods), their zero factors perturbed so
    that no product is trivially zero."""
    ledger = SlotLedger(seed=seed)
    names = [f"c{i}" for i in range(count)]
    generator = torch.Generator().manual_seed(seed)
    for i, name in enumerate(names):
        inject(
            unet, AdapterConfig(method, rank=rank, targets=targets, seed=seed + i), name=name, ledger=ledger
        )
    with torch.no_grad():
        for _, wrapper in wrappers(unet):
            for adapter in wrapper.adapters.values():
                for param in adapter.parameters():
                    if not param.any():
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return names


def own_weights(model: nn.Module) -> None:
    """Give `model`'s adapted projections weights of their own, so that fusing into them leaves the shared base
    untouched (the rest of the model stays shared)."""
    for _, wrapper in wrappers(model):
        wrapper.base.weight = nn.Parameter(wrapper.base.weight.detach().clone(), requires_grad=False)


def timed(task: Callable[[], Any]) -> float:
    start = time.perf_counter()
    task()
    return time.perf_counter() - start


def step_task(model: nn.Module, inputs: tuple[Tensor, Tensor, Tensor]) -> Callable[[], Tensor]:
    latents, timesteps, text = inputs

    def run() -> Tensor:
        with torch.no_grad():
            return model(latents, timesteps, encoder_hidden_states=text).sample

    return run


def interleaved(tasks: dict[str, Callable[[], Any]], rounds: int, seed: int) -> dict[str, list[float]]:
    """One warm-up call each, then `rounds` rounds of one timed call each, every round in a new seeded order."""
    for task in tasks.values():
        task()
    order = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(rounds):
        for name in order.sample(list(tasks), len(tasks)):
            samples[name].append(timed(tasks[name]))
    return samples


def bench_row(
    base: nn.Module,
    method: str,
    targets: str,
    args: argparse.Namespace,
    inputs: tuple[Tensor, Tensor, Tensor],
    folder: Path,
) -> dict[str, Any]:
    start, load = cpu_snapshot(), os.getloadavg()[0]
    adapted = shared_copy(base)
    names = add_concepts(adapted, method, targets, args.concepts, args.rank, args.seed)
    layers = sum(1 for _ in wrappers(adapted))
    files = []
    for name in names:
        config = next(w.adapters[name].config for _, w in wrappers(adapted) if name in w.adapters)
        files.append((save_adapter(folder / f"{method}-{targets}-{name}.safetensors", adapted, name, config,
                                   base_name="bench"), 1.0))  # fmt: skip

    set_active(adapted, names)
    fuse_s = []
    for _ in range(args.fuse_rounds):
        fuse_s.append(timed(lambda: merge(adapted)))
        unmerge(adapted)  # bit for bit: the shared base weights are W0 again
    compose_s = []
    for _ in range(args.fuse_rounds):
        target = shared_copy(base)
        compose_s.append(timed(lambda model=target: compose(model, files, fuse=True)))
        eject(target)  # restores the shared weights it fused into

    fused = shared_copy(adapted)
    own_weights(fused)
    set_active(fused, names)
    bake(fused)  # plain Linears holding the fused weights, as `compose --save` leaves the UNet
    live = {}
    for count in LIVE_COUNTS:
        live[count] = shared_copy(adapted)
        set_active(live[count], names[:count])
    all_live = shared_copy(adapted)
    set_active(all_live, names)
    with torch.no_grad():
        out_fused, out_live = step_task(fused, inputs)(), step_task(all_live, inputs)()
    fused_error = float((out_fused - out_live).abs().max() / out_live.abs().max())
    del all_live, out_fused, out_live

    tasks = {"base": step_task(base, inputs), "fused": step_task(fused, inputs)}
    tasks.update({f"live_{count}": step_task(model, inputs) for count, model in live.items()})
    samples = interleaved(tasks, args.rounds, args.seed)
    per_round_ratio = {
        name: statistics.median(t / b for t, b in zip(times, samples["base"], strict=True))
        for name, times in samples.items()
    }
    foreign = foreign_cpus(start, cpu_snapshot())
    return {
        "method": method,
        "targets": targets,
        "concepts": args.concepts,
        "rank": args.rank,
        "adapted_layers": layers,
        "fuse_s": statistics.median(fuse_s),
        "fuse_samples_s": fuse_s,
        "compose_s": statistics.median(compose_s),
        "compose_samples_s": compose_s,
        "fused_vs_live_rel_error": fused_error,
        "step_s": {name: statistics.median(times) for name, times in samples.items()},
        "step_samples_s": samples,
        "step_ratio": per_round_ratio,
        "foreign_cpus": foreign,
        "load_before": round(load, 2),
    }


def markdown(rows: Sequence[dict[str, Any]], resolution: int) -> str:
    header = [
        "method",
        "targets",
        "layers",
        "fuse s",
        "compose from files s",
        "base step s",
        "fused / base",
        "1 live / base",
        "5 live / base",
        "fused vs live",
        "foreign CPUs",
        "load",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [
            r["method"],
            r["targets"],
            str(r["adapted_layers"]),
            f"{r['fuse_s']:.3f}",
            f"{r['compose_s']:.3f}",
            f"{r['step_s']['base']:.3f}",
            f"{r['step_ratio']['fused']:.3f}",
            f"{r['step_ratio']['live_1']:.3f}",
            f"{r['step_ratio']['live_5']:.3f}",
            f"{r['fused_vs_live_rel_error']:.1e}",
            f"{r['foreign_cpus']:.2f}",
            f"{r['load_before']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return (
        f"### Composition, {rows[0]['concepts']} concepts, rank {rows[0]['rank']}, {resolution} px, CFG batch 2\n\n"
        + "\n".join(lines)
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated method:targets pairs")
    parser.add_argument("--concepts", type=int, default=10)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256, help="image side in px of the denoising step")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of the denoising steps")
    parser.add_argument("--fuse-rounds", type=int, default=3, help="timed rounds of the fuse and the compose")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a miniature of SD 1.5's layout instead")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args(argv)
    args.rows = [tuple(item.split(":")) for item in args.rows.split(",") if item]
    if any(len(row) != 2 for row in args.rows) or max(LIVE_COUNTS) > args.concepts:
        parser.error(f"--rows takes method:targets pairs, --concepts at least {max(LIVE_COUNTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    base = build_unet(args.tiny, args.seed)
    inputs = make_inputs(base, args.resolution, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for method, targets in args.rows:
            print(f"  {method} on {targets} ...", file=sys.stderr, flush=True)
            rows.append(bench_row(base, method, targets, args, inputs, Path(folder)))
            print(
                json.dumps(rows[-1]), file=sys.stderr, flush=True
            )  # each row as it lands: a long run is slow
    print(markdown(rows, args.resolution))
    report = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "unet": "tiny" if args.tiny else "SD-1.5-shaped",
        "resolution": args.resolution,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
