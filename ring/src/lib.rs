//! Lock-free byte rings in POSIX shared memory: the bottom layer of shmesh.
//!
//! This crate knows bytes, not types, and owns every `unsafe` that touches shared memory.
//!
//! - [`segment`]: named shared-memory segments ([`SegmentBuilder`], [`Segment`]) with a
//!   validated header and kernel-released liveness tokens.
//! - [`spsc`]: the single-producer/single-consumer byte ring ([`Producer`], [`Consumer`],
//!   [`Grant`], [`Record`]), generic over its memory ([`RingMemory`]: [`HeapMemory`] or
//!   [`ShmMemory`]).
//! - [`broadcast`]: the one-writer, many-reader byte ring ([`broadcast::Writer`],
//!   [`broadcast::Reader`]), with a slow-reader policy ([`BroadcastPolicy`]: block the writer,
//!   or let readers be lapped) and a history for late joiners.
//! - [`region`]: versioned regions: one writer publishes whole versions, any number of
//!   readers copy out consistent snapshots, and each version records which chunks it changed.
//! - [`select`]: one sleep on several ring ends at once ([`select::park`]), for a reader of many
//!   rings or a writer that keeps reading while it waits for space.
//! - [`wait`]: how blocking calls wait ([`WaitStrategy`]: spin, yield, futex).
//! - [`park`]: how async calls wait ([`Consumer::read_async`]): a helper thread sleeps on the
//!   same futex and wakes the task.
//! - [`layout`]: the shared-memory ABI.
//! - [`probe`]: the cache-line ping-pong that measures the machine's floor.
//!
//! # Examples
//!
//! Two ends of a ring in one process (the same code works across processes with
//! [`SegmentBuilder`]):
//!
//! ```
//! use shmesh_ring::spsc;
//!
//! let (mut tx, mut rx) = spsc::channel(1 << 12)?;
//! for word in ["zero", "copy"] {
//!     let mut grant = tx.claim(word.len())?;
//!     grant.copy_from_slice(word.as_bytes());
//!     grant.commit(word.len());
//! }
//! assert_eq!(&*rx.read()?, b"zero");
//! assert_eq!(&*rx.read()?, b"copy");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod broadcast;
mod counters;
pub mod error;
#[cfg(not(loom))]
pub mod inspect;
pub mod layout;
pub mod memory;
pub mod mpsc;
#[cfg(not(loom))]
mod os;
pub mod park;
#[cfg(not(loom))]
pub mod probe;
pub mod region;
#[cfg(not(loom))]
pub mod segment;
pub mod select;
pub mod spsc;
mod sync;
pub mod wait;

pub use error::{AttachError, ClaimError, Corruption, ReadError, TryClaimError, TryReadError};
pub use memory::{BroadcastPolicy, HeapMemory, PeerState, RingMemory, Side};
#[cfg(not(loom))]
pub use probe::CacheLineProbe;
#[cfg(not(loom))]
pub use segment::{
    SchemaId, SchemaMismatch, SchemaRejection, Segment, SegmentBuilder, SegmentError, SegmentKind,
    ShmMemory, ShmRegion,
};
pub use spsc::{
    Consumer, Grant, MappedRecord, Producer, ReadAsync, ReadBatch, Record, ReleaseError, WriteBatch,
};
pub use wait::WaitStrategy;
