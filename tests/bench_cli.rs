//! `shmesh bench` end to end: runs the built binary, parses its JSON lines, checks their keys
//! and that the figures are sane. Never asserts a timing threshold.
//!
//! The benchmarks never run at once (see [`serial`]): two runs at once would put two spinning
//! processes on each pinned CPU and measure the scheduler.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a `shmesh` invocation may run before the test kills it and fails.
const DEADLINE: Duration = Duration::from_secs(180);

/// Held by each test that runs a benchmark, so that they run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shared-memory objects a `shmesh` process with this pid left behind: its segments are
/// named `bench.<pid>.*` (objects `/dev/shm/shmesh.bench.<pid>.*`), and the World jobs of
/// `shmesh bench allreduce` `bench-<pid>-<n>` (objects `/dev/shm/shmesh.world.bench-<pid>-*`).
fn segments_left_by(pid: u32) -> Vec<String> {
    let prefixes = [
        format!("shmesh.bench.{pid}."),
        format!("shmesh.world.bench-{pid}-"),
    ];
    std::fs::read_dir("/dev/shm")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `shmesh ARGS` with a deadline, and checks that it left nothing in /dev/shm, whether it
/// succeeded or not.
fn shmesh(args: &[&str]) -> Output {
    shmesh_env(args, &[])
}

/// [`shmesh`] with these environment variables set.
fn shmesh_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmesh"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the shmesh binary");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).map(|_| buf)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for shmesh") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shmesh {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let left = segments_left_by(child.id());
    assert!(
        left.is_empty(),
        "shmesh {args:?} left segments in /dev/shm: {left:?}"
    );
    Output {
        status,
        stdout: out.join().expect("stdout reader").expect("read stdout"),
        stderr: err.join().expect("stderr reader").expect("read stderr"),
    }
}

