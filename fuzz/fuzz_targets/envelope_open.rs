//! libFuzzer entry point of the `envelope_open` target (logic in `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nomyo_fuzz::envelope_open(data);
});
