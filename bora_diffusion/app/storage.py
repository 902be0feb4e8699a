"""The app's data folder, and the checks that keep users' files and names inside it.

Everything the app writes lives under one root (``--data``)::

    <data>/uploads/<name>/        concept folders built from uploaded images (images + concept.toml)
    <data>/concepts/              trained adapter files <name>.safetensors, slots.json, checkpoints/, samples/
    <data>/concepts/<name>.json   what the app knows beside the file: the images it was trained on, scores
    <data>/generations/<id>/      images, grid.png and manifest.json of one generate request
    <data>/exports/<id>/          exported LoRA files handed out as downloads
    <data>/evaluations/<id>/      images and reports of one evaluation

A name typed by a user (a concept name) is reduced to letters, digits, '-' and '_' before it touches the file
system, and every path built from it is checked to resolve inside the root, so "../x" or "/etc" cannot escape.
Uploaded files are checked like the CLI checks a concept folder: extension, size and count here, pixels by
`load_concept` once they are stored; their own file names are never used.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text
from ..concept import IMAGE_EXTENSIONS, Concept, TrainDefaults, load_concept, write_concept_toml
from ..errors import ConceptError, ConfigError

MAX_NAME_LENGTH = 48
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may hold: enough for a concept (a handful of images), never a disk-filling dump."""

    max_files: int = 50
    max_bytes: int = 20 * 1024 * 1024  # per image
    min_files: int = 1


def safe_name(text: str, what: str = "name") -> str:
    """`text` reduced to a portable file name: runs of other characters become '-', leading and trailing '-'/'_'
    are dropped, at most MAX_NAME_LENGTH characters. "../../etc/passwd" becomes "etc-passwd"."""
    cleaned = _UNSAFE.sub("-", str(text or "")).strip("-_")[:MAX_NAME_LENGTH].strip("-_")
    if not cleaned:
        raise ConfigError(
            f"{what} {text!r} has no letters or digits: use letters, digits, '-' and '_' (e.g. 'my-kettle')"
        )
    return cleaned


def inside(root: Path, *parts: str) -> Path:
    """`root / parts`, refused unless it resolves inside `root` (defence in depth behind `safe_name`)."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(f"{'/'.join(parts)!r} points outside the app's data folder")
    return path


class DataDir:
    """The app's data folder and its subfolders (created on first use)."""

    def __init__(self, root: str | Path, limits: UploadLimits = UploadLimits()) -> None:
        self.root = Path(root).expanduser().resolve()
        self.limits = limits
        for sub in ("uploads", "concepts", "generations", "exports", "evaluations"):
            try:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigError(
                    f"data folder {self.root}: cannot create {sub}/ ({error.strerror or error}); pass --data a "
                    "folder the app may write"
                ) from None

    @property
    def concepts(self) -> Path:
        return self.root / "concepts"

    def new_folder(self, kind: str) -> Path:
        """A fresh, uniquely named folder under `kind` ("generations", "exports", "evaluations")."""
        folder = inside(self.root, kind, uuid.uuid4().hex[:12])
        folder.mkdir(parents=True)
        return folder

    # -------------------------------------------------------------------------------------------- uploads
    def store_upload(
        self,
        files: Sequence[str | Path],
        name: str,
        token: str,
        class_word: str,
        *,
        train: TrainDefaults | None = None,
        min_size: int = 64,
    ) -> Concept:
        """Copy uploaded images into `uploads/<name>/` with a concept.toml and validate the folder like the CLI.

        Extension, size and count are checked before anything is copied; pixels and the token by
        `load_concept`. On any problem the new folder is removed and one ConceptError lists every problem.
        """
        name = safe_name(name, "concept name")
        problems = self.upload_problems(files)
        if problems:
            raise ConceptError(f"upload: {len(problems)} problem(s): {'; '.join(problems)}", problems)
        folder = inside(self.root, "uploads", name)
        if folder.exists():
            # An upload of a name that is not trained (checked before): its images may be replaced.
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        originals = {}  # stored name -> the name the user knows the file by
        try:
            for i, source in enumerate(files):
                stored = f"image_{i:03d}{Path(str(source)).suffix.lower()}"
                shutil.copyfile(source, folder / stored)
                originals[stored] = _shown(source)
            write_concept_toml(folder, token.strip(), class_word.strip(), train=train)
            return load_concept(folder, min_size=min_size)
        except ConceptError as error:
            shutil.rmtree(folder, ignore_errors=True)
            raise ConceptError(_in_user_terms(str(error), folder, originals), error.problems) from None
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def upload_problems(self, files: Sequence[str | Path]) -> list[str]:
        """Every problem of a set of uploaded files that can be seen without decoding them."""
        limits = self.limits
        if len(files) < limits.min_files:
            return ["images: upload at least one image (.png, .jpg, .jpeg or .webp)"]
        problems = []
        if len(files) > limits.max_files:
            problems.append(f"images: {len(files)} files, at most {limits.max_files}: pick the best ones")
        for source in files:
            path = Path(str(source))
            shown = _shown(path)
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.append(f"{shown} is not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
            elif not path.is_file():
                problems.append(f"{shown} did not arrive: upload it again")
            elif path.stat().st_size > limits.max_bytes:
                mib = path.stat().st_size / 2**20
                problems.append(
                    f"{shown} is {mib:.1f} MiB, more than {limits.max_bytes / 2**20:.0f} MiB: resize it"
                )
        return problems

    # --------------------------------------------------------------------------------------------- sidecars
    def adapter_path(self, name: str) -> Path:
        return inside(self.concepts, f"{safe_name(name, 'concept')}.safetensors")

    def sidecar(self, name: str) -> dict:
        """What the app recorded beside concept `name` (its reference images folder, scores); {} if nothing."""
        path = inside(self.concepts, f"{safe_name(name, 'concept')}.json")
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def update_sidecar(self, name: str, **fields) -> None:
        data = {**self.sidecar(name), **fields}
        write_text(inside(self.concepts, f"{safe_name(name, 'concept')}.json"), json.dumps(data, indent=1))


def _shown(source: str | Path) -> str:
    """A file's name as the user uploaded it (the end of it, if very long), for messages."""
    return Path(str(source)).name[-60:]


def _in_user_terms(message: str, folder: Path, originals: dict[str, str]) -> str:
    """A concept-folder message about an upload, with the server's folder and stored names replaced by "upload"
    and the user's own file names."""
    message = message.replace(str(folder), "upload")
    for stored, original in originals.items():
        message = message.replace(stored, original)
    return message