/// Runs a benchmark that must succeed and returns its JSON lines.
fn json_lines(args: &[&str]) -> Vec<Value> {
    let out = shmesh(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "shmesh {args:?} failed: {}\nstderr:\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nstdout:\n{stdout}"))
        })
        .collect()
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn uint(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

fn positive(v: &Value, key: &str) -> u64 {
    let n = uint(v, key);
    assert!(n > 0, "{key} is not positive in {v}");
    n
}

fn check_pingpong(lines: &[Value], transports: &[&str], size: u64, samples: u64) {
    check_pingpong_touch(lines, transports, size, samples, "all");
}

fn check_pingpong_touch(
    lines: &[Value],
    transports: &[&str],
    size: u64,
    samples: u64,
    touch: &str,
) {
    let expected: BTreeSet<&str> = [
        "bench",
        "transport",
        "size",
        "wait",
        "touch",
        "samples",
        "cl_ns",
        "p50_ns",
        "p99_ns",
        "p999_ns",
        "max_ns",
    ]
    .into();
    let seen: Vec<&str> = lines
        .iter()
        .map(|v| v["transport"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(seen, transports, "one line per transport, in order");
    for v in lines {
        assert_eq!(keys(v), expected, "{v}");
        assert_eq!(v["bench"], "pingpong", "{v}");
        assert_eq!(v["wait"], "spin", "{v}");
        assert_eq!(v["touch"], touch, "{v}");
        assert_eq!(uint(v, "size"), size, "{v}");
        assert_eq!(uint(v, "samples"), samples, "{v}");
        positive(v, "cl_ns");
        let p50 = positive(v, "p50_ns");
        let p99 = positive(v, "p99_ns");
        let p999 = positive(v, "p999_ns");
        let max = positive(v, "max_ns");
        assert!(
            p50 <= p99 && p99 <= p999 && p999 <= max,
            "percentiles out of order: {v}"
        );
    }
}

fn check_throughput(lines: &[Value], expected_rows: &[(&str, u64)]) {
    let expected: BTreeSet<&str> = [
        "bench",
        "transport",
        "size",
        "wait",
        "touch",
        "cl_ns",
        "msgs_per_s",
        "bytes_per_s",
    ]
    .into();
    let seen: Vec<(&str, u64)> = lines
        .iter()
        .map(|v| (v["transport"].as_str().unwrap_or("?"), uint(v, "size")))
        .collect();
    assert_eq!(
        seen, expected_rows,
        "one line per size and transport, sizes outer"
    );
    for v in lines {
        assert_eq!(keys(v), expected, "{v}");
        assert_eq!(v["bench"], "throughput", "{v}");
        assert_eq!(v["wait"], "spin", "{v}");
        positive(v, "cl_ns");
        let msgs = positive(v, "msgs_per_s");
        let bytes = positive(v, "bytes_per_s");
        // Rounded separately: allow one message's worth of rounding either way.
        let size = uint(v, "size");
        assert!(
            bytes.abs_diff(msgs * size) <= size,
            "bytes_per_s != msgs_per_s * size: {v}"
        );
    }
}

#[test]
fn pingpong_and_throughput_emit_sane_json_lines() {
    let _serial = serial();
    let transports = ["cacheline", "shm", "uds", "pipe", "tcp"];
    let lines = json_lines(&[
        "bench",
        "pingpong",
        "--transport",
        "cacheline,shm,uds,pipe,tcp",
        "--size",
        "64",
        "--iters",
        "2000",
        "--json",
    ]);
    check_pingpong(&lines, &transports, 64, 2000);

    let lines = json_lines(&[
        "bench",
        "throughput",
        "--transport",
        "shm,uds",
        "--size",
        "64,4096",
        "--iters",
        "20000",
        "--json",
    ]);
    check_throughput(
        &lines,
        &[("shm", 64), ("uds", 64), ("shm", 4096), ("uds", 4096)],
    );

    // Small and odd sizes carry what fits of the sequence number; the cacheline transport is
    // skipped by throughput.
    let lines = json_lines(&[
        "bench",
        "throughput",
        "--transport",
        "cacheline,pipe,tcp,shm",
        "--size",
        "3",
        "--iters",
        "3000",
        "--wait",
        "yield",
        "--json",
    ]);
    let seen: Vec<&str> = lines
        .iter()
        .map(|v| v["transport"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(seen, ["pipe", "tcp", "shm"]);
    assert!(lines
        .iter()
        .all(|v| v["wait"] == "yield" && uint(v, "size") == 3));

    let lines = json_lines(&[
        "bench",
        "pingpong",
        "--transport",
        "shm",
        "--size",
        "100000",
        "--iters",
        "50",
        "--wait",
        "futex",
        "--json",
    ]);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["wait"], "futex");
    assert_eq!(uint(&lines[0], "samples"), 50);

    let lines = json_lines(&["bench", "memcpy", "--size", "64,4096", "--json"]);
    assert_eq!(lines.len(), 2);
    for (v, size) in lines.iter().zip([64, 4096]) {
        assert_eq!(keys(v), ["bench", "bytes_per_s", "size"].into(), "{v}");
        assert_eq!(v["bench"], "memcpy");
        assert_eq!(uint(v, "size"), size);
        positive(v, "bytes_per_s");
    }
}

#[test]
fn the_table_is_the_default_output() {
    let _serial = serial();
    let out = shmesh(&[
        "bench",
        "pingpong",
        "--transport",
        "shm",
        "--size",
        "8",
        "--iters",
        "100",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    assert!(
        header.starts_with("transport") && header.contains("p99.9"),
        "{header}"
    );
    let row = lines.next().expect("a row");
    assert!(row.starts_with("shm") && row.contains("x)"), "{row}");
    assert!(lines.next().is_none(), "{stdout}");
}

#[test]
fn bad_options_fail_with_a_message() {
    let out = shmesh(&["bench", "pingpong", "--transport", "carrier-pigeon"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("carrier-pigeon"), "{stderr}");

    let out = shmesh(&["bench", "throughput", "--transport", "cacheline"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing to measure"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = shmesh(&["bench", "pingpong", "--size", "1G"]);
    assert!(!out.status.success());
}

/// A fresh private directory for a test's files, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("shmesh-test.{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().expect("a UTF-8 path").to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn touch_none_sends_untouched_messages_on_every_transport() {
    let _serial = serial();
    let transports = ["cacheline", "shm", "uds", "pipe", "tcp"];
    for size in ["64", "65536"] {
        let lines = json_lines(&[
            "bench",
            "pingpong",
            "--transport",
            "cacheline,shm,uds,pipe,tcp",
            "--size",
            size,
            "--iters",
            "500",
            "--touch",
            "none",
            "--json",
        ]);
        check_pingpong_touch(&lines, &transports, size.parse().unwrap(), 500, "none");
    }
    let lines = json_lines(&[
        "bench",
        "throughput",
        "--transport",
        "shm,uds",
        "--size",
        "3,4096",
        "--iters",
        "5000",
        "--touch",
        "none",
        "--json",
    ]);
    check_throughput(
        &lines,
        &[("shm", 3), ("uds", 3), ("shm", 4096), ("uds", 4096)],
    );
    assert!(lines.iter().all(|v| v["touch"] == "none"), "{lines:?}");

    let out = shmesh(&[
        "bench",
        "pingpong",
        "--transport",
        "shm",
        "--size",
        "8",
        "--iters",
        "100",
        "--touch",
        "none",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut table = stdout.lines();
    assert!(
        table.next().is_some_and(|h| h.contains("touch")),
        "{stdout}"
    );
    assert!(
        table.next().is_some_and(|r| r.contains(" none ")),
        "{stdout}"
    );
}

#[test]
fn plot_draws_the_results_of_real_runs() {
    let scratch = Scratch::new("plot");
    let results = scratch.path("results.jsonl");
    let svg = scratch.path("latency.svg");
    let mut jsonl = String::new();
    {
        let _serial = serial();
        for touch in ["all", "all", "none"] {
            let out = shmesh(&[
                "bench",
                "pingpong",
                "--transport",
                "cacheline,shm,uds",
                "--size",
                "64,4096",
                "--iters",
                "300",
                "--touch",
                touch,
                "--json",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            jsonl.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        // A throughput line among them is skipped.
        let out = shmesh(&[
            "bench",
            "throughput",
            "--transport",
            "shm",
            "--size",
            "64",
            "--iters",
            "1000",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        jsonl.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    std::fs::write(&results, &jsonl).expect("write the results");
    let out = shmesh(&["bench", "plot", "--input", &results, "--output", &svg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chart = std::fs::read_to_string(&svg).expect("the SVG file");
    assert!(chart.starts_with("<svg"), "{chart}");
    for text in [
        "cacheline (touch all)",
        "shm (touch all)",
        "uds (touch all)",
        "cacheline (touch none)",
        "shm (touch none)",
        "uds (touch none)",
        "message size",
        "p50 round trip",
        "median cl_ns",
    ] {
        assert!(chart.contains(text), "{text} is not in the chart");
    }

    // Bad input: an error naming the line, and no chart.
    std::fs::write(&results, format!("{jsonl}{{\"bench\":\"pingpong\"}}\n")).unwrap();
    let _ = std::fs::remove_file(&svg);
    let out = shmesh(&["bench", "plot", "--input", &results, "--output", &svg]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = jsonl.lines().count() + 1;
    assert!(stderr.contains(&format!("line {line}")), "{stderr}");
    assert!(std::fs::metadata(&svg).is_err(), "a chart was written");
    let out = shmesh(&["bench", "plot", "--input", &scratch.path("missing.jsonl")]);
    assert!(!out.status.success());
}

#[cfg(not(feature = "peers"))]
#[test]
fn peer_transports_say_how_to_build_them() {
    for transport in ["iceoryx2", "ipc-channel", "shm,iceoryx2"] {
        let out = shmesh(&["bench", "pingpong", "--transport", transport]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--features peers"), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "nothing is measured before the error"
        );
    }
}

/// The /dev/shm entries iceoryx2 made for this workspace's runs (`shmesh_iox2.*`).
#[cfg(feature = "peers")]
fn iceoryx2_files() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.starts_with("shmesh_iox2."))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(feature = "peers")]
#[test]
fn peers_measure_and_leave_nothing_behind() {
    let _serial = serial();
    let before = iceoryx2_files();
    let default_root = std::path::Path::new("/tmp/iceoryx2");
    let had_default_root = default_root.exists();
    for touch in ["all", "none"] {
        let lines = json_lines(&[
            "bench",
            "pingpong",
            "--transport",
            "iceoryx2,ipc-channel",
            "--size",
            "64,65536",
            "--iters",
            "500",
            "--touch",
            touch,
            "--json",
        ]);
        let seen: Vec<(&str, u64)> = lines
            .iter()
            .map(|v| (v["transport"].as_str().unwrap_or("?"), uint(v, "size")))
            .collect();
        // ipc-channel sends its fixed typed message once, with its encoded size.
        assert_eq!(
            seen,
            [("iceoryx2", 64), ("ipc-channel", 1017), ("iceoryx2", 65536)]
        );
        check_pingpong_touch(&lines[..1], &["iceoryx2"], 64, 500, touch);
        check_pingpong_touch(&lines[1..2], &["ipc-channel"], 1017, 500, touch);

        let lines = json_lines(&[
            "bench",
            "throughput",
            "--transport",
            "iceoryx2,ipc-channel",
            "--size",
            "64",
            "--iters",
            "20000",
            "--touch",
            touch,
            "--json",
        ]);
        check_throughput(&lines, &[("iceoryx2", 64), ("ipc-channel", 1017)]);
    }
    assert_eq!(
        iceoryx2_files(),
        before,
        "iceoryx2 files were left in /dev/shm"
    );
    assert!(
        had_default_root || !default_root.exists(),
        "iceoryx2's default root directory was used"
    );
}

/// The archived size of the bench's typed message (`BenchMessage`), as the typed transport
/// reports it.
fn typed_message_size() -> u64 {
    let msg = shmesh::bench::message::BenchMessage::new(0);
    rkyv::to_bytes::<rkyv::rancor::Error>(&msg).unwrap().len() as u64
}

#[test]
fn typed_measures_its_message_once_in_both_touch_modes() {
    let _serial = serial();
    let size = typed_message_size();
    for touch in ["all", "none"] {
        let lines = json_lines(&[
            "bench",
            "pingpong",
            "--transport",
            "shm,typed",
            "--size",
            "64,4096",
            "--iters",
            "500",
            "--touch",
            touch,
            "--json",
        ]);
        let seen: Vec<(&str, u64)> = lines
            .iter()
            .map(|v| (v["transport"].as_str().unwrap_or("?"), uint(v, "size")))
            .collect();
        // The typed message is measured once, with its archived size.
        assert_eq!(seen, [("shm", 64), ("typed", size), ("shm", 4096)]);
        check_pingpong_touch(&lines[1..2], &["typed"], size, 500, touch);

        let lines = json_lines(&[
            "bench",
            "throughput",
            "--transport",
            "typed",
            "--size",
            "64",
            "--iters",
            "20000",
            "--touch",
            touch,
            "--json",
        ]);
        check_throughput(&lines, &[("typed", size)]);
    }
}

/// Checks the throughput lines of the mpsc and broadcast transports: the common keys, then
/// `writers` (mpsc) or the per-reader keys (broadcast), with consistent figures.
fn check_fanned_out(v: &Value, peers: u64, policy: &str) {
    let common = [
        "bench",
        "transport",
        "size",
        "wait",
        "touch",
        "cl_ns",
        "msgs_per_s",
        "bytes_per_s",
    ];
    assert_eq!(v["bench"], "throughput", "{v}");
    positive(v, "cl_ns");
    // A lapped reader may receive next to nothing after the warm-up: its rate may be 0.
    let msgs = if policy == "lap" {
        uint(v, "msgs_per_s")
    } else {
        positive(v, "msgs_per_s")
    };
    let size = uint(v, "size");
    assert!(
        uint(v, "bytes_per_s").abs_diff(msgs * size) <= size,
        "bytes_per_s != msgs_per_s * size: {v}"
    );
    match v["transport"].as_str() {
        Some("mpsc") => {
            let expected: BTreeSet<&str> = common.iter().copied().chain(["writers"]).collect();
            assert_eq!(keys(v), expected, "{v}");
            assert_eq!(uint(v, "writers"), peers, "{v}");
        }
        Some("broadcast") => {
            let extra = [
                "readers",
                "policy",
                "per_reader_msgs_per_s",
                "min_reader_msgs_per_s",
                "lost",
            ];
            let expected: BTreeSet<&str> = common.iter().copied().chain(extra).collect();
            assert_eq!(keys(v), expected, "{v}");
            assert_eq!(uint(v, "readers"), peers, "{v}");
            assert_eq!(v["policy"], policy, "{v}");
            let rates: Vec<u64> = v["per_reader_msgs_per_s"]
                .as_array()
                .unwrap_or_else(|| panic!("per_reader_msgs_per_s is not an array in {v}"))
                .iter()
                .map(|r| r.as_u64().expect("a rate"))
                .collect();
            let lost: Vec<u64> = v["lost"]
                .as_array()
                .unwrap_or_else(|| panic!("lost is not an array in {v}"))
                .iter()
                .map(|r| r.as_u64().expect("a count"))
                .collect();
            assert_eq!(rates.len() as u64, peers, "{v}");
            assert_eq!(lost.len() as u64, peers, "{v}");
            let min = rates.iter().copied().min().unwrap_or(0);
            assert_eq!(uint(v, "min_reader_msgs_per_s"), min, "{v}");
            assert_eq!(msgs, min, "msgs_per_s is the slowest reader's: {v}");
            if policy == "block" {
                assert!(lost.iter().all(|&l| l == 0), "block loses nothing: {v}");
            }
        }
        other => panic!("not a fanned-out transport: {other:?} in {v}"),
    }
}

#[test]
fn mpsc_and_broadcast_measure_with_several_processes() {
    let _serial = serial();
    // Ping-pong: one writer and one reader per direction, like the other transports.
    let lines = json_lines(&[
        "bench",
        "pingpong",
        "--transport",
        "shm,mpsc,broadcast",
        "--size",
        "64",
        "--iters",
        "500",
        "--json",
    ]);
    check_pingpong(&lines[..2], &["shm", "mpsc"], 64, 500);
    let broadcast = &lines[2];
    assert_eq!(broadcast["transport"], "broadcast", "{broadcast}");
    assert_eq!(broadcast["policy"], "block", "{broadcast}");
    assert!(uint(broadcast, "p50_ns") <= uint(broadcast, "max_ns"));
    assert_eq!(uint(broadcast, "samples"), 500);

    // Throughput: 2 writers and 2 readers by default.
    let lines = json_lines(&[
        "bench",
        "throughput",
        "--transport",
        "shm,mpsc,broadcast",
        "--size",
        "64",
        "--iters",
        "5000",
        "--json",
    ]);
    let seen: Vec<&str> = lines
        .iter()
        .map(|v| v["transport"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(seen, ["shm", "mpsc", "broadcast"]);
    check_throughput(&lines[..1], &[("shm", 64)]);
    for v in &lines[1..] {
        check_fanned_out(v, 2, "block");
    }

    // Other counts, wait strategies and the lap policy (with large messages, readers may be
    // lapped: they say how many they lost).
    let lines = json_lines(&[
        "bench",
        "throughput",
        "--transport",
        "mpsc,broadcast",
        "--writers",
        "3",
        "--readers",
        "3",
        "--size",
        "64k",
        "--iters",
        "300",
        "--wait",
        "futex",
        "--policy",
        "lap",
        "--touch",
        "none",
        "--json",
    ]);
    assert_eq!(lines.len(), 2);
    for v in &lines {
        assert_eq!(v["wait"], "futex", "{v}");
        assert_eq!(v["touch"], "none", "{v}");
        assert_eq!(uint(v, "size"), 65536, "{v}");
        check_fanned_out(v, 3, "lap");
    }
    let lines = json_lines(&[
        "bench",
        "throughput",
        "--transport",
        "broadcast",
        "--readers",
        "1",
        "--size",
        "8",
        "--iters",
        "2000",
        "--wait",
        "yield",
        "--json",
    ]);
    check_fanned_out(&lines[0], 1, "block");

    // The table notes the peers after the common columns; --iters counts per writer, so the
    // reader of 2 writers times twice as many messages.
    let out = shmesh(&[
        "bench",
        "throughput",
        "--transport",
        "mpsc,broadcast",
        "--size",
        "64",
        "--iters",
        "2000",
        "--wait",
        "yield",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    let messages = |row: &str| row.split_whitespace().nth(5).map(str::to_owned);
    assert!(
        rows[0].starts_with("mpsc") && rows[0].contains("2 writers"),
        "{stdout}"
    );
    assert_eq!(messages(rows[0]).as_deref(), Some("4000"), "{stdout}");
    assert!(
        rows[1].starts_with("broadcast") && rows[1].contains("2 readers (block"),
        "{stdout}"
    );
    assert_eq!(messages(rows[1]).as_deref(), Some("2000"), "{stdout}");
}

#[test]
fn bad_fan_options_fail_with_a_clear_message() {
    for (args, says) in [
        (&["--transport", "mpsc", "--writers", "0"][..], "--writers"),
        (
            &["--transport", "broadcast", "--readers", "1000"],
            "--readers",
        ),
        (&["--transport", "broadcast", "--policy", "drop"], "drop"),
        (
            &["--transport", "shm", "--writers", "2"],
            "--writers applies to",
        ),
        (
            &["--transport", "mpsc", "--readers", "2"],
            "--readers applies to",
        ),
        (
            &["--transport", "uds", "--policy", "lap"],
            "--policy applies to",
        ),
        (&["--transport", "mpsc", "--size", "4"], "at least 8 bytes"),
    ] {
        let out = shmesh(&[&["bench", "throughput"][..], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing is measured");
    }
    let out = shmesh(&["bench", "pingpong", "--transport", "mpsc", "--writers", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("one writer and one reader per direction"),
        "{stderr}"
    );
}

#[test]
fn region_pingpong_measures_versions_both_ways() {
    let _serial = serial();
    let lines = json_lines(&[
        "bench",
        "pingpong",
        "--transport",
        "region,shm",
        "--size",
        "64",
        "--iters",
        "500",
        "--json",
    ]);
    check_pingpong(&lines, &["region", "shm"], 64, 500);
    // Odd and large sizes, both touch modes, every wait strategy.
    for (size, touch, wait) in [
        ("3", "all", "yield"),
        ("100000", "none", "futex"),
        ("1MiB", "all", "spin"),
    ] {
        let lines = json_lines(&[
            "bench",
            "pingpong",
            "--transport",
            "region",
            "--size",
            size,
            "--iters",
            "50",
            "--touch",
            touch,
            "--wait",
            wait,
            "--json",
        ]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v = &lines[0];
        assert_eq!(v["transport"], "region", "{v}");
        assert_eq!(v["touch"], touch, "{v}");
        assert_eq!(v["wait"], wait, "{v}");
        assert_eq!(uint(v, "samples"), 50, "{v}");
        assert_eq!(
            uint(v, "size"),
            shmesh::bench::parse_size(size).unwrap() as u64,
            "{v}"
        );
        assert!(uint(v, "p50_ns") <= uint(v, "max_ns"), "{v}");
    }
}

#[test]
fn region_has_no_throughput_and_says_what_to_use() {
    for transports in ["region", "shm,region"] {
        let out = shmesh(&["bench", "throughput", "--transport", transports]);
        assert!(!out.status.success(), "{transports}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no throughput")
                && stderr.contains("latest version")
                && stderr.contains("bench pingpong --transport region")
                && stderr.contains("bench snapshot"),
            "{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "nothing is measured before the error"
        );
    }
}

/// Checks the lines of one size of `shmesh bench snapshot --json`: memcpy first, then the
/// region rows asked for, with their keys and consistent figures.
fn check_snapshot(lines: &[Value], size: u64, transports: &[&str]) {
    let seen: Vec<&str> = lines
        .iter()
        .map(|v| v["transport"].as_str().unwrap_or("?"))
        .collect();
    let expected: Vec<&str> = ["memcpy"].iter().chain(transports).copied().collect();
    assert_eq!(seen, expected, "memcpy first, then idle before busy");
    let common = ["bench", "transport", "size", "cl_ns", "bytes_per_s"];
    let memcpy = positive(&lines[0], "bytes_per_s");
    let cl_ns = positive(&lines[0], "cl_ns");
    for v in lines {
        assert_eq!(v["bench"], "snapshot", "{v}");
        assert_eq!(uint(v, "size"), size, "{v}");
        assert_eq!(uint(v, "cl_ns"), cl_ns, "one probe per size: {v}");
        let bytes_per_s = positive(v, "bytes_per_s");
        let mut keys_expected: BTreeSet<&str> = common.into();
        match v["transport"].as_str() {
            Some("memcpy") => {}
            Some(transport) => {
                keys_expected.insert("vs_memcpy");
                let vs = v["vs_memcpy"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("vs_memcpy is not a number in {v}"));
                let ratio = bytes_per_s as f64 / memcpy as f64;
                assert!(
                    (vs - ratio).abs() <= 0.001 + ratio * 0.001,
                    "vs_memcpy {vs} is not bytes_per_s / memcpy's ({ratio}): {v}"
                );
                if transport == "region-busy" {
                    keys_expected.extend([
                        "interval_ns",
                        "publishes_per_s",
                        "snapshots",
                        "retries",
                    ]);
                    positive(v, "snapshots");
                    uint(v, "retries");
                    uint(v, "publishes_per_s");
                }
            }
            None => panic!("no transport in {v}"),
        }
        assert_eq!(keys(v), keys_expected, "{v}");
    }
}

#[test]
fn snapshot_compares_region_reads_with_memcpy() {
    let _serial = serial();
    let lines = json_lines(&["bench", "snapshot", "--size", "4096", "--json"]);
    check_snapshot(&lines, 4096, &["region", "region-busy"]);
    assert_eq!(
        uint(&lines[2], "interval_ns"),
        100_000,
        "the default interval"
    );
    // 7 timed runs of --iters snapshots.
    let lines = json_lines(&[
        "bench",
        "snapshot",
        "--size",
        "100,64k",
        "--transport",
        "region-busy,region",
        "--interval",
        "20us",
        "--iters",
        "200",
        "--json",
    ]);
    assert_eq!(lines.len(), 6, "{lines:?}");
    // Whatever the order asked: the writer is idle first.
    check_snapshot(&lines[..3], 100, &["region", "region-busy"]);
    check_snapshot(&lines[3..], 65536, &["region", "region-busy"]);
    for busy in [&lines[2], &lines[5]] {
        assert_eq!(uint(busy, "interval_ns"), 20_000, "{busy}");
        assert_eq!(uint(busy, "snapshots"), 7 * 200, "{busy}");
    }

    // The table: a header, then one row per figure, the busy writer noted after it.
    let out = shmesh(&["bench", "snapshot", "--size", "4k", "--iters", "100"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(
        rows[0].starts_with("transport") && rows[0].contains("vs memcpy"),
        "{stdout}"
    );
    assert!(rows[1].starts_with("memcpy"), "{stdout}");
    assert!(
        rows[2].starts_with("region ") && rows[2].ends_with('x'),
        "{stdout}"
    );
    assert!(
        rows[3].starts_with("region-busy") && rows[3].contains("writer every 100µs"),
        "{stdout}"
    );
}

#[test]
fn bad_snapshot_options_fail_with_a_message() {
    for (args, says) in [
        (&["--transport", "shm"][..], "shm"),
        (&["--transport", "memcpy"], "memcpy"),
        (&["--interval", "100"], "needs a unit"),
        (&["--interval", "5s"], "out of range"),
        (&["--size", "0"], "out of range"),
        (&["--iters", "0"], "--iters"),
    ] {
        let out = shmesh(&[&["bench", "snapshot"][..], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing is measured");
    }
}

/// The `shmesh-bridge` binary next to the `shmesh` under test, built first if missing (it is
/// another package of the workspace, which `cargo test -p shmesh` does not build).
fn bridge_binary() -> std::path::PathBuf {
    let shmesh = std::path::Path::new(env!("CARGO_BIN_EXE_shmesh"));
    let bridge = shmesh.with_file_name("shmesh-bridge");
    if !bridge.is_file() {
        let profile_dir = shmesh.parent().expect("the binary's directory");
        let target_dir = profile_dir.parent().expect("the target directory");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .args(["build", "-p", "shmesh-bridge", "--target-dir"])
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build -p shmesh-bridge");
        assert!(status.success(), "cargo build -p shmesh-bridge failed");
    }
    assert!(bridge.is_file(), "{} is missing", bridge.display());
    bridge
}

#[test]
fn bridge_bench_measures_the_bridge_and_tcp_between_two_hosts() {
    if !shmesh_testkit::netns::root_or_skip("bridge_bench_measures_the_bridge_and_tcp") {
        return;
    }
    bridge_binary();
    let _serial = serial();
    for tls in ["off", "on"] {
        let lines = json_lines(&[
            "bench", "bridge", "--size", "64", "--iters", "200", "--tls", tls, "--json",
        ]);
        let want = |bench: &str, transport: &str| {
            let found: Vec<&Value> = lines
                .iter()
                .filter(|v| v["bench"] == bench && v["transport"] == transport)
                .collect();
            assert_eq!(found.len(), 1, "one {bench} {transport} line in {lines:?}");
            let v = found[0];
            assert_eq!(v["size"], 64, "{v}");
            assert_eq!(v["tls"], tls == "on", "{v}");
            assert_eq!(v["idle"], "backoff", "{v}");
            positive(v, "cl_ns");
            v
        };
        for transport in ["bridge", "tcp"] {
            let t = want("throughput", transport);
            let expected: BTreeSet<&str> = [
                "bench",
                "transport",
                "size",
                "wait",
                "touch",
                "cl_ns",
                "msgs_per_s",
                "bytes_per_s",
                "tls",
                "idle",
            ]
            .into();
            assert_eq!(keys(t), expected, "{t}");
            // Both are rounded from the same rate.
            let (m, b) = (positive(t, "msgs_per_s"), positive(t, "bytes_per_s"));
            assert!(b.abs_diff(m * 64) <= 64, "{t}");
            let p = want("pingpong", transport);
            assert_eq!(uint(p, "samples"), 200, "{p}");
            let (p50, p99, p999, max) = (
                positive(p, "p50_ns"),
                positive(p, "p99_ns"),
                positive(p, "p999_ns"),
                positive(p, "max_ns"),
            );
            assert!(p50 <= p99 && p99 <= p999 && p999 <= max, "{p}");
        }
        assert_eq!(lines.len(), 4, "{lines:?}");
    }
}

/// Whether Open MPI's `mpicc` and `mpirun` are on the PATH (then `shmesh bench allreduce`
/// measures it too). CI installs them and sets `SHMESH_REQUIRE_MPI=1`, so that the openmpi
/// rows cannot be skipped unnoticed there.
fn have_mpi() -> bool {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    let found = on_path("mpicc") && on_path("mpirun");
    if !found {
        assert_ne!(
            std::env::var("SHMESH_REQUIRE_MPI").as_deref(),
            Ok("1"),
            "SHMESH_REQUIRE_MPI=1 but mpicc or mpirun is not on the PATH (install openmpi-bin \
             and libopenmpi-dev)"
        );
        eprintln!("note: Open MPI is not installed: only the shmesh rows are checked");
    }
    found
}

/// Checks the rows of `shmesh bench allreduce` or `world-pingpong`: one per transport, in
/// order, with exactly the documented keys and sane figures.
fn check_world(
    lines: &[Value],
    bench: &str,
    ranks: u64,
    size: u64,
    iters: u64,
    transports: &[&str],
) {
    let expected: BTreeSet<&str> = [
        "bench",
        "transport",
        "ranks",
        "size",
        "iters",
        "cl_ns",
        "p50_ns",
        "p99_ns",
        "p999_ns",
        "max_ns",
    ]
    .into();
    let seen: Vec<&str> = lines
        .iter()
        .map(|v| v["transport"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        seen, transports,
        "one line per transport, in order: {lines:?}"
    );
    for v in lines {
        assert_eq!(keys(v), expected, "{v}");
        assert_eq!(v["bench"], bench, "{v}");
        assert_eq!(uint(v, "ranks"), ranks, "{v}");
        assert_eq!(uint(v, "size"), size, "{v}");
        assert_eq!(uint(v, "iters"), iters, "{v}");
        positive(v, "cl_ns");
        let p50 = positive(v, "p50_ns");
        let p99 = positive(v, "p99_ns");
        let p999 = positive(v, "p999_ns");
        let max = positive(v, "max_ns");
        assert!(
            p50 <= p99 && p99 <= p999 && p999 <= max,
            "percentiles out of order: {v}"
        );
    }
}

#[test]
fn allreduce_and_world_pingpong_measure_shmesh_and_openmpi() {
    let _serial = serial();
    let transports: &[&str] = if have_mpi() {
        &["shmesh", "openmpi"]
    } else {
        &["shmesh"]
    };
    let lines = json_lines(&[
        "bench",
        "allreduce",
        "--ranks",
        "2",
        "--size",
        "8",
        "--iters",
        "50",
        "--json",
    ]);
    check_world(&lines, "allreduce", 2, 8, 50, transports);
    let lines = json_lines(&[
        "bench",
        "world-pingpong",
        "--size",
        "8",
        "--iters",
        "50",
        "--json",
    ]);
    check_world(&lines, "world-pingpong", 2, 8, 50, transports);

    // Three ranks (more than some machines' CPUs), a size that is not whole f64s: the row
    // says the bytes reduced.
    let lines = json_lines(&[
        "bench",
        "allreduce",
        "--ranks",
        "3",
        "--size",
        "20",
        "--iters",
        "20",
        "--transport",
        "shmesh",
        "--json",
    ]);
    check_world(&lines, "allreduce", 3, 16, 20, &["shmesh"]);

    // The table, with the ratio line when both were measured.
    let out = shmesh(&["bench", "world-pingpong", "--size", "64", "--iters", "20"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("bench") && lines[0].contains("ranks"),
        "{stdout}"
    );
    assert!(lines[1].starts_with("world-pingpong shmesh"), "{stdout}");
    if transports.len() == 2 {
        assert!(lines[2].starts_with("world-pingpong openmpi"), "{stdout}");
        assert!(
            lines[3].starts_with("  shmesh/openmpi, 2 ranks, 64 B: p50 "),
            "{stdout}"
        );
        assert_eq!(lines.len(), 4, "{stdout}");
    } else {
        assert_eq!(lines.len(), 2, "{stdout}");
    }
}

#[test]
fn without_open_mpi_the_openmpi_rows_are_skipped_or_refused() {
    let _serial = serial();
    // A PATH without mpirun and mpicc (the ranks are this executable, found without PATH).
    let no_mpi = [("PATH", "/nonexistent")];
    let args = [
        "bench",
        "allreduce",
        "--ranks",
        "2",
        "--size",
        "8",
        "--iters",
        "10",
        "--json",
    ];
    let out = shmesh_env(&args, &no_mpi);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("openmpi rows are skipped") && stderr.contains("openmpi-bin"),
        "{stderr}"
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    check_world(&lines, "allreduce", 2, 8, 10, &["shmesh"]);

    let out = shmesh_env(&[&args[..], &["--transport", "openmpi"]].concat(), &no_mpi);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--transport openmpi needs Open MPI's mpicc and mpirun")
            && stderr.contains("apt-get install openmpi-bin libopenmpi-dev"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_world_options_fail_with_a_message() {
    for (args, needle) in [
        (&["bench", "allreduce", "--ranks", "0"][..], "--ranks"),
        (&["bench", "allreduce", "--ranks", "65"], "--ranks"),
        (&["bench", "allreduce", "--transport", "mpich"], "mpich"),
        (&["bench", "world-pingpong", "--ranks", "4"], "--ranks"),
        (&["bench", "world-pingpong", "--size", "0"], "out of range"),
    ] {
        let out = shmesh(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
