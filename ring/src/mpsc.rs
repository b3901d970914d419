//! The multi-producer/single-consumer byte ring.
//!
//! Many [`Writer`]s, in one process or many, claim space in one data area and each commits
//! its own record; one [`Consumer`] reads the records in place, in the order their space was
//! claimed. Same record format as the SPSC ring ([`crate::spsc`], [`crate::layout`]); no copy,
//! and no syscall on the fast path.
//!
//! Where it comes from: the claim by compare-and-swap on a shared tail, the consumer zeroing
//! what it consumed, and the unblocking of a claim whose writer died follow Aeron's
//! `aeron_mpsc_rb.c` (`aeron_mpsc_rb_try_claim`, `aeron_mpsc_rb_read`,
//! `aeron_mpsc_rb_unblock`). Aeron unblocks on a timeout; here a claim is only ever unblocked
//! when its writer is known dead by its liveness token, so a live but slow writer is never
//! skipped.
//!
//! # Protocol
//!
//! Positions are free-running 64-bit byte counts; the offset of a position in the data area is
//! `pos & (capacity - 1)`. `control().tail` is the shared claim position, `control().head` the
//! consumer's position. The invariant that makes the rest work: **every header word (the first
//! 8 bytes of each 16-byte granule) in `[tail, head + capacity)` reads 0** ("nothing yet"): the
//! ring starts zeroed, and the consumer zeroes what it consumed before it gives it back.
//!
//! A writer claims a record of `fp = align16(8 + len)` bytes:
//! 1. `t = tail` (`Acquire`); if the record does not fit before the end of the data area, a
//!    padding record fills `pad` bytes up to the end first. The claim needs `pad + fp` bytes
//!    below `head + capacity`, checked against a cached head, reloaded (`Acquire`) only when
//!    short.
//! 2. It stores `t` into its slot's `intent` (`Release`), then `tail: t -> t + pad + fp` by CAS
//!    (`AcqRel`); on failure it retries from the tail the CAS returned.
//! 3. It stores the claimed header `{-fp, tag}` at `t + pad`, then (if any) the padding header
//!    `{pad, PADDING}` at `t` (both `Release`), then a `Release` fence before it hands out the
//!    payload. `tag` names the writer: its slot index in the low 16 bits and the low 16 bits of
//!    the slot's `attach_count` above, so a claim of a dead writer is recognized after another
//!    writer took its slot.
//! 4. Commit stores `{8 + n, kind}` over the claimed header (`Release`). A commit shorter than
//!    the claim first writes a padding record over the rest of the claim (when 16 bytes or more
//!    are left), so **a record's space is always what was claimed** and the consumer walks the
//!    ring record by record. An abort turns the whole claim into a padding record: a writer
//!    cannot give space back, other writers may have claimed after it.
//!
//! The consumer reads the header at its head (`Acquire`): a committed record is handed out, a
//! padding record skipped. When it gives records back it zeroes their header words, then stores
//! `head` (`Release`), then wakes writers parked for space.
//!
//! - SYNC POINT A: a writer's `Release` store of a committed (or padding) header pairs with the
//!   consumer's `Acquire` load of it; the padding at a wrap is stored after the claimed header
//!   behind it, so a consumer that passes the padding sees the claim.
//! - SYNC POINT B: the consumer zeroes, then stores `head` (`Release`); a writer loads `head`
//!   (`Acquire`) before it claims that space.
//! - SYNC POINT C: parked flags and futexes as in [`crate::spsc`]: the consumer parks on
//!   `consumer_parked` and any writer wakes it after a commit; writers park on
//!   `producer_parked` (all on one word) and the consumer clears it and wakes them all after a
//!   release. Writers never clear it: another writer may be asleep on it.
//! - SYNC POINT D: a writer's `intent` store is sequenced before its CAS of `tail` (`AcqRel`);
//!   the consumer loads `tail` (`Acquire`) before it loads the intents (`Acquire`). So every
//!   claim below the tail the consumer saw has its intent visible, or a later intent of the
//!   same writer, which that writer stored (`Release`) after the claim's header.
//!
//! # Writers that die
//!
//! A writer killed between claim and commit leaves a claim the consumer would wait for
//! forever. The consumer's slow path ([`Consumer::unblock`], run by the reads every so many
//! empty polls, on every liveness check and before it sleeps) looks at the header at its head
//! when nothing is readable there but the tail is ahead:
//!
//! - **claimed** (`len < 0`): the tag names the writer's slot and attach count. If that slot
//!   has been taken by a newer writer, or its liveness token is no longer held, the claimant
//!   is dead and the header is turned into a padding record of the claimed size (by CAS from the
//!   claimed value). A live writer's claim is never touched.
//! - **nothing yet** (`0`): the claimant died between its CAS and its header store, or is
//!   still about to store it. If a live writer's `intent` equals the head, it may be that
//!   claimant: wait. Otherwise the claimant is dead (SYNC POINT D: a live one's intent would
//!   show). Its claim ends at the next record boundary, which is the first non-zero header word
//!   after the head, or earlier: the tail the consumer loaded, the smallest live writer's intent
//!   ahead of the head (every intent is a value the tail once had, hence a record boundary), or
//!   the end of the data area (no record crosses it). The consumer scans for it, re-checks the
//!   words it passed are still zero (a payload word seen before its header would otherwise look
//!   like a header; Aeron's scan-back), and CASes a padding record over `[head, q)`. Dead
//!   writers' zeroed space is all this padding covers: it never reaches a live writer's record.
//!
//! Everything read from shared memory is checked before use (positions aligned and within a
//! capacity of each other, lengths inside the data area and no larger than the largest record,
//! tags naming a writer slot), so a peer that scribbles on the ring causes a [`Corruption`]
//! error or junk bytes from inside the ring, never an access outside it, a panic or an endless
//! loop.
//!
//! # Examples
//!
//! ```
//! use shmesh_ring::mpsc;
//!
//! let (writers, mut rx) = mpsc::channel(4096, 2)?;
//! let (mut a, mut b) = (writers.writer()?, writers.writer()?);
//! let ga = a.try_claim(1)?; // claimed first: read first
//! let mut gb = b.try_claim(1)?;
//! gb[0] = b'b';
//! gb.commit(1);
//! assert!(rx.try_read().is_err()); // the first claim is not committed yet
//! let mut ga = ga;
//! ga[0] = b'a';
//! ga.commit(1);
//! assert_eq!(&*rx.try_read()?, b"a");
//! assert_eq!(&*rx.try_read()?, b"b");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::counters::Counters;
use crate::error::{AttachError, ClaimError, Corruption, ReadError, TryClaimError, TryReadError};
use crate::layout::{
    align_record, RecordHeader, PADDING, RECORD_ALIGN, RECORD_HEADER, SLOT_ATTACHED, SLOT_CLOSED,
    SLOT_NEVER,
};
use crate::memory::{HeapMemory, PeerState, RingMemory, Track};
use crate::park::{AsyncPark, Look, ParkWord, ASYNC_PARK_SLICE};
use crate::spsc::{check_capacity, decode, encode, max_payload};
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};
use crate::wait::{
    light_wakes, sleeper_fence, waker_fence, Step, WaitStrategy, Waiter, DEGRADED_PARK_SLICE,
};

/// Index of the consumer's endpoint slot.
const CONSUMER_SLOT: usize = 1;
/// Index of the first writer slot.
const FIRST_WRITER_SLOT: usize = 2;
/// How many empty (or full) `try_` calls pass between two looks at the writers' liveness (and,
/// for the consumer, two attempts to unblock a dead writer's claim).
const TRY_SLOW_EVERY: u32 = 1024;
/// How many times in a row a writer may find its tail older than the head before it calls the
/// ring corrupt (an honest consumer cannot overtake that many fresh tails in a row).
const STALE_TAIL_RETRIES: u32 = 1000;

