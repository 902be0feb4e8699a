"""The functions behind every named endpoint, free of layout: each takes what the page (or an API client) sends
and returns what the components show.

Every handler runs inside `guard`: a user mistake (`BoraError`) becomes a `gradio.Error` whose text names the
field and the fix, shown in the page and returned to API clients; anything else is logged with its traceback and
reported as an internal error, so a bug costs one request, never the server.
"""

from __future__ import annotations

import functools
import html
import logging
from dataclasses import astuple, dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from ..errors import BoraError, ConfigError
from . import compose, evaluate, library, training
from .evaluate import Scorers
from .jobs import FINISHED, JobQueue
from .models import Pipelines
from .storage import DataDir

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every handler works on: the data folder, the pipelines, the training queue and the CLIP scorers."""

    data: DataDir
    pipelines: Pipelines
    jobs: JobQueue
    scorers: Scorers
    concepts_root: Path | None


def guard(fn):
    """Turn errors into messages the page shows (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except BoraError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:
            log.exception("internal error in %s", fn.__name__)
            raise gr.Error(
                f"internal error in {fn.__name__} ({type(error).__name__}: {error}); the server keeps running",
                print_exception=False,
            ) from None

    return wrapper


def _files(value) -> tuple[str, ...]:
    """Uploaded file paths from what gr.File hands over (None, one path, or a list of paths / file objects)."""
    if not value:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(str(getattr(item, "name", item)) for item in items)


class Handlers:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------------------------------------ train
    def method_preset(self, method: str) -> tuple[int, int, int, float]:
        """(rank, blocks, steps, learning rate) for `method`; blocks shows bora_block's value for every method
        (the field is read for bora_block only)."""
        p = training.preset(method)
        return p.rank, p.blocks or training.PRESETS["bora_block"].blocks, p.steps, p.learning_rate

    def concept_folders(self) -> list[str]:
        return training.concept_folders(self.ctx.concepts_root)

    def folder_recipe(
        self, folder: str
    ) -> tuple[str, int, int, int, float, int, bool, str, float, int, float]:
        """(method, rank, blocks, steps, learning rate, resolution, train embedding, layers, prompt lock, token
        vectors, word lock) of a concept folder's own recipe (its concept.toml over the method's preset)."""
        return astuple(training.folder_recipe(self.ctx.concepts_root, folder))

    def train_start(
        self,
        source,
        files,
        folder,
        name,
        token,
        class_word,
        method,
        rank,
        blocks,
        steps,
        lr,
        sample_every,
        res,
        train_embedding=None,
        targets=None,
        lock_weight=None,
        embedding_vectors=None,
        word_lock_weight=None,
    ) -> tuple[str, dict]:
        form = training.Form(
            source=source,
            files=_files(files),
            folder=folder or "",
            name=name or "",
            token=token or "",
            class_word=class_word or "",
            method=method,
            rank=rank,
            blocks=blocks,
            steps=steps,
            learning_rate=lr,
            sample_every=sample_every,
            resolution=res,
            train_embedding=train_embedding,  # None: the folder's own choice (`training.build`)
            targets=targets or None,  # likewise
            lock_weight=lock_weight,  # likewise
            embedding_vectors=embedding_vectors,  # likewise
            word_lock_weight=word_lock_weight,  # likewise
        )
        concept, adapter, config = training.build(
            form, self.ctx.data, self.ctx.concepts_root, self.ctx.jobs.check_name
        )
        job = self.ctx.jobs.submit(concept, adapter, config)
        return job.id, self.ctx.jobs.status(job.id)

    def train_status(self, job_id: str) -> dict:
        return self.ctx.jobs.status(job_id)

    def train_stop(self, job_id: str) -> dict:
        return self.ctx.jobs.stop(job_id)

    def train_view(self, job_id: str):
        """The live view of a job for the page: progress bar, a status line, the loss curve, the samples."""
        if not str(job_id or "").strip():
            return (
                progress_html(None),
                "No training job yet: fill in the form and press Start.",
                _loss(None),
                [],
            )
        state = self.ctx.jobs.status(job_id)
        return progress_html(state), status_line(state), _loss(state), state["samples"]

    # ---------------------------------------------------------------------------------------------- library
    def list_concepts(self) -> pd.DataFrame:
        return pd.DataFrame(library.rows(self.ctx.data), columns=library.COLUMNS)

    def concept_names(self) -> list[str]:
        return library.names(self.ctx.data)

    def inspect_concept(self, name: str) -> dict:
        return library.inspect(self.ctx.data, name)

    def delete_concept(self, name: str) -> str:
        removed = library.delete(self.ctx.data, name)
        self.ctx.jobs.release_slots(name)
        return f"Deleted {name!r}: {', '.join(removed)}"

    def export_concept(self, name: str, layout: str) -> list[str]:
        return [str(path) for path in library.export(self.ctx.data, name, layout)]

    # ---------------------------------------------------------------------------------------------- compose
    def check_interference(self, names, weights: str) -> tuple[str, pd.DataFrame]:
        report = compose.check(self.ctx.data, self.ctx.pipelines, names or [], weights)
        clashes = sum(p.overlap for p in report.pairs)
        verdict = (
            "Slots overlap: fusing would blend these concepts."
            if clashes
            else "No slot overlap: safe to fuse."
            if report.pairs
            else "One concept: nothing to compare."
        )
        rows = pd.DataFrame(compose.pair_rows(report), columns=compose.PAIR_COLUMNS)
        return f"**Interference check.** {verdict} {report.summary()}", rows

    def generate(self, names, weights, mode, prompt, negative, seed, steps, guidance, count):
        request = compose.Request(
            prompt=prompt or "",
            negative_prompt=negative or "",
            seed=_number(seed, "seed"),
            steps=_number(steps, "steps"),
            guidance=_number(guidance, "guidance"),
            count=_number(count, "count"),
        )
        result, report = compose.run(self.ctx.data, self.ctx.pipelines, names or [], weights, mode, request)
        seeds = [int(request.seed) + i for i in range(len(result.images))]
        gallery = [(str(path), f"seed {seed}") for path, seed in zip(result.images, seeds, strict=True)]
        summary = report.summary() if report.concepts else "base model, no concepts"
        return gallery, str(result.manifest), f"{len(gallery)} image(s); {summary}"

    # --------------------------------------------------------------------------------------------- evaluate
    def evaluate(self, names, prompt_set, conventions, images_per_prompt, steps):
        report, folder = evaluate.run(
            self.ctx.data,
            self.ctx.pipelines,
            self.ctx.scorers,
            names or [],
            prompt_set=prompt_set,
            conventions=conventions,
            images_per_prompt=_number(images_per_prompt, "images per prompt"),
            steps=_number(steps, "steps"),
        )
        table = pd.DataFrame(evaluate.table(report), columns=evaluate.COLUMNS)
        bars = pd.DataFrame(evaluate.bars(report), columns=["bar", "score", "metric"])
        return table, bars, str(Path(folder) / "evaluation.json"), report.summary()

    def compare_methods(
        self, folders, methods, rank, rule, steps, prompt_set, conventions, images_per_prompt, sample_steps
    ):
        comparison, folder = evaluate.compare(
            self.ctx.data,
            self.ctx.pipelines,
            self.ctx.scorers,
            folders or [],
            methods or [],
            known_folders=training.concept_folders(self.ctx.concepts_root),
            concepts_root=self.ctx.concepts_root,
            rank=_number(rank, "rank"),
            rule=rule,
            steps=_number(steps, "steps"),
            prompt_set=prompt_set,
            conventions=conventions,
            images_per_prompt=_number(images_per_prompt, "images per prompt"),
            sample_steps=_number(sample_steps, "sampling steps"),
        )
        table = pd.DataFrame(evaluate.compare_table(comparison), columns=evaluate.COMPARE_COLUMNS)
        bars = pd.DataFrame(evaluate.compare_bars(comparison), columns=["bar", "score", "metric"])
        return table, bars, str(Path(folder) / "comparison.md"), comparison.summary()


def _number(value, field: str) -> float:
    if value is None or isinstance(value, bool):
        raise ConfigError(f"{field}: give a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}: give a number, got {value!r}") from None
    return int(number) if number.is_integer() else number


def progress_html(state: dict | None) -> str:
    """A native <progress> bar with its numbers as data attributes (what a browser test reads)."""
    if state is None:
        return '<div id="train-progress" data-status="idle"><progress value="0" max="1"></progress></div>'
    step, total = state["step"], state["total_steps"]
    return (
        f'<div id="train-progress" data-status="{html.escape(state["status"])}" data-step="{step}" '
        f'data-total="{total}"><progress value="{step}" max="{total}" style="width:100%;height:1.4em">'
        "</progress></div>"
    )


def status_line(state: dict) -> str:
    """'sbora_fa kettle: step 12 / 30 (40%), 8.1 it/s, ETA 2 s, loss 0.1234' and the job's outcome."""
    loss = f", loss {state['loss'][-1][1]:.4f}" if state["loss"] else ""
    eta = f", ETA {state['eta_s']:.0f} s" if state["eta_s"] is not None else ""
    head = (
        f"{state['concept']} ({state['method']}): {state['status']}, step {state['step']} / "
        f"{state['total_steps']} ({100 * state['fraction']:.0f}%), {state['it_per_s']:.1f} it/s{eta}{loss}"
    )
    if state["status"] == "queued":
        return f"{head}; waiting, position {state['queue_position']} in the queue"
    if state["status"] == "failed":
        return f"{head}. Training failed: {state['error']}"
    if state["status"] in FINISHED:
        return (
            f"{head}. Saved to the library as {state['concept']!r}."
            if state["status"] != "cancelled"
            else head
        )
    return head


def _loss(state: dict | None) -> pd.DataFrame:
    points = state["loss"] if state else []
    # Typed even when empty: an untyped empty frame is read as categories, and the plot keeps that axis type.
    return pd.DataFrame(points, columns=["step", "loss"]).astype({"step": "int64", "loss": "float64"})
