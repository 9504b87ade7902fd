#!/usr/bin/env python3
"""Aggregate decode tok/s of B sessions advanced together by `model.step`, as a ratio to
one session decoding alone, measured in the same process (alternating, medians).

    python bench/batched_decode.py MODEL [--sessions 8] [--tokens 16] [--reps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import gptoss_native as gn
from gptoss_native.bench import memory_report


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    m = gn.load(a.model, threads=a.threads, max_context=1024)
    rng = np.random.default_rng(0)
    single, batched = [], []
    for rep in range(a.reps):
        s = m.session()
        logits = s.append(rng.integers(0, 199000, 8).tolist())
        t0 = time.perf_counter()
        for _ in range(a.tokens):
            logits = s.append([int(logits[0].argmax())])
        single.append(a.tokens / (time.perf_counter() - t0))

        sessions = [m.session() for _ in range(a.sessions)]
        nxt = []
        for sess in sessions:
            nxt.append(int(sess.append(rng.integers(0, 199000, 8).tolist())[0].argmax()))
        t0 = time.perf_counter()
        for _ in range(a.tokens):
            out = m.step(sessions, nxt)
            nxt = [int(r.argmax()) for r in out]
        batched.append(a.sessions * a.tokens / (time.perf_counter() - t0))
        print(f"rep {rep + 1}: single {single[-1]:.2f} tok/s, {a.sessions} sessions {batched[-1]:.2f} tok/s aggregate")
    s1, sb = statistics.median(single), statistics.median(batched)
    print(f"single session: {s1:.2f} tok/s; {a.sessions} sessions batched: {sb:.2f} tok/s aggregate "
          f"({sb / s1:.2f}x); threads {m.threads}; peak RSS {memory_report()['peak_rss_gb']:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
