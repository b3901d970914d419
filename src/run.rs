//! `shmesh run`: starts the ranks of a message-passing job, like `mpirun`, forwards their
//! output, and cleans up after them.
//!
//! `shmesh run -n N [--hosts FILE] -- PROGRAM ARGS...` starts `N` processes of `PROGRAM ARGS`.
//! Each finds its identity in its environment (the contract `shmesh::world` reads):
//!
//! | variable | value |
//! |----------|-------|
//! | [`SHMESH_JOB`](ENV_JOB) | the job id: 1 to [`MAX_JOB_LEN`] of `[A-Za-z0-9_-]`, fresh per run (`j<pid hex>-<random hex>`) unless `--job` forces one |
//! | [`SHMESH_RANK`](ENV_RANK), [`SHMESH_SIZE`](ENV_SIZE) | this rank (0-based) and the number of ranks, decimal |
//! | [`SHMESH_LOCAL_RANK`](ENV_LOCAL_RANK), [`SHMESH_LOCAL_SIZE`](ENV_LOCAL_SIZE) | the same among the ranks of this rank's host |
//! | [`SHMESH_HOST`](ENV_HOST) | the host's name from the hosts file ([`LOCAL_HOST`] without one) |
//! | [`SHMESH_HOSTS`](ENV_HOSTS) | every host that has ranks, in rank order: `name:ranks,name:ranks,...`; the ranks on the `i`-th host follow those of the hosts before it |
//!
//! Every shared-memory segment of job `J` is named `world.J.<something>`
//! ([`job_segment_prefix`]); when every rank has ended, however it ended (kill -9 included),
//! the launcher removes those no live process uses ([`remove_job_segments`]), on this machine
//! and, through each host's `exec` prefix, on the other hosts.
//!
//! # Output
//!
//! Each line a rank writes to stdout goes to the launcher's stdout, each stderr line to its
//! stderr, prefixed with the rank: `[3] text` (`--no-prefix`: unprefixed). Lines are written
//! whole, so the lines of different ranks never mix; a final line without a newline is ended
//! with one; a line longer than 64 KiB is forwarded in pieces. Ranks get `/dev/null` as stdin.
//!
//! # Ending, exit status and failures
//!
//! The launcher waits for every rank. Each rank that fails gets one line on stderr:
//! `shmesh run: rank 3 exited with status 2` or `shmesh run: rank 3 was killed by signal 9
//! (SIGKILL)`. The exit status ([`RunOutcome::exit_code`]) is 0 when every rank exited with 0;
//! otherwise that of the first rank seen failing (its status, or 128 + its signal); 128 + the
//! signal when the launcher was interrupted (130 for Ctrl-C); 124 after `--timeout`.
//!
//! By default a failed rank leaves the others running: shmesh reports a dead peer to the ranks
//! that talk to it as an error, and they decide. With `--abort-on-failure` the first failure
//! stops the job. Stopping (also on SIGINT, SIGTERM or SIGHUP to the launcher, and on
//! `--timeout`) sends SIGTERM to every rank, then SIGKILL to those still running after the
//! grace period (`--grace`, 2 s by default); a second signal to the launcher sends SIGKILL at
//! once.
//!
//! # Process groups and signals
//!
//! Each rank runs in a process group of its own (the rank is its leader), never in the
//! launcher's:
//! - A Ctrl-C at a terminal signals the terminal's foreground process group, which holds the
//!   launcher but no rank: the launcher alone gets SIGINT and sends each rank one SIGTERM.
//!   Were the ranks in the launcher's group, each would get the terminal's SIGINT *and* the
//!   launcher's SIGTERM.
//! - A signal to the group reaches what a rank started too (the `sleep` of a `sh -c` rank).
//! - A group per rank rather than one for the job: one shared group would be led by the first
//!   rank and could not be joined once that rank ended; per-rank groups have no such race.
//! - The launcher learns that a rank ended without reaping it (`waitid` with `WNOWAIT`) and
//!   reaps every rank only once all have ended. A rank's pid, hence its group id, cannot be
//!   reused while it is unreaped, so signalling the group never reaches a stranger. When every
//!   rank has ended but processes they started still hold their output open, those get
//!   SIGTERM after the grace period, then SIGKILL, before the launcher gives up on them.
//!
//! Signals are handled with `signal-hook` (the same crate `shmesh bench bridge` uses):
//! SIGINT, SIGTERM, SIGHUP and SIGCHLD arrive on a channel the launcher waits on. Their
//! handlers stay registered for the duration of [`run`]; afterwards `signal-hook` leaves them
//! installed but empty (a program that calls `run` is meant to exit when it returns, as the
//! CLI does).
//!
//! # Hosts
//!
//! `--hosts FILE` lists hosts, their slots and how to start a program on each (see
//! [`hosts`] for the format). Ranks fill the hosts in file order, `slots` each;
//! `-n` defaults to the sum of the slots. A rank on a host with an `exec` prefix is started as
//! `PREFIX... env SHMESH_JOB=.. SHMESH_RANK=.. ... PROGRAM ARGS...` (`env` carries the
//! variables across `ssh`, which does not pass the environment). `ssh` joins the words after
//! the host into one command for the remote shell: quote arguments that the remote shell must
//! see as one word, as with `ssh` itself. A rank behind `ssh` is stopped by stopping its `ssh`;
//! whether the remote program then ends is up to it (it loses its output). After the job, the
//! launcher runs `PREFIX... <this shmesh binary> __run-cleanup --job J` on each such host, so
//! the same `shmesh` path must exist there.
//!
//! # Limits
//!
//! A launcher killed with SIGKILL cannot stop its ranks; they lose their output pipes (and die
//! of SIGPIPE when they write) and their segments stay until `shmesh gc`.
//!
//! # Examples
//!
//! ```no_run
//! use clap::Parser;
//! use shmesh::run::{run, RunArgs};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     run: RunArgs,
//! }
//!
//! let cli = Cli::parse_from(["x", "-n", "4", "--", "sh", "-c", "echo $SHMESH_RANK"]);
//! let outcome = run(&cli.run)?;
//! std::process::exit(outcome.exit_code().into());
//! # Ok::<(), shmesh::run::RunError>(())
//! ```

