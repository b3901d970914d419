//! The bridge: connections to peer bridges and the streams mirrored over them, driven by
//! [`Bridge::poll`].
//!
//! # Protocol
//!
//! 1. A connection comes up (TCP, then TLS 1.3 with mutual authentication and the allowlist).
//!    Each side sends `Hello`: its protocol version, its name, and the streams it imports
//!    from the other (the importer numbers them).
//! 2. For each import asked for, the exporter answers `Offer` (the segment's kind, capacity,
//!    schema fingerprint, shape) or `Refuse` (no such export, not for this peer, already
//!    mirrored elsewhere). The importer opens or creates the local copy with that shape; a
//!    copy that exists with another shape or schema is refused on both sides, and the other
//!    streams go on. It answers `Ready` with its delivery cursor ([`crate::state`]).
//! 3. Rings: the exporter reads records with held reads (they stay in its ring until
//!    acknowledged) and sends `Data` frames; each carries the cursor before and after it (the
//!    record's span in the exporter's ring). The importer accepts only the frame that starts
//!    at its cursor, writes batches into the local ring, records its intent, publishes, and
//!    acknowledges. A frame from the past is a duplicate (dropped, re-acknowledged); one from
//!    the future means a frame was lost (it asks `Resend`). The exporter keeps at most
//!    `window` bytes unacknowledged, resends after `resend_timeout` without progress, and on
//!    reconnect resumes from the importer's cursor: nothing lost, nothing twice.
//! 4. Regions: the exporter sends the chunks changed since the importer's version
//!    (`RegionPart` frames, then `RegionEnd`), or all of it when the history does not reach
//!    back; the importer applies a version only when all of it arrived, in one write scope, so
//!    its copy only ever shows whole versions, in increasing order.
//! 5. Both sides ping; a connection silent for `liveness_timeout` is dropped and dialed again.
//! 6. SPSC rings: the ends' lifecycle (`Lifecycle` frames, see [`FrameType::Lifecycle`]). The
//!    exporter watches the ring's writer, the importer the copy's reader (their liveness
//!    tokens, every 50 ms), and each tells the other, so that a program on either host sees
//!    its peer come and go as on a local ring (a rank of `shmesh::world` sees `PeerGone`):
//!    - *Writer gone* (detached or died): once every record it committed was sent and
//!      acknowledged, the exporter reports it gone, at the cursor after its last record. The
//!      importer, once everything before that is in the copy, marks it in the delivery state
//!      and drops its producer of the copy: local readers read everything, then get
//!      `PeerGone`. A new writer on the ring (a takeover) is reported before its first record
//!      goes out; the importer attaches to the copy again (checking that nothing else wrote
//!      it meanwhile) and mirroring goes on.
//!    - *Reader gone*: the importer reports it; the exporter rewinds its held reads (those
//!      records stay in the ring) and drops its consumer, so the local writer's claim on a
//!      full ring returns `PeerGone`. A reader attaching to the copy is reported; the
//!      exporter attaches again and offers the stream again, so the importer's `Ready` says
//!      where delivery stands: what the importer delivered meanwhile is not sent twice, what
//!      it had queued is sent again.
//!    - Reports are numbered and repeated until the peer echoes them; a side applies only a
//!      report numbered above the last one it applied on the connection, and reports its end
//!      afresh after every `Ready`. Nothing is passed on while the link is down (the writer
//!      does not see its far reader gone, nor the reader its far writer, until it is back).
//!    - Restarts: a restarted importer finds the writer-gone mark in the copy's delivery
//!      state ([`crate::state`]) and stays detached until the exporter reports a writer. A
//!      restarted exporter attaches to the ring, as at any start (its writer sees a reader
//!      again), until the importer reports the copy's reader still gone, moments later. An
//!      importing bridge that dies drops the copy's producer with it: the copy's readers see
//!      their writer gone until it is back.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmesh_ring::broadcast::{
    Reader as BroadcastReader, Start, TryReadError as BroadcastReadError, Writer as BroadcastWriter,
};
use shmesh_ring::region::{ChangesError, Reader as RegionReader, Writer as RegionWriter};
use shmesh_ring::{
    Consumer, PeerState, Producer, Segment, SegmentBuilder, SegmentError, SegmentKind, ShmMemory,
    ShmRegion, TryReadError,
};

use crate::config::Config;
use crate::link::{Link, LinkError};
use crate::state::{Intent, StateStore};
use crate::tcp::{Security, StreamLink};
use crate::tls::TlsIdentity;
use crate::wire::{self, FrameType, LifecyclePayload, RingEnd};

/// How long an exporter waits for an acknowledgement before sending again what is
/// unacknowledged; doubled after each resend without progress (up to 32 times as long), so
/// a stalled link (a partition, a squeezed bandwidth) is not flooded with copies.
const RESEND_TIMEOUT: Duration = Duration::from_millis(200);

fn resend_timeout(backoff: u32) -> Duration {
    RESEND_TIMEOUT * (1 << backoff.min(5))
}
/// Bytes of region data per `RegionPart` frame.
const REGION_PART: usize = 1 << 20;
/// How often a missing export segment is looked for again.
const REOPEN_INTERVAL: Duration = Duration::from_millis(100);
/// Set in the stream id of frames an importer sends (`Ready`, `Ack`, `Resend`, its
/// `Refuse`): stream ids are numbered by each importer, so both directions may use the same
/// number.
const FROM_IMPORTER: u32 = 1 << 31;
/// `ExportStream::far_version` of a stream not offered yet (its segment is not there yet).
const NOT_OFFERED: u64 = u64::MAX;
/// Control frames queued (answers the peer has not read) before its connection is dropped.
const MAX_CONTROL_QUEUE: usize = 4096;
/// Control frames queued before acknowledgements and pongs wait for the link.
const CONTROL_BACKLOG: usize = 64;
/// Largest region a bridge mirrors (a version is buffered whole on the importing side).
const MAX_REGION: u64 = 1 << 30;
/// How often the ends of a mirrored SPSC ring are looked at: the exported ring's writer, the
/// copy's reader (a system call each, on their liveness token). Bounds how late a death is
/// passed on, with the link's latency.
const LIFECYCLE_CHECK: Duration = Duration::from_millis(50);

/// Why a bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The TLS identity cannot be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Something the bridge did or saw, for its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Listening for peers.
    Listening(SocketAddr),
    /// A connection to a peer is up (authenticated, hello exchanged).
    Connected {
        /// The peer's name.
        peer: String,
    },
    /// A connection went down.
    Disconnected {
        /// The peer's name, when it was known.
        peer: Option<String>,
        /// Why.
        reason: String,
    },
    /// A stream started (or resumed) mirroring.
    StreamUp {
        /// The peer.
        peer: String,
        /// The segment's name on the exporting side.
        name: String,
        /// `"export"` or `"import"`.
        direction: &'static str,
        /// Where it resumed (a ring position or region version), if it resumed.
        cursor: Option<u64>,
    },
    /// A stream was refused (by this bridge or by the peer); the other streams go on.
    StreamRefused {
        /// The peer.
        peer: String,
        /// The segment's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A frame was rejected (bad checksum, out of sequence, from the past).
    FrameRejected {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// An end of a mirrored SPSC ring went away or came back, and the bridges passed it on.
    /// The exported ring's writer gone: once every record it committed is in the copy, the
    /// importer detaches from the copy, whose readers read everything and then get
    /// `PeerGone`. The copy's reader gone: the exporter leaves the records it holds in the
    /// exported ring and detaches from it, so its writer gets `PeerGone` when the ring is
    /// full. A new writer or reader: the bridge attaches again and mirroring goes on.
    Lifecycle {
        /// The peer.
        peer: String,
        /// The segment's name on the exporting side.
        name: String,
        /// `"export"` or `"import"`: which side of the stream this bridge is.
        direction: &'static str,
        /// Which end: the exported ring's writer or the copy's reader.
        end: RingEnd,
        /// Whether it went (else it came back).
        gone: bool,
        /// The stream cursor: for a writer gone, where its last record ends; for a reader
        /// gone on the exporting side, where the records left in the ring start.
        cursor: u64,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Listening(addr) => write!(f, "listening on {addr}"),
            Event::Connected { peer } => write!(f, "connected to {peer}"),
            Event::Disconnected { peer, reason } => write!(
                f,
                "disconnected from {}: {reason}",
                peer.as_deref().unwrap_or("an unidentified peer")
            ),
            Event::StreamUp {
                peer,
                name,
                direction,
                cursor,
            } => {
                write!(f, "{direction} '{name}' with {peer}: mirroring")?;
                match cursor {
                    Some(c) => write!(f, " (resumed at {c})"),
                    None => write!(f, " (from the start)"),
                }
            }
            Event::StreamRefused { peer, name, reason } => {
                write!(f, "stream '{name}' with {peer} refused: {reason}")
            }
            Event::FrameRejected { peer, reason } => {
                write!(f, "frame from {peer} rejected: {reason}")
            }
            Event::Lifecycle {
                peer,
                name,
                direction,
                end,
                gone,
                cursor,
            } => {
                write!(f, "{direction} '{name}' with {peer}: ")?;
                match (*direction == "export", end, gone) {
                    (true, RingEnd::Writer, true) => write!(
                        f,
                        "the writer is gone and everything it wrote was delivered (through \
                         {cursor}): the importer detaches from its copy"
                    ),
                    (false, RingEnd::Writer, true) => write!(
                        f,
                        "the writer is gone: detached from the copy after delivering through \
                         {cursor}; its readers get PeerGone once they read everything"
                    ),
                    (true, RingEnd::Writer, false) => {
                        write!(
                            f,
                            "a writer is back (at {cursor}): the importer attaches again"
                        )
                    }
                    (false, RingEnd::Writer, false) => write!(
                        f,
                        "a writer is back: attached to the copy again (at {cursor})"
                    ),
                    (true, RingEnd::Reader, true) => write!(
                        f,
                        "the copy's reader is gone: detached from the ring, leaving the records \
                         from {cursor} on in it; its writer gets PeerGone when the ring is full"
                    ),
                    (false, RingEnd::Reader, true) => write!(
                        f,
                        "the copy's reader is gone (delivered through {cursor}): the exporter \
                         detaches from the ring"
                    ),
                    (true, RingEnd::Reader, false) => write!(
                        f,
                        "a reader of the copy is back: attaching to the ring again"
                    ),
                    (false, RingEnd::Reader, false) => write!(
                        f,
                        "a reader of the copy is back (at {cursor}): the exporter attaches again"
                    ),
                }
            }
        }
    }
}

/// Counters of what the bridge did, for tests and tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ring records sent (first sends and resends).
    pub records_sent: u64,
    /// Ring records written into local copies.
    pub records_delivered: u64,
    /// Region versions published into local copies.
    pub versions_delivered: u64,
    /// Frames dropped as duplicates (from the past).
    pub duplicates: u64,
    /// Frames rejected as damaged (checksum, framing).
    pub damaged: u64,
    /// Resend requests sent or timeouts that rewound an export.
    pub resends: u64,
    /// Connections made (both directions).
    pub connections: u64,
}

/// A local segment offered to peers.
struct ExportSource {
    name: String,
    /// Which peers it is offered to.
    config: crate::config::ExportConfig,
    segment: Option<Segment>,
    next_open: Instant,
    /// SPSC rings: the consumer, with held reads. Held while the copy has a reader (or had
    /// none yet), across dropped links, so the local writer never sees its reader gone while a
    /// link is down; dropped when the importer reports the copy's reader gone.
    consumer: Option<Consumer<ShmMemory>>,
    /// SPSC rings: the importer reported the copy's reader gone; the consumer is dropped until
    /// it reports a reader again.
    reader_gone: bool,
    /// SPSC rings: when to try attaching again (a local reader may hold the ring).
    next_attach: Instant,
    /// Which peer streams this SPSC ring now (one at a time).
    streaming_to: Option<(String, u64)>,
    /// Broadcast rings: one reader per peer, kept across connections.
    feeds: Vec<BroadcastFeed>,
}

