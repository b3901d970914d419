//! The typed send and receive engines, written once over the ring kinds.
//!
//! [`Encoder`] serializes a value straight into space claimed from any ring writer
//! ([`RingTx`]: the SPSC producer, an MPSC writer, a broadcast writer); [`Decoder`] turns a
//! record of any ring reader ([`RingRx`]) into a [`Received`] view in the reader's access mode.
//! The public ends ([`Sender`](super::Sender), [`Receiver`](super::Receiver), and the pattern
//! types built on them) hold a ring end, a [`Watch`] and one of these.

use std::marker::PhantomData;
use std::ops::DerefMut;
use std::time::{Duration, Instant};

use rkyv::rancor::{self, Source as _};
use rkyv::ser::allocator::Arena;
use rkyv::ser::sharing::Share;
use rkyv::ser::{Positional, Serializer};
use rkyv::util::AlignedVec;
use rkyv::Archived;
use shmesh_ring::{
    ClaimError, Corruption, Grant, ReadError, ShmMemory, TryClaimError, TryReadError,
};

use super::access::{self, Mode};
use super::error::{RecvError, SendFailure};
use super::{
    too_large, CountingWriter, Fail, Message, Patience, Received, SliceWriter, View, Watch,
    REJECTION_POLL,
};

/// A ring end that writes records: claim, fill, commit.
pub(crate) trait RingTx {
    /// Claimed space; dropping it uncommitted gives the claim back (or pads it).
    type Grant<'a>: DerefMut<Target = [u8]> + TxGrant
    where
        Self: 'a;
    fn try_claim(&mut self, len: usize) -> Result<Self::Grant<'_>, TryClaimError>;
    fn wait_for_space(&mut self, len: usize, timeout: Duration) -> Result<(), ClaimError>;
    fn capacity(&self) -> u64;
    fn max_payload(&self) -> u64;
}

/// Committing claimed space.
pub(crate) trait TxGrant {
    fn set_record_kind(&mut self, kind: u32);
    fn commit_len(self, len: usize);
}

/// Why a ring reader returned no record, in the typed layer's terms.
#[derive(Debug)]
pub(crate) enum RxFail {
    Empty,
    Timeout,
    Gone,
    /// A `Lap` broadcast reader fell a whole ring behind and lost this many records.
    #[allow(dead_code)] // made by the broadcast reader (next commits)
    Lapped(u64),
    Corrupt(Corruption),
}

impl From<TryReadError> for RxFail {
    fn from(e: TryReadError) -> Self {
        match e {
            TryReadError::Empty => RxFail::Empty,
            TryReadError::PeerGone => RxFail::Gone,
            TryReadError::Corrupt(c) => RxFail::Corrupt(c),
        }
    }
}

impl From<ReadError> for RxFail {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Timeout => RxFail::Timeout,
            ReadError::PeerGone => RxFail::Gone,
            ReadError::Corrupt(c) => RxFail::Corrupt(c),
        }
    }
}

/// A ring end that reads records.
pub(crate) trait RingRx {
    type Record<'a>: RxRecord<'a>
    where
        Self: 'a;
    fn try_read(&mut self) -> Result<Self::Record<'_>, RxFail>;
    /// `Ok` when a record can be taken now.
    fn check_record(&mut self) -> Result<(), RxFail>;
    /// Waits up to `timeout` until a record can be taken.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<(), RxFail>;
}

/// A record of some ring kind.
pub(crate) trait RxRecord<'a>: std::ops::Deref<Target = [u8]> + Sized {
    fn position(&self) -> u64;
    /// The record as a guard on a view of its bytes (see [`shmesh_ring::Record::map`]).
    fn view<A: ?Sized>(
        self,
        f: impl for<'b> FnOnce(&'b [u8]) -> Result<&'b A, rancor::Error>,
    ) -> Result<View<'a, A>, rancor::Error>;
}

impl RingTx for shmesh_ring::Producer<ShmMemory> {
    type Grant<'a> = Grant<'a, ShmMemory>;

    #[inline]
    fn try_claim(&mut self, len: usize) -> Result<Self::Grant<'_>, TryClaimError> {
        shmesh_ring::Producer::try_claim(self, len)
    }

    fn wait_for_space(&mut self, len: usize, timeout: Duration) -> Result<(), ClaimError> {
        shmesh_ring::Producer::wait_for_space(self, len, timeout)
    }

    #[inline]
    fn capacity(&self) -> u64 {
        shmesh_ring::Producer::capacity(self)
    }

    #[inline]
    fn max_payload(&self) -> u64 {
        shmesh_ring::Producer::max_payload(self)
    }
}

