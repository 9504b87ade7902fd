"""MXFP4 kernels: dequantize, quantize and matmul (Rust, SIMD, GIL released).

MXFP4 stores 32 FP4 (E2M1) values per block as 16 bytes (low nibble = even element)
plus one E8M0 scale byte (2^(byte-127); 255 is NaN).
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._arrays import as_array

__all__ = ["dequantize", "quantize", "matmul", "PRECISIONS"]

#: Activation precisions `matmul` accepts.
PRECISIONS = ("f32", "int16", "int8")


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """blocks uint8 [..., G, 16], scales uint8 [..., G] -> float32 [..., G*32], exact."""
    blocks = as_array("blocks", blocks, np.uint8)
    scales = as_array("scales", scales, np.uint8)
    if blocks.ndim < 2 or blocks.shape[-1] != 16:
        raise ValueError(f"blocks must be [..., G, 16] (last dim 16), got shape {blocks.shape}")
    if blocks.shape[:-1] != scales.shape:
        raise ValueError(
            f"scales shape {scales.shape} must equal blocks shape without its last dim {blocks.shape[:-1]}"
        )
    return _core.mxfp4_dequantize(blocks, scales)


def quantize(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [..., n] (n % 32 == 0) -> (blocks uint8 [..., n/32, 16], scales uint8 [..., n/32]).

    OCP rules: per block the shared exponent is floor(log2(amax)) - 2, values round to
    the nearest E2M1 value with ties to even, saturating at +-6; all-zero blocks get 0.
    """
    weights = as_array("weights", weights, np.float32)
    if weights.ndim < 1 or weights.shape[-1] % 32 != 0:
        raise ValueError(f"last dimension must be a multiple of 32, got shape {weights.shape}")
    return _core.mxfp4_quantize(weights)


def matmul(
    x: np.ndarray,
    blocks: np.ndarray,
    scales: np.ndarray,
    bias: np.ndarray | None = None,
    precision: str = "f32",
    *,
    threads: int | None = None,
) -> np.ndarray:
    """y[m, out] = x[m, n] @ W[out, n]^T (+ bias[out]) with W in MXFP4.

    `blocks` is uint8 [out, n/32, 16] and `scales` uint8 [out, n/32]. A 1-D `x` [n]
    gives a 1-D result [out]. `precision="f32"` keeps f32 activations: the error is
    within ~1e-7 (tested: 1e-5) of sum|x||w|. `precision="int8"` quantizes each 32-value
    block of x to int8 (d = amax/127) for every m on x86 and the scalar path, and on
    aarch64 for m <= 4 and, with dotprod, any m (without it larger m keep f32): the error
    is at most sum over blocks of amax_b/254 * sum|w_b|, plus f32 rounding.
    `precision="int16"` adds a second int8 limb for the remainder (x = d (q + q2/256)):
    the same bound with amax_b/65024. Blocks with amax below 2^-100 quantize to zero (adding at most
    amax_b * sum|w_b| each).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    x = as_array("x", x, np.float32)
    blocks = as_array("blocks", blocks, np.uint8, ndim=3)
    scales = as_array("scales", scales, np.uint8, ndim=2)
    if blocks.shape[2] != 16:
        raise ValueError(f"blocks must be [out, n/32, 16] (last dim 16), got shape {blocks.shape}")
    if scales.shape != blocks.shape[:2]:
        raise ValueError(f"scales must be {blocks.shape[:2]} to match blocks, got {scales.shape}")
    n = blocks.shape[1] * 32
    one_d = x.ndim == 1
    x2 = x.reshape(1, -1) if one_d else x
    if x2.ndim != 2 or x2.shape[1] != n:
        raise ValueError(f"x must be [m, {n}] to match the weight (n = 32 * {blocks.shape[1]}), got shape {x.shape}")
    if bias is not None:
        bias = as_array("bias", bias, np.float32, ndim=1)
        if bias.shape[0] != blocks.shape[0]:
            raise ValueError(f"bias must be [{blocks.shape[0]}], got shape {bias.shape}")
    y = _core.mxfp4_matmul(x2, blocks, scales, bias, threads, None, precision)
    return y[0] if one_d else y
