//! Regions between real processes: torn-read stress with a writer and readers in separate
//! processes, and `kill -9` of the writer inside a write scope, of a reader inside a read and of
//! a reader parked in `wait_for`.
//!
//! Each test runs this test binary again as its child processes (see `common/mod.rs` and
//! `shmesh-testkit`): `child_entry` plays the role named in `SHMESH_TEST_CHILD`. Every wait has a
//! deadline, every child is killed when its test ends, every segment name is unique.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `small_region_*` | 256 bytes, 2 buffers: a writer process publishing as fast as it can (word writes, `bytes_mut`, `as_mut_slice`, `write_diff`, aborted scopes) and two reader processes checking every snapshot, and a mirror kept with `read_changes`: never a torn or backward version |
//! | `large_region_*` | 64 MiB, chunk 4096, 3 buffers: the writer rewrites random chunks (and now and then all of it) in bursts; readers check whole snapshots: every chunk's checksum, and the table of which version wrote each chunk |
//! | `a_writer_killed_inside_*` | SIGKILL inside a scope that scribbled over the region: readers still see version N exactly; the next writer is a takeover, continues at N + 1 from version N's bytes, none of the garbage |
//! | `writers_killed_at_random_*` | SIGKILL at any point of a loop of publishes and aborted scopes: the latest version is whole, and a takeover continues from it |
//! | `a_reader_killed_inside_a_read_*` | a reader killed in the middle of `read_with` on 64 MiB holds nothing: the writer publishes on, other readers read whole versions |
//! | `a_reader_killed_while_parked_*` | its parked flag stays 1: the next publish takes it (one wake for nobody), later waits work |
//!
//! The stress tests run for `SHMESH_REGION_STRESS_SECS` seconds each (3 by default) and print
//! their counts. Run: `cargo test --release -p shmesh-ring --test region_processes -- --nocapture`
//! (about 9 s, the two stress tests one after the other; about 40 s in a debug build). The 64 MiB
//! tests run one at a time: 192 MiB of `/dev/shm` (3 buffers), and about 350 MiB of copies in
//! the reader processes.
#![cfg(not(miri))]

mod common;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use common::{say, stop_flag, wait_for_parent, wait_until, Proc, ShmName, Watchdog, DEADLINE};
use shmesh_ring::region::{ChangesError, Delta, Reader, RegionMemory, Writer};
use shmesh_ring::{Segment, SegmentBuilder, SegmentKind, ShmRegion, WaitStrategy};

/// How long one test may run before the watchdog aborts the binary.
const TEST_LIMIT: Duration = Duration::from_secs(180);
/// A wait that must time out: the timeout value is irrelevant to what is checked.
const SHORT: Duration = Duration::from_millis(5);

