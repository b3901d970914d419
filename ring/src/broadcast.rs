//! The one-writer, many-reader broadcast byte ring.
//!
//! One [`Writer`] publishes records; any number of [`Reader`]s (up to the ring's reader slots)
//! each read every record from their own cursor, joining and leaving at any time. What happens
//! to a reader that falls a whole ring behind is the ring's [`BroadcastPolicy`], chosen at
//! creation:
//! - [`BroadcastPolicy::Block`]: the writer waits for the slowest *live* reader (a reader whose
//!   process died is dropped from the set). Readers read records in place, zero copy.
//! - [`BroadcastPolicy::Lap`]: the writer never waits. A reader that was lapped gets
//!   [`TryReadError::Lapped`] with the exact number of records it lost, then resumes at the
//!   oldest record still intact. Readers copy each record into a buffer of their own (a record
//!   may be overwritten while it is read), then check it was not.
//!
//! Where it comes from: the record format, claim/commit/abort and the fast paths are those of
//! [`crate::spsc`] (Aeron's `aeron_rb.h`): a reader polls the record header at its cursor, the
//! writer zeroes the header after a record before publishing it, and caches the readers'
//! minimum cursor, rescanning only when its cached limit is short (Aeron's
//! `head_cache_position`). The lap check is a seqlock (Lamport; Linux `seqlock_t`) whose
//! sequence is the writer's *intent*, the end of the region it may be overwriting: the
//! technique of Aeron's broadcast buffer (`aeron_broadcast_receiver.c`, `tail_intent`). The
//! joining-reader handshake is a Dekker-style store/fence/load pair.
//!
//! # Shared state
//!
//! - `control().tail`: the writer's tail, for tools and a writer taking over.
//! - `control().consumer_parked`: the futex word all readers park on, an *eventcount*: bit 0
//!   says "a reader sleeps", the bits above count the writer's wakes. A reader about to sleep
//!   sets bit 0 (`fetch_or`) and sleeps on the exact value it made; the writer, when it sees bit
//!   0, adds 1 (clearing it and moving to the next epoch) and wakes all. A flag that readers
//!   set and only the writer clears is not enough: a reader that re-sets it after the writer's
//!   last wake would let another reader, which announced itself before that wake, sleep on
//!   the stale 1 (loom found this). With the epoch, that reader's futex compare fails.
//! - `control().producer_parked`: the word the writer parks on (Block, ring full), an
//!   eventcount like the readers' (below); readers wake it after storing their cursor, and
//!   since several may do so at once, the one whose compare-and-swap moves the epoch on makes
//!   the wake call.
//! - [`BroadcastControl`](crate::layout::BroadcastControl): `tail_intent` (Lap), `limit` (Block,
//!   never decreases), `published` (records published so far), `start`.
//! - The history table (`RingMemory::history`, `H` entries): entry `j % H` holds the position
//!   where record number `j` starts (a padding record before it included), stored when record
//!   `j - 1` is published. So entries `published - H + 1 ..= published` are the starts of the
//!   last `H - 1` records and of the next one. Records are numbered from 0 by the writer;
//!   padding is not a record.
//! - Reader slots (2..): each reader's `cursor` (the start of the next record it will read,
//!   stored with `Release` when it releases a record) and counters.
//!
//! # The history table and record numbers
//!
//! A joiner reads `published` (`n1`), an entry `j <= n1`, then `published` again (`n2`). Per
//! record the writer stores the entry (`Release`) and then `published` (`Release`): the store
//! that overwrites entry `j` (with record `j + H`'s start) comes after the store of
//! `published = j + H - 1`. So a reader that loaded the entry with `Acquire` and then sees
//! `n2 - j <= H - 2` has the start of record `j` itself (SYNC POINT E). The oldest entry is
//! always the next one overwritten, and a joiner needs slack against a fast writer: the table
//! has [`HISTORY_SLACK`] (8) entries more than the records a late joiner may ask for
//! ([`table_len`]); Lap rings have at least [`LAP_MIN_TABLE`] entries, the index a lapped
//! reader resumes from.
//!
//! # Block: the writer's limit and joining readers
//!
//! The writer writes only below its *usable limit* `U`, and keeps the invariant
//! **every joined live reader's cursor is at least `U - capacity`**: it never overwrites what
//! a reader has not read. `U = tail + capacity - max(how far each live reader is behind, how
//! far the history floor is behind)`, where the history floor (the start of the last `k`
//! records, `k` the history length) is clamped so that it never keeps the writer from writing
//! (history records are kept while they fit; the writer cannot wait for itself).
//!
//! A new reader must never start where the writer may already be writing (SYNC POINT D):
//! - writer, raising its limit to `U`: stores `limit = U` (the shared `limit` never
//!   decreases), `fence(SeqCst)`, loads every attached reader's state, attach count and cursor
//!   again, and uses the minimum of `U` and what that second scan allows;
//! - joining reader: stores its cursor `s` (its slot is already marked attached),
//!   `fence(SeqCst)`, loads `limit` and checks `s >= limit - capacity`; if not, it moves to a
//!   younger record and tries again.
//!
//! The two fences are ordered one way or the other. If the reader's comes first, the writer's
//! second scan sees its cursor, and `U` respects it. If the writer's comes first, the reader
//! sees a `limit` at least `U` and starts no older than `U - capacity`. A raise whose fence
//! came before the reader's is seen by the reader the same way; one after it scans the
//! reader's cursor. When the writer does not raise the shared `limit` (its new `U` is at most
//! the stored one) no fence is needed: every reader that joined after the last fence checked
//! itself against a `limit >= U`, and every earlier one is in the scan.
//!
//! A reader whose slot says attached but whose liveness token is free died: the writer drops
//! it from the set, remembering `(slot, attach count)` so as not to ask the kernel again; a
//! new reader in that slot has a new attach count. The writer asks tokens only when it is
//! short of space because of those readers, never on its fast path. With no live reader the
//! writer just writes: records beyond the history are lost to nobody, and a Block writer never
//! reports `PeerGone`.
//!
//! # Lap: the intent seqlock
//!
//! - Writer, before it writes anything of a claim (claimed mark, padding, payload, the zeroed
//!   header after the record): `tail_intent = end of the region` (`Release`, never decreasing)
//!   then `fence(Release)` (SYNC POINT F); then it writes and publishes as under Block.
//! - Reader: loads the header at its cursor `c` (`Acquire`), copies the payload into its own
//!   16-byte aligned buffer (atomic 8-byte loads), `fence(Acquire)`, loads `tail_intent`. If
//!   `tail_intent - c > capacity`, the writer may have written over position `c` (it announced
//!   writes at positions `>= c + capacity`), so the copy is discarded and the reader is lapped.
//!   Otherwise no byte it read was written for a later lap: any such write came after the
//!   writer announced an intent beyond `c + capacity`, and the reader's fence makes that
//!   announcement visible to its load.
//!
//! A lapped reader reloads `tail_intent` (`Acquire`) and `published`, and finds in the history
//! table (binary search) the oldest indexed record `j` whose start is still intact (`>=
//! tail_intent - capacity`): it loses `j - own number` records, resumes there and reports
//! them. A record counts as intact by its start (a padding record before it included), the
//! same rule for the check and for the count, so the count is exact.
//!
//! The payload copy races with the writer by design, as every seqlock does: in one process
//! (heap rings) it is a data race by the letter of the Rust memory model (the loads are atomic,
//! the writer's stores are not), the caveat of crossbeam's `SeqLock`; between processes, the
//! bytes are simply memory another process writes.
//!
//! Everything read from shared memory is checked before use: record lengths, cursors,
//! positions from the history table, `limit` and `tail_intent`. A peer that scribbles on the
//! ring causes a [`Corruption`] error or junk bytes from inside the ring, never an access
//! outside it, a panic or an endless loop.
//!
//! # Examples
//!
//! ```
//! use shmesh_ring::{broadcast::{self, Start}, BroadcastPolicy};
//!
//! let (mut tx, readers) = broadcast::channel(4096, 4, BroadcastPolicy::Block, 0)?;
//! let mut a = readers.join(Start::Latest)?;
//! let mut b = readers.join(Start::Latest)?;
//! let mut grant = tx.try_claim(5)?;
//! grant.copy_from_slice(b"hello");
//! grant.commit(5);
//! assert_eq!(&*a.try_read()?, b"hello");
//! assert_eq!(&*b.try_read()?, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::counters::Counters;
use crate::error::{AttachError, ClaimError, Corruption, TryClaimError};
use crate::layout::{
    align_record, MAX_HISTORY, MAX_SLOTS, PADDING, RECORD_ALIGN, RECORD_HEADER, SLOT_CLOSED,
    SLOT_NEVER,
};
use crate::memory::{BroadcastPolicy, HeapMemory, PeerState, RingMemory, Track};
use crate::spsc::{committed_footprint, decode, encode, park_slice};
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};
use crate::wait::{light_wakes, sleeper_fence, waker_fence, Step, WaitStrategy, Waiter};

