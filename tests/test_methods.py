"""The method matrix: every registered method, on a tiny MLP and on the tiny UNet, must keep the contract.

A method added to the registry joins every test here without a line of test code.
"""

from __future__ import annotations

import pytest
import torch
from conftest import METHODS, off_default_options, perturb

from bora_diffusion import AdapterConfig
from bora_diffusion.adapters import get
from bora_diffusion.formats import load_adapter, save_adapter
from bora_diffusion.inject import (
    eject,
    inject,
    mark_trainable,
    merge,
    set_active,
    set_scale,
    unmerge,
    wrappers,
)

pytestmark = pytest.mark.parametrize("method", METHODS)

# Tolerances of the fast path against the dense path (LyCORIS keeps a table like this per dtype).
ATOL = {torch.float32: 2e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def adapted(case, method: str, name: str = "c1", rank: int = 2):
    config = AdapterConfig(method=method, rank=rank, targets=case.targets, **off_default_options(method))
    inject(case.model, config, name=name)
    return config


def dense_output(case) -> torch.Tensor:
    """The model's output with every wrapper's weight replaced by W0 + sum scale * delta_weight(W0), no adapters."""
    saved = []
    with torch.no_grad():
        for _, wrapper in wrappers(case.model):
            w0 = wrapper.base.weight.detach().clone()
            live = [wrapper.adapters[n] for n in wrapper.active if n not in wrapper.merged]
            saved.append((wrapper, w0, wrapper.active))
            for adapter in live:
                wrapper.base.weight += adapter.scale * adapter.delta_weight(w0).to(w0.dtype)
            wrapper.active = []
    try:
        return case.run()
    finally:
        with torch.no_grad():
            for wrapper, w0, active in saved:
                wrapper.base.weight.copy_(w0)
                wrapper.active = active


def test_identity_at_init(case, method):
    before = case.run()
    adapted(case, method)
    assert torch.equal(case.run(), before)


def test_perturbed_adapter_changes_output_and_fast_path_equals_dense(case, method):
    before = case.run()
    adapted(case, method)
    perturb(case.model, "c1")
    set_scale(case.model, "c1", 0.7)
    fast = case.run()
    assert (fast - before).abs().max() > 1e-3
    torch.testing.assert_close(fast, dense_output(case), atol=ATOL[torch.float32], rtol=1e-4)


def test_merge_equals_live_and_unmerge_restores_bit_exact(case, method):
    adapted(case, method)
    perturb(case.model, "c1")
    originals = {path: w.base.weight.detach().clone() for path, w in wrappers(case.model)}
    live = case.run()
    merge(case.model)
    torch.testing.assert_close(case.run(), live, atol=ATOL[torch.float32], rtol=1e-4)
    assert any(not torch.equal(w.base.weight, originals[p]) for p, w in wrappers(case.model))
    unmerge(case.model)
    for path, wrapper in wrappers(case.model):
        assert torch.equal(wrapper.base.weight, originals[path]), path
    assert torch.equal(case.run(), live)


def test_disabled_equals_base_and_eject_restores_plain_linears(case, method):
    base = case.run()
    originals = {n: p.detach().clone() for n, p in case.model.named_parameters()}
    adapted(case, method)
    perturb(case.model, "c1")
    set_active(case.model, [])
    assert torch.equal(case.run(), base)
    set_active(case.model, ["c1"])
    merge(case.model)
    eject(case.model)
    assert not list(wrappers(case.model))
    assert {n: p for n, p in case.model.named_parameters()}.keys() == originals.keys()
    for name, param in case.model.named_parameters():
        assert torch.equal(param, originals[name]), name
    assert torch.equal(case.run(), base)


def test_save_load_round_trip_is_exact(case, method, tmp_path):
    config = adapted(case, method)
    perturb(case.model, "c1")
    expected = case.run()
    path = save_adapter(tmp_path / "c1.safetensors", case.model, "c1", config, base_name="test", token="<c1>")
    fresh = case.fresh()
    loaded = load_adapter(path, fresh.model)
    assert loaded.config == config and loaded.token == "<c1>"
    assert torch.equal(fresh.run(), expected)
    mine = {p: w.adapters["c1"].state_dict() for p, w in wrappers(case.model)}
    for path_, wrapper in wrappers(fresh.model):
        for key, tensor in wrapper.adapters["c1"].state_dict().items():
            assert torch.equal(tensor, mine[path_][key]), f"{path_}.{key}"


def test_only_adapter_parameters_receive_gradients(case, method):
    adapted(case, method)
    perturb(case.model, "c1")
    trainable = mark_trainable(case.model, ["c1"])
    adapter_params = {id(p) for _, w in wrappers(case.model) for p in w.adapters["c1"].parameters()}
    assert {id(p) for p in trainable} == adapter_params
    out = case.model(**case.inputs)
    (out.sample if hasattr(out, "sample") else out).square().mean().backward()
    for name, param in case.model.named_parameters():
        if id(param) in adapter_params:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_exported_lora_factors_reproduce_delta(case, method):
    adapted(case, method)
    perturb(case.model, "c1")
    for path, wrapper in wrappers(case.model):
        adapter = wrapper.adapters["c1"]
        factors = adapter.lora_factors()
        assert (factors is not None) == adapter.additive == get(method).additive
        if factors is None:
            continue
        down, up, scaling = factors
        with torch.no_grad():
            torch.testing.assert_close(
                scaling * up @ down, adapter.delta_weight(wrapper.base.weight), atol=1e-6, rtol=1e-5
            )
        assert down.shape[1] == wrapper.in_features and up.shape[0] == wrapper.out_features, path


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_and_tracks_fp32(method, dtype):
    from conftest import make_mlp

    reference = make_mlp()
    config = adapted(reference, method)
    perturb(reference.model, "c1")
    expected = reference.run()
    for adapter_dtype in (torch.float32, dtype):  # fp32 adapters on a half base (the default), then all half
        case = make_mlp()
        inject(case.model, config, name="c1")
        case.model.load_state_dict(reference.model.state_dict())
        case.model.to(dtype)
        for _, wrapper in wrappers(case.model):
            wrapper.adapters["c1"].to(adapter_dtype)
        case.inputs = {"input": case.inputs["input"].to(dtype)}
        out = case.run()
        assert out.dtype == dtype and torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), expected, atol=ATOL[dtype] * 4, rtol=ATOL[dtype])
        torch.testing.assert_close(out, dense_output(case), atol=ATOL[dtype], rtol=ATOL[dtype])