/// How long each stress test runs: `SHMESH_REGION_STRESS_SECS` (seconds), 3 by default.
fn stress_duration() -> Duration {
    let secs = std::env::var("SHMESH_REGION_STRESS_SECS")
        .ok()
        .map(|s| {
            f64::from_str(&s).unwrap_or_else(|_| panic!("SHMESH_REGION_STRESS_SECS={s}: seconds"))
        })
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

// ---- segments ----

fn create(name: &ShmName, size: usize, buffers: usize, chunk: usize, history: usize) -> Segment {
    SegmentBuilder::new(name.as_str())
        .kind(SegmentKind::Region)
        .capacity(size as u64)
        .buffers(buffers)
        .chunk_size(chunk)
        .history(history)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

fn open(name: &str) -> Segment {
    SegmentBuilder::new(name)
        .kind(SegmentKind::Region)
        .open()
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

// ---- hashing ----

/// splitmix64's finalizer: a bijection that spreads every input bit.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A checksum of whole words, in four lanes (word `i` goes to lane `i % 4`). Each step is a
/// bijection of its lane's running value and of the word, so bytes that differ in one word
/// always give another sum.
fn checksum(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = [seed, seed ^ 1, seed ^ 2, seed ^ 3];
    let mut quads = bytes.chunks_exact(32);
    for quad in &mut quads {
        for (lane, w) in h.iter_mut().zip(quad.chunks_exact(8)) {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            *lane = (*lane ^ w).wrapping_mul(K).rotate_left(23);
        }
    }
    for (lane, w) in h.iter_mut().zip(quads.remainder().chunks_exact(8)) {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        *lane = (*lane ^ w).wrapping_mul(K).rotate_left(23);
    }
    mix(h[0] ^ mix(h[1] ^ mix(h[2] ^ mix(h[3]))))
}

/// Word `i` (little-endian) of `bytes`.
fn word(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"))
}

/// A small deterministic generator (xorshift64*), seeded per process.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(mix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---- the small region: 256 bytes ----

/// The small region: 32 words. Word 0 is the version; words 1..=30 each say which version
/// wrote them last (`tag << 32 | a hash of tag and index`); word 31 is a checksum of words
/// 0..=30, computed by the writer from its own model (so a buffer that was not carried forward
/// right fails it, as does any torn mix).
mod small {
    use super::{checksum, mix, word};

    pub const SIZE: usize = 256;
    pub const WORDS: usize = SIZE / 8;
    pub const CHUNK: usize = 64;
    pub const BUFFERS: usize = 2;
    /// The longest history: a reader descheduled for a few milliseconds while the writer
    /// publishes hundreds of thousands of versions a second can still catch up with a delta.
    pub const HISTORY: usize = 4096;
    const SEED: u64 = 0x5AA1_1E66_10C0_0001;

    pub fn tagged(tag: u64, i: usize) -> u64 {
        tag << 32 | (mix(tag << 8 ^ i as u64) & 0xFFFF_FFFF)
    }

    /// Sets the version word and the checksum of `model`.
    pub fn seal(model: &mut [u64; WORDS], v: u64) {
        model[0] = v;
        model[WORDS - 1] = checksum(SEED, &bytes(&model[..WORDS - 1]));
    }

    pub fn bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Checks that `b` is a whole version `v`.
    pub fn verify(v: u64, b: &[u8]) -> Result<(), String> {
        if b.len() != SIZE {
            return Err(format!("{} bytes, not {SIZE}", b.len()));
        }
        let head = word(b, 0);
        if head != v {
            return Err(format!("the snapshot of version {v} says version {head}"));
        }
        let sum = word(b, WORDS - 1);
        if sum != checksum(SEED, &b[..SIZE - 8]) {
            return Err(format!("version {v}: the checksum does not match (torn)"));
        }
        for i in 1..WORDS - 1 {
            let w = word(b, i);
            let tag = w >> 32;
            if w != tagged(tag, i) || tag == 0 || tag > v {
                return Err(format!("version {v}: word {i} is {w:#x}"));
            }
        }
        Ok(())
    }
}

/// How the small region's writer makes a version.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `write_at` of a few words.
    Words,
    /// `bytes_mut` over a run of words.
    Slice,
    /// `as_mut_slice`, every word.
    Full,
    /// `write_diff` of the whole new state.
    Diff,
    /// Garbage written, the scope dropped unpublished.
    Abort,
}

/// Makes the next version of the small region in `mode` (or aborts one), keeping `model` (the
/// latest version's words) up to date.
fn small_version(
    w: &mut Writer<ShmRegion>,
    model: &mut [u64; small::WORDS],
    mode: Mode,
    rng: &mut Rng,
) {
    use small::{bytes, seal, tagged, SIZE, WORDS};
    let v = w.version() + 1;
    let mut scope = w.write();
    assert_eq!(scope.version(), v);
    // The scope starts from the latest version: the carry-forward from older buffers.
    let mut now = [0u8; SIZE];
    scope.read_at(0, &mut now);
    assert_eq!(
        now[..],
        bytes(model)[..],
        "the scope of version {v} does not hold version {}",
        v - 1
    );
    let some_words = |model: &mut [u64; WORDS], rng: &mut Rng| -> Vec<usize> {
        let words: Vec<usize> = (0..1 + rng.below(4))
            .map(|_| 1 + rng.below(WORDS as u64 - 2) as usize)
            .collect();
        for &i in &words {
            model[i] = tagged(v, i);
        }
        seal(model, v);
        words
    };
    match mode {
        Mode::Words => {
            for i in some_words(model, rng) {
                scope.write_at(8 * i, &model[i].to_le_bytes());
            }
            scope.write_at(0, &model[0].to_le_bytes());
            scope.write_at(SIZE - 8, &model[WORDS - 1].to_le_bytes());
        }
        Mode::Slice => {
            let a = 1 + rng.below(WORDS as u64 - 2) as usize;
            let b = a + 1 + rng.below((WORDS - 1 - a) as u64) as usize;
            for (i, m) in model.iter_mut().enumerate().take(b).skip(a) {
                *m = tagged(v, i);
            }
            seal(model, v);
            let new = bytes(model);
            scope
                .bytes_mut(8 * a..8 * b)
                .copy_from_slice(&new[8 * a..8 * b]);
            scope.bytes_mut(0..8).copy_from_slice(&new[..8]);
            scope.write_at(SIZE - 8, &new[SIZE - 8..]);
        }
        Mode::Full => {
            for (i, m) in model.iter_mut().enumerate().take(WORDS - 1).skip(1) {
                *m = tagged(v, i);
            }
            seal(model, v);
            scope.as_mut_slice().copy_from_slice(&bytes(model));
        }
        Mode::Diff => {
            some_words(model, rng);
            scope.write_diff(0, &bytes(model));
        }
        Mode::Abort => {
            if rng.below(2) == 0 {
                scope.as_mut_slice().fill(0xEE);
            } else {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(SIZE as u64 - 16) as usize;
                    scope.write_at(at, &[0xEE; 16]);
                }
            }
            drop(scope);
            return;
        }
    }
    assert_eq!(scope.publish(), v);
}

// ---- the large region: 64 MiB ----

/// The large region: 16384 chunks of 4096 bytes. Chunk 0 holds the version (word 0) and a sum
/// over the table (word 1); chunks 1..=32 hold the table: word `c` says which version wrote
/// chunk `c` last (0 for the chunks that are not data). Each data chunk (33..) starts with the
/// version that wrote it and a checksum of its payload seeded by its index and that version,
/// then 4080 bytes of a pattern of both.
mod large {
    use super::{checksum, mix, word};

    pub const SIZE: usize = 64 << 20;
    pub const CHUNK: usize = 4096;
    pub const BUFFERS: usize = 3;
    /// Long enough that the mirror mostly catches up with deltas (2 KiB per version).
    pub const HISTORY: usize = 1024;
    pub const CHUNKS: usize = SIZE / CHUNK;
    pub const TABLE_AT: usize = CHUNK;
    pub const FIRST_DATA: usize = (TABLE_AT + CHUNKS * 8) / CHUNK + 1;

    fn seed(c: usize, tag: u64) -> u64 {
        mix((c as u64) << 40 ^ tag)
    }

    /// The table sum's term for chunk `c` written by version `tag`.
    pub fn term(c: usize, tag: u64) -> u64 {
        mix(0x7AB1E ^ (c as u64) << 44 ^ tag)
    }

    /// Writes chunk `c` as version `tag` writes it into `out` (one chunk).
    pub fn fill_chunk(out: &mut [u8], c: usize, tag: u64) {
        let seed = seed(c, tag);
        for (j, w) in out[16..].chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&mix(seed ^ j as u64).to_le_bytes());
        }
        let sum = checksum(seed, &out[16..]);
        out[..8].copy_from_slice(&tag.to_le_bytes());
        out[8..16].copy_from_slice(&sum.to_le_bytes());
    }

    /// Checks that `b` is a whole version `v`.
    pub fn verify(v: u64, b: &[u8]) -> Result<(), String> {
        if b.len() != SIZE {
            return Err(format!("{} bytes, not {SIZE}", b.len()));
        }
        let head = word(b, 0);
        if head != v {
            return Err(format!("the snapshot of version {v} says version {head}"));
        }
        let table = &b[TABLE_AT..TABLE_AT + CHUNKS * 8];
        let sum = (0..CHUNKS).fold(0u64, |s, c| s.wrapping_add(term(c, word(table, c))));
        if sum != word(b, 1) {
            return Err(format!(
                "version {v}: the table's sum does not match (torn)"
            ));
        }
        if let Some(c) = (0..FIRST_DATA).find(|&c| word(table, c) != 0) {
            return Err(format!(
                "version {v}: table entry {c} of a non-data chunk is set"
            ));
        }
        let mut newest = 0;
        for c in FIRST_DATA..CHUNKS {
            let chunk = &b[c * CHUNK..(c + 1) * CHUNK];
            let (tag, listed) = (word(chunk, 0), word(table, c));
            if tag != listed {
                return Err(format!(
                    "version {v}: chunk {c} says version {tag}, the table says {listed}"
                ));
            }
            if tag == 0 || tag > v {
                return Err(format!("version {v}: chunk {c} says version {tag}"));
            }
            if word(chunk, 1) != checksum(seed(c, tag), &chunk[16..]) {
                return Err(format!(
                    "version {v}: chunk {c} (of version {tag}) fails its checksum (torn)"
                ));
            }
            newest = newest.max(tag);
        }
        if newest != v {
            return Err(format!(
                "version {v}: no chunk is of version {v} (the newest is of {newest})"
            ));
        }
        Ok(())
    }
}

