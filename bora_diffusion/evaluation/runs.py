"""Evaluation runs: generate with trained concepts, alone and composed, and score CLIP-T, CLIP-I and retention.

The protocol is DreamBench's (DreamBooth, Ruiz et al., CVPR 2023, arXiv 2208.12242): each concept's prompt set
is filled with its token and class word, every prompt is generated with N fixed seeds, each image is scored
against its prompt (CLIP-T, prompt fidelity) and against the concept's reference images (CLIP-I, subject
fidelity), and the means are reported.

Before tuning: the same prompts and seeds are first generated on the bare base (`RunSettings.before`), token
and all, so every score has the number it is read against: a concept's **gain** is alone - base (the base draws
its class word, or nothing in particular, where the token stands).

Multi-concept: the same prompts and seeds are generated a second time with *all* the given concepts composed
into the base (`bora_diffusion.merge.compose`), so every composed image has a twin in the alone setting that
differs only by the other concepts being present. A concept's **retention** is composed score / alone score:
1.0 means composing cost it nothing, 0.8 that it kept 80 % of its alignment. This is the single-concept
evaluation after merging of Mix-of-Show (arXiv 2305.18292) and SBoRA (arXiv 2407.05413). A ratio only means
this when the alone score is clearly positive (raw cosines can be negative or hover around zero, and 0.01 +- 0.01
in the denominator turns noise into a "retention" of -11), so retention is null unless the alone mean is at
least `RETENTION_MIN_SEMS` standard errors above zero.
Retention cannot see bleeding (a style the concepts share raises every concept's CLIP-I), so with two or more
concepts each setting also gets each concept's **identity** (`identity.py`): the share of its images that match
its own references best among all the concepts' references.
Other words: a concept's gain says its token draws it, not that only its token does. Training can also teach
the adapters to draw it for the class word, whatever word stands before it (DreamBooth's language drift). So each
concept's prompts are drawn once more with **other words** in the token's place (`RunSettings.other_words`,
made-up words no concept uses; every prompt with every word, once, at the first seed), on the base and with the
concept alone; the concept's **drift** is the CLIP-I gain those images pick up (alone - base, both with the same
words: a made-up word moves the base's images by itself). A concept bound to its token drifts near 0. One word
is not enough, nor one word per prompt: which words pick a concept up varies a lot (bolt-circle tuned at 4
images a step: "vlok circle" +0.21, "vlek circle" +0.16, "qorb circle" -0.06) and varies with the prompt, so
that with one word per prompt a concept's drift went from +0.31 to -0.05 when the words changed prompts.
CLIP-T falls when a concept stops looking like its class word, whatever else the image gets right, so on prompts
in the world's grammar each setting also gets **context** accuracy (`context.py`, with a scorer that has a
grammar: the world's, `bora_diffusion.world.scoring.WorldScorer`): the share of the prompts' background and
companion attributes CLIP reads right, the concept's words left out of the question.

Images, each setting's manifest and the per-image `AlignmentReport`s land under the output folder::

    <out>/base/<concept>/        p00-s0.png ... manifest.json grid.png clip_t.json clip_i.json
    <out>/alone/<concept>/       the same, generated with the concept's file loaded
    <out>/composed/<concept>/    the same, generated with every concept composed
    <out>/base_other/<concept>/  the prompts with other words in the token's place, on the base
    <out>/alone_other/<concept>/ the same with the concept's file loaded
    <out>/evaluation.json        the `EvaluationReport`: means, retention, conventions, settings, provenance
    <out>/overview.png           references, then every setting's images per concept (first seed)

Nothing is printed; `progress(message, done, total)` is called before each generation and scoring step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..atomic import atomic_path
from ..concept import Concept
from ..errors import ConfigError
from ..generate import generate
from ..inject import concepts as model_concepts
from ..inject import eject
from ..merge import check_slots, compose
from .identity import identity_shares
from .images import check_images, reference_images
from .overview import overview
from .prepared import BaseItem, Prepared, check_base_tokens, check_leftover_tokens, prepare
from .prompt_sets import fill_prompts, load_prompt_set
from .results import SETTINGS, ConceptResult, EvaluationReport, SettingScores, standard_error
from .run_settings import EvalConcept, RunSettings
from .scorer import ClipScorer

__all__ = ["RunProgress", "evaluate_base", "evaluate_concepts"]

# progress(message, done, total): done steps out of total (generation and scoring steps of the whole run).
RunProgress = Callable[[str, int, int], None]
_DEFAULT_SETTINGS = RunSettings()  # frozen: one instance serves every call's default


def evaluate_concepts(
    pipe,
    concepts: Sequence[EvalConcept],
    scorer: ClipScorer,
    out_dir: str | os.PathLike[str],
    *,
    base_name: str,
    settings: RunSettings = _DEFAULT_SETTINGS,
    progress: RunProgress | None = None,
) -> EvaluationReport:
    """Generate and score every concept's prompts on the bare base (with `settings.before`), with the concept
    alone and, with two or more concepts and `settings.composed`, inside the composition of all of them; write
    images, per-image reports, `<out_dir>/evaluation.json` and `<out_dir>/overview.png`.

    `pipe` must be a base pipeline without concepts: each setting loads its files onto it and takes them off
    again, so its UNet is left bit-identical. Trained token embeddings that files bring stay in its tokenizer and
    text encoder (a tokenizer cannot drop a token); a later file with the same token replaces the vector, and a
    file without one is refused rather than prompted through another concept's vector. `base_name` is recorded,
    e.g. `pipeline.base_name(base)`. Raises before generating anything when a file, reference folder or prompt
    set is wrong, or when the concepts' slots overlap (unless `settings.force`).
    """
    out_dir = Path(out_dir)
    present = model_concepts(pipe.unet)
    if present:
        raise ConfigError(
            f"the pipeline already holds concepts ({', '.join(present)}); evaluate on a clean base so each "
            "setting has exactly the concepts it names"
        )
    prepared = prepare(concepts, settings)
    check_leftover_tokens(pipe, prepared)
    composed = settings.composed and len(prepared) > 1
    if composed and not settings.force:  # overlapping slots fail now, not after the other settings' images
        check_slots([item.info for item in prepared])
    before = [BaseItem.of(item) for item in prepared] if settings.before else []
    words = settings.other_words
    before_other = [item.with_words(words) for item in before] if words else []
    if before:
        check_base_tokens(pipe, before + before_other)
    settings_run = ["alone", "composed"] if composed else ["alone"]
    if words:
        settings_run.append("alone_other")
    total = 2 * len(prepared) * len(settings_run) + 2 * (len(before) + len(before_other))
    done = 0

    def step(message: str) -> None:
        nonlocal done
        if progress is not None:
            progress(message, done, total)
        done += 1

    def draw(files, items, setting: str, run: RunSettings) -> dict[str, Any] | None:
        drawn, composition = _generate_and_score(
            pipe, files, items, scorer, out_dir, setting, run, base_name, step
        )
        _record(outcomes, setting, drawn)
        return composition

    outcomes = {item.name: _Outcome() for item in prepared}
    draw([], before, "base", settings)
    draw([], before_other, "base_other", _one_draw(settings))
    for item in prepared:
        files = [(item.spec.file, item.spec.scale)]
        draw(files, [item], "alone", settings)
        if words:
            draw(files, [BaseItem.of(item).with_words(words)], "alone_other", _one_draw(settings))
    composition: dict[str, Any] | None = None
    if composed:
        files = [(item.spec.file, item.spec.scale) for item in prepared]
        composition = draw(files, prepared, "composed", settings)
    for setting in ("composed", "base", "alone"):
        _add_identity(scorer, outcomes, setting, prepared)
    if progress is not None:
        progress("done", total, total)
    results = tuple(
        ConceptResult(
            name=item.info.name,
            token=item.token,
            class_word=item.class_word,
            method=item.info.config.method,
            file=str(item.spec.file),
            references=str(item.spec.references),
            reference_count=len(item.references),
            prompt_set=item.prompt_set,
            prompts=item.prompts,
            **{setting: outcomes[item.name].scores.get(setting) for setting in SETTINGS},
        )
        for item in prepared
    )
    report = EvaluationReport(
        base_model=base_name,
        conventions=scorer.conventions,
        weights=scorer.weights_record(),
        settings=settings,
        concepts=results,
        composition=composition,
        environment=scorer.environment(),
    )
    report.save(out_dir / "evaluation.json")
    with atomic_path(out_dir / "overview.png") as tmp:
        overview(report, out_dir).save(tmp, format="PNG")
    return report


def evaluate_base(
    pipe,
    concepts: Sequence[tuple[Concept, str | os.PathLike[str]]],
    scorer: ClipScorer,
    out_dir: str | os.PathLike[str],
    *,
    base_name: str,
    settings: RunSettings = _DEFAULT_SETTINGS,
    other_words: bool = False,
) -> dict[str, SettingScores]:
    """The before-tuning setting alone, for (concept, reference folder) pairs that have no trained file yet
    (e.g. before a comparison trains them): each concept's prompts with the same seeds on the bare base, scored
    against its references. `evaluate_concepts` runs the same setting itself when `settings.before`. With
    `other_words`, the base_other setting instead: `settings.other_words` in the token's place."""
    if other_words and not settings.other_words:
        raise ConfigError("the base with other words needs settings.other_words")
    out_dir = Path(out_dir)
    present = model_concepts(pipe.unet)
    if present:
        raise ConfigError(
            f"the pipeline holds concepts ({', '.join(present)}); score the base on a clean one"
        )
    templates = load_prompt_set(settings.prompt_set)
    items = []
    for concept, folder in concepts:
        references = tuple(reference_images(folder))
        check_images(references, [str(path) for path in references])
        prompts = tuple(fill_prompts(templates, concept.token, concept.class_word))
        item = BaseItem(
            concept.name, (concept.token,), concept.class_word, settings.prompt_set, prompts, references
        )
        items.append(item.with_words(settings.other_words) if other_words else item)
    check_base_tokens(pipe, items)
    setting, run = ("base_other", _one_draw(settings)) if other_words else ("base", settings)
    drawn, _ = _generate_and_score(pipe, [], items, scorer, out_dir, setting, run, base_name, lambda _: None)
    outcomes = {item.name: _Outcome() for item in items}
    _record(outcomes, setting, drawn)
    if not other_words:
        _add_identity(scorer, outcomes, setting, items)
    return {name: outcome.scores[setting] for name, outcome in outcomes.items()}


