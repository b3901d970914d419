//! `shmesh bench allreduce` and `shmesh bench world-pingpong`: shmesh's
//! [`World`](crate::world::World) against Open MPI on the same machine, in the same run, so
//! the numbers stand side by side.
//!
//! # What is measured
//!
//! Both sides run the same method, step for step: the shmesh side is the hidden `shmesh
//! __world-bench-rank` (this module), the Open MPI side `benches/mpi/world_bench.c` (built
//! into this executable, compiled at bench time). Change one, change the other.
//!
//! - **allreduce** (`--ranks R --size S`): `S / 8` `f64`s (at least one; the row's `size` is
//!   the bytes reduced, `8 x` that count), summed in place on every rank
//!   (`World::all_reduce(&mut buf, Op::Sum)`; `MPI_Allreduce(MPI_IN_PLACE, .., MPI_DOUBLE,
//!   MPI_SUM)`). Each iteration, on every rank: fill the buffer (element `j` of rank `r` in
//!   iteration `i` is `(r + 1) + j % 251 + i % 7`), a barrier, then the one all-reduce timed
//!   with the monotonic clock, then every element of the result checked. Neither the fill,
//!   the barrier nor the check is timed. An iteration's sample is the **largest time any rank
//!   measured for it**: after the last iteration, rank 0 collects every rank's times and keeps
//!   the maximum per iteration (`MPI_Reduce(MPI_MAX)` on the Open MPI side, messages to rank 0
//!   on shmesh's). The time includes the skew with which the ranks leave the barrier, the same
//!   on both sides.
//! - **world-pingpong** (`--size S`, 2 ranks): the **full round trip**, as every `shmesh
//!   bench` ping-pong. Rank 0 starts the clock, writes message `i` whole (its sequence number,
//!   then a byte derived from it in every other byte), sends `S` bytes to rank 1, receives `S`
//!   bytes back, checks the sequence number and reads a word of every cache line, and stops
//!   the clock. Rank 1 receives, checks the same way, writes message `i` whole and sends it
//!   back. No barrier between round trips.
//!
//! Both run a warm-up of 10% of the iterations (at least one), not recorded. Rank 0 prints
//! one line, `samples N T1 ... TN` (ns); this process takes the percentiles of every row with
//! the same code (HdrHistogram, 3 significant digits): p50, p99, p99.9 and max. Then the ranks
//! leave together: `MPI_Finalize`, and a last `World::barrier` before the World is dropped.
//!
//! # How a measurement runs
//!
//! For each ranks, size and transport (shmesh, then openmpi):
//!
//! 1. **Cache-line probe** (`cl_ns`): this process, pinned to the first CPU it may use,
//!    bounces a cache line with a probe process (`shmesh __world-bench-rank --role probe`)
//!    pinned to the second, as every `shmesh bench` row carries it. Then this process may use
//!    all its CPUs again, so that the ranks it starts may too.
//! 2. **shmesh**: `R` processes of this executable (`shmesh __world-bench-rank --role rank`)
//!    with `SHMESH_JOB` (`bench-<pid>-<n>`, fresh per measurement), `SHMESH_RANK` and
//!    `SHMESH_SIZE`; none is pinned, like Open MPI's ranks under `--bind-to none`. They die
//!    with this process. Afterwards the job's leftover segments (`world.<job>.*`) are removed
//!    when no process uses them.
//! 3. **openmpi** (when `mpicc` and `mpirun` are on the `PATH`; otherwise a note says the rows
//!    are skipped, and `--transport openmpi` fails): the C program is compiled once per run
//!    with `mpicc -O2` in the run's private temporary directory and run with `mpirun
//!    [--allow-run-as-root] --oversubscribe -n R --bind-to none`. When it fails because the
//!    CMA single-copy mechanism of Open MPI's shared-memory transport is not allowed (some
//!    containers forbid `process_vm_readv`), it runs again with
//!    `OMPI_MCA_btl_vader_single_copy_mechanism=none`, and says so on stderr.
//!
//! With more ranks than CPUs a warning says the ranks share CPUs: the figures then measure
//! the scheduler as much as the transport. Open MPI's ranks yield the CPU while they wait
//! when oversubscribed (`mpi_yield_when_idle` defaults to on then).
//!
//! # Bounded waits
//!
//! The probe has the deadlines of every `shmesh bench` probe. A measurement may take
//! [`MEASURE_TIMEOUT`]; then its processes are killed (`mpirun` gets SIGTERM first, so that it
//! stops its ranks). A rank that fails gets the others killed [`FAILURE_GRACE`] later, and
//! the error shows what each failed rank printed. SIGINT, SIGTERM and SIGHUP stop the run at
//! its next wait: the ranks are killed (`mpirun` gets SIGTERM), the job's segments and the
//! temporary directory removed.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shmesh_ring::CacheLineProbe;

use super::error::BenchError;
use super::process::{self, Peer, TempDir};
use super::report::{self, Row, Table, WorldRow};
use super::transport::{check, fill};
use super::{dedup, new_histogram, parse_size, warmup, Output, Touch, MAX_PEERS, OP_TIMEOUT};

/// The Open MPI side, compiled with `mpicc -O2` at bench time.
pub const MPI_SOURCE: &str = include_str!("../../benches/mpi/world_bench.c");

