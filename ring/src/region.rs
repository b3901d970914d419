//! Regions: a named block of shared memory that one process writes and any number read, in
//! whole versions.
//!
//! # Model
//!
//! - A region has a fixed size in bytes. One **writer** (enforced by a liveness token: a second
//!   live writer is refused, a new one takes over once the old one died) changes it inside a
//!   [`WriteScope`] and publishes a new **version**. Versions are 64-bit and only go up; a new
//!   region is at version 0, all zero bytes.
//! - A **reader** copies out a snapshot of one whole published version, never a mix of two, and
//!   is told which version it got. [`Reader::wait_for`] sleeps until a version at least `v` is
//!   published, on a futex in the region, with the same Dekker handshake as the rings (see
//!   [`crate::wait`]).
//! - Readers hold nothing the writer waits for: they take no slot and no pin, so a slow or dead
//!   reader cannot hold the writer up, and the writer never blocks.
//! - **Change tracking.** Each version records which chunks (`chunk_size` bytes, 4 KiB by
//!   default) its write scope touched. [`Reader::changes_since`] gives the chunks that changed
//!   after a version, or says it is too old (take a full snapshot); [`Reader::read_changes`]
//!   copies those chunks out of one consistent version, which is what a mirror ships.
//!
//! # How: multi-buffering with a version check per buffer
//!
//! The region has `buffers` copies (3 by default, 2 to 8). Version `v` is written into buffer
//! `v % buffers`, so the latest version's buffer is never written while it is the latest:
//!
//! 1. The writer marks the target buffer [`REGION_WRITING`] in its version word, then brings
//!    it up to date with the latest version by copying only what changed since the version it
//!    holds (the exact byte spans the writer remembers, else the changed chunks from the
//!    history, else all of it), then lets the scope change it.
//! 2. Publishing writes the version's history entry, stores the buffer's version word, then
//!    `latest` (`Release`), and wakes sleeping readers if any said they sleep.
//! 3. A reader loads `latest` (`Acquire`), checks that buffer `latest % buffers` says that
//!    version, copies, and checks the word again after an `Acquire` fence (a seqlock per
//!    buffer). If the writer got `buffers - 1` versions ahead during the copy and began
//!    rewriting that buffer, the check fails and the reader copies the newest version instead.
//!
//! Costs, per version: the writer copies what changed in the last `buffers - 1` versions
//! (their byte spans, at most a few chunks for small changes) plus what the scope writes; a
//! reader copies what it reads, once, and again only if lapped. Memory: `buffers × size`
//! plus the history (`8 × (1 + ⌈chunks / 64⌉)` bytes per version). A reader that cannot finish
//! one copy while the writer publishes `buffers - 1` versions retries (a 64 MiB copy takes a
//! few milliseconds; create the region with more buffers if the writer is that fast).
//!
//! A writer killed inside a write scope leaves its target buffer marked [`REGION_WRITING`]:
//! readers never look at it (they read the latest version, which is in another buffer), and
//! the writer that takes over rebuilds it with a full copy and continues the version sequence.
//!
//! Zero-copy reading in place, with pins that the writer could reclaim from dead readers, was
//! the other design considered: it saves the reader's copy but makes the writer wait for (or
//! revoke) pinned buffers. Copying out at memory bandwidth keeps both sides wait-free.
//!
//! # Examples
//!
//! ```
//! use shmesh_ring::region;
//!
//! let mem = region::HeapRegion::new(64, 3, 64, 16)?;
//! let mut writer = region::Writer::new(mem.clone())?;
//! let reader = region::Reader::new(mem);
//!
//! let mut scope = writer.write();
//! scope.write_at(0, b"hello");
//! let v = scope.publish();
//!
//! let mut bytes = [0u8; 64];
//! assert_eq!(reader.read_into(&mut bytes)?, v);
//! assert_eq!(&bytes[..5], b"hello");
//! assert_eq!(reader.changes_since(0)?.chunks, vec![0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::error::Corruption;
use crate::layout::{RegionControl, RegionShape, REGION_WRITING};
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};
use crate::wait::{Step, WaitStrategy, Waiter};

/// The highest version a region can hold: `2^63 - 1`, far beyond any real publishing (a
/// version a nanosecond for 292 years). A larger `latest` (such as [`REGION_WRITING`]) can only
/// be another process's write: readers and a new writer refuse it, so no version arithmetic
/// can overflow.
pub const MAX_VERSION: u64 = (1 << 63) - 1;

/// The corruption of a `latest` above [`MAX_VERSION`].
fn too_high(latest: u64) -> Corruption {
    Corruption {
        what: "latest version",
        found: latest,
        expected: format!("at most {MAX_VERSION}"),
    }
}

/// Byte spans a writer remembers per version before it falls back to the chunk bitmap.
const MAX_SPANS: usize = 32;

/// Memory that holds one region: its control block, change history and buffers.
///
/// # Safety
///
/// Implementors guarantee, for as long as the value lives:
/// - [`shape`](Self::shape) never changes and was validated ([`RegionShape::new`]);
/// - [`control`](Self::control) and [`history`](Self::history) stay mapped, and the history
///   holds `shape.history × shape.entry_words` words;
/// - [`buffer`](Self::buffer)`(i)` for `i < shape.buffers` holds `shape.stride / 8` words
///   that stay mapped, and no Rust reference to those bytes exists outside this module.
pub unsafe trait RegionMemory {
    /// The region's shape (validated, a copy kept in process memory).
    fn shape(&self) -> &RegionShape;
    /// The control block.
    fn control(&self) -> &RegionControl;
    /// The change history: `history` entries of `entry_words` words.
    fn history(&self) -> &[AtomicU64];
    /// Buffer `index` as words.
    fn buffer(&self, index: usize) -> &[AtomicU64];
    /// Sleeps while `word == expected`, up to `timeout`; may return early or spuriously.
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every thread sleeping in [`futex_wait`](Self::futex_wait) on `word`.
    fn futex_wake(&self, word: &AtomicU32);
    /// Whether a writer is attached and alive now (for tools and error messages; may be a
    /// system call).
    fn writer_alive(&self) -> bool;
}

