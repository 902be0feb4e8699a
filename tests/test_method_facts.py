"""The facts each method is chosen for: regional updates, exact fusion on disjoint slots, orthogonal bases,
block-diversified rank, and trainable-parameter counts exactly as docs/methods.md gives them."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb
from torch import nn

from bora_diffusion import AdapterConfig, ConfigError
from bora_diffusion.adapters import Slot, build, get, orthogonal_basis
from bora_diffusion.inject import inject, merge, set_active, wrap_linear, wrappers


def perturbed(method: str, **kwargs):
    torch.manual_seed(0)
    wrapper = wrap_linear(nn.Linear(64, 48), method, **kwargs)
    perturb(wrapper, "default")
    return wrapper, wrapper.adapters["default"]


def test_sbora_fa_changes_only_its_input_columns():
    wrapper, adapter = perturbed("sbora_fa", rank=5)
    delta = adapter.delta_weight(wrapper.base.weight)
    outside = torch.ones(64, dtype=torch.bool)
    outside[adapter.index] = False
    assert torch.count_nonzero(delta[:, outside]) == 0
    assert torch.count_nonzero(delta[:, adapter.index]) == 48 * 5


def test_sbora_fb_changes_only_its_output_rows():
    wrapper, adapter = perturbed("sbora_fb", rank=5)
    delta = adapter.delta_weight(wrapper.base.weight)
    outside = torch.ones(48, dtype=torch.bool)
    outside[adapter.index] = False
    assert torch.count_nonzero(delta[outside]) == 0
    assert torch.count_nonzero(delta[adapter.index]) == 64 * 5


@pytest.mark.parametrize("method", ["sbora_fa", "sbora_fb", "ortho"])
def test_two_concepts_fused_into_the_unet_are_exactly_the_sum_of_their_deltas(tiny_unet, method):
    model = tiny_unet.model
    for name in ("c1", "c2"):
        inject(model, AdapterConfig(method=method, rank=4), name=name)
        perturb(model, name, seed=len(name) + ord(name[-1]))
    expected = {}
    for path, wrapper in wrappers(model):
        w0 = wrapper.base.weight.detach().clone()
        d1, d2 = (wrapper.adapters[n].delta_weight(w0) for n in ("c1", "c2"))
        assert set(wrapper.adapters["c1"].index.tolist()).isdisjoint(wrapper.adapters["c2"].index.tolist()), (
            path
        )
        expected[path] = w0 + d1 + d2
    merge(model, ["c1", "c2"])
    for path, wrapper in wrappers(model):
        if method == "ortho":  # a dense low-rank sum: equal to rounding
            torch.testing.assert_close(wrapper.base.weight, expected[path], atol=1e-6, rtol=1e-6)
        else:  # index_add_ into disjoint columns/rows: each weight entry gets at most one addition
            assert torch.equal(wrapper.base.weight, expected[path]), path


def test_fa_input_on_concept_1_columns_sees_no_trace_of_concept_2():
    torch.manual_seed(0)
    wrapper = wrap_linear(nn.Linear(64, 48), "sbora_fa", name="c1", rank=4)
    wrap_linear(wrapper, "sbora_fa", name="c2", rank=4)  # the wrapper's own ledger keeps c2 off c1's slots
    assert set(wrapper.adapters["c1"].index.tolist()).isdisjoint(wrapper.adapters["c2"].index.tolist())
    for name in ("c1", "c2"):
        perturb(wrapper, name, seed=len(name) + ord(name[-1]))
    x = torch.zeros(5, 64)
    x[:, wrapper.adapters["c1"].index] = torch.randn(5, 4)
    with torch.no_grad():
        base_only = wrapper.base(x)
        outputs = {}
        for active in (["c1"], ["c1", "c2"]):
            wrapper.set_active(active)
            live = wrapper(x)
            wrapper.merge()
            outputs[tuple(active)] = live, wrapper(x)
            wrapper.unmerge()
    (live_c1, fused_c1), (live_both, fused_both) = outputs[("c1",)], outputs[("c1", "c2")]
    assert torch.equal(live_both, live_c1)
    assert torch.equal(fused_both, fused_c1)
    assert (live_c1 - base_only).abs().max() > 1e-2  # concept 1 itself does act on these inputs


def test_ortho_concepts_get_mutually_orthogonal_bases(tiny_unet):
    model = tiny_unet.model
    for name in ("c1", "c2", "c3"):
        inject(model, AdapterConfig(method="ortho", rank=4), name=name)
    for path, wrapper in wrappers(model):
        rows = torch.cat([wrapper.adapters[n].A for n in ("c1", "c2", "c3")])  # (3 r, in)
        gram = rows @ rows.T
        assert (gram - torch.eye(12)).abs().max() < 1e-6, path


def test_orthogonal_basis_is_deterministic_and_orthogonal():
    basis = orthogonal_basis(96, 7)
    assert torch.equal(basis, orthogonal_basis.__wrapped__(96, 7))
    assert (basis.T @ basis - torch.eye(96)).abs().max() < 1e-5
    assert not torch.allclose(basis, orthogonal_basis(96, 8))


def test_bora_block_reaches_rank_b_times_r_where_lora_stays_at_r():
    _, block = perturbed("bora_block", rank=3, blocks=4)
    _, lora = perturbed("lora", rank=3)
    w0 = torch.zeros(48, 64)
    with torch.no_grad():
        assert torch.linalg.matrix_rank(block.delta_weight(w0)) == 12
        assert torch.linalg.matrix_rank(lora.delta_weight(w0)) == 3


def test_bora_block_with_one_block_and_unit_scales_is_lora():
    torch.manual_seed(0)
    base = nn.Linear(64, 48)
    lora = wrap_linear(base, "lora", name="lora", rank=3).adapters["lora"]
    block = wrap_linear(base, "bora_block", name="block", rank=3, blocks=1).adapters["block"]
    with torch.no_grad():
        lora.B.normal_()
        block.A.copy_(lora.A)
        block.B.copy_(lora.B)
        block.sigma.fill_(0.0)  # sigma / (mean|sigma| + eps) = 0 -> Sigma = exp(0) = 1
    torch.testing.assert_close(block.delta_weight(base.weight), lora.delta_weight(base.weight))


def test_bora_block_rejects_more_blocks_than_the_layer_has():
    with pytest.raises(ConfigError, match=r"blocks=9 exceeds min\(out, in\) = 8"):
        wrap_linear(nn.Linear(8, 16), "bora_block", rank=2, blocks=9)


# Shapes (out, in) and counts of SD 1.5's 128 attention projections, and docs/methods.md's parameter table.
SD15_SHAPES = {
    (320, 320): 30,
    (320, 768): 10,
    (640, 640): 30,
    (640, 768): 10,
    (1280, 1280): 36,
    (1280, 768): 12,
}
SD15_COUNTS = {
    4: {
        "lora": 797_184,
        "dora": 897_024,
        "sbora_fa": 399_360,
        "ortho": 399_360,
        "sbora_fb": 397_824,
        "bora_block": 805_376,
        "bora_bidim": 996_480,
    },
    8: {
        "lora": 1_594_368,
        "dora": 1_694_208,
        "sbora_fa": 798_720,
        "ortho": 798_720,
        "sbora_fb": 795_648,
        "bora_block": 1_610_752,
        "bora_bidim": 1_793_664,
    },
    16: {
        "lora": 3_188_736,
        "dora": 3_288_576,
        "sbora_fa": 1_597_440,
        "ortho": 1_597_440,
        "sbora_fb": 1_591_296,
        "bora_block": 3_221_504,
        "bora_bidim": 3_388_032,
    },
}


@pytest.mark.parametrize("rank", [4, 8, 16])
@pytest.mark.parametrize("method", list(SD15_COUNTS[4]))
def test_trainable_parameters_match_the_formulas_on_sd15_attention(method, rank):
    config = AdapterConfig(method=method, rank=rank)
    total = 0
    for (out, in_), count in SD15_SHAPES.items():
        base = nn.Linear(in_, out, device="meta")
        slot = Slot(torch.arange(rank), seed=0) if get(method).slot_space else None
        adapter = build(base, config, path=f"{out}x{in_}", slot=slot)
        total += count * sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    assert total == SD15_COUNTS[rank][method]


def test_set_active_chooses_which_concepts_act(tiny_unet):
    inject(tiny_unet.model, AdapterConfig(method="lora", rank=2), name="c1")
    perturb(tiny_unet.model, "c1")
    with_c1 = tiny_unet.run()
    set_active(tiny_unet.model, [])
    assert not torch.equal(with_c1, tiny_unet.run())
