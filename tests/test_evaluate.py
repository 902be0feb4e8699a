"""CLIP alignment scoring, on a tiny CLIP built offline from a config dict registered with open_clip.

The oracle is the model's own `encode_image` / `encode_text` on open_clip's preprocessing and tokenizer, computed
here by hand; the scorer must match it to 1e-6 and apply each convention exactly as stated.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from bora_diffusion.concept import fill
from bora_diffusion.errors import BoraError, ConfigError
from bora_diffusion.evaluation import (
    PRESETS,
    AlignmentReport,
    BackboneError,
    ClipScorer,
    ContextGrammar,
    Conventions,
    ImageModeError,
    PackagedBackbone,
    Question,
    ReferenceImagesError,
    WeightsError,
    WeightsSource,
    WeightsUnavailableError,
    fill_prompts,
    generated_images,
    load_prompt_set,
    preset,
    prompt_sets,
    resolve_weights,
    scoring_texts,
)
from bora_diffusion.evaluation import backbone as backbone_module
from bora_diffusion.evaluation import scorer as scorer_module
from bora_diffusion.evaluation.conventions import image_scores, text_scores

TINY = "bora-test-tiny-clip"
TINY_OTHER = "bora-test-tiny-clip-8"  # another architecture, for "file made for another backbone"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    # The open_clip tokenizer is CLIP's BPE, so ids reach 49407: the vocabulary keeps its real size.
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TOKENS = {"qwiv": "kettle"}


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("clip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    (folder / f"{TINY_OTHER}.json").write_text(json.dumps({**TINY_CONFIG, "embed_dim": 8}))
    open_clip.add_model_config(folder)
    return TINY


def tiny(**overrides) -> Conventions:
    return Conventions(**{"backbone": TINY, "weights": None, **overrides})


@pytest.fixture(scope="session")
def scorer(tiny_backbone) -> ClipScorer:
    return ClipScorer(tiny(), device="cpu", batch_size=2)


@pytest.fixture(scope="session")
def oracle(tiny_backbone):
    """The same tiny CLIP built directly with open_clip (same seed), with its preprocessing and tokenizer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(TINY)
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY)


def random_images(count: int, seed: int = 0, size=(48, 40)) -> list[Image.Image]:
    # Not square, so the resize and center crop of the preprocessing are exercised.
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)
    ]


@torch.no_grad()
def hand_image(oracle, image: Image.Image) -> torch.Tensor:
    model, preprocess, _ = oracle
    feature = model.encode_image(preprocess(image.convert("RGB")).unsqueeze(0))[0]  # [D]
    return feature / feature.norm()


@torch.no_grad()
def hand_text(oracle, text: str) -> torch.Tensor:
    model, _, tokenizer = oracle
    feature = model.encode_text(tokenizer([text]))[0]  # [D]
    return feature / feature.norm()


# ------------------------------------------------------------------------------------------------ the oracle
def test_text_score_equals_hand_cosine(scorer, oracle):
    image = random_images(1)[0]
    report = scorer.text_alignment([image], ["a qwiv kettle on the beach"], tokens=TOKENS)
    expected = torch.dot(hand_image(oracle, image), hand_text(oracle, "a kettle on the beach")).item()
    assert report.texts == ("a kettle on the beach",)
    assert abs(report.scores[0] - expected) < 1e-6
    assert abs(report.mean - expected) < 1e-6


def test_image_alignment_is_the_mean_of_all_pairs(scorer, oracle, tmp_path):
    generated = random_images(3, seed=1)
    references = random_images(2, seed=2, size=(36, 52))
    for j, ref in enumerate(references):
        ref.save(tmp_path / f"ref_{j}.png")
    (tmp_path / "concept.toml").write_text('token = "qwiv"\nclass_word = "kettle"\n')  # skipped
    report = scorer.image_alignment(generated, tmp_path)
    hand = torch.tensor(
        [
            [torch.dot(hand_image(oracle, g), hand_image(oracle, r)).item() for r in references]
            for g in generated
        ]
    )  # [3, 2]
    assert report.reference_count == 2 and report.image_count == 3
    assert report.references == tuple(str(tmp_path / f"ref_{j}.png") for j in range(2))
    assert torch.allclose(torch.tensor(report.pair_scores, dtype=torch.float32), hand, atol=1e-6)
    assert abs(report.mean - hand.mean().item()) < 1e-6  # all 6 pairs, not the first reference only
    assert abs(report.mean - hand[:, 0].mean().item()) > 1e-4
    assert torch.allclose(torch.tensor(report.scores, dtype=torch.float32), hand.mean(dim=1), atol=1e-6)


