"""`scratchlm finetune classify|sft|dpo|grpo`, `scratchlm classify`, `scratchlm lora merge`.

Each finetune command's settings are the training loop's `TrainConfig` flags (inherited: `--max-steps`,
`--lr`, `--out`, `--resume auto`, ...) plus the mode's own (`--data`, `--lora.rank`, ...). The command loads the
starting checkpoint, builds the mode and hands both to `scratchlm.train.train`: there is no other loop.

Every `--out` follows the output rule (`scratchlm.fs.check_out_dir`, docs/contracts.md), checked before
anything is written: a finetune reuses only a run folder of its own mode (to resume), `lora merge` replaces only
a folder it merged into before; neither ever writes into its --checkpoint (or its LoRA base) or --data, or over
a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import tyro

from scratchlm.cli.parsing import parse
from scratchlm.dataclass_io import to_dict
from scratchlm.errors import ConfigError, ScratchlmError
from scratchlm.fs import check_out_dir, is_checkpoint_from
from scratchlm.model.lora import LoRAConfig
from scratchlm.train.config import TrainConfig


def _split_commas(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


@dataclass
class _FinetuneBase(TrainConfig):
    """Settings shared by every finetuning mode: the starting checkpoint, the data, LoRA, and the loop's flags."""

    checkpoint: Path | None = None
    """Starting checkpoint (step or run folder): pretrained, imported from HF, or finetuned before."""
    data: Path | None = None
    """Training data file."""
    max_length: int | None = None
    """Longest example in tokens (longer ones are truncated); default: the model's context length."""
    val_fraction: float = 0.1
    """Fraction of the data held out for validation."""
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=0))
    """LoRA adapters (--lora.rank R, --lora.alpha, --lora.dropout, --lora.targets q,k,v,o,mlp): the same keys as
    the `lora` section of config.json. Rank 0 (the default): no LoRA, the selected weights train directly."""

    # the flags before `lora` became one section; they keep working
    FLAG_ALIASES: ClassVar[dict[str, str]] = {
        "lora_rank": "lora.rank", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
        "lora_targets": "lora.targets",
    }

    # the loop's defaults, tuned for finetuning rather than pretraining
    out: Path = Path("runs/finetune")
    """Run folder: step_NNNNNN/ checkpoints, `latest`, metrics.jsonl, loss.png, config.yaml."""
    micro_batch_size: int = 8
    """Examples per forward/backward pass on one process."""
    max_steps: int | None = 300
    """Stop after this many optimizer steps (None: no step limit)."""
    lr: float = 1e-4
    """Peak learning rate, reached at the end of warm-up."""
    min_lr: float = 1e-5
    """Learning rate at the end of the decay."""
    warmup_steps: int = 20
    """Linear warm-up steps from 0 to --lr."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay on matrices."""
    eval_every: int = 50
    """Evaluate on the validation split every N steps and at the end (0: only at the end)."""
    save_every: int = 100
    """Save a checkpoint every N steps (0: only at the end)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # --checkpoint and --data are checked in `_start`, not here: a recipe (--preset) builds this class
        # without them before the flags fill them in
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"--max-length must be at least 2, got {self.max_length}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})

    def lora_config(self) -> LoRAConfig | None:
        return self.lora if self.lora.enabled else None


@dataclass
class ClassifyConfig(_FinetuneBase):
    """Finetune a text classifier: a head on the last token's hidden state, trained on labelled texts."""

    text_field: str = "text"
    """Column (CSV/TSV header, JSONL key) holding the text."""
    label_field: str = "label"
    """Column holding the label."""
    columns: tuple[str, ...] = ()
    """Column names for a CSV/TSV WITHOUT a header row, comma-separated (the SMS spam file: label,text)."""
    test_fraction: float = 0.2
    """Fraction of the data held out for the final test report."""
    balance: str = "none"
    """Class balancing of the training split: none, undersample (to the rarest class) or weight (in the loss)."""
    train: str = "last"
    """What trains: head (the head only), last (the last --last-k blocks + final norm + head) or all."""
    last_k: int = 1
    """Blocks trained with --train last."""
    out: Path = Path("runs/classify")
    """Run folder: step_NNNNNN/ checkpoints, `latest`, metrics.jsonl, loss.png, report.json."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.columns = _split_commas(self.columns)


@dataclass
class SFTConfig(_FinetuneBase):
    """Instruction-tune a model on Alpaca JSON or chat JSONL, with a chat template stored in the checkpoint."""

    preset: str | None = None
    """Recipe from presets/recipe/ (e.g. arith-sft): these settings' values, overridden by --config and flags."""
    template: str = "auto"
    """Chat template: chatml, alpaca, plain, or auto (the checkpoint's own template if it has one, else chatml)."""
    mask_prompt: bool = True
    """Learn only the responses (false: learn the prompts too)."""
    pack: bool = False
    """Pack several examples into each row of --max-length tokens (no padding; loss never crosses examples)."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding)."""
    val_fraction: float = 0.05
    """Fraction of the data held out for validation."""
    out: Path = Path("runs/sft")
    """Run folder: step_NNNNNN/ checkpoints, `latest`, metrics.jsonl, loss.png."""


