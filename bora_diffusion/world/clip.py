"""The small CLIP of the world: an open_clip model from a shipped config, with weights shipped in the package.

Architecture "world-clip" (`weights/world-clip.json`, registered with `open_clip.add_model_config`): a small
ModifiedResNet image tower (open_clip's RN50 design with one block per stage and width 16: a 3-conv stem, four
stages, attention pooling) on 64 px images, and a 3-layer causal text tower, with OpenAI CLIP's own BPE tokenizer
and vocabulary (49408 entries) so that prompts tokenise exactly as Stable Diffusion's text encoder sees them. A
convolutional tower because shapes are what a patch-8 ViT of this size could not learn (50% shape accuracy
against 62-64% for this one, see scripts/train_world_clip.py).

Why the token table is stored sparse. The world's captions use a few dozen of the 49408 vocabulary entries;
the full table would be most of the file (49408 x width floats) for rows that training never touched. So
training runs on a compact vocabulary (`CompactVocabulary`: the world's token ids, renumbered in the same
order so the end-of-text token stays the largest id, which open_clip's pooling relies on) and the file holds
those rows with their real ids. Loading puts them back into a full table whose other rows are zero: a word the
world never shows has no learned meaning either way, and zero says so without a random-seed dependency.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "ARCH",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CompactVocabulary",
    "WorldClip",
    "build_model",
    "compact_state",
    "image_tensor",
    "load_world_clip",
    "model_config",
    "register",
    "save_world_clip",
    "tokenizer",
]

ARCH = "world-clip"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CONFIG_FILE = WEIGHTS_DIR / f"{ARCH}.json"
WEIGHTS_FILE = WEIGHTS_DIR / f"{ARCH}.safetensors"
_IDS_KEY, _ROWS_KEY, _TABLE_KEY = "token_embedding.ids", "token_embedding.rows", "token_embedding.weight"
# OpenAI CLIP's normalization, which open_clip's preprocessing applies for this config too.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def register() -> None:
    """Make "world-clip" known to open_clip (idempotent)."""
    import open_clip

    if ARCH not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_FILE)


@lru_cache(maxsize=1)
def model_config() -> dict[str, Any]:
    return json.loads(CONFIG_FILE.read_text())


def image_size() -> int:
    return int(model_config()["vision_cfg"]["image_size"])


@lru_cache(maxsize=1)
def tokenizer() -> Any:
    """open_clip's CLIP BPE tokenizer with this model's context length (built once: it reads the BPE merges)."""
    import open_clip

    register()
    return open_clip.get_tokenizer(ARCH)


def build_model(vocab_size: int | None = None, seed: int = 0) -> torch.nn.Module:
    """A freshly initialized world-clip (under a forked RNG seeded by `seed`), with `vocab_size` token rows
    instead of the full vocabulary when given (the compact training table)."""
    from open_clip.model import CLIP

    config = json.loads(json.dumps(model_config()))
    if vocab_size is not None:
        config["text_cfg"]["vocab_size"] = vocab_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(**config)


def image_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images at the model's size -> normalized float32 [N, 3, H, W] (what open_clip's preprocessing gives
    for images already at that size, without PIL's per-image overhead)."""
    size = image_size()
    arrays = []
    for image in images:
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32))
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0  # [N, 3, H, W]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


@dataclass(frozen=True)
class CompactVocabulary:
    """The token ids training uses, in increasing order; `compact[i]` is the i-th of them."""

    ids: tuple[int, ...]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CompactVocabulary:
        tokens = tokenizer()(list(texts))  # [N, context]
        return cls(tuple(sorted({0, *torch.unique(tokens).tolist()})))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary ids -> compact ids; an id outside the vocabulary is an error."""
        table = torch.full((int(max(self.ids)) + 1,), -1, dtype=torch.long)
        table[list(self.ids)] = torch.arange(len(self.ids))
        if int(tokens.max()) >= len(table) or bool((table[tokens] < 0).any()):
            raise ValueError("a caption holds a token outside the compact vocabulary")
        return table[tokens]


def save_world_clip(
    model: torch.nn.Module,
    vocabulary: CompactVocabulary,
    path: str | Path = WEIGHTS_FILE,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a compact-vocabulary model as a world-clip file: fp16 tensors, the token table stored sparse."""
    from safetensors.torch import save_file

    state = {key: value.detach().to(torch.float16).contiguous() for key, value in model.state_dict().items()}
    rows = state.pop(_TABLE_KEY)  # [len(vocabulary), width]
    state[_ROWS_KEY] = rows
    state[_IDS_KEY] = torch.tensor(vocabulary.ids, dtype=torch.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata={"arch": ARCH, **(metadata or {})})
    tmp.replace(path)
    return path


def compact_state(path: str | Path, vocabulary: CompactVocabulary) -> dict[str, torch.Tensor]:
    """A world-clip file as the fp32 state dict of a compact-vocabulary model (to continue training it)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    ids, rows = state.pop(_IDS_KEY), state.pop(_ROWS_KEY)
    if tuple(ids.tolist()) != vocabulary.ids:
        raise ValueError(f"{path} was trained on another vocabulary than the world's current one")
    state[_TABLE_KEY] = rows
    return {key: value.float() for key, value in state.items()}


def load_world_clip(path: str | Path = WEIGHTS_FILE) -> torch.nn.Module:
    """The world-clip model with the full vocabulary, in fp32 and eval mode, from `path` (default: shipped)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    ids, rows = state.pop(_IDS_KEY), state.pop(_ROWS_KEY)  # [k], [k, width]
    model = build_model()
    table = torch.zeros_like(model.token_embedding.weight)  # [49408, width]
    table[ids] = rows.float()
    state[_TABLE_KEY] = table
    model.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class WorldClip:
    """The loaded model with its tokenizer: `similarity(images, texts)` is the cosine matrix [N_img, N_txt]."""

    model: torch.nn.Module

    @classmethod
    def load(cls, path: str | Path = WEIGHTS_FILE) -> WorldClip:
        return cls(load_world_clip(path))

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image], batch: int = 256) -> torch.Tensor:
        chunks = [
            self.model.encode_image(image_tensor(images[i : i + batch])) for i in range(0, len(images), batch)
        ]
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)  # [N, embed]

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch: int = 512) -> torch.Tensor:
        tokenize = tokenizer()
        chunks = [
            self.model.encode_text(tokenize(list(texts[i : i + batch]))) for i in range(0, len(texts), batch)
        ]
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)  # [N, embed]

    def similarity(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        return self.embed_images(images) @ self.embed_texts(texts).T  # [N_img, N_txt]
