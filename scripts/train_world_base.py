"""Train the small world base model (VAE, then UNet + text encoder) and package it into bora_diffusion.

The embedded default must be a model that really follows prompts, yet it has to be trained on a 2-core CPU with
no downloads. So the recipe is a miniature latent diffusion model on the procedural world
(`bora_diffusion.world.scenes`), in seeded stages, each resumable from its last checkpoint:

    python scripts/train_world_base.py vae     --out /tmp/world_base   # AutoencoderKL, 64 px -> 16x16x4 latents
    python scripts/train_world_base.py decoder --out /tmp/world_base   # sharpens the decoder, encoder frozen
    python scripts/train_world_base.py unet    --out /tmp/world_base   # caches latents, trains UNet + text encoder
    python scripts/train_world_base.py package --out /tmp/world_base   # -> bora_diffusion/world/weights/base/

(`all` runs the four in order; its defaults are the shipped recipe in one go.) `--out` then holds `pipeline/`, a
plain diffusers `StableDiffusionPipeline` folder, plus checkpoints and a `recipe.json` with the settings, losses
and wall times of each stage. `unpack --out DIR` writes the shipped weights back into an empty DIR as a UNet
checkpoint, so a later session (or a GPU) can continue them.

The shipped weights (release `embedded:world-base-2`) got there in pieces, over three sessions
(bora_diffusion/world/weights/base/recipe.json has every run's settings, losses and wall times):

    python scripts/train_world_base.py vae     --out /tmp/world_base
    python scripts/train_world_base.py unet    --out /tmp/world_base --steps 2400 --decay-steps 0 --offset-noise 0
    python scripts/train_world_base.py unet    --out /tmp/world_base --steps 3400 --decay-steps 0
    python scripts/train_world_base.py package --out /tmp/world_base   # release 1: 32% caption retrieval
    python scripts/train_world_base.py unpack  --out /tmp/wb
    python scripts/train_world_base.py decoder --out /tmp/wb
    python scripts/train_world_base.py unet    --out /tmp/wb --steps 10600 --decay-steps 1600
    python scripts/train_world_base.py package --out /tmp/wb           # release 2: 85.5%

i.e. 2,400 UNet steps on plain noise, 1,000 with offset noise (added once the plain run's samples showed the
background-color failure described below), 5,600 more at the same learning rate and a final 1,600 decaying it
to zero, with the decoder fine-tuned on the side. (The last UNet run was in fact a branch, at step 5,050, of a
run that decayed from 6,400 to 7,600 and reached 77.5%; flat until 5,050, the two are the same run.) The one-go
`all` (offset noise from step 0, AdamW's moments never restarted) has not been made.

Its cost on this project's 2-core CPU, idle, 2 threads (rates measured on the shipped stages): VAE 0.09 s per
step of 32 crops (1,200 steps, 2 min), decoder 0.21 s per step of 32 images (2,400 steps, 8 min), latent cache
of 24,000 scenes under a minute, UNet + text encoder 0.40 s per step of 32 (10,600 steps, 71 min): about 82
minutes, inside the 90-minute budget.

Why these choices:
- VAE: factor 4 and no attention in its mid block, so it is fully convolutional and trains on 32 px crops of the
  64 px images (4x cheaper per sample than whole images) and still decodes whole 64 px images. L1 + a tiny KL.
- UNet: two levels (48, 96 channels) at 16x16 and 8x8 latents, self- and cross-attention (Transformer2D blocks)
  at both, so adapters find to_q/to_k/to_v/to_out.0 everywhere. Epsilon prediction on SD-1.5's noise schedule,
  min-SNR-5 loss weighting and an EMA of the weights, which is what makes a short CPU run usable.
- Text encoder: a 2-layer CLIPTextModel of width 64 over the real 49,408-token CLIP tokenizer. The world uses
  fewer than 60 of those tokens; the other rows never get a gradient, keep their seeded initial values exactly
  (AdamW without weight decay on them) and are not shipped: `embedded.untrained_token_rows` redraws them.
- The learning rate is warmup-stable-decay (`--decay-steps`; Hu et al. 2024, MiniCPM): flat, so a run can be
  extended by resuming with more steps, then linear to zero over the last steps. The decay is worth more than
  its steps: the flat run's EMA at step 5,050 picked the right caption 46% of the time, 1,200 decaying steps
  later 77.5%.
- Decoder (`decoder` stage): the VAE's 1,200 steps left it blurry (held-out PSNR 23.6 dB; the world CLIP read the
  captions of 71% of round-tripped renders right, against 96% of the renders themselves). Fine-tuning the decoder
  alone on whole images (L1, the encoder frozen, as SD's fine-tuned VAE decoders were made) sharpens it without
  moving the latent space, so it can run after the UNet: 2,400 steps gave 27.7 dB and 89%.
- `--vae-objects` (0 in release 2): a share of each VAE and decoder batch drawn as random multi-colored objects
  (`bora_diffusion.world.random_objects`), because the world's flat one-colored shapes never teach the VAE the
  novel concepts' many-colored parts: the shipped VAE's round trip keeps 0.69 of their identity and none of
  notched-ring's; a VAE stage at share 0.5 keeps 0.73 and reconstructs world scenes better
  (`scripts/bench_identity.py`, docs/benchmarks.md). A new VAE needs a new UNet, so it waits for release 3.
- Captions are dropped 10% of the time so classifier-free guidance works at sampling time.
- Offset noise (`--offset-noise`, Guttenberg 2023): SD-1.5's schedule leaves 6.8% of the image in x_T, and on a
  16x16 latent the per-channel mean of Gaussian noise (std 1/16) is as large as that leftover, so a model trained
  on plain noise reads the background color off the seed's noise instead of the prompt (at step 2,400 it drew
  "a small white triangle at the top on a blue background" on green or red for 4 of 4 seeds). A per-(image,
  channel) constant added to the noise makes that mean uninformative: the color has to come from the text.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from bora_diffusion.embedded import (
    CLIP_CONTEXT_LENGTH,
    CLIP_VOCAB_SIZE,
    TOKEN_ROWS_SEED,
    clip_tokenizer,
    load_shipped_base,
    sd15_scheduler,
    shipped_base_dir,
    untrained_token_rows,
)
from bora_diffusion.seeding import derive_seed
from bora_diffusion.world import scenes
from bora_diffusion.world.novel import placed_view
from bora_diffusion.world.random_objects import random_painter

IMAGE_SIZE = 64
LATENT_SIZE = 16  # VAE factor 4
LATENT_CHANNELS = 4
TEXT_WIDTH = 64


# ------------------------------------------------------------------------------------------------ the models
def make_vae() -> AutoencoderKL:
    """Three levels -> factor 4; no mid-block attention, so crops and whole images see the same operator."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def make_unet() -> UNet2DConditionModel:
    """Cross-attention at both levels (16x16 and 8x8) and in the mid block: every level can bind words to places."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(48, 96),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,  # diffusers' naming: 4 heads (head width 12 at 48 channels, 24 at 96)
        norm_num_groups=16,
    )


def make_text_encoder(seed: int) -> CLIPTextModel:
    """A small CLIP text transformer whose token table is the seeded `untrained_token_rows` (see module doc)."""
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_CONTEXT_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    torch.manual_seed(seed)
    model = CLIPTextModel(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(
            untrained_token_rows(CLIP_VOCAB_SIZE, TEXT_WIDTH, TOKEN_ROWS_SEED)
        )
    return model


# ------------------------------------------------------------------------------------------------ utilities
def to_tensor(images: list) -> torch.Tensor:
    """PIL RGB images -> (batch, 3, H, W) in [-1, 1]."""
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])  # (batch, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def batches(seed: int, batch_size: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless world batches: (batch, 3, 64, 64) in [-1, 1] and their captions, after the first `skip` (the
    stream is deterministic, so a resumed stage skips the batches it has seen; rendering is ~1 ms per image)."""
    stream = scenes(seed)
    for _ in range(skip * batch_size):
        next(stream)
    while True:
        pairs = [next(stream) for _ in range(batch_size)]
        yield to_tensor([image for image, _ in pairs]), [caption for _, caption in pairs]


