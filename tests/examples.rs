//! Runs the examples as a user would, checking what they print and that they leave nothing in
//! `/dev/shm`.
//!
//! Cargo builds the examples for `cargo test` without target filters (as the README's
//! `cargo test --workspace --release` does), next to this test's own directory, but does not
//! tell integration tests where: they are found from this test's path. With a filter such as
//! `--test examples` cargo does not build them, and the test builds the one it runs.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest an example may run before the test kills it.
const WATCHDOG: Duration = Duration::from_secs(60);

/// The example binary `name` of this build profile: `target/<profile>/examples/<name>`, where
/// this test runs from `target/<profile>/deps/`. Builds it when it is missing or older than its
/// source (a run with target filters, such as `cargo test --test examples`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    // `examples/NAME.rs`, or `examples/NAME/main.rs` for an example with files of its own.
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let single = examples.join(format!("{name}.rs"));
    let source = if single.exists() {
        single
    } else {
        examples.join(name).join("main.rs")
    };
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&path).is_none() || modified(&path) < modified(&source) {
        build(name, profile_dir);
    }
    assert!(
        modified(&path) >= modified(&source) && modified(&path).is_some(),
        "{} is missing or older than its source: build it with `cargo build --release \
         --examples` (without --release for a debug test)",
        path.display()
    );
    path
}

/// Builds example `name` into `profile_dir` with the cargo that runs this test, if any.
fn build(name: &str, profile_dir: &Path) {
    cargo_build(&["--example", name], profile_dir);
}

/// Runs `cargo build ARGS` for the profile of `profile_dir` with the cargo that runs this test,
/// if any.
fn cargo_build(args: &[&str], profile_dir: &Path) {
    let (Ok(cargo), Some(target_dir), Some(profile)) = (
        std::env::var("CARGO"),
        profile_dir.parent(),
        profile_dir.file_name().and_then(|p| p.to_str()),
    ) else {
        return;
    };
    let build = Command::new(cargo)
        .arg("build")
        .args(args)
        .arg("--profile")
        .arg(if profile == "debug" { "dev" } else { profile })
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .spawn();
    if let Ok(mut build) = build {
        // A build can take minutes, but not forever (a cargo that holds the build lock while
        // it runs tests would block this one).
        let status = wait(&mut build, Duration::from_secs(600));
        eprintln!("built {args:?}: {status:?}");
    }
}

