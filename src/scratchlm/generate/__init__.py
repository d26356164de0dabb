"""Sampling and decoding: pure filters on logits (`sampling`), the batched KV-cache engine (`engine`), the
streaming detokenizer (`stream`) and the text-level entries (`text`): `generate`, `complete`, `stream`.

Imports the model package (the engine drives `GPT.forward` with a `KVCache`) and sees tokenizers only through
`encode`/`decode_bytes`; knows nothing of data, training or the CLI.
"""

from scratchlm.generate.config import SampleConfig
from scratchlm.generate.engine import Engine, GenSequence, generate_ids
from scratchlm.generate.stream import TextStream
from scratchlm.generate.text import Completion, complete, generate, stream, stream_completion

__all__ = [
    "Completion",
    "Engine",
    "GenSequence",
    "SampleConfig",
    "TextStream",
    "complete",
    "generate",
    "generate_ids",
    "stream",
    "stream_completion",
]