/// History table entries beyond the records a late joiner may ask for: the oldest entry is
/// always the next one the writer overwrites, and the rest give a reader slack against a
/// writer that publishes while it reads the table (see the module docs).
pub const HISTORY_SLACK: usize = 8;
/// Fewest history table entries of a [`BroadcastPolicy::Lap`] ring: the index a lapped reader
/// resumes from (2 KiB).
pub const LAP_MIN_TABLE: usize = 256;
/// Most records a late joiner may ask for: [`MAX_HISTORY`] less the slack.
pub const MAX_HISTORY_RECORDS: usize = MAX_HISTORY - HISTORY_SLACK;
/// Most reader slots a ring may have.
pub const MAX_READERS: usize = MAX_SLOTS - 2;
/// How many times a join or a lapped reader's resume retries against a racing writer before
/// the shared state is declared impossible.
const ATTEMPTS: u32 = 1000;
/// How many empty `try_read` calls pass between two checks of the writer's liveness token.
const TRY_PEER_CHECK_EVERY: u32 = 1024;
/// Bytes the writer keeps free after its last record: the next header slot, which it zeroes.
const NEXT_SLOT: u64 = RECORD_ALIGN;
/// The writer's endpoint slot.
const WRITER_SLOT: usize = 0;
/// The first reader slot.
const FIRST_READER_SLOT: usize = 2;

/// The length of the history table of a ring with `policy` whose late joiners may ask for the
/// last `records` records (clamped to [`MAX_HISTORY_RECORDS`]): `records + 8`, and at least
/// [`LAP_MIN_TABLE`] under [`BroadcastPolicy::Lap`].
///
/// # Examples
///
/// ```
/// use shmesh_ring::{broadcast::table_len, BroadcastPolicy};
///
/// assert_eq!(table_len(BroadcastPolicy::Block, 0), 8);
/// assert_eq!(table_len(BroadcastPolicy::Block, 100), 108);
/// assert_eq!(table_len(BroadcastPolicy::Lap, 0), 256);
/// ```
pub const fn table_len(policy: BroadcastPolicy, records: usize) -> usize {
    let records = if records < MAX_HISTORY_RECORDS {
        records
    } else {
        MAX_HISTORY_RECORDS
    };
    let len = records + HISTORY_SLACK;
    match policy {
        BroadcastPolicy::Lap if len < LAP_MIN_TABLE => LAP_MIN_TABLE,
        _ => len,
    }
}

/// How many of the last records a late joiner may ask for, with a history table of `table`
/// entries: `table - 8` (see [`table_len`]).
pub const fn history_records(table: usize) -> usize {
    table.saturating_sub(HISTORY_SLACK)
}

/// Where a new reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// At the next record the writer publishes.
    #[default]
    Latest,
    /// At the last `k` records already published (fewer if fewer were published; `k` is
    /// clamped to the ring's history length). Under `Block` the writer keeps them as long as
    /// they fit in the ring beside the record it writes; under `Lap` a record already
    /// overwritten shows up as [`TryReadError::Lapped`] on the first read.
    History(usize),
}

/// Why [`Reader::try_read`] returned no record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TryReadError {
    /// No record is published now; try again later.
    #[error("ring empty")]
    Empty,
    /// (`Lap` rings.) The writer overwrote records this reader had not read. The reader now
    /// stands at the oldest record still intact; the next read returns it.
    #[error(
        "lapped: the writer overwrote {lost} records this reader had not read; it resumes at \
         the oldest record still intact (read faster, or use a larger ring)"
    )]
    Lapped {
        /// How many records were lost.
        lost: u64,
    },
    /// The writer is gone (detached or its process died) and every record it published was
    /// read.
    #[error(
        "writer gone: it detached or its process died, and every record it published was read"
    )]
    PeerGone,
    /// The ring's shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Why a blocking [`Reader::read`] or [`Reader::read_timeout`] returned no record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// The timeout passed before a record was published.
    #[error("timed out waiting for a record")]
    Timeout,
    /// As [`TryReadError::Lapped`].
    #[error(
        "lapped: the writer overwrote {lost} records this reader had not read; it resumes at \
         the oldest record still intact (read faster, or use a larger ring)"
    )]
    Lapped {
        /// How many records were lost.
        lost: u64,
    },
    /// As [`TryReadError::PeerGone`].
    #[error(
        "writer gone: it detached or its process died, and every record it published was read"
    )]
    PeerGone,
    /// The ring's shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

impl From<TryReadError> for ReadError {
    fn from(e: TryReadError) -> Self {
        match e {
            TryReadError::Lapped { lost } => ReadError::Lapped { lost },
            TryReadError::PeerGone => ReadError::PeerGone,
            TryReadError::Corrupt(c) => ReadError::Corrupt(c),
            TryReadError::Empty => ReadError::Timeout,
        }
    }
}

/// Makes a broadcast ring of `capacity` bytes on the heap with `readers` reader slots, the
/// slow-reader `policy` and a history of `history` records for late joiners (clamped to
/// [`MAX_HISTORY_RECORDS`]); returns the writer and the handle that makes readers.
///
/// # Errors
///
/// [`AttachError::Capacity`] if `capacity` is not a power of two in
/// `[MIN_CAPACITY, MAX_CAPACITY]` ([`crate::spsc::check_capacity`]).
///
/// # Examples
///
/// ```
/// use shmesh_ring::{broadcast::{self, Start}, BroadcastPolicy};
///
/// let (mut tx, readers) = broadcast::channel(1 << 12, 2, BroadcastPolicy::Lap, 4)?;
/// for word in [&b"a"[..], b"b", b"c"] {
///     let mut g = tx.try_claim(1)?;
///     g.copy_from_slice(word);
///     g.commit(1);
/// }
/// let mut late = readers.join(Start::History(2))?;
/// assert_eq!(&*late.try_read()?, b"b");
/// assert_eq!(&*late.try_read()?, b"c");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn channel(
    capacity: u64,
    readers: usize,
    policy: BroadcastPolicy,
    history: usize,
) -> Result<(Writer<HeapMemory>, Readers), AttachError> {
    channel_at(capacity, readers, policy, history, 0)
}

/// Like [`channel`], with the ring starting at position `start` (a multiple of 16), for tests of
/// 64-bit position wrap-around.
///
/// # Errors
///
/// As [`channel`], and [`AttachError::StartPosition`] if `start % 16 != 0`.
pub fn channel_at(
    capacity: u64,
    readers: usize,
    policy: BroadcastPolicy,
    history: usize,
    start: u64,
) -> Result<(Writer<HeapMemory>, Readers), AttachError> {
    crate::spsc::check_capacity(capacity)?;
    if start % RECORD_ALIGN != 0 {
        return Err(AttachError::StartPosition(start));
    }
    let readers = readers.min(MAX_READERS);
    let mem = HeapMemory::with_slots(
        capacity,
        start,
        FIRST_READER_SLOT + readers,
        table_len(policy, history),
    );
    mem.attach(WRITER_SLOT);
    let mirror = Mirror {
        #[cfg(loom)]
        words: Some(std::sync::Arc::new(
            (0..capacity / 8).map(|_| AtomicU64::new(0)).collect(),
        )),
    };
    let mut writer = Writer::new(mem.clone(), policy)?;
    writer.mirror = mirror.clone();
    Ok((
        writer,
        Readers {
            mem,
            policy,
            mirror,
        },
    ))
}

/// Makes readers of a heap broadcast ring ([`channel`]). Cheap to clone; `Send` and `Sync`, so
/// threads can join whenever they like.
#[derive(Clone)]
pub struct Readers {
    mem: HeapMemory,
    policy: BroadcastPolicy,
    mirror: Mirror,
}

impl Readers {
    /// A new reader starting at `start`, in the first free reader slot.
    ///
    /// # Errors
    ///
    /// [`AttachError::NoFreeSlot`] when every reader slot is taken, `Corrupt` when the ring's
    /// shared state is impossible.
    pub fn join(&self, start: Start) -> Result<Reader<HeapMemory>, AttachError> {
        let slots = self.mem.slot_count();
        let Some(slot) = self.mem.attach_free(FIRST_READER_SLOT..slots) else {
            return Err(AttachError::NoFreeSlot {
                name: "(heap)".to_owned(),
                what: "reader",
                slots: slots - FIRST_READER_SLOT,
            });
        };
        Reader::new(
            self.mem.clone(),
            slot,
            self.policy,
            start,
            self.mirror.clone(),
        )
    }

