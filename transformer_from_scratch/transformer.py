"""The decoder-only transformer: embed, add positions, n_layers pre-LN blocks, unembed.

Initialisation (``init_weights``) is part of the experiment, so it is spelled out here:
    preset "reference" (the study):  MLP W_in and W_gate Kaiming-normal (std sqrt(2 / d_model)), W_out
        Xavier-normal (std sqrt(2 / (d_hidden + d_model))), MLP biases zero; W_E, W_U, W_Q, W_K,
        W_V, W_O ~ N(0, 0.02); LayerNorm weight 1, bias 0.
    preset "gpt2": GPT-2's scheme: every matrix ~ N(0, 0.02), the two residual-writing projections
        (W_O, W_out) scaled by 1/sqrt(2 n_layers), biases zero, LayerNorm weight 1, bias 0.
    mlp_init "variance_matched": W_out's std is scaled per activation so that the MLP's output
        variance at init equals that of a relu MLP of width d_mlp under the preset's scheme. The
        activation then changes the nonlinearity, not the size of the random signal the MLP adds to
        the residual stream at step 0 (relu2's is 6x relu's under the standard scheme).
Each parameter draws from its own generator seeded by (seed, parameter name), so for one seed two
models that differ only in their MLP activation start with identical weights everywhere else.
"""

from __future__ import annotations

import functools
import math
import zlib

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from .activations import second_moment
from .config import TransformerConfig
from .dropout import make_dropout
from .embed import Embed
from .layer import TransformerBlock
from .layer_norm import LayerNorm
from .loss import Workspace, linear_cross_entropy, token_cross_entropy
from .pos_embed import make_pos_embed
from .unembed import TiedUnembed, Unembed

IGNORE_INDEX = -100  # target value of positions that carry no loss (padding)


def derived_generator(seed: int, purpose: str) -> torch.Generator:
    """A generator that depends only on the seed and a purpose string, stable across runs.

    Hashed into 32 bits on purpose: PyTorch's CPU generator keeps only the low 32 bits of a seed,
    so arithmetic such as ``seed * 2**32 + x`` would silently give every seed the same stream.
    """
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{purpose}".encode()))


def preset_std(cfg: TransformerConfig, leaf: str, shape: tuple[int, ...]) -> float:
    """The preset's init std of a weight matrix (``leaf``: its name, e.g. "W_out")."""
    if cfg.preset == "gpt2":
        scale = 1 / math.sqrt(2 * cfg.n_layers) if leaf in ("W_O", "W_out") else 1.0
        return 0.02 * scale
    if leaf in ("W_in", "W_gate"):
        return math.sqrt(2.0 / shape[0])  # Kaiming normal, fan_in = d_model, ReLU gain
    if leaf == "W_out":
        return math.sqrt(2.0 / (shape[0] + shape[1]))  # Xavier normal
    return 0.02


@functools.lru_cache(maxsize=None)
def variance_matched_gain(cfg: TransformerConfig) -> float:
    """The factor on W_out's std that gives this MLP relu's output variance at init (width d_mlp).

    The MLP reads LayerNorm output (unit variance per token), so a hidden pre-activation is
    N(0, d_model * std(W_in)^2) and the output variance is d_hidden * E[act(h)^2] * std(W_out)^2.
    """
    pre_var = cfg.d_model * preset_std(cfg, "W_in", (cfg.d_model, cfg.d_hidden)) ** 2
    reference = cfg.d_mlp * second_moment("relu", pre_var) * preset_std(cfg, "W_out", (cfg.d_mlp, cfg.d_model)) ** 2
    this = cfg.d_hidden * second_moment(cfg.act_fn, pre_var) * preset_std(cfg, "W_out", (cfg.d_hidden, cfg.d_model)) ** 2
    return math.sqrt(reference / this)


