//! The shared-memory ABI: every byte another process reads or writes.
//!
//! A segment is laid out as follows (offsets in bytes from the start of the mapping):
//!
//! | offset | size | what |
//! |-------:|-----:|------|
//! | 0      | 128  | [`SegmentHeader`]: magic, layout version, kind, sizes, creator, schema |
//! | 128    | 256  | two [`EndpointSlot`]s: producer (0) and consumer (1) |
//! | 384    | 512  | [`RingControl`]: tail, head and the two parked words, 128 bytes each |
//! | 896    | 640  | [`SchemaBlock`]: the message type's description, and the last opener refused for a different one |
//! | 1544   | cap  | SPSC ring: the data area (records): `≡ 8 (mod 64)`, payloads 16-byte aligned |
//!
//! The many-endpoint kinds (MPSC and broadcast rings) add, after the schema block:
//!
//! | offset | size | what |
//! |-------:|-----:|------|
//! | 1536   | 128  | [`BroadcastControl`]: the broadcast writer's intent, limit and record count (zero for MPSC) |
//! | 1664   | 128 × (slots − 2) | endpoint slots 2.. (the "many" side: MPSC writers, broadcast readers) |
//! | ...    | 8 × history, rounded up to 128 | broadcast history: start positions of the last records |
//! | [`data_offset`] | cap | the data area, `≡ 8 (mod 64)` |
//!
//! A region (kind 5) keeps slots 0 (its writer) and 1 (unused), the ring control block (unused)
//! and the schema block, then:
//!
//! | offset | size | what |
//! |-------:|-----:|------|
//! | 1536   | 384  | [`RegionControl`]: latest version, the version of each buffer, the wait words, the shape |
//! | 1920   | 8 × history × (1 + ⌈chunks / 64⌉) | change history: per version, the chunks it changed |
//! | [`RegionShape::buffer_offset`] | buffers × stride | the buffers, page aligned, each `size` bytes rounded up to 128 |
//!
//! Endpoint slot `i` is liveness-token byte `1 + i`. Slot 0 is the SPSC producer and the
//! broadcast writer; slot 1 the SPSC and MPSC consumer; MPSC writers and broadcast readers take
//! free slots from 2 on.
//!
//! The header is written by the creator first; `magic` is stored last with `Release`
//! (an opener that loads it with `Acquire` sees the rest). Everything an opener or a peer reads
//! afterwards may still be scribbled on by a buggy or hostile process, so the header fields are
//! atomics read with `Relaxed` loads and checked before use.
//!
//! Record format (follows Aeron's `aeron_rb.h`): each record starts at a position that is a
//! multiple of [`RECORD_ALIGN`] with an 8-byte [`RecordHeader`] `{len: i32, kind: u32}`, read
//! and written as one atomic little-endian `u64`. `len` counts header and payload; it is 0 in
//! the slot just past the last committed record ("nothing yet"), negative while the record is
//! claimed but not committed, and positive once committed: the `Release` store of a positive
//! length is what publishes a record.
//! The payload follows the header, so with the data area at an address `≡ 8 (mod 16)` every
//! payload is 16-byte aligned (rkyv needs it). A record never wraps: when it does not fit before
//! the end of the data area, a padding record (kind [`PADDING`]) fills the rest.

use crate::sync::{AtomicU32, AtomicU64};

/// `b"SHMESH\0\x01"` read as a little-endian `u64`: the segment is initialized.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMESH\0\x01");
/// The version of this layout; bumped on any change of this module.
pub const LAYOUT_VERSION: u32 = 3;
/// Alignment and granularity of record positions, in bytes.
pub const RECORD_ALIGN: u64 = 16;
/// Size of a record header, in bytes.
pub const RECORD_HEADER: u64 = 8;
/// The record kind of a padding record, skipped by readers.
pub const PADDING: u32 = u32::MAX;
/// Size of one cache-line-padded block. 128 bytes: adjacent-line prefetch on x86-64 pulls
/// pairs of 64-byte lines (crossbeam `CachePadded`).
pub const LINE: usize = 128;

