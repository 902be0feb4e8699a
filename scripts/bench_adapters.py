"""Benchmark every registered adapter method beside peft's LoRA and DoRA at the same rank, as ratios to peft LoRA.

Part (a), the adapters' own cost: forward + backward through one layer of each SD 1.5 attention-projection shape
(out, in) at `--tokens` tokens (batch 1), the input needing no grad, the base weight frozen, only the adapter
trainable. A method's overhead is its time minus the time of the same frozen Linear without adapter, timed right
before it (one pair per sample); the per-shape overheads, weighted by how many projections of each shape SD 1.5
has, add up to the adapter overhead of the attention projections of one SD 1.5 UNet pass. `--equal-params` gives
each of our methods, per shape, the rank whose trainable parameters come closest to peft LoRA's at `--rank` without
exceeding them (`sbora_fa` at 2r on a square layer). Part (a) also reports the bytes each layer saves for the
backward (through `torch.autograd.graph.saved_tensors_hooks`; the layer's own parameters and buffers, which live
anyway, not counted, the input x counted).

Part (b), a whole training step (forward, backward, AdamW step) of a UNet with adapters on all attention
projections (`to_q`, `to_k`, `to_v`, `to_out.0`): the embedded tiny UNet by default, `--sd15` for a UNet of SD 1.5's
shape with random weights. Seconds per step come from one process that holds every configuration (the frozen
weights shared); peak memory, trainable parameters and adapter-file size come from a fresh process per
configuration (CPU: growth of the resident-set high-water mark over the loaded UNet; CUDA: max_memory_allocated).
The same process then counts what one training forward saves for the backward: every distinct storage (frozen
weights and the batch not counted), and the part only the adapted projections keep (no other op of the UNet saves
it), which is what the adapters add to the UNet's own activations, also per adapted layer.

Timings are medians over repeats that alternate the methods round-robin, each round in a new seeded random order,
so that drift of the machine falls on every method alike. Each part also reports how many CPUs other processes
kept busy meanwhile (from /proc/stat): on a shared machine, only runs near 0 are worth comparing. Markdown tables
go to stdout; `--json PATH` writes the raw numbers (every sample, the environment and the git commit).

Usage (from the repository root):

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python scripts/bench_adapters.py            # (a) + (b), tiny
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python scripts/bench_adapters.py --part b --sd15
    .venv/bin/python scripts/bench_adapters.py --device cuda --dtype bf16 --sd15 --resolution 512 --json out.json
    .venv/bin/python scripts/bench_adapters.py --part a --equal-params --json equal.json
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bora_diffusion import adapters
from bora_diffusion.config import AdapterConfig
from bora_diffusion.inject import wrap_linear

from sd15_shaped import TEXT_TOKENS, VAE_FACTOR, unet_config

PEFT_LORA = "peft_lora"
PEFT_DORA = "peft_dora"
FROZEN = "frozen"
PEFT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# (out, in) of SD 1.5's 128 attention projections and how many of each (docs/methods.md).
SD15_PROJECTIONS: tuple[tuple[tuple[int, int], int], ...] = (
    ((320, 320), 30),
    ((320, 768), 10),
    ((640, 640), 30),
    ((640, 768), 10),
    ((1280, 1280), 36),
    ((1280, 768), 12),
)
MEMORY_STEPS = 2  # training steps a memory probe takes (the first allocates the optimizer state)

Sample = TypeVar("Sample")


@dataclass(frozen=True)
class Setup:
    """What every measurement shares."""

    device: str
    dtype: str
    rank: int
    seed: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class UNetSpec:
    """Which UNet part (b) trains, and on what batch."""

    sd15: bool
    resolution: int
    batch: int


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def variants(methods: Sequence[str]) -> list[str]:
    """Our methods, then peft's two baselines."""
    return [*methods, PEFT_LORA, PEFT_DORA]


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def upcast_trainable(params: Sequence[nn.Parameter]) -> None:
    """Trainable parameters in fp32 under a half-precision base, as diffusers' `cast_training_params` does."""
    for param in params:
        param.data = param.data.float()


