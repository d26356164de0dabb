"""The one decoding loop behind the server: a background thread that owns the `Engine`.

    HTTP handlers (asyncio) --submit(Job)--> inbox --+
                                                      v
            engine thread: admit inbox -> engine.step() -> feed each changed sequence's TextStream
                                                      |
    HTTP handlers <--Piece events (call_soon_threadsafe)--+

Every request, streaming or not, becomes a `Job` of one or more `GenSequence`s. Jobs join the running batch at
the next step and leave it when they finish (continuous batching, see `generate/engine.py`). The engine is not
thread-safe, so only this thread touches it; handlers talk to it through the inbox (new jobs, cancellations)
and an asyncio queue per job (pieces of text). The queue of jobs waiting for a slot is bounded: `submit`
raises `QueueFull` beyond `max_waiting` sequences, and the server answers 429; a request that could never fit
(more sequences than slots + queue) raises `NeverFits`, answered 400.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from scratchlm.generate.engine import Engine, GenSequence, TokenLogprob
from scratchlm.generate.stream import TextStream
from scratchlm.generate.text import feed_text

log = logging.getLogger("scratchlm.serve")


class QueueFull(Exception):
    """Too many requests are waiting for a decoding slot (retry later: 429)."""


class NeverFits(Exception):
    """The request alone has more sequences than the slots and the queue hold together (retrying cannot help: 400)."""


@dataclass
class Piece:
    """New text of one choice (sequence) of a job; `finish_reason` is set on the last piece of that choice."""

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None


class Job:
    """One request's sequences and the asyncio queue their pieces arrive on."""

    def __init__(
        self, seqs: list[GenSequence], tokenizer: Any, stop: list[str], loop: asyncio.AbstractEventLoop
    ):
        self.seqs = seqs
        self.streams = [TextStream(tokenizer, stop) for _ in seqs]
        self.loop = loop
        self.events: asyncio.Queue[Piece] = asyncio.Queue()
        self.cancelled = False

    def emit(self, piece: Piece) -> None:
        """Called from the engine thread: hand the piece to the job's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, piece)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            pass


class EngineWorker:
    """Runs `engine.step()` in a background thread whenever there is work."""

    def __init__(self, engine: Engine, tokenizer: Any, max_waiting: int = 64) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_waiting = max_waiting
        self._inbox: deque[Job] = deque()
        self._cancels: deque[Job] = deque()
        self._owner: dict[int, tuple[Job, int]] = {}  # seq id -> (job, choice index)
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # ---- called from the event loop ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scratchlm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def waiting(self) -> int:
        """Sequences queued but not yet in a slot."""
        return len(self.engine.waiting) + sum(len(j.seqs) for j in list(self._inbox))

    def running(self) -> int:
        return len(self.engine.running)

    def submit(self, job: Job) -> None:
        """Queue a job, or raise `QueueFull` when more than `max_waiting` sequences would wait for a slot."""
        capacity = self.engine.slots + self.max_waiting
        if len(job.seqs) > capacity:
            raise NeverFits(
                f"this request needs {len(job.seqs)} sequences (prompts x n) but the server takes at most "
                f"{capacity} at once (--slots {self.engine.slots} + --max-waiting {self.max_waiting}); "
                "send fewer prompts or a smaller n"
            )
        with self._wake:
            free = self.engine.slots - self.running()
            if self.waiting() + len(job.seqs) > self.max_waiting + free:
                raise QueueFull(f"{self.waiting()} sequences are already waiting for a slot; retry later")
            self._inbox.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: free the job's slots at the next step."""
        with self._wake:
            job.cancelled = True
            self._cancels.append(job)
            self._wake.notify()

    # ---- the engine thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._inbox and not self._cancels and not self.engine.has_work():
                    self._wake.wait()
                if self._stop:
                    return
                jobs, self._inbox = list(self._inbox), deque()
                cancels, self._cancels = list(self._cancels), deque()
            for job in jobs:
                for i, seq in enumerate(job.seqs):
                    self._owner[seq.id] = (job, i)
                    try:
                        self.engine.add(seq)  # prompts were length-checked by the handler
                    except Exception as e:  # never let one bad request stop the loop
                        self._owner.pop(seq.id, None)
                        job.emit(Piece(i, "", finish_reason="error", error=f"{type(e).__name__}: {e}"))
                        continue
                    if seq.finished:  # max_tokens=0
                        self._deliver(seq)
            for job in cancels:
                for seq in job.seqs:
                    self.engine.finish(seq, "cancelled")
                    self._owner.pop(seq.id, None)
            if not self.engine.has_work():
                continue
            try:
                changed = self.engine.step()
            except Exception as e:  # keep serving: fail the running requests, not the server
                log.exception("decoding step failed")
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
                continue
            self.steps += 1
            for seq in changed:
                self._deliver(seq)

    def _deliver(self, seq: GenSequence) -> None:
        owner = self._owner.get(seq.id)
        if owner is None:
            return
        job, index = owner
        before = seq.n_read
        text = feed_text(self.engine, seq, job.streams[index])
        new_ids = seq.output[before:]
        piece = Piece(index, text, new_ids, seq.logprobs[before : before + len(new_ids)], seq.finish_reason)
        if seq.finished:
            self._owner.pop(seq.id, None)
        if piece.text or piece.finish_reason or piece.token_ids:
            job.emit(piece)

    def _fail_all(self, message: str) -> None:
        for seq in list(self.engine.running) + list(self.engine.waiting):
            owner = self._owner.pop(seq.id, None)
            self.engine.finish(seq, "error")
            if owner is not None:
                job, index = owner
                job.emit(Piece(index, "", finish_reason="error", error=message))
