#!/usr/bin/env python3
"""Greedy decoding with prompt-lookup speculation against plain greedy decoding on a
repetitive prompt, in the same process (alternating, medians); checks the outputs match.

    python bench/prompt_lookup.py MODEL [--tokens 48] [--draft 8] [--reps 3] [--threads 2]

With random weights the model rarely continues the prompt's n-grams, so the acceptance
rate (printed) says how much speculation could pay; the speedup is real only where drafts
are accepted (real models on code, quotes, edits).
"""

from __future__ import annotations

import argparse
import statistics
import time

import gptoss_native as gn


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--draft", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    m = gn.load(a.model, threads=a.threads, max_context=2048)
    tok = m.tokenizer
    prompt = tok.encode("def add(a, b):\n    return a + b\n\n" * 12)
    plain_t, fast_t = [], []
    def timed(**kw):
        # The same start for both: the prompt but its last token prefilled, untimed.
        s = m.session()
        s.append(prompt[:-1], logits=None)
        t0 = time.perf_counter()
        out = m.generate(prompt[-1:], max_new_tokens=a.tokens, temperature=0, stop_token_ids=[], session=s, **kw)
        return out, a.tokens / (time.perf_counter() - t0)

    for rep in range(a.reps):
        plain, tps = timed()
        plain_t.append(tps)
        fast, tps = timed(prompt_lookup=a.draft)
        fast_t.append(tps)
        same = sum(x == y for x, y in zip(plain, fast))
        print(f"rep {rep + 1}: plain {plain_t[-1]:.2f} tok/s, prompt lookup {fast_t[-1]:.2f} tok/s, "
              f"outputs agree on {same}/{len(plain)} tokens")
    p, f = statistics.median(plain_t), statistics.median(fast_t)
    print(f"plain greedy {p:.2f} tok/s; prompt lookup (draft {a.draft}) {f:.2f} tok/s ({f / p:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