/// What a broadcast ring sends one peer: a reader of its own (under `Block` it holds the
/// writer back when the peer is slow, as any reader does), and the records read but not yet
/// acknowledged, kept for resending. Bounded by the window: the reader stops reading there.
struct BroadcastFeed {
    peer: String,
    reader: BroadcastReader<ShmMemory>,
    /// (record number, kind, bytes), oldest first.
    unacked: VecDeque<(u64, u32, Vec<u8>)>,
    unacked_bytes: u64,
    /// Index in `unacked` of the next record to send.
    send_next: usize,
    /// Records the writer overwrote before the bridge read them (`Lap` rings).
    lapped: u64,
    /// Records numbered below this were delivered already (a restarted bridge reads them
    /// again from the history): skip them.
    skip_below: u64,
}

impl BroadcastFeed {
    /// The number of the first record not yet acknowledged.
    fn start(&self) -> u64 {
        self.unacked
            .front()
            .map_or(self.reader.record_number().max(self.skip_below), |r| r.0)
    }

    /// Forgets the records the peer has, below `cursor`.
    fn acknowledge(&mut self, cursor: u64) {
        while let Some((number, _, bytes)) = self.unacked.front() {
            if *number >= cursor {
                break;
            }
            self.unacked_bytes -= bytes.len() as u64;
            self.unacked.pop_front();
            self.send_next = self.send_next.saturating_sub(1);
        }
        self.skip_below = self.skip_below.max(cursor);
    }
}

/// A region version being received: (version, base, parts as (offset, bytes)).
type PendingVersion = (u64, u64, Vec<(u64, Vec<u8>)>);

/// A lifecycle report a bridge made on a stream (see [`FrameType::Lifecycle`]): repeated
/// until the peer confirms it.
#[derive(Debug, Clone, Copy)]
struct Report {
    number: u64,
    attached: bool,
    cursor: u64,
    confirmed: bool,
    sent: Instant,
}

/// A ring record accepted by an importer, not yet written: the frame it came in (kept whole,
/// so the record is copied once, from the frame into the ring).
struct Queued {
    /// The cursor after it.
    to: u64,
    kind: u32,
    frame: Vec<u8>,
    /// Where the record's bytes lie in `frame`.
    bytes: std::ops::Range<usize>,
}

impl Queued {
    fn bytes(&self) -> &[u8] {
        &self.frame[self.bytes.clone()]
    }
}

/// A segment mirrored from a peer.
struct ImportSink {
    peer: String,
    name: String,
    local: String,
    segment: Option<Segment>,
    producer: Option<Producer<ShmMemory>>,
    broadcast: Option<BroadcastWriter<ShmMemory>>,
    region: Option<RegionWriter<ShmRegion>>,
    state: Option<StateStore>,
    /// Records or version delivered through (None: nothing yet).
    cursor: Option<u64>,
    /// Ring records accepted, not yet written: (cursor after, kind, bytes).
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// A region version being received: (version, base, parts).
    parts: Option<PendingVersion>,
    parts_bytes: usize,
    /// Where the exporter said the stream starts, before anything was delivered.
    start: Option<u64>,
    /// The cursor a `Resend` was asked from (not again until something arrives from there).
    asked_resend: Option<u64>,
    /// An acknowledgement to send.
    ack_due: bool,
    /// The stream was refused (until the next connection).
    refused: bool,
    /// The connection that made it ready; frames from any other are ignored.
    owner: Option<u64>,
    ready: bool,
    /// SPSC: the last report of the copy's reader this bridge made on the connection.
    reader_report: Option<Report>,
    /// SPSC: the number of the last writer report applied on the connection.
    writer_seen: u64,
    /// SPSC: the exporter reported the writer gone, its records ending here: detach from the
    /// copy once everything before is in it.
    writer_gone_at: Option<u64>,
    /// SPSC: the producer was dropped because the writer is gone (kept in the delivery state
    /// across restarts); attached again when the exporter reports a writer.
    writer_detached: bool,
    /// SPSC: the copy's reader as last seen.
    reader: PeerState,
    /// SPSC: when to look at the copy's reader again.
    next_check: Instant,
}

/// An export being streamed on one connection.
struct ExportStream {
    stream: u32,
    source: usize,
    kind: SegmentKind,
    ready: bool,
    /// Ring: ends of the records sent and not yet acknowledged, oldest first.
    sent_ends: VecDeque<u64>,
    last_progress: Instant,
    /// Resends since the last progress (see [`RESEND_TIMEOUT`]).
    backoff: u32,
    /// Why the stream cannot go on (its local segment is corrupt): refused after this pump.
    broken: Option<String>,
    /// Region: the reader, the version the importer has, and the version in flight.
    region: Option<RegionReader<ShmRegion>>,
    far_version: u64,
    in_flight: Option<u64>,
    /// Region: frames of the version in flight not yet taken by the link.
    region_frames: VecDeque<Vec<u8>>,
    /// SPSC: the last report of the ring's writer made on this stream.
    writer_report: Option<Report>,
    /// SPSC: the number of the last reader report applied.
    reader_seen: u64,
    /// SPSC: when to look at the ring's writer again.
    next_check: Instant,
}

impl ExportStream {
    /// The peer confirmed something: the resend timer starts over, without back-off.
    fn progressed(&mut self, now: Instant) {
        self.last_progress = now;
        self.backoff = 0;
    }
}

struct Conn {
    /// Unique in this bridge: what streams it owns are marked with.
    id: u64,
    /// This bridge dialed it (else it was accepted).
    dialed: bool,
    link: Box<dyn Link + Send>,
    /// The peer (known once authenticated and hello received).
    peer: Option<String>,
    hello_sent: bool,
    hello_received: bool,
    last_rx: Instant,
    last_ping: Instant,
    exports: Vec<ExportStream>,
    /// Import stream ids on this connection: index into `Bridge::imports`.
    import_ids: Vec<(u32, usize)>,
    frame: Vec<u8>,
    scratch: Vec<u8>,
    /// Frames that must go out before anything else (acks, offers, refusals); small.
    control: VecDeque<Vec<u8>>,
    /// `Event::Connected` was reported (and the connection counted).
    announced: bool,
}

impl Conn {
    fn new(link: Box<dyn Link + Send>, dialed: bool) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let now = Instant::now();
        Conn {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            dialed,
            link,
            peer: None,
            hello_sent: false,
            hello_received: false,
            last_rx: now,
            last_ping: now,
            exports: Vec::new(),
            import_ids: Vec::new(),
            frame: Vec::new(),
            scratch: Vec::new(),
            control: VecDeque::new(),
            announced: false,
        }
    }

    fn queue_control(&mut self, kind: FrameType, stream: u32, seq: u64, aux: u64, payload: &[u8]) {
        let mut frame = Vec::with_capacity(wire::HEADER_LEN + payload.len() + wire::TRAILER_LEN);
        // Control payloads are small (reasons are cut to fit): encoding cannot fail.
        if wire::encode(&mut frame, kind, stream, seq, aux, payload).is_ok() {
            self.control.push_back(frame);
        }
    }

    fn flush_control(&mut self) -> Result<bool, LinkError> {
        while let Some(frame) = self.control.front() {
            if !self.link.send(frame)? {
                return Ok(false);
            }
            self.control.pop_front();
        }
        Ok(true)
    }
}

struct Peer {
    name: String,
    addr: Option<SocketAddr>,
    conn: Option<Conn>,
    next_dial: Instant,
}

/// A bridge: one per host (see the module docs). Drive it with [`poll`](Self::poll).
pub struct Bridge {
    name: String,
    liveness: Duration,
    reconnect: Duration,
    window: u64,
    tls: Option<(TlsIdentity, Arc<Vec<String>>)>,
    listener: Option<TcpListener>,
    peers: Vec<Peer>,
    /// Accepted connections not yet identified.
    incoming: Vec<Conn>,
    exports: Vec<ExportSource>,
    imports: Vec<ImportSink>,
    events: Vec<Event>,
    stats: Stats,
    wrap: Option<LinkWrapper>,
    /// The number of the last lifecycle report made (they increase across connections).
    reports: u64,
}