/// Waits for `child`, killing it after `limit`; `None` if it was killed.
fn wait(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Run {
    pid: u32,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// A process started by [`start`], its pipes read on threads.
struct Running {
    child: Child,
    out: JoinHandle<std::io::Result<String>>,
    err: JoinHandle<std::io::Result<String>>,
}

/// Starts `path` with `args` and the environment variables `env`.
fn start(path: &Path, args: &[&str], env: &[(&str, String)]) -> Running {
    let mut child = Command::new(path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    // Read the pipes on threads, so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });
    Running { child, out, err }
}

/// Waits for a process [`start`]ed, killing it at `deadline`; `None` if it was killed.
fn finish(mut running: Running, deadline: Instant) -> Option<Run> {
    let pid = running.child.id();
    // Not waiting for the readers of a killed one: a process it started may hold the pipes.
    let status = wait(
        &mut running.child,
        deadline.saturating_duration_since(Instant::now()),
    )?;
    Some(Run {
        pid,
        status,
        stdout: running.out.join().unwrap().expect("stdout is UTF-8"),
        stderr: running.err.join().unwrap().expect("stderr is UTF-8"),
    })
}

/// Runs `path`, killing it after `WATCHDOG`.
fn run(path: &Path) -> Run {
    finish(start(path, &[], &[]), Instant::now() + WATCHDOG)
        .unwrap_or_else(|| panic!("{} ran for more than {WATCHDOG:?}: killed", path.display()))
}

/// Shared-memory objects left whose name contains `pid`.
fn leftovers(pid: u32) -> Vec<String> {
    let pid = pid.to_string();
    std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("shmesh.") && name.contains(&pid))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn quickstart_exchanges_typed_messages_between_two_processes() {
    let run = run(&example("quickstart"));
    let output = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        run.status, run.stdout, run.stderr
    );
    assert!(run.status.success(), "{output}");
    // What the second process read in place, field by field.
    for field in [
        "shop: order from Ada",
        "items [3, 14, 15]",
        "note \"ring the bell twice\"",
        "delivery: courier in 2 days",
    ] {
        assert!(run.stdout.contains(field), "missing {field:?}\n{output}");
    }
    // The reply, and a measured round trip.
    assert!(
        run.stdout
            .contains("customer: receipt for order 1: 3 items, \"thank you, Ada\""),
        "{output}"
    );
    let median = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("customer: round trip over 1000 orders: median "))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no round-trip line\n{output}"));
    assert!(
        median.starts_with(|c: char| c.is_ascii_digit()) && median.ends_with('s'),
        "a duration: {median:?}\n{output}"
    );
    assert_eq!(leftovers(run.pid), Vec::<String>::new(), "{output}");
}

/// Runs example `name` and returns its run and a description of it for failure messages,
/// failing unless it exited with success.
fn run_ok(name: &str) -> (Run, String) {
    let run = run(&example(name));
    let output = format!(
        "{name}: exit: {}\n--- stdout\n{}--- stderr\n{}",
        run.status, run.stdout, run.stderr
    );
    assert!(run.status.success(), "{output}");
    (run, output)
}

#[test]
fn pubsub_delivers_every_reading_in_order_to_both_subscriber_processes() {
    let (run, output) = run_ok("pubsub");
    // The publisher and each subscriber (its own process) report; the subscribers checked
    // the sequence numbers and the contents of every reading, in place.
    assert!(
        run.stdout
            .contains("publisher: 100000 readings to 2 subscribers in "),
        "{output}"
    );
    for who in ["A", "B"] {
        let line = format!("subscriber {who}: 100000 readings in order, mean 22.45 °C");
        assert!(run.stdout.contains(&line), "missing {line:?}\n{output}");
    }
    assert_eq!(run.stderr, "", "{output}");
    assert_eq!(leftovers(run.pid), Vec::<String>::new(), "{output}");
}

#[test]
fn reqrep_answers_each_client_process_with_its_own_replies() {
    let (run, output) = run_ok("reqrep");
    for who in ["ann", "bob", "cy"] {
        let prefix = format!("client {who}: 2000 calls answered correctly, median round trip ");
        let median = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no line {prefix:?}\n{output}"));
        assert!(
            median.starts_with(|c: char| c.is_ascii_digit()) && median.ends_with('s'),
            "a duration: {median:?}\n{output}"
        );
    }
    assert!(
        run.stdout
            .contains("server: 6000 requests from 3 clients answered"),
        "{output}"
    );
    assert_eq!(run.stderr, "", "{output}");
    // Neither the service nor any client's reply ring (named after the service) is left.
    assert_eq!(leftovers(run.pid), Vec::<String>::new(), "{output}");
}

#[test]
fn region_readers_follow_the_writers_versions_and_every_snapshot_is_whole() {
    let (run, output) = run_ok("region");
    assert!(
        run.stdout
            .contains("writer: published versions 2..=2001 in "),
        "{output}"
    );
    // The last round changed one vehicle: a couple of chunks, not the whole value.
    let changed: usize = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("writer: the last version changed "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no change-tracking line\n{output}"));
    assert!((1..=4).contains(&changed), "{output}");
    for who in ["A", "B"] {
        // Each reader (its own process) checked every snapshot it got for tearing.
        let line = format!("reader {who}: followed ");
        let ok = run
            .stdout
            .lines()
            .any(|l| l.starts_with(&line) && l.ends_with("up to 2001, every snapshot consistent"));
        assert!(ok, "missing {line:?}\n{output}");
        let ack = format!("writer: reader {who} acknowledged version 2001");
        assert!(run.stdout.contains(&ack), "missing {ack:?}\n{output}");
    }
    assert_eq!(run.stderr, "", "{output}");
    assert_eq!(leftovers(run.pid), Vec::<String>::new(), "{output}");
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                newest(&e.path())
            } else {
                meta.modified().ok()
            }
        })
        .max()
}

