//! Page-aligned native buffers for plaintext and symmetric keys.
//!
//! A [`SecretBuf`] owns its own anonymous memory mapping, so its bytes never share a page
//! with anything else and are never moved by an allocator. On creation it asks the kernel to
//! keep the pages in RAM (`mlock`) and out of core dumps (`MADV_DONTDUMP`); both are best
//! effort and reported truthfully by [`SecretBuf::locked`] and [`SecretBuf::dump_excluded`].
//! The contents are zeroed (with writes the compiler cannot elide) before the pages are
//! returned. Growing never reallocates in place: a new mapping is made, the bytes copied,
//! and the old mapping wiped and released.

use std::ptr::NonNull;
use std::sync::OnceLock;

use zeroize::Zeroize;

use crate::error::{Error, Result};

/// The system page size.
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        #[cfg(unix)]
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        #[cfg(not(unix))]
        let p: i64 = 4096;
        if p > 0 {
            p as usize
        } else {
            4096
        }
    })
}

fn round_up(n: usize) -> usize {
    let page = page_size();
    n.div_ceil(page).max(1) * page
}

/// A mapping of whole pages, released (after wiping) on drop.
struct Pages {
    ptr: NonNull<u8>,
    cap: usize,
    locked: bool,
    dump_excluded: bool,
}

// SAFETY: Pages exclusively owns its mapping; access is through &/&mut like a Vec.
unsafe impl Send for Pages {}
// SAFETY: shared references only read.
unsafe impl Sync for Pages {}

impl Pages {
    #[cfg(unix)]
    fn new(min_cap: usize, lock: bool) -> Result<Self> {
        let cap = round_up(min_cap);
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
        // SAFETY: ptr/cap is the mapping just created.
        let locked = lock && unsafe { libc::mlock(raw, cap) } == 0;
        let dump_excluded = dont_dump(raw, cap);
        Ok(Pages {
            ptr,
            cap,
            locked,
            dump_excluded,
        })
    }

    /// Without mmap/mlock (Windows): page-aligned zeroed heap memory, wiped on drop; not locked.
    #[cfg(not(unix))]
    fn new(min_cap: usize, _lock: bool) -> Result<Self> {
        let cap = round_up(min_cap);
        let layout = std::alloc::Layout::from_size_align(cap, page_size())
            .map_err(|_| Error::Internal("secret buffer layout"))?;
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(Error::Internal("out of memory for a secret buffer"))?;
        Ok(Pages {
            ptr,
            cap,
            locked: false,
            dump_excluded: false,
        })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is cap bytes, readable and writable, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: as above, shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn dont_dump(raw: *mut libc::c_void, cap: usize) -> bool {
    // SAFETY: raw/cap is a mapping we own.
    unsafe { libc::madvise(raw, cap, libc::MADV_DONTDUMP) == 0 }
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn dont_dump(_raw: *mut libc::c_void, _cap: usize) -> bool {
    false
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.as_mut_slice().zeroize();
        #[cfg(unix)]
        {
            let raw = self.ptr.as_ptr().cast::<libc::c_void>();
            // SAFETY: unlocking and unmapping the mapping this value owns, exactly once.
            unsafe {
                if self.locked {
                    libc::munlock(raw, self.cap);
                }
                libc::munmap(raw, self.cap);
            }
        }
        #[cfg(not(unix))]
        // SAFETY: allocated in Pages::new with this exact layout.
        unsafe {
            let layout = std::alloc::Layout::from_size_align_unchecked(self.cap, page_size());
            std::alloc::dealloc(self.ptr.as_ptr(), layout);
        }
    }
}

/// A growable byte buffer for secrets, in locked, dump-excluded pages, zeroed on drop.
pub struct SecretBuf {
    pages: Option<Pages>,
    len: usize,
    lock: bool,
}

impl SecretBuf {
    /// An empty buffer that will hold at least `capacity` bytes without growing.
    pub fn with_capacity(capacity: usize) -> Result<Self> {
        Self::with_capacity_and_lock(capacity, true)
    }

    /// As [`SecretBuf::with_capacity`], choosing whether to try `mlock`.
    pub fn with_capacity_and_lock(capacity: usize, lock: bool) -> Result<Self> {
        let pages = if capacity == 0 {
            None
        } else {
            Some(Pages::new(capacity, lock)?)
        };
        Ok(SecretBuf {
            pages,
            len: 0,
            lock,
        })
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Result<Self> {
        let mut buf = Self::with_capacity(data.len())?;
        buf.extend_from_slice(data)?;
        Ok(buf)
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> Result<Self> {
        let mut buf = Self::with_capacity(len)?;
        buf.len = len;
        Ok(buf)
    }

    /// Number of bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no bytes are held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that fit without growing.
    pub fn capacity(&self) -> usize {
        self.pages.as_ref().map_or(0, |p| p.cap)
    }

    /// True if every page of this buffer is locked in RAM (vacuously true when empty).
    pub fn locked(&self) -> bool {
        self.pages.as_ref().is_none_or(|p| p.locked)
    }

    /// True if the pages are excluded from core dumps (vacuously true when empty).
    pub fn dump_excluded(&self) -> bool {
        self.pages.as_ref().is_none_or(|p| p.dump_excluded)
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        match &self.pages {
            Some(p) => &p.as_slice()[..self.len],
            None => &[],
        }
    }

    /// The bytes held, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        match &mut self.pages {
            Some(p) => &mut p.as_mut_slice()[..len],
            None => &mut [],
        }
    }

    /// Make room for `additional` more bytes: a new mapping, a copy, and the old one wiped.
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        let needed = self
            .len
            .checked_add(additional)
            .ok_or(Error::Internal("secret buffer size overflow"))?;
        if needed <= self.capacity() {
            return Ok(());
        }
        let new_cap = needed.max(self.capacity().saturating_mul(2));
        let mut pages = Pages::new(new_cap, self.lock)?;
        pages.as_mut_slice()[..self.len].copy_from_slice(self.as_slice());
        // The old mapping is wiped and unmapped by its Drop.
        self.pages = Some(pages);
        Ok(())
    }

    /// Append bytes, growing (safely) if needed.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<()> {
        self.reserve(data.len())?;
        let start = self.len;
        if let Some(p) = &mut self.pages {
            p.as_mut_slice()[start..start + data.len()].copy_from_slice(data);
        }
        self.len += data.len();
        Ok(())
    }

