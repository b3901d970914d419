//! The single-producer/single-consumer byte ring.
//!
//! A bounded, lock-free FIFO of variable-length records in one contiguous data area, written
//! in place by a [`Producer`] and read in place by a [`Consumer`], with no copy and no syscall
//! on the fast path.
//!
//! Where it comes from:
//! - the record format and claim/commit/abort follow Aeron's `aeron_rb.h` (8-byte header
//!   `{len, type}`, negative length while in progress, padding record at the wrap);
//! - free-running 64-bit positions, with the producer's cached copy of the consumer's head,
//!   follow rtrb (`cached_head`) and Aeron (`head_cache_position`): the producer touches the
//!   consumer's line only when its cached copy says full;
//! - the batch forms (several records, one index store) follow Aeron's and rtrb's chunks.
//!
//! # Protocol
//!
//! Positions are byte counts; a position's offset in the data area is `pos & (capacity - 1)`.
//! The producer owns `[tail, head + capacity)`, the consumer owns `[head, tail)`.
//!
//! The consumer polls the record header at its head, not a shared tail index (Aeron's
//! `aeron_rb` readers do the same): a record becomes visible when its header gets a positive
//! length. So a waiting reader pulls one cache line per record instead of two (tail, then
//! header). Stale headers from the previous lap never look committed, because the producer keeps
//! one invariant: **the header slot just past the last committed record reads 0 or a negative
//! length** ("nothing yet", or a claim not committed; an aborted claim leaves the latter). Before it commits a record it zeroes the slot after it, and it never claims the last
//! 16 bytes before the consumer's head, so that slot is always its own.
//!
//! - SYNC POINT A: the producer writes a record (payload, the zeroed slot after it), then
//!   stores the record's header with `Release`; the consumer loads the header with `Acquire`
//!   before reading the record. In a batch every header but the first is stored as it is
//!   committed and the first one last, on publish: one store publishes the whole batch. The
//!   `tail` index is also stored, for a producer that takes over and for tools; the consumer
//!   never reads it.
//! - SYNC POINT B: the consumer finishes with records below its new head, then stores `head`
//!   with `Release`; the producer loads `head` with `Acquire` before reusing that space.
//! - SYNC POINT C (parked flag, see [`crate::wait`]): a side about to sleep stores 1 to its
//!   parked word, fences (`SeqCst`, plus a process-wide membarrier where available), re-checks
//!   the ring, then sleeps on the word; the other side, after its publishing store, fences
//!   (`SeqCst`, or only a compiler fence where sleepers issue the membarrier) and wakes only if
//!   it reads 1. The async reads ([`Consumer::read_async`]) take the sleeper's part the same
//!   way, with the futex sleep itself done by a helper thread (see [`crate::park`]).
//!
//! Everything read from the shared control block or from record headers is checked before use
//! (the head in range of the tail, record and padding lengths inside the data area and no
//! larger than the largest record), so a peer that scribbles on the ring causes a
//! [`Corruption`] error or junk bytes from inside the ring, never an access outside it.
//!
//! # Examples
//!
//! ```
//! use shmesh_ring::spsc;
//!
//! let (mut tx, mut rx) = spsc::channel(4096)?;
//! let mut grant = tx.try_claim(5)?;
//! grant.copy_from_slice(b"hello");
//! grant.commit(5);
//! let record = rx.try_read()?;
//! assert_eq!(&*record, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::counters::Counters;
use crate::error::{AttachError, ClaimError, Corruption, ReadError, TryClaimError, TryReadError};
use crate::layout::{
    align_record, RecordHeader, PADDING, RECORD_ALIGN, RECORD_HEADER, SLOT_CLOSED, SLOT_NEVER,
};
use crate::memory::{HeapMemory, PeerState, RingMemory, Side, Track};
use crate::park::{AsyncPark, Look, ParkWord, ASYNC_PARK_SLICE};
use crate::sync::{AtomicU32, Ordering};
use crate::wait::{
    light_wakes, sleeper_fence, waker_fence, Step, WaitStrategy, Waiter, DEGRADED_PARK_SLICE,
};

/// Smallest ring capacity in bytes.
pub const MIN_CAPACITY: u64 = 128;
/// Largest ring capacity in bytes (1 TiB).
pub const MAX_CAPACITY: u64 = 1 << 40;
/// How many empty (or full) `try_` calls pass between two checks of the peer's liveness token.
const TRY_PEER_CHECK_EVERY: u32 = 1024;

/// Checks a ring capacity: a power of two in `[MIN_CAPACITY, MAX_CAPACITY]`.
///
/// # Errors
///
/// [`AttachError::Capacity`] when it is not.
pub fn check_capacity(capacity: u64) -> Result<(), AttachError> {
    if capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(AttachError::Capacity {
            capacity,
            min: MIN_CAPACITY,
            max: MAX_CAPACITY,
        })
    }
}

/// The largest payload a ring of `capacity` bytes accepts: `capacity / 2 - 24` (at most
/// 1 GiB - 24).
///
/// A record takes `align16(8 + len)` bytes. One that does not fit before the end of the data
/// area is preceded by a padding record, and the producer always keeps the 16 bytes after its
/// last record free; with records of at most `capacity / 2 - 16` bytes, an empty ring always has
/// room wherever its positions stand.
pub const fn max_payload(capacity: u64) -> u64 {
    max_footprint(capacity) - RECORD_HEADER
}

/// The largest record, header included: see [`max_payload`].
const fn max_footprint(capacity: u64) -> u64 {
    let half = capacity / 2;
    let limit = if half < MAX_RECORD { half } else { MAX_RECORD };
    limit - RECORD_ALIGN
}

/// Largest record (header included): the header's length field is an `i32`.
const MAX_RECORD: u64 = 1 << 30;

/// Bytes the producer keeps free after its last record: the next header slot, which it zeroes.
const NEXT_SLOT: u64 = RECORD_ALIGN;