/// Longest one measurement (all its ranks, or `mpirun`) may run.
pub const MEASURE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the other ranks may go on after one failed (so that their own errors, when they
/// are the cause, are reported too) before they are killed.
pub const FAILURE_GRACE: Duration = Duration::from_millis(300);

/// Set by SIGINT, SIGTERM or SIGHUP: the run stops at its next wait and unwinds, so that
/// every process it started is stopped and every segment removed.
static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// How long `mpirun` has to stop its ranks after SIGTERM, before SIGKILL.
const MPIRUN_GRACE: Duration = Duration::from_secs(2);

/// How often this process looks at the processes of a measurement (it sleeps between: it
/// shares the CPUs with the ranks).
const POLL: Duration = Duration::from_millis(20);

/// The tag of the world ping-pong's messages.
const PING_TAG: u32 = 7;
/// The tag of the per-iteration times the ranks send rank 0 at the end.
const TIMES_TAG: u32 = 8;

/// Which operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum WorldBench {
    /// All-reduce of `f64`s, sum, in place.
    Allreduce,
    /// Ping-pong between two ranks.
    #[value(name = "world-pingpong")]
    Pingpong,
}

impl WorldBench {
    /// The name in the output (`allreduce`, `world-pingpong`).
    pub fn name(self) -> &'static str {
        match self {
            WorldBench::Allreduce => "allreduce",
            WorldBench::Pingpong => "world-pingpong",
        }
    }

    /// The operation's name on the C program's command line.
    fn mpi_name(self) -> &'static str {
        match self {
            WorldBench::Allreduce => "allreduce",
            WorldBench::Pingpong => "pingpong",
        }
    }

    /// The bytes one operation moves for `--size size`: all-reduce rounds down to whole
    /// `f64`s, at least one.
    pub fn message_size(self, size: usize) -> usize {
        match self {
            WorldBench::Allreduce => elements(size) * 8,
            WorldBench::Pingpong => size,
        }
    }

    /// The measured iterations when `--iters` is not given.
    ///
    /// All-reduce: 5 000 up to 4 KiB; above, about 256 MiB per rank, between 100 and 2 000.
    /// Ping-pong: as `shmesh bench pingpong` (20 000 up to 4 KiB; above, about 1 GiB each
    /// way, between 100 and 5 000).
    pub fn default_iters(self, size: usize) -> u64 {
        match self {
            WorldBench::Allreduce if size <= 4096 => 5_000,
            WorldBench::Allreduce => ((256u64 << 20) / size.max(1) as u64).clamp(100, 2_000),
            WorldBench::Pingpong => {
                super::Bench::PingPong.default_iters(super::Transport::Shm, size)
            }
        }
    }
}

/// The `f64`s of an all-reduce of `size` bytes: `size / 8`, at least one.
fn elements(size: usize) -> usize {
    (size / 8).max(1)
}

/// Who carries the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum WorldTransport {
    /// shmesh's World, ranks started by this executable.
    Shmesh,
    /// Open MPI (`mpirun` of a program built with `mpicc`).
    Openmpi,
}

impl WorldTransport {
    /// The name in the output.
    pub fn name(self) -> &'static str {
        match self {
            WorldTransport::Shmesh => "shmesh",
            WorldTransport::Openmpi => "openmpi",
        }
    }
}

/// Options of `shmesh bench allreduce`.
#[derive(Debug, Clone, clap::Args)]
pub struct AllreduceArgs {
    /// Ranks (processes) per job, comma-separated, 1 to 64.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        value_parser = clap::value_parser!(u16).range(1..=MAX_PEERS as i64),
        default_value = "2,4"
    )]
    pub ranks: Vec<u16>,
    /// Bytes reduced per all-reduce, comma-separated (suffixes k/KiB and m/MiB allowed): SIZE / 8
    /// f64s, at least one.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        value_parser = parse_size,
        default_value = "8,1048576"
    )]
    pub size: Vec<usize>,
    /// Measured all-reduces per ranks, size and transport, after a 10% warm-up.
    ///
    /// Default: 5000 up to 4 KiB; above, about 256 MiB per rank (256 at 1 MiB), between 100
    /// and 2000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// shmesh, openmpi, or both (comma-separated). Default: both, openmpi only when mpicc and
    /// mpirun are on the PATH (a note says when its rows are skipped); asked for explicitly,
    /// a missing Open MPI is an error.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub transport: Vec<WorldTransport>,
    /// One JSON object per line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `shmesh bench world-pingpong`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorldPingpongArgs {
    /// Message sizes in bytes, comma-separated (suffixes k/KiB and m/MiB allowed).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        value_parser = parse_size,
        default_value = "8,65536"
    )]
    pub size: Vec<usize>,
    /// Measured round trips per size and transport, after a 10% warm-up.
    ///
    /// Default: 20000 up to 4 KiB, fewer above (5000 at 64 KiB, 1024 at 1 MiB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// shmesh, openmpi, or both (comma-separated); as for `shmesh bench allreduce`.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub transport: Vec<WorldTransport>,
    /// One JSON object per line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What a `shmesh __world-bench-rank` process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RankRole {
    /// A rank of a World job: reads its place in the job from `SHMESH_JOB`, `SHMESH_RANK`
    /// and `SHMESH_SIZE`.
    Rank,
    /// The other end of the cache-line probe.
    Probe,
}

/// Arguments of the hidden `shmesh __world-bench-rank`, which `shmesh bench allreduce` and
/// `world-pingpong` pass.
#[derive(Debug, Clone, clap::Args)]
pub struct WorldRankArgs {
    /// What this process is.
    #[arg(long, value_enum)]
    pub role: RankRole,
    /// The operation (rank).
    #[arg(long, value_enum, default_value_t = WorldBench::Allreduce)]
    pub bench: WorldBench,
    /// Bytes per operation (rank).
    #[arg(long, default_value_t = 8)]
    pub size: usize,
    /// Iterations before the measured ones, not recorded (rank).
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Measured iterations (rank).
    #[arg(long, default_value_t = 1)]
    pub iters: u64,
    /// The probe segment to answer (probe).
    #[arg(long)]
    pub probe: Option<String>,
    /// The CPU to pin to (probe).
    #[arg(long)]
    pub cpu: Option<usize>,
    /// The parent's pid: the process exits if its parent is gone.
    #[arg(long)]
    pub parent: u32,
}

