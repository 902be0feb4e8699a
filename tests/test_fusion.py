"""The merge baselines of bora_diffusion.fusion against their definitions, on a toy model of two Linears:
naive summing is W0 + the sum of the deltas; least squares of one concept gives that concept's weight back, and
of two concepts whose inputs span orthogonal subspaces reproduces each one on its own inputs, which summing does
not; the recorded Grams are the inputs' X^T X; LoRACLR's loss is its formula, its descent converges to the same
weights as least squares without the margin and pushes the concepts apart with it; fused weights go in for a
`with` block and the base comes back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bora_diffusion.config import AdapterConfig
from bora_diffusion.embeddings import add_token
from bora_diffusion.errors import ConfigError
from bora_diffusion.fusion import (
    concept_rows,
    contrastive_fusion,
    contrastive_weight,
    fused_weights,
    gradient_fusion,
    least_squares,
    naive_sum,
    record_grams,
    record_inputs,
)
from bora_diffusion.fusion.contrastive import contrastive_loss
from bora_diffusion.inject import inject, set_active, wrappers

IN, OUT = 8, 6


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(IN, IN)
        self.second = nn.Linear(IN, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


def _toy(names: list[str], seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    model = Toy()
    for name in names:
        inject(model, AdapterConfig(method="lora", rank=2, targets=(r"^(first|second)$",)), name=name)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, layer in wrappers(model):
            for param in layer.adapters.parameters():  # lora's up factor starts at zero: give it a delta
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


def _subspace_inputs(rows: int, dims: slice, seed: int) -> torch.Tensor:
    """[rows, IN] inputs that are zero outside the feature indices `dims`."""
    x = torch.zeros(rows, IN)
    x[:, dims] = torch.randn(rows, dims.stop - dims.start, generator=torch.Generator().manual_seed(seed))
    return x


def test_naive_sum_is_the_base_plus_every_delta():
    model = _toy(["a", "b"])
    for name in ("a", "b"):
        for _, layer in wrappers(model):
            layer.adapters[name].scale = 0.5 if name == "b" else 1.0
    fused = naive_sum(model, ["a", "b"])
    for path, layer in wrappers(model):
        w0 = layer.original_weight
        expected = w0 + layer.adapters["a"].delta_weight(w0) + 0.5 * layer.adapters["b"].delta_weight(w0)
        torch.testing.assert_close(fused[path], expected)
        assert not torch.allclose(fused[path], w0, atol=1e-3)
    x = torch.randn(5, IN)
    live = model(x)  # both adapters active, live: their outputs add up, as the summed weight's do
    with fused_weights(model, fused):
        torch.testing.assert_close(model(x), live, atol=1e-5, rtol=1e-5)


def test_least_squares_of_one_concept_is_that_concept():
    torch.manual_seed(0)
    w0, w1 = torch.randn(OUT, IN), torch.randn(OUT, IN)
    x = torch.randn(64, IN)  # full-rank inputs
    fused = least_squares(w0, [w1], [x.T @ x], ridge=1e-9)
    torch.testing.assert_close(fused, w1, atol=1e-5, rtol=1e-5)
    # With a real ridge the result leans toward W0, and only a little: 1e-3 of the inputs' mean eigenvalue.
    leaned = least_squares(w0, [w1], [x.T @ x], ridge=1e-3)
    assert 0 < (leaned - w1).norm() / (w0 - w1).norm() < 1e-2


def test_least_squares_keeps_two_concepts_on_orthogonal_inputs_where_summing_does_not():
    torch.manual_seed(0)
    w0 = torch.randn(OUT, IN)
    w1, w2 = w0 + torch.randn(OUT, IN), w0 + torch.randn(OUT, IN)
    x1, x2 = _subspace_inputs(32, slice(0, 4), 1), _subspace_inputs(32, slice(4, 8), 2)
    fused = least_squares(w0, [w1, w2], [x1.T @ x1, x2.T @ x2], ridge=1e-9)
    torch.testing.assert_close(x1 @ fused.T, x1 @ w1.T, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x2 @ fused.T, x2 @ w2.T, atol=1e-4, rtol=1e-4)
    summed = w0 + (w1 - w0) + (w2 - w0)
    assert (
        x1 @ summed.T - x1 @ w1.T
    ).norm() > 1.0  # the other concept's delta leaks into concept 1's outputs


def test_least_squares_leaves_unvisited_input_directions_at_the_base():
    torch.manual_seed(0)
    w0, w1 = torch.randn(OUT, IN), torch.randn(OUT, IN)
    x = _subspace_inputs(32, slice(0, 4), 3)
    fused = least_squares(w0, [w1], [x.T @ x], ridge=1e-6)
    torch.testing.assert_close(fused[:, 4:], w0[:, 4:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused[:, :4], w1[:, :4], atol=1e-3, rtol=1e-3)


class TwoConcepts:
    """The toy model with concepts a and b on inputs in orthogonal subspaces, and each one's outputs alone."""

    def __init__(self) -> None:
        self.model = _toy(["a", "b"])
        self.inputs = {"a": _subspace_inputs(40, slice(0, 4), 1), "b": _subspace_inputs(40, slice(4, 8), 2)}
        self.alone = {}
        for name in ("a", "b"):
            set_active(self.model, [name])
            self.alone[name] = self.model(self.inputs[name]).detach()
        set_active(self.model, ["a", "b"])

    def run(self, name: str) -> None:
        self.model(self.inputs[name])

    def errors(self, weights) -> dict[str, float]:
        """Each concept's relative error against its outputs alone, with `weights` fused in."""
        with fused_weights(self.model, weights), torch.no_grad():
            return {
                name: float((self.model(self.inputs[name]) - alone).norm() / alone.norm())
                for name, alone in self.alone.items()
            }

    def assert_beats_summing(self, weights) -> None:
        # The first layer's inputs are orthogonal, so a fit can be exact there; the second's are tanh of them,
        # which overlap, so the concepts' outputs only come close. Summing is far off on both.
        error, summed = self.errors(weights), self.errors(naive_sum(self.model, ["a", "b"]))
        for name in error:
            assert error[name] < 0.5 * summed[name], (error, summed)


