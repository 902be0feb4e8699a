"""The grouped live path (adapters/grouped.py): several live concepts on one layer, under no_grad, as one product
per kind, against the plain per-concept loop that runs with gradients enabled."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bora_diffusion.adapters import grouped
from bora_diffusion.inject import wrap_linear

CONCEPTS = (
    ("f1", "sbora_fa", 0.7), ("f2", "sbora_fa", 1.0), ("f3", "sbora_fa", -0.5),
    ("l1", "lora", 1.2), ("l2", "lora", 0.3), ("o1", "ortho", 0.9), ("d1", "dora", 0.8),
)  # fmt: skip


def layer_with(concepts):
    torch.manual_seed(0)
    layer = wrap_linear(nn.Linear(48, 40), concepts[0][1], name=concepts[0][0], rank=4)
    for name, method, _ in concepts[1:]:
        wrap_linear(layer, method, name=name, rank=4)
    with torch.no_grad():
        for param in layer.adapters.parameters():
            param.normal_(std=0.3)
    for name, _, scale in concepts:
        layer.adapters[name].scale = scale
    return layer.requires_grad_(False)


def loop(layer, x):
    with torch.enable_grad():  # gradients on: the plain per-concept loop
        return layer(x).detach()


@pytest.mark.parametrize("count", [2, 3, 7])
def test_grouped_equals_the_plain_loop(count, monkeypatch):
    layer = layer_with(CONCEPTS[:count])
    x = torch.randn(2, 9, 48)
    calls = []
    monkeypatch.setattr(grouped, "_build", lambda a, real=grouped._build: calls.append(len(a)) or real(a))
    with torch.no_grad():
        fast = layer(x)
    expected = loop(layer, x)
    base = layer.base(x).detach()
    assert (expected - base).abs().max() > 0.1  # the concepts do change the output
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    assert calls[0] == min(count, 3)  # the sbora_fa concepts went into one group


def test_the_cache_follows_scales_and_in_place_updates():
    layer = layer_with(CONCEPTS[:5])
    x = torch.randn(5, 48)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first)  # cached: the same result
        layer.adapters["f2"].scale = 2.0
        torch.testing.assert_close(layer(x), loop(layer, x), rtol=1e-5, atol=1e-5)
        layer.adapters["l1"].B.mul_(3.0)  # an optimizer step or a loaded file: in place
        torch.testing.assert_close(layer(x), loop(layer, x), rtol=1e-5, atol=1e-5)
        layer.set_active(["f1", "l2"])
        torch.testing.assert_close(layer(x), loop(layer, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer(x), first)


def test_training_keeps_each_concepts_own_path():
    layer = layer_with(CONCEPTS[:3])
    layer.adapters["f1"].B.requires_grad_(True)
    x = torch.randn(4, 48)
    layer(x).sum().backward()
    assert layer.adapters["f1"].B.grad is not None and not hasattr(layer, "_grouped")