/// Makes a ring of `capacity` bytes on the heap and returns its two ends.
///
/// # Errors
///
/// [`AttachError::Capacity`] if `capacity` is not a power of two in
/// `[MIN_CAPACITY, MAX_CAPACITY]`.
///
/// # Examples
///
/// ```
/// let (tx, rx) = shmesh_ring::spsc::channel(1 << 16)?;
/// assert_eq!(tx.max_payload(), (1 << 15) - 24);
/// # drop(rx);
/// # Ok::<(), shmesh_ring::AttachError>(())
/// ```
pub fn channel(capacity: u64) -> Result<(Producer<HeapMemory>, Consumer<HeapMemory>), AttachError> {
    channel_at(capacity, 0)
}

/// Like [`channel`], with both positions starting at `start` (a multiple of 16). For tests of
/// position wrap-around: `channel_at(cap, u64::MAX - 15)` wraps the 64-bit positions after
/// one record.
///
/// # Errors
///
/// As [`channel`], and [`AttachError::StartPosition`] if `start % 16 != 0`.
pub fn channel_at(
    capacity: u64,
    start: u64,
) -> Result<(Producer<HeapMemory>, Consumer<HeapMemory>), AttachError> {
    check_capacity(capacity)?;
    if start % RECORD_ALIGN != 0 {
        return Err(AttachError::StartPosition(start));
    }
    let mem = HeapMemory::new(capacity, start);
    mem.attach(Side::Producer.index());
    mem.attach(Side::Consumer.index());
    Ok((Producer::new(mem.clone())?, Consumer::new(mem)?))
}

/// Packs a record header into its atomic word (length in the low half, see [`RingMemory::header`]).
#[inline]
pub(crate) fn encode(len: i32, kind: u32) -> u64 {
    (u64::from(kind) << 32) | u64::from(len as u32)
}

/// Unpacks a record header word.
#[inline]
pub(crate) fn decode(word: u64) -> RecordHeader {
    RecordHeader {
        len: word as u32 as i32,
        kind: (word >> 32) as u32,
    }
}

/// The header word at data offset `off`.
///
/// # Safety
///
/// `off` is a multiple of 16 below the capacity.
#[inline]
unsafe fn header<M: RingMemory>(mem: &M, off: u64) -> &crate::sync::AtomicU64 {
    // SAFETY: forwarded contract.
    unsafe { mem.header(off) }
}

/// The state of the peer, as seen from `side`: slot state first, liveness token second.
fn peer_state<M: RingMemory>(mem: &M, side: Side) -> PeerState {
    let peer = side.peer();
    match mem.slot(peer.index()).state.load(Ordering::Acquire) {
        SLOT_NEVER => PeerState::NotYet,
        SLOT_CLOSED => PeerState::Gone,
        _ if mem.token_held(peer.index()) => PeerState::Alive,
        _ => PeerState::Gone,
    }
}

/// Clears a parked word and wakes its sleeper, if the word says someone sleeps (SYNC POINT C,
/// waker side: the caller has just stored its index).
#[inline]
fn wake_if_parked<M: RingMemory>(mem: &M, word: &AtomicU32, light: bool) {
    // SYNC POINT C: pairs with `sleeper_fence` in the other side's park.
    waker_fence(light);
    if word.load(Ordering::Relaxed) != 0 && word.swap(0, Ordering::AcqRel) != 0 {
        mem.futex_wake(word);
    }
}

/// How long to sleep: the waiter's slice, or at most [`DEGRADED_PARK_SLICE`] when the heavy
/// barrier failed and a light waker might miss us.
#[inline]
pub(crate) fn park_slice(slice: Duration, barrier_ok: bool) -> Duration {
    if barrier_ok {
        slice
    } else {
        slice.min(DEGRADED_PARK_SLICE)
    }
}

/// Marks `side` detached and wakes its peer so that it notices at once.
fn detach<M: RingMemory>(mem: &M, side: Side) {
    mem.slot(side.index())
        .state
        .store(SLOT_CLOSED, Ordering::Release);
    let control = mem.control();
    let word = match side {
        Side::Producer => &control.consumer_parked.0,
        Side::Consumer => &control.producer_parked.0,
    };
    // A full fence: cheap enough here, and right whatever the sleeper's barrier.
    wake_if_parked(mem, word, false);
}

/// A consecutive run of `try_` calls that found the ring empty (or full); every
/// `TRY_PEER_CHECK_EVERY`th asks the liveness token.
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

/// The writing end of an SPSC ring. `Send`, not `Sync`: one thread writes.
///
/// A producer that takes over from one that died continues after the last record it committed;
/// a record it had claimed but not committed never reaches the consumer.
pub struct Producer<M: RingMemory> {
    mem: M,
    mask: u64,
    max_payload: u64,
    /// Next position to write; records below it are committed (maybe not yet published).
    tail: u64,
    /// Records below this position are visible to the consumer.
    published: u64,
    /// The header word to store at `published` to publish what lies between `published` and
    /// `tail` (the first record, or the padding before it); `Some` exactly when they differ.
    pending: Option<u64>,
    /// The consumer's head as last loaded.
    cached_head: u64,
    wait: WaitStrategy,
    peer_check: PeerCheck,
    /// Whether this process wakes with a compiler fence only (see [`crate::wait`]).
    light: bool,
    counters: Counters,
    _not_sync: PhantomData<Cell<()>>,
}

impl<M: RingMemory> Producer<M> {
    /// Takes the producer end of the ring in `mem`, whose liveness token the caller holds.
    pub(crate) fn new(mem: M) -> Result<Self, AttachError> {
        let cap = mem.capacity();
        let control = mem.control();
        let mut tail = control.tail.0.load(Ordering::Acquire);
        let head = control.head.0.load(Ordering::Acquire);
        // A producer that died between publishing a header and storing `tail` may have had its
        // records read and released already: the head is then ahead of the stored tail, and
        // everything below the head is free.
        if head.wrapping_sub(tail) <= cap && head % RECORD_ALIGN == 0 {
            tail = head;
        }
        check_span(tail, head, cap)?;
        // Such a producer may also have left records beyond the stored tail, already visible to
        // the consumer but not yet read: continue after them.
        loop {
            // SAFETY: `tail` is 16-aligned (checked by `check_span`) and masked.
            let word = unsafe { header(&mem, tail & (cap - 1)) }.load(Ordering::Acquire);
            let Some(footprint) = committed_footprint(decode(word), tail & (cap - 1), cap)? else {
                break;
            };
            let next = tail.wrapping_add(footprint);
            check_span(next, head, cap - NEXT_SLOT)?;
            tail = next;
        }
        Ok(Producer {
            mask: cap - 1,
            max_payload: max_payload(cap),
            tail,
            published: tail,
            pending: None,
            cached_head: head,
            wait: WaitStrategy::default(),
            peer_check: PeerCheck::default(),
            light: light_wakes(),
            counters: Counters::resume(mem.slot(Side::Producer.index())),
            _not_sync: PhantomData,
            mem,
        })
    }

