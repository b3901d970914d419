//! Request/reply: a [`Server`] answers the requests of many [`Client`]s, each client getting
//! only its own replies.
//!
//! # How it is built
//!
//! - The service name is an MPSC ring ([`shmesh_ring::mpsc`]): every client is one of its
//!   writers, the server its consumer.
//! - Each client creates its own SPSC reply ring, named `<service>.reply.<client id>`; the server
//!   is its producer. Replies cannot reach another client, and a slow client only fills its
//!   own reply ring.
//! - Every record starts with a 16-byte envelope: the client id and the request id (both
//!   little-endian `u64`), then the rkyv archive (16-byte aligned). A reply carries the id of
//!   its request; [`Client::call`] matches them (a reply to a request whose call timed out is
//!   dropped when it arrives).
//! - A client announces itself with a hello record (its reply ring's name) when it connects and
//!   says goodbye when dropped. The server opens the reply ring on the hello.
//!
//! # Failures
//!
//! - The server dies: a client waiting for a reply gets [`CallError::PeerGone`] within about
//!   100 ms (it watches the server's liveness token while it waits); new calls fail the same way.
//! - A client dies: the server's [`Request::reply`] to it fails with [`ReplyError::PeerGone`];
//!   the server forgets the client and removes its reply ring (the client, being dead, could
//!   not). Requests it sent before dying are still delivered to the server. A client that dies
//!   with nothing outstanding is forgotten (its reply ring removed) when the server finds no
//!   request within a wait slice (100 ms at most) or another client connects.
//! - A client that dies between claiming space for a request and committing it does not wedge
//!   the service: the MPSC ring turns its claim into padding once its liveness token is gone.
//!
//! # Examples
//!
//! ```
//! use shmesh::service::{Client, Server};
//!
//! # let name = format!("doc-service-{}", std::process::id());
//! let mut server = Server::<u64, u64>::create(&name)?;
//! let mut client = Client::<u64, u64>::connect(&name)?;
//! let id = client.send_request(&20)?;
//! let request = server.recv()?;
//! let answer = request.to_native() + 1; // the request is read in place: a little-endian u64
//! request.reply(&answer)?;
//! let reply = client.recv_reply()?;
//! assert_eq!((reply.id(), reply.to_native()), (id, 21));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rkyv::{Archive, Archived};
use shmesh_ring::{
    mpsc, Consumer, PeerState, Producer, SchemaId, Segment, SegmentBuilder, SegmentKind, ShmMemory,
    WaitStrategy,
};
use thiserror::Error;

use super::ends::{self, Decoder, Encoder, RingRx, RxFail};
use super::{
    Access, ChannelError, Fail, Message, Patience, Received, RecvError, Schema, SendFailure, Watch,
    DEFAULT_CAPACITY, REJECTION_POLL,
};

/// Record kind of a client's hello: the archive is its reply ring's name (`String`).
const HELLO: u32 = 1;
/// Record kind of a request (or a reply).
const REQUEST: u32 = 2;
/// Record kind of a client's goodbye (no archive).
const BYE: u32 = 3;
/// Bytes of the envelope in front of every archive.
const ENVELOPE: usize = 16;

/// Default number of clients a service can have at once.
pub const DEFAULT_CLIENTS: usize = 32;
/// Default capacity of each client's reply ring.
pub const DEFAULT_REPLY_CAPACITY: u64 = 1 << 16;

fn envelope(client: u64, id: u64) -> [u8; ENVELOPE] {
    let mut e = [0u8; ENVELOPE];
    e[..8].copy_from_slice(&client.to_le_bytes());
    e[8..].copy_from_slice(&id.to_le_bytes());
    e
}

fn read_envelope(bytes: &[u8]) -> Option<(u64, u64)> {
    let client = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let id = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((client, id))
}

/// The schema a service's request ring records: both message types.
fn service_schema<Req: Archive, Resp: Archive>(version: u32) -> Schema {
    let (mut req, mut resp) = (Schema::of::<Req>(), Schema::of::<Resp>());
    req.version = version;
    resp.version = version;
    Schema {
        type_name: format!("service {} -> {}", req.description(), resp.description()),
        ..req
    }
}

