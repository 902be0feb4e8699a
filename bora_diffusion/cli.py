"""The `bora-diffusion` command: thin subcommands over the library.

Every user mistake surfaces as one line `error: ...` on stderr and exit status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

# Offline by default: never hang on a model hub this machine cannot reach. A user with network access can
# export HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from . import __version__
from .errors import BoraError

METHODS = "lora, dora, sbora_fa, sbora_fb, ortho, bora_block, bora_bidim"
GUIDANCE_HELP = "classifier-free guidance scale (default: 3 on the embedded base, 7.5 on others)"
DEVICE_HELP = (
    "cuda, cuda:N or cpu (default: cuda when available; under a multi-process launch, each process's GPU)"
)
BASE_HELP = "base model: 'embedded' (default, tiny, offline), a local diffusers folder, or a hub id"
# How long a process other than the main one waits before it reports an error itself (see `main`).
ERROR_GRACE_SECONDS = 10.0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["app"]:
        return run_app(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)  # to repeat the command line in hints, such as how to resume
    try:
        return args.run(args)
    except BoraError as error:
        rank = process_rank()
        if rank:
            # Under a multi-process launch a user's mistake reaches every process; the main one says it. The
            # launcher ends the others once it exits, so this one speaks only if the mistake was its alone.
            time.sleep(ERROR_GRACE_SECONDS)
            print(f"error: (process {rank}) {error}", file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2


def process_rank() -> int:
    """This process's rank under a launcher that starts several (accelerate launch, torchrun, mpirun); 0 when
    alone. Read from the launcher's environment, so that it needs no process group."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _device(args: argparse.Namespace) -> str:
    """Where the base runs: `--device`, else this process's GPU (under a multi-process launch, the one its local
    rank names, as accelerate assigns them), else the CPU."""
    import torch

    from .errors import ConfigError

    if getattr(args, "device", None):
        try:
            kind = torch.device(args.device).type
        except RuntimeError:
            raise ConfigError(f"--device {args.device!r} is not a device: give cuda, cuda:N or cpu") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"--device {args.device}: no CUDA GPU is visible to torch here; use --device cpu"
            )
        return args.device
    if not torch.cuda.is_available():
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK", "")
    return f"cuda:{local_rank}" if local_rank.isdigit() else "cuda"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bora-diffusion",
        description="Concept tuning for Stable Diffusion with adapters that merge without concept bleeding.",
    )
    parser.add_argument("--version", action="version", version=f"bora-diffusion {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    methods = commands.add_parser(
        "methods",
        help="run every adapter method once on a base UNet and print a table",
        description="For each adapter method: inject it on the base UNet, take one training step, check that the "
        "fused model equals the live one, save its file, remove it and check the UNet is restored bit for bit.",
    )
    methods.add_argument("--base", default=None, help=BASE_HELP)
    methods.add_argument("--device", help=DEVICE_HELP)
    methods.add_argument("--rank", type=int, default=4, help="adapter rank r (default 4)")
    methods.add_argument(
        "--targets", default="attention", help="attention (default), cross_kv or self_attention"
    )
    methods.add_argument("--method", action="append", help="only this method (repeatable); default: all")
    methods.add_argument("--out", default=None, help="folder to keep the adapter files in (default: discard)")
    methods.set_defaults(run=run_methods)

    app = commands.add_parser(
        "app",
        help="serve the web app in the browser (the same as `python app.py`; `app --help` for its options)",
        add_help=False,
    )
    app.set_defaults(run=lambda args: run_app([]))  # main() hands `app ...` over before parsing

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
    train.add_argument("--device", help=DEVICE_HELP)
    train.add_argument(
        "--method", help=f"adapter method (default: the concept's, else sbora_fa); one of {METHODS}"
    )
    train.add_argument("--rank", type=int, help="adapter rank r (default 4)")
    train.add_argument(
        "--alpha", type=float, help="alpha; the update is scaled by alpha / rank (default: rank)"
    )
    train.add_argument("--blocks", type=int, help="blocks b of bora_block (default 4)")
    train.add_argument("--targets", help="attention (default), cross_kv or self_attention")
    train.add_argument("--steps", type=int, help="optimizer steps (default 200)")
    train.add_argument("--lr", type=float, dest="learning_rate", help="learning rate (default 1e-3)")
    train.add_argument("--schedule", dest="lr_schedule", help="constant (default), cosine, linear, ...")
    train.add_argument("--warmup", type=int, dest="warmup_steps", help="warmup steps (default 0)")
    train.add_argument("--batch-size", type=int, help="images per step (default 1)")
    train.add_argument("--accumulate", type=int, dest="gradient_accumulation", help="micro-batches per step")
    train.add_argument(
        "--resolution", type=int, help="training resolution in px (default 64, the embedded base's)"
    )
    train.add_argument("--prior-weight", type=float, help="prior preservation weight (0 = off)")
    train.add_argument(
        "--lock-weight",
        type=float,
        help="keep the keys and values of the concept's captions without its token (0 = off; bora_diffusion.locking)",
    )
    train.add_argument(
        "--word-lock-weight",
        type=float,
        help="keep the other words of the captions as the trained token embedding found them (0 = off)",
    )
    train.add_argument(
        "--snr-gamma",
        type=float,
        help="Min-SNR-gamma loss weighting, kohya's --min_snr_gamma (default off; 5 is the paper's)",
    )
    train.add_argument("--class-images", type=int, help="class images for prior preservation (default 16)")
    train.add_argument(
        "--checkpoint-every", type=int, help="checkpoint every N steps (a final one is always kept)"
    )
    train.add_argument("--sample-every", type=int, help="generate the concept's sample prompts every N steps")
    train.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="GPU mixed precision")
    train.add_argument(
        "--gradient-checkpointing", action="store_true", default=None, help="trade compute for memory"
    )
    train.add_argument(
        "--xformers", action="store_const", const="xformers", dest="attention", help="xformers attention"
    )
    train.add_argument(
        "--adam-8bit", action="store_true", default=None, help="8-bit AdamW (needs bitsandbytes)"
    )
    train.add_argument(
        "--train-embedding",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train the token's own text embedding, as textual inversion / ED-LoRA do (default: the "
        "concept's train_embedding, else off)",
    )
    train.add_argument(
        "--embedding-lr",
        type=float,
        dest="embedding_learning_rate",
        help="learning rate of the token embedding (default: --lr)",
    )
    train.add_argument(
        "--embedding-vectors",
        type=int,
        help="vectors the trained token stands for, written tok tok_1 ... as diffusers does (default: the "
        "concept's embedding_vectors, else 1)",
    )
    train.add_argument(
        "--seed", type=int, help="seed of initialization, batches, noise and slots (default 0)"
    )
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoints in --out")
    train.add_argument("--tensorboard", action="store_true", help="log loss, lr and samples to <out>/logs")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train)

    export = commands.add_parser(
        "export",
        help="export a concept to the diffusers or kohya LoRA layout (A1111, ComfyUI, load_lora_weights)",
        description="Writes exact LoRA factors for lora, sbora_fa, sbora_fb, ortho and bora_block. dora and "
        "bora_bidim have no exact LoRA form (their update rescales the base weight): fuse them with "
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

    inspect = commands.add_parser("inspect", help="show what an adapter file holds")
    inspect.add_argument("file", help="a .safetensors adapter file written by bora-diffusion")
    inspect.add_argument(
        "--verbose", action="store_true", help="also list the config's target patterns one per line"
    )
    inspect.set_defaults(run=run_inspect)

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

    slots = commands.add_parser("slots", help="show a slot ledger: which concept owns which indices")
    slots.add_argument("ledger", help="a slots.json ledger (training writes one next to its adapter files)")
    slots.set_defaults(run=run_slots)

    compose = commands.add_parser(
        "compose",
        help="check how concept files interfere, optionally fuse them and save the fused pipeline",
        description="Load concept files onto the base, report slot overlaps and interference per layer "
        "(JSON with --report, one line on screen), and with --save write the fused pipeline in diffusers layout.",
    )
    _add_concept_args(compose)
    compose.add_argument("--report", help="write the per-layer interference report to this JSON file")
    compose.add_argument("--save", help="fuse the concepts and save the whole pipeline to this folder")
    compose.set_defaults(run=run_compose)

    generate = commands.add_parser(
        "generate",
        help="generate images with concepts: every prompt with every seed, a manifest and a grid",
        description="Prompts may use the concepts' tokens, e.g. 'a photo of <zq-kettle> kettle on a table'. "
        "Defaults differ from stock diffusers' (50 steps, guidance 7.5): 25 steps, to draw in half the time, "
        "and guidance 3 on the embedded base, a model so small it over-saturates under strong guidance (it "
        "follows prompts best at 3: scripts/bench_base.py), 7.5 on any other base. Pass --steps 50 --guidance "
        "7.5 to draw as stock diffusers does. Scales (FILE:SCALE) go from -10 to 10.",
    )
    _add_concept_args(generate)
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
        "--out", required=True, help="output folder for the images, manifest.json and grid.png"
    )
    generate.set_defaults(run=run_generate)

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
    _add_scoring_args(evaluate)
    evaluate.set_defaults(run=run_evaluate)

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
        f"one of {METHODS}",
    )
    compare.add_argument("--rank", type=int, default=4, help="the first method's rank (default 4)")
    compare.add_argument(
        "--rank-rule",
        choices=["params", "rank"],
        default="params",
        help="params (default): every other method at the rank with the nearest trainable-parameter count; "
        "rank: every method at --rank",
    )
    compare.add_argument("--blocks", type=int, help="blocks b of bora_block (default 4)")
    compare.add_argument(
        "--targets", default="attention", help="attention (default), cross_kv or self_attention"
    )
    compare.add_argument(
        "--train-steps", type=int, default=200, help="optimizer steps per concept (default 200)"
    )
    compare.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    compare.add_argument(
        "--resolution",
        type=int,
        default=64,
        help="training resolution in px (default 64, the embedded base's)",
    )
    compare.add_argument(
        "--train-embedding",
        action="store_true",
        help="also train each concept token's own text embedding (textual inversion / ED-LoRA), for every method",
    )
    compare.add_argument(
        "--embedding-lr", type=float, help="learning rate of the token embeddings (default: --lr)"
    )
    compare.add_argument(
        "--embedding-vectors", type=int, default=1, help="vectors per trained token embedding (default 1)"
    )
    compare.add_argument(
        "--lock-weight",
        type=float,
        default=0.0,
        help="lock the prompts without each concept's token, for every method (0 = off; bora_diffusion.locking)",
    )
    compare.add_argument(
        "--word-lock-weight",
        type=float,
        default=0.0,
        help="with --train-embedding: keep the other words of each concept's captions (0 = off)",
    )
    compare.add_argument(
        "--snr-gamma", type=float, help="Min-SNR-gamma loss weighting for every method (default off)"
    )
    compare.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    compare.add_argument("--quiet", action="store_true", help="no training progress bar")
    _add_scoring_args(compare)
    compare.set_defaults(run=run_compare)
    return parser


