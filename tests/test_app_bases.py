"""The app on the bases users bring: a tiny SDXL and a tiny SD 2.x pipeline saved in diffusers layout, served with
`--base`. An upload trains with its token's own embedding, generates fused, evaluates and exports (on SDXL, kohya
names in sd-scripts' SGM layout and the token's embedding for both text encoders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_fixtures import draw_images, serve, wait_for_job
from safetensors import safe_open
from test_app_api import start
from tiny_bases import build_tiny_sd2, build_tiny_sdxl

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*no_silent_downcasting.*:Warning", "ignore:The copy keyword is deprecated:Warning"
)


@pytest.fixture(scope="module", params=["sdxl", "sd2"])
def app(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"app-{request.param}")
    {"sdxl": build_tiny_sdxl, "sd2": build_tiny_sd2}[request.param]().save_pretrained(root / "base")
    demo, ctx, url = serve(root, base=str(root / "base"))
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    yield request.param, client, root
    ctx.jobs.shutdown()
    demo.close()


def test_an_upload_trains_generates_evaluates_and_exports(app):
    kind, client, root = app
    images = draw_images(root / "upload", count=2)
    job, _ = start(
        client, files=images, name="mug", token="zqmug", class_word="mug", steps=3, train_embedding=True
    )
    state = wait_for_job(client, job)
    assert state["status"] == "done", state

    gallery, manifest, _ = client.predict(
        ["mug"], "", "fused", "a photo of zqmug mug", "", 0, 2, 5.0, 1, api_name="/generate"
    )
    assert len(gallery) == 1
    assert json.loads(Path(manifest).read_text())["fused"] is True

    table, _, report_file, _ = client.predict(["mug"], "quick-object", "default", 1, 2, api_name="/evaluate")
    settings = sorted(row[table["headers"].index("setting")] for row in table["data"])
    assert settings == ["alone", "base"]
    assert json.loads(Path(report_file).read_text())["concepts"][0]["name"] == "mug"

    kohya, embedding = client.predict("mug", "kohya", api_name="/export_concept")
    with safe_open(kohya, "pt") as handle:
        keys = list(handle.keys())
        version = handle.metadata().get("ss_base_model_version")
    with safe_open(embedding, "pt") as handle:
        rows = sorted(handle.keys())
    if kind == "sdxl":
        assert version == "sdxl_base_v1-0"
        assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
        assert any(k.startswith("lora_unet_output_blocks_") for k in keys)
        assert rows == ["clip_g", "clip_l"]
    else:
        # sd-scripts names SD 2.x layers after diffusers' modules; the tiny base's 64-wide text is no real
        # version's width, so none is claimed.
        assert version is None
        assert {k.split("_")[2] for k in keys} == {
            "down",
            "mid",
            "up",
        }  # lora_unet_down_blocks_..., ...mid_block_...
        assert rows == ["emb_params"]