# Largest |fast - dense| allowed, relative to the largest |dense|, of outputs and of gradients, per
# (base dtype, adapter dtype): the fast paths reorder sums and keep rank-r intermediates, the dense path does not.
RELATIVE = {
    (torch.float32, torch.float32): 2e-6,
    (torch.bfloat16, torch.bfloat16): 3e-2,
    (torch.float16, torch.float16): 5e-3,
    (torch.bfloat16, torch.float32): 2e-2,  # the default for a half base: fp32 adapters
}


def _forward_and_grads(wrapper, x, grad_out, dense: bool):
    """The wrapper's output and the gradients of every live adapter's trainable tensors and of x (when it needs
    one), through the wrapper's forward or through F.linear with the dense W0 + sum_k scale_k delta_k(W0)."""
    from torch.nn import functional as F

    live = [wrapper.adapters[name] for name in wrapper.active]
    params = [p for adapter in live for p in adapter.parameters() if p.requires_grad]
    if dense:
        w0 = wrapper.base.weight
        weight = w0 + sum((a.scale * a.delta_weight(w0)).to(w0.dtype) for a in live)
        out = F.linear(x, weight, wrapper.base.bias)
    else:
        out = wrapper(x)
    grads = torch.autograd.grad(out, [*params, *([x] if x.requires_grad else [])], grad_out)
    return [out.detach(), *grads]


# lone: one concept at scale 1, where a method with `forward_whole` computes the whole output; lone_scaled: at
# 0.7, which needs W0 x beside W' x, so the wrapper adds `add_delta` to base(x); two: a second concept of the same
# method live beside it (the general path, each adding its delta).
@pytest.mark.parametrize("live", ["lone", "lone_scaled", "two"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("x_grad", [True, False], ids=["xgrad", "xfrozen"])
@pytest.mark.parametrize("dtypes", list(RELATIVE), ids=lambda d: "-".join(str(t)[6:] for t in d))
def test_fast_path_equals_dense_path_with_gradients_per_dtype(method, dtypes, live, bias, x_grad):
    from bora_diffusion.adapters.base import AdapterLayer
    from bora_diffusion.inject import wrap_linear

    base_dtype, adapter_dtype = dtypes
    torch.manual_seed(0)
    base = torch.nn.Linear(21, 19, bias=bias).requires_grad_(False)  # uneven block splits for bora_block
    wrapper = wrap_linear(base, method, name="c1", rank=3, **off_default_options(method))
    if live == "two":
        wrap_linear(wrapper, method, name="c2", rank=2, **off_default_options(method))
        perturb(wrapper, "c2", seed=2)
    perturb(wrapper, "c1")
    wrapper.base.to(base_dtype)
    for name, adapter in wrapper.adapters.items():
        adapter.to(adapter_dtype)
        adapter.scale = 0.7 if (live, name) != ("lone", "c1") else 1.0
    x = torch.randn(2, 5, 21).to(base_dtype).requires_grad_(x_grad)
    grad_out = torch.randn(2, 5, 19).to(base_dtype)
    if live == "lone":  # the whole-output path runs exactly where the method provides one
        adapter = wrapper.adapters["c1"]
        provides = type(adapter).forward_whole is not AdapterLayer.forward_whole
        assert (adapter.forward_whole(x, wrapper.base) is not None) == provides
        assert provides == (method in ("dora", "bora_bidim"))
    fast = _forward_and_grads(wrapper, x, grad_out, dense=False)
    dense = _forward_and_grads(wrapper, x, grad_out, dense=True)
    assert (
        len(fast) >= 2 + x_grad
    )  # the output, at least one trainable tensor, and x when it needs a gradient
    for what, f, d in zip(["output", *(f"grad {i}" for i in range(len(fast) - 1))], fast, dense, strict=True):
        assert f.dtype == d.dtype and f.shape == d.shape, what
        scale = d.float().abs().max()
        assert scale > 0, what  # nothing trivially zero
        error = (f.float() - d.float()).abs().max() / scale
        assert error <= RELATIVE[dtypes], f"{what}: relative error {error:.2e}"


def test_fast_path_saves_the_input_only_when_a_trainable_tensor_needs_it(method):
    """With x needing no grad (the frozen base's case), a method none of whose trainable tensors has an input
    axis (sbora_fa's B, ortho's B) saves nothing of x's size for the backward: sbora_fa keeps x[..., index]."""
    from bora_diffusion.inject import wrap_linear

    torch.manual_seed(0)
    wrapper = wrap_linear(torch.nn.Linear(21, 19).requires_grad_(False), method, name="c1", rank=3)
    perturb(wrapper, "c1")
    x = torch.randn(2, 5, 21)
    saved: list[torch.Size] = []

    def pack(tensor):
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = wrapper(x)
    out.sum().backward()
    reads_x = any(21 in p.shape for p in wrapper.adapters["c1"].parameters() if p.requires_grad)
    holds_x = any(shape.numel() >= x.numel() for shape in saved)
    assert holds_x == reads_x, saved
