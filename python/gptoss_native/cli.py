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


def _find_tokenizer(explicit: str | None) -> Path | None:
    """The demo's tokenizer, in order: --tokenizer PATH; TIKTOKEN_ENCODINGS_BASE; a
    gpt-oss model in the Hugging Face cache."""
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_dir():
            for name in ("tokenizer.json", "o200k_base.tiktoken"):
                if (p / name).is_file():
                    return p / name
            raise FileNotFoundError(f"{p} holds neither tokenizer.json nor o200k_base.tiktoken")
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer {p} does not exist")
        return p
    env = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if env and (Path(env) / "o200k_base.tiktoken").is_file():
        return Path(env) / "o200k_base.tiktoken"
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub"
    )
    for repo in ("models--openai--gpt-oss-20b", "models--openai--gpt-oss-120b"):
        for cand in sorted(Path(hub, repo, "snapshots").glob("*/tokenizer.json")):
            return cand
    return None


def _use_tokenizer(model, path: Path) -> None:
    """Attach `path` as the model's tokenizer, and make harmony's vocabulary reachable."""
    from .tokenizer import Tokenizer

    model.tokenizer = Tokenizer.from_file(path)
    if path.suffix == ".tiktoken" and path.name == "o200k_base.tiktoken":
        os.environ.setdefault("TIKTOKEN_ENCODINGS_BASE", str(path.parent))


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    import gptoss_native as gn

    from .synth import synth

    feats = gn.cpu_features()
    flags = [k for k in ("avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_vbmi", "avx512_bf16", "neon", "dotprod") if feats.get(k)]
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

    tok_path = _find_tokenizer(args.tokenizer)
    if tok_path is None:
        prompt = list(range(1000, 1000 + args.prompt_tokens))
        print("No tokenizer found: running the token-level part only. For the chat turn, pass "
              "--tokenizer PATH (a gpt-oss tokenizer.json or o200k_base.tiktoken) or set TIKTOKEN_ENCODINGS_BASE.")
        sess = model.session()
        t0 = time.perf_counter()
        logits = sess.append(prompt)
        t_prefill = time.perf_counter() - t0
        out = [int(np.argmax(logits[0]))][: args.new_tokens]
        t0 = time.perf_counter()
        while len(out) < args.new_tokens:
            out.append(sess.append_argmax([out[-1]]))
        t_decode = time.perf_counter() - t0
        print(f"Prefill {len(prompt)} tokens: {len(prompt) / t_prefill:.1f} tok/s; "
              f"greedy decode {len(out)} tokens: {len(out) / t_decode:.1f} tok/s")
        print(f"Token ids: {out}")
        return 0

    from .chat import StreamDecoder, harmony_encoding, render_chat
    from .generate import Sampler, SamplingParams

    _use_tokenizer(model, tok_path)
    print(f"Tokenizer: {tok_path}")
    messages = [{"role": "user", "content": "Say hello in three languages."}]
    tok_json = model.tokenizer_json_path()
    prompt = render_chat(messages, reasoning_effort="low", tokenizer_json=tok_json)
    enc = harmony_encoding(tok_json)
    print(f"Rendered the harmony prompt: {len(prompt)} tokens")
    sess = model.session()
    t0 = time.perf_counter()
    logits = sess.append(prompt)
    t_prefill = time.perf_counter() - t0
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0), model.config.vocab_size)
    decoder = StreamDecoder(enc)
    stops = set(enc.stop_tokens_for_assistant_actions())
    out: list[int] = []
    print("Streaming the reply (parsed by harmony's streaming parser):")
    t0 = time.perf_counter()
    for _ in range(args.new_tokens):
        tok = sampler(logits[0]).token
        out.append(tok)
        for ev in decoder.feed(tok):
            print(f"  [{ev.type}] {ev.delta!r}")
        if tok in stops:
            break
        logits = sess.append([tok])
    t_decode = time.perf_counter() - t0
    resp = decoder.finish(out)
    print(f"Raw completion text: {model.tokenizer.decode(out)!r}")
    print(f"Parsed: content={resp.content!r} reasoning={resp.reasoning!r} tool_calls={len(resp.tool_calls)} "
          f"finish_reason={resp.finish_reason}")
    print(f"Prefill {len(prompt)} tokens: {len(prompt) / t_prefill:.1f} tok/s; "
          f"decode {len(out)} tokens: {len(out) / t_decode:.1f} tok/s")
    return 0


def _print_stream(events, show_reasoning: bool, dim: bool) -> object:
    """Print a chat stream; returns the final response."""
    resp = None
    in_reasoning = False
    for ev in events:
        if ev.type == "reasoning":
            if show_reasoning:
                if not in_reasoning:
                    sys.stdout.write("\x1b[2m" if dim else "[reasoning] ")
                    in_reasoning = True
                sys.stdout.write(ev.delta)
        else:
            if in_reasoning:
                sys.stdout.write("\x1b[0m\n" if dim else "\n")
                in_reasoning = False
            if ev.type == "content":
                sys.stdout.write(ev.delta)
            elif ev.type == "tool_call" and ev.tool_call and ev.tool_call.get("name"):
                sys.stdout.write(f"\n[tool call {ev.tool_call['name']}] ")
            elif ev.type == "tool_call":
                sys.stdout.write(ev.delta)
            elif ev.type == "done":
                resp = ev.response
        sys.stdout.flush()
    if in_reasoning and dim:
        sys.stdout.write("\x1b[0m")
    sys.stdout.write("\n")
    return resp


