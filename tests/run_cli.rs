//! `shmesh run`, the rank launcher, run as a user runs it (the `shmesh` binary) with small
//! shell programs as ranks, and with this test binary as a rank where a rank must make
//! shared-memory segments (the `child_entry` test plays the role named in
//! `SHMESH_TEST_CHILD`, which the launcher passes on to its ranks).
//!
//! Every launch is bounded: after [`DEADLINE`] the test interrupts the launcher (which stops
//! its ranks), kills it and fails. Ranks that wait for something wait for a file the test or
//! another rank writes, never for time to pass; every job id, temporary directory and
//! segment name is unique to its test and to this process.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `ranks_get_their_environment_and_prefixed_output` | distinct ranks, one job id, size, local rank/size, host; stdout and stderr lines prefixed, a final unterminated line too; a fresh job id per run |
//! | `no_prefix_forwards_lines_unchanged` | `--no-prefix` |
//! | `a_failed_rank_sets_the_status_and_the_others_keep_running` | the failure line and exit status of a failed rank; another rank still runs after the launcher saw the failure |
//! | `a_rank_killed_by_sigkill_gives_137` | `kill -9 $$` in a rank: the line names SIGKILL, the status is 128 + 9 |
//! | `abort_on_failure_terminates_a_sleeping_rank` | the sleeping rank and its child get SIGTERM, the status is the failed rank's, the processes are gone |
//! | `sigint_reaches_each_rank_once_as_sigterm` | Ctrl-C at a terminal (SIGINT to the launcher's process group): each rank gets one SIGTERM and no SIGINT, exit 130, every process gone |
//! | `ranks_ignoring_sigterm_get_sigkill_after_the_grace_period` | SIGTERM to the launcher: 143, SIGKILL after `--grace`, every process gone |
//! | `what_a_rank_left_running_is_stopped_after_the_grace_period` | a rank that ended while a process it started holds its output: that process gets SIGTERM after `--grace`, the status is the rank's |
//! | `timeout_stops_the_job_with_124` | `--timeout` |
//! | `segments_of_the_job_are_removed_afterwards` | segments a rank persisted, one a SIGKILLed rank held, one a rank left by exiting without dropping it, and a fake one are all removed; one held by a live process outside the job is kept and named in a warning; `remove_job_segments` from the library |
//! | `start_errors_are_clear` | a missing program, `-n 0`, no `-n`, a bad job id, a bad hosts file line, too few slots |
//! | `hosts_file_places_ranks_and_starts_them_through_exec` | ranks fill hosts in order, each started through its host's `exec` prefix with its host's environment; `-n` defaults to the slots |
//! | `ranks_on_two_netns_hosts_and_their_segments_removed_there` | (root) hosts that are network and mount namespaces with private `/dev/shm`, entered with `nsenter`: each rank runs in its host, and the job's segments are removed inside each host |

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shmesh_ring::SegmentBuilder;
use shmesh_testkit::netns::{root_or_skip, Net};
use shmesh_testkit::{child_role, say, this_exe, Watchdog, CHILD_ENV, DEADLINE};

/// How long one test may run before its watchdog aborts the binary.
const TEST_LIMIT: Duration = Duration::from_secs(300);
/// Ring capacity of the tests' segments.
const CAP: u64 = 1 << 16;

// ---- launching ----

/// A running `shmesh run`: its stdout collected, its stderr collected and passed on line by
/// line. Dropped unfinished (a failed test), it is interrupted so that it stops its ranks,
/// then killed.
struct Launch {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    stderr_lines: Receiver<String>,
    done: bool,
}

