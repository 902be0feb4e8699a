"""The Library tab's logic: the trained concepts in the data folder, their details, delete and export.

A concept is known by its name only (the dropdown shows names, the API takes names); the name is checked with
`safe_name` and the file must exist in `<data>/concepts/`, so no request can read or delete anything else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import AdapterFileError, ConfigError
from ..formats import (
    AdapterFile,
    embedding_path,
    export_diffusers,
    export_embedding,
    export_kohya,
    read_adapter,
)
from .storage import DataDir, inside, safe_name

LAYOUTS = ("diffusers", "kohya")
COLUMNS = ["name", "method", "rank", "slots", "base", "token", "class word", "steps", "CLIP-T", "CLIP-I"]


def names(data: DataDir) -> list[str]:
    return sorted(path.stem for path in data.concepts.glob("*.safetensors"))


def adapter(data: DataDir, name: str) -> AdapterFile:
    """The validated file of concept `name`; a clear error when there is no such concept."""
    if not str(name or "").strip():
        raise ConfigError("concept: pick a concept from the library first")
    path = data.adapter_path(name)
    if not path.is_file():
        known = ", ".join(names(data)) or "none yet: train one in the Train tab"
        raise ConfigError(f"concept: there is no concept {name!r} in the library (known: {known})")
    return read_adapter(path)


def _slots(info: AdapterFile) -> str:
    if info.slot_space is None:
        return "-"
    slots = info.slots()
    if not slots:
        return info.slot_space
    _, index = next(iter(sorted(slots.items())))
    shown = ",".join(str(i) for i in index.tolist()[:6])
    return f"{info.slot_space}: {len(slots)} layers, e.g. [{shown}{',...' if index.numel() > 6 else ''}]"


def _score(value) -> float | None:
    return None if value is None else round(float(value), 4)


def rows(data: DataDir) -> list[list]:
    """One row per concept, in COLUMNS order; an unreadable file is listed with its error instead of hidden."""
    table = []
    for name in names(data):
        try:
            info = read_adapter(data.adapter_path(name))
        except AdapterFileError as error:
            table.append([name, "unreadable", None, str(error)[:80], "", "", "", None, None, None])
            continue
        side = data.sidecar(name)
        scores = side.get("scores", {})
        steps = (info.training or {}).get("steps")
        table.append(
            [
                name,
                info.config.method,
                info.config.rank,
                _slots(info),
                info.base_name,
                info.token or "",
                info.class_word or "",
                steps,
                _score(scores.get("clip_t")),
                _score(scores.get("clip_i")),
            ]
        )
    return table


def inspect(data: DataDir, name: str) -> dict:
    """Everything the file says about itself, plus what the app recorded (reference images, scores)."""
    info = adapter(data, name)
    return {
        "name": info.name,
        "file": info.path.name,
        "method": info.config.method,
        "config": info.config.to_dict(),
        "token": info.token,
        "class_word": info.class_word,
        "base_model": info.base_name,
        "fingerprint": info.fingerprint,
        "layers": len(info.layers),
        "slot_space": info.slot_space,
        "slots_per_layer": {path: index.tolist() for path, index in sorted(info.slots().items())[:4]},
        "training": info.training,
        "library_version": info.library_version,
        "app": data.sidecar(name),
    }


def delete(data: DataDir, name: str) -> list[str]:
    """Remove the concept's file, sidecar, checkpoints and samples; return what was removed (relative paths)."""
    info = adapter(data, name)
    stem = info.path.stem
    removed = []
    for path in (
        info.path,
        inside(data.concepts, f"{stem}.json"),
        inside(data.concepts, "checkpoints", stem),
        inside(data.concepts, "samples", stem),
    ):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(str(path.relative_to(data.root)))
    return removed


def export(data: DataDir, name: str, layout: str) -> list[Path]:
    """Write the concept as a LoRA file in `layout` under exports/, plus its trained token embedding as a
    textual-inversion file when it has one (the LoRA alone would lose the token); return the files."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: choose one of {', '.join(LAYOUTS)}, got {layout!r}")
    info = adapter(data, name)
    folder = data.new_folder("exports")
    target = folder / f"{safe_name(info.path.stem)}_{layout}.safetensors"
    writer = export_kohya if layout == "kohya" else export_diffusers
    files = [writer(info, target, dtype=torch.float32)]
    embedding = export_embedding(info, embedding_path(target), dtype=torch.float32)
    return files + ([embedding] if embedding is not None else [])