def round_robin(
    tasks: dict[str, Callable[[], Sample]], warmup: int, repeats: int, seed: int = 0
) -> dict[str, list[Sample]]:
    """Call every task `warmup` times, then `repeats` rounds of one call each. Each round takes the tasks in a new
    seeded random order, so that no task always follows the same neighbour (a heavy task leaves the next one
    freed memory to fault back in, or a cold cache)."""
    names = list(tasks)
    for _ in range(warmup):
        for name in names:
            tasks[name]()
    order = random.Random(seed)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in order.sample(names, len(names)):
            samples[name].append(tasks[name]())
    return samples


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds the whole machine was busy, CPU seconds of this process, and the wall clock."""

    busy_s: float
    own_s: float
    wall_s: float


def cpu_snapshot() -> CpuSnapshot:
    try:  # Linux: user nice system idle iowait irq softirq steal, in clock ticks
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        busy = float("nan")
    return CpuSnapshot(busy, time.process_time(), time.perf_counter())


def foreign_cpus(start: CpuSnapshot, end: CpuSnapshot) -> float:
    """How many CPUs other processes kept busy on average between two snapshots (0 on a quiet machine)."""
    foreign = (end.busy_s - start.busy_s) - (end.own_s - start.own_s)
    return max(0.0, foreign) / max(end.wall_s - start.wall_s, 1e-9)


def ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Part (a): one projection layer


class Holder(nn.Module):
    """A one-Linear model for peft to adapt."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.proj = linear

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def adapted_layer(base: nn.Linear, variant: str, rank: int) -> nn.Module:
    """`base` (shared, frozen) with one adapter of `variant` at `rank`; FROZEN gives `base` itself."""
    if variant == FROZEN:
        return base
    if variant in (PEFT_LORA, PEFT_DORA):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["proj"], use_dora=variant == PEFT_DORA)
        return get_peft_model(Holder(base), config).base_model.model.proj
    return wrap_linear(base, variant, rank=rank)  # bora_block at its default blocks, 4


def trainable_count(base: nn.Linear, variant: str, rank: int) -> int:
    return sum(p.numel() for p in trainable(adapted_layer(base, variant, rank)))


def matched_ranks(base: nn.Linear, names: Sequence[str], rank: int, equal_params: bool) -> dict[str, int]:
    """`rank` for every variant, or with `equal_params` for each of ours the largest rank whose trainable
    parameters do not exceed peft LoRA's at `rank` on this layer (at least 1); peft's two stay at `rank`."""
    ranks = {name: rank for name in names}
    if not equal_params:
        return ranks
    budget = rank * (base.in_features + base.out_features)  # peft LoRA: A (r, in) + B (out, r)
    for name in names:
        if name in (PEFT_LORA, PEFT_DORA):
            continue
        chosen = 1
        while trainable_count(base, name, chosen + 1) <= budget:
            chosen += 1
        ranks[name] = chosen
    return ranks


def saved_bytes(layer: nn.Module, x: Tensor) -> int:
    """Bytes one forward of `layer` saves for its backward: every distinct storage the autograd graph keeps,
    less the layer's own parameters and buffers (they live anyway). The input x counts."""
    own = {t.untyped_storage().data_ptr() for t in (*layer.parameters(), *layer.buffers())}
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = layer(x)
    del out
    return sum(storages.values())


def perturb_zero_factors(params: Sequence[nn.Parameter], generator: torch.Generator) -> None:
    """Give the zero-initialized factors small random values, so that no path is trivially zero."""
    with torch.no_grad():
        for param in params:
            if not param.any():
                noise = torch.randn(param.shape, generator=generator) * 0.02
                param.copy_(noise.to(param.device, param.dtype))


def layer_timer(layer: nn.Module, x: Tensor, grad: Tensor, inner: int) -> Callable[[], float]:
    """A task timing `inner` forward + backward passes; returns seconds per pass. Grads are cleared each pass."""
    params = trainable(layer)

    def run() -> float:
        sync(x.device)
        start = time.perf_counter()
        for _ in range(inner):
            out = layer(x)
            if out.requires_grad:  # the frozen Linear has nothing to differentiate
                out.backward(grad)
            for param in params:
                param.grad = None
        sync(x.device)
        return (time.perf_counter() - start) / inner

    return run