/// How a launch ended.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Launch {
    /// Starts `shmesh args...`, after `setup` adjusted the command.
    fn start(args: &[&str], setup: impl FnOnce(&mut Command)) -> Launch {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmesh"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("spawn shmesh");
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = out.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        let err = child.stderr.take().expect("piped stderr");
        let (tx, stderr_lines) = mpsc::channel();
        let stderr = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        Launch {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
            stderr_lines,
            done: false,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits for a line of the launcher's stderr that contains `needle`.
    #[track_caller]
    fn wait_stderr(&mut self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with '{needle}' from shmesh run: {e}"),
            }
        }
    }

    /// Waits for the launcher to end (bounded) and returns its status and output.
    #[track_caller]
    fn finish(mut self) -> Ended {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!("shmesh run did not end within {DEADLINE:?}");
            }
            thread::sleep(Duration::from_millis(5));
        };
        self.done = true;
        Ended {
            code: status.code(),
            stdout: self.stdout.take().unwrap().join().expect("stdout reader"),
            stderr: self.stderr.take().unwrap().join().expect("stderr reader"),
        }
    }

    /// SIGINT (the launcher stops its ranks), then SIGKILL if it is still there after a while.
    fn stop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        if !self.done {
            self.stop();
        }
    }
}

/// Runs `shmesh args...` to its end.
#[track_caller]
fn shmesh(args: &[&str]) -> Ended {
    Launch::start(args, |_| {}).finish()
}

/// Runs `shmesh run -n n [options...] -- sh -c script` with `D` set to `dir`.
#[track_caller]
fn run_sh(n: usize, options: &[&str], script: &str, dir: &Dir) -> Ended {
    let n = n.to_string();
    let mut args = vec!["run", "-n", &n];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    Launch::start(&args, |c| {
        c.env("D", &dir.0);
    })
    .finish()
}

