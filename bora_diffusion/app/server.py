"""`python app.py` / `bora-diffusion app`: parse the options, build the app, serve it.

Serves on 127.0.0.1 unless told otherwise; any other host needs `--auth user:password`, because the app trains,
writes and deletes files on the machine it runs on. Offline by default, like the CLI.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_UPLOAD = "20mb"  # the server refuses bigger files before they reach the app's own checks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bora-diffusion app",
        description="The web app: train concepts, keep them in a library, compose, generate and evaluate.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", default=None, help="user:password, required for any host but localhost")
    parser.add_argument(
        "--base", default=None, help="base model: 'embedded' (default), a diffusers folder or hub id"
    )
    parser.add_argument(
        "--data", default="bora_app_data", help="the app's data folder (default ./bora_app_data)"
    )
    parser.add_argument(
        "--concepts", default="concepts", help="folder of concept folders offered for training"
    )
    parser.add_argument("--workers", type=int, default=2, help="generations served at once (default 2)")
    parser.add_argument(
        "--clip",
        default=None,
        help="CLIP for evaluation as BACKBONE[:WEIGHTS] (default: the conventions' own, the shipped world CLIP "
        "for 'default', ViT-B-32:openai cached locally for the published presets); WEIGHTS 'random' gives a "
        "random init for smoke runs",
    )
    return parser


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth takes user:password, both non-empty")
    return user, password


def parse_clip(text: str | None):
    from .evaluate import ClipChoice

    if not text:
        return ClipChoice()
    backbone, _, weights = text.partition(":")
    if weights == "random":
        return ClipChoice(backbone=backbone or None, random_weights=True)
    return ClipChoice(backbone=backbone or None, weights=weights or None)


def create(
    *,
    data: str | Path,
    base: str | None = None,
    concepts: str | Path | None = "concepts",
    workers: int = 2,
    clip=None,
):
    """Build the app (a gradio Blocks, queued) and its context; nothing is served yet."""
    from .evaluate import ClipChoice, Scorers
    from .handlers import Context
    from .jobs import JobQueue
    from .models import Pipelines
    from .storage import DataDir
    from .ui import build

    if workers < 1:
        raise ValueError("--workers must be at least 1")
    store = DataDir(data)
    pipelines = Pipelines(base, workers=workers)
    ctx = Context(
        data=store,
        pipelines=pipelines,
        jobs=JobQueue(store, pipelines),
        scorers=Scorers(clip or ClipChoice()),
        concepts_root=Path(concepts).resolve() if concepts else None,
    )
    demo = build(ctx)
    demo.queue(default_concurrency_limit=4, max_size=None)
    return demo, ctx


def launch(demo, ctx, *, host: str = "127.0.0.1", port: int | None = None, auth=None, block: bool = True):
    """Serve `demo`; with `block=False` return at once (tests, scripts). Returns the local URL."""
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        prevent_thread_lock=not block,
        allowed_paths=[str(ctx.data.root)],
        max_file_size=MAX_UPLOAD,
        footer_links=["api"],
        quiet=not block,
        ssr_mode=False,
    )
    return url


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        auth = parse_auth(args.auth)
    except ValueError as error:
        parser.error(str(error))
    if args.host not in LOCAL_HOSTS and auth is None:
        parser.error(f"--host {args.host} serves beyond this machine: add --auth user:password")
    from ..errors import BoraError

    try:
        demo, ctx = create(
            data=args.data,
            base=args.base,
            concepts=args.concepts,
            workers=args.workers,
            clip=parse_clip(args.clip),
        )
    except (BoraError, ValueError) as error:
        parser.error(str(error))
    launch(demo, ctx, host=args.host, port=args.port, auth=auth, block=True)
    return 0
