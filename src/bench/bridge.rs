//! `shmesh bench bridge`: a ring mirrored between two hosts by two `shmesh-bridge` daemons,
//! against raw TCP between the same two hosts, in the same run.
//!
//! # Set-up
//!
//! The two hosts are network namespaces, each with a private `/dev/shm`
//! (`shmesh_testkit::netns::Net`, which needs root), joined by a veth pair. In each runs a
//! `shmesh-bridge` (found next to the running `shmesh` executable) with `--idle backoff` (the
//! default: spin 50 µs after work, then sleep in poll(2) on the sockets) or `--idle spin`
//! (each bridge busy-polls a core, which on a machine with few cores takes them from the ring
//! ends). Host A exports the ring `bench-ab` (A to B) and imports
//! `bench-ba`; host B the reverse. TLS 1.3 with certificates made by `shmesh-bridge gen-certs`
//! (`--tls on`, the default) or plaintext (`--tls off`).
//!
//! In each host runs one process of this executable (the hidden `shmesh __bench-bridge-peer`,
//! roles `a` and `b`) for the whole run: it holds its ends of the rings (A: producer of
//! `bench-ab`, consumer of the copy of `bench-ba`; B the reverse) and of one TCP connection
//! (a server in B, the client in A, `TCP_NODELAY`). The parent tells both what to do, one line
//! on stdin per measurement, and reads their results on stdout.
//!
//! # Measurements
//!
//! For each size, in this order: throughput A to B over the bridge, then over TCP; ping-pong
//! over the bridge, then over TCP. Each starts with the cache-line probe (`cl_ns`) between the
//! parent and a third process in the machine's own namespaces (the hosts cannot share memory
//! with anything), as every `shmesh bench` line carries it.
//!
//! - *throughput*: A sends `warm-up + N` messages of `size` bytes as fast as the transport
//!   takes them; B receives them and times from the last warm-up message to the last one.
//! - *pingpong*: A sends message `i`, B answers with message `i` (over `bench-ba` or back on
//!   the socket); one sample per round trip in an HdrHistogram.
//!
//! Every message is written whole (the sequence number, then a byte derived from it) and the
//! receiver checks its length and sequence number, warm-up included, so each transport is
//! sanity-checked before it is timed; a mismatch fails the run. TCP messages carry a 4-byte
//! length prefix (little endian), checked too.
//!
//! # Bounded waits
//!
//! Set-up waits at most [`SETUP_TIMEOUT`], a measurement at most [`MEASURE_TIMEOUT`]; any
//! process that exits early fails the run with its stderr. On every path the bridges get
//! SIGTERM (then SIGKILL), the processes in the hosts are killed, and dropping the `Net`
//! removes the namespaces with their `/dev/shm`.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shmesh_ring::{CacheLineProbe, Consumer, Producer, SegmentBuilder, ShmMemory};
use shmesh_testkit::netns::Net;

use super::error::BenchError;
use super::process::{self, Peer, TempDir};
use super::transport::{check, fill, ring_capacity};
use super::{
    measure_cl as median_cl, new_histogram, parse_size, report, warmup, Bench, Transport, Wait,
};

/// Set by the signal thread on SIGINT, SIGTERM or SIGHUP: the run stops at its next wait and
/// unwinds, so the bridges are stopped and the namespaces removed.
static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// The ring host A writes and host B reads.
pub const RING_AB: &str = "bench-ab";
/// The ring host B writes and host A reads.
pub const RING_BA: &str = "bench-ba";
/// The port bridge A listens on (bridge B dials it).
pub const BRIDGE_PORT: u16 = 7700;
/// The port of the raw TCP server in host B.
pub const TCP_PORT: u16 = 7800;
/// Largest message size of this bench (the ring holds four, and each host's `/dev/shm` holds
/// the ring and its copy).
pub const MAX_BRIDGE_SIZE: usize = 16 << 20;
/// Longest the set-up may take: bridges connected, rings mirrored, TCP connected.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one measurement may take.
pub const MEASURE_TIMEOUT: Duration = Duration::from_secs(300);
/// Smallest message: it carries an 8-byte sequence number.
pub const MIN_SIZE: usize = 8;

/// Whether the bridges talk TLS (`--tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Tls {
    /// TLS 1.3 with mutual authentication (certificates from `shmesh-bridge gen-certs`).
    On,
    /// Plaintext TCP between the bridges.
    Off,
}

