//! Publish/subscribe: one [`Publisher`] of `T` messages, any number of [`Subscriber`]s, each
//! receiving every message (a broadcast ring, [`shmesh_ring::broadcast`]).
//!
//! # Which pattern maps to which ring
//!
//! | writers → readers | use | ring |
//! |---|---|---|
//! | 1 → 1 | [`Channel`](super::Channel) | SPSC |
//! | many → 1 (a logger, a collector) | [`Channel`](super::Channel) with [`senders(n)`](super::ChannelBuilder::senders) | MPSC |
//! | 1 → many, each reader gets every message | [`Topic`] | broadcast |
//! | many clients → 1 server, replies to each | [`service`](super::service) | MPSC + one SPSC per client |
//!
//! Many publishers to many subscribers is not one ring: give each publisher its own topic
//! (subscribers subscribe to each), or collect through an MPSC channel and republish.
//!
//! # Slow subscribers
//!
//! The policy is chosen when the topic is created:
//!
//! - [`BroadcastPolicy::Block`] (default): the publisher waits for the slowest *live*
//!   subscriber (a subscriber whose process died is dropped from the set). Subscribers read in
//!   place, zero-copy.
//! - [`BroadcastPolicy::Lap`]: the publisher never waits; a subscriber that falls a whole ring
//!   behind gets [`RecvError::Lapped`] with the exact number of messages it lost, then goes on
//!   from the oldest message still available. Subscribers copy each message out before checking
//!   it (the publisher may overwrite the ring under them), so `Lap` costs a copy per message.
//!
//! With [`history(k)`](TopicBuilder::history), the publisher keeps the last `k` messages for
//! subscribers that join late ([`Topic::subscriber_from`] with [`Start::History`]).
//!
//! # Examples
//!
//! ```
//! use shmesh::topic::Topic;
//!
//! # let name = format!("doc-topic-{}", std::process::id());
//! let topic = Topic::<String>::create(&name)?;
//! let mut publisher = topic.publisher()?;
//! let (mut a, mut b) = (topic.subscriber()?, topic.subscriber()?);
//! publisher.publish(&"tick".to_owned())?;
//! assert_eq!(a.recv()?.as_str(), "tick");
//! assert_eq!(b.recv()?.as_str(), "tick");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use rkyv::Archived;
pub use shmesh_ring::broadcast::Start;
pub use shmesh_ring::BroadcastPolicy;
use shmesh_ring::{
    broadcast, ClaimError, PeerState, SchemaId, Segment, SegmentBuilder, SegmentKind, ShmMemory,
    TryClaimError, WaitStrategy,
};

use super::ends::{Decoder, Encoder, RingRx, RingTx, RxFail, RxRecord, TxGrant};
use super::{
    Access, ChannelError, Fail, Message, Patience, Received, RecvError, Schema, SendError,
    SendTimeoutError, TryRecvError, TrySendError, View, Watch, DEFAULT_CAPACITY,
};

/// Default number of subscribers a topic can have at once.
pub const DEFAULT_SUBSCRIBERS: usize = 16;

