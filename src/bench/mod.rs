//! `shmesh bench`: shmesh's ring against the kernel's IPC and other IPC libraries, between
//! two real processes.
//!
//! - `shmesh bench pingpong`: round-trip latency, one message each way, as HdrHistogram
//!   percentiles (p50, p99, p99.9, max) of one sample per round trip.
//! - `shmesh bench throughput`: messages per second and bytes per second one way.
//! - `shmesh bench memcpy`: single-core copy bandwidth, the reference for throughput.
//! - `shmesh bench snapshot`: how fast a reader copies a whole version out of a region, with
//!   the writer process idle or publishing, against memcpy at the same size measured in the
//!   same run ([`snapshot`]).
//! - `shmesh bench allreduce` and `shmesh bench world-pingpong`: shmesh's World (all-reduce
//!   across ranks, ping-pong between two) against Open MPI in the same run ([`world`]).
//! - `shmesh bench plot`: an SVG chart of p50 latency against message size from the JSON
//!   lines of `pingpong` runs ([`plot`]).
//!
//! The transports: the cache-line floor, the shmesh rings (SPSC, MPSC, broadcast), Unix
//! sockets, FIFOs and TCP loopback always; iceoryx2 and ipc-channel with the cargo feature
//! `peers` ([`Transport`]). The `region` transport (a versioned region per direction, each
//! message a published version that the other side waits for and copies out; module `region`,
//! private) has a ping-pong only: a region keeps its latest version, so a reader slower than
//! the writer skips versions and a throughput would count what nobody read. `shmesh bench
//! throughput --transport region` says so and points to `pingpong` and `snapshot`.
//!
//! The throughput of the MPSC ring (`--writers N` writer processes into one reader) and of
//! the broadcast ring (one writer to `--readers N` reader processes) runs several peer
//! processes, released together by a start barrier; every reader checks each writer's
//! messages arrive in order and exactly once. The next section describes the two-process
//! case; the module `fanout` (private) the differences.
//!
//! # How a measurement runs
//!
//! The `shmesh` process pins itself to the first CPU it may use and, for each (size,
//! transport), sets the transport up and starts itself again as the peer (`shmesh
//! __bench-peer ...`, hidden), which pins itself to the second CPU. The peer's stdout is
//! discarded; its stderr is captured and shown if it fails. Then:
//!
//! 1. **Cache-line probe.** The two processes bounce one cache line ([`CacheLineProbe`])
//!    [`PROBE_WARMUP`] + [`PROBE_ROUND_TRIPS`] times; the median round trip is the `cl_ns` of
//!    the measurement. On VMs whose vCPUs move between near and far physical cores, every
//!    shared-memory figure moves with it, so each measurement carries the floor it was taken
//!    on, and tables show latencies as multiples of it.
//! 2. **Transport.** The parent connects its end and runs a warm-up (10% of the measured count,
//!    at least one message, not recorded), then the measured messages.
//!    - *pingpong*: the parent sends message `i` and waits for the peer's answer `i`, both of
//!      `size` bytes; one latency sample per round trip (`Instant` around it).
//!    - *throughput*: the peer sends, the parent receives. The time runs at the receiver, from
//!      the receipt of the last warm-up message to the receipt of the last message; the rate
//!      is measured messages over that time.
//!
//! Every message is the same work for every transport ([`Touch`]). With `--touch all` (the
//! default) the sender writes every byte (the sequence number first), the receiver checks the
//! sequence number and reads one word of every cache line. With `--touch none` the sender
//! writes the sequence number only and the receiver reads it only, as iceoryx2's own
//! benchmark measures (a loan sent untouched). A mismatch is an error, not a figure. The shm
//! ring is written and read in place (claim, fill, commit; read, touch, release); sockets and
//! pipes use one `write_all` and one `read_exact` of exactly `size` bytes per message; a
//! region is written in a write scope and published, and read by copying the snapshot out
//! (with `--touch none`, only the sequence number's bytes are written and copied).
//!
//! The transports of the `peers` feature:
//!
//! - *iceoryx2*: publish-subscribe with a `[u8]` payload of `size` bytes, one service per
//!   direction, history 0, no overflow (the publisher retries until delivered), subscribers
//!   busy-polling as iceoryx2's benchmark does. Each run has its own root directory (in the
//!   run's private temporary directory) and file prefix, and removes them.
//! - *ipc-channel*: the typed [`BenchMessage`](message::BenchMessage) (about 1 KiB) through
//!   serde and bincode, one channel per direction, set up through an `IpcOneShotServer`. It is
//!   measured once per run, whatever `--size` says, and reports the encoded message size.
//!
//! # Bounded waits
//!
//! Every wait has an end: the probe and the connection set-up have deadlines and check that the
//! peer still runs; sockets have 10 s send and receive timeouts; a ring call ends with
//! `PeerGone` when the peer dies; a region wait ends when the region's writer token is no
//! longer held (checked every 100 ms); and a watchdog kills the peer when the measured loop
//! makes no progress for [`STALL`], which ends any wait of the parent. The peer dies with its
//! parent (`PR_SET_PDEATHSIG`).

pub mod bridge;
mod error;
mod fanout;
#[cfg(feature = "peers")]
mod iceoryx;
#[cfg(feature = "peers")]
mod ipc;
pub mod memcpy;
pub mod message;
pub mod plot;
mod process;
mod region;
pub mod report;
mod rings;
pub mod snapshot;
mod transport;
mod typed;
pub mod world;

use std::collections::HashSet;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use nix::sys::signal::Signal;
use shmesh_ring::probe::ProbeError;
use shmesh_ring::{BroadcastPolicy, CacheLineProbe, WaitStrategy};

pub use error::BenchError;
pub use report::{
    BusyWriter, Fan, MemcpyRow, PingPongRow, Row, SnapshotRow, Table, ThroughputRow, WorldRow,
};
pub use snapshot::{run_peer as run_snapshot_peer, SnapshotArgs, SnapshotPeerArgs};
pub use transport::Transport;
pub use world::{AllreduceArgs, WorldPingpongArgs, WorldRankArgs};

use process::{Peer, TempDir, Watchdog};
use transport::{Endpoint, ParentSetup, Plan};

/// Longest time one blocking operation may take: a socket send or receive, waiting for the
/// peer to start, connect or attach, a probe round trip.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the measured loop may make no progress before the watchdog kills the peer.
pub const STALL: Duration = Duration::from_secs(20);
/// Cache-line round trips timed for `cl_ns`.
pub const PROBE_ROUND_TRIPS: usize = 20_000;
/// Cache-line round trips before those, not timed.
pub const PROBE_WARMUP: usize = 2_000;
/// Largest message size accepted.
pub const MAX_SIZE: usize = 64 << 20;
/// The default `--size` list.
pub const DEFAULT_SIZES: [usize; 5] = [8, 64, 4096, 65536, 1 << 20];

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Bench {
    /// Round-trip latency.
    #[value(name = "pingpong")]
    PingPong,
    /// One-way streaming rate.
    Throughput,
}

