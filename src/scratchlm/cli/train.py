"""`scratchlm pretrain`: train a model from scratch on token shards (or on the embedded Shakespeare corpus).

    scratchlm pretrain --preset shakespeare-char --out runs/shakespeare
    scratchlm pretrain --preset gpt2 --data shards/fineweb --out runs/gpt2 --compile
    torchrun --nproc_per_node 2 -m scratchlm pretrain --preset shakespeare-char --out runs/ddp

Settings, lowest precedence first: the TrainConfig defaults, the recipe named by `--preset`
(`presets/recipe/<name>.yaml`), a `--config FILE.yaml`, then flags. The resolved settings are written to
`<out>/config.yaml`, which `--config` accepts to repeat the run.

`--out` follows the output rule (`scratchlm.fs.check_out_dir`, docs/contracts.md): a new or empty folder, or
a pretrain run folder to resume or extend (its checkpoints say `train_mode: pretrain`; before the first one,
its config.yaml has only these settings' keys); never a finetuning run, a checkpoint, shards, a file, the --data
folder, or a folder of other files.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from scratchlm.cli.parsing import parse
from scratchlm.dataclass_io import to_dict
from scratchlm.errors import ScratchlmError
from scratchlm.fs import check_out_dir, is_run_of, is_shard_folder
from scratchlm.train.config import TrainConfig

EMBEDDED_CORPUS = "tinyshakespeare.txt.gz"


@dataclass
class ModelOverrides:
    """Changes to the model preset's fields (unset = the preset's value)."""

    vocab_size: int | None = None
    """Rows of the token embedding (at least the tokenizer's vocabulary)."""
    context_length: int | None = None
    """Tokens per training sequence (and the size of the position table)."""
    n_layer: int | None = None
    """Number of Transformer blocks."""
    n_head: int | None = None
    """Attention heads per block."""
    n_kv_head: int | None = None
    """Key/value heads (grouped-query attention)."""
    d_model: int | None = None
    """Width of the residual stream."""
    d_ff: int | None = None
    """Hidden width of the MLP."""
    norm: str | None = None
    """layernorm (GPT-2) or rmsnorm (Llama)."""
    norm_eps: float | None = None
    """Epsilon of the norms."""
    mlp: str | None = None
    """gelu (GPT-2) or swiglu (Llama)."""
    positions: str | None = None
    """learned (GPT-2) or rope (Llama)."""
    rope_theta: float | None = None
    """RoPE base frequency."""
    rope_scaling_factor: float | None = None
    """Llama 3.1-style RoPE frequency scaling factor (unset: no scaling)."""
    rope_low_freq_factor: float | None = None
    """Llama 3.1 RoPE scaling: low-frequency factor."""
    rope_high_freq_factor: float | None = None
    """Llama 3.1 RoPE scaling: high-frequency factor."""
    rope_original_context_length: int | None = None
    """Llama 3.1 RoPE scaling: the context length the model was trained with."""
    dropout: float | None = None
    """Dropout probability."""
    bias: bool | None = None
    """Biases in linear layers and norms."""
    tie_embeddings: bool | None = None
    """Share the token embedding with the output head."""
    attn_impl: str | None = None
    """manual or sdpa."""
    attn_pattern: tuple[str, ...] | None = None
    """Attention pattern per layer, repeated over the layers: dense, local, strided, fixed (e.g. local,local,dense)."""
    attn_window: int | None = None
    """Window W of local layers (a query sees itself and the W - 1 positions before it)."""
    attn_stride: int | None = None
    """Stride S of strided and fixed layers."""
    attn_summary: int | None = None
    """Summary positions c at the end of each block of S (fixed layers)."""


@dataclass
class PretrainCommand(TrainConfig):
    """Pretrain a GPT from scratch: next-token prediction on token shards, with progress, checkpoints and resume."""

    preset: str | None = None
    """Recipe from presets/recipe/ (e.g. shakespeare-char, gpt2): model preset plus training settings."""
    data: Path | None = None
    """Shard folder made by `scratchlm data prepare`; unset: the embedded tinyshakespeare text, char-level,
    prepared into <out>/data (last 10% = validation)."""
    model_preset: str = "gpt2"
    """Model shape preset from presets/model/ (gpt2, gpt2-tiny, llama-tiny, shakespeare-char, ...)."""
    model: ModelOverrides = field(default_factory=ModelOverrides)
    sample_at_end: int = 500
    """Characters/tokens of text generated from the final model and printed (0: none)."""


def recipe_names() -> list[str]:
    folder = resources.files("scratchlm") / "presets" / "recipe"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """presets/recipe/<name>.yaml as a dict of fields of the command it is for (PretrainCommand; SFTConfig and
    GRPOConfig for the finetuning recipes such as arith-sft, arith-grpo)."""
    path = resources.files("scratchlm") / "presets" / "recipe" / f"{name}.yaml"
    if not path.is_file():
        raise ScratchlmError(f"unknown --preset {name!r}; known recipes: {', '.join(recipe_names())}")
    data = yaml.safe_load(path.read_text()) or {}
    data["preset"] = name
    return data


def preset_from_argv(argv: list[str]) -> str | None:
    """--preset NAME from the flags, else a `preset:` key in the --config file (a resolved config.yaml has one)."""
    for i, tok in enumerate(argv):
        if tok == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith("--preset="):
            return tok.split("=", 1)[1]
    for i, tok in enumerate(argv):
        path = argv[i + 1] if tok == "--config" and i + 1 < len(argv) else None
        path = tok.split("=", 1)[1] if tok.startswith("--config=") else path
        if path and Path(path).is_file():
            try:
                data = yaml.safe_load(Path(path).read_text())
            except yaml.YAMLError:
                return None  # parse() reports the YAML error
            return data.get("preset") if isinstance(data, dict) else None
    return None


def resolve_model_config(cmd: PretrainCommand) -> Any:
    """The preset's fields with the --model.* overrides applied, validated by ModelConfig."""
    from scratchlm.dataclass_io import from_dict
    from scratchlm.model.config import ModelConfig, load_preset_dict

    where = f"model preset {cmd.model_preset!r}"
    preset = from_dict(ModelConfig, load_preset_dict(cmd.model_preset), where=where)
    # as ModelConfig.replace: derived fields (n_kv_head, d_ff) follow the fields they derive from
    return preset.replace(**{k: v for k, v in dataclasses.asdict(cmd.model).items() if v is not None})


def prepare_embedded_corpus(out: Path) -> Path:
    """The packaged tinyshakespeare, char-level, as shards in <out>/data (reused when already there)."""
    from scratchlm.data.prepare import prepare_text

    shard_dir = out / "data"
    if (shard_dir / "manifest.json").is_file():
        return shard_dir
    text = gzip.decompress((resources.files("scratchlm") / "resources" / EMBEDDED_CORPUS).read_bytes()).decode()
    prepare_text(text, shard_dir, tokenizer="char", val_fraction=0.1)
    return shard_dir


def run_folder_test(cls: type, mode: str) -> Callable[[Path], bool]:
    """Test for `check_out_dir`: a run folder of training mode `mode`. Before its first checkpoint the run is
    known by its config.yaml (the resolved settings the loop writes): it names `out`, and every top-level key is
    a field of the command dataclass `cls` (each command has fields the others lack; a newer version may add
    fields, so a missing one is fine)."""
    fields = {f.name for f in dataclasses.fields(cls)}

    def loads(config_yaml: Path) -> bool:
        try:
            data = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False
        return isinstance(data, dict) and "out" in data and set(data) <= fields

    return lambda folder: is_run_of(folder, mode, loads)


def check_pretrain_out(cmd: PretrainCommand) -> None:
    """The output rule for `--out`, before anything is written."""
    is_run = run_folder_test(PretrainCommand, "pretrain")

    def reusable(folder: Path) -> bool:
        # killed while the embedded corpus was prepared: only <out>/data, and it holds shards
        only_corpus = cmd.data is None and {p.name for p in folder.iterdir()} == {"data"}
        return is_run(folder) or (only_corpus and is_shard_folder(folder / "data"))

    check_out_dir(cmd.out, reusable, "pretrain run", [cmd.data])


def pretrain(argv: list[str], prog: str) -> int:
    preset = preset_from_argv(argv)
    base = load_recipe(preset) if preset else None
    cmd = parse(PretrainCommand, argv, prog, base=base)
    return run_pretrain(cmd)


def run_pretrain(cmd: PretrainCommand) -> int:
    import torch

    from scratchlm.data import shard_tokenizer
    from scratchlm.model import GPT
    from scratchlm.train.distributed import SHARDED, data_parallel_size, print0
    from scratchlm.train.loop import gradient_accumulation, seed_everything, train
    from scratchlm.train.modes.pretrain import PretrainMode

    model_config = resolve_model_config(cmd)
    train_cfg = TrainConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(TrainConfig)})
    # settings that can be checked without data are checked before anything is written
    world = int(os.environ.get("WORLD_SIZE", "1"))
    gradient_accumulation(train_cfg, model_config.context_length,
                          data_parallel_size(world, train_cfg.tp, train_cfg.pp))
    if cmd.data is None and model_config.vocab_size > 256:
        raise ScratchlmError(
            f"model preset {cmd.model_preset!r} (vocab_size {model_config.vocab_size}) needs --data: shards made "
            "with its tokenizer by `scratchlm data prepare`; the embedded corpus is for char-level models"
        )
    # every rank checks, except with the embedded corpus: there the others may already see rank 0 preparing it
    if cmd.data is not None or _is_rank0():
        check_pretrain_out(cmd)
    if cmd.data is None:
        if _is_rank0():
            prepare_embedded_corpus(cmd.out)
        _wait_for(cmd.out / "data" / "manifest.json")
        shard_dir = cmd.out / "data"
    else:
        shard_dir = cmd.data
    tokenizer = shard_tokenizer(shard_dir)
    seed_everything(cmd.seed)
    if world > 1 and (train_cfg.parallel in SHARDED or train_cfg.tp > 1 or train_cfg.pp > 1):
        # sharded (fsdp, tp, pp): built on meta, allocated and initialised per rank by the loop (same numbers)
        with torch.device("meta"):
            model = GPT(model_config)
    else:
        model = GPT(model_config)
    mode = PretrainMode(shard_dir, model_config.context_length, seed=cmd.seed)
    run_config = to_dict(cmd)
    run_config["model"] = to_dict(model_config)  # the resolved shape, so the file repeats this exact model
    result = train(train_cfg, mode, model, tokenizer, run_config=run_config)
    if not _is_rank0():
        return 0
    if result.stopped in ("SIGINT", "SIGTERM"):
        print0(f"stopped by {result.stopped} at step {result.step}; checkpoint {result.checkpoint}; "
               f"continue with the same command plus --resume auto")
        return 130 if result.stopped == "SIGINT" else 143
    if cmd.sample_at_end and result.checkpoint is not None:
        from scratchlm.generate import generate

        if any(type(p).__name__ == "DTensor" or p.is_meta for p in model.parameters()):  # sharded: reload whole
            from scratchlm import checkpoint

            model, _ = checkpoint.load(result.checkpoint)
        model.eval()
        text = generate(model, tokenizer, cmd.sample_prompt, cmd.sample_at_end, temperature=0.8, top_k=200,
                        seed=cmd.seed)
        print0(f"\n--- sample from {result.checkpoint} ---\n{cmd.sample_prompt}{text}\n---")
    if result.checkpoint is not None:
        prompt = data_prompt(shard_dir, tokenizer)
        hint = f" --prompt {shlex.quote(prompt)}" if prompt else ""
        print0(f"continue it: scratchlm generate --checkpoint {shlex.quote(str(cmd.out))}{hint}")
    return 0