    /// Capacity of the data area in bytes.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Where the next record will be written: the end of everything committed (a position in
    /// the ring's 64-bit byte stream). A producer taking over from a dead one starts at the end
    /// of what the dead one made visible, so comparing this with a position remembered before
    /// a [batch](Self::batch) was published tells whether the publication happened.
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// The largest payload [`try_claim`](Self::try_claim) accepts.
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
        peer_state(&self.mem, Side::Producer)
    }

    /// The memory this ring lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Claims space for a record of `len` payload bytes without waiting.
    ///
    /// The [`Grant`] derefs to the payload (`len` bytes in the ring, 16-byte aligned); commit it
    /// to publish the record, or drop or [`abort`](Grant::abort) it to give the space back.
    ///
    /// # Errors
    ///
    /// [`TryClaimError::Full`] when there is not enough space now, `TooLarge` when `len` exceeds
    /// [`max_payload`](Self::max_payload), `PeerGone` when the ring is full and the consumer is
    /// gone, `Corrupt` when the consumer's index is impossible.
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut tx, _rx) = shmesh_ring::spsc::channel(128)?;
    /// let mut grant = tx.try_claim(40)?;
    /// grant[..2].copy_from_slice(b"hi");
    /// grant.commit(2); // commit may be shorter than the claim
    /// assert!(matches!(tx.try_claim(1000), Err(shmesh_ring::TryClaimError::TooLarge { max: 40, .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_claim(&mut self, len: usize) -> Result<Grant<'_, M>, TryClaimError> {
        let reserved = self.try_reserve(len as u64)?;
        Ok(Grant::new(self, reserved, true))
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
        Ok(Grant::new(self, reserved, true))
    }

    /// Like [`claim`](Self::claim), giving up after `timeout`.
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
        Ok(Grant::new(self, reserved, true))
    }

    /// Checks, without claiming and without waiting, whether a claim of `len` bytes would
    /// succeed now: if so, the next [`try_claim`](Self::try_claim) of at most `len` bytes
    /// succeeds.
    ///
    /// # Errors
    ///
    /// As [`try_claim`](Self::try_claim).
    pub fn check_space(&mut self, len: usize) -> Result<(), TryClaimError> {
        // As in `wait_for_space`: an unused reservation is an aborted claim.
        self.try_reserve(len as u64).map(drop)
    }

    /// Waits until a claim of `len` bytes would succeed, without claiming: the next
    /// [`try_claim`](Self::try_claim) of at most `len` bytes then succeeds (space only grows
    /// until this producer claims). For callers that wait in slices, checking something else
    /// in between, where a loop around `claim_timeout` would hold the borrow of the grant.
    ///
    /// # Errors
    ///
    /// As [`claim_timeout`](Self::claim_timeout).
    pub fn wait_for_space(&mut self, len: usize, timeout: Duration) -> Result<(), ClaimError> {
        // A reservation that is not turned into a grant is an aborted claim: the tail did not
        // move and the next claim overwrites the marked header.
        self.reserve_until(len as u64, Instant::now().checked_add(timeout))
            .map(drop)
    }

    /// Starts a batch: records claimed and committed through it are published together, with
    /// one index store, when the batch is dropped or [`publish`](WriteBatch::publish)ed.
    pub fn batch(&mut self) -> WriteBatch<'_, M> {
        WriteBatch { producer: self }
    }

    /// Free bytes as of the last look at the consumer's index (a lower bound).
    fn free_cached(&self) -> u64 {
        self.capacity() - self.tail.wrapping_sub(self.cached_head)
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
        if self.free_cached() < needed {
            // SYNC POINT B (Acquire): pairs with the consumer's Release store of `head`.
            let head = self.mem.control().head.0.load(Ordering::Acquire);
            check_span(self.tail, head, cap)?;
            self.cached_head = head;
            let free = self.free_cached();
            if free < needed {
                if self.peer_check.due() && peer_state(&self.mem, Side::Producer) == PeerState::Gone
                {
                    return Err(TryClaimError::PeerGone);
                }
                return Err(TryClaimError::Full { needed, free });
            }
        }
        self.peer_check.reset();
        let pos = self.tail.wrapping_add(pad);
        // Mark the record claimed (negative length): a reader polling this slot keeps waiting,
        // and a producer taking over after a crash starts here.
        let claimed = encode(-((RECORD_HEADER + len) as i32), 0);
        // SAFETY: `pos` is 16-aligned and masked.
        unsafe { header(&self.mem, pos & self.mask) }.store(claimed, Ordering::Relaxed);
        Ok(Reserved {
            start: self.tail,
            pos,
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
        // Records committed in a batch must be visible before we wait for the consumer.
        self.publish();
        self.counters.wait();
        self.counters.flush(self.mem.slot(Side::Producer.index()));
        let mut waiter = Waiter::new(self.wait, deadline);
        loop {
            match waiter.next() {
                Step::Retry => {}
                Step::TimedOut => return Err(ClaimError::Timeout),
                Step::CheckPeer => {
                    if self.peer() == PeerState::Gone {
                        return self.reserve_or_gone(len);
                    }
                }
                Step::Park(slice) => {
                    self.mem
                        .control()
                        .producer_parked
                        .0
                        .store(1, Ordering::Relaxed);
                    // SYNC POINT C: pairs with the consumer's `wake_if_parked`.
                    let slice = park_slice(slice, sleeper_fence());
                    let unpark = |p: &Self| {
                        p.mem
                            .control()
                            .producer_parked
                            .0
                            .store(0, Ordering::Relaxed)
                    };
                    match self.try_reserve(len) {
                        Err(TryClaimError::Full { .. }) => {}
                        other => {
                            unpark(self);
                            return other.map_err(ClaimError::from);
                        }
                    }
                    if self.peer() == PeerState::Gone {
                        unpark(self);
                        return self.reserve_or_gone(len);
                    }
                    let word = &self.mem.control().producer_parked.0;
                    self.mem.futex_wait(word, 1, Some(slice));
                    word.store(0, Ordering::Relaxed);
                }
            }
            match self.try_reserve(len) {
                Err(TryClaimError::Full { .. }) => {}
                other => return other.map_err(ClaimError::from),
            }
        }
    }

    /// Writes a committed header at `pos`, or keeps it for [`publish`](Self::publish) if it is
    /// the first unpublished one (the slot the consumer is polling).
    #[inline]
    fn stage(&mut self, pos: u64, word: u64) {
        if pos == self.published {
            self.pending = Some(word);
        } else {
            // Release: a consumer that reaches this header through an earlier one also sees the
            // record behind it.
            // SAFETY: `pos` is 16-aligned and masked.
            unsafe { header(&self.mem, pos & self.mask) }.store(word, Ordering::Release);
        }
    }

    /// The last try once the consumer is known gone: space it released before leaving can still
    /// be used; a full ring is final.
    fn reserve_or_gone(&mut self, len: u64) -> Result<Reserved, ClaimError> {
        self.try_reserve(len).map_err(|e| match e {
            TryClaimError::Full { .. } => ClaimError::PeerGone,
            other => other.into(),
        })
    }

    /// The word this producer sleeps on, for [`crate::select::park`].
    pub(crate) fn parked_word(&self) -> &AtomicU32 {
        &self.mem.control().producer_parked.0
    }

    /// Publishes a pending batch before [`crate::select::park`] sleeps: the consumer may be
    /// waiting for it.
    pub(crate) fn flush_for_select(&mut self) {
        self.publish();
    }

    /// Whether a claim of `len` bytes would not find the ring full (it may succeed, or fail
    /// with an error the caller's next claim reports), for [`crate::select::park`].
    pub(crate) fn ready_for_select(&mut self, len: usize) -> bool {
        !matches!(
            self.try_reserve(len as u64),
            Err(TryClaimError::Full { .. })
        )
    }

    /// Makes the records committed since the last publication visible with one header store,
    /// and wakes a sleeping consumer.
    fn publish(&mut self) {
        if let Some(word) = self.pending.take() {
            // SYNC POINT A (Release): pairs with the consumer's Acquire load of this header.
            // SAFETY: `published` is 16-aligned and masked.
            unsafe { header(&self.mem, self.published & self.mask) }.store(word, Ordering::Release);
            self.published = self.tail;
            // For a producer taking over and for tools; the consumer does not read it.
            self.mem
                .control()
                .tail
                .0
                .store(self.tail, Ordering::Release);
            wake_if_parked(&self.mem, &self.mem.control().consumer_parked.0, self.light);
            self.counters.flush(self.mem.slot(Side::Producer.index()));
        }
        debug_assert_eq!(self.published, self.tail);
    }
}

impl<M: RingMemory> Drop for Producer<M> {
    fn drop(&mut self) {
        self.publish();
        detach(&self.mem, Side::Producer);
    }
}

impl<M: RingMemory> fmt::Debug for Producer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("tail", &self.tail)
            .field("published", &self.published)
            .field("wait", &self.wait)
            .finish()
    }
}

