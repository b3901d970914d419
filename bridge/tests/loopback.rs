//! Two bridges in one process on loopback, driven by `poll` from two threads: the mirroring
//! protocol end to end over real TCP (plaintext here; TLS in `tls_mirror.rs`), without
//! namespaces. The local copies get other names (`local_name`), since both "hosts" share
//! /dev/shm here. Writers and readers that are killed run as child processes (this binary
//! again, see `shmesh_testkit`).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use shmesh_bridge::config::Config;
use shmesh_bridge::fault::{FaultPlan, FaultyLink};
use shmesh_bridge::{wire, Bridge};
use shmesh_ring::{
    ClaimError, Consumer, Producer, ReadError, Segment, SegmentBuilder, SegmentKind, ShmMemory,
};
use shmesh_testkit::{child_role, say, wait_for_parent, Proc};

const DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unique(test: &str) -> String {
    format!("bridge-lo.{test}.{}", std::process::id())
}

struct Pair {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<Bridge>>,
}

impl Pair {
    fn start(a: &str, b: &str) -> Pair {
        Self::start_with(a, b, None)
    }

    /// Starts both bridges (configs resolved against `dir`), their links passed through
    /// `faults` when given.
    fn start_with(a: &str, b: &str, faults: Option<(FaultPlan, &Path)>) -> Pair {
        let stop = Arc::new(AtomicBool::new(false));
        let dir = faults.map_or(Path::new("."), |f| f.1).to_owned();
        let plan = faults.map(|f| f.0);
        let log = Arc::new(Mutex::new(Vec::new()));
        let threads = [a, b]
            .into_iter()
            .enumerate()
            .map(|(k, text)| {
                let config = Config::parse(text, &dir.join("test.toml")).expect("config");
                let stop = stop.clone();
                let log = log.clone();
                thread::spawn(move || {
                    let mut bridge = Bridge::new(&config).expect("bridge");
                    if let Some(mut plan) = plan {
                        plan.seed = plan.seed.wrapping_add(k as u64 * 7919);
                        let mut n = 0u64;
                        bridge.wrap_links(Box::new(move |link| {
                            n += 1;
                            let plan = FaultPlan {
                                seed: plan.seed.wrapping_add(n),
                                ..plan
                            };
                            Box::new(FaultyLink::new(link, plan).expect("plan"))
                        }));
                    }
                    while !stop.load(Ordering::Relaxed) {
                        if bridge.poll() == 0 {
                            thread::sleep(Duration::from_micros(50));
                        }
                        for event in bridge.take_events() {
                            let line = format!("[{}] {event}", bridge.name());
                            eprintln!("{line}");
                            log.lock().unwrap().push(line);
                        }
                    }
                    bridge
                })
            })
            .collect();
        Pair { stop, log, threads }
    }

