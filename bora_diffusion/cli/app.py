"""The `app` subcommand: the web app parses its own options, so `bora-diffusion app ...` hands them over whole."""

from __future__ import annotations


def run_app(options: list[str]) -> int:
    """The app parses its own options (--host, --port, --auth, --base, --data), so they pass through whole."""
    from ..app import main as app_main

    return app_main(options)