@dataclass
class DPOConfig(_FinetuneBase):
    """Preference-tune a model with DPO on chosen/rejected answer pairs."""

    beta: float = 0.1
    """DPO temperature: how far the policy may move from the reference (larger: stays closer)."""
    template: str = "auto"
    """Chat template: chatml, alpaca, plain, or auto (the checkpoint's own template if it has one, else chatml)."""
    drop_equal_pairs: bool = False
    """Skip pairs whose chosen answer equals the rejected one (by default they are an error)."""
    val_fraction: float = 0.05
    """Fraction of the pairs held out for validation."""
    lr: float = 5e-6
    """Peak learning rate (DPO wants a small one)."""
    min_lr: float = 5e-7
    """Learning rate at the end of the decay."""
    out: Path = Path("runs/dpo")
    """Run folder: step_NNNNNN/ checkpoints, `latest`, metrics.jsonl, loss.png."""


@dataclass
class GRPOConfig(_FinetuneBase):
    """Reinforce a model on prompts with checkable answers: GRPO over k sampled completions per prompt."""

    preset: str | None = None
    """Recipe from presets/recipe/ (e.g. arith-grpo): these settings' values, overridden by --config and flags."""
    verifier: str = "math"
    """Reward: math (last number equals the answer), exact, regex:P, python:MOD:FUNC or reward:RM_PATH."""
    template: str = "auto"
    """Chat template: chatml, alpaca, plain, or auto (the checkpoint's own template if it has one, else chatml)."""
    k: int = 8
    """Completions sampled per prompt (the group); at least 2."""
    max_new_tokens: int = 64
    """Longest completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the completions (1: the policy's own distribution, which the ratio assumes)."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0: all)."""
    std_normalize: bool = False
    """Divide each group's advantages by its reward standard deviation (GRPO's original); default: mean only."""
    loss_norm: str = "sequence"
    """sequence: mean over completions of their token mean (GRPO); token: mean over all completion tokens (DAPO)."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the frozen starting model (0: no reference model is kept)."""
    clip_eps: float = 0.2
    """PPO ratio clipping: the probability ratio is clipped to [1 - eps, 1 + eps]."""
    updates: int = 1
    """Optimizer steps on each batch of completions (PPO epochs); the ratio clipping matters from the second."""
    micro_batch_size: int = 8
    """Prompts per rollout and optimizer step (each sampled k times)."""
    val_fraction: float = 0.0
    """Unused by GRPO (rewards are logged for every rollout)."""
    eval_every: int = 0
    """GRPO has no validation loss; keep 0."""
    lr: float = 1e-5
    """Peak learning rate."""
    min_lr: float = 1e-6
    """Learning rate at the end of the decay."""
    warmup_steps: int = 5
    """Linear warm-up steps from 0 to --lr."""
    out: Path = Path("runs/grpo")
    """Run folder: step_NNNNNN/ checkpoints, `latest`, metrics.jsonl (reward, pass@1, length, KL, entropy), loss.png."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 2:
            raise ConfigError(
                f"--k {self.k}: GRPO compares the k completions of a prompt with each other, so with one the "
                "advantage is always 0 and nothing trains; use --k 2 or more (8 is typical)"
            )
        if self.updates > 1 and self.global_batch_tokens is not None:
            raise ConfigError("--updates > 1 repeats each rollout as its own optimizer step: leave "
                              "--global-batch-tokens unset (one rollout per step)")


# ---- finetune commands --------------------------------------------------------------------------------------------


def _start(cfg: _FinetuneBase, mode: str) -> tuple[Any, Any, dict[str, Any]]:
    """Check --out (`mode`: the run folder kind it may resume), seed, then load the starting model (adapters
    merged in), its tokenizer and config.json."""
    from scratchlm import checkpoint
    from scratchlm.cli.train import run_folder_test
    from scratchlm.train.loop import seed_everything

    if cfg.checkpoint is None:
        raise ConfigError("--checkpoint is required: the folder of the model to finetune")
    if cfg.data is None:
        raise ConfigError("--data is required: the training data file")
    step = checkpoint.resolve(cfg.checkpoint)
    lora = checkpoint.load_config(step).get("lora")
    base = checkpoint.base_path(step, lora) if isinstance(lora, dict) else None  # read() checks it, once
    check_out_dir(cfg.out, run_folder_test(type(cfg), mode), f"{mode} run", [cfg.checkpoint, step, base, cfg.data])
    seed_everything(cfg.seed)
    loaded = checkpoint.read(cfg.checkpoint, expect="lm")
    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    model.train()
    if cfg.max_length is None:
        cfg.max_length = model.config.context_length
    if cfg.max_length > model.config.context_length:
        raise ScratchlmError(
            f"--max-length {cfg.max_length} exceeds the model's context length {model.config.context_length}; "
            "lower it"
        )
    return model, tokenizer, config


def _template(name: str, config: dict[str, Any]) -> Any:
    from scratchlm.tokenizer.chat import ChatTemplate

    if name == "auto":
        section = config.get("chat_template")
        return ChatTemplate.from_config(section) if section else ChatTemplate.named("chatml")
    return ChatTemplate.named(name)


def classify(argv: list[str], prog: str) -> int:
    from scratchlm import checkpoint
    from scratchlm.data.finetune import load_classification
    from scratchlm.eval.classify import classification_report, format_report, predict_batches
    from scratchlm.fs import atomic_write_text
    from scratchlm.train.loop import train
    from scratchlm.train.modes.classify import ClassifyMode

    cfg = parse(ClassifyConfig, argv, prog)
    model, tokenizer, _ = _start(cfg, "classify")
    data = load_classification(
        cfg.data, tokenizer, cfg.text_field, cfg.label_field, cfg.columns or None, cfg.max_length,
        cfg.val_fraction, cfg.test_fraction, cfg.balance, cfg.seed,
    )
    pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
    mode = ClassifyMode(data, pad_id, cfg.max_length, cfg.train, cfg.last_k, cfg.lora_config(), cfg.checkpoint)
    result = train(cfg.train_config(), mode, model, tokenizer, run_config=to_dict(cfg))
    if result.checkpoint is None:
        return 0
    module = checkpoint.read(result.checkpoint).model
    reports = {}
    for split, batches in (("val", mode.val_batches(64)), ("test", mode.test_batches(64))):
        if batches:
            y_true, y_pred, _ = predict_batches(module, batches)
            reports[split] = classification_report(y_true, y_pred, data.labels)
            print(format_report(reports[split], split))
    report_path = Path(cfg.out) / "report.json"
    atomic_write_text(report_path, json.dumps({"checkpoint": str(result.checkpoint), **reports}, indent=1) + "\n")
    print(f"report: {report_path}")
    return 0


def sft(argv: list[str], prog: str) -> int:
    from scratchlm.cli.train import load_recipe, preset_from_argv
    from scratchlm.train.loop import train
    from scratchlm.train.modes.sft import SFTMode

    preset = preset_from_argv(argv)
    cfg = parse(SFTConfig, argv, prog, base=load_recipe(preset) if preset else None)
    model, tokenizer, config = _start(cfg, "sft")
    mode = SFTMode(
        cfg.data, _template(cfg.template, config), cfg.max_length, cfg.mask_prompt, cfg.pack, cfg.group_by_length,
        cfg.val_fraction, cfg.seed, cfg.lora_config(), cfg.checkpoint,
    )
    train(cfg.train_config(), mode, model, tokenizer, run_config=to_dict(cfg))
    return 0


def dpo(argv: list[str], prog: str) -> int:
    from scratchlm.device import resolve_device
    from scratchlm.train.loop import train
    from scratchlm.train.modes.dpo import DPOMode

    cfg = parse(DPOConfig, argv, prog)
    model, tokenizer, config = _start(cfg, "dpo")
    mode = DPOMode(
        cfg.data, _template(cfg.template, config), cfg.beta, cfg.max_length, cfg.val_fraction, cfg.seed,
        cfg.drop_equal_pairs, cfg.micro_batch_size, cfg.lora_config(), cfg.checkpoint,
        resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))),
    )
    train(cfg.train_config(), mode, model, tokenizer, run_config=to_dict(cfg))
    return 0


def grpo(argv: list[str], prog: str) -> int:
    import functools

    from scratchlm.cli.train import load_recipe, preset_from_argv
    from scratchlm.device import resolve_device
    from scratchlm.rl.verifiers import get_verifier, safe_reward
    from scratchlm.train.loop import train
    from scratchlm.train.modes.grpo import GRPOMode

    preset = preset_from_argv(argv)
    cfg = parse(GRPOConfig, argv, prog, base=load_recipe(preset) if preset else None)
    model, tokenizer, config = _start(cfg, "grpo")
    verifier = get_verifier(cfg.verifier, device=resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
    mode = GRPOMode(
        cfg.data, _template(cfg.template, config), functools.partial(safe_reward, verifier), cfg.k,
        cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.std_normalize, cfg.loss_norm, cfg.kl_coef,
        cfg.clip_eps, cfg.updates, cfg.lora_config(), cfg.checkpoint,
    )
    train(cfg.train_config(), mode, model, tokenizer, run_config=to_dict(cfg))
    return 0


# ---- scratchlm classify -------------------------------------------------------------------------------------------


@dataclass
class PredictConfig:
    """Classify texts with a finetuned classifier; prints `label<TAB>probability` per text."""

    texts: tyro.conf.Positional[tuple[str, ...]] = ()
    """Texts to classify."""
    checkpoint: Path | None = None
    """Classifier checkpoint (made by `scratchlm finetune classify`)."""
    file: Path | None = None
    """Also classify each line of this file."""
    device: str = "cpu"
    """cpu, cuda or mps."""


def predict(argv: list[str], prog: str) -> int:
    from scratchlm import checkpoint
    from scratchlm.device import resolve_device
    from scratchlm.eval.classify import classify_texts

    cfg = parse(PredictConfig, argv, prog)
    if cfg.checkpoint is None:
        raise ScratchlmError("--checkpoint is required: a folder written by `scratchlm finetune classify`")
    texts = list(cfg.texts)
    if cfg.file is not None:
        if not cfg.file.is_file():
            raise ScratchlmError(f"--file {cfg.file} does not exist; pass a text file with one text per line")
        texts += [line for line in cfg.file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ScratchlmError('give at least one text: scratchlm classify --checkpoint DIR "some text"')
    loaded = checkpoint.read(cfg.checkpoint, resolve_device(cfg.device), expect="classifier")
    module, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    for s in range(0, len(texts), 64):
        for label, p in classify_texts(module, tokenizer, texts[s : s + 64], config["classifier"], cfg.device):
            print(f"{label}\t{p:.4f}")
    return 0


# ---- scratchlm lora merge -----------------------------------------------------------------------------------------


@dataclass
class MergeConfig:
    """Fold a LoRA checkpoint's adapters into its base weights: a plain checkpoint any command (and HF export) reads."""

    checkpoint: Path | None = None
    """Adapter-only checkpoint (step or run folder) made with --lora-rank."""
    out: Path | None = None
    """Folder for the merged checkpoint."""