/// Makes an MPSC ring of `capacity` bytes on the heap for up to `writers` writers at once, and
/// returns a factory of writers and the consumer.
///
/// # Errors
///
/// [`AttachError::Capacity`] if `capacity` is not a power of two in
/// `[spsc::MIN_CAPACITY, spsc::MAX_CAPACITY]`.
///
/// # Panics
///
/// If `writers` is 0 or more than 1024 (a bug of the caller, like an impossible capacity of a
/// `Vec`).
///
/// # Examples
///
/// ```
/// let (writers, mut rx) = shmesh_ring::mpsc::channel(1 << 12, 4)?;
/// let handles: Vec<_> = (0..4u8)
///     .map(|id| {
///         let mut tx = writers.writer().unwrap();
///         std::thread::spawn(move || {
///             let mut grant = tx.claim(1).unwrap();
///             grant[0] = id;
///             grant.commit(1);
///         })
///     })
///     .collect();
/// let mut seen: Vec<u8> = (0..4).map(|_| rx.read().unwrap()[0]).collect();
/// seen.sort();
/// assert_eq!(seen, [0, 1, 2, 3]);
/// # for h in handles { h.join().unwrap(); }
/// # Ok::<(), shmesh_ring::AttachError>(())
/// ```
pub fn channel(
    capacity: u64,
    writers: usize,
) -> Result<(Writers, Consumer<HeapMemory>), AttachError> {
    channel_at(capacity, writers, 0)
}

/// Like [`channel`], with both positions starting at `start` (a multiple of 16): for tests of
/// 64-bit position wrap-around.
///
/// # Errors
///
/// As [`channel`], and [`AttachError::StartPosition`] if `start % 16 != 0`.
///
/// # Panics
///
/// As [`channel`].
pub fn channel_at(
    capacity: u64,
    writers: usize,
    start: u64,
) -> Result<(Writers, Consumer<HeapMemory>), AttachError> {
    assert!(
        (1..=crate::layout::MAX_SLOTS - FIRST_WRITER_SLOT).contains(&writers),
        "an MPSC ring has 1 to {} writer slots, not {writers}",
        crate::layout::MAX_SLOTS - FIRST_WRITER_SLOT
    );
    check_capacity(capacity)?;
    if start % RECORD_ALIGN != 0 {
        return Err(AttachError::StartPosition(start));
    }
    let mem = HeapMemory::with_slots(capacity, start, FIRST_WRITER_SLOT + writers, 0);
    mem.attach(CONSUMER_SLOT);
    let consumer = Consumer::new(mem.clone())?;
    Ok((Writers { mem }, consumer))
}

/// Makes [`Writer`]s of a heap MPSC ring ([`channel`]). Cheap to clone; `Send` and `Sync`.
#[derive(Clone)]
pub struct Writers {
    mem: HeapMemory,
}

impl Writers {
    /// Attaches a new writer in a free writer slot: one never used, detached, or whose writer
    /// was [killed](HeapMemory::kill).
    ///
    /// # Errors
    ///
    /// [`AttachError::NoFreeSlot`] when every writer slot is held, `Corrupt` when the ring's
    /// head is impossible.
    pub fn writer(&self) -> Result<Writer<HeapMemory>, AttachError> {
        let slots = self.mem.slot_count();
        let Some(index) = self.mem.attach_free(FIRST_WRITER_SLOT..slots) else {
            return Err(AttachError::NoFreeSlot {
                name: "(heap ring)".to_owned(),
                what: "writer",
                slots: slots - FIRST_WRITER_SLOT,
            });
        };
        // A dead writer's intent must not hold the consumer back once its slot is reused.
        self.mem
            .slot(index)
            .intent
            .store(u64::MAX, Ordering::Release);
        Writer::new(self.mem.clone(), index)
    }

    /// The ring's memory (for tests: [`HeapMemory::kill`] simulates a writer's death).
    pub fn memory(&self) -> &HeapMemory {
        &self.mem
    }

    /// How many writers may be attached at once.
    pub fn max_writers(&self) -> usize {
        self.mem.slot_count() - FIRST_WRITER_SLOT
    }
}

impl fmt::Debug for Writers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writers")
            .field("capacity", &self.mem.capacity())
            .field("max_writers", &self.max_writers())
            .finish()
    }
}

#[cfg(not(loom))]
impl crate::segment::Segment {
    /// Attaches a writer to the MPSC ring in this segment, in the first free writer slot (one
    /// never used, detached, or whose process died; a claim that dead writer left is still
    /// skipped by the consumer).
    ///
    /// # Errors
    ///
    /// [`AttachError::NoFreeSlot`] when all writer slots are held by live writers, `NotARing`
    /// when the segment is not an MPSC ring, `Corrupt`, `Os`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use shmesh_ring::{SegmentBuilder, SegmentKind};
    ///
    /// let seg = SegmentBuilder::new("doc-mpsc")
    ///     .kind(SegmentKind::MpscRing)
    ///     .capacity(1 << 16)
    ///     .endpoints(8)
    ///     .create()?;
    /// let mut rx = seg.mpsc_consumer()?;
    /// // in each writer process:
    /// let mut tx = SegmentBuilder::new("doc-mpsc")
    ///     .kind(SegmentKind::MpscRing)
    ///     .open()?
    ///     .mpsc_writer()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mpsc_writer(&self) -> Result<Writer<crate::segment::ShmMemory>, AttachError> {
        let mem = self.attach_many(
            crate::segment::SegmentKind::MpscRing,
            "an MPSC ring",
            "writer",
            // Taking over a dead writer's slot: its intent must not hold the consumer back.
            // Its claim, if any, stays as it is: its tag names the old attach count.
            |slot| slot.intent.store(u64::MAX, Ordering::Release),
        )?;
        let index = mem.slot_index();
        Writer::new(mem, index)
    }

    /// Attaches as the consumer of the MPSC ring in this segment.
    ///
    /// # Errors
    ///
    /// [`AttachError::Busy`] while another live process is the consumer, `NotARing`,
    /// `Corrupt`, `Os`.
    pub fn mpsc_consumer(&self) -> Result<Consumer<crate::segment::ShmMemory>, AttachError> {
        Consumer::new(self.attach_single(
            crate::segment::SegmentKind::MpscRing,
            "an MPSC ring",
            CONSUMER_SLOT,
            crate::memory::Side::Consumer,
        )?)
    }
}

/// The header word at data offset `off`.
///
/// # Safety
///
/// `off` is a multiple of 16 below the capacity.
#[inline]
unsafe fn header<M: RingMemory>(mem: &M, off: u64) -> &AtomicU64 {
    // SAFETY: forwarded contract.
    unsafe { mem.header(off) }
}

/// The largest record, header included (the largest payload plus its header: a multiple of 16).
#[inline]
fn max_footprint(capacity: u64) -> u64 {
    max_payload(capacity) + RECORD_HEADER
}

/// The tag a writer puts in the kind field of its claimed headers.
#[inline]
fn writer_tag(index: usize, attach_count: u64) -> u32 {
    (index as u32 & 0xffff) | ((attach_count as u32 & 0xffff) << 16)
}

/// Whether the endpoint in slot `index` is attached and holds its liveness token.
fn slot_alive<M: RingMemory>(mem: &M, index: usize) -> bool {
    match mem.slot(index).state.load(Ordering::Acquire) {
        SLOT_NEVER | SLOT_CLOSED => false,
        _ => mem.token_held(index),
    }
}

