//! `shmesh ls`, `inspect`, `stat`, `rm` and `gc`, run as a user runs them (the `shmesh`
//! binary), on segments held by real processes.
//!
//! Each test runs this test binary again as its child processes (`shmesh-testkit`): the
//! `child_entry` test plays the role named in `SHMESH_TEST_CHILD` and does nothing otherwise.
//! Every wait has a deadline, every child is killed when its test ends, every segment name is
//! unique (`clitools-<pid>-<test>-<n>`), and `gc` runs only with `--prefix` of the test's own
//! names (a bare `gc` would remove other tests' deliberately abandoned segments).
//!
//! | test | what it shows |
//! |------|---------------|
//! | `ls_shows_live_then_dead_endpoints_and_gc_removes_only_the_dead` | a live SPSC ring: both endpoints alive with their pids and the counters of N messages; `rm` refuses it listing the pids, `gc` keeps it; after SIGKILL: dead, `gc --dry-run` lists and keeps it, `gc` removes it |
//! | `gc_and_rm_racing_creates_never_remove_a_live_segment` | a process creating the name over and over (over abandoned leftovers too) while another runs `gc` and `rm`: its segment is never the one removed |
//! | `inspect_decodes_every_field_of_each_kind` | SPSC, MPSC and broadcast rings, every header field |
//! | `inspect_calls_out_each_scribbled_field` | bad magic, wrong version, capacity, data offset, unknown kind, truncated files: each problem, in `inspect` and `ls`, and `gc` removes only the unheld ones |
//! | `rm_refuses_what_is_in_use_and_removes_what_is_not` | a handle without endpoint, a missing name, an invalid name |
//! | `stat_reports_rates_of_a_running_writer_and_ends_when_it_vanishes` | non-zero rates in JSON and plain lines; a vanished segment ends `stat` with a clear error |
//! | `regions_are_listed_with_their_version_and_removed_only_once_their_writer_died` | a region written by a live process: `ls` (JSON and table) shows kind, size, version and the writer; `inspect` its shape, buffers, writer and history; `rm` refuses naming the writer's pid, `gc` keeps it; after SIGKILL: dead writer, `gc` removes it |
//! | `inspect_calls_out_a_scribbled_region` | a region's stored stride and latest buffer word scribbled: each a problem in `inspect` and `ls`; a region nobody holds is removed by `rm` |
//! | `stat_reports_versions_per_second_of_a_region` | versions per second and chunks per version, JSON and plain |

use std::fmt::Display;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use shmesh_ring::layout::{self, MAGIC};
use shmesh_ring::{BroadcastPolicy, SegmentBuilder, SegmentError, SegmentKind};
use shmesh_testkit::{
    arm_child_lifetime, say, stop_flag, wait_for_parent, Proc, Watchdog, CHILD_ENV, DEADLINE,
};

/// How long one test may run before its watchdog aborts the binary.
const TEST_LIMIT: Duration = Duration::from_secs(300);
/// Ring capacity of the tests' segments.
const CAP: u64 = 1 << 16;

// ---- names and the binary ----

/// A segment name unique to this process and test; removes a leftover object on drop.
struct Name(String);

impl Name {
    fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Name(format!("{}{test}-{n}", prefix()))
    }

    fn path(&self) -> PathBuf {
        shm_path(&self.0)
    }
}

impl Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path());
    }
}

/// The prefix of every name of this test process.
fn prefix() -> String {
    format!("clitools-{}-", std::process::id())
}

fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/shmesh.{name}"))
}

/// Runs `shmesh args...` to its end, within [`DEADLINE`] (killed and failed after).
fn shmesh(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_shmesh"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shmesh");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wait for shmesh"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!(
                "`shmesh {}` did not end within {DEADLINE:?}",
                args.join(" ")
            );
        }
    }
}

/// Runs `shmesh args...` and fails unless it succeeds; returns its stdout.
#[track_caller]
fn shmesh_ok(args: &[&str]) -> String {
    let out = shmesh(args);
    assert!(
        out.status.success(),
        "`shmesh {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `shmesh args...` and fails unless it fails; returns its stderr.
#[track_caller]
fn shmesh_err(args: &[&str]) -> String {
    let out = shmesh(args);
    assert!(
        !out.status.success(),
        "`shmesh {}` succeeded, expected a failure: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("UTF-8 output")
}

/// The `ls --json` record of `name`, if listed.
fn ls_record(name: &Name) -> Option<Value> {
    shmesh_ok(&["ls", "--json", "--prefix", &name.0])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("ls --json line"))
        .find(|v| v["name"] == name.0.as_str())
}

fn inspect_json(name: &Name) -> Value {
    serde_json::from_str(&shmesh_ok(&["inspect", "--json", &name.0])).expect("inspect --json")
}

/// The `field`s of the problems of an `inspect --json` record.
fn problem_fields(v: &Value) -> Vec<String> {
    v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["field"].as_str().expect("field").to_owned())
        .collect()
}

/// The endpoint of `role` in an `ls --json` record.
fn endpoint<'a>(v: &'a Value, role: &str) -> &'a Value {
    v["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["role"] == role)
        .unwrap_or_else(|| panic!("no {role} in {v}"))
}