/// The writer of the large region, with its model of the table.
struct LargeWriter {
    w: Writer<ShmRegion>,
    table: Vec<u64>,
    sum: u64,
    scratch: Vec<u8>,
    table_bytes: Vec<u8>,
}

impl LargeWriter {
    fn new(w: Writer<ShmRegion>) -> Self {
        assert_eq!(w.version(), 0, "the large writer starts a new region");
        let table = vec![0; large::CHUNKS];
        let sum = (0..large::CHUNKS).fold(0u64, |s, c| s.wrapping_add(large::term(c, 0)));
        LargeWriter {
            w,
            table,
            sum,
            scratch: vec![0; large::CHUNK],
            table_bytes: vec![0; large::CHUNKS * 8],
        }
    }

    fn version(&self) -> u64 {
        self.w.version()
    }

    /// A version that rewrites every chunk through `as_mut_slice`.
    fn full(&mut self) -> u64 {
        use large::{fill_chunk, CHUNK, CHUNKS, FIRST_DATA, TABLE_AT};
        let v = self.w.version() + 1;
        let mut scope = self.w.write();
        let s = scope.as_mut_slice();
        for c in FIRST_DATA..CHUNKS {
            fill_chunk(&mut s[c * CHUNK..(c + 1) * CHUNK], c, v);
            self.table[c] = v;
        }
        self.sum = (0..CHUNKS).fold(0u64, |s, c| s.wrapping_add(large::term(c, self.table[c])));
        for (c, t) in self.table.iter().enumerate() {
            s[TABLE_AT + 8 * c..TABLE_AT + 8 * c + 8].copy_from_slice(&t.to_le_bytes());
        }
        s[..8].copy_from_slice(&v.to_le_bytes());
        s[8..16].copy_from_slice(&self.sum.to_le_bytes());
        assert_eq!(scope.publish(), v);
        v
    }

