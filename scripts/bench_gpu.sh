#!/usr/bin/env bash
# Every GPU row of issue 21 ("Speed") in one device lend, under 8 minutes on one H200, each command bounded by its
# own timeout so that one that hangs cannot eat the others' time:
#   1. bench_adapters part (a), bf16, equal rank              (adapter overhead per SD 1.5 pass, saved bytes)
#   2. bench_adapters part (a), bf16, equal parameter count
#   3. bench_adapters part (b), SD-1.5-shaped UNet at 512 px, bf16 (step time and peak memory vs peft LoRA)
#   4. bench_train.py --sd15 at 512 px, bf16 autocast, against diffusers' DreamBooth-LoRA recipe
# Markdown tables go to $OUT/<row>.md, raw numbers to $OUT/<row>.json, stderr to $OUT/<row>.err.
#
#   OUT=/tmp/gpu bash scripts/bench_gpu.sh          # PYTHON=python3 by default (the device machine's own)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench-gpu}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=0

row() {  # row NAME SECONDS SCRIPT ARGS...: one benchmark, bounded, its outputs under $OUT
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most ${seconds}s): $*" | tee -a "$OUT/log.txt"
    local start=$SECONDS
    timeout --kill-after=10 "$seconds" "$PYTHON" "$@" --json "$OUT/$name.json" >"$OUT/$name.md" 2>"$OUT/$name.err"
    local rc=$?
    echo "   rc=$rc after $((SECONDS - start))s" | tee -a "$OUT/log.txt"
    [ "$rc" -eq 0 ] || failed=1
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; git rev-parse --short HEAD; } \
    >"$OUT/environment.txt" 2>&1
row adapters_a 75 scripts/bench_adapters.py --part a --device cuda --dtype bf16
row adapters_a_equal 60 scripts/bench_adapters.py --part a --device cuda --dtype bf16 --equal-params
row adapters_b 170 scripts/bench_adapters.py --part b --sd15 --resolution 512 --dtype bf16 --device cuda \
    --steps 5 --memory-jobs 3
row train_sd15 150 scripts/bench_train.py --sd15 --device cuda --dtype bf16 --mixed-precision bf16 \
    --resolution 512 --methods lora,sbora_fa,sbora_fb,bora_block,bora_bidim --steps 20 --warmup 5 --rounds 1
exit "$failed"
