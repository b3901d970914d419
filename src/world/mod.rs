//! MPI-style message passing: ranks, tagged point-to-point messages, non-blocking requests and
//! collectives, over shmesh rings.
//!
//! A job is `size` processes, the ranks `0..size`, started by `shmesh run -n N -- PROGRAM`
//! (or by Open MPI's or MPICH's `mpirun`, or Slurm's `srun`): each calls [`World::init`],
//! which reads its rank from the environment and meets the others.
//!
//! ```no_run
//! use shmesh::world::{Op, Source, Tag, World};
//!
//! let mut world = World::init()?;
//! if world.rank() == 0 {
//!     world.send(1, 7, &String::from("hello"))?;
//! } else if world.rank() == 1 {
//!     let msg = world.recv::<String>(Source::Rank(0), Tag::Is(7))?;
//!     assert_eq!(msg.as_str(), "hello");
//! }
//! let mut total = [world.rank() as u64];
//! world.all_reduce(&mut total, Op::Sum)?;
//! # Ok::<(), shmesh::world::WorldError>(())
//! ```
//!
//! # How it works
//!
//! - **Rings.** Every ordered pair of ranks has its own SPSC ring, `world.<job>.<from>.<to>`,
//!   created by the receiver at [`World::init`]; the sender attaches to it. Messages between
//!   two ranks therefore arrive in the order they were sent, and each ring's liveness tokens
//!   say whether the rank at the other end is alive. `init` returns once every rank attached
//!   every ring (a dissemination barrier over them), so a rank that dies later is always seen.
//! - **Framing.** A message that fits one record (the fragment size, 64 KiB by default) is one
//!   record: a 16-byte envelope (tag, length) and the payload. A larger one is a first record
//!   with the envelope and continuation records; receivers stream the fragments straight into
//!   their buffer (or reduce them straight from the ring), so a message larger than the ring
//!   needs no intermediate copy.
//! - **Matching.** `recv` takes the first message that matches its source and tag. One that
//!   arrives first but does not match is copied into this rank's unexpected queue, in arrival
//!   order, and found there by later receives; a message that matches is read in place.
//! - **Progress and deadlock.** Non-blocking sends that do not fit the ring wait in a queue per
//!   destination and move on during every later call; a blocking send that finds the ring
//!   full keeps draining this rank's incoming rings while it waits, so two ranks sending large
//!   messages to each other at once never wait for each other.
//! - **Waiting.** A wait spins briefly (shorter when there are more ranks than CPUs), then
//!   sleeps on the futexes of all the rings involved at once ([`shmesh_ring::select`]), waking
//!   every 20 ms to check the ranks' liveness.
//! - **Failures.** An operation that needs a rank whose process died returns
//!   [`WorldError::PeerGone`] within about 20 ms of its death: a receive from it (once what it
//!   sent is read), a send to it that waits for ring space (a send that finds room is buffered
//!   in the ring and returns `Ok`, as an MPI eager send does), and every collective (a collective needs every rank, so a
//!   death anywhere fails it on every rank, and the collectives after it too). A receive from
//!   any source reports each death once and otherwise goes on with the ranks alive.
//!   Point-to-point messages between the ranks alive keep working.
//!
//! The collectives and their algorithms are listed on [`World::barrier`] and its siblings.

mod collective;
pub mod element;
pub mod env;
mod error;
pub mod frame;
mod request;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::{Duration, Instant};

use rkyv::rancor;
use rkyv::ser::allocator::Arena;
use rkyv::ser::sharing::Share;
use rkyv::ser::{Positional, Serializer};
use rkyv::util::AlignedVec;
use rkyv::{Archive, Archived};
use shmesh_ring::select::{self, Interest};
use shmesh_ring::spsc::MappedRecord;
use shmesh_ring::{
    Consumer, PeerState, Producer, Segment, SegmentBuilder, SegmentError, ShmMemory, TryClaimError,
    TryReadError,
};

use crate::channel::writer::{CountingWriter, SliceWriter};
use crate::channel::Message as Wire;

pub use element::{Element, Op};
pub use env::Identity;
pub use error::WorldError;
use frame::{
    envelope, Assembled, Assembly, Frame, FrameError, ENVELOPE, KIND_ABORT, KIND_FIN, KIND_FIRST,
    KIND_MORE, KIND_WHOLE,
};
pub use request::{Completion, OwnedMessage, Request};

/// Tags with this bit belong to the collectives.
const COLLECTIVE: u32 = 1 << 31;
/// The smallest ring a world accepts: room for fragments of at least `MIN_FRAGMENT` bytes.
const MIN_RING: u64 = 4 * MIN_FRAGMENT as u64;
/// The smallest fragment a sender cuts to use a partly free ring.
const MIN_FRAGMENT: usize = 4096;
/// How long a sleeping wait lasts before it checks the ranks' liveness.
const PARK_SLICE: Duration = Duration::from_millis(20);
/// How often a spinning wait checks the ranks' liveness.
const LIVENESS_EVERY: Duration = Duration::from_millis(1);

/// Which sources a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Any rank.
    Any,
    /// This rank only.
    Rank(usize),
}

/// Which tags a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// Any user tag (never a collective's).
    Any,
    /// This tag only.
    Is(u32),
}

impl Tag {
    /// The largest user tag; the tags above it are the collectives'.
    pub const MAX: u32 = COLLECTIVE - 1;

    fn matches(self, tag: u32) -> bool {
        match self {
            Tag::Any => tag & COLLECTIVE == 0,
            Tag::Is(t) => t == tag,
        }
    }
}

impl Source {
    fn matches(self, rank: usize) -> bool {
        match self {
            Source::Any => true,
            Source::Rank(r) => r == rank,
        }
    }
}

/// Where a received message came from, its tag and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The sender's rank.
    pub source: usize,
    /// The tag it was sent with.
    pub tag: u32,
    /// The payload's length in bytes.
    pub len: usize,
}

/// How to build a [`World`]: [`World::builder`].
#[derive(Debug, Clone)]
pub struct WorldBuilder {
    identity: Option<Identity>,
    ring_capacity: u64,
    fragment: usize,
    join_timeout: Duration,
    spins: Option<u32>,
}

impl Default for WorldBuilder {
    fn default() -> Self {
        WorldBuilder {
            identity: None,
            ring_capacity: 1 << 20,
            fragment: 64 << 10,
            join_timeout: Duration::from_secs(60),
            spins: None,
        }
    }
}

impl WorldBuilder {
    /// This rank's identity, instead of reading it from the environment (tests, embedding).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Capacity in bytes of each ring this rank receives on (one per other rank): a power of
    /// two, 1 MiB by default. Every rank of a job must use the same.
    pub fn ring_capacity(mut self, bytes: u64) -> Self {
        self.ring_capacity = bytes;
        self
    }

    /// The largest record a message is cut into (64 KiB by default; at most half the ring).
    pub fn fragment(mut self, bytes: usize) -> Self {
        self.fragment = bytes;
        self
    }

    /// How long [`build`](Self::build) waits for the other ranks (60 s by default; the
    /// environment variable `SHMESH_JOIN_TIMEOUT`, in seconds, overrides it).
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// How many times a wait polls before it sleeps (by default 2000, or 50 when the job has
    /// more ranks than this machine has CPUs; the environment variable `SHMESH_SPINS`
    /// overrides it).
    pub fn spins(mut self, spins: u32) -> Self {
        self.spins = Some(spins);
        self
    }