    /// The log lines so far that contain all of `words`.
    fn logged(&self, words: &[&str]) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|line| words.iter().all(|w| line.contains(w)))
            .cloned()
            .collect()
    }

    /// Waits until a log line contains all of `words`.
    fn wait_logged(&self, words: &[&str]) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.logged(words).pop() {
                return line;
            }
            assert!(start.elapsed() < DEADLINE, "no log line with {words:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(self) -> Vec<Bridge> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

fn configs(src: &str, copy: &str, port: u16) -> (String, String) {
    let a = format!(
        r#"
name = "host-a"
listen = "127.0.0.1:{port}"
liveness_timeout = "2s"
[tls]
enabled = false
[[peers]]
name = "host-b"
[[export]]
name = "{src}"
"#
    );
    let b = format!(
        r#"
name = "host-b"
reconnect_interval = "50ms"
liveness_timeout = "2s"
[tls]
enabled = false
[[peers]]
name = "host-a"
address = "127.0.0.1:{port}"
[[import]]
peer = "host-a"
name = "{src}"
local_name = "{copy}"
"#
    );
    (a, b)
}

fn open_when_there(name: &str) -> Segment {
    let start = Instant::now();
    loop {
        if let Ok(seg) = SegmentBuilder::new(name).any_kind().open() {
            return seg;
        }
        assert!(start.elapsed() < DEADLINE, "'{name}' never appeared");
        thread::sleep(Duration::from_millis(10));
    }
}

fn cleanup(names: &[&str]) {
    for name in names {
        let _ = Segment::remove(name);
        let _ = Segment::remove(&format!("{name}.bridge-state"));
    }
}

#[test]
fn a_ring_is_mirrored_in_order_without_loss() {
    let src = unique("ring");
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    let seg = SegmentBuilder::new(&src)
        .capacity(1 << 16)
        .create()
        .unwrap();
    let mut tx = seg.producer().unwrap();
    let (a, b) = configs(&src, &copy, free_port());
    let pair = Pair::start(&a, &b);
    const N: u32 = 20_000;
    let writer = thread::spawn(move || {
        for i in 0..N {
            let len = 4 + (i as usize * 7) % 300;
            let mut grant = tx.claim_timeout(len, DEADLINE).expect("claim");
            grant[..4].copy_from_slice(&i.to_le_bytes());
            grant.commit(len);
        }
        tx
    });
    let copy_seg = open_when_there(&copy);
    assert_eq!(copy_seg.kind(), SegmentKind::SpscRing);
    assert_eq!(copy_seg.capacity(), 1 << 16);
    let mut rx = copy_seg.consumer().unwrap();
    for i in 0..N {
        let record = rx.read_timeout(DEADLINE).expect("record");
        assert_eq!(record.len(), 4 + (i as usize * 7) % 300);
        assert_eq!(u32::from_le_bytes(record[..4].try_into().unwrap()), i);
    }
    let _tx = writer.join().unwrap();
    let bridges = pair.stop();
    assert_eq!(bridges[1].stats().records_delivered, N as u64);
    drop(rx);
    drop(copy_seg);
    cleanup(&[&copy]);
}

#[test]
fn a_region_converges_and_its_copy_shows_only_whole_increasing_versions() {
    let src = unique("region");
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    const SIZE: usize = 256 << 10;
    let seg = SegmentBuilder::new(&src)
        .kind(SegmentKind::Region)
        .capacity(SIZE as u64)
        .chunk_size(4096)
        .history(8)
        .create()
        .unwrap();
    let mut writer = seg.region_writer().unwrap();
    let (a, b) = configs(&src, &copy, free_port());
    let pair = Pair::start(&a, &b);
    // Every version writes its number into a few chunks (different ones each time) and into
    // the first 8 bytes: a copy shows a torn version if those disagree with the stamps.
    const VERSIONS: u64 = 300;
    let stamp = |v: u64| v.to_le_bytes();
    let writer_thread = thread::spawn(move || {
        for v in 1..=VERSIONS {
            let mut scope = writer.write();
            scope.write_at(0, &stamp(v));
            for k in 0..3u64 {
                let chunk = ((v * 7 + k * 13) % (SIZE as u64 / 4096)) as usize;
                scope.write_at(chunk * 4096 + 8, &stamp(v));
            }
            scope.publish();
            if v % 50 == 0 {
                thread::sleep(Duration::from_millis(5));
            }
        }
        writer
    });
    let copy_seg = open_when_there(&copy);
    let reader = copy_seg.region_reader().unwrap();
    let mut last = 0;
    let start = Instant::now();
    loop {
        let (version, bytes) = reader.snapshot().unwrap();
        assert!(
            version >= last,
            "the copy went back from {last} to {version}"
        );
        last = version;
        if version > 0 {
            let v = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            // Chunks stamped by this version carry its stamp.
            for k in 0..3u64 {
                let chunk = ((v * 7 + k * 13) % (SIZE as u64 / 4096)) as usize;
                let at = chunk * 4096 + 8;
                assert_eq!(
                    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()),
                    v,
                    "torn copy: version stamp {v} but chunk {chunk} differs"
                );
            }
            if v == VERSIONS {
                break;
            }
        }
        assert!(start.elapsed() < DEADLINE, "the copy stopped at {last}");
        thread::sleep(Duration::from_millis(1));
    }
    let writer = writer_thread.join().unwrap();
    // The copy converged to the writer's bytes.
    let src_reader = seg.region_reader().unwrap();
    assert_eq!(
        reader.snapshot().unwrap().1,
        src_reader.snapshot().unwrap().1
    );
    drop(writer);
    let bridges = pair.stop();
    assert!(bridges[1].stats().versions_delivered > 0);
    drop((reader, copy_seg));
    cleanup(&[&copy]);
}

/// Writes `n` records of varying length, each starting with its number, into `tx`.
fn write_numbered(
    mut tx: shmesh_ring::Producer<shmesh_ring::ShmMemory>,
    n: u32,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for i in 0..n {
            let len = 4 + (i as usize * 7) % 300;
            let mut grant = tx.claim_timeout(len, DEADLINE).expect("claim");
            grant[..4].copy_from_slice(&i.to_le_bytes());
            grant.commit(len);
        }
    })
}

/// Reads `n` records from the copy: each once, in order.
fn read_numbered(copy: &str, n: u32) {
    let seg = open_when_there(copy);
    let mut rx = seg.consumer().unwrap();
    for i in 0..n {
        let record = rx.read_timeout(DEADLINE).expect("record");
        assert_eq!(record.len(), 4 + (i as usize * 7) % 300, "record {i}");
        assert_eq!(u32::from_le_bytes(record[..4].try_into().unwrap()), i);
    }
    assert!(
        rx.read_timeout(Duration::from_millis(300)).is_err(),
        "a record arrived twice or from nowhere"
    );
}

