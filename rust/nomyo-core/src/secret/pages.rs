//! One mapping of whole pages: locked and dump-excluded where the OS allows, zeroed up to
//! its high-water mark before it is released; and the size classes mappings come in.

use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;

use zeroize::Zeroize;

use super::counters;
use super::limits::page_size;
use crate::error::{Error, Result};

pub(super) fn round_up(n: usize) -> usize {
    let page = page_size();
    n.div_ceil(page).max(1) * page
}

/// A mapping of whole pages. Bytes at and past `dirty` are always zero; `wipe` zeroes the rest.
pub(super) struct Pages {
    pub(super) ptr: NonNull<u8>,
    pub(super) cap: usize,
    /// High-water mark: no byte at or past this offset was written since the last wipe.
    pub(super) dirty: usize,
    pub(super) locked: bool,
    pub(super) dump_excluded: bool,
    /// `MADV_WIPEONFORK` succeeded: a forked child sees these pages as zeros.
    pub(super) wipe_on_fork: bool,
}

// SAFETY: Pages exclusively owns its mapping; access is through &/&mut like a Vec.
unsafe impl Send for Pages {}
// SAFETY: shared references only read.
unsafe impl Sync for Pages {}

impl Pages {
    /// A fresh mapping of exactly `cap` bytes (a whole number of pages), zero-filled.
    /// `count`: record lock and dump-exclusion failures in the counters (not for probes).
    #[cfg(unix)]
    pub(super) fn map(cap: usize, lock: bool, count: bool) -> Result<Self> {
        // SAFETY: anonymous private mapping, no file descriptor; checked for MAP_FAILED.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(Error::Internal("out of memory for a secret buffer"));
        }
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or(Error::Internal("mmap returned null"))?;
        let dump_excluded = dont_dump(raw, cap);
        if !dump_excluded && count {
            counters::DUMP_EXCLUSION_FAILURES.fetch_add(1, Relaxed);
        }
        let wipe_on_fork = wipe_on_fork(raw, cap);
        let mut pages = Pages {
            ptr,
            cap,
            dirty: 0,
            locked: false,
            dump_excluded,
            wipe_on_fork,
        };
        if lock {
            pages.try_lock(count);
        }
        Ok(pages)
    }

    /// Without mmap/mlock (Windows): page-aligned zeroed heap memory, wiped on drop; not locked.
    #[cfg(not(unix))]
    pub(super) fn map(cap: usize, _lock: bool, _count: bool) -> Result<Self> {
        let layout = std::alloc::Layout::from_size_align(cap, page_size())
            .map_err(|_| Error::Internal("secret buffer layout"))?;
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(Error::Internal("out of memory for a secret buffer"))?;
        Ok(Pages {
            ptr,
            cap,
            dirty: 0,
            locked: false,
            dump_excluded: false,
            wipe_on_fork: false,
        })
    }

    /// Try to `mlock` the mapping (if it is not already); returns whether it is locked.
    /// `count`: record a failure in the counters.
    pub(super) fn try_lock(&mut self, count: bool) -> bool {
        #[cfg(unix)]
        if !self.locked {
            // SAFETY: ptr/cap is the mapping this value owns.
            self.locked = unsafe { libc::mlock(self.ptr.as_ptr().cast(), self.cap) } == 0;
            if self.locked {
                counters::LOCKED_NOW.fetch_add(self.cap as u64, Relaxed);
            } else if count {
                counters::LOCK_FAILURES.fetch_add(1, Relaxed);
            }
        }
        #[cfg(not(unix))]
        if count {
            counters::LOCK_FAILURES.fetch_add(1, Relaxed);
        }
        self.locked
    }

    /// Record that bytes up to `end` may now be written.
    pub(super) fn touch(&mut self, end: usize) {
        debug_assert!(end <= self.cap);
        self.dirty = self.dirty.max(end);
    }

    /// The first `len` bytes (at most the capacity).
    pub(super) fn slice(&self, len: usize) -> &[u8] {
        assert!(len <= self.cap);
        // SAFETY: the mapping is cap bytes, readable, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }

    /// Bytes `start..end`, writable; marks them dirty.
    pub(super) fn range_mut(&mut self, start: usize, end: usize) -> &mut [u8] {
        assert!(start <= end && end <= self.cap);
        self.touch(end);
        // SAFETY: in bounds of the mapping, which self owns exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), end - start) }
    }

    /// Zero every byte that may have been written (with writes the compiler cannot elide).
    /// Afterwards the whole mapping is zero.
    pub(super) fn wipe(&mut self) {
        let dirty = self.dirty;
        if dirty > 0 {
            // SAFETY: dirty <= cap; the mapping is owned exclusively.
            let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), dirty) };
            bytes.zeroize();
        }
        self.dirty = 0;
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn dont_dump(raw: *mut libc::c_void, cap: usize) -> bool {
    // SAFETY: raw/cap is a mapping we own.
    unsafe { libc::madvise(raw, cap, libc::MADV_DONTDUMP) == 0 }
}

/// Ask that a forked child get these pages zero-filled instead of a copy of the secrets
/// (Linux 4.14+; best effort). The advice stays with the mapping, so pooled pages keep it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn wipe_on_fork(raw: *mut libc::c_void, cap: usize) -> bool {
    // SAFETY: raw/cap is a private anonymous mapping we own.
    unsafe { libc::madvise(raw, cap, libc::MADV_WIPEONFORK) == 0 }
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn wipe_on_fork(_raw: *mut libc::c_void, _cap: usize) -> bool {
    false
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn dont_dump(_raw: *mut libc::c_void, _cap: usize) -> bool {
    false
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.wipe();
        #[cfg(unix)]
        {
            let raw = self.ptr.as_ptr().cast::<libc::c_void>();
            // SAFETY: unlocking and unmapping the mapping this value owns, exactly once.
            unsafe {
                if self.locked {
                    libc::munlock(raw, self.cap);
                    counters::LOCKED_NOW.fetch_sub(self.cap as u64, Relaxed);
                }
                libc::munmap(raw, self.cap);
            }
        }
        #[cfg(not(unix))]
        // SAFETY: allocated in Pages::map with this exact layout.
        unsafe {
            let layout = std::alloc::Layout::from_size_align_unchecked(self.cap, page_size());
            std::alloc::dealloc(self.ptr.as_ptr(), layout);
        }
    }
}

/// Capacity actually mapped for a request of `n` bytes: whole pages; above 64 KiB rounded up
/// to a 32nd of the next power of two (at most 6.25% more), so that slightly different
/// sizes (a request and its reply) share a size class and can reuse each other's pooled
/// mapping.
pub(super) fn size_class(n: usize) -> usize {
    let page = page_size();
    let n = n.max(1);
    if n <= 64 << 10 {
        return round_up(n);
    }
    let step = (n.checked_next_power_of_two().unwrap_or(n) / 32).max(page);
    n.div_ceil(step).saturating_mul(step)
}
