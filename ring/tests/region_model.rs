//! Property test: a region against a sequential model, on heap memory, for arbitrary sequences
//! of write scopes (`write_at`, `write_diff`, `read_at`, reader checks while the scope is open)
//! that are published, aborted, or lost with their writer (a crash mid-scope: the scope is
//! forgotten, as a killed process leaves it, and a new writer takes over), clean writer
//! takeovers after a publish, and reader checks.
//!
//! The model keeps the latest version's bytes and, per version, the exact set of chunks its
//! scope changed: every chunk a `write_at` span touched, and every chunk in which a
//! `write_diff` found a byte that differed. A reader check compares the snapshot with the
//! model's bytes and version, and `changes_since(v)` and `read_changes(v)` for every `v` from 0
//! to past the latest: the union of the chunks of versions `v + 1 ..= latest` (exactly, no
//! chunk more), `TooOld` exactly when `v < latest - (history - 1)`, `Ahead` exactly when
//! `v > latest`, and the delta's bytes are the model's bytes of those chunks.

use std::collections::BTreeSet;

use proptest::prelude::*;
use shmesh_ring::region::{ChangesError, HeapRegion, Reader, WriteScope, Writer};

/// One step inside a write scope. Offsets and lengths are reduced to the region's size when
/// the case runs (`off % size`, `len % (size - off + 1)`).
#[derive(Debug, Clone)]
enum Step {
    /// `write_at` of `len` bytes whose pattern starts at `seed`.
    WriteAt { off: usize, len: usize, seed: u8 },
    /// `write_diff` of the scope's current bytes with the bytes at the listed distances from
    /// `off` changed (so that some chunks differ and some do not).
    WriteDiff {
        off: usize,
        len: usize,
        flips: Vec<(usize, u8)>,
    },
    /// `read_at` of `len` bytes: the latest version plus this scope's writes so far.
    ReadAt { off: usize, len: usize },
    /// A full reader check while the scope is open: it sees the latest published version only.
    Check,
}

/// How a write scope ends.
#[derive(Debug, Clone, Copy)]
enum End {
    Publish,
    /// Dropped unpublished.
    Abort,
    /// The writer dies inside the scope (`mem::forget`, so nothing is undone) and a new
    /// writer takes over.
    Crash,
}

#[derive(Debug, Clone)]
enum Op {
    Scope(Vec<Step>, End),
    /// The writer goes (after its last publish, cleanly) and a new one takes over.
    Takeover,
    Check,
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..80, 1 => 0usize..10_000]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (any::<usize>(), len(), any::<u8>())
            .prop_map(|(off, len, seed)| Step::WriteAt { off, len, seed }),
        2 => (
            any::<usize>(),
            len(),
            proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        )
            .prop_map(|(off, len, flips)| Step::WriteDiff { off, len, flips }),
        1 => (any::<usize>(), len()).prop_map(|(off, len)| Step::ReadAt { off, len }),
        1 => Just(Step::Check),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let end = prop_oneof![
        6 => Just(End::Publish),
        1 => Just(End::Abort),
        1 => Just(End::Crash),
    ];
    prop_oneof![
        8 => (proptest::collection::vec(step(), 0..6), end).prop_map(|(s, e)| Op::Scope(s, e)),
        1 => Just(Op::Takeover),
        2 => Just(Op::Check),
    ]
}

/// `off % size` and a length that fits after it.
fn span(size: usize, off: usize, len: usize) -> (usize, usize) {
    let off = off % size;
    (off, len % (size - off + 1))
}

struct Model {
    size: usize,
    chunk: usize,
    history: usize,
    /// The latest version's bytes.
    bytes: Vec<u8>,
    /// `changed[v]`: the chunks version `v` changed (`changed[0]` is empty).
    changed: Vec<BTreeSet<usize>>,
}

impl Model {
    fn latest(&self) -> u64 {
        self.changed.len() as u64 - 1
    }

    fn chunk_range(&self, chunk: usize) -> std::ops::Range<usize> {
        chunk * self.chunk..((chunk + 1) * self.chunk).min(self.size)
    }

    /// What `changes_since(v)` must return.
    fn changes_since(&self, v: u64) -> Result<Vec<usize>, ChangesError> {
        let latest = self.latest();
        if v > latest {
            return Err(ChangesError::Ahead { asked: v, latest });
        }
        let oldest = latest.saturating_sub(self.history as u64 - 1);
        if v < oldest {
            return Err(ChangesError::TooOld {
                asked: v,
                oldest,
                latest,
            });
        }
        let all: BTreeSet<usize> = self.changed[v as usize + 1..]
            .iter()
            .flatten()
            .copied()
            .collect();
        Ok(all.into_iter().collect())
    }
}

/// The model of an open scope: the bytes it would publish and the chunks it changed.
struct Pending {
    bytes: Vec<u8>,
    chunks: BTreeSet<usize>,
}