def test_gradient_fusion_reproduces_each_concept_on_its_recorded_inputs():
    toy = TwoConcepts()
    grams = record_grams(toy.model, ["a", "b"], toy.run)
    # The first layer sees the raw inputs: its Gram is X^T X.
    torch.testing.assert_close(grams["a"]["first"], toy.inputs["a"].double().T @ toy.inputs["a"].double())
    for _, layer in wrappers(toy.model):
        assert layer.active == ["a", "b"]  # recording put the active adapters back
    toy.assert_beats_summing(gradient_fusion(toy.model, ["a", "b"], grams, ridge=1e-9))


def test_contrastive_loss_is_the_positive_distance_plus_the_hinge_on_the_nearest_negative():
    generator = torch.Generator().manual_seed(0)
    predicted, targets = (
        torch.randn(3, 4, OUT, generator=generator),
        torch.randn(3, 4, OUT, generator=generator),
    )
    margin = 6.0  # about the blocks' distances, so some hinges are active and some are not
    loss, positive, negative = contrastive_loss(predicted, targets, margin)
    d = torch.tensor([[(predicted[i] - targets[j]).norm() for j in range(3)] for i in range(3)])
    nearest = torch.tensor([min(d[i, j] for j in range(3) if j != i) for i in range(3)])
    torch.testing.assert_close(positive, d.diagonal())
    torch.testing.assert_close(negative, nearest)
    hinge = (margin - nearest).clamp_min(0)
    assert 0 < int((hinge > 0).sum()) < 3
    torch.testing.assert_close(loss, (d.diagonal() ** 2 + hinge**2).mean())


