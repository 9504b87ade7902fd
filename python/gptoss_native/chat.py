"""The harmony chat format, through `openai-harmony`, fully offline.

openai-harmony loads the o200k_base vocabulary by name and would download it unless
`TIKTOKEN_ENCODINGS_BASE` names a folder holding `o200k_base.tiktoken`. We derive that
file from the model's own tokenizer.json into a cache folder and point the variable
there, unless the user already set it (then it is respected as is).

Messages are OpenAI Chat Completions style; `render_chat` maps them to harmony
messages and `parse_completion` maps completion tokens back, never raising on
malformed model output.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ._errors import GptOssError

__all__ = [
    "ChatResponse",
    "ChatEvent",
    "render_chat",
    "parse_completion",
    "harmony_encoding",
    "prepare_harmony_vocab",
    "O200K_BASE_SHA256",
    "REASONING_EFFORTS",
]

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
REASONING_EFFORTS = ("low", "medium", "high")
ENV = "TIKTOKEN_ENCODINGS_BASE"

_lock = threading.Lock()
_encoding = None


def _cache_dir() -> Path:
    from .cli import cache_dir

    return cache_dir()


def prepare_harmony_vocab(tokenizer_json: str | os.PathLike[str] | None = None, cache: Path | None = None) -> Path | None:
    """Make `o200k_base.tiktoken` available to openai-harmony without the network.

    If TIKTOKEN_ENCODINGS_BASE is already set, it is respected and returned. Otherwise the
    ranks file is derived from `tokenizer_json` into `<cache>/tiktoken/` (checked against
    the official sha256), and the variable is pointed there.
    """
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    folder = (cache or _cache_dir()) / "tiktoken"
    target = folder / "o200k_base.tiktoken"
    if not target.is_file():
        if tokenizer_json is None:
            return None
        from .tokenizer import tiktoken_ranks_from_tokenizer_json

        data = tiktoken_ranks_from_tokenizer_json(tokenizer_json)
        digest = hashlib.sha256(data).hexdigest()
        if digest != O200K_BASE_SHA256:
            raise GptOssError(
                f"{tokenizer_json}: its vocabulary is not o200k_base (sha256 {digest[:12]}..., "
                f"expected {O200K_BASE_SHA256[:12]}...): the harmony chat format needs o200k_harmony"
            )
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(target)
    os.environ[ENV] = str(folder)
    return folder


def harmony_encoding(tokenizer_json: str | os.PathLike[str] | None = None):
    """openai-harmony's gpt-oss encoding, loaded offline (see `prepare_harmony_vocab`)."""
    global _encoding
    with _lock:
        if _encoding is None:
            prepare_harmony_vocab(tokenizer_json)
            if not os.environ.get(ENV):
                raise GptOssError(
                    "the harmony chat format needs the o200k_base vocabulary: pass a model folder with "
                    "tokenizer.json, or set TIKTOKEN_ENCODINGS_BASE to a folder holding o200k_base.tiktoken"
                )
            from openai_harmony import HarmonyEncodingName, load_harmony_encoding

            try:
                _encoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
            except Exception as e:
                raise GptOssError(f"cannot load the harmony encoding from {os.environ.get(ENV)}: {e}") from None
        return _encoding


# --- response objects --------------------------------------------------------------

@dataclass
class ChatResponse:
    """A parsed completion: what `model.chat` and `gn.parse_completion` return."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict[str, Any] = field(default_factory=dict)
    #: the completion's token ids
    tokens: list[int] = field(default_factory=list)
    #: per token {"token", "logprob", "top_logprobs": [{"token", "logprob"}]} when asked for
    logprobs: list[dict[str, Any]] | None = None

    def to_message(self) -> dict[str, Any]:
        """This response as an assistant message to append to `messages`."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            msg["reasoning"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


@dataclass
class ChatEvent:
    """A streamed event: type in "reasoning", "content", "tool_call", "done"."""

    type: str
    delta: str = ""
    #: for "tool_call": {"index", "id", "name"} (name and id on the call's first event)
    tool_call: dict[str, Any] | None = None
    #: for "done": the full response
    response: ChatResponse | None = None


def _tool_call_id() -> str:
    return "call_" + secrets.token_hex(12)


# --- rendering -------------------------------------------------------------------

