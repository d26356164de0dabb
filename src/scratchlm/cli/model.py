"""`scratchlm model info`: parameters, FLOPs and memory of a model config (a preset or a checkpoint's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from scratchlm.cli.parsing import parse
from scratchlm.errors import ScratchlmError


@dataclass
class InfoCommand:
    """Parameters, training FLOPs/token, memory (weights, gradients, AdamW, activations) and KV-cache size of a
    model config, computed from the config alone (nothing is built or allocated)."""

    preset: str | None = None
    """A model preset, e.g. gpt2, gpt2-xl, llama-3.2-1b (see presets/model/)."""
    checkpoint: Path | None = None
    """A checkpoint folder (step or run folder): its config.json's model."""
    set: tuple[str, ...] = ()
    """Override model fields: --set n_layer=6 d_model=384 (the ModelConfig field names)."""
    batch: int = 1
    """Batch size (sequences) for the activation memory."""
    context: int | None = None
    """Sequence length for FLOPs and activations (default: the model's context_length)."""
    precision: str = "fp32"
    """fp32, or bf16/fp16 (mixed precision: fp32 weights, grads and AdamW; 16-bit activations and KV cache)."""
    budget: float | None = None
    """A compute budget in training FLOPs: print the compute-optimal parameters and tokens for it (the
    20-tokens-per-parameter rule of thumb, or with --law the law fitted to your own sweep)."""
    law: Path | None = None
    """A sweep folder fitted by `scratchlm scaling fit` (its fit.json): answer --budget with that law."""
    world_size: int = 1
    """Processes of a training run to plan for: print each rank's share of the memory (with --parallel, --tp,
    --pp; --batch is then one data-parallel rank's micro-batch). See docs/scale.md."""
    parallel: str = "ddp"
    """ddp, zero1, zero2, fsdp or hsdp (as `pretrain --parallel`)."""
    tp: int = 1
    """Tensor-parallel ranks (as `pretrain --tp`)."""
    pp: int = 1
    """Pipeline stages (as `pretrain --pp`)."""
    dp_shard: int | None = None
    """hsdp: processes per sharding group."""
    pp_schedule: str = "1f1b"
    """gpipe or 1f1b (activations in flight per stage)."""
    pp_microbatches: int | None = None
    """Pipeline micro-batches per --batch (default --pp)."""