def test_local_checkpoint_file_gives_the_same_model(tiny_backbone, scorer, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(scorer.model.state_dict(), path)
    from_file = ClipScorer(tiny(weights=str(path)), device="cpu")
    images = random_images(2)
    assert torch.equal(from_file.embed_images(images), scorer.embed_images(images))
    report = from_file.text_alignment(images, ["a qwiv kettle"] * 2, tokens=TOKENS)
    assert report.weights["kind"] == "file" and report.weights["file"] == str(path.resolve())
    assert len(report.weights["sha256"]) == 64


def test_each_image_file_is_embedded_once_until_it_changes(tiny_backbone, oracle, tmp_path, monkeypatch):
    fresh = ClipScorer(tiny(), device="cpu", batch_size=2)
    embedded = []
    encode = fresh.model.encode_image
    fresh.model.encode_image = lambda pixels: embedded.append(len(pixels)) or encode(pixels)
    paths = []
    for i, image in enumerate(random_images(3)):
        image.save(tmp_path / f"g{i}.png")
        paths.append(tmp_path / f"g{i}.png")
    first = fresh.embed_images(paths)
    assert embedded == [2, 1]
    # CLIP-T, CLIP-I and a with_conventions copy read the same files: nothing is embedded again.
    fresh.text_alignment(paths, ["a qwiv kettle"] * 3, tokens=TOKENS)
    fresh.with_conventions(tiny(prefix="a photo of ")).image_alignment(paths[:2], [str(paths[2])])
    assert embedded == [2, 1]
    # A PIL image has no file identity, so it is embedded every time; a rewritten file is embedded again.
    fresh.embed_images([Image.open(paths[0])])
    random_images(1, seed=7)[0].save(paths[1])
    again = fresh.embed_images(paths)
    assert embedded == [2, 1, 1, 1]
    assert torch.equal(again[[0, 2]], first[[0, 2]])
    assert torch.allclose(again[1], hand_image(oracle, Image.open(paths[1])), atol=1e-6)
    assert not torch.allclose(again[1], first[1], atol=1e-3)
    # The cache is bounded, oldest out first.
    monkeypatch.setattr(scorer_module, "CACHED_FILES", 2)
    fresh.embed_images(paths[2:])
    fresh.embed_images(paths)
    assert embedded == [2, 1, 1, 1, 1] and len(fresh._file_embeddings) == 2  # only paths[0] was dropped


# --------------------------------------------------------------------------------------- text conventions
PROMPTS = ["a qwiv kettle on the beach", "a photo of qwiv", "Qwiv kettle, in the snow", "a qwivs kettle"]


@pytest.mark.parametrize(
    ("conventions", "expected"),
    [
        (
            tiny(),
            ["a kettle on the beach", "a photo of kettle", "kettle, in the snow", "a qwivs kettle"],
        ),
        (
            tiny(token_rule="remove"),
            ["a kettle on the beach", "a photo of", "kettle, in the snow", "a qwivs kettle"],
        ),
        (tiny(token_rule="keep"), PROMPTS),
        (
            preset("mix-of-show", backbone=TINY, weights=None),
            [
                "A photo depicts a kettle on the beach",
                "A photo depicts a photo of kettle",
                "A photo depicts kettle, in the snow",
                "A photo depicts a qwivs kettle",
            ],
        ),
    ],
    ids=["class_word", "remove", "keep", "mix-of-show"],
)
def test_token_rule_and_prefix_reach_the_tokenizer(scorer, conventions, expected):
    seen: list[str] = []
    variant = scorer.with_conventions(conventions)
    tokenizer = variant.tokenizer

    def recording(texts):
        seen.extend(texts)
        return tokenizer(texts)

    variant.tokenizer = recording
    report = variant.text_alignment(random_images(len(PROMPTS)), PROMPTS, tokens=TOKENS)
    assert seen == expected
    assert list(report.texts) == expected and list(report.prompts) == PROMPTS
    assert scorer.tokenizer is tokenizer  # the variant's recorder never touched the shared scorer


def test_several_concept_tokens_in_one_prompt():
    texts = scoring_texts(["a qwiv kettle next to a <zq-dog>"], {"qwiv": "kettle", "<zq-dog>": "dog"}, tiny())
    assert texts == ["a kettle next to a dog"]


def test_scale_and_clipping_are_applied_as_stated():
    cos = torch.tensor([-0.3, 0.2, 0.5], dtype=torch.float64)
    assert text_scores(cos, tiny()).tolist() == pytest.approx([-0.3, 0.2, 0.5])
    assert text_scores(cos, tiny(text_scale=2.5, text_clip_at_zero=True)).tolist() == pytest.approx(
        [0, 0.5, 1.25]
    )
    assert text_scores(cos, tiny(text_scale=100.0)).tolist() == pytest.approx([-30, 20, 50])
    matrix = torch.tensor([[-0.2, 0.4], [0.6, 0.8], [0.1, -0.5]], dtype=torch.float64)  # [G=3, R=2]
    _, per_image, mean = image_scores(matrix, tiny())
    assert mean == pytest.approx(matrix.mean().item()) and per_image.tolist() == pytest.approx(
        [0.1, 0.7, -0.2]
    )
    pairs, per_image, mean = image_scores(matrix, tiny(image_clip_at_zero=True))
    assert pairs.flatten().tolist() == pytest.approx([0, 0.4, 0.6, 0.8, 0.1, 0])
    assert mean == pytest.approx((0 + 0.4 + 0.6 + 0.8 + 0.1 + 0) / 6)
    _, per_image, mean = image_scores(matrix, tiny(pairing="nearest"))
    assert per_image.tolist() == pytest.approx([0.4, 0.8, 0.1]) and mean == pytest.approx(1.3 / 3)


def test_presets_relate_to_the_raw_cosine_end_to_end(scorer):
    images, prompts = random_images(4, seed=3), ["a qwiv kettle on the beach"] * 4
    raw = scorer.text_alignment(images, prompts, tokens=TOKENS)
    custom = scorer.with_conventions(preset("custom-diffusion", backbone=TINY, weights=None))
    scaled = custom.text_alignment(images, prompts, tokens=TOKENS)
    assert list(scaled.scores) == pytest.approx([2.5 * max(s, 0.0) for s in raw.scores], abs=1e-9)
    references = random_images(2, seed=4)
    raw_i = scorer.image_alignment(images, references)
    mos = scorer.with_conventions(preset("mix-of-show", backbone=TINY, weights=None))
    clipped = mos.image_alignment(images, references)
    expected = np.clip(np.array(raw_i.pair_scores), 0, None).mean()
    assert clipped.mean == pytest.approx(expected, abs=1e-12)


def test_presets_state_the_published_recipes():
    cd, mos, default = PRESETS["custom-diffusion"], PRESETS["mix-of-show"], PRESETS["default"]
    for conventions in (cd, mos):
        assert (conventions.backbone, conventions.weights, conventions.pairing) == (
            "ViT-B-32",
            "openai",
            "all_pairs",
        )
    assert (default.backbone, default.weights, default.pairing) == ("world-clip", "embedded", "all_pairs")
    assert (cd.text_scale, cd.text_clip_at_zero, cd.prefix, cd.token_rule) == (2.5, True, "", "remove")
    assert (cd.image_scale, cd.image_clip_at_zero) == (1.0, False)
    assert (mos.text_scale, mos.text_clip_at_zero, mos.prefix, mos.token_rule) == (
        2.5,
        True,
        "A photo depicts ",
        "class_word",
    )
    assert (mos.image_scale, mos.image_clip_at_zero) == (1.0, True)
    assert (default.text_scale, default.text_clip_at_zero, default.prefix, default.token_rule) == (
        1.0,
        False,
        "",
        "class_word",
    )
    assert mos.preset_name == "mix-of-show" and Conventions().preset_name == "default"
    assert preset("mix-of-show", backbone="ViT-L-14").preset_name is None
    assert Conventions(backbone="ViT-B/32").backbone == "ViT-B-32"
    with pytest.raises(ConfigError, match="did you mean 'mix-of-show'"):
        preset("mix_of_show")
    for bad in (
        {"token_rule": "drop"},
        {"pairing": "first"},
        {"text_scale": 0},
        {"image_scale": float("inf")},
    ):
        with pytest.raises(ConfigError):
            Conventions(**bad)


# --------------------------------------------------------------------------------------------------- reports
def test_report_records_every_convention_and_round_trips(scorer, tmp_path):
    conventions = preset("mix-of-show", backbone=TINY, weights=None)
    report = scorer.with_conventions(conventions).image_alignment(random_images(3), random_images(2, seed=5))
    data = report.to_dict()
    stated = data["conventions"]
    for key, value in (
        ("backbone", TINY),
        ("weights", None),
        ("text_scale", 2.5),
        ("text_clip_at_zero", True),
        ("prefix", "A photo depicts "),
        ("token_rule", "class_word"),
        ("image_scale", 1.0),
        ("image_clip_at_zero", True),
        ("pairing", "all_pairs"),
    ):
        assert stated[key] == value, key
    assert data["image_count"] == 3 and data["reference_count"] == 2 and len(data["pair_scores"]) == 3
    assert data["weights"]["kind"] == "random" and data["environment"]["device"] == "cpu"
    line = report.summary()
    assert "\n" not in line and "CLIP-I" in line and TINY in line and "max(cos, 0)" in line
    assert "3 images x 2 references" in line
    path = report.save(tmp_path / "runs" / "clip_i.json")
    assert json.loads(path.read_text()) == json.loads(report.to_json())
    assert AlignmentReport.load(path) == report
    assert not list((tmp_path / "runs").glob(".*.tmp"))  # the atomic write left no temporary file

    text = scorer.text_alignment(random_images(2), ["a qwiv kettle"] * 2, tokens=TOKENS)
    data = text.to_dict()
    assert data["tokens"] == TOKENS and data["per_image"][0]["text"] == "a kettle"
    assert "token -> class word" in text.summary() and "no prefix" in text.summary()
    assert AlignmentReport.from_dict(json.loads(text.to_json())) == text


def test_progress_callback_sees_every_batch(tiny_backbone, scorer):
    calls = []
    variant = scorer.with_conventions(tiny())
    variant.progress = lambda stage, done, total: calls.append((stage, done, total))
    variant.text_alignment(random_images(3), ["a qwiv kettle"] * 3, tokens=TOKENS)
    assert calls == [("images", 2, 3), ("images", 3, 3), ("texts", 2, 3), ("texts", 3, 3)]


def test_generated_folder_manifest(tmp_path):
    random_images(1)[0].save(tmp_path / "p00-s0.png")
    manifest = {"images": [{"file": "p00-s0.png", "prompt": "a qwiv kettle", "seed": 0}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert generated_images(tmp_path) == ([tmp_path / "p00-s0.png"], ["a qwiv kettle"])
    with pytest.raises(ReferenceImagesError, match="no manifest.json"):
        generated_images(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------- prompt sets
def test_prompt_sets():
    assert set(prompt_sets()) == {
        "dreambench-object",
        "dreambench-live",
        "quick-object",
        "quick-live",
        "world",
    }
    for kind in ("object", "live"):
        full, quick = load_prompt_set(f"dreambench-{kind}"), load_prompt_set(f"quick-{kind}")
        assert len(full) == 25 and len(set(full)) == 25
        assert 3 <= len(quick) <= 5 and set(quick) <= set(full)
        for template in full:
            assert "{token} {class_word}" in template
            assert "{" not in template.replace("{token}", "").replace("{class_word}", "")
    assert load_prompt_set("dreambench-object")[14] == "a {token} {class_word} floating in an ocean of milk"
    assert (
        load_prompt_set("dreambench-live")[13]
        == "a {token} {class_word} wearing a black top hat and a monocle"
    )
    assert fill_prompts(load_prompt_set("quick-live")[:1], "qwiv", "dog") == ["a qwiv dog on the beach"]
    with pytest.raises(ConfigError, match="did you mean 'quick-live'"):
        load_prompt_set("quick_live")


def test_world_prompt_set_speaks_the_world_captions_language():
    """The world CLIP knows only the world's words: with the token left out, every world prompt must be made of
    them, or CLIP-T on the embedded default would score words it has never seen."""
    from bora_diffusion.world.vocabulary import WORDS

    templates = load_prompt_set("world")
    assert len(templates) == 6
    for template in templates:
        words = fill(template, "", "star").split()
        assert words and set(words) <= set(WORDS), template


# ---------------------------------------------------------------------------------------------------- errors
def test_reference_folder_errors(scorer, tmp_path):
    images = random_images(1)
    with pytest.raises(ReferenceImagesError, match="does not exist"):
        scorer.image_alignment(images, tmp_path / "missing")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ReferenceImagesError, match="is a file"):
        scorer.image_alignment(images, tmp_path / "a.png")
    empty = tmp_path / "kettle"
    empty.mkdir()
    (empty / "concept.toml").write_text("")
    (empty / "notes.txt").write_text("")
    with pytest.raises(ReferenceImagesError, match=r"has no images .*concept\.toml, notes\.txt"):
        scorer.image_alignment(images, empty)


def _score(scorer, image) -> float:
    return scorer.text_alignment([image], ["a qwiv kettle"], tokens=TOKENS).scores[0]


def test_exact_modes_are_converted(scorer):
    rgb = random_images(1, seed=6)[0]
    opaque = rgb.convert("RGBA")  # alpha 255 everywhere: carries nothing
    assert _score(scorer, opaque) == pytest.approx(_score(scorer, rgb), abs=1e-7)
    gray = rgb.convert("L")
    assert _score(scorer, gray) == pytest.approx(_score(scorer, gray.convert("RGB")), abs=1e-7)
    palette = rgb.convert("P")
    assert _score(scorer, palette) == pytest.approx(_score(scorer, palette.convert("RGB")), abs=1e-7)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Image.new("CMYK", (40, 40), (0, 128, 128, 0)), "is CMYK"),
        (lambda: Image.new("I;16", (40, 40), 40000), "16-bit or float"),
        (lambda: Image.new("F", (40, 40), 0.5), "16-bit or float"),
        (lambda: Image.new("RGBA", (40, 40), (255, 0, 0, 128)), "transparent pixels"),
        (lambda: Image.new("HSV", (40, 40)), "no exact conversion"),
    ],
    ids=["cmyk", "16-bit", "float", "transparent", "hsv"],
)
def test_modes_that_cannot_be_scored_are_refused(scorer, make, message):
    with pytest.raises(ImageModeError, match=message):
        _score(scorer, make())


