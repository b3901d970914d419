//! The broadcast ring conformance suite, written once and run on heap memory (`heap::*`) and
//! POSIX shared memory (`shm::*`), for both slow-reader policies: every reader sees every record
//! in order (Block), lapped readers are told exactly how many records they lost (Lap),
//! wrap-around and padding, the largest and empty records, 64-bit positions near `u64::MAX`,
//! readers joining and leaving mid-stream, late joiners with history, a gone writer.

use std::thread;
use std::time::Duration;

use shmesh_ring::broadcast::{ReadError, Reader, Start, TryReadError, Writer};
use shmesh_ring::{BroadcastPolicy, ClaimError, RingMemory, TryClaimError, WaitStrategy};

/// How long any single blocking call of a test may wait: turns a hang into a failure.
const LONG: Duration = Duration::from_secs(30);

/// Payload of record `seq`: its length and bytes derived from `seq`, so a reader can tell a
/// torn, lost, duplicated or reordered record.
fn payload(seq: u64, max: usize) -> Vec<u8> {
    let len = ((seq.wrapping_mul(2654435761) >> 7) as usize) % (max + 1);
    let mut v: Vec<u8> = (0..len)
        .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    if len >= 8 {
        v[..8].copy_from_slice(&seq.to_le_bytes());
    }
    v
}

fn send<M: RingMemory>(tx: &mut Writer<M>, bytes: &[u8]) {
    let mut grant = tx.claim_timeout(bytes.len(), LONG).expect("claim");
    grant.copy_from_slice(bytes);
    grant.commit(bytes.len());
}

/// A record of exactly `len` bytes carrying `seq` (and its complement) when it has room.
fn fixed(seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![seq as u8; len];
    if len >= 16 {
        v[..8].copy_from_slice(&seq.to_le_bytes());
        v[8..16].copy_from_slice(&(!seq).to_le_bytes());
    }
    v
}

/// What a test needs of a ring: the writer, and a way to join readers.
trait Ring: Send + Sync + 'static {
    type M: RingMemory + Send + 'static;
    fn join(&self, start: Start) -> Reader<Self::M>;
    /// Simulates the death of the reader in `slot`, if this memory can.
    fn kill(&self, _slot: usize) -> bool {
        false
    }
}

type Make<R> = fn(u64, usize, BroadcastPolicy, usize, u64) -> (Writer<<R as Ring>::M>, R);

// ---- Block: every reader sees every record ----

fn fifo_two_readers<R: Ring>(make: Make<R>, wait: WaitStrategy, start: u64, count: u64) {
    let (mut tx, ring) = make(512, 4, BroadcastPolicy::Block, 0, start);
    tx.set_wait_strategy(wait);
    let max = (tx.max_payload() as usize).min(200);
    let ring = std::sync::Arc::new(ring);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut rx = ring.join(Start::Latest);
            rx.set_wait_strategy(wait);
            thread::spawn(move || {
                for seq in 0..count {
                    let r = rx.read_timeout(LONG).expect("read");
                    assert_eq!(r.number(), seq);
                    assert_eq!(&*r, &payload(seq, max)[..], "record {seq}");
                }
                // The writer drops after the last record: nothing more, then PeerGone.
                assert_eq!(rx.read_timeout(LONG).unwrap_err(), ReadError::PeerGone);
            })
        })
        .collect();
    for seq in 0..count {
        send(&mut tx, &payload(seq, max));
    }
    drop(tx);
    for r in readers {
        r.join().unwrap();
    }
}

// ---- Lap: readers are lapped and told exactly what they lost ----