    /// The memory of the ring (for tests: [`HeapMemory::kill`] a reader's slot).
    pub fn memory(&self) -> &HeapMemory {
        &self.mem
    }

    /// The slow-reader policy.
    pub fn policy(&self) -> BroadcastPolicy {
        self.policy
    }
}

impl fmt::Debug for Readers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readers")
            .field("capacity", &self.mem.capacity())
            .field("policy", &self.policy)
            .finish()
    }
}

/// Under loom, Lap payloads are mirrored into model-checked atomic words, so that loom sees
/// the seqlock's races (the real data area is plain memory, invisible to it).
#[derive(Clone, Default)]
pub(crate) struct Mirror {
    #[cfg(loom)]
    words: Option<std::sync::Arc<Vec<AtomicU64>>>,
}

/// The header word of the record at position `pos`.
#[inline]
fn header<M: RingMemory>(mem: &M, pos: u64) -> &AtomicU64 {
    let off = pos & (mem.capacity() - 1) & !(RECORD_ALIGN - 1);
    // SAFETY: `off` is masked below the capacity (a power of two) and rounded down to a
    // multiple of 16, which is the contract of `RingMemory::header`.
    unsafe { mem.header(off) }
}

/// `Err(Corruption)` unless `pos` is a multiple of 16.
fn check_aligned(pos: u64, what: &'static str) -> Result<(), Corruption> {
    if pos % RECORD_ALIGN == 0 {
        Ok(())
    } else {
        Err(Corruption {
            what,
            found: pos,
            expected: format!("a multiple of {RECORD_ALIGN}"),
        })
    }
}

/// Checks the history table of a broadcast ring.
fn check_table<M: RingMemory>(mem: &M) -> Result<u64, Corruption> {
    let table = mem.history().len();
    if table < HISTORY_SLACK {
        return Err(Corruption {
            what: "broadcast history table length",
            found: table as u64,
            expected: format!("at least {HISTORY_SLACK}"),
        });
    }
    Ok(table as u64)
}