    /// A version that rewrites 1 to 24 random data chunks (sometimes in place through
    /// `bytes_mut`, sometimes with `write_at`), after checking that the scope starts from the
    /// latest version's header and table.
    fn some(&mut self, rng: &mut Rng) -> u64 {
        use large::{fill_chunk, term, CHUNK, CHUNKS, FIRST_DATA, TABLE_AT};
        let v = self.w.version() + 1;
        let mut scope = self.w.write();
        let mut head = [0u8; 16];
        scope.read_at(0, &mut head);
        assert_eq!(
            (word(&head, 0), word(&head, 1)),
            (v - 1, self.sum),
            "the scope of version {v} does not start from version {}",
            v - 1
        );
        scope.read_at(TABLE_AT, &mut self.table_bytes);
        if let Some(c) = (0..CHUNKS).find(|&c| word(&self.table_bytes, c) != self.table[c]) {
            panic!(
                "the scope of version {v}: table entry {c} is {}, version {} has {}",
                word(&self.table_bytes, c),
                v - 1,
                self.table[c]
            );
        }
        for _ in 0..1 + rng.below(24) {
            let c = FIRST_DATA + rng.below((CHUNKS - FIRST_DATA) as u64) as usize;
            if rng.below(2) == 0 {
                fill_chunk(scope.bytes_mut(c * CHUNK..(c + 1) * CHUNK), c, v);
            } else {
                fill_chunk(&mut self.scratch, c, v);
                scope.write_at(c * CHUNK, &self.scratch);
            }
            self.sum = self
                .sum
                .wrapping_sub(term(c, self.table[c]))
                .wrapping_add(term(c, v));
            self.table[c] = v;
            scope.write_at(TABLE_AT + 8 * c, &v.to_le_bytes());
        }
        scope.write_at(0, &v.to_le_bytes());
        scope.write_at(8, &self.sum.to_le_bytes());
        assert_eq!(scope.publish(), v);
        v
    }

    /// A scope that scribbles (sometimes over everything) and is dropped unpublished.
    fn abort(&mut self, rng: &mut Rng) {
        use large::{CHUNK, CHUNKS, TABLE_AT};
        let mut scope = self.w.write();
        if rng.below(8) == 0 {
            scope.as_mut_slice().fill(0xEE);
        } else {
            for _ in 0..1 + rng.below(8) {
                let c = rng.below(CHUNKS as u64) as usize;
                scope.bytes_mut(c * CHUNK..(c + 1) * CHUNK).fill(0xEE);
                scope.write_at(TABLE_AT + 8 * c, &[0xEE; 8]);
            }
            scope.write_at(0, &[0xEE; 16]);
        }
        drop(scope);
    }

    /// A burst of 3 to 12 versions back to back (enough to lap a reader's copy: a buffer is
    /// rewritten 3 versions after it was the latest), some of them full rewrites or aborted
    /// scopes.
    fn burst(&mut self, rng: &mut Rng) {
        for _ in 0..3 + rng.below(10) {
            match rng.below(100) {
                0 => {
                    self.full();
                }
                1..=8 => self.abort(rng),
                _ => {
                    self.some(rng);
                }
            }
        }
    }
}

/// The pause between two bursts of the large writer: long enough for a reader to copy 64 MiB.
/// Pacing, never asserted: readers copy out whole versions only while the writer is less than 3
/// versions ahead of them.
const QUIET: Duration = Duration::from_millis(30);

// ---- readers ----

/// Checks that bytes are a whole version of a layout ([`small::verify`], [`large::verify`]).
type Verify = fn(u64, &[u8]) -> Result<(), String>;

/// What a reader process counted.
#[derive(Debug, Default)]
struct Stats {
    /// Snapshots taken and checked.
    reads: u64,
    /// Attempts discarded because the writer lapped them (large region only).
    laps: u64,
    /// Different versions seen.
    versions: u64,
    /// Mirror updates from `read_changes`.
    deltas: u64,
    /// Mirror resyncs from a full snapshot (`TooOld`).
    resyncs: u64,
    /// Snapshots or mirror states that were not a whole version, versions that went back.
    violations: u64,
    /// The last version read.
    last: u64,
}

impl Stats {
    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.violations <= 3 {
            say("violation", what);
        }
    }
}

/// A mirror of the region kept with `read_changes`, as a bridge keeps one.
struct Mirror {
    version: u64,
    bytes: Vec<u8>,
}

impl Mirror {
    fn update(&mut self, r: &Reader<ShmRegion>, verify: Verify, stats: &mut Stats) {
        match r.read_changes(self.version) {
            Ok(delta) => {
                let (from, to) = (delta.changes.from, delta.changes.to);
                if from != self.version || to < from {
                    stats.violation(format!("mirror at {}: a delta {from}..{to}", self.version));
                    return;
                }
                if let Err(e) = apply(&mut self.bytes, r.shape().chunk_size, &delta) {
                    stats.violation(e);
                    return;
                }
                self.version = to;
                if to > from {
                    stats.deltas += 1;
                    if let Err(e) = verify(to, &self.bytes) {
                        stats.violation(format!("mirror after the delta {from}..{to}: {e}"));
                    }
                }
            }
            Err(ChangesError::TooOld { .. }) => {
                let v = match r.read_into(&mut self.bytes) {
                    Ok(v) => v,
                    Err(e) => {
                        stats.violation(format!("mirror resync: {e}"));
                        return;
                    }
                };
                if v < self.version {
                    stats.violation(format!("mirror resync: {} then {v}", self.version));
                }
                self.version = v;
                stats.resyncs += 1;
                if let Err(e) = verify(v, &self.bytes) {
                    stats.violation(format!("mirror resync: {e}"));
                }
            }
            Err(e) => stats.violation(format!("read_changes({}): {e}", self.version)),
        }
    }
}

/// Copies the chunks of `delta` into `mirror`.
fn apply(mirror: &mut [u8], chunk: usize, delta: &Delta) -> Result<(), String> {
    let mut at = 0;
    for &c in &delta.changes.chunks {
        let start = c * chunk;
        let end = (start + chunk).min(mirror.len());
        if start >= end || at + (end - start) > delta.bytes.len() {
            return Err(format!("a delta lists chunk {c} it has no bytes for"));
        }
        mirror[start..end].copy_from_slice(&delta.bytes[at..at + (end - start)]);
        at += end - start;
    }
    if at != delta.bytes.len() {
        return Err(format!(
            "a delta of {} bytes for {} bytes of chunks",
            delta.bytes.len(),
            at
        ));
    }
    Ok(())
}

