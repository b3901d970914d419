//! Typed zero-copy channels: send a Rust value from one process, read it in place in another.
//!
//! A [`Channel<T>`] is a named SPSC ring in shared memory ([`shmesh_ring::spsc`]) whose
//! records are [rkyv](https://docs.rs/rkyv/0.8) archives of `T`:
//!
//! - [`Sender::send`] serializes the value **directly into space claimed in the ring** (rkyv
//!   with a writer over the claimed slice), then commits exactly the bytes written. No
//!   intermediate buffer, no copy; rkyv's scratch space is an arena the sender reuses, so the
//!   steady state allocates nothing.
//! - [`Receiver::recv`] returns a [`Received`] guard that derefs to `&Archived<T>` **in shared
//!   memory** and releases the record when dropped. Rich types work: `String`, `Vec`, `Option`,
//!   enums with data, nested structs, `HashMap`/`BTreeMap`.
//! - A receiver checks messages as its [`Access`] mode says: validated in place (default),
//!   validated on a private copy (hostile senders), or not at all (`unsafe`, trusted senders).
//! - Loans ([`Sender::loan`], [`Sender::loan_slice`]) let you build plain-data payloads in place.
//!
//! The segment header records the [`Schema`] of `T` (its name, archived size and alignment,
//! the rkyv format and a user version, and a fingerprint of them): opening a channel with a
//! different `T` is a [`ChannelError::SchemaMismatch`] that names both types, and the ends
//! already on the channel are told too (once, on their next operation).
//!
//! # Examples
//!
//! ```
//! use shmesh::channel::Channel;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize)]
//! struct Reading {
//!     sensor: String,
//!     values: Vec<f32>,
//!     alarm: Option<u8>,
//! }
//!
//! # let name = format!("doc-channel-{}", std::process::id());
//! // One process creates the channel and sends...
//! let channel = Channel::<Reading>::create(&name)?;
//! let mut tx = channel.sender()?;
//! tx.send(&Reading { sensor: "t1".into(), values: vec![20.5, 21.0], alarm: None })?;
//!
//! // ...another opens it and reads in place (here, the same process).
//! let mut rx = Channel::<Reading>::open(&name)?.receiver()?;
//! let reading = rx.recv()?;
//! assert_eq!(reading.sensor, "t1");
//! assert_eq!(reading.values.as_slice(), [20.5, 21.0]);
//! assert!(reading.alarm.is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Which operation blocks: `send`/`recv` wait (with the channel's
//! [`WaitStrategy`]), `send_timeout`/`recv_timeout` wait at most so long, `try_send`/`try_recv`
//! never wait; [`Receiver::recv_async`] waits without blocking the thread (async code, any
//! executor). A gone peer (its process died or it dropped its end) is seen by the waiting
//! forms within milliseconds (`recv_async`: within 100 ms of a death); the `try_` forms look at the peer's liveness token only every
//! 1024th time they find the ring empty (or full), so that polling costs no system call.

mod access;
mod any;
mod asynch;
mod ends;
mod error;
mod loan;
mod schema;
pub mod service;
pub mod topic;
pub(crate) mod writer;

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::{Duration, Instant};

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::{Archive, Archived};
use shmesh_ring::{
    broadcast, mpsc, ClaimError, MappedRecord, PeerState, SchemaId, Segment, SegmentBuilder,
    SegmentKind, ShmMemory, TryClaimError, WaitStrategy,
};

use self::any::{AnyGrant, Rx, Tx};

pub use self::access::{Access, AccessMode};
pub use self::asynch::RecvAsync;
use self::ends::{claim_failure, Decoder, Encoder, RingTx};
pub use self::error::{
    ChannelError, LoanError, RecvError, SchemaMismatch, SendError, SendFailure, SendTimeoutError,
    TryRecvError, TrySendError,
};
pub use self::loan::{Loan, SliceLoan};
pub use self::schema::{Format, Schema};
pub use self::writer::{CountingWriter, SliceWriter};

/// Default ring capacity of a channel: 1 MiB (messages up to 512 KiB - 24 bytes).
pub const DEFAULT_CAPACITY: u64 = 1 << 20;

