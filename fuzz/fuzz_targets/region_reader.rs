//! Fuzzes everything a region's writer and readers read back from memory other processes
//! write: `latest`, the buffers' version words, the futex word and parked flag, the change
//! history's tags and bitmaps, the buffers' bytes, between the writer's scopes, takeovers and
//! the readers' snapshot attempts, change listings and waits. See `ring/tests/region_hostile.rs`,
//! whose session this is (its property test runs the same session under proptest and miri).
#![no_main]

#[path = "../../ring/tests/region_hostile.rs"]
mod region_hostile;

libfuzzer_sys::fuzz_target!(|data: &[u8]| region_hostile::session(data));
