"""The decoding engine: token ids in, token ids out, many sequences at once over one KV cache.

    waiting queue --admit--> slots (rows of one KVCache) --finish--> slot free again
                                 |
                    step(): 1. prefill the newly admitted sequences (right-padded, one forward) -> 1st token
                            2. decode every running sequence by one token (one forward of (B, 1))
                               (so a newly admitted sequence gets two tokens in its first step)

This is continuous batching: a sequence joins at the next step after a slot frees up and leaves as soon as it
finishes, so a short request never waits for a long one. A static batch (`generate_ids`) is the special case
where everything is admitted at step one.

Decisions:
- Positions, not padding tricks. `GPT.forward(ids, cache, positions)` writes each token's keys/values at its
  absolute position in its row, and a query sees only slots <= its position (see `model/kv_cache.py`). Prompts
  of different lengths are right-padded: the padding is written into slots beyond a row's prompt and is
  overwritten by that row's own tokens before anything attends to it. No left padding, no position offsets.
- A new sequence is prefilled in a small cache of its own (batched with the others admitted in the same step)
  and its keys/values are copied into its slot, so prefill costs (n_new, L) tokens, not (all slots, L).
- Local (sliding-window) layers decode from a rolling cache of attn_window slots per row (`model/kv_cache.py`),
  so a long generation holds the window, not the context; a prompt is prefilled into a plain cache of its own
  length and only its last window of keys is copied in. Compiled decoding works the same way (the rings have a
  fixed shape).
- Decoding runs on rows 0..hi-1 only (hi = 1 + the highest busy slot; new sequences take the lowest free slot),
  so a lightly loaded engine does not pay for its empty slots.
- One CPU `torch.Generator` per sequence, seeded from `SampleConfig.seed` (+ i for the i-th of n samples): the
  same seed gives the same tokens however the sequence is batched with others.
- `compile=True` compiles the decode step with `torch.compile(fullgraph=True)` at fixed shapes: it always
  decodes every slot, over the first `attend_len` cache slots, a power of two (>= 64, <= the cache length)
  covering the furthest position, the slots beyond each row's position masked. So a handful of graphs serve
  every step (64, 128, ..., the cache length), and attention does not read the whole cache at every step.
  The tokens equal the eager engine's. Prefill stays eager (its shapes change with every prompt). It pays
  where per-step overhead dominates: small batches, on a GPU. On CUDA each graph is also captured as a CUDA
  graph ("reduce-overhead"; the cache is a static address, written inside the graph): one launch per step.
  Measured on an H200 (gpt2 124M, bf16, batch 1): eager 189 tokens/s, compiled 240, CUDA graphs 980.
- The engine knows nothing of text. Stop strings are found by the caller (`TextStream`), which then calls
  `finish(seq, "stop")` before the next step.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from scratchlm.errors import ScratchlmError
from scratchlm.generate.config import SampleConfig
from scratchlm.generate.sampling import RowSettings, logprobs_of, next_token
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.sizing import kv_cache_bytes

_GREEDY = SampleConfig(temperature=0.0)
_ids = itertools.count()


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the best alternatives, as (token id, logprob) pairs."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass(eq=False)
class GenSequence:
    """One sample being generated: its prompt, settings, and what it has produced so far."""

    prompt: list[int]
    config: SampleConfig
    stop_ids: frozenset[int] = frozenset()
    seed: int | None = None
    """Overrides `config.seed` (the i-th of n samples uses seed + i)."""
    output: list[int] = field(default_factory=list)
    """Generated ids; a stop token that ended the sequence is not included."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    """None while running; "stop" (stop token or string), "length" (max_new_tokens or context full), "cancelled"."""
    echo_logprobs: bool = False
    """Also score the prompt: `prompt_logprobs` gets log P(prompt[t] | prompt[:t]) for t >= 1 (`config.logprobs`
    alternatives each), computed in the prefill; with max_new_tokens 0 the prefill is all that runs."""
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    stop_logprob: tuple[int, TokenLogprob] | None = None
    """The stop token that ended the sequence and its logprob (when logprobs are wanted): not part of `output`
    or the text, but reported, as OpenAI and vLLM list it."""
    id: int = field(default_factory=lambda: next(_ids))
    slot: int | None = None
    generator: torch.Generator | None = None
    _read: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def n_read(self) -> int:
        """How many output tokens `new_tokens` has handed out so far."""
        return self._read

    def new_tokens(self) -> list[int]:
        """Tokens produced since the last call (for streaming consumers)."""
        out = self.output[self._read :]
        self._read = len(self.output)
        return out


class Engine:
    """Continuous batching over `slots` rows of one KVCache. Use `add` + `step`, or `run` for a static batch."""

    def __init__(
        self,
        model: nn.Module,
        slots: int = 8,
        max_len: int | None = None,
        compile: bool | str = False,
        vocab_limit: int | None = None,
    ) -> None:
        self.model = model
        self.max_len = min(max_len or model.config.context_length, model.config.context_length)
        self.device = next(model.parameters()).device
        # Ids the caller can use: a model may have more embedding rows than its tokenizer has tokens (GPT-2's
        # 50,257 padded to 50,304, a char model trained on a prefix); the extra rows are never sampled.
        self.vocab_size = min(model.config.vocab_size, vocab_limit or model.config.vocab_size)
        # local (sliding-window) layers keep a ring of attn_window slots: decode memory bounded by the window
        self.cache = KVCache.for_model(model, slots, self.max_len, rolling=True)
        self.rows: list[GenSequence | None] = [None] * slots
        self.waiting: deque[GenSequence] = deque()
        self._settings_key: tuple[int, ...] = ()
        self._settings: RowSettings | None = None
        self._seen: Tensor | None = (
            None  # (slots, V) bool, prompt + output tokens, for the repetition penalty
        )
        self._counts: Tensor | None = None  # (slots, V) int, output tokens, for frequency/presence penalties
        self._decode = self._compiled_decode(compile) if compile else None

    # ---- queue ----------------------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return len(self.rows)

    @property
    def running(self) -> list[GenSequence]:
        return [s for s in self.rows if s is not None]

    def has_work(self) -> bool:
        return bool(self.waiting) or any(s is not None for s in self.rows)

    def add(self, seq: GenSequence) -> GenSequence:
        """Queue a sequence; it is prefilled at the next `step` that finds a free slot."""
        self.check_prompt(len(seq.prompt))
        seed = seq.seed if seq.seed is not None else seq.config.seed
        if seq.config.temperature > 0:
            # on the CPU whatever the model's device: `draw` takes one number per row from it, and MPS has
            # no float64 (and the same seed gives the same numbers on every device)
            seq.generator = torch.Generator()
            seq.generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
        if seq.config.max_new_tokens == 0 and not seq.echo_logprobs:
            seq.finish_reason = "length"
            return seq
        self.waiting.append(seq)
        return seq

    def check_prompt(self, n_tokens: int) -> None:
        if n_tokens == 0:
            raise ScratchlmError("the prompt is empty; give at least one token")
        if n_tokens > self.max_len:
            raise ScratchlmError(
                f"the prompt is {n_tokens} tokens but the model's context is {self.max_len}; shorten the prompt"
            )

    def finish(self, seq: GenSequence, reason: str) -> None:
        """End a sequence now (a stop string was found, the client left): its slot is free for the next step."""
        if seq.finish_reason is None:
            seq.finish_reason = reason
        if seq.slot is not None:
            self.rows[seq.slot] = None
            seq.slot = None
        elif seq in self.waiting:
            self.waiting.remove(seq)

    # ---- the step -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[GenSequence]:
        """Admit waiting sequences into free slots (prefill), then decode every running one by one token.

        Returns the sequences that changed (new tokens and/or finished) in this step.
        """
        changed: dict[int, GenSequence] = {}
        admitted = self._admit()
        if admitted:
            logits = self._prefill(admitted)  # (n, V)
            sample = []
            for i, seq in enumerate(admitted):
                if seq.config.max_new_tokens == 0:  # only the prompt's logprobs were wanted
                    self.finish(seq, "length")
                    changed[seq.id] = seq
                else:
                    sample.append(i)
            if sample:
                for seq in self._sample([admitted[i].slot for i in sample], logits[sample]):
                    changed[seq.id] = seq
        # Everyone running decodes, the newly prefilled included (their slot must not get a dummy token).
        decoding = [s for s in self.rows if s is not None]
        if decoding:
            # compiled: every slot, one shape for all steps; eager: only rows up to the highest busy one
            hi = self.slots if self._decode is not None else max(s.slot for s in decoding) + 1
            last, pos = [0] * hi, [0] * hi  # built as lists: one tensor each, not 2 * hi tiny writes
            for s in decoding:
                last[s.slot] = s.output[-1]
                pos[s.slot] = len(s.prompt) + len(s.output) - 1
            ids = torch.tensor(last, dtype=torch.long, device=self.device)[:, None]  # (hi, 1)
            positions = torch.tensor(pos, dtype=torch.long, device=self.device)[:, None]  # (hi, 1)
            # Free rows below hi decode a dummy token at position 0 of their own row: harmless, the next
            # sequence to take that slot prefills over it.
            if self._decode is not None:
                logits = self._decode(ids, positions, self._attend_len(max(pos) + 1))  # (slots, V)
            else:
                logits = self.model(ids, cache=self.cache.rows(0, hi), positions=positions)[:, -1]  # (hi, V)
            slots = [s.slot for s in decoding]
            for seq in self._sample(slots, logits if len(slots) == hi else logits[slots]):
                changed[seq.id] = seq
        return list(changed.values())

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile the decode step now rather than in the first request's step (no-op when not compiled).

        It decodes a dummy token at position 0 of every row: harmless, as a free row's slots are overwritten by
        the prefill of the next sequence that takes it (and it is only called with no sequence running)."""
        if self._decode is not None and not self.running:
            ids = torch.zeros(self.slots, 1, dtype=torch.long, device=self.device)
            # two tensors, as in `step` (aliasing would recompile); the first length bucket
            self._decode(ids, torch.zeros_like(ids), self._attend_len(1))

    def _compiled_decode(self, compile: bool | str) -> Callable[[Tensor, Tensor, int], Tensor]:
        """`_decode_all` compiled once per length bucket. `True`: CUDA graphs on CUDA ("reduce-overhead": one
        launch per step, where the eager step of a small batch is bound by its hundreds of kernel launches),
        torch.compile's default mode elsewhere; a string names the mode.

        The cache is written in place inside the graph. Marked as a static address, it is part of the graph
        rather than an input copied in, so a CUDA graph replays the whole step, cache writes included."""
        for t in self.cache.k + self.cache.v:
            torch._dynamo.mark_static_address(t)
        # Each length bucket is one graph of `_decode_all`, a code object that every engine of the process
        # shares; dynamo refuses a code object's ninth graph by default (a 16k context has 9 buckets).
        limits = torch._dynamo.config
        name = "recompile_limit" if hasattr(limits, "recompile_limit") else "cache_size_limit"  # torch < 2.7
        setattr(limits, name, max(getattr(limits, name), 64))
        if isinstance(compile, str):
            mode = compile
        else:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        return torch.compile(self._decode_all, fullgraph=True, dynamic=False, mode=mode)

    def _decode_all(self, ids: Tensor, positions: Tensor, attend_len: int) -> Tensor:
        """One token for every slot over cache slots 0..attend_len-1: (slots, 1) ids -> (slots, V) logits."""
        hidden = self.model.hidden_states(ids, cache=self.cache, positions=positions, attend_len=attend_len)
        return self.model.lm_head(hidden[:, -1])

    def _attend_len(self, needed: int) -> int:
        """The compiled step's length bucket: the smallest power of two >= needed (and >= 64), at most max_len."""
        return min(self.max_len, max(64, 1 << (needed - 1).bit_length()))

    def _admit(self) -> list[GenSequence]:
        admitted = []
        for slot in range(self.slots):
            if not self.waiting:
                break
            if self.rows[slot] is None:
                seq = self.waiting.popleft()
                seq.slot = slot
                self.rows[slot] = seq
                admitted.append(seq)
        return admitted

    def _prefill(self, seqs: list[GenSequence]) -> Tensor:
        """Run the new prompts right-padded in one forward; returns each one's next-token logits (n, V)."""
        lengths = [len(s.prompt) for s in seqs]
        n, L = len(seqs), max(lengths)
        ids = torch.zeros(n, L, dtype=torch.long, device=self.device)  # (n, L), right-padded with 0s
        for i, s in enumerate(seqs):
            ids[i, : lengths[i]] = torch.tensor(s.prompt, device=self.device)
        positions = torch.arange(L, device=self.device).expand(n, L)
        slots = [s.slot for s in seqs]
        if slots == list(range(slots[0], slots[0] + n)) and not self.cache.rolling:
            # contiguous slots (always so for a static batch): write straight into the big cache
            hidden = self.model.hidden_states(
                ids, cache=self.cache.rows(slots[0], slots[0] + n), positions=positions
            )
        else:
            # scattered free slots, or rings (whose right padding would evict the prompt's own keys): prefill
            # into a small plain cache of their own, then copy it into place
            small = KVCache.for_model(self.model, n, L, dtype=self.cache.dtype)
            hidden = self.model.hidden_states(ids, cache=small, positions=positions)
            index, length = torch.tensor(slots, device=self.device), torch.tensor(lengths, device=self.device)
            self.cache.copy_rows_from(small, index, length)
        if self._seen is not None:
            self._reset_penalty_rows(seqs)
        for i, s in enumerate(seqs):
            if s.echo_logprobs and lengths[i] > 1:
                # position t predicts prompt[t + 1]: the head on the prompt's positions, this row only
                targets = torch.tensor(s.prompt[1:], device=self.device)
                chosen, top_v, top_i = logprobs_of(self.model.lm_head(hidden[i, : lengths[i] - 1]), targets,
                                                   s.config.logprobs or 0)  # fmt: skip
                s.prompt_logprobs = [
                    TokenLogprob(v, list(zip(ti, tv)))
                    for v, ti, tv in zip(chosen.tolist(), top_i.tolist(), top_v.tolist())
                ]
        last = torch.tensor(lengths, device=self.device) - 1
        # the output head only on each prompt's last position: (n, C) -> (n, V), not (n, L, V)
        return self.model.lm_head(hidden[torch.arange(n, device=self.device), last])

    def _row_settings(self, seqs: list[GenSequence]) -> RowSettings:
        key = tuple(s.id for s in seqs)
        if key != self._settings_key or self._settings is None:
            self._settings = RowSettings.stack([s.config for s in seqs], device=self.device)
            self._settings_key = key
        return self._settings

    def _penalty_state(self, seqs: list[GenSequence]) -> tuple[Tensor | None, Tensor | None]:
        uses = any(
            s.config.repetition_penalty != 1 or s.config.frequency_penalty or s.config.presence_penalty
            for s in seqs
        )
        if not uses:
            return None, None
        if self._seen is None:  # first request that needs them: start tracking every running row
            self._seen = torch.zeros(self.slots, self.vocab_size, dtype=torch.bool, device=self.device)
            self._counts = torch.zeros(self.slots, self.vocab_size, dtype=torch.int32, device=self.device)
            self._reset_penalty_rows(self.running)
        slots = [s.slot for s in seqs]
        return self._seen[slots], self._counts[slots]

    def _reset_penalty_rows(self, seqs: list[GenSequence]) -> None:
        assert self._seen is not None and self._counts is not None
        for s in seqs:
            self._seen[s.slot] = False
            self._counts[s.slot] = 0
            self._seen[s.slot, torch.tensor(s.prompt + s.output, dtype=torch.long)] = True
            if s.output:
                self._counts[s.slot].index_add_(
                    0, torch.tensor(s.output), torch.ones(len(s.output), dtype=torch.int32)
                )

    def _sample(self, slots: list[int], logits: Tensor) -> list[GenSequence]:
        """Pick one token for each sequence in `slots` from its (V,) row of `logits`, then apply stop rules."""
        seqs = [self.rows[i] for i in slots]
        assert all(s is not None for s in seqs)
        logits = logits[:, : self.vocab_size].float()
        seen, counts = self._penalty_state(seqs)
        settings = self._row_settings(seqs)
        ids = next_token(logits, settings, [s.generator for s in seqs], seen=seen, counts=counts)
        want_lp = [s.config.logprobs is not None for s in seqs]
        if any(want_lp):
            top_n = max(s.config.logprobs or 0 for s in seqs)
            chosen, top_v, top_i = logprobs_of(logits, ids, top_n)
        id_list = ids.tolist()
        for i, seq in enumerate(seqs):
            tok = id_list[i]
            if tok in seq.stop_ids:
                if want_lp[i]:
                    k = seq.config.logprobs or 0
                    top = list(zip(top_i[i, :k].tolist(), top_v[i, :k].tolist()))
                    seq.stop_logprob = (tok, TokenLogprob(float(chosen[i]), top))
                self.finish(seq, "stop")
                continue
            seq.output.append(tok)
            if want_lp[i]:
                k = seq.config.logprobs or 0
                top = list(zip(top_i[i, :k].tolist(), top_v[i, :k].tolist()))
                seq.logprobs.append(TokenLogprob(float(chosen[i]), top))
            if self._seen is not None:
                self._seen[seq.slot, tok] = True
                self._counts[seq.slot, tok] += 1
            if len(seq.output) >= seq.config.max_new_tokens:
                self.finish(seq, "length")
            elif len(seq.prompt) + len(seq.output) >= self.max_len:
                # The next token would sit at position max_len: past the context (and the cache).
                self.finish(seq, "length")
        return seqs

    # ---- static batches ---------------------------------------------------------------------------------------
    def run(self, seqs: Sequence[GenSequence]) -> Iterator[list[GenSequence]]:
        """Add `seqs` and step until all are done; yields the changed sequences after every step."""
        for s in seqs:
            self.add(s)
        while self.has_work():
            yield self.step()