/// Wraps every new link of a bridge (see [`Bridge::wrap_links`]).
pub type LinkWrapper = Box<dyn FnMut(Box<dyn Link + Send>) -> Box<dyn Link + Send> + Send>;

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("name", &self.name)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// A bridge as `config` describes: binds the listen address, loads the TLS identity.
    /// Connections are made by [`poll`](Self::poll).
    ///
    /// # Errors
    ///
    /// [`BridgeError`]: the TLS files cannot be loaded, or the address cannot be bound.
    pub fn new(config: &Config) -> Result<Self, BridgeError> {
        let tls = match &config.tls {
            Some(tls) => {
                let identity = TlsIdentity::load(tls)?;
                Some((identity, Arc::new(tls.allow.clone())))
            }
            None => None,
        };
        let mut events = Vec::new();
        let listener = match config.listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .map_err(|source| BridgeError::Listen { addr, source })?;
                listener
                    .set_nonblocking(true)
                    .map_err(|source| BridgeError::Listen { addr, source })?;
                events.push(Event::Listening(listener.local_addr().unwrap_or(addr)));
                Some(listener)
            }
            None => None,
        };
        let now = Instant::now();
        Ok(Bridge {
            name: config.name.clone(),
            liveness: config.liveness_timeout,
            reconnect: config.reconnect_interval,
            window: config.window,
            tls,
            listener,
            peers: config
                .peers
                .iter()
                .map(|p| Peer {
                    name: p.name.clone(),
                    addr: p.address,
                    conn: None,
                    next_dial: now,
                })
                .collect(),
            incoming: Vec::new(),
            exports: config
                .exports
                .iter()
                .map(|e| ExportSource {
                    name: e.name.clone(),
                    config: e.clone(),
                    segment: None,
                    next_open: now,
                    consumer: None,
                    reader_gone: false,
                    next_attach: now,
                    streaming_to: None,
                    feeds: Vec::new(),
                })
                .collect(),
            imports: config
                .imports
                .iter()
                .map(|i| ImportSink {
                    peer: i.peer.clone(),
                    name: i.name.clone(),
                    local: i.local_name.clone(),
                    segment: None,
                    producer: None,
                    broadcast: None,
                    region: None,
                    state: None,
                    cursor: None,
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    parts: None,
                    parts_bytes: 0,
                    start: None,
                    asked_resend: None,
                    ack_due: false,
                    refused: false,
                    owner: None,
                    ready: false,
                    reader_report: None,
                    writer_seen: 0,
                    writer_gone_at: None,
                    writer_detached: false,
                    reader: PeerState::NotYet,
                    next_check: now,
                })
                .collect(),
            events,
            stats: Stats::default(),
            wrap: None,
            reports: 0,
        })
    }

    /// Passes every link this bridge makes from now on through `wrap`: to inject faults
    /// ([`crate::fault::FaultyLink`]) or to observe frames.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use shmesh_bridge::fault::{FaultPlan, FaultyLink};
    /// # fn demo(bridge: &mut shmesh_bridge::Bridge) {
    /// let plan = FaultPlan { drop: 0.01, ..FaultPlan::default() };
    /// bridge.wrap_links(Box::new(move |link| {
    ///     Box::new(FaultyLink::new(link, plan).expect("a valid plan"))
    /// }));
    /// # }
    /// ```
    pub fn wrap_links(&mut self, wrap: LinkWrapper) {
        self.wrap = Some(wrap);
    }

    fn wrapped(&mut self, link: Box<dyn Link + Send>) -> Box<dyn Link + Send> {
        match &mut self.wrap {
            Some(wrap) => wrap(link),
            None => link,
        }
    }

    /// This bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the bridge listens on, if it does.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// What happened since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Counters of what the bridge did.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Names of the peers with a connection that is up.
    pub fn connected_peers(&self) -> Vec<&str> {
        self.peers
            .iter()
            .filter(|p| p.conn.as_ref().is_some_and(|c| c.hello_received))
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Sleeps until a link has bytes to read (or, with bytes queued, room to write), a peer
    /// dials in, or `timeout` passed: the idle step of a caller that does not want to spin.
    /// Local rings and regions cannot wake it (they have no file descriptor): `timeout` bounds
    /// how late their news is seen, so keep it short (the daemon backs off from 10 µs to 1 ms).
    ///
    /// # Errors
    ///
    /// What `poll(2)` returns, `EINTR` (a signal) included.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<()> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        use std::os::fd::AsFd;
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        if let Some(listener) = &self.listener {
            fds.push(PollFd::from_borrowed_fd(listener.as_fd(), PollFlags::IN));
        }
        let conns = self
            .incoming
            .iter()
            .chain(self.peers.iter().filter_map(|p| p.conn.as_ref()));
        for conn in conns {
            if let Some(fd) = conn.link.fd() {
                let mut flags = PollFlags::IN;
                if conn.link.queued() > 0 {
                    flags |= PollFlags::OUT;
                }
                fds.push(PollFd::from_borrowed_fd(fd, flags));
            }
        }
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        poll(&mut fds, Some(&timeout))
            .map(drop)
            .map_err(std::io::Error::from)
    }

    /// Does what can be done now without blocking: accepts and dials connections, moves
    /// frames, reads local rings and regions into frames and frames into local copies. Returns
    /// how much work it did (0: idle, the caller may back off).
    pub fn poll(&mut self) -> usize {
        let now = Instant::now();
        let mut work = self.accept();
        self.open_exports(now);
        self.dial(now);
        let mut i = 0;
        while i < self.incoming.len() {
            let mut conn = self.incoming.swap_remove(i);
            match self.drive(&mut conn, now) {
                Ok(w) => {
                    work += w;
                    if conn.hello_received {
                        self.adopt(conn);
                    } else {
                        self.incoming.push(conn);
                        let last = self.incoming.len() - 1;
                        self.incoming.swap(i, last);
                        i += 1;
                    }
                }
                Err(reason) => {
                    self.events.push(Event::Disconnected {
                        peer: conn.peer.clone(),
                        reason,
                    });
                    self.conn_down(&mut conn);
                }
            }
        }
        for p in 0..self.peers.len() {
            let Some(mut conn) = self.peers[p].conn.take() else {
                continue;
            };
            match self.drive(&mut conn, now) {
                Ok(w) => {
                    work += w;
                    if conn.hello_received && !conn.announced {
                        // A connection this bridge dialed (accepted ones are announced by
                        // `adopt`).
                        conn.announced = true;
                        self.events.push(Event::Connected {
                            peer: self.peers[p].name.clone(),
                        });
                        self.stats.connections += 1;
                    }
                    self.peers[p].conn = Some(conn);
                }
                Err(reason) => {
                    self.events.push(Event::Disconnected {
                        peer: Some(self.peers[p].name.clone()),
                        reason,
                    });
                    self.conn_down(&mut conn);
                    self.peers[p].next_dial = now + self.reconnect;
                }
            }
        }
        work
    }

    fn accept(&mut self) -> usize {
        let mut work = 0;
        loop {
            let Some(listener) = &self.listener else {
                return 0;
            };
            match listener.accept() {
                Ok((socket, _)) => {
                    let security = match &self.tls {
                        Some((identity, allow)) => {
                            match rustls::ServerConnection::new(identity.server_config()) {
                                Ok(conn) => Security::Tls {
                                    conn: Box::new(conn.into()),
                                    allow: allow.clone(),
                                },
                                Err(e) => {
                                    self.events.push(Event::Disconnected {
                                        peer: None,
                                        reason: format!("TLS setup: {e}"),
                                    });
                                    continue;
                                }
                            }
                        }
                        None => Security::Plain,
                    };
                    match StreamLink::accepted(socket, security) {
                        Ok(link) => {
                            let link = self.wrapped(Box::new(link));
                            self.incoming.push(Conn::new(link, false));
                            work += 1;
                        }
                        Err(e) => self.events.push(Event::Disconnected {
                            peer: None,
                            reason: e.to_string(),
                        }),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: try again on the next poll.
                    self.events.push(Event::Disconnected {
                        peer: None,
                        reason: format!("accept: {e}"),
                    });
                    break;
                }
            }
        }
        work
    }

    fn dial(&mut self, now: Instant) {
        for p in 0..self.peers.len() {
            let (Some(addr), None) = (self.peers[p].addr, &self.peers[p].conn) else {
                continue;
            };
            if now < self.peers[p].next_dial {
                continue;
            }
            self.peers[p].next_dial = now + self.reconnect;
            let peer = &self.peers[p];
            let security = match &self.tls {
                Some((identity, allow)) => {
                    let server = match rustls::pki_types::ServerName::try_from(peer.name.clone()) {
                        Ok(name) => name,
                        Err(e) => {
                            self.events.push(Event::Disconnected {
                                peer: Some(peer.name.clone()),
                                reason: format!("peer name is not a valid TLS server name: {e}"),
                            });
                            continue;
                        }
                    };
                    match rustls::ClientConnection::new(identity.client_config(), server) {
                        Ok(conn) => Security::Tls {
                            conn: Box::new(conn.into()),
                            allow: allow.clone(),
                        },
                        Err(e) => {
                            self.events.push(Event::Disconnected {
                                peer: Some(peer.name.clone()),
                                reason: format!("TLS setup: {e}"),
                            });
                            continue;
                        }
                    }
                }
                None => Security::Plain,
            };
            match StreamLink::dial(addr, security) {
                Ok(link) => {
                    let mut conn = Conn::new(self.wrapped(Box::new(link)), true);
                    conn.peer = Some(self.peers[p].name.clone());
                    self.peers[p].conn = Some(conn);
                }
                Err(e) => self.events.push(Event::Disconnected {
                    peer: Some(self.peers[p].name.clone()),
                    reason: e.to_string(),
                }),
            }
        }
    }

    /// An accepted connection whose peer is now known takes that peer's place.
    fn adopt(&mut self, conn: Conn) {
        let name = conn.peer.clone().expect("identified");
        let p = match self.peers.iter().position(|p| p.name == name) {
            Some(p) => p,
            None => {
                self.peers.push(Peer {
                    name: name.clone(),
                    addr: None,
                    conn: None,
                    next_dial: Instant::now(),
                });
                self.peers.len() - 1
            }
        };
        if let Some(mut old) = self.peers[p].conn.take() {
            // Both sides dialed: the connection dialed by the bridge with the smaller name
            // wins, so both sides keep the same one (decided by who dialed, which both sides
            // know alike, not by timing).
            if old.dialed && self.name < name {
                let mut conn = conn;
                self.conn_down(&mut conn);
                self.peers[p].conn = Some(old);
                return;
            }
            self.events.push(Event::Disconnected {
                peer: Some(name.clone()),
                reason: "replaced by a new connection from the peer".into(),
            });
            self.conn_down(&mut old);
        }
        self.events.push(Event::Connected { peer: name });
        self.stats.connections += 1;
        let mut conn = conn;
        conn.announced = true;
        self.peers[p].conn = Some(conn);
    }

    /// Resets what a connection was doing: held records are read again on the next one.
    fn conn_down(&mut self, conn: &mut Conn) {
        for stream in conn.exports.drain(..) {
            let source = &mut self.exports[stream.source];
            if let Some(feed) = source
                .feeds
                .iter_mut()
                .find(|f| Some(&f.peer) == conn.peer.as_ref())
            {
                feed.send_next = 0;
            }
            if stream.kind == SegmentKind::SpscRing
                && source.streaming_to.as_ref().is_some_and(|s| s.1 == conn.id)
            {
                if let Some(consumer) = &mut source.consumer {
                    consumer.rewind();
                }
                source.streaming_to = None;
            }
        }
        for (_, i) in conn.import_ids.drain(..) {
            let sink = &mut self.imports[i];
            // Another connection from the same peer may own it now (see `adopt`).
            if sink.owner != Some(conn.id) {
                continue;
            }
            sink.owner = None;
            sink.ready = false;
            sink.queue.clear();
            sink.queued_bytes = 0;
            sink.parts = None;
            sink.parts_bytes = 0;
            sink.asked_resend = None;
            sink.ack_due = false;
            sink.refused = false;
            // Lifecycle reports start over on the next connection (the exporter reports the
            // writer again; a writer gone is applied then).
            sink.reader_report = None;
            sink.writer_seen = 0;
            sink.writer_gone_at = None;
        }
    }

    fn open_exports(&mut self, now: Instant) {
        for source in &mut self.exports {
            if source.segment.is_some() || now < source.next_open {
                continue;
            }
            source.next_open = now + REOPEN_INTERVAL;
            let Ok(segment) = SegmentBuilder::new(&source.name).any_kind().open() else {
                continue;
            };
            if segment.kind() == SegmentKind::SpscRing {
                match segment.consumer() {
                    Ok(mut consumer) => {
                        consumer.hold_reads(true);
                        source.consumer = Some(consumer);
                    }
                    // A local reader holds it: try again later.
                    Err(_) => continue,
                }
            }
            source.segment = Some(segment);
        }
    }

    /// One connection's work. `Err` ends the connection, with the reason.
    fn drive(&mut self, conn: &mut Conn, now: Instant) -> Result<usize, String> {
        let mut work = usize::from(conn.link.poll().map_err(|e| e.to_string())?);
        if !conn.link.is_established() {
            if now.duration_since(conn.last_rx) > self.liveness {
                return Err(format!(
                    "not connected and authenticated within {:?}",
                    self.liveness
                ));
            }
            return Ok(work);
        }
        if conn.peer.is_none() {
            if let Some(name) = conn.link.peer_name() {
                conn.peer = Some(name.to_owned());
            }
        }
        if conn.peer.is_some() && !conn.hello_sent {
            self.send_hello(conn);
        }
        for _ in 0..1024 {
            let mut frame = std::mem::take(&mut conn.frame);
            let got = conn.link.recv(&mut frame).map_err(|e| e.to_string());
            let got = match got {
                Ok(got) => got,
                Err(e) => {
                    conn.frame = frame;
                    return Err(e);
                }
            };
            if !got {
                conn.frame = frame;
                break;
            }
            conn.last_rx = now;
            work += 1;
            let handled = self.handle_frame(conn, &mut frame, now);
            conn.frame = frame;
            handled?;
        }
        if now.duration_since(conn.last_rx) > self.liveness {
            return Err(format!("no frame from the peer for {:?}", self.liveness));
        }
        if conn.control.len() > MAX_CONTROL_QUEUE {
            // Each offer, refusal or incomplete region version queues an answer: a peer that
            // sends them faster than it reads the answers would grow this without end.
            return Err(format!(
                "the peer asked for more than {MAX_CONTROL_QUEUE} answers without reading them"
            ));
        }
        if conn.hello_received {
            if now.duration_since(conn.last_ping) > self.liveness / 4 && conn.control.is_empty() {
                conn.last_ping = now;
                conn.queue_control(FrameType::Ping, 0, 0, 0, &[]);
            }
            work += self.pump_imports(conn, now);
            work += self.pump_exports(conn, now).map_err(|e| e.to_string())?;
        }
        conn.flush_control().map_err(|e| e.to_string())?;
        work += usize::from(conn.link.poll().map_err(|e| e.to_string())?);
        Ok(work)
    }

    fn send_hello(&mut self, conn: &mut Conn) {
        let peer = conn.peer.clone().expect("known peer");
        conn.import_ids.clear();
        let mut imports = Vec::new();
        for (i, sink) in self.imports.iter().enumerate() {
            if sink.peer == peer {
                let stream = conn.import_ids.len() as u32 + 1;
                conn.import_ids.push((stream, i));
                imports.push(wire::ImportReq {
                    stream,
                    name: sink.name.clone(),
                    cursor: sink.cursor,
                });
            }
        }
        let hello = wire::Hello {
            version: wire::PROTOCOL_VERSION,
            name: self.name.clone(),
            imports,
        };
        match hello.encode() {
            Ok(payload) => conn.queue_control(FrameType::Hello, 0, 0, 0, &payload),
            Err(e) => self.events.push(Event::Disconnected {
                peer: Some(peer),
                reason: format!("cannot encode the hello: {e}"),
            }),
        }
        conn.hello_sent = true;
    }
}

