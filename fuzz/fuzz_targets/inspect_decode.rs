//! Fuzzes `shmesh inspect`/`ls` decoding of a segment's bytes: any file in /dev/shm named
//! `shmesh.*` may hold anything. Decoding must report problems, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let decoded = shmesh_ring::inspect::Snapshot::from_bytes(data.to_vec()).decode();
    std::hint::black_box((decoded.is_valid(), decoded.fill(), decoded.totals()));
});
