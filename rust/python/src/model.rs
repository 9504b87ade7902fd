//! Bindings of the model and sessions.

use crate::{pool, run_detached, select_isa};
use gptoss_core::model::{LoadOptions, Model};
use gptoss_core::runtime::{Logits, Session};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

fn ids_u32(ids: Vec<i64>) -> PyResult<Vec<u32>> {
    ids.into_iter()
        .map(|v| u32::try_from(v).map_err(|_| PyValueError::new_err(format!("token id {v} is out of range"))))
        .collect()
}

fn logits_mode(s: Option<&str>) -> PyResult<Logits> {
    match s {
        None | Some("none") => Ok(Logits::None),
        Some("last") => Ok(Logits::Last),
        Some("all") => Ok(Logits::All),
        Some(o) => Err(PyValueError::new_err(format!("logits must be \"last\", \"all\" or None, got {o:?}"))),
    }
}

/// A loaded model (memory-mapped checkpoint). Immutable and shareable across threads.
#[pyclass(name = "CoreModel", module = "gptoss_native._core", frozen)]
pub struct PyModel {
    inner: Arc<Model>,
    pool: Arc<rayon::ThreadPool>,
}

#[pymethods]
impl PyModel {
    /// The config as Hugging Face-style JSON.
    fn config_json(&self) -> String {
        self.inner.config.to_hf_json().to_string()
    }

    #[getter]
    fn kernels(&self) -> &'static str {
        self.inner.isa.name()
    }

    #[getter]
    fn max_context(&self) -> usize {
        self.inner.max_context
    }

    #[getter]
    fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    #[getter]
    fn mapped_bytes(&self) -> usize {
        self.inner.ckpt.mapped_bytes()
    }

    #[getter]
    fn files(&self) -> Vec<String> {
        self.inner.ckpt.files.iter().map(|f| f.path.display().to_string()).collect()
    }

    /// Logits of every position of `ids` on a fresh context: float32 [len, vocab].
    fn forward<'py>(&self, py: Python<'py>, ids: Vec<i64>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let ids = ids_u32(ids)?;
        let (model, pool) = (self.inner.clone(), self.pool.clone());
        let n = ids.len();
        let out = run_detached(py, move || pool.install(|| Session::new(model).append(&ids, Logits::All)))?;
        Ok(out.into_pyarray(py).reshape(vec![n, self.inner.config.vocab_size])?)
    }

    /// Residual stream after the embedding and after each layer: float32 [layers+1, len, hidden].
    fn hidden_states<'py>(&self, py: Python<'py>, ids: Vec<i64>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let ids = ids_u32(ids)?;
        let (model, pool) = (self.inner.clone(), self.pool.clone());
        let n = ids.len();
        let out = run_detached(py, move || {
            pool.install(|| {
                let mut hs = Vec::new();
                Session::new(model).append_with_hidden(&ids, Logits::None, &mut hs)?;
                Ok(hs)
            })
        })?;
        let c = &self.inner.config;
        Ok(out.into_pyarray(py).reshape(vec![c.num_hidden_layers + 1, n, c.hidden_size])?)
    }

    /// Every layer's router logits: float32 [layers, len, experts].
    fn router_logits<'py>(&self, py: Python<'py>, ids: Vec<i64>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let ids = ids_u32(ids)?;
        let (model, pool) = (self.inner.clone(), self.pool.clone());
        let n = ids.len();
        let out = run_detached(py, move || pool.install(|| model.router_logits(&ids)))?;
        let c = &self.inner.config;
        Ok(out.into_pyarray(py).reshape(vec![c.num_hidden_layers, n, c.num_local_experts])?)
    }

    /// Advance each session by one token in one batched pass: float32 [len(sessions), vocab].
    fn step<'py>(
        &self,
        py: Python<'py>,
        sessions: Vec<PyRefMut<'py, PySession>>,
        ids: Vec<i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let ids = ids_u32(ids)?;
        let mut sessions = sessions;
        if sessions.iter().any(|s| !Arc::ptr_eq(&s.inner.model, &self.inner)) {
            return Err(PyValueError::new_err("every session must come from this model"));
        }
        let n = sessions.len();
        let pool = self.pool.clone();
        let mut refs: Vec<&mut Session> = sessions.iter_mut().map(|s| &mut s.inner).collect();
        let out = run_detached(py, move || pool.install(|| Session::step_batch(&mut refs, &ids)))?;
        Ok(out.into_pyarray(py).reshape(vec![n, self.inner.config.vocab_size])?)
    }

    /// Read the whole checkpoint once so that it is in the page cache; returns bytes read.
    fn warm(&self, py: Python<'_>) -> PyResult<usize> {
        let (model, pool) = (self.inner.clone(), self.pool.clone());
        run_detached(py, move || pool.install(|| model.warm()))
    }

    /// A new session with its own KV cache.
    fn session(&self) -> PySession {
        PySession { inner: Session::new(self.inner.clone()), pool: self.pool.clone() }
    }
}

