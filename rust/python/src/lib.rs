//! Python bindings: the only code that knows about Python.
//!
//! Every entry point converts core errors to the typed exception hierarchy, releases
//! the GIL around long work, and catches Rust panics so none crosses into Python.

use gptoss_core::cpu::{self, Isa};
use gptoss_core::kernels::{self, Weight};
use gptoss_core::{mxfp4, Error};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

create_exception!(_core, GptOssError, PyException, "Base of every error gptoss_native raises on purpose.");
create_exception!(_core, CheckpointError, GptOssError, "A missing, truncated or malformed checkpoint.");
create_exception!(_core, ContextLengthError, GptOssError, "More tokens than the KV cache holds.");

mod model;

pub(crate) fn to_py(e: Error) -> PyErr {
    match e {
        Error::Checkpoint(m) => CheckpointError::new_err(m),
        Error::ContextLength(m) => ContextLengthError::new_err(m),
        Error::Value(m) => PyValueError::new_err(m),
        Error::Other(m) => GptOssError::new_err(m),
    }
}

/// Run `f` without the GIL, turning a panic into `GptOssError`.
pub(crate) fn run_detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error> + Send) -> PyResult<T> {
    py.allow_threads(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            GptOssError::new_err(format!("internal error in the Rust core: {msg}"))
        })?
        .map_err(to_py)
}

/// Thread pools by size, shared by every call that asks for the same count.
pub(crate) fn pool(threads: Option<usize>) -> PyResult<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let n = match threads {
        Some(0) => return Err(PyValueError::new_err("threads must be >= 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&n) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("gptoss-native-{i}"))
        .build()
        .map_err(|e| GptOssError::new_err(format!("cannot start {n} threads: {e}")))?;
    let p = Arc::new(p);
    pools.insert(n, p.clone());
    Ok(p)
}

pub(crate) fn select_isa(kernels: Option<&str>) -> PyResult<Isa> {
    cpu::select(kernels).map(|(isa, _)| isa).map_err(to_py)
}

pub(crate) fn parse_precision(p: &str) -> PyResult<kernels::Precision> {
    match p {
        "f32" => Ok(kernels::Precision::F32),
        "int8" => Ok(kernels::Precision::Int8),
        "int16" => Ok(kernels::Precision::Int16),
        _ => Err(PyValueError::new_err(format!("precision must be \"f32\", \"int16\" or \"int8\", got {p:?}"))),
    }
}

fn contiguous<'a, T: numpy::Element>(a: &'a PyReadonlyArrayDyn<'_, T>, name: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
}

/// Dequantize MXFP4: blocks uint8 [..., G, 16], scales uint8 [..., G] -> float32 [..., G*32].
#[pyfunction]
fn mxfp4_dequantize<'py>(
    py: Python<'py>,
    blocks: PyReadonlyArrayDyn<'py, u8>,
    scales: PyReadonlyArrayDyn<'py, u8>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (bs, ss) = (blocks.shape().to_vec(), scales.shape().to_vec());
    if bs.is_empty() || bs[bs.len() - 1] != 16 {
        return Err(PyValueError::new_err(format!("blocks must have last dimension 16, got shape {bs:?}")));
    }
    if bs[..bs.len() - 1] != ss[..] {
        return Err(PyValueError::new_err(format!(
            "scales shape {ss:?} must equal blocks shape without its last dimension {:?}",
            &bs[..bs.len() - 1]
        )));
    }
    let (b, s) = (contiguous(&blocks, "blocks")?, contiguous(&scales, "scales")?);
    let out = run_detached(py, || {
        let mut out = vec![0f32; s.len() * mxfp4::BLOCK];
        mxfp4::dequantize(b, s, &mut out);
        Ok(out)
    })?;
    let mut shape = ss.clone();
    if let Some(last) = shape.last_mut() {
        *last *= mxfp4::BLOCK;
    } else {
        shape.push(mxfp4::BLOCK);
    }
    Ok(out.into_pyarray(py).reshape(shape)?)
}

