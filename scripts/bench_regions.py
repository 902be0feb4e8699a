"""Regional composition on the world: does each region draw its own concept, and the background the global prompt?

    source scripts/env.sh
    .venv/bin/python scripts/bench_regions.py --concepts outputs/demo [--seeds 4] [--steps 20] [--json out.json]

`--concepts` holds the main job's three concept files (bolt-circle, notched-ring, spiral-star; `bora-diffusion
train concepts/bolt-circle concepts/notched-ring concepts/spiral-star --out DIR`). Every layout (the three pairs
side by side, the three together) is drawn on three background colors with `--seeds` seeds, four ways: without
regions (one prompt naming the concepts in a world relation), with regions live (inside each box only its
concept's adapters), with regions fused (every concept in the weights), and placed (the prompt without regions,
each concept's token steered into its box by layout guidance, live). Each box's crop is identified by the
world CLIP against the three concepts' reference images (bora_diffusion.evaluation.identity: a hit when its own
concept's references score highest, and the crop holds an object: at least 5% of its pixels away from the
background color, since an empty crop told apart among two concepts is "like" one of them; chance 1/3), and the
background (the pixels outside every box) is read as the world color nearest its mean, a hit when that is the
global prompt's color.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bora_diffusion.embedded import default_pipeline
from bora_diffusion.evaluation.identity import identity_hits
from bora_diffusion.generate import SamplingSettings, generate
from bora_diffusion.inject import merge, set_active, unmerge
from bora_diffusion.layout_guidance import Placement
from bora_diffusion.merge import compose
from bora_diffusion.pipeline import EMBEDDED_GUIDANCE
from bora_diffusion.regions import Region, cross_attentions, regional_sampling
from bora_diffusion.world.scoring import WorldScorer
from bora_diffusion.world.vocabulary import COLORS

CONCEPTS = {"bolt-circle": "a huzd circle", "notched-ring": "a vlek ring", "spiral-star": "a zorp star"}
LEFT, RIGHT = (0.0, 0.15, 0.5, 0.85), (0.5, 0.15, 1.0, 0.85)  # a strip above and below is background
LAYOUTS = {  # name -> [(concept, box)], the relation the prompt without regions names
    "circle+ring": ([("bolt-circle", LEFT), ("notched-ring", RIGHT)], "to the left of"),
    "circle+star": ([("bolt-circle", LEFT), ("spiral-star", RIGHT)], "to the left of"),
    "ring+star": ([("notched-ring", LEFT), ("spiral-star", RIGHT)], "to the left of"),
    "three": (
        [
            ("bolt-circle", (0.0, 0.0, 0.5, 0.5)),
            ("notched-ring", (0.5, 0.0, 1.0, 0.5)),
            ("spiral-star", (0.25, 0.5, 0.75, 1.0)),
        ],
        None,
    ),
}
BACKGROUNDS = ("white", "blue", "green")


def plain_prompt(parts: list[tuple[str, tuple]], relation: str | None, color: str) -> str:
    """The prompt without regions: the concepts in a world relation (three: listed) on the global color."""
    phrases = [CONCEPTS[name] for name, _ in parts]
    if relation:
        return f"{phrases[0]} {relation} {phrases[1]} on a {color} background"
    return f"{', '.join(phrases[:-1])} and {phrases[-1]} on a {color} background"


OBJECT_DISTANCE = 60.0  # RGB distance from the background color past which a pixel is an object's
OBJECT_SHARE = 0.05  # a crop holds an object when at least this share of its pixels is one's


def holds_object(image: Image.Image, color: str) -> bool:
    """Whether a crop holds an object: enough of its pixels far from the background's world color."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)  # (h, w, 3)
    distance = np.linalg.norm(pixels - np.array(COLORS[color], dtype=np.float64), axis=-1)  # (h, w)
    return bool((distance > OBJECT_DISTANCE).mean() >= OBJECT_SHARE)


