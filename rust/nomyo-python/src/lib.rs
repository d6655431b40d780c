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
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ENVELOPE_VERSION", nomyo_core::envelope::VERSION)?;
    m.add("ENVELOPE_ALGORITHM", nomyo_core::envelope::ALGORITHM)?;
    m.add_class::<keys::PyPrivateKey>()?;
    m.add_class::<keys::PyPublicKey>()?;
    m.add_class::<buffer::PySecretBuffer>()?;
    m.add_class::<transport::PyTransport>()?;
    m.add_class::<reply::PyReply>()?;
    m.add_class::<transport::PyPending>()?;
    #[cfg(unix)]
    m.add_class::<completions::PyCompletions>()?;
    m.add(
        "TransportError",
        m.py().get_type::<errors::TransportError>(),
    )?;
    m.add_function(wrap_pyfunction!(envelope::seal_json, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::open_json, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::seal_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::open_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(envelope::dumps, m)?)?;
    m.add_function(wrap_pyfunction!(info::crypto_info, m)?)?;
    m.add_function(wrap_pyfunction!(memory::memory_protection_info, m)?)?;
    m.add_function(wrap_pyfunction!(memory::secure_memory_needed, m)?)?;
    m.add_function(wrap_pyfunction!(memory::disable_core_dumps, m)?)?;
    m.add_function(wrap_pyfunction!(memory::lock_bytearray, m)?)?;
    m.add_function(wrap_pyfunction!(memory::unlock_bytearray, m)?)?;
    m.add_function(wrap_pyfunction!(memory::wipe_bytearray, m)?)?;
    m.add_function(wrap_pyfunction!(tpm::verify_attestation, m)?)?;
    m.add_function(wrap_pyfunction!(keys::write_file, m)?)?;
    m.add_function(wrap_pyfunction!(devcert::write_dev_certificates, m)?)?;
    Ok(())
}