mod bridges;
pub mod hosts;
mod output;

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use shmesh_ring::inspect::SHM_DIR;
use shmesh_ring::segment::NAME_PREFIX;
use shmesh_ring::{Segment, SegmentError};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use thiserror::Error;

pub use hosts::{parse_hosts, read_hosts, Host, HostsError, MAX_HOST_NAME_LEN};
use output::Sink;

/// The job id, in every rank's environment.
pub const ENV_JOB: &str = "SHMESH_JOB";
/// This rank, 0-based, decimal.
pub const ENV_RANK: &str = "SHMESH_RANK";
/// The number of ranks of the job, decimal.
pub const ENV_SIZE: &str = "SHMESH_SIZE";
/// This rank among the ranks of its host, 0-based, decimal.
pub const ENV_LOCAL_RANK: &str = "SHMESH_LOCAL_RANK";
/// The number of ranks on this rank's host, decimal.
pub const ENV_LOCAL_SIZE: &str = "SHMESH_LOCAL_SIZE";
/// The name of this rank's host: from the hosts file, [`LOCAL_HOST`] without one.
pub const ENV_HOST: &str = "SHMESH_HOST";
/// Every host with ranks, in rank order: `name:ranks,name:ranks,...`.
pub const ENV_HOSTS: &str = "SHMESH_HOSTS";
/// The longest job id.
pub const MAX_JOB_LEN: usize = 48;
/// The host name of every rank when there is no hosts file.
pub const LOCAL_HOST: &str = "localhost";
/// The exit status after `--timeout` (that of `timeout(1)`).
pub const EXIT_TIMEOUT: u8 = 124;
/// How long the clean-up of the job's segments on another host may take before the launcher
/// gives up on it (and says so).
pub const REMOTE_CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// Arguments of `shmesh run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// How many ranks to start (with --hosts, by default the sum of the hosts' slots).
    #[arg(short = 'n', long = "np", value_name = "N")]
    pub np: Option<usize>,
    /// Hosts file: one host per line, `NAME slots=N [exec="PREFIX ARGS"] [bridge=ADDR:PORT]`;
    /// ranks fill the hosts in file order.
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,
    /// Use this job id instead of a fresh one (1 to 48 of [A-Za-z0-9_-]).
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
    /// Forward the ranks' lines without the `[rank] ` prefix.
    #[arg(long)]
    pub no_prefix: bool,
    /// Stop the other ranks when one fails (SIGTERM, then SIGKILL after --grace).
    #[arg(long)]
    pub abort_on_failure: bool,
    /// How long ranks get between SIGTERM and SIGKILL when the job is stopped (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub grace: Duration,
    /// Stop the job after this long (exit status 124), e.g. 30s, 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// With ranks on several hosts: authenticate the job's bridges with the certificates in
    /// DIR (`shmesh-bridge gen-certs --out DIR HOST...`; the same path on every host).
    #[arg(long, value_name = "DIR")]
    pub bridge_certs: Option<PathBuf>,
    /// With ranks on several hosts: run the job's bridges without TLS (a trusted network only).
    #[arg(long)]
    pub bridge_insecure: bool,
    /// The `shmesh-bridge` binary (by default the one next to `shmesh`, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub bridge_bin: Option<PathBuf>,
    /// The program every rank runs, and its arguments (after `--` when they start with `-`).
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    pub command: Vec<OsString>,
}

/// Arguments of `shmesh __run-cleanup`, which the launcher runs on other hosts.
#[derive(Debug, Clone, clap::Args)]
pub struct RunCleanupArgs {
    /// The job whose segments to remove.
    #[arg(long, value_name = "ID")]
    pub job: String,
}

/// Parses a duration: a number (decimals allowed) and a unit, `ms`, `s`, `m` or `h`
/// (`500ms`, `2s`, `1.5m`); `0` alone is zero.
///
/// # Errors
///
/// A message saying what is wrong and how to write it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (examples: 500ms, 2s, 1.5m, 1h)"))?;
    let per_unit = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("'{text}' needs a unit: ms, s, m or h")),
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}': use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(n * per_unit)
        .map_err(|_| format!("duration '{text}' is out of range"))
}

/// A job id that is not 1 to [`MAX_JOB_LEN`] characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid job id '{job}': {reason}; a job id is 1 to 48 characters of [A-Za-z0-9_-]")]
pub struct InvalidJob {
    /// The id.
    pub job: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks a job id: 1 to [`MAX_JOB_LEN`] characters of `[A-Za-z0-9_-]`.
///
/// # Errors
///
/// [`InvalidJob`] saying what is wrong.
pub fn check_job_id(job: &str) -> Result<(), InvalidJob> {
    let reason = if job.is_empty() {
        "it is empty"
    } else if job.len() > MAX_JOB_LEN {
        "it is too long"
    } else if !job
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        "it has a character outside [A-Za-z0-9_-]"
    } else {
        return Ok(());
    };
    Err(InvalidJob {
        job: job.to_owned(),
        reason,
    })
}

/// The prefix of the name of every segment of job `job`: `world.<job>.`.
pub fn job_segment_prefix(job: &str) -> String {
    format!("world.{job}.")
}

/// A fresh job id, `j<pid hex>-<48 random bits hex>`: the randomness comes from the
/// operating system through the keys of `std`'s `RandomState`, mixed with the time.
fn fresh_job_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    format!(
        "j{:x}-{:012x}",
        std::process::id(),
        h.finish() & 0xffff_ffff_ffff
    )
}

/// What kept a segment of the job from being removed.
#[derive(Debug)]
pub enum LeftoverReason {
    /// A live process still uses it (one the ranks started, or a process outside the job).
    InUse,
    /// Removing it failed.
    Failed(SegmentError),
}

