"""Loading a gpt-oss checkpoint, the raw forward pass and KV-cache sessions."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from . import _core
from ._errors import CheckpointError

__all__ = ["load", "Model", "Session", "PRECISIONS", "resolve_model_path"]

#: `precision` values `load` accepts.
PRECISIONS = ("auto", "f32", "q8")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _ids(token_ids: Sequence[int] | np.ndarray) -> list[int]:
    if isinstance(token_ids, np.ndarray):
        if token_ids.ndim != 1 or not np.issubdtype(token_ids.dtype, np.integer):
            raise TypeError(f"token ids must be a 1-D integer array, got {token_ids.dtype} {token_ids.shape}")
        return token_ids.astype(np.int64).tolist()
    if isinstance(token_ids, (str, bytes)):
        raise TypeError("token ids must be a sequence of ints, not a string (encode it with model.tokenizer)")
    out = list(token_ids)
    for t in out:
        if not isinstance(t, (int, np.integer)) or isinstance(t, bool):
            raise TypeError(f"token ids must be ints, got {type(t).__name__}")
    return [int(t) for t in out]


def resolve_model_path(path_or_repo_id: str | os.PathLike[str]) -> Path:
    """A model folder on disk, or a hub id resolved through the Hugging Face cache.

    A hub id is looked up in the local cache first; it is downloaded only when
    `huggingface_hub` is installed and the user asked for a hub id (as transformers does).
    """
    p = Path(path_or_repo_id).expanduser()
    if p.is_dir():
        return p
    if p.is_file():
        raise CheckpointError(f"{p}: expected a model folder (with config.json), got a file")
    text = str(path_or_repo_id)
    if not _HUB_ID.match(text):
        raise CheckpointError(f"{text}: no such folder (and not a hub id like 'openai/gpt-oss-20b')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{text}: no such folder; to load it as a hub id, install huggingface_hub "
            "(pip install huggingface_hub) or pass the path of a downloaded model folder"
        ) from None
    patterns = ["*.json", "*.safetensors", "*.jinja"]
    try:
        return Path(snapshot_download(text, local_files_only=True, allow_patterns=patterns))
    except Exception:
        pass
    try:
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, auth...
        raise CheckpointError(f"{text}: not in the Hugging Face cache and could not be downloaded: {e}") from None


class Session:
    """A KV cache and the tokens it holds. Feed tokens with `append`; roll back with `truncate`."""

    def __init__(self, model: "Model", core: _core.CoreSession):
        self.model = model
        self._core = core

    def append(self, token_ids: Sequence[int] | np.ndarray, logits: str | None = "last") -> np.ndarray | None:
        """Feed `token_ids` after the cached ones.

        Returns float32 logits [1, vocab] for `logits="last"`, [len(token_ids), vocab] for
        `"all"`, or None for `None`/`"none"` (lm_head is then skipped entirely).
        Raises ContextLengthError past `max_context`.
        """
        return self._core.append(_ids(token_ids), logits)

    def append_argmax(self, token_ids: Sequence[int] | np.ndarray) -> int:
        """Feed `token_ids` (at least one) and return the id of the last position's largest
        logit (the first on ties): `int(np.argmax(self.append(token_ids)[0]))`, for greedy
        decoding, without computing every logit.

        Where lm_head is bf16 (not `precision="q8"`), a Q8 copy of it (0.62 GB on
        gpt-oss-20b, made on the first call) screens the vocabulary, and only the rows
        that can still be the largest are computed exactly; the answer is exact, not an
        approximation. Raises ContextLengthError past `max_context`.
        """
        return self._core.append_argmax(_ids(token_ids))

    def truncate(self, n: int) -> None:
        """Keep the first `n` tokens (any n <= len(self))."""
        self._core.truncate(int(n))

    def reset(self) -> None:
        """Empty the cache (== truncate(0))."""
        self._core.reset()

    def __len__(self) -> int:
        return len(self._core)

    @property
    def tokens(self) -> list[int]:
        """The token ids in the cache."""
        return list(self._core.tokens)

    @property
    def max_context(self) -> int:
        return self._core.max_context


class Model:
    """A loaded gpt-oss model. Thread-safe: any number of sessions may run at once."""

    def __init__(self, core: _core.CoreModel, path: Path, precision: str):
        self._core = core
        self.path = path
        self.precision = precision
        self.config = SimpleNamespace(**json.loads(core.config_json()))
        self._tokenizer = None
        self._chat_lock = threading.Lock()
        self._chat_sess: Session | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<gptoss_native.Model {str(self.path)!r}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"{c.num_local_experts} experts, vocab {c.vocab_size}, kernels={self.kernels}, threads={self.threads}>"
        )

    @property
    def kernels(self) -> str:
        """The kernel path in use (scalar, avx2, avx512)."""
        return self._core.kernels

    @property
    def threads(self) -> int:
        return self._core.threads

    @property
    def max_context(self) -> int:
        """Tokens one session's KV cache holds."""
        return self._core.max_context

    @property
    def tokenizer(self):
        """The model's tokenizer (tokenizer.json beside the checkpoint, or its parent for `original/`)."""
        if self._tokenizer is None:
            from .tokenizer import Tokenizer

            self._tokenizer = Tokenizer.for_model(self.path)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    def forward(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits of every position on a fresh context: float32 [len(token_ids), vocab]."""
        return self._core.forward(_ids(token_ids))

    def hidden_states(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Residual stream after the embedding and after each layer (before the final
        norm): float32 [layers + 1, len(token_ids), hidden]."""
        return self._core.hidden_states(_ids(token_ids))

    def router_logits(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Every layer's router logits on a fresh context: float32 [layers, len, experts]."""
        return self._core.router_logits(_ids(token_ids))

    def warm(self) -> int:
        """Read the whole checkpoint once so it sits in the page cache (before timing or
        serving); returns the bytes read."""
        return self._core.warm()

    def session(self) -> Session:
        """A new session with its own KV cache (up to `max_context` tokens)."""
        return Session(self, self._core.session())

    def step(self, sessions: Sequence[Session], token_ids: Sequence[int]) -> np.ndarray:
        """Batched decode: advance each session by its token in one pass that reads every
        weight once for all of them. Returns float32 logits [len(sessions), vocab]."""
        if len(sessions) != len(token_ids):
            raise ValueError(f"{len(sessions)} sessions but {len(token_ids)} token ids")
        for s in sessions:
            if not isinstance(s, Session) or s.model is not self:
                raise ValueError("every session must be a Session of this model")
        if len({id(s) for s in sessions}) != len(sessions):
            raise ValueError("a session appears twice in one step")
        return self._core.step([s._core for s in sessions], _ids(token_ids))

    def _chat_session(self) -> Session:
        """The session `chat` keeps across turns (callers hold `_chat_lock`)."""
        if self._chat_sess is None:
            self._chat_sess = self.session()
        return self._chat_sess

    def tokenizer_json_path(self) -> Path | None:
        """The tokenizer.json harmony's vocabulary is derived from (None if there is none)."""
        src = getattr(self.tokenizer, "source", None) if self._tokenizer is not None else None
        if src is not None and Path(src).suffix == ".json":
            return Path(src)
        for cand in (self.path / "tokenizer.json", self.path.parent / "tokenizer.json"):
            if cand.is_file():
                return cand
        return None

    def generate(self, prompt_ids: Sequence[int] | np.ndarray, **kwargs):
        """New token ids after `prompt_ids`: see `gptoss_native.generate.generate` for the
        sampling controls (temperature 0 is greedy; a fixed seed repeats the same tokens)."""
        from .generate import generate

        return generate(self, prompt_ids, **kwargs)

    def chat(self, messages, **kwargs):
        """One assistant turn in the harmony format (see `gptoss_native.generate.chat`).
        The KV cache is kept between calls and its common prefix with the new prompt reused."""
        from .generate import chat

        return chat(self, messages, **kwargs)


def load(
    path_or_repo_id: str | os.PathLike[str],
    *,
    threads: int | None = None,
    max_context: int | None = None,
    precision: str = "auto",
) -> Model:
    """Load a gpt-oss checkpoint (memory-mapped; the MXFP4 experts are never copied).

    `path_or_repo_id`: a Hugging Face layout folder, an `original/` folder, or a hub id.
    `threads`: kernel threads (default: all cores). `max_context`: tokens per session
    (default: the config's max_position_embeddings). `precision`: "auto" (the default),
    "f32" (f32 activations everywhere: the reference-exact mode), or "q8" (opt-in: "auto"
    with the attention and lm_head matrices quantized at load to int8 with a bf16 scale
    per 32 values, read with 16-bit activations: 2.57 instead of 3.71 GB of weights per
    decoded token on gpt-oss-20b, at the fidelity stated in the README).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if max_context is not None and (not isinstance(max_context, int) or max_context < 1):
        raise ValueError(f"max_context must be a positive int, got {max_context!r}")
    path = resolve_model_path(path_or_repo_id)
    # "auto": 16-bit (two int8 limbs) activations for the MXFP4 expert matmuls (decode
    # GEMVs, and prefill GEMMs on AVX-512 VNNI); the router, attention and lm_head keep
    # f32 activations.
    # "q8": as "auto", plus Q8 copies of the attention and lm_head matrices (held in
    # memory; their bf16 pages are unmapped).
    core = _core.load_model(
        str(path), threads, max_context, None, "f32" if precision == "f32" else "int16", precision == "q8"
    )
    return Model(core, path, precision)