def lora_merge(argv: list[str], prog: str) -> int:
    from scratchlm import checkpoint

    cfg = parse(MergeConfig, argv, prog)
    if cfg.checkpoint is None or cfg.out is None:
        raise ScratchlmError("--checkpoint (the LoRA checkpoint) and --out (the merged folder) are both required")
    step = checkpoint.resolve(cfg.checkpoint)
    if not (step / checkpoint.ADAPTER_FILE).is_file():
        raise ScratchlmError(f"{step} has no {checkpoint.ADAPTER_FILE}: it is not a LoRA checkpoint, nothing to merge")
    base = checkpoint.base_path(step, checkpoint.load_config(step).get("lora") or {})  # read() checks it, once
    check_out_dir(
        cfg.out,
        is_checkpoint_from("merged_from", [checkpoint.HEAD_FILE]),
        "checkpoint written by `lora merge`",
        [cfg.checkpoint, step, base],
    )
    loaded = checkpoint.read(step)  # adapters merged, a tied head untied (exact)
    config = loaded.config
    reserved = ("format_version", "scratchlm_version", "model", "lora")
    extra = {k: v for k, v in config.items() if k not in reserved}
    extra["merged_from"] = {"adapters": str(step.resolve()), "base": str(base)}
    checkpoint.save_finetuned(cfg.out, loaded.model, loaded.tokenizer, extra)
    print(f"merged {step} into {cfg.out}")
    return 0
