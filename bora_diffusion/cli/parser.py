"""The `bora-diffusion` argument parser: every subcommand, its flags and help, each bound to its run_* function."""

from __future__ import annotations

import argparse

from .. import __version__, adapters
from ..config import TrainConfig, adapter_settings
from ..settings import Setting, settings_of
from .app import run_app
from .composing import run_compose, run_generate
from .evaluating import run_compare, run_evaluate
from .files import run_base, run_export, run_import, run_inspect, run_slots
from .flags import (
    CheckedValue,
    adapter_setting,
    add_setting_flags,
    and_joined,
    compare_train_flags,
    methods_text,
    option_settings,
    setting_flags,
)
from .methods import run_methods
from .training import run_train

TARGETS_HELP = "attention (default), cross_kv or self_attention"
GUIDANCE_HELP = "classifier-free guidance scale (default: 3 on the embedded base, 7.5 on others)"
DEVICE_HELP = (
    "cuda, cuda:N or cpu (default: cuda when available; under a multi-process launch, each process's GPU)"
)
THREADS = Setting(
    "threads", int, None, "CPU threads torch uses (default: 1 for a tiny base such as the embedded one, which a "
    "busy machine slows far less so; torch's default for the rest, or OMP_NUM_THREADS)", positive=True,
    optional=True,
)  # fmt: skip
BASE_HELP = "base model: 'embedded' (default, tiny, offline), a local diffusers folder, or a hub id"


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """Where a command that loads the base runs: --device and --threads."""
    parser.add_argument("--device", help=DEVICE_HELP)
    parser.add_argument("--threads", action=CheckedValue, setting=THREADS, metavar="N", help=THREADS.help)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, one add_*_command per subcommand, in the order `--help` lists them. The method
    list and the methods' options are read from the registry now, so a method registered later is included."""
    parser = argparse.ArgumentParser(
        prog="bora-diffusion",
        description="Concept tuning for Stable Diffusion with adapters that merge without concept bleeding.",
    )
    parser.add_argument("--version", action="version", version=f"bora-diffusion {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    add_methods_command(commands)
    add_app_command(commands)
    add_train_command(commands)
    add_export_command(commands)
    add_import_command(commands)
    add_inspect_command(commands)
    add_base_command(commands)
    add_slots_command(commands)
    add_compose_command(commands)
    add_generate_command(commands)
    add_evaluate_command(commands)
    add_compare_command(commands)
    return parser


def add_scoring_args(parser: argparse.ArgumentParser) -> None:
    """The generation and CLIP options `evaluate` and `compare` share."""
    parser.add_argument(
        "--prompts",
        default="quick-object",
        help="prompt set: quick-object (default, 4 prompts), quick-live, dreambench-object (25), dreambench-live "
        "(25), world (6, for the embedded world's concepts)",
    )
    parser.add_argument(
        "--no-base",
        action="store_true",
        help="skip the base before tuning (by default the same prompts and seeds are drawn and scored on the "
        "bare base first, and each concept's gain over it is reported)",
    )
    parser.add_argument(
        "--other-words",
        help="made-up words drawn in the token's place (every prompt with every word, at the first seed), on the "
        "base and with the concept, to measure drift: how much of the concept other words pick up; "
        "comma-separated (default: the evaluation's eight)",
    )
    parser.add_argument(
        "--no-other-words", action="store_true", help="skip the other-word images (drift is not measured)"
    )
    parser.add_argument(
        "--images", type=int, default=4, help="images per prompt, seeds SEED..SEED+N-1 (default 4)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="first seed (default 0); compare also trains with it"
    )
    parser.add_argument("--steps", type=int, default=25, help="denoising steps per image (default 25)")
    parser.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    parser.add_argument(
        "--conventions",
        default="default",
        help="metric conventions: default (raw cosine, token -> class word), custom-diffusion or mix-of-show",
    )
    parser.add_argument(
        "--backbone",
        help="open_clip architecture instead of the conventions' (default: the shipped world-clip; "
        "custom-diffusion and mix-of-show: ViT-B-32)",
    )
    parser.add_argument(
        "--weights",
        help="CLIP weights instead of the conventions' (world-clip: embedded; the presets: openai, cached "
        "locally): a pretrained tag, a checkpoint file, or 'none' for a random CLIP (smoke runs)",
    )
    add_device_flags(parser)


def add_concept_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "concepts",
        nargs="*",
        metavar="FILE[:SCALE]",
        help="concept adapter files, each with an optional scale from -10 to 10 (default 1), e.g. dog.safetensors:0.8",
    )
    parser.add_argument("--base", default=None, help=BASE_HELP)
    add_device_flags(parser)
    parser.add_argument("--force", action="store_true", help="compose even if concepts share slots")


