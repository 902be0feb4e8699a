#!/usr/bin/env bash
# The method comparison shown in docs/evaluation.md: four methods on three world concepts, on the embedded
# default, scored by the shipped world CLIP, with the world concepts' recipe before prompt locking as the shared
# budget (400 steps on the cross-attention keys and values, each token's embedding trained at lr 5e-3). Writes
# outputs/compare-docs/ and copies the chart to docs/evaluation_comparison.png; paste
# outputs/compare-docs/comparison.md into the doc.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
.venv/bin/bora-diffusion compare concepts/bolt-circle concepts/notched-ring concepts/band-triangle \
    --method lora --method sbora_fa --method sbora_fb --method ortho --rank 2 --targets cross_kv \
    --train-steps 400 --train-embedding --embedding-lr 5e-3 --prompts world --images 2 --device cpu --quiet \
    --out outputs/compare-docs "$@"
cp outputs/compare-docs/comparison.png docs/evaluation_comparison.png