/// Wakes the writer if it announced it sleeps on the eventcount `word` (SYNC POINT C, waker
/// side: the caller has just stored what the writer waits for). See `wake_readers`.
#[inline]
fn wake_if_parked<M: RingMemory>(mem: &M, word: &AtomicU32, light: bool) {
    // SYNC POINT C: pairs with `sleeper_fence` in the sleeper's park.
    waker_fence(light);
    let seen = word.load(Ordering::Relaxed);
    // Several readers may wake the writer at once: one of them moves the epoch on.
    if seen & 1 != 0
        && word
            .compare_exchange(
                seen,
                seen.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    {
        mem.futex_wake(word);
    }
}

/// Wakes the readers if one announced it sleeps (SYNC POINT C, waker side, on the readers'
/// eventcount: the caller has just stored what they wait for).
#[inline]
fn wake_readers<M: RingMemory>(mem: &M, light: bool) {
    let word = &mem.control().consumer_parked.0;
    // SYNC POINT C: pairs with `sleeper_fence` in a reader's park.
    waker_fence(light);
    if word.load(Ordering::Relaxed) & 1 != 0 {
        // Only the writer clears bit 0, so it is still set: next epoch, nobody announced.
        word.fetch_add(1, Ordering::AcqRel);
        mem.futex_wake(word);
    }
}

/// The start of record `j` as the history table holds it (SYNC POINT E: `Acquire`, pairs with
/// the writer's `Release` store of the entry).
#[inline]
fn entry<M: RingMemory>(mem: &M, table: u64, j: u64) -> u64 {
    mem.history()[(j % table) as usize].load(Ordering::Acquire)
}

/// The first record number in `lo..=hi` whose start (from the history table) satisfies `ok`,
/// which must hold for every record after one it holds for; `hi` if none does before it.
fn first_where<M: RingMemory>(
    mem: &M,
    table: u64,
    mut lo: u64,
    mut hi: u64,
    ok: impl Fn(u64) -> bool,
) -> u64 {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ok(entry(mem, table, mid)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi
}

/// A consecutive run of `try_` calls that found nothing; every `TRY_PEER_CHECK_EVERY`th asks
/// the liveness tokens.
#[derive(Debug, Default)]
struct PeerCheck {
    misses: u32,
}

impl PeerCheck {
    #[inline]
    fn due(&mut self) -> bool {
        self.misses = self.misses.wrapping_add(1);
        self.misses % TRY_PEER_CHECK_EVERY == 0
    }

    #[inline]
    fn reset(&mut self) {
        self.misses = 0;
    }
}

/// Where a claimed record lies.
#[derive(Debug, Clone, Copy)]
struct Reserved {
    /// The tail before the claim (where a padding record starts, if any).
    start: u64,
    /// Position of the record header.
    pos: u64,
    /// Claimed payload length.
    len: u64,
}

/// The writing end of a broadcast ring. `Send`, not `Sync`: one thread writes.
///
/// A writer that takes over from one that died continues after the last record it committed
/// (those it committed are counted and indexed again); a record it had claimed but not
/// committed never reaches a reader.
pub struct Writer<M: RingMemory> {
    mem: M,
    policy: BroadcastPolicy,
    mask: u64,
    max_payload: u64,
    /// History table entries.
    table: u64,
    /// Records a late joiner may ask for (Block: the history floor).
    history: u64,
    /// Next position to write; everything below it is published.
    tail: u64,
    /// Records published so far.
    published: u64,
    /// Block: the usable limit, validated against the readers (module docs).
    limit: u64,
    /// Block: the value of the shared `limit` this writer stored last.
    shared_limit: u64,
    /// Lap: the value of `tail_intent` this writer stored last.
    intent: u64,
    /// Per slot, the attach count of a reader known dead (`u64::MAX`: none).
    dead: Vec<u64>,
    wait: WaitStrategy,
    peer_check: PeerCheck,
    /// Whether this process wakes with a compiler fence only (see [`crate::wait`]).
    light: bool,
    counters: Counters,
    #[cfg_attr(not(loom), allow(dead_code))]
    mirror: Mirror,
    _not_sync: PhantomData<Cell<()>>,
}

impl<M: RingMemory> Writer<M> {
    /// Takes the writer end of the ring in `mem`, whose slot 0 token the caller holds.
    pub(crate) fn new(mem: M, policy: BroadcastPolicy) -> Result<Self, AttachError> {
        match Self::resume(mem, policy) {
            Ok(w) => Ok(w),
            Err((mem, e)) => {
                mem.slot(WRITER_SLOT)
                    .state
                    .store(SLOT_CLOSED, Ordering::Release);
                Err(e.into())
            }
        }
    }

    fn resume(mem: M, policy: BroadcastPolicy) -> Result<Self, (M, Corruption)> {
        let cap = mem.capacity();
        let table = match check_table(&mem) {
            Ok(t) => t,
            Err(e) => return Err((mem, e)),
        };
        let b = mem.broadcast();
        let mut published = b.published.load(Ordering::Acquire);
        let mut tail = entry(&mem, table, published);
        if let Err(e) = check_aligned(tail, "broadcast writer tail (history entry)") {
            return Err((mem, e));
        }
        // A writer that died after publishing a record's header but before counting it left
        // records beyond the count, maybe already read: count and index them again. The slot
        // after the last one reads 0 or a claim (the writer zeroes it before each commit).
        let mut walked = 0u64;
        loop {
            let off = tail & (cap - 1);
            let h = decode(header(&mem, tail).load(Ordering::Acquire));
            let footprint = match committed_footprint(h, off, cap) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err((mem, e)),
            };
            walked += footprint;
            if walked > cap {
                return Err((
                    mem,
                    Corruption {
                        what: "broadcast records beyond the published count (bytes)",
                        found: walked,
                        expected: format!("at most the capacity {cap}"),
                    },
                ));
            }
            tail = tail.wrapping_add(footprint);
            if h.kind != PADDING {
                published = published.wrapping_add(1);
                mem.history()[(published % table) as usize].store(tail, Ordering::Release);
                b.published.store(published, Ordering::Release);
            }
        }
        mem.control().tail.0.store(tail, Ordering::Release);
        let intent = b.tail_intent.load(Ordering::Acquire);
        let shared_limit = b.limit.load(Ordering::Acquire);
        let (what, value) = match policy {
            BroadcastPolicy::Lap => ("broadcast tail intent", intent),
            BroadcastPolicy::Block => ("broadcast limit", shared_limit),
        };
        if value.wrapping_sub(tail) > cap {
            return Err((
                mem,
                Corruption {
                    what,
                    found: value,
                    expected: format!("between the tail {tail} and a capacity ({cap}) beyond"),
                },
            ));
        }
        let slots = mem.slot_count();
        Ok(Writer {
            policy,
            mask: cap - 1,
            max_payload: crate::spsc::max_payload(cap),
            table,
            history: history_records(table as usize) as u64,
            tail,
            published,
            limit: tail,
            shared_limit,
            intent,
            dead: vec![u64::MAX; slots],
            wait: WaitStrategy::default(),
            peer_check: PeerCheck::default(),
            light: light_wakes(),
            counters: Counters::resume(mem.slot(WRITER_SLOT)),
            mirror: Mirror::default(),
            _not_sync: PhantomData,
            mem,
        })
    }

    /// Capacity of the data area in bytes.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The largest payload [`try_claim`](Self::try_claim) accepts: `capacity / 2 - 24`, as for
    /// [`crate::spsc::max_payload`].
    pub fn max_payload(&self) -> u64 {
        self.max_payload
    }

    /// The slow-reader policy.
    pub fn policy(&self) -> BroadcastPolicy {
        self.policy
    }

    /// How many of the last records a late joiner may ask for.
    pub fn history_len(&self) -> usize {
        self.history as usize
    }

    /// Records published so far (the number the next record gets).
    pub fn published(&self) -> u64 {
        self.published
    }

    /// How the blocking calls wait for space.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.wait
    }

    /// Sets how the blocking calls wait for space.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// The memory this ring lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// How many readers are attached and alive. Asks the liveness tokens: syscalls on shared
    /// memory.
    pub fn live_readers(&self) -> usize {
        (FIRST_READER_SLOT..self.mem.slot_count())
            .filter(|&i| {
                let state = self.mem.slot(i).state.load(Ordering::Acquire);
                state != SLOT_NEVER && state != SLOT_CLOSED && self.mem.token_held(i)
            })
            .count()
    }

    /// Claims space for a record of `len` payload bytes without waiting.
    ///
    /// The [`Grant`] derefs to the payload (`len` bytes in the ring, 16-byte aligned); commit it
    /// to publish the record to every reader, or drop or [`abort`](Grant::abort) it.
    ///
    /// # Errors
    ///
    /// [`TryClaimError::Full`] (`Block` only) when the slowest live reader has not made room
    /// yet, `TooLarge` when `len` exceeds [`max_payload`](Self::max_payload), `Corrupt` when
    /// the ring's shared state is impossible. Never `PeerGone`: with no live reader a `Block`
    /// writer just writes.
    pub fn try_claim(&mut self, len: usize) -> Result<Grant<'_, M>, TryClaimError> {
        let reserved = self.try_reserve(len as u64)?;
        Ok(Grant::new(self, reserved))
    }

    /// Claims space for a record, waiting with the [wait strategy](Self::set_wait_strategy)
    /// while the ring is full (`Block`; a `Lap` writer never waits).
    ///
    /// # Errors
    ///
    /// [`ClaimError::TooLarge`] or `Corrupt`; never `Timeout` or `PeerGone`.
    pub fn claim(&mut self, len: usize) -> Result<Grant<'_, M>, ClaimError> {
        let reserved = self.reserve_until(len as u64, None)?;
        Ok(Grant::new(self, reserved))
    }

    /// Like [`claim`](Self::claim), giving up after `timeout` (`Duration::MAX`: never).
    ///
    /// # Errors
    ///
    /// As [`claim`](Self::claim), and [`ClaimError::Timeout`].
    pub fn claim_timeout(
        &mut self,
        len: usize,
        timeout: Duration,
    ) -> Result<Grant<'_, M>, ClaimError> {
        let reserved = self.reserve_until(len as u64, Instant::now().checked_add(timeout))?;
        Ok(Grant::new(self, reserved))
    }

    /// Checks, without claiming and without waiting, whether a claim of `len` bytes would
    /// succeed now: if so, the next [`try_claim`](Self::try_claim) of at most `len` bytes
    /// succeeds.
    ///
    /// # Errors
    ///
    /// As [`try_claim`](Self::try_claim).
    pub fn check_space(&mut self, len: usize) -> Result<(), TryClaimError> {
        // An unused reservation is an aborted claim: the tail did not move.
        self.try_reserve(len as u64).map(drop)
    }

    /// Waits until a claim of `len` bytes would succeed, without claiming.
    ///
    /// # Errors
    ///
    /// As [`claim_timeout`](Self::claim_timeout).
    pub fn wait_for_space(&mut self, len: usize, timeout: Duration) -> Result<(), ClaimError> {
        self.reserve_until(len as u64, Instant::now().checked_add(timeout))
            .map(drop)
    }

    /// Bytes free below the usable limit.
    fn free(&self) -> u64 {
        self.limit.wrapping_sub(self.tail).min(self.capacity())
    }

    fn try_reserve(&mut self, len: u64) -> Result<Reserved, TryClaimError> {
        if len > self.max_payload {
            return Err(TryClaimError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        let cap = self.capacity();
        let footprint = align_record(RECORD_HEADER + len);
        let off = self.tail & self.mask;
        let to_end = cap - off;
        let pad = if footprint <= to_end { 0 } else { to_end };
        let needed = pad + footprint + NEXT_SLOT;
        match self.policy {
            BroadcastPolicy::Block => {
                if self.free() < needed {
                    self.rescan(needed);
                    if self.free() < needed {
                        if !(self.peer_check.due() && self.drop_dead(needed)) {
                            return Err(TryClaimError::Full {
                                needed,
                                free: self.free(),
                            });
                        }
                        self.rescan(needed);
                        if self.free() < needed {
                            return Err(TryClaimError::Full {
                                needed,
                                free: self.free(),
                            });
                        }
                    }
                }
            }
            BroadcastPolicy::Lap => {
                let end = self.tail.wrapping_add(needed);
                if end.wrapping_sub(self.tail) > self.intent.wrapping_sub(self.tail) {
                    self.intent = end;
                    // SYNC POINT F (Release store and fence): pairs with the Lap reader's
                    // `fence(Acquire)` and load of `tail_intent` after its copy. Nothing of
                    // this claim is written before it.
                    self.mem
                        .broadcast()
                        .tail_intent
                        .store(end, Ordering::Release);
                    fence(Ordering::Release);
                }
            }
        }
        self.peer_check.reset();
        let pos = self.tail.wrapping_add(pad);
        // Mark the record claimed (negative length): a reader polling this slot keeps waiting,
        // and a writer taking over after a crash starts here.
        let claimed = encode(-((RECORD_HEADER + len) as i32), 0);
        header(&self.mem, pos).store(claimed, Ordering::Relaxed);
        Ok(Reserved {
            start: self.tail,
            pos,
            len,
        })
    }

    /// How far behind the tail the live readers are, at most (`capacity + 1` for a reader more
    /// than a ring behind: a joiner still choosing its start, or a corrupt cursor).
    fn readers_behind(&self) -> u64 {
        let cap = self.capacity();
        let mut worst = 0;
        for i in FIRST_READER_SLOT..self.mem.slot_count() {
            let slot = self.mem.slot(i);
            let state = slot.state.load(Ordering::Acquire);
            if state == SLOT_NEVER || state == SLOT_CLOSED {
                continue;
            }
            if slot.attach_count.load(Ordering::Relaxed) == self.dead[i] {
                continue;
            }
            // SYNC POINT B (Acquire): pairs with the reader's Release store of its cursor.
            let cursor = slot.cursor.load(Ordering::Acquire);
            worst = worst.max(self.tail.wrapping_sub(cursor).min(cap + 1));
        }
        worst
    }

    /// Recomputes the usable limit for a claim that needs `needed` bytes (Block).
    fn rescan(&mut self, needed: u64) {
        let cap = self.capacity();
        // The history floor: the start of the last `history` records, never keeping the writer
        // from writing (it cannot wait for itself).
        let oldest = self.published.saturating_sub(self.history);
        let floor = self
            .tail
            .wrapping_sub(entry(&self.mem, self.table, oldest))
            .min(cap.saturating_sub(needed));
        let behind = self.readers_behind().max(floor);
        let candidate = self.tail.wrapping_add(cap.saturating_sub(behind));
        let raise = candidate.wrapping_sub(self.tail) > self.shared_limit.wrapping_sub(self.tail);
        if !raise {
            self.limit = candidate;
            return;
        }
        // SYNC POINT D (store, SeqCst fence, load again): pairs with the joining reader's
        // cursor store, SeqCst fence and load of `limit`.
        self.shared_limit = candidate;
        self.mem
            .broadcast()
            .limit
            .store(candidate, Ordering::Release);
        fence(Ordering::SeqCst);
        let again = self.readers_behind().max(floor);
        self.limit = self
            .tail
            .wrapping_add(cap.saturating_sub(behind.max(again)));
    }

    /// Asks the liveness tokens of the readers that keep a claim of `needed` bytes from
    /// fitting; drops the dead ones from the set. Whether any was dropped.
    fn drop_dead(&mut self, needed: u64) -> bool {
        let cap = self.capacity();
        let mut dropped = false;
        for i in FIRST_READER_SLOT..self.mem.slot_count() {
            let slot = self.mem.slot(i);
            let state = slot.state.load(Ordering::Acquire);
            let count = slot.attach_count.load(Ordering::Relaxed);
            if state == SLOT_NEVER || state == SLOT_CLOSED || count == self.dead[i] {
                continue;
            }
            let behind = self.tail.wrapping_sub(slot.cursor.load(Ordering::Acquire));
            if behind > cap.saturating_sub(needed) && !self.mem.token_held(i) {
                self.dead[i] = count;
                dropped = true;
            }
        }
        dropped
    }

    fn reserve_until(
        &mut self,
        len: u64,
        deadline: Option<Instant>,
    ) -> Result<Reserved, ClaimError> {
        match self.try_reserve(len) {
            Err(TryClaimError::Full { .. }) => {}
            other => return other.map_err(ClaimError::from),
        }
        self.counters.wait();
        self.counters.flush(self.mem.slot(WRITER_SLOT));
        let needed = |w: &Self| {
            let f = align_record(RECORD_HEADER + len);
            let to_end = w.capacity() - (w.tail & w.mask);
            (if f <= to_end { 0 } else { to_end }) + f + NEXT_SLOT
        };
        let mut waiter = Waiter::new(self.wait, deadline);
        loop {
            match waiter.next() {
                Step::Retry => {}
                Step::TimedOut => return Err(ClaimError::Timeout),
                Step::CheckPeer => {
                    let n = needed(self);
                    self.drop_dead(n);
                }
                Step::Park(slice) => {
                    // Announce the sleep in the eventcount and sleep on the exact value made:
                    // a reader's wake moves the epoch on, whoever else touched the word. An
                    // announcement left behind costs the next releasing reader one wake call.
                    let word = &self.mem.control().producer_parked.0;
                    let announced = word.fetch_or(1, Ordering::Relaxed) | 1;
                    // SYNC POINT C: pairs with the readers' `wake_if_parked`.
                    let slice = park_slice(slice, sleeper_fence());
                    match self.try_reserve(len) {
                        Err(TryClaimError::Full { .. }) => {}
                        other => return other.map_err(ClaimError::from),
                    }
                    // A dead reader never wakes us: look for one before sleeping.
                    let n = needed(self);
                    if self.drop_dead(n) {
                        continue;
                    }
                    let word = &self.mem.control().producer_parked.0;
                    self.mem.futex_wait(word, announced, Some(slice));
                }
            }
            match self.try_reserve(len) {
                Err(TryClaimError::Full { .. }) => {}
                other => return other.map_err(ClaimError::from),
            }
        }
    }

    /// Publishes the record committed at `pos` (after padding from `start`) ending at `end`.
    fn publish(&mut self, start: u64, pos: u64, end: u64, word: u64, len: u64) {
        // SYNC POINT A (Release): pairs with the readers' Acquire load of the header. The
        // first header readers poll is the padding's when there is one: stored last.
        header(&self.mem, pos).store(word, Ordering::Release);
        if pos != start {
            let padding = encode(pos.wrapping_sub(start) as i32, PADDING);
            header(&self.mem, start).store(padding, Ordering::Release);
        }
        self.tail = end;
        self.published = self.published.wrapping_add(1);
        // SYNC POINT E (Release, entry before count): pairs with a joiner's Acquire loads.
        self.mem.history()[(self.published % self.table) as usize].store(end, Ordering::Release);
        let b = self.mem.broadcast();
        b.published.store(self.published, Ordering::Release);
        // For a writer taking over and for tools; readers do not read it.
        self.mem.control().tail.0.store(end, Ordering::Release);
        self.counters.message(len);
        wake_readers(&self.mem, self.light);
        self.counters.flush(self.mem.slot(WRITER_SLOT));
    }

    /// Under loom: copies the payload into the model-checked mirror (the writes a Lap reader
    /// may race with).
    #[cfg(loom)]
    fn mirror_payload(&self, pos: u64, len: u64) {
        if let (Some(mirror), BroadcastPolicy::Lap) = (&self.mirror.words, self.policy) {
            let off = (pos & self.mask) + RECORD_HEADER;
            for w in 0..len.div_ceil(8) {
                let mut bytes = [0u8; 8];
                for (i, b) in bytes.iter_mut().enumerate() {
                    let at = off + w * 8 + i as u64;
                    if at < off + len {
                        // SAFETY: `at` lies in the payload of the claimed record, inside the
                        // data area; the grant that wrote it has ended.
                        *b = unsafe { *self.mem.data().as_ptr().add(at as usize) };
                    }
                }
                mirror[((off / 8) + w) as usize]
                    .store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            }
        }
    }
}

impl<M: RingMemory> Drop for Writer<M> {
    fn drop(&mut self) {
        self.mem
            .slot(WRITER_SLOT)
            .state
            .store(SLOT_CLOSED, Ordering::Release);
        // A full fence: cheap enough here, and right whatever the sleepers' barrier.
        wake_readers(&self.mem, false);
    }
}

impl<M: RingMemory> fmt::Debug for Writer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("capacity", &self.capacity())
            .field("policy", &self.policy)
            .field("tail", &self.tail)
            .field("published", &self.published)
            .field("wait", &self.wait)
            .finish()
    }
}

