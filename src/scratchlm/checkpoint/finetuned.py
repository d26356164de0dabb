"""The files a finetuned checkpoint adds to the plain folder, and how an adapter folder names its base.

    full finetune          model.safetensors (+ classifier.safetensors: the head, for classifiers and reward models)
    LoRA (adapter-only)    adapters.safetensors (the lora_A/lora_B tensors) + classifier.safetensors;
                           NO model.safetensors: config.json's `lora` section names the base checkpoint
    prefix / prompt        adapters.safetensors (prefix.key/value, or a soft prompt's prefix.embedding)
                           + classifier.safetensors; config.json's `prefix` section names the base; a
                           reparameterised prefix run adds prefix_train.safetensors (E and the MLP: for resume only)

An adapter-only folder is small (the gpt2 shape at rank 8 on q,k,v,o: 0.6M of 124M parameters) and resumes
exactly. Its base is recorded as `lora.base`, a path RELATIVE to the adapter's step folder where one exists (so a
`runs/` tree can move as a whole), and `lora.base_sha256`, the hash of the base's own weights file: a base that
is missing or was changed since training is a one-line error that says which, never a silently different model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from scratchlm.checkpoint.folder import CONFIG_FILE, WEIGHTS_FILE, unwrap, weights_for_save, write
from scratchlm.errors import ScratchlmError
from scratchlm.model import GPT
from scratchlm.model.lora import adapter_state_dict, load_adapter_state_dict
from scratchlm.tokenizer import Tokenizer

ADAPTER_FILE = "adapters.safetensors"
HEAD_FILE = "classifier.safetensors"
PREFIX_TRAIN_FILE = "prefix_train.safetensors"
ADAPTER_SECTIONS = ("lora", "prefix")  # config.json sections of adapter-only folders; each names its base


def adapter_section(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(name, section) of an adapter-only folder's config.json (`lora` or `prefix`), or None."""
    for name in ADAPTER_SECTIONS:
        if isinstance(config.get(name), dict):
            return name, config[name]
    return None


def base_model_of(module: nn.Module) -> GPT:
    """The GPT inside a finetuning module (a classifier wraps it as `.model`); any other module itself."""
    module = unwrap(module)
    inner = getattr(module, "model", None)
    return inner if isinstance(inner, GPT) and not isinstance(module, GPT) else module  # type: ignore[return-value]


def weights_sha256(step: Path) -> str:
    """sha256 of the file that makes a step folder's weights what they are (its own weights, or its adapters)."""
    file = step / WEIGHTS_FILE if (step / WEIGHTS_FILE).is_file() else step / ADAPTER_FILE
    h = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise ScratchlmError(f"cannot read {file} ({e.strerror or e}); the checkpoint is damaged") from None
    return h.hexdigest()


def base_record(base_step: Path) -> dict[str, str]:
    """What an adapter checkpoint stores about its base: the absolute path (made relative when written) + hash."""
    base_step = Path(base_step).resolve()
    return {"base": str(base_step), "base_sha256": weights_sha256(base_step)}


def _relative_base(lora: Mapping[str, Any], step: Path) -> dict[str, Any]:
    base = lora.get("base")
    if base is None or not Path(base).is_absolute():
        return dict(lora)
    try:
        rel = os.path.relpath(base, step.resolve())
    except ValueError:  # another drive (Windows): keep it absolute
        return dict(lora)
    return {**lora, "base": rel}


def _what(section: str) -> str:
    return "LoRA" if section == "lora" else "prefix"


def base_path(step: Path, lora: Mapping[str, Any], section: str = "lora") -> Path:
    """The base step folder an adapter checkpoint names (not checked: `base_of` checks it); `section` is the
    config.json section `lora` holds (lora or prefix)."""
    recorded = lora.get("base")
    if not isinstance(recorded, str):
        raise ScratchlmError(
            f"the {_what(section)} checkpoint {step} names no base (config.json {section}.base); it is damaged"
        )
    return (Path(step) / recorded).resolve()  # an absolute record (older checkpoints) stays as it is