impl TxGrant for Grant<'_, ShmMemory> {
    #[inline]
    fn set_record_kind(&mut self, kind: u32) {
        self.set_kind(kind);
    }

    #[inline]
    fn commit_len(self, len: usize) {
        self.commit(len);
    }
}

impl RingRx for shmesh_ring::Consumer<ShmMemory> {
    type Record<'a> = shmesh_ring::Record<'a, ShmMemory>;

    #[inline]
    fn try_read(&mut self) -> Result<Self::Record<'_>, RxFail> {
        shmesh_ring::Consumer::try_read(self).map_err(RxFail::from)
    }

    #[inline]
    fn check_record(&mut self) -> Result<(), RxFail> {
        shmesh_ring::Consumer::check_record(self).map_err(RxFail::from)
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<(), RxFail> {
        shmesh_ring::Consumer::wait_timeout(self, timeout).map_err(RxFail::from)
    }
}

impl<'a> RxRecord<'a> for shmesh_ring::Record<'a, ShmMemory> {
    fn position(&self) -> u64 {
        shmesh_ring::Record::position(self)
    }

    fn view<A: ?Sized>(
        self,
        f: impl for<'b> FnOnce(&'b [u8]) -> Result<&'b A, rancor::Error>,
    ) -> Result<View<'a, A>, rancor::Error> {
        self.map(f).map(View::Spsc)
    }
}

/// What one claim-and-serialize attempt of a send came to.
enum Attempt {
    Sent(usize),
    /// No room for this claim.
    Full,
    /// No room even for the smallest message of the type.
    FullForAny,
    Overflow,
    Failed(Fail),
}

/// Serializes values of `T` into ring claims. Holds rkyv's scratch arena and the running size
/// estimate, both reused for every message.
pub(crate) struct Encoder<T> {
    arena: Arena,
    /// Recent archived sizes (decaying maximum): what a send claims before it knows.
    hint: usize,
    _type: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for Encoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("hint", &self.hint).finish()
    }
}

impl<T> Encoder<T> {
    pub(crate) fn new() -> Self {
        Encoder {
            arena: Arena::new(),
            hint: 0,
            _type: PhantomData,
        }
    }
}

impl<T: Message> Encoder<T> {
    /// Sends `value` through `tx` as `patience` allows, as a record of kind `kind` (0 for plain
    /// messages) whose payload is `prefix` (an envelope: empty or a multiple of 16 bytes, so
    /// that the archive after it stays 16-byte aligned) followed by the archive.
    pub(crate) fn send<W: RingTx>(
        &mut self,
        tx: &mut W,
        watch: &mut Watch,
        value: &T,
        patience: Patience,
        prefix: &[u8],
        kind: u32,
    ) -> Result<(), Fail> {
        debug_assert!(prefix.len() % 16 == 0);
        if let Some(mismatch) = watch.check() {
            return Err(SendFailure::SchemaMismatch(mismatch).into());
        }
        let capacity = tx.capacity();
        let max = tx.max_payload() as usize;
        let extra = prefix.len();
        let mut want = (self.hint + self.hint / 8 + 64 + extra).min(max);
        let mut exact = false;
        // The smallest record any value of `T` takes: its root, a header, the next slot.
        let min_record = (std::mem::size_of::<Archived<T>>() as u64 + extra as u64 + 8)
            .next_multiple_of(16)
            + 16;
        loop {
            // Fast path: claim at once, serialize into the claim; wait (in slices) only when
            // the ring is full.
            let outcome = match tx.try_claim(want) {
                Ok(mut grant) => {
                    grant[..extra].copy_from_slice(prefix);
                    if kind != 0 {
                        grant.set_record_kind(kind);
                    }
                    let mut serializer = Serializer::new(
                        SliceWriter::new(&mut grant[extra..]),
                        self.arena.acquire(),
                        Share::new(),
                    );
                    match rkyv::api::serialize_using::<_, rancor::Error>(value, &mut serializer) {
                        // A `Serialize` impl that swallowed the writer's overflow error left a
                        // gap: never commit it.
                        Ok(_) if serializer.writer.overflowed() => Attempt::Overflow,
                        Ok(_) => {
                            let len = serializer.writer.pos();
                            drop(serializer);
                            grant.commit_len(extra + len);
                            Attempt::Sent(len)
                        }
                        // Dropping the grant aborts the claim.
                        Err(_) if serializer.writer.overflowed() => Attempt::Overflow,
                        Err(e) => Attempt::Failed(SendFailure::Serialize(e).into()),
                    }
                }
                // Not even the root fits: full for any message, no need to count this one.
                Err(TryClaimError::Full { free, .. }) if free < min_record => Attempt::FullForAny,
                Err(TryClaimError::Full { .. }) => Attempt::Full,
                Err(e) => Attempt::Failed(claim_failure(e, capacity)),
            };
            match outcome {
                Attempt::Sent(len) => {
                    self.hint = len.max(self.hint - self.hint / 16);
                    return Ok(());
                }
                // The estimate may be larger than the message: learn the exact size before
                // saying "full" or waiting for room the message does not need.
                Attempt::Full | Attempt::Overflow if !exact => {
                    let size = self.archived_size(value)? + extra;
                    if size > max {
                        return Err(too_large(size, capacity).into());
                    }
                    exact = true;
                    self.hint = size - extra;
                    want = size;
                }
                Attempt::FullForAny if matches!(patience, Patience::Never) => {
                    return Err(Fail::Full)
                }
                Attempt::FullForAny => {
                    wait_for_space(tx, watch, want.min(min_record as usize), patience)?
                }
                Attempt::Full => match patience {
                    Patience::Never => return Err(Fail::Full),
                    _ => wait_for_space(tx, watch, want, patience)?,
                },
                Attempt::Overflow => {
                    // Cannot happen: the exact size was claimed. Report it rather than loop.
                    return Err(
                        SendFailure::Serialize(rancor::Error::new(std::io::Error::other(
                            "the archive outgrew its exact size between two serializations",
                        )))
                        .into(),
                    );
                }
                Attempt::Failed(fail) => return Err(fail),
            }
        }
    }

