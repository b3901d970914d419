//! `shmesh bench snapshot`: how fast a reader copies a whole version out of a region, against
//! the single-core memcpy bandwidth measured in the same run (the target: a snapshot of a
//! 1 MiB region at half of memcpy or better).
//!
//! # How a measurement runs
//!
//! For each size, the parent (pinned to the first CPU it may use) creates a region of that
//! size (`bench.<pid>.<n>.region`, the default shape: 3 buffers, 4 KiB chunks) and a reader of
//! it, then starts the peer (`shmesh __bench-snapshot-peer`, hidden), pinned to the second
//! CPU. The peer attaches as the region's writer and publishes version 1, every byte written
//! (the sequence number 1 in its first 8 bytes, a byte derived from it in the rest). Then:
//!
//! 1. **Cache-line probe**: the peer answers it, the parent takes `cl_ns` as for the other
//!    benches (see [`super`]); the peer then sleeps, blocked on its stdin.
//! 2. **memcpy**: [`memcpy::bandwidth_with`] at this size: the reference, always measured.
//! 3. **region** (the writer idle): the parent checks one snapshot byte for byte, then times
//!    [`Reader::read_into`](shmesh_ring::region::Reader::read_into) of the whole region into a
//!    buffer of its own, as many copies per run as memcpy makes, one warm run then the median
//!    of [`RUNS`](memcpy::RUNS) runs, exactly like memcpy ([`memcpy::median_of_runs`]). Every
//!    snapshot must be version 1.
//! 4. **region-busy** (a writer publishing): the parent tells the peer `busy`; the peer
//!    publishes a small change every `--interval` (it spins between versions, on its own CPU):
//!    version `v` writes its number (8 bytes, what fits) at the start of 64-byte line
//!    `v mod lines`. The parent times snapshots as above, through
//!    [`Reader::try_read_with`](shmesh_ring::region::Reader::try_read_with), the loop that
//!    `read_into` runs, so that it can count the attempts the writer lapped (`retries`:
//!    each cost a copy that was thrown away). Every snapshot must be a whole version: its
//!    version number where version `v` put it, and versions never going back. The row adds
//!    the writer's interval, the versions it published per second while the parent read, the
//!    snapshots timed and the retries among them.
//!
//! `bytes_per_s` counts the bytes of the snapshots that completed, over the time of the run;
//! `vs_memcpy` is that over the memcpy figure of the same size.
//!
//! The working sets differ: memcpy alternates between the halves of two buffers of
//! `2 × size` bytes (`4 × size` bytes touched), an idle region's snapshots copy the same
//! buffer into the same buffer (`2 × size`). Where `4 × size` outgrows a cache level and
//! `2 × size` does not, `vs_memcpy` can exceed 1: that says where the bytes sit, not that the
//! snapshot costs less than a copy. A busy writer moves the latest version from buffer to
//! buffer, which brings the region's working set closer to memcpy's.
//!
//! A region reader copies while the writer may rewrite: a copy that the writer lapped (it
//! published `buffers - 1` versions meanwhile) is retried. A writer that publishes faster than
//! a reader can copy the region starves it; the parent gives up after [`STARVE`] without a
//! snapshot and says so ([`BenchError::Starved`]), rather than hang.
//!
//! The peer dies with the parent (`PR_SET_PDEATHSIG`) and stops publishing when its stdin
//! closes; the parent removes the region and the probe when it is done, whatever happened.

use std::fmt;
use std::hint::black_box;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shmesh_ring::region;
use shmesh_ring::{CacheLineProbe, ShmRegion};

use super::error::BenchError;
use super::memcpy;
use super::process::{self, Peer, TempDir};
use super::report::{self, BusyWriter, Row, SnapshotRow, Table};
use super::transport::{attach, fill, wait_for, Transport};
use super::{dedup, measure_cl, parse_size, Output, OP_TIMEOUT};

/// The default `--size` list of `shmesh bench snapshot`.
pub const DEFAULT_SIZES: [usize; 3] = [4096, 65536, 1 << 20];
/// The busy writer's default `--interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_micros(100);
/// The longest `--interval`.
pub const MAX_INTERVAL: Duration = Duration::from_secs(1);
/// How long the reader may try for one snapshot while the busy writer publishes before the
/// measurement fails ([`BenchError::Starved`]).
pub const STARVE: Duration = Duration::from_secs(2);
/// The version the peer publishes first, every byte written.
const FIRST_VERSION: u64 = 1;

