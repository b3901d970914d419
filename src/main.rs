//! The `shmesh` command-line tool.
#![forbid(unsafe_code)]

use std::error::Error;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shmesh::bench::{self, BenchCommand, PeerArgs};

/// shmesh: zero-copy IPC over lock-free shared-memory rings.
#[derive(Debug, Parser)]
#[command(name = "shmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure IPC between two processes: latency, throughput, and the machine's references.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The peer process of `shmesh bench` (started by it; not for direct use).
    #[command(name = "__bench-peer", hide = true)]
    BenchPeer(PeerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(command) => bench::run(command),
        Command::BenchPeer(args) => bench::run_peer(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
