"""Composition of concept files (live and fused, interference report, slot clashes) and generation."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from conftest import perturb
from PIL import Image
from torch import nn

from bora_diffusion import AdapterConfig, SlotError
from bora_diffusion.formats import save_adapter
from bora_diffusion.generate import SamplingSettings, generate
from bora_diffusion.inject import eject, inject, wrap_linear
from bora_diffusion.merge import _dense_measures, compose, interference
from bora_diffusion.slots import SlotLedger

FAST = SamplingSettings(steps=3, guidance=5.0, batch_size=2)


def concept_file(tiny_pipe, tmp_path, name, method, ledger, seed, targets="attention"):
    """A concept file with nonzero adapters, made on a copy of the pipeline's UNet."""
    unet = copy.deepcopy(tiny_pipe.unet)
    config = AdapterConfig(method=method, rank=4, targets=targets)
    inject(unet, config, name=name, ledger=ledger)
    perturb(unet, name, seed=seed, std=0.5)
    return save_adapter(
        tmp_path / f"{name}.safetensors", unet, name, config, base_name="tiny", token=f"<{name}>"
    )


def images_of(result):
    return [np.asarray(Image.open(p), dtype=np.int16) for p in result.images]


@pytest.mark.parametrize("method", ["sbora_fa", "ortho"])
def test_live_and_fused_compositions_generate_the_same_images(tiny_pipe, tmp_path, method):
    ledger = SlotLedger(seed=1)
    files = [
        (concept_file(tiny_pipe, tmp_path, n, method, ledger, s), w)
        for n, s, w in (("kettle", 1, 1.0), ("robot", 2, 0.7))
    ]
    report = compose(tiny_pipe.unet, files)
    assert not report.fused and list(report.concepts) == ["kettle", "robot"]
    assert all(p.overlap == 0 for p in report.pairs) and max(p.cross_in for p in report.pairs) < 1e-6
    assert "slot overlap 0 indices" in report.summary()
    live = generate(tiny_pipe, ["a <kettle> beside a <robot>"], [0, 1], tmp_path / "live", settings=FAST)
    eject(tiny_pipe.unet)
    compose(tiny_pipe.unet, files, fuse=True)
    fused = generate(tiny_pipe, ["a <kettle> beside a <robot>"], [0, 1], tmp_path / "fused", settings=FAST)
    for a, b in zip(images_of(live), images_of(fused), strict=True):
        assert np.abs(a - b).max() <= 1  # 8-bit PNGs: at most one level of rounding apart
    eject(tiny_pipe.unet)
    base = generate(tiny_pipe, ["a <kettle> beside a <robot>"], [0, 1], tmp_path / "base", settings=FAST)
    assert any(np.abs(a - b).max() > 8 for a, b in zip(images_of(live), images_of(base), strict=True))


def test_the_report_names_concepts_that_share_self_attention(tiny_pipe, tmp_path):
    """Self-attention reads image features, so fused concepts there act on every prompt: the report says so for
    concepts on every projection and stays quiet for concepts on the cross-attention keys and values."""
    ledger = SlotLedger(seed=3)
    dense = [
        (concept_file(tiny_pipe, tmp_path, n, "sbora_fa", ledger, s), 1.0) for n, s in (("a", 1), ("b", 2))
    ]
    report = compose(tiny_pipe.unet, dense)
    eject(tiny_pipe.unet)
    assert report.self_attention == ["a", "b"] and report.to_dict()["self_attention"] == ["a", "b"]
    assert "a, b adapt self-attention" in report.summary() and "targets cross_kv" in report.summary()
    kv = [
        (concept_file(tiny_pipe, tmp_path, n, "sbora_fa", ledger, s, targets="cross_kv"), 1.0)
        for n, s in (("c", 3), ("d", 4))
    ]
    report = compose(tiny_pipe.unet, kv)
    eject(tiny_pipe.unet)
    assert report.self_attention == [] and "self-attention" not in report.summary()
    report = compose(
        tiny_pipe.unet, [dense[0], kv[0]]
    )  # one concept alone on self-attention: no shared layer
    eject(tiny_pipe.unet)
    assert report.self_attention == []


def test_overlapping_slots_are_refused_unless_forced(tiny_pipe, tmp_path):
    # Two concepts allocated from separate ledgers with one seed: same slots on every layer.
    files = [
        (concept_file(tiny_pipe, tmp_path, n, "sbora_fa", SlotLedger(seed=0), s), 1.0)
        for n, s in (("a", 1), ("b", 2))
    ]
    with pytest.raises(
        SlotError, match=r"32 layer\(s\) have overlapping slots \(down_blocks.*a and b share 4"
    ):
        compose(copy.deepcopy(tiny_pipe.unet), files)
    report = compose(tiny_pipe.unet, files, fuse=True, force=True)
    assert sum(p.overlap for p in report.pairs) == 32 * 4