def test_bad_files_are_all_named_before_the_model_runs(scorer, tmp_path):
    Image.new("I;16", (40, 40), 40000).save(tmp_path / "deep.png")
    Image.new("CMYK", (40, 40)).save(tmp_path / "print.jpg")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    random_images(1)[0].save(tmp_path / "good.png")
    calls = []
    variant = scorer.with_conventions(tiny())
    variant.progress = lambda *args: calls.append(args)
    with pytest.raises(ImageModeError, match=r"^3 images cannot be scored") as caught:
        variant.image_alignment([tmp_path / "good.png"], tmp_path)
    for name in ("deep.png", "print.jpg", "broken.png"):
        assert name in str(caught.value)
    assert calls == []  # refused before the first batch
    assert isinstance(caught.value, BoraError)


def test_argument_errors(scorer):
    images = random_images(2)
    with pytest.raises(ConfigError, match="2 images but 1 prompts"):
        scorer.text_alignment(images, ["a qwiv kettle"], tokens=TOKENS)
    with pytest.raises(ConfigError, match="needs the concept tokens"):
        scorer.text_alignment(images, ["a qwiv kettle"] * 2)
    with pytest.raises(ConfigError, match="none of the 2 prompts holds the token 'zqx'"):
        scorer.text_alignment(images, ["a qwiv kettle"] * 2, tokens={"zqx": "kettle"})
    with pytest.raises(ConfigError, match="with_conventions keeps the model"):
        scorer.with_conventions("default")


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(
        BackboneError, match=r"did you mean ViT-B-32.*known include ViT-B-32, ViT-B-16, ViT-L-14"
    ):
        resolve_weights("ViT-B-33", "openai")


