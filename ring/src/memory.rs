//! Where a ring's bytes live.
//!
//! The ring protocol ([`crate::spsc`]) is written once against [`RingMemory`]; it runs on
//! [`HeapMemory`] inside one process (unit tests, miri, loom models) and on
//! [`crate::segment::ShmMemory`] between processes. iceoryx2 builds each concept as both a
//! process-local and a POSIX-shared-memory variant for the same reason: loom cannot see across
//! processes, so the protocol is model-checked on the heap and used for real in shared memory.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::layout::{BroadcastControl, EndpointSlot, RingControl, SLOT_ATTACHED};
use crate::park::FutexHost;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// One of the two ends of an SPSC ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The writer.
    Producer,
    /// The reader.
    Consumer,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Producer => Side::Consumer,
            Side::Consumer => Side::Producer,
        }
    }

    /// Index of this side's endpoint slot (0 = producer, 1 = consumer).
    pub fn index(self) -> usize {
        match self {
            Side::Producer => 0,
            Side::Consumer => 1,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Producer => "producer",
            Side::Consumer => "consumer",
        })
    }
}

/// What a broadcast ring's writer does about a reader that falls a whole ring behind. Chosen at
/// creation, stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BroadcastPolicy {
    /// The writer waits for the slowest live reader (a dead reader is dropped from the set).
    Block,
    /// The writer never waits; a lapped reader is told how many records it lost and resumes at
    /// the oldest record still intact.
    Lap,
}

impl BroadcastPolicy {
    /// The code stored in the header.
    pub fn code(self) -> u32 {
        match self {
            BroadcastPolicy::Block => crate::layout::POLICY_BLOCK,
            BroadcastPolicy::Lap => crate::layout::POLICY_LAP,
        }
    }

    /// The policy with this header code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            crate::layout::POLICY_BLOCK => Some(BroadcastPolicy::Block),
            crate::layout::POLICY_LAP => Some(BroadcastPolicy::Lap),
            _ => None,
        }
    }
}

impl fmt::Display for BroadcastPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BroadcastPolicy::Block => "block",
            BroadcastPolicy::Lap => "lap",
        })
    }
}

/// What one endpoint knows of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// No peer has attached yet.
    NotYet,
    /// A peer is attached and its process holds its liveness token.
    Alive,
    /// The peer detached, or its process died (the kernel released its token).
    Gone,
}

/// Memory that holds one ring: a control block, endpoint slots (two for an SPSC ring, more for
/// the many-endpoint kinds), a broadcast control block, a history table and a data area.
///
/// # Safety
///
/// Implementors guarantee, for as long as the value lives:
/// - [`control`](Self::control), [`slot`](Self::slot), [`broadcast`](Self::broadcast) and
///   [`history`](Self::history) refer to memory that stays mapped;
/// - [`slot_count`](Self::slot_count) is at least 2 and never changes;
/// - [`data`](Self::data) points to [`capacity`](Self::capacity) bytes that stay mapped and
///   are valid for reads and writes, at an address `≡ 8 (mod 16)`;
/// - [`capacity`](Self::capacity) is a power of two, at least 128, and never changes;
/// - no other Rust reference to the data area exists outside the ring protocol;
/// - the handle [`futex_host`](Self::futex_host) returns keeps the memory behind
///   [`control`](Self::control), [`slot`](Self::slot) and [`broadcast`](Self::broadcast)
///   valid, at the same addresses, for as long as it lives (also after `self` is dropped).
pub unsafe trait RingMemory {
    /// The ring's control block.
    fn control(&self) -> &RingControl;
    /// Endpoint slot `index`: 0 is the SPSC producer (and the broadcast writer), 1 the SPSC
    /// consumer (and the MPSC consumer), 2.. the many side.
    ///
    /// # Panics
    ///
    /// If `index >= self.slot_count()` (a bug of the caller: indices come from attach, never
    /// from shared memory).
    fn slot(&self, index: usize) -> &EndpointSlot;
    /// How many endpoint slots there are.
    fn slot_count(&self) -> usize;
    /// The broadcast control block (all zero and unused for the other kinds).
    fn broadcast(&self) -> &BroadcastControl;
    /// The broadcast history table (empty for the other kinds and without history).
    fn history(&self) -> &[AtomicU64];
    /// Start of the data area.
    fn data(&self) -> NonNull<u8>;
    /// Size of the data area in bytes.
    fn capacity(&self) -> u64;
    /// The 8-byte record header at data offset `off` as one atomic word: the low 32 bits are
    /// the length (an `i32`), the high 32 bits the kind, so in memory (little-endian) the
    /// length comes first, as [`crate::layout`] describes.
    ///
    /// # Safety
    ///
    /// `off` is a multiple of 16 below [`capacity`](Self::capacity).
    unsafe fn header(&self, off: u64) -> &AtomicU64;
    /// Whether the liveness token of slot `index` is held by a live endpoint. Called only when
    /// the slot says attached, and never on the fast path (it may be a syscall).
    fn token_held(&self, index: usize) -> bool;
    /// Sleeps while `word == expected`, up to `timeout`; may return early or spuriously.
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every thread sleeping in [`futex_wait`](Self::futex_wait) on `word`.
    fn futex_wake(&self, word: &AtomicU32);
    /// Whether the futex words of this memory are shared between processes (a shared
    /// mapping: no `FUTEX_PRIVATE_FLAG`) rather than private to this one. Heap rings say no.
    fn futex_shared(&self) -> bool {
        true
    }
    /// A `Send + 'static` handle through which another thread sleeps on this memory's futex
    /// words exactly as [`futex_wait`](Self::futex_wait) does, and which keeps the words
    /// mapped while it lives: what the async waits of [`crate::park`] hand to their helper
    /// thread.
    fn futex_host(&self) -> Arc<dyn FutexHost>;
    /// Shadow cells (one per 16-byte record granule) through which loom checks that the
    /// protocol never lets the two sides touch the same bytes concurrently.
    #[cfg(loom)]
    fn shadow(&self) -> Option<&[loom::cell::UnsafeCell<()>]> {
        None
    }
}

