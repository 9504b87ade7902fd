"""Harmony rendering and parsing, generation and chat on a real-vocabulary model."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gptoss_native as gn
from gptoss_native.chat import harmony_encoding

from .conftest import TOKENIZER_DIR

TOK_JSON = TOKENIZER_DIR / "tokenizer.json"
VOCAB = 201088
RETURN, CALL, END, START, CHANNEL, MESSAGE, CONSTRAIN = 200002, 200012, 200007, 200006, 200005, 200008, 200003


@pytest.fixture(scope="module")
def enc():
    return harmony_encoding(TOK_JSON)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return gn.load(tiny_model_dir, max_context=4096)


def text_of(enc, ids):
    return enc.decode_utf8(ids)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# --- render ----------------------------------------------------------------------

def test_render_system_developer_effort_and_date(enc):
    msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    ids = gn.render_chat(msgs, reasoning_effort="high", current_date="2026-11-26", tokenizer_json=TOK_JSON)
    text = text_of(enc, ids)
    assert text.startswith("<|start|>system<|message|>")
    assert "Reasoning: high" in text and "Current date: 2026-11-26" in text
    assert "<|start|>developer<|message|># Instructions\n\nBe terse.<|end|>" in text
    assert text.endswith("<|start|>user<|message|>Hi<|end|><|start|>assistant")
    no_date = text_of(enc, gn.render_chat(msgs, current_date=None, tokenizer_json=TOK_JSON))
    assert "Current date" not in no_date and "Reasoning: medium" in no_date
    low = gn.render_chat(msgs, reasoning_effort="low", current_date=None, tokenizer_json=TOK_JSON)
    assert "Reasoning: low" in text_of(enc, low)
    with pytest.raises(ValueError, match="reasoning_effort"):
        gn.render_chat(msgs, reasoning_effort="max", tokenizer_json=TOK_JSON)


def test_render_tools_calls_and_results(enc):
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "reasoning": "I should call the tool.",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    text = text_of(enc, gn.render_chat(msgs, tools=[WEATHER_TOOL], current_date=None, tokenizer_json=TOK_JSON))
    assert "namespace functions {" in text and "type get_weather = (_: {" in text
    # The chain of thought is kept while the tool call is under way.
    assert "<|start|>assistant<|channel|>analysis<|message|>I should call the tool.<|end|>" in text
    assert '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city":"Paris"}<|call|>' in text
    assert '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp_c": 21}<|end|>' in text or \
        '<|start|>functions.get_weather<|channel|>commentary<|message|>{"temp_c": 21}<|end|>' in text


def test_chain_of_thought_dropped_after_a_final_answer(enc):
    msgs = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "reasoning": "Simple arithmetic.", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    text = text_of(enc, gn.render_chat(msgs, current_date=None, tokenizer_json=TOK_JSON))
    assert "Simple arithmetic." not in text
    assert "<|start|>assistant<|channel|>final<|message|>4<|end|>" in text


def test_render_rejects_bad_messages():
    for bad in ([{"content": "x"}], [{"role": "robot", "content": "x"}], "hello", [{"role": "tool", "content": "x"}]):
        with pytest.raises(ValueError):
            gn.render_chat(bad, tokenizer_json=TOK_JSON)


# --- parse -----------------------------------------------------------------------

def test_parse_reasoning_final_and_tool_call(enc):
    ids = enc.encode(
        "<|channel|>analysis<|message|>Let me think.<|end|><|start|>assistant<|channel|>final<|message|>Bonjour 😀<|return|>",
        allowed_special="all",
    )
    r = gn.parse_completion(ids, tokenizer_json=TOK_JSON)
    assert (r.reasoning, r.content, r.finish_reason, r.tool_calls) == ("Let me think.", "Bonjour 😀", "stop", [])
    ids = enc.encode(
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>',
        allowed_special="all",
    )
    r = gn.parse_completion(ids, tokenizer_json=TOK_JSON)
    assert r.finish_reason == "tool_calls"
    (call,) = r.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_parse_truncated_output(enc):
    ids = enc.encode("<|channel|>final<|message|>Half a sent", allowed_special="all")
    r = gn.parse_completion(ids, tokenizer_json=TOK_JSON)
    assert r.content == "Half a sent" and r.finish_reason == "length"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.integers(0, VOCAB - 1), st.sampled_from([RETURN, CALL, END, START, CHANNEL, MESSAGE, CONSTRAIN, 200018, 199999])), max_size=60))
def test_parse_never_raises_on_random_streams(tokens):
    r = gn.parse_completion(tokens, tokenizer_json=TOK_JSON)
    assert r.finish_reason in ("stop", "length", "tool_calls")
    assert isinstance(r.content, str) and isinstance(r.reasoning, str)


SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: "<|" not in s and s.strip() == s and s != ""
)


@settings(max_examples=100, deadline=None)
@given(reasoning=SAFE_TEXT, content=SAFE_TEXT)
def test_render_parse_round_trip(reasoning, content):
    """An assistant turn rendered into a prompt parses back from the completion tokens."""
    enc = harmony_encoding(TOK_JSON)
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "reasoning": reasoning, "content": content}]
    # Render the turn as the model would emit it (no final-answer drop: it is the last turn).
    from openai_harmony import Conversation, Message, RenderConversationConfig, Role

    convo = Conversation.from_messages([
        Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, content).with_channel("final"),
    ])
    toks = list(enc.render_conversation(convo, RenderConversationConfig(auto_drop_analysis=False)))
    assert toks[:2] == [START, enc.encode("assistant", allowed_special=set())[0]]
    completion = toks[2:]  # drop "<|start|>assistant": the prompt ends with it
    completion[-1] = RETURN  # a final message ends the turn with <|return|>
    r = gn.parse_completion(completion, tokenizer_json=TOK_JSON)
    assert (r.reasoning, r.content) == (reasoning, content)
    assert gn.render_chat(msgs, current_date=None, tokenizer_json=TOK_JSON)[-1] != RETURN


# --- a scripted source of logits drives exact harmony outputs through chat ------

class ScriptedSession:
    """Session stand-in whose logits pick the scripted tokens, one per step."""

    def __init__(self, script: list[int], max_context: int = 8192):
        self.script = script
        self.tokens: list[int] = []
        self.max_context = max_context
        self.steps = 0

    def __len__(self):
        return len(self.tokens)

    def truncate(self, n):
        self.tokens = self.tokens[:n]

    def append(self, ids, logits="last"):
        self.tokens += list(ids)
        row = np.full((1, VOCAB), -20.0, np.float32)
        row[0, self.script[min(self.steps, len(self.script) - 1)]] = 20.0
        self.steps += 1
        return row

    def append_argmax(self, ids):
        return int(np.argmax(self.append(ids)[0]))


def _script(enc, text):
    return list(enc.encode(text, allowed_special="all"))


def test_chat_tool_call_via_scripted_logits(tiny, enc):
    script = _script(enc, '<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>')
    resp = tiny.chat([{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL], session=ScriptedSession(script), temperature=0)
    assert resp.finish_reason == "tool_calls"
    assert resp.reasoning == "Need weather."
    assert resp.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert resp.usage["completion_tokens"] == len(script)

    events = list(tiny.chat([{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL],
                            session=ScriptedSession(script), temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "done" and "reasoning" in kinds
    calls = [e for e in events if e.type == "tool_call"]
    assert calls[0].tool_call["name"] == "get_weather" and calls[0].tool_call["index"] == 0
    assert "".join(e.delta for e in calls) == '{"city": "Paris"}'
    assert events[-1].response.tool_calls[0]["id"] == calls[0].tool_call["id"]


def test_chat_final_answer_streams_whole_characters(tiny, enc):
    answer = "Voilà: 日本語 😀👍🏽 done"
    script = _script(enc, f"<|channel|>final<|message|>{answer}<|return|>")
    events = list(tiny.chat([{"role": "user", "content": "x"}], session=ScriptedSession(script), temperature=0, stream=True))
    deltas = [e.delta for e in events if e.type == "content"]
    assert "".join(deltas) == answer
    assert all("\ufffd" not in d for d in deltas)
    assert events[-1].response.content == answer and events[-1].response.finish_reason == "stop"


def test_chat_stop_strings_and_length(tiny, enc):
    script = _script(enc, "<|channel|>final<|message|>one two three four<|return|>")
    r = tiny.chat([{"role": "user", "content": "x"}], session=ScriptedSession(script), temperature=0, stop=[" three"])
    assert r.content == "one two" and r.finish_reason == "stop"
    r = tiny.chat([{"role": "user", "content": "x"}], session=ScriptedSession(script), temperature=0, max_new_tokens=4)
    assert r.finish_reason == "length" and r.usage["completion_tokens"] == 4


# --- generation on the tiny real-vocabulary model -------------------------------

def test_generate_limits_seeds_and_greedy(tiny):
    prompt = tiny.tokenizer.encode("Once upon a time")
    a = tiny.generate(prompt, max_new_tokens=8, seed=3, stop_token_ids=[])
    b = tiny.generate(prompt, max_new_tokens=8, seed=3, stop_token_ids=[])
    c = tiny.generate(prompt, max_new_tokens=8, seed=4, stop_token_ids=[])
    assert len(a) == 8 and a == b and a != c
    g1 = tiny.generate(prompt, max_new_tokens=6, temperature=0, stop_token_ids=[])
    g2 = tiny.generate(prompt, max_new_tokens=6, temperature=0.0, stop_token_ids=[], seed=99)
    assert g1 == g2
    # Greedy equals argmax of the forward pass, step by step.
    ids = list(prompt)
    for t in g1:
        assert t == int(tiny.forward(ids)[-1].argmax())
        ids.append(t)
    assert list(tiny.generate(prompt, max_new_tokens=6, temperature=0, stop_token_ids=[], stream=True)) == g1
    assert tiny.generate(prompt, max_new_tokens=0) == []


def test_generate_stops(tiny):
    prompt = tiny.tokenizer.encode("abc")
    g = tiny.generate(prompt, max_new_tokens=6, temperature=0, stop_token_ids=[])
    stopped = tiny.generate(prompt, max_new_tokens=6, temperature=0, stop_token_ids=[g[2]])
    assert stopped == g[: g.index(g[2]) + 1]
    text = tiny.tokenizer.decode(g)
    stop = text[len(tiny.tokenizer.decode(g[:2])):][:2] or text[:1]
    s = tiny.generate(prompt, max_new_tokens=6, temperature=0, stop_token_ids=[], stop=[stop])
    assert stop in tiny.tokenizer.decode(s) and len(s) <= len(g)


def test_sampling_controls(tiny):
    from gptoss_native.generate import Sampler, SamplingParams

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    draws = lambda **kw: {Sampler(SamplingParams(seed=s, **kw), 4)(logits).token for s in range(200)}  # noqa: E731
    assert draws(top_k=1) == {0}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.5) == {0}
    assert draws(top_p=0.79) == {0, 1}
    assert draws(min_p=0.5) == {0, 1}
    assert draws() == {0, 1, 2, 3}
    s = Sampler(SamplingParams(temperature=0, presence_penalty=2.0), 4)
    assert [s(logits).token for _ in range(2)] == [0, 1]
    s = Sampler(SamplingParams(temperature=0, logprobs=2), 4)
    st_ = s(logits)
    assert st_.logprob == pytest.approx(np.log(0.5), abs=1e-6)
    assert [t for t, _ in st_.top_logprobs] == [0, 1]
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(min_p=2), dict(presence_penalty=3)):
        with pytest.raises(ValueError):
            SamplingParams(**bad).validate()


def test_chat_reuses_the_cache_and_effort_changes_the_prompt(tiny):
    msgs = [{"role": "user", "content": "Tell me a story."}]
    r1 = tiny.chat(msgs, max_new_tokens=4, seed=1, current_date=None)
    assert r1.usage["prompt_tokens_details"]["cached_tokens"] == 0
    turn2 = msgs + [{"role": "assistant", "content": "Once."}, {"role": "user", "content": "More."}]
    r2 = tiny.chat(turn2, max_new_tokens=4, seed=1, current_date=None)
    cached = r2.usage["prompt_tokens_details"]["cached_tokens"]
    assert cached >= r1.usage["prompt_tokens"] - 1
    # A different effort changes the system message, so less of the prefix is reusable.
    r3 = tiny.chat(turn2, max_new_tokens=4, seed=1, current_date=None, reasoning_effort="high")
    assert r3.usage["prompt_tokens_details"]["cached_tokens"] < cached
    p_med = gn.render_chat(turn2, current_date=None, tokenizer_json=TOK_JSON)
    p_high = gn.render_chat(turn2, current_date=None, reasoning_effort="high", tokenizer_json=TOK_JSON)
    assert p_med != p_high and len(p_med) == len(p_high)


def test_chat_logprobs(tiny):
    r = tiny.chat([{"role": "user", "content": "x"}], max_new_tokens=3, seed=0, logprobs=True, top_logprobs=2)
    assert len(r.logprobs) == 3
    for lp in r.logprobs:
        assert lp["logprob"] <= 0 and len(lp["top_logprobs"]) == 2


def test_chat_context_overflow(tiny_model_dir):
    m = gn.load(tiny_model_dir, max_context=32)
    with pytest.raises(gn.ContextLengthError, match="more than the context of 32"):
        m.chat([{"role": "user", "content": "hello " * 50}])


def test_prompt_lookup_decoding_matches_greedy(tiny):
    # A repetitive prompt: drafts from the context get accepted whenever the model repeats.
    prompt = tiny.tokenizer.encode("one two three four five six " * 6)
    plain = tiny.generate(prompt, max_new_tokens=24, temperature=0, stop_token_ids=[])
    fast = tiny.generate(prompt, max_new_tokens=24, temperature=0, stop_token_ids=[], prompt_lookup=6)
    assert fast == plain
    s = tiny.session()
    out = tiny.generate(prompt, max_new_tokens=24, temperature=0, stop_token_ids=[], prompt_lookup=6, session=s)
    assert out == plain
    full = list(prompt) + plain
    assert len(s.tokens) >= len(full) - 1 and s.tokens == full[: len(s.tokens)]
    with pytest.raises(ValueError, match="greedy"):
        tiny.generate(prompt, max_new_tokens=2, prompt_lookup=4)
    with pytest.raises(ValueError, match="greedy"):
        tiny.generate(prompt, max_new_tokens=2, temperature=0, presence_penalty=0.5, prompt_lookup=4)


class _TableSession:
    """A stand-in session whose "model" picks the next token from a table by context
    length (with a per-context twist), so that prompt lookup's drafts are sometimes
    right and sometimes wrong; one-hot logits, the Session methods prompt lookup uses."""

    def __init__(self, table, vocab=16):
        self.tokens, self.table, self.vocab = [], table, vocab

    def _next(self):
        t = self.table[len(self.tokens) % len(self.table)]
        return (t + self.tokens[-1] % 2) % self.vocab if len(self.tokens) % 5 == 0 else t

    def append_argmax(self, ids):
        assert len(ids) > 0
        self.tokens += list(ids)
        return self._next()

    def append(self, ids, logits="last"):
        rows = []
        for i in ids:
            self.tokens.append(int(i))
            row = np.zeros(self.vocab, np.float32)
            row[self._next()] = 1.0
            rows.append(row)
        return np.stack(rows) if logits == "all" else np.stack(rows[-1:])

    def truncate(self, n):
        del self.tokens[n:]


@settings(max_examples=150, deadline=None)
@given(table=st.lists(st.integers(0, 15), min_size=1, max_size=9),
       prompt=st.lists(st.integers(0, 15), min_size=1, max_size=30),
       k=st.integers(1, 8), max_new=st.integers(0, 40),
       stops=st.lists(st.integers(0, 15), max_size=2))
def test_prompt_lookup_equals_greedy_over_random_models(table, prompt, k, max_new, stops):
    from gptoss_native.generate import SamplingParams, generate_steps, prompt_lookup_steps

    plain_s, fast_s = _TableSession(table), _TableSession(table)
    plain = [st_.token for st_ in generate_steps(plain_s, prompt, SamplingParams(temperature=0), max_new, stops)]
    stats = {}
    fast = [st_.token for st_ in prompt_lookup_steps(fast_s, prompt, max_new, stops, k, stats)]
    assert fast == plain
    # The session holds the prompt and every output token but possibly the last (never
    # more: rejected draft tokens are truncated away).
    full = list(prompt) + plain
    assert fast_s.tokens == full[: len(fast_s.tokens)] and len(fast_s.tokens) >= len(full) - 1
    assert 0 <= stats["accepted"] <= stats["drafted"] <= k * stats["passes"]


def test_prompt_lookup_accepts_drafts_of_a_repeating_model():
    from gptoss_native.generate import prompt_lookup_steps

    # The model continues 1 2 3 4 5 6 7 (but at each fifth position): the context repeats,
    # so most drafts are right, and the output still equals plain greedy decoding.
    s, stats = _TableSession([1, 2, 3, 4, 5, 6, 7]), {}
    out = [st_.token for st_ in prompt_lookup_steps(s, [1, 2, 3, 4, 5, 6, 7] * 3, 40, (), 6, stats)]
    plain_s = _TableSession([1, 2, 3, 4, 5, 6, 7])
    from gptoss_native.generate import SamplingParams, generate_steps

    assert out == [st_.token for st_ in generate_steps(plain_s, [1, 2, 3, 4, 5, 6, 7] * 3, SamplingParams(temperature=0), 40)]
    assert stats["accepted"] > 0 and stats["drafted"] > stats["accepted"]
    assert stats["passes"] < 40


def test_repeating_synthetic_model_continues_its_own_passages(tmp_path):
    from gptoss_native.generate import prompt_lookup_steps
    from gptoss_native.synth import synth

    m = gn.load(synth(tmp_path / "rep", "tiny", seed=3, repeating=True, progress=False), max_context=512)
    # Zero attention output: the logits after a token do not depend on what came before.
    a = m.session().append([11, 2000, 345])[-1]
    b = m.session().append([345])[-1]
    assert int(a.argmax()) == int(b.argmax())
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(np.abs(b).max()))

    # A passage, the model's own continuation of it, and the passage again: the model
    # continues as before, and prompt lookup drafts exactly that continuation.
    prompt = list(range(1000, 1012))
    cont = m.generate(prompt, max_new_tokens=16, temperature=0, stop_token_ids=[])
    again = prompt + cont + prompt
    assert m.generate(again, max_new_tokens=16, temperature=0, stop_token_ids=[]) == cont
    stats = {}
    fast = [st_.token for st_ in prompt_lookup_steps(m.session(), again, 16, (), 5, stats)]
    assert fast == cont
    assert stats["accepted"] == stats["drafted"] > 0
    assert stats["passes"] <= 3  # 16 tokens: the first by the prompt pass, then up to 6 per pass


class _StepModel:
    """A stand-in model whose `step` advances each session (checking every session's
    room first, as the real one does) and records the batch sizes."""

    def __init__(self):
        self.sizes, self.lock = [], threading.Lock()

    def step(self, sessions, tokens):
        for s in sessions:
            if len(s.tokens) >= getattr(s, "cap", 1 << 30):
                raise ValueError("the context is full")
        with self.lock:
            self.sizes.append(len(sessions))
        return np.stack([s.append([t])[0] for s, t in zip(sessions, tokens)])


class _CappedTableSession(_TableSession):
    def __init__(self, table, cap):
        super().__init__(table)
        self.cap = cap

    def append(self, ids, logits="last"):
        if len(self.tokens) + len(ids) > self.cap:
            raise ValueError("the context is full")
        return super().append(ids, logits)

    def append_argmax(self, ids):
        if len(self.tokens) + len(ids) > self.cap:
            raise ValueError("the context is full")
        return super().append_argmax(ids)


def _run_threads(fns):
    errors = [None] * len(fns)

    def wrap(i):
        try:
            fns[i]()
        except Exception as e:  # noqa: BLE001 - reported to the test
            errors[i] = e

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_step_batcher_advances_concurrent_generations_together():
    from gptoss_native.generate import SamplingParams, StepBatcher, generate_steps

    tables = [[1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    lengths = [12, 13, 14, 15]
    greedy = SamplingParams(temperature=0)
    expected = [[st_.token for st_ in generate_steps(_TableSession(t), [i + 1], greedy, n)]
                for i, (t, n) in enumerate(zip(tables, lengths))]
    model = _StepModel()
    batcher = StepBatcher(model, window=5.0)
    outs = [None] * 4
    start = threading.Barrier(4)

    def gen(i):
        def run():
            with batcher.wrap(_TableSession(tables[i])) as s:
                start.wait()
                outs[i] = [st_.token for st_ in generate_steps(s, [i + 1], greedy, lengths[i])]
        return run

    assert _run_threads([gen(i) for i in range(4)]) == [None] * 4
    assert outs == expected
    # Every feed went through the batcher (the one-token prompt too), and once all four
    # were decoding they shared passes; a generation that ended was not waited for.
    assert batcher.fed == sum(lengths)
    assert max(model.sizes) == 4 and batcher.batches < batcher.fed
    assert batcher._decoding == 0


def test_step_batcher_isolates_a_failing_session():
    from gptoss_native.generate import SamplingParams, StepBatcher, generate_steps

    greedy = SamplingParams(temperature=0)
    model = _StepModel()
    batcher = StepBatcher(model, window=5.0)
    outs = [None] * 3
    start = threading.Barrier(3)
    sessions = [_TableSession([1, 2]), _CappedTableSession([3, 4], cap=6), _TableSession([5, 6, 7])]

    def gen(i):
        def run():
            with batcher.wrap(sessions[i]) as s:
                start.wait()
                outs[i] = [st_.token for st_ in generate_steps(s, [9], greedy, 10)]
        return run

    errors = _run_threads([gen(i) for i in range(3)])
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], ValueError) and "full" in str(errors[1])
    for i in (0, 2):
        assert outs[i] == [st_.token for st_ in generate_steps(_TableSession(sessions[i].table), [9], greedy, 10)]


class _Interrupt(BaseException):
    pass


def test_step_batcher_survives_an_interrupted_batch():
    from gptoss_native.generate import SamplingParams, StepBatcher, generate_steps

    class Interrupting(_StepModel):
        def step(self, sessions, tokens):
            raise _Interrupt()

    greedy = SamplingParams(temperature=0)
    batcher = StepBatcher(Interrupting(), window=5.0)
    errors = [None] * 2
    start = threading.Barrier(2)

    def gen(i):
        def run():
            with batcher.wrap(_TableSession([1, 2, 3])) as s:
                start.wait()
                try:
                    list(generate_steps(s, [i + 1], greedy, 8))
                except BaseException as e:  # noqa: BLE001 - the interrupt too
                    errors[i] = e
        return run

    assert _run_threads([gen(0), gen(1)]) == [None, None]
    # The thread that ran the batch sees the interrupt, the other a RuntimeError.
    assert sorted(type(e).__name__ for e in errors) == ["RuntimeError", "_Interrupt"]
    # Nothing is left waiting: a new generation runs through the same batcher.
    alone = [st_.token for st_ in generate_steps(_TableSession([4, 5]), [7], greedy, 5)]
    with batcher.wrap(_TableSession([4, 5])) as s:
        assert [st_.token for st_ in generate_steps(s, [7], greedy, 5)] == alone
    assert batcher._decoding == 0 and not batcher._pending and not batcher._running


def test_step_batcher_on_the_model_matches_one_generation_at_a_time(tiny):
    from gptoss_native.generate import SamplingParams, StepBatcher, generate_steps

    cases = [([200, 300, 400], SamplingParams(temperature=0)),
             ([500, 600], SamplingParams(temperature=0.8, seed=1)),
             ([700], SamplingParams(temperature=0, logprobs=2)),
             ([800, 900, 1000, 1100], SamplingParams(temperature=1.0, top_p=0.9, seed=7))]
    vocab = tiny.config.vocab_size

    def steps(session, prompt, params):
        return [(st_.token, st_.logprob) for st_ in generate_steps(session, prompt, params, 10, (), vocab)]

    expected = [steps(tiny.session(), p, sp) for p, sp in cases]
    batcher = StepBatcher(tiny, window=5.0)
    outs = [None] * len(cases)
    start = threading.Barrier(len(cases))

    def gen(i):
        def run():
            with batcher.wrap(tiny.session()) as s:
                start.wait()
                outs[i] = steps(s, *cases[i])
        return run

    assert _run_threads([gen(i) for i in range(len(cases))]) == [None] * len(cases)
    for (tok, lp), (etok, elp) in zip([x for o in outs for x in o], [x for e in expected for x in e]):
        assert tok == etok
        assert (lp is None) == (elp is None) and (lp is None or abs(lp - elp) < 1e-3)
    assert batcher.batches < batcher.fed


def test_lookup_draft():
    from gptoss_native.generate import _lookup_draft

    assert _lookup_draft([1, 2, 3, 9, 1, 2, 3], 2) == [9, 1]
    assert _lookup_draft([5, 6, 7], 3) == []
    assert _lookup_draft([4, 4, 4], 2) == [4]
