"""Loading a CLIP backbone through open_clip: an architecture name plus a weights source, offline-safe.

Weights come from one of three places:

- a pretrained tag ("openai", "laion2b_s34b_b79k"...): the local cache is looked up first (the Hugging Face hub
  cache for hub-hosted tags, `~/.cache/clip` for URL-hosted ones) and a cached file is loaded straight from disk,
  without any network call. Only when it is not cached is a download attempted, and only after checking that it
  can work: under `HF_HUB_OFFLINE=1` it fails at once, otherwise a connection probe bounded by
  `NETWORK_PROBE_SECONDS` runs first. Without this, open_clip retries for about 46 s before failing offline.
- a local checkpoint file (`.pt`, `.pth`, `.bin`, `.safetensors`), loaded strictly: a file made for another
  architecture is refused. A file carries no activation setting, so OpenAI weights from a file need the
  "-quickgelu" architecture (e.g. "ViT-B-32-quickgelu").
- None: a random initialization drawn with seed 0 under a forked RNG (the caller's RNG state is untouched);
  tests and smoke runs only.
- "embedded", for a packaged backbone only (`PackagedBackbone`: a CLIP that ships inside a package with its own
  loader, given to these functions as `packaged`): its shipped weights; a file trained for its architecture
  loads as a checkpoint file of that backbone. The world CLIP, the default conventions' backbone, is one
  (`bora_diffusion.world.scoring`).

A tag's own settings are applied whichever way its file is found: QuickGELU for the OpenAI and LAION-400M
weights (open_clip 3.x builds "ViT-B-32" with plain GELU and only warns when the tag was trained with QuickGELU,
which changes every embedding) and the tag's image mean, std, interpolation and resize mode.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from PIL import Image

from .errors import BackboneError, WeightsError, WeightsUnavailableError

__all__ = [
    "EMBEDDED_WEIGHTS",
    "NETWORK_PROBE_SECONDS",
    "LoadedClip",
    "PackagedBackbone",
    "WeightsSource",
    "known_backbones",
    "load_clip",
    "resolve_weights",
]

NETWORK_PROBE_SECONDS = 3.0
EMBEDDED_WEIGHTS = "embedded"  # a packaged backbone's shipped weights
RANDOM_INIT_SEED = 0
# Shown when a name is unknown: the architectures CLIP-alignment papers use.
COMMON_BACKBONES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-g-14", "RN50")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
_TRUE = frozenset({"1", "on", "yes", "true"})


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from, resolved before anything heavy runs; recorded in every report.

    `kind` is "tag", "file", "random" or "embedded" (a packaged backbone's shipped weights). For a tag, `origin` is the hub repo or URL it is published at, `file`
    the cached copy (None when it still has to be downloaded) and `preprocess`/`quick_gelu` its settings.
    """

    kind: str
    tag: str | None = None
    file: Path | None = None
    origin: str | None = None
    quick_gelu: bool = False
    preprocess: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tag": self.tag,
            "file": None if self.file is None else str(self.file),
            "origin": self.origin,
            "quick_gelu": self.quick_gelu,
            "sha256": self.sha256,
            "seed": RANDOM_INIT_SEED if self.kind == "random" else None,
        }


@dataclass(frozen=True)
class LoadedClip:
    """A CLIP model in eval mode on its device, its image preprocessing, its tokenizer and where its weights
    came from."""

    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    weights: WeightsSource


@dataclass(frozen=True)
class PackagedBackbone:
    """A CLIP architecture that ships inside a package with its weights and its own loader, rather than through
    open_clip's pretrained tags: `weights="embedded"` means `weights_file`, a file trained for the architecture
    loads through `load`, and `weights=None` is `build(seed)`. `register` makes the architecture known to
    open_clip (idempotent); `origin` is recorded as the weights' origin; `hint` says how to make a weights file."""

    name: str
    weights_file: Path
    origin: str
    register: Callable[[], None]
    build: Callable[[int], torch.nn.Module]
    load: Callable[[Path], torch.nn.Module]
    image_size: Callable[[], int]
    tokenizer: Callable[[], Callable[[list[str]], torch.Tensor]]
    hint: str = ""


def known_backbones(packaged: Sequence[PackagedBackbone] = ()) -> list[str]:
    """Every architecture open_clip can build, including those registered with `open_clip.add_model_config`
    and the `packaged` ones."""
    import open_clip

    for backbone in packaged:
        backbone.register()
    return open_clip.list_models()


def _packaged(backbone: str, packaged: Sequence[PackagedBackbone]) -> PackagedBackbone | None:
    return next((entry for entry in packaged if entry.name == backbone), None)


