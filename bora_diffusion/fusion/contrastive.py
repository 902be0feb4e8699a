"""LoRACLR's contrastive fusion (Simsar et al., CVPR 2025, arXiv 2412.09622), per layer by gradient descent.

Each concept i was tuned on its own; on a layer, X_i (N, in) are the inputs its own prompts give that layer
(LoRACLR: the text states at the concept's token positions, for the cross-attention keys and values) and
Y_i = X_i W_i^T (N, out) what its own model makes of them. LoRACLR learns one offset D on the base weight,
W = W0 + D, with P_i = X_i W^T and d_ij = ||P_i - Y_j||_F:

    L = 1/B sum_i [ d_ii^2 + max(0, m - min_{j != i} d_ij)^2 ]  +  lam_mse mean((P - Y)^2)  +  lam_reg ||D||_F

The first term pulls every concept's outputs to its own model's (the positive pair), the hinge pushes them at
least a margin m away from the nearest other concept's (the negatives), and the last two are the authors' MSE
and offset penalties. Unlike Mix-of-Show's closed form (`gradient.py`) it is descended with Adam from D = 0
(at a rate scaled to the concepts' deltas, below), and the weight of the lowest loss seen is kept, as the
authors' code does. The blocks are compared flattened, so every concept gives the same number of rows: the
first N = min_i N_i of each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..embeddings import spell_out
from ..errors import ConfigError
from .naive import concept_deltas
from .recording import record

# The authors' defaults (their weight_fusion.py), except the steps and the rate. Adam moves every entry by
# about its rate a step, so a fixed rate (theirs: 1e-4 for 50 steps) reaches a delta's size on one base and not
# on another; ours is a share of the concepts' delta size on the layer. On three world concepts' keys and
# values, 1000 steps at 0.2 take the positive term (sum of d_ii^2) from 160-1800 at W0 to 0.1-0.8; 300 steps
# at 0.05 leave 2-21, and the authors' setting 0.55-0.8 of where it started.
MARGIN = 0.5
MSE_WEIGHT = 0.1
OFFSET_WEIGHT = 1e-3
STEPS = 1000
RATE = 0.2  # Adam's rate, as a share of the RMS entry of the concepts' deltas W_i - W0


def record_inputs(unet: nn.Module, names: Sequence[str], run) -> dict[str, dict[str, Tensor]]:
    """For each concept: module path -> X (N, in), float32, every input row the layer received while
    `run(name)` ran with that concept alone active, in order."""
    return record(unet, names, run, _append_rows)


def concept_rows(ids: Tensor, tokenizer, token: str) -> Tensor:
    """Token ids (N, 77) -> (N, 77) bool, LoRACLR's rows of a concept's prompts: where `token`'s vectors are,
    and each prompt's end token (which has read the whole prompt), not the padding after it."""
    vectors = tokenizer.convert_tokens_to_ids(spell_out([token], tokenizer)[0].split())
    own = torch.isin(ids, torch.tensor(vectors))
    end = ids == tokenizer.eos_token_id
    return own | (end & (end.cumsum(dim=1) == 1))


def _append_rows(kept: Tensor | None, x: Tensor) -> Tensor:
    x = x.float()
    return x if kept is None else torch.cat([kept, x])


def contrastive_loss(
    predicted: Tensor, targets: Tensor, margin: float = MARGIN
) -> tuple[Tensor, Tensor, Tensor]:
    """(the loss, d_ii, min_{j != i} d_ij) for B concepts' predicted and target blocks, both (B, N, out); with
    one concept there is no negative (inf), and the loss is the positive term alone."""
    count = predicted.shape[0]
    distances = torch.cdist(predicted.flatten(1)[None], targets.flatten(1)[None])[0]  # (B, B): d_ij
    positive = distances.diagonal()  # (B,)
    if count == 1:
        return positive.square().mean(), positive, positive.new_full((1,), float("inf"))
    others = distances + torch.diag(positive.new_full((count,), float("inf")))  # (B, B), i == j masked
    negative = others.min(dim=1).values  # (B,)
    loss = (positive.square() + (margin - negative).clamp_min(0).square()).mean()
    return loss, positive, negative


def contrastive_weight(
    w0: Tensor,
    inputs: Sequence[Tensor],
    targets: Sequence[Tensor],
    *,
    margin: float = MARGIN,
    mse_weight: float = MSE_WEIGHT,
    offset_weight: float = OFFSET_WEIGHT,
    steps: int = STEPS,
    rate: float = RATE,
    delta_rms: float,
) -> Tensor:
    """The fused weight (out, in) for concepts' inputs X_i (N_i, in) and targets Y_i (N_i, out), in w0's dtype;
    Adam's rate is `rate` x `delta_rms`, the RMS entry of the concepts' deltas."""
    if len(inputs) != len(targets) or not inputs:
        raise ConfigError(
            f"contrastive fusion needs targets for every input, got {len(inputs)} and {len(targets)}"
        )
    rows = min(len(x) for x in inputs)
    if rows == 0:
        raise ConfigError("contrastive fusion got a concept with no recorded input rows")
    x = torch.stack([x[:rows].detach().float() for x in inputs])  # (B, N, in)
    y = torch.stack([y[:rows].detach().float() for y in targets])  # (B, N, out)
    base = w0.detach().float()
    offset = torch.zeros_like(base, requires_grad=True)  # D (out, in)
    optimizer = torch.optim.Adam([offset], lr=rate * delta_rms)
    best, best_loss = base, float("inf")
    for step in range(steps + 1):
        with torch.enable_grad():
            weight = base + offset
            predicted = x @ weight.T  # (B, N, out)
            loss = contrastive_loss(predicted, y, margin)[0]
            loss = loss + mse_weight * (predicted - y).square().mean() + offset_weight * offset.norm()
        if loss.item() < best_loss:
            best, best_loss = weight.detach().clone(), loss.item()
        if step == steps:
            break  # the last pass only scores the last step's weight
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return best.to(w0.dtype)


@torch.no_grad()
def contrastive_fusion(
    unet: nn.Module, names: Sequence[str], inputs: Mapping[str, Mapping[str, Tensor]], **settings
) -> dict[str, Tensor]:
    """The fused weight, (out, in), of every layer one of `names` adapts: `contrastive_weight` over the concepts
    that adapt it, each concept's targets its own W_i = W0 + s_i dW_i on its inputs from `record_inputs`."""
    fused: dict[str, Tensor] = {}
    for path, (w0, deltas) in concept_deltas(unet, names).items():
        xs = [inputs[name][path] for name in deltas]
        ys = [x @ (w0 + delta).float().T for x, delta in zip(xs, deltas.values(), strict=True)]  # (N_i, out)
        rms = torch.stack([delta.float().square().mean() for delta in deltas.values()]).mean().sqrt()
        fused[path] = contrastive_weight(w0, xs, ys, delta_rms=float(rms), **settings)
    return fused
