#!/usr/bin/env bash
# The main job on the embedded default base model, offline, on the CPU. Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/bora-diffusion methods --out outputs/methods "$@"
