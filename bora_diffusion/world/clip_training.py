"""Contrastive training of the world CLIP: batches of world scenes, one-attribute hard negatives, the loss.

Plain CLIP training on random batches learns "which shapes and colors are present" and little else, because two
random captions almost never differ in one attribute only. So every image also meets `hard_negatives` captions
of its own scene with one attribute changed (distractors.py), appended to the text side of the image-to-text
loss: the model is paid only for seeing which object has which color, which is above, what the background is.

Images are augmented toward what a small diffusion model produces: some drawn at 32 px and upsampled, some
blurred, all with a little noise; captions stay exact.

Partial captions (`partial_captions`): a concept prompt puts the token where a color would be ("a large zorp
star on a green background"), and CLIP-T scores it with the token turned into its class word: "a large star on
a green background", a caption with no color, which a model trained only on complete captions never read. So a
share of the true captions drop the color of one object or of all of them; the caption still has to beat every
hard negative, all of which say something false.

Identity views (`identity_pairs`, `identity_weight`): image alignment (CLIP-I) asks whether two pictures show
the same object, but captions spend as many words on the background as on the objects, so caption training
alone makes two pictures of one object on different backgrounds look unrelated. The first `identity_pairs`
scenes of a batch are drawn a second time with the same objects on another background, moved and turned a
little, and an image-to-image InfoNCE term (SimCLR's, Chen et al. 2020) pulls the two views together against
the other pairs: the embedding learns what stays when the background changes. `novel_pairs` more pairs per
batch show random multi-colored objects (`random_objects.py`), two views each, in the same term: world
objects are one flat color each, and without these the embedding cannot tell patterned objects apart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from .clip import CompactVocabulary, image_tensor, tokenizer
from .distractors import distractors
from .random_objects import random_object_views
from .scenes import Scene, sample_background, sample_scene
from .vocabulary import WORDS

__all__ = [
    "Batch",
    "TrainSettings",
    "clip_loss",
    "colorless_caption",
    "encode_text",
    "learning_rate",
    "make_batch",
    "optimizer",
    "second_view",
    "tokenize_captions",
    "training_vocabulary",
]


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the trained weights (with the seed)."""

    steps: int = 1500
    batch_size: int = 128
    hard_negatives: int = 2
    # How much more often shape and layout are the changed attribute of a hard negative: random batches already
    # separate colors and backgrounds, so these two are what hard negatives must teach.
    hard_weight: float = 1.0
    learning_rate: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    low_res: float = 0.25  # share of images drawn at 32 px and upsampled
    blur: float = 0.25  # share of images blurred
    noise: float = 4.0  # std of added pixel noise, 0..255 scale
    # Share of captions that leave the objects' colors unsaid (see the module doc).
    partial_captions: float = 0.0
    identity_pairs: int = 0  # scenes per batch also drawn as a second view (see the module doc)
    identity_weight: float = 0.0  # weight of the image-to-image term in the loss
    novel_pairs: int = 0  # random multi-colored objects per batch, two views each, in the identity term


@dataclass(frozen=True)
class Batch:
    # [B + P + 2Q, 3, H, W]: the B captioned scenes, P second views of the first P, then Q random objects' first
    # views and their Q second views
    images: torch.Tensor
    tokens: (
        torch.Tensor
    )  # [B * (1 + K), L]: the B true captions, then K hard negatives per image, compact ids
    pairs: int = 0  # P
    novel_pairs: int = 0  # Q


def training_vocabulary() -> CompactVocabulary:
    """Every token a world caption can hold (each word alone covers it: the BPE splits at spaces)."""
    return CompactVocabulary.from_texts(sorted(WORDS))


@lru_cache(maxsize=1)
def _word_tokens() -> dict[str, list[int]]:
    """Each world word's BPE ids (without start and end tokens)."""
    tokens = tokenizer()(sorted(WORDS))  # [words, context]: SOT, the word's pieces, EOT, padding
    out = {}
    for word, row in zip(sorted(WORDS), tokens.tolist(), strict=True):
        end = row.index(row[0] + 1)  # the end-of-text id follows the start-of-text id in CLIP's vocabulary
        out[word] = row[1:end]
    return out


