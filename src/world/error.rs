//! What can go wrong in a [`World`](super::World).

use std::time::Duration;

use shmesh_ring::{AttachError, Corruption, SegmentError};

/// Why a [`World`](super::World) operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorldError {
    /// The environment does not say which rank this is, or says it wrongly.
    #[error(
        "cannot tell this process's rank: {0}; start it with `shmesh run -n N -- PROGRAM`, \
         `mpirun` or `srun`, or set SHMESH_JOB, SHMESH_RANK and SHMESH_SIZE"
    )]
    Environment(String),
    /// A rank did not join the world in time.
    #[error(
        "rank {rank} did not join job {job} within {waited:?}: it was not started, crashed at \
         start-up, or runs under another job id (check SHMESH_JOB / the launcher)"
    )]
    Rendezvous {
        /// The rank that did not show up.
        rank: usize,
        /// The job id.
        job: String,
        /// How long this rank waited.
        waited: Duration,
    },
    /// A ring of the world could not be made or opened.
    #[error("ring {name} of the world: {source}")]
    Segment {
        /// The segment name.
        name: String,
        /// Why.
        #[source]
        source: SegmentError,
    },
    /// A ring end could not attach.
    #[error("ring {name} of the world: {source}")]
    Attach {
        /// The segment name.
        name: String,
        /// Why.
        #[source]
        source: AttachError,
    },
    /// A rank this operation needs has died (or left): everything it sent before was
    /// delivered; the ranks still alive can go on with point-to-point messages between them.
    #[error(
        "rank {0} is gone (its process died or left the world): this operation needs it; \
         the other ranks can carry on"
    )]
    PeerGone(usize),
    /// A rank number outside `0..size`.
    #[error("rank {rank} does not exist: the world has {size} ranks (0..{size})")]
    NoSuchRank {
        /// The rank asked for.
        rank: usize,
        /// The world size.
        size: usize,
    },
    /// A tag above [`Tag::MAX`](super::Tag::MAX) (the tags above are the collectives').
    #[error("tag {0} is reserved: user tags are 0..=2147483647")]
    ReservedTag(u32),
    /// A received message is larger than the buffer given for it.
    #[error(
        "message from rank {rank} (tag {tag}) has {len} bytes but the buffer holds {room}: \
         receive it into a larger buffer"
    )]
    Truncated {
        /// The sender.
        rank: usize,
        /// The tag.
        tag: u32,
        /// The message length in bytes.
        len: u64,
        /// The buffer's size in bytes.
        room: u64,
    },
    /// A message's length is not a whole number of elements of the type asked for.
    #[error(
        "message from rank {rank} (tag {tag}) has {len} bytes, not a multiple of the \
         {size}-byte element asked for"
    )]
    Misfit {
        /// The sender.
        rank: usize,
        /// The tag.
        tag: u32,
        /// The message length in bytes.
        len: u64,
        /// The element size.
        size: usize,
    },
    /// The ranks called a collective with buffers that do not agree.
    #[error("{0}")]
    Mismatch(String),
    /// A message failed validation as the type asked for.
    #[error("message from rank {rank} (tag {tag}) is not a valid {type_name}: {cause}")]
    Invalid {
        /// The sender.
        rank: usize,
        /// The tag.
        tag: u32,
        /// The type asked for.
        type_name: &'static str,
        /// What the validator said.
        cause: rkyv::rancor::Error,
    },
    /// A value could not be serialized.
    #[error("serializing the message failed: {0}")]
    Serialize(rkyv::rancor::Error),
    /// A peer broke the world's message framing (a bug or a hostile process).
    #[error("rank {rank} broke the message framing: {what}")]
    Protocol {
        /// The sender.
        rank: usize,
        /// What was wrong.
        what: String,
    },
    /// A ring's shared state is corrupt.
    #[error("ring from rank {rank}: {cause}")]
    Corrupt {
        /// The rank at the other end.
        rank: usize,
        /// What the ring found.
        cause: Corruption,
    },
    /// The request handle does not belong to this world, or was completed already.
    #[error("unknown request {0}: it belongs to another world or was completed already")]
    UnknownRequest(u64),
    /// The operation did not complete in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl WorldError {
    /// The rank whose death this error reports, if it is [`WorldError::PeerGone`].
    pub fn gone_rank(&self) -> Option<usize> {
        match self {
            WorldError::PeerGone(rank) => Some(*rank),
            _ => None,
        }
    }
}
