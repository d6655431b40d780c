//! libFuzzer entry point of the `pem_keys` target (logic in `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nomyo_fuzz::pem_keys(data);
});