/// What `shmesh bench snapshot` measures at each size (besides memcpy, always measured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum SnapshotTransport {
    /// Single-core memcpy at the same size: the reference (always measured, not an option).
    #[value(skip)]
    Memcpy,
    /// Snapshots of a region whose writer is idle.
    Region,
    /// Snapshots of a region whose writer publishes a small change every `--interval`.
    RegionBusy,
}

impl SnapshotTransport {
    /// The name used on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotTransport::Memcpy => "memcpy",
            SnapshotTransport::Region => "region",
            SnapshotTransport::RegionBusy => "region-busy",
        }
    }
}

impl fmt::Display for SnapshotTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses the busy writer's interval: a number with a unit (`ns`, `us` or `µs`, `ms`, `s`),
/// or `0` (publish back to back), at most [`MAX_INTERVAL`].
///
/// # Errors
///
/// A message saying what is wrong with it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shmesh::bench::snapshot::parse_interval;
/// assert_eq!(parse_interval("100us"), Ok(Duration::from_micros(100)));
/// assert_eq!(parse_interval("2ms"), Ok(Duration::from_millis(2)));
/// assert!(parse_interval("100").is_err());
/// ```
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not an interval (examples: 100us, 1ms, 500ns)"))?;
    let per_unit = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "" => return Err(format!("'{text}' needs a unit: ns, us, ms or s")),
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}': use ns, us, ms or s"
            ))
        }
    };
    let interval = n
        .checked_mul(per_unit)
        .map(Duration::from_nanos)
        .filter(|d| *d <= MAX_INTERVAL)
        .ok_or_else(|| format!("interval '{text}' is out of range: 0 to {MAX_INTERVAL:?}"))?;
    Ok(interval)
}

/// Options of `shmesh bench snapshot`.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotArgs {
    /// Region sizes in bytes, comma-separated (suffixes k/KiB and m/MiB allowed).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        value_parser = parse_size,
        default_value = "4096,65536,1048576"
    )]
    pub size: Vec<usize>,
    /// What to measure besides memcpy (always measured first: it is the reference),
    /// comma-separated; measured in this order: memcpy, region, region-busy.
    ///
    /// region: snapshots of a region whose writer (another process) is idle: the cost of a
    /// consistent copy. region-busy: snapshots while the writer publishes a small change
    /// (one word, a different cache line each version) every --interval; adds the writer's
    /// rate, and the copies it lapped (retries).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "region,region-busy"
    )]
    pub transport: Vec<SnapshotTransport>,
    /// How often the busy writer publishes a version (region-busy): a number with a unit
    /// (ns, us, ms, s), 0 for back to back.
    ///
    /// A region has 3 buffers: a snapshot whose copy outlasts 2 versions is retried, so an
    /// interval much shorter than a copy of the region starves the reader (the run then stops
    /// with an error rather than hang).
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "100us")]
    pub interval: Duration,
    /// Copies per timed run, for memcpy and the snapshots alike (default: about 256 MiB per
    /// run, at least 16 copies, at most 4194304). One warm run, then the median of 7 runs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// One JSON object per line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of the hidden peer subcommand of `shmesh bench snapshot`
/// (`shmesh __bench-snapshot-peer`), which the parent passes.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotPeerArgs {
    /// The region (made by the parent) to write.
    #[arg(long)]
    pub region: String,
    /// Its size in bytes.
    #[arg(long)]
    pub size: usize,
    /// The cache-line probe segment to answer on.
    #[arg(long)]
    pub probe: String,
    /// Nanoseconds between two versions when busy.
    #[arg(long)]
    pub interval_ns: u64,
    /// The CPU to pin to.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// The parent's pid: the peer exits if its parent is gone.
    #[arg(long)]
    pub parent: u32,
}

/// What one size's measurement shares.
struct Ctx {
    pid: u32,
    next_id: u64,
    child_cpu: Option<usize>,
    interval: Duration,
    iters: Option<u64>,
}