/// A segment of the job left behind.
#[derive(Debug)]
pub struct Leftover {
    /// The segment name (without the `shmesh.` prefix).
    pub name: String,
    /// Why it is still there.
    pub reason: LeftoverReason,
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            LeftoverReason::InUse => write!(
                f,
                "{name} (a live process still uses it: `shmesh rm {name}` says which; it \
                 removes it once that process ended)",
                name = self.name
            ),
            LeftoverReason::Failed(e) => write!(f, "{} ({e})", self.name),
        }
    }
}

/// The segments of a job could not all be removed.
#[derive(Debug, Error)]
pub enum CleanupError {
    /// The job id is not valid.
    #[error(transparent)]
    Job(#[from] InvalidJob),
    /// `/dev/shm` could not be listed.
    #[error("cannot list {dir} to find the segments of job '{job}': {source}")]
    List {
        /// The job.
        job: String,
        /// The directory.
        dir: &'static str,
        /// Why.
        source: io::Error,
    },
    /// Some segments are still there.
    #[error(
        "{} segment(s) of job '{job}' left behind ({removed} removed): {}",
        left.len(),
        left.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Left {
        /// The job.
        job: String,
        /// How many were removed.
        removed: usize,
        /// Those still there, and why.
        left: Vec<Leftover>,
    },
    /// The clean-up on another host failed.
    #[error(
        "could not remove the segments of job '{job}' on host {host}: {problem}; run \
         `shmesh gc --prefix world.{job}.` there"
    )]
    Remote {
        /// The job.
        job: String,
        /// The host.
        host: String,
        /// What happened: the command and its error or output.
        problem: String,
    },
}

/// Removes every segment of job `job` (`world.<job>.*`, see [`job_segment_prefix`]) on this
/// machine that no live process uses, with [`Segment::remove_unused`]: a segment a process
/// still holds is never removed. Returns how many were removed.
///
/// # Examples
///
/// ```no_run
/// let removed = shmesh::run::remove_job_segments("j1f2e-0a1b2c3d4e5f")?;
/// println!("removed {removed} segment(s)");
/// # Ok::<(), shmesh::run::CleanupError>(())
/// ```
///
/// # Errors
///
/// [`CleanupError::Job`] for an invalid id, [`CleanupError::List`] when `/dev/shm` cannot be
/// read, [`CleanupError::Left`] naming each segment still there (in use, or its removal
/// failed) after every other one was removed.
pub fn remove_job_segments(job: &str) -> Result<usize, CleanupError> {
    check_job_id(job)?;
    let prefix = format!("{NAME_PREFIX}{}", job_segment_prefix(job));
    let list_err = |source| CleanupError::List {
        job: job.to_owned(),
        dir: SHM_DIR,
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR).map_err(list_err)? {
        let file_name = entry.map_err(list_err)?.file_name();
        // A name that is not UTF-8 cannot start with the (ASCII) prefix and be shmesh's.
        if let Some(name) = file_name.to_str().filter(|n| n.starts_with(&prefix)) {
            names.push(name[NAME_PREFIX.len()..].to_owned());
        }
    }
    names.sort();
    let (mut removed, mut left) = (0, Vec::new());
    for name in names {
        match Segment::remove_unused(&name) {
            Ok(true) => removed += 1,
            Ok(false) => left.push(Leftover {
                name,
                reason: LeftoverReason::InUse,
            }),
            // Gone meanwhile (its creator removed it).
            Err(SegmentError::NotFound { .. }) => {}
            Err(e) => left.push(Leftover {
                name,
                reason: LeftoverReason::Failed(e),
            }),
        }
    }
    if left.is_empty() {
        Ok(removed)
    } else {
        Err(CleanupError::Left {
            job: job.to_owned(),
            removed,
            left,
        })
    }
}

/// Runs `shmesh __run-cleanup --job J` (on a host of the job): removes the job's segments and
/// says how many.
///
/// # Errors
///
/// As [`remove_job_segments`], and when `out` cannot be written.
pub fn run_cleanup(
    args: &RunCleanupArgs,
    out: &mut impl io::Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let removed = remove_job_segments(&args.job)?;
    writeln!(out, "removed {removed} segment(s) of job {}", args.job)?;
    Ok(())
}

/// How one rank ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankEnd {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Killed {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// It ended, but its status was taken by another part of this process (which reaped it).
    Lost,
}

impl RankEnd {
    /// Whether the rank exited with status 0.
    pub fn success(self) -> bool {
        self == RankEnd::Exited(0)
    }

    /// The exit status this end gives the launcher: the status, or 128 + the signal; 1 when
    /// the status was lost.
    pub fn exit_code(self) -> u8 {
        match self {
            RankEnd::Exited(code) => u8::try_from(code & 0xff).unwrap_or(1),
            RankEnd::Killed { signal, .. } => u8::try_from(128 + signal).unwrap_or(255),
            RankEnd::Lost => 1,
        }
    }

    fn from_status(status: std::process::ExitStatus) -> RankEnd {
        match (status.code(), status.signal()) {
            (Some(code), _) => RankEnd::Exited(code),
            (None, Some(signal)) => RankEnd::Killed {
                signal,
                core_dumped: status.core_dumped(),
            },
            (None, None) => RankEnd::Lost,
        }
    }
}

/// `SIGKILL` for 9, `None` for a signal without a name (real-time ones).
fn signal_name(signal: i32) -> Option<&'static str> {
    Signal::try_from(signal).ok().map(Signal::as_str)
}

impl fmt::Display for RankEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RankEnd::Exited(code) => {
                write!(f, "exited with status {code}")?;
                match code {
                    126 => f.write_str(" (the program could not be executed)"),
                    127 => f.write_str(" (the program was not found)"),
                    _ => Ok(()),
                }
            }
            RankEnd::Killed {
                signal,
                core_dumped,
            } => {
                write!(f, "was killed by signal {signal}")?;
                if let Some(name) = signal_name(signal) {
                    write!(f, " ({name})")?;
                }
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            RankEnd::Lost => f.write_str(
                "ended, but its exit status was lost (reaped by another part of the launcher)",
            ),
        }
    }
}

