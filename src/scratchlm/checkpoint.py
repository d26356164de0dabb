"""The checkpoint folder: the one format every command reads and writes.

    runs/<name>/step_000500/
      config.json          {"format_version": 1, "scratchlm_version": ..., "model": {...ModelConfig...},
                            plus extra sections: "train", "data", "lora", "chat_template", ...}
      model.safetensors    full, unwrapped weights (no DDP/compile prefixes); tied weights stored once
      tokenizer.json       the exact tokenizer the model was trained with
      train_state/         optional: optimizer.safetensors (tensors) + state.json (everything else)
    runs/<name>/latest     name of the newest complete step folder

A folder is written as `<name>.tmp/` and renamed when complete (`scratchlm.fs.atomic_dir`); `latest` is updated
after that, so a crash never leaves a half checkpoint that looks whole.

Loading is memory-efficient: the model is built on the meta device (no memory, no init), each tensor is read from
the memory-mapped safetensors file and assigned into it, so the weights exist once in RAM.

Hugging Face folders (`import_hf`, `export_hf`) are converted here too, with `safetensors` alone; the state-dict
maps themselves live in `scratchlm.model.hf`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import scratchlm
from scratchlm import tokenizer as tokenizers
from scratchlm.dataclass_io import from_dict, to_dict
from scratchlm.errors import ScratchlmError
from scratchlm.fs import atomic_dir, atomic_write_text
from scratchlm.model import GPT, ModelConfig
from scratchlm.model import hf as hf_maps
from scratchlm.tokenizer import Tokenizer

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TRAIN_STATE_DIR = "train_state"
LATEST_FILE = "latest"

# Prefixes that wrappers add to parameter names; stripped on save so checkpoints never depend on how a run trained.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


# ---- training state -----------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What resume needs beyond the weights: tensors (optimizer moments) and a JSON-able state (step, RNG, ...).

    `TrainState.from_nested(obj)` splits any nested dict/list structure holding tensors (e.g.
    `{"optimizer": opt.state_dict(), "step": 500}`) into the two parts; `to_nested()` puts it back together,
    integer dict keys included (an optimizer's `state` is keyed by parameter index).
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_nested(cls, obj: Mapping[str, Any]) -> TrainState:
        tensors: dict[str, torch.Tensor] = {}
        return cls(tensors, _pack(obj, "", tensors))

    def to_nested(self) -> dict[str, Any]:
        return _unpack(self.state, self.tensors)


def _pack(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        if any(not isinstance(k, str) for k in obj):  # JSON keys are strings: record the int keys explicitly
            return {"__items__": [[k, _pack(v, f"{key}.{k}".lstrip("."), tensors)] for k, v in obj.items()]}
        return {k: _pack(v, f"{key}.{k}".lstrip("."), tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, f"{key}.{i}".lstrip("."), tensors) for i, v in enumerate(obj)]
    return obj


def _unpack(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: _unpack(v, tensors) for k, v in obj["__items__"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


# ---- saving -------------------------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (`.module`) and `torch.compile` (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def weights_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as saved: wrapper prefixes stripped, tied head left out, contiguous CPU tensors."""
    model = unwrap(model)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        for prefix in _WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        out[name] = tensor.detach().to("cpu").contiguous()
    config = getattr(model, "config", None)
    if config is not None and config.tie_embeddings:
        out.pop("lm_head.weight", None)  # the same tensor as tok_emb.weight: stored once
    return out


