"""Typed, frozen configs, validated when they are built. Files and the CLI go through `to_dict` / `from_dict`.

Each field is a `Setting` (bora_diffusion.settings): its type, range and help are written here once, and the
CLI flags, concept.toml's `[train]` table and the app's form are derived from them. A method's own options (say
`blocks` of `bora_block`) are declared on its adapter class and travel in `AdapterConfig.options`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import adapters
from .errors import ConfigError
from .settings import Setting, check_settings, setting, settings_of

INITS = ("kaiming", "gaussian")


def _reject_unknown(known: set[str], data: Mapping[str, Any], what: str) -> None:
    """A typo in a config file names the field and lists the known ones, instead of a TypeError."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


@dataclass(frozen=True, init=False)
class AdapterConfig:
    """How to build one concept's adapters: the settings every method shares, plus the method's own `options`.

    `AdapterConfig("bora_block", rank=2, blocks=4)` takes a method's options as keywords; the options the method
    declares (`adapters.get(method).options`) are checked by their settings and filled with their defaults (an
    option given as None takes its default), and an option of another method is refused. Files hold the options
    beside the shared fields, flat, as they always have.
    """

    method: str = setting("sbora_fa", f"adapter method, one of {', '.join(adapters.available())}")
    rank: int = setting(4, "adapter rank r", positive=True)
    alpha: float | None = setting(
        None, "alpha; the update is scaled by alpha / rank (default: rank, so the scale is 1)", float,
        positive=True, optional=True,
    )  # fmt: skip
    init: str = setting(
        "kaiming", "init of the trainable down factor: kaiming (uniform, like a fresh nn.Linear) or gaussian "
        "(N(0, 1/r^2))", choices=INITS,
    )  # fmt: skip
    seed: int = setting(
        0, "seed of the initialization (each layer derives its generator from it and its path)"
    )
    # A preset name ("attention", "cross_kv", "self_attention") or regular expressions matched against module
    # paths; checked by bora_diffusion.inject, which owns the presets.
    targets: str | tuple[str, ...] = "attention"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __init__(
        self,
        method: str,
        rank: int = 4,
        alpha: float | None = None,
        init: str = "kaiming",
        seed: int = 0,
        targets: str | tuple[str, ...] = "attention",
        options: Mapping[str, Any] | None = None,
        **more_options: Any,
    ) -> None:
        cls = adapters.get(method)  # the one "unknown method" message
        # None means "not given", so callers can pass an option through for every method.
        given = {
            key: value for key, value in {**(options or {}), **more_options}.items() if value is not None
        }
        declared = {option.name: option for option in cls.options}
        for name in given:
            if name not in declared:
                owners = adapters.option_owners(name)
                where = (
                    f"an option of {' and '.join(owners)} only" if owners else "not an option of any method"
                )
                raise ConfigError(f"{name} is {where}; remove it for method {method!r}")
        values = dict(method=method, rank=rank, alpha=alpha, init=init, seed=seed)
        values["targets"] = tuple(targets) if isinstance(targets, list | tuple) else targets
        values["options"] = {
            name: option.check(given.get(name, option.default)) for name, option in declared.items()
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)
        for name, value in check_settings(self):
            object.__setattr__(self, name, value)

    def __hash__(self) -> int:
        return hash((self.method, self.rank, self.alpha, self.init, self.seed, self.targets,
                     tuple(sorted(self.options.items()))))  # fmt: skip

    @property
    def scaling(self) -> float:
        """s = alpha / r: the fixed factor on the low-rank update."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def to_dict(self) -> dict[str, Any]:
        """The fields with the method's options beside them, flat, as concept files have always held them."""
        data = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "options"
        }
        if isinstance(self.targets, tuple):
            data["targets"] = list(self.targets)
        return {**data, **self.options}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        if "method" not in data:
            raise ConfigError("adapter config has no 'method' field")
        data = dict(data)
        method = data.pop("method")
        shared = {field.name for field in dataclasses.fields(cls)} - {"method", "options"}
        options = {
            key: value for key, value in data.items() if key not in shared
        }  # older files: "blocks": null
        _reject_unknown(shared | all_option_names() | {"method"}, data, "adapter config")
        return cls(method, **{key: data[key] for key in shared if key in data}, **options)


def option_settings(method: str | None = None) -> tuple[Setting, ...]:
    """The options `method` declares, or every method's (in registry order, each name once) when None."""
    methods = adapters.available() if method is None else [method]
    return tuple({option.name: option for m in methods for option in adapters.get(m).options}.values())


def all_option_names() -> set[str]:
    """Every option name some method declares."""
    return {option.name for option in option_settings()}


def adapter_settings(method: str | None = None) -> tuple[Setting, ...]:
    """The adapter settings a recipe sets (method, rank, alpha), then `method`'s own options (every method's
    when None). `init` and the init `seed` are the library's: no flag or concept.toml key sets them."""
    shared = tuple(s for s in settings_of(AdapterConfig) if s.name not in ("init", "seed"))
    return shared + option_settings(method)


LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
PRECISIONS = ("no", "fp16", "bf16")
ATTENTION = ("sdpa", "xformers")


