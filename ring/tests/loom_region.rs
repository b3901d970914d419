//! loom models of the region protocol (run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shmesh-ring --release --test
//! loom_region --target-dir target/loom`).
//!
//! The region runs on `HeapRegion`. Under loom every byte of a buffer moves through relaxed
//! atomic word accesses (see `region.rs`, module `bytes`), so loom shows a reader every mix of
//! old and new words a copy racing with the writer can see: the models check that the
//! per-buffer version word (a seqlock) makes the reader discard every such copy. The futex is a
//! loom mutex + condvar, so a lost wake-up is a deadlock. The regions are tiny (16 or 24
//! bytes, two or three words) to keep the state space small: each model finishes in seconds at
//! two preemptions.
#![cfg(loom)]

use loom::thread;
use shmesh_ring::region::{ChangesError, HeapRegion, Reader, Writer};
use shmesh_ring::WaitStrategy;

/// A region of `size` bytes, two buffers, one 64-byte chunk, `history` versions of history.
fn region(size: u64, history: usize) -> (Writer<HeapRegion>, Reader<HeapRegion>) {
    let mem = HeapRegion::new(size, 2, 64, history).unwrap();
    (Writer::new(mem.clone()).unwrap(), Reader::new(mem))
}

/// Publishes `count` versions, version `v` filling the whole region with the byte `v`.
fn publish_uniform(w: &mut Writer<HeapRegion>, size: usize, count: u8) {
    for v in 1..=count {
        let mut s = w.write();
        s.write_at(0, &vec![v; size]);
        assert_eq!(s.publish(), u64::from(v));
    }
}

/// A reader snapshots while the writer publishes two versions, each filling the region with
/// its number, through both buffers (the second rewrites the buffer of version 0 while the
/// reader may still be copying it): every snapshot is one whole version, its bytes say the
/// version it reports, and versions never go back.
#[test]
fn snapshots_are_whole_versions() {
    loom::model(|| {
        let (mut w, r) = region(16, 2);
        let writer = thread::spawn(move || publish_uniform(&mut w, 16, 2));
        let mut last = 0;
        for _ in 0..2 {
            let (v, bytes) = r.snapshot().unwrap();
            assert!(v >= last, "version went back from {last} to {v}");
            assert!(v <= 2);
            assert_eq!(bytes, vec![v as u8; 16], "torn or mislabelled snapshot");
            last = v;
        }
        writer.join().unwrap();
        assert_eq!(r.snapshot().unwrap(), (2, vec![2; 16]));
    });
}

/// A reader sleeps in `wait_for` as soon as it waits (no spinning) while the writer publishes
/// once: the parked-flag handshake never loses the wake-up (loom would report a deadlock), and
/// the reader returns the version it waited for.
#[test]
fn wait_for_never_misses_a_publish() {
    loom::model(|| {
        let (mut w, r) = region(16, 2);
        let r = r.with_wait(WaitStrategy::Futex { spins: 0 });
        let reader = thread::spawn(move || {
            let v = r.wait_for(1, None).unwrap();
            assert_eq!(v, 1);
            assert_eq!(r.snapshot().unwrap(), (1, vec![1; 16]));
        });
        publish_uniform(&mut w, 16, 1);
        reader.join().unwrap();
    });
}

/// A reader waits for version 2 while the writer publishes twice: the first publish may wake
/// it early (it must sleep again, not return), the second must wake it.
///
/// Regression: the sleeper used to sleep on `notify` while the writer woke only when it swapped
/// `parked` from 1 to 0, so the first publish could take the flag of a sleeper that then slept
/// on a value that no longer changed (a wake-up late by the 20 ms park slice). It now sleeps on
/// `parked` itself, as the rings do.
#[test]
fn wait_for_sleeps_again_until_its_version() {
    loom::model(|| {
        let (mut w, r) = region(16, 2);
        let r = r.with_wait(WaitStrategy::Futex { spins: 0 });
        let reader = thread::spawn(move || assert_eq!(r.wait_for(2, None), Ok(2)));
        publish_uniform(&mut w, 16, 2);
        reader.join().unwrap();
    });
}

/// `read_changes` while the writer publishes three versions, version `v` writing the byte `v`
/// into word `v - 1` of a 24-byte region: every delta's bytes are exactly those of the
/// version it reports (words `0 .. to` say `1 ..= to`, the rest zero), and deltas never go
/// back. With a history of four versions, changes since version 0 stay listable.
#[test]
fn read_changes_bytes_belong_to_their_version() {
    loom::model(|| {
        let (mut w, r) = region(24, 4);
        let writer = thread::spawn(move || {
            for v in 1..=3u8 {
                let mut s = w.write();
                s.write_at(8 * (usize::from(v) - 1), &[v; 8]);
                assert_eq!(s.publish(), u64::from(v));
            }
        });
        let mut last = 0;
        for _ in 0..2 {
            let d = r.read_changes(0).unwrap();
            let to = d.changes.to;
            assert!(to >= last && to <= 3, "delta to {to} after {last}");
            assert_eq!(d.changes.from, 0);
            let want: Vec<u8> = (1..=3u8)
                .flat_map(|k| [if u64::from(k) <= to { k } else { 0 }; 8])
                .collect();
            if to == 0 {
                assert!(d.changes.chunks.is_empty() && d.bytes.is_empty());
            } else {
                assert_eq!(d.changes.chunks, vec![0]);
                assert_eq!(d.bytes, want, "delta bytes are not version {to}'s");
            }
            last = to;
        }
        writer.join().unwrap();
    });
}

/// `changes_since(0)` with a history of two versions while the writer publishes three:
/// version 1 changes the region's one chunk, versions 2 and 3 change nothing. The reader may
/// read version 1's entry while the third publish rewrites it for version 3 (SYNC POINT B):
/// its bitmap word may then already say "nothing changed", and the tag check after the read
/// must send the reader to look again instead of listing no change from version 0 to 1. The
/// answer is the one for the latest version it ends on: `Ok` up to version 1, `TooOld` from
/// version 2.
#[test]
fn changes_since_sees_history_rewrites() {
    loom::model(|| {
        let (mut w, r) = region(16, 2);
        let writer = thread::spawn(move || {
            publish_uniform(&mut w, 16, 1);
            for v in 2..=3 {
                assert_eq!(w.write().publish(), v);
            }
        });
        match r.changes_since(0) {
            Ok(c) => {
                assert_eq!(c.from, 0);
                assert!(c.to <= 1, "version 0 is listed from latest {}", c.to);
                let want: Vec<usize> = if c.to == 1 { vec![0] } else { vec![] };
                assert_eq!(c.chunks, want);
            }
            Err(ChangesError::TooOld {
                asked: 0,
                oldest,
                latest,
            }) => {
                // From latest 2 on, version 0 is too old (oldest = latest - 1). A reader that
                // sees version 1's entry rewritten may still load latest 1 (no happens-before
                // orders the writer's `latest` store of version 2 before its entry rewrite's
                // relaxed tag store): it then says "too old" with `oldest = latest = 1`, the
                // right answer with stale numbers.
                assert!(
                    latest >= 2 && oldest == latest - 1 || (oldest, latest) == (1, 1),
                    "too old: oldest {oldest}, latest {latest}"
                );
            }
            Err(e) => panic!("{e}"),
        }
        writer.join().unwrap();
    });
}
