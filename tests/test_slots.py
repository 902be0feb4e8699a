"""The slot allocator: deterministic, disjoint, capacity-checked, and its ledger round-trips through JSON."""

from __future__ import annotations

import json

import pytest
import torch

from bora_diffusion import AdapterConfig, SlotError
from bora_diffusion.inject import inject, ledger_from_model, wrappers
from bora_diffusion.slots import SlotLedger

SIZES = {"down.attn1.to_q": 320, "up.attn2.to_k": 64}


def test_allocation_is_deterministic_for_a_seed_and_differs_across_seeds():
    first = SlotLedger(seed=3).allocate("dog", "in", SIZES, 4)
    again = SlotLedger(seed=3).allocate("dog", "in", SIZES, 4)
    other = SlotLedger(seed=4).allocate("dog", "in", SIZES, 4)
    assert all(torch.equal(first[p], again[p]) for p in SIZES)
    assert any(not torch.equal(first[p], other[p]) for p in SIZES)
    # Each layer has its own permutation: the same seed does not give every layer the same indices.
    assert first["down.attn1.to_q"].tolist() != first["up.attn2.to_k"].tolist()


def test_concepts_get_disjoint_slots_until_capacity_then_a_clear_error():
    ledger = SlotLedger(seed=0)
    owned = [ledger.allocate(f"c{i}", "in", {"layer": 64}, 4)["layer"] for i in range(64 // 4)]
    assert sorted(torch.cat(owned).tolist()) == list(range(64))
    with pytest.raises(
        SlotError, match=r"slots exhausted on layer .*16 concept\(s\) own 64 of 64.*capacity at rank 4 is 16"
    ):
        ledger.allocate("one-too-many", "in", {"layer": 64}, 4)
    assert "one-too-many" not in ledger.concepts()


def test_allocation_is_all_or_nothing():
    ledger = SlotLedger(seed=0)
    ledger.allocate("big", "out", {"small": 8}, 6)
    with pytest.raises(SlotError, match="small"):
        ledger.allocate("next", "out", {"roomy": 100, "small": 8}, 4)
    assert ledger.slots("next", "out") == {}


def test_asking_again_returns_the_same_slots_and_rank_changes_are_refused():
    ledger = SlotLedger(seed=0)
    first = ledger.allocate("dog", "ortho", SIZES, 4)
    assert all(torch.equal(first[p], ledger.allocate("dog", "ortho", SIZES, 4)[p]) for p in SIZES)
    with pytest.raises(SlotError, match="already owns 4 slots"):
        ledger.allocate("dog", "ortho", SIZES, 8)


def test_release_frees_the_indices_for_the_next_concept():
    ledger = SlotLedger(seed=0)
    freed = ledger.allocate("a", "in", {"layer": 8}, 8)["layer"]
    ledger.release("a")
    assert sorted(ledger.allocate("b", "in", {"layer": 8}, 8)["layer"].tolist()) == sorted(freed.tolist())


def test_ledger_round_trips_and_rejects_corrupt_files(tmp_path):
    ledger = SlotLedger(seed=5)
    ledger.allocate("dog", "in", SIZES, 4)
    ledger.allocate("cat", "out", SIZES, 2)
    path = tmp_path / "ledger.json"
    ledger.save(path)
    loaded = SlotLedger.load(path)
    assert loaded.to_dict() == ledger.to_dict()
    owl, owl_again = loaded.allocate("owl", "in", SIZES, 4), ledger.allocate("owl", "in", SIZES, 4)
    assert all(torch.equal(owl[p], owl_again[p]) for p in SIZES)
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]  # no temporary file left behind

    data = json.loads(path.read_text())
    data["spaces"]["in"]["up.attn2.to_k"]["owners"]["evil"] = data["spaces"]["in"]["up.attn2.to_k"]["owners"][
        "dog"
    ]
    path.write_text(json.dumps(data))
    with pytest.raises(SlotError, match="also owned by 'dog'"):
        SlotLedger.load(path)
    path.write_text("{not json")
    with pytest.raises(SlotError, match="not valid JSON"):
        SlotLedger.load(path)
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(SlotError, match="newer"):
        SlotLedger.load(path)
    with pytest.raises(SlotError, match="not found"):
        SlotLedger.load(tmp_path / "missing.json")


def test_a_ledger_for_another_base_model_is_refused():
    ledger = SlotLedger(seed=0)
    ledger.allocate("dog", "in", {"layer": 320}, 4)
    with pytest.raises(SlotError, match="another base model"):
        ledger.allocate("cat", "in", {"layer": 640}, 4)


def test_inject_into_a_model_rebuilds_the_ledger_from_its_concepts(tiny_unet):
    model = tiny_unet.model
    shared = SlotLedger(seed=11)
    inject(model, AdapterConfig(method="sbora_fa", rank=4), name="dog", ledger=shared)
    inject(model, AdapterConfig(method="sbora_fa", rank=4), name="cat")  # no ledger: derived from the model
    for path, wrapper in wrappers(model):
        dog, cat = (set(wrapper.adapters[n].index.tolist()) for n in ("dog", "cat"))
        assert dog.isdisjoint(cat), path
        assert wrapper.adapters["cat"].slot_seed == 11
    rebuilt = ledger_from_model(model)
    assert rebuilt.seed == 11 and rebuilt.concepts() == ["cat", "dog"]
    # The shared ledger, asked for the second concept, hands out what the model-derived one did.
    expected = shared.allocate("cat", "in", {p: w.in_features for p, w in wrappers(model)}, 4)
    assert all(expected[p].tolist() == w.adapters["cat"].index.tolist() for p, w in wrappers(model))
