"""`gptoss-native bench MODEL`: load time, prefill and decode tokens/s, memory.

Figures are measured in this process; the script in bench/compare_llamacpp.py runs
this against llama.cpp on the same weights, alternating.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["run_bench", "memory_report"]


def memory_report() -> dict[str, float]:
    """Peak RSS, current RSS, and how much of it is the mapped checkpoint (file-backed)
    versus private anonymous memory, in GB (Linux; zeros elsewhere)."""
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}
    try:
        fields = {}
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024 / 1e9
        out["rss_gb"] = fields.get("Rss", 0.0)
        out["anonymous_gb"] = fields.get("Anonymous", 0.0)
        out["file_backed_gb"] = fields.get("Rss", 0.0) - fields.get("Anonymous", 0.0)
    except OSError:
        pass
    return out


def _tokens(n: int, vocab: int, seed: int) -> list[int]:
    # Ordinary text ids (below the special tokens), reproducible.
    hi = min(vocab, 199998)
    return np.random.default_rng(seed).integers(0, hi, size=n).tolist()


def _decode(sess, first_logits, n: int) -> float:
    """Greedy-decode n tokens; returns seconds."""
    logits = first_logits
    t0 = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(logits[0]))
        logits = sess.append([tok])
    return time.perf_counter() - t0


def run_bench(
    model_path: str,
    *,
    prompt_tokens: int | Sequence[int] = 512,
    new_tokens: int = 128,
    depth: int = 1024,
    depth_tokens: int = 32,
    threads: int | None = None,
    precision: str = "auto",
    max_context: int | None = None,
    bandwidth: bool = True,
) -> dict:
    import gptoss_native as gn

    from . import _core

    t0 = time.perf_counter()
    prompts = [prompt_tokens] if isinstance(prompt_tokens, int) else list(prompt_tokens)
    need = max(*prompts, depth + depth_tokens, new_tokens + 1) + 8
    model = gn.load(model_path, threads=threads, precision=precision, max_context=max_context or need)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.warm()  # the checkpoint into the page cache, so no run pays for disk reads
    warm_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    res: dict = {
        "model": str(model_path),
        "threads": model.threads,
        "kernels": model.kernels,
        "precision": precision,
        "load_s": load_s,
        "warm_s": warm_s,
    }
    # pp: prefill of each prompt length on an empty context (lm_head only for the last
    # token); a short prompt (well under a second) is timed a few times, its median kept.
    for n in prompts:
        if n <= 0:
            continue
        times = []
        for _ in range(min(5, max(1, 128 // n))):
            sess = model.session()
            t0 = time.perf_counter()
            sess.append(_tokens(n, vocab, 1), logits="last")
            times.append(time.perf_counter() - t0)
        res[f"pp{n}_tok_s"] = n / statistics.median(times)
    # tg: decode from an empty context (one token of context to start from).
    if new_tokens:
        sess = model.session()
        first = sess.append(_tokens(1, vocab, 2))
        res[f"tg{new_tokens}_tok_s"] = new_tokens / _decode(sess, first, new_tokens)
    # tg at depth: decode after a prefill of `depth` tokens.
    if depth and depth_tokens:
        sess = model.session()
        first = sess.append(_tokens(depth, vocab, 3))
        res[f"tg{depth_tokens}_at_depth{depth}_tok_s"] = depth_tokens / _decode(sess, first, depth_tokens)
    # tg greedy: the tg decode through `append_argmax` (lm_head screened, the argmax exact;
    # the first call, untimed, makes the screen). Last: logits computed after it would map
    # lm_head's bf16 pages again beside the screen's copy.
    if new_tokens:
        sess = model.session()
        tok = sess.append_argmax(_tokens(1, vocab, 2))
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            tok = sess.append_argmax([tok])
        res[f"tg{new_tokens}_greedy_tok_s"] = new_tokens / (time.perf_counter() - t0)
    res.update(memory_report())
    res["checkpoint_gb"] = model._core.mapped_bytes / 1e9
    if bandwidth:
        bw = _core.read_bandwidth(1024, threads)
        res["read_bandwidth_gb_s"] = bw
        # Weight bytes one decode step reads: experts of the active top-k, attention, lm_head.
        c = model.config
        h, inter, hd = c.hidden_size, c.intermediate_size, c.head_dim
        expert = (2 * inter * h + h * inter) * 17 / 32
        # bf16 attention and lm_head: 2 bytes a weight; Q8: 34 bytes per 32.
        wb = 34 / 32 if precision == "q8" else 2
        attn = wb * (h * (c.num_attention_heads + 2 * c.num_key_value_heads) * hd + h * c.num_attention_heads * hd)
        per_token = (c.num_hidden_layers * (c.num_experts_per_tok * expert + attn + 2 * c.num_local_experts * h)
                     + wb * c.vocab_size * h)
        res["decode_weight_gb_per_token"] = per_token / 1e9
        if new_tokens:
            res["tg_fraction_of_bandwidth"] = res[f"tg{new_tokens}_tok_s"] * per_token / 1e9 / bw
    return res


def format_report(r: dict) -> str:
    lines = [f"{r['model']}: threads={r['threads']} kernels={r['kernels']} precision={r['precision']}"]
    lines.append(f"  load                {r['load_s']:.2f} s (then {r['warm_s']:.1f} s to read it into the page cache)")
    for k, v in r.items():
        if k.endswith("_tok_s"):
            lines.append(f"  {k[:-6]:<20}{v:.2f} tok/s")
    lines.append(
        f"  peak RSS {r['peak_rss_gb']:.2f} GB (now {r.get('rss_gb', 0):.2f} GB: {r.get('file_backed_gb', 0):.2f} GB mapped "
        f"checkpoint, {r.get('anonymous_gb', 0):.2f} GB private); checkpoint {r['checkpoint_gb']:.2f} GB"
    )
    if "read_bandwidth_gb_s" in r:
        lines.append(f"  memory read bandwidth {r['read_bandwidth_gb_s']:.1f} GB/s; decode reads "
                     f"{r['decode_weight_gb_per_token']:.2f} GB/token")
        if "tg_fraction_of_bandwidth" in r:
            lines.append(f"  decode = {100 * r['tg_fraction_of_bandwidth']:.0f}% of that bandwidth")
    return "\n".join(lines)


def main_json(r: dict) -> str:
    return json.dumps(r, indent=2, sort_keys=True)
