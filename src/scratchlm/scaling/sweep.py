"""IsoFLOP sweeps: for each compute budget C, train several family members N on D = C / F(N) tokens each.

    plan(config)   budgets x sizes -> PlannedRun list: depth, N, tokens, steps; every bad input refused here
    sweep(config)  check the folder, write sweep.json, train the runs not finished yet (in parallel processes on
                   CPU; one after another under torchrun or on a GPU), return the results table
    collect(out)   the results table: one row per finished run (runs/<name>/result.json), budget then N order

F(N) is the training FLOPs per token: 6N (Kaplan, Chinchilla) or the planner's count (`model.sizing`, attention
and head included). Each run is an ordinary pretraining run folder (`runs/<name>/`: config.yaml that
`scratchlm pretrain --config` repeats, metrics.jsonl, loss.png, the final checkpoint) trained by the one loop
(`train.loop.train` with `PretrainMode`), with a schedule fit for short runs: warm-up over the first
`warmup_fraction` of the steps, then cosine decay to lr * `min_lr_ratio` ending exactly at the run's last step
(Chinchilla: a cosine longer than the run overestimates its loss), validation only at the end.

Resumable: a run is finished when its `result.json` exists (written atomically, last); a rerun skips those,
resumes an interrupted run from its checkpoint when it has one (`--save-every`), else trains it again from the
start. Every run is seeded and runs on a fixed number of threads, so a killed-and-rerun sweep gives the same table
as an uninterrupted one. `sweep.json` records the data and the settings; a rerun with other data or other
per-run settings is refused (its runs would not be comparable), while new budgets or sizes only add runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.dataclass_io import from_dict, to_dict
from scratchlm.errors import ConfigError, ScratchlmError
from scratchlm.fs import atomic_write_text, check_out_dir
from scratchlm.scaling.family import FamilyConfig, depth_for_params, flops_per_token, params
from scratchlm.scaling.results import (
    RESULT_FILE,
    RUNS_DIR,
    SWEEP_FILE,
    SWEEP_FORMAT,
    collect,
    format_budget,
    is_sweep_folder,
    read_sweep,
    si,
    table,
    write_csv,
)
from scratchlm.train.config import PRECISIONS

SWEEP_VERSION = 1
FLOPS_CONVENTIONS = ("6N", "planner")
CHINCHILLA_TOKENS_PER_PARAM = 20


@dataclass
class RunSettings:
    """How every run of the sweep trains; a rerun must use the same (its runs must stay comparable)."""

    micro_batch_size: int = 16
    """Sequences per optimizer step (one micro-batch; tokens per step = this x the family's context_length)."""
    lr: float = 3e-3
    """Peak AdamW learning rate, the same for every size (an untuned LR per size biases the fitted exponents)."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr x this at the run's last step."""
    warmup_fraction: float = 0.1
    """Fraction of each run's steps spent warming up (at least one step)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices."""
    beta2: float = 0.99
    """AdamW beta2 (0.99 suits small batches)."""
    eval_batches: int = 50
    """Validation micro-batches scored at the end of each run, the same windows for every run (0: the whole split)."""
    seed: int = 1337
    """Seed for weights and data order, the same for every run."""
    flops: str = "6N"
    """Training FLOPs per token: 6N (Kaplan, Chinchilla) or planner (model.sizing: attention and head included)."""
    precision: str = "auto"
    """fp32, bf16, fp16 (GPU) or auto (the training loop's choice for the device)."""

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1:
            raise ConfigError(f"--run.micro-batch-size must be at least 1, got {self.micro_batch_size}")
        if not 0 < self.lr <= 1:
            raise ConfigError(f"--run.lr {self.lr:g} is not a plausible AdamW learning rate (0 < lr <= 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--run.min-lr-ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"--run.warmup-fraction must lie in [0, 1), got {self.warmup_fraction}")
        if self.eval_batches < 0:
            raise ConfigError(f"--run.eval-batches must be >= 0, got {self.eval_batches}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--run.precision {self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}"
            )
        if self.flops not in FLOPS_CONVENTIONS:
            raise ConfigError(
                f"--run.flops {self.flops!r} is unknown; use one of {', '.join(FLOPS_CONVENTIONS)}"
            )


@dataclass
class SweepConfig:
    """Train an IsoFLOP sweep: for each compute budget, several model sizes of one family, each on the tokens
    the budget allows; resumable (finished runs are skipped)."""

    data: Path | None = None
    """Shard folder made by `scratchlm data prepare` (train and val splits)."""
    budgets: str = ""
    """Compute budgets in training FLOPs, comma-separated: 1e13,3e13,1e14."""
    sizes: str = "auto"
    """auto (per budget, the `per_budget` family members nearest the 20-tokens-per-parameter size that fit it) or
    parameter counts, comma-separated (1e5,3e5,1e6; each becomes the family member of nearest size)."""
    out: Path = Path("runs/scaling")
    """Sweep folder: sweep.json, runs/<budget>_<depth>/ (one pretraining run each), results.csv."""
    per_budget: int = 5
    """With --sizes auto: model sizes per budget (at least 3: approach 2 fits a parabola)."""
    min_steps: int = 50
    """A size fits a budget when its tokens make at least this many optimizer steps."""
    family: FamilyConfig = field(default_factory=FamilyConfig)
    run: RunSettings = field(default_factory=RunSettings)
    workers: int = 0
    """Runs trained at once in separate processes (0: CPU cores / threads on CPU; 1 on a GPU or under torchrun)."""
    threads: int = 1
    """torch threads per run on CPU (fixed, so a rerun reproduces the same numbers)."""
    save_every: int = 0
    """Checkpoint each run every N steps so a killed run resumes (0: only at its end; a killed run restarts)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps (every run)."""
    dry_run: bool = False
    """Print the plan (runs, sizes, tokens, steps, FLOPs) and stop: nothing is trained or written."""

    def __post_init__(self) -> None:
        if self.per_budget < 3:
            raise ConfigError(
                f"--per-budget {self.per_budget}: fitting a parabola per budget needs at least 3 sizes; pass 3 or more"
            )
        if self.min_steps < 1:
            raise ConfigError(f"--min-steps must be at least 1, got {self.min_steps}")
        if self.workers < 0 or self.threads < 1:
            raise ConfigError("--workers must be >= 0 (0: automatic) and --threads at least 1")
        if self.save_every < 0:
            raise ConfigError(f"--save-every must be >= 0, got {self.save_every}")


@dataclass(frozen=True)
class PlannedRun:
    """One (budget, size) pair of the sweep, with the tokens and steps the budget gives it."""

    budget: float
    depth: int
    n_params: int
    flops_per_token: float
    steps: int
    tokens: int
    """steps x tokens per step: the budget's D = C / F(N), rounded to whole steps."""

    @property
    def name(self) -> str:
        return f"c{format_budget(self.budget)}_d{self.depth:02d}"

    @property
    def compute(self) -> float:
        """FLOPs actually spent (tokens rounded to whole steps)."""
        return self.tokens * self.flops_per_token


# ---- parsing and planning ----------------------------------------------------------------------------------------


def parse_numbers(text: str, flag: str, example: str) -> list[float]:
    """ "1e13,3e13" -> [1e13, 3e13]; k, M, G suffixes allowed (100k, 1.5M). One line naming the bad entry."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
    values = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            value = float(item[:-1]) * scale[item[-1].lower()] if item[-1].lower() in scale else float(item)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise ScratchlmError(
                f"{flag} {item!r} is not a positive number; pass a comma-separated list: {example}"
            )
        values.append(value)
    if not values:
        raise ScratchlmError(f"{flag} is empty; pass a comma-separated list: {example}")
    return sorted(set(values))


def tokens_per_step(config: SweepConfig) -> int:
    return config.run.micro_batch_size * config.family.context_length


def _candidate(config: SweepConfig, budget: float, depth: int, vocab_size: int) -> PlannedRun:
    f = flops_per_token(config.family, depth, vocab_size, config.run.flops)
    per_step = tokens_per_step(config)
    steps = round(budget / f / per_step)
    return PlannedRun(budget, depth, params(config.family, depth, vocab_size), f, steps, steps * per_step)


def plan(config: SweepConfig, vocab_size: int) -> list[PlannedRun]:
    """Every run of the sweep, budget by budget, smallest model first; refuses what cannot be trained or fitted."""
    budgets = parse_numbers(config.budgets, "--budgets", "1e13,3e13,1e14")
    family, per_step = config.family, tokens_per_step(config)
    smallest = _candidate(config, budgets[0], 1, vocab_size)
    one_batch = smallest.flops_per_token * per_step
    if budgets[0] < one_batch:
        raise ScratchlmError(
            f"budget {format_budget(budgets[0])} FLOPs is too small for the smallest model of the family (depth 1, "
            f"{smallest.n_params:,} parameters) to see one batch of {per_step:,} tokens ({one_batch:.2e} FLOPs); "
            f"pass budgets of at least {config.min_steps * one_batch:.1e} (--min-steps {config.min_steps} steps)"
        )
    runs: list[PlannedRun] = []
    explicit = config.sizes.strip().lower() != "auto"
    if explicit:
        wanted = parse_numbers(config.sizes, "--sizes", "auto or 1e5,3e5,1e6")
        depths = sorted({depth_for_params(family, n, vocab_size) for n in wanted})
        if len(depths) < len(wanted):
            shown = ", ".join(f"{si(n)}" for n in wanted)
            raise ScratchlmError(
                f"--sizes {shown} name only {len(depths)} distinct family members (depths "
                f"{', '.join(map(str, depths))}); pass sizes further apart (see --dry-run for the members' sizes)"
            )
        if len(depths) < 3:
            raise ScratchlmError(
                f"--sizes names {len(depths)} size(s); a parabola per budget needs at least 3: pass 3 or more "
                "(or --sizes auto)"
            )
    for budget in budgets:
        if explicit:
            chosen = [_candidate(config, budget, d, vocab_size) for d in depths]
            short = [r for r in chosen if r.steps < config.min_steps]
            if short:
                r = short[0]
                raise ScratchlmError(
                    f"size {si(r.n_params)} (depth {r.depth}) does not fit budget {format_budget(budget)}: its "
                    f"{si(r.tokens)} tokens make {r.steps} steps of {per_step:,}, fewer than --min-steps "
                    f"{config.min_steps}; drop that size, raise the budget or lower --min-steps"
                )
        else:
            fitting = [
                r
                for d in range(1, family.max_depth + 1)
                if (r := _candidate(config, budget, d, vocab_size)).steps >= config.min_steps
            ]
            if len(fitting) < 3:
                raise ScratchlmError(
                    f"budget {format_budget(budget)} fits {len(fitting)} family member(s) with at least --min-steps "
                    f"{config.min_steps} steps of {per_step:,} tokens; a parabola needs 3: raise the budget or lower "
                    "--min-steps or --run.micro-batch-size"
                )
            target = math.sqrt(budget / (6 * CHINCHILLA_TOKENS_PER_PARAM))  # the rule of thumb's N
            chosen = sorted(fitting, key=lambda r: abs(math.log(r.n_params / target)))[: config.per_budget]
        runs += sorted(chosen, key=lambda r: r.depth)
    return runs


# ---- the sweep folder ---------------------------------------------------------------------------------------------


def data_fingerprint(shard_dir: Path) -> dict[str, Any]:
    """What identifies the data: the tokenizer and the shards' checksums (not the folder's path)."""
    from scratchlm.data import read_manifest

    manifest = read_manifest(shard_dir)
    shards = {
        split: [s.get("sha256") for s in manifest["shards"].get(split, [])] for split in ("train", "val")
    }
    if not manifest["shards"].get("val"):
        raise ScratchlmError(
            f"{shard_dir} has no validation split; a sweep compares validation losses: prepare the data with "
            "`scratchlm data prepare --val-fraction 0.1`"
        )
    digest = hashlib.sha256(json.dumps([manifest["tokenizer"]["identity"], shards]).encode()).hexdigest()
    return {
        "sha256": digest,
        "path": str(shard_dir),
        "tokenizer": manifest["tokenizer"]["identity"],
        "vocab_size": manifest["tokenizer"]["vocab_size"],
        "train_tokens": sum(s["tokens"] for s in manifest["shards"]["train"]),
    }


def _settings(config: SweepConfig) -> dict[str, Any]:
    return {"family": to_dict(config.family), "run": to_dict(config.run)}


def check_sweep_folder(config: SweepConfig, fingerprint: dict[str, Any]) -> None:
    """--out is new, empty, or a sweep of the same data with the same per-run settings."""
    check_out_dir(config.out, is_sweep_folder, "scaling sweep", [config.data])
    if not is_sweep_folder(config.out):
        return
    old = read_sweep(config.out)
    if old.get("data", {}).get("sha256") != fingerprint["sha256"]:
        raise ScratchlmError(
            f"sweep folder {config.out} was made from other data ({old.get('data', {}).get('path')}, "
            f"{old.get('data', {}).get('train_tokens', '?'):,} train tokens) than --data {config.data} "
            f"({fingerprint['train_tokens']:,}); pass the same --data or a new --out"
        )
    new = _settings(config)
    defaults = {"family": to_dict(FamilyConfig()), "run": to_dict(RunSettings())}
    for section in ("family", "run"):
        before = old.get(section, {})
        for key in sorted(set(new[section]) | set(before)):
            # a setting an older sweep.json lacks (added since) must hold its default, which the older runs had
            was = before.get(key, defaults[section].get(key))
            if new[section].get(key) != was:
                raise ScratchlmError(
                    f"sweep folder {config.out} was trained with --{section}.{key.replace('_', '-')} "
                    f"{was!r}, not {new[section].get(key)!r}: its runs would not be "
                    "comparable; rerun with the same setting or pass a new --out"
                )


def write_sweep_file(config: SweepConfig, fingerprint: dict[str, Any]) -> None:
    from scratchlm.version import __version__

    record = {
        "format": SWEEP_FORMAT,
        "format_version": SWEEP_VERSION,
        "scratchlm": __version__,
        "data": fingerprint,
        **_settings(config),
    }
    atomic_write_text(config.out / SWEEP_FILE, json.dumps(record, indent=2) + "\n", "sweep file")


# ---- one run ------------------------------------------------------------------------------------------------------


def run_spec(config: SweepConfig, run: PlannedRun, vocab_size: int) -> dict[str, Any]:
    """Everything a worker process needs to train `run` (plain data: it crosses a process boundary)."""
    return {
        "run": asdict(run),
        "name": run.name,
        "data": str(config.data),
        "out": str(config.out / RUNS_DIR / run.name),
        "family": to_dict(config.family),
        "settings": to_dict(config.run),
        "vocab_size": vocab_size,
        "threads": config.threads,
        "save_every": config.save_every,
        "device": config.device,
    }


def train_run(spec: dict[str, Any]) -> dict[str, Any] | None:
    """Train one run of the sweep through the one training loop: its result row (an empty one on a torchrun rank
    other than 0), or None when a signal stopped it.

    A top-level function of plain data, so a `spawn` worker process can run it.
    """
    import torch

    from scratchlm.data import shard_tokenizer
    from scratchlm.model import GPT
    from scratchlm.scaling.family import member
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.loop import Trainer, seed_everything
    from scratchlm.train.modes.pretrain import PretrainMode

    run = PlannedRun(**spec["run"])
    family = from_dict(FamilyConfig, spec["family"], where="sweep family")
    s = from_dict(RunSettings, spec["settings"], where="sweep run settings")
    if spec["device"] in ("auto", "cpu"):
        torch.set_num_threads(spec["threads"])
    data, out = Path(spec["data"]), Path(spec["out"])
    # under torchrun the processes share each step's batch, so every run keeps the planned tokens per step
    world = int(os.environ.get("WORLD_SIZE", "1"))
    model_config = member(family, run.depth, spec["vocab_size"])
    cfg = TrainConfig(
        out=out,
        resume="auto",
        seed=s.seed,
        device=spec["device"],
        micro_batch_size=s.micro_batch_size // world,
        global_batch_tokens=s.micro_batch_size * family.context_length if world > 1 else None,
        max_steps=run.steps,
        lr=s.lr,
        min_lr=s.lr * s.min_lr_ratio,
        schedule="cosine",
        warmup_steps=max(1, round(s.warmup_fraction * run.steps)) if s.warmup_fraction else 0,
        weight_decay=s.weight_decay,
        beta2=s.beta2,
        precision=s.precision,
        eval_every=0,
        eval_batches=s.eval_batches,
        save_every=spec["save_every"],
        keep_last=1,
        log_every=max(1, run.steps // 50),
        progress=False,
        spike_window=0,  # a skipped step would spend compute the table does not count
    )
    tokenizer = shard_tokenizer(data)
    seed_everything(s.seed)
    model = GPT(model_config)
    mode = PretrainMode(data, family.context_length, seed=s.seed)
    # the resolved settings as `scratchlm pretrain` writes them: `pretrain --config <run>/config.yaml` repeats it
    run_config = {
        **to_dict(cfg),
        "preset": None,
        "data": str(data),
        "model_preset": family.base_preset,
        "model": to_dict(model_config),
        "sample_at_end": 0,
    }
    started = time.perf_counter()
    # the loop's Trainer rather than `train()`, which also ends the torchrun process group: a sweep keeps one
    # group for all its runs (destroying and re-creating it in one process can hang), `sweep` ends it
    result = Trainer(cfg, mode, model, tokenizer, run_config=run_config).run()
    if result.stopped in ("SIGINT", "SIGTERM"):
        return None
    if int(os.environ.get("RANK", "0")) != 0:
        return {}  # under torchrun rank 0 writes the result
    if result.val_loss is None or not math.isfinite(result.val_loss):
        raise ScratchlmError(
            f"run {run.name} ended without a finite validation loss ({result.val_loss}); "
            "lower --run.lr or check the data"
        )
    row = {
        **asdict(run),
        "name": run.name,
        "compute": run.compute,
        "val_loss": result.val_loss,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out / RESULT_FILE, json.dumps(row, indent=2) + "\n", "run result")
    return row


# ---- the sweep ----------------------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    planned: list[PlannedRun]
    trained: list[str]
    """Names of the runs trained by this call (the others were finished already)."""
    skipped: list[str]
    results: list[dict[str, Any]]
    """The results table of the whole folder after this call (`collect`)."""
    interrupted: bool = False


def _print(*args: Any) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, flush=True)


def format_plan(runs: list[PlannedRun], train_tokens: int) -> str:
    rows = [("run", "budget", "depth", "N", "tokens D", "D/N", "steps", "epochs")]
    for r in runs:
        rows.append(
            (
                r.name,
                format_budget(r.budget),
                str(r.depth),
                si(r.n_params),
                si(r.tokens),
                f"{r.tokens / r.n_params:.1f}",
                str(r.steps),
                f"{r.tokens / max(train_tokens, 1):.2f}",
            )
        )
    return table(rows)


def _workers(config: SweepConfig) -> int:
    if config.workers:
        if config.workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ScratchlmError(
                "--workers > 1 under torchrun: the processes already share each run; pass --workers 1"
            )
        return config.workers
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or config.device not in ("auto", "cpu"):
        return 1
    if config.device == "auto":
        import torch

        if torch.cuda.is_available() or torch.backends.mps.is_available():
            return 1
    return max(1, (os.cpu_count() or 1) // config.threads)


def sweep(config: SweepConfig) -> SweepOutcome:
    """Plan, check, then train every run of `config` not finished in `config.out`; see the module docstring."""
    if config.data is None:
        raise ScratchlmError("--data is required: a shard folder made by `scratchlm data prepare`")
    fingerprint = data_fingerprint(config.data)
    vocab_size = fingerprint["vocab_size"]
    runs = plan(config, vocab_size)
    if config.dry_run:
        _print(format_plan(runs, fingerprint["train_tokens"]))
        total = sum(r.compute for r in runs)
        _print(f"{len(runs)} runs, {total:.3g} training FLOPs in all ({config.run.flops} convention)")
        return SweepOutcome(runs, [], [], [])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.run.micro_batch_size % world:
        raise ScratchlmError(
            f"--run.micro-batch-size {config.run.micro_batch_size} is not a multiple of the {world} torchrun "
            "processes, which share each step's batch; pass a multiple of the process count"
        )
    check_sweep_folder(config, fingerprint)
    done = {r.name for r in runs if (config.out / RUNS_DIR / r.name / RESULT_FILE).is_file()}
    todo = [r for r in runs if r.name not in done]
    if int(os.environ.get("RANK", "0")) == 0:
        # sweep.json before runs/: under torchrun the other ranks check the folder meanwhile, and a folder
        # holding only runs/ is not a sweep yet
        config.out.mkdir(parents=True, exist_ok=True)
        write_sweep_file(config, fingerprint)
        (config.out / RUNS_DIR).mkdir(exist_ok=True)
    epochs = max((r.tokens for r in runs), default=0) / max(fingerprint["train_tokens"], 1)
    _print(
        f"sweep {config.out}: {len(runs)} runs ({len(done)} finished, {len(todo)} to train), "
        f"{sum(r.compute for r in todo):.3g} training FLOPs to go"
        + (f"; the longest run repeats the training data {epochs:.1f} times" if epochs > 1 else "")
    )
    trained: list[str] = []
    interrupted = False
    workers = min(_workers(config), max(len(todo), 1))
    specs = [run_spec(config, r, vocab_size) for r in sorted(todo, key=lambda r: -r.compute)]  # longest first
    if workers == 1:
        for i, spec in enumerate(specs, 1):
            row = train_run(spec)
            if row is None:
                interrupted = True
                break
            trained.append(spec["name"])
            if row:
                _report(i, len(specs), row)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a fresh interpreter per worker (fork would copy torch's thread pools and locks)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_run, spec): spec["name"] for spec in specs}
            for i, future in enumerate(as_completed(futures), 1):
                row = future.result()
                if row is None:
                    interrupted = True
                    continue
                trained.append(futures[future])
                _report(i, len(specs), row)
    if world > 1:
        from scratchlm.train.distributed import shutdown_distributed

        shutdown_distributed()
    results = collect(config.out) if int(os.environ.get("RANK", "0")) == 0 else []
    if results:
        write_csv(config.out, results)
    return SweepOutcome(runs, trained, sorted(done), results, interrupted)


def _report(i: int, n: int, row: dict[str, Any]) -> None:
    _print(
        f"[{i}/{n}] {row['name']}: N {si(row['n_params'])}, D {si(row['tokens'])}, "
        f"val loss {row['val_loss']:.4f} ({row['seconds']:.0f} s)"
    )