/// Runs `shmesh bench allreduce`.
///
/// # Errors
///
/// `--transport openmpi` without Open MPI, a failed compilation, the first measurement that
/// failed (with what the failed processes printed), or an I/O error writing the output.
pub fn run_allreduce(args: &AllreduceArgs) -> Result<(), BenchError> {
    let ranks: Vec<usize> = dedup(&args.ranks).into_iter().map(usize::from).collect();
    run(&Plan {
        bench: WorldBench::Allreduce,
        ranks,
        sizes: dedup(&args.size),
        iters: args.iters,
        transports: &args.transport,
        json: args.json,
    })
}

/// Runs `shmesh bench world-pingpong`.
///
/// # Errors
///
/// As [`run_allreduce`].
pub fn run_pingpong(args: &WorldPingpongArgs) -> Result<(), BenchError> {
    run(&Plan {
        bench: WorldBench::Pingpong,
        ranks: vec![2],
        sizes: dedup(&args.size),
        iters: args.iters,
        transports: &args.transport,
        json: args.json,
    })
}

/// One run's lists.
struct Plan<'a> {
    bench: WorldBench,
    ranks: Vec<usize>,
    sizes: Vec<usize>,
    iters: Option<u64>,
    /// As given: empty for the default.
    transports: &'a [WorldTransport],
    json: bool,
}

/// The Open MPI tools found on the `PATH`.
#[derive(Debug, Clone)]
struct MpiTools {
    mpicc: PathBuf,
    mpirun: PathBuf,
}

/// The executable file `name` in a directory of the `PATH`, if there is one.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

impl MpiTools {
    /// `mpicc` and `mpirun` from the `PATH`, or which of them is missing.
    fn find() -> Result<MpiTools, String> {
        match (find_on_path("mpicc"), find_on_path("mpirun")) {
            (Some(mpicc), Some(mpirun)) => Ok(MpiTools { mpicc, mpirun }),
            (None, Some(_)) => Err("mpicc".into()),
            (Some(_), None) => Err("mpirun".into()),
            (None, None) => Err("mpicc and mpirun".into()),
        }
    }
}

/// The transports to measure: `asked`, or both by default, without openmpi when Open MPI is
/// missing and was not asked for explicitly.
fn transports(
    asked: &[WorldTransport],
) -> Result<(Vec<WorldTransport>, Option<MpiTools>), BenchError> {
    let explicit = !asked.is_empty();
    let mut list = if explicit {
        dedup(asked)
    } else {
        vec![WorldTransport::Shmesh, WorldTransport::Openmpi]
    };
    let mut tools = None;
    if list.contains(&WorldTransport::Openmpi) {
        match MpiTools::find() {
            Ok(found) => tools = Some(found),
            Err(missing) if explicit => return Err(BenchError::NoMpi { missing }),
            Err(missing) => {
                eprintln!(
                    "note: Open MPI is not installed here ({missing} not on the PATH): the \
                     openmpi rows are skipped (install openmpi-bin and libopenmpi-dev to \
                     measure them side by side)"
                );
                list.retain(|&t| t != WorldTransport::Openmpi);
            }
        }
    }
    Ok((list, tools))
}

/// The compiled Open MPI program and how to run it.
#[derive(Debug)]
struct Mpi {
    mpirun: PathBuf,
    program: PathBuf,
    /// Running as root: `mpirun` refuses without `--allow-run-as-root`.
    root: bool,
    /// Runs with `OMPI_MCA_btl_vader_single_copy_mechanism=none` (CMA failed).
    no_cma: bool,
}

impl Mpi {
    /// Writes [`MPI_SOURCE`] into `dir` and compiles it there with `mpicc -O2`.
    fn build(tools: &MpiTools, dir: &Path) -> Result<Mpi, BenchError> {
        let source = dir.join("world_bench.c");
        let program = dir.join("world_bench");
        std::fs::write(&source, MPI_SOURCE)
            .map_err(BenchError::io(format!("writing {}", source.display())))?;
        let args = vec![
            "-O2".to_owned(),
            "-o".to_owned(),
            program.display().to_string(),
            source.display().to_string(),
        ];
        let command = format!("{} {}", tools.mpicc.display(), args.join(" "));
        let mut cc = Peer::spawn_program(&tools.mpicc, &args, &[])?;
        match wait_all(std::slice::from_mut(&mut cc), MEASURE_TIMEOUT)? {
            Ended::Done => {}
            Ended::TimedOut => {
                cc.terminate(MPIRUN_GRACE);
                return Err(BenchError::Mpi {
                    what: format!("compiling the benchmark program: `{command}` did not finish"),
                    output: String::new(),
                });
            }
            Ended::Interrupted => {
                cc.terminate(MPIRUN_GRACE);
                return Err(BenchError::Interrupted);
            }
            Ended::Failed(mut failures) => {
                let (_, e) = failures.remove(0);
                return Err(mpi_failure(
                    format!("compiling the benchmark program: `{command}`"),
                    e,
                ));
            }
        }
        Ok(Mpi {
            mpirun: tools.mpirun.clone(),
            program,
            root: nix::unistd::geteuid().is_root(),
            no_cma: false,
        })
    }

    /// The `mpirun` arguments of one measurement.
    fn args(&self, bench: WorldBench, ranks: usize, size: usize, counts: Counts) -> Vec<String> {
        let mut args = Vec::new();
        if self.root {
            args.push("--allow-run-as-root".to_owned());
        }
        args.extend(
            [
                "--oversubscribe",
                "-n",
                &ranks.to_string(),
                "--bind-to",
                "none",
                &self.program.display().to_string(),
                bench.mpi_name(),
                &size.to_string(),
                &counts.warmup.to_string(),
                &counts.measured.to_string(),
            ]
            .map(str::to_owned),
        );
        args
    }