/// Space claimed in the ring for one record; derefs to its payload bytes.
///
/// [`commit`](Self::commit) publishes it to every reader; dropping it without committing aborts
/// the claim, and no reader ever sees it.
pub struct Grant<'a, M: RingMemory> {
    writer: &'a mut Writer<M>,
    reserved: Reserved,
    kind: u32,
    done: bool,
    /// Held while the writer may write these bytes; ended before they are published.
    track: Track,
}

impl<'a, M: RingMemory> Grant<'a, M> {
    fn new(writer: &'a mut Writer<M>, reserved: Reserved) -> Self {
        let off = (reserved.pos & writer.mask) + RECORD_HEADER;
        let mut track = Track::default();
        track.add(&writer.mem, off, reserved.len, true);
        Grant {
            writer,
            reserved,
            kind: 0,
            done: false,
            track,
        }
    }

    /// Sets the record kind, a user value below `u32::MAX` (reserved for padding); 0 by default.
    ///
    /// # Panics
    ///
    /// If `kind == u32::MAX`.
    pub fn set_kind(&mut self, kind: u32) {
        assert!(
            kind != PADDING,
            "record kind u32::MAX is reserved for padding records"
        );
        self.kind = kind;
    }

    /// Publishes the first `len` payload bytes as a record and gives back the rest of the
    /// claim. Every reader can read it at once.
    ///
    /// # Panics
    ///
    /// If `len` is larger than the claim.
    pub fn commit(mut self, len: usize) {
        let len = len as u64;
        assert!(
            len <= self.reserved.len,
            "commit of {len} bytes exceeds the claim of {} bytes",
            self.reserved.len
        );
        self.track.end();
        let Reserved { start, pos, .. } = self.reserved;
        let end = pos.wrapping_add(align_record(RECORD_HEADER + len));
        // The slot after this record must read "nothing yet" before the record is visible.
        header(&self.writer.mem, end).store(0, Ordering::Relaxed);
        #[cfg(loom)]
        self.writer.mirror_payload(pos, len);
        let word = encode((RECORD_HEADER + len) as i32, self.kind);
        self.writer.publish(start, pos, end, word, len);
        self.done = true;
    }

    /// Gives the claimed space back; the record never existed.
    pub fn abort(self) {}

    /// The position of this record in the ring (for diagnostics).
    pub fn position(&self) -> u64 {
        self.reserved.pos
    }
}

impl<M: RingMemory> Drop for Grant<'_, M> {
    fn drop(&mut self) {
        if !self.done {
            // Abort: the tail never moved; the claimed header is beyond it and will be
            // overwritten by the next claim.
            debug_assert_eq!(self.writer.tail, self.reserved.start);
        }
    }
}

impl<M: RingMemory> Deref for Grant<'_, M> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let off = (self.reserved.pos & self.writer.mask) + RECORD_HEADER;
        // SAFETY: `[off, off + len)` is inside the data area (the footprint was fitted before
        // the end of the area at reserve) and owned by the writer until commit: Block readers
        // never read beyond the published tail; Lap readers only copy it with atomic loads and
        // discard what they copied (module docs). `&self` borrows the grant.
        unsafe {
            std::slice::from_raw_parts(
                self.writer.mem.data().as_ptr().add(off as usize),
                self.reserved.len as usize,
            )
        }
    }
}

