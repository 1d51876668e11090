//! The lean path's head parser against hyper on arbitrary bytes: any difference in how they
//! frame requests (count, method, target, version, body length, keep-alive, or the lean
//! parser accepting what hyper refuses) is a finding. The harness is the integration suite's
//! own (`tests/it/differential.rs`), included as it is.

#![no_main]

#[path = "../../tests/it/differential.rs"]
mod differential;

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if let Err(difference) = differential::compare(input) {
        panic!("{difference:?}");
    }
});
