"""Summed next-token cross-entropy straight from the residual stream, without the textbook's
three full-size tensors.

The 50,257-way unembedding and its softmax are ~90% of a training step at the study's sizes. The
textbook path materialises (tokens x d_vocab) logits, their log-softmax and their gradient. Here the
vocabulary is processed in tiles of ``vocab_tile`` columns, so that each tile of logits is still in
cache when it is reduced; the softmax normaliser is accumulated online across tiles (running max and
rescaled sum of exponentials):

    nll       = sum_i  logsumexp(h_i W_U) - (h_i W_U)[t_i]
    d nll/d h = (softmax - onehot) W_U^T,    d nll/d W_U = h^T (softmax - onehot)

Evaluation needs one tile of scratch. Training keeps each tile as exp(logits - running max), one
tokens x d_vocab copy instead of three, turns it into softmax - onehot in place with one
multiplication once the normaliser is known, and forms both gradients during the forward pass;
backward only scales them by the incoming gradient. The tiles live in a ``Workspace`` its owner (the
model) reuses from call to call, because on CPU fresh memory of that size costs more in page faults
than the softmax does. Same numbers as ``F.cross_entropy(h @ W_U, t, reduction="sum")`` to float
tolerance; a test checks loss and gradients.

Under bf16 autocast the three matmuls (the logit tiles, and per tile both gradients) run in bf16,
which CPUs with native bf16 (AVX512-BF16, AMX) do about twice as fast as fp32: each tile's product is
accumulated in fp32 inside the kernel and rounded to bf16 once, as autocast does for any matmul.
Everything else stays fp32: the tiles are widened before the online softmax, the normaliser and the
loss are fp32, and the gradients are summed over tiles in fp32 buffers.

This path exists for CPU caches and page faults; on a GPU the textbook path (the model's
``nll_sum(..., fused=False)``) is the default.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

# Vocabulary columns per tile: 512 to 4096 measured within noise of each other on a 2-core AVX2 CPU.
DEFAULT_VOCAB_TILE = 2048


class Tile(NamedTuple):
    """One vocabulary tile of a training forward pass, kept for the gradients."""

    start: int  # first vocabulary column
    exp_shifted: Tensor  # (n, width): exp(logits - shift), overwritten with the gradient later
    shift: Tensor  # (n, 1): running row maximum of the logits when this tile was reached


class Workspace:
    """A flat buffer for the logit tiles, kept between calls and grown when a call needs more.

    Safe to reuse because every tile is dead when forward returns (the gradients are formed there).
    Worth it on CPU: a fresh 200 MB each training step costs ~50k page faults, ~0.1 s.
    """

    def __init__(self) -> None:
        self.buffer: Tensor | None = None

    def take(self, numel: int, like: Tensor) -> Tensor:
        old = self.buffer
        if old is None or old.numel() < numel or (old.device, old.dtype) != (like.device, like.dtype):
            del old
            self.buffer = None  # release the old one before allocating its successor
            self.buffer = like.new_empty(numel)
        return self.buffer[:numel]


def _targets_in_tile(targets: Tensor, start: int, width: int) -> tuple[Tensor, Tensor]:
    """Each target's column within the tile [start, start + width), and whether it falls there."""
    local = targets - start
    return local, (local >= 0) & (local < width)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, W_U: Tensor, b_U: Tensor | None, targets: Tensor, vocab_tile: int,  # type: ignore[override]
                needs_grad: bool, workspace: Workspace, matmul_dtype: torch.dtype, per_token: bool) -> Tensor:
        n_rows, d_vocab = h.shape[0], W_U.shape[1]
        h_mm, W_mm = h.to(matmul_dtype), W_U.to(matmul_dtype)  # the same tensors when no cast is asked for
        row_max = h.new_full((n_rows, 1), -math.inf)
        sum_exp = h.new_zeros((n_rows, 1))
        target_logit = h.new_zeros(n_rows)
        # Training keeps every tile for the gradients, side by side; evaluation reuses the first.
        buffer = workspace.take(n_rows * (d_vocab if needs_grad else min(vocab_tile, d_vocab)), like=h)
        tiles: list[Tile] = []
        for start in range(0, d_vocab, vocab_tile):
            W_tile = W_mm[:, start : start + vocab_tile]
            width = W_tile.shape[1]
            offset = n_rows * start if needs_grad else 0
            logits = buffer[offset : offset + n_rows * width].view(n_rows, width)
            if W_tile.dtype == logits.dtype:
                torch.mm(h_mm, W_tile, out=logits)
            else:
                logits.copy_(torch.mm(h_mm, W_tile))  # widened to fp32 for the softmax
            if b_U is not None:
                logits += b_U[start : start + width]
            local, in_tile = _targets_in_tile(targets, start, width)
            picked = logits.gather(1, local.clamp(0, width - 1)[:, None]).squeeze(1)
            target_logit += torch.where(in_tile, picked, 0.0)
            new_max = torch.maximum(row_max, logits.amax(dim=1, keepdim=True))
            sum_exp = sum_exp * torch.exp(row_max - new_max) + logits.sub_(new_max).exp_().sum(dim=1, keepdim=True)
            row_max = new_max
            if needs_grad:
                tiles.append(Tile(start, logits, new_max))  # logits now hold exp(logits - new_max)
        log_normaliser = row_max + sum_exp.log()
        token_nll = log_normaliser.squeeze(1) - target_logit
        if per_token:
            return token_nll
        if needs_grad:
            ctx.has_bias = b_U is not None
            ctx.save_for_backward(*_gradients(h_mm, W_mm, targets, tiles, log_normaliser, h.dtype, ctx.has_bias))
        return token_nll.sum()

    @staticmethod
    def backward(ctx, grad_nll: Tensor):  # type: ignore[override]
        if getattr(ctx, "backward_done", False):
            raise RuntimeError("linear_cross_entropy supports one backward pass per forward")
        ctx.backward_done = True
        grad_h, grad_W, *grad_b = ctx.saved_tensors
        # Used once (checked above): scaling in place saves allocating two more tensors of their size.
        grad_b = grad_b[0].mul_(grad_nll) if ctx.has_bias else None
        return grad_h.mul_(grad_nll), grad_W.mul_(grad_nll), grad_b, None, None, None, None, None, None


