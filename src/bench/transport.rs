//! The transports `shmesh bench` compares, each as the two ends of one connection.
//!
//! The parent process sets a transport up before it starts its peer ([`ParentSetup::new`]:
//! creates the segments, binds the listener, makes the FIFOs), then connects its end
//! ([`ParentSetup::connect`]); the peer connects the other end ([`connect_peer`]). Both ends
//! are then driven through [`Endpoint`], one message at a time, the same way for every
//! transport:
//!
//! - with `--touch all`, the sender writes every byte of the message ([`fill`]): the sequence
//!   number in the first 8 bytes (what fits of it below 8), a byte derived from it in the
//!   rest; the receiver checks the sequence number and reads one word of every cache line
//!   ([`check`]);
//! - with `--touch none`, the sender writes the sequence number only ([`write_seq`]) and the
//!   receiver checks it only;
//! - either way a mismatch is an error, never a figure.
//!
//! A socket message is exactly `size` bytes, sent with one `write_all` and received with one
//! `read_exact`, as an application would (with `--touch none` too: the kernel copies every
//! byte). A ring message is claimed, written in place and committed; read in place and
//! released. A region message (`super::region`) is written into a write scope and published
//! as a version; the receiver waits for that version and copies it out.
//!
//! The transports of the `peers` feature live in their own modules: `iceoryx2`
//! (`super::iceoryx`, a loaned `[u8]` sample per message) and `ipc-channel` (`super::ipc`,
//! the typed [`BenchMessage`](super::message::BenchMessage) through serde). They plug in
//! here as [`ParentSetup`] variants and [`connect_peer`] arms.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;
use shmesh_ring::{
    BroadcastPolicy, CacheLineProbe, Consumer, PeerState, Producer, SegmentBuilder, ShmMemory,
    WaitStrategy,
};

use super::error::BenchError;
use super::{Bench, Touch, OP_TIMEOUT};

