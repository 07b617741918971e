#![no_main]

#[path = "../replay.rs"]
mod replay;

libfuzzer_sys::fuzz_target!(|data: &[u8]| replay::replay("frame", data));
