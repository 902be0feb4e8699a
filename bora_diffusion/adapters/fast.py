"""Fast paths of the LoRA family: autograd Functions that save only what their backward reads.

Each computes `result + alpha * up @ (down-side of x)` for a layer's input x (..., in) and the frozen output
`result` (..., out), with alpha = scale * s folded into the GEMM (addmm's alpha), so no separate pass scales a
(tokens, out) tensor, and a backward written by hand that launches only the products whose gradients are needed
(the input usually needs none: the base is frozen and x comes from frozen layers or the data).

- `low_rank_add`: a dense down factor (R, in). Saves x only when `down` trains (its gradient is dh^T x), and
  saves x in the dtype it came in, casting in the backward, so a half-precision base keeps no fp32 copy of it.
- `gather_add`: a one-hot down factor given by its `index` (sbora_fa). Saves x[..., index], (tokens, r), never x.
- `scatter_add`: a one-hot up factor (sbora_fb): adds the (tokens, r) projection into output channels `index`.
- `scaled_linear`: a layer's whole output `a * ((W0 + s B A) (c x)) + bias` with per-output and optional
  per-input scales (DoRA's and `bora_bidim`'s magnitudes), for a lone live adapter: one full GEMM through the
  merged weight forward, where the difference W' x - W0 x takes two, and in the backward one GEMM through it,
  shared by the gradients of c and x.

The backward's skinny products are laid out so that BLAS streams the (tokens, out) gradient row by row: a
rank-r gradient is computed as its transpose, (r, T) @ (T, out), never as (out, T) @ (T, r), which walks the
gradient down its columns and ran about 10x slower on the CPU (OpenBLAS/MKL, fp32, r = 4, 2048 tokens).

The dense path (`AdapterLayer.delta_weight`) stays the reference; tests/test_methods.py checks every fast path
against it, outputs and gradients, per dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _add_product(result: Tensor, hidden: Tensor, up: Tensor, alpha: float) -> Tensor:
    """result (T, out) + alpha * hidden (T, R) @ up.T (R, out): one addmm when the dtypes agree."""
    if result.dtype == hidden.dtype:
        return torch.addmm(result, hidden, up.t(), alpha=alpha)
    return result + torch.mm(hidden, up.t()).mul_(alpha).to(result.dtype)


class _LowRankAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, result: Tensor, x: Tensor, down: Tensor, up: Tensor, alpha: float) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (T, in), T = all leading axes
        hidden = torch.mm(x2.to(down.dtype), down.t())  # (T, in) @ (in, R) -> (T, R)
        out = _add_product(result.reshape(-1, result.shape[-1]), hidden, up, alpha)  # (T, out)
        _, needs_x, needs_down, needs_up, _ = ctx.needs_input_grad
        ctx.alpha, ctx.x_shape, ctx.x_dtype = alpha, x.shape, x.dtype
        ctx.save_for_backward(
            x2 if needs_down else None,
            down if needs_x else None,
            up if (needs_x or needs_down) else None,
            hidden if needs_up else None,
        )
        return out.view(result.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x2, down, up, hidden = ctx.saved_tensors
        needs_result, needs_x, needs_down, needs_up, _ = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])  # (T, out)
        gu = g.to(up.dtype if up is not None else hidden.dtype)
        grad_x = grad_down = grad_up = None
        if needs_up:
            # (R, T) @ (T, out) -> (R, out), returned as its (out, R) transpose
            grad_up = torch.mm(hidden.t().contiguous(), gu).mul_(ctx.alpha).t()
        if needs_x or needs_down:
            # (R, out) @ (out, T) -> (R, T): the hidden activations' gradient, transposed
            grad_hidden_t = torch.mm(up.t().contiguous(), gu.t()).mul_(ctx.alpha)
            if needs_down:
                grad_down = torch.mm(grad_hidden_t, x2.to(grad_hidden_t.dtype))  # (R, T) @ (T, in) -> (R, in)
            if needs_x:
                grad_x = torch.mm(grad_hidden_t.t(), down).to(ctx.x_dtype).view(ctx.x_shape)  # (T, in)
        return (grad if needs_result else None), grad_x, grad_down, grad_up, None


class _GatherAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, result: Tensor, x: Tensor, index: Tensor, up: Tensor, alpha: float) -> Tensor:
        picked = x.reshape(-1, x.shape[-1]).index_select(1, index).to(up.dtype)  # (T, in) -> (T, r)
        out = _add_product(result.reshape(-1, result.shape[-1]), picked, up, alpha)  # (T, out)
        _, needs_x, _, needs_up, _ = ctx.needs_input_grad
        ctx.alpha, ctx.x_shape, ctx.x_dtype = alpha, x.shape, x.dtype
        ctx.save_for_backward(
            picked if needs_up else None, index if needs_x else None, up if needs_x else None
        )
        return out.view(result.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        picked, index, up = ctx.saved_tensors
        needs_result, needs_x, _, needs_up, _ = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])  # (T, out)
        grad_x = grad_up = None
        if needs_up:
            # (r, T) @ (T, out) -> (r, out), returned as its (out, r) transpose
            grad_up = torch.mm(picked.t().contiguous(), g.to(picked.dtype)).mul_(ctx.alpha).t()
        if needs_x:
            # (r, out) @ (out, T) -> (r, T), then viewed as (T, r)
            grad_picked = (
                torch.mm(up.t().contiguous(), g.to(up.dtype).t()).mul_(ctx.alpha).t().to(ctx.x_dtype)
            )
            grad_x = g.new_zeros(g.shape[0], ctx.x_shape[-1], dtype=ctx.x_dtype)  # (T, in)
            grad_x = grad_x.index_copy_(1, index, grad_picked).view(ctx.x_shape)  # the slot's columns only
        return (grad if needs_result else None), grad_x, None, grad_up, None


class _ScatterAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, result: Tensor, x: Tensor, down: Tensor, index: Tensor, alpha: float) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (T, in)
        hidden = torch.mm(x2.to(down.dtype), down.t())  # (T, in) @ (in, r) -> (T, r)
        out = result.reshape(-1, result.shape[-1]).clone()  # (T, out)
        out.index_add_(1, index, hidden.to(out.dtype), alpha=alpha)  # into output channels `index`
        _, needs_x, needs_down, _, _ = ctx.needs_input_grad
        ctx.alpha, ctx.x_shape, ctx.x_dtype = alpha, x.shape, x.dtype
        ctx.save_for_backward(x2 if needs_down else None, down if needs_x else None, index)
        return out.view(result.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x2, down, index = ctx.saved_tensors
        needs_result, needs_x, needs_down, _, _ = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])  # (T, out)
        dtype = down.dtype if down is not None else x2.dtype if x2 is not None else g.dtype
        grad_hidden = g.index_select(1, index).to(dtype).mul_(ctx.alpha)  # (T, r)
        grad_x = grad_down = None
        if needs_down:
            grad_down = torch.mm(grad_hidden.t(), x2.to(dtype))  # (r, T) @ (T, in) -> (r, in)
        if needs_x:
            grad_x = torch.mm(grad_hidden, down).to(ctx.x_dtype).view(ctx.x_shape)  # (T, in)
        return (grad if needs_result else None), grad_x, grad_down, None, None


class _ScaledLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        merged: Tensor,
        bias: Tensor | None,
        down: Tensor,
        up: Tensor,
        out_scale: Tensor,
        in_scale: Tensor | None,
        alpha: float,
    ) -> Tensor:
        needs_x, _, _, needs_down, needs_up, needs_out, needs_in, _ = ctx.needs_input_grad
        x2 = x.reshape(-1, x.shape[-1])  # (T, in)
        out = torch.mm(x2, merged.t())  # (T, in) @ (in, out) -> (T, out): the whole product, one GEMM
        hidden = None
        if needs_up:  # only B's gradient reads the low-rank activations: (T, in) @ (in, R) -> (T, R)
            down_c = down if in_scale is None else down * in_scale  # (R, in), A c
            hidden = torch.mm(x2.to(down.dtype), down_c.t())
        ctx.alpha, ctx.x_shape, ctx.x_dtype = alpha, x.shape, x.dtype
        ctx.save_for_backward(
            x2 if (needs_down or needs_in) else None,
            merged if (needs_x or needs_in) else None,  # the gradient of x, and of c, is g @ merged
            up * out_scale[:, None] if needs_down else None,  # (out, R), a B
            hidden,
            out if needs_out else None,  # a (W0 + s B A) (c x), bias not added: a's gradient reads it
            out_scale,
            in_scale if (needs_down or needs_in) else None,
        )
        result = out if bias is None else out + bias
        return result.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x2, merged, up_a, hidden, out, out_scale, in_scale = ctx.saved_tensors
        needs_x, _, _, needs_down, needs_up, needs_out, needs_in, _ = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])  # (T, out)
        grad_x = grad_down = grad_up = grad_in = None
        # The gradients of a and c divide the scales back out of the saved output and of g @ merged instead of
        # keeping W0 (c x) or running W0 a second time. The scales are magnitude / norm, the magnitudes start at
        # floored norms; one trained to exactly 0 would make its gradient nan here (add_delta's path would not).
        grad_out = None
        if needs_out:  # sum_T g * (W0 + s B A) (c x) = sum_T g * out / a: (out,)
            grad_out = (g * out).sum(0, dtype=torch.float32).to(out_scale.dtype) / out_scale
        if needs_up:
            # (R, T) @ (T, out) -> (R, out), returned as its (out, R) transpose, times a for a B
            grad_up = (
                torch.mm(hidden.t().contiguous(), g.to(hidden.dtype)).t().mul_(out_scale[:, None] * ctx.alpha)
            )
        if needs_down:
            # (R, out) @ (out, T) -> (R, T): the low-rank activations' gradient, transposed
            grad_hidden_t = torch.mm(up_a.t().contiguous(), g.to(up_a.dtype).t()).mul_(ctx.alpha)
            grad_down = torch.mm(grad_hidden_t, x2.to(grad_hidden_t.dtype))  # (R, T) @ (T, in) -> (R, in)
            grad_down = grad_down if in_scale is None else grad_down.mul_(in_scale)  # through A c
        if needs_x or needs_in:
            grad_x2 = torch.mm(g, merged)  # the backward's one full GEMM: (T, out) @ (out, in) -> (T, in)
            if needs_in:  # sum_T x * (g (a V))_T = sum_T x * (g @ merged) / c: (in,)
                grad_in = (grad_x2 * x2).sum(0, dtype=torch.float32).to(in_scale.dtype) / in_scale
            if needs_x:
                grad_x = grad_x2.to(ctx.x_dtype).view(ctx.x_shape)
        return grad_x, None, None, grad_down, grad_up, grad_out, grad_in, None


def low_rank_add(result: Tensor, x: Tensor, down: Tensor, up: Tensor, alpha: float) -> Tensor:
    """`result + alpha * x @ down.T @ up.T`: x (..., in), down (R, in), up (out, R), result (..., out)."""
    return _LowRankAdd.apply(result, x, down, up, alpha)


def gather_add(result: Tensor, x: Tensor, index: Tensor, up: Tensor, alpha: float) -> Tensor:
    """`result + alpha * x[..., index] @ up.T`: index (r,) distinct input features, up (out, r)."""
    return _GatherAdd.apply(result, x, index, up, alpha)


def scatter_add(result: Tensor, x: Tensor, down: Tensor, index: Tensor, alpha: float) -> Tensor:
    """`result` plus `alpha * x @ down.T` added into output channels `index`: down (r, in), index (r,) distinct."""
    return _ScatterAdd.apply(result, x, down, index, alpha)


def scaled_linear(
    x: Tensor,
    merged: Tensor,
    bias: Tensor | None,
    down: Tensor,
    up: Tensor,
    out_scale: Tensor,
    in_scale: Tensor | None = None,
    alpha: float = 1.0,
) -> Tensor:
    """`merged @ x + bias` for x (..., in), where merged (out, in) = out_scale * (W0 + alpha * up @ down) * in_scale
    is built by the caller without a graph; the backward gives down (R, in), up (out, R), out_scale (out,) and
    in_scale (in,) or None (all ones) their gradients through that product. W0 and bias stay frozen."""
    return _ScaledLinear.apply(x, merged, bias, down, up, out_scale, in_scale, alpha)