impl<M: RingMemory> DerefMut for Grant<'_, M> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let off = (self.reserved.pos & self.writer.mask) + RECORD_HEADER;
        // SAFETY: as in `deref`; `&mut self` makes this the only reference to those bytes in
        // this process.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.writer.mem.data().as_ptr().add(off as usize),
                self.reserved.len as usize,
            )
        }
    }
}

impl<M: RingMemory> fmt::Debug for Grant<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("position", &self.reserved.pos)
            .field("len", &self.reserved.len)
            .finish()
    }
}

/// Where the next record lies.
#[derive(Debug, Clone, Copy)]
struct Next {
    /// Position of the record header.
    pos: u64,
    len: u64,
    kind: u32,
    /// Position just past the record.
    end: u64,
}

/// 16 bytes, 16-aligned: the unit of a Lap reader's copy buffer (payloads are 16-aligned in
/// the ring, and stay so in the copy).
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct Chunk([u8; 16]);

/// The reading end of a broadcast ring: one reader among many, with its own cursor. `Send`, not
/// `Sync`: one thread reads. Dropping it leaves the ring (under `Block` the writer stops
/// waiting for it).
pub struct Reader<M: RingMemory> {
    mem: M,
    slot: usize,
    policy: BroadcastPolicy,
    mask: u64,
    table: u64,
    /// Records a late joiner may ask for.
    history: u64,
    /// Start of the next record to read (a padding record before it included).
    cursor: u64,
    /// Number of the next record to read.
    number: u64,
    /// The last cursor stored to the slot.
    released: u64,
    /// Records lost to being lapped, in total.
    lost: u64,
    /// The next record, found by a `check_record` or `wait_timeout` and not yet read.
    ready: Option<Next>,
    /// Lap: the copy of the record being read.
    buf: Vec<Chunk>,
    wait: WaitStrategy,
    peer_check: PeerCheck,
    light: bool,
    counters: Counters,
    #[cfg_attr(not(loom), allow(dead_code))]
    mirror: Mirror,
    _not_sync: PhantomData<Cell<()>>,
}

impl<M: RingMemory> Reader<M> {
    /// Joins the ring in `mem` as the reader of slot `slot` (already marked attached, its token
    /// held by the caller).
    pub(crate) fn new(
        mem: M,
        slot: usize,
        policy: BroadcastPolicy,
        start: Start,
        mirror: Mirror,
    ) -> Result<Self, AttachError> {
        let fail = |mem: &M, e: Corruption| {
            mem.slot(slot).state.store(SLOT_CLOSED, Ordering::Release);
            AttachError::from(e)
        };
        let table = match check_table(&mem) {
            Ok(t) => t,
            Err(e) => return Err(fail(&mem, e)),
        };
        let cap = mem.capacity();
        let mut reader = Reader {
            slot,
            policy,
            mask: cap - 1,
            table,
            history: history_records(table as usize) as u64,
            cursor: 0,
            number: 0,
            released: 0,
            lost: 0,
            ready: None,
            buf: Vec::new(),
            wait: WaitStrategy::default(),
            peer_check: PeerCheck::default(),
            light: light_wakes(),
            counters: Counters::resume(mem.slot(slot)),
            mirror,
            _not_sync: PhantomData,
            mem,
        };
        if let Err(e) = reader.join(start) {
            // Closing the slot here is what `Drop` does too: it runs when `reader` drops.
            return Err(e.into());
        }
        Ok(reader)
    }

    /// Chooses the start and, under Block, makes sure the writer will not overwrite it (SYNC
    /// POINT D, module docs).
    fn join(&mut self, start: Start) -> Result<(), Corruption> {
        let cap = self.capacity();
        let want = match start {
            Start::Latest => 0,
            Start::History(k) => (k as u64).min(self.history),
        };
        let b = self.mem.broadcast();
        let slot = self.mem.slot(self.slot);
        for _ in 0..ATTEMPTS {
            let limit = b.limit.load(Ordering::Acquire);
            let n1 = b.published.load(Ordering::Acquire);
            let mut j = n1.saturating_sub(want);
            let mut s = entry(&self.mem, self.table, j);
            if self.policy == BroadcastPolicy::Block && limit.wrapping_sub(s) > cap {
                // Older than the writer may already be writing: the first record that is not.
                j = first_where(&self.mem, self.table, j, n1, |s| {
                    limit.wrapping_sub(s) <= cap
                });
                s = entry(&self.mem, self.table, j);
            }
            let n2 = b.published.load(Ordering::Acquire);
            if n2.wrapping_sub(j) > self.table - 2 {
                // The entry may have been overwritten while we read it.
                crate::sync::spin_loop();
                continue;
            }
            check_aligned(s, "broadcast history entry")?;
            self.cursor = s;
            self.number = j;
            self.released = s;
            // SYNC POINT B/D: the writer scans this cursor.
            slot.cursor.store(s, Ordering::Release);
            if self.policy == BroadcastPolicy::Block {
                // SYNC POINT D: pairs with the writer's limit store, fence and second scan.
                fence(Ordering::SeqCst);
                let limit = b.limit.load(Ordering::Relaxed);
                if limit.wrapping_sub(s) > cap {
                    crate::sync::spin_loop();
                    continue;
                }
                // The writer may have been waiting for the cursor a join left behind.
                wake_if_parked(&self.mem, &self.mem.control().producer_parked.0, false);
            }
            return Ok(());
        }
        Err(Corruption {
            what: "broadcast join attempts (history table and limit never consistent)",
            found: u64::from(ATTEMPTS),
            expected: "a history entry that stays put while it is read, within the limit".into(),
        })
    }

    /// Capacity of the data area in bytes.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The slow-reader policy.
    pub fn policy(&self) -> BroadcastPolicy {
        self.policy
    }

    /// The number of the next record this reader will read (records are numbered from 0 by the
    /// writer).
    pub fn record_number(&self) -> u64 {
        self.number
    }

    /// Records this reader lost to being lapped, in total (`Lap` rings).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The index of this reader's endpoint slot.
    pub fn slot_index(&self) -> usize {
        self.slot
    }