/// Copies bytes out of, into and between the buffers. Outside loom and miri the bulk copies are
/// `memcpy`s over the shared mapping: a reader's copy may race with the writer's stores, and
/// the buffer's version word, checked after an `Acquire` fence, is what discards such a copy
/// (the seqlock pattern; the bytes of another process are outside Rust's memory model anyway).
/// Under loom and miri every byte moves through relaxed atomic word accesses, so the models see
/// the race as the protocol intends it and flag any other.
mod bytes {
    use super::*;

    #[cfg(not(any(loom, miri)))]
    #[inline]
    fn base(words: &[AtomicU64]) -> *mut u8 {
        words.as_ptr() as *mut u8
    }

    /// Copies `dst.len()` bytes of `src` from byte `off` into `dst`.
    ///
    /// # Panics
    ///
    /// If the range is outside the buffer (a caller bug: offsets come from the shape).
    #[inline]
    pub(super) fn read(src: &[AtomicU64], off: usize, dst: &mut [u8]) {
        assert!(off + dst.len() <= src.len() * 8, "read outside the buffer");
        #[cfg(not(any(loom, miri)))]
        // SAFETY: the range is inside the buffer (asserted); `dst` is our own memory and
        // cannot overlap the shared mapping; the words are `UnsafeCell`-based atomics, so
        // reading them through a raw pointer is allowed. A concurrent store by the writer can
        // make the bytes torn, never unsound to copy: the caller discards them (module docs).
        unsafe {
            std::ptr::copy_nonoverlapping(base(src).add(off), dst.as_mut_ptr(), dst.len());
        }
        #[cfg(any(loom, miri))]
        for (i, b) in dst.iter_mut().enumerate() {
            let at = off + i;
            let word = src[at / 8].load(Ordering::Relaxed);
            *b = word.to_le_bytes()[at % 8];
        }
    }

    /// Copies `data` into `dst` at byte `off` (the writer only).
    #[inline]
    pub(super) fn write(dst: &[AtomicU64], off: usize, data: &[u8]) {
        assert!(
            off + data.len() <= dst.len() * 8,
            "write outside the buffer"
        );
        #[cfg(not(any(loom, miri)))]
        // SAFETY: in range (asserted); `data` is not in the shared mapping (a caller holding a
        // slice of it would hold a `WriteScope` borrow, which `write_at` takes mutably); the
        // words are `UnsafeCell`-based, so writing through the raw pointer is allowed.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), base(dst).add(off), data.len());
        }
        #[cfg(any(loom, miri))]
        {
            let mut i = 0;
            while i < data.len() {
                let at = off + i;
                let w = &dst[at / 8];
                let mut bytes = w.load(Ordering::Relaxed).to_le_bytes();
                while i < data.len() && (off + i) / 8 == at / 8 {
                    bytes[(off + i) % 8] = data[i];
                    i += 1;
                }
                w.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            }
        }
    }

    /// Copies bytes `range` of buffer `src` to the same place in `dst` (the writer only;
    /// `src` is a published buffer nobody writes).
    #[inline]
    pub(super) fn copy(src: &[AtomicU64], dst: &[AtomicU64], range: Range<usize>) {
        assert!(range.end <= src.len() * 8 && range.end <= dst.len() * 8);
        #[cfg(not(any(loom, miri)))]
        // SAFETY: in range of both (asserted); two distinct buffers (the caller passes the
        // latest version's and the target's, never the same), so no overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                base(src).add(range.start),
                base(dst).add(range.start),
                range.len(),
            );
        }
        #[cfg(any(loom, miri))]
        {
            let mut tmp = vec![0u8; range.len()];
            read(src, range.start, &mut tmp);
            write(dst, range.start, &tmp);
        }
    }

    /// A mutable view of bytes `range` of the writer's target buffer.
    ///
    /// # Safety
    ///
    /// Only the writer calls this, on the buffer it is rewriting (marked
    /// [`REGION_WRITING`]), and holds no other reference into it while the slice lives.
    #[cfg(not(any(loom, miri)))]
    #[inline]
    #[allow(clippy::mut_from_ref, clippy::needless_lifetimes)] // interior mutability, see SAFETY
    pub(super) unsafe fn slice_mut<'a>(dst: &'a [AtomicU64], range: Range<usize>) -> &'a mut [u8] {
        assert!(range.start <= range.end && range.end <= dst.len() * 8);
        // SAFETY: in range (asserted); per the contract nothing else in this process refers to
        // these bytes while the slice lives; readers in other processes only read them and
        // discard what they read (their version check fails: the word says WRITING).
        unsafe { std::slice::from_raw_parts_mut(base(dst).add(range.start), range.len()) }
    }
}

/// Why [`Reader::changes_since`] cannot list the changes: take a full snapshot instead (or,
/// for `Corrupt`, stop using the region).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChangesError {
    /// The region's state is impossible (see [`Reader::read_with`]).
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The history no longer reaches back to that version.
    #[error(
        "version {asked} is too old: the change history reaches back to version {oldest} \
         (latest {latest}); take a full snapshot"
    )]
    TooOld {
        /// The version asked about.
        asked: u64,
        /// The oldest version changes can be listed from.
        oldest: u64,
        /// The latest version.
        latest: u64,
    },
    /// The version was never published here (the region was recreated, or the version came
    /// from another region).
    #[error(
        "version {asked} was never published (latest is {latest}): the region was recreated or \
         the version is from another region; take a full snapshot"
    )]
    Ahead {
        /// The version asked about.
        asked: u64,
        /// The latest version.
        latest: u64,
    },
}

/// A region parameter is out of range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("region {what} {found} is out of range: use {allowed}")]
pub struct ShapeError {
    /// Which parameter.
    pub what: &'static str,
    /// The value given.
    pub found: u64,
    /// What is allowed.
    pub allowed: String,
}