/// How often a blocked `send` or `recv` looks for a refused opener to report.
const REJECTION_POLL: Duration = Duration::from_millis(100);

/// A type that can travel on a channel: rkyv-serializable into ring space, and checkable by
/// bytecheck when read. Implemented for every type that derives `rkyv::Archive` and
/// `rkyv::Serialize` (all its fields then qualify; the derive also generates the check).
pub trait Message:
    Archive<Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
    + for<'a> rkyv::Serialize<HighSerializer<SliceWriter<'a>, ArenaHandle<'a>, rancor::Error>>
    + for<'a> rkyv::Serialize<HighSerializer<CountingWriter, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Message for T where
    T: Archive<Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
        + for<'a> rkyv::Serialize<HighSerializer<SliceWriter<'a>, ArenaHandle<'a>, rancor::Error>>
        + for<'a> rkyv::Serialize<HighSerializer<CountingWriter, ArenaHandle<'a>, rancor::Error>>
{
}

/// Builds a [`Channel`]: `Channel::<T>::builder(name).capacity(..).version(..).create()` or
/// `.open()`.
#[derive(Debug, Clone)]
pub struct ChannelBuilder<T> {
    name: String,
    capacity: u64,
    mode: Option<u32>,
    schema: Schema,
    open_timeout: Option<Duration>,
    owner: Option<u32>,
    wait: WaitStrategy,
    senders: Option<usize>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Message> ChannelBuilder<T> {
    /// Create: let up to `n` senders send at once (an MPSC ring: each sender's messages stay
    /// in order, senders interleave). Without it a channel has one sender (an SPSC ring, the
    /// fastest). Open: ignored (the creator decided; [`Channel::max_senders`] says).
    pub fn senders(mut self, n: usize) -> Self {
        self.senders = Some(n);
        self
    }

    /// Open: the uid that must own the channel (the effective uid by default). To share a
    /// channel between users, the creator widens its [`mode`](Self::mode) and the others name
    /// the creator's uid here; a channel owned by anyone else is refused (it may be squatted).
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// Create: ring capacity in bytes, a power of two from 128 bytes to 1 TiB
    /// ([`DEFAULT_CAPACITY`] if not set). A message can take at most half of it, less 24
    /// bytes. Open: ignored (the creator decided).
    pub fn capacity(mut self, capacity: u64) -> Self {
        self.capacity = capacity;
        self
    }

    /// Create: the permission bits of the segment (0600 by default). Open: the widest mode
    /// accepted.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// The user version of the message type, part of the fingerprint (0 by default): bump it
    /// when you change the type's fields and keep its name.
    pub fn version(mut self, version: u32) -> Self {
        self.schema.version = version;
        self
    }

    /// The name of the message type in the fingerprint, instead of
    /// `std::any::type_name::<T>()`: for programs that define the same type in different
    /// modules or crates, or are built by different compilers.
    pub fn type_name(mut self, name: impl Into<String>) -> Self {
        self.schema.type_name = name.into();
        self
    }

    /// Open: how long to wait for a creator that is still writing the header.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = Some(timeout);
        self
    }

    /// How the ends made from this channel wait ([`WaitStrategy::default`]: spin, then sleep
    /// on a futex). Each end can change it later.
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    fn segment(&self) -> SegmentBuilder {
        let mut b = SegmentBuilder::new(&self.name);
        if let Some(n) = self.senders {
            b = b.kind(SegmentKind::MpscRing).endpoints(n);
        }
        let mut b = b
            .capacity(self.capacity)
            .schema(self.schema.fingerprint())
            .schema_text(self.schema.description());
        if let Some(mode) = self.mode {
            b = b.mode(mode);
        }
        if let Some(timeout) = self.open_timeout {
            b = b.open_timeout(timeout);
        }
        b
    }

    /// Creates the channel.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Segment`]: an invalid name, a name a live process uses, a capacity
    /// that is not a power of two in range, permissions, no space in `/dev/shm`.
    pub fn create(self) -> Result<Channel<T>, ChannelError> {
        let segment = self
            .segment()
            .create()
            .map_err(ChannelError::from_segment)?;
        Ok(Channel::new(segment, self.schema, self.wait))
    }

