//! The report of what this process gets for secret memory (`memory_protection_info()` in
//! Python): a probe page now, the limits, and what every secret buffer since the start got.

use serde::Serialize;

use super::counters::Stats;
use super::probe::{largest_lockable_request, probe, Protection};
use crate::error::Result;

/// A truthful report of what this process has achieved for secret memory. Serializes to the
/// dict `memory_protection_info()` returns, with the keys in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Always `nomyo-rs`.
    pub backend: &'static str,
    /// The operating system (`std::env::consts::OS`).
    pub platform: &'static str,
    /// `full`, `partial` or `zeroing_only`: see [`level`].
    pub protection_level: &'static str,
    /// `mlock` of a probe page succeeded.
    pub has_memory_locking: bool,
    /// Zeroing on drop (always).
    pub has_secure_zeroing: bool,
    /// `MADV_DONTDUMP` of a probe page succeeded.
    pub has_dump_exclusion: bool,
    /// `MADV_WIPEONFORK` of a probe page succeeded.
    pub has_wipe_on_fork: bool,
    /// Both locking and dump exclusion work here.
    pub supports_full_protection: bool,
    /// The soft `RLIMIT_MEMLOCK` in bytes (`None` = unlimited).
    pub memlock_limit: Option<u64>,
    /// The hard `RLIMIT_MEMLOCK` in bytes (`None` = unlimited).
    pub memlock_hard_limit: Option<u64>,
    /// `CAP_IPC_LOCK` is in the effective set.
    pub has_ipc_lock: bool,
    /// Bytes this process has locked now.
    pub locked_bytes: u64,
    /// Bytes more that secret buffers can lock now (`None` = not bounded).
    pub lockable_bytes: Option<u64>,
    /// The largest request (JSON bytes) whose secret buffers can all be locked now.
    pub largest_lockable_request: Option<u64>,
    /// Secret mappings that were to be locked and were.
    pub secret_buffers_locked: u64,
    /// Secret mappings that were to be locked but were not.
    pub secret_buffers_not_locked: u64,
    /// Secret mappings made with `Policy::Off`.
    pub secret_buffers_unlocked_by_choice: u64,
    /// Secret mappings handed out that are not excluded from core dumps.
    pub secret_buffers_not_dump_excluded: u64,
    /// Bytes of the locked secret mappings, summed.
    pub secret_bytes_locked: u64,
    /// Bytes of the secret mappings that were to be locked but were not, summed.
    pub secret_bytes_not_locked: u64,
    /// `mlock` calls that failed.
    pub lock_failures: u64,
    /// `madvise(MADV_DONTDUMP)` calls that failed.
    pub dump_exclusion_failures: u64,
    /// Secret mappings refused under `Policy::Require`.
    pub require_refusals: u64,
    /// Page size in bytes.
    pub page_size: usize,
}

/// The protection level: `full` until one secret buffer that was to be locked was not (or
/// was not excluded from dumps), or while the probe page cannot be locked or dump-excluded
/// (`partial`); `zeroing_only` when nothing can be locked and nothing ever was.
pub fn level(p: &Protection, s: &Stats) -> &'static str {
    let degraded = s.buffers_not_locked > 0 || s.buffers_not_dump_excluded > 0;
    if !p.locking && s.buffers_locked == 0 {
        "zeroing_only"
    } else if degraded || !p.locking || !p.dump_exclusion {
        "partial"
    } else {
        "full"
    }
}