/// [`Reader::wait_for`] timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error(
    "timed out after {waited:?} waiting for version {wanted} (latest is {latest}{}){}",
    if *.writer_alive { "" } else { ", and no writer is attached" },
    if *.writer_alive { "" } else { ": start or restart the writer" }
)]
pub struct WaitTimeout {
    /// The version waited for.
    pub wanted: u64,
    /// The latest version when the wait gave up.
    pub latest: u64,
    /// How long it waited.
    pub waited: Duration,
    /// Whether a writer was attached and alive then.
    pub writer_alive: bool,
}

/// The chunks that changed between two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The version the changes start from (exclusive).
    pub from: u64,
    /// The version they lead to (inclusive).
    pub to: u64,
    /// Indices of the chunks that changed, ascending. Chunk `i` is bytes
    /// `i × chunk_size .. min((i + 1) × chunk_size, size)`.
    pub chunks: Vec<usize>,
}

/// The changed chunks of one version, copied out by [`Reader::read_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The changes: `to` is the version the bytes belong to.
    pub changes: Changes,
    /// The bytes of each changed chunk, in order, back to back (the last chunk of the region
    /// may be shorter than `chunk_size`).
    pub bytes: Vec<u8>,
}

/// The writer of a region.
pub struct Writer<M: RegionMemory> {
    mem: M,
    /// The latest published version (ours, or the dead writer's we took over from).
    version: u64,
    /// The byte spans each of our last `buffers - 1` versions wrote (`None`: too many, use
    /// the chunk bitmap).
    recent: VecDeque<(u64, Option<Vec<Range<usize>>>)>,
    /// A span list to reuse for the next scope (so steady-state writes allocate nothing).
    spare: Vec<Range<usize>>,
    /// Scratch for merging the spans a refresh copies.
    merge: Vec<Range<usize>>,
    light: bool,
    bitmap: Vec<u64>,
}

impl<M: RegionMemory> fmt::Debug for Writer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("version", &self.version)
            .field("shape", self.mem.shape())
            .finish()
    }
}

impl<M: RegionMemory> Writer<M> {
    /// The writer end over `mem`. The caller holds the writer's liveness token (or, on the
    /// heap, is the only writer). It continues from the latest published version: after a
    /// writer died, this is the takeover, and the buffer it was rewriting is rebuilt on the
    /// first write.
    ///
    /// # Errors
    ///
    /// [`Corruption`] if the latest version's buffer does not say it holds that
    /// version (the previous writer published it, so only a foreign write explains it).
    pub fn new(mem: M) -> Result<Self, Corruption> {
        let shape = *mem.shape();
        let ctl = mem.control();
        let version = ctl.latest.load(Ordering::Acquire);
        if version > MAX_VERSION {
            return Err(too_high(version));
        }
        let current = (version % shape.buffers as u64) as usize;
        let holds = ctl.buffer_version[current].load(Ordering::Acquire);
        if holds != version {
            return Err(Corruption {
                what: "version word of the latest version's buffer",
                found: holds,
                expected: format!("{version} (the latest version)"),
            });
        }
        Ok(Writer {
            version,
            recent: VecDeque::with_capacity(shape.buffers),
            spare: Vec::new(),
            merge: Vec::new(),
            light: crate::wait::light_wakes(),
            bitmap: vec![0; shape.entry_words - 1],
            mem,
        })
    }

    /// The latest published version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The region's shape.
    pub fn shape(&self) -> &RegionShape {
        self.mem.shape()
    }

    /// The region's memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Begins the next version: a scope over a copy of the latest version's bytes. Publish it
    /// with [`WriteScope::publish`]; dropping it unpublished discards the changes.
    pub fn write(&mut self) -> WriteScope<'_, M> {
        let shape = *self.mem.shape();
        let b = shape.buffers as u64;
        let next = self.version + 1;
        let target = (next % b) as usize;
        let current = (self.version % b) as usize;
        let ctl = self.mem.control();
        let held = ctl.buffer_version[target].load(Ordering::Relaxed);
        // SYNC POINT A (pairs with the readers' fence before their second check): the
        // WRITING mark is ordered before every byte the writer changes in the buffer.
        ctl.buffer_version[target].store(REGION_WRITING, Ordering::Relaxed);
        fence(Ordering::Release);
        self.refresh(target, current, held);
        WriteScope {
            next,
            target,
            spans: std::mem::take(&mut self.spare),
            done: false,
            writer: self,
        }
    }

    /// Brings buffer `target`, which holds version `held`, up to the latest version (in
    /// buffer `current`).
    fn refresh(&mut self, target: usize, current: usize, held: u64) {
        let v = self.version;
        let shape = *self.mem.shape();
        if held == v {
            return;
        }
        let (src, dst) = (self.mem.buffer(current), self.mem.buffer(target));
        if held < v && v - held <= shape.history as u64 {
            // Our own spans of versions held+1..=v, when we remember all of them.
            let spans_of = |x: u64| {
                self.recent
                    .iter()
                    .find(|(y, _)| *y == x)
                    .and_then(|(_, s)| s.as_ref())
            };
            if (held + 1..=v).all(|x| spans_of(x).is_some()) {
                // Merge the versions' spans first: bytes two versions wrote are copied once.
                let mut merged = std::mem::take(&mut self.merge);
                merged.clear();
                merged.extend((held + 1..=v).filter_map(spans_of).flatten().cloned());
                merged.sort_unstable_by_key(|r| r.start);
                let mut at = 0;
                while at < merged.len() {
                    let mut span = merged[at].clone();
                    at += 1;
                    while at < merged.len() && merged[at].start <= span.end {
                        span.end = span.end.max(merged[at].end);
                        at += 1;
                    }
                    bytes::copy(src, dst, span);
                }
                self.merge = merged;
                return;
            }
            if union_entries(&self.mem, held, v, &mut self.bitmap) {
                for chunk in bits(&self.bitmap, shape.chunks) {
                    bytes::copy(src, dst, chunk_range(&shape, chunk));
                }
                return;
            }
        }
        bytes::copy(src, dst, 0..shape.size);
    }
}

