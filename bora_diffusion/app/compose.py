"""Compose & generate: concepts by name with weights, live or fused, on a borrowed pipeline.

The interference check runs the library's `compose` live on a borrowed pipeline, so the user sees the slot
overlap and cross terms of exactly the files that would be fused, before fusing them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..generate import MAX_SEED, Generated, SamplingSettings, generate
from ..layout_guidance import Placement, parse_placement
from ..merge import CompositionReport, check_scale, compose
from ..regions import Region, check_regions, resolved
from . import library
from .models import Pipelines
from .storage import DataDir

MAX_COUNT = 16
MAX_STEPS = 150
MODES = ("live", "fused")
PAIR_COLUMNS = ["layer", "first", "second", "slot overlap", "cosine", "cross in", "cross out"]
REGION_COLUMNS = ["x0", "y0", "x1", "y1", "prompt"]
PREVIEW_SIDE = 256
_OUTLINES = ["#d62828", "#2656d6", "#2ea043", "#803ab4", "#f7871e", "#f480bc"]


@dataclass(frozen=True)
class Request:
    """One generate request, checked field by field with the fix in each message."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 25
    guidance: float = 7.5
    count: int = 1

    def __post_init__(self) -> None:
        if not str(self.prompt or "").strip():
            raise ConfigError("prompt: write what to draw, e.g. 'a photo of qwiv kettle on a beach'")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed: give a whole number from 0 to 2**64-1 ({MAX_SEED}), got {self.seed!r}")
        if not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"steps: give a whole number from 1 to {MAX_STEPS}, got {self.steps!r}")
        if not _is_int(self.count) or not 1 <= self.count <= MAX_COUNT:
            raise ConfigError(
                f"count: give a whole number of images from 1 to {MAX_COUNT}, got {self.count!r}"
            )
        if not isinstance(self.guidance, int | float) or not 0 <= self.guidance <= 30:  # False for nan
            raise ConfigError(f"guidance: give a number from 0 to 30, got {self.guidance!r}")
        if self.seed + self.count - 1 > MAX_SEED:  # the images take seeds seed, seed+1, ...
            raise ConfigError(
                f"seed: {self.seed} + {self.count} images runs past 2**64-1; give a smaller seed"
            )


def _is_int(value) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def parse_weights(names: Sequence[str], text: str) -> list[tuple[str, float]]:
    """Pair each picked concept with its weight from "name=weight, name=weight" (default 1.0)."""
    weights: dict[str, float] = {}
    for item in str(text or "").replace(";", ",").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            weight = float(value) if sep else math.nan
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise ConfigError(f"weights: {item.strip()!r} should read name=number, e.g. 'kettle=0.8'")
        weights[name.strip()] = check_scale(weight, f"weights: {item.strip()!r}")
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ConfigError(
            f"weights: {', '.join(unknown)} is not among the picked concepts; pick it or drop it"
        )
    return [(name, weights.get(name, 1.0)) for name in names]


def parse_regions(rows) -> list[Region]:
    """Rows of (x0, y0, x1, y1, prompt), fractions of the image; rows left blank are skipped. Each problem names
    its row (1 = the first) and the fix."""
    regions = [Region(text, box=box, where=where) for where, box, text in _boxes(rows, "regions", "a prompt")]
    check_regions(regions)
    return regions


def parse_placements(rows) -> list[Placement]:
    """The same rows read as placements: (x0, y0, x1, y1, word), the word one of the prompt's to draw there."""
    return [
        parse_placement(f"{','.join(map(repr, box))}={text}", where)
        for where, box, text in _boxes(rows, "placements", "a word of the prompt")
    ]