def add_methods_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion methods`."""

    methods = commands.add_parser(
        "methods",
        help="run every adapter method once on a base UNet and print a table",
        description="For each adapter method: inject it on the base UNet, take one training step, check that the "
        "fused model equals the live one, save its file, remove it and check the UNet is restored bit for bit.",
    )
    methods.add_argument("--base", default=None, help=BASE_HELP)
    add_device_flags(methods)
    add_setting_flags(methods, setting_flags([adapter_setting("rank")]), defaults=True)
    methods.add_argument("--targets", default="attention", help=TARGETS_HELP)
    methods.add_argument(
        "--method",
        action="append",
        help=f"only this method (repeatable; default: all); one of {methods_text()}",
    )
    methods.add_argument("--out", default=None, help="folder to keep the adapter files in (default: discard)")
    methods.set_defaults(run=run_methods)


def add_app_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion app`."""
    app = commands.add_parser(
        "app",
        help="serve the web app in the browser (the same as `python app.py`; `app --help` for its options)",
        add_help=False,
    )
    app.set_defaults(run=lambda args: run_app([]))  # main() hands `app ...` over before parsing


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion train`."""
    train = commands.add_parser(
        "train",
        help="train concepts from their folders (each on its own slots) into adapter files",
        description="Train each concept folder (concept.toml + images, see concepts/) into <out>/<name>.safetensors. "
        "Several concepts train one after another on disjoint slots of <out>/slots.json, so they fuse without "
        "interference. Flags override the [train] values of concept.toml, which override the defaults.",
    )
    train.add_argument("concepts", nargs="+", metavar="FOLDER", help="concept folders, e.g. concepts/kettle")
    train.add_argument(
        "--out", required=True, help="output folder: adapters, checkpoints, samples, slots.json"
    )
    train.add_argument("--base", default=None, help=BASE_HELP)
    add_device_flags(train)
    adapter = train.add_argument_group(
        "adapter", "a flag beats the concept's [train] value, which beats the default shown"
    )
    add_setting_flags(
        adapter,
        setting_flags(adapter_settings()),
        helps={"method": f"adapter method (default: the concept's, else {adapter_setting('method').default}); "
               f"one of {methods_text()}"},
    )  # fmt: skip
    adapter.add_argument("--targets", help=TARGETS_HELP)
    training = train.add_argument_group("training", "as above: a flag beats the concept's [train] value")
    # --no-train-embedding turns off a concept's own train_embedding = true.
    add_setting_flags(training, setting_flags(settings_of(TrainConfig)), negatable=["train_embedding"])
    training.add_argument(
        "--xformers",
        action="store_const",
        const="xformers",
        dest="attention",
        help="the same as --attention xformers",
    )
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoints in --out")
    train.add_argument("--tensorboard", action="store_true", help="log loss, lr and samples to <out>/logs")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train)


