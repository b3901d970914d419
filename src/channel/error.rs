//! Errors of the typed channel, one enum per operation (crossbeam style). Sends take the value
//! by reference, so a failed send leaves it with the caller: the errors are `'static` and `?`
//! works into any error type.

use std::fmt;

use shmesh_ring::{AttachError, Corruption, SchemaId, SegmentError};
use thiserror::Error;

/// The two ends of a channel disagree on the message type.
///
/// The end that opens with another type is refused at open
/// ([`ChannelError::SchemaMismatch`]); the ends already on the channel learn of it from the note
/// the refused opener leaves, on their next operation ([`SendFailure::SchemaMismatch`],
/// [`RecvError::SchemaMismatch`]). Each end reports each refusal once, counting from when the
/// [`Channel`](super::Channel) handle it was made from was created; several refusals between two
/// operations are reported together, as the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaMismatch {
    /// Channel name.
    pub channel: String,
    /// Who asked for the other type: "you asked for it" (this end was refused at open) or "a
    /// process (pid N) tried to open it" (this end learns of a refused opener).
    pub who: String,
    /// `None` when this end was refused at open; the pid of the refused opener (in its own pid
    /// namespace) when this end learns of it.
    pub opener_pid: Option<u32>,
    /// The message type of this end.
    pub ours: SchemaId,
    /// The message type of the other end: the channel's (this end was refused) or the refused
    /// opener's.
    pub other: SchemaId,
}

impl fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (asked, carried) = match self.opener_pid {
            None => (&self.ours, &self.other),
            Some(_) => (&self.other, &self.ours),
        };
        write!(
            f,
            "channel '{}': {} with message type {asked}, but the channel carries {carried}; \
             use the same message type (and version) on both ends",
            self.channel, self.who
        )
    }
}

impl std::error::Error for SchemaMismatch {}

/// Why a channel could not be created or opened, or an end attached.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    /// The segment could not be created or opened (name, permissions, space, header).
    #[error(transparent)]
    Segment(SegmentError),
    /// The channel carries another message type.
    #[error(transparent)]
    SchemaMismatch(Box<SchemaMismatch>),
    /// The end is taken by a live process, or the ring is unusable.
    #[error(transparent)]
    Attach(#[from] AttachError),
}

impl ChannelError {
    pub(crate) fn from_segment(e: SegmentError) -> ChannelError {
        match e {
            SegmentError::SchemaMismatch(m) => {
                ChannelError::SchemaMismatch(Box::new(SchemaMismatch {
                    channel: m.name,
                    who: "you asked for it".into(),
                    opener_pid: None,
                    ours: m.ours,
                    other: m.theirs,
                }))
            }
            e => ChannelError::Segment(e),
        }
    }
}

/// Why a message could not be sent, other than a full ring, a gone receiver or a timeout.
#[derive(Debug, Error)]
pub enum SendFailure {
    /// The message is larger than the ring allows.
    #[error(
        "message of {} bytes (archived) does not fit the channel: its ring of {capacity} \
         bytes takes messages of at most {max} bytes; {}",
        if *size == usize::MAX { "more than usize::MAX".to_owned() } else { size.to_string() },
        match needed {
            Some(cap) => format!("create the channel with a capacity of at least {cap} bytes"),
            None => format!(
                "no ring takes it (a message is at most {} bytes): split it",
                shmesh_ring::spsc::max_payload(shmesh_ring::spsc::MAX_CAPACITY)
            ),
        }
    )]
    TooLarge {
        /// The archived size of the message (`usize::MAX` when it does not even fit a
        /// `usize`).
        size: usize,
        /// The largest message the ring takes.
        max: u64,
        /// The ring capacity.
        capacity: u64,
        /// The smallest capacity that takes this message; `None` when no ring does.
        needed: Option<u64>,
    },
    /// rkyv could not serialize the value (a `Serialize` impl of the type failed).
    #[error("serializing the message failed: {0}")]
    Serialize(rkyv::rancor::Error),
    /// A process tried to open the channel with another message type. Reported once (see
    /// [`SchemaMismatch`]); the message was not sent, and the channel still works.
    #[error(transparent)]
    SchemaMismatch(Box<SchemaMismatch>),
    /// The ring's shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

