"""The OpenAI-compatible HTTP server (FastAPI): `/v1/models`, `/v1/completions`, `/v1/chat/completions`,
`/health`, the web chat page at `/`, and `/v1/score` when a reward model is served alongside.

    create_app(model, tokenizer, ...) -> FastAPI      # what `scratchlm serve` runs under uvicorn
    BackgroundServer(app)                              # the same app in a thread on a free loopback port

Decisions:
- Handlers never run the model: they validate, encode the prompt, and hand a `Job` to the one decoding thread
  (`worker.py`), then wait on the job's events. Concurrent requests therefore share batched decoding steps.
- Every error is OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`, with the matching
  status: 400 bad request (malformed JSON, bad values, prompt longer than `max_len`, a request bigger than the
  slots and queue together), 401 wrong API key, 404 unknown model or route, 413 body over `max_request_bytes`,
  429 queue full. FastAPI's own 422 validation answers are turned into 400.
- Nothing slow runs on the event loop: bodies over the limit are refused while they arrive (`BodyLimit`), a
  text obviously too long for the context is refused before tokenizing, and tokenizing runs in a thread. So
  /health and every stream keep answering while a huge prompt is handled.
- `max_len` bounds the KV cache (slots x max_len tokens). A prompt longer than it is a 400; `max_tokens` beyond
  what is left is bounded: the reply ends with finish reason "length" when the cache row is full.
- Streams are server-sent events, one JSON chunk per `data:` line, ending in `data: [DONE]` (also after an
  error chunk). A client that disconnects, streaming or not, has its sequences cancelled, freeing their slots.
- Same seed, same text: request `seed` s seeds choice i with s + i, exactly as `scratchlm generate --seed s`.
- `best_of` (completions, OpenAI's legacy field): best_of samples per prompt are decoded, the n with the highest
  mean token logprob are returned (in sampling order), and usage counts every sample's tokens, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from scratchlm.errors import ConfigError, ScratchlmError
from scratchlm.generate.chat import chat_prompt
from scratchlm.generate.config import SampleConfig
from scratchlm.generate.engine import Engine, TokenLogprob, make_sequences
from scratchlm.generate.select import mean_logprob
from scratchlm.generate.text import default_stop_ids, encode_prompt
from scratchlm.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ScoreRequest,
    TokenizeRequest,
    error_body,
)
from scratchlm.serve.worker import EngineWorker, Job, NeverFits, Piece, QueueFull
from scratchlm.tokenizer.chat import ChatTemplate, chat_template_jinja

log = logging.getLogger("scratchlm.serve")


class ApiError(Exception):
    """An error answered as OpenAI-style JSON with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


