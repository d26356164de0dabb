"""Which torch device a `--device` flag means: shared by training, generation, evaluation and serving."""

from __future__ import annotations

import torch

from scratchlm.errors import ScratchlmError


def resolve_device(flag: str, local_rank: int = 0) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is not there is a one-line error."""
    if flag == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = flag.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ScratchlmError(f"--device {flag}: CUDA is not available on this machine; use --device cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ScratchlmError(f"--device {flag}: MPS is not available on this machine; use --device cpu or auto")
    if flag == "cuda":
        return torch.device("cuda", local_rank)
    try:
        return torch.device(flag)
    except RuntimeError:
        raise ScratchlmError(f"unknown device {flag!r}; use cpu, cuda, cuda:N, mps or auto") from None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo).

    Without it bf16 autocast runs through conversions and is no faster than fp32, so `--precision auto` keeps
    fp32 there. Linux only; elsewhere False."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
