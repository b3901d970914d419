//! Why a benchmark failed.

use std::io;
use std::time::Duration;

use shmesh_ring::probe::ProbeError;
use shmesh_ring::{AttachError, ClaimError, ReadError, SegmentError};
use thiserror::Error;

use super::transport::Transport;

/// Why `shmesh bench` (or its peer process) failed.
///
/// Messages say what went wrong and what to do; the cause, when there is one, is the
/// [`source`](std::error::Error::source) (the `shmesh` binary prints the whole chain).
#[derive(Debug, Error)]
pub enum BenchError {
    /// One measurement failed; the source says why.
    #[error("benchmark {bench} over {transport} with {size}-byte messages failed")]
    Measurement {
        /// `pingpong` or `throughput`.
        bench: &'static str,
        /// The transport measured.
        transport: Transport,
        /// The message size in bytes.
        size: usize,
        /// What went wrong.
        #[source]
        source: Box<BenchError>,
    },
    /// A shared-memory segment could not be created or opened.
    #[error(
        "could not create or open the shared-memory segment '{name}' (is /dev/shm mounted, \
         writable and large enough?)"
    )]
    Segment {
        /// Segment name.
        name: String,
        /// The segment layer's error.
        #[source]
        source: SegmentError,
    },
    /// An end of a ring, or a region's writer or reader, could not be attached.
    #[error("could not attach to the ring or region '{name}'")]
    Attach {
        /// Segment name.
        name: String,
        /// The ring layer's error.
        #[source]
        source: AttachError,
    },
    /// Claiming space in the ring failed.
    #[error("claiming space in the shared-memory ring failed")]
    Claim(#[source] ClaimError),
    /// Reading the ring failed.
    #[error("reading the shared-memory ring failed")]
    Read(#[source] ReadError),
    /// Reading the broadcast ring failed.
    #[error("reading the broadcast ring failed")]
    BroadcastRead(#[source] shmesh_ring::broadcast::ReadError),
    /// A cache-line probe round trip failed.
    #[error("the cache-line ping-pong with the peer process failed")]
    Probe(#[source] ProbeError),
    /// An I/O call failed.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A system call made through `nix` failed.
    #[error("{what} failed")]
    Os {
        /// What was being done.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The other end closed the transport before the benchmark was over.
    #[error(
        "the peer closed the connection after {seq} messages, before the benchmark was over \
         (it probably failed: see its error)"
    )]
    Closed {
        /// Messages received before the end of file.
        seq: u64,
    },
    /// The writer of a region the benchmark waits on is gone: it detached or died before
    /// publishing the version awaited.
    #[error(
        "the writer of the region '{name}' is gone before it published message {seq} (the \
         region is at version {latest}): the peer probably failed, see its error"
    )]
    RegionWriterGone {
        /// The region.
        name: String,
        /// The message awaited (version `seq + 1`).
        seq: u64,
        /// The region's latest version.
        latest: u64,
    },
    /// `shmesh bench snapshot`: the busy writer rewrote the buffer of every copy the reader
    /// began, for too long.
    #[error(
        "no snapshot of the {size}-byte region completed in {waited:?} ({retries} attempts \
         lapped): the writer, publishing every {interval:?}, rewrote the buffer being copied \
         each time (with {buffers} buffers a copy must finish before the writer publishes {} \
         more versions); raise --interval, or leave region-busy out at this size",
        .buffers - 1
    )]
    Starved {
        /// Region size in bytes.
        size: usize,
        /// The busy writer's interval between versions.
        interval: Duration,
        /// How long the reader tried.
        waited: Duration,
        /// Attempts that the writer lapped meanwhile.
        retries: u64,
        /// The region's buffers.
        buffers: usize,
    },
    /// A message failed its sanity check: the transport lost, reordered or mangled data.
    #[error(
        "message {seq} failed its sanity check: {detail}; the transport lost, reordered or \
         mangled data, so no figure is reported (this is a bug: please report it)"
    )]
    Corrupt {
        /// The sequence number expected.
        seq: u64,
        /// What differs.
        detail: String,
    },
    /// The peer process could not be started.
    #[error(
        "could not start the benchmark peer process '{exe}' (is the shmesh binary still there?)"
    )]
    Spawn {
        /// The executable.
        exe: String,
        /// The error from `spawn`.
        #[source]
        source: io::Error,
    },
    /// The peer process failed.
    #[error("the benchmark peer process {status}{}", peer_output(.stderr))]
    PeerFailed {
        /// How it ended (`exited with exit status: 1`, `was killed by signal 9`...).
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Neither side made progress for too long; the peer was killed.
    #[error(
        "no progress for {0:?}: the benchmark stalled, the peer process was killed (is the \
         machine overloaded, or a process stopped?)"
    )]
    Stalled(Duration),
    /// Something did not happen in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long.
        waited: Duration,
    },
    /// A transport of the `peers` feature (iceoryx2, ipc-channel) was asked for in a build
    /// without that feature.
    #[error(
        "the {transport} transport is not in this build of shmesh: rebuild with the `peers` \
         feature (`cargo build --release --features peers`, or `cargo run --release --features \
         peers -- bench ...`)"
    )]
    NeedsPeers {
        /// The transport asked for.
        transport: Transport,
    },
    /// A call into a peer IPC library (iceoryx2, ipc-channel) failed.
    #[error("{library}: {what} failed")]
    Library {
        /// `iceoryx2` or `ipc-channel`.
        library: &'static str,
        /// What was being done.
        what: String,
        /// The library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A call into shmesh's typed channel failed.
    #[error("typed channel: {what} failed: {source}")]
    Typed {
        /// What was being done.
        what: String,
        /// The channel's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A line of the input of `shmesh bench plot` is not a result line of `shmesh bench`.
    #[error(
        "{path}, line {line}: {detail} (the input must be the output of `shmesh bench pingpong \
         --json`: one JSON object per line; several runs may be concatenated)"
    )]
    PlotInput {
        /// The input file.
        path: String,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// The input of `shmesh bench plot` holds no ping-pong result.
    #[error(
        "{path} holds no ping-pong result: give `shmesh bench plot --input` the output of \
         `shmesh bench pingpong --json`"
    )]
    PlotEmpty {
        /// The input file.
        path: String,
    },
    /// Drawing or writing the chart failed.
    #[error("drawing the chart into {path} failed: {detail} (is its directory writable?)")]
    PlotDraw {
        /// The output file.
        path: String,
        /// The drawing library's error.
        detail: String,
    },
    /// One measurement of `shmesh bench allreduce` or `world-pingpong` failed; the source
    /// says why.
    #[error(
        "benchmark {bench} over {transport} with {ranks} ranks and {size}-byte messages failed"
    )]
    WorldMeasurement {
        /// `allreduce` or `world-pingpong`.
        bench: &'static str,
        /// `shmesh` or `openmpi`.
        transport: &'static str,
        /// The ranks of the job.
        ranks: usize,
        /// The message size in bytes.
        size: usize,
        /// What went wrong.
        #[source]
        source: Box<BenchError>,
    },
    /// Ranks of a shmesh World job of `shmesh bench allreduce` or `world-pingpong` failed;
    /// the other ranks were killed.
    #[error("ranks of the shmesh job '{job}' failed (the other ranks were killed):\n{failures}")]
    Ranks {
        /// The job id (`SHMESH_JOB`).
        job: String,
        /// Each failed rank, with how it ended and what it printed on stderr.
        failures: String,
    },
    /// A call of shmesh's World failed in a rank process.
    #[error("World: {what} failed")]
    World {
        /// What was being done.
        what: String,
        /// World's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Compiling or running the Open MPI program of `shmesh bench allreduce` or
    /// `world-pingpong` failed.
    #[error("Open MPI: {what}{}", peer_output(.output))]
    Mpi {
        /// What was done (with the command line) and how it ended.
        what: String,
        /// What the command printed on stderr.
        output: String,
    },
    /// `--transport openmpi` was asked for, and `mpirun` or `mpicc` is not on the PATH.
    #[error(
        "--transport openmpi needs Open MPI's {missing} on the PATH: install Open MPI (Debian \
         and Ubuntu: apt-get install openmpi-bin libopenmpi-dev), or leave openmpi out of \
         --transport"
    )]
    NoMpi {
        /// `mpirun`, `mpicc`, or both.
        missing: String,
    },
    /// A signal (SIGINT, SIGTERM, SIGHUP) stopped `shmesh bench allreduce` or
    /// `world-pingpong`.
    #[error(
        "interrupted by a signal: the benchmark's processes were stopped and its segments \
         removed"
    )]
    Interrupted,
    /// A bad combination of options (those clap cannot check by itself).
    #[error("{0}")]
    Usage(String),
}

