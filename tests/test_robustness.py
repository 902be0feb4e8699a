"""Issue 23 "Outside checks": concept folders with odd files, transparency, output paths, full disks, bad
checkpoints. Each test failed before its fix."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from bora_diffusion.atomic import atomic_folder, atomic_path, check_writable
from bora_diffusion.concept import load_concept
from bora_diffusion.data import flatten, load_image
from bora_diffusion.errors import ConceptError, ConfigError
from bora_diffusion.train.checkpoints import _read_checkpoint, remove_stale_staging

TOML = 'token = "zqdog"\nclass_word = "dog"\n'


def concept_folder(root, images=2):
    path = root / "dog"
    path.mkdir()
    (path / "concept.toml").write_text(TOML)
    for index in range(images):
        Image.new("RGB", (64, 64), (40 * index, 90, 200)).save(path / f"img{index}.png")
    return path


def problems_of(path):
    with pytest.raises(ConceptError) as info:
        load_concept(path)
    return info.value.problems


# ------------------------------------------------------------------------------------------- item 3: folders
def test_fifo_is_named_never_opened(tmp_path):
    path = concept_folder(tmp_path)
    os.mkfifo(path / "x.png")
    found = []
    # Opening a FIFO blocks for ever: run in a thread so a regression fails the test instead of hanging it.
    thread = threading.Thread(target=lambda: found.append(problems_of(path)), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "load_concept opened the FIFO and blocked"
    assert found[0] == ("x.png is not a regular file (a pipe, socket or device): remove it",)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    path = concept_folder(tmp_path)
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (64, 64)).save(outside)
    (path / "link.png").symlink_to(outside)
    (found,) = problems_of(path)
    assert found.startswith("link.png is a link to ") and "outside the folder: copy the file in" in found
    # A link inside the folder stays fine: it reads a file the folder holds.
    (path / "link.png").unlink()
    (path / "again.png").symlink_to(path / "img0.png")
    assert len(load_concept(path).images) == 3


# ------------------------------------------------------------------------------------- item 12: transparency
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_images_are_flattened_onto_white(tmp_path, mode):
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    for x in range(32):
        for y in range(64):
            rgba.putpixel((x, y), (0, 0, 0, 0))  # hidden colour black: a plain convert("RGB") shows it
    image = rgba.convert(mode) if mode != "P" else rgba.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "P":
        image.info["transparency"] = image.getpixel((0, 0))
    path = concept_folder(tmp_path)
    image.save(path / "cut.png")
    assert load_concept(path).images[-1].name == "img1.png"  # accepted, no problem
    pixels, _ = load_image(path / "cut.png", 64)  # (3, 64, 64) in [-1, 1]
    assert torch.all(pixels[:, :, :30] == 1.0)  # white where transparent
    assert flatten(Image.new("RGB", (4, 4), (1, 2, 3))).getpixel((0, 0)) == (1, 2, 3)  # opaque: unchanged


def test_caption_without_token_stays_an_error(tmp_path):
    path = concept_folder(tmp_path)
    (path / "img0.txt").write_text("a dog on a sofa")
    assert problems_of(path) == ("img0.txt does not mention {token}, so its image would not teach the token",)


# ------------------------------------------------------------------------------------------ item 2: outputs
def test_check_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is an existing file, not a folder"):
        check_writable(tmp_path / "file", folder=True)
    with pytest.raises(ConfigError, match="is a folder: give a file path"):
        check_writable(tmp_path, folder=False)
    with pytest.raises(ConfigError, match="is a file, so nothing can be made under it"):
        check_writable(tmp_path / "file" / "sub" / "a.safetensors", folder=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(ConfigError, match="is not writable"):
            check_writable(locked / "new" / "out", folder=True)
    finally:
        locked.chmod(0o700)
    check_writable(tmp_path / "new" / "deeper", folder=True)  # a new folder in a writable place is fine


def test_full_disk_is_one_error_and_leaves_nothing(tmp_path):
    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ConfigError, match="the disk is full"), atomic_path(tmp_path / "a.safetensors") as tmp:
        tmp.write_text("half")
        full()
    from safetensors import SafetensorError

    with pytest.raises(ConfigError, match="the disk is full"), atomic_folder(tmp_path / "fused") as staging:
        (staging / "vae").mkdir()
        (staging / "vae" / "config.json").write_text("{}")
        raise SafetensorError(
            "Error while serializing: IoError(Os { code: 28, message: No space left on device })"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the file nor a partial folder


# --------------------------------------------------------------------------------------- item 4: checkpoints
def test_unreadable_checkpoint_falls_back_then_errors(tmp_path, capsys):
    good, bad = tmp_path / "step-000002", tmp_path / "step-000004"
    good.mkdir()
    bad.mkdir()
    torch.save({"step": 2, "weights": torch.ones(3)}, good / "state.pt")
    torch.save({"step": 4}, bad / "state.pt")
    (bad / "state.pt").write_bytes((bad / "state.pt").read_bytes()[:40])  # truncated by a kill
    state, kept = _read_checkpoint([good, bad])
    assert state["step"] == 2 and kept == [good]
    assert f"{bad / 'state.pt'} is unreadable" in capsys.readouterr().err
    torch.save({"step": 4, "code": threading.Lock}, bad / "state.pt")  # a pickle that is not plain weights
    with pytest.raises(ConfigError, match="the checkpoint is unreadable .* there is no earlier one"):
        _read_checkpoint([bad])


def test_stale_staging_folders_are_removed(tmp_path):
    (tmp_path / ".tmp-abc").mkdir()
    (tmp_path / "step-000002").mkdir()
    remove_stale_staging(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000002"]


def test_ctrl_c_in_train_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import bora_diffusion.train
    from bora_diffusion.cli import main

    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"

    def interrupted(*_, **__):
        (out / "checkpoints" / "kettle" / "step-000003").mkdir(parents=True)  # what the run had written
        raise KeyboardInterrupt

    monkeypatch.setattr(bora_diffusion.train, "train_concepts", interrupted)
    code = main(["train", "concepts/kettle", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"interrupted; the checkpoint of step 3 in {out / 'checkpoints'} is intact")
    assert line.endswith(f"resume with `bora-diffusion train concepts/kettle --out {out} --quiet --resume`")


# ------------------------------------------------------------------------------------------- item 11: messages
@pytest.fixture(scope="module")
def slot_file(tmp_path_factory):
    from bora_diffusion.cli import main

    out = tmp_path_factory.mktemp("methods")
    assert main(["methods", "--method", "sbora_fa", "--rank", "2", "--out", str(out)]) == 0
    return out / "sbora_fa.safetensors"


def _rewrite(source, target, tensors=None, **metadata):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        meta = dict(handle.metadata())
        data = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    data.update(tensors or {})
    meta.update(metadata)
    save_file(data, str(target), metadata=meta)
    return data


def test_a_newer_format_names_the_file_once(slot_file, tmp_path):
    from bora_diffusion.errors import AdapterFileError
    from bora_diffusion.formats import read_adapter

    newer = tmp_path / "newer.safetensors"
    _rewrite(slot_file, newer, format_version="99")
    with pytest.raises(AdapterFileError) as info:
        read_adapter(newer)
    assert str(info.value).count(str(newer)) == 1 and "format version 99 is newer" in str(info.value)


def test_a_bad_slot_index_names_file_and_layer(slot_file, tmp_path, capsys, monkeypatch):
    from bora_diffusion.cli import main

    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "home"))
    bad = tmp_path / "bad.safetensors"
    data = _rewrite(slot_file, bad)
    key = sorted(k for k in data if k.endswith(".index"))[0]
    _rewrite(slot_file, bad, {key: torch.zeros_like(data[key])})  # [0, 0]: not distinct
    assert main(["compose", str(bad)]) == 2
    err = capsys.readouterr().err
    layer = key.removesuffix(".index")
    assert err.startswith(f"error: {bad}: layer {layer}: slot index [0, 0] needs 2 distinct indices"), err


def test_full_disk_in_compose_save_and_export_is_one_error(slot_file, tmp_path, capsys, monkeypatch):
    import diffusers
    import safetensors.torch
    from safetensors import SafetensorError

    from bora_diffusion.cli import main

    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    out.mkdir()
    from bora_diffusion.pipeline import load_base

    load_base("embedded")  # the embedded base saves itself into the home once: before the disk fills

    def full_after_one_file(self, folder, *_, **__):
        (Path(folder) / "vae").mkdir(parents=True)
        (Path(folder) / "vae" / "config.json").write_text("{}")  # what the traceback left behind before
        raise SafetensorError(
            "Error while serializing: IoError(Os { code: 28, message: No space left on device })"
        )

    monkeypatch.setattr(diffusers.DiffusionPipeline, "save_pretrained", full_after_one_file)
    assert main(["compose", str(slot_file), "--save", str(out / "fused")]) == 2
    err = capsys.readouterr().err
    assert (
        err.splitlines()[-1]
        == f"error: {out / 'fused'}: the disk is full (SafetensorError); free some space and run again"
    )

    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert main(["export", str(slot_file), str(out / "lora.safetensors")]) == 2
    assert "lora.safetensors: the disk is full (OSError)" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # no partial folder, no half file, no temporary
