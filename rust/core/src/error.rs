//! Errors of the core. The bindings map each kind onto a Python exception type.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A missing, truncated or malformed checkpoint (message names file and tensor).
    Checkpoint(String),
    /// More tokens than the KV cache holds.
    ContextLength(String),
    /// A bad argument (shape, value) from the caller.
    Value(String),
    /// Anything else that went wrong on purpose (e.g. a forced kernel path the CPU lacks).
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Checkpoint(m) | Error::ContextLength(m) | Error::Value(m) | Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}
