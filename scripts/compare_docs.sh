#!/usr/bin/env bash
# The method comparison shown in docs/evaluation.md: four methods on the two example concepts, on the embedded
# default, scored with a random ViT-B-32 (no pretrained CLIP is cached here). Writes outputs/compare-docs/ and
# copies the chart to docs/evaluation_comparison.png; paste outputs/compare-docs/comparison.md into the doc.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# One OpenMP thread: on a busy 2-core machine two threads per process run these tiny models many times slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/bora-diffusion compare concepts/kettle concepts/robot \
    --method lora --method sbora_fa --method sbora_fb --method ortho --rank 4 --train-steps 200 \
    --weights none --images 4 --device cpu --quiet --out outputs/compare-docs "$@"
cp outputs/compare-docs/comparison.png docs/evaluation_comparison.png
