"""The checkpoint folder format: writing it, and reading its parts (config, weights, tokenizer, train state).

    runs/<name>/step_000500/
      config.json          {"format_version": 1, "scratchlm_version": ..., "model": {...ModelConfig...},
                            plus extra sections: "train", "data", "lora", "chat_template", ...}
      model.safetensors    full, unwrapped weights (no DDP/compile prefixes); tied weights stored once
      tokenizer.json       the exact tokenizer the model was trained with
      train_state/         optional: optimizer.safetensors (tensors) + state.json (everything else); runs whose
                           parameters were sharded keep the optimizer in optimizer_dcp/ instead (every process
                           wrote its part with torch.distributed.checkpoint)
    runs/<name>/latest     name of the newest complete step folder

A folder is written into a fresh, uniquely named sibling and renamed when complete (`scratchlm.fs.atomic_dir`); `latest` is updated
after that, so a crash never leaves a half checkpoint that looks whole.

Loading is memory-efficient: the model is built on the meta device (no memory, no init), each tensor is read from
the memory-mapped safetensors file and assigned into it, so the weights exist once in RAM.

This module is the plain folder; `finetuned.py` adds the files of finetuned folders (adapters, a classifier head)
and `loader.py` is the one door that opens any of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from scratchlm import tokenizer as tokenizers
from scratchlm.dataclass_io import from_dict, to_dict
from scratchlm.errors import ScratchlmError
from scratchlm.fs import atomic_dir, atomic_write_text
from scratchlm.model import GPT, ModelConfig
from scratchlm.tokenizer import Tokenizer
from scratchlm.version import __version__

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
    dirs: dict[str, Path] = field(default_factory=dict)
    """Folders written beforehand (e.g. by every process, with torch.distributed.checkpoint), moved into
    `train_state/` under these names as part of the folder's atomic write."""

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
    config: ModelConfig = unwrap(model).config
    weights = weights_for_save(model) if state_dict is None else dict(state_dict)
    return write(path, config, weights, tokenizer, extra, train_state)


def write(
    path: str | os.PathLike[str],
    config: ModelConfig,
    weights: Mapping[str, torch.Tensor] | None,
    tokenizer: Tokenizer,
    extra: dict[str, Any] | None = None,
    train_state: TrainState | Mapping[str, Any] | None = None,
    files: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Path:
    """The one writer of checkpoint folders: everything goes into a fresh sibling that is renamed into place.

    `weights` None writes no `model.safetensors` (an adapter-only folder); `files` adds more safetensors files
    (`adapters.safetensors`, `classifier.safetensors`) to the same atomic write.
    """
    path = Path(path)
    if tokenizer.vocab_size > config.vocab_size:
        raise ScratchlmError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} embedding rows; "
            "set the model's vocab_size to at least the tokenizer's"
        )
    sections = {"format_version": FORMAT_VERSION, "scratchlm_version": __version__, "model": to_dict(config)}
    for key, value in (extra or {}).items():
        if key in sections:
            raise ValueError(f"extra section {key!r} would overwrite a reserved config.json key")
        sections[key] = to_dict(value)
    if train_state is not None and not isinstance(train_state, TrainState):
        train_state = TrainState(dict(train_state.get("tensors", {})), dict(train_state.get("state", {})))
    if weights is not None and config.tie_embeddings:
        weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}  # the embedding's tensor: stored once
    with atomic_dir(path, what="checkpoint folder") as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(sections, indent=2) + "\n")
        if weights is not None:
            save_file(_cpu(weights), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        for name, tensors in (files or {}).items():
            save_file(_cpu(tensors), str(tmp / name))
        tokenizer.save(tmp / TOKENIZER_FILE)
        if train_state is not None:
            (tmp / TRAIN_STATE_DIR).mkdir()
            save_file(_cpu(train_state.tensors), str(tmp / TRAIN_STATE_DIR / "optimizer.safetensors"))
            (tmp / TRAIN_STATE_DIR / "state.json").write_text(json.dumps(train_state.state, indent=1) + "\n")
            for name, folder in train_state.dirs.items():
                os.replace(folder, tmp / TRAIN_STATE_DIR / name)  # same filesystem: the run folder
    return path


def _cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


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


def load_tokenizer(step: Path, model_config: ModelConfig) -> Tokenizer:
    """The tokenizer saved in a step folder, checked against the model's vocabulary."""
    tok = tokenizers.load(step / TOKENIZER_FILE)
    if tok.vocab_size > model_config.vocab_size:
        raise ScratchlmError(
            f"checkpoint {step}: the tokenizer has {tok.vocab_size} tokens but the model only "
            f"{model_config.vocab_size} embedding rows; the tokenizer does not belong to these weights"
        )
    return tok


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `config` stores, with its shape (the tied head is stored once, as the embedding)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    return expected


def load_weights_into(
    config: ModelConfig, weights_file: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> GPT:
    """Build `GPT(config)` on the meta device and fill it from a (memory-mapped) safetensors file, checked."""
    with torch.device("meta"):
        model = GPT(config)
    expected = expected_shapes(config)
    where = f"checkpoint {weights_file.parent}"
    if not weights_file.is_file():
        raise ScratchlmError(f"{where} has no {weights_file.name}; save the checkpoint again")
    try:
        with safe_open(str(weights_file), framework="pt", device=str(device)) as f:
            check_weights(where, expected, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
            weights = {k: f.get_tensor(k) for k in expected}
    except SafetensorError as e:
        raise ScratchlmError(f"{where}: {weights_file.name} is not a valid safetensors file ({e}); save it again") from None
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced tok_emb.weight: share it with the head again
    assert not any(p.is_meta for p in model.parameters()), "a parameter was left on the meta device"
    return model.eval()


def check_weights(where: str, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
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
