//! The single-producer/single-consumer byte ring.
//!
//! A bounded, lock-free FIFO of variable-length records in one contiguous data area, written
//! in place by a [`Producer`] and read in place by a [`Consumer`], with no copy and no syscall
//! on the fast path.
//!
//! Where it comes from:
//! - the record format and claim/commit/abort follow Aeron's `aeron_rb.h` (8-byte header
//!   `{len, type}`, negative length while in progress, padding record at the wrap);
//! - the two free-running 64-bit positions with a cached copy of the other side's index follow
//!   rtrb (`cached_head`) and Aeron (`head_cache_position`): a side touches the other side's
//!   cache line only when its cached copy says full or empty;
//! - the batch forms (several records, one index store) follow Aeron's and rtrb's chunks.
//!
//! # Protocol
//!
//! Positions are byte counts; a position's offset in the data area is `pos & (capacity - 1)`.
//! The producer owns `[tail, head + capacity)`, the consumer owns `[head, tail)`.
//!
//! - SYNC POINT A: the producer writes records below its new tail, then stores `tail` with
//!   `Release`; the consumer loads `tail` with `Acquire` before reading those records.
//! - SYNC POINT B: the consumer finishes with records below its new head, then stores `head`
//!   with `Release`; the producer loads `head` with `Acquire` before reusing that space.
//! - SYNC POINT C (parked flag, see [`crate::wait`]): a side about to sleep stores 1 to its
//!   parked word, fences `SeqCst`, re-checks the ring, then sleeps on the word; the other side,
//!   after its index store, fences `SeqCst` and wakes only if it reads 1.
//!
//! Everything read from the shared control block or from record headers is checked before use
//! (positions in range, lengths inside the committed span and the data area), so a peer that
//! scribbles on the ring causes a [`Corruption`] error, never an access outside the data area.
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
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::error::{AttachError, ClaimError, Corruption, ReadError, TryClaimError, TryReadError};
use crate::layout::{
    align_record, RecordHeader, PADDING, RECORD_ALIGN, RECORD_HEADER, SLOT_CLOSED, SLOT_NEVER,
};
use crate::memory::{HeapMemory, PeerState, RingMemory, Side, Track};
use crate::sync::{fence, AtomicU32, Ordering};
use crate::wait::{Step, WaitStrategy, Waiter};

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

/// The largest payload a ring of `capacity` bytes accepts: half the capacity less the header.
///
/// Half (and at most 1 GiB), because a record that does not fit before the end of the data area is preceded by a
/// padding record; with records of at most half the ring, an empty ring always has room.
pub const fn max_payload(capacity: u64) -> u64 {
    let half = capacity / 2;
    let limit = if half < MAX_RECORD { half } else { MAX_RECORD };
    limit - RECORD_HEADER
}

/// Largest record (header included): the header's length field is an `i32`.
const MAX_RECORD: u64 = 1 << 30;

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
/// assert_eq!(tx.max_payload(), (1 << 15) - 8);
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
    mem.attach(Side::Producer);
    mem.attach(Side::Consumer);
    Ok((Producer::new(mem.clone())?, Consumer::new(mem)?))
}

/// Reads the record header at data offset `off`.
///
/// # Safety
///
/// `off` is a multiple of 8 and `off + 8 <= capacity`.
#[inline]
unsafe fn load_header<M: RingMemory>(mem: &M, off: u64) -> RecordHeader {
    use std::sync::atomic::{AtomicI32, AtomicU32};
    // SAFETY: per the contract, the 8 bytes at `off` are inside the data area (valid for reads,
    // mapped while `mem` lives) and 8-aligned (the data area is 8-aligned). Atomic loads, as a
    // peer may write them concurrently.
    unsafe {
        let p = mem.data().as_ptr().add(off as usize);
        RecordHeader {
            len: AtomicI32::from_ptr(p.cast()).load(Ordering::Relaxed),
            kind: AtomicU32::from_ptr(p.add(4).cast()).load(Ordering::Relaxed),
        }
    }
}

/// Writes the record header at data offset `off`.
///
/// # Safety
///
/// As [`load_header`].
#[inline]
unsafe fn store_header<M: RingMemory>(mem: &M, off: u64, header: RecordHeader) {
    use std::sync::atomic::{AtomicI32, AtomicU32};
    // SAFETY: as in `load_header`; atomic stores, as a hostile peer may touch them concurrently.
    unsafe {
        let p = mem.data().as_ptr().add(off as usize);
        AtomicU32::from_ptr(p.add(4).cast()).store(header.kind, Ordering::Relaxed);
        AtomicI32::from_ptr(p.cast()).store(header.len, Ordering::Release);
    }
}

/// The state of the peer, as seen from `side`: slot state first, liveness token second.
fn peer_state<M: RingMemory>(mem: &M, side: Side) -> PeerState {
    let peer = side.peer();
    match mem.slot(peer).state.load(Ordering::Acquire) {
        SLOT_NEVER => PeerState::NotYet,
        SLOT_CLOSED => PeerState::Gone,
        _ if mem.token_held(peer) => PeerState::Alive,
        _ => PeerState::Gone,
    }
}

