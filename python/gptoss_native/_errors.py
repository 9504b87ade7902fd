"""The exception hierarchy (the classes are created in the Rust bindings)."""

from ._core import CheckpointError, ContextLengthError, GptOssError

__all__ = ["GptOssError", "CheckpointError", "ContextLengthError"]