/// An IPC mechanism `shmesh bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Transport {
    /// Two processes bouncing one 8-byte word in shared memory: the physical floor.
    Cacheline,
    /// The shmesh SPSC byte ring in POSIX shared memory.
    Shm,
    /// A Unix domain stream socket.
    Uds,
    /// Named pipes (FIFOs), one per direction.
    Pipe,
    /// TCP over loopback (127.0.0.1) with TCP_NODELAY.
    Tcp,
    /// iceoryx2 publish-subscribe over shared memory, busy-polling (feature `peers`).
    Iceoryx2,
    /// servo's ipc-channel: a typed message of about 1 KiB (`BenchMessage`) through serde and
    /// bincode over Unix sockets (feature `peers`).
    IpcChannel,
    /// shmesh's typed channel: the same typed message as ipc-channel (`BenchMessage`, about
    /// 1 KiB), serialized with rkyv straight into the ring and validated and read in place.
    Typed,
    /// The shmesh multi-producer/single-consumer ring: `--writers` writer processes into one
    /// reader (throughput); one writer per direction (pingpong).
    Mpsc,
    /// The shmesh one-writer, many-reader broadcast ring: one writer to `--readers` reader
    /// processes (throughput); one reader per direction (pingpong).
    Broadcast,
    /// A shmesh versioned region per direction: each message is a published version, waited
    /// for and copied out as a snapshot (pingpong only: a region keeps its latest version, so
    /// it has no throughput).
    Region,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 11] = [
        Transport::Cacheline,
        Transport::Shm,
        Transport::Uds,
        Transport::Pipe,
        Transport::Tcp,
        Transport::Iceoryx2,
        Transport::IpcChannel,
        Transport::Typed,
        Transport::Mpsc,
        Transport::Broadcast,
        Transport::Region,
    ];

    /// The default `--transport` list: those that need no optional feature and have both a
    /// ping-pong and a throughput (not `region`).
    pub const DEFAULT: [Transport; 7] = [
        Transport::Cacheline,
        Transport::Shm,
        Transport::Uds,
        Transport::Pipe,
        Transport::Tcp,
        Transport::Mpsc,
        Transport::Broadcast,
    ];

    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Cacheline => "cacheline",
            Transport::Shm => "shm",
            Transport::Uds => "uds",
            Transport::Pipe => "pipe",
            Transport::Tcp => "tcp",
            Transport::Iceoryx2 => "iceoryx2",
            Transport::IpcChannel => "ipc-channel",
            Transport::Typed => "typed",
            Transport::Mpsc => "mpsc",
            Transport::Broadcast => "broadcast",
            Transport::Region => "region",
        }
    }

    /// Whether this transport comes from the `peers` feature.
    pub fn is_peer_library(self) -> bool {
        matches!(self, Transport::Iceoryx2 | Transport::IpcChannel)
    }

    /// Whether this transport sends the fixed typed
    /// [`BenchMessage`](super::message::BenchMessage) rather than `--size` bytes: it is then
    /// measured once, and its rows give the message's encoded size.
    pub fn sends_typed_message(self) -> bool {
        matches!(self, Transport::IpcChannel | Transport::Typed)
    }

    /// Whether the receiver polls shared memory (no system call per message): such transports
    /// get the larger default throughput message count.
    pub fn is_shared_memory(self) -> bool {
        matches!(
            self,
            Transport::Cacheline
                | Transport::Shm
                | Transport::Iceoryx2
                | Transport::Typed
                | Transport::Mpsc
                | Transport::Broadcast
                | Transport::Region
        )
    }

    /// Whether `bench` over this transport runs several peer processes (`super::fanout`):
    /// the throughput of the MPSC ring (`--writers` writers) and of the broadcast ring
    /// (`--readers` readers).
    pub fn fans_out(self, bench: Bench) -> bool {
        bench == Bench::Throughput && matches!(self, Transport::Mpsc | Transport::Broadcast)
    }

    /// Fails when this build cannot run this transport.
    ///
    /// # Errors
    ///
    /// [`BenchError::NeedsPeers`] for iceoryx2 and ipc-channel in a build without the `peers`
    /// feature.
    pub fn check_available(self) -> Result<(), BenchError> {
        if self.is_peer_library() && !cfg!(feature = "peers") {
            return Err(BenchError::NeedsPeers { transport: self });
        }
        Ok(())
    }

    /// The bytes one message of this transport carries when `--size` is `size`: `size`, or
    /// the encoded size of the typed message for the transports that send it.
    pub fn message_size(self, size: usize) -> usize {
        match self {
            #[cfg(feature = "peers")]
            Transport::IpcChannel => super::ipc::message_size(),
            Transport::Typed => super::typed::message_size(),
            _ => size,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Writes message `seq` into `buf`, every byte of it: the sequence number (little endian, what
/// fits of it when `buf` is shorter than 8 bytes), then a byte derived from it.
#[inline]
pub(crate) fn fill(buf: &mut [u8], seq: u64) {
    let head = seq.to_le_bytes();
    let n = buf.len().min(head.len());
    buf[..n].copy_from_slice(&head[..n]);
    if buf.len() > n {
        buf[n..].fill(fill_byte(seq));
    }
}

/// Writes the sequence number of message `seq` into `buf` (what fits of it) and nothing
/// else: the sender's work with `--touch none`.
#[inline]
pub(crate) fn write_seq(buf: &mut [u8], seq: u64) {
    let head = seq.to_le_bytes();
    let n = buf.len().min(head.len());
    buf[..n].copy_from_slice(&head[..n]);
}

/// The byte [`fill`] writes after the sequence number.
#[inline]
pub(crate) fn fill_byte(seq: u64) -> u8 {
    seq as u8 ^ 0x5a
}

/// Writes message `seq` as `touch` says: every byte ([`fill`]) or the sequence number only
/// ([`write_seq`]).
#[inline]
pub(crate) fn write_message(buf: &mut [u8], seq: u64, touch: Touch) {
    match touch {
        Touch::All => fill(buf, seq),
        Touch::None => write_seq(buf, seq),
    }
}

/// Reads one 8-byte word (or what there is) of every 64-byte cache line of `buf` and sums
/// them, so that the receiver really pulls every line into its cache.
#[inline]
pub(crate) fn touch(buf: &[u8]) -> u64 {
    let mut sum = 0u64;
    for line in buf.chunks(64) {
        let mut word = [0u8; 8];
        let n = line.len().min(8);
        word[..n].copy_from_slice(&line[..n]);
        sum = sum.wrapping_add(u64::from_le_bytes(word));
    }
    sum
}

/// Checks that `buf` is message `seq` of `size` bytes; with [`Touch::All`], also reads one
/// word of every cache line of it.
///
/// # Errors
///
/// [`BenchError::Corrupt`] when the length or the sequence number differ.
#[inline]
pub(crate) fn check(buf: &[u8], seq: u64, size: usize, touch: Touch) -> Result<(), BenchError> {
    if buf.len() != size {
        return Err(BenchError::Corrupt {
            seq,
            detail: format!("it is {} bytes long, expected {size}", buf.len()),
        });
    }
    let head = seq.to_le_bytes();
    let n = size.min(head.len());
    if buf[..n] != head[..n] {
        let mut found = [0u8; 8];
        found[..n].copy_from_slice(&buf[..n]);
        return Err(BenchError::Corrupt {
            seq,
            detail: format!(
                "its first {n} bytes hold sequence number {}",
                u64::from_le_bytes(found)
            ),
        });
    }
    if touch == Touch::All {
        black_box(self::touch(buf));
    }
    Ok(())
}

/// One end of a connected transport: sends and receives whole messages.
pub(crate) trait Endpoint {
    /// Sends message `seq` (writes all its bytes).
    fn send(&mut self, seq: u64) -> Result<(), BenchError>;
    /// Receives the next message and checks that it is message `seq`.
    fn recv(&mut self, seq: u64) -> Result<(), BenchError>;
}

fn wrong_direction(what: &str) -> BenchError {
    BenchError::Usage(format!(
        "internal error: this end of the transport does not {what}"
    ))
}

/// Ring capacity for messages of `size` bytes: four messages rounded up to a power of two,
/// at least 1 MiB. A ring takes records of up to half its capacity.
pub(crate) fn ring_capacity(size: usize) -> u64 {
    (size as u64)
        .saturating_mul(4)
        .next_power_of_two()
        .max(1 << 20)
}

/// One end of the shm transport: a producer, a consumer, or both (ping-pong).
#[derive(Debug)]
pub(crate) struct ShmEndpoint {
    tx: Option<Producer<ShmMemory>>,
    rx: Option<Consumer<ShmMemory>>,
    size: usize,
    touch: Touch,
}

impl Endpoint for ShmEndpoint {
    #[inline]
    fn send(&mut self, seq: u64) -> Result<(), BenchError> {
        let tx = self.tx.as_mut().ok_or_else(|| wrong_direction("send"))?;
        // `claim` returns at once when there is space; when the ring is full it waits with the
        // wait strategy, and ends with `PeerGone` if the consumer dies (the parent's stall
        // watchdog kills a peer that hangs).
        let mut grant = tx.claim(self.size).map_err(BenchError::Claim)?;
        write_message(&mut grant, seq, self.touch);
        grant.commit(self.size);
        Ok(())
    }

    #[inline]
    fn recv(&mut self, seq: u64) -> Result<(), BenchError> {
        let rx = self.rx.as_mut().ok_or_else(|| wrong_direction("receive"))?;
        // As in `send`: bounded by `PeerGone` and the stall watchdog.
        let record = rx.read().map_err(BenchError::Read)?;
        check(&record, seq, self.size, self.touch)
    }
}

impl ShmEndpoint {
    /// Whether the peer's end of every ring this end uses has attached.
    fn peers_attached(&self) -> bool {
        peers_attached(
            self.tx.as_ref().map(Producer::peer),
            self.rx.as_ref().map(Consumer::peer),
        )
    }
}

/// Whether the peer has attached to every ring this end uses: `tx` and `rx` are the peer states
/// seen from this end's producer and consumer, `None` where it has none.
pub(crate) fn peers_attached(tx: Option<PeerState>, rx: Option<PeerState>) -> bool {
    tx.into_iter().chain(rx).all(|p| p != PeerState::NotYet)
}

/// One end of a byte-stream transport (socket or pipes): whole messages with `write_all` and
/// `read_exact`.
#[derive(Debug)]
pub(crate) struct StreamEndpoint<R, W> {
    reader: Option<R>,
    writer: Option<W>,
    in_buf: Vec<u8>,
    out_buf: Vec<u8>,
    touch: Touch,
}

impl<R: Read, W: Write> StreamEndpoint<R, W> {
    fn new(reader: Option<R>, writer: Option<W>, size: usize, touch: Touch) -> Self {
        StreamEndpoint {
            reader,
            writer,
            in_buf: vec![0; size],
            out_buf: vec![0; size],
            touch,
        }
    }
}

impl<R: Read, W: Write> Endpoint for StreamEndpoint<R, W> {
    #[inline]
    fn send(&mut self, seq: u64) -> Result<(), BenchError> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| wrong_direction("send"))?;
        write_message(&mut self.out_buf, seq, self.touch);
        writer
            .write_all(&self.out_buf)
            .map_err(|e| stream_error(e, "sending", seq))
    }

    #[inline]
    fn recv(&mut self, seq: u64) -> Result<(), BenchError> {
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| wrong_direction("receive"))?;
        reader
            .read_exact(&mut self.in_buf)
            .map_err(|e| stream_error(e, "receiving", seq))?;
        check(&self.in_buf, seq, self.in_buf.len(), self.touch)
    }
}

