#!/usr/bin/env python3
"""gptoss-native against llama.cpp on the same random-weight gpt-oss-20b, on this machine.

    python bench/compare_llamacpp.py [--workdir DIR] [--threads 2] [--reps 3] [--q8] [--depth4096] [--avx2]
        [--short-prompts]

Steps (each skipped when its output already exists in --workdir):
  1. build llama.cpp's CPU tools (llama-bench) from the llama-cpp-python 0.3.36 sdist on PyPI
     (it vendors llama.cpp, its converter and gguf-py); cmake comes from Debian's packages;
  2. synthesize the 20b checkpoint with `gptoss-native synth --preset 20b`, adding
     ../shared/tokenizer/tokenizer.json for the converter;
  3. convert it with llama.cpp's own convert_hf_to_gguf.py (in a venv with torch and
     transformers from PyPI: a multi-GB download, once): "A" is the converter's default
     (attention/embedding/output stay bf16, experts stay MXFP4), "B" (--q8) is --outtype q8_0,
     compared with our opt-in `--precision q8` (attention and lm_head in int8);
  4. run llama-bench and `gptoss-native bench` alternately, reading each model file into the
     page cache before each timed run, and print every figure and the ratio ours / llama.cpp
     (--short-prompts adds prefill of 16-128 tokens, the size of a chat turn).

With --avx2 both engines run their AVX2 kernels, as on a CPU without AVX-512: llama.cpp
built a second time with GGML_NATIVE=OFF, AVX2/FMA/F16C/BMI2 on and AVX-512 off (in
build-avx2), ours with GPTOSS_NATIVE_KERNELS=avx2.

Nothing is written outside --workdir (default: ./llamacpp-compare, about 28 GB; never commit it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = ROOT.parent / "shared" / "tokenizer" / "tokenizer.json"
LLAMA_VERSION = "0.3.36"


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


# llama.cpp's CMake flags for each build: the machine's own ISA, or AVX2 without AVX-512.
LLAMA_FLAGS = {
    "build": ["-DGGML_NATIVE=ON"],
    "build-avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
                   "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF"],
}


def build_llama(work: Path, build: str) -> Path:
    src = work / f"llama_cpp_python-{LLAMA_VERSION}" / "vendor" / "llama.cpp"
    bench = src / build / "bin" / "llama-bench"
    if bench.is_file():
        return src
    if shutil.which("cmake") is None:
        sh(["apt-get", "update", "-qq"])
        sh(["apt-get", "install", "-y", "-qq", "cmake"])
    sdist = work / f"llama_cpp_python-{LLAMA_VERSION}.tar.gz"
    if not sdist.is_file():
        sh([sys.executable, "-m", "pip", "install", "-q", "scikit-build-core"])
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
            f"llama-cpp-python=={LLAMA_VERSION}", "-d", work])
    if not src.is_dir():
        with tarfile.open(sdist) as t:
            t.extractall(work, filter="data")
    sh(["cmake", "-S", src, "-B", src / build, "-DCMAKE_BUILD_TYPE=Release", *LLAMA_FLAGS[build],
        "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"])
    sh(["cmake", "--build", src / build, "--target", "llama-bench", f"-j{os.cpu_count() or 2}"])
    return src


def synth_model(work: Path) -> Path:
    out = work / "gpt-oss-20b-synth"
    if (out / "config.json").is_file():
        return out
    sh([sys.executable, "-m", "gptoss_native", "synth", out, "--preset", "20b", "--seed", "0",
        "--tokenizer", SHARED_TOKENIZER])
    return out


def convert(work: Path, src: Path, model: Path, q8: bool) -> Path:
    out = work / ("gpt-oss-20b-q8_0.gguf" if q8 else "gpt-oss-20b-default.gguf")
    if out.is_file():
        return out
    venv = work / "convert-venv"
    py = venv / "bin" / "python"
    if not py.is_file():
        sh([sys.executable, "-m", "venv", venv])
        sh([py, "-m", "pip", "install", "-q", "torch", "transformers", "numpy", "safetensors", "sentencepiece", "protobuf"])
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    cmd = [py, src / "convert_hf_to_gguf.py", model, "--outfile", out]
    if q8:
        cmd += ["--outtype", "q8_0"]
    sh(cmd, env=env)
    return out


def warm(path: Path) -> None:
    """Read a file (or every file of a folder) into the page cache."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


# What one alternating run measures: None (pp512, tg128, and ours at depth 1024), a
# depth (tg32 there), or "short" (prefill of short prompts, the size of a chat turn).
SHORT_PROMPTS = [16, 32, 64, 128]


