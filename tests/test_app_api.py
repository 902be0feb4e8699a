"""The app through its named API (gradio_client), on the embedded default: every endpoint, good and bad inputs.

One app serves the whole module. Two concepts are trained once (an upload and the shipped kettle folder, both
sbora_fa on the app's one slot ledger); the tests then use them. Every bad input must come back as an error that
names the field and the fix, and the app must keep serving afterwards.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from app_fixtures import REPO, call_http, draw_images, serve, wait_for_job
from safetensors import safe_open

from bora_diffusion.errors import ConfigError
from bora_diffusion.slots import SlotLedger

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

STEPS = 6
FOLDERS = sorted(p.parent.name for p in (REPO / "concepts").glob("*/concept.toml"))
# gradio 6.31 itself trips over pandas 3 deprecations on every dataframe it sends.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*no_silent_downcasting.*:Warning", "ignore:The copy keyword is deprecated:Warning"
)


def start(client, *, files=(), **form):
    """Queue a training job through the named form: `form` holds the schema's names (steps, learning_rate,
    train_embedding, ...); what it leaves out is the concept folder's own, then the method's preset."""
    form = {"source": "upload", "steps": STEPS, **form}
    return client.predict(form, [handle_file(str(f)) for f in files], api_name="/train_start")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    demo, ctx, url = serve(root)
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    yield ctx, client, root
    ctx.jobs.shutdown()
    demo.close()


@pytest.fixture(scope="module")
def images(app) -> list[Path]:
    return draw_images(app[2] / "upload", count=3)


@pytest.fixture(scope="module")
def trained(app, images) -> dict[str, dict]:
    """'mug' from uploaded images (with samples every 4 steps) and 'kettle' from the shipped folder."""
    _, client, _ = app
    mug_id, _ = start(client, files=images, name="mug", token="zqmug", class_word="mug", sample_every=3)
    kettle_id, queued = start(client, source="folder", folder="kettle")
    assert queued["status"] in ("queued", "running")  # one job at a time: the kettle waits for the mug
    return {"mug": wait_for_job(client, mug_id), "kettle": wait_for_job(client, kettle_id)}


def test_training_from_an_upload_reports_progress_to_the_end(trained, app):
    ctx, _, _ = app
    mug = trained["mug"]
    assert mug["status"] == "done", mug["error"]
    assert mug["step"] == mug["total_steps"] == STEPS and mug["fraction"] == 1.0
    assert [step for step, _ in mug["loss"]] == list(range(1, STEPS + 1))
    assert all(math.isfinite(loss) and loss > 0 for _, loss in mug["loss"])
    assert mug["it_per_s"] > 0 and mug["eta_s"] is None
    assert len(mug["samples"]) == 2  # steps 3 and 6, one sample prompt each
    assert all(Path(p).is_file() and ctx.data.root in Path(p).parents for p in mug["samples"])
    # The uploaded images were stored under the data folder with names of the app's choosing.
    stored = sorted(p.name for p in (ctx.data.root / "uploads" / "mug").iterdir())
    assert stored == ["concept.toml", "image_000.png", "image_001.png", "image_002.png"]


def test_library_lists_both_concepts_with_their_settings(trained, app):
    _, client, _ = app
    assert trained["kettle"]["status"] == "done", trained["kettle"]["error"]
    table = client.predict(api_name="/list_concepts")
    rows = {row[0]: dict(zip(table["headers"], row, strict=True)) for row in table["data"]}
    assert set(rows) == {"kettle", "mug"}
    assert rows["mug"]["method"] == "sbora_fa" and rows["mug"]["token"] == "zqmug"
    assert rows["kettle"]["token"] == "qwiv" and rows["kettle"]["class word"] == "kettle"
    assert rows["mug"]["rank"] == 4 and rows["mug"]["steps"] == STEPS
    assert rows["mug"]["base"] == "embedded:world-base-2"
    assert rows["mug"]["slots"].startswith("in:")
    info = client.predict("mug", api_name="/inspect_concept")
    assert info["method"] == "sbora_fa" and info["training"]["steps"] == STEPS
    assert info["app"]["images"].endswith("uploads/mug")


def test_interference_check_shows_disjoint_slots(trained, app):
    _, client, _ = app
    summary, pairs = client.predict(["mug", "kettle"], "mug=1, kettle=0.8", api_name="/check_interference")
    assert "No slot overlap" in summary and "x0.8" in summary
    overlap = pairs["headers"].index("slot overlap")
    assert pairs["data"] and all(row[overlap] == 0 for row in pairs["data"])


def test_generate_returns_images_and_a_manifest_and_is_seeded(trained, app):
    _, client, _ = app
    args = (
        ["mug", "kettle"],
        "kettle=0.8",
        "fused",
        "a photo of zqmug mug next to qwiv kettle",
        "",
        3,
        4,
        5.0,
        2,
    )
    gallery, manifest, message = client.predict(*args, api_name="/generate")
    assert len(gallery) == 2 and message.startswith("2 image(s)")
    record = json.loads(Path(manifest).read_text())
    assert [entry["seed"] for entry in record["images"]] == [3, 4]
    assert record["fused"] is True and record["concepts"]["kettle"]["scale"] == 0.8
    assert record["settings"]["steps"] == 4 and record["settings"]["guidance"] == 5.0
    assert all("/" not in entry["file"] for entry in record["concepts"].values())  # no server paths
    again, _, _ = client.predict(*args, api_name="/generate")
    first = [Path(item["image"]).read_bytes() for item in gallery]
    assert [Path(item["image"]).read_bytes() for item in again] == first  # same seeds, same images
    base, _, _ = client.predict([], "", "live", args[3], "", 3, 4, 5.0, 1, api_name="/generate")
    assert Path(base[0]["image"]).read_bytes() != first[0]  # the concepts change the image


REGIONS = {"headers": ["x0", "y0", "x1", "y1", "prompt"], "data": [[0, 0, 0.5, 1, "a zqmug mug"], [0.5, 0, 1, 1, "a qwiv kettle"]]}  # fmt: skip


def test_generate_with_placement_steers_the_named_concepts_and_records_it(trained, app):
    _, client, _ = app
    args = (["mug", "kettle"], "", "live", "a zqmug mug beside a qwiv kettle", "", 3, 4, 5.0, 1)
    rows = {
        "headers": REGIONS["headers"],
        "data": [[0, 0, 0.5, 1, "zqmug"], [0.5, 0, 1, 1, "qwiv"], [None] * 5],
    }
    gallery, manifest, message = client.predict(*args, rows, api_name="/generate_placed")
    assert len(gallery) == 1 and message.startswith("1 image(s) in 2 placement(s)")
    record = json.loads(Path(manifest).read_text())
    assert [(p["word"], p["box"]) for p in record["placements"]] == [
        ("zqmug", [0, 0, 0.5, 1]),
        ("qwiv", [0.5, 0, 1, 1]),
    ]
    plain, _, _ = client.predict(*args, api_name="/generate")
    assert Path(plain[0]["image"]).read_bytes() != Path(gallery[0]["image"]).read_bytes()
    rows["data"] = [[0, 0, 0.5, 1, "teapot"]]
    with pytest.raises(
        Exception,
        match="placements row 1: the prompt 'a zqmug mug beside a qwiv kettle' does not name 'teapot'",
    ):
        client.predict(*args, rows, api_name="/generate_placed")


def test_generate_with_regions_draws_each_box_with_its_own_concepts(trained, app):
    _, client, _ = app
    args = (["mug", "kettle"], "", "live", "a table", "", 3, 4, 5.0, 1)
    gallery, manifest, message = client.predict(*args, REGIONS, api_name="/generate_regions")
    assert len(gallery) == 1 and message.startswith("1 image(s) in 2 region(s)")
    record = json.loads(Path(manifest).read_text())
    assert [(r["box"], r["concepts"]) for r in record["regions"]] == [
        ([0, 0, 0.5, 1], ["mug"]),
        ([0.5, 0, 1, 1], ["kettle"]),
    ]
    plain, _, _ = client.predict(*args, api_name="/generate")
    assert Path(plain[0]["image"]).read_bytes() != Path(gallery[0]["image"]).read_bytes()
    from PIL import Image

    with Image.open(client.predict(REGIONS, api_name="/region_preview")) as image:
        side = image.size[0]
        assert image.size == (256, 256)
        rgb = image.convert("RGB")
        # each box outlined in its own color (the first red, the second blue; gradio re-encodes the image lossily)
        assert _near(rgb.getpixel((1, side // 2)), (0xD6, 0x28, 0x28))  # the first box's left edge
        assert _near(rgb.getpixel((side - 2, side // 2)), (0x26, 0x56, 0xD6))  # the second box's right edge
        assert _near(rgb.getpixel((side // 4, side // 2)), (0xF6, 0xF6, 0xF6))  # inside: the image area


def _near(pixel, color, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color, strict=True))


def test_a_concept_with_its_own_token_embedding_trains_and_generates(app, images, trained):
    _, client, _ = app
    job, _ = start(client, files=images[:1], name="embedded-token", token="zqemb", class_word="mug", steps=2,
                   train_embedding=True)  # fmt: skip
    assert wait_for_job(client, job)["status"] == "done"
    assert (
        client.predict("embedded-token", api_name="/inspect_concept")["training"]["train_embedding"] is True
    )
    for _ in range(3):  # more requests than pipelines: a pipeline that took the token is rebuilt, not reused
        gallery, _, _ = client.predict(["embedded-token"], "", "live", "a zqemb mug", "", 0, 2, 7.5, 1,
                                       api_name="/generate")  # fmt: skip
        assert len(gallery) == 1
    lora, embedding = client.predict("embedded-token", "diffusers", api_name="/export_concept")
    assert Path(lora).name == "embedded-token_diffusers.safetensors"
    assert Path(embedding).name == "embedded-token_diffusers.embedding.safetensors"
    with safe_open(embedding, "pt") as handle:
        assert handle.metadata()["token"] == "zqemb"


def test_export_both_layouts_as_downloads(trained, app):
    _, client, _ = app
    # No token embedding: one file each.
    [diffusers] = client.predict("mug", "diffusers", api_name="/export_concept")
    [kohya] = client.predict("mug", "kohya", api_name="/export_concept")
    with safe_open(diffusers, "pt") as handle:
        assert all(key.startswith("unet.") for key in handle.keys())  # noqa: SIM118 (a safe_open handle is no dict)
    with safe_open(kohya, "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith("lora_unet_") for key in keys)
    assert any(key.endswith(".alpha") for key in keys)


def test_evaluation_table_base_alone_and_composed(trained, app):
    _, client, _ = app
    table, bars, report_file, summary = client.predict(
        ["mug", "kettle"], "quick-object", "default", 1, 2, api_name="/evaluate"
    )
    rows = [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]
    assert sorted((r["concept"], r["setting"]) for r in rows) == [
        ("kettle", "alone"), ("kettle", "base"), ("kettle", "composed"),
        ("mug", "alone"), ("mug", "base"), ("mug", "composed"),
    ]  # fmt: skip
    report = json.loads(Path(report_file).read_text())
    assert report["conventions"]["weights"] is None  # the random test CLIP is recorded as such
    by_name = {c["name"]: c for c in report["concepts"]}
    for row in rows:
        scores = by_name[row["concept"]][row["setting"]]
        assert row["CLIP-T"] == pytest.approx(scores["clip_t"], abs=1e-4)
        assert row["CLIP-I"] == pytest.approx(scores["clip_i"], abs=1e-4)
        assert row["images"] == 4  # 4 prompts x 1 image
    assert len(bars["data"]) == 2 * len(rows)
    assert "retention" in summary and "random init" in summary
    library = client.predict(api_name="/list_concepts")
    mug = next(dict(zip(library["headers"], r, strict=True)) for r in library["data"] if r[0] == "mug")
    assert mug["CLIP-T"] == pytest.approx(by_name["mug"]["alone"]["clip_t"], abs=1e-4)


def test_method_comparison_on_a_shipped_folder(app):
    _, client, _ = app
    table, bars, markdown, summary = client.predict(
        ["kettle"], ["lora", "sbora_fa"], 4, "params", 2, "quick-object", "default", 1, 2,
        api_name="/compare_methods",
    )  # fmt: skip
    rows = [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]
    assert [(r["method"], r["concept"]) for r in rows] == [("lora", "kettle"), ("sbora_fa", "kettle")]
    assert rows[0]["rank"] == 4 and rows[1]["rank"] > 4  # sbora_fa trains one factor: a higher rank matches
    assert abs(rows[1]["trainable params"] / rows[0]["trainable params"] - 1) < 0.5
    assert len(bars["data"]) == 4 and "lora r4" in summary
    assert Path(markdown).read_text().count("|") > 10


def test_stop_saves_and_the_queue_runs_one_job_at_a_time(app, images, trained):
    ctx, client, _ = app
    first, _ = start(
        client, files=images[:1], name="deleted-meanwhile", token="zqdel", class_word="mug", steps=1
    )
    assert wait_for_job(client, first)["status"] == "done"
    long_id, _ = start(client, files=images, name="long", token="zqlong", class_word="mug", steps=5000)
    short_id, short = start(
        client, source="folder", folder="robot", name="robot-lora", method="lora", steps=2
    )
    assert short["status"] == "queued" and short["queue_position"] == 1
    while client.predict(long_id, api_name="/train_status")["step"] < 3:
        pass
    client.predict("deleted-meanwhile", api_name="/delete_concept")  # its slots must stay free afterwards
    client.predict(long_id, api_name="/train_stop")
    stopped = wait_for_job(client, long_id)
    assert stopped["status"] == "stopped" and 3 <= stopped["step"] < 5000
    ledger = SlotLedger.load(ctx.data.concepts / "slots.json").concepts()
    assert "long" in ledger and "kettle" in ledger and "deleted-meanwhile" not in ledger
    info = client.predict("long", api_name="/inspect_concept")
    assert info["training"]["stopped_at"] == stopped["step"] and info["training"]["steps"] == 5000
    assert wait_for_job(client, short_id)["status"] == "done"


def test_delete_removes_the_files_and_frees_the_name(app, images, trained):
    ctx, client, _ = app
    job, _ = start(client, files=images[:1], name="gone", token="zqgone", class_word="mug", steps=1)
    assert wait_for_job(client, job)["status"] == "done"
    message = client.predict("gone", api_name="/delete_concept")
    assert "gone.safetensors" in message
    assert not (ctx.data.concepts / "gone.safetensors").exists()
    assert not (ctx.data.concepts / "checkpoints" / "gone").exists()
    names = [row[0] for row in client.predict(api_name="/list_concepts")["data"]]
    assert "gone" not in names
    assert "gone" not in SlotLedger.load(ctx.data.concepts / "slots.json").concepts()
    assert "mug" in SlotLedger.load(ctx.data.concepts / "slots.json").concepts()


def test_a_name_that_tries_to_leave_the_data_folder_stays_inside(app, images):
    ctx, client, root = app
    job, state = start(
        client, files=images[:1], name="../../escape", token="zqesc", class_word="mug", steps=1
    )
    assert state["concept"] == "escape"
    assert wait_for_job(client, job)["status"] == "done"
    assert (ctx.data.concepts / "escape.safetensors").is_file()
    assert (ctx.data.root / "uploads" / "escape" / "concept.toml").is_file()
    assert not (root.parent / "escape").exists() and not (ctx.data.root.parent / "escape").exists()


def test_presets_and_folders(app):
    _, client, _ = app
    assert client.predict("bora_block", api_name="/method_preset") == (2, 4, 200, 1e-3)
    assert client.predict("lora", api_name="/method_preset")[0] == 4
    assert client.predict(api_name="/concept_folders") == FOLDERS
    # Picking a folder fills the form with its own recipe, as `bora-diffusion train <folder>` would train it:
    # the world concepts train their token (ED-LoRA), the examples do not.
    recipe = client.predict("bolt-circle", api_name="/folder_recipe")
    assert recipe == ("sbora_fa", 4, 4, 500, 1e-3, 64, True, "cross_kv", 2.0, 3, 10.0)
    assert client.predict("kettle", api_name="/folder_recipe")[-5:] == (False, "attention", 0.0, 1, 0.0)


def _bad_file(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.png").write_text("not a png either")
    return [folder / "notes.txt", folder / "fake.png"]


BAD_TRAIN = [
    ({"files": ()}, "upload at least one image"),
    ({"files": "text"}, "files: notes.txt is not one of .png, .jpg, .jpeg, .webp"),
    ({"files": "fake"}, "fake.png"),
    ({"files": "small"}, "smaller than 64 px"),
    ({"name": "../"}, "has no letters or digits"),
    ({"name": ""}, "name: give the new concept a name"),
    ({"token": "dog"}, "already a word of the text encoder's vocabulary"),
    ({"token": ""}, "token: required"),
    ({"token": 5}, "token must be a string, got 5"),
    ({"method": "bogus"}, "method 'bogus' is unknown; choose one of lora, dora, sbora_fa"),
    ({"method": 3}, "method must be a string, got 3"),
    ({"steps": 0}, "steps must be an integer 0 < steps <= 100000, got 0"),
    ({"steps": 200_000}, "steps must be an integer 0 < steps <= 100000, got 200000"),
    ({"steps": "six"}, "steps must be an integer 0 < steps <= 100000, got 'six'"),
    ({"steps": 2.5}, "steps must be an integer 0 < steps <= 100000, got 2.5"),
    ({"learning_rate": -1}, "learning_rate must be a number 0 < learning_rate <= 1, got -1"),
    ({"rank": 0}, "rank must be an integer 0 < rank <= 1024, got 0"),
    ({"method": "bora_block", "blocks": 0}, "blocks must be an integer 0 < blocks <= 1024, got 0"),
    ({"resolution": 60}, "resolution must be a multiple of 8"),
    ({"train_embedding": "yes"}, "train_embedding must be true or false, got 'yes'"),
    ({"targets": "everything"}, "targets must be one of attention, cross_kv, self_attention"),
    ({"rnak": 4}, "form: unknown field 'rnak' (did you mean 'rank'?)"),
    ({"files": ["x.png"], "form_files": True}, "files: send the images as train_start's second argument"),
    (
        {"source": "folder", "folder": "../../etc"},
        f"folder: pick one of the concept folders ({', '.join(FOLDERS)})",
    ),
    (
        {"source": "folder", "folder": "kettle", "name": ""},
        "a concept named 'kettle' is already in the library",
    ),
    ({"source": "elsewhere"}, "source: choose one of upload, folder, got 'elsewhere'"),
]


@pytest.mark.parametrize(("change", "message"), BAD_TRAIN, ids=[m for _, m in BAD_TRAIN])
def test_bad_training_requests_are_refused_in_words(app, images, trained, change, message):
    _, client, root = app
    fields = {"files": images, "name": "bad", "token": "zqbad", "class_word": "mug", **change}
    if fields["files"] == "text":
        fields["files"] = _bad_file(root / "bad")[:1]
    elif fields["files"] == "fake":
        fields["files"] = _bad_file(root / "bad")[1:]
    elif fields["files"] == "small":
        fields["files"] = draw_images(root / "small", count=1, size=32)
    files = fields.pop("files")
    in_form = fields.pop("form_files", False)  # the images inside the form, where they do not belong
    with pytest.raises(AppError, match=None) as caught:
        if in_form:
            client.predict({**fields, "files": files}, [], api_name="/train_start")
        else:
            start(client, files=files, **fields)
    assert message in str(caught.value)
    assert client.predict("lora", api_name="/method_preset")[0] == 4  # still serving


BAD_CALLS = [
    ("/train_status", ("nope",), "job: no training job 'nope'"),
    ("/train_stop", ("",), "job: no training job"),
    ("/inspect_concept", ("missing",), "there is no concept 'missing'"),
    ("/inspect_concept", ("../slots",), "there is no concept"),
    ("/inspect_concept", ("",), "pick a concept"),
    ("/delete_concept", ("missing",), "there is no concept 'missing'"),
    ("/export_concept", ("mug", "a1111"), "layout: choose one of diffusers, kohya, got 'a1111'"),
    ("/check_interference", ([], ""), "pick at least one concept"),
    ("/check_interference", (["mug"], "kettle=1"), "kettle is not among the picked concepts"),
    ("/generate", (["mug"], "", "live", " ", "", 0, 4, 7.5, 1), "prompt: write what to draw"),
    ("/generate", (["mug"], "", "live", "a mug", "", 0, 4, 7.5, 0), "count: give a whole number"),
    ("/generate", (["mug"], "", "live", "a mug", "", 0, 1000, 7.5, 1), "steps: give a whole number"),
    ("/generate", (["mug"], "", "live", "a mug", "", -1, 4, 7.5, 1), "seed: give a whole number"),
    ("/generate", (["mug"], "mug=abc", "live", "a mug", "", 0, 4, 7.5, 1), "weights: 'mug=abc'"),
    (
        "/generate",
        (["mug"], "", "sideways", "a mug", "", 0, 4, 7.5, 1),
        "mode: choose one of live, fused, got 'sideways'",
    ),
    ("/generate", (["nobody"], "", "live", "a mug", "", 0, 4, 7.5, 1), "there is no concept 'nobody'"),
    (
        "/generate_regions",
        (
            ["mug"],
            "",
            "live",
            "a mug",
            "",
            0,
            4,
            7.5,
            1,
            {"headers": REGIONS["headers"], "data": [[0, 0, 1.5, 1, "a"]]},
        ),
        "regions row 1: box 0,0,1.5,1 leaves the image",
    ),
    (
        "/generate_regions",
        (
            ["mug"],
            "",
            "live",
            "a mug",
            "",
            0,
            4,
            7.5,
            1,
            {"headers": REGIONS["headers"], "data": [[0, 0, 0.6, 1, "a"], [0.5, 0, 1, 1, "b"]]},
        ),
        "regions row 2: box 0.5,0,1,1 overlaps regions row 1's 0,0,0.6,1",
    ),
    (
        "/generate_regions",
        (
            ["mug"],
            "",
            "live",
            "a mug",
            "",
            0,
            4,
            7.5,
            1,
            {"headers": REGIONS["headers"], "data": [[0, 0, 0.5, 1, ""]]},
        ),
        "regions row 1: give x0, y0, x1, y1",
    ),
    ("/evaluate", ([], "quick-object", "default", 1, 2), "pick at least one trained concept"),
    ("/evaluate", (["mug"], "bogus", "default", 1, 2), "unknown prompt set 'bogus'"),
    ("/evaluate", (["mug"], "quick-object", "paper", 1, 2), "unknown conventions preset 'paper'"),
    ("/evaluate", (["mug"], "quick-object", "default", 99, 2), "images per prompt: give 1 to 8"),
    ("/method_preset", ("bogus",), "method 'bogus' is unknown; choose one of"),
    ("/train_start", (["not", "a", "form"], None), "form: give a JSON object with the fields source, folder"),
    ("/folder_recipe", ("../concepts/kettle",), "folder: pick one of the concept folders"),
    (
        "/compare_methods",
        ([], ["lora", "dora"], 4, "params", 2, "quick-object", "default", 1, 2),
        "folders: pick",
    ),
    (
        "/compare_methods",
        (["../x"], ["lora", "dora"], 4, "params", 2, "quick-object", "default", 1, 2),
        "'../x' not",
    ),
    (
        "/compare_methods",
        (["kettle"], ["lora"], 4, "params", 2, "quick-object", "default", 1, 2),
        "two methods",
    ),
]


@pytest.mark.parametrize(("api", "args", "message"), BAD_CALLS, ids=[f"{a}-{m}" for a, _, m in BAD_CALLS])
def test_bad_calls_are_refused_in_words(app, trained, api, args, message):
    _, client, _ = app
    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api)
    assert message in str(caught.value)
    assert client.predict(api_name="/concept_folders") == FOLDERS  # still serving


def test_export_refuses_a_method_without_an_exact_lora_form(app, images, trained):
    _, client, _ = app
    job, _ = start(client, files=images[:1], name="magnitude", token="zqmag", class_word="mug", method="dora",
                   steps=1)  # fmt: skip
    assert wait_for_job(client, job)["status"] == "done"
    with pytest.raises(AppError) as caught:
        client.predict("magnitude", "kohya", api_name="/export_concept")
    assert "dora" in str(caught.value)


def test_the_train_form_decides_the_token_embedding_and_api_callers_get_the_folders_choice(tmp_path):
    from bora_diffusion.app.storage import DataDir
    from bora_diffusion.app.training import Form, build

    def embedding(folder: str, checked: bool | None) -> bool:
        form = Form(source="folder", folder=folder, settings={"train_embedding": checked})
        _, _, config = build(form, DataDir(tmp_path / "data"), REPO / "concepts")
        return config.train_embedding

    # The page always sends its checkbox (which picking a folder sets to the folder's recipe): it decides.
    assert embedding("bolt-circle", False) is False and embedding("kettle", True) is True
    # A caller that leaves it out gets the folder's own choice.
    assert embedding("bolt-circle", None) is True and embedding("kettle", None) is False


def test_the_train_form_decides_the_layers_and_api_callers_get_the_folders_choice(tmp_path):
    from bora_diffusion.app.storage import DataDir
    from bora_diffusion.app.training import Form, build

    def layers(folder: str, targets: str | None) -> str:
        form = Form(source="folder", folder=folder, settings={"targets": targets})
        _, adapter, _ = build(form, DataDir(tmp_path / "data"), REPO / "concepts")
        return adapter.targets

    # The world concepts are made to be fused: their recipe adapts the cross-attention keys and values only.
    assert layers("bolt-circle", None) == "cross_kv" and layers("kettle", None) == "attention"
    assert layers("bolt-circle", "attention") == "attention" and layers("kettle", "cross_kv") == "cross_kv"
    with pytest.raises(ConfigError, match="targets must be one of attention, cross_kv, self_attention"):
        layers("kettle", "everything")

    # A folder whose layers are regular expressions: the form shows none, and an empty field trains the folder's.
    from bora_diffusion.app.training import folder_recipe

    custom = tmp_path / "concepts" / "kettle"
    shutil.copytree(REPO / "concepts" / "kettle", custom)
    toml = custom / "concept.toml"
    toml.write_text(toml.read_text().replace("rank = 4\n", 'rank = 4\ntargets = ["attn2\\\\.to_v$"]\n'))
    assert folder_recipe(tmp_path / "concepts", "kettle")["targets"] is None
    _, adapter, _ = build(
        Form(source="folder", folder="kettle"), DataDir(tmp_path / "data"), tmp_path / "concepts"
    )
    assert adapter.targets == ("attn2\\.to_v$",)


def test_the_train_form_decides_the_prompt_lock_and_a_form_without_it_keeps_the_folders(tmp_path):
    from bora_diffusion.app.storage import DataDir
    from bora_diffusion.app.training import Form, build

    data = DataDir(tmp_path / "data")

    def lock(folder: str, weight, targets: str | None = None) -> float:
        form = Form(source="folder", folder=folder, settings={"lock_weight": weight, "targets": targets})
        return build(form, data, REPO / "concepts")[2].lock_weight

    assert lock("bolt-circle", None) == 2.0 and lock("kettle", None) == 0.0  # the folders' own
    assert lock("bolt-circle", 0) == 0.0 and lock("kettle", 5) == 5.0  # the page's field decides
    for bad in (-1, "two", float("nan")):
        with pytest.raises(ConfigError, match="lock_weight must be a number 0 <= lock_weight <= 1000"):
            lock("kettle", bad)
    # The lock keeps the cross-attention keys and values: self-attention alone has nothing it could keep.
    with pytest.raises(ConfigError, match="lock_weight: the prompt lock .*'self_attention'"):
        lock("bolt-circle", None, "self_attention")
    upload = Form(source="upload", files=tuple(map(str, draw_images(tmp_path / "up", 3))), name="mug",
                  token="zqmug", class_word="mug", settings={"lock_weight": 2, "targets": "self_attention"})  # fmt: skip
    with pytest.raises(ConfigError, match="lock_weight: the prompt lock"):
        build(upload, data, REPO / "concepts")
    assert not (tmp_path / "data" / "uploads" / "mug").exists()  # refused before the upload was stored


def test_the_train_form_decides_the_token_vectors_and_word_lock_and_a_form_without_them_keeps_the_folders(
    tmp_path,
):
    from bora_diffusion.app.storage import DataDir
    from bora_diffusion.app.training import Form, build

    data = DataDir(tmp_path / "data")

    def config(folder: str, vectors=None, word_lock=None):
        settings = {"embedding_vectors": vectors, "word_lock_weight": word_lock}
        form = Form(source="folder", folder=folder, settings=settings)
        return build(form, data, REPO / "concepts")[2]

    own = config("bolt-circle")  # the world concepts' recipe: a 3-vector token under word lock 10
    assert (own.embedding_vectors, own.word_lock_weight) == (3, 10.0)
    assert (config("kettle").embedding_vectors, config("kettle").word_lock_weight) == (1, 0.0)
    page = config("bolt-circle", vectors=2, word_lock=0)  # the page's fields decide
    assert (page.embedding_vectors, page.word_lock_weight) == (2, 0.0)
    for bad in (0, 1.5, 76, "three"):
        with pytest.raises(
            ConfigError, match="embedding_vectors must be an integer 0 < embedding_vectors <= 75"
        ):
            config("kettle", vectors=bad)
    for bad in (-1, "ten", float("nan")):
        with pytest.raises(
            ConfigError, match="word_lock_weight must be a number 0 <= word_lock_weight <= 1000"
        ):
            config("kettle", word_lock=bad)

    # An upload keeps what it was trained with in its concept.toml, as the folders do.
    upload = Form(source="upload", files=tuple(map(str, draw_images(tmp_path / "up", 3))), name="mug",
                  token="zqmug", class_word="mug",
                  settings={"train_embedding": True, "embedding_vectors": 3, "word_lock_weight": 5})  # fmt: skip
    concept, _, trained = build(upload, data, REPO / "concepts")
    assert (trained.train_embedding, trained.embedding_vectors, trained.word_lock_weight) == (True, 3, 5.0)
    assert (
        concept.train.train_embedding,
        concept.train.embedding_vectors,
        concept.train.word_lock_weight,
    ) == (
        True,
        3,
        5.0,
    )


def test_safe_names_and_paths(tmp_path):
    from bora_diffusion.app.storage import DataDir, inside, safe_name

    assert safe_name("../../etc/passwd") == "etc-passwd"
    assert safe_name("my kettle!") == "my-kettle"
    assert safe_name("x" * 100) == "x" * 48
    for bad in ("", "..", "/", "___"):
        with pytest.raises(ConfigError, match="no letters or digits"):
            safe_name(bad)
    data = DataDir(tmp_path / "data")
    assert inside(data.root, "uploads", "a") == data.root / "uploads" / "a"
    for escape in (("..", "x"), ("/etc",), ("uploads", "..", "..", "x")):
        with pytest.raises(ConfigError, match="outside the app's data folder"):
            inside(data.root, *escape)
    assert data.adapter_path("../../evil").parent == data.concepts


def test_server_options_refuse_an_open_host_without_auth(capsys):
    from bora_diffusion.app.server import main, parse_auth

    for argv, message in (
        (["--host", "0.0.0.0"], "--host 0.0.0.0 serves beyond this machine: add --auth user:password"),
        (["--auth", "nopassword"], "--auth takes user:password"),
        (["--auth", ":secret"], "--auth takes user:password"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert parse_auth("ann:se:cret") == ("ann", "se:cret")


def test_auth_keeps_out_clients_without_the_password(tmp_path):
    from bora_diffusion.app import create, launch

    demo, ctx = create(data=tmp_path / "data", concepts=REPO / "concepts")
    url = launch(demo, ctx, auth=("ann", "secret"), block=False)
    try:
        with pytest.raises(Exception, match="(?i)login|auth|401|403"):
            Client(url, verbose=False).predict(api_name="/concept_folders")
        client = Client(url, verbose=False, auth=("ann", "secret"))
        assert client.predict(api_name="/concept_folders") == FOLDERS
    finally:
        ctx.jobs.shutdown()
        demo.close()


def test_missing_clip_weights_say_how_to_start_the_app():
    from bora_diffusion.app.evaluate import ClipChoice, Scorers
    from bora_diffusion.evaluation import WeightsError, resolve_weights

    try:
        resolve_weights("ViT-B-32", "openai")
    except WeightsError:
        pass
    else:
        pytest.skip("ViT-B-32/openai weights are cached on this machine")
    with pytest.raises(WeightsError, match="restart it with --clip BACKBONE:/path/to/weights.pt"):
        Scorers(ClipChoice()).get(
            "custom-diffusion"
        )  # ViT-B-32/openai (the default is the shipped world CLIP)


def _malformed_calls(endpoints: dict) -> list[tuple[str, str, list, str]]:
    """(endpoint, case, arguments, the parameter the answer must name) for every endpoint that takes arguments:
    (a) the last argument left out; (b) a string for each number; (c) a number for each text, choice or form.
    The other arguments are null, which every check lets through, so the answer is about the one case."""
    cases = []
    for api, info in sorted(endpoints.items()):
        params = info["parameters"]
        if not params:
            continue  # list_concepts, concept_folders: nothing to leave out or mistype
        names = [p["parameter_name"] for p in params]
        cases.append((api, "missing", [None] * (len(params) - 1), names[-1]))
        for i, param in enumerate(params):
            bad = {"Number": "four", "Textbox": 3, "Dropdown": 3, "Radio": 3, "Json": 3}.get(
                param["component"]
            )
            if bad is not None:
                data = [None] * len(params)
                data[i] = bad
                kind = "string for a number" if param["component"] == "Number" else "number for a string"
                cases.append((api, kind, data, names[i]))
    return cases


def test_every_endpoint_answers_malformed_calls_in_words(app, trained):
    _, client, _ = app
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/train_start", "/generate", "/evaluate", "/compare_methods", "/export_concept"} <= set(endpoints)
    # The named form's keys and ranges are on the API page, from the schema.
    described = endpoints["/train_start"]["description"]
    assert "steps: an integer 0 < steps <= 100000 (default 200)" in described and "blocks: " in described
    assert [p["parameter_name"] for p in endpoints["/train_start"]["parameters"]] == ["form", "files"]
    cases = _malformed_calls(endpoints)
    covered = {api for api, *_ in cases}
    assert covered == {api for api, info in endpoints.items() if info["parameters"]}
    assert {kind for _, kind, _, _ in cases} == {"missing", "string for a number", "number for a string"}
    bad = []
    for api, kind, data, name in cases:
        event, message = call_http(client.src, api, data)
        words = str(message)
        if event != "error" or message is None or "upstream" in words.lower() or name not in words:
            bad.append(f"{api} ({kind}, {name}): {event} {words[:160]}")
    assert not bad, "\n".join(bad)
    # The answers name the parameter and what it takes:
    assert call_http(client.src, "/generate", [["mug"], "", "live", "a mug", "", "four", 4, 7.5, 1]) == (
        "error",
        "seed: give a number, got 'four'",
    )
    event, message = call_http(client.src, "/train_status", [])
    assert event == "error" and message.startswith("train_status: missing job_id; it takes 1 argument(s)")
    assert call_http(client.src, "/train_status", ["nope", "extra"]) == (
        "error",
        "train_status: got 2 argument(s), but it takes 1: job_id",
    )
    assert call_http(client.src, "/list_concepts", [3]) == (
        "error",
        "list_concepts: got 1 argument(s), but it takes 0: none",
    )
    assert client.predict(api_name="/concept_folders") == FOLDERS  # still serving


def test_a_methods_option_travels_from_the_named_form_to_the_concept_file(app, images, trained):
    _, client, _ = app
    job, state = start(client, files=images[:1], name="blocky", token="zqblk", class_word="mug",
                       method="bora_block", rank=2, blocks=2, steps=1)  # fmt: skip
    assert state["method"] == "bora_block"
    assert wait_for_job(client, job)["status"] == "done"
    info = client.predict("blocky", api_name="/inspect_concept")
    assert info["config"]["blocks"] == 2 and info["config"]["rank"] == 2
    # Left out, the option is the method's default, and another method's option is not carried over.
    job, _ = start(client, files=images[:1], name="blocky-default", token="zqbld", class_word="mug",
                   method="bora_block", steps=1)  # fmt: skip
    assert wait_for_job(client, job)["status"] == "done"
    config = client.predict("blocky-default", api_name="/inspect_concept")["config"]
    assert (config["blocks"], config["rank"]) == (4, 2)  # the preset: suggested rank 2, 4 blocks
    job, _ = start(client, files=images[:1], name="plain", token="zqpln", class_word="mug", method="lora",
                   blocks=8, steps=1)  # fmt: skip
    assert wait_for_job(client, job)["status"] == "done"
    assert "blocks" not in client.predict("plain", api_name="/inspect_concept")["config"]


def test_output_folders_that_cannot_be_written_are_refused_in_words(app, images, trained, tmp_path, capsys):
    ctx, client, _ = app

    def export():
        return client.predict("mug", "diffusers", api_name="/export_concept")

    def generate():
        return client.predict(["mug"], "", "live", "a mug", "", 0, 2, 7.5, 1, api_name="/generate")

    for kind, call in (("exports", export), ("generations", generate)):
        folder = ctx.data.root / kind
        moved = folder.rename(folder.with_name(kind + ".moved"))
        folder.write_text("a file where the folder was")  # root writes anywhere: block the path instead
        try:
            with pytest.raises(AppError) as caught:
                call()
        finally:
            folder.unlink()
            moved.rename(folder)
        assert "file error on" in str(caught.value) and f"/{kind}/" in str(caught.value)
        assert "data folder (--data) is writable" in str(caught.value)
    assert len(client.predict("mug", "diffusers", api_name="/export_concept")) == 1  # restored, serving

    # A training job whose samples cannot be written fails with the file named, and the queue goes on.
    samples = ctx.data.concepts / "samples"
    moved = samples.rename(samples.with_name("samples.moved"))
    samples.write_text("a file where the folder was")
    try:
        job, _ = start(client, files=images[:1], name="unsampled", token="zquns", class_word="mug", steps=1,
                       sample_every=1)  # fmt: skip
        state = wait_for_job(client, job)
    finally:
        samples.unlink()
        moved.rename(samples)
    assert state["status"] == "failed" and state["error"].startswith("file error on ")
    assert "/samples/" in state["error"] and "data folder (--data) is writable" in state["error"]

    # A data folder that cannot be created stops the app at the start with one line, no traceback.
    from bora_diffusion.app.server import main
    from bora_diffusion.app.storage import DataDir

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"data folder .*a-file/data: cannot create uploads/ \("):
        DataDir(blocker / "data")
    with pytest.raises(SystemExit) as exit_:
        main(["--data", str(blocker / "data")])
    assert exit_.value.code == 2 and "cannot create uploads/" in capsys.readouterr().err
