//! loom models of the broadcast ring's cursors (run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shmesh-ring --release --test
//! loom_broadcast`).
//!
//! The ring runs on `HeapMemory`, whose data area is shadowed by loom cells: a Block writer
//! that overwrites a record a reader is reading in place fails the model, as does a lost futex
//! wake-up (the futex is a loom mutex + condvar, so a missed wake is a deadlock). Lap readers
//! copy records while the writer may overwrite them, which shadow cells cannot express: there
//! the payload is mirrored into loom atomics (see `broadcast.rs`), so loom shows a reader every
//! mix of old and new words, and the model checks that a reader never accepts a torn or
//! foreign copy.
#![cfg(loom)]

use loom::thread;
use shmesh_ring::broadcast::{self, ReadError, Start, TryReadError};
use shmesh_ring::{BroadcastPolicy, WaitStrategy};

/// The payload of record `n`: every byte says `n`.
fn fill(n: u64, len: usize) -> Vec<u8> {
    vec![n as u8 + 1; len]
}

/// Block: a writer, a reader there from the start and a reader joining mid-way, all parking on
/// the futex as soon as they wait. Three records of 40 bytes (48 with the header) in a 128-byte
/// ring: the third needs padding and waits for both readers. No record is overwritten before
/// every live reader has read it (shadow cells), every reader sees every record from where it
/// joined, in order, and nobody sleeps through a wake-up.
#[test]
fn block_writer_waits_for_every_reader_including_a_joiner() {
    loom::model(|| {
        let (mut tx, readers) = broadcast::channel(128, 2, BroadcastPolicy::Block, 0).unwrap();
        tx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
        let mut early = readers.join(Start::Latest).unwrap();
        early.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
        let joiner = thread::spawn(move || {
            let mut rx = readers.join(Start::Latest).unwrap();
            rx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
            let mut expect = rx.record_number();
            loop {
                match rx.read() {
                    Ok(r) => {
                        assert_eq!(r.number(), expect);
                        assert_eq!(&*r, &fill(expect, 40)[..]);
                        expect += 1;
                    }
                    Err(ReadError::PeerGone) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(expect, 3, "the joiner reads through to the last record");
        });
        let writer = thread::spawn(move || {
            for n in 0..3u64 {
                let mut g = tx.claim(40).unwrap();
                g.copy_from_slice(&fill(n, 40));
                g.commit(40);
            }
        });
        for n in 0..3u64 {
            let r = early.read().unwrap();
            assert_eq!((r.number(), &*r), (n, &fill(n, 40)[..]));
        }
        assert_eq!(early.read().unwrap_err(), ReadError::PeerGone);
        writer.join().unwrap();
        joiner.join().unwrap();
    });
}

/// Block: a reader that joins with history while the writer wraps: the records it starts
/// from are never overwritten under it, whichever of the two moves first.
#[test]
fn block_history_joiner_is_never_overwritten() {
    loom::model(|| {
        let (mut tx, readers) = broadcast::channel(128, 1, BroadcastPolicy::Block, 1).unwrap();
        for n in 0..2u64 {
            let mut g = tx.try_claim(24).unwrap();
            g.copy_from_slice(&fill(n, 24));
            g.commit(24);
        }
        let writer = thread::spawn(move || {
            // 2 × 32 bytes are used; these wrap over them.
            for n in 2..5u64 {
                match tx.try_claim(24) {
                    Ok(mut g) => {
                        g.copy_from_slice(&fill(n, 24));
                        g.commit(24);
                    }
                    // The joiner's start holds the writer back.
                    Err(shmesh_ring::TryClaimError::Full { .. }) => return n,
                    Err(e) => panic!("{e}"),
                }
            }
            5
        });
        let mut rx = readers.join(Start::History(1)).unwrap();
        let first = rx.record_number();
        let r = rx.try_read().unwrap();
        assert_eq!((r.number(), &*r), (first, &fill(first, 24)[..]));
        drop(r);
        writer.join().unwrap();
    });
}

/// Lap: the writer laps a reader that copies records while they are overwritten. Whatever the
/// interleaving, an accepted record is exactly the one its number says (never torn, never one
/// from a later lap), and records read plus records reported lost account for every record.
#[test]
fn lap_reader_never_accepts_an_overwritten_copy() {
    loom::model(|| {
        // 24-byte records take 32 bytes, and the writer announces 16 more: in a 128-byte ring
        // the fourth record overwrites the first.
        let (mut tx, readers) = broadcast::channel(128, 1, BroadcastPolicy::Lap, 0).unwrap();
        let mut rx = readers.join(Start::Latest).unwrap();
        let total = 5u64;
        let writer = thread::spawn(move || {
            for n in 0..total {
                let mut g = tx.try_claim(24).unwrap();
                g.copy_from_slice(&fill(n, 24));
                g.commit(24);
            }
        });
        let (mut expect, mut lost) = (0u64, 0u64);
        while expect < total {
            match rx.try_read() {
                Ok(r) => {
                    assert_eq!(r.number(), expect);
                    assert_eq!(
                        &*r,
                        &fill(expect, 24)[..],
                        "record {expect} torn or foreign"
                    );
                    expect += 1;
                }
                Err(TryReadError::Lapped { lost: n }) => {
                    assert!(n > 0);
                    expect += n;
                    lost += n;
                }
                Err(TryReadError::Empty) => thread::yield_now(),
                Err(TryReadError::PeerGone) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(rx.lost(), lost);
        writer.join().unwrap();
    });
}