def run_llama(src: Path, build: str, gguf: Path, threads: int, depth: int | str | None) -> dict:
    bench = src / build / "bin" / "llama-bench"
    # One repetition per call: the repetitions come from the alternating outer loop. A
    # short prompt's prefill lasts under a second: 3 of them, as ours times a few.
    reps = "3" if depth == "short" else "1"
    cmd = [bench, "-m", gguf, "-t", str(threads), "-r", reps, "-o", "json"]
    if depth == "short":
        cmd += ["-p", ",".join(map(str, SHORT_PROMPTS)), "-n", "0"]
    else:
        cmd += ["-p", "0", "-n", "32", "-d", str(depth)] if depth else ["-p", "512", "-n", "128"]
    r = sh(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    rows = json.loads(r.stdout)
    out = {}
    for row in rows:
        n_p, n_g = row.get("n_prompt", 0), row.get("n_gen", 0)
        key = f"pp{n_p}" if n_p else (f"tg{n_g}_at_depth{depth}" if depth else f"tg{n_g}")
        out[key] = row["avg_ts"]
    for line in r.stderr.splitlines():
        if "Maximum resident set size" in line:
            out["peak_rss_gb"] = int(line.split()[-1]) * 1024 / 1e9
    return out


def run_ours(model: Path, threads: int, depth: int | str | None, precision: str, avx2: bool) -> dict:
    cmd = [sys.executable, "-m", "gptoss_native", "bench", model, "--threads", str(threads), "--json",
           "--precision", precision]
    if depth == "short":
        cmd += ["--prompt-tokens", ",".join(map(str, SHORT_PROMPTS)), "--new-tokens", "0", "--depth", "0"]
    elif depth:
        cmd += ["--prompt-tokens", "0", "--new-tokens", "0", "--depth", str(depth), "--depth-tokens", "32"]
    else:
        cmd += ["--prompt-tokens", "512", "--new-tokens", "128", "--depth", "1024", "--depth-tokens", "32"]
    env = {**os.environ, "GPTOSS_NATIVE_KERNELS": "avx2"} if avx2 else None
    r = sh(cmd, capture_output=True, text=True, env=env)
    res = json.loads(r.stdout)
    out = {k.replace("_tok_s", ""): v for k, v in res.items() if k.endswith("_tok_s")}
    for k in ("peak_rss_gb", "anonymous_gb", "load_s", "read_bandwidth_gb_s", "tg_fraction_of_bandwidth"):
        if k in res:
            out[k] = res[k]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="llamacpp-compare")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--q8", action="store_true", help="compare with conversion B (--outtype q8_0) instead of A")
    ap.add_argument("--depth4096", action="store_true", help="also tg32 at depth 4096 (minutes per run)")
    ap.add_argument("--avx2", action="store_true", help="both engines on their AVX2 kernels (a CPU without AVX-512)")
    ap.add_argument("--short-prompts", action="store_true",
                    help=f"also prefill of short prompts ({', '.join(map(str, SHORT_PROMPTS))} tokens: a chat turn)")
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)

    build = "build-avx2" if args.avx2 else "build"
    src = build_llama(work, build)
    model = synth_model(work)
    gguf = convert(work, src, model, args.q8)

    depths: list[int | str | None] = [None] + ([4096] if args.depth4096 else []) + (["short"] if args.short_prompts else [])
    ours: dict[str, list[float]] = {}
    theirs: dict[str, list[float]] = {}
    for rep in range(args.reps):
        for depth in depths:
            # Alternate the engines; each file is read into the page cache before its run.
            # The short-prompt runs report their prefill figures only: the memory and
            # bandwidth figures are the main run's.
            keep = (lambda k: k.startswith("pp")) if depth == "short" else (lambda k: True)
            warm(gguf)
            for k, v in run_llama(src, build, gguf, args.threads, depth).items():
                if keep(k):
                    theirs.setdefault(k, []).append(v)
            warm(model)
            for k, v in run_ours(model, args.threads, depth, "q8" if args.q8 else "auto", args.avx2).items():
                if keep(k):
                    ours.setdefault(k, []).append(v)
        print(f"rep {rep + 1}/{args.reps}: llama.cpp {theirs}\n  ours {ours}", flush=True)

    med = lambda d: {k: statistics.median(v) for k, v in d.items()}  # noqa: E731
    a, b = med(ours), med(theirs)
    label = "B (q8_0) vs our --precision q8" if args.q8 else "A (default) vs our default (auto)"
    label += ", both on AVX2 kernels" if args.avx2 else ""
    print(f"\ngpt-oss-20b synthetic, {args.threads} threads, medians of {args.reps} alternating runs; llama.cpp {label}")
    print(f"{'figure':<24}{'gptoss-native':>15}{'llama.cpp':>12}{'ratio':>8}")
    for key in sorted(set(a) | set(b)):
        if key in a and key in b:
            ratio = a[key] / b[key] if b[key] else float("nan")
            print(f"{key:<24}{a[key]:>15.2f}{b[key]:>12.2f}{ratio:>8.2f}")
        elif key.endswith("_greedy") and key[: -len("_greedy")] in b:
            # Greedy decode (append_argmax: lm_head screened, the argmax exact) against
            # llama.cpp's decode, which computes every logit.
            base = b[key[: -len("_greedy")]]
            print(f"{key:<24}{a[key]:>15.2f}{base:>12.2f}{a[key] / base:>8.2f}  (llama.cpp: {key[: -len('_greedy')]})")
        else:
            v = a.get(key, b.get(key))
            who = "gptoss-native" if key in a else "llama.cpp"
            print(f"{key:<24}{v:>15.2f}  ({who} only)")
    print(json.dumps({"ours": a, "llama.cpp": b}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