def kv_bytes_per_token(model: nn.Module) -> int:
    """Bytes one token takes in the KV cache: keys and values of every layer, in the model's dtype."""
    c = model.config
    return 2 * c.n_layer * c.n_kv_head * c.head_dim * next(model.parameters()).element_size()


def cache_bytes(model: nn.Module, slots: int, max_len: int) -> int:
    """Bytes of the engine's cache: `slots` rows of `max_len` tokens, local layers holding at most their window."""
    return slots * kv_cache_bytes(model.config, max_len, next(model.parameters()).element_size())


def max_len_for_budget(model: nn.Module, slots: int, budget_bytes: int) -> int:
    """The longest cache rows (at most the context) that `slots` of them fit in `budget_bytes`."""
    lo, hi = 0, model.config.context_length
    while lo < hi:  # the cache never shrinks as rows grow: bisect for the longest that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cache_bytes(model, slots, mid) <= budget_bytes else (lo, mid - 1)
    return lo


def make_sequences(
    prompts: Sequence[list[int]], config: SampleConfig, stop_ids: Sequence[int] = (),
    seeds: Sequence[int] | None = None,
) -> list[list[GenSequence]]:
    """`config.n` sequences per prompt; the i-th sample of each prompt uses seed + i (when a seed is set), where
    seed is `seeds[j]` for prompt j if given (independent draws across prompts), else `config.seed` (the same
    prompt gives the same text wherever it sits in a batch)."""
    stops = frozenset(stop_ids) | frozenset(config.stop_ids)
    bases = list(seeds) if seeds is not None else [config.seed] * len(prompts)
    if len(bases) != len(prompts):
        raise ValueError(f"{len(bases)} seeds for {len(prompts)} prompts")
    return [
        [GenSequence(list(p), config, stops, seed=None if base is None else base + i) for i in range(config.n)]
        for p, base in zip(prompts, bases)
    ]