/// Why the launcher stopped the job before every rank ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// This rank failed and `--abort-on-failure` was given.
    RankFailed {
        /// The rank.
        rank: usize,
    },
    /// The launcher got this signal (SIGINT, SIGTERM or SIGHUP).
    Signal(i32),
    /// `--timeout` expired.
    Timeout(Duration),
}

/// How a job ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The job id.
    pub job: String,
    /// How each rank ended, by rank.
    pub ranks: Vec<RankEnd>,
    /// Why the launcher stopped the job, if it did.
    pub stop: Option<Stop>,
    /// The first rank seen failing, if any.
    pub first_failure: Option<usize>,
    /// How many of the job's segments were removed on this machine afterwards.
    pub segments_removed: usize,
    /// What could not be cleaned up (each was also printed as a warning): segments still in
    /// use, a host whose clean-up failed.
    pub cleanup_errors: Vec<CleanupError>,
}

impl RunOutcome {
    /// Whether every rank exited with status 0 and the launcher did not stop the job.
    pub fn success(&self) -> bool {
        self.exit_code() == 0
    }

    /// The launcher's exit status: 128 + the signal when a signal stopped the job,
    /// [`EXIT_TIMEOUT`] after `--timeout`, else that of the first failed rank
    /// ([`RankEnd::exit_code`]), else 0.
    pub fn exit_code(&self) -> u8 {
        match self.stop {
            Some(Stop::Signal(signal)) => u8::try_from(128 + signal).unwrap_or(255),
            Some(Stop::Timeout(_)) => EXIT_TIMEOUT,
            Some(Stop::RankFailed { .. }) | None => self
                .first_failure
                .map_or(0, |rank| self.ranks[rank].exit_code()),
        }
    }
}

/// `shmesh run` could not run the job.
#[derive(Debug, Error)]
pub enum RunError {
    /// `-n 0`.
    #[error("-n 0: a job needs at least 1 rank")]
    NoRanks,
    /// Neither `-n` nor `--hosts`.
    #[error("how many ranks? give -n N (or --hosts FILE, whose slots add up to N)")]
    NoRankCount,
    /// No program was given.
    #[error("no program to run: give it after the options, e.g. `shmesh run -n 2 -- ./my-rank`")]
    NoProgram,
    /// More ranks than the hosts file has slots.
    #[error(
        "-n {asked}, but the hosts file {file} has {slots} slot(s) in all: add hosts or slots, \
         or ask for at most {slots} ranks"
    )]
    NotEnoughSlots {
        /// Ranks asked for.
        asked: usize,
        /// Slots in the file.
        slots: usize,
        /// The hosts file.
        file: String,
    },
    /// The hosts file could not be read or parsed.
    #[error(transparent)]
    Hosts(#[from] HostsError),
    /// `--job` is not a valid job id.
    #[error(transparent)]
    Job(#[from] InvalidJob),
    /// A rank could not be started; the ranks started before it were stopped.
    #[error("cannot start rank {rank}: `{program}`: {source}; {fix}")]
    Start {
        /// The rank.
        rank: usize,
        /// The program that could not be started (the `exec` prefix's, on a host with one).
        program: String,
        /// Why.
        source: io::Error,
        /// What to check.
        fix: &'static str,
    },
    /// The bridge of a host could not be set up or started (ranks on several hosts).
    #[error("the bridge of host {host}: {problem}")]
    Bridge {
        /// The host.
        host: String,
        /// What went wrong, and what to do.
        problem: String,
    },
    /// The launcher could not set itself up (signal handlers, threads).
    #[error("cannot {what}: {source}")]
    Setup {
        /// What it was doing.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
}

/// Where one rank runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    /// Index into [`Plan::hosts`].
    host: usize,
    /// The rank among those of its host.
    local_rank: usize,
}

/// Where every rank runs.
#[derive(Debug)]
struct Plan {
    /// The hosts that have ranks, in rank order, each with its number of ranks.
    hosts: Vec<(Host, usize)>,
    /// By rank.
    ranks: Vec<Place>,
}

impl Plan {
    /// Places `np` ranks (the sum of the slots when `None`) on `hosts` (one local host of `np`
    /// slots when `None`), filling each host's slots in order.
    fn new(np: Option<usize>, hosts: Option<(Vec<Host>, &Path)>) -> Result<Plan, RunError> {
        let (hosts, file) = match hosts {
            Some((hosts, file)) => (hosts, Some(file)),
            None => {
                let n = np.ok_or(RunError::NoRankCount)?;
                let local = Host {
                    name: LOCAL_HOST.to_owned(),
                    slots: n,
                    exec: Vec::new(),
                    bridge: None,
                };
                (vec![local], None)
            }
        };
        let slots: usize = hosts.iter().map(|h| h.slots).sum();
        let n = np.unwrap_or(slots);
        if n == 0 {
            return Err(RunError::NoRanks);
        }
        if n > slots {
            return Err(RunError::NotEnoughSlots {
                asked: n,
                slots,
                file: file.map(|f| f.display().to_string()).unwrap_or_default(),
            });
        }
        let mut plan = Plan {
            hosts: Vec::new(),
            ranks: Vec::with_capacity(n),
        };
        for host in hosts {
            let take = host.slots.min(n - plan.ranks.len());
            if take == 0 {
                break;
            }
            let index = plan.hosts.len();
            plan.ranks.extend((0..take).map(|local_rank| Place {
                host: index,
                local_rank,
            }));
            plan.hosts.push((host, take));
        }
        Ok(plan)
    }

    /// The value of [`ENV_HOSTS`].
    fn hosts_env(&self) -> String {
        let entries: Vec<String> = self
            .hosts
            .iter()
            .map(|(h, n)| format!("{}:{n}", h.name))
            .collect();
        entries.join(",")
    }

    /// The environment of `rank`.
    fn env(&self, rank: usize, job: &str) -> Vec<(&'static str, String)> {
        let place = self.ranks[rank];
        let (host, local_size) = &self.hosts[place.host];
        vec![
            (ENV_JOB, job.to_owned()),
            (ENV_RANK, rank.to_string()),
            (ENV_SIZE, self.ranks.len().to_string()),
            (ENV_LOCAL_RANK, place.local_rank.to_string()),
            (ENV_LOCAL_SIZE, local_size.to_string()),
            (ENV_HOST, host.name.clone()),
            (ENV_HOSTS, self.hosts_env()),
        ]
    }

    /// The command that starts `rank`, and the name of the program it executes.
    fn command(
        &self,
        rank: usize,
        job: &str,
        program: &OsString,
        args: &[OsString],
    ) -> (Command, String) {
        let (host, _) = &self.hosts[self.ranks[rank].host];
        let env = self.env(rank, job);
        let mut cmd;
        let started;
        match host.exec.split_first() {
            None => {
                cmd = Command::new(program);
                started = program.to_string_lossy().into_owned();
            }
            Some((first, rest)) => {
                cmd = Command::new(first);
                cmd.args(rest).arg("env");
                cmd.args(env.iter().map(|(k, v)| format!("{k}={v}")));
                cmd.arg(program);
                started = first.clone();
            }
        }
        cmd.args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        (cmd, started)
    }
}

/// What the launcher waits for.
#[derive(Debug)]
enum Event {
    /// A signal: SIGCHLD (a rank may have ended), or one that stops the job.
    Signal(i32),
    /// A rank's stdout or stderr reached its end.
    StreamClosed,
}

/// The thread that turns signals into [`Event`]s.
struct SignalWatch {
    handle: signal_hook::iterator::Handle,
    thread: Option<JoinHandle<()>>,
}

impl SignalWatch {
    fn start(tx: Sender<Event>) -> Result<SignalWatch, RunError> {
        let setup = |what| move |source| RunError::Setup { what, source };
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGCHLD])
            .map_err(setup("handle SIGINT, SIGTERM, SIGHUP and SIGCHLD"))?;
        let handle = signals.handle();
        let thread = thread::Builder::new()
            .name("shmesh-run-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if tx.send(Event::Signal(signal)).is_err() {
                        break;
                    }
                }
            })
            .map_err(setup("start the signal thread"))?;
        Ok(SignalWatch {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why the launcher is stopping the job.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Stop(Stop),
    /// This rank could not be started.
    StartFailed(usize),
}

/// One started rank.
struct Rank {
    child: Child,
    pid: i32,
    /// Set once the rank ended (seen without reaping it).
    end: Option<RankEnd>,
    /// Whether it was reaped (then its group must not be signalled any more).
    reaped: bool,
    /// The last signal the launcher sent the rank's group while the rank was running.
    sent: Option<Signal>,
}

/// The running job.
struct Job<'a> {
    args: &'a RunArgs,
    id: String,
    ranks: Vec<Rank>,
    events: Receiver<Event>,
    tx: Sender<Event>,
    cause: Option<Cause>,
    timeout_at: Option<Instant>,
    kill_at: Option<Instant>,
    killed: bool,
    first_failure: Option<usize>,
    open_streams: usize,
    forwarders: Vec<JoinHandle<()>>,
}