/// Why a call did not produce a reply.
#[derive(Debug, Error)]
pub enum CallError {
    /// No reply within the timeout (the request may still be served; its late reply is
    /// dropped).
    #[error("timed out waiting for the reply")]
    Timeout,
    /// The server is gone: its process died or it was dropped.
    #[error(
        "service '{service}' is gone: the server process died or dropped the service; \
         reconnect when a server runs again"
    )]
    PeerGone {
        /// The service name.
        service: String,
    },
    /// The request could not be sent (too large, serialization, schema, corruption).
    #[error(transparent)]
    Send(#[from] SendFailure),
    /// The reply could not be read (invalid archive, corruption, schema).
    #[error(transparent)]
    Reply(RecvError),
}

/// Why a reply could not be sent.
#[derive(Debug, Error)]
pub enum ReplyError {
    /// The client is gone (its process died or it disconnected); it was forgotten.
    #[error("client {client:#x} is gone: its process died or it disconnected")]
    PeerGone {
        /// The client id.
        client: u64,
    },
    /// The reply ring has no room within the server's reply timeout (a client that stopped
    /// reading).
    #[error(
        "client {client:#x} does not read its replies: its reply ring stayed full for {waited:?}"
    )]
    Stuck {
        /// The client id.
        client: u64,
        /// How long the server waited.
        waited: Duration,
    },
    /// The reply could not be sent (too large, serialization, corruption).
    #[error(transparent)]
    Failed(#[from] SendFailure),
}

/// Why a service could not be created or joined.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The request ring or the reply ring could not be created, opened or attached (no such
    /// service, another message type, all client slots taken, permissions, space).
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The service exists but its server is gone, so the hello could not be delivered.
    #[error(
        "service '{service}' has no server: its server process died or dropped it; start the \
         server, then connect"
    )]
    ServerGone {
        /// The service name.
        service: String,
    },
    /// The hello could not be sent.
    #[error(transparent)]
    Hello(SendFailure),
}

impl From<shmesh_ring::AttachError> for ServiceError {
    fn from(e: shmesh_ring::AttachError) -> Self {
        ServiceError::Channel(e.into())
    }
}