    /// Opens an existing channel.
    ///
    /// # Errors
    ///
    /// [`ChannelError::SchemaMismatch`] when it carries another message type (the creator's
    /// ends are told too); [`ChannelError::Segment`]: no such channel, permissions, a header
    /// from another layout version.
    pub fn open(self) -> Result<Channel<T>, ChannelError> {
        let segment = SegmentBuilder::new(&self.name)
            .any_ring()
            .schema(self.schema.fingerprint())
            .schema_text(self.schema.description());
        let segment = match (self.mode, self.open_timeout) {
            (Some(m), Some(t)) => segment.mode(m).open_timeout(t),
            (Some(m), None) => segment.mode(m),
            (None, Some(t)) => segment.open_timeout(t),
            (None, None) => segment,
        };
        let segment = match self.owner {
            Some(uid) => segment.owner(uid),
            None => segment,
        };
        let segment = segment.open().map_err(ChannelError::from_segment)?;
        if segment.kind() == SegmentKind::BroadcastRing {
            return Err(ChannelError::Attach(shmesh_ring::AttachError::NotARing {
                name: segment.name().to_owned(),
                kind: "topic (broadcast ring)".to_owned(),
                expected: "a channel (SPSC or MPSC ring): open it with Topic",
            }));
        }
        Ok(Channel::new(segment, self.schema, self.wait))
    }
}

/// A named channel of `T` messages in shared memory; make its [`Sender`] and [`Receiver`]
/// from it. The creating handle removes the name when it and the ends made from it are
/// dropped (open mappings stay valid).
pub struct Channel<T> {
    segment: Segment,
    schema: Schema,
    id: SchemaId,
    wait: WaitStrategy,
    /// Refused openers already counted when this handle was made.
    rejections: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.segment.name())
            .field("capacity", &self.segment.capacity())
            .field("schema", &self.id.text)
            .finish()
    }
}

impl<T: Message> Channel<T> {
    /// A builder for the channel `name` (1 to 200 characters from `[A-Za-z0-9._-]`).
    pub fn builder(name: impl Into<String>) -> ChannelBuilder<T> {
        const {
            assert!(
                std::mem::align_of::<Archived<T>>() <= 16,
                "a channel's message type must archive with an alignment of at most 16 bytes \
                 (ring payloads are 16-byte aligned)"
            )
        };
        ChannelBuilder {
            name: name.into(),
            capacity: DEFAULT_CAPACITY,
            mode: None,
            schema: Schema::of::<T>(),
            open_timeout: None,
            owner: None,
            wait: WaitStrategy::default(),
            senders: None,
            _type: PhantomData,
        }
    }

    /// Creates the channel `name` with the default capacity (1 MiB).
    ///
    /// # Errors
    ///
    /// As [`ChannelBuilder::create`].
    pub fn create(name: impl Into<String>) -> Result<Channel<T>, ChannelError> {
        Self::builder(name).create()
    }

    /// Opens the existing channel `name`.
    ///
    /// # Errors
    ///
    /// As [`ChannelBuilder::open`].
    pub fn open(name: impl Into<String>) -> Result<Channel<T>, ChannelError> {
        Self::builder(name).open()
    }

    fn new(segment: Segment, schema: Schema, wait: WaitStrategy) -> Channel<T> {
        let rejections = segment.schema_rejections();
        Channel {
            id: SchemaId {
                fingerprint: schema.fingerprint(),
                text: schema.description(),
            },
            segment,
            schema,
            wait,
            rejections,
            _type: PhantomData,
        }
    }

    /// The channel name.
    pub fn name(&self) -> &str {
        self.segment.name()
    }

