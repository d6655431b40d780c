//! What this process gets for secret memory (probed, and counted since it started), and
//! helpers for the caller's own bytearrays.

use nomyo_core::secret::{self, Policy};
use pyo3::prelude::*;
use pyo3::types::PyByteArray;

use crate::errors::CoreError;

/// The policy named by a `secure_memory=` argument of the binding.
pub(crate) fn policy(name: &str) -> PyResult<Policy> {
    Ok(Policy::named(name).map_err(CoreError)?)
}

/// A truthful report of what this process has achieved for secret memory: a probe page now,
/// the limits, and what every secret buffer since the start actually got.
#[pyfunction]
pub fn memory_protection_info(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    crate::info::to_python(py, &secret::report().map_err(CoreError)?)
}

/// Locked bytes a request of `size` JSON bytes needs at its peak (see `largest_lockable_request`
/// of `memory_protection_info`).
#[pyfunction]
pub fn secure_memory_needed(size: usize) -> usize {
    secret::request_peak(size)
}

/// Turn off core dumps for this process (RLIMIT_CORE = 0; on Linux also not dumpable).
#[pyfunction]
pub fn disable_core_dumps() -> bool {
    secret::disable_core_dumps()
}

/// Lock the pages of a bytearray in RAM (best effort). Returns True on success.
#[pyfunction]
pub fn lock_bytearray(data: &Bound<'_, PyByteArray>) -> bool {
    // SAFETY: no Python code runs while the slice is borrowed.
    secret::lock_region(unsafe { data.as_bytes() })
}

/// Unlock the pages of a bytearray. Returns True on success.
#[pyfunction]
pub fn unlock_bytearray(data: &Bound<'_, PyByteArray>) -> bool {
    // SAFETY: as above.
    secret::unlock_region(unsafe { data.as_bytes() })
}

/// Overwrite a bytearray with zeros, with writes the compiler cannot remove.
#[pyfunction]
pub fn wipe_bytearray(data: &Bound<'_, PyByteArray>) {
    // SAFETY: no Python code runs while the slice is borrowed.
    zeroize::Zeroize::zeroize(unsafe { data.as_bytes_mut() });
}
