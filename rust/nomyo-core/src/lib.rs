//! Cryptographic core of nomyo-rs.
//!
//! Everything that touches a secret lives here, in native memory that is zeroed when it is
//! dropped: RSA key pairs ([`keys`]), the hybrid envelope of the NOMYO protocol ([`envelope`]),
//! its two primitives ([`aead`], [`rsa`]) and the page-locked buffer that holds plaintext and
//! symmetric keys ([`secret`]). This crate has no Python in it; `nomyo-python` binds it.

pub mod aead;
pub mod alloc;
pub mod b64;
#[cfg(unix)]
pub mod completions;
pub mod devcert;
pub mod envelope;
pub mod error;
pub mod http;
pub mod info;
pub mod json;
pub mod keygen;
pub mod keys;
pub mod rand;
pub mod rsa;
pub mod runtime;
pub mod sealed;
pub mod secret;
pub mod tpm;

pub use error::{Cause, Error, Phase, Result};