/// The footprint of the record whose header `h` sits at offset `off`, if it is committed;
/// `None` while the slot is empty (0) or claimed (negative). Every length another process
/// wrote is checked here: a record lies inside the data area and is no larger than the
/// largest record; a padding record runs exactly to the end and never starts at offset 0.
pub(crate) fn committed_footprint(
    h: RecordHeader,
    off: u64,
    cap: u64,
) -> Result<Option<u64>, Corruption> {
    if h.len <= 0 {
        return Ok(None);
    }
    let len = h.len as u64;
    let footprint = align_record(len);
    if h.kind == PADDING {
        if off == 0 || footprint != cap - off {
            return Err(Corruption {
                what: "padding record length",
                found: len,
                expected: format!("{} (to the end of the ring, never at its start)", cap - off),
            });
        }
        return Ok(Some(footprint));
    }
    if len < RECORD_HEADER || footprint > max_footprint(cap) || footprint > cap - off {
        return Err(Corruption {
            what: "record length",
            found: len,
            expected: format!(
                "{RECORD_HEADER} to {} (header included; at most {} bytes to the end of the ring)",
                max_footprint(cap),
                cap - off
            ),
        });
    }
    Ok(Some(footprint))
}

/// Checks that `tail - head` (wrapping) is a sane fill level and both are record-aligned.
fn check_span(tail: u64, head: u64, cap: u64) -> Result<(), Corruption> {
    let used = tail.wrapping_sub(head);
    if used > cap {
        return Err(Corruption {
            what: "ring fill level (tail - head)",
            found: used,
            expected: format!("at most the capacity {cap}"),
        });
    }
    if tail % RECORD_ALIGN != 0 || head % RECORD_ALIGN != 0 {
        return Err(Corruption {
            what: "ring position",
            found: if tail % RECORD_ALIGN != 0 { tail } else { head },
            expected: format!("a multiple of {RECORD_ALIGN}"),
        });
    }
    Ok(())
}

/// Space claimed in the ring for one record; derefs to its payload bytes.
///
/// [`commit`](Self::commit) publishes it (outside a batch); dropping it without committing
/// aborts the claim, and the consumer never sees it. Until then the record header carries a
/// negative length, so the bytes can never be taken for a committed record.
pub struct Grant<'a, M: RingMemory> {
    producer: &'a mut Producer<M>,
    reserved: Reserved,
    publish: bool,
    kind: u32,
    done: bool,
    /// Held while the producer may write these bytes; ended before they are published.
    track: Track,
}