/// The header word at `off` in a data area that holds its headers in place.
///
/// # Safety
///
/// `data` points to a data area of more than `off + 8` bytes at an address `≡ 8 (mod 16)`
/// that outlives `'a`, and `off` is a multiple of 16.
#[cfg(not(loom))]
#[inline]
pub(crate) unsafe fn header_in_place<'a>(data: NonNull<u8>, off: u64) -> &'a AtomicU64 {
    // SAFETY: per the contract the 8 bytes at `data + off` are inside the area and 8-aligned;
    // every access to a header goes through this atomic, whatever the other process does.
    unsafe { AtomicU64::from_ptr(data.as_ptr().add(off as usize).cast()) }
}

/// Access tracking for the data area: a zero-sized no-op outside loom; under loom it holds
/// loom's access guards on the shadow cells, so a race in the protocol fails the model.
#[derive(Default)]
pub(crate) struct Track {
    #[cfg(loom)]
    guards: Vec<Guard>,
}

#[cfg(loom)]
#[allow(dead_code)] // the guards are held only for their drop
enum Guard {
    Read(loom::cell::ConstPtr<()>),
    Write(loom::cell::MutPtr<()>),
}

impl Track {
    /// Records an access to `[off, off + len)` of the data area, held until `self` drops.
    #[inline]
    #[allow(unused_variables)]
    pub(crate) fn add<M: RingMemory>(&mut self, mem: &M, off: u64, len: u64, write: bool) {
        #[cfg(loom)]
        if let Some(cells) = mem.shadow() {
            let first = (off / crate::layout::RECORD_ALIGN) as usize;
            let last = ((off + len).div_ceil(crate::layout::RECORD_ALIGN)) as usize;
            for cell in &cells[first..last.min(cells.len())] {
                self.guards.push(if write {
                    Guard::Write(cell.get_mut())
                } else {
                    Guard::Read(cell.get())
                });
            }
        }
    }
}

impl Track {
    /// Ends the recorded accesses now.
    #[inline]
    pub(crate) fn end(&mut self) {
        #[cfg(loom)]
        self.guards.clear();
    }
}

impl fmt::Debug for Track {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Track")
    }
}

/// A ring's memory on the heap of one process: for tests, miri and loom models, and for
/// threads of one process that want the same protocol.
///
/// Liveness on the heap is the slot state: an endpoint is alive until it is dropped.
#[derive(Clone)]
pub struct HeapMemory {
    inner: Arc<HeapInner>,
}

