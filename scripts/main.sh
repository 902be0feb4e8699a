#!/usr/bin/env bash
# The main job on the embedded default base model, offline, on the CPU: train the two example concepts on
# disjoint slots, check how they interfere, and generate a grid with both fused into one model.
# Rerunning resumes from the checkpoints in outputs/demo. Extra arguments go to `bora-diffusion train`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
out=outputs/demo
bd=.venv/bin/bora-diffusion

$bd train concepts/kettle concepts/robot --out "$out" --steps 100 --checkpoint-every 50 --resume "$@"
$bd compose "$out/kettle.safetensors" "$out/robot.safetensors" --report "$out/interference.json"
$bd generate "$out/kettle.safetensors" "$out/robot.safetensors" --fuse --steps 20 --seed 0 --seed 1 --seed 2 \
    --prompt "a photo of qwiv kettle" --prompt "a photo of bxj robot" \
    --prompt "a photo of qwiv kettle next to bxj robot" --out "$out/images"