/// Reads and checks snapshots until the parent closes stdin (which it does once the writer
/// ended), then reads once more: that last version must be the writer's last. With `mirror`,
/// also keeps a mirror with `read_changes` and checks it. Reports `final` and `stats`.
fn read_loop(seg: &Segment, layout: &str, mirror: bool) {
    let r = seg.region_reader().expect("a reader");
    let size = r.shape().size;
    let (verify, every): (Verify, u64) = match layout {
        "small" => (small::verify, 4),
        "large" => (large::verify, 2),
        other => panic!("unknown layout {other}"),
    };
    let stop = stop_flag();
    let mut stats = Stats::default();
    let mut buf = vec![0u8; size];
    let mut m = mirror.then(|| Mirror {
        version: 0,
        bytes: vec![0u8; size],
    });
    say("ready", r.version());
    loop {
        // Read the flag first: a read that starts after it is set starts after the writer ended.
        let stopping = stop.load(Ordering::Acquire);
        // The small region: every other read through `read_into` (which retries until it
        // copies a whole version), the others one attempt at a time, counting laps. The large
        // region: attempts only, so that the loop sees the stop flag while the writer bursts.
        let attempt = if layout == "small" && (stats.reads + stats.laps) % 2 == 0 {
            match r.read_into(&mut buf) {
                Ok(v) => Some((v, true)),
                Err(e) => {
                    stats.violation(format!("read_into: {e}"));
                    continue;
                }
            }
        } else {
            r.try_read_with(|p| p.copy_to(0, &mut buf))
        };
        let Some((v, whole)) = attempt else {
            stats.laps += 1;
            continue;
        };
        assert!(whole, "the region is {size} bytes");
        stats.reads += 1;
        if let Err(e) = verify(v, &buf) {
            stats.violation(e);
        }
        if v < stats.last {
            stats.violation(format!("version {v} after version {}", stats.last));
        }
        if v != stats.last {
            stats.versions += 1;
        }
        stats.last = v;
        if let Some(m) = &mut m {
            if stopping || stats.reads % every == 0 {
                m.update(&r, verify, &mut stats);
            }
        }
        if stopping {
            break;
        }
    }
    say("final", stats.last);
    if let Some(m) = &m {
        say("mirror", m.version);
    }
    say("stats", format!("{stats:?}"));
}

/// The counts in a child's `stats` line (`Stats { reads: 1, ... }`).
fn parse_stats(line: &str) -> HashMap<String, u64> {
    line.trim_start_matches("Stats {")
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Ends a reader (its writer has ended with version `last`) and checks what it reported: no
/// violation, reads, and `last` as its final version (and its mirror's).
fn finish_reader(reader: &mut Proc, last: u64, mirror: bool) -> HashMap<String, u64> {
    reader.close_stdin();
    reader.wait_success();
    let lines = reader.remaining_lines();
    let violations: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("violation"))
        .collect();
    if !violations.is_empty() {
        reader.fail(format!(
            "the reader saw torn or backward versions: {violations:#?}"
        ));
    }
    let value = |key: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| reader.fail(format!("no '{key}' line")))
            .to_owned()
    };
    if value("final") != last.to_string() {
        reader.fail(format!(
            "its last read is not the writer's last version {last}"
        ));
    }
    if mirror && value("mirror") != last.to_string() {
        reader.fail(format!(
            "its mirror did not reach the writer's last version {last}"
        ));
    }
    let stats = parse_stats(&value("stats"));
    if stats.get("violations") != Some(&0) || stats.get("reads").is_none_or(|&n| n == 0) {
        reader.fail(format!("stats {stats:?}"));
    }
    stats
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Some((role, a)) = common::child_role() else {
        return;
    };
    match role.as_str() {
        "small_writer" => role_small_writer(a.s(0)),
        "large_writer" => role_large_writer(a.s(0)),
        "reader" => read_loop(&open(a.s(0)), a.s(1), a.get::<u64>(2) == 1),
        "scribble_and_wait" => role_scribble_and_wait(a.s(0), a.get::<u64>(1)),
        "churn" => role_churn(a.s(0)),
        "stuck_reader" => role_stuck_reader(a.s(0)),
        "wait" => role_wait(a.s(0), a.get::<u64>(1)),
        other => panic!("unknown child role '{other}'"),
    }
}

/// Publishes small-region versions as fast as it can, in every mode, until the parent closes
/// stdin; then reports the last version and detaches.
fn role_small_writer(name: &str) {
    let seg = open(name);
    let mut w = seg.region_writer().expect("attach writer");
    let stop = stop_flag();
    let mut rng = Rng::new(u64::from(std::process::id()));
    let mut model = [0u64; small::WORDS];
    small_version(&mut w, &mut model, Mode::Full, &mut rng);
    say("ready", w.version());
    let mut counts = [0u64; 5];
    while !stop.load(Ordering::Acquire) {
        let mode = match rng.below(100) {
            0..=59 => Mode::Words,
            60..=69 => Mode::Slice,
            70..=74 => Mode::Full,
            75..=89 => Mode::Diff,
            _ => Mode::Abort,
        };
        counts[mode as usize] += 1;
        small_version(&mut w, &mut model, mode, &mut rng);
    }
    let [words, slice, full, diff, abort] = counts;
    say(
        "info",
        format!("words={words} slice={slice} full={full} diff={diff} abort={abort}"),
    );
    say("published", w.version());
    drop(w);
}