    /// Joins the job: makes this rank's incoming rings, attaches to the other ranks' and
    /// waits until every rank did the same.
    ///
    /// # Errors
    ///
    /// [`WorldError::Environment`] (no or a malformed identity), `Rendezvous` (a rank did not
    /// come in time), `Segment`/`Attach` (a ring could not be made or opened: a job id still in
    /// use by another job, or a full /dev/shm), `PeerGone` (a rank died while joining).
    pub fn build(self) -> Result<World, WorldError> {
        let id = match self.identity {
            Some(id) => id,
            None => env::from_env()?,
        };
        let join_timeout = std::env::var("SHMESH_JOIN_TIMEOUT")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(self.join_timeout);
        shmesh_ring::spsc::check_capacity(self.ring_capacity).map_err(|source| {
            WorldError::Attach {
                name: ring_name(&id.job, 0, 0),
                source,
            }
        })?;
        if self.ring_capacity < MIN_RING {
            return Err(WorldError::Environment(format!(
                "a world ring of {} bytes is too small: use at least {MIN_RING} bytes",
                self.ring_capacity
            )));
        }
        let max_fragment = shmesh_ring::spsc::max_payload(self.ring_capacity) as usize - ENVELOPE;
        let fragment = (self
            .fragment
            .clamp(MIN_FRAGMENT, max_fragment.max(MIN_FRAGMENT))
            / 64)
            .max(1)
            * 64;
        let fragment = fragment.min(max_fragment / 64 * 64);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spins = std::env::var("SHMESH_SPINS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .or(self.spins)
            .unwrap_or(if id.size > cpus { 50 } else { 2000 });
        let mut world = World {
            peers: (0..id.size).map(|_| Peer::default()).collect(),
            inbox: Inbox::default(),
            next_request: 1,
            coll_seq: 0,
            broken: None,
            reported: vec![false; id.size],
            spins,
            fragment,
            held: AlignedVec::new(),
            arena: Arena::new(),
            hint: 256,
            tmp: Vec::new(),
            deadline: None,
            next_any: 0,
            moved: false,
            id,
        };
        world.join(self.ring_capacity, join_timeout)?;
        Ok(world)
    }
}

/// The name of the ring from rank `from` to rank `to` of `job`.
pub fn ring_name(job: &str, from: usize, to: usize) -> String {
    format!("{}{from}.{to}", crate::run::job_segment_prefix(job))
}

/// One other rank, as this rank sees it.
#[derive(Default)]
struct Peer {
    /// The ring from it to us (we created it).
    rx: Option<Consumer<ShmMemory>>,
    /// The ring from us to it.
    tx: Option<Producer<ShmMemory>>,
    /// The segments, kept mapped while the ends live.
    segments: Vec<Segment>,
    /// Non-blocking sends to it that did not fit yet, in order.
    outbox: VecDeque<Outgoing>,
    /// A message from it being assembled by the unexpected path.
    partial: Option<Assembly>,
    /// It left the world in order (its FIN record was read).
    finished: bool,
    /// It is gone and its ring was found empty: waits no longer sleep on its rings.
    departed: bool,
    /// A message from it was abandoned half-read (a collective failed): its remaining
    /// fragments are skipped as they come.
    discard: bool,
}

/// The request id of queued bytes no request waits for (the rest of an abandoned message).
const NO_REQUEST: u64 = 0;

/// A send in progress: how much of its payload is in the ring.
#[derive(Debug, Default, Clone, Copy)]
struct Outflow {
    started: bool,
    off: usize,
}

/// A non-blocking send that waits for ring space.
struct Outgoing {
    request: u64,
    tag: u32,
    data: Vec<u8>,
    flow: Outflow,
}

/// A whole message held by this rank (unexpected, or completing a request).
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) source: usize,
    pub(crate) tag: u32,
    pub(crate) bytes: AlignedVec,
}

/// Receives posted with [`World::irecv`], waiting for a message.
struct Posted {
    request: u64,
    source: Source,
    tag: Tag,
}

/// What a request is waiting for, or how it ended.
pub(crate) enum ReqState {
    /// A send queued for `dest`.
    Sending(usize),
    /// A send whose payload is all in the ring.
    Sent,
    /// A posted receive.
    Receiving(Source),
    /// A receive that got its message.
    Received(Envelope),
    /// It failed.
    Failed(WorldError),
}

/// Messages that arrived before a receive asked for them, and the receives waiting for one.
#[derive(Default)]
struct Inbox {
    unexpected: VecDeque<Envelope>,
    posted: VecDeque<Posted>,
    requests: HashMap<u64, ReqState>,
}

impl Inbox {
    /// Hands a whole message to the oldest posted receive it matches, or queues it.
    fn deliver(&mut self, env: Envelope) {
        if let Some(i) = self
            .posted
            .iter()
            .position(|p| p.source.matches(env.source) && p.tag.matches(env.tag))
        {
            let posted = self.posted.remove(i).expect("index from position");
            self.requests
                .insert(posted.request, ReqState::Received(env));
        } else {
            self.unexpected.push_back(env);
        }
    }

    /// Whether a posted receive would take a message from `source` with `tag`.
    fn posted_wants(&self, source: usize, tag: u32) -> bool {
        !self.posted.is_empty()
            && self
                .posted
                .iter()
                .any(|p| p.source.matches(source) && p.tag.matches(tag))
    }

    /// Takes the oldest queued message that matches.
    fn take(&mut self, source: Source, tag: Tag) -> Option<Envelope> {
        if self.unexpected.is_empty() {
            return None;
        }
        let i = self
            .unexpected
            .iter()
            .position(|e| source.matches(e.source) && tag.matches(e.tag))?;
        self.unexpected.remove(i)
    }
}

/// What a wait must watch for deaths.
#[derive(Debug, Clone, Copy)]
enum Needs {
    /// This rank (a receive from it, a send to it).
    Rank(usize),
    /// Any source: report each death once.
    AnySource,
    /// Every rank's life, and these partners' rings (a step of a collective: the rank it
    /// receives from and the one it sends to).
    Collective {
        /// The rank this step receives from.
        from: Option<usize>,
        /// The rank this step still sends to.
        to: Option<usize>,
    },
    /// Nothing (a request test).
    Nothing,
}

/// The state of one wait: spinning, then sleeping.
struct Spin {
    iter: u32,
    next_check: Option<Instant>,
}

impl Spin {
    fn new() -> Self {
        Spin {
            iter: 0,
            next_check: None,
        }
    }
}

/// One rank of a job: its place (`rank`, `size`) and the rings to every other rank.
///
/// Made by [`World::init`] (or [`World::builder`]); dropping it leaves the job in order (the
/// other ranks see this rank as finished, not dead). Not `Sync`: one thread uses a world.
pub struct World {
    id: Identity,
    peers: Vec<Peer>,
    inbox: Inbox,
    next_request: u64,
    coll_seq: u32,
    /// A collective failed because this rank died: every later collective fails too.
    broken: Option<usize>,
    /// Deaths a receive from any source reported already.
    reported: Vec<bool>,
    spins: u32,
    fragment: usize,
    /// The private copy a [`Message`] is viewing.
    held: AlignedVec,
    arena: Arena,
    /// The size of recent typed messages, to claim ring space for the next.
    hint: usize,
    /// Scratch bytes of the collectives.
    tmp: Vec<u8>,
    /// When the current wait gives up (joining only).
    deadline: Option<Instant>,
    /// Where a receive from any source starts looking.
    next_any: usize,
    /// A record was moved out of a ring since this was last cleared (see `idle`).
    moved: bool,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("job", &self.id.job)
            .field("rank", &self.id.rank)
            .field("size", &self.id.size)
            .field("unexpected", &self.inbox.unexpected.len())
            .field("posted", &self.inbox.posted.len())
            .finish()
    }
}