def _check_backbone(backbone: str, packaged: Sequence[PackagedBackbone]) -> None:
    known = known_backbones(packaged)
    if backbone in known:
        return
    close = difflib.get_close_matches(backbone, known, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise BackboneError(
        f"unknown CLIP backbone {backbone!r}; {hint}known include {', '.join(COMMON_BACKBONES)} "
        f"(open_clip.list_models() lists all {len(known)}; register your own with open_clip.add_model_config)"
    )


def _offline() -> bool:
    # Read at call time, not at import: huggingface_hub's own constant freezes the value its import saw.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _probe(url: str, timeout: float) -> str | None:
    """None when an HTTP server answers a HEAD request to `url` (any status) within `timeout` seconds in total,
    else why not.

    An answer, not an open socket: sandboxes and captive proxies accept connections and then stay silent, which
    is exactly the hang to avoid. The request runs in a daemon thread so that a DNS lookup, which cannot be
    timed out, is bounded by the same limit. Proxies from the environment are used, as downloads would.
    """
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # an error status is still an answer: the network works
        except urllib.error.URLError as error:
            outcome.append(str(error.reason))
        except Exception as error:  # timeouts, resets, malformed replies: all mean "no usable answer"
            outcome.append(str(error) or type(error).__name__)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _hub_cached(repo_file: str, cache_dir: str | os.PathLike[str] | None) -> tuple[str, Path | None]:
    """(repo id, the cached weights file or None) for a tag's "org/repo/[file]" hub entry, trying the
    safetensors copy first as open_clip does."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    # open_clip's convention: "org/repo/" means the default file name, "org/repo/file.bin" names one.
    repo_id, filename = os.path.split(repo_file)
    filename = filename or HF_WEIGHTS_NAME
    candidates = [filename]
    if filename == HF_WEIGHTS_NAME:
        candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    for candidate in candidates:
        found = try_to_load_from_cache(
            repo_id, candidate, cache_dir=os.fspath(cache_dir) if cache_dir else None
        )
        if isinstance(found, str) and os.path.isfile(found):
            return repo_id, Path(found)
    return repo_id, None


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_path(weights: str) -> bool:
    return (
        weights.lower().endswith(_CHECKPOINT_SUFFIXES)
        or os.sep in weights
        or (os.altsep is not None and os.altsep in weights)
        or weights.startswith(("~", "."))
    )


def resolve_weights(
    backbone: str,
    weights: str | None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    packaged: Sequence[PackagedBackbone] = (),
) -> WeightsSource:
    """Find `backbone`'s weights without loading them; raise at once if they cannot be had.

    Checks, in order: the backbone name, a file path (anything with a path separator or a checkpoint suffix is
    one; a known tag wins over a same-named file in the working folder), the tag's existence, the local cache,
    offline mode, and a bounded network probe. Never takes longer than `NETWORK_PROBE_SECONDS`, plus the time
    to hash a local file. `packaged` are the packaged backbones the caller can load (see `PackagedBackbone`).
    """
    import open_clip

    _check_backbone(backbone, packaged)
    if weights is None:
        return WeightsSource(kind="random")
    entry = _packaged(backbone, packaged)
    if weights == EMBEDDED_WEIGHTS or entry is not None:
        return _embedded_weights(backbone, weights, entry, packaged)
    tags = open_clip.list_pretrained_tags_by_model(backbone)
    config = {} if _looks_like_path(weights) else open_clip.get_pretrained_cfg(backbone, weights)
    local = Path(weights).expanduser()
    if not config and local.is_file():
        # The file's hash, not its path, identifies the weights a report was made with.
        return WeightsSource(kind="file", file=local.resolve(), sha256=_sha256(local))
    if not config:
        if _looks_like_path(weights):
            raise WeightsError(f"weights file {local} does not exist: check the path")
        close = difflib.get_close_matches(weights, tags, n=2)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        shown = ", ".join(tags[:8]) + (f" and {len(tags) - 8} more" if len(tags) > 8 else "")
        listed = f"its tags: {shown}" if tags else "it has no pretrained tags"
        raise WeightsError(
            f"{backbone} has no pretrained tag {weights!r}; {hint}{listed}; or give a local checkpoint file"
        )
    settings = {
        "tag": weights,
        "quick_gelu": bool(config.get("quick_gelu", False)),
        "preprocess": {key: config[key] for key in _PREPROCESS_KEYS if config.get(key) is not None},
    }
    hub, url = config.get("hf_hub", ""), config.get("url", "")
    cached: Path | None = None
    if hub:
        repo_id, cached = _hub_cached(hub, cache_dir)
        origin = f"hf-hub:{repo_id}"
        probe = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        where = f"the hub cache {cache_dir or _hub_cache_dir()}"
    else:
        origin, probe = url, url
        clip_cache = Path(cache_dir).expanduser() if cache_dir else Path("~/.cache/clip").expanduser()
        candidate = clip_cache / os.path.basename(urlparse(url).path)
        cached = candidate if candidate.is_file() else None
        where = str(clip_cache)
    if cached is not None:
        return WeightsSource(kind="tag", file=cached, origin=origin, **settings)
    fix = "download them once with network access, or give weights='/path/to/checkpoint'"
    if settings["quick_gelu"] and not backbone.endswith("-quickgelu"):
        # A file carries no activation setting: QuickGELU-trained weights need the -quickgelu architecture.
        fix += f" with backbone '{backbone}-quickgelu'"
    if _offline():
        raise WeightsUnavailableError(
            f"CLIP weights {backbone}/{weights} ({origin}) are not in {where} and HF_HUB_OFFLINE=1 forbids "
            f"downloading: {fix}"
        )
    failure = _probe(probe, NETWORK_PROBE_SECONDS)
    if failure is not None:
        raise WeightsUnavailableError(
            f"CLIP weights {backbone}/{weights} are not in {where} and {probe} cannot be reached ({failure}): {fix}"
        )
    return WeightsSource(kind="tag", file=None, origin=origin, **settings)


def _embedded_weights(
    backbone: str, weights: str, entry: PackagedBackbone | None, packaged: Sequence[PackagedBackbone]
) -> WeightsSource:
    """A packaged backbone's shipped weights, or a file trained for its architecture."""
    if entry is None:
        names = ", ".join(repr(other.name) for other in packaged)
        only = (
            f"for backbone {names} only" if names else "only for a backbone a package ships (none given here)"
        )
        raise WeightsError(
            f"weights {EMBEDDED_WEIGHTS!r} exist {only}, not {backbone}: give a pretrained tag (e.g. openai) or "
            "a checkpoint file"
        )
    file = entry.weights_file if weights == EMBEDDED_WEIGHTS else Path(weights).expanduser()
    if not file.is_file():
        hint = f": {entry.hint}" if entry.hint else ""
        raise WeightsError(f"{entry.name} weights file {file} does not exist{hint}")
    kind = "embedded" if weights == EMBEDDED_WEIGHTS else "file"
    return WeightsSource(kind=kind, file=file.resolve(), origin=entry.origin, sha256=_sha256(file))


def _load_packaged(entry: PackagedBackbone, source: WeightsSource, device: str | torch.device) -> LoadedClip:
    import open_clip

    if source.kind == "random":
        model = entry.build(RANDOM_INIT_SEED).eval().requires_grad_(False)
    else:
        try:
            model = entry.load(source.file)
        except Exception as error:  # safetensors and load_state_dict raise many types for a wrong file
            raise WeightsError(
                f"weights file {source.file} is not a {entry.name} file ({type(error).__name__}: {error})"
            ) from None
    preprocess = open_clip.image_transform(entry.image_size(), is_train=False)
    return LoadedClip(
        model=model.to(device), preprocess=preprocess, tokenizer=entry.tokenizer(), weights=source
    )


def load_clip(
    backbone: str,
    weights: str | None,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    packaged: Sequence[PackagedBackbone] = (),
) -> LoadedClip:
    """Build `backbone` with `weights` (see the module docstring) on `device`, in fp32 and eval mode; a backbone
    among `packaged` is built by its own loader."""
    import open_clip

    source = resolve_weights(backbone, weights, cache_dir=cache_dir, packaged=packaged)
    entry = _packaged(backbone, packaged)
    if entry is not None:
        return _load_packaged(entry, source, device)
    kwargs: dict[str, Any] = {"force_quick_gelu": source.quick_gelu}
    for key, value in source.preprocess.items():
        kwargs[f"image_{key}"] = tuple(value) if isinstance(value, list | tuple) else value
    if source.kind == "random":
        pretrained = None
    elif source.file is not None:
        # A file on disk (user's or cached): open_clip reads it directly and never touches the network.
        pretrained = os.fspath(source.file)
    else:
        pretrained = source.tag  # not cached, and the network answered: let open_clip download it
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # only random init draws from it; forked, so never leaks
            model, _, preprocess = open_clip.create_model_and_transforms(
                backbone, pretrained=pretrained, device="cpu", cache_dir=cache_dir, **kwargs
            )
    except RuntimeError as error:
        if source.kind != "file":
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(
            f"weights file {source.file} does not fit backbone {backbone} ({first[:200]}): give the architecture "
            "it was trained as"
        ) from None
    except Exception as error:  # torch.load / safetensors raise many types for a corrupt file
        if source.kind != "file":
            raise
        raise WeightsError(
            f"weights file {source.file} cannot be read ({type(error).__name__}: {error}): check the file"
        ) from None
    model = model.to(device).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(backbone, cache_dir=cache_dir)
    return LoadedClip(model=model, preprocess=preprocess, tokenizer=tokenizer, weights=source)
