"""Draw the example concepts shipped in concepts/: two objects whose identity no known words describe.

    .venv/bin/python scripts/make_example_concepts.py [--out concepts] [--seed 0]

- `kettle` (token "qwiv"): a round kettle painted with a six-armed blue and orange spiral, navy rim, lid and
  foot, teal spout and handle, and a pink knob.
- `robot` (token "bxj"): a robot of stacked blocks: yellow head with cyan square eyes and an orange-tipped
  antenna, red chest crossed by a white zig-zag, purple arms (raised or lowered), green legs.

Each concept gets 8 RGB PNGs of 64x64 px, the size the embedded default base model generates. The object is
drawn at 4x size with the same identity every time (only the robot's arm pose changes), placed at a random
scale, rotation, position (and, for the kettle, facing) on its own plain two-tone background with a soft shadow,
and downsampled: what varies between images is everything but the identity, which a tuner must learn to ignore.
Three images per concept have captions that name the background (captions say what is not the concept).

Every draw comes from a `random.Random` seeded by the concept's name and --seed: running the script twice writes
byte-identical files. The output is checked with `load_concepts` before the script reports success.
"""

from __future__ import annotations

import argparse
import io
import math
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from bora_diffusion.atomic import atomic_path, write_text
from bora_diffusion.concept import Prompts, TrainDefaults, load_concepts, write_caption, write_concept_toml

SIZE = 64  # the embedded default base model's image size
SCALE = 4  # draw at 4x and downsample: smooth edges that ImageDraw alone does not give
CANVAS = SIZE * SCALE
IMAGES_PER_CONCEPT = 8
CAPTIONED = (1, 4, 6)  # which images get a caption file
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "concepts"

# (name used in captions, wall color); the table below the horizon is the same color, darker.
BACKGROUNDS = (
    ("sand", (226, 210, 178)),
    ("sage green", (176, 196, 166)),
    ("pale blue", (188, 206, 228)),
    ("light grey", (208, 208, 204)),
    ("peach", (242, 206, 182)),
    ("lilac", (210, 196, 228)),
    ("mint", (190, 228, 208)),
    ("cream", (246, 240, 222)),
)

NAVY = (28, 36, 84)
OUTLINE = (34, 34, 40)


# ------------------------------------------------------------------------------------------------------- objects
def draw_kettle(rng: random.Random) -> Image.Image:
    """The kettle on a transparent CANVAS x CANVAS image; it never changes (`rng` is unused on purpose)."""
    del rng
    blue, orange, teal, pink = (38, 92, 214), (247, 140, 34), (24, 150, 140), (238, 88, 160)
    image = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.arc((34, 100, 114, 186), start=90, end=270, fill=teal, width=14)  # handle, behind the body
    draw.polygon([(186, 150), (234, 96), (248, 106), (200, 176)], fill=teal, outline=OUTLINE)  # spout
    draw.rectangle((90, 196, 166, 214), fill=NAVY)  # foot

    # The body's paint: a six-armed spiral around its center, the concept's signature.
    box = (58, 78, 198, 208)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    paint = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    pixels = paint.load()
    for y in range(box[1], box[3] + 1):
        for x in range(box[0], box[2] + 1):
            turn = math.atan2(y - cy, x - cx) / (2 * math.pi) * 6 + math.hypot(x - cx, y - cy) / 18
            pixels[x, y] = (*(blue if math.floor(turn) % 2 == 0 else orange), 255)
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    image.paste(paint, (0, 0), mask)
    draw.ellipse(box, outline=NAVY, width=5)

    draw.ellipse((96, 62, 160, 90), fill=NAVY)  # lid
    draw.ellipse((118, 42, 138, 64), fill=pink, outline=OUTLINE, width=2)  # knob
    return image


def draw_robot(rng: random.Random) -> Image.Image:
    """The block robot on a transparent CANVAS x CANVAS image; only the arm pose varies (drawn from `rng`)."""
    yellow, cyan, red, purple = (240, 200, 40), (40, 220, 230), (204, 40, 52), (132, 62, 176)
    green, dark_green, grey, orange = (44, 168, 76), (24, 110, 50), (150, 150, 158), (250, 130, 30)
    image = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)

    def block(box: tuple[int, int, int, int], color: tuple[int, int, int]) -> None:
        draw.rectangle(box, fill=color, outline=OUTLINE, width=3)

    draw.line((128, 34, 128, 14), fill=grey, width=5)  # antenna
    draw.ellipse((119, 2, 137, 20), fill=orange, outline=OUTLINE, width=2)
    block((88, 194, 118, 232), green)  # legs and feet
    block((138, 194, 168, 232), green)
    block((80, 226, 122, 240), dark_green)
    block((134, 226, 176, 240), dark_green)
    for left in (True, False):  # arms: raised or lowered, independently
        x0 = 42 if left else 186
        box = (x0, 60, x0 + 28, 118) if rng.random() < 0.5 else (x0, 112, x0 + 28, 176)
        block(box, purple)
    block((70, 104, 186, 196), red)  # chest
    zigzag = [(82 + 12 * i, 142 if i % 2 == 0 else 158) for i in range(9)]
    draw.line(zigzag, fill=(250, 250, 250), width=7, joint="curve")
    block((116, 92, 140, 106), grey)  # neck
    block((86, 34, 170, 94), yellow)  # head
    block((100, 48, 120, 68), cyan)  # eyes
    block((136, 48, 156, 68), cyan)
    draw.rectangle((108, 78, 148, 84), fill=OUTLINE)  # mouth
    return image