/// Publishes large-region versions in bursts until the parent closes stdin; then reports the
/// last version and detaches.
fn role_large_writer(name: &str) {
    let seg = open(name);
    let mut lw = LargeWriter::new(seg.region_writer().expect("attach writer"));
    let stop = stop_flag();
    let mut rng = Rng::new(u64::from(std::process::id()));
    lw.full();
    say("ready", lw.version());
    let mut bursts = 0u64;
    while !stop.load(Ordering::Acquire) {
        lw.burst(&mut rng);
        bursts += 1;
        thread::sleep(QUIET);
    }
    say("info", format!("bursts={bursts}"));
    say("published", lw.version());
}

/// The bytes version `v` of the kill tests writes: 16 bytes saying `v` in one of the region's
/// 16-byte slots, chosen by `v`.
fn change(v: u64, size: usize) -> (usize, [u8; 16]) {
    let at = (mix(v) % (size as u64 / 16)) as usize * 16;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&v.to_le_bytes());
    bytes[8..].copy_from_slice(&mix(!v).to_le_bytes());
    (at, bytes)
}

/// The content of version `n` of the kill tests (version 0: all zero).
fn model(size: usize, n: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    for v in 1..=n {
        let (at, data) = change(v, size);
        bytes[at..at + 16].copy_from_slice(&data);
    }
    bytes
}

/// Publishes the next version of the kill tests.
fn publish_next(w: &mut Writer<ShmRegion>) -> u64 {
    let v = w.version() + 1;
    let size = w.shape().size;
    let mut scope = w.write();
    let (at, data) = change(v, size);
    scope.write_at(at, &data);
    assert_eq!(scope.publish(), v);
    v
}

/// Publishes versions up to `n`, then opens a scope, scribbles over most of the region, says
/// so and waits (to be killed).
fn role_scribble_and_wait(name: &str, n: u64) {
    let seg = open(name);
    let mut w = seg.region_writer().expect("attach writer");
    while w.version() < n {
        publish_next(&mut w);
    }
    say("published", w.version());
    let mut scope = w.write();
    say("scribbling", scope.version());
    let len = scope.len();
    scope.bytes_mut(0..len * 3 / 4).fill(0xEE);
    scope.write_at(len - 100, &[0xDD; 100]);
    say("scribbled", "");
    wait_for_parent();
    // Only reached if the parent died without killing us: never publish the garbage.
    std::process::exit(3);
}

/// Publishes a version, then scribbles in a scope it drops, and again, until killed.
fn role_churn(name: &str) {
    let seg = open(name);
    let mut w = seg.region_writer().expect("attach writer");
    let mut rng = Rng::new(u64::from(std::process::id()));
    let start = w.version();
    say("attached", start);
    let len = w.shape().size;
    loop {
        let v = publish_next(&mut w);
        if v == start + 10 {
            say("running", v);
        }
        let mut scope = w.write();
        match rng.below(3) {
            0 => scope.as_mut_slice().fill(0xEE),
            1 => {
                let a = rng.below(len as u64) as usize;
                let b = a + rng.below((len - a) as u64 + 1) as usize;
                scope.bytes_mut(a..b).fill(0xDD);
            }
            _ => scope.write_at(rng.below(len as u64 - 16) as usize, &[0xCC; 16]),
        }
        drop(scope);
    }
}

/// Starts a read of the whole region and, inside it, says so and waits (to be killed).
fn role_stuck_reader(name: &str) {
    let seg = open(name);
    let r = seg.region_reader().expect("a reader");
    let mut half = vec![0u8; r.shape().size / 2];
    let mut said = false;
    let _ = r.read_with(|p| {
        p.copy_to(0, &mut half);
        if !said {
            said = true;
            say("inside", p.version());
            wait_for_parent();
        }
    });
    // Only reached if the parent died without killing us.
    std::process::exit(3);
}

/// Waits for version `v` with no timeout, parking on the futex at once.
fn role_wait(name: &str, v: u64) {
    let seg = open(name);
    let r = seg
        .region_reader()
        .expect("a reader")
        .with_wait(WaitStrategy::Futex { spins: 0 });
    say("waiting", v);
    match r.wait_for(v, None) {
        Ok(latest) => say("woke", latest),
        Err(e) => say("error", e),
    }
}

// ---- torn-read stress ----

/// Held by the tests that keep both CPUs of a CI machine busy, so that they do not starve each
/// other's readers (their counts, not their verdicts, depend on it).
static BUSY: Mutex<()> = Mutex::new(());

fn busy() -> MutexGuard<'static, ()> {
    BUSY.lock().unwrap_or_else(|e| e.into_inner())
}