/// Whether the writer that tagged a claim with `tag` (slot index, attach count) is alive: its
/// slot still counts the attach it made, and its token is held.
fn claimant_alive<M: RingMemory>(mem: &M, index: usize, tag: u32) -> bool {
    let slot = mem.slot(index);
    let state = slot.state.load(Ordering::Acquire);
    if state == SLOT_NEVER || state == SLOT_CLOSED {
        return false;
    }
    let count = slot.attach_count.load(Ordering::Acquire);
    writer_tag(index, count) == tag && mem.token_held(index)
}

/// The consumer's state, as a writer sees it.
fn consumer_state<M: RingMemory>(mem: &M) -> PeerState {
    match mem.slot(CONSUMER_SLOT).state.load(Ordering::Acquire) {
        SLOT_NEVER => PeerState::NotYet,
        SLOT_CLOSED => PeerState::Gone,
        _ if mem.token_held(CONSUMER_SLOT) => PeerState::Alive,
        _ => PeerState::Gone,
    }
}

/// The writers' state, as the consumer sees it: alive if any is; not yet if none ever attached.
fn writers_state<M: RingMemory>(mem: &M) -> PeerState {
    let mut seen = false;
    for index in FIRST_WRITER_SLOT..mem.slot_count() {
        match mem.slot(index).state.load(Ordering::Acquire) {
            SLOT_NEVER => {}
            SLOT_CLOSED => seen = true,
            _ => {
                seen = true;
                if mem.token_held(index) {
                    return PeerState::Alive;
                }
            }
        }
    }
    if seen {
        PeerState::Gone
    } else {
        PeerState::NotYet
    }
}

/// Clears a parked word and wakes its sleepers, if the word says someone sleeps (SYNC POINT C,
/// waker side: the caller has just made its progress visible).
#[inline]
fn wake_if_parked<M: RingMemory>(mem: &M, word: &AtomicU32, light: bool) {
    // SYNC POINT C: pairs with `sleeper_fence` in the sleeper's park.
    waker_fence(light);
    if word.load(Ordering::Relaxed) != 0 && word.swap(0, Ordering::AcqRel) != 0 {
        mem.futex_wake(word);
    }
}

/// How long to sleep: the waiter's slice, or at most [`DEGRADED_PARK_SLICE`] when the heavy
/// barrier failed and a light waker might miss us.
#[inline]
fn park_slice(slice: Duration, barrier_ok: bool) -> Duration {
    if barrier_ok {
        slice
    } else {
        slice.min(DEGRADED_PARK_SLICE)
    }
}

/// Marks slot `index` detached and wakes whoever sleeps on `word`, so it notices at once.
fn detach<M: RingMemory>(mem: &M, index: usize, word: &AtomicU32) {
    mem.slot(index).state.store(SLOT_CLOSED, Ordering::Release);
    // A full fence: cheap enough here, and right whatever the sleeper's barrier.
    wake_if_parked(mem, word, false);
}

fn misaligned(what: &'static str, found: u64) -> Corruption {
    Corruption {
        what,
        found,
        expected: format!("a multiple of {RECORD_ALIGN}"),
    }
}

fn overfull(used: u64, cap: u64) -> Corruption {
    Corruption {
        what: "ring fill level (tail - head)",
        found: used,
        expected: format!("at most the capacity {cap}"),
    }
}

/// A run of `try_` calls that found the ring empty (or full); every [`TRY_SLOW_EVERY`]th takes
/// the slow path.
#[derive(Debug, Default)]
struct SlowPath {
    misses: u32,
}

impl SlowPath {
    #[inline]
    fn due(&mut self) -> bool {
        self.misses = self.misses.wrapping_add(1);
        self.misses % TRY_SLOW_EVERY == 0
    }

    #[inline]
    fn reset(&mut self) {
        self.misses = 0;
    }
}

/// Where a claimed record lies.
#[derive(Debug, Clone, Copy)]
struct Reserved {
    /// Position of the record header (after the padding at a wrap, if any).
    pos: u64,
    /// Bytes claimed for the record, header included.
    footprint: u64,
    /// Claimed payload length.
    len: u64,
}

/// One writer of an MPSC ring. `Send`, not `Sync`: one thread writes through it; make one
/// writer per thread ([`Writers::writer`], [`Segment::mpsc_writer`](crate::Segment::mpsc_writer)).
///
/// Records of one writer reach the consumer in the order it claimed them; records of different
/// writers in the order their claims won the tail.
pub struct Writer<M: RingMemory> {
    mem: M,
    mask: u64,
    max_payload: u64,
    /// This writer's endpoint slot.
    index: usize,
    /// What its claimed headers carry in their kind field (see [`writer_tag`]).
    tag: u32,
    /// The consumer's head as last loaded.
    cached_head: u64,
    wait: WaitStrategy,
    slow: SlowPath,
    /// Whether this process wakes with a compiler fence only (see [`crate::wait`]).
    light: bool,
    counters: Counters,
    _not_sync: PhantomData<Cell<()>>,
}

impl<M: RingMemory> Writer<M> {
    /// Takes writer slot `index` of the ring in `mem`, whose liveness token the caller holds and
    /// whose state already says attached.
    pub(crate) fn new(mem: M, index: usize) -> Result<Self, AttachError> {
        let cap = mem.capacity();
        let head = mem.control().head.0.load(Ordering::Acquire);
        if head % RECORD_ALIGN != 0 {
            mem.slot(index).state.store(SLOT_CLOSED, Ordering::Release);
            return Err(misaligned("ring head position", head).into());
        }
        let slot = mem.slot(index);
        Ok(Writer {
            mask: cap - 1,
            max_payload: max_payload(cap),
            index,
            tag: writer_tag(index, slot.attach_count.load(Ordering::Relaxed)),
            cached_head: head,
            wait: WaitStrategy::default(),
            slow: SlowPath::default(),
            light: light_wakes(),
            counters: Counters::resume(slot),
            _not_sync: PhantomData,
            mem,
        })
    }

    /// Capacity of the data area in bytes.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The largest payload [`try_claim`](Self::try_claim) accepts: `capacity / 2 - 24` (at most
    /// 1 GiB - 24), as for the SPSC ring.
    pub fn max_payload(&self) -> u64 {
        self.max_payload
    }