def test_unknown_tag_and_missing_file(tiny_backbone, tmp_path):
    with pytest.raises(WeightsError, match=r"no pretrained tag 'opnai'; did you mean openai"):
        resolve_weights("ViT-B-32", "opnai")
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(TINY, str(tmp_path / "nope.safetensors"))


def test_a_package_plugs_in_its_clip_and_its_grammar_by_subclassing_the_scorer(
    tiny_backbone, scorer, tmp_path
):
    """What the world does for its CLIP and caption grammar (world/scoring.py), with a dummy package: its packaged
    backbone's shipped file loads through its own loader, its grammar gives context accuracy; the plain scorer
    has neither and says so."""
    shipped = tmp_path / "shipped.pt"
    torch.save(scorer.model.state_dict(), shipped)
    loaded = []

    def build(seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model(TINY)

    def load(path):
        loaded.append(path)
        model = build(1)  # other random weights, replaced by the file's
        model.load_state_dict(torch.load(path))
        return model.eval()

    package = PackagedBackbone(
        name=TINY, weights_file=shipped, origin="tests", register=lambda: None, build=build, load=load,
        image_size=lambda: 32, tokenizer=lambda: open_clip.get_tokenizer(TINY), hint="make one",
    )  # fmt: skip
    red = ("a red x on a mat", "a blue x on a mat")
    grammar = ContextGrammar(("color",), lambda text: [Question("color", red, 0)] if text == red[0] else [])

    class PackageScorer(ClipScorer):
        packaged_backbones = (package,)
        context_grammar = grammar

    mine = PackageScorer(tiny(weights="embedded"), device="cpu")
    assert loaded == [shipped.resolve()]
    record = mine.weights_record()
    assert (record["kind"], record["origin"], record["file"]) == ("embedded", "tests", str(shipped.resolve()))
    images = random_images(2)
    assert torch.allclose(
        mine.embed_images(images), scorer.embed_images(images), atol=1e-6
    )  # the file's weights
    cos = mine.embed_images(images[:1]) @ mine.embed_texts(list(red)).T  # [1, 2]
    hit = float(int(torch.argmax(cos[0])) == 0)
    assert mine.context_accuracy(images, [red[0], "a photo"]) == (
        hit,
        {"color": hit},
    )  # the second asks nothing
    assert mine.context_accuracy(images, ["a photo", "a cat"]) is None
    assert scorer.context_accuracy(images, [red[0], "a photo"]) is None  # no grammar: context is not defined
    with pytest.raises(WeightsError, match="only for a backbone a package ships"):
        ClipScorer(tiny(weights="embedded"), device="cpu")
    gone = dataclasses.replace(package, weights_file=tmp_path / "gone.pt")
    with pytest.raises(WeightsError, match=r"gone.pt does not exist: make one"):
        type("Gone", (ClipScorer,), {"packaged_backbones": (gone,)})(tiny(weights="embedded"), device="cpu")


def test_checkpoint_for_another_architecture_or_corrupt_is_refused(tiny_backbone, tmp_path):
    with torch.random.fork_rng(devices=[]):
        other = open_clip.create_model(TINY_OTHER)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=f"does not fit backbone {TINY}"):
        ClipScorer(tiny(weights=str(tmp_path / "other.pt")), device="cpu")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="cannot be read"):
        ClipScorer(tiny(weights=str(tmp_path / "corrupt.pt")), device="cpu")