/// Offset of the endpoint slots.
pub const SLOTS_OFFSET: usize = 128;
/// Offset of the ring control block.
pub const CONTROL_OFFSET: usize = 384;
/// Offset of the schema block.
pub const SCHEMA_OFFSET: usize = 896;
/// Bytes of schema description text: [`SCHEMA_TEXT_WORDS`] little-endian `u64` words.
pub const SCHEMA_TEXT_LEN: usize = 256;
/// Words of schema description text.
pub const SCHEMA_TEXT_WORDS: usize = SCHEMA_TEXT_LEN / 8;
/// Offset of the data area: `≡ 8 (mod 64)`, so a record at a 64-byte-aligned position has its
/// header and first 48 payload bytes on one cache line (payloads stay 16-byte aligned), and a
/// small message costs the reader one line.
pub const DATA_OFFSET: usize = 1544;
/// Offset of the [`BroadcastControl`] block of the many-endpoint kinds.
pub const EXT_OFFSET: usize = 1536;
/// Offset of endpoint slot 2 of the many-endpoint kinds (slots 0 and 1 are at [`SLOTS_OFFSET`]).
pub const EXTRA_SLOTS_OFFSET: usize = EXT_OFFSET + LINE;
/// Most endpoint slots a segment may have (token bytes 1..=1024).
pub const MAX_SLOTS: usize = 1026;
/// Longest broadcast history, in records.
pub const MAX_HISTORY: usize = 1 << 16;

/// Offset of endpoint slot `index` in a segment.
pub const fn slot_offset(index: usize) -> usize {
    if index < 2 {
        SLOTS_OFFSET + index * LINE
    } else {
        EXTRA_SLOTS_OFFSET + (index - 2) * LINE
    }
}

/// Offset of the history table of a many-endpoint segment with `slots` endpoint slots.
pub const fn history_offset(slots: usize) -> usize {
    slot_offset(if slots < 2 { 2 } else { slots })
}

/// Offset of the data area of a many-endpoint segment with `slots` endpoint slots and a history
/// of `history` records: after the history table, `≡ 8 (mod 64)`.
pub const fn data_offset(slots: usize, history: usize) -> usize {
    let end = history_offset(slots) + (history * 8).div_ceil(LINE) * LINE;
    end.div_ceil(64) * 64 + 8
}

