"""Identity: whose references does a concept's image match best? The composition score that can see bleeding.

CLIP-I retention (composed / alone) asks whether a concept's images still look like its references once the
other concepts joined the model. It is blind to bleeding: a composed model that paints a style the concepts share
(an outline, a palette) into every prompt can make each concept's images *closer* to its own references, and
retention then reads the bleeding as a gain. Identity asks the question across concepts instead: for each image
of concept c, score it against every concept's references with the same pooling as CLIP-I, and count a hit when
c's references score highest. The share of hits is c's identity; chance is 1 / (number of concepts). A merge
that keeps the concepts apart keeps identity at its alone value; bleeding pulls it toward chance, and a concept
that takes over the others pulls theirs below it.

Only defined with two or more concepts; the base before tuning has an identity too (its class words alone
already tell a ring from a heart), which is the number the tuned settings are read against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..errors import ConfigError
from .conventions import image_scores
from .scorer import ClipScorer

__all__ = ["identity_hits", "identity_shares"]


def identity_shares(
    scorer: ClipScorer,
    images: Mapping[str, Sequence[Path]],
    references: Mapping[str, Sequence[Path]],
) -> dict[str, float]:
    """For each concept (the keys of `images`, all present in `references`): the share of its images whose
    pooled CLIP-I is highest against its own references among every concept's."""
    return {name: sum(hits) / len(hits) for name, hits in identity_hits(scorer, images, references).items()}


def identity_hits(
    scorer: ClipScorer,
    images: Mapping[str, Sequence[Path]],
    references: Mapping[str, Sequence[Path]],
) -> dict[str, list[bool]]:
    """For each concept: per image, whether its pooled CLIP-I is highest against its own references."""
    names = list(images)
    if len(names) < 2:
        raise ConfigError(f"identity needs two or more concepts to tell apart, got {len(names)}")
    missing = [name for name in names if name not in references]
    if missing:
        raise ConfigError(f"identity: no references for {', '.join(missing)}")
    reference = [
        scorer.embed_images(list(references[name]), stage="references") for name in names
    ]  # K x [R, D]
    hits = {}
    for own, name in enumerate(names):
        generated = scorer.embed_images(list(images[name])).double()  # [G, D]
        per_concept = torch.stack(
            [image_scores(generated @ refs.double().T, scorer.conventions)[1] for refs in reference], dim=1
        )  # [G, K]: each image's CLIP-I against each concept's references
        hits[name] = (per_concept.argmax(dim=1) == own).tolist()
    return hits