def with_objects(images: torch.Tensor, share: float, seed: int, step: int) -> torch.Tensor:
    """`images` (batch, 3, 64, 64) with its last `share` replaced by pictures of random multi-colored objects
    (`bora_diffusion.world.random_objects`: the novel concepts' style, drawn independently of them), each on
    its own background; seeded by (seed, step), so a resumed stage draws the same. Share 0 returns `images`."""
    count = round(share * images.shape[0])
    if count == 0:
        return images
    rng = np.random.default_rng(derive_seed("world base VAE objects", seed, step))
    objects = [
        placed_view("random", rng).render(IMAGE_SIZE, painter=random_painter(rng)) for _ in range(count)
    ]
    return torch.cat([images[: images.shape[0] - count], to_tensor(objects)])


def atomic_save(obj: object, path: Path) -> None:
    """torch.save through a temporary file and a rename, so a killed run never leaves a torn checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA with the usual warm-up (decay (1 + step) / (10 + step)), so early averages are not stuck at init."""
    decay = min(max_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param, 1.0 - decay)


def resume(
    ckpt: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, stage: str, log
) -> int:
    """Load `ckpt`, when there is one, into `modules` (by key) and `optimizer`; the step to start from."""
    if not ckpt.exists():
        return 0
    state = torch.load(ckpt, weights_only=True)
    for key, module in modules.items():
        module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    log(f"{stage}: resumed at step {state['step']}")
    return state["step"]


