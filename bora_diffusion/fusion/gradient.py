"""Mix-of-Show's gradient fusion (Gu et al., NeurIPS 2023, arXiv 2305.18292, section 3.3), in closed form.

Each concept i was tuned on its own, so layer l of its model computes W_i x for the inputs x it sees on its
own prompts. Gradient fusion looks for one weight that does so for every concept at once:

    W* = argmin_W  sum_i ||(W - W_i) X_i||^2  +  lam ||W - W0||^2

with X_i (in, N_i) the layer inputs recorded while concept i's model draws its own prompts. The paper descends
the gradient of the first term; it is a least-squares problem with the closed form

    W* = (sum_i W_i G_i + lam W0) (sum_i G_i + lam I)^-1,   G_i = X_i X_i^T  (in, in),

which is what this file computes. The ridge term (lam = ridge x the mean eigenvalue of sum_i G_i) keeps the
directions no concept's inputs visit at the base weight instead of leaving them undetermined: a layer that
reads 77 text tokens of a few prompts has far fewer input directions than features.

Inputs are recorded (`recording.py`) while the caller's `run(name)` drives the model with only that concept
active; only the Gram matrices are kept (float64), never the activations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .naive import concept_deltas
from .recording import record

RIDGE = 1e-3


def record_grams(
    unet: nn.Module, names: Sequence[str], run: Callable[[str], None]
) -> dict[str, dict[str, Tensor]]:
    """For each concept: module path -> G = X^T X (in, in), float64, over every input the layer received while
    `run(name)` ran with that concept alone active, for the layers that concept adapts."""
    return record(unet, names, run, _add_gram)


def _add_gram(total: Tensor | None, x: Tensor) -> Tensor:
    gram = x.double().T @ x.double()  # [in, in]
    return gram if total is None else total + gram


def least_squares(
    w0: Tensor, weights: Sequence[Tensor], grams: Sequence[Tensor], ridge: float = RIDGE
) -> Tensor:
    """W* = (sum_i W_i G_i + lam W0)(sum_i G_i + lam I)^-1 for (out, in) weights and (in, in) Grams; lam is
    `ridge` times the mean diagonal of sum_i G_i. Returns W* in w0's dtype."""
    if len(weights) != len(grams) or not weights:
        raise ConfigError(f"least_squares needs one Gram per weight, got {len(weights)} and {len(grams)}")
    total = sum(gram.double() for gram in grams)  # [in, in]
    lam = ridge * float(total.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(total.shape[0], dtype=torch.float64, device=total.device)
    right = (
        sum(w.double() @ g.double() for w, g in zip(weights, grams, strict=True)) + lam * w0.double()
    )  # (out, in)
    # W* A = right with A symmetric, so W*^T = A^-1 right^T.
    fused = torch.linalg.solve(total + lam * eye, right.T).T  # (out, in)
    return fused.to(w0.dtype)


@torch.no_grad()
def gradient_fusion(
    unet: nn.Module,
    names: Sequence[str],
    grams: Mapping[str, Mapping[str, Tensor]],
    ridge: float = RIDGE,
) -> dict[str, Tensor]:
    """The fused weight, (out, in), of every layer one of `names` adapts: least squares over the concepts that
    adapt it, each concept's W_i = W0 + s_i dW_i against its Grams from `record_grams`."""
    fused: dict[str, Tensor] = {}
    for path, (w0, deltas) in concept_deltas(unet, names).items():
        own = [w0 + delta for delta in deltas.values()]  # each concept's own W_i
        fused[path] = least_squares(w0, own, [grams[name][path] for name in deltas], ridge)
    return fused
