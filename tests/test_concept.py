"""Concept folders: the shipped examples, every validation problem (all of them in one error), captions, the
concept.toml round trip, training defaults, and the example script's determinism."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from bora_diffusion.concept import (
    Concept,
    ConceptError,
    Prompts,
    TrainDefaults,
    concept_toml,
    load_concept,
    load_concepts,
    write_caption,
    write_concept_toml,
)
from bora_diffusion.config import AdapterConfig, TrainConfig
from bora_diffusion.errors import BoraError, ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "concepts"
SCRIPT = REPO / "scripts" / "make_example_concepts.py"
GOOD_TOML = 'token = "zqdog"\nclass_word = "dog"\n'


@pytest.fixture(scope="session")
def tokenizer():
    from bora_diffusion.embedded import clip_tokenizer

    return clip_tokenizer()


def png(path: Path, size=(64, 64), mode="RGB", color=(120, 80, 40)) -> Path:
    Image.new(mode, size, color).save(path)
    return path


def folder(root: Path, name: str = "dog", toml: str | None = GOOD_TOML, images: int = 2) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if toml is not None:
        (path / "concept.toml").write_text(toml)
    for index in range(images):
        png(path / f"img{index}.png", color=(40 * index, 90, 200))
    return path


def problems(path: Path, tokenizer, **kwargs) -> tuple[tuple[str, ...], str]:
    with pytest.raises(ConceptError) as info:
        load_concept(path, tokenizer=tokenizer, **kwargs)
    return info.value.problems, str(info.value)


def only_problem(path: Path, tokenizer, **kwargs) -> str:
    found, message = problems(path, tokenizer, **kwargs)
    assert len(found) == 1, message
    assert message == f"{path}: 1 problem: {found[0]}"
    return found[0]


def load_script():
    spec = importlib.util.spec_from_file_location("make_example_concepts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------- the examples
def test_shipped_examples_load_cleanly():
    folders = [EXAMPLES / "kettle", EXAMPLES / "robot"]  # the drawn examples (test_world_concepts: the rest)
    concepts = load_concepts(folders)  # default CLIP tokenizer
    assert [c.name for c in concepts] == ["kettle", "robot"]
    for concept in concepts:
        assert len(concept.images) == 8
        for image in concept.images:
            with Image.open(image) as opened:
                assert (opened.size, opened.mode, opened.format) == ((64, 64), "RGB", "PNG")
        captions = [
            c for c in concept.captions.values() if c != concept.fill(concept.prompts.instance_prompt)
        ]
        assert len(captions) == 3
        assert all(c.startswith(f"a photo of {concept.token} {concept.class_word} on a ") for c in captions)
        assert concept.train.method == "sbora_fa" and concept.train.resolution == 64
        assert concept.description


def test_example_tokens_share_no_tokenizer_piece(tokenizer):
    # Two concepts merged into one model are told apart by their tokens' pieces, so they must not overlap.
    kettle, robot = (load_concept(EXAMPLES / name, tokenizer=tokenizer) for name in ("kettle", "robot"))
    assert not set(tokenizer.tokenize(kettle.token)) & set(tokenizer.tokenize(robot.token))


def test_example_script_is_deterministic_and_matches_the_shipped_files(tmp_path):
    script = load_script()
    assert script.main(["--out", str(tmp_path / "a")]) == 0
    assert script.main(["--out", str(tmp_path / "b")]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".png"]) == 16
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
        # The committed examples are what the script makes (pixels, so a different zlib cannot fail this).
        shipped = EXAMPLES / relative
        if relative.suffix == ".png":
            with Image.open(shipped) as old, Image.open(tmp_path / "a" / relative) as new:
                assert np.array_equal(np.asarray(old), np.asarray(new)), relative
        else:
            assert shipped.read_text() == (tmp_path / "a" / relative).read_text(), relative
    other = tmp_path / "seed1"
    script.main(["--out", str(other), "--seed", "1"])
    assert (other / "robot" / "robot_00.png").read_bytes() != (
        tmp_path / "a" / "robot" / "robot_00.png"
    ).read_bytes()


# ---------------------------------------------------------------------------------------------- a good folder
def test_good_folder_loads_with_captions_filled(tmp_path, tokenizer):
    path = folder(tmp_path)
    (path / "img1.txt").write_text("a {token} {class_word} in the snow\n")
    for ignored in (".DS_Store", "README.md", "readme.txt", "Thumbs.db", ".hidden.png"):
        (path / ignored).write_text("not an image")
    concept = load_concept(path, tokenizer=tokenizer)
    assert isinstance(concept, Concept)
    assert (concept.name, concept.token, concept.class_word) == ("dog", "zqdog", "dog")
    assert concept.folder == path.resolve()
    assert concept.images == (path.resolve() / "img0.png", path.resolve() / "img1.png")
    assert concept.instance_prompt(concept.images[0]) == "a photo of zqdog dog"
    assert concept.instance_prompt(concept.images[1]) == "a zqdog dog in the snow"
    assert (
        concept.instance_prompt(path / "img1.png") == "a zqdog dog in the snow"
    )  # unresolved path, same image
    assert concept.captions == {
        concept.images[0]: "a photo of zqdog dog",
        concept.images[1]: "a zqdog dog in the snow",
    }
    assert concept.class_prompt == "a photo of a dog"
    assert concept.sample_prompts == ("a photo of zqdog dog",)
    with pytest.raises(KeyError):
        concept.instance_prompt("other.png")


def test_caption_may_name_the_token_literally_like_kohya(tmp_path, tokenizer):
    path = folder(tmp_path)
    (path / "img0.txt").write_text("zqdog dog, sitting")
    assert (
        load_concept(path, tokenizer=tokenizer).captions[path.resolve() / "img0.png"] == "zqdog dog, sitting"
    )


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1"])
def test_convertible_modes_and_opaque_alpha_are_fine(tmp_path, tokenizer, mode):
    path = folder(tmp_path, images=0)
    color = {"L": 100, "P": 3, "RGBA": (1, 2, 3, 255), "LA": (100, 255), "1": 1}[mode]
    png(path / "a.png", mode=mode, color=color)
    Image.new("CMYK", (64, 64), (10, 20, 30, 40)).save(path / "b.jpg")
    Image.new("RGB", (64, 64)).save(path / "c.webp")
    assert len(load_concept(path, tokenizer=tokenizer).images) == 3


def test_multi_piece_made_up_tokens_are_accepted(tmp_path, tokenizer):
    for index, token in enumerate(["qwiv", "<zq-kettle>", "<my-dog>", "Zwx"]):
        path = folder(tmp_path, name=f"c{index}", toml=f'token = "{token}"\nclass_word = "kettle"\n')
        assert load_concept(path, tokenizer=tokenizer).token == token


# -------------------------------------------------------------------------------------------------- problems
def test_every_problem_appears_in_one_error(tmp_path, tokenizer):
    path = folder(tmp_path, toml='tokn = "zqdog"\nclass_word = "dog"\n[train]\nrank = 0\n', images=0)
    (path / "notes.docx").write_bytes(b"PK\x03\x04 not really a docx")
    png(path / "small.png", size=(32, 32))
    (path / "fake.png").write_text("I am text")
    png(path / "cut.png", size=(80, 80))
    (path / "cut.png").write_bytes((path / "cut.png").read_bytes()[:60])
    (path / "orphan.txt").write_text("a {token} {class_word}")
    Image.fromarray(np.full((64, 64), 60000, np.uint16)).save(path / "deep.png")
    (path / "sub").mkdir()
    found, message = problems(path, tokenizer)
    expected = [
        "concept.toml: unknown key 'tokn' (did you mean 'token'?)",
        "concept.toml has no token",
        "[train] rank must be a positive integer, got 0",
        "cut.png is a corrupt or unreadable image",
        "deep.png has 16-bit or float pixels (mode I;16)",
        "fake.png is not an image, whatever its extension says",
        "notes.docx is not an image (expected .png, .jpg, .jpeg, .webp)",
        "orphan.txt is a caption without an image",
        "small.png is 32x32, smaller than 64 px",
        "sub/ is a folder",
    ]
    assert message.startswith(f"{path}: {len(expected)} problems: ")
    assert len(found) == len(expected), message
    for text in expected:
        assert text in message
    assert "\n" not in message


def test_missing_or_not_a_folder(tmp_path, tokenizer):
    assert only_problem(tmp_path / "nowhere", tokenizer) == "folder does not exist"
    (tmp_path / "file").write_text("x")
    assert only_problem(tmp_path / "file", tokenizer) == "is not a folder"


def test_no_concept_toml_and_a_misnamed_one(tmp_path, tokenizer):
    path = folder(tmp_path, toml=None)
    assert only_problem(path, tokenizer).startswith("no concept.toml (it holds token")
    (path / "settings.toml").write_text(GOOD_TOML)
    found, _ = problems(path, tokenizer)
    assert "no concept.toml (found settings.toml: rename it)" in found
    assert "settings.toml is not an image (expected .png, .jpg, .jpeg, .webp)" in found


def test_toml_syntax_error_names_the_line(tmp_path, tokenizer):
    path = folder(tmp_path, toml='token = "zqdog"\nclass_word = dog\n')
    problem = only_problem(path, tokenizer)
    assert problem.startswith("concept.toml is not valid TOML") and "line 2" in problem


def test_toml_that_is_not_utf8(tmp_path, tokenizer):
    path = folder(tmp_path, toml=None)
    (path / "concept.toml").write_bytes(b'token = "zq\xff"\nclass_word = "dog"\n')
    assert only_problem(path, tokenizer) == "concept.toml is not UTF-8 text"


def test_unknown_keys_are_typos_with_suggestions(tmp_path, tokenizer):
    toml = GOOD_TOML + 'colour = "x"\n[prompts]\ninstance = "{token}"\n[train]\nstpes = 3\n'
    found, _ = problems(folder(tmp_path, toml=toml), tokenizer)
    assert found == (
        "concept.toml: unknown key 'colour' (known: token, class_word, description, prompts, train)",
        "concept.toml: [prompts] unknown key 'instance' (did you mean 'instance_prompt'?)",
        "concept.toml: [train] unknown key 'stpes' (did you mean 'steps'?)",
    )


def test_missing_token_and_class_word_and_wrong_types(tmp_path, tokenizer):
    found, _ = problems(folder(tmp_path, toml='description = "x"\n'), tokenizer)
    assert found == (
        'concept.toml has no token (add e.g. token = "zqdog": a made-up word)',
        'concept.toml has no class_word (add e.g. class_word = "dog": what the concept is)',
    )
    found, _ = problems(
        folder(tmp_path, name="b", toml='token = 5\nclass_word = "dog"\ntrain = 3\n'), tokenizer
    )
    assert "concept.toml: token must be a string, got an integer 5" in found
    assert "concept.toml: train must be a table ([train]), got an integer 3" in found


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("dog", "token 'dog' is already a word of the text encoder's vocabulary (id 1929)"),
        ("Kettle", "token 'Kettle' is already a word of the text encoder's vocabulary"),
        ("sks", "token 'sks' is already a word of the text encoder's vocabulary"),  # DreamBooth's rifle
        ("<|endoftext|>", "token '<|endoftext|>' is a special token of the tokenizer"),
        ("zq dog", "token 'zq dog' has a space"),
        ("zq{x}", "token 'zq{x}' must not contain { or }"),
        ("", "token is empty"),
    ],
)
def test_bad_tokens(tmp_path, tokenizer, token, expected):
    path = folder(tmp_path, toml=f'token = "{token}"\nclass_word = "teapot"\n')
    assert only_problem(path, tokenizer).startswith(expected)


def test_vocabulary_advice_suggests_a_made_up_word(tmp_path, tokenizer):
    problem = only_problem(folder(tmp_path, toml='token = "dog"\nclass_word = "puppy"\n'), tokenizer)
    assert "'zqdog'" in problem and "several rare pieces are fine" in problem
    assert "zqdog</w>" not in tokenizer.get_vocab()


def test_token_equal_to_class_word_is_caught_without_a_vocabulary(tmp_path):
    path = folder(tmp_path, toml='token = "zqdog"\nclass_word = "ZQDOG"\n')
    with pytest.raises(ConceptError, match="equals the class word"):
        load_concept(path, tokenizer=_NoVocabulary())


class _NoVocabulary:
    model_max_length = 77
    all_special_tokens: ClassVar[list[str]] = []

    def get_vocab(self) -> dict[str, int]:
        return {}

    def tokenize(self, text: str) -> list[str]:
        return text.split()


def test_token_taken_by_another_concept_ignoring_case(tmp_path, tokenizer):
    path = folder(tmp_path)
    problem = only_problem(path, tokenizer, other_tokens=["ZQDog"])
    assert problem == "token 'zqdog' is already the token of another concept: each concept needs its own"


def test_no_images(tmp_path, tokenizer):
    assert (
        only_problem(folder(tmp_path, images=0), tokenizer)
        == "no images (add .png, .jpg, .jpeg, .webp files)"
    )


def test_files_in_other_image_formats_say_how_to_fix_them(tmp_path, tokenizer):
    path = folder(tmp_path)
    Image.new("RGB", (64, 64)).save(path / "photo.bmp")
    Image.new("RGB", (64, 64)).save(path / "photo2.jfif", format="JPEG")
    found, _ = problems(path, tokenizer)
    assert found == (
        "photo.bmp is a BMP image, which is not read here: convert it to PNG (expected .png, .jpg, .jpeg, .webp)",
        "photo2.jfif is a JPEG image without an image extension: rename it to photo2.jpg",
    )


def test_image_size_limit_is_a_parameter_and_applies_to_either_side(tmp_path, tokenizer):
    path = folder(tmp_path)
    png(path / "wide.png", size=(200, 40))
    assert only_problem(path, tokenizer) == "wide.png is 200x40, smaller than 64 px"
    assert len(load_concept(path, tokenizer=tokenizer, min_size=32).images) == 3


def test_every_small_image_is_named(tmp_path, tokenizer):
    found, _ = problems(folder(tmp_path), tokenizer, min_size=512)
    assert found == ("img0.png is 64x64, smaller than 512 px", "img1.png is 64x64, smaller than 512 px")


def test_truncated_jpeg_is_corrupt(tmp_path, tokenizer):
    path = folder(tmp_path)
    Image.new("RGB", (96, 96), (200, 10, 10)).save(path / "cut.jpg")
    (path / "cut.jpg").write_bytes((path / "cut.jpg").read_bytes()[:-10])
    assert only_problem(path, tokenizer).startswith("cut.jpg is a corrupt or unreadable image")


def test_sixteen_bit_images_would_turn_white(tmp_path, tokenizer):
    path = folder(tmp_path)
    Image.fromarray(np.full((64, 64), 60000, np.uint16)).save(path / "deep.png")
    with Image.open(path / "deep.png") as image:
        assert image.convert("RGB").getpixel((0, 0)) == (255, 255, 255)  # what training would see
    assert "save it as 8-bit RGB" in only_problem(path, tokenizer)


def test_transparent_pixels(tmp_path, tokenizer):
    path = folder(tmp_path)
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    image.putpixel((3, 3), (255, 0, 0, 0))
    image.save(path / "cutout.png")
    # Accepted since issue 23: training flattens it onto white (data.flatten, tests/test_robustness.py).
    assert path.resolve() / "cutout.png" in load_concept(path, tokenizer=tokenizer).images


def test_caption_problems(tmp_path, tokenizer):
    path = folder(tmp_path, images=0)
    for name in ("a", "b", "c", "d", "e"):
        png(path / f"{name}.png")
    png(path / "e.jpg")
    (path / "a.txt").write_text("   \n")
    (path / "b.txt").write_text("a {tokn} {class_word}")
    (path / "c.txt").write_text("a dog on a sofa")
    (path / "c.png.txt").write_text("{token}")
    (path / "e.txt").write_text("{token}")
    (path / "x.txt").write_text("{token}")
    (path / "d.txt").write_text("{token} " + "very " * 80)
    found, _ = problems(path, tokenizer)
    assert found == (
        "a.txt is empty: write a caption, or delete it to use the instance prompt",
        "b.txt has {tokn}: only {token} and {class_word} are filled in",
        "b.txt does not mention {token}, so its image would not teach the token",
        "c.png.txt is a caption without an image (name it c.txt)",
        "c.txt does not mention {token}, so its image would not teach the token",
        "e.txt could caption e.jpg or e.png: give the images different names",
        "x.txt is a caption without an image (name it like its image: a.png -> a.txt)",
        "d.png's caption is 85 tokens long, the text encoder reads 77: the rest would be cut off",
    )


def test_caption_that_is_not_utf8(tmp_path, tokenizer):
    path = folder(tmp_path)
    (path / "img0.txt").write_bytes(b"\xff\xfe{token}")
    assert only_problem(path, tokenizer) == "img0.txt is not UTF-8 text"


def test_folder_name_must_name_an_adapter(tmp_path, tokenizer):
    problem = only_problem(folder(tmp_path, name="my.dog"), tokenizer)
    assert problem.startswith("folder name 'my.dog' cannot name a concept")


def test_prompt_template_problems(tmp_path, tokenizer):
    toml = (
        GOOD_TOML
        + '[prompts]\ninstance_prompt = "a photo"\nclass_prompt = "{token}"\nsample_prompts = ["", "{x}"]\n'
    )
    found, _ = problems(folder(tmp_path, toml=toml), tokenizer)
    assert found == (
        "concept.toml: [prompts] sample_prompts[0] must be a non-empty string, got ''",
        "concept.toml: [prompts] sample_prompts[1] has {x}: only {token} and {class_word} are filled in",
        "concept.toml: [prompts] instance_prompt 'a photo' has no {token}: the images would not teach it",
        "concept.toml: [prompts] class_prompt '{token}' must not hold {token}: it describes the plain class",
    )


def test_train_table_problems_are_all_reported(tmp_path, tokenizer):
    toml = GOOD_TOML + (
        '[train]\nmethod = "lorra"\nrank = true\nalpha = -1\nblocks = 2\ntargets = "everything"\n'
        'steps = 0\nlearning_rate = "fast"\nresolution = 64\n'
    )
    found, _ = problems(folder(tmp_path, toml=toml), tokenizer)
    text = " | ".join(found)
    assert len(found) == 6, text
    for expected in (
        "[train] rank must be an integer, got a boolean True",
        "[train] learning_rate must be a number, got a string 'fast'",
        "[train] method 'lorra' is unknown",
        "[train] alpha must be positive",
        "[train] steps must be a positive integer, got 0",
        "[train] unknown target preset 'everything'",
    ):
        assert expected in text
    toml = GOOD_TOML + '[train]\nmethod = "lora"\nblocks = 2\n'
    assert "blocks is an option of bora_block only" in only_problem(
        folder(tmp_path, name="b", toml=toml), tokenizer
    )


def test_concept_error_is_a_bora_error(tmp_path, tokenizer):
    with pytest.raises(BoraError):
        load_concept(tmp_path / "nowhere", tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------- several concepts
def test_two_concepts_with_the_same_token_are_named_both(tmp_path, tokenizer):
    first = folder(tmp_path, name="dog")
    second = folder(tmp_path, name="dog2", toml='token = "ZQDOG"\nclass_word = "dog"\n')
    with pytest.raises(ConceptError) as info:
        load_concepts([first, second], tokenizer=tokenizer)
    assert str(info.value) == (
        f"1 of 2 concept folders have problems: {second}: 1 problem: token 'ZQDOG' is also the token of {first}"
    )


def test_two_concepts_with_the_same_name_and_all_folders_reported(tmp_path, tokenizer):
    first = folder(tmp_path / "a", name="dog")
    second = folder(tmp_path / "b", name="dog", toml='token = "zqcat"\nclass_word = "cat"\n')
    broken = folder(tmp_path, name="broken", images=0)
    with pytest.raises(ConceptError) as info:
        load_concepts([first, second, broken], tokenizer=tokenizer)
    message = str(info.value)
    assert message.startswith("2 of 3 concept folders have problems: ")
    assert f"{second}: 1 problem: name 'dog' is also the name of {first} (names key the adapters)" in message
    assert (
        f"{broken}: 2 problems: no images (add .png, .jpg, .jpeg, .webp files); token 'zqdog' is also"
        in message
    )
    assert len(info.value.problems) == 3


def test_load_concepts_of_nothing_and_of_good_folders(tmp_path, tokenizer):
    assert load_concepts([], tokenizer=tokenizer) == []
    concepts = load_concepts(
        [folder(tmp_path, name="a"), folder(tmp_path, name="b", toml='token = "zqb"\nclass_word = "cat"\n')],
        tokenizer=tokenizer,
    )
    assert [c.token for c in concepts] == ["zqdog", "zqb"]


# --------------------------------------------------------------------------------------------------- writing
def test_toml_round_trip(tmp_path, tokenizer):
    prompts = Prompts(
        instance_prompt='a "photo" of {token} {class_word}',
        class_prompt="a photo of a {class_word}",
        sample_prompts=("{token} {class_word} on a beach", "a painting of {token} {class_word}, \\ style"),
    )
    train = TrainDefaults(
        method="bora_block",
        rank=8,
        alpha=4,
        blocks=2,
        targets=("attn2\\.to_k$",),
        steps=300,
        learning_rate=1e-05,
        batch_size=2,
        resolution=64,
        prior_weight=0.5,
    )
    path = tmp_path / "dog"
    description = 'tab\there, "quotes", back\\slash, new\nline, é, \x7f'
    written = write_concept_toml(path, "zqdog", "dog", description=description, prompts=prompts, train=train)
    assert written == path / "concept.toml"
    png(path / "a.png")
    concept = load_concept(path, tokenizer=tokenizer)
    assert (concept.token, concept.class_word, concept.description) == ("zqdog", "dog", description)
    assert concept.prompts == prompts
    assert concept.train == train and concept.train.alpha == 4.0
    assert concept.to_toml() == written.read_text(encoding="utf-8")
    data = tomllib.loads(concept.to_toml())
    assert data["train"] == train.to_dict()
    assert data["prompts"] == prompts.to_dict()
    assert list(tmp_path.glob("dog/.*")) == []  # the atomic write left no temporary file


def test_defaults_round_trip_and_validation_on_write(tmp_path):
    text = concept_toml("zqdog", "dog")
    assert tomllib.loads(text) == {
        "token": "zqdog",
        "class_word": "dog",
        "prompts": Prompts().to_dict(),
        "train": {},
    }
    with pytest.raises(ConceptError, match="has a space"):
        write_concept_toml(tmp_path / "x", "zq dog", "dog")
    assert not (tmp_path / "x").exists()


def test_write_caption(tmp_path, tokenizer):
    path = folder(tmp_path)
    written = write_caption(path / "img0.png", "a {token}\n{class_word} at the beach ")
    assert written == path / "img0.txt"
    assert (
        load_concept(path, tokenizer=tokenizer).instance_prompt(path / "img0.png")
        == "a zqdog dog at the beach"
    )
    with pytest.raises(ConceptError, match="only {token} and {class_word}"):
        write_caption(path / "img1.png", "{toke}")


# ------------------------------------------------------------------------------------------- training defaults
def test_train_defaults_overlay_the_trainers_and_yield_to_overrides():
    train = TrainDefaults(method="bora_block", rank=8, blocks=2, steps=300, learning_rate=5e-4)
    assert train.adapter_config() == AdapterConfig(method="bora_block", rank=8, blocks=2)
    # A method chosen over the concept's drops the concept's blocks, which were for bora_block.
    assert train.adapter_config(method="lora", rank=None) == AdapterConfig(method="lora", rank=8)
    assert TrainDefaults().adapter_config(default_method="sbora_fa", seed=3) == AdapterConfig(
        method="sbora_fa", seed=3
    )
    base = TrainConfig(steps=50, batch_size=4)
    assert train.train_config(base) == TrainConfig(steps=300, learning_rate=5e-4, batch_size=4)
    assert train.train_config(base, steps=10).steps == 10


def test_concept_train_config_brings_its_sample_prompts(tmp_path, tokenizer):
    concept = load_concept(EXAMPLES / "kettle", tokenizer=tokenizer)
    config = concept.train_config()
    assert config.sample_prompts == concept.sample_prompts
    assert config.sample_prompts[1] == "a photo of qwiv kettle on a beach"
    assert concept.train_config(sample_prompts=("x",)).sample_prompts == ("x",)
    assert concept.adapter_config() == AdapterConfig(method="sbora_fa", rank=4)


def test_train_defaults_validate_like_the_configs():
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        TrainDefaults(rank=0)
    with pytest.raises(ConfigError, match="did you mean 'rank'"):
        TrainDefaults.from_dict({"rnak": 4})
    assert TrainDefaults.from_dict({"targets": ["a", "b"]}).targets == ("a", "b")
    assert TrainDefaults(targets=["x"]).to_dict() == {"targets": ["x"]}


def test_concept_built_directly_is_validated_and_captioned(tmp_path):
    concept = Concept(
        name="dog",
        folder=tmp_path,
        token="zqdog",
        class_word="dog",
        images=[tmp_path / "b.png", tmp_path / "a.png"],
    )
    assert concept.images == (tmp_path / "a.png", tmp_path / "b.png")
    assert concept.captions == {
        tmp_path / "a.png": "a photo of zqdog dog",
        tmp_path / "b.png": "a photo of zqdog dog",
    }
    with pytest.raises(ConceptError) as info:
        Concept(
            name="my dog",
            folder=tmp_path,
            token="",
            class_word="dog",
            images=(),
            captions={tmp_path / "x.png": "x"},
        )
    assert len(info.value.problems) == 4


# ----------------------------------------------------------------------------------- the [train] table's schema
def test_every_shipped_concept_toml_is_written_back_byte_for_byte(tokenizer):
    # What the writer makes of a shipped file is that file: key order, number forms and layout unchanged.
    folders = sorted(path.parent for path in EXAMPLES.glob("*/concept.toml"))
    assert len(folders) >= 8
    for concept in load_concepts(folders, tokenizer=tokenizer):
        assert concept.to_toml() == (concept.folder / "concept.toml").read_text(encoding="utf-8"), (
            concept.name
        )


def test_an_old_style_train_table_loads_with_the_values_it_always_had(tmp_path, tokenizer):
    # Every key concept.toml had before the schema, in the forms people wrote them (alpha as an integer).
    old = (
        '[train]\nmethod = "bora_block"\nrank = 2\nalpha = 4\nblocks = 3\ntargets = ["attn2\\\\.to_k$"]\n'
        "steps = 300\nlearning_rate = 0.0005\nbatch_size = 2\nresolution = 64\nprior_weight = 0.5\n"
        "lock_weight = 1\nword_lock_weight = 2.5\ntrain_embedding = true\nembedding_learning_rate = 0.005\n"
        "embedding_vectors = 2\n"
    )
    train = load_concept(folder(tmp_path, toml=GOOD_TOML + old), tokenizer=tokenizer).train
    assert train.to_dict() == {
        "method": "bora_block", "rank": 2, "alpha": 4.0, "blocks": 3, "targets": ["attn2\\.to_k$"],
        "steps": 300, "learning_rate": 5e-4, "batch_size": 2, "resolution": 64, "prior_weight": 0.5,
        "lock_weight": 1.0, "word_lock_weight": 2.5, "train_embedding": True, "embedding_learning_rate": 5e-3,
        "embedding_vectors": 2,
    }  # fmt: skip
    assert isinstance(train.alpha, float) and isinstance(train.lock_weight, float)
    assert (train.rank, train.blocks, train.targets, train.options) == (
        2,
        3,
        ("attn2\\.to_k$",),
        {"blocks": 3},
    )
    assert train.adapter_config() == AdapterConfig(
        "bora_block", rank=2, alpha=4.0, blocks=3, targets=("attn2\\.to_k$",)
    )
    config = train.train_config()
    assert (config.steps, config.learning_rate, config.lock_weight, config.embedding_vectors) == (
        300,
        5e-4,
        1.0,
        2,
    )
    assert train.snr_gamma is None  # a setting the table leaves out reads as "not set"


def test_every_training_setting_is_a_train_key_checked_by_its_own_rule(tmp_path, tokenizer):
    toml = GOOD_TOML + '[train]\nlr_schedule = "cosine"\nsnr_gamma = 5\ngradient_checkpointing = true\n'
    concept = load_concept(folder(tmp_path, toml=toml), tokenizer=tokenizer)
    config = concept.train_config()
    assert (config.lr_schedule, config.snr_gamma, config.gradient_checkpointing) == ("cosine", 5.0, True)
    assert concept.train.train_config(lr_schedule="linear").lr_schedule == "linear"  # a flag still beats it
    bad = GOOD_TOML + '[train]\nlr_schedule = "exponential"\nwarmup_steps = -1\nadam_8bit = 1\n'
    found, _ = problems(folder(tmp_path, name="bad", toml=bad), tokenizer)
    assert found == (
        "concept.toml: [train] adam_8bit must be true or false, got an integer 1",
        "concept.toml: [train] lr_schedule must be one of constant, constant_with_warmup, linear, cosine, "
        "cosine_with_restarts, polynomial, got 'exponential'",
        "concept.toml: [train] warmup_steps must be a non-negative integer, got -1",
    )


def test_train_defaults_are_immutable_hashable_and_survive_pickling():
    import pickle

    train = TrainDefaults(method="bora_block", blocks=2, targets=["a"])
    assert pickle.loads(pickle.dumps(train)) == train and hash(pickle.loads(pickle.dumps(train))) == hash(
        train
    )
    assert train == TrainDefaults(targets=("a",), blocks=2, method="bora_block")  # keyword order is no matter
    assert list(TrainDefaults(steps=3, method="lora").to_dict()) == ["method", "steps"]  # file order
    assert len({train, TrainDefaults(method="bora_block", blocks=2, targets=["a"])}) == 1
    with pytest.raises(AttributeError):
        train.rank = 3
    with pytest.raises(ConfigError, match=r"^unknown key 'stepz' \(did you mean 'steps'\?\)$"):
        TrainDefaults(stepz=3)


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("train_embedding", True, "train_embedding = true"),  # bool
        ("cache_latents", False, "cache_latents = false"),
        ("steps", 300, "steps = 300"),  # int
        ("blocks", 3, "blocks = 3"),  # a method's int option
        ("learning_rate", 1e-05, "learning_rate = 1e-05"),  # float
        ("alpha", 4, "alpha = 4.0"),  # an int given for a float, written as the float it is
        ("snr_gamma", 5.5, "snr_gamma = 5.5"),  # optional float
        ("prior_weight", 0.0, "prior_weight = 0.0"),
        ("lr_schedule", "cosine_with_restarts", 'lr_schedule = "cosine_with_restarts"'),  # str of choices
        ("method", "sbora_fb", 'method = "sbora_fb"'),  # str
        ("targets", "cross_kv", 'targets = "cross_kv"'),  # a preset name
        ("targets", ["to_k$", 'a"b\\.c'], 'targets = ["to_k$", "a\\"b\\\\.c"]'),  # regular expressions
    ],
)
def test_each_kind_of_setting_is_written_readably_and_reads_back_equal(key, value, line):
    train = TrainDefaults(**{key: value})
    text = concept_toml("zqdog", "dog", train=train)
    assert text.endswith(f"[train]  # a key left out means the trainer's default\n{line}\n")
    back = TrainDefaults.from_dict(tomllib.loads(text)["train"])
    assert back == train and type(getattr(back, key)) is type(getattr(train, key))
