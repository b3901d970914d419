//! `shmesh-bridge`: the daemon that mirrors shmesh rings and regions to other hosts.
//!
//! ```text
//! shmesh-bridge --config bridge.toml          # run (stops cleanly on SIGTERM or Ctrl-C)
//! shmesh-bridge gen-certs --out certs a b     # a CA and a certificate per host name
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use shmesh_bridge::config::Config;
use shmesh_bridge::{certs, Bridge};

/// Mirrors shmesh rings and regions to other hosts over authenticated, lossless links.
#[derive(Debug, Parser)]
#[command(
    name = "shmesh-bridge",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The bridge's configuration (see bridge.example.toml).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How the bridge waits when there is nothing to do: `backoff` spins 50 µs, then sleeps in
    /// poll(2) on its sockets (woken at once by the network; local rings are looked at again
    /// after 10 µs, doubling up to 1 ms while idle): little CPU when idle. `spin` never sleeps:
    /// one core busy, for the lowest latency on a machine with cores to spare.
    #[arg(long, value_enum, default_value_t = Idle::Backoff)]
    idle: Idle,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Idle {
    Backoff,
    Spin,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Makes a private CA (once; reused when DIR has one) and a certificate and key per host
    /// name, usable for both ends of a connection.
    GenCerts {
        /// Where to write ca.pem, ca.key, NAME.pem and NAME.key.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Host names (DNS-style), one certificate each.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

/// How long the `backoff` idle strategy spins after the last work before it sleeps: long
/// enough to catch the next message of a request/reply exchange without a wake-up.
const SPIN_AFTER_WORK: Duration = Duration::from_micros(50);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (&cli.command, &cli.config) {
        (Some(Command::GenCerts { out, names }), _) => gen_certs(out, names),
        (None, Some(config)) => run(config, cli.idle),
        (None, None) => Err("give --config FILE to run a bridge, or a subcommand (--help)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmesh-bridge: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gen_certs(out: &std::path::Path, names: &[String]) -> Result<(), String> {
    let made = certs::generate(out, names).map_err(|e| e.to_string())?;
    println!(
        "CA: {} ({})",
        made.ca_cert.display(),
        if made.ca_reused { "reused" } else { "new" }
    );
    for host in &made.hosts {
        println!(
            "{}: cert {}, key {}",
            host.name,
            host.cert.display(),
            host.key.display()
        );
    }
    Ok(())
}

/// Wall-clock time for log lines: seconds since the epoch with milliseconds.
fn stamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}

fn run(path: &std::path::Path, idle: Idle) -> Result<(), String> {
    let config = Config::from_file(path).map_err(|e| e.to_string())?;
    let mut bridge = Bridge::new(&config).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    let name = config.name.clone();
    eprintln!(
        "{} shmesh-bridge[{name}]: started ({} peers, {} exports, {} imports, TLS {})",
        stamp(),
        config.peers.len(),
        config.exports.len(),
        config.imports.len(),
        if config.tls.is_some() { "on" } else { "off" }
    );
    let mut idle_since: Option<Instant> = None;
    let mut nap = Duration::from_micros(10);
    while !stop.load(Ordering::Relaxed) {
        let work = bridge.poll();
        for event in bridge.take_events() {
            eprintln!("{} shmesh-bridge[{name}]: {event}", stamp());
        }
        if work > 0 {
            idle_since = None;
            nap = Duration::from_micros(10);
            continue;
        }
        match idle {
            Idle::Spin => std::hint::spin_loop(),
            Idle::Backoff => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < SPIN_AFTER_WORK {
                    std::hint::spin_loop();
                } else {
                    // EINTR (SIGTERM) ends the wait early: the loop then sees `stop`.
                    if bridge.wait(nap).is_err() {
                        thread::yield_now();
                    }
                    nap = (nap * 2).min(Duration::from_millis(1));
                }
            }
        }
    }
    let stats = bridge.stats();
    eprintln!(
        "{} shmesh-bridge[{name}]: stopping: {} records sent, {} delivered, {} region versions \
         delivered, {} duplicates and {} damaged frames dropped, {} resends, {} connections",
        stamp(),
        stats.records_sent,
        stats.records_delivered,
        stats.versions_delivered,
        stats.duplicates,
        stats.damaged,
        stats.resends,
        stats.connections
    );
    Ok(())
}
