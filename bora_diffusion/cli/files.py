"""The commands over one file or folder: `inspect`, `export` and `import` of adapter files, `base` (where the
base lives, and writing it out) and `slots` (a ledger's contents)."""

from __future__ import annotations

import argparse

from .runtime import base_pipeline


def run_inspect(args: argparse.Namespace) -> int:
    from ..formats import read_adapter

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


def run_base(args: argparse.Namespace) -> int:
    from ..atomic import atomic_folder, check_pipeline_folder
    from ..embedded import ensure_embedded_default, silenced_progress_bars
    from ..pipeline import EMBEDDED_ALIASES, base_name

    if args.base is None or args.base in EMBEDDED_ALIASES:
        print(f"{base_name(args.base)}: {ensure_embedded_default()}")  # written there on first use
    else:
        print(f"base: {args.base}")
    if args.save:
        check_pipeline_folder(args.save)
        pipe = base_pipeline(args, on_device=False)
        with silenced_progress_bars(), atomic_folder(args.save) as staging:  # nothing half-written is left
            pipe.save_pretrained(staging)
        print(f"diffusers folder: {args.save} (StableDiffusionPipeline.from_pretrained loads it)")
    return 0


def run_slots(args: argparse.Namespace) -> int:
    from ..slots import SPACES, SlotLedger

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


def run_export(args: argparse.Namespace) -> int:
    import torch

    from ..atomic import check_writable
    from ..formats import embedding_path, export_diffusers, export_embedding, export_kohya, read_adapter

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
    from ..atomic import check_writable
    from ..formats import import_lora
    from ..formats.convert import read_foreign
    from ..pipeline import base_name

    check_writable(args.out, folder=False, what="--out")
    # A missing, unreadable or non-finite file is refused before the base loads; the import reuses what was read.
    foreign = read_foreign(args.file)
    pipe = base_pipeline(args, on_device=False)
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
