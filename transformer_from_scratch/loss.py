"""Summed next-token cross-entropy straight from the residual stream, without full-size logits.

The 50,257-way unembedding and its softmax are ~90% of a training step at the study's sizes. The
usual path materialises (tokens x d_vocab) logits, their log-softmax and their gradient: three
200 MB tensors per step. Here the loss and both gradients are formed one block of rows at a time in
one reused buffer, using d(nll)/d(logits) = softmax(logits) - onehot(target), computed in place:

    nll       = sum_i  logsumexp(h_i W_U) - (h_i W_U)[t_i]
    d nll/d h = (softmax - onehot) W_U^T,    d nll/d W_U = h^T (softmax - onehot)

The gradients are computed during the forward pass (when autograd will need them) and scaled by
the incoming gradient in backward, so nothing is recomputed. Same numbers as
``F.cross_entropy(h @ W_U, t, reduction="sum")`` to float tolerance; a test checks loss and grads.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

# Rows per block: large enough for efficient GEMMs, small enough that the (rows x d_vocab) buffer
# (256 x 50,257 floats = 51 MB) stays far below the full logits.
DEFAULT_CHUNK_ROWS = 256


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, W_U: Tensor, targets: Tensor, chunk_rows: int, needs_grad: bool) -> Tensor:  # type: ignore[override]
        n_rows = h.shape[0]
        buffer = h.new_empty(min(chunk_rows, n_rows), W_U.shape[1])
        nll = h.new_zeros((), dtype=torch.promote_types(h.dtype, torch.float32))
        grad_h = torch.empty_like(h) if needs_grad else None
        # d nll / d W_U is accumulated as its transpose (d_vocab, d_model): that GEMM orientation is
        # markedly faster on CPU BLAS than accumulating into (d_model, d_vocab).
        grad_W_t = W_U.new_empty(W_U.shape[1], W_U.shape[0]) if needs_grad else None
        for start in range(0, n_rows, chunk_rows):
            h_c, t_c = h[start : start + chunk_rows], targets[start : start + chunk_rows]
            logits = torch.mm(h_c, W_U, out=buffer[: h_c.shape[0]])
            target_logit = logits.gather(1, t_c[:, None]).squeeze(1)
            row_max = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(row_max).exp_()  # in place: the buffer now holds exp(logit - max)
            sum_exp = probs.sum(dim=1, keepdim=True)
            nll += (row_max.squeeze(1) + sum_exp.squeeze(1).log() - target_logit).sum()
            if not needs_grad:  # evaluation (in place beats torch.logsumexp's temporaries here)
                continue
            grad_logits = probs.div_(sum_exp)  # softmax
            grad_logits[torch.arange(h_c.shape[0], device=h.device), t_c] -= 1.0
            torch.mm(grad_logits, W_U.t(), out=grad_h[start : start + chunk_rows])
            if start == 0:  # the first block writes, later ones add: no zero-fill needed
                torch.mm(grad_logits.t(), h_c, out=grad_W_t)
            else:
                grad_W_t.addmm_(grad_logits.t(), h_c)
        if needs_grad:
            if n_rows == 0:
                grad_h, grad_W_t = torch.zeros_like(h), grad_W_t.zero_()
            # One transposing copy into W_U's own layout, so autograd can take the tensor as the
            # .grad without another copy.
            ctx.save_for_backward(grad_h, grad_W_t.t().contiguous())
        return nll

    @staticmethod
    def backward(ctx, grad_nll: Tensor):  # type: ignore[override]
        if getattr(ctx, "backward_done", False):
            raise RuntimeError("linear_cross_entropy supports one backward pass per forward")
        ctx.backward_done = True
        grad_h, grad_W = ctx.saved_tensors
        # Used once (checked above): scaling in place saves allocating two more tensors of their size.
        return grad_h.mul_(grad_nll), grad_W.mul_(grad_nll), None, None, None


def linear_cross_entropy(
    h: Float[Tensor, "n d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    targets: Int[Tensor, " n"],
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Float[Tensor, ""]:
    """Sum over rows of -log softmax(h W_U)[target]; every target must be a real token id."""
    # Decided here, not from ctx.needs_input_grad, which stays True under torch.no_grad().
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or W_U.requires_grad)
    return _LinearCrossEntropy.apply(h, W_U, targets, chunk_rows, needs_grad)