def base_of(step: Path, lora: Mapping[str, Any], section: str = "lora") -> Path:
    """The base step folder an adapter checkpoint names, checked to be the very one it was trained on."""
    recorded = lora.get("base")
    base = base_path(step, lora, section)
    if not (base / CONFIG_FILE).is_file():
        merge = ", or merge the adapters where both exist (scratchlm lora merge)" if section == "lora" else ""
        raise ScratchlmError(
            f"the {_what(section)} checkpoint {step} adapts the base checkpoint {base} ({section}.base "
            f"{recorded!r}), which no longer exists; put the base back there{merge}"
        )
    want = lora.get("base_sha256")
    if want is not None and weights_sha256(base) != want:
        raise ScratchlmError(
            f"the {_what(section)} checkpoint {step} was trained on another version of its base {base} (its "
            "weights' sha256 changed since); restore that base, or finetune again from the current one"
        )
    return base


def save_finetuned(
    path: str | os.PathLike[str],
    module: nn.Module,
    tokenizer: Tokenizer,
    extra: dict[str, Any],
    train_state: Any = None,
    adapters_only: bool = False,
) -> Path:
    """Write a finetuned checkpoint folder (layout above) in one atomic write."""
    path = Path(path)
    model = base_model_of(module)
    files: dict[str, dict[str, torch.Tensor]] = {}
    head = getattr(unwrap(module), "head", None)
    if head is not None:
        files[HEAD_FILE] = head.state_dict()
    prefix = getattr(model, "prefix", None)
    if adapters_only and prefix is not None:
        files[ADAPTER_FILE] = {f"prefix.{k}": t for k, t in prefix.saved_state().items()}
        if prefix.training_state():
            files[PREFIX_TRAIN_FILE] = prefix.training_state()
    elif adapters_only:
        files[ADAPTER_FILE] = adapter_state_dict(model)
    for name in ADAPTER_SECTIONS:
        if name in extra:
            extra = {**extra, name: _relative_base(extra[name], path)}
    weights = None if adapters_only else weights_for_save(model)
    return write(path, model.config, weights, tokenizer, extra, train_state, files)


def _read(file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device=str(device))
    except FileNotFoundError:
        raise ScratchlmError(f"checkpoint {file.parent} has no {file.name}; save the checkpoint again") from None
    except (OSError, SafetensorError) as e:
        raise ScratchlmError(f"cannot read {file} ({e}); the checkpoint is damaged, save it again") from None


def fill(module: nn.Module, step: Path) -> None:
    """Fill a module built like the one that was saved (a resumed run's) from its checkpoint folder.

    Reads what the folder holds: the adapters or the whole model, and the classifier head when the module has one.
    """
    model = base_model_of(module)
    step = Path(step)
    prefix = getattr(model, "prefix", None)
    if prefix is not None:
        if prefix.training_state():  # reparameterised: the folded prefix alone cannot continue training
            prefix.load(_read(step / PREFIX_TRAIN_FILE))
        else:
            prefix.load(read_prefix(step))
    elif (step / ADAPTER_FILE).is_file():
        load_adapter_state_dict(model, _read(step / ADAPTER_FILE))
    else:
        state = _read(step / WEIGHTS_FILE)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a tensor of another shape
            lines = str(e).splitlines()
            raise ScratchlmError(
                f"checkpoint {step}: weights do not fit the model ({(lines[1] if len(lines) > 1 else lines[0]).strip()}); "
                "resume with the settings the run was started with"
            ) from None
        missing = [k for k in missing if not _is_tied_alias(model, k)]  # tied weights are stored once
        if missing or unexpected:
            raise ScratchlmError(
                f"checkpoint {step}: weights do not fit the model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); resume with the settings the run was started with"
            )
    head = getattr(unwrap(module), "head", None)
    if head is not None:
        if not (step / HEAD_FILE).is_file():
            raise ScratchlmError(
                f"checkpoint {step} has no {HEAD_FILE}: it is not a classifier or reward-model checkpoint"
            )
        head.load_state_dict(_read(step / HEAD_FILE))


def read_adapters(step: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return _read(step / ADAPTER_FILE, device)


def read_prefix(step: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The adapter file of a prefix/prompt checkpoint, keyed as the prefix module's own state dict."""
    return {k.removeprefix("prefix."): t for k, t in _read(step / ADAPTER_FILE, device).items()}


def read_head(step: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return _read(step / HEAD_FILE, device)


def _is_tied_alias(module: nn.Module, name: str) -> bool:
    """True if parameter `name` is the same tensor as another parameter (weight tying)."""
    params = dict(module.named_parameters(remove_duplicate=False))
    p = params.get(name)
    return p is not None and any(q is p and n != name for n, q in params.items())