    /// Runs one measurement under `mpirun`: the samples rank 0 printed.
    fn measure(
        &mut self,
        bench: WorldBench,
        ranks: usize,
        size: usize,
        counts: Counts,
    ) -> Result<Vec<u64>, BenchError> {
        loop {
            let args = self.args(bench, ranks, size, counts);
            let env: Vec<(&str, String)> = if self.no_cma {
                vec![(
                    "OMPI_MCA_btl_vader_single_copy_mechanism",
                    "none".to_owned(),
                )]
            } else {
                Vec::new()
            };
            let command = format!("{} {}", self.mpirun.display(), args.join(" "));
            let mut run = Peer::spawn_program(&self.mpirun, &args, &env)?;
            match wait_all(std::slice::from_mut(&mut run), MEASURE_TIMEOUT)? {
                Ended::Done => return parse_samples(&run.remaining_lines(), counts.measured),
                Ended::TimedOut => {
                    run.terminate(MPIRUN_GRACE);
                    return Err(BenchError::Timeout {
                        what: "mpirun to finish the measurement (lower --iters?)",
                        waited: MEASURE_TIMEOUT,
                    });
                }
                Ended::Interrupted => {
                    run.terminate(MPIRUN_GRACE);
                    return Err(BenchError::Interrupted);
                }
                Ended::Failed(mut failures) => {
                    let (_, e) = failures.remove(0);
                    if !self.no_cma && cma_failed(&e) {
                        eprintln!(
                            "note: Open MPI's CMA single-copy mechanism failed here (containers \
                             often forbid process_vm_readv): running the openmpi rows with \
                             OMPI_MCA_btl_vader_single_copy_mechanism=none"
                        );
                        self.no_cma = true;
                        continue;
                    }
                    return Err(mpi_failure(format!("`{command}`"), e));
                }
            }
        }
    }
}

/// Whether `e`, a failure of `mpirun`, says the CMA single-copy mechanism failed: the vader
/// transport prints `Read -1, expected N, errno = E` (or `Wrote ...`) when
/// `process_vm_readv` (`writev`) is refused.
fn cma_failed(e: &BenchError) -> bool {
    match e {
        BenchError::PeerFailed { stderr, .. } => [
            "Read -1, expected",
            "Wrote -1, expected",
            "process_vm_readv",
            "process_vm_writev",
        ]
        .iter()
        .any(|needle| stderr.contains(needle)),
        _ => false,
    }
}

/// An [`BenchError::Mpi`] for `what`, which failed with `e`.
fn mpi_failure(what: String, e: BenchError) -> BenchError {
    match e {
        BenchError::PeerFailed { status, stderr } => BenchError::Mpi {
            what: format!(
                "{what} {}",
                status.replace("exited before the benchmark was over", "exited")
            ),
            output: stderr,
        },
        other => BenchError::Mpi {
            what: format!("{what}: {other}"),
            output: String::new(),
        },
    }
}

/// Warm-up and measured iterations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    warmup: u64,
    measured: u64,
}

/// What the measurements of one run share.
struct Ctx {
    pid: u32,
    /// Probe segments and World jobs made so far.
    next: u64,
    /// The CPUs this process may use.
    allowed: Vec<usize>,
    /// This process's CPU and the probe's, when there are two.
    cpus: Option<(usize, usize)>,
    mpi: Option<Mpi>,
}

fn run(plan: &Plan<'_>) -> Result<(), BenchError> {
    let (transports, tools) = transports(plan.transports)?;
    let dir = TempDir::new()?;
    let pid = std::process::id();
    stop_on_signal()?;
    let allowed = process::allowed_cpus()?;
    let cpus = match allowed.as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => {
            eprintln!(
                "warning: fewer than two CPUs available: the cache-line probe's two processes \
                 share one"
            );
            None
        }
    };
    if let Some(&most) = plan.ranks.iter().max() {
        if most > allowed.len() {
            eprintln!(
                "warning: up to {most} ranks on {} CPUs: the ranks share CPUs (oversubscribed), \
                 so those figures measure the scheduler as much as the transport; Open MPI's \
                 ranks yield the CPU while they wait when oversubscribed",
                allowed.len()
            );
        }
    }
    let mpi = match tools {
        Some(tools) => Some(Mpi::build(&tools, dir.path())?),
        None => None,
    };
    let mut ctx = Ctx {
        pid,
        next: 0,
        allowed,
        cpus,
        mpi,
    };
    let count = plan.ranks.len() * plan.sizes.len() * transports.len();
    let mut out = Output::new(plan.json, Table::World, count);
    for &ranks in &plan.ranks {
        for &asked in &plan.sizes {
            let size = plan.bench.message_size(asked);
            let measured = plan.iters.unwrap_or_else(|| plan.bench.default_iters(size));
            let counts = Counts {
                warmup: warmup(measured),
                measured,
            };
            let mut rows = Vec::new();
            for &transport in &transports {
                out.bar.set_message(format!(
                    "{} {} {ranks} ranks {}",
                    plan.bench.name(),
                    transport.name(),
                    report::format_size(size)
                ));
                let row =
                    measure(&mut ctx, plan.bench, transport, ranks, size, counts).map_err(|e| {
                        BenchError::WorldMeasurement {
                            bench: plan.bench.name(),
                            transport: transport.name(),
                            ranks,
                            size,
                            source: Box::new(e),
                        }
                    })?;
                out.row(&Row::World(row.clone()))?;
                rows.push(row);
            }
            if let [shmesh, mpi] = rows.as_slice() {
                out.note(&ratio_line(plan.bench, shmesh, mpi))?;
            }
        }
    }
    drop(out);
    std::io::stdout()
        .flush()
        .map_err(BenchError::io("writing the results to stdout"))
}