    /// How the blocking calls wait for space.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.wait
    }

    /// Sets how the blocking calls wait for space.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// The consumer's state. Asks the liveness token: a syscall on shared memory.
    pub fn peer(&self) -> PeerState {
        consumer_state(&self.mem)
    }

    /// The memory this ring lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The index of this writer's endpoint slot (2 and up).
    pub fn slot_index(&self) -> usize {
        self.index
    }

    /// Claims space for a record of `len` payload bytes without waiting.
    ///
    /// The [`Grant`] derefs to the payload (`len` bytes in the ring, 16-byte aligned); commit it
    /// to publish the record, or drop or [`abort`](Grant::abort) it to turn the space into
    /// padding. Until it is committed or aborted, the consumer waits at this record: records
    /// other writers claimed after it are read after it.
    ///
    /// # Errors
    ///
    /// [`TryClaimError::Full`] when there is not enough space now, `TooLarge` when `len` exceeds
    /// [`max_payload`](Self::max_payload), `PeerGone` when the ring is full and the consumer is
    /// gone, `Corrupt` when the ring's positions are impossible.
    ///
    /// # Examples
    ///
    /// ```
    /// let (writers, mut rx) = shmesh_ring::mpsc::channel(128, 1)?;
    /// let mut tx = writers.writer()?;
    /// let mut grant = tx.try_claim(40)?;
    /// grant[..2].copy_from_slice(b"hi");
    /// grant.commit(2); // commit may be shorter than the claim
    /// assert_eq!(&*rx.try_read()?, b"hi");
    /// assert!(matches!(tx.try_claim(1000), Err(shmesh_ring::TryClaimError::TooLarge { max: 40, .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_claim(&mut self, len: usize) -> Result<Grant<'_, M>, TryClaimError> {
        let reserved = self.try_reserve(len as u64)?;
        Ok(Grant::new(self, reserved))
    }

    /// Claims space for a record, waiting with the [wait strategy](Self::set_wait_strategy)
    /// while the ring is full.
    ///
    /// # Errors
    ///
    /// [`ClaimError::TooLarge`], `PeerGone` (the consumer is gone and the ring is full) or
    /// `Corrupt`; never `Timeout`.
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
    /// succeed now. Unlike the SPSC ring, other writers may take the space before this writer
    /// claims: the next [`try_claim`](Self::try_claim) can still find the ring full.
    ///
    /// # Errors
    ///
    /// As [`try_claim`](Self::try_claim).
    pub fn check_space(&mut self, len: usize) -> Result<(), TryClaimError> {
        let footprint = self.footprint_of(len as u64)?;
        let mut t = self.mem.control().tail.0.load(Ordering::Acquire);
        let mut stale = 0;
        loop {
            match self.fit(t, footprint, &mut stale) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(fresh)) => t = fresh,
                Err(e) => {
                    self.clear_intent();
                    return Err(e);
                }
            }
        }
    }

    /// Waits until a claim of `len` bytes would succeed, without claiming (as
    /// [`check_space`](Self::check_space): other writers may take the space first). For callers
    /// that wait in slices, checking something else in between.
    ///
    /// # Errors
    ///
    /// As [`claim_timeout`](Self::claim_timeout).
    pub fn wait_for_space(&mut self, len: usize, timeout: Duration) -> Result<(), ClaimError> {
        let deadline = Instant::now().checked_add(timeout);
        match self.check_space(len) {
            Err(TryClaimError::Full { .. }) => {}
            other => return other.map_err(ClaimError::from),
        }
        self.wait_full(deadline, |w| w.check_space(len))
    }

    /// The record footprint of a payload of `len` bytes, or `TooLarge`.
    #[inline]
    fn footprint_of(&self, len: u64) -> Result<u64, TryClaimError> {
        if len > self.max_payload {
            return Err(TryClaimError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        Ok(align_record(RECORD_HEADER + len))
    }

    /// Whether a record of `footprint` bytes fits at tail `t`: `Ok(Ok(pad))` with the padding
    /// it needs before it, `Ok(Err(tail))` to try again from a fresher tail (`t` was older than
    /// the head), or why it cannot.
    #[inline]
    fn fit(
        &mut self,
        t: u64,
        footprint: u64,
        stale: &mut u32,
    ) -> Result<Result<u64, u64>, TryClaimError> {
        let cap = self.capacity();
        if t % RECORD_ALIGN != 0 {
            return Err(misaligned("ring tail position", t).into());
        }
        let to_end = cap - (t & self.mask);
        let pad = if footprint <= to_end { 0 } else { to_end };
        let needed = pad + footprint;
        let used = t.wrapping_sub(self.cached_head);
        if used <= cap && cap - used >= needed {
            return Ok(Ok(pad));
        }
        // SYNC POINT B (Acquire): pairs with the consumer's Release store of `head`, made after
        // it zeroed the space below it.
        let head = self.mem.control().head.0.load(Ordering::Acquire);
        if head % RECORD_ALIGN != 0 {
            return Err(misaligned("ring head position", head).into());
        }
        let used = t.wrapping_sub(head);
        if used > cap {
            // `t` may be older than `head` (the consumer read past it since we loaded it): the
            // tail loaded after the head is within a capacity of it in an honest ring.
            *stale += 1;
            let fresh = self.mem.control().tail.0.load(Ordering::Acquire);
            let fresh_used = fresh.wrapping_sub(head);
            if fresh_used > cap || *stale > STALE_TAIL_RETRIES {
                return Err(overfull(fresh_used, cap).into());
            }
            self.cached_head = head;
            return Ok(Err(fresh));
        }
        self.cached_head = head;
        let free = cap - used;
        if free >= needed {
            return Ok(Ok(pad));
        }
        if self.slow.due() && consumer_state(&self.mem) == PeerState::Gone {
            return Err(TryClaimError::PeerGone);
        }
        Err(TryClaimError::Full { needed, free })
    }

    /// Forgets this writer's intent: after a failed claim it must not hold the consumer back
    /// (SYNC POINT D: stored after any claim header of ours, hence `Release`).
    #[inline]
    fn clear_intent(&self) {
        self.mem
            .slot(self.index)
            .intent
            .store(u64::MAX, Ordering::Release);
    }

    fn try_reserve(&mut self, len: u64) -> Result<Reserved, TryClaimError> {
        let footprint = self.footprint_of(len)?;
        let control = self.mem.control();
        let mut t = control.tail.0.load(Ordering::Acquire);
        let mut stale = 0;
        let pad = loop {
            let pad = match self.fit(t, footprint, &mut stale) {
                Ok(Ok(pad)) => pad,
                Ok(Err(fresh)) => {
                    t = fresh;
                    continue;
                }
                Err(e) => {
                    self.clear_intent();
                    return Err(e);
                }
            };
            // SYNC POINT D: the intent is visible to a consumer that sees the tail this CAS
            // stores (the CAS releases it, and later CASes continue its release sequence).
            self.mem.slot(self.index).intent.store(t, Ordering::Release);
            match self.mem.control().tail.0.compare_exchange(
                t,
                t.wrapping_add(pad + footprint),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break pad,
                Err(now) => t = now,
            }
        };
        self.slow.reset();
        let pos = t.wrapping_add(pad);
        // The claimed header first, then the padding before it: a consumer that passes the
        // padding (SYNC POINT A) then sees the claim, never a zero that would look abandoned.
        let claimed = encode(-(footprint as i32), self.tag);
        // SAFETY: `t` is 16-aligned (checked in `fit`) and so is `pad`; masked below capacity.
        unsafe { header(&self.mem, pos & self.mask) }.store(claimed, Ordering::Release);
        if pad != 0 {
            // SAFETY: as above.
            unsafe { header(&self.mem, t & self.mask) }
                .store(encode(pad as i32, PADDING), Ordering::Release);
        }
        // The claimed header is ordered before the payload the caller writes next, so a
        // consumer scanning for a dead writer's record end never takes a payload word of a
        // record whose header it cannot see for a header (see `Consumer::unblock`).
        fence(Ordering::Release);
        Ok(Reserved {
            pos,
            footprint,
            len,
        })
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
        self.wait_full(deadline, |w| w.try_reserve(len))
    }

    /// Waits, with the wait strategy, until `attempt` stops finding the ring full.
    fn wait_full<T>(
        &mut self,
        deadline: Option<Instant>,
        mut attempt: impl FnMut(&mut Self) -> Result<T, TryClaimError>,
    ) -> Result<T, ClaimError> {
        self.counters.wait();
        self.counters.flush(self.mem.slot(self.index));
        let mut waiter = Waiter::new(self.wait, deadline);
        loop {
            match waiter.next() {
                Step::Retry => {}
                Step::TimedOut => return Err(ClaimError::Timeout),
                Step::CheckPeer => {
                    if self.peer() == PeerState::Gone {
                        return Self::or_gone(attempt(self));
                    }
                }
                Step::Park(slice) => {
                    // Writers share this word; none of them clears it (another may sleep on
                    // it): the consumer does, when it wakes them.
                    let word = &self.mem.control().producer_parked.0;
                    word.store(1, Ordering::Relaxed);
                    // SYNC POINT C: pairs with the consumer's `wake_if_parked` after a release.
                    let slice = park_slice(slice, sleeper_fence());
                    match attempt(self) {
                        Err(TryClaimError::Full { .. }) => {}
                        other => return other.map_err(ClaimError::from),
                    }
                    if self.peer() == PeerState::Gone {
                        return Self::or_gone(attempt(self));
                    }
                    let word = &self.mem.control().producer_parked.0;
                    self.mem.futex_wait(word, 1, Some(slice));
                }
            }
            match attempt(self) {
                Err(TryClaimError::Full { .. }) => {}
                other => return other.map_err(ClaimError::from),
            }
        }
    }

    /// The last try once the consumer is known gone: space it released before leaving can still
    /// be used; a full ring is final.
    fn or_gone<T>(result: Result<T, TryClaimError>) -> Result<T, ClaimError> {
        result.map_err(|e| match e {
            TryClaimError::Full { .. } => ClaimError::PeerGone,
            other => other.into(),
        })
    }
}

impl<M: RingMemory> Writer<M> {
    /// Whether this writer still holds its slot. Always true but for a writer "killed" on the
    /// heap ([`HeapMemory::kill`]): like a killed process, it must not touch the ring again.
    #[inline]
    fn attached(&self) -> bool {
        self.mem.slot(self.index).state.load(Ordering::Relaxed) == SLOT_ATTACHED
    }
}

impl<M: RingMemory> Drop for Writer<M> {
    fn drop(&mut self) {
        if self.attached() {
            let word = &self.mem.control().consumer_parked.0;
            detach(&self.mem, self.index, word);
        }
    }
}

impl<M: RingMemory> fmt::Debug for Writer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("capacity", &self.capacity())
            .field("slot", &self.index)
            .field("cached_head", &self.cached_head)
            .field("wait", &self.wait)
            .finish()
    }
}