/// Checks everything a reader can see against the model.
fn check(reader: &Reader<HeapRegion>, m: &Model) -> Result<(), TestCaseError> {
    let latest = m.latest();
    prop_assert_eq!(reader.version(), latest);
    let (v, bytes) = reader
        .snapshot()
        .expect("an honest region is never corrupt");
    prop_assert_eq!(v, latest);
    prop_assert!(
        bytes == m.bytes,
        "snapshot of version {} differs from the model",
        v
    );
    let mut asked: Vec<u64> = (0..=latest + 2).collect();
    asked.push(u64::MAX);
    for v in asked {
        let want = m.changes_since(v);
        match (reader.changes_since(v), &want) {
            (Ok(got), Ok(chunks)) => {
                prop_assert_eq!((got.from, got.to), (v, latest));
                prop_assert_eq!(&got.chunks, chunks, "changes since {}", v);
            }
            (got, want) => {
                prop_assert_eq!(got.map(|c| c.chunks), want.clone(), "changes since {}", v)
            }
        }
        match (reader.read_changes(v), want) {
            (Ok(delta), Ok(chunks)) => {
                prop_assert_eq!((delta.changes.from, delta.changes.to), (v, latest));
                prop_assert_eq!(&delta.changes.chunks, &chunks, "read_changes({})", v);
                let bytes: Vec<u8> = chunks
                    .iter()
                    .flat_map(|&c| m.bytes[m.chunk_range(c)].iter().copied())
                    .collect();
                prop_assert!(delta.bytes == bytes, "read_changes({}): bytes differ", v);
            }
            (got, want) => {
                prop_assert_eq!(got.map(|d| d.changes.chunks), want, "read_changes({})", v)
            }
        }
    }
    Ok(())
}

/// Runs the steps of one scope against the scope and its model.
fn run_steps(
    scope: &mut WriteScope<'_, HeapRegion>,
    pending: &mut Pending,
    steps: Vec<Step>,
    reader: &Reader<HeapRegion>,
    m: &Model,
) -> Result<(), TestCaseError> {
    let (size, chunk) = (m.size, m.chunk);
    for step in steps {
        match step {
            Step::WriteAt { off, len, seed } => {
                let (off, len) = span(size, off, len);
                let data: Vec<u8> = (0..len)
                    .map(|i| seed.wrapping_add((i as u8).wrapping_mul(7)))
                    .collect();
                scope.write_at(off, &data);
                pending.bytes[off..off + len].copy_from_slice(&data);
                if len > 0 {
                    pending.chunks.extend(off / chunk..=(off + len - 1) / chunk);
                }
            }
            Step::WriteDiff { off, len, flips } => {
                let (off, len) = span(size, off, len);
                let mut data = pending.bytes[off..off + len].to_vec();
                if len > 0 {
                    for (at, x) in flips {
                        data[at % len] ^= x;
                    }
                }
                scope.write_diff(off, &data);
                let mut at = off;
                while at < off + len {
                    let end = ((at / chunk + 1) * chunk).min(off + len);
                    let new = &data[at - off..end - off];
                    if pending.bytes[at..end] != *new {
                        pending.bytes[at..end].copy_from_slice(new);
                        pending.chunks.insert(at / chunk);
                    }
                    at = end;
                }
            }
            Step::ReadAt { off, len } => {
                let (off, len) = span(size, off, len);
                let mut got = vec![0u8; len];
                scope.read_at(off, &mut got);
                prop_assert!(
                    got == pending.bytes[off..off + len],
                    "read_at({}, {}) inside the scope",
                    off,
                    len
                );
            }
            Step::Check => check(reader, m)?,
        }
    }
    Ok(())
}

fn run(
    size: usize,
    buffers: usize,
    chunk: usize,
    history: usize,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let mem = HeapRegion::new(size as u64, buffers, chunk, history).unwrap();
    let mut writer = Writer::new(mem.clone()).unwrap();
    let reader = Reader::new(mem.clone());
    let mut m = Model {
        size,
        chunk,
        history,
        bytes: vec![0; size],
        changed: vec![BTreeSet::new()],
    };
    check(&reader, &m)?;
    for op in ops {
        match op {
            Op::Check => check(&reader, &m)?,
            Op::Takeover => {
                drop(writer);
                writer = Writer::new(mem.clone()).unwrap();
                prop_assert_eq!(writer.version(), m.latest());
            }
            Op::Scope(steps, end) => {
                let mut scope = writer.write();
                prop_assert_eq!(scope.version(), m.latest() + 1);
                let mut pending = Pending {
                    bytes: m.bytes.clone(),
                    chunks: BTreeSet::new(),
                };
                run_steps(&mut scope, &mut pending, steps, &reader, &m)?;
                match end {
                    End::Publish => {
                        prop_assert_eq!(scope.publish(), m.latest() + 1);
                        m.bytes = pending.bytes;
                        m.changed.push(pending.chunks);
                    }
                    End::Abort => drop(scope),
                    End::Crash => {
                        std::mem::forget(scope);
                        writer = Writer::new(mem.clone()).unwrap();
                    }
                }
                prop_assert_eq!(writer.version(), m.latest());
            }
        }
    }
    check(&reader, &m)?;
    Ok(())
}

/// The region's parameters: size, buffers, chunk, history.
fn shape() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    let max = if cfg!(miri) { 200 } else { 5000 };
    (
        prop_oneof![1 => 1usize..=70, 3 => 1usize..=max],
        2usize..=4,
        prop_oneof![Just(64usize), Just(128), Just(4096)],
    )
        .prop_flat_map(|(size, buffers, chunk)| {
            (Just(size), Just(buffers), Just(chunk), buffers..=10usize)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 512 }, ..ProptestConfig::default() })]

    #[test]
    fn region_matches_model(
        (size, buffers, chunk, history) in shape(),
        ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 6 } else { 40 }),
    ) {
        run(size, buffers, chunk, history, ops)?;
    }
}