/// Quantize float32 [..., n] (n % 32 == 0) -> (blocks uint8 [..., n/32, 16], scales uint8 [..., n/32]).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn mxfp4_quantize<'py>(
    py: Python<'py>,
    values: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<(Bound<'py, PyArrayDyn<u8>>, Bound<'py, PyArrayDyn<u8>>)> {
    let shape = values.shape().to_vec();
    let n = *shape.last().ok_or_else(|| PyValueError::new_err("values must have at least one dimension"))?;
    if n % mxfp4::BLOCK != 0 {
        return Err(PyValueError::new_err(format!("last dimension {n} is not a multiple of 32")));
    }
    let v = contiguous(&values, "values")?;
    let (b, s) = run_detached(py, || {
        let mut b = vec![0u8; v.len() / 2];
        let mut s = vec![0u8; v.len() / mxfp4::BLOCK];
        mxfp4::quantize(v, &mut b, &mut s)?;
        Ok((b, s))
    })?;
    let mut sshape = shape.clone();
    *sshape.last_mut().unwrap() = n / mxfp4::BLOCK;
    let mut bshape = sshape.clone();
    bshape.push(16);
    Ok((b.into_pyarray(py).reshape(bshape)?, s.into_pyarray(py).reshape(sshape)?))
}

fn matmul_common<'py, 'w>(
    py: Python<'py>,
    x: &PyReadonlyArrayDyn<'py, f32>,
    n: usize,
    rows: usize,
    bias: &Option<PyReadonlyArrayDyn<'py, f32>>,
    threads: Option<usize>,
    kernels: Option<&str>,
    precision: kernels::Precision,
    make: impl FnOnce() -> Weight<'w> + Send,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let xs = x.shape();
    if xs.len() != 2 || xs[1] != n {
        return Err(PyValueError::new_err(format!("x must be [m, {n}] to match the weight, got shape {xs:?}")));
    }
    let m = xs[0];
    let xd = contiguous(x, "x")?;
    let bd = match bias {
        Some(b) => {
            if b.shape() != [rows] {
                return Err(PyValueError::new_err(format!("bias must be [{rows}], got shape {:?}", b.shape())));
            }
            Some(contiguous(b, "bias")?)
        }
        None => None,
    };
    let isa = select_isa(kernels)?;
    let pool = pool(threads)?;
    let out = run_detached(py, move || {
        let w = make();
        let mut out = vec![0f32; m * rows];
        pool.install(|| kernels::matmul(isa, precision, xd, m, &w, bd, &mut out, &mut kernels::Scratch::default()));
        Ok(out)
    })?;
    Ok(out.into_pyarray(py).reshape(vec![m, rows])?)
}

/// y[m, out] = x[m, n] @ W[out, n]^T + bias, W in MXFP4 (blocks [out, n/32, 16], scales [out, n/32]).
#[pyfunction]
#[pyo3(signature = (x, blocks, scales, bias=None, threads=None, kernels=None, precision="f32"))]
#[allow(clippy::too_many_arguments)]
fn mxfp4_matmul<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    blocks: PyReadonlyArrayDyn<'py, u8>,
    scales: PyReadonlyArrayDyn<'py, u8>,
    bias: Option<PyReadonlyArrayDyn<'py, f32>>,
    threads: Option<usize>,
    kernels: Option<&str>,
    precision: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let precision = parse_precision(precision)?;
    let (bs, ss) = (blocks.shape().to_vec(), scales.shape().to_vec());
    if bs.len() != 3 || bs[2] != 16 {
        return Err(PyValueError::new_err(format!("blocks must be [out, n/32, 16], got shape {bs:?}")));
    }
    if ss != bs[..2] {
        return Err(PyValueError::new_err(format!("scales must be [{}, {}], got shape {ss:?}", bs[0], bs[1])));
    }
    let (rows, n) = (bs[0], bs[1] * mxfp4::BLOCK);
    let (b, s) = (contiguous(&blocks, "blocks")?, contiguous(&scales, "scales")?);
    matmul_common(py, &x, n, rows, &bias, threads, kernels, precision, move || Weight::mxfp4(b, s, rows, n))
}

