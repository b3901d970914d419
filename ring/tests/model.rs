//! Property test: the SPSC ring against a `VecDeque` model, on heap memory, for arbitrary
//! sequences of claims (committed in full, committed short, aborted), reads, and batches, from
//! arbitrary start positions (including just below `u64::MAX`).
//!
//! The model keeps its own positions to predict exactly when the ring is full: a record takes
//! `align16(8 + len)` bytes, plus padding to the end of the data area when it does not fit
//! before the end, and the producer keeps 16 bytes free after its last record.

use std::collections::VecDeque;

use proptest::prelude::*;
use shmesh_ring::{spsc, TryClaimError, TryReadError};

#[derive(Debug, Clone)]
enum Op {
    /// Claim `len` bytes, then commit `commit` of them (`None`: abort).
    Claim { len: usize, commit: Option<usize> },
    /// Claim and commit several records in one batch.
    WriteBatch(Vec<usize>),
    /// Read one record.
    Read,
    /// Read up to `n` records in one batch.
    ReadBatch(usize),
}

fn op(max: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..=max, proptest::option::weighted(0.85, 0..=max)).prop_map(|(len, c)| Op::Claim {
            len,
            commit: c.map(|c| c.min(len)),
        }),
        1 => proptest::collection::vec(0..=max, 0..6).prop_map(Op::WriteBatch),
        3 => Just(Op::Read),
        1 => (0usize..6).prop_map(Op::ReadBatch),
    ]
}

fn footprint(len: usize) -> u64 {
    (8 + len as u64).div_ceil(16) * 16
}

struct Model {
    cap: u64,
    head: u64,
    tail: u64,
    /// Committed records: bytes and the position just past them.
    records: VecDeque<(Vec<u8>, u64)>,
    seq: u8,
}

impl Model {
    /// Where a record of `len` bytes would start (after any padding), if it fits.
    fn place(&self, len: usize) -> Option<u64> {
        let footprint = footprint(len);
        let off = self.tail % self.cap;
        let to_end = self.cap - off;
        let pad = if footprint <= to_end { 0 } else { to_end };
        let free = self.cap - self.tail.wrapping_sub(self.head);
        (pad + footprint + 16 <= free).then(|| self.tail.wrapping_add(pad))
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        (0..len).map(|i| self.seq.wrapping_add(i as u8)).collect()
    }
}

fn run(cap: u64, start: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (mut tx, mut rx) = spsc::channel_at(cap, start).unwrap();
    let max = tx.max_payload() as usize;
    let mut m = Model {
        cap,
        head: start,
        tail: start,
        records: VecDeque::new(),
        seq: 0,
    };
    for op in ops {
        match op {
            Op::Claim { len, commit } => {
                let len = len.min(max);
                match (tx.try_claim(len), m.place(len)) {
                    (Ok(mut g), Some(pos)) => {
                        let bytes = m.bytes(len);
                        g.copy_from_slice(&bytes);
                        match commit.map(|n| n.min(len)) {
                            Some(n) => {
                                g.commit(n);
                                // A short commit ends the record earlier; the padding placed
                                // for the full claim stays.
                                let end = pos.wrapping_add(footprint(n));
                                m.tail = end;
                                m.records.push_back((bytes[..n].to_vec(), end));
                            }
                            None => g.abort(),
                        }
                    }
                    (Err(TryClaimError::Full { .. }), None) => {}
                    (got, want) => prop_assert!(false, "claim {len}: ring {got:?}, model {want:?}"),
                }
            }
            Op::WriteBatch(lens) => {
                let mut batch = tx.batch();
                let mut staged = Vec::new();
                for len in lens {
                    let len = len.min(max);
                    match (batch.try_claim(len), m.place(len)) {
                        (Ok(mut g), Some(pos)) => {
                            let end = pos.wrapping_add(footprint(len));
                            let bytes = m.bytes(len);
                            g.copy_from_slice(&bytes);
                            g.commit(len);
                            m.tail = end;
                            staged.push((bytes, end));
                        }
                        (Err(TryClaimError::Full { .. }), None) => {}
                        (got, want) => prop_assert!(false, "batch claim: {got:?} vs {want:?}"),
                    }
                }
                drop(batch);
                m.records.extend(staged);
            }
            Op::Read => match (rx.try_read(), m.records.pop_front()) {
                (Ok(r), Some((bytes, end))) => {
                    prop_assert_eq!(&*r, &bytes[..]);
                    m.head = end;
                }
                (Err(TryReadError::Empty), None) => {}
                (got, want) => prop_assert!(
                    false,
                    "read: ring {:?}, model {:?}",
                    got.map(|r| r.to_vec()),
                    want
                ),
            },
            Op::ReadBatch(n) => {
                let mut batch = rx.batch();
                let mut end_of_batch = None;
                for _ in 0..n {
                    match (batch.try_read(), m.records.front()) {
                        (Ok(r), Some((bytes, end))) => {
                            prop_assert_eq!(&*r, &bytes[..]);
                            end_of_batch = Some(*end);
                            m.records.pop_front();
                        }
                        (Err(TryReadError::Empty), None) => break,
                        (got, want) => prop_assert!(
                            false,
                            "batch read: {:?} vs {:?}",
                            got.map(|r| r.to_vec()),
                            want
                        ),
                    }
                }
                drop(batch);
                if let Some(end) = end_of_batch {
                    m.head = end;
                }
            }
        }
    }
    // Drain: everything committed comes out, in order.
    while let Some((bytes, _)) = m.records.pop_front() {
        prop_assert_eq!(&*rx.try_read().unwrap(), &bytes[..]);
    }
    prop_assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 512 }, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_model(
        cap in prop_oneof![Just(128u64), Just(256), Just(1024)],
        start in prop_oneof![Just(0u64), Just(u64::MAX - 15), Just(u64::MAX - 127), (0u64..1 << 20).prop_map(|s| s * 16)],
        ops in proptest::collection::vec(op(120), 1..200),
    ) {
        run(cap, start, ops)?;
    }
}