/// Makes SIGINT, SIGTERM and SIGHUP set [`INTERRUPTED`] instead of killing this process.
/// Handlers, not a blocked mask (which `shmesh bench pingpong` uses): the mask would be
/// inherited by `mpirun`, which must still stop on SIGTERM and on a Ctrl-C at the terminal.
fn stop_on_signal() -> Result<(), BenchError> {
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED))
            .map_err(BenchError::io(format!("handling signal {signal}")))?;
    }
    Ok(())
}

/// The prefix of this run's job ids.
fn job_prefix(pid: u32) -> String {
    format!("bench-{pid}-")
}

/// The target for this bench, ranks and size: shmesh's p50 over Open MPI's at most
/// this.
pub fn target(bench: WorldBench, ranks: usize, size: usize) -> Option<f64> {
    match (bench, ranks, size) {
        (WorldBench::Allreduce, 2, 8) => Some(0.5),
        (WorldBench::Allreduce, 4, 1_048_576) => Some(1.0),
        _ => None,
    }
}

/// The table line comparing a shmesh row with the openmpi row of the same ranks and size.
pub fn ratio_line(bench: WorldBench, shmesh: &WorldRow, mpi: &WorldRow) -> String {
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let show = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
    let p50 = ratio(shmesh.p50_ns, mpi.p50_ns);
    let mut line = format!(
        "  shmesh/openmpi, {} ranks, {}: p50 {}, p99 {}",
        shmesh.ranks,
        report::format_size(shmesh.size),
        show(p50),
        show(ratio(shmesh.p99_ns, mpi.p99_ns))
    );
    if let (Some(goal), Some(p50)) = (target(bench, shmesh.ranks, shmesh.size), p50) {
        line += &format!(
            " (target: p50 <= {goal:.1}x, {})",
            if p50 <= goal { "met" } else { "not met" }
        );
    }
    line
}

/// One row: the probe, then the operation over `transport`.
fn measure(
    ctx: &mut Ctx,
    bench: WorldBench,
    transport: WorldTransport,
    ranks: usize,
    size: usize,
    counts: Counts,
) -> Result<WorldRow, BenchError> {
    let cl_ns = measure_cl(ctx)?;
    let samples = match transport {
        WorldTransport::Shmesh => run_shmesh(ctx, bench, ranks, size, counts)?,
        WorldTransport::Openmpi => ctx
            .mpi
            .as_mut()
            .ok_or_else(|| BenchError::Usage("internal error: Open MPI was not built".into()))?
            .measure(bench, ranks, size, counts)?,
    };
    let mut hist = new_histogram()?;
    for &ns in &samples {
        hist.saturating_record(ns);
    }
    Ok(WorldRow {
        bench: bench.name(),
        transport: transport.name(),
        ranks,
        size,
        iters: hist.len(),
        cl_ns,
        p50_ns: hist.value_at_quantile(0.5),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
        max_ns: hist.max(),
    })
}

/// The cache-line round trip between this process and a probe process, each pinned to a CPU
/// of its own when there are two; this process may use all its CPUs again afterwards.
fn measure_cl(ctx: &mut Ctx) -> Result<u64, BenchError> {
    ctx.next += 1;
    let name = format!("bench.{}.{}.cl", ctx.pid, ctx.next);
    let mut probe = CacheLineProbe::create(&name).map_err(|source| BenchError::Segment {
        name: name.clone(),
        source,
    })?;
    let mut args = vec![
        "__world-bench-rank".to_owned(),
        "--role=probe".to_owned(),
        format!("--probe={name}"),
        format!("--parent={}", ctx.pid),
    ];
    let result = (|| {
        if let Some((mine, theirs)) = ctx.cpus {
            args.push(format!("--cpu={theirs}"));
            process::pin(mine)?;
        }
        let mut peer = Peer::spawn(&args)?;
        let cl = super::measure_cl(&mut probe, &mut peer);
        let finished = peer.finish(cl.is_err());
        let cl = cl?;
        finished.map(|()| cl)
    })();
    let unpinned = match ctx.cpus {
        Some(_) => process::unpin(&ctx.allowed),
        None => Ok(()),
    };
    drop(probe);
    let _ = shmesh_ring::Segment::remove(&name);
    let cl = result?;
    unpinned.map(|()| cl)
}

/// How the processes of a measurement ended.
enum Ended {
    /// All exited with success.
    Done,
    /// These failed (index, why); the others may still run.
    Failed(Vec<(usize, BenchError)>),
    /// The deadline passed; some still run.
    TimedOut,
    /// A signal asked the run to stop; some may still run.
    Interrupted,
}

/// Waits until every process of `procs` exited with success, one failed (and
/// [`FAILURE_GRACE`] passed, or all exited), or `timeout` passed.
fn wait_all(procs: &mut [Peer], timeout: Duration) -> Result<Ended, BenchError> {
    let start = Instant::now();
    let mut exited = vec![false; procs.len()];
    let mut failures = Vec::new();
    let mut first_failure: Option<Instant> = None;
    loop {
        for (i, p) in procs.iter_mut().enumerate() {
            if exited[i] {
                continue;
            }
            if let Some(outcome) = p.poll_exit()? {
                exited[i] = true;
                if let Err(e) = outcome {
                    failures.push((i, e));
                    first_failure.get_or_insert_with(Instant::now);
                }
            }
        }
        let all = exited.iter().all(|&e| e);
        match first_failure {
            Some(t) if all || t.elapsed() > FAILURE_GRACE => return Ok(Ended::Failed(failures)),
            None if all => return Ok(Ended::Done),
            _ => {}
        }
        if start.elapsed() > timeout {
            return Ok(Ended::TimedOut);
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Ok(Ended::Interrupted);
        }
        std::thread::sleep(POLL);
    }
}

