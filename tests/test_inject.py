"""Injection into the tiny UNet: presets, patterns, several concepts per layer, scales, fuse, remove."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb

from bora_diffusion import AdapterConfig, ConfigError, TargetError
from bora_diffusion.adapters import AdaptedLinear
from bora_diffusion.inject import (
    concepts,
    find_targets,
    inject,
    mark_trainable,
    merge,
    remove,
    set_active,
    set_scale,
    unmerge,
    wrappers,
)


def test_presets_select_the_right_projections(tiny_unet):
    model = tiny_unet.model
    attention = find_targets(model, "attention")
    assert attention and all(p.split(".")[-2] in ("attn1", "attn2", "to_out") for p in attention)
    assert {p.rsplit(".", 1)[-1] for p in attention} == {"to_q", "to_k", "to_v", "0"}
    cross = find_targets(model, "cross_kv")
    assert cross and all(p.endswith(("attn2.to_k", "attn2.to_v")) for p in cross)
    self_attention = find_targets(model, "self_attention")
    assert self_attention and all(".attn1." in p for p in self_attention)
    assert sorted(cross + self_attention) == sorted(p for p in attention if ".attn1." in p or p in cross)
    assert len(attention) == 4 * 2 * 4  # 4 transformer blocks in the tiny UNet, 2 attentions, 4 projections


def test_a_pattern_that_matches_nothing_lists_what_the_model_has(tiny_unet):
    with pytest.raises(TargetError, match=r"match no Linear.*attn1\.to_q \(x4\).*ff\.net\.2 \(x4\)"):
        find_targets(tiny_unet.model, ("to_nothing$",))
    with pytest.raises(TargetError, match="unknown target preset 'everything'"):
        find_targets(tiny_unet.model, "everything")
    with pytest.raises(TargetError, match="not a valid regular expression"):
        find_targets(tiny_unet.model, ("attn(",))


def test_cross_kv_preset_only_wraps_cross_attention_keys_and_values(tiny_unet):
    paths = inject(tiny_unet.model, AdapterConfig(method="lora", targets="cross_kv"), name="c")
    assert [p for p, _ in wrappers(tiny_unet.model)] == paths
    assert all(isinstance(tiny_unet.model.get_submodule(p), AdaptedLinear) for p in paths)


def test_concepts_compose_with_scales_live_and_fused(tiny_unet):
    model = tiny_unet.model
    base = tiny_unet.run()
    for name, method in (("c1", "lora"), ("c2", "sbora_fa"), ("c3", "dora")):
        inject(model, AdapterConfig(method=method, rank=2), name=name)
        perturb(model, name, seed=ord(name[-1]))
    assert concepts(model) == ["c1", "c2", "c3"]
    set_active(model, ["c1"])
    only_c1 = tiny_unet.run()
    set_scale(model, "c1", 0.0)
    torch.testing.assert_close(tiny_unet.run(), base, atol=1e-6, rtol=0)
    set_scale(model, "c1", 1.0)
    set_active(model, ["c1", "c2", "c3"])
    set_scale(model, "c3", 0.5)
    live = tiny_unet.run()
    assert (live - only_c1).abs().max() > 1e-3
    merge(model)
    torch.testing.assert_close(tiny_unet.run(), live, atol=2e-5, rtol=1e-4)
    unmerge(model)
    assert torch.equal(tiny_unet.run(), live)


def test_remove_one_concept_keeps_the_others_and_the_last_leaves_plain_linears(tiny_unet):
    model = tiny_unet.model
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    base = tiny_unet.run()
    inject(model, AdapterConfig(method="sbora_fb", rank=2), name="c1")
    inject(model, AdapterConfig(method="bora_block", rank=2, blocks=2), name="c2")
    perturb(model, "c1")
    perturb(model, "c2")
    merge(model)
    remove(model, "c1")
    assert concepts(model) == ["c2"]
    assert all(not w.merged for _, w in wrappers(model))  # removing a fused concept unfuses its layer
    remove(model, "c2")
    assert not list(wrappers(model))
    assert all(torch.equal(p, originals[n]) for n, p in model.named_parameters())
    assert torch.equal(tiny_unet.run(), base)


def test_unknown_names_and_duplicates_are_clear_errors(tiny_unet):
    inject(tiny_unet.model, AdapterConfig(method="lora"), name="dog")
    with pytest.raises(ConfigError, match="no concept cat in this model; it has dog"):
        set_active(tiny_unet.model, ["cat"])
    with pytest.raises(ConfigError, match="already in this model"):
        inject(tiny_unet.model, AdapterConfig(method="lora"), name="dog")


def test_mark_trainable_trains_only_the_named_concepts(tiny_unet):
    model = tiny_unet.model
    inject(model, AdapterConfig(method="lora"), name="dog")
    inject(model, AdapterConfig(method="sbora_fa"), name="cat")
    params = mark_trainable(model, ["cat"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params}
    assert sum(p.numel() for p in params) == sum(w.adapters["cat"].B.numel() for _, w in wrappers(model))


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="method 'bora' is unknown"):
        AdapterConfig(method="bora")
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        AdapterConfig(method="lora", rank=0)
    with pytest.raises(ConfigError, match="blocks is an option of bora_block only"):
        AdapterConfig(method="lora", blocks=2)
    assert AdapterConfig(method="bora_block").options == {"blocks": 4}
    config = AdapterConfig(method="ortho", rank=8, alpha=4, targets=["attn2"])
    assert AdapterConfig.from_dict(config.to_dict()) == config and config.scaling == 0.5
    with pytest.raises(ConfigError, match="unknown adapter config field"):
        AdapterConfig.from_dict({"method": "lora", "rnak": 4})