/// One writer process and two reader processes (one of them also keeping a mirror with
/// `read_changes`) on a region made with `layout`'s shape, for [`stress_duration`].
fn stress(test: &'static str, layout: &str, seg: &Segment, name: &ShmName, writer_role: &str) {
    let mut writer = Proc::spawn(writer_role, &[name]);
    assert_eq!(writer.expect("ready"), "1");
    let mut readers: Vec<(Proc, bool)> = [false, true]
        .into_iter()
        .map(|mirror| {
            let p = Proc::spawn("reader", &[name, &layout, &u8::from(mirror)]);
            (p, mirror)
        })
        .collect();
    for (r, _) in &mut readers {
        r.expect("ready");
    }
    thread::sleep(stress_duration());
    writer.close_stdin();
    let info = writer.expect("info");
    let last: u64 = writer.expect("published").parse().expect("a version");
    writer.wait_success();
    let mut counts = Vec::new();
    for (r, mirror) in &mut readers {
        counts.push(finish_reader(r, last, *mirror));
    }
    // The region holds the last version, whole.
    let (v, bytes) = seg.region_reader().unwrap().snapshot().expect("a snapshot");
    assert_eq!(v, last);
    let verify = if layout == "small" {
        small::verify
    } else {
        large::verify
    };
    verify(v, &bytes).unwrap_or_else(|e| panic!("the last version: {e}"));
    eprintln!("{test}: the writer published {last} versions ({info})");
    for (i, c) in counts.iter().enumerate() {
        eprintln!("{test}: reader {i}: {c:?}");
    }
}

#[test]
fn small_region_readers_never_see_a_torn_version() {
    let _dog = Watchdog::new("small_region_readers_never_see_a_torn_version", TEST_LIMIT);
    let _busy = busy();
    let name = ShmName::new("rg-stress-small");
    let seg = create(
        &name,
        small::SIZE,
        small::BUFFERS,
        small::CHUNK,
        small::HISTORY,
    );
    stress(
        "small_region_readers_never_see_a_torn_version",
        "small",
        &seg,
        &name,
        "small_writer",
    );
}

#[test]
fn large_region_readers_never_see_a_torn_version() {
    let _dog = Watchdog::new("large_region_readers_never_see_a_torn_version", TEST_LIMIT);
    let _busy = busy();
    let name = ShmName::new("rg-stress-large");
    let seg = create(
        &name,
        large::SIZE,
        large::BUFFERS,
        large::CHUNK,
        large::HISTORY,
    );
    stress(
        "large_region_readers_never_see_a_torn_version",
        "large",
        &seg,
        &name,
        "large_writer",
    );
}

// ---- kill -9 ----

/// The size of the kill tests' regions.
const KILL_SIZE: usize = 64 << 10;

#[track_caller]
fn takeovers(r: &Reader<ShmRegion>) -> u64 {
    r.memory().control().takeovers.load(Ordering::Relaxed)
}

/// Takes over from a killed writer whose last version was `n`, and checks that the new writer
/// continues from version `n`'s bytes and that the next versions carry them forward.
#[track_caller]
fn take_over(seg: &Segment, n: u64, takeovers_before: u64) -> Writer<ShmRegion> {
    let r = seg.region_reader().unwrap();
    let size = r.shape().size;
    let mut w = seg
        .region_writer()
        .expect("take over from the killed writer");
    assert_eq!(w.version(), n, "the new writer continues the sequence");
    assert_eq!(takeovers(&r), takeovers_before + 1, "a takeover is counted");
    let expected = model(size, n);
    let mut scope = w.write();
    assert_eq!(scope.version(), n + 1);
    let mut now = vec![0u8; size];
    scope.read_at(0, &mut now);
    assert!(
        now == expected,
        "the new writer's first scope does not hold version {n} (garbage of the killed writer?)"
    );
    let (at, data) = change(n + 1, size);
    scope.write_at(at, &data);
    assert_eq!(scope.publish(), n + 1);
    assert!(
        r.snapshot() == Ok((n + 1, model(size, n + 1))),
        "version {}",
        n + 1
    );
    let chunk = r.shape().chunk_size;
    assert_eq!(
        r.changes_since(n).expect("changes").chunks,
        vec![at / chunk],
        "version {} changed one chunk",
        n + 1
    );
    // Every buffer comes round again, carrying everything forward.
    let buffers = r.shape().buffers as u64;
    for _ in 0..2 * buffers {
        let v = publish_next(&mut w);
        assert!(r.snapshot() == Ok((v, model(size, v))), "version {v}");
    }
    w
}

#[test]
fn a_writer_killed_inside_a_write_scope_leaves_version_n_whole() {
    let _dog = Watchdog::new(
        "a_writer_killed_inside_a_write_scope_leaves_version_n_whole",
        TEST_LIMIT,
    );
    let n = 40u64;
    for buffers in [2, 3, 5] {
        let name = ShmName::new("rg-kill-scope");
        let seg = create(&name, KILL_SIZE, buffers, 4096, 16);
        let r = seg.region_reader().unwrap();
        let expected = model(KILL_SIZE, n);
        let mut child = Proc::spawn("scribble_and_wait", &[&name, &n]);
        assert_eq!(child.expect("published"), n.to_string());
        assert_eq!(child.expect("scribbling"), (n + 1).to_string());
        child.expect("scribbled");
        assert!(
            r.snapshot() == Ok((n, expected.clone())),
            "while the writer scribbles in its scope, readers see version {n}"
        );
        child.kill();
        assert!(
            r.snapshot() == Ok((n, expected.clone())),
            "after the writer was killed, readers see version {n}"
        );
        let e = r
            .wait_for(n + 1, Some(SHORT))
            .expect_err("nobody publishes");
        assert_eq!(e.latest, n);
        assert!(!e.writer_alive, "the killed writer is not alive");
        let w = take_over(&seg, n, 0);
        assert_eq!(
            r.memory().control().publishes.load(Ordering::Relaxed),
            w.version(),
            "every version was published once"
        );
    }
}

