//! What the operating system allows: the page size, `RLIMIT_MEMLOCK` and `CAP_IPC_LOCK`.

use std::sync::OnceLock;

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
