"""The denoising objective of one training step, and how data-parallel processes share its batch.

Every process draws the same global batch from the one generator (P x B instance images, as many class images,
then noise and timesteps for every row) and keeps its shard: rows p x B .. (p + 1) x B of each group. A P-process
run of batch B therefore trains on exactly the batches of a 1-process run of batch P x B. Latents are noised with
DDPM over the base's own schedule; the target is the noise (epsilon) or the velocity (v-prediction); an SDXL UNet
also takes the pooled text and each image's time ids; Min-SNR-gamma weighting is optional.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data import EncodedSet, encode_images
from ..text import PromptEncoder, TextStates

Shard = tuple[int, int]  # (this process's index p, the number of processes P)


def training_scheduler(sampler):
    """The DDPM forward process over the base's own noise schedule, to noise latents for training.

    A pipeline ships the scheduler it samples with: SDXL's Euler (and the DPM solvers) noise in sigma space,
    `x + sigma * noise`, not the `sqrt(a) x + sqrt(1 - a) noise` that an epsilon or v target assumes. So training
    uses DDPM built from the same config (betas, train timesteps, prediction type, zero-SNR rescaling), as
    diffusers' training scripts do; for DDPM-family samplers (DDIM, PNDM) the noised latents are the same."""
    # diffusers is heavy: imported when a run starts, not with the package.
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(sampler.config)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B,) Min-SNR-gamma loss weights (arXiv 2303.09556) for timesteps (B,): min(SNR, gamma) / SNR for an
    epsilon-predicting model, min(SNR, gamma) / (SNR + 1) for a v-predicting one, where SNR(t) = alpha_bar(t) /
    (1 - alpha_bar(t)). Either way the clean image's squared error weighs min(SNR, gamma): the nearly clean
    timesteps count no more than the one where SNR = gamma."""
    alpha_bar = scheduler.alphas_cumprod.to(torch.float64)[timesteps.cpu()]  # (B,)
    snr = alpha_bar / (1 - alpha_bar)
    denominator = snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr
    return (snr.clamp(max=gamma) / denominator).float()


def draw_shard(
    data: EncodedSet, batch_size: int, shard: Shard, generator, vae, text: PromptEncoder
) -> tuple[torch.Tensor, TextStates, torch.Tensor]:
    """This process's shard of one drawn global batch as latents (B, C, h, w), its text and its time ids
    (B, 6); pixels go through `vae` and token ids through `text` when `data` holds them uncached."""
    process, processes = shard
    n = batch_size
    batch = data.batch(processes * n, generator, keep=slice(process * n, (process + 1) * n))
    images, states = batch.images, batch.text
    if not data.encoded:
        images = encode_images(vae, images)
    if not data.text_encoded:  # token ids: encode now, so the trained token embedding gets its gradient
        states = text.encode_ids(states)
    return images.cpu(), states.to("cpu"), batch.time_ids


def denoising_loss(
    model,
    scheduler,
    latents: torch.Tensor,
    text: TextStates,
    time_ids: torch.Tensor,
    generator,
    *,
    config: TrainConfig,
    prior: bool,
    shard: Shard,
    device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The noise-prediction loss on this process's rows: `latents` (G * B, C, h, w), `text` and `time_ids`
    (G * B, 6) hold the instance shard, then with `prior` the class shard (G = 2), each of B = batch_size rows.

    The generator draws noise and timesteps for all G x P x B rows of the global batch, as a 1-process run of
    batch P x B draws them, and this process keeps its own; the class rows weigh `config.prior_weight`."""
    groups = 2 if prior else 1
    process, processes = shard
    n = config.batch_size
    rows = torch.cat(  # (groups * B,) this process's rows of the global (groups * P * B) batch
        [torch.arange(n) + (group * processes + process) * n for group in range(groups)]
    )
    noise = torch.randn((groups * processes * n, *latents.shape[1:]), generator=generator)[rows]
    timesteps = torch.randint(
        scheduler.config.num_train_timesteps, (groups * processes * n,), generator=generator
    )[rows]  # (groups * B,)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    text = text.to(device, dtype)
    added = None  # SDXL's added conditioning: the pooled text and each image's time ids
    if text.pooled is not None:
        added = {"text_embeds": text.pooled, "time_ids": time_ids.to(device, dtype)}
    prediction = model(
        noisy.to(device, dtype), timesteps.to(device), text.states, added_cond_kwargs=added
    ).sample.float()
    target = target.to(device)
    if config.snr_gamma is None:
        loss = F.mse_loss(prediction[:n], target[:n])
        if prior:
            loss = loss + config.prior_weight * F.mse_loss(prediction[n:], target[n:])
    else:
        per_sample = (prediction - target).pow(2).flatten(1).mean(1)  # (B,)
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, config.snr_gamma).to(device)
        loss = per_sample[:n].mean()
        if prior:
            loss = loss + config.prior_weight * per_sample[n:].mean()
    return loss
