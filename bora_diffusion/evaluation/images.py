"""Images to score: reading them, which pixel modes are converted to RGB and which are refused, reference folders,
and the prompts of a generated folder.

CLIP reads 8-bit RGB. A mode is converted only when the conversion is exact, and refused when PIL's conversion
would change what the image shows, because a silently altered image changes its score:

- converted: "RGB" (as is), "L" and "1" (gray, channels replicated), "P" (palette lookup), "YCbCr" (JPEG's own
  color space, a fixed linear transform), and the alpha modes "RGBA", "LA", "PA", "RGBa", "La" when every pixel
  is opaque (the alpha channel then carries nothing and is dropped);
- refused: transparent pixels (the color behind them is arbitrary, and flattening onto black or white moves the
  score), 16-bit and float modes "I;16*", "I", "F" (PIL clips them at 255: a 16-bit photo turns white), "CMYK"
  (PIL ignores the ICC profile, so colors shift), and anything else ("LAB", "HSV"...) without an exact path.

This is the rule `bora_diffusion.concept` applies to training images, so a reference folder that trains also
scores. Each refusal says how to fix the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

from PIL import Image

from ..concept import IMAGE_EXTENSIONS
from .errors import ImageModeError, ReferenceImagesError

__all__ = [
    "ImageSource",
    "check_images",
    "generated_images",
    "image_name",
    "load_rgb",
    "reference_images",
]

ImageSource: TypeAlias = str | os.PathLike[str] | Image.Image

_EXACT_MODES = frozenset({"RGB", "L", "1", "P", "YCbCr"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_FIX_8BIT = "save it as 8-bit RGB (PNG or JPEG)"


def image_name(source: ImageSource, index: int) -> str:
    """How a report names an image: its path, the file a PIL image was read from, or its position."""
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or f"image[{index}]"
    return os.fspath(source)


def _mode_problem(image: Image.Image, name: str) -> str | None:
    """Why `image` cannot be scored as given, or None. Decodes pixels only to look for transparency."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;"):
        return (
            f"{name} has 16-bit or float pixels (mode {mode}), which PIL turns to RGB by clipping at 255: "
            f"{_FIX_8BIT}"
        )
    if mode == "CMYK":
        return (
            f"{name} is CMYK, and converting it here would ignore its color profile and shift the colors: "
            "export it as sRGB (e.g. `magick in.jpg -colorspace sRGB out.png`)"
        )
    if mode not in _EXACT_MODES and mode not in _ALPHA_MODES:
        return f"{name} is in mode {mode}, which has no exact conversion to RGB: {_FIX_8BIT}"
    if mode in _ALPHA_MODES or image.has_transparency_data:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return (
                f"{name} has transparent pixels, whose hidden color would be scored: flatten it onto the "
                "background you mean"
            )
    return None


def _open(source: ImageSource, name: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    path = Path(source)
    if not path.is_file():
        raise ImageModeError(f"{name} does not exist or is not a file: check the path")
    try:
        image = Image.open(path)
        image.load()  # decode now: a truncated file fails here, not in the middle of a batch
    except Exception as error:  # PIL raises many types for unreadable files; all mean "cannot be scored"
        raise ImageModeError(f"{name} is not a readable image ({error}): re-save it as PNG or JPEG") from None
    return image


def load_rgb(source: ImageSource, name: str | None = None) -> Image.Image:
    """`source` as an 8-bit RGB image, converted only where exact (see the module docstring), else refused."""
    name = name or image_name(source, 0)
    image = _open(source, name)
    if image.mode == "RGB":
        return image
    problem = _mode_problem(image, name)
    if problem:
        raise ImageModeError(problem)
    return image.convert("RGB")


def check_images(sources: Sequence[ImageSource], names: Sequence[str]) -> None:
    """Raise one `ImageModeError` naming every image that cannot be scored, before any model runs."""
    problems = []
    for source, name in zip(sources, names, strict=True):
        try:
            image = _open(source, name)
        except ImageModeError as error:
            problems.append(str(error))
            continue
        problem = None if image.mode == "RGB" else _mode_problem(image, name)
        if problem:
            problems.append(problem)
    if len(problems) == 1:
        raise ImageModeError(problems[0])
    if problems:
        raise ImageModeError(f"{len(problems)} images cannot be scored as given: " + "; ".join(problems))


def reference_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The images of a reference folder (a concept folder works: concept.toml and captions are skipped),
    sorted by name. Hidden files are skipped; subfolders are not searched."""
    folder = Path(folder)
    if not folder.exists():
        raise ReferenceImagesError(
            f"reference folder {folder} does not exist: give the folder of the concept's own images"
        )
    if not folder.is_dir():
        raise ReferenceImagesError(
            f"reference folder {folder} is a file: give the folder that holds the reference images"
        )
    entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    images = [path for path in entries if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        found = ", ".join(path.name for path in entries[:5]) or "nothing"
        more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
        raise ReferenceImagesError(
            f"reference folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}); it holds {found}{more}: "
            "give the folder of the concept's images"
        )
    return images


def generated_images(folder: str | os.PathLike[str]) -> tuple[list[Path], list[str]]:
    """The images of a folder written by `bora_diffusion.generate.generate` and the prompt of each, from its
    manifest.json, ready for `ClipScorer.text_alignment(*generated_images(folder), tokens=...)`."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ReferenceImagesError(
            f"{folder} has no manifest.json: give a folder written by `generate`, or pass images and prompts"
        )
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["images"]
        pairs = [(folder / entry["file"], str(entry["prompt"])) for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise ReferenceImagesError(
            f"{manifest} is not a generation manifest ({error}): regenerate the folder"
        ) from None
    if not pairs:
        raise ReferenceImagesError(f"{manifest} lists no images: regenerate the folder")
    return [path for path, _ in pairs], [prompt for _, prompt in pairs]
