"""CLIP alignment evaluation with stated conventions: CLIP-T (image vs prompt), CLIP-I (image vs reference images).

    from bora_diffusion.evaluation import ClipScorer, load_prompt_set, fill_prompts

    scorer = ClipScorer("custom-diffusion")                  # or "mix-of-show", "default", or a Conventions
    text = scorer.text_alignment(images, prompts, tokens={"qwiv": "kettle"})
    image = scorer.image_alignment(images, "concepts/kettle")
    print(text.summary()); text.save("runs/kettle/clip_t.json")

`conventions.py` states the conventions and where they come from; `backbone.py` how weights are found offline;
`images.py` which image modes are converted and which refused; `report.py` what a report records.
"""

from .backbone import LoadedClip, WeightsSource, known_backbones, load_clip, resolve_weights
from .conventions import PAIRINGS, PRESETS, TOKEN_RULES, Conventions, preset, scoring_texts
from .errors import (
    BackboneError,
    EvaluationError,
    ImageModeError,
    ReferenceImagesError,
    WeightsError,
    WeightsUnavailableError,
)
from .images import generated_images, load_rgb, reference_images
from .prompt_sets import fill_prompts, load_prompt_set, prompt_sets
from .report import AlignmentReport
from .scorer import ClipScorer, Progress

__all__ = [
    "PAIRINGS",
    "PRESETS",
    "TOKEN_RULES",
    "AlignmentReport",
    "BackboneError",
    "ClipScorer",
    "Conventions",
    "EvaluationError",
    "ImageModeError",
    "LoadedClip",
    "Progress",
    "ReferenceImagesError",
    "WeightsError",
    "WeightsSource",
    "WeightsUnavailableError",
    "fill_prompts",
    "generated_images",
    "known_backbones",
    "load_clip",
    "load_prompt_set",
    "load_rgb",
    "preset",
    "prompt_sets",
    "reference_images",
    "resolve_weights",
    "scoring_texts",
]
