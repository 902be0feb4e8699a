#!/usr/bin/env bash
# Create .venv and install the pinned requirements plus this package (editable). Idempotent: when nothing in
# requirements.txt or pyproject.toml changed since the last install, it only checks and returns.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
stamp=.venv/.installed
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "setup: installing into .venv (first run takes a few minutes)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    # torch and torchvision are pinned in requirements.txt and must be installed in this same command.
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -e .
    echo "$want" >"$stamp"
fi
