"""Test launcher: serve a model with gptoss_native.server, optionally driven by a
scripted source of logits (each generation emits the next scripted text's tokens), so
tests can get exact harmony outputs (tool calls, finals) from a random-weight model."""

from __future__ import annotations

import argparse
import json

import numpy as np
import uvicorn

import gptoss_native as gn
from gptoss_native.chat import harmony_encoding
from gptoss_native.server import create_app


class ScriptedSession:
    """Session stand-in: after each truncate (a new generation), its logits pick the
    tokens of the next script, one per step."""

    def __init__(self, scripts: list[list[int]], vocab: int, max_context: int):
        self.scripts, self.vocab, self.max_context = scripts, vocab, max_context
        self.tokens: list[int] = []
        self.gen = -1
        self.step = 0

    def __len__(self):
        return len(self.tokens)

    def truncate(self, n):
        self.tokens = self.tokens[:n]
        self.gen += 1
        self.step = 0

    def append(self, ids, logits="last"):
        self.tokens += list(ids)
        script = self.scripts[self.gen % len(self.scripts)]
        row = np.full((1, self.vocab), -30.0, np.float32)
        row[0, script[min(self.step, len(script) - 1)]] = 30.0
        self.step += 1
        return row

    def append_argmax(self, ids):
        return int(np.argmax(self.append(ids)[0]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-context", type=int, default=4096)
    p.add_argument("--max-sessions", type=int, default=4)
    p.add_argument("--scripts", default=None, help="JSON list of completion texts (harmony, specials allowed)")
    a = p.parse_args()
    model = gn.load(a.model, max_context=a.max_context)
    factory = None
    if a.scripts:
        enc = harmony_encoding(model.tokenizer_json_path())
        scripts = [list(enc.encode(t, allowed_special="all")) for t in json.loads(a.scripts)]
        shared: list[ScriptedSession] = []

        def factory():
            s = ScriptedSession(scripts, model.config.vocab_size, a.max_context)
            shared.append(s)
            return s

    app = create_app(model, model_name="gpt-oss-test", api_key=a.api_key, max_sessions=a.max_sessions,
                     session_factory=factory)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
