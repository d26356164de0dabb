"""scratchlm: a GPT-style LLM built from scratch: tokenizer, data, model, training, finetuning, eval, serving.

`scratchlm.load(path)` returns `(model, tokenizer)` from a checkpoint folder. The import is lazy so that
`import scratchlm` (and the pure-Python tokenizer) never pulls in torch.
"""

from __future__ import annotations

from typing import Any

from scratchlm.version import __version__

__all__ = ["__version__", "load"]


def load(path: Any, device: str = "cpu") -> Any:
    """Load `(model, tokenizer)` from a checkpoint folder (see `scratchlm.checkpoint`)."""
    from scratchlm.checkpoint import load as _load

    return _load(path, device=device)
