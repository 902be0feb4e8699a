"""Load the base Stable Diffusion pipeline that concepts are trained on and applied to.

A base is named by one string, the same on the command line, in the app and in adapter files:

- `None`, `"embedded"` or `EMBEDDED_NAME`: the tiny embedded default (built and saved once, see `embedded.py`);
- an existing local folder in diffusers layout (`model_index.json` plus one subfolder per component);
- anything else: a Hugging Face Hub id such as `"stable-diffusion-v1-5/stable-diffusion-v1-5"`, loaded through
  the hub cache (so offline it works only if it was downloaded before).

Stable Diffusion 1.x/2.x (`StableDiffusionPipeline`) and SDXL (`StableDiffusionXLPipeline`) are supported; any
other pipeline class is refused with a `ConfigError` rather than loaded and failing later.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from .embedded import EMBEDDED_NAME, embedded_identity, ensure_embedded_default, silenced_progress_bars
from .errors import ConfigError

__all__ = ["EMBEDDED_ALIASES", "BasePipeline", "base_name", "default_guidance", "load_base"]

BasePipeline: TypeAlias = StableDiffusionPipeline | StableDiffusionXLPipeline

# The names that select the embedded default; EMBEDDED_NAME is included so the name an adapter file records can
# be passed straight back as a base.
EMBEDDED_ALIASES = frozenset({"embedded", EMBEDDED_NAME})

# Classifier-free guidance when none is given. 7.5 is Stable Diffusion's convention; the embedded world base
# follows prompts best at 3 and worse above (scripts/bench_base.py, 100 captions: caption retrieval 38% at 3,
# 27% at 5, 18% at 7.5): a model this small over-saturates under strong guidance.
SD_GUIDANCE = 7.5
EMBEDDED_GUIDANCE = 3.0

_PIPELINE_CLASSES: dict[str, type[BasePipeline]] = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
}
# huggingface_hub's repo id shape: "name" or "namespace/name", no path syntax.
_HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
# A Hub cache snapshot folder: .../models--namespace--name/snapshots/<revision>.
_HUB_CACHE_REPO = re.compile(r"^models--(.+)$")


@dataclass(frozen=True)
class _Base:
    """A base string classified once, so `load_base` and `base_name` can never disagree."""

    kind: Literal["embedded", "folder", "hub"]
    source: str  # the folder (absolute) for "folder", the repo id for "hub", EMBEDDED_NAME for "embedded"


def _is_path_like(text: str) -> bool:
    # Hub ids contain one "/", so a single slash alone does not make a path; anything a repo id cannot be does.
    return (
        text.startswith((".", "~", os.sep))
        or (os.altsep is not None and os.altsep in text)
        or (os.sep in text and not _HUB_ID.match(text))
    )


def _classify(base: str | None) -> _Base:
    if base is None or base.strip() in EMBEDDED_ALIASES:
        return _Base("embedded", EMBEDDED_NAME)
    text = base.strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return _Base("folder", str(path.resolve()))
    if path.exists():
        raise ConfigError(
            f"base {base!r} is a file; pass a diffusers folder (with model_index.json), a Hub id, or 'embedded'"
        )
    if _is_path_like(text):
        raise ConfigError(
            f"base folder {base!r} does not exist; check the path, or pass a Hub id or 'embedded' instead"
        )
    return _Base("hub", text)


def base_name(base: str | None) -> str:
    """The identity string adapter files record for `base`; loads nothing.

    - embedded default (`None`, `"embedded"`, `EMBEDDED_NAME`): `EMBEDDED_NAME`;
    - Hub id: the id as given (`"namespace/name"`);
    - local folder: the Hub id when the folder is a Hub cache snapshot (`.../models--ns--name/snapshots/<rev>`),
      `EMBEDDED_NAME` when it is a saved embedded default, else the folder's own name (its basename after
      resolving `.` and symlinks). The basename is stable when the folder moves between machines; the price is
      that two different local bases in folders of the same name record the same identity.

    Raises ConfigError for a path that does not exist or names a file.
    """
    resolved = _classify(base)
    if resolved.kind != "folder":
        return resolved.source
    folder = Path(resolved.source)
    embedded = embedded_identity(folder)
    if embedded is not None:
        return embedded
    repo = _HUB_CACHE_REPO.match(folder.parent.parent.name)
    if folder.parent.name == "snapshots" and repo is not None:
        return repo.group(1).replace("--", "/")
    return folder.name


def default_guidance(base: str | None) -> float:
    """The guidance scale to use on `base` when the user gives none (see EMBEDDED_GUIDANCE)."""
    return EMBEDDED_GUIDANCE if base_name(base) == EMBEDDED_NAME else SD_GUIDANCE


def _pipeline_class(model_index: dict[str, object], base: str) -> type[BasePipeline]:
    class_name = model_index.get("_class_name")
    pipeline_class = _PIPELINE_CLASSES.get(str(class_name))
    if pipeline_class is None:
        supported = ", ".join(sorted(_PIPELINE_CLASSES))
        raise ConfigError(
            f"base {base!r} is a {class_name} and cannot be used; pass a base whose model_index.json "
            f"names one of: {supported}"
        )
    return pipeline_class


def _read_model_index(folder: Path, base: str) -> dict[str, object]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ConfigError(
            f"base folder {base!r} has no model_index.json; pass a folder saved in diffusers layout "
            "(pipeline.save_pretrained), a Hub id, or 'embedded'"
        )
    try:
        model_index = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"base folder {base!r} has an unreadable model_index.json ({err}); re-save it"
        ) from err
    if not isinstance(model_index, dict):
        raise ConfigError(
            f"base folder {base!r} has a model_index.json that is not a JSON object; re-save it"
        )
    return model_index


def _load_folder(folder: Path, base: str, dtype: torch.dtype) -> BasePipeline:
    pipeline_class = _pipeline_class(_read_model_index(folder, base), base)
    try:
        return pipeline_class.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"base folder {base!r} could not be loaded ({err}); re-save or re-download it"
        ) from err


def _load_hub(repo_id: str, dtype: torch.dtype) -> BasePipeline:
    # OSError covers the hub's own errors (not cached while offline, repository not found, gated, HTTP);
    # ValueError covers malformed repo ids. With HF_HUB_OFFLINE=1 both come back without network retries.
    try:
        with warnings.catch_warnings():
            # diffusers passes huggingface_hub a deprecated argument; the user can do nothing about that warning.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            model_index = DiffusionPipeline.load_config(repo_id)
        pipeline_class = _pipeline_class(model_index, repo_id)
        return pipeline_class.from_pretrained(repo_id, dtype=dtype)
    except (OSError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(
            f"base {repo_id!r} is not a local folder and could not be loaded from the Hugging Face Hub cache "
            f"({type(err).__name__}); download it once with network access (`hf download {repo_id}`), "
            "pass a local diffusers folder, or use 'embedded'"
        ) from err


def load_base(
    base: str | None = None, *, torch_dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> BasePipeline:
    """Load the base pipeline named by `base` (see the module docstring) onto `device` in `torch_dtype`.

    The returned pipeline has its progress bars disabled. Raises ConfigError with a one-line fix when the base
    does not exist, is not a diffusers folder, is an unsupported pipeline class, or is a Hub id that cannot be
    loaded (offline and not cached).
    """
    resolved = _classify(base)
    with silenced_progress_bars():
        if resolved.kind == "embedded":
            pipe = _load_folder(ensure_embedded_default(), EMBEDDED_NAME, torch_dtype)
        elif resolved.kind == "folder":
            pipe = _load_folder(Path(resolved.source), str(base), torch_dtype)
        else:
            pipe = _load_hub(resolved.source, torch_dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
