"""Concept training: a noise-prediction loss on a handful of images, through adapters only.

One `Trainer` trains one concept on a base pipeline; `train_concepts` trains several, each on its own slots of a
shared ledger, each alone (the others inactive), so they can later be fused without interference. All randomness
(batch choice, noise, timesteps) comes from one seeded generator whose state goes into every checkpoint, so a run
stopped and resumed ends with the same adapter, bit for bit on CPU, as a run that never stopped.

Under a launcher that starts several processes (`accelerate launch --multi_gpu --num_processes P`, torchrun) the same
code runs data-parallel: accelerate wraps the UNet in DDP, which averages its gradients, and the token's embedding
rows (outside the UNet) have theirs averaged here. Every process draws the same global batch and keeps its shard
(train/denoising.py), so a P-process run of batch B takes the steps of a 1-process run of batch P x B up to
float summation order (tests/test_multiprocess.py measures it), and a resume continues exactly on any process
count with the same global batch. Only the main process writes files.

This module is the run itself: the step loop, the concept's data, the output. What a run is built from is in
`setup`, the loss in `denoising`, checkpoints and the resume rule in `checkpoints` (all in this package).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from ..callbacks import Callback, TrainState
from ..compiling import compile_unet
from ..config import AdapterConfig, TrainConfig
from ..data import EncodedSet, encode_set
from ..embeddings import vector_tokens
from ..errors import BoraError
from ..formats import save_adapter
from ..inject import adapter_state_dict, inject, load_adapter_state_dict, mark_trainable, set_active
from ..locking import PromptLock, WordLock, lock_prompts
from ..seeding import derive_seed
from ..slots import SlotLedger
from ..text import PromptEncoder, TextStates
from .checkpoints import (
    CHECKPOINTS,
    newest_checkpoint,
    resume_state,
    saved_embeddings,
    write_checkpoint,
)
from .denoising import denoising_loss, draw_shard, training_scheduler
from .setup import (
    add_trainable_token,
    ensure_class_images,
    lr_schedule,
    make_accelerator,
    make_optimizer,
    set_attention,
)

# The names callers import from here, wherever they now live.


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
        config, unet = self.config, self.pipe.unet
        accelerator = make_accelerator(config, unet)
        self.main_process = accelerator.is_main_process
        self.shard = (accelerator.process_index, accelerator.num_processes)
        set_attention(unet, config.attention)
        prior = None
        if config.prior_weight > 0:  # class images come from the bare base
            with (
                accelerator.main_process_first()
            ):  # the main process generates the missing ones, the rest read
                prior = self._prior_set()
        if config.train_embedding:
            self.embeddings = add_trainable_token(self.text, self.concept, config.embedding_vectors)
        instance = self._instance_set()

        inject(unet, self.adapter, name=self.name, ledger=self.ledger)
        self.lock = self._prompt_lock() if config.lock_weight > 0 else None
        # Without a trained embedding the other words cannot move: nothing to lock (a folder's recipe may carry a
        # word lock that `--no-train-embedding` leaves idle).
        self.word_lock = self._word_lock() if config.word_lock_weight > 0 and self.embeddings else None
        set_active(unet, [self.name])
        params = mark_trainable(unet, [self.name])
        optimizer = make_optimizer(params, self.embeddings, config)
        params = [*params, *self.embeddings]
        schedule = lr_schedule(optimizer, config)
        # One generator for the whole run, the same on every process: each draws the global batch and keeps its
        # shard (`_loss`). The trailing 0 is the process index that single-process runs were seeded with before
        # the draw became global, so a 1-process run draws what it always drew.
        generator = torch.Generator().manual_seed(derive_seed("train", config.seed, 0))
        step = self._resume(optimizer, schedule, generator) if resume else 0
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        model, optimizer = accelerator.prepare(unet, optimizer)
        model = compile_unet(model) if config.compile else model  # a wrapper: pipe.unet and its keys stay
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
        draw = (self.config.batch_size, self.shard, generator, self.pipe.vae, self.text)
        latents, text, time_ids = draw_shard(instance, *draw)
        if prior is not None:
            prior_latents, prior_text, prior_time_ids = draw_shard(prior, *draw)
            latents, text = torch.cat([latents, prior_latents]), TextStates.cat([text, prior_text])
            time_ids = torch.cat([time_ids, prior_time_ids])
        loss = denoising_loss(
            model,
            self.noise_schedule,
            latents,
            text,
            time_ids,
            generator,
            config=self.config,
            prior=prior is not None,
            shard=self.shard,
            device=device,
            dtype=self.pipe.unet.dtype,
        )
        if self.lock is not None:
            loss = loss + self.config.lock_weight * self.lock()
        if self.word_lock is not None:
            loss = loss + self.config.word_lock_weight * self.word_lock()
        return loss

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

    # --------------------------------------------------------------------------------- checkpoints and output
    def _checkpoint(self, step: int, optimizer, schedule, generator) -> Path:
        """Everything a resume needs, written atomically as `checkpoints/step-NNNNNN/` (the last two kept)."""
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
        return write_checkpoint(self.out_dir / CHECKPOINTS / self.name, step, state)

    def _resume(self, optimizer, schedule, generator) -> int:
        resumed = resume_state(self.out_dir / CHECKPOINTS / self.name, self.config, self.shard[1])
        if resumed is None:
            return 0
        state, folder = resumed
        load_adapter_state_dict(self.pipe.unet, self.name, state["adapter"], source=str(folder))
        with torch.no_grad():
            for rows, saved_rows in zip(self.embeddings, saved_embeddings(state), strict=True):
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
        found = newest_checkpoint(self.out_dir / CHECKPOINTS / self.name)
        kept = f"the last good checkpoint is {found}" if found else "no checkpoint was written yet"
        return (
            f"training {self.name!r} stopped: the loss became {loss} at step {step}; {kept}. "
            "Lower the learning rate (or enable gradient clipping) and resume"
        )

    def _emit(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)


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
