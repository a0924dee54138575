"""The machine a run executes on: device, loss kernel, allocator, CPU facts and the code's git state.
None of these change what a run computes; the log records them under ``run``."""

from __future__ import annotations

import ctypes
import datetime
import os
import platform
from pathlib import Path

import torch

from preregistration import git_state
from training.distributed import Distributed
from training.settings import UsageError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise UsageError(f"device {name!r} is not available on this machine")
    return torch.device(name)


def enable_tf32(device: torch.device) -> str:
    """On CUDA, float32 matmuls and convolutions use TF32 tensor cores (10-bit mantissa inputs, fp32
    accumulation: PyTorch's "high" precision), several times faster on Ampere and later; the log records
    it (run.float32_matmul). CPUs keep full fp32 ("highest")."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    return torch.get_float32_matmul_precision()


def keep_freed_memory() -> str:
    """Ask glibc to keep freed memory for reuse rather than hand it back to the OS; says what it did.

    A step frees and reallocates the same ~100 MB of gradients. By default glibc unmaps blocks over
    32 MB and trims its heap, so every step page-faults them in again; keeping them measured 8-11%
    more training tokens/s on a 2-core CPU, with no higher peak memory. Equivalent to setting
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ to 2**31 - 1. Elsewhere (no glibc) a no-op.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default"
    m_trim_threshold, m_mmap_threshold, most = -1, -3, 2**31 - 1
    kept = libc.mallopt(m_trim_threshold, most) and libc.mallopt(m_mmap_threshold, most)
    return "glibc, freed memory kept" if kept else "default"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo, or None (not Linux, or no such field)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 matmuls run about
    twice as fast as fp32; without it they are emulated and far slower."""
    return bool({"avx512_bf16", "amx_bf16"} & set((cpuinfo("flags") or "").split()))


def cpu_model() -> str:
    """The processor's name (e.g. "AMD EPYC ..."): speed figures mean nothing without it."""
    return cpuinfo("model name") or platform.processor() or "unknown"


NUMERIC_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the CPU features that change kernels


def cpu_class() -> str:
    """Which processor exactly: "AMD EPYC" names two generations, family/model/stepping tell them apart."""
    ids = [f"{field} {cpuinfo(name)}" for field, name in (("family", "cpu family"), ("model", "model"),
                                                         ("stepping", "stepping")) if cpuinfo(name) is not None]
    return ", ".join(ids) or platform.machine()


def torch_build() -> str:
    """The torch build's kernels: its CPU capability (the vector ISA its kernels use) and CUDA version."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{torch.__version__}, CPU kernels {capability}, CUDA {torch.version.cuda or 'none'}"


def run_facts(command: list[str], device: torch.device, ddp: Distributed) -> dict:
    """What a log records about where and how it ran (threads are read when the log is written): the
    code (git), the versions, and the machine exactly enough to tell two CPU classes apart."""
    return {"command": command, **git_state(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_build": torch_build(),
            "transformers": __import__("transformers").__version__, "platform": platform.platform(),
            "cpu": cpu_model(), "cpu_class": cpu_class(),
            "cpu_flags": [f for f in NUMERIC_FLAGS if f in (cpuinfo("flags") or "").split()],
            "cpu_count": os.cpu_count(), "device": str(device), "allocator": keep_freed_memory(), "world_size": ddp.world}
