"""Tests of the embedded default base model (`embedded.py`) and the base loader (`pipeline.py`).

Every test that saves the embedded default points `BORA_DIFFUSION_HOME` at a temporary folder, so the real home is
never written. Hub ids are tried with huggingface_hub forced offline, so no test touches the network.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from bora_diffusion import embedded
from bora_diffusion.embedded import (
    CLIP_VOCAB_SIZE,
    EMBEDDED_NAME,
    build_tiny_pipeline,
    clip_tokenizer,
    default_pipeline,
    embedded_dir,
    ensure_embedded_default,
    is_complete,
)
from bora_diffusion.errors import ConfigError
from bora_diffusion.pipeline import EMBEDDED_GUIDANCE, SD_GUIDANCE, base_name, default_guidance, load_base


def _state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty bora-diffusion home for one test."""
    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def built_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home holding a saved embedded default, shared by the tests that only read it."""
    home = tmp_path_factory.mktemp("built_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BORA_DIFFUSION_HOME", str(home))
        ensure_embedded_default()
        yield home


@pytest.fixture
def use_built_home(built_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(built_home))
    return built_home


@pytest.fixture
def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every folder the embedded default's weights get written into."""
    calls: list[Path] = []
    original = embedded._write_default_weights

    def counting(folder: Path) -> None:
        calls.append(folder)
        original(folder)

    monkeypatch.setattr(embedded, "_write_default_weights", counting)
    return calls