struct HeapInner {
    control: RingControl,
    slots: Vec<EndpointSlot>,
    broadcast: BroadcastControl,
    history: Vec<AtomicU64>,
    base: NonNull<u8>,
    layout: std::alloc::Layout,
    capacity: u64,
    #[cfg(loom)]
    futex: (loom::sync::Mutex<()>, loom::sync::Condvar),
    #[cfg(loom)]
    shadow: Vec<loom::cell::UnsafeCell<()>>,
    /// Under loom the record headers live here, one per 16-byte granule, so that loom sees
    /// their Release/Acquire pairs.
    #[cfg(loom)]
    headers: Vec<AtomicU64>,
}

/// Heap slot state after [`HeapMemory::kill`]: neither attached nor closed, so the peer asks
/// the token, which is not held.
const SLOT_KILLED: u32 = 3;

/// Offset of the data area inside the (128-aligned) heap allocation: `≡ 8 (mod 64)`, like the
/// segment layout.
const HEAP_DATA_OFFSET: usize = 8;

// SAFETY: the raw allocation is owned by `HeapInner` and only accessed through the ring
// protocol, which is what makes concurrent access from the two endpoints sound; everything
// else in `HeapInner` is atomics.
unsafe impl Send for HeapInner {}
// SAFETY: as above: shared access goes through atomics and the ring protocol.
unsafe impl Sync for HeapInner {}

impl HeapMemory {
    /// Allocates a zeroed ring of `capacity` bytes with both positions at `start`.
    ///
    /// `capacity` must be a power of two of at least 128 and `start` a multiple of 16; the
    /// callers ([`crate::spsc::channel`]) check both.
    pub(crate) fn new(capacity: u64, start: u64) -> Self {
        Self::with_slots(capacity, start, 2, 0)
    }

    /// Allocates a zeroed ring of `capacity` bytes with both positions at `start`, `slots`
    /// endpoint slots (at least 2) and a history table of `history` entries.
    pub(crate) fn with_slots(capacity: u64, start: u64, slots: usize, history: usize) -> Self {
        debug_assert!(capacity.is_power_of_two() && capacity >= 128 && start % 16 == 0);
        debug_assert!(slots >= 2);
        let layout = std::alloc::Layout::from_size_align(HEAP_DATA_OFFSET + capacity as usize, 128)
            .expect("ring capacity overflows the address space");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        HeapMemory {
            inner: Arc::new(HeapInner {
                control: RingControl::new(start),
                slots: (0..slots).map(|_| EndpointSlot::new()).collect(),
                broadcast: BroadcastControl::new(start),
                history: (0..history).map(|_| AtomicU64::new(start)).collect(),
                base,
                layout,
                capacity,
                #[cfg(loom)]
                futex: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
                #[cfg(loom)]
                shadow: (0..capacity / crate::layout::RECORD_ALIGN)
                    .map(|_| loom::cell::UnsafeCell::new(()))
                    .collect(),
                #[cfg(loom)]
                headers: (0..capacity / crate::layout::RECORD_ALIGN)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            }),
        }
    }

    /// Overwrites data-area bytes starting at `offset` (wrapping at the capacity), the way a
    /// buggy or hostile peer could: for tests and fuzzing of everything the ring reads back.
    ///
    /// # Safety
    ///
    /// No [`Grant`](crate::Grant) or [`Record`](crate::Record) of this ring may be alive while
    /// it runs: they hand out `&[u8]` / `&mut [u8]` over these bytes, and writing under them is
    /// a data race (what a hostile process can do to a shared-memory ring, but not something
    /// safe Rust may do inside one process).
    pub unsafe fn scribble(&self, offset: u64, bytes: &[u8]) {
        use std::sync::atomic::AtomicU8;
        let cap = self.inner.capacity;
        for (i, &b) in bytes.iter().enumerate() {
            let off = (offset.wrapping_add(i as u64) & (cap - 1)) as usize;
            // SAFETY: `off < capacity`, so the byte is inside the data area, which is valid
            // for writes while `self` lives; the caller guarantees no reference to it exists.
            unsafe {
                AtomicU8::from_ptr(self.data().as_ptr().add(off)).store(b, Ordering::Relaxed)
            };
        }
    }

    /// Marks slot `index` attached (heap endpoints are created attached).
    pub(crate) fn attach(&self, index: usize) {
        let slot = &self.inner.slots[index];
        slot.pid.store(std::process::id(), Ordering::Relaxed);
        slot.attach_count.fetch_add(1, Ordering::Relaxed);
        slot.state.store(SLOT_ATTACHED, Ordering::Release);
    }

