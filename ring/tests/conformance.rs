//! The ring conformance suite, written once and run on every memory: heap (`heap::*`, also
//! under miri) and POSIX shared memory (`shm::*`). FIFO, no loss, no duplicate, no torn
//! record, wrap-around, batches, full/empty, 64-bit positions near `u64::MAX`, peers leaving.

use std::thread;
use std::time::Duration;

use shmesh_ring::{
    ClaimError, Consumer, PeerState, Producer, ReadError, RingMemory, TryClaimError, TryReadError,
    WaitStrategy,
};

/// Payload of record `seq`: its length and bytes derived from `seq`, so a reader can tell a
/// torn, lost, duplicated or reordered record.
fn payload(seq: u64, max: usize) -> Vec<u8> {
    let len = ((seq.wrapping_mul(2654435761) >> 7) as usize) % (max + 1);
    let mut v = Vec::with_capacity(len);
    for i in 0..len {
        v.push((seq as u8).wrapping_mul(31).wrapping_add(i as u8));
    }
    if len >= 8 {
        v[..8].copy_from_slice(&seq.to_le_bytes());
    }
    v
}

fn send<M: RingMemory>(tx: &mut Producer<M>, bytes: &[u8]) {
    let mut grant = tx
        .claim_timeout(bytes.len(), Duration::from_secs(30))
        .expect("claim");
    grant.copy_from_slice(bytes);
    grant.commit(bytes.len());
}

fn recv<M: RingMemory>(rx: &mut Consumer<M>) -> Vec<u8> {
    rx.read_timeout(Duration::from_secs(30))
        .expect("read")
        .to_vec()
}

fn fifo_across_threads<M: RingMemory + Send + 'static>(
    (mut tx, mut rx): (Producer<M>, Consumer<M>),
    count: u64,
    wait: WaitStrategy,
) {
    tx.set_wait_strategy(wait);
    rx.set_wait_strategy(wait);
    let count = if cfg!(miri) { count / 2000 } else { count };
    let max = (tx.max_payload() as usize).min(300);
    let writer = thread::spawn(move || {
        for seq in 0..count {
            send(&mut tx, &payload(seq, max));
        }
    });
    for seq in 0..count {
        assert_eq!(recv(&mut rx), payload(seq, max), "record {seq}");
    }
    writer.join().unwrap();
    assert_eq!(
        rx.read_timeout(Duration::from_secs(10)).unwrap_err(),
        ReadError::PeerGone
    );
}