def add_export_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion export`."""
    # Additive methods (W' - W0 independent of W0) export as exact LoRA factors; the others cannot.
    additive = [m for m in adapters.available() if adapters.get(m).additive]
    rescaling = [m for m in adapters.available() if m not in additive]
    export = commands.add_parser(
        "export",
        help="export a concept to the diffusers or kohya LoRA layout (A1111, ComfyUI, load_lora_weights)",
        description=f"Writes exact LoRA factors for {and_joined(additive)}. {and_joined(rescaling)} have no "
        "exact LoRA form (their update rescales the base weight): fuse them with "
        "`bora-diffusion compose FILE --save FOLDER` instead. kohya files name layers as sd-scripts does: "
        "diffusers module paths (lora_unet_down_blocks_...) for SD 1.x/2.x, SDXL's original names "
        "(lora_unet_input_blocks_4_1_...) and ss_base_model_version sdxl_base_v1-0 for SDXL. A concept "
        "trained with --train-embedding also gets its token's vector as <out stem>.embedding.safetensors, a "
        "textual-inversion file.",
    )
    export.add_argument("file", help="a bora-diffusion adapter file")
    export.add_argument("out", help="the .safetensors file to write")
    export.add_argument(
        "--layout", choices=["diffusers", "kohya"], default="diffusers", help="default diffusers"
    )
    export.add_argument(
        "--fp16", action="store_true", help="write half-precision factors (default fp32, exact)"
    )
    export.set_defaults(run=run_export)


def add_import_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion import`."""
    import_ = commands.add_parser(
        "import",
        help="import a diffusers or kohya LoRA file as a bora-diffusion lora concept",
        description="The layout is detected from the keys; text-encoder and conv parts are skipped and listed "
        "(text-encoder layers by prefix and count, with a warning: without them the concept holds only the UNet "
        "part of the LoRA and will not reproduce its full effect). FILE may be a folder written by diffusers' "
        "save_lora_weights: its pytorch_lora_weights.safetensors is read. "
        "On an SDXL base, kohya files may name layers either way: SDXL's original names "
        "(lora_unet_input_blocks_...) or diffusers-style (lora_unet_down_blocks_...).",
    )
    import_.add_argument(
        "file", help="a LoRA .safetensors file (diffusers or kohya layout), or a save_lora_weights folder"
    )
    import_.add_argument("out", help="the bora-diffusion adapter file to write")
    import_.add_argument("--base", default=None, help=BASE_HELP + " (the base the LoRA was made for)")
    import_.add_argument("--name", help="concept name (default: the file's stem)")
    import_.add_argument("--token", help="the concept's token, if the LoRA was trained with one")
    import_.add_argument("--class-word", help="the concept's class word")
    import_.set_defaults(run=run_import)


def add_inspect_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion inspect`."""
    inspect = commands.add_parser("inspect", help="show what an adapter file holds")
    inspect.add_argument("file", help="a .safetensors adapter file written by bora-diffusion")
    inspect.add_argument(
        "--verbose", action="store_true", help="also list the config's target patterns one per line"
    )
    inspect.set_defaults(run=run_inspect)


def add_base_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion base`."""
    base = commands.add_parser(
        "base",
        help="say where the base model lives; with --save, write it out as a plain diffusers folder",
        description="The embedded default lives in $BORA_DIFFUSION_HOME/embedded/ (default "
        "~/.cache/bora-diffusion/embedded/); --save DIR writes the bare base (no concept) as a diffusers folder "
        "that StableDiffusionPipeline.from_pretrained(DIR) loads, e.g. to load an export into stock diffusers.",
    )
    base.add_argument("--base", default=None, help=BASE_HELP)
    base.add_argument("--save", help="write the base to this folder in diffusers layout")
    base.set_defaults(run=run_base)


def add_slots_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion slots`."""
    slots = commands.add_parser("slots", help="show a slot ledger: which concept owns which indices")
    slots.add_argument("ledger", help="a slots.json ledger (training writes one next to its adapter files)")
    slots.set_defaults(run=run_slots)


def add_compose_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion compose`."""
    compose = commands.add_parser(
        "compose",
        help="check how concept files interfere, optionally fuse them and save the fused pipeline",
        description="Load concept files onto the base, report slot overlaps and interference per layer "
        "(JSON with --report, one line on screen), and with --save write the fused pipeline in diffusers layout.",
    )
    add_concept_args(compose)
    compose.add_argument("--report", help="write the per-layer interference report to this JSON file")
    compose.add_argument("--save", help="fuse the concepts and save the whole pipeline to this folder")
    compose.set_defaults(run=run_compose)


