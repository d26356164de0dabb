"""The checkpoint folder: the one format every command reads and writes, and the one door that opens it.

    runs/<name>/step_000500/
      config.json          {"format_version": 1, "scratchlm_version": ..., "model": {...ModelConfig...},
                            plus extra sections: "train", "data", "lora", "classifier", "chat_template", ...}
      model.safetensors    full, unwrapped weights (no DDP/compile prefixes); tied weights stored once
      adapters.safetensors LoRA runs instead of model.safetensors: the adapters; `lora.base` names the base
      classifier.safetensors  classifier and reward-model runs: the head
      tokenizer.json       the exact tokenizer the model was trained with
      train_state/         optional: optimizer.safetensors (tensors) + state.json (everything else);
                           sharded runs: optimizer_dcp/ (torch.distributed.checkpoint, one part per rank)
    runs/<name>/latest     name of the newest complete step folder

A folder is written into a fresh sibling and renamed when complete (`scratchlm.fs.atomic_dir`); `latest` is
updated after that, so a crash never leaves a half checkpoint that looks whole. Loading is memory-efficient: the
model is built on the meta device and each tensor is read from the memory-mapped safetensors file into it.

- `folder.py`     the plain folder: write, resolve, config, weights, tokenizer, train state
- `finetuned.py`  adapter and classifier files; an adapter folder's base (relative path + sha256)
- `loader.py`     `read(path)`: any folder -> model, tokenizer, config; `load(path)`: `(model, tokenizer)`

Hugging Face folders are another format, converted in `scratchlm.interop.hf`.
"""

from scratchlm.checkpoint.finetuned import (
    ADAPTER_FILE,
    HEAD_FILE,
    PREFIX_TRAIN_FILE,
    adapter_section,
    base_model_of,
    base_of,
    base_path,
    base_record,
    fill,
    save_finetuned,
    weights_sha256,
)
from scratchlm.checkpoint.folder import (
    CONFIG_FILE,
    FORMAT_VERSION,
    LATEST_FILE,
    TOKENIZER_FILE,
    TRAIN_STATE_DIR,
    WEIGHTS_FILE,
    TrainState,
    check_weights,
    expected_shapes,
    load_config,
    load_model_config,
    load_train_state,
    mark_latest,
    resolve,
    save,
    save_step,
    unwrap,
    weights_for_save,
    write,
)
from scratchlm.checkpoint.loader import Loaded, load, read, refuse_prefix

__all__ = [
    "ADAPTER_FILE", "CONFIG_FILE", "FORMAT_VERSION", "HEAD_FILE", "LATEST_FILE", "PREFIX_TRAIN_FILE", "TOKENIZER_FILE",
    "TRAIN_STATE_DIR", "WEIGHTS_FILE", "Loaded", "TrainState", "adapter_section", "base_model_of", "base_of", "base_path", "base_record", "check_weights",
    "expected_shapes", "fill", "load", "load_config", "load_model_config", "load_train_state", "mark_latest",
    "read", "refuse_prefix", "resolve", "save", "save_finetuned", "save_step", "unwrap", "weights_for_save", "weights_sha256",
    "write",
]
