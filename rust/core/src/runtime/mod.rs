//! Runtime state: the KV cache and sessions.

pub mod kv_cache;
pub mod session;

pub use kv_cache::{KvCache, KvDtype};
pub use session::{Logits, Session};