/// `a` comes before `b` in a wrapping 64-bit sequence.
fn before(a: u64, b: u64) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 63
}

impl Bridge {
    fn peer_of(conn: &Conn) -> String {
        conn.peer
            .clone()
            .unwrap_or_else(|| "an unidentified peer".into())
    }

    /// Handles one received frame; may take `bytes` (a data frame waiting to be written).
    fn handle_frame(
        &mut self,
        conn: &mut Conn,
        bytes: &mut Vec<u8>,
        now: Instant,
    ) -> Result<(), String> {
        let frame = match wire::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                // A damaged frame counts as lost: sequence checks ask for it again.
                self.stats.damaged += 1;
                self.events.push(Event::FrameRejected {
                    peer: Self::peer_of(conn),
                    reason: e.to_string(),
                });
                return Ok(());
            }
        };
        let h = frame.header;
        if !conn.hello_received && h.kind != FrameType::Hello && h.kind != FrameType::Close {
            return Err(format!("the peer sent {:?} before its hello", h.kind));
        }
        let to_export = h.stream & FROM_IMPORTER != 0;
        let stream = h.stream & !FROM_IMPORTER;
        match h.kind {
            FrameType::Hello => self.on_hello(conn, frame.payload),
            FrameType::Offer => {
                self.on_offer(conn, stream, frame.payload);
                Ok(())
            }
            FrameType::Refuse => {
                let reason = wire::Reason::decode(frame.payload)
                    .map(|r| r.text)
                    .unwrap_or_else(|e| format!("(unreadable reason: {e})"));
                self.on_refuse(conn, stream, to_export, reason);
                Ok(())
            }
            FrameType::Ready => {
                if to_export {
                    self.on_ready(conn, stream, h.seq, h.aux != 0, now);
                } else {
                    self.on_start(conn, stream, h.seq);
                }
                Ok(())
            }
            FrameType::Data => {
                let (kind, range) = match wire::DataPayload::decode(frame.payload) {
                    Ok(data) => {
                        let start = data.bytes.as_ptr() as usize - bytes.as_ptr() as usize;
                        (data.record_kind, start..start + data.bytes.len())
                    }
                    Err(e) => {
                        self.stats.damaged += 1;
                        return Err(format!("bad data frame: {e}"));
                    }
                };
                self.on_data(conn, stream, (h.seq, h.aux), kind, bytes, range)?;
                Ok(())
            }
            FrameType::Ack => {
                self.on_ack(conn, stream, h.seq, now);
                Ok(())
            }
            FrameType::Resend => {
                self.on_resend(conn, stream, h.seq, now);
                Ok(())
            }
            FrameType::RegionPart => self.on_region_part(conn, stream, h.seq, h.aux, frame.payload),
            FrameType::RegionEnd => {
                self.on_region_end(conn, stream, h.seq, h.aux, frame.payload);
                Ok(())
            }
            FrameType::Ping => {
                // A peer flooding pings into a backed-up link gets no more answers.
                if conn.control.len() < CONTROL_BACKLOG {
                    conn.queue_control(FrameType::Pong, 0, h.seq, 0, &[]);
                }
                Ok(())
            }
            FrameType::Pong => Ok(()),
            FrameType::Lifecycle => match LifecyclePayload::decode(frame.payload) {
                Ok(report) => {
                    self.on_lifecycle(conn, stream, to_export, h.seq, report, now);
                    Ok(())
                }
                Err(e) => {
                    self.stats.damaged += 1;
                    Err(format!("bad lifecycle frame: {e}"))
                }
            },
            FrameType::Close => Err(format!(
                "the peer closed the connection: {}",
                wire::Reason::decode(frame.payload)
                    .map(|r| r.text)
                    .unwrap_or_default()
            )),
        }
    }

    fn on_hello(&mut self, conn: &mut Conn, payload: &[u8]) -> Result<(), String> {
        if conn.hello_received {
            return Err("the peer sent a second hello".into());
        }
        let hello = match wire::Hello::decode(payload) {
            Ok(hello) => hello,
            Err(wire::WireError::UnsupportedVersion { found }) => {
                let reason = format!(
                    "protocol version {found} is not spoken here (this bridge speaks {}): run \
                     the same shmesh-bridge version on both hosts",
                    wire::PROTOCOL_VERSION
                );
                conn.queue_control(
                    FrameType::Close,
                    0,
                    0,
                    0,
                    &wire::Reason::new(reason.clone()).encode(),
                );
                let _ = conn.flush_control();
                let _ = conn.link.poll();
                return Err(reason);
            }
            Err(e) => return Err(format!("bad hello: {e}")),
        };
        match &conn.peer {
            Some(peer) if *peer != hello.name => {
                return Err(format!(
                    "the peer authenticated as '{peer}' but calls itself '{}'",
                    hello.name
                ))
            }
            Some(_) => {}
            None => {
                // Plaintext: the peer is who it says; it must still be one we know.
                let known = self.peers.iter().any(|p| p.name == hello.name);
                if !known {
                    return Err(format!(
                        "'{}' is not a configured peer of this bridge",
                        hello.name
                    ));
                }
                conn.peer = Some(hello.name.clone());
            }
        }
        conn.hello_received = true;
        if !conn.hello_sent {
            self.send_hello(conn);
        }
        let peer = hello.name;
        for req in hello.imports {
            self.on_import_request(conn, &peer, req.stream, &req.name);
        }
        Ok(())
    }

    /// Refuses a stream: `stream` carries [`FROM_IMPORTER`] when this side imports it.
    fn refuse(&mut self, conn: &mut Conn, peer: &str, stream: u32, name: &str, reason: String) {
        conn.queue_control(
            FrameType::Refuse,
            stream,
            0,
            0,
            &wire::Reason::new(reason.clone()).encode(),
        );
        self.events.push(Event::StreamRefused {
            peer: peer.to_owned(),
            name: name.to_owned(),
            reason,
        });
    }

    /// The peer imports `name`: offer it (now or once the segment exists), or refuse.
    fn on_import_request(&mut self, conn: &mut Conn, peer: &str, stream: u32, name: &str) {
        let Some(source) = self
            .exports
            .iter()
            .position(|e| e.name == name && e.config.offered_to(peer))
        else {
            let reason = format!(
                "bridge '{}' does not export '{name}' to '{peer}': add an [[export]] for it",
                self.name
            );
            self.refuse(conn, peer, stream, name, reason);
            return;
        };
        conn.exports.push(ExportStream {
            stream,
            source,
            kind: SegmentKind::SpscRing,
            ready: false,
            sent_ends: VecDeque::new(),
            last_progress: Instant::now(),
            backoff: 0,
            broken: None,
            region: None,
            far_version: NOT_OFFERED,
            in_flight: None,
            region_frames: VecDeque::new(),
            writer_report: None,
            reader_seen: 0,
            next_check: Instant::now(),
        });
        // Offered by `pump_exports` once the segment is open.
    }

    /// Sends the offer of an export stream whose segment is open. Returns false if refused.
    fn offer(&mut self, conn: &mut Conn, e: usize) -> bool {
        let peer = Self::peer_of(conn);
        let stream = conn.exports[e].stream;
        let source = conn.exports[e].source;
        let src = &mut self.exports[source];
        let segment = src.segment.as_ref().expect("open");
        let schema = segment.schema();
        let mut offer = wire::Offer {
            kind: wire::OfferKind::Spsc,
            capacity: segment.capacity(),
            fingerprint: schema.fingerprint,
            schema: schema.text.clone(),
            history: 0,
            buffers: 0,
            chunk_size: 0,
        };
        let kind = segment.kind();
        let refusal = match kind {
            SegmentKind::SpscRing => match &src.streaming_to {
                Some((other, id)) if *id != conn.id => Some(format!(
                    "'{}' is an SPSC ring already mirrored to '{other}': a ring has one reader",
                    src.name
                )),
                _ => {
                    src.streaming_to = Some((peer.clone(), conn.id));
                    None
                }
            },
            SegmentKind::BroadcastRing => {
                let policy = segment
                    .policy()
                    .unwrap_or(shmesh_ring::BroadcastPolicy::Block);
                offer.kind = wire::OfferKind::Broadcast(policy);
                offer.history = segment.history_len() as u32;
                if src.feeds.iter().any(|f| f.peer == peer) {
                    None
                } else {
                    // Join with what the history still holds: records published before this
                    // peer's first connection are mirrored as far as the history reaches.
                    match segment.broadcast_reader(Start::History(segment.history_len())) {
                        Ok(reader) => {
                            src.feeds.push(BroadcastFeed {
                                peer: peer.clone(),
                                reader,
                                unacked: VecDeque::new(),
                                unacked_bytes: 0,
                                send_next: 0,
                                lapped: 0,
                                skip_below: 0,
                            });
                            None
                        }
                        Err(err) => Some(format!("cannot read '{}': {err}", src.name)),
                    }
                }
            }
            SegmentKind::Region => match segment.region_reader() {
                Ok(reader) => {
                    let shape = *reader.shape();
                    offer.kind = wire::OfferKind::Region;
                    offer.capacity = shape.size as u64;
                    offer.buffers = shape.buffers as u32;
                    offer.chunk_size = shape.chunk_size as u32;
                    offer.history = shape.history as u32;
                    if offer.capacity > MAX_REGION {
                        Some(format!(
                            "region '{}' is {} bytes; the bridge mirrors regions up to {MAX_REGION}",
                            src.name, offer.capacity
                        ))
                    } else {
                        conn.exports[e].region = Some(reader);
                        None
                    }
                }
                Err(err) => Some(format!("cannot read region '{}': {err}", src.name)),
            },
            other => Some(format!(
                "'{}' is a {other:?} segment: the bridge mirrors SPSC and broadcast rings and \
                 regions",
                src.name
            )),
        };
        let name = src.name.clone();
        conn.exports[e].kind = kind;
        if let Some(reason) = refusal {
            self.refuse(conn, &peer, stream, &name, reason);
            return false;
        }
        match offer.encode() {
            Ok(payload) => conn.queue_control(FrameType::Offer, stream, 0, 0, &payload),
            Err(e) => {
                let reason = format!("cannot encode the offer: {e}");
                self.refuse(conn, &peer, stream, &name, reason);
                return false;
            }
        }
        conn.exports[e].far_version = 0;
        conn.exports[e].last_progress = Instant::now();
        true
    }

    fn import_index(conn: &Conn, stream: u32) -> Option<usize> {
        conn.import_ids
            .iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, i)| *i)
    }

    fn export_index(conn: &Conn, stream: u32) -> Option<usize> {
        conn.exports.iter().position(|e| e.stream == stream)
    }

    fn on_refuse(&mut self, conn: &mut Conn, stream: u32, to_export: bool, reason: String) {
        let peer = Self::peer_of(conn);
        if to_export {
            let Some(e) = Self::export_index(conn, stream) else {
                return;
            };
            let export = conn.exports.remove(e);
            let source = &mut self.exports[export.source];
            if export.kind == SegmentKind::SpscRing
                && source.streaming_to.as_ref().is_some_and(|s| s.1 == conn.id)
            {
                source.streaming_to = None;
                if let Some(consumer) = &mut source.consumer {
                    consumer.rewind();
                }
            }
            self.events.push(Event::StreamRefused {
                peer,
                name: source.name.clone(),
                reason,
            });
        } else if let Some(i) = Self::import_index(conn, stream) {
            self.imports[i].refused = true;
            self.events.push(Event::StreamRefused {
                peer,
                name: self.imports[i].name.clone(),
                reason,
            });
        }
    }

    /// The exporter's offer: open or create the local copy, find the cursor, answer `Ready`.
    fn on_offer(&mut self, conn: &mut Conn, stream: u32, payload: &[u8]) {
        let peer = Self::peer_of(conn);
        let Some(i) = Self::import_index(conn, stream) else {
            return;
        };
        let name = self.imports[i].name.clone();
        let result = wire::Offer::decode(payload)
            .map_err(|e| format!("unreadable offer: {e}"))
            .and_then(|offer| self.open_import(i, &offer));
        match result {
            Ok(cursor) => {
                let sink = &mut self.imports[i];
                if sink.owner != Some(conn.id) {
                    sink.writer_seen = 0;
                }
                sink.ready = true;
                sink.owner = Some(conn.id);
                sink.cursor = cursor;
                // The copy's reader is reported afresh after each `Ready`.
                sink.reader_report = None;
                sink.next_check = Instant::now();
                // An offer again (ours or its answer was lost): the exporter starts over
                // from our cursor.
                sink.queue.clear();
                sink.queued_bytes = 0;
                sink.parts = None;
                sink.parts_bytes = 0;
                sink.asked_resend = None;
                sink.start = None;
                conn.queue_control(
                    FrameType::Ready,
                    stream | FROM_IMPORTER,
                    cursor.unwrap_or(0),
                    u64::from(cursor.is_some()),
                    &[],
                );
                self.events.push(Event::StreamUp {
                    peer,
                    name,
                    direction: "import",
                    cursor,
                });
            }
            Err(reason) => {
                self.imports[i].refused = true;
                self.refuse(conn, &peer, stream | FROM_IMPORTER, &name, reason);
            }
        }
    }

    /// Opens (or creates) the local copy of an import as the offer describes, checking an
    /// existing one matches. Returns the delivery cursor.
    fn open_import(&mut self, i: usize, offer: &wire::Offer) -> Result<Option<u64>, String> {
        let sink = &mut self.imports[i];
        let local = sink.local.clone();
        let kind = match offer.kind {
            wire::OfferKind::Spsc => SegmentKind::SpscRing,
            wire::OfferKind::Region => SegmentKind::Region,
            wire::OfferKind::Broadcast(_) => SegmentKind::BroadcastRing,
        };
        if sink.segment.is_none() {
            let mut builder = SegmentBuilder::new(&local)
                .kind(kind)
                .capacity(offer.capacity)
                .schema(offer.fingerprint)
                .schema_text(offer.schema.clone())
                .persist(true);
            match kind {
                SegmentKind::SpscRing => {}
                SegmentKind::BroadcastRing => {
                    if let wire::OfferKind::Broadcast(policy) = offer.kind {
                        builder = builder.policy(policy).history(offer.history as usize);
                    }
                }
                SegmentKind::Region => {
                    if offer.capacity > MAX_REGION {
                        return Err(format!(
                            "the region is {} bytes; the bridge mirrors regions up to {MAX_REGION}",
                            offer.capacity
                        ));
                    }
                    builder = builder
                        .buffers(offer.buffers as usize)
                        .chunk_size(offer.chunk_size as usize)
                        .history(offer.history as usize);
                }
                other => {
                    return Err(format!(
                        "the offer is a {other:?} segment: this bridge imports SPSC and broadcast \
                         rings and regions"
                    ))
                }
            }
            let opener = SegmentBuilder::new(&local).any_kind();
            let segment = match opener.open() {
                Ok(segment) => segment,
                Err(SegmentError::NotFound { .. }) => match builder.create() {
                    Ok(segment) => segment,
                    Err(SegmentError::AlreadyExists { .. }) => {
                        opener.open().map_err(|e| e.to_string())?
                    }
                    Err(e) => return Err(format!("cannot create the local copy '{local}': {e}")),
                },
                Err(e) => return Err(format!("cannot open the local copy '{local}': {e}")),
            };
            sink.segment = Some(segment);
        }
        let segment = sink.segment.as_ref().expect("open");
        let schema = segment.schema();
        let mismatch = if segment.kind() != kind {
            Some(format!(
                "it is a {:?} segment, the export a {kind:?}",
                segment.kind()
            ))
        } else if segment.capacity() != offer.capacity {
            Some(format!(
                "its capacity is {} bytes, the export's {}",
                segment.capacity(),
                offer.capacity
            ))
        } else if schema.fingerprint != offer.fingerprint {
            Some(format!(
                "its message type is '{}' (fingerprint {:016x}…), the export's '{}' ({:016x}…)",
                schema.text, schema.fingerprint[0], offer.schema, offer.fingerprint[0]
            ))
        } else {
            None
        };
        if let Some(what) = mismatch {
            sink.segment = None;
            return Err(format!(
                "schema mismatch: the local copy '{local}' does not match the export: {what}; \
                 remove it or import under another local_name"
            ));
        }
        if sink.state.is_none() {
            sink.state = Some(StateStore::open(&local).map_err(|e| e.to_string())?);
        }
        let attach = |what: shmesh_ring::AttachError| {
            format!("cannot write the local copy '{local}': {what}")
        };
        let local_now = match kind {
            SegmentKind::SpscRing => {
                if sink.producer.is_none() {
                    let state = sink.state.as_ref().expect("open");
                    let saved = state.saved().map_err(|e| e.to_string())?;
                    if sink.writer_detached || saved.is_some_and(|s| s.writer_gone) {
                        // The source's writer is gone: this bridge detached from the copy (maybe
                        // before it restarted), so that its readers see their writer gone. It
                        // stays detached until the exporter reports a writer again; delivery
                        // stands where it detached (the copy is checked when it attaches).
                        sink.writer_detached = true;
                        return Ok(saved.map(|s| s.intent.cursor_after));
                    }
                    sink.producer = Some(segment.producer().map_err(attach)?);
                }
                sink.producer.as_ref().expect("attached").position()
            }
            SegmentKind::BroadcastRing => {
                if sink.broadcast.is_none() {
                    sink.broadcast = Some(segment.broadcast_writer().map_err(attach)?);
                }
                sink.broadcast.as_ref().expect("attached").published()
            }
            _ => {
                if sink.region.is_none() {
                    sink.region = Some(segment.region_writer().map_err(attach)?);
                }
                sink.region.as_ref().expect("attached").version()
            }
        };
        sink.state
            .as_ref()
            .expect("open")
            .recover(&local, local_now)
            .map_err(|e| e.to_string())
    }
}

