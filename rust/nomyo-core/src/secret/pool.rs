//! A small process-wide pool of released mappings, so that buffers reuse pages (already
//! faulted in, locked and dump-excluded) instead of mmap + mlock + munlock + munmap each time.
//!
//! Every mapping is wiped before it enters the pool, so a pooled page never holds a secret and
//! a mapping taken from the pool is all zero, like a fresh one. The pool is bounded (entries,
//! bytes, a single mapping's size, and at most half of `RLIMIT_MEMLOCK` in locked pages), uses
//! `try_lock` only (never blocks, never deadlocks in a forked child), and is discarded in a
//! child after `fork` (memory locks are not inherited).

use std::sync::Mutex;

use super::counters;
use super::limits::{has_ipc_lock_capability, memlock_limit};
use super::pages::Pages;
use crate::error::Result;

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
    *BUDGET.get_or_init(|| match memlock_limit() {
        Some(_) if has_ipc_lock_capability() => MAX_BYTES,
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
                    counters::LOCKED_NOW
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
fn evict_locked() -> bool {
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

/// A fresh mapping of `cap` bytes. When it is to be locked and cannot be, the pool's locked
/// pages (which count against `RLIMIT_MEMLOCK`) are given back and the lock is tried again,
/// so the pool never costs a live buffer its lock; not for a mapping larger than the limit,
/// which could never be locked anyway.
pub(super) fn fresh(cap: usize, lock: bool, count: bool) -> Result<Pages> {
    let mut pages = Pages::map(cap, lock, count)?;
    if lock
        && !pages.locked
        && memlock_limit().is_none_or(|lim| cap as u64 <= lim)
        && evict_locked()
    {
        pages.try_lock(count);
    }
    Ok(pages)
}