/// A KV cache and the token ids it holds.
#[pyclass(name = "CoreSession", module = "gptoss_native._core")]
pub struct PySession {
    inner: Session,
    pool: Arc<rayon::ThreadPool>,
}

#[pymethods]
impl PySession {
    /// Feed `ids`; returns float32 logits [1, vocab] ("last"), [len, vocab] ("all") or None.
    #[pyo3(signature = (ids, logits="last"))]
    fn append<'py>(
        &mut self,
        py: Python<'py>,
        ids: Vec<i64>,
        logits: Option<&str>,
    ) -> PyResult<Option<Bound<'py, PyArrayDyn<f32>>>> {
        let mode = logits_mode(logits)?;
        let ids = ids_u32(ids)?;
        let n = ids.len();
        let pool = self.pool.clone();
        let sess = &mut self.inner;
        let out = run_detached(py, || pool.install(|| sess.append(&ids, mode)))?;
        let vocab = self.inner.model.config.vocab_size;
        let rows = match mode {
            Logits::None => return Ok(None),
            Logits::Last => usize::from(n > 0),
            Logits::All => n,
            Logits::Argmax => unreachable!("logits_mode never gives Argmax"),
        };
        Ok(Some(out.into_pyarray(py).reshape(vec![rows, vocab])?))
    }

    /// Feed `ids` (at least one); returns the id of the last position's largest logit.
    fn append_argmax(&mut self, py: Python<'_>, ids: Vec<i64>) -> PyResult<u32> {
        let ids = ids_u32(ids)?;
        let pool = self.pool.clone();
        let sess = &mut self.inner;
        run_detached(py, || pool.install(|| sess.append_argmax(&ids)))
    }

    /// Keep the first `n` tokens (any n <= len).
    fn truncate(&mut self, n: i64) -> PyResult<()> {
        let n = usize::try_from(n).map_err(|_| PyValueError::new_err(format!("n must be >= 0, got {n}")))?;
        self.inner.truncate(n).map_err(crate::to_py)
    }

    fn reset(&mut self) {
        self.inner.reset()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The token ids in the cache.
    #[getter]
    fn tokens(&self) -> Vec<u32> {
        self.inner.tokens.clone()
    }

    #[getter]
    fn max_context(&self) -> usize {
        self.inner.cache.max_context
    }
}

/// Load a model folder. `kernels` forces a kernel path (else GPTOSS_NATIVE_KERNELS, else
/// the best); `q8` quantizes the attention and lm_head matrices to Q8 copies.
#[pyfunction]
#[pyo3(signature = (path, threads=None, max_context=None, kernels=None, precision="f32", q8=false))]
fn load_model(
    py: Python<'_>,
    path: PathBuf,
    threads: Option<usize>,
    max_context: Option<usize>,
    kernels: Option<&str>,
    precision: &str,
    q8: bool,
) -> PyResult<PyModel> {
    let isa = select_isa(kernels)?;
    let precision = crate::parse_precision(precision)?;
    let pool = pool(threads)?;
    // Q8 quantization runs on the model's own thread pool.
    let model = run_detached(py, move || {
        pool.install(|| Model::load(&path, LoadOptions { max_context, isa, precision, q8 })).map(|m| (m, pool))
    });
    let (model, pool) = model?;
    Ok(PyModel { inner: Arc::new(model), pool })
}

/// Validate a config.json text (either layout); returns the Hugging Face-style JSON.
#[pyfunction]
fn parse_config(text: &str, file: &str) -> PyResult<String> {
    gptoss_core::model::config::Config::from_json(text, file).map(|c| c.to_hf_json().to_string()).map_err(crate::to_py)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PySession>()?;
    m.add_function(wrap_pyfunction!(load_model, m)?)?;
    m.add_function(wrap_pyfunction!(parse_config, m)?)?;
    Ok(())
}