@dataclass(frozen=True)
class TrainConfig:
    """How to train one concept. Defaults follow diffusers' DreamBooth LoRA recipe where it has one
    (constant LR, batch 1, alpha = rank), with a higher LR because the embedded default is tiny.

    `steps` counts optimizer steps (each of `gradient_accumulation` micro-batches). `prior_weight` > 0 turns on
    prior preservation with `class_images` images of the class word (generated by the base when missing).
    `lock_weight` > 0 penalizes the adapters' change to the cross-attention keys and values of the concept's
    captions with its token taken out, so the concept stays in its token when fused (bora_diffusion.locking);
    `word_lock_weight` > 0 penalizes the trained token embedding's change to the text states of the other words
    of the captions, so the prompt keeps its background and companions (idle without `train_embedding`).
    `checkpoint_every` and `sample_every` are in steps (0 = never; a final checkpoint is always written).
    `train_embedding` also trains the concept token's own text embedding (textual inversion / ED-LoRA; see
    bora_diffusion.embeddings) at `embedding_learning_rate` (default: `learning_rate`), without weight decay, as
    `embedding_vectors` vectors (textual inversion's number of vectors; 1 = one new token).
    `snr_gamma` weighs each sample's denoising loss by min(SNR(t), gamma) / SNR(t) (Min-SNR-gamma, arXiv
    2303.09556; / (SNR(t) + 1) for v-prediction), so that the nearly clean timesteps count no more than the one
    where SNR = gamma (the paper's case: they pull against the noisy ones). None = off (every timestep weighs 1);
    5 is the paper's. On the world concepts it gained less than off (docs/benchmarks.md).
    """

    steps: int = setting(
        200, "optimizer steps (each of `gradient_accumulation` micro-batches)", positive=True
    )
    learning_rate: float = setting(1e-3, "learning rate", positive=True, flag="--lr")
    lr_schedule: str = setting("constant", "learning-rate schedule", choices=LR_SCHEDULES, flag="--schedule")
    warmup_steps: int = setting(0, "warmup steps of the schedule", minimum=0, flag="--warmup")
    batch_size: int = setting(1, "images per step", positive=True)
    gradient_accumulation: int = setting(1, "micro-batches per step", positive=True, flag="--accumulate")
    max_grad_norm: float | None = setting(1.0, "gradient clipping norm (None: no clipping)", positive=True,
                                          optional=True)  # fmt: skip
    weight_decay: float = setting(1e-2, "AdamW weight decay of the adapters", minimum=0)
    adam_8bit: bool = setting(False, "8-bit AdamW (needs bitsandbytes)")
    mixed_precision: str = setting("no", "mixed precision on the GPU", choices=PRECISIONS)
    gradient_checkpointing: bool = setting(
        False, "trade compute for memory: recompute activations in backward"
    )
    attention: str = setting("sdpa", "attention kernel: torch's sdpa or xformers", choices=ATTENTION)
    compile: bool = setting(
        False, "compile the UNet with torch.compile (inductor): a slow first step, faster ones after; runs "
        "uncompiled, saying why, where inductor cannot (bora_diffusion.compiling)",
    )  # fmt: skip
    resolution: int = setting(64, "training resolution in px (64 is the embedded base's)", positive=True)
    cache_latents: bool = setting(True, "encode the images once and keep their latents")
    prior_weight: float = setting(0.0, "prior preservation weight (0 = off)", minimum=0)
    lock_weight: float = setting(
        0.0, "keep the keys and values of the concept's captions without its token (0 = off; "
        "bora_diffusion.locking)", minimum=0,
    )  # fmt: skip
    word_lock_weight: float = setting(
        0.0,
        "keep the other words of the captions as the trained token embedding found them (0 = off)",
        minimum=0,
    )
    class_images: int = setting(16, "class images for prior preservation", minimum=0)
    checkpoint_every: int = setting(0, "checkpoint every N steps (0 = never; a final one is always kept)",
                                    minimum=0)  # fmt: skip
    sample_every: int = setting(
        0, "generate the concept's sample prompts every N steps (0 = never)", minimum=0
    )
    sample_prompts: tuple[str, ...] = ()  # the concept's [prompts], filled in by whoever builds the job
    train_embedding: bool = setting(
        False, "also train the token's own text embedding, as textual inversion / ED-LoRA do"
    )
    embedding_learning_rate: float | None = setting(
        None, "learning rate of the token embedding (default: the learning rate)", float, positive=True,
        optional=True, flag="--embedding-lr",
    )  # fmt: skip
    embedding_vectors: int = setting(
        1, "vectors the trained token stands for, written tok tok_1 ... as diffusers does", positive=True
    )
    snr_gamma: float | None = setting(
        None, "Min-SNR-gamma loss weighting, kohya's --min_snr_gamma (default off; 5 is the paper's)", float,
        positive=True, optional=True,
    )  # fmt: skip
    seed: int = setting(0, "seed of initialization, batches, noise and slots")

    def __post_init__(self) -> None:
        for name, value in check_settings(self):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "sample_prompts", tuple(self.sample_prompts))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["sample_prompts"] = list(self.sample_prompts)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        _reject_unknown({field.name for field in dataclasses.fields(cls)}, data, "training")
        return cls(**data)