// ---- child roles ----

/// Payload bytes of the messages of the ls test.
const LEN: usize = 48;

#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    arm_child_lifetime();
    let args: Vec<&str> = spec.split(' ').collect();
    match args.as_slice() {
        ["producer", name, n] => producer(name, n.parse().unwrap()),
        ["consumer", name, n] => consumer(name, n.parse().unwrap()),
        ["stream", name] => stream(name),
        ["creator-loop", name] => creator_loop(name),
        ["region-writer", name, n] => region_writer(name, n.parse().unwrap()),
        ["region-stream", name] => region_stream(name),
        other => panic!("unknown child role {other:?}"),
    }
}

/// Creates an SPSC ring, writes `n` messages of [`LEN`] bytes, waits for the parent.
fn producer(name: &str, n: usize) {
    let seg = SegmentBuilder::new(name).capacity(CAP).create().unwrap();
    let mut tx = seg.producer().unwrap();
    say("created", "");
    for i in 0..n {
        let mut grant = tx.claim(LEN).unwrap();
        grant.fill(i as u8);
        grant.commit(LEN);
    }
    say("written", n);
    wait_for_parent();
}

/// The regions of these tests: [`REGION_SIZE`] bytes in 64 chunks of 64 bytes, 3 buffers,
/// history 8.
fn create_region(name: &str) -> shmesh_ring::Segment {
    SegmentBuilder::new(name)
        .kind(SegmentKind::Region)
        .capacity(REGION_SIZE)
        .buffers(3)
        .chunk_size(64)
        .history(8)
        .create()
        .unwrap()
}

/// Bytes of the test regions.
const REGION_SIZE: u64 = 4096;

/// Publishes the next version of a test region: version `v` changes chunks `v % 64` and
/// `(v + 3) % 64`, two chunks each.
fn publish_next(writer: &mut shmesh_ring::region::Writer<shmesh_ring::ShmRegion>) -> u64 {
    let v = writer.version() + 1;
    let mut scope = writer.write();
    scope.write_at((v % 64) as usize * 64, &v.to_le_bytes());
    scope.write_at(((v + 3) % 64) as usize * 64, &v.to_le_bytes());
    scope.publish()
}

/// Creates a region, publishes `n` versions as its writer, then begins version `n + 1` and
/// waits for the parent inside that write scope.
fn region_writer(name: &str, n: u64) {
    let seg = create_region(name);
    let mut writer = seg.region_writer().unwrap();
    for _ in 0..n {
        publish_next(&mut writer);
    }
    let mut scope = writer.write();
    scope.write_at(0, b"never published");
    say("published", n);
    wait_for_parent();
    drop(scope);
}

/// Creates a region and publishes versions until the parent says stop.
fn region_stream(name: &str) {
    let seg = create_region(name);
    let mut writer = seg.region_writer().unwrap();
    let stop = stop_flag();
    say("ready", "");
    while !stop.load(Ordering::Acquire) {
        publish_next(&mut writer);
        thread::sleep(Duration::from_micros(500));
    }
}

/// Reads `n` messages of the ring `name`, waits for the parent.
fn consumer(name: &str, n: usize) {
    let seg = SegmentBuilder::new(name).open().unwrap();
    let mut rx = seg.consumer().unwrap();
    for i in 0..n {
        let record = rx.read_timeout(DEADLINE).unwrap();
        assert_eq!(record.len(), LEN);
        assert!(record.iter().all(|&b| b == i as u8));
    }
    say("read", n);
    wait_for_parent();
}

/// Creates a ring and writes and reads through it until the parent says stop.
fn stream(name: &str) {
    let seg = SegmentBuilder::new(name).capacity(CAP).create().unwrap();
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    let stop = stop_flag();
    say("ready", "");
    while !stop.load(Ordering::Acquire) {
        for _ in 0..64 {
            tx.claim(64).unwrap().commit(64);
            drop(rx.read().unwrap());
        }
        // Leave the second CPU to `stat` now and then.
        thread::sleep(Duration::from_micros(200));
    }
}

/// The inode of the mapping of `/dev/shm/shmesh.<name>` in this process, and whether the
/// kernel says its name was removed.
fn mapped_inode(name: &str) -> Option<(u64, bool)> {
    let path = shm_path(name);
    let path = path.to_str().unwrap();
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().find_map(|line| {
        let at = line.find(path)?;
        let rest = &line[at + path.len()..];
        // Another name that starts with ours.
        if !(rest.is_empty() || rest == " (deleted)") {
            return None;
        }
        let inode = line.split_whitespace().nth(4)?.parse().ok()?;
        Some((inode, rest == " (deleted)"))
    })
}

