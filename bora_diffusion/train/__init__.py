"""Concept training, one room: `trainer` runs the steps (`Trainer`, `train_concepts`), `setup` builds what a run
is made of (accelerator, optimizer, schedule, class images), `denoising` is the loss and how processes share a
batch, `checkpoints` writes and resumes.

`from bora_diffusion.train import Trainer, train_concepts` is the entry point; the names below are the public ones.
"""

from .checkpoints import CHECKPOINTS, KEEP_CHECKPOINTS, newest_checkpoint, remove_stale_staging
from .denoising import min_snr_weights, training_scheduler
from .setup import ensure_class_images
from .trainer import ConceptLike, Trainer, TrainingDiverged, train_concepts

__all__ = [
    "CHECKPOINTS",
    "KEEP_CHECKPOINTS",
    "ConceptLike",
    "Trainer",
    "TrainingDiverged",
    "ensure_class_images",
    "min_snr_weights",
    "newest_checkpoint",
    "remove_stale_staging",
    "train_concepts",
    "training_scheduler",
]