    /// The exact archived size of `value`, by a serialization that only counts.
    pub(crate) fn archived_size(&mut self, value: &T) -> Result<usize, SendFailure> {
        let mut serializer = Serializer::new(
            CountingWriter::default(),
            self.arena.acquire(),
            Share::new(),
        );
        rkyv::api::serialize_using::<_, rancor::Error>(value, &mut serializer)
            .map_err(SendFailure::Serialize)?;
        Ok(serializer.writer.pos())
    }
}

/// Waits (as `patience` allows) until `len` bytes can be claimed, reporting refused openers
/// while it waits.
pub(crate) fn wait_for_space<W: RingTx>(
    tx: &mut W,
    watch: &mut Watch,
    len: usize,
    patience: Patience,
) -> Result<(), Fail> {
    loop {
        let slice = match patience {
            Patience::Never => return Ok(()),
            Patience::Forever => REJECTION_POLL,
            Patience::Until(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                left.min(REJECTION_POLL)
            }
        };
        match tx.wait_for_space(len, slice) {
            Ok(()) => return Ok(()),
            Err(ClaimError::Timeout) => {
                if let Some(mismatch) = watch.check() {
                    return Err(SendFailure::SchemaMismatch(mismatch).into());
                }
                if let Patience::Until(deadline) = patience {
                    if Instant::now() >= deadline {
                        return Err(Fail::Timeout);
                    }
                }
            }
            Err(ClaimError::PeerGone) => return Err(Fail::Disconnected),
            Err(ClaimError::TooLarge { len, .. }) => {
                return Err(too_large(len as usize, tx.capacity()).into())
            }
            Err(ClaimError::Corrupt(c)) => return Err(SendFailure::Corrupt(c).into()),
        }
    }
}

pub(crate) fn claim_failure(e: TryClaimError, capacity: u64) -> Fail {
    match e {
        TryClaimError::Full { .. } => Fail::Full,
        TryClaimError::PeerGone => Fail::Disconnected,
        TryClaimError::TooLarge { len, .. } => Fail::Failed(too_large(len as usize, capacity)),
        TryClaimError::Corrupt(c) => Fail::Failed(SendFailure::Corrupt(c)),
    }
}

/// Turns records into typed views in one access mode; holds the private copy buffer of the
/// `Untrusted` mode.
#[derive(Debug)]
pub(crate) struct Decoder<T> {
    pub(crate) access: Mode,
    /// The private copy of the last message (`Untrusted` mode), reused.
    scratch: AlignedVec<16>,
    _type: PhantomData<fn() -> T>,
}

fn rx_error(e: RxFail) -> RecvError {
    match e {
        RxFail::Timeout => RecvError::Timeout,
        RxFail::Gone => RecvError::Disconnected,
        RxFail::Lapped(lost) => RecvError::Lapped { lost },
        RxFail::Corrupt(c) => RecvError::Corrupt(c),
        // `wait` returned because a record is committed; only a corrupting peer can make it
        // vanish.
        RxFail::Empty => RecvError::Corrupt(Corruption {
            what: "a committed record",
            found: 0,
            expected: "to still be there after the wait saw it".into(),
        }),
    }
}