impl Bench {
    /// The name used in the output.
    pub fn name(self) -> &'static str {
        match self {
            Bench::PingPong => "pingpong",
            Bench::Throughput => "throughput",
        }
    }

    /// The measured message count when `--iters` is not given.
    ///
    /// Pingpong: 20 000 round trips up to 4 KiB; above, about 1 GiB each way, between 100 and
    /// 5 000. Throughput: about 1 GiB of messages, at least 16, at most 5 000 000 for shm
    /// (a quarter of a second at 20 M messages/s: shorter runs catch the ring's start-up, not
    /// its steady state) and iceoryx2, 500 000 for the others (about a second for them).
    pub fn default_iters(self, transport: Transport, size: usize) -> u64 {
        let gib = (1u64 << 30) / size.max(1) as u64;
        match (self, transport) {
            (Bench::PingPong, _) if size <= 4096 => 20_000,
            (Bench::PingPong, _) => gib.clamp(100, 5_000),
            (Bench::Throughput, t) if t.is_shared_memory() => gib.clamp(16, 5_000_000),
            (Bench::Throughput, _) => gib.clamp(16, 500_000),
        }
    }
}

impl fmt::Display for Bench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the shm ring waits (both ends): [`WaitStrategy::Spin`], [`WaitStrategy::spin_yield`] or
/// [`WaitStrategy::futex`]. Sockets and pipes always block in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Wait {
    /// Busy-spin: the lowest latency; burns a core while waiting.
    Spin,
    /// Spin, then sched_yield between checks.
    Yield,
    /// Spin, then sleep on a futex in the segment until the peer wakes it.
    Futex,
}

impl Wait {
    /// The ring's wait strategy.
    pub fn strategy(self) -> WaitStrategy {
        match self {
            Wait::Spin => WaitStrategy::Spin,
            Wait::Yield => WaitStrategy::spin_yield(),
            Wait::Futex => WaitStrategy::futex(),
        }
    }

    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Wait::Spin => "spin",
            Wait::Yield => "yield",
            Wait::Futex => "futex",
        }
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How much of each message the two ends write and read (`--touch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Touch {
    /// The sender writes every byte; the receiver checks the sequence number and reads one
    /// word of every cache line (the typed message: every field written and checked).
    All,
    /// The sender writes the sequence number only; the receiver checks it only. Sockets and
    /// pipes still copy every byte through the kernel.
    None,
}

impl Touch {
    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Touch::All => "all",
            Touch::None => "none",
        }
    }
}

impl fmt::Display for Touch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a message size: a byte count with an optional binary suffix (`k`/`KiB`,
/// `m`/`MiB`; `_` allowed between digits), from 1 byte to [`MAX_SIZE`].
///
/// # Errors
///
/// A message saying what is wrong with it.
///
/// # Examples
///
/// ```
/// use shmesh::bench::parse_size;
/// assert_eq!(parse_size("4k"), Ok(4096));
/// assert_eq!(parse_size("1MiB"), Ok(1 << 20));
/// assert!(parse_size("0").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits);
    let number: String = number.chars().filter(|&c| c != '_').collect();
    let unit: usize = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        other => {
            return Err(format!(
                "unknown unit '{other}' in size '{text}' (use a byte count, or k/KiB, m/MiB)"
            ))
        }
    };
    let n: usize = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 64, 4k, 1MiB)"))?;
    let size = n
        .checked_mul(unit)
        .filter(|&s| (1..=MAX_SIZE).contains(&s))
        .ok_or_else(|| {
            format!(
                "size '{text}' is out of range: 1 byte to {} MiB",
                MAX_SIZE >> 20
            )
        })?;
    Ok(size)
}

/// `shmesh bench` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Round-trip latency between two processes, per transport and message size.
    ///
    /// The parent sends a message of SIZE bytes, the peer process answers with one of SIZE
    /// bytes; one sample per round trip, after a 10% warm-up. Reports p50, p99, p99.9 and max
    /// in ns, each also as a multiple of cl_ns, the cache-line round trip measured between the
    /// same two pinned processes right before.
    Pingpong(BenchArgs),
    /// One-way message rate between two processes, per transport and message size.
    ///
    /// The peer process sends, the parent receives. The time is taken at the receiver, from
    /// the receipt of the last warm-up message (10%) to the receipt of the last message.
    /// Reports messages/s and bytes/s, and cl_ns (measured right before). The cacheline
    /// transport has no throughput and is skipped.
    Throughput(BenchArgs),
    /// Single-core memcpy bandwidth of this machine, the reference for throughput.
    ///
    /// Copies SIZE bytes between two buffers of 2 x SIZE bytes, alternating halves; one warm
    /// run, then the median of 7 runs of about 256 MiB each.
    Memcpy(MemcpyArgs),
    /// Snapshot bandwidth of a region against single-core memcpy, per region size.
    ///
    /// Another process, pinned to a CPU of its own, is the region's writer; it writes every
    /// byte, answers the cache-line probe (cl_ns), then is idle. Then, in this process: memcpy
    /// at SIZE (the reference), then region: copies of whole snapshots of the region into a
    /// buffer of this process (Reader::read_into), and region-busy: the same while the writer
    /// publishes a small change every --interval, with its rate and the copies it lapped
    /// (retries). Each is one warm run, then the median of 7 runs of about 256 MiB; the region
    /// rows give vs_memcpy, their bandwidth over memcpy's.
    Snapshot(SnapshotArgs),
    /// Draws p50 round-trip latency against message size as an SVG chart.
    ///
    /// Reads the JSON lines of `shmesh bench pingpong --json` (several runs concatenated are
    /// fine: each point is the median p50 of the lines with its transport, size, touch and
    /// wait; lines of other benches are skipped). Both axes are logarithmic; one line per
    /// transport, named with its touch mode and wait strategy when the input has several.
    /// The title gives this machine's CPU and kernel (or --machine) and the median cl_ns of
    /// the input.
    Plot(plot::PlotArgs),
    /// A ring mirrored between two hosts by shmesh-bridge, against raw TCP (needs root).
    ///
    /// Makes two network namespaces (hosts) with private /dev/shm, starts shmesh-bridge
    /// (found next to this executable) in each (--idle backoff or spin), TLS on or off; host A
    /// exports ring bench-ab, host B bench-ba. Per size:
    /// throughput A to B and ping-pong latency over the bridged rings, then over a raw TCP
    /// connection between the same hosts (length-prefixed, TCP_NODELAY), every message's
    /// sequence number checked; JSON lines carry "transport":"bridge"|"tcp", "tls" and "idle".
    Bridge(bridge::BridgeArgs),
    /// All-reduce latency of shmesh's World against Open MPI, per ranks and size.
    ///
    /// SIZE/8 f64s (at least one) summed in place on every rank. Each iteration: every rank
    /// fills its buffer, a barrier, then the one all-reduce timed on every rank, then the
    /// result checked (neither timed); an iteration's sample is the slowest rank's time. The
    /// shmesh ranks are processes of this executable (SHMESH_JOB/RANK/SIZE); the Open MPI side
    /// is a C program doing the same, compiled with mpicc -O2 and run with mpirun --bind-to
    /// none in the same run, when mpicc and mpirun are on the PATH. Reports p50, p99, p99.9
    /// and max in ns, cl_ns (measured right before), and shmesh/openmpi per ranks and size.
    Allreduce(world::AllreduceArgs),
    /// Round-trip latency between two ranks of shmesh's World against Open MPI, per size.
    ///
    /// Rank 0 writes a message of SIZE bytes, sends it to rank 1, which checks it, writes and
    /// sends one of SIZE bytes back; one sample per full round trip (as `shmesh bench
    /// pingpong`), after a 10% warm-up. The Open MPI side (MPI_Send/MPI_Recv of MPI_BYTE) runs
    /// in the same run, as for `allreduce`.
    WorldPingpong(world::WorldPingpongArgs),
}