/// Builds a [`Server`] or a [`Client`].
#[derive(Debug, Clone)]
pub struct ServiceBuilder<Req, Resp> {
    name: String,
    capacity: u64,
    reply_capacity: u64,
    clients: usize,
    version: u32,
    mode: Option<u32>,
    reply_timeout: Duration,
    wait: WaitStrategy,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req: Message, Resp: Message> ServiceBuilder<Req, Resp> {
    /// A builder for the service `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ServiceBuilder {
            name: name.into(),
            capacity: DEFAULT_CAPACITY,
            reply_capacity: DEFAULT_REPLY_CAPACITY,
            clients: DEFAULT_CLIENTS,
            version: 0,
            mode: None,
            reply_timeout: Duration::from_secs(5),
            wait: WaitStrategy::default(),
            _types: PhantomData,
        }
    }

    /// Server: capacity of the request ring ([`DEFAULT_CAPACITY`]).
    pub fn capacity(mut self, capacity: u64) -> Self {
        self.capacity = capacity;
        self
    }

    /// Client: capacity of its reply ring ([`DEFAULT_REPLY_CAPACITY`]).
    pub fn reply_capacity(mut self, capacity: u64) -> Self {
        self.reply_capacity = capacity;
        self
    }

    /// Server: how many clients may be connected at once ([`DEFAULT_CLIENTS`]).
    pub fn clients(mut self, n: usize) -> Self {
        self.clients = n;
        self
    }

    /// The user version of the message types, part of the fingerprint (0 by default).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Create: permission bits (0600 by default). Open: the widest mode accepted.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Server: how long a reply waits for room in a client's reply ring before
    /// [`ReplyError::Stuck`] (5 s by default).
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// How the ends wait ([`WaitStrategy::default`]).
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    fn schema(&self) -> Schema {
        service_schema::<Req, Resp>(self.version)
    }

    fn segment(&self, kind: SegmentKind, name: &str, schema: &Schema) -> SegmentBuilder {
        let b = SegmentBuilder::new(name)
            .kind(kind)
            .schema(schema.fingerprint())
            .schema_text(schema.description());
        match self.mode {
            Some(mode) => b.mode(mode),
            None => b,
        }
    }

    /// Creates the service and becomes its server.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Segment`] (name in use by a live server, capacity, permissions, space),
    /// [`ChannelError::Attach`].
    pub fn serve(self) -> Result<Server<Req, Resp>, ServiceError> {
        let schema = self.schema();
        let segment = self
            .segment(SegmentKind::MpscRing, &self.name, &schema)
            .capacity(self.capacity)
            .endpoints(self.clients)
            .create()
            .map_err(ChannelError::from_segment)?;
        let mut requests = segment.mpsc_consumer()?;
        requests.set_wait_strategy(self.wait);
        let id = SchemaId {
            fingerprint: schema.fingerprint(),
            text: schema.description(),
        };
        Ok(Server {
            watch: Watch {
                seen: segment.schema_rejections(),
                segment,
                ours: id,
            },
            requests,
            dec: Decoder::new(Access::validated().0),
            hello: Decoder::new(Access::validated().0),
            replies: Replies {
                clients: HashMap::new(),
                orphans: Vec::new(),
                enc: Encoder::new(),
                schema: Schema::of::<Resp>(),
                version: self.version,
                mode: self.mode,
                timeout: self.reply_timeout,
                wait: self.wait,
            },
            _types: PhantomData,
        })
    }

    /// Connects to the service as a new client: joins its request ring and creates this
    /// client's reply ring.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Segment`] (no such service), [`ChannelError::SchemaMismatch`] (another
    /// request or reply type), [`ChannelError::Attach`] (all client slots taken);
    /// [`ServiceError::ServerGone`] when the server's process died or it dropped the service.
    pub fn connect(self) -> Result<Client<Req, Resp>, ServiceError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let schema = self.schema();
        let segment = self
            .segment(SegmentKind::MpscRing, &self.name, &schema)
            .open()
            .map_err(ChannelError::from_segment)?;
        let mut requests = segment.mpsc_writer()?;
        requests.set_wait_strategy(self.wait);
        // A dead server's request ring still takes a hello while it has room: ask its token.
        if requests.peer() == PeerState::Gone {
            return Err(ServiceError::ServerGone { service: self.name });
        }
        let client = (u64::from(std::process::id()) << 32) | NEXT.fetch_add(1, Ordering::Relaxed);
        let reply_name = format!("{}.reply.{client:x}", self.name);
        let mut reply_schema = Schema::of::<Resp>();
        reply_schema.version = self.version;
        let reply_segment = self
            .segment(SegmentKind::SpscRing, &reply_name, &reply_schema)
            .capacity(self.reply_capacity)
            .create()
            .map_err(ChannelError::from_segment)?;
        let mut replies = reply_segment.consumer()?;
        replies.set_wait_strategy(self.wait);
        let id = SchemaId {
            fingerprint: schema.fingerprint(),
            text: schema.description(),
        };
        let reply_id = SchemaId {
            fingerprint: reply_schema.fingerprint(),
            text: reply_schema.description(),
        };
        let mut c = Client {
            watch: Watch {
                seen: segment.schema_rejections(),
                segment,
                ours: id,
            },
            reply_watch: Watch {
                seen: reply_segment.schema_rejections(),
                segment: reply_segment,
                ours: reply_id,
            },
            service: self.name,
            requests,
            replies,
            enc: Encoder::new(),
            dec: Decoder::new(Access::validated().0),
            client,
            next_id: 1,
        };
        // Hello: the server opens our reply ring from this.
        let mut hello = Encoder::<String>::new();
        hello
            .send(
                &mut c.requests,
                &mut c.watch,
                &reply_name,
                Patience::Forever,
                &envelope(client, 0),
                HELLO,
            )
            .map_err(|f| match f {
                Fail::Failed(cause) => ServiceError::Hello(cause),
                Fail::Disconnected | Fail::Full | Fail::Timeout => ServiceError::ServerGone {
                    service: c.service.clone(),
                },
            })?;
        Ok(c)
    }
}

/// One connected client, as the server knows it.
struct Conn {
    producer: Producer<ShmMemory>,
    watch: Watch,
}