def _add_scoring_args(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--device", help=DEVICE_HELP)


def _add_concept_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "concepts",
        nargs="*",
        metavar="FILE[:SCALE]",
        help="concept adapter files, each with an optional scale from -10 to 10 (default 1), e.g. dog.safetensors:0.8",
    )
    parser.add_argument("--base", default=None, help=BASE_HELP)
    parser.add_argument("--device", help=DEVICE_HELP)
    parser.add_argument("--force", action="store_true", help="compose even if concepts share slots")


def run_app(options: list[str]) -> int:
    """The app parses its own options (--host, --port, --auth, --base, --data), so they pass through whole."""
    from .app import main as app_main

    return app_main(options)


def run_methods(args: argparse.Namespace) -> int:
    from .pipeline import base_name, load_base
    from .selfcheck import check_methods

    pipe = load_base(args.base, device=_device(args))
    name = base_name(args.base)
    layers = None
    print(f"base: {name}   rank: {args.rank}   targets: {args.targets}")
    header = f"{'method':<11} {'layers':>6} {'trainable':>10} {'file KiB':>9} {'step s':>7} {'loss before > after':>20} {'|fused-live|':>13} restored"
    print(header)
    print("-" * len(header))

    def show(result) -> None:
        nonlocal layers
        layers = result.layers
        print(
            f"{result.method:<11} {result.layers:>6} {result.trainable:>10,} {result.file_bytes / 1024:>9.1f} "
            f"{result.step_seconds:>7.3f} {result.loss_before:>9.4f} > {result.loss_after:<8.4f} {result.fuse_error:>13.2e} "
            f"{'bit-exact' if result.restored_exactly else 'NO'}"
        )

    results = check_methods(
        pipe.unet,
        base_name=name,
        rank=args.rank,
        targets=args.targets,
        methods=args.method,
        out_dir=args.out,
        on_result=show,
    )
    failed = [
        r.method
        for r in results
        if not r.restored_exactly or r.fuse_error > 1e-3 or not r.loss_after < r.loss_before
    ]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(results)} methods: one step lowers the loss, fused == live, UNet restored bit for bit")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from .formats import read_adapter

    info = read_adapter(args.file)
    params = sum(t.numel() for k, t in info.tensors.items() if not k.endswith(".index"))
    print(f"file:        {info.path}")
    print(f"concept:     {info.name}   token: {info.token or '-'}   class word: {info.class_word or '-'}")
    if info.token_embeddings:
        vectors = len(info.token_embeddings[0])
        widths = " + ".join(str(rows.shape[1]) for rows in info.token_embeddings)
        encoders = "both text encoders" if len(info.token_embeddings) == 2 else "the text encoder"
        print(
            f"embedding:   the token's own text embedding, trained on {encoders} ({vectors} x {widths} values)"
        )
    print(f"method:      {info.config.method}   rank: {info.config.rank}   scaling: {info.config.scaling:g}")
    config = info.config.to_dict()
    targets = config.pop("targets")
    patterns = [targets] if isinstance(targets, str) else list(targets)
    # An import targets each layer by its own escaped regex: dozens of them say less than the per-block count.
    shown = patterns[0] if len(patterns) == 1 else f"{len(patterns)} module patterns"
    print(
        f"config:      {config}   targets: {shown}{'' if args.verbose or len(patterns) == 1 else ' (--verbose lists them)'}"
    )
    print(f"base model:  {info.base_name}   fingerprint: {info.fingerprint}")
    print(f"layers:      {len(info.layers)}   tensors: {len(info.tensors)}   values: {params:,}")
    print(f"per block:   {_layers_per_block(info.layers)}")
    if args.verbose and len(patterns) > 1:
        for pattern in patterns:
            print(f"  target {pattern}")
    if info.slot_space:
        slots = info.slots()
        first = next(iter(slots))
        print(
            f"slots:       {info.slot_space} space, ledger seed {info.slot_seed}; e.g. {first}: {slots[first].tolist()}"
        )
    print(f"written by:  bora-diffusion {info.library_version}")
    return 0