def add_generate_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion generate`."""
    generate = commands.add_parser(
        "generate",
        help="generate images with concepts: every prompt with every seed, a manifest and a grid",
        description="Prompts may use the concepts' tokens, e.g. 'a photo of <zq-kettle> kettle on a table'. "
        "Defaults differ from stock diffusers' (50 steps, guidance 7.5): 25 steps, to draw in half the time, "
        "and guidance 3 on the embedded base, a model so small it over-saturates under strong guidance (it "
        "follows prompts best at 3: scripts/bench_base.py), 7.5 on any other base. Pass --steps 50 --guidance "
        "7.5 to draw as stock diffusers does. Scales (FILE:SCALE) go from -10 to 10.",
    )
    add_concept_args(generate)
    generate.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    generate.add_argument(
        "--seed", type=int, action="append", help="a seed from 0 to 2**64-1 (repeatable; default 0 1 2 3)"
    )
    generate.add_argument("--negative", default="", help="negative prompt")
    generate.add_argument("--steps", type=int, default=25, help="denoising steps (default 25; diffusers: 50)")
    generate.add_argument("--guidance", type=float, help=GUIDANCE_HELP + "; diffusers: 7.5")
    generate.add_argument(
        "--resolution", type=int, help="height and width, a multiple of 8 (default: the model's native size)"
    )
    generate.add_argument("--height", type=int, help="image height, a multiple of 8 (overrides --resolution)")
    generate.add_argument("--width", type=int, help="image width, a multiple of 8 (overrides --resolution)")
    generate.add_argument("--fuse", action="store_true", help="fuse the concepts into the weights (faster)")
    generate.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="BOX=PROMPT",
        help="a region drawn with its own prompt, the --prompt being the global one around it (repeatable): "
        "BOX is x0,y0,x1,y1 in fractions of the image (0,0 the top left), or a mask image (white inside), e.g. "
        "'0,0,0.5,1=a huzd circle'. Inside it only the concepts whose token its prompt names are active (live; "
        "--fuse cannot separate them). Boxes may not overlap",
    )
    generate.add_argument(
        "--place",
        action="append",
        default=[],
        metavar="BOX=WORD",
        help="draw what WORD of the prompt names inside BOX, by layout guidance (repeatable; not with --region): "
        "BOX is x0,y0,x1,y1 in fractions of the image, WORD one word of every prompt, e.g. a concept token: "
        "--prompt 'a huzd circle to the left of a zorp star' --place 0,0,0.5,1=huzd --place 0.5,0,1,1=zorp",
    )
    generate.add_argument(
        "--compile", action="store_true", help="compile the UNet with torch.compile first (slow first step, faster "
        "after; uncompiled, saying why, where inductor cannot run)",
    )  # fmt: skip
    generate.add_argument(
        "--out", required=True, help="output folder for the images, manifest.json and grid.png"
    )
    generate.set_defaults(run=run_generate)


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion evaluate`."""
    evaluate = commands.add_parser(
        "evaluate",
        help="generate with trained concepts, alone and composed, and score CLIP-T, CLIP-I and retention",
        description="For each concept file: fill the prompt set with its token and class word, generate every "
        "prompt with N seeds, score each image against its prompt (CLIP-T) and against the concept's reference "
        "images (CLIP-I). With two or more concepts the same prompts and seeds are generated again with all of "
        "them composed, and each concept's retention (composed / alone) is reported. Writes images, per-image "
        "reports and <out>/evaluation.json; prints one line per concept.",
        epilog="example: bora-diffusion evaluate runs/a/kettle.safetensors=concepts/kettle "
        "runs/a/robot.safetensors=concepts/robot --out runs/a/eval --images 4. CLIP weights must be cached "
        "locally (nothing is downloaded); --weights none scores with a random CLIP, for smoke runs only.",
    )
    evaluate.add_argument(
        "concepts",
        nargs="+",
        metavar="FILE=FOLDER[@PROMPTS]",
        help="a concept adapter file and the folder of its reference images, e.g. "
        "runs/a/kettle.safetensors=concepts/kettle (the concept folder it was trained from works); "
        "@PROMPTS gives this concept its own prompt set, e.g. runs/a/dog.safetensors=concepts/dog@quick-live",
    )
    evaluate.add_argument("--out", required=True, help="output folder: images, reports, evaluation.json")
    evaluate.add_argument("--base", default=None, help=BASE_HELP)
    evaluate.add_argument(
        "--no-composed", action="store_true", help="score each concept alone only (skip the composition)"
    )
    evaluate.add_argument(
        "--live", action="store_true", help="compose live instead of fused into the weights (same images)"
    )
    evaluate.add_argument(
        "--force",
        action="store_true",
        help="compose even if concepts share slots (trained on separate ledgers)",
    )
    add_scoring_args(evaluate)
    evaluate.set_defaults(run=run_evaluate)


def add_compare_command(commands: argparse._SubParsersAction) -> None:
    """`bora-diffusion compare`."""
    compare = commands.add_parser(
        "compare",
        help="train the same concepts with several methods at matched budgets, evaluate, tabulate and chart",
        description="Trains every concept folder with each --method (same steps, learning rate, batch, "
        "resolution and seed; ranks matched by trainable-parameter count unless --rank-rule rank), each method's "
        "concepts on disjoint slots, then evaluates them alone and composed like `evaluate`. Writes "
        "<out>/comparison.md, .csv, .json and a bar chart comparison.png (methods as rows, CLIP-T / CLIP-I per "
        "concept). Concept folders give the references; their [train] settings are not used, so every method "
        "trains under the same budget.",
        epilog="example: bora-diffusion compare concepts/kettle concepts/robot --method lora --method sbora_fa "
        "--rank 4 --train-steps 200 --out runs/compare",
    )
    compare.add_argument(
        "concepts", nargs="+", metavar="FOLDER", help="concept folders, e.g. concepts/kettle"
    )
    compare.add_argument(
        "--out", required=True, help="output folder: one subfolder per method, the tables, chart"
    )
    compare.add_argument("--base", default=None, help=BASE_HELP)
    compare.add_argument(
        "--method",
        action="append",
        help=f"a method to compare (repeatable; the first is the budget reference; default lora and sbora_fa); "
        f"one of {methods_text()}",
    )
    add_setting_flags(
        compare,
        setting_flags([adapter_setting("rank")]),
        helps={"rank": "the first method's rank (default 4)"},
        defaults=True,
    )
    compare.add_argument(
        "--rank-rule",
        choices=["params", "rank"],
        default="params",
        help="params (default): every other method at the rank with the nearest trainable-parameter count; "
        "rank: every method at --rank",
    )
    add_setting_flags(compare, setting_flags(option_settings()))
    compare.add_argument("--targets", default="attention", help=TARGETS_HELP)
    training = compare.add_argument_group(
        "training", "the same for every method; --seed (below) seeds training too"
    )
    add_setting_flags(training, compare_train_flags())
    compare.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    compare.add_argument("--quiet", action="store_true", help="no training progress bar")
    add_scoring_args(compare)
    compare.set_defaults(run=run_compare)
