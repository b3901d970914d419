//! How a receiver turns the bytes of a message into `&Archived<T>`.
//!
//! This is the one module of the `shmesh` crate allowed `unsafe`: constructing the `Trusted`
//! mode is `unsafe` (its caller vouches for the sender), and reading under it is rkyv's
//! unchecked access. Everything that touches shared memory itself stays in `shmesh-ring`.
#![allow(unsafe_code)]

use rkyv::Portable;

/// How a [`Receiver`](super::Receiver) checks messages, chosen when it is built.
///
/// | mode | copy | validation | protects against |
/// |------|------|------------|------------------|
/// | [`Access::validated()`] (default) | none | bytecheck, in place | a buggy or corrupting sender; **not** one that rewrites a message after it was validated |
/// | [`Access::untrusted()`] | one, into private memory | bytecheck, on the copy | any sender, hostile included |
/// | `unsafe` [`Access::trusted()`] | none | none | nothing: for senders you control |
///
/// In `Validated` mode the view points into shared memory. A sender that follows the protocol
/// never writes a message it committed, so the validated bytes stay as they were; a sender
/// that writes them anyway (hostile, or a memory bug) can change them between validation and
/// use, and the view may then read out of bounds: that is undefined behaviour this mode cannot
/// prevent. `Untrusted` closes that hole by validating a private copy; it costs one copy of
/// each message (a `memcpy`, into a buffer the receiver reuses).
///
/// Both checked modes rest on rkyv's validation being complete for the types you use. One hole
/// is known, in rkyv 0.8.18 (the newest release): `ArchivedBTreeMap::iter` (and `keys`,
/// `values`) can read outside a validated archive whose map has a leaf of length 0 or a missing
/// first subtree, which validation accepts. On maps from senders you do not trust, read with
/// `visit`, `get` or `contains_key`, or deserialize; these follow only what validation checked
/// (our hostile-sender tests and fuzz target exercise exactly that; the `iter` failure is kept
/// as an ignored test in `tests/channel_hostile.rs`).
///
/// `Access` is neither `Clone` nor `Copy`: a value made by the `unsafe` [`Access::trusted`]
/// vouches for one receiver, the one it is given to.
#[derive(Debug, PartialEq, Eq)]
pub struct Access(pub(crate) Mode);

/// The access mode of a receiver, as [`Receiver::access_mode`](super::Receiver::access_mode)
/// reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// Validated in place.
    Validated,
    /// Validated on a private copy.
    Untrusted,
    /// Not validated.
    Trusted,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Validated,
    Untrusted,
    Trusted(TrustedProof),
}

impl Mode {
    pub(crate) fn public(&self) -> AccessMode {
        match self {
            Mode::Validated => AccessMode::Validated,
            Mode::Untrusted => AccessMode::Untrusted,
            Mode::Trusted(_) => AccessMode::Trusted,
        }
    }
}

/// Made only by the `unsafe` [`Access::trusted`]: holding one is the caller's promise that the
/// receiver it was given to reads only valid archives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TrustedProof(());

impl Access {
    /// The mode this value selects.
    pub fn mode(&self) -> AccessMode {
        self.0.public()
    }

    /// Validate each message in place (zero-copy). The default.
    pub const fn validated() -> Access {
        Access(Mode::Validated)
    }

    /// Copy each message into private memory, then validate the copy.
    pub const fn untrusted() -> Access {
        Access(Mode::Untrusted)
    }

    /// Read each message without validation.
    ///
    /// # Safety
    ///
    /// Every message sent on the channel must be a valid rkyv archive of the channel's type, as
    /// the `Sender` of the same type (same schema) writes them, and must not change while it is
    /// read: only peers you control, built from the same type definitions.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmesh::channel::{Access, Channel};
    ///
    /// # let name = format!("doc-trusted-{}", std::process::id());
    /// let channel = Channel::<u64>::create(&name)?;
    /// let mut tx = channel.sender()?;
    /// // SAFETY: the sender is this process, which sends `u64`s through `Sender<u64>`.
    /// let mut rx = channel.receiver_with(unsafe { Access::trusted() })?;
    /// tx.send(&7)?;
    /// assert_eq!(*rx.recv()?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const unsafe fn trusted() -> Access {
        Access(Mode::Trusted(TrustedProof(())))
    }
}

impl Default for Access {
    fn default() -> Self {
        Access::validated()
    }
}

/// rkyv's unchecked access to the archive in `bytes`, for a receiver in `Trusted` mode.
///
/// The proof exists only through the `unsafe` [`Access::trusted`], whose caller promised that
/// every message of the receiver holding it is a valid archive of `A`.
pub(crate) fn trusted_view<'a, A: Portable>(bytes: &'a [u8], _proof: &TrustedProof) -> &'a A {
    // SAFETY: the caller of `Access::trusted` guaranteed that `bytes` (a committed message of
    // the channel) is a valid archive of `A` that does not change while borrowed; rkyv's
    // root-at-the-end layout is what `Sender` writes, at a 16-byte aligned payload start.
    unsafe { rkyv::access_unchecked::<A>(bytes) }
}