@dataclass
class ServerState:
    model_name: str
    tokenizer: Any
    template: ChatTemplate
    worker: EngineWorker
    context_length: int
    """Tokens per cache row (`max_len`): prompt + output of one sequence."""
    max_token_bytes: int
    """Bytes of the longest token: a text of more characters than context_length x this cannot fit."""
    limit_name: str = "the model's maximum context length"
    reward: Any = None
    """A `scratchlm.rl.reward.RewardScorer` behind /v1/score, or None."""
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(
    model: nn.Module,
    tokenizer: Any,
    model_name: str = "scratchlm",
    chat_template: ChatTemplate | None = None,
    api_key: str | None = None,
    slots: int = 8,
    max_waiting: int = 64,
    max_len: int | None = None,
    max_request_bytes: int = 4 * 2**20,
    compile: bool = False,
    reward: Any = None,
) -> FastAPI:
    """The server for one model. `slots`: sequences decoded together; `max_waiting`: queue bound (then 429);
    `max_len`: tokens per cache row (default: the model's context); `max_request_bytes`: body limit (then 413);
    `compile`: compile the decode step (see `Engine`), here, before the first request; `reward`: a
    `RewardScorer` answering /v1/score."""
    model.eval()
    context = model.config.context_length
    if max_len is not None and not 1 <= max_len <= context:
        raise ScratchlmError(f"max_len must be between 1 and the model's context {context}, got {max_len}")
    engine = Engine(model, slots=slots, max_len=max_len, compile=compile, vocab_limit=tokenizer.vocab_size)
    engine.warm_up()
    state = ServerState(
        model_name=model_name,
        tokenizer=tokenizer,
        template=chat_template or ChatTemplate.from_config(None),
        worker=EngineWorker(engine, tokenizer, max_waiting=max_waiting),
        context_length=engine.max_len,
        max_token_bytes=_longest_token_bytes(tokenizer),
        limit_name="the server's --max-len"
        if engine.max_len < context
        else "the model's maximum context length",
        reward=reward,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.worker.start()
        yield
        state.worker.stop()

    app = FastAPI(title="scratchlm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scratchlm = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    if api_key:  # added last, so it runs first: a wrong key is refused before the body is read
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        w = state.worker
        return {
            "status": "ok",
            "model": state.model_name,
            "slots": w.engine.slots,
            "running": w.running(),
            "waiting": w.waiting(),
            "steps": w.steps,
        }

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse((resources.files("scratchlm.serve") / "static" / "index.html").read_text("utf-8"))

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        _check_model(state, model_id)
        return _model_card(state)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        _check_model(state, req.model)
        prompts = await asyncio.to_thread(_prompt_ids, state, req.prompt)  # tokenizing is slow: off the loop
        max_new = _max_new(state, req.max_tokens, "max_tokens", prompts)
        best_of = _best_of(req)
        cfg = _sample_config(req, max_new, logprobs=req.logprobs)
        if best_of > req.n:  # draw best_of per prompt, with the logprobs that rank them
            cfg = dataclasses.replace(cfg, n=best_of, logprobs=req.logprobs or 0)
        # echo + logprobs also scores the prompt (lm-evaluation-harness's loglikelihood requests)
        score_prompt = req.echo and req.logprobs is not None and not req.stream
        job = _submit(state, prompts, cfg, default_stop_ids(state.tokenizer, cfg), echo_logprobs=score_prompt)
        echo = [state.tokenizer.decode(p) if req.echo else "" for p in prompts for _ in range(cfg.n)]
        meta = _meta("cmpl", req.model, "text_completion")
        usage_prompt = sum(len(p) for p in prompts)
        if req.stream:
            return _sse(state, job, _completion_chunks(state, job, meta, echo, req, usage_prompt))
        results = await _collect(state, job, request)
        if results is None:
            return _CLIENT_GONE
        choices = []
        for i in _returned(results, cfg.n, req.n):
            r = results[i]
            lp = None
            if score_prompt:
                lp = _echo_logprobs(state.tokenizer, job.seqs[i], r)
            elif req.logprobs is not None:
                lp = _completion_logprobs(state.tokenizer, r.ids, r.logprobs, len(echo[i]))
            choices.append(
                {"text": echo[i] + r.text, "index": len(choices), "logprobs": lp, "finish_reason": r.finish_reason}
            )
        return {**meta, "choices": choices, "usage": _usage(usage_prompt, results)}

    @app.post("/v1/score")
    async def score(req: ScoreRequest) -> dict[str, Any]:
        if state.reward is None:
            raise ApiError(404, "this server has no reward model; start it with --reward-model RM_CHECKPOINT",
                           code="not_found")
        scorer = state.reward
        if req.prompt is None:
            scores = await asyncio.to_thread(scorer.score, req.texts)
        else:
            pairs = [([{"role": "user", "content": req.prompt}], t) for t in req.texts]
            scores = await asyncio.to_thread(scorer.score_completions, pairs)
        return {"object": "list", "data": [{"object": "score", "index": i, "score": v} for i, v in enumerate(scores)]}

    # vLLM's tokenizer endpoints: lm-evaluation-harness's `local-completions` finds them and then tokenizes
    # through the server, so it scores exactly the ids this model was trained on (no Hugging Face tokenizer).
    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        tok = state.tokenizer
        eot = None if tok.eot_id is None else tok.decode([tok.eot_id])
        return {"eos_token": eot, "bos_token": eot, "pad_token": None, "model_max_length": state.context_length,
                "chat_template": chat_template_jinja(state.template)}  # fmt: skip

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        _check_chars(state, len(req.prompt), param="prompt")
        ids = await asyncio.to_thread(state.tokenizer.encode, req.prompt, allowed_special="all")
        return {"tokens": ids, "count": len(ids), "max_model_len": state.context_length}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict[str, Any]:
        V = state.tokenizer.vocab_size
        if any(not 0 <= t < V for t in req.tokens):
            raise ApiError(400, f"tokens has ids outside 0..{V - 1}", param="tokens")
        return {"prompt": state.tokenizer.decode(req.tokens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        _check_model(state, req.model)
        messages = [m.as_dict() for m in req.messages]
        _check_chars(state, sum(len(m["content"]) for m in messages), param="messages")
        try:
            prompt = await asyncio.to_thread(chat_prompt, state.template, state.tokenizer, messages)
        except ScratchlmError as e:
            raise ApiError(400, str(e), param="messages") from None
        _check_length(state, [prompt.ids], param="messages")
        max_new = _max_new(state, *req.max_new(), [prompt.ids])
        top = (req.top_logprobs or 0) if req.logprobs else None
        cfg = _sample_config(req, max_new, logprobs=top)
        cfg.stop = prompt.stop_strings + cfg.stop
        stop_ids = [] if req.ignore_eos else prompt.stop_ids
        job = _submit(state, [prompt.ids], cfg, stop_ids=stop_ids)
        meta = _meta("chatcmpl", req.model, "chat.completion")
        if req.stream:
            return _sse(state, job, _chat_chunks(state, job, meta, req, len(prompt.ids)))
        results = await _collect(state, job, request)
        if results is None:
            return _CLIENT_GONE
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": _chat_logprobs(state.tokenizer, r.ids, r.logprobs) if req.logprobs else None,
                "finish_reason": r.finish_reason,
            }
            for i, r in enumerate(results)
        ]
        return {**meta, "choices": choices, "usage": _usage(len(prompt.ids), results)}

    return app


# ---- request handling ------------------------------------------------------------------------------------------
def _model_card(state: ServerState) -> dict[str, Any]:
    return {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "scratchlm",
        "context_length": state.context_length,
    }


def _check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise ApiError(
            404,
            f"The model {name!r} does not exist; this server serves {state.model_name!r}",
            param="model",
            code="model_not_found",
        )


def _longest_token_bytes(tokenizer: Any) -> int:
    try:
        return max((len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size)), default=1) or 1
    except Exception:  # noqa: BLE001 - a tokenizer with holes in its ids: no early length check, tokenize instead
        return 2**62


def _check_chars(state: ServerState, n_chars: int, param: str) -> None:
    """Refuse text that cannot fit before tokenizing it: each token covers at most `max_token_bytes` bytes, so
    a text needs at least n_chars / max_token_bytes tokens (tokenizing 8 MB of text takes many seconds)."""
    if n_chars > state.context_length * state.max_token_bytes:
        raise ApiError(
            400,
            f"The {param} is {n_chars} characters, far more than {state.limit_name} of {state.context_length} "
            "tokens can hold; shorten it",
            param=param,
            code="context_length_exceeded",
        )


def _prompt_ids(state: ServerState, prompt: Any) -> list[list[int]]:
    """OpenAI's four prompt forms: a string, strings, token ids, lists of token ids. Runs in a worker thread."""
    texts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
    for t in texts:
        _check_chars(state, len(t), param="prompt")
    if isinstance(prompt, str):
        prompts = [encode_prompt(state.tokenizer, prompt)]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    else:
        prompts = [encode_prompt(state.tokenizer, p) if isinstance(p, str) else list(p) for p in prompt]
    if not prompts or any(not p for p in prompts):
        raise ApiError(400, "prompt is empty; give a string or a non-empty list of token ids", param="prompt")
    V = state.tokenizer.vocab_size
    if any(not 0 <= t < V for p in prompts for t in p):
        raise ApiError(400, f"prompt has token ids outside 0..{V - 1}", param="prompt")
    _check_length(state, prompts, param="prompt")
    return prompts


def _check_length(state: ServerState, prompts: list[list[int]], param: str) -> None:
    longest = max(len(p) for p in prompts)
    if longest > state.context_length:
        raise ApiError(
            400,
            f"{state.limit_name[0].upper() + state.limit_name[1:]} is {state.context_length} tokens, however you "
            f"requested {longest} tokens in the {param}; shorten the {param}",
            param=param,
            code="context_length_exceeded",
        )


def _max_new(state: ServerState, max_tokens: int | None, param: str, prompts: list[list[int]]) -> int:
    """New tokens to allow. `param` is the field the client sent (max_tokens or max_completion_tokens), so the
    error names it. More than the cache row has left is allowed: the sequence stops at the row's end ("length")."""
    room = state.context_length - min(len(p) for p in prompts)
    if max_tokens is None:
        return room
    if max_tokens < 0:
        raise ApiError(400, f"{param} must be >= 0, got {max_tokens}", param=param, code="invalid_value")
    return min(max_tokens, room)


def _best_of(req: CompletionRequest) -> int:
    """Samples per prompt to draw: best_of (checked against n and stream), else n."""
    if req.best_of is None:
        return req.n
    if req.best_of < req.n:
        raise ApiError(400, f"best_of ({req.best_of}) must be at least n ({req.n})", param="best_of",
                       code="invalid_value")
    if req.stream and req.best_of > req.n:
        raise ApiError(400, "best_of cannot be streamed; drop stream or best_of", param="best_of",
                       code="invalid_value")
    return req.best_of


def _returned(results: list[_Result], drawn: int, keep: int) -> list[int]:
    """Indices of the results to return: per prompt (groups of `drawn`), the `keep` with the highest mean token
    logprob, in sampling order; all of them when nothing was drawn extra."""
    if drawn == keep:
        return list(range(len(results)))
    out = []
    for g in range(0, len(results), drawn):
        ranked = sorted(range(g, g + drawn), key=lambda i: mean_logprob(results[i]), reverse=True)
        out += sorted(ranked[:keep])
    return out


def _sample_config(req: Any, max_new: int, logprobs: int | None) -> SampleConfig:
    try:
        return req.sample_config(max_new, logprobs=logprobs)
    except ConfigError as e:  # SampleConfig's own range checks (a 64-bit seed, finite numbers)
        raise ApiError(400, str(e), param=getattr(e, "param", None), code="invalid_value") from None


def _submit(
    state: ServerState, prompts: list[list[int]], cfg: SampleConfig, stop_ids: list[int], echo_logprobs: bool = False
) -> Job:
    seqs = [s for group in make_sequences(prompts, cfg, stop_ids) for s in group]
    for s in seqs:
        s.echo_logprobs = echo_logprobs
    job = Job(seqs, state.tokenizer, cfg.stop, asyncio.get_running_loop())
    try:
        state.worker.submit(job)
    except NeverFits as e:
        raise ApiError(400, str(e), param="n" if cfg.n > 1 else "prompt", code="invalid_value") from None
    except QueueFull as e:
        raise ApiError(
            429, f"the server is busy: {e}", type_="rate_limit_error", code="rate_limit_exceeded"
        ) from None
    return job


@dataclass
class _Result:
    text: str = ""
    ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


_CLIENT_GONE = Response(status_code=499)  # nginx's "client closed request"; nobody reads it
_GONE = Piece(-1, "")  # put on a job's queue by `_watch_disconnect`


async def _collect(state: ServerState, job: Job, request: Request) -> list[_Result] | None:
    """All pieces of a non-streaming job; None (and the job cancelled) if the client hangs up first."""
    results = [_Result() for _ in job.seqs]
    pending = len(results)
    watcher = asyncio.create_task(_watch_disconnect(request, job))
    try:
        while pending:
            piece = await job.events.get()
            if piece is _GONE:
                state.worker.cancel(job)
                return None
            _check_piece(piece)
            r = results[piece.index]
            r.text += piece.text
            r.ids += piece.token_ids
            r.logprobs += piece.logprobs
            if piece.finish_reason:
                r.finish_reason = piece.finish_reason
                pending -= 1
    except BaseException:
        state.worker.cancel(job)
        raise
    finally:
        watcher.cancel()
    return results


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Wait for the client to hang up (the body is read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.events.put_nowait(_GONE)


def _check_piece(piece: Piece) -> None:
    if piece.error:
        raise ApiError(500, piece.error, type_="server_error")


def _usage(prompt_tokens: int, results: list[_Result]) -> dict[str, int]:
    completion = sum(len(r.ids) for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _meta(prefix: str, model: str, obj: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex[:24]}",
        "object": obj,
        "created": int(time.time()),
        "model": model,
    }


# ---- streaming ---------------------------------------------------------------------------------------------------
def _sse(state: ServerState, job: Job, chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        except ApiError as e:  # the stream has started (status 200 is sent): report the error in the stream
            yield f"data: {json.dumps(e.body)}\n\n"
            yield "data: [DONE]\n\n"
        except Exception as e:  # noqa: BLE001  - never end a stream without saying why and [DONE]
            log.exception("stream failed")
            yield f"data: {json.dumps(error_body(f'{type(e).__name__}: {e}', 'server_error'))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if any(not s.finished for s in job.seqs):
                state.worker.cancel(job)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


async def _pieces(job: Job) -> AsyncIterator[Piece]:
    pending = len(job.seqs)
    while pending:
        piece = await job.events.get()
        _check_piece(piece)
        if piece.finish_reason:
            pending -= 1
        yield piece


async def _completion_chunks(
    state: ServerState,
    job: Job,
    meta: dict[str, Any],
    echo: list[str],
    req: CompletionRequest,
    prompt_tokens: int,
) -> AsyncIterator[dict[str, Any]]:
    results = [_Result() for _ in job.seqs]
    offsets = [len(e) for e in echo]
    for i, e in enumerate(echo):
        if e:
            yield {**meta, "choices": [{"text": e, "index": i, "logprobs": None, "finish_reason": None}]}
    async for p in _pieces(job):
        r = results[p.index]
        r.ids += p.token_ids
        lp = None
        if req.logprobs is not None:
            lp = _completion_logprobs(state.tokenizer, p.token_ids, p.logprobs, offsets[p.index])
            offsets[p.index] += sum(len(t) for t in lp["tokens"])
        yield {
            **meta,
            "choices": [{"text": p.text, "index": p.index, "logprobs": lp, "finish_reason": p.finish_reason}],
        }
    if req.include_usage():
        yield {**meta, "choices": [], "usage": _usage(prompt_tokens, results)}


async def _chat_chunks(
    state: ServerState, job: Job, meta: dict[str, Any], req: ChatCompletionRequest, prompt_tokens: int
) -> AsyncIterator[dict[str, Any]]:
    meta = {**meta, "object": "chat.completion.chunk"}
    results = [_Result() for _ in job.seqs]
    for i in range(len(job.seqs)):
        delta = {"role": "assistant", "content": ""}
        yield {**meta, "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}]}
    async for p in _pieces(job):
        results[p.index].ids += p.token_ids
        lp = _chat_logprobs(state.tokenizer, p.token_ids, p.logprobs) if req.logprobs else None
        if p.text or lp:
            yield {
                **meta,
                "choices": [
                    {"index": p.index, "delta": {"content": p.text}, "logprobs": lp, "finish_reason": None}
                ],
            }
        if p.finish_reason:
            yield {
                **meta,
                "choices": [
                    {"index": p.index, "delta": {}, "logprobs": None, "finish_reason": p.finish_reason}
                ],
            }
    if req.include_usage():
        yield {**meta, "choices": [], "usage": _usage(prompt_tokens, results)}


# ---- logprobs --------------------------------------------------------------------------------------------------
def _token_str(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _completion_logprobs(
    tokenizer: Any, ids: list[int], lps: list[TokenLogprob], offset: int
) -> dict[str, Any]:
    """The legacy completions shape: parallel lists of tokens, their logprobs, the top alternatives, offsets."""
    tokens = [_token_str(tokenizer, t) for t in ids]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{_token_str(tokenizer, t): v for t, v in lp.top} for lp in lps],
        "text_offset": offsets,
    }


def _echo_logprobs(tokenizer: Any, seq: Any, r: _Result) -> dict[str, Any]:
    """Logprobs of the prompt, then of the generated tokens, then of the stop token if one ended the reply (it
    is in no text, but listed, as OpenAI and vLLM do). The first prompt token has no logprob: None."""
    ids, lps = list(seq.prompt) + r.ids, [*seq.prompt_logprobs, *r.logprobs]
    if seq.stop_logprob is not None:
        ids.append(seq.stop_logprob[0])
        lps.append(seq.stop_logprob[1])
    out = _completion_logprobs(tokenizer, ids, lps, 0)
    out["token_logprobs"] = [None, *out["token_logprobs"]]
    out["top_logprobs"] = [None, *out["top_logprobs"]]
    return out


def _chat_logprobs(tokenizer: Any, ids: list[int], lps: list[TokenLogprob]) -> dict[str, Any]:
    def entry(t: int, v: float) -> dict[str, Any]:
        return {"token": _token_str(tokenizer, t), "logprob": v, "bytes": list(tokenizer.decode_bytes([t]))}

    return {
        "content": [
            {**entry(t, lp.logprob), "top_logprobs": [entry(a, v) for a, v in lp.top]}
            for t, lp in zip(ids, lps)
        ]
    }


# ---- errors and auth ---------------------------------------------------------------------------------------------
def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            body = error_body(
                f"malformed JSON in the request body: {first.get('ctx', {}).get('error', '')}".strip(),
                "invalid_request_error",
                None,
                "invalid_json",
            )
            return JSONResponse(body, status_code=400)
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = (
            f"{param}: {first.get('msg', 'invalid value')}"
            if param
            else str(first.get("msg", "invalid request"))
        )
        return JSONResponse(
            error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no route {request.url.path}; see /v1/models, /v1/completions, /v1/chat/completions"
        return JSONResponse(error_body(message, "invalid_request_error"), status_code=exc.status_code)


class ApiKeyMiddleware:
    """`--api-key`: every /v1 request needs `Authorization: Bearer <key>`, else 401 (the page and /health stay open)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.expected = app, api_key.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, key = given.strip().partition(b" ")
            # the scheme is case-insensitive (RFC 9110: "bearer" and "BEARER" are "Bearer")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(key.strip(), self.expected):
                body = error_body(
                    "Incorrect API key provided; pass it as 'Authorization: Bearer <key>'",
                    "invalid_request_error",
                    None,
                    "invalid_api_key",
                )
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, from Content-Length or while they arrive, so a huge
    body is neither buffered whole nor parsed; the body read so far is replayed to the app otherwise."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send, int(length))
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, size)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any, size: int) -> None:
        body = error_body(
            f"the request body is {'at least ' if size <= self.max_bytes else ''}{size} bytes, over this server's "
            f"limit of {self.max_bytes} bytes (--max-request-mb); send a smaller request",
            "invalid_request_error",
            None,
            "request_too_large",
        )
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


# ---- running ---------------------------------------------------------------------------------------------------
class BackgroundServer:
    """Run `app` under uvicorn in a thread on a free port (tests, benchmarks): `with BackgroundServer(app) as url:`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # "::1" is IPv6
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{shown}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
