//! Property test: the broadcast ring against a model, on heap memory, for arbitrary
//! interleavings of writes (committed in full, short, or aborted), reads by each of three
//! readers, joins (latest or with history) and leaves, under both policies, from arbitrary start
//! positions (including just below `u64::MAX`).
//!
//! The model keeps the writer's positions to predict exactly when a Block writer is full (a
//! record needs `align16(8 + len)` bytes, padding to the end of the data area when it does not
//! fit before it, and 16 bytes after it; no live reader may be more than `capacity - needed`
//! behind the tail) and when and by how much a Lap reader is lapped (its next record's start
//! is more than a capacity behind the writer's intent; it resumes at the oldest record whose
//! start is not).

use proptest::prelude::*;
use shmesh_ring::broadcast::{self, history_records, table_len, Reader, Start, TryReadError};
use shmesh_ring::{BroadcastPolicy, HeapMemory, TryClaimError};

#[derive(Debug, Clone)]
enum Op {
    /// Claim `len` bytes, then commit `commit` of them (`None`: abort).
    Write { len: usize, commit: Option<usize> },
    /// Reader `i` reads one record.
    Read(usize),
    /// Reader `i` joins (if it is not in the ring), at the latest record or with history.
    Join(usize, Option<usize>),
    /// Reader `i` leaves.
    Leave(usize),
}

const READERS: usize = 3;

fn op(max: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..=max, proptest::option::weighted(0.85, 0..=max)).prop_map(|(len, c)| Op::Write {
            len,
            commit: c.map(|c| c.min(len)),
        }),
        4 => (0..READERS).prop_map(Op::Read),
        1 => (0..READERS, proptest::option::of(0usize..8)).prop_map(|(i, k)| Op::Join(i, k)),
        1 => (0..READERS).prop_map(Op::Leave),
    ]
}

fn footprint(len: usize) -> u64 {
    (8 + len as u64).div_ceil(16) * 16
}

#[derive(Debug, Clone, Copy)]
struct ModelReader {
    /// Start of its next record (the boundary, padding included).
    cursor: u64,
    /// Number of its next record.
    number: u64,
}

struct Model {
    cap: u64,
    policy: BroadcastPolicy,
    tail: u64,
    /// Lap: the end of the region the writer announced last.
    intent: u64,
    /// Start (boundary) of record `j` at `starts[j]`; one more than the records (the next).
    starts: Vec<u64>,
    /// Payload of record `j`.
    records: Vec<Vec<u8>>,
    readers: [Option<ModelReader>; READERS],
    seq: u8,
    /// Records a joiner may ask for.
    history: u64,
}

impl Model {
    fn published(&self) -> u64 {
        self.records.len() as u64
    }

    /// Where a record of `len` bytes goes (after any padding), and the bytes it needs.
    fn place(&self, len: usize) -> (u64, u64) {
        let f = footprint(len);
        let off = self.tail % self.cap;
        let to_end = self.cap - off;
        let pad = if f <= to_end { 0 } else { to_end };
        (self.tail.wrapping_add(pad), pad + f + 16)
    }