/// Runs `shmesh bench snapshot`, printing its rows as they come.
///
/// # Errors
///
/// The first measurement that fails, or an I/O error writing the output.
pub fn run(args: &SnapshotArgs) -> Result<(), BenchError> {
    let sizes = dedup(&args.size);
    // Idle before busy: once busy, the writer publishes until the peer ends.
    let kinds: Vec<SnapshotTransport> = [SnapshotTransport::Region, SnapshotTransport::RegionBusy]
        .into_iter()
        .filter(|k| args.transport.contains(k))
        .collect();
    let dir = TempDir::new()?;
    process::clean_up_on_signal(dir.path().to_owned())?;
    let cpus = process::pick_cpus()?;
    match cpus {
        Some((parent, _)) => process::pin(parent)?,
        None if kinds.contains(&SnapshotTransport::RegionBusy) => eprintln!(
            "warning: fewer than two CPUs available: the busy writer spins on the reader's CPU, \
             and region-busy measures the scheduler"
        ),
        None => {}
    }
    let mut ctx = Ctx {
        pid: std::process::id(),
        next_id: 0,
        child_cpu: cpus.map(|(_, child)| child),
        interval: args.interval,
        iters: args.iters,
    };
    let mut out = Output::new(args.json, Table::Snapshot, sizes.len() * (1 + kinds.len()));
    for size in sizes {
        measure(&mut ctx, size, &kinds, &mut out).map_err(|e| BenchError::Measurement {
            bench: "snapshot",
            transport: Transport::Region,
            size,
            source: Box::new(e),
        })?;
    }
    drop(dir);
    Ok(())
}

/// One size: a fresh region and peer, the probe, then memcpy and each of `kinds`.
fn measure(
    ctx: &mut Ctx,
    size: usize,
    kinds: &[SnapshotTransport],
    out: &mut Output,
) -> Result<(), BenchError> {
    ctx.next_id += 1;
    let tag = format!("bench.{}.{}", ctx.pid, ctx.next_id);
    let probe_name = format!("{tag}.cl");
    let region_name = format!("{tag}.region");
    let mut probe = CacheLineProbe::create(&probe_name).map_err(|source| BenchError::Segment {
        name: probe_name.clone(),
        source,
    })?;
    let reader = attach(
        &region_name,
        super::region::create(&region_name, size)?.region_reader(),
    )?;
    let mut args = vec![
        "__bench-snapshot-peer".to_owned(),
        format!("--region={region_name}"),
        format!("--size={size}"),
        format!("--probe={probe_name}"),
        format!("--interval-ns={}", ctx.interval.as_nanos()),
        format!("--parent={}", ctx.pid),
    ];
    if let Some(cpu) = ctx.child_cpu {
        args.push(format!("--cpu={cpu}"));
    }
    let mut peer = Peer::spawn_piped(&args)?;
    let outcome = parent_side(ctx, size, kinds, &reader, &mut probe, &mut peer, out);
    let peer_result = peer.finish(outcome.is_err());
    match (outcome, peer_result) {
        (Ok(()), Ok(())) => Ok(()),
        // When the peer failed, its error is the cause; the parent's is a consequence.
        (_, Err(peer_error)) => Err(peer_error),
        (Err(e), Ok(())) => Err(e),
    }
}

