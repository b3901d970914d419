//! Fuzzes everything the broadcast ring's writer and readers read back from memory other
//! processes write: record headers and padding, reader cursors, the history table, `published`,
//! `limit` and `tail_intent`. See `ring/tests/broadcast_hostile_peer/mod.rs`.
#![no_main]

#[path = "../../ring/tests/broadcast_hostile_peer/mod.rs"]
mod broadcast_hostile_peer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| broadcast_hostile_peer::session(data));