fn wrap_around_single_thread<M: RingMemory>((mut tx, mut rx): (Producer<M>, Consumer<M>)) {
    // Many more bytes than the capacity, in varied sizes, with the ring often nearly full.
    let max = tx.max_payload() as usize;
    let mut next_read = 0u64;
    let count = if cfg!(miri) { 100 } else { 2000 };
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
                    assert!(needed > free);
                    assert_eq!(rx.try_read().unwrap().to_vec(), payload(next_read, max));
                    next_read += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    while next_read < count {
        assert_eq!(rx.try_read().unwrap().to_vec(), payload(next_read, max));
        next_read += 1;
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

fn batches<M: RingMemory>((mut tx, mut rx): (Producer<M>, Consumer<M>)) {
    {
        let mut batch = tx.batch();
        for seq in 0..5u64 {
            let mut g = batch.try_claim(8).unwrap();
            g.copy_from_slice(&seq.to_le_bytes());
            g.commit(8);
        }
        // Nothing is visible before the batch is published.
        assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
        batch.publish();
    }
    let free_before = tx.try_claim(0).map(|g| g.position()).unwrap();
    {
        let mut batch = rx.batch();
        for seq in 0..5u64 {
            let r = batch.try_read().unwrap();
            assert_eq!(*r, seq.to_le_bytes());
        }
        assert_eq!(batch.try_read().unwrap_err(), TryReadError::Empty);
    }
    // The whole batch was released with one store: the producer can now use all the space.
    let cap = tx.capacity();
    let mut g = tx.try_claim(tx.max_payload() as usize).unwrap();
    assert!(g.position() >= free_before);
    g[0] = 1;
    g.commit(1);
    assert_eq!(*rx.try_read().unwrap(), [1]);
    assert!(cap >= 128);
}

fn full_and_empty<M: RingMemory>((mut tx, mut rx): (Producer<M>, Consumer<M>)) {
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    let cap = tx.capacity();
    // Records of 8 payload bytes take 16 bytes each, and the producer keeps the 16 bytes after
    // its last record free: exactly cap / 16 - 1 fit.
    for seq in 0..cap / 16 - 1 {
        let mut g = tx.try_claim(8).unwrap();
        g.copy_from_slice(&seq.to_le_bytes());
        g.commit(8);
    }
    match tx.try_claim(0) {
        Err(TryClaimError::Full {
            needed: 32,
            free: 16,
        }) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(
        tx.claim_timeout(8, Duration::from_millis(20)).unwrap_err(),
        ClaimError::Timeout
    );
    for seq in 0..cap / 16 - 1 {
        assert_eq!(*rx.try_read().unwrap(), seq.to_le_bytes());
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    assert_eq!(
        rx.read_timeout(Duration::from_millis(20)).unwrap_err(),
        ReadError::Timeout
    );
}

fn too_large_is_an_error<M: RingMemory>((mut tx, _rx): (Producer<M>, Consumer<M>)) {
    let max = tx.max_payload();
    assert_eq!(max, tx.capacity() / 2 - 24);
    let err = tx.try_claim(max as usize + 1).unwrap_err();
    assert_eq!(err, TryClaimError::TooLarge { len: max + 1, max });
    assert!(
        err.to_string().contains(&max.to_string()),
        "the error names the maximum: {err}"
    );
    assert_eq!(
        tx.claim(max as usize + 1).unwrap_err(),
        ClaimError::TooLarge { len: max + 1, max }
    );
    // The largest record fits an empty ring wherever its positions stand.
    let mut rx = _rx;
    for round in 0..5u8 {
        let mut g = tx.try_claim(max as usize).unwrap();
        g.fill(round);
        g.commit(max as usize);
        let r = rx.try_read().unwrap();
        assert!(r.iter().all(|&b| b == round));
        drop(r);
        let mut g = tx.try_claim(24).unwrap();
        g.fill(0xee);
        g.commit(24);
        assert_eq!(rx.try_read().unwrap().len(), 24);
    }
}

fn abort_and_short_commit<M: RingMemory>((mut tx, mut rx): (Producer<M>, Consumer<M>)) {
    let mut g = tx.try_claim(100).unwrap();
    g.fill(0xaa);
    g.abort();
    {
        let mut g = tx.try_claim(50).unwrap();
        g.fill(0xbb);
        // dropped without commit: aborted
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    let mut g = tx.try_claim(100).unwrap();
    g[..3].copy_from_slice(b"abc");
    g.commit(3);
    let mut g = tx.try_claim(10).unwrap();
    g.set_kind(7);
    g.copy_from_slice(b"0123456789");
    g.commit(10);
    let r = rx.try_read().unwrap();
    assert_eq!((&*r, r.kind()), (&b"abc"[..], 0));
    drop(r);
    let r = rx.try_read().unwrap();
    assert_eq!((&*r, r.kind()), (&b"0123456789"[..], 7));
}

fn payloads_are_16_byte_aligned<M: RingMemory>((mut tx, mut rx): (Producer<M>, Consumer<M>)) {
    for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 39, 40] {
        let mut g = tx.try_claim(len).unwrap();
        assert_eq!(g.as_mut_ptr() as usize % 16, 0, "grant of {len}");
        g.commit(len);
        let r = rx.try_read().unwrap();
        assert_eq!(r.as_ptr() as usize % 16, 0, "record of {len}");
        assert_eq!(r.len(), len);
    }
}

fn producer_gone_after_drain<M: RingMemory>((mut tx, mut rx): (Producer<M>, Consumer<M>)) {
    assert_eq!(rx.peer(), PeerState::Alive);
    for seq in 0..3u64 {
        send(&mut tx, &seq.to_le_bytes());
    }
    drop(tx);
    assert_eq!(rx.peer(), PeerState::Gone);
    for seq in 0..3u64 {
        assert_eq!(recv(&mut rx), seq.to_le_bytes());
    }
    assert_eq!(
        rx.read_timeout(Duration::from_secs(10)).unwrap_err(),
        ReadError::PeerGone
    );
    assert_eq!(rx.read().unwrap_err(), ReadError::PeerGone);
    // try_read reports it too, after its periodic liveness check.
    let gone = (0..5000).any(|_| rx.try_read().err() == Some(TryReadError::PeerGone));
    assert!(gone);
}

fn consumer_gone_when_full<M: RingMemory>((mut tx, rx): (Producer<M>, Consumer<M>)) {
    drop(rx);
    assert_eq!(tx.peer(), PeerState::Gone);
    // Space remains usable until the ring is full; then the producer learns nobody reads.
    let err = loop {
        match tx.claim_timeout(40, Duration::from_secs(10)) {
            Ok(g) => g.commit(40),
            Err(e) => break e,
        }
    };
    assert_eq!(err, ClaimError::PeerGone);
}

fn sleeping_consumer_is_woken<M: RingMemory + Send + 'static>(
    (mut tx, mut rx): (Producer<M>, Consumer<M>),
) {
    rx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
    tx.set_wait_strategy(WaitStrategy::Futex { spins: 0 });
    let count: u64 = if cfg!(miri) { 20 } else { 200 };
    let reader = thread::spawn(move || {
        for seq in 0..count {
            assert_eq!(recv(&mut rx), seq.to_le_bytes());
        }
    });
    for seq in 0..count {
        if seq % 20 == 0 {
            thread::sleep(Duration::from_millis(1)); // let the reader fall asleep
        }
        send(&mut tx, &seq.to_le_bytes());
    }
    reader.join().unwrap();
}

fn waits_without_taking<M: RingMemory>((mut tx, mut rx): (Producer<M>, Consumer<M>)) {
    let short = Duration::from_millis(20);
    assert_eq!(rx.wait_timeout(short).unwrap_err(), ReadError::Timeout);
    assert_eq!(rx.check_record().unwrap_err(), TryReadError::Empty);
    send(&mut tx, b"first");
    rx.check_record().unwrap();
    rx.check_record().unwrap();
    // Waiting twice does not consume the record.
    rx.wait_timeout(short).unwrap();
    rx.wait_timeout(short).unwrap();
    assert_eq!(&*rx.try_read().unwrap(), b"first");
    // Fill the ring; waiting for space times out, then succeeds once the reader drains, and a
    // wait that reserved nothing leaves the ring as it was.
    let mut sent = 0u64;
    while let Ok(mut g) = tx.try_claim(24) {
        g[..8].copy_from_slice(&sent.to_le_bytes());
        g.commit(24);
        sent += 1;
    }
    assert_eq!(
        tx.wait_for_space(24, short).unwrap_err(),
        ClaimError::Timeout
    );
    let r = rx.try_read().unwrap();
    assert_eq!(r[..8], 0u64.to_le_bytes());
    drop(r);
    tx.wait_for_space(24, short).unwrap();
    tx.check_space(24).unwrap();
    tx.wait_for_space(24, short).unwrap();
    let mut g = tx.try_claim(24).unwrap();
    g[..8].copy_from_slice(&sent.to_le_bytes());
    g.commit(24);
    for seq in 1..=sent {
        let r = rx.try_read().unwrap();
        assert_eq!(r[..8], seq.to_le_bytes());
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

fn mapped_records_release_on_drop_and_on_error<M: RingMemory>(
    (mut tx, mut rx): (Producer<M>, Consumer<M>),
) {
    send(&mut tx, b"one");
    send(&mut tx, &[0xff, 0xfe]);
    send(&mut tx, b"three");
    let view = rx.try_read().unwrap().map(std::str::from_utf8).unwrap();
    assert_eq!((&*view, view.bytes()), ("one", &b"one"[..]));
    drop(view);
    // A failed view releases the record at once: the next read sees the one after it.
    assert!(rx.try_read().unwrap().map(std::str::from_utf8).is_err());
    let view = rx.try_read().unwrap().map(std::str::from_utf8).unwrap();
    assert_eq!(&*view, "three");
    drop(view);
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

macro_rules! suite {
    ($make:expr) => {
        use super::*;

        #[test]
        fn fifo_spin() {
            fifo_across_threads($make(1024, 0), 20_000, WaitStrategy::Spin);
        }

        #[test]
        fn fifo_yield() {
            fifo_across_threads($make(512, 0), 20_000, WaitStrategy::spin_yield());
        }

        #[test]
        fn fifo_futex() {
            fifo_across_threads($make(256, 0), 20_000, WaitStrategy::Futex { spins: 0 });
        }

        #[test]
        fn fifo_near_u64_max() {
            fifo_across_threads($make(256, u64::MAX - 2047), 5_000, WaitStrategy::futex());
        }

        #[test]
        fn wrap_around() {
            wrap_around_single_thread($make(256, 0));
        }

        #[test]
        fn wrap_around_near_u64_max() {
            wrap_around_single_thread($make(256, u64::MAX - 15));
            wrap_around_single_thread($make(4096, u64::MAX - 4095 - 48));
        }

        #[test]
        fn batch() {
            batches($make(256, 0));
            batches($make(256, u64::MAX - 31));
        }

        #[test]
        fn full_empty() {
            full_and_empty($make(128, 0));
            full_and_empty($make(1024, u64::MAX - 511));
        }

        #[test]
        fn too_large() {
            too_large_is_an_error($make(128, 0));
            too_large_is_an_error($make(1 << 16, 48));
        }

        #[test]
        fn abort_short_commit() {
            abort_and_short_commit($make(512, 0));
        }

        #[test]
        fn aligned_payloads() {
            payloads_are_16_byte_aligned($make(128, 0));
        }

        #[test]
        fn producer_gone() {
            producer_gone_after_drain($make(256, 0));
        }

        #[test]
        fn consumer_gone() {
            consumer_gone_when_full($make(256, 0));
        }

        #[test]
        fn wait_without_taking() {
            waits_without_taking($make(256, 0));
            waits_without_taking($make(256, u64::MAX - 127));
        }

        #[test]
        fn mapped_records() {
            mapped_records_release_on_drop_and_on_error($make(256, 0));
        }

        #[test]
        fn futex_wakeups() {
            sleeping_consumer_is_woken($make(128, 0));
        }
    };
}

mod heap {
    use shmesh_ring::{spsc, HeapMemory};

    fn make(
        capacity: u64,
        start: u64,
    ) -> (super::Producer<HeapMemory>, super::Consumer<HeapMemory>) {
        spsc::channel_at(capacity, start).unwrap()
    }

    suite!(make);
}

#[cfg(not(miri))]
mod shm {
    use shmesh_ring::{SegmentBuilder, ShmMemory};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn make(capacity: u64, start: u64) -> (super::Producer<ShmMemory>, super::Consumer<ShmMemory>) {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "conformance.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let created = SegmentBuilder::new(&name)
            .capacity(capacity)
            .start_position(start)
            .create()
            .unwrap();
        let opened = SegmentBuilder::new(&name)
            .capacity(capacity)
            .open()
            .unwrap();
        (created.producer().unwrap(), opened.consumer().unwrap())
    }

    suite!(make);
}