    /// Takes the first slot in `range` that no endpoint holds, marks it attached and returns
    /// its index; `None` when all are held. Heap slots are held while attached (the state
    /// word is the token), so "free" means never used, closed or [`kill`](Self::kill)ed.
    pub(crate) fn attach_free(&self, range: std::ops::Range<usize>) -> Option<usize> {
        for index in range {
            let state = &self.inner.slots.get(index)?.state;
            let current = state.load(Ordering::Acquire);
            if current != SLOT_ATTACHED
                && state
                    .compare_exchange(current, SLOT_ATTACHED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                let slot = &self.inner.slots[index];
                slot.pid.store(std::process::id(), Ordering::Relaxed);
                slot.attach_count.fetch_add(1, Ordering::Relaxed);
                return Some(index);
            }
        }
        None
    }

    /// Simulates the death of the endpoint in slot `index`: its token is released without a
    /// clean detach, as when its process is killed (the slot keeps saying "attached"). For
    /// tests of the recovery paths on the heap.
    pub fn kill(&self, index: usize) {
        if let Some(slot) = self.inner.slots.get(index) {
            slot.state.store(SLOT_KILLED, Ordering::Release);
        }
    }
}

impl Drop for HeapInner {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated in `HeapMemory::new` with exactly this layout, and this
        // is the last owner.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

impl fmt::Debug for HeapMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapMemory")
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

// SAFETY: `data()` points `HEAP_DATA_OFFSET` (≡ 8 mod 16) bytes into a 128-aligned allocation
// of `HEAP_DATA_OFFSET + capacity` bytes owned by the `Arc`, which lives as long as `self`;
// the capacity was checked by the constructor's callers and never changes.
unsafe impl RingMemory for HeapMemory {
    fn control(&self) -> &RingControl {
        &self.inner.control
    }

    fn slot(&self, index: usize) -> &EndpointSlot {
        &self.inner.slots[index]
    }

    fn slot_count(&self) -> usize {
        self.inner.slots.len()
    }

    fn broadcast(&self) -> &BroadcastControl {
        &self.inner.broadcast
    }

    fn history(&self) -> &[AtomicU64] {
        &self.inner.history
    }

    fn data(&self) -> NonNull<u8> {
        // SAFETY: the offset is inside the allocation (its size is HEAP_DATA_OFFSET + capacity).
        unsafe { self.inner.base.add(HEAP_DATA_OFFSET) }
    }

    fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    #[cfg(not(loom))]
    unsafe fn header(&self, off: u64) -> &AtomicU64 {
        // SAFETY: the data area is `capacity` bytes at an address ≡ 8 (mod 16) owned by `self`;
        // the caller guarantees `off` is 16-aligned and below the capacity.
        unsafe { header_in_place(self.data(), off) }
    }

    #[cfg(loom)]
    unsafe fn header(&self, off: u64) -> &AtomicU64 {
        &self.inner.headers[(off / crate::layout::RECORD_ALIGN) as usize]
    }

    fn token_held(&self, index: usize) -> bool {
        self.inner.slots[index].state.load(Ordering::Acquire) == SLOT_ATTACHED
    }

    #[cfg(not(loom))]
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        crate::wait::futex_wait(word, expected, timeout, false);
    }

    #[cfg(not(loom))]
    fn futex_wake(&self, word: &AtomicU32) {
        crate::wait::futex_wake(word, false);
    }

    // Under loom a futex is a mutex and a condition variable: the value check and the sleep
    // are atomic with respect to the wake, exactly the guarantee FUTEX_WAIT gives. A lost
    // wake-up in the protocol then shows up as a deadlock in the model.
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
        let _guard = lock.lock().unwrap();
        cvar.notify_all();
    }

    fn futex_host(&self) -> Arc<dyn FutexHost> {
        Arc::new(HeapHost(self.clone()))
    }

    fn futex_shared(&self) -> bool {
        false
    }

    #[cfg(loom)]
    fn shadow(&self) -> Option<&[loom::cell::UnsafeCell<()>]> {
        Some(&self.inner.shadow)
    }
}

/// The [`FutexHost`] of a heap ring: a clone of it keeps it allocated, and it waits as the
/// ring's endpoints do (a private futex, or loom's model of one).
struct HeapHost(HeapMemory);

impl FutexHost for HeapHost {
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        RingMemory::futex_wait(&self.0, word, expected, timeout);
    }

    fn futex_wake(&self, word: &AtomicU32) {
        RingMemory::futex_wake(&self.0, word);
    }
}
