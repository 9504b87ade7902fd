#!/usr/bin/env python3
"""Greedy decoding with prompt-lookup speculation against plain greedy decoding on a
repetitive prompt, in the same process (alternating, medians); checks the outputs match.

    python bench/prompt_lookup.py MODEL [--tokens 48] [--draft 8] [--reps 3] [--threads 2]

The prompt is a passage, the model's own greedy continuation of it, and the passage
again: a model that copies repeated text (a real one, on code, quotes or edits) then
continues as before, and the drafts from the context are right. A random-weight model
does not copy (its attention mixes in the whole context), so its acceptance (printed) is
low; `gptoss-native synth --preset 20b --repeating` writes one that does (attention
output zero: each next token depends on the current one alone), at the real shapes and
cost per token, so the speedup it shows is the one of drafts that are always right.
The script also times one verification pass of 1 + k tokens (every logit) against one
plain greedy step, for k = 1, 2, 4 and the draft length: a pass pays for itself where
more than (its cost in steps - 1) draft tokens are accepted on average.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gptoss_native as gn
from gptoss_native.generate import prompt_lookup_steps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--draft", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    m = gn.load(a.model, threads=a.threads, max_context=2048)
    passage = m.tokenizer.encode(
        "The quick brown fox jumps over the lazy dog, then naps beside a river of warm honey "
        "while seven curious owls debate the price of silver spoons in the moonlight."
    )
    cont = m.generate(passage, max_new_tokens=a.tokens, temperature=0, stop_token_ids=[])
    prompt = passage + cont + passage
    plain_t, fast_t = [], []
    def session():
        # The same start for both: the prompt but its last token prefilled, untimed.
        s = m.session()
        s.append(prompt[:-1], logits=None)
        return s

    for rep in range(a.reps):
        s = session()
        t0 = time.perf_counter()
        plain = m.generate(prompt[-1:], max_new_tokens=a.tokens, temperature=0, stop_token_ids=[], session=s)
        plain_t.append(a.tokens / (time.perf_counter() - t0))
        s, stats = session(), {}
        t0 = time.perf_counter()
        fast = [st.token for st in prompt_lookup_steps(s, prompt[-1:], a.tokens, (), a.draft, stats)]
        fast_t.append(a.tokens / (time.perf_counter() - t0))
        same = sum(x == y for x, y in zip(plain, fast))
        print(f"rep {rep + 1}: plain {plain_t[-1]:.2f} tok/s, prompt lookup {fast_t[-1]:.2f} tok/s, "
              f"outputs agree on {same}/{len(plain)} tokens; {stats['passes']} verification passes, "
              f"{stats['accepted']}/{stats['drafted']} draft tokens accepted")
    p, f = statistics.median(plain_t), statistics.median(fast_t)
    print(f"plain greedy {p:.2f} tok/s; prompt lookup (draft {a.draft}) {f:.2f} tok/s ({f / p:.2f}x)")

    # The price of a pass: 1 + k tokens with every logit, against a plain greedy step
    # (alternating, medians; the cache is truncated back after each pass).
    s = session()
    nxt = s.append_argmax(prompt[-1:])
    for k in sorted({1, 2, 4, a.draft}):
        steps, passes = [], []
        for _ in range(a.reps):
            base = len(s)
            t0 = time.perf_counter()
            s.append_argmax([nxt])
            steps.append(time.perf_counter() - t0)
            s.truncate(base)
            t0 = time.perf_counter()
            s.append([nxt] + prompt[-k:], logits="all")
            passes.append(time.perf_counter() - t0)
            s.truncate(base)
        ratio = statistics.median(passes) / statistics.median(steps)
        print(f"verification pass of 1 + {k} tokens: {ratio:.2f} plain steps "
              f"(pays where more than {ratio - 1:.2f} draft tokens are accepted per pass)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
