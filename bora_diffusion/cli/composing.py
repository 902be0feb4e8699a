"""The commands that load concept files onto the base: `compose` (interference report, fused save) and
`generate`, with the FILE[:SCALE] arguments both take."""

from __future__ import annotations

import argparse

from .runtime import base_pipeline, guidance


def _parse_concepts(items: list[str]) -> list[tuple[str, float]]:
    """'dog.safetensors:0.8' -> ('dog.safetensors', 0.8); a path without ':SCALE' gets 1.0. A scale of nan, inf
    or beyond MAX_SCALE is refused here, before any model is loaded."""
    from ..merge import check_scale

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
    from ..merge import compose
    from ..pipeline import base_name

    files = _parse_concepts(args.concepts)  # a bad scale is refused before the base loads
    pipe = base_pipeline(args)
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
    from ..errors import ConfigError

    if not args.concepts:
        raise ConfigError("compose needs at least one concept file")
    from ..atomic import atomic_folder, check_pipeline_folder, check_writable

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
        from ..embeddings import bake_tokens
        from ..inject import bake

        bake(pipe.unet)  # plain Linears holding the fused weights: any diffusers tool can load the folder
        from ..text import PromptEncoder

        for encoder in PromptEncoder(pipe).encoders:  # trained token embeddings become rows of a plain matrix
            bake_tokens(encoder)
        from ..embedded import silenced_progress_bars

        # Into a temporary sibling, renamed at the end: a full disk leaves no half pipeline behind.
        with silenced_progress_bars(), atomic_folder(args.save) as staging:
            pipe.save_pretrained(staging)
        print(f"fused pipeline: {args.save}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from ..errors import ConfigError
    from ..generate import SamplingSettings, check_request, generate
    from ..layout_guidance import parse_placement
    from ..pipeline import base_name
    from ..regions import check_regions, parse_region, resolved

    seeds = args.seed or [0, 1, 2, 3]
    check_request(args.prompt, seeds)  # every number and path checked before the base loads
    regions = [parse_region(text, f"--region {i}") for i, text in enumerate(args.region, start=1)]
    check_regions(regions)
    placements = [parse_placement(text, f"--place {i}") for i, text in enumerate(args.place, start=1)]
    if regions and placements:
        raise ConfigError("--place: give --region or --place, not both (placement steers the plain prompt)")
    check_writable(args.out, folder=True, what="--out")
    height = args.height if args.height is not None else args.resolution
    width = args.width if args.width is not None else args.resolution
    settings = SamplingSettings(
        steps=args.steps,
        guidance=guidance(args),
        negative_prompt=args.negative,
        height=height,
        width=width,
        compile=args.compile,
    )
    pipe, report = _composed(args, fuse=args.fuse)
    record = {"base_model": base_name(args.base), "fused": args.fuse, "concepts": report.concepts}
    regions = resolved(regions, {name: concept["token"] for name, concept in report.concepts.items()})
    for region in regions:
        if report.concepts and not region.concepts:
            print(f"note: {region.where} names no loaded concept's token; live, it draws with the base alone")
    result = generate(
        pipe,
        args.prompt,
        seeds,
        args.out,
        settings=settings,
        record=record,
        regions=regions,
        placements=placements,
    )
    if report.concepts:
        print(report.summary())
    print(f"{len(result.images)} images, grid {result.grid}, manifest {result.manifest}")
    return 0