#[test]
fn dropped_repeated_reordered_corrupted_and_truncated_frames_lose_and_repeat_nothing() {
    let src = unique("faults");
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    let seg = SegmentBuilder::new(&src)
        .capacity(1 << 14)
        .create()
        .unwrap();
    let tx = seg.producer().unwrap();
    let (a, b) = configs(&src, &copy, free_port());
    let plan = FaultPlan {
        drop: 0.03,
        duplicate: 0.03,
        reorder: 0.03,
        corrupt: 0.02,
        truncate: 0.02,
        delay: None,
        seed: 42,
    };
    let pair = Pair::start_with(&a, &b, Some((plan, Path::new("."))));
    const N: u32 = 2_000;
    let writer = write_numbered(tx, N);
    read_numbered(&copy, N);
    writer.join().unwrap();
    let bridges = pair.stop();
    let (a, b) = (bridges[0].stats(), bridges[1].stats());
    // The faults happened, and were caught: damaged frames by their checksum, repeats by
    // their sequence numbers, losses by the gap they leave.
    assert!(
        b.damaged > 0 && b.duplicates > 0 && a.resends + b.resends > 0,
        "{a:?} {b:?}"
    );
    assert_eq!(b.records_delivered, N as u64);
    cleanup(&[&copy]);
}

fn tls_configs(
    dir: &Path,
    src: &[&str],
    copies: &[&str],
    port: u16,
    b_name: &str,
) -> (String, String) {
    let exports: String = src
        .iter()
        .map(|s| format!("[[export]]\nname = \"{s}\"\n"))
        .collect();
    let imports: String = src
        .iter()
        .zip(copies)
        .map(|(s, c)| {
            format!("[[import]]\npeer = \"host-a\"\nname = \"{s}\"\nlocal_name = \"{c}\"\n")
        })
        .collect();
    let d = dir.display();
    let a = format!(
        r#"
name = "host-a"
listen = "127.0.0.1:{port}"
liveness_timeout = "2s"
[tls]
cert = "{d}/host-a.pem"
key = "{d}/host-a.key"
ca = "{d}/ca.pem"
allow = ["host-b"]
[[peers]]
name = "host-b"
{exports}"#
    );
    let b = format!(
        r#"
name = "host-b"
reconnect_interval = "50ms"
liveness_timeout = "2s"
[tls]
cert = "{d}/{b_name}.pem"
key = "{d}/{b_name}.key"
ca = "{d}/ca.pem"
allow = ["host-a"]
[[peers]]
name = "host-a"
address = "127.0.0.1:{port}"
{imports}"#
    );
    (a, b)
}

#[test]
fn over_tls_a_ring_is_mirrored_and_a_stream_with_another_schema_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    shmesh_bridge::certs::generate(dir.path(), &["host-a".into(), "host-b".into()]).unwrap();
    let good = unique("tls-good");
    let bad = unique("tls-bad");
    let (good_copy, bad_copy) = (format!("{good}.copy"), format!("{bad}.copy"));
    cleanup(&[&good, &bad, &good_copy, &bad_copy]);
    let seg = SegmentBuilder::new(&good)
        .capacity(1 << 14)
        .create()
        .unwrap();
    let _bad_seg = SegmentBuilder::new(&bad)
        .capacity(1 << 14)
        .schema([1, 2, 3, 4])
        .schema_text("Ticks v1")
        .create()
        .unwrap();
    // The copy of `bad` exists already, for another message type.
    let stale = SegmentBuilder::new(&bad_copy)
        .capacity(1 << 14)
        .schema([9, 9, 9, 9])
        .schema_text("Ticks v2")
        .create()
        .unwrap();
    let (a, b) = tls_configs(
        dir.path(),
        &[&good, &bad],
        &[&good_copy, &bad_copy],
        free_port(),
        "host-b",
    );
    let pair = Pair::start(&a, &b);
    const N: u32 = 2_000;
    let writer = write_numbered(seg.producer().unwrap(), N);
    read_numbered(&good_copy, N);
    writer.join().unwrap();
    // Refused on both sides, saying why; the other stream went on (above).
    let a_says = pair.wait_logged(&["[host-a]", "refused", &bad, "schema mismatch"]);
    let b_says = pair.wait_logged(&["[host-b]", "refused", &bad, "schema mismatch"]);
    assert!(
        a_says.contains("Ticks v2") && b_says.contains("Ticks v1"),
        "{a_says}\n{b_says}"
    );
    let bridges = pair.stop();
    assert_eq!(bridges[1].stats().records_delivered, N as u64);
    // The stale copy is untouched.
    assert_eq!(stale.schema().text, "Ticks v2");
    assert!(stale.consumer().unwrap().try_read().is_err());
    drop(stale);
    cleanup(&[&good_copy, &bad_copy]);
}