/// The `shmesh-bridge` daemon of this build profile, `target/<profile>/shmesh-bridge`, where the
/// bridge example looks for it. `cargo test --workspace` builds it (the bridge crate has
/// integration tests); with a filter such as `--test examples` it is built here when missing or
/// older than the bridge's sources.
fn bridge_daemon() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let path = profile_dir.join("shmesh-bridge");
    let sources = newest(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bridge/src"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&path).is_none() || modified(&path) < sources {
        cargo_build(
            &["-p", "shmesh-bridge", "--bin", "shmesh-bridge"],
            profile_dir,
        );
    }
    assert!(
        modified(&path).is_some() && modified(&path) >= sources,
        "{} is missing or older than bridge/src: build it with `cargo build --release -p \
         shmesh-bridge` (without --release for a debug test)",
        path.display()
    );
    path
}

#[test]
fn bridge_mirrors_a_channel_and_a_region_between_two_daemons_and_cleans_up() {
    let _daemon = bridge_daemon();
    let (run, output) = run_ok("bridge");
    let pid = run.pid;
    // Every tick crossed both bridges in order, and each one-at-a-time trip was timed.
    let line = format!(
        "B: read 1000 ticks in order from demo-{pid}.ticks.mirror, the last \"tick 999 from \
         host-a\""
    );
    assert!(run.stdout.contains(&line), "missing {line:?}\n{output}");
    let median = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("A -> B through both bridges, one tick at a time: median "))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no trip-time line\n{output}"));
    assert!(
        median.starts_with(|c: char| c.is_ascii_digit()) && median.ends_with('s'),
        "a duration: {median:?}\n{output}"
    );
    // Each region version A published showed up whole on the copy, in order.
    let versions: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("B: demo-{pid}.board.mirror version ")))
        .collect();
    assert_eq!(versions.len(), 5, "{output}");
    for (k, line) in versions.iter().enumerate() {
        let round = format!(": round {}, scores [", k + 1);
        assert!(
            line.contains(&round),
            "missing {round:?} in {line:?}\n{output}"
        );
    }
    assert!(
        run.stdout
            .contains("bridge: both bridges stopped, their copies and state removed"),
        "{output}"
    );
    assert_eq!(run.stderr, "", "{output}");
    // The exports, the copies and the bridge's delivery state are all gone.
    assert_eq!(leftovers(pid), Vec::<String>::new(), "{output}");
    let dir = std::env::temp_dir().join(format!("shmesh-bridge-example-{pid}"));
    assert!(!dir.exists(), "{} is left\n{output}", dir.display());
}

// ---- MPI-style examples: ranks of one world ----

/// The ranks of one run of a world example, and the job they shared.
struct World {
    job: String,
    ranks: Vec<Run>,
}

impl World {
    /// Everything the ranks printed, for failure messages.
    fn output(&self) -> String {
        let mut out = format!("job {}\n", self.job);
        for (r, run) in self.ranks.iter().enumerate() {
            out.push_str(&format!(
                "--- rank {r}: {}\n--- stdout\n{}--- stderr\n{}",
                run.status, run.stdout, run.stderr
            ));
        }
        out
    }

    /// The names (without `shmesh.`) of the job's rings left in `/dev/shm`, sorted.
    fn rings_left(&self) -> Vec<String> {
        let head = format!("shmesh.world.{}.", self.job);
        let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
            .expect("read /dev/shm")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&head))
            .map(|n| n["shmesh.".len()..].to_owned())
            .collect();
        names.sort();
        names
    }
}