/// A job id no segment in `/dev/shm` uses yet: `bench-<pid>-<n>`.
fn fresh_job(ctx: &mut Ctx) -> String {
    loop {
        ctx.next += 1;
        let job = format!("{}{}", job_prefix(ctx.pid), ctx.next);
        if job_segments(&job).is_empty() {
            return job;
        }
    }
}

/// The segments of World job `job`: `world.<job>` and `world.<job>.*`.
fn job_segments(job: &str) -> Vec<String> {
    let base = format!("world.{job}");
    process::segments_named(&base)
        .into_iter()
        .filter(|name| name.len() == base.len() || name[base.len()..].starts_with('.'))
        .collect()
}

/// Removes what the ranks of `job` left in `/dev/shm` (segments no process uses).
fn remove_job(job: &str) {
    for name in job_segments(job) {
        match shmesh_ring::Segment::remove_unused(&name) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "warning: the segment {name} of the finished job {job} is still in use: left \
                 in place (`shmesh gc` removes it once unused)"
            ),
            Err(e) => eprintln!("warning: could not remove the segment {name}: {e}"),
        }
    }
}

/// Runs one measurement over shmesh's World: `ranks` processes of this executable; the
/// samples rank 0 printed.
fn run_shmesh(
    ctx: &mut Ctx,
    bench: WorldBench,
    ranks: usize,
    size: usize,
    counts: Counts,
) -> Result<Vec<u64>, BenchError> {
    let job = fresh_job(ctx);
    let args = vec![
        "__world-bench-rank".to_owned(),
        "--role=rank".to_owned(),
        format!("--bench={}", bench.name()),
        format!("--size={size}"),
        format!("--warmup={}", counts.warmup),
        format!("--iters={}", counts.measured),
        format!("--parent={}", ctx.pid),
    ];
    let mut procs = Vec::with_capacity(ranks);
    let result = (|| {
        for rank in 0..ranks {
            let env = [
                ("SHMESH_JOB", job.clone()),
                ("SHMESH_RANK", rank.to_string()),
                ("SHMESH_SIZE", ranks.to_string()),
            ];
            procs.push(Peer::spawn_piped_env(&args, &env)?);
        }
        match wait_all(&mut procs, MEASURE_TIMEOUT)? {
            Ended::Done => parse_samples(&procs[0].remaining_lines(), counts.measured),
            Ended::TimedOut => Err(BenchError::Timeout {
                what: "the ranks to finish the measurement (lower --iters?)",
                waited: MEASURE_TIMEOUT,
            }),
            Ended::Interrupted => Err(BenchError::Interrupted),
            Ended::Failed(failures) => Err(BenchError::Ranks {
                job: job.clone(),
                failures: failures
                    .into_iter()
                    .map(|(rank, e)| format!("rank {rank}: {e}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            }),
        }
    })();
    // Kills and reaps the ranks still running; then nothing holds the job's segments.
    drop(procs);
    remove_job(&job);
    result
}

/// The samples of the line `samples N T1 ... TN` among `lines` (rank 0's stdout), which must
/// hold `expected` of them.
///
/// # Errors
///
/// [`BenchError::Usage`] (an internal error) when there is no such line or it is malformed.
pub fn parse_samples(lines: &[String], expected: u64) -> Result<Vec<u64>, BenchError> {
    let bad = |why: &str| {
        BenchError::Usage(format!(
            "internal error: rank 0 of the benchmark {why} (expected `samples {expected} T1 .. \
             T{expected}`; its output: {:?})",
            lines
                .iter()
                .map(|l| l.chars().take(200).collect::<String>())
                .collect::<Vec<_>>()
        ))
    };
    let line = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("samples "))
        .ok_or_else(|| bad("printed no samples line"))?;
    let mut words = line.split_ascii_whitespace();
    let count: u64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad("printed no sample count"))?;
    let samples = words
        .map(|w| w.parse::<u64>())
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| bad("printed a sample that is not a number"))?;
    if count != expected || samples.len() as u64 != expected {
        return Err(bad(&format!(
            "printed {} samples under a count of {count}",
            samples.len()
        )));
    }
    Ok(samples)
}

/// Runs a `shmesh __world-bench-rank` process.
///
/// # Errors
///
/// Any failure; the binary prints it on stderr, where the parent collects it.
pub fn run_rank(args: &WorldRankArgs) -> Result<(), BenchError> {
    // Die with the parent; and if it died before this call, go now.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(BenchError::os("prctl(PR_SET_PDEATHSIG)"))?;
    if nix::unistd::getppid().as_raw() as u32 != args.parent {
        return Err(BenchError::Usage("the parent process is gone".into()));
    }
    match args.role {
        RankRole::Probe => {
            if let Some(cpu) = args.cpu {
                process::pin(cpu)?;
            }
            let name = args.probe.as_deref().ok_or_else(|| {
                BenchError::Usage("internal error: the probe was given no --probe".into())
            })?;
            let probe = CacheLineProbe::open(name).map_err(|source| BenchError::Segment {
                name: name.to_owned(),
                source,
            })?;
            probe.serve(OP_TIMEOUT).map_err(BenchError::Probe)?;
            Ok(())
        }
        RankRole::Rank => rank::run(args),
    }
}

/// Prints `line` on stdout for the parent, at once.
fn say(line: &str) -> Result<(), BenchError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(BenchError::io("writing the results to the parent"))
}

/// The `samples N T1 .. TN` line.
fn samples_line(samples: &[u64]) -> String {
    let mut line = format!("samples {}", samples.len());
    for s in samples {
        line.push(' ');
        line += &s.to_string();
    }
    line
}

