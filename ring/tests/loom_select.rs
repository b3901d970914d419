//! loom models of `select::park` (run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shmesh-ring --release --test loom_select`).
//!
//! Under loom, `park` sleeps by yielding until one of its parked words is cleared, which is
//! what wakes `futex_waitv`: a lost wake-up never ends that loop, and the model fails.
#![cfg(loom)]

use std::time::Duration;

use loom::thread;
use shmesh_ring::select::{self, Interest};
use shmesh_ring::{spsc, TryClaimError, TryReadError};

/// A reader parks on two rings while two writers commit one record each: it gets both.
#[test]
fn a_reader_of_two_rings_loses_no_wake_up() {
    loom::model(|| {
        let (mut tx_a, mut rx_a) = spsc::channel(128).unwrap();
        let (mut tx_b, mut rx_b) = spsc::channel(128).unwrap();
        let a = thread::spawn(move || {
            let mut g = tx_a.try_claim(8).unwrap();
            g.fill(1);
            g.commit(8);
            tx_a
        });
        let b = thread::spawn(move || {
            let mut g = tx_b.try_claim(8).unwrap();
            g.fill(2);
            g.commit(8);
            tx_b
        });
        let mut got = [false, false];
        while got != [true, true] {
            for (i, rx) in [&mut rx_a, &mut rx_b].into_iter().enumerate() {
                match rx.try_read() {
                    Ok(r) => {
                        assert_eq!(r[0], i as u8 + 1);
                        got[i] = true;
                    }
                    Err(TryReadError::Empty) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            if got != [true, true] {
                select::park(
                    &mut [Interest::Record(&mut rx_a), Interest::Record(&mut rx_b)],
                    Duration::from_secs(1),
                );
            }
        }
        // The writers stay attached until the reader is done: a gone peer would wake it
        // anyway and hide a lost wake-up.
        drop(a.join().unwrap());
        drop(b.join().unwrap());
    });
}

/// A writer parks on its full ring's space and an empty incoming ring; the reader of the
/// full ring frees it.
#[test]
fn a_full_writer_loses_no_wake_up() {
    loom::model(|| {
        let (mut out_tx, mut out_rx) = spsc::channel(128).unwrap();
        let (in_tx, mut in_rx) = spsc::channel(128).unwrap();
        let mut g = out_tx.try_claim(40).unwrap();
        g.fill(7);
        g.commit(40);
        let mut g = out_tx.try_claim(40).unwrap();
        g.fill(8);
        g.commit(40);
        // The next 40-byte record needs padding at the wrap and the space of both records.
        let reader = thread::spawn(move || {
            drop(out_rx.try_read().unwrap());
            drop(out_rx.try_read().unwrap());
            out_rx
        });
        loop {
            match out_tx.check_space(40) {
                Ok(()) => break,
                Err(TryClaimError::Full { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            select::park(
                &mut [
                    Interest::Space(&mut out_tx, 40),
                    Interest::Record(&mut in_rx),
                ],
                Duration::from_secs(1),
            );
        }
        drop(reader.join().unwrap());
        drop(in_tx);
    });
}