    /// The schema of `T` this channel was made with.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The ring capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.segment.capacity()
    }

    /// The largest archived message the channel takes, in bytes.
    pub fn max_message(&self) -> u64 {
        shmesh_ring::spsc::max_payload(self.capacity())
    }

    /// How many senders may send at once: 1 for an SPSC channel, `n` for one created with
    /// [`senders(n)`](ChannelBuilder::senders).
    pub fn max_senders(&self) -> usize {
        match self.segment.kind() {
            SegmentKind::MpscRing => self.segment.slot_count() - 2,
            _ => 1,
        }
    }

    fn watch(&self) -> Watch {
        Watch {
            segment: self.segment.clone(),
            ours: self.id.clone(),
            seen: self.rejections,
        }
    }

    /// Attaches the sending end.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Attach`]: a live process is already the sender (`Busy`), or the ring
    /// is unusable.
    pub fn sender(&self) -> Result<Sender<T>, ChannelError> {
        let mut producer = match self.segment.kind() {
            SegmentKind::MpscRing => Tx::Mpsc(self.segment.mpsc_writer()?),
            _ => Tx::Spsc(self.segment.producer()?),
        };
        producer.set_wait_strategy(self.wait);
        Ok(Sender {
            producer,
            watch: self.watch(),
            enc: Encoder::new(),
        })
    }

    /// Attaches the receiving end, validating each message in place ([`Access::validated`]).
    ///
    /// # Errors
    ///
    /// As [`sender`](Self::sender).
    pub fn receiver(&self) -> Result<Receiver<T>, ChannelError> {
        self.receiver_with(Access::validated())
    }

    /// Attaches the receiving end with the given [`Access`] mode.
    ///
    /// # Errors
    ///
    /// As [`sender`](Self::sender).
    pub fn receiver_with(&self, access: Access) -> Result<Receiver<T>, ChannelError> {
        let mut consumer = match self.segment.kind() {
            SegmentKind::MpscRing => Rx::Mpsc(self.segment.mpsc_consumer()?),
            _ => Rx::Spsc(self.segment.consumer()?),
        };
        consumer.set_wait_strategy(self.wait);
        Ok(Receiver {
            consumer,
            watch: self.watch(),
            dec: Decoder::new(access.0),
        })
    }
}

/// Watches the segment for openers refused because of their type, to tell this end once each.
#[derive(Debug)]
struct Watch {
    segment: Segment,
    ours: SchemaId,
    seen: u64,
}

impl Watch {
    /// A refused opener not reported yet, if any: one load of a line that changes only on a
    /// refusal.
    #[inline]
    fn check(&mut self) -> Option<Box<SchemaMismatch>> {
        if self.segment.schema_rejections() == self.seen {
            return None;
        }
        self.slow_check()
    }

    #[cold]
    fn slow_check(&mut self) -> Option<Box<SchemaMismatch>> {
        let rejection = self.segment.last_rejection()?;
        self.seen = rejection.count;
        Some(Box::new(SchemaMismatch {
            channel: self.segment.name().to_owned(),
            who: format!("a process (pid {}) tried to open it", rejection.pid),
            opener_pid: Some(rejection.pid),
            ours: self.ours.clone(),
            other: rejection.schema,
        }))
    }
}

/// How long an operation may wait.
#[derive(Debug, Clone, Copy)]
enum Patience {
    Never,
    Forever,
    Until(Instant),
}

impl Patience {
    /// At most `timeout` from now; a timeout too long for the clock (`Duration::MAX`) waits
    /// forever, as in `std::sync::mpsc` and crossbeam.
    fn within(timeout: Duration) -> Patience {
        Instant::now()
            .checked_add(timeout)
            .map_or(Patience::Forever, Patience::Until)
    }
}

/// Why a send or a loan did not happen (before the value is handed back).
#[derive(Debug)]
enum Fail {
    Full,
    Timeout,
    Disconnected,
    Failed(SendFailure),
}

impl From<SendFailure> for Fail {
    fn from(f: SendFailure) -> Self {
        Fail::Failed(f)
    }
}

impl From<Fail> for LoanError {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Full => LoanError::Full,
            Fail::Timeout => LoanError::Timeout,
            Fail::Disconnected => LoanError::Disconnected,
            Fail::Failed(f) => LoanError::Failed(f),
        }
    }
}

