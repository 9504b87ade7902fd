"""Argument checks shared by the kernel wrappers: clear TypeError/ValueError messages."""

from __future__ import annotations

import numpy as np


def as_array(name: str, value: object, dtype: np.dtype | type, ndim: int | None = None) -> np.ndarray:
    """`value` as a C-contiguous array of exactly `dtype` (no silent casts)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of {np.dtype(dtype)}, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {value.shape}")
    return np.ascontiguousarray(value)