/// Creates `name` over and over while the parent runs `gc` and `rm`; after each create, and
/// while holding it with a live producer, checks that the name still refers to its own object.
/// Every other round first leaves an abandoned object of the name (as a crashed creator
/// would), for `create` and `gc` to race on; every fourth waits until `gc` removed it.
fn creator_loop(name: &str) {
    let path = shm_path(name);
    let stop = stop_flag();
    let plant = || {
        // Abandoned: no process holds it (a creator that died before writing the header).
        if let Ok(file) = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            file.write_all_at(&[0x5a; 64], 0).unwrap();
        }
    };
    let (mut rounds, mut violations, mut removed_by_gc, mut busy) = (0u64, 0u64, 0u64, 0u64);
    plant();
    say("planted", "");
    while !stop.load(Ordering::Acquire) {
        if rounds % 4 == 0 {
            // Wait until the parent's gc or rm removes the leftover (or we are told to stop).
            let deadline = Instant::now() + DEADLINE;
            while path.exists() && !stop.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "nobody removed the leftover");
                thread::sleep(Duration::from_millis(1));
            }
            if !path.exists() {
                removed_by_gc += 1;
            }
        }
        let deadline = Instant::now() + DEADLINE;
        let seg = loop {
            match SegmentBuilder::new(name).capacity(4096).create() {
                Ok(seg) => break seg,
                // A gc holds the abandoned object exclusively while it removes it.
                Err(SegmentError::AlreadyExists { .. }) if Instant::now() < deadline => {
                    busy += 1;
                    thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("create: {e}"),
            }
        };
        let _tx = seg.producer().unwrap();
        let (ours, deleted) = mapped_inode(name).expect("our own mapping");
        for _ in 0..10 {
            let named = fs::metadata(&path).map(|m| m.ino()).ok();
            let mapped = mapped_inode(name);
            if deleted || named != Some(ours) || mapped != Some((ours, false)) {
                eprintln!(
                    "VIOLATION in round {rounds}: our object {ours}, the name refers to \
                     {named:?}, our mapping {mapped:?}"
                );
                violations += 1;
            }
            thread::sleep(Duration::from_millis(1));
        }
        drop(_tx);
        drop(seg);
        rounds += 1;
        if rounds % 2 == 0 {
            plant();
        }
    }
    say("rounds", rounds);
    say("violations", violations);
    say("removed", removed_by_gc);
    say("busy", busy);
}

// ---- tests ----

#[test]
fn ls_shows_live_then_dead_endpoints_and_gc_removes_only_the_dead() {
    let _w = Watchdog::new("ls_shows_live_then_dead", TEST_LIMIT);
    const N: u64 = 100;
    let name = Name::new("ls");
    let mut producer = Proc::spawn("producer", &[&name, &N]);
    producer.expect("created");
    let mut consumer = Proc::spawn("consumer", &[&name, &N]);
    assert_eq!(producer.expect("written"), N.to_string());
    assert_eq!(consumer.expect("read"), N.to_string());

    let v = ls_record(&name).expect("the segment is listed");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["kind"], "spsc");
    assert_eq!(v["message_type"], "bytes");
    assert_eq!(v["capacity"], CAP);
    assert_eq!(v["fill_bytes"], 0);
    assert_eq!(v["in_use"], true);
    assert_eq!(v["creator_pid"], producer.pid());
    assert!(v["age_s"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["messages"], N);
    assert_eq!(v["bytes"], N * LEN as u64);
    assert_eq!(v["read_messages"], N);
    assert_eq!(v["read_bytes"], N * LEN as u64);
    assert_eq!(v["endpoints_alive"], 2);
    let (p, c) = (endpoint(&v, "producer"), endpoint(&v, "consumer"));
    assert_eq!(p["pid"], producer.pid());
    assert_eq!(p["status"], "alive");
    assert_eq!(p["slot"], 0);
    assert_eq!(c["pid"], consumer.pid());
    assert_eq!(c["status"], "alive");
    assert_eq!(c["slot"], 1);
    assert_eq!(p["messages"], N);
    assert_eq!(c["messages"], N);

    let table = shmesh_ok(&["ls", "--prefix", &name.0]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        !table.contains("VERSION"),
        "no region listed, no VERSION column: {table}"
    );
    let row = table.lines().find(|l| l.starts_with(&name.0)).expect("row");
    assert!(
        row.contains(&format!("producer {} alive", producer.pid()))
            && row.contains(&format!("consumer {} alive", consumer.pid()))
            && row.contains("spsc")
            && row.contains(&N.to_string()),
        "{row}"
    );

    // Live: rm refuses, naming the endpoints; gc keeps it.
    let err = shmesh_err(&["rm", &name.0]);
    assert!(
        err.contains("live endpoints")
            && err.contains(&format!("pid {}", producer.pid()))
            && err.contains(&format!("pid {}", consumer.pid())),
        "{err}"
    );
    let gc = shmesh_ok(&["gc", "--prefix", &name.0]);
    assert!(!gc.contains("removed clitools"), "{gc}");
    assert!(gc.contains("kept 1 in use"), "{gc}");
    assert!(name.path().exists());

    // SIGKILL: no unlink ran, the kernel released the tokens.
    producer.kill();
    consumer.kill();
    let v = ls_record(&name).expect("still listed");
    assert_eq!(v["in_use"], false);
    assert_eq!(v["endpoints_alive"], 0);
    assert_eq!(endpoint(&v, "producer")["status"], "dead");
    assert_eq!(endpoint(&v, "consumer")["status"], "dead");
    assert_eq!(v["messages"], N, "counters survive their processes");

    let dry = shmesh_ok(&["gc", "--dry-run", "--prefix", &name.0]);
    assert!(dry.contains(&format!("would remove {}", name.0)), "{dry}");
    assert!(
        dry.contains(&format!("producer pid {} dead", producer.pid())),
        "{dry}"
    );
    assert!(name.path().exists(), "a dry run removes nothing");

    let gc = shmesh_ok(&["gc", "--prefix", &name.0]);
    assert!(gc.contains(&format!("removed {}", name.0)), "{gc}");
    assert!(!name.path().exists());
    assert!(ls_record(&name).is_none());
}