/// The sending end of a [`Channel`]. `Send`, not `Sync`: one thread sends.
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// # let name = format!("doc-not-sync-tx-{}", std::process::id());
/// let tx = shmesh::Channel::<u32>::create(&name).unwrap().sender().unwrap();
/// shared(&tx); // a Sender cannot be shared between threads
/// ```
pub struct Sender<T> {
    producer: Tx,
    watch: Watch,
    enc: Encoder<T>,
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("channel", &self.watch.segment.name())
            .field("producer", &self.producer)
            .finish()
    }
}

impl<T: Message> Sender<T> {
    /// Sends `value`, waiting while the ring is full.
    ///
    /// The value is serialized straight into the ring; it stays with the caller, sent or not.
    /// The sender claims the size of recent messages plus an eighth; a larger message costs
    /// one more serialization (to learn its size) the first time.
    ///
    /// # Errors
    ///
    /// [`SendError::Disconnected`] when the receiver is gone and the ring is full;
    /// [`SendError::Failed`] with [`SendFailure::TooLarge`] (the message can never fit this
    /// ring: the error names its size, the limit and the capacity that would do),
    /// `Serialize`, `SchemaMismatch` (a process tried to open the channel with another type:
    /// reported once, the message was not sent, the channel still works) or `Corrupt`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-send-{}", std::process::id());
    /// let channel = shmesh::channel::Channel::<String>::create(&name)?;
    /// let mut tx = channel.sender()?;
    /// let greeting = String::from("hello");
    /// tx.send(&greeting)?;
    /// tx.send(&greeting)?; // the sender keeps it: send it again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(&mut self, value: &T) -> Result<(), SendError> {
        match self.send_with(value, Patience::Forever) {
            Ok(()) => Ok(()),
            Err(Fail::Disconnected) => Err(SendError::Disconnected),
            Err(Fail::Failed(cause)) => Err(SendError::Failed(cause)),
            Err(Fail::Full | Fail::Timeout) => unreachable!("send waits without a deadline"),
        }
    }

    /// Sends `value` if the ring has room now; never waits.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] when the ring has no room now for this message (its exact size:
    /// on a full ring the sender counts it, one extra serialization pass, unless not even the
    /// smallest message of the type would fit); otherwise as [`send`](Self::send).
    pub fn try_send(&mut self, value: &T) -> Result<(), TrySendError> {
        match self.send_with(value, Patience::Never) {
            Ok(()) => Ok(()),
            Err(Fail::Full | Fail::Timeout) => Err(TrySendError::Full),
            Err(Fail::Disconnected) => Err(TrySendError::Disconnected),
            Err(Fail::Failed(cause)) => Err(TrySendError::Failed(cause)),
        }
    }

    /// Sends `value`, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`]; otherwise as [`send`](Self::send).
    pub fn send_timeout(&mut self, value: &T, timeout: Duration) -> Result<(), SendTimeoutError> {
        match self.send_with(value, Patience::within(timeout)) {
            Ok(()) => Ok(()),
            Err(Fail::Full | Fail::Timeout) => Err(SendTimeoutError::Timeout),
            Err(Fail::Disconnected) => Err(SendTimeoutError::Disconnected),
            Err(Fail::Failed(cause)) => Err(SendTimeoutError::Failed(cause)),
        }
    }

    fn send_with(&mut self, value: &T, patience: Patience) -> Result<(), Fail> {
        self.enc
            .send(&mut self.producer, &mut self.watch, value, patience, &[], 0)
    }

    /// The archived size of `value`, in bytes: what a send of it takes in the ring (plus an
    /// 8-byte header, rounded up to 16).
    ///
    /// # Errors
    ///
    /// [`SendFailure::Serialize`] when the type's serialization fails.
    pub fn message_size(&mut self, value: &T) -> Result<usize, SendFailure> {
        self.enc.archived_size(value)
    }
}

impl<T> Sender<T> {
    /// Waits (as `patience` allows) until `len` bytes can be claimed, reporting refused
    /// openers while it waits.
    fn wait_for_space(&mut self, len: usize, patience: Patience) -> Result<(), Fail> {
        ends::wait_for_space(&mut self.producer, &mut self.watch, len, patience)
    }

