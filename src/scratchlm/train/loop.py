"""The one training loop: accumulate, clip, guard, step, evaluate, checkpoint, resume. Every mode runs through it.

    for each optimizer step:
        lr = lr_at(step) * lr_scale
        for each of `accum` micro-batches:           (DDP syncs gradients on the last one only)
            loss, metrics = mode.loss(module, batch)  (under autocast for bf16/fp16)
            (loss / accum).backward()                 (through the fp16 grad scaler when on)
        unscale, clip the global grad norm
        spike guard on (loss, grad norm):  ok -> optimizer.step()   skip -> no update   rollback -> last checkpoint
        log / eval / sample / save on their intervals; stop on max steps, tokens, minutes or a signal

What it deliberately does not know: argv (the CLI builds the `TrainConfig`), how batches or losses are made
(the mode), how weights are laid out on disk (`scratchlm.checkpoint` through the mode).

Exact resume: a checkpoint holds everything the next step depends on: weights, AdamW moments, the step (the LR is
a pure function of it and `lr_scale`), every rank's RNG states and loader cursor, the spike guard's window, the
grad scaler and the metrics so far. Restoring them makes N + resume + N steps bitwise equal to 2N straight steps
on CPU (same thread count), which `tests/train/test_loop.py` and `test_processes.py` check.
"""

from __future__ import annotations

import base64
import contextlib
import math
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scratchlm import hostmem
from scratchlm.dataclass_io import to_dict
from scratchlm.device import cpu_has_native_bf16
from scratchlm.errors import ScratchlmError
from scratchlm.fs import atomic_write_text, ensure_writable_dir
from scratchlm.model import onednn
from scratchlm.train import distributed as D
from scratchlm.train.config import TrainConfig
from scratchlm.train.guard import OK, ROLLBACK, SpikeGuard
from scratchlm.train.modes.base import Batch, Mode
from scratchlm.train.optim import build_optimizer, lr_at, set_lr
from scratchlm.train.pipeline import Pipeline, split_model
from scratchlm.train.plots import plot_loss
from scratchlm.train.progress import Bar, ExternalLoggers, MetricsLog, flops_per_token, peak_flops

STEP_PREFIX = "step_"
OPTIMIZER_DCP = "optimizer_dcp"
"""train_state/ subfolder of the optimizer state of sharded runs (torch.distributed.checkpoint, one part per rank)."""


@dataclass
class TrainResult:
    """What a finished (or stopped) run reached."""

    step: int
    tokens: int
    stopped: str
    """max_steps, max_tokens, max_minutes, SIGINT or SIGTERM."""
    checkpoint: Path | None
    train_loss: float | None = None
    val_loss: float | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Problems of a run that completed (e.g. the spike guard lowered the LR to its floor), also printed."""


# ---- reproducibility ----------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device): call before building the model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": _b64(torch.get_rng_state()), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], np_state[1].tolist(), *np_state[2:]]
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ---- run folder -------------------------------------------------------------------------------------------------


def step_dirs(out: Path) -> list[Path]:
    """Complete step folders of a run, oldest first (`*.tmp` folders are unfinished and never listed)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name[5:].isdigit())


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The step folder to resume from: `auto` = the run folder's newest checkpoint (or none: start fresh)."""
    from scratchlm import checkpoint

    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        if not (cfg.out / checkpoint.LATEST_FILE).is_file():
            return None
        path = checkpoint.resolve(cfg.out)
    else:
        path = checkpoint.resolve(cfg.resume)
    if not (path / checkpoint.TRAIN_STATE_DIR / "state.json").is_file():
        raise ScratchlmError(
            f"--resume {path}: this checkpoint has no train_state/ (weights only); to train further from it, "
            "start a new run that loads it as its initial weights"
        )
    return path


def _check_resume_compatible(path: Path, model_config: dict[str, Any] | None, tokenizer: Any) -> None:
    """A checkpoint made for another model or tokenizer cannot be resumed here: one line naming the difference."""
    from scratchlm import checkpoint
    from scratchlm import tokenizer as tokenizers

    config = checkpoint.load_config(path)
    if model_config is not None and config["model"] != model_config:
        theirs = config["model"]
        diff = [k for k in sorted(set(theirs) | set(model_config)) if theirs.get(k) != model_config.get(k)]
        shown = ", ".join(f"{k}={theirs.get(k)!r} there vs {model_config.get(k)!r} here" for k in diff[:3])
        raise ScratchlmError(
            f"--resume {path}: the checkpoint is for another model config ({shown}); "
            "resume with the same model settings or choose a new --out"
        )
    tok_file = path / checkpoint.TOKENIZER_FILE
    if tokenizer is not None and tok_file.is_file():
        if tokenizers.load(tok_file).identity() != tokenizer.identity():
            raise ScratchlmError(
                f"--resume {path}: the checkpoint was trained with another tokenizer than this run's data; "
                "resume on the same data or choose a new --out"
            )