impl<'a, M: RingMemory> Grant<'a, M> {
    fn new(producer: &'a mut Producer<M>, reserved: Reserved, publish: bool) -> Self {
        let off = (reserved.pos & producer.mask) + RECORD_HEADER;
        let mut track = Track::default();
        track.add(&producer.mem, off, reserved.len, true);
        Grant {
            producer,
            reserved,
            publish,
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
    /// claim. Outside a batch the consumer can read it at once.
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
        let producer = &mut *self.producer;
        let Reserved { start, pos, .. } = self.reserved;
        let end = pos.wrapping_add(align_record(RECORD_HEADER + len));
        // The slot after this record must read "nothing yet" before the record is visible.
        // SAFETY: `end` is 16-aligned and masked (all positions here are).
        unsafe { header(&producer.mem, end & producer.mask) }.store(0, Ordering::Relaxed);
        let word = encode((RECORD_HEADER + len) as i32, self.kind);
        producer.stage(pos, word);
        if pos != start {
            producer.stage(start, encode(pos.wrapping_sub(start) as i32, PADDING));
        }
        producer.tail = end;
        producer.counters.message(len);
        self.done = true;
        if self.publish {
            producer.publish();
        }
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
            // Abort: the tail never moved, so the padding and the claimed header are beyond it
            // and will be overwritten by the next claim.
            debug_assert_eq!(self.producer.tail, self.reserved.start);
        }
    }
}

impl<M: RingMemory> Deref for Grant<'_, M> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let off = (self.reserved.pos & self.producer.mask) + RECORD_HEADER;
        // SAFETY: `[off, off + len)` is inside the data area (checked at reserve) and owned by
        // the producer until commit; `&self` borrows the grant, so no `&mut` to it exists.
        unsafe {
            std::slice::from_raw_parts(
                self.producer.mem.data().as_ptr().add(off as usize),
                self.reserved.len as usize,
            )
        }
    }
}

impl<M: RingMemory> DerefMut for Grant<'_, M> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let off = (self.reserved.pos & self.producer.mask) + RECORD_HEADER;
        // SAFETY: as in `deref`; `&mut self` makes this the only reference to those bytes in
        // this process, and the consumer does not read beyond the published tail.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.producer.mem.data().as_ptr().add(off as usize),
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

/// Several records published with one index store (see [`Producer::batch`]).
pub struct WriteBatch<'a, M: RingMemory> {
    producer: &'a mut Producer<M>,
}

impl<M: RingMemory> WriteBatch<'_, M> {
    /// Like [`Producer::try_claim`]; the committed record becomes visible when the batch is
    /// published.
    ///
    /// # Errors
    ///
    /// As [`Producer::try_claim`].
    pub fn try_claim(&mut self, len: usize) -> Result<Grant<'_, M>, TryClaimError> {
        let reserved = self.producer.try_reserve(len as u64)?;
        Ok(Grant::new(self.producer, reserved, false))
    }

    /// Like [`Producer::claim`]; if it has to wait, it first publishes the records committed so
    /// far, since the consumer must read them to make space.
    ///
    /// # Errors
    ///
    /// As [`Producer::claim`].
    pub fn claim(&mut self, len: usize) -> Result<Grant<'_, M>, ClaimError> {
        let reserved = self.producer.reserve_until(len as u64, None)?;
        Ok(Grant::new(self.producer, reserved, false))
    }

    /// Where the next record of the batch will be written (see [`Producer::position`]).
    pub fn position(&self) -> u64 {
        self.producer.tail
    }

    /// Publishes the records committed so far (also done on drop).
    pub fn publish(self) {}
}

impl<M: RingMemory> Drop for WriteBatch<'_, M> {
    fn drop(&mut self) {
        self.producer.publish();
    }
}

impl<M: RingMemory> fmt::Debug for WriteBatch<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBatch")
            .field("producer", &self.producer)
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

/// [`Consumer::release_to`] was given a position that is not one it can release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot release up to ring position {pos}: it must be a 16-aligned record end between the \
     released position {released} and the read position {read}"
)]
pub struct ReleaseError {
    /// The position asked for.
    pub pos: u64,
    /// The consumer's released position.
    pub released: u64,
    /// The consumer's read position.
    pub read: u64,
}

/// The reading end of an SPSC ring. `Send`, not `Sync`: one thread reads.
///
/// A consumer that takes over from one that died starts at the last released position: records
/// the dead consumer had read but not released are delivered again (at least once, never lost).
pub struct Consumer<M: RingMemory> {
    mem: M,
    mask: u64,
    /// Next position to read (padding already skipped, maybe not yet released).
    head: u64,
    /// The last head stored to the control block.
    released: u64,
    /// Held reads ([`Consumer::hold_reads`]): records read stay in the ring until
    /// [`Consumer::release_to`].
    held: bool,
    wait: WaitStrategy,
    peer_check: PeerCheck,
    /// Whether this process wakes with a compiler fence only (see [`crate::wait`]).
    light: bool,
    counters: Counters,
    /// The async waits ([`read_async`](Self::read_async)): made on the first one.
    park: Option<AsyncPark>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<M: RingMemory> Consumer<M> {
    /// Takes the consumer end of the ring in `mem`, whose liveness token the caller holds.
    pub(crate) fn new(mem: M) -> Result<Self, AttachError> {
        let cap = mem.capacity();
        // Only the head matters here: the consumer never reads `tail`, which a producer that
        // died between its header and tail stores may have left behind the head.
        let head = mem.control().head.0.load(Ordering::Acquire);
        if head % RECORD_ALIGN != 0 {
            return Err(Corruption {
                what: "ring head position",
                found: head,
                expected: format!("a multiple of {RECORD_ALIGN}"),
            }
            .into());
        }
        Ok(Consumer {
            mask: cap - 1,
            head,
            released: head,
            held: false,
            wait: WaitStrategy::default(),
            peer_check: PeerCheck::default(),
            light: light_wakes(),
            counters: Counters::resume(mem.slot(Side::Consumer.index())),
            park: None,
            _not_sync: PhantomData,
            mem,
        })
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

    /// The producer's state. Asks the liveness token: a syscall on shared memory.
    pub fn peer(&self) -> PeerState {
        peer_state(&self.mem, Side::Consumer)
    }

    /// The memory this ring lives in.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Reads the next record without waiting. The [`Record`] borrows the bytes in the ring and
    /// releases them when dropped.
    ///
    /// # Errors
    ///
    /// [`TryReadError::Empty`] when nothing is committed, `PeerGone` when the producer is gone
    /// and everything it committed was read, `Corrupt` when the ring's state is impossible.
    pub fn try_read(&mut self) -> Result<Record<'_, M>, TryReadError> {
        let next = self.try_next()?;
        Ok(Record::new(self, next, true))
    }

    /// Reads the next record, waiting with the [wait strategy](Self::set_wait_strategy).
    ///
    /// # Errors
    ///
    /// [`ReadError::PeerGone`] when the producer is gone and everything it committed was read,
    /// `Corrupt`; never `Timeout`.
    pub fn read(&mut self) -> Result<Record<'_, M>, ReadError> {
        let next = self.next_until(None)?;
        Ok(Record::new(self, next, true))
    }