impl Job<'_> {
    /// Starts every rank; stops at the first that cannot start.
    fn start(
        &mut self,
        plan: &Plan,
        program: &OsString,
        args: &[OsString],
    ) -> Result<(), (usize, RunError)> {
        for rank in 0..plan.ranks.len() {
            let (mut cmd, started) = plan.command(rank, &self.id, program, args);
            let mut child = cmd.spawn().map_err(|source| {
                let fix = match source.kind() {
                    io::ErrorKind::NotFound => "check the program's name and PATH",
                    io::ErrorKind::PermissionDenied => "check that the program is executable",
                    _ => "check the program",
                };
                let program = started.clone();
                (
                    rank,
                    RunError::Start {
                        rank,
                        program,
                        source,
                        fix,
                    },
                )
            })?;
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
            self.ranks.push(Rank {
                child,
                pid,
                end: None,
                reaped: false,
                sent: None,
            });
            let prefix = (!self.args.no_prefix).then(|| format!("[{rank}] "));
            for (stream, sink) in [
                (
                    stdout.map(|s| Box::new(s) as Box<dyn Read + Send>),
                    Sink::Stdout,
                ),
                (
                    stderr.map(|s| Box::new(s) as Box<dyn Read + Send>),
                    Sink::Stderr,
                ),
            ] {
                let Some(stream) = stream else { continue };
                let thread = output::forward(
                    stream,
                    sink,
                    prefix.clone(),
                    self.tx.clone(),
                    Event::StreamClosed,
                )
                .map_err(|source| {
                    (
                        rank,
                        RunError::Setup {
                            what: "start a thread to forward a rank's output",
                            source,
                        },
                    )
                })?;
                self.open_streams += 1;
                self.forwarders.push(thread);
            }
        }
        Ok(())
    }

    fn running(&self) -> usize {
        self.ranks.iter().filter(|r| r.end.is_none()).count()
    }

    /// Sends `signal` to the group of every rank not reaped yet: the running ranks and what
    /// any rank started.
    fn signal_groups(&mut self, signal: Signal) {
        for rank in &mut self.ranks {
            if rank.reaped {
                continue;
            }
            // The rank is unreaped, so no other process can have its pid as group id. ESRCH
            // (group empty) and EPERM (a member of another user) are nothing to act on.
            let _ = kill(Pid::from_raw(-rank.pid), signal);
            if rank.end.is_none() {
                rank.sent = Some(signal);
            }
        }
    }

    /// Starts stopping the job: SIGTERM now, SIGKILL after the grace period.
    fn stop(&mut self, cause: Cause) {
        if self.cause.is_some() {
            return;
        }
        self.cause = Some(cause);
        let running = self.running();
        let grace = self.args.grace;
        let why = match cause {
            Cause::Stop(Stop::RankFailed { rank }) => {
                format!("rank {rank} failed (--abort-on-failure)")
            }
            Cause::Stop(Stop::Signal(signal)) => {
                format!("got {}", signal_name(signal).unwrap_or("a signal"))
            }
            Cause::Stop(Stop::Timeout(after)) => {
                format!("job {} timed out after {after:?} (--timeout)", self.id)
            }
            Cause::StartFailed(rank) => format!("rank {rank} could not start"),
        };
        // Nothing to say when the first rank could not start: the error says it.
        if running > 0 {
            eprintln!(
                "shmesh run: {why}: stopping the {running} running rank(s): SIGTERM now, \
                 SIGKILL after {grace:?}"
            );
        }
        self.signal_groups(Signal::SIGTERM);
        self.kill_at = Some(Instant::now() + grace);
    }

    /// Sends SIGKILL to every group now.
    fn kill_now(&mut self, why: &str) {
        let running = self.running();
        if running > 0 {
            eprintln!("shmesh run: {why}: SIGKILL to the {running} rank(s) still running");
        }
        self.signal_groups(Signal::SIGKILL);
        self.killed = true;
        self.kill_at = None;
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::StreamClosed => self.open_streams -= 1,
            Event::Signal(SIGCHLD) => {}
            Event::Signal(signal) => {
                if self.cause.is_none() {
                    self.stop(Cause::Stop(Stop::Signal(signal)));
                } else if !self.killed {
                    let name = signal_name(signal).unwrap_or("a signal");
                    self.kill_now(&format!("got {name} while stopping"));
                }
            }
        }
    }

    /// Looks at every running rank for an end, without reaping; reports each failure and
    /// stops the job on the first with `--abort-on-failure`.
    fn collect_ends(&mut self) {
        let mut ended = Vec::new();
        for (r, rank) in self.ranks.iter_mut().enumerate() {
            if rank.end.is_none() {
                if let Some(end) = peek_end(rank) {
                    rank.end = Some(end);
                    ended.push(r);
                }
            }
        }
        for r in ended {
            let rank = &self.ranks[r];
            let Some(end) = rank.end.filter(|e| !e.success()) else {
                continue;
            };
            let note = match (rank.sent, end) {
                (Some(sent), RankEnd::Killed { signal, .. }) if sent as i32 == signal => {
                    ", sent by shmesh run".to_owned()
                }
                (Some(sent), _) => format!(", after shmesh run sent it {}", sent.as_str()),
                (None, _) => String::new(),
            };
            eprintln!("shmesh run: rank {r} {end}{note}");
            self.first_failure.get_or_insert(r);
            if self.args.abort_on_failure {
                self.stop(Cause::Stop(Stop::RankFailed { rank: r }));
            }
        }
    }

    /// Runs the job until every rank ended.
    fn supervise(&mut self) {
        loop {
            self.collect_ends();
            if self.running() == 0 {
                return;
            }
            let now = Instant::now();
            if self.kill_at.is_some_and(|t| now >= t) {
                let why = format!("the grace period of {:?} is over", self.args.grace);
                self.kill_now(&why);
                continue;
            }
            if self.cause.is_none() && self.timeout_at.is_some_and(|t| now >= t) {
                let after = self.args.timeout.unwrap_or_default();
                self.stop(Cause::Stop(Stop::Timeout(after)));
                continue;
            }
            let timeout_at = self.timeout_at.filter(|_| self.cause.is_none());
            let wake = self.kill_at.into_iter().chain(timeout_at).min();
            let event = match wake {
                Some(t) => self
                    .events
                    .recv_timeout(t.saturating_duration_since(now))
                    .ok(),
                // Never disconnected: `self.tx` is a sender.
                None => self.events.recv().ok(),
            };
            if let Some(event) = event {
                self.on_event(event);
            }
        }
    }

    /// Every rank ended: waits for their output to close. Streams still open are held by
    /// processes the ranks started; after the grace period those get SIGTERM, after another
    /// SIGKILL, and after a last wait the launcher stops waiting for them.
    fn drain(&mut self) {
        let grace = self.args.grace;
        let mut step = 0;
        let mut until = Instant::now() + grace;
        while self.open_streams > 0 {
            let now = Instant::now();
            let act = match self
                .events
                .recv_timeout(until.saturating_duration_since(now))
            {
                Ok(Event::StreamClosed) => {
                    self.open_streams -= 1;
                    false
                }
                Ok(Event::Signal(SIGCHLD)) => false,
                // A signal now: do the next step at once.
                Ok(Event::Signal(_)) => true,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => true,
            };
            if !act {
                continue;
            }
            match step {
                0 => {
                    eprintln!(
                        "shmesh run: every rank ended, but processes they started still hold \
                         their output open: SIGTERM to them"
                    );
                    self.signal_groups(Signal::SIGTERM);
                    until = Instant::now() + grace;
                }
                1 => {
                    eprintln!("shmesh run: their output is still open: SIGKILL to them");
                    self.signal_groups(Signal::SIGKILL);
                    until = Instant::now() + grace.max(Duration::from_secs(1));
                }
                _ => {
                    eprintln!(
                        "shmesh run: the ranks' output is still open (a process left their \
                         process group?): not waiting for it any more"
                    );
                    return;
                }
            }
            step += 1;
        }
        for thread in self.forwarders.drain(..) {
            let _ = thread.join();
        }
    }

    /// Reaps every rank.
    fn reap(&mut self) {
        for rank in &mut self.ranks {
            if !rank.reaped {
                let status = rank.child.wait();
                rank.reaped = true;
                if rank.end == Some(RankEnd::Lost) {
                    if let Ok(status) = status {
                        rank.end = Some(RankEnd::from_status(status));
                    }
                }
            }
        }
    }
}