    /// How the blocking calls wait for records.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.wait
    }

    /// Sets how the blocking calls wait for records.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// The writer's state. Asks the liveness token: a syscall on shared memory.
    pub fn peer(&self) -> PeerState {
        match self.mem.slot(WRITER_SLOT).state.load(Ordering::Acquire) {
            SLOT_NEVER => PeerState::NotYet,
            SLOT_CLOSED => PeerState::Gone,
            _ if self.mem.token_held(WRITER_SLOT) => PeerState::Alive,
            _ => PeerState::Gone,
        }
    }

    /// The memory this ring lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Reads the next record without waiting. Under `Block` the [`Record`] borrows the bytes in
    /// the ring and releases them when dropped; under `Lap` it derefs to this reader's copy.
    ///
    /// # Errors
    ///
    /// [`TryReadError::Empty`] when nothing new is published, `Lapped` (`Lap`) when the writer
    /// overwrote records this reader had not read (it then stands at the oldest intact one),
    /// `PeerGone` when the writer is gone and everything it published was read, `Corrupt`.
    pub fn try_read(&mut self) -> Result<Record<'_, M>, TryReadError> {
        let next = self.try_next()?;
        Ok(Record::new(self, next))
    }

    /// Reads the next record, waiting with the [wait strategy](Self::set_wait_strategy).
    ///
    /// # Errors
    ///
    /// [`ReadError::Lapped`], `PeerGone`, `Corrupt`; never `Timeout`.
    pub fn read(&mut self) -> Result<Record<'_, M>, ReadError> {
        let next = self.next_until(None)?;
        Ok(Record::new(self, next))
    }

    /// Like [`read`](Self::read), giving up after `timeout` (`Duration::MAX`: never).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), and [`ReadError::Timeout`].
    pub fn read_timeout(&mut self, timeout: Duration) -> Result<Record<'_, M>, ReadError> {
        let next = self.next_until(Instant::now().checked_add(timeout))?;
        Ok(Record::new(self, next))
    }

    /// Checks, without reading and without waiting, whether a record can be read now: if so,
    /// the next [`try_read`](Self::try_read) returns it.
    ///
    /// # Errors
    ///
    /// As [`try_read`](Self::try_read).
    pub fn check_record(&mut self) -> Result<(), TryReadError> {
        let next = self.try_next()?;
        self.ready = Some(next);
        Ok(())
    }

    /// Waits until a record can be read (or the writer is gone with nothing left), without
    /// reading it: the next [`try_read`](Self::try_read) then returns the record.
    ///
    /// # Errors
    ///
    /// As [`read_timeout`](Self::read_timeout).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<(), ReadError> {
        let next = self.next_until(Instant::now().checked_add(timeout))?;
        self.ready = Some(next);
        Ok(())
    }

    /// Finds the next published record, skipping padding; `None` when there is none now.
    fn poll(&mut self) -> Result<Option<Next>, TryReadError> {
        if let Some(next) = self.ready.take() {
            return Ok(Some(next));
        }
        let cap = self.capacity();
        let mut pos = self.cursor;
        // A padding record, then the record after it at the start of the data area (where no
        // padding can be): at most two steps.
        for _ in 0..2 {
            let off = pos & self.mask;
            // SYNC POINT A (Acquire): pairs with the writer's Release store of this header.
            let h = decode(header(&self.mem, pos).load(Ordering::Acquire));
            let footprint = match committed_footprint(h, off, cap) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if self.policy == BroadcastPolicy::Lap && self.lapped() {
                        return Err(self.relocate()?);
                    }
                    return Ok(None);
                }
                Err(c) => {
                    // Under Lap, junk at the cursor is what a lap leaves.
                    if self.policy == BroadcastPolicy::Lap && self.lapped() {
                        return Err(self.relocate()?);
                    }
                    return Err(c.into());
                }
            };
            if h.kind == PADDING {
                pos = pos.wrapping_add(footprint);
                continue;
            }
            let next = Next {
                pos,
                len: h.len as u64 - RECORD_HEADER,
                kind: h.kind,
                end: pos.wrapping_add(footprint),
            };
            if self.policy == BroadcastPolicy::Lap {
                self.copy(next);
                // SYNC POINT F (Acquire fence, then the intent): pairs with the writer's
                // intent store and Release fence.
                fence(Ordering::Acquire);
                if self.lapped() {
                    return Err(self.relocate()?);
                }
            }
            return Ok(Some(next));
        }
        Err(Corruption {
            what: "padding record at the start of the ring",
            found: pos,
            expected: "a record after a padding record".into(),
        }
        .into())
    }

    /// Lap: whether the writer announced writes at or beyond a capacity past the cursor, so
    /// that the record there may be overwritten. The caller ordered its reads of the record
    /// before this load (Acquire header load, or the Acquire fence after a copy).
    #[inline]
    fn lapped(&self) -> bool {
        let intent = self.mem.broadcast().tail_intent.load(Ordering::Relaxed);
        intent.wrapping_sub(self.cursor) > self.capacity()
    }

    /// Lap: moves to the oldest record still intact and indexed; returns the error that says
    /// how many records were lost.
    fn relocate(&mut self) -> Result<TryReadError, Corruption> {
        let cap = self.capacity();
        let b = self.mem.broadcast();
        for attempt in 0..ATTEMPTS {
            let intent = b.tail_intent.load(Ordering::Acquire);
            let n1 = b.published.load(Ordering::Acquire);
            if n1 < self.number {
                return Err(Corruption {
                    what: "broadcast published count",
                    found: n1,
                    expected: format!("at least the lapped reader's record number {}", self.number),
                });
            }
            // The window of indexed records, narrowed on every failed attempt so that a writer
            // racing the search cannot starve it (at worst it resumes at the newest record).
            let margin = (u64::from(attempt) * 8).min(self.history);
            let lo = n1.saturating_sub(self.history - margin).max(self.number);
            let j = first_where(&self.mem, self.table, lo, n1, |s| {
                intent.wrapping_sub(s) <= cap
            });
            let s = entry(&self.mem, self.table, j);
            let n2 = b.published.load(Ordering::Acquire);
            if n2.wrapping_sub(j) > self.table - 2 || intent.wrapping_sub(s) > cap {
                crate::sync::spin_loop();
                continue;
            }
            check_aligned(s, "broadcast history entry")?;
            let lost = j - self.number;
            if lost == 0 {
                // The reader's own record start was seen overwritten by an older intent than
                // this one: impossible unless the shared state is scribbled on.
                return Err(Corruption {
                    what: "lapped reader's record, intact in the history table",
                    found: j,
                    expected: format!("a record after {}", self.number),
                });
            }
            self.cursor = s;
            self.number = j;
            self.lost += lost;
            self.counters.dropped(lost);
            self.release();
            return Ok(TryReadError::Lapped { lost });
        }
        Err(Corruption {
            what: "broadcast resume attempts (history table never consistent)",
            found: u64::from(ATTEMPTS),
            expected: "a history entry that stays put while it is read".into(),
        })
    }

    /// Lap: copies the payload of `next` into the buffer with atomic 8-byte loads.
    fn copy(&mut self, next: Next) {
        let chunks = next.len.div_ceil(16) as usize;
        if self.buf.len() < chunks {
            self.buf.resize(chunks, Chunk::default());
        }
        let off = (next.pos & self.mask) + RECORD_HEADER;
        let words = next.len.div_ceil(8) as usize;
        let dst = self.buf.as_mut_ptr().cast::<u64>();
        #[cfg(loom)]
        if let Some(mirror) = &self.mirror.words {
            for w in 0..words {
                let word = mirror[(off / 8) as usize + w].load(Ordering::Relaxed);
                // SAFETY: `w < words <= 2 * chunks`, inside the buffer of 16-byte chunks.
                unsafe { dst.add(w).write(word) };
            }
            return;
        }
        let src = self.mem.data().as_ptr();
        for w in 0..words {
            // SAFETY: the payload starts at a 16-aligned address (the data area is ≡ 8 mod 16
            // and records start at multiples of 16) and its 8-byte words end within the
            // record's footprint, which `committed_footprint` checked lies inside the data
            // area. The word is only read atomically; the writer may be writing it (a lapped
            // read, discarded after the intent check).
            let word = unsafe {
                std::sync::atomic::AtomicU64::from_ptr(src.add(off as usize + 8 * w).cast())
                    .load(std::sync::atomic::Ordering::Relaxed)
            };
            // SAFETY: `w < words <= 2 * chunks`, inside the buffer of 16-byte chunks.
            unsafe { dst.add(w).write(word) };
        }
    }

    fn try_next(&mut self) -> Result<Next, TryReadError> {
        if let Some(next) = self.poll()? {
            self.peer_check.reset();
            return Ok(next);
        }
        if self.peer_check.due() && self.peer() == PeerState::Gone {
            // The writer is gone: whatever it published is visible now. Drain it first.
            return self.poll()?.ok_or(TryReadError::PeerGone);
        }
        Err(TryReadError::Empty)
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Result<Next, ReadError> {
        if let Some(next) = self.poll()? {
            return Ok(next);
        }
        let mut waiter = Waiter::new(self.wait, deadline);
        loop {
            match waiter.next() {
                Step::Retry => {}
                Step::TimedOut => return Err(ReadError::Timeout),
                Step::CheckPeer => {
                    if self.peer() == PeerState::Gone {
                        return self.poll()?.ok_or(ReadError::PeerGone);
                    }
                }
                Step::Park(slice) => {
                    self.counters.wait();
                    self.counters.flush(self.mem.slot(self.slot));
                    // Announce a sleeper in the eventcount; sleep on the exact value made.
                    let word = &self.mem.control().consumer_parked.0;
                    let announced = word.fetch_or(1, Ordering::Relaxed) | 1;
                    // SYNC POINT C: pairs with the writer's `wake_readers`.
                    let slice = park_slice(slice, sleeper_fence());
                    if let Some(next) = self.poll()? {
                        return Ok(next);
                    }
                    if self.peer() == PeerState::Gone {
                        return self.poll()?.ok_or(ReadError::PeerGone);
                    }
                    let word = &self.mem.control().consumer_parked.0;
                    self.mem.futex_wait(word, announced, Some(slice));
                }
            }
            if let Some(next) = self.poll()? {
                return Ok(next);
            }
        }
    }

    /// Stores the cursor if it moved, and (Block) wakes a writer waiting for space.
    fn release(&mut self) {
        if self.cursor != self.released {
            self.released = self.cursor;
            // SYNC POINT B (Release): pairs with the writer's Acquire load of the cursor.
            self.mem
                .slot(self.slot)
                .cursor
                .store(self.cursor, Ordering::Release);
            if self.policy == BroadcastPolicy::Block {
                wake_if_parked(&self.mem, &self.mem.control().producer_parked.0, self.light);
            }
            self.counters.flush(self.mem.slot(self.slot));
        }
    }
}

impl<M: RingMemory> Drop for Reader<M> {
    fn drop(&mut self) {
        self.release();
        self.mem
            .slot(self.slot)
            .state
            .store(SLOT_CLOSED, Ordering::Release);
        // The writer may wait for this reader: a full fence, right whatever its barrier.
        wake_if_parked(&self.mem, &self.mem.control().producer_parked.0, false);
    }
}