def info(argv: list[str], prog: str) -> int:
    from scratchlm.dataclass_io import from_dict
    from scratchlm.model import ModelConfig
    from scratchlm.model.config import load_preset_dict
    from scratchlm.model.sizing import PRECISIONS, size

    cfg = parse(InfoCommand, argv, prog)
    if cfg.law is not None and cfg.budget is None:
        raise ScratchlmError("--law answers a compute budget: pass --budget FLOPS too (e.g. --budget 1e15)")
    if cfg.budget is not None and not (math.isfinite(cfg.budget) and cfg.budget > 0):
        raise ScratchlmError(f"--budget {cfg.budget} is not a positive number of FLOPs; e.g. --budget 1e15")
    if cfg.preset is None and cfg.checkpoint is None and cfg.budget is not None:
        print(_budget_answer(cfg.budget, cfg.law))
        return 0
    if (cfg.preset is None) == (cfg.checkpoint is None):
        raise ScratchlmError("name one model: --preset NAME (e.g. gpt2) or --checkpoint DIR (or only --budget)")
    if cfg.precision not in PRECISIONS:
        raise ScratchlmError(f"--precision {cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
    if cfg.batch < 1 or (cfg.context is not None and cfg.context < 1):
        raise ScratchlmError("--batch and --context must be positive integers")
    if cfg.preset is not None:
        fields, source = load_preset_dict(cfg.preset), f"preset {cfg.preset}"
    else:
        from scratchlm import checkpoint

        fields, source = checkpoint.load_config(cfg.checkpoint)["model"], f"checkpoint {cfg.checkpoint}"
    # --set as ModelConfig.replace: derived fields (n_kv_head, d_ff) follow the fields they derive from
    config = from_dict(ModelConfig, fields, where=source).replace(**_overrides(cfg.set))
    s = size(config, batch=cfg.batch, context=cfg.context, precision=cfg.precision)
    print(format_info(s, source))
    if cfg.world_size > 1 or cfg.tp > 1 or cfg.pp > 1:
        print(format_layout(config, cfg))
    if cfg.budget is not None:
        tokens = cfg.budget / s.train_flops_per_token
        print(f"this model at {cfg.budget:.3g} FLOPs: {_si(tokens).strip()} tokens ({tokens / s.params.total:,.1f} per "
              f"parameter, at {_si(s.train_flops_per_token)}FLOP/token)")
        print(_budget_answer(cfg.budget, cfg.law))
    return 0


def _budget_answer(budget: float, law: Path | None) -> str:
    from scratchlm.scaling.fit import format_budget_answer, load_law

    return format_budget_answer(budget, load_law(law) if law is not None else None, str(law))


def _overrides(items: tuple[str, ...]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ScratchlmError(f"--set {item!r} is not FIELD=VALUE; e.g. --set n_layer=6")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def format_info(s, source: str) -> str:  # s: scratchlm.model.sizing.Sizing
    c = s.config
    gqa = f", {c.n_kv_head} KV heads" if c.n_kv_head != c.n_head else ""
    rows = [
        ("model", f"{source}: {c.n_layer} layers, d_model {c.d_model}, {c.n_head} heads{gqa}, d_ff {c.d_ff}, "
                  f"vocab {c.vocab_size}, {c.norm}/{c.mlp}/{c.positions}, "
                  f"{'tied' if c.tie_embeddings else 'untied'} head"),
        *([("attention", _pattern_text(c))] if set(c.attn_pattern) != {"dense"} else []),
        ("parameters", f"{s.params.total:,} ({_si(s.params.total)})"),
        ("  without embeddings", f"{s.params.non_embedding:,} ({_si(s.params.non_embedding)})"),
        ("training FLOPs/token", f"{_si(s.train_flops_per_token)}FLOP at context {s.context} "
                                 f"(forward {_si(s.forward_flops_per_token)}FLOP)"),
        (f"memory, batch {s.batch} x {s.context}, {s.precision}", ""),
        ("  weights", _bytes(s.weights_bytes)),
        ("  gradients", _bytes(s.grads_bytes)),
        ("  AdamW states", _bytes(s.adamw_bytes)),
        ("  activations", f"{_bytes(s.activations_bytes)} ({c.attn_impl} attention)"),
        ("  activations, checkpointed", _bytes(s.activations_checkpointed_bytes)),
        ("  total for training", f"{_bytes(s.train_bytes)} "
                                 f"({_bytes(s.train_bytes - s.activations_bytes + s.activations_checkpointed_bytes)}"
                                 " with activation checkpointing)"),
        ("KV cache", f"{_bytes(s.kv_cache_bytes_per_token)}/token "
                     f"({_bytes(s.kv_cache_bytes_per_sequence)} per {c.context_length}-token sequence"
                     f"{_window_note(c)})"),
        ("Chinchilla-optimal", f"{_si(s.chinchilla_tokens)} tokens (20/parameter), "
                               f"{s.chinchilla_flops:.2e} training FLOPs"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in rows)


def _pattern_text(c) -> str:  # c: ModelConfig
    """e.g. "local x3 + dense per 4 layers (window 256)"."""
    runs: list[list] = []
    for kind in c.attn_pattern:
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    text = " + ".join(kind if n == 1 else f"{kind} x{n}" for kind, n in runs)
    text += f" per {len(c.attn_pattern)} layers" if len(c.attn_pattern) > 1 else " in every layer"
    settings = [f"window {c.attn_window}" if c.attn_window else "", f"stride {c.attn_stride}" if c.attn_stride else "",
                f"summary {c.attn_summary}" if "fixed" in c.attn_pattern else ""]  # fmt: skip
    return text + (f" ({', '.join(s for s in settings if s)})" if any(settings) else "")


def _window_note(c) -> str:  # c: ModelConfig
    if "local" not in c.attn_pattern:
        return ""
    return f"; local layers keep {c.attn_window} tokens"


def format_layout(config, cfg: InfoCommand) -> str:  # config: ModelConfig
    """Each pipeline stage's per-rank bytes for the layout of `cfg` (the planner of `plan_layout_memory`)."""
    from scratchlm.model.sizing import plan_layout_memory
    from scratchlm.train.config import PARALLEL, PP_SCHEDULES

    if cfg.parallel not in PARALLEL or cfg.pp_schedule not in PP_SCHEDULES:
        raise ScratchlmError(f"--parallel must be one of {', '.join(PARALLEL)} and --pp-schedule one of "
                             f"{', '.join(PP_SCHEDULES)}")
    if min(cfg.world_size, cfg.tp, cfg.pp) < 1:
        raise ScratchlmError("--world-size, --tp and --pp must be positive integers")
    ranks = plan_layout_memory(config, cfg.batch, cfg.context, cfg.precision, cfg.world_size, cfg.parallel,
                               cfg.tp, cfg.pp, cfg.dp_shard, cfg.pp_schedule, cfg.pp_microbatches)
    dp = cfg.world_size // (cfg.tp * cfg.pp)
    lines = [f"per rank, {cfg.world_size} processes = pp {cfg.pp} x dp {dp} x tp {cfg.tp}, --parallel "
             f"{cfg.parallel}, micro-batch {cfg.batch} per data-parallel rank"
             + (f", {cfg.pp_schedule} with {cfg.pp_microbatches or cfg.pp} micro-batches" if cfg.pp > 1 else "")]
    for r in ranks:
        ckpt = r.train_bytes - r.activations_bytes + r.activations_checkpointed_bytes
        lines.append(f"  stage {r.stage} (blocks {r.blocks[0]}-{r.blocks[1] - 1}): weights {_bytes(r.weights_bytes)}, "
                     f"gradients {_bytes(r.grads_bytes)}, AdamW {_bytes(r.adamw_bytes)}, activations "
                     f"{_bytes(r.activations_bytes)} ({_bytes(r.activations_checkpointed_bytes)} checkpointed); "
                     f"total {_bytes(r.train_bytes)} ({_bytes(ckpt)} checkpointed)")
    return "\n".join(lines)


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g} "


def _bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"
