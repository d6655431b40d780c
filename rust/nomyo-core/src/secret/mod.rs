//! Page-aligned native buffers for plaintext and symmetric keys.
//!
//! A [`SecretBuf`] owns its own anonymous memory mapping, so its bytes never share a page
//! with anything else and are never moved by an allocator. On creation it asks the kernel to
//! keep the pages in RAM (`mlock`) and out of core dumps (`MADV_DONTDUMP`); both are best
//! effort and reported truthfully by [`SecretBuf::locked`] and [`SecretBuf::dump_excluded`].
//! On Linux the pages are also marked `MADV_WIPEONFORK`, so a forked child sees zeros rather
//! than a copy of the secrets ([`SecretBuf::wipe_on_fork`]).
//! The contents are zeroed (with writes the compiler cannot elide) before the pages are
//! released. Growing never reallocates in place: a new mapping is taken, the bytes copied,
//! and the old mapping wiped and released.
//!
//! Released mappings go to a small bounded pool (module `pool` below) after the wipe, so that the
//! next buffer reuses pages that are already faulted in, locked and dump-excluded instead of
//! paying mmap + mlock + munlock + munmap (and a page fault per page) every time. Only the
//! bytes that were ever written are wiped (a high-water mark), so a large mapping that held a
//! small secret costs a small wipe; every byte past the mark is zero by construction.
//!
//! How hard a buffer insists on locked pages is its [`Policy`], taken from the calling
//! thread ([`with_policy`]) when the buffer is made: best effort by default, or
//! [`Policy::Require`], under which a mapping that cannot be locked and dump-excluded is
//! refused ([`Error::Memory`], with the bytes needed and the limit) before a byte is written
//! to it. What every buffer actually got is counted ([`stats`], relaxed atomics).

mod counters;
mod limits;
mod pages;
mod policy;
mod pool;
mod probe;
mod region;
mod report;
mod scrub;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering::Relaxed;

use zeroize::Zeroize;

pub use self::counters::Stats;
pub use self::limits::{has_ipc_lock_capability, memlock_hard_limit, memlock_limit, page_size};
use self::pages::{size_class, Pages};
pub use self::policy::{policy, secret_step, with_policy, Policy};
pub use self::probe::{
    largest_lockable_request, lockable_now, locked_now, probe, request_peak, Protection,
};
pub use self::region::{disable_core_dumps, lock_region, unlock_region};
pub use self::report::{level, report, Report};
pub use self::scrub::scrub;
pub use crate::error::Shortfall;
use crate::error::{Error, Result};

/// The counters now.
pub fn stats() -> Stats {
    use counters::*;
    let pooled_locked = pool::locked_bytes() as u64;
    Stats {
        buffers_locked: BUFFERS_LOCKED.load(Relaxed),
        buffers_not_locked: BUFFERS_NOT_LOCKED.load(Relaxed),
        buffers_unlocked_by_choice: BUFFERS_UNLOCKED_BY_CHOICE.load(Relaxed),
        buffers_not_dump_excluded: BUFFERS_NOT_DUMP_EXCLUDED.load(Relaxed),
        bytes_locked: BYTES_LOCKED.load(Relaxed),
        bytes_not_locked: BYTES_NOT_LOCKED.load(Relaxed),
        lock_failures: LOCK_FAILURES.load(Relaxed),
        dump_exclusion_failures: DUMP_EXCLUSION_FAILURES.load(Relaxed),
        refused: REFUSED.load(Relaxed),
        locked_now: LOCKED_NOW.load(Relaxed),
        pooled_locked,
    }
}

/// Get a zeroed mapping of at least `min_cap` bytes: from the pool, or freshly mapped.
/// Under [`Policy::Require`], a mapping that is not locked and dump-excluded is never
/// returned (nothing has been written to it: it is released untouched).
fn acquire(min_cap: usize, policy: Policy) -> Result<Pages> {
    let class = size_class(min_cap);
    let lock = policy != Policy::Off;
    let pages = match pool::take(min_cap, class, lock) {
        Some(p) if policy == Policy::Require && !p.locked => {
            // A pooled mapping that could not be locked: back to the pool, and a fresh one
            // (which evicts the pool's locked pages if that makes the room).
            pool::release(p);
            pool::fresh(class, true, true)?
        }
        Some(p) => p,
        None => pool::fresh(class, lock, true)?,
    };
    if policy == Policy::Require && !(pages.locked && pages.dump_excluded) {
        counters::REFUSED.fetch_add(1, Relaxed);
        let shortfall = Shortfall {
            needed: pages.cap as u64,
            limit: memlock_limit(),
            locked: locked_now(),
            dump_exclusion_failed: pages.locked,
        };
        drop(pages);
        return Err(Error::Memory(shortfall));
    }
    let cap = pages.cap as u64;
    if !lock {
        counters::BUFFERS_UNLOCKED_BY_CHOICE.fetch_add(1, Relaxed);
    } else if pages.locked {
        counters::BUFFERS_LOCKED.fetch_add(1, Relaxed);
        counters::BYTES_LOCKED.fetch_add(cap, Relaxed);
    } else {
        counters::BUFFERS_NOT_LOCKED.fetch_add(1, Relaxed);
        counters::BYTES_NOT_LOCKED.fetch_add(cap, Relaxed);
    }
    if !pages.dump_excluded {
        counters::BUFFERS_NOT_DUMP_EXCLUDED.fetch_add(1, Relaxed);
    }
    Ok(pages)
}

