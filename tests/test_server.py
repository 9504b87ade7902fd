"""The OpenAI-compatible server: a real server in a subprocess, the official client,
raw HTTP for the error paths."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import PYTHON

openai = pytest.importorskip("openai")

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir: Path, *extra: str):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [*PYTHON, str(HERE / "server_app.py"), "--model", str(model_dir), "--port", str(self.port), *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def client(self, key: str = "none"):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    s = Server(tiny_model_dir, "--max-context", "512", "--max-sessions", "4")
    yield s
    s.stop()


SCRIPTS = [
    '<|channel|>analysis<|message|>User wants weather. Call the tool.<|end|><|start|>assistant to=functions.get_weather'
    '<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
    "<|channel|>analysis<|message|>Got 21C.<|end|><|start|>assistant<|channel|>final<|message|>It is 21°C in Paris ☀️.<|return|>",
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture(scope="module")
def scripted(tiny_model_dir):
    s = Server(tiny_model_dir, "--scripts", json.dumps(SCRIPTS), "--max-sessions", "1")
    yield s
    s.stop()


def test_models_and_health(server):
    c = server.client()
    assert [m.id for m in c.models.list().data] == ["gpt-oss-test"]
    assert httpx.get(server.base + "/health").json()["status"] == "ok"
    schema = httpx.get(server.base + "/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"] and "/v1/responses" in schema["paths"]


def test_chat_non_streaming_and_streaming(server):
    c = server.client()
    msgs = [{"role": "user", "content": "Hello!"}]
    r = c.chat.completions.create(model="gpt-oss-test", messages=msgs, max_tokens=8, seed=1, reasoning_effort="low")
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.usage.prompt_tokens_details.cached_tokens >= 0
    chunks = list(c.chat.completions.create(model="gpt-oss-test", messages=msgs, max_tokens=8, seed=1, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8
    assert any(ch.choices and ch.choices[0].finish_reason for ch in chunks)
    lp = c.chat.completions.create(model="gpt-oss-test", messages=msgs, max_tokens=3, seed=2, logprobs=True,
                                   top_logprobs=2)
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in content)
    # The same conversation again reuses the cached prefix.
    r2 = c.chat.completions.create(model="gpt-oss-test", messages=msgs, max_tokens=4, seed=1)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r2.usage.prompt_tokens - 1


def test_reasoning_effort_changes_the_prompt(server):
    c = server.client()
    msgs = [{"role": "user", "content": "Hi"}]
    # One session: the second request can reuse only up to the reasoning line of the system message.
    low = c.chat.completions.create(model="gpt-oss-test", messages=msgs, max_tokens=2, reasoning_effort="low")
    high = c.chat.completions.create(model="gpt-oss-test", messages=msgs, max_tokens=2, reasoning_effort="high")
    assert low.usage.prompt_tokens == high.usage.prompt_tokens
    assert high.usage.prompt_tokens_details.cached_tokens < high.usage.prompt_tokens - 1


def test_tool_round_trip_with_scripted_logits(scripted):
    c = scripted.client()
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r = c.chat.completions.create(model="gpt-oss-test", messages=msgs, tools=TOOLS)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    call = ch.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert ch.message.model_extra.get("reasoning_content") == "User wants weather. Call the tool."
    msgs += [ch.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    r2 = c.chat.completions.create(model="gpt-oss-test", messages=msgs, tools=TOOLS)
    assert r2.choices[0].finish_reason == "stop"
    assert r2.choices[0].message.content == "It is 21°C in Paris ☀️."
    assert r2.usage.prompt_tokens_details.cached_tokens > 0


def test_tool_call_streaming_deltas(scripted):
    c = scripted.client()
    chunks = list(c.chat.completions.create(model="gpt-oss-test", messages=[{"role": "user", "content": "x"}],
                                            tools=TOOLS, stream=True))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and calls[0].id and calls[0].index == 0
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city": "Paris"}'
    reasoning = "".join(ch.choices[0].delta.model_extra.get("reasoning_content") or "" for ch in chunks if ch.choices)
    assert reasoning == "User wants weather. Call the tool."
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]
    # The second script: a final answer, streamed whole characters.
    chunks = list(c.chat.completions.create(model="gpt-oss-test", messages=[{"role": "user", "content": "x"}], stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "It is 21°C in Paris ☀️."


def test_responses_create_and_stream(scripted):
    c = scripted.client()
    r = c.responses.create(model="gpt-oss-test", input="Weather in Paris?", instructions="Be brief.",
                           reasoning={"effort": "low"},
                           tools=[{"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}])
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "function_call"]
    fc = r.output[1]
    assert fc.name == "get_weather" and json.loads(fc.arguments) == {"city": "Paris"}
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    # Continue the turn with the function's output.
    r2 = c.responses.create(model="gpt-oss-test", input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": fc.call_id, "name": "get_weather", "arguments": fc.arguments},
        {"type": "function_call_output", "call_id": fc.call_id, "output": '{"temp_c": 21}'},
    ], tools=[{"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}])
    assert r2.output_text == "It is 21°C in Paris ☀️."
    events = list(c.responses.create(model="gpt-oss-test", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in types
    done = events[-1].response
    assert done.output[-1].type == "function_call" and json.loads(done.output[-1].arguments) == {"city": "Paris"}


def test_raw_http_errors_and_server_keeps_serving(server):
    url = server.base + "/v1/chat/completions"

    def check(resp, status):
        assert resp.status_code == status, resp.text
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and "type" in err

    check(httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    check(httpx.post(url, json={"messages": "hello"}), 400)
    check(httpx.post(url, json={"messages": [{"role": "user", "content": 5}]}), 400)
    check(httpx.post(url, json={"messages": [{"role": "wizard", "content": "x"}]}), 400)
    check(httpx.post(url, json={"messages": [{"role": "user", "content": "x"}], "n": 2}), 400)
    check(httpx.post(url, json={"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}), 400)
    check(httpx.post(url, json={"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}), 404)
    check(httpx.get(server.base + "/v1/nothing"), 404)
    long = httpx.post(url, json={"messages": [{"role": "user", "content": "word " * 2000}]})
    check(long, 400)
    assert "512" in long.json()["error"]["message"]
    check(httpx.post(url, content=b"x" * (9 << 20), headers={"content-type": "application/json"}), 413)
    # A huge max_tokens is capped by the context left.
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9, "temperature": 0},
                   timeout=120)
    assert r.status_code == 200
    u = r.json()["usage"]
    assert u["prompt_tokens"] + u["completion_tokens"] <= 512
    check(httpx.post(server.base + "/v1/completions", json={"prompt": [10**7]}), 400)
    check(httpx.post(server.base + "/v1/responses", json={"input": [{"type": "mystery"}]}), 400)
    assert httpx.get(server.base + "/health").json()["status"] == "ok"


def test_completions_endpoint(server):
    c = server.client()
    r = c.completions.create(model="gpt-oss-test", prompt="Once upon a time", max_tokens=5, seed=3)
    assert r.object == "text_completion" and r.usage.completion_tokens <= 5
    chunks = list(c.completions.create(model="gpt-oss-test", prompt="Once", max_tokens=4, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_api_key(tiny_model_dir):
    s = Server(tiny_model_dir, "--api-key", "sekrit", "--max-context", "256")
    try:
        assert httpx.get(s.base + "/health").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}):
            r = httpx.get(s.base + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert s.client("sekrit").models.list().data[0].id == "gpt-oss-test"
        r = s.client("sekrit").chat.completions.create(model="gpt-oss-test", messages=[{"role": "user", "content": "x"}],
                                                       max_tokens=2)
        assert r.usage.completion_tokens <= 2
    finally:
        s.stop()


def test_eight_concurrent_streams_all_finish(server):
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            stream = server.client().chat.completions.create(
                model="gpt-oss-test", messages=[{"role": "user", "content": f"client {i}"}], max_tokens=12, seed=i,
                stream=True, stream_options={"include_usage": True})
            chunks = list(stream)
            results[i] = chunks[-1].usage.completion_tokens
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and sorted(results) == list(range(8))
    assert all(1 <= n <= 12 for n in results.values())


def test_concurrent_requests_share_decode_passes_and_answer_as_alone(server):
    # Greedy completions, one at a time and then four at once (the pool's size): the same
    # texts, and the concurrent ones advanced together (fewer passes than tokens).
    prompts = [f"Count with me: {i}, {i + 1}," for i in range(4)]

    def ask(p: str) -> str:
        r = server.client().completions.create(model="gpt-oss-test", prompt=p, max_tokens=10, temperature=0)
        return r.choices[0].text

    alone = [ask(p) for p in prompts]
    before = httpx.get(server.base + "/health").json()
    together: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(prompts[i]))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    after = httpx.get(server.base + "/health").json()
    assert [together.get(i) for i in range(4)] == alone
    passes = after["decode_passes"] - before["decode_passes"]
    tokens = after["decoded_tokens"] - before["decoded_tokens"]
    assert tokens >= 4 * 9 and passes < tokens


def test_disconnect_mid_stream_frees_the_session(server):
    body = {"messages": [{"role": "user", "content": "a long story"}], "max_tokens": 400, "temperature": 1.0, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", server.base + "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            next(lines)
            assert httpx.get(server.base + "/health").json()["active_sessions"] >= 1
        # Leaving the block closes the connection mid-stream.
    deadline = time.time() + 20
    while time.time() < deadline and httpx.get(server.base + "/health").json()["active_sessions"] != 0:
        time.sleep(0.1)
    assert httpx.get(server.base + "/health").json()["active_sessions"] == 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "model": st.sampled_from(["gpt-oss-test", "other"]) | JSON,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | JSON,
                                                "content": st.text(max_size=30) | JSON}), max_size=3) | JSON,
    "max_tokens": st.integers(-3, 6) | JSON,
    "temperature": st.floats(-1, 3) | JSON,
    "top_p": st.floats(-1, 2) | JSON,
    "n": st.integers(-1, 3) | JSON,
    "stream": st.booleans() | JSON,
    "tools": JSON,
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | JSON,
    "reasoning_effort": st.sampled_from(["low", "medium", "high", "max"]) | JSON,
    "stop": st.text(max_size=5) | JSON,
    "logprobs": st.booleans() | JSON,
    "top_logprobs": st.integers(-1, 30) | JSON,
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.fixed_dictionaries({}, optional=FIELDS))
def test_fuzzed_request_bodies_never_500(server, body):
    body.setdefault("max_tokens", 3)
    r = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code in (200, 400, 404, 413), (r.status_code, r.text[:500])
    if r.status_code != 200:
        assert r.json()["error"]["message"]