/// Space claimed in an MPSC ring for one record; derefs to its payload bytes.
///
/// [`commit`](Self::commit) publishes it; dropping it without committing (or
/// [`abort`](Self::abort)) turns its space into padding that the consumer skips. Until then the
/// consumer waits at this record (it reads records in claim order).
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

    /// Publishes the first `len` payload bytes as a record. The rest of the claim becomes
    /// padding: in an MPSC ring later claims may already follow this one.
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
        let writer = &mut *self.writer;
        let Reserved { pos, footprint, .. } = self.reserved;
        let used = align_record(RECORD_HEADER + len);
        if used < footprint {
            // The rest of the claim, as a padding record the consumer reaches through this
            // record's header (whose Release store below publishes it).
            // SAFETY: `pos + used` is 16-aligned and inside the claim; masked.
            unsafe { header(&writer.mem, pos.wrapping_add(used) & writer.mask) }.store(
                encode((footprint - used) as i32, PADDING),
                Ordering::Relaxed,
            );
        }
        // SYNC POINT A (Release): pairs with the consumer's Acquire load of this header.
        // SAFETY: `pos` is 16-aligned; masked.
        unsafe { header(&writer.mem, pos & writer.mask) }.store(
            encode((RECORD_HEADER + len) as i32, self.kind),
            Ordering::Release,
        );
        self.done = true;
        wake_if_parked(
            &writer.mem,
            &writer.mem.control().consumer_parked.0,
            writer.light,
        );
        writer.counters.message(len);
        writer.counters.flush(writer.mem.slot(writer.index));
    }

    /// Gives the claim up: its space becomes padding, the record never existed.
    pub fn abort(self) {}

    /// The position of this record in the ring (for diagnostics).
    pub fn position(&self) -> u64 {
        self.reserved.pos
    }
}

impl<M: RingMemory> Drop for Grant<'_, M> {
    fn drop(&mut self) {
        if !self.done {
            self.track.end();
            let writer = &*self.writer;
            if !writer.attached() {
                return; // killed (on the heap): a dead writer leaves its claim as it is
            }
            let Reserved { pos, footprint, .. } = self.reserved;
            // SYNC POINT A (Release): the consumer skips the padding and reads on.
            // SAFETY: `pos` is 16-aligned; masked.
            unsafe { header(&writer.mem, pos & writer.mask) }
                .store(encode(footprint as i32, PADDING), Ordering::Release);
            wake_if_parked(
                &writer.mem,
                &writer.mem.control().consumer_parked.0,
                writer.light,
            );
        }
    }
}

impl<M: RingMemory> Deref for Grant<'_, M> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let off = (self.reserved.pos & self.writer.mask) + RECORD_HEADER;
        // SAFETY: `[off, off + len)` is inside the data area (a record never crosses its end)
        // and this writer's alone until commit: no other writer claims it (the tail moved past
        // it by our CAS) and the consumer reads it only after the commit's header store;
        // `&self` borrows the grant, so no `&mut` to it exists.
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
    pos: u64,
    len: u64,
    kind: u32,
    end: u64,
}

/// The reading end of an MPSC ring. `Send`, not `Sync`: one thread reads.
///
/// A consumer that takes over from one that died starts at the last released position: records
/// the dead consumer had read but not released are delivered again, unless it died while
/// zeroing them (between zeroing and storing its head), in which case the zeroed ones are
/// skipped as abandoned space.
pub struct Consumer<M: RingMemory> {
    mem: M,
    mask: u64,
    max_footprint: u64,
    /// Next position to read (padding already skipped, maybe not yet released).
    head: u64,
    /// The last head stored to the control block; everything below it is zeroed.
    released: u64,
    wait: WaitStrategy,
    slow: SlowPath,
    /// Whether this process wakes with a compiler fence only (see [`crate::wait`]).
    light: bool,
    counters: Counters,
    /// While set, a wait goes on when no writer is attached ([`Consumer::wait_for_record`]).
    outlive_writers: bool,
    /// The async wait's helper thread, started on the first async wait ([`crate::park`]).
    park: Option<AsyncPark>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<M: RingMemory> Consumer<M> {
    /// Takes the consumer end of the ring in `mem`, whose liveness token the caller holds.
    pub(crate) fn new(mem: M) -> Result<Self, AttachError> {
        let cap = mem.capacity();
        let head = mem.control().head.0.load(Ordering::Acquire);
        if head % RECORD_ALIGN != 0 {
            mem.slot(CONSUMER_SLOT)
                .state
                .store(SLOT_CLOSED, Ordering::Release);
            return Err(misaligned("ring head position", head).into());
        }
        Ok(Consumer {
            mask: cap - 1,
            max_footprint: max_footprint(cap),
            head,
            released: head,
            wait: WaitStrategy::default(),
            slow: SlowPath::default(),
            light: light_wakes(),
            counters: Counters::resume(mem.slot(CONSUMER_SLOT)),
            outlive_writers: false,
            park: None,
            _not_sync: PhantomData,
            mem,
        })
    }

    /// Waits up to `timeout` until a record can be read, like
    /// [`wait_timeout`](Self::wait_timeout), but goes on waiting while no writer is attached:
    /// for a consumer that outlives its writers, such as a server whose clients come and go.
    /// It sleeps on the futex (a new writer's first commit wakes it), so waiting with no writer
    /// costs nothing.
    ///
    /// # Errors
    ///
    /// [`ReadError::Timeout`], `Corrupt`. Never `PeerGone`.
    pub fn wait_for_record(&mut self, timeout: Duration) -> Result<(), ReadError> {
        self.outlive_writers = true;
        let result = self.next_until(Instant::now().checked_add(timeout));
        self.outlive_writers = false;
        result.map(drop)
    }

    /// Capacity of the data area in bytes.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// How the blocking calls wait for records.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.wait
    }

