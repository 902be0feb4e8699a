"""The native adapter file: one `.safetensors` per concept that describes itself.

Tensors are keyed `<module path>.<tensor>` (e.g. `...attn1.to_q.B`, `...attn1.to_q.index`), plus
`concept.token_embedding` (N, D) when the concept token's text embedding was trained (bora_diffusion.embeddings;
files written before tokens had several vectors hold (D,), read as (1, D)), and on SDXL
`concept.token_embedding_2` (N, D_2), the same token's rows on the second text encoder; the safetensors metadata (string ->
string, JSON where structured) holds:

    format            "bora-diffusion-adapter"
    format_version    "1"
    library_version   the bora-diffusion version that wrote it
    method            the adapter method id
    config            AdapterConfig.to_dict()
    concept           {"name", "token", "class_word"}
    slots             {"space", "seed"} for slot methods (indices are the `.index` tensors), else null
    training          the training settings the concept was trained with, or null
    base_model        {"name", "fingerprint", "layers": {path: [out, in]}, "unet": the base UNet's block layout}

`base_model.unet` holds the few UNet config entries (UNET_LAYOUT_KEYS: block types, layers_per_block, cross-attention
width, addition_embed_type) that say which architecture the base is (SDXL: addition_embed_type "text_time") and
how its blocks are numbered, so an export can name layers as other tools do (formats/sgm_names.py) without the
base model. Files written before it was recorded, or from a model without a diffusers config, read as None.

Reading validates all of it; loading checks every layer against the model before touching it. Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from .. import __version__
from ..adapters import AdaptedLinear, get
from ..atomic import atomic_path
from ..config import AdapterConfig
from ..errors import AdapterFileError, BoraError, ConfigError
from ..inject import adapter_state_dict, inject, load_adapter_state_dict, wrappers
from ..slots import SlotLedger

FORMAT = "bora-diffusion-adapter"
FORMAT_VERSION = 1
# The UNet config entries a file records about its base (base_model.unet).
UNET_LAYOUT_KEYS = (
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "transformer_layers_per_block",
    "cross_attention_dim",
    "addition_embed_type",
)
TOKEN_EMBEDDING = "concept.token_embedding"
_FOREIGN_TENSOR = re.compile(r"^(.+?)[._]((?:lora[._]|lora_[AB]\.|alpha$).*)$")
TOKEN_EMBEDDING_2 = "concept.token_embedding_2"  # SDXL's second text encoder (OpenCLIP ViT-bigG)


@dataclass(frozen=True)
class AdapterFile:
    """A validated adapter file's content, not yet applied to any model."""

    path: Path
    config: AdapterConfig
    name: str
    token: str | None
    class_word: str | None
    base_name: str
    fingerprint: str
    layers: dict[str, tuple[int, int]]  # module path -> (out, in)
    slot_space: str | None
    slot_seed: int
    library_version: str
    training: dict | None
    tensors: dict[str, Tensor]  # the UNet adapters' tensors
    token_embedding: Tensor | None = None  # (N, D): the token's trained text embedding, if it was trained
    token_embedding_2: Tensor | None = None  # (N, D_2): its rows on SDXL's second text encoder
    unet_layout: dict | None = None  # the base UNet's UNET_LAYOUT_KEYS entries; None in older files

    @property
    def token_embeddings(self) -> list[Tensor]:
        """The token's rows per text encoder, in the pipeline's order: [] untrained, one on SD 1.x / 2.x, two on
        SDXL."""
        return [rows for rows in (self.token_embedding, self.token_embedding_2) if rows is not None]

    def slots(self) -> dict[str, Tensor]:
        """Module path -> slot index (r,), for slot methods; empty otherwise."""
        return {
            path: self.tensors[f"{path}.index"] for path in self.layers if f"{path}.index" in self.tensors
        }


