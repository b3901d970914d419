//! The MPSC ring conformance suite, written once and run on every memory: heap (`heap::*`, also
//! under miri) and POSIX shared memory (`shm::*`). Per-writer order, every record exactly once,
//! no torn record, wrap-around with padding, the largest record, empty records, aborts and
//! short commits, batches, full/empty, 64-bit positions near `u64::MAX`, peers leaving,
//! futex wake-ups both ways, counters. Writers that die are in `heap::recovery` (heap memory
//! simulates a death with `HeapMemory::kill`) and in `mpsc_processes.rs` (real `kill -9`).

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use shmesh_ring::mpsc::{Consumer, Writer};
use shmesh_ring::{
    ClaimError, PeerState, ReadError, RingMemory, TryClaimError, TryReadError, WaitStrategy,
};

/// A ring under test: the consumer, and a way to attach more writers.
struct Ring<M: RingMemory> {
    writer: Box<dyn Fn() -> Writer<M> + Send + Sync>,
    rx: Consumer<M>,
}

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(20);

/// Payload of record `seq` of writer `id`: its length and bytes derived from both, so a reader
/// can tell a torn, lost, duplicated, foreign or reordered record. At least 9 bytes.
fn payload(id: u8, seq: u64, max: usize) -> Vec<u8> {
    let span = max.min(300) - 8;
    let len = 9 + ((seq.wrapping_mul(2654435761) >> 7) as usize + usize::from(id) * 7) % span;
    let mut v: Vec<u8> = (0..len)
        .map(|i| (seq as u8 ^ id).wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    v[0] = id;
    v[1..9].copy_from_slice(&seq.to_le_bytes());
    v
}

/// The writer and sequence number of a record made by [`payload`]; panics on anything else.
#[track_caller]
fn check(bytes: &[u8], max: usize) -> (u8, u64) {
    assert!(bytes.len() >= 9, "record of {} bytes", bytes.len());
    let id = bytes[0];
    let seq = u64::from_le_bytes(bytes[1..9].try_into().unwrap());
    assert_eq!(
        bytes,
        payload(id, seq, max),
        "record {seq} of writer {id} is torn"
    );
    (id, seq)
}

fn send<M: RingMemory>(tx: &mut Writer<M>, bytes: &[u8]) {
    let mut grant = tx.claim_timeout(bytes.len(), LONG).expect("claim");
    grant.copy_from_slice(bytes);
    grant.commit(bytes.len());
}

fn recv<M: RingMemory>(rx: &mut Consumer<M>) -> Vec<u8> {
    rx.read_timeout(LONG).expect("read").to_vec()
}

fn eight(seq: u64) -> [u8; 8] {
    seq.to_le_bytes()
}

fn many_writers_fifo<M: RingMemory + Send + 'static>(
    ring: Ring<M>,
    writers: u8,
    count: u64,
    wait: WaitStrategy,
) {
    let Ring { writer, mut rx } = ring;
    rx.set_wait_strategy(wait);
    let count = if cfg!(miri) { count / 500 } else { count };
    let max = rx.capacity() as usize / 2 - 24;
    let handles: Vec<_> = (0..writers)
        .map(|id| {
            let mut tx = writer();
            tx.set_wait_strategy(wait);
            thread::spawn(move || {
                for seq in 0..count {
                    send(&mut tx, &payload(id, seq, max));
                }
            })
        })
        .collect();
    let mut next = vec![0u64; usize::from(writers)];
    for _ in 0..count * u64::from(writers) {
        let (id, seq) = check(&recv(&mut rx), max);
        assert_eq!(seq, next[usize::from(id)], "writer {id}: order or loss");
        next[usize::from(id)] += 1;
    }
    for h in handles {
        h.join().unwrap();
    }
    assert!(next.iter().all(|&n| n == count));
    assert_eq!(rx.read_timeout(LONG).unwrap_err(), ReadError::PeerGone);
}