    /// Claims `len` bytes for a loan, as `patience` allows.
    fn claim_loan(&mut self, len: usize, patience: Patience) -> Result<AnyGrant<'_>, LoanError> {
        if let Some(mismatch) = self.watch.check() {
            return Err(SendFailure::SchemaMismatch(mismatch).into());
        }
        let capacity = self.producer.capacity();
        if let Patience::Never = patience {
            return self
                .producer
                .try_claim(len)
                .map_err(|e| claim_failure(e, capacity).into());
        }
        // Wait in slices, reporting refused openers, until there is room...
        match self.producer.check_space(len) {
            Err(TryClaimError::Full { .. }) => self.wait_for_space(len, patience)?,
            Err(e) => return Err(claim_failure(e, capacity).into()),
            Ok(()) => {}
        }
        // ...then claim it. Another sender of an MPSC channel may take the room first: the
        // ring's own claim waits again then (a `try_claim` would report a `Full` that a
        // waiting loan must not return).
        let timeout = match patience {
            Patience::Until(deadline) => deadline.saturating_duration_since(Instant::now()),
            Patience::Forever | Patience::Never => Duration::MAX,
        };
        self.producer
            .claim_timeout(len, timeout)
            .map_err(|e| match e {
                ClaimError::Timeout => LoanError::Timeout,
                ClaimError::PeerGone => LoanError::Disconnected,
                ClaimError::TooLarge { len, .. } => too_large(len as usize, capacity).into(),
                ClaimError::Corrupt(c) => SendFailure::Corrupt(c).into(),
            })
    }

    /// The receiver's state: not attached yet, alive, or gone.
    pub fn peer(&self) -> PeerState {
        self.producer.peer()
    }

    /// How this end waits for room.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.producer.wait_strategy()
    }

    /// Changes how this end waits for room.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.producer.set_wait_strategy(wait);
    }

    /// The channel name.
    pub fn name(&self) -> &str {
        self.watch.segment.name()
    }

    /// The largest archived message this channel takes, in bytes.
    pub fn max_message(&self) -> u64 {
        self.producer.max_payload()
    }
}

fn too_large(size: usize, capacity: u64) -> SendFailure {
    use shmesh_ring::spsc::{max_payload, MAX_CAPACITY};
    // max_payload(cap) = cap/2 - 24, capped at 1 GiB - 24: `size` needs 2 * (size + 24) if that
    // is a capacity at all.
    let needed = (size as u64)
        .checked_add(24)
        .and_then(|n| n.checked_mul(2))
        .and_then(u64::checked_next_power_of_two)
        .filter(|&cap| cap <= MAX_CAPACITY && max_payload(cap) >= size as u64);
    SendFailure::TooLarge {
        size,
        max: max_payload(capacity),
        capacity,
        needed,
    }
}

/// The receiving end of a [`Channel`]. `Send`, not `Sync`: one thread receives.
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// # let name = format!("doc-not-sync-{}", std::process::id());
/// let rx = shmesh::Channel::<u32>::create(&name).unwrap().receiver().unwrap();
/// shared(&rx); // a Receiver cannot be shared between threads
/// ```
pub struct Receiver<T> {
    consumer: Rx,
    watch: Watch,
    dec: Decoder<T>,
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("channel", &self.watch.segment.name())
            .field("access", &self.dec.access)
            .field("consumer", &self.consumer)
            .finish()
    }
}

/// A message received in place: derefs to `&Archived<T>`; the record goes back to the sender
/// when this guard drops. (In `Untrusted` mode the view is of the receiver's private copy and
/// the record was released already.)
pub struct Received<'a, T: Archive> {
    view: View<'a, T::Archived>,
    /// Envelope bytes in front of the archive in a shared record.
    skip: usize,
}

