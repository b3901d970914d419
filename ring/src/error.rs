//! Errors of the ring operations, one enum per operation (crossbeam and rtrb style).

use thiserror::Error;

/// Something another process wrote into a ring or region is impossible: an index, a record
/// length or a version out of range. The segment cannot be trusted any more; the peer is buggy
/// or hostile.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "shared memory corrupted: {what} is {found}, expected {expected}; a peer process wrote \
     bytes that break the segment's protocol (buggy or hostile): stop using this segment and \
     recreate it"
)]
pub struct Corruption {
    /// Which value was wrong.
    pub what: &'static str,
    /// The value found.
    pub found: u64,
    /// What it should have been.
    pub expected: String,
}

/// Why [`try_claim`](crate::spsc::Producer::try_claim) returned no space.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TryClaimError {
    /// The ring has not enough free space now; try again after the consumer reads.
    #[error("ring full: {needed} bytes needed, {free} free")]
    Full {
        /// Bytes the record needs (header, payload, alignment, padding at the wrap, and the
        /// 16 bytes the producer keeps free after its last record).
        needed: u64,
        /// Bytes free right now.
        free: u64,
    },
    /// The record can never fit this ring.
    #[error(
        "record of {len} bytes is larger than the ring allows ({max} bytes, half its capacity \
         less 24 bytes): create the ring with a larger capacity"
    )]
    TooLarge {
        /// The requested payload length.
        len: u64,
        /// The largest payload this ring accepts.
        max: u64,
    },
    /// The consumer is gone (detached or its process died) and the ring is full: nobody will
    /// ever make space.
    #[error("consumer gone: it detached or its process died, and the ring is full")]
    PeerGone,
    /// The ring's shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Why a blocking [`claim`](crate::spsc::Producer::claim) or
/// [`claim_timeout`](crate::spsc::Producer::claim_timeout) returned no space.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimError {
    /// The timeout passed before space was free.
    #[error("timed out waiting for ring space")]
    Timeout,
    /// The record can never fit this ring.
    #[error(
        "record of {len} bytes is larger than the ring allows ({max} bytes, half its capacity \
         less 24 bytes): create the ring with a larger capacity"
    )]
    TooLarge {
        /// The requested payload length.
        len: u64,
        /// The largest payload this ring accepts.
        max: u64,
    },
    /// The consumer is gone and the ring is full.
    #[error("consumer gone: it detached or its process died, and the ring is full")]
    PeerGone,
    /// The ring's shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Why [`try_read`](crate::spsc::Consumer::try_read) returned no record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TryReadError {
    /// No record is committed now; try again later.
    #[error("ring empty")]
    Empty,
    /// The producer is gone and every record it committed has been read.
    #[error(
        "producer gone: it detached or its process died, and every record it committed was read"
    )]
    PeerGone,
    /// The ring's shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Why a blocking [`read`](crate::spsc::Consumer::read) or
/// [`read_timeout`](crate::spsc::Consumer::read_timeout) returned no record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// The timeout passed before a record was committed.
    #[error("timed out waiting for a record")]
    Timeout,
    /// The producer is gone and every record it committed has been read.
    #[error(
        "producer gone: it detached or its process died, and every record it committed was read"
    )]
    PeerGone,
    /// The ring's shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Why a ring could not be made or an endpoint could not attach.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttachError {
    /// The capacity is not usable.
    #[error(
        "ring capacity {capacity} is invalid: it must be a power of two between {min} and {max} \
         bytes"
    )]
    Capacity {
        /// The capacity asked for.
        capacity: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The start position is not a multiple of 16.
    #[error("ring start position {0} is not a multiple of 16")]
    StartPosition(u64),
    /// Another live process already holds this single endpoint (an SPSC ring's producer or
    /// consumer, an MPSC ring's consumer, a broadcast ring's or a region's writer).
    #[error(
        "the {endpoint} of {kind} '{name}' is already attached by a live process (pid {pid} in \
         its pid namespace); {kind} has one {endpoint}: stop that process, or wait for it to \
         detach or die and attach again"
    )]
    Busy {
        /// Segment name.
        name: String,
        /// Which endpoint.
        side: crate::memory::Side,
        /// What the endpoint is called ("producer", "consumer", "writer").
        endpoint: &'static str,
        /// What the segment is ("an SPSC ring", "a region", ...).
        kind: &'static str,
        /// The pid recorded by the holder (display only).
        pid: u32,
    },
    /// The segment is not the kind of ring this endpoint needs.
    #[error("segment '{name}' is a {kind}, not {expected}: open it with the matching endpoint")]
    NotARing {
        /// Segment name.
        name: String,
        /// Its kind.
        kind: String,
        /// The kind the endpoint needs.
        expected: &'static str,
    },
    /// Every endpoint slot of the many side (MPSC writers, broadcast readers) is held by a live
    /// endpoint.
    #[error(
        "all {slots} {what} slots of ring '{name}' are held by live endpoints: detach one, or          create the ring with more endpoint slots"
    )]
    NoFreeSlot {
        /// Segment name.
        name: String,
        /// Which endpoints ("writer", "reader").
        what: &'static str,
        /// How many slots the ring has for them.
        slots: usize,
    },
    /// An operating-system call failed.
    #[error("{op} failed for ring '{name}': {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// Segment name.
        name: String,
        /// The errno.
        source: rustix::io::Errno,
    },
    /// The ring's indices are corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

impl From<TryClaimError> for ClaimError {
    fn from(e: TryClaimError) -> Self {
        match e {
            TryClaimError::TooLarge { len, max } => ClaimError::TooLarge { len, max },
            TryClaimError::PeerGone => ClaimError::PeerGone,
            TryClaimError::Corrupt(c) => ClaimError::Corrupt(c),
            TryClaimError::Full { .. } => ClaimError::Timeout,
        }
    }
}