# ---- the loop ---------------------------------------------------------------------------------------------------


class _Stop:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the current step and returns.

    A second signal interrupts at once, except while a checkpoint is being written: interrupting the save would
    leave no checkpoint of the run's last steps (the user pressed Ctrl-C twice because the save seemed slow).
    So during a save a second signal only says that the save is finishing; a third abandons it (`save` then
    says which complete checkpoint remains).
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self.saving = False
        self._deferred = 0
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            return
        if self.saving and self._deferred == 0:
            self._deferred += 1
            print("finishing the checkpoint being written (a moment); Ctrl-C again abandons it", file=sys.stderr,
                  flush=True)
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def saving_checkpoint(self) -> Iterator[None]:
        self.saving, self._deferred = True, 0
        try:
            yield
        finally:
            self.saving = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Stop]:
        main_thread = hasattr(signal, "SIGTERM")
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread (e.g. a notebook's worker): no handlers, Ctrl-C just raises
            main_thread = False
        try:
            yield self
        finally:
            if main_thread:
                for s, old in self._old.items():
                    signal.signal(s, old)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on CUDA GPUs that support it and on CPUs that multiply bf16 in hardware, else fp32.
    On this project's 2-core AVX512-BF16 CPU bf16 trained the README's gpt2-tiny run 1.75x and the quickstart
    1.11x faster than fp32, with the same loss curves (benchmarks/cpu_precision.py, docs/train.md)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ScratchlmError("--precision fp16 needs a GPU (the grad scaler is CUDA-only); use bf16 or fp32 on CPU")
    return precision


def gradient_accumulation(cfg: TrainConfig, context_length: int, world_size: int) -> int:
    """Micro-batches per rank per optimizer step, from the global batch in tokens; a remainder is an error.
    `world_size`: the data-parallel ranks (processes / (tp x pp))."""
    per_pass = cfg.micro_batch_size * context_length * world_size
    if cfg.global_batch_tokens is None:
        return 1
    if cfg.global_batch_tokens % per_pass:
        raise ScratchlmError(
            f"--micro-batch-size {cfg.micro_batch_size} x context {context_length} x {world_size} process(es) "
            f"= {per_pass} tokens does not divide --global-batch-tokens {cfg.global_batch_tokens}; "
            f"choose a global batch that is a multiple of {per_pass}"
        )
    return cfg.global_batch_tokens // per_pass


def _data_parallel_entries(ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A checkpoint's per-rank RNG and loader states, one per data-parallel rank (the tp and pp ranks of one
    data-parallel rank read the same batches); checkpoints from before --tp/--pp had one rank per dp rank."""
    if ranks and "dp" in ranks[0]:
        return [next(r for r in ranks if r["dp_rank"] == i) for i in range(ranks[0]["dp"])]
    return ranks


def _to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on the training device. To a GPU from pinned host memory, so the copy is asynchronous (from
    pageable memory `non_blocking` has no effect: the host waits for the copy)."""
    pin = device.type == "cuda"
    return {k: ((v.pin_memory() if pin and v.device.type == "cpu" else v).to(device, non_blocking=True)
                if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _scalar(x: Any) -> float:
    return float(x.detach().float().item()) if isinstance(x, torch.Tensor) else float(x)


class Trainer:
    """One run's state and the steps that change it; `train()` below is the public entry."""

    def __init__(
        self,
        cfg: TrainConfig,
        mode: Mode,
        model: nn.Module,
        tokenizer: Any,
        extra: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.mode, self.tokenizer = cfg, mode, tokenizer
        self.extra = dict(extra or {})
        self.info = D.init_distributed(cfg.device)
        self.device = self.info.device
        self.main = self.info.is_main
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.tp > 1 and getattr(mode, "prefix", None) is not None:  # finetuning modes' --peft prefix|prompt
            raise ScratchlmError(f"--peft {mode.prefix_kind} with --tp {cfg.tp} is not supported (--tp splits the "
                                 "attention heads its prefix feeds); train it without --tp, e.g. --parallel fsdp")
        # the processes as pp x dp x tp on one DeviceMesh (a world size that is no such product: one line)
        self.layout = D.plan_layout(self.info, cfg.parallel, cfg.tp, cfg.pp, cfg.dp_shard)
        # zero2/fsdp/hsdp, --tp, --pp: no rank holds the whole model; evaluation, sampling and saving are collective
        self.sharded = not self.layout.whole_on_every_rank
        if self.sharded and self.precision == "fp16":
            raise ScratchlmError(f"--precision fp16 is not supported with --parallel {cfg.parallel}, --tp or --pp; "
                                 "use bf16")
        # under FSDP2, bf16 is its MixedPrecisionPolicy (bf16 parameters, fp32 reductions), not autocast
        self.autocast_precision = "fp32" if self.layout.fsdp else self.precision
        if cfg.onednn is not None:
            onednn.set_enabled(cfg.onednn)
        if self.device.type == "cpu" and cfg.retain_host_memory:
            hostmem.retain_freed_memory()
        if self.device.type == "cuda":
            # fp32 matmuls (and the fp32 parts of mixed precision) on tensor cores as TF32, as nanoGPT and
            # torchtitan train; CPUs ignore the setting
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.out = Path(cfg.out)

        self.resume_from = resolve_resume(cfg)
        if self.resume_from is None and step_dirs(self.out):
            raise ScratchlmError(
                f"run folder {self.out} already has checkpoints ({step_dirs(self.out)[-1].name}); "
                "pass --resume auto to continue it, or choose another --out"
            )
        # the module being trained (a mode may add a head, LoRA, freeze parameters), unwrapped, on the device;
        # a model built on `meta` stays there until it is sharded (see below)
        self.module = mode.setup(model, tokenizer)
        on_meta = D.has_meta_params(self.module)
        if not on_meta:
            self.module.to(self.device)
        base_config = getattr(model, "config", None)
        self.model_config = to_dict(base_config) if base_config is not None else None
        dp = self.layout.dp  # batches, token counts and accumulation are per data-parallel rank
        self.accum = gradient_accumulation(cfg, mode.context_length, dp)
        self.tokens_per_step = cfg.micro_batch_size * mode.context_length * self.accum * dp
        self.total_steps = cfg.max_steps
        if self.total_steps is None and cfg.max_tokens is not None:
            self.total_steps = math.ceil(cfg.max_tokens / self.tokens_per_step)

        # a plain, memory-free copy to fill on rank 0 whenever a whole module is needed (save, samples, tasks)
        self.skeleton = D.meta_skeleton(self.module) if self.sharded else None
        if on_meta and not self.sharded:  # replicas hold everything anyway (and DDP needs real tensors)
            D.materialize_and_init(self.module, self.device, cfg.seed)
        # from outside the model, in order: pipeline split, tensor parallel, checkpointing, compile, data parallel
        whole = self.module
        self.pipeline: Pipeline | None = None
        if cfg.pp > 1:
            if mode.name != "pretrain":  # the last stage computes the pretraining loss itself
                raise ScratchlmError(f"--pp trains `pretrain` only, not {mode.name}; use --parallel fsdp (and --tp)")
            self.module = split_model(whole, self.layout)
        if cfg.tp > 1 and base_config is not None:
            D.check_tensor_parallel(base_config, cfg.tp)
        # only once its parameters are placed (sharded, split) does each rank allocate its part and initialise it
        init = (lambda: D.materialize_and_init(self.module, self.device, cfg.seed, whole=whole)) \
            if on_meta and self.sharded else None
        self.wrapped = D.wrap(self.module, self.info, cfg.compile, cfg.activation_checkpointing, cfg.parallel,
                              cfg.dp_shard, self.precision, self.layout, init)
        if cfg.pp > 1:
            self.pipeline = Pipeline(self.module, self.wrapped, self.layout, cfg.pp_schedule,
                                     cfg.pp_microbatches or cfg.pp, self.device)
            self.pipeline.tie_initial_weights()
        # the optimizer last, over the wrapped (sharded) parameters
        self.optimizer = build_optimizer(
            self.module, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, self.device.type,
            shard_state=cfg.parallel == "zero1" and dp > 1,
            optimizer=cfg.optimizer, muon_lr=cfg.muon_lr, muon_momentum=cfg.muon_momentum,
        )
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.guard = SpikeGuard(cfg.spike_window, cfg.spike_zscore, cfg.spike_patience, clipped=cfg.grad_clip > 0)
        self.stream = mode.train_batches(cfg.micro_batch_size, cfg.seed, self.layout.dp_rank, dp)
        self.evaluate_val = self._check_validation()
        if cfg.eval_tasks:  # likewise a typo in a task name
            from scratchlm.eval.periodic import check_tasks

            check_tasks(list(cfg.eval_tasks))
        if self.main:  # every input is checked: only now is the run folder created
            ensure_writable_dir(self.out, "run")

        self.step = 0
        self.tokens = 0
        self.lr_scale = 1.0
        self.rollbacks = 0
        self.rejected_in_a_row = 0  # optimizer steps the guard rejected since the last accepted one
        self.floor_reported = False
        self.last_checkpoint: Path | None = None
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self.main)
        # data-parallel ranks draw different dropout masks (the tp ranks of one batch the same ones); rank 0
        # keeps the plain seed (1 process == rank 0)
        torch.manual_seed(cfg.seed + self.layout.dp_rank)
        if self.resume_from is not None:
            self._check_and_load(self.resume_from, restore_stream=True)
        else:
            self.metrics.reset([])
        if self.main and run_config is not None:
            import yaml

            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(run_config, sort_keys=False), "run config")

        whole_model = self.skeleton if self.skeleton is not None else self.module  # (all pipeline stages)
        n_params = sum(p.numel() for p in whole_model.parameters())
        self.flops_per_token = None
        if base_config is not None:
            self.flops_per_token = flops_per_token(
                n_params, base_config.n_layer, base_config.d_model, mode.context_length
            )
        self.peak = peak_flops(self.device, self.precision)
        self.n_params = n_params

    def _layout_note(self) -> str:
        lay = self.layout
        return f" = pp {lay.pp} x dp {lay.dp} x tp {lay.tp}" if lay.tp > 1 or lay.pp > 1 else ""

    def _check_validation(self) -> bool:
        """Before step 1: can every evaluation of this run score at least one validation batch?

        A split smaller than a batch is scored in one short batch (modes yield a short last batch), so only a
        split with no batch at all is a problem: an error when --eval-every asks for evaluations, a note (and no
        validation loss) when --eval-every 0, which needs no validation split. Returns whether to score it.
        """
        cfg = self.cfg
        try:
            batches = self.mode.val_batches(cfg.micro_batch_size)
            problem = None if batches is not None and next(iter(batches), None) is not None else "no validation split"
        except ScratchlmError as e:
            problem = str(e)
        if problem is None:
            return True
        if cfg.eval_every:
            raise ScratchlmError(
                f"--eval-every {cfg.eval_every} needs a validation split to evaluate on ({problem}); give the run "
                "one (`data prepare --val-fraction`, or --val-fraction when finetuning) or pass --eval-every 0"
            )
        if self.main:
            D.print0(f"note: no validation loss in this run ({problem})")
        return False

    # ---- checkpoints ----------------------------------------------------------------------------------------

    def _check_and_load(self, path: Path, restore_stream: bool) -> None:
        """Load weights + training state from a step folder (resume, or a spike rollback without the stream)."""
        from scratchlm import checkpoint

        _check_resume_compatible(path, self.model_config, self.tokenizer)
        if self.sharded:  # the mode reads the folder into a plain copy on rank 0, then it is scattered
            plain = self.plain_module()
            if plain is not None:
                self.mode.load_weights(plain, path)
            D.load_full_model_state(self.module, plain.state_dict() if plain is not None else {}, self.layout)
        else:
            self.mode.load_weights(self.module, path)
        ts = checkpoint.load_train_state(path)
        if ts is None:
            raise ScratchlmError(f"{path} has no train_state/ (weights only); resume from a checkpoint of a run")
        state = ts.to_nested()
        muon_state = set(state["optimizer"]) == {"muon", "adamw"}
        if muon_state != (self.cfg.optimizer == "muon"):
            raise ScratchlmError(
                f"{path} was trained with --optimizer {'muon' if muon_state else 'adamw'}: resume it with that "
                f"optimizer (or start --optimizer {self.cfg.optimizer} from its weights, without --resume)")
        if set(state["optimizer"]) == {"dcp"}:  # written by every rank of a sharded run
            D.load_sharded_optimizer(self.module, self.optimizer, path / checkpoint.TRAIN_STATE_DIR / OPTIMIZER_DCP)
        else:  # one file, keyed by parameter names (or by index: checkpoints from before --parallel)
            D.load_optimizer_state(self.module, self.optimizer, state["optimizer"])
        self.step, self.tokens, self.lr_scale = state["step"], state["tokens"], state["lr_scale"]
        self.guard.load_state_dict(state["guard"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.last_checkpoint = path
        if restore_stream:
            saved = _data_parallel_entries(state["ranks"])
            entry = saved[self.layout.dp_rank] if len(saved) == self.layout.dp else saved[0]
            if len(saved) != self.layout.dp:
                D.print0(f"note: resuming {len(saved)} data-parallel rank(s)' state on {self.layout.dp}; "
                         "data order continues from data-parallel rank 0's cursor")
            self.stream.load_state_dict(entry["loader"])
            _set_rng_state(entry["rng"])
            self.metrics.reset(state["history"])

    def save(self) -> Path | None:
        """Write step_NNNNNN/ (weights via the mode, training state), point `latest` at it, prune old ones.

        Every rank must call this (it gathers per-rank RNG and loader state, ZeRO-1 optimizer partitions, FSDP
        shards); only rank 0 writes. The optimizer state is keyed by parameter names, so any layout resumes it.
        """
        from scratchlm import checkpoint

        ranks = D.gather_object({"rng": _rng_state(), "loader": self.stream.state_dict(),
                                 "dp_rank": self.layout.dp_rank, "dp": self.layout.dp})
        staged = None
        if self.sharded:  # every rank writes its part, staged in the run folder, moved into the step folder below
            staged = self.out / f".{STEP_PREFIX}{self.step:06d}.{OPTIMIZER_DCP}"
            D.save_sharded_optimizer(self.module, self.optimizer, staged)
            optimizer_state: dict[str, Any] = {"dcp": OPTIMIZER_DCP}
        else:
            optimizer_state = D.optimizer_state(self.module, self.optimizer)
        module = self.plain_module()
        if not self.main or module is None:
            D.barrier()
            return None
        finite = all(bool(torch.isfinite(p).all()) for p in module.parameters())
        if not finite:  # the guard should make this impossible; never write a poisoned checkpoint
            self._event("checkpoint_refused", "non-finite weights")
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            D.barrier()
            return None
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "lr_scale": self.lr_scale,
            "optimizer": optimizer_state,
            "guard": self.guard.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ranks": ranks,
            "history": self.metrics.records,
            "world_size": self.info.world_size,
        }
        extra = {"train": to_dict(self.cfg), "train_mode": self.mode.name, **self.mode.checkpoint_extra()}
        extra.update(self.extra)
        path = self.out / f"{STEP_PREFIX}{self.step:06d}"
        train_state = checkpoint.TrainState.from_nested(state)
        if staged is not None:
            train_state.dirs[OPTIMIZER_DCP] = staged
        stopper = getattr(self, "stopper", None)
        guard = stopper.saving_checkpoint() if stopper is not None else contextlib.nullcontext()
        try:
            with guard:
                self.mode.save_weights(module, path, self.tokenizer, extra, train_state)
                checkpoint.mark_latest(path)
        except KeyboardInterrupt:
            remains = f"the newest complete checkpoint is {self.last_checkpoint}" if self.last_checkpoint else (
                "this run has no complete checkpoint")
            print(f"interrupted while writing {path.name}: that checkpoint was abandoned; {remains}",
                  file=sys.stderr, flush=True)
            raise
        self.last_checkpoint = path
        if self.cfg.keep_last:
            for old in step_dirs(self.out)[: -self.cfg.keep_last]:
                if old != path:
                    shutil.rmtree(old, ignore_errors=True)
        D.barrier()
        return path

    def plain_module(self) -> nn.Module | None:
        """The trained module as a plain nn.Module: itself for replicas; when sharded (collective: every rank
        calls it) a CPU copy on rank 0 filled from the gathered full state dict, None on the other ranks."""
        if not self.sharded:
            return self.module
        assert self.skeleton is not None
        state = D.full_model_state(self.module, self.layout)
        return D.materialize(self.skeleton, state) if self.main else None

    # ---- evaluation and samples -----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss and perplexity (and periodic eval tasks) with the unwrapped module: on rank 0, or on
        every rank when the parameters are sharded (each forward gathers them: a rank-0-only forward would wait
        forever for the others). Eval tasks then run on rank 0 on a gathered plain copy."""
        results: dict[str, float] = {}
        batches = self.mode.val_batches(self.cfg.micro_batch_size) if self.evaluate_val else None
        was_training = self.module.training
        self.module.eval()
        try:
            if batches is not None:
                total, n = 0.0, 0
                for i, batch in enumerate(batches):
                    if self.cfg.eval_batches and i >= self.cfg.eval_batches:
                        break
                    batch = _to_device(batch, self.device)
                    with _autocast(self.device, self.autocast_precision):
                        if self.pipeline is None:
                            loss, _ = self.mode.loss(self.module, batch)
                        elif len(batch["ids"]) % self.pipeline.microbatches:
                            continue  # a short last batch the pipeline's micro-batches do not divide
                        else:
                            loss = self.pipeline.share(self.pipeline.eval(batch))
                    total += _scalar(loss)
                    n += 1
                if n:
                    results["val_loss"] = total / n
                    results["val_ppl"] = math.exp(min(results["val_loss"], 50.0))
            if self.cfg.eval_tasks:
                from scratchlm.eval.periodic import evaluate_tasks

                module = self.plain_module()
                if module is not None:
                    module.to(self.device).eval()
                    results.update(evaluate_tasks(module, self.tokenizer, list(self.cfg.eval_tasks), self.device))
        finally:
            self.module.train(was_training)
            if self.sharded:
                D.reshard(self.module)
        return results

    def sample(self) -> str | None:
        """A few lines from `sample_prompt`, without touching the training RNG streams. Sharded: collective, and
        rank 0 samples from a gathered plain copy (generation calls more than `forward`); None elsewhere."""
        module = self.plain_module()
        if module is None:
            return None
        module.to(self.device)
        was_training = module.training
        module.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                return sample_text(module, self.tokenizer, self.cfg.sample_prompt, self.cfg.sample_tokens, self.cfg.seed)
        finally:
            module.train(was_training)

    def _event(self, event: str, detail: str) -> None:
        if self.main:
            self.metrics.append({"kind": "event", "step": self.step, "event": event, "detail": detail})
            self.bar.write(f"step {self.step}: {event}: {detail}")

    # ---- the step -------------------------------------------------------------------------------------------

    def train_step(self) -> tuple[float, float, dict[str, float], str, str]:
        """One optimizer step over `accum` micro-batches; returns (loss, grad norm, metrics, verdict, reason)."""
        cfg = self.cfg
        lr = lr_at(
            self.step,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=self.total_steps,
            schedule=cfg.schedule,
            decay_fraction=cfg.decay_fraction,
        ) * self.lr_scale
        set_lr(self.optimizer, lr)
        self.lr = lr
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, Any] = {}
        tokens = 0
        for micro in range(self.accum):
            batch = _to_device(next(self.stream), self.device)
            if self.pipeline is not None:  # forward and backward through the stages (the stage syncs gradients)
                with _autocast(self.device, self.autocast_precision):
                    loss_sum += self.pipeline.step(batch, self.accum)
                tokens += self.mode.tokens_in(batch)
                continue
            D.set_grad_sync(self.wrapped, micro == self.accum - 1)
            with _autocast(self.device, self.autocast_precision):
                loss, metrics = self.mode.loss(self.wrapped, batch)
            self.scaler.scale(loss / self.accum).backward()
            loss_sum += loss.detach().float()
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + (v.detach().float() if isinstance(v, torch.Tensor) else v)
            tokens += self.mode.tokens_in(batch)
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        if self.pipeline is not None:
            self.pipeline.sum_tied_gradients()
            # the loss exists on the last stage: every stage logs and guards with it
            loss_sum = self.pipeline.share(loss_sum)
        grad_norm = D.clip_grad_norm(self.params, max_norm, self.layout,
                                     self.pipeline.counted_elsewhere if self.pipeline is not None else ())
        # one small all-reduce per step: mean loss over ranks, and whether any rank got a signal / ran out of time
        flags = [float(self.stopper.signal is not None), float(self._out_of_time())]
        stats = D.all_reduce_mean(torch.stack([loss_sum / self.accum, *map(loss_sum.new_tensor, flags)]))
        loss_v, signal_v, time_v = stats.tolist()
        self.stop_signal, self.stop_time = signal_v > 0, time_v > 0
        norm_v = D.grad_norm_value(grad_norm)
        self.tokens += tokens * self.layout.dp

        verdict, reason = OK, ""
        if self.scaler.is_enabled() and not math.isfinite(norm_v):
            verdict, reason = "overflow", "fp16 gradient overflow (the grad scaler lowers its scale)"
        else:
            verdict, reason = self.guard.check(self.step, loss_v, norm_v)
        if verdict == OK:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metric_avgs = {k: _scalar(v) / self.accum for k, v in metric_sums.items()}
        return loss_v, norm_v, metric_avgs, verdict, reason

    def _out_of_time(self) -> bool:
        return self.cfg.max_minutes is not None and time.perf_counter() - self.t_start >= 60.0 * self.cfg.max_minutes

    def _rollback(self, reason: str) -> None:
        """Repeated spikes: back to the last good checkpoint's weights, AdamW moments, step and guard, with a
        lower LR. The data stream is not rewound, so the batches that caused the spikes are not replayed."""
        floor = self.cfg.spike_lr_floor
        if self.lr_scale <= floor * (1 + 1e-9):  # at the floor: the step is skipped, nothing is rolled back
            if not self.floor_reported:
                self.floor_reported = True
                self._event("spike_lr_floor", f"{reason}; the LR scale is at its floor {floor:g} (--spike-lr-floor), "
                            "so spikes are now only skipped, with no further rollbacks")
            else:
                self._event("spike_skip", reason)
            return
        new_scale = max(self.lr_scale * self.cfg.spike_lr_factor, floor)
        self.rollbacks += 1
        target = self.last_checkpoint
        if target is not None:
            records = self.metrics.records
            self._check_and_load(target, restore_stream=False)
            self.metrics.records = records  # the event history stays, including what happened after `target`
        self.lr_scale = new_scale
        where = f"back to {target.name}" if target is not None else "no checkpoint yet to go back to"
        self._event("spike_rollback", f"{reason}; {where}, LR scale -> {self.lr_scale:g}")

    def _check_not_stuck(self, verdict: str, reason: str) -> None:
        """A whole spike window of rejected steps in a row (skips, rollbacks, fp16 overflows) stops the run with
        an error: its loss has diverged, or moved to a level the guard's history never learns (rejected steps do
        not enter it), and every further step would be computed only to be thrown away. Every rank sees the same
        verdicts, so every rank stops."""
        self.rejected_in_a_row = 0 if verdict == OK else self.rejected_in_a_row + 1
        limit = self.cfg.spike_window or 50  # the guard off still rejects non-finite steps
        if self.rejected_in_a_row >= limit:
            last = self.last_checkpoint.name if self.last_checkpoint is not None else "none yet"
            self._event("spike_stop", f"{limit} steps in a row rejected ({reason})")
            raise ScratchlmError(
                f"stopped at step {self.step}: the last {limit} steps were all rejected ({reason}), so the run has "
                f"diverged or its loss moved for good; last checkpoint: {last}. Rerun with a lower --lr or longer "
                "--warmup-steps, or a higher --spike-zscore if the loss may legitimately move")

    def _done(self) -> str | None:
        """Why the run stops now, or None. Signals and the time budget are agreed over ranks in train_step."""
        cfg = self.cfg
        if self.stop_signal:
            return self.stopper.signal or "SIGTERM"
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_tokens is not None and self.tokens >= cfg.max_tokens:
            return "max_tokens"
        if self.stop_time:
            return "max_minutes"
        return None

    def run(self) -> TrainResult:
        cfg = self.cfg
        self.stopper = _Stop()
        self.stop_signal = self.stop_time = False
        self.bar = Bar(self.total_steps, self.step, enabled=self.main and cfg.progress)
        loggers = ExternalLoggers(self.out, cfg.tensorboard, cfg.wandb, to_dict(cfg), enabled=self.main)
        D.print0(
            f"training {self.mode.name}: {self.n_params / 1e6:.2f}M parameters on {self.device} "
            f"({self.info.world_size} process(es){self._layout_note()}, {self.precision}), "
            f"{self.accum} accumulation step(s), {self.tokens_per_step:,} tokens/step, run folder {self.out}"
            + (f", resumed from {self.resume_from.name} at step {self.step}" if self.resume_from else "")
        )
        self.module.train()
        self.t_start = time.perf_counter()
        t_log, tokens_log, step_log = self.t_start, self.tokens, self.step
        last_loss: float | None = None
        last_eval: dict[str, float] = {}
        stopped: str | None = None
        evaluated_at = saved_at = -1
        try:
            with self.stopper.installed():
                while (stopped := self._done()) is None:
                    loss_v, norm_v, extra_metrics, verdict, reason = self.train_step()
                    self._check_not_stuck(verdict, reason)
                    if verdict == ROLLBACK:
                        self._rollback(reason)
                        continue
                    if verdict != OK:
                        self._event("spike_skip" if verdict != "overflow" else "overflow", reason)
                    else:
                        last_loss = loss_v
                    step = self.step
                    if step % cfg.log_every == 0 and self.main:
                        now = time.perf_counter()
                        tok_s = (self.tokens - tokens_log) / max(now - t_log, 1e-9)
                        record: dict[str, Any] = {
                            "kind": "train", "step": step, "loss": loss_v, "lr": self.lr,
                            "grad_norm": norm_v, "tokens": self.tokens, "tokens_per_s": tok_s,
                        }
                        record.update(extra_metrics)
                        postfix = {"loss": f"{loss_v:.4f}", "lr": f"{self.lr:.2e}", "tok/s": f"{tok_s:,.0f}"}
                        if self.peak and self.flops_per_token:
                            # the whole model's FLOPs per token over every device's peak (all of pp x dp x tp)
                            record["mfu"] = self.flops_per_token * tok_s / (self.peak * self.info.world_size)
                            postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
                        record["elapsed_s"] = now - self.t_start
                        self.metrics.append(record)
                        loggers.log(step, record)
                        self.bar.update(step - step_log, postfix)
                        t_log, tokens_log, step_log = now, self.tokens, step
                    t_pause = time.perf_counter()
                    if cfg.eval_every and step % cfg.eval_every == 0:
                        last_eval = self._eval_and_log(step, loggers)
                        evaluated_at = step
                    if cfg.sample_every and step % cfg.sample_every == 0 and (self.main or self.sharded):
                        self._sample_and_log(step)
                    if cfg.save_every and step % cfg.save_every == 0:
                        self.save()
                        saved_at = step
                    t_log += time.perf_counter() - t_pause  # tokens/s measures training steps only
                # the final checkpoint first: a failing final evaluation must not cost the run its weights
                if saved_at != self.step:
                    self.save()
                if evaluated_at != self.step and stopped not in ("SIGINT", "SIGTERM"):
                    last_eval = self._eval_and_log(self.step, loggers)
                if self.main and not last_eval:  # no evaluation drew the curves (e.g. GRPO, no validation split)
                    plot_loss(self.metrics.records, self.out / "loss.png")
        finally:
            self.bar.update(self.step - step_log)
            self.bar.close()
            loggers.close()
        D.print0(
            f"stopped at step {self.step} ({stopped}); "
            + (f"val loss {last_eval['val_loss']:.4f}; " if "val_loss" in last_eval else "")
            + f"checkpoint {self.last_checkpoint}"
        )
        warnings = []
        if self.lr_scale < 1.0:
            at_floor = " (its floor, --spike-lr-floor)" if self.lr_scale <= cfg.spike_lr_floor * (1 + 1e-9) else ""
            warnings.append(
                f"the spike guard rolled back {self.rollbacks} time(s) and lowered the LR to {self.lr_scale:g} of "
                f"its schedule{at_floor}, so the loss may have stalled; small, noisy batches trip it: use a larger "
                "--micro-batch-size or --global-batch-tokens, a higher --spike-zscore, or --spike-window 0 (off)"
            )
        for w in warnings:
            if self.main:
                print(f"warning: {w}", file=sys.stderr, flush=True)
        return TrainResult(
            step=self.step,
            tokens=self.tokens,
            stopped=stopped or "max_steps",
            checkpoint=self.last_checkpoint,
            train_loss=last_loss,
            val_loss=last_eval.get("val_loss"),
            records=list(self.metrics.records),
            warnings=warnings,
        )

    def _eval_and_log(self, step: int, loggers: ExternalLoggers) -> dict[str, float]:
        if not (self.main or self.sharded):
            return {}
        results = self.evaluate()  # every rank when sharded (the same batches, so the same numbers)
        if results and self.main:
            record = {"kind": "eval", "step": step, **results, "elapsed_s": time.perf_counter() - self.t_start}
            self.metrics.append(record)
            loggers.log(step, record)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items())
            self.bar.write(f"step {step}: {shown}")
            plot_loss(self.metrics.records, self.out / "loss.png")
        return results

    def _sample_and_log(self, step: int) -> None:
        text = self.sample()
        if text is None:
            return
        self.metrics.append({"kind": "sample", "step": step, "prompt": self.cfg.sample_prompt, "text": text})
        self.bar.write(f"step {step} sample:\n{self.cfg.sample_prompt}{text}\n")


def train(
    cfg: TrainConfig,
    mode: Mode,
    model: nn.Module,
    tokenizer: Any,
    extra: dict[str, Any] | None = None,
    run_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` with `mode`'s data and loss under `cfg`; see the module docstring.

    `extra`: more config.json sections for every checkpoint. `run_config`: the resolved command config, written
    to `<out>/config.yaml` so the run can be repeated with `--config`.
    """
    try:
        return Trainer(cfg, mode, model, tokenizer, extra, run_config).run()
    except BaseException as e:
        D.stop_all(e)  # under torchrun: print once, exit now, so no rank waits in a collective for the others
        raise
    finally:
        D.shutdown_distributed()


# ---- samples ------------------------------------------------------------------------------------------------


def sample_text(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, seed: int) -> str:
    """Continue `prompt` with `scratchlm.generate.generate` (temperature 0.8, top-k 200)."""
    from scratchlm.generate import generate

    return generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=0.8, top_k=200, seed=seed)
