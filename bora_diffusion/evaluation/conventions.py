"""Metric conventions: every choice that changes a CLIP alignment number, stated in one frozen dataclass.

Papers report "CLIP-T" and "CLIP-I" numbers that cannot be compared unless five choices match, and they rarely
say which they made: the backbone (and its weights), the scale (1, 2.5 or 100), a text prefix, what happens to the
concept token in the prompt, and how generated x reference pairs are averaged. `Conventions` holds them all, each
report records them; the default reads with the world CLIP that ships in the package, and two presets reproduce
the published recipes:

================  ==================  =====================  =====================
field             default             ``custom-diffusion``   ``mix-of-show``
================  ==================  =====================  =====================
backbone          world-clip          ViT-B-32               ViT-B-32
weights           embedded            openai                 openai
text score        cos                 2.5 * max(cos, 0)      2.5 * max(cos, 0)
prefix            (none)              (none)                 "A photo depicts "
token rule        class_word          remove                 class_word
image score       cos                 cos                    max(cos, 0)
pairing           all_pairs           all_pairs              all_pairs
================  ==================  =====================  =====================

Where they come from:

- The 2.5 * max(cos, 0) text score and the "A photo depicts " prefix are CLIPScore's (Hessel et al., EMNLP 2021,
  arXiv 2104.08718): 2.5 stretches ViT-B/32 cosines, which rarely pass 0.4, towards [0, 1].
- Custom Diffusion (Kumari et al., CVPR 2023, arXiv 2212.04488; `customconcept101/evaluate.py`): OpenAI CLIP
  ViT-B/32, text 2.5 * max(cos, 0) without the prefix on prompts whose modifier token is removed, image alignment
  the plain mean of the full generated x reference cosine matrix.
- Mix-of-Show (Gu et al., NeurIPS 2023, arXiv 2305.18292; `scripts/evaluation_scripts/clipscore-main`): OpenAI
  CLIP ViT-B/32, CLIPScore text side with the prefix on prompts whose concept token is replaced by its class word,
  image alignment max(cos, 0) per pair with weight 1. Its image script does build every pair, but the number it
  prints averages a per-image dict zipped against the flattened pair list, so only the pairs with the *first*
  reference count; we average all pairs, which is what the script intends.
- The default keeps the raw cosine (no scale, no clipping: negative similarities stay visible), substitutes the
  class word (the prompt then says what the image should show) and adds no prefix. Its backbone is the small
  CLIP trained on the world (`bora_diffusion/world/clip.py`), shipped in the package like the embedded base
  model, so scoring works offline out of the box; `preset("default", backbone="ViT-B-32", weights="openai")`
  scores the same formula on the papers' backbone when those weights are cached.

Text scoring takes the prompt each image was generated with, applies the token rule, then prepends the prefix;
the exact strings handed to the tokenizer are kept in the report. CLIP's 77-token context truncates longer texts,
as every peer script does (`truncate=True`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

__all__ = [
    "PAIRINGS",
    "PRESETS",
    "TOKEN_RULES",
    "Conventions",
    "image_scores",
    "preset",
    "scoring_texts",
    "text_scores",
]

# "class_word": the concept token becomes its class word ("a qwiv kettle" -> "a kettle", "a photo of qwiv" ->
# "a photo of kettle"); "remove": the token is dropped ("a photo of qwiv" -> "a photo of"); "keep": as generated.
TOKEN_RULES = ("class_word", "remove", "keep")
# "all_pairs": the mean over every generated x reference pair (DreamBooth, Custom Diffusion, Mix-of-Show);
# "nearest": each generated image scores against its most similar reference, then those are averaged.
PAIRINGS = ("all_pairs", "nearest")


@dataclass(frozen=True)
class Conventions:
    """Every choice behind a CLIP-T / CLIP-I number (see the module docstring for the presets and sources).

    `backbone` is an open_clip architecture ("ViT-B-32", "ViT-L-14", "world-clip" or one registered with
    `open_clip.add_model_config`); the OpenAI spelling "ViT-B/32" is accepted and recorded as "ViT-B-32".
    `weights` is a pretrained tag of that architecture ("openai", "laion2b_s34b_b79k"...; "embedded" for the
    shipped world-clip), a local checkpoint file,
    or None for a random initialization (seed 0; for tests and smoke runs only, the scores mean nothing).
    A text score is `text_scale * cos`, clipped at zero first when `text_clip_at_zero`; an image pair score is
    `image_scale * cos`, clipped likewise; `pairing` says how pairs become one number.
    """

    backbone: str = "world-clip"
    weights: str | None = "embedded"
    text_scale: float = 1.0
    text_clip_at_zero: bool = False
    prefix: str = ""
    token_rule: str = "class_word"
    image_scale: float = 1.0
    image_clip_at_zero: bool = False
    pairing: str = "all_pairs"

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise ConfigError(f"backbone must be an open_clip architecture name, got {self.backbone!r}")
        # open_clip itself reads "ViT-B/32" as "ViT-B-32"; record the name it uses.
        object.__setattr__(self, "backbone", self.backbone.strip().replace("/", "-"))
        if self.weights is not None:
            if not isinstance(self.weights, str) or not str(self.weights).strip():
                raise ConfigError(
                    f"weights must be a pretrained tag, a checkpoint file or None, got {self.weights!r}"
                )
            object.__setattr__(self, "weights", str(self.weights))
        for name in ("text_scale", "image_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("text_clip_at_zero", "image_clip_at_zero"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.prefix, str):
            raise ConfigError(f'prefix must be a string ("" for none), got {self.prefix!r}')
        if self.token_rule not in TOKEN_RULES:
            raise ConfigError(f"token_rule must be one of {', '.join(TOKEN_RULES)}, got {self.token_rule!r}")
        if self.pairing not in PAIRINGS:
            raise ConfigError(f"pairing must be one of {', '.join(PAIRINGS)}, got {self.pairing!r}")

    @property
    def preset_name(self) -> str | None:
        """The preset these conventions equal field for field, or None for a custom combination."""
        return next((name for name, known in PRESETS.items() if known == self), None)

    def describe_text(self) -> str:
        """The text score formula and token handling, e.g. "2.5*max(cos, 0), token -> class word"."""
        rule = {"class_word": "token -> class word", "remove": "token removed", "keep": "token kept"}
        prefix = f"prefix {self.prefix!r}" if self.prefix else "no prefix"
        return f"{_formula(self.text_scale, self.text_clip_at_zero)}, {rule[self.token_rule]}, {prefix}"

    def describe_image(self) -> str:
        """The image pair formula and pairing, e.g. "max(cos, 0) mean over all pairs"."""
        pairing = {"all_pairs": "mean over all pairs", "nearest": "nearest reference per image"}
        return f"{_formula(self.image_scale, self.image_clip_at_zero)}, {pairing[self.pairing]}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "preset": self.preset_name}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Conventions:
        known = {field.name for field in dataclasses.fields(cls)}
        # "preset" is derived, written by to_dict for readers; it is not an input.
        unknown = sorted(set(data) - known - {"preset"})
        if unknown:
            raise ConfigError(
                f"unknown convention field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**{key: value for key, value in data.items() if key in known})


PRESETS: Mapping[str, Conventions] = {
    "default": Conventions(),
    "custom-diffusion": Conventions(
        backbone="ViT-B-32", weights="openai", text_scale=2.5, text_clip_at_zero=True, token_rule="remove"
    ),
    "mix-of-show": Conventions(
        backbone="ViT-B-32",
        weights="openai",
        text_scale=2.5,
        text_clip_at_zero=True,
        prefix="A photo depicts ",
        token_rule="class_word",
        image_clip_at_zero=True,
    ),
}


def preset(name: str, **overrides: Any) -> Conventions:
    """The named preset ("default", "custom-diffusion", "mix-of-show"), with `overrides` replacing fields
    (e.g. `preset("mix-of-show", backbone="ViT-L-14")`; the result then reports no preset name)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown conventions preset {name!r}; {hint}known: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def _formula(scale: float, clip_at_zero: bool) -> str:
    inner = "max(cos, 0)" if clip_at_zero else "cos"
    return inner if scale == 1.0 else f"{scale:g}*{inner}"