#[test]
fn writers_killed_at_random_points_leave_the_latest_version_whole() {
    let _dog = Watchdog::new(
        "writers_killed_at_random_points_leave_the_latest_version_whole",
        TEST_LIMIT,
    );
    let mut rng = Rng::new(u64::from(std::process::id()));
    for buffers in [2, 3] {
        let name = ShmName::new("rg-kill-random");
        let seg = create(&name, KILL_SIZE, buffers, 1024, 32);
        let r = seg.region_reader().unwrap();
        let mut latest = 0;
        for round in 0..4 {
            let mut child = Proc::spawn("churn", &[&name]);
            assert_eq!(child.expect("attached"), latest.to_string());
            child.expect("running");
            thread::sleep(Duration::from_millis(rng.below(20)));
            child.kill();
            let n = r.version();
            assert!(n >= latest + 10, "round {round}: version {n}");
            let w = take_over(&seg, n, round);
            latest = w.version();
            // Dropped cleanly: the next child's attach is no takeover.
            drop(w);
        }
        assert_eq!(takeovers(&r), 4);
    }
}

#[test]
fn a_reader_killed_inside_a_read_holds_the_writer_back_in_nothing() {
    let _dog = Watchdog::new(
        "a_reader_killed_inside_a_read_holds_the_writer_back_in_nothing",
        TEST_LIMIT,
    );
    let _busy = busy();
    let name = ShmName::new("rg-kill-reader");
    let seg = create(
        &name,
        large::SIZE,
        large::BUFFERS,
        large::CHUNK,
        large::HISTORY,
    );
    let mut lw = LargeWriter::new(seg.region_writer().expect("attach writer"));
    let mut rng = Rng::new(u64::from(std::process::id()));
    lw.full();
    let mut stuck = Proc::spawn("stuck_reader", &[&name]);
    assert_eq!(stuck.expect("inside"), "1");
    let mut checker = Proc::spawn("reader", &[&name, &"large", &0]);
    checker.expect("ready");
    // The stuck reader's buffer is rewritten under it: it holds nothing the writer waits for.
    for _ in 0..10 {
        lw.burst(&mut rng);
        thread::sleep(QUIET);
    }
    let before = lw.version();
    let r = seg.region_reader().unwrap();
    assert_ne!(
        r.memory().control().buffer_version[1 % large::BUFFERS].load(Ordering::Acquire),
        1,
        "the buffer the stuck reader reads was rewritten under it"
    );
    stuck.kill();
    for _ in 0..10 {
        lw.burst(&mut rng);
        thread::sleep(QUIET);
    }
    // Many versions back to back: nothing blocks the writer.
    for _ in 0..300 {
        lw.some(&mut rng);
    }
    let last = lw.version();
    assert!(last >= before + 300);
    let stats = finish_reader(&mut checker, last, false);
    let (v, bytes) = seg.region_reader().unwrap().snapshot().expect("a snapshot");
    assert_eq!(v, last);
    large::verify(v, &bytes).unwrap_or_else(|e| panic!("the last version: {e}"));
    eprintln!("a_reader_killed_inside_a_read: {last} versions; the other reader: {stats:?}");
}

#[test]
fn a_reader_killed_while_parked_costs_the_writer_one_wake() {
    let _dog = Watchdog::new(
        "a_reader_killed_while_parked_costs_the_writer_one_wake",
        TEST_LIMIT,
    );
    let name = ShmName::new("rg-kill-parked");
    let seg = create(&name, 256, 2, 64, 4);
    let mut w = seg.region_writer().expect("attach writer");
    publish_next(&mut w);
    let r = seg.region_reader().unwrap();
    let ctl = r.memory().control();

    let mut child = Proc::spawn("wait", &[&name, &5]);
    assert_eq!(child.expect("waiting"), "5");
    wait_until("the reader parks", || {
        ctl.parked.load(Ordering::Acquire) == 1
    });
    child.kill();
    assert_eq!(
        ctl.parked.load(Ordering::Acquire),
        1,
        "the killed reader's flag stays"
    );
    // The next publish takes the flag and wakes nobody; the one after makes no wake at all.
    assert_eq!(publish_next(&mut w), 2);
    assert_eq!(
        ctl.parked.load(Ordering::Acquire),
        0,
        "the writer took the flag"
    );
    assert_eq!(publish_next(&mut w), 3);
    assert_eq!(ctl.parked.load(Ordering::Acquire), 0);

    // Later waits work: a reader in another process and one in this process.
    let mut child = Proc::spawn("wait", &[&name, &4]);
    assert_eq!(child.expect("waiting"), "4");
    let local = {
        let seg = seg.clone();
        thread::spawn(move || {
            seg.region_reader()
                .unwrap()
                .with_wait(WaitStrategy::Futex { spins: 0 })
                .wait_for(4, Some(DEADLINE))
        })
    };
    wait_until("a reader parks", || ctl.parked.load(Ordering::Acquire) == 1);
    assert_eq!(publish_next(&mut w), 4);
    assert_eq!(child.expect("woke"), "4");
    child.wait_success();
    assert_eq!(local.join().expect("the local waiter"), Ok(4));
}
