"""`scratchlm finetune classify|sft|dpo|reward|grpo`, `scratchlm classify`, `scratchlm score`, `scratchlm lora
merge`.

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
from scratchlm.model.prefix import PrefixConfig
from scratchlm.train.config import TrainConfig

PEFTS = ("none", "lora", "prefix", "prompt")


def _split_commas(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


@dataclass
class _FinetuneBase(TrainConfig):
    """Settings shared by every finetuning mode: the starting checkpoint, the data, adapters, and the loop's flags."""

    checkpoint: Path | None = None
    """Starting checkpoint (step or run folder): pretrained, imported from HF, or finetuned before."""
    data: Path | None = None
    """Training data file."""
    max_length: int | None = None
    """Longest example in tokens (longer ones are truncated); default: the model's context length."""
    val_fraction: float = 0.1
    """Fraction of the data held out for validation."""
    peft: str = "none"
    """Parameter-efficient finetuning, the base frozen: none (the selected weights train directly), lora (adapters,
    --lora.*), prefix (learned keys/values before every layer's attention, --prefix-length) or prompt (learned
    input embeddings, --prefix-length). --lora.rank R alone still means lora."""
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=0))
    """LoRA adapters (--lora.rank R, --lora.alpha, --lora.dropout, --lora.targets q,k,v,o,mlp): the same keys as
    the `lora` section of config.json. Rank 0 (the default): no LoRA, the selected weights train directly."""
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    """Prefix/prompt tuning (--prefix.length L or --prefix-length L, --prefix.reparam H): the keys of config.json's
    `prefix` section. Used with --peft prefix or --peft prompt."""

    # the flags before `lora` became one section; they keep working
    FLAG_ALIASES: ClassVar[dict[str, str]] = {
        "lora_rank": "lora.rank", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
        "lora_targets": "lora.targets", "prefix_length": "prefix.length", "prefix_reparam": "prefix.reparam",
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
        if self.peft not in PEFTS:
            raise ConfigError(f"--peft {self.peft!r} is unknown; use one of {', '.join(PEFTS)}")
        if self.peft == "none" and self.lora.enabled:
            self.peft = "lora"  # today's --lora.rank R
        elif self.peft == "lora" and not self.lora.enabled:
            self.lora = dataclasses.replace(self.lora, rank=LoRAConfig.rank)  # --peft lora alone: the default rank
        elif self.peft in ("prefix", "prompt") and self.lora.enabled:
            raise ConfigError(f"--peft {self.peft} and --lora.rank {self.lora.rank} exclude each other; drop one")
        if self.peft == "prompt" and self.prefix.reparam:
            raise ConfigError("--prefix.reparam is for --peft prefix; prompt tuning learns the embeddings directly")

    def data_is_optional(self) -> bool:
        return False

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})

    def lora_config(self) -> LoRAConfig | None:
        return self.lora if self.peft == "lora" else None

    def adapters(self) -> dict[str, Any]:
        """The mode's adapter arguments: lora, or prefix + prefix_kind."""
        if self.peft in ("prefix", "prompt"):
            return {"lora": None, "prefix": self.prefix, "prefix_kind": self.peft}
        return {"lora": self.lora_config()}