fn peer_output(stderr: &str) -> String {
    let text = stderr.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("; it said:\n{text}")
    }
}

impl BenchError {
    /// An [`Io`](Self::Io) error maker for `map_err`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }

    /// A [`Typed`](Self::Typed) error maker for `map_err`.
    pub(crate) fn typed<E: std::error::Error + Send + Sync + 'static>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> BenchError {
        let what = what.into();
        move |source| BenchError::Typed {
            what,
            source: Box::new(source),
        }
    }

    /// A [`Library`](Self::Library) error maker for `map_err`.
    #[cfg(feature = "peers")]
    pub(crate) fn library<E: std::error::Error + Send + Sync + 'static>(
        library: &'static str,
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> BenchError {
        let what = what.into();
        move |source| BenchError::Library {
            library,
            what,
            source: Box::new(source),
        }
    }

    /// A [`World`](Self::World) error maker for `map_err`.
    pub(crate) fn world<E: std::error::Error + Send + Sync + 'static>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> BenchError {
        let what = what.into();
        move |source| BenchError::World {
            what,
            source: Box::new(source),
        }
    }

    /// An [`Os`](Self::Os) error maker for `map_err`.
    pub(crate) fn os(what: impl Into<String>) -> impl FnOnce(nix::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Os { what, source }
    }
}
