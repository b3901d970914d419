//! Two hosts on one machine: a typed channel and a typed region mirrored by two `shmesh-bridge`
//! daemons over TLS on loopback.
//!
//! ```text
//! cargo build --release -p shmesh-bridge
//! cargo run --release --example bridge
//! ```
//!
//! The program plays both hosts. It makes a private CA and certificates for `host-a` and
//! `host-b` (`shmesh-bridge gen-certs`) in a temporary directory, writes a configuration for
//! each (host-a exports the channel `demo-<pid>.ticks` and the region `demo-<pid>.board`;
//! host-b imports them as `demo-<pid>.ticks.mirror` and `demo-<pid>.board.mirror`: both "hosts"
//! share this machine's `/dev/shm`, so the copies need other names) and starts the two
//! daemons, found next to this program (`target/<profile>/shmesh-bridge`).
//!
//! As host A it sends [`TICKS`] typed messages one at a time; as host B it reads each from the
//! mirror in place, checks it, and times the trip from A's `send` to B's `recv` through both
//! bridges. Then A publishes [`ROUNDS`] versions of the region and B waits for each whole
//! version on its copy. Finally it stops the daemons with SIGTERM and removes what it made,
//! the copies and their `.bridge-state` segments included (a bridge keeps those on purpose,
//! so that a restarted bridge resumes where it left off).
//!
//! `examples/bridge/host-a.toml`, `host-b.toml` and `netns.sh` run the same on two hosts (or
//! two network namespaces) by hand: `bridge write` on host A sends the ticks and versions into
//! `demo.ticks` and `demo.board`, `bridge read` on host B reads them from its copies.

use std::error::Error;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shmesh::{Channel, TypedRegion};
use shmesh_ring::Segment;

/// A message host A sends.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Tick {
    seq: u64,
    /// When A sent it, in nanoseconds since the program started (both hosts are this process).
    sent_ns: u64,
    label: String,
}

/// The state host A publishes in whole versions.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Board {
    round: u64,
    leader: String,
    scores: Vec<u32>,
}

