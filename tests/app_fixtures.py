"""Shared pieces of the app tests: a served app on the embedded default with a tiny random CLIP, and images.

The app runs in-process (`launch(prevent_thread_lock=True)`) once per test session; the CLIP is a registered
one-layer architecture with random weights, so evaluations run offline in a second (their scores mean nothing;
the tests check the plumbing and the numbers' consistency, not image quality).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP = "bora-app-test-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip(folder: Path) -> str:
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder)
    return f"{TINY_CLIP}:random"


def serve(root: Path, *, workers: int = 2, base: str | None = None):
    """Build and serve the app with its data under `root` on `base` (the embedded default when None); return
    (demo, ctx, url)."""
    from bora_diffusion.app import create, launch
    from bora_diffusion.app.server import parse_clip

    clip = parse_clip(register_tiny_clip(root / "clip_configs"))
    demo, ctx = create(data=root / "data", base=base, concepts=REPO / "concepts", workers=workers, clip=clip)
    url = launch(demo, ctx, block=False)
    return demo, ctx, url


def draw_images(folder: Path, count: int = 3, size: int = 64, seed: int = 0) -> list[Path]:
    """`count` RGB images of a colored disc on noise, as PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:size, :size]
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
        pixels[disc] = (200, 40 + 30 * i, 60)
        path = folder / f"mug_{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def wait_for_job(client, job_id: str, timeout: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = client.predict(job_id, api_name="/train_status")
        if state["status"] in ("done", "stopped", "failed", "cancelled") or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def call_http(url: str, api_name: str, data: list) -> tuple[str, object]:
    """Call a named endpoint through gradio's plain HTTP API (what curl would send, no client filling in
    defaults): POST the arguments, then read the event stream. Returns (last event, its data): ("complete",
    outputs) or ("error", the message, None when gradio gives none)."""
    import httpx

    base = url.rstrip("/") + "/gradio_api/call/" + api_name.lstrip("/")
    event_id = httpx.post(base, json={"data": data}, timeout=60).json()["event_id"]
    event, payload = None, None
    with httpx.stream("GET", f"{base}/{event_id}", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                payload = json.loads(line.partition(":")[2].strip() or "null")
                if event in ("complete", "error"):
                    break
    if event == "error" and isinstance(payload, dict):
        payload = payload.get("error")  # {"error": message or null, "title": ..., ...}
    return event, payload
