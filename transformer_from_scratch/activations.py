"""The activation registry: the research variable of the whole toolkit.

Each entry names an MLP nonlinearity. Names shared with Hugging Face's ``ACT2FN`` mean the same
function there, so one string configures both models in a test. Gated entries are the GLU family
(Shazeer 2020, "GLU Variants Improve Transformer", arXiv:2002.05202): the MLP computes
``act(x W_gate) * (x W_in)`` and so has a third weight matrix.

Adding an activation is one entry in catalog.py's ``ACTIVATION_TABLE`` (its name, whether it gates; its
place there fixes its colour in every figure) plus its function in ``FUNCTIONS`` here; nothing else changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .catalog import ACTIVATION_TABLE, ALIASES, activation_names, canonical_activation  # noqa: F401 (re-exported)


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


# The function of each entry of catalog.ACTIVATION_TABLE (which says whether it gates), in its order.
FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact, erf form
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GPT-2's form (HF: gelu_new)
    "silu": F.silu,
    "relu2": relu_squared,
    "leaky_relu2": partial(leaky_relu_squared, negative_slope=0.5),  # alpha: the registry's parameter
    "glu": torch.sigmoid,  # the original GLU (Dauphin et al. 2017): a sigmoid gate
    "bilinear": identity,
    "reglu": F.relu,
    "geglu": F.gelu,
    "swiglu": F.silu,
}
IS_ACTIVE = {"bilinear": nonzero}  # what "active" means, where it is not a positive pre-activation
if FUNCTIONS.keys() != ACTIVATION_TABLE.keys():
    unpaired = sorted(FUNCTIONS.keys() ^ ACTIVATION_TABLE.keys())
    raise ImportError(f"activations without a function or a catalog entry: {unpaired}")


def activation(name: str) -> Activation:
    """The activation named (canonically) ``name``: its function, whether it gates, what "active" means."""
    if name not in FUNCTIONS:
        raise ValueError(f"activation {name!r} is in catalog.ACTIVATION_TABLE but has no function in "
                         "activations.FUNCTIONS")
    return Activation(FUNCTIONS[name], ACTIVATION_TABLE[name].gated, IS_ACTIVE.get(name, positive))


class _Registry(Mapping):
    """ACTIVATIONS: name -> Activation, read through the catalog's table at every lookup, so an entry
    added to both tables (also at run time, as a test does) is an activation everywhere."""

    def __getitem__(self, name: str) -> Activation:
        if name not in ACTIVATION_TABLE:
            raise KeyError(name)
        return activation(name)

    def __iter__(self):
        return iter(ACTIVATION_TABLE)

    def __len__(self) -> int:
        return len(ACTIVATION_TABLE)


ACTIVATIONS: Mapping[str, Activation] = _Registry()


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
