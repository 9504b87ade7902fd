"""Sampling and the generation loop (numpy on the logits; no Python loop over the vocabulary)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

__all__ = ["SamplingParams", "Sampler", "Step", "generate_steps", "StepBatcher"]


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    #: how many top alternatives to report per token (None: no logprobs)
    logprobs: int | None = None

    @property
    def greedy_only(self) -> bool:
        """Whether each token is the plain argmax of the logits (temperature 0, no
        penalties, no logprobs), so that no logit but the largest's index is needed."""
        return (self.temperature == 0 and not self.presence_penalty and not self.frequency_penalty
                and self.logprobs is None)

    def validate(self) -> "SamplingParams":
        def bad(msg: str):
            raise ValueError(msg)

        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            bad(f"temperature must be >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            bad(f"top_k must be an int >= 0 (0 = off), got {self.top_k}")
        if not (0 <= self.min_p <= 1):
            bad(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not (-2 <= v <= 2):
                bad(f"{name} must be in [-2, 2], got {v}")
        if self.logprobs is not None and not (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20):
            bad(f"logprobs (top alternatives) must be an int in [0, 20], got {self.logprobs}")
        return self


@dataclass
class Step:
    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class Sampler:
    """Turns one row of logits into a token, with penalties over the tokens generated so far."""

    def __init__(self, params: SamplingParams, vocab_size: int):
        self.p = params.validate()
        self.rng = np.random.default_rng(params.seed)
        self.counts = np.zeros(vocab_size, dtype=np.int32)

    def __call__(self, logits: np.ndarray) -> Step:
        p = self.p
        x = logits.astype(np.float64, copy=True)
        if p.presence_penalty or p.frequency_penalty:
            x -= p.presence_penalty * (self.counts > 0) + p.frequency_penalty * self.counts
        if p.temperature == 0:
            tok = int(np.argmax(x))
        else:
            z = x / p.temperature
            if p.top_k and p.top_k < z.size:
                kth = np.partition(z, -p.top_k)[-p.top_k]
                z = np.where(z >= kth, z, -np.inf)
            probs = np.exp(z - z.max())
            probs /= probs.sum()
            if p.min_p > 0:
                probs = np.where(probs >= p.min_p * probs.max(), probs, 0.0)
            if p.top_p < 1.0:
                order = np.argsort(-probs, kind="stable")
                csum = np.cumsum(probs[order])
                keep = order[: int(np.searchsorted(csum, p.top_p * csum[-1])) + 1]
                mask = np.zeros_like(probs)
                mask[keep] = 1.0
                probs = probs * mask
            probs /= probs.sum()
            tok = int(self.rng.choice(probs.size, p=probs))
        self.counts[tok] += 1
        step = Step(tok)
        if p.logprobs is not None:
            lp = _log_softmax(x)
            step.logprob = float(lp[tok])
            if p.logprobs:
                top = np.argpartition(-lp, p.logprobs)[: p.logprobs]
                top = top[np.argsort(-lp[top], kind="stable")]
                step.top_logprobs = [(int(i), float(lp[i])) for i in top]
        return step


def generate_steps(
    session,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    vocab_size: int | None = None,
    cancel=None,
) -> Iterator[Step]:
    """Append `prompt_ids` to `session`, then sample up to `max_new_tokens` tokens,
    stopping after a stop token (which is yielded). Each new token is fed back into the
    session before the next is sampled, so the session ends holding prompt + output
    (minus the last token, which needs no forward pass). `cancel` (a threading.Event)
    stops the loop before the next token."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    stops = set(int(t) for t in stop_token_ids)
    params.validate()
    if params.greedy_only and len(prompt_ids) and max_new_tokens > 0:
        # Only the argmax is needed: the session finds it without every logit.
        pending = session.append_argmax(list(prompt_ids))
        feed, pick = session.append_argmax, Step
    else:
        pending = session.append(list(prompt_ids)) if len(prompt_ids) else None
        if max_new_tokens == 0:
            return
        if pending is None:
            raise ValueError("generation needs at least one prompt token (or a session that has some)")
        sampler = Sampler(params, vocab_size or pending.shape[-1])
        feed, pick = session.append, lambda logits: sampler(logits[0])
    # `pending`: what the session gave for the last token fed (its logits, or its argmax).
    for i in range(max_new_tokens):
        if cancel is not None and cancel.is_set():
            return
        step = pick(pending)
        yield step
        if step.token in stops or i + 1 == max_new_tokens:
            return
        pending = feed([step.token])


def _lookup_draft(context: list[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the context's last
    n-gram (longest n first): the prompt-lookup draft."""
    for n in range(min(max_ngram, len(context) - 1), 0, -1):
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == tail:
                return context[start + n : start + n + k]
    return []


def prompt_lookup_steps(
    session,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    k: int = 8,
    stats: dict | None = None,
) -> Iterator[Step]:
    """Greedy decoding with prompt-lookup speculation (no draft model): draft up to k
    tokens from n-grams of the context, feed them after the current token in one pass,
    keep the longest prefix the model itself would have chosen (plus its next token),
    and truncate the cache past it. The output equals plain greedy decoding except where
    two logits tie within the precision's tolerance (batched and one-token passes sum in
    different orders). Steps without a draft take the argmax through the lm_head screen
    (`Session.append_argmax`), as plain greedy decoding does. `stats`, when given, gets
    the counts "passes" (verification passes), "drafted" and "accepted" (draft tokens)."""
    stops = set(int(t) for t in stop_token_ids)
    if stats is not None:
        stats.update(passes=0, drafted=0, accepted=0)
    if not len(prompt_ids):
        raise ValueError("generation needs at least one prompt token")
    if max_new_tokens <= 0:
        session.append(list(prompt_ids), logits=None)
        return
    context = list(session.tokens) + list(prompt_ids)
    tok = session.append_argmax(list(prompt_ids))
    produced = 0
    while True:
        yield Step(tok)
        produced += 1
        context.append(tok)
        if tok in stops or produced >= max_new_tokens:
            return
        draft = _lookup_draft(context, min(k, max_new_tokens - produced))
        if not draft:
            tok = session.append_argmax([tok])
            continue
        # One pass over tok + draft: rows[i] are the logits after tok, draft[:i].
        rows = session.append([tok] + draft, logits="all")
        accepted = 0
        for i, d in enumerate(draft):
            if int(np.argmax(rows[i])) != d:
                break
            yield Step(d)
            produced += 1
            accepted += 1
            context.append(d)
            if d in stops or produced >= max_new_tokens:
                break
        if stats is not None:
            stats["passes"] += 1
            stats["drafted"] += len(draft)
            stats["accepted"] += accepted
        # Keep tok and the accepted draft (their K/V came from this pass); drop the rest.
        session.truncate(len(context))
        if context[-1] in stops or produced >= max_new_tokens:
            return
        tok = int(np.argmax(rows[accepted]))


class _Feed:
    """One generation's next token, waiting for its batch."""

    __slots__ = ("session", "token", "argmax", "done", "result", "error")

    def __init__(self, session, token: int, argmax: bool):
        self.session, self.token, self.argmax = session, token, argmax
        self.done, self.result, self.error = False, None, None

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


class StepBatcher:
    """Advances concurrent generations of one model together, one token each per
    `model.step` pass, so the weights are read once for all of them (continuous batching
    at the token level; the server's generations go through one).

    Generations run in their own threads on sessions from `wrap(session)`: a one-token
    feed waits until every other wrapped generation has fed its token too (at most
    `window` seconds after the first), then one thread runs the batch for all. Longer
    feeds (prompts) go straight to the session, and the batch does not wait for a
    generation while it feeds one. A feed alone in its batch is an ordinary
    `append` (or `append_argmax`, through lm_head's screen); in a batch, `model.step`
    gives every logit and the argmax is taken from them. If a batch fails (one session's
    context is full), each of its feeds is retried alone, so only that one errs."""

    def __init__(self, model, window: float = 0.02):
        self.model, self.window = model, window
        self._cond = threading.Condition()
        self._pending: list[_Feed] = []
        self._running = False
        self._decoding = 0
        #: batches run and feeds they carried (for tests and benchmarks)
        self.batches = 0
        self.fed = 0

    def wrap(self, session) -> "BatchedSession":
        """`session` for one generation's thread; close it when the generation ends."""
        return BatchedSession(self, session)

    def _join(self) -> None:
        with self._cond:
            self._decoding += 1

    def _leave(self) -> None:
        with self._cond:
            self._decoding -= 1
            self._cond.notify_all()

    def feed(self, session, token: int, argmax: bool):
        """The logits row [vocab] after `token` (or, with `argmax`, its argmax)."""
        f = _Feed(session, int(token), argmax)
        with self._cond:
            self._pending.append(f)
            self._cond.notify_all()
            while not f.done and self._running:
                self._cond.wait()
            if f.done:
                return f.outcome()
            self._running = True  # this thread runs the next batch
        batch: list[_Feed] = []
        results = None
        try:
            with self._cond:
                # Once the others have fed (or the window has passed).
                deadline = time.monotonic() + self.window
                while len(self._pending) < self._decoding and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch, self._pending = self._pending, []
            results = self._run(batch)
        finally:
            with self._cond:
                if results is None:  # interrupted (a BaseException): free the others
                    if f in self._pending:
                        self._pending.remove(f)
                    results = [(None, RuntimeError("the batch was interrupted"))] * len(batch)
                for g, (res, err) in zip(batch, results):
                    g.result, g.error, g.done = res, err, True
                self._running = False
                self._cond.notify_all()
        return f.outcome()

    def _run(self, batch: list[_Feed]) -> list[tuple[object, BaseException | None]]:
        def alone(g: _Feed):
            try:
                if g.argmax:
                    return g.session.append_argmax([g.token]), None
                return g.session.append([g.token])[0], None
            except Exception as e:  # noqa: BLE001 - handed to the feed's own thread
                return None, e

        self.batches += 1
        self.fed += len(batch)
        if len(batch) == 1:
            return [alone(batch[0])]
        try:
            rows = self.model.step([g.session for g in batch], [g.token for g in batch])
        except Exception:  # noqa: BLE001 - checked before any cache changed: retry one by one
            return [alone(g) for g in batch]
        return [(int(np.argmax(row)) if g.argmax else row, None) for g, row in zip(batch, rows)]


class BatchedSession:
    """A session whose one-token feeds go through a `StepBatcher`; everything else is
    the session's own. `close()` (or the end of a `with` block) says its generation is
    over, so the batcher stops waiting for it."""

    def __init__(self, batcher: StepBatcher, session):
        self._batcher, self._session = batcher, session
        self._joined = True
        batcher._join()

    def __getattr__(self, name):
        return getattr(self._session, name)

    def __len__(self) -> int:
        return len(self._session)

    def _alone(self, call, *args):
        """A feed of its own (a prompt): the batches meanwhile do not wait for this one."""
        if not self._joined:
            return call(*args)
        self._batcher._leave()
        try:
            return call(*args)
        finally:
            self._batcher._join()

    def append(self, token_ids, logits: str | None = "last"):
        ids = list(token_ids)
        if len(ids) == 1 and logits == "last" and self._joined:
            return self._batcher.feed(self._session, ids[0], False)[None, :]
        return self._alone(self._session.append, ids, logits)

    def append_argmax(self, token_ids) -> int:
        ids = list(token_ids)
        if len(ids) == 1 and self._joined:
            return self._batcher.feed(self._session, ids[0], True)
        return self._alone(self._session.append_argmax, ids)

    def close(self) -> None:
        if self._joined:
            self._joined = False
            self._batcher._leave()

    def __enter__(self) -> "BatchedSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reuse_prefix(session, prompt: Sequence[int]) -> int:
    """Truncate `session` to its common prefix with `prompt`, keeping at least the last
    prompt token to re-feed (its logits are needed). Returns the tokens kept."""
    cached = min(_common_prefix(session.tokens, prompt), len(prompt) - 1)
    session.truncate(cached)
    return cached


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64)
    return int(x.argmax()) if x.any() else n


def _stop_strings(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    out = [s for s in stop if isinstance(s, str) and s]
    if len(out) != len(list(stop)):
        raise ValueError("stop must be a string or a list of non-empty strings")
    return out


def generate(
    model,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    seed: int | None = None,
    stop_token_ids: Sequence[int] | None = None,
    stop: str | Sequence[str] | None = None,
    stream: bool = False,
    session=None,
    prompt_lookup: int = 0,
):
    """New token ids for `prompt_ids` (a list, or an iterator of ids with stream=True).

    Stops after a stop token id (default: the config's eos ids; the stop token is
    included) or once the decoded output contains a stop string (the output ends with
    the token that completed it). `prompt_lookup=K` (greedy only) speculates up to K
    tokens from n-grams of the context and verifies them in one pass (see
    `prompt_lookup_steps`)."""
    from .model import _ids

    params = SamplingParams(temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty, seed).validate()
    prompt = _ids(prompt_ids)
    if stop_token_ids is None:
        eos = model.config.eos_token_id
        stop_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    strings = _stop_strings(stop)
    sess = session if session is not None else model.session()
    max_new = min(int(max_new_tokens), max(0, sess.max_context - len(sess) - len(prompt)))
    if len(sess) + len(prompt) > sess.max_context:
        from ._errors import ContextLengthError

        raise ContextLengthError(f"prompt of {len(prompt)} tokens does not fit the context of {sess.max_context}")

    if prompt_lookup and not params.greedy_only:
        raise ValueError("prompt_lookup needs plain greedy decoding (temperature=0, no penalties)")

    def run() -> Iterator[int]:
        out: list[int] = []
        steps = (
            prompt_lookup_steps(sess, prompt, max_new, stop_token_ids, prompt_lookup)
            if prompt_lookup
            else generate_steps(sess, prompt, params, max_new, stop_token_ids, model.config.vocab_size)
        )
        for step in steps:
            out.append(step.token)
            yield step.token
            if strings:
                text = model.tokenizer.decode(out)
                if any(s in text for s in strings):
                    return

    return run() if stream else list(run())


def chat(
    model,
    messages,
    *,
    reasoning_effort: str = "medium",
    tools=None,
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    logprobs: bool = False,
    top_logprobs: int = 0,
    current_date=...,
    stream: bool = False,
    session=None,
    cancel=None,
):
    """One assistant turn in the harmony format: render, reuse the cached prefix,
    prefill the rest, decode until `<|return|>` or `<|call|>`, parse. Returns a
    ChatResponse, or an iterator of ChatEvents (the last, "done", carries the response)."""
    from ._errors import ContextLengthError
    from .chat import ChatEvent, StreamDecoder, harmony_encoding, render_chat

    tok_json = model.tokenizer_json_path()
    prompt = render_chat(
        messages, reasoning_effort=reasoning_effort, tools=tools, current_date=current_date, tokenizer_json=tok_json
    )
    params = SamplingParams(
        temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty, seed,
        logprobs=(int(top_logprobs) if logprobs else None),
    ).validate()
    strings = _stop_strings(stop)
    enc = harmony_encoding(tok_json)
    stop_ids = list(enc.stop_tokens_for_assistant_actions())  # <|return|>, <|call|>

    def run() -> Iterator[ChatEvent]:
        lock = model._chat_lock if session is None else None
        if lock is not None:
            lock.acquire()
        try:
            sess = session if session is not None else model._chat_session()
            if len(prompt) > sess.max_context:
                raise ContextLengthError(
                    f"the prompt has {len(prompt)} tokens, more than the context of {sess.max_context}"
                )
            cached = reuse_prefix(sess, prompt)
            room = sess.max_context - len(prompt)
            max_new = room if max_new_tokens is None else min(int(max_new_tokens), room)
            decoder = StreamDecoder(enc)
            tokens: list[int] = []
            lps: list[dict] = []
            content = ""
            hit_stop = False
            steps = generate_steps(sess, prompt[cached:], params, max_new, stop_ids, model.config.vocab_size, cancel)
            for step in steps:
                tokens.append(step.token)
                if params.logprobs is not None:
                    lps.append({"token": step.token, "logprob": step.logprob,
                                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in step.top_logprobs]})
                for ev in decoder.feed(step.token):
                    if ev.type == "content" and strings:
                        before = len(content)
                        content += ev.delta
                        cut = min((content.find(s) for s in strings if s in content), default=-1)
                        if cut >= 0:
                            if cut > before:
                                yield ChatEvent("content", content[before:cut])
                            content = content[:cut]
                            hit_stop = True
                            break
                    yield ev
                if hit_stop:
                    break
            resp = decoder.finish(tokens)
            if hit_stop:
                resp.content = content
                resp.finish_reason = "stop"
            elif tokens and tokens[-1] not in stop_ids and len(tokens) >= max_new:
                resp.finish_reason = "length"
            resp.usage = {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(tokens),
                "total_tokens": len(prompt) + len(tokens),
                "prompt_tokens_details": {"cached_tokens": cached},
            }
            resp.logprobs = lps if params.logprobs is not None else None
            yield ChatEvent("done", response=resp)
        finally:
            if lock is not None:
                lock.release()

    if stream:
        return run()
    last = None
    for ev in run():
        last = ev
    return last.response