/// y[m, out] = x[m, n] @ W[out, n]^T + bias, W in bf16 given as its uint16 bit patterns.
#[pyfunction]
#[pyo3(signature = (x, weight, bias=None, threads=None, kernels=None))]
fn bf16_matmul<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    weight: PyReadonlyArrayDyn<'py, u16>,
    bias: Option<PyReadonlyArrayDyn<'py, f32>>,
    threads: Option<usize>,
    kernels: Option<&str>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let ws = weight.shape().to_vec();
    if ws.len() != 2 {
        return Err(PyValueError::new_err(format!("weight must be [out, n], got shape {ws:?}")));
    }
    let w = contiguous(&weight, "weight")?;
    // bf16 bit patterns as little-endian bytes (numpy's native order on every supported host).
    if cfg!(target_endian = "big") {
        return Err(PyTypeError::new_err("bf16 weights need a little-endian host"));
    }
    // SAFETY: reinterpreting u16 as two bytes each; lifetime tied to `weight`.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, w.len() * 2) };
    let (rows, n) = (ws[0], ws[1]);
    matmul_common(py, &x, n, rows, &bias, threads, kernels, kernels::Precision::F32, move || {
        Weight::bf16(bytes, rows, n)
    })
}

/// Plain memory-read bandwidth in GB/s: the median of `reps` parallel reads of a fresh
/// `mbytes` MB buffer (the baseline benchmarks compare with).
#[pyfunction]
#[pyo3(signature = (mbytes=1024, threads=None, reps=5))]
fn read_bandwidth(py: Python<'_>, mbytes: usize, threads: Option<usize>, reps: usize) -> PyResult<f64> {
    let pool = pool(threads)?;
    run_detached(py, move || {
        let buf: Vec<u8> = (0..mbytes << 20).map(|i| i as u8).collect();
        let mut v: Vec<f64> = (0..reps.max(1))
            .map(|_| {
                let t0 = std::time::Instant::now();
                std::hint::black_box(pool.install(|| kernels::read_all(&buf)));
                buf.len() as f64 / t0.elapsed().as_secs_f64() / 1e9
            })
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        Ok(v[v.len() / 2])
    })
}

/// Which kernel path runs, and why; the CPU features behind it.
#[pyfunction]
fn cpu_features(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let f = cpu::features();
    match cpu::select(None) {
        Ok((isa, why)) => {
            d.set_item("kernels", isa.name())?;
            d.set_item("reason", why)?;
        }
        Err(e) => {
            d.set_item("kernels", py.None())?;
            d.set_item("reason", e.to_string())?;
        }
    }
    d.set_item("available", Isa::available().iter().map(|i| i.name()).collect::<Vec<_>>())?;
    d.set_item("arch", std::env::consts::ARCH)?;
    for (k, v) in [
        ("avx2", f.avx2),
        ("fma", f.fma),
        ("f16c", f.f16c),
        ("avx512f", f.avx512f),
        ("avx512bw", f.avx512bw),
        ("avx512vl", f.avx512vl),
        ("avx512_vnni", f.avx512vnni),
        ("avx512_vbmi", f.avx512vbmi),
        ("avx_vnni", f.avxvnni),
        ("avx512_bf16", f.avx512bf16),
        ("neon", f.neon),
        ("dotprod", f.dotprod),
    ] {
        d.set_item(k, v)?;
    }
    d.set_item("threads", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))?;
    Ok(d)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("GptOssError", py.get_type::<GptOssError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add("ContextLengthError", py.get_type::<ContextLengthError>())?;
    m.add_function(wrap_pyfunction!(mxfp4_dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(mxfp4_quantize, m)?)?;
    m.add_function(wrap_pyfunction!(mxfp4_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(bf16_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_features, m)?)?;
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    model::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
