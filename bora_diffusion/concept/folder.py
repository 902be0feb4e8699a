"""A concept folder's files: which are images and captions, and every problem of each (formats, sizes, modes,
corrupt data, links out of the folder, pipes and devices, captions without an image); and writing a caption."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..atomic import write_text
from ..errors import ConceptError
from .prompts import placeholder_problem

CONCEPT_FILE = "concept.toml"  # the settings; every other file is an image, a caption or a problem
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_EXTENSION = ".txt"
DEFAULT_MIN_SIZE = 64
# Files operating systems drop into folders; never the user's data, so they are not problems.
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_EXPECTED = f"expected {', '.join(IMAGE_EXTENSIONS)}"


def scan(folder: Path, min_size: int, problems: list[str]) -> tuple[list[Path], list[Path]]:
    """The folder's images and caption files, sorted by name; every other file's problem is appended."""
    images, captions = [], []
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        entries = []
        problems.append(f"cannot list the folder ({error.strerror})")
    inside = folder.resolve()
    for path in entries:
        lower = path.name.lower()
        if path.name.startswith(".") or lower.startswith("readme") or lower in _IGNORED_NAMES:
            continue
        if path.name == CONCEPT_FILE:
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            # A link out of the folder trains on files the folder does not hold; refused so the folder is the
            # whole concept (copy the file in instead).
            problems.append(
                f"{path.name} is a link to {path.resolve()}, outside the folder: copy the file in"
            )
        elif path.exists() and not path.is_dir() and not path.is_file():
            # FIFOs, sockets, devices: opening a FIFO blocks until a writer comes, so these are never opened.
            problems.append(f"{path.name} is not a regular file (a pipe, socket or device): remove it")
        elif path.is_dir():
            problems.append(f"{path.name}/ is a folder: images go directly into the concept folder")
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        elif path.suffix.lower() == CAPTION_EXTENSION:
            captions.append(path)
        else:
            problems.append(_not_an_image(path))
    if not images:
        problems.append(f"no images (add {', '.join(IMAGE_EXTENSIONS)} files)")
    for image in images:
        problems += _image_problems(image, min_size)
    return images, captions


def _not_an_image(path: Path) -> str:
    """The problem with a file that has no image extension; says how to fix an image in another format."""
    try:
        with Image.open(path) as image:
            kind = image.format
    except Exception:  # PIL raises many types for non-images; any of them means "not an image"
        kind = None
    if kind in ("PNG", "JPEG", "MPO", "WEBP"):
        extension = {"PNG": ".png", "WEBP": ".webp"}.get(kind, ".jpg")
        return (
            f"{path.name} is a {kind} image without an image extension: rename it to {path.stem}{extension}"
        )
    if kind:
        return f"{path.name} is a {kind} image, which is not read here: convert it to PNG ({_EXPECTED})"
    return f"{path.name} is not an image ({_EXPECTED})"


def _image_problems(path: Path, min_size: int) -> list[str]:
    name = path.name
    try:
        with Image.open(path) as image:
            image.verify()  # structure and checksums (PNG CRCs), without decoding
        with Image.open(path) as image:
            image.load()  # decodes every pixel: catches truncated data that verify() never reads
            problems = []
            width, height = image.size
            if width < min_size or height < min_size:
                problems.append(f"{name} is {width}x{height}, smaller than {min_size} px")
            if image.mode in ("I", "F") or image.mode.startswith("I;"):
                # PIL converts these to RGB by clipping at 255: a 16-bit photo turns white, silently.
                problems.append(
                    f"{name} has 16-bit or float pixels (mode {image.mode}), which turn to RGB by clipping at "
                    "255: save it as 8-bit RGB"
                )
                return problems
            try:
                image.convert("RGB")
            except Exception as error:  # any failure of PIL's converters means training cannot read it
                problems.append(f"{name} is in mode {image.mode}, which cannot be converted to RGB ({error})")
                return problems
            # Transparent pixels are no problem: training flattens them onto white (data.flatten).
            return problems
    except Image.UnidentifiedImageError:
        return [f"{name} is not an image, whatever its extension says"]
    except OSError as error:
        reason = error.strerror or str(error)
        return [f"{name} is a corrupt or unreadable image ({reason})"]
    except Exception as error:
        # PIL's decoders also raise SyntaxError, ValueError, struct.error... for broken files.
        return [f"{name} is a corrupt image ({error})"]


def caption_problems(
    caption: Path, images: Sequence[Path], token: str | None
) -> tuple[Path | None, str | None, list[str]]:
    """(the image it captions, its text, problems)."""
    matches = [image for image in images if image.stem == caption.stem]
    if not matches:
        named = [image for image in images if image.name == caption.stem]  # kettle.png.txt
        hint = f"name it {named[0].stem}.txt" if named else "name it like its image: a.png -> a.txt"
        return None, None, [f"{caption.name} is a caption without an image ({hint})"]
    if len(matches) > 1:
        names = " or ".join(image.name for image in matches)
        return None, None, [f"{caption.name} could caption {names}: give the images different names"]
    try:
        text = " ".join(caption.read_text(encoding="utf-8").split())
    except UnicodeDecodeError:
        return None, None, [f"{caption.name} is not UTF-8 text"]
    except OSError as error:
        return None, None, [f"{caption.name} cannot be read ({error.strerror})"]
    if not text:
        empty = f"{caption.name} is empty: write a caption, or delete it to use the instance prompt"
        return None, None, [empty]
    problems = []
    placeholder = placeholder_problem(caption.name, text)
    if placeholder:
        problems.append(placeholder)
    if token and "{token}" not in text and token.lower() not in text.lower():
        problems.append(f"{caption.name} does not mention {{token}}, so its image would not teach the token")
    return matches[0], text, problems


def write_caption(image: str | Path, caption: str) -> Path:
    """Write `caption` (with "{token}" where the token goes) as the caption file of `image`, atomically."""
    image = Path(image)
    text = " ".join(caption.split())
    problem = "caption is empty" if not text else placeholder_problem("caption", text)
    if problem:
        raise ConceptError(f"{image.name}: {problem}", [problem])
    path = image.with_suffix(CAPTION_EXTENSION)
    write_text(path, text + "\n")
    return path