def init_std(cfg: TransformerConfig, name: str, param: Tensor) -> float | None:
    """Standard deviation of the normal a parameter is drawn from; None for constant init."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf.startswith("b_") or leaf in ("w", "b"):
        return None  # biases zero, LayerNorm weight one (set by the constructors)
    std = preset_std(cfg, leaf, tuple(param.shape))
    if leaf == "W_out" and cfg.mlp_init == "variance_matched":
        return std * variance_matched_gain(cfg)
    return std


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = make_pos_embed(cfg)
        self.embed_dropout = make_dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg) if cfg.final_ln else nn.Identity()
        self.unembed_dropout = make_dropout(cfg.unembed_dropout)
        self.unembed = TiedUnembed(self.embed, cfg) if cfg.tie_embeddings else Unembed(cfg)
        self.loss_workspace = Workspace()  # the fused loss's tile buffer, reused from step to step
        self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        for name, param in self.named_parameters():
            std = init_std(self.cfg, name, param)
            if std is None:
                continue
            values = torch.randn(param.shape, generator=derived_generator(seed, name)) * std
            param.copy_(values)

    @torch.no_grad()
    def init_unembed_bias(self, log_unigram: Float[Tensor, " d_vocab"]) -> None:
        """Start the output bias (unembed_bias "log_unigram") at the log of the training targets'
        add-k unigram: its initialisation depends on the data, so the training script supplies it."""
        if self.unembed.b_U is None:
            raise ValueError("this model has no output bias (unembed_bias 'none')")
        self.unembed.b_U.copy_(log_unigram)

    def residual(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream after the last block (and the final LayerNorm, where there is one),
        as the unembedding reads it (so with unembed_dropout while training)."""
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds n_ctx={self.cfg.n_ctx}")
        resid = self.embed_dropout(self.embed(tokens) + self.pos_embed(tokens))
        for block in self.blocks:
            resid = block(resid)
        return self.unembed_dropout(self.ln_final(resid))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        return self.unembed(self.residual(tokens))

    @torch.no_grad()
    def run_with_cache(self, tokens: Int[Tensor, "batch pos"]) -> tuple[Tensor, dict[str, Tensor]]:
        """(logits, cache): every hook point's output in one forward pass, by module name
        (``blocks.0.mlp.hook_pre``, ``blocks.0.mlp.hook_post``, ``blocks.0.attn.hook_pattern``, ...),
        as TransformerLens's ``run_with_cache`` gives them. The hooks are removed afterwards."""
        cache: dict[str, Tensor] = {}
        handles = [module.register_forward_hook(lambda _m, _i, out, name=name: cache.__setitem__(name, out.detach()))
                   for name, module in self.named_modules() if name.rsplit(".", 1)[-1].startswith("hook_")]
        try:
            logits = self(tokens)
        finally:
            for handle in handles:
                handle.remove()
        return logits, cache

    @torch.no_grad()
    def generate(
        self,
        tokens: Int[Tensor, "batch pos"],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Int[Tensor, "batch pos_and_new"]:
        """``tokens`` continued by ``max_new_tokens``: greedy (argmax) at temperature 0, else drawn
        from softmax(logits / temperature) over the ``top_k`` likeliest tokens (all when None) with
        ``generator`` (a CPU generator: the same draws on every device). The model sees at most the
        last n_ctx tokens, as in training."""
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            last = self.residual(tokens[:, -self.cfg.n_ctx :])[:, -1:]
            logits = self.unembed(last)[:, -1]
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits.float().cpu() / temperature
                if top_k is not None:
                    kth_largest = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth_largest, float("-inf"))
                next_token = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).to(tokens.device)
            tokens = torch.cat([tokens, next_token], dim=1)
        self.train(was_training)
        return tokens

    def nll_sum(
        self, tokens: Int[Tensor, "batch pos"], targets: Int[Tensor, "batch pos"], fused: bool = True
    ) -> Float[Tensor, ""]:
        """Summed next-token NLL (nats) over the positions whose target is not IGNORE_INDEX.

        fused=True unembeds only the scored positions, in vocabulary tiles, without full-size logits
        (see loss.py; the fast path on CPU); fused=False is the textbook path (the default on GPUs).
        Both give the same loss and gradients, and compute the cross-entropy in float32 under autocast.
        """
        resid = self.residual(tokens)
        if not fused:
            logits = self.unembed(resid)
            return F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
        scored = targets != IGNORE_INDEX
        return linear_cross_entropy(resid[scored], self.unembed.W_U, targets[scored], workspace=self.loss_workspace,
                                    b_U=self.unembed.b_U)

    @torch.no_grad()
    def token_nll(
        self, tokens: Int[Tensor, "batch pos"], targets: Int[Tensor, "batch pos"], fused: bool = True
    ) -> Float[Tensor, " n_scored"]:
        """The next-token NLL (nats) of each scored target, in row-major order of ``targets`` (for
        evaluation: where the loss goes, and interpolation with an n-gram model). With fused=True
        their float32 sum is bit for bit nll_sum's."""
        resid = self.residual(tokens)
        scored = targets != IGNORE_INDEX
        if not fused:
            logits = self.unembed(resid)
            return F.cross_entropy(logits[scored].float(), targets[scored], reduction="none")
        return token_cross_entropy(resid[scored], self.unembed.W_U, targets[scored], workspace=self.loss_workspace,
                                   b_U=self.unembed.b_U)