def checkpoint(modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, step: int) -> dict:
    """What `resume` reads back."""
    return {
        **{key: module.state_dict() for key, module in modules.items()},
        "optimizer": optimizer.state_dict(),
        "step": step,
    }


def optimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    """One step on `loss` with the gradient norm clipped to 1; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss.item()


def update_recipe(out: Path, stage: str, record: dict) -> None:
    """Write `record` as the stage's entry; a resumed run keeps the record of the run it continued."""
    path = out / "recipe.json"
    recipe = json.loads(path.read_text()) if path.exists() else {}
    if record.get("resumed_from") and stage in recipe:
        record = {**record, "continues": recipe[stage]}
    recipe[stage] = record
    path.write_text(json.dumps(recipe, indent=2))


def run_loop(
    step_fn: Callable[[int], float],
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    start: int,
    steps: int,
    ckpt: Path,
    every: int,
    log: Callable[[str], None],
) -> list[float]:
    """Call `step_fn(step)` from `start` to `steps`, checkpointing `modules` and `optimizer` (what `resume` reads)
    every `every` steps; returns windowed losses."""
    window: list[float] = []
    means: list[float] = []
    tic = time.time()
    for step in range(start, steps):
        window.append(step_fn(step))
        if (step + 1) % every == 0 or step + 1 == steps:
            mean = float(np.mean(window))
            means.append(mean)
            rate = (time.time() - tic) / len(window)
            log(f"step {step + 1}/{steps} loss {mean:.4f} ({rate:.2f} s/step)")
            atomic_save(checkpoint(modules, optimizer, step + 1), ckpt)
            window, tic = [], time.time()
    return means


def wsd_scale(step: int, steps: int, warmup: int, decay: int) -> float:
    """Warmup-stable-decay: linear warm-up over `warmup` steps, flat, then linear to 0 over the last `decay`.

    The flat phase can be extended by a later run (resume with more `steps`), and the final decay is what turns an
    EMA-smoothed but still noisy model into a settled one.
    """
    return min(1.0, (step + 1) / warmup, (steps - step) / decay if decay > 0 else 1.0)