/// Options of `shmesh bench bridge`.
#[derive(Debug, Clone, clap::Args)]
pub struct BridgeArgs {
    /// Message sizes in bytes, comma-separated (suffixes k/KiB and m/MiB allowed; 8 bytes to
    /// 16 MiB).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        value_parser = parse_size,
        default_value = "64,65536"
    )]
    pub size: Vec<usize>,
    /// TLS between the two bridges: on (TLS 1.3, mutual authentication) or off (plaintext).
    #[arg(long, value_enum, default_value_t = Tls::On)]
    pub tls: Tls,
    /// Measured round trips (pingpong) or messages (throughput) per transport and size, after
    /// a 10% warm-up. Default: as `shmesh bench pingpong`/`throughput` give TCP.
    ///
    /// The bridge delivers records in batches, so a throughput over fewer messages than the
    /// ring holds (1 MiB ring: about 14 000 of 64 bytes) measures one batch, not a rate.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// How the benchmark's own ends of the rings wait. futex, the default, leaves the cores
    /// to the bridges while an end waits; spin and yield compete with them for cores, which on
    /// a machine with few cores costs milliseconds.
    #[arg(long, value_enum, default_value_t = Wait::Futex)]
    pub wait: Wait,
    /// The bridges' idle strategy (`shmesh-bridge --idle`): backoff (spin 50 µs after work,
    /// then sleep in poll(2) on the sockets) or spin (each bridge busy-polls a core).
    #[arg(long, value_enum, default_value_t = BridgeIdle::Backoff)]
    pub idle: BridgeIdle,
    /// One JSON object per line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How the bridges wait when idle (`shmesh-bridge --idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BridgeIdle {
    /// Spin briefly after work, then sleep in poll(2) on the sockets.
    Backoff,
    /// Busy-poll a core each.
    Spin,
}

impl BridgeIdle {
    /// The name `shmesh-bridge --idle` takes, also the JSON value.
    pub fn name(self) -> &'static str {
        match self {
            BridgeIdle::Backoff => "backoff",
            BridgeIdle::Spin => "spin",
        }
    }
}

/// The role of a `shmesh __bench-bridge-peer` process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// In host A: writes `bench-ab`, reads the copy of `bench-ba`, the TCP client.
    A,
    /// In host B: reads the copy of `bench-ab`, writes `bench-ba`, the TCP server.
    B,
    /// In the machine's own namespaces: answers the cache-line probes.
    Probe,
}

/// Arguments of the hidden `shmesh __bench-bridge-peer`, which `shmesh bench bridge` passes.
#[derive(Debug, Clone, clap::Args)]
pub struct BridgePeerArgs {
    /// Which process this is.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Capacity of the ring this process creates (a, b).
    #[arg(long, default_value_t = 1 << 20)]
    pub capacity: u64,
    /// The TCP server's address: B listens on it, A connects to it.
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// How the ring ends wait.
    #[arg(long, value_enum, default_value_t = Wait::Futex)]
    pub wait: Wait,
    /// The CPU to pin to (probe).
    #[arg(long)]
    pub cpu: Option<usize>,
}

/// One measurement's result.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeRow {
    /// `pingpong` or `throughput`.
    pub bench: Bench,
    /// `"bridge"` or `"tcp"`.
    pub transport: &'static str,
    /// Whether the bridges talked TLS (reported on the TCP rows too: same run).
    pub tls: bool,
    /// The bridges' idle strategy.
    pub idle: BridgeIdle,
    /// Message size in bytes.
    pub size: usize,
    /// How the benchmark's ring ends waited.
    pub wait: Wait,
    /// The cache-line round trip measured right before, in ns (median).
    pub cl_ns: u64,
    /// Messages (throughput) or round trips (pingpong) timed, after the warm-up.
    pub samples: u64,
    /// Throughput: messages per second.
    pub msgs_per_s: f64,
    /// Pingpong: p50, p99, p99.9 and max round trip in ns.
    pub latency: [u64; 4],
}

impl BridgeRow {
    /// The row as one line of JSON: the keys of `shmesh bench throughput` or `pingpong`, then
    /// `"tls"` and `"idle"` (the bridges' idle strategy).
    pub fn to_json(&self) -> String {
        let head = format!(
            "{{\"bench\":\"{}\",\"transport\":\"{}\",\"size\":{},\"wait\":\"{}\",\
             \"touch\":\"all\"",
            self.bench, self.transport, self.size, self.wait
        );
        let body = match self.bench {
            Bench::Throughput => format!(
                ",\"cl_ns\":{},\"msgs_per_s\":{},\"bytes_per_s\":{}",
                self.cl_ns,
                rate(self.msgs_per_s),
                rate(self.msgs_per_s * self.size as f64)
            ),
            Bench::PingPong => {
                let [p50, p99, p999, max] = self.latency;
                format!(
                    ",\"samples\":{},\"cl_ns\":{},\"p50_ns\":{p50},\"p99_ns\":{p99},\
                     \"p999_ns\":{p999},\"max_ns\":{max}",
                    self.samples, self.cl_ns
                )
            }
        };
        format!(
            "{head}{body},\"tls\":{},\"idle\":\"{}\"}}",
            self.tls,
            self.idle.name()
        )
    }

