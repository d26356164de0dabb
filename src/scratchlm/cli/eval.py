"""`scratchlm eval perplexity|mc|glue|superglue|judge|harness|verify`: load a checkpoint, run the evaluation,
print a table or JSON, write a report (and a plot when a run folder's steps make a series)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.cli.parsing import parse
from scratchlm.errors import ConfigError, ScratchlmError
from scratchlm.generate.config import SampleConfig
from scratchlm.generate.select import SelectConfig

DATASETS = {"wikitext-2": "wikitext-2-test", "wikitext-2-test": "wikitext-2-test", "wikitext-2-valid": "wikitext-2-valid"}
"""--dataset aliases -> asset names; any other text asset (tinyshakespeare, the-verdict) works by its name."""


@dataclass
class _EvalRun:
    """What every evaluation command shares: which checkpoint(s), where to run, how to report."""

    checkpoint: Path
    """Checkpoint step folder, or a run folder (its latest step; every step with --all-steps)."""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps, or auto (cuda when available)."""
    dtype: str = "auto"
    """auto (bf16 on a GPU that supports it, float32 on CPU), float32, bfloat16 or float16."""
    int8: bool = False
    """Weight-only int8 linear layers (per-channel scales) for the model evaluated."""
    json: bool = False
    """Print one JSON object instead of a table."""
    out: Path | None = None
    """Also write the full report to this JSON file."""
    all_steps: bool = False
    """With a run folder: evaluate every step folder, one row each, and plot the series (--plot)."""
    plot: Path | None = None
    """PNG of the metrics per step (with --all-steps; default: beside --out)."""


@dataclass
class PerplexityConfig(_EvalRun):
    """Sliding-window perplexity (Hugging Face guide), word perplexity and bits per byte of a text."""

    dataset: str | None = None
    """wikitext-2 (test split), wikitext-2-valid, or any text asset name (see `scratchlm fetch --list`)."""
    input: Path | None = None
    """A UTF-8 text file to evaluate instead of --dataset."""
    context: int | None = None
    """Window length in tokens (default: the model's context length)."""
    stride: int | None = None
    """Tokens the window advances by (default: context / 2); stride = context scores disjoint windows."""
    limit: int = 0
    """Score only the first N lines of the text, for a quick look (0: all of it)."""
    batch_size: int = 4
    """Windows per forward pass."""
    progress: bool = True
    """Show a progress bar on stderr."""


@dataclass
class _FewShotRun(_EvalRun):
    """What the log-likelihood commands (`eval mc`, `eval glue|superglue`) share."""

    shots: int = 0
    """Few-shot examples before each item, drawn from the task's separate (train) split (see docs/eval.md)."""
    limit: int = 0
    """Evaluate only the first N items of each task (0: all)."""
    seed: int = 1234
    """Seed of the few-shot draw: the same seed gives the same prompts."""
    batch_size: int = 8
    """Choices scored per forward pass."""


@dataclass
class MCConfig(_FewShotRun):
    """Few-shot multiple-choice accuracy (acc and length-normalised acc_norm) by log-likelihood."""

    task: str = ""
    """hellaswag, arc-easy, arc-challenge, mmlu, or a JSONL file of {"context", "choices", "label"} items."""
    fewshot_task: Path | None = None
    """A JSONL file of items to draw the shots from (default: the task's own few-shot split)."""


# ---- shared helpers ---------------------------------------------------------------------------------------------


def _device(name: str) -> Any:
    from scratchlm.device import resolve_device

    return resolve_device(name)


def _steps(checkpoint: Path, all_steps: bool) -> list[tuple[int | None, Path]]:
    """(step number, folder) to evaluate: the one checkpoint, or every complete step folder of a run."""
    from scratchlm.checkpoint import resolve

    if not all_steps:
        return [(None, resolve(checkpoint))]
    steps = sorted(p for p in Path(checkpoint).glob("step_*") if (p / "config.json").is_file())
    if not steps:
        raise ScratchlmError(f"--all-steps: {checkpoint} has no step_* checkpoint folders; pass a run folder")
    return [(int(p.name.split("_", 1)[1]), p) for p in steps]