def _layers_per_block(layers) -> str:
    """ "down_blocks.1: 8 (attn1 4, attn2 4), mid_block: 8 (...)": module paths counted by UNet block and by
    self- (attn1) or cross-attention (attn2), in the order the file lists them."""
    counts: dict[str, dict[str, int]] = {}
    for path in layers:
        parts = path.split(".")
        block = ".".join(parts[:2]) if parts[0].endswith("blocks") and len(parts) > 1 else parts[0]
        kind = next((p for p in parts if p.startswith("attn")), "other")
        counts.setdefault(block, {}).setdefault(kind, 0)
        counts[block][kind] += 1
    return ", ".join(
        f"{block}: {sum(kinds.values())} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"
        for block, kinds in counts.items()
    )


def _parse_concepts(items: list[str]) -> list[tuple[str, float]]:
    """'dog.safetensors:0.8' -> ('dog.safetensors', 0.8); a path without ':SCALE' gets 1.0. A scale of nan, inf
    or beyond MAX_SCALE is refused here, before any model is loaded."""
    from .merge import check_scale

    parsed = []
    for item in items:
        path, sep, scale = item.rpartition(":")
        if sep and path and _is_number(scale):
            parsed.append((path, check_scale(float(scale), item)))
        else:
            parsed.append((item, 1.0))
    return parsed


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _composed(args: argparse.Namespace, *, fuse: bool):
    from .merge import compose
    from .pipeline import base_name, load_base

    files = _parse_concepts(args.concepts)  # a bad scale is refused before the base loads
    pipe = load_base(args.base, device=_device(args))
    report = compose(pipe, files, fuse=fuse, force=args.force)
    base = base_name(args.base)
    for concept in report.concepts.values():
        if concept["base_model"] != base:  # its layers fit (compose checked), but its weights were other ones
            print(
                f"note: {concept['file']} was trained on base {concept['base_model']!r}, not {base!r}; "
                "its layers fit, its look may not"
            )
    return pipe, report