fn parent_side(
    ctx: &Ctx,
    size: usize,
    kinds: &[SnapshotTransport],
    reader: &region::Reader<ShmRegion>,
    probe: &mut CacheLineProbe,
    peer: &mut Peer,
    out: &mut Output,
) -> Result<(), BenchError> {
    let label = |kind: SnapshotTransport| format!("snapshot {kind} {}", report::format_size(size));
    out.bar
        .set_message(format!("snapshot {}", report::format_size(size)));
    let cl_ns = measure_cl(probe, peer)?;
    // The peer published version 1 before it answered the probe; wait for it all the same.
    wait_for(
        "the peer to publish the region's first version",
        &mut || peer.check_alive(),
        || Ok((reader.version() >= FIRST_VERSION).then_some(())),
    )?;
    let copies = ctx
        .iters
        .map_or_else(|| memcpy::copies_per_run(size), |n| n as usize);
    let row = |transport, bytes_per_s, vs_memcpy, busy| {
        Row::Snapshot(SnapshotRow {
            transport,
            size,
            cl_ns,
            bytes_per_s,
            vs_memcpy,
            busy,
        })
    };

    out.bar.set_message(label(SnapshotTransport::Memcpy));
    let reference = memcpy::bandwidth_with(size, copies);
    out.row(&row(SnapshotTransport::Memcpy, reference, None, None))?;
    let ratio = |bytes_per_s: f64| Some(bytes_per_s / reference);

    let mut dst = vec![0u8; size];
    for &kind in kinds {
        out.bar.set_message(label(kind));
        match kind {
            SnapshotTransport::Memcpy => {}
            SnapshotTransport::Region => {
                check_first_version(reader, &mut dst)?;
                let bytes_per_s = idle_bandwidth(reader, &mut dst, copies)?;
                out.row(&row(kind, bytes_per_s, ratio(bytes_per_s), None))?;
            }
            SnapshotTransport::RegionBusy => {
                peer.tell("busy")?;
                wait_for(
                    "the peer to begin publishing",
                    &mut || peer.check_alive(),
                    || Ok((reader.version() > FIRST_VERSION).then_some(())),
                )?;
                let busy = busy_bandwidth(reader, &mut dst, copies, ctx.interval)?;
                // A writer that died meanwhile made an idle region of it: not this figure.
                peer.check_alive()?;
                let bytes_per_s = busy.bytes_per_s;
                out.row(&row(
                    kind,
                    bytes_per_s,
                    ratio(bytes_per_s),
                    Some(busy.writer),
                ))?;
            }
        }
    }
    Ok(())
}

/// Checks that the region holds the peer's first version, every byte as written.
fn check_first_version(
    reader: &region::Reader<ShmRegion>,
    dst: &mut [u8],
) -> Result<(), BenchError> {
    let version = reader.read_into(dst).map_err(|e| BenchError::Corrupt {
        seq: FIRST_VERSION,
        detail: e.to_string(),
    })?;
    let mut expected = vec![0u8; dst.len()];
    fill(&mut expected, FIRST_VERSION);
    if version != FIRST_VERSION || dst != expected.as_slice() {
        let at = dst.iter().zip(&expected).position(|(a, b)| a != b);
        return Err(BenchError::Corrupt {
            seq: FIRST_VERSION,
            detail: format!(
                "the snapshot is version {version}, expected {FIRST_VERSION}{}",
                at.map(|i| format!(", and differs from what the writer wrote at byte {i}"))
                    .unwrap_or_default()
            ),
        });
    }
    Ok(())
}

/// The median bandwidth of `copies` snapshots per run of the idle region into `dst`.
fn idle_bandwidth(
    reader: &region::Reader<ShmRegion>,
    dst: &mut [u8],
    copies: usize,
) -> Result<f64, BenchError> {
    let size = dst.len();
    memcpy::median_of_runs(|| {
        let start = Instant::now();
        for _ in 0..copies {
            let version = reader.read_into(dst).map_err(|e| BenchError::Corrupt {
                seq: FIRST_VERSION,
                detail: e.to_string(),
            })?;
            if version != FIRST_VERSION {
                return Err(BenchError::Corrupt {
                    seq: FIRST_VERSION,
                    detail: format!(
                        "a snapshot of the idle region is version {version}, expected \
                         {FIRST_VERSION}"
                    ),
                });
            }
            black_box(&mut *dst);
        }
        Ok(memcpy::rate(copies * size, start))
    })
}

/// What the busy measurement found.
#[derive(Debug)]
struct Busy {
    bytes_per_s: f64,
    writer: BusyWriter,
}

