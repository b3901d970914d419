//! Two bridges in one process on loopback, driven by `poll` from two threads: the mirroring
//! protocol end to end over real TCP (plaintext here; TLS in `tls_mirror.rs`), without
//! namespaces. The local copies get other names (`local_name`), since both "hosts" share
//! /dev/shm here.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use shmesh_bridge::config::Config;
use shmesh_bridge::Bridge;
use shmesh_ring::{Segment, SegmentBuilder, SegmentKind};

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
    threads: Vec<thread::JoinHandle<Bridge>>,
}

impl Pair {
    fn start(a: &str, b: &str) -> Pair {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [a, b]
            .into_iter()
            .map(|text| {
                let config = Config::parse(text, Path::new("test.toml")).expect("config");
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut bridge = Bridge::new(&config).expect("bridge");
                    while !stop.load(Ordering::Relaxed) {
                        if bridge.poll() == 0 {
                            thread::sleep(Duration::from_micros(50));
                        }
                        for event in bridge.take_events() {
                            eprintln!("[{}] {event}", bridge.name());
                        }
                    }
                    bridge
                })
            })
            .collect();
        Pair { stop, threads }
    }

    fn stop(self) -> Vec<Bridge> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).collect()
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
    let seg = SegmentBuilder::new(&src).capacity(1 << 16).create().unwrap();
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
        assert!(version >= last, "the copy went back from {last} to {version}");
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
    assert_eq!(reader.snapshot().unwrap().1, src_reader.snapshot().unwrap().1);
    drop(writer);
    let bridges = pair.stop();
    assert!(bridges[1].stats().versions_delivered > 0);
    drop((reader, copy_seg));
    cleanup(&[&copy]);
}