/// A temporary directory unique to a test, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("shmesh-run-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create the test directory");
        Dir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    /// Also kills what a failed test left running: each process of a `pids.*` file whose
    /// environment still says `D=<this directory>` (so never a process that reused the pid).
    fn drop(&mut self) {
        let mark = format!("D={}\0", self.0.display());
        for entry in fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().starts_with("pids.") {
                continue;
            }
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            for pid in text
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                if environ.windows(mark.len()).any(|w| w == mark.as_bytes()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A job id unique to this process and test.
fn job_id(test: &str) -> String {
    format!("t{}-{test}", std::process::id())
}

/// Waits until `file` holds a line of pids (written by `echo "$$ $!" > tmp && mv tmp file`).
#[track_caller]
fn read_pids(file: &Path) -> Vec<i32> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(text) = fs::read_to_string(file) {
            let pids: Vec<i32> = text
                .split_whitespace()
                .map(|p| p.parse().expect("a pid"))
                .collect();
            assert!(!pids.is_empty(), "empty pid file {}", file.display());
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "no pid file {} within {DEADLINE:?}",
            file.display()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Fails unless every process of `pids` ends (within [`DEADLINE`]): gone, or a zombie. A
/// process a rank started may still be on its way out when the launcher ends (it closed its
/// output, which the launcher waited for, before it became a zombie), and once a zombie it is
/// reparented and reaped in its new parent's own time.
#[track_caller]
fn assert_gone(pids: &[i32]) {
    let deadline = Instant::now() + DEADLINE;
    for &pid in pids {
        loop {
            if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
                break;
            }
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if stat.is_empty() || matches!(state, Some('Z' | 'X')) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "process {pid} of the job is still running after {DEADLINE:?}: {stat}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The launcher's lines about failed ranks.
fn failure_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("shmesh run: rank "))
        .filter(|l| l.contains(" exited with ") || l.contains(" was killed by "))
        .collect()
}

/// The shell prelude that makes a rank write "<its pid> <pid of a sleep it started>" to
/// `$D/pids.<rank>`, then wait for that sleep: the rank and a process it started.
const SLEEPER: &str = r#"sleep 1000 & echo "$$ $!" > "$D/tmp.$SHMESH_RANK" && mv "$D/tmp.$SHMESH_RANK" "$D/pids.$SHMESH_RANK"; wait"#;

// ---- tests ----

#[test]
fn ranks_get_their_environment_and_prefixed_output() {
    let _w = Watchdog::new("ranks_get_their_environment", TEST_LIMIT);
    let dir = Dir::new("env");
    let script = r#"echo "rank=$SHMESH_RANK size=$SHMESH_SIZE job=$SHMESH_JOB local=$SHMESH_LOCAL_RANK/$SHMESH_LOCAL_SIZE host=$SHMESH_HOST hosts=$SHMESH_HOSTS"; echo "err of $SHMESH_RANK" >&2; printf "tail of $SHMESH_RANK""#;
    let end = run_sh(4, &[], script, &dir);
    assert_eq!(end.code, Some(0), "{end:?}");
    let job = end
        .stdout
        .lines()
        .find_map(|l| l.split("job=").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .expect("a job= line")
        .to_owned();
    assert!(
        job.starts_with('j')
            && (1..=48).contains(&job.len())
            && job
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "job id '{job}'"
    );
    let mut out: Vec<&str> = end.stdout.lines().collect();
    out.sort();
    let mut expected = Vec::new();
    for r in 0..4 {
        expected.push(format!(
            "[{r}] rank={r} size=4 job={job} local={r}/4 host=localhost hosts=localhost:4"
        ));
        expected.push(format!("[{r}] tail of {r}"));
    }
    expected.sort();
    assert_eq!(out, expected, "stdout:\n{}", end.stdout);
    let mut err: Vec<&str> = end.stderr.lines().collect();
    err.sort();
    assert_eq!(
        err,
        [
            "[0] err of 0",
            "[1] err of 1",
            "[2] err of 2",
            "[3] err of 3"
        ]
    );

    let again = run_sh(1, &[], "echo $SHMESH_JOB", &dir);
    assert_eq!(again.code, Some(0));
    let other = again.stdout.trim().trim_start_matches("[0] ");
    assert!(!other.is_empty() && other != job, "a fresh job id per run");
}

#[test]
fn no_prefix_forwards_lines_unchanged() {
    let _w = Watchdog::new("no_prefix", TEST_LIMIT);
    let dir = Dir::new("noprefix");
    let end = run_sh(
        2,
        &["--no-prefix"],
        r#"echo "line $SHMESH_RANK"; printf "[x] raw""#,
        &dir,
    );
    assert_eq!(end.code, Some(0), "{end:?}");
    let mut out: Vec<&str> = end.stdout.lines().collect();
    out.sort();
    assert_eq!(out, ["[x] raw", "[x] raw", "line 0", "line 1"]);
}

#[test]
fn a_failed_rank_sets_the_status_and_the_others_keep_running() {
    let _w = Watchdog::new("a_failed_rank", TEST_LIMIT);
    let dir = Dir::new("failed");
    // Rank 1 fails at once; rank 0 goes on until the test saw the launcher report that.
    let script = r#"case $SHMESH_RANK in
        1) exit 4 ;;
        0) while [ ! -e "$D/go" ]; do sleep 0.01; done; echo "rank 0 finished" ;;
    esac"#;
    let mut launch = Launch::start(&["run", "-n", "3", "--", "sh", "-c", script], |c| {
        c.env("D", &dir.0);
    });
    launch.wait_stderr("shmesh run: rank 1 exited with status 4");
    fs::write(dir.path("go"), "").unwrap();
    let end = launch.finish();
    assert_eq!(end.code, Some(4), "{end:?}");
    assert_eq!(
        failure_lines(&end.stderr),
        ["shmesh run: rank 1 exited with status 4"]
    );
    assert!(end.stdout.contains("[0] rank 0 finished"), "{end:?}");
}

#[test]
fn a_rank_killed_by_sigkill_gives_137() {
    let _w = Watchdog::new("a_rank_killed_by_sigkill", TEST_LIMIT);
    let dir = Dir::new("sigkill");
    let end = run_sh(
        2,
        &[],
        r#"if [ "$SHMESH_RANK" = 1 ]; then kill -9 $$; fi; echo alive"#,
        &dir,
    );
    assert_eq!(end.code, Some(137), "{end:?}");
    assert_eq!(
        failure_lines(&end.stderr),
        ["shmesh run: rank 1 was killed by signal 9 (SIGKILL)"]
    );
    assert_eq!(end.stdout, "[0] alive\n");
}

#[test]
fn abort_on_failure_terminates_a_sleeping_rank() {
    let _w = Watchdog::new("abort_on_failure", TEST_LIMIT);
    let dir = Dir::new("abort");
    // Rank 1 fails once rank 0 sleeps (without --abort-on-failure this job never ends).
    let script = format!(
        r#"case $SHMESH_RANK in
            0) {SLEEPER} ;;
            1) while [ ! -e "$D/pids.0" ]; do sleep 0.01; done; exit 3 ;;
        esac"#
    );
    let end = run_sh(2, &["--abort-on-failure"], &script, &dir);
    assert_eq!(end.code, Some(3), "{end:?}");
    assert_eq!(
        failure_lines(&end.stderr),
        [
            "shmesh run: rank 1 exited with status 3",
            "shmesh run: rank 0 was killed by signal 15 (SIGTERM), sent by shmesh run",
        ],
        "{}",
        end.stderr
    );
    assert!(end.stderr.contains("rank 1 failed (--abort-on-failure)"));
    assert_gone(&read_pids(&dir.path("pids.0")));
}