impl Bridge {
    /// The importer is ready, at `cursor` (when `has`): start or resume the export.
    fn on_ready(&mut self, conn: &mut Conn, stream: u32, cursor: u64, has: bool, now: Instant) {
        let peer = Self::peer_of(conn);
        let Some(e) = Self::export_index(conn, stream) else {
            return;
        };
        let export = &mut conn.exports[e];
        if export.far_version == NOT_OFFERED {
            return; // not offered: a confused peer; ignore
        }
        let source = &mut self.exports[export.source];
        let name = source.name.clone();
        export.progressed(now);
        export.sent_ends.clear();
        // The writer is reported afresh after each `Ready`.
        export.writer_report = None;
        export.next_check = now;
        let refusal = match export.kind {
            // Detached from the ring (the copy's reader is gone): nothing to send until the
            // importer reports a reader; it is offered again then.
            SegmentKind::SpscRing if source.consumer.is_none() => None,
            SegmentKind::SpscRing => {
                let consumer = source
                    .consumer
                    .as_mut()
                    .expect("SPSC export has a consumer");
                consumer.rewind();
                let released = consumer.released_position();
                if has && cursor != released {
                    // The importer is ahead of what we released: its acknowledgement was lost
                    // (maybe we restarted). Walk the held records to its cursor.
                    loop {
                        let at = consumer.read_position();
                        if at == cursor {
                            break None;
                        }
                        if before(cursor, at) || before(cursor, released) {
                            break Some(format!(
                                "the importer's cursor {cursor} is not a record boundary of \
                                 '{name}' (released up to {released}): its copy is from \
                                 another ring; remove the copy and its .bridge-state to start afresh"
                            ));
                        }
                        match consumer.try_read() {
                            Ok(record) => drop(record),
                            Err(_) => {
                                break Some(format!(
                                    "the importer's cursor {cursor} is beyond the records of \
                                     '{name}' (read up to {at}): its copy is from another ring; \
                                     remove the copy and its .bridge-state to start afresh"
                                ))
                            }
                        }
                    }
                    .or_else(|| {
                        consumer.release_to(cursor).err().map(|e| e.to_string())
                    })
                } else {
                    None
                }
            }
            SegmentKind::BroadcastRing => {
                let feed = source
                    .feeds
                    .iter_mut()
                    .find(|f| f.peer == peer)
                    .expect("offered broadcast has a feed");
                if has {
                    feed.acknowledge(cursor);
                }
                feed.send_next = 0;
                None
            }
            _ => {
                export.far_version = if has { cursor } else { 0 };
                export.in_flight = None;
                export.region_frames.clear();
                None
            }
        };
        if let Some(reason) = refusal {
            if source.streaming_to.as_ref().is_some_and(|s| s.1 == conn.id) {
                if let Some(consumer) = &mut source.consumer {
                    consumer.rewind();
                }
                source.streaming_to = None;
            }
            conn.exports.remove(e);
            self.refuse(conn, &peer, stream, &name, reason);
            return;
        }
        // Tell a ring's importer where the stream starts (it accepts only the frame there).
        let start = match export.kind {
            SegmentKind::SpscRing => source.consumer.as_ref().map(Consumer::released_position),
            SegmentKind::BroadcastRing => source
                .feeds
                .iter()
                .find(|f| f.peer == peer)
                .map(BroadcastFeed::start),
            _ => None,
        };
        if let Some(start) = start {
            conn.queue_control(FrameType::Ready, stream, start, 1, &[]);
        }
        conn.exports[e].ready = true;
        self.events.push(Event::StreamUp {
            peer,
            name,
            direction: "export",
            cursor: has.then_some(cursor),
        });
    }

    /// The exporter says where its ring stream starts.
    fn on_start(&mut self, conn: &mut Conn, stream: u32, start: u64) {
        let Some(i) = Self::import_index(conn, stream) else {
            return;
        };
        let peer = Self::peer_of(conn);
        let sink = &mut self.imports[i];
        if sink.owner != Some(conn.id) {
            return;
        }
        if let (Some(cursor), Some(_)) = (sink.cursor, &sink.broadcast) {
            if before(cursor, start) && sink.queue.is_empty() {
                // The exporter's history no longer holds the records from our cursor on (its
                // bridge was down while the writer went on): say so, and go on from there.
                sink.cursor = Some(start);
                self.events.push(Event::StreamRefused {
                    peer,
                    name: sink.name.clone(),
                    reason: format!(
                        "{} records were lost: the exporting bridge's reader missed them (it \
                         was down or lapped); mirroring goes on from record {start}",
                        start.wrapping_sub(cursor)
                    ),
                });
            }
            return;
        }
        if sink.cursor.is_none() && sink.queue.is_empty() {
            sink.cursor = None;
            sink.asked_resend = None;
            sink.parts = None;
            // Not delivered yet: where the first accepted frame must start.
            sink.queue.clear();
            sink.start = Some(start);
        }
    }