fn stream_error(e: io::Error, what: &str, seq: u64) -> BenchError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => BenchError::Closed { seq },
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => BenchError::Timeout {
            what: "the peer to send or receive a message",
            waited: OP_TIMEOUT,
        },
        _ => BenchError::io(format!("{what} message {seq}"))(e),
    }
}

/// A check that the peer process still runs, called while waiting for it.
pub(crate) type Alive<'a> = &'a mut dyn FnMut() -> Result<(), BenchError>;

/// Polls `ready` until it gives a value, checking the peer and the deadline in between.
pub(crate) fn wait_for<T>(
    what: &'static str,
    alive: Alive<'_>,
    mut ready: impl FnMut() -> Result<Option<T>, BenchError>,
) -> Result<T, BenchError> {
    let start = Instant::now();
    loop {
        if let Some(value) = ready()? {
            return Ok(value);
        }
        alive()?;
        if start.elapsed() > OP_TIMEOUT {
            return Err(BenchError::Timeout {
                what,
                waited: OP_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A transport's parent side, made before the peer process starts.
#[derive(Debug)]
pub(crate) enum ParentSetup {
    /// The cache-line probe segment the peer will answer on.
    Line(CacheLineProbe),
    /// The rings, created and attached (boxed: two endpoints are far larger than a socket).
    Shm(Box<ShmEndpoint>),
    /// A bound Unix socket.
    Uds(UnixListener),
    /// A bound loopback TCP socket.
    Tcp(TcpListener),
    /// The FIFOs: parent-to-child (ping-pong only) and child-to-parent.
    Pipe {
        /// Parent to child.
        p2c: Option<PathBuf>,
        /// Child to parent.
        c2p: PathBuf,
    },
    /// The iceoryx2 node, services and the parent's ports.
    #[cfg(feature = "peers")]
    Iceoryx2(super::iceoryx::Setup),
    /// The ipc-channel one-shot server the peer connects to.
    #[cfg(feature = "peers")]
    IpcChannel(super::ipc::Setup),
    /// The parent's ends of the typed channels.
    Typed(Box<super::typed::TypedEndpoint>),
    /// The parent's ends of the MPSC or broadcast ping-pong rings.
    Rings(Box<super::rings::ParentRings>),
    /// The parent's ends of the ping-pong regions.
    Region(Box<super::region::RegionEndpoint>),
}

/// Where the transport named `tag` lives, and how its ends are set.
#[derive(Debug, Clone)]
pub(crate) struct Plan<'a> {
    pub(crate) transport: Transport,
    pub(crate) bench: Bench,
    pub(crate) size: usize,
    pub(crate) wait: WaitStrategy,
    pub(crate) touch: Touch,
    /// Unique name stem: `bench.<pid>.<n>`.
    pub(crate) tag: &'a str,
    /// Private directory for socket and FIFO files.
    pub(crate) dir: &'a Path,
    /// The broadcast rings' slow-reader policy.
    pub(crate) policy: BroadcastPolicy,
    /// Peer processes of a fanned-out throughput ([`Transport::fans_out`]): MPSC writers or
    /// broadcast readers; 1 otherwise.
    pub(crate) peers: usize,
}

fn segment_name(tag: &str, what: &str) -> String {
    format!("{tag}.{what}")
}

fn create_ring(name: &str, size: usize) -> Result<shmesh_ring::Segment, BenchError> {
    SegmentBuilder::new(name)
        .capacity(ring_capacity(size))
        .create()
        .map_err(|source| BenchError::Segment {
            name: name.to_owned(),
            source,
        })
}

fn open_ring(name: &str) -> Result<shmesh_ring::Segment, BenchError> {
    SegmentBuilder::new(name)
        .open()
        .map_err(|source| BenchError::Segment {
            name: name.to_owned(),
            source,
        })
}

pub(crate) fn attach<T>(
    name: &str,
    result: Result<T, shmesh_ring::AttachError>,
) -> Result<T, BenchError> {
    result.map_err(|source| BenchError::Attach {
        name: name.to_owned(),
        source,
    })
}

impl ParentSetup {
    /// Sets up the parent's side of `plan`; returns it and the endpoint argument for the peer.
    pub(crate) fn new(plan: &Plan<'_>) -> Result<(ParentSetup, String), BenchError> {
        let tag = plan.tag;
        let n = tag.rsplit('.').next().unwrap_or(tag);
        match plan.transport {
            Transport::Cacheline => {
                let name = segment_name(tag, "line");
                let probe =
                    CacheLineProbe::create(&name).map_err(|source| BenchError::Segment {
                        name: name.clone(),
                        source,
                    })?;
                Ok((ParentSetup::Line(probe), name))
            }
            Transport::Shm => {
                let data = segment_name(tag, "data");
                let ping = segment_name(tag, "ping");
                let pong = segment_name(tag, "pong");
                let mut ep = match plan.bench {
                    Bench::PingPong => {
                        let tx = attach(&ping, create_ring(&ping, plan.size)?.producer())?;
                        let rx = attach(&pong, create_ring(&pong, plan.size)?.consumer())?;
                        ShmEndpoint {
                            tx: Some(tx),
                            rx: Some(rx),
                            size: plan.size,
                            touch: plan.touch,
                        }
                    }
                    Bench::Throughput => {
                        let rx = attach(&data, create_ring(&data, plan.size)?.consumer())?;
                        ShmEndpoint {
                            tx: None,
                            rx: Some(rx),
                            size: plan.size,
                            touch: plan.touch,
                        }
                    }
                };
                if let Some(tx) = ep.tx.as_mut() {
                    tx.set_wait_strategy(plan.wait);
                }
                if let Some(rx) = ep.rx.as_mut() {
                    rx.set_wait_strategy(plan.wait);
                }
                Ok((ParentSetup::Shm(Box::new(ep)), tag.to_owned()))
            }
            Transport::Uds => {
                let path = plan.dir.join(format!("{n}.sock"));
                let listener = UnixListener::bind(&path).map_err(BenchError::io(format!(
                    "binding the Unix socket {} (a path longer than ~100 bytes does not work: \
                     set TMPDIR to a shorter directory)",
                    path.display()
                )))?;
                Ok((ParentSetup::Uds(listener), path_arg(&path)?))
            }
            Transport::Tcp => {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .map_err(BenchError::io("binding a TCP socket on 127.0.0.1"))?;
                let addr = listener
                    .local_addr()
                    .map_err(BenchError::io("reading the TCP listener's address"))?;
                Ok((ParentSetup::Tcp(listener), addr.to_string()))
            }
            Transport::Pipe => {
                let stem = plan.dir.join(n);
                let fifo = |dir: &str| -> Result<PathBuf, BenchError> {
                    let path = stem.with_extension(dir);
                    nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR)
                        .map_err(BenchError::os(format!("mkfifo {}", path.display())))?;
                    Ok(path)
                };
                let p2c = match plan.bench {
                    Bench::PingPong => Some(fifo("p2c")?),
                    Bench::Throughput => None,
                };
                let c2p = fifo("c2p")?;
                Ok((ParentSetup::Pipe { p2c, c2p }, path_arg(&stem)?))
            }
            #[cfg(feature = "peers")]
            Transport::Iceoryx2 => {
                let (setup, endpoint) = super::iceoryx::Setup::new(plan)?;
                Ok((ParentSetup::Iceoryx2(setup), endpoint))
            }
            #[cfg(feature = "peers")]
            Transport::IpcChannel => {
                let (setup, endpoint) = super::ipc::Setup::new()?;
                Ok((ParentSetup::IpcChannel(setup), endpoint))
            }
            Transport::Typed => {
                let (ep, endpoint) = super::typed::parent(plan)?;
                Ok((ParentSetup::Typed(Box::new(ep)), endpoint))
            }
            Transport::Mpsc | Transport::Broadcast => {
                let rings = super::rings::ParentRings::new(plan)?;
                Ok((ParentSetup::Rings(Box::new(rings)), tag.to_owned()))
            }
            Transport::Region => {
                let ep = super::region::parent(plan)?;
                Ok((ParentSetup::Region(Box::new(ep)), tag.to_owned()))
            }
            #[cfg(not(feature = "peers"))]
            transport @ (Transport::Iceoryx2 | Transport::IpcChannel) => {
                Err(BenchError::NeedsPeers { transport })
            }
        }
    }

    /// Connects the parent's end once the peer runs. `alive` checks the peer while waiting.
    ///
    /// Not for [`ParentSetup::Line`], which is driven as a probe.
    pub(crate) fn connect(
        self,
        plan: &Plan<'_>,
        alive: Alive<'_>,
    ) -> Result<Box<dyn Endpoint>, BenchError> {
        let size = plan.size;
        match self {
            ParentSetup::Line(_) => Err(BenchError::Usage(
                "internal error: the cacheline transport has no stream".into(),
            )),
            ParentSetup::Shm(ep) => {
                // Once the peer has attached, a blocking ring call ends with `PeerGone` if it dies.
                wait_for("the peer to attach to the rings", alive, || {
                    Ok(ep.peers_attached().then_some(()))
                })?;
                Ok(ep)
            }
            ParentSetup::Uds(listener) => {
                listener
                    .set_nonblocking(true)
                    .map_err(BenchError::io("setting O_NONBLOCK"))?;
                let stream =
                    wait_for(
                        "the peer to connect to the Unix socket",
                        alive,
                        || match listener.accept() {
                            Ok((stream, _)) => Ok(Some(stream)),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                            Err(e) => Err(BenchError::io("accepting on the Unix socket")(e)),
                        },
                    )?;
                unix_stream(stream, plan, true)
            }
            ParentSetup::Tcp(listener) => {
                listener
                    .set_nonblocking(true)
                    .map_err(BenchError::io("setting O_NONBLOCK"))?;
                let stream = wait_for("the peer to connect over TCP", alive, || {
                    match listener.accept() {
                        Ok((stream, _)) => Ok(Some(stream)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                        Err(e) => Err(BenchError::io("accepting on the TCP socket")(e)),
                    }
                })?;
                tcp_stream(stream, plan, true)
            }
            ParentSetup::Pipe { p2c, c2p } => {
                let reader = open_fifo_read(&c2p)?;
                let writer = match p2c {
                    Some(p2c) => Some(open_fifo_write(&p2c, alive)?),
                    None => None,
                };
                pipe_handshake(writer.as_ref(), Some(&reader), alive)?;
                Ok(Box::new(StreamEndpoint::new(
                    Some(reader),
                    writer,
                    size,
                    plan.touch,
                )))
            }
            #[cfg(feature = "peers")]
            ParentSetup::Iceoryx2(setup) => setup.connect(alive),
            #[cfg(feature = "peers")]
            ParentSetup::IpcChannel(setup) => setup.connect(plan, alive),
            ParentSetup::Typed(ep) => super::typed::connect(*ep, alive),
            ParentSetup::Rings(rings) => rings.connect(alive),
            ParentSetup::Region(ep) => super::region::connect(*ep, alive),
        }
    }
}

fn path_arg(path: &Path) -> Result<String, BenchError> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        BenchError::Usage(format!(
            "the temporary path {} is not UTF-8: set TMPDIR to a plain directory",
            path.display()
        ))
    })
}

fn unix_stream(
    stream: UnixStream,
    plan: &Plan<'_>,
    parent: bool,
) -> Result<Box<dyn Endpoint>, BenchError> {
    stream
        .set_nonblocking(false)
        .map_err(BenchError::io("clearing O_NONBLOCK"))?;
    stream
        .set_read_timeout(Some(OP_TIMEOUT))
        .map_err(BenchError::io("setting SO_RCVTIMEO"))?;
    stream
        .set_write_timeout(Some(OP_TIMEOUT))
        .map_err(BenchError::io("setting SO_SNDTIMEO"))?;
    let (reads, writes) = directions(plan.bench, parent);
    let reader = if reads {
        Some(
            stream
                .try_clone()
                .map_err(BenchError::io("duplicating the Unix socket"))?,
        )
    } else {
        None
    };
    Ok(Box::new(StreamEndpoint::new(
        reader,
        writes.then_some(stream),
        plan.size,
        plan.touch,
    )))
}

fn tcp_stream(
    stream: TcpStream,
    plan: &Plan<'_>,
    parent: bool,
) -> Result<Box<dyn Endpoint>, BenchError> {
    stream
        .set_nonblocking(false)
        .map_err(BenchError::io("clearing O_NONBLOCK"))?;
    stream
        .set_nodelay(true)
        .map_err(BenchError::io("setting TCP_NODELAY"))?;
    stream
        .set_read_timeout(Some(OP_TIMEOUT))
        .map_err(BenchError::io("setting SO_RCVTIMEO"))?;
    stream
        .set_write_timeout(Some(OP_TIMEOUT))
        .map_err(BenchError::io("setting SO_SNDTIMEO"))?;
    let (reads, writes) = directions(plan.bench, parent);
    let reader = if reads {
        Some(
            stream
                .try_clone()
                .map_err(BenchError::io("duplicating the TCP socket"))?,
        )
    } else {
        None
    };
    Ok(Box::new(StreamEndpoint::new(
        reader,
        writes.then_some(stream),
        plan.size,
        plan.touch,
    )))
}

/// Whether an end reads and whether it writes. Ping-pong: both. Throughput: the peer sends,
/// the parent receives.
fn directions(bench: Bench, parent: bool) -> (bool, bool) {
    match bench {
        Bench::PingPong => (true, true),
        Bench::Throughput => (parent, !parent),
    }
}

/// Opens the read end of a FIFO without waiting for a writer.
fn open_fifo_read(path: &Path) -> Result<File, BenchError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(BenchError::io(format!(
            "opening the FIFO {} for reading",
            path.display()
        )))
}