#[test]
fn sigint_reaches_each_rank_once_as_sigterm() {
    let _w = Watchdog::new("sigint_reaches_each_rank_once", TEST_LIMIT);
    let dir = Dir::new("sigint");
    // Each rank logs every SIGINT and SIGTERM it gets; SIGTERM ends it with status 0.
    let script = format!(
        r#"trap 'echo INT >> "$D/sig.$SHMESH_RANK"' INT
        trap 'echo TERM >> "$D/sig.$SHMESH_RANK"; exit 0' TERM
        {SLEEPER}"#
    );
    // The launcher leads a process group of its own, like a job at a terminal, whose Ctrl-C
    // sends SIGINT to the whole foreground group.
    let launch = Launch::start(&["run", "-n", "3", "--", "sh", "-c", &script], |c| {
        c.env("D", &dir.0).process_group(0);
    });
    let pids: Vec<i32> = (0..3)
        .flat_map(|r| read_pids(&dir.path(&format!("pids.{r}"))))
        .collect();
    kill(Pid::from_raw(-launch.pid().as_raw()), Signal::SIGINT).expect("SIGINT to the group");
    let end = launch.finish();
    assert_eq!(end.code, Some(130), "{end:?}");
    assert!(
        end.stderr.contains("shmesh run: got SIGINT"),
        "{}",
        end.stderr
    );
    assert_eq!(failure_lines(&end.stderr), Vec::<&str>::new());
    for r in 0..3 {
        let got = fs::read_to_string(dir.path(&format!("sig.{r}"))).unwrap_or_default();
        assert_eq!(got, "TERM\n", "signals rank {r} got");
    }
    assert_gone(&pids);
}

