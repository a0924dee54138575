"""The toolkit's names, without torch: every activation (its place in the display order, whether it
gates) and the named model sizes. The model, the study-file check, the figures and the report all
read these tables, so the analysis can name things without loading the model.

Adding an activation is one entry in ``ACTIVATION_TABLE`` here plus its function in activations.py's
``FUNCTIONS`` (a check at import time refuses one without the other); its colour in every figure
follows from its place in the table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActivationInfo:
    """What the toolkit needs to know about an activation besides its function."""

    gated: bool = False  # the GLU family: act(x W_gate) * (x W_in), a third weight matrix


# In display order (figures and tables list activations in this order, and colour them by it).
ACTIVATION_TABLE: dict[str, ActivationInfo] = {
    "relu": ActivationInfo(),
    "gelu": ActivationInfo(),  # exact, erf form
    "gelu_tanh": ActivationInfo(),  # GPT-2's form (HF: gelu_new)
    "silu": ActivationInfo(),
    "relu2": ActivationInfo(),
    "leaky_relu2": ActivationInfo(),
    "glu": ActivationInfo(gated=True),  # the original GLU (Dauphin et al. 2017)
    "bilinear": ActivationInfo(gated=True),
    "reglu": ActivationInfo(gated=True),
    "geglu": ActivationInfo(gated=True),
    "swiglu": ActivationInfo(gated=True),
}

# Other spellings of the same function. A run logs the canonical name, so "swish" and "silu" runs
# are grouped together by the analysis.
ALIASES: dict[str, str] = {"swish": "silu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def canonical_activation(name: str) -> str:
    """Resolve an alias; raise a ValueError listing every valid name for an unknown one."""
    name = ALIASES.get(name, name)
    if name not in ACTIVATION_TABLE:
        raise ValueError(f"unknown activation {name!r}; choose one of {activation_names()}")
    return name


def activation_names() -> list[str]:
    """Every accepted name, canonical and alias, sorted."""
    return sorted([*ACTIVATION_TABLE, *ALIASES])


def is_gated(name: str) -> bool:
    return ACTIVATION_TABLE[canonical_activation(name)].gated


def is_matched(act_fn: str, match_params: bool) -> bool:
    """Whether an MLP is parameter-matched (2/3 as wide): a gated activation asked to match. The one
    definition the model's width, run names and the analysis's variant names all read; an ungated
    activation ignores the flag, and an activation this version does not know is not matched."""
    info = ACTIVATION_TABLE.get(ALIASES.get(act_fn, act_fn))
    return bool(match_params) and info is not None and info.gated


def variant_name(act_fn: str, match_params: bool) -> str:
    """How tables, figures and study files name an MLP: "swiglu (matched)", "relu"."""
    return f"{act_fn} (matched)" if is_matched(act_fn, match_params) else act_fn


def run_name(act_fn: str, match_params: bool, seed: int, lr: float | None = None,
             weight_decay: float | None = None) -> str:
    """activation[_matched][_lr<lr>][_wd<weight decay>]_seed<seed>: a run's log name, wherever it is
    built (train_simple.py, study.py, reproduce.sh); an lr or weight decay appears where runs differ
    in it, as Python's ``:g`` writes it (0.0003, 0.00310618: six significant digits)."""
    swept = "".join(f"_{key}{value:g}" for key, value in (("lr", lr), ("wd", weight_decay)) if value is not None)
    return f"{act_fn}{'_matched' if is_matched(act_fn, match_params) else ''}{swept}_seed{seed}"


def display_rank(name: str) -> int:
    """An activation's place in the display order (after every known one if it is unknown)."""
    order = list(ACTIVATION_TABLE)
    return order.index(name) if name in order else len(order)


# Named model sizes, so that nobody copies dimensions by hand. Parameters (relu, 50,257 types, untied),
# time per 100 steps and the loss a 200-step run reaches are in the README, measured.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 64, "n_heads": 2, "n_layers": 2, "d_mlp": 256},  # the quick run's
    "small": {"d_model": 128, "n_heads": 4, "n_layers": 2, "d_mlp": 512},
    "reference": {"d_model": 256, "n_heads": 4, "n_layers": 2, "d_mlp": 1024},  # the reference study's model
}


def describe_size(name: str) -> str:
    return ", ".join(f"{key} {value}" for key, value in SIZES[name].items())


def size_name(model_config: dict) -> str | None:
    """The named size whose four dimensions a model has (as a log's model_config records them), or None."""
    return next((name for name, dims in SIZES.items()
                 if all(model_config.get(key) == value for key, value in dims.items())), None)


def describe_model_size(model_config: dict) -> str:
    """"size tiny (d_model 64, 2 heads, 2 layers, d_mlp 256)", or the dimensions alone where they are no
    named size: what a report says a model is, so a small model is never called the reference one."""
    cfg = model_config
    dims = f"d_model {cfg['d_model']}, {cfg['n_heads']} heads, {cfg['n_layers']} layers, d_mlp {cfg['d_mlp']}"
    name = size_name(cfg)
    return f"size {name} ({dims})" if name else dims