def data_prompt(shard_dir: Path, tokenizer: Any, n_tokens: int = 64, max_chars: int = 24) -> str | None:
    """A prompt from the run's own data for the closing hint: the start of the first line of the validation
    split (else of the training split), cut at a word; None when that is not printable text (e.g. token ids that
    decode to control bytes), then the hint names no --prompt."""
    from scratchlm.data import shards

    manifest = shards.read_manifest(shard_dir)
    for split in ("val", "train"):
        paths = shards.split_paths(shard_dir, split, manifest)
        if not paths:
            continue
        ids = [int(t) for t in shards.open_shard(paths[0])[:n_tokens] if int(t) != tokenizer.eot_id]
        try:
            text = tokenizer.decode(ids)
        except Exception:  # noqa: BLE001 - any failure only means: no prompt in the hint
            return None
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        if len(line) > max_chars or line == text.strip():  # longer, or cut by n_tokens: end at a word
            line = line[:max_chars].rsplit(" ", 1)[0] if " " in line[:max_chars] else line[:max_chars]
        if not line or not line.isprintable() or "\ufffd" in line:
            return None
        return line
    return None


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _wait_for(path: Path, timeout_s: float = 600.0) -> None:
    """Other torchrun ranks wait for rank 0 to prepare the embedded corpus (no process group exists yet)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise ScratchlmError(f"timed out waiting for rank 0 to write {path}")
        time.sleep(0.2)