def fingerprint(layers: dict[str, tuple[int, int]]) -> str:
    """A short hash of the target layers' paths and shapes: two base models agree on it iff the file fits both."""
    text = ";".join(f"{path}:{out}x{in_}" for path, (out, in_) in sorted(layers.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def unet_layout(model: nn.Module) -> dict | None:
    """The UNET_LAYOUT_KEYS entries of a diffusers UNet's config (JSON-ready), or None for other models."""
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping) or "down_block_types" not in config:
        return None
    return {key: json.loads(json.dumps(config.get(key))) for key in UNET_LAYOUT_KEYS}  # tuples -> lists


def save_adapter(
    path: str | os.PathLike,
    model: nn.Module,
    name: str,
    config: AdapterConfig,
    *,
    base_name: str,
    token: str | None = None,
    class_word: str | None = None,
    training: dict | None = None,
    token_embedding: Tensor | None = None,
    token_embedding_2: Tensor | None = None,
    layout: dict | None = None,
) -> Path:
    """Write concept `name` of `model` to `path` atomically; return the path. `training` (the training settings)
    is recorded as given, for provenance; `token_embedding` is the token's trained text embedding, (N, D) or
    (D,) for one vector, if any; `layout` is the base UNet's block layout (`unet_layout`), read from `model`
    when it is a diffusers UNet and not given."""
    layers = {p: (w.out_features, w.in_features) for p, w in wrappers(model) if name in w.adapters}
    tensors = {key: t.detach().contiguous().cpu() for key, t in adapter_state_dict(model, name).items()}
    if token_embedding is not None:
        if token is None:
            raise ConfigError("a token embedding needs its token: pass token=")
        rows = token_embedding.detach().float().reshape(-1, token_embedding.shape[-1])  # (N, D)
        tensors[TOKEN_EMBEDDING] = rows.contiguous().cpu()
    if token_embedding_2 is not None:
        if token_embedding is None or len(token_embedding_2) != len(tensors[TOKEN_EMBEDDING]):
            raise ConfigError("token_embedding_2 needs token_embedding with as many vectors")
        tensors[TOKEN_EMBEDDING_2] = token_embedding_2.detach().float().contiguous().cpu()
    space = get(config.method).slot_space
    seed = (
        next((w.adapters[name].slot_seed for _, w in wrappers(model) if name in w.adapters), 0)
        if space
        else 0
    )
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "library_version": __version__,
        "method": config.method,
        "config": json.dumps(config.to_dict()),
        "concept": json.dumps({"name": name, "token": token, "class_word": class_word}),
        "slots": json.dumps({"space": space, "seed": seed} if space else None),
        "base_model": json.dumps(
            {
                "name": base_name,
                "fingerprint": fingerprint(layers),
                "layers": layers,
                "unet": layout if layout is not None else unet_layout(model),
            }
        ),
        "training": json.dumps(training),
    }
    target = Path(path)
    with atomic_path(target) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
    return target