fn wrap_around_single_thread<M: RingMemory>(ring: Ring<M>) {
    // Two writers take turns; many more bytes than the capacity, in varied sizes, up to the
    // largest record, with the ring often nearly full.
    let Ring { writer, mut rx } = ring;
    let mut txs = [writer(), writer()];
    let max = txs[0].max_payload() as usize;
    let count = if cfg!(miri) { 200 } else { 2000 };
    let mut read = [0u64; 2];
    let read_one = |rx: &mut Consumer<M>, read: &mut [u64; 2]| {
        let r = rx.try_read().expect("a record");
        let id = usize::from(r[0]);
        assert_eq!(&*r, &big_payload(id as u8, read[id], max)[..]);
        read[id] += 1;
    };
    for seq in 0..count {
        for id in 0..2u8 {
            let p = big_payload(id, seq, max);
            loop {
                match txs[usize::from(id)].try_claim(p.len()) {
                    Ok(mut g) => {
                        g.copy_from_slice(&p);
                        g.commit(p.len());
                        break;
                    }
                    Err(TryClaimError::Full { needed, free }) => {
                        assert!(needed > free);
                        read_one(&mut rx, &mut read);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
    while read != [count; 2] {
        read_one(&mut rx, &mut read);
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

/// Like [`payload`], any length from 1 to `max` (the largest record included).
fn big_payload(id: u8, seq: u64, max: usize) -> Vec<u8> {
    let len = match seq % 7 {
        0 => max,
        _ => 1 + ((seq.wrapping_mul(2654435761) >> 5) as usize) % max,
    };
    let mut v: Vec<u8> = (0..len)
        .map(|i| (seq as u8).wrapping_mul(13).wrapping_add(i as u8))
        .collect();
    v[0] = id;
    v
}

fn full_and_empty<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    let (mut a, mut b) = (writer(), writer());
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    let cap = a.capacity();
    // Records of 8 payload bytes take 16 bytes each and the consumer zeroes what it consumed,
    // so writers keep no slot free: exactly cap / 16 fit, from any mix of writers.
    for seq in 0..cap / 16 {
        let tx = if seq % 3 == 0 { &mut a } else { &mut b };
        let mut g = tx.try_claim(8).unwrap();
        g.copy_from_slice(&eight(seq));
        g.commit(8);
    }
    for tx in [&mut a, &mut b] {
        match tx.try_claim(0) {
            Err(TryClaimError::Full {
                needed: 16,
                free: 0,
            }) => {}
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(tx.claim_timeout(8, SHORT).unwrap_err(), ClaimError::Timeout);
    }
    for seq in 0..cap / 16 {
        assert_eq!(*rx.try_read().unwrap(), eight(seq));
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    assert_eq!(rx.read_timeout(SHORT).unwrap_err(), ReadError::Timeout);
    // And the whole ring is free again.
    for seq in 0..cap / 16 {
        let mut g = b.try_claim(8).unwrap();
        g.copy_from_slice(&eight(seq));
        g.commit(8);
    }
    for seq in 0..cap / 16 {
        assert_eq!(*rx.try_read().unwrap(), eight(seq));
    }
}

fn too_large_is_an_error<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    let mut tx = writer();
    let max = tx.max_payload();
    assert_eq!(max, tx.capacity() / 2 - 24);
    let err = tx.try_claim(max as usize + 1).unwrap_err();
    assert_eq!(err, TryClaimError::TooLarge { len: max + 1, max });
    assert!(err.to_string().contains(&max.to_string()), "{err}");
    assert_eq!(
        tx.claim(max as usize + 1).unwrap_err(),
        ClaimError::TooLarge { len: max + 1, max }
    );
    assert_eq!(
        tx.check_space(max as usize + 1).unwrap_err(),
        TryClaimError::TooLarge { len: max + 1, max }
    );
    // The largest record fits an empty ring wherever its positions stand.
    for round in 0..7u8 {
        let mut g = tx.try_claim(max as usize).unwrap();
        g.fill(round);
        g.commit(max as usize);
        let r = rx.try_read().unwrap();
        assert_eq!(r.len(), max as usize);
        assert!(r.iter().all(|&b| b == round));
        drop(r);
        let mut g = tx.try_claim(24).unwrap();
        g.fill(0xee);
        g.commit(24);
        assert_eq!(rx.try_read().unwrap().len(), 24);
    }
}

fn abort_and_short_commit<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    let (mut a, mut b) = (writer(), writer());
    let mut g = a.try_claim(100).unwrap();
    g.fill(0xaa);
    g.abort();
    {
        let mut g = b.try_claim(50).unwrap();
        g.fill(0xbb);
        // dropped without commit: aborted
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    // A short commit: the rest of the claim is padding, the next record follows it.
    let mut g = a.try_claim(100).unwrap();
    g.fill(0xcc);
    g[..3].copy_from_slice(b"abc");
    g.commit(3);
    let mut g = b.try_claim(10).unwrap();
    g.set_kind(7);
    g.copy_from_slice(b"0123456789");
    g.commit(10);
    let r = rx.try_read().unwrap();
    assert_eq!((&*r, r.kind()), (&b"abc"[..], 0));
    drop(r);
    let r = rx.try_read().unwrap();
    assert_eq!((&*r, r.kind()), (&b"0123456789"[..], 7));
    drop(r);
    // Claims are read in claim order: b's record waits for a's claim to be committed or aborted.
    let ga = a.try_claim(16).unwrap();
    let mut gb = b.try_claim(4).unwrap();
    gb.copy_from_slice(b"from");
    gb.commit(4);
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    assert_eq!(rx.read_timeout(SHORT).unwrap_err(), ReadError::Timeout);
    ga.abort();
    assert_eq!(&*rx.try_read().unwrap(), b"from");
    let mut ga = a.try_claim(16).unwrap();
    let mut gb = b.try_claim(4).unwrap();
    ga[..5].copy_from_slice(b"first");
    ga.commit(5);
    assert_eq!(&*rx.try_read().unwrap(), b"first");
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    gb.copy_from_slice(b"next");
    gb.commit(4);
    assert_eq!(&*rx.try_read().unwrap(), b"next");
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

fn empty_records<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    let mut tx = writer();
    for kind in 0..40u32 {
        let mut g = tx.try_claim(0).unwrap();
        g.set_kind(kind);
        g.commit(0);
        // And a claim committed empty.
        let mut g = tx.try_claim(33).unwrap();
        g.set_kind(kind + 1000);
        g.commit(0);
    }
    for kind in 0..40u32 {
        for k in [kind, kind + 1000] {
            let r = rx.try_read().unwrap();
            assert_eq!((r.len(), r.kind()), (0, k));
        }
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

fn payloads_are_16_byte_aligned<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    let mut tx = writer();
    for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 39, 40] {
        let mut g = tx.try_claim(len).unwrap();
        assert_eq!(g.as_mut_ptr() as usize % 16, 0, "grant of {len}");
        g.commit(len);
        let r = rx.try_read().unwrap();
        assert_eq!(r.as_ptr() as usize % 16, 0, "record of {len}");
        assert_eq!(r.len(), len);
    }
}

fn writers_gone_after_drain<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    assert_eq!(rx.peer(), PeerState::NotYet);
    assert_eq!(rx.read_timeout(SHORT).unwrap_err(), ReadError::Timeout);
    let (mut a, mut b) = (writer(), writer());
    assert_eq!(rx.peer(), PeerState::Alive);
    assert_eq!(a.peer(), PeerState::Alive);
    for seq in 0..3u64 {
        send(&mut a, &eight(seq));
        send(&mut b, &eight(seq + 100));
    }
    drop(a);
    assert_eq!(rx.peer(), PeerState::Alive, "b is still there");
    drop(b);
    assert_eq!(rx.peer(), PeerState::Gone);
    for seq in 0..3u64 {
        assert_eq!(recv(&mut rx), eight(seq));
        assert_eq!(recv(&mut rx), eight(seq + 100));
    }
    assert_eq!(rx.read_timeout(LONG).unwrap_err(), ReadError::PeerGone);
    assert_eq!(rx.read().unwrap_err(), ReadError::PeerGone);
    // try_read reports it too, after its periodic look at the writers.
    let gone = (0..5000).any(|_| rx.try_read().err() == Some(TryReadError::PeerGone));
    assert!(gone);
    // A new writer brings the ring back.
    let mut c = writer();
    send(&mut c, b"again");
    assert_eq!(recv(&mut rx), b"again");
}

fn consumer_gone_when_full<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, rx } = ring;
    let mut tx = writer();
    drop(rx);
    assert_eq!(tx.peer(), PeerState::Gone);
    // Space remains usable until the ring is full; then the writer learns nobody reads.
    let err = loop {
        match tx.claim_timeout(40, LONG) {
            Ok(g) => g.commit(40),
            Err(e) => break e,
        }
    };
    assert_eq!(err, ClaimError::PeerGone);
}

fn sleepers_are_woken<M: RingMemory + Send + 'static>(ring: Ring<M>) {
    // Both ways: the consumer sleeps when the ring is empty, three writers sleep (on one word)
    // when it is full.
    let Ring { writer, mut rx } = ring;
    let park = WaitStrategy::Futex { spins: 0 };
    rx.set_wait_strategy(park);
    let count: u64 = if cfg!(miri) { 10 } else { 300 };
    let handles: Vec<_> = (0..3u8)
        .map(|id| {
            let mut tx = writer();
            tx.set_wait_strategy(park);
            thread::spawn(move || {
                for seq in 0..count {
                    if seq % 50 == 0 {
                        thread::sleep(Duration::from_millis(1)); // let the reader fall asleep
                    }
                    let mut g = tx.claim(40).expect("claim");
                    g[0] = id;
                    g[1..9].copy_from_slice(&eight(seq));
                    g.commit(40);
                }
            })
        })
        .collect();
    let mut next = [0u64; 3];
    for i in 0..count * 3 {
        if i % 100 == 0 {
            thread::sleep(Duration::from_millis(2)); // let the writers fill the ring and sleep
        }
        let r = rx.read_timeout(LONG).expect("read");
        let id = usize::from(r[0]);
        assert_eq!(r[1..9], eight(next[id]));
        next[id] += 1;
    }
    for h in handles {
        h.join().unwrap();
    }
}

fn waits_without_taking<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    let (mut a, mut b) = (writer(), writer());
    assert_eq!(rx.wait_timeout(SHORT).unwrap_err(), ReadError::Timeout);
    assert_eq!(rx.check_record().unwrap_err(), TryReadError::Empty);
    send(&mut a, b"first");
    rx.check_record().unwrap();
    rx.wait_timeout(SHORT).unwrap();
    rx.wait_timeout(SHORT).unwrap();
    assert_eq!(&*rx.try_read().unwrap(), b"first");
    let mut sent = 0u64;
    while let Ok(mut g) = b.try_claim(24) {
        g[..8].copy_from_slice(&eight(sent));
        g.commit(24);
        sent += 1;
    }
    assert_eq!(
        a.wait_for_space(24, SHORT).unwrap_err(),
        ClaimError::Timeout
    );
    assert!(matches!(a.check_space(24), Err(TryClaimError::Full { .. })));
    let r = rx.try_read().unwrap();
    assert_eq!(r[..8], eight(0));
    drop(r);
    a.wait_for_space(24, SHORT).unwrap();
    a.check_space(24).unwrap();
    let mut g = a.try_claim(24).unwrap();
    g[..8].copy_from_slice(&eight(sent));
    g.commit(24);
    for seq in 1..=sent {
        assert_eq!(rx.try_read().unwrap()[..8], eight(seq));
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

fn mapped_records_release_on_drop_and_on_error<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    let mut tx = writer();
    send(&mut tx, b"one");
    send(&mut tx, &[0xff, 0xfe]);
    send(&mut tx, b"three");
    let view = rx.try_read().unwrap().map(std::str::from_utf8).unwrap();
    assert_eq!((&*view, view.bytes(), view.kind()), ("one", &b"one"[..], 0));
    drop(view);
    assert!(rx.try_read().unwrap().map(std::str::from_utf8).is_err());
    let view = rx.try_read().unwrap().map(std::str::from_utf8).unwrap();
    assert_eq!(&*view, "three");
    drop(view);
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

fn read_batches<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    let (mut a, mut b) = (writer(), writer());
    let cap = a.capacity();
    for seq in 0..cap / 32 {
        let tx = if seq % 2 == 0 { &mut a } else { &mut b };
        let mut g = tx.try_claim(24).unwrap();
        g[..8].copy_from_slice(&eight(seq));
        g.commit(24);
    }
    assert!(a.try_claim(8).is_err(), "the ring is full");
    {
        let mut batch = rx.batch();
        for seq in 0..cap / 32 {
            assert_eq!(batch.try_read().unwrap()[..8], eight(seq));
        }
        // Read, but not released yet: no space.
        assert!(matches!(a.try_claim(8), Err(TryClaimError::Full { .. })));
        // An empty read in the batch gives back what the batch read (writers may wait for it).
        assert_eq!(batch.try_read().unwrap_err(), TryReadError::Empty);
        let mut g = b.try_claim(8).unwrap();
        g.copy_from_slice(b"in batch");
        g.commit(8);
        assert_eq!(&*batch.read().unwrap(), b"in batch");
    }
    let mut g = a.try_claim(a.max_payload() as usize).unwrap();
    g.fill(5);
    g.commit(1);
    assert_eq!(*rx.try_read().unwrap(), [5]);
}

fn counters_in_the_slots<M: RingMemory>(ring: Ring<M>) {
    let Ring { writer, mut rx } = ring;
    let (mut a, mut b) = (writer(), writer());
    let (sa, sb) = (a.slot_index(), b.slot_index());
    assert_ne!(sa, sb);
    assert!(sa >= 2 && sb >= 2);
    for seq in 0..5u64 {
        send(&mut a, &[seq as u8; 10]);
    }
    send(&mut b, &[1; 30]);
    b.try_claim(5).unwrap().abort(); // not a message
    assert_eq!(counts(rx.memory(), sa), (5, 50));
    assert_eq!(counts(rx.memory(), sb), (1, 30));
    for _ in 0..6 {
        drop(rx.try_read().unwrap());
    }
    assert_eq!(counts(rx.memory(), 1), (6, 80));
    // A full ring counts a wait for the writer that had to wait.
    while let Ok(g) = a.try_claim(40) {
        g.commit(40);
    }
    assert_eq!(a.claim_timeout(40, SHORT).unwrap_err(), ClaimError::Timeout);
    assert!(rx.memory().slot(sa).waits.load(Ordering::Relaxed) >= 1);
    assert_eq!(rx.memory().slot(sb).waits.load(Ordering::Relaxed), 0);
}

/// Messages and payload bytes counted in slot `index`.
fn counts<M: RingMemory>(mem: &M, index: usize) -> (u64, u64) {
    let s = mem.slot(index);
    (
        s.messages.load(Ordering::Relaxed),
        s.bytes.load(Ordering::Relaxed),
    )
}

macro_rules! suite {
    ($make:expr) => {
        use super::*;

        #[test]
        fn fifo_spin() {
            many_writers_fifo($make(1024, 4, 0), 3, 10_000, WaitStrategy::Spin);
        }

        #[test]
        fn fifo_yield() {
            many_writers_fifo($make(512, 4, 0), 2, 10_000, WaitStrategy::spin_yield());
        }

        #[test]
        fn fifo_futex() {
            many_writers_fifo($make(256, 3, 0), 3, 5_000, WaitStrategy::Futex { spins: 0 });
        }

        #[test]
        fn fifo_near_u64_max() {
            many_writers_fifo(
                $make(256, 2, u64::MAX - 2047),
                2,
                3_000,
                WaitStrategy::futex(),
            );
        }

        #[test]
        fn wrap_around() {
            wrap_around_single_thread($make(256, 2, 0));
            wrap_around_single_thread($make(1024, 2, 0));
        }

        #[test]
        fn wrap_around_near_u64_max() {
            wrap_around_single_thread($make(256, 2, u64::MAX - 15));
            wrap_around_single_thread($make(4096, 2, u64::MAX - 4095 - 48));
        }

        #[test]
        fn full_empty() {
            full_and_empty($make(128, 2, 0));
            full_and_empty($make(1024, 2, u64::MAX - 511));
        }

        #[test]
        fn too_large() {
            too_large_is_an_error($make(128, 1, 0));
            too_large_is_an_error($make(1 << 16, 1, 48));
        }

        #[test]
        fn abort_short_commit() {
            abort_and_short_commit($make(512, 2, 0));
            abort_and_short_commit($make(512, 2, u64::MAX - 95));
        }

        #[test]
        fn empty() {
            empty_records($make(4096, 1, 0));
        }

        #[test]
        fn aligned_payloads() {
            payloads_are_16_byte_aligned($make(128, 1, 0));
        }

        #[test]
        fn writers_gone() {
            writers_gone_after_drain($make(256, 3, 0));
        }

        #[test]
        fn consumer_gone() {
            consumer_gone_when_full($make(256, 1, 0));
        }

        #[test]
        fn futex_wakeups() {
            sleepers_are_woken($make(256, 3, 0));
        }

        #[test]
        fn wait_without_taking() {
            waits_without_taking($make(256, 2, 0));
            waits_without_taking($make(256, 2, u64::MAX - 127));
        }

        #[test]
        fn mapped_records() {
            mapped_records_release_on_drop_and_on_error($make(256, 1, 0));
        }

        #[test]
        fn batches() {
            read_batches($make(256, 2, 0));
            read_batches($make(256, 2, u64::MAX - 63));
        }

        #[test]
        fn counters() {
            counters_in_the_slots($make(512, 2, 0));
        }
    };
}

mod heap {
    use shmesh_ring::{mpsc, HeapMemory};

    fn make(capacity: u64, writers: usize, start: u64) -> super::Ring<HeapMemory> {
        let (ws, rx) = mpsc::channel_at(capacity, writers, start).unwrap();
        super::Ring {
            writer: Box::new(move || ws.writer().expect("a free writer slot")),
            rx,
        }
    }

    suite!(make);

    #[test]
    fn no_free_slot() {
        let (ws, _rx) = mpsc::channel(256, 2).unwrap();
        let (a, _b) = (ws.writer().unwrap(), ws.writer().unwrap());
        let err = ws.writer().unwrap_err();
        assert!(
            matches!(
                err,
                shmesh_ring::AttachError::NoFreeSlot {
                    what: "writer",
                    slots: 2,
                    ..
                }
            ),
            "{err}"
        );
        drop(a);
        let c = ws.writer().expect("a detached writer's slot is free again");
        assert_eq!(ws.max_writers(), 2);
        drop(c);
    }
}

/// Writers that die on heap memory: `HeapMemory::kill` takes a writer's token as a SIGKILL
/// would, and the writer (forgotten) never touches the ring again.
mod recovery {
    use super::{eight, recv, send, LONG, SHORT};
    use shmesh_ring::mpsc::{self, Writer};
    use shmesh_ring::{HeapMemory, ReadError, TryReadError, WaitStrategy};

    /// The death of `tx`: its token is gone, and it never runs again.
    fn kill(mem: &HeapMemory, tx: Writer<HeapMemory>) {
        mem.kill(tx.slot_index());
        std::mem::forget(tx);
    }

    /// Claims `len` bytes, fills them with a marker, and leaves the claim open for good (the
    /// grant is forgotten: neither committed nor aborted). Returns its position.
    fn claim_forever(tx: &mut Writer<HeapMemory>, len: usize) -> u64 {
        let mut g = tx.try_claim(len).unwrap();
        g.fill(0xee);
        let pos = g.position();
        std::mem::forget(g);
        pos
    }

    /// The consumer must wait: nothing readable, and no amount of unblocking moves it.
    fn stuck(rx: &mut mpsc::Consumer<HeapMemory>) {
        for _ in 0..100 {
            assert!(!rx.unblock().unwrap(), "unblocked a live writer's claim");
        }
        for _ in 0..3000 {
            assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
        }
        assert_eq!(rx.read_timeout(SHORT).unwrap_err(), ReadError::Timeout);
    }

    #[test]
    fn a_writer_killed_between_claim_and_commit_is_skipped() {
        let (ws, mut rx) = mpsc::channel(1024, 3).unwrap();
        let (mut dead, mut live) = (ws.writer().unwrap(), ws.writer().unwrap());
        send(&mut live, b"before");
        claim_forever(&mut dead, 40);
        for seq in 0..5 {
            send(&mut live, &eight(seq));
        }
        assert_eq!(recv(&mut rx), b"before");
        stuck(&mut rx);
        kill(ws.memory(), dead);
        for seq in 0..5 {
            assert_eq!(
                recv(&mut rx),
                eight(seq),
                "the claim is skipped, nothing else"
            );
        }
        assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
        drop(live);
        assert_eq!(rx.read_timeout(LONG).unwrap_err(), ReadError::PeerGone);
    }

    #[test]
    fn a_live_slow_writer_is_never_skipped() {
        let (ws, mut rx) = mpsc::channel(1024, 2).unwrap();
        let (mut slow, mut fast) = (ws.writer().unwrap(), ws.writer().unwrap());
        let mut g = slow.try_claim(30).unwrap();
        for seq in 0..5 {
            send(&mut fast, &eight(seq));
        }
        drop(fast); // even with every other writer gone
        stuck(&mut rx);
        g.fill(7);
        g.commit(30);
        assert_eq!(recv(&mut rx), [7; 30]);
        for seq in 0..5 {
            assert_eq!(recv(&mut rx), eight(seq));
        }
    }

    #[test]
    fn a_writer_dead_between_its_cas_and_its_header_is_skipped() {
        let (ws, mut rx) = mpsc::channel(1024, 2).unwrap();
        let (mut dead, mut live) = (ws.writer().unwrap(), ws.writer().unwrap());
        let pos = claim_forever(&mut dead, 100);
        // What the ring looks like when the writer stops right after its CAS: no header yet,
        // and so no payload either (112 bytes claimed).
        // SAFETY: no grant or record of this ring is alive (the claim's grant was forgotten).
        unsafe { ws.memory().scribble(pos, &[0; 112]) };
        for seq in 0..3 {
            send(&mut live, &eight(seq));
        }
        // The writer lives (its intent names the head): it may just be slow.
        stuck(&mut rx);
        kill(ws.memory(), dead);
        for seq in 0..3 {
            assert_eq!(recv(&mut rx), eight(seq));
        }
        assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    }

    #[test]
    fn dead_claims_in_a_row_and_across_the_wrap() {
        let (ws, mut rx) = mpsc::channel(256, 4).unwrap();
        let mut live = ws.writer().unwrap();
        for seq in 0..6 {
            send(&mut live, &[seq as u8; 24]); // 32 bytes each
        }
        for seq in 0..6 {
            assert_eq!(recv(&mut rx), [seq as u8; 24]);
        }
        let mut dead: Vec<_> = (0..3).map(|_| ws.writer().unwrap()).collect();
        // At 192: a claim (48 bytes) with its header.
        assert_eq!(claim_forever(&mut dead[0], 40), 192);
        // At 240: 16 bytes of padding, then a claim at 256 (the start of the data area); this
        // writer died after its claimed header, before the padding header.
        assert_eq!(claim_forever(&mut dead[1], 40), 256);
        // SAFETY: no grant or record of this ring is alive.
        unsafe { ws.memory().scribble(240, &[0; 8]) };
        // At 304: a claim (32 bytes) whose writer died before its header (and its payload).
        assert_eq!(claim_forever(&mut dead[2], 20), 304);
        // SAFETY: as above.
        unsafe { ws.memory().scribble(304, &[0; 32]) };
        send(&mut live, b"after");
        stuck(&mut rx);
        for tx in dead {
            kill(ws.memory(), tx);
        }
        assert_eq!(recv(&mut rx), b"after");
        assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
        // The ring is whole again: the largest record fits.
        let max = live.max_payload() as usize;
        send(&mut live, &vec![3; max]);
        assert_eq!(recv(&mut rx), vec![3; max]);
    }

    #[test]
    fn a_new_writer_in_a_dead_writers_slot_does_not_revive_its_claim() {
        let (ws, mut rx) = mpsc::channel(1024, 1).unwrap();
        let mut dead = ws.writer().unwrap();
        let slot = dead.slot_index();
        claim_forever(&mut dead, 40);
        kill(ws.memory(), dead);
        let mut heir = ws.writer().expect("the dead writer's slot is free");
        assert_eq!(heir.slot_index(), slot);
        send(&mut heir, b"heir");
        assert_eq!(recv(&mut rx), b"heir");
    }

    #[test]
    fn all_writers_dead_drains_then_peer_gone() {
        let (ws, mut rx) = mpsc::channel(1024, 2).unwrap();
        let (mut a, mut b) = (ws.writer().unwrap(), ws.writer().unwrap());
        send(&mut a, b"a0");
        claim_forever(&mut a, 10);
        send(&mut b, b"b0");
        claim_forever(&mut b, 10);
        kill(ws.memory(), a);
        kill(ws.memory(), b);
        assert_eq!(recv(&mut rx), b"a0");
        assert_eq!(recv(&mut rx), b"b0");
        assert_eq!(rx.read().unwrap_err(), ReadError::PeerGone);
    }

    #[test]
    fn a_writer_waiting_for_space_held_by_a_dead_claim_gets_it() {
        let park = WaitStrategy::Futex { spins: 0 };
        let (ws, mut rx) = mpsc::channel(256, 2).unwrap();
        rx.set_wait_strategy(park);
        let (mut dead, mut live) = (ws.writer().unwrap(), ws.writer().unwrap());
        live.set_wait_strategy(park);
        claim_forever(&mut dead, 100); // 112 of 256 bytes
        let writer = std::thread::spawn(move || {
            for seq in 0..20u64 {
                send(&mut live, &[seq as u8; 40]); // 48 bytes each: waits after 2
            }
        });
        std::thread::sleep(SHORT);
        kill(ws.memory(), dead);
        for seq in 0..20u64 {
            assert_eq!(recv(&mut rx), [seq as u8; 40]);
        }
        writer.join().unwrap();
    }
}

#[cfg(not(miri))]
mod shm {
    use shmesh_ring::{SegmentBuilder, SegmentKind, ShmMemory};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn make(capacity: u64, writers: usize, start: u64) -> super::Ring<ShmMemory> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mpsc-conformance.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let created = SegmentBuilder::new(&name)
            .kind(SegmentKind::MpscRing)
            .capacity(capacity)
            .endpoints(writers)
            .start_position(start)
            .create()
            .unwrap();
        let opened = SegmentBuilder::new(&name)
            .kind(SegmentKind::MpscRing)
            .capacity(capacity)
            .endpoints(writers)
            .open()
            .unwrap();
        super::Ring {
            writer: Box::new(move || opened.mpsc_writer().expect("a free writer slot")),
            rx: created.mpsc_consumer().unwrap(),
        }
    }

    suite!(make);

    #[test]
    fn attach_errors() {
        use shmesh_ring::AttachError;
        let name = format!("mpsc-attach.{}", std::process::id());
        let seg = SegmentBuilder::new(&name)
            .kind(SegmentKind::MpscRing)
            .capacity(256)
            .endpoints(1)
            .create()
            .unwrap();
        let _rx = seg.mpsc_consumer().unwrap();
        assert!(matches!(
            seg.mpsc_consumer().unwrap_err(),
            AttachError::Busy { .. }
        ));
        let _tx = seg.mpsc_writer().unwrap();
        assert!(matches!(
            seg.mpsc_writer().unwrap_err(),
            AttachError::NoFreeSlot { slots: 1, .. }
        ));
        let spsc = SegmentBuilder::new(format!("{name}.spsc"))
            .capacity(256)
            .create()
            .unwrap();
        assert!(matches!(
            spsc.mpsc_writer().unwrap_err(),
            AttachError::NotARing { .. }
        ));
        assert!(matches!(
            spsc.mpsc_consumer().unwrap_err(),
            AttachError::NotARing { .. }
        ));
    }
}
