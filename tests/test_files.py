"""Adapter files: what they record, and every way a bad file is refused with a message that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import perturb
from torch import nn

from bora_diffusion import AdapterConfig, AdapterFileError
from bora_diffusion.formats import load_adapter, read_adapter, save_adapter
from bora_diffusion.formats.native import FORMAT_VERSION
from bora_diffusion.inject import concepts, inject, wrappers


@pytest.fixture
def saved(tiny_unet, tmp_path):
    config = AdapterConfig(method="sbora_fa", rank=4, seed=3)
    inject(tiny_unet.model, config, name="dog")
    perturb(tiny_unet.model, "dog")
    path = save_adapter(
        tmp_path / "dog.safetensors",
        tiny_unet.model,
        "dog",
        config,
        base_name="embedded:world-base-2",
        token="<dog>",
        class_word="dog",
    )
    return path, tiny_unet


def rewrite(path, *, metadata=None, tensors=None):
    """Re-save a file with edited metadata and/or tensors (what a damaged or foreign file looks like)."""
    with safetensors.safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
        data = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    meta.update(metadata or {})
    data = tensors(data) if tensors else data
    safetensors.torch.save_file(data, str(path), metadata=meta)


def test_file_describes_itself(saved):
    path, case = saved
    info = read_adapter(path)
    assert info.config == AdapterConfig(method="sbora_fa", rank=4, seed=3)
    assert (info.name, info.token, info.class_word, info.base_name) == (
        "dog",
        "<dog>",
        "dog",
        "embedded:world-base-2",
    )
    assert info.slot_space == "in" and info.library_version
    assert set(info.layers) == {p for p, _ in wrappers(case.model)}
    assert set(info.tensors) == {f"{p}.{k}" for p in info.layers for k in ("B", "index")}
    for layer, index in info.slots().items():
        assert torch.equal(index, case.model.get_submodule(layer).adapters["dog"].index)
    assert [p.name for p in path.parent.iterdir()] == ["dog.safetensors"]  # nothing temporary left


def test_a_file_loads_under_another_name_beside_other_concepts(saved):
    path, case = saved
    fresh = case.fresh()
    inject(fresh.model, AdapterConfig(method="lora"), name="cat")
    load_adapter(path, fresh.model, name="dog2")
    assert concepts(fresh.model) == ["cat", "dog2"]


def test_another_base_model_is_refused_naming_the_layer(saved):
    path, case = saved
    other = nn.Module()
    other.add_module("down_blocks", nn.Module())
    with pytest.raises(
        AdapterFileError,
        match=r"layer down_blocks\.0\..* does not exist in this model.*'embedded:world-base-2'",
    ):
        load_adapter(path, other)
    layer = next(iter(read_adapter(path).layers))
    fresh = case.fresh()
    parent, _, child = layer.rpartition(".")
    setattr(fresh.model.get_submodule(parent), child, nn.Linear(7, 5))
    with pytest.raises(
        AdapterFileError, match=rf"layer {layer} is \(5, 7\) in this model but \(\d+, \d+\) in the file"
    ):
        load_adapter(path, fresh.model)
    assert concepts(fresh.model) == []  # nothing was injected before the check failed


def test_unknown_method_is_refused(saved):
    path, _ = saved
    rewrite(path, metadata={"method": "bora"})
    with pytest.raises(AdapterFileError, match="method 'bora' is unknown"):
        read_adapter(path)


def test_newer_format_version_is_refused(saved):
    path, _ = saved
    rewrite(path, metadata={"format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(AdapterFileError, match="newer than this bora-diffusion reads.*upgrade"):
        read_adapter(path)


def test_missing_and_extra_tensors_are_refused(saved):
    path, case = saved
    layer = next(iter(read_adapter(path).layers))
    rewrite(path, tensors=lambda d: {k: v for k, v in d.items() if k != f"{layer}.B"})
    with pytest.raises(AdapterFileError, match=rf"missing 1 tensor\(s\), e.g. {layer}.B"):
        load_adapter(path, case.fresh().model)
    rewrite(path, tensors=lambda d: {**d, f"{layer}.B": torch.zeros(2, 2), f"{layer}.A": torch.zeros(4, 32)})
    with pytest.raises(AdapterFileError, match=rf"1 unexpected tensor\(s\), e.g. {layer}.A"):
        load_adapter(path, case.fresh().model)
    rewrite(path, tensors=lambda d: {k: v for k, v in d.items() if k != f"{layer}.A"})
    with pytest.raises(AdapterFileError, match=rf"tensor {layer}.B has shape \(2, 2\)"):
        load_adapter(path, case.fresh().model)
    rewrite(path, tensors=lambda d: {**d, "not.a.layer.B": torch.zeros(1)})
    with pytest.raises(AdapterFileError, match="tensors for layers not in its layer list"):
        read_adapter(path)


def test_corrupt_truncated_and_foreign_files_are_refused(saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    for bad in (truncated, garbage):
        with pytest.raises(AdapterFileError, match="not a readable safetensors file.*corrupt or truncated"):
            read_adapter(bad)
    foreign = tmp_path / "pytorch_lora_weights.safetensors"
    safetensors.torch.save_file({"unet.x.lora.down.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(AdapterFileError, match="not a bora-diffusion adapter.*bora-diffusion import"):
        read_adapter(foreign)
    with pytest.raises(AdapterFileError, match="not found"):
        read_adapter(tmp_path / "nope.safetensors")
    rewrite(path, metadata={"config": "{"})
    with pytest.raises(AdapterFileError, match="malformed metadata"):
        read_adapter(path)


def test_tampered_layer_list_is_caught_by_the_fingerprint(saved):
    path, _ = saved
    base = json.loads(safetensors.safe_open(str(path), "pt").metadata()["base_model"])
    first = next(iter(base["layers"]))
    base["layers"][first] = [1, 1]
    rewrite(path, metadata={"base_model": json.dumps(base)})
    with pytest.raises(AdapterFileError, match="fingerprint does not match"):
        read_adapter(path)


def test_a_failed_write_leaves_the_previous_file_intact_and_no_temporary(saved, monkeypatch):
    path, case = saved
    before = path.read_bytes()

    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(path, case.model, "dog", AdapterConfig(method="sbora_fa", rank=4, seed=3), base_name="x")
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["dog.safetensors"]