def _load(step_dir: Path, device: Any, int8: bool = False) -> tuple[Any, Any]:
    from scratchlm import checkpoint

    model, tok = checkpoint.load(step_dir, device=device)
    if int8:
        from scratchlm.model.quant import quantize_int8

        quantize_int8(model)
    return model, tok


def _plot_path(plot: Path | None, out: Path | None, stem: str) -> Path | None:
    if plot is not None:
        return plot
    return out.with_suffix(".png") if out is not None else Path(f"{stem}.png")


def _emit(summary_rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    from scratchlm.eval.report import table

    if as_json:
        print(json.dumps(summary_rows[0] if len(summary_rows) == 1 else summary_rows))
    else:
        print(table(columns, [[row.get(c, "") for c in columns] for row in summary_rows]))


# ---- eval perplexity ----------------------------------------------------------------------------------------------


def _read_text(cfg: PerplexityConfig) -> tuple[str, str]:
    from scratchlm import assets

    if (cfg.dataset is None) == (cfg.input is None):
        raise ScratchlmError("give exactly one of --dataset NAME (e.g. wikitext-2) or --input FILE")
    if cfg.input is not None:
        try:
            return cfg.input.read_bytes().decode("utf-8"), str(cfg.input)  # no newline translation
        except FileNotFoundError:
            raise ScratchlmError(f"input file {cfg.input} does not exist; pass an existing UTF-8 text file") from None
        except OSError as e:  # a folder, no permission, ...
            raise ScratchlmError(f"cannot read --input {cfg.input}: {e.strerror or e}; pass a UTF-8 text file") from None
        except UnicodeDecodeError:
            raise ScratchlmError(f"input file {cfg.input} is not UTF-8 text; convert it first") from None
    assert cfg.dataset is not None
    name = DATASETS.get(cfg.dataset, cfg.dataset)
    return assets.fetch(name).read_bytes().decode("utf-8"), cfg.dataset


def perplexity(argv: list[str], prog: str) -> int:
    from scratchlm.eval.perplexity import perplexity_of_text
    from scratchlm.eval.report import plot_series, write_json

    cfg = parse(PerplexityConfig, argv, prog)
    text, source = _read_text(cfg)
    if cfg.limit < 0:
        raise ScratchlmError(f"--limit must be 0 (all lines) or a positive number of lines, got {cfg.limit}")
    if cfg.limit:
        text = "".join(text.splitlines(keepends=True)[: cfg.limit])
        source += f" (first {cfg.limit} lines)"
    device = _device(cfg.device)
    rows = []
    for step, folder in _steps(cfg.checkpoint, cfg.all_steps):
        model, tok = _load(folder, device, cfg.int8)
        context = cfg.context or model.config.context_length
        stride = cfg.stride or max(context // 2, 1)
        r = perplexity_of_text(model, tok, text, context, stride, cfg.batch_size, device, cfg.dtype, cfg.progress)
        row = {"checkpoint": str(folder), "source": source, **r.summary()}
        if step is not None:
            row = {"step": step, **row}
        rows.append(row)
    columns = (["step"] if cfg.all_steps else []) + ["token_perplexity", "word_perplexity", "bits_per_byte", "tokens"]
    _emit(rows, columns, cfg.json)
    if cfg.out is not None:
        write_json(cfg.out, {"command": "perplexity", "results": rows})
    if cfg.all_steps:
        path = _plot_path(cfg.plot, cfg.out, "perplexity")
        assert path is not None
        plot_series(path, [r["step"] for r in rows], {"word perplexity": [r["word_perplexity"] for r in rows],
                    "token perplexity": [r["token_perplexity"] for r in rows]}, "step", f"perplexity on {source}")
        print(f"plot: {path}", file=sys.stderr)
    return 0


# ---- eval mc ------------------------------------------------------------------------------------------------------


def mc(argv: list[str], prog: str) -> int:
    from scratchlm.eval.fewshot import evaluate_mc
    from scratchlm.eval.report import plot_series, write_json
    from scratchlm.eval.tasks import load_task

    cfg = parse(MCConfig, argv, prog)
    if not cfg.task:
        raise ScratchlmError("name a task: --task hellaswag|arc-easy|arc-challenge|mmlu or --task FILE.jsonl")
    task = load_task(cfg.task, str(cfg.fewshot_task) if cfg.fewshot_task else None)
    device = _device(cfg.device)
    rows, details = [], []
    for step, folder in _steps(cfg.checkpoint, cfg.all_steps):
        model, tok = _load(folder, device, cfg.int8)
        r = evaluate_mc(model, tok, task.items, task.pool, cfg.shots, cfg.seed, cfg.limit, cfg.batch_size, device,
                        cfg.dtype, task.name, progress=True, item_pools=task.item_pools)
        row = {"checkpoint": str(folder), **r.summary()}
        if step is not None:
            row = {"step": step, **row}
        rows.append(row)
        details.append({**row, "items": r.items})
    columns = (["step"] if cfg.all_steps else []) + ["task", "shots", "n", "acc", "acc_norm"]
    _emit(rows, columns, cfg.json)
    if cfg.out is not None:
        write_json(cfg.out, {"command": "mc", "results": details})
    if cfg.all_steps:
        path = _plot_path(cfg.plot, cfg.out, f"mc-{task.name}")
        assert path is not None
        plot_series(path, [r["step"] for r in rows], {"acc": [r["acc"] for r in rows],
                    "acc_norm": [r["acc_norm"] for r in rows]}, "step", f"{task.name}, {cfg.shots}-shot")
        print(f"plot: {path}", file=sys.stderr)
    return 0


# ---- eval glue / superglue ---------------------------------------------------------------------------------------


@dataclass
class BenchConfig(_FewShotRun):
    """GLUE or SuperGLUE tasks, zero- or few-shot by log-likelihood, with each task's official metric."""

    task: str = ""
    """Task names, comma-separated, or all (see docs/eval.md for the list)."""
    data: Path | None = None
    """The official archive (e.g. SST-2.zip) or its unpacked folder, instead of the named asset (one task only)."""
    templates: Path | None = None
    """A JSON file of prompt templates replacing the built-in ones (same layout as eval/templates/*.json)."""


def _bench(suite: str, argv: list[str], prog: str) -> int:
    from scratchlm.data.glue import get_task, task_names
    from scratchlm.eval.glue import METRICS, average, evaluate_task, load_task_data, template_for
    from scratchlm.eval.report import fmt, plot_series, write_json

    cfg = parse(BenchConfig, argv, prog)
    names = [t.strip() for t in cfg.task.split(",") if t.strip()]
    if not names:
        raise ScratchlmError(f"name a task: --task {'|'.join(task_names(suite))} (comma-separated, or all)")
    if names == ["all"]:
        names = task_names(suite)
    tasks = [get_task(suite, n) for n in names]  # an unknown name fails before any model loads
    if cfg.data is not None and len(tasks) > 1:
        raise ScratchlmError("--data is one task's archive; evaluate one --task at a time with it")
    if cfg.shots < 0 or cfg.limit < 0:
        raise ScratchlmError("--shots and --limit must be >= 0")
    templates = str(cfg.templates) if cfg.templates else None
    data = {t.key: (template_for(t, templates), *load_task_data(t, cfg.data, cfg.shots)) for t in tasks}
    device = _device(cfg.device)
    rows, details = [], []
    for step, folder in _steps(cfg.checkpoint, cfg.all_steps):
        model, tok = _load(folder, device, cfg.int8)
        results = []
        for t in tasks:
            template, records, pool = data[t.key]
            results.append(evaluate_task(model, tok, t, records, pool, cfg.shots, cfg.seed, cfg.limit,
                                         cfg.batch_size, device, cfg.dtype, template, progress=True))
        head = {"checkpoint": str(folder)} if step is None else {"step": step, "checkpoint": str(folder)}
        rows.append({**head, "suite": suite, "shots": cfg.shots, "seed": cfg.seed,
                     "tasks": [r.summary() for r in results], "average": average(results)})
        details.append({**rows[-1], "items": {r.task: r.items for r in results}})
    if cfg.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        from scratchlm.eval.report import table

        for row in rows:
            if "step" in row:
                print(f"step {row['step']}")
            lines = [[s["task"], s["shots"], s["n"], " ".join(f"{k}={fmt(v)}" for k, v in s.items() if k in metrics),
                      s["score"]] for s, metrics in zip(row["tasks"], (METRICS[t.key] for t in tasks))]
            if len(lines) > 1:
                lines.append(["average", "", "", "", row["average"]])
            print(table(["task", "shots", "n", "metrics", "score"], lines))
    if cfg.out is not None:
        write_json(cfg.out, {"command": suite, "results": details})
    if cfg.all_steps:
        path = _plot_path(cfg.plot, cfg.out, suite)
        assert path is not None
        series = {s["task"]: [r["tasks"][i]["score"] for r in rows] for i, s in enumerate(rows[0]["tasks"])}
        plot_series(path, [r["step"] for r in rows], series, "step", f"{suite}, {cfg.shots}-shot score")
        print(f"plot: {path}", file=sys.stderr)
    return 0


def glue(argv: list[str], prog: str) -> int:
    return _bench("glue", argv, prog)


def superglue(argv: list[str], prog: str) -> int:
    return _bench("superglue", argv, prog)


# ---- eval harness ---------------------------------------------------------------------------------------------------


@dataclass
class HarnessConfig:
    """EleutherAI's lm-evaluation-harness on a checkpoint (needs `pip install 'scratchlm[harness]'`)."""

    checkpoint: Path
    """Checkpoint step folder, or a run folder (its latest step)."""
    tasks: str = ""
    """lm_eval task names, comma-separated (e.g. hellaswag,arc_easy; local ones need --include-path)."""
    include_path: Path | None = None
    """A folder of task YAML files (offline use: tasks whose data are local JSONL files)."""
    num_fewshot: int | None = None
    """Few-shot examples per item (default: each task's own setting)."""
    limit: int = 0
    """Evaluate only the first N items of each task (0: all)."""
    batch_size: int = 8
    """Requests scored per forward pass."""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps, or auto (cuda when available)."""
    dtype: str = "auto"
    """auto (bf16 on a GPU that supports it, float32 on CPU), float32, bfloat16 or float16."""
    seed: int = 1234
    """Seed of lm_eval's few-shot draws and of sampling."""
    json: bool = False
    """Print lm_eval's per-task metrics as one JSON object instead of a table."""
    out: Path | None = None
    """Also write lm_eval's full results, with every scored sample, to this JSON file."""


def harness(argv: list[str], prog: str) -> int:
    from scratchlm.eval.report import table
    from scratchlm.fs import atomic_write_text

    cfg = parse(HarnessConfig, argv, prog)
    tasks = [t.strip() for t in cfg.tasks.split(",") if t.strip()]
    if not tasks:
        raise ScratchlmError("name the lm_eval tasks: --tasks hellaswag,arc_easy (local ones with --include-path)")
    if cfg.include_path is not None and not cfg.include_path.is_dir():
        raise ScratchlmError(f"--include-path {cfg.include_path} is not a folder; pass the folder of task YAML files")
    try:
        from scratchlm.eval import harness as lm_harness
    except ImportError as e:
        if (e.name or "").split(".")[0] != "lm_eval":
            raise
        raise ScratchlmError(
            "eval harness needs lm-evaluation-harness, which is not installed; pip install 'scratchlm[harness]'"
        ) from None
    from scratchlm.checkpoint import resolve

    results = lm_harness.evaluate(resolve(cfg.checkpoint), tasks, cfg.include_path, cfg.limit or None,
                                  cfg.num_fewshot, cfg.batch_size, cfg.device, cfg.dtype, cfg.seed,
                                  log_samples=cfg.out is not None)  # fmt: skip
    metrics = {
        task: {k.split(",")[0]: v for k, v in values.items() if k != "alias" and "_stderr" not in k}
        for task, values in results["results"].items()
    }
    if cfg.json:
        print(json.dumps(metrics))
    else:
        rows = [[task, name, value] for task, values in metrics.items() for name, value in values.items()]
        print(table(["task", "metric", "value"], rows))
    if cfg.out is not None:
        from lm_eval.utils import handle_non_serializable

        text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"
        atomic_write_text(cfg.out, text, what="report file")
    return 0


# ---- eval judge ---------------------------------------------------------------------------------------------------


@dataclass
class JudgeConfig:
    """Score instruction following 0-100 with a judge model behind an OpenAI-compatible endpoint."""

    checkpoint: Path
    """Checkpoint (step or run folder) whose responses are judged."""
    data: Path = Path("")
    """JSON list (or JSONL) of {"instruction", optional "input", optional "output" (a reference answer)}."""
    judge_url: str = ""
    """Base URL of the judge, e.g. http://127.0.0.1:8000 (…/v1 and …/v1/chat/completions work too)."""
    judge_model: str = ""
    """Model name sent to the judge endpoint."""
    api_key: str | None = None
    """Bearer token for the judge endpoint (default: $OPENAI_API_KEY if set)."""
    out: Path = Path("judge-report.json")
    """The JSON report, rewritten after every item; an existing report for the same data is resumed."""
    limit: int = 0
    """Judge only the first N instructions (0: all)."""
    int8: bool = False
    """Weight-only int8 linear layers (per-channel scales) for the model whose responses are judged."""
    max_new_tokens: int = 256
    """Longest response generated per instruction."""
    temperature: float = 0.0
    """Sampling temperature of the responses (0: greedy)."""
    seed: int = 1234
    """Sampling seed (used when temperature > 0)."""
    retries: int = 4
    """Retries of a judge call that fails to connect, times out or gets 429/5xx."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled at each retry."""
    timeout: float = 120.0
    """Seconds to wait for one judge reply."""
    worst: int = 5
    """How many of the lowest-scored items the report lists."""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps, or auto (cuda when available)."""
    json: bool = False
    """Print the summary as one JSON object instead of a table."""
    plot: Path | None = None
    """PNG histogram of the scores (default: beside --out)."""


def _responder(folder: Path, device: Any, cfg: JudgeConfig) -> Any:
    """instruction record -> the checkpoint's answer, through its chat template and `scratchlm.generate`."""
    from scratchlm.checkpoint import load_config
    from scratchlm.eval.judge import prompt_text
    from scratchlm.generate import SampleConfig, complete
    from scratchlm.generate.chat import chat_prompt
    from scratchlm.tokenizer.chat import ChatTemplate

    model, tok = _load(folder, device, cfg.int8)
    template = ChatTemplate.from_config(load_config(folder).get("chat_template"))

    def respond(record: dict[str, str]) -> str:
        prompt = chat_prompt(template, tok, [{"role": "user", "content": prompt_text(record)}])
        budget = model.config.context_length - len(prompt.ids)
        if budget < 1:
            return ""  # the instruction alone fills the context: an empty answer, judged as such
        sample = SampleConfig(max_new_tokens=min(cfg.max_new_tokens, budget), temperature=cfg.temperature,
                              seed=cfg.seed, stop=prompt.stop_strings)
        return complete(model, tok, [prompt.ids], sample, stop_ids=prompt.stop_ids)[0][0].text.strip()

    return respond


def judge(argv: list[str], prog: str) -> int:
    import os

    from scratchlm.checkpoint import resolve
    from scratchlm.eval.judge import BUCKETS, JudgeClient, read_instructions, run_judge
    from scratchlm.eval.report import fmt, plot_histogram, table

    cfg = parse(JudgeConfig, argv, prog)
    if not str(cfg.data) or str(cfg.data) == ".":
        raise ScratchlmError("pass --data FILE.json: a list of {\"instruction\", \"input\", \"output\"} records")
    if not cfg.judge_url or not cfg.judge_model:
        raise ScratchlmError("pass --judge-url URL and --judge-model NAME of an OpenAI-compatible judge")
    records = read_instructions(cfg.data)
    folder = resolve(cfg.checkpoint)
    client = JudgeClient(cfg.judge_url, cfg.judge_model, cfg.api_key or os.environ.get("OPENAI_API_KEY"),
                         cfg.retries, cfg.backoff, cfg.timeout)
    respond = _responder(folder, _device(cfg.device), cfg)

    def progress(done: int, total: int, item: dict[str, Any]) -> None:
        print(f"\rjudged {done}/{total} (last score {fmt(item['score'])})", end="", file=sys.stderr, flush=True)

    meta = {"checkpoint": str(folder), "data": str(cfg.data), "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature, "seed": cfg.seed}
    try:
        report = run_judge(records, respond, client, cfg.out, meta, cfg.limit, progress)
    finally:
        print(file=sys.stderr)
    summary = report["summary"]
    summary["worst"] = summary["worst"][: cfg.worst]
    if cfg.json:
        print(json.dumps(summary))
    else:
        print(table(["metric", "value"], [["mean score", summary["mean"]], ["judged", summary["judged"]],
                                          ["scored", summary["scored"]], ["missing score", summary["missing"]]]))
        print()
        print(table(["score", "items"], list(summary["distribution"].items())))
        print()
        print(table(["worst", "score", "instruction"],
                    [[w["index"], w["score"], w["instruction"][:60].replace("\n", " ")] for w in summary["worst"]]))
        print(f"report: {cfg.out}")
    scores = [it["score"] for it in report["items"] if it.get("score") is not None]
    if scores:
        path = cfg.plot or cfg.out.with_suffix(".png")
        plot_histogram(path, scores, [lo for lo, _ in BUCKETS] + [100], "judge score", f"{len(scores)} items")
    return 0


# ---- scratchlm eval verify ----------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class VerifyConfig(SelectConfig, SampleConfig):
    """Sample answers to prompt records (GSM8K, MATH or plain JSON/JSONL), reward each with a verifier, report
    accuracy; --n/--vote/--best-of choose among several samples. Every record's samples and rewards go to --out
    (JSONL), which --rescore re-scores with another verifier without a model."""

    checkpoint: Path | None = None
    """Checkpoint (step or run folder) that answers."""
    data: Path | None = None
    """JSON list or JSONL of records: GSM8K {"question", "answer": "... #### 42"}, MATH {"problem", "solution"},
    or {"prompt", "answer"} (see --format)."""
    verifier: str = "math"
    """math, exact, regex:PATTERN, python:MODULE:FUNC or reward:RM_PATH (see docs/rl.md)."""
    format: str = "auto"
    """Record format: auto (by the keys), gsm8k, math or plain."""
    limit: int = 0
    """Evaluate only the first N records (0: all)."""
    out: Path = Path("verify.jsonl")
    """Per-record results (JSONL): the record, every completion, its reward and error, the chosen index."""
    rescore: Path | None = None
    """Re-score the completions of an earlier --out file with --verifier instead of sampling (no checkpoint)."""
    batch_size: int = 8
    """Records sampled together in one engine run (each with all its samples)."""
    raw: bool = False
    """Continue the prompt as plain text instead of framing it with the checkpoint's chat template."""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps, or auto (cuda when available)."""
    int8: bool = False
    """Weight-only int8 linear layers (per-channel scales) for the model that answers."""
    json: bool = False
    """Print the summary as one JSON object instead of a table."""
    temperature: float = 0.0
    """Sampling temperature (0: greedy); --n > 1, --vote and --best-of need one above 0."""
    seed: int | None = 0
    """Sampling seed: the same seed gives the same samples (sample i of a record uses seed + i)."""

    def __post_init__(self) -> None:
        SampleConfig.__post_init__(self)
        SelectConfig.__post_init__(self)
        if self.samples(self.n) > 1 and self.temperature == 0:
            raise ConfigError(
                f"{self.samples(self.n)} samples per record at --temperature 0 are all the same answer; "
                "pass --temperature (e.g. 0.7)"
            )
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


def verify(argv: list[str], prog: str) -> int:
    from scratchlm.eval.report import fmt, table
    from scratchlm.eval.verify import run_verify
    from scratchlm.fs import atomic_write_text
    from scratchlm.rl.verifiers import get_verifier

    cfg = parse(VerifyConfig, argv, prog)
    device = _device(cfg.device)
    verifier = get_verifier(cfg.verifier, device=device)
    if cfg.rescore is not None:
        rows: Any = _read_rows(cfg.rescore)
    else:
        rows = _sampled_rows(cfg, device, verifier)

    def progress(done: int, row: dict[str, Any]) -> None:
        print(f"\rverified {done} record(s)", end="", file=sys.stderr, flush=True)

    try:
        done, summary = run_verify(rows, verifier, progress)
    finally:
        print(file=sys.stderr)
    atomic_write_text(cfg.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done), what="results file")
    summary = {"verifier": cfg.verifier, **summary, "out": str(cfg.out)}
    if cfg.json:
        print(json.dumps(summary))
    else:
        print(table(["metric", "value"], [[k, fmt(v)] for k, v in summary.items() if v is not None]))
    if summary["errors"]:
        print(f"note: the verifier raised on {summary['errors']} sample(s), scored 0 ({summary['first_error']})",
              file=sys.stderr)
    return 0


def _sampled_rows(cfg: VerifyConfig, device: Any, verifier: Any) -> Any:
    from scratchlm.checkpoint import load_config, resolve
    from scratchlm.cli.generate import sample_config
    from scratchlm.generate.select import Selector, sample_rows
    from scratchlm.rl.records import load_prompt_records
    from scratchlm.rl.verifiers import check_tokenizer
    from scratchlm.tokenizer.chat import ChatTemplate

    if cfg.checkpoint is None or cfg.data is None:
        raise ScratchlmError("pass --checkpoint (the model that answers) and --data (the records), or --rescore FILE")
    if cfg.out.resolve() == cfg.data.resolve():
        raise ScratchlmError(f"--out {cfg.out} is the --data file; write the results to another file")
    records = load_prompt_records(cfg.data, cfg.format, cfg.limit)
    folder = resolve(cfg.checkpoint)
    model, tok = _load(folder, device, cfg.int8)
    check_tokenizer(verifier, tok, "the model evaluated")
    config = load_config(folder)
    template = None if cfg.raw else ChatTemplate.from_config(config.get("chat_template"))
    selector = Selector(cfg, tok, device)
    return sample_rows(model, tok, template, records, sample_config(cfg), selector, cfg.batch_size)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of an earlier `eval verify --out` file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ScratchlmError(f"cannot read --rescore {path} ({e.strerror or e}); pass an `eval verify --out` file") from None
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not {"record", "completions", "chosen"} <= set(row):
            raise ScratchlmError(f"{path}: line {i + 1} is not an `eval verify` result row; pass an --out file of it")
        rows.append(row)
    return rows
