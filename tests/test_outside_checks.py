"""Issue 23's outside checks (items 1, 5-10): non-finite adapters and scales, generate's numbers, importing a
diffusers folder, the skipped text-encoder layers, output modes under the umask, the bare base as a diffusers
folder, and `inspect` on an imported file. Every bad input is built here, in tmp_path; the command-line ones
that need no adapter of their own (scales, seeds, guidance, sizes, an empty import folder) are rows of
tests/test_bad_inputs.py's table.
"""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np
import pytest
import torch
from conftest import perturb
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bora_diffusion import AdapterConfig
from bora_diffusion.cli import main
from bora_diffusion.errors import BoraError, ConfigError
from bora_diffusion.formats import read_adapter, save_adapter
from bora_diffusion.inject import inject
from bora_diffusion.pipeline import load_base


@pytest.fixture(autouse=True)
def _home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path_factory.getbasetemp() / "home"))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A perturbed lora concept on the embedded base (all 56 attention projections)."""
    os.environ["BORA_DIFFUSION_HOME"] = str(tmp_path_factory.getbasetemp() / "home")
    pipe = load_base()
    config = AdapterConfig(method="lora", rank=2)
    inject(pipe.unet, config, name="kettle")
    perturb(pipe.unet, "kettle", std=0.05)
    path = tmp_path_factory.mktemp("adapter") / "kettle.safetensors"
    return save_adapter(path, pipe.unet, "kettle", config, base_name="embedded:world-base-2")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --- item 1 -------------------------------------------------------------------------------------------------


def _with_bad_value(src, dst, value: float) -> str:
    """Copy `src` to `dst` with one value of one tensor replaced; return that tensor's key."""
    tensors = load_file(src)
    metadata = safe_open(str(src), "pt").metadata()
    key = sorted(k for k in tensors if k.endswith((".B", "lora_up.weight")))[3]
    tensors[key][0, 0] = value
    save_file(tensors, dst, metadata=metadata)
    return key


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_adapter_tensors_are_refused_naming_file_layer_and_tensor(
    value, tmp_path, adapter, capsys
):
    bad = tmp_path / "bad.safetensors"
    key = _with_bad_value(adapter, bad, value)
    layer, tensor = key.rsplit(".", 1)
    for argv in (
        ["compose", str(bad)],
        ["generate", str(bad), "--prompt", "a", "--steps", "1", "--out", str(tmp_path / "g")],
        ["export", str(bad), str(tmp_path / "e.safetensors")],
        ["inspect", str(bad)],
    ):
        assert main(argv) == 2, argv
        err = _one_line_error(capsys)
        assert f"{bad}: layer {layer}, tensor {tensor} ({key}) holds" in err
        assert ("1 NaN and 0 infinite" if value != value else "0 NaN and 1 infinite") in err
    assert not (tmp_path / "g").exists() and not (tmp_path / "e.safetensors").exists()

    # A foreign LoRA file goes through the same reader: a kohya export with an Inf is refused on import.
    assert main(["export", str(adapter), str(tmp_path / "k.safetensors"), "--layout", "kohya"]) == 0
    capsys.readouterr()
    key = _with_bad_value(tmp_path / "k.safetensors", tmp_path / "kbad.safetensors", value)
    assert main(["import", str(tmp_path / "kbad.safetensors"), str(tmp_path / "n.safetensors")]) == 2
    layer = key.split(".")[0]
    assert f"layer {layer}, tensor lora_up.weight" in _one_line_error(capsys)


def test_non_finite_and_huge_scales_are_refused_in_the_library_and_the_app(adapter, tiny_pipe):
    from bora_diffusion.app.compose import parse_weights
    from bora_diffusion.merge import compose

    for scale in (float("nan"), float("inf"), -1e30, 10.5):
        with pytest.raises(ConfigError, match=r"scale .* (not a finite number|outside -10\.\.10)"):
            compose(tiny_pipe, [(adapter, scale)])
        assert not any("kettle" in n for n, _ in tiny_pipe.unet.named_modules())  # nothing was loaded
    for text in ("kettle=nan", "kettle=inf", "kettle=1e30", "kettle=-11"):
        with pytest.raises(ConfigError, match="weights: 'kettle="):
            parse_weights(["kettle"], text)
    assert parse_weights(["kettle"], "kettle=-10") == [("kettle", -10.0)]  # the range's edge is allowed


# --- item 5 -------------------------------------------------------------------------------------------------