/// Builds a [`Topic`]: `Topic::<T>::builder(name).policy(..).history(..).create()` or `.open()`.
#[derive(Debug, Clone)]
pub struct TopicBuilder<T> {
    name: String,
    capacity: u64,
    mode: Option<u32>,
    schema: Schema,
    open_timeout: Option<Duration>,
    owner: Option<u32>,
    wait: WaitStrategy,
    policy: BroadcastPolicy,
    history: usize,
    subscribers: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T: Message> TopicBuilder<T> {
    /// Create: ring capacity in bytes, a power of two ([`DEFAULT_CAPACITY`] if not set). A
    /// message can take at most half of it, less 24 bytes.
    pub fn capacity(mut self, capacity: u64) -> Self {
        self.capacity = capacity;
        self
    }

    /// Create: what the publisher does about a slow subscriber (see the module docs).
    pub fn policy(mut self, policy: BroadcastPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Create: how many of the last messages the publisher keeps for late subscribers (0 by
    /// default).
    pub fn history(mut self, messages: usize) -> Self {
        self.history = messages;
        self
    }

    /// Create: how many subscribers may be subscribed at once ([`DEFAULT_SUBSCRIBERS`]).
    pub fn subscribers(mut self, n: usize) -> Self {
        self.subscribers = n;
        self
    }

    /// Create: the permission bits (0600 by default). Open: the widest mode accepted.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Open: the uid that must own the topic (the effective uid by default).
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// The user version of the message type, part of the fingerprint (0 by default).
    pub fn version(mut self, version: u32) -> Self {
        self.schema.version = version;
        self
    }

    /// The name of the message type in the fingerprint, instead of
    /// `std::any::type_name::<T>()`.
    pub fn type_name(mut self, name: impl Into<String>) -> Self {
        self.schema.type_name = name.into();
        self
    }

    /// Open: how long to wait for a creator that is still writing the header.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = Some(timeout);
        self
    }

    /// How the ends made from this topic wait ([`WaitStrategy::default`]).
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    fn segment(&self) -> SegmentBuilder {
        let mut b = SegmentBuilder::new(&self.name)
            .kind(SegmentKind::BroadcastRing)
            .schema(self.schema.fingerprint())
            .schema_text(self.schema.description());
        if let Some(mode) = self.mode {
            b = b.mode(mode);
        }
        if let Some(timeout) = self.open_timeout {
            b = b.open_timeout(timeout);
        }
        if let Some(uid) = self.owner {
            b = b.owner(uid);
        }
        b
    }

    /// Creates the topic.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Segment`]: an invalid name, a name a live process uses, a capacity that
    /// is not a power of two in range, too many subscribers or too long a history,
    /// permissions, no space in `/dev/shm`.
    pub fn create(self) -> Result<Topic<T>, ChannelError> {
        let segment = self
            .segment()
            .capacity(self.capacity)
            .policy(self.policy)
            .history(self.history)
            .endpoints(self.subscribers)
            .create()
            .map_err(ChannelError::from_segment)?;
        Ok(Topic::new(segment, self.schema, self.wait))
    }

    /// Opens an existing topic (its policy, history and capacity are the creator's).
    ///
    /// # Errors
    ///
    /// [`ChannelError::SchemaMismatch`] when it carries another message type;
    /// [`ChannelError::Segment`]: no such topic, not a topic, permissions.
    pub fn open(self) -> Result<Topic<T>, ChannelError> {
        let segment = self.segment().open().map_err(ChannelError::from_segment)?;
        Ok(Topic::new(segment, self.schema, self.wait))
    }
}

/// A named topic of `T` messages in shared memory; make its [`Publisher`] and
/// [`Subscriber`]s from it. The creating handle removes the name when it and the ends made
/// from it are dropped.
pub struct Topic<T> {
    segment: Segment,
    id: SchemaId,
    wait: WaitStrategy,
    rejections: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.segment.name())
            .field("capacity", &self.segment.capacity())
            .field("policy", &self.segment.policy())
            .field("history", &self.segment.history_len())
            .field("schema", &self.id.text)
            .finish()
    }
}

impl<T: Message> Topic<T> {
    /// A builder for the topic `name` (1 to 200 characters from `[A-Za-z0-9._-]`).
    pub fn builder(name: impl Into<String>) -> TopicBuilder<T> {
        const {
            assert!(
                std::mem::align_of::<Archived<T>>() <= 16,
                "a topic's message type must archive with an alignment of at most 16 bytes"
            )
        };
        TopicBuilder {
            name: name.into(),
            capacity: DEFAULT_CAPACITY,
            mode: None,
            schema: Schema::of::<T>(),
            open_timeout: None,
            owner: None,
            wait: WaitStrategy::default(),
            policy: BroadcastPolicy::Block,
            history: 0,
            subscribers: DEFAULT_SUBSCRIBERS,
            _type: PhantomData,
        }
    }

    /// Creates the topic `name` with the defaults (1 MiB, `Block`, no history, 16 subscribers).
    ///
    /// # Errors
    ///
    /// As [`TopicBuilder::create`].
    pub fn create(name: impl Into<String>) -> Result<Topic<T>, ChannelError> {
        Self::builder(name).create()
    }

    /// Opens the existing topic `name`.
    ///
    /// # Errors
    ///
    /// As [`TopicBuilder::open`].
    pub fn open(name: impl Into<String>) -> Result<Topic<T>, ChannelError> {
        Self::builder(name).open()
    }

    fn new(segment: Segment, schema: Schema, wait: WaitStrategy) -> Topic<T> {
        Topic {
            id: SchemaId {
                fingerprint: schema.fingerprint(),
                text: schema.description(),
            },
            rejections: segment.schema_rejections(),
            segment,
            wait,
            _type: PhantomData,
        }
    }

    /// The topic name.
    pub fn name(&self) -> &str {
        self.segment.name()
    }

    /// How many subscribers are subscribed now (alive).
    pub fn subscribers(&self) -> usize {
        self.segment.live_endpoints(2..self.segment.slot_count())
    }