impl<T: Message> Decoder<T> {
    pub(crate) fn new(access: Mode) -> Self {
        Decoder {
            access,
            scratch: AlignedVec::new(),
            _type: PhantomData,
        }
    }

    /// The next message, waiting until `deadline` (`None`: forever).
    pub(crate) fn recv<'a, R: RingRx>(
        &'a mut self,
        rx: &'a mut R,
        watch: &mut Watch,
        deadline: Option<Instant>,
        prefix: usize,
    ) -> Result<Received<'a, T>, RecvError> {
        if let Some(mismatch) = watch.check() {
            return Err(RecvError::SchemaMismatch(mismatch));
        }
        match rx.check_record() {
            Ok(()) => {}
            Err(RxFail::Empty) => wait(rx, watch, deadline)?,
            Err(e) => return Err(rx_error(e)),
        }
        let record = rx.try_read().map_err(rx_error)?;
        view(record, &self.access, &mut self.scratch, prefix)
    }

    /// `record` as a typed view in this decoder's access mode, skipping `prefix` envelope
    /// bytes.
    pub(crate) fn view_record<'a, R: RxRecord<'a>>(
        &'a mut self,
        record: R,
        prefix: usize,
    ) -> Result<Received<'a, T>, RecvError> {
        view(record, &self.access, &mut self.scratch, prefix)
    }

    /// The next message if there is one now.
    pub(crate) fn try_recv<'a, R: RingRx>(
        &'a mut self,
        rx: &'a mut R,
        watch: &mut Watch,
        prefix: usize,
    ) -> Result<Option<Received<'a, T>>, RecvError> {
        if let Some(mismatch) = watch.check() {
            return Err(RecvError::SchemaMismatch(mismatch));
        }
        match rx.try_read() {
            Ok(record) => view(record, &self.access, &mut self.scratch, prefix).map(Some),
            Err(RxFail::Empty) => Ok(None),
            Err(e) => Err(rx_error(e)),
        }
    }
}

/// Waits until a record can be taken or `deadline` passes, reporting refused openers while it
/// waits (in [`REJECTION_POLL`] slices).
pub(crate) fn wait<R: RingRx>(
    rx: &mut R,
    watch: &mut Watch,
    deadline: Option<Instant>,
) -> Result<(), RecvError> {
    loop {
        let slice = match deadline {
            None => REJECTION_POLL,
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(REJECTION_POLL),
        };
        match rx.wait_timeout(slice) {
            Ok(()) => return Ok(()),
            Err(RxFail::Timeout) => {
                if let Some(mismatch) = watch.check() {
                    return Err(RecvError::SchemaMismatch(mismatch));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(RecvError::Timeout);
                }
            }
            Err(e) => return Err(rx_error(e)),
        }
    }
}

/// A record as a typed view, skipping `prefix` bytes in front of the archive.
pub(crate) fn view<'a, T: Message, R: RxRecord<'a>>(
    record: R,
    mode: &Mode,
    scratch: &'a mut AlignedVec<16>,
    prefix: usize,
) -> Result<Received<'a, T>, RecvError> {
    let position = record.position();
    let len = record.len();
    let invalid = |source| RecvError::Invalid {
        len,
        position,
        source,
    };
    let body = move |bytes: &[u8]| -> Result<usize, rancor::Error> {
        if bytes.len() < prefix {
            return Err(rancor::Error::new(std::io::Error::other(format!(
                "a record of {} bytes is shorter than its {prefix}-byte envelope",
                bytes.len()
            ))));
        }
        Ok(prefix)
    };
    let view = match mode {
        Mode::Validated => record
            .view(|bytes| rkyv::access::<Archived<T>, rancor::Error>(&bytes[body(bytes)?..]))
            .map_err(invalid)?,
        Mode::Untrusted => {
            scratch.clear();
            scratch.extend_from_slice(&record);
            drop(record);
            let bytes: &'a [u8] = scratch;
            let archive = &bytes[body(bytes).map_err(invalid)?..];
            return Ok(Received {
                view: View::Private(
                    rkyv::access::<Archived<T>, rancor::Error>(archive).map_err(invalid)?,
                    archive,
                ),
                skip: 0,
            });
        }
        Mode::Trusted(proof) => record
            .view(|bytes| {
                Ok::<_, rancor::Error>(access::trusted_view::<Archived<T>>(
                    &bytes[body(bytes)?..],
                    proof,
                ))
            })
            .map_err(invalid)?,
    };
    Ok(Received { view, skip: prefix })
}