/// The end of `rank` if it ended, seen without reaping it (`waitid` with `WNOWAIT`), so its
/// pid and group id stay reserved until [`Job::reap`].
fn peek_end(rank: &mut Rank) -> Option<RankEnd> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        return match waitid(Id::Pid(Pid::from_raw(rank.pid)), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(RankEnd::Exited(code)),
            Ok(WaitStatus::Signaled(_, signal, core_dumped)) => Some(RankEnd::Killed {
                signal: signal as i32,
                core_dumped,
            }),
            Ok(_) => None,
            Err(Errno::EINTR) => continue,
            // EINVAL: a signal nix has no name for (a real-time one); ECHILD: reaped already.
            // Reap it the ordinary way: its group is not signalled any more.
            Err(_) => match rank.child.try_wait() {
                Ok(Some(status)) => {
                    rank.reaped = true;
                    Some(RankEnd::from_status(status))
                }
                Ok(None) => None,
                Err(_) => {
                    rank.reaped = true;
                    Some(RankEnd::Lost)
                }
            },
        };
    }
}

/// Removes the job's segments on every host that has an `exec` prefix, by running
/// `PREFIX... <this binary> __run-cleanup --job J` there, all hosts at once, each for at most
/// [`REMOTE_CLEANUP_LIMIT`].
fn cleanup_remote(plan: &Plan, job: &str) -> Vec<CleanupError> {
    let remote: Vec<&Host> = plan
        .hosts
        .iter()
        .map(|(h, _)| h)
        .filter(|h| !h.exec.is_empty())
        .collect();
    if remote.is_empty() {
        return Vec::new();
    }
    let fail = |host: &Host, problem: String| CleanupError::Remote {
        job: job.to_owned(),
        host: host.name.clone(),
        problem,
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return remote
                .iter()
                .map(|h| fail(h, format!("cannot find this shmesh binary: {e}")))
                .collect()
        }
    };
    let (tx, rx) = mpsc::channel();
    let mut errors = Vec::new();
    let mut waiting = Vec::new();
    for (i, host) in remote.iter().enumerate() {
        let mut cmd = Command::new(&host.exec[0]);
        cmd.args(&host.exec[1..])
            .arg(&exe)
            .args(["__run-cleanup", "--job", job])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let shown = format!("{cmd:?}");
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id();
                let tx = tx.clone();
                thread::spawn(move || {
                    let _ = tx.send((i, child.wait_with_output()));
                });
                waiting.push((i, pid, shown));
            }
            Err(e) => errors.push(fail(host, format!("cannot run {shown}: {e}"))),
        }
    }
    drop(tx);
    let deadline = Instant::now() + REMOTE_CLEANUP_LIMIT;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((i, result)) = rx.recv_timeout(left) else {
            break;
        };
        let at = waiting.iter().position(|(w, _, _)| *w == i).unwrap_or(0);
        let (_, _, shown) = waiting.swap_remove(at);
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => errors.push(fail(
                remote[i],
                format!(
                    "{shown} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )),
            Err(e) => errors.push(fail(remote[i], format!("{shown}: {e}"))),
        }
    }
    for (i, pid, shown) in waiting {
        // The waiting thread reaps it.
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        errors.push(fail(
            remote[i],
            format!("{shown} did not end within {REMOTE_CLEANUP_LIMIT:?}; killed"),
        ));
    }
    errors
}

