"""The embedded default base model: a tiny Stable Diffusion pipeline that needs no download.

bora-diffusion must work (tests, CI, the app's first start) on machines that cannot reach a model hub. This module
builds a small SD-1.x-shaped pipeline entirely from configs: a UNet with self- and cross-attention at two widths,
a small VAE, a 2-layer CLIP text encoder and the real 49,408-token OpenAI CLIP tokenizer, rebuilt from the BPE
merges file that open_clip ships (bora_diffusion.clip_tokenizer). `ensure_embedded_default()` saves it once under the bora-diffusion home folder
so every later load is a plain `from_pretrained(folder)`, exactly like a downloaded base.

Its weights are the world base trained by `scripts/train_world_base.py` and shipped in `world/weights/base/` (fp16,
the token table reduced to its trained rows); without those files (a bare checkout) it falls back to random
weights from seed 0. `_write_default_weights` is the single place that decides which.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import diffusers.utils.logging
import torch
import transformers.utils.logging
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from .atomic import temp_dir, written_with_umask
from .clip_tokenizer import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer

# CLIP_VOCAB_SIZE, CLIP_CONTEXT_LENGTH and clip_tokenizer live in clip_tokenizer.py; importable from here as before.
__all__ = [
    "CLIP_CONTEXT_LENGTH",
    "CLIP_VOCAB_SIZE",
    "EMBEDDED_NAME",
    "EMBEDDED_RECIPE_VERSION",
    "SHIPPED_WEIGHTS",
    "TOKEN_ROWS_SEED",
    "build_tiny_pipeline",
    "clip_tokenizer",
    "default_pipeline",
    "embedded_dir",
    "embedded_identity",
    "ensure_embedded_default",
    "has_shipped_base",
    "home_dir",
    "is_complete",
    "load_shipped_base",
    "sd15_scheduler",
    "shipped_base_dir",
    "silenced_progress_bars",
    "untrained_token_rows",
    "weights_identity",
]

# The identity string adapter files record for a concept trained on the embedded default. Its number names one
# release of the shipped weights: a retrained base gets a new name, so a file made on older weights of the same
# shapes says which base it was made for (`bora-diffusion inspect`) instead of passing for one made on these.
EMBEDDED_NAME = "embedded:world-base-2"
# weights_identity() of the release EMBEDDED_NAME names; tests/test_world_base.py fails until both change together.
SHIPPED_WEIGHTS = "world-base:55f970a5333d1f38"
# Bump whenever build_tiny_pipeline (or the source of its weights) changes: a saved folder of another version is
# rebuilt instead of silently loading stale weights under the same name.
EMBEDDED_RECIPE_VERSION = 2
# Seed of the token-embedding rows the world base never trains (see `untrained_token_rows`).
TOKEN_ROWS_SEED = 49408

# Written last into a saved folder; its presence (with matching version and file sizes) means "complete".
_MARKER = "bora_embedded.json"
_HOME_ENV = "BORA_DIFFUSION_HOME"


def _tiny_unet() -> UNet2DConditionModel:
    # SD-1.x layout in miniature: self- and cross-attention at width 32 (down 0, up 1) and width 64 (mid block), no
    # attention in the deepest down/up block, like SD's last level. The VAE downsamples by 4, so a 64 px image is a
    # 16x16 latent: 4x fewer attention tokens than a factor-2 VAE, which keeps a 5-step 64 px image near 0.1 s.
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=32,
        # diffusers' historic naming: `attention_head_dim` is the number of heads here (UNet2DConditionModel refuses
        # num_attention_heads). 2 heads -> head width 16 at 32 channels, 32 at 64.
        attention_head_dim=2,
        norm_num_groups=32,
    )


def _tiny_vae() -> AutoencoderKL:
    # Three levels -> downsampling factor 2 ** (3 - 1) = 4 (SD's VAE has four levels, factor 8).
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


def _tiny_text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_CONTEXT_LENGTH,
        hidden_act="quick_gelu",
        # Real CLIP ids: the pooled output is taken at the first eos_token_id, which must be the real one.
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def sd15_scheduler() -> DDIMScheduler:
    """Stable Diffusion 1.5's schedule, so samplers and training noise behave like on a real base."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def untrained_token_rows(vocab_size: int, width: int, seed: int = TOKEN_ROWS_SEED) -> torch.Tensor:
    """The (vocab_size, width) token table the world base's text encoder starts from: N(0, 0.02), like CLIP's init.

    The world's captions use a few dozen of the 49,408 CLIP tokens. Rows of the others never get a gradient and
    are trained without weight decay, so they end exactly as drawn here; the shipped text encoder therefore stores
    only the trained rows (saving 49,408 x width halfs, about 6 MB at width 64) and the loader redraws the rest.
    They must stay distinct random vectors rather than zeros, so that two unseen concept tokens still differ.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((vocab_size, width), generator=generator) * 0.02


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Build the tiny SD pipeline with weights drawn from `seed` (same seed -> bit-identical state dicts).

    Takes well under a second and a few MB; the caller's global RNG state is left untouched.
    """
    # fork_rng restores the global CPU RNG afterwards, so building never perturbs the caller's randomness.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet()
        vae = _tiny_vae()
        text_encoder = _tiny_text_encoder()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shipped_base_dir() -> Path:
    """Where the trained world base ships inside the package (written by `scripts/train_world_base.py package`)."""
    return Path(__file__).resolve().parent / "world" / "weights" / "base"