    /// The row as a table line, aligned with [`TABLE_HEADER`].
    pub fn to_table(&self) -> String {
        let size = report::format_size(self.size);
        match self.bench {
            Bench::Throughput => format!(
                "{:<11} {:<9} {:>8} {:>14} {:>12} {:>10} {:>10} {:>10} {:>8}",
                "throughput",
                self.transport,
                size,
                format!("{:.0}", self.msgs_per_s),
                format!("{:.1}", self.msgs_per_s * self.size as f64 / 1e6),
                "-",
                "-",
                "-",
                self.cl_ns
            ),
            Bench::PingPong => format!(
                "{:<11} {:<9} {:>8} {:>14} {:>12} {:>10} {:>10} {:>10} {:>8}",
                "pingpong",
                self.transport,
                size,
                "-",
                "-",
                self.latency[0],
                self.latency[1],
                self.latency[2],
                self.cl_ns
            ),
        }
    }
}

/// The header of the table rows ([`BridgeRow::to_table`]).
pub const TABLE_HEADER: &str = "bench       transport     size         msgs/s         MB/s    \
                                p50_ns     p99_ns    p999_ns    cl_ns";

/// A rate as a JSON integer (0 for non-finite values, which JSON cannot spell).
fn rate(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

/// The line comparing a bridge row with the TCP row of the same bench and size.
pub fn ratio_line(bridge: &BridgeRow, tcp: &BridgeRow) -> String {
    let r = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".to_owned()
        }
    };
    match bridge.bench {
        Bench::Throughput => format!(
            "  bridge/tcp at {}: msgs/s {}",
            report::format_size(bridge.size),
            r(bridge.msgs_per_s, tcp.msgs_per_s)
        ),
        Bench::PingPong => format!(
            "  bridge/tcp at {}: p50 {}, p99 {}",
            report::format_size(bridge.size),
            r(bridge.latency[0] as f64, tcp.latency[0] as f64),
            r(bridge.latency[1] as f64, tcp.latency[1] as f64)
        ),
    }
}

/// The `shmesh-bridge` executable next to `exe`.
///
/// # Errors
///
/// [`BenchError::Usage`] saying how to build it when it is not there.
pub fn find_bridge(exe: &Path) -> Result<PathBuf, BenchError> {
    let path = exe.with_file_name("shmesh-bridge");
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::Usage(format!(
            "shmesh bench bridge runs the shmesh-bridge daemon, expected at {} (next to the \
             shmesh executable); build it: cargo build --release -p shmesh-bridge (without \
             --release for a debug shmesh)",
            path.display()
        )))
    }
}

/// The two bridge configurations (A, B). Relative paths (certificates) are resolved against
/// the directory of the configuration file.
pub fn configs(a: SocketAddr, tls: Tls) -> (String, String) {
    let tls_table = |me: &str, peer: &str| match tls {
        Tls::On => format!(
            "[tls]\nenabled = true\ncert = \"certs/{me}.pem\"\nkey = \"certs/{me}.key\"\n\
             ca = \"certs/ca.pem\"\nallow = [\"{peer}\"]\n"
        ),
        Tls::Off => "[tls]\nenabled = false\n".to_owned(),
    };
    let host_a = format!(
        "name = \"host-a\"\nlisten = \"{a}\"\n{}\n[[peers]]\nname = \"host-b\"\n\n\
         [[export]]\nname = \"{RING_AB}\"\n\n[[import]]\npeer = \"host-b\"\nname = \"{RING_BA}\"\n",
        tls_table("host-a", "host-b")
    );
    let host_b = format!(
        "name = \"host-b\"\nreconnect_interval = \"50ms\"\n{}\n[[peers]]\nname = \"host-a\"\n\
         address = \"{a}\"\n\n[[export]]\nname = \"{RING_BA}\"\n\n[[import]]\npeer = \"host-a\"\n\
         name = \"{RING_AB}\"\n",
        tls_table("host-b", "host-a")
    );
    (host_a, host_b)
}

