//! What this process gets for secret memory (probed, and counted since it started), and
//! helpers for the caller's own bytearrays.

use nomyo_core::secret::{self, Policy};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict};

use crate::errors::CoreError;

/// The policy named by a `secure_memory=` argument of the binding.
pub(crate) fn policy(name: &str) -> PyResult<Policy> {
    Policy::parse(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "secure_memory must be 'off', 'best_effort' or 'require', not {name:?}"
        ))
    })
}

/// A truthful report of what this process has achieved for secret memory: a probe page now,
/// the limits, and what every secret buffer since the start actually got.
#[pyfunction]
pub fn memory_protection_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let p = secret::probe().map_err(CoreError)?;
    let s = secret::stats();
    let d = PyDict::new(py);
    d.set_item("backend", "nomyo-rs")?;
    d.set_item("platform", std::env::consts::OS)?;
    // "full" until one secret buffer that was to be locked was not (or was not excluded from
    // dumps); "zeroing_only" when nothing can be locked at all.
    let degraded = s.buffers_not_locked > 0 || s.buffers_not_dump_excluded > 0;
    let level = if !p.locking && s.buffers_locked == 0 {
        "zeroing_only"
    } else if degraded || !p.locking || !p.dump_exclusion {
        "partial"
    } else {
        "full"
    };
    d.set_item("protection_level", level)?;
    d.set_item("has_memory_locking", p.locking)?;
    d.set_item("has_secure_zeroing", p.zeroing)?;
    d.set_item("has_dump_exclusion", p.dump_exclusion)?;
    d.set_item("has_wipe_on_fork", p.wipe_on_fork)?;
    d.set_item("supports_full_protection", p.locking && p.dump_exclusion)?;
    d.set_item("memlock_limit", p.memlock_limit)?;
    d.set_item("memlock_hard_limit", p.memlock_hard_limit)?;
    d.set_item("has_ipc_lock", p.ipc_lock_capability)?;
    d.set_item("locked_bytes", p.locked_now)?;
    d.set_item("lockable_bytes", p.lockable_now)?;
    d.set_item(
        "largest_lockable_request",
        secret::largest_lockable_request(),
    )?;
    d.set_item("secret_buffers_locked", s.buffers_locked)?;
    d.set_item("secret_buffers_not_locked", s.buffers_not_locked)?;
    d.set_item(
        "secret_buffers_unlocked_by_choice",
        s.buffers_unlocked_by_choice,
    )?;
    d.set_item(
        "secret_buffers_not_dump_excluded",
        s.buffers_not_dump_excluded,
    )?;
    d.set_item("secret_bytes_locked", s.bytes_locked)?;
    d.set_item("secret_bytes_not_locked", s.bytes_not_locked)?;
    d.set_item("lock_failures", s.lock_failures)?;
    d.set_item("dump_exclusion_failures", s.dump_exclusion_failures)?;
    d.set_item("require_refusals", s.refused)?;
    d.set_item("page_size", p.page_size)?;
    Ok(d)
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