/// The server's side of the reply rings.
struct Replies<Resp> {
    clients: HashMap<u64, Conn>,
    /// Reply rings of forgotten clients that still looked in use when the server removed
    /// them: retried on each [`sweep`](Self::sweep). (A child process that this process is
    /// spawning holds its open files, and so the rings' liveness locks, until it execs.)
    orphans: Vec<String>,
    enc: Encoder<Resp>,
    schema: Schema,
    version: u32,
    mode: Option<u32>,
    timeout: Duration,
    wait: WaitStrategy,
}

impl<Resp: Message> Replies<Resp> {
    /// Opens the reply ring `name` of `client`. A client whose ring cannot be opened is not
    /// served (its requests get no reply; it sees the server alive and times out).
    fn connect(&mut self, client: u64, name: &str) {
        let mut schema = self.schema.clone();
        schema.version = self.version;
        let mut b = SegmentBuilder::new(name)
            .schema(schema.fingerprint())
            .schema_text(schema.description());
        if let Some(mode) = self.mode {
            b = b.mode(mode);
        }
        let Ok(segment) = b.open() else { return };
        let Ok(mut producer) = segment.producer() else {
            return;
        };
        producer.set_wait_strategy(self.wait);
        let watch = Watch {
            seen: segment.schema_rejections(),
            segment,
            ours: SchemaId {
                fingerprint: schema.fingerprint(),
                text: schema.description(),
            },
        };
        self.clients.insert(client, Conn { producer, watch });
    }

    /// Forgets every client whose reply ring's reader is gone (its process died, or it left
    /// without a goodbye), removing their reply rings. One liveness check per client.
    fn sweep(&mut self) {
        let gone: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, conn)| conn.producer.peer() == PeerState::Gone)
            .map(|(&client, _)| client)
            .collect();
        for client in gone {
            self.forget(client);
        }
        self.orphans
            .retain(|name| matches!(Segment::remove_unused(name), Ok(false)));
    }

    /// Forgets `client` and removes its reply ring if nobody uses it any more.
    fn forget(&mut self, client: u64) {
        if let Some(conn) = self.clients.remove(&client) {
            let name = conn.watch.segment.name().to_owned();
            drop(conn);
            if let Ok(false) = Segment::remove_unused(&name) {
                self.orphans.push(name);
            }
        }
    }

    fn reply(&mut self, client: u64, id: u64, value: &Resp) -> Result<(), ReplyError> {
        let Some(conn) = self.clients.get_mut(&client) else {
            return Err(ReplyError::PeerGone { client });
        };
        if conn.producer.peer() == PeerState::Gone {
            self.forget(client);
            return Err(ReplyError::PeerGone { client });
        }
        let patience = Patience::within(self.timeout);
        match self.enc.send(
            &mut conn.producer,
            &mut conn.watch,
            value,
            patience,
            &envelope(client, id),
            REQUEST,
        ) {
            Ok(()) => Ok(()),
            Err(Fail::Disconnected) => {
                self.forget(client);
                Err(ReplyError::PeerGone { client })
            }
            Err(Fail::Full | Fail::Timeout) => {
                if conn.producer.peer() == PeerState::Gone {
                    self.forget(client);
                    return Err(ReplyError::PeerGone { client });
                }
                Err(ReplyError::Stuck {
                    client,
                    waited: self.timeout,
                })
            }
            Err(Fail::Failed(f)) => Err(ReplyError::Failed(f)),
        }
    }
}

/// The serving end of a service: receives requests from every client, replies to each.
/// Dropping it removes the service name.
pub struct Server<Req, Resp> {
    requests: mpsc::Consumer<ShmMemory>,
    watch: Watch,
    dec: Decoder<Req>,
    hello: Decoder<String>,
    replies: Replies<Resp>,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> fmt::Debug for Server<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("service", &self.watch.segment.name())
            .field("clients", &self.replies.clients.len())
            .finish()
    }
}

/// A request received by a [`Server`]: derefs to `&Archived<Req>`; answer it with
/// [`reply`](Self::reply). The request's record is released when this is dropped or replied.
pub struct Request<'a, Req: Archive, Resp> {
    message: Received<'a, Req>,
    client: u64,
    id: u64,
    replies: &'a mut Replies<Resp>,
}

impl<Req: Archive, Resp> Deref for Request<'_, Req, Resp> {
    type Target = Archived<Req>;

    fn deref(&self) -> &Archived<Req> {
        &self.message
    }
}

