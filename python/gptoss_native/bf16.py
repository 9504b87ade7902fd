"""bf16-weight matmul (the attention and lm_head matrices), and bf16 conversions.

numpy has no bfloat16: bf16 tensors are carried as their uint16 bit patterns.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._arrays import as_array

__all__ = ["matmul", "from_float32", "to_float32"]


def from_float32(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    values = as_array("values", values, np.float32)
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(values)
    out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32, exact."""
    bits = as_array("bits", bits, np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def matmul(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *, threads: int | None = None) -> np.ndarray:
    """y[m, out] = x[m, n] @ W[out, n]^T (+ bias), W given as bf16 bits (uint16 [out, n])."""
    x = as_array("x", x, np.float32)
    weight = as_array("weight", weight, np.uint16, ndim=2)
    one_d = x.ndim == 1
    x2 = x.reshape(1, -1) if one_d else x
    if x2.ndim != 2 or x2.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be [m, {weight.shape[1]}] to match the weight, got shape {x.shape}")
    if bias is not None:
        bias = as_array("bias", bias, np.float32, ndim=1)
    y = _core.bf16_matmul(x2, weight, bias, threads)
    return y[0] if one_d else y