#[test]
fn a_peer_from_another_ca_gets_nothing_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    shmesh_bridge::certs::generate(dir.path(), &["host-a".into()]).unwrap();
    // An impostor: named host-b, certified by another CA, which it trusts, with A's CA too
    // so that it would accept A.
    shmesh_bridge::certs::generate(other.path(), &["host-b".into()]).unwrap();
    for file in ["host-b.pem", "host-b.key"] {
        std::fs::copy(
            other.path().join(file),
            dir.path().join(format!("impostor-{file}")),
        )
        .unwrap();
    }
    let src = unique("impostor");
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    let seg = SegmentBuilder::new(&src)
        .capacity(1 << 14)
        .create()
        .unwrap();
    let mut tx = seg.producer().unwrap();
    let mut grant = tx.try_claim(8).unwrap();
    grant.fill(7);
    grant.commit(8);
    let (a, b) = tls_configs(
        dir.path(),
        &[&src],
        &[&copy],
        free_port(),
        "impostor-host-b",
    );
    let pair = Pair::start(&a, &b);
    // A refuses the handshake; the impostor never gets a hello, an offer or a record.
    pair.wait_logged(&["[host-a]", "disconnected"]);
    pair.wait_logged(&["[host-b]", "disconnected"]);
    thread::sleep(Duration::from_millis(500));
    assert!(
        pair.logged(&["connected to"]).is_empty(),
        "{:?}",
        pair.logged(&[])
    );
    let bridges = pair.stop();
    assert_eq!(bridges[0].stats().records_sent, 0);
    assert!(
        SegmentBuilder::new(&copy).any_kind().open().is_err(),
        "the impostor's copy exists"
    );
    // The record is still in A's ring, unread by anyone.
    drop(bridges);
    assert_eq!(seg.consumer().unwrap().try_read().unwrap()[0], 7);
}

#[test]
fn a_broadcast_ring_is_mirrored_in_order_through_faulty_links() {
    use shmesh_ring::broadcast::Start;
    let src = unique("bcast");
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    let seg = SegmentBuilder::new(&src)
        .kind(SegmentKind::BroadcastRing)
        .capacity(1 << 14)
        .history(16)
        .create()
        .unwrap();
    let mut tx = seg.broadcast_writer().unwrap();
    let (a, b) = configs(&src, &copy, free_port());
    let plan = FaultPlan {
        drop: 0.03,
        duplicate: 0.03,
        reorder: 0.03,
        corrupt: 0.02,
        truncate: 0.02,
        delay: None,
        seed: 7,
    };
    let pair = Pair::start_with(&a, &b, Some((plan, Path::new("."))));
    // Join the copy before anything is written, so every record reaches this reader.
    let copy_seg = open_when_there(&copy);
    assert_eq!(copy_seg.kind(), SegmentKind::BroadcastRing);
    assert_eq!(copy_seg.history_len(), 16);
    let mut rx = copy_seg.broadcast_reader(Start::Latest).unwrap();
    const N: u32 = 2_000;
    let writer = thread::spawn(move || {
        for i in 0..N {
            let len = 4 + (i as usize * 7) % 300;
            let mut grant = tx.claim_timeout(len, DEADLINE).expect("claim");
            grant[..4].copy_from_slice(&i.to_le_bytes());
            grant.commit(len);
        }
        tx
    });
    for i in 0..N {
        let record = rx.read_timeout(DEADLINE).expect("record");
        assert_eq!(record.len(), 4 + (i as usize * 7) % 300, "record {i}");
        assert_eq!(u32::from_le_bytes(record[..4].try_into().unwrap()), i);
        assert_eq!(record.number(), u64::from(i), "numbers match the source's");
    }
    assert!(
        rx.read_timeout(Duration::from_millis(300)).is_err(),
        "a record twice"
    );
    let _tx = writer.join().unwrap();
    let bridges = pair.stop();
    assert_eq!(bridges[1].stats().records_delivered, N as u64);
    drop((rx, copy_seg));
    cleanup(&[&copy]);
}

