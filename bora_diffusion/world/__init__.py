"""The world: a procedural picture domain with captions, for a small base model and a small CLIP to learn.

Pictures of one or two vocabulary shapes (color, size, place or relation) on a colored, textured background,
each with the caption that says exactly that, endless and seeded; and novel concepts that the stream never
shows, for personalization to learn. See vocabulary.py for the words, scenes.py for sampling and captions,
render.py for drawing, novel.py for the novel concepts; clip.py for the world's CLIP, and scoring.py and
context.py for what evaluation needs of the world (its CLIP as a packaged backbone, its caption grammar).
"""

from .novel import NOVEL_CONCEPTS, NovelConcept, NovelView, novel_concept, render_novel, sample_view
from .scenes import Background, Scene, Thing, sample_background, sample_scene, scenes
from .vocabulary import BACKGROUND_TEXTURES, COLORS, PLACES, RELATIONS, SHAPES, SIZES, WORDS

__all__ = [
    "BACKGROUND_TEXTURES",
    "COLORS",
    "NOVEL_CONCEPTS",
    "PLACES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "WORDS",
    "Background",
    "NovelConcept",
    "NovelView",
    "Scene",
    "Thing",
    "novel_concept",
    "render_novel",
    "sample_background",
    "sample_scene",
    "sample_view",
    "scenes",
]