    /// A ring record spanning cursors `from..to`, at `range` in `frame`.
    fn on_data(
        &mut self,
        conn: &mut Conn,
        stream: u32,
        (from, to): (u64, u64),
        kind: u32,
        frame: &mut Vec<u8>,
        range: std::ops::Range<usize>,
    ) -> Result<(), String> {
        let Some(i) = Self::import_index(conn, stream) else {
            return Ok(());
        };
        let window = self.window as usize;
        let sink = &mut self.imports[i];
        // While detached because the writer was gone, records of a new writer are queued
        // (they are written once the exporter's report of it arrives).
        if !sink.ready
            || sink.owner != Some(conn.id)
            || (sink.producer.is_none() && sink.broadcast.is_none() && !sink.writer_detached)
        {
            return Ok(());
        }
        let Some(next) = sink
            .queue
            .back()
            .map(|q| q.to)
            .or(sink.cursor)
            .or(sink.start)
        else {
            return Ok(()); // the start was not announced yet (or got lost): it will be resent
        };
        if from == next {
            sink.queued_bytes += range.len();
            if sink.queued_bytes > 2 * window + (wire::MAX_PAYLOAD as usize) {
                return Err(format!(
                    "the peer sent more than its window ({window} bytes) unacknowledged"
                ));
            }
            sink.queue.push_back(Queued {
                to,
                kind,
                frame: std::mem::take(frame),
                bytes: range,
            });
            sink.asked_resend = None;
        } else if before(from, next) {
            self.stats.duplicates += 1;
            sink.ack_due = true;
        } else if sink.asked_resend != Some(next) {
            sink.asked_resend = Some(next);
            self.stats.resends += 1;
            conn.queue_control(FrameType::Resend, stream | FROM_IMPORTER, next, 0, &[]);
        }
        Ok(())
    }

    fn on_ack(&mut self, conn: &mut Conn, stream: u32, cursor: u64, now: Instant) {
        // Borrowed, not cloned: these run for every acknowledgement and every poll.
        let peer = conn.peer.as_deref().unwrap_or_default();
        let Some(e) = Self::export_index(conn, stream) else {
            return;
        };
        let export = &mut conn.exports[e];
        if !export.ready {
            return;
        }
        match export.kind {
            SegmentKind::BroadcastRing => {
                if let Some(feed) = self.exports[export.source]
                    .feeds
                    .iter_mut()
                    .find(|f| f.peer == peer)
                {
                    if feed.unacked.front().is_some_and(|r| r.0 < cursor) {
                        export.progressed(now);
                    }
                    feed.acknowledge(cursor);
                }
            }
            SegmentKind::SpscRing => {
                // Detached (the copy's reader is gone): what the importer has is settled when
                // it is offered again.
                let Some(consumer) = self.exports[export.source].consumer.as_mut() else {
                    return;
                };
                let Some(k) = export.sent_ends.iter().position(|&end| end == cursor) else {
                    return; // an old or repeated acknowledgement
                };
                export.sent_ends.drain(..=k);
                if consumer.release_to(cursor).is_ok() {
                    export.progressed(now);
                }
            }
            _ => {
                if export.in_flight == Some(cursor) {
                    export.far_version = cursor;
                    export.in_flight = None;
                    export.progressed(now);
                }
            }
        }
    }

    fn on_resend(&mut self, conn: &mut Conn, stream: u32, cursor: u64, now: Instant) {
        // Borrowed, not cloned: these run for every acknowledgement and every poll.
        let peer = conn.peer.as_deref().unwrap_or_default();
        let Some(e) = Self::export_index(conn, stream) else {
            return;
        };
        let export = &mut conn.exports[e];
        if !export.ready {
            return;
        }
        self.stats.resends += 1;
        export.progressed(now);
        match export.kind {
            // The importer is at `cursor` (records before it are queued or delivered there,
            // not necessarily acknowledged: release nothing) and missed what came next.
            SegmentKind::BroadcastRing => {
                if let Some(feed) = self.exports[export.source]
                    .feeds
                    .iter_mut()
                    .find(|f| f.peer == peer)
                {
                    if let Some(k) = feed.unacked.iter().position(|r| r.0 == cursor) {
                        feed.send_next = feed.send_next.min(k);
                    }
                }
            }
            SegmentKind::SpscRing => {
                let Some(consumer) = self.exports[export.source].consumer.as_mut() else {
                    return;
                };
                let sent = export.sent_ends.iter().position(|&end| end == cursor);
                if (cursor == consumer.released_position() || sent.is_some())
                    && consumer.rewind_to(cursor).is_ok()
                {
                    export.sent_ends.truncate(sent.map_or(0, |k| k + 1));
                }
            }
            _ => {
                export.far_version = cursor;
                export.in_flight = None;
                export.region_frames.clear();
            }
        }
    }

    fn on_region_part(
        &mut self,
        conn: &mut Conn,
        stream: u32,
        version: u64,
        base: u64,
        payload: &[u8],
    ) -> Result<(), String> {
        let Some(i) = Self::import_index(conn, stream) else {
            return Ok(());
        };
        let sink = &mut self.imports[i];
        if sink.owner != Some(conn.id) {
            return Ok(());
        }
        let Some(writer) = &sink.region else {
            return Ok(());
        };
        let size = writer.shape().size as u64;
        let part = match wire::RegionPartPayload::decode(payload) {
            Ok(part) => part,
            Err(e) => {
                self.stats.damaged += 1;
                return Err(format!("bad region part: {e}"));
            }
        };
        let end = part.offset.checked_add(part.bytes.len() as u64);
        if end.is_none_or(|end| end > size) {
            return Err(format!(
                "a region part at offset {} of {} bytes lies outside the {size}-byte region",
                part.offset,
                part.bytes.len()
            ));
        }
        if sink.cursor.is_some_and(|have| version <= have) {
            // A copy of a version already applied (the exporter sent it again after its
            // resend timeout while our acknowledgement was on its way): nothing to keep.
            return Ok(());
        }
        // A new version, or this one sent again from its first part: the parts of an earlier
        // copy are not added to the new one.
        let again = |p: &PendingVersion| {
            p.0 != version || p.1 != base || p.2.iter().any(|(o, _)| *o == part.offset)
        };
        if sink.parts.as_ref().is_none_or(again) {
            sink.parts = Some((version, base, Vec::new()));
            sink.parts_bytes = 0;
        }
        sink.parts_bytes += part.bytes.len();
        if sink.parts_bytes as u64 > size {
            return Err("the peer sent more bytes for a region version than the region has".into());
        }
        let parts = &mut sink.parts.as_mut().expect("set").2;
        parts.push((part.offset, part.bytes.to_vec()));
        Ok(())
    }

    fn on_region_end(
        &mut self,
        conn: &mut Conn,
        stream: u32,
        version: u64,
        base: u64,
        payload: &[u8],
    ) {
        let Some(i) = Self::import_index(conn, stream) else {
            return;
        };
        let sink = &mut self.imports[i];
        if sink.owner != Some(conn.id) {
            return;
        }
        let (Some(writer), Some(state)) = (&mut sink.region, &mut sink.state) else {
            return;
        };
        let have = sink.cursor.unwrap_or(0);
        let end = match wire::RegionEndPayload::decode(payload) {
            Ok(end) => end,
            Err(_) => {
                self.stats.damaged += 1;
                return;
            }
        };
        if version <= have && sink.cursor.is_some() {
            self.stats.duplicates += 1;
            sink.ack_due = true;
            sink.parts = None;
            sink.parts_bytes = 0;
            return;
        }
        let parts = sink.parts.take().filter(|p| p.0 == version && p.1 == base);
        let received = parts
            .as_ref()
            .map_or(0, |p| p.2.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
        let complete = (base == 0 || Some(base) == sink.cursor)
            && end.size == writer.shape().size as u64
            && end.parts == parts.as_ref().map_or(0, |p| p.2.len() as u64)
            && end.bytes == received;
        if !complete {
            // A part was lost, or the version builds on one we do not have: ask again.
            sink.parts_bytes = 0;
            self.stats.resends += 1;
            conn.queue_control(FrameType::Resend, stream | FROM_IMPORTER, have, 0, &[]);
            return;
        }
        let local_before = writer.version();
        let mut scope = writer.write();
        for (offset, bytes) in parts.iter().flat_map(|p| p.2.iter()) {
            scope.write_at(*offset as usize, bytes);
        }
        state.record(Intent {
            cursor_before: have,
            cursor_after: version,
            local_before,
            local_after: local_before + 1,
        });
        scope.publish();
        sink.parts_bytes = 0;
        sink.cursor = Some(version);
        sink.ack_due = true;
        self.stats.versions_delivered += 1;
    }

    /// Writes accepted records into the local rings and acknowledges.
    fn pump_imports(&mut self, conn: &mut Conn, now: Instant) -> usize {
        let mut work = 0;
        for k in 0..conn.import_ids.len() {
            let (stream, i) = conn.import_ids[k];
            let sink = &mut self.imports[i];
            if sink.owner != Some(conn.id) {
                continue;
            }
            if let (Some(producer), Some(state)) = (&mut sink.producer, &mut sink.state) {
                if !sink.queue.is_empty() {
                    let cursor_before = sink.cursor.or(sink.start).expect("a start");
                    let mut batch = producer.batch();
                    let local_before = batch.position();
                    let mut written = 0;
                    let mut cursor_after = cursor_before;
                    for queued in &sink.queue {
                        let (to, kind, bytes) = (&queued.to, &queued.kind, queued.bytes());
                        let Ok(mut grant) = batch.try_claim(bytes.len()) else {
                            break; // full: the local reader is slow (backpressure)
                        };
                        grant.copy_from_slice(bytes);
                        if *kind != u32::MAX {
                            grant.set_kind(*kind);
                        }
                        grant.commit(bytes.len());
                        written += 1;
                        cursor_after = *to;
                    }
                    if written > 0 {
                        state.record(Intent {
                            cursor_before,
                            cursor_after,
                            local_before,
                            local_after: batch.position(),
                        });
                        batch.publish();
                        for _ in 0..written {
                            if let Some(queued) = sink.queue.pop_front() {
                                sink.queued_bytes -= queued.bytes.len();
                            }
                        }
                        sink.cursor = Some(cursor_after);
                        sink.ack_due = true;
                        self.stats.records_delivered += written as u64;
                        work += written;
                    }
                }
            }
            if let (Some(writer), Some(state)) = (&mut sink.broadcast, &mut sink.state) {
                while let Some(queued) = sink.queue.front() {
                    let (to, kind, bytes) = (&queued.to, &queued.kind, queued.bytes());
                    let cursor_before = sink.cursor.or(sink.start).expect("a start");
                    let local_before = writer.published();
                    let Ok(mut grant) = writer.try_claim(bytes.len()) else {
                        break; // full: a local reader is slow (backpressure)
                    };
                    grant.copy_from_slice(bytes);
                    if *kind != u32::MAX {
                        grant.set_kind(*kind);
                    }
                    // One record per publication: its intent first.
                    state.record(Intent {
                        cursor_before,
                        cursor_after: *to,
                        local_before,
                        local_after: local_before + 1,
                    });
                    grant.commit(bytes.len());
                    sink.cursor = Some(*to);
                    sink.queued_bytes -= bytes.len();
                    sink.queue.pop_front();
                    sink.ack_due = true;
                    self.stats.records_delivered += 1;
                    work += 1;
                }
            }
            // Acknowledgements wait while the link is backed up (they are cumulative: the
            // next one says it all), so the control queue stays small.
            if sink.ack_due && conn.control.len() < CONTROL_BACKLOG {
                if let Some(cursor) = sink.cursor {
                    conn.queue_control(FrameType::Ack, stream | FROM_IMPORTER, cursor, 0, &[]);
                }
                sink.ack_due = false;
            }
            work += self.import_lifecycle(conn, stream, i, now);
        }
        work
    }
}

/// Queues a lifecycle frame about `end`: a report of ours, or the echo of the peer's.
fn send_lifecycle(conn: &mut Conn, stream: u32, end: RingEnd, report: &Report) {
    let payload = LifecyclePayload {
        end,
        attached: report.attached,
        report: report.number,
    };
    conn.queue_control(
        FrameType::Lifecycle,
        stream,
        report.cursor,
        0,
        &payload.encode(),
    );
}

/// Lifecycle of SPSC streams: the ends of the mirrored ring (see [`FrameType::Lifecycle`]).
impl Bridge {
    fn new_report(&mut self, attached: bool, cursor: u64, now: Instant) -> Report {
        self.reports += 1;
        Report {
            number: self.reports,
            attached,
            cursor,
            confirmed: false,
            sent: now,
        }
    }

