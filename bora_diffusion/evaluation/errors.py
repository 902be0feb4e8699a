"""The errors a user can cause while scoring. Each message is one line that names the thing at fault and the fix.

All derive from `EvaluationError`, itself a `BoraError`, so the CLI and the app show them as one line.
"""

from __future__ import annotations

from ..errors import BoraError

__all__ = [
    "BackboneError",
    "ConceptFileError",
    "EvaluationError",
    "ImageModeError",
    "ReferenceImagesError",
    "WeightsError",
    "WeightsUnavailableError",
]


class EvaluationError(BoraError, ValueError):
    """Base class of the scoring errors."""


class ReferenceImagesError(EvaluationError):
    """The reference images are missing: no such folder, a file instead of a folder, or no images in it."""


class ConceptFileError(EvaluationError):
    """An adapter file cannot be evaluated as given (no token or class word, a duplicate name or token)."""


class ImageModeError(EvaluationError):
    """An image cannot be scored as given (16-bit, CMYK, transparent pixels, unreadable...)."""


class BackboneError(EvaluationError):
    """The CLIP architecture name is not one open_clip knows."""


class WeightsError(EvaluationError):
    """The weights source is wrong: an unknown tag, a missing file, or a file made for another architecture."""


class WeightsUnavailableError(WeightsError):
    """A pretrained tag whose weights are not cached locally and cannot be downloaded (offline, no network)."""