/// The median bandwidth of `copies` snapshots per run while the peer publishes, with the
/// retries and the writer's rate over the timed runs.
fn busy_bandwidth(
    reader: &region::Reader<ShmRegion>,
    dst: &mut [u8],
    copies: usize,
    interval: Duration,
) -> Result<Busy, BenchError> {
    let size = dst.len();
    let buffers = reader.shape().buffers;
    let mut retries = 0u64;
    let mut snapshots = 0u64;
    let mut last = 0u64;
    let mut timed = false;
    let mut first: Option<(u64, Instant)> = None;
    let bytes_per_s = memcpy::median_of_runs(|| {
        // The warm-up run is the first: count from the second on.
        if timed {
            first.get_or_insert_with(|| (reader.version(), Instant::now()));
        }
        let start = Instant::now();
        for _ in 0..copies {
            let (version, lapped) = read_counting(reader, dst, interval, buffers)?;
            check_busy_snapshot(dst, version, last)?;
            last = version;
            if timed {
                retries += lapped;
                snapshots += 1;
            }
        }
        let rate = memcpy::rate(copies * size, start);
        check_busy_whole(dst, last)?;
        timed = true;
        Ok(rate)
    })?;
    let (v0, t0) = first.unwrap_or((reader.version(), Instant::now()));
    let published = reader.version().saturating_sub(v0);
    let publishes_per_s = published as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    Ok(Busy {
        bytes_per_s,
        writer: BusyWriter {
            interval,
            publishes_per_s,
            snapshots,
            retries,
        },
    })
}