/// Opens the write end of a FIFO, waiting (bounded) until the peer has opened the read end.
fn open_fifo_write(path: &Path, alive: Alive<'_>) -> Result<File, BenchError> {
    let file = wait_for("the peer to open its end of the FIFO", alive, || {
        match OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)
        {
            Ok(file) => Ok(Some(file)),
            // ENXIO: no reader yet.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => Ok(None),
            Err(e) => Err(BenchError::io(format!(
                "opening the FIFO {} for writing",
                path.display()
            ))(e)),
        }
    })?;
    set_blocking(&file)?;
    Ok(file)
}

fn set_blocking(file: &File) -> Result<(), BenchError> {
    let flags = fcntl(file, FcntlArg::F_GETFL).map_err(BenchError::os("fcntl(F_GETFL)"))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(file, FcntlArg::F_SETFL(flags)).map_err(BenchError::os("fcntl(F_SETFL)"))?;
    Ok(())
}

/// The byte each side sends through a FIFO before the benchmark.
const HELLO: u8 = 0xa5;

/// Makes sure both ends of every FIFO are open before any message flows: each side writes
/// one byte on its write end and reads one on its read end. The read end was opened
/// non-blocking (so that opening it could not hang); it waits for the byte with `poll` under a
/// deadline, then turns blocking. (Before a writer has come, Linux's `poll` on a FIFO reports
/// no hang-up, and a blocking `read` would see end of file: hence this order.)
fn pipe_handshake(
    writer: Option<&File>,
    reader: Option<&File>,
    alive: Alive<'_>,
) -> Result<(), BenchError> {
    if let Some(mut w) = writer {
        w.write_all(&[HELLO])
            .map_err(BenchError::io("writing the FIFO handshake"))?;
    }
    if let Some(r) = reader {
        wait_for("the peer's FIFO handshake", alive, || {
            let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
            let n = poll(&mut fds, PollTimeout::from(10u8)).map_err(BenchError::os("poll"))?;
            Ok((n > 0).then_some(()))
        })?;
        let mut byte = [0u8];
        let mut r: &File = r;
        let n = r
            .read(&mut byte)
            .map_err(BenchError::io("reading the FIFO handshake"))?;
        if n != 1 || byte[0] != HELLO {
            return Err(BenchError::Corrupt {
                seq: 0,
                detail: format!("the FIFO handshake read {n} bytes ({:#x})", byte[0]),
            });
        }
        set_blocking(r)?;
    }
    Ok(())
}