    /// A lifecycle frame: a report of the end the peer watches (applied if newer than the
    /// last one, and echoed), or the echo of ours (confirming it).
    fn on_lifecycle(
        &mut self,
        conn: &mut Conn,
        stream: u32,
        to_export: bool,
        cursor: u64,
        frame: LifecyclePayload,
        now: Instant,
    ) {
        let peer = Self::peer_of(conn);
        let echo = Report {
            number: frame.report,
            attached: frame.attached,
            cursor,
            confirmed: true,
            sent: now,
        };
        if to_export {
            let Some(e) = Self::export_index(conn, stream) else {
                return;
            };
            let export = &mut conn.exports[e];
            let source = &mut self.exports[export.source];
            if !export.ready
                || export.kind != SegmentKind::SpscRing
                || source.streaming_to.as_ref().is_none_or(|s| s.1 != conn.id)
            {
                return; // not (yet) this connection's stream: the importer repeats it
            }
            match frame.end {
                RingEnd::Writer => {
                    if let Some(report) = &mut export.writer_report {
                        if report.number == frame.report {
                            report.confirmed = true;
                        }
                    }
                }
                RingEnd::Reader => {
                    let fresh = frame.report > export.reader_seen;
                    if fresh {
                        export.reader_seen = frame.report;
                    }
                    let mut change = None;
                    if fresh && !frame.attached && !source.reader_gone {
                        // The copy's reader is gone: leave the records held (sent, not
                        // acknowledged) in the ring and detach, so the writer sees its reader
                        // gone. What the importer has is settled when it is offered again.
                        source.reader_gone = true;
                        let at = match source.consumer.take() {
                            Some(mut consumer) => {
                                consumer.rewind();
                                consumer.released_position()
                            }
                            None => cursor,
                        };
                        export.sent_ends.clear();
                        change = Some((true, at));
                    } else if fresh && frame.attached && source.reader_gone {
                        // A reader again: attach (in `export_lifecycle`) and offer again.
                        source.reader_gone = false;
                        source.next_attach = now;
                        change = Some((false, cursor));
                    }
                    if let Some((gone, cursor)) = change {
                        self.events.push(Event::Lifecycle {
                            peer,
                            name: source.name.clone(),
                            direction: "export",
                            end: RingEnd::Reader,
                            gone,
                            cursor,
                        });
                    }
                    send_lifecycle(conn, stream, RingEnd::Reader, &echo);
                }
            }
            return;
        }
        let Some(i) = Self::import_index(conn, stream) else {
            return;
        };
        let sink = &mut self.imports[i];
        let spsc = sink
            .segment
            .as_ref()
            .is_some_and(|s| s.kind() == SegmentKind::SpscRing);
        if !sink.ready || sink.owner != Some(conn.id) || !spsc {
            return; // not (yet) ready: the exporter repeats it
        }
        match frame.end {
            RingEnd::Reader => {
                if let Some(report) = &mut sink.reader_report {
                    if report.number == frame.report {
                        report.confirmed = true;
                    }
                }
            }
            RingEnd::Writer => {
                send_lifecycle(conn, stream | FROM_IMPORTER, RingEnd::Writer, &echo);
                if frame.report <= sink.writer_seen {
                    return; // repeated or overtaken
                }
                sink.writer_seen = frame.report;
                if frame.attached {
                    sink.writer_gone_at = None;
                    if sink.writer_detached {
                        self.attach_writer_again(conn, stream, i);
                    }
                } else if !sink.writer_detached {
                    // Detached in `import_lifecycle` once everything before it is in the copy.
                    sink.writer_gone_at = Some(cursor);
                    if sink.cursor.is_none() && sink.start.is_none() && sink.queue.is_empty() {
                        // Nothing delivered yet, and the exporter's word on where the stream
                        // starts was lost: everything before `cursor` was acknowledged, so
                        // the stream starts there.
                        sink.start = Some(cursor);
                    }
                }
            }
        }
    }

    /// The exporter reports a writer again: attach to the copy again, checking that nothing
    /// else wrote it meanwhile (else the stream is refused, as a copy that does not match).
    fn attach_writer_again(&mut self, conn: &mut Conn, stream: u32, i: usize) {
        let peer = Self::peer_of(conn);
        let sink = &mut self.imports[i];
        let (Some(segment), Some(state)) = (&sink.segment, &mut sink.state) else {
            return;
        };
        let local = &sink.local;
        let attached = segment
            .producer()
            .map_err(|e| format!("cannot write the local copy '{local}' again: {e}"))
            .and_then(|producer| {
                let position = producer.position();
                match state.recover(local, position) {
                    Ok(Some(cursor)) if Some(cursor) == sink.cursor => Ok((producer, cursor)),
                    Ok(_) => Err(format!(
                        "the local copy '{local}' is not where this bridge left it when its \
                         writer went: remove it and its .bridge-state to mirror it afresh"
                    )),
                    Err(e) => Err(e.to_string()),
                }
            });
        match attached {
            Ok((producer, cursor)) => {
                let position = producer.position();
                // Delivery goes on from here; the writer-gone mark is cleared.
                state.record(Intent {
                    cursor_before: cursor,
                    cursor_after: cursor,
                    local_before: position,
                    local_after: position,
                });
                sink.producer = Some(producer);
                sink.writer_detached = false;
                self.events.push(Event::Lifecycle {
                    peer,
                    name: sink.name.clone(),
                    direction: "import",
                    end: RingEnd::Writer,
                    gone: false,
                    cursor,
                });
            }
            Err(reason) => {
                sink.ready = false;
                sink.refused = true;
                let name = sink.name.clone();
                self.refuse(conn, &peer, stream | FROM_IMPORTER, &name, reason);
            }
        }
    }

    /// An imported SPSC stream's ends: detaches from the copy once a writer reported gone
    /// has all its records in it, reports the copy's reader, repeats an unconfirmed report.
    fn import_lifecycle(&mut self, conn: &mut Conn, stream: u32, i: usize, now: Instant) -> usize {
        let sink = &mut self.imports[i];
        let spsc = sink
            .segment
            .as_ref()
            .is_some_and(|s| s.kind() == SegmentKind::SpscRing);
        if !sink.ready || sink.owner != Some(conn.id) || !spsc {
            return 0;
        }
        let mut work = 0;
        if let Some(at) = sink.writer_gone_at {
            let delivered = sink.cursor.or(sink.start);
            if sink.queue.is_empty() && delivered == Some(at) {
                if let (Some(producer), Some(state)) = (sink.producer.take(), &mut sink.state) {
                    // Marked first: a restart must not attach again (a crash between the two
                    // releases the producer's token anyway).
                    state.record_writer_gone(at, producer.position());
                    // Dropping it marks the copy's writer gone: readers read everything, then
                    // get PeerGone, as when a local writer leaves.
                    drop(producer);
                    sink.writer_detached = true;
                    sink.cursor = Some(at);
                    work += 1;
                    self.events.push(Event::Lifecycle {
                        peer: Self::peer_of(conn),
                        name: sink.name.clone(),
                        direction: "import",
                        end: RingEnd::Writer,
                        gone: true,
                        cursor: at,
                    });
                }
                sink.writer_gone_at = None;
            } else if delivered.is_some_and(|d| before(at, d)) {
                sink.writer_gone_at = None; // overtaken: a new writer wrote after it
            }
        }
        if now >= sink.next_check {
            sink.next_check = now + LIFECYCLE_CHECK;
            sink.reader = match (&sink.producer, &sink.segment) {
                (Some(producer), _) => producer.peer(),
                // Detached (the writer is gone): the consumer slot says only alive or not.
                (None, Some(segment)) if segment.live_endpoints(1..2) > 0 => PeerState::Alive,
                (None, _) if sink.reader == PeerState::Alive => PeerState::Gone,
                (None, _) => sink.reader,
            };
            let attached = sink.reader != PeerState::Gone;
            let previous = sink.reader_report;
            if previous.is_none_or(|r| r.attached != attached) {
                let cursor = sink.cursor.or(sink.start).unwrap_or(0);
                let name = sink.name.clone();
                let report = self.new_report(attached, cursor, now);
                self.imports[i].reader_report = Some(report);
                send_lifecycle(conn, stream | FROM_IMPORTER, RingEnd::Reader, &report);
                work += 1;
                if !attached || previous.is_some() {
                    self.events.push(Event::Lifecycle {
                        peer: Self::peer_of(conn),
                        name,
                        direction: "import",
                        end: RingEnd::Reader,
                        gone: !attached,
                        cursor,
                    });
                }
                return work;
            }
        }
        let sink = &mut self.imports[i];
        if let Some(report) = &mut sink.reader_report {
            if !report.confirmed && now.duration_since(report.sent) > RESEND_TIMEOUT {
                report.sent = now;
                let report = *report;
                send_lifecycle(conn, stream | FROM_IMPORTER, RingEnd::Reader, &report);
            }
        }
        work
    }

