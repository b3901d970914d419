//! Fuzzes `shmesh inspect`/`ls` decoding of a segment's bytes: any file in /dev/shm named
//! `shmesh.*` may hold anything. Decoding must report problems, never panic. Each input is a
//! whole object, as a tool copies it (a region's history entries are copied out of it too);
//! the seeds in `fuzz/corpus/inspect_decode` are real segment files of each kind, written by
//! the ignored test `inspect::tests::write_fuzz_seeds` of `shmesh-ring`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let decoded = shmesh_ring::inspect::Snapshot::from_bytes(data.to_vec()).decode();
    let region = decoded
        .region
        .as_ref()
        .map(|r| (r.latest_buffer(), r.oldest_changes(), r.derived_shape().is_ok()));
    std::hint::black_box((
        decoded.is_valid(),
        decoded.fill(),
        decoded.totals(),
        decoded.expected_data_offset(),
        region,
    ));
});
