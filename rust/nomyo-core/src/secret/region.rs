//! Memory this crate does not own: the pages of a caller's bytes locked in RAM, and the whole
//! process kept out of core dumps.

use super::limits::page_size;

/// The whole pages covering `len` bytes at `addr`, as (first page, bytes).
fn page_span(addr: usize, len: usize, page: usize) -> (usize, usize) {
    let start = addr & !(page - 1);
    let end = (addr + len).div_ceil(page) * page;
    (start, end - start)
}

/// Lock the pages holding `data` in RAM (best effort); `true` on success (and for no bytes).
/// The lock covers whole pages, so it also holds whatever shares them with `data`; it lasts
/// until [`unlock_region`] or until the memory is freed.
pub fn lock_region(data: &[u8]) -> bool {
    if data.is_empty() {
        return true;
    }
    let (start, len) = page_span(data.as_ptr() as usize, data.len(), page_size());
    #[cfg(unix)]
    // SAFETY: the range covers the pages of a live allocation; mlock does not write.
    return unsafe { libc::mlock(start as *const libc::c_void, len) == 0 };
    #[cfg(not(unix))]
    {
        let _ = (start, len);
        false
    }
}

/// Unlock the pages holding `data`; `true` on success (and for no bytes).
pub fn unlock_region(data: &[u8]) -> bool {
    if data.is_empty() {
        return true;
    }
    let (start, len) = page_span(data.as_ptr() as usize, data.len(), page_size());
    #[cfg(unix)]
    // SAFETY: as in lock_region; munlock does not write.
    return unsafe { libc::munlock(start as *const libc::c_void, len) == 0 };
    #[cfg(not(unix))]
    {
        let _ = (start, len);
        true
    }
}

/// Turn off core dumps for this process (`RLIMIT_CORE` = 0; on Linux also not dumpable,
/// `PR_SET_DUMPABLE` = 0); `true` when every step succeeded.
pub fn disable_core_dumps() -> bool {
    #[cfg(unix)]
    // SAFETY: a valid rlimit struct.
    let no_core = unsafe {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero) == 0
    };
    #[cfg(not(unix))]
    let no_core = false;
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_DUMPABLE and integer arguments.
    let not_dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
    #[cfg(not(target_os = "linux"))]
    let not_dumpable = true;
    no_core && not_dumpable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_covers_whole_pages() {
        assert_eq!(page_span(4096, 1, 4096), (4096, 4096));
        assert_eq!(page_span(4096, 4096, 4096), (4096, 4096));
        assert_eq!(page_span(4100, 4096, 4096), (4096, 8192));
        assert_eq!(page_span(8191, 2, 4096), (4096, 8192));
        assert_eq!(page_span(16384 + 7, 100, 16384), (16384, 16384));
    }

    #[test]
    fn no_bytes_is_a_success() {
        assert!(lock_region(&[]));
        assert!(unlock_region(&[]));
    }

    /// Bytes the kernel reports locked (`/proc/self/smaps`) in the mappings from `base` on,
    /// up to `len` bytes.
    #[cfg(target_os = "linux")]
    fn locked_in(base: usize, len: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let (mut inside, mut kb) = (false, 0);
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-')) {
                let start = usize::from_str_radix(range.split('-').next().unwrap(), 16);
                inside = start.is_ok_and(|s| s >= base && s < base + len);
            } else if let Some(v) = line.strip_prefix("Locked:").filter(|_| inside) {
                kb += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        kb * 1024
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn locks_exactly_the_pages_holding_the_bytes() {
        let page = page_size();
        // A mapping of its own: no other allocation shares (or unlocks) its pages.
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: page + 20 bytes from offset page + 10 lie inside the 4-page mapping.
        let bytes =
            unsafe { std::slice::from_raw_parts((base as *const u8).add(page + 10), page + 20) };
        let (base, len) = (base as usize, 4 * page);
        if lock_region(bytes) {
            // Unaligned on both ends: the second and third pages, not the others.
            assert_eq!(locked_in(base, len), 2 * page as u64);
            assert!(unlock_region(bytes));
            assert_eq!(locked_in(base, len), 0);
        } else {
            // No room to lock here (RLIMIT_MEMLOCK used up): nothing was locked.
            assert_eq!(locked_in(base, len), 0);
            assert!(unlock_region(bytes));
        }
        // SAFETY: the mapping made above, no longer borrowed.
        assert_eq!(unsafe { libc::munmap(base as *mut libc::c_void, len) }, 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn core_dumps_are_disabled_in_a_child() {
        // In a forked child, so this test process keeps its own settings.
        // SAFETY: the child only makes system calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = disable_core_dumps();
            let mut lim = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            // SAFETY: lim is a valid out-pointer; prctl with integer arguments.
            let limit_zero = unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) } == 0
                && lim.rlim_cur == 0
                && lim.rlim_max == 0;
            let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
            let code = if ok && limit_zero && dumpable == 0 {
                0
            } else {
                1
            };
            // SAFETY: leaves the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
