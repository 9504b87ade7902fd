"""MXFP4 kernels: the oracle, every byte and scale value, every SIMD path, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load_file

import gptoss_native as gn
from gptoss_native import _core, mxfp4

from .conftest import FIXTURES, kernel_paths

CASES = load_file(str(FIXTURES / "mxfp4" / "mxfp4_cases.safetensors"))
CASE_NAMES = sorted({k.split(".")[0] for k in CASES})


@pytest.mark.parametrize("case", CASE_NAMES)
def test_dequantize_equals_oracle_bit_for_bit(case):
    got = mxfp4.dequantize(CASES[f"{case}.blocks"], CASES[f"{case}.scales"])
    want = CASES[f"{case}.dequant"]
    assert got.dtype == np.float32 and got.shape == want.shape
    # Bitwise: covers -0.0, subnormals (scale bytes 0 and 1), +-inf (scale 254).
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(got.transpose(0, 2, 1), CASES[f"{case}.dequant_hf_layout"])


def test_edge_case_covers_scales_0_1_254():
    scales = CASES["edge.scales"]
    assert {0, 1, 254} <= set(np.unique(scales).tolist())


def test_scale_255_is_nan():
    blocks = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = mxfp4.dequantize(blocks, np.full(16, 255, np.uint8))
    assert np.isnan(out).all()


def _reference_dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """An independent numpy decoder (float64, rounded to float32 at the end)."""
    table = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float64)
    lo, hi = table[blocks & 0x0F], table[blocks >> 4]
    vals = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    e = scales.astype(np.float64) - 127
    with np.errstate(over="ignore", invalid="ignore"):
        out = (vals * np.exp2(e)[..., None]).astype(np.float32)
    out[scales == 255] = np.nan
    return out.reshape(*scales.shape[:-1], scales.shape[-1] * 32)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 6),
    g=st.integers(1, 12),
    data=st.data(),
)
def test_dequantize_every_byte_and_scale(rows, g, data):
    blocks = data.draw(hnp.arrays(np.uint8, (rows, g, 16)))
    scales = data.draw(hnp.arrays(np.uint8, (rows, g)))
    got = mxfp4.dequantize(blocks, scales)
    want = _reference_dequantize(blocks, scales)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got.view(np.uint32)[ok], want.view(np.uint32)[ok])


def test_dequantize_all_256_scales_with_all_256_bytes():
    blocks = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16), (256, 1, 1))  # [256, 16, 16]
    scales = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 16, axis=1)  # [256, 16]
    got = mxfp4.dequantize(blocks, scales)
    want = _reference_dequantize(blocks, scales)
    ok = ~np.isnan(want)
    assert np.isnan(got[~ok]).all()
    np.testing.assert_array_equal(got.view(np.uint32)[ok], want.view(np.uint32)[ok])


# Scales 0..252 keep every weight finite (6 * 2^126 overflows f32): the matmul bound
# sum|x||w| is meaningless with infinite weights.
FINITE_SCALES = st.integers(0, 252)
# For matmul the sums must stay finite too: 2^(200-127) * 6 * 4 * 32 * 12 blocks << f32 max.
# Scales 0 and 1 (subnormal weights) stay in.
MATMUL_SCALES = st.integers(0, 200)


def _matmul_case(draw, m, out, g):
    blocks = draw(hnp.arrays(np.uint8, (out, g, 16)))
    scales = draw(hnp.arrays(np.uint8, (out, g), elements=MATMUL_SCALES))
    x = draw(hnp.arrays(np.float32, (m, g * 32), elements=st.floats(-4, 4, width=32)))
    return x, blocks, scales


def _matmul_reference(x, blocks, scales, bias, rel=1e-5):
    """The exact result in float64 and the f32 matmul's bound on each element's error."""
    w = mxfp4.dequantize(blocks, scales).astype(np.float64)
    x64 = x.astype(np.float64)
    want = x64 @ w.T
    mag = np.abs(x64) @ np.abs(w).T
    if bias is not None:
        want = want + bias
        mag = mag + np.abs(bias)
    # Underflow floor: the kernels sum x * code per block and apply the block's scale
    # (a power of two) after, so a product lost below f32's smallest subnormal (2^-149)
    # comes back multiplied by that scale: n * 2^-149 * max(1, largest scale).
    top = max(1.0, float(np.exp2(scales.astype(np.float64).max() - 127)))
    return want, rel * mag + x.shape[1] * 2.0**-149 * top


def _check_matmul(x, blocks, scales, bias, got, rel=1e-5):
    want, bound = _matmul_reference(x, blocks, scales, bias, rel)
    excess = np.abs(got - want) - bound
    assert np.all(excess <= 0), (float(excess.max()), np.unravel_index(excess.argmax(), excess.shape), got.ravel()[excess.argmax()], want.ravel()[excess.argmax()], bound.ravel()[excess.argmax()])


@settings(max_examples=120, deadline=None)
@given(m=st.integers(1, 9), out=st.integers(1, 40), g=st.integers(1, 12), data=st.data())
def test_matmul_f32_against_float64_every_path(m, out, g, data):
    x, blocks, scales = _matmul_case(data.draw, m, out, g)
    bias = data.draw(hnp.arrays(np.float32, (out,), elements=st.floats(-2, 2, width=32))) if data.draw(st.booleans()) else None
    results = {}
    for path in kernel_paths():
        got = _core.mxfp4_matmul(x, blocks, scales, bias, None, path)
        _check_matmul(x, blocks, scales, bias, got)
        results[path] = got
    # Every SIMD path against the scalar twin: each is within _check_matmul's bound of the
    # exact result, so two differ by at most twice it (bias included: adding a bias of ~2
    # to a dot product of ~1e-3 summed in another order can round to the neighbouring float).
    _, bound = _matmul_reference(x, blocks, scales, bias)
    for path, got in results.items():
        assert np.all(np.abs(got - results["scalar"]) <= 2 * bound), path

@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 97), (3, 2880, 90), (5, 7, 97), (1, 2880, 90)])
def test_matmul_odd_and_real_shapes(kernels, shape):
    m, out, g = shape
    rng = np.random.default_rng(sum(shape))
    blocks = rng.integers(0, 256, size=(out, g, 16), dtype=np.uint8)
    scales = rng.integers(100, 140, size=(out, g), dtype=np.uint8)
    x = rng.standard_normal((m, g * 32), dtype=np.float32)
    bias = rng.standard_normal(out, dtype=np.float32)
    got = mxfp4.matmul(x, blocks, scales, bias)
    assert got.shape == (m, out)
    _check_matmul(x, blocks, scales, bias, got)


def test_matmul_one_d_and_threads():
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 256, size=(33, 3, 16), dtype=np.uint8)
    scales = rng.integers(120, 130, size=(33, 3), dtype=np.uint8)
    x = rng.standard_normal(96, dtype=np.float32)
    y1 = mxfp4.matmul(x, blocks, scales, threads=1)
    y2 = mxfp4.matmul(x[None, :], blocks, scales, threads=2)[0]
    assert y1.shape == (33,)
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-6)


@settings(max_examples=120, deadline=None)
@given(m=st.integers(1, 40), out=st.integers(1, 24), g=st.integers(1, 14),
       data=st.data(), precision=st.sampled_from([("int8", 254.0), ("int16", 65024.0)]))
def test_matmul_int8_int16_within_their_stated_bounds_every_path(m, out, g, data, precision):
    """|err| <= sum_b amax_b/254 (int8) or /65024 (int16) * sum|w_b| (+ 1e-5 sum|x||w|):
    the quantized GEMV (up to 11 activation rows on AVX-512 VNNI, 8 on AVX2, 4 elsewhere,
    in chunks of at most 4) and past that the quantized packed GEMM (NEON without dotprod
    keeps f32 activations there, within the same bound)."""
    name, per = precision
    x, blocks, scales = _matmul_case(data.draw, m, out, g)
    w = mxfp4.dequantize(blocks, scales).astype(np.float64)
    x64 = x.astype(np.float64)
    amax = np.abs(x64).reshape(m, g, 32).max(-1)  # [m, g]
    wsum = np.abs(w).reshape(out, g, 32).sum(-1)  # [out, g]
    top = max(1.0, float(np.exp2(scales.astype(np.float64).max() - 127)))  # underflow floor, as above
    tiny = np.where(amax < 2.0**-100, amax, 0.0)  # such blocks quantize to zero (stated)
    bound = amax / per @ wsum.T + tiny @ wsum.T + 1e-5 * (np.abs(x64) @ np.abs(w).T) + g * 32 * 2.0**-149 * top
    want = x64 @ w.T
    results = {}
    for path in kernel_paths():
        got = _core.mxfp4_matmul(x, blocks, scales, None, None, path, name)
        assert np.all(np.abs(got - want) <= bound), path
        results[path] = got
    same = {p: r for p, r in results.items() if m <= 4 or p != "neon"}
    for got in same.values():  # same integer sums on those paths: f32 rounding only
        assert np.all(np.abs(got - results["scalar"]) <= 1e-5 * (np.abs(x64) @ np.abs(w).T) + g * 64 * 2.0**-149 * top)


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 5), g=st.integers(1, 8), data=st.data())
def test_quantize_dequantize_reproduces_values(rows, g, data):
    blocks = data.draw(hnp.arrays(np.uint8, (rows, g, 16)))
    scales = data.draw(hnp.arrays(np.uint8, (rows, g), elements=FINITE_SCALES))
    vals = mxfp4.dequantize(blocks, scales)
    b2, s2 = mxfp4.quantize(vals)
    assert b2.shape == blocks.shape and s2.shape == scales.shape
    np.testing.assert_array_equal(mxfp4.dequantize(b2, s2), vals)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), rows=st.integers(1, 4), g=st.integers(1, 4))
def test_quantize_follows_ocp_rules(data, rows, g):
    x = data.draw(hnp.arrays(np.float32, (rows, g * 32), elements=st.floats(-1e6, 1e6, width=32)))
    blocks, scales = mxfp4.quantize(x)
    xb = x.reshape(rows, g, 32).astype(np.float64)
    amax = np.abs(xb).max(axis=-1)
    for r in range(rows):
        for b in range(g):
            if amax[r, b] == 0:
                assert scales[r, b] == 0 and not blocks[r, b].any()
                continue
            e = int(np.clip(np.floor(np.log2(amax[r, b])) - 2, -127, 127))
            assert scales[r, b] == e + 127
    # Each value is the nearest representable one (ties to even code): error <= half a step.
    deq = mxfp4.dequantize(blocks, scales).reshape(rows, g, 32).astype(np.float64)
    step = np.exp2(scales.astype(np.float64) - 127)[..., None]
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    q = np.abs(xb) / step
    nearest = grid[np.abs(q[..., None] - grid).argmin(-1)]
    dist_best = np.abs(q - nearest)
    dist_got = np.abs(q - np.abs(deq) / step)
    np.testing.assert_allclose(dist_got, dist_best, atol=1e-12)


def test_quantize_ties_to_even():
    x = np.zeros(32, np.float32)
    x[:8] = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    blocks, scales = mxfp4.quantize(x)
    assert scales[0] == 127
    np.testing.assert_array_equal(mxfp4.dequantize(blocks, scales)[:8], [6, 0, 1, 1, 2, 2, 4, 4])


def test_bf16_matmul_every_path(kernels):
    rng = np.random.default_rng(9)
    for m, out, n in [(1, 5, 17), (4, 9, 96), (7, 33, 130)]:
        w = gn.bf16.from_float32(rng.standard_normal((out, n), dtype=np.float32))
        x = rng.standard_normal((m, n), dtype=np.float32)
        got = gn.bf16.matmul(x, w)
        wf = gn.bf16.to_float32(w).astype(np.float64)
        want = x.astype(np.float64) @ wf.T
        assert np.all(np.abs(got - want) <= 1e-5 * (np.abs(x) @ np.abs(wf).T))


def test_forced_path_is_reported_and_bad_path_raises(monkeypatch):
    monkeypatch.setenv("GPTOSS_NATIVE_KERNELS", "scalar")
    f = gn.cpu_features()
    assert f["kernels"] == "scalar" and "GPTOSS_NATIVE_KERNELS" in f["reason"]
    monkeypatch.setenv("GPTOSS_NATIVE_KERNELS", "sse9")
    x = np.zeros((1, 32), np.float32)
    with pytest.raises(ValueError, match="not a kernel path"):
        mxfp4.matmul(x, np.zeros((1, 1, 16), np.uint8), np.zeros((1, 1), np.uint8))


# --- bad input: clear TypeError / ValueError, never a crash -------------------------

def test_wrong_dtypes():
    b, s = np.zeros((2, 1, 16), np.uint8), np.zeros((2, 1), np.uint8)
    with pytest.raises(TypeError, match="blocks must have dtype uint8"):
        mxfp4.dequantize(b.astype(np.int32), s)
    with pytest.raises(TypeError, match="scales must have dtype uint8"):
        mxfp4.dequantize(b, s.astype(np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        mxfp4.matmul(np.zeros((1, 32)), b, s)
    with pytest.raises(TypeError, match="weights must have dtype float32"):
        mxfp4.quantize(np.zeros(32, np.float64))
    with pytest.raises(TypeError, match="numpy array"):
        mxfp4.dequantize([[0] * 16], s)


def test_mismatched_shapes_and_bad_dims():
    b, s = np.zeros((2, 3, 16), np.uint8), np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match="last dim 16"):
        mxfp4.dequantize(np.zeros((2, 3, 8), np.uint8), s)
    with pytest.raises(ValueError, match="scales shape"):
        mxfp4.dequantize(b, np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match=r"x must be \[m, 96\]"):
        mxfp4.matmul(np.zeros((1, 64), np.float32), b, s)
    with pytest.raises(ValueError, match="bias must be"):
        mxfp4.matmul(np.zeros((1, 96), np.float32), b, s, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.quantize(np.zeros((2, 33), np.float32))
    with pytest.raises(ValueError, match="precision"):
        mxfp4.matmul(np.zeros((1, 96), np.float32), b, s, precision="fp8")
    with pytest.raises(ValueError, match="precision"):
        _core.mxfp4_matmul(np.zeros((1, 96), np.float32), b, s, None, None, None, "bf8")
    with pytest.raises(ValueError, match="not finite"):
        mxfp4.quantize(np.full(32, np.inf, np.float32))


def test_non_contiguous_inputs_give_the_right_answer():
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 256, size=(8, 4, 16), dtype=np.uint8)
    scales = rng.integers(120, 130, size=(8, 4), dtype=np.uint8)
    x = rng.standard_normal((6, 128), dtype=np.float32)
    want = mxfp4.matmul(x[::2], blocks[::2], scales[::2])
    got = mxfp4.matmul(x[::2].copy(), blocks[::2].copy(), scales[::2].copy())
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(mxfp4.dequantize(blocks[:, ::-1], scales[:, ::-1]),
                                  mxfp4.dequantize(blocks[:, ::-1].copy(), scales[:, ::-1].copy()))
    # Fortran-ordered x
    xf = np.asfortranarray(x[:, :128])
    np.testing.assert_array_equal(mxfp4.matmul(xf, blocks, scales), mxfp4.matmul(x, blocks, scales))


def test_core_rejects_non_contiguous_directly():
    x = np.zeros((4, 64), np.float32)[::2]
    with pytest.raises(ValueError, match="contiguous"):
        _core.mxfp4_matmul(x, np.zeros((1, 2, 16), np.uint8), np.zeros((1, 2), np.uint8))


def test_error_hierarchy():
    assert issubclass(gn.CheckpointError, gn.GptOssError)
    assert issubclass(gn.ContextLengthError, gn.GptOssError)
    assert issubclass(gn.GptOssError, Exception)


@pytest.mark.parametrize("precision", ["f32", "int16", "int8"])
def test_non_finite_activations_give_nan_not_a_silent_value(precision):
    blocks = np.full((2, 2, 16), 0x22, np.uint8)
    scales = np.full((2, 2), 127, np.uint8)
    x = np.ones((1, 64), np.float32)
    x[0, 5] = np.nan
    assert np.isnan(mxfp4.matmul(x, blocks, scales, precision=precision)).all()