/// Options of `shmesh bench pingpong` and `shmesh bench throughput`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Transports to measure, comma-separated.
    ///
    /// cacheline: one 8-byte word bounced between the two processes, the physical floor (it
    /// moves 8 bytes whatever --size says; pingpong shows it once per size, throughput skips
    /// it). shm: the shmesh SPSC ring in shared memory (two rings for pingpong, one for
    /// throughput). uds: Unix stream socket. pipe: named FIFOs. tcp: loopback 127.0.0.1 with
    /// TCP_NODELAY. typed: shmesh's typed channel sending a typed message of 1 KiB (a String, a
    /// vector of u32, a few numbers) serialized with rkyv into the ring and validated and read in
    /// place; like ipc-channel below, it is measured once, with its archived size.
    ///
    /// mpsc: the shmesh multi-producer ring; throughput: --writers writer processes into one
    /// reader, reported as their aggregate rate; pingpong: one ring per direction with one
    /// writer each. broadcast: the shmesh one-to-many ring; throughput: one writer to --readers
    /// reader processes, each timing what it receives, reported per reader and as the minimum
    /// (the rate every reader kept up with); pingpong: one ring per direction with one reader
    /// each. Their throughput needs messages of 8 bytes or more (each carries its writer and
    /// sequence number, which every reader checks).
    ///
    /// region: a shmesh versioned region per direction, each SIZE bytes: the sender writes its
    /// message into a write scope and publishes a version, the receiver waits for it (with
    /// --wait) and copies the snapshot into its own buffer (with --touch none, the sequence
    /// number's bytes only). Pingpong only, and not in the default list: a region keeps its
    /// latest version, so it has no throughput (see `shmesh bench snapshot` for its read
    /// bandwidth).
    ///
    /// Built with `--features peers` only: iceoryx2: iceoryx2 publish-subscribe, a [u8]
    /// sample of SIZE bytes per message, busy-polling subscribers. ipc-channel: servo's
    /// ipc-channel sending a typed message of about 1 KiB through serde/bincode; --size does
    /// not apply to it: it is measured once (with the first size) and its size column is the
    /// encoded message size.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "cacheline,shm,uds,pipe,tcp,mpsc,broadcast"
    )]
    pub transport: Vec<Transport>,
    /// Message sizes in bytes, comma-separated (suffixes k/KiB and m/MiB allowed).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        value_parser = parse_size,
        default_value = "8,64,4096,65536,1048576"
    )]
    pub size: Vec<usize>,
    /// How both ends of the shm ring wait: busy-spin, spin then yield, or spin then sleep on a
    /// futex. Sockets, pipes and ipc-channel always block in the kernel and iceoryx2 always
    /// busy-polls; the value is still reported.
    #[arg(long, value_enum, default_value_t = Wait::Spin)]
    pub wait: Wait,
    /// How much of each message is written and read: every byte, or the sequence number only.
    ///
    /// all: the sender writes every byte, the receiver checks the sequence number and reads
    /// one word of every cache line (ipc-channel: every field refilled and checked). none:
    /// loan and send without touching the payload, as iceoryx2 measures: the shm ring and
    /// iceoryx2 claim SIZE bytes, write only the 8-byte sequence number (iceoryx2: in the
    /// sample's user header, as safe Rust cannot read a payload it did not write) and commit; the
    /// receiver reads only the sequence number. Sockets and pipes have no loan: with none they
    /// still move all SIZE bytes through the kernel (write_all / read_exact), only the filling
    /// and reading in user space are skipped. ipc-channel still serializes and deserializes
    /// the whole message; only its seq is updated and checked. cacheline moves one word
    /// either way.
    #[arg(long, value_enum, default_value_t = Touch::All)]
    pub touch: Touch,
    /// Measured round trips (pingpong) or messages (throughput) per transport and size, after
    /// a 10% warm-up.
    ///
    /// Default: pingpong 20000 up to 4 KiB, fewer above (5000 at 64 KiB, 1024 at 1 MiB);
    /// throughput about 1 GiB of messages, at most 5000000 for shm and iceoryx2 and 500000 for
    /// the others.
    ///
    /// mpsc throughput: messages per writer (the reader times all of them); broadcast
    /// throughput: messages each reader receives.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// Writer processes of the mpsc throughput (default 2), each pinned to a CPU of its own
    /// when there are enough (the parent, the reader, keeps the first).
    ///
    /// Ping-pong always uses one writer per direction.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_PEERS as i64))]
    pub writers: Option<u16>,
    /// Reader processes of the broadcast throughput (default 2), each pinned to a CPU of its
    /// own when there are enough (the parent, the writer, keeps the first).
    ///
    /// Ping-pong always uses one reader per direction.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_PEERS as i64))]
    pub readers: Option<u16>,
    /// What the broadcast ring's writer does about a reader a whole ring behind (default
    /// block).
    ///
    /// block: it waits for the slowest reader; every reader gets every message (lost is
    /// always 0). lap: it never waits; a reader that falls a ring behind loses the records
    /// overwritten and resumes at the oldest intact one, so throughput measures what readers
    /// get, and each reader reports how many it lost.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub policy: Option<Policy>,
    /// One JSON object per line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The most `--writers` or `--readers`: each is a process.
pub const MAX_PEERS: usize = 64;

/// `--writers` and `--readers` when not given.
pub const DEFAULT_PEERS: usize = 2;