impl<Req: Archive, Resp> fmt::Debug for Request<'_, Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("client", &self.client)
            .field("id", &self.id)
            .finish()
    }
}

impl<Req: Archive, Resp: Message> Request<'_, Req, Resp> {
    /// The client that sent it.
    pub fn client(&self) -> u64 {
        self.client
    }

    /// Its request id (unique per client).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The archived request bytes.
    pub fn bytes(&self) -> &[u8] {
        self.message.bytes()
    }

    /// Replies to the client that sent this request.
    ///
    /// # Errors
    ///
    /// [`ReplyError::PeerGone`] when the client is gone (it is forgotten and its reply ring
    /// removed), `Stuck` when it does not read its replies, `Failed` (too large, ...).
    pub fn reply(self, value: &Resp) -> Result<(), ReplyError> {
        let Request {
            message,
            client,
            id,
            replies,
        } = self;
        drop(message);
        replies.reply(client, id, value)
    }
}

/// What one record of the request ring was.
enum Incoming {
    Hello(u64, String),
    Bye(u64),
    Request,
}

impl<Req: Message, Resp: Message> Server<Req, Resp> {
    /// Creates the service `name` with the defaults and becomes its server.
    ///
    /// # Errors
    ///
    /// As [`ServiceBuilder::serve`].
    pub fn create(name: impl Into<String>) -> Result<Self, ServiceError> {
        ServiceBuilder::new(name).serve()
    }

    /// A builder for the service `name`.
    pub fn builder(name: impl Into<String>) -> ServiceBuilder<Req, Resp> {
        ServiceBuilder::new(name)
    }

    /// Receives the next request, waiting for one (clients come and go meanwhile).
    ///
    /// # Errors
    ///
    /// [`RecvError::Invalid`] (a client sent bytes that are not a `Req`; dropped),
    /// `SchemaMismatch` (a client with other types was refused), `Corrupt`. Never
    /// `Disconnected`: a server outlives its clients.
    pub fn recv(&mut self) -> Result<Request<'_, Req, Resp>, RecvError> {
        self.recv_until(None)
    }

    /// Receives the next request, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), and [`RecvError::Timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Request<'_, Req, Resp>, RecvError> {
        self.recv_until(Instant::now().checked_add(timeout))
    }

    fn recv_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Request<'_, Req, Resp>, RecvError> {
        loop {
            match RingRx::check_record(&mut self.requests) {
                Ok(()) => {}
                Err(RxFail::Empty) | Err(RxFail::Gone) => self.wait(deadline)?,
                Err(RxFail::Corrupt(c)) => return Err(RecvError::Corrupt(c)),
                Err(RxFail::Timeout) => return Err(RecvError::Timeout),
                Err(RxFail::Lapped(_)) => unreachable!("MPSC rings do not lap"),
            }
            match self.classify()? {
                Some(Incoming::Hello(client, name)) => {
                    // A busy server never idles: dead clients are also forgotten as new ones
                    // come, so their number stays bounded.
                    self.replies.sweep();
                    self.replies.connect(client, &name)
                }
                Some(Incoming::Bye(client)) => self.replies.forget(client),
                Some(Incoming::Request) => break,
                None => {}
            }
        }
        let record = RingRx::try_read(&mut self.requests).map_err(|e| match e {
            RxFail::Corrupt(c) => RecvError::Corrupt(c),
            _ => RecvError::Corrupt(shmesh_ring::Corruption {
                what: "a request record",
                found: 0,
                expected: "to still be there after it was seen".into(),
            }),
        })?;
        let (client, id) = read_envelope(&record).unwrap_or((0, 0));
        let message = self.dec.view_record(record, ENVELOPE)?;
        Ok(Request {
            message,
            client,
            id,
            replies: &mut self.replies,
        })
    }

    /// Looks at the next record: a request is left in place for `recv_until`; hellos and
    /// goodbyes are consumed and returned; anything else is dropped (`None`).
    fn classify(&mut self) -> Result<Option<Incoming>, RecvError> {
        let record = match RingRx::try_read(&mut self.requests) {
            Ok(record) => record,
            Err(RxFail::Corrupt(c)) => return Err(RecvError::Corrupt(c)),
            Err(_) => return Ok(None),
        };
        let kind = record.kind();
        if kind == REQUEST {
            record.keep();
            return Ok(Some(Incoming::Request));
        }
        let Some((client, _)) = read_envelope(&record) else {
            return Ok(None);
        };
        match kind {
            HELLO => {
                let name = match self.hello.view_record(record, ENVELOPE) {
                    Ok(name) => name.as_str().to_owned(),
                    Err(_) => return Ok(None),
                };
                let expected = format!("{}.reply.{client:x}", self.watch.segment.name());
                Ok((name == expected).then_some(Incoming::Hello(client, name)))
            }
            BYE => Ok(Some(Incoming::Bye(client))),
            _ => Ok(None),
        }
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<(), RecvError> {
        let slice = match deadline {
            None => REJECTION_POLL,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(REJECTION_POLL),
        };
        match self.requests.wait_for_record(slice) {
            Ok(()) => Ok(()),
            Err(shmesh_ring::ReadError::Timeout) => {
                // Idle: a good time to forget clients that died with nothing outstanding.
                self.replies.sweep();
                if let Some(mismatch) = self.watch.check() {
                    return Err(RecvError::SchemaMismatch(mismatch));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(RecvError::Timeout);
                }
                Ok(())
            }
            Err(shmesh_ring::ReadError::PeerGone) => Ok(()),
            Err(shmesh_ring::ReadError::Corrupt(c)) => Err(RecvError::Corrupt(c)),
        }
    }

    /// How many clients are connected now.
    pub fn clients(&self) -> usize {
        self.replies.clients.len()
    }

    /// The service name.
    pub fn name(&self) -> &str {
        self.watch.segment.name()
    }
}

