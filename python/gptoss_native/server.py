"""An OpenAI-compatible HTTP server: `gptoss-native serve MODEL`.

Routes: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions,
POST /v1/responses (plus the OpenAPI schema at /openapi.json). Needs the `server`
extra: `pip install 'gptoss-native[server]'` (FastAPI and uvicorn).

Concurrency: every request gets a session from a bounded pool (`max_sessions`); a
request that finds none free waits its turn (FIFO). Generation runs in a worker
thread; the Rust core releases the GIL. Prompts are processed side by side on the
shared kernel threads; the generations that are decoding advance together, one token
each per batched pass that reads the weights once for all of them
(`generate.StepBatcher`). An idle session keeps its KV cache, and a new request takes
the idle session sharing the longest prefix with its prompt (reported as
`cached_tokens`). A client that disconnects mid-stream stops its generation, and its
session goes back to the pool.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Optional, Union

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - the optional extra is missing
    raise ImportError("the server needs its extra: pip install 'gptoss-native[server]'") from e

from .generate import _common_prefix

__all__ = ["create_app", "serve", "SessionPool"]

MAX_BODY_BYTES = 8 << 20

# --- request schemas (published in /openapi.json) ----------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionDef(_Open):
    name: str = Field(min_length=1)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class ChatTool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class ToolCallFunction(_Open):
    name: str
    arguments: str = "{}"


class ToolCall(_Open):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None
    reasoning: Optional[str] = None
    reasoning_content: Optional[str] = None


class StreamOptions(_Open):
    include_usage: bool = False


class _Sampling(_Open):
    """The fields /v1/chat/completions and /v1/completions share."""

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    n: Optional[int] = Field(default=None, ge=1)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: Optional[list[ChatTool]] = None
    tool_choice: Union[Literal["auto", "none", "required"], dict[str, Any], None] = None
    reasoning_effort: Optional[Literal["low", "medium", "high"]] = None
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int]]


class ResponsesReasoning(_Open):
    effort: Optional[Literal["low", "medium", "high"]] = None


class ResponsesTool(_Open):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class ResponsesRequest(_Open):
    model: Optional[str] = None
    input: Union[str, list[dict[str, Any]]]
    instructions: Optional[str] = None
    reasoning: Optional[ResponsesReasoning] = None
    tools: Optional[list[ResponsesTool]] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    stream: Optional[bool] = False


# --- errors -----------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class APIError(Exception):
    """An error answered as an OpenAI error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --- sessions ---------------------------------------------------------------------


@dataclass
class _Slot:
    session: Any
    busy: bool = False
    last_used: float = field(default_factory=time.monotonic)


class SessionPool:
    """At most `size` sessions; acquire() picks the idle one sharing the longest prefix
    with the prompt (its KV cache is reused), waiting FIFO when all are busy."""

    def __init__(self, factory: Callable[[], Any], size: int):
        if size < 1:
            raise ValueError("the session pool needs at least one session")
        self._factory = factory
        self._size = size
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._free = asyncio.Semaphore(size)

    @property
    def active(self) -> int:
        with self._lock:
            return sum(s.busy for s in self._slots)

    async def acquire(self, prompt: list[int]) -> _Slot:
        await self._free.acquire()
        with self._lock:
            idle = [s for s in self._slots if not s.busy]
            best = None
            best_len = -1
            for s in idle:
                n = _common_prefix(s.session.tokens, prompt)
                if n > best_len or (n == best_len and best is not None and s.last_used < best.last_used):
                    best, best_len = s, n
            if best is None or (best_len == 0 and len(self._slots) < self._size):
                best = _Slot(self._factory())
                self._slots.append(best)
            best.busy = True
            return best

    def release(self, slot: _Slot) -> None:
        with self._lock:
            slot.busy = False
            slot.last_used = time.monotonic()
        self._free.release()


# --- the app ----------------------------------------------------------------------


