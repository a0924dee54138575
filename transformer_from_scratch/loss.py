"""Summed next-token cross-entropy straight from the residual stream, without the textbook's
three full-size tensors.

The 50,257-way unembedding and its softmax are ~90% of a training step at the study's sizes. The
textbook path materialises (tokens x d_vocab) logits, their log-softmax and their gradient. Here the
vocabulary is processed in tiles of ``vocab_tile`` columns, so that each tile of logits is still in
cache when it is reduced; the softmax normaliser is accumulated online across tiles (running max and
rescaled sum of exponentials):

    nll       = sum_i  logsumexp(h_i W_U) - (h_i W_U)[t_i]
    d nll/d h = (softmax - onehot) W_U^T,    d nll/d W_U = h^T (softmax - onehot)

Evaluation keeps one tile-sized scratch buffer. Training keeps the logit tiles (one tokens x d_vocab
copy instead of three), turns each into softmax - onehot in place once the normaliser is known, and
forms both gradients during the forward pass; backward only scales them by the incoming gradient.
Same numbers as ``F.cross_entropy(h @ W_U, t, reduction="sum")`` to float tolerance; a test checks
loss and gradients.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

# Vocabulary columns per tile: measured fastest on a 2-core AVX2 CPU among 2048/4096/8192.
DEFAULT_VOCAB_TILE = 2048


def _targets_in_tile(targets: Tensor, start: int, width: int) -> tuple[Tensor, Tensor]:
    """Each target's column within the tile [start, start + width), and whether it falls there."""
    local = targets - start
    return local, (local >= 0) & (local < width)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, W_U: Tensor, targets: Tensor, vocab_tile: int, needs_grad: bool) -> Tensor:  # type: ignore[override]
        n_rows, d_vocab = h.shape[0], W_U.shape[1]
        row_max = h.new_full((n_rows, 1), -math.inf)
        sum_exp = h.new_zeros((n_rows, 1))
        target_logit = h.new_zeros(n_rows)
        scratch = h.new_empty(n_rows, min(vocab_tile, d_vocab))
        tiles: list[tuple[int, Tensor]] = []
        for start in range(0, d_vocab, vocab_tile):
            W_tile = W_U[:, start : start + vocab_tile]
            width = W_tile.shape[1]
            # Training keeps every tile of logits for the gradients; evaluation reuses the scratch.
            logits = h @ W_tile if needs_grad else torch.mm(h, W_tile, out=scratch[:, :width])
            local, in_tile = _targets_in_tile(targets, start, width)
            picked = logits.gather(1, local.clamp(0, width - 1)[:, None]).squeeze(1)
            target_logit += torch.where(in_tile, picked, 0.0)
            new_max = torch.maximum(row_max, logits.amax(dim=1, keepdim=True))
            shifted = torch.sub(logits, new_max, out=scratch[:, :width]) if needs_grad else logits.sub_(new_max)
            sum_exp = sum_exp * torch.exp(row_max - new_max) + shifted.exp_().sum(dim=1, keepdim=True)
            row_max = new_max
            if needs_grad:
                tiles.append((start, logits))
        log_normaliser = row_max + sum_exp.log()
        nll = (log_normaliser.squeeze(1) - target_logit).sum()
        if needs_grad:
            ctx.save_for_backward(*_gradients(h, W_U, targets, tiles, log_normaliser))
        return nll

    @staticmethod
    def backward(ctx, grad_nll: Tensor):  # type: ignore[override]
        if getattr(ctx, "backward_done", False):
            raise RuntimeError("linear_cross_entropy supports one backward pass per forward")
        ctx.backward_done = True
        grad_h, grad_W = ctx.saved_tensors
        # Used once (checked above): scaling in place saves allocating two more tensors of their size.
        return grad_h.mul_(grad_nll), grad_W.mul_(grad_nll), None, None, None


def _gradients(
    h: Tensor, W_U: Tensor, targets: Tensor, tiles: list[tuple[int, Tensor]], log_normaliser: Tensor
) -> tuple[Tensor, Tensor]:
    """d nll/d h and d nll/d W_U from the kept logit tiles, each turned into softmax - onehot in place."""
    grad_h = torch.zeros_like(h)
    # d nll / d W_U is built as its transpose (d_vocab, d_model), one block of rows per tile: that
    # GEMM orientation is markedly faster on CPU BLAS, and every block is written exactly once.
    grad_W_t = W_U.new_empty(W_U.shape[1], W_U.shape[0])
    rows = torch.arange(h.shape[0], device=h.device)
    for start, logits in tiles:
        width = logits.shape[1]
        grad_logits = logits.sub_(log_normaliser).exp_()  # softmax, in place
        local, in_tile = _targets_in_tile(targets, start, width)
        grad_logits[rows[in_tile], local[in_tile]] -= 1.0
        grad_h.addmm_(grad_logits, W_U[:, start : start + width].t())
        torch.mm(grad_logits.t(), h, out=grad_W_t[start : start + width])
    # One transposing copy into W_U's own layout, so autograd can take it as .grad without another.
    return grad_h, grad_W_t.t().contiguous()


def linear_cross_entropy(
    h: Float[Tensor, "n d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    targets: Int[Tensor, " n"],
    vocab_tile: int = DEFAULT_VOCAB_TILE,
) -> Float[Tensor, ""]:
    """Sum over rows of -log softmax(h W_U)[target]; every target must be a real token id."""
    # Decided here, not from ctx.needs_input_grad, which stays True under torch.no_grad().
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or W_U.requires_grad)
    return _LinearCrossEntropy.apply(h, W_U, targets, vocab_tile, needs_grad)