def save(
    path: str | os.PathLike[str],
    model: nn.Module,
    tokenizer: Tokenizer,
    extra: dict[str, Any] | None = None,
    train_state: TrainState | Mapping[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint folder atomically.

    `extra`: more `config.json` sections (`train`, `data`, `lora`, `chat_template`, ...; dataclasses are turned
    into dicts). `train_state`: a `TrainState`, or a dict `{"tensors": {...}, "state": {...}}`. `state_dict`:
    weights to save instead of `model.state_dict()` (e.g. gathered from FSDP shards); `model` still gives the config.
    """
    path = Path(path)
    config: ModelConfig = unwrap(model).config
    weights = weights_for_save(model) if state_dict is None else {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if config.tie_embeddings:
        weights.pop("lm_head.weight", None)
    return _write_folder(path, config, weights, tokenizer, extra, train_state)


def _write_folder(
    path: Path,
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    extra: dict[str, Any] | None = None,
    train_state: TrainState | Mapping[str, Any] | None = None,
) -> Path:
    if tokenizer.vocab_size > config.vocab_size:
        raise ScratchlmError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} embedding rows; "
            "set the model's vocab_size to at least the tokenizer's"
        )
    sections = {"format_version": FORMAT_VERSION, "scratchlm_version": scratchlm.__version__, "model": to_dict(config)}
    for key, value in (extra or {}).items():
        assert key not in sections, f"extra section {key!r} would overwrite a reserved config.json key"
        sections[key] = to_dict(value)
    if train_state is not None and not isinstance(train_state, TrainState):
        train_state = TrainState(dict(train_state.get("tensors", {})), dict(train_state.get("state", {})))
    with atomic_dir(path, what="checkpoint folder") as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(sections, indent=2) + "\n")
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        tokenizer.save(tmp / TOKENIZER_FILE)
        if train_state is not None:
            (tmp / TRAIN_STATE_DIR).mkdir()
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in train_state.tensors.items()}
            save_file(tensors, str(tmp / TRAIN_STATE_DIR / "optimizer.safetensors"))
            (tmp / TRAIN_STATE_DIR / "state.json").write_text(json.dumps(train_state.state, indent=1) + "\n")
    return path


def mark_latest(step_dir: str | os.PathLike[str]) -> None:
    """Point the run folder's `latest` file (beside `step_dir`) at `step_dir`; call it after the save completed."""
    step_dir = Path(step_dir)
    atomic_write_text(step_dir.parent / LATEST_FILE, step_dir.name + "\n", what="latest file")


def save_step(run_dir: str | os.PathLike[str], step: int, model: nn.Module, tokenizer: Tokenizer, **kwargs: Any) -> Path:
    """`save` into `run_dir/step_NNNNNN/`, then update `run_dir/latest`. Returns the step folder."""
    step_dir = Path(run_dir) / f"step_{step:06d}"
    save(step_dir, model, tokenizer, **kwargs)
    mark_latest(step_dir)
    return step_dir


# ---- loading ------------------------------------------------------------------------------------------------------
def resolve(path: str | os.PathLike[str]) -> Path:
    """A step folder, or a run folder whose `latest` file names one -> the step folder."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / LATEST_FILE).is_file():
        step = path / (path / LATEST_FILE).read_text().strip()
        if not (step / CONFIG_FILE).is_file():
            raise ScratchlmError(
                f"run folder {path}: its latest file names {step.name}, which is not a checkpoint folder; "
                f"point `latest` at an existing step folder or pass the step folder itself"
            )
        return step
    if not path.exists():
        raise ScratchlmError(f"checkpoint folder {path} does not exist; pass a step folder or a run folder")
    raise ScratchlmError(
        f"{path} is not a checkpoint folder (no {CONFIG_FILE}) nor a run folder (no {LATEST_FILE} file); "
        "pass a folder written by scratchlm (e.g. runs/NAME or runs/NAME/step_000500)"
    )


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`config.json` of a checkpoint (step or run folder), with its format version checked."""
    step = resolve(path)
    try:
        data = json.loads((step / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ScratchlmError(f"cannot read {step / CONFIG_FILE} ({e}); the checkpoint is damaged, save it again") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ScratchlmError(
            f"checkpoint {step} has format_version {version!r}; this scratchlm reads version {FORMAT_VERSION}: "
            "convert it with a matching scratchlm version"
        )
    if not isinstance(data.get("model"), dict):
        raise ScratchlmError(f"checkpoint {step}: config.json has no \"model\" section; the checkpoint is damaged")
    return data


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """The `ModelConfig` stored in a checkpoint."""
    step = resolve(path)
    return from_dict(ModelConfig, load_config(step)["model"], where=f"{step / CONFIG_FILE} model")


def load(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[GPT, Tokenizer]:
    """`(model, tokenizer)` from a checkpoint (step or run folder). The model is in eval mode."""
    step = resolve(path)
    config = load_model_config(step)
    tok = tokenizers.load(step / TOKENIZER_FILE)
    if tok.vocab_size > config.vocab_size:
        raise ScratchlmError(
            f"checkpoint {step}: the tokenizer has {tok.vocab_size} tokens but the model only {config.vocab_size} "
            "embedding rows; the tokenizer does not belong to these weights"
        )
    return load_weights_into(config, step / WEIGHTS_FILE, device, dtype), tok


def load_weights_into(
    config: ModelConfig, weights_file: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> GPT:
    """Build `GPT(config)` on the meta device and fill it from a (memory-mapped) safetensors file, checked."""
    with torch.device("meta"):
        model = GPT(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    where = f"checkpoint {weights_file.parent}"
    if not weights_file.is_file():
        raise ScratchlmError(f"{where} has no {weights_file.name}; save the checkpoint again")
    try:
        with safe_open(str(weights_file), framework="pt", device=str(device)) as f:
            _check_weights(where, expected, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
            weights = {k: f.get_tensor(k) for k in expected}
    except SafetensorError as e:
        raise ScratchlmError(f"{where}: {weights_file.name} is not a valid safetensors file ({e}); save it again") from None
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced tok_emb.weight: share it with the head again
    assert not any(p.is_meta for p in model.parameters()), "a parameter was left on the meta device"
    return model.eval()


def _check_weights(where: str, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise ScratchlmError(
            f"{where}: the weights do not match config.json: missing {_few(missing)}; "
            "the config or the weights file was changed, use the pair that was saved together"
        )
    if unexpected:
        raise ScratchlmError(
            f"{where}: the weights do not match config.json: unexpected {_few(unexpected)}; "
            "the config or the weights file was changed, use the pair that was saved together"
        )
    for name, shape in expected.items():
        if found[name] != shape:
            raise ScratchlmError(
                f"{where}: the weights do not match config.json: {name} has shape {list(found[name])} but the "
                f"config implies {list(shape)}; use the config.json saved with these weights"
            )


def _few(names: list[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_train_state(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TrainState | None:
    """The checkpoint's `train_state/` (None when it was saved without one)."""
    folder = resolve(path) / TRAIN_STATE_DIR
    if not folder.is_dir():
        return None
    try:
        state = json.loads((folder / "state.json").read_text())
        with safe_open(str(folder / "optimizer.safetensors"), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise ScratchlmError(f"cannot read {folder} ({e}); resume from another checkpoint or start afresh") from None
    return TrainState(tensors, state)


# ---- Hugging Face folders -----------------------------------------------------------------------------------------
HF_TOKENIZER_COPY = "scratchlm_tokenizer.json"  # our tokenizer, kept in exported HF folders for the way back


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ScratchlmError(f"{what} {path} does not exist; pass a Hugging Face model folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ScratchlmError(f"cannot read {what} {path} ({e}); the folder is damaged") from None


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: `model.safetensors`, or the shards named by `model.safetensors.index.json`."""
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index, "shard index").get("weight_map", {})
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
    else:
        raise ScratchlmError(
            f"Hugging Face folder {hf_dir} has no model.safetensors (or sharded model.safetensors.index.json); "
            "scratchlm reads safetensors only: re-save the model with save_pretrained(safe_serialization=True)"
        )
    out: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for k in f.keys():  # noqa: SIM118
                    out[k] = f.get_tensor(k)
        except (OSError, SafetensorError) as e:
            raise ScratchlmError(f"cannot read {file} ({e}); download the Hugging Face folder again") from None
    return out


def _hf_tokenizer(hf_dir: Path, tokenizer: str | None) -> Tokenizer:
    if tokenizer is not None:
        return tokenizers.load(tokenizer)
    if (hf_dir / "vocab.json").is_file() and (hf_dir / "merges.txt").is_file():
        tok = tokenizers.BPETokenizer.from_gpt2_files(hf_dir / "vocab.json", hf_dir / "merges.txt")
        return _gpt2_or(tok)
    if (hf_dir / HF_TOKENIZER_COPY).is_file():
        return tokenizers.load(hf_dir / HF_TOKENIZER_COPY)
    raise ScratchlmError(
        f"Hugging Face folder {hf_dir} has no GPT-2-format tokenizer (vocab.json + merges.txt); "
        "pass --tokenizer gpt2 or the path of a scratchlm tokenizer JSON file"
    )


def import_hf(
    hf_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tokenizer: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """HF GPT2LMHeadModel / LlamaForCausalLM folder -> scratchlm checkpoint folder (needs no `transformers`)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise ScratchlmError(f"Hugging Face folder {hf_dir} does not exist; pass a folder with config.json")
    hf_config = _read_json(hf_dir / "config.json", "Hugging Face config")
    arch = hf_maps.architecture(hf_config)
    config = hf_maps.config_from_hf(hf_config)
    tok = _hf_tokenizer(hf_dir, tokenizer)
    weights = hf_maps.state_dict_from_hf(config, read_hf_weights(hf_dir))
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    _check_weights(f"Hugging Face folder {hf_dir}", expected, {k: tuple(v.shape) for k, v in weights.items()})
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    extra = {"hf_source": {"path": str(hf_dir.resolve()), "architecture": arch}}
    return _write_folder(Path(out), config, weights, tok, extra)


def is_gpt2_tokenizer(tok: Tokenizer) -> bool:
    """True when `tok` is exactly GPT-2's (same vocabulary, merges, pattern and special tokens; any name)."""
    unnamed = lambda t: {**t.to_dict(), "name": None}  # noqa: E731
    try:
        return unnamed(tok) == unnamed(tokenizers.load("gpt2"))
    except ScratchlmError:  # GPT-2's files cannot be fetched (offline, no mirror): then it is not provably GPT-2's
        return False


def _gpt2_or(tok: Tokenizer) -> Tokenizer:
    """GPT-2's tokenizer itself (named "gpt2") when `tok` equals it, so identities match; else `tok`."""
    return tokenizers.load("gpt2") if is_gpt2_tokenizer(tok) else tok


def export_hf(ckpt: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """scratchlm checkpoint -> HF folder that `AutoModelForCausalLM` / `AutoTokenizer` load. Returns notes."""
    step = resolve(ckpt)
    config = load_model_config(step)
    hf_maps.hf_architecture_for(config)  # fail before writing anything
    tok = tokenizers.load(step / TOKENIZER_FILE)
    with safe_open(str(step / WEIGHTS_FILE), framework="pt", device="cpu") as f:
        ours = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    _check_weights(f"checkpoint {step}", expected, {k: tuple(v.shape) for k, v in ours.items()})
    hf_config = hf_maps.config_to_hf(config)
    if tok.eot_id is not None:
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = tok.eot_id
    weights = hf_maps.state_dict_to_hf(config, ours)
    notes: list[str] = []
    out = Path(out)
    with atomic_dir(out, what="Hugging Face folder") as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save(tmp / HF_TOKENIZER_COPY)
        if is_gpt2_tokenizer(tok):
            _write_gpt2_tokenizer_files(tmp, config.context_length)
        else:
            notes.append(
                "the tokenizer is not GPT-2's, so no Hugging Face tokenizer files were written; "
                f"it is kept as {HF_TOKENIZER_COPY} (scratchlm reads it back)"
            )
    return out, notes


def _write_gpt2_tokenizer_files(folder: Path, context_length: int) -> None:
    """GPT-2's vocab.json + merges.txt (the very files of the tokenizer) and a GPT2Tokenizer config."""
    from scratchlm import assets

    shutil.copyfile(assets.fetch("gpt2-encoder"), folder / "vocab.json")
    shutil.copyfile(assets.fetch("gpt2-vocab"), folder / "merges.txt")
    eot = "<|endoftext|>"
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": context_length,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "add_prefix_space": False,
        "errors": "replace",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    specials = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
