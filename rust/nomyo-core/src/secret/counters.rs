//! Counters of what secret buffers got, since the process started (relaxed atomics: cheap,
//! each exact on its own), and their snapshot type.

use std::sync::atomic::AtomicU64;

pub(crate) static BUFFERS_LOCKED: AtomicU64 = AtomicU64::new(0);
pub(crate) static BUFFERS_NOT_LOCKED: AtomicU64 = AtomicU64::new(0);
pub(crate) static BUFFERS_UNLOCKED_BY_CHOICE: AtomicU64 = AtomicU64::new(0);
pub(crate) static BUFFERS_NOT_DUMP_EXCLUDED: AtomicU64 = AtomicU64::new(0);
pub(crate) static BYTES_LOCKED: AtomicU64 = AtomicU64::new(0);
pub(crate) static BYTES_NOT_LOCKED: AtomicU64 = AtomicU64::new(0);
pub(crate) static LOCK_FAILURES: AtomicU64 = AtomicU64::new(0);
pub(crate) static DUMP_EXCLUSION_FAILURES: AtomicU64 = AtomicU64::new(0);
pub(crate) static REFUSED: AtomicU64 = AtomicU64::new(0);
/// Bytes of secret mappings locked right now (live and pooled).
pub(crate) static LOCKED_NOW: AtomicU64 = AtomicU64::new(0);

/// What the secret buffers of this process actually got, since it started.
///
/// A "buffer" here is one mapping handed to a `SecretBuf` (a buffer that grows takes a new
/// one each time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Mappings that were to be locked and were.
    pub buffers_locked: u64,
    /// Mappings that were to be locked but were not (best effort carried on without).
    pub buffers_not_locked: u64,
    /// Mappings made with `Policy::Off` (not locked by choice).
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
    /// Mappings refused under `Policy::Require`.
    pub refused: u64,
    /// Bytes of secret mappings locked now (live and pooled).
    pub locked_now: u64,
    /// Of those, bytes in the pool (given back when a new mapping needs the room).
    pub pooled_locked: u64,
}
