"""The decoder-only Transformer (GPT-2 and Llama families), written by hand; torch only.

`ModelConfig` (config.py) holds every shape and variant choice, `GPT` (gpt.py) is the network, `KVCache`
(kv_cache.py) the decoding cache, `hf.py` maps state dicts to and from Hugging Face, `sizing.py` counts
parameters, FLOPs and memory. This package knows nothing of tokenizers, data, files or training.
"""

from scratchlm.model.config import ModelConfig, preset_names
from scratchlm.model.gpt import GPT, Block
from scratchlm.model.kv_cache import KVCache

__all__ = ["GPT", "Block", "KVCache", "ModelConfig", "preset_names"]
