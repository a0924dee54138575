"""What a run leaves on disk besides its log, sized to its use.

While a run is unfinished: the whole training state in ``checkpoints/<name>.pt`` (model, AdamW
moments, position in the data, what was measured, RNG states), for --resume. Once it completes:
its final weights alone in ``checkpoints/<name>.safetensors`` (a third of the size), and the full
checkpoint is deleted unless --keep_optimizer asked to keep it, which a run that may be trained
further needs. Under --keep best, the best point's weights (``<name>.best.safetensors``) are part of
that state: the run reads them back when it ends. Both files hold only tensors and plain values: the
full checkpoint is loaded with ``weights_only=True`` and the final weights are safetensors, so
nothing in a file is ever executed. Both are written atomically: a crash or a full disk leaves the
previous file intact.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from run_log import atomic_write
from training.settings import UsageError

CHECKPOINT_FORMAT = 3
FINAL_WEIGHTS_FORMAT = "1"


def write_checkpoint(path: Path, contents: dict) -> None:
    """torch.save of plain values and tensors, serialised in memory first (so a full disk is a plain
    OSError from the write), then written atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **contents}, buffer)
    atomic_write(path, buffer.getvalue())


def read_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint of this script, loaded without executing anything in the file; UsageError (one
    line) for a missing, damaged or foreign file."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"--resume: no checkpoint {path}") from None
    except Exception as err:  # UnpicklingError for foreign objects, RuntimeError for a damaged file, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"refusing checkpoint {path}: not a plain-tensor checkpoint ({reason[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path} is not a format-{CHECKPOINT_FORMAT} checkpoint of this script")
    return ckpt


def write_final_weights(path: Path, weights: dict[str, Tensor], about: dict) -> None:
    """A complete run's weights as safetensors; ``about`` (run name, step, settings) goes into the
    file's metadata as JSON, so the file says what it is without its log."""
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in weights.items()}
    metadata = {"format": FINAL_WEIGHTS_FORMAT, "about": json.dumps(about, sort_keys=True)}
    atomic_write(path, safetensors.torch.save(tensors, metadata=metadata))


def final_weights_step(path: Path) -> int | None:
    """The step a final-weights file says it holds (its metadata), None when it is missing or unreadable."""
    try:
        with safetensors.safe_open(path, framework="pt") as weights:
            return json.loads(weights.metadata()["about"])["step"]
    except Exception:  # missing, damaged or foreign: all mean "not the weights asked for"
        return None


def read_final_weights(checkpoints: Path, name: str) -> dict[str, Tensor]:
    """Run ``name``'s final weights from its checkpoints folder: the safetensors file, or for a run
    completed before those existed, the model in its full checkpoint. ValueError (one line) when
    neither can be read."""
    weights, full = checkpoints / f"{name}.safetensors", checkpoints / f"{name}.pt"
    try:
        if weights.exists() or not full.exists():
            return safetensors.torch.load(weights.read_bytes())
        return torch.load(full, map_location="cpu", weights_only=True)["model"]
    except FileNotFoundError:
        raise ValueError(f"no final weights {weights}") from None
    except Exception as err:  # a damaged or foreign file (safetensors' or torch's own errors)
        raise ValueError(f"cannot read the final weights of {name} in {checkpoints} ({type(err).__name__})") from None


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global generators' states: dropout draws from them, so a resumed run must continue them."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_state(states: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
