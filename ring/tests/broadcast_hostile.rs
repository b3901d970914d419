//! Property test: whatever a hostile process writes into a broadcast ring (the data area,
//! reader cursors, the history table, `published`, `limit`, `tail_intent`), the writer and the
//! readers return values or errors: never a panic, an endless loop, or an access outside the
//! data area.

//! The same session runs under libFuzzer (`fuzz/fuzz_targets/broadcast_reader.rs`).

mod broadcast_hostile_peer;

use std::sync::atomic::Ordering;

use proptest::prelude::*;
use shmesh_ring::broadcast::{self, Start, TryReadError};
use shmesh_ring::{BroadcastPolicy, RingMemory, TryClaimError};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn hostile_bytes_cannot_break_the_broadcast_ring(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        broadcast_hostile_peer::session(&data);
    }
}

#[test]
fn scribbled_values_are_reported_as_corruption() {
    use shmesh_ring::broadcast::ReadError;
    use std::time::Duration;

    let (mut tx, joiner) = broadcast::channel(256, 2, BroadcastPolicy::Block, 2).unwrap();
    let mut rx = joiner.join(Start::Latest).unwrap();
    let mut g = tx.try_claim(8).unwrap();
    g.fill(1);
    g.commit(8);
    let mem = joiner.memory().clone();
    // A record header longer than the largest record.
    let mut bytes = 1000i32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 4]);
    // SAFETY: no grant or record of this ring is alive.
    unsafe { mem.scribble(0, &bytes) };
    match rx.try_read() {
        Err(TryReadError::Corrupt(c)) => assert_eq!(c.what, "record length", "{c}"),
        other => panic!("expected corruption, got {:?}", other.map(|r| r.to_vec())),
    }
    assert!(matches!(
        rx.read_timeout(Duration::from_millis(10)),
        Err(ReadError::Corrupt(_))
    ));
    // A history table whose entries never stay consistent: joins give up with an error.
    let bc = mem.broadcast();
    bc.published.store(1 << 40, Ordering::Release);
    for e in mem.history() {
        e.store(7, Ordering::Release);
    }
    assert!(matches!(
        joiner.join(Start::History(2)),
        Err(shmesh_ring::AttachError::Corrupt(_))
    ));
    // A reader cursor far from the tail: once its cached limit runs out, the Block writer is
    // full, not confused.
    mem.slot(rx.slot_index())
        .cursor
        .store(u64::MAX / 3, Ordering::Release);
    let full = (0..100).any(|_| match tx.try_claim(8) {
        Ok(g) => {
            g.commit(8);
            false
        }
        Err(TryClaimError::Full { .. }) => true,
        Err(e) => panic!("{e}"),
    });
    assert!(full);
}