# ------------------------------------------------------------------------------------------------ text handling
def _token_pattern(token: str) -> str:
    # Whole-word match: "qwiv" must not match inside "qwivs"; tokens such as "<zq-kettle>" are escaped.
    return rf"(?<!\w){re.escape(token)}(?!\w)"


def _tidy(text: str) -> str:
    """One space between words, none before punctuation, none at the ends (after a token was taken out)."""
    text = re.sub(r"\s+", " ", text)
    return re.sub(r" ([,.;:!?])", r"\1", text).strip()


def _apply_rule(prompt: str, token: str, class_word: str, rule: str) -> tuple[str, bool]:
    """(the prompt under `rule`, whether the token occurred in it)."""
    pattern = _token_pattern(token)
    if not re.search(pattern, prompt, flags=re.IGNORECASE):
        return prompt, False
    if rule == "keep":
        return prompt, True
    if rule == "class_word":
        # "a qwiv kettle": the token qualifies the class word right after it, so it goes rather than doubling
        # the noun ("a kettle kettle"); a token standing alone ("a photo of qwiv") becomes the class word.
        text = re.sub(pattern + rf"\s+(?={re.escape(class_word)}(?!\w))", "", prompt, flags=re.IGNORECASE)
        text = re.sub(pattern, lambda _: class_word, text, flags=re.IGNORECASE)
    else:  # "remove"
        text = re.sub(pattern, "", prompt, flags=re.IGNORECASE)
    return _tidy(text), True


