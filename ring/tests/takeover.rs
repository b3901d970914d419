//! Takeover after a producer died between publishing a record's header and storing `tail`
//! (the memory a SIGKILL at that instruction leaves, recreated by resetting `tail`), in both
//! orders: the consumer read the record before the new producer attached, or it did not.
#![cfg(not(miri))]

use std::sync::atomic::Ordering;

use shmesh_ring::{RingMemory, SegmentBuilder, TryReadError};

fn name(test: &str) -> String {
    format!("takeover.{test}.{}", std::process::id())
}

#[test]
fn record_read_before_the_new_producer_attaches() {
    let seg = SegmentBuilder::new(name("read"))
        .capacity(4096)
        .create()
        .unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    let stale_tail = tx.memory().control().tail.0.load(Ordering::Acquire);
    let mut g = tx.try_claim(8).unwrap();
    g.fill(1);
    g.commit(8);
    tx.memory()
        .control()
        .tail
        .0
        .store(stale_tail, Ordering::Release);
    drop(tx);
    assert_eq!(*rx.try_read().unwrap(), [1; 8]); // the head is now past the stored tail
    let mut tx = seg.producer().expect("a producer can take over");
    drop(rx);
    let mut rx = seg.consumer().expect("a consumer can take over");
    let mut g = tx.try_claim(8).unwrap();
    g.fill(2);
    g.commit(8);
    assert_eq!(*rx.try_read().unwrap(), [2; 8]);
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

#[test]
fn record_unread_when_the_new_producer_attaches() {
    let seg = SegmentBuilder::new(name("unread"))
        .capacity(4096)
        .create()
        .unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    let stale_tail = tx.memory().control().tail.0.load(Ordering::Acquire);
    for fill in [1u8, 2] {
        let mut g = tx.try_claim(8).unwrap();
        g.fill(fill);
        g.commit(8);
    }
    tx.memory()
        .control()
        .tail
        .0
        .store(stale_tail, Ordering::Release);
    drop(tx);
    let mut tx = seg.producer().expect("a producer can take over");
    let mut g = tx.try_claim(8).unwrap();
    g.fill(3);
    g.commit(8);
    for fill in [1u8, 2, 3] {
        assert_eq!(
            *rx.try_read().unwrap(),
            [fill; 8],
            "nothing lost, nothing overwritten"
        );
    }
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
}

/// A creator died before sizing its object; an opener waiting on that name must not keep a
/// new creator from reclaiming it.
#[test]
fn a_waiting_opener_does_not_block_reclaim() {
    use std::os::unix::fs::OpenOptionsExt;
    let name = name("reclaim");
    let path = format!("/dev/shm/shmesh.{name}");
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap(),
    );
    let waiting = name.clone();
    let opener = std::thread::spawn(move || {
        SegmentBuilder::new(waiting)
            .open_timeout(std::time::Duration::from_secs(10))
            .open()
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let created = SegmentBuilder::new(&name).capacity(4096).create();
    assert!(
        created.is_ok(),
        "create while an opener waits: {:?}",
        created.err()
    );
    // The opener then finds the new segment.
    let opened = opener
        .join()
        .unwrap()
        .expect("the opener gets the new segment");
    assert_eq!(opened.capacity(), 4096);
}
