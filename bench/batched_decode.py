#!/usr/bin/env python3
"""Aggregate decode tok/s of B sessions advanced together by `model.step`, as a ratio to
one session decoding alone, measured in the same process (alternating, medians).

    python bench/batched_decode.py MODEL [--sessions 8] [--tokens 16] [--reps 3] [--threads 2]
        [--precision auto|f32|q8] [--generations]

With --generations it also times what the server does with B concurrent requests: B
greedy generations, each in its own thread, through a `StepBatcher` (one pass per token
of all of them), against the same B threads each decoding on its own (the server before
the batcher: the passes interleave on the shared kernel threads).
"""

from __future__ import annotations

import argparse
import statistics
import time

import threading

import numpy as np

import gptoss_native as gn
from gptoss_native.bench import memory_report
from gptoss_native.generate import SamplingParams, StepBatcher, generate_steps


def concurrent_generations(m, prompts: list[list[int]], tokens: int, batched: bool) -> float:
    """Aggregate tok/s of one greedy generation per prompt, each in its own thread (the
    prompts prefilled first, untimed)."""
    sessions = [m.session() for _ in prompts]
    for s, p in zip(sessions, prompts):
        s.append(p[:-1], logits=None)
    batcher = StepBatcher(m)
    wrapped = [batcher.wrap(s) if batched else s for s in sessions]
    start = threading.Barrier(len(prompts) + 1)

    def run(i: int) -> None:
        start.wait()
        for _ in generate_steps(wrapped[i], prompts[i][-1:], SamplingParams(temperature=0), tokens):
            pass
        if batched:
            wrapped[i].close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return len(prompts) * tokens / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="auto", choices=["auto", "f32", "q8"])
    ap.add_argument("--generations", action="store_true", help="also time concurrent generations (the server's case)")
    a = ap.parse_args()
    m = gn.load(a.model, threads=a.threads, max_context=1024, precision=a.precision)
    rng = np.random.default_rng(0)
    single, batched, gen_batched, gen_alone = [], [], [], []
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
        if a.generations:
            prompts = [rng.integers(0, 199000, 8).tolist() for _ in range(a.sessions)]
            gen_batched.append(concurrent_generations(m, prompts, a.tokens, True))
            gen_alone.append(concurrent_generations(m, prompts, a.tokens, False))
            print(f"       {a.sessions} generations in threads: through the batcher {gen_batched[-1]:.2f}, "
                  f"each on its own {gen_alone[-1]:.2f} tok/s aggregate")
    s1, sb = statistics.median(single), statistics.median(batched)
    print(f"single session: {s1:.2f} tok/s; {a.sessions} sessions batched: {sb:.2f} tok/s aggregate "
          f"({sb / s1:.2f}x); precision {a.precision}; threads {m.threads}; peak RSS {memory_report()['peak_rss_gb']:.2f} GB")
    if a.generations:
        gb, ga = statistics.median(gen_batched), statistics.median(gen_alone)
        print(f"{a.sessions} concurrent generations: through the batcher {gb:.2f} tok/s aggregate ({gb / s1:.2f}x "
              f"a single session), each on its own {ga:.2f} ({ga / s1:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
