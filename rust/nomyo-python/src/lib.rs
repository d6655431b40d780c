//! `nomyo._core`: the thin PyO3 binding of `nomyo-core`.
//!
//! Argument conversion, GIL release and error mapping only; all cryptography lives in the
//! core crate. Every heap block this library frees is wiped first ([`alloc::Wiping`]), so
//! transient plaintext (for example a JSON string being unescaped) never lingers in freed
//! memory.

mod buffer;
#[cfg(unix)]
mod completions;
mod devcert;
mod envelope;
mod errors;
mod info;
mod json;
mod keys;
mod memory;
mod reply;
mod request;
mod tpm;
mod transport;

use nomyo_core::alloc;
use pyo3::prelude::*;

#[global_allocator]
static GLOBAL: alloc::Wiping = alloc::Wiping;

#[pymodule]
mod _core {
    #[pymodule_export]
    #[allow(non_upper_case_globals)] // the name Python reads
    const __version__: &str = env!("CARGO_PKG_VERSION");
    #[pymodule_export]
    const ENVELOPE_VERSION: &str = nomyo_core::envelope::VERSION;
    #[pymodule_export]
    const ENVELOPE_ALGORITHM: &str = nomyo_core::envelope::ALGORITHM;
    #[cfg(unix)]
    #[pymodule_export]
    use super::completions::PyCompletions;
    #[pymodule_export]
    use super::{
        buffer::PySecretBuffer,
        devcert::write_dev_certificates,
        envelope::{dumps, open_bytes, open_json, seal_bytes, seal_json},
        errors::TransportError,
        info::crypto_info,
        keys::{write_file, PyPrivateKey, PyPublicKey},
        memory::{
            disable_core_dumps, lock_bytearray, memory_protection_info, secure_memory_needed,
            unlock_bytearray, wipe_bytearray,
        },
        reply::PyReply,
        tpm::verify_attestation,
        transport::{PyPending, PyTransport},
    };
}
