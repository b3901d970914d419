//! Shared helpers of the `shmesh` crate's channel tests: unique channel names, a bounded call,
//! and the rich message type the tests send. The child-process harness (roles, `Proc`,
//! deadlines, watchdogs, other users) is `shmesh-testkit`, re-exported here.

#![allow(dead_code)] // each test binary uses its own part of the helpers

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use rkyv::{Archive, Deserialize, Serialize};
pub use shmesh_testkit::*;

// ---- deadlines and names ----

/// How long one test may run before its [`Watchdog`] aborts the test binary.
pub const TEST_LIMIT: Duration = Duration::from_secs(300);

/// A channel name unique to a test and to this process (`chan-<pid>-<test>-<n>`). On drop,
/// removes the shared-memory object of that name if something (a killed child, a failed test)
/// left it behind.
#[derive(Debug)]
pub struct ChannelName(String);

impl ChannelName {
    /// A fresh name for the test `test` (a short `[a-z0-9-]` label).
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        ChannelName(format!("chan-{}-{test}-{n}", std::process::id()))
    }

    /// The channel name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file of the channel's POSIX shared-memory object on Linux.
    pub fn path(&self) -> PathBuf {
        shm_path(&self.0)
    }
}

impl Display for ChannelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for ChannelName {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path());
    }
}

/// `/dev/shm/shmesh.<name>`: the file behind the channel `name`.
pub fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/shmesh.{name}"))
}

/// Runs `f` on a thread; fails if it has not returned within [`DEADLINE`]. For calls that block
/// without a timeout of their own (`send`, `recv`): a bug then fails the test instead of hanging
/// it (the stuck thread is left behind).
#[track_caller]
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not return within {DEADLINE:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

// ---- the rich message type ----

/// An enum with unit, tuple and struct variants.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum Shape {
    /// A unit variant.
    Empty,
    /// A tuple variant.
    Point(i32, i64),
    /// A struct variant with heap data.
    Labeled {
        /// A label.
        label: String,
        /// Some weights.
        weights: Vec<f64>,
    },
}

/// A nested struct.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct Inner {
    /// An identifier.
    pub id: u64,
    /// Tags.
    pub tags: Vec<String>,
    /// An optional nested shape.
    pub shape: Option<Shape>,
}

/// A struct with every kind of field the channel must carry.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Rich {
    /// The sequence number.
    pub seq: u64,
    /// A short string (empty, ASCII or not).
    pub name: String,
    /// A string of any length (up to 100 KiB).
    pub text: String,
    /// A nested vector.
    pub matrix: Vec<Vec<u32>>,
    /// An option that is `Some` or `None`.
    pub maybe: Option<String>,
    /// Another option.
    pub number: Option<u64>,
    /// Enums with data.
    pub shapes: Vec<Shape>,
    /// A hash map.
    pub counts: HashMap<String, u64>,
    /// An ordered map.
    pub names: BTreeMap<u32, String>,
    /// A nested struct.
    pub inner: Inner,
    /// A flag.
    pub flag: bool,
    /// A char.
    pub letter: char,
    /// Raw bytes.
    pub bytes: Vec<u8>,
}

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Non-ASCII words the generated strings are made of.
const WORDS: [&str; 8] = [
    "grüße",
    "🚀",
    "naïve",
    "日本語",
    "ascii",
    "",
    "Ωμέγα",
    "\u{0}nul",
];

/// A string of about `len` bytes, different for each `seed`.
pub fn text(seed: u64, len: usize) -> String {
    let mut rng = Rng(seed);
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        s.push(char::from(b'a' + rng.below(26) as u8));
    }
    s
}

