"""Training benchmark: our Trainer with each adapter method beside diffusers' own DreamBooth-LoRA recipe.

The recipe is what `examples/dreambooth/train_dreambooth_lora.py` does per step: peft LoRA added with
`unet.add_adapter(LoraConfig(r, lora_alpha=r, init_lora_weights="gaussian", target_modules=[to_q, to_k, to_v,
to_out.0]))`, AdamW, noise-prediction MSE, gradient clipping at 1.0. Ours is `bora_diffusion.train.Trainer` on the
same images, prompts, resolution, rank, steps and learning rate. Both encode latents and prompts once (the
recipe's `--cache_latents`; ours caches by default), so the step times compare the UNet work.

Each configuration runs in a fresh process, one after another in rotating order over `--rounds` rounds, so machine
drift falls on all alike. Reported: median seconds per step over the steps after `--warmup` (all rounds pooled),
the peak resident memory above the loaded pipeline while encoding the data and training (CPU; the high-water
mark is reset through /proc/self/clear_refs) or max_memory_allocated (CUDA), trainable
parameters and the adapter file size; ratios are to the diffusers recipe.

`--sd15` trains on a pipeline of SD 1.5's shape with random weights (`sd15_shaped.py`), for GPU runs on
machines that cannot download the real one; `--mixed-precision` runs both under autocast (accelerate's for ours,
`torch.autocast` and, for fp16, a gradient scaler for the recipe); `--config KEY=VALUE` sets a field of our
`TrainConfig` (a TOML value), e.g. to time a trained token under the word lock.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_train.py                  # embedded default, example concept
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_train.py --steps 30 --rounds 3 --json out.json
    python3 scripts/bench_train.py --sd15 --device cuda --resolution 512 --mixed-precision bf16 --rounds 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from queue import Empty

import torch

RECIPE = "diffusers_lora"
REPO = Path(__file__).resolve().parent.parent


def run_ours(method: str, args: argparse.Namespace, queue) -> None:
    from bora_diffusion import AdapterConfig
    from bora_diffusion.callbacks import Callback
    from bora_diffusion.concept import load_concept
    from bora_diffusion.pipeline import load_base
    from bora_diffusion.train import Trainer

    pipe = load_base(args.base, device=args.device)
    concept = load_concept(args.concept, min_size=1, tokenizer=pipe.tokenizer)  # resized to --resolution
    stamps: list[float] = []

    class Clock(Callback):
        def on_step_end(self, state):
            _sync(args.device)
            stamps.append(time.perf_counter())

    start_rss = _start_peak_window()
    _reset_cuda_peak(args.device)
    adapter = AdapterConfig(method=method, rank=args.rank, blocks=4 if method == "bora_block" else None)
    config = our_config(args)
    with tempfile.TemporaryDirectory() as out:
        path = Trainer(
            pipe, concept, adapter, config, out_dir=out, base_name="bench", callbacks=[Clock()]
        ).train()
        size = path.stat().st_size
    params = sum(p.numel() for p in pipe.unet.parameters() if p.requires_grad)
    queue.put(_result(stamps, start_rss, args.device, params, size))


def our_config(args: argparse.Namespace):
    """Our TrainConfig: the recipe's budget, then the `--config` fields over it."""
    from bora_diffusion import TrainConfig

    budget = {"steps": args.steps, "learning_rate": 1e-4, "resolution": args.resolution, "seed": 0}
    return TrainConfig(**{**budget, "mixed_precision": args.mixed_precision, **args.config})


def run_recipe(args: argparse.Namespace, queue) -> None:
    import safetensors.torch
    import torch.nn.functional as F
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from bora_diffusion.concept import load_concept
    from bora_diffusion.data import encode_set
    from bora_diffusion.pipeline import load_base

    pipe = load_base(args.base, device=args.device)
    concept = load_concept(args.concept, min_size=1, tokenizer=pipe.tokenizer)  # resized to --resolution
    start_rss = _start_peak_window()
    _reset_cuda_peak(args.device)
    data = encode_set(
        pipe,
        concept.images,
        [concept.instance_prompt(i) for i in concept.images],
        args.resolution,
        cache_latents=True,
    )
    unet, scheduler = pipe.unet, pipe.scheduler
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=args.rank,
            lora_alpha=args.rank,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    precision = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    device_type = torch.device(args.device).type
    scaler = torch.amp.GradScaler(device_type, enabled=precision == torch.float16)
    generator = torch.Generator().manual_seed(0)
    unet.train()
    stamps = []
    for _ in range(args.steps):
        batch = data.batch(1, generator)
        latents, text = (
            batch.images.to(args.device),
            batch.text.states.to(args.device),
        )  # cached on the device
        noise = torch.randn(latents.shape, generator=generator).to(args.device)
        t = torch.randint(scheduler.config.num_train_timesteps, (1,), generator=generator).to(args.device)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast(device_type, dtype=precision, enabled=precision is not None):
            pred = unet(noisy, t, text).sample
        loss = F.mse_loss(pred.float(), noise)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        _sync(args.device)
        stamps.append(time.perf_counter())
    with tempfile.TemporaryDirectory() as out:
        path = Path(out) / "pytorch_lora_weights.safetensors"
        safetensors.torch.save_file(get_peft_model_state_dict(unet), str(path))
        size = path.stat().st_size
    queue.put(_result(stamps, start_rss, args.device, sum(p.numel() for p in params), size))