#[test]
fn gc_and_rm_racing_creates_never_remove_a_live_segment() {
    let _w = Watchdog::new("gc_and_rm_racing_creates", TEST_LIMIT);
    let name = Name::new("race");
    let mut creator = Proc::spawn("creator-loop", &[&name]);
    creator.expect("planted");
    let (mut gc_runs, mut rm_removed, mut rm_refused) = (0, 0, 0);
    for i in 0..200 {
        if i % 2 == 0 {
            shmesh_ok(&["gc", "--prefix", &name.0]);
            gc_runs += 1;
        } else {
            let out = shmesh(&["rm", &name.0]);
            if out.status.success() {
                rm_removed += 1;
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("live endpoints")
                        || err.contains("in use")
                        || err.contains("does not exist"),
                    "rm failed otherwise: {err}"
                );
                rm_refused += 1;
            }
        }
    }
    creator.close_stdin();
    let rounds: u64 = creator.expect("rounds").parse().unwrap();
    let violations: u64 = creator.expect("violations").parse().unwrap();
    let removed: u64 = creator.expect("removed").parse().unwrap();
    let busy = creator.expect("busy");
    creator.wait_success();
    eprintln!(
        "{rounds} create rounds ({busy} creates retried), {gc_runs} gc runs, rm: {rm_removed} \
         removed, {rm_refused} refused; {removed} leftovers removed by the tools"
    );
    assert_eq!(violations, 0, "a live segment was removed");
    assert!(rounds >= 1, "the creator never held the name");
    assert!(
        removed >= 1,
        "no abandoned leftover was removed by gc or rm"
    );
    assert!(rm_refused >= 1, "rm never met the live segment");
}

/// Writes `value` at `off` of the object of `name` (we own it: a scribbler of the same user).
fn scribble(name: &Name, off: u64, value: &[u8]) {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(name.path())
        .unwrap();
    file.write_all_at(value, off).unwrap();
}