    /// Sets how the blocking calls wait for records.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// The writers' state: `Alive` if any writer is, `NotYet` if none ever attached, `Gone`
    /// otherwise. Asks the liveness tokens: syscalls on shared memory.
    pub fn peer(&self) -> PeerState {
        writers_state(&self.mem)
    }

    /// The memory this ring lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Reads the next record without waiting. The [`Record`] borrows the bytes in the ring and
    /// releases them when dropped.
    ///
    /// Every so many calls that find nothing it also takes the slow path: it moves past a
    /// claim whose writer died ([`unblock`](Self::unblock)) and looks whether any writer is
    /// left.
    ///
    /// # Errors
    ///
    /// [`TryReadError::Empty`] when nothing is committed at the head now, `PeerGone` when all
    /// writers are gone and everything they committed was read, `Corrupt` when the ring's state
    /// is impossible.
    pub fn try_read(&mut self) -> Result<Record<'_, M>, TryReadError> {
        let next = self.try_next()?;
        Ok(Record::new(self, next, true))
    }

    /// Reads the next record, waiting with the [wait strategy](Self::set_wait_strategy).
    ///
    /// # Errors
    ///
    /// [`ReadError::PeerGone`] when all writers are gone and everything they committed was
    /// read, `Corrupt`; never `Timeout`.
    pub fn read(&mut self) -> Result<Record<'_, M>, ReadError> {
        let next = self.next_until(None)?;
        Ok(Record::new(self, next, true))
    }

    /// Like [`read`](Self::read), giving up after `timeout` (`Duration::MAX`: never).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), and [`ReadError::Timeout`].
    pub fn read_timeout(&mut self, timeout: Duration) -> Result<Record<'_, M>, ReadError> {
        let next = self.next_until(Instant::now().checked_add(timeout))?;
        Ok(Record::new(self, next, true))
    }

    /// Checks, without reading and without waiting, whether a record can be read now: if so,
    /// the next [`try_read`](Self::try_read) returns it.
    ///
    /// # Errors
    ///
    /// As [`try_read`](Self::try_read).
    pub fn check_record(&mut self) -> Result<(), TryReadError> {
        self.try_next().map(drop)
    }

    /// Waits until a record can be read (or all writers are gone with nothing left), without
    /// reading it: the next [`try_read`](Self::try_read) then returns the record.
    ///
    /// # Errors
    ///
    /// As [`read_timeout`](Self::read_timeout).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<(), ReadError> {
        self.next_until(Instant::now().checked_add(timeout))
            .map(drop)
    }

    /// Starts a batch: records read through it are released together, with one index store,
    /// when the batch is dropped.
    pub fn batch(&mut self) -> ReadBatch<'_, M> {
        ReadBatch { consumer: self }
    }

    /// Moves past a claim whose writer died, if the head is stuck at one: turns it into padding
    /// (see the module docs). Returns whether it did. A live writer's claim is never touched,
    /// however long it takes.
    ///
    /// The reads call this on their slow path; call it yourself only from a poll loop of your
    /// own that uses [`check_record`](Self::check_record) or [`try_read`](Self::try_read) and
    /// wants to notice a dead writer sooner.
    ///
    /// # Errors
    ///
    /// [`Corruption`] when the claim or the ring's positions are impossible.
    pub fn unblock(&mut self) -> Result<bool, Corruption> {
        let cap = self.capacity();
        let off = self.head & self.mask;
        // SAFETY: `head` is 16-aligned (checked at attach, advanced by checked footprints) and
        // masked.
        let at_head = unsafe { header(&self.mem, off) };
        let word = at_head.load(Ordering::Acquire);
        let h = decode(word);
        if h.len > 0 {
            return Ok(false); // readable: nothing to unblock
        }
        // SYNC POINT D (Acquire): every claim below this tail has its intent visible below.
        let tail = self.mem.control().tail.0.load(Ordering::Acquire);
        let ahead = tail.wrapping_sub(self.head);
        if ahead > cap {
            return Err(overfull(ahead, cap));
        }
        if tail % RECORD_ALIGN != 0 {
            return Err(misaligned("ring tail position", tail));
        }
        if ahead == 0 {
            return Ok(false); // empty
        }
        let to_end = cap - off;
        if h.len < 0 {
            // A claim: skip it only if its writer is dead.
            let footprint = u64::from(h.len.unsigned_abs());
            if footprint % RECORD_ALIGN != 0
                || footprint > self.max_footprint
                || footprint > to_end
                || footprint > ahead
            {
                return Err(Corruption {
                    what: "claimed record length",
                    found: footprint,
                    expected: format!(
                        "a multiple of {RECORD_ALIGN} up to {} (the largest record, the end of \
                         the data area and the tail)",
                        self.max_footprint.min(to_end).min(ahead)
                    ),
                });
            }
            let index = (h.kind & 0xffff) as usize;
            if !(FIRST_WRITER_SLOT..self.mem.slot_count()).contains(&index) {
                return Err(Corruption {
                    what: "claiming writer slot",
                    found: index as u64,
                    expected: format!("{FIRST_WRITER_SLOT} to {}", self.mem.slot_count() - 1),
                });
            }
            if claimant_alive(&self.mem, index, h.kind) {
                return Ok(false);
            }
            let padding = encode(footprint as i32, PADDING);
            return Ok(at_head
                .compare_exchange(word, padding, Ordering::AcqRel, Ordering::Acquire)
                .is_ok());
        }
        // Nothing at the head yet. The record boundary the abandoned space ends at is at most
        // the tail, the end of the data area, or any live writer's intent ahead of the head;
        // and the padding is at most the largest record (a longer run is several dead claims,
        // padded one piece at a time).
        let mut limit = ahead.min(to_end).min(self.max_footprint);
        for index in FIRST_WRITER_SLOT..self.mem.slot_count() {
            // SYNC POINT D (Acquire): pairs with the writers' Release stores of their intent.
            let intent = self.mem.slot(index).intent.load(Ordering::Acquire);
            let distance = intent.wrapping_sub(self.head);
            if distance < limit && slot_alive(&self.mem, index) {
                if distance == 0 {
                    // A live writer is claiming (or just claimed) here: it may be slow, never
                    // skip it.
                    return Ok(false);
                }
                limit = distance;
            }
        }
        // A writer whose intent we saw move on stored its header before: look again.
        if at_head.load(Ordering::Acquire) != 0 {
            return Ok(false);
        }
        let word_at = |distance: u64| {
            // SAFETY: `head + distance` is 16-aligned, masked.
            unsafe { header(&self.mem, self.head.wrapping_add(distance) & self.mask) }
                .load(Ordering::Acquire)
        };
        let mut end = RECORD_ALIGN;
        while end < limit && word_at(end) == 0 {
            end += RECORD_ALIGN;
        }
        // Scan back: a non-zero word seen with Acquire makes the header stored before it (on
        // the writer's side, with a Release fence between) visible, so if it was a payload word
        // of a record starting between, that record's header now shows.
        let mut back = end;
        while back > RECORD_ALIGN {
            back -= RECORD_ALIGN;
            if word_at(back) != 0 {
                return Ok(false);
            }
        }
        let padding = encode(end as i32, PADDING);
        Ok(at_head
            .compare_exchange(0, padding, Ordering::AcqRel, Ordering::Acquire)
            .is_ok())
    }

    /// The footprint of the record (or padding) with header `h` at offset `off`, every length
    /// another process wrote checked: inside the data area, no larger than the largest record.
    #[inline]
    fn footprint(&self, h: RecordHeader, off: u64) -> Result<u64, Corruption> {
        let len = h.len as u64;
        let footprint = align_record(len);
        let limit = self.max_footprint.min(self.capacity() - off);
        if h.kind == PADDING {
            if footprint > limit {
                return Err(Corruption {
                    what: "padding record length",
                    found: len,
                    expected: format!("1 to {limit} (inside the data area)"),
                });
            }
        } else if len < RECORD_HEADER || footprint > limit {
            return Err(Corruption {
                what: "record length",
                found: len,
                expected: format!(
                    "{RECORD_HEADER} to {limit} (header included; the largest record, and inside \
                     the data area)"
                ),
            });
        }
        Ok(footprint)
    }

    /// Finds the next committed record, skipping padding; `None` when there is none now (then
    /// any padding skipped is released at once: writers may be waiting for that space).
    fn poll(&mut self) -> Result<Option<Next>, Corruption> {
        let cap = self.capacity();
        let mut skipped = 0u64;
        loop {
            if self.head.wrapping_sub(self.released) >= cap {
                // A batch read a whole lap: the header at the head is the first one it read, not
                // yet zeroed. Release first (no record is borrowed while we poll).
                self.release();
            }
            let off = self.head & self.mask;
            // SYNC POINT A (Acquire): pairs with a writer's Release store of this header.
            // SAFETY: `head` is 16-aligned and masked.
            let word = unsafe { header(&self.mem, off) }.load(Ordering::Acquire);
            let h = decode(word);
            if h.len <= 0 {
                self.release();
                return Ok(None);
            }
            let footprint = self.footprint(h, off)?;
            let end = self.head.wrapping_add(footprint);
            if h.kind == PADDING {
                self.head = end;
                skipped += footprint;
                if skipped >= cap {
                    // An honest ring never holds a lap of padding: stop here, bounded.
                    self.release();
                    return Ok(None);
                }
                continue;
            }
            return Ok(Some(Next {
                pos: self.head,
                len: h.len as u64 - RECORD_HEADER,
                kind: h.kind,
                end,
            }));
        }
    }

    /// The slow path of a read that found nothing: unblock a dead writer's claim, and when all
    /// writers are gone, drain what they left and report `PeerGone`.
    /// Polls for a record without blocking the thread, for async code: `Ready(Ok(()))` when one
    /// can be read now, `Pending` after arranging for the task to be woken (by a writer's
    /// commit, through this consumer's helper thread sleeping on the futex, or every
    /// [`ASYNC_PARK_SLICE`] to look at the writers' liveness), as
    /// [`spsc::Consumer::poll_readable`](crate::spsc::Consumer::poll_readable).
    ///
    /// # Errors
    ///
    /// [`ReadError::PeerGone`] once every writer is gone and everything was read; `Corrupt`.
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the helper thread.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReadError>> {
        let mut park = match self.park.take() {
            Some(park) => park,
            None => AsyncPark::new(ParkWord::consumer_parked(&self.mem)),
        };
        let poll = park.poll(cx, ASYNC_PARK_SLICE, |look| self.look_async(look));
        self.park = Some(park);
        poll.map(|found| found.map(drop))
    }

    /// A look at the ring for [`AsyncPark::poll`]: the next record and, once the parked word is
    /// armed, the slow path (abandoned claims, the writers' liveness), as `next_until` does
    /// before it sleeps.
    fn look_async(&mut self, look: Look) -> Result<Option<Next>, ReadError> {
        if let Some(next) = self.poll()? {
            return Ok(Some(next));
        }
        match look {
            Look::First => {
                self.release();
                Ok(None)
            }
            Look::Armed => {
                self.counters.wait();
                match self.slow_path() {
                    Ok(next) => Ok(Some(next)),
                    Err(TryReadError::Empty) => Ok(None),
                    Err(TryReadError::PeerGone) => Err(ReadError::PeerGone),
                    Err(TryReadError::Corrupt(c)) => Err(ReadError::Corrupt(c)),
                }
            }
        }
    }

    fn slow_path(&mut self) -> Result<Next, TryReadError> {
        if self.unblock()? {
            if let Some(next) = self.poll()? {
                return Ok(next);
            }
        }
        if writers_state(&self.mem) != PeerState::Gone {
            return Err(TryReadError::Empty);
        }
        // No writer is left: what they committed is visible now, and every claim still open
        // is abandoned. Each round either reads, or pads at least 16 bytes of an honest ring.
        for _ in 0..=self.capacity() / RECORD_ALIGN {
            if let Some(next) = self.poll()? {
                return Ok(next);
            }
            if !self.unblock()? {
                break;
            }
        }
        let tail = self.mem.control().tail.0.load(Ordering::Acquire);
        if tail == self.head {
            Err(TryReadError::PeerGone)
        } else {
            Err(TryReadError::Empty)
        }
    }

    fn try_next(&mut self) -> Result<Next, TryReadError> {
        if let Some(next) = self.poll()? {
            self.slow.reset();
            return Ok(next);
        }
        if self.slow.due() {
            return self.slow_path();
        }
        Err(TryReadError::Empty)
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Result<Next, ReadError> {
        if let Some(next) = self.poll()? {
            return Ok(next);
        }
        let mut waiter = Waiter::new(self.wait, deadline);
        let slow = |c: &mut Self| match c.slow_path() {
            Ok(next) => Ok(Some(next)),
            Err(TryReadError::Empty) => Ok(None),
            Err(TryReadError::PeerGone) if c.outlive_writers => Ok(None),
            Err(TryReadError::PeerGone) => Err(ReadError::PeerGone),
            Err(TryReadError::Corrupt(e)) => Err(ReadError::Corrupt(e)),
        };
        loop {
            match waiter.next() {
                Step::Retry => {}
                Step::TimedOut => return Err(ReadError::Timeout),
                Step::CheckPeer => {
                    if let Some(next) = slow(self)? {
                        return Ok(next);
                    }
                }
                Step::Park(slice) => {
                    self.counters.wait();
                    let word = &self.mem.control().consumer_parked.0;
                    word.store(1, Ordering::Relaxed);
                    // SYNC POINT C: pairs with the writers' `wake_if_parked` after a commit.
                    let slice = park_slice(slice, sleeper_fence());
                    let found = match self.poll() {
                        Ok(Some(next)) => Ok(Some(next)),
                        Ok(None) => slow(self),
                        Err(e) => Err(e.into()),
                    };
                    let word = &self.mem.control().consumer_parked.0;
                    match found {
                        Ok(None) => {
                            self.mem.futex_wait(word, 1, Some(slice));
                            word.store(0, Ordering::Relaxed);
                        }
                        other => {
                            word.store(0, Ordering::Relaxed);
                            if let Some(next) = other? {
                                return Ok(next);
                            }
                        }
                    }
                }
            }
            if let Some(next) = self.poll()? {
                return Ok(next);
            }
        }
    }

    /// Zeroes the header words of everything read since the last release, stores the head,
    /// and wakes writers waiting for space.
    fn release(&mut self) {
        if self.head == self.released {
            return;
        }
        // Under loom: the zeroing is a write to these bytes, which no writer may touch now.
        let mut track = Track::default();
        let mut pos = self.released;
        while pos != self.head {
            let off = pos & self.mask;
            let run = (self.capacity() - off).min(self.head.wrapping_sub(pos));
            track.add(&self.mem, off, run, true);
            let mut p = 0;
            while p < run {
                // Restores "nothing yet" for the next lap (see the module docs).
                // SAFETY: `off + p` is 16-aligned (positions and footprints are) and below
                // the capacity (`run` stops at the end of the data area).
                unsafe { header(&self.mem, off + p) }.store(0, Ordering::Relaxed);
                p += RECORD_ALIGN;
            }
            pos = pos.wrapping_add(run);
        }
        track.end();
        self.released = self.head;
        // SYNC POINT B (Release): pairs with the writers' Acquire load of `head`.
        self.mem
            .control()
            .head
            .0
            .store(self.head, Ordering::Release);
        wake_if_parked(&self.mem, &self.mem.control().producer_parked.0, self.light);
        self.counters.flush(self.mem.slot(CONSUMER_SLOT));
    }
}

