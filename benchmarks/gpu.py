"""One-shot GPU benchmark: everything the CUDA figures in the guides need, measured in one run, no network.

    python benchmarks/gpu.py                 # on an H100/H200: gpt2 124M shape, bf16, torch.compile (< 8 min)
    python benchmarks/gpu.py --smoke         # anywhere (CPU included): tiny shapes, fp32, < 1 min on 2 cores
    python benchmarks/gpu.py --only decode   # one or more sections again

Sections (each one's failure is recorded and the run goes on; the exit status is 1 if any failed):

1. train_step: one optimizer step (forward, loss, backward, clip, AdamW) of the `gpt2` shape (vocab 50,304,
   micro-batch 16 x 1024, bf16 autocast, torch.compile): scratchlm's GPT with its chunked head + cross-entropy
   (`model(x, targets=y, reduction="mean")`) against `transformers`' GPT2LMHeadModel (SDPA, `F.cross_entropy` on logits).
   Median s/step, tokens/s, TFLOP/s and MFU (6N + 12LCT FLOPs per token against the device's listed peak),
   peak memory (`torch.cuda.max_memory_allocated` over the timed steps), and the warm-up (compile) time.
1b. pretrain_cli: `scratchlm data prepare` + `scratchlm pretrain --preset gpt2` in a subprocess, as a user types
   them (fewer tokens per step and steps): the whole loop's tokens/s and MFU from its metrics.jsonl, beside the
   bare step's.
2. decode: greedy decode tokens/s at batch 1 and 64, scratchlm's KV-cache engine (`generate_ids`) against
   `transformers` `generate` with its cache, same random weights (built in HF, copied through the state-dict
   map), prefill excluded: B * (N - 1) / (time for N new tokens - time for 1). Speeds in bf16 weights on CUDA;
   the greedy tokens at batch 1 must be equal in fp32 (checked; in bf16 they are recorded, not required).
   Also the engine's compiled decode step (`Engine(compile=...)`: torch.compile's default mode, and
   "reduce-overhead", which replays each step as one CUDA graph), its tokens compared with the eager engine's.
3. loss_curve: `--curve-seconds` (default 180) of pretraining the gpt2 shape on GPT-2-tokenized
   tinyshakespeare (random windows of the first 90%, AdamW, bf16, compile): (seconds, step, loss) points,
   and the validation loss on the held-out last 10% every 30 s and at the end.
4. gpu_tests: `python -m pytest -q -m gpu` in a subprocess: its summary line and pass/fail counts.

It prints one table and writes one JSON file (`--out`, default gpu-benchmark.json; rewritten after every
section, so a run cut short keeps what it measured) with every figure, the device, the versions and the
settings.

No network is needed: the loss curve reads tinyshakespeare.txt and gpt2/{encoder.json,vocab.bpe} (2.6 MB)
from $SCRATCHLM_MIRROR, by default <repo>/shared/data or <repo>/../shared/data where one exists; pretrain_cli's
`data prepare` also reads wikitext-2-test.tokens (its default decontamination set). scratchlm is imported from
this tree's src/ (no install needed); torch, transformers, pytest and tiktoken (else a slower encoder) must be
there, and tyro for pretrain_cli (the CLI; carry its wheel to a bare GPU machine); fastapi is not needed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
# This tree's package, installed or not (a bare GPU machine has no install, and an editable one may point
# elsewhere); benchmarks/ for the sibling helpers (a folder of scripts, not a package).
sys.path[:0] = [str(REPO / "src"), str(Path(__file__).resolve().parent)]

from train_step import make_hf, make_step  # noqa: E402

from scratchlm import assets  # noqa: E402
from scratchlm import tokenizer as tokenizers  # noqa: E402
from scratchlm.device import resolve_device  # noqa: E402
from scratchlm.errors import ScratchlmError  # noqa: E402
from scratchlm.generate import SampleConfig, generate_ids  # noqa: E402
from scratchlm.generate.engine import Engine, make_sequences  # noqa: E402
from scratchlm.model import GPT, ModelConfig  # noqa: E402
from scratchlm.model.hf import config_from_hf, state_dict_from_hf  # noqa: E402
from scratchlm.train.optim import build_optimizer  # noqa: E402
from scratchlm.train.progress import flops_per_token, peak_flops  # noqa: E402

SECTIONS = ("train_step", "pretrain_cli", "decode", "loss_curve", "gpu_tests")


@dataclasses.dataclass
class Settings:
    """Everything that shapes the run; written to the JSON as is."""

    smoke: bool
    device: str
    precision: str  # of training (autocast): bf16 | fp32
    compile: bool
    model: dict[str, Any]  # ModelConfig.from_preset("gpt2", **model)
    batch: int
    seq: int
    warmup_steps: int
    timed_steps: int
    pretrain_steps: int  # of `scratchlm pretrain --preset gpt2` (pretrain_cli)
    pretrain_accum: int  # its micro-batches per step (--global-batch-tokens = batch * seq * this)
    decode_batches: list[int]
    prompt_len: int
    new_tokens: int
    decode_repeats: int
    decode_dtype: str  # bf16 | fp32
    decode_compile: list[str]  # torch.compile modes of the engine's compiled decode step also timed
    curve_seconds: float
    budget: float  # seconds for the whole run (0: none); the loss curve is shortened to fit
    curve_lr: float
    curve_warmup_steps: int
    log_every: int
    eval_every: float
    val_windows: int | None  # None: the whole held-out 10%
    run_tests: bool
    tests_timeout: float
    sections: list[str]


def settings_from(args: argparse.Namespace, device: torch.device) -> Settings:
    smoke = args.smoke
    precision = args.precision or ("fp32" if smoke or device.type != "cuda" else "bf16")
    model = {"vocab_size": 50304}  # GPT-2's 50,257 padded to a multiple of 64, as the gpt2 recipe trains it
    if smoke:  # GPT-2's vocabulary kept: the loss curve needs the GPT-2 tokenizer's ids
        model.update(n_layer=2, n_head=2, d_model=64, d_ff=256, context_length=64)
    return Settings(
        smoke=smoke,
        device=str(device),
        precision=precision,
        compile=args.compile if args.compile is not None else not smoke,
        model=model,
        batch=4 if smoke else 16,
        seq=64 if smoke else 1024,
        warmup_steps=1 if smoke else 3,  # compile happens in the first; the others settle the allocator
        timed_steps=3 if smoke else 20,
        pretrain_steps=4 if smoke else 30,
        pretrain_accum=2 if smoke else 8,
        decode_batches=[1, 4] if smoke else [1, 64],
        prompt_len=8 if smoke else 16,
        new_tokens=8 if smoke else 128,
        decode_repeats=2 if smoke else 3,
        decode_dtype=args.decode_dtype or ("bf16" if device.type == "cuda" and not smoke else "fp32"),
        decode_compile=[m for m in args.decode_compile if m != "none"]
        if args.decode_compile is not None
        else ([] if smoke else ["default", "reduce-overhead"]),
        curve_seconds=args.curve_seconds if args.curve_seconds is not None else (5.0 if smoke else 180.0),
        budget=args.budget if args.budget is not None else (0.0 if smoke else 450.0),
        curve_lr=3e-3 if smoke else 6e-4,  # the tiny smoke model needs a bigger step to move in 5 s
        curve_warmup_steps=5 if smoke else 100,
        log_every=1 if smoke else 10,  # reading the loss syncs the GPU: not every step there
        eval_every=2.0 if smoke else 30.0,
        val_windows=16 if smoke else None,
        run_tests=not args.skip_tests,
        tests_timeout=args.tests_timeout,
        sections=list(args.only or SECTIONS),
    )


# ---- helpers -----------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Drop compiled graphs and cached blocks, so the next model's peak memory is its own."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (strict JSON has neither), tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "name": cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=props.total_memory / 2**30,
            cudnn=torch.backends.cudnn.version(),
            peak_bf16_flops=peak_flops(device, "bf16"),
        )
    return info


# ---- 1. train step -----------------------------------------------------------------------------------------
def time_train(kind: str, cfg: ModelConfig, x: torch.Tensor, y: torch.Tensor, s: Settings) -> dict[str, Any]:
    """One implementation: warm-up (compile), then the median of the timed steps and their peak memory."""
    device = x.device
    torch.manual_seed(0)
    model = (make_hf(cfg) if kind == "hf" else GPT(cfg)).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())  # tied weights once, in both
    step = make_step(model, "hf" if kind == "hf" else "chunked", x, y, s.precision, s.compile)
    t0 = time.perf_counter()
    first_loss = step()
    for _ in range(s.warmup_steps - 1):
        step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":  # the peak from here: params, grads, AdamW state, the timed steps' activations
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], first_loss
    for _ in range(s.timed_steps):
        sync(device)
        t = time.perf_counter()
        loss = step()  # returns a float: includes the sync
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    tokens = x.numel()
    flops = flops_per_token(n_params, cfg.n_layer, cfg.d_model, s.seq) * tokens / med
    peak = peak_flops(device, s.precision)
    out = {
        "params": n_params,
        "s_per_step": med,
        "tokens_per_s": tokens / med,
        "tflops": flops / 1e12,
        "mfu": flops / peak if peak else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "warmup_s": warmup_s,
        "first_loss": first_loss,
        "last_loss": loss,
        "step_times_s": times,
    }
    del step, model
    free(device)
    return out


def section_train(s: Settings, device: torch.device, cfg: ModelConfig) -> dict[str, Any]:
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (s.batch, s.seq + 1), device=device)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    res: dict[str, Any] = {
        "batch": s.batch,
        "seq": s.seq,
        "precision": s.precision,
        "compile": s.compile,
        "peak_flops": peak_flops(device, s.precision),
        "errors": [],
    }
    for name, kind in (("scratchlm", "ours"), ("transformers", "hf")):
        progress(f"train_step: {name}")
        try:
            res[name] = time_train(kind, cfg, x, y, s)
        except Exception as exc:  # recorded, and the other implementation still runs
            res[name] = {"error": error_text(exc), "traceback": traceback.format_exc()}
            res["errors"].append(f"{name}: {error_text(exc)}")
        free(device)  # out here: inside `except` the traceback still holds the failed model
    return res


# ---- 1b. the user's command --------------------------------------------------------------------------------
def scratchlm_cli(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m scratchlm ARGS` with this tree's src/ (the GPU machine has no install)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def section_pretrain(s: Settings, device: torch.device) -> dict[str, Any]:
    """`scratchlm data prepare` + `scratchlm pretrain --preset gpt2` as a user types them (the gpt2 recipe's
    micro-batch, bf16 and compile; fewer tokens per step and steps), timed from its own metrics.jsonl: the whole
    loop (data, accumulation, clip, the spike guard's one read-back per step, logging) against the bare step."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="scratchlm-gpu-"))
    res: dict[str, Any] = {"errors": []}
    prep = [
        "data",
        "prepare",
        "--dataset",
        "tinyshakespeare",
        "--tokenizer",
        "gpt2",
        "--out",
        str(work / "shards"),
    ]
    steps, log_every = (4, 1) if s.smoke else (s.pretrain_steps, 5)
    pre = ["pretrain", "--preset", "gpt2", "--data", str(work / "shards"), "--out", str(work / "run")]
    pre += ["--max-steps", str(steps), "--log-every", str(log_every), "--device", str(device)]
    pre += ["--global-batch-tokens", str(s.batch * s.seq * s.pretrain_accum), "--warmup-steps", str(steps // 3)]
    if s.smoke:  # the tiny shape, fp32, eager
        pre += ["--model-preset", "gpt2-tiny", "--model.context-length", str(s.seq)]
        pre += ["--micro-batch-size", str(s.batch), "--compile", "False", "--precision", "fp32"]
        pre += ["--sample-at-end", "20"]
    for name, args in (("data_prepare", prep), ("pretrain", pre)):
        progress(f"pretrain_cli: scratchlm {name.replace('_', ' ')}")
        t = time.perf_counter()
        r = scratchlm_cli(args, timeout=s.tests_timeout)
        res[f"{name}_s"] = time.perf_counter() - t
        res[f"{name}_command"] = "scratchlm " + " ".join(args)
        if r.returncode != 0:
            res[f"{name}_output_tail"] = (r.stdout + r.stderr)[-4000:]
            res["errors"].append(
                f"scratchlm {name.replace('_', ' ')} exited {r.returncode}: "
                f"{(r.stderr.strip().splitlines() or [''])[-1][:200]}"
            )
            return res
    records = [
        json.loads(ln) for ln in (work / "run" / "metrics.jsonl").read_text().splitlines() if ln.strip()
    ]
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    timed = train[1:] or train  # the first log interval holds the compile
    res.update(
        steps=steps,
        accumulation=s.pretrain_accum,
        tokens_per_s=statistics.median(r["tokens_per_s"] for r in timed) if timed else None,
        mfu=statistics.median(r["mfu"] for r in timed) if timed and "mfu" in timed[0] else None,
        first_loss=train[0]["loss"] if train else None,
        last_loss=train[-1]["loss"] if train else None,
        val_loss=evals[-1].get("val_loss") if evals else None,
        checkpoint=(work / "run" / "latest").is_file(),
    )
    if not res["checkpoint"]:
        res["errors"].append("no checkpoint written")
    return res


# ---- 2. decode ---------------------------------------------------------------------------------------------
def same_weight_models(cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, GPT]:
    """The HF model and ours with its weights, through the HF state-dict map (as benchmarks/generate.py)."""
    torch.manual_seed(0)
    hf = make_hf(cfg).eval()
    ours_cfg = config_from_hf(hf.config.to_dict())
    ours = GPT(ours_cfg)
    missing, unexpected = ours.load_state_dict(state_dict_from_hf(ours_cfg, hf.state_dict()), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    ours.tie_weights()
    return hf.to(device), ours.to(device).eval()


def decoders(
    hf: torch.nn.Module | None, ours: GPT, prompt: torch.Tensor, compiled: Sequence[str] = ()
) -> dict[str, Callable[[int], list[list[int]]]]:
    """n -> the n greedy new tokens of every row, for each implementation (lists: both end in a sync).

    `compiled`: the engine's compiled decode step too, one entry per torch.compile mode ("default",
    "reduce-overhead"), each one engine kept across calls (its graphs are compiled in the first, untimed call).
    """
    mask = torch.ones_like(prompt)
    rows = prompt.tolist()

    def run_hf(n: int) -> list[list[int]]:
        out = hf.generate(
            prompt,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
        return out[:, prompt.shape[1] :].tolist()

    def run_ours(n: int) -> list[list[int]]:
        groups = generate_ids(ours, rows, SampleConfig(temperature=0, max_new_tokens=n))
        return [g[0].output for g in groups]

    def run_compiled(mode: str) -> Callable[[int], list[list[int]]]:
        engine = Engine(ours, slots=len(rows), compile=mode)

        def run(n: int) -> list[list[int]]:
            seqs = [g[0] for g in make_sequences(rows, SampleConfig(temperature=0, max_new_tokens=n))]
            for _ in engine.run(seqs):
                pass
            return [s.output for s in seqs]

        return run

    impls = {"scratchlm": run_ours} | {f"scratchlm_compiled_{m}": run_compiled(m) for m in compiled}
    return impls | ({"transformers": run_hf} if hf is not None else {})


def compare(a: list[list[int]], b: list[list[int]]) -> dict[str, Any]:
    first = next((i for i, (p, q) in enumerate(zip(a[0], b[0])) if p != q), None)
    return {"equal": a == b, "first_difference": first}


def section_decode(s: Settings, device: torch.device, cfg: ModelConfig) -> dict[str, Any]:
    res: dict[str, Any] = {
        "prompt_len": s.prompt_len,
        "new_tokens": s.new_tokens,
        "dtype": s.decode_dtype,
        "repeats": s.decode_repeats,
        "errors": [],
    }
    hf: torch.nn.Module | None
    try:
        hf, ours = same_weight_models(cfg, device)
    except Exception as exc:  # e.g. no transformers there: ours alone, on its own random weights
        res["errors"].append(f"transformers model: {error_text(exc)}")
        torch.manual_seed(0)
        hf, ours = None, GPT(cfg).to(device).eval()
    V, n = cfg.vocab_size, s.new_tokens
    prompt1 = torch.randint(0, V, (1, s.prompt_len), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        # Equality in fp32, where two correct implementations agree; bf16 roundings may flip a near-tie.
        if hf is not None:
            try:
                got = {k: fn(n) for k, fn in decoders(hf, ours, prompt1).items()}
                res["same_tokens_fp32_b1"] = compare(got["scratchlm"], got["transformers"])
                if not res["same_tokens_fp32_b1"]["equal"]:
                    res["errors"].append(
                        f"greedy tokens differ at batch 1 in fp32: {res['same_tokens_fp32_b1']}"
                    )
            except Exception as exc:  # the timed runs below record which one fails
                res["errors"].append(f"fp32 greedy check: {error_text(exc)}")
        if s.decode_dtype == "bf16":
            for m in (hf, ours):
                if m is not None:
                    m.to(torch.bfloat16)
        for B in s.decode_batches:
            progress(f"decode: batch {B}")
            prompt = torch.randint(0, V, (B, s.prompt_len), generator=torch.Generator().manual_seed(B)).to(
                device
            )
            impls = decoders(hf, ours, prompt, s.decode_compile)
            outs: dict[str, list[list[int]]] = {}
            best: dict[tuple[str, int], float] = {}
            failed: set[str] = set()
            # Repeats interleaved (ours, theirs, ours, ...), best of each: load bursts hit both alike;
            # the first call of each (warm-up) is not timed.
            for rep in range(s.decode_repeats + 1):
                for name, fn in impls.items():
                    if name in failed:
                        continue
                    try:
                        for k in (1, n):
                            t = time.perf_counter()
                            out = fn(k)
                            dt = time.perf_counter() - t
                            if rep:
                                best[name, k] = min(best.get((name, k), math.inf), dt)
                            if k == n:
                                outs[name] = out
                    except Exception as exc:  # recorded; the other implementation goes on
                        failed.add(name)
                        res[f"{name}_b{B}"] = {"error": error_text(exc), "traceback": traceback.format_exc()}
                        res["errors"].append(f"{name} batch {B}: {error_text(exc)}")
            for name in impls:
                if name not in failed:
                    t1, tn = best[name, 1], best[name, n]
                    res[f"{name}_b{B}"] = {
                        "tokens_per_s": B * (n - 1) / (tn - t1) if tn > t1 else None,
                        "total_s": tn,
                        "one_token_s": t1,
                    }
            if (
                B == 1 and "scratchlm" in outs and "transformers" in outs
            ):  # informational: in bf16 a near-tie may flip
                res[f"same_tokens_{s.decode_dtype}_b1"] = compare(outs["scratchlm"], outs["transformers"])
            for (
                mode
            ) in s.decode_compile:  # compiled against eager, same weights and dtype (equal in fp32: tests)
                name = f"scratchlm_compiled_{mode}"
                if name in outs and "scratchlm" in outs:
                    res[f"{name}_same_as_eager_b{B}"] = compare(outs[name], outs["scratchlm"])
    return res


# ---- 3. loss curve -----------------------------------------------------------------------------------------
def shakespeare_tokens() -> tuple[torch.Tensor, str]:
    text = assets.fetch("tinyshakespeare", progress=False).read_text(encoding="utf-8")
    tok = tokenizers.load("gpt2")
    try:
        return torch.tensor(tok.to_tiktoken().encode_ordinary(text), dtype=torch.long), "tiktoken"
    except ScratchlmError:  # no tiktoken installed: scratchlm's own encoder gives the same ids, slower
        return torch.tensor(tok.encode_ordinary(text), dtype=torch.long), "scratchlm"


@torch.no_grad()
def val_loss(model: GPT, val: torch.Tensor, s: Settings) -> float:
    """Mean NLL over non-overlapping windows of the held-out tokens (eager: no recompile for eval mode)."""
    model.eval()
    T = s.seq
    n = (len(val) - 1) // T
    if s.val_windows:
        n = min(n, s.val_windows)
    total, count = 0.0, 0
    for lo in range(0, n, s.batch):
        w = torch.stack([val[j * T : j * T + T + 1] for j in range(lo, min(lo + s.batch, n))])
        with autocast_for(val.device, s.precision):
            nll = model(w[:, :-1], targets=w[:, 1:])
        total, count = total + float(nll.sum()), count + nll.numel()
    model.train()
    return total / count


def section_curve(s: Settings, device: torch.device, cfg: ModelConfig, seconds: float) -> dict[str, Any]:
    data, encoder = shakespeare_tokens()
    n_val = len(data) // 10
    train, val = data[:-n_val].to(device), data[-n_val:].to(device)
    torch.manual_seed(0)
    model = GPT(cfg).to(device).train()
    opt = build_optimizer(model, s.curve_lr, 0.1, (0.9, 0.95), 1e-8, device.type)
    fwd = torch.compile(model) if s.compile else model
    # Windows drawn on the device: a host-to-device copy of the starts every step would wait for the GPU.
    g = torch.Generator(device=device).manual_seed(0)
    offsets = torch.arange(s.seq + 1, device=device)

    def step(i: int) -> torch.Tensor:
        starts = torch.randint(0, len(train) - s.seq - 1, (s.batch, 1), generator=g, device=device)
        w = train[starts + offsets]  # (B, T + 1): a random window per row
        for group in opt.param_groups:  # linear warm-up, then constant: the run's length is a time, not steps
            group["lr"] = s.curve_lr * min(1.0, i / s.curve_warmup_steps)
        with autocast_for(device, s.precision):
            loss = fwd(w[:, :-1], targets=w[:, 1:], reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    progress("loss_curve: first step (compile)")
    t = time.perf_counter()
    points = [[0.0, 1, float(step(1))]]  # [train seconds after the first step, step, loss]
    first_step_s = time.perf_counter() - t
    evals: list[list[float]] = []  # [train seconds, step, val loss]
    train_s, i, clock, next_eval = 0.0, 1, time.perf_counter(), s.eval_every
    progress(f"loss_curve: {seconds:.0f} s of training")
    while train_s < seconds:
        i += 1
        loss = step(i)
        if i % s.log_every == 0:
            value = float(loss)  # the sync that makes the clock honest
            train_s += time.perf_counter() - clock
            points.append([train_s, i, value])
            if train_s >= next_eval:  # eval time is kept off the training clock
                evals.append([train_s, i, val_loss(model, val, s)])
                next_eval += s.eval_every
            clock = time.perf_counter()
    final = val_loss(model, val, s)
    evals.append([train_s, i, final])
    res = {
        "seconds_asked": s.curve_seconds,
        "seconds_planned": seconds,
        "encoder": encoder,
        "train_tokens": len(train),
        "val_tokens": len(val),
        "batch": s.batch,
        "seq": s.seq,
        "lr": s.curve_lr,
        "warmup_steps": s.curve_warmup_steps,
        "precision": s.precision,
        "compile": s.compile,
        "first_step_s": first_step_s,
        "train_s": train_s,
        "steps": i,
        "tokens_per_s": (i - 1) * s.batch * s.seq / train_s if train_s else None,
        "first_loss": points[0][2],
        "last_loss": points[-1][2],
        "final_val_loss": final,
        "points": points,
        "val_points": evals,
        "errors": [],
    }
    if not all(math.isfinite(p[2]) for p in points):
        res["errors"].append("non-finite training loss")
    return res  # the model goes with this frame; main frees the memory after every section


def curve_seconds(s: Settings, elapsed: float) -> float:
    """--curve-seconds, shortened (to 30 s at least) when the sections before it used the budget up: the GPU
    session runs this once, under a hard time limit. 60 s stay for the curve's compile, evals and tests."""
    if not s.budget:
        return s.curve_seconds
    return max(min(s.curve_seconds, 30.0), min(s.curve_seconds, s.budget - elapsed - 60.0))


# ---- 4. GPU tests ------------------------------------------------------------------------------------------
def section_tests(s: Settings) -> dict[str, Any]:
    # --continue-on-collection-errors: a test file whose imports are missing there (the GPU image has no tyro
    # or fastapi) must not stop the gpu tests from running; its error is recorded as a note, not a failure.
    flags = "-q -m gpu -p no:cacheprovider --continue-on-collection-errors"
    cmd = [sys.executable, "-m", "pytest", *flags.split()]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
    }
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=s.tests_timeout)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return {
            "command": " ".join(cmd[1:]),
            "errors": [f"timed out after {s.tests_timeout:g} s"],
            "output_tail": tail[-4000:],
        }
    lines = [ln.strip("= ").strip() for ln in r.stdout.splitlines() if ln.strip()]
    summary = next(
        (
            ln
            for ln in reversed(lines)
            if re.search(r"\b(passed|failed|skipped|deselected|error|no tests)", ln)
        ),
        lines[-1] if lines else "",
    )
    counts = {
        k.rstrip("s"): int(v)
        for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", summary)
    }
    # -ra lists "ERROR path" for a file that did not import, "ERROR path::test" for a test's setup error
    collection = [ln for ln in lines if ln.startswith("ERROR ") and "::" not in ln.split(" ", 2)[1]]
    res: dict[str, Any] = {
        "command": " ".join(cmd[1:]),
        "returncode": r.returncode,
        "summary": summary,
        "counts": counts,
        "collection_errors": collection,
        "errors": [],
    }
    test_errors = counts.get("error", 0) - len(collection)
    if counts.get("failed", 0) or test_errors > 0 or r.returncode not in (0, 1, 5):  # 5: no test selected
        res["errors"].append(f"pytest exit {r.returncode}: {summary}")
    if res["errors"] or collection:
        res["output_tail"] = (r.stdout + r.stderr)[-4000:]
    return res


# ---- the table ---------------------------------------------------------------------------------------------
def fmt(v: Any, spec: str = ",.0f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else ""


def gib(d: dict[str, Any]) -> float | None:
    return d["peak_memory_bytes"] / 2**30 if d.get("peak_memory_bytes") else None


def pct(d: dict[str, Any]) -> float | None:
    return 100 * d["mfu"] if d.get("mfu") else None


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """(section, figure, scratchlm, transformers, ours/hf) rows; a 2-tuple is a note spanning the row."""
    rows: list[tuple[str, ...]] = []
    for name in SECTIONS:
        sec = report["sections"].get(name)
        if sec is None:
            continue
        r = sec.get("results") or {}
        if sec["status"] == "skipped":
            rows.append((name, f"skipped: {sec.get('reason', '')}"))
            continue
        if name == "train_step" and r:
            a, b = r.get("scratchlm", {}), r.get("transformers", {})
            for label, key, spec in (
                ("tokens/s", "tokens_per_s", ",.0f"),
                ("s/step (median)", "s_per_step", ".4f"),
                ("TFLOP/s", "tflops", ".3f"),
                ("params (M)", "params", None),
                ("warm-up s (compile)", "warmup_s", ".1f"),
                ("last loss", "last_loss", ".3f"),
            ):
                if key == "params":
                    rows.append(
                        (
                            name,
                            label,
                            fmt(a.get(key) and a[key] / 1e6, ".1f"),
                            fmt(b.get(key) and b[key] / 1e6, ".1f"),
                            "",
                        )
                    )
                    continue
                rows.append(
                    (name, label, fmt(a.get(key), spec), fmt(b.get(key), spec), ratio(a.get(key), b.get(key)))
                )
                if key == "tflops":
                    rows.append(
                        (name, "MFU %", fmt(pct(a), ".1f"), fmt(pct(b), ".1f"), ratio(pct(a), pct(b)))
                    )
                    rows.append(
                        (
                            name,
                            "peak memory GiB",
                            fmt(gib(a), ".2f"),
                            fmt(gib(b), ".2f"),
                            ratio(gib(a), gib(b)),
                        )
                    )
        if name == "pretrain_cli" and r:
            bare = (report["sections"].get("train_step", {}).get("results") or {}).get("scratchlm", {})
            rows += [
                (
                    name,
                    f"tokens/s ({r.get('steps')} steps x {r.get('accumulation')} micro)",
                    fmt(r.get("tokens_per_s")),
                    "",
                    "",
                ),
                (
                    name,
                    "loop / bare train_step tokens/s",
                    ratio(r.get("tokens_per_s"), bare.get("tokens_per_s")),
                    "",
                    "",
                ),
                (name, "MFU %", fmt(r["mfu"] * 100 if r.get("mfu") else None, ".1f"), "", ""),
                (
                    name,
                    "loss first -> last",
                    f"{fmt(r.get('first_loss'), '.3f')} -> {fmt(r.get('last_loss'), '.3f')}",
                    "",
                    "",
                ),
                (
                    name,
                    "val loss, checkpoint written",
                    f"{fmt(r.get('val_loss'), '.3f')}, {fmt(r.get('checkpoint'))}",
                    "",
                    "",
                ),
                (
                    name,
                    "wall s: data prepare, pretrain",
                    f"{fmt(r.get('data_prepare_s'), '.1f')}, {fmt(r.get('pretrain_s'), '.1f')}",
                    "",
                    "",
                ),
            ]
        if name == "decode" and r:
            for B in report["settings"]["decode_batches"]:
                a, b = r.get(f"scratchlm_b{B}", {}), r.get(f"transformers_b{B}", {})
                rows.append(
                    (
                        name,
                        f"tokens/s batch {B} ({r.get('dtype')})",
                        fmt(a.get("tokens_per_s"), ",.1f"),
                        fmt(b.get("tokens_per_s"), ",.1f"),
                        ratio(a.get("tokens_per_s"), b.get("tokens_per_s")),
                    )
                )
            for B in report["settings"]["decode_batches"]:
                for mode in report["settings"].get("decode_compile", []):
                    a, b = r.get(f"scratchlm_compiled_{mode}_b{B}", {}), r.get(f"transformers_b{B}", {})
                    same = r.get(f"scratchlm_compiled_{mode}_same_as_eager_b{B}", {}).get("equal")
                    rows.append(
                        (
                            name,
                            f"tokens/s batch {B}, compiled {mode} (= eager: {fmt(same)})",
                            fmt(a.get("tokens_per_s"), ",.1f"),
                            fmt(b.get("tokens_per_s"), ",.1f"),
                            ratio(a.get("tokens_per_s"), b.get("tokens_per_s")),
                        )
                    )
            for key in ("same_tokens_fp32_b1", "same_tokens_bf16_b1"):
                if key in r:
                    rows.append(
                        (name, f"same greedy tokens b1 ({key.split('_')[2]})", fmt(r[key]["equal"]), "", "")
                    )
        if name == "loss_curve" and r:
            rows += [
                (name, f"steps in {r['train_s']:.0f} s (+ first)", fmt(r["steps"]), "", ""),
                (name, "tokens/s", fmt(r["tokens_per_s"]), "", ""),
                (name, "first step s (compile)", fmt(r["first_step_s"], ".1f"), "", ""),
                (name, "train loss first -> last", f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}", "", ""),
                (name, "val loss (last 10%)", fmt(r["final_val_loss"], ".3f"), "", ""),
            ]
        if name == "gpu_tests" and r:
            c = r.get("counts", {})
            rows.append((name, "passed / failed", f"{c.get('passed', 0)} / {c.get('failed', 0)}", "", ""))
            rows.append((name, f"pytest -m gpu: {r.get('summary', '')}"))
            for line in r.get("collection_errors", []):
                rows.append((name, f"note, not collected: {line[6:][:150]}"))
        rows.append((name, "section s", fmt(sec.get("seconds"), ".1f"), "", ""))
        for err in sec.get("errors", []):
            rows.append((name, f"FAILED: {err[:220]}"))
    return rows


def render_table(report: dict[str, Any]) -> str:
    d, st = report["device"], report["settings"]
    head = ("section", "figure", "scratchlm", "transformers", "ours/hf")
    rows = table_rows(report)
    full = [head] + [r for r in rows if len(r) == 5]
    w = [max(len(r[i]) for r in full) for i in range(5)]
    title = (
        f"{'smoke' if st['smoke'] else 'gpt2 124M'} | {d['name']} | torch {d['torch']} | "
        f"transformers {d['transformers']} | train {st['precision']} compile {st['compile']} "
        f"batch {st['batch']} x {st['seq']}"
    )
    lines = [title]
    for r in [head, tuple("-" * n for n in w)] + rows:
        if len(r) == 2:
            lines.append(f"{r[0]:<{w[0]}}  {r[1]}")
        else:
            lines.append(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  {r[4]:>{w[4]}}")
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------------------
def progress(msg: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_json(report: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean(report), indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)  # whole or not at all: a run killed mid-write keeps the previous section's file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, no compile: an end-to-end check")
    p.add_argument("--out", type=Path, default=Path("gpu-benchmark.json"))
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda, cuda:N, cpu, mps")
    p.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default=None,
        help="training precision (default bf16 on CUDA, fp32 in --smoke and off CUDA)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training steps (default on, off in --smoke)",
    )
    p.add_argument(
        "--decode-dtype",
        choices=["bf16", "fp32"],
        default=None,
        help="weights' dtype for the decode speeds (default bf16 on CUDA, fp32 in --smoke and off CUDA)",
    )
    p.add_argument(
        "--decode-compile",
        nargs="+",
        choices=["default", "reduce-overhead", "none"],
        default=None,
        help="also time the engine's compiled decode step in these torch.compile modes "
        "(default: both on a GPU, none in --smoke)",
    )
    p.add_argument(
        "--curve-seconds", type=float, default=None, help="loss-curve training time (180; 5 in --smoke)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run, the loss curve shortened to fit (450; 0: none, --smoke's default)",
    )
    p.add_argument("--skip-tests", action="store_true", help="skip the `pytest -m gpu` section")
    p.add_argument("--tests-timeout", type=float, default=300.0)
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    args = p.parse_args(argv)
    if not os.environ.get("SCRATCHLM_MIRROR"):  # no network on the GPU machine: the data must be local
        found = next(
            (d for d in (REPO / "shared" / "data", REPO.parent / "shared" / "data") if d.is_dir()), None
        )
        if found:
            os.environ["SCRATCHLM_MIRROR"] = str(found)  # the pytest subprocess inherits it

    args.out.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.smoke and args.device == "auto":
        p.error("no CUDA device: the full run is for a GPU; use --smoke (or --device cpu to insist)")
    s = settings_from(args, device)
    cfg = ModelConfig.from_preset("gpt2", **s.model)
    report: dict[str, Any] = {
        "device": device_info(device),
        "settings": dataclasses.asdict(s),
        "mirror": os.environ.get("SCRATCHLM_MIRROR"),
        "model": dataclasses.asdict(cfg),
        "sections": {},
    }
    t_run = time.perf_counter()
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "train_step": lambda: section_train(s, device, cfg),
        "pretrain_cli": lambda: section_pretrain(s, device),
        "decode": lambda: section_decode(s, device, cfg),
        "loss_curve": lambda: section_curve(s, device, cfg, curve_seconds(s, time.perf_counter() - t_run)),
        "gpu_tests": lambda: section_tests(s),
    }
    for name in SECTIONS:
        if name not in s.sections:
            continue
        if name == "gpu_tests" and not s.run_tests:
            report["sections"][name] = {"status": "skipped", "reason": "--skip-tests", "errors": []}
            continue
        progress(f"{name} ...")
        t = time.perf_counter()
        try:
            results = runners[name]()
            errors = results.pop("errors", [])
            sec = {"status": "failed" if errors else "ok", "errors": errors, "results": results}
        except Exception as exc:  # one shot on the GPU: record it and go on to the next section
            traceback.print_exc()
            sec = {
                "status": "failed",
                "errors": [error_text(exc)],
                "traceback": traceback.format_exc(),
                "results": {},
            }
        free(device)
        sec["seconds"] = time.perf_counter() - t
        report["sections"][name] = sec
        report["total_s"] = time.perf_counter() - t_run
        write_json(report, args.out)
    report["ok"] = all(sec["status"] != "failed" for sec in report["sections"].values())
    report["total_s"] = time.perf_counter() - t_run
    report["table"] = render_table(report)
    write_json(report, args.out)
    print(report["table"])
    print(
        f"\n{'all sections ok' if report['ok'] else 'SOME SECTIONS FAILED'}; "
        f"{report['total_s']:.0f} s; figures in {args.out}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