/// The value of element `j` of `rank`'s buffer in iteration `iteration` of the all-reduce.
fn contribution(rank: usize, j: usize, iteration: u64) -> f64 {
    (rank + 1) as f64 + (j % 251) as f64 + (iteration % 7) as f64
}

/// What element `j` of the all-reduce's result must be in iteration `iteration`, with
/// `ranks` ranks.
fn reduced(ranks: usize, j: usize, iteration: u64) -> f64 {
    let r = ranks as f64;
    r * (r + 1.0) / 2.0 + r * ((j % 251) as f64 + (iteration % 7) as f64)
}

/// Checks the all-reduce's result of iteration `iteration`.
fn check_reduced(buf: &[f64], ranks: usize, iteration: u64) -> Result<(), BenchError> {
    match buf
        .iter()
        .enumerate()
        .find(|&(j, &v)| v != reduced(ranks, j, iteration))
    {
        None => Ok(()),
        Some((j, &v)) => Err(BenchError::Corrupt {
            seq: iteration,
            detail: format!(
                "element {j} of the all-reduce is {v}, expected {}",
                reduced(ranks, j, iteration)
            ),
        }),
    }
}

/// The rank's side, over shmesh's World.
mod rank {
    use std::time::Instant;

    use crate::world::{Op, Source, Tag, World};

    use super::super::nanos;
    use super::{
        check, check_reduced, contribution, elements, fill, samples_line, say, BenchError, Touch,
        WorldBench, WorldRankArgs, PING_TAG, TIMES_TAG,
    };

    /// Joins the job, runs the operation, and (rank 0) prints the samples.
    pub(super) fn run(args: &WorldRankArgs) -> Result<(), BenchError> {
        let mut world =
            World::init().map_err(BenchError::world("joining the job (World::init)"))?;
        let total = args.warmup + args.iters;
        match args.bench {
            WorldBench::Allreduce => {
                let times = allreduce(&mut world, args.size, args.warmup, total)?;
                if let Some(slowest) = slowest(&mut world, times)? {
                    say(&samples_line(&slowest))?;
                }
            }
            WorldBench::Pingpong => {
                if let Some(times) = pingpong(&mut world, args.size, args.warmup, total)? {
                    say(&samples_line(&times))?;
                }
            }
        }
        // Every rank leaves together, as MPI_Finalize synchronizes the C program's ranks: a
        // rank does not exit while another is still reading the last message it sent.
        world
            .barrier()
            .map_err(BenchError::world("the barrier before leaving the job"))
    }

    /// This rank's time of each measured all-reduce.
    fn allreduce(
        world: &mut World,
        size: usize,
        warmup: u64,
        total: u64,
    ) -> Result<Vec<u64>, BenchError> {
        let (rank, ranks) = (world.rank(), world.size());
        let mut buf = vec![0f64; elements(size)];
        let mut times = Vec::with_capacity((total - warmup) as usize);
        for i in 0..total {
            for (j, x) in buf.iter_mut().enumerate() {
                *x = contribution(rank, j, i);
            }
            world
                .barrier()
                .map_err(|e| BenchError::world(format!("the barrier before all-reduce {i}"))(e))?;
            let start = Instant::now();
            let done = world.all_reduce(&mut buf[..], Op::Sum);
            let ns = nanos(start.elapsed());
            done.map_err(|e| BenchError::world(format!("all-reduce {i}"))(e))?;
            check_reduced(&buf, ranks, i)?;
            if i >= warmup {
                times.push(ns);
            }
        }
        Ok(times)
    }

    /// At rank 0: the largest time any rank measured for each iteration (the other ranks send
    /// theirs); `None` at the other ranks.
    fn slowest(world: &mut World, mut times: Vec<u64>) -> Result<Option<Vec<u64>>, BenchError> {
        if world.rank() != 0 {
            world
                .send_slice(0, TIMES_TAG, &times[..])
                .map_err(BenchError::world("sending this rank's times to rank 0"))?;
            return Ok(None);
        }
        let mut theirs = vec![0u64; times.len()];
        for rank in 1..world.size() {
            let status = world
                .recv_slice_into(Source::Rank(rank), Tag::Is(TIMES_TAG), &mut theirs[..])
                .map_err(|e| BenchError::world(format!("receiving the times of rank {rank}"))(e))?;
            if status.len != std::mem::size_of_val(&theirs[..]) {
                return Err(BenchError::Corrupt {
                    seq: 0,
                    detail: format!(
                        "rank {rank} sent {} bytes of times, expected {}",
                        status.len,
                        std::mem::size_of_val(&theirs[..])
                    ),
                });
            }
            for (mine, &other) in times.iter_mut().zip(&theirs) {
                *mine = (*mine).max(other);
            }
        }
        Ok(Some(times))
    }