# ---------------------------------------------------------------------------------------- one concept's outcome
@dataclass
class _Outcome:
    """One concept's scores and generated images, setting by setting, as the run draws them."""

    scores: dict[str, SettingScores] = dataclasses.field(default_factory=dict)  # setting -> its scores
    images: dict[str, list[Path]] = dataclasses.field(default_factory=dict)  # setting -> the images drawn


class _Drawn(NamedTuple):
    """What one setting drew and scored for one concept."""

    scores: SettingScores
    images: list[Path]


def _record(outcomes: Mapping[str, _Outcome], setting: str, drawn: Mapping[str, _Drawn]) -> None:
    for name, (scores, images) in drawn.items():
        outcomes[name].scores[setting] = scores
        outcomes[name].images[setting] = images


def _add_identity(
    scorer: ClipScorer,
    outcomes: Mapping[str, _Outcome],
    setting: str,
    items: Sequence[Prepared | BaseItem],
) -> None:
    """Fill in each concept's identity among `items` in `setting`; nothing with fewer than two concepts in it."""
    drawn = {name: outcome for name, outcome in outcomes.items() if setting in outcome.scores}
    if len(drawn) < 2:
        return
    images = {name: outcome.images[setting] for name, outcome in drawn.items()}
    shares = identity_shares(scorer, images, {item.name: item.references for item in items})
    for name, outcome in drawn.items():
        outcome.scores[setting] = dataclasses.replace(outcome.scores[setting], identity=shares[name])