def parameter_counts(model: Transformer) -> dict[str, int]:
    """total; non_embedding (total less W_E, W_pos, W_U and the output bias b_U, as in Kaplan et al.
    2020); mlp."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(
        p.numel() for name, p in model.named_parameters() if name.split(".")[-1] in ("W_E", "W_pos", "W_U", "b_U")
    )
    mlp = sum(p.numel() for block in model.blocks for p in block.mlp.parameters())
    return {"total": total, "non_embedding": total - embedding, "mlp": mlp}


def parameter_groups(model: Transformer) -> dict[str, list[nn.Parameter]]:
    """Every parameter once, grouped by where it acts: ``embed``, ``block<i>.attn`` (with its
    LayerNorm), ``block<i>.mlp`` (with its LayerNorm), ``unembed`` (with the final LayerNorm)."""
    groups = {"embed": [*model.embed.parameters(), *model.pos_embed.parameters()]}
    for i, block in enumerate(model.blocks):
        groups[f"block{i}.attn"] = [*block.ln1.parameters(), *block.attn.parameters()]
        groups[f"block{i}.mlp"] = [*block.ln2.parameters(), *block.mlp.parameters()]
    groups["unembed"] = [*model.ln_final.parameters(), *model.unembed.parameters()]
    return groups


def training_flops_per_token(cfg: TransformerConfig) -> int:
    """Matmul FLOPs to train on one token: forward plus backward (twice the forward), 2 FLOPs per
    multiply-add, as in Kaplan et al. 2020 (arXiv:2001.08361) with attention over a full context.

        forward = 2 * (n_layers * (4 d_model^2 + n_mlp_matrices * d_model * d_hidden) + d_model * d_vocab)
                + n_layers * 4 * d_model * n_ctx        (q k^T and pattern v)
        training = 3 * forward

    Embedding lookups, LayerNorms, activations and the softmax are not matmuls and are left out. A
    gated MLP has three matrices, so an unmatched one costs 1.5x the MLP FLOPs.
    """
    n_mlp_matrices = 3 if cfg.gated else 2
    matmul_weights = cfg.n_layers * (4 * cfg.d_model**2 + n_mlp_matrices * cfg.d_model * cfg.d_hidden)
    matmul_weights += cfg.d_model * cfg.d_vocab
    forward = 2 * matmul_weights + cfg.n_layers * 4 * cfg.d_model * cfg.n_ctx
    return 3 * forward