def _two_concepts(shared_rows: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """W0 and two concepts' inputs and targets Y_i = X_i W_i^T; with shared_rows, both start with the same rows."""
    torch.manual_seed(0)
    w0 = torch.randn(OUT, IN)
    weights = [w0 + 0.3 * torch.randn(OUT, IN), w0 + 0.3 * torch.randn(OUT, IN)]
    xs = [_subspace_inputs(16, slice(0, 4), 1), _subspace_inputs(16, slice(4, 8), 2)]
    if shared_rows:
        for x in xs:
            x[:shared_rows] = _subspace_inputs(shared_rows, slice(0, 8), 3)
    return w0, xs, [x @ w.T for x, w in zip(xs, weights, strict=True)]


def test_contrastive_descent_without_the_margin_reaches_the_least_squares_weights():
    w0, xs, ys = _two_concepts()
    weights = [torch.linalg.lstsq(x, y).solution.T for x, y in zip(xs, ys, strict=True)]  # each W_i back
    fused = contrastive_weight(w0, xs, ys, margin=0.0, mse_weight=0.0, offset_weight=0.0, delta_rms=0.3)
    expected = least_squares(w0, weights, [x.T @ x for x in xs], ridge=1e-9)
    torch.testing.assert_close(fused, expected, atol=2e-3, rtol=2e-3)
    # Starting from W0, the descent moved all the way: far from the base, as far as the concepts are.
    assert (fused - w0).norm() > 0.9 * (expected - w0).norm()


def test_the_margin_pushes_each_concept_away_from_the_nearest_other_one():
    # Both concepts share half their rows, where their targets differ: no weight fits both, and the margin
    # decides how far each concept's outputs keep from the other's.
    w0, xs, ys = _two_concepts(shared_rows=8)
    settings = {"mse_weight": 0.0, "offset_weight": 0.0, "delta_rms": 0.3}
    x, y = torch.stack(xs), torch.stack(ys)
    plain = contrastive_weight(w0, xs, ys, margin=0.0, **settings)
    _, positive, negative = contrastive_loss(x @ plain.T, y, 0.0)
    margin = 2 * float(negative.min())
    pushed = contrastive_weight(w0, xs, ys, margin=margin, **settings)
    _, pushed_positive, pushed_negative = contrastive_loss(x @ pushed.T, y, margin)
    assert float(pushed_negative.min()) > 1.2 * float(negative.min())
    assert float(pushed_positive.mean()) > float(positive.mean())  # what the push costs the positive pairs


def test_contrastive_fusion_reproduces_each_concept_on_its_recorded_inputs():
    toy = TwoConcepts()
    recorded = record_inputs(toy.model, ["a", "b"], toy.run)
    torch.testing.assert_close(recorded["a"]["first"], toy.inputs["a"])  # the first layer sees the raw rows
    assert recorded["b"]["second"].shape == (40, IN)
    for _, layer in wrappers(toy.model):
        assert layer.active == ["a", "b"]
    toy.assert_beats_summing(contrastive_fusion(toy.model, ["a", "b"], recorded))


def test_concept_rows_are_the_tokens_vectors_and_the_end_token(tiny_pipe):
    tokenizer = tiny_pipe.tokenizer
    add_token(tokenizer, tiny_pipe.text_encoder, "<zq-thing>", count=3, init_word="toy")
    add_token(tokenizer, tiny_pipe.text_encoder, "<zq-other>", init_word="toy")
    prompts = ["a photo of <zq-thing> toy", "<zq-other> beside <zq-thing>"]
    ids = tokenizer(
        [p.replace("<zq-thing>", "<zq-thing> <zq-thing>_1 <zq-thing>_2") for p in prompts],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids  # (2, 77), ending in padding
    rows = concept_rows(ids, tokenizer, "<zq-thing>")
    vectors = tokenizer.convert_tokens_to_ids(["<zq-thing>", "<zq-thing>_1", "<zq-thing>_2"])
    for row, prompt_ids in zip(rows, ids, strict=True):
        picked = prompt_ids[row].tolist()
        assert picked == [*vectors, tokenizer.eos_token_id]  # in order: the three vectors, then the end token
    assert int(rows.sum()) == 8  # the other concept's token and the padding are not rows


def test_fused_weights_restore_the_base_and_the_active_adapters():
    model = _toy(["a", "b"])
    x = torch.randn(3, IN)
    before = model(x).detach()
    weights = {path: torch.zeros_like(layer.base.weight) for path, layer in wrappers(model)}
    with fused_weights(model, weights):
        assert torch.allclose(model(x), model.second.base.bias.expand(3, OUT))
    torch.testing.assert_close(model(x), before, atol=0, rtol=0)
    with (
        pytest.raises(ConfigError, match="does not adapt"),
        fused_weights(model, {"nowhere": torch.zeros(1)}),
    ):
        pass
