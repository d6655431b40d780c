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

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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

/// How hard a secret buffer insists on locked, dump-excluded pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Do not lock the pages (they are still dump-excluded where possible, and zeroed).
    Off,
    /// Lock when the OS allows; otherwise carry on with unlocked pages (and count them).
    #[default]
    BestEffort,
    /// Refuse ([`Error::Memory`]) a mapping that cannot be locked and dump-excluded, before
    /// anything is written to it.
    Require,
}

impl Policy {
    /// `"off"`, `"best_effort"` or `"require"`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "off" => Some(Policy::Off),
            "best_effort" => Some(Policy::BestEffort),
            "require" => Some(Policy::Require),
            _ => None,
        }
    }

    /// The name [`Policy::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Off => "off",
            Policy::BestEffort => "best_effort",
            Policy::Require => "require",
        }
    }
}

thread_local! {
    static POLICY: Cell<Policy> = const { Cell::new(Policy::BestEffort) };
}

/// The policy of buffers made on this thread now.
pub fn policy() -> Policy {
    POLICY.with(Cell::get)
}

/// Run `f` with buffers made on this thread under `policy` (restored afterwards, also on
/// panic). Buffers keep the policy they were made with when they grow later.
pub fn with_policy<T>(policy: Policy, f: impl FnOnce() -> T) -> T {
    struct Restore(Policy);
    impl Drop for Restore {
        fn drop(&mut self) {
            POLICY.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(POLICY.with(|p| p.replace(policy)));
    f()
}

/// Why [`Policy::Require`] refused a secret buffer: what it needed and what the limit is.
/// Holds sizes only, never contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// Bytes of the mapping that could not be locked (whole pages).
    pub needed: u64,
    /// The soft `RLIMIT_MEMLOCK` in bytes (`None` = unlimited).
    pub limit: Option<u64>,
    /// Bytes this process had locked when it was refused.
    pub locked: u64,
    /// The pages were locked but could not be excluded from core dumps.
    pub dump_exclusion_failed: bool,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dump_exclusion_failed {
            return write!(
                f,
                "secure_memory='require': a secret buffer of {} bytes could not be excluded \
                 from core dumps (madvise MADV_DONTDUMP failed on this platform); nothing was \
                 written to it or sent",
                self.needed
            );
        }
        let limit = match self.limit {
            Some(l) => format!("{l} bytes"),
            None => "unlimited".to_owned(),
        };
        write!(
            f,
            "secure_memory='require': a secret buffer of {} bytes could not be locked in RAM \
             (RLIMIT_MEMLOCK is {limit}, {} bytes already locked by this process); nothing was \
             written to it or sent. Raise the limit (`ulimit -l unlimited`, \
             `docker run --ulimit memlock=-1:-1`, LimitMEMLOCK=infinity for systemd) or grant \
             CAP_IPC_LOCK; `nomyo doctor --size BYTES` checks a request size",
            self.needed, self.locked
        )
    }
}

/// Counters since the process started (relaxed atomics: cheap, each exact on its own).
mod counters {
    use super::AtomicU64;

    pub(super) static BUFFERS_LOCKED: AtomicU64 = AtomicU64::new(0);
    pub(super) static BUFFERS_NOT_LOCKED: AtomicU64 = AtomicU64::new(0);
    pub(super) static BUFFERS_UNLOCKED_BY_CHOICE: AtomicU64 = AtomicU64::new(0);
    pub(super) static BUFFERS_NOT_DUMP_EXCLUDED: AtomicU64 = AtomicU64::new(0);
    pub(super) static BYTES_LOCKED: AtomicU64 = AtomicU64::new(0);
    pub(super) static BYTES_NOT_LOCKED: AtomicU64 = AtomicU64::new(0);
    pub(super) static LOCK_FAILURES: AtomicU64 = AtomicU64::new(0);
    pub(super) static DUMP_EXCLUSION_FAILURES: AtomicU64 = AtomicU64::new(0);
    pub(super) static REFUSED: AtomicU64 = AtomicU64::new(0);
    /// Bytes of secret mappings locked right now (live and pooled).
    pub(super) static LOCKED_NOW: AtomicU64 = AtomicU64::new(0);
}

