//! The `shmesh-bridge` daemon between hosts made of network namespaces (each with its own
//! `/dev/shm`, so a copy has the same name as its source): a typed ring and a region mirrored
//! from host A to host B over TLS, under partitions, packet loss, link flaps, a squeezed link,
//! bridges killed with SIGKILL, intruders with the wrong certificates and a copy with the wrong
//! schema. Every check is about what arrives (all records, once, in order, intact; regions
//! converge through whole, increasing versions), never about how fast.
//!
//! Processes: the test (parent) builds the net, the certificates and the configs, and runs the
//! daemons inside the hosts with their stderr in files it reads (`Daemon`). The writer
//! (`source` role) runs on A and the checker (`sink` role) on B; both are this binary (see
//! `shmesh_testkit`). The parent drives them over their stdin/stdout.

use std::fs::{self, OpenOptions};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use shmesh::channel::{RecvError, SendTimeoutError, TryRecvError, TrySendError};
use shmesh::Channel;
use shmesh_bridge::certs;
use shmesh_ring::{SegmentBuilder, SegmentKind};
use shmesh_testkit::netns::{root_or_skip, Host, Net};
use shmesh_testkit::{child_role, say, wait_for_parent, Args, Proc, Watchdog, DEADLINE};

/// The daemon under test.
const BRIDGE_EXE: &str = env!("CARGO_BIN_EXE_shmesh-bridge");
/// The port every bridge listens on (each host has its own network namespace).
const PORT: u16 = 7700;
/// The mirrored ring and region (same names on both hosts: each has its own /dev/shm).
const RING: &str = "nt-ring";
const REGION: &str = "nt-region";
/// Region shape: 16 chunks of 4 KiB.
const REGION_SIZE: usize = 64 << 10;
const CHUNK: usize = 4096;
/// Ring records and region versions per traffic phase of the fault tests.
const PHASE_RECORDS: u64 = 1500;
const PHASE_VERSIONS: u64 = 30;
/// A test binary that hangs is aborted after this long.
const WATCHDOG: Duration = Duration::from_secs(180);
/// The memory bound of a bridge process under a squeezed link (peak RSS).
const RSS_BOUND_KIB: u64 = 200 << 10;

// ---- what travels ----

/// A typed record: its sequence number and a text derived from it, so a reader can check
/// both its place and its contents.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
struct Rec {
    seq: u64,
    text: String,
}

/// A type with another schema, to squat a copy's name.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
struct Other {
    a: u32,
    b: [u8; 12],
}

/// The text of record `seq`: varies in length; `pad` extra bytes make records larger.
fn text_of(seq: u64, pad: usize) -> String {
    let mut text = format!("record {seq} ");
    let fill = (seq % 37) as usize + pad;
    text.extend((0..fill).map(|k| (b'a' + ((seq as usize + k) % 26) as u8) as char));
    text
}

/// The chunks region version `v` stamps (besides the first 8 bytes).
fn stamped_chunks(v: u64) -> [usize; 3] {
    let n = (REGION_SIZE / CHUNK) as u64;
    [0, 1, 2].map(|k| ((v * 7 + k * 5 + 1) % n) as usize)
}

/// Whether version `v` rewrites the whole region (every tenth, from 1): its delta from any
/// base is as large as the region.
fn rewrites_all(v: u64) -> bool {
    v % 10 == 1
}

/// Writes version `v`'s changes into `put` (offset, bytes).
fn region_changes(v: u64, mut put: impl FnMut(usize, &[u8])) {
    put(0, &v.to_le_bytes());
    let all: Vec<usize> = (0..REGION_SIZE / CHUNK).collect();
    let chunks = if rewrites_all(v) {
        all
    } else {
        stamped_chunks(v).to_vec()
    };
    for chunk in chunks {
        put(chunk * CHUNK + 8, &v.to_le_bytes());
        // Some more bytes that depend on the version, over most of the chunk.
        let fill = [(v % 251) as u8; 64];
        for k in 1..32 {
            put(chunk * CHUNK + k * 128, &fill);
        }
    }
}

/// The region's bytes after versions 1 ..= `v`.
fn region_expected(v: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; REGION_SIZE];
    for u in 1..=v {
        region_changes(u, |at, data| {
            bytes[at..at + data.len()].copy_from_slice(data)
        });
    }
    bytes
}

fn stamp_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

// ---- child roles ----

#[test]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    match role.as_str() {
        "source" => source(&args),
        "sink" => sink(&args),
        "squat" => squat(&args),
        other => panic!("unknown child role {other}"),
    }
}

