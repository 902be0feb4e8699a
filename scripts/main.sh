#!/usr/bin/env bash
# The main job on the embedded default (the shipped world base), offline, on the CPU: train three world concepts
# on disjoint slots, check how they interfere, score them before tuning, alone and all three fused into one
# model, and draw them together in one picture, also each in its own region, and placed in its own box.
# Rerunning resumes from the checkpoints in outputs/demo. Extra arguments go to `bora-diffusion train`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
out=outputs/demo
bd=.venv/bin/bora-diffusion
concepts=(bolt-circle notched-ring spiral-star)

$bd train "${concepts[@]/#/concepts/}" --out "$out" --checkpoint-every 100 --resume "$@"
files=("${concepts[@]/#/$out/}")
files=("${files[@]/%/.safetensors}")
$bd compose "${files[@]}" --report "$out/interference.json"
pairs=()
for name in "${concepts[@]}"; do pairs+=("$out/$name.safetensors=concepts/$name"); done
$bd evaluate "${pairs[@]}" --prompts world --images 2 --steps 20 --out "$out/eval"
$bd generate "${files[@]}" --fuse --steps 20 --seed 0 --seed 1 --seed 2 --seed 3 \
    --prompt "a large huzd circle above a small vlek ring on a white background" \
    --prompt "a small zorp star to the left of a large huzd circle on a striped blue background" \
    --out "$out/together"
# Regional composition: each concept drawn in its own box with its own prompt, live (only its adapters there).
$bd generate "${files[@]}" --steps 20 --seed 0 --seed 1 --seed 2 --seed 3 --prompt "a white background" \
    --region "0,0.15,0.5,0.85=a huzd circle on a white background" \
    --region "0.5,0.15,1,0.85=a vlek ring on a white background" --out "$out/regions"
# Placement: one prompt names two concepts, and layout guidance steers each one's token into its box.
$bd generate "${files[@]}" --steps 20 --seed 0 --seed 1 --seed 2 --seed 3 \
    --prompt "a huzd circle to the left of a zorp star on a white background" \
    --place "0,0.15,0.5,0.85=huzd" --place "0.5,0.15,1,0.85=zorp" --out "$out/placed"
echo "before / after: $out/eval/overview.png   together: $out/together/grid.png   regions: $out/regions/grid.png   placed: $out/placed/grid.png   scores: $out/eval/evaluation.json"