/// What the secret buffers of this process actually got, since it started.
///
/// A "buffer" here is one mapping handed to a [`SecretBuf`] (a buffer that grows takes a new
/// one each time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Mappings that were to be locked and were.
    pub buffers_locked: u64,
    /// Mappings that were to be locked but were not (best effort carried on without).
    pub buffers_not_locked: u64,
    /// Mappings made with [`Policy::Off`] (not locked by choice).
    pub buffers_unlocked_by_choice: u64,
    /// Mappings handed out that are not excluded from core dumps.
    pub buffers_not_dump_excluded: u64,
    /// Bytes of the locked mappings, summed.
    pub bytes_locked: u64,
    /// Bytes of the mappings that were to be locked but were not, summed.
    pub bytes_not_locked: u64,
    /// `mlock` calls that failed (a retry after evicting the pool counts again).
    pub lock_failures: u64,
    /// `madvise(MADV_DONTDUMP)` calls that failed.
    pub dump_exclusion_failures: u64,
    /// Mappings refused under [`Policy::Require`].
    pub refused: u64,
    /// Bytes of secret mappings locked now (live and pooled).
    pub locked_now: u64,
    /// Of those, bytes in the pool (given back when a new mapping needs the room).
    pub pooled_locked: u64,
}

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

fn round_up(n: usize) -> usize {
    let page = page_size();
    n.div_ceil(page).max(1) * page
}

/// A mapping of whole pages. Bytes at and past `dirty` are always zero; `wipe` zeroes the rest.
struct Pages {
    ptr: NonNull<u8>,
    cap: usize,
    /// High-water mark: no byte at or past this offset was written since the last wipe.
    dirty: usize,
    locked: bool,
    dump_excluded: bool,
    /// `MADV_WIPEONFORK` succeeded: a forked child sees these pages as zeros.
    wipe_on_fork: bool,
}

// SAFETY: Pages exclusively owns its mapping; access is through &/&mut like a Vec.
unsafe impl Send for Pages {}
// SAFETY: shared references only read.
unsafe impl Sync for Pages {}

impl Pages {
    /// A fresh mapping of exactly `cap` bytes (a whole number of pages), zero-filled.
    /// `count`: record lock and dump-exclusion failures in the counters (not for probes).
    #[cfg(unix)]
    fn map(cap: usize, lock: bool, count: bool) -> Result<Self> {
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
        if lock
            && !pages.try_lock(count)
            && memlock_limit().is_none_or(|lim| cap as u64 <= lim)
            && pool::evict_locked()
        {
            // Pooled locked pages count against RLIMIT_MEMLOCK: give them back and retry,
            // so the pool never costs a live buffer its lock. (Not for a mapping larger than
            // the limit, which could never be locked anyway.)
            pages.try_lock(count);
        }
        Ok(pages)
    }

