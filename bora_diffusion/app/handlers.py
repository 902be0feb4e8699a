"""The functions behind every named endpoint, free of layout: each takes what the page (or an API client) sends
and returns what the components show.

Every handler runs inside `guard`: a user mistake (`BoraError`) becomes a `gradio.Error` whose text names the
field and the fix, shown in the page and returned to API clients; a file the data folder refuses (OSError) is
named with the fix; anything else is logged with its traceback and reported as an internal error, so a bug costs
one request, never the server. Malformed calls (a missing argument, a string for a number) are refused before
they reach a handler (`calls.Blocks`).
"""

from __future__ import annotations

import functools
import html
import logging
from dataclasses import dataclass
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
        except OSError as error:
            # The data folder could not be written (or read): a full disk, a read-only mount, a path blocked.
            log.warning("%s: %s", fn.__name__, error)
            where = f" {error.filename}" if error.filename else ""
            raise gr.Error(
                f"{fn.__name__}: file error on{where} ({error.strerror or error}); check that the app's data "
                "folder (--data) is writable and has free space, then try again",
                print_exception=False,
            ) from None
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
    def method_preset(self, method: str) -> tuple:
        """The values of `training.preset_fields()` (rank, every method's options, steps, learning rate) for
        `method`; an option of another method shows its own default (the field is read for its method only)."""
        values = training.preset(method)
        return tuple(values[name] for name in training.preset_fields())

    def concept_folders(self) -> list[str]:
        return training.concept_folders(self.ctx.concepts_root)

    def folder_recipe(self, folder: str) -> tuple:
        """The values of `training.recipe_fields()` (method, rank, options, steps, learning rate, resolution,
        train embedding, targets, prompt lock, token vectors, word lock) of a concept folder's own recipe (its
        concept.toml over the method's preset)."""
        recipe = training.folder_recipe(self.ctx.concepts_root, folder)
        return tuple(recipe[name] for name in training.recipe_fields())

    def train_start(self, form: dict, files=None) -> tuple[str, dict]:
        """Queue a training job. `form` is one JSON object: source ("upload" or "folder"), folder, name, token,
        class_word, and any settings of `training.form_settings()` by name (left out: the concept folder's
        own, then the method's preset); `files` are the uploaded images."""
        concept, adapter, config = training.build(
            training.Form.from_dict(form, _files(files)),
            self.ctx.data,
            self.ctx.concepts_root,
            self.ctx.jobs.check_name,
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
        request = _request(prompt, negative, seed, steps, guidance, count)
        result, report = compose.run(self.ctx.data, self.ctx.pipelines, names or [], weights, mode, request)
        seeds = [int(request.seed) + i for i in range(len(result.images))]
        gallery = [(str(path), f"seed {seed}") for path, seed in zip(result.images, seeds, strict=True)]
        summary = report.summary() if report.concepts else "base model, no concepts"
        return gallery, str(result.manifest), f"{len(gallery)} image(s); {summary}"

    def generate_regions(self, names, weights, mode, prompt, negative, seed, steps, guidance, count, regions):
        """`generate` with regions: rows of (x0, y0, x1, y1, prompt), the prompt being the global one."""
        parsed = compose.parse_regions(_rows(regions))  # refused before a pipeline is borrowed
        if not parsed:
            raise ConfigError("regions: fill at least one row (x0, y0, x1, y1, prompt), or use Generate")
        request = _request(prompt, negative, seed, steps, guidance, count)
        return self._in_boxes(names, weights, mode, request, f"{len(parsed)} region(s)", regions=parsed)

    def generate_placed(self, names, weights, mode, prompt, negative, seed, steps, guidance, count, rows):
        """`generate` with placements: the same rows, each (x0, y0, x1, y1, word of the prompt)."""
        parsed = compose.parse_placements(_rows(rows))
        if not parsed:
            raise ConfigError("placements: fill at least one row (x0, y0, x1, y1, word), or use Generate")
        request = _request(prompt, negative, seed, steps, guidance, count)
        return self._in_boxes(names, weights, mode, request, f"{len(parsed)} placement(s)", placements=parsed)

    def _in_boxes(self, names, weights, mode, request, what: str, **boxes):
        result, report = compose.run(
            self.ctx.data, self.ctx.pipelines, names or [], weights, mode, request, **boxes
        )
        seeds = [int(request.seed) + i for i in range(len(result.images))]
        gallery = [(str(path), f"seed {seed}") for path, seed in zip(result.images, seeds, strict=True)]
        summary = report.summary() if report.concepts else "base model, no concepts"
        return gallery, str(result.manifest), f"{len(gallery)} image(s) in {what}; {summary}"

    def region_preview(self, regions):
        """The boxes drawn over the image area."""
        return compose.preview(_rows(regions))

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


def _rows(table) -> list[list]:
    """A Dataframe's value (pandas, or the API's {"data": rows} / a list of rows) as a list of rows."""
    if table is None:
        return []
    if isinstance(table, pd.DataFrame):
        return table.values.tolist()
    if isinstance(table, dict):
        return list(table.get("data") or [])
    return list(table)


def _request(prompt, negative, seed, steps, guidance, count) -> compose.Request:
    """The Compose tab's sampling fields as a request, each number checked and named."""
    return compose.Request(
        prompt=prompt or "",
        negative_prompt=negative or "",
        seed=_number(seed, "seed"),
        steps=_number(steps, "steps"),
        guidance=_number(guidance, "guidance"),
        count=_number(count, "count"),
    )


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