/// `source <ring> <region> <ring capacity> <pad>`: creates the typed ring and the region, says
/// `ready`, then obeys its stdin: `ring K` sends the next K records (`ring_sent <total>`),
/// `region K` publishes the next K versions (`region_at <version>`), `flood K` sends the next K
/// records with `try_send` only, saying `full_seen` at its first full ring and then
/// `flooded <total> <times full>`. Ends when stdin closes.
fn source(args: &Args) {
    let (ring, region, capacity, pad) = (args.s(0), args.s(1), args.get::<u64>(2), args.get(3));
    let channel = Channel::<Rec>::builder(ring)
        .capacity(capacity)
        .create()
        .expect("create the ring");
    let mut tx = channel.sender().expect("sender");
    let segment = SegmentBuilder::new(region)
        .kind(SegmentKind::Region)
        .capacity(REGION_SIZE as u64)
        .chunk_size(CHUNK)
        .history(8)
        .create()
        .expect("create the region");
    let mut writer = segment.region_writer().expect("region writer");
    say("ready", "");
    let mut seq = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let (cmd, k) = line.split_once(' ').expect("command K");
        let k: u64 = k.parse().expect("a count");
        match cmd {
            "ring" => {
                for _ in 0..k {
                    let rec = Rec {
                        seq,
                        text: text_of(seq, pad),
                    };
                    let start = Instant::now();
                    // The exporting bridge may be dead for a while (its held reads keep the
                    // ring full): wait for its successor.
                    loop {
                        match tx.send_timeout(&rec, DEADLINE) {
                            Ok(()) => break,
                            Err(SendTimeoutError::Disconnected) if start.elapsed() < DEADLINE => {
                                thread::sleep(Duration::from_millis(5));
                            }
                            Err(e) => panic!("send of record {seq}: {e}"),
                        }
                    }
                    seq += 1;
                }
                say("ring_sent", seq);
            }
            "flood" => {
                let mut full = 0u64;
                let start = Instant::now();
                for _ in 0..k {
                    let rec = Rec {
                        seq,
                        text: text_of(seq, pad),
                    };
                    loop {
                        match tx.try_send(&rec) {
                            Ok(()) => break,
                            Err(TrySendError::Full) => {
                                if full == 0 {
                                    say("full_seen", seq);
                                }
                                full += 1;
                                assert!(start.elapsed() < DEADLINE, "flood stuck at {seq}");
                                thread::sleep(Duration::from_micros(200));
                            }
                            Err(e) => panic!("try_send of record {seq}: {e}"),
                        }
                    }
                    seq += 1;
                }
                say("flooded", format!("{seq} {full}"));
            }
            "region" => {
                for _ in 0..k {
                    let mut scope = writer.write();
                    let v = scope.version();
                    region_changes(v, |at, data| scope.write_at(at, data));
                    scope.publish();
                }
                say("region_at", writer.version());
            }
            other => panic!("unknown source command {other}"),
        }
    }
}

