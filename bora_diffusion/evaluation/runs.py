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
in the world's grammar each setting also gets **context** accuracy (`context.py`): the share of the prompts'
background and companion attributes CLIP reads right, the concept's words left out of the question.

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
import json
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..atomic import atomic_path, write_text
from ..concept import Concept
from ..embeddings import added_tokens
from ..errors import ConfigError
from ..formats import AdapterFile, read_adapter
from ..generate import SamplingSettings, generate
from ..inject import concepts as model_concepts
from ..inject import eject
from ..merge import check_slots, compose
from .context import context_accuracy
from .conventions import Conventions
from .errors import EvaluationError
from .identity import identity_shares
from .images import check_images, reference_images
from .prompt_sets import fill_prompts, fill_with_words, load_prompt_set
from .report import check_version
from .scorer import ClipScorer

__all__ = [
    "RETENTION_MIN_SEMS",
    "SETTINGS",
    "ConceptFileError",
    "ConceptResult",
    "EvalConcept",
    "EvaluationReport",
    "RunProgress",
    "RunSettings",
    "SettingScores",
    "evaluate_base",
    "evaluate_concepts",
    "format_ratio",
    "overview",
    "standard_error",
]

REPORT_VERSION = 1
# "base": no adapter (before tuning); "alone": the concept's file is the only adapter on the base; "composed":
# every concept of the run is on it; "base_other" and "alone_other": base and alone with other words in the
# token's place.
SETTINGS = ("base", "alone", "composed", "base_other", "alone_other")
# Made-up words whose images say how much of a concept other words pick up (every prompt with every word): each
# splits into pieces no world caption holds, as the concepts' own tokens do, and none is a shipped token.
OTHER_WORDS = ("qorb", "vlok", "kesh", "trev", "wunk", "plim", "brol", "dazm")
# Retention is reported only when the alone mean is at least this many standard errors above zero (z >= 2: a
# mean that large arises by chance about 2% of the time when the true mean is zero).
RETENTION_MIN_SEMS = 2.0
# progress(message, done, total): done steps out of total (generation and scoring steps of the whole run).
RunProgress = Callable[[str, int, int], None]


class ConceptFileError(EvaluationError):
    """An adapter file cannot be evaluated as given (no token or class word, a duplicate name or token)."""


@dataclass(frozen=True)
class EvalConcept:
    """One concept to evaluate: its trained adapter file and the folder of its reference images.

    The token and class word come from the file's metadata (training records them). `prompt_set` overrides the
    run's set for this concept (e.g. "quick-live" for a dog next to an object); `scale` is its weight when
    composed and alone.
    """

    file: Path
    references: Path
    prompt_set: str | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", Path(self.file))
        object.__setattr__(self, "references", Path(self.references))
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, int | float)
            or not math.isfinite(self.scale)
        ):
            raise ConfigError(f"{self.file}: scale must be a finite number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))


@dataclass(frozen=True)
class RunSettings:
    """How images are drawn: the prompt set, N images per prompt with seeds `seed .. seed + N - 1`, the sampler
    settings, whether the base before tuning is scored too (`before`), and whether the composed setting runs
    (with 2+ concepts) fused into the weights or live. `force` composes concepts whose slots overlap (trained on
    separate ledgers) instead of refusing them. `other_words` are drawn in the token's place, every prompt with
    every word at the first seed, to measure drift (the base_other and alone_other settings); empty skips
    both."""

    prompt_set: str = "quick-object"
    images_per_prompt: int = 4
    seed: int = 0
    sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    before: bool = True
    composed: bool = True
    fuse: bool = True
    force: bool = False
    other_words: tuple[str, ...] = OTHER_WORDS

    def __post_init__(self) -> None:
        if isinstance(self.other_words, str):  # tuple("qorb") would be four one-letter words
            raise ConfigError(f"other_words must be a sequence of words, e.g. ({self.other_words!r},)")
        object.__setattr__(self, "other_words", tuple(self.other_words))
        for word in self.other_words:
            if not (isinstance(word, str) and word.isascii() and word.isalpha()):
                raise ConfigError(f"other words must be single words of ASCII letters, got {word!r}")
        load_prompt_set(self.prompt_set)  # an unknown name fails here, with the known ones listed
        if isinstance(self.images_per_prompt, bool) or not isinstance(self.images_per_prompt, int):
            raise ConfigError(f"images_per_prompt must be an integer, got {self.images_per_prompt!r}")
        if self.images_per_prompt < 1:
            raise ConfigError(f"images_per_prompt must be >= 1, got {self.images_per_prompt}")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.images_per_prompt))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["seeds"] = self.seeds
        data["other_words"] = list(self.other_words)  # as JSON reads it back
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSettings:
        values = {key: value for key, value in data.items() if key != "seeds"}
        values["sampling"] = SamplingSettings(**values.get("sampling", {}))
        values.setdefault("other_words", ())  # reports from before the other words had none
        return cls(**values)