/// Where a received message's bytes are: in a record of some ring kind, or in the receiver's
/// private copy.
pub(crate) enum View<'a, A: ?Sized> {
    Spsc(MappedRecord<'a, ShmMemory, A>),
    Mpsc(mpsc::MappedRecord<'a, ShmMemory, A>),
    Broadcast(broadcast::MappedRecord<'a, ShmMemory, A>),
    /// The view and the bytes of the receiver's private copy.
    Private(&'a A, &'a [u8]),
}

impl<T: Archive> Deref for Received<'_, T> {
    type Target = Archived<T>;

    #[inline]
    fn deref(&self) -> &Archived<T> {
        match &self.view {
            View::Spsc(record) => record,
            View::Mpsc(record) => record,
            View::Broadcast(record) => record,
            View::Private(view, _) => view,
        }
    }
}

impl<T: Archive> Received<'_, T> {
    /// The archived bytes of the message.
    pub fn bytes(&self) -> &[u8] {
        match &self.view {
            View::Spsc(record) => &record.bytes()[self.skip..],
            View::Mpsc(record) => &record.bytes()[self.skip..],
            View::Broadcast(record) => &record.bytes()[self.skip..],
            View::Private(_, bytes) => bytes,
        }
    }

    /// Deserializes the message into an owned `T` (allocates as `T` does).
    ///
    /// # Errors
    ///
    /// When a `Deserialize` impl of the type fails.
    pub fn deserialize(&self) -> Result<T, rancor::Error>
    where
        Archived<T>: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    {
        rkyv::deserialize::<T, rancor::Error>(&**self)
    }
}

impl<T: Archive> fmt::Debug for Received<'_, T>
where
    Archived<T>: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Message> Receiver<T> {
    /// Receives the next message, waiting while there is none.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] when the sender is gone and every message was read;
    /// `Invalid` when a message fails validation (it is dropped: the next call reads the one
    /// after); `SchemaMismatch` when a process tried to open the channel with another type
    /// (once; the channel still works); `Corrupt`. Never `Timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use shmesh::Channel;
    ///
    /// # let name = format!("doc-recv-{}", std::process::id());
    /// let channel = Channel::<HashMap<String, u32>>::create(&name)?;
    /// let (mut tx, mut rx) = (channel.sender()?, channel.receiver()?);
    /// tx.send(&HashMap::from([("apples".to_owned(), 3)]))?;
    /// let stock = rx.recv()?; // derefs to the archived map, in shared memory
    /// assert_eq!(stock.get("apples").map(|n| n.to_native()), Some(3));
    /// drop(stock); // gives the record back to the sender
    /// tx.send(&HashMap::new())?;
    /// drop(tx);
    /// assert!(rx.recv()?.is_empty());
    /// assert!(rx.recv().unwrap_err().is_disconnected()); // the sender is gone
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&mut self) -> Result<Received<'_, T>, RecvError> {
        self.dec.recv(&mut self.consumer, &mut self.watch, None, 0)
    }

    /// Receives the next message, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), and [`RecvError::Timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Received<'_, T>, RecvError> {
        // A timeout too long for the clock (Duration::MAX) means no deadline.
        let deadline = Instant::now().checked_add(timeout);
        self.dec
            .recv(&mut self.consumer, &mut self.watch, deadline, 0)
    }

    /// Receives the next message if there is one now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when there is none; otherwise as [`recv`](Self::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmesh::channel::{Channel, TryRecvError};
    ///
    /// # let name = format!("doc-try-recv-{}", std::process::id());
    /// let channel = Channel::<String>::create(&name)?;
    /// let (mut tx, mut rx) = (channel.sender()?, channel.receiver()?);
    /// assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    /// tx.send(&"ready".to_owned())?;
    /// assert_eq!(rx.try_recv()?.as_str(), "ready");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv(&mut self) -> Result<Received<'_, T>, TryRecvError> {
        match self.dec.try_recv(&mut self.consumer, &mut self.watch, 0) {
            Ok(Some(received)) => Ok(received),
            Ok(None) => Err(TryRecvError::Empty),
            Err(e) => Err(e.into()),
        }
    }
}

impl<T> Receiver<T> {
    /// The sender's state: not attached yet, alive, or gone.
    pub fn peer(&self) -> PeerState {
        self.consumer.peer()
    }

    /// How this end waits for messages.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.consumer.wait_strategy()
    }

    /// Changes how this end waits for messages.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.consumer.set_wait_strategy(wait);
    }

    /// The channel name.
    pub fn name(&self) -> &str {
        self.watch.segment.name()
    }

    /// The access mode chosen when this end was made.
    pub fn access_mode(&self) -> AccessMode {
        self.dec.access.public()
    }
}