def test_pretrained_tag_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(
        WeightsUnavailableError, match=r"HF_HUB_OFFLINE=1 forbids downloading.*ViT-B-32-quickgelu"
    ):
        ClipScorer("custom-diffusion", device="cpu", cache_dir=tmp_path)
    assert time.perf_counter() - start < 2.0


@pytest.fixture
def silent_server():
    """A local port that accepts connections and never answers: what a dead or captive network looks like."""
    with socket.create_server(("127.0.0.1", 0)) as server:  # the kernel completes handshakes; nobody replies
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("endpoint", ["silent", "refused"])
def test_pretrained_tag_without_network_fails_fast(monkeypatch, tmp_path, silent_server, endpoint):
    # Online mode, but the hub does not answer: the bounded probe must give up instead of hanging in retries.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.create_server(("127.0.0.1", 0)) as closed:
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}"  # closed when the block ends: refuses
    monkeypatch.setenv("HF_ENDPOINT", silent_server if endpoint == "silent" else refused)
    monkeypatch.setattr(backbone_module, "NETWORK_PROBE_SECONDS", 1.0)
    start = time.perf_counter()
    reason = r"no answer within 1 s|timed out" if endpoint == "silent" else "refused"
    with pytest.raises(WeightsUnavailableError, match=rf"cannot be reached \(.*({reason})"):
        resolve_weights("ViT-B-32", "openai", cache_dir=tmp_path)
    assert time.perf_counter() - start < 3.0