/// Runs example `name` as `size` ranks of one job, each with `args`, started the way a
/// launcher such as `shmesh run` starts them: with `SHMESH_JOB`, `SHMESH_RANK` and
/// `SHMESH_SIZE` set. Kills them all after `WATCHDOG`.
fn run_world(name: &str, size: usize, args: &[&str]) -> World {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let job = format!(
        "ex-{}-{name}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = example(name);
    let started: Vec<Running> = (0..size)
        .map(|rank| {
            let env = [
                ("SHMESH_JOB", job.clone()),
                ("SHMESH_RANK", rank.to_string()),
                ("SHMESH_SIZE", size.to_string()),
            ];
            start(&path, args, &env)
        })
        .collect();
    let deadline = Instant::now() + WATCHDOG;
    let mut ranks = Vec::new();
    let mut rest = started.into_iter();
    while let Some(running) = rest.next() {
        match finish(running, deadline) {
            Some(run) => ranks.push(run),
            None => {
                for mut other in rest {
                    let _ = other.child.kill();
                    let _ = other.child.wait();
                }
                panic!(
                    "rank {} of {name} ran for more than {WATCHDOG:?}: killed all",
                    ranks.len()
                );
            }
        }
    }
    World { job, ranks }
}

impl Drop for World {
    /// Removes what the job left (the tests check it first), also when a test fails.
    fn drop(&mut self) {
        for name in self.rings_left() {
            let _ = shmesh_ring::Segment::remove(&name);
        }
    }
}

/// Asserts every rank of `world` exited 0 with nothing on stderr, and left no ring.
#[track_caller]
fn assert_clean_success(world: &World, left: &[String]) {
    let output = world.output();
    for (r, run) in world.ranks.iter().enumerate() {
        assert!(run.status.success(), "rank {r} failed\n{output}");
        assert_eq!(run.stderr, "", "rank {r}'s stderr\n{output}");
    }
    assert_eq!(left, Vec::<String>::new(), "rings left\n{output}");
}

#[test]
fn allreduce_sums_across_ranks_alone_and_with_three_ranks() {
    // Alone: a world of one, without any launcher variable.
    let (run, output) = run_ok("allreduce");
    for len in [1, 1000, 300_000] {
        let line = format!("all_reduce of {len} u64 over 1 ranks: correct");
        assert!(run.stdout.contains(&line), "missing {line:?}\n{output}");
    }
    assert_eq!(run.stderr, "", "{output}");
    assert_eq!(leftovers(run.pid), Vec::<String>::new(), "{output}");

    let world = run_world("allreduce", 3, &[]);
    let left = world.rings_left();
    assert_clean_success(&world, &left);
    let output = world.output();
    let rank0 = &world.ranks[0].stdout;
    for len in [1, 1000, 300_000] {
        let line = format!("all_reduce of {len} u64 over 3 ranks: correct");
        assert!(rank0.contains(&line), "missing {line:?}\n{output}");
    }
    for (bytes, rounds) in [(8, 10_000), (1 << 20, 200)] {
        let head = format!("all_reduce of {bytes} bytes over 3 ranks: ");
        let tail = format!(" each ({rounds} rounds)");
        assert!(
            rank0
                .lines()
                .any(|l| l.starts_with(&head) && l.ends_with(&tail)),
            "missing {head:?}...{tail:?}\n{output}"
        );
    }
    for r in [1, 2] {
        assert_eq!(
            world.ranks[r].stdout, "",
            "rank {r} prints nothing\n{output}"
        );
    }
}

/// The task farm's summary lines: tasks done per worker (by rank), and the check line.
fn farm_counts(stdout: &str, workers: usize) -> Vec<u32> {
    (1..=workers)
        .map(|w| {
            let head = format!("farm: worker {w} did ");
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(head.as_str()))
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no line {head:?} in\n{stdout}"))
        })
        .collect()
}

/// The known count of primes below 2,000,000 and the largest of them.
const PRIMES_LINE: &str =
    "farm: 148933 primes below 2000000, the largest 1999993: matches the sieve";

#[test]
fn task_farm_alone_does_every_task_on_rank_0() {
    let (run, output) = run_ok("task_farm");
    for line in [
        "farm: 100 tasks of 20000 numbers below 2000000 for 0 workers",
        "farm: rank 0 did 100 tasks itself",
        PRIMES_LINE,
    ] {
        assert!(run.stdout.contains(line), "missing {line:?}\n{output}");
    }
    assert_eq!(run.stderr, "", "{output}");
    assert_eq!(leftovers(run.pid), Vec::<String>::new(), "{output}");
}