/// The broadcast ring's slow-reader policy (`--policy`): [`BroadcastPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum Policy {
    /// The writer waits for the slowest reader.
    #[default]
    Block,
    /// The writer never waits; lapped readers lose records and say how many.
    Lap,
}

impl Policy {
    /// The ring's policy.
    pub fn ring(self) -> BroadcastPolicy {
        match self {
            Policy::Block => BroadcastPolicy::Block,
            Policy::Lap => BroadcastPolicy::Lap,
        }
    }

    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Block => "block",
            Policy::Lap => "lap",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of `shmesh bench memcpy`.
#[derive(Debug, Clone, clap::Args)]
pub struct MemcpyArgs {
    /// Copy sizes in bytes, comma-separated (suffixes k/KiB and m/MiB allowed).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        value_parser = parse_size,
        default_value = "8,64,4096,65536,1048576"
    )]
    pub size: Vec<usize>,
    /// One JSON object per line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of the hidden peer subcommand (`shmesh __bench-peer`), which the parent passes.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Which benchmark.
    #[arg(long, value_enum)]
    pub bench: Bench,
    /// Which transport.
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// Message size.
    #[arg(long)]
    pub size: usize,
    /// Wait strategy of the ring.
    #[arg(long, value_enum)]
    pub wait: Wait,
    /// How much of each message to write and read.
    #[arg(long, value_enum, default_value_t = Touch::All)]
    pub touch: Touch,
    /// Messages to exchange, warm-up included.
    #[arg(long)]
    pub messages: u64,
    /// The cache-line probe segment to answer on (first; in a fanned-out throughput, when the
    /// parent says so, and only by the peer given it).
    #[arg(long)]
    pub probe: Option<String>,
    /// Where the transport's parent end is (segment stem, socket path, FIFO stem, address,
    /// iceoryx2 `TAG@ROOT`, ipc-channel one-shot server name).
    #[arg(long)]
    pub endpoint: String,
    /// The CPU to pin to.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// The parent's pid: the peer exits if its parent is gone.
    #[arg(long)]
    pub parent: u32,
    /// Peer processes of this measurement (MPSC writers, broadcast readers).
    #[arg(long, default_value_t = 1)]
    pub peers: usize,
    /// This peer's index among them (its writer id in the messages).
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// The broadcast rings' policy.
    #[arg(long, value_enum, default_value_t = Policy::Block)]
    pub policy: Policy,
    /// Warm-up messages per writer, before the reader starts its clock (fanned-out
    /// throughput).
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
}

/// The measurements `bench` would make for these lists: sizes outer, transports inner, each
/// list deduplicated in order; the cacheline transport is skipped for throughput, and the
/// transports that send the fixed typed message ([`Transport::sends_typed_message`]) are
/// measured with the first size only.
pub fn plan(bench: Bench, transports: &[Transport], sizes: &[usize]) -> Vec<(usize, Transport)> {
    let transports = dedup(transports);
    let mut out = Vec::new();
    for (i, size) in dedup(sizes).into_iter().enumerate() {
        for &transport in &transports {
            if bench == Bench::Throughput && transport == Transport::Cacheline {
                continue;
            }
            if transport.sends_typed_message() && i > 0 {
                continue;
            }
            out.push((size, transport));
        }
    }
    out
}

fn dedup<T: Copy + Eq + std::hash::Hash>(items: &[T]) -> Vec<T> {
    let mut seen = HashSet::new();
    items.iter().copied().filter(|x| seen.insert(*x)).collect()
}

/// Warm-up messages for `measured` ones: 10%, at least one.
pub fn warmup(measured: u64) -> u64 {
    (measured / 10).max(1)
}

/// Runs a `shmesh bench` subcommand, printing its rows on stdout as they come.
///
/// # Errors
///
/// The first measurement that fails, or an I/O error writing the output.
pub fn run(command: BenchCommand) -> Result<(), BenchError> {
    match command {
        BenchCommand::Pingpong(args) => run_ipc(Bench::PingPong, &args),
        BenchCommand::Throughput(args) => run_ipc(Bench::Throughput, &args),
        BenchCommand::Memcpy(args) => run_memcpy(&args),
        BenchCommand::Snapshot(args) => snapshot::run(&args),
        BenchCommand::Plot(args) => plot::run(&args),
        BenchCommand::Bridge(args) => bridge::run(&args),
        BenchCommand::Allreduce(args) => world::run_allreduce(&args),
        BenchCommand::WorldPingpong(args) => world::run_pingpong(&args),
    }
}

/// Where rows go: a table or JSON lines on stdout, with a progress bar on stderr when it is a
/// terminal.
struct Output {
    json: bool,
    table: Table,
    header_done: bool,
    bar: ProgressBar,
}