def _load_for_chat(args):
    import gptoss_native as gn

    from tqdm import tqdm

    with tqdm(total=1, desc="loading", disable=not sys.stderr.isatty(), leave=False) as bar:
        model = gn.load(args.model, threads=args.threads, max_context=args.max_context, precision=args.precision)
        bar.update(1)
    if getattr(args, "tokenizer", None):
        _use_tokenizer(model, Path(args.tokenizer).expanduser())
    return model


def cmd_generate(args: argparse.Namespace) -> int:
    model = _load_for_chat(args)
    t0 = time.perf_counter()
    resp = model.chat(
        [{"role": "user", "content": args.prompt}],
        reasoning_effort=args.reasoning_effort,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    dt = time.perf_counter() - t0
    if args.show_reasoning and resp.reasoning:
        print(f"[reasoning] {resp.reasoning}")
    print(resp.content)
    if args.stats:
        u = resp.usage
        print(f"[{u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens in {dt:.2f} s: "
              f"{u['completion_tokens'] / dt:.1f} tok/s overall; finish_reason={resp.finish_reason}]", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    model = _load_for_chat(args)
    effort = args.reasoning_effort
    messages: list[dict] = []
    dim = sys.stdout.isatty()
    print(f"gptoss-native chat: {model.path} (/reset, /effort low|medium|high, /quit; Ctrl-C stops a reply)")
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/quit", "/exit"):
            return 0
        if cmd == "/reset":
            messages.clear()
            print("(conversation reset)")
            continue
        if cmd.startswith("/effort"):
            parts = cmd.split()
            if len(parts) == 2 and parts[1] in ("low", "medium", "high"):
                effort = parts[1]
                print(f"(reasoning effort: {effort})")
            else:
                print("usage: /effort low|medium|high")
            continue
        messages.append({"role": "user", "content": line})
        events = model.chat(messages, reasoning_effort=effort, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, seed=args.seed, stream=True)
        try:
            resp = _print_stream(events, args.show_reasoning, dim)
        except KeyboardInterrupt:
            events.close()
            print("\n(reply stopped)")
            messages.pop()
            continue
        if resp is not None:
            messages.append(resp.to_message())


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import synth

    t0 = time.perf_counter()
    out = synth(args.out_dir, args.preset, seed=args.seed, tokenizer=args.tokenizer, overwrite=args.overwrite,
                repeating=args.repeating)
    print(f"wrote {args.preset} checkpoint to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key, threads=args.threads,
          max_context=args.max_context, max_sessions=args.max_sessions, model_name=args.model_name,
          precision=args.precision)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_report, main_json, run_bench

    r = run_bench(
        args.model,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        depth=args.depth,
        depth_tokens=args.depth_tokens,
        threads=args.threads,
        precision=args.precision,
        bandwidth=not args.no_bandwidth,
    )
    print(main_json(r) if args.json else format_report(r))
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected lengths >= 0, got {text!r}")
    return values


def _precision_arg(p: argparse.ArgumentParser) -> None:
    from .model import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default); f32: reference-exact; q8: attention and lm_head in int8 (faster, see README)")


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

    for name, helptext in (("chat", "interactive chat, streamed"), ("generate", "one-shot answer to PROMPT")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("model", help="model folder (HF layout or original/) or hub id")
        if name == "generate":
            c.add_argument("prompt")
            c.add_argument("--stats", action="store_true", help="print token counts and tok/s")
        c.add_argument("-r", "--reasoning-effort", choices=["low", "medium", "high"], default="medium")
        c.add_argument("--show-reasoning", action="store_true", help="show the chain of thought (dim)")
        c.add_argument("--max-new-tokens", type=int, default=None)
        c.add_argument("--temperature", type=float, default=1.0)
        c.add_argument("--seed", type=int, default=None)
        c.add_argument("--threads", type=int, default=None)
        c.add_argument("--max-context", type=int, default=None)
        _precision_arg(c)
        c.add_argument("--tokenizer", help="tokenizer.json or o200k_base.tiktoken, if the model folder has none")
        c.set_defaults(func=cmd_chat if name == "chat" else cmd_generate)

    v = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    v.add_argument("model")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (also GPTOSS_NATIVE_API_KEY)")
    v.add_argument("--model-name", default=None, help="the id clients use (default: the folder name)")
    v.add_argument("--threads", type=int, default=None)
    v.add_argument("--max-context", type=int, default=8192, help="tokens per session (bounds memory per client)")
    v.add_argument("--max-sessions", type=int, default=4, help="sessions generating at once (others queue)")
    _precision_arg(v)
    v.set_defaults(func=cmd_serve)

    b = sub.add_parser("bench", help="prefill / decode tok/s, load time, memory")
    b.add_argument("model")
    b.add_argument("--prompt-tokens", type=_int_list, default=[512],
                   help="prefill length (pp), or several separated by commas (16,64,512)")
    b.add_argument("--new-tokens", type=int, default=128, help="decode length from an empty context (tg)")
    b.add_argument("--depth", type=int, default=1024, help="context depth for the second decode run (0: skip)")
    b.add_argument("--depth-tokens", type=int, default=32, help="tokens decoded at that depth")
    b.add_argument("--threads", type=int, default=None)
    _precision_arg(b)
    b.add_argument("--no-bandwidth", action="store_true", help="skip the memory bandwidth measurement")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("synth", help="write a random-weight checkpoint in the real format")
    s.add_argument("out_dir")
    s.add_argument("--preset", choices=["tiny", "20b", "120b"], default="tiny")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tokenizer", help="a tokenizer.json (copied) or o200k_base.tiktoken (converted)")
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    s.add_argument("--repeating", action="store_true",
                   help="zero attention output: the next token depends on the current one alone (prompt-lookup benchmarks)")
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
