//! loom models of the SPSC ring protocol (run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shmesh-ring --release --test loom`).
//!
//! The ring runs on `HeapMemory`, whose data area is shadowed by loom cells: a protocol bug
//! that lets the producer write bytes the consumer is reading (or the reverse) fails the model,
//! as does a lost futex wake-up (the futex is a loom mutex + condvar, so a missed wake is a
//! deadlock).
#![cfg(loom)]

use loom::thread;
use shmesh_ring::{spsc, ReadError, TryClaimError, TryReadError, WaitStrategy};

fn fill(seq: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seq.wrapping_mul(17).wrapping_add(i as u8))
        .collect()
}

/// claim/commit/read/release across the wrap: three records of 40 bytes (48 with the header)
/// in a 128-byte ring: the third needs padding at the end, and waits for space.
#[test]
fn claim_commit_read_release() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel(128).unwrap();
        tx.set_wait_strategy(WaitStrategy::Spin);
        rx.set_wait_strategy(WaitStrategy::Spin);
        let sizes = [40usize, 40, 40];
        let writer = thread::spawn(move || {
            for (seq, &len) in sizes.iter().enumerate() {
                let mut g = tx.claim(len).unwrap();
                g.copy_from_slice(&fill(seq as u8, len));
                g.commit(len);
            }
        });
        for (seq, &len) in sizes.iter().enumerate() {
            let r = rx.read().unwrap();
            assert_eq!(&*r, &fill(seq as u8, len)[..]);
        }
        writer.join().unwrap();
        // The slot after the last record holds a header from the previous lap: it must not
        // look committed.
        assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    });
}

/// Batches: two records published with one store, read with one release, then a third
/// record that reuses the released space.
#[test]
fn batch_commit_and_release() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel(128).unwrap();
        let writer = thread::spawn(move || {
            {
                let mut batch = tx.batch();
                for seq in 0..2u8 {
                    let mut g = batch.try_claim(24).unwrap();
                    g.fill(seq);
                    g.commit(24);
                }
            }
            // 64 of 128 bytes are in use: a 40-byte record (48) and the next slot (16) need all
            // the rest, so this waits for the consumer unless it has read already.
            loop {
                match tx.try_claim(40) {
                    Ok(mut g) => {
                        g.fill(9);
                        g.commit(40);
                        break;
                    }
                    Err(TryClaimError::Full { .. }) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let mut batch = rx.batch();
            loop {
                match batch.try_read() {
                    Ok(r) => {
                        assert!(r.iter().all(|&b| b == r[0]));
                        seen.push(r[0]);
                    }
                    Err(TryReadError::Empty) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            drop(batch);
            thread::yield_now();
        }
        assert_eq!(seen, [0, 1, 9]);
        writer.join().unwrap();
    });
}

/// The parked-flag futex protocol, consumer side: a consumer that sleeps as soon as the ring
/// is empty is always woken by the producer's commits.
#[test]
fn futex_consumer_never_misses_a_wake() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel(128).unwrap();
        rx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
        let writer = thread::spawn(move || {
            for seq in 0..2u8 {
                let mut g = tx.try_claim(8).unwrap();
                g.fill(seq);
                g.commit(8);
            }
        });
        for seq in 0..2u8 {
            assert_eq!(*rx.read().unwrap(), [seq; 8]);
        }
        writer.join().unwrap();
    });
}

/// The parked-flag futex protocol, producer side: a producer that sleeps as soon as the ring
/// is full is always woken by the consumer's releases.
#[test]
fn futex_producer_never_misses_a_wake() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel(128).unwrap();
        tx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
        rx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
        let writer = thread::spawn(move || {
            // Two 40-byte records (48 each) fill the 128-byte ring: the third needs 32 bytes of
            // padding, 48 for itself and 16 after it, and must wait for space.
            for seq in 0..3u8 {
                let mut g = tx.claim(40).unwrap();
                g.fill(seq);
                g.commit(40);
            }
        });
        for seq in 0..3u8 {
            assert!(rx.read().unwrap().iter().all(|&b| b == seq));
        }
        writer.join().unwrap();
    });
}

/// A producer that leaves: the consumer reads what it committed, then gets PeerGone, also
/// when it was asleep on the futex when the producer left.
#[test]
fn producer_gone_wakes_and_drains() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel(128).unwrap();
        rx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
        let writer = thread::spawn(move || {
            let mut g = tx.try_claim(8).unwrap();
            g.fill(7);
            g.commit(8);
            drop(tx);
        });
        assert_eq!(*rx.read().unwrap(), [7; 8]);
        assert_eq!(rx.read().unwrap_err(), ReadError::PeerGone);
        writer.join().unwrap();
    });
}