#[test]
fn ranks_ignoring_sigterm_get_sigkill_after_the_grace_period() {
    let _w = Watchdog::new("ranks_ignoring_sigterm", TEST_LIMIT);
    let dir = Dir::new("grace");
    let script = format!(r#"trap "" TERM; {SLEEPER}"#);
    let launch = Launch::start(
        &[
            "run", "-n", "2", "--grace", "200ms", "--", "sh", "-c", &script,
        ],
        |c| {
            c.env("D", &dir.0);
        },
    );
    let pids: Vec<i32> = (0..2)
        .flat_map(|r| read_pids(&dir.path(&format!("pids.{r}"))))
        .collect();
    kill(launch.pid(), Signal::SIGTERM).unwrap();
    let end = launch.finish();
    assert_eq!(end.code, Some(143), "{end:?}");
    assert!(end.stderr.contains("got SIGTERM"), "{}", end.stderr);
    assert!(
        end.stderr
            .contains("the grace period of 200ms is over: SIGKILL to the 2 rank(s)"),
        "{}",
        end.stderr
    );
    let mut lines = failure_lines(&end.stderr);
    lines.sort();
    assert_eq!(
        lines,
        [
            "shmesh run: rank 0 was killed by signal 9 (SIGKILL), sent by shmesh run",
            "shmesh run: rank 1 was killed by signal 9 (SIGKILL), sent by shmesh run",
        ]
    );
    assert_gone(&pids);
}

#[test]
fn what_a_rank_left_running_is_stopped_after_the_grace_period() {
    let _w = Watchdog::new("what_a_rank_left_running", TEST_LIMIT);
    let dir = Dir::new("leftover");
    // The rank ends at once; the sleep it started holds its stdout open.
    let script = r#"sleep 1000 & echo "$$ $!" > "$D/tmp.$SHMESH_RANK" && mv "$D/tmp.$SHMESH_RANK" "$D/pids.$SHMESH_RANK""#;
    let end = run_sh(1, &["--grace", "100ms"], script, &dir);
    assert_eq!(end.code, Some(0), "{end:?}");
    assert!(
        end.stderr
            .contains("processes they started still hold their output open: SIGTERM to them"),
        "{}",
        end.stderr
    );
    assert_gone(&read_pids(&dir.path("pids.0")));
}

#[test]
fn timeout_stops_the_job_with_124() {
    let _w = Watchdog::new("timeout_stops_the_job", TEST_LIMIT);
    let dir = Dir::new("timeout");
    let job = job_id("timeout");
    let end = run_sh(
        2,
        &["--timeout", "300ms", "--job", &job],
        &format!("echo started; {SLEEPER}"),
        &dir,
    );
    assert_eq!(end.code, Some(124), "{end:?}");
    assert!(
        end.stderr
            .contains(&format!("job {job} timed out after 300ms (--timeout)")),
        "{}",
        end.stderr
    );
    for r in 0..2 {
        if let Ok(text) = fs::read_to_string(dir.path(&format!("pids.{r}"))) {
            let pids: Vec<i32> = text
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect();
            assert_gone(&pids);
        }
    }
}

/// The segments of `job` in `/dev/shm`.
fn job_segments(job: &str) -> Vec<String> {
    let prefix = format!("shmesh.world.{job}.");
    let mut names: Vec<String> = fs::read_dir("/dev/shm")
        .expect("read /dev/shm")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// Whether `out` has a line of rank `rank` (`[rank] ...`) that holds `text` (libtest may start
/// the line with `test child_entry ... `).
fn has_line(out: &str, rank: usize, text: &str) -> bool {
    let prefix = format!("[{rank}] ");
    out.lines()
        .any(|l| l.starts_with(&prefix) && l.contains(text))
}

/// The arguments that make this test binary run only `child_entry`.
fn child_args() -> [&'static str; 5] {
    [
        "--exact",
        "child_entry",
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ]
}

#[test]
fn segments_of_the_job_are_removed_afterwards() {
    let _w = Watchdog::new("segments_of_the_job_are_removed", TEST_LIMIT);
    let job = job_id("segments");
    // Left over from an earlier job of the same id, and held by a process outside the job.
    SegmentBuilder::new(format!("world.{job}.x"))
        .capacity(CAP)
        .persist(true)
        .create()
        .expect("create the fake segment");
    let held = SegmentBuilder::new(format!("world.{job}.held"))
        .capacity(CAP)
        .create()
        .expect("create the held segment");
    assert_eq!(job_segments(&job).len(), 2);

    let exe = this_exe();
    let mut args = vec!["run", "-n", "3", "--job", &job, "--"];
    args.push(exe.to_str().expect("UTF-8 path"));
    args.extend(child_args());
    let end = Launch::start(&args, |c| {
        c.env(CHILD_ENV, "segment");
    })
    .finish();
    for r in 0..3 {
        assert!(
            has_line(
                &end.stdout,
                r,
                &format!("@shmesh created world.{job}.r{r} on localhost")
            ),
            "rank {r} made its segment: {end:?}"
        );
    }
    assert_eq!(end.code, Some(137), "rank 1 was SIGKILLed: {end:?}");
    assert_eq!(
        job_segments(&job),
        [format!("shmesh.world.{job}.held")],
        "only the segment a live process holds is left: {}",
        end.stderr
    );
    assert!(
        end.stderr.contains("warning: 1 segment(s) of job")
            && end
                .stderr
                .contains(&format!("world.{job}.held (a live process")),
        "{}",
        end.stderr
    );

    // The library call the launcher makes, once nobody holds it.
    let name = held.name().to_owned();
    std::mem::forget(held); // as if its holder died: the name stays...
    match shmesh::run::remove_job_segments(&job) {
        // ...but this process still maps it, and still holds its "in use" token.
        Err(shmesh::run::CleanupError::Left {
            left, removed: 0, ..
        }) => {
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].name, name);
        }
        other => panic!("expected the held segment to be kept: {other:?}"),
    }
    let _ = fs::remove_file(format!("/dev/shm/shmesh.{name}"));
    SegmentBuilder::new(format!("world.{job}.y"))
        .capacity(CAP)
        .persist(true)
        .create()
        .unwrap();
    assert_eq!(shmesh::run::remove_job_segments(&job).unwrap(), 1);
    assert_eq!(job_segments(&job), Vec::<String>::new());
}