def held_out_reconstruction(vae: AutoencoderKL, seed: int) -> tuple[float, float, float]:
    """(L1, PSNR in dB) of whole 64 px held-out images through the posterior mean, and the standard deviation
    of those posterior means (what SD's latent scaling factor divides by)."""
    held_out, _ = next(batches(seed + 10_000, 256))  # (256, 3, 64, 64)
    with torch.no_grad():
        latents = vae.encode(held_out).latent_dist.mean  # (256, 4, 16, 16)
        recon = vae.decode(latents).sample
    l1 = float(F.l1_loss(recon, held_out))
    psnr = float(10 * torch.log10(4.0 / F.mse_loss(recon, held_out)))  # peak-to-peak range is 2
    return l1, psnr, float(latents.std())


# ------------------------------------------------------------------------------------------------ stage: VAE
def train_vae(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    """AutoencoderKL on random 32 px crops of world images; writes `<out>/vae` with a measured scaling factor."""
    out: Path = args.out
    ckpt = out / "vae_ckpt.pt"
    torch.manual_seed(args.seed)
    vae = make_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    start = resume(ckpt, {"vae": vae}, optimizer, "vae", log)
    data = batches(args.seed, args.vae_batch, skip=start)
    t0 = time.time()

    def step_fn(step: int) -> float:
        images = with_objects(next(data)[0], args.vae_objects, args.seed, step)  # (batch, 3, 64, 64)
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        corner = torch.randint(0, IMAGE_SIZE - args.vae_crop + 1, (2,), generator=generator).tolist()
        crops = images[:, :, corner[0] : corner[0] + args.vae_crop, corner[1] : corner[1] + args.vae_crop]
        posterior = vae.encode(crops).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(latents).sample  # (batch, 3, crop, crop)
        loss = F.l1_loss(recon, crops) + args.vae_kl * posterior.kl().mean()
        return optimize(optimizer, loss, list(vae.parameters()))

    losses = run_loop(step_fn, {"vae": vae}, optimizer, start, args.vae_steps, ckpt, args.log_every, log)
    wall = time.time() - t0

    # Whole-image evaluation on held-out scenes (another seed) and the latent scale SD's convention wants.
    vae.eval()
    l1, psnr, latent_std = held_out_reconstruction(vae, args.seed)
    scaling = 1.0 / latent_std
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    log(f"vae: held-out L1 {l1:.4f}, PSNR {psnr:.2f} dB, scaling_factor {scaling:.4f}")
    update_recipe(
        out,
        "vae",
        {
            "steps": args.vae_steps,
            "batch": args.vae_batch,
            "crop": args.vae_crop,
            "lr": args.vae_lr,
            "kl": args.vae_kl,
            "objects": args.vae_objects,
            "seed": args.seed,
            "wall_s_this_run": round(wall, 1),
            "resumed_from": start,
            "loss_windows": [round(x, 5) for x in losses],
            "held_out_l1": round(l1, 5),
            "held_out_psnr_db": round(psnr, 2),
            "scaling_factor": scaling,
        },
    )


# ------------------------------------------------------------------------------------------------ stage: decoder
def train_decoder(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    """Sharpen `<out>/vae`'s decoder on whole images with the encoder frozen; rewrites `<out>/vae` in place.

    L1 on whole 64 px images from their posterior means; the learning rate decays to 0 over the last quarter.

    The encoder, and so the latent space the UNet learns, stays exactly as it was: this stage can run before or
    after the UNet (as SD's fine-tuned decoders were made), and the latent cache stays valid.
    """
    out: Path = args.out
    ckpt = out / "decoder_ckpt.pt"
    vae = AutoencoderKL.from_pretrained(out / "vae")
    for module in (vae.encoder, vae.quant_conv):
        module.requires_grad_(False).eval()
    decoder_params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    optimizer = torch.optim.AdamW(decoder_params, lr=args.decoder_lr, weight_decay=0.0)
    start = resume(ckpt, {"vae": vae}, optimizer, "decoder", log)
    # A stream neither the VAE nor the UNet was trained on.
    data = batches(args.seed + 20_000, args.vae_batch, skip=start)
    t0 = time.time()

    def step_fn(step: int) -> float:
        images = with_objects(next(data)[0], args.vae_objects, args.seed + 20_000, step)  # (batch, 3, 64, 64)
        with torch.no_grad():  # the posterior mean: what the UNet learns to produce
            latents = vae.encode(images).latent_dist.mean  # (batch, 4, 16, 16)
        for group in optimizer.param_groups:
            group["lr"] = args.decoder_lr * wsd_scale(
                step, args.decoder_steps, warmup=1, decay=args.decoder_steps // 4
            )
        return optimize(optimizer, F.l1_loss(vae.decode(latents).sample, images), decoder_params)

    losses = run_loop(step_fn, {"vae": vae}, optimizer, start, args.decoder_steps, ckpt, args.log_every, log)
    wall = time.time() - t0
    vae.eval()
    l1, psnr, _ = held_out_reconstruction(vae, args.seed)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    if (out / "pipeline").exists():
        vae.save_pretrained(out / "pipeline" / "vae", safe_serialization=True)
    log(f"decoder: held-out L1 {l1:.4f}, PSNR {psnr:.2f} dB")
    update_recipe(
        out,
        "decoder",
        {
            "steps": args.decoder_steps,
            "batch": args.vae_batch,
            "lr": args.decoder_lr,
            "objects": args.vae_objects,
            "seed": args.seed,
            "wall_s_this_run": round(wall, 1),
            "resumed_from": start,
            "loss_windows": [round(x, 5) for x in losses],
            "held_out_l1": round(l1, 5),
            "held_out_psnr_db": round(psnr, 2),
        },
    )


# ------------------------------------------------------------------------------------------------ stage: UNet
def build_cache(args: argparse.Namespace, vae: AutoencoderKL, log: Callable[[str], None]) -> dict:
    """Encode `--samples` world scenes once: scaled latent means (N, 4, 16, 16) fp16 and token ids (N, 77)."""
    path = args.out / "latent_cache.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    tokenizer = clip_tokenizer()
    latents, ids = [], []
    t0 = time.time()
    data = batches(args.seed + 1, 64)
    with torch.no_grad():
        for index in range(math.ceil(args.samples / 64)):
            images, captions = next(data)
            latents.append((vae.encode(images).latent_dist.mean * vae.config.scaling_factor).half())
            tokens = tokenizer(
                captions, padding="max_length", max_length=CLIP_CONTEXT_LENGTH, return_tensors="pt"
            )
            ids.append(tokens.input_ids.int())
            if index % 50 == 0:
                log(f"cache: {index * 64}/{args.samples} ({time.time() - t0:.0f} s)")
    cache = {"latents": torch.cat(latents)[: args.samples], "ids": torch.cat(ids)[: args.samples]}
    empty = tokenizer([""], padding="max_length", max_length=CLIP_CONTEXT_LENGTH, return_tensors="pt")
    cache["empty_ids"] = empty.input_ids.int()[0]
    atomic_save(cache, path)
    log(f"cache: {args.samples} samples in {time.time() - t0:.0f} s")
    return cache


def make_unet_optimizer(
    unet: UNet2DConditionModel,
    text_rest: list[torch.nn.Parameter],
    token_table: torch.nn.Parameter,
    lr: float,
) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        [
            {"params": [*unet.parameters(), *text_rest], "weight_decay": 0.01},
            # No decay on the token table: rows of tokens the world never uses must stay exactly as drawn.
            {"params": [token_table], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def train_unet(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    """UNet + text encoder on the cached latents; writes the complete pipeline folder `<out>/pipeline`."""
    out: Path = args.out
    ckpt = out / "unet_ckpt.pt"
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    t_cache = time.time()
    cache = build_cache(args, vae, log)
    cache_wall = time.time() - t_cache
    latents, ids, empty_ids = cache["latents"], cache["ids"].long(), cache["empty_ids"].long()

    torch.manual_seed(args.seed)
    unet = make_unet()
    text_encoder = make_text_encoder(args.seed + 2)
    ema_unet, ema_text = make_unet(), make_text_encoder(args.seed + 2)
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text_encoder.state_dict())
    token_table = text_encoder.get_input_embeddings().weight
    rest = [p for p in text_encoder.parameters() if p is not token_table]
    optimizer = make_unet_optimizer(unet, rest, token_table, args.lr)
    scheduler = sd15_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod  # (1000,)
    modules = {"unet": unet, "text": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text}
    start = resume(ckpt, modules, optimizer, "unet", log)
    n = latents.shape[0]
    t0 = time.time()

    def step_fn(step: int) -> float:
        # Batch indices: a seeded permutation per epoch, so a resumed run draws exactly the same batches.
        per_epoch = n // args.batch
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 7919 + epoch))
        index = order[offset * args.batch : (offset + 1) * args.batch]
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        x0 = latents[index].float()  # (batch, 4, 16, 16)
        tokens = ids[index].clone()  # (batch, 77)
        drop = torch.rand(args.batch, generator=generator) < args.caption_dropout
        tokens[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=generator)
        if args.offset_noise > 0:  # a per-(image, channel) constant: see the module doc
            shift = torch.randn((args.batch, x0.shape[1], 1, 1), generator=generator)  # (batch, 4, 1, 1)
            noise = noise + args.offset_noise * shift
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)  # (batch, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in optimizer.param_groups:
            group["lr"] = args.lr * wsd_scale(step, args.steps, args.warmup, args.decay_steps)
        context = text_encoder(tokens).last_hidden_state  # (batch, 77, 64)
        pred = unet(noisy, t, context).sample  # (batch, 4, 16, 16)
        snr = a.flatten() / (1 - a.flatten())
        weight = torch.clamp(snr, max=args.min_snr) / snr  # min-SNR-gamma for epsilon targets
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        value = optimize(optimizer, loss, [*unet.parameters(), *text_encoder.parameters()])
        ema_update(ema_unet, unet, step, args.ema)
        ema_update(ema_text, text_encoder, step, args.ema)
        return value

    losses = run_loop(step_fn, modules, optimizer, start, args.steps, ckpt, args.log_every, log)
    wall = time.time() - t0
    write_pipeline(out / "pipeline", ema_unet, vae, ema_text)
    log(f"unet: pipeline written to {out / 'pipeline'}")
    update_recipe(
        out,
        "unet",
        {
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "warmup": args.warmup,
            "decay_steps": args.decay_steps,
            "ema": args.ema,
            "min_snr": args.min_snr,
            "caption_dropout": args.caption_dropout,
            "offset_noise": args.offset_noise,
            "samples": args.samples,
            "seed": args.seed,
            "cache_wall_s": round(cache_wall, 1),
            "wall_s_this_run": round(wall, 1),
            "resumed_from": start,
            "loss_windows": [round(x, 5) for x in losses],
        },
    )


def write_pipeline(folder: Path, unet: UNet2DConditionModel, vae: AutoencoderKL, text: CLIPTextModel) -> None:
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text.eval(),
        tokenizer=clip_tokenizer(),
        unet=unet.eval(),
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


# ------------------------------------------------------------------------------------------------ stage: unpack
def unpack(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    """The shipped weights -> `<out>/vae` and a UNet checkpoint at the shipped step, so training can continue.

    For a session (or a GPU) that extends the shipped model without its original `--out` folder. What is lost is
    the fp32 precision (weights ship in fp16) and AdamW's moments (they restart at zero), and the live weights
    restart at the EMA's; `recipe.json` is copied so the record of every earlier run carries on. The shipped
    run ended its decay at lr 0, and a continued run re-enters the flat phase at full lr at once (the warm-up
    counts from step 0), so expect its loss to rise before a new decay brings it down.
    """
    out: Path = args.out
    if (out / "unet_ckpt.pt").exists() or (out / "vae").exists():
        raise SystemExit(f"{out} already holds a training run; unpack into an empty --out")
    pipe = load_shipped_base()
    recipe = json.loads((shipped_base_dir() / "recipe.json").read_text())
    recipe.pop("package", None)
    pipe.vae.save_pretrained(out / "vae", safe_serialization=True)
    unet, text = pipe.unet.train(), pipe.text_encoder.train()
    token_table = text.get_input_embeddings().weight
    rest = [p for p in text.parameters() if p is not token_table]
    optimizer = make_unet_optimizer(unet, rest, token_table, args.lr)
    modules = {"unet": unet, "text": text, "ema_unet": unet, "ema_text": text}  # the EMA restarts at itself
    step = recipe["unet"]["steps"]
    atomic_save(checkpoint(modules, optimizer, step), out / "unet_ckpt.pt")
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    log(f"unpack: {out} holds the shipped VAE and UNet at step {step}; continue with `unet --steps N`")


# ------------------------------------------------------------------------------------------------ stage: package
def package(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    """`<out>/pipeline` -> the shipped files: fp16 safetensors + configs, the token table reduced to trained rows."""
    pipe = StableDiffusionPipeline.from_pretrained(args.out / "pipeline")
    target = shipped_base_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae"):
        module = getattr(pipe, name)
        save_file(
            {k: v.half().contiguous() for k, v in module.state_dict().items()}, target / f"{name}.safetensors"
        )
        (target / f"{name}.json").write_text(json.dumps(dict(module.config), indent=2, sort_keys=True))
    text = pipe.text_encoder.state_dict()
    table_key = next(key for key in text if key.endswith("token_embedding.weight"))
    table = text.pop(table_key)  # (49408, 64)
    drawn = untrained_token_rows(table.shape[0], table.shape[1], TOKEN_ROWS_SEED)
    changed = (table != drawn).any(dim=1)  # (49408,)
    rows = torch.nonzero(changed).flatten()
    tensors = {k: v.half().contiguous() for k, v in text.items()}
    tensors["token_rows.ids"] = rows.int()
    tensors["token_rows.values"] = table[rows].half().contiguous()
    save_file(
        tensors, target / "text_encoder.safetensors", metadata={"token_rows_seed": str(TOKEN_ROWS_SEED)}
    )
    (target / "text_encoder.json").write_text(pipe.text_encoder.config.to_json_string())
    (target / "scheduler.json").write_text(json.dumps(dict(pipe.scheduler.config), indent=2, sort_keys=True))
    recipe_path = args.out / "recipe.json"
    recipe = json.loads(recipe_path.read_text()) if recipe_path.exists() else {}
    recipe["package"] = {"trained_token_rows": int(rows.numel()), "python": platform.python_version()}
    (target / "recipe.json").write_text(json.dumps(recipe, indent=2))
    sizes = {p.name: p.stat().st_size for p in sorted(target.iterdir())}
    log(
        f"package: {rows.numel()} trained token rows; files {sizes}; total {sum(sizes.values()) / 1e6:.2f} MB"
    )


# ------------------------------------------------------------------------------------------------ entry point
STAGES = {
    "vae": train_vae,
    "decoder": train_decoder,
    "unet": train_unet,
    "package": package,
    "unpack": unpack,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=(*STAGES, "all"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/world_base"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-crop", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-kl", type=float, default=1e-6)
    parser.add_argument(
        "--vae-objects",
        type=float,
        default=0.0,
        help="share of each VAE and decoder batch drawn as random multi-colored objects (release 2: 0)",
    )
    parser.add_argument("--decoder-steps", type=int, default=2400)
    parser.add_argument("--decoder-lr", type=float, default=3e-4)
    parser.add_argument("--samples", type=int, default=24_000)
    parser.add_argument("--steps", type=int, default=10600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--decay-steps", type=int, default=1600, help="decay the lr linearly to 0 over the last N steps (WSD)"
    )
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--min-snr", type=float, default=5.0)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--offset-noise", type=float, default=0.1)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    stages = ("vae", "decoder", "unet", "package") if args.stage == "all" else (args.stage,)
    for stage in stages:
        t0 = time.time()
        STAGES[stage](args, log)
        log(f"{stage}: done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