impl Output {
    fn new(json: bool, table: Table, measurements: usize) -> Output {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(measurements as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Output {
            json,
            table,
            header_done: false,
            bar,
        }
    }

    fn row(&mut self, row: &Row) -> Result<(), BenchError> {
        let mut text = String::new();
        if self.json {
            text = row.to_json();
        } else {
            if !self.header_done {
                text = self.table.header() + "\n";
                self.header_done = true;
            }
            text += &row.to_table();
        }
        self.bar
            .suspend(|| {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{text}").and_then(|()| out.flush())
            })
            .map_err(BenchError::io("writing the results to stdout"))?;
        self.bar.inc(1);
        Ok(())
    }

    /// A line after the rows in the table (nothing with `--json`: stdout holds only rows).
    fn note(&mut self, text: &str) -> Result<(), BenchError> {
        if self.json {
            return Ok(());
        }
        self.bar
            .suspend(|| {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{text}").and_then(|()| out.flush())
            })
            .map_err(BenchError::io("writing the results to stdout"))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn run_memcpy(args: &MemcpyArgs) -> Result<(), BenchError> {
    let sizes = dedup(&args.size);
    if let Some((cpu, _)) = process::pick_cpus()? {
        process::pin(cpu)?;
    }
    let mut out = Output::new(args.json, Table::Memcpy, sizes.len());
    for size in sizes {
        out.bar
            .set_message(format!("memcpy {}", report::format_size(size)));
        let bytes_per_s = memcpy::bandwidth(size);
        out.row(&Row::Memcpy(MemcpyRow { size, bytes_per_s }))?;
    }
    Ok(())
}

/// What all measurements of one run share.
struct Ctx {
    bench: Bench,
    wait: Wait,
    touch: Touch,
    iters: Option<u64>,
    child_cpu: Option<usize>,
    /// The CPUs this run may use, the parent's first (for the peers of a fanned-out
    /// throughput); empty when the processes are not pinned.
    cpus: Vec<usize>,
    /// MPSC writers of a fanned-out throughput.
    writers: usize,
    /// Broadcast readers of a fanned-out throughput.
    readers: usize,
    policy: Policy,
    dir: TempDir,
    pid: u32,
    next_id: u64,
}

/// Checks the options that only some transports and benches use: `--writers`, `--readers`
/// and `--policy` must apply to something measured, and a fanned-out throughput needs
/// messages that hold a writer id and a sequence number.
fn check_fan_options(
    bench: Bench,
    args: &BenchArgs,
    measurements: &[(usize, Transport)],
) -> Result<(), BenchError> {
    let has = |t: Transport| measurements.iter().any(|&(_, m)| m == t);
    let pingpong_note = "ping-pong uses one writer and one reader per direction";
    if args.writers.is_some() && !(bench == Bench::Throughput && has(Transport::Mpsc)) {
        return Err(BenchError::Usage(format!(
            "--writers applies to the throughput of the mpsc transport only ({pingpong_note}): \
             use `shmesh bench throughput --transport mpsc --writers N`"
        )));
    }
    if args.readers.is_some() && !(bench == Bench::Throughput && has(Transport::Broadcast)) {
        return Err(BenchError::Usage(format!(
            "--readers applies to the throughput of the broadcast transport only \
             ({pingpong_note}): use `shmesh bench throughput --transport broadcast --readers N`"
        )));
    }
    if args.policy.is_some() && !has(Transport::Broadcast) {
        return Err(BenchError::Usage(
            "--policy applies to the broadcast transport only: add it to --transport".into(),
        ));
    }
    if let Some(&(size, transport)) = measurements
        .iter()
        .find(|&&(size, t)| t.fans_out(bench) && size < fanout::MIN_SIZE)
    {
        return Err(BenchError::Usage(format!(
            "the {transport} throughput needs messages of at least {} bytes (each carries its \
             writer and sequence number, which every reader checks), not {size}: raise --size \
             or leave {transport} out",
            fanout::MIN_SIZE
        )));
    }
    Ok(())
}

impl Ctx {
    /// The peer processes of a measurement of `transport`: `--writers` for the mpsc
    /// throughput, `--readers` for the broadcast throughput, otherwise one.
    fn peers_of(&self, transport: Transport) -> usize {
        match (self.bench, transport) {
            (Bench::Throughput, Transport::Mpsc) => self.writers,
            (Bench::Throughput, Transport::Broadcast) => self.readers,
            _ => 1,
        }
    }
}

fn run_ipc(bench: Bench, args: &BenchArgs) -> Result<(), BenchError> {
    for transport in dedup(&args.transport) {
        transport.check_available()?;
        if transport == Transport::Region {
            region::no_throughput(bench)?;
        }
    }
    let measurements = plan(bench, &args.transport, &args.size);
    if measurements.is_empty() {
        return Err(BenchError::Usage(
            "nothing to measure: the cacheline transport has no throughput; pick another \
             --transport"
                .into(),
        ));
    }
    check_fan_options(bench, args, &measurements)?;
    let dir = TempDir::new()?;
    process::clean_up_on_signal(dir.path().to_owned())?;
    // Listed before the parent pins itself to the first of them.
    let allowed = process::allowed_cpus()?;
    let cpus = match allowed.as_slice() {
        [parent, child, ..] => Some((*parent, *child)),
        _ => None,
    };
    match cpus {
        Some((parent, _)) => process::pin(parent)?,
        None => eprintln!(
            "warning: fewer than two CPUs available: the two processes share one, and spinning \
             transports measure the scheduler"
        ),
    }
    let mut ctx = Ctx {
        bench,
        wait: args.wait,
        touch: args.touch,
        iters: args.iters,
        child_cpu: cpus.map(|(_, child)| child),
        cpus: if cpus.is_some() { allowed } else { Vec::new() },
        writers: args.writers.map_or(DEFAULT_PEERS, usize::from),
        readers: args.readers.map_or(DEFAULT_PEERS, usize::from),
        policy: args.policy.unwrap_or_default(),
        dir,
        pid: std::process::id(),
        next_id: 0,
    };
    fanout::warn_if_oversubscribed(&ctx, &measurements);
    let table = match bench {
        Bench::PingPong => Table::PingPong,
        Bench::Throughput => Table::Throughput,
    };
    let mut out = Output::new(args.json, table, measurements.len());
    for (size, transport) in measurements {
        let size = transport.message_size(size);
        let label = format!("{bench} {transport} {}", report::format_size(size));
        out.bar.set_message(label.clone());
        let row = measure(&mut ctx, transport, size, &out.bar, label).map_err(|e| {
            BenchError::Measurement {
                bench: bench.name(),
                transport,
                size,
                source: Box::new(e),
            }
        })?;
        out.row(&row)?;
    }
    Ok(())
}

fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    // 1 ns to 100 s at 3 significant digits; longer samples saturate (and the watchdog fires
    // long before).
    Histogram::new_with_bounds(1, 100_000_000_000, 3)
        .map_err(|e| BenchError::Usage(format!("internal error: histogram: {e}")))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One measurement: probe, then transport, with a fresh peer process.
fn measure(
    ctx: &mut Ctx,
    transport: Transport,
    size: usize,
    bar: &ProgressBar,
    label: String,
) -> Result<Row, BenchError> {
    ctx.next_id += 1;
    let tag = format!("bench.{}.{}", ctx.pid, ctx.next_id);
    let probe_name = format!("{tag}.cl");
    let mut probe = CacheLineProbe::create(&probe_name).map_err(|source| BenchError::Segment {
        name: probe_name.clone(),
        source,
    })?;
    let plan = Plan {
        transport,
        bench: ctx.bench,
        size,
        wait: ctx.wait.strategy(),
        touch: ctx.touch,
        tag: &tag,
        dir: ctx.dir.path(),
        policy: ctx.policy.ring(),
        peers: ctx.peers_of(transport),
    };
    // Declared before everything of the measurement, so dropped after all of it, on every path.
    let _clean_up = CleanUp(&plan);
    let measured = ctx
        .iters
        .unwrap_or_else(|| ctx.bench.default_iters(transport, size));
    let warmup = warmup(measured);
    if transport.fans_out(ctx.bench) {
        let counts = fanout::Counts { warmup, measured };
        return fanout::measure(ctx, &plan, &mut probe, &probe_name, counts, bar, label);
    }
    let (setup, endpoint) = ParentSetup::new(&plan)?;
    let mut args = vec![
        "__bench-peer".to_owned(),
        format!("--bench={}", ctx.bench),
        format!("--transport={transport}"),
        format!("--size={size}"),
        format!("--wait={}", ctx.wait),
        format!("--touch={}", ctx.touch),
        format!("--messages={}", warmup + measured),
        format!("--probe={probe_name}"),
        format!("--endpoint={endpoint}"),
        format!("--parent={}", ctx.pid),
        format!("--policy={}", ctx.policy),
    ];
    if let Some(cpu) = ctx.child_cpu {
        args.push(format!("--cpu={cpu}"));
    }
    let mut peer = Peer::spawn(&args)?;
    // The parent's end of the transport lives until the peer is finished: closing it early
    // would make a peer that is still running fail with a misleading "closed" error.
    let mut kept = None;
    let outcome = parent_side(
        ctx, &plan, setup, &mut probe, &mut peer, &mut kept, warmup, measured, bar, label,
    );
    let peer_result = peer.finish(outcome.is_err());
    drop(kept);
    match (outcome, peer_result) {
        (Ok(row), Ok(())) => Ok(row),
        // The watchdog killed the peer: that is the story, not the peer's death.
        (Err(e @ BenchError::Stalled(_)), _) => Err(e),
        // When the peer failed, its error is the cause; the parent's is a consequence.
        (_, Err(peer_error)) => Err(peer_error),
        (Err(e), Ok(())) => Err(e),
    }
}

/// Removes what a measurement may leave outside the run's private directory (iceoryx2's files
/// in /dev/shm) when dropped: after both ends are gone, whether the measurement worked or not.
struct CleanUp<'a>(&'a Plan<'a>);

impl Drop for CleanUp<'_> {
    fn drop(&mut self) {
        transport::clean_up(self.0);
    }
}

#[allow(clippy::too_many_arguments)]
fn parent_side(
    ctx: &Ctx,
    plan: &Plan<'_>,
    setup: ParentSetup,
    probe: &mut CacheLineProbe,
    peer: &mut Peer,
    kept: &mut Option<Box<dyn Endpoint>>,
    warmup: u64,
    measured: u64,
    bar: &ProgressBar,
    label: String,
) -> Result<Row, BenchError> {
    let cl_ns = measure_cl(probe, peer)?;
    let total = warmup + measured;
    let ticker = bar.clone();
    let watchdog = Watchdog::start(STALL, vec![peer.pid()], move |done| {
        ticker.set_message(format!("{label} {}%", done * 100 / total.max(1)));
    })?;
    let progress = watchdog.progress();
    let latency = |h: Histogram<u64>| {
        let mut row =
            PingPongRow::from_histogram(plan.transport, plan.size, ctx.wait, ctx.touch, cl_ns, &h);
        if plan.transport == Transport::Broadcast {
            row.policy = Some(ctx.policy);
        }
        Row::PingPong(row)
    };
    let result = match setup {
        ParentSetup::Line(mut line) => {
            pingpong_line(&mut line, warmup, total, progress).map(latency)
        }
        setup => {
            let ep = kept.insert(setup.connect(plan, &mut || peer.check_alive())?);
            match ctx.bench {
                Bench::PingPong => pingpong(ep.as_mut(), warmup, total, progress).map(latency),
                Bench::Throughput => throughput(ep.as_mut(), warmup, total, progress).map(|t| {
                    let msgs_per_s = measured as f64 / t.as_secs_f64().max(1e-9);
                    Row::Throughput(ThroughputRow {
                        transport: plan.transport,
                        size: plan.size,
                        wait: ctx.wait,
                        touch: ctx.touch,
                        messages: measured,
                        cl_ns,
                        msgs_per_s,
                        bytes_per_s: msgs_per_s * plan.size as f64,
                        fan: None,
                    })
                }),
            }
        }
    };
    if watchdog.stalled() {
        return Err(BenchError::Stalled(STALL));
    }
    result
}

/// The cache-line round trip between the two processes: the median of [`PROBE_ROUND_TRIPS`]
/// after [`PROBE_WARMUP`], in ns. The first round trip waits for the peer to start.
fn measure_cl(probe: &mut CacheLineProbe, peer: &mut Peer) -> Result<u64, BenchError> {
    let start = Instant::now();
    loop {
        match probe.round_trip(Duration::from_millis(20)) {
            Ok(()) => break,
            Err(ProbeError::Timeout(_)) => {
                peer.check_alive()?;
                if start.elapsed() > OP_TIMEOUT {
                    return Err(BenchError::Timeout {
                        what: "the peer process to start and answer the cache-line probe",
                        waited: OP_TIMEOUT,
                    });
                }
            }
            Err(e) => return Err(BenchError::Probe(e)),
        }
    }
    for _ in 0..PROBE_WARMUP {
        probe.round_trip(OP_TIMEOUT).map_err(BenchError::Probe)?;
    }
    let mut samples = Vec::with_capacity(PROBE_ROUND_TRIPS);
    for _ in 0..PROBE_ROUND_TRIPS {
        let t = Instant::now();
        probe.round_trip(OP_TIMEOUT).map_err(BenchError::Probe)?;
        samples.push(nanos(t.elapsed()));
    }
    probe.stop();
    Ok(median(&mut samples))
}

/// The median of `samples` (the upper one of an even count); 0 for none.
pub fn median(samples: &mut [u64]) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mid = samples.len() / 2;
    *samples.select_nth_unstable(mid).1
}

/// Ping-pong over the cache-line probe: the parent's round trips, timed one by one.
fn pingpong_line(
    line: &mut CacheLineProbe,
    warmup: u64,
    total: u64,
    progress: &AtomicU64,
) -> Result<Histogram<u64>, BenchError> {
    let mut hist = new_histogram()?;
    for seq in 0..total {
        let t = Instant::now();
        line.round_trip(OP_TIMEOUT).map_err(BenchError::Probe)?;
        let ns = nanos(t.elapsed());
        if seq >= warmup {
            hist.saturating_record(ns);
        }
        progress.store(seq + 1, Ordering::Relaxed);
    }
    line.stop();
    Ok(hist)
}

/// Ping-pong over an endpoint: send `seq`, receive the answer `seq`, one sample per round trip.
fn pingpong(
    ep: &mut dyn Endpoint,
    warmup: u64,
    total: u64,
    progress: &AtomicU64,
) -> Result<Histogram<u64>, BenchError> {
    let mut hist = new_histogram()?;
    for seq in 0..total {
        let t = Instant::now();
        ep.send(seq)?;
        ep.recv(seq)?;
        let ns = nanos(t.elapsed());
        if seq >= warmup {
            hist.saturating_record(ns);
        }
        progress.store(seq + 1, Ordering::Relaxed);
    }
    Ok(hist)
}

/// The receiving side of throughput: the time from the receipt of the last warm-up message to
/// the receipt of the last message.
fn throughput(
    ep: &mut dyn Endpoint,
    warmup: u64,
    total: u64,
    progress: &AtomicU64,
) -> Result<Duration, BenchError> {
    for seq in 0..warmup {
        ep.recv(seq)?;
        progress.store(seq + 1, Ordering::Relaxed);
    }
    let start = Instant::now();
    for seq in warmup..total {
        ep.recv(seq)?;
        progress.store(seq + 1, Ordering::Relaxed);
    }
    Ok(start.elapsed())
}

/// Runs the peer process of one measurement (the hidden `shmesh __bench-peer`): answers the
/// cache-line probe, then plays the other end of the transport.
///
/// # Errors
///
/// Any failure; the binary prints it on stderr, where the parent collects it.
pub fn run_peer(args: &PeerArgs) -> Result<(), BenchError> {
    // Die with the parent; and if it died before this call, go now.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(BenchError::os("prctl(PR_SET_PDEATHSIG)"))?;
    if nix::unistd::getppid().as_raw() as u32 != args.parent {
        return Err(BenchError::Usage("the parent process is gone".into()));
    }
    if let Some(cpu) = args.cpu {
        process::pin(cpu)?;
    }
    let tag = args.endpoint.as_str();
    let dir = std::path::Path::new("");
    let plan = Plan {
        transport: args.transport,
        bench: args.bench,
        size: args.size,
        wait: args.wait.strategy(),
        touch: args.touch,
        tag,
        dir,
        policy: args.policy.ring(),
        peers: args.peers,
    };
    if args.transport.fans_out(args.bench) {
        return fanout::run_peer(args, &plan);
    }
    let probe_name = args
        .probe
        .as_deref()
        .ok_or_else(|| BenchError::Usage("internal error: the peer was given no --probe".into()))?;
    let probe = CacheLineProbe::open(probe_name).map_err(|source| BenchError::Segment {
        name: probe_name.to_owned(),
        source,
    })?;
    probe.serve(OP_TIMEOUT).map_err(BenchError::Probe)?;
    drop(probe);

    if args.transport == Transport::Cacheline {
        let line = transport::open_line(&args.endpoint)?;
        let served = line.serve(OP_TIMEOUT).map_err(BenchError::Probe)?;
        if served != args.messages {
            return Err(BenchError::Corrupt {
                seq: served,
                detail: format!(
                    "the probe answered {served} round trips, expected {}",
                    args.messages
                ),
            });
        }
        return Ok(());
    }
    let mut ep = transport::connect_peer(&plan, &args.endpoint)?;
    match args.bench {
        Bench::PingPong => {
            for seq in 0..args.messages {
                ep.recv(seq)?;
                ep.send(seq)?;
            }
        }
        Bench::Throughput => {
            for seq in 0..args.messages {
                ep.send(seq)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: BenchCommand,
    }

    fn parse(args: &[&str]) -> Result<BenchCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.command)
    }

    fn ipc_args(args: &[&str]) -> BenchArgs {
        match parse(args).unwrap() {
            BenchCommand::Pingpong(a) | BenchCommand::Throughput(a) => a,
            other => panic!("not an IPC bench: {other:?}"),
        }
    }

    #[test]
    fn sizes_parse_with_units_and_limits() {
        assert_eq!(parse_size("8"), Ok(8));
        assert_eq!(parse_size("64b"), Ok(64));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1mib"), Ok(1 << 20));
        assert_eq!(parse_size("1_048_576"), Ok(1 << 20));
        assert_eq!(parse_size(" 16 "), Ok(16));
        assert!(parse_size("0").unwrap_err().contains("out of range"));
        assert!(parse_size("65M").unwrap_err().contains("out of range"));
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("4g").unwrap_err().contains("unknown unit"));
        assert!(parse_size("k").unwrap_err().contains("not a size"));
        assert!(parse_size("").is_err());
    }