#[test]
fn start_errors_are_clear() {
    let _w = Watchdog::new("start_errors_are_clear", TEST_LIMIT);
    let dir = Dir::new("errors");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "-n", "2", "--", "/nonexistent/shmesh-rank"],
            "cannot start rank 0: `/nonexistent/shmesh-rank`: No such file",
        ),
        (
            vec!["run", "-n", "0", "--", "true"],
            "-n 0: a job needs at least 1 rank",
        ),
        (vec!["run", "--", "true"], "give -n N"),
        (
            vec!["run", "-n", "1", "--job", "a.b", "--", "true"],
            "invalid job id 'a.b'",
        ),
        (
            vec!["run", "-n", "1", "--timeout", "5", "--", "true"],
            "needs a unit",
        ),
    ];
    for (args, needle) in cases {
        let end = shmesh(&args);
        assert_eq!(
            end.code,
            Some(if args.contains(&"--timeout") { 2 } else { 1 })
        );
        assert!(end.stderr.contains(needle), "{args:?}: {}", end.stderr);
    }
    let hosts = dir.path("hosts");
    fs::write(&hosts, "a slots=1 exec=\"\"\n# fine\nb slots=zero\n").unwrap();
    let hosts = hosts.to_str().unwrap();
    let end = shmesh(&["run", "--hosts", hosts, "--", "true"]);
    assert_eq!(end.code, Some(1));
    assert!(
        end.stderr
            .contains(&format!("hosts file {hosts}, line 3 (`b slots=zero`)")),
        "{}",
        end.stderr
    );
    fs::write(dir.path("hosts"), "a slots=1 exec=\"\"\n").unwrap();
    let end = shmesh(&["run", "-n", "2", "--hosts", hosts, "--", "true"]);
    assert_eq!(end.code, Some(1));
    assert!(
        end.stderr.contains("has 1 slot(s) in all"),
        "{}",
        end.stderr
    );
}

#[test]
fn hosts_file_places_ranks_and_starts_them_through_exec() {
    let _w = Watchdog::new("hosts_file_places_ranks", TEST_LIMIT);
    let dir = Dir::new("hosts");
    let hosts = dir.path("hosts");
    fs::write(
        &hosts,
        "# two 'hosts' whose prefix marks the ranks it starts\n\
         a slots=2 exec=\"env ON=a\"\n\
         b slots=2 exec='env ON=b' bridge=10.0.0.2:7600\n\
         c slots=1 exec=\"\"\n",
    )
    .unwrap();
    let hosts = hosts.to_str().unwrap();
    let script = r#"echo "$SHMESH_RANK/$SHMESH_SIZE on=${ON:-none} host=$SHMESH_HOST local=$SHMESH_LOCAL_RANK/$SHMESH_LOCAL_SIZE hosts=$SHMESH_HOSTS""#;
    let lines = |end: &Ended| {
        let mut v: Vec<String> = end.stdout.lines().map(str::to_owned).collect();
        v.sort();
        v
    };

    let end = shmesh(&["run", "-n", "3", "--hosts", hosts, "--", "sh", "-c", script]);
    assert_eq!(end.code, Some(0), "{end:?}");
    assert_eq!(
        lines(&end),
        [
            "[0] 0/3 on=a host=a local=0/2 hosts=a:2,b:1",
            "[1] 1/3 on=a host=a local=1/2 hosts=a:2,b:1",
            "[2] 2/3 on=b host=b local=0/1 hosts=a:2,b:1",
        ]
    );

    let end = shmesh(&["run", "--hosts", hosts, "--", "sh", "-c", script]);
    assert_eq!(end.code, Some(0), "{end:?}");
    assert!(
        !end.stderr.contains("warning"),
        "clean-up through exec: {}",
        end.stderr
    );
    let all = "hosts=a:2,b:2,c:1";
    assert_eq!(
        lines(&end),
        [
            format!("[0] 0/5 on=a host=a local=0/2 {all}"),
            format!("[1] 1/5 on=a host=a local=1/2 {all}"),
            format!("[2] 2/5 on=b host=b local=0/2 {all}"),
            format!("[3] 3/5 on=b host=b local=1/2 {all}"),
            format!("[4] 4/5 on=none host=c local=0/1 {all}"),
        ]
    );
}