/// `sink <ring> <region> <records> <version> <pad> [<phase records> <phase version>]`: with
/// the phase, says `phase_one` once that many records and that version arrived. Waits for the
/// copies (a count of 0 skips
/// one), reads records 0 .. records from the ring checking each arrives once, in order and
/// intact, and watches the region until it shows `version` with the writer's bytes, checking
/// that it never goes back and never shows a torn version. Says `ring_ok` and `region_ok`,
/// then, once stdin closes (the bridges are stopped by then), checks nothing more arrived
/// (`no_extra <records>`).
fn sink(args: &Args) {
    let (ring, region) = (args.s(0), args.s(1));
    let (records, version, pad): (u64, u64, usize) = (args.get(2), args.get(3), args.get(4));
    let mut phase: Option<(u64, u64)> = (args.0.len() > 6).then(|| (args.get(5), args.get(6)));
    let start = Instant::now();
    let deadline = |what: &str| {
        assert!(
            start.elapsed() < DEADLINE,
            "sink: {what} not done within {DEADLINE:?}"
        );
    };
    let channel = (records > 0).then(|| loop {
        match Channel::<Rec>::open(ring) {
            Ok(channel) => break channel,
            Err(e) => {
                deadline(&format!("the copy of '{ring}' ({e})"));
                thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let mut rx = channel.as_ref().map(|c| c.receiver().expect("receiver"));
    let region_seg = (version > 0).then(|| loop {
        match SegmentBuilder::new(region).any_kind().open() {
            Ok(seg) => break seg,
            Err(e) => {
                deadline(&format!("the copy of '{region}' ({e})"));
                thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let reader = region_seg
        .as_ref()
        .map(|s| s.region_reader().expect("region reader"));
    let expected = region_expected(version);
    let mut next = 0u64;
    let (mut last_local, mut last_stamp) = (0u64, 0u64);
    let mut region_done = version == 0;
    loop {
        let mut progress = false;
        if let Some(rx) = rx.as_mut() {
            while next < records {
                match rx.try_recv() {
                    Ok(rec) => {
                        assert_eq!(
                            rec.seq, next,
                            "record {} arrived where {next} was due (lost or twice)",
                            rec.seq
                        );
                        assert_eq!(
                            rec.text.as_str(),
                            text_of(next, pad),
                            "record {next} arrived damaged"
                        );
                        next += 1;
                        progress = true;
                    }
                    // The importing bridge may be dead for a while: its successor writes on.
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Failed(RecvError::Disconnected)) => break,
                    Err(e) => panic!("receive after record {next}: {e}"),
                }
            }
        }
        if let Some(reader) = reader.as_ref().filter(|_| !region_done) {
            let (local, bytes) = reader.snapshot().expect("region snapshot");
            assert!(
                local >= last_local,
                "the copy's version went back from {last_local} to {local}"
            );
            let stamp = stamp_at(&bytes, 0);
            assert!(
                stamp >= last_stamp,
                "the copy went back from the writer's version {last_stamp} to {stamp}"
            );
            if stamp > 0 {
                for chunk in stamped_chunks(stamp) {
                    assert_eq!(
                        stamp_at(&bytes, chunk * CHUNK + 8),
                        stamp,
                        "torn copy: version {stamp} but its chunk {chunk} differs"
                    );
                }
                for chunk in 0..REGION_SIZE / CHUNK {
                    let s = stamp_at(&bytes, chunk * CHUNK + 8);
                    assert!(
                        s <= stamp,
                        "torn copy: version {stamp}, chunk {chunk} is from {s}"
                    );
                }
            }
            progress |= stamp > last_stamp;
            (last_local, last_stamp) = (local, stamp);
            if stamp == version {
                assert!(
                    bytes == expected,
                    "the copy shows version {version} with other bytes than the writer's"
                );
                region_done = true;
            }
        }
        if let Some((n, v)) = phase {
            if next >= n && last_stamp >= v {
                say("phase_one", next);
                phase = None;
            }
        }
        if next == records && region_done {
            break;
        }
        deadline(&format!(
            "mirroring (ring at {next} of {records}, region at {last_stamp} of {version})"
        ));
        if !progress {
            thread::sleep(Duration::from_millis(2));
        }
    }
    say("ring_ok", next);
    say("region_ok", last_stamp);
    wait_for_parent();
    if let Some(rx) = rx.as_mut() {
        match rx.try_recv() {
            Ok(rec) => panic!("a record arrived after the last one: {}", rec.seq),
            Err(TryRecvError::Empty | TryRecvError::Failed(RecvError::Disconnected)) => {}
            Err(e) => panic!("final receive: {e}"),
        }
    }
    say("no_extra", next);
}

/// `squat <name> <capacity>`: creates a channel of another type under the copy's name, says
/// `ready`, and once stdin closes checks that nothing was written into it (`untouched`).
fn squat(args: &Args) {
    let channel = Channel::<Other>::builder(args.s(0))
        .capacity(args.get(1))
        .create()
        .expect("create the squatting channel");
    say("ready", "");
    wait_for_parent();
    let mut rx = channel.receiver().expect("receiver");
    match rx.try_recv() {
        Err(TryRecvError::Empty) => say("untouched", ""),
        Ok(_) => panic!("the bridge wrote into a copy of another schema"),
        Err(e) => panic!("receive on the squatted copy: {e}"),
    };
}

// ---- bridges ----

/// One bridge's configuration (TLS on).
#[derive(Debug, Clone)]
struct Conf {
    name: String,
    listen: Option<SocketAddr>,
    liveness: &'static str,
    /// Certificate, key and CA file names, relative to the config's directory.
    cert: String,
    key: String,
    ca: String,
    allow: Vec<String>,
    /// (name, address to dial).
    peers: Vec<(String, Option<SocketAddr>)>,
    exports: Vec<String>,
    /// (peer, name).
    imports: Vec<(String, String)>,
}

impl Conf {
    fn new(name: &str, certs: &str) -> Conf {
        Conf {
            name: name.into(),
            listen: None,
            liveness: "2s",
            cert: format!("{certs}/{name}.pem"),
            key: format!("{certs}/{name}.key"),
            ca: format!("{certs}/ca.pem"),
            allow: Vec::new(),
            peers: Vec::new(),
            exports: Vec::new(),
            imports: Vec::new(),
        }
    }

    fn toml(&self) -> String {
        let mut t = format!("name = \"{}\"\n", self.name);
        if let Some(listen) = self.listen {
            t += &format!("listen = \"{listen}\"\n");
        }
        t += &format!(
            "liveness_timeout = \"{}\"\nreconnect_interval = \"100ms\"\n",
            self.liveness
        );
        t += &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\nallow = [{}]\n",
            self.cert,
            self.key,
            self.ca,
            self.allow
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (name, addr) in &self.peers {
            t += &format!("[[peers]]\nname = \"{name}\"\n");
            if let Some(addr) = addr {
                t += &format!("address = \"{addr}\"\n");
            }
        }
        for name in &self.exports {
            t += &format!("[[export]]\nname = \"{name}\"\n");
        }
        for (peer, name) in &self.imports {
            t += &format!("[[import]]\npeer = \"{peer}\"\nname = \"{name}\"\n");
        }
        t
    }
}

/// A `shmesh-bridge` process inside a host, its stderr appended to a log file.
#[derive(Debug)]
struct Daemon {
    name: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(host: &Host, dir: &Path, conf: &Conf) -> Daemon {
        let config = dir.join(format!("{}.toml", conf.name));
        fs::write(&config, conf.toml()).expect("write config");
        let mut daemon = Daemon {
            name: conf.name.clone(),
            log: dir.join(format!("{}.log", conf.name)),
            config,
            child: None,
        };
        daemon.restart(host);
        daemon
    }

    /// Starts the daemon (again), appending to its log.
    fn restart(&mut self, host: &Host) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = host
            .command(BRIDGE_EXE)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shmesh-bridge");
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, then reap.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(
                    status.success(),
                    "{} exited with {status}:\n{}",
                    self.name,
                    self.log()
                );
                return;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not stop on SIGTERM within {DEADLINE:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's length now: later waits look only after it.
    fn mark(&self) -> usize {
        self.log().len()
    }

    /// Peak and current resident memory, KiB (`VmHWM`, `VmRSS` of /proc/PID/status).
    fn memory_kib(&self) -> (u64, u64) {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in /proc/{}/status", self.pid()))
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A net, its certificates and configs in a temp dir, and one daemon per host.
struct Setup {
    test: &'static str,
    started: Instant,
    net: Net,
    dir: tempfile::TempDir,
    daemons: Vec<Daemon>,
    _watchdog: Watchdog,
}

impl Setup {
    /// `hosts` hosts; certificates for `host-a`, `host-b`, ... from one CA in `certs/`.
    fn new(test: &'static str, hosts: usize) -> Setup {
        let watchdog = Watchdog::new(test, WATCHDOG);
        let net = Net::new(hosts).expect("make the net");
        let dir = tempfile::tempdir().expect("temp dir");
        let names: Vec<String> = (0..hosts).map(host_name).collect();
        certs::generate(&dir.path().join("certs"), &names).expect("certificates");
        Setup {
            test,
            started: Instant::now(),
            net,
            dir,
            daemons: Vec::new(),
            _watchdog: watchdog,
        }
    }

    fn addr(&self, host: usize) -> SocketAddr {
        SocketAddr::new(self.net.host(host).addr().into(), PORT)
    }

    /// A exports `exports` to B; B dials A and imports `imports`.
    fn pair_confs(&self, exports: &[&str], imports: &[&str]) -> (Conf, Conf) {
        let mut a = Conf::new("host-a", "certs");
        a.listen = Some(self.addr(0));
        a.allow = vec!["host-b".into()];
        a.peers = vec![("host-b".into(), None)];
        a.exports = exports.iter().map(|s| s.to_string()).collect();
        let mut b = Conf::new("host-b", "certs");
        b.allow = vec!["host-a".into()];
        b.peers = vec![("host-a".into(), Some(self.addr(0)))];
        b.imports = imports
            .iter()
            .map(|s| ("host-a".to_string(), s.to_string()))
            .collect();
        (a, b)
    }

    fn start(&mut self, host: usize, conf: &Conf) {
        assert_eq!(self.daemons.len(), host, "start daemons in host order");
        let daemon = Daemon::start(self.net.host(host), self.dir.path(), conf);
        self.daemons.push(daemon);
    }

    /// Everything the daemons logged, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for d in &self.daemons {
            out += &format!("--- log of {} ---\n{}", d.name, d.log());
        }
        out
    }

    /// Waits until daemon `d`'s log has `needle` after byte `from`.
    #[track_caller]
    fn wait_log(&self, d: usize, needle: &str, from: usize) {
        let start = Instant::now();
        while !self.daemons[d]
            .log()
            .get(from..)
            .unwrap_or("")
            .contains(needle)
        {
            if start.elapsed() > DEADLINE {
                panic!(
                    "{}: no '{needle}' in the log of {} within {DEADLINE:?}\n{}",
                    self.test,
                    self.daemons[d].name,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for both ends of `name`'s stream between A (daemon 0) and B (daemon 1) to say
    /// "mirroring" after the given log marks.
    #[track_caller]
    fn wait_mirroring(&self, name: &str, from_a: usize, from_b: usize) {
        self.wait_log(
            0,
            &format!("export '{name}' with host-b: mirroring"),
            from_a,
        );
        self.wait_log(
            1,
            &format!("import '{name}' with host-a: mirroring"),
            from_b,
        );
    }

    /// Stops every daemon with SIGTERM (each must exit cleanly).
    fn stop_all(&mut self) {
        for d in &mut self.daemons {
            d.stop();
        }
    }

    fn done(self) {
        if std::env::var_os("SHMESH_NT_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
        eprintln!(
            "{}: passed in {:.1?} of wall time",
            self.test,
            self.started.elapsed()
        );
    }
}

fn host_name(i: usize) -> String {
    format!("host-{}", (b'a' + i as u8) as char)
}

/// The standard pair: the source on A (ring of `capacity` bytes, records padded by `pad`),
/// bridges A (exports the ring and the region) and B (imports both), both streams mirroring.
fn pair(test: &'static str, liveness: &'static str, capacity: u64, pad: usize) -> (Setup, Proc) {
    let mut s = Setup::new(test, 2);
    let mut source = s
        .net
        .host(0)
        .spawn("source", &[&RING, &REGION, &capacity, &pad]);
    source.expect("ready");
    let (mut a, mut b) = s.pair_confs(&[RING, REGION], &[RING, REGION]);
    a.liveness = liveness;
    b.liveness = liveness;
    s.start(0, &a);
    s.start(1, &b);
    s.wait_mirroring(RING, 0, 0);
    s.wait_mirroring(REGION, 0, 0);
    (s, source)
}

/// Tells the source to send `records` more records and publish `versions` more versions;
/// returns the totals.
fn traffic(source: &mut Proc, records: u64, versions: u64) -> (u64, u64) {
    source.send(&format!("ring {records}"));
    let sent = source.expect("ring_sent").parse().expect("a count");
    source.send(&format!("region {versions}"));
    let at = source.expect("region_at").parse().expect("a version");
    (sent, at)
}

/// What a bridge says when its peer broke the protocol (bridge.rs): between two honest
/// bridges, whatever the network does, none of these may ever be logged.
const VIOLATIONS: [&str; 10] = [
    "before its hello",
    "second hello",
    "bad hello",
    "calls itself",
    "bad data frame",
    "more than its window",
    "bad region part",
    "lies outside",
    "more bytes for a region version",
    "rejected:",
];

/// Fails if a bridge accused its (honest) peer of breaking the protocol.
#[track_caller]
fn assert_no_violations(s: &Setup) {
    for d in &s.daemons {
        let log = d.log();
        if let Some(line) = log
            .lines()
            .find(|l| VIOLATIONS.iter().any(|v| l.contains(v)))
        {
            panic!(
                "{}: {} accused an honest peer of breaking the protocol:\n{line}\n{}",
                s.test,
                d.name,
                s.logs()
            );
        }
    }
}

/// Waits for the sink to have everything, stops the bridges, checks nothing more came and
/// that no bridge saw a protocol violation.
fn finish(s: &mut Setup, sink: &mut Proc, records: u64, version: u64) {
    assert_eq!(sink.expect("ring_ok"), records.to_string());
    assert_eq!(sink.expect("region_ok"), version.to_string());
    s.stop_all();
    assert_no_violations(s);
    sink.close_stdin();
    assert_eq!(sink.expect("no_extra"), records.to_string());
    sink.wait_success();
}

// ---- 1, 2: plain mirroring ----

#[test]
fn typed_ring_a_to_b() {
    if !root_or_skip("typed_ring_a_to_b") {
        return;
    }
    const N: u64 = 20_000;
    let (mut s, mut source) = pair("typed_ring_a_to_b", "3s", 1 << 16, 0);
    let mut sink = s.net.host(1).spawn("sink", &[&RING, &REGION, &N, &0, &0]);
    // More records than the 64 KiB ring holds: the writer waits for the bridge's acks.
    let (sent, _) = traffic(&mut source, N, 0);
    assert_eq!(sent, N);
    finish(&mut s, &mut sink, N, 0);
    assert!(
        s.logs().contains("TLS on"),
        "the bridges ran without TLS:\n{}",
        s.logs()
    );
    // Both ends log the connection, the dialing one too (as the daemon's docs say).
    for (d, peer) in [(0, "host-b"), (1, "host-a")] {
        assert!(
            s.daemons[d]
                .log()
                .contains(&format!("connected to {peer}\n")),
            "{} never logged 'connected to {peer}':\n{}",
            s.daemons[d].name,
            s.logs()
        );
    }
    s.done();
}

#[test]
fn region_a_to_b_converges() {
    if !root_or_skip("region_a_to_b_converges") {
        return;
    }
    const VERSIONS: u64 = 400;
    let (mut s, mut source) = pair("region_a_to_b_converges", "3s", 1 << 16, 0);
    let mut sink = s
        .net
        .host(1)
        .spawn("sink", &[&RING, &REGION, &0, &VERSIONS, &0]);
    // In steps, so that the copy sees versions while the writer is still publishing.
    let mut at = 0;
    for _ in 0..8 {
        at = traffic(&mut source, 0, VERSIONS / 8).1;
    }
    assert_eq!(at, VERSIONS);
    finish(&mut s, &mut sink, 0, VERSIONS);
    s.done();
}

// ---- 3: faults ----

/// Three phases of traffic (ring and region) on the standard pair with liveness 2 s; `fault`
/// runs after the first, and calls the `mid` traffic phase itself while its fault is on.
/// Returns the setup (bridges stopped) for checks of the logs.
fn faulted(test: &'static str, fault: impl FnOnce(&mut Setup, &mut dyn FnMut())) -> Setup {
    let (mut s, mut source) = pair(test, "2s", 1 << 20, 0);
    let (n, v) = (3 * PHASE_RECORDS, 3 * PHASE_VERSIONS);
    let mut sink = s.net.host(1).spawn(
        "sink",
        &[&RING, &REGION, &n, &v, &0, &PHASE_RECORDS, &PHASE_VERSIONS],
    );
    traffic(&mut source, PHASE_RECORDS, PHASE_VERSIONS);
    // The fault strikes a stream that has delivered: it must resume, not start.
    sink.expect("phase_one");
    let mut phases = 1;
    fault(&mut s, &mut || {
        traffic(&mut source, PHASE_RECORDS, PHASE_VERSIONS);
        phases += 1;
    });
    assert_eq!(
        phases, 2,
        "the fault must run the middle traffic phase once"
    );
    let (sent, at) = traffic(&mut source, PHASE_RECORDS, PHASE_VERSIONS);
    assert_eq!((sent, at), (n, v));
    finish(&mut s, &mut sink, n, v);
    drop(source);
    s
}

fn partition(test: &'static str, length: Duration) -> Setup {
    faulted(test, |s, mid| {
        s.net.partition(0, 1).expect("partition");
        mid();
        thread::sleep(length);
        s.net.heal(0, 1).expect("heal");
    })
}

#[test]
fn partition_shorter_than_liveness() {
    if !root_or_skip("partition_shorter_than_liveness") {
        return;
    }
    let s = partition("partition_shorter_than_liveness", Duration::from_secs(1));
    s.done();
}

#[test]
fn partition_longer_than_liveness() {
    if !root_or_skip("partition_longer_than_liveness") {
        return;
    }
    let s = partition("partition_longer_than_liveness", Duration::from_secs(4));
    // The fault was real: the connection was dropped and made again.
    let log_b = s.daemons[1].log();
    assert!(
        log_b.contains("disconnected from host-a"),
        "a 4 s partition with a 2 s liveness timeout did not drop the connection:\n{}",
        s.logs()
    );
    assert!(
        log_b.contains("(resumed at"),
        "the import did not resume:\n{}",
        s.logs()
    );
    s.done();
}

/// A stall shorter than the liveness timeout while one region version is in flight: the
/// exporter sends it again every resend timeout (500 ms), so the importer gets several copies
/// of the same version once the link recovers. It must apply it once and drop the copies,
/// without dropping the connection.
#[test]
fn region_version_resent_during_a_short_stall() {
    if !root_or_skip("region_version_resent_during_a_short_stall") {
        return;
    }
    let (mut s, mut source) = pair(
        "region_version_resent_during_a_short_stall",
        "3s",
        1 << 16,
        0,
    );
    // Converge on version 10 first, so that only the next version is in flight in the stall.
    let mut sink = s.net.host(1).spawn("sink", &[&RING, &REGION, &0, &10, &0]);
    traffic(&mut source, 0, 10);
    assert_eq!(sink.expect("ring_ok"), "0");
    assert_eq!(sink.expect("region_ok"), "10");
    sink.close_stdin();
    sink.expect("no_extra");
    sink.wait_success();
    s.net.partition(0, 1).expect("partition");
    // Version 11 rewrites the whole region: each copy carries all of its bytes.
    assert!(rewrites_all(11));
    traffic(&mut source, 0, 1);
    thread::sleep(Duration::from_millis(1300));
    s.net.heal(0, 1).expect("heal");
    let mut sink = s.net.host(1).spawn("sink", &[&RING, &REGION, &0, &11, &0]);
    finish(&mut s, &mut sink, 0, 11);
    s.done();
}

fn lossy(test: &'static str, percent: u8) -> Setup {
    faulted(test, |s, mid| {
        s.net.loss(0, percent).expect("loss");
        mid();
        thread::sleep(Duration::from_secs(3));
        s.net.clear_loss(0).expect("clear loss");
    })
}

#[test]
fn loss_10_percent() {
    if !root_or_skip("loss_10_percent") {
        return;
    }
    lossy("loss_10_percent", 10).done();
}

#[test]
fn loss_30_percent() {
    if !root_or_skip("loss_30_percent") {
        return;
    }
    lossy("loss_30_percent", 30).done();
}

#[test]
fn link_flaps() {
    if !root_or_skip("link_flaps") {
        return;
    }
    let s = faulted("link_flaps", |s, mid| {
        for flap in 0..4 {
            s.net.link_down(0).expect("link down");
            if flap == 0 {
                mid();
            }
            thread::sleep(Duration::from_millis(400));
            s.net.link_up(0).expect("link up");
            thread::sleep(Duration::from_millis(400));
        }
    });
    s.done();
}

#[test]
fn exporting_bridge_killed_and_restarted() {
    if !root_or_skip("exporting_bridge_killed_and_restarted") {
        return;
    }
    let s = faulted("exporting_bridge_killed_and_restarted", |s, mid| {
        // Mid-stream: the records of the phase are still being sent when it dies.
        mid();
        let (from_a, from_b) = (s.daemons[0].mark(), s.daemons[1].mark());
        s.daemons[0].kill9();
        s.wait_log(1, "disconnected from host-a", from_b);
        s.daemons[0].restart(s.net.host(0));
        s.wait_mirroring(RING, from_a, from_b);
        s.wait_mirroring(REGION, from_a, from_b);
    });
    assert!(
        s.daemons[1].log().contains("(resumed at"),
        "the import did not resume:\n{}",
        s.logs()
    );
    s.done();
}

#[test]
fn importing_bridge_killed_and_restarted() {
    if !root_or_skip("importing_bridge_killed_and_restarted") {
        return;
    }
    let s = faulted("importing_bridge_killed_and_restarted", |s, mid| {
        mid();
        let (from_a, from_b) = (s.daemons[0].mark(), s.daemons[1].mark());
        s.daemons[1].kill9();
        s.wait_log(0, "disconnected from host-b", from_a);
        s.daemons[1].restart(s.net.host(1));
        s.wait_mirroring(RING, from_a, from_b);
        s.wait_mirroring(REGION, from_a, from_b);
    });
    s.done();
}

// ---- 4: a squeezed link ----

#[test]
fn tbf_squeeze_fills_the_ring_and_bounds_memory() {
    if !root_or_skip("tbf_squeeze_fills_the_ring_and_bounds_memory") {
        return;
    }
    const N: u64 = 2000;
    const PAD: usize = 400;
    let (mut s, mut source) = pair(
        "tbf_squeeze_fills_the_ring_and_bounds_memory",
        "3s",
        1 << 16,
        PAD,
    );
    let mut sink = s.net.host(1).spawn("sink", &[&RING, &REGION, &N, &0, &PAD]);
    s.net.limit_rate(0, "2mbit").expect("limit rate");
    source.send(&format!("flood {N}"));
    let first_full: u64 = source.expect("full_seen").parse().expect("a seq");
    assert!(first_full < N);
    // Keep squeezing a while after the ring filled, sampling the bridges' memory.
    let mut peak = [0u64; 2];
    for _ in 0..10 {
        for (d, p) in peak.iter_mut().enumerate() {
            *p = (*p).max(s.daemons[d].memory_kib().1);
        }
        thread::sleep(Duration::from_millis(100));
    }
    s.net.clear_rate(0).expect("clear rate");
    let flooded = source.expect("flooded");
    let (sent, full) = flooded.split_once(' ').expect("two counts");
    assert_eq!(sent, N.to_string());
    let full: u64 = full.parse().expect("a count");
    assert!(full > 0, "the writer never saw its ring full");
    assert_eq!(sink.expect("ring_ok"), N.to_string());
    assert_eq!(sink.expect("region_ok"), "0");
    for (d, sampled) in peak.iter().enumerate() {
        let (hwm, _) = s.daemons[d].memory_kib();
        eprintln!(
            "{}: RSS sampled under the squeeze up to {sampled} KiB, peak (VmHWM) {hwm} KiB",
            s.daemons[d].name
        );
        assert!(
            hwm < RSS_BOUND_KIB,
            "{}'s peak RSS {hwm} KiB exceeds {RSS_BOUND_KIB} KiB",
            s.daemons[d].name
        );
    }
    eprintln!("writer saw its ring full {full} times (first at record {first_full})");
    s.stop_all();
    assert_no_violations(&s);
    sink.close_stdin();
    assert_eq!(sink.expect("no_extra"), N.to_string());
    sink.wait_success();
    s.done();
}

// ---- 5: authentication ----

#[test]
fn intruders_are_refused_and_b_mirrors_on() {
    if !root_or_skip("intruders_are_refused_and_b_mirrors_on") {
        return;
    }
    const N: u64 = 3000;
    const V: u64 = 60;
    let mut s = Setup::new("intruders_are_refused_and_b_mirrors_on", 4);
    // Host C: a certificate for an allowlisted name, from another CA (C itself trusts both
    // CAs, so only A's check can stop it). Host D: the right CA, a name A does not allow.
    let dir = s.dir.path().to_owned();
    certs::generate(&dir.join("other-ca"), &["host-c".to_string()]).expect("other CA");
    let both = format!(
        "{}{}",
        fs::read_to_string(dir.join("certs/ca.pem")).expect("ca"),
        fs::read_to_string(dir.join("other-ca/ca.pem")).expect("other ca")
    );
    fs::write(dir.join("both-ca.pem"), both).expect("write both CAs");
    let mut source = s
        .net
        .host(0)
        .spawn("source", &[&RING, &REGION, &(1u64 << 20), &0]);
    source.expect("ready");
    let (mut a, b) = s.pair_confs(&[RING, REGION], &[RING, REGION]);
    a.allow.push("host-c".into());
    let mut c = Conf::new("host-c", "other-ca");
    c.ca = "both-ca.pem".into();
    let mut d = Conf::new("host-d", "certs");
    for conf in [&mut c, &mut d] {
        conf.allow = vec!["host-a".into()];
        conf.peers = vec![("host-a".into(), Some(s.addr(0)))];
        conf.imports = vec![
            ("host-a".into(), RING.into()),
            ("host-a".into(), REGION.into()),
        ];
    }
    s.start(0, &a);
    s.start(1, &b);
    s.wait_mirroring(RING, 0, 0);
    s.wait_mirroring(REGION, 0, 0);
    s.start(2, &c);
    s.start(3, &d);
    let mut sink = s.net.host(1).spawn("sink", &[&RING, &REGION, &N, &V, &0]);
    // B streams while C and D keep dialing.
    for _ in 0..3 {
        traffic(&mut source, N / 3, V / 3);
    }
    for intruder in [2, 3] {
        // Refused more than once: it kept trying all along, and kept failing.
        let start = Instant::now();
        while s.daemons[intruder]
            .log()
            .matches("disconnected from host-a")
            .count()
            < 2
        {
            assert!(
                start.elapsed() < DEADLINE,
                "intruder {} was not refused twice:\n{}",
                s.daemons[intruder].name,
                s.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(sink.expect("ring_ok"), N.to_string());
    assert_eq!(sink.expect("region_ok"), V.to_string());
    let log_a = s.daemons[0].log();
    let log_c = s.daemons[2].log();
    let log_d = s.daemons[3].log();
    for (who, log) in [("host-a", &log_a), ("host-c", &log_c), ("host-d", &log_d)] {
        for line in log.lines().filter(|l| l.contains("disconnected")).take(2) {
            eprintln!("{who}: {line}");
        }
    }
    for (intruder, log) in [(2usize, &log_c), (3, &log_d)] {
        assert!(
            !log.contains("connected to host-a") && !log.contains("mirroring"),
            "{} got in:\n{}",
            s.daemons[intruder].name,
            s.logs()
        );
        let shm = s.net.host(intruder).run("ls -A /dev/shm").expect("ls");
        assert_eq!(
            shm.trim(),
            "",
            "{} has copies in its /dev/shm",
            s.daemons[intruder].name
        );
    }
    assert!(
        !log_a.contains("connected to host-c") && !log_a.contains("connected to host-d"),
        "A let an intruder in:\n{log_a}"
    );
    // A says why: C's certificate does not chain to A's CA, D's name is not allowed.
    let refusals: Vec<&str> = log_a
        .lines()
        .filter(|l| l.contains("disconnected from an unidentified peer"))
        .collect();
    assert!(
        refusals
            .iter()
            .any(|l| l.to_lowercase().contains("issuer") || l.contains("CA")),
        "A's log does not say an unknown CA was refused:\n{log_a}"
    );
    assert!(
        refusals.iter().any(|l| l.contains("host-d")),
        "A's log does not name host-d when refusing it:\n{log_a}"
    );
    s.stop_all();
    assert_no_violations(&s);
    sink.close_stdin();
    assert_eq!(sink.expect("no_extra"), N.to_string());
    sink.wait_success();
    s.done();
}

// ---- 6: schema mismatch ----

#[test]
fn schema_mismatch_refuses_one_stream_and_the_other_mirrors() {
    if !root_or_skip("schema_mismatch_refuses_one_stream_and_the_other_mirrors") {
        return;
    }
    const N: u64 = 2000;
    const CAPACITY: u64 = 1 << 16;
    const RING2: &str = "nt-ring-2";
    const REGION2: &str = "nt-region-2";
    let mut s = Setup::new(
        "schema_mismatch_refuses_one_stream_and_the_other_mirrors",
        2,
    );
    let a_host = s.net.host(0);
    let mut source = a_host.spawn("source", &[&RING, &REGION, &CAPACITY, &0]);
    let mut source2 = a_host.spawn("source", &[&RING2, &REGION2, &CAPACITY, &0]);
    source.expect("ready");
    source2.expect("ready");
    let mut squatter = s.net.host(1).spawn("squat", &[&RING, &CAPACITY]);
    squatter.expect("ready");
    let (a, b) = s.pair_confs(&[RING, RING2], &[RING, RING2]);
    s.start(0, &a);
    s.start(1, &b);
    let refused = format!("stream '{RING}' with");
    s.wait_log(0, &refused, 0);
    s.wait_log(1, &refused, 0);
    s.wait_mirroring(RING2, 0, 0);
    let mut sink = s.net.host(1).spawn("sink", &[&RING2, &REGION2, &N, &0, &0]);
    traffic(&mut source2, N, 0);
    traffic(&mut source, 10, 0);
    assert_eq!(sink.expect("ring_ok"), N.to_string());
    let (log_a, log_b) = (s.daemons[0].log(), s.daemons[1].log());
    for (who, log) in [("host-a", &log_a), ("host-b", &log_b)] {
        let line = log
            .lines()
            .find(|l| l.contains(&refused))
            .unwrap_or_else(|| panic!("{who} logged no refusal of '{RING}'"));
        eprintln!("{who}: {line}");
        assert!(
            line.contains("schema mismatch") && line.contains("Other") && line.contains("Rec"),
            "{who}'s refusal does not name the mismatch and both types: {line}"
        );
    }
    assert!(
        !log_b.contains(&format!("import '{RING}' with host-a: mirroring")),
        "B mirrored into a copy of another schema:\n{log_b}"
    );
    assert_eq!(sink.expect("region_ok"), "0");
    s.stop_all();
    assert_no_violations(&s);
    squatter.close_stdin();
    squatter.expect("untouched");
    squatter.wait_success();
    sink.close_stdin();
    assert_eq!(sink.expect("no_extra"), N.to_string());
    sink.wait_success();
    s.done();
}
