//! Property test: the MPSC ring against a sequential model, on heap memory, for arbitrary
//! interleavings of several writers' claims (held open together, committed in full, committed
//! short or aborted, in any order) with reads, from arbitrary start positions (including just
//! below `u64::MAX`).
//!
//! The model keeps the ring's positions to predict exactly when it is full: a claim takes
//! `align16(8 + len)` bytes, plus padding to the end of the data area when it does not fit
//! before the end; a short commit leaves the rest of the claim as padding; the consumer gives
//! space back (zeroed) when a record it read is dropped, and padding it skipped when a read finds
//! nothing.

use std::collections::VecDeque;

use proptest::prelude::*;
use shmesh_ring::mpsc::{self, Grant, Writer};
use shmesh_ring::{HeapMemory, TryClaimError, TryReadError};

const WRITERS: usize = 3;

/// What a claim ends with.
#[derive(Debug, Clone, Copy)]
enum End {
    Commit(usize),
    Abort,
}

#[derive(Debug, Clone)]
enum Op {
    /// Each listed writer (at most once) claims `len` bytes, in this order; then the claims end
    /// in the order of `order` (indices into `claims`, the rest in claim order), with `reads[k]`
    /// reads after the `k`-th end.
    Round {
        claims: Vec<(usize, usize, End)>,
        order: Vec<usize>,
        reads: Vec<usize>,
    },
    /// Read up to `n` records.
    Read(usize),
}

fn op(max: usize) -> impl Strategy<Value = Op> {
    let end = prop_oneof![
        4 => (0..=max).prop_map(End::Commit),
        1 => Just(End::Abort),
    ];
    let claim = (0..WRITERS, 0..=max, end);
    prop_oneof![
        4 => (
            proptest::collection::vec(claim, 1..=WRITERS),
            proptest::collection::vec(0..WRITERS, 0..WRITERS),
            proptest::collection::vec(0usize..3, 0..=WRITERS),
        )
            .prop_map(|(claims, order, reads)| Op::Round { claims, order, reads }),
        1 => (0usize..5).prop_map(Op::Read),
    ]
}

fn footprint(len: usize) -> u64 {
    (8 + len as u64).div_ceil(16) * 16
}

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Padding(u64),
    /// Claim number, footprint.
    Claimed(u64, u64),
    /// Bytes, footprint used (the rest of the claim follows as padding).
    Committed(Vec<u8>, u64),
}

struct Model {
    cap: u64,
    /// Everything below is released (zeroed) by the consumer.
    released: u64,
    /// The consumer's read position.
    head: u64,
    tail: u64,
    /// Records and padding from `head` on, in ring order.
    queue: VecDeque<Entry>,
    next_claim: u64,
    seq: u8,
}

impl Model {
    /// Claims `len` bytes if they fit: returns the claim number and its position.
    fn claim(&mut self, len: usize) -> Option<(u64, u64)> {
        let fp = footprint(len);
        let to_end = self.cap - self.tail % self.cap;
        let pad = if fp <= to_end { 0 } else { to_end };
        let free = self.cap - self.tail.wrapping_sub(self.released);
        if pad + fp > free {
            return None;
        }
        if pad > 0 {
            self.queue.push_back(Entry::Padding(pad));
        }
        let pos = self.tail.wrapping_add(pad);
        self.tail = pos.wrapping_add(fp);
        let id = self.next_claim;
        self.next_claim += 1;
        self.queue.push_back(Entry::Claimed(id, fp));
        Some((id, pos))
    }

    fn end(&mut self, id: u64, bytes: Option<Vec<u8>>) {
        let at = self
            .queue
            .iter()
            .position(|e| matches!(e, Entry::Claimed(c, _) if *c == id))
            .expect("the claim is queued");
        let Entry::Claimed(_, fp) = self.queue[at] else {
            unreachable!()
        };
        match bytes {
            None => self.queue[at] = Entry::Padding(fp),
            Some(bytes) => {
                let used = footprint(bytes.len());
                self.queue[at] = Entry::Committed(bytes, used);
                if used < fp {
                    self.queue.insert(at + 1, Entry::Padding(fp - used));
                }
            }
        }
    }