CONCEPTS = {
    "kettle": {
        "token": "qwiv",
        "class_word": "kettle",
        "draw": draw_kettle,
        "flip": True,
        "description": (
            "A round kettle painted with a six-armed blue and orange spiral, navy rim, lid and foot, "
            "teal spout and handle, and a pink knob."
        ),
    },
    "robot": {
        "token": "bxj",
        "class_word": "robot",
        "draw": draw_robot,
        "flip": False,
        "description": (
            "A robot of stacked blocks: yellow head with cyan square eyes and an orange-tipped antenna, "
            "red chest crossed by a white zig-zag, purple arms, green legs."
        ),
    },
}


# ---------------------------------------------------------------------------------------------------- placement
def compose(
    subject: Image.Image, wall: tuple[int, int, int], rng: random.Random, *, flip: bool
) -> Image.Image:
    """The subject at a random scale, rotation, position (and facing) on a two-tone `wall` background."""
    table = tuple(round(channel * 0.8) for channel in wall)
    horizon = round(CANVAS * rng.uniform(0.6, 0.78))
    scene = Image.new("RGB", (CANVAS, CANVAS), wall)
    ImageDraw.Draw(scene).rectangle((0, horizon, CANVAS, CANVAS), fill=table)

    if flip and rng.random() < 0.5:
        subject = subject.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.6, 0.88)
    side = round(CANVAS * scale)
    subject = subject.resize((side, side), Image.Resampling.LANCZOS)
    subject = subject.rotate(rng.uniform(-18, 18), resample=Image.Resampling.BICUBIC, expand=False)
    slack = CANVAS - side
    left = round(slack / 2 + rng.uniform(-0.45, 0.45) * slack)
    top = round(slack / 2 + rng.uniform(-0.45, 0.45) * slack)

    # A soft shadow under the subject's lowest point grounds it on the table.
    x0, _, x1, y1 = subject.getchannel("A").getbbox() or (0, 0, side, side)
    shadow = Image.new("L", (CANVAS, CANVAS), 0)
    width, base = (x1 - x0) * 0.4, top + y1
    ImageDraw.Draw(shadow).ellipse(
        (left + (x0 + x1) / 2 - width, base - 8, left + (x0 + x1) / 2 + width, base + 8), fill=90
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(6))
    scene.paste((0, 0, 0), (0, 0), shadow)

    scene.paste(subject, (left, top), subject)
    return scene.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # Pillow writes no timestamp: same pixels, same bytes
    return buffer.getvalue()


def make_concept(out: Path, name: str, seed: int) -> Path:
    """Write concept `name` into `out/name` and return the folder."""
    spec = CONCEPTS[name]
    folder = out / name
    rng = random.Random(f"bora-diffusion example concept {name} {seed}")  # str seeds hash with sha512: stable
    backgrounds = rng.sample(BACKGROUNDS, IMAGES_PER_CONCEPT)  # every image on its own background
    for index, (background, wall) in enumerate(backgrounds):
        image = compose(spec["draw"](rng), wall, rng, flip=spec["flip"])
        path = folder / f"{name}_{index:02d}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(png_bytes(image))
        if index in CAPTIONED:
            write_caption(path, f"a photo of {{token}} {{class_word}} on a {background} background")
    write_concept_toml(
        folder,
        spec["token"],
        spec["class_word"],
        description=spec["description"],
        prompts=Prompts(
            sample_prompts=(
                "a photo of {token} {class_word}",
                "a photo of {token} {class_word} on a beach",
                "a drawing of {token} {class_word}",
            )
        ),
        train=TrainDefaults(method="sbora_fa", rank=4, resolution=SIZE),
    )
    write_text(
        folder / "README.md",
        f"# {name}\n\nExample concept drawn by `scripts/make_example_concepts.py` (seed {seed}).\n\n"
        f"{spec['description']}\n\nToken `{spec['token']}`, class word `{spec['class_word']}`; "
        "this file is ignored by the concept loader.\n",
    )
    return folder


def make_examples(out: str | Path = DEFAULT_OUT, seed: int = 0) -> list[Path]:
    """Write every example concept under `out`, check them with `load_concepts`, and return their folders."""
    folders = [make_concept(Path(out), name, seed) for name in CONCEPTS]
    load_concepts(folders, min_size=SIZE)
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where the concept folders go (concepts/)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    args = parser.parse_args(argv)
    for folder in make_examples(args.out, args.seed):
        print(f"{folder}: {len(list(folder.glob('*.png')))} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