/// A client of a service. Dropping it says goodbye and removes its reply ring.
pub struct Client<Req, Resp> {
    service: String,
    requests: mpsc::Writer<ShmMemory>,
    watch: Watch,
    replies: Consumer<ShmMemory>,
    reply_watch: Watch,
    enc: Encoder<Req>,
    dec: Decoder<Resp>,
    client: u64,
    next_id: u64,
}

impl<Req, Resp> fmt::Debug for Client<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.service)
            .field("client", &self.client)
            .finish()
    }
}

/// A reply received by a [`Client`]: derefs to `&Archived<Resp>`.
pub struct Reply<'a, Resp: Archive> {
    message: Received<'a, Resp>,
    id: u64,
}

impl<Resp: Archive> Reply<'_, Resp> {
    /// The id of the request this answers.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Deserializes the reply into an owned `Resp`.
    ///
    /// # Errors
    ///
    /// When a `Deserialize` impl of the type fails.
    pub fn deserialize(&self) -> Result<Resp, rkyv::rancor::Error>
    where
        Archived<Resp>:
            rkyv::Deserialize<Resp, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    {
        self.message.deserialize()
    }
}

impl<Resp: Archive> Deref for Reply<'_, Resp> {
    type Target = Archived<Resp>;

    fn deref(&self) -> &Archived<Resp> {
        &self.message
    }
}

impl<Resp: Archive> fmt::Debug for Reply<'_, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply").field("id", &self.id).finish()
    }
}

impl<Req: Message, Resp: Message> Client<Req, Resp> {
    /// Connects to the service `name` with the defaults.
    ///
    /// # Errors
    ///
    /// As [`ServiceBuilder::connect`].
    pub fn connect(name: impl Into<String>) -> Result<Self, ServiceError> {
        ServiceBuilder::new(name).connect()
    }

    /// A builder for a client of the service `name`.
    pub fn builder(name: impl Into<String>) -> ServiceBuilder<Req, Resp> {
        ServiceBuilder::new(name)
    }

    /// This client's id, as the server sees it ([`Request::client`]).
    pub fn id(&self) -> u64 {
        self.client
    }

    fn gone(&self) -> CallError {
        CallError::PeerGone {
            service: self.service.clone(),
        }
    }