/// A message received in place: derefs to `&Archived<T>`, in the sender's ring (or in this
/// rank's private copy for a message that arrived early or in fragments). Holding it holds
/// the world: drop it (or copy what you need) before the next call.
pub struct Message<'w, T: Archive> {
    status: Status,
    view: View<'w, Archived<T>>,
    _t: PhantomData<fn() -> T>,
}

enum View<'w, A> {
    Ring(MappedRecord<'w, ShmMemory, A>),
    Held(&'w A),
}

impl<T: Archive> Message<'_, T> {
    /// Who sent it, with which tag, how long.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The sender's rank.
    pub fn source(&self) -> usize {
        self.status.source
    }

    /// The tag.
    pub fn tag(&self) -> u32 {
        self.status.tag
    }

    /// Deserializes the message into an owned `T`.
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

impl<T: Archive> Deref for Message<'_, T> {
    type Target = Archived<T>;

    fn deref(&self) -> &Archived<T> {
        match &self.view {
            View::Ring(record) => record,
            View::Held(view) => view,
        }
    }
}

impl<T: Archive> fmt::Debug for Message<'_, T>
where
    Archived<T>: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("status", &self.status)
            .field("value", &&**self)
            .finish()
    }
}

/// A framing error of rank `rank`'s ring as a world error.
fn protocol(rank: usize, e: FrameError) -> WorldError {
    WorldError::Protocol {
        rank,
        what: e.to_string(),
    }
}

fn ring_error(source: usize, e: TryReadError) -> Option<WorldError> {
    match e {
        TryReadError::Empty => None,
        TryReadError::PeerGone => Some(WorldError::PeerGone(source)),
        TryReadError::Corrupt(cause) => Some(WorldError::Corrupt {
            rank: source,
            cause,
        }),
    }
}

/// Writes as much of a message as the ring takes now; `Ok(true)` once all of it is in.
fn write_some(
    tx: &mut Producer<ShmMemory>,
    dest: usize,
    tag: u32,
    data: &[u8],
    flow: &mut Outflow,
    fragment: usize,
) -> Result<bool, WorldError> {
    loop {
        if flow.started && flow.off == data.len() {
            return Ok(true);
        }
        let (head, want) = if flow.started {
            (0, (data.len() - flow.off).min(fragment))
        } else if data.len() <= fragment {
            (ENVELOPE, data.len())
        } else {
            (ENVELOPE, fragment)
        };
        let left = data.len() - flow.off;
        let size = match tx.try_claim(head + want) {
            Ok(grant) => {
                fill_record(grant, head, tag, data, flow);
                continue;
            }
            Err(TryClaimError::Full { free, .. }) => {
                // Use what is free for a fragment, if it is worth a record.
                let room = (free as usize).saturating_sub(head + 64) / 64 * 64;
                if room < MIN_FRAGMENT.min(left) || (!flow.started && data.len() <= fragment) {
                    return Ok(false);
                }
                head + room.min(want)
            }
            Err(e) => return Err(claim_error(dest, e)),
        };
        match tx.try_claim(size) {
            Ok(grant) => fill_record(grant, head, tag, data, flow),
            Err(TryClaimError::Full { .. }) => return Ok(false),
            Err(e) => return Err(claim_error(dest, e)),
        }
    }
}

/// Writes the next record of a message into `grant` (its envelope first if `head` is) and
/// commits it.
fn fill_record(
    mut grant: shmesh_ring::Grant<'_, ShmMemory>,
    head: usize,
    tag: u32,
    data: &[u8],
    flow: &mut Outflow,
) {
    let n = grant.len() - head;
    if flow.started {
        grant.set_kind(KIND_MORE);
    } else {
        grant[..ENVELOPE].copy_from_slice(&envelope(tag, data.len() as u64));
        grant.set_kind(if n == data.len() {
            KIND_WHOLE
        } else {
            KIND_FIRST
        });
    }
    grant[head..head + n].copy_from_slice(&data[flow.off..flow.off + n]);
    grant.commit(head + n);
    flow.started = true;
    flow.off += n;
}

/// The claim that lets [`write_some`] go on: the whole message if it fits one record,
/// otherwise a fragment of at least [`MIN_FRAGMENT`] (or what is left), with the slack its
/// room computation keeps.
fn space_needed(flow: &Outflow, len: usize, fragment: usize) -> usize {
    if !flow.started && len <= fragment {
        ENVELOPE + len
    } else {
        let head = if flow.started { 0 } else { ENVELOPE };
        head + MIN_FRAGMENT.min(len - flow.off) + 64
    }
}

fn claim_error(dest: usize, e: TryClaimError) -> WorldError {
    match e {
        TryClaimError::Corrupt(cause) => WorldError::Corrupt { rank: dest, cause },
        // Full is handled by the callers; TooLarge cannot happen (fragments fit the ring).
        _ => WorldError::PeerGone(dest),
    }
}

/// Where a streamed receive puts the message: called with (offset, bytes, total length).
pub(crate) type Sink<'a> = dyn FnMut(u64, &[u8], u64) -> Result<(), WorldError> + 'a;

/// A receive in progress from one source with one tag, streamed to a sink.
#[derive(Debug, Default)]
struct Inflow {
    started: bool,
    total: u64,
    got: u64,
    /// The sink refused the message (too long for it, say): the rest of it is still read,
    /// so that the next message starts where it should, and this is returned at its end.
    failed: Option<WorldError>,
}

impl Inflow {
    /// Hands bytes to the sink unless it failed already; keeps its failure.
    fn feed(&mut self, sink: &mut Sink<'_>, off: u64, bytes: &[u8], total: u64) {
        if self.failed.is_none() {
            if let Err(e) = sink(off, bytes, total) {
                self.failed = Some(e);
            }
        }
    }

    /// The end of the message: the sink's failure, if it had one.
    fn done(&mut self) -> Result<Step, WorldError> {
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(Step::Done),
        }
    }
}

/// What one step of a stream did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Idle,
    Progress,
    Done,
}

impl World {
    /// Joins the job whose identity the environment gives (see [`env::identity`] for the
    /// variables read), with the default settings: `World::builder().build()`.
    ///
    /// # Errors
    ///
    /// As [`WorldBuilder::build`].
    pub fn init() -> Result<World, WorldError> {
        World::builder().build()
    }

    /// A builder to set ring capacity, fragment size, join timeout or the identity.
    pub fn builder() -> WorldBuilder {
        WorldBuilder::default()
    }

    /// This rank, in `0..size()`.
    pub fn rank(&self) -> usize {
        self.id.rank
    }

    /// How many ranks the job has.
    pub fn size(&self) -> usize {
        self.id.size
    }

    /// The job id the ranks share.
    pub fn job(&self) -> &str {
        &self.id.job
    }