impl Report {
    /// The report made of a probe `p`, the counters `s` and the largest lockable request.
    pub fn new(p: &Protection, s: &Stats, largest_lockable_request: Option<u64>) -> Self {
        Report {
            backend: "nomyo-rs",
            platform: std::env::consts::OS,
            protection_level: level(p, s),
            has_memory_locking: p.locking,
            has_secure_zeroing: p.zeroing,
            has_dump_exclusion: p.dump_exclusion,
            has_wipe_on_fork: p.wipe_on_fork,
            supports_full_protection: p.locking && p.dump_exclusion,
            memlock_limit: p.memlock_limit,
            memlock_hard_limit: p.memlock_hard_limit,
            has_ipc_lock: p.ipc_lock_capability,
            locked_bytes: p.locked_now,
            lockable_bytes: p.lockable_now,
            largest_lockable_request,
            secret_buffers_locked: s.buffers_locked,
            secret_buffers_not_locked: s.buffers_not_locked,
            secret_buffers_unlocked_by_choice: s.buffers_unlocked_by_choice,
            secret_buffers_not_dump_excluded: s.buffers_not_dump_excluded,
            secret_bytes_locked: s.bytes_locked,
            secret_bytes_not_locked: s.bytes_not_locked,
            lock_failures: s.lock_failures,
            dump_exclusion_failures: s.dump_exclusion_failures,
            require_refusals: s.refused,
            page_size: p.page_size,
        }
    }
}

/// The report now: a fresh probe page and the counters since the start.
pub fn report() -> Result<Report> {
    let p = probe()?;
    Ok(Report::new(&p, &super::stats(), largest_lockable_request()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protection(locking: bool, dump_exclusion: bool) -> Protection {
        Protection {
            locking,
            dump_exclusion,
            wipe_on_fork: true,
            zeroing: true,
            memlock_limit: Some(8 << 20),
            memlock_hard_limit: None,
            ipc_lock_capability: false,
            locked_now: 4096,
            lockable_now: Some(1 << 20),
            page_size: 4096,
        }
    }

    fn stats(locked: u64, not_locked: u64, not_dump_excluded: u64) -> Stats {
        Stats {
            buffers_locked: locked,
            buffers_not_locked: not_locked,
            buffers_not_dump_excluded: not_dump_excluded,
            ..Stats::default()
        }
    }

    #[test]
    fn full_only_while_everything_was_locked_and_dump_excluded() {
        assert_eq!(level(&protection(true, true), &stats(0, 0, 0)), "full");
        assert_eq!(level(&protection(true, true), &stats(5, 0, 0)), "full");
        assert_eq!(level(&protection(true, true), &stats(5, 1, 0)), "partial");
        assert_eq!(level(&protection(true, true), &stats(5, 0, 1)), "partial");
        assert_eq!(level(&protection(true, false), &stats(0, 0, 0)), "partial");
    }

    #[test]
    fn zeroing_only_when_nothing_can_be_or_was_locked() {
        assert_eq!(
            level(&protection(false, true), &stats(0, 3, 0)),
            "zeroing_only"
        );
        assert_eq!(
            level(&protection(false, false), &stats(0, 0, 0)),
            "zeroing_only"
        );
        // Locked before, not any more (the limit is used up): partial.
        assert_eq!(level(&protection(false, true), &stats(2, 0, 0)), "partial");
    }

    #[test]
    fn report_carries_probe_and_counters_in_the_documented_keys() {
        let s = Stats {
            bytes_locked: 8192,
            refused: 2,
            ..stats(2, 0, 0)
        };
        let r = Report::new(&protection(true, false), &s, Some(77));
        assert_eq!(r.protection_level, "partial");
        assert!(!r.supports_full_protection);
        assert_eq!((r.secret_bytes_locked, r.require_refusals), (8192, 2));
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 24);
        assert_eq!(keys.first(), Some(&"backend"));
        assert_eq!(v["memlock_hard_limit"], serde_json::Value::Null);
        assert_eq!(v["largest_lockable_request"], 77);
        assert_eq!(v["page_size"], 4096);
    }

    #[test]
    fn report_now_agrees_with_a_probe() {
        let r = report().unwrap();
        let p = probe().unwrap();
        assert_eq!(r.backend, "nomyo-rs");
        assert_eq!(r.has_memory_locking, p.locking);
        assert_eq!(r.has_dump_exclusion, p.dump_exclusion);
        assert_eq!(r.page_size, super::super::page_size());
        assert!(["full", "partial", "zeroing_only"].contains(&r.protection_level));
    }
}
