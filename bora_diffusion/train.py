"""Concept training: a noise-prediction loss on a handful of images, through adapters only.

One `Trainer` trains one concept on a base pipeline; `train_concepts` trains several, each on its own slots of a
shared ledger, each alone (the others inactive), so they can later be fused without interference. All randomness
(batch choice, noise, timesteps) comes from one seeded generator whose state goes into every checkpoint, so a run
stopped and resumed ends with the same adapter, bit for bit on CPU, as a run that never stopped.

Under a launcher that starts several processes (`accelerate launch --multi_gpu --num_processes P`, torchrun) the same
code runs data-parallel: accelerate wraps the UNet in DDP, which averages its gradients, and the token's embedding
rows (outside the UNet) have theirs averaged here. Every process holds the same generator, seeded by the seed
alone, and draws the global batch (P x batch_size images of the concept, as many of the class, their noise and
timesteps); process p keeps shard p. A P-process run of batch B therefore trains on exactly the batches of a
1-process run of batch P x B and takes the same steps up to float summation order (tests/test_multiprocess.py
measures it), its checkpoints hold the one generator state, and a resume continues exactly on any process count
with the same global batch. Only the main process writes files.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from .atomic import atomic_path, temp_dir
from .callbacks import Callback, TrainState
from .config import AdapterConfig, TrainConfig
from .data import EncodedSet, encode_images, encode_set
from .embeddings import add_token, vector_tokens
from .errors import BoraError, ConfigError
from .formats import save_adapter
from .inject import adapter_state_dict, inject, load_adapter_state_dict, mark_trainable, set_active
from .locking import PromptLock, WordLock, lock_prompts
from .seeding import derive_seed
from .slots import SlotLedger
from .text import PromptEncoder, TextStates

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


class TrainingDiverged(BoraError):
    """The loss became NaN or infinite."""


class ConceptLike(Protocol):
    """What training needs of a concept (bora_diffusion.concept.Concept provides it)."""

    name: str
    token: str
    class_word: str
    images: Sequence[Path]
    class_prompt: str  # the prior-preservation prompt, e.g. "a photo of a kettle"

    def instance_prompt(self, image: Path) -> str: ...


class Trainer:
    """Train concept `concept` with `adapter` settings on `pipe`'s UNet; write `<out_dir>/<name>.safetensors`."""

    def __init__(
        self,
        pipe,
        concept: ConceptLike,
        adapter: AdapterConfig,
        config: TrainConfig,
        *,
        out_dir: str | Path,
        base_name: str,
        ledger: SlotLedger | None = None,
        callbacks: Sequence[Callback] = (),
        class_dir: str | Path | None = None,
    ) -> None:
        self.pipe, self.concept, self.adapter, self.config = pipe, concept, adapter, config
        self.out_dir = Path(out_dir)
        self.base_name = base_name
        self.ledger = ledger
        self.callbacks = list(callbacks)
        self.class_dir = Path(class_dir) if class_dir else self.out_dir / "class_images" / concept.class_word
        self.name = concept.name
        self.text = PromptEncoder(pipe)
        self.noise_schedule = training_scheduler(pipe.scheduler)
        # The token's text embedding, when it trains: (N, D_e) rows on each text encoder (two on SDXL).
        self.embeddings: list[torch.nn.Parameter] = []
        self.lock: PromptLock | None = None  # keeps the token-free prompts' keys and values, when it weighs
        self.word_lock: WordLock | None = None  # keeps the other words of the captions, when it weighs
        self.shard = (0, 1)  # (this process's index, the number of processes), set by `train`
        self.main_process = True  # whether this process writes the files, set by `train`
        self.process_losses: list[float] = []  # the last step's loss on each process's shard

    # ----------------------------------------------------------------------------------------------- the run
    def train(self, *, resume: bool = False) -> Path:
        """Run to `config.steps`; with `resume`, continue from the newest checkpoint in `out_dir` if there is one."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        config, unet = self.config, self.pipe.unet
        # accelerate keeps one state per process and refuses a second Accelerator with another mixed precision;
        # one process (the app, a notebook, a test run) trains many concepts, each with its own settings. The
        # process group (PartialState) is kept, so this is safe under `accelerate launch`.
        AcceleratorState._reset_state()
        accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation,
            cpu=unet.device.type == "cpu",
        )
        if config.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            raise ConfigError("mixed_precision 'fp16' needs a GPU; use 'no' or 'bf16' on the CPU")
        self.main_process = accelerator.is_main_process
        self.shard = (accelerator.process_index, accelerator.num_processes)
        self._set_attention()
        prior = None
        if config.prior_weight > 0:  # class images come from the bare base
            with (
                accelerator.main_process_first()
            ):  # the main process generates the missing ones, the rest read
                prior = self._prior_set()
        if config.train_embedding:
            self.embeddings = self._add_token()
        instance = self._instance_set()

        inject(unet, self.adapter, name=self.name, ledger=self.ledger)
        self.lock = self._prompt_lock() if config.lock_weight > 0 else None
        # Without a trained embedding the other words cannot move: nothing to lock (a folder's recipe may carry a
        # word lock that `--no-train-embedding` leaves idle).
        self.word_lock = self._word_lock() if config.word_lock_weight > 0 and self.embeddings else None
        set_active(unet, [self.name])
        params = mark_trainable(unet, [self.name])
        optimizer = self._optimizer(params)
        params = [*params, *self.embeddings]
        schedule = self._lr_schedule(optimizer)
        # One generator for the whole run, the same on every process: each draws the global batch and keeps its
        # shard (`_loss`). The trailing 0 is the process index that single-process runs were seeded with before
        # the draw became global, so a 1-process run draws what it always drew.
        generator = torch.Generator().manual_seed(derive_seed("train", config.seed, 0))
        step = self._resume(optimizer, schedule, generator) if resume else 0
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        model, optimizer = accelerator.prepare(unet, optimizer)
        model.train()

        state = TrainState(self.name, step, config.steps)
        start = time.perf_counter()
        self._emit("on_train_start", state)
        while step < config.steps:
            losses = []  # per micro-batch, each process's loss on its shard
            for _ in range(config.gradient_accumulation):
                with accelerator.accumulate(model):
                    loss = self._loss(model, instance, prior, generator, accelerator.device)
                    # Every process sees every shard's loss, so a NaN on one stops them all at the same step
                    # (a lone process raising would leave the others waiting in the next all-reduce).
                    shard_losses = accelerator.gather(loss.detach().reshape(1)).tolist()  # P floats
                    if not all(math.isfinite(value) for value in shard_losses):
                        bad = next(value for value in shard_losses if not math.isfinite(value))
                        raise TrainingDiverged(self._diverged_message(step + 1, bad))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        self._average_embedding_grads(accelerator)
                        if config.max_grad_norm is not None:
                            accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(shard_losses)
            schedule.step()
            step += 1
            # The shards are equal, so the mean of their losses is the global batch's loss.
            self.process_losses = [sum(shard) / len(shard) for shard in zip(*losses, strict=True)]
            state.step, state.lr = step, schedule.get_last_lr()[0]
            state.loss = sum(self.process_losses) / len(self.process_losses)
            state.seconds = time.perf_counter() - start
            self._emit("on_step_end", state)  # on every process: a callback that stops must stop them all
            if state.stop:
                break
            if not accelerator.is_main_process:  # under a multi-process launch, one process writes files
                continue
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                self._emit("on_checkpoint", state, self._checkpoint(step, optimizer, schedule, generator))
            if config.sample_every and step % config.sample_every == 0:
                self._sample(state)
        model.eval()
        if config.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        for rows in self.embeddings:  # they stay on the text encoders, so samples and generation use them
            rows.requires_grad_(False)
        accelerator.wait_for_everyone()
        path = self.out_dir / f"{self.name}.safetensors"
        if accelerator.is_main_process:
            self._save_adapter(path, stopped_at=step if step < config.steps else None)
            self._checkpoint(step, optimizer, schedule, generator)
        accelerator.wait_for_everyone()
        self._emit("on_train_end", state, path)
        return path

    def _loss(self, model, instance: EncodedSet, prior: EncodedSet | None, generator, device) -> torch.Tensor:
        """The denoising loss on this process's shard of one micro-batch (plus the prior-preservation term).

        The generator draws the global micro-batch, laid out as a 1-process run of batch P x B lays it out: P x B
        instance images, then P x B class images, then noise and timesteps for all 2 x P x B rows; process p keeps
        rows p x B .. (p + 1) x B of each group."""
        latents, text, time_ids = self._inputs(instance, generator)
        groups = 1
        if prior is not None:
            prior_latents, prior_text, prior_time_ids = self._inputs(prior, generator)
            latents, text = torch.cat([latents, prior_latents]), TextStates.cat([text, prior_text])
            time_ids = torch.cat([time_ids, prior_time_ids])
            groups = 2
        process, processes = self.shard
        n = self.config.batch_size
        rows = torch.cat(  # (groups * B,) this process's rows of the global (groups * P * B) batch
            [torch.arange(n) + (group * processes + process) * n for group in range(groups)]
        )
        scheduler = self.noise_schedule
        noise = torch.randn((groups * processes * n, *latents.shape[1:]), generator=generator)[rows]
        timesteps = torch.randint(
            scheduler.config.num_train_timesteps, (groups * processes * n,), generator=generator
        )[rows]  # (groups * B,)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        dtype = self.pipe.unet.dtype
        text = text.to(device, dtype)
        added = None  # SDXL's added conditioning: the pooled text and each image's time ids
        if text.pooled is not None:
            added = {"text_embeds": text.pooled, "time_ids": time_ids.to(device, dtype)}
        prediction = model(
            noisy.to(device, dtype), timesteps.to(device), text.states, added_cond_kwargs=added
        ).sample.float()
        target = target.to(device)
        if self.config.snr_gamma is None:
            loss = F.mse_loss(prediction[:n], target[:n])
            if prior is not None:
                loss = loss + self.config.prior_weight * F.mse_loss(prediction[n:], target[n:])
        else:
            per_sample = (prediction - target).pow(2).flatten(1).mean(1)  # (B,)
            per_sample = per_sample * min_snr_weights(scheduler, timesteps, self.config.snr_gamma).to(device)
            loss = per_sample[:n].mean()
            if prior is not None:
                loss = loss + self.config.prior_weight * per_sample[n:].mean()
        if self.lock is not None:
            loss = loss + self.config.lock_weight * self.lock()
        if self.word_lock is not None:
            loss = loss + self.config.word_lock_weight * self.word_lock()
        return loss

    def _inputs(self, data: EncodedSet, generator) -> tuple[torch.Tensor, TextStates, torch.Tensor]:
        """This process's shard of one drawn global batch as latents (B, C, h, w), its text and its time ids
        (B, 6)."""
        process, processes = self.shard
        n = self.config.batch_size
        batch = data.batch(processes * n, generator, keep=slice(process * n, (process + 1) * n))
        images, text = batch.images, batch.text
        if not data.encoded:
            images = encode_images(self.pipe.vae, images)
        if not data.text_encoded:  # token ids: encode now, so the trained token embedding gets its gradient
            text = self.text.encode_ids(text)
        return images.cpu(), text.to("cpu"), batch.time_ids

    # ------------------------------------------------------------------------------------------ data and setup
    def _captions(self) -> list[str]:
        """Each instance image's prompt, in image order."""
        return [self.concept.instance_prompt(image) for image in self.concept.images]

    def _instance_set(self) -> EncodedSet:
        return encode_set(
            self.pipe,
            self.concept.images,
            self._captions(),
            self.config.resolution,
            cache_latents=self.config.cache_latents,
            cache_text=not self.embeddings,
        )

    def _add_token(self) -> list[torch.nn.Parameter]:
        """Make the concept's token a new token of `embedding_vectors` vectors that train, starting from its class
        word's embedding, on every text encoder (SDXL's two each get their own rows, as SDXL textual-inversion
        files carry `clip_l` and `clip_g`)."""
        rows = []
        for tokenizer, encoder in zip(self.text.tokenizers, self.text.encoders, strict=True):
            encoder.requires_grad_(False)
            vectors = add_token(
                tokenizer,
                encoder,
                self.concept.token,
                count=self.config.embedding_vectors,
                init_word=self.concept.class_word,
                source=f"concept {self.name!r}",
            )
            rows.append(vectors.requires_grad_(True))
        return rows

    def _average_embedding_grads(self, accelerator) -> None:
        """Average the token rows' gradients over the processes, as DDP does the UNet's: the rows live on the text
        encoders, outside the wrapped UNet, and would otherwise step on each process's shard alone and drift
        apart."""
        if accelerator.num_processes == 1:
            return
        for rows in self.embeddings:
            if rows.grad is not None:
                rows.grad.copy_(accelerator.reduce(rows.grad, "mean"))

    def _prompt_lock(self) -> PromptLock:
        """The lock on the concept's captions without its token (bora_diffusion.locking)."""
        prompts = lock_prompts(self.concept.token, self._captions(), self.concept.class_prompt)
        states = self.text.encode(prompts).states  # (N, 77, D)
        return PromptLock(self.pipe.unet, self.name, states)

    def _word_lock(self) -> WordLock:
        """The lock on the other words of the concept's captions (bora_diffusion.locking)."""
        names = vector_tokens(self.concept.token, len(self.embeddings[0]))
        return WordLock(self.text, self._captions(), names)

    def _prior_set(self) -> EncodedSet:
        prompt = self.concept.class_prompt
        images = ensure_class_images(self.pipe, prompt, self.class_dir, self.config.class_images, self.config)
        return encode_set(
            self.pipe,
            images,
            [prompt] * len(images),
            self.config.resolution,
            cache_latents=self.config.cache_latents,
        )

    def _optimizer(self, params) -> torch.optim.Optimizer:
        if self.config.adam_8bit:
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise ConfigError(
                    "adam_8bit needs bitsandbytes: pip install bitsandbytes; or use plain AdamW (adam_8bit: false)"
                ) from None
            cls = bnb.optim.AdamW8bit
        else:
            cls = torch.optim.AdamW
        groups = [{"params": params}]
        if self.embeddings:
            # Weight decay would pull the token towards the origin, away from the words it sits among.
            lr = self.config.embedding_learning_rate or self.config.learning_rate
            groups.append({"params": self.embeddings, "lr": lr, "weight_decay": 0.0})
        return cls(groups, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

    def _lr_schedule(self, optimizer):
        from diffusers.optimization import get_scheduler

        return get_scheduler(
            self.config.lr_schedule,
            optimizer,
            num_warmup_steps=self.config.warmup_steps,
            num_training_steps=self.config.steps,
        )

    def _set_attention(self) -> None:
        if self.config.attention == "xformers":
            try:
                import xformers  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "attention 'xformers' needs the xformers package (GPU only); use 'sdpa'"
                ) from None
            self.pipe.unet.enable_xformers_memory_efficient_attention()

    # --------------------------------------------------------------------------------- checkpoints and output
    def _checkpoint(self, step: int, optimizer, schedule, generator) -> Path:
        """Everything a resume needs, written atomically as `checkpoints/step-NNNNNN/` (the last two kept)."""
        root = self.out_dir / CHECKPOINTS / self.name
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(root)  # a kill during an earlier write leaves its staging folder behind
        staging = temp_dir(root)  # the umask's folder mode: mkdtemp's 0700 hides checkpoints from others
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "lr_schedule": schedule.state_dict(),
            "generator": generator.get_state(),  # the same on every process: the draw is global
            "processes": self.shard[1],  # the global batch is batch_size x processes
            # Each process's loss at this step on its own shard, gathered: every process stepped, on other images.
            "process_losses": list(self.process_losses),
            "adapter": {k: v.cpu().clone() for k, v in adapter_state_dict(self.pipe.unet, self.name).items()},
            "token_embeddings": [rows.detach().cpu().clone() for rows in self.embeddings],
            "config": json.dumps(self.config.to_dict()),
        }
        torch.save(state, staging / "state.pt")
        target = root / f"step-{step:06d}"
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old)
        return target

    def _resume(self, optimizer, schedule, generator) -> int:
        root = self.out_dir / CHECKPOINTS / self.name
        remove_stale_staging(root)
        found = sorted(root.glob("step-*"))
        if not found:
            return 0
        state, found = _read_checkpoint(found)
        saved = TrainConfig.from_dict(json.loads(state["config"]))
        # What must match is the global batch, not its split: the same global batch on another process count
        # continues on the same draws (equal up to float summation order, bit for bit on the same count).
        saved_processes, processes = int(state.get("processes", 1)), self.shard[1]  # older checkpoints: 1
        saved_key, key = _resume_key(saved, saved_processes), _resume_key(self.config, processes)
        if saved_key != key:
            raise ConfigError(f"{found[-1]}: " + _resume_mismatch(saved_key, key, processes))
        load_adapter_state_dict(self.pipe.unet, self.name, state["adapter"], source=str(found[-1]))
        with torch.no_grad():
            for rows, saved_rows in zip(self.embeddings, _saved_embeddings(state), strict=True):
                rows.copy_(saved_rows)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["lr_schedule"])
        generator.set_state(state["generator"])
        return int(state["step"])

    def _save_adapter(self, path: Path, stopped_at: int | None = None) -> Path:
        training = self.config.to_dict()
        if stopped_at is not None:  # a callback stopped the run early; `steps` stays the planned total
            training["stopped_at"] = stopped_at
        return save_adapter(
            path,
            self.pipe.unet,
            self.name,
            self.adapter,
            base_name=self.base_name,
            token=self.concept.token,
            class_word=self.concept.class_word,
            training=training,
            token_embedding=self.embeddings[0] if self.embeddings else None,
            token_embedding_2=self.embeddings[1] if len(self.embeddings) > 1 else None,
        )

    def _sample(self, state: TrainState) -> None:
        prompts = list(self.config.sample_prompts) or [self.concept.instance_prompt(self.concept.images[0])]
        generator = torch.Generator().manual_seed(self.config.seed)
        was_training = self.pipe.unet.training
        self.pipe.unet.eval()
        size = self.config.resolution
        images = self.pipe(
            prompts, generator=generator, num_inference_steps=20, height=size, width=size
        ).images
        self.pipe.unet.train(was_training)
        folder = self.out_dir / "samples" / self.name
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.save(folder / f"step-{state.step:06d}-{i}.png")
        self._emit("on_sample", state, images, prompts)

    def _diverged_message(self, step: int, loss: float) -> str:
        found = sorted((self.out_dir / CHECKPOINTS / self.name).glob("step-*"))
        kept = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
        return (
            f"training {self.name!r} stopped: the loss became {loss} at step {step}; {kept}. "
            "Lower the learning rate (or enable gradient clipping) and resume"
        )

    def _emit(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)