fn lapped_readers_across_threads<R: Ring>(make: Make<R>) {
    let (mut tx, ring) = make(256, 2, BroadcastPolicy::Lap, 0, 0);
    let count = 20_000u64;
    let max = (tx.max_payload() as usize).min(100);
    let ring = std::sync::Arc::new(ring);
    let readers: Vec<_> = (0..2)
        .map(|i| {
            let mut rx = ring.join(Start::Latest);
            rx.set_wait_strategy(WaitStrategy::spin_yield());
            thread::spawn(move || {
                let (mut expect, mut got, mut lost) = (0u64, 0u64, 0u64);
                loop {
                    let result = rx.read_timeout(LONG).map(|r| (r.number(), r.to_vec()));
                    match result {
                        Ok((number, bytes)) => {
                            let r = (number, bytes);
                            assert_eq!(r.0, expect, "reader {i}");
                            assert_eq!(r.1, payload(expect, max), "reader {i} record {expect}");
                            expect += 1;
                            got += 1;
                            if i == 1 && expect % 64 == 0 {
                                // A slow reader: gets lapped.
                                thread::sleep(Duration::from_micros(200));
                            }
                        }
                        Err(ReadError::Lapped { lost: n }) => {
                            assert!(n > 0);
                            expect += n;
                            lost += n;
                            assert_eq!(rx.lost(), lost);
                            assert_eq!(rx.record_number(), expect);
                        }
                        Err(ReadError::PeerGone) => break,
                        Err(e) => panic!("reader {i}: {e}"),
                    }
                }
                assert_eq!(expect, count, "reader {i} accounted for every record");
                assert_eq!(got + lost, count);
            })
        })
        .collect();
    for seq in 0..count {
        send(&mut tx, &payload(seq, max));
    }
    drop(tx);
    for r in readers {
        r.join().unwrap();
    }
}

