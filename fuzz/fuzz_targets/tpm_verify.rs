//! libFuzzer entry point of the `tpm_verify` target (logic in `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nomyo_fuzz::tpm_verify(data);
});