def read_safetensors(path: Path, kind: str, fix: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A .safetensors file's tensors and metadata; a missing or unreadable file is an AdapterFileError that names
    `kind` and ends with `fix`."""
    if not path.is_file():
        raise AdapterFileError(f"{path}: {kind} not found; check the path")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as error:  # safetensors raises its own error types and OSError for bad headers
        raise AdapterFileError(f"{path}: not a readable safetensors file ({error}); {fix}") from None
    check_finite(path, tensors)
    return tensors, metadata


def check_finite(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """Refuse a file holding NaN or Inf: it would compose and draw garbage without a word (peft's `safe_merge`
    refuses such merges too). Every reader of adapter files goes through `read_safetensors`, so every command
    and the app are covered."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            continue
        nans, infs = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        foreign = _FOREIGN_TENSOR.match(
            key
        )  # LoRA files name a tensor `lora_down.weight`, `lora_A.weight`, ...
        layer, name = foreign.groups() if foreign else key.rpartition(".")[::2]
        raise AdapterFileError(
            f"{path}: layer {layer or key}, tensor {name} ({key}) holds {nans} NaN and {infs} infinite "
            "value(s); the file is broken (a diverged training?): retrain it or use an earlier checkpoint"
        )


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Read and validate an adapter file without applying it. Every problem is an AdapterFileError naming the file."""
    path = Path(path)
    tensors, metadata = read_safetensors(
        path, "adapter file", "the file is corrupt or truncated: copy it again"
    )
    if metadata.get("format") != FORMAT:
        raise AdapterFileError(
            f"{path}: not a bora-diffusion adapter (no '{FORMAT}' metadata); a diffusers or kohya "
            "LoRA file must be imported with `bora-diffusion import` first"
        )
    try:
        version = int(metadata["format_version"])
        if version > FORMAT_VERSION:
            raise AdapterFileError(
                f"{path}: format version {version} is newer than this bora-diffusion reads "
                f"({FORMAT_VERSION}); upgrade with `pip install -U bora-diffusion`"
            )
        method = metadata["method"]
        get(method)
        config = AdapterConfig.from_dict(json.loads(metadata["config"]))
        concept = json.loads(metadata["concept"])
        slots = json.loads(metadata["slots"])
        base = json.loads(metadata["base_model"])
        layers = {p: (int(shape[0]), int(shape[1])) for p, shape in base["layers"].items()}
        layout = base.get("unet")
        if layout is not None and not isinstance(layout, dict):
            raise TypeError(f"base_model.unet is a {type(layout).__name__}, not an object")
    except AdapterFileError:
        raise  # already names the file: wrapping it again printed "F: F: ..."
    except BoraError as error:
        raise AdapterFileError(f"{path}: {error}") from None
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise AdapterFileError(
            f"{path}: malformed metadata ({type(error).__name__}: {error}); the file is corrupt"
        ) from None
    if config.method != method:
        raise AdapterFileError(
            f"{path}: metadata says method {method!r} but its config says {config.method!r}; corrupt file"
        )
    if fingerprint(layers) != base.get("fingerprint"):
        raise AdapterFileError(
            f"{path}: base-model fingerprint does not match its layer list; the file is corrupt"
        )
    token_embedding = tensors.pop(TOKEN_EMBEDDING, None)
    if token_embedding is not None and token_embedding.ndim == 1:
        token_embedding = token_embedding.unsqueeze(0)  # (1, D): written before tokens had several vectors
    if token_embedding is not None and (
        token_embedding.ndim != 2 or not len(token_embedding) or not concept.get("token")
    ):
        raise AdapterFileError(
            f"{path}: malformed {TOKEN_EMBEDDING} (needs a token and shape (N, D)); corrupt file"
        )
    token_embedding_2 = tensors.pop(TOKEN_EMBEDDING_2, None)
    if token_embedding_2 is not None and (
        token_embedding is None
        or token_embedding_2.ndim != 2
        or len(token_embedding_2) != len(token_embedding)
    ):
        raise AdapterFileError(
            f"{path}: malformed {TOKEN_EMBEDDING_2} (needs {TOKEN_EMBEDDING} and as many vectors); corrupt file"
        )
    orphans = sorted({key.rpartition(".")[0] for key in tensors} - set(layers))
    if orphans:
        raise AdapterFileError(
            f"{path}: tensors for layers not in its layer list, e.g. {orphans[0]}; corrupt file"
        )
    return AdapterFile(
        path=path,
        config=config,
        name=concept.get("name") or path.stem,
        token=concept.get("token"),
        class_word=concept.get("class_word"),
        base_name=base.get("name", "?"),
        fingerprint=base["fingerprint"],
        layers=layers,
        slot_space=(slots or {}).get("space"),
        slot_seed=int((slots or {}).get("seed", 0)),
        library_version=metadata.get("library_version", "?"),
        training=json.loads(metadata.get("training") or "null"),
        tensors=tensors,
        token_embedding=token_embedding,
        token_embedding_2=token_embedding_2,
        unet_layout=layout,
    )


def load_adapter(
    source: str | os.PathLike | AdapterFile, model: nn.Module, *, name: str | None = None
) -> AdapterFile:
    """Add a file (a path, or an AdapterFile already read) to `model` as concept `name` (default: the file's),
    after checking it fits `model` layer by layer."""
    adapter = source if isinstance(source, AdapterFile) else read_adapter(source)
    name = name or adapter.name
    for layer, (out, in_) in adapter.layers.items():
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            raise AdapterFileError(
                f"{adapter.path}: layer {layer} does not exist in this model; the file was made "
                f"for base model {adapter.base_name!r}"
            ) from None
        if not isinstance(module, nn.Linear | AdaptedLinear):
            raise AdapterFileError(
                f"{adapter.path}: layer {layer} is a {type(module).__name__} here, not a Linear; "
                f"the file was made for base model {adapter.base_name!r}"
            )
        if (module.out_features, module.in_features) != (out, in_):
            raise AdapterFileError(
                f"{adapter.path}: layer {layer} is ({module.out_features}, {module.in_features}) in this model but "
                f"({out}, {in_}) in the file; it was made for base model {adapter.base_name!r}, load that base"
            )
    slots = adapter.slots() if adapter.slot_space else None
    if adapter.slot_space and set(slots) != set(adapter.layers):
        missing = sorted(set(adapter.layers) - set(slots))
        raise AdapterFileError(f"{adapter.path}: no slot index for layer {missing[0]}; corrupt file")
    for layer, index in (slots or {}).items():
        # Checked here, where file and layer are known; the adapter's own check can name neither.
        out, in_ = adapter.layers[layer]
        size = out if adapter.slot_space == "out" else in_
        values = [int(i) for i in index.reshape(-1).tolist()]
        rank = adapter.config.rank
        if len(values) != rank or len(set(values)) != rank or not all(0 <= i < size for i in values):
            raise AdapterFileError(
                f"{adapter.path}: layer {layer}: slot index {values} needs {rank} distinct "
                f"indices in 0..{size - 1} ({adapter.slot_space} size {size}); corrupt file"
            )
    ledger = SlotLedger(seed=adapter.slot_seed)  # carries the seed the file's ortho basis was built from
    inject(model, adapter.config, name=name, ledger=ledger, slots=slots, paths=list(adapter.layers))
    load_adapter_state_dict(model, name, adapter.tensors, source=str(adapter.path))
    return adapter
