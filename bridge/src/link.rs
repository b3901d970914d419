//! Links: what carries frames between two bridges.
//!
//! Mirroring ([`crate::bridge`]) sees a connection only through the [`Link`] trait: whole frames
//! in, whole frames out, never blocking. A TCP connection (plain or TLS 1.3,
//! [`StreamLink`](crate::tcp::StreamLink)) is one implementation; the fault-injecting wrapper
//! ([`crate::fault::FaultyLink`]) is another; an RDMA link can be added later without touching
//! mirroring.
//!
//! A link promises less than TCP does: it may drop, repeat, reorder, corrupt or truncate frames
//! (the fault wrapper does all of that on purpose). Mirroring checks each frame's checksum and
//! sequence numbers and recovers by asking the peer to resend, so none of that loses or
//! duplicates a record.

use std::io;
use std::os::fd::BorrowedFd;

/// Why a link stopped working. Every variant ends the connection: the bridge drops the link
/// and dials again (or waits for the peer to).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// A socket call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The TLS layer refused the peer or the bytes it sent.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer authenticated but is not one this bridge accepts.
    #[error("peer not accepted: {0}")]
    NotAllowed(String),
    /// The peer sent bytes that cannot be a frame (bad magic, impossible length).
    #[error("the peer sent a malformed frame: {0}")]
    Malformed(#[from] crate::wire::WireError),
}

/// A bidirectional, non-blocking carrier of frames. Implementations never block: every call
/// does what it can now and returns.
pub trait Link {
    /// Queues one encoded frame (as made by [`crate::wire::encode`]) for sending. Returns
    /// `Ok(false)`, queueing nothing, when the link's send queue is full: the caller keeps the
    /// frame and offers it again after [`poll`](Self::poll) made room. This is where
    /// backpressure enters the link.
    ///
    /// # Errors
    ///
    /// [`LinkError`]: the link is dead.
    fn send(&mut self, frame: &[u8]) -> Result<bool, LinkError>;

    /// Queues one frame of `len` bytes that `encode` appends to the buffer it is given: the
    /// link's own send queue where it has one, so a large record is copied once, from where it
    /// lies into the queue. Returns `Ok(false)` without calling `encode` when the queue cannot
    /// take `len` more bytes now (as [`send`](Self::send)). The default encodes into a
    /// temporary buffer and calls `send`.
    ///
    /// # Errors
    ///
    /// [`LinkError`]: the link is dead.
    fn send_with(
        &mut self,
        len: usize,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Result<bool, LinkError> {
        let mut frame = Vec::with_capacity(len);
        encode(&mut frame);
        self.send(&frame)
    }

    /// Moves bytes: writes queued frames to the peer and reads what arrived. Returns whether
    /// anything moved (for the caller's idle strategy).
    ///
    /// # Errors
    ///
    /// [`LinkError`]: the link is dead.
    fn poll(&mut self) -> Result<bool, LinkError>;

    /// Takes the next whole received frame into `out` (replacing its contents). Returns
    /// `Ok(false)` when no whole frame is there yet. The frame's checksum is not checked here:
    /// the caller decodes it with [`crate::wire::decode`].
    ///
    /// # Errors
    ///
    /// [`LinkError`]: the link is dead or the peer sent something that cannot be framed.
    fn recv(&mut self, out: &mut Vec<u8>) -> Result<bool, LinkError>;

    /// Bytes queued for sending and not yet written.
    fn queued(&self) -> usize;

    /// Whether the link has finished connecting (TLS handshake included) and can carry frames.
    /// Frames sent before are queued.
    fn is_established(&self) -> bool {
        true
    }

    /// A file descriptor that becomes readable when frames arrive (writable when queued bytes
    /// can move), for a caller that sleeps in `poll(2)` while idle
    /// ([`Bridge::wait`](crate::Bridge::wait)); `None` when the link has none.
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// The authenticated name of the peer, once known (the name its certificate was checked
    /// against; the name it claims in its hello on a plaintext link).
    fn peer_name(&self) -> Option<&str> {
        None
    }
}

impl<L: Link + ?Sized> Link for Box<L> {
    fn send(&mut self, frame: &[u8]) -> Result<bool, LinkError> {
        (**self).send(frame)
    }
    fn send_with(
        &mut self,
        len: usize,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Result<bool, LinkError> {
        (**self).send_with(len, encode)
    }
    fn poll(&mut self) -> Result<bool, LinkError> {
        (**self).poll()
    }
    fn recv(&mut self, out: &mut Vec<u8>) -> Result<bool, LinkError> {
        (**self).recv(out)
    }
    fn queued(&self) -> usize {
        (**self).queued()
    }
    fn is_established(&self) -> bool {
        (**self).is_established()
    }
    fn peer_name(&self) -> Option<&str> {
        (**self).peer_name()
    }
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).fd()
    }
}