macro_rules! send_error {
    (
        $(#[$doc:meta])*
        $name:ident { $( $(#[$vdoc:meta])* $variant:ident => $msg:literal, )* }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Error)]
        pub enum $name {
            $( $(#[$vdoc])* #[error($msg)] $variant, )*
            /// The receiver is gone (detached or its process died) and the ring is full.
            #[error("receiver gone: it detached or its process died, and the ring is full")]
            Disconnected,
            /// Another cause: too large, serialization, a refused opener, corruption.
            #[error(transparent)]
            Failed(#[from] SendFailure),
        }

        impl $name {
            /// Whether the receiver is gone.
            pub fn is_disconnected(&self) -> bool {
                matches!(self, $name::Disconnected)
            }
        }
    };
}

send_error! {
    /// Why [`Sender::send`](super::Sender::send) did not send. The caller still has the value.
    SendError {}
}

send_error! {
    /// Why [`Sender::try_send`](super::Sender::try_send) did not send. The caller still has the
    /// value.
    TrySendError {
        /// The ring has no room now; try again after the receiver reads.
        Full => "channel full: the ring has no room for the message now",
    }
}

send_error! {
    /// Why [`Sender::send_timeout`](super::Sender::send_timeout) did not send. The caller still
    /// has the value.
    SendTimeoutError {
        /// The ring had no room before the timeout.
        Timeout => "timed out waiting for room in the channel",
    }
}

/// Why [`Receiver::try_recv`](super::Receiver::try_recv) returned no message.
#[derive(Debug, Error)]
pub enum TryRecvError {
    /// No message now.
    #[error("channel empty")]
    Empty,
    /// Every other cause.
    #[error(transparent)]
    Failed(#[from] RecvError),
}

impl RecvError {
    /// Whether the sender is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvError::Disconnected)
    }
}

/// Why [`Receiver::recv`](super::Receiver::recv) or
/// [`recv_timeout`](super::Receiver::recv_timeout) returned no message.
#[derive(Debug, Error)]
pub enum RecvError {
    /// The timeout passed with no message (`recv_timeout` only).
    #[error("timed out waiting for a message")]
    Timeout,
    /// The sender is gone (detached or its process died) and every message it sent was read.
    #[error("sender gone: it detached or its process died, and every message it sent was read")]
    Disconnected,
    /// A message failed validation: the sender is buggy or hostile, or a different type was
    /// sent under the same schema. The message was dropped; the next one may be fine.
    #[error(
        "message of {len} bytes at ring position {position} is not a valid archive of the \
         channel's type ({source}); it was dropped: the sender is buggy or hostile, or sends \
         another type under the same name and version"
    )]
    Invalid {
        /// Its length.
        len: usize,
        /// Its position in the ring (for diagnostics).
        position: u64,
        /// What bytecheck found.
        source: rkyv::rancor::Error,
    },
    /// A process tried to open the channel with another message type. Reported once (see
    /// [`SchemaMismatch`]); the channel still works.
    #[error(transparent)]
    SchemaMismatch(Box<SchemaMismatch>),
    /// A subscriber of a `Lap` topic fell a whole ring behind its publisher and lost `lost`
    /// messages; the next receive continues with the oldest message still available.
    #[error(
        "lapped: the publisher overwrote {lost} messages this subscriber had not read yet (the \
         topic's policy is Lap); receiving continues with the oldest message still available: \
         read faster, or create the topic with a larger capacity or the Block policy"
    )]
    Lapped {
        /// How many messages were lost.
        lost: u64,
    },
    /// The ring's shared state is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Why a loan was not granted; there is no value to hand back.
#[derive(Debug, Error)]
pub enum LoanError {
    /// The ring has no room now (`try_` forms).
    #[error("channel full: the ring has no room for the loan now")]
    Full,
    /// The ring had no room before the timeout.
    #[error("timed out waiting for room in the channel")]
    Timeout,
    /// The receiver is gone and the ring is full.
    #[error("receiver gone: it detached or its process died, and the ring is full")]
    Disconnected,
    /// The loan is larger than the ring allows, or a refused opener is reported, or the ring is
    /// corrupt.
    #[error(transparent)]
    Failed(#[from] SendFailure),
}
