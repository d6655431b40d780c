//! What this process can get for secret memory now: probed, and derived from the limits.

use std::sync::atomic::Ordering::Relaxed;

use super::counters;
use super::limits::{has_ipc_lock_capability, memlock_hard_limit, memlock_limit, page_size};
use super::pages::size_class;
use super::pool;
use crate::error::Result;

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
    let page = pool::fresh(page_size(), true, false)?;
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
