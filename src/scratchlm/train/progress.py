"""What a person watching a run sees: the live bar, metrics.jsonl, MFU, and optional TensorBoard / W&B.

Only rank 0 reports. The bar shows step, loss, LR, tokens/s, MFU (when the device's peak is known) and tqdm's
ETA to --max-steps. `metrics.jsonl` gets one JSON object per log interval, eval, sample and guard event: the
record a plot or a comparison reads back (`"kind"` is `train`, `eval`, `sample` or `event`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from scratchlm.fs import atomic_write_text

# Dense peak FLOP/s by device name fragment and precision, from the vendors' data sheets (no sparsity).
_PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("A10G", {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12}),
    ("RTX 4090", {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12}),
    ("RTX 3090", {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
]


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak dense FLOP/s of this device at this precision, or None when unknown (CPU, MPS, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, table in _PEAK_FLOPS:
        if fragment in name:
            return table.get(precision)
    return None


def flops_per_token(n_params: int, n_layer: int, d_model: int, context_length: int) -> float:
    """Training FLOPs per token: 6N for the matmuls with the weights (forward 2N, backward 4N) plus
    12 * L * C * T for attention scores and mixing (PaLM appendix B, as nanoGPT's estimate_mfu)."""
    return 6.0 * n_params + 12.0 * n_layer * d_model * context_length


class MetricsLog:
    """Append-only `metrics.jsonl` (rank 0). On resume it is rewritten to the checkpoint's history first, so
    steps after the checkpoint (which the resumed run redoes) are not listed twice."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        self.records: list[dict[str, Any]] = []

    def reset(self, records: list[dict[str, Any]]) -> None:
        self.records = [dict(r) for r in records]
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records), "metrics file")

    def append(self, record: dict[str, Any]) -> None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class Bar:
    """tqdm over optimizer steps, or nothing (other ranks, --no-progress)."""

    def __init__(self, total: int | None, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int, postfix: dict[str, str] | None = None) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            from scratchlm.train.distributed import print0

            print0(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ExternalLoggers:
    """TensorBoard and Weights & Biases, each only when asked for; a missing package is a one-line error."""

    def __init__(self, out: Path, tensorboard: bool, wandb: bool, config: dict[str, Any], enabled: bool) -> None:
        from scratchlm.errors import ScratchlmError

        self.tb = self.wandb = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ScratchlmError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(out / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ScratchlmError("--wandb needs the wandb package: pip install wandb (then wandb login)") from None
            self.wandb = wandb_module.init(project="scratchlm", name=out.name, config=config, dir=str(out))

    def log(self, step: int, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