def run_compose(args: argparse.Namespace) -> int:
    from .errors import ConfigError

    if not args.concepts:
        raise ConfigError("compose needs at least one concept file")
    from .atomic import atomic_folder, check_pipeline_folder, check_writable

    if args.save:
        check_pipeline_folder(args.save)
    if args.report:
        check_writable(args.report, folder=False, what="--report")
    pipe, report = _composed(args, fuse=bool(args.save))
    print(report.summary())
    if args.report:
        report.save(args.report)
        print(f"report: {args.report}")
    if args.save:
        from .embeddings import bake_tokens
        from .inject import bake

        bake(pipe.unet)  # plain Linears holding the fused weights: any diffusers tool can load the folder
        from .text import PromptEncoder

        for encoder in PromptEncoder(pipe).encoders:  # trained token embeddings become rows of a plain matrix
            bake_tokens(encoder)
        from .embedded import silenced_progress_bars

        # Into a temporary sibling, renamed at the end: a full disk leaves no half pipeline behind.
        with silenced_progress_bars(), atomic_folder(args.save) as staging:
            pipe.save_pretrained(staging)
        print(f"fused pipeline: {args.save}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from .atomic import check_writable
    from .generate import SamplingSettings, check_request, generate
    from .pipeline import base_name

    seeds = args.seed or [0, 1, 2, 3]
    check_request(args.prompt, seeds)  # every number and path checked before the base loads
    check_writable(args.out, folder=True, what="--out")
    height = args.height if args.height is not None else args.resolution
    width = args.width if args.width is not None else args.resolution
    settings = SamplingSettings(
        steps=args.steps, guidance=_guidance(args), negative_prompt=args.negative, height=height, width=width
    )
    pipe, report = _composed(args, fuse=args.fuse)
    record = {"base_model": base_name(args.base), "fused": args.fuse, "concepts": report.concepts}
    result = generate(pipe, args.prompt, seeds, args.out, settings=settings, record=record)
    if report.concepts:
        print(report.summary())
    print(f"{len(result.images)} images, grid {result.grid}, manifest {result.manifest}")
    return 0


def run_base(args: argparse.Namespace) -> int:
    from .atomic import atomic_folder, check_pipeline_folder
    from .embedded import ensure_embedded_default, silenced_progress_bars
    from .pipeline import EMBEDDED_ALIASES, base_name, load_base

    if args.base is None or args.base in EMBEDDED_ALIASES:
        print(f"{base_name(args.base)}: {ensure_embedded_default()}")  # written there on first use
    else:
        print(f"base: {args.base}")
    if args.save:
        check_pipeline_folder(args.save)
        pipe = load_base(args.base)
        with silenced_progress_bars(), atomic_folder(args.save) as staging:  # nothing half-written is left
            pipe.save_pretrained(staging)
        print(f"diffusers folder: {args.save} (StableDiffusionPipeline.from_pretrained loads it)")
    return 0


def run_slots(args: argparse.Namespace) -> int:
    from .slots import SPACES, SlotLedger

    ledger = SlotLedger.load(args.ledger)
    print(f"ledger: {args.ledger}   seed: {ledger.seed}   concepts: {len(ledger.concepts())}")
    for concept in ledger.concepts():
        for space in SPACES:
            slots = ledger.slots(concept, space)
            if slots:
                layer, indices = next(iter(slots.items()))
                print(
                    f"{concept:<20} {space:<6} {len(slots):>4} layers, rank {len(indices)}; e.g. {layer}: {indices}"
                )
    return 0


ADAPTER_FLAGS = ("method", "rank", "alpha", "blocks", "targets")
TRAIN_FLAGS = (
    "steps", "learning_rate", "lr_schedule", "warmup_steps", "batch_size", "gradient_accumulation", "resolution",
    "prior_weight", "lock_weight", "word_lock_weight", "class_images", "checkpoint_every", "sample_every",
    "mixed_precision", "gradient_checkpointing", "attention", "adam_8bit", "train_embedding",
    "embedding_learning_rate", "embedding_vectors", "snr_gamma", "seed",
)  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from .atomic import check_writable
    from .callbacks import ProgressBar, TensorBoardLog
    from .concept import DEFAULT_MIN_SIZE, load_concepts
    from .pipeline import base_name, load_base
    from .train import train_concepts

    check_writable(args.out, folder=True, what="--out")
    min_size = args.resolution or DEFAULT_MIN_SIZE
    # Folders first, with the CLIP tokenizer SD 1.x, 2.x and SDXL share: a refusal costs no base load.
    load_concepts(args.concepts, min_size=min_size)
    pipe = load_base(args.base, device=_device(args))
    concepts = load_concepts(args.concepts, min_size=min_size, tokenizer=pipe.tokenizer)
    _note_transparency(concepts)
    adapter_flags = {key: getattr(args, key) for key in ADAPTER_FLAGS}
    train_flags = {key: getattr(args, key) for key in TRAIN_FLAGS}
    jobs = []
    for concept in concepts:
        adapter = concept.train.adapter_config(default_method="sbora_fa", **adapter_flags)
        config = concept.train.train_config(**train_flags)
        if not config.sample_prompts and config.sample_every:
            config = dataclasses.replace(
                config, sample_prompts=tuple(concept.fill(p) for p in concept.prompts.sample_prompts)
            )
        jobs.append((concept, adapter, config))
    main_process = process_rank() == 0  # under a multi-process launch one bar, one log, one report
    callbacks = [] if args.quiet or not main_process else [ProgressBar()]
    if args.tensorboard and main_process:
        callbacks.append(TensorBoardLog(Path(args.out) / "logs"))
    try:
        paths = train_concepts(
            pipe,
            jobs,
            out_dir=args.out,
            base_name=base_name(args.base),
            callbacks=callbacks,
            resume=args.resume,
        )
    except KeyboardInterrupt:
        if main_process:
            print(_interrupted_message(args), file=sys.stderr)
        return 130
    if not main_process:
        return 0
    for (concept, adapter, config), path in zip(jobs, paths, strict=True):
        token = f", token {concept.token!r} trained too" if config.train_embedding else ""
        print(f"{concept.name}: {adapter.method} rank {adapter.rank}, {config.steps} steps{token} -> {path}")
    print(f"slots: {Path(args.out) / 'slots.json'}")
    return 0


def _note_transparency(concepts) -> None:
    """Say which images training flattens onto white (data.flatten), so no one wonders at the background."""
    from PIL import Image

    from .data import has_transparency

    for concept in concepts:
        flat = []
        for image in concept.images:
            with Image.open(image) as opened:
                if has_transparency(opened):
                    flat.append(image.name)
        if flat:
            print(
                f"{concept.name}: {', '.join(flat)} have transparent pixels: flattened onto white",
                file=sys.stderr,
            )


def _interrupted_message(args: argparse.Namespace) -> str:
    from .train import CHECKPOINTS, newest_checkpoint

    root = Path(args.out) / CHECKPOINTS
    steps = [found for folder in sorted(root.glob("*")) if (found := newest_checkpoint(folder)) is not None]
    argv = " ".join(getattr(args, "argv", None) or ["train", *args.concepts, "--out", str(args.out)])
    resume = argv if "--resume" in argv.split() else f"{argv} --resume"
    if not steps:
        return (
            f"interrupted before the first checkpoint; nothing to resume: run `bora-diffusion {argv}` again"
        )
    step = max(int(path.name.split("-")[1]) for path in steps)
    return f"interrupted; the checkpoint of step {step} in {root} is intact; resume with `bora-diffusion {resume}`"


def _guidance(args: argparse.Namespace) -> float:
    from .pipeline import default_guidance

    return default_guidance(args.base) if args.guidance is None else args.guidance


def _scores_text(scores) -> str:
    """ "CLIP-T 0.2810  CLIP-I 0.3340  identity 0.83  context 0.92" (identity only in runs of two or more
    concepts, context only on prompts in the world's grammar)."""
    text = f"CLIP-T {scores.clip_t:.4f}  CLIP-I {scores.clip_i:.4f}"
    if scores.identity is not None:
        text += f"  identity {scores.identity:.2f}"
    return text if scores.context is None else f"{text}  context {scores.context:.2f}"


def _scoring(args: argparse.Namespace):
    """(device, pipeline, scorer, run settings) from the shared options; the scorer loads before the base, so
    missing CLIP weights fail before anything else is loaded."""

    from .evaluation import RunSettings, preset
    from .evaluation.run_settings import OTHER_WORDS
    from .generate import SamplingSettings
    from .pipeline import load_base
    from .world.scoring import WorldScorer as ClipScorer

    device = _device(args)
    overrides: dict[str, object] = {}
    if args.backbone:
        overrides["backbone"] = args.backbone
    if args.weights:
        overrides["weights"] = None if args.weights.lower() == "none" else args.weights
    settings = RunSettings(
        prompt_set=args.prompts,
        images_per_prompt=args.images,
        seed=args.seed,
        sampling=SamplingSettings(steps=args.steps, guidance=_guidance(args)),
        before=not args.no_base,
        composed=not getattr(args, "no_composed", False),
        fuse=not getattr(args, "live", False),
        force=getattr(args, "force", False),
        # Drift is read against the base with the same words: without the base, their images would say nothing.
        other_words=() if args.no_other_words or args.no_base else _words(args.other_words) or OTHER_WORDS,
    )
    scorer = ClipScorer(preset(args.conventions, **overrides), device=device)
    pipe = load_base(args.base, device=device)
    return pipe, scorer, settings


def _words(text: str | None) -> tuple[str, ...]:
    """'qorb,vlok' -> ('qorb', 'vlok'); None -> ()."""
    return tuple(word.strip() for word in text.split(",")) if text else ()


def _print_progress(message: str, done: int, total: int) -> None:
    if message != "done":
        print(f"[{done + 1}/{total}] {message}", file=sys.stderr)


def _parse_evaluated(items: list[str]):
    """'kettle.safetensors=concepts/kettle[@quick-live]' -> EvalConcept; the reference folder is required, the
    prompt set after '@' is optional (default: --prompts)."""
    from .errors import ConfigError
    from .evaluation import EvalConcept, load_prompt_set, prompt_sets

    parsed = []
    for item in items:
        file, sep, folder = item.partition("=")
        if not sep or not file or not folder:
            raise ConfigError(
                f"{item!r} names no reference folder: write FILE=FOLDER, e.g. "
                "runs/a/kettle.safetensors=concepts/kettle (the folder of the concept's own images)"
            )
        prompt_set = None
        head, at, tail = folder.rpartition("@")
        if at and (tail in prompt_sets() or not Path(folder).exists()):
            load_prompt_set(tail)  # an unknown set name fails here, listing the known ones
            folder, prompt_set = head, tail
        parsed.append(EvalConcept(Path(file), Path(folder), prompt_set=prompt_set))
    return parsed


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_concepts, reference_images
    from .evaluation.results import RETENTION_MIN_SEMS, format_ratio
    from .formats import read_adapter
    from .pipeline import base_name

    concepts = _parse_evaluated(args.concepts)
    for concept in concepts:  # cheap checks first: a typo fails before CLIP and the base are loaded
        read_adapter(concept.file)
        reference_images(concept.references)
    pipe, scorer, settings = _scoring(args)
    report = evaluate_concepts(
        pipe,
        concepts,
        scorer,
        args.out,
        base_name=base_name(args.base),
        settings=settings,
        progress=_print_progress,
    )
    unreadable = False
    for result in report.concepts:
        if result.base is not None:
            print(f"{result.name:<12} base      {_scores_text(result.base)}")
        line = f"{result.name if result.base is None else '':<12} alone     {_scores_text(result.alone)}"
        if result.base is not None:
            line += f"  gain T {result.gain('clip_t'):+.4f} I {result.gain('clip_i'):+.4f}"
        print(line)
        if result.drift("clip_i") is not None:
            sem = result.drift_sem("clip_i")
            print(
                f"{'':<12} drift     CLIP-I {result.drift('clip_i'):+.4f}{'' if sem is None else f' +- {sem:.4f}'} "
                f"with other words in the token's place ({result.base_other.clip_i:.4f} on the base, "
                f"{result.alone_other.clip_i:.4f} tuned)"
            )
        if result.composed is not None:
            retention = {metric: result.retention(metric) for metric in ("clip_t", "clip_i")}
            unreadable |= None in retention.values()
            print(
                f"{'':<12} composed  {_scores_text(result.composed)}  "
                f"retention T {format_ratio(retention['clip_t'])} I {format_ratio(retention['clip_i'])}"
            )
    if unreadable:
        print(
            f"retention n/a: the alone mean is not {RETENTION_MIN_SEMS:g} standard errors above zero, so a ratio "
            "to it would be noise"
        )
    c = report.conventions
    print(f"conventions: {c.backbone} {c.weights or 'random init'} ({c.preset_name or 'custom'})")
    print(f"report: {Path(args.out) / 'evaluation.json'}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from .callbacks import ProgressBar
    from .concept import load_concepts
    from .config import TrainConfig
    from .evaluation import CompareConcept, CompareSettings, compare_methods
    from .pipeline import base_name

    pipe, scorer, run_settings = _scoring(args)
    concepts = load_concepts(args.concepts, min_size=args.resolution, tokenizer=pipe.tokenizer)
    settings = CompareSettings(
        methods=tuple(args.method or ("lora", "sbora_fa")),
        rank=args.rank,
        rule=args.rank_rule,
        blocks=args.blocks,
        targets=args.targets,
        train=TrainConfig(
            steps=args.train_steps,
            learning_rate=args.lr,
            resolution=args.resolution,
            seed=args.seed,
            train_embedding=args.train_embedding,
            embedding_learning_rate=args.embedding_lr,
            embedding_vectors=args.embedding_vectors,
            lock_weight=args.lock_weight,
            word_lock_weight=args.word_lock_weight,
            snr_gamma=args.snr_gamma,
        ),
        run=run_settings,
    )
    comparison = compare_methods(
        pipe,
        [CompareConcept(concept, concept.folder) for concept in concepts],
        scorer,
        args.out,
        base_name=base_name(args.base),
        settings=settings,
        callbacks=[] if args.quiet else [ProgressBar(leave=False)],
        progress=_print_progress,
        resume=args.resume,
    )
    print(comparison.markdown())
    out = Path(args.out)
    print(f"table: {out / 'comparison.md'}  csv: {out / 'comparison.csv'}  json: {out / 'comparison.json'}")
    print(f"chart: {out / 'comparison.png'}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import torch

    from .atomic import check_writable
    from .formats import embedding_path, export_diffusers, export_embedding, export_kohya, read_adapter

    check_writable(args.out, folder=False, what="--out")
    check_writable(embedding_path(args.out), folder=False, what="embedding")
    adapter = read_adapter(args.file)
    export = export_kohya if args.layout == "kohya" else export_diffusers
    dtype = torch.float16 if args.fp16 else torch.float32
    path = export(adapter, args.out, dtype=dtype)
    print(f"{args.layout} LoRA: {path}")
    embedding = export_embedding(adapter, embedding_path(args.out), dtype=dtype)
    if embedding is not None:
        print(
            f"token embedding of {adapter.token!r}: {embedding} "
            f"(diffusers: pipe.load_textual_inversion(path, token={adapter.token!r}); A1111/ComfyUI: embeddings/)"
        )
    return 0


def run_import(args: argparse.Namespace) -> int:
    from .atomic import check_writable
    from .formats import import_lora
    from .formats.convert import read_foreign
    from .pipeline import base_name, load_base

    check_writable(args.out, folder=False, what="--out")
    # A missing, unreadable or non-finite file is refused before the base loads; the import reuses what was read.
    foreign = read_foreign(args.file)
    pipe = load_base(args.base)
    report = import_lora(
        foreign,
        pipe.unet,
        args.out,
        base_name=base_name(args.base),
        name=args.name,
        token=args.token,
        class_word=args.class_word,
    )
    print(report.summary())
    print(f"concept: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