#[test]
fn ranks_on_two_netns_hosts_and_their_segments_removed_there() {
    if !root_or_skip("ranks_on_two_netns_hosts") {
        return;
    }
    let _w = Watchdog::new("ranks_on_two_netns_hosts", TEST_LIMIT);
    let net = Net::new(2).expect("two test hosts");
    let dir = Dir::new("netns");
    let mut file = String::new();
    for (i, host) in net.hosts().iter().enumerate() {
        let prefix: Vec<String> = std::iter::once("nsenter".to_owned())
            .chain(
                host.nsenter_args()
                    .into_iter()
                    .map(|a| a.into_string().expect("UTF-8")),
            )
            .collect();
        file.push_str(&format!(
            "h{i} slots={} exec=\"{}\"\n",
            i + 1,
            prefix.join(" ")
        ));
    }
    fs::write(dir.path("hosts"), &file).unwrap();
    let job = job_id("netns");
    let exe = this_exe();
    let hosts = dir.path("hosts");
    let mut args = vec![
        "run",
        "--hosts",
        hosts.to_str().unwrap(),
        "--job",
        &job,
        "--",
        exe.to_str().unwrap(),
    ];
    args.extend(child_args());
    let end = Launch::start(&args, |c| {
        c.env(CHILD_ENV, "segment");
    })
    .finish();
    assert_eq!(end.code, Some(137), "rank 1 was SIGKILLed: {end:?}");
    for (r, host) in [(0, "h0"), (1, "h1"), (2, "h1")] {
        assert!(
            has_line(
                &end.stdout,
                r,
                &format!("@shmesh created world.{job}.r{r} on {host}")
            ),
            "rank {r} made its segment on {host}: {end:?}"
        );
    }
    for (r, host) in [(0, 0), (1, 1), (2, 1)] {
        let inode = fs::metadata(net.host(host).netns_path()).unwrap().ino();
        assert!(
            has_line(&end.stdout, r, &format!("@shmesh netns {r} {inode}")),
            "rank {r} runs in the network namespace of h{host}: {end:?}"
        );
    }
    assert!(!end.stderr.contains("warning"), "{}", end.stderr);
    for host in net.hosts() {
        let listed = host.run("ls /dev/shm").expect("list the host's /dev/shm");
        assert!(
            !listed.contains(&format!("world.{job}.")),
            "segments of the job left on {}: {listed}",
            host.name()
        );
    }
    assert_eq!(job_segments(&job), Vec::<String>::new());
}

// ---- the rank role ----

/// A rank that makes the segment `world.<job>.r<rank>` and leaves it behind: rank 0 persists
/// it, rank 1 is killed by SIGKILL while holding it, others exit without dropping it.
fn segment_rank() {
    let var = |k| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let (job, rank, host) = (var("SHMESH_JOB"), var("SHMESH_RANK"), var("SHMESH_HOST"));
    let name = format!("world.{job}.r{rank}");
    let netns = fs::metadata("/proc/self/ns/net").expect("stat my network namespace");
    say("netns", format!("{rank} {}", netns.ino()));
    let seg = SegmentBuilder::new(&name)
        .capacity(CAP)
        .persist(rank == "0")
        .create()
        .expect("create the rank's segment");
    assert!(Path::new(&format!("/dev/shm/shmesh.{name}")).exists());
    say("created", format!("{name} on {host}"));
    match rank.as_str() {
        "0" => drop(seg),
        "1" => {
            kill(Pid::this(), Signal::SIGKILL).unwrap();
            unreachable!("killed");
        }
        _ => std::process::exit(0),
    }
}

#[test]
fn child_entry() {
    let Some((role, _args)) = child_role() else {
        return;
    };
    match role.as_str() {
        "segment" => segment_rank(),
        other => panic!("unknown child role {other}"),
    }
}
