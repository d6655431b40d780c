//! The wiping allocator as this test program's global allocator (as in the Python binding):
//! everything below, and the test harness itself, allocates through it.

use std::collections::{BTreeMap, HashMap};

use nomyo_core::alloc::Wiping;

#[global_allocator]
static GLOBAL: Wiping = Wiping;

#[test]
fn collections_threads_and_the_crypto_core_run_on_it() {
    let mut map = HashMap::new();
    let mut text = String::new();
    for i in 0..10_000u32 {
        map.insert(i, i.to_string());
        text.push_str(&i.to_string());
    }
    assert_eq!(map.len(), 10_000);
    assert_eq!(map[&9_999], "9999");
    assert!(text.starts_with("0123456789101112"));
    let sums: Vec<u64> = (0..4u64)
        .map(|t| std::thread::spawn(move || (0..1000).map(|i| i * t).sum::<u64>()))
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(sums, [0, 499_500, 999_000, 1_498_500]);
    let sorted: BTreeMap<String, usize> = map.values().map(|v| (v.clone(), v.len())).collect();
    assert_eq!(sorted.len(), 10_000);
    // The core's own allocations (JSON parsing into a Value) on the same allocator.
    let value: serde_json::Value = serde_json::from_str(r#"{"a": [1, 2, {"b": "c"}]}"#).unwrap();
    assert_eq!(value["a"][2]["b"], "c");
}