fn lapped_count_is_exact<R: Ring>(make: Make<R>, start: u64) {
    // Records of 24 bytes take 32: 8 per 256-byte lap, never padded.
    let (cap, len, per_lap) = (256u64, 24usize, 8u64);
    let (mut tx, ring) = make(cap, 1, BroadcastPolicy::Lap, 0, start);
    let mut rx = ring.join(Start::Latest);
    for seq in 0..3 {
        send(&mut tx, &fixed(seq, len));
    }
    for seq in 0..3 {
        assert_eq!(*rx.try_read().unwrap(), fixed(seq, len)[..]);
    }
    // The reader stands at record 3; the writer writes 20 more (2.5 laps) and stops.
    let total = 23u64;
    for seq in 3..total {
        send(&mut tx, &fixed(seq, len));
    }
    // The writer's intent ends 16 bytes after its last record: record j (starting at 32 j) is
    // intact while 32 j >= 32 total + 16 - cap, so from total - 7 on.
    let oldest = total - (cap - 16) / 32;
    assert_eq!(oldest, total - per_lap + 1);
    let lost = oldest - 3;
    assert_eq!(
        rx.try_read().unwrap_err(),
        TryReadError::Lapped { lost },
        "lapped by {lost} records"
    );
    assert_eq!(rx.lost(), lost);
    assert_eq!(rx.record_number(), oldest);
    for seq in oldest..total {
        let r = rx.try_read().unwrap();
        assert_eq!((r.number(), &*r), (seq, &fixed(seq, len)[..]));
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    // A reader at the writer's tail is never lapped by records it has not missed.
    for seq in total..total + 2 * per_lap {
        send(&mut tx, &fixed(seq, len));
        assert_eq!(*rx.try_read().unwrap(), fixed(seq, len)[..]);
    }
    assert_eq!(rx.lost(), lost);
    // Lapped while waiting at its tail (the header there was overwritten by a later lap).
    let now = total + 2 * per_lap;
    for seq in now..now + per_lap + 1 {
        send(&mut tx, &fixed(seq, len));
    }
    match rx.try_read() {
        Err(TryReadError::Lapped { lost }) => assert_eq!(lost, 2, "one record past a full lap"),
        other => panic!("expected Lapped, got {:?}", other.map(|r| r.to_vec())),
    }
    assert_eq!(rx.try_read().unwrap().number(), now + 2);
}

fn lap_writer_never_waits<R: Ring>(make: Make<R>) {
    let (mut tx, ring) = make(128, 1, BroadcastPolicy::Lap, 0, 0);
    let _idle = ring.join(Start::Latest);
    for seq in 0..100u64 {
        let mut g = tx.try_claim(40).expect("a Lap writer never waits");
        g.fill(seq as u8);
        g.commit(40);
    }
    assert_eq!(tx.published(), 100);
}

// ---- both policies ----

fn wrap_around_single_thread<R: Ring>(
    make: Make<R>,
    policy: BroadcastPolicy,
    cap: u64,
    start: u64,
) {
    let (mut tx, ring) = make(cap, 2, policy, 0, start);
    let mut a = ring.join(Start::Latest);
    let mut b = ring.join(Start::Latest);
    let max = tx.max_payload() as usize;
    let (mut next_a, mut next_b) = (0u64, 0u64);
    let count = 2000u64;
    for seq in 0..count {
        let p = payload(seq, max);
        loop {
            match tx.try_claim(p.len()) {
                Ok(mut g) => {
                    g.copy_from_slice(&p);
                    g.commit(p.len());
                    break;
                }
                Err(TryClaimError::Full { needed, free }) => {
                    assert_eq!(policy, BroadcastPolicy::Block);
                    assert!(needed > free);
                    // The slower reader holds the writer back: read from it.
                    let (rx, next) = if next_a <= next_b {
                        (&mut a, &mut next_a)
                    } else {
                        (&mut b, &mut next_b)
                    };
                    assert_eq!(*rx.try_read().unwrap(), payload(*next, max)[..]);
                    *next += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        if policy == BroadcastPolicy::Lap {
            // Lap readers keep up here: they must see every record, across every wrap.
            for (rx, next) in [(&mut a, &mut next_a), (&mut b, &mut next_b)] {
                assert_eq!(*rx.try_read().unwrap(), payload(*next, max)[..]);
                *next += 1;
            }
        }
    }
    for (rx, next) in [(&mut a, &mut next_a), (&mut b, &mut next_b)] {
        while *next < count {
            assert_eq!(*rx.try_read().unwrap(), payload(*next, max)[..]);
            *next += 1;
        }
        assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    }
}

fn largest_and_empty_records<R: Ring>(make: Make<R>, policy: BroadcastPolicy) {
    let (mut tx, ring) = make(256, 1, policy, 0, 0);
    let mut rx = ring.join(Start::Latest);
    let max = tx.max_payload();
    assert_eq!(max, 256 / 2 - 24);
    assert_eq!(
        tx.try_claim(max as usize + 1).unwrap_err(),
        TryClaimError::TooLarge { len: max + 1, max }
    );
    assert_eq!(
        tx.claim(max as usize + 1).unwrap_err(),
        ClaimError::TooLarge { len: max + 1, max }
    );
    for round in 0..6u8 {
        let mut g = tx.try_claim(max as usize).unwrap();
        g.fill(round);
        g.set_kind(u32::from(round));
        g.commit(max as usize);
        let r = rx.try_read().unwrap();
        assert_eq!((r.len(), r.kind()), (max as usize, u32::from(round)));
        assert!(r.iter().all(|&b| b == round));
        drop(r);
        // Empty records are records too.
        tx.try_claim(0).unwrap().commit(0);
        let r = rx.try_read().unwrap();
        assert!(r.is_empty());
        assert_eq!(r.as_ptr() as usize % 16, 0, "payloads stay 16-byte aligned");
    }
    // Short commits and aborts.
    let mut g = tx.try_claim(50).unwrap();
    g.fill(1);
    g.abort();
    let mut g = tx.try_claim(50).unwrap();
    g[..3].copy_from_slice(b"abc");
    g.commit(3);
    assert_eq!(*rx.try_read().unwrap(), *b"abc");
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

fn history_joiners_see_the_last_k<R: Ring>(make: Make<R>, policy: BroadcastPolicy) {
    let history = 5;
    let (mut tx, ring) = make(4096, 8, policy, history, 0);
    assert_eq!(
        tx.history_len(),
        if policy == BroadcastPolicy::Lap {
            248
        } else {
            5
        }
    );
    // Fewer records than asked for: the joiner gets all of them.
    send(&mut tx, &fixed(0, 20));
    let mut early = ring.join(Start::History(3));
    assert_eq!(early.record_number(), 0);
    assert_eq!(*early.try_read().unwrap(), fixed(0, 20)[..]);
    assert_eq!(early.try_read().unwrap_err(), TryReadError::Empty);
    drop(early);
    for seq in 1..20 {
        send(&mut tx, &fixed(seq, 20));
    }
    for k in [0usize, 1, 3, 5] {
        let mut rx = ring.join(Start::History(k));
        assert_eq!(rx.record_number(), 20 - k as u64);
        for seq in 20 - k as u64..20 {
            let r = rx.try_read().unwrap();
            assert_eq!(
                (r.number(), &*r),
                (seq, &fixed(seq, 20)[..]),
                "History({k})"
            );
        }
        assert_eq!(
            rx.try_read().unwrap_err(),
            TryReadError::Empty,
            "History({k})"
        );
    }
    // More than the ring keeps: clamped to its history.
    let k = tx.history_len().min(20);
    let mut rx = ring.join(Start::History(1000));
    assert_eq!(rx.record_number(), 20 - k as u64);
    let mut n = 0;
    while let Ok(r) = rx.try_read() {
        assert_eq!(*r, fixed(20 - k as u64 + n, 20)[..]);
        n += 1;
    }
    assert_eq!(n, k as u64);
    // Latest: only what comes next.
    let mut latest = ring.join(Start::default());
    assert_eq!(latest.try_read().unwrap_err(), TryReadError::Empty);
    send(&mut tx, &fixed(20, 20));
    assert_eq!(latest.try_read().unwrap().number(), 20);
}

fn block_history_is_kept_while_it_fits<R: Ring>(make: Make<R>) {
    // 4 records of history, records of 32 bytes in a 256-byte ring: they always fit beside
    // the record being written, so a late joiner always finds all 4.
    let (mut tx, ring) = make(256, 2, BroadcastPolicy::Block, 4, 0);
    for seq in 0..50u64 {
        send(&mut tx, &fixed(seq, 24));
        if seq >= 3 {
            let mut rx = ring.join(Start::History(4));
            for want in seq - 3..=seq {
                assert_eq!(*rx.try_read().unwrap(), fixed(want, 24)[..]);
            }
        }
    }
    // Records so large that the history cannot fit: the writer never waits for it.
    for seq in 50..60u64 {
        let mut g = tx.try_claim(100).expect("history never blocks the writer");
        g.fill(seq as u8);
        g.commit(100);
    }
    let mut rx = ring.join(Start::History(4));
    let first = rx.record_number();
    assert!(
        (56..60).contains(&first),
        "starts at a record still intact: {first}"
    );
    for seq in first..60 {
        assert!(rx.try_read().unwrap().iter().all(|&b| b == seq as u8));
    }
}

fn join_and_leave_mid_stream<R: Ring>(make: Make<R>, policy: BroadcastPolicy) {
    let (mut tx, ring) = make(512, 3, policy, 0, 0);
    let mut a = ring.join(Start::Latest);
    for seq in 0..10 {
        send(&mut tx, &fixed(seq, 24));
    }
    let mut b = ring.join(Start::Latest);
    assert_eq!(b.record_number(), 10);
    for seq in 0..10 {
        assert_eq!(a.try_read().unwrap().number(), seq);
    }
    for seq in 10..20 {
        send(&mut tx, &fixed(seq, 24));
    }
    for seq in 10..20 {
        assert_eq!(a.try_read().unwrap().number(), seq);
    }
    for seq in 10..20 {
        let r = b.try_read().unwrap();
        assert_eq!((r.number(), &*r), (seq, &fixed(seq, 24)[..]));
    }
    // A leaves without reading on; B keeps up. A Block writer no longer waits for A.
    for seq in 20..25 {
        send(&mut tx, &fixed(seq, 24));
    }
    drop(a);
    for seq in 25..200 {
        send(&mut tx, &fixed(seq, 24));
        assert_eq!(b.try_read().unwrap().number(), seq - 5);
    }
    // Its slot is free again; a third reader joins as C.
    let mut c = ring.join(Start::Latest);
    let mut d = ring.join(Start::Latest);
    send(&mut tx, &fixed(200, 24));
    assert_eq!(c.try_read().unwrap().number(), 200);
    assert_eq!(d.try_read().unwrap().number(), 200);
    if policy == BroadcastPolicy::Block {
        // B is 5 records behind: the writer fills the ring up to it and waits.
        let mut written = 201u64;
        while let Ok(mut g) = tx.try_claim(24) {
            g.copy_from_slice(&fixed(written, 24));
            g.commit(24);
            written += 1;
        }
        assert!(matches!(
            tx.claim_timeout(24, Duration::from_millis(10)),
            Err(ClaimError::Timeout)
        ));
        // B reads one record: room for one more.
        assert_eq!(b.try_read().unwrap().number(), 195);
        tx.try_claim(24).expect("room after B read").commit(24);
    }
}

fn writer_gone<R: Ring>(make: Make<R>, policy: BroadcastPolicy) {
    let (mut tx, ring) = make(256, 2, policy, 0, 0);
    let mut rx = ring.join(Start::Latest);
    rx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
    send(&mut tx, b"last words");
    drop(tx);
    assert_eq!(rx.peer(), shmesh_ring::PeerState::Gone);
    assert_eq!(&*rx.read_timeout(LONG).unwrap(), b"last words");
    assert_eq!(rx.read_timeout(LONG).unwrap_err(), ReadError::PeerGone);
    // try_read notices too, after its periodic check of the writer's token.
    let saw_gone = (0..5000).any(|_| rx.try_read().err() == Some(TryReadError::PeerGone));
    assert!(saw_gone);
}

fn sleeping_readers_are_woken<R: Ring>(make: Make<R>, policy: BroadcastPolicy) {
    let (mut tx, ring) = make(256, 2, policy, 0, 0);
    let ring = std::sync::Arc::new(ring);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut rx = ring.join(Start::Latest);
            rx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
            thread::spawn(move || {
                let mut seq = 0u64;
                while seq < 200 {
                    match rx.read_timeout(LONG) {
                        Ok(r) => assert_eq!(*r, seq.to_le_bytes()),
                        // A Lap writer does not wait for a reader that is slow to wake.
                        Err(ReadError::Lapped { lost }) if policy == BroadcastPolicy::Lap => {
                            seq += lost;
                            continue;
                        }
                        Err(e) => panic!("woken for every record: {e}"),
                    }
                    seq += 1;
                }
            })
        })
        .collect();
    tx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
    for seq in 0..200u64 {
        if seq % 20 == 0 {
            // Let the readers fall asleep now and then.
            thread::sleep(Duration::from_millis(2));
        }
        send(&mut tx, &seq.to_le_bytes());
    }
    for r in readers {
        r.join().unwrap();
    }
}

fn check_and_wait_without_taking<R: Ring>(make: Make<R>, policy: BroadcastPolicy) {
    let (mut tx, ring) = make(256, 1, policy, 0, 0);
    let mut rx = ring.join(Start::Latest);
    assert_eq!(rx.check_record().unwrap_err(), TryReadError::Empty);
    assert_eq!(
        rx.wait_timeout(Duration::from_millis(5)).unwrap_err(),
        ReadError::Timeout
    );
    tx.check_space(24).unwrap();
    tx.wait_for_space(24, Duration::from_millis(5)).unwrap();
    send(&mut tx, b"one");
    send(&mut tx, &[0xff, 0xfe]);
    rx.check_record().unwrap();
    rx.wait_timeout(LONG).unwrap();
    let view = rx.try_read().unwrap().map(std::str::from_utf8).unwrap();
    assert_eq!((&*view, view.number()), ("one", 0));
    drop(view);
    assert!(rx.try_read().unwrap().map(std::str::from_utf8).is_err());
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

fn counters_land_in_the_slots<R: Ring>(make: Make<R>) {
    let (mut tx, ring) = make(256, 1, BroadcastPolicy::Lap, 0, 0);
    let mut rx = ring.join(Start::Latest);
    for seq in 0..3 {
        send(&mut tx, &fixed(seq, 10));
    }
    for _ in 0..3 {
        drop(rx.try_read().unwrap());
    }
    for seq in 3..30 {
        send(&mut tx, &fixed(seq, 10));
    }
    let Err(TryReadError::Lapped { lost }) = rx.try_read() else {
        panic!("expected a lap")
    };
    drop(rx.try_read().unwrap());
    let w = tx.memory().slot(0);
    let r = rx.memory().slot(rx.slot_index());
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((load(&w.messages), load(&w.bytes)), (30, 300));
    assert_eq!((load(&r.messages), load(&r.bytes)), (4, 40));
    assert_eq!(load(&r.dropped), lost);
}

fn no_free_slot_then_a_left_one_is_reused<R: Ring + TryJoin>(make: Make<R>) {
    let (_tx, ring) = make(256, 2, BroadcastPolicy::Block, 0, 0);
    let a = ring.join(Start::Latest);
    let _b = ring.join(Start::Latest);
    assert!(matches!(
        ring.try_join(),
        Err(shmesh_ring::AttachError::NoFreeSlot { slots: 2, .. })
    ));
    let slot = a.slot_index();
    drop(a);
    assert_eq!(ring.try_join().unwrap().slot_index(), slot);
}

trait TryJoin: Ring {
    fn try_join(&self) -> Result<Reader<Self::M>, shmesh_ring::AttachError>;
}

fn dead_reader_is_dropped<R: Ring>(make: Make<R>) {
    let (mut tx, ring) = make(256, 2, BroadcastPolicy::Block, 0, 0);
    tx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
    let stuck = ring.join(Start::Latest);
    let mut live = ring.join(Start::Latest);
    if !ring.kill(stuck.slot_index()) {
        return;
    }
    assert_eq!(tx.live_readers(), 1);
    for seq in 0..100u64 {
        send(&mut tx, &fixed(seq, 24));
        assert_eq!(live.try_read().unwrap().number(), seq);
    }
    std::mem::forget(stuck); // its slot was taken from it
}

macro_rules! suite {
    ($make:expr) => {
        use super::*;
        use shmesh_ring::BroadcastPolicy::{Block, Lap};

        #[test]
        fn fifo_spin() {
            // Three spinning threads on as few as two cores: fewer records.
            fifo_two_readers($make, WaitStrategy::Spin, 0, 300);
        }

        #[test]
        fn fifo_yield() {
            fifo_two_readers($make, WaitStrategy::spin_yield(), 0, 20_000);
        }

        #[test]
        fn fifo_futex() {
            fifo_two_readers($make, WaitStrategy::Futex { spins: 0 }, 0, 20_000);
        }

        #[test]
        fn fifo_near_u64_max() {
            fifo_two_readers($make, WaitStrategy::futex(), u64::MAX - 2047, 5_000);
        }

        #[test]
        fn lapped_readers() {
            lapped_readers_across_threads($make);
        }

        #[test]
        fn lapped_count() {
            lapped_count_is_exact($make, 0);
            lapped_count_is_exact($make, u64::MAX - 255);
        }

        #[test]
        fn lap_never_waits() {
            lap_writer_never_waits($make);
        }

        #[test]
        fn wrap_around() {
            for policy in [Block, Lap] {
                wrap_around_single_thread($make, policy, 256, 0);
                wrap_around_single_thread($make, policy, 256, u64::MAX - 15);
                wrap_around_single_thread($make, policy, 4096, u64::MAX - 4095 - 48);
            }
        }

        #[test]
        fn largest_and_empty() {
            largest_and_empty_records($make, Block);
            largest_and_empty_records($make, Lap);
        }

        #[test]
        fn history() {
            history_joiners_see_the_last_k($make, Block);
            history_joiners_see_the_last_k($make, Lap);
            block_history_is_kept_while_it_fits($make);
        }

        #[test]
        fn join_and_leave() {
            join_and_leave_mid_stream($make, Block);
            join_and_leave_mid_stream($make, Lap);
        }

        #[test]
        fn peer_gone() {
            writer_gone($make, Block);
            writer_gone($make, Lap);
        }

        #[test]
        fn futex_wakeups() {
            sleeping_readers_are_woken($make, Block);
            sleeping_readers_are_woken($make, Lap);
        }

        #[test]
        fn check_and_wait() {
            check_and_wait_without_taking($make, Block);
            check_and_wait_without_taking($make, Lap);
        }

        #[test]
        fn counters() {
            counters_land_in_the_slots($make);
        }

        #[test]
        fn slots() {
            no_free_slot_then_a_left_one_is_reused($make);
        }

        #[test]
        fn dead_reader() {
            dead_reader_is_dropped($make);
        }
    };
}

mod heap {
    use shmesh_ring::broadcast::{self, Readers};
    use shmesh_ring::HeapMemory;

    pub struct Heap(Readers);

    impl super::Ring for Heap {
        type M = HeapMemory;
        fn join(&self, start: super::Start) -> super::Reader<HeapMemory> {
            self.0.join(start).expect("join")
        }
        fn kill(&self, slot: usize) -> bool {
            self.0.memory().kill(slot);
            true
        }
    }

    impl super::TryJoin for Heap {
        fn try_join(&self) -> Result<super::Reader<HeapMemory>, shmesh_ring::AttachError> {
            self.0.join(super::Start::Latest)
        }
    }

    fn make(
        capacity: u64,
        readers: usize,
        policy: super::BroadcastPolicy,
        history: usize,
        start: u64,
    ) -> (super::Writer<HeapMemory>, Heap) {
        let (tx, readers) =
            broadcast::channel_at(capacity, readers, policy, history, start).unwrap();
        (tx, Heap(readers))
    }

    suite!(make as super::Make<Heap>);
}

mod shm {
    use std::sync::atomic::{AtomicU32, Ordering};

    use shmesh_ring::{Segment, SegmentBuilder, SegmentKind, ShmMemory};

    pub struct Shm(Segment);

    impl super::Ring for Shm {
        type M = ShmMemory;
        fn join(&self, start: super::Start) -> super::Reader<ShmMemory> {
            self.0.broadcast_reader(start).expect("join")
        }
    }

    impl super::TryJoin for Shm {
        fn try_join(&self) -> Result<super::Reader<ShmMemory>, shmesh_ring::AttachError> {
            self.0.broadcast_reader(super::Start::Latest)
        }
    }

    fn make(
        capacity: u64,
        readers: usize,
        policy: super::BroadcastPolicy,
        history: usize,
        start: u64,
    ) -> (super::Writer<ShmMemory>, Shm) {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "broadcast.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let created = SegmentBuilder::new(&name)
            .kind(SegmentKind::BroadcastRing)
            .capacity(capacity)
            .endpoints(readers)
            .policy(policy)
            .history(history)
            .start_position(start)
            .create()
            .unwrap();
        let opened = SegmentBuilder::new(&name)
            .kind(SegmentKind::BroadcastRing)
            .capacity(capacity)
            .policy(policy)
            .history(history)
            .open()
            .unwrap();
        assert_eq!(opened.history_len(), created.history_len());
        (created.broadcast_writer().unwrap(), Shm(opened))
    }

    suite!(make as super::Make<Shm>);

    /// A new writer takes over from one that left, and from one that died after publishing a
    /// record's header but before counting it (the count is set back by hand, as a SIGKILL at
    /// that instruction leaves it): readers see every record once, numbered in order.
    #[test]
    fn writer_takeover() {
        for policy in [Block, Lap] {
            let (mut tx, ring) = make(256, 2, policy, 2, 0);
            let mut rx = ring.join(super::Start::Latest);
            for seq in 0..5 {
                send(&mut tx, &fixed(seq, 24));
            }
            drop(tx);
            let mut tx = ring.0.broadcast_writer().expect("a writer can take over");
            assert_eq!(tx.published(), 5);
            send(&mut tx, &fixed(5, 24));
            let counted = &tx.memory().broadcast().published;
            counted.store(5, Ordering::Release);
            drop(tx);
            for seq in 0..6 {
                let r = rx.try_read().unwrap();
                assert_eq!((r.number(), &*r), (seq, &fixed(seq, 24)[..]));
            }
            let mut tx = ring.0.broadcast_writer().expect("a writer can take over");
            assert_eq!(tx.published(), 6, "the uncounted record is counted again");
            for seq in 6..40 {
                send(&mut tx, &fixed(seq, 24));
                let r = rx.try_read().unwrap();
                assert_eq!((r.number(), &*r), (seq, &fixed(seq, 24)[..]));
            }
            let mut late = ring.join(super::Start::History(2));
            assert_eq!(late.try_read().unwrap().number(), 38);
        }
    }
}
