//! Property test: whatever a hostile peer writes into an MPSC ring (data area, shared tail and
//! head, the writers' slots: intents, states, attach counts), the writers and the consumer get
//! values or errors, never a panic, a hang, or an access outside the data area.

//! The same session runs under libFuzzer (`fuzz/fuzz_targets/mpsc_reader.rs`).

mod mpsc_hostile_peer;

use proptest::prelude::*;
use std::sync::atomic::Ordering;

use shmesh_ring::{mpsc, HeapMemory, RingMemory, TryReadError};

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 8 } else { 2048 }, ..ProptestConfig::default() })]

    #[test]
    fn hostile_peer_cannot_break_the_mpsc_ring(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        mpsc_hostile_peer::session(&data);
    }
}

#[test]
fn scribbled_headers_are_reported_as_corruption() {
    use shmesh_ring::mpsc::Consumer;
    fn header(mem: &HeapMemory, offset: u64, len: i32, kind: u32) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_le_bytes());
        // SAFETY: no grant or record of this ring is alive (single thread, none held).
        unsafe { mem.scribble(offset, &bytes) };
    }
    fn corrupt(rx: &mut Consumer<HeapMemory>, what: &str) {
        let got = match rx.try_read().map(|r| r.to_vec()) {
            Err(TryReadError::Corrupt(c)) => c,
            Err(TryReadError::Empty) => match rx.unblock() {
                Err(c) => c,
                other => panic!("expected corruption, got {other:?}"),
            },
            other => panic!("expected corruption, got {other:?}"),
        };
        assert_eq!(got.what, what, "{got}");
    }
    let (ws, mut rx) = mpsc::channel(256, 2).unwrap();
    let mut tx = ws.writer().unwrap();
    let mut g = tx.try_claim(8).unwrap();
    g.fill(1);
    g.commit(8);
    let mem = ws.memory().clone();
    let tag = 2 | (1 << 16); // slot 2, first attach
    for (len, kind, what) in [
        (3, 0, "record length"),                      // shorter than its own header
        (1000, 0, "record length"),                   // larger than the largest record
        (1000, u32::MAX, "padding record length"),    // padding past the end of the ring
        (-24, tag, "claimed record length"),          // not a multiple of 16
        (-4096, tag, "claimed record length"),        // past the end of the ring
        (-16, 40, "claiming writer slot"),            // no such writer slot
        (-16, 1 | (1 << 16), "claiming writer slot"), // the consumer's slot
    ] {
        header(&mem, 0, len, kind);
        corrupt(&mut rx, what);
    }
    // A live writer's claim: the reader waits, it is no error and nothing is skipped.
    header(&mem, 0, -16, tag);
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    assert!(!rx.unblock().unwrap());
    // Restored, the record reads.
    header(&mem, 0, 16, 0);
    assert_eq!(*rx.try_read().unwrap(), [1; 8]);
    // Impossible positions.
    mem.control().tail.0.store(u64::MAX / 2, Ordering::Release);
    corrupt(&mut rx, "ring fill level (tail - head)");
    assert!(tx.try_claim(8).is_err());
    mem.control().tail.0.store(40, Ordering::Release);
    corrupt(&mut rx, "ring tail position");
}