/// Segment header. Written once by the creator, then read-only.
#[repr(C)]
#[derive(Debug)]
pub struct SegmentHeader {
    /// [`MAGIC`] once initialized; 0 while the creator is still writing. Stored last.
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`] of the creator.
    pub layout_version: AtomicU32,
    /// What the segment holds: a `SegmentKind` code (1 = SPSC ring, 2 = probe, 3 = MPSC ring,
    /// 4 = broadcast ring, 5 = region).
    pub kind: AtomicU32,
    /// Size of the whole shared-memory object in bytes (equals `fstat` size).
    pub total_size: AtomicU64,
    /// Size of the data area in bytes: a power of two (0 for kinds without one). Regions: the
    /// region's size in bytes (any size).
    pub capacity: AtomicU64,
    /// Offset of the data area from the start of the mapping ([`DATA_OFFSET`]).
    pub data_offset: AtomicU64,
    /// Pid of the creator in its own pid namespace. Display only.
    pub creator_pid: AtomicU32,
    /// Number of endpoint slots (2 for SPSC rings and probes).
    pub slot_count: AtomicU32,
    /// Start time of the creator (clock ticks since boot, `/proc/self/stat` field 22). Display only.
    pub creator_start_time: AtomicU64,
    /// Creation time, nanoseconds since the Unix epoch. Display only.
    pub created_unix_ns: AtomicU64,
    /// Schema fingerprint of the message type (all zero for byte rings).
    pub schema: [AtomicU64; 4],
    /// Broadcast rings: the slow-reader policy ([`POLICY_BLOCK`] or [`POLICY_LAP`]); 0 otherwise.
    pub policy: AtomicU32,
    /// Broadcast rings: the length of the history table (the records a late joiner may ask
    /// for, plus 8 of slack; at least 256 under `Lap`, where a lapped reader resumes from it;
    /// see `crate::broadcast`). Regions: the change history, in versions. 0 otherwise.
    pub history: AtomicU32,
    /// Reserved, zero.
    pub reserved: [AtomicU64; 3],
}

/// Broadcast policy code: the writer waits for the slowest live reader.
pub const POLICY_BLOCK: u32 = 1;
/// Broadcast policy code: the writer never waits; lapped readers lose records.
pub const POLICY_LAP: u32 = 2;

/// Most buffers a region may have.
pub const MAX_REGION_BUFFERS: usize = 8;
/// Largest region, in bytes (1 TiB).
pub const MAX_REGION_SIZE: u64 = 1 << 40;
/// Longest change history of a region, in versions.
pub const MAX_REGION_HISTORY: usize = 1 << 12;
/// Smallest and largest change-tracking chunk of a region, in bytes (powers of two).
pub const REGION_CHUNK_RANGE: std::ops::RangeInclusive<usize> = 64..=(1 << 24);
/// A region buffer's version word while the writer rewrites it (or after it died doing so):
/// the buffer holds no whole version.
pub const REGION_WRITING: u64 = u64::MAX;
/// Offset of the [`RegionControl`] block of a region segment.
pub const REGION_OFFSET: usize = EXT_OFFSET;
/// Offset of a region's change history: one entry per version, `1 + ⌈chunks / 64⌉` words
/// (the version the entry describes, then a bitmap of the chunks that version changed).
pub const REGION_HISTORY_OFFSET: usize = REGION_OFFSET + 3 * LINE;

/// Where everything of a region lives, derived from its four parameters (and so recomputed
/// and compared by every opener, never trusted from the segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionShape {
    /// Bytes of the region (of one version).
    pub size: usize,
    /// How many copies of the region there are (version `v` lives in buffer `v % buffers`).
    pub buffers: usize,
    /// Bytes per change-tracking chunk (a power of two).
    pub chunk_size: usize,
    /// How many versions the change history covers.
    pub history: usize,
    /// Chunks of the region: `⌈size / chunk_size⌉`.
    pub chunks: usize,
    /// Words per history entry: the version, then the chunk bitmap.
    pub entry_words: usize,
    /// Offset of buffer 0 (page aligned).
    pub buffer_offset: usize,
    /// Distance between two buffers: `size` rounded up to [`LINE`].
    pub stride: usize,
    /// Total bytes of the segment, before rounding to pages.
    pub end: usize,
}

impl RegionShape {
    /// The shape of a region with these parameters, or which parameter is out of range (its
    /// name, the value, and what is allowed).
    pub fn new(
        size: u64,
        buffers: usize,
        chunk_size: usize,
        history: usize,
    ) -> Result<Self, (&'static str, u64, String)> {
        if size == 0 || size > MAX_REGION_SIZE {
            return Err(("size", size, format!("1 to {MAX_REGION_SIZE} bytes")));
        }
        if !(2..=MAX_REGION_BUFFERS).contains(&buffers) {
            return Err((
                "buffers",
                buffers as u64,
                format!("2 to {MAX_REGION_BUFFERS}"),
            ));
        }
        if !chunk_size.is_power_of_two() || !REGION_CHUNK_RANGE.contains(&chunk_size) {
            return Err((
                "chunk size",
                chunk_size as u64,
                format!(
                    "a power of two from {} to {}",
                    REGION_CHUNK_RANGE.start(),
                    REGION_CHUNK_RANGE.end()
                ),
            ));
        }
        if history < buffers || history > MAX_REGION_HISTORY {
            return Err((
                "history",
                history as u64,
                format!("{buffers} (the buffer count) to {MAX_REGION_HISTORY} versions"),
            ));
        }
        let size = size as usize;
        let chunks = size.div_ceil(chunk_size);
        let entry_words = 1 + chunks.div_ceil(64);
        let history_end = REGION_HISTORY_OFFSET + history * entry_words * 8;
        let buffer_offset = history_end.div_ceil(4096) * 4096;
        let stride = size.div_ceil(LINE) * LINE;
        Ok(RegionShape {
            size,
            buffers,
            chunk_size,
            history,
            chunks,
            entry_words,
            buffer_offset,
            stride,
            end: buffer_offset + buffers * stride,
        })
    }
}

/// A region's control block (three 128-byte lines at [`REGION_OFFSET`]).
///
/// Line 0 is what a reader loads for every snapshot, written by the writer on publish; line 1
/// the sleepers' flag; line 2 the shape, written by the creator before the magic and then
/// read-only (openers recompute it from `size`, `buffers`, `chunk_size` and `history` and
/// refuse a segment whose stored offsets differ).
#[repr(C, align(128))]
#[derive(Debug)]
pub struct RegionControl {
    /// The latest published version. Only goes up. `Release` store after the buffer and the
    /// history entry of that version are complete.
    pub latest: AtomicU64,
    /// The version each buffer holds, or [`REGION_WRITING`] while the writer rewrites it.
    /// Buffer `v % buffers` holds version `v` once its word says `v`.
    pub buffer_version: [AtomicU64; MAX_REGION_BUFFERS],
    /// The low 32 bits of `latest` (for tools: a cheap "something changed" word).
    pub notify: AtomicU32,
    /// Reserved, zero.
    pub reserved0: AtomicU32,
    /// Reserved, zero.
    pub reserved1: [AtomicU64; 6],
    /// The futex word readers sleep on in `wait_for`: 1 while some reader may sleep (it
    /// sleeps while the word is 1); the writer swaps it to 0 and wakes them.
    pub parked: AtomicU32,
    /// Reserved, zero.
    pub reserved2: [AtomicU32; 31],
    /// Bytes of the region.
    pub size: AtomicU64,
    /// Number of buffers.
    pub buffers: AtomicU32,
    /// Bytes per change-tracking chunk.
    pub chunk_size: AtomicU32,
    /// Versions of change history.
    pub history: AtomicU32,
    /// Words per history entry.
    pub entry_words: AtomicU32,
    /// Offset of buffer 0.
    pub buffer_offset: AtomicU64,
    /// Distance between buffers.
    pub stride: AtomicU64,
    /// Versions published by all writers, takeovers included (display only).
    pub publishes: AtomicU64,
    /// Writers that took over from a dead one (display only).
    pub takeovers: AtomicU64,
    /// Reserved, zero.
    pub reserved3: [AtomicU64; 9],
}

impl RegionControl {
    /// A control block for `shape`, at version 0 with every buffer holding version 0.
    pub fn new(shape: &RegionShape) -> Self {
        let ctl = Self {
            latest: AtomicU64::new(0),
            buffer_version: std::array::from_fn(|_| AtomicU64::new(0)),
            notify: AtomicU32::new(0),
            reserved0: AtomicU32::new(0),
            reserved1: std::array::from_fn(|_| AtomicU64::new(0)),
            parked: AtomicU32::new(0),
            reserved2: std::array::from_fn(|_| AtomicU32::new(0)),
            size: AtomicU64::new(0),
            buffers: AtomicU32::new(0),
            chunk_size: AtomicU32::new(0),
            history: AtomicU32::new(0),
            entry_words: AtomicU32::new(0),
            buffer_offset: AtomicU64::new(0),
            stride: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
            reserved3: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        ctl.store_shape(shape);
        ctl
    }

    /// Writes the shape fields (the creator, before publishing the magic).
    pub fn store_shape(&self, shape: &RegionShape) {
        use crate::sync::Ordering::Relaxed;
        self.size.store(shape.size as u64, Relaxed);
        self.buffers.store(shape.buffers as u32, Relaxed);
        self.chunk_size.store(shape.chunk_size as u32, Relaxed);
        self.history.store(shape.history as u32, Relaxed);
        self.entry_words.store(shape.entry_words as u32, Relaxed);
        self.buffer_offset
            .store(shape.buffer_offset as u64, Relaxed);
        self.stride.store(shape.stride as u64, Relaxed);
    }
}

/// Endpoint slot state: no endpoint has attached yet.
pub const SLOT_NEVER: u32 = 0;
/// Endpoint slot state: an endpoint attached; it is alive while it holds its liveness token.
pub const SLOT_ATTACHED: u32 = 1;
/// Endpoint slot state: the endpoint detached cleanly.
pub const SLOT_CLOSED: u32 = 2;

/// The broadcast writer's words that readers read (128 bytes, at [`EXT_OFFSET`]). Written by the
/// writer only.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct BroadcastControl {
    /// The end of the region the writer may be overwriting now: stored before it writes a
    /// record, so a `Lap` reader that reads it after copying a record knows whether the copy
    /// can have been overwritten.
    pub tail_intent: AtomicU64,
    /// `Block`: the position up to which the writer may write without looking at the readers'
    /// cursors again. A joining reader checks its start against it.
    pub limit: AtomicU64,
    /// Records published so far (the history table holds the start of record `n` at `n % history`).
    pub published: AtomicU64,
    /// Position of the first record ever written (the ring's start).
    pub start: AtomicU64,
    /// Reserved, zero.
    pub reserved: [AtomicU64; 12],
}

impl BroadcastControl {
    /// A control block for a ring starting at `start`.
    pub fn new(start: u64) -> Self {
        Self {
            tail_intent: AtomicU64::new(start),
            limit: AtomicU64::new(start),
            published: AtomicU64::new(0),
            start: AtomicU64::new(start),
            reserved: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One endpoint (producer or consumer) of a ring. Written by that endpoint when it attaches
/// and detaches; read by its peer and by tools.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct EndpointSlot {
    /// [`SLOT_NEVER`], [`SLOT_ATTACHED`] or [`SLOT_CLOSED`]. Any other value is treated as
    /// "ask the liveness token".
    pub state: AtomicU32,
    /// Pid of the endpoint's process in its own pid namespace. Display only.
    pub pid: AtomicU32,
    /// Start time of that process (clock ticks since boot). Display only.
    pub start_time: AtomicU64,
    /// How many endpoints have attached to this slot so far (takeovers included).
    pub attach_count: AtomicU64,
    /// Broadcast readers: the next position this reader will read (its head). Written by the
    /// reader only, read by the writer (`Block`) and by tools.
    pub cursor: AtomicU64,
    /// Messages written (writers) or read (readers) through this slot so far, all the endpoints
    /// that used it together. Written by the endpoint only (`Relaxed`), read by tools.
    pub messages: AtomicU64,
    /// Payload bytes of those messages.
    pub bytes: AtomicU64,
    /// Writers: how many times a write found the ring full and had to wait or fail. Readers:
    /// how many times a read found it empty and parked.
    pub waits: AtomicU64,
    /// Readers of `Lap` broadcast rings: records lost to being lapped.
    pub dropped: AtomicU64,
    /// MPSC writers: the tail position this writer is claiming at (stored before its claim),
    /// so that the consumer never treats a live writer's claim as abandoned.
    pub intent: AtomicU64,
}

/// What the message type of a segment is, in words a person can read, and the last opener that
/// was refused because its type differed (so that the creator can report the mismatch too).
///
/// Text fields hold UTF-8 packed into little-endian `u64` words, NUL-padded, at most
/// [`SCHEMA_TEXT_LEN`] bytes. They are for messages and tools only: a reader decodes them lossily
/// and never trusts them for anything else (any process of the user can write them).
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SchemaBlock {
    /// The creator's description of the message type (empty for byte rings). Written before
    /// the magic, then read-only.
    pub text: [AtomicU64; SCHEMA_TEXT_WORDS],
    /// How many openers were refused because their schema fingerprint differed. Each refused
    /// opener writes the three fields below, then increments this with `Release`; a reader
    /// that loads it with `Acquire` and sees a change reads them (several refused openers at
    /// once can mix their texts: display only).
    pub rejections: AtomicU64,
    /// Pid of the last refused opener, in its own pid namespace. Display only.
    pub rejected_pid: AtomicU32,
    /// Reserved, zero.
    pub reserved: AtomicU32,
    /// Schema fingerprint of the last refused opener.
    pub rejected_schema: [AtomicU64; 4],
    /// Description of the last refused opener's message type.
    pub rejected_text: [AtomicU64; SCHEMA_TEXT_WORDS],
}

/// Packs `text` into NUL-padded little-endian words, cut at a character boundary to fit.
pub fn pack_text(text: &str) -> [u64; SCHEMA_TEXT_WORDS] {
    let mut end = text.len().min(SCHEMA_TEXT_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut bytes = [0u8; SCHEMA_TEXT_LEN];
    bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
    let mut words = [0u64; SCHEMA_TEXT_WORDS];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *word = u64::from_le_bytes(b);
    }
    words
}

/// Unpacks text written by [`pack_text`] (or by anyone): up to the first NUL, invalid UTF-8
/// replaced.
pub fn unpack_text(words: &[u64]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A value alone on its own 128-byte block, so that two sides never share a line.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct Padded<T>(pub T);

/// Ring control block: the indices and the wait words.
#[repr(C)]
#[derive(Debug)]
pub struct RingControl {
    /// Next position the producer will write: everything below it is committed. Written by the
    /// producer only (`Release`), read by the consumer (`Acquire`). Positions are 64-bit byte
    /// counts that never wrap in practice; the offset in the data area is `pos & (cap - 1)`.
    pub tail: Padded<AtomicU64>,
    /// Next position the consumer will read: everything below it is released. Written by the
    /// consumer only (`Release`), read by the producer (`Acquire`).
    pub head: Padded<AtomicU64>,
    /// 1 while the consumer sleeps (futex) waiting for data, else 0. The consumer sets it; the
    /// producer clears it with a swap and wakes the futex on this word.
    pub consumer_parked: Padded<AtomicU32>,
    /// 1 while the producer sleeps (futex) waiting for space, else 0.
    pub producer_parked: Padded<AtomicU32>,
}

impl RingControl {
    /// A control block with both indices at `start`.
    pub fn new(start: u64) -> Self {
        Self {
            tail: Padded(AtomicU64::new(start)),
            head: Padded(AtomicU64::new(start)),
            consumer_parked: Padded(AtomicU32::new(0)),
            producer_parked: Padded(AtomicU32::new(0)),
        }
    }
}

impl EndpointSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self {
            state: AtomicU32::new(SLOT_NEVER),
            pid: AtomicU32::new(0),
            start_time: AtomicU64::new(0),
            attach_count: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            intent: AtomicU64::new(u64::MAX),
        }
    }
}

impl Default for EndpointSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// The 8-byte header in front of every record (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header plus payload length in bytes; negative while claimed and not yet committed.
    pub len: i32,
    /// Record kind: [`PADDING`] or a user value.
    pub kind: u32,
}

/// Rounds `n` up to a multiple of [`RECORD_ALIGN`].
#[inline]
pub const fn align_record(n: u64) -> u64 {
    (n + (RECORD_ALIGN - 1)) & !(RECORD_ALIGN - 1)
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<SegmentHeader>() == 128);
    assert!(offset_of!(SegmentHeader, magic) == 0);
    assert!(offset_of!(SegmentHeader, layout_version) == 8);
    assert!(offset_of!(SegmentHeader, kind) == 12);
    assert!(offset_of!(SegmentHeader, total_size) == 16);
    assert!(offset_of!(SegmentHeader, capacity) == 24);
    assert!(offset_of!(SegmentHeader, data_offset) == 32);
    assert!(offset_of!(SegmentHeader, creator_pid) == 40);
    assert!(offset_of!(SegmentHeader, creator_start_time) == 48);
    assert!(offset_of!(SegmentHeader, created_unix_ns) == 56);
    assert!(offset_of!(SegmentHeader, schema) == 64);
    assert!(size_of::<EndpointSlot>() == LINE);
    assert!(align_of::<EndpointSlot>() == LINE);
    assert!(offset_of!(EndpointSlot, state) == 0);
    assert!(offset_of!(EndpointSlot, pid) == 4);
    assert!(offset_of!(EndpointSlot, start_time) == 8);
    assert!(offset_of!(EndpointSlot, attach_count) == 16);
    assert!(offset_of!(EndpointSlot, cursor) == 24);
    assert!(offset_of!(EndpointSlot, intent) == 64);
    assert!(offset_of!(SegmentHeader, slot_count) == 44);
    assert!(offset_of!(SegmentHeader, policy) == 96);
    assert!(offset_of!(SegmentHeader, history) == 100);
    assert!(size_of::<BroadcastControl>() == LINE);
    assert!(EXT_OFFSET == SCHEMA_OFFSET + size_of::<SchemaBlock>());
    assert!(slot_offset(1) + LINE == CONTROL_OFFSET);
    assert!(data_offset(2, 0) % 64 == 8);
    assert!(data_offset(MAX_SLOTS, MAX_HISTORY) % 64 == 8);
    assert!(size_of::<RingControl>() == 4 * LINE);
    assert!(offset_of!(RingControl, tail) == 0);
    assert!(offset_of!(RingControl, head) == LINE);
    assert!(offset_of!(RingControl, consumer_parked) == 2 * LINE);
    assert!(offset_of!(RingControl, producer_parked) == 3 * LINE);
    assert!(SLOTS_OFFSET == size_of::<SegmentHeader>());
    assert!(CONTROL_OFFSET == SLOTS_OFFSET + 2 * size_of::<EndpointSlot>());
    assert!(CONTROL_OFFSET % LINE == 0);
    assert!(SCHEMA_OFFSET == CONTROL_OFFSET + size_of::<RingControl>());
    assert!(size_of::<SchemaBlock>() == 5 * LINE);
    assert!(offset_of!(SchemaBlock, text) == 0);
    assert!(offset_of!(SchemaBlock, rejections) == SCHEMA_TEXT_LEN);
    assert!(offset_of!(SchemaBlock, rejected_pid) == SCHEMA_TEXT_LEN + 8);
    assert!(offset_of!(SchemaBlock, rejected_schema) == SCHEMA_TEXT_LEN + 16);
    assert!(offset_of!(SchemaBlock, rejected_text) == SCHEMA_TEXT_LEN + 48);
    assert!(DATA_OFFSET >= SCHEMA_OFFSET + size_of::<SchemaBlock>());
    assert!(DATA_OFFSET % 64 == 8);
    assert!(size_of::<RegionControl>() == 3 * LINE);
    assert!(offset_of!(RegionControl, buffer_version) == 8);
    assert!(offset_of!(RegionControl, notify) == 72);
    assert!(offset_of!(RegionControl, parked) == LINE);
    assert!(offset_of!(RegionControl, size) == 2 * LINE);
};

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn schema_text_round_trips_and_is_cut_at_a_character_boundary() {
        assert_eq!(unpack_text(&pack_text("")), "");
        assert_eq!(
            unpack_text(&pack_text("app::Msg v3 — größe")),
            "app::Msg v3 — größe"
        );
        let long = "é".repeat(200); // 400 bytes, 2 per character
        let back = unpack_text(&pack_text(&long));
        assert_eq!(back, "é".repeat(128));
        // Junk from another process decodes lossily, never panics.
        assert_eq!(unpack_text(&[u64::MAX, 0]).chars().count(), 8);
    }
}