    /// Sends a request without waiting for its reply (pipelining); returns its id, which the
    /// reply carries ([`Reply::id`]).
    ///
    /// # Errors
    ///
    /// [`CallError::PeerGone`] (no server), `Send` (too large, ...).
    pub fn send_request(&mut self, request: &Req) -> Result<u64, CallError> {
        let id = self.next_id;
        match self.enc.send(
            &mut self.requests,
            &mut self.watch,
            request,
            Patience::Forever,
            &envelope(self.client, id),
            REQUEST,
        ) {
            Ok(()) => {
                self.next_id += 1;
                Ok(id)
            }
            Err(Fail::Disconnected) => Err(self.gone()),
            Err(Fail::Failed(f)) => Err(CallError::Send(f)),
            Err(Fail::Full | Fail::Timeout) => Err(CallError::Timeout),
        }
    }

    /// Receives the next reply, waiting for it.
    ///
    /// # Errors
    ///
    /// [`CallError::PeerGone`] when the server is gone, `Reply` (invalid, corrupt).
    pub fn recv_reply(&mut self) -> Result<Reply<'_, Resp>, CallError> {
        self.recv_reply_until(None, None)
    }

    /// Sends `request` and waits for its reply.
    ///
    /// # Errors
    ///
    /// As [`send_request`](Self::send_request) and [`recv_reply`](Self::recv_reply).
    pub fn call(&mut self, request: &Req) -> Result<Reply<'_, Resp>, CallError> {
        let id = self.send_request(request)?;
        self.recv_reply_until(Some(id), None)
    }

    /// Sends `request` and waits at most `timeout` for its reply.
    ///
    /// # Errors
    ///
    /// [`CallError::Timeout`]; otherwise as [`call`](Self::call).
    pub fn call_timeout(
        &mut self,
        request: &Req,
        timeout: Duration,
    ) -> Result<Reply<'_, Resp>, CallError> {
        let deadline = Instant::now().checked_add(timeout);
        let id = self.send_request(request)?;
        self.recv_reply_until(Some(id), deadline)
    }

    /// The next reply (to request `want`, dropping older ones, when given).
    fn recv_reply_until(
        &mut self,
        want: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<Reply<'_, Resp>, CallError> {
        loop {
            match RingRx::check_record(&mut self.replies) {
                Ok(()) => {}
                Err(RxFail::Empty) => self.wait_reply(deadline)?,
                Err(RxFail::Gone) => return Err(self.gone()),
                Err(RxFail::Corrupt(c)) => return Err(CallError::Reply(RecvError::Corrupt(c))),
                Err(RxFail::Timeout | RxFail::Lapped(_)) => return Err(CallError::Timeout),
            }
            // Peek at the id; drop replies to abandoned calls.
            let record = RingRx::try_read(&mut self.replies).map_err(|_| CallError::PeerGone {
                service: self.service.clone(),
            })?;
            let (_, id) = read_envelope(&record).unwrap_or((0, 0));
            if want.is_some_and(|w| id < w) {
                continue;
            }
            record.keep();
            break;
        }
        let record = RingRx::try_read(&mut self.replies).map_err(|_| CallError::PeerGone {
            service: self.service.clone(),
        })?;
        let (_, id) = read_envelope(&record).unwrap_or((0, 0));
        let message = self
            .dec
            .view_record(record, ENVELOPE)
            .map_err(CallError::Reply)?;
        Ok(Reply { message, id })
    }

    /// Waits one slice for a reply; the server's death ends it.
    fn wait_reply(&mut self, deadline: Option<Instant>) -> Result<(), CallError> {
        loop {
            let slice = match deadline {
                None => REJECTION_POLL,
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(REJECTION_POLL),
            };
            match ends::wait(
                &mut self.replies,
                &mut self.reply_watch,
                Some(Instant::now() + slice),
            ) {
                Ok(()) => return Ok(()),
                Err(RecvError::Timeout) => {
                    if self.requests.peer() == PeerState::Gone {
                        return Err(self.gone());
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(CallError::Timeout);
                    }
                }
                Err(RecvError::Disconnected) => return Err(self.gone()),
                Err(e) => return Err(CallError::Reply(e)),
            }
        }
    }
}

impl<Req, Resp> Drop for Client<Req, Resp> {
    fn drop(&mut self) {
        // Goodbye: the server forgets us. Best effort, never waits: a server that does not
        // read is told by our liveness token instead.
        if let Ok(mut grant) = self.requests.try_claim(ENVELOPE) {
            grant.copy_from_slice(&envelope(self.client, 0));
            grant.set_kind(BYE);
            grant.commit(ENVELOPE);
        }
    }
}
