//! Property test: whatever a hostile peer writes into the ring (data area, shared tail and
//! head), the other side gets values or errors, never a panic or an access outside the data
//! area. The same session runs under libFuzzer (`fuzz/fuzz_targets/ring_reader.rs`).

mod hostile_peer;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 8 } else { 2048 }, ..ProptestConfig::default() })]

    #[test]
    fn hostile_peer_cannot_break_the_other_side(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        hostile_peer::session(&data);
    }
}

#[test]
fn a_scribbled_header_is_reported_as_corruption() {
    use shmesh_ring::{spsc, RingMemory, TryReadError};
    let (mut tx, mut rx) = spsc::channel(256).unwrap();
    let mut g = tx.try_claim(8).unwrap();
    g.fill(1);
    g.commit(8);
    // Length field of the first record: -1 (a record still claimed), then 1000 (past the tail).
    let mem = rx.memory().clone();
    for bad in [-1i32, 1000, 3] {
        mem.scribble(0, &bad.to_le_bytes());
        match rx.try_read() {
            Err(TryReadError::Corrupt(c)) => assert_eq!(c.what, "record length", "{c}"),
            other => panic!("expected corruption, got {:?}", other.map(|r| r.to_vec())),
        }
    }
    // Once the record is read, a tail beyond head + capacity.
    mem.scribble(0, &16i32.to_le_bytes());
    assert_eq!(*rx.try_read().unwrap(), [1; 8]);
    mem.control()
        .tail
        .0
        .store(1 << 40, std::sync::atomic::Ordering::Release);
    match rx.try_read() {
        Err(TryReadError::Corrupt(c)) => assert!(c.to_string().contains("fill level"), "{c}"),
        other => panic!("expected corruption, got {:?}", other.map(|r| r.to_vec())),
    };
}