    /// Without mmap/mlock (Windows): page-aligned zeroed heap memory, wiped on drop; not locked.
    #[cfg(not(unix))]
    fn map(cap: usize, _lock: bool, _count: bool) -> Result<Self> {
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
    fn try_lock(&mut self, count: bool) -> bool {
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
    fn touch(&mut self, end: usize) {
        debug_assert!(end <= self.cap);
        self.dirty = self.dirty.max(end);
    }

    /// The first `len` bytes (at most the capacity).
    fn slice(&self, len: usize) -> &[u8] {
        assert!(len <= self.cap);
        // SAFETY: the mapping is cap bytes, readable, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }

    /// Bytes `start..end`, writable; marks them dirty.
    fn range_mut(&mut self, start: usize, end: usize) -> &mut [u8] {
        assert!(start <= end && end <= self.cap);
        self.touch(end);
        // SAFETY: in bounds of the mapping, which self owns exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), end - start) }
    }

    /// Zero every byte that may have been written (with writes the compiler cannot elide).
    /// Afterwards the whole mapping is zero.
    fn wipe(&mut self) {
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
fn size_class(n: usize) -> usize {
    let page = page_size();
    let n = n.max(1);
    if n <= 64 << 10 {
        return round_up(n);
    }
    let step = (n.checked_next_power_of_two().unwrap_or(n) / 32).max(page);
    n.div_ceil(step).saturating_mul(step)
}

/// A small process-wide pool of released mappings, so that buffers reuse pages (already
/// faulted in, locked and dump-excluded) instead of mmap + mlock + munlock + munmap each time.
///
/// Every mapping is wiped before it enters the pool, so a pooled page never holds a secret and
/// a mapping taken from the pool is all zero, like a fresh one. The pool is bounded (entries,
/// bytes, a single mapping's size, and at most half of `RLIMIT_MEMLOCK` in locked pages), uses
/// `try_lock` only (never blocks, never deadlocks in a forked child), and is discarded in a
/// child after `fork` (memory locks are not inherited).
mod pool {
    use std::sync::Mutex;

    use super::Pages;

    /// Most mappings kept.
    pub(super) const MAX_ENTRIES: usize = 16;
    /// Most bytes kept, all mappings together.
    pub(super) const MAX_BYTES: usize = 32 << 20;
    /// Largest single mapping kept.
    pub(super) const MAX_ENTRY: usize = 16 << 20;

    pub(super) struct Pool {
        pid: u32,
        pub(super) entries: Vec<Pages>,
        pub(super) bytes: usize,
        pub(super) locked_bytes: usize,
    }

    pub(super) static POOL: Mutex<Pool> = Mutex::new(Pool {
        pid: 0,
        entries: Vec::new(),
        bytes: 0,
        locked_bytes: 0,
    });

    /// Most bytes of locked mappings kept: half of `RLIMIT_MEMLOCK`, so pooled pages leave
    /// room for live ones (and a failed `mlock` of a new mapping evicts them anyway), or the
    /// whole pool when the limit does not apply (unlimited, or `CAP_IPC_LOCK`).
    fn locked_budget() -> usize {
        static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *BUDGET.get_or_init(|| match super::memlock_limit() {
            Some(_) if super::has_ipc_lock_capability() => MAX_BYTES,
            Some(lim) => usize::try_from(lim / 2).unwrap_or(MAX_BYTES).min(MAX_BYTES),
            None => MAX_BYTES,
        })
    }

    impl Pool {
        /// Drop everything if this is a forked child (its copies are not locked).
        fn check_pid(&mut self, out: &mut Vec<Pages>) {
            let pid = std::process::id();
            if self.pid != pid {
                for mut p in self.entries.drain(..) {
                    if p.locked {
                        // Locks are not inherited: the counter was the parent's.
                        super::counters::LOCKED_NOW
                            .fetch_sub(p.cap as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    p.locked = false;
                    out.push(p);
                }
                self.bytes = 0;
                self.locked_bytes = 0;
                self.pid = pid;
            }
        }

        fn remove(&mut self, i: usize) -> Pages {
            let p = self.entries.remove(i);
            self.bytes -= p.cap;
            if p.locked {
                self.locked_bytes -= p.cap;
            }
            p
        }
    }

    /// A pooled mapping of at least `need` bytes (and not wastefully larger), if any.
    pub(super) fn take(need: usize, class: usize, lock: bool) -> Option<Pages> {
        let mut discard = Vec::new();
        let taken = {
            let mut pool = POOL.try_lock().ok()?;
            pool.check_pid(&mut discard);
            let limit = class.saturating_mul(2).max(64 << 10);
            // A request that asked not to lock does not take locked memory (it would use up
            // RLIMIT_MEMLOCK for a caller that opted out); a locking request prefers locked
            // mappings; then the smallest that fits.
            let best = pool
                .entries
                .iter()
                .enumerate()
                .filter(|(_, p)| p.cap >= need && p.cap <= limit && (lock || !p.locked))
                .min_by_key(|(_, p)| (lock && !p.locked, p.cap))
                .map(|(i, _)| i);
            best.map(|i| pool.remove(i))
        };
        drop(discard);
        let mut p = taken?;
        debug_assert_eq!(p.dirty, 0);
        if lock {
            p.try_lock(true);
        }
        Some(p)
    }

    /// Bytes of locked mappings in the pool now (0 while another thread holds the pool, or
    /// in a forked child, whose copies are not locked).
    pub(super) fn locked_bytes() -> usize {
        POOL.try_lock()
            .ok()
            .filter(|pool| pool.pid == std::process::id())
            .map_or(0, |pool| pool.locked_bytes)
    }

    /// Wipe `pages` and keep them for reuse if the pool has room; otherwise unmap them.
    pub(super) fn release(mut pages: Pages) {
        pages.wipe();
        if pages.cap > MAX_ENTRY {
            return; // dropped: unlocked and unmapped
        }
        let mut discard = Vec::new();
        if let Ok(mut pool) = POOL.try_lock() {
            pool.check_pid(&mut discard);
            let locked = pages.locked;
            if !locked || pages.cap <= locked_budget() {
                // Make room by dropping the oldest mappings (the oldest locked ones first
                // when it is the locked budget that is short).
                while locked && pool.locked_bytes + pages.cap > locked_budget() {
                    let Some(i) = pool.entries.iter().position(|p| p.locked) else {
                        break;
                    };
                    let old = pool.remove(i);
                    discard.push(old);
                }
                while !pool.entries.is_empty()
                    && (pool.entries.len() >= MAX_ENTRIES || pool.bytes + pages.cap > MAX_BYTES)
                {
                    let old = pool.remove(0);
                    discard.push(old);
                }
                pool.bytes += pages.cap;
                if locked {
                    pool.locked_bytes += pages.cap;
                }
                pool.entries.push(pages);
            } else {
                discard.push(pages);
            }
        } else {
            discard.push(pages);
        }
        // Unmapped here, outside the lock.
        drop(discard);
    }

    /// Drop every locked pooled mapping (to free RLIMIT_MEMLOCK); true if any was dropped.
    pub(super) fn evict_locked() -> bool {
        let mut discard = Vec::new();
        if let Ok(mut pool) = POOL.try_lock() {
            let mut i = 0;
            while i < pool.entries.len() {
                if pool.entries[i].locked {
                    let p = pool.remove(i);
                    discard.push(p);
                } else {
                    i += 1;
                }
            }
        }
        !discard.is_empty()
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
            Pages::map(class, true, true)?
        }
        Some(p) => p,
        None => Pages::map(class, lock, true)?,
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

/// Bytes of stack below the caller that [`scrub`] zeroes.
const SCRUB_STACK: usize = 16 << 10;

/// Wipe the copies of secrets that moving them leaves outside secret buffers on this thread:
/// the vector registers, which copying and AES-GCM go through and which are later saved to the
/// stack (by the dynamic linker's lazy binding, `_dl_runtime_resolve_xsave`, and by signal
/// delivery) where a core dump finds them; and 16 KiB of stack below the caller, where the
/// secret operation's callees ran. Call it where a secret operation returns to code that does
/// not handle secrets (about a microsecond).
#[inline(never)]
pub fn scrub() {
    scrub_stack();
    clear_vector_registers();
}

#[inline(never)]
fn scrub_stack() {
    let mut area = [0u64; SCRUB_STACK / 8];
    // Volatile writes: the compiler cannot drop them although `area` is never read.
    area.zeroize();
    std::hint::black_box(&mut area);
}

/// Zero every vector register (`vzeroall`, and zmm16-31 with AVX-512; a CPU with AVX-512F but
/// not VL, the first Xeon Phi only, keeps zmm16-31).
#[cfg(target_arch = "x86_64")]
fn clear_vector_registers() {
    // EVEX-encoded 128-bit writes zero the whole zmm register (bits 128-511 too) without a
    // 512-bit instruction, which would lower the clock of some Intel CPUs for a while.
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn avx512() {
        // SAFETY: only zeroes registers, all of them declared clobbered (the C ABI's
        // caller-saved set includes every vector register).
        unsafe {
            std::arch::asm!(
                "vzeroall",
                "vpxord xmm16, xmm16, xmm16",
                "vpxord xmm17, xmm17, xmm17",
                "vpxord xmm18, xmm18, xmm18",
                "vpxord xmm19, xmm19, xmm19",
                "vpxord xmm20, xmm20, xmm20",
                "vpxord xmm21, xmm21, xmm21",
                "vpxord xmm22, xmm22, xmm22",
                "vpxord xmm23, xmm23, xmm23",
                "vpxord xmm24, xmm24, xmm24",
                "vpxord xmm25, xmm25, xmm25",
                "vpxord xmm26, xmm26, xmm26",
                "vpxord xmm27, xmm27, xmm27",
                "vpxord xmm28, xmm28, xmm28",
                "vpxord xmm29, xmm29, xmm29",
                "vpxord xmm30, xmm30, xmm30",
                "vpxord xmm31, xmm31, xmm31",
                clobber_abi("C"),
                options(nostack, nomem, preserves_flags),
            );
        }
    }
    #[target_feature(enable = "avx")]
    unsafe fn avx() {
        // SAFETY: as above.
        unsafe {
            std::arch::asm!(
                "vzeroall",
                clobber_abi("C"),
                options(nostack, nomem, preserves_flags)
            );
        }
    }
    fn sse() {
        // SAFETY: as above.
        unsafe {
            std::arch::asm!(
                "xorps xmm0, xmm0",
                "xorps xmm1, xmm1",
                "xorps xmm2, xmm2",
                "xorps xmm3, xmm3",
                "xorps xmm4, xmm4",
                "xorps xmm5, xmm5",
                "xorps xmm6, xmm6",
                "xorps xmm7, xmm7",
                "xorps xmm8, xmm8",
                "xorps xmm9, xmm9",
                "xorps xmm10, xmm10",
                "xorps xmm11, xmm11",
                "xorps xmm12, xmm12",
                "xorps xmm13, xmm13",
                "xorps xmm14, xmm14",
                "xorps xmm15, xmm15",
                clobber_abi("C"),
                options(nostack, nomem, preserves_flags),
            );
        }
    }
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: the CPU has AVX-512F and AVX-512VL.
        unsafe { avx512() }
    } else if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX.
        unsafe { avx() }
    } else {
        sse();
    }
}

/// Other architectures: the stack is scrubbed, the registers are not (yet).
#[cfg(not(target_arch = "x86_64"))]
fn clear_vector_registers() {}

/// What this process can actually get from the kernel for secret memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// `mlock` of a fresh page succeeded.
    pub locking: bool,
    /// `MADV_DONTDUMP` of a fresh page succeeded.
    pub dump_exclusion: bool,
    /// `MADV_WIPEONFORK` of a fresh page succeeded (forked children see zeros).
    pub wipe_on_fork: bool,
    /// Zeroing on drop (always: done by this crate, not by the OS).
    pub zeroing: bool,
    /// The soft `RLIMIT_MEMLOCK` in bytes (`None` = unlimited).
    pub memlock_limit: Option<u64>,
    /// The hard `RLIMIT_MEMLOCK` in bytes (`None` = unlimited): how far an unprivileged
    /// process may raise the soft one itself.
    pub memlock_hard_limit: Option<u64>,
    /// `CAP_IPC_LOCK` is in the effective set (then the limit does not bound `mlock`).
    pub ipc_lock_capability: bool,
    /// Bytes this process has locked now (all of it, not only secret buffers).
    pub locked_now: u64,
    /// Bytes more that secret buffers can lock now (the pool's locked pages included, which
    /// are given back on demand); `None` = not bounded.
    pub lockable_now: Option<u64>,
    /// Page size in bytes.
    pub page_size: usize,
}

/// Probe what protection a new secret buffer gets on this machine, by mapping one page (not
/// counted in [`stats`], not pooled).
pub fn probe() -> Result<Protection> {
    let page = Pages::map(page_size(), true, false)?;
    let (locking, dump_exclusion, wipe_on_fork) =
        (page.locked, page.dump_excluded, page.wipe_on_fork);
    drop(page); // not counted in what is locked now
    Ok(Protection {
        locking,
        dump_exclusion,
        wipe_on_fork,
        zeroing: true,
        memlock_limit: memlock_limit(),
        memlock_hard_limit: memlock_hard_limit(),
        ipc_lock_capability: has_ipc_lock_capability(),
        locked_now: locked_now(),
        lockable_now: lockable_now(),
        page_size: page_size(),
    })
}

/// Bytes this process has locked now: the kernel's `VmLck` on Linux, else what secret buffers
/// hold locked.
pub fn locked_now() -> u64 {
    #[cfg(target_os = "linux")]
    if let Some(kb) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmLck:"))?;
            line["VmLck:".len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    {
        return kb * 1024;
    }
    counters::LOCKED_NOW.load(Relaxed)
}

/// Bytes more that secret buffers can lock now (the pool's locked pages count as free, as a
/// new mapping takes their room); `None` when not bounded (unlimited, or `CAP_IPC_LOCK`).
pub fn lockable_now() -> Option<u64> {
    let limit = memlock_limit()?;
    if has_ipc_lock_capability() {
        return None;
    }
    let pooled = pool::locked_bytes() as u64;
    Some((limit + pooled).saturating_sub(locked_now()))
}

/// Locked bytes that a request of `n` JSON bytes needs at its peak, when the request is mostly
/// one string (a chat message), in any script: the native JSON writer reserves each string's
/// exact escaped UTF-8 size, so its output grows once, from its first 4 KiB to `n` (both
/// mappings held while it is copied), and the AES key takes a page. Its echoed reply needs
/// less (its size and the key's page, once). Text spread over many large strings can need up
/// to half as much again (the output then grows by doubling).
pub fn request_peak(n: usize) -> usize {
    size_class(4096)
        .saturating_add(size_class(n))
        .saturating_add(page_size())
}

/// The largest request (JSON bytes, per [`request_peak`]) whose secret buffers can all be
/// locked now; `None` when not bounded.
pub fn largest_lockable_request() -> Option<u64> {
    let room = usize::try_from(lockable_now()?).unwrap_or(usize::MAX);
    if request_peak(1) > room {
        return Some(0);
    }
    // request_peak is non-decreasing: the largest n with request_peak(n) <= room.
    let (mut lo, mut hi) = (1usize, room.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if request_peak(mid) <= room {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo as u64)
}

/// True if this process has `CAP_IPC_LOCK` in its effective set (then `RLIMIT_MEMLOCK` does
/// not bound `mlock`).
#[cfg(target_os = "linux")]
pub fn has_ipc_lock_capability() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Always false off Linux (no capabilities to read).
#[cfg(not(target_os = "linux"))]
pub fn has_ipc_lock_capability() -> bool {
    false
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`None` = unlimited or unknown).
#[cfg(not(unix))]
pub fn memlock_limit() -> Option<u64> {
    None
}

/// The hard `RLIMIT_MEMLOCK` in bytes (`None` = unlimited or unknown).
#[cfg(not(unix))]
pub fn memlock_hard_limit() -> Option<u64> {
    None
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`None` = unlimited).
#[cfg(unix)]
pub fn memlock_limit() -> Option<u64> {
    memlock_rlimit().0
}

/// The hard `RLIMIT_MEMLOCK` in bytes (`None` = unlimited).
#[cfg(unix)]
pub fn memlock_hard_limit() -> Option<u64> {
    memlock_rlimit().1
}

#[cfg(unix)]
fn memlock_rlimit() -> (Option<u64>, Option<u64>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return (None, None);
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    let bytes = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v as u64);
    (bytes(lim.rlim_cur), bytes(lim.rlim_max))
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

    /// Every pooled mapping is all zero, over its whole capacity.
    fn pool_all_zero() -> bool {
        let pool = pool::POOL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pool.entries
            .iter()
            .all(|p| p.dirty == 0 && p.slice(p.cap).iter().all(|&b| b == 0))
    }

    /// Bookkeeping of the pool matches its entries and respects its bounds.
    fn pool_consistent() -> bool {
        let pool = pool::POOL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bytes: usize = pool.entries.iter().map(|p| p.cap).sum();
        let locked: usize = pool
            .entries
            .iter()
            .filter(|p| p.locked)
            .map(|p| p.cap)
            .sum();
        bytes == pool.bytes
            && locked == pool.locked_bytes
            && pool.entries.len() <= pool::MAX_ENTRIES
            && bytes <= pool::MAX_BYTES
            && pool.entries.iter().all(|p| p.cap <= pool::MAX_ENTRY)
    }

    #[test]
    fn pooled_pages_come_back_zeroed() {
        for round in 0..50usize {
            let size = 1 + (round * 7919) % (300 << 10);
            let mut b = SecretBuf::with_capacity(size).unwrap();
            let cap = b.capacity();
            // Fill the whole capacity, not just what was asked for.
            b.resize_zeroed(cap).unwrap();
            b.as_mut_slice().fill(0xA5);
            let addr = b.as_slice().as_ptr() as usize;
            drop(b);
            assert!(pool_all_zero());
            // Whatever mapping comes next (pooled or fresh) is zero over its whole capacity.
            let mut c = SecretBuf::zeroed(size).unwrap();
            let ccap = c.capacity();
            c.resize_zeroed(ccap).unwrap();
            assert!(c.as_slice().iter().all(|&v| v == 0), "round {round}");
            let _ = addr;
        }
        assert!(pool_consistent());
    }

    #[test]
    fn pool_reuses_released_mapping() {
        // Probabilistic under parallel tests; the size is unusual so others rarely take it.
        let size = 777 * 1024 + 5;
        let mut reused = false;
        for _ in 0..20 {
            let mut b = SecretBuf::from_slice(&vec![0x5Au8; size]).unwrap();
            b.as_mut_slice()[0] = 1;
            let addr = b.as_slice().as_ptr() as usize;
            drop(b);
            let c = SecretBuf::zeroed(size).unwrap();
            assert!(c.as_slice().iter().all(|&v| v == 0));
            if c.as_slice().as_ptr() as usize == addr {
                reused = true;
                break;
            }
        }
        assert!(reused, "a released mapping was never reused");
    }

    #[test]
    fn clear_and_truncate_keep_tail_zero() {
        let mut b = SecretBuf::from_slice(&[7u8; 5000]).unwrap();
        b.truncate(10);
        b.resize_zeroed(5000).unwrap();
        assert!(b.as_slice()[10..].iter().all(|&v| v == 0));
        b.clear();
        let cap = b.capacity();
        b.resize_zeroed(cap).unwrap();
        assert!(b.as_slice().iter().all(|&v| v == 0));
    }

    #[test]
    fn growth_wipes_old_mapping() {
        let mut b = SecretBuf::with_capacity(1).unwrap();
        let mut expect = Vec::new();
        for i in 0..200_000u32 {
            let v = (i % 253) as u8 | 1;
            b.push(v).unwrap();
            expect.push(v);
            if i.is_power_of_two() {
                // Every mapping left behind by growth so far is wiped (pooled ones are
                // checked byte by byte; unpooled ones were wiped and unmapped).
                assert!(pool_all_zero());
            }
        }
        assert_eq!(b.as_slice(), &expect[..]);
        drop(b);
        assert!(pool_all_zero());
        assert!(pool_consistent());
    }

    #[test]
    fn concurrent_use_of_the_pool() {
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for _ in 0..400 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let size = (x % (200 << 10)) as usize + 1;
                        let b = SecretBuf::zeroed(size).unwrap();
                        assert!(b.as_slice().iter().all(|&v| v == 0));
                        let mut b = b;
                        b.as_mut_slice().fill(t as u8 + 1);
                        b.extend_from_slice(&[0xEE; 100]).unwrap();
                        assert_eq!(b.len(), size + 100);
                        assert!(b.as_slice()[..size].iter().all(|&v| v == t as u8 + 1));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(pool_all_zero());
        assert!(pool_consistent());
    }

    #[test]
    fn unlocked_request_never_gets_locked_pages() {
        for _ in 0..20 {
            let b = SecretBuf::from_slice(&[1u8; 9000]).unwrap();
            drop(b);
            let c = SecretBuf::with_capacity_and_lock(9000, false).unwrap();
            assert!(!c.pages.as_ref().unwrap().locked);
        }
    }

    #[test]
    fn size_classes() {
        let page = page_size();
        assert_eq!(size_class(1), page);
        assert_eq!(size_class(64 << 10), 64 << 10);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), (1 << 20) + (64 << 10));
        assert_eq!(size_class((8 << 20) + 4096), (8 << 20) + (512 << 10));
        for n in [1usize, 4095, 4097, 65537, 1_000_000, 9_999_999] {
            let c = size_class(n);
            assert!(
                c >= n && c.is_multiple_of(page) && c <= n + n / 16 + page,
                "{n} -> {c}"
            );
        }
    }

    #[test]
    fn policy_is_scoped_to_the_thread_and_kept_by_the_buffer() {
        assert_eq!(policy(), Policy::BestEffort);
        let b = with_policy(Policy::Off, || {
            assert_eq!(policy(), Policy::Off);
            std::thread::spawn(policy).join().unwrap()
        });
        assert_eq!(b, Policy::BestEffort, "another thread keeps its own policy");
        assert_eq!(policy(), Policy::BestEffort, "restored");
        let mut buf = with_policy(Policy::Off, || SecretBuf::with_capacity(10).unwrap());
        assert_eq!(buf.policy(), Policy::Off);
        buf.extend_from_slice(&[1u8; 100_000]).unwrap();
        assert!(
            !buf.pages.as_ref().unwrap().locked,
            "grown under its own policy"
        );
        let r = std::panic::catch_unwind(|| with_policy(Policy::Require, || panic!("x")));
        assert!(r.is_err());
        assert_eq!(policy(), Policy::BestEffort, "restored after a panic");
        for p in [Policy::Off, Policy::BestEffort, Policy::Require] {
            assert_eq!(Policy::parse(p.as_str()), Some(p));
        }
        assert_eq!(Policy::parse("true"), None);
    }

    #[test]
    fn counters_count_buffers_by_what_they_got() {
        let before = stats();
        let a = SecretBuf::with_capacity_in(5000, Policy::BestEffort).unwrap();
        let b = SecretBuf::with_capacity_in(5000, Policy::Off).unwrap();
        let after = stats();
        let got = (after.buffers_locked - before.buffers_locked)
            + (after.buffers_not_locked - before.buffers_not_locked);
        assert!(got >= 1);
        assert!(after.buffers_unlocked_by_choice > before.buffers_unlocked_by_choice);
        if a.locked() {
            assert!(after.bytes_locked >= before.bytes_locked + a.capacity() as u64);
        }
        drop((a, b));
    }

    #[test]
    fn request_peak_bounds_what_a_request_needs() {
        let page = page_size();
        let mut last = 0;
        for n in [
            1usize,
            100,
            4096,
            4097,
            65_536,
            1 << 20,
            3 << 20,
            10_000_001,
        ] {
            let p = request_peak(n);
            assert!(p >= last, "non-decreasing");
            // At least the first output mapping, the output, and the key page.
            assert!(p >= 4096 + n + page, "{n} -> {p}");
            last = p;
        }
        assert_eq!(request_peak(1), 3 * page.max(4096) / page * page);
    }

    #[test]
    fn shortfall_names_sizes_and_remedy() {
        let s = Shortfall {
            needed: 12_288,
            limit: Some(65_536),
            locked: 61_440,
            dump_exclusion_failed: false,
        };
        let text = Error::Memory(s).to_string();
        assert!(
            text.contains("12288 bytes") && text.contains("65536 bytes"),
            "{text}"
        );
        assert!(
            text.contains("61440 bytes") && text.contains("ulimit -l"),
            "{text}"
        );
    }

    #[test]
    fn scrub_keeps_the_caller_working() {
        let a = std::hint::black_box([1.5f64, 2.5, 3.5, 4.5]);
        scrub();
        let b = std::hint::black_box(a);
        assert_eq!(b.iter().sum::<f64>(), 12.0);
    }

    #[test]
    fn probe_reports_page_size() {
        let p = probe().unwrap();
        assert!(p.page_size >= 4096);
        assert!(p.zeroing);
    }
}
