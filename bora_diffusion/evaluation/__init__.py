"""CLIP alignment evaluation with stated conventions: CLIP-T (image vs prompt), CLIP-I (image vs reference images).

    from bora_diffusion.evaluation import ClipScorer, load_prompt_set, fill_prompts

    scorer = ClipScorer("custom-diffusion")                  # or "mix-of-show", or a Conventions
    text = scorer.text_alignment(images, prompts, tokens={"qwiv": "kettle"})
    image = scorer.image_alignment(images, "concepts/kettle")
    print(text.summary()); text.save("runs/kettle/clip_t.json")

The default conventions read with the world CLIP, which the world package plugs in: score with
`bora_diffusion.world.scoring.WorldScorer("default")` (a `ClipScorer` that also knows the world's grammar for
context accuracy). Nothing here imports the world.

Evaluation runs (generate with trained concepts alone and composed, score, report gain, drift and retention):

    report = evaluate_concepts(pipe, [EvalConcept("runs/a/kettle.safetensors", "concepts/kettle"), ...],
                               scorer, "runs/a/eval", base_name="embedded:world-base-2")

The rooms, from the bottom up:

- scoring: `conventions.py` (the conventions and where they come from), `backbone.py` (how CLIP weights are
  found offline; packaged backbones), `images.py` (which image modes are converted, which refused), `report.py`
  (`AlignmentReport`, what a score records), `scorer.py` (`ClipScorer`), `identity.py` and `context.py` (the
  scores beside CLIP-T and CLIP-I), `prompt_sets.py`, `errors.py`;
- runs: `run_settings.py` (what a run draws), `results.py` (what it reports), `prepared.py` (the concepts
  checked before drawing), `overview.py` (the contact sheet), `runs.py` (the run);
- comparisons: `budgets.py` (matched budgets), `compare_settings.py`, `comparison.py` (the outcome),
  `renderers.py` (its CSV, Markdown and chart, drawn by `chart.py`), `compare.py` (the run).
"""

from .backbone import LoadedClip, PackagedBackbone, WeightsSource, known_backbones, load_clip, resolve_weights
from .budgets import MethodBudget, match_budgets, trainable_parameters
from .compare import compare_methods
from .compare_settings import CompareConcept, CompareSettings
from .comparison import Comparison
from .context import ContextGrammar, Question, context_accuracy
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
    "ContextGrammar",
    "Conventions",
    "EvalConcept",
    "EvaluationError",
    "EvaluationReport",
    "ImageModeError",
    "LoadedClip",
    "MethodBudget",
    "PackagedBackbone",
    "Progress",
    "Question",
    "ReferenceImagesError",
    "RunSettings",
    "SettingScores",
    "WeightsError",
    "WeightsSource",
    "WeightsUnavailableError",
    "compare_methods",
    "context_accuracy",
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
