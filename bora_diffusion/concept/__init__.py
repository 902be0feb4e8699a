"""Concept folders: the images of one concept with its token, class word, prompts and training defaults.

This package reads, checks and writes them, one module a concern: `model` (Concept, load_concept(s)), `folder`
(the files: images, captions), `toml_file` (concept.toml), `training` (the [train] table, TrainDefaults),
`prompts` (templates), `words` (token, class word, name), `problems` (how problems are worded).

One folder per concept; the folder's name is the concept's name, which names its adapter and adapter file, so it
holds letters, digits, '-' and '_' only::

    concepts/kettle/
      concept.toml     token, class word, prompts, training defaults (below)
      kettle_00.png    images: .png .jpg .jpeg .webp, RGB-convertible, at least `min_size` px on each side
      kettle_00.txt    optional caption of kettle_00.png (kohya's convention); "{token}" and "{class_word}"
                       are filled in, and it must mention the token (as "{token}" or literally)
      kettle_01.png
      README.md        ignored, like hidden files, Thumbs.db and desktop.ini

`concept.toml`, with every optional key at its default::

    token = "qwiv"                  # required: the made-up word that summons the concept in prompts
    class_word = "kettle"           # required: what the concept is, in plain words
    description = ""                # optional, for people and the app

    [prompts]
    instance_prompt = "a photo of {token} {class_word}"   # images without a caption file; must hold {token}
    class_prompt = "a photo of a {class_word}"             # prior preservation; must not hold {token}
    sample_prompts = ["a photo of {token} {class_word}"]  # drawn during and after training

    [train]                         # every key optional; an omitted key means "the trainer's default"
    method = "sbora_fa"             # method, rank, alpha, the method's own options (blocks of bora_block),
    rank = 4                        # targets: as AdapterConfig
    steps = 400                     # this and every other TrainConfig setting (learning_rate, batch_size,
                                    # resolution, prior_weight, lock_weight, ...): as TrainConfig
    train_embedding = false         # also train the token's text embedding (ED-LoRA); embedding_learning_rate,
                                    # embedding_vectors (how many vectors the token stands for) and
                                    # word_lock_weight go with it

The [train] keys are derived from the settings schema (bora_diffusion.concept.training says how).

Choosing the token. By default training tunes the UNet and leaves the text encoder frozen, so the token reaches
the UNet as the pieces the base tokenizer splits it into (with `train_embedding`, the token instead becomes one
new token, or `embedding_vectors` of them, with its own trained embedding, bora_diffusion.embeddings). A token
that is itself one word of the vocabulary ("dog", but also DreamBooth's "sks", the name of a rifle, and kohya's
"ohwx") arrives with the meaning the base model already gives it, which training then overwrites: `load_concept`
refuses it. A made-up string splits into several rare pieces ("qwiv" -> "q", "wiv"), and that is fine: the adapter
learns their combination. Give every concept its own pieces: "<zq-kettle>" and "<zq-robot>" differ only in their
class words, which the prompts hold anyway, so they cannot tell two merged concepts apart; and common pieces (the
"my" and "dog" of "<my-dog>") drift with the concept wherever else they are used.

`load_concept` collects every problem of a folder and raises one `ConceptError` that lists them all in one line.
"""

from __future__ import annotations

from ..errors import ConceptError
from .folder import CAPTION_EXTENSION, CONCEPT_FILE, DEFAULT_MIN_SIZE, IMAGE_EXTENSIONS, write_caption
from .model import Concept, load_concept, load_concepts
from .prompts import PLACEHOLDERS, Prompts, fill
from .toml_file import concept_toml, write_concept_toml
from .training import TrainDefaults
from .words import Tokenizer

__all__ = [
    "CAPTION_EXTENSION",
    "CONCEPT_FILE",
    "DEFAULT_MIN_SIZE",
    "IMAGE_EXTENSIONS",
    "PLACEHOLDERS",
    "Concept",
    "ConceptError",
    "Prompts",
    "Tokenizer",
    "TrainDefaults",
    "concept_toml",
    "fill",
    "load_concept",
    "load_concepts",
    "write_caption",
    "write_concept_toml",
]