def test_cached_tag_is_found_without_network(monkeypatch, tmp_path):
    # The hub cache layout: models--org--name/refs/main names the snapshot holding the file.
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"stub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_weights("ViT-B-32", "openai", cache_dir=tmp_path)
    assert source.kind == "tag" and source.file == snapshot / "open_clip_model.safetensors"
    assert source.origin == "hf-hub:timm/vit_base_patch32_clip_224.openai"
    assert source.quick_gelu  # OpenAI weights were trained with QuickGELU; open_clip 3 would build plain GELU
    assert source.preprocess["interpolation"] == "bicubic"


def test_a_tags_settings_reach_the_model(tiny_backbone, scorer, tmp_path, monkeypatch):
    # open_clip 3 builds "ViT-B-32" with plain GELU even for the QuickGELU-trained OpenAI weights (it only
    # warns); a resolved tag must build QuickGELU and the tag's preprocessing, whichever file it came from.
    path = tmp_path / "cached.pt"
    torch.save(scorer.model.state_dict(), path)
    preprocess = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear"}
    source = WeightsSource(kind="tag", tag="openai", file=path, quick_gelu=True, preprocess=preprocess)
    monkeypatch.setattr(backbone_module, "resolve_weights", lambda *args, **kwargs: source)
    loaded = backbone_module.load_clip(TINY, "openai")
    activations = {type(module).__name__ for module in loaded.model.modules()}
    assert "QuickGELU" in activations and "GELU" not in activations
    assert "GELU" in {type(module).__name__ for module in scorer.model.modules()}
    normalize = loaded.preprocess.transforms[-1]
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.25, 0.25, 0.25)
    assert "bilinear" in repr(loaded.preprocess.transforms[0])


def test_conventions_round_trip():
    conventions = preset("custom-diffusion")
    assert Conventions.from_dict(conventions.to_dict()) == conventions
    with pytest.raises(ConfigError, match="unknown convention field"):
        Conventions.from_dict({**conventions.to_dict(), "scale": 2})
    assert dataclasses.replace(conventions, prefix="x").preset_name is None
