"""The world's pieces of scoring, plugged into the generic CLIP scorer: `WorldScorer`.

The evaluation package scores with any open_clip backbone and knows nothing of the world; the world adds two
things a world run needs:

- its CLIP (`clip.py`, architecture "world-clip", weights shipped in the package) as a packaged backbone, the
  default conventions' backbone: `weights="embedded"` is the shipped file, a file written by
  `scripts/train_world_clip.py` loads as a checkpoint of that architecture, and `weights=None` is a random
  initialization;
- its caption grammar for context accuracy (`context.py`): what a world prompt asks about its background and
  companion.

    from bora_diffusion.world.scoring import WorldScorer

    scorer = WorldScorer("default")      # the world CLIP under the default conventions
    report = evaluate_concepts(pipe, concepts, scorer, "runs/a/eval", base_name="embedded:world-base-2")
"""

from __future__ import annotations

from ..evaluation.backbone import PackagedBackbone
from ..evaluation.scorer import ClipScorer
from .clip import ARCH, WEIGHTS_FILE, build_model, image_size, load_world_clip, register, tokenizer
from .context import WORLD_GRAMMAR

__all__ = ["WORLD_CLIP", "WorldScorer"]

WORLD_CLIP = PackagedBackbone(
    name=ARCH,
    weights_file=WEIGHTS_FILE,
    origin="bora_diffusion.world",
    register=register,
    build=lambda seed: build_model(seed=seed),
    load=load_world_clip,
    image_size=image_size,
    tokenizer=tokenizer,
    hint="run scripts/train_world_clip.py",
)


class WorldScorer(ClipScorer):
    """A `ClipScorer` that also loads the world CLIP and scores context accuracy on prompts in the world's
    grammar; with any other backbone and prompts it scores exactly as `ClipScorer` does."""

    packaged_backbones = (WORLD_CLIP,)
    context_grammar = WORLD_GRAMMAR