    fn fits(&self, needed: u64) -> bool {
        match self.policy {
            BroadcastPolicy::Lap => true,
            BroadcastPolicy::Block => self
                .readers
                .iter()
                .flatten()
                .all(|r| self.tail.wrapping_sub(r.cursor) <= self.cap - needed),
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        (0..len).map(|i| self.seq.wrapping_add(i as u8)).collect()
    }

    /// Lap: whether reader `r` is lapped, and where it resumes.
    fn lap(&self, r: ModelReader) -> Option<u64> {
        if self.policy != BroadcastPolicy::Lap || self.intent.wrapping_sub(r.cursor) <= self.cap {
            return None;
        }
        let n = self.published();
        let lo = n.saturating_sub(self.history).max(r.number);
        (lo..=n).find(|&j| self.intent.wrapping_sub(self.starts[j as usize]) <= self.cap)
    }
}

fn run(
    cap: u64,
    policy: BroadcastPolicy,
    history: usize,
    start: u64,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let (mut tx, joiner) = broadcast::channel_at(cap, READERS, policy, history, start).unwrap();
    let max = tx.max_payload() as usize;
    let mut m = Model {
        cap,
        policy,
        tail: start,
        intent: start,
        starts: vec![start],
        records: Vec::new(),
        readers: [None; READERS],
        seq: 0,
        history: history_records(table_len(policy, history)) as u64,
    };
    let mut rx: [Option<Reader<HeapMemory>>; READERS] = Default::default();
    for op in ops {
        match op {
            Op::Write { len, commit } => {
                let len = len.min(max);
                let (pos, needed) = m.place(len);
                let fits = m.fits(needed);
                match (tx.try_claim(len), fits) {
                    (Ok(mut g), true) => {
                        prop_assert_eq!(g.position(), pos);
                        if policy == BroadcastPolicy::Lap {
                            let end = m.tail.wrapping_add(needed);
                            if end.wrapping_sub(m.tail) > m.intent.wrapping_sub(m.tail) {
                                m.intent = end;
                            }
                        }
                        let bytes = m.bytes(len);
                        g.copy_from_slice(&bytes);
                        match commit {
                            Some(n) => {
                                let n = n.min(len);
                                g.commit(n);
                                m.tail = pos.wrapping_add(footprint(n));
                                m.records.push(bytes[..n].to_vec());
                                m.starts.push(m.tail);
                            }
                            None => g.abort(),
                        }
                    }
                    (Err(TryClaimError::Full { .. }), false) => {}
                    (got, want) => prop_assert!(
                        false,
                        "claim {}: ring {:?}, model fits {}",
                        len,
                        got.map(|g| g.position()),
                        want
                    ),
                }
            }
            Op::Read(i) => {
                let (Some(r), Some(reader)) = (m.readers[i], rx[i].as_mut()) else {
                    continue;
                };
                let got = reader.try_read().map(|rec| (rec.number(), rec.to_vec()));
                if let Some(j) = m.lap(r) {
                    prop_assert_eq!(got, Err(TryReadError::Lapped { lost: j - r.number }));
                    m.readers[i] = Some(ModelReader {
                        cursor: m.starts[j as usize],
                        number: j,
                    });
                } else if r.number < m.published() {
                    let want = m.records[r.number as usize].clone();
                    prop_assert_eq!(got, Ok((r.number, want)));
                    m.readers[i] = Some(ModelReader {
                        cursor: m.starts[r.number as usize + 1],
                        number: r.number + 1,
                    });
                } else {
                    prop_assert_eq!(got, Err(TryReadError::Empty));
                }
            }
            Op::Join(i, k) => {
                if rx[i].is_some() {
                    continue;
                }
                let start = k.map_or(Start::Latest, Start::History);
                let reader = joiner.join(start).unwrap();
                let n = m.published();
                let asked = n - (k.unwrap_or(0) as u64).min(m.history).min(n);
                let got = reader.record_number();
                match (policy, k) {
                    // Lap readers, and latest joiners, start exactly where they asked.
                    (BroadcastPolicy::Lap, _) | (_, None) => prop_assert_eq!(got, asked),
                    // A Block history joiner may have to start later, at a record the writer is
                    // not about to overwrite: never earlier, never past the next one.
                    (BroadcastPolicy::Block, Some(_)) => {
                        prop_assert!(
                            asked <= got && got <= n,
                            "joined at {} of {}..={}",
                            got,
                            asked,
                            n
                        )
                    }
                }
                m.readers[i] = Some(ModelReader {
                    cursor: m.starts[got as usize],
                    number: got,
                });
                rx[i] = Some(reader);
            }
            Op::Leave(i) => {
                rx[i] = None;
                m.readers[i] = None;
            }
        }
    }
    // Drain: every live reader gets what is left, in order (after a lap report, under Lap).
    for (model, reader) in m.readers.iter().zip(rx.iter_mut()) {
        let (Some(mut r), Some(reader)) = (*model, reader.as_mut()) else {
            continue;
        };
        if let Some(j) = m.lap(r) {
            prop_assert_eq!(
                reader.try_read().map(|rec| rec.number()),
                Err(TryReadError::Lapped { lost: j - r.number })
            );
            r.number = j;
        }
        for j in r.number..m.published() {
            let rec = reader.try_read().unwrap();
            prop_assert_eq!((rec.number(), &*rec), (j, &m.records[j as usize][..]));
        }
        prop_assert_eq!(reader.try_read().unwrap_err(), TryReadError::Empty);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_model(
        cap in prop_oneof![Just(128u64), Just(256), Just(1024)],
        policy in prop_oneof![Just(BroadcastPolicy::Block), Just(BroadcastPolicy::Lap)],
        history in prop_oneof![Just(0usize), Just(3)],
        start in prop_oneof![Just(0u64), Just(u64::MAX - 15), Just(u64::MAX - 127), (0u64..1 << 20).prop_map(|s| s * 16)],
        ops in proptest::collection::vec(op(120), 1..200),
    ) {
        run(cap, policy, history, start, ops)?;
    }
}
