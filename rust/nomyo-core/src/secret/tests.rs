//! Tests of the secret buffers, their pool and counters.

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
    assert_eq!(Policy::named("require"), Ok(Policy::Require));
    assert_eq!(
        Policy::named("True").unwrap_err().to_string(),
        "secure_memory must be 'off', 'best_effort' or 'require', not \"True\""
    );
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
