//! The `shmesh` command-line tool.
#![forbid(unsafe_code)]

use std::error::Error;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shmesh::bench::bridge::BridgePeerArgs;
use shmesh::bench::{self, BenchCommand, PeerArgs, SnapshotPeerArgs, WorldRankArgs};
use shmesh::run::{self, RunArgs, RunCleanupArgs};
use shmesh::tools::{self, GcArgs, InspectArgs, LsArgs, RmArgs, StatArgs};

/// shmesh: zero-copy IPC over lock-free shared-memory rings.
#[derive(Debug, Parser)]
#[command(name = "shmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure IPC between two processes: latency, throughput, region snapshots, World
    /// collectives against Open MPI, and the machine's references.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// List every shmesh segment on this host: kind, message type, fill, endpoints, counters.
    Ls(LsArgs),
    /// Decode a segment field by field and call out what is wrong with it.
    Inspect(InspectArgs),
    /// Live rates of a segment (messages/s, bytes/s, drops), refreshed every interval.
    Stat(StatArgs),
    /// Remove segments that no live process uses (never one with a live endpoint).
    Rm(RmArgs),
    /// Remove every segment of yours that no live process uses (or list them: --dry-run).
    Gc(GcArgs),
    /// Start N ranks of a message-passing job (like mpirun), forward their output prefixed
    /// with the rank, and exit with the first failed rank's status.
    Run(RunArgs),
    /// Remove a job's segments on a host of `shmesh run` (started by it; not for direct use).
    #[command(name = "__run-cleanup", hide = true)]
    RunCleanup(RunCleanupArgs),
    /// The peer process of `shmesh bench` (started by it; not for direct use).
    #[command(name = "__bench-peer", hide = true)]
    BenchPeer(PeerArgs),
    /// The writer process of `shmesh bench snapshot` (started by it; not for direct use).
    #[command(name = "__bench-snapshot-peer", hide = true)]
    BenchSnapshotPeer(SnapshotPeerArgs),
    /// A process of `shmesh bench bridge` in a test host (started by it; not for direct use).
    #[command(name = "__bench-bridge-peer", hide = true)]
    BenchBridgePeer(BridgePeerArgs),
    /// A rank (or the probe) of `shmesh bench allreduce|world-pingpong` (started by it; not
    /// for direct use).
    #[command(name = "__world-bench-rank", hide = true)]
    WorldBenchRank(WorldRankArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not locked for the whole run: `shmesh run` forwards its ranks' lines from other threads.
    let out = &mut std::io::stdout();
    let mut code = ExitCode::SUCCESS;
    let result: Result<(), Box<dyn Error>> = match cli.command {
        Command::Bench(command) => bench::run(command).map_err(Into::into),
        Command::BenchPeer(args) => bench::run_peer(&args).map_err(Into::into),
        Command::BenchSnapshotPeer(args) => bench::run_snapshot_peer(&args).map_err(Into::into),
        Command::BenchBridgePeer(args) => bench::bridge::run_peer(&args).map_err(Into::into),
        Command::WorldBenchRank(args) => bench::world::run_rank(&args).map_err(Into::into),
        Command::Ls(args) => tools::ls(&args, out).map_err(Into::into),
        Command::Inspect(args) => tools::inspect(&args, out).map_err(Into::into),
        Command::Stat(args) => tools::stat(&args, out).map_err(Into::into),
        Command::Rm(args) => tools::rm(&args, out).map_err(Into::into),
        Command::Gc(args) => tools::gc(&args, out).map_err(Into::into),
        Command::Run(args) => run::run(&args)
            .map(|outcome| code = ExitCode::from(outcome.exit_code()))
            .map_err(Into::into),
        Command::RunCleanup(args) => run::run_cleanup(&args, out),
    };
    match result {
        Ok(()) => code,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