impl<M: RingMemory> Drop for Consumer<M> {
    fn drop(&mut self) {
        self.release();
        let word = &self.mem.control().producer_parked.0;
        detach(&self.mem, CONSUMER_SLOT, word);
    }
}

impl<M: RingMemory> fmt::Debug for Consumer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("head", &self.head)
            .field("released", &self.released)
            .field("wait", &self.wait)
            .finish()
    }
}

/// One record, borrowed in place from an MPSC ring; derefs to its payload. Dropping it
/// releases the space to the writers (or, in a [`ReadBatch`], when the batch ends).
///
/// The bytes live in memory other processes can write: as for [`crate::spsc::Record`], copy the
/// record out before validating it if the writers are not trusted.
pub struct Record<'a, M: RingMemory> {
    consumer: &'a mut Consumer<M>,
    next: Next,
    release: bool,
    /// Leave the record unread on drop ([`Record::keep`]).
    keep: bool,
    /// Held while the consumer may read these bytes; ended before they are released.
    track: Track,
}

impl<'a, M: RingMemory> Record<'a, M> {
    fn new(consumer: &'a mut Consumer<M>, next: Next, release: bool) -> Self {
        let mut track = Track::default();
        track.add(
            &consumer.mem,
            (next.pos & consumer.mask) + RECORD_HEADER,
            next.len,
            false,
        );
        Record {
            consumer,
            next,
            release,
            keep: false,
            track,
        }
    }