/// ORs the history entries of versions `from + 1 ..= to` into `out`; false if one of them is
/// no longer (or was never) in the history. Entries are checked before and after reading
/// (their first word says which version they describe), so a concurrent writer's rewrite is
/// seen.
fn union_entries<M: RegionMemory>(mem: &M, from: u64, to: u64, out: &mut [u64]) -> bool {
    let shape = mem.shape();
    out.fill(0);
    if to - from >= shape.history as u64 {
        return false;
    }
    let history = mem.history();
    for v in from + 1..=to {
        let at = (v % shape.history as u64) as usize * shape.entry_words;
        let entry = &history[at..at + shape.entry_words];
        if entry[0].load(Ordering::Acquire) != v {
            return false;
        }
        for (o, w) in out.iter_mut().zip(&entry[1..]) {
            *o |= w.load(Ordering::Relaxed);
        }
        // SYNC POINT B (pairs with the writer's fence after marking the entry): if the
        // words read above include a rewrite for a later version, the tag below shows it.
        fence(Ordering::Acquire);
        if entry[0].load(Ordering::Relaxed) != v {
            return false;
        }
    }
    // Bits past the last chunk mean nothing (a foreign write): drop them.
    let tail = shape.chunks % 64;
    if tail != 0 && out.len() == shape.chunks.div_ceil(64) {
        if let Some(last) = out.last_mut() {
            *last &= (1u64 << tail) - 1;
        }
    }
    true
}

/// The indices of the set bits of `words`, below `limit`.
fn bits(words: &[u64], limit: usize) -> impl Iterator<Item = usize> + '_ {
    words.iter().enumerate().flat_map(move |(i, &w)| {
        let mut w = w;
        std::iter::from_fn(move || {
            if w == 0 {
                return None;
            }
            let bit = w.trailing_zeros() as usize;
            w &= w - 1;
            Some(i * 64 + bit)
        })
        .filter(move |&c| c < limit)
    })
}

/// The bytes of chunk `chunk`.
fn chunk_range(shape: &RegionShape, chunk: usize) -> Range<usize> {
    let start = chunk * shape.chunk_size;
    start..(start + shape.chunk_size).min(shape.size)
}

/// One version being written. See [`Writer::write`].
pub struct WriteScope<'a, M: RegionMemory> {
    writer: &'a mut Writer<M>,
    next: u64,
    target: usize,
    /// The byte spans written so far (merged when adjacent).
    spans: Vec<Range<usize>>,
    /// Published: nothing to undo on drop.
    done: bool,
}

impl<M: RegionMemory> fmt::Debug for WriteScope<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteScope")
            .field("version", &self.next)
            .field("spans", &self.spans.len())
            .finish()
    }
}

impl<M: RegionMemory> WriteScope<'_, M> {
    /// The version this scope will publish.
    pub fn version(&self) -> u64 {
        self.next
    }

    /// Bytes of the region.
    pub fn len(&self) -> usize {
        self.writer.mem.shape().size
    }

    /// Always false: a region has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn buffer(&self) -> &[AtomicU64] {
        self.writer.mem.buffer(self.target)
    }

    fn check(&self, range: &Range<usize>) {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "range {range:?} outside the {}-byte region",
            self.len()
        );
    }

    fn mark(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        if let Some(last) = self.spans.last_mut() {
            if last.end >= range.start && range.end >= last.start {
                *last = last.start.min(range.start)..last.end.max(range.end);
                return;
            }
        }
        self.spans.push(range);
    }

    /// Copies bytes `range` of the version being written (the latest version plus this
    /// scope's changes so far) into `dst`.
    ///
    /// # Panics
    ///
    /// If `range` is outside the region or `dst` has another length.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) {
        self.check(&(offset..offset + dst.len()));
        bytes::read(self.buffer(), offset, dst);
    }

    /// Writes `data` at byte `offset`.
    ///
    /// # Panics
    ///
    /// If the bytes would go past the end of the region.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) {
        let range = offset..offset + data.len();
        self.check(&range);
        bytes::write(self.buffer(), offset, data);
        self.mark(range);
    }

    /// Writes `data` at `offset`, but only the chunks whose bytes differ from what is there,
    /// and records only those as changed: for rewriting a whole value (a serialized state)
    /// of which little changes, so that a mirror ships little. Costs a comparison of the bytes.
    ///
    /// # Panics
    ///
    /// If the bytes would go past the end of the region.
    pub fn write_diff(&mut self, offset: usize, data: &[u8]) {
        let range = offset..offset + data.len();
        self.check(&range);
        let chunk = self.writer.mem.shape().chunk_size;
        let mut old = [0u8; 512];
        let mut at = offset;
        while at < range.end {
            let end = ((at / chunk + 1) * chunk).min(range.end);
            let new = &data[at - offset..end - offset];
            // Compare in pieces through a small buffer: no allocation per call.
            let differs = new.chunks(old.len()).enumerate().any(|(i, piece)| {
                let old = &mut old[..piece.len()];
                bytes::read(self.buffer(), at + i * 512, old);
                old != piece
            });
            if differs {
                bytes::write(self.buffer(), at, new);
                self.mark(at..end);
            }
            at = end;
        }
    }

    /// A mutable view of bytes `range`, all recorded as changed.
    ///
    /// # Panics
    ///
    /// If `range` is outside the region.
    #[cfg(not(any(loom, miri)))]
    pub fn bytes_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        self.check(&range);
        self.mark(range.clone());
        // SAFETY: the writer's target buffer, marked WRITING since `Writer::write`; the slice
        // borrows `self` mutably, so no other view of it exists in this process while it lives.
        unsafe { bytes::slice_mut(self.writer.mem.buffer(self.target), range) }
    }

    /// The whole version being written, mutable, all recorded as changed (every chunk ships
    /// to a mirror: prefer [`bytes_mut`](Self::bytes_mut) over the part that changes).
    #[cfg(not(any(loom, miri)))]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len();
        self.bytes_mut(0..len)
    }

    /// Publishes the version and returns it: readers see it from now on, and those sleeping
    /// in [`Reader::wait_for`] wake.
    pub fn publish(mut self) -> u64 {
        let shape = *self.writer.mem.shape();
        let next = self.next;
        let spans = std::mem::take(&mut self.spans);
        // The history entry of this version.
        let bitmap = &mut self.writer.bitmap;
        bitmap.fill(0);
        for span in &spans {
            let first = span.start / shape.chunk_size;
            let last = (span.end - 1) / shape.chunk_size;
            for c in first..=last {
                bitmap[c / 64] |= 1 << (c % 64);
            }
        }
        let mem = &self.writer.mem;
        let at = (next % shape.history as u64) as usize * shape.entry_words;
        let entry = &mem.history()[at..at + shape.entry_words];
        entry[0].store(REGION_WRITING, Ordering::Relaxed);
        // SYNC POINT B: readers that see any of the new words see the tag changed.
        fence(Ordering::Release);
        for (w, &b) in entry[1..].iter().zip(bitmap.iter()) {
            w.store(b, Ordering::Relaxed);
        }
        entry[0].store(next, Ordering::Release);
        let ctl = mem.control();
        // SYNC POINT C: the buffer's bytes and the entry are complete before either word says
        // so (pairs with the readers' Acquire loads).
        ctl.buffer_version[self.target].store(next, Ordering::Release);
        ctl.latest.store(next, Ordering::Release);
        ctl.notify.store(next as u32, Ordering::Relaxed);
        // Single writer: a plain increment, no locked instruction on the fast path.
        let published = ctl.publishes.load(Ordering::Relaxed);
        ctl.publishes
            .store(published.wrapping_add(1), Ordering::Relaxed);
        // SYNC POINT D: the parked-flag handshake (see `crate::wait`).
        crate::wait::waker_fence(self.writer.light);
        if ctl.parked.load(Ordering::Relaxed) != 0 && ctl.parked.swap(0, Ordering::Relaxed) != 0 {
            mem.futex_wake(&ctl.parked);
        }
        let w = &mut *self.writer;
        w.version = next;
        if w.recent.len() + 1 >= shape.buffers {
            if let Some((_, Some(mut old))) = w.recent.pop_front() {
                old.clear();
                w.spare = old;
            }
        }
        if spans.len() <= MAX_SPANS {
            w.recent.push_back((next, Some(spans)));
        } else {
            w.recent.push_back((next, None));
        }
        self.done = true;
        next
    }
}