def _text(content: Any) -> str:
    """Chat Completions content: a string, None, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                out.append(str(part.get("text", "")))
            elif isinstance(part, str):
                out.append(part)
            else:
                raise ValueError(f"unsupported content part {part!r}: only text parts are supported")
        return "".join(out)
    raise ValueError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def _tool_descriptions(tools: Sequence[dict[str, Any]] | None):
    from openai_harmony import ToolDescription

    out = []
    for i, t in enumerate(tools or []):
        if not isinstance(t, dict):
            raise ValueError(f"tools[{i}] must be an object")
        fn = t.get("function", t) if t.get("type", "function") == "function" else None
        if fn is None or not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"tools[{i}].function.parameters must be a JSON schema object")
        out.append(ToolDescription.new(fn["name"], fn.get("description") or "", parameters=params))
    return out


def _harmony_messages(
    messages: Sequence[dict[str, Any]],
    reasoning_effort: str,
    tools: Sequence[dict[str, Any]] | None,
    current_date: str | None,
):
    from openai_harmony import (
        Author,
        DeveloperContent,
        Message,
        ReasoningEffort,
        Role,
        SystemContent,
    )

    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, got {reasoning_effort!r}")
    if not isinstance(messages, (list, tuple)):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} objects")
    system = SystemContent.new().with_reasoning_effort(ReasoningEffort(reasoning_effort.capitalize()))
    if current_date is not None:
        _dt.date.fromisoformat(current_date)  # ValueError on a bad date
        system = system.with_conversation_start_date(current_date)
    instructions = []
    rest = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}] must be an object with a 'role'")
        if m["role"] in ("system", "developer"):
            instructions.append(_text(m.get("content")))
        else:
            rest.append((i, m))
    out = [Message.from_role_and_content(Role.SYSTEM, system)]
    tool_desc = _tool_descriptions(tools)
    if instructions or tool_desc:
        dev = DeveloperContent.new()
        if instructions:
            dev = dev.with_instructions("\n\n".join(instructions))
        if tool_desc:
            dev = dev.with_function_tools(tool_desc)
        out.append(Message.from_role_and_content(Role.DEVELOPER, dev))
    call_names: dict[str, str] = {}
    for i, m in rest:
        role = m["role"]
        if role == "user":
            out.append(Message.from_role_and_content(Role.USER, _text(m.get("content"))))
        elif role == "assistant":
            reasoning = m.get("reasoning") or m.get("reasoning_content")
            if reasoning:
                out.append(Message.from_role_and_content(Role.ASSISTANT, _text(reasoning)).with_channel("analysis"))
            for j, tc in enumerate(m.get("tool_calls") or []):
                fn = tc.get("function", {}) if isinstance(tc, dict) else {}
                name = fn.get("name")
                if not isinstance(name, str) or not name:
                    raise ValueError(f"messages[{i}].tool_calls[{j}].function.name is missing")
                args = fn.get("arguments", "{}")
                if not isinstance(args, str):
                    args = json.dumps(args)
                if tc.get("id"):
                    call_names[tc["id"]] = name
                out.append(
                    Message.from_role_and_content(Role.ASSISTANT, args)
                    .with_channel("commentary")
                    .with_recipient(f"functions.{name}")
                    .with_content_type("<|constrain|>json")
                )
            content = _text(m.get("content"))
            if content:
                out.append(Message.from_role_and_content(Role.ASSISTANT, content).with_channel("final"))
        elif role == "tool":
            name = m.get("name") or call_names.get(m.get("tool_call_id", ""))
            if not name:
                raise ValueError(f"messages[{i}]: a tool message needs a 'tool_call_id' of an earlier tool call (or a 'name')")
            out.append(
                Message.from_author_and_content(Author.new(Role.TOOL, f"functions.{name}"), _text(m.get("content")))
                .with_channel("commentary")
            )
        else:
            raise ValueError(f"messages[{i}]: unknown role {role!r} (system, developer, user, assistant, tool)")
    return out


def render_chat(
    messages: Sequence[dict[str, Any]],
    *,
    reasoning_effort: str = "medium",
    tools: Sequence[dict[str, Any]] | None = None,
    current_date: str | None | type(...) = ...,
    tokenizer_json: str | os.PathLike[str] | None = None,
) -> list[int]:
    """The exact prompt tokens for `messages`, ending with `<|start|>assistant`.

    `system`/`developer` contents become the harmony developer instructions; the system
    message carries `reasoning_effort` and `current_date` ("YYYY-MM-DD", default today,
    None leaves the line out). The chain of thought of a turn that ended with a final
    answer is dropped (harmony's rule); it is kept while a tool call is under way.
    """
    from openai_harmony import Conversation, Role

    if current_date is ...:
        current_date = _dt.date.today().isoformat()
    enc = harmony_encoding(tokenizer_json)
    convo = Conversation.from_messages(_harmony_messages(messages, reasoning_effort, tools, current_date))
    return list(enc.render_conversation_for_completion(convo, Role.ASSISTANT))


# --- parsing ---------------------------------------------------------------------

def _new_parser(enc):
    from openai_harmony import Role, StreamableParser

    return StreamableParser(enc, Role.ASSISTANT, strict=False)


def _harvest(parser) -> list[tuple[str | None, str | None, str]]:
    """(channel, recipient, text) of a parser's finished messages and its partial one."""
    out = []
    for m in parser.messages:
        text = "".join(getattr(c, "text", "") for c in m.content)
        out.append((m.channel, m.recipient, text))
    try:
        partial = parser.current_content
    except Exception:
        partial = ""
    if partial:
        out.append((parser.current_channel, parser.current_recipient, partial))
    return out


def _function_name(recipient: str | None) -> str | None:
    if not recipient:
        return None
    r = recipient.strip()
    if r.startswith("functions."):
        return r[len("functions.") :] or None
    return r or None


def parse_completion(token_ids: Iterable[int], *, tokenizer_json: str | os.PathLike[str] | None = None) -> ChatResponse:
    """Completion tokens -> ChatResponse (content, reasoning, tool_calls, finish_reason).

    Never raises on malformed or truncated model output: whatever the harmony parser
    could make sense of is returned; a token it rejects starts a fresh parse.
    """
    enc = harmony_encoding(tokenizer_json)
    tokens = [int(t) for t in token_ids]
    msgs: list[tuple[str | None, str | None, str]] = []
    parser = _new_parser(enc)
    for t in tokens:
        try:
            parser.process(t)
        except Exception:
            msgs += _harvest(parser)
            parser = _new_parser(enc)
    try:
        parser.process_eos()
    except Exception:
        pass
    msgs += _harvest(parser)
    return _response_from_messages(msgs, tokens)


def _response_from_messages(msgs, tokens: list[int]) -> ChatResponse:
    reasoning, content, calls = [], [], []
    for channel, recipient, text in msgs:
        name = _function_name(recipient)
        if name is not None and recipient and recipient.startswith("functions."):
            calls.append({"id": _tool_call_id(), "type": "function", "function": {"name": name, "arguments": text}})
        elif channel == "analysis":
            reasoning.append(text)
        elif channel in ("final", "commentary", None) and name is None:
            content.append(text)
    last = tokens[-1] if tokens else None
    if last == 200012:
        finish = "tool_calls" if calls else "stop"
    elif last in (200002, 200007):
        finish = "stop"
    else:
        finish = "length"
    n = len(tokens)
    return ChatResponse(
        content="".join(content),
        reasoning="".join(reasoning),
        tool_calls=calls,
        finish_reason=finish,
        usage={"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n},
        tokens=tokens,
    )


class StreamDecoder:
    """Feeds completion tokens to harmony's streaming parser and turns them into
    ChatEvents; never raises on malformed output (a rejected token restarts the parse).
    Text deltas come from harmony, which holds back incomplete UTF-8 sequences."""

    def __init__(self, enc):
        self._enc = enc
        self._parser = _new_parser(enc)
        self._done: list[tuple[str | None, str | None, str]] = []
        self._call_index = -1
        self._call_key: tuple[int, str | None] | None = None
        self._msg_count = 0
        self.calls: list[dict[str, Any]] = []

    def feed(self, token: int) -> list[ChatEvent]:
        try:
            self._parser.process(int(token))
        except Exception:
            self._done += _harvest(self._parser)
            self._parser = _new_parser(self._enc)
            self._msg_count = 0
            return []
        p = self._parser
        delta = p.last_content_delta
        if not delta:
            return []
        channel, recipient = p.current_channel, p.current_recipient
        name = _function_name(recipient) if recipient and recipient.startswith("functions.") else None
        if name is not None:
            key = (len(self._done) + len(p.messages), recipient)
            events = []
            if key != self._call_key:
                self._call_key = key
                self._call_index += 1
                call = {"index": self._call_index, "id": _tool_call_id(), "name": name}
                self.calls.append(call)
                events.append(ChatEvent("tool_call", "", dict(call)))
            events.append(ChatEvent("tool_call", delta, {"index": self._call_index}))
            return events
        if channel == "analysis":
            return [ChatEvent("reasoning", delta)]
        return [ChatEvent("content", delta)]

    def finish(self, tokens: list[int]) -> ChatResponse:
        try:
            self._parser.process_eos()
        except Exception:
            pass
        resp = _response_from_messages(self._done + _harvest(self._parser), tokens)
        # Keep the ids the stream already announced.
        for call, announced in zip(resp.tool_calls, self.calls):
            call["id"] = announced["id"]
        return resp