def _generate_and_score(
    pipe,
    files: list[tuple[Path, float]],
    items: Sequence[Prepared | BaseItem],
    scorer: ClipScorer,
    out_dir: Path,
    setting: str,
    settings: RunSettings,
    base_name: str,
    step: Callable[[str], None],
) -> tuple[dict[str, _Drawn], dict[str, Any] | None]:
    """Load `files` onto the base (none: the bare base), generate each item's prompts x seeds, take the files off,
    then score. Returns what was drawn per concept and the composition report (slot overlap and interference;
    None without files)."""
    generated: dict[str, list[Path]] = {}
    composition = None
    try:
        if files:
            # The pipeline, not its UNet: a concept's trained token embedding goes into its text encoder.
            composition = compose(pipe, files, fuse=settings.fuse, force=settings.force)
        for item in items:
            step(
                f"{setting}/{item.name}: generate {len(item.prompts)} prompts x {settings.images_per_prompt} seeds"
            )
            record = {"base_model": base_name, "setting": setting, "concept": item.name}
            if composition is None:
                record["concepts"] = {}
            else:
                record |= {"fused": settings.fuse, "concepts": composition.concepts}
            result = generate(
                pipe,
                list(item.prompts),
                settings.seeds,
                out_dir / setting / item.name,
                settings=settings.sampling,
                record=record,
            )
            generated[item.name] = result.images
    finally:
        eject(pipe.unet)  # unmerges and removes every adapter: the base is bit-identical again
    drawn: dict[str, _Drawn] = {}
    for item in items:
        step(f"{setting}/{item.name}: score CLIP-T and CLIP-I")
        scores = _score(
            scorer,
            generated[item.name],
            item.prompts,
            settings,
            {token: item.class_word for token in item.tokens},
            item.references,
            out_dir / setting / item.name,
            out_dir,
        )
        drawn[item.name] = _Drawn(scores, generated[item.name])
    return drawn, None if composition is None else composition.to_dict()