    /// Append one byte.
    pub fn push(&mut self, byte: u8) -> Result<()> {
        self.extend_from_slice(&[byte])
    }

    /// Shorten to `len` bytes, wiping the bytes cut off.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            if let Some(p) = &mut self.pages {
                p.as_mut_slice()[len..self.len].zeroize();
            }
            self.len = len;
        }
    }

    /// Set the length to `len` (at most the capacity); new bytes are zero.
    pub fn resize_zeroed(&mut self, len: usize) -> Result<()> {
        if len <= self.len {
            self.truncate(len);
            return Ok(());
        }
        self.reserve(len - self.len)?;
        self.len = len;
        Ok(())
    }

    /// Wipe the contents now and set the length to zero (the pages stay mapped).
    pub fn clear(&mut self) {
        if let Some(p) = &mut self.pages {
            p.as_mut_slice().zeroize();
        }
        self.len = 0;
    }

    /// Wipe the contents and release the pages now.
    pub fn release(&mut self) {
        self.pages = None;
        self.len = 0;
    }
}

impl Zeroize for SecretBuf {
    fn zeroize(&mut self) {
        self.clear();
    }
}

impl std::fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBuf({} bytes, redacted)", self.len)
    }
}

/// What this process can actually get from the kernel for secret memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// `mlock` of a fresh page succeeded.
    pub locking: bool,
    /// `MADV_DONTDUMP` of a fresh page succeeded.
    pub dump_exclusion: bool,
    /// Zeroing on drop (always: done by this crate, not by the OS).
    pub zeroing: bool,
    /// The soft `RLIMIT_MEMLOCK` in bytes (`None` = unlimited).
    pub memlock_limit: Option<u64>,
    /// Page size in bytes.
    pub page_size: usize,
}

/// Probe what protection a new secret buffer gets on this machine, by making one.
pub fn probe() -> Result<Protection> {
    let buf = SecretBuf::with_capacity(1)?;
    Ok(Protection {
        locking: buf.locked(),
        dump_exclusion: buf.dump_excluded(),
        zeroing: true,
        memlock_limit: memlock_limit(),
        page_size: page_size(),
    })
}

#[cfg(not(unix))]
fn memlock_limit() -> Option<u64> {
    None
}

#[cfg(unix)]
fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    Some(lim.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_keeps_contents() {
        let mut b = SecretBuf::with_capacity(3).unwrap();
        for i in 0..10_000u32 {
            b.push((i % 251) as u8).unwrap();
        }
        assert_eq!(b.len(), 10_000);
        assert!(b
            .as_slice()
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (i % 251) as u8));
        assert_eq!(b.capacity() % page_size(), 0);
    }

    #[test]
    fn truncate_wipes_tail() {
        let mut b = SecretBuf::from_slice(b"secret!").unwrap();
        b.truncate(2);
        assert_eq!(b.as_slice(), b"se");
        b.resize_zeroed(7).unwrap();
        assert_eq!(b.as_slice(), b"se\0\0\0\0\0");
    }

    #[test]
    fn empty_buffer_has_no_pages() {
        let b = SecretBuf::with_capacity(0).unwrap();
        assert!(b.is_empty());
        assert_eq!(b.as_slice(), b"");
        assert!(b.locked());
    }

    #[test]
    fn debug_redacts() {
        let b = SecretBuf::from_slice(b"hunter2").unwrap();
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    #[test]
    fn probe_reports_page_size() {
        let p = probe().unwrap();
        assert!(p.page_size >= 4096);
        assert!(p.zeroing);
    }
}