/// The rich message number `seq`: every field depends on `seq`, sizes vary from a few hundred
/// bytes to several KiB, and every 50th message carries a 100 KiB string.
pub fn rich(seq: u64) -> Rich {
    let mut rng = Rng(seq ^ 0x5EED_0000);
    let text_len = if seq % 50 == 49 {
        100 * 1024
    } else {
        rng.below(3000) as usize
    };
    let rows = rng.below(6) as usize;
    let matrix = (0..rows)
        .map(|r| {
            (0..rng.below(40))
                .map(|c| (seq as u32).wrapping_mul(31) ^ (r as u32) << 8 ^ c as u32)
                .collect()
        })
        .collect();
    let shapes = (0..rng.below(5))
        .map(|i| match (seq + i) % 3 {
            0 => Shape::Empty,
            1 => Shape::Point(-(seq as i32) - i as i32, i64::MIN + seq as i64),
            _ => Shape::Labeled {
                label: text(seq * 7 + i, (i * 5) as usize),
                weights: (0..i).map(|w| w as f64 * 0.5 - seq as f64).collect(),
            },
        })
        .collect();
    let counts = (0..rng.below(8))
        .map(|i| (format!("k{i}-{}", text(seq + i, 3)), seq * 1000 + i))
        .collect();
    let names = (0..rng.below(8))
        .map(|i| ((i * 3 + seq) as u32, text(seq ^ i, i as usize)))
        .collect();
    Rich {
        seq,
        name: if seq % 4 == 0 {
            String::new()
        } else {
            format!("grüße 🚀 #{seq}")
        },
        text: text(seq, text_len),
        matrix,
        maybe: (seq % 3 != 0).then(|| text(seq + 1, 10)),
        number: (seq % 2 == 0).then_some(seq.wrapping_mul(0xDEAD_BEEF)),
        shapes,
        counts,
        names,
        inner: Inner {
            id: !seq,
            tags: (0..seq % 4).map(|t| format!("tag{t}")).collect(),
            shape: match seq % 3 {
                0 => None,
                1 => Some(Shape::Point(seq as i32, -1)),
                _ => Some(Shape::Empty),
            },
        },
        flag: seq % 2 == 1,
        letter: ['a', 'ß', '🚀', '\u{10FFFF}'][(seq % 4) as usize],
        bytes: (0..rng.below(300))
            .map(|b| (b as u8) ^ (seq as u8))
            .collect(),
    }
}

/// Compares a shape in the archive with the original, variant by variant.
#[track_caller]
pub fn check_shape(got: &ArchivedShape, want: &Shape, what: &str) {
    match (got, want) {
        (ArchivedShape::Empty, Shape::Empty) => {}
        (ArchivedShape::Point(a, b), Shape::Point(x, y)) => {
            assert_eq!((a.to_native(), b.to_native()), (*x, *y), "{what}: Point")
        }
        (
            ArchivedShape::Labeled { label, weights },
            Shape::Labeled {
                label: l,
                weights: w,
            },
        ) => {
            assert_eq!(label.as_str(), l, "{what}: label");
            let got: Vec<f64> = weights.iter().map(|x| x.to_native()).collect();
            assert_eq!(&got, w, "{what}: weights");
        }
        (got, want) => panic!("{what}: variant differs: got {got:?}, want {want:?}"),
    }
    // And the comparison the derive generates agrees.
    assert!(got == want, "{what}: ArchivedShape == Shape");
}