# --- tokenizer -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a photo of a sks dog",
        "Hello, World! It's 3:45pm... right?",
        "a watercolor painting of an antidisestablishmentarian xylophonist (zqxjkv)",
        "  mixed   CASE\twhitespace; semi-colons & ampersands #hashtag @user 2024  ",
        "café naïve",
    ],
)
def test_tokenizer_ids_equal_open_clip(text: str) -> None:
    reference = SimpleTokenizer()
    expected = [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
    assert clip_tokenizer()(text).input_ids == expected


def test_tokenizer_vocabulary_and_padding() -> None:
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == CLIP_VOCAB_SIZE == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token_id == 49406
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 49407
    ids = tokenizer("a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[:4] == [49406, 320, 2368, 49407]
    assert set(ids[4:]) == {49407}
    assert (
        tokenizer.decode(tokenizer("a photo of a dog").input_ids, skip_special_tokens=True)
        == "a photo of a dog"
    )


def test_tokenizer_calls_are_independent() -> None:
    first = clip_tokenizer()
    first.add_tokens(["<sks-concept>"])
    assert len(clip_tokenizer()) == CLIP_VOCAB_SIZE


# --- building ------------------------------------------------------------------------------------------------


def test_build_is_deterministic_per_seed() -> None:
    rng_before = torch.random.get_rng_state()
    first, second, other = build_tiny_pipeline(0), build_tiny_pipeline(0), build_tiny_pipeline(1)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "building must not move the global RNG"
    for component in ("unet", "vae", "text_encoder"):
        state = getattr(first, component).state_dict()
        assert _state_equal(state, getattr(second, component).state_dict()), component
        assert not _state_equal(state, getattr(other, component).state_dict()), component


def test_build_shape_and_size() -> None:
    pipe = build_tiny_pipeline(0)
    attention_widths = {
        module.weight.shape[0]
        for name, module in pipe.unet.named_modules()
        if isinstance(module, torch.nn.Linear) and (".attn1." in name or ".attn2." in name)
    }
    assert attention_widths == {32, 64}
    assert pipe.text_encoder.config.vocab_size == CLIP_VOCAB_SIZE
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert pipe.safety_checker is None
    parameters = sum(
        p.numel() for part in (pipe.unet, pipe.vae, pipe.text_encoder) for p in part.parameters()
    )
    assert parameters < 5_000_000


# --- saving once, atomically ---------------------------------------------------------------------------------


def test_home_dir_follows_environment(home: Path) -> None:
    assert embedded.home_dir() == home
    assert embedded_dir() == home / "embedded" / "world-base-2"


def test_ensure_builds_once(home: Path, count_builds: list[Path]) -> None:
    folder = ensure_embedded_default()
    assert folder == embedded_dir()
    assert is_complete(folder)
    assert (folder / "model_index.json").is_file()
    assert len(count_builds) == 1
    mtime = (folder / "model_index.json").stat().st_mtime_ns

    assert ensure_embedded_default() == folder
    assert len(count_builds) == 1
    assert (folder / "model_index.json").stat().st_mtime_ns == mtime
    # Only the finished folder is left in place: no staging or trash siblings.
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]


def test_staging_folder_is_never_taken_as_complete(home: Path) -> None:
    folder = embedded_dir()
    folder.parent.mkdir(parents=True)
    staging = folder.parent / f".{folder.name}.tmp-left-by-a-crash"
    build_tiny_pipeline(0).save_pretrained(staging)  # everything but the marker, as at a crash before it
    assert not is_complete(staging)
    assert not is_complete(folder)


@pytest.mark.parametrize("damage", ["delete_weights", "truncate_weights", "delete_marker", "old_recipe"])
def test_damaged_folder_is_rebuilt(
    damage: str, home: Path, built_home: Path, count_builds: list[Path]
) -> None:
    folder = embedded_dir()
    shutil.copytree(built_home / "embedded" / folder.name, folder)
    assert is_complete(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    marker = folder / "bora_embedded.json"
    if damage == "delete_weights":
        weights.unlink()
    elif damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "delete_marker":
        marker.unlink()
    else:
        marker.write_text(json.dumps({**json.loads(marker.read_text()), "recipe_version": 0}))
    assert not is_complete(folder)

    assert ensure_embedded_default() == folder
    assert len(count_builds) == 1
    assert is_complete(folder)
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]


def test_crash_during_build_leaves_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(folder: Path) -> None:
        (folder / "model_index.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_write_default_weights", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_embedded_default()
    assert not embedded_dir().exists()
    assert list(embedded_dir().parent.iterdir()) == []


# --- loading -------------------------------------------------------------------------------------------------


def test_load_base_round_trip(use_built_home: Path, count_builds: list[Path]) -> None:
    reference = default_pipeline()  # the shipped world base, or the random tiny one where none is shipped
    folder = embedded_dir()
    for base in (None, "embedded", EMBEDDED_NAME, str(folder)):
        pipe = load_base(base)
        assert _state_equal(pipe.unet.state_dict(), reference.unet.state_dict()), base
        assert _state_equal(pipe.text_encoder.state_dict(), reference.text_encoder.state_dict()), base
        assert len(pipe.tokenizer) == CLIP_VOCAB_SIZE
        assert pipe.tokenizer("a sks dog").input_ids == reference.tokenizer("a sks dog").input_ids
        assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert count_builds == []


def test_load_base_dtype(use_built_home: Path) -> None:
    pipe = load_base(None, torch_dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16


def test_load_base_is_silent(use_built_home: Path, capfd: pytest.CaptureFixture[str]) -> None:
    pipe = load_base("embedded")
    pipe("a dog", num_inference_steps=2, height=64, width=64, output_type="np")
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_generation_is_deterministic(use_built_home: Path) -> None:
    pipe = load_base(None)

    def generate() -> np.ndarray:
        generator = torch.Generator().manual_seed(1234)
        return pipe(
            "a photo of a sks dog",
            num_inference_steps=3,
            height=64,
            width=64,
            generator=generator,
            output_type="np",
        ).images

    first, second = generate(), generate()
    assert first.shape == (1, 64, 64, 3)
    assert np.isfinite(first).all()
    assert np.array_equal(first, second)


# --- errors and names ----------------------------------------------------------------------------------------


def test_missing_path_is_config_error(tmp_path: Path) -> None:
    for base in ("./no-such-model", str(tmp_path / "missing"), "~/no-such-bora-model", "a/b/c"):
        with pytest.raises(ConfigError, match="does not exist") as info:
            load_base(base)
        assert base in str(info.value)
        assert "\n" not in str(info.value)


def test_folder_without_model_index_is_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-pipeline"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"model_index\.json") as info:
        load_base(str(folder))
    assert str(folder) in str(info.value)


def test_unsupported_pipeline_class_is_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ConfigError, match="FluxPipeline"):
        load_base(str(folder))


def test_file_is_config_error(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(ConfigError, match="is a file"):
        load_base(str(checkpoint))


def test_uncached_hub_id_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force offline mode even if the environment forgot HF_HUB_OFFLINE, so the test never waits on the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    base = "bora-diffusion-tests/surely-not-cached"
    with pytest.raises(ConfigError, match="Hugging Face Hub") as info:
        load_base(base)
    assert base in str(info.value)
    assert "\n" not in str(info.value)


def test_base_name(tmp_path: Path, use_built_home: Path) -> None:
    assert base_name(None) == base_name("embedded") == base_name(EMBEDDED_NAME) == EMBEDDED_NAME
    assert base_name(str(embedded_dir())) == EMBEDDED_NAME
    assert (
        base_name("stable-diffusion-v1-5/stable-diffusion-v1-5")
        == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )
    local = tmp_path / "my-base"
    local.mkdir()
    assert base_name(str(local)) == "my-base"
    assert base_name(str(local) + "/") == "my-base"
    snapshot = tmp_path / "models--someone--some-model" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert base_name(str(snapshot)) == "someone/some-model"
    with pytest.raises(ConfigError, match="does not exist"):
        base_name(str(tmp_path / "missing"))


def test_default_guidance_is_the_embedded_bases_own_and_sds_elsewhere(
    tmp_path: Path, use_built_home: Path
) -> None:
    assert default_guidance(None) == default_guidance(str(embedded_dir())) == EMBEDDED_GUIDANCE == 3.0
    assert default_guidance("stable-diffusion-v1-5/stable-diffusion-v1-5") == SD_GUIDANCE == 7.5
    local = tmp_path / "my-base"
    local.mkdir()
    assert default_guidance(str(local)) == 7.5