def test_dense_methods_compose_with_an_interference_report(tiny_pipe, tmp_path):
    files = [
        (concept_file(tiny_pipe, tmp_path, "l", "lora", None, 1), 1.0),
        (concept_file(tiny_pipe, tmp_path, "d", "dora", None, 2), 0.5),
    ]
    report = compose(tiny_pipe.unet, files, fuse=True)
    assert report.fused and len(report.pairs) == 32
    assert all(p.cross_in > 0 and p.cross_out > 0 for p in report.pairs)
    path = tmp_path / "report.json"
    report.save(path)
    saved = json.loads(path.read_text())
    assert saved["summary"] == report.summary() and saved["concepts"]["d"]["scale"] == 0.5


def test_generation_is_deterministic_and_writes_a_manifest_and_grid(tiny_pipe, tmp_path):
    record = {"base_model": "tiny", "concepts": {}}
    first = generate(
        tiny_pipe, ["a red star", "a blue ring"], [3, 4, 5], tmp_path / "a", settings=FAST, record=record
    )
    again = generate(
        tiny_pipe,
        ["a blue ring"],
        [4],
        tmp_path / "b",
        settings=SamplingSettings(steps=3, guidance=5.0, batch_size=1),
    )
    assert np.array_equal(
        images_of(first)[4], images_of(again)[0]
    )  # same (prompt, seed): same image, any batch
    manifest = json.loads(first.manifest.read_text())
    assert manifest["base_model"] == "tiny" and manifest["settings"]["steps"] == 3
    assert [(e["prompt"], e["seed"]) for e in manifest["images"]][:2] == [
        ("a red star", 3),
        ("a red star", 4),
    ]
    assert Image.open(first.grid).size == (3 * 64, 2 * 64)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [
        "grid.png",
        "manifest.json",
        *sorted(f"p{p:02d}-s{s}.png" for p in (0, 1) for s in (3, 4, 5)),
    ]


def test_factored_interference_equals_the_dense_products():
    """The report's numbers from the factors' Gram matrices (all pairs at once) are the dense deltas' own: every
    additive method, mixed ranks on one layer, and exact zeros where slots are disjoint."""
    torch.manual_seed(0)
    layer = wrap_linear(nn.Linear(24, 20), "lora", name="l", rank=3)
    for name, method, rank in (
        ("f", "sbora_fa", 4),
        ("g", "sbora_fa", 2),
        ("b", "sbora_fb", 4),
        ("o", "ortho", 4),
    ):
        wrap_linear(layer, method, name=name, rank=rank)
    wrap_linear(layer, "bora_block", name="k", rank=2, blocks=2)
    with torch.no_grad():
        for param in layer.adapters.parameters():
            param.normal_()
    names = list(layer.adapters)
    pairs = {(p.first, p.second): p for p in interference(layer, names)}
    deltas = [layer.adapters[n].delta_weight(layer.weight).detach().float() for n in names]
    cosine, cross_in, cross_out = _dense_measures(deltas)
    assert len(pairs) == len(names) * (len(names) - 1) // 2
    for (i, first), (j, second) in itertools.combinations(enumerate(names), 2):
        pair = pairs[first, second]
        assert pair.cosine == pytest.approx(cosine[i][j], abs=1e-5)
        assert pair.cross_in == pytest.approx(cross_in[i][j], rel=1e-5, abs=1e-6)
        assert pair.cross_out == pytest.approx(cross_out[i][j], rel=1e-5, abs=1e-6)
    assert pairs["f", "g"].cross_in == 0.0 and pairs["f", "g"].cosine == 0.0  # disjoint input columns
    assert pairs["l", "f"].cross_in > 0.1 and pairs["l", "b"].cross_out > 0.1


def test_a_non_additive_concept_takes_the_dense_path():
    torch.manual_seed(1)
    layer = wrap_linear(nn.Linear(16, 12), "dora", name="d", rank=2)
    wrap_linear(layer, "lora", name="l", rank=2)
    with torch.no_grad():
        for param in layer.adapters.parameters():
            param.normal_()
    (pair,) = interference(layer, ["d", "l"])
    d1, d2 = (layer.adapters[n].delta_weight(layer.weight).float() for n in ("d", "l"))
    norms = d1.norm() * d2.norm()
    assert pair.cross_in == pytest.approx(float((d1 @ d2.T).norm() / norms), rel=1e-6)