/// Compares a received archive with the original, field by field (through the archived types'
/// own accessors and comparisons, no deserialization).
#[track_caller]
pub fn check_rich(got: &ArchivedRich, want: &Rich) {
    let seq = want.seq;
    assert_eq!(got.seq, want.seq, "seq");
    assert_eq!(got.name, *want.name, "message {seq}: name");
    assert_eq!(
        got.text.len(),
        want.text.len(),
        "message {seq}: text length"
    );
    assert!(got.text == *want.text, "message {seq}: text differs");
    assert_eq!(got.matrix.len(), want.matrix.len(), "message {seq}: rows");
    for (r, (row, want_row)) in got.matrix.iter().zip(&want.matrix).enumerate() {
        let row: Vec<u32> = row.iter().map(|x| x.to_native()).collect();
        assert_eq!(&row, want_row, "message {seq}: matrix row {r}");
    }
    assert_eq!(
        got.maybe.as_ref().map(|s| s.as_str()),
        want.maybe.as_deref(),
        "message {seq}: maybe"
    );
    assert_eq!(
        got.number.as_ref().map(|n| n.to_native()),
        want.number,
        "message {seq}: number"
    );
    assert_eq!(got.shapes.len(), want.shapes.len(), "message {seq}: shapes");
    for (i, (s, w)) in got.shapes.iter().zip(&want.shapes).enumerate() {
        check_shape(s, w, &format!("message {seq}: shape {i}"));
    }
    assert_eq!(got.counts.len(), want.counts.len(), "message {seq}: counts");
    for (k, v) in &want.counts {
        assert_eq!(
            got.counts.get(k.as_str()).map(|v| v.to_native()),
            Some(*v),
            "message {seq}: counts[{k:?}]"
        );
    }
    for (k, v) in got.counts.iter() {
        assert_eq!(
            want.counts.get(k.as_str()),
            Some(&v.to_native()),
            "message {seq}: extra key {k:?}"
        );
    }
    // (rkyv's `ArchivedHashMap<ArchivedString, _> == HashMap<String, _>` does not compile: it
    // wants `String: Borrow<ArchivedString>`; the two loops above are that comparison.)
    assert_eq!(got.names.len(), want.names.len(), "message {seq}: names");
    let names: Vec<(u32, &str)> = got
        .names
        .iter()
        .map(|(k, v)| (k.to_native(), v.as_str()))
        .collect();
    let want_names: Vec<(u32, &str)> = want.names.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(names, want_names, "message {seq}: names, in order");
    assert!(got.names == want.names, "message {seq}: names ==");
    assert_eq!(got.inner.id, want.inner.id, "message {seq}: inner.id");
    let tags: Vec<&str> = got.inner.tags.iter().map(|t| t.as_str()).collect();
    assert_eq!(tags, want.inner.tags, "message {seq}: inner.tags");
    match (got.inner.shape.as_ref(), &want.inner.shape) {
        (None, None) => {}
        (Some(s), Some(w)) => check_shape(s, w, &format!("message {seq}: inner.shape")),
        (g, w) => panic!("message {seq}: inner.shape: got {g:?}, want {w:?}"),
    }
    assert!(got.inner == want.inner, "message {seq}: inner ==");
    assert_eq!(got.flag, want.flag, "message {seq}: flag");
    assert_eq!(got.letter, want.letter, "message {seq}: letter");
    assert_eq!(got.bytes.as_slice(), want.bytes, "message {seq}: bytes");
}

/// Checks a received archive against the original field by field, and its deserialized copy
/// with `==`.
#[track_caller]
pub fn check_received(got: &shmesh::channel::Received<'_, Rich>, want: &Rich) {
    check_rich(got, want);
    let owned: Rich = got
        .deserialize()
        .unwrap_or_else(|e| panic!("message {}: deserialize: {e}", want.seq));
    assert_eq!(&owned, want, "message {}: deserialized", want.seq);
}

// ---- child processes ----

// ---- segments of the pattern tests: one prefix per test, leftovers, gc ----

/// A prefix of segment names unique to a test and to this process (`p-<pid>-<test>-<n>`). Every
/// segment the test makes is named `<prefix>.<suffix>` ([`name`](Self::name)); a service's
/// reply rings (`<service>.reply.<client>`) fall under it too. So the test can list what it
/// left in `/dev/shm` ([`segments`](Self::segments)), remove what no live process uses
/// ([`gc`](Self::gc)) and check that only its live segments remain
/// ([`assert_only`](Self::assert_only)), whatever tests run beside it. On drop, removes every
/// segment under the prefix that something (a killed child, a failed test) left behind.
#[derive(Debug)]
pub struct Prefix(String);