#[test]
fn inspect_decodes_every_field_of_each_kind() {
    let _w = Watchdog::new("inspect_decodes_every_field", TEST_LIMIT);
    let spsc = Name::new("inspect-spsc");
    let seg = SegmentBuilder::new(&spsc.0)
        .capacity(CAP)
        .schema([1, 2, 3, u64::MAX])
        .schema_text("demo::Msg v1")
        .start_position(4096)
        .create()
        .unwrap();
    let v = inspect_json(&spsc);
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["in_use"], true);
    assert_eq!(v["size"], seg.total_size());
    let h = &v["header"];
    assert_eq!(h["magic"], format!("{MAGIC:#018x}"));
    assert_eq!(h["layout_version"], layout::LAYOUT_VERSION);
    assert_eq!(h["kind_code"], 1);
    assert_eq!(h["kind"], "spsc");
    assert_eq!(h["total_size"], seg.total_size());
    assert_eq!(h["capacity"], CAP);
    assert_eq!(h["data_offset"], layout::DATA_OFFSET);
    assert_eq!(h["creator_pid"], std::process::id());
    assert_eq!(h["slot_count"], 2);
    assert!(h["creator_start_time"].as_u64().unwrap() > 0);
    let created = h["created_unix_ns"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(created > 0 && created <= now);
    assert_eq!(
        h["schema"],
        "000000000000000100000000000000020000000000000003ffffffffffffffff"
    );
    assert_eq!(h["policy"], 0);
    assert_eq!(h["history"], 0);
    assert_eq!(h["reserved"], serde_json::json!([0, 0, 0]));
    assert_eq!(v["schema"]["text"], "demo::Msg v1");
    assert_eq!(v["schema"]["rejections"], 0);
    assert_eq!(v["control"]["tail"], 4096);
    assert_eq!(v["control"]["head"], 4096);
    assert_eq!(v["control"]["fill_bytes"], 0);
    assert!(v["broadcast"].is_null());
    let slots = v["endpoints"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    assert!(slots
        .iter()
        .all(|s| s["status"] == "free" && s["token"] == false));

    let report = shmesh_ok(&["inspect", &spsc.0]);
    for line in [
        "magic",
        "layout version     3",
        "kind               1 (spsc ring)",
        "data offset        1544 (expected 1544)",
        "\"demo::Msg v1\"",
        "valid: no problems found",
    ] {
        assert!(report.contains(line), "{line:?} missing from\n{report}");
    }

    let mpsc = Name::new("inspect-mpsc");
    let _m = SegmentBuilder::new(&mpsc.0)
        .kind(SegmentKind::MpscRing)
        .capacity(CAP)
        .endpoints(5)
        .create()
        .unwrap();
    let v = inspect_json(&mpsc);
    assert_eq!(v["valid"], true, "{v}");
    let h = &v["header"];
    assert_eq!(h["kind_code"], 3);
    assert_eq!(h["kind"], "mpsc");
    assert_eq!(h["slot_count"], 7);
    assert_eq!(h["data_offset"], layout::data_offset(7, 0));
    let slots = v["endpoints"].as_array().unwrap();
    assert_eq!(slots.len(), 7);
    assert_eq!(slots[1]["role"], "consumer");
    assert!(slots[2..].iter().all(|s| s["role"] == "writer"));
    assert!(v["broadcast"].is_object());
    let listed = ls_record(&mpsc).unwrap();
    assert_eq!(listed["kind"], "mpsc");
    assert_eq!(listed["valid"], true);
    assert_eq!(
        listed["endpoints"],
        serde_json::json!([]),
        "no endpoint attached yet"
    );

    let bcast = Name::new("inspect-bcast");
    let _b = SegmentBuilder::new(&bcast.0)
        .kind(SegmentKind::BroadcastRing)
        .capacity(CAP)
        .endpoints(3)
        .policy(BroadcastPolicy::Lap)
        .history(16)
        .create()
        .unwrap();
    let v = inspect_json(&bcast);
    assert_eq!(v["valid"], true, "{v}");
    let h = &v["header"];
    assert_eq!(h["kind_code"], 4);
    assert_eq!(h["kind"], "broadcast");
    assert_eq!(h["policy"], 2);
    // The header holds the history table's length: the records asked for plus slack, and at
    // least the index a lapped reader resumes from.
    let table = shmesh_ring::broadcast::table_len(BroadcastPolicy::Lap, 16);
    assert_eq!(h["history"], table);
    assert_eq!(h["data_offset"], layout::data_offset(5, table));
    assert_eq!(v["endpoints"][0]["role"], "writer");
    assert_eq!(v["endpoints"][4]["role"], "reader");
    let listed = ls_record(&bcast).unwrap();
    assert_eq!(listed["policy"], "lap");
    assert_eq!(
        listed["history"],
        shmesh_ring::broadcast::history_records(table)
    );
    assert_eq!(listed["fill_bytes"], 0);
    drop(seg);
    assert!(!spsc.path().exists(), "the creator unlinks on drop");
}

#[test]
fn inspect_calls_out_each_scribbled_field() {
    let _w = Watchdog::new("inspect_calls_out_each_scribbled_field", TEST_LIMIT);
    // (what, offset, bytes, the problem field expected)
    let cases: [(&str, u64, Vec<u8>, &str); 6] = [
        ("magic", 0, 0xdead_beef_u64.to_le_bytes().to_vec(), "magic"),
        ("version", 8, 9u32.to_le_bytes().to_vec(), "layout version"),
        ("capacity", 24, 5000u64.to_le_bytes().to_vec(), "capacity"),
        ("offset", 32, 64u64.to_le_bytes().to_vec(), "data offset"),
        ("kind", 12, 77u32.to_le_bytes().to_vec(), "kind"),
        ("total", 16, 12345u64.to_le_bytes().to_vec(), "total size"),
    ];
    let mut held = Vec::new();
    for (what, off, bytes, field) in &cases {
        let name = Name::new(&format!("scribble-{what}"));
        let seg = SegmentBuilder::new(&name.0).capacity(CAP).create().unwrap();
        scribble(&name, *off, bytes);
        let v = inspect_json(&name);
        assert_eq!(v["valid"], false, "{what}: {v}");
        assert!(
            problem_fields(&v).contains(&field.to_string()),
            "{what}: {v}"
        );
        let report = shmesh_ok(&["inspect", &name.0]);
        assert!(report.contains("^ PROBLEM"), "{what}:\n{report}");
        assert!(report.contains("INVALID"), "{what}:\n{report}");
        let listed = ls_record(&name).unwrap();
        assert_eq!(listed["valid"], false);
        held.push((name, seg));
    }

    // All at once: each is listed.
    let all = Name::new("scribble-all");
    let seg = SegmentBuilder::new(&all.0).capacity(CAP).create().unwrap();
    for (_, off, bytes, _) in &cases[..4] {
        scribble(&all, *off, bytes);
    }
    let fields = problem_fields(&inspect_json(&all));
    for field in ["magic", "layout version", "capacity", "data offset"] {
        assert!(
            fields.contains(&field.to_owned()),
            "{field} missing: {fields:?}"
        );
    }
    held.push((all, seg));

    // Truncated copies of a valid segment, and tiny files: the file is called out.
    let (source, _) = &held[0];
    let bytes = fs::read(source.path()).unwrap();
    let mut tiny = Vec::new();
    for len in [0, 100, 1000] {
        let name = Name::new(&format!("scribble-truncated{len}"));
        fs::write(name.path(), &bytes[..len]).unwrap();
        let v = inspect_json(&name);
        assert_eq!(v["valid"], false);
        assert!(
            problem_fields(&v).contains(&"file".to_owned()),
            "{len}: {v}"
        );
        let listed = ls_record(&name).unwrap();
        assert_eq!(listed["valid"], false);
        let table = shmesh_ok(&["ls", "--prefix", &name.0]);
        assert!(table.contains("INVALID"), "{table}");
        tiny.push(name);
    }

    // gc removes the unheld invalid files, never the scribbled ones a live handle holds (the
    // prefix of this test's names only: other tests of this process run meanwhile).
    let gc = shmesh_ok(&["gc", "--prefix", &format!("{}scribble-", prefix())]);
    for name in &tiny {
        assert!(gc.contains(&format!("removed {name}")), "{gc}");
        assert!(!name.path().exists());
    }
    for (name, _) in &held {
        assert!(name.path().exists(), "{name} was removed:\n{gc}");
    }
}

#[test]
fn rm_refuses_what_is_in_use_and_removes_what_is_not() {
    let _w = Watchdog::new("rm_refuses_what_is_in_use", TEST_LIMIT);
    let name = Name::new("rm");
    let seg = SegmentBuilder::new(&name.0).capacity(CAP).create().unwrap();
    let err = shmesh_err(&["rm", &name.0]);
    assert!(
        err.contains("in use") && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    let tx = seg.producer().unwrap();
    let err = shmesh_err(&["rm", &name.0]);
    assert!(
        err.contains(&format!("producer (slot 0, pid {})", std::process::id())),
        "{err}"
    );
    assert!(name.path().exists());
    // A handle that lives on but no longer holds the name: `forget` keeps its descriptor and
    // lock, so make the object unheld by hand instead: a copy of it, held by nobody.
    drop(tx);
    let copy = Name::new("rm-copy");
    fs::write(copy.path(), fs::read(name.path()).unwrap()).unwrap();
    assert_eq!(
        shmesh_ok(&["rm", &copy.0]).trim(),
        format!("removed {copy}")
    );
    assert!(!copy.path().exists());

    let err = shmesh_err(&["rm", &copy.0]);
    assert!(err.contains("does not exist"), "{err}");
    let err = shmesh_err(&["rm", "../etc/passwd"]);
    assert!(err.contains("invalid segment name"), "{err}");
    let err = shmesh_err(&["inspect", "no such"]);
    assert!(err.contains("invalid segment name"), "{err}");
    drop(seg);
}

#[test]
fn stat_reports_rates_of_a_running_writer_and_ends_when_it_vanishes() {
    let _w = Watchdog::new("stat_reports_rates", TEST_LIMIT);
    let name = Name::new("stat");
    let mut stream = Proc::spawn("stream", &[&name]);
    stream.expect("ready");

    let out = shmesh_ok(&[
        "stat",
        &name.0,
        "--interval",
        "500",
        "--count",
        "2",
        "--json",
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("stat --json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in &lines {
        assert_eq!(line["name"], name.0.as_str());
        for field in [
            "written_msgs_per_s",
            "written_bytes_per_s",
            "read_msgs_per_s",
            "read_bytes_per_s",
        ] {
            assert!(line[field].as_f64().unwrap() > 0.0, "{field}: {line}");
        }
        assert_eq!(line["dropped_per_s"], 0.0);
        assert_eq!(line["endpoints_alive"], 2);
    }
    assert!(lines[1]["messages"].as_u64() > lines[0]["messages"].as_u64());

    // Not a terminal: one plain line per refresh.
    let out = shmesh_ok(&["stat", &name.0, "--interval", "500", "--count", "2"]);
    let plain: Vec<&str> = out.lines().collect();
    assert_eq!(plain.len(), 2, "{out}");
    for line in plain {
        let rate = |what: &str| -> f64 {
            let at = line
                .find(what)
                .unwrap_or_else(|| panic!("{what} in {line}"));
            let rest = &line[at + what.len()..];
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        assert!(rate("written ") > 0.0, "{line}");
        assert!(rate("read ") > 0.0, "{line}");
        assert!(line.contains("alive 2/2"), "{line}");
    }

    // The segment vanishes (its creator ends and unlinks it): stat ends with a clear error.
    let mut stat = Command::new(env!("CARGO_BIN_EXE_shmesh"))
        .args(["stat", &name.0, "--interval", "50", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it printed a refresh, it has the segment open: then end the segment.
    let stdout = stat.stdout.take().unwrap();
    let (tx, refreshes) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let _ = tx.send(line);
        }
    });
    let first = refreshes.recv_timeout(DEADLINE).expect("a first refresh");
    assert!(first.unwrap().contains("written_msgs_per_s"));
    stream.wait_success();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = stat.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = stat.kill();
            panic!("stat did not end after its segment vanished");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stat.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("vanished") && err.contains(&name.0), "{err}");

    let err = shmesh_err(&["stat", &name.0, "--count", "1"]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn regions_are_listed_with_their_version_and_removed_only_once_their_writer_died() {
    let _w = Watchdog::new("regions_are_listed", TEST_LIMIT);
    const N: u64 = 20;
    let name = Name::new("region");
    let mut writer = Proc::spawn("region-writer", &[&name, &N]);
    assert_eq!(writer.expect("published"), N.to_string());
    let pid = writer.pid();

    let v = ls_record(&name).expect("the region is listed");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["kind"], "region");
    assert_eq!(v["kind_code"], 5);
    assert_eq!(v["version"], N);
    assert_eq!(v["region_size"], REGION_SIZE);
    assert_eq!(v["history"], 8);
    assert!(v["capacity"].is_null() && v["fill_bytes"].is_null(), "{v}");
    assert_eq!(v["in_use"], true);
    assert_eq!(v["creator_pid"], pid);
    assert_eq!(v["endpoints_alive"], 1);
    let w = endpoint(&v, "writer");
    assert_eq!(
        (&w["pid"], &w["status"], &w["slot"]),
        (&pid.into(), &"alive".into(), &0.into())
    );

    let table = shmesh_ok(&["ls", "--prefix", &name.0]);
    let head = table.lines().next().unwrap();
    assert!(head.contains("FILL") && head.contains("VERSION"), "{table}");
    let row = table.lines().find(|l| l.starts_with(&name.0)).expect("row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    // NAME KIND TYPE CAPACITY(2 words) FILL VERSION MESSAGES BYTES AGE ENDPOINTS...
    assert_eq!(
        &cells[1..7],
        &["region", "bytes", "4", "KiB", "-", "20"],
        "{row}"
    );
    assert!(row.contains(&format!("writer {pid} alive")), "{row}");

    let v = inspect_json(&name);
    assert_eq!(v["valid"], true, "{v}");
    let r = &v["region"];
    assert_eq!(r["latest"], N);
    assert_eq!(r["latest_buffer"], N % 3);
    assert_eq!(r["oldest_changes"], N - 7);
    assert_eq!(
        (&r["size"], &r["buffers"], &r["chunk_size"]),
        (&REGION_SIZE.into(), &3.into(), &64.into())
    );
    assert_eq!(r["shape"]["chunks"], 64);
    assert_eq!(r["shape"]["buffer_offset"], v["header"]["data_offset"]);
    let buffers = r["buffer_versions"].as_array().unwrap();
    assert_eq!(buffers.len(), 3);
    assert_eq!(buffers[(N % 3) as usize]["version"], N);
    // The writer waits inside the scope of version N + 1: its buffer says so.
    let next = ((N + 1) % 3) as usize;
    assert_eq!(buffers[next]["writing"], true, "{r}");
    assert!(buffers[next]["version"].is_null());
    assert_eq!(r["writer"]["pid"], pid);
    assert_eq!(r["writer"]["alive"], true);
    assert_eq!(r["writer"]["attach_count"], 1);
    assert_eq!(r["publishes"], N);
    assert_eq!(r["takeovers"], 0);
    let changes = r["changes"].as_array().unwrap();
    let versions: Vec<u64> = changes
        .iter()
        .map(|c| c["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (N - 6..=N).rev().collect::<Vec<_>>());
    for c in changes {
        let version = c["version"].as_u64().unwrap();
        assert_eq!(c["state"], "present", "{c}");
        assert_eq!(c["changed_chunks"], 2, "{c}");
        let mut chunks = vec![version % 64, (version + 3) % 64];
        chunks.sort();
        assert_eq!(c["first_chunks"], serde_json::json!(chunks));
    }
    let report = shmesh_ok(&["inspect", &name.0]);
    for line in [
        "kind               5 (region)",
        "capacity           4096 (4 KiB, the region's size)",
        "history            8 versions of change history",
        "latest version     20",
        "buffer 2           20 <- holds the latest version",
        "buffer 0           writing (the writer is rewriting it, or died doing so)",
        &format!("writer             pid {pid}: alive, attached 1 time(s)"),
        "oldest changes     changes_since answers from version 13 on",
        "version 20         entry 4: 2 chunk(s) changed: 20, 23",
        "valid: no problems found",
    ] {
        assert!(report.contains(line), "{line:?} missing from\n{report}");
    }

    // A live writer: rm refuses, naming it; gc keeps the region.
    let err = shmesh_err(&["rm", &name.0]);
    assert!(
        err.contains("live endpoints") && err.contains(&format!("writer (slot 0, pid {pid})")),
        "{err}"
    );
    let gc = shmesh_ok(&["gc", "--prefix", &name.0]);
    assert!(gc.contains("kept 1 in use"), "{gc}");
    assert!(name.path().exists());

    // Killed inside its write scope: the buffer it was rewriting stays marked, which is no
    // problem (readers read the latest version, in another buffer).
    writer.kill();
    let v = ls_record(&name).expect("still listed");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["in_use"], false);
    assert_eq!(v["version"], N, "the version survives its writer");
    assert_eq!(endpoint(&v, "writer")["status"], "dead");
    assert_eq!(
        inspect_json(&name)["region"]["buffer_versions"][next]["writing"],
        true
    );

    // A new writer takes over and continues the versions.
    let seg = SegmentBuilder::new(&name.0)
        .kind(SegmentKind::Region)
        .open()
        .unwrap();
    let mut takeover = seg.region_writer().unwrap();
    assert_eq!(publish_next(&mut takeover), N + 1);
    let v = inspect_json(&name);
    assert_eq!(v["valid"], true, "{v}");
    let r = &v["region"];
    assert_eq!(
        (&r["latest"], &r["takeovers"]),
        (&(N + 1).into(), &1.into())
    );
    assert_eq!(r["writer"]["pid"], std::process::id());
    assert_eq!(r["writer"]["attach_count"], 2);
    assert_eq!(r["changes"][0]["changed_chunks"], 2);
    drop(takeover);
    drop(seg);
    assert_eq!(ls_record(&name).unwrap()["in_use"], false);

    let dry = shmesh_ok(&["gc", "--dry-run", "--prefix", &name.0]);
    assert!(
        dry.contains(&format!("would remove {}", name.0))
            && dry.contains(&format!("writer pid {} closed", std::process::id())),
        "{dry}"
    );
    let gc = shmesh_ok(&["gc", "--prefix", &name.0]);
    assert!(gc.contains(&format!("removed {}", name.0)), "{gc}");
    assert!(!name.path().exists());
}

#[test]
fn inspect_calls_out_a_scribbled_region() {
    let _w = Watchdog::new("inspect_calls_out_a_scribbled_region", TEST_LIMIT);
    let name = Name::new("region-scribble");
    let seg = create_region(&name.0);
    let mut writer = seg.region_writer().unwrap();
    for _ in 0..4 {
        publish_next(&mut writer);
    }
    assert_eq!(inspect_json(&name)["valid"], true);
    let ctl = layout::REGION_OFFSET as u64;
    // The stored stride (at 288 in the block), and buffer 1's version word (the latest, 4).
    scribble(&name, ctl + 288, &7u64.to_le_bytes());
    scribble(&name, ctl + 8 + 8, &3u64.to_le_bytes());
    let v = inspect_json(&name);
    assert_eq!(v["valid"], false);
    let fields = problem_fields(&v);
    for field in ["region stride", "buffer 1"] {
        assert!(fields.contains(&field.to_owned()), "{field} missing: {v}");
    }
    let report = shmesh_ok(&["inspect", &name.0]);
    assert!(
        report.contains("region stride      7 (expected 4096)")
            && report.contains("^ PROBLEM: 3, expected 4: the latest version lives in buffer 1"),
        "{report}"
    );
    let listed = ls_record(&name).unwrap();
    assert_eq!(listed["valid"], false);
    assert_eq!(listed["version"], 4);

    // A region nobody holds: a copy of the file. rm removes it.
    let copy = Name::new("region-scribble-copy");
    fs::write(copy.path(), fs::read(name.path()).unwrap()).unwrap();
    assert_eq!(
        shmesh_ok(&["rm", &copy.0]).trim(),
        format!("removed {copy}")
    );
    assert!(!copy.path().exists());
    drop(writer);
    drop(seg);
    assert!(!name.path().exists(), "the creator unlinks on drop");
}

#[test]
fn stat_reports_versions_per_second_of_a_region() {
    let _w = Watchdog::new("stat_reports_versions_per_second", TEST_LIMIT);
    let name = Name::new("region-stat");
    let mut stream = Proc::spawn("region-stream", &[&name]);
    stream.expect("ready");
    let out = shmesh_ok(&[
        "stat",
        &name.0,
        "--interval",
        "500",
        "--count",
        "2",
        "--json",
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("stat --json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in &lines {
        assert!(line["versions_per_s"].as_f64().unwrap() > 0.0, "{line}");
        assert_eq!(line["chunks_per_version"], 2.0, "{line}");
        assert_eq!(line["endpoints_alive"], 1);
    }
    assert!(lines[1]["version"].as_u64() > lines[0]["version"].as_u64());

    let out = shmesh_ok(&["stat", &name.0, "--interval", "500", "--count", "1"]);
    let line = out.lines().next().expect("a line");
    assert!(
        line.contains(" versions/s | 2.0 chunks/version | alive 1/1"),
        "{line}"
    );
    stream.close_stdin();
    stream.wait_success();
    assert!(!name.path().exists());
}
