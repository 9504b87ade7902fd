"""The command line: demo, synth, generate (subprocesses, as users run them)."""

from __future__ import annotations

import os
import subprocess

from .conftest import PYTHON, TOKENIZER_DIR


def run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([*PYTHON, "-m", "gptoss_native", *args], capture_output=True, text=True, env=e, timeout=timeout)


def test_demo_with_tokenizer(tmp_path):
    env = {"GPTOSS_NATIVE_CACHE": str(tmp_path / "cache"), "TIKTOKEN_ENCODINGS_BASE": ""}
    r = run("demo", "--tokenizer", str(TOKENIZER_DIR), "--new-tokens", "4", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "kernel self-check" in out and "FAILED" not in out
    assert "weights are random" in out and "Rendered the harmony prompt" in out
    assert "tok/s" in out
    # Cached: a second run does not synthesize again.
    r2 = run("demo", "--tokenizer", str(TOKENIZER_DIR / "o200k_base.tiktoken"), "--new-tokens", "2", env=env)
    assert r2.returncode == 0, r2.stderr
    assert "Synthesizing" in out and "Synthesizing" not in r2.stdout


def test_demo_without_tokenizer_runs_token_level(tmp_path):
    env = {"GPTOSS_NATIVE_CACHE": str(tmp_path / "cache"), "TIKTOKEN_ENCODINGS_BASE": "", "HF_HOME": str(tmp_path / "hf")}
    r = run("demo", "--new-tokens", "3", env=env)
    assert r.returncode == 0, r.stderr
    assert "No tokenizer found" in r.stdout and "--tokenizer PATH" in r.stdout
    assert "greedy decode 3 tokens" in r.stdout


def test_generate_and_errors(tiny_model_dir, tmp_path):
    env = {"GPTOSS_NATIVE_CACHE": str(tmp_path / "cache")}
    r = run("generate", str(tiny_model_dir), "Hello", "--max-new-tokens", "5", "--seed", "1", "--stats", env=env)
    assert r.returncode == 0, r.stderr
    assert "5 completion tokens" in r.stderr
    bad = run("generate", str(tmp_path / "missing"), "Hello", env=env)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "CheckpointError" in bad.stderr and "Traceback" not in bad.stderr


def test_synth_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    r = run("synth", str(tmp_path / "x"), "--preset", "tiny")
    assert r.returncode == 1 and "not empty" in r.stderr
    assert (tmp_path / "x" / "f").read_text() == "keep me"


def test_chat_repl_commands(tiny_model_dir, tmp_path):
    env = dict(os.environ, GPTOSS_NATIVE_CACHE=str(tmp_path / "cache"))
    script = "Hello there\n/effort high\n/effort max\nAnother question\n/reset\n/quit\n"
    r = subprocess.run(
        [*PYTHON, "-m", "gptoss_native", "chat", str(tiny_model_dir), "--max-new-tokens", "4", "--seed", "1",
         "--show-reasoning"],
        input=script, capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "(reasoning effort: high)" in out and "usage: /effort low|medium|high" in out
    assert "(conversation reset)" in out


def test_bench_json_every_precision():
    import json

    from .conftest import FIXTURES

    for precision in ("auto", "f32", "q8"):
        r = run("bench", str(FIXTURES / "tiny-a"), "--prompt-tokens", "20", "--new-tokens", "3", "--depth", "0",
                "--precision", precision, "--json")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["precision"] == precision
        assert res["pp20_tok_s"] > 0 and res["tg3_tok_s"] > 0
        # q8 reads 34 bytes per 32 attention/lm_head weights instead of 64.
        if precision == "q8":
            assert res["decode_weight_gb_per_token"] < q8_ref["decode_weight_gb_per_token"]
        else:
            q8_ref = res
    r = run("bench", str(FIXTURES / "tiny-a"), "--precision", "fp8")
    assert r.returncode != 0 and "precision" in r.stderr


def test_bench_several_prompt_lengths():
    import json

    from .conftest import FIXTURES

    r = run("bench", str(FIXTURES / "tiny-a"), "--prompt-tokens", "3,8,20", "--new-tokens", "0", "--depth", "0",
            "--no-bandwidth", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert all(res[f"pp{n}_tok_s"] > 0 for n in (3, 8, 20))
    assert not any(k.startswith("tg") and k.endswith("_tok_s") for k in res)
    r = run("bench", str(FIXTURES / "tiny-a"), "--prompt-tokens", "16,x")
    assert r.returncode != 0 and "--prompt-tokens" in r.stderr and "'16,x'" in r.stderr
