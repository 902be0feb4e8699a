"""CLIP alignment evaluation with stated conventions: CLIP-T (image vs prompt), CLIP-I (image vs reference images).

    from bora_diffusion.evaluation import ClipScorer, load_prompt_set, fill_prompts

    scorer = ClipScorer("custom-diffusion")                  # or "mix-of-show", "default", or a Conventions
    text = scorer.text_alignment(images, prompts, tokens={"qwiv": "kettle"})
    image = scorer.image_alignment(images, "concepts/kettle")
    print(text.summary()); text.save("runs/kettle/clip_t.json")

Evaluation runs (generate with trained concepts alone and composed, score, report retention) are in `runs.py`:

    report = evaluate_concepts(pipe, [EvalConcept("runs/a/kettle.safetensors", "concepts/kettle"), ...],
                               scorer, "runs/a/eval", base_name="embedded:world-base-2")

Method comparisons (train the same concepts with several methods at matched budgets, evaluate, tabulate and
chart) are in `compare.py` and `chart.py`.

`identity.py` (whose references a concept's images match best) and `context.py` (does the prompt's background
and companion survive tuning) are the scores beside CLIP-T and CLIP-I that runs report.

`conventions.py` states the conventions and where they come from; `backbone.py` how weights are found offline;
`images.py` which image modes are converted and which refused; `report.py` what a report records.
"""

from .backbone import LoadedClip, WeightsSource, known_backbones, load_clip, resolve_weights
from .budgets import MethodBudget, match_budgets, trainable_parameters
from .compare import compare_methods
from .compare_settings import CompareConcept, CompareSettings
from .comparison import Comparison
from .context import context_accuracy, context_questions
from .conventions import PAIRINGS, PRESETS, TOKEN_RULES, Conventions, preset, scoring_texts
from .errors import (
    BackboneError,
    ConceptFileError,
    EvaluationError,
    ImageModeError,
    ReferenceImagesError,
    WeightsError,
    WeightsUnavailableError,
)
from .images import generated_images, load_rgb, reference_images
from .prompt_sets import fill_prompts, fill_with_words, load_prompt_set, prompt_sets
from .report import AlignmentReport
from .results import ConceptResult, EvaluationReport, SettingScores
from .run_settings import EvalConcept, RunSettings
from .runs import evaluate_base, evaluate_concepts
from .scorer import ClipScorer, Progress

__all__ = [
    "PAIRINGS",
    "PRESETS",
    "TOKEN_RULES",
    "AlignmentReport",
    "BackboneError",
    "ClipScorer",
    "CompareConcept",
    "CompareSettings",
    "Comparison",
    "ConceptFileError",
    "ConceptResult",
    "Conventions",
    "EvalConcept",
    "EvaluationError",
    "EvaluationReport",
    "ImageModeError",
    "LoadedClip",
    "MethodBudget",
    "Progress",
    "ReferenceImagesError",
    "RunSettings",
    "SettingScores",
    "WeightsError",
    "WeightsSource",
    "WeightsUnavailableError",
    "compare_methods",
    "context_accuracy",
    "context_questions",
    "evaluate_base",
    "evaluate_concepts",
    "fill_prompts",
    "fill_with_words",
    "generated_images",
    "known_backbones",
    "load_clip",
    "load_prompt_set",
    "load_rgb",
    "match_budgets",
    "preset",
    "prompt_sets",
    "reference_images",
    "resolve_weights",
    "scoring_texts",
    "trainable_parameters",
]
