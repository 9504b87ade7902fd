//! gptoss-core: a pure-Rust engine for OpenAI's gpt-oss models.
//!
//! Layout:
//! - [`cpu`]: CPU feature detection and the one place that picks a kernel path.
//! - [`mxfp4`]: the MXFP4 format (E2M1 codes, E8M0 scales): decode tables, dequantize, quantize.
//! - [`q8`]: int8 weights with bf16 block scales (the opt-in attention/lm_head format).
//! - [`par`]: parallel dispatch (rayon, and the spinning team of a forward pass).
//! - [`kernels`]: matmuls over MXFP4, bf16 and Q8 weights, a scalar `generic` twin beside each ISA.
//! - [`model`]: config, safetensors checkpoint (memory-mapped, validated), the forward pass.
//! - [`runtime`]: KV cache and sessions.
//!
//! Nothing here knows about Python; `rust/python` holds the bindings.

pub mod bf16;
pub mod cpu;
pub mod error;
pub mod kernels;
pub mod model;
pub mod mxfp4;
pub mod par;
pub mod q8;
pub mod runtime;

pub use error::{Error, Result};
