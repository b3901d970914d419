//! `select::park` in one process: threads writing heap rings (private futexes), a writer
//! waiting for space on one ring while it reads another, and the edge cases.
#![cfg(not(loom))]

use std::thread;
use std::time::{Duration, Instant};

use shmesh_ring::select::{self, Interest};
use shmesh_ring::{spsc, HeapMemory, TryClaimError, TryReadError};

/// Long enough that a lost wake-up shows as a hung test, not as a slow pass.
const NEVER: Duration = Duration::from_secs(600);

#[test]
fn a_reader_of_four_rings_wakes_for_each_record() {
    const PER_RING: u64 = 2000;
    let mut txs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = spsc::channel(256).unwrap();
        txs.push(tx);
        rxs.push(rx);
    }
    let writers: Vec<_> = txs
        .into_iter()
        .enumerate()
        .map(|(i, mut tx)| {
            thread::spawn(move || {
                for seq in 0..PER_RING {
                    let mut g = tx.claim(8).unwrap();
                    g.copy_from_slice(&seq.to_le_bytes());
                    g.commit(8);
                    if seq % (5 + i as u64) == 0 {
                        thread::sleep(Duration::from_micros(50));
                    }
                }
            })
        })
        .collect();
    let mut next = [0u64; 4];
    let mut done = 0;
    while done < 4 {
        let mut progressed = false;
        for (i, rx) in rxs.iter_mut().enumerate() {
            if next[i] == PER_RING {
                continue;
            }
            match rx.try_read() {
                Ok(r) => {
                    assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), next[i]);
                    next[i] += 1;
                    if next[i] == PER_RING {
                        done += 1;
                    }
                    progressed = true;
                }
                Err(TryReadError::Empty) => {}
                Err(e) => panic!("ring {i}: {e}"),
            }
        }
        if !progressed {
            let mut interests: Vec<Interest<'_, HeapMemory>> =
                rxs.iter_mut().map(Interest::Record).collect();
            select::park(&mut interests, NEVER);
        }
    }
    for w in writers {
        w.join().unwrap();
    }
}

/// A writer whose ring is full sleeps on its space and on an incoming ring at once: the
/// reader of the full ring frees space, and the writer wakes.
#[test]
fn a_full_writer_wakes_when_space_is_freed() {
    let (mut out_tx, mut out_rx) = spsc::channel(128).unwrap();
    let (_in_tx, mut in_rx) = spsc::channel(128).unwrap();
    // Fill the outgoing ring.
    let mut written = 0u32;
    while let Ok(mut g) = out_tx.try_claim(24) {
        g.fill(written as u8);
        g.commit(24);
        written += 1;
    }
    assert!(written > 0);
    let reader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        drop(out_rx.read().unwrap());
        out_rx
    });
    loop {
        match out_tx.check_space(24) {
            Ok(()) => break,
            Err(TryClaimError::Full { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        let mut interests = [
            Interest::Space(&mut out_tx, 24),
            Interest::Record(&mut in_rx),
        ];
        select::park(&mut interests, NEVER);
    }
    let _out_rx = reader.join().unwrap();
}

/// Something ready before the sleep: `park` says which, without sleeping; a gone peer counts
/// as ready; no interests sleeps for the slice.
#[test]
fn ready_ends_are_reported_at_once() {
    let (mut tx_a, mut rx_a) = spsc::channel(128).unwrap();
    let (tx_b, mut rx_b) = spsc::channel(128).unwrap();
    tx_a.try_claim(1).unwrap().commit(1);
    let start = Instant::now();
    let found = select::park(
        &mut [Interest::Record(&mut rx_b), Interest::Record(&mut rx_a)],
        NEVER,
    );
    assert_eq!(found, Some(1));
    assert!(start.elapsed() < NEVER);
    drop(rx_a.try_read().unwrap());
    drop(tx_b);
    let found = select::park(
        &mut [Interest::Record(&mut rx_a), Interest::Record(&mut rx_b)],
        NEVER,
    );
    assert_eq!(found, Some(1), "a gone producer wakes the reader");
    assert_eq!(
        select::park::<HeapMemory>(&mut [], Duration::from_millis(1)),
        None
    );
}