/// A process started in a host, or a bridge: stdout lines as they come, stderr collected,
/// killed and reaped on drop.
#[derive(Debug)]
struct Proc {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Proc {
    fn spawn(label: impl Into<String>, mut cmd: Command) -> Result<Proc, BenchError> {
        let label = label.into();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BenchError::Spawn {
                exe: format!("{label} ({cmd:?})"),
                source,
            })?;
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            })
        });
        let (tx, lines) = std::sync::mpsc::channel();
        if let Some(pipe) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Proc {
            label,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        })
    }

    /// The error describing how this process ended (it has exited, or is killed now).
    fn failure(&mut self) -> BenchError {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status,
            _ => {
                let _ = self.child.kill();
                match self.child.wait() {
                    Ok(status) => status,
                    Err(e) => return BenchError::io(format!("reaping {}", self.label))(e),
                }
            }
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|reader| reader.join().ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        BenchError::PeerFailed {
            status: format!("{} ended ({status})", self.label),
            stderr,
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn tell(&mut self, line: &str) -> Result<(), BenchError> {
        let result = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| stdin.flush()),
            None => Ok(()),
        };
        result.map_err(|_| self.failure())
    }

    /// Stops the process: SIGTERM, up to 2 s to exit, then SIGKILL.
    fn stop(&mut self) {
        self.stdin = None;
        if self.running() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let start = Instant::now();
            while self.running() && start.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Everything a run started, in the order it is stopped: the host processes, then the
/// bridges, then the namespaces (dropped after this, by the caller).
#[derive(Debug)]
struct Procs {
    /// Host A's and host B's peer processes.
    peers: Vec<Proc>,
    /// Bridge A and bridge B.
    bridges: Vec<Proc>,
}

impl Procs {
    /// Fails with the first process that is no longer running.
    fn check_all(&mut self) -> Result<(), BenchError> {
        for p in self.peers.iter_mut().chain(self.bridges.iter_mut()) {
            if !p.running() {
                return Err(p.failure());
            }
        }
        Ok(())
    }

    /// Waits (bounded, checking every process) for the next line of peer `i`.
    fn expect(
        &mut self,
        i: usize,
        what: &'static str,
        timeout: Duration,
    ) -> Result<String, BenchError> {
        let start = Instant::now();
        loop {
            match self.peers[i].lines.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => return Ok(line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(self.peers[i].failure()),
            }
            self.check_all()?;
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Err(BenchError::Usage(
                    "interrupted by a signal: bridges stopped, test hosts removed".into(),
                ));
            }
            if start.elapsed() > timeout {
                return Err(BenchError::Timeout {
                    what,
                    waited: timeout,
                });
            }
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        // The peers first: a bridge stopped under a spinning reader would make it fail.
        for p in &mut self.peers {
            p.stop();
        }
        for p in &mut self.bridges {
            p.stop();
        }
    }
}

/// Runs `shmesh bench bridge`.
///
/// # Errors
///
/// Not root, no `shmesh-bridge` binary, a size out of range, a set-up step or a measurement
/// that failed (with the stderr of the process that failed).
pub fn run(args: &BridgeArgs) -> Result<(), BenchError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(BenchError::Usage(
            "shmesh bench bridge needs root: it makes two network namespaces (hosts) with \
             `ip netns` and `unshare`; run it with sudo"
                .into(),
        ));
    }
    let sizes = super::dedup(&args.size);
    if let Some(&bad) = sizes
        .iter()
        .find(|&&s| !(MIN_SIZE..=MAX_BRIDGE_SIZE).contains(&s))
    {
        return Err(BenchError::Usage(format!(
            "shmesh bench bridge takes sizes from {MIN_SIZE} bytes (each message carries a \
             sequence number) to {} MiB, not {bad}",
            MAX_BRIDGE_SIZE >> 20
        )));
    }
    let exe = std::env::current_exe().map_err(BenchError::io(
        "finding the path of the running shmesh executable",
    ))?;
    let bridge_exe = find_bridge(&exe)?;
    stop_on_signal()?;
    let dir = TempDir::new()?;
    let tls = args.tls == Tls::On;
    if tls {
        let out = Command::new(&bridge_exe)
            .arg("gen-certs")
            .arg("--out")
            .arg(dir.path().join("certs"))
            .args(["host-a", "host-b"])
            .stdin(Stdio::null())
            .output()
            .map_err(BenchError::io(format!(
                "running {} gen-certs",
                bridge_exe.display()
            )))?;
        if !out.status.success() {
            return Err(BenchError::PeerFailed {
                status: format!("shmesh-bridge gen-certs failed ({})", out.status),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    let cpus = process::allowed_cpus()?;
    let note = format!(
        "bridges: shmesh-bridge --idle {} in each host{}, TLS {}; {} CPUs available{}",
        args.idle.name(),
        if args.idle == BridgeIdle::Spin {
            " (each busy-polls a core: 2 cores busy for the whole run)"
        } else {
            ""
        },
        if tls { "on" } else { "off" },
        cpus.len(),
        if cpus.len() < 6 {
            " (fewer than 6: the bridges, the two ends and the probe share cores, so the \
             figures include scheduling)"
        } else {
            ""
        }
    );
    if args.json {
        eprintln!("{note}");
    } else {
        println!("{note}");
    }

    let net = Net::new(2).map_err(BenchError::io(
        "making two network namespaces (needs ip, unshare, nsenter; see shmesh_testkit::netns)",
    ))?;
    let (host_a, host_b) = (net.host(0), net.host(1));
    let bridge_addr = SocketAddr::from((host_a.addr(), BRIDGE_PORT));
    let tcp_addr = SocketAddr::from((host_b.addr(), TCP_PORT));
    let (conf_a, conf_b) = configs(bridge_addr, args.tls);
    let (path_a, path_b) = (
        dir.path().join("host-a.toml"),
        dir.path().join("host-b.toml"),
    );
    fs::write(&path_a, conf_a).map_err(BenchError::io(format!("writing {}", path_a.display())))?;
    fs::write(&path_b, conf_b).map_err(BenchError::io(format!("writing {}", path_b.display())))?;

    let capacity = ring_capacity(sizes.iter().copied().max().unwrap_or(MIN_SIZE));
    let bridge_cmd = |host: &shmesh_testkit::netns::Host, config: &Path| {
        let mut cmd = host.command(&bridge_exe);
        cmd.arg("--config")
            .arg(config)
            .args(["--idle", args.idle.name()]);
        cmd
    };
    let peer_cmd = |host: &shmesh_testkit::netns::Host, role: &str| {
        let mut cmd = host.command(&exe);
        cmd.args([
            "__bench-bridge-peer".to_owned(),
            format!("--role={role}"),
            format!("--capacity={capacity}"),
            format!("--tcp={tcp_addr}"),
            format!("--wait={}", args.wait),
        ]);
        cmd
    };
    let mut procs = Procs {
        peers: Vec::new(),
        bridges: Vec::new(),
    };
    procs
        .bridges
        .push(Proc::spawn("bridge A", bridge_cmd(host_a, &path_a))?);
    procs
        .bridges
        .push(Proc::spawn("bridge B", bridge_cmd(host_b, &path_b))?);
    // B first: it listens for A's TCP connection.
    procs
        .peers
        .push(Proc::spawn("peer B", peer_cmd(host_b, "b"))?);
    procs
        .peers
        .push(Proc::spawn("peer A", peer_cmd(host_a, "a"))?);
    const A: usize = 1;
    const B: usize = 0;
    for i in [A, B] {
        let line = procs.expect(
            i,
            "the hosts' rings to be mirrored and TCP to connect",
            SETUP_TIMEOUT,
        )?;
        if line != "ready" {
            return Err(protocol(&line, "ready"));
        }
    }

    // The probe peer and this process pinned to two CPUs, for `cl_ns`; the processes started
    // above keep their affinity (all CPUs).
    let mut probe_args = vec!["__bench-bridge-peer".to_owned(), "--role=probe".to_owned()];
    if let [first, second, ..] = cpus.as_slice() {
        probe_args.push(format!("--cpu={second}"));
        process::pin(*first)?;
    }
    let mut probe_peer = Peer::spawn_piped(&probe_args)?;

    let pid = std::process::id();
    let mut next = 0u64;
    let mut measure_cl = |probe_peer: &mut Peer| -> Result<u64, BenchError> {
        next += 1;
        let name = format!("bench.{pid}.{next}.cl");
        let mut probe = CacheLineProbe::create(&name).map_err(|source| BenchError::Segment {
            name: name.clone(),
            source,
        })?;
        probe_peer.tell(&format!("probe {name}"))?;
        let cl = median_cl(&mut probe, probe_peer);
        drop(probe);
        let _ = shmesh_ring::Segment::remove(&name);
        cl
    };

    let mut header_done = false;
    for size in sizes {
        for bench in [Bench::Throughput, Bench::PingPong] {
            let measured = args
                .iters
                .unwrap_or_else(|| bench.default_iters(Transport::Tcp, size));
            let warm = warmup(measured);
            let mut pair = Vec::new();
            for transport in ["bridge", "tcp"] {
                let cl_ns = measure_cl(&mut probe_peer)?;
                let row = measure(&mut procs, bench, transport, size, warm, measured)
                    .map(|(samples, msgs_per_s, latency)| BridgeRow {
                        bench,
                        transport,
                        tls,
                        idle: args.idle,
                        size,
                        wait: args.wait,
                        cl_ns,
                        samples,
                        msgs_per_s,
                        latency,
                    })
                    .map_err(|e| {
                        BenchError::Usage(format!(
                        "benchmark {bench} over {transport} between two hosts with {size}-byte \
                         messages failed: {e}{}",
                        source_chain(&e)
                    ))
                    })?;
                let text = if args.json {
                    row.to_json()
                } else {
                    let mut t = String::new();
                    if !header_done {
                        t = format!("{TABLE_HEADER}\n");
                        header_done = true;
                    }
                    t + &row.to_table()
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{text}")
                    .and_then(|()| out.flush())
                    .map_err(BenchError::io("writing the results to stdout"))?;
                pair.push(row);
            }
            if let [bridge, tcp] = pair.as_slice() {
                if !args.json {
                    println!("{}", ratio_line(bridge, tcp));
                }
            }
        }
    }
    probe_peer.finish(false)?;
    drop(procs);
    net.close()
        .map_err(BenchError::io("removing the two network namespaces"))?;
    Ok(())
}

/// Makes SIGINT, SIGTERM and SIGHUP set [`INTERRUPTED`] instead of killing the process, so
/// that the run unwinds and cleans up. Handlers (not a blocked mask) so that the bridges and
/// the host processes, which inherit the mask but not the handlers, still stop on SIGTERM.
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

/// The causes of `e`, each after `: `.
fn source_chain(e: &BenchError) -> String {
    let mut text = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

fn protocol(line: &str, expected: &str) -> BenchError {
    BenchError::Usage(format!(
        "internal error: a benchmark process said '{line}', expected '{expected}'"
    ))
}

/// One measurement through the two host processes: `(samples, msgs_per_s, [p50, p99, p999,
/// max])`.
fn measure(
    procs: &mut Procs,
    bench: Bench,
    transport: &str,
    size: usize,
    warm: u64,
    measured: u64,
) -> Result<(u64, f64, [u64; 4]), BenchError> {
    const A: usize = 1;
    const B: usize = 0;
    let total = warm + measured;
    let what = "a measurement to finish";
    match bench {
        Bench::Throughput => {
            procs.peers[B].tell(&format!("recv {transport} {size} {warm} {total}"))?;
            procs.peers[A].tell(&format!("send {transport} {size} {total}"))?;
            let sent = procs.expect(A, what, MEASURE_TIMEOUT)?;
            if sent != "done" {
                return Err(protocol(&sent, "done"));
            }
            let line = procs.expect(B, what, MEASURE_TIMEOUT)?;
            let ns: u64 = line
                .strip_prefix("ok ")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| protocol(&line, "ok NANOSECONDS"))?;
            let msgs_per_s = measured as f64 / (ns as f64 / 1e9).max(1e-9);
            Ok((measured, msgs_per_s, [0; 4]))
        }
        Bench::PingPong => {
            procs.peers[B].tell(&format!("echo {transport} {size} {total}"))?;
            procs.peers[A].tell(&format!("ping {transport} {size} {warm} {total}"))?;
            let line = procs.expect(A, what, MEASURE_TIMEOUT)?;
            let fields: Vec<u64> = line
                .strip_prefix("ok ")
                .map(|rest| rest.split(' ').filter_map(|f| f.parse().ok()).collect())
                .unwrap_or_default();
            let [samples, p50, p99, p999, max] = fields[..] else {
                return Err(protocol(&line, "ok SAMPLES P50 P99 P999 MAX"));
            };
            let done = procs.expect(B, what, MEASURE_TIMEOUT)?;
            if done != "done" {
                return Err(protocol(&done, "done"));
            }
            Ok((samples, 0.0, [p50, p99, p999, max]))
        }
    }
}

/// Runs a `shmesh __bench-bridge-peer` process.
///
/// # Errors
///
/// Any failure; the binary prints it on stderr, where the parent collects it.
pub fn run_peer(args: &BridgePeerArgs) -> Result<(), BenchError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(BenchError::os("prctl(PR_SET_PDEATHSIG)"))?;
    if let Some(cpu) = args.cpu {
        process::pin(cpu)?;
    }
    match args.role {
        Role::Probe => serve_probes(),
        Role::A | Role::B => HostEnd::connect(args)?.serve(),
    }
}

/// The probe process: for each `probe NAME` line, answers the probe until stopped.
fn serve_probes() -> Result<(), BenchError> {
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(BenchError::io("reading a command from the parent"))?;
        let name = line
            .strip_prefix("probe ")
            .ok_or_else(|| protocol(&line, "probe NAME"))?;
        let probe = CacheLineProbe::open(name).map_err(|source| BenchError::Segment {
            name: name.to_owned(),
            source,
        })?;
        probe.serve(super::OP_TIMEOUT).map_err(BenchError::Probe)?;
    }
    Ok(())
}

/// One host's ends: the ring it writes, the copy it reads, the TCP connection.
struct HostEnd {
    tx: Producer<ShmMemory>,
    rx: Consumer<ShmMemory>,
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// Opens the local segment `name` once the bridge has made it (bounded by [`SETUP_TIMEOUT`]).
fn open_copy(name: &str) -> Result<Consumer<ShmMemory>, BenchError> {
    let start = Instant::now();
    loop {
        match SegmentBuilder::new(name).open() {
            Ok(seg) => {
                return seg.consumer().map_err(|source| BenchError::Attach {
                    name: name.to_owned(),
                    source,
                })
            }
            Err(source) if start.elapsed() > SETUP_TIMEOUT => {
                return Err(BenchError::Segment {
                    name: format!(
                        "{name} (the bridge's copy did not appear in {SETUP_TIMEOUT:?}: see the \
                         bridges' logs)"
                    ),
                    source,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn setup_tcp(stream: &TcpStream) -> Result<(), BenchError> {
    stream
        .set_nodelay(true)
        .map_err(BenchError::io("setting TCP_NODELAY"))?;
    stream
        .set_read_timeout(Some(MEASURE_TIMEOUT))
        .map_err(BenchError::io("setting SO_RCVTIMEO"))?;
    stream
        .set_write_timeout(Some(MEASURE_TIMEOUT))
        .map_err(BenchError::io("setting SO_SNDTIMEO"))
}

impl HostEnd {
    fn connect(args: &BridgePeerArgs) -> Result<HostEnd, BenchError> {
        let (mine, theirs) = match args.role {
            Role::A => (RING_AB, RING_BA),
            _ => (RING_BA, RING_AB),
        };
        let seg = SegmentBuilder::new(mine)
            .capacity(args.capacity)
            .create()
            .map_err(|source| BenchError::Segment {
                name: mine.to_owned(),
                source,
            })?;
        let mut tx = seg.producer().map_err(|source| BenchError::Attach {
            name: mine.to_owned(),
            source,
        })?;
        tx.set_wait_strategy(args.wait.strategy());
        let addr = args
            .tcp
            .ok_or_else(|| BenchError::Usage("internal error: no --tcp address".into()))?;
        let tcp = if args.role == Role::B {
            let listener =
                TcpListener::bind(addr).map_err(BenchError::io(format!("listening on {addr}")))?;
            let mut rx = open_copy(theirs)?;
            rx.set_wait_strategy(args.wait.strategy());
            let (stream, _) = listener.accept().map_err(BenchError::io(format!(
                "accepting host A's connection on {addr}"
            )))?;
            setup_tcp(&stream)?;
            return Ok(HostEnd {
                tx,
                rx,
                tcp: stream,
                buf: Vec::new(),
            });
        } else {
            let start = Instant::now();
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(stream) => break stream,
                    Err(e) if start.elapsed() > SETUP_TIMEOUT => {
                        return Err(BenchError::io(format!("connecting to {addr}"))(e))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        };
        setup_tcp(&tcp)?;
        let mut rx = open_copy(theirs)?;
        rx.set_wait_strategy(args.wait.strategy());
        Ok(HostEnd {
            tx,
            rx,
            tcp,
            buf: Vec::new(),
        })
    }

    /// Says `ready`, then runs the parent's commands until the end of its input.
    fn serve(mut self) -> Result<(), BenchError> {
        say("ready")?;
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(BenchError::io("reading a command from the parent"))?;
            let words: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| -> Result<u64, BenchError> {
                words
                    .get(i)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| protocol(&line, "COMMAND TRANSPORT NUMBERS"))
            };
            let tcp = match words.get(1) {
                Some(&"tcp") => true,
                Some(&"bridge") => false,
                _ => return Err(protocol(&line, "COMMAND bridge|tcp ...")),
            };
            let size = num(2)? as usize;
            self.buf.resize(size + 4, 0);
            match words[0] {
                "send" => {
                    for seq in 0..num(3)? {
                        self.send(tcp, size, seq)?;
                    }
                    say("done")?;
                }
                "recv" => {
                    let (warm, total) = (num(3)?, num(4)?);
                    for seq in 0..warm {
                        self.recv(tcp, size, seq)?;
                    }
                    let start = Instant::now();
                    for seq in warm..total {
                        self.recv(tcp, size, seq)?;
                    }
                    say(&format!("ok {}", super::nanos(start.elapsed())))?;
                }
                "echo" => {
                    for seq in 0..num(3)? {
                        self.recv(tcp, size, seq)?;
                        self.send(tcp, size, seq)?;
                    }
                    say("done")?;
                }
                "ping" => {
                    let (warm, total) = (num(3)?, num(4)?);
                    let mut hist = new_histogram()?;
                    for seq in 0..total {
                        let t = Instant::now();
                        self.send(tcp, size, seq)?;
                        self.recv(tcp, size, seq)?;
                        if seq >= warm {
                            hist.saturating_record(super::nanos(t.elapsed()));
                        }
                    }
                    say(&format!(
                        "ok {} {} {} {} {}",
                        hist.len(),
                        hist.value_at_quantile(0.5),
                        hist.value_at_quantile(0.99),
                        hist.value_at_quantile(0.999),
                        hist.max()
                    ))?;
                }
                _ => return Err(protocol(&line, "send|recv|echo|ping ...")),
            }
        }
        Ok(())
    }

    /// Sends message `seq` of `size` bytes: into the ring, or on the socket after its length.
    fn send(&mut self, tcp: bool, size: usize, seq: u64) -> Result<(), BenchError> {
        if tcp {
            self.buf[..4].copy_from_slice(&(size as u32).to_le_bytes());
            fill(&mut self.buf[4..4 + size], seq);
            self.tcp
                .write_all(&self.buf[..4 + size])
                .map_err(BenchError::io(format!("sending message {seq} on TCP")))
        } else {
            let mut grant = self.tx.claim(size).map_err(BenchError::Claim)?;
            fill(&mut grant, seq);
            grant.commit(size);
            Ok(())
        }
    }

    /// Receives the next message and checks it is message `seq` of `size` bytes.
    fn recv(&mut self, tcp: bool, size: usize, seq: u64) -> Result<(), BenchError> {
        if tcp {
            let mut len = [0u8; 4];
            self.tcp
                .read_exact(&mut len)
                .map_err(|e| stream_error(e, seq))?;
            let len = u32::from_le_bytes(len) as usize;
            if len != size {
                return Err(BenchError::Corrupt {
                    seq,
                    detail: format!("its length prefix says {len} bytes, expected {size}"),
                });
            }
            self.tcp
                .read_exact(&mut self.buf[4..4 + size])
                .map_err(|e| stream_error(e, seq))?;
            check(&self.buf[4..4 + size], seq, size, super::Touch::All)
        } else {
            let record = self.rx.read().map_err(BenchError::Read)?;
            check(&record, seq, size, super::Touch::All)
        }
    }
}

fn stream_error(e: std::io::Error, seq: u64) -> BenchError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BenchError::Closed { seq },
        _ => BenchError::io(format!("receiving message {seq} on TCP"))(e),
    }
}

/// Prints `line` on stdout for the parent, at once.
fn say(line: &str) -> Result<(), BenchError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(BenchError::io("writing to the parent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_mirror_one_ring_each_way() {
        let addr: SocketAddr = "10.1.2.1:7700".parse().unwrap();
        let (a, b) = configs(addr, Tls::On);
        assert!(a.contains("listen = \"10.1.2.1:7700\""), "{a}");
        assert!(a.contains("cert = \"certs/host-a.pem\"") && a.contains("allow = [\"host-b\"]"));
        assert!(b.contains("address = \"10.1.2.1:7700\"") && b.contains("allow = [\"host-a\"]"));
        assert!(a.contains("[[export]]\nname = \"bench-ab\""), "{a}");
        assert!(b.contains("[[export]]\nname = \"bench-ba\""), "{b}");
        let (a, b) = configs(addr, Tls::Off);
        assert!(a.contains("enabled = false") && !a.contains("cert ="));
        assert!(b.contains("enabled = false") && !b.contains("cert ="));
    }

    #[test]
    fn json_lines_carry_the_keys_of_the_other_benches() {
        let row = BridgeRow {
            bench: Bench::Throughput,
            transport: "bridge",
            tls: true,
            idle: BridgeIdle::Spin,
            size: 64,
            wait: Wait::Yield,
            cl_ns: 50,
            samples: 10,
            msgs_per_s: 1000.4,
            latency: [0; 4],
        };
        assert_eq!(
            row.to_json(),
            "{\"bench\":\"throughput\",\"transport\":\"bridge\",\"size\":64,\"wait\":\"yield\",\
             \"touch\":\"all\",\"cl_ns\":50,\"msgs_per_s\":1000,\"bytes_per_s\":64026,\
             \"tls\":true,\"idle\":\"spin\"}"
        );
        let row = BridgeRow {
            bench: Bench::PingPong,
            transport: "tcp",
            tls: false,
            idle: BridgeIdle::Spin,
            latency: [1, 2, 3, 4],
            ..row
        };
        assert_eq!(
            row.to_json(),
            "{\"bench\":\"pingpong\",\"transport\":\"tcp\",\"size\":64,\"wait\":\"yield\",\
             \"touch\":\"all\",\"samples\":10,\"cl_ns\":50,\"p50_ns\":1,\"p99_ns\":2,\
             \"p999_ns\":3,\"max_ns\":4,\"tls\":false,\"idle\":\"spin\"}"
        );
    }

    #[test]
    fn a_missing_bridge_binary_says_how_to_build_it() {
        let e = find_bridge(Path::new("/nonexistent/dir/shmesh"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cargo build --release -p shmesh-bridge")
                && e.contains("/nonexistent/dir/shmesh-bridge"),
            "{e}"
        );
    }
}