/// A growable byte buffer for secrets, in locked, dump-excluded pages, zeroed on drop.
pub struct SecretBuf {
    pages: Option<Pages>,
    len: usize,
    policy: Policy,
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        if let Some(p) = self.pages.take() {
            pool::release(p);
        }
    }
}

impl SecretBuf {
    /// An empty buffer that will hold at least `capacity` bytes without growing, under the
    /// calling thread's [`policy`].
    pub fn with_capacity(capacity: usize) -> Result<Self> {
        Self::with_capacity_in(capacity, policy())
    }

    /// As [`SecretBuf::with_capacity`], choosing whether to try `mlock` (`true`: the calling
    /// thread's [`policy`]; `false`: [`Policy::Off`]).
    pub fn with_capacity_and_lock(capacity: usize, lock: bool) -> Result<Self> {
        Self::with_capacity_in(capacity, if lock { policy() } else { Policy::Off })
    }

    /// As [`SecretBuf::with_capacity`], under `policy` (which the buffer keeps when it grows).
    pub fn with_capacity_in(capacity: usize, policy: Policy) -> Result<Self> {
        let pages = if capacity == 0 {
            None
        } else {
            Some(acquire(capacity, policy)?)
        };
        Ok(SecretBuf {
            pages,
            len: 0,
            policy,
        })
    }

    /// The policy this buffer's mappings are made under.
    pub fn policy(&self) -> Policy {
        self.policy
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
        buf.resize_zeroed(len)?;
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

    /// True if a forked child gets these pages zero-filled (`MADV_WIPEONFORK`; vacuously
    /// true when empty).
    pub fn wipe_on_fork(&self) -> bool {
        self.pages.as_ref().is_none_or(|p| p.wipe_on_fork)
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        match &self.pages {
            Some(p) => p.slice(self.len),
            None => &[],
        }
    }

    /// The bytes held, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        match &mut self.pages {
            Some(p) => p.range_mut(0, len),
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
        let mut pages = acquire(new_cap, self.policy)?;
        pages
            .range_mut(0, self.len)
            .copy_from_slice(self.as_slice());
        // The old mapping is wiped before it is unmapped or pooled.
        if let Some(old) = self.pages.replace(pages) {
            pool::release(old);
        }
        Ok(())
    }

    /// Append bytes, growing (safely) if needed.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<()> {
        self.spare(data.len())?.copy_from_slice(data);
        self.len += data.len();
        Ok(())
    }

    /// The `n` bytes just past the end (growing if needed), marked dirty; not yet counted.
    fn spare(&mut self, n: usize) -> Result<&mut [u8]> {
        self.reserve(n)?;
        let start = self.len;
        Ok(match &mut self.pages {
            Some(p) => p.range_mut(start, start + n),
            None => &mut [],
        })
    }

    /// Append one byte.
    pub fn push(&mut self, byte: u8) -> Result<()> {
        self.extend_from_slice(&[byte])
    }

    /// Shorten to `len` bytes, wiping the bytes cut off.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let old = self.len;
            if let Some(p) = &mut self.pages {
                p.range_mut(len, old).zeroize();
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
        if let Some(p) = &mut self.pages {
            // Bytes past the old length are already zero (the type's invariant).
            p.touch(len);
        }
        self.len = len;
        Ok(())
    }

    /// Wipe the contents now and set the length to zero (the pages stay mapped).
    pub fn clear(&mut self) {
        if let Some(p) = &mut self.pages {
            p.wipe();
        }
        self.len = 0;
    }

    /// Wipe the contents and release the pages now.
    pub fn release(&mut self) {
        if let Some(p) = self.pages.take() {
            pool::release(p);
        }
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