/// One snapshot into `dst` through the loop of `read_into`, counting the attempts the writer
/// lapped; gives up after [`STARVE`].
fn read_counting(
    reader: &region::Reader<ShmRegion>,
    dst: &mut [u8],
    interval: Duration,
    buffers: usize,
) -> Result<(u64, u64), BenchError> {
    let mut lapped = 0u64;
    let mut since: Option<Instant> = None;
    loop {
        if let Some((version, _)) = reader.try_read_with(|p| p.copy_to(0, dst)) {
            return Ok((version, lapped));
        }
        lapped += 1;
        if lapped % 64 == 0 {
            // As `read_with` does; and look at the clock now and then.
            std::thread::yield_now();
            let now = Instant::now();
            let since = *since.get_or_insert(now);
            if now.duration_since(since) > STARVE {
                return Err(BenchError::Starved {
                    size: dst.len(),
                    interval,
                    waited: now.duration_since(since),
                    retries: lapped,
                    buffers,
                });
            }
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Where the busy writer puts the number of version `version` in a region of `size` bytes:
/// the start of 64-byte line `version mod lines`, and how many bytes of it fit.
fn busy_slot(size: usize, version: u64) -> (usize, usize) {
    let lines = size.div_ceil(64) as u64;
    let at = (version % lines) as usize * 64;
    (at, (size - at).min(8))
}

/// Checks a snapshot taken while the writer is busy: its version's number is where that
/// version wrote it, and versions never go back (`last` is the previous snapshot's).
fn check_busy_snapshot(bytes: &[u8], version: u64, last: u64) -> Result<(), BenchError> {
    if version < last {
        return Err(BenchError::Corrupt {
            seq: version,
            detail: format!("the snapshot is version {version}, older than {last} read before"),
        });
    }
    if version > FIRST_VERSION {
        let (at, n) = busy_slot(bytes.len(), version);
        if bytes[at..at + n] != version.to_le_bytes()[..n] {
            return Err(BenchError::Corrupt {
                seq: version,
                detail: format!(
                    "the snapshot of version {version} does not hold its number at byte {at}: \
                     it mixes versions"
                ),
            });
        }
    }
    Ok(())
}

/// Checks a whole snapshot of version `version` taken while the writer is busy: the first 8
/// bytes (what fits) of every 64-byte line hold the number of the last version that wrote
/// there, or what the first version wrote when no busy version did yet. Reads one word per
/// line: done on the last snapshot of each run, after its clock stopped.
fn check_busy_whole(bytes: &[u8], version: u64) -> Result<(), BenchError> {
    let size = bytes.len();
    let lines = size.div_ceil(64) as u64;
    let fill_word = u64::from_ne_bytes([super::transport::fill_byte(FIRST_VERSION); 8]);
    for line in 0..lines {
        let at = line as usize * 64;
        let n = (size - at).min(8);
        // The last version up to `version` whose slot is this line.
        let back = (version % lines + lines - line) % lines;
        let wrote = version.checked_sub(back).filter(|&u| u > FIRST_VERSION);
        let expected = match wrote {
            Some(u) => u.to_le_bytes(),
            None if line == 0 => FIRST_VERSION.to_le_bytes(),
            None => fill_word.to_le_bytes(),
        };
        if bytes[at..at + n] != expected[..n] {
            let mut found = [0u8; 8];
            found[..n].copy_from_slice(&bytes[at..at + n]);
            return Err(BenchError::Corrupt {
                seq: version,
                detail: format!(
                    "the snapshot of version {version} holds {:#x} at byte {at}, expected {:#x} \
                     (written by version {}): it mixes versions",
                    u64::from_le_bytes(found),
                    u64::from_le_bytes(expected),
                    wrote.unwrap_or(FIRST_VERSION)
                ),
            });
        }
    }
    Ok(())
}

/// Runs the peer process of one snapshot measurement (the hidden `shmesh
/// __bench-snapshot-peer`): attaches as the region's writer and publishes version 1, answers
/// the cache-line probe, then waits for a line on stdin: `busy` makes it publish a small
/// change every interval until its stdin closes; the end of its stdin ends it.
///
/// # Errors
///
/// Any failure; the binary prints it on stderr, where the parent collects it.
pub fn run_peer(args: &SnapshotPeerArgs) -> Result<(), BenchError> {
    // Die with the parent; and if it died before this call, go now.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(BenchError::os("prctl(PR_SET_PDEATHSIG)"))?;
    if nix::unistd::getppid().as_raw() as u32 != args.parent {
        return Err(BenchError::Usage("the parent process is gone".into()));
    }
    if let Some(cpu) = args.cpu {
        process::pin(cpu)?;
    }
    let size = args.size;
    let mut writer = attach(
        &args.region,
        super::region::open(&args.region, size)?.region_writer(),
    )?;
    let mut scope = writer.write();
    fill(scope.as_mut_slice(), FIRST_VERSION);
    let version = scope.publish();
    if version != FIRST_VERSION {
        return Err(BenchError::Usage(format!(
            "internal error: the region '{}' was at version {} before the peer wrote it",
            args.region,
            version - 1
        )));
    }
    let probe = CacheLineProbe::open(&args.probe).map_err(|source| BenchError::Segment {
        name: args.probe.clone(),
        source,
    })?;
    probe.serve(OP_TIMEOUT).map_err(BenchError::Probe)?;
    drop(probe);

    let stdin = std::io::stdin();
    let mut line = String::new();
    let n = stdin
        .lock()
        .read_line(&mut line)
        .map_err(BenchError::io("reading a command from the parent"))?;
    match line.trim() {
        _ if n == 0 => return Ok(()),
        "busy" => {}
        other => {
            return Err(BenchError::Usage(format!(
                "internal error: unknown command '{other}' from the parent"
            )))
        }
    }
    // Publish until stdin closes (the parent is done, or gone).
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("snapshot-peer-stdin".into())
        .spawn(move || {
            let mut sink = String::new();
            while matches!(std::io::stdin().lock().read_line(&mut sink), Ok(n) if n > 0) {
                sink.clear();
            }
            stopper.store(true, Ordering::Relaxed);
        })
        .map_err(BenchError::io("starting the stdin thread"))?;
    let interval = Duration::from_nanos(args.interval_ns);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut scope = writer.write();
        let version = scope.version();
        let (at, n) = busy_slot(size, version);
        scope.write_at(at, &version.to_le_bytes()[..n]);
        scope.publish();
        // Pace by spinning: the peer has a CPU of its own, and sleeps are too coarse.
        next += interval;
        let mut now = Instant::now();
        while now < next && !stop.load(Ordering::Relaxed) {
            std::hint::spin_loop();
            now = Instant::now();
        }
        // Descheduled for longer than an interval: resume the pace from now, no burst.
        if now > next + interval {
            next = now;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units_and_limits() {
        assert_eq!(parse_interval("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_interval("100µs"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_interval(" 250ns "), Ok(Duration::from_nanos(250)));
        assert_eq!(parse_interval("3ms"), Ok(Duration::from_millis(3)));
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0ns"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert!(parse_interval("2s").unwrap_err().contains("out of range"));
        assert!(parse_interval("100").unwrap_err().contains("needs a unit"));
        assert!(parse_interval("5min").unwrap_err().contains("unknown unit"));
        assert!(parse_interval("us")
            .unwrap_err()
            .contains("not an interval"));
        assert!(parse_interval("99999999999999999999s").is_err());
        assert!(parse_interval("18446744073709551615s")
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn the_busy_writer_puts_each_version_on_its_own_line() {
        assert_eq!(busy_slot(4096, 2), (128, 8));
        assert_eq!(busy_slot(4096, 64), (0, 8));
        assert_eq!(busy_slot(4096, 65), (64, 8));
        // The last line may be short, and a tiny region has one line.
        assert_eq!(busy_slot(100, 3), (64, 8));
        assert_eq!(busy_slot(68, 1), (64, 4));
        assert_eq!(busy_slot(3, 7), (0, 3));
    }

    #[test]
    fn a_busy_snapshot_must_hold_its_version_and_not_go_back() {
        let mut bytes = vec![0u8; 4096];
        let (at, n) = busy_slot(4096, 9);
        bytes[at..at + n].copy_from_slice(&9u64.to_le_bytes()[..n]);
        check_busy_snapshot(&bytes, 9, 8).unwrap();
        check_busy_snapshot(&bytes, 9, 9).unwrap();
        let e = check_busy_snapshot(&bytes, 9, 10).unwrap_err().to_string();
        assert!(e.contains("older than 10"), "{e}");
        let e = check_busy_snapshot(&bytes, 10, 9).unwrap_err().to_string();
        assert!(e.contains("mixes versions"), "{e}");
        // The writer's first version fills every byte instead.
        check_busy_snapshot(&bytes, FIRST_VERSION, 0).unwrap();
    }

    /// What the busy writer's region holds at `version` (the peer's writes, replayed).
    fn busy_region(size: usize, version: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; size];
        fill(&mut bytes, FIRST_VERSION);
        for v in FIRST_VERSION + 1..=version {
            let (at, n) = busy_slot(size, v);
            bytes[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
        }
        bytes
    }

    #[test]
    fn a_whole_busy_snapshot_is_checked_line_by_line() {
        for size in [1, 8, 64, 100, 4096, 4100] {
            for version in [1, 2, 3, 5, 64, 65, 66, 200] {
                let bytes = busy_region(size, version);
                check_busy_whole(&bytes, version)
                    .unwrap_or_else(|e| panic!("{size} {version}: {e}"));
                check_busy_snapshot(&bytes, version, 1).unwrap();
            }
        }
        // A line left from an older version, or one from a newer version, is a mix.
        let mut bytes = busy_region(4096, 70);
        bytes[64 * 5..64 * 5 + 8].copy_from_slice(&5u64.to_le_bytes());
        let e = check_busy_whole(&bytes, 70).unwrap_err().to_string();
        assert!(e.contains("at byte 320") && e.contains("version 69"), "{e}");
        let bytes = busy_region(4096, 71);
        assert!(check_busy_whole(&bytes, 70).is_err());
        // The first version's fill, where no busy version wrote yet.
        let mut bytes = busy_region(4096, 3);
        bytes[64 * 10] ^= 1;
        assert!(check_busy_whole(&bytes, 3).is_err());
    }

    #[test]
    fn snapshot_options_parse() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: SnapshotArgs,
        }
        let a = Cli::try_parse_from(["snapshot"]).unwrap().args;
        assert_eq!(a.size, DEFAULT_SIZES);
        assert_eq!(
            a.transport,
            [SnapshotTransport::Region, SnapshotTransport::RegionBusy]
        );
        assert_eq!(a.interval, DEFAULT_INTERVAL);
        assert_eq!((a.iters, a.json), (None, false));
        let a = Cli::try_parse_from([
            "snapshot",
            "--size",
            "1MiB,4k",
            "--transport=region",
            "--interval",
            "1ms",
            "--iters",
            "3",
            "--json",
        ])
        .unwrap()
        .args;
        assert_eq!(a.size, [1 << 20, 4096]);
        assert_eq!(a.transport, [SnapshotTransport::Region]);
        assert_eq!(a.interval, Duration::from_millis(1));
        assert_eq!((a.iters, a.json), (Some(3), true));
        for bad in [
            &["snapshot", "--transport", "memcpy"][..],
            &["snapshot", "--transport", "shm"],
            &["snapshot", "--size", "0"],
            &["snapshot", "--iters", "0"],
            &["snapshot", "--interval", "10"],
            &["snapshot", "--wait", "spin"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