def crop(image: Image.Image, box: tuple) -> Image.Image:
    width, height = image.size
    x0, y0, x1, y1 = box
    return image.crop((round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)))


def background_color(image: Image.Image, boxes: list[tuple]) -> str:
    """The world color nearest the mean of the pixels outside every box."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)  # (H, W, 3)
    height, width = pixels.shape[:2]
    outside = np.ones((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        outside[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)] = False
    mean = pixels[outside].mean(axis=0)  # (3,)
    return min(COLORS, key=lambda color: float(np.sum((np.array(COLORS[color]) - mean) ** 2)))


def loaded(folder: Path, fuse: bool):
    pipe = default_pipeline()
    compose(pipe, [(folder / f"{name}.safetensors", 1.0) for name in CONCEPTS], fuse=fuse)
    return pipe


@torch.no_grad()
def leak(folder: Path, guidance: float) -> dict[str, tuple[float, float]]:
    """Per cross-attention layer, ||out - out_alone|| / ||out_alone|| at the tokens the circle's box covers whole,
    where out_alone has only bolt-circle's adapters: (max, mean) over layers, live and fused. Every layer is fed
    the inputs it saw in one regional sampling step, so the layers are compared on the same inputs."""
    names = list(CONCEPTS)
    pipe = loaded(folder, fuse=False)
    parts = LAYOUTS["circle+ring"][0]
    regions = [
        Region(f"{CONCEPTS[name]} on a white background", box=box, concepts=(name,)) for name, box in parts
    ]
    seen: dict = {}

    def keep(module, args, kwargs) -> None:
        seen.setdefault(module, (args[0], kwargs["encoder_hidden_states"]))

    hooks = [layer.register_forward_pre_hook(keep, with_kwargs=True) for layer in cross_attentions(pipe.unet)]
    with regional_sampling(pipe, regions, height=None, width=None, guidance=guidance):
        pipe(
            "a white background",
            num_inference_steps=2,
            guidance_scale=guidance,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    for hook in hooks:
        hook.remove()

    def outputs(fused: bool, active: list[str]) -> dict:
        set_active(pipe.unet, active)
        if fused:
            merge(pipe.unet)
        with regional_sampling(pipe, regions, height=None, width=None, guidance=guidance) as plan:
            found = {
                layer: (layer(h, encoder_hidden_states=e), plan.masks(h.shape[1])[0] == 1)
                for layer, (h, e) in seen.items()
            }
        unmerge(pipe.unet)
        set_active(pipe.unet, names)
        return found

    alone = outputs(False, [parts[0][0]])
    result = {}
    for way, fused in (("live", False), ("fused", True)):
        got = outputs(fused, names)
        distance = [
            float((out[:, inside] - alone[layer][0][:, inside]).norm() / alone[layer][0][:, inside].norm())
            for layer, (out, inside) in got.items()
        ]
        result[way] = (max(distance), sum(distance) / len(distance))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", type=Path, required=True, help="folder with the three concept files")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=EMBEDDED_GUIDANCE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-regions"))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--leak-only",
        action="store_true",
        help="only how far the circle's box is from the circle alone, per layer",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.leak_only:
        for way, (worst, mean) in leak(args.concepts, args.guidance).items():
            print(
                f"{way}: relative distance from bolt-circle alone inside its box, max {worst:.4f} mean {mean:.4f}"
            )
        return 0
    start = time.perf_counter()
    settings = SamplingSettings(steps=args.steps, guidance=args.guidance)
    seeds = list(range(args.seeds))
    pipes = {"live": loaded(args.concepts, fuse=False), "fused": loaded(args.concepts, fuse=True)}
    references = {name: sorted(Path("concepts", name).glob("*.png")) for name in CONCEPTS}
    scorer = WorldScorer("default")
    ways = ("no regions", "regions live", "regions fused", "placed")
    crops: dict[tuple[str, str], dict[str, list[Path]]] = {}  # (way, layout) -> concept -> crops
    present: dict[
        tuple[str, str], dict[str, list[bool]]
    ] = {}  # (way, layout) -> concept -> crop holds an object
    backgrounds: dict[tuple[str, str], list[bool]] = {}
    for layout, (parts, relation) in LAYOUTS.items():
        boxes = [box for _, box in parts]
        for way in ways:
            crops[way, layout] = {name: [] for name, _ in parts}
            present[way, layout] = {name: [] for name, _ in parts}
            backgrounds[way, layout] = []
            for color in BACKGROUNDS:
                folder = args.out / way.replace(" ", "-") / layout.replace("+", "-") / color
                global_prompt = plain_prompt(parts, relation, color)
                regions, placements = [], []
                if way == "placed":  # the prompt without regions, each concept's token steered into its box
                    placements = [Placement(CONCEPTS[name].split()[1], box) for name, box in parts]
                elif way != "no regions":
                    global_prompt = f"a {color} background"
                    regions = [
                        Region(f"{CONCEPTS[name]} on a {color} background", box=box, concepts=(name,))
                        for name, box in parts
                    ]
                pipe = pipes["fused" if way == "regions fused" else "live"]
                result = generate(
                    pipe,
                    [global_prompt],
                    seeds,
                    folder,
                    settings=settings,
                    regions=regions,
                    placements=placements,
                )
                for path in result.images:
                    image = Image.open(path).convert("RGB")
                    for name, box in parts:
                        target = folder / "crops" / f"{path.stem}-{name}.png"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        part = crop(image, box)
                        part.save(target)
                        crops[way, layout][name].append(target)
                        present[way, layout][name].append(holds_object(part, color))
                    backgrounds[way, layout].append(background_color(image, boxes) == color)
    rows = []
    for layout in LAYOUTS:
        for way in ways:
            found = identity_hits(scorer, crops[way, layout], references)
            # A hit needs an object in the crop: told apart among two, an empty crop is "like" one of them.
            hits = {
                name: [hit and held for hit, held in zip(found[name], holds, strict=True)]
                for name, holds in present[way, layout].items()
            }
            shares = {name: sum(h) / len(h) for name, h in hits.items()}
            count = len(next(iter(crops[way, layout].values())))
            rows.append(
                {
                    "layout": layout,
                    "way": way,
                    "identity": sum(map(sum, hits.values())) / (count * len(hits)),
                    "unchecked_identity": sum(map(sum, found.values())) / (count * len(found)),
                    "holding_an_object": sum(map(sum, present[way, layout].values())) / (count * len(hits)),
                    "per_concept": shares,
                    "background": float(np.mean(backgrounds[way, layout])),
                    "crops": count * len(shares),
                }
            )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {commit}, {time.perf_counter() - start:.0f} s, seeds {args.seeds}, steps {args.steps}")
    print(
        "| layout | way | crops | own concept, object in the crop | per concept | holding an object | "
        "own concept, unchecked | background = global color |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        per = ", ".join(f"{name} {share:.2f}" for name, share in row["per_concept"].items())
        print(
            f"| {row['layout']} | {row['way']} | {row['crops']} | {row['identity']:.2f} | {per} | "
            f"{row['holding_an_object']:.2f} | {row['unchecked_identity']:.2f} | {row['background']:.2f} |"
        )
    for way in ways:
        mine = [row for row in rows if row["way"] == way]
        total = sum(r["crops"] for r in mine)
        mean = {
            key: sum(r[key] * r["crops"] for r in mine) / total for key in ("identity", "holding_an_object")
        }
        print(
            f"{way}: identity {mean['identity']:.2f} over {total} crops "
            f"({mean['holding_an_object']:.2f} holding an object)"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "commit": commit,
                    "args": vars(args)
                    | {"concepts": str(args.concepts), "out": str(args.out), "json": str(args.json)},
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