    /// Like [`read`](Self::read), giving up after `timeout`.
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

    /// Waits until a record can be read (or the producer is gone with nothing left), without
    /// reading it: the next [`try_read`](Self::try_read) then returns the record. For callers
    /// that wait in slices, checking something else in between.
    ///
    /// # Errors
    ///
    /// As [`read_timeout`](Self::read_timeout).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<(), ReadError> {
        self.next_until(Instant::now().checked_add(timeout))
            .map(drop)
    }

    /// Reads the next record without blocking the thread: a future for async code, on any
    /// executor. While the ring is empty the task sleeps: this consumer's helper thread
    /// (started on first use, stopped when the consumer drops) sleeps on the same futex as
    /// [`read`](Self::read) would and wakes the task when the producer publishes, or after
    /// [`ASYNC_PARK_SLICE`] (100 ms) so that the task checks the producer's liveness: no busy
    /// polling (see [`crate::park`]).
    ///
    /// Cancellation safe: a record is taken only when the future resolves to it; dropping the
    /// future before (a `select!` that took another branch, a timeout) loses nothing.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read): [`ReadError::PeerGone`] when the producer is gone and
    /// everything it committed was read, `Corrupt`; never `Timeout`.
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the helper thread (as [`std::thread::spawn`]), or
    /// if the future is polled again after it resolved.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::task::{Context, Poll, Wake};
    /// use std::thread::{self, Thread};
    ///
    /// /// The simplest executor: poll, and park the thread until the waker unparks it.
    /// fn block_on<F: std::future::Future>(future: F) -> F::Output {
    ///     struct Unpark(Thread);
    ///     impl Wake for Unpark {
    ///         fn wake(self: Arc<Self>) {
    ///             self.0.unpark()
    ///         }
    ///     }
    ///     let waker = Arc::new(Unpark(thread::current())).into();
    ///     let mut cx = Context::from_waker(&waker);
    ///     let mut future = std::pin::pin!(future);
    ///     loop {
    ///         if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
    ///             return out;
    ///         }
    ///         thread::park();
    ///     }
    /// }
    ///
    /// let (mut tx, mut rx) = shmesh_ring::spsc::channel(4096)?;
    /// let writer = thread::spawn(move || {
    ///     let mut grant = tx.claim(5)?;
    ///     grant.copy_from_slice(b"async");
    ///     grant.commit(5);
    ///     Ok::<_, shmesh_ring::ClaimError>(())
    /// });
    /// let record = block_on(rx.read_async())?;
    /// assert_eq!(&*record, b"async");
    /// drop(record);
    /// writer.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_async(&mut self) -> ReadAsync<'_, M> {
        ReadAsync {
            consumer: Some(self),
        }
    }

    /// Polls for a record without reading it: `Ready(Ok(()))` when the next
    /// [`try_read`](Self::try_read) returns one; `Pending` while the ring is empty, with the
    /// task to be woken as [`read_async`](Self::read_async) says. The async form of
    /// [`wait_timeout`](Self::wait_timeout), for callers that look at something else each time
    /// the task is woken (at least every [`ASYNC_PARK_SLICE`]).
    ///
    /// # Errors
    ///
    /// As [`read_async`](Self::read_async).
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the helper thread.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReadError>> {
        self.poll_next_async(cx).map(|found| found.map(drop))
    }

    fn poll_next_async(&mut self, cx: &mut Context<'_>) -> Poll<Result<Next, ReadError>> {
        let mut park = match self.park.take() {
            Some(park) => park,
            None => AsyncPark::new(ParkWord::consumer_parked(&self.mem)),
        };
        let poll = park.poll(cx, ASYNC_PARK_SLICE, |look| self.look_async(look));
        self.park = Some(park);
        poll
    }

    /// A look at the ring for [`AsyncPark::poll`]: the next record and, once the parked word
    /// is armed, the producer's liveness (as [`next_until`](Self::next_until) before it
    /// sleeps).
    fn look_async(&mut self, look: Look) -> Result<Option<Next>, ReadError> {
        if let Some(next) = self.poll()? {
            return Ok(Some(next));
        }
        match look {
            Look::First => {
                // Release what a batch read so far: the producer may be waiting for that space.
                self.release();
                Ok(None)
            }
            Look::Armed => {
                self.counters.wait();
                if self.peer() == PeerState::Gone {
                    // What the producer committed before it went is visible now: drain it first.
                    return self.poll()?.map(Some).ok_or(ReadError::PeerGone);
                }
                Ok(None)
            }
        }
    }

    /// Holds records in the ring after they are read: reads advance the
    /// [read position](Self::read_position) but release nothing (not on drop of a record, a
    /// batch or the consumer either) until [`release_to`](Self::release_to). For a reader that
    /// forwards records elsewhere and may only free them once the far side confirmed them (the
    /// bridge): a consumer that dies holding records leaves them in the ring, and the next one
    /// reads them again. `hold_reads(false)` goes back to releasing on read (the records read
    /// so far stay held until the next release).
    pub fn hold_reads(&mut self, hold: bool) {
        self.held = hold;
    }

    /// Where the next read starts: the end of the last record read (a position in the ring's
    /// 64-bit byte stream, not masked; it only grows, wrapping at 2^64).
    pub fn read_position(&self) -> u64 {
        self.head
    }

    /// Where the released space ends: records from here to the
    /// [read position](Self::read_position) were read but are still held.
    pub fn released_position(&self) -> u64 {
        self.released
    }

    /// Releases the held records below `pos`, which must be a position between the
    /// [released](Self::released_position) and the [read](Self::read_position) positions
    /// where a record ended (a record's end as this consumer read it; the caller keeps them).
    ///
    /// # Errors
    ///
    /// [`ReleaseError`] when `pos` is not 16-aligned or lies outside that span; nothing is
    /// released then.
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut tx, mut rx) = shmesh_ring::spsc::channel(4096)?;
    /// for byte in [1u8, 2] {
    ///     let mut grant = tx.try_claim(1)?;
    ///     grant[0] = byte;
    ///     grant.commit(1);
    /// }
    /// rx.hold_reads(true);
    /// let first_end = { rx.try_read()?; rx.read_position() };
    /// assert_eq!(rx.try_read()?[0], 2);
    /// rx.release_to(first_end)?; // the far side confirmed the first record only
    /// rx.rewind(); // the link dropped: read again what was not confirmed
    /// assert_eq!(rx.try_read()?[0], 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release_to(&mut self, pos: u64) -> Result<(), ReleaseError> {
        let held = self.head.wrapping_sub(self.released);
        if pos % RECORD_ALIGN != 0 || pos.wrapping_sub(self.released) > held {
            return Err(ReleaseError {
                pos,
                released: self.released,
                read: self.head,
            });
        }
        self.release_at(pos);
        Ok(())
    }

    /// Moves the read position back to the released position: the held records are read
    /// again, in order (after a link to the far side dropped, say).
    pub fn rewind(&mut self) {
        self.head = self.released;
    }

    /// Moves the read position back to `pos`, a record end between the
    /// [released](Self::released_position) and the [read](Self::read_position) positions:
    /// the records from there on are read again, and nothing is released (the far side has
    /// the records before `pos` but has not confirmed them yet).
    ///
    /// # Errors
    ///
    /// [`ReleaseError`] when `pos` is not 16-aligned or lies outside that span; the read
    /// position stays.
    pub fn rewind_to(&mut self, pos: u64) -> Result<(), ReleaseError> {
        let held = self.head.wrapping_sub(self.released);
        if pos % RECORD_ALIGN != 0 || pos.wrapping_sub(self.released) > held {
            return Err(ReleaseError {
                pos,
                released: self.released,
                read: self.head,
            });
        }
        self.head = pos;
        Ok(())
    }

    /// Starts a batch: records read through it are released together, with one index store,
    /// when the batch is dropped.
    pub fn batch(&mut self) -> ReadBatch<'_, M> {
        ReadBatch { consumer: self }
    }

    /// Finds the next committed record, skipping padding; `None` when there is none now.
    fn poll(&mut self) -> Result<Option<Next>, Corruption> {
        let cap = self.capacity();
        loop {
            let off = self.head & self.mask;
            // SYNC POINT A (Acquire): pairs with the producer's Release store of this header.
            // SAFETY: `head` is 16-aligned (checked at attach, advanced by footprints) and masked.
            let word = unsafe { header(&self.mem, off) }.load(Ordering::Acquire);
            let h = decode(word);
            let Some(footprint) = committed_footprint(h, off, cap)? else {
                return Ok(None);
            };
            let end = self.head.wrapping_add(footprint);
            if h.kind == PADDING {
                // The record follows at the start of the data area, where no padding can be:
                // this loop runs at most twice.
                self.head = end;
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

    fn try_next(&mut self) -> Result<Next, TryReadError> {
        if let Some(next) = self.poll()? {
            self.peer_check.reset();
            return Ok(next);
        }
        if self.peer_check.due() && self.peer() == PeerState::Gone {
            // The producer is gone: whatever it committed is visible now. Drain it first.
            return self.poll()?.ok_or(TryReadError::PeerGone);
        }
        Err(TryReadError::Empty)
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Result<Next, ReadError> {
        if let Some(next) = self.poll()? {
            return Ok(next);
        }
        // Release what a batch read so far: the producer may be waiting for that space.
        self.release();
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
                    let word = &self.mem.control().consumer_parked.0;
                    word.store(1, Ordering::Relaxed);
                    // SYNC POINT C: pairs with the producer's `wake_if_parked`.
                    let slice = park_slice(slice, sleeper_fence());
                    if let Some(next) = self.poll()? {
                        self.mem
                            .control()
                            .consumer_parked
                            .0
                            .store(0, Ordering::Relaxed);
                        return Ok(next);
                    }
                    if self.peer() == PeerState::Gone {
                        self.mem
                            .control()
                            .consumer_parked
                            .0
                            .store(0, Ordering::Relaxed);
                        return self.poll()?.ok_or(ReadError::PeerGone);
                    }
                    let word = &self.mem.control().consumer_parked.0;
                    self.mem.futex_wait(word, 1, Some(slice));
                    word.store(0, Ordering::Relaxed);
                }
            }
            if let Some(next) = self.poll()? {
                return Ok(next);
            }
        }
    }

    /// The word this consumer sleeps on, for [`crate::select::park`].
    pub(crate) fn parked_word(&self) -> &AtomicU32 {
        &self.mem.control().consumer_parked.0
    }

    /// Releases what was read before [`crate::select::park`] sleeps: the producer may be
    /// waiting for that space.
    pub(crate) fn flush_for_select(&mut self) {
        self.release();
    }

    /// Whether a read would not find the ring empty (a record, or an error the caller's next
    /// read reports), for [`crate::select::park`].
    pub(crate) fn ready_for_select(&mut self) -> bool {
        !matches!(self.poll(), Ok(None))
    }

    /// Stores the head if records were read since the last store, and wakes a sleeping
    /// producer.
    fn release(&mut self) {
        if !self.held {
            self.release_at(self.head);
        }
    }

    fn release_at(&mut self, pos: u64) {
        if pos != self.released {
            self.released = pos;
            // SYNC POINT B (Release): pairs with the producer's Acquire load of `head`.
            self.mem.control().head.0.store(pos, Ordering::Release);
            wake_if_parked(&self.mem, &self.mem.control().producer_parked.0, self.light);
            self.counters.flush(self.mem.slot(Side::Consumer.index()));
        }
    }
}

