"""Load check of the web app: N concurrent generate requests through gradio_client while a training job runs.

    python scripts/bench_app.py [--requests 20] [--train-steps 60] [--gen-steps 10] [--workers 2] [--out F.json]

The app is served in-process on the embedded default with a fresh data folder. A short concept (the shipped
kettle) is trained first so the requests compose a real adapter; then a second training job (robot) starts and
the N requests are submitted at once, each with its own seed. It checks that every request is answered with one
image of its own seed (none lost, none mixed up) and that the training job finishes all its steps, and reports
request latencies (submit to result) and the training job's speed while it shared the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the app test helpers: serve(), wait_for_job()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def train(client, folder: str, steps: int) -> str:
    """Queue the shipped concept folder `folder` with its own recipe (the named form), for `steps` steps."""
    form = {"source": "folder", "folder": folder, "method": "sbora_fa", "rank": 4, "steps": steps}
    job, _ = client.predict(form, [], api_name="/train_start")
    return job


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--gen-steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="the app's generation pool (--workers)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    from app_fixtures import serve, wait_for_job
    from gradio_client import Client

    root = Path(tempfile.mkdtemp(prefix="bench_app_"))
    demo, ctx, url = serve(root, workers=args.workers)
    client = Client(url, verbose=False, download_files=str(root / "downloads"), max_workers=args.requests + 4)

    warm = wait_for_job(client, train(client, "kettle", 5))
    assert warm["status"] == "done", warm
    client.predict(
        ["kettle"], "", "live", "warm-up", "", 0, 2, 7.5, 1, api_name="/generate"
    )  # load a pipeline

    job = train(client, "robot", args.train_steps)
    while client.predict(job, api_name="/train_status")["status"] == "queued":
        time.sleep(0.05)
    step_before = client.predict(job, api_name="/train_status")["step"]

    prompt = "a photo of qwiv kettle"
    started = time.perf_counter()
    pending = []
    for seed in range(args.requests):
        submitted = time.perf_counter()
        future = client.submit(
            ["kettle"], "", "live", prompt, "", seed, args.gen_steps, 7.5, 1, api_name="/generate"
        )
        pending.append((seed, submitted, future))
    latencies, answered, wrong = [], 0, []
    for seed, submitted, future in pending:
        gallery, manifest, _ = future.result(timeout=1800)
        latencies.append(time.perf_counter() - submitted)
        record = json.loads(Path(manifest).read_text())
        if len(gallery) == 1 and [entry["seed"] for entry in record["images"]] == [seed]:
            answered += 1
        else:
            wrong.append(seed)
    burst = time.perf_counter() - started
    step_after = client.predict(job, api_name="/train_status")["step"]
    trained = wait_for_job(client, job, timeout=3600)
    ctx.jobs.shutdown()
    demo.close()

    figures = {
        "requests": args.requests,
        "answered_with_their_own_seed": answered,
        "lost_or_wrong": args.requests - answered,
        "latency_s": {
            "min": round(min(latencies), 2),
            "median": round(statistics.median(latencies), 2),
            "p90": round(percentile(latencies, 0.9), 2),
            "max": round(max(latencies), 2),
        },
        "burst_wall_s": round(burst, 2),
        "images_per_s": round(args.requests / burst, 3),
        "generation_steps": args.gen_steps,
        "pool_workers": args.workers,
        "training": {
            "status": trained["status"],
            "steps": f"{trained['step']}/{trained['total_steps']}",
            "steps_during_burst": step_after - step_before,
            "it_per_s": trained["it_per_s"],
            "elapsed_s": trained["elapsed_s"],
        },
        "cpu_threads": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    ok = answered == args.requests and trained["status"] == "done"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