/// A second connection from a peer (both sides dialing at once, or the peer redialing while
/// the first still stands) is dropped without disturbing the streams of the first.
#[test]
fn a_second_connection_from_the_same_peer_leaves_the_live_one_mirroring() {
    let src = unique("second-conn");
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    let seg = SegmentBuilder::new(&src)
        .capacity(1 << 16)
        .create()
        .unwrap();
    let mut tx = seg.producer().unwrap();
    let (pa, pb) = (free_port(), free_port());
    // host-a dials (the smaller name): its connection is the one both sides keep.
    let a = format!(
        r#"
name = "host-a"
listen = "127.0.0.1:{pa}"
reconnect_interval = "50ms"
liveness_timeout = "20s"
[tls]
enabled = false
[[peers]]
name = "host-b"
address = "127.0.0.1:{pb}"
[[import]]
peer = "host-b"
name = "{src}"
local_name = "{copy}"
"#
    );
    let b = format!(
        r#"
name = "host-b"
listen = "127.0.0.1:{pb}"
liveness_timeout = "20s"
[tls]
enabled = false
[[peers]]
name = "host-a"
[[export]]
name = "{src}"
"#
    );
    let mut ba = Bridge::new(&Config::parse(&a, Path::new("./t.toml")).unwrap()).unwrap();
    let mut bb = Bridge::new(&Config::parse(&b, Path::new("./t.toml")).unwrap()).unwrap();
    let write = |tx: &mut shmesh_ring::Producer<_>, from: u32, n: u32| {
        for i in from..from + n {
            let mut g = tx.try_claim(4).unwrap();
            g.copy_from_slice(&i.to_le_bytes());
            g.commit(4);
        }
    };
    let run = |ba: &mut Bridge, bb: &mut Bridge, want: u64, secs: u64| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            ba.poll();
            bb.poll();
            for e in ba.take_events() {
                eprintln!("[a] {e}");
            }
            for e in bb.take_events() {
                eprintln!("[b] {e}");
            }
            if ba.stats().records_delivered >= want {
                return true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        false
    };
    write(&mut tx, 0, 100);
    assert!(run(&mut ba, &mut bb, 100, 5));
    // A second connection claiming to be host-b (plaintext; with TLS: host-b redialing while
    // host-a still holds the first connection, or both sides dialing at once).
    let mut s = TcpStream::connect(("127.0.0.1", pa)).unwrap();
    let hello = wire::Hello {
        version: wire::PROTOCOL_VERSION,
        name: "host-b".into(),
        imports: vec![],
    };
    let mut f = Vec::new();
    wire::encode(
        &mut f,
        wire::FrameType::Hello,
        0,
        0,
        0,
        &hello.encode().unwrap(),
    )
    .unwrap();
    s.write_all(&f).unwrap();
    run(&mut ba, &mut bb, u64::MAX, 1);
    drop(s);
    write(&mut tx, 100, 100);
    let ok = run(&mut ba, &mut bb, 200, 8);
    eprintln!(
        "delivered {} a={:?} b={:?} peers={:?}",
        ba.stats().records_delivered,
        ba.stats(),
        bb.stats(),
        ba.connected_peers()
    );
    cleanup(&[&src, &copy]);
    assert!(ok, "the live connection's import stalled");
}

// ---- the lifecycle of a mirrored SPSC ring's ends ----

#[test]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    match role.as_str() {
        // `writer <ring> <from> <to>`: writes records `from..to`, says `wrote <to>`, and holds
        // the producer until killed.
        "writer" => {
            let seg = SegmentBuilder::new(args.s(0))
                .open()
                .expect("open the ring");
            let mut tx = seg.producer().expect("producer");
            write_range(&mut tx, args.get(1)..args.get(2)).expect("write");
            say("wrote", args.s(2));
            wait_for_parent();
        }
        // `reader <copy> <from> <to>`: reads records `from..to` from the copy, says
        // `read <to>`, and holds the consumer until killed.
        "reader" => {
            let seg = open_when_there(args.s(0));
            let mut rx = seg.consumer().expect("consumer");
            read_range(&mut rx, args.get(1)..args.get(2));
            say("read", args.s(2));
            wait_for_parent();
        }
        other => panic!("unknown child role {other}"),
    }
}

fn record_len(i: u32) -> usize {
    4 + (i as usize * 7) % 300
}

/// Writes records `range` (each starts with its number) into `tx`; stops at the first record
/// it cannot write, returning its number and why.
fn write_range(
    tx: &mut Producer<ShmMemory>,
    range: std::ops::Range<u32>,
) -> Result<(), (u32, ClaimError)> {
    for i in range {
        let len = record_len(i);
        let mut grant = tx.claim_timeout(len, DEADLINE).map_err(|e| (i, e))?;
        grant[..4].copy_from_slice(&i.to_le_bytes());
        grant.commit(len);
    }
    Ok(())
}