def test_generate_height_width_and_resolution_set_the_image_size(tmp_path, capsys):
    base = ["generate", "--prompt", "a red circle", "--seed", "0", "--steps", "1"]
    assert main([*base, "--resolution", "32", "--width", "48", "--out", str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert (manifest["settings"]["height"], manifest["settings"]["width"]) == (32, 48)
    from PIL import Image

    assert Image.open(tmp_path / "a" / "p00-s0.png").size == (48, 32)  # PIL: (width, height)
    # The seed range's ends are accepted.
    assert main([*base[:-4], "--seed", str(2**64 - 1), "--steps", "1", "--out", str(tmp_path / "b")]) == 0


def test_the_app_refuses_seeds_out_of_range_and_non_finite_guidance():
    from bora_diffusion.app.compose import Request

    for fields, words in (
        ({"seed": 2**64}, "from 0 to 2**64-1"),
        ({"seed": -1}, "from 0 to 2**64-1"),
        ({"seed": 2**64 - 2, "count": 4}, "runs past 2**64-1"),
        ({"guidance": float("nan")}, "guidance"),
        ({"guidance": float("inf")}, "guidance"),
        ({"prompt": " "}, "prompt"),
    ):
        with pytest.raises(BoraError, match=re.escape(words)):
            Request(**{"prompt": "a circle", **fields})
    assert Request(prompt="a circle", seed=2**64 - 1).seed == 2**64 - 1


# --- items 6 and 7 ------------------------------------------------------------------------------------------


def test_import_reads_a_diffusers_save_lora_weights_folder(tmp_path, adapter, capsys):
    folder = tmp_path / "my_lora"
    folder.mkdir()
    assert main(["export", str(adapter), str(folder / "pytorch_lora_weights.safetensors")]) == 0
    capsys.readouterr()
    assert main(["import", str(folder), str(tmp_path / "back.safetensors")]) == 0
    assert "imported 56 UNet layer(s) at rank 2 from diffusers file" in capsys.readouterr().out
    back = read_adapter(tmp_path / "back.safetensors")
    assert back.name == "my_lora"  # the folder names the concept, not "pytorch_lora_weights"
    source = read_adapter(adapter)
    path = next(iter(source.layers))
    delta = back.tensors[f"{path}.B"] @ back.tensors[f"{path}.A"]  # (out, in)
    assert torch.allclose(delta, source.tensors[f"{path}.B"] @ source.tensors[f"{path}.A"], atol=1e-6)


def test_import_lists_the_skipped_text_encoder_layers_and_warns(tmp_path, adapter, capsys):
    exported = tmp_path / "k.safetensors"
    assert main(["export", str(adapter), str(exported), "--layout", "kohya"]) == 0
    capsys.readouterr()
    tensors = load_file(exported)
    for layer in range(12):
        for proj in ("q_proj", "v_proj"):
            name = f"lora_te1_text_model_encoder_layers_{layer}_self_attn_{proj}"
            tensors[f"{name}.lora_down.weight"] = torch.zeros(2, 32)
            tensors[f"{name}.lora_up.weight"] = torch.zeros(32, 2)
    save_file(tensors, exported)
    assert main(["import", str(exported), str(tmp_path / "n.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "skipped 24 text-encoder layer(s) (lora_te1_text_model_encoder_layers_*)" in out
    assert "warning: the text-encoder layers were not imported" in out
    assert "will not reproduce the original LoRA's effect" in out


# --- item 8 -------------------------------------------------------------------------------------------------


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_honour_the_umask(tmp_path, adapter, capsys, umask_002, monkeypatch):
    # umask 002 (a group-shared server): files 664, folders 775, not tempfile's 600 / 700
    assert main(["export", str(adapter), str(tmp_path / "e.safetensors"), "--layout", "kohya"]) == 0
    assert _mode(tmp_path / "e.safetensors") == 0o664
    assert main(["compose", str(adapter), "--save", str(tmp_path / "fused")]) == 0
    saved = [p for p in (tmp_path / "fused").rglob("*")]
    assert any(p.suffix == ".safetensors" for p in saved)
    assert {_mode(p) for p in saved if p.is_file()} == {0o664}
    assert {_mode(p) for p in [tmp_path / "fused", *saved] if p.is_dir()} == {0o775}
    from bora_diffusion.atomic import temp_dir  # the checkpoint writer's staging folder, renamed into place

    assert _mode(temp_dir(tmp_path)) == 0o775

    # The embedded base written on first use: another user's server loads exports beside it
    from bora_diffusion.embedded import ensure_embedded_default

    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "fresh-home"))
    embedded = ensure_embedded_default()
    assert {_mode(p) for p in embedded.rglob("*") if p.is_file()} == {0o664}
    assert {_mode(p) for p in [embedded, *embedded.rglob("*")] if p.is_dir()} == {0o775}

    os.umask(0o077)  # a private umask keeps outputs private
    assert main(["export", str(adapter), str(tmp_path / "p.safetensors")]) == 0
    assert _mode(tmp_path / "p.safetensors") == 0o600


@pytest.mark.parametrize("command", ["compose", "base"])
def test_saving_into_a_folder_of_the_users_own_files_is_refused_and_an_earlier_save_replaced(
    tmp_path, adapter, capsys, command, umask_002
):
    """`--save DIR` may name a folder that holds the user's own files (a private key kept 0600): replacing it would
    delete them and writing into it would chmod or mix them, so it is refused before any work and left as it
    was. A folder an earlier save wrote (model_index.json) is replaced whole, with the umask's modes."""

    def save(folder):
        head = ["compose", str(adapter)] if command == "compose" else ["base"]
        return main([*head, "--save", str(folder)])

    folder = tmp_path / "mine"
    (folder / "private").mkdir(parents=True)
    (folder / "private").chmod(0o700)
    (folder / "private" / "id_key").write_text("secret")
    (folder / "private" / "id_key").chmod(0o600)
    folder.chmod(0o750)
    assert save(folder) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds other files" in err and str(folder) in err
    assert sorted(p.name for p in folder.rglob("*")) == ["id_key", "private"]
    assert _mode(folder) == 0o750 and _mode(folder / "private" / "id_key") == 0o600

    earlier = tmp_path / "earlier"
    assert save(earlier) == 0
    (earlier / "unet" / "stale.txt").write_text("from the earlier save")
    assert save(earlier) == 0
    capsys.readouterr()
    assert not (earlier / "unet" / "stale.txt").exists()  # replaced whole, not written into
    assert (earlier / "model_index.json").is_file()
    assert {_mode(p) for p in earlier.rglob("*") if p.is_file()} == {0o664}
    assert {_mode(p) for p in [earlier, *earlier.rglob("*")] if p.is_dir()} == {0o775}
    assert not list(tmp_path.glob(".earlier*"))  # no staging folder left beside it


def test_checkpoint_folders_and_the_trained_file_honour_the_umask(tiny_pipe, tmp_path, umask_002):
    from test_train import make_concept

    from bora_diffusion.config import TrainConfig
    from bora_diffusion.train import Trainer

    concept = make_concept(tmp_path / "imgs", "thing", 0)
    config = TrainConfig(steps=2, learning_rate=1e-2, checkpoint_every=1, seed=3)
    out = tmp_path / "out"
    Trainer(
        tiny_pipe, concept, AdapterConfig(method="lora", rank=2), config, out_dir=out, base_name="tiny"
    ).train()
    checkpoints = sorted((out / "checkpoints" / "thing").glob("step-*"))
    assert checkpoints and {_mode(p) for p in checkpoints} == {0o775}  # was mkdtemp's 0700
    assert {_mode(p) for p in out.glob("*.safetensors")} == {0o664}  # was save_file's 0600


# --- item 9 -------------------------------------------------------------------------------------------------


def test_base_save_writes_a_folder_stock_diffusers_loads_and_draws_the_same(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    assert main(["base", "--save", str(tmp_path / "base")]) == 0
    out = capsys.readouterr().out
    home = os.environ["BORA_DIFFUSION_HOME"]
    assert f"embedded:world-base-2: {home}/embedded/world-base-2" in out
    stock = StableDiffusionPipeline.from_pretrained(str(tmp_path / "base"))
    ours = load_base()

    def draw(pipe):
        generator = torch.Generator().manual_seed(0)
        return np.asarray(
            pipe(
                "a red circle",
                num_inference_steps=2,
                guidance_scale=3.0,
                generator=generator,
                output_type="np",
            ).images[0]
        )

    assert np.array_equal(draw(stock), draw(ours))


def test_generate_help_states_its_defaults_against_stock_diffusers(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "stock diffusers' (50 steps, guidance 7.5)" in text and "guidance 3 on the embedded base" in text
    assert "--height" in text and "--width" in text


# --- item 10 ------------------------------------------------------------------------------------------------


def test_inspect_of_an_imported_file_summarizes_its_layers(tmp_path, adapter, capsys):
    assert main(["export", str(adapter), str(tmp_path / "d.safetensors")]) == 0
    assert main(["import", str(tmp_path / "d.safetensors"), str(tmp_path / "n.safetensors")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "n.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert "targets: 56 module patterns (--verbose lists them)" in shown
    assert "\\." not in shown  # no escaped regex on screen
    assert "layers:      56" in shown
    blocks = re.findall(r"(\w+_blocks?(?:\.\d)?): (\d+) \(attn1 (\d+), attn2 (\d+)\)", shown)
    assert sum(int(n) for _, n, _, _ in blocks) == 56 and all(int(a) == int(b) for _, _, a, b in blocks)
    assert main(["inspect", str(tmp_path / "n.safetensors"), "--verbose"]) == 0
    assert capsys.readouterr().out.count("  target ^") == 56


def test_readme_and_import_help_say_what_the_code_does(capsys):
    from pathlib import Path

    from bora_diffusion.embedded import embedded_dir
    from bora_diffusion.formats import embedding_path

    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "`<out>.embedding.safetensors`" not in readme and "`<out stem>.embedding.safetensors`" in readme
    assert embedding_path("kettle_kohya.safetensors").name == "kettle_kohya.embedding.safetensors"
    assert "$BORA_DIFFUSION_HOME/embedded/world-base-2/" in readme
    assert embedded_dir().parts[-2:] == ("embedded", "world-base-2")
    assert "bora-diffusion base --save" in readme
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "skipped and listed" in text and "will not reproduce its full effect" in text
    assert "save_lora_weights" in text
