#!/usr/bin/env bash
# Lint, then the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/ruff check bora_diffusion tests scripts
.venv/bin/ruff format --check bora_diffusion tests scripts
# Tests must not write into the user's home: the embedded default is built in a throwaway folder.
export BORA_DIFFUSION_HOME="${BORA_DIFFUSION_HOME:-$(mktemp -d)}"
exec .venv/bin/python -m pytest "$@"