impl<M: RegionMemory> Drop for WriteScope<'_, M> {
    /// Discards an unpublished scope: copies back the bytes it changed from the latest
    /// version, so the buffer holds that version again.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let w = &*self.writer;
        let shape = *w.mem.shape();
        let current = (w.version % shape.buffers as u64) as usize;
        let (src, dst) = (w.mem.buffer(current), w.mem.buffer(self.target));
        for span in &self.spans {
            bytes::copy(src, dst, span.clone());
        }
        // The buffer holds the latest version again (it was brought up to date).
        w.mem.control().buffer_version[self.target].store(w.version, Ordering::Release);
        let mut spans = std::mem::take(&mut self.spans);
        spans.clear();
        self.writer.spare = spans;
    }
}

/// A reader of a region. Readers take no slot: any number may read, and none can hold the
/// writer up.
pub struct Reader<M: RegionMemory> {
    mem: M,
    wait: WaitStrategy,
}

impl<M: RegionMemory> fmt::Debug for Reader<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("shape", self.mem.shape())
            .field("wait", &self.wait)
            .finish()
    }
}

/// A view of one version during a [`Reader::read_with`] attempt.
#[derive(Debug)]
pub struct Peek<'a> {
    buffer: &'a [AtomicU64],
    size: usize,
    version: u64,
}

impl Peek<'_> {
    /// The version this attempt reads.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Bytes of the region.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Always false: a region has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Copies bytes `offset .. offset + dst.len()` into `dst`; false (and nothing copied) if
    /// that is outside the region. The bytes may be torn: they count only if the attempt
    /// validates.
    pub fn copy_to(&self, offset: usize, dst: &mut [u8]) -> bool {
        match offset.checked_add(dst.len()) {
            Some(end) if end <= self.size => {
                bytes::read(self.buffer, offset, dst);
                true
            }
            _ => false,
        }
    }
}

impl<M: RegionMemory> Reader<M> {
    /// A reader over `mem`, waiting with [`WaitStrategy::futex`] by default.
    pub fn new(mem: M) -> Self {
        Reader {
            mem,
            wait: WaitStrategy::futex(),
        }
    }

    /// How [`wait_for`](Self::wait_for) waits.
    pub fn with_wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// The region's shape.
    pub fn shape(&self) -> &RegionShape {
        self.mem.shape()
    }

    /// The region's memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The latest published version.
    pub fn version(&self) -> u64 {
        self.mem.control().latest.load(Ordering::Acquire)
    }

