//! Held reads: a consumer that forwards records elsewhere (the bridge) keeps them in the ring
//! until the far side confirmed them (`hold_reads`, `release_to`, `rewind`), and a producer
//! that can tell after a restart whether its last batch was published (`position`). Checked
//! against a model with random operations on the heap ring, and on shared memory across a
//! consumer's end (its held records are read again by the next one).

use proptest::prelude::*;
use shmesh_ring::{spsc, SegmentBuilder, TryReadError};

fn send(tx: &mut shmesh_ring::Producer<impl shmesh_ring::RingMemory>, value: u32, len: usize) {
    let mut grant = tx.try_claim(len.max(4)).expect("room");
    grant[..4].copy_from_slice(&value.to_le_bytes());
    grant.commit(len.max(4));
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    Read,
    /// Release up to the end of the n-th held record read (if that many were read).
    Release(usize),
    Rewind,
    /// Rewind to the end of the n-th held record read (if that many were read).
    RewindTo(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..300).prop_map(Op::Write),
        3 => Just(Op::Read),
        1 => (0usize..6).prop_map(Op::Release),
        1 => Just(Op::Rewind),
        1 => (0usize..6).prop_map(Op::RewindTo),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

    /// Model: the ring holds the records not yet released; the consumer reads them from a
    /// cursor into that list; releases drop a prefix; a rewind puts the cursor back to 0.
    #[test]
    fn held_reads_match_the_model(ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 40 } else { 120 })) {
        let (mut tx, mut rx) = spsc::channel(1024).unwrap();
        rx.hold_reads(true);
        let mut next_value = 0u32;
        // (value, end position once read) of every record not yet released, in order.
        let mut held: Vec<(u32, Option<u64>)> = Vec::new();
        let mut cursor = 0usize;
        for op in ops {
            match op {
                Op::Write(len) => {
                    if tx.try_claim(len.max(4)).is_ok() {
                        send(&mut tx, next_value, len);
                        held.push((next_value, None));
                        next_value += 1;
                    }
                }
                Op::Read => match rx
                    .try_read()
                    .map(|record| u32::from_le_bytes(record[..4].try_into().unwrap()))
                {
                    Ok(value) => {
                        prop_assert!(cursor < held.len(), "read a record the model lacks");
                        prop_assert_eq!(value, held[cursor].0);
                        held[cursor].1 = Some(rx.read_position());
                        cursor += 1;
                    }
                    Err(TryReadError::Empty) => prop_assert_eq!(cursor, held.len()),
                    Err(e) => prop_assert!(false, "read failed: {e}"),
                },
                Op::Release(n) => {
                    if n < cursor {
                        let end = held[n].1.unwrap();
                        rx.release_to(end).unwrap();
                        prop_assert_eq!(rx.released_position(), end);
                        held.drain(..=n);
                        cursor -= n + 1;
                    }
                }
                Op::Rewind => {
                    rx.rewind();
                    cursor = 0;
                }
                Op::RewindTo(n) => {
                    if n < cursor {
                        let end = held[n].1.unwrap();
                        rx.rewind_to(end).unwrap();
                        prop_assert_eq!(rx.read_position(), end);
                        cursor = n + 1;
                    } else {
                        prop_assert!(rx.rewind_to(rx.read_position() + 16).is_err());
                    }
                }
            }
            prop_assert_eq!(rx.read_position().wrapping_sub(rx.released_position()) > 0, cursor > 0);
        }
    }
}

#[test]
fn release_to_refuses_positions_outside_the_held_span() {
    let (mut tx, mut rx) = spsc::channel(1024).unwrap();
    rx.hold_reads(true);
    send(&mut tx, 1, 8);
    send(&mut tx, 2, 8);
    let start = rx.released_position();
    drop(rx.try_read().unwrap());
    let first = rx.read_position();
    // Beyond what was read, unaligned, before the released position: all refused.
    let e = rx.release_to(first + 16).unwrap_err();
    assert_eq!((e.pos, e.released, e.read), (first + 16, start, first));
    assert!(e.to_string().contains("cannot release up to ring position"));
    assert!(rx.release_to(first - 1).is_err());
    rx.release_to(first).unwrap();
    assert!(
        rx.release_to(start).is_err(),
        "behind the released position"
    );
    // The producer saw the space come back only now.
    assert_eq!(rx.released_position(), first);
}

#[test]
fn a_held_consumer_frees_nothing_on_read_and_the_producer_fills_up() {
    let (mut tx, mut rx) = spsc::channel(1024).unwrap();
    rx.hold_reads(true);
    let mut written = 0;
    while tx.try_claim(100).is_ok() {
        send(&mut tx, written, 100);
        written += 1;
    }
    while rx.try_read().is_ok() {}
    assert!(
        tx.try_claim(100).is_err(),
        "reads released space while held"
    );
    rx.release_to(rx.read_position()).unwrap();
    assert!(tx.try_claim(100).is_ok());
}

#[cfg(not(miri))]
#[test]
fn held_records_outlive_the_consumer_and_are_read_again() {
    let name = format!("held.outlive.{}", std::process::id());
    let seg = SegmentBuilder::new(&name).capacity(4096).create().unwrap();
    let mut tx = seg.producer().unwrap();
    for v in 0..4 {
        send(&mut tx, v, 8);
    }
    {
        let mut rx = seg.consumer().unwrap();
        rx.hold_reads(true);
        drop(rx.try_read().unwrap());
        let first = rx.read_position();
        for _ in 1..4 {
            drop(rx.try_read().unwrap());
        }
        rx.release_to(first).unwrap();
        // Dropped with three records read and held: like a consumer killed before the far
        // side confirmed them.
    }
    let mut rx = seg.consumer().unwrap();
    let values: Vec<u32> = std::iter::from_fn(|| {
        rx.try_read()
            .ok()
            .map(|r| u32::from_le_bytes(r[..4].try_into().unwrap()))
    })
    .collect();
    assert_eq!(values, [1, 2, 3]);
}

#[cfg(not(miri))]
#[test]
fn a_new_producer_starts_where_the_published_records_end() {
    let name = format!("held.position.{}", std::process::id());
    let seg = SegmentBuilder::new(&name).capacity(4096).create().unwrap();
    let (before, after);
    {
        let mut tx = seg.producer().unwrap();
        let mut batch = tx.batch();
        before = batch.position();
        for v in 0..3 {
            let mut g = batch.try_claim(8).unwrap();
            g[..4].copy_from_slice(&(v as u32).to_le_bytes());
            g.commit(8);
        }
        after = batch.position();
        assert!(after > before);
        batch.publish();
    }
    assert_eq!(seg.producer().unwrap().position(), after);
}

#[cfg(not(miri))]
#[test]
fn a_persistent_segment_keeps_its_name_after_its_creator_drops() {
    let name = format!("held.persist.{}", std::process::id());
    drop(
        SegmentBuilder::new(&name)
            .capacity(4096)
            .persist(true)
            .create()
            .unwrap(),
    );
    let seg = SegmentBuilder::new(&name).open().expect("still there");
    assert!(!seg.is_creator());
    drop(seg);
    shmesh_ring::Segment::remove(&name).unwrap();
    assert!(SegmentBuilder::new(&name).open().is_err());
}
