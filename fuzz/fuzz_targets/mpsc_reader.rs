//! Fuzzes everything the MPSC ring's writers and consumer read back from memory other processes
//! write: record headers, claims and padding, the shared tail and head, the writers' slots
//! (intents, states, attach counts). See `ring/tests/mpsc_hostile_peer/mod.rs`.
#![no_main]

#[path = "../../ring/tests/mpsc_hostile_peer/mod.rs"]
mod mpsc_hostile_peer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| mpsc_hostile_peer::session(data));