_SHIPPED_FILES = (
    "unet.json",
    "unet.safetensors",
    "vae.json",
    "vae.safetensors",
    "text_encoder.json",
    "text_encoder.safetensors",
    "scheduler.json",
)


def has_shipped_base() -> bool:
    """True when every file of the trained world base is present in the package."""
    folder = shipped_base_dir()
    return all((folder / name).is_file() for name in _SHIPPED_FILES)


def load_shipped_base() -> StableDiffusionPipeline:
    """The trained world base as an fp32 pipeline, from the fp16 files shipped in the package.

    The text encoder's token table is rebuilt: `untrained_token_rows` for every row, then the trained rows the file
    carries (`token_rows.ids`, `token_rows.values`) written over them.
    """
    folder = shipped_base_dir()
    if not has_shipped_base():
        raise FileNotFoundError(f"no trained world base in {folder}: run scripts/train_world_base.py all")
    unet = UNet2DConditionModel.from_config(json.loads((folder / "unet.json").read_text()))
    unet.load_state_dict(_upcast(load_file(folder / "unet.safetensors")))
    vae = AutoencoderKL.from_config(json.loads((folder / "vae.json").read_text()))
    vae.load_state_dict(_upcast(load_file(folder / "vae.safetensors")))
    text_config = CLIPTextConfig.from_dict(json.loads((folder / "text_encoder.json").read_text()))
    text_encoder = CLIPTextModel(text_config)
    with safe_open(folder / "text_encoder.safetensors", framework="pt") as file:
        seed = int((file.metadata() or {}).get("token_rows_seed", TOKEN_ROWS_SEED))
    tensors = _upcast(load_file(folder / "text_encoder.safetensors"))
    ids = tensors.pop("token_rows.ids").long()  # (trained,)
    values = tensors.pop("token_rows.values")  # (trained, width)
    table = untrained_token_rows(text_config.vocab_size, text_config.hidden_size, seed)  # (vocab, width)
    table[ids] = values
    table_key = next(key for key in text_encoder.state_dict() if key.endswith("token_embedding.weight"))
    tensors[table_key] = table
    # position_ids is a buffer that transformers may or may not persist; strict=False tolerates exactly that.
    missing, unexpected = text_encoder.load_state_dict(tensors, strict=False)
    if unexpected or [key for key in missing if not key.endswith("position_ids")]:
        raise RuntimeError(f"shipped text encoder does not match its config: {missing=} {unexpected=}")
    scheduler = DDIMScheduler.from_config(json.loads((folder / "scheduler.json").read_text()))
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _upcast(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Weights ship in fp16 to halve the package; compute stays fp32 on CPU.
    return {key: value.float() if value.is_floating_point() else value for key, value in tensors.items()}


def home_dir() -> Path:
    """bora-diffusion's data folder: `$BORA_DIFFUSION_HOME`, else `~/.cache/bora-diffusion`."""
    env = os.environ.get(_HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bora-diffusion"


def embedded_dir() -> Path:
    """Where the embedded default is saved: `<home>/embedded/<EMBEDDED_NAME's part after "embedded:">`."""
    return home_dir() / "embedded" / EMBEDDED_NAME.split(":", 1)[1]


def _read_marker(folder: Path) -> dict[str, object]:
    """The parsed marker of `folder`, or {} when it is missing or unreadable."""
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def embedded_identity(folder: Path) -> str | None:
    """The embedded name recorded in `folder`'s marker (e.g. `EMBEDDED_NAME`), or None if it has no marker.

    Lets a saved embedded default passed by its path keep the same identity as `"embedded"`.
    """
    name = _read_marker(folder).get("name")
    return name if isinstance(name, str) else None


@contextlib.contextmanager
def silenced_progress_bars() -> Iterator[None]:
    """Turn off diffusers' and transformers' load/save progress bars for the duration, then restore them.

    `from_pretrained` and `save_pretrained` draw bars ("Loading pipeline components", "Loading weights", "Writing
    model shards") that have no per-call switch; the library never prints, so it silences them around its own
    calls and leaves the caller's setting as it found it.
    """
    libraries = (diffusers.utils.logging, transformers.utils.logging)
    previous = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, enabled in zip(libraries, previous, strict=True):
            if enabled:
                library.enable_progress_bar()


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != _MARKER
    }


def _fsync_files(folder: Path) -> None:
    # Flush the weights to disk before the marker exists, so that after a power loss the marker never vouches for
    # files whose data did not reach the disk.
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as file:
                os.fsync(file.fileno())


def is_complete(folder: Path) -> bool:
    """True if `folder` holds a fully written embedded default of the current recipe version.

    The marker is written last and lists every file with its size, so a folder cut short at any point (missing
    marker, missing or truncated file, older recipe) is not complete.
    """
    marker = _read_marker(folder)
    if marker.get("name") != EMBEDDED_NAME or marker.get("recipe_version") != EMBEDDED_RECIPE_VERSION:
        return False
    if marker.get("weights") != weights_identity():
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or "model_index.json" not in files:
        return False
    for relative, size in files.items():
        path = folder / relative
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def default_pipeline() -> StableDiffusionPipeline:
    """The embedded default's pipeline: the trained world base when the package ships it, else the random tiny one.

    The random fallback keeps a source checkout without the weight files working (tests, the machinery); the
    folder marker records which of the two a saved folder holds (`weights_identity`), so they never mix.
    """
    return load_shipped_base() if has_shipped_base() else build_tiny_pipeline(0)


@lru_cache(maxsize=1)
def weights_identity() -> str:
    """What the embedded default's weights are: `world-base:<sha256 of the shipped files>` or `random:seed-0`.

    Recorded in the saved folder's marker, so retrained (or newly shipped) weights replace a saved folder instead
    of being shadowed by it.
    """
    if not has_shipped_base():
        return "random:seed-0"
    digest = hashlib.sha256()
    for name in _SHIPPED_FILES:
        digest.update(name.encode())
        digest.update((shipped_base_dir() / name).read_bytes())
    return f"world-base:{digest.hexdigest()[:16]}"


def _write_default_weights(folder: Path) -> None:
    """Write the embedded default pipeline into the empty `folder`: the one seam for where its weights come from."""
    with silenced_progress_bars():
        default_pipeline().save_pretrained(folder, safe_serialization=True)


def ensure_embedded_default() -> Path:
    """Return the folder of the saved embedded default, building and saving it first if needed.

    The pipeline is written into a hidden temporary sibling folder and renamed into place only once complete, so
    an interrupted build never leaves a folder that a later call takes as complete. Safe against another process
    doing the same at the same time: whoever renames second uses the winner's folder.
    """
    target = embedded_dir()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_dir(target.parent, prefix=f".{target.name}.tmp-")
    try:
        with written_with_umask(staging):  # readable by another user's server, as any export is
            _write_default_weights(staging)
        _fsync_files(staging)
        marker = {
            "name": EMBEDDED_NAME,
            "recipe_version": EMBEDDED_RECIPE_VERSION,
            "weights": weights_identity(),
            "files": _file_sizes(staging),
        }
        (staging / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        _replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not is_complete(target):
        raise RuntimeError(f"embedded default at {target} is incomplete right after being written")
    return target


def _replace_folder(staging: Path, target: Path) -> None:
    """Move the complete `staging` folder to `target`, setting aside an incomplete or outdated `target` first."""
    if target.exists():
        if is_complete(target):
            # Another process finished first; keep its folder.
            return
        # os.rename cannot replace a non-empty folder: move the stale one out of the way, then delete it.
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, trash / target.name)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(staging, target)
    except OSError:
        # A concurrent build renamed its folder into place between our check and our rename.
        if not is_complete(target):
            raise