def generate_ids(
    model: nn.Module,
    prompts: Sequence[list[int]],
    config: SampleConfig = _GREEDY,
    stop_ids: Sequence[int] = (),
    slots: int | None = None,
    compile: bool | str = False,
    vocab_limit: int | None = None,
) -> list[list[GenSequence]]:
    """Generate for a batch of prompts (any lengths): for each prompt, its `config.n` finished sequences.

    With `slots` >= the number of sequences (the default), it is one static batch: all prompts are prefilled
    together, right-padded, and decoded together. `compile`: see `Engine`.
    """
    groups = make_sequences(prompts, config, stop_ids)
    flat = [s for g in groups for s in g]
    max_len = static_max_len(model, prompts, config, compile)
    engine = Engine(
        model, slots=slots or max(1, len(flat)), max_len=max_len, compile=compile, vocab_limit=vocab_limit
    )
    for _ in engine.run(flat):
        pass
    return groups


def static_max_len(
    model: nn.Module, prompts: Sequence[list[int]], config: SampleConfig, compile: bool | str = False
) -> int:
    """Cache length a static batch needs: the longest prompt plus the new tokens (at most the context).

    A prompt longer than the context still gets the full context, so `Engine.add` reports it. A compiled
    engine gets the whole context: its graphs are specialised to the cache's shape, and one shape for every
    call lets later calls reuse them (attention still reads only the length bucket it needs)."""
    context = model.config.context_length
    if compile:
        return context
    longest = max((len(p) for p in prompts), default=1)
    return context if longest > context else min(context, longest + config.max_new_tokens)
