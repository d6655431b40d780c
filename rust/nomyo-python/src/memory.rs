//! What the platform grants for secret memory, and helpers for the caller's own bytearrays.

use nomyo_core::secret;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict};

use crate::errors::IntoPy;

/// A truthful report of memory protection on this machine, probed with a real buffer.
#[pyfunction]
pub fn memory_protection_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let p = secret::probe().py_err()?;
    let d = PyDict::new(py);
    d.set_item("backend", "nomyo-rs")?;
    d.set_item("platform", std::env::consts::OS)?;
    let level = if p.locking { "full" } else { "zeroing_only" };
    d.set_item("protection_level", level)?;
    d.set_item("has_memory_locking", p.locking)?;
    d.set_item("has_secure_zeroing", p.zeroing)?;
    d.set_item("has_dump_exclusion", p.dump_exclusion)?;
    d.set_item("has_wipe_on_fork", p.wipe_on_fork)?;
    d.set_item("supports_full_protection", p.locking && p.dump_exclusion)?;
    d.set_item("memlock_limit", p.memlock_limit)?;
    d.set_item("page_size", p.page_size)?;
    Ok(d)
}

/// Turn off core dumps for this process (RLIMIT_CORE = 0; on Linux also not dumpable).
#[pyfunction]
pub fn disable_core_dumps() -> bool {
    let lim = libc_rlimit_zero();
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_DUMPABLE and integer arguments.
    let dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
    #[cfg(not(target_os = "linux"))]
    let dumpable = true;
    lim && dumpable
}

#[cfg(not(unix))]
fn libc_rlimit_zero() -> bool {
    false
}

#[cfg(unix)]
fn libc_rlimit_zero() -> bool {
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) == 0 }
}

fn span(ba: &Bound<'_, PyByteArray>) -> (*mut libc::c_void, usize) {
    let page = secret::page_size();
    let ptr = ba.data() as usize;
    let start = ptr & !(page - 1);
    let end = (ptr + ba.len()).div_ceil(page) * page;
    (start as *mut libc::c_void, end - start)
}

/// Lock the pages of a bytearray in RAM (best effort). Returns True on success.
#[pyfunction]
pub fn lock_bytearray(data: &Bound<'_, PyByteArray>) -> bool {
    if data.len() == 0 {
        return true;
    }
    let (p, n) = span(data);
    #[cfg(unix)]
    // SAFETY: the range covers the bytearray's live allocation; mlock does not write.
    return unsafe { libc::mlock(p, n) == 0 };
    #[cfg(not(unix))]
    {
        let _ = (p, n);
        false
    }
}

/// Unlock the pages of a bytearray. Returns True on success.
#[pyfunction]
pub fn unlock_bytearray(data: &Bound<'_, PyByteArray>) -> bool {
    if data.len() == 0 {
        return true;
    }
    let (p, n) = span(data);
    #[cfg(unix)]
    // SAFETY: as above.
    return unsafe { libc::munlock(p, n) == 0 };
    #[cfg(not(unix))]
    {
        let _ = (p, n);
        true
    }
}

/// Overwrite a bytearray with zeros, with writes the compiler cannot remove.
#[pyfunction]
pub fn wipe_bytearray(data: &Bound<'_, PyByteArray>) {
    // SAFETY: no Python code runs while the slice is borrowed.
    zeroize::Zeroize::zeroize(unsafe { data.as_bytes_mut() });
}