#[test]
fn task_farm_with_three_workers_shares_the_tasks_and_checks_the_total() {
    let world = run_world("task_farm", 4, &[]);
    let left = world.rings_left();
    assert_clean_success(&world, &left);
    let output = world.output();
    let rank0 = &world.ranks[0].stdout;
    assert!(
        rank0.contains("farm: 100 tasks of 20000 numbers below 2000000 for 3 workers"),
        "{output}"
    );
    assert!(rank0.contains(PRIMES_LINE), "{output}");
    assert!(
        !rank0.contains("itself"),
        "the workers did every task\n{output}"
    );
    let counts = farm_counts(rank0, 3);
    assert_eq!(counts.iter().sum::<u32>(), 100, "{counts:?}\n{output}");
    for (w, n) in counts.iter().enumerate() {
        // Each worker says what it did, and stopped when told to.
        let line = format!("worker {}: {n} tasks, stopped\n", w + 1);
        assert_eq!(world.ranks[w + 1].stdout, line, "{output}");
    }
}

#[test]
fn task_farm_hands_a_dead_workers_task_to_another_and_finishes() {
    let world = run_world("task_farm", 4, &["--kill-worker", "2"]);
    let output = world.output();
    assert_eq!(
        world.ranks[2].status.signal(),
        Some(9),
        "worker 2 killed itself with SIGKILL\n{output}"
    );
    let line = world.ranks[2].stdout.trim_end();
    let held = line
        .strip_prefix("worker 2: got task ")
        .and_then(|rest| rest.strip_suffix(", and dies now (--kill-worker)"))
        .unwrap_or_else(|| panic!("worker 2's last words: {line:?}\n{output}"));
    for r in [0, 1, 3] {
        let run = &world.ranks[r];
        assert!(run.status.success(), "rank {r} failed\n{output}");
        assert_eq!(run.stderr, "", "rank {r}'s stderr\n{output}");
    }
    let rank0 = &world.ranks[0].stdout;
    // Rank 0 saw the death, put the task worker 2 held back into play, and finished.
    let gone = format!("farm: worker 2 is gone with task {held} (");
    assert!(rank0.contains(&gone), "missing {gone:?}\n{output}");
    assert!(
        rank0.contains("farm: worker 2 did 2 tasks, then died"),
        "{output}"
    );
    assert!(rank0.contains(PRIMES_LINE), "{output}");
    let counts = farm_counts(rank0, 3);
    assert_eq!(counts.iter().sum::<u32>(), 100, "{counts:?}\n{output}");
    // Left: only the rings into the dead worker (their creator died), which gc removes.
    let want: Vec<String> = [0, 1, 3]
        .iter()
        .map(|from| format!("world.{}.{from}.2", world.job))
        .collect();
    assert_eq!(world.rings_left(), want, "{output}");
    for name in &want {
        assert!(
            matches!(shmesh_ring::Segment::remove_unused(name), Ok(true)),
            "gc of {name}\n{output}"
        );
    }
    assert_eq!(world.rings_left(), Vec::<String>::new(), "{output}");
}

/// As the README shows them: `shmesh run -n 4 -- <example>` for both message-passing examples,
/// the launcher's rank prefixes on the output, exit status 0, nothing left in /dev/shm.
#[test]
fn message_passing_examples_run_under_shmesh_run() {
    let shmesh = env!("CARGO_BIN_EXE_shmesh");
    for (name, want) in [
        ("task_farm", PRIMES_LINE),
        (
            "allreduce",
            "all_reduce of 300000 u64 over 4 ranks: correct",
        ),
    ] {
        let path = example(name);
        let job = format!("ex{}{name}", std::process::id()).replace('_', "-");
        let running = start(
            Path::new(shmesh),
            &[
                "run",
                "-n",
                "4",
                "--job",
                &job,
                "--timeout",
                "120s",
                "--",
                path.to_str().unwrap(),
            ],
            &[],
        );
        let run = finish(running, Instant::now() + Duration::from_secs(180))
            .unwrap_or_else(|| panic!("shmesh run -n 4 -- {name} did not end"));
        let output = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
        assert!(run.status.success(), "{name}: {}\n{output}", run.status);
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("[0] ") && l.contains(want)),
            "{name}: no line {want:?} from rank 0\n{output}"
        );
        let left: Vec<_> = std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.contains(&format!("world.{job}.")))
            .collect();
        assert!(left.is_empty(), "{name} left {left:?}");
    }
}
