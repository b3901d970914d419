//! The fault-injecting link: each fault happens at roughly its configured rate (generous
//! bounds: this checks the knobs work, not statistics), the counts in `FaultStats` match what
//! came out, and `wire::decode` rejects every frame the wrapper damaged.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shmesh_bridge::fault::{FaultPlan, FaultPlanError, FaultStats, FaultyLink};
use shmesh_bridge::link::{Link, LinkError};
use shmesh_bridge::wire;

type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// One end of an in-memory link: frames sent on one end are received, whole and in order, on
/// the other.
#[derive(Debug)]
struct MemLink {
    tx: Queue,
    rx: Queue,
}

fn mem_pair() -> (MemLink, MemLink) {
    let a: Queue = Rc::default();
    let b: Queue = Rc::default();
    (
        MemLink {
            tx: a.clone(),
            rx: b.clone(),
        },
        MemLink { tx: b, rx: a },
    )
}

impl Link for MemLink {
    fn send(&mut self, frame: &[u8]) -> Result<bool, LinkError> {
        self.tx.borrow_mut().push_back(frame.to_vec());
        Ok(true)
    }
    fn poll(&mut self) -> Result<bool, LinkError> {
        Ok(false)
    }
    fn recv(&mut self, out: &mut Vec<u8>) -> Result<bool, LinkError> {
        match self.rx.borrow_mut().pop_front() {
            Some(frame) => {
                *out = frame;
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn queued(&self) -> usize {
        0
    }
}

const N: u64 = 20_000;

/// Frame `i`: a Data frame on stream 1 with `seq` = `i` and a payload of 0..64 record bytes.
fn frame(i: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = vec![i as u8; (i % 64) as usize];
    wire::encode_data(&mut out, 1, i, i + 1, 7, &bytes).unwrap();
    out
}

/// Sends frames `0..n` through a wrapper with `plan` and returns everything it hands out.
fn run(plan: FaultPlan, n: u64) -> (Vec<Vec<u8>>, FaultStats) {
    let (mut sender, receiver) = mem_pair();
    let mut link = FaultyLink::new(receiver, plan).unwrap();
    for i in 0..n {
        assert!(sender.send(&frame(i)).unwrap());
    }
    let mut out = Vec::new();
    let mut got = Vec::new();
    while link.recv(&mut out).unwrap() {
        got.push(std::mem::take(&mut out));
    }
    let stats = link.stats();
    assert_eq!(stats.received, n);
    assert_eq!(stats.delivered, got.len() as u64);
    assert_eq!(stats.delivered, n - stats.dropped + stats.duplicated);
    (got, stats)
}

/// The seq of a frame that decodes, or `None`.
fn seq_of(frame: &[u8]) -> Option<u64> {
    wire::decode(frame).ok().map(|f| f.header.seq)
}

/// `count` is within a generous band around `p * N`.
fn assert_rate(what: &str, count: u64, p: f64) {
    let expected = p * N as f64;
    let (lo, hi) = (expected * 0.7, expected * 1.3);
    assert!(
        (lo..=hi).contains(&(count as f64)),
        "{what}: {count} of {N} frames, expected about {expected}"
    );
}

fn plan(seed: u64) -> FaultPlan {
    FaultPlan {
        seed,
        ..FaultPlan::default()
    }
}

#[test]
fn no_faults_pass_frames_through_untouched() {
    let (got, stats) = run(plan(1), 1000);
    let sent: Vec<_> = (0..1000).map(frame).collect();
    assert_eq!(got, sent);
    assert_eq!(
        stats,
        FaultStats {
            received: 1000,
            delivered: 1000,
            ..FaultStats::default()
        }
    );
}

#[test]
fn drop_skips_frames_at_its_rate() {
    let (got, stats) = run(
        FaultPlan {
            drop: 0.1,
            ..plan(2)
        },
        N,
    );
    let seqs: Vec<u64> = got.iter().map(|f| seq_of(f).unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order kept");
    assert_eq!(N - seqs.len() as u64, stats.dropped);
    assert_rate("dropped", stats.dropped, 0.1);
    for f in &got {
        assert_eq!(f, &frame(seq_of(f).unwrap()));
    }
}

#[test]
fn duplicate_repeats_frames_at_its_rate() {
    let (got, stats) = run(
        FaultPlan {
            duplicate: 0.1,
            ..plan(3)
        },
        N,
    );
    let seqs: Vec<u64> = got.iter().map(|f| seq_of(f).unwrap()).collect();
    let mut deduped = seqs.clone();
    deduped.dedup();
    assert_eq!(deduped, (0..N).collect::<Vec<_>>(), "each frame, in order");
    assert_eq!((seqs.len() - deduped.len()) as u64, stats.duplicated);
    assert_rate("duplicated", stats.duplicated, 0.1);
}

#[test]
fn reorder_swaps_frames_at_its_rate() {
    let p = 0.1;
    let (got, stats) = run(
        FaultPlan {
            reorder: p,
            ..plan(4)
        },
        N,
    );
    let seqs: Vec<u64> = got.iter().map(|f| seq_of(f).unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..N).collect::<Vec<_>>(),
        "nothing lost or repeated"
    );
    let inversions = seqs.windows(2).filter(|w| w[0] > w[1]).count() as u64;
    assert_eq!(inversions, stats.reordered);
    // A frame right after a held one is never held itself: about p / (1 + p) are held.
    assert_rate("reordered", stats.reordered, p / (1.0 + p));
}

#[test]
fn corrupt_flips_one_bit_and_decode_rejects_it() {
    let (got, stats) = run(
        FaultPlan {
            corrupt: 0.1,
            ..plan(5)
        },
        N,
    );
    assert_eq!(got.len() as u64, N, "corruption keeps frames and order");
    let mut rejected = 0;
    for (i, f) in got.iter().enumerate() {
        let original = frame(i as u64);
        assert_eq!(f.len(), original.len());
        let flipped: u32 = f
            .iter()
            .zip(&original)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        match wire::decode(f) {
            Ok(_) => assert_eq!(flipped, 0, "frame {i} decodes although damaged"),
            Err(_) => {
                assert_eq!(flipped, 1, "frame {i}");
                rejected += 1;
            }
        }
    }
    assert_eq!(rejected, stats.corrupted);
    assert_rate("corrupted", stats.corrupted, 0.1);
}

#[test]
fn truncate_cuts_frames_and_decode_rejects_them() {
    let (got, stats) = run(
        FaultPlan {
            truncate: 0.1,
            ..plan(6)
        },
        N,
    );
    assert_eq!(got.len() as u64, N);
    let mut rejected = 0;
    for (i, f) in got.iter().enumerate() {
        let original = frame(i as u64);
        match wire::decode(f) {
            Ok(_) => assert_eq!(f, &original),
            Err(_) => {
                assert!(f.len() < original.len() && original.starts_with(f));
                rejected += 1;
            }
        }
    }
    assert_eq!(rejected, stats.truncated);
    assert_rate("truncated", stats.truncated, 0.1);
}

#[test]
fn all_faults_together_never_let_a_damaged_frame_decode() {
    let p = 0.2;
    let (got, stats) = run(
        FaultPlan {
            drop: p,
            duplicate: p,
            reorder: p,
            corrupt: p,
            truncate: p,
            delay: None,
            seed: 7,
        },
        N,
    );
    let mut rejected = 0;
    for f in &got {
        match wire::decode(f) {
            Ok(frame_) => assert_eq!(f, &frame(frame_.header.seq)),
            Err(_) => rejected += 1,
        }
    }
    assert!(rejected > 0);
    // A damaged frame may also have been duplicated: both copies fail.
    assert!(rejected <= 2 * (stats.corrupted + stats.truncated));
    for (what, count) in [
        ("dropped", stats.dropped),
        ("duplicated", stats.duplicated),
        ("corrupted", stats.corrupted),
        ("truncated", stats.truncated),
    ] {
        assert!(count > 0, "{what} never happened");
    }
    assert!(stats.reordered > 0);
}

#[test]
fn certain_faults_always_happen() {
    let (got, stats) = run(
        FaultPlan {
            drop: 1.0,
            ..plan(8)
        },
        100,
    );
    assert!(got.is_empty());
    assert_eq!(stats.dropped, 100);
    let (got, _) = run(
        FaultPlan {
            corrupt: 1.0,
            ..plan(9)
        },
        100,
    );
    assert!(got.iter().all(|f| wire::decode(f).is_err()));
    let (got, _) = run(
        FaultPlan {
            duplicate: 1.0,
            ..plan(10)
        },
        100,
    );
    assert_eq!(got.len(), 200);
}

#[test]
fn same_seed_same_faults() {
    let p = FaultPlan {
        drop: 0.3,
        duplicate: 0.3,
        reorder: 0.3,
        corrupt: 0.3,
        truncate: 0.3,
        delay: None,
        seed: 11,
    };
    assert_eq!(run(p, 2000), run(p, 2000));
    assert_ne!(run(p, 2000).0, run(FaultPlan { seed: 12, ..p }, 2000).0);
}

#[test]
fn delay_holds_frames_until_it_passed() {
    // Held far longer than the test runs: nothing comes out.
    let (mut sender, receiver) = mem_pair();
    let mut link = FaultyLink::new(
        receiver,
        FaultPlan {
            delay: Some(Duration::from_secs(3600)),
            ..plan(13)
        },
    )
    .unwrap();
    sender.send(&frame(0)).unwrap();
    let mut out = Vec::new();
    assert!(!link.recv(&mut out).unwrap());
    assert_eq!(link.stats().received, 1);
    assert_eq!(link.stats().delayed, 1);

    // A short delay: frames come out, in order, no sooner than the delay after they were taken.
    let delay = Duration::from_millis(20);
    let (mut sender, receiver) = mem_pair();
    let mut link = FaultyLink::new(
        receiver,
        FaultPlan {
            delay: Some(delay),
            ..plan(14)
        },
    )
    .unwrap();
    for i in 0..10 {
        sender.send(&frame(i)).unwrap();
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < 10 {
        assert!(Instant::now() < deadline, "delayed frames never came out");
        if link.recv(&mut out).unwrap() {
            got.push(std::mem::take(&mut out));
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(start.elapsed() >= delay);
    assert_eq!(got, (0..10).map(frame).collect::<Vec<_>>());
}

#[test]
fn sending_passes_through() {
    let (a, mut b) = mem_pair();
    let mut link = FaultyLink::new(
        a,
        FaultPlan {
            drop: 1.0,
            corrupt: 1.0,
            ..plan(15)
        },
    )
    .unwrap();
    assert!(link.send(&frame(3)).unwrap());
    let mut out = Vec::new();
    assert!(b.recv(&mut out).unwrap());
    assert_eq!(out, frame(3));
}

#[test]
fn plans_out_of_range_are_refused() {
    for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let p = FaultPlan {
            truncate: bad,
            ..plan(0)
        };
        let err = FaultyLink::new(mem_pair().0, p).unwrap_err();
        assert!(matches!(
            err,
            FaultPlanError::BadProbability {
                name: "truncate",
                ..
            }
        ));
    }
    for ok in [0.0, 1.0] {
        let p = FaultPlan {
            reorder: ok,
            ..plan(0)
        };
        assert!(p.validate().is_ok());
    }
}