def scoring_texts(prompts: Sequence[str], tokens: Mapping[str, str], conventions: Conventions) -> list[str]:
    """The exact texts the text encoder sees: each prompt under the token rule, then the prefix.

    `tokens` maps each concept token to its class word (several for multi-concept prompts). Unless the rule is
    "keep", at least one prompt must hold one of the tokens: none at all means a wrong token, which would
    otherwise score the made-up word silently.
    """
    rule = conventions.token_rule
    if rule != "keep" and not tokens:
        raise ConfigError(
            f"token_rule {rule!r} needs the concept tokens: pass tokens={{concept.token: concept.class_word}}, "
            "or use token_rule='keep' for prompts without a concept token"
        )
    for token, class_word in tokens.items():
        if not token.strip() or not class_word.strip():
            raise ConfigError(f"tokens must map a non-empty token to a non-empty class word, got {token!r}")
    texts, found = [], False
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise ConfigError(f"prompts must be strings, got {prompt!r}")
        for token, class_word in tokens.items():
            prompt, seen = _apply_rule(prompt, token, class_word, rule)
            found = found or seen
        texts.append(conventions.prefix + prompt)
    if tokens and rule != "keep" and not found:
        shown = ", ".join(repr(token) for token in tokens)
        raise ConfigError(
            f"none of the {len(prompts)} prompts holds the token {shown} (first prompt: {prompts[0]!r}): "
            "pass the token the images were generated with"
        )
    return texts


# ------------------------------------------------------------------------------------------------- score math
def text_scores(cos: torch.Tensor, conventions: Conventions) -> torch.Tensor:
    """Per-image text scores from image-text cosines: `text_scale * cos`, clipped at zero first if asked."""
    scores = cos.clamp(min=0.0) if conventions.text_clip_at_zero else cos  # [G]
    return conventions.text_scale * scores


def image_scores(cos: torch.Tensor, conventions: Conventions) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(pair scores [G, R], per-image scores [G], mean) from the generated x reference cosine matrix [G, R]."""
    pairs = conventions.image_scale * (
        cos.clamp(min=0.0) if conventions.image_clip_at_zero else cos
    )  # [G, R]
    if conventions.pairing == "all_pairs":
        per_image = pairs.mean(dim=1)  # [G]: each image against every reference
        mean = pairs.mean().item()  # the mean of all G*R pairs (equal to the mean of per_image)
    else:  # "nearest"
        per_image = pairs.max(dim=1).values  # [G]: each image against its closest reference
        mean = per_image.mean().item()
    return pairs, per_image, mean