impl<M: RingMemory> fmt::Debug for Reader<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("slot", &self.slot)
            .field("policy", &self.policy)
            .field("cursor", &self.cursor)
            .field("record_number", &self.number)
            .field("lost", &self.lost)
            .finish()
    }
}

/// One record: under `Block` borrowed in place from the ring (dropping it releases the space
/// to the writer), under `Lap` this reader's copy. Derefs to the payload.
///
/// Under `Block` the bytes live in memory another process can write: as with
/// [`crate::spsc::Record`], copy a record from an untrusted writer before validating it.
pub struct Record<'a, M: RingMemory> {
    reader: &'a mut Reader<M>,
    next: Next,
    number: u64,
    /// Leave the record unread on drop ([`Record::keep`]).
    keep: bool,
    /// Held while the reader may read these bytes in place; ended before they are released.
    track: Track,
}

impl<'a, M: RingMemory> Record<'a, M> {
    fn new(reader: &'a mut Reader<M>, next: Next) -> Self {
        let mut track = Track::default();
        if reader.policy == BroadcastPolicy::Block {
            track.add(
                &reader.mem,
                (next.pos & reader.mask) + RECORD_HEADER,
                next.len,
                false,
            );
        }
        let number = reader.number;
        Record {
            reader,
            next,
            number,
            keep: false,
            track,
        }
    }

    /// Leaves the record unread: the next read returns it again (see
    /// [`crate::spsc::Record::keep`]).
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// The record kind set by the writer ([`Grant::set_kind`]).
    pub fn kind(&self) -> u32 {
        self.next.kind
    }

    /// The position of this record in the ring (for diagnostics).
    pub fn position(&self) -> u64 {
        self.next.pos
    }

    /// The record's number (records are numbered from 0 by the writer).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Turns the record into a guard on a view of its bytes, made once by `view`, like
    /// [`crate::spsc::Record::map`]. The record is released when the guard drops; if `view`
    /// fails, at once.
    ///
    /// # Errors
    ///
    /// What `view` returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmesh_ring::{broadcast::{self, Start}, BroadcastPolicy};
    ///
    /// let (mut tx, readers) = broadcast::channel(4096, 1, BroadcastPolicy::Block, 0)?;
    /// let mut rx = readers.join(Start::Latest)?;
    /// let mut grant = tx.try_claim(5)?;
    /// grant.copy_from_slice(b"hello");
    /// grant.commit(5);
    /// let text = rx.try_read()?.map(std::str::from_utf8)?;
    /// assert_eq!(&*text, "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map<U: ?Sized, E>(
        self,
        view: impl for<'b> FnOnce(&'b [u8]) -> Result<&'b U, E>,
    ) -> Result<MappedRecord<'a, M, U>, E> {
        let view = NonNull::from(view(&self)?);
        Ok(MappedRecord { view, record: self })
    }
}

impl<M: RingMemory> Deref for Record<'_, M> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let len = self.next.len as usize;
        match self.reader.policy {
            BroadcastPolicy::Block => {
                let off = (self.next.pos & self.reader.mask) + RECORD_HEADER;
                // SAFETY: `poll` checked that the record lies inside the data area and is
                // published; the writer does not write it until this reader's cursor passes
                // it (module docs), which happens only when the record drops, after this
                // borrow ends.
                unsafe {
                    std::slice::from_raw_parts(
                        self.reader.mem.data().as_ptr().add(off as usize),
                        len,
                    )
                }
            }
            BroadcastPolicy::Lap => {
                // SAFETY: `copy` filled at least `len` bytes of the buffer (chunks of plain
                // bytes, 16-aligned) for this record; the buffer is not touched again until
                // the record drops.
                unsafe { std::slice::from_raw_parts(self.reader.buf.as_ptr().cast::<u8>(), len) }
            }
        }
    }
}

impl<M: RingMemory> Drop for Record<'_, M> {
    fn drop(&mut self) {
        self.track.end();
        if self.keep {
            return;
        }
        let reader = &mut *self.reader;
        reader.cursor = self.next.end;
        reader.number = reader.number.wrapping_add(1);
        reader.counters.message(self.next.len);
        reader.release();
    }
}

impl<M: RingMemory> fmt::Debug for Record<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("number", &self.number)
            .field("position", &self.next.pos)
            .field("len", &self.next.len)
            .field("kind", &self.next.kind)
            .finish()
    }
}

/// A record seen through a view of its bytes ([`Record::map`]); derefs to the view and
/// releases the record on drop.
pub struct MappedRecord<'a, M: RingMemory, U: ?Sized> {
    /// Points into the payload of `record` (or to a `'static` value).
    view: NonNull<U>,
    record: Record<'a, M>,
}

impl<M: RingMemory, U: ?Sized> MappedRecord<'_, M, U> {
    /// The record kind set by the writer.
    pub fn kind(&self) -> u32 {
        self.record.kind()
    }

    /// The position of this record in the ring (for diagnostics).
    pub fn position(&self) -> u64 {
        self.record.position()
    }

    /// The record's number.
    pub fn number(&self) -> u64 {
        self.record.number()
    }

    /// The payload bytes under the view.
    pub fn bytes(&self) -> &[u8] {
        &self.record
    }
}

// SAFETY: as for `spsc::MappedRecord`: a record (a `&mut` to the reading end, `Send` when `M`
// is) and a pointer standing for a `&U` into its bytes; sending both is sound when `M: Send`
// and `U: Sync`.
unsafe impl<M: RingMemory + Send, U: ?Sized + Sync> Send for MappedRecord<'_, M, U> {}

impl<M: RingMemory, U: ?Sized> Deref for MappedRecord<'_, M, U> {
    type Target = U;

    fn deref(&self) -> &U {
        // SAFETY: `view` was made by `Record::map` from a `&'b U` that the view function,
        // generic over `'b`, could only borrow from the payload slice it was given (or from
        // static data). The payload (in the ring or in the reader's buffer) stays valid and
        // unmoved while `self.record` lives: the reader, borrowed by it, neither reads again
        // nor releases the record until it drops.
        unsafe { self.view.as_ref() }
    }
}

impl<M: RingMemory, U: ?Sized> fmt::Debug for MappedRecord<'_, M, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedRecord")
            .field("record", &self.record)
            .finish()
    }
}

#[cfg(not(loom))]
mod shm {
    use super::*;
    use crate::memory::Side;
    use crate::segment::{Segment, SegmentKind, ShmMemory};

    impl Segment {
        /// Attaches as the writer of the broadcast ring (slot 0). A writer may take over from one
        /// that died.
        ///
        /// # Errors
        ///
        /// [`AttachError::Busy`] while another live process is the writer, `NotARing`,
        /// `Corrupt` (impossible shared state), `Os`.
        pub fn broadcast_writer(&self) -> Result<Writer<ShmMemory>, AttachError> {
            let mem = self.attach_single(
                SegmentKind::BroadcastRing,
                "a broadcast ring",
                WRITER_SLOT,
                Side::Producer,
            )?;
            Writer::new(mem, self.policy().unwrap_or(BroadcastPolicy::Block))
        }

        /// Joins the broadcast ring as a reader, in the first free reader slot (never used,
        /// left, or its process died), starting at `start`.
        ///
        /// # Errors
        ///
        /// [`AttachError::NoFreeSlot`] when every reader slot is held by a live reader,
        /// `NotARing`, `Corrupt`, `Os`.
        pub fn broadcast_reader(&self, start: Start) -> Result<Reader<ShmMemory>, AttachError> {
            let mem = self.attach_many(
                SegmentKind::BroadcastRing,
                "a broadcast ring",
                "reader",
                |_| {},
            )?;
            let slot = mem.slot_index();
            Reader::new(
                mem,
                slot,
                self.policy().unwrap_or(BroadcastPolicy::Block),
                start,
                Mirror::default(),
            )
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn table_lengths_leave_slack_and_lap_rings_an_index() {
        assert_eq!(table_len(BroadcastPolicy::Block, 0), HISTORY_SLACK);
        assert_eq!(history_records(table_len(BroadcastPolicy::Block, 7)), 7);
        assert_eq!(table_len(BroadcastPolicy::Lap, 0), LAP_MIN_TABLE);
        assert_eq!(table_len(BroadcastPolicy::Lap, 1000), 1008);
        assert_eq!(table_len(BroadcastPolicy::Block, usize::MAX), MAX_HISTORY);
    }

    #[test]
    fn header_words_round_trip() {
        for (len, kind) in [(8, 0), (-72, 0), (i32::MAX, PADDING), (0, 7)] {
            assert_eq!(
                decode(encode(len, kind)),
                crate::layout::RecordHeader { len, kind }
            );
        }
    }
}
