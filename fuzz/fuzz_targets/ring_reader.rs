//! Fuzzes everything a ring end reads back from memory another process writes: record headers,
//! padding, the shared tail and head. See `ring/tests/hostile_peer/mod.rs`.
#![no_main]

#[path = "../../ring/tests/hostile_peer/mod.rs"]
mod hostile_peer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile_peer::session(data));
