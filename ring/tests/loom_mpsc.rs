//! loom models of the MPSC ring protocol (run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shmesh-ring --release --test loom_mpsc`).
//!
//! Two writers and the consumer on a tiny `HeapMemory` ring, whose data area is shadowed by loom
//! cells: a protocol bug that lets a writer write bytes the consumer reads or zeroes (or two
//! writers the same bytes) fails the model, as does a lost futex wake-up (the futex is a loom
//! mutex + condvar, so a missed wake is a deadlock), a record lost or read twice, and a consumer
//! that never gets past a dead writer's claim (it spins until loom's branch limit).
//!
//! A writer's death is `HeapMemory::kill` (its liveness token goes; a killed writer's grant and
//! writer then drop without touching the ring, as a killed process would), in the writer's own
//! thread: loom explores every point of the consumer's run at which it can happen.
#![cfg(loom)]

use loom::thread;
use shmesh_ring::mpsc::{self, Consumer, Writer};
use shmesh_ring::{HeapMemory, RingMemory, TryClaimError, TryReadError, WaitStrategy};

fn fill(id: u8, seq: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| id.wrapping_mul(101) ^ seq.wrapping_mul(17).wrapping_add(i as u8))
        .collect()
}

/// Writes record `seq` of writer `id`: `[id, seq, fill..]`, retrying while the ring is full.
fn send(tx: &mut Writer<HeapMemory>, id: u8, seq: u8, len: usize) {
    loop {
        match tx.try_claim(len) {
            Ok(mut g) => {
                g.copy_from_slice(&fill(id, seq, len));
                g[0] = id;
                g[1] = seq;
                g.commit(len);
                return;
            }
            Err(TryClaimError::Full { .. }) => thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Reads `n` records, trying to unblock dead writers' claims whenever it finds nothing (far more
/// eagerly than the reads do on their own), and checks each writer's records arrive once, in
/// order, untorn. Returns how many records of each writer it read.
fn read_all(rx: &mut Consumer<HeapMemory>, n: usize, len: usize) -> [u8; 2] {
    let mut next = [0u8; 2];
    let mut got = 0;
    while got < n {
        let read = rx.try_read().map(|r| r.to_vec());
        match read {
            Ok(r) => {
                let (id, seq) = (r[0], r[1]);
                assert!(id < 2, "record of an unknown writer {id}");
                assert_eq!(
                    seq,
                    next[usize::from(id)],
                    "writer {id}: order, loss or repeat"
                );
                let mut want = fill(id, seq, len);
                want[0] = id;
                want[1] = seq;
                assert_eq!(r, want, "torn record");
                next[usize::from(id)] += 1;
                got += 1;
            }
            Err(TryReadError::Empty) => {
                rx.unblock().unwrap();
                thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
    }
    next
}

/// Two writers, one record each, claim and commit while the consumer reads: each record once,
/// and the consumer, trying to unblock at every empty poll, never skips a live writer's claim
/// (whatever point of a claim loom stops a writer at: before its CAS, between the CAS and the
/// claimed header, between claim and commit).
#[test]
fn two_writers_claim_commit_read() {
    loom::model(|| {
        let (ws, mut rx) = mpsc::channel(128, 2).unwrap();
        let handles: Vec<_> = (0..2u8)
            .map(|id| {
                let mut tx = ws.writer().unwrap();
                thread::spawn(move || send(&mut tx, id, 0, 24))
            })
            .collect();
        assert_eq!(read_all(&mut rx, 2, 24), [1, 1]);
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    });
}

/// Across the wrap and a full ring: writer 0 sends two records of 40 bytes (48 with the header),
/// writer 1 one; the 128-byte ring holds two, so the third claim waits for space and needs
/// padding at the end of the data area (the consumer zeroes what it consumed: the headers of
/// the next lap must read "nothing yet").
#[test]
fn wrap_and_full() {
    loom::model(|| {
        let (ws, mut rx) = mpsc::channel(128, 2).unwrap();
        let mut a = ws.writer().unwrap();
        let mut b = ws.writer().unwrap();
        let ta = thread::spawn(move || {
            send(&mut a, 0, 0, 40);
            send(&mut a, 0, 1, 40);
        });
        let tb = thread::spawn(move || send(&mut b, 1, 0, 40));
        assert_eq!(read_all(&mut rx, 3, 40), [2, 1]);
        ta.join().unwrap();
        tb.join().unwrap();
        // The header after the last record is one of the first lap's: zeroed, it must not look
        // committed.
        assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    });
}

/// A writer killed between claim and commit: the consumer gets the other writer's record
/// (claimed before or after the dead claim) and never the dead claim.
#[test]
fn killed_writer_is_unblocked() {
    loom::model(|| {
        let (ws, mut rx) = mpsc::channel(128, 2).unwrap();
        let mut dead = ws.writer().unwrap();
        let mut live = ws.writer().unwrap();
        let mem = ws.memory().clone();
        let td = thread::spawn(move || {
            let slot = dead.slot_index();
            let mut g = dead.try_claim(24).unwrap();
            g.fill(0xee);
            mem.kill(slot);
            // A killed writer's grant and writer drop without touching the ring.
            drop(g);
            drop(dead);
        });
        let tl = thread::spawn(move || send(&mut live, 1, 0, 24));
        assert_eq!(read_all(&mut rx, 1, 24), [0, 1]);
        td.join().unwrap();
        tl.join().unwrap();
        // The dead claim (if it came last) is padding once unblocked; nothing else is left.
        rx.unblock().unwrap();
        assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    });
}

/// A writer that died between its CAS of the tail and the store of its claimed header: modelled
/// by a live writer that wipes its claimed header back to "nothing yet" (what the ring holds
/// at that instant), then dies. While it lives the consumer waits (its intent names the
/// claim); once it is dead the consumer pads the space up to the next record boundary, and
/// reads the other writer's record.
#[test]
fn writer_dead_before_its_header_is_unblocked() {
    loom::model(|| {
        let (ws, mut rx) = mpsc::channel(128, 2).unwrap();
        let mut dead = ws.writer().unwrap();
        let mut live = ws.writer().unwrap();
        let mem = ws.memory().clone();
        let td = thread::spawn(move || {
            let slot = dead.slot_index();
            let g = dead.try_claim(8).unwrap();
            let off = g.position() & (mem.capacity() - 1);
            // SAFETY: `off` is the 16-aligned offset of this writer's own claim.
            unsafe { mem.header(off) }.store(0, std::sync::atomic::Ordering::Relaxed);
            mem.kill(slot);
            drop(g);
            drop(dead);
        });
        let tl = thread::spawn(move || send(&mut live, 1, 0, 8));
        assert_eq!(read_all(&mut rx, 1, 8), [0, 1]);
        td.join().unwrap();
        tl.join().unwrap();
    });
}

/// The parked-flag futex protocol, consumer side: a consumer that sleeps as soon as the ring is
/// empty is woken by either writer's commit.
#[test]
fn futex_consumer_never_misses_a_wake() {
    loom::model(|| {
        let (ws, mut rx) = mpsc::channel(128, 2).unwrap();
        rx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
        let handles: Vec<_> = (0..2u8)
            .map(|id| {
                let mut tx = ws.writer().unwrap();
                thread::spawn(move || send(&mut tx, id, 0, 8))
            })
            .collect();
        let mut seen = [false; 2];
        for _ in 0..2 {
            let r = rx.read().unwrap();
            seen[usize::from(r[0])] = true;
        }
        assert_eq!(seen, [true, true]);
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// The parked-flag futex protocol, writer side: two writers that sleep (on one shared word) as
/// soon as the ring is full are both woken by the consumer's releases.
#[test]
fn futex_writers_never_miss_a_wake() {
    loom::model(|| {
        let (ws, mut rx) = mpsc::channel(128, 2).unwrap();
        // 40 + 8 = 48 bytes: two records fill the ring, the other two wait.
        let handles: Vec<_> = (0..2u8)
            .map(|id| {
                let mut tx = ws.writer().unwrap();
                tx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
                thread::spawn(move || {
                    for seq in 0..2u8 {
                        let mut g = tx.claim(40).unwrap();
                        g[0] = id;
                        g[1] = seq;
                        g.commit(40);
                    }
                })
            })
            .collect();
        let mut next = [0u8; 2];
        for _ in 0..4 {
            loop {
                match rx.try_read() {
                    Ok(r) => {
                        let id = usize::from(r[0]);
                        assert_eq!(r[1], next[id]);
                        next[id] += 1;
                        break;
                    }
                    Err(TryReadError::Empty) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        for h in handles {
            h.join().unwrap();
        }
    });
}