def _result(stamps: list[float], start_rss: int, device: str, params: int, size: int) -> dict:
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else (_peak_rss() - start_rss)
    return {"step_seconds": steps, "peak_bytes": peak, "trainable": params, "file_bytes": size}


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _start_peak_window() -> int:
    """Reset the resident-set high-water mark (Linux: write 5 to clear_refs) and return the RSS now, so the peak
    measured later covers only what follows, not the pipeline loading before it."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def _peak_rss() -> int:
    return _status_bytes("VmHWM")


def _reset_cuda_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _config_field(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.strip(), tomllib.loads(f"value = {value}")["value"]
    except tomllib.TOMLDecodeError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TOML value (quote strings)") from None


def _in_fresh_process(name: str, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    target, extra = (run_recipe, ()) if name == RECIPE else (run_ours, (name,))
    process = context.Process(target=target, args=(*extra, args, queue))
    process.start()
    try:
        # A run that dies puts nothing in the queue: poll, so that its death ends the benchmark, not a wait.
        while process.is_alive():
            try:
                return queue.get(timeout=5)
            except Empty:
                continue
        try:  # it may have put its result and exited between two polls
            return queue.get(timeout=5)
        except Empty:
            raise SystemExit(
                f"{name}: its run died (exit code {process.exitcode}); see its traceback"
            ) from None
    finally:
        process.join()


def main(argv: list[str] | None = None) -> None:
    from bora_diffusion import BoraError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="base model (default: the embedded default)")
    parser.add_argument("--concept", default=str(REPO / "concepts" / "kettle"), help="a concept folder")
    parser.add_argument("--methods", default="lora,dora,sbora_fa,sbora_fb,ortho,bora_block,bora_bidim")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25, help="steps per run (default 25)")
    parser.add_argument("--warmup", type=int, default=5, help="steps of each run left out of the median")
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration, in rotating order")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sd15", action="store_true", help="an SD-1.5-shaped base with random weights")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        type=_config_field,
        metavar="KEY=VALUE",
        help="a field of our TrainConfig as TOML (repeatable), e.g. train_embedding=true",
    )
    parser.add_argument("--json", help="write the raw numbers here")
    args = parser.parse_args(argv)
    args.config = dict(args.config)
    try:  # a wrong field fails here, not in every run's process
        our_config(args)
    except (TypeError, BoraError) as error:
        parser.error(f"--config: {error}")
    if args.sd15 and args.base:
        parser.error("--sd15 builds its own base; leave out --base")
    if args.sd15:
        from sd15_shaped import write_pipeline

        scratch = tempfile.TemporaryDirectory(prefix="sd15-shaped-")
        args.base = str(write_pipeline(Path(scratch.name) / "pipeline"))

    names = [RECIPE, *args.methods.split(",")]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            runs[name].append(_in_fresh_process(name, args))
    rows = {}
    for name, results in runs.items():
        steps = [s for r in results for s in r["step_seconds"][args.warmup :]]
        rows[name] = {
            "step_seconds": statistics.median(steps),
            "peak_bytes": statistics.median(r["peak_bytes"] for r in results),
            "trainable": results[0]["trainable"],
            "file_bytes": results[0]["file_bytes"],
        }
    ref = rows[RECIPE]
    print(
        f"# bench_train: {args.steps} steps x {args.rounds} rounds, rank {args.rank}, {args.resolution} px, "
        f"{'SD-1.5-shaped base' if args.sd15 else args.base or 'embedded default'}, {args.device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}, "
        f"mixed precision {args.mixed_precision}, our config {args.config or 'default'}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus\n"
    )
    print("| method | s/step | x recipe | peak MiB | x recipe | trainable | file KiB |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['step_seconds']:.4f} | {row['step_seconds'] / ref['step_seconds']:.2f} | "
            f"{row['peak_bytes'] / 2**20:.1f} | {row['peak_bytes'] / max(ref['peak_bytes'], 1):.2f} | "
            f"{row['trainable']:,} | {row['file_bytes'] / 1024:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "runs": runs}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