def _cell(cell) -> str:
    """A table cell as text; empty for a cell left blank (None, or NaN: how the table sends a blank number)."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return ""
    return str(cell).strip()


def _boxes(rows, what: str, needs: str):
    """(where, box, text) of every row that is not blank, each problem named by its row (1 = the first)."""
    for number, row in enumerate(rows or [], start=1):
        cells = [_cell(cell) for cell in list(row)[: len(REGION_COLUMNS)]]
        if not any(cells):
            continue
        where = f"{what} row {number}"
        if len(cells) < len(REGION_COLUMNS) or not cells[4]:
            raise ConfigError(f"{where}: give x0, y0, x1, y1 (fractions of the image) and {needs}")
        try:
            box = tuple(float(cell) for cell in cells[:4])
        except ValueError:
            raise ConfigError(
                f"{where}: x0, y0, x1, y1 must be numbers from 0 to 1, got {', '.join(cells[:4])}"
            ) from None
        yield where, box, cells[4]


def preview(rows, side: int = PREVIEW_SIDE):
    """The regions' boxes over the image area, each outlined and numbered in its own color (a PIL image)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), "#f6f6f6")
    draw = ImageDraw.Draw(image)
    for number, row in enumerate(
        rows or [], start=1
    ):  # drawn while being typed: a row not yet valid is skipped
        try:
            box = [min(max(float(cell), 0.0), 1.0) for cell in list(row)[:4]]
        except (TypeError, ValueError):
            continue
        if len(box) < 4 or box[0] >= box[2] or box[1] >= box[3]:
            continue
        x0, y0, x1, y1 = (round(v * (side - 1)) for v in box)
        color = _OUTLINES[(number - 1) % len(_OUTLINES)]
        draw.rectangle((x0, y0, x1, y1), outline=color, width=3)
        prompt = str(list(row)[4]) if len(row) > 4 and row[4] is not None else ""
        draw.text((x0 + 6, y0 + 4), f"{number}: {prompt}"[:40], fill=color)
    return image


def _files(data: DataDir, picked: Sequence[tuple[str, float]]) -> list[tuple[Path, float]]:
    return [(library.adapter(data, name).path, weight) for name, weight in picked]


def pair_rows(report: CompositionReport, limit: int = 40) -> list[list]:
    """The most entangled layer pairs first (largest |cosine|), rounded for reading."""
    pairs = sorted(report.pairs, key=lambda p: -abs(p.cosine))[:limit]
    return [
        [
            p.layer,
            p.first,
            p.second,
            p.overlap,
            round(p.cosine, 4),
            round(p.cross_in, 4),
            round(p.cross_out, 4),
        ]
        for p in pairs
    ]


def check(data: DataDir, pipelines: Pipelines, names: Sequence[str], weights: str) -> CompositionReport:
    """The interference report of these concepts (raises SlotError, naming layers, when their slots clash)."""
    picked = parse_weights(list(names or []), weights)
    if not picked:
        raise ConfigError("concepts: pick at least one concept to check")
    with pipelines.borrow() as pipe:
        return compose(pipe, _files(data, picked), fuse=False)


def run(
    data: DataDir,
    pipelines: Pipelines,
    names: Sequence[str],
    weights: str,
    mode: str,
    request: Request,
    regions: Sequence[Region] = (),
    placements: Sequence[Placement] = (),
) -> tuple[Generated, CompositionReport]:
    """Compose (nothing picked = the plain base), generate `count` seeds of one prompt into generations/<id>/;
    `regions` (parse_regions) each draw their prompt in their box, live with the concepts their prompt names;
    `placements` (parse_placements) steer what a word of the prompt names into its box."""
    if mode not in MODES:
        raise ConfigError(f"mode: choose one of {', '.join(MODES)}, got {mode!r}")
    picked = parse_weights(list(names or []), weights)
    files = _files(data, picked)
    settings = SamplingSettings(
        steps=int(request.steps), guidance=float(request.guidance), negative_prompt=request.negative_prompt
    )
    seeds = [int(request.seed) + i for i in range(int(request.count))]
    out = data.new_folder("generations")
    with pipelines.borrow() as pipe:
        report = compose(pipe, files, fuse=mode == "fused")
        record = {"base_model": pipelines.name, "fused": mode == "fused", "concepts": report.concepts}
        for entry in record["concepts"].values():
            entry["file"] = Path(entry["file"]).name  # the manifest is a download: no server paths in it
        regions = resolved(regions, {name: entry["token"] for name, entry in report.concepts.items()})
        result = generate(
            pipe,
            [request.prompt],
            seeds,
            out,
            settings=settings,
            record=record,
            regions=regions,
            placements=placements,
        )
    return result, report