    /// Runs `f` over the latest version until one run saw a whole version, and returns that
    /// version with `f`'s result. `f` may run more than once, and a run that is repeated may
    /// have seen torn bytes: it must only copy and check what it reads ([`Peek::copy_to`]
    /// never fails on torn bytes), and do nothing else that lasts.
    ///
    /// # Errors
    ///
    /// [`Corruption`] when the latest version's buffer keeps saying it holds another
    /// version while `latest` stays put: the writer never leaves that state (it rewrites a
    /// buffer only after publishing newer versions), so another process wrote it.
    pub fn read_with<R>(&self, mut f: impl FnMut(&Peek<'_>) -> R) -> Result<(u64, R), Corruption> {
        let mut stuck = Stuck::default();
        loop {
            if let Some(done) = self.attempt(&mut f) {
                return Ok(done);
            }
            stuck.check(self.mem.control(), self.mem.shape())?;
        }
    }

    /// One attempt of [`read_with`](Self::read_with): `None` if the writer lapped it.
    pub fn try_read_with<R>(&self, mut f: impl FnMut(&Peek<'_>) -> R) -> Option<(u64, R)> {
        self.attempt(&mut f)
    }

    fn attempt<R>(&self, f: &mut impl FnMut(&Peek<'_>) -> R) -> Option<(u64, R)> {
        let shape = self.mem.shape();
        let ctl = self.mem.control();
        let version = ctl.latest.load(Ordering::Acquire);
        let index = (version % shape.buffers as u64) as usize;
        let word = &ctl.buffer_version[index];
        if version > MAX_VERSION || word.load(Ordering::Acquire) != version {
            return None;
        }
        let peek = Peek {
            buffer: self.mem.buffer(index),
            size: shape.size,
            version,
        };
        let result = f(&peek);
        // SYNC POINT A: if the copy saw any store of a rewrite of this buffer, the word
        // below shows the rewrite.
        fence(Ordering::Acquire);
        (word.load(Ordering::Relaxed) == version).then_some((version, result))
    }

    /// Copies the latest version into `dst` (its first `dst.len()` bytes, at most the whole
    /// region) and returns the version.
    ///
    /// # Errors
    ///
    /// As [`read_with`](Self::read_with).
    pub fn read_into(&self, dst: &mut [u8]) -> Result<u64, Corruption> {
        let len = dst.len().min(self.mem.shape().size);
        let dst = &mut dst[..len];
        Ok(self.read_with(|p| p.copy_to(0, dst))?.0)
    }

    /// A copy of the latest version.
    ///
    /// # Errors
    ///
    /// As [`read_with`](Self::read_with).
    pub fn snapshot(&self) -> Result<(u64, Vec<u8>), Corruption> {
        let mut bytes = vec![0u8; self.mem.shape().size];
        let version = self.read_into(&mut bytes)?;
        Ok((version, bytes))
    }

    /// Waits until a version `>= version` is published and returns the latest version, or
    /// gives up after `timeout` (`None`: wait for ever).
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`], saying whether a writer is attached.
    pub fn wait_for(&self, version: u64, timeout: Option<Duration>) -> Result<u64, WaitTimeout> {
        let ctl = self.mem.control();
        let latest = ctl.latest.load(Ordering::Acquire);
        if latest >= version {
            return Ok(latest);
        }
        let started = Instant::now();
        let deadline = timeout.and_then(|t| started.checked_add(t));
        let mut waiter = Waiter::new(self.wait, deadline);
        loop {
            let latest = ctl.latest.load(Ordering::Acquire);
            if latest >= version {
                return Ok(latest);
            }
            match waiter.next() {
                Step::Retry | Step::CheckPeer => {}
                Step::TimedOut => {
                    return Err(WaitTimeout {
                        wanted: version,
                        latest,
                        waited: started.elapsed(),
                        writer_alive: self.mem.writer_alive(),
                    })
                }
                Step::Park(slice) => {
                    // Sleep on the flag itself (as the rings do): a publish that took an earlier
                    // sleeper's flag cannot leave this one asleep on a stale value.
                    ctl.parked.store(1, Ordering::Relaxed);
                    // SYNC POINT D: the sleeper's half of the handshake.
                    let heavy = crate::wait::sleeper_fence();
                    let latest = ctl.latest.load(Ordering::Acquire);
                    if latest >= version {
                        return Ok(latest);
                    }
                    let slice = if heavy {
                        slice
                    } else {
                        slice.min(crate::wait::DEGRADED_PARK_SLICE)
                    };
                    self.mem.futex_wait(&ctl.parked, 1, Some(slice));
                }
            }
        }
    }

    /// The chunks that changed after `version`, up to the latest version.
    ///
    /// # Errors
    ///
    /// [`ChangesError::TooOld`] when the history no longer covers `version`, `Ahead` when it
    /// was never published: either way, take a full snapshot.
    pub fn changes_since(&self, version: u64) -> Result<Changes, ChangesError> {
        let mut bitmap = vec![0u64; self.mem.shape().entry_words - 1];
        loop {
            let latest = self.version();
            match self.changes_between(version, latest, &mut bitmap) {
                Ok(Some(changes)) => return Ok(changes),
                Ok(None) => continue, // the writer overwrote an entry meanwhile: look again
                Err(e) => return Err(e),
            }
        }
    }

    /// The changes from `from` to `to`: `Ok(None)` if an entry was overwritten while read.
    fn changes_between(
        &self,
        from: u64,
        to: u64,
        bitmap: &mut [u64],
    ) -> Result<Option<Changes>, ChangesError> {
        let shape = self.mem.shape();
        if to > MAX_VERSION {
            return Err(too_high(to).into());
        }
        if from > to {
            return Err(ChangesError::Ahead {
                asked: from,
                latest: to,
            });
        }
        // The entry of version `to + 1 - history` may be being rewritten for version
        // `to + 1` right now: the history reliably covers one version less than its length.
        let oldest = to.saturating_sub(shape.history as u64 - 1);
        if from < oldest {
            return Err(ChangesError::TooOld {
                asked: from,
                oldest,
                latest: to,
            });
        }
        if !union_entries(&self.mem, from, to, bitmap) {
            // Either the writer is far ahead now (retry with a new latest), or an entry in
            // range never was written (a foreign write or a recreated region).
            if self.version() == to {
                return Err(ChangesError::TooOld {
                    asked: from,
                    oldest: to,
                    latest: to,
                });
            }
            return Ok(None);
        }
        Ok(Some(Changes {
            from,
            to,
            chunks: bits(bitmap, shape.chunks).collect(),
        }))
    }

    /// The chunks that changed after `version`, with their bytes, all from one version (the
    /// latest when the copy began): what a mirror ships.
    ///
    /// # Errors
    ///
    /// As [`changes_since`](Self::changes_since).
    pub fn read_changes(&self, version: u64) -> Result<Delta, ChangesError> {
        let shape = *self.mem.shape();
        let mut bitmap = vec![0u64; shape.entry_words - 1];
        let mut bytes = Vec::new();
        let mut stuck = Stuck::default();
        loop {
            let ctl = self.mem.control();
            let latest = self.version();
            let Some(changes) = self.changes_between(version, latest, &mut bitmap)? else {
                continue;
            };
            let index = (latest % shape.buffers as u64) as usize;
            let word = &ctl.buffer_version[index];
            if word.load(Ordering::Acquire) != latest {
                stuck.check(ctl, &shape)?;
                continue;
            }
            bytes.clear();
            for &chunk in &changes.chunks {
                let range = chunk_range(&shape, chunk);
                let at = bytes.len();
                bytes.resize(at + range.len(), 0);
                bytes::read(self.mem.buffer(index), range.start, &mut bytes[at..]);
            }
            // SYNC POINT A, as in `attempt`.
            fence(Ordering::Acquire);
            if word.load(Ordering::Relaxed) == latest {
                return Ok(Delta { changes, bytes });
            }
            stuck.check(ctl, &shape)?;
        }
    }
}

/// Failed read attempts in a row that saw the same `latest`, after which the region counts as
/// corrupt. A lap by the writer moves `latest` before it touches that version's buffer, so
/// legitimately this only lasts until the new `latest` is visible: nanoseconds.
const STUCK_ATTEMPTS: u32 = 1 << 16;

/// Tells a reader lapped by a fast writer (retry) from a buffer word another process wrote.
#[derive(Default)]
struct Stuck {
    latest: u64,
    attempts: u32,
}

impl Stuck {
    /// After a failed attempt: backs off a little, and fails when `latest` has not moved for
    /// [`STUCK_ATTEMPTS`] attempts.
    fn check(&mut self, ctl: &RegionControl, shape: &RegionShape) -> Result<(), Corruption> {
        let latest = ctl.latest.load(Ordering::Acquire);
        if latest > MAX_VERSION {
            return Err(too_high(latest));
        }
        if latest != self.latest || self.attempts == 0 {
            self.latest = latest;
            self.attempts = 1;
        } else {
            self.attempts += 1;
        }
        if self.attempts >= STUCK_ATTEMPTS {
            let index = (latest % shape.buffers as u64) as usize;
            return Err(Corruption {
                what: "version word of the latest version's buffer",
                found: ctl.buffer_version[index].load(Ordering::Relaxed),
                expected: format!("{latest} (the latest version)"),
            });
        }
        if self.attempts % 64 == 0 {
            crate::sync::yield_now();
        } else {
            crate::sync::spin_loop();
        }
        Ok(())
    }
}

/// A region on the heap of one process: for tests, miri and loom models. Clones share it.
#[derive(Clone)]
pub struct HeapRegion {
    inner: Arc<HeapRegionInner>,
}

struct HeapRegionInner {
    shape: RegionShape,
    control: RegionControl,
    history: Box<[AtomicU64]>,
    buffers: Box<[AtomicU64]>,
    #[cfg(loom)]
    futex: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

impl fmt::Debug for HeapRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapRegion")
            .field("shape", &self.inner.shape)
            .finish()
    }
}

impl HeapRegion {
    /// A region of `size` bytes at version 0 (all zero).
    ///
    /// # Errors
    ///
    /// [`ShapeError`]: a parameter out of range (see [`RegionShape::new`]).
    pub fn new(
        size: u64,
        buffers: usize,
        chunk_size: usize,
        history: usize,
    ) -> Result<Self, ShapeError> {
        let shape = RegionShape::new(size, buffers, chunk_size, history).map_err(
            |(what, found, allowed)| ShapeError {
                what,
                found,
                allowed,
            },
        )?;
        Ok(HeapRegion {
            inner: Arc::new(HeapRegionInner {
                control: RegionControl::new(&shape),
                history: (0..shape.history * shape.entry_words)
                    .map(|i| {
                        AtomicU64::new(if i % shape.entry_words == 0 {
                            REGION_WRITING
                        } else {
                            0
                        })
                    })
                    .collect(),
                buffers: (0..shape.buffers * shape.stride / 8)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                #[cfg(loom)]
                futex: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
                shape,
            }),
        })
    }
}

// SAFETY: everything lives in the `Arc`, allocated at the validated shape's sizes.
unsafe impl RegionMemory for HeapRegion {
    fn shape(&self) -> &RegionShape {
        &self.inner.shape
    }

    fn control(&self) -> &RegionControl {
        &self.inner.control
    }

    fn history(&self) -> &[AtomicU64] {
        &self.inner.history
    }

    fn buffer(&self, index: usize) -> &[AtomicU64] {
        let words = self.inner.shape.stride / 8;
        &self.inner.buffers[index * words..(index + 1) * words]
    }

    #[cfg(not(loom))]
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        crate::wait::futex_wait(word, expected, timeout, false);
    }

    #[cfg(not(loom))]
    fn futex_wake(&self, word: &AtomicU32) {
        crate::wait::futex_wake(word, false);
    }

    #[cfg(loom)]
    fn futex_wait(&self, word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
        let (lock, cvar) = &self.inner.futex;
        let guard = lock.lock().unwrap();
        if word.load(Ordering::SeqCst) == expected {
            drop(cvar.wait(guard).unwrap());
        }
    }

    #[cfg(loom)]
    fn futex_wake(&self, _word: &AtomicU32) {
        let (lock, cvar) = &self.inner.futex;
        drop(lock.lock().unwrap());
        cvar.notify_all();
    }

    fn writer_alive(&self) -> bool {
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn region(size: u64, buffers: usize, chunk: usize) -> (Writer<HeapRegion>, Reader<HeapRegion>) {
        let mem = HeapRegion::new(size, buffers, chunk, 8).unwrap();
        (Writer::new(mem.clone()).unwrap(), Reader::new(mem))
    }

    #[test]
    fn a_new_region_is_version_zero_and_all_zero() {
        let (w, r) = region(100, 3, 64);
        assert_eq!(w.version(), 0);
        assert_eq!(r.snapshot().unwrap(), (0, vec![0; 100]));
        assert_eq!(r.changes_since(0).unwrap().chunks, Vec::<usize>::new());
    }

    #[test]
    fn each_version_carries_the_previous_one_forward() {
        let (mut w, r) = region(300, 2, 64);
        let mut model = vec![0u8; 300];
        for v in 1..=20u64 {
            let mut s = w.write();
            let at = (v as usize * 37) % 290;
            s.write_at(at, &[v as u8; 10]);
            model[at..at + 10].fill(v as u8);
            assert_eq!(s.publish(), v);
            assert_eq!(r.snapshot().unwrap(), (v, model.clone()));
        }
    }

    #[test]
    fn an_aborted_scope_leaves_nothing_behind() {
        let (mut w, r) = region(256, 2, 64);
        let mut s = w.write();
        s.write_at(0, b"kept");
        s.publish();
        let mut s = w.write();
        s.write_at(100, b"dropped");
        s.write_at(0, b"gone");
        drop(s);
        assert_eq!(w.version(), 1);
        let mut s = w.write();
        let mut four = [0u8; 4];
        s.read_at(0, &mut four);
        assert_eq!(&four, b"kept");
        s.write_at(200, b"x");
        assert_eq!(s.publish(), 2);
        let (v, bytes) = r.snapshot().unwrap();
        assert_eq!(v, 2);
        assert_eq!(&bytes[0..4], b"kept");
        assert_eq!(&bytes[100..107], &[0; 7]);
        assert_eq!(bytes[200], b'x');
        assert_eq!(r.changes_since(0).unwrap().chunks, vec![0, 3]);
    }

    #[test]
    fn changes_are_listed_by_chunk_and_too_old_or_ahead_is_said() {
        let (mut w, r) = region(1000, 3, 64);
        for v in 1..=20u64 {
            let mut s = w.write();
            s.write_at((v as usize % 10) * 64 + 63, &[1, 2]); // straddles two chunks
            s.publish();
        }
        // history 8: reliably 7 versions back.
        assert!(matches!(
            r.changes_since(12),
            Err(ChangesError::TooOld {
                oldest: 13,
                latest: 20,
                ..
            })
        ));
        let c = r.changes_since(18).unwrap();
        assert_eq!((c.from, c.to), (18, 20));
        assert_eq!(c.chunks, vec![0, 1, 9, 10]);
        assert!(matches!(
            r.changes_since(21),
            Err(ChangesError::Ahead { .. })
        ));
        let d = r.read_changes(19).unwrap();
        assert_eq!(d.changes.chunks, vec![0, 1]);
        assert_eq!(d.bytes.len(), 128);
        assert_eq!(&d.bytes[63..65], &[1, 2]);
    }

    #[test]
    fn write_diff_records_only_chunks_that_differ() {
        let (mut w, r) = region(512, 2, 64);
        let mut state = vec![7u8; 512];
        let mut s = w.write();
        s.write_diff(0, &state);
        s.publish();
        state[130] = 9;
        let mut s = w.write();
        s.write_diff(0, &state);
        s.publish();
        assert_eq!(r.changes_since(1).unwrap().chunks, vec![2]);
        assert_eq!(r.snapshot().unwrap().1, state);
    }

    #[test]
    fn a_lapped_attempt_is_refused() {
        let (mut w, r) = region(64, 2, 64);
        let attempt = r.try_read_with(|p| {
            // The writer publishes two versions while this copy runs: buffer 0 is rewritten.
            let mut s = w.write();
            s.write_at(0, &[1]);
            s.publish();
            let mut s = w.write();
            s.write_at(0, &[2]);
            s.publish();
            let mut b = [0u8; 1];
            p.copy_to(0, &mut b);
            b[0]
        });
        assert_eq!(attempt, None);
        assert_eq!(r.read_with(|p| p.version()).unwrap().0, 2);
    }

    #[test]
    #[cfg_attr(miri, ignore = "65536 attempts are slow under miri")]
    fn a_buffer_word_that_never_matches_is_corruption_not_a_hang() {
        let (mut w, r) = region(64, 2, 64);
        w.write().publish();
        // Another process says the latest version's buffer holds something else, for good.
        r.memory().control().buffer_version[1].store(7, Ordering::Relaxed);
        let e = r.read_into(&mut [0u8; 64]).unwrap_err();
        assert_eq!(e.found, 7);
        assert!(matches!(r.read_changes(0), Err(ChangesError::Corrupt(_))));
        assert!(r.try_read_with(|_| ()).is_none());
    }

    #[test]
    fn wait_for_returns_at_once_or_times_out_saying_so() {
        let (mut w, r) = region(64, 2, 64);
        w.write().publish();
        assert_eq!(r.wait_for(1, Some(Duration::ZERO)), Ok(1));
        let e = r.wait_for(2, Some(Duration::from_millis(30))).unwrap_err();
        assert_eq!((e.wanted, e.latest), (2, 1));
        assert!(e.waited >= Duration::from_millis(30));
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri: real sleeps are slow")]
    fn wait_for_wakes_when_the_writer_publishes() {
        let (mut w, r) = region(64, 2, 64);
        let r = r.with_wait(WaitStrategy::Futex { spins: 0 });
        let t = std::thread::spawn(move || r.wait_for(3, Some(Duration::from_secs(10))));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            w.write().publish();
        }
        assert_eq!(t.join().unwrap(), Ok(3));
    }
}