@dataclass
class ClassifyConfig(_FinetuneBase):
    """Finetune a text classifier: a head on the last token's hidden state, trained on labelled texts."""

    text_field: str = "text"
    """Column (CSV/TSV header, JSONL key) holding the text."""
    label_field: str = "label"
    """Column holding the label."""
    columns: tuple[str, ...] = ()
    """Column names for a CSV/TSV WITHOUT a header row, comma-separated (the SMS spam file: label,text)."""
    pair_field: str = ""
    """Second text column of a sentence-pair task (joined to --text-field by a newline); empty: single texts."""
    task: str = ""
    """A GLUE/SuperGLUE classification task (glue:mrpc, glue:rte, superglue:boolq, ...): trains on its official
    train split, reports on its dev split with the official metric; --data is then the official zip or folder
    (default: the named asset)."""
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

    def data_is_optional(self) -> bool:
        return bool(self.task)


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
class RewardConfig(_FinetuneBase):
    """Train a reward model: a scalar head on the last token, Bradley-Terry loss on chosen/rejected pairs."""

    template: str = "auto"
    """Chat template: chatml, alpaca, plain, or auto (the checkpoint's own template if it has one, else chatml)."""
    drop_equal_pairs: bool = False
    """Skip pairs whose chosen answer equals the rejected one (by default they are an error)."""
    train: str = "all"
    """What trains: head (the head only), last (the last --last-k blocks + final norm + head) or all."""
    last_k: int = 1
    """Blocks trained with --train last."""
    lr: float = 1e-5
    """Peak learning rate."""
    min_lr: float = 1e-6
    """Learning rate at the end of the decay."""
    out: Path = Path("runs/reward")
    """Run folder: step_NNNNNN/ checkpoints, `latest`, metrics.jsonl, loss.png, report.json (held-out accuracy)."""


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
    if cfg.data is None and not cfg.data_is_optional():
        raise ConfigError("--data is required: the training data file")
    step = checkpoint.resolve(cfg.checkpoint)
    found = checkpoint.adapter_section(checkpoint.load_config(step))
    if found is not None and found[0] == "prefix":  # its prefix is no weight of the model to train on from
        raise ScratchlmError(
            f"{cfg.checkpoint} is a {found[1].get('kind', 'prefix')}-tuned checkpoint; finetune from its base "
            f"checkpoint ({checkpoint.base_path(step, found[1], 'prefix')}) instead"
        )
    base = checkpoint.base_path(step, found[1], found[0]) if found else None  # read() checks it, once
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
    task = _classify_task(cfg.task) if cfg.task else None  # a bad name fails before the model loads
    model, tokenizer, _ = _start(cfg, "classify")
    if task is not None:
        data = _task_data(task, cfg, tokenizer)
    else:
        assert cfg.data is not None
        data = load_classification(
            cfg.data, tokenizer, cfg.text_field, cfg.label_field, cfg.columns or None, cfg.max_length,
            cfg.val_fraction, cfg.test_fraction, cfg.balance, cfg.seed, cfg.pair_field,
        )
    pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
    mode = ClassifyMode(data, pad_id, cfg.max_length, cfg.train, cfg.last_k,
                        base_checkpoint=cfg.checkpoint, **cfg.adapters())
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
            if task is not None and split == "test":
                reports[split]["official"] = _official(task.key, y_true, y_pred)
                values = reports[split]["official"]
                print(f"{task.key} dev, official metric: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    report_path = Path(cfg.out) / "report.json"
    atomic_write_text(report_path, json.dumps({"checkpoint": str(result.checkpoint), **reports}, indent=1) + "\n")
    print(f"report: {report_path}")
    return 0


def _classify_task(key: str) -> Any:
    """`glue:mrpc` -> its TaskSource, if it is a classification task."""
    from scratchlm.data.glue import TASKS, get_task

    suite, _, name = key.partition(":")
    task = get_task(suite, name) if name else None
    if task is None:
        raise ScratchlmError(f"--task {key!r}: write SUITE:TASK, e.g. glue:mrpc or superglue:boolq")
    if not task.text_fields:
        usable = ", ".join(k for k, t in TASKS.items() if t.text_fields)
        raise ScratchlmError(f"--task {key} is not a text classification task; use one of {usable}")
    return task


def _task_data(task: Any, cfg: ClassifyConfig, tokenizer: Any) -> Any:
    """The task's official train split (minus --val-fraction for validation) and its dev split as the test split;
    the text fields of a pair are joined by a newline."""
    from scratchlm.data.finetune import PAIR_SEPARATOR, classification_from_splits
    from scratchlm.data.glue import load_records

    def examples(split: str) -> list[tuple[str, int]]:
        records = load_records(task, split, cfg.data)
        return [(PAIR_SEPARATOR.join(r.fields[f] for f in task.text_fields), int(r.label)) for r in records]

    assert cfg.max_length is not None
    return classification_from_splits(task.labels, examples("train"), examples("eval"), tokenizer, cfg.max_length,
                                      cfg.val_fraction, cfg.balance, cfg.seed)


def _official(key: str, y_true: list[int], y_pred: list[int]) -> dict[str, float]:
    from scratchlm.data.glue import Record
    from scratchlm.eval.glue import score_metrics

    return score_metrics(key, [Record({}, y) for y in y_true], y_pred)


def sft(argv: list[str], prog: str) -> int:
    from scratchlm.cli.train import load_recipe, preset_from_argv
    from scratchlm.train.loop import train
    from scratchlm.train.modes.sft import SFTMode

    preset = preset_from_argv(argv)
    cfg = parse(SFTConfig, argv, prog, base=load_recipe(preset) if preset else None)
    model, tokenizer, config = _start(cfg, "sft")
    mode = SFTMode(
        cfg.data, _template(cfg.template, config), cfg.max_length, cfg.mask_prompt, cfg.pack, cfg.group_by_length,
        cfg.val_fraction, cfg.seed, base_checkpoint=cfg.checkpoint, **cfg.adapters(),
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
        cfg.drop_equal_pairs, cfg.micro_batch_size, base_checkpoint=cfg.checkpoint,
        device=resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))), **cfg.adapters(),
    )
    train(cfg.train_config(), mode, model, tokenizer, run_config=to_dict(cfg))
    return 0