    #[test]
    fn lists_parse_comma_separated() {
        let a = ipc_args(&["pingpong", "--transport", "shm,uds", "--size", "64,4k,1MiB"]);
        assert_eq!(a.transport, [Transport::Shm, Transport::Uds]);
        assert_eq!(a.size, [64, 4096, 1 << 20]);
        assert_eq!(a.wait, Wait::Spin);
        assert_eq!(a.touch, Touch::All);
        assert_eq!(a.iters, None);
        assert!(!a.json);
        let a = ipc_args(&[
            "throughput",
            "--transport=tcp",
            "--transport=pipe",
            "--wait=futex",
        ]);
        assert_eq!(a.transport, [Transport::Tcp, Transport::Pipe]);
        assert_eq!(a.wait, Wait::Futex);
        let a = ipc_args(&["pingpong", "--iters", "2000", "--json", "--wait", "yield"]);
        assert_eq!(a.iters, Some(2000));
        assert!(a.json);
        assert_eq!(a.wait, Wait::Yield);
        let a = ipc_args(&[
            "throughput",
            "--touch",
            "none",
            "--transport",
            "iceoryx2,ipc-channel",
        ]);
        assert_eq!(a.touch, Touch::None);
        assert_eq!(a.transport, [Transport::Iceoryx2, Transport::IpcChannel]);
    }

