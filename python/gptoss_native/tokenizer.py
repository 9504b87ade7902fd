"""The o200k_harmony tokenizer: Hugging Face `tokenizers` over tokenizer.json, or built
from an `o200k_base.tiktoken` ranks file (the o200k_base ranks plus harmony's specials).

Also the other direction: the `.tiktoken` ranks file derived from a tokenizer.json, which
`openai-harmony` needs to work offline (see `chat.py`).
"""

from __future__ import annotations

import base64
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import AbstractSet, Iterable, Literal, Sequence

from ._errors import GptOssError

__all__ = [
    "Tokenizer",
    "HARMONY_SPECIAL_TOKENS",
    "harmony_tokenizer_json_from_tiktoken",
    "tiktoken_ranks_from_tokenizer_json",
]

#: o200k_base's split pattern (as in tiktoken and the published tokenizer.json).
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

_NAMED_SPECIALS = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
    200018: "<|endofprompt|>",
}

#: id -> text of every o200k_harmony special token (199998..201087).
HARMONY_SPECIAL_TOKENS: dict[int, str] = {
    i: _NAMED_SPECIALS.get(i, f"<|reserved_{i}|>") for i in range(199998, 201088)
}


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _read_tiktoken(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except Exception:
            raise GptOssError(f"{path}:{lineno}: not a tiktoken ranks line: {line[:60]!r}") from None
    if not ranks:
        raise GptOssError(f"{path}: empty tiktoken ranks file")
    return ranks


def harmony_tokenizer_json_from_tiktoken(path: str | os.PathLike[str]) -> str:
    """Build o200k_harmony's tokenizer.json from an o200k_base `.tiktoken` file."""
    ranks = _read_tiktoken(Path(path))
    b2u = _bytes_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {enc(tok): rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    # BPE merges: every way to split a token into two tokens that merge into it, ordered
    # by the rank of the result (tiktoken merges the lowest-ranked pair first).
    merges: list[tuple[int, int, int, str, str]] = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            a, b = tok[:i], tok[i:]
            ra, rb = ranks.get(a), ranks.get(b)
            if ra is not None and rb is not None:
                merges.append((rank, ra, rb, enc(a), enc(b)))
    merges.sort()
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, t in HARMONY_SPECIAL_TOKENS.items()
    ]
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": [[a, b] for _, _, _, a, b in merges],
        },
    }
    return json.dumps(doc, ensure_ascii=False)


def tiktoken_ranks_from_tokenizer_json(path: str | os.PathLike[str]) -> bytes:
    """The o200k_base `.tiktoken` ranks file (base64 token, space, rank; one per line)
    derived from a byte-level BPE tokenizer.json; special tokens are left out."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        vocab: dict[str, int] = doc["model"]["vocab"]
    except Exception as e:
        raise GptOssError(f"{path}: not a tokenizer.json with a BPE vocabulary: {e}") from None
    specials = {t["id"] for t in doc.get("added_tokens", [])}
    u2b = {c: b for b, c in _bytes_to_unicode().items()}
    lines = []
    for tok, rank in sorted(vocab.items(), key=lambda kv: kv[1]):
        if rank in specials:
            continue
        try:
            raw = bytes(u2b[c] for c in tok)
        except KeyError:
            raise GptOssError(f"{path}: token {tok!r} is not byte-level BPE") from None
        lines.append(base64.b64encode(raw) + b" " + str(rank).encode())
    return b"\n".join(lines) + b"\n"


class Tokenizer:
    """o200k_harmony: `encode`, `decode`, and the special token ids by name."""

    def __init__(self, backend, source: Path):
        self._tok = backend
        self.source = source
        self.special_tokens: dict[str, int] = {
            t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special
        }
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"<gptoss_native.Tokenizer {str(self.source)!r}: {self.vocab_size} tokens>"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Tokenizer":
        """A tokenizer.json, or an o200k_base `.tiktoken` file (o200k_harmony is built from it)."""
        from tokenizers import Tokenizer as HFTokenizer

        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "tokenizer.json" if (p / "tokenizer.json").is_file() else p / "o200k_base.tiktoken"
        if not p.is_file():
            raise GptOssError(f"tokenizer file {p} does not exist")
        try:
            if p.suffix == ".tiktoken":
                return cls(HFTokenizer.from_str(harmony_tokenizer_json_from_tiktoken(p)), p)
            return cls(HFTokenizer.from_file(str(p)), p)
        except GptOssError:
            raise
        except Exception as e:
            raise GptOssError(f"{p}: cannot load tokenizer: {e}") from None

    @classmethod
    def for_model(cls, model_dir: str | os.PathLike[str]) -> "Tokenizer":
        """tokenizer.json beside the checkpoint, or in the parent folder (for `original/`)."""
        d = Path(model_dir)
        for cand in (d / "tokenizer.json", d.parent / "tokenizer.json"):
            if cand.is_file():
                return cls.from_file(cand)
        raise GptOssError(
            f"no tokenizer.json in {d} or {d.parent}; set model.tokenizer = "
            "gn.Tokenizer.from_file('path/to/tokenizer.json' or 'o200k_base.tiktoken')"
        )

    def token_id(self, name: str) -> int:
        """The id of a special token such as '<|return|>'."""
        try:
            return self.special_tokens[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token of this tokenizer") from None

    def encode(
        self,
        text: str,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | AbstractSet[str] = "all",
    ) -> list[int]:
        """Token ids of `text`. As in tiktoken: special tokens in `allowed_special` (or
        "all") are encoded as such; any other special token text found raises ValueError
        (unless `disallowed_special` is an empty set, when it is encoded as plain text)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        disallowed = (set(self.special_tokens) - allowed) if disallowed_special == "all" else set(disallowed_special)
        out: list[int] = []
        pos = 0
        for start, end, name in self._special_spans(text):
            if name in disallowed:
                raise ValueError(
                    f"text contains the special token {name!r}; pass allowed_special={{{name!r}}} "
                    "to encode it as a special token, or disallowed_special=() to encode it as text"
                )
            if name not in allowed:
                continue
            out += self._encode_plain(text[pos:start])
            out.append(self.special_tokens[name])
            pos = end
        out += self._encode_plain(text[pos:])
        return out

    def _special_spans(self, text: str) -> Iterable[tuple[int, int, str]]:
        if "<|" not in text:
            return
        i = 0
        while True:
            i = text.find("<|", i)
            if i < 0:
                return
            j = text.find("|>", i + 2)
            if j < 0:
                return
            name = text[i : j + 2]
            if name in self.special_tokens:
                yield i, j + 2, name
                i = j + 2
            else:
                i += 2

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        # Special token texts inside are plain text here: split them so the backend
        # cannot match them as added tokens.
        if "<|" in text and any(s in text for s in self.special_tokens):
            parts: list[int] = []
            cut = text.find("<|")
            parts += self._tok.encode(text[:cut], add_special_tokens=False).ids if cut else []
            parts += self._tok.encode("<", add_special_tokens=False).ids
            return parts + self._encode_plain(text[cut + 1 :])
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special tokens included as their text)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
