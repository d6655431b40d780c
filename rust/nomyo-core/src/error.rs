//! The one error type of the core.
//!
//! Crypto failures are a single opaque variant ([`Error::Security`]) so that nothing about *why*
//! an unwrap or authentication failed can leak to a caller (no padding or timing oracle).
//! Structural failures name the problem; their messages never contain secret bytes.

use std::fmt;

/// Everything that can go wrong in the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Decryption, unwrapping or authentication failed. Deliberately without detail.
    Security,
    /// An envelope (or decrypted reply) is structurally invalid: not JSON, a missing or
    /// oversized field, bad base64, wrong version or algorithm.
    Envelope(String),
    /// A key could not be parsed, decrypted or accepted.
    Key(String),
    /// A value cannot be represented (e.g. JSON serialization of a NaN).
    Value(String),
    /// A file-system or OS failure, with the OS error kind kept.
    Io(std::io::ErrorKind, String),
    /// The OS random number generator or the crypto library failed unexpectedly.
    Internal(&'static str),
    /// `secure_memory='require'`: a secret buffer could not be locked and dump-excluded, so it
    /// was refused before anything was written to it (sizes and limit only).
    Memory(crate::secret::Shortfall),
}

/// Result alias of the core.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Security => {
                f.write_str("decryption failed: integrity check or authentication failed")
            }
            Error::Envelope(m) => write!(f, "invalid envelope: {m}"),
            Error::Key(m) | Error::Value(m) | Error::Io(_, m) => f.write_str(m),
            Error::Internal(m) => write!(f, "internal error: {m}"),
            Error::Memory(shortfall) => shortfall.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub(crate) fn envelope(msg: impl Into<String>) -> Self {
        Error::Envelope(msg.into())
    }

    pub(crate) fn key(msg: impl Into<String>) -> Self {
        Error::Key(msg.into())
    }

    pub(crate) fn io(context: &str, err: &std::io::Error) -> Self {
        Error::Io(err.kind(), format!("{context}: {err}"))
    }
}
