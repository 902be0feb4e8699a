"""CPU threads on a busy machine: the main job's training, idle and beside CPU hogs, at 1 thread and at torch's 2.

Each cell is a fresh process that loads the embedded base and trains the main job's first concept
(concepts/bolt-circle, its own concept.toml recipe) for up to `--seconds`, timing every step after the first
few; hog cells start `--hogs` processes spinning `while True: pass` first and stop them after. Cells are
interleaved (idle 1, idle 2, busy 1, busy 2, then again), so a drift in the machine's load falls on all of them.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_threads.py --json /tmp/bench_threads.json

What it reports: median s/step per cell, each cell's ratio to the idle cell at the same thread count, and the
busy cells' ratio of 1 thread to 2. The load average before each cell is recorded beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCEPT = ROOT / "concepts" / "bolt-circle"
WARMUP_STEPS = 3


def _spin() -> None:
    while True:
        pass


def run_cell(threads: int, seconds: float) -> dict:
    """In this process: train until `seconds` have passed, return the step times after warmup."""
    import torch

    from bora_diffusion.callbacks import Callback
    from bora_diffusion.concept import load_concepts
    from bora_diffusion.pipeline import load_base
    from bora_diffusion.train import Trainer

    torch.set_num_threads(threads)
    pipe = load_base(None)
    concept = load_concepts([CONCEPT], tokenizer=pipe.tokenizer)[0]
    adapter = concept.train.adapter_config(default_method="sbora_fa")
    config = concept.train.train_config()

    class Enough(Exception):
        pass

    class Clock(Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_step_end(self, state) -> None:
            self.stamps.append(time.perf_counter())
            if self.stamps[-1] - self.stamps[0] > seconds and len(self.stamps) > WARMUP_STEPS + 2:
                raise Enough

    clock = Clock()
    with tempfile.TemporaryDirectory() as out, contextlib.suppress(Enough):
        Trainer(pipe, concept, adapter, config, out_dir=out, base_name="embedded", callbacks=[clock]).train()
    times = [
        b - a for a, b in zip(clock.stamps[WARMUP_STEPS:], clock.stamps[WARMUP_STEPS + 1 :], strict=False)
    ]
    return {"threads": torch.get_num_threads(), "steps": len(times), "median_s": statistics.median(times)}


def cell(threads: int, hogs: int, seconds: float) -> dict:
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(hogs)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(1.0 if hogs else 0.0)
        load = os.getloadavg()[0]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, __file__, "--cell", str(threads), "--seconds", str(seconds)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return {
            **json.loads(done.stdout.strip().splitlines()[-1]),
            "hogs": hogs,
            "load_before": round(load, 2),
        }
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hogs", type=int, default=2, help="spinning processes in the busy cells (default 2)"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per cell (default 30)")
    parser.add_argument("--rounds", type=int, default=2, help="times each cell runs (default 2)")
    parser.add_argument("--json", type=Path, help="write the cells and ratios here")
    parser.add_argument("--cell", type=int, help=argparse.SUPPRESS)  # internal: one cell, in this process
    args = parser.parse_args()
    if args.cell is not None:
        print(json.dumps(run_cell(args.cell, args.seconds)))
        return
    cells = []
    for round_ in range(args.rounds):
        for hogs in (0, args.hogs):
            for threads in (1, 2):
                result = {**cell(threads, hogs, args.seconds), "round": round_}
                cells.append(result)
                print(json.dumps(result), flush=True)

    def median(threads: int, hogs: int) -> float:
        return statistics.median(
            c["median_s"] for c in cells if c["threads"] == threads and c["hogs"] == hogs
        )

    ratios = {
        "busy_over_idle_1_thread": median(1, args.hogs) / median(1, 0),
        "busy_over_idle_2_threads": median(2, args.hogs) / median(2, 0),
        "idle_2_over_1_thread_speed": median(1, 0) / median(2, 0),
        "busy_1_over_2_threads_speed": median(2, args.hogs) / median(1, args.hogs),
        "busy_1_thread_over_idle_2_threads": median(1, args.hogs) / median(2, 0),
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"cells": cells, "ratios": ratios, "hogs": args.hogs}, indent=2))


if __name__ == "__main__":
    main()