const TICKS: u64 = 1000;
const ROUNDS: u64 = 5;
const PLAYERS: [&str; 4] = ["ada", "bob", "cy", "dee"];
/// How long to wait for a copy to appear, a message or a version to arrive, or a daemon to stop.
const PATIENCE: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => run(),
        ["write"] => write_a(),
        ["read"] => read_b(),
        _ => Err("usage: bridge            (both hosts on loopback)\n       \
                  bridge write|read (host A's or host B's half, by hand: see netns.sh)"
            .into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bridge: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The daemons and what this program made; `Drop` stops and removes all of it, also when the
/// program fails half-way.
struct Setup {
    dir: PathBuf,
    daemons: Vec<(&'static str, Child)>,
    /// Segments the bridge keeps after it exits: the copies and their delivery state.
    kept: Vec<String>,
    /// Set when something failed: the daemons' logs are then shown.
    show_logs: bool,
}

impl Setup {
    /// Stops the daemons with SIGTERM and waits for them (SIGKILL after [`PATIENCE`]).
    fn stop_daemons(&mut self) -> Result<(), String> {
        for (_, child) in &self.daemons {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let mut failed = Vec::new();
        for (host, mut child) in self.daemons.drain(..) {
            let deadline = Instant::now() + PATIENCE;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                }
            };
            match status {
                Some(s) if s.success() => {}
                Some(s) => failed.push(format!("the {host} bridge exited with {s}")),
                None => failed.push(format!("the {host} bridge ignored SIGTERM: killed")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            self.show_logs = true;
            Err(failed.join("; "))
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.stop_daemons();
        for name in &self.kept {
            let _ = Segment::remove(name);
        }
        if self.show_logs {
            for host in ["host-a", "host-b"] {
                let log = self.dir.join(format!("{host}.log"));
                if let Ok(text) = fs::read_to_string(&log) {
                    eprintln!("--- {host} bridge log\n{text}");
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let daemon = bridge_binary()?;
    let pid = std::process::id();
    let ticks_name = format!("demo-{pid}.ticks");
    let board_name = format!("demo-{pid}.board");
    let ticks_mirror = format!("{ticks_name}.mirror");
    let board_mirror = format!("{board_name}.mirror");

    let dir = std::env::temp_dir().join(format!("shmesh-bridge-example-{pid}"));
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut setup = Setup {
        dir: dir.clone(),
        daemons: Vec::new(),
        kept: [&ticks_mirror, &board_mirror]
            .iter()
            .flat_map(|m| [m.to_string(), format!("{m}.bridge-state")])
            .collect(),
        show_logs: false,
    };
    let result = exchange(
        &mut setup,
        &daemon,
        [&ticks_name, &board_name, &ticks_mirror, &board_mirror],
    );
    if result.is_err() {
        setup.show_logs = true;
    }
    result?;
    setup.stop_daemons()?;
    drop(setup);
    println!("bridge: both bridges stopped, their copies and state removed");
    Ok(())
}

/// `target/<profile>/shmesh-bridge`, next to `target/<profile>/examples/` where this program is.
fn bridge_binary() -> Result<PathBuf, Box<dyn Error>> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("shmesh-bridge"))
        .ok_or("cannot tell where this program's build directory is")?;
    if !path.is_file() {
        return Err(format!(
            "the shmesh-bridge daemon is not built ({} is missing): run `cargo build --release \
             -p shmesh-bridge` (without --release for a debug build of this example), then \
             this example again",
            path.display()
        )
        .into());
    }
    Ok(path)
}

fn exchange(
    setup: &mut Setup,
    daemon: &Path,
    [ticks_name, board_name, ticks_mirror, board_mirror]: [&String; 4],
) -> Result<(), Box<dyn Error>> {
    let dir = setup.dir.clone();
    // Host A's side: what it exports exists before its bridge starts (a bridge also waits for
    // a missing export to appear).
    let ticks = Channel::<Tick>::builder(ticks_name.as_str())
        .capacity(1 << 16)
        .create()?;
    let mut tx = ticks.sender()?;
    let mut board = Board {
        round: 0,
        leader: "nobody yet".into(),
        scores: vec![0; PLAYERS.len()],
    };
    let board_region = TypedRegion::<Board>::builder(board_name.as_str())
        .capacity(16 << 10)
        .chunk_size(256)
        .create(&board)?;
    let mut board_writer = board_region.writer()?;

    let certs = dir.join("certs");
    let out = Command::new(daemon)
        .args(["gen-certs", "--out"])
        .arg(&certs)
        .args(["host-a", "host-b"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", daemon.display()))?;
    if !out.status.success() {
        return Err(format!(
            "shmesh-bridge gen-certs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let a = format!(
        r#"name = "host-a"
listen = "127.0.0.1:{port}"
[tls]
cert = "certs/host-a.pem"
key = "certs/host-a.key"
ca = "certs/ca.pem"
allow = ["host-b"]
[[peers]]
name = "host-b"
[[export]]
name = "{ticks_name}"
peers = ["host-b"]
[[export]]
name = "{board_name}"
peers = ["host-b"]
"#
    );
    let b = format!(
        r#"name = "host-b"
reconnect_interval = "50ms"
[tls]
cert = "certs/host-b.pem"
key = "certs/host-b.key"
ca = "certs/ca.pem"
allow = ["host-a"]
[[peers]]
name = "host-a"
address = "127.0.0.1:{port}"
[[import]]
peer = "host-a"
name = "{ticks_name}"
local_name = "{ticks_mirror}"
[[import]]
peer = "host-a"
name = "{board_name}"
local_name = "{board_mirror}"
"#
    );
    for (host, text) in [("host-a", a), ("host-b", b)] {
        let config = dir.join(format!("{host}.toml"));
        fs::write(&config, text)?;
        let log = fs::File::create(dir.join(format!("{host}.log")))?;
        let child = Command::new(daemon)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", daemon.display()))?;
        setup.daemons.push((host, child));
    }
    println!(
        "bridge: host-a (listening on 127.0.0.1:{port}) exports {ticks_name} and {board_name}; \
         host-b imports them as {ticks_mirror} and {board_mirror}, over TLS 1.3 with \
         certificates from {}",
        certs.display()
    );

    // Host B's side: the copies appear once the bridges connected and agreed on the streams.
    let deadline = Instant::now() + PATIENCE;
    let mirror = wait_for("the ticks' copy", deadline, || {
        Channel::<Tick>::open(ticks_mirror.as_str())
    })?;
    let mut rx = mirror.receiver()?;
    let board_copy = wait_for("the board's copy", deadline, || {
        TypedRegion::<Board>::open(board_mirror.as_str())
    })?;
    let mut board_reader = board_copy.reader();

    // One message at a time: each trip is A's send, both bridges and B's receive.
    let start = Instant::now();
    let mut trips = Vec::with_capacity(TICKS as usize);
    let mut last = String::new();
    for seq in 0..TICKS {
        let sent_ns = start.elapsed().as_nanos() as u64;
        tx.send_timeout(
            &Tick {
                seq,
                sent_ns,
                label: format!("tick {seq} from host-a"),
            },
            PATIENCE,
        )?;
        let tick = rx.recv_timeout(PATIENCE)?;
        let arrived = start.elapsed();
        if tick.seq != seq || tick.sent_ns != sent_ns {
            return Err(format!(
                "tick {seq}: the copy holds tick {} (sent at {} ns) instead",
                tick.seq, tick.sent_ns
            )
            .into());
        }
        trips.push(arrived - Duration::from_nanos(tick.sent_ns.to_native()));
        last = tick.label.to_string();
    }
    println!("B: read {TICKS} ticks in order from {ticks_mirror}, the last \"{last}\"");
    trips.sort();
    let pick = |q: f64| trips[((trips.len() - 1) as f64 * q) as usize];
    println!(
        "A -> B through both bridges, one tick at a time: median {:.1?}, p99 {:.1?}, max {:.1?}",
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );

    // Whole versions: each round changes the scores and the leader together.
    for round in 1..=ROUNDS {
        board.round = round;
        for (k, score) in board.scores.iter_mut().enumerate() {
            *score += (round as u32 * (k as u32 + 3)) % 7;
        }
        let best = (0..PLAYERS.len())
            .max_by_key(|&k| (board.scores[k], std::cmp::Reverse(k)))
            .unwrap_or(0);
        board.leader = PLAYERS[best].to_string();
        let version = board_writer.publish(&board)?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let snapshot = board_reader
                .next(Some(left))
                .map_err(|e| format!("waiting for round {round} on {board_mirror}: {e}"))?;
            if snapshot.round.to_native() < round {
                continue;
            }
            let scores: Vec<u32> = snapshot.scores.iter().map(|s| s.to_native()).collect();
            let leader = snapshot.leader.as_str();
            let best = scores.iter().copied().max().unwrap_or(0);
            let leads = PLAYERS
                .iter()
                .position(|p| *p == leader)
                .is_some_and(|k| scores[k] == best);
            if snapshot.round.to_native() != round || !leads {
                return Err(format!(
                    "{board_mirror} shows round {} with scores {scores:?} led by {leader}: not \
                     the version A published as round {round}",
                    snapshot.round
                )
                .into());
            }
            println!(
                "B: {board_mirror} version {} (A published {version}): round {round}, \
                 scores {scores:?}, leader {leader}",
                snapshot.version()
            );
            break;
        }
    }
    Ok(())
}

/// Calls `open` until it succeeds or `deadline` passes.
fn wait_for<T, E: std::fmt::Display>(
    what: &str,
    deadline: Instant,
    mut open: impl FnMut() -> Result<T, E>,
) -> Result<T, String> {
    loop {
        match open() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "{what} did not appear within {PATIENCE:?} (last: {e}): are both bridges \
                     running and connected?"
                ))
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Host A's half by hand: creates `demo.ticks` and `demo.board`, sends [`TICKS`] ticks and
/// publishes [`ROUNDS`] versions, then keeps both until Enter (their creator removes them).
fn write_a() -> Result<(), Box<dyn Error>> {
    let ticks = Channel::<Tick>::builder("demo.ticks")
        .capacity(1 << 20)
        .create()?;
    let mut tx = ticks.sender()?;
    let mut board = Board {
        round: 0,
        leader: "nobody yet".into(),
        scores: vec![0; PLAYERS.len()],
    };
    let region = TypedRegion::<Board>::builder("demo.board")
        .capacity(16 << 10)
        .chunk_size(256)
        .create(&board)?;
    let mut writer = region.writer()?;
    let start = Instant::now();
    for seq in 0..TICKS {
        let tick = Tick {
            seq,
            sent_ns: start.elapsed().as_nanos() as u64,
            label: format!("tick {seq} from host-a"),
        };
        // Without a bridge draining it the ring fills up: then this waits (backpressure).
        tx.send_timeout(&tick, PATIENCE)
            .map_err(|e| format!("{e} (is the bridge running?)"))?;
    }
    println!("A: sent {TICKS} ticks into demo.ticks");
    for round in 1..=ROUNDS {
        board.round = round;
        board.scores[round as usize % PLAYERS.len()] += round as u32;
        board.leader = PLAYERS[round as usize % PLAYERS.len()].to_string();
        let version = writer.publish(&board)?;
        println!("A: demo.board version {version}: round {round}");
        thread::sleep(Duration::from_millis(100));
    }
    println!("A: press Enter to remove demo.ticks and demo.board and exit");
    std::io::stdin().read_line(&mut String::new())?;
    Ok(())
}

/// Host B's half by hand: reads the [`TICKS`] ticks from its copy of `demo.ticks` and waits
/// for round [`ROUNDS`] on its copy of `demo.board`. The copies stay (the bridge keeps them).
fn read_b() -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + PATIENCE;
    let ticks = wait_for("demo.ticks", deadline, || {
        Channel::<Tick>::open("demo.ticks")
    })?;
    let mut rx = ticks.receiver()?;
    for seq in 0..TICKS {
        let tick = rx.recv_timeout(PATIENCE)?;
        if tick.seq != seq {
            return Err(format!("expected tick {seq}, got tick {}", tick.seq).into());
        }
        if seq == 0 || seq + 1 == TICKS {
            println!("B: \"{}\"", tick.label);
        }
    }
    println!("B: read {TICKS} ticks in order from demo.ticks");
    let board = wait_for("demo.board", deadline, || {
        TypedRegion::<Board>::open("demo.board")
    })?;
    let mut reader = board.reader();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let snapshot = reader.next(Some(left))?;
        let scores: Vec<u32> = snapshot.scores.iter().map(|s| s.to_native()).collect();
        println!(
            "B: demo.board version {}: round {}, scores {scores:?}, leader {}",
            snapshot.version(),
            snapshot.round,
            snapshot.leader
        );
        if snapshot.round.to_native() >= ROUNDS {
            return Ok(());
        }
    }
}