    #[test]
    fn fan_options_parse_with_limits() {
        let a = ipc_args(&["throughput", "--transport", "mpsc,broadcast"]);
        assert_eq!((a.writers, a.readers, a.policy), (None, None, None));
        let a = ipc_args(&[
            "throughput",
            "--writers",
            "3",
            "--readers=4",
            "--policy",
            "lap",
        ]);
        assert_eq!(
            (a.writers, a.readers, a.policy),
            (Some(3), Some(4), Some(Policy::Lap))
        );
        assert_eq!(Policy::Lap.ring(), BroadcastPolicy::Lap);
        assert_eq!(Policy::default().name(), "block");
        for bad in [
            &["throughput", "--writers", "0"][..],
            &["throughput", "--readers", "65"],
            &["throughput", "--writers", "two"],
            &["throughput", "--policy", "drop"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fan_options_must_apply_to_something_measured() {
        let check = |bench, args: &[&str]| {
            let a = ipc_args(args);
            check_fan_options(bench, &a, &plan(bench, &a.transport, &a.size))
        };
        use Bench::{PingPong, Throughput};
        check(
            Throughput,
            &["throughput", "--transport=mpsc", "--writers=3"],
        )
        .unwrap();
        check(
            Throughput,
            &["throughput", "--transport=broadcast", "--readers=3"],
        )
        .unwrap();
        check(
            PingPong,
            &["pingpong", "--transport=broadcast", "--policy=lap"],
        )
        .unwrap();
        let err = |bench, args: &[&str]| check(bench, args).unwrap_err().to_string();
        let e = err(
            Throughput,
            &["throughput", "--transport=shm", "--writers=3"],
        );
        assert!(e.contains("--writers applies to"), "{e}");
        let e = err(PingPong, &["pingpong", "--transport=mpsc", "--writers=3"]);
        assert!(e.contains("one writer and one reader per direction"), "{e}");
        let e = err(
            Throughput,
            &["throughput", "--transport=mpsc", "--readers=3"],
        );
        assert!(e.contains("--readers applies to"), "{e}");
        let e = err(
            Throughput,
            &["throughput", "--transport=shm", "--policy=lap"],
        );
        assert!(e.contains("--policy applies to"), "{e}");
        let e = err(
            Throughput,
            &["throughput", "--transport=mpsc", "--size=64,4"],
        );
        assert!(e.contains("at least 8 bytes") && e.contains("not 4"), "{e}");
        // Ping-pong carries what fits of the sequence number, as the other transports.
        check(
            PingPong,
            &["pingpong", "--transport=mpsc,broadcast", "--size=3"],
        )
        .unwrap();
    }

    #[test]
    fn region_has_a_pingpong_and_no_throughput() {
        let a = ipc_args(&["pingpong", "--transport", "region,shm", "--size", "64"]);
        assert_eq!(a.transport, [Transport::Region, Transport::Shm]);
        assert_eq!(
            plan(Bench::PingPong, &a.transport, &a.size),
            [(64, Transport::Region), (64, Transport::Shm)]
        );
        assert!(!Transport::DEFAULT.contains(&Transport::Region));
        assert!(
            Transport::Region.is_shared_memory() && !Transport::Region.fans_out(Bench::PingPong)
        );
        region::no_throughput(Bench::PingPong).unwrap();
        let e = region::no_throughput(Bench::Throughput)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no throughput")
                && e.contains("latest version")
                && e.contains("bench pingpong --transport region")
                && e.contains("bench snapshot"),
            "{e}"
        );
    }

    #[test]
    fn snapshot_is_a_bench_command() {
        match parse(&["snapshot", "--size", "1MiB", "--json"]).unwrap() {
            BenchCommand::Snapshot(s) => {
                assert_eq!(s.size, [1 << 20]);
                assert!(s.json);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["snapshot", "--transport", "uds"]).is_err());
    }

    #[test]
    fn plot_takes_an_input_and_an_output() {
        match parse(&["plot", "--input", "r.jsonl", "--output", "l.svg"]).unwrap() {
            BenchCommand::Plot(p) => {
                assert_eq!(p.input, std::path::Path::new("r.jsonl"));
                assert_eq!(p.output, std::path::Path::new("l.svg"));
                assert_eq!(p.machine, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["plot"]).is_err(), "--input is required");
    }

    #[test]
    fn peer_transports_need_the_feature() {
        for t in Transport::ALL {
            let available = t.check_available();
            if t.is_peer_library() && !cfg!(feature = "peers") {
                let err = available.unwrap_err().to_string();
                assert!(err.contains("--features peers"), "{err}");
            } else {
                available.unwrap();
            }
        }
    }

    #[test]
    fn defaults_are_every_transport_and_the_standard_sizes() {
        let a = ipc_args(&["pingpong"]);
        assert_eq!(a.transport, Transport::DEFAULT);
        assert_eq!(a.size, DEFAULT_SIZES);
        match parse(&["memcpy"]).unwrap() {
            BenchCommand::Memcpy(m) => assert_eq!(m.size, DEFAULT_SIZES),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(parse(&["pingpong", "--transport", "shm,bogus"]).is_err());
        assert!(parse(&["pingpong", "--size", "64,zero"]).is_err());
        assert!(parse(&["pingpong", "--size", "0"]).is_err());
        assert!(parse(&["pingpong", "--iters", "0"]).is_err());
        assert!(parse(&["pingpong", "--wait", "sleep"]).is_err());
        assert!(parse(&["pingpong", "--touch", "some"]).is_err());
        assert!(parse(&["memcpy", "--transport", "shm"]).is_err());
    }

    #[test]
    fn plan_dedups_and_skips_cacheline_for_throughput() {
        let t = [Transport::Cacheline, Transport::Shm, Transport::Shm];
        assert_eq!(
            plan(Bench::PingPong, &t, &[64, 8, 64]),
            [
                (64, Transport::Cacheline),
                (64, Transport::Shm),
                (8, Transport::Cacheline),
                (8, Transport::Shm)
            ]
        );
        assert_eq!(plan(Bench::Throughput, &t, &[64]), [(64, Transport::Shm)]);
        assert!(plan(Bench::Throughput, &[Transport::Cacheline], &[64]).is_empty());
    }

    #[test]
    fn plan_measures_the_typed_message_once() {
        let t = [Transport::IpcChannel, Transport::Iceoryx2];
        assert_eq!(
            plan(Bench::PingPong, &t, &[64, 4096]),
            [
                (64, Transport::IpcChannel),
                (64, Transport::Iceoryx2),
                (4096, Transport::Iceoryx2)
            ]
        );
        assert_eq!(
            plan(Bench::Throughput, &t[..1], &[8, 8, 16]),
            [(8, Transport::IpcChannel)]
        );
    }

    #[test]
    fn default_iteration_counts() {
        use Transport::{Shm, Uds};
        assert_eq!(Bench::PingPong.default_iters(Shm, 8), 20_000);
        assert_eq!(Bench::PingPong.default_iters(Uds, 4096), 20_000);
        assert_eq!(Bench::PingPong.default_iters(Shm, 65536), 5_000);
        assert_eq!(Bench::PingPong.default_iters(Uds, 1 << 20), 1024);
        assert_eq!(Bench::PingPong.default_iters(Shm, MAX_SIZE), 100);
        assert_eq!(Bench::Throughput.default_iters(Uds, 8), 500_000);
        assert_eq!(Bench::Throughput.default_iters(Shm, 8), 5_000_000);
        assert_eq!(
            Bench::Throughput.default_iters(Transport::Iceoryx2, 8),
            5_000_000
        );
        assert_eq!(
            Bench::Throughput.default_iters(Transport::IpcChannel, 1017),
            500_000
        );
        assert_eq!(Bench::Throughput.default_iters(Uds, 4096), 262_144);
        assert_eq!(Bench::Throughput.default_iters(Shm, 4096), 262_144);
        assert_eq!(Bench::Throughput.default_iters(Shm, 1 << 20), 1024);
        assert_eq!(Bench::Throughput.default_iters(Uds, MAX_SIZE), 16);
        assert_eq!(warmup(20_000), 2_000);
        assert_eq!(warmup(5), 1);
    }

    #[test]
    fn median_of_samples() {
        assert_eq!(median(&mut []), 0);
        assert_eq!(median(&mut [5]), 5);
        assert_eq!(median(&mut [9, 1, 5]), 5);
        assert_eq!(median(&mut [4, 1, 3, 2]), 3);
    }

    #[test]
    fn wait_maps_to_the_ring_strategies() {
        assert_eq!(Wait::Spin.strategy(), WaitStrategy::Spin);
        assert_eq!(Wait::Yield.strategy(), WaitStrategy::spin_yield());
        assert_eq!(Wait::Futex.strategy(), WaitStrategy::futex());
    }
}