    /// The record kind set by the writer ([`Grant::set_kind`]).
    pub fn kind(&self) -> u32 {
        self.next.kind
    }

    /// Leaves the record unread: it stays in the ring and the next read returns it again (see
    /// [`crate::spsc::Record::keep`]).
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// The position of this record in the ring (for diagnostics).
    pub fn position(&self) -> u64 {
        self.next.pos
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
    /// let (writers, mut rx) = shmesh_ring::mpsc::channel(4096, 1)?;
    /// let mut tx = writers.writer()?;
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
        let off = (self.next.pos & self.consumer.mask) + RECORD_HEADER;
        // SAFETY: `poll` checked that the record lies inside the data area; it is committed,
        // so no honest writer writes it, and no writer claims it again until the head passes
        // it, which happens only after this borrow ends.
        unsafe {
            std::slice::from_raw_parts(
                self.consumer.mem.data().as_ptr().add(off as usize),
                self.next.len as usize,
            )
        }
    }
}

impl<M: RingMemory> Drop for Record<'_, M> {
    fn drop(&mut self) {
        self.track.end();
        if self.keep {
            return;
        }
        self.consumer.head = self.next.end;
        self.consumer.counters.message(self.next.len);
        if self.release {
            self.consumer.release();
        }
    }
}

impl<M: RingMemory> fmt::Debug for Record<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("position", &self.next.pos)
            .field("len", &self.next.len)
            .field("kind", &self.next.kind)
            .finish()
    }
}

/// A committed record seen through a view of its bytes ([`Record::map`]); derefs to the view and
/// releases the record on drop.
pub struct MappedRecord<'a, M: RingMemory, U: ?Sized> {
    /// Points into the payload of `record` (or to a `'static` value).
    view: NonNull<U>,
    record: Record<'a, M>,
}

impl<M: RingMemory, U: ?Sized> MappedRecord<'_, M, U> {
    /// The record kind set by the writer ([`Grant::set_kind`]).
    pub fn kind(&self) -> u32 {
        self.record.kind()
    }

    /// The position of this record in the ring (for diagnostics).
    pub fn position(&self) -> u64 {
        self.record.position()
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
        // static data). The payload stays valid and unmoved while `self.record` lives: the
        // mapping (or heap block) never moves, and no writer reuses the space until the record
        // is released in its `Drop`, which runs after this borrow of `self` ends.
        unsafe { self.view.as_ref() }
    }
}

impl<M: RingMemory, U: ?Sized> fmt::Debug for MappedRecord<'_, M, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedRecord")
            .field("position", &self.record.next.pos)
            .field("len", &self.record.next.len)
            .finish()
    }
}

/// Several records released with one index store (see [`Consumer::batch`]).
pub struct ReadBatch<'a, M: RingMemory> {
    consumer: &'a mut Consumer<M>,
}

impl<M: RingMemory> ReadBatch<'_, M> {
    /// Like [`Consumer::try_read`]; the record's space is released when the batch ends (or
    /// earlier, when a read finds nothing).
    ///
    /// # Errors
    ///
    /// As [`Consumer::try_read`].
    pub fn try_read(&mut self) -> Result<Record<'_, M>, TryReadError> {
        let next = self.consumer.try_next()?;
        Ok(Record::new(self.consumer, next, false))
    }

    /// Like [`Consumer::read`]; before waiting it releases what the batch read so far.
    ///
    /// # Errors
    ///
    /// As [`Consumer::read`].
    pub fn read(&mut self) -> Result<Record<'_, M>, ReadError> {
        let next = self.consumer.next_until(None)?;
        Ok(Record::new(self.consumer, next, false))
    }

    /// Releases the records read so far (also done on drop).
    pub fn release(self) {}
}

impl<M: RingMemory> Drop for ReadBatch<'_, M> {
    fn drop(&mut self) {
        self.consumer.release();
    }
}

impl<M: RingMemory> fmt::Debug for ReadBatch<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadBatch")
            .field("consumer", &self.consumer)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_slot_and_the_attach_and_are_never_padding() {
        assert_eq!(writer_tag(2, 1), 0x0001_0002);
        assert_eq!(writer_tag(1025, 0x1_0003), 0x0003_0401);
        for index in FIRST_WRITER_SLOT..crate::layout::MAX_SLOTS {
            assert_ne!(writer_tag(index, u64::MAX), PADDING);
        }
    }

    #[test]
    fn claimed_headers_round_trip() {
        let fp = max_footprint(1 << 40);
        let word = encode(-(fp as i32), writer_tag(7, 9));
        let h = decode(word);
        assert_eq!(u64::from(h.len.unsigned_abs()), fp);
        assert_eq!(h.kind & 0xffff, 7);
    }

    #[test]
    fn the_largest_record_fits_an_empty_ring_anywhere() {
        for cap in [128u64, 256, 4096, 1 << 20] {
            let f = max_footprint(cap);
            assert_eq!(f % RECORD_ALIGN, 0);
            for off in (0..cap).step_by(RECORD_ALIGN as usize) {
                let to_end = cap - off;
                let pad = if f <= to_end { 0 } else { to_end };
                assert!(pad + f <= cap, "cap {cap} off {off}");
            }
        }
    }
}