impl<M: RingMemory> Drop for Consumer<M> {
    fn drop(&mut self) {
        self.release();
        detach(&self.mem, Side::Consumer);
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

/// The future of [`Consumer::read_async`]: resolves to the next record.
#[must_use = "futures do nothing unless polled"]
pub struct ReadAsync<'a, M: RingMemory> {
    /// `None` once the future resolved.
    consumer: Option<&'a mut Consumer<M>>,
}

impl<'a, M: RingMemory> Future for ReadAsync<'a, M> {
    type Output = Result<Record<'a, M>, ReadError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let consumer = this
            .consumer
            .take()
            .expect("ReadAsync polled after it resolved");
        match consumer.poll_next_async(cx) {
            Poll::Ready(Ok(next)) => Poll::Ready(Ok(Record::new(consumer, next, true))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.consumer = Some(consumer);
                Poll::Pending
            }
        }
    }
}

impl<M: RingMemory> fmt::Debug for ReadAsync<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadAsync")
            .field("consumer", &self.consumer)
            .finish()
    }
}

/// One record, borrowed in place from the ring; derefs to its payload. Dropping it releases
/// the space to the producer (or, in a [`ReadBatch`], when the batch ends).
///
/// The bytes live in memory another process can write. A well-behaved producer never writes a
/// committed record, but a hostile one can change the bytes while you read them, even after you
/// validated them: if the producer is not trusted, copy the record out first and validate the
/// copy. (A process of the same user can also shrink the shared-memory object under the
/// mapping, which turns accesses into `SIGBUS`; POSIX shared memory cannot be sealed against
/// that, so share segments only with processes of users you trust to that extent.)
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

    /// The record kind set by the producer ([`Grant::set_kind`]).
    pub fn kind(&self) -> u32 {
        self.next.kind
    }

    /// The position of this record in the ring (for diagnostics).
    pub fn position(&self) -> u64 {
        self.next.pos
    }

    /// Where the record ends: the consumer's [read position](Consumer::read_position) once
    /// it is read (a record end, as [`Consumer::release_to`] takes).
    pub fn end_position(&self) -> u64 {
        self.next.end
    }

    /// Leaves the record unread: it stays in the ring and the next read returns it again. For
    /// readers that look at a record (its kind, an envelope) before deciding to take it.
    ///
    /// ```
    /// let (mut tx, mut rx) = shmesh_ring::spsc::channel(4096)?;
    /// tx.try_claim(1)?.commit(1);
    /// rx.try_read()?.keep();
    /// assert_eq!(rx.try_read()?.len(), 1); // still there
    /// assert!(rx.try_read().is_err()); // now taken
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Turns the record into a guard on a view of its bytes, made once by `view` (such as a
    /// validated typed view of the payload), like [`std::cell::Ref::map`]. The record is
    /// released when the guard drops; if `view` fails, at once.
    ///
    /// `view` receives the payload for any lifetime and must return a reference into it (or a
    /// `'static` one): the guard keeps the record, and so the bytes, for as long as the view
    /// lives.
    ///
    /// # Errors
    ///
    /// What `view` returns.
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut tx, mut rx) = shmesh_ring::spsc::channel(4096)?;
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