    /// The slow-subscriber policy.
    pub fn policy(&self) -> BroadcastPolicy {
        self.segment.policy().unwrap_or(BroadcastPolicy::Block)
    }

    fn watch(&self) -> Watch {
        Watch {
            segment: self.segment.clone(),
            ours: self.id.clone(),
            seen: self.rejections,
        }
    }

    /// Attaches the publisher.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Attach`]: a live process is already the publisher (`Busy`).
    pub fn publisher(&self) -> Result<Publisher<T>, ChannelError> {
        let mut writer = self.segment.broadcast_writer()?;
        writer.set_wait_strategy(self.wait);
        Ok(Publisher {
            writer,
            watch: self.watch(),
            enc: Encoder::new(),
        })
    }

    /// Subscribes from the next message published, validating each in place.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Attach`]: all subscriber slots are held by live subscribers.
    pub fn subscriber(&self) -> Result<Subscriber<T>, ChannelError> {
        self.subscriber_from(Start::Latest, Access::validated())
    }

    /// Subscribes from `start` (the next message, or up to the last `k` kept ones) with the
    /// given [`Access`] mode. `Lap` topics always read from a private copy; the mode decides
    /// whether that copy is validated.
    ///
    /// # Errors
    ///
    /// As [`subscriber`](Self::subscriber).
    pub fn subscriber_from(
        &self,
        start: Start,
        access: Access,
    ) -> Result<Subscriber<T>, ChannelError> {
        let mut reader = self.segment.broadcast_reader(start)?;
        reader.set_wait_strategy(self.wait);
        Ok(Subscriber {
            reader,
            watch: self.watch(),
            dec: Decoder::new(access.0),
        })
    }
}

/// The publishing end of a [`Topic`]. `Send`, not `Sync`.
pub struct Publisher<T> {
    writer: broadcast::Writer<ShmMemory>,
    watch: Watch,
    enc: Encoder<T>,
}

impl<T> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.watch.segment.name())
            .finish()
    }
}

impl<T: Message> Publisher<T> {
    /// Publishes `value` to every subscriber, waiting (`Block` topics) while the slowest live
    /// subscriber has not made room. `Lap` topics never wait.
    ///
    /// # Errors
    ///
    /// [`SendError::Failed`]: too large, `Serialize`, `SchemaMismatch`, `Corrupt`. Never
    /// `Disconnected`: a topic without subscribers takes messages (they go to nobody, or to the
    /// history).
    pub fn publish(&mut self, value: &T) -> Result<(), SendError> {
        match self.publish_with(value, Patience::Forever) {
            Ok(()) => Ok(()),
            Err(Fail::Disconnected) => Err(SendError::Disconnected),
            Err(Fail::Failed(cause)) => Err(SendError::Failed(cause)),
            Err(Fail::Full | Fail::Timeout) => unreachable!("publish waits without a deadline"),
        }
    }

    /// Publishes `value` if there is room now.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] when a live subscriber of a `Block` topic has not made room;
    /// otherwise as [`publish`](Self::publish).
    pub fn try_publish(&mut self, value: &T) -> Result<(), TrySendError> {
        match self.publish_with(value, Patience::Never) {
            Ok(()) => Ok(()),
            Err(Fail::Full | Fail::Timeout) => Err(TrySendError::Full),
            Err(Fail::Disconnected) => Err(TrySendError::Disconnected),
            Err(Fail::Failed(cause)) => Err(TrySendError::Failed(cause)),
        }
    }

    /// Publishes `value`, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`]; otherwise as [`publish`](Self::publish).
    pub fn publish_timeout(
        &mut self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        match self.publish_with(value, Patience::within(timeout)) {
            Ok(()) => Ok(()),
            Err(Fail::Full | Fail::Timeout) => Err(SendTimeoutError::Timeout),
            Err(Fail::Disconnected) => Err(SendTimeoutError::Disconnected),
            Err(Fail::Failed(cause)) => Err(SendTimeoutError::Failed(cause)),
        }
    }

    fn publish_with(&mut self, value: &T, patience: Patience) -> Result<(), Fail> {
        self.enc
            .send(&mut self.writer, &mut self.watch, value, patience, &[], 0)
    }

    /// The topic name.
    pub fn name(&self) -> &str {
        self.watch.segment.name()
    }
}

/// A subscribing end of a [`Topic`]: receives every message published after it subscribed (or
/// from the history it asked for). `Send`, not `Sync`.
pub struct Subscriber<T> {
    reader: broadcast::Reader<ShmMemory>,
    watch: Watch,
    dec: Decoder<T>,
}