    /// What a read returns: the next committed record (released once dropped), or nothing
    /// (and the skipped padding released).
    fn read(&mut self) -> Option<Vec<u8>> {
        while let Some(Entry::Padding(n)) = self.queue.front() {
            self.head = self.head.wrapping_add(*n);
            self.queue.pop_front();
        }
        match self.queue.front() {
            Some(Entry::Committed(..)) => {
                let Some(Entry::Committed(bytes, used)) = self.queue.pop_front() else {
                    unreachable!()
                };
                self.head = self.head.wrapping_add(used);
                self.released = self.head;
                Some(bytes)
            }
            _ => {
                self.released = self.head;
                None
            }
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        (0..len).map(|i| self.seq.wrapping_add(i as u8)).collect()
    }
}

fn check_read(rx: &mut mpsc::Consumer<HeapMemory>, m: &mut Model) -> Result<(), TestCaseError> {
    match (rx.try_read(), m.read()) {
        (Ok(r), Some(bytes)) => prop_assert_eq!(&*r, &bytes[..]),
        (Err(TryReadError::Empty), None) => {}
        (got, want) => prop_assert!(
            false,
            "read: ring {:?}, model {:?}",
            got.map(|r| r.to_vec()),
            want
        ),
    }
    Ok(())
}

/// One open claim of a round.
struct Open<'a> {
    grant: Grant<'a, HeapMemory>,
    id: u64,
    end: End,
    bytes: Vec<u8>,
}

fn run(cap: u64, start: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (ws, mut rx) = mpsc::channel_at(cap, WRITERS, start).unwrap();
    let mut writers: Vec<Writer<HeapMemory>> = (0..WRITERS).map(|_| ws.writer().unwrap()).collect();
    let max = writers[0].max_payload() as usize;
    let mut m = Model {
        cap,
        released: start,
        head: start,
        tail: start,
        queue: VecDeque::new(),
        next_claim: 0,
        seq: 0,
    };
    for op in ops {
        match op {
            Op::Read(n) => {
                for _ in 0..n {
                    check_read(&mut rx, &mut m)?;
                }
            }
            Op::Round {
                claims,
                order,
                reads,
            } => {
                let mut free: Vec<Option<&mut Writer<HeapMemory>>> =
                    writers.iter_mut().map(Some).collect();
                let mut open: Vec<Option<Open<'_>>> = Vec::new();
                for (w, len, end) in claims {
                    let Some(writer) = free[w].take() else {
                        continue; // one claim per writer and round
                    };
                    let len = len.min(max);
                    match (writer.try_claim(len), m.claim(len)) {
                        (Ok(mut grant), Some((id, pos))) => {
                            prop_assert_eq!(grant.position(), pos);
                            let bytes = m.bytes(len);
                            grant.copy_from_slice(&bytes);
                            open.push(Some(Open {
                                grant,
                                id,
                                end,
                                bytes,
                            }));
                        }
                        (Err(TryClaimError::Full { .. }), None) => {}
                        (got, want) => prop_assert!(
                            false,
                            "claim {}: ring {:?}, model {:?}",
                            len,
                            got.map(|g| g.position()),
                            want
                        ),
                    }
                }
                let mut sequence: Vec<usize> =
                    order.into_iter().filter(|&i| i < open.len()).collect();
                sequence.extend(0..open.len());
                let mut ended = 0;
                for i in sequence {
                    let Some(o) = open[i].take() else { continue };
                    match o.end {
                        End::Commit(n) => {
                            let n = n.min(o.bytes.len());
                            o.grant.commit(n);
                            m.end(o.id, Some(o.bytes[..n].to_vec()));
                        }
                        End::Abort => {
                            o.grant.abort();
                            m.end(o.id, None);
                        }
                    }
                    for _ in 0..reads.get(ended).copied().unwrap_or(0) {
                        check_read(&mut rx, &mut m)?;
                    }
                    ended += 1;
                }
            }
        }
    }
    // Drain: everything committed comes out, in order.
    while let Some(bytes) = m.read() {
        prop_assert_eq!(&*rx.try_read().unwrap(), &bytes[..]);
    }
    prop_assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 512 }, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_model(
        cap in prop_oneof![Just(128u64), Just(256), Just(1024)],
        start in prop_oneof![Just(0u64), Just(u64::MAX - 15), Just(u64::MAX - 127), (0u64..1 << 20).prop_map(|s| s * 16)],
        ops in proptest::collection::vec(op(120), 1..100),
    ) {
        run(cap, start, ops)?;
    }
}
