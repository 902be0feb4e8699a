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

`--sdxl` trains on a pipeline of SDXL base 1.0's shape with random weights, built in memory in each process
(`--tiny`: its layout at toy widths, for the test), beside the training step of diffusers'
`train_dreambooth_lora_sdxl.py` (pooled text and time ids as `added_cond_kwargs`). `--features` picks memory
feature sets, each a row per method: off (both text encoders run every step, AdamW, no checkpointing), cached
(cached text only: the plain run), on (gradient checkpointing, 8-bit AdamW where bitsandbytes imports, cached
text). `--sd15` trains on a pipeline of SD 1.5's shape with random weights (`sd15_shaped.py`), for GPU runs on
machines that cannot download the real one; `--mixed-precision` runs both under autocast (accelerate's for ours,
`torch.autocast` and, for fp16, a gradient scaler for the recipe); `--config KEY=VALUE` sets a field of our
`TrainConfig` (a TOML value), e.g. to time a trained token under the word lock.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_train.py                  # embedded default, example concept
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_train.py --steps 30 --rounds 3 --json out.json
    python3 scripts/bench_train.py --sd15 --device cuda --resolution 512 --mixed-precision bf16 --rounds 1
    python3 scripts/bench_train.py --sdxl --device cuda --dtype bf16 --mixed-precision bf16 --resolution 1024
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
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


# Memory feature sets (`--features`): gradient checkpointing, 8-bit AdamW (bitsandbytes), cached text-encoder
# outputs. "cached" is the plain run this benchmark always timed; "off" runs both text encoders every step.
FEATURES = {
    "off": {"checkpointing": False, "adam8bit": False, "cached_text": False},
    "cached": {"checkpointing": False, "adam8bit": False, "cached_text": True},
    "on": {"checkpointing": True, "adam8bit": True, "cached_text": True},
}


def adam8bit_available() -> bool:
    """Whether bitsandbytes imports here (its 8-bit AdamW is what both sides would use)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def sdxl_unet_config(tiny: bool = False) -> dict:
    """SDXL base 1.0's unet/config.json (the keys that set its shape); `tiny` keeps its layout at toy widths."""
    if tiny:
        return {
            "sample_size": 16,
            "block_out_channels": (16, 32, 32),
            "transformer_layers_per_block": (1, 1, 2),
            "attention_head_dim": (2, 2, 4),
            "cross_attention_dim": 64,
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,  # time ids + pooled text
            "norm_num_groups": 16,
            **_SDXL_LAYOUT,
        }
    return {
        "sample_size": 128,
        "block_out_channels": (320, 640, 1280),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,  # CLIP ViT-L 768 + OpenCLIP bigG 1280, side by side
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + pooled bigG 1280
        "norm_num_groups": 32,
        **_SDXL_LAYOUT,
    }


_SDXL_LAYOUT = {
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
}


def sdxl_text_configs(tiny: bool = False) -> tuple[dict, dict]:
    """SDXL's two text encoders: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14's text towers (about 123M and 695M)."""
    if tiny:
        small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}
        return {**small, "projection_dim": 32}, {**small, "projection_dim": 32}
    large = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    }
    big_g = {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
    }
    return {**large, "projection_dim": 768}, {**big_g, "projection_dim": 1280, "hidden_act": "gelu"}