/// Runs `shmesh run`: starts the ranks, forwards their output, waits for all of them (or stops
/// them, see the [module docs](self)), reaps them and removes the job's segments. Failures
/// and clean-up problems are printed on stderr as they happen.
///
/// Installs handlers for SIGINT, SIGTERM, SIGHUP and SIGCHLD for its duration (see the module
/// docs): call it from a program that exits when it returns.
///
/// # Errors
///
/// [`RunError::NoProgram`], [`RunError::NoRanks`], [`RunError::NoRankCount`],
/// [`RunError::NotEnoughSlots`], [`RunError::Hosts`] and [`RunError::Job`] before anything
/// starts; [`RunError::Start`] when a rank cannot be started (the ranks started before it are
/// stopped, reaped, and the job's segments removed first); [`RunError::Setup`].
pub fn run(args: &RunArgs) -> Result<RunOutcome, RunError> {
    let (program, program_args) = args.command.split_first().ok_or(RunError::NoProgram)?;
    let hosts = match &args.hosts {
        Some(path) => Some((read_hosts(path)?, path.as_path())),
        None => None,
    };
    let plan = Plan::new(args.np, hosts)?;
    let id = match &args.job {
        Some(job) => {
            check_job_id(job)?;
            job.clone()
        }
        None => fresh_job_id(),
    };
    // Ranks on several hosts talk through one bridge per host, up before any rank.
    let mut bridges = bridges::start(&plan, &id, args)?;
    let (tx, events) = mpsc::channel();
    // Before any rank starts, so that no SIGCHLD is missed.
    let signals = SignalWatch::start(tx.clone())?;
    let mut job = Job {
        args,
        id,
        ranks: Vec::with_capacity(plan.ranks.len()),
        events,
        tx,
        cause: None,
        timeout_at: args.timeout.map(|t| Instant::now() + t),
        kill_at: None,
        killed: false,
        first_failure: None,
        open_streams: 0,
        forwarders: Vec::new(),
    };
    let started = job.start(&plan, program, program_args);
    if let Err((rank, _)) = &started {
        job.stop(Cause::StartFailed(*rank));
    }
    job.supervise();
    job.drain();
    job.reap();
    drop(signals);
    if let Some(bridges) = &mut bridges {
        bridges.stop(args.grace);
        if job.first_failure.is_some() {
            eprintln!(
                "shmesh run: the bridges' logs are in {}",
                bridges.log_dir().display()
            );
        }
    }

    let mut cleanup_errors = Vec::new();
    let segments_removed = match remove_job_segments(&job.id) {
        Ok(n) => n,
        Err(e) => {
            cleanup_errors.push(e);
            0
        }
    };
    cleanup_errors.extend(cleanup_remote(&plan, &job.id));
    for e in &cleanup_errors {
        eprintln!("shmesh run: warning: {e}");
    }
    started.map_err(|(_, e)| e)?;
    Ok(RunOutcome {
        stop: match job.cause {
            Some(Cause::Stop(stop)) => Some(stop),
            Some(Cause::StartFailed(_)) | None => None,
        },
        ranks: job
            .ranks
            .iter()
            .map(|r| r.end.unwrap_or(RankEnd::Lost))
            .collect(),
        first_failure: job.first_failure,
        job: job.id,
        segments_removed,
        cleanup_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, slots: usize) -> Host {
        Host {
            name: name.into(),
            slots,
            exec: vec!["ssh".into(), name.into()],
            bridge: None,
        }
    }

    #[test]
    fn ranks_fill_hosts_in_order() {
        let hosts = vec![host("a", 2), host("b", 3), host("c", 1)];
        let file = Path::new("h");
        let plan = Plan::new(Some(4), Some((hosts.clone(), file))).unwrap();
        let places: Vec<(usize, usize)> =
            plan.ranks.iter().map(|p| (p.host, p.local_rank)).collect();
        assert_eq!(places, [(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(
            plan.hosts_env(),
            "a:2,b:2",
            "c has no rank, b two of its three"
        );
        let env = plan.env(3, "J");
        let get = |k| env.iter().find(|(key, _)| *key == k).unwrap().1.clone();
        assert_eq!(
            [
                ENV_JOB,
                ENV_RANK,
                ENV_SIZE,
                ENV_LOCAL_RANK,
                ENV_LOCAL_SIZE,
                ENV_HOST
            ]
            .map(get),
            ["J", "3", "4", "1", "2", "b"]
        );

        let all = Plan::new(None, Some((hosts.clone(), file))).unwrap();
        assert_eq!(all.ranks.len(), 6, "-n defaults to the sum of the slots");
        assert_eq!(all.hosts_env(), "a:2,b:3,c:1");

        match Plan::new(Some(7), Some((hosts, file))) {
            Err(
                e @ RunError::NotEnoughSlots {
                    asked: 7, slots: 6, ..
                },
            ) => {
                assert!(e.to_string().contains("hosts file h has 6 slot(s)"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_hosts_every_rank_is_local() {
        let plan = Plan::new(Some(3), None).unwrap();
        assert_eq!(plan.hosts_env(), "localhost:3");
        let (cmd, started) = plan.command(2, "J", &"prog".into(), &["x".into()]);
        assert_eq!(started, "prog");
        assert_eq!(cmd.get_program(), "prog");
        assert_eq!(cmd.get_args().collect::<Vec<_>>(), ["x"]);
        assert!(matches!(Plan::new(Some(0), None), Err(RunError::NoRanks)));
        assert!(matches!(Plan::new(None, None), Err(RunError::NoRankCount)));
    }

    #[test]
    fn a_rank_behind_an_exec_prefix_gets_its_environment_through_env() {
        let mut b = host("b", 1);
        b.exec = vec!["ip".into(), "netns".into(), "exec".into(), "b".into()];
        let plan = Plan::new(None, Some((vec![b], Path::new("h")))).unwrap();
        let (cmd, started) = plan.command(0, "J", &"prog".into(), &["-x".into()]);
        assert_eq!(started, "ip");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "netns",
                "exec",
                "b",
                "env",
                "SHMESH_JOB=J",
                "SHMESH_RANK=0",
                "SHMESH_SIZE=1",
                "SHMESH_LOCAL_RANK=0",
                "SHMESH_LOCAL_SIZE=1",
                "SHMESH_HOST=b",
                "SHMESH_HOSTS=b:1",
                "prog",
                "-x"
            ]
        );
    }

    #[test]
    fn durations() {
        let ok = |s| parse_duration(s).unwrap();
        assert_eq!(ok("2s"), Duration::from_secs(2));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1.5m"), Duration::from_secs(90));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("0"), Duration::ZERO);
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5d")
            .unwrap_err()
            .contains("unknown unit 'd'"));
        assert!(parse_duration("-5s")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("1e30h").is_err());
    }

    #[test]
    fn job_ids() {
        for ok in ["a", "j1f-00ab", "A_b-9", &"x".repeat(MAX_JOB_LEN)] {
            check_job_id(ok).unwrap();
        }
        for (bad, reason) in [
            ("", "empty"),
            (&"x".repeat(MAX_JOB_LEN + 1) as &str, "too long"),
            ("a.b", "outside"),
            ("a b", "outside"),
            ("ä", "outside"),
        ] {
            let e = check_job_id(bad).unwrap_err();
            assert!(e.to_string().contains(reason), "{bad:?}: {e}");
        }
        let (a, b) = (fresh_job_id(), fresh_job_id());
        assert_ne!(a, b);
        check_job_id(&a).unwrap();
        assert!(a.starts_with(&format!("j{:x}-", std::process::id())), "{a}");
        assert!(matches!(
            remove_job_segments("a.b"),
            Err(CleanupError::Job(_))
        ));
    }

    #[test]
    fn rank_ends_and_exit_codes() {
        let killed = RankEnd::Killed {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(killed.to_string(), "was killed by signal 9 (SIGKILL)");
        assert_eq!(killed.exit_code(), 137);
        assert_eq!(RankEnd::Exited(2).to_string(), "exited with status 2");
        assert_eq!(RankEnd::Exited(2).exit_code(), 2);
        assert!(RankEnd::Exited(127).to_string().contains("not found"));
        let rt = RankEnd::Killed {
            signal: 40,
            core_dumped: true,
        };
        assert_eq!(rt.to_string(), "was killed by signal 40 (core dumped)");
        assert!(RankEnd::Exited(0).success() && !killed.success());

        let outcome = |stop, first_failure, ranks: Vec<RankEnd>| RunOutcome {
            job: "J".into(),
            ranks,
            stop,
            first_failure,
            segments_removed: 0,
            cleanup_errors: Vec::new(),
        };
        let ends = vec![RankEnd::Exited(0), killed, RankEnd::Exited(3)];
        assert_eq!(outcome(None, None, vec![RankEnd::Exited(0)]).exit_code(), 0);
        assert_eq!(outcome(None, Some(2), ends.clone()).exit_code(), 3);
        assert_eq!(outcome(None, Some(1), ends.clone()).exit_code(), 137);
        let signal = Some(Stop::Signal(SIGINT));
        assert_eq!(outcome(signal, Some(1), ends.clone()).exit_code(), 130);
        let timeout = Some(Stop::Timeout(Duration::from_secs(1)));
        assert_eq!(outcome(timeout, Some(1), ends).exit_code(), 124);
    }
}