def training_scheduler(sampler):
    """The DDPM forward process over the base's own noise schedule, to noise latents for training.

    A pipeline ships the scheduler it samples with: SDXL's Euler (and the DPM solvers) noise in sigma space,
    `x + sigma * noise`, not the `sqrt(a) x + sqrt(1 - a) noise` that an epsilon or v target assumes. So training
    uses DDPM built from the same config (betas, train timesteps, prediction type, zero-SNR rescaling), as
    diffusers' training scripts do; for DDPM-family samplers (DDIM, PNDM) the noised latents are the same."""
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


def _saved_embeddings(state: dict) -> list[torch.Tensor]:
    """A checkpoint's token embeddings, one (N, D_e) per text encoder; checkpoints written before SDXL held
    one tensor (or None) under `token_embedding`."""
    if "token_embeddings" in state:
        return state["token_embeddings"]
    single = state.get("token_embedding")
    return [] if single is None else [single]


def remove_stale_staging(root: Path) -> None:
    """Remove the `.tmp-*` staging folders a killed checkpoint write left in `root` (none is in use: one
    process trains one concept's checkpoints at a time)."""
    for stale in root.glob(".tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def newest_checkpoint(root: Path) -> Path | None:
    found = sorted(Path(root).glob("step-*"))
    return found[-1] if found else None


def _read_checkpoint(found: list[Path]) -> tuple[dict, list[Path]]:
    """The newest readable checkpoint's state and the checkpoints up to it; an unreadable newest one (truncated,
    or a pickle that is not plain weights) falls back to the one before (KEEP_CHECKPOINTS keeps two), saying so."""
    import sys

    for index in range(len(found) - 1, -1, -1):
        path = found[index] / "state.pt"
        try:
            state = torch.load(path, weights_only=True)  # tensors and plain data only, no pickle code
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("it holds no training state")
            return state, found[: index + 1]
        except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError... for a bad file
            reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
            if index == 0:
                raise ConfigError(
                    f"{path}: the checkpoint is unreadable ({reason[:120]}) and there is no earlier one: "
                    "delete it and resume, or start a new output folder"
                ) from None
            print(
                f"warning: {path} is unreadable ({reason[:120]}); resuming from {found[index - 1].name} instead",
                file=sys.stderr,
            )
    raise AssertionError("unreachable")


def _resume_key(config: TrainConfig, processes: int) -> dict:
    """The settings a resumed run must share with the checkpoint (sampling and checkpoint cadence may change, and
    so may the process count, if the global batch stays)."""
    data = config.to_dict()
    for free in ("checkpoint_every", "sample_every", "sample_prompts"):
        data.pop(free)
    data["global_batch"] = data.pop("batch_size") * processes
    return data


def _resume_mismatch(saved: dict, current: dict, processes: int) -> str:
    """Why a resume is refused, with the fix."""
    others = {k for k in saved if saved[k] != current.get(k)}
    if others != {"global_batch"}:
        return (
            "the checkpoint was made with other training settings; "
            "resume with the same settings or start a new output folder"
        )
    size = saved["global_batch"]
    fix = (
        f"--batch-size {size // processes} on {processes} process{'es' if processes > 1 else ''}"
        if size % processes == 0
        else f"a process count that divides {size}"
    )
    return (
        f"the checkpoint's global batch (batch size x processes) is {size}, this run's is "
        f"{current['global_batch']}; resume with {fix}, or start a new output folder"
    )


def ensure_class_images(pipe, prompt: str, folder: Path, count: int, config: TrainConfig) -> list[Path]:
    """`count` images of the class for prior preservation: those in `folder`, completed by generating with the base
    model (before any adapter is injected, seeded per image so the set is reproducible)."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    for i in range(len(existing), count):
        generator = torch.Generator().manual_seed(derive_seed("class-image", config.seed, prompt, i))
        image = pipe(
            prompt,
            generator=generator,
            num_inference_steps=20,
            height=config.resolution,
            width=config.resolution,
        ).images[0]
        path = folder / f"class-{i:04d}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        existing.append(path)
    return existing[:count]


def train_concepts(
    pipe,
    jobs: Sequence[tuple[ConceptLike, AdapterConfig, TrainConfig]],
    *,
    out_dir: str | Path,
    base_name: str,
    ledger: SlotLedger | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> list[Path]:
    """Train several concepts one after another on disjoint slots of one ledger, saved as `<out_dir>/slots.json`
    (reused when it exists, so a later run adds concepts beside the earlier ones).

    Each concept trains alone: the next one starts from the same base UNet with the earlier ones inactive.
    """
    out_dir = Path(out_dir)
    ledger_path = out_dir / "slots.json"
    if ledger is None:
        seed = jobs[0][2].seed if jobs else 0
        ledger = SlotLedger.load(ledger_path) if ledger_path.exists() else SlotLedger(seed=seed)
    paths = []
    for concept, adapter, config in jobs:
        trainer = Trainer(
            pipe,
            concept,
            adapter,
            config,
            out_dir=out_dir,
            base_name=base_name,
            ledger=ledger,
            callbacks=callbacks,
        )
        paths.append(trainer.train(resume=resume))
        set_active(pipe.unet, [])
        if trainer.main_process:  # every process holds the same ledger; one writes it
            ledger.save(ledger_path)
    return paths