def build_sdxl(tiny: bool = False, seed: int = 0):
    """A random-weight `StableDiffusionXLPipeline` of SDXL base 1.0's shape (or its layout in miniature), built in
    memory: nothing is downloaded or written. Its scheduler is DDPM over SDXL's betas, as diffusers' SDXL
    DreamBooth script trains with (`DDPMScheduler.from_pretrained(..., subfolder="scheduler")`)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from bora_diffusion.embedded import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer

    from sd15_shaped import vae_config

    common = {
        "vocab_size": CLIP_VOCAB_SIZE,
        "max_position_embeddings": CLIP_CONTEXT_LENGTH,
        "hidden_act": "quick_gelu",
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    first, second = sdxl_text_configs(tiny)
    vae = vae_config()  # SDXL's VAE has SD 1.5's shape (its scaling factor is 0.13025)
    if tiny:
        vae.update(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=16)
    vae["scaling_factor"] = 0.13025
    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(**{**common, **first})),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**{**common, **second})),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=UNet2DConditionModel(**sdxl_unet_config(tiny)),
        scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline(args: argparse.Namespace):
    from bora_diffusion.pipeline import load_base

    if not args.sdxl:
        return load_base(args.base, device=args.device, torch_dtype=_DTYPES[args.dtype])
    pipe = build_sdxl(args.tiny).to(args.device)
    if args.dtype != "fp32":
        pipe.to(dtype=_DTYPES[args.dtype])
    if FEATURES[args.features_now]["cached_text"] and args.device != "cpu":
        # Cached outputs mean the encoders need not sit on the accelerator (diffusers' script frees them).
        pipe.text_encoder.to("cpu")
        pipe.text_encoder_2.to("cpu")
    return pipe


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_ours(method: str, args: argparse.Namespace, queue) -> None:
    from bora_diffusion import AdapterConfig
    from bora_diffusion.callbacks import Callback
    from bora_diffusion.concept import load_concept
    from bora_diffusion.data import encode_set
    from bora_diffusion.train import Trainer

    class BenchTrainer(Trainer):
        """Our Trainer; without cached text its instance set keeps token ids, so each step runs the encoders (the
        path a trained token embedding takes; the encoders stay frozen, so no graph is kept through them)."""

        def _instance_set(self):
            for encoder in self.text.encoders:  # frozen, as the recipe's no_grad encoding is
                encoder.requires_grad_(False)
            return encode_set(
                self.pipe,
                self.concept.images,
                self._captions(),
                self.config.resolution,
                cache_latents=True,
                cache_text=FEATURES[args.features_now]["cached_text"],
            )

    pipe = _pipeline(args)
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
        path = BenchTrainer(
            pipe, concept, adapter, config, out_dir=out, base_name="bench", callbacks=[Clock()]
        ).train()
        size = path.stat().st_size
    params = sum(p.numel() for p in pipe.unet.parameters() if p.requires_grad)
    queue.put(_result(stamps, start_rss, args.device, params, size))


def our_config(args: argparse.Namespace):
    """Our TrainConfig: the recipe's budget, then the `--config` fields over it."""
    from bora_diffusion import TrainConfig

    budget = {"steps": args.steps, "learning_rate": 1e-4, "resolution": args.resolution, "seed": 0}
    features = FEATURES[getattr(args, "features_now", "cached")]
    memory = {
        "gradient_checkpointing": features["checkpointing"],
        "adam_8bit": features["adam8bit"] and adam8bit_available(),
    }
    return TrainConfig(**{**budget, **memory, "mixed_precision": args.mixed_precision, **args.config})


def run_recipe(args: argparse.Namespace, queue) -> None:
    import safetensors.torch
    import torch.nn.functional as F
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from bora_diffusion.concept import load_concept
    from bora_diffusion.data import encode_set

    features = FEATURES[args.features_now]
    pipe = _pipeline(args)
    concept = load_concept(args.concept, min_size=1, tokenizer=pipe.tokenizer)  # resized to --resolution
    start_rss = _start_peak_window()
    _reset_cuda_peak(args.device)
    prompts = [concept.instance_prompt(i) for i in concept.images]
    data = encode_set(pipe, concept.images, prompts, args.resolution, cache_latents=True)
    cached = [recipe_encode_prompt(pipe, [p]) for p in prompts] if features["cached_text"] else None
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
    for p in unet.parameters():  # the script's cast_training_params: LoRA factors train in fp32
        if p.requires_grad:
            p.data = p.data.float()
    params = [p for p in unet.parameters() if p.requires_grad]
    if features["adam8bit"] and adam8bit_available():
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=1e-4, weight_decay=1e-2)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    if features["checkpointing"]:
        unet.enable_gradient_checkpointing()
    precision = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    device_type = torch.device(args.device).type
    scaler = torch.amp.GradScaler(device_type, enabled=precision == torch.float16)
    generator = torch.Generator().manual_seed(0)
    unet.train()
    stamps = []
    for _ in range(args.steps):
        index = int(torch.randint(len(prompts), (1,), generator=generator))
        latents = data.images[index : index + 1].to(args.device)  # (1, 4, h, w), cached
        states, pooled = cached[index] if cached else recipe_encode_prompt(pipe, [prompts[index]])
        dtype = unet.dtype
        added = None
        if pooled is not None:  # SDXL: the pooled bigG text and the image's time ids (size, crop, target)
            added = {
                "text_embeds": pooled.to(args.device, dtype),
                "time_ids": data.time_ids[index : index + 1],
            }
            added["time_ids"] = added["time_ids"].to(args.device, dtype)
        noise = torch.randn(latents.shape, generator=generator).to(args.device)
        t = torch.randint(scheduler.config.num_train_timesteps, (1,), generator=generator).to(args.device)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast(device_type, dtype=precision, enabled=precision is not None):
            pred = unet(noisy.to(dtype), t, states.to(args.device, dtype), added_cond_kwargs=added).sample
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


@torch.no_grad()
def recipe_encode_prompt(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The diffusers scripts' `encode_prompt`: SD 1.x the last hidden states (N, 77, 768); SDXL both encoders'
    penultimate states side by side (N, 77, 2048) and the second one's projected pooled output (N, 1280)."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    states, pooled = [], None
    for tokenizer, encoder in pairs:
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(encoder.device)  # (N, 77)
        if len(pairs) == 1:
            return encoder(ids)[0].float(), None
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2].float())  # (N, 77, D_e)
        pooled = out[0].float()  # (N, P)
    return torch.cat(states, dim=-1), pooled