def tokenize_captions(captions: Sequence[str]) -> torch.Tensor:
    """World captions -> full-vocabulary ids [N, L] cut to the longest: what the CLIP tokenizer gives for them
    (lower-case words split at spaces, each word's pieces looked up once), much faster than running it."""
    start, end = tokenizer().sot_token_id, tokenizer().eot_token_id
    pieces = _word_tokens()
    rows = [
        [start, *(piece for word in caption.split() for piece in pieces[word]), end] for caption in captions
    ]
    out = torch.zeros(len(rows), max(len(row) for row in rows), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def _augment(
    image: Image.Image, scene_render, rng: np.random.Generator, settings: TrainSettings
) -> np.ndarray:
    if rng.random() < settings.low_res:
        image = scene_render(32).resize(image.size, Image.BICUBIC)
    if rng.random() < settings.blur:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.0))))
    pixels = np.asarray(image, dtype=np.float32)
    if settings.noise > 0:
        pixels = pixels + settings.noise * rng.standard_normal(pixels.shape, dtype=np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_batch(rng: np.random.Generator, settings: TrainSettings, vocabulary: CompactVocabulary) -> Batch:
    """One training batch drawn from `rng` alone."""
    scenes = [sample_scene(rng) for _ in range(settings.batch_size)]
    images = [Image.fromarray(_augment(scene.render(), scene.render, rng, settings)) for scene in scenes]
    captions = [
        colorless_caption(scene, rng) if rng.random() < settings.partial_captions else scene.caption()
        for scene in scenes
    ]
    weights = (
        None
        if settings.hard_weight == 1.0
        else {"shape": settings.hard_weight, "layout": settings.hard_weight}
    )
    negatives = [
        text for scene in scenes for text in distractors(scene, rng, settings.hard_negatives, weights)
    ]
    tokens = tokenize_captions(captions + negatives)  # [B * (1 + K), L]
    for scene in scenes[: settings.identity_pairs]:
        view = second_view(scene, rng)
        images.append(Image.fromarray(_augment(view.render(), view.render, rng, settings)))
    views = [random_object_views(rng) for _ in range(settings.novel_pairs)]
    for which in (0, 1):
        images += [
            Image.fromarray(_augment(pair[which], _resized(pair[which]), rng, settings)) for pair in views
        ]
    return Batch(
        images=image_tensor(images),
        tokens=vocabulary.encode(tokens),
        pairs=settings.identity_pairs,
        novel_pairs=settings.novel_pairs,
    )


def _resized(image: Image.Image):
    """A `Scene.render`-like callable for an image that exists only at its own size (the low-res view)."""
    return lambda size: image.resize((size, size), Image.BICUBIC)


def colorless_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The scene's caption without the color of one of its objects, or (one time in three) of all of them."""
    caption = scene.caption()
    things = (
        list(scene.things) if rng.random() < 1 / 3 else [scene.things[int(rng.integers(len(scene.things)))]]
    )
    for thing in things:
        caption = caption.replace(thing.phrase(), f"{thing.size} {thing.shape}", 1)
    return caption


def second_view(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same objects on another background, shifted together by up to 0.08 of the side, each turned by up to
    15 degrees and scaled by 0.85-1.15: what a second photo of the same things would change."""
    dx, dy = (float(v) for v in rng.uniform(-0.08, 0.08, size=2))
    things = tuple(
        dataclasses.replace(
            thing,
            x=thing.x + dx,
            y=thing.y + dy,
            angle=thing.angle + float(rng.uniform(-15, 15)),
            extent=thing.extent * float(rng.uniform(0.85, 1.15)),
        )
        for thing in scene.things
    )
    colors = frozenset(thing.color for thing in things) | {scene.background.color}
    return dataclasses.replace(scene, things=things, background=sample_background(rng, avoid=colors))


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `CLIP.encode_text` on tokens cut to their longest caption ([N, L], L <= context).

    Exact, not an approximation: the causal mask means no position sees a later one, and the features are
    read at the end-of-text token, so the padding after it never mattered. It only costs compute.
    """
    length = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]  # [N, L, width]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)  # [N, L, width]
    pooled = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # [N, width]: at the end-of-text token
    return pooled @ model.text_projection  # [N, embed]


def clip_loss(
    model: torch.nn.Module, batch: Batch, identity_weight: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, image-to-caption accuracy among all candidates): symmetric InfoNCE, with the hard negatives as
    extra candidates for the images, plus `identity_weight` x the identity views' image-to-image InfoNCE."""
    features = F.normalize(model.encode_image(batch.images), dim=-1)  # [B + P + 2Q, D]
    pairs, novel = batch.pairs, batch.novel_pairs
    count = features.shape[0] - pairs - 2 * novel
    image = features[:count]  # [B, D]
    text = F.normalize(encode_text(model, batch.tokens), dim=-1)  # [B * (1 + K), D]
    scale = model.logit_scale.exp().clamp(max=100.0)
    logits = scale * image @ text.T  # [B, B * (1 + K)]: every image against every caption
    target = torch.arange(count)
    loss_image = F.cross_entropy(logits, target)
    loss_text = F.cross_entropy(logits[:, :count].T, target)  # [B, B]: true captions against images
    accuracy = (logits.argmax(1) == target).float().mean()
    loss = (loss_image + loss_text) / 2
    if pairs + novel and identity_weight > 0:
        tail = features[count + pairs :]  # [2Q, D]: the random objects' first views, then their second views
        first = torch.cat([features[:pairs], tail[:novel]])  # [P + Q, D]
        second = torch.cat([features[count : count + pairs], tail[novel:]])  # [P + Q, D]
        views = scale * first @ second.T  # [P + Q, P + Q]: first views x second views
        pair_target = torch.arange(pairs + novel)
        identity = (F.cross_entropy(views, pair_target) + F.cross_entropy(views.T, pair_target)) / 2
        loss = loss + identity_weight * identity
    return loss, accuracy


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < settings.warmup:
        return settings.learning_rate * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms, biases, embeddings or the logit scale)."""
    decay, keep = [], []
    for name, parameter in model.named_parameters():
        matrix = parameter.ndim >= 2 and "embedding" not in name and "class_embedding" not in name
        (decay if matrix else keep).append(parameter)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.98), eps=1e-6)
