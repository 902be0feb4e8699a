"""Oracles: our `lora` and `dora` must match peft's LoRA and DoRA, outputs and gradients, on identical tensors."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from bora_diffusion.inject import wrap_linear


class Holder(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


def twins(method: str, rank: int, alpha: float, bias: bool):
    """Our adapted Linear and peft's, on the same W0, b, A, B (and magnitude), all perturbed from init."""
    torch.manual_seed(0)
    base = nn.Linear(48, 40, bias=bias)
    ours = wrap_linear(nn.Linear(48, 40, bias=bias), method, rank=rank, alpha=alpha)
    ours.base.load_state_dict(base.state_dict())
    adapter = ours.adapters["default"]
    if method == "dora":  # magnitude was initialized from the other Linear's norms; recompute from W0
        adapter.magnitude.data = torch.linalg.vector_norm(base.weight, dim=1)
    with torch.no_grad():
        adapter.B.normal_(0, 0.3)
        adapter.A.add_(torch.randn_like(adapter.A) * 0.1)
    peft_model = get_peft_model(
        Holder(base), LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"], use_dora=method == "dora")
    )
    layer = peft_model.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(adapter.A)
        layer.lora_B["default"].weight.copy_(adapter.B)
    if method == "dora":
        with torch.no_grad():
            layer.lora_magnitude_vector["default"].weight.copy_(adapter.magnitude * 1.05)
            adapter.magnitude.mul_(1.05)  # move it off ||W0|| too
    return ours, peft_model, layer


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize(("rank", "alpha", "bias"), [(4, 4, True), (8, 16, False), (2, 1, True)])
def test_matches_peft_outputs_and_gradients(method, rank, alpha, bias):
    ours, peft_model, layer = twins(method, rank, alpha, bias)
    x = torch.randn(2, 9, 48)
    y_ours, y_peft = ours(x), peft_model(x)
    torch.testing.assert_close(y_ours, y_peft, atol=1e-5, rtol=1e-5)
    target = torch.randn_like(y_ours)
    (y_ours - target).square().mean().backward()
    (y_peft - target).square().mean().backward()
    adapter = ours.adapters["default"]
    pairs = [(adapter.A, layer.lora_A["default"].weight), (adapter.B, layer.lora_B["default"].weight)]
    if method == "dora":
        pairs.append((adapter.magnitude, layer.lora_magnitude_vector["default"].weight))
    for mine, theirs in pairs:
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_weight_matches_peft_merge(method):
    ours, peft_model, _ = twins(method, 4, 8, True)
    ours.merge()
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(ours.base.weight, merged.proj.weight, atol=1e-6, rtol=1e-5)