/// Clears a parked word and wakes its sleeper, if the word says someone sleeps (SYNC POINT C,
/// waker side: the caller has just stored its index).
#[inline]
fn wake_if_parked<M: RingMemory>(mem: &M, word: &AtomicU32) {
    // SYNC POINT C: pairs with the fence in `park` on the other side.
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) != 0 && word.swap(0, Ordering::AcqRel) != 0 {
        mem.futex_wake(word);
    }
}

/// Marks `side` detached and wakes its peer so that it notices at once.
fn detach<M: RingMemory>(mem: &M, side: Side) {
    mem.slot(side).state.store(SLOT_CLOSED, Ordering::Release);
    let control = mem.control();
    let word = match side {
        Side::Producer => &control.consumer_parked.0,
        Side::Consumer => &control.producer_parked.0,
    };
    wake_if_parked(mem, word);
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
pub struct Producer<M: RingMemory> {
    mem: M,
    mask: u64,
    max_payload: u64,
    /// Next position to write; records below it are committed (maybe not yet published).
    tail: u64,
    /// The last tail stored to the control block.
    published: u64,
    /// The consumer's head as last loaded.
    cached_head: u64,
    wait: WaitStrategy,
    peer_check: PeerCheck,
    _not_sync: PhantomData<Cell<()>>,
}

impl<M: RingMemory> Producer<M> {
    /// Takes the producer end of the ring in `mem`, whose liveness token the caller holds.
    pub(crate) fn new(mem: M) -> Result<Self, AttachError> {
        let cap = mem.capacity();
        let control = mem.control();
        let tail = control.tail.0.load(Ordering::Acquire);
        let head = control.head.0.load(Ordering::Acquire);
        check_span(tail, head, cap)?;
        Ok(Producer {
            mask: cap - 1,
            max_payload: max_payload(cap),
            tail,
            published: tail,
            cached_head: head,
            wait: WaitStrategy::default(),
            peer_check: PeerCheck::default(),
            _not_sync: PhantomData,
            mem,
        })
    }

    /// Capacity of the data area in bytes.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
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
    /// assert!(matches!(tx.try_claim(1000), Err(shmesh_ring::TryClaimError::TooLarge { max: 56, .. })));
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
        let reserved = self.reserve_until(len as u64, Some(Instant::now() + timeout))?;
        Ok(Grant::new(self, reserved, true))
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
        let needed = if footprint <= to_end {
            footprint
        } else {
            to_end + footprint
        };
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
        let start = self.tail;
        let mut pos = start;
        if footprint > to_end {
            // A record never wraps: pad to the end of the data area.
            let mut track = Track::default();
            track.add(&self.mem, off, to_end, true);
            // SAFETY: `off` is a multiple of 16 below the capacity, so the 8 header bytes are in
            // the data area; the space is ours (checked free above).
            unsafe {
                store_header(
                    &self.mem,
                    off,
                    RecordHeader {
                        len: to_end as i32,
                        kind: PADDING,
                    },
                )
            };
            pos = pos.wrapping_add(to_end);
        }
        Ok(Reserved { start, pos, len })
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
                    // SYNC POINT C: pairs with the fence in the consumer's `wake_if_parked`.
                    fence(Ordering::SeqCst);
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

    /// The last try once the consumer is known gone: space it released before leaving can still
    /// be used; a full ring is final.
    fn reserve_or_gone(&mut self, len: u64) -> Result<Reserved, ClaimError> {
        self.try_reserve(len).map_err(|e| match e {
            TryClaimError::Full { .. } => ClaimError::PeerGone,
            other => other.into(),
        })
    }

    /// Stores the tail if records were committed since the last store, and wakes a sleeping
    /// consumer.
    fn publish(&mut self) {
        if self.tail != self.published {
            self.published = self.tail;
            // SYNC POINT A (Release): pairs with the consumer's Acquire load of `tail`.
            self.mem
                .control()
                .tail
                .0
                .store(self.tail, Ordering::Release);
            wake_if_parked(&self.mem, &self.mem.control().consumer_parked.0);
        }
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
        let off = reserved.pos & producer.mask;
        let mut track = Track::default();
        track.add(
            &producer.mem,
            off,
            align_record(RECORD_HEADER + reserved.len),
            true,
        );
        let claimed = -((RECORD_HEADER + reserved.len) as i32);
        // SAFETY: `off` is 16-aligned and the record (header included) fits before the end of
        // the data area (`try_reserve` padded otherwise); the space is the producer's.
        unsafe {
            store_header(
                &producer.mem,
                off,
                RecordHeader {
                    len: claimed,
                    kind: 0,
                },
            )
        };
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
        let producer = &mut *self.producer;
        let off = self.reserved.pos & producer.mask;
        let header = RecordHeader {
            len: (RECORD_HEADER + len) as i32,
            kind: self.kind,
        };
        // SAFETY: as in `Grant::new`.
        unsafe { store_header(&producer.mem, off, header) };
        producer.tail = self
            .reserved
            .pos
            .wrapping_add(align_record(RECORD_HEADER + len));
        self.done = true;
        self.track.end();
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

/// The reading end of an SPSC ring. `Send`, not `Sync`: one thread reads.
pub struct Consumer<M: RingMemory> {
    mem: M,
    mask: u64,
    /// Next position to read (padding already skipped, maybe not yet released).
    head: u64,
    /// The last head stored to the control block.
    released: u64,
    /// The producer's tail as last loaded.
    cached_tail: u64,
    wait: WaitStrategy,
    peer_check: PeerCheck,
    _not_sync: PhantomData<Cell<()>>,
}

impl<M: RingMemory> Consumer<M> {
    /// Takes the consumer end of the ring in `mem`, whose liveness token the caller holds.
    pub(crate) fn new(mem: M) -> Result<Self, AttachError> {
        let cap = mem.capacity();
        let head = mem.control().head.0.load(Ordering::Acquire);
        let tail = mem.control().tail.0.load(Ordering::Acquire);
        check_span(tail, head, cap)?;
        Ok(Consumer {
            mask: cap - 1,
            head,
            released: head,
            cached_tail: head,
            wait: WaitStrategy::default(),
            peer_check: PeerCheck::default(),
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
        let next = self.next_until(Some(Instant::now() + timeout))?;
        Ok(Record::new(self, next, true))
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
            if self.head == self.cached_tail {
                // SYNC POINT A (Acquire): pairs with the producer's Release store of `tail`.
                let tail = self.mem.control().tail.0.load(Ordering::Acquire);
                check_span(tail, self.head, cap)?;
                self.cached_tail = tail;
                if tail == self.head {
                    return Ok(None);
                }
            }
            let off = self.head & self.mask;
            let mut track = Track::default();
            track.add(&self.mem, off, RECORD_HEADER, false);
            // SAFETY: `head` is 16-aligned (checked by `check_span` and kept so below) and
            // masked, so the 8 header bytes are inside the data area.
            let header = unsafe { load_header(&self.mem, off) };
            track.end();
            if header.len < RECORD_HEADER as i32 {
                return Err(Corruption {
                    what: "record length",
                    found: header.len as i64 as u64,
                    expected: format!(
                        "at least {RECORD_HEADER} (a negative length is a record still claimed)"
                    ),
                });
            }
            let footprint = align_record(header.len as u64);
            let available = self.cached_tail.wrapping_sub(self.head);
            if footprint > cap - off || footprint > available {
                return Err(Corruption {
                    what: "record length",
                    found: header.len as u64,
                    expected: format!(
                        "at most {} (committed bytes) and {} (bytes to the end of the ring)",
                        available,
                        cap - off
                    ),
                });
            }
            let end = self.head.wrapping_add(footprint);
            if header.kind == PADDING {
                self.head = end;
                continue;
            }
            return Ok(Some(Next {
                pos: self.head,
                len: header.len as u64 - RECORD_HEADER,
                kind: header.kind,
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
                    let word = &self.mem.control().consumer_parked.0;
                    word.store(1, Ordering::Relaxed);
                    // SYNC POINT C: pairs with the fence in the producer's `wake_if_parked`.
                    fence(Ordering::SeqCst);
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

    /// Stores the head if records were read since the last store, and wakes a sleeping
    /// producer.
    fn release(&mut self) {
        if self.head != self.released {
            self.released = self.head;
            // SYNC POINT B (Release): pairs with the producer's Acquire load of `head`.
            self.mem
                .control()
                .head
                .0
                .store(self.head, Ordering::Release);
            wake_if_parked(&self.mem, &self.mem.control().producer_parked.0);
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

/// One record, borrowed in place from the ring; derefs to its payload. Dropping it releases
/// the space to the producer (or, in a [`ReadBatch`], when the batch ends).
///
/// The bytes live in memory another process can write. A well-behaved producer never writes a
/// committed record, but a hostile one can change the bytes while you read them: validate
/// what you read, or copy it first, if the producer is not trusted.
pub struct Record<'a, M: RingMemory> {
    consumer: &'a mut Consumer<M>,
    next: Next,
    release: bool,
    /// Held while the consumer may read these bytes; ended before they are released.
    track: Track,
}

impl<'a, M: RingMemory> Record<'a, M> {
    fn new(consumer: &'a mut Consumer<M>, next: Next, release: bool) -> Self {
        let mut track = Track::default();
        track.add(
            &consumer.mem,
            next.pos & consumer.mask,
            next.end.wrapping_sub(next.pos),
            false,
        );
        Record {
            consumer,
            next,
            release,
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
        self.consumer.head = self.next.end;
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
