"""The `gptoss-native` command line (also `python -m gptoss_native`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


def cache_dir() -> Path:
    """Where gptoss-native keeps derived files (GPTOSS_NATIVE_CACHE overrides)."""
    env = os.environ.get("GPTOSS_NATIVE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gptoss_native"


def _kernel_self_check() -> list[str]:
    """Run the MXFP4 and bf16 matmuls on every available path against numpy."""
    import numpy as np

    from . import _core, bf16, mxfp4

    rng = np.random.default_rng(0)
    rows, n, m = 64, 2880, 3
    blocks = rng.integers(0, 256, size=(rows, n // 32, 16), dtype=np.uint8)
    scales = rng.integers(118, 123, size=(rows, n // 32), dtype=np.uint8)
    w = mxfp4.dequantize(blocks, scales).astype(np.float64)
    wb = bf16.from_float32(rng.standard_normal((rows, n), dtype=np.float32))
    wbf = bf16.to_float32(wb).astype(np.float64)
    lines = []
    for path in _core.cpu_features()["available"]:
        if path == "neon":
            continue
        worst = 0.0
        for mm in (1, m, 8):
            x = rng.standard_normal((mm, n), dtype=np.float32)
            ax = np.abs(x).astype(np.float64)
            for got, wf in (
                (_core.mxfp4_matmul(x, blocks, scales, None, None, path), w),
                (_core.bf16_matmul(x, wb, None, None, path), wbf),
            ):
                err = np.abs(got - x.astype(np.float64) @ wf.T) / (ax @ np.abs(wf).T)
                worst = max(worst, float(err.max()))
        ok = worst <= 1e-5
        lines.append(f"  {path:7s} {'ok' if ok else 'FAILED'}  (max error {worst:.1e} of sum|x||w|, bound 1e-5)")
        if not ok:
            raise SystemExit("kernel self-check failed:\n" + "\n".join(lines))
    return lines


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    import gptoss_native as gn

    from .synth import synth

    feats = gn.cpu_features()
    flags = [k for k in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "neon") if feats.get(k)]
    print(f"gptoss-native {gn.__version__} on {feats['arch']}: kernels={feats['kernels']} ({feats['reason']})")
    print(f"  CPU features: {' '.join(flags) or 'none'}; {feats['threads']} threads")
    print("MXFP4 / bf16 kernel self-check against numpy:")
    for line in _kernel_self_check():
        print(line)

    model_dir = cache_dir() / "demo-tiny"
    if not (model_dir / "config.json").is_file():
        print(f"Synthesizing a tiny random-weight model (real format, real vocabulary) in {model_dir} ...")
        tmp = model_dir.with_name("demo-tiny.partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        synth(tmp, "tiny", seed=0, progress=False)
        tmp.replace(model_dir)
    t0 = time.perf_counter()
    model = gn.load(model_dir, threads=args.threads)
    print(f"Loaded {model_dir} in {time.perf_counter() - t0:.2f} s: {model}")
    print("The weights are random: whatever it generates is noise.")

    prompt = list(range(1000, 1000 + args.prompt_tokens))
    sess = model.session()
    t0 = time.perf_counter()
    logits = sess.append(prompt)
    t_prefill = time.perf_counter() - t0
    out = []
    t0 = time.perf_counter()
    for _ in range(args.new_tokens):
        tok = int(np.argmax(logits[0]))
        out.append(tok)
        logits = sess.append([tok])
    t_decode = time.perf_counter() - t0
    print(f"Prefill {len(prompt)} tokens: {len(prompt) / t_prefill:.1f} tok/s; "
          f"greedy decode {len(out)} tokens: {len(out) / t_decode:.1f} tok/s")
    print(f"Token ids: {out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import synth

    t0 = time.perf_counter()
    out = synth(args.out_dir, args.preset, seed=args.seed, tokenizer=args.tokenizer, overwrite=args.overwrite)
    print(f"wrote {args.preset} checkpoint to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptoss-native", description="Run gpt-oss from its native MXFP4 checkpoint.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="end to end on a small synthetic model")
    d.add_argument("--tokenizer", help="a tokenizer.json or o200k_base.tiktoken (or the folder holding it)")
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--prompt-tokens", type=int, default=32)
    d.add_argument("--new-tokens", type=int, default=16)
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("synth", help="write a random-weight checkpoint in the real format")
    s.add_argument("out_dir")
    s.add_argument("--preset", choices=["tiny", "20b", "120b"], default="tiny")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tokenizer", help="a tokenizer.json (copied) or o200k_base.tiktoken (converted)")
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    s.set_defaults(func=cmd_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line unless --debug
        if args.debug:
            raise
        print(f"gptoss-native: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