@dataclass(frozen=True)
class SettingScores:
    """One concept's means in one setting, their standard errors, and where its images and per-image reports are
    (relative paths).

    `clip_t_sem` / `clip_i_sem` are the standard errors of the means over the generated images (sample standard
    deviation of the per-image scores / sqrt(images)); None with a single image. Images are the random draws of
    an evaluation, so this is the spread another set of seeds would show; it says when two methods tie.
    `identity` is the share of the images that match this concept's references best among every concept's of
    the run (`identity.identity_shares`); None in a run of one concept. `context` is the share of the prompts'
    background and companion attributes CLIP reads right in the images (`context.context_accuracy`); None when
    the prompts are not in the world's grammar.
    """

    clip_t: float
    clip_i: float
    images: int
    folder: str
    clip_t_sem: float | None = None
    clip_i_sem: float | None = None
    identity: float | None = None
    context: float | None = None


@dataclass(frozen=True)
class ConceptResult:
    """One concept: who it is, what it was prompted with, and its scores before tuning, alone and composed (the
    first and last optional), and with other words in its token's place (optional)."""

    name: str
    token: str
    class_word: str
    method: str
    file: str
    references: str
    reference_count: int
    prompt_set: str
    prompts: tuple[str, ...]
    alone: SettingScores
    composed: SettingScores | None = None
    base: SettingScores | None = None
    base_other: SettingScores | None = None
    alone_other: SettingScores | None = None

    def gain(self, metric: str) -> float | None:
        """alone - base for "clip_t" or "clip_i": what tuning changed; None without a base setting."""
        if metric not in ("clip_t", "clip_i"):
            raise ConfigError(f"metric must be 'clip_t' or 'clip_i', got {metric!r}")
        return None if self.base is None else getattr(self.alone, metric) - getattr(self.base, metric)

    def drift(self, metric: str) -> float | None:
        """alone_other - base_other for "clip_t" or "clip_i": what tuning changed in the images of other words in
        the token's place (language drift: near 0 when the concept is bound to its token); None without both."""
        if metric not in ("clip_t", "clip_i"):
            raise ConfigError(f"metric must be 'clip_t' or 'clip_i', got {metric!r}")
        if self.base_other is None or self.alone_other is None:
            return None
        return getattr(self.alone_other, metric) - getattr(self.base_other, metric)

    def drift_sem(self, metric: str) -> float | None:
        """The standard error of `drift(metric)` as if its two means were independent (the square root of the sum
        of their squared standard errors): an upper bound, since both settings draw the same prompts, words and
        seed; None where a standard error is missing."""
        if self.drift(metric) is None:
            return None
        sems = (getattr(self.alone_other, f"{metric}_sem"), getattr(self.base_other, f"{metric}_sem"))
        return None if None in sems else math.hypot(*sems)

    def retention(self, metric: str) -> float | None:
        """composed / alone for "clip_t" or "clip_i"; None without a composed setting or when the alone mean is
        not clearly above zero (`RETENTION_MIN_SEMS` standard errors; > 0 when a single image leaves no standard
        error), since the ratio would not mean "share kept"."""
        if metric not in ("clip_t", "clip_i"):
            raise ConfigError(f"metric must be 'clip_t' or 'clip_i', got {metric!r}")
        if self.composed is None:
            return None
        alone = getattr(self.alone, metric)
        sem = getattr(self.alone, f"{metric}_sem") or 0.0  # no standard error: only the sign rule remains
        if alone <= RETENTION_MIN_SEMS * sem:
            return None
        return getattr(self.composed, metric) / alone

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["prompts"] = list(self.prompts)
        data["retention"] = {"clip_t": self.retention("clip_t"), "clip_i": self.retention("clip_i")}
        data["gain"] = {"clip_t": self.gain("clip_t"), "clip_i": self.gain("clip_i")}
        data["drift"] = {"clip_t": self.drift("clip_t"), "clip_i": self.drift("clip_i")}
        data["drift_sem"] = {"clip_t": self.drift_sem("clip_t"), "clip_i": self.drift_sem("clip_i")}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptResult:
        derived = ("retention", "gain", "drift", "drift_sem")
        values = {key: value for key, value in data.items() if key not in derived}
        values["prompts"] = tuple(values["prompts"])
        values["alone"] = SettingScores(**values["alone"])
        for setting in ("composed", "base", "base_other", "alone_other"):
            values[setting] = SettingScores(**values[setting]) if values.get(setting) else None
        return cls(**values)