    /// An exported SPSC stream's ends: attaches to the ring again once the copy has a reader
    /// again (`None`: attached, the stream must be offered again), reports the writer's
    /// comings and goings, repeats an unconfirmed report.
    fn export_lifecycle(&mut self, conn: &mut Conn, e: usize, now: Instant) -> Option<usize> {
        let export = &mut conn.exports[e];
        let stream = export.stream;
        let source = &mut self.exports[export.source];
        if source.streaming_to.as_ref().is_none_or(|s| s.1 != conn.id) {
            return Some(0);
        }
        let mut change = None;
        match &mut source.consumer {
            None => {
                if !source.reader_gone && now >= source.next_attach {
                    source.next_attach = now + LIFECYCLE_CHECK;
                    // A local reader may hold the ring meanwhile: then try again later.
                    if let Some(Ok(mut consumer)) = source.segment.as_ref().map(Segment::consumer) {
                        consumer.hold_reads(true);
                        source.consumer = Some(consumer);
                        export.sent_ends.clear();
                        export.writer_report = None;
                        return None;
                    }
                }
            }
            Some(consumer) => {
                // A record after the writer was reported gone: a new writer; say so before the
                // record goes out.
                let reported_gone = export.writer_report.is_some_and(|r| !r.attached);
                if now >= export.next_check || (reported_gone && consumer.check_record().is_ok()) {
                    export.next_check = now + LIFECYCLE_CHECK;
                    // Liveness first, then the ring: what a writer committed before it went is
                    // visible once it is seen gone.
                    let gone = consumer.peer() == PeerState::Gone
                        && export.sent_ends.is_empty()
                        && matches!(
                            consumer.check_record(),
                            Err(TryReadError::Empty | TryReadError::PeerGone)
                        );
                    let cursor = if gone {
                        consumer.released_position()
                    } else {
                        consumer.read_position()
                    };
                    let previous = export.writer_report;
                    if previous.is_none_or(|r| r.attached == gone || (gone && r.cursor != cursor)) {
                        change = Some((gone, cursor, previous));
                    }
                }
            }
        }
        if let Some((gone, cursor, previous)) = change {
            let name = self.exports[conn.exports[e].source].name.clone();
            let report = self.new_report(!gone, cursor, now);
            conn.exports[e].writer_report = Some(report);
            send_lifecycle(conn, stream, RingEnd::Writer, &report);
            if gone || previous.is_some_and(|r| !r.attached) {
                self.events.push(Event::Lifecycle {
                    peer: Self::peer_of(conn),
                    name,
                    direction: "export",
                    end: RingEnd::Writer,
                    gone,
                    cursor,
                });
            }
            return Some(1);
        }
        let export = &mut conn.exports[e];
        if let Some(report) = &mut export.writer_report {
            if !report.confirmed && now.duration_since(report.sent) > RESEND_TIMEOUT {
                report.sent = now;
                let report = *report;
                send_lifecycle(conn, stream, RingEnd::Writer, &report);
            }
        }
        Some(0)
    }
}

impl Bridge {
    /// Offers what waits for its segment, and sends what the window allows.
    fn pump_exports(&mut self, conn: &mut Conn, now: Instant) -> Result<usize, LinkError> {
        let mut work = 0;
        let mut e = 0;
        while e < conn.exports.len() {
            if conn.exports[e].far_version == NOT_OFFERED {
                if self.exports[conn.exports[e].source].segment.is_some() {
                    if !self.offer(conn, e) {
                        conn.exports.remove(e);
                        continue;
                    }
                    work += 1;
                }
                e += 1;
                continue;
            }
            if !conn.exports[e].ready {
                // Offered, no answer: the offer or the answer was lost (a faulty link); offer
                // again (the importer answers every offer).
                if now.duration_since(conn.exports[e].last_progress)
                    > resend_timeout(conn.exports[e].backoff)
                {
                    conn.exports[e].last_progress = now;
                    conn.exports[e].backoff += 1;
                    if !self.offer(conn, e) {
                        conn.exports.remove(e);
                        continue;
                    }
                }
                e += 1;
                continue;
            }
            if conn.exports[e].kind == SegmentKind::SpscRing {
                match self.export_lifecycle(conn, e, now) {
                    Some(w) => work += w,
                    None => {
                        // Attached to the ring again (the copy has a reader again): offer the
                        // stream again, so that the importer's `Ready` says where it stands.
                        conn.exports[e].ready = false;
                        conn.exports[e].backoff = 0;
                        if !self.offer(conn, e) {
                            conn.exports.remove(e);
                            continue;
                        }
                        work += 1;
                        e += 1;
                        continue;
                    }
                }
            }
            // Control frames (acknowledgements to the peer's data) go first.
            if !conn.flush_control()? {
                break;
            }
            work += match conn.exports[e].kind {
                SegmentKind::SpscRing => self.pump_ring(conn, e, now)?,
                SegmentKind::BroadcastRing => self.pump_broadcast(conn, e, now)?,
                _ => self.pump_region(conn, e, now)?,
            };
            if let Some(reason) = conn.exports[e].broken.take() {
                let export = conn.exports.remove(e);
                let peer = Self::peer_of(conn);
                let name = self.exports[export.source].name.clone();
                self.refuse(conn, &peer, export.stream, &name, reason);
                continue;
            }
            e += 1;
        }
        Ok(work)
    }

    fn pump_ring(&mut self, conn: &mut Conn, e: usize, now: Instant) -> Result<usize, LinkError> {
        let window = self.window;
        let export = &mut conn.exports[e];
        let Some(consumer) = self.exports[export.source].consumer.as_mut() else {
            return Ok(0); // detached: the copy's reader is gone
        };
        if !export.sent_ends.is_empty()
            && now.duration_since(export.last_progress) > resend_timeout(export.backoff)
        {
            // No acknowledgement for a while: frames or acknowledgements were lost. Send
            // everything unacknowledged again, and where the stream starts.
            consumer.rewind();
            export.sent_ends.clear();
            export.last_progress = now;
            export.backoff += 1;
            self.stats.resends += 1;
            let start = consumer.released_position();
            let mut frame = Vec::new();
            if wire::encode(&mut frame, FrameType::Ready, export.stream, start, 1, &[]).is_ok()
                && !conn.link.send(&frame)?
            {
                return Ok(0);
            }
        }
        let mut work = 0;
        for _ in 0..4096 {
            if consumer
                .read_position()
                .wrapping_sub(consumer.released_position())
                >= window
            {
                break;
            }
            // Where the last record sent ended (a padding record may lie between it and the
            // read position, if a record was kept after the padding was skipped).
            let from = export
                .sent_ends
                .back()
                .copied()
                .unwrap_or(consumer.released_position());
            let stream = export.stream;
            match consumer.try_read() {
                Ok(record) => {
                    let to = record.end_position();
                    let len = wire::HEADER_LEN + 4 + record.len() + wire::TRAILER_LEN;
                    // Encoded straight into the link's send queue. A record always fits a
                    // frame (rings are smaller than frames may be).
                    let mut encoded = true;
                    let sent = conn.link.send_with(len, &mut |out| {
                        encoded = wire::encode_data(out, stream, from, to, record.kind(), &record)
                            .is_ok();
                    })?;
                    if sent && !encoded {
                        let len = record.len();
                        record.keep();
                        export.broken = Some(format!(
                            "a record of {len} bytes is larger than a bridge frame carries \
                             ({} bytes): mirror this ring with smaller records",
                            wire::MAX_RECORD
                        ));
                        break;
                    }
                    if !sent {
                        // The link is full: the record stays in the ring for the next poll.
                        record.keep();
                        break;
                    }
                }
                Err(TryReadError::Empty | TryReadError::PeerGone) => break,
                Err(TryReadError::Corrupt(c)) => {
                    // Nothing more can be read from this ring; the other streams go on.
                    export.broken = Some(format!("the exported ring is corrupt: {c}"));
                    break;
                }
            }
            let to = consumer.read_position();
            if export.sent_ends.is_empty() {
                export.last_progress = now;
            }
            export.sent_ends.push_back(to);
            self.stats.records_sent += 1;
            work += 1;
        }
        Ok(work)
    }

    fn pump_broadcast(
        &mut self,
        conn: &mut Conn,
        e: usize,
        now: Instant,
    ) -> Result<usize, LinkError> {
        let window = self.window;
        // Borrowed, not cloned: these run for every acknowledgement and every poll.
        let peer = conn.peer.as_deref().unwrap_or_default();
        let export = &mut conn.exports[e];
        let Some(feed) = self.exports[export.source]
            .feeds
            .iter_mut()
            .find(|f| f.peer == peer)
        else {
            return Ok(0);
        };
        if feed.send_next > 0
            && now.duration_since(export.last_progress) > resend_timeout(export.backoff)
        {
            // No acknowledgement for a while: send the unacknowledged records again, and
            // where the stream starts.
            feed.send_next = 0;
            export.last_progress = now;
            export.backoff += 1;
            self.stats.resends += 1;
            let mut frame = Vec::new();
            if wire::encode(
                &mut frame,
                FrameType::Ready,
                export.stream,
                feed.start(),
                1,
                &[],
            )
            .is_ok()
                && !conn.link.send(&frame)?
            {
                return Ok(0);
            }
        }
        let mut work = 0;
        // Read what the window allows into the resend buffer.
        while feed.unacked_bytes < window {
            let (number, kind, bytes) = match feed.reader.try_read() {
                Ok(record) => (record.number(), record.kind(), record.to_vec()),
                Err(BroadcastReadError::Lapped { lost }) => {
                    feed.lapped += lost;
                    continue;
                }
                Err(_) => break,
            };
            if number < feed.skip_below {
                continue;
            }
            feed.unacked_bytes += bytes.len() as u64;
            feed.unacked.push_back((number, kind, bytes));
        }
        let scratch = &mut conn.scratch;
        while let Some((number, kind, bytes)) = feed.unacked.get(feed.send_next) {
            scratch.clear();
            if wire::encode_data(scratch, export.stream, *number, number + 1, *kind, bytes).is_err()
            {
                export.broken = Some(format!(
                    "a record of {} bytes is larger than a bridge frame carries ({} bytes): \
                     mirror this ring with smaller records",
                    bytes.len(),
                    wire::MAX_RECORD
                ));
                break;
            }
            if !conn.link.send(scratch)? {
                break;
            }
            if feed.send_next == 0 {
                export.last_progress = now;
            }
            feed.send_next += 1;
            self.stats.records_sent += 1;
            work += 1;
        }
        Ok(work)
    }

    fn pump_region(&mut self, conn: &mut Conn, e: usize, now: Instant) -> Result<usize, LinkError> {
        let export = &mut conn.exports[e];
        let mut work = 0;
        while let Some(frame) = export.region_frames.front() {
            if !conn.link.send(frame)? {
                return Ok(work);
            }
            export.region_frames.pop_front();
            work += 1;
        }
        if export.in_flight.is_some() {
            if now.duration_since(export.last_progress) > resend_timeout(export.backoff) {
                export.backoff += 1;
                export.in_flight = None; // lost: send again below
                self.stats.resends += 1;
            } else {
                return Ok(work);
            }
        }
        let Some(reader) = &export.region else {
            return Ok(work);
        };
        let latest = reader.version();
        if latest == 0 || latest <= export.far_version {
            return Ok(work);
        }
        let size = reader.shape().size;
        let chunk = reader.shape().chunk_size;
        let base = export.far_version;
        // (version, base, [(offset, bytes)])
        let delta = if base > 0 {
            match reader.read_changes(base) {
                Ok(delta) => Some(delta),
                Err(ChangesError::TooOld { .. } | ChangesError::Ahead { .. }) => None,
                Err(ChangesError::Corrupt(c)) => {
                    export.broken = Some(format!("the exported region is corrupt: {c}"));
                    return Ok(work);
                }
            }
        } else {
            None
        };
        let stream = export.stream;
        let mut frames = VecDeque::new();
        let mut parts = 0u64;
        let mut total = 0u64;
        let mut push = |offset: usize, bytes: &[u8], version: u64, base: u64| {
            for (k, piece) in bytes.chunks(REGION_PART).enumerate() {
                let mut frame = Vec::new();
                // Parts are REGION_PART bytes at most: far below the frame limit.
                let _ = wire::encode_region_part(
                    &mut frame,
                    stream,
                    version,
                    base,
                    (offset + k * REGION_PART) as u64,
                    piece,
                );
                frames.push_back(frame);
                parts += 1;
                total += piece.len() as u64;
            }
        };
        let (version, base) = match delta {
            Some(delta) => {
                let version = delta.changes.to;
                // Runs of adjacent chunks go out as one part.
                let mut at = 0;
                // (offset in the region, from, to in `delta.bytes`)
                let mut run: Option<(usize, usize, usize)> = None;
                for &c in &delta.changes.chunks {
                    let offset = c * chunk;
                    let len = chunk.min(size.saturating_sub(offset));
                    match run {
                        Some((start, from, to)) if start + (to - from) == offset => {
                            run = Some((start, from, to + len));
                        }
                        _ => {
                            if let Some((start, from, to)) = run {
                                push(start, &delta.bytes[from..to], version, base);
                            }
                            run = Some((offset, at, at + len));
                        }
                    }
                    at += len;
                }
                if let Some((start, from, to)) = run {
                    push(start, &delta.bytes[from..to], version, base);
                }
                (version, base)
            }
            None => {
                let (version, bytes) = match reader.snapshot() {
                    Ok(snapshot) => snapshot,
                    Err(c) => {
                        export.broken = Some(format!("the exported region is corrupt: {c}"));
                        return Ok(work);
                    }
                };
                push(0, &bytes, version, 0);
                (version, 0)
            }
        };
        let mut end = Vec::new();
        let _ = wire::encode(
            &mut end,
            FrameType::RegionEnd,
            stream,
            version,
            base,
            &wire::RegionEndPayload {
                size: size as u64,
                parts,
                bytes: total,
            }
            .encode(),
        );
        frames.push_back(end);
        export.region_frames = frames;
        export.in_flight = Some(version);
        export.last_progress = now;
        while let Some(frame) = export.region_frames.front() {
            if !conn.link.send(frame)? {
                break;
            }
            export.region_frames.pop_front();
            work += 1;
        }
        Ok(work)
    }
}