class _Guard:
    """ASGI middleware: the API key (every route but /health) and the body size limit."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def _reject(self, scope, receive, send, e: APIError) -> None:
        await JSONResponse(e.body(), status_code=e.status)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"] != "/health":
            if headers.get(b"authorization", b"") != f"Bearer {self.api_key}".encode():
                return await self._reject(scope, receive, send, APIError(
                    401, "Invalid or missing API key (Authorization: Bearer ...)", "authentication_error",
                    code="invalid_api_key"))
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await self._reject(scope, receive, send, APIError(400, "invalid Content-Length"))
            if too_big:
                return await self._reject(scope, receive, send, APIError(
                    413, f"request body larger than {self.max_body} bytes"))
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge()
            return msg

        await self.app(scope, limited, send)


def _now() -> int:
    return int(time.time())


def _sse(obj: Any, event: str | None = None) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


def create_app(
    model,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    max_sessions: int = 4,
    max_body_bytes: int = MAX_BODY_BYTES,
    session_factory: Callable[[], Any] | None = None,
):
    """The FastAPI app serving `model` (a loaded gptoss_native.Model)."""
    from . import generate as gen
    from ._errors import ContextLengthError, GptOssError
    from .chat import ChatEvent, ChatResponse, harmony_encoding, render_chat

    name = model_name or os.path.basename(os.path.normpath(str(model.path)))
    created = _now()
    app = FastAPI(title="gptoss-native", version=__import__("gptoss_native").__version__,
                  description="OpenAI-compatible API for gpt-oss, served by gptoss-native.")
    state: dict[str, Any] = {}
    # Concurrent generations advance together, one token each per pass over the weights.
    batcher = gen.StepBatcher(model)

    def pool() -> SessionPool:
        # Created lazily inside the running event loop (asyncio primitives bind to it).
        if "pool" not in state:
            state["pool"] = SessionPool(session_factory or model.session, max_sessions)
        return state["pool"]

    def error_response(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, e: APIError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{loc}: {first.get('msg', 'invalid request')}" if loc else str(first.get("msg", "invalid request"))
        return error_response(APIError(400, msg, param=loc or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(APIError(e.status_code, str(e.detail), kind))

    @app.exception_handler(Exception)
    async def _internal(_request: Request, e: Exception):
        if isinstance(e, _BodyTooLarge):
            return error_response(APIError(413, f"request body larger than {max_body_bytes} bytes"))
        return error_response(APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != name:
            raise APIError(404, f"The model `{requested}` does not exist (this server serves `{name}`).",
                           "not_found_error", param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        p = state.get("pool")
        return {"status": "ok", "model": name, "active_sessions": p.active if p else 0,
                "decode_passes": batcher.batches, "decoded_tokens": batcher.fed}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "gptoss-native"}]}

    # -- shared generation machinery --

    def sampling(req) -> dict:
        return {
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "seed": getattr(req, "seed", None),
            "presence_penalty": getattr(req, "presence_penalty", None) or 0.0,
            "frequency_penalty": getattr(req, "frequency_penalty", None) or 0.0,
        }

    def cap_tokens(asked: int | None, prompt_len: int) -> int:
        room = model.max_context - prompt_len
        if room <= 0:
            raise APIError(400, f"This model's maximum context length is {model.max_context} tokens. However, your "
                                f"request has {prompt_len} prompt tokens, which leaves no room for a completion.",
                           param="messages", code="context_length_exceeded")
        return room if asked is None else min(asked, room)

    def render(messages: list[dict], effort: str, tools: list[dict] | None) -> list[int]:
        try:
            return render_chat(messages, reasoning_effort=effort, tools=tools, tokenizer_json=model.tokenizer_json_path())
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        except GptOssError as e:
            raise APIError(500, str(e), "server_error") from None

    async def run_events(prompt: list[int], make_events: Callable[[Any], Iterator[ChatEvent]],
                         stop_flag: threading.Event) -> AsyncIterator[ChatEvent]:
        """Run a blocking event generator in a worker thread with a pooled session."""
        slot = await pool().acquire(prompt)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def worker():
            session = batcher.wrap(slot.session)
            try:
                it = make_events(session)
                for ev in it:
                    loop.call_soon_threadsafe(queue.put_nowait, ev)
                    if stop_flag.is_set():
                        it.close()
                        break
            except BaseException as e:  # delivered to the request
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                session.close()
                # The session goes back to the pool when its generation has really stopped.
                loop.call_soon_threadsafe(pool().release, slot)
                loop.call_soon_threadsafe(queue.put_nowait, done)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, ContextLengthError):
                        raise APIError(400, str(item), code="context_length_exceeded")
                    if isinstance(item, ValueError):
                        raise APIError(400, str(item))
                    raise item
                yield item
        finally:
            # A disconnect cancels this coroutine: tell the worker to stop at its next token.
            stop_flag.set()

    async def final_response(prompt: list[int], make_events: Callable[[Any], Iterator[ChatEvent]],
                             stop_flag: threading.Event) -> ChatResponse:
        """Run the events to the end (a non-streamed request); the "done" event's response."""
        resp = None
        async for ev in run_events(prompt, make_events, stop_flag):
            if ev.type == "done":
                resp = ev.response
        return resp

    def chat_events(messages, effort, tools, params, max_new, stop, logprobs, top_logprobs, stop_flag):
        def make(session):
            return gen.chat(model, messages, reasoning_effort=effort, tools=tools, max_new_tokens=max_new, stop=stop,
                            logprobs=logprobs, top_logprobs=top_logprobs, stream=True, session=session,
                            cancel=stop_flag, **params)
        return make

    def usage_of(resp) -> dict:
        return {
            "prompt_tokens": resp.usage["prompt_tokens"],
            "completion_tokens": resp.usage["completion_tokens"],
            "total_tokens": resp.usage["total_tokens"],
            "prompt_tokens_details": {"cached_tokens": resp.usage["prompt_tokens_details"]["cached_tokens"]},
        }

    def logprobs_of(resp) -> dict | None:
        if resp.logprobs is None:
            return None
        tok = model.tokenizer

        def entry(t: int, lp: float) -> dict:
            s = tok.decode([t])
            return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

        return {"content": [{**entry(e["token"], e["logprob"]),
                             "top_logprobs": [entry(a["token"], a["logprob"]) for a in e["top_logprobs"]]}
                            for e in resp.logprobs]}

    # -- chat completions --

    def chat_inputs(req: ChatCompletionRequest):
        check_model(req.model)
        if req.n is not None and req.n > 1:
            raise APIError(400, "n > 1 is not supported", param="n")
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        choice = req.tool_choice
        if choice == "none":
            tools = None
        elif isinstance(choice, dict):
            fname = (choice.get("function") or {}).get("name")
            chosen = [t for t in (tools or []) if t["function"]["name"] == fname]
            if not chosen:
                raise APIError(400, f"tool_choice names function {fname!r}, which is not in tools", param="tool_choice")
            tools = chosen
            messages = [{"role": "developer", "content": f"Call the function {fname}."}] + messages
        elif choice == "required":
            if not tools:
                raise APIError(400, "tool_choice is 'required' but no tools were given", param="tool_choice")
            messages = [{"role": "developer", "content": "Call one of the functions."}] + messages
        prompt = render(messages, req.reasoning_effort or "medium", tools)
        asked = req.max_completion_tokens or req.max_tokens
        max_new = cap_tokens(asked, len(prompt))
        return messages, tools, prompt, max_new

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        messages, tools, prompt, max_new = chat_inputs(req)
        effort = req.reasoning_effort or "medium"
        stop_flag = threading.Event()
        make = chat_events(messages, effort, tools, sampling(req), max_new, req.stop, bool(req.logprobs),
                           req.top_logprobs or 0, stop_flag)
        cid = "chatcmpl-" + secrets.token_hex(12)
        if not req.stream:
            resp = await final_response(prompt, make, stop_flag)
            msg: dict[str, Any] = {"role": "assistant", "content": resp.content if resp.content or not resp.tool_calls else None}
            if resp.reasoning:
                msg["reasoning_content"] = resp.reasoning
            if resp.tool_calls:
                msg["tool_calls"] = resp.tool_calls
            return {
                "id": cid, "object": "chat.completion", "created": _now(), "model": name,
                "choices": [{"index": 0, "message": msg, "logprobs": logprobs_of(resp), "finish_reason": resp.finish_reason}],
                "usage": usage_of(resp),
            }

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream() -> AsyncIterator[str]:
            base = {"id": cid, "object": "chat.completion.chunk", "created": _now(), "model": name}

            def chunk(delta: dict, finish: str | None = None) -> str:
                return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

            yield chunk({"role": "assistant", "content": ""})
            try:
                async for ev in run_events(prompt, make, stop_flag):
                    if await request.is_disconnected():
                        stop_flag.set()
                        return
                    if ev.type == "reasoning":
                        yield chunk({"reasoning_content": ev.delta})
                    elif ev.type == "content":
                        yield chunk({"content": ev.delta})
                    elif ev.type == "tool_call":
                        tc = ev.tool_call or {}
                        if "name" in tc:
                            yield chunk({"tool_calls": [{"index": tc["index"], "id": tc["id"], "type": "function",
                                                         "function": {"name": tc["name"], "arguments": ""}}]})
                        if ev.delta:
                            yield chunk({"tool_calls": [{"index": tc["index"], "function": {"arguments": ev.delta}}]})
                    elif ev.type == "done":
                        resp = ev.response
                        yield chunk({}, resp.finish_reason)
                        if include_usage:
                            yield _sse({**base, "choices": [], "usage": usage_of(resp)})
            except APIError as e:
                yield _sse(e.body())
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- raw completions --

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        if req.n is not None and req.n > 1:
            raise APIError(400, "n > 1 is not supported", param="n")
        if isinstance(req.prompt, str):
            prompt = model.tokenizer.encode(req.prompt, allowed_special="all")
        else:
            prompt = list(req.prompt)
            bad = [t for t in prompt if not 0 <= t < model.config.vocab_size]
            if bad:
                raise APIError(400, f"prompt token id {bad[0]} is out of range", param="prompt")
        if not prompt:
            raise APIError(400, "prompt is empty", param="prompt")
        max_new = cap_tokens(req.max_tokens or 16, len(prompt))
        params = sampling(req)
        stop_strings = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        eos = model.config.eos_token_id
        stop_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        stop_flag = threading.Event()

        def make(session):
            cached = gen.reuse_prefix(session, prompt)
            out: list[int] = []
            text = ""
            finish = "length"
            sp = gen.SamplingParams(**params).validate()
            for step in gen.generate_steps(session, prompt[cached:], sp, max_new, stop_ids, model.config.vocab_size,
                                           stop_flag):
                if step.token in stop_ids:
                    finish = "stop"
                    break
                out.append(step.token)
                new_text = model.tokenizer.decode(out)
                cut = min((new_text.find(s) for s in stop_strings if s in new_text), default=-1)
                if cut >= 0:
                    yield ChatEvent("content", new_text[len(text):cut])
                    text = new_text[:cut]
                    finish = "stop"
                    break
                if not new_text.endswith("\ufffd"):  # hold back a split multi-byte character
                    yield ChatEvent("content", new_text[len(text):])
                    text = new_text
            n = len(out) + (1 if finish == "stop" and not stop_strings else 0)
            yield ChatEvent("done", response=ChatResponse(
                content=text, finish_reason=finish,
                usage={"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n,
                       "prompt_tokens_details": {"cached_tokens": cached}}))

        cid = "cmpl-" + secrets.token_hex(12)
        if not req.stream:
            resp = await final_response(prompt, make, stop_flag)
            return {"id": cid, "object": "text_completion", "created": _now(), "model": name,
                    "choices": [{"index": 0, "text": resp.content, "logprobs": None, "finish_reason": resp.finish_reason}],
                    "usage": usage_of(resp)}

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream() -> AsyncIterator[str]:
            base = {"id": cid, "object": "text_completion", "created": _now(), "model": name}
            try:
                async for ev in run_events(prompt, make, stop_flag):
                    if await request.is_disconnected():
                        stop_flag.set()
                        return
                    if ev.type == "content" and ev.delta:
                        yield _sse({**base, "choices": [{"index": 0, "text": ev.delta, "logprobs": None, "finish_reason": None}]})
                    elif ev.type == "done":
                        yield _sse({**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                                         "finish_reason": ev.response.finish_reason}]})
                        if include_usage:
                            yield _sse({**base, "choices": [], "usage": usage_of(ev.response)})
            except APIError as e:
                yield _sse(e.body())
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- responses --

    def responses_messages(req: ResponsesRequest) -> list[dict]:
        msgs: list[dict] = []
        if req.instructions:
            msgs.append({"role": "developer", "content": req.instructions})
        if isinstance(req.input, str):
            msgs.append({"role": "user", "content": req.input})
            return msgs
        pending_calls: list[dict] = []
        for i, item in enumerate(req.input):
            kind = item.get("type", "message")
            if kind == "message" or ("role" in item and kind not in ("function_call", "function_call_output", "reasoning")):
                role = item.get("role")
                if role not in ("user", "system", "developer", "assistant"):
                    raise APIError(400, f"input[{i}].role must be user, system, developer or assistant", param=f"input.{i}.role")
                content = item.get("content")
                if isinstance(content, list):
                    content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                elif not isinstance(content, str):
                    raise APIError(400, f"input[{i}].content must be a string or a list of text parts", param=f"input.{i}.content")
                if role == "assistant" and pending_calls:
                    msgs.append({"role": "assistant", "content": None, "tool_calls": pending_calls})
                    pending_calls = []
                msgs.append({"role": role, "content": content})
            elif kind == "reasoning":
                parts = item.get("content") or item.get("summary") or []
                text = "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
                msgs.append({"role": "assistant", "content": None, "reasoning": text})
            elif kind == "function_call":
                if not item.get("name") or not item.get("call_id"):
                    raise APIError(400, f"input[{i}]: a function_call needs name and call_id", param=f"input.{i}")
                pending_calls.append({"id": item["call_id"], "type": "function",
                                      "function": {"name": item["name"], "arguments": item.get("arguments", "{}")}})
            elif kind == "function_call_output":
                if pending_calls:
                    msgs.append({"role": "assistant", "content": None, "tool_calls": pending_calls})
                    pending_calls = []
                out = item.get("output", "")
                msgs.append({"role": "tool", "tool_call_id": item.get("call_id", ""),
                             "content": out if isinstance(out, str) else json.dumps(out)})
            else:
                raise APIError(400, f"input[{i}].type {kind!r} is not supported", param=f"input.{i}.type")
        if pending_calls:
            msgs.append({"role": "assistant", "content": None, "tool_calls": pending_calls})
        # Merge a reasoning item into the assistant turn that follows it.
        merged: list[dict] = []
        for m in msgs:
            if merged and merged[-1].get("role") == "assistant" and merged[-1].get("content") is None \
                    and "reasoning" in merged[-1] and "tool_calls" not in merged[-1] and m.get("role") == "assistant":
                m = {**m, "reasoning": merged.pop()["reasoning"]}
            merged.append(m)
        return merged

    def response_object(rid: str, resp, status: str, output: list[dict]) -> dict:
        u = resp.usage if resp else {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                                     "prompt_tokens_details": {"cached_tokens": 0}}
        reasoning_tokens = 0
        if resp and resp.reasoning:
            reasoning_tokens = len(model.tokenizer.encode(resp.reasoning, disallowed_special=()))
        obj = {
            "id": rid, "object": "response", "created_at": _now(), "model": name, "status": status,
            "output": output, "parallel_tool_calls": False, "tool_choice": "auto", "tools": [],
            "error": None, "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete" else None),
            "usage": {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
                      "total_tokens": u["total_tokens"],
                      "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"]},
                      "output_tokens_details": {"reasoning_tokens": reasoning_tokens}},
        }
        return obj

    def output_items(resp) -> list[dict]:
        items: list[dict] = []
        if resp.reasoning:
            items.append({"type": "reasoning", "id": "rs_" + secrets.token_hex(8), "summary": [],
                          "content": [{"type": "reasoning_text", "text": resp.reasoning}]})
        for tc in resp.tool_calls:
            items.append({"type": "function_call", "id": "fc_" + secrets.token_hex(8), "call_id": tc["id"],
                          "name": tc["function"]["name"], "arguments": tc["function"]["arguments"], "status": "completed"})
        if resp.content or not items:
            items.append({"type": "message", "id": "msg_" + secrets.token_hex(8), "role": "assistant", "status": "completed",
                          "content": [{"type": "output_text", "text": resp.content, "annotations": []}]})
        return items

    @app.post("/v1/responses")
    async def responses(req: ResponsesRequest, request: Request):
        check_model(req.model)
        messages = responses_messages(req)
        tools = [{"type": "function", "function": {k: v for k, v in t.model_dump(exclude_none=True).items() if k != "type"}}
                 for t in req.tools] if req.tools else None
        effort = (req.reasoning.effort if req.reasoning and req.reasoning.effort else None) or "medium"
        prompt = render(messages, effort, tools)
        max_new = cap_tokens(req.max_output_tokens, len(prompt))
        stop_flag = threading.Event()
        make = chat_events(messages, effort, tools, sampling(req), max_new, None, False, 0, stop_flag)
        rid = "resp_" + secrets.token_hex(12)
        if not req.stream:
            resp = await final_response(prompt, make, stop_flag)
            status = "incomplete" if resp.finish_reason == "length" else "completed"
            return response_object(rid, resp, status, output_items(resp))

        async def stream() -> AsyncIterator[str]:
            seq = 0

            def event(kind: str, **payload) -> str:
                nonlocal seq
                seq += 1
                return _sse({"type": kind, "sequence_number": seq, **payload}, event=kind)

            shell = response_object(rid, None, "in_progress", [])
            yield event("response.created", response=shell)
            yield event("response.in_progress", response=shell)
            index = -1
            current: dict | None = None  # the open output item
            text = ""

            def close_current():
                nonlocal current, text
                out = []
                if current is None:
                    return out
                if current["type"] == "message":
                    part = {"type": "output_text", "text": text, "annotations": []}
                    out.append(event("response.output_text.done", item_id=current["id"], output_index=index,
                                     content_index=0, text=text))
                    out.append(event("response.content_part.done", item_id=current["id"], output_index=index,
                                     content_index=0, part=part))
                    current = {**current, "status": "completed", "content": [part]}
                elif current["type"] == "reasoning":
                    part = {"type": "reasoning_text", "text": text}
                    out.append(event("response.reasoning_text.done", item_id=current["id"], output_index=index,
                                     content_index=0, text=text))
                    current = {**current, "content": [part]}
                else:
                    out.append(event("response.function_call_arguments.done", item_id=current["id"],
                                     output_index=index, arguments=text))
                    current = {**current, "arguments": text, "status": "completed"}
                out.append(event("response.output_item.done", output_index=index, item=current))
                current, text = None, ""
                return out

            def open_item(item: dict) -> list[str]:
                nonlocal current, index, text
                out = close_current()
                index += 1
                current, text = item, ""
                out.append(event("response.output_item.added", output_index=index, item=item))
                if item["type"] == "message":
                    out.append(event("response.content_part.added", item_id=item["id"], output_index=index,
                                     content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
                return out

            final = None
            try:
                async for ev in run_events(prompt, make, stop_flag):
                    if await request.is_disconnected():
                        stop_flag.set()
                        return
                    if ev.type == "reasoning":
                        if current is None or current["type"] != "reasoning":
                            for s in open_item({"type": "reasoning", "id": "rs_" + secrets.token_hex(8), "summary": [], "content": []}):
                                yield s
                        text += ev.delta
                        yield event("response.reasoning_text.delta", item_id=current["id"], output_index=index,
                                    content_index=0, delta=ev.delta)
                    elif ev.type == "content":
                        if current is None or current["type"] != "message":
                            for s in open_item({"type": "message", "id": "msg_" + secrets.token_hex(8), "role": "assistant",
                                                "status": "in_progress", "content": []}):
                                yield s
                        text += ev.delta
                        yield event("response.output_text.delta", item_id=current["id"], output_index=index,
                                    content_index=0, delta=ev.delta)
                    elif ev.type == "tool_call":
                        tc = ev.tool_call or {}
                        if "name" in tc:
                            for s in open_item({"type": "function_call", "id": "fc_" + secrets.token_hex(8),
                                                "call_id": tc["id"], "name": tc["name"], "arguments": "",
                                                "status": "in_progress"}):
                                yield s
                        if ev.delta and current is not None:
                            text += ev.delta
                            yield event("response.function_call_arguments.delta", item_id=current["id"],
                                        output_index=index, delta=ev.delta)
                    elif ev.type == "done":
                        final = ev.response
                for s in close_current():
                    yield s
                status = "incomplete" if final is not None and final.finish_reason == "length" else "completed"
                obj = response_object(rid, final, status, output_items(final) if final else [])
                yield event("response.completed" if status == "completed" else "response.incomplete", response=obj)
            except APIError as e:
                yield event("error", message=e.message, code=e.code, param=e.param)

        return StreamingResponse(stream(), media_type="text/event-stream")

    # Warm the harmony encoding (it loads the vocabulary from the model's tokenizer).
    try:
        harmony_encoding(model.tokenizer_json_path())
    except GptOssError:
        pass
    return app


def serve(model_path: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          threads: int | None = None, max_context: int | None = None, max_sessions: int = 4,
          model_name: str | None = None, precision: str = "auto") -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    import gptoss_native as gn

    model = gn.load(model_path, threads=threads, max_context=max_context, precision=precision)
    key = api_key if api_key is not None else os.environ.get("GPTOSS_NATIVE_API_KEY") or None
    app = create_app(model, model_name=model_name, api_key=key, max_sessions=max_sessions)
    uvicorn.run(app, host=host, port=port, log_level="info")
