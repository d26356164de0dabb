"""EleutherAI's lm-evaluation-harness, scoring a scratchlm checkpoint: the `scratchlm` model of `lm_eval`.

    import scratchlm.eval.harness  # registers the model name "scratchlm"
    lm_eval.simple_evaluate(model="scratchlm", model_args="checkpoint=runs/x", tasks=[...])

or `scratchlm eval harness --checkpoint RUN --tasks T [--include-path DIR]`, or lm_eval's own command line
through `python -m scratchlm.eval.harness --model scratchlm --model_args checkpoint=RUN --tasks T` (lm_eval 0.4
has no plugin entry point for models, so a plain `lm_eval` process never imports this module; this one
registers the name first, then runs lm_eval's CLI).

Decisions:
- One scorer: `loglikelihood` goes through `fewshot.encode_pair` and `fewshot.continuation_scores`, the code of
  `scratchlm eval mc`, so the harness and `eval mc` give the same numbers for the same prompts.
- `loglikelihood_rolling` cuts the text into the harness's own disjoint windows (`get_rolling_token_windows`,
  context 1, end-of-text as the first context) and scores them with the same function.
- `generate_until` uses the batched engine (`generate.text.complete`): greedy unless the task asks to sample.
- Texts are encoded with `encode_ordinary`, as `eval mc` does: `<|endoftext|>` inside a task's text is text.

Importing this module needs `lm-eval` (`pip install 'scratchlm[harness]'`); `load_harness` turns its absence into
a one-line error.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

# lm_eval registers its own models ("hf", "local-completions", ...) only when it finds its registry empty; ours
# would make it non-empty, so let it register them first (else they vanish for this process).
import lm_eval.models  # noqa: F401, I001
import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

import scratchlm
from scratchlm.device import resolve_device
from scratchlm.errors import ScratchlmError
from scratchlm.eval.fewshot import continuation_scores, encode_pair
from scratchlm.eval.perplexity import model_context_length, resolve_dtype
from scratchlm.generate.config import SampleConfig
from scratchlm.generate.text import complete


@register_model("scratchlm")
class ScratchlmLM(LM):
    """A scratchlm checkpoint as an lm_eval model. model_args: checkpoint (required), device (auto), dtype
    (auto), batch_size (8), max_gen_toks (256), seed (1234)."""

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str | None = 8,
        max_batch_size: int | str | None = None,
        max_gen_toks: int | str = 256,
        seed: int | str = 1234,
        **unused: Any,
    ) -> None:
        super().__init__()
        if checkpoint is None:
            raise ScratchlmError(
                "the scratchlm lm_eval model needs a checkpoint: --model_args checkpoint=RUN"
            )
        self._device = resolve_device(device or "auto")
        self.model, self.tokenizer = _load(checkpoint, self._device)
        self.dtype = resolve_dtype(dtype, self._device)
        self.max_length = model_context_length(self.model) or 1024
        self.batch_size = _int(batch_size, 8, "batch_size")
        self.max_gen_toks = _int(max_gen_toks, 256, "max_gen_toks")
        self.seed = _int(seed, 1234, "seed")

    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eot_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name", None) or "scratchlm")

    # ---- scoring -------------------------------------------------------------------------------------------------
    def _score(self, pairs: Sequence[tuple[list[int], list[int]]], greedy: bool) -> list[tuple[float, bool]]:
        return continuation_scores(
            self.model, pairs, self.max_length, self.batch_size, self._device, self.dtype, greedy=greedy
        )

    def _context_start(self) -> list[int]:
        if self.eot_token_id is None:
            raise ScratchlmError(
                "a harness request has an empty context and this tokenizer has no <|endoftext|> token to start "
                "it with; use a checkpoint whose tokenizer has one"
            )
        return [self.eot_token_id]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log P(continuation | context), is the continuation the greedy one) per request."""
        pairs = []
        for req in requests:
            context, continuation = req.args
            ctx, cont = encode_pair(self.tokenizer, context, continuation)
            pairs.append((ctx or self._context_start(), cont))
        out = self._score(pairs, greedy=True)
        for req, result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """log P(text) per request, over the harness's disjoint windows of at most the context length."""
        pairs, owner = [], []
        for r, req in enumerate(requests):
            (text,) = req.args
            windows = lm_utils.get_rolling_token_windows(
                token_list=self.tokenizer.encode_ordinary(text),
                prefix_token=self._context_start()[0],
                max_seq_len=self.max_length,
                context_len=1,
            )
            for ctx, cont in map(lm_utils.make_disjoint_window, windows):
                pairs.append((list(ctx), list(cont)))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (lp, _) in zip(owner, self._score(pairs, greedy=False)):  # no logits of whole windows
            totals[r] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ----------------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Text generated after each context until one of `until` (or end-of-text, or max_gen_toks)."""
        groups: dict[str, list[int]] = defaultdict(list)  # same settings -> one batched engine run
        for i, req in enumerate(requests):
            groups[repr(sorted(req.args[1].items()))].append(i)
        out = [""] * len(requests)
        for indices in groups.values():
            config = self._sample_config(requests[indices[0]].args[1])
            room = max(self.max_length - config.max_new_tokens, 1)
            prompts = [self.tokenizer.encode_ordinary(requests[i].args[0])[-room:] or self._context_start()
                       for i in indices]  # fmt: skip
            for start in range(0, len(prompts), self.batch_size):
                batch = prompts[start : start + self.batch_size]
                results = complete(self.model, self.tokenizer, batch, config)
                for i, result in zip(indices[start : start + len(batch)], results):
                    out[i] = result[0].text
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _sample_config(self, gen_kwargs: dict[str, Any]) -> SampleConfig:
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0))
        return SampleConfig(
            max_new_tokens=int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", self.max_gen_toks))),
            temperature=temperature if do_sample or "temperature" in gen_kwargs else 0.0,
            top_k=int(kwargs.pop("top_k", 0) or 0),
            top_p=float(kwargs.pop("top_p", 1.0) or 1.0),
            stop=until,
            seed=self.seed,
        )


def _int(value: int | str | None, default: int, name: str) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return default
    try:
        return int(value)
    except ValueError:
        raise ScratchlmError(f"lm_eval model_args {name}={value!r} is not a whole number") from None


def _load(path: str | os.PathLike[str], device: torch.device) -> tuple[Any, Any]:
    # lm_eval builds the model from its model_args, so this module opens the checkpoint itself: through the
    # package's one public door (the other eval modules are handed a loaded model by the CLI)
    return scratchlm.load(path, device=device)


def evaluate(
    checkpoint_path: str | os.PathLike[str],
    tasks: Sequence[str],
    include_path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 1234,
    log_samples: bool = False,
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` with the scratchlm model on `tasks` (names, or local task YAML under
    `include_path`). Returns lm_eval's results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = ScratchlmLM(checkpoint_path, device=device, dtype=dtype, batch_size=batch_size, seed=seed)
    task_manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in task_manager.all_tasks]
    if unknown:
        where = f" or under --include-path {include_path}" if include_path else "; pass --include-path DIR"
        raise ScratchlmError(f"lm_eval knows no task {', '.join(unknown)}{where} (task YAML files)")
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=task_manager,
        log_samples=log_samples,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


def main() -> None:
    """lm_eval's own command line with the `scratchlm` model registered (see the module docstring)."""
    from lm_eval.__main__ import cli_evaluate

    try:
        cli_evaluate()
    except (
        ScratchlmError
    ) as e:  # ours (a missing checkpoint...): one line, as the scratchlm command prints it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
