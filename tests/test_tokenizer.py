"""o200k_harmony: tokenizer.json vs the tokenizer built from o200k_base.tiktoken vs
openai-harmony's own encoder, and the derived .tiktoken ranks file."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gptoss_native as gn
from gptoss_native.chat import O200K_BASE_SHA256, harmony_encoding, prepare_harmony_vocab
from gptoss_native.tokenizer import tiktoken_ranks_from_tokenizer_json

from .conftest import TOKENIZER_DIR

CORPUS = [
    "Hello, world! How are you today?",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() { println!(\"{}\", 1 + 2); }  // Rust",
    "日本語のテキストと中文字符，还有한국어 문장.",
    "Emoji: 😀👍🏽🇫🇷 and a family 👨‍👩‍👧‍👦 in a row",
    "    leading spaces\t\ttabs\n\n\n\r\nwindows newlines   trailing   ",
    "Numbers: 3.14159, 1,000,000, 2026-11-26, 0x1F600, 12345678901234567890",
    "Ünïcödé àccents, ß, Ω, ﬁ ligature, ½ fractions, ℕ",
    "مرحبا بالعالم — עברית — हिन्दी — ไทย",
    "'s 't 're 've 'm 'll 'd I'm YOU'RE they'VE",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "a" * 300 + " " + "ab" * 150,
    "",
    " ",
    "\u00a0non-breaking\u2003em-space\u200bzero-width",
]


@pytest.fixture(scope="module")
def from_json() -> gn.Tokenizer:
    return gn.Tokenizer.from_file(TOKENIZER_DIR / "tokenizer.json")


@pytest.fixture(scope="module")
def from_tiktoken() -> gn.Tokenizer:
    return gn.Tokenizer.from_file(TOKENIZER_DIR / "o200k_base.tiktoken")


@pytest.fixture(scope="module")
def harmony():
    return harmony_encoding(TOKENIZER_DIR / "tokenizer.json")


def test_both_sources_and_harmony_agree_on_the_corpus(from_json, from_tiktoken, harmony):
    for text in CORPUS:
        a = from_json.encode(text)
        assert a == from_tiktoken.encode(text), text
        assert a == list(harmony.encode(text, allowed_special=set())), text
        assert from_json.decode(a) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_encode_round_trip(from_json, from_tiktoken, s):
    ids = from_json.encode(s, disallowed_special=())
    assert from_json.decode(ids) == s
    assert from_tiktoken.encode(s, disallowed_special=()) == ids


def test_special_tokens(from_json, from_tiktoken):
    for tok in (from_json, from_tiktoken):
        assert tok.token_id("<|return|>") == 200002
        assert tok.token_id("<|call|>") == 200012
        assert tok.token_id("<|start|>") == 200006
        assert tok.token_id("<|reserved_200013|>") == 200013
        assert tok.vocab_size == 201088
    text = "<|start|>user<|message|>hi<|end|>"
    with pytest.raises(ValueError, match="special token"):
        from_json.encode(text)
    ids = from_json.encode(text, allowed_special="all")
    assert ids[0] == 200006 and ids[-1] == 200007
    assert from_json.decode(ids) == text
    # Not allowed, not disallowed: encoded as plain text.
    plain = from_json.encode(text, disallowed_special=())
    assert 200006 not in plain and from_json.decode(plain) == text
    only_start = from_json.encode(text, allowed_special={"<|start|>"}, disallowed_special=())
    assert only_start[0] == 200006 and 200007 not in only_start


def test_derived_tiktoken_file_is_the_official_one(tmp_path):
    data = tiktoken_ranks_from_tokenizer_json(TOKENIZER_DIR / "tokenizer.json")
    assert hashlib.sha256(data).hexdigest() == O200K_BASE_SHA256
    assert data == (TOKENIZER_DIR / "o200k_base.tiktoken").read_bytes()


def test_prepare_harmony_vocab_derives_into_cache_and_respects_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    folder = prepare_harmony_vocab(TOKENIZER_DIR / "tokenizer.json", cache=tmp_path)
    f = folder / "o200k_base.tiktoken"
    assert hashlib.sha256(f.read_bytes()).hexdigest() == O200K_BASE_SHA256
    import os

    assert os.environ["TIKTOKEN_ENCODINGS_BASE"] == str(folder)
    # A user's own setting is kept as it is, and nothing is derived.
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path / "mine"))
    assert prepare_harmony_vocab(TOKENIZER_DIR / "tokenizer.json", cache=tmp_path / "other") == tmp_path / "mine"
    assert not (tmp_path / "other").exists()


def test_wrong_vocabulary_is_refused(tmp_path, monkeypatch):
    import json

    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    doc = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    doc["model"]["vocab"] = {"a": 0, "b": 1}
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(gn.GptOssError, match="not o200k_base"):
        prepare_harmony_vocab(p, cache=tmp_path / "c")


def test_model_tokenizer_from_folder_and_parent(tiny_model_dir, tmp_path):
    m = gn.load(tiny_model_dir)
    assert m.tokenizer.encode("hello") == gn.Tokenizer.from_file(TOKENIZER_DIR / "tokenizer.json").encode("hello")
    # An original/ folder finds tokenizer.json in its parent.
    import shutil

    root = tmp_path / "repo"
    (root / "original").mkdir(parents=True)
    shutil.copy(tiny_model_dir / "tokenizer.json", root / "tokenizer.json")
    assert gn.Tokenizer.for_model(root / "original").vocab_size == 201088
    with pytest.raises(gn.GptOssError, match="no tokenizer.json"):
        gn.Tokenizer.for_model(tmp_path / "empty" / "x")