def _gradients(
    h: Tensor, W_U: Tensor, targets: Tensor, tiles: list[Tile], log_normaliser: Tensor, dtype: torch.dtype,
    bias: bool,
) -> tuple[Tensor, ...]:
    """d nll/d h and d nll/d W_U (in ``dtype``; the latter in W_U's own memory layout), and d nll/d b_U
    when there is a bias, from the kept tiles, each turned into softmax - onehot in place; ``h`` and
    ``W_U`` are in the matmuls' dtype.

    A tile holds exp(logits - m) for the running maximum m it was shifted by, so one multiplication
    by exp(m - log_normaliser) makes it the softmax, without a second pass of exponentials.
    """
    grad_h = torch.zeros(h.shape, dtype=dtype, device=h.device)
    # empty_like keeps W_U's layout: a tied W_U is W_E's transpose, and its gradient's rows then are W_E's
    grad_W = torch.empty_like(W_U, dtype=dtype)
    grad_b = torch.empty(W_U.shape[1], dtype=dtype, device=W_U.device) if bias else None
    rows_scratch = h.new_empty(tiles[0].exp_shifted.shape[1], h.shape[1])  # one tile's rows of grad_W^T
    rows = torch.arange(h.shape[0], device=h.device)
    for tile in tiles:
        width = tile.exp_shifted.shape[1]
        grad_logits = tile.exp_shifted.mul_(torch.exp(tile.shift - log_normaliser))  # softmax, in place
        local, in_tile = _targets_in_tile(targets, tile.start, width)
        grad_logits[rows[in_tile], local[in_tile]] -= 1.0
        columns = slice(tile.start, tile.start + width)
        if grad_b is not None:
            torch.sum(grad_logits, dim=0, out=grad_b[columns])
        if h.dtype == dtype:
            grad_h.addmm_(grad_logits, W_U[:, columns].t())
        else:  # low-precision matmuls, summed in `dtype`
            grad_logits = grad_logits.to(h.dtype)
            grad_h += torch.mm(grad_logits, W_U[:, columns].t())
        # This tile's rows of d nll/d W_U^T, as G^T h: the same product as h^T G written into W_U's
        # strided columns ran 1.2-1.5x slower (MKL, 2-core AMD EPYC Zen 3). A tied W_U takes the rows
        # in place; an untied one through a copy of one tile.
        grad_W_rows = grad_W[:, columns].t()
        if grad_W_rows.is_contiguous() and grad_W_rows.dtype == grad_logits.dtype:
            torch.mm(grad_logits.t(), h, out=grad_W_rows)
        else:
            grad_W_rows.copy_(torch.mm(grad_logits.t(), h, out=rows_scratch[:width]))
    return (grad_h, grad_W) if grad_b is None else (grad_h, grad_W, grad_b)


def linear_cross_entropy(
    h: Float[Tensor, "n d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    targets: Int[Tensor, " n"],
    vocab_tile: int = DEFAULT_VOCAB_TILE,
    workspace: Workspace | None = None,
    b_U: Float[Tensor, " d_vocab"] | None = None,
) -> Float[Tensor, ""]:
    """Sum over rows of -log softmax(h W_U + b_U)[target]; every target must be a real token id.

    ``workspace``: the tile buffer to reuse (a fresh one when None); ``b_U``: a bias on the logits
    (none when None), added to each tile in the loss's dtype. The loss and its gradients are float32
    (or float64 for float64 inputs) under autocast too: the casts' backward returns the gradients in
    the inputs' dtypes. Under bf16 (or fp16) autocast the matmuls run in that dtype (see the module
    docstring).
    """
    return _apply(h, W_U, b_U, targets, vocab_tile, workspace, per_token=False)


@torch.no_grad()
def token_cross_entropy(
    h: Float[Tensor, "n d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    targets: Int[Tensor, " n"],
    vocab_tile: int = DEFAULT_VOCAB_TILE,
    workspace: Workspace | None = None,
    b_U: Float[Tensor, " d_vocab"] | None = None,
) -> Float[Tensor, " n"]:
    """Each row's -log softmax(h W_U + b_U)[target], for evaluation (no gradients): the very values
    whose sum linear_cross_entropy returns, at no extra cost."""
    return _apply(h, W_U, b_U, targets, vocab_tile, workspace, per_token=True)


def _apply(h: Tensor, W_U: Tensor, b_U: Tensor | None, targets: Tensor, vocab_tile: int, workspace: Workspace | None,
           per_token: bool) -> Tensor:
    # Decided here, not from ctx.needs_input_grad, which stays True under torch.no_grad().
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or W_U.requires_grad or
                                              (b_U is not None and b_U.requires_grad))
    dtype = torch.promote_types(torch.promote_types(h.dtype, W_U.dtype), torch.float32)
    device = h.device.type
    matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else dtype
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(h.to(dtype), W_U.to(dtype), None if b_U is None else b_U.to(dtype), targets,
                                         vocab_tile, needs_grad, workspace or Workspace(), matmul_dtype, per_token)