impl<T> fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("topic", &self.watch.segment.name())
            .field("access", &self.dec.access)
            .finish()
    }
}

impl<T: Message> Subscriber<T> {
    /// Receives the next message, waiting while there is none.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] when the publisher is gone and every message it published
    /// was read; `Lapped` (`Lap` topics: messages were lost, the next call goes on);
    /// `Invalid`, `SchemaMismatch`, `Corrupt` as for a [`Receiver`](super::Receiver).
    pub fn recv(&mut self) -> Result<Received<'_, T>, RecvError> {
        self.dec.recv(&mut self.reader, &mut self.watch, None, 0)
    }

    /// Receives the next message, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), and [`RecvError::Timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Received<'_, T>, RecvError> {
        let deadline = Instant::now().checked_add(timeout);
        self.dec
            .recv(&mut self.reader, &mut self.watch, deadline, 0)
    }

    /// Receives the next message if there is one now.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`]; otherwise as [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Received<'_, T>, TryRecvError> {
        match self.dec.try_recv(&mut self.reader, &mut self.watch, 0) {
            Ok(Some(received)) => Ok(received),
            Ok(None) => Err(TryRecvError::Empty),
            Err(e) => Err(e.into()),
        }
    }

    /// Messages this subscriber lost to being lapped, in total.
    pub fn lost(&self) -> u64 {
        self.reader.lost()
    }

    /// The publisher's state.
    pub fn peer(&self) -> PeerState {
        self.reader.peer()
    }

    /// The topic name.
    pub fn name(&self) -> &str {
        self.watch.segment.name()
    }
}

impl RingTx for broadcast::Writer<ShmMemory> {
    type Grant<'a> = broadcast::Grant<'a, ShmMemory>;

    #[inline]
    fn try_claim(&mut self, len: usize) -> Result<Self::Grant<'_>, TryClaimError> {
        broadcast::Writer::try_claim(self, len)
    }

    fn wait_for_space(&mut self, len: usize, timeout: Duration) -> Result<(), ClaimError> {
        broadcast::Writer::wait_for_space(self, len, timeout)
    }

    #[inline]
    fn capacity(&self) -> u64 {
        broadcast::Writer::capacity(self)
    }

    #[inline]
    fn max_payload(&self) -> u64 {
        broadcast::Writer::max_payload(self)
    }
}

impl TxGrant for broadcast::Grant<'_, ShmMemory> {
    #[inline]
    fn set_record_kind(&mut self, kind: u32) {
        self.set_kind(kind);
    }

    #[inline]
    fn commit_len(self, len: usize) {
        self.commit(len);
    }
}

fn bcast_fail(e: broadcast::TryReadError) -> RxFail {
    match e {
        broadcast::TryReadError::Empty => RxFail::Empty,
        broadcast::TryReadError::PeerGone => RxFail::Gone,
        broadcast::TryReadError::Lapped { lost } => RxFail::Lapped(lost),
        broadcast::TryReadError::Corrupt(c) => RxFail::Corrupt(c),
    }
}

impl RingRx for broadcast::Reader<ShmMemory> {
    type Record<'a> = broadcast::Record<'a, ShmMemory>;

    #[inline]
    fn try_read(&mut self) -> Result<Self::Record<'_>, RxFail> {
        broadcast::Reader::try_read(self).map_err(bcast_fail)
    }

    #[inline]
    fn check_record(&mut self) -> Result<(), RxFail> {
        broadcast::Reader::check_record(self).map_err(bcast_fail)
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<(), RxFail> {
        broadcast::Reader::wait_timeout(self, timeout).map_err(|e| match e {
            broadcast::ReadError::Timeout => RxFail::Timeout,
            broadcast::ReadError::PeerGone => RxFail::Gone,
            broadcast::ReadError::Lapped { lost } => RxFail::Lapped(lost),
            broadcast::ReadError::Corrupt(c) => RxFail::Corrupt(c),
        })
    }
}

impl<'a> RxRecord<'a> for broadcast::Record<'a, ShmMemory> {
    fn position(&self) -> u64 {
        broadcast::Record::position(self)
    }

    fn view<A: ?Sized>(
        self,
        f: impl for<'b> FnOnce(&'b [u8]) -> Result<&'b A, rkyv::rancor::Error>,
    ) -> Result<View<'a, A>, rkyv::rancor::Error> {
        self.map(f).map(View::Broadcast)
    }
}
