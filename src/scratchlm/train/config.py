"""`TrainConfig`: every setting of the one training loop, one field per flag.

Shared by `scratchlm pretrain` and every `scratchlm finetune ...` command: the field name is the YAML key, the
`config.json` key (section `train`) and, kebab-cased, the flag (`max_steps` -> `--max-steps`). Settings the loop
derives (gradient accumulation, the device actually used) are computed in `train/loop.py`, not stored here, so
they cannot disagree with the fields they come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from scratchlm.errors import ConfigError

SCHEDULES = ("cosine", "linear", "wsd", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
OPTIMIZERS = ("adamw", "muon")
PARALLEL = ("ddp", "zero1", "zero2", "fsdp", "hsdp")
PP_SCHEDULES = ("gpipe", "1f1b")
MAX_LR = 1.0
"""Larger AdamW learning rates are typos (1e6 for 1e-6): refused with a pointer to typical values."""


@dataclass
class TrainConfig:
    """Train a model: batches, optimizer, schedule, precision, evaluation, checkpoints, progress."""

    # ---- run folder, resume, reproducibility
    out: Path = Path("runs/run")
    """Run folder: step_NNNNNN/ checkpoints, `latest`, metrics.jsonl, loss.png, config.yaml (resolved settings)."""
    resume: str | None = None
    """`auto` (newest checkpoint in --out if any, else start fresh) or a checkpoint/run folder path."""
    seed: int = 1337
    """Seed for weights, data order, dropout and samples."""
    device: str = "auto"
    """auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps. Under torchrun each rank takes cuda:LOCAL_RANK."""

    # ---- batch and length of the run
    micro_batch_size: int = 12
    """Sequences per forward/backward pass on one process."""
    global_batch_tokens: int | None = None
    """Tokens per optimizer step over all processes and accumulation steps; None = one micro-batch per process.
    Gradient accumulation = global_batch_tokens / (micro_batch_size * context_length * world_size)."""
    max_steps: int | None = 2000
    """Stop after this many optimizer steps (None: no step limit)."""
    max_tokens: int | None = None
    """Stop once this many training tokens have been seen (None: no token limit)."""
    max_minutes: float | None = None
    """Stop (saving a checkpoint) after this much training wall time; the LR schedule still follows --max-steps."""

    # ---- optimizer (AdamW; weight decay only on matrices) and LR schedule
    lr: float = 1e-3
    """Peak learning rate, reached at the end of warm-up."""
    min_lr: float = 1e-4
    """Learning rate at the end of the decay."""
    schedule: str = "cosine"
    """After warm-up: cosine, linear, wsd (warmup-stable-decay) or constant decay to --min-lr at --max-steps."""
    warmup_steps: int = 100
    """Linear warm-up steps from 0 to --lr."""
    decay_fraction: float = 0.2
    """wsd only: the last fraction of --max-steps spent decaying linearly to --min-lr."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices (2-D+ weights) only, never to biases, norms or gains."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    optimizer: str = "adamw"
    """adamw, or muon: Muon (torch.optim.Muon, torch >= 2.9) for the 2-D weights inside the blocks, AdamW (--lr)
    for embeddings, the head, norms and biases."""
    muon_lr: float = 0.02
    """Muon's peak learning rate (its groups follow the same warm-up and decay, scaled by --muon-lr / --lr)."""
    muon_momentum: float = 0.95
    """Muon's (Nesterov) momentum."""

    # ---- speed and memory
    precision: str = "auto"
    """fp32, bf16 (autocast), fp16 (autocast + grad scaler) or auto (bf16 on CUDA GPUs and CPUs with hardware bf16,
    AVX512-BF16 or AMX; else fp32)."""
    compile: bool = False
    """torch.compile the model (worth it on GPUs; off by default because compiling costs minutes on CPU)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, about a third more compute."""
    parallel: str = "ddp"
    """Data parallelism under torchrun: ddp (replicas, gradients all-reduced), zero1 (ddp + optimizer state
    sharded), zero2 (fully_shard, parameters kept gathered between forward and backward), fsdp (fully_shard per
    block and at the root, parameters resharded after forward = ZeRO-3), hsdp (fsdp inside groups of --dp-shard
    processes, replicated across groups). One process: no effect. See docs/train.md, Multiple processes."""
    dp_shard: int | None = None
    """hsdp only: processes per sharding group (the world size must be a multiple of it)."""
    tp: int = 1
    """Tensor parallelism: split each block's attention heads and MLP over this many processes (Megatron layout,
    DTensor). The world size must be --pp x data-parallel x --tp; tp ranks are neighbours (one node)."""
    pp: int = 1
    """Pipeline parallelism: split the blocks into this many stages, one per process group (pretraining only;
    the embedding goes to the first stage, final norm, head and loss to the last)."""
    pp_schedule: str = "1f1b"
    """Pipeline schedule: gpipe (all forwards, then all backwards) or 1f1b (one forward, one backward: fewer
    micro-batches' activations held at once)."""
    pp_microbatches: int | None = None
    """Pipeline micro-batches per --micro-batch-size batch (it must divide it); default --pp."""
    onednn: bool | None = None
    """CPU fp32 linear layers through oneDNN's GEMMs (true) or `F.linear` (false); unset: $SCRATCHLM_ONEDNN
    decides (default on). Process-wide; see docs/model.md, Speed."""
    retain_host_memory: bool = True
    """On CPU: keep freed memory in the process for the next step (glibc's malloc told not to hand large blocks
    back to the kernel), so steps stop paying page faults on their large tensors; resident memory then stays at
    its peak. Process-wide; Linux with glibc only. See docs/model.md, Speed."""

    # ---- evaluation, checkpoints, progress
    eval_every: int = 250
    """Evaluate (val loss, perplexity, eval tasks) every N steps and at the end (0: only at the end)."""
    eval_batches: int = 20
    """Validation micro-batches per evaluation (0: the whole validation split)."""
    eval_tasks: tuple[str, ...] = ()
    """Periodic evaluation tasks run with val (see docs/eval.md); empty = none."""
    save_every: int = 1000
    """Save a checkpoint every N steps (0: only at the end); one is always saved at the end and on Ctrl-C."""
    keep_last: int = 3
    """Keep the newest K step folders (0 keeps all)."""
    log_every: int = 10
    """Refresh the progress bar and append to metrics.jsonl every N steps."""
    sample_every: int = 0
    """Log a few generated lines every N steps (0: only at the end of pretraining)."""
    sample_prompt: str = "\n"
    """Prompt for the periodic samples."""
    sample_tokens: int = 200
    """Tokens generated per sample."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard package) in --out/tensorboard."""
    wandb: bool = False
    """Also log to Weights & Biases (needs wandb and a login)."""
    progress: bool = True
    """Show the live progress bar (metrics.jsonl is written either way)."""

    # ---- loss-spike guard
    spike_window: int = 50
    """Moving window (steps) of loss and grad-norm statistics for the spike guard (0 disables the guard, except
    that non-finite steps are skipped). A window of rejected steps in a row (50 when 0) stops the run with an
    error: it has diverged."""
    spike_zscore: float = 6.0
    """A step whose loss or grad norm is this many standard deviations above the window mean is skipped."""
    spike_patience: int = 3
    """This many spikes within one window roll back to the last good checkpoint."""
    spike_lr_factor: float = 0.5
    """After a rollback the learning rate is multiplied by this factor."""
    spike_lr_floor: float = 0.01
    """Rollbacks never lower the learning rate below this fraction of its schedule; at the floor, spikes are only
    skipped (a run that reaches it ends with a warning: its batches may be too small and noisy for the guard)."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule {self.schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
        if self.device.split(":")[0] not in DEVICES:
            raise ConfigError(f"--device {self.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps")
        if self.micro_batch_size < 1:
            raise ConfigError(f"--micro-batch-size must be at least 1, got {self.micro_batch_size}")
        if self.global_batch_tokens is not None and self.global_batch_tokens < 1:
            raise ConfigError(f"--global-batch-tokens must be positive, got {self.global_batch_tokens}")
        if self.max_steps is None and self.max_tokens is None and self.max_minutes is None:
            raise ConfigError("the run has no end: set --max-steps, --max-tokens or --max-minutes")
        for name in ("max_steps", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        self._check_numbers()
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"--min-lr {self.min_lr} must lie between 0 and --lr {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"--decay-fraction must lie in (0, 1], got {self.decay_fraction}")
        for name in ("eval_every", "eval_batches", "save_every", "keep_last", "sample_every", "spike_window"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"--parallel {self.parallel!r} is unknown; use one of {', '.join(PARALLEL)}")
        if self.dp_shard is not None and (self.parallel != "hsdp" or self.dp_shard < 1):
            raise ConfigError(f"--dp-shard {self.dp_shard} needs --parallel hsdp and a value of at least 1; "
                              "drop --dp-shard or pass --parallel hsdp")
        if self.parallel == "hsdp" and self.dp_shard is None:
            raise ConfigError("--parallel hsdp needs --dp-shard N (processes per sharding group)")
        self._check_model_parallel()
        if self.log_every < 1:
            raise ConfigError(f"--log-every must be at least 1, got {self.log_every}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}")
        if self.optimizer == "muon" and self.parallel != "ddp":
            raise ConfigError(f"--optimizer muon works with --parallel ddp only (torch.optim.Muon orthogonalises "
                              f"whole 2-D gradients, which --parallel {self.parallel} shards); use --parallel ddp "
                              "or --optimizer adamw")
        if self.resume is not None and self.resume == "":
            raise ConfigError("--resume needs `auto` or a checkpoint path")

    def _check_model_parallel(self) -> None:
        for name in ("tp", "pp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.pp_schedule not in PP_SCHEDULES:
            raise ConfigError(f"--pp-schedule {self.pp_schedule!r} is unknown; use one of {', '.join(PP_SCHEDULES)}")
        m = self.pp_microbatches
        if m is not None and (m < 1 or self.pp == 1):
            raise ConfigError(f"--pp-microbatches {m} needs --pp 2 or more and a value of at least 1")
        m = m or self.pp
        if self.pp > 1 and self.micro_batch_size % m:
            raise ConfigError(f"--pp-microbatches {m} does not divide --micro-batch-size {self.micro_batch_size}; "
                              f"choose a micro-batch size that is a multiple of {m}")
        if self.pp > 1 and self.pp_schedule == "1f1b" and m < self.pp:
            raise ConfigError(f"--pp-schedule 1f1b needs at least --pp {self.pp} micro-batches, got "
                              f"--pp-microbatches {m}")
        if (self.tp > 1 or self.pp > 1) and self.optimizer == "muon":
            raise ConfigError("--optimizer muon works without --tp/--pp only (it orthogonalises whole 2-D "
                              "gradients); use --optimizer adamw")

    def _check_numbers(self) -> None:
        """Finite, in range and plausible: a typo such as --lr 1e6 is refused here, not found out at step 300."""
        floats = ("lr", "min_lr", "decay_fraction", "weight_decay", "beta1", "beta2", "eps", "grad_clip",
                  "spike_zscore", "spike_lr_factor", "spike_lr_floor")
        for name in (*floats, "max_minutes"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"--{_flag(name)} must be a finite number, got {value}")
        if not 0 < self.lr <= MAX_LR:
            raise ConfigError(
                f"--lr {self.lr:g} is not a plausible AdamW learning rate (use a value in (0, {MAX_LR:g}]; "
                "typical: 1e-3 for tiny models, 6e-4 for GPT-2 small, 1e-4 to 1e-5 for finetuning)"
            )
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"--max-minutes must be positive, got {self.max_minutes}")
        if not 0 <= self.weight_decay <= 10:
            raise ConfigError(f"--weight-decay must lie in [0, 10] (typical: 0.1), got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name} must lie in [0, 1) (typical: 0.9 and 0.95), got {getattr(self, name)}")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"--eps must lie in (0, 1] (typical: 1e-8), got {self.eps}")
        if not (math.isfinite(self.muon_lr) and 0 < self.muon_lr <= 1):
            raise ConfigError(f"--muon-lr must lie in (0, 1] (typical: 0.02), got {self.muon_lr}")
        if not (math.isfinite(self.muon_momentum) and 0 <= self.muon_momentum < 1):
            raise ConfigError(f"--muon-momentum must lie in [0, 1) (typical: 0.95), got {self.muon_momentum}")
        if self.grad_clip < 0:
            raise ConfigError(f"--grad-clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.spike_zscore <= 0:
            raise ConfigError(f"--spike-zscore must be positive, got {self.spike_zscore}")
        if self.spike_patience < 0:
            raise ConfigError(f"--spike-patience must be >= 0 (0: never roll back), got {self.spike_patience}")
        if not 0 < self.spike_lr_factor <= 1:
            raise ConfigError(f"--spike-lr-factor must lie in (0, 1], got {self.spike_lr_factor}")
        if not 0 < self.spike_lr_floor <= 1:
            raise ConfigError(f"--spike-lr-floor must lie in (0, 1], got {self.spike_lr_floor}")
        if self.sample_tokens < 0:
            raise ConfigError(f"--sample-tokens must be >= 0, got {self.sample_tokens}")


def _flag(name: str) -> str:
    return name.replace("_", "-")