/// A committed record seen through a view of its bytes ([`Record::map`]); derefs to the view and
/// releases the record on drop.
pub struct MappedRecord<'a, M: RingMemory, U: ?Sized> {
    /// Points into the payload of `record` (or to a `'static` value).
    view: NonNull<U>,
    record: Record<'a, M>,
}

impl<M: RingMemory, U: ?Sized> MappedRecord<'_, M, U> {
    /// The record kind set by the producer ([`Grant::set_kind`]).
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

// SAFETY: a `MappedRecord` is a `Record` (a `&mut Consumer<M>`, `Send` when `M` is) plus a
// pointer that stands for a shared borrow of `U` inside that record's bytes: moving both to
// another thread is moving a `&mut Consumer<M>` and a `&U`, which is sound when `M: Send` and
// `U: Sync`. (It lets an async task hold a received message across an `.await`.)
unsafe impl<M: RingMemory + Send, U: ?Sized + Sync> Send for MappedRecord<'_, M, U> {}

impl<M: RingMemory, U: ?Sized> Deref for MappedRecord<'_, M, U> {
    type Target = U;

    fn deref(&self) -> &U {
        // SAFETY: `view` was made by `Record::map` from a `&'b U` that the view function,
        // generic over `'b`, could only borrow from the payload slice it was given (or from
        // static data). The payload stays valid and unmoved while `self.record` lives: the
        // mapping (or heap block) never moves, and the producer does not reuse the space until
        // the record is released in its `Drop`, which runs after this borrow of `self` ends.
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

impl<M: RingMemory> Deref for Record<'_, M> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let off = (self.next.pos & self.consumer.mask) + RECORD_HEADER;
        // SAFETY: `poll` checked that the record lies inside the data area and below the
        // committed tail; the producer does not write it until the head passes it, which happens
        // only after this borrow ends.
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

/// Several records released with one index store (see [`Consumer::batch`]).
pub struct ReadBatch<'a, M: RingMemory> {
    consumer: &'a mut Consumer<M>,
}

impl<M: RingMemory> ReadBatch<'_, M> {
    /// Like [`Consumer::try_read`]; the record's space is released when the batch ends.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeper_without_its_barrier_sleeps_briefly() {
        let slice = Duration::from_millis(20);
        assert_eq!(park_slice(slice, true), slice);
        assert_eq!(park_slice(slice, false), DEGRADED_PARK_SLICE);
        assert_eq!(
            park_slice(Duration::from_micros(10), false),
            Duration::from_micros(10)
        );
    }

    #[test]
    fn header_words_round_trip_and_put_the_length_first() {
        for (len, kind) in [(8, 0), (-72, 0), (i32::MAX, PADDING), (0, 7)] {
            let word = encode(len, kind);
            assert_eq!(decode(word), RecordHeader { len, kind });
            assert_eq!(word.to_le_bytes()[..4], len.to_le_bytes());
        }
    }

    #[test]
    fn largest_record_fits_an_empty_ring_anywhere() {
        for cap in [128u64, 256, 4096, 1 << 20] {
            let f = max_footprint(cap);
            assert_eq!(f % RECORD_ALIGN, 0);
            for off in (0..cap).step_by(RECORD_ALIGN as usize) {
                let to_end = cap - off;
                let pad = if f <= to_end { 0 } else { to_end };
                assert!(pad + f + NEXT_SLOT <= cap, "cap {cap} off {off}");
            }
        }
    }
}