def reward(argv: list[str], prog: str) -> int:
    from scratchlm.fs import atomic_write_text
    from scratchlm.rl.reward import RewardScorer, pair_accuracy
    from scratchlm.train.loop import train
    from scratchlm.train.modes.reward import RewardMode

    cfg = parse(RewardConfig, argv, prog)
    model, tokenizer, config = _start(cfg, "reward")
    mode = RewardMode(
        cfg.data, _template(cfg.template, config), cfg.max_length, cfg.val_fraction, cfg.seed, cfg.drop_equal_pairs,
        cfg.train, cfg.last_k, base_checkpoint=cfg.checkpoint, **cfg.adapters(),
    )
    result = train(cfg.train_config(), mode, model, tokenizer, run_config=to_dict(cfg))
    if result.checkpoint is None:
        return 0
    report: dict[str, Any] = {"checkpoint": str(result.checkpoint)}
    if mode.val_pairs:
        scorer = RewardScorer(result.checkpoint, cfg.device, batch_size=cfg.micro_batch_size)
        report["val"] = pair_accuracy(scorer, mode.val_pairs)
        print(f"held-out pair accuracy {report['val']['accuracy']:.4f} on {report['val']['pairs']} pairs "
              f"(mean margin {report['val']['mean_margin']:.3f})")
    report_path = Path(cfg.out) / "report.json"
    atomic_write_text(report_path, json.dumps(report, indent=1) + "\n")
    print(f"report: {report_path}")
    return 0


def grpo(argv: list[str], prog: str) -> int:
    import functools

    from scratchlm.cli.train import load_recipe, preset_from_argv
    from scratchlm.device import resolve_device
    from scratchlm.rl.verifiers import check_tokenizer, get_verifier, safe_reward
    from scratchlm.train.loop import train
    from scratchlm.train.modes.grpo import GRPOMode

    preset = preset_from_argv(argv)
    cfg = parse(GRPOConfig, argv, prog, base=load_recipe(preset) if preset else None)
    if cfg.peft in ("prefix", "prompt"):
        raise ConfigError(f"finetune grpo trains fully or with --peft lora; --peft {cfg.peft} is for classify, sft, "
                          "dpo and reward")
    model, tokenizer, config = _start(cfg, "grpo")
    verifier = get_verifier(cfg.verifier, device=resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
    check_tokenizer(verifier, tokenizer)  # a reward model must read the policy's tokens
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
    texts = list(cfg.texts) + _file_lines(cfg.file)
    if not texts:
        raise ScratchlmError('give at least one text: scratchlm classify --checkpoint DIR "some text"')
    loaded = checkpoint.read(cfg.checkpoint, resolve_device(cfg.device), expect="classifier")
    module, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    for s in range(0, len(texts), 64):
        for label, p in classify_texts(module, tokenizer, texts[s : s + 64], config["classifier"], cfg.device):
            print(f"{label}\t{p:.4f}")
    return 0


# ---- scratchlm score ----------------------------------------------------------------------------------------------


@dataclass
class ScoreConfig:
    """Score texts with a reward model; prints one score per text (higher: preferred).

    With --prompt, each text is the answer to that prompt, framed by the reward model's chat template as in
    training; without it, each text is scored as it is.
    """

    texts: tyro.conf.Positional[tuple[str, ...]] = ()
    """Texts to score."""
    checkpoint: Path | None = None
    """Reward-model checkpoint (made by `scratchlm finetune reward`)."""
    prompt: str | None = None
    """The user prompt the texts answer."""
    file: Path | None = None
    """Also score each line of this file."""
    device: str = "auto"
    """cpu, cuda, cuda:1, mps, or auto (cuda when available)."""


def score(argv: list[str], prog: str) -> int:
    from scratchlm.rl.reward import RewardScorer

    cfg = parse(ScoreConfig, argv, prog)
    if cfg.checkpoint is None:
        raise ScratchlmError("--checkpoint is required: a folder written by `scratchlm finetune reward`")
    texts = list(cfg.texts) + _file_lines(cfg.file)
    if not texts:
        raise ScratchlmError('give at least one text: scratchlm score --checkpoint RM "some text"')
    scorer = RewardScorer(cfg.checkpoint, cfg.device)
    if cfg.prompt is None:
        scores = scorer.score(texts)
    else:
        scores = scorer.score_completions([([{"role": "user", "content": cfg.prompt}], t) for t in texts])
    for s in scores:
        print(f"{s:.4f}")
    return 0


def _file_lines(path: Path | None) -> list[str]:
    """The non-empty lines of --file (none without one)."""
    if path is None:
        return []
    if not path.is_file():
        raise ScratchlmError(f"--file {path} does not exist; pass a text file with one text per line")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
    if "prefix" in checkpoint.load_config(step):
        raise ScratchlmError(
            f"{step} is a prefix/prompt-tuned checkpoint: its prefix is not a weight update and cannot be merged; "
            "use the checkpoint itself (every command reads it)"
        )
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