/// Reads records `range` from `rx`: each once, in order.
fn read_range(rx: &mut Consumer<ShmMemory>, range: std::ops::Range<u32>) {
    for i in range {
        let record = rx.read_timeout(DEADLINE).expect("record");
        assert_eq!(record.len(), record_len(i), "record {i}");
        assert_eq!(u32::from_le_bytes(record[..4].try_into().unwrap()), i);
    }
}

/// The copy's reader reads everything, then learns that the writer is gone.
fn expect_writer_gone(rx: &mut Consumer<ShmMemory>) {
    match rx.read_timeout(DEADLINE) {
        Err(ReadError::PeerGone) => {}
        Ok(record) => panic!(
            "a record the writer did not write: record {}",
            u32::from_le_bytes(record[..4].try_into().unwrap())
        ),
        Err(e) => panic!("the copy's reader should see its writer gone: {e}"),
    }
}

/// Waits until the exporting bridge is (or is not) the ring's consumer.
fn wait_consumer_attached(seg: &Segment, attached: bool) {
    let start = Instant::now();
    while (seg.live_endpoints(1..2) == 1) != attached {
        assert!(
            start.elapsed() < DEADLINE,
            "the exporting bridge did not {} the ring",
            if attached { "attach to" } else { "detach from" }
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// How many producers have attached to the ring `name` so far.
fn producer_attachments(name: &str) -> u64 {
    let snapshot = shmesh_ring::inspect::SegmentFile::open(name)
        .and_then(|file| file.snapshot())
        .expect("inspect");
    snapshot.decode().endpoints[0].attach_count
}

/// Waits until the importing bridge is the copy's producer again: until then its reader
/// sees the writer gone, as a local reader does until a new writer takes over.
fn wait_producer_attached(copy: &Segment) {
    let start = Instant::now();
    while copy.live_endpoints(0..1) == 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the importing bridge did not attach to the copy again"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Faults on every link, lifecycle frames included: lost, repeated, reordered, damaged.
fn lifecycle_faults(seed: u64) -> Option<(FaultPlan, &'static Path)> {
    let plan = FaultPlan {
        drop: 0.03,
        duplicate: 0.03,
        reorder: 0.03,
        corrupt: 0.02,
        truncate: 0.02,
        delay: None,
        seed,
    };
    Some((plan, Path::new(".")))
}

/// A writer that detaches, then one that takes over and detaches too: the copy's reader reads
/// every record once, in order, and sees its writer gone each time, as with a local ring.
#[test]
fn a_writer_that_detaches_is_mirrored_and_a_new_writer_resumes() {
    writer_detaches_then_a_new_one_resumes("writer-detach", None);
}

#[test]
fn a_writer_that_detaches_is_mirrored_through_faulty_links() {
    writer_detaches_then_a_new_one_resumes("writer-detach-faults", lifecycle_faults(11));
}

fn writer_detaches_then_a_new_one_resumes(test: &str, faults: Option<(FaultPlan, &Path)>) {
    let src = unique(test);
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    // Small rings: the writer outruns the link, so records are still in flight when it goes.
    let seg = SegmentBuilder::new(&src)
        .capacity(1 << 12)
        .create()
        .unwrap();
    let (a, b) = configs(&src, &copy, free_port());
    let pair = Pair::start_with(&a, &b, faults);
    const FIRST: u32 = 1_000;
    const SECOND: u32 = 1_500;
    let mut tx = seg.producer().unwrap();
    let writer = thread::spawn(move || {
        write_range(&mut tx, 0..FIRST).expect("write");
        // Dropped: detached (a clean exit of the writer).
    });
    let copy_seg = open_when_there(&copy);
    let mut rx = copy_seg.consumer().unwrap();
    read_range(&mut rx, 0..FIRST);
    writer.join().unwrap();
    expect_writer_gone(&mut rx);
    pair.wait_logged(&["[host-a]", &src, "the writer is gone"]);
    pair.wait_logged(&["[host-b]", &src, "detached from the copy"]);

    // A new writer takes the ring over: mirroring goes on, into the same reader.
    let mut tx = seg.producer().unwrap();
    let writer = thread::spawn(move || write_range(&mut tx, FIRST..SECOND).expect("write"));
    wait_producer_attached(&copy_seg);
    read_range(&mut rx, FIRST..SECOND);
    writer.join().unwrap();
    expect_writer_gone(&mut rx);
    pair.wait_logged(&["[host-b]", &src, "a writer is back"]);
    let bridges = pair.stop();
    assert_eq!(bridges[1].stats().records_delivered, u64::from(SECOND));
    drop((rx, copy_seg));
    cleanup(&[&src, &copy]);
}

/// A writer process killed with SIGKILL, with every record it wrote still on the exporting
/// side: the copy's reader reads them all, then sees its writer gone; a new writer resumes.
#[test]
fn a_killed_writer_process_is_mirrored_after_its_last_record() {
    let src = unique("writer-kill");
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    // Large enough for all the killed writer's records: it is killed before any is read.
    let seg = SegmentBuilder::new(&src)
        .capacity(1 << 17)
        .create()
        .unwrap();
    const FIRST: u32 = 600;
    const SECOND: u32 = 900;
    let mut child = Proc::spawn("writer", &[&src, &0, &FIRST]);
    child.expect("wrote");
    child.kill();
    let (a, b) = configs(&src, &copy, free_port());
    let pair = Pair::start(&a, &b);
    let copy_seg = open_when_there(&copy);
    let mut rx = copy_seg.consumer().unwrap();
    read_range(&mut rx, 0..FIRST);
    expect_writer_gone(&mut rx);
    pair.wait_logged(&["[host-b]", &src, "detached from the copy"]);

    let mut tx = seg.producer().unwrap();
    write_range(&mut tx, FIRST..SECOND).expect("write");
    wait_producer_attached(&copy_seg);
    read_range(&mut rx, FIRST..SECOND);
    // The new writer is alive: nothing more, but no PeerGone either.
    assert!(matches!(
        rx.read_timeout(Duration::from_millis(300)),
        Err(ReadError::Timeout)
    ));
    drop(tx);
    expect_writer_gone(&mut rx);
    let bridges = pair.stop();
    assert_eq!(bridges[1].stats().records_delivered, u64::from(SECOND));
    drop((rx, copy_seg));
    cleanup(&[&src, &copy]);
}

/// The copy's reader goes (killed, then detached): each time the writer on the exporting side
/// gets PeerGone once its ring is full; a new reader resumes where the last one stopped, and
/// every record is read once, in order.
#[test]
fn a_reader_that_goes_makes_the_far_writer_see_it_and_a_new_reader_resumes() {
    reader_goes_then_a_new_one_resumes("reader-gone", None);
}

#[test]
fn a_reader_that_goes_is_mirrored_through_faulty_links() {
    reader_goes_then_a_new_one_resumes("reader-gone-faults", lifecycle_faults(13));
}

fn reader_goes_then_a_new_one_resumes(test: &str, faults: Option<(FaultPlan, &Path)>) {
    use std::sync::mpsc;
    let src = unique(test);
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    let seg = SegmentBuilder::new(&src)
        .capacity(1 << 12)
        .create()
        .unwrap();
    let (a, b) = configs(&src, &copy, free_port());
    let pair = Pair::start_with(&a, &b, faults);
    const N: u32 = 3_000;
    const K1: u32 = 400;
    const K2: u32 = 1_200;
    // The writer: on PeerGone it says where it stopped and waits for a go.
    let (gone_tx, gone_rx) = mpsc::channel::<u32>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let mut tx = seg.producer().unwrap();
    let writer = thread::spawn(move || {
        let mut from = 0;
        loop {
            match write_range(&mut tx, from..N) {
                Ok(()) => return tx,
                Err((i, ClaimError::PeerGone)) => {
                    gone_tx.send(i).unwrap();
                    go_rx.recv_timeout(DEADLINE).expect("a go");
                    from = i;
                }
                Err((i, e)) => panic!("record {i}: {e}"),
            }
        }
    });

    // A reader process reads the first records, and is killed.
    let mut child = Proc::spawn("reader", &[&copy, &0, &K1]);
    child.expect("read");
    child.kill();
    let stopped = gone_rx
        .recv_timeout(DEADLINE)
        .expect("the writer sees PeerGone");
    assert!(stopped > K1, "the writer stopped at {stopped}");
    pair.wait_logged(&["[host-b]", &src, "the copy's reader is gone"]);
    pair.wait_logged(&["[host-a]", &src, "detached from the ring"]);
    wait_consumer_attached(&seg, false);

    // A new reader: the exporting bridge attaches again, and the writer goes on.
    let copy_seg = open_when_there(&copy);
    let mut rx = copy_seg.consumer().unwrap();
    wait_consumer_attached(&seg, true);
    go_tx.send(()).unwrap();
    read_range(&mut rx, K1..K2);
    // This one detaches.
    drop(rx);
    let stopped = gone_rx
        .recv_timeout(DEADLINE)
        .expect("the writer sees PeerGone again");
    assert!(stopped > K2, "the writer stopped at {stopped}");
    wait_consumer_attached(&seg, false);

    let mut rx = copy_seg.consumer().unwrap();
    wait_consumer_attached(&seg, true);
    go_tx.send(()).unwrap();
    read_range(&mut rx, K2..N);
    let _tx = writer.join().unwrap();
    assert!(
        rx.read_timeout(Duration::from_millis(300)).is_err(),
        "a record arrived twice or from nowhere"
    );
    pair.wait_logged(&["[host-a]", &src, "a reader of the copy is back"]);
    let bridges = pair.stop();
    assert_eq!(bridges[1].stats().records_delivered, u64::from(N));
    drop((rx, copy_seg));
    cleanup(&[&src, &copy]);
}

/// Both bridges restart while the writer is gone: the restarted importer does not attach to
/// the copy again (its readers keep seeing their writer gone), and resumes from its delivery
/// state when a new writer comes.
#[test]
fn restarted_bridges_keep_a_copy_whose_writer_is_gone_without_a_writer() {
    let src = unique("writer-gone-restart");
    let copy = format!("{src}.copy");
    cleanup(&[&src, &copy]);
    let seg = SegmentBuilder::new(&src)
        .capacity(1 << 12)
        .create()
        .unwrap();
    let (a, b) = configs(&src, &copy, free_port());
    let pair = Pair::start(&a, &b);
    const FIRST: u32 = 500;
    const SECOND: u32 = 800;
    let mut tx = seg.producer().unwrap();
    let writer = thread::spawn(move || write_range(&mut tx, 0..FIRST).expect("write"));
    let copy_seg = open_when_there(&copy);
    let mut rx = copy_seg.consumer().unwrap();
    read_range(&mut rx, 0..FIRST);
    writer.join().unwrap();
    expect_writer_gone(&mut rx);
    pair.wait_logged(&["[host-b]", &src, "detached from the copy"]);
    drop(pair.stop());
    assert_eq!(copy_seg.live_endpoints(0..1), 0);
    let attached_before = producer_attachments(&copy);

    let pair = Pair::start(&a, &b);
    // The import resumed from its state (a copy is opened, and attached to unless its writer
    // is known gone, before the stream is up)...
    pair.wait_logged(&["[host-b]", &src, "mirroring (resumed at"]);
    // ... and the exporter said the writer is still gone.
    pair.wait_logged(&["[host-a]", &src, "the writer is gone"]);
    assert_eq!(
        producer_attachments(&copy),
        attached_before,
        "the restarted importer attached to a copy whose writer is gone"
    );
    expect_writer_gone(&mut rx);

    let mut tx = seg.producer().unwrap();
    let writer = thread::spawn(move || write_range(&mut tx, FIRST..SECOND).expect("write"));
    wait_producer_attached(&copy_seg);
    read_range(&mut rx, FIRST..SECOND);
    writer.join().unwrap();
    expect_writer_gone(&mut rx);
    assert_eq!(producer_attachments(&copy), attached_before + 1);
    let bridges = pair.stop();
    assert_eq!(
        bridges[1].stats().records_delivered,
        u64::from(SECOND - FIRST)
    );
    drop((rx, copy_seg));
    cleanup(&[&src, &copy]);
}

/// A bridge of protocol version 1 (before `Lifecycle` frames) is refused at its hello, with a
/// reason that names both versions, sent to it and logged.
#[test]
fn a_bridge_of_another_protocol_version_is_refused_saying_why() {
    use std::io::Read;
    let port = free_port();
    let (a, _) = configs(&unique("old-version"), "unused", port);
    let mut bridge = Bridge::new(&Config::parse(&a, Path::new("./t.toml")).unwrap()).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let old = wire::Hello {
        version: 1,
        name: "host-b".into(),
        imports: vec![],
    };
    let mut f = Vec::new();
    wire::encode(
        &mut f,
        wire::FrameType::Hello,
        0,
        0,
        0,
        &old.encode().unwrap(),
    )
    .unwrap();
    s.write_all(&f).unwrap();
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    let reason = loop {
        bridge.poll();
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => panic!("closed without a reason: {got:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
        if let Ok(header) = wire::decode_header(&got) {
            let len = wire::frame_len(&header);
            if got.len() >= len {
                let frame = wire::decode(&got[..len]).unwrap();
                assert_eq!(frame.header.kind, wire::FrameType::Close);
                break wire::Reason::decode(frame.payload).unwrap().text;
            }
        }
        assert!(start.elapsed() < DEADLINE, "no answer to the old hello");
        thread::sleep(Duration::from_millis(1));
    };
    let expected = format!(
        "protocol version 1 is not spoken here (this bridge speaks {})",
        wire::PROTOCOL_VERSION
    );
    assert!(reason.contains(&expected), "{reason}");
    assert!(reason.contains("same shmesh-bridge version"), "{reason}");
    let logged = bridge.take_events().iter().any(|e| {
        matches!(e, shmesh_bridge::Event::Disconnected { reason, .. } if reason.contains(&expected))
    });
    assert!(logged, "the refusal is logged");
}