def _result(stamps: list[float], start_rss: int, device: str, params: int, size: int) -> dict:
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    if device.startswith("cuda"):
        peak = total = torch.cuda.max_memory_allocated()
    else:  # the resident set: above the loaded pipeline, and all of it (weights included)
        total = _peak_rss()
        peak = total - start_rss
    return {
        "step_seconds": steps,
        "peak_bytes": peak,
        "total_bytes": total,
        "trainable": params,
        "file_bytes": size,
    }


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


def measure(args: argparse.Namespace) -> list[dict]:
    """Every (features, method) cell in its own process, the recipe and ours interleaved in rotating order over
    `args.rounds` rounds; one row per cell with its median s/step (after `args.warmup` steps of each run), peak
    memory, and ratios to the recipe under the same features."""
    import copy

    names = [RECIPE, *args.methods.split(",")]
    cells = [(features, name) for features in args.features.split(",") for name in names]
    runs: dict[tuple[str, str], list[dict]] = {cell: [] for cell in cells}
    for round_ in range(args.rounds):
        for features, name in cells[round_ % len(cells) :] + cells[: round_ % len(cells)]:
            cell_args = copy.copy(args)
            cell_args.features_now = features
            result = _in_fresh_process(name, cell_args)
            runs[features, name].append(result)
            # A long run (SDXL on a CPU) shows each cell as it ends, so a run cut short still says something.
            timed = result["step_seconds"][args.warmup :] or [math.nan]
            print(
                f"cell {features}/{name}: median {statistics.median(timed):.3f} s/step, peak "
                f"{result['peak_bytes'] / 2**20:.0f} MiB above load, {result['total_bytes'] / 2**20:.0f} MiB total",
                file=sys.stderr,
                flush=True,
            )
    rows = []
    for (features, name), results in runs.items():
        steps = [s for r in results for s in r["step_seconds"][args.warmup :]]
        rows.append(
            {
                "features": features,
                "method": name,
                "step_seconds": statistics.median(steps),
                "peak_bytes": statistics.median(r["peak_bytes"] for r in results),
                "total_bytes": statistics.median(r["total_bytes"] for r in results),
                "trainable": results[0]["trainable"],
                "file_bytes": results[0]["file_bytes"],
            }
        )
    for row in rows:
        ref = next(r for r in rows if r["features"] == row["features"] and r["method"] == RECIPE)
        row["step_ratio"] = row["step_seconds"] / ref["step_seconds"]
        row["peak_ratio"] = row["peak_bytes"] / max(ref["peak_bytes"], 1)
        row["total_ratio"] = row["total_bytes"] / max(ref["total_bytes"], 1)
    return rows


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
    parser.add_argument(
        "--sdxl", action="store_true", help="an SDXL-shaped pipeline (random weights, in memory)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="with --sdxl: its layout at toy widths (for tests)"
    )
    parser.add_argument(
        "--features",
        default=None,
        help="memory feature sets, comma-separated: off (encoders every step), cached (cached text only), on "
        "(gradient checkpointing, 8-bit AdamW where bitsandbytes runs, cached text); default cached, off,on "
        "with --sdxl",
    )
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default="fp32", help="the frozen weights' dtype")
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
    args.features = args.features or ("off,on" if args.sdxl else "cached")
    for features in args.features.split(","):
        if features not in FEATURES:
            parser.error(f"--features: {features!r} is not one of {', '.join(FEATURES)}")
    if args.tiny and not args.sdxl:
        parser.error("--tiny is an option of --sdxl")
    if args.sdxl and (args.sd15 or args.base):
        parser.error("--sdxl builds its own base; leave out --sd15 and --base")
    if args.sd15 and args.base:
        parser.error("--sd15 builds its own base; leave out --base")
    if args.sd15:
        from sd15_shaped import write_pipeline

        scratch = tempfile.TemporaryDirectory(prefix="sd15-shaped-")
        args.base = str(write_pipeline(Path(scratch.name) / "pipeline"))

    load_before = os.getloadavg()
    rows = measure(args)
    load_after = os.getloadavg()
    base = "SDXL-shaped base" if args.sdxl else "SD-1.5-shaped base" if args.sd15 else args.base or "embedded"
    print(
        f"# bench_train: {args.steps} steps x {args.rounds} rounds, rank {args.rank}, {args.resolution} px, "
        f"{base}{' (tiny)' if args.tiny else ''}, {args.device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}, "
        f"weights {args.dtype}, mixed precision {args.mixed_precision}, our config {args.config or 'default'}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"8-bit Adam: {'bitsandbytes' if adam8bit_available() else 'not available on this CPU'}\n"
    )
    print(
        "| features | method | s/step | x recipe | peak MiB above load | x recipe | peak MiB total | x recipe |"
        " trainable | file KiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['features']} | {row['method']} | {row['step_seconds']:.3f} | {row['step_ratio']:.2f} | "
            f"{row['peak_bytes'] / 2**20:.0f} | {row['peak_ratio']:.2f} | {row['total_bytes'] / 2**20:.0f} | "
            f"{row['total_ratio']:.2f} | {row['trainable']:,} | {row['file_bytes'] / 1024:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