def _one_draw(settings: RunSettings) -> RunSettings:
    """The other-word settings draw each (prompt, word) pair once, at the run's first seed: there the words are
    the draws that matter (see the module's docstring)."""
    return dataclasses.replace(settings, images_per_prompt=1)


def _score(
    scorer: ClipScorer,
    images: Sequence[Path],
    prompts: Sequence[str],
    settings: RunSettings,
    tokens: Mapping[str, str],
    references: Sequence[Path],
    folder: Path,
    out_dir: Path,
) -> SettingScores:
    """CLIP-T and CLIP-I of one concept's images (in `generate`'s prompt-major order); `tokens` maps each word
    standing for the concept to its class word for CLIP-T. The per-image reports land in `folder`."""
    per_image_prompts = [prompt for prompt in prompts for _ in settings.seeds]
    text = scorer.text_alignment(images, per_image_prompts, tokens=tokens)
    image = scorer.image_alignment(images, list(references))
    text.save(folder / "clip_t.json")
    image.save(folder / "clip_i.json")
    context = scorer.context_accuracy(images, text.texts)  # asked with the texts CLIP-T scored
    return SettingScores(
        clip_t=text.mean,
        clip_i=image.mean,
        images=len(images),
        folder=str(folder.relative_to(out_dir)),
        clip_t_sem=standard_error(text.scores),
        clip_i_sem=standard_error(image.scores),
        context=None if context is None else context[0],
    )