    /// Which launcher started this rank (`shmesh`, `openmpi`, `pmi`, `slurm`, `singleton`).
    pub fn launcher(&self) -> &'static str {
        self.id.launcher
    }

    /// Whether `rank`'s process is alive (this rank always is). A rank that left the world in
    /// order or died is not.
    pub fn is_alive(&self, rank: usize) -> bool {
        if rank == self.id.rank {
            return true;
        }
        match self.peers.get(rank).and_then(|p| p.rx.as_ref()) {
            Some(rx) => rx.peer() == PeerState::Alive,
            None => false,
        }
    }

    fn check_rank(&self, rank: usize) -> Result<(), WorldError> {
        if rank < self.id.size {
            Ok(())
        } else {
            Err(WorldError::NoSuchRank {
                rank,
                size: self.id.size,
            })
        }
    }

    fn check_tag(tag: u32) -> Result<(), WorldError> {
        if tag & COLLECTIVE == 0 {
            Ok(())
        } else {
            Err(WorldError::ReservedTag(tag))
        }
    }

    fn check_source(&self, source: Source) -> Result<(), WorldError> {
        match source {
            Source::Rank(r) => self.check_rank(r),
            Source::Any => Ok(()),
        }
    }

    fn check_tag_match(tag: Tag) -> Result<(), WorldError> {
        match tag {
            Tag::Is(t) => Self::check_tag(t),
            Tag::Any => Ok(()),
        }
    }

    // ---- joining and leaving ---------------------------------------------------------------

    fn join(&mut self, capacity: u64, timeout: Duration) -> Result<(), WorldError> {
        let me = self.id.rank;
        let deadline = Instant::now() + timeout;
        // A ring between two ranks of one host is made by its reader. Across hosts it is made
        // by its writer on the writer's host, and the bridges mirror it to the reader's host,
        // where the importing bridge makes the copy the reader opens.
        let local = |r: usize| match &self.id.placement {
            None => true,
            Some(p) => p.host_of(r) == p.host_of(me),
        };
        let mut make = Vec::new();
        let mut open = Vec::new();
        for other in (0..self.id.size).filter(|&r| r != me) {
            if local(other) {
                make.push((other, me));
                open.push((me, other));
            } else {
                make.push((me, other));
                open.push((other, me));
            }
        }
        for (from, to) in make {
            let name = ring_name(&self.id.job, from, to);
            let segment = SegmentBuilder::new(&name)
                .capacity(capacity)
                .create()
                .map_err(|source| WorldError::Segment {
                    name: name.clone(),
                    source,
                })?;
            self.attach(segment, from, to, name)?;
        }
        for (from, to) in open {
            let name = ring_name(&self.id.job, from, to);
            let other = if from == me { to } else { from };
            let mut pause = Duration::from_micros(200);
            let segment = loop {
                match SegmentBuilder::new(&name).open() {
                    Ok(segment) => break segment,
                    Err(SegmentError::NotFound { .. }) if Instant::now() < deadline => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(20));
                    }
                    Err(SegmentError::NotFound { .. }) => {
                        return Err(WorldError::Rendezvous {
                            rank: other,
                            job: self.id.job.clone(),
                            waited: timeout,
                        })
                    }
                    Err(source) => return Err(WorldError::Segment { name, source }),
                }
            };
            self.attach(segment, from, to, name)?;
        }
        // Every rank attaches all its producers before it enters this barrier, so once it
        // is through, every ring has both ends and a death is seen as one.
        let tag = self.next_collective_tag();
        self.barrier_until(tag, Some(deadline))
            .map_err(|e| match e {
                WorldError::Timeout(_) => {
                    let rank = (0..self.id.size)
                        .find(|&r| {
                            r != me
                                && self.peers[r].rx.as_ref().map(|rx| rx.peer())
                                    == Some(PeerState::NotYet)
                        })
                        .unwrap_or(me);
                    WorldError::Rendezvous {
                        rank,
                        job: self.id.job.clone(),
                        waited: timeout,
                    }
                }
                e => e,
            })
    }

    /// Takes this rank's end of the ring `from → to` in `segment`.
    fn attach(
        &mut self,
        segment: Segment,
        from: usize,
        to: usize,
        name: String,
    ) -> Result<(), WorldError> {
        if from == self.id.rank {
            let tx = segment
                .producer()
                .map_err(|source| WorldError::Attach { name, source })?;
            self.peers[to].tx = Some(tx);
            self.peers[to].segments.push(segment);
        } else {
            let rx = segment
                .consumer()
                .map_err(|source| WorldError::Attach { name, source })?;
            self.peers[from].rx = Some(rx);
            self.peers[from].segments.push(segment);
        }
        Ok(())
    }

    // ---- point to point ----------------------------------------------------------------------

    /// Sends `value` to `dest` with `tag`, serialized with rkyv straight into the ring when it
    /// fits one fragment; returns once it is all in the ring (not when it is received).
    ///
    /// Messages from one rank to another with the same tag arrive in the order sent.
    ///
    /// # Errors
    ///
    /// `NoSuchRank`, `ReservedTag`, `PeerGone(dest)` (the destination died, or left),
    /// `Serialize`, `Corrupt`.
    pub fn send<T: Wire>(&mut self, dest: usize, tag: u32, value: &T) -> Result<(), WorldError> {
        self.check_rank(dest)?;
        Self::check_tag(tag)?;
        if dest != self.id.rank
            && self.peers[dest].outbox.is_empty()
            && self.try_send_in_place(dest, tag, value)?
        {
            return Ok(());
        }
        let bytes = self.serialize(value)?;
        self.send_bytes_tagged(dest, tag, &bytes, Needs::Rank(dest))
    }

    /// Serializes `value` into a claim of the ring to `dest`, if one large enough is free now.
    fn try_send_in_place<T: Wire>(
        &mut self,
        dest: usize,
        tag: u32,
        value: &T,
    ) -> Result<bool, WorldError> {
        let want = (self.hint + self.hint / 8 + 64).min(self.fragment);
        let tx = self.peers[dest].tx.as_mut().expect("rings to other ranks");
        let mut grant = match tx.try_claim(ENVELOPE + want) {
            Ok(grant) => grant,
            Err(TryClaimError::Full { .. }) => return Ok(false),
            Err(e) => return Err(claim_error(dest, e)),
        };
        let mut serializer = Serializer::new(
            SliceWriter::new(&mut grant[ENVELOPE..]),
            self.arena.acquire(),
            Share::new(),
        );
        let outcome = rkyv::api::serialize_using::<_, rancor::Error>(value, &mut serializer);
        let overflowed = serializer.writer.overflowed();
        let len = serializer.writer.pos();
        drop(serializer);
        match outcome {
            Ok(_) if !overflowed => {
                grant[..ENVELOPE].copy_from_slice(&envelope(tag, len as u64));
                grant.set_kind(KIND_WHOLE);
                grant.commit(ENVELOPE + len);
                self.hint = len.max(self.hint - self.hint / 16);
                Ok(true)
            }
            // Too large for the claim: the caller serializes it on the side (dropping the
            // grant aborts the claim).
            _ if overflowed => Ok(false),
            Err(e) => Err(WorldError::Serialize(e)),
            Ok(_) => unreachable!("handled above"),
        }
    }

    /// Serializes `value` into a fresh buffer of its exact size.
    fn serialize<T: Wire>(&mut self, value: &T) -> Result<Vec<u8>, WorldError> {
        let mut counter = Serializer::new(
            CountingWriter::default(),
            self.arena.acquire(),
            Share::new(),
        );
        rkyv::api::serialize_using::<_, rancor::Error>(value, &mut counter)
            .map_err(WorldError::Serialize)?;
        let size = counter.writer.pos();
        drop(counter);
        self.hint = size;
        let mut bytes = vec![0u8; size];
        let mut serializer = Serializer::new(
            SliceWriter::new(&mut bytes),
            self.arena.acquire(),
            Share::new(),
        );
        rkyv::api::serialize_using::<_, rancor::Error>(value, &mut serializer)
            .map_err(WorldError::Serialize)?;
        Ok(bytes)
    }

    /// Sends a slice of numbers (or bytes) to `dest` with `tag`: copied once, into the ring.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_slice<E: Element>(
        &mut self,
        dest: usize,
        tag: u32,
        data: &[E],
    ) -> Result<(), WorldError> {
        self.check_rank(dest)?;
        Self::check_tag(tag)?;
        self.send_bytes_tagged(dest, tag, bytemuck::cast_slice(data), Needs::Rank(dest))
    }

    /// The blocking send: after the queued sends to `dest`, streams `data` into the ring,
    /// draining this rank's incoming rings while it waits for space.
    fn send_bytes_tagged(
        &mut self,
        dest: usize,
        tag: u32,
        data: &[u8],
        needs: Needs,
    ) -> Result<(), WorldError> {
        if dest == self.id.rank {
            let mut bytes = AlignedVec::with_capacity(data.len());
            bytes.extend_from_slice(data);
            self.inbox.deliver(Envelope {
                source: dest,
                tag,
                bytes,
            });
            return Ok(());
        }
        let mut flow = Outflow::default();
        let mut spin = Spin::new();
        loop {
            let waiting = !self.peers[dest].outbox.is_empty() && {
                self.push_outbox(dest);
                !self.peers[dest].outbox.is_empty()
            };
            if !waiting {
                let fragment = self.fragment;
                let tx = self.peers[dest].tx.as_mut().expect("rings to other ranks");
                if write_some(tx, dest, tag, data, &mut flow, fragment)? {
                    return Ok(());
                }
            }
            let want = space_needed(&flow, data.len(), self.fragment);
            self.idle(&mut spin, needs, None, Some((dest, want)))?;
        }
    }

    /// Receives the next message from `source` with `tag`, read in place and validated as `T`.
    ///
    /// # Errors
    ///
    /// `NoSuchRank`, `ReservedTag`, `PeerGone(source)` (the source died or left and everything
    /// it sent was read; with [`Source::Any`], once per rank that died, and when every other
    /// rank is gone), `Invalid` (the message is not a valid `T`: it is consumed), `Protocol`,
    /// `Corrupt`.
    pub fn recv<T: Wire>(
        &mut self,
        source: Source,
        tag: Tag,
    ) -> Result<Message<'_, T>, WorldError> {
        self.check_source(source)?;
        Self::check_tag_match(tag)?;
        let found = self.find(source, tag)?;
        let type_name = std::any::type_name::<T>();
        match found {
            Found::Held(env) => {
                let status = Status {
                    source: env.source,
                    tag: env.tag,
                    len: env.bytes.len(),
                };
                self.held = env.bytes;
                let view =
                    rkyv::access::<Archived<T>, rancor::Error>(&self.held).map_err(|cause| {
                        WorldError::Invalid {
                            rank: status.source,
                            tag: status.tag,
                            type_name,
                            cause,
                        }
                    })?;
                Ok(Message {
                    status,
                    view: View::Held(view),
                    _t: PhantomData,
                })
            }
            Found::Ring(src, tag) => {
                let rx = self.peers[src].rx.as_mut().expect("rings from other ranks");
                let record = rx.try_read().map_err(|e| {
                    ring_error(src, e).unwrap_or(WorldError::Protocol {
                        rank: src,
                        what: "a record seen vanished".into(),
                    })
                })?;
                // Read again: the peer may have rewritten the record since `find` looked.
                let len = match frame::decode(record.kind(), &record) {
                    Ok(Frame::Whole { tag: t, body }) if t == tag => body.len(),
                    Ok(_) => {
                        return Err(WorldError::Protocol {
                            rank: src,
                            what: "a record changed while it was being read".into(),
                        })
                    }
                    Err(e) => return Err(protocol(src, e)),
                };
                let view = record
                    .map(|bytes| {
                        let body = bytes.get(ENVELOPE..).ok_or_else(|| {
                            <rancor::Error as rancor::Source>::new(std::io::Error::other(
                                "record shorter than its envelope",
                            ))
                        })?;
                        rkyv::access::<Archived<T>, rancor::Error>(body)
                    })
                    .map_err(|cause| WorldError::Invalid {
                        rank: src,
                        tag,
                        type_name,
                        cause,
                    })?;
                Ok(Message {
                    status: Status {
                        source: src,
                        tag,
                        len,
                    },
                    view: View::Ring(view),
                    _t: PhantomData,
                })
            }
        }
    }

    /// Receives the next message from `source` with `tag` into `buf` (numbers or bytes),
    /// streaming its fragments straight from the ring.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), and `Truncated` (the message is longer than `buf`: it is
    /// consumed) or `Misfit` (not a whole number of elements).
    pub fn recv_slice_into<E: Element>(
        &mut self,
        source: Source,
        tag: Tag,
        buf: &mut [E],
    ) -> Result<Status, WorldError> {
        self.check_source(source)?;
        Self::check_tag_match(tag)?;
        let (src, tag) = match self.find_stream(source, tag)? {
            Ok(env) => {
                let status = Status {
                    source: env.source,
                    tag: env.tag,
                    len: env.bytes.len(),
                };
                fill::<E>(buf, &env.bytes, status)?;
                return Ok(status);
            }
            Err(key) => key,
        };
        let room = std::mem::size_of_val(buf) as u64;
        let out: &mut [u8] = bytemuck::cast_slice_mut(buf);
        let mut total = 0;
        let mut sink = |off: u64, bytes: &[u8], all: u64| -> Result<(), WorldError> {
            total = all;
            if all > room {
                return Err(WorldError::Truncated {
                    rank: src,
                    tag,
                    len: all,
                    room,
                });
            }
            out[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
            Ok(())
        };
        self.stream_in(src, tag, &mut sink, Needs::Rank(src))?;
        if total % std::mem::size_of::<E>() as u64 != 0 {
            return Err(WorldError::Misfit {
                rank: src,
                tag,
                len: total,
                size: std::mem::size_of::<E>(),
            });
        }
        Ok(Status {
            source: src,
            tag,
            len: total as usize,
        })
    }

    /// Receives the next message from `source` with `tag` as a vector of elements.
    ///
    /// # Errors
    ///
    /// As [`recv_slice_into`](Self::recv_slice_into), but never `Truncated`.
    pub fn recv_vec<E: Element>(
        &mut self,
        source: Source,
        tag: Tag,
    ) -> Result<(Status, Vec<E>), WorldError> {
        self.check_source(source)?;
        Self::check_tag_match(tag)?;
        let env = match self.find_stream(source, tag)? {
            Ok(env) => env,
            Err((src, tag)) => {
                let mut bytes = AlignedVec::new();
                let mut sink = |_off: u64, chunk: &[u8], _all: u64| -> Result<(), WorldError> {
                    bytes.extend_from_slice(chunk);
                    Ok(())
                };
                self.stream_in(src, tag, &mut sink, Needs::Rank(src))?;
                Envelope {
                    source: src,
                    tag,
                    bytes,
                }
            }
        };
        let status = Status {
            source: env.source,
            tag: env.tag,
            len: env.bytes.len(),
        };
        let size = std::mem::size_of::<E>();
        if env.bytes.len() % size != 0 {
            return Err(WorldError::Misfit {
                rank: status.source,
                tag: status.tag,
                len: status.len as u64,
                size,
            });
        }
        let mut out = vec![E::zeroed(); env.bytes.len() / size];
        bytemuck::cast_slice_mut::<E, u8>(&mut out).copy_from_slice(&env.bytes);
        Ok((status, out))
    }

    /// Finds the next message for a receive: a held one, or the head record of a ring (a whole
    /// message, left in the ring for the caller to read in place). A message in fragments is
    /// assembled into the unexpected queue and then found there.
    fn find(&mut self, source: Source, tag: Tag) -> Result<Found, WorldError> {
        let mut spin = Spin::new();
        let needs = match source {
            Source::Rank(r) => Needs::Rank(r),
            Source::Any => Needs::AnySource,
        };
        loop {
            if let Some(env) = self.inbox.take(source, tag) {
                return Ok(Found::Held(env));
            }
            let mut progressed = false;
            for src in self.sources(source) {
                match self.look(src, source, tag, false)? {
                    Look::Match(tag) => {
                        self.next_any = src + 1;
                        return Ok(Found::Ring(src, tag));
                    }
                    Look::Drained => progressed = true,
                    Look::Empty => {}
                }
            }
            if !progressed {
                self.idle(&mut spin, needs, None, None)?;
            }
        }
    }

    /// Like [`find`](Self::find) for a streamed receive: `Ok(held)`, or `Err((source, tag))`
    /// of the ring whose next record starts the message.
    fn find_stream(
        &mut self,
        source: Source,
        tag: Tag,
    ) -> Result<Result<Envelope, (usize, u32)>, WorldError> {
        let mut spin = Spin::new();
        let needs = match source {
            Source::Rank(r) => Needs::Rank(r),
            Source::Any => Needs::AnySource,
        };
        loop {
            if let Some(env) = self.inbox.take(source, tag) {
                return Ok(Ok(env));
            }
            let mut progressed = false;
            for src in self.sources(source) {
                match self.look(src, source, tag, true)? {
                    Look::Match(tag) => {
                        self.next_any = src + 1;
                        return Ok(Err((src, tag)));
                    }
                    Look::Drained => progressed = true,
                    Look::Empty => {}
                }
            }
            if !progressed {
                self.idle(&mut spin, needs, None, None)?;
            }
        }
    }

    /// The ranks a receive from `source` reads: for any source, all of them starting after
    /// the one served last, so that a busy sender does not starve the others.
    fn sources(&self, source: Source) -> impl Iterator<Item = usize> + use<> {
        let (me, size, start) = (self.id.rank, self.id.size, self.next_any);
        let only = match source {
            Source::Rank(r) => Some(r),
            Source::Any => None,
        };
        (0..size)
            .map(move |i| (start + i) % size)
            .filter(move |&r| r != me && only.is_none_or(|o| o == r))
    }

    /// Looks at the head record of `src`'s ring for a receive: `Match` leaves a whole message
    /// that matches (or, with `first_too`, the first fragment of one) in the ring for the
    /// caller; anything else goes to the unexpected path.
    fn look(
        &mut self,
        src: usize,
        source: Source,
        tag: Tag,
        first_too: bool,
    ) -> Result<Look, WorldError> {
        if self.peers[src].partial.is_some() {
            return self.drain_one(src).map(Look::from_drained);
        }
        let rx = self.peers[src].rx.as_mut().expect("rings from other ranks");
        let record = match rx.try_read() {
            Ok(record) => record,
            Err(e) => {
                return ring_error(src, e).map_or(Ok(Look::Empty), |e| match e {
                    // Gone with nothing left: the wait reports it, as it knows what is needed.
                    WorldError::PeerGone(_) => Ok(Look::Empty),
                    e => Err(e),
                });
            }
        };
        let head = match frame::decode(record.kind(), &record) {
            Ok(Frame::Whole { tag, .. }) => Some(tag),
            Ok(Frame::First { tag, .. }) if first_too => Some(tag),
            _ => None,
        };
        record.keep();
        if let Some(t) = head {
            if source.matches(src) && tag.matches(t) && !self.inbox.posted_wants(src, t) {
                return Ok(Look::Match(t));
            }
        }
        self.drain_one(src).map(Look::from_drained)
    }

    /// Reads one record of `src`'s ring into the unexpected path: a whole message is
    /// delivered (to a posted receive or the queue), fragments are assembled. `Ok(false)`: the
    /// ring is empty.
    fn drain_one(&mut self, src: usize) -> Result<bool, WorldError> {
        let moved = self.drain_record(src)?;
        self.moved |= moved;
        Ok(moved)
    }

    fn drain_record(&mut self, src: usize) -> Result<bool, WorldError> {
        let peer = &mut self.peers[src];
        let rx = peer.rx.as_mut().expect("rings from other ranks");
        let record = match rx.try_read() {
            Ok(record) => record,
            Err(e) => {
                return match ring_error(src, e) {
                    None | Some(WorldError::PeerGone(_)) => Ok(false),
                    Some(e) => Err(e),
                }
            }
        };
        if peer.discard {
            if record.kind() == KIND_MORE && peer.partial.is_none() {
                // The rest of a message abandoned half-read.
                return Ok(true);
            }
            peer.discard = false;
        }
        let assembled = frame::decode(record.kind(), &record)
            .and_then(|frame| frame::assemble(&mut peer.partial, frame))
            .map_err(|e| protocol(src, e));
        drop(record);
        match assembled? {
            Assembled::Message(tag, bytes) => self.inbox.deliver(Envelope {
                source: src,
                tag,
                bytes,
            }),
            Assembled::Partial => {}
            Assembled::Fin => {
                peer.finished = true;
                peer.departed = true;
            }
            Assembled::Abort(dead) => {
                let dead = usize::try_from(dead).unwrap_or(src).min(self.id.size - 1);
                self.broken.get_or_insert(dead);
            }
        }
        Ok(true)
    }

    /// Streams the message whose first record heads `src`'s ring (tag `tag`) into `sink`
    /// (`offset, bytes, total length`), waiting for its fragments.
    fn stream_in(
        &mut self,
        src: usize,
        tag: u32,
        sink: &mut Sink<'_>,
        needs: Needs,
    ) -> Result<(), WorldError> {
        let mut flow = Inflow::default();
        let mut spin = Spin::new();
        let result = loop {
            let step = match self.pull(src, tag, &mut flow, sink) {
                Ok(step) => step,
                Err(e) => break Err(e),
            };
            match step {
                Step::Done => break Ok(()),
                Step::Progress => spin = Spin::new(),
                Step::Idle => {
                    if let Err(e) = self.idle(&mut spin, needs, Some(src), None) {
                        break Err(e);
                    }
                }
            }
        };
        if result.is_err() && flow.started && flow.got < flow.total {
            // Skip the rest of the message when it comes: the next one starts framed.
            self.peers[src].discard = true;
        }
        result
    }

    /// One step of a streamed receive from `src` with `tag`: takes a held message, the
    /// message at the head of the ring, or its next fragment; moves a message in the way to
    /// the unexpected path.
    fn pull(
        &mut self,
        src: usize,
        tag: u32,
        flow: &mut Inflow,
        sink: &mut Sink<'_>,
    ) -> Result<Step, WorldError> {
        if !flow.started {
            if let Some(env) = self.inbox.take(Source::Rank(src), Tag::Is(tag)) {
                sink(0, &env.bytes, env.bytes.len() as u64)?;
                return Ok(Step::Done);
            }
            if self.peers[src].partial.is_some() {
                return Ok(if self.drain_one(src)? {
                    Step::Progress
                } else {
                    Step::Idle
                });
            }
        }
        let rx = self.peers[src].rx.as_mut().expect("rings from other ranks");
        let record = match rx.try_read() {
            Ok(record) => record,
            Err(e) => {
                return match ring_error(src, e) {
                    None | Some(WorldError::PeerGone(_)) => Ok(Step::Idle),
                    Some(e) => Err(e),
                }
            }
        };
        let decoded = frame::decode(record.kind(), &record).map_err(|e| protocol(src, e));
        let frame = match decoded {
            Ok(frame) => frame,
            Err(e) => {
                drop(record);
                return Err(e);
            }
        };
        match frame {
            // A collective failed on `src` (maybe in the middle of this message): this one,
            // and every later one, fails here too.
            Frame::Abort { dead } => {
                drop(record);
                let dead = usize::try_from(dead).unwrap_or(src).min(self.id.size - 1);
                self.broken.get_or_insert(dead);
                if flow.started || tag & COLLECTIVE != 0 {
                    return Err(WorldError::PeerGone(dead));
                }
                return Ok(Step::Progress);
            }
            Frame::More(body) if flow.started => {
                let (got, total, n) = (flow.got, flow.total, body.len() as u64);
                if got + n > total {
                    drop(record);
                    return Err(protocol(
                        src,
                        FrameError::Overrun {
                            got: got + n,
                            total,
                        },
                    ));
                }
                flow.feed(sink, got, body, total);
                flow.got += n;
                drop(record);
                return if flow.got == flow.total {
                    flow.done()
                } else {
                    Ok(Step::Progress)
                };
            }
            _ if flow.started => {
                let kind = record.kind();
                drop(record);
                return Err(protocol(
                    src,
                    FrameError::Kind {
                        kind,
                        context: "inside a message in fragments",
                    },
                ));
            }
            Frame::Whole { tag: t, body } | Frame::First { tag: t, body, .. }
                if t == tag && !self.inbox.posted_wants(src, t) =>
            {
                let (whole, total) = match frame {
                    Frame::First { total, .. } => (false, total),
                    _ => (true, body.len() as u64),
                };
                *flow = Inflow {
                    started: true,
                    total,
                    got: body.len() as u64,
                    failed: None,
                };
                flow.feed(sink, 0, body, total);
                drop(record);
                return if whole {
                    flow.done()
                } else {
                    Ok(Step::Progress)
                };
            }
            _ => {}
        }
        record.keep();
        self.drain_one(src)?;
        Ok(Step::Progress)
    }

    // ---- waiting -------------------------------------------------------------------------------

    /// One idle step of a wait: spin, or check liveness and sleep on every ring that can wake
    /// us (all incoming rings, the outgoing ones with queued sends, and `space`'s).
    /// `streaming`: a source whose ring holds fragments a stream reads, not to be drained.
    fn idle(
        &mut self,
        spin: &mut Spin,
        needs: Needs,
        streaming: Option<usize>,
        space: Option<(usize, usize)>,
    ) -> Result<(), WorldError> {
        spin.iter += 1;
        if spin.iter < self.spins {
            if spin.iter % 64 == 0 {
                let now = Instant::now();
                match spin.next_check {
                    None => spin.next_check = Some(now + LIVENESS_EVERY),
                    Some(at) if now >= at => {
                        spin.next_check = Some(now + LIVENESS_EVERY);
                        self.check_deadline(now)?;
                        self.check_needs(needs, streaming)?;
                    }
                    Some(_) => {}
                }
            }
            std::hint::spin_loop();
            return Ok(());
        }
        // About to sleep: move queued sends on, and take in what others sent, so that no rank
        // waits for this one to read.
        self.push_all_outboxes();
        self.moved = false;
        for src in 0..self.id.size {
            if src != self.id.rank && Some(src) != streaming {
                while self.drain_one(src)? {}
            }
        }
        if !self.moved {
            self.check_needs(needs, streaming)?;
        }
        if self.moved {
            // What was drained (here or by the liveness check) may be what the caller waits
            // for: let it look before any verdict or sleep (a rank that sent and left is gone
            // only once nothing of it is left).
            spin.iter = self.spins.saturating_sub(8);
            return Ok(());
        }
        let World {
            peers, fragment, ..
        } = self;
        let mut interests: Vec<Interest<'_, ShmMemory>> = Vec::with_capacity(peers.len() + 1);
        for (r, peer) in peers.iter_mut().enumerate() {
            let want = match space {
                Some((dest, len)) if dest == r => Some(len),
                _ => peer
                    .outbox
                    .front()
                    .map(|o| space_needed(&o.flow, o.data.len(), *fragment)),
            };
            // A rank seen gone (and drained) wakes nobody: its ring would only make every
            // sleep return at once.
            if peer.departed {
                continue;
            }
            if let (Some(len), Some(tx)) = (want, peer.tx.as_mut()) {
                interests.push(Interest::Space(tx, len));
            }
            if let Some(rx) = peer.rx.as_mut() {
                interests.push(Interest::Record(rx));
            }
        }
        select::park(&mut interests, PARK_SLICE);
        drop(interests);
        // Liveness is checked before the next sleep, after the caller looked at what woke us.
        spin.iter = self.spins.saturating_sub(8);
        self.check_deadline(Instant::now())
    }

    fn check_deadline(&self, now: Instant) -> Result<(), WorldError> {
        match self.deadline {
            Some(deadline) if now >= deadline => Err(WorldError::Timeout(Duration::ZERO)),
            _ => Ok(()),
        }
    }

    /// Fails the wait if a rank it needs is gone.
    fn check_needs(&mut self, needs: Needs, streaming: Option<usize>) -> Result<(), WorldError> {
        match needs {
            Needs::Nothing => Ok(()),
            Needs::Rank(r) if r == self.id.rank => Ok(()),
            Needs::Rank(r) => {
                if self.gone_and_drained(r, streaming)? {
                    Err(WorldError::PeerGone(r))
                } else {
                    Ok(())
                }
            }
            Needs::AnySource => {
                let mut first_gone = None;
                let mut alive = 0;
                let me = self.id.rank;
                for r in (0..self.id.size).filter(|&r| r != me) {
                    if self.gone_and_drained(r, streaming)? {
                        first_gone.get_or_insert(r);
                        if !self.reported[r] {
                            self.reported[r] = true;
                            return Err(WorldError::PeerGone(r));
                        }
                    } else {
                        alive += 1;
                    }
                }
                match first_gone {
                    Some(r) if alive == 0 => Err(WorldError::PeerGone(r)),
                    _ => Ok(()),
                }
            }
            Needs::Collective { from, to } => {
                if let Some(r) = self.broken {
                    return Err(WorldError::PeerGone(r));
                }
                // A partner that left (even in order) will never send or read what this step
                // waits for.
                if let Some(r) = from.filter(|&r| r != self.id.rank) {
                    if self.gone_and_drained(r, streaming)? {
                        return Err(WorldError::PeerGone(r));
                    }
                }
                if let Some(r) = to.filter(|&r| r != self.id.rank) {
                    let tx = self.peers[r].tx.as_ref();
                    if tx.map(|tx| tx.peer()) == Some(PeerState::Gone) {
                        return Err(WorldError::PeerGone(r));
                    }
                }
                let me = self.id.rank;
                for r in (0..self.id.size).filter(|&r| r != me) {
                    let gone =
                        self.peers[r].rx.as_ref().map(|rx| rx.peer()) == Some(PeerState::Gone);
                    if !gone {
                        continue;
                    }
                    // The rank this step streams from is judged by its ring (`from` above).
                    if Some(r) == streaming {
                        continue;
                    }
                    // A rank that left in order finished every collective it was in: only a
                    // death breaks one (read up to its FIN record to know which it was).
                    while !self.peers[r].finished && self.drain_one(r)? {}
                    if !self.peers[r].finished {
                        self.broken = Some(r);
                        return Err(WorldError::PeerGone(r));
                    }
                }
                Ok(())
            }
        }
    }

    /// Whether rank `r` is gone and its ring holds nothing more for us.
    fn gone_and_drained(&mut self, r: usize, streaming: Option<usize>) -> Result<bool, WorldError> {
        let peer = &mut self.peers[r];
        let (Some(rx), Some(tx)) = (peer.rx.as_mut(), peer.tx.as_ref()) else {
            return Ok(false);
        };
        if rx.peer() != PeerState::Gone && tx.peer() != PeerState::Gone {
            return Ok(false);
        }
        if Some(r) == streaming {
            // The stream reads the ring: gone once it holds nothing.
            return Ok(matches!(
                rx.check_record(),
                Err(TryReadError::PeerGone | TryReadError::Empty)
            ));
        }
        // What it sent before going is still delivered: gone only once nothing was left,
        // so the caller looks at what this moved to the unexpected queue first.
        let mut drained = false;
        while self.drain_one(r)? {
            drained = true;
        }
        self.peers[r].departed |= !drained;
        Ok(!drained)
    }

    // ---- queued sends ----------------------------------------------------------------------

    /// Moves the queued sends to `dest` into its ring as far as it has room; a failure fails
    /// the requests queued.
    fn push_outbox(&mut self, dest: usize) {
        let fragment = self.fragment;
        let World { peers, inbox, .. } = self;
        let peer = &mut peers[dest];
        while let Some(out) = peer.outbox.front_mut() {
            let tx = peer.tx.as_mut().expect("rings to other ranks");
            match write_some(tx, dest, out.tag, &out.data, &mut out.flow, fragment) {
                Ok(true) => {
                    if out.request != NO_REQUEST {
                        inbox.requests.insert(out.request, ReqState::Sent);
                    }
                    peer.outbox.pop_front();
                }
                Ok(false) => {
                    // Gone readers never make room: fail rather than wait forever.
                    if tx.peer() == PeerState::Gone {
                        for out in peer.outbox.drain(..).filter(|o| o.request != NO_REQUEST) {
                            inbox
                                .requests
                                .insert(out.request, ReqState::Failed(WorldError::PeerGone(dest)));
                        }
                    }
                    return;
                }
                Err(e) => {
                    if out.request != NO_REQUEST {
                        inbox.requests.insert(out.request, ReqState::Failed(e));
                    }
                    peer.outbox.pop_front();
                }
            }
        }
    }

    fn push_all_outboxes(&mut self) {
        for dest in 0..self.id.size {
            if !self.peers[dest].outbox.is_empty() {
                self.push_outbox(dest);
            }
        }
    }

    /// Tells every other rank that a collective failed because `dead` is gone, so that ranks
    /// waiting in it for a rank that is alive, but out of it now, fail too. Best effort: a
    /// full ring, or one in the middle of a queued message, is skipped.
    pub(crate) fn abort_collectives(&mut self, tag: u32, dead: usize) {
        let me = self.id.rank;
        for (r, peer) in self.peers.iter_mut().enumerate() {
            if r == me || r == dead || peer.outbox.front().is_some_and(|o| o.flow.started) {
                continue;
            }
            if let Some(Ok(mut grant)) = peer.tx.as_mut().map(|tx| tx.try_claim(ENVELOPE)) {
                grant[..ENVELOPE].copy_from_slice(&envelope(tag, dead as u64));
                grant.set_kind(KIND_ABORT);
                grant.commit(ENVELOPE);
            }
        }
    }

    fn next_collective_tag(&mut self) -> u32 {
        let tag = COLLECTIVE | (self.coll_seq & Tag::MAX);
        self.coll_seq = self.coll_seq.wrapping_add(1);
        tag
    }
}