/// Removes what a measurement of `plan` may have left outside the run's private directory
/// (iceoryx2's files in /dev/shm, should one of its ends have died), once both ends are gone.
pub(crate) fn clean_up(plan: &Plan<'_>) {
    #[cfg(feature = "peers")]
    if plan.transport == Transport::Iceoryx2 {
        super::iceoryx::clean_up(plan.tag);
    }
    #[cfg(not(feature = "peers"))]
    let _ = plan;
}

/// The peer's end of the cacheline transport: the probe it answers on.
pub(crate) fn open_line(endpoint: &str) -> Result<CacheLineProbe, BenchError> {
    CacheLineProbe::open(endpoint).map_err(|source| BenchError::Segment {
        name: endpoint.to_owned(),
        source,
    })
}

/// Connects the peer's end of `plan` to the parent's, named by `endpoint` (as returned by
/// [`ParentSetup::new`]).
pub(crate) fn connect_peer(
    plan: &Plan<'_>,
    endpoint: &str,
) -> Result<Box<dyn Endpoint>, BenchError> {
    let size = plan.size;
    // The parent waits for us: nothing to check while we wait for it but the deadline.
    let mut no_check = || Ok(());
    match plan.transport {
        Transport::Cacheline => Err(BenchError::Usage(
            "internal error: the cacheline transport has no stream".into(),
        )),
        Transport::Shm => {
            let mut ep = match plan.bench {
                Bench::PingPong => {
                    let ping = segment_name(endpoint, "ping");
                    let pong = segment_name(endpoint, "pong");
                    let rx = attach(&ping, open_ring(&ping)?.consumer())?;
                    let tx = attach(&pong, open_ring(&pong)?.producer())?;
                    ShmEndpoint {
                        tx: Some(tx),
                        rx: Some(rx),
                        size,
                        touch: plan.touch,
                    }
                }
                Bench::Throughput => {
                    let data = segment_name(endpoint, "data");
                    let tx = attach(&data, open_ring(&data)?.producer())?;
                    ShmEndpoint {
                        tx: Some(tx),
                        rx: None,
                        size,
                        touch: plan.touch,
                    }
                }
            };
            if let Some(tx) = ep.tx.as_mut() {
                tx.set_wait_strategy(plan.wait);
            }
            if let Some(rx) = ep.rx.as_mut() {
                rx.set_wait_strategy(plan.wait);
            }
            Ok(Box::new(ep))
        }
        Transport::Uds => {
            let stream = UnixStream::connect(endpoint).map_err(BenchError::io(format!(
                "connecting to the Unix socket {endpoint}"
            )))?;
            unix_stream(stream, plan, false)
        }
        Transport::Tcp => {
            let addr: SocketAddr = endpoint.parse().map_err(|_| {
                BenchError::Usage(format!("internal error: bad TCP address '{endpoint}'"))
            })?;
            let stream = TcpStream::connect_timeout(&addr, OP_TIMEOUT)
                .map_err(BenchError::io(format!("connecting to {addr} over TCP")))?;
            tcp_stream(stream, plan, false)
        }
        Transport::Pipe => {
            let stem = PathBuf::from(endpoint);
            let p2c = stem.with_extension("p2c");
            let c2p = stem.with_extension("c2p");
            let (reader, writer) = match plan.bench {
                Bench::PingPong => {
                    let reader = open_fifo_read(&p2c)?;
                    (Some(reader), open_fifo_write(&c2p, &mut no_check)?)
                }
                Bench::Throughput => (None, open_fifo_write(&c2p, &mut no_check)?),
            };
            pipe_handshake(Some(&writer), reader.as_ref(), &mut no_check)?;
            Ok(Box::new(StreamEndpoint::new(
                reader,
                Some(writer),
                size,
                plan.touch,
            )))
        }
        #[cfg(feature = "peers")]
        Transport::Iceoryx2 => super::iceoryx::connect_peer(plan, endpoint),
        #[cfg(feature = "peers")]
        Transport::IpcChannel => super::ipc::connect_peer(plan, endpoint),
        Transport::Typed => super::typed::connect_peer(plan, endpoint),
        Transport::Mpsc | Transport::Broadcast => super::rings::connect_peer(plan, endpoint),
        Transport::Region => super::region::connect_peer(plan, endpoint),
        #[cfg(not(feature = "peers"))]
        transport @ (Transport::Iceoryx2 | Transport::IpcChannel) => {
            Err(BenchError::NeedsPeers { transport })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_check_round_trips_for_every_size() {
        for size in [1, 3, 7, 8, 9, 63, 64, 65, 4096] {
            let mut buf = vec![0u8; size];
            fill(&mut buf, 0x0102_0304_0506_0708);
            check(&buf, 0x0102_0304_0506_0708, size, Touch::All).unwrap();
            check(&buf, 0x0102_0304_0506_0708, size, Touch::None).unwrap();
            let mut other = vec![0xffu8; size];
            write_seq(&mut other, 0x0102_0304_0506_0708);
            check(&other, 0x0102_0304_0506_0708, size, Touch::None).unwrap();
            assert_eq!(other[..size.min(8)], buf[..size.min(8)]);
            assert!(other[size.min(8)..].iter().all(|&b| b == 0xff), "{size}");
        }
    }

    #[test]
    fn fill_writes_every_byte() {
        let mut buf = vec![0u8; 200];
        fill(&mut buf, 1);
        assert!(buf[8..].iter().all(|&b| b == 1 ^ 0x5a));
        assert_eq!(&buf[..8], &1u64.to_le_bytes());
    }

    #[test]
    fn check_rejects_a_wrong_sequence_number_or_length() {
        let mut buf = vec![0u8; 64];
        fill(&mut buf, 7);
        for touch in [Touch::All, Touch::None] {
            let err = check(&buf, 8, 64, touch).unwrap_err();
            assert!(err.to_string().contains("sequence number 7"), "{err}");
            assert!(matches!(
                check(&buf[..32], 7, 64, touch),
                Err(BenchError::Corrupt { .. })
            ));
            let mut tiny = [0u8; 2];
            write_message(&mut tiny, 0x1ff, touch);
            check(&tiny, 0x1ff, 2, touch).unwrap();
            assert!(check(&tiny, 0x2ff, 2, touch).is_err());
        }
    }

    #[test]
    fn touch_reads_one_word_per_line() {
        let mut buf = vec![0u8; 130];
        buf[0] = 1;
        buf[64] = 2;
        buf[128] = 4;
        buf[1] = 0; // same line as buf[0]
        buf[80] = 100; // beyond the first word of its line: not read
        assert_eq!(touch(&buf), 7);
    }

    #[test]
    fn ring_capacity_fits_four_messages() {
        assert_eq!(ring_capacity(8), 1 << 20);
        assert_eq!(ring_capacity(1 << 20), 4 << 20);
        for size in [1usize, 64, 4096, 65536, 1 << 20, 3 << 20] {
            let cap = ring_capacity(size);
            assert!(cap.is_power_of_two());
            assert!(shmesh_ring::spsc::max_payload(cap) >= size as u64, "{size}");
        }
    }
}