    /// Rank 0: the time of each measured round trip; rank 1 answers (`None`).
    fn pingpong(
        world: &mut World,
        size: usize,
        warmup: u64,
        total: u64,
    ) -> Result<Option<Vec<u64>>, BenchError> {
        if world.size() != 2 {
            return Err(BenchError::Usage(format!(
                "the world ping-pong runs on 2 ranks, not {}",
                world.size()
            )));
        }
        let mut buf = vec![0u8; size];
        if world.rank() == 0 {
            let mut times = Vec::with_capacity((total - warmup) as usize);
            for seq in 0..total {
                let start = Instant::now();
                fill(&mut buf, seq);
                world
                    .send_slice(1, PING_TAG, &buf[..])
                    .map_err(|e| BenchError::world(format!("sending message {seq}"))(e))?;
                let status = world
                    .recv_slice_into(Source::Rank(1), Tag::Is(PING_TAG), &mut buf[..])
                    .map_err(|e| BenchError::world(format!("receiving answer {seq}"))(e))?;
                check(&buf[..status.len], seq, size, Touch::All)?;
                let ns = nanos(start.elapsed());
                if seq >= warmup {
                    times.push(ns);
                }
            }
            Ok(Some(times))
        } else {
            for seq in 0..total {
                let status = world
                    .recv_slice_into(Source::Rank(0), Tag::Is(PING_TAG), &mut buf[..])
                    .map_err(|e| BenchError::world(format!("receiving message {seq}"))(e))?;
                check(&buf[..status.len], seq, size, Touch::All)?;
                fill(&mut buf, seq);
                world
                    .send_slice(0, PING_TAG, &buf[..])
                    .map_err(|e| BenchError::world(format!("sending answer {seq}"))(e))?;
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_lines_parse_and_are_checked() {
        let lines = vec!["noise".to_owned(), "samples 3 10 20 5".to_owned()];
        assert_eq!(parse_samples(&lines, 3).unwrap(), [10, 20, 5]);
        assert_eq!(samples_line(&[10, 20, 5]), "samples 3 10 20 5");
        let err = |lines: &[&str], n| {
            let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            parse_samples(&lines, n).unwrap_err().to_string()
        };
        assert!(err(&["hello"], 1).contains("no samples line"));
        assert!(err(&["samples 2 1 2"], 3).contains("2 samples under a count of 2"));
        assert!(err(&["samples 3 1 2"], 3).contains("2 samples under a count of 3"));
        assert!(err(&["samples 2 1 x"], 2).contains("not a number"));
        assert!(err(&["samples x"], 2).contains("no sample count"));
    }

    #[test]
    fn allreduce_sizes_are_whole_f64s() {
        assert_eq!(WorldBench::Allreduce.message_size(8), 8);
        assert_eq!(WorldBench::Allreduce.message_size(1), 8);
        assert_eq!(WorldBench::Allreduce.message_size(20), 16);
        assert_eq!(WorldBench::Allreduce.message_size(1 << 20), 1 << 20);
        assert_eq!(WorldBench::Pingpong.message_size(3), 3);
    }

    #[test]
    fn default_iteration_counts() {
        assert_eq!(WorldBench::Allreduce.default_iters(8), 5_000);
        assert_eq!(WorldBench::Allreduce.default_iters(1 << 20), 256);
        assert_eq!(WorldBench::Allreduce.default_iters(65536), 2_000);
        assert_eq!(WorldBench::Allreduce.default_iters(64 << 20), 100);
        assert_eq!(WorldBench::Pingpong.default_iters(8), 20_000);
        assert_eq!(WorldBench::Pingpong.default_iters(65536), 5_000);
    }

    #[test]
    fn the_reduction_check_catches_a_wrong_element() {
        let ranks = 3;
        let mut buf: Vec<f64> = (0..600).map(|j| reduced(ranks, j, 9)).collect();
        let sum: f64 = (0..ranks).map(|r| contribution(r, 300, 9)).sum();
        assert_eq!(sum, buf[300]);
        check_reduced(&buf, ranks, 9).unwrap();
        assert!(check_reduced(&buf, ranks, 10).is_err(), "another iteration");
        buf[599] += 1.0;
        let e = check_reduced(&buf, ranks, 9).unwrap_err().to_string();
        assert!(e.contains("element 599"), "{e}");
    }

    #[test]
    fn ratio_lines_compare_and_name_the_target() {
        let row = |transport, p50, p99| WorldRow {
            bench: "allreduce",
            transport,
            ranks: 2,
            size: 8,
            iters: 100,
            cl_ns: 50,
            p50_ns: p50,
            p99_ns: p99,
            p999_ns: p99,
            max_ns: p99,
        };
        let line = ratio_line(
            WorldBench::Allreduce,
            &row("shmesh", 400, 900),
            &row("openmpi", 1000, 1000),
        );
        assert_eq!(
            line,
            "  shmesh/openmpi, 2 ranks, 8 B: p50 0.40x, p99 0.90x (target: p50 <= 0.5x, met)"
        );
        let line = ratio_line(
            WorldBench::Pingpong,
            &row("shmesh", 400, 900),
            &row("openmpi", 0, 1000),
        );
        assert_eq!(line, "  shmesh/openmpi, 2 ranks, 8 B: p50 -, p99 0.90x");
        assert_eq!(target(WorldBench::Allreduce, 4, 1 << 20), Some(1.0));
        assert_eq!(target(WorldBench::Allreduce, 4, 8), None);
    }

    #[test]
    fn job_ids_are_valid_world_job_ids() {
        let job = format!("{}{}", job_prefix(u32::MAX), u64::MAX);
        assert!(job.len() <= 48, "{job}");
        assert!(job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn the_c_program_is_the_one_in_benches() {
        assert!(MPI_SOURCE.contains("MPI_Allreduce(MPI_IN_PLACE"));
        assert!(MPI_SOURCE.contains("samples %lld"));
    }

    #[test]
    fn a_refused_cma_is_recognised() {
        let failed = |stderr: &str| BenchError::PeerFailed {
            status: "failed with exit code 1".into(),
            stderr: stderr.into(),
        };
        assert!(cma_failed(&failed(
            "[vm:01234] Read -1, expected 65536, errno = 1\nMPI_ABORT was invoked"
        )));
        assert!(cma_failed(&failed("Wrote -1, expected 1048576, errno = 1")));
        assert!(!cma_failed(&failed("MPI_ABORT was invoked on rank 1")));
        assert!(!cma_failed(&BenchError::Usage("Read -1, expected".into())));
        let e = mpi_failure("`mpirun x`".into(), failed("boom")).to_string();
        assert_eq!(
            e,
            "Open MPI: `mpirun x` failed with exit code 1; it said:\nboom"
        );
    }

    #[test]
    fn the_path_is_searched_for_executables() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("surely-no-such-program-here").is_none());
    }
}