/// What a receive found.
enum Found {
    /// A whole message held by this rank.
    Held(Envelope),
    /// A whole message at the head of this source's ring, with this tag.
    Ring(usize, u32),
}

/// What a look at a ring found.
enum Look {
    /// The head record matches (its tag).
    Match(u32),
    /// A record was moved to the unexpected path.
    Drained,
    /// Nothing there.
    Empty,
}

impl Look {
    fn from_drained(drained: bool) -> Look {
        if drained {
            Look::Drained
        } else {
            Look::Empty
        }
    }
}

/// Copies a held message into a slice of elements.
fn fill<E: Element>(buf: &mut [E], bytes: &[u8], status: Status) -> Result<(), WorldError> {
    let room = std::mem::size_of_val(buf);
    if bytes.len() > room {
        return Err(WorldError::Truncated {
            rank: status.source,
            tag: status.tag,
            len: bytes.len() as u64,
            room: room as u64,
        });
    }
    if bytes.len() % std::mem::size_of::<E>() != 0 {
        return Err(WorldError::Misfit {
            rank: status.source,
            tag: status.tag,
            len: bytes.len() as u64,
            size: std::mem::size_of::<E>(),
        });
    }
    bytemuck::cast_slice_mut::<E, u8>(buf)[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

impl Drop for World {
    /// Leaves the job in order: a FIN record to every rank (waiting up to 100 ms for room),
    /// so the others tell this from a death; the rings this rank made are removed.
    fn drop(&mut self) {
        for dest in 0..self.id.size {
            let deadline = Instant::now() + Duration::from_millis(100);
            // Queued sends go first, as far as there is room within the deadline.
            while !self.peers[dest].outbox.is_empty() && Instant::now() < deadline {
                self.push_outbox(dest);
                if !self.peers[dest].outbox.is_empty() {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            // A FIN inside a half-sent message would garble it: the reader then sees this
            // rank go without one (as a death), which is what it is for that message.
            if self.peers[dest]
                .outbox
                .front()
                .is_some_and(|o| o.flow.started)
            {
                continue;
            }
            let Some(tx) = self.peers[dest].tx.as_mut() else {
                continue;
            };
            loop {
                match tx.try_claim(0) {
                    Ok(mut grant) => {
                        grant.set_kind(KIND_FIN);
                        grant.commit(0);
                        break;
                    }
                    Err(TryClaimError::Full { .. }) if Instant::now() < deadline => {}
                    Err(_) => break,
                }
                // Room comes when the reader reads; a reader that is gone never makes any.
                if tx.wait_for_space(0, Duration::from_millis(5))
                    == Err(shmesh_ring::ClaimError::PeerGone)
                {
                    break;
                }
            }
        }
    }
}
