//! Runtime state: KV cache and sessions.