impl Prefix {
    /// A fresh prefix for the test `test` (a short `[a-z0-9-]` label).
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Prefix(format!("p-{}-{test}-{n}", std::process::id()))
    }

    /// The prefix itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segment name `<prefix>.<suffix>`.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.0)
    }

    /// The names (without `shmesh.`) of the segments under this prefix in `/dev/shm`, sorted.
    pub fn segments(&self) -> Vec<String> {
        let head = format!("shmesh.{}.", self.0);
        let mut names: Vec<String> = fs::read_dir("/dev/shm")
            .expect("read /dev/shm")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&head))
            .map(|n| n["shmesh.".len()..].to_owned())
            .collect();
        names.sort();
        names
    }

    /// Removes every segment under this prefix that no live process uses
    /// ([`shmesh_ring::Segment::remove_unused`]), as `shmesh gc` does; returns the names
    /// removed.
    pub fn gc(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for name in self.segments() {
            match shmesh_ring::Segment::remove_unused(&name) {
                Ok(true) => removed.push(name),
                Ok(false) | Err(shmesh_ring::SegmentError::NotFound { .. }) => {}
                Err(e) => panic!("remove_unused({name}): {e}"),
            }
        }
        removed
    }

    /// Runs [`gc`](Self::gc), then asserts that exactly the segments `live` remain under this
    /// prefix. Returns what gc removed.
    ///
    /// A segment this process no longer uses can look in use for a moment: a child that
    /// another test thread is spawning shares this process's open files (and with them the
    /// liveness locks) between its fork and its exec. So gc runs again until the segments are
    /// the expected ones, for at most [`DEADLINE`].
    #[track_caller]
    pub fn assert_only(&self, live: &[&str]) -> Vec<String> {
        let mut want: Vec<String> = live.iter().map(|s| s.to_string()).collect();
        want.sort();
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut removed = Vec::new();
        loop {
            removed.extend(self.gc());
            let left = self.segments();
            if left == want {
                return removed;
            }
            if std::time::Instant::now() >= deadline {
                assert_eq!(
                    left, want,
                    "segments of the test in /dev/shm after gc (gc removed {removed:?})"
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        for name in self.segments() {
            let _ = shmesh_ring::Segment::remove(&name);
        }
    }
}

/// Polls `cond` every millisecond until it holds; fails with `what` after [`DEADLINE`].
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Stops the child with SIGSTOP and waits until the kernel reports it stopped.
pub fn sigstop(proc: &Proc) {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(proc.pid() as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    match waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
        Ok(WaitStatus::Stopped(..)) => {}
        other => proc.fail(format!("the child did not stop: {other:?}")),
    }
}

/// Resumes a child stopped by [`sigstop`].
pub fn sigcont(proc: &Proc) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    kill(Pid::from_raw(proc.pid() as i32), Signal::SIGCONT).expect("SIGCONT");
}

/// The access mode named `mode` ("validated", "untrusted", "trusted"). The trusted mode is for
/// the tests' own peers only: every sender on their segments is this test binary, sending the
/// segment's type through the typed API.
pub fn access(mode: &str) -> shmesh::channel::Access {
    match mode {
        "validated" => shmesh::channel::Access::validated(),
        "untrusted" => shmesh::channel::Access::untrusted(),
        // SAFETY: the callers' senders are this test binary (in the parent or a child
        // process), sending values of the segment's type with the typed senders of shmesh.
        "trusted" => unsafe { shmesh::channel::Access::trusted() },
        other => panic!("unknown access mode {other}"),
    }
}

/// The three access modes, by name.
pub const ACCESS_MODES: [&str; 3] = ["validated", "untrusted", "trusted"];

// ---- small messages of the pattern tests ----

/// A small message with heap data, numbered.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Tick {
    /// The sequence number.
    pub seq: u64,
    /// 0 to 60 bytes of text.
    pub text: String,
    /// 0 to 6 numbers.
    pub data: Vec<u32>,
}

/// Tick number `seq`: 0 to 60 bytes of text, 0 to 6 numbers, all derived from `seq`.
pub fn tick(seq: u64) -> Tick {
    Tick {
        seq,
        text: text(seq, (seq % 61) as usize),
        data: (0..seq % 7)
            .map(|i| (seq as u32) ^ (i as u32) << 16)
            .collect(),
    }
}

/// Checks a received tick against `tick(seq)`.
#[track_caller]
pub fn check_tick(got: &ArchivedTick, seq: u64) {
    let want = tick(seq);
    assert_eq!(got.seq.to_native(), seq, "tick seq");
    assert_eq!(got.text.as_str(), want.text, "tick {seq}: text");
    let data: Vec<u32> = got.data.iter().map(|x| x.to_native()).collect();
    assert_eq!(data, want.data, "tick {seq}: data");
}

/// A 128-byte plain message: the sender (4 bytes LE), the sequence number (8 bytes LE), then a
/// pattern of both.
pub fn frame(sender: u32, seq: u64) -> [u8; 128] {
    let mut f: [u8; 128] =
        std::array::from_fn(|i| (seq as usize * 13 + i * 7) as u8 ^ sender as u8);
    f[..4].copy_from_slice(&sender.to_le_bytes());
    f[4..12].copy_from_slice(&seq.to_le_bytes());
    f
}

/// The sender and sequence number of a frame, after checking its pattern.
#[track_caller]
pub fn check_frame(got: &[u8]) -> (u32, u64) {
    let sender = u32::from_le_bytes(got[..4].try_into().unwrap());
    let seq = u64::from_le_bytes(got[4..12].try_into().unwrap());
    assert_eq!(got, frame(sender, seq), "frame {sender}/{seq}");
    (sender, seq)
}
