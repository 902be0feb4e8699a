"""The training queue: one job at a time on one worker thread, progress fed by a trainer Callback.

A job outlives the browser tab that started it: the page (or an API client) polls `status(job_id)`, which is a
plain snapshot (step, ETA, it/s, loss curve, sample images, error) that any number of readers can take. "Stop
and save" sets a flag the callback passes to the trainer after every step (`TrainState.stop`); the trainer then
saves the adapter as trained so far, with the step it reached as `stopped_at` in the file's training settings,
and a checkpoint from which the run can resume.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..callbacks import Callback, TrainState
from ..concept import Concept
from ..config import AdapterConfig, TrainConfig
from ..errors import BoraError, ConfigError
from ..inject import concepts as concepts_in
from ..inject import remove
from ..slots import SPACES, SlotLedger
from ..train import Trainer
from .models import Pipelines
from .storage import DataDir

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, STOPPED = "queued", "running", "done", "stopped"
FAILED, CANCELLED = "failed", "cancelled"
FINISHED = (DONE, STOPPED, FAILED, CANCELLED)
LEDGER = "slots.json"


@dataclass
class Job:
    id: str
    concept: Concept
    adapter: AdapterConfig
    config: TrainConfig
    status: str = QUEUED
    step: int = 0
    start_step: int = 0
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) per step
    seconds: float = 0.0
    samples: list[str] = field(default_factory=list)  # image files, newest last
    error: str = ""
    adapter_path: str = ""
    submitted: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self.concept.name

    def snapshot(self, position: int = 0) -> dict:
        """What a reader sees: JSON-ready, computed from the numbers the callback recorded."""
        total = self.config.steps
        done = self.step - self.start_step
        rate = done / self.seconds if self.seconds > 0 and done > 0 else 0.0
        eta = (total - self.step) / rate if rate > 0 and self.status == RUNNING else None
        return {
            "job": self.id,
            "concept": self.name,
            "method": self.adapter.method,
            "status": self.status,
            "queue_position": position,
            "step": self.step,
            "total_steps": total,
            "fraction": round(self.step / total, 4),
            "it_per_s": round(rate, 3),
            "eta_s": None if eta is None else round(eta, 1),
            "elapsed_s": round(self.seconds, 2),
            "loss": [[step, value] for step, value in self.loss],
            "samples": list(self.samples),
            "error": self.error,
            "adapter": self.adapter_path,
        }


class _Progress(Callback):
    """Feeds a Job from the trainer's hooks (runs on the training thread)."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def on_train_start(self, state: TrainState) -> None:
        self.job.step = self.job.start_step = state.step

    def on_step_end(self, state: TrainState) -> None:
        job = self.job
        job.step, job.seconds = state.step, state.seconds
        job.loss.append((state.step, round(float(state.loss), 6)))
        if job.stop.is_set():
            state.stop = True  # the trainer saves the adapter and a resumable checkpoint after this step

    def on_sample(self, state, images, prompts) -> None:
        folder = Path(self.job.adapter_path).parent / "samples" / self.job.name
        found = sorted(folder.glob(f"step-{state.step:06d}-*.png"))  # the trainer saved them there
        self.job.samples.extend(str(path) for path in found)


