"""gptoss-native: run OpenAI's gpt-oss models from their native MXFP4 checkpoints.

    import gptoss_native as gn
    model = gn.load("path/to/gpt-oss-20b")
"""

from __future__ import annotations

from . import bf16, mxfp4
from ._core import __version__
from ._errors import CheckpointError, ContextLengthError, GptOssError
from .chat import ChatEvent, ChatResponse, parse_completion, render_chat
from .model import Model, Session, load
from .tokenizer import Tokenizer

__all__ = [
    "__version__",
    "GptOssError",
    "CheckpointError",
    "ContextLengthError",
    "cpu_features",
    "mxfp4",
    "bf16",
    "load",
    "Model",
    "Session",
    "Tokenizer",
    "render_chat",
    "parse_completion",
    "ChatResponse",
    "ChatEvent",
]


def cpu_features() -> dict:
    """Which kernel path runs ("kernels"), why ("reason"), and the CPU features behind it."""
    from ._core import cpu_features as _cpu_features

    return _cpu_features()