def paired(first: Callable[[], float], second: Callable[[], float]) -> Callable[[], tuple[float, float]]:
    """A task running `first` right before `second`, returning both times."""
    return lambda: (first(), second())


def bench_shape(
    shape: tuple[int, int],
    names: Sequence[str],
    setup: Setup,
    tokens: int,
    rounds: tuple[int, int, int],
    equal_params: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per variant on one (out, in) shape: rank, median ms, trainable parameters, saved bytes, and the median
    overhead over the frozen Linear, each sample paired with a frozen pass timed right before it so that drift
    cancels pairwise."""
    warmup, repeats, inner = rounds
    out_features, in_features = shape
    device, dtype = torch.device(setup.device), setup.torch_dtype
    generator = torch.Generator().manual_seed(setup.seed)
    base = nn.Linear(in_features, out_features, bias=False).to(device, dtype).requires_grad_(False)
    x = torch.randn(1, tokens, in_features, generator=generator).to(device, dtype)
    grad = torch.randn(1, tokens, out_features, generator=generator).to(device, dtype)
    ranks = {FROZEN: 0, **matched_ranks(base, names, setup.rank, equal_params)}
    layers = {name: adapted_layer(base, name, ranks[name]) for name in (FROZEN, *names)}
    for layer in layers.values():
        layer.train()
        upcast_trainable(trainable(layer))
        perturb_zero_factors(trainable(layer), generator)
    frozen = layer_timer(layers[FROZEN], x, grad, inner)
    tasks = {name: paired(frozen, layer_timer(layers[name], x, grad, inner)) for name in names}
    samples = round_robin(tasks, warmup, repeats, setup.seed)
    floor = [1e3 * ref for pairs in samples.values() for ref, _ in pairs]
    result = {
        FROZEN: {
            "rank": 0,
            "ms": statistics.median(floor),
            "overhead_ms": 0.0,
            "trainable": 0,
            "saved_bytes": 0,
            "samples_ms": floor,
        }
    }
    for name, pairs in samples.items():
        result[name] = {
            "rank": ranks[name],
            "saved_bytes": saved_bytes(layers[name], x),
            "ms": 1e3 * statistics.median(t for _, t in pairs),
            "overhead_ms": 1e3 * statistics.median(t - ref for ref, t in pairs),
            "trainable": sum(p.numel() for p in trainable(layers[name])),
            "samples_ms": [1e3 * t for _, t in pairs],
            "frozen_before_ms": [1e3 * ref for ref, _ in pairs],
        }
    return result


def part_a(
    methods: Sequence[str],
    setup: Setup,
    tokens: int,
    rounds: tuple[int, int, int],
    equal_params: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per-shape results and their SD 1.5 UNet-pass totals (weighted by the projection counts)."""
    names = variants(methods)
    per_shape = {}
    for shape, count in SD15_PROJECTIONS:
        print(f"  (a) shape {shape} x{count} ...", file=sys.stderr, flush=True)
        per_shape[f"{shape[0]}x{shape[1]}"] = bench_shape(shape, names, setup, tokens, rounds, equal_params)
    counts = [count for _, count in SD15_PROJECTIONS]
    totals = {
        name: {
            key: sum(c * row[name][key] for c, row in zip(counts, per_shape.values(), strict=True))
            for key in ("ms", "overhead_ms", "trainable", "saved_bytes")
        }
        for name in (FROZEN, *names)
    }
    return {"per_shape": per_shape, "unet_pass": totals}


# ---------------------------------------------------------------------------------------------------------------
# Part (b): a UNet training step


def build_unet(spec: UNetSpec, setup: Setup) -> tuple[nn.Module, int]:
    """The UNet (frozen, in train mode, on the device in the dtype) and its VAE downsampling factor."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed)
        if spec.sd15:
            unet, factor = UNet2DConditionModel(**unet_config()), VAE_FACTOR
        else:
            from bora_diffusion.embedded import build_tiny_pipeline

            pipe = build_tiny_pipeline(setup.seed)
            unet, factor = pipe.unet, pipe.vae_scale_factor
    unet = unet.to(setup.device)
    if setup.torch_dtype != torch.float32:  # diffusers warns on any dtype cast, so none when there is none
        unet = unet.to(setup.torch_dtype)
    return unet.requires_grad_(False).train(), factor


def add_adapters(unet: nn.Module, variant: str, rank: int) -> tuple[list[nn.Parameter], AdapterConfig | None]:
    """Adapters on every attention projection: ours through `inject`, peft's as diffusers' DreamBooth recipe."""
    if variant in (PEFT_LORA, PEFT_DORA):
        from peft import LoraConfig

        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights="gaussian",
            target_modules=list(PEFT_TARGETS),
            use_dora=variant == PEFT_DORA,
        )
        unet.add_adapter(config)
        params, ours = trainable(unet), None
    else:
        from bora_diffusion.inject import inject, mark_trainable

        ours = AdapterConfig(method=variant, rank=rank)
        inject(unet, ours, name="c")
        params = mark_trainable(unet, ["c"])
    upcast_trainable(params)
    return params, ours


def make_batch(unet: nn.Module, spec: UNetSpec, factor: int, setup: Setup) -> dict[str, Tensor]:
    """Noisy latents, timesteps, text states and a noise target, drawn from `setup.seed`."""
    generator = torch.Generator().manual_seed(setup.seed)
    side = spec.resolution // factor
    latents = (spec.batch, unet.config.in_channels, side, side)
    tensors = {
        "sample": torch.randn(latents, generator=generator),
        "encoder_hidden_states": torch.randn(
            spec.batch, TEXT_TOKENS, unet.config.cross_attention_dim, generator=generator
        ),
        "target": torch.randn(latents, generator=generator),
    }
    batch = {k: v.to(setup.device, setup.torch_dtype) for k, v in tensors.items()}
    batch["timestep"] = torch.randint(0, 1000, (spec.batch,), generator=generator).to(setup.device)
    return batch


def train_step(unet: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor]) -> None:
    pred = unet(
        batch["sample"], batch["timestep"], encoder_hidden_states=batch["encoder_hidden_states"]
    ).sample
    F.mse_loss(pred.float(), batch["target"].float()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_timer(unet: nn.Module, params: list[nn.Parameter], batch: dict[str, Tensor]) -> Callable[[], float]:
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    device = batch["sample"].device

    def run() -> float:
        sync(device)
        start = time.perf_counter()
        train_step(unet, optimizer, batch)
        sync(device)
        return time.perf_counter() - start

    return run


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of `model`'s modules that shares its (frozen) parameters and buffers instead of duplicating them."""
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def time_steps(
    names: Sequence[str], spec: UNetSpec, setup: Setup, warmup: int, steps: int
) -> dict[str, list[float]]:
    """Seconds per training step of each variant, one sample per round; the variants alternate round-robin in
    one process."""
    base, factor = build_unet(spec, setup)
    batch = make_batch(base, spec, factor, setup)
    tasks = {}
    for name in names:
        unet = shared_copy(base)
        params, _ = add_adapters(unet, name, setup.rank)
        tasks[name] = step_timer(unet, params, batch)
    return round_robin(tasks, warmup, steps, setup.seed)


def rss_bytes(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; return the memory in use now (the baseline)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    return rss_bytes("VmRSS")


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return rss_bytes("VmHWM")


def adapter_file_bytes(unet: nn.Module, ours: AdapterConfig | None, folder: str) -> int:
    """Size of the adapter file: ours in the native format, peft's as diffusers saves LoRA weights."""
    path = Path(folder) / "adapter.safetensors"
    if ours is None:
        import safetensors.torch
        from peft import get_peft_model_state_dict

        state = {k: v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
        safetensors.torch.save_file(state, str(path))
    else:
        from bora_diffusion.formats import save_adapter

        save_adapter(path, unet, "c", ours, base_name="bench")
    return path.stat().st_size


def adapted_modules(unet: nn.Module) -> list[nn.Module]:
    """The adapted projections: our `AdaptedLinear` wrappers, or peft's LoRA layers."""
    from peft.tuners.lora import LoraLayer

    from bora_diffusion.adapters import AdaptedLinear

    return [m for m in unet.modules() if isinstance(m, AdaptedLinear | LoraLayer)]


def step_saved_bytes(unet: nn.Module, batch: dict[str, Tensor]) -> dict[str, int]:
    """What one training forward saves for its backward: `step` (every distinct storage the graph keeps, the
    frozen weights and the batch not counted), and `adapters` (the storages saved only inside the adapted
    projections, none of the UNet's other ops keeps them: the memory the adapters add), over `layers` of them."""
    layers = adapted_modules(unet)
    own = {t.untyped_storage().data_ptr() for t in (*unet.parameters(), *unet.buffers(), *batch.values())}
    sizes: dict[int, int] = {}
    inside: set[int] = set()
    outside: set[int] = set()
    depth = [0]  # > 0 while a forward runs inside an adapted projection

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            sizes[storage.data_ptr()] = storage.nbytes()
            (inside if depth[0] else outside).add(storage.data_ptr())
        return tensor

    def enter(*_: Any) -> None:
        depth[0] += 1

    def leave(*_: Any) -> None:
        depth[0] -= 1

    handles = [
        h for m in layers for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            pred = unet(
                batch["sample"], batch["timestep"], encoder_hidden_states=batch["encoder_hidden_states"]
            ).sample
        del pred
    finally:
        for handle in handles:
            handle.remove()
    return {
        "step": sum(sizes.values()),
        "adapters": sum(sizes[p] for p in inside - outside),
        "layers": len(layers),
    }


def probe_memory(variant: str, spec: UNetSpec, setup: Setup) -> dict[str, int]:
    """In a fresh process: peak memory of MEMORY_STEPS training steps above the loaded UNet, trainable
    parameters, adapter file size, and (after the peak is read) the bytes one step saves for its backward."""
    device = torch.device(setup.device)
    unet, factor = build_unet(spec, setup)
    batch = make_batch(unet, spec, factor, setup)
    baseline = reset_peak(device)
    params, ours = add_adapters(unet, variant, setup.rank)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for _ in range(MEMORY_STEPS):
        train_step(unet, optimizer, batch)
    sync(device)
    peak = peak_memory(device) - baseline
    with tempfile.TemporaryDirectory() as folder:
        size = adapter_file_bytes(unet, ours, folder)
    saved = step_saved_bytes(unet, batch)
    return {
        "peak_bytes": peak,
        "trainable": sum(p.numel() for p in params),
        "file_bytes": size,
        "saved_step_bytes": saved["step"],
        "saved_adapter_bytes": saved["adapters"],
        "adapted_layers": saved["layers"],
    }


def probe_in_fresh_processes(
    names: Sequence[str], spec: UNetSpec, setup: Setup, jobs: int
) -> list[dict[str, int]]:
    """`probe_memory` of each variant, each in a new spawned process (at most `jobs` at a time)."""
    with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        return pool.starmap(probe_memory, [(name, spec, setup) for name in names], chunksize=1)


def part_b(
    methods: Sequence[str], spec: UNetSpec, setup: Setup, schedule: tuple[int, int, int]
) -> dict[str, Any]:
    """Per variant: median and raw seconds per step, peak memory, trainable parameters, adapter file size; and
    how many CPUs other processes kept busy while the steps were timed."""
    warmup, steps, jobs = schedule
    names = variants(methods)
    print(f"  (b) timing {len(names)} variants x {steps} steps ...", file=sys.stderr, flush=True)
    start = cpu_snapshot()
    seconds = time_steps(names, spec, setup, warmup, steps)
    foreign = foreign_cpus(start, cpu_snapshot())
    print(f"  (b) memory probes, {jobs} process(es) at a time ...", file=sys.stderr, flush=True)
    probes = probe_in_fresh_processes(names, spec, setup, jobs)
    results = {
        name: {"s_per_step": statistics.median(seconds[name]), "samples_s": seconds[name], **probe}
        for name, probe in zip(names, probes, strict=True)
    }
    return {"results": results, "foreign_cpus": foreign}


# ---------------------------------------------------------------------------------------------------------------
# Reports


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rank_span(result: dict[str, Any], name: str) -> str:
    """The rank a variant ran at, or its range over the shapes (they differ under --equal-params)."""
    ranks = sorted({row[name]["rank"] for row in result["per_shape"].values()})
    return str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"


def table_a_totals(result: dict[str, Any]) -> str:
    totals = result["unet_pass"]
    lora, dora = totals[PEFT_LORA]["overhead_ms"], totals[PEFT_DORA]["overhead_ms"]
    rows = [
        [
            name,
            rank_span(result, name),
            f"{int(row['trainable']):,}",
            f"{row['ms']:.1f}",
            f"{row['overhead_ms']:.1f}",
            f"{ratio(row['overhead_ms'], lora):.2f}",
            f"{ratio(row['overhead_ms'], dora):.2f}",
            f"{row['saved_bytes'] / 2**20:.1f}",
        ]
        for name, row in totals.items()
        if name != FROZEN
    ]
    rows.append(["frozen Linear (floor)", "-", "0", f"{totals[FROZEN]['ms']:.1f}", "0", "-", "-", "-"])
    header = [
        "method",
        "rank",
        "trainable params",
        "fwd+bwd ms",
        "overhead ms",
        "/ peft LoRA",
        "/ peft DoRA",
        "saved MiB",
    ]
    return markdown_table(header, rows)


def table_a_shapes(result: dict[str, Any], key: str = "overhead_ms") -> str:
    """Per shape: overhead ms per layer (ratio to peft LoRA), or with key="saved_bytes" the KiB one layer saves
    for its backward (ratio to peft LoRA)."""
    shapes = result["per_shape"]
    names = [n for n in next(iter(shapes.values())) if n != FROZEN]
    unit, digits = (2**10, 0) if key == "saved_bytes" else (1, 2)
    rows = []
    for name in names:
        cells = [
            f"{row[name][key] / unit:.{digits}f} ({ratio(row[name][key], row[PEFT_LORA][key]):.2f}x)"
            for row in shapes.values()
        ]
        rows.append([name, *cells])
    if key == "overhead_ms":
        rows.append(["frozen Linear (floor)", *(f"{row[FROZEN]['ms']:.2f}" for row in shapes.values())])
    counts = [count for _, count in SD15_PROJECTIONS]
    header = ["method", *(f"{shape} x{c}" for shape, c in zip(shapes, counts, strict=True))]
    return markdown_table(header, rows)


def table_b(result: dict[str, dict[str, float]], rank: int) -> str:
    lora = result[PEFT_LORA]
    rows = [
        [
            name,
            str(rank),
            f"{int(row['trainable']):,}",
            f"{row['s_per_step']:.3f}",
            f"{min(row['samples_s']):.3f}-{max(row['samples_s']):.3f}",
            f"{ratio(row['s_per_step'], lora['s_per_step']):.2f}",
            f"{row['peak_bytes'] / 2**20:.1f}",
            f"{ratio(row['peak_bytes'], lora['peak_bytes']):.2f}",
            f"{row['file_bytes'] / 2**10:.1f}",
            f"{row['saved_step_bytes'] / 2**20:.1f}",
            f"{row['saved_adapter_bytes'] / 2**20:.2f}",
            f"{row['saved_adapter_bytes'] / max(row['adapted_layers'], 1) / 2**10:.1f}",
        ]
        for name, row in result.items()
    ]
    header = [
        "method",
        "rank",
        "trainable params",
        "s / step",
        "range",
        "/ peft LoRA",
        "peak memory MiB",
        "/ peft LoRA",
        "adapter file KiB",
        "saved MiB / step",
        "adapters' saved MiB",
        "KiB / adapted layer",
    ]
    return markdown_table(header, rows)


def git_commit() -> str | None:
    """The repository's commit, with "+dirty" when the package has uncommitted changes; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "bora_diffusion"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def environment(setup: Setup) -> dict[str, Any]:
    import diffusers
    import peft

    info = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "commit": git_commit(),
    }
    if setup.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(setup.device))
    return info


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument(
        "--methods", default="all", help="comma-separated method ids (default: all registered)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="base weights and activations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=2048, help="(a) tokens through each layer (batch 1)")
    parser.add_argument("--warmup", type=int, default=2, help="(a) warm-up rounds")
    parser.add_argument("--repeats", type=int, default=15, help="(a) timed rounds")
    parser.add_argument("--inner", type=int, default=2, help="(a) passes per timed sample")
    parser.add_argument(
        "--equal-params",
        action="store_true",
        help="(a) each method at the rank whose trainable parameters match peft LoRA's at --rank",
    )
    parser.add_argument(
        "--sd15", action="store_true", help="(b) an SD-1.5-shaped UNet instead of the tiny one"
    )
    parser.add_argument(
        "--resolution", type=int, help="(b) image side in px (default 256 for --sd15, else 64)"
    )
    parser.add_argument("--batch", type=int, default=1, help="(b) images per step")
    parser.add_argument("--step-warmup", type=int, default=1, help="(b) warm-up steps per method")
    parser.add_argument(
        "--steps", type=int, help="(b) timed steps per method (default 3 for --sd15, else 10)"
    )
    parser.add_argument(
        "--memory-jobs", type=int, default=2, help="(b) memory probes run at a time (each its own process)"
    )
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    return parser.parse_args(argv)


def chosen_methods(spec: str) -> list[str]:
    if spec == "all":
        return adapters.available()
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in methods if m not in adapters.available()]
    if unknown:
        raise SystemExit(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(adapters.available())}"
        )
    return methods


def quiet_note(foreign: float) -> str:
    """A line on how quiet the machine was; timings taken while other processes ran are not comparable."""
    note = f"Other processes kept {foreign:.2f} CPUs busy on average while this part was timed"
    if foreign > 0.1:
        note += " (the machine was not quiet: these timings are unreliable)"
        print(f"warning: {note}", file=sys.stderr)
    return note + "."


def run_part_a(args: argparse.Namespace, setup: Setup, methods: Sequence[str]) -> dict[str, Any]:
    rounds = (args.warmup, args.repeats, args.inner)
    start = cpu_snapshot()
    result = part_a(methods, setup, args.tokens, rounds, args.equal_params)
    foreign = foreign_cpus(start, cpu_snapshot())
    budget = f"equal parameter count (peft LoRA at rank {args.rank})" if args.equal_params else "equal rank"
    print(
        f"\n### (a) Adapter overhead of one SD 1.5 UNet pass's attention projections ({args.tokens} tokens, "
        f"{budget})\n"
    )
    print(table_a_totals(result))
    print("\n### (a) Per shape (out, in) x count: overhead ms per layer (ratio to peft LoRA)\n")
    print(table_a_shapes(result))
    print("\n### (a) Per shape: KiB one layer saves for the backward (ratio to peft LoRA)\n")
    print(table_a_shapes(result, "saved_bytes"))
    print(f"\n{quiet_note(foreign)}")
    return {
        "tokens": args.tokens,
        "rounds": rounds,
        "equal_params": args.equal_params,
        "foreign_cpus": foreign,
        **result,
    }


def run_part_b(args: argparse.Namespace, setup: Setup, methods: Sequence[str]) -> dict[str, Any]:
    resolution = args.resolution or (256 if args.sd15 else 64)
    steps = args.steps or (3 if args.sd15 else 10)
    spec = UNetSpec(sd15=args.sd15, resolution=resolution, batch=args.batch)
    result = part_b(methods, spec, setup, (args.step_warmup, steps, args.memory_jobs))
    unet_name = "SD-1.5-shaped" if args.sd15 else "tiny"
    print(f"\n### (b) Training step, {unet_name} UNet, {resolution} px, batch {args.batch}\n")
    print(table_b(result["results"], args.rank))
    print(f"\n{quiet_note(result['foreign_cpus'])}")
    return {"unet": asdict(spec), "warmup": args.step_warmup, "steps": steps, **result}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup = Setup(device=args.device, dtype=args.dtype, rank=args.rank, seed=args.seed)
    methods = chosen_methods(args.methods)
    torch.manual_seed(args.seed)
    report: dict[str, Any] = {"setup": asdict(setup), "environment": environment(setup), "argv": sys.argv[1:]}
    if args.part in ("a", "all"):
        report["part_a"] = run_part_a(args, setup, methods)
    if args.part in ("b", "all"):
        report["part_b"] = run_part_b(args, setup, methods)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