@dataclass(frozen=True)
class EvaluationReport:
    """The outcome of `evaluate_concepts`: per concept its means alone and composed and its retention, with the
    conventions, weights, sampling settings and base model that produced them."""

    base_model: str
    conventions: Conventions
    weights: Mapping[str, Any]
    settings: RunSettings
    concepts: tuple[ConceptResult, ...]
    composition: Mapping[str, Any] | None = None
    environment: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def concept(self, name: str) -> ConceptResult:
        for result in self.concepts:
            if result.name == name:
                return result
        raise ConfigError(f"no concept {name!r} in this report; it has {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(result.name for result in self.concepts)

    def summary(self) -> str:
        """One line: each concept's CLIP-T / CLIP-I alone (and composed, with retention), then the conventions."""
        parts = []
        for r in self.concepts:
            text = f"{r.name}: T {r.alone.clip_t:.4f} I {r.alone.clip_i:.4f}{_identity_and_context(r.alone)}"
            if r.base is not None:
                text += f" (base T {r.base.clip_t:.4f} I {r.base.clip_i:.4f})"
            if r.drift("clip_i") is not None:
                text += f" drift I {r.drift('clip_i'):+.4f}"
            if r.composed is not None:
                kept_t, kept_i = format_ratio(r.retention("clip_t")), format_ratio(r.retention("clip_i"))
                text += (
                    f" | composed T {r.composed.clip_t:.4f} I {r.composed.clip_i:.4f}"
                    f"{_identity_and_context(r.composed)} (retention T {kept_t} I {kept_i})"
                )
            parts.append(text)
        c = self.conventions
        images = len(self.concepts[0].prompts) * self.settings.images_per_prompt if self.concepts else 0
        return (
            f"{'; '.join(parts)} | {images} images per concept and setting | {c.backbone} "
            f"{c.weights or 'random init'}, {c.preset_name or 'custom'} conventions"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_version": REPORT_VERSION,
            "summary": self.summary(),
            "base_model": self.base_model,
            "conventions": self.conventions.to_dict(),
            "weights": dict(self.weights),
            "settings": self.settings.to_dict(),
            "retention_rule": "composed mean / alone mean, same prompts and seeds; null unless the alone mean is "
            f"> 0 and > {RETENTION_MIN_SEMS:g} standard errors",
            "gain_rule": "alone mean - base mean (no adapter), same prompts and seeds",
            "drift_rule": "the gain again with the settings' other_words in the token's place, every prompt with "
            "every word at the first seed (alone_other - base_other): what other words pick up of the concept; "
            "null without other words",
            "identity_rule": "share of a concept's images whose CLIP-I is highest against its own references "
            "among every concept's of the run; null with one concept",
            "context_rule": "share of right picks when CLIP chooses each image's background color and texture and "
            "companion color and shape among the prompt's one-word variants (chance 1/8, 1/4); null for prompts "
            "outside the world's grammar",
            "concepts": [result.to_dict() for result in self.concepts],
            "composition": dict(self.composition) if self.composition is not None else None,
            "environment": dict(self.environment),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON report atomically and return its path."""
        write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        return Path(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationReport:
        check_version(data, "report_version", REPORT_VERSION, "evaluation report")
        return cls(
            base_model=data["base_model"],
            conventions=Conventions.from_dict(data["conventions"]),
            weights=dict(data["weights"]),
            settings=RunSettings.from_dict(data["settings"]),
            concepts=tuple(ConceptResult.from_dict(entry) for entry in data["concepts"]),
            composition=data.get("composition"),
            environment=dict(data.get("environment", {})),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvaluationReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def standard_error(scores: Sequence[float]) -> float | None:
    """Standard error of the mean of per-image scores: sample standard deviation / sqrt(n); None for n < 2."""
    if len(scores) < 2:
        return None
    return statistics.stdev(scores) / math.sqrt(len(scores))


def _identity_and_context(scores: SettingScores) -> str:
    """ " identity 0.67 context 0.92", each part only where it is defined."""
    text = "" if scores.identity is None else f" identity {scores.identity:.2f}"
    return text if scores.context is None else f"{text} context {scores.context:.2f}"


def format_ratio(value: float | None) -> str:
    """A retention for people: "0.953", or "n/a" where it is null."""
    return "n/a" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class _Prepared:
    """A concept checked and ready: its file read, its prompts filled, its references listed."""

    spec: EvalConcept
    info: AdapterFile
    prompt_set: str
    prompts: tuple[str, ...]
    references: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def token(self) -> str:
        return self.info.token or ""

    @property
    def tokens(self) -> tuple[str, ...]:
        return (self.token,)

    @property
    def class_word(self) -> str:
        return self.info.class_word or ""


def _prepare(concepts: Sequence[EvalConcept], settings: RunSettings) -> list[_Prepared]:
    """Read every file, prompt set and reference folder before any image is drawn, so a mistake in the last
    concept fails in a second, not after the first concept's generation."""
    if not concepts:
        raise ConfigError("evaluate needs at least one concept file")
    prepared: list[_Prepared] = []
    names: dict[str, Path] = {}
    tokens: dict[str, Path] = {}
    for spec in concepts:
        info = read_adapter(spec.file)
        if not info.token or not info.class_word:
            missing = "token" if not info.token else "class word"
            raise ConceptFileError(
                f"{spec.file}: the file records no {missing}, so its prompts cannot be written; train it from a "
                "concept folder, or import it with `bora-diffusion import --token ... --class-word ...`"
            )
        if info.name in names:
            raise ConceptFileError(
                f"{spec.file}: concept name {info.name!r} is also the name of {names[info.name]}; evaluate "
                "each concept once"
            )
        if info.token.lower() in tokens:
            raise ConceptFileError(
                f"{spec.file}: token {info.token!r} is also the token of {tokens[info.token.lower()]}; two "
                "concepts with one token cannot be told apart in prompts"
            )
        if info.token.lower() in {word.lower() for word in settings.other_words}:
            raise ConceptFileError(
                f"{spec.file}: token {info.token!r} is also one of the run's other words (drawn in the token's "
                "place to measure drift); leave it out of the other words"
            )
        names[info.name], tokens[info.token.lower()] = spec.file, spec.file
        references = tuple(reference_images(spec.references))
        check_images(references, [str(path) for path in references])
        prompt_set = spec.prompt_set or settings.prompt_set
        prompts = tuple(fill_prompts(load_prompt_set(prompt_set), info.token, info.class_word))
        prepared.append(_Prepared(spec, info, prompt_set, prompts, references))
    return prepared


def _added_tokens(pipe) -> set[str]:
    """The tokens earlier concepts added to this pipeline's tokenizer (lower case)."""
    return {token.lower() for token in added_tokens(pipe.tokenizer)}


def _check_leftover_tokens(pipe, prepared: Sequence[_Prepared]) -> None:
    """A token an earlier concept added to this pipeline's tokenizer keeps its trained embedding; a file without
    one would then be prompted through the other concept's vector. Refuse that instead of scoring it."""
    added = _added_tokens(pipe)
    for item in prepared:
        if item.info.token_embedding is None and item.token.lower() in added:
            raise ConfigError(
                f"{item.spec.file}: this pipeline's tokenizer already holds token {item.token!r} with an embedding "
                "added by an earlier concept, and this file has none of its own; evaluate on a freshly loaded base"
            )


def evaluate_concepts(
    pipe,
    concepts: Sequence[EvalConcept],
    scorer: ClipScorer,
    out_dir: str | os.PathLike[str],
    *,
    base_name: str,
    settings: RunSettings = RunSettings(),
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
    prepared = _prepare(concepts, settings)
    _check_leftover_tokens(pipe, prepared)
    composed = settings.composed and len(prepared) > 1
    if composed and not settings.force:  # overlapping slots fail now, not after the other settings' images
        check_slots([item.info for item in prepared])
    before = [_BaseItem.of(item) for item in prepared] if settings.before else []
    words = settings.other_words
    before_other = [item.with_words(words) for item in before] if words else []
    if before:
        _check_base_tokens(pipe, before + before_other)
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

    base, _, base_images = _generate_and_score(
        pipe, [], before, scorer, out_dir, "base", settings, base_name, step
    )
    base_other, _, _ = _generate_and_score(
        pipe, [], before_other, scorer, out_dir, "base_other", _one_draw(settings), base_name, step
    )
    alone: dict[str, SettingScores] = {}
    alone_other: dict[str, SettingScores] = {}
    alone_images: dict[str, list[Path]] = {}
    for item in prepared:
        files = [(item.spec.file, item.spec.scale)]
        scores, _, images = _generate_and_score(
            pipe, files, [item], scorer, out_dir, "alone", settings, base_name, step
        )
        alone |= scores
        alone_images |= images
        if words:
            other = [_BaseItem.of(item).with_words(words)]
            scores, _, _ = _generate_and_score(
                pipe, files, other, scorer, out_dir, "alone_other", _one_draw(settings), base_name, step
            )
            alone_other |= scores
    together: dict[str, SettingScores] = {}
    composition: dict[str, Any] | None = None
    if composed:
        files = [(item.spec.file, item.spec.scale) for item in prepared]
        together, composition, together_images = _generate_and_score(
            pipe, files, prepared, scorer, out_dir, "composed", settings, base_name, step
        )
        together = _with_identity(scorer, together, together_images, prepared)
    base = _with_identity(scorer, base, base_images, prepared)
    alone = _with_identity(scorer, alone, alone_images, prepared)
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
            alone=alone[item.info.name],
            composed=together.get(item.info.name),
            base=base.get(item.info.name),
            base_other=base_other.get(item.info.name),
            alone_other=alone_other.get(item.info.name),
        )
        for item in prepared
    )
    report = EvaluationReport(
        base_model=base_name,
        conventions=scorer.conventions,
        weights=scorer._weights_record(),
        settings=settings,
        concepts=results,
        composition=composition,
        environment=scorer._environment(),
    )
    report.save(out_dir / "evaluation.json")
    with atomic_path(out_dir / "overview.png") as tmp:
        overview(report, out_dir).save(tmp, format="PNG")
    return report


def overview(report: EvaluationReport, out_dir: str | os.PathLike[str]) -> Image.Image:
    """Before and after at a glance: per concept a row of its references, then one row per setting (base,
    alone, composed, and base and alone with other words) with each prompt's first-seed image (the other-word
    rows: the first prompt with one word after another), labelled with the setting's CLIP-T / CLIP-I. Tiles are
    drawn at least 128 px (nearest-neighbour, so small models' pixels stay visible)."""
    out_dir = Path(out_dir)
    seed = report.settings.seed
    rows: list[tuple[str, list[Path]]] = []
    for concept in report.concepts:
        references = reference_images(concept.references)[: len(concept.prompts)]
        rows.append((f"{concept.name}: references", references))
        for setting in SETTINGS:
            scores = getattr(concept, setting)
            if scores is None:
                continue
            folder = out_dir / scores.folder
            name = setting.replace("_other", ", other words")
            label = f"{name}: T {scores.clip_t:.3f} I {scores.clip_i:.3f}"
            rows.append((label, [folder / f"p{p:02d}-s{seed}.png" for p in range(len(concept.prompts))]))
    first = Image.open(rows[1][1][0])
    tile = max(128, first.width)
    label_h, columns = 16, max(len(paths) for _, paths in rows)
    sheet = Image.new("RGB", (columns * tile, len(rows) * (tile + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, paths) in enumerate(rows):
        top = r * (tile + label_h)
        draw.text((2, top + 2), label, fill="black")
        for c, path in enumerate(paths):
            image = Image.open(path).convert("RGB").resize((tile, tile), Image.NEAREST)
            sheet.paste(image, (c * tile, top + label_h))
    return sheet


def _generate_and_score(
    pipe,
    files: list[tuple[Path, float]],
    items: Sequence[_Prepared | _BaseItem],
    scorer: ClipScorer,
    out_dir: Path,
    setting: str,
    settings: RunSettings,
    base_name: str,
    step: Callable[[str], None],
) -> tuple[dict[str, SettingScores], dict[str, Any] | None, dict[str, list[Path]]]:
    """Load `files` onto the base (none: the bare base), generate each item's prompts x seeds, take the files off,
    then score. Returns the scores per concept, the composition report (slot overlap and interference; None
    without files) and the generated images per concept."""
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
    scores: dict[str, SettingScores] = {}
    for item in items:
        step(f"{setting}/{item.name}: score CLIP-T and CLIP-I")
        scores[item.name] = _score(
            scorer,
            generated[item.name],
            item.prompts,
            settings,
            {token: item.class_word for token in item.tokens},
            item.references,
            out_dir / setting / item.name,
            out_dir,
        )
    return scores, None if composition is None else composition.to_dict(), generated


def _with_identity(
    scorer: ClipScorer,
    scores: dict[str, SettingScores],
    images: Mapping[str, Sequence[Path]],
    items: Sequence[_Prepared | _BaseItem],
) -> dict[str, SettingScores]:
    """`scores` with each concept's identity among `items` filled in; unchanged with fewer than two concepts."""
    if len(scores) < 2:
        return scores
    shares = identity_shares(scorer, images, {item.name: item.references for item in items})
    return {name: dataclasses.replace(value, identity=shares[name]) for name, value in scores.items()}


@dataclass(frozen=True)
class _BaseItem:
    """What the before-tuning setting needs of a concept: its prompts and references, no adapter file."""

    name: str
    tokens: tuple[str, ...]  # the words its prompts hold in the token's place: its token, or other words
    class_word: str
    prompt_set: str
    prompts: tuple[str, ...]
    references: tuple[Path, ...]

    @classmethod
    def of(cls, item: _Prepared) -> _BaseItem:
        return cls(item.name, item.tokens, item.class_word, item.prompt_set, item.prompts, item.references)

    def with_words(self, words: Sequence[str]) -> _BaseItem:
        """The same concept prompted with other words in its token's place: every prompt with every word."""
        prompts = fill_with_words(load_prompt_set(self.prompt_set), words, self.class_word)
        return dataclasses.replace(self, tokens=tuple(words), prompts=tuple(prompts))


def _one_draw(settings: RunSettings) -> RunSettings:
    """The other-word settings draw each (prompt, word) pair once, at the run's first seed: there the words are
    the draws that matter (see the module's docstring)."""
    return dataclasses.replace(settings, images_per_prompt=1)


def _check_base_tokens(pipe, items: Sequence[_BaseItem]) -> None:
    """The base must read a concept's token as the base tokenizer does; a token an earlier concept added to this
    pipeline would be read through that concept's trained vector instead."""
    added = _added_tokens(pipe)
    for item in items:
        for token in item.tokens:
            if token.lower() in added:
                raise ConfigError(
                    f"this pipeline's tokenizer already holds token {token!r}, added by an earlier concept, so "
                    "its images before tuning would use that concept's embedding; score the base on a freshly "
                    "loaded pipeline, or turn the before-tuning setting off"
                )


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
    context = context_accuracy(scorer, images, text.texts)  # asked with the texts CLIP-T scored
    return SettingScores(
        clip_t=text.mean,
        clip_i=image.mean,
        images=len(images),
        folder=str(folder.relative_to(out_dir)),
        clip_t_sem=standard_error(text.scores),
        clip_i_sem=standard_error(image.scores),
        context=None if context is None else context[0],
    )


def evaluate_base(
    pipe,
    concepts: Sequence[tuple[Concept, str | os.PathLike[str]]],
    scorer: ClipScorer,
    out_dir: str | os.PathLike[str],
    *,
    base_name: str,
    settings: RunSettings = RunSettings(),
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
        item = _BaseItem(
            concept.name, (concept.token,), concept.class_word, settings.prompt_set, prompts, references
        )
        items.append(item.with_words(settings.other_words) if other_words else item)
    _check_base_tokens(pipe, items)
    setting, run = ("base_other", _one_draw(settings)) if other_words else ("base", settings)
    scores, _, images = _generate_and_score(
        pipe, [], items, scorer, out_dir, setting, run, base_name, lambda _: None
    )
    return scores if other_words else _with_identity(scorer, scores, images, items)
