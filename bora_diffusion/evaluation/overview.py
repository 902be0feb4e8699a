"""The overview contact sheet of an evaluation run: before and after at a glance, drawn with PIL.

Per concept a row of its reference images, then one row per setting that ran with each prompt's first-seed
image, labelled with the setting's CLIP-T / CLIP-I; `evaluate_concepts` writes it as `<out>/overview.png`.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from .images import reference_images
from .results import SETTINGS, EvaluationReport

__all__ = ["overview"]


def overview(report: EvaluationReport, out_dir: str | os.PathLike[str]) -> Image.Image:
    """Before and after at a glance: per concept a row of its references, then one row per setting (base,
    alone, composed, and base and alone with other words) with each prompt's first-seed image (the other-word
    rows: the first prompt with one word after another), labelled with the setting's CLIP-T / CLIP-I. Tiles are
    drawn at least 128 px (nearest-neighbour, so small models' pixels stay visible)."""
    out_dir = Path(out_dir)
    seed = report.settings.seed
    rows: list[tuple[str, list[Path]]] = []
    for concept in report.concepts:
        references = reference_images(concept.references)[: len(concept.prompts)]
        rows.append((f"{concept.name}: references", references))
        for setting in SETTINGS:
            scores = getattr(concept, setting)
            if scores is None:
                continue
            folder = out_dir / scores.folder
            name = setting.replace("_other", ", other words")
            label = f"{name}: T {scores.clip_t:.3f} I {scores.clip_i:.3f}"
            rows.append((label, [folder / f"p{p:02d}-s{seed}.png" for p in range(len(concept.prompts))]))
    first = Image.open(rows[1][1][0])
    tile = max(128, first.width)
    label_h, columns = 16, max(len(paths) for _, paths in rows)
    sheet = Image.new("RGB", (columns * tile, len(rows) * (tile + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, paths) in enumerate(rows):
        top = r * (tile + label_h)
        draw.text((2, top + 2), label, fill="black")
        for c, path in enumerate(paths):
            image = Image.open(path).convert("RGB").resize((tile, tile), Image.NEAREST)
            sheet.paste(image, (c * tile, top + label_h))
    return sheet
