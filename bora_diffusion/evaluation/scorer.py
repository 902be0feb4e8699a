"""The CLIP scorer: text alignment (CLIP-T) and image alignment (CLIP-I) under stated conventions.

CLIP-T scores each generated image against the prompt it was generated with (token rule and prefix applied, see
`conventions.py`): cos(E_img(x_i), E_txt(t_i)). CLIP-I scores the generated images against the concept's reference
images: the G x R cosine matrix cos(E_img(x_i), E_img(r_j)), pooled by the pairing rule; DreamBooth (Ruiz et al.,
CVPR 2023, arXiv 2208.12242) defines it as the average over all pairs. The model runs in fp32 and embeddings are
L2-normalized fp32 vectors; cosines and means are taken in float64. (The Custom Diffusion and Mix-of-Show scripts
cast images to fp16 on CUDA, which moves their numbers slightly; reports record the precision.)

Images are checked (mode, readability) before the model runs, then embedded in batches on the GPU when there is
one. An image file is embedded once per scorer: its embedding is kept under (path, inode, modification time,
size), so an evaluation that reads each generated image for CLIP-T, CLIP-I and identity, and each reference
folder in every setting, runs the model once per file; a file rewritten in between is embedded again. Progress
flows through an optional callback `progress(stage, done, total)`; the scorer never prints.

What the scorer knows beyond open_clip comes in as class attributes, so a package adds its pieces by
subclassing: `packaged_backbones` (CLIPs that ship inside a package, `backbone.PackagedBackbone`) and
`context_grammar` (what prompts ask about their context, `context.ContextGrammar`). This one has neither; the
world's scorer, `bora_diffusion.world.scoring.WorldScorer`, has the world CLIP and the world's grammar.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .. import __version__
from ..errors import ConfigError
from .backbone import LoadedClip, PackagedBackbone, load_clip
from .context import ContextGrammar, context_accuracy
from .conventions import Conventions, image_scores, preset, scoring_texts, text_scores
from .images import ImageSource, check_images, image_name, load_rgb, reference_images
from .report import AlignmentReport

__all__ = ["ClipScorer", "Progress"]

# progress(stage, done, total): stage is "images", "references" or "texts"; called after every batch.
Progress = Callable[[str, int, int], None]
# An image file as last embedded: (resolved path, inode, modification time in ns, size in bytes).
_FileKey = tuple[str, int, int, int]
# Embeddings kept per scorer: 8192 x 768 fp32 (ViT-L-14) is 25 MB, and a DreamBench evaluation of 30 concepts x
# 25 prompts x 4 seeds scores 3000 images per setting.
CACHED_FILES = 8192


class ClipScorer:
    """Scores generated images with one CLIP backbone under one set of conventions.

    Example::

        scorer = ClipScorer("mix-of-show")                  # ViT-B-32 / openai, from the local cache
        scorer.text_alignment(images, prompts, tokens={"qwiv": "kettle"}).mean
        scorer.image_alignment(images, "concepts/kettle").summary()

    `conventions` is a `Conventions` or a preset name. `device` defaults to CUDA when available. `cache_dir`
    is where pretrained tags are looked up (default: the Hugging Face hub cache, `~/.cache/clip` for URL tags).
    """

    # The CLIPs shipped inside a package that this scorer can load, besides open_clip's own.
    packaged_backbones: tuple[PackagedBackbone, ...] = ()
    # What prompts ask about their context (`context_accuracy`); None: context accuracy is not defined.
    context_grammar: ContextGrammar | None = None

    def __init__(
        self,
        conventions: Conventions | str = "default",
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        if isinstance(conventions, str):
            conventions = preset(conventions)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.conventions = conventions
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.progress = progress
        loaded = load_clip(
            conventions.backbone,
            conventions.weights,
            device=self.device,
            cache_dir=cache_dir,
            packaged=self.packaged_backbones,
        )
        self._loaded: LoadedClip = loaded
        self.model = loaded.model
        self.preprocess = loaded.preprocess
        self.tokenizer = loaded.tokenizer
        # file key -> unit-norm embedding [D], at most CACHED_FILES of them; shared with `with_conventions` copies
        # (an image's embedding depends on the model alone), and by the app's concurrent jobs, hence the lock.
        self._file_embeddings: OrderedDict[_FileKey, torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()

    def with_conventions(self, conventions: Conventions | str) -> ClipScorer:
        """A scorer under other conventions that shares this one's model (same backbone and weights), so
        several conventions cost one model load."""
        if isinstance(conventions, str):
            conventions = preset(conventions)
        mine = self.conventions
        if (conventions.backbone, conventions.weights) != (mine.backbone, mine.weights):
            raise ConfigError(
                f"with_conventions keeps the model ({mine.backbone}/{mine.weights}); conventions for "
                f"{conventions.backbone}/{conventions.weights} need a new ClipScorer"
            )
        other = copy.copy(self)  # shallow: the model, preprocessing and tokenizer are shared, not copied
        other.conventions = conventions
        return other

    # --------------------------------------------------------------------------------------------- embeddings
    def _report_progress(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageSource], *, stage: str = "images") -> torch.Tensor:
        """Unit-norm image embeddings [N, D] (fp32, CPU). Every image not embedded before is checked before the
        first batch runs; files this scorer already embedded, unchanged since, are not read again."""
        if not images:
            raise ConfigError("embed_images needs at least one image")
        names = [image_name(image, i) for i, image in enumerate(images)]
        keys = [_file_key(image) for image in images]
        with self._cache_lock:
            found = {
                i: self._file_embeddings[key] for i, key in enumerate(keys) if key in self._file_embeddings
            }
        todo = [i for i in range(len(images)) if i not in found]
        check_images([images[i] for i in todo], [names[i] for i in todo])
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            pixels = torch.stack(
                [self.preprocess(load_rgb(images[i], names[i])) for i in chunk]
            )  # [B, 3, H, W]
            features = self.model.encode_image(pixels.to(self.device)).float()  # [B, D]
            found.update(zip(chunk, F.normalize(features, dim=-1).cpu(), strict=True))
            self._report_progress(stage, start + len(chunk), len(todo))
        with self._cache_lock:
            for i in todo:
                if keys[i] is not None:
                    self._file_embeddings[keys[i]] = found[i]
            while len(self._file_embeddings) > CACHED_FILES:
                self._file_embeddings.popitem(last=False)  # the oldest first
        return torch.stack([found[i] for i in range(len(images))])  # [N, D]

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings [N, D] (fp32, CPU) of `texts` exactly as given (no token rule, no prefix)."""
        parts = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            tokens = self.tokenizer(chunk)  # [B, context_length] token ids, truncated to the context
            features = self.model.encode_text(tokens.to(self.device)).float()  # [B, D]
            parts.append(F.normalize(features, dim=-1).cpu())
            self._report_progress("texts", start + len(chunk), len(texts))
        return torch.cat(parts)  # [N, D]

    # ----------------------------------------------------------------------------------------------- metrics
    def text_alignment(
        self,
        images: Sequence[ImageSource],
        prompts: Sequence[str],
        *,
        tokens: Mapping[str, str] | None = None,
    ) -> AlignmentReport:
        """CLIP-T: each image against the prompt it was generated with.

        `tokens` maps each concept token in the prompts to its class word, e.g. `{concept.token:
        concept.class_word}`; the token rule of the conventions decides what becomes of it.
        """
        images, prompts = list(images), list(prompts)
        if not images:
            raise ConfigError("text_alignment needs at least one image")
        if len(images) != len(prompts):
            raise ConfigError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
        tokens = dict(tokens or {})
        texts = scoring_texts(prompts, tokens, self.conventions)  # checks the tokens before any model runs
        image_features = self.embed_images(images)  # [G, D]
        text_features = self.embed_texts(texts)  # [G, D]
        cos = (image_features.double() * text_features.double()).sum(dim=-1)  # [G]: row-wise dot of unit rows
        scores = text_scores(cos, self.conventions)  # [G]
        return AlignmentReport(
            metric="clip-t",
            mean=scores.mean().item(),
            scores=tuple(scores.tolist()),
            images=tuple(image_name(image, i) for i, image in enumerate(images)),
            conventions=self.conventions,
            weights=self.weights_record(),
            environment=self.environment(),
            prompts=tuple(prompts),
            texts=tuple(texts),
            tokens=tokens,
        )

    def image_alignment(
        self,
        images: Sequence[ImageSource],
        references: str | os.PathLike[str] | Sequence[ImageSource],
    ) -> AlignmentReport:
        """CLIP-I: the generated images against the reference images (a folder, e.g. the concept's, or a list),
        every pair scored, pooled by the pairing rule."""
        images = list(images)
        if not images:
            raise ConfigError("image_alignment needs at least one generated image")
        if isinstance(references, str | os.PathLike):
            references = reference_images(references)
        references = list(references)
        if not references:
            raise ConfigError("image_alignment needs at least one reference image")
        ref_names = [image_name(ref, j) for j, ref in enumerate(references)]
        check_images(references, ref_names)  # a bad reference fails before the generated images are embedded
        generated = self.embed_images(images)  # [G, D]
        reference = self.embed_images(references, stage="references")  # [R, D]
        cos = generated.double() @ reference.double().T  # [G, R]
        pairs, per_image, mean = image_scores(cos, self.conventions)  # [G, R], [G], scalar
        return AlignmentReport(
            metric="clip-i",
            mean=mean,
            scores=tuple(per_image.tolist()),
            images=tuple(image_name(image, i) for i, image in enumerate(images)),
            conventions=self.conventions,
            weights=self.weights_record(),
            environment=self.environment(),
            references=tuple(ref_names),
            pair_scores=tuple(tuple(row) for row in pairs.tolist()),
        )

    def context_accuracy(
        self, images: Sequence[ImageSource], texts: Sequence[str]
    ) -> tuple[float, dict[str, float]] | None:
        """The share of the context attributes CLIP reads right in `images` (one scoring text each, in
        `context_grammar`), overall and per kind; None without a grammar or when the texts ask nothing."""
        if self.context_grammar is None:
            return None
        return context_accuracy(self, images, texts, self.context_grammar)

    # ---------------------------------------------------------------------------------------------- records
    def weights_record(self) -> dict[str, object]:
        """Where this scorer's weights came from (kind, tag or file, origin, sha256), as every report records it."""
        return self._loaded.weights.to_dict()

    def environment(self) -> dict[str, object]:
        """What else decides the numbers (device, precision, library versions), as every report records it."""
        import open_clip

        return {
            "device": str(self.device),
            "precision": "fp32",
            "open_clip": open_clip.__version__,
            "torch": torch.__version__,
            "bora_diffusion": __version__,
        }

    def __repr__(self) -> str:
        c = self.conventions
        return f"ClipScorer({c.backbone}/{c.weights}, {c.preset_name or 'custom'}, device={self.device})"


def _file_key(source: ImageSource) -> _FileKey | None:
    """What identifies an image file's content for the embedding cache; None for an in-memory image, and for a
    path that cannot be read (`check_images` then says why)."""
    if isinstance(source, Image.Image):
        return None
    try:
        stat = os.stat(source)
    except OSError:
        return None
    return os.path.realpath(source), stat.st_ino, stat.st_mtime_ns, stat.st_size