class JobQueue:
    """Accepts training jobs and runs them one after another on a daemon thread."""

    def __init__(self, data: DataDir, pipelines: Pipelines) -> None:
        self.data, self.pipelines = data, pipelines
        self.jobs: dict[str, Job] = {}
        self.ledger_lock = threading.Lock()  # slots.json is written by training and by deletes
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._worker = threading.Thread(target=self._run_forever, name="bora-train", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------------- public API
    def submit(self, concept: Concept, adapter: AdapterConfig, config: TrainConfig) -> Job:
        """Queue a job; refuses a name the library or another unfinished job already uses."""
        with self._lock:
            self.check_name(concept.name)
            job = Job(uuid.uuid4().hex[:12], concept, adapter, config)
            job.adapter_path = str(self.data.adapter_path(concept.name))
            self.jobs[job.id] = job
        self._queue.put(job)
        return job

    def check_name(self, name: str) -> None:
        """Raise when `name` is taken by a library concept or an unfinished job."""
        if self.data.adapter_path(name).exists():
            raise ConfigError(
                f"name: a concept named {name!r} is already in the library; delete it there or choose another name"
            )
        if any(j.name == name and j.status not in FINISHED for j in self.jobs.values()):
            raise ConfigError(f"name: concept {name!r} is already queued or training; choose another name")

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(str(job_id or "").strip())
        if job is None:
            raise ConfigError(f"job: no training job {job_id!r}; start one in the Train tab (or list_jobs)")
        return job

    def status(self, job_id: str) -> dict:
        job = self.get(job_id)
        return job.snapshot(self._position(job))

    def stop(self, job_id: str) -> dict:
        """Stop and save a running job; cancel a queued one. A finished job is left as it is."""
        job = self.get(job_id)
        with self._lock:
            if job.status == QUEUED:
                job.status = CANCELLED
            job.stop.set()
        return self.status(job_id)

    def busy(self) -> bool:
        return any(j.status in (QUEUED, RUNNING) for j in self.jobs.values())

    def wait(self, job_id: str, timeout: float = 600.0) -> dict:
        """Block until the job finishes (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while self.get(job_id).status not in FINISHED and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.status(job_id)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Cancel queued jobs and stop (and save) the running one, then wait for it: a clean exit."""
        for job in list(self.jobs.values()):
            if job.status in (QUEUED, RUNNING):
                self.stop(job.id)
        for job in list(self.jobs.values()):
            self.wait(job.id, timeout)

    def _save_slots(self, name: str, ledger: SlotLedger) -> None:
        """Add the slots concept `name` took to slots.json as it is now: a concept deleted while this job ran
        stays deleted (saving the job's whole, older copy of the ledger would bring its slots back)."""
        path = self.data.concepts / LEDGER
        spaces = ledger.to_dict()["spaces"]
        with self.ledger_lock:
            current = SlotLedger.load(path) if path.exists() else SlotLedger(seed=ledger.seed)
            for space in SPACES:
                for layer, indices in ledger.slots(name, space).items():
                    current.record(name, space, layer, spaces[space][layer]["size"], indices)
            current.save(path)

    def release_slots(self, name: str) -> None:
        """Free the slots a deleted concept owned, so a new concept can take them."""
        path = self.data.concepts / LEDGER
        with self.ledger_lock:
            if path.exists():
                ledger = SlotLedger.load(path)
                ledger.release(name)
                ledger.save(path)

    # ------------------------------------------------------------------------------------------- the worker
    def _position(self, job: Job) -> int:
        if job.status != QUEUED:
            return 0
        waiting = sorted((j for j in self.jobs.values() if j.status == QUEUED), key=lambda j: j.submitted)
        return waiting.index(job) + 1

    def _run_forever(self) -> None:
        while True:
            job = self._queue.get()
            with self._lock:
                if job.status == CANCELLED:
                    continue
                job.status = RUNNING
            try:
                self._train(job)
                job.status = STOPPED if job.stop.is_set() else DONE
            except BoraError as error:
                job.status, job.error = FAILED, str(error)
            except OSError as error:
                # The data folder refused a write (full, read-only, blocked): say where, not a traceback.
                where = f" {error.filename}" if error.filename else ""
                job.status = FAILED
                job.error = (
                    f"file error on{where} ({error.strerror or error}); check that the app's data folder "
                    "(--data) is writable and has free space"
                )
            except Exception as error:
                # A bug: keep the queue alive and show it; the log holds the traceback.
                log.error("training job %s failed:\n%s", job.id, traceback.format_exc())
                job.status, job.error = FAILED, f"internal error ({type(error).__name__}: {error})"

    def _train(self, job: Job) -> None:
        pipe = self.pipelines.train_pipe()
        vocabulary = len(pipe.tokenizer)
        out_dir = self.data.concepts
        with self.ledger_lock:
            path = out_dir / LEDGER
            ledger = SlotLedger.load(path) if path.exists() else SlotLedger(seed=job.config.seed)
        trainer = Trainer(
            pipe,
            job.concept,
            job.adapter,
            job.config,
            out_dir=out_dir,
            base_name=self.pipelines.name,
            ledger=ledger,
            callbacks=[_Progress(job)],
        )
        try:
            trainer.train()
        finally:
            if job.name in concepts_in(pipe.unet):
                remove(pipe.unet, job.name)  # the next job starts from the plain base again
            self.pipelines.drop_train_pipe_if_changed(vocabulary)
        self._save_slots(job.name, ledger)
        self.data.update_sidecar(
            job.name,
            images=str(job.concept.folder),
            token=job.concept.token,
            class_word=job.concept.class_word,
            trained_steps=job.step,
            job=job.id,
        )
