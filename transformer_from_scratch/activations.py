"""The activation registry: the research variable of the whole toolkit.

Each entry names an MLP nonlinearity. Names shared with Hugging Face's ``ACT2FN`` mean the same
function there, so one string configures both models in a test. Gated entries are the GLU family
(Shazeer 2020, "GLU Variants Improve Transformer", arXiv:2002.05202): the MLP computes
``act(x W_gate) * (x W_in)`` and so has a third weight matrix.

Adding an activation is one entry in ``ACTIVATIONS``; nothing else changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def relu_squared(x: Tensor) -> Tensor:
    """Squared ReLU (So et al. 2021, "Primer", arXiv:2109.08668); HF's ``relu2``."""
    return F.relu(x).square()


def leaky_relu_squared(x: Tensor, negative_slope: float) -> Tensor:
    """Squared LeakyReLU: relu2 that keeps a gradient for negative inputs; reported by small-model
    speedruns (modded-nanogpt, 2025) as a small gain over relu2."""
    return F.leaky_relu(x, negative_slope).square()


def identity(x: Tensor) -> Tensor:
    """No nonlinearity: the gate of the ``bilinear`` GLU variant."""
    return x


def positive(pre: Tensor) -> Tensor:
    """A unit is "active" where its (gate) pre-activation is positive.

    For ReLU-family functions that is exactly where the output is non-zero; for GELU and SiLU it is
    where the function passes more than half of its input (act(x) > x/2); for the sigmoid gate it is
    where the gate is more than half open. One rule for all keeps dead-unit fractions comparable.
    """
    return pre > 0


def nonzero(pre: Tensor) -> Tensor:
    """For the linear gate of ``bilinear`` there is no inactive region: active means non-zero."""
    return pre != 0


@dataclass(frozen=True)
class Activation:
    """One MLP nonlinearity: the function, whether it gates, and what "active" means for it."""

    fn: Callable[[Tensor], Tensor]
    gated: bool = False
    is_active: Callable[[Tensor], Tensor] = positive


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(F.relu),
    "gelu": Activation(F.gelu),  # exact, erf form
    "gelu_tanh": Activation(partial(F.gelu, approximate="tanh")),  # GPT-2's form (HF: gelu_new)
    "silu": Activation(F.silu),
    "relu2": Activation(relu_squared),
    "leaky_relu2": Activation(partial(leaky_relu_squared, negative_slope=0.5)),  # alpha: the registry's parameter
    "glu": Activation(torch.sigmoid, gated=True),  # the original GLU (Dauphin et al. 2017)
    "bilinear": Activation(identity, gated=True, is_active=nonzero),
    "reglu": Activation(F.relu, gated=True),
    "geglu": Activation(F.gelu, gated=True),
    "swiglu": Activation(F.silu, gated=True),
}

# Other spellings of the same function. A run logs the canonical name, so "swish" and "silu" runs
# are grouped together by the analysis.
ALIASES: dict[str, str] = {"swish": "silu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def second_moment(name: str, pre_var: float) -> float:
    """E[act(h)^2] for pre-activations h ~ N(0, pre_var), by quadrature; for a gated activation
    E[act(g)^2] E[h^2] with gate g and input h independent N(0, pre_var), as they are at init.

    The MLP's output variance at init is d_hidden * this * Var(W_out): what variance-matched init
    equalises. A fine trapezoid over +-12 std in float64: exact to ~1e-6 also at relu's kink.
    """
    std = math.sqrt(pre_var)
    h = torch.linspace(-12 * std, 12 * std, 200_001, dtype=torch.float64)
    density = torch.exp(-h.square() / (2 * pre_var)) / math.sqrt(2 * math.pi * pre_var)
    act = ACTIVATIONS[name]
    moment = float(torch.trapezoid(act.fn(h).square() * density, h))
    return moment * pre_var if act.gated else moment


def canonical_activation(name: str) -> str:
    """Resolve an alias; raise a ValueError listing every valid name for an unknown one."""
    name = ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {activation_names()}")
    return name


def activation_names() -> list[str]:
    """Every accepted name, canonical and alias, sorted."""
    return sorted([*ACTIVATIONS, *ALIASES])
