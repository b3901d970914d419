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
    use shmesh_ring::{spsc, TryReadError};
    let (mut tx, mut rx) = spsc::channel(256).unwrap();
    let mut g = tx.try_claim(8).unwrap();
    g.fill(1);
    g.commit(8);
    let mem = rx.memory().clone();
    let padding = u32::MAX.to_le_bytes();
    // Header of the first record: {len, kind}, little-endian.
    for (len, kind, what) in [
        (3i32, [0u8; 4], "record length"), // shorter than its own header
        (1000, [0; 4], "record length"),   // larger than the largest record
        (16, padding, "padding record length"), // padding at the start of the ring
    ] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&kind);
        // SAFETY: no grant or record of this ring is alive (single thread, none held).
        unsafe { mem.scribble(0, &bytes) };
        match rx.try_read() {
            Err(TryReadError::Corrupt(c)) => assert_eq!(c.what, what, "{c}"),
            other => panic!("expected corruption, got {:?}", other.map(|r| r.to_vec())),
        }
    }
    // A negative length is a record still claimed: the reader waits, it is no error.
    // SAFETY: as above.
    unsafe {
        mem.scribble(0, &(-16i32).to_le_bytes());
        mem.scribble(4, &[0; 4]);
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    // Restored, the record reads.
    // SAFETY: as above.
    unsafe { mem.scribble(0, &16i32.to_le_bytes()) };
    assert_eq!(*rx.try_read().unwrap(), [1; 8]);
}
