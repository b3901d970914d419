//! The harness for shmesh's tests that run real child processes (a dev-dependency of the
//! workspace's crates, never published).
//!
//! A test binary re-executes itself as the child: the parent runs
//! `current_exe() --exact child_entry --nocapture --test-threads=1 --include-ignored` with
//! [`CHILD_ENV`] set to `"<role> <arg>..."`; the `child_entry` test of the binary returns at once
//! unless that variable is set, and otherwise plays the role. So every process of a test lives in
//! one file, and no extra binary has to be built.
//!
//! Parent and child talk over the child's stdin and stdout:
//! - the child announces progress with lines `@shmesh <key> <value>` ([`say`]); the parent waits
//!   for them with [`Proc::expect`], under a deadline;
//! - the parent tells the child to go on, or to end, by closing its stdin ([`Proc::close_stdin`]);
//!   a child blocked in [`wait_for_parent`] also ends when the parent dies, so no child outlives
//!   its test by more than [`CHILD_MAX_LIFETIME`].
//!
//! Every wait has a deadline ([`DEADLINE`]) and every child is killed and reaped when its
//! [`Proc`] drops (also when the test panics). Names of shared-memory objects are each test
//! crate's own business.
#![deny(missing_docs)]

pub mod netns;

use std::ffi::OsStr;
use std::fmt::Display;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The environment variable that makes the test binary play a child role: `"<role> <arg>..."`.
pub const CHILD_ENV: &str = "SHMESH_TEST_CHILD";
/// How long any single wait of a test may last before the test fails. Generous: it exists to
/// turn a hang into a failure, never to judge speed.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// A child ends itself after this long, whatever happens (a last guard against leaked processes).
pub const CHILD_MAX_LIFETIME: Duration = Duration::from_secs(600);
/// The uid and gid of the unprivileged user the permission tests run children as.
pub const NOBODY: u32 = 65534;

/// Prefix of the lines of the parent/child protocol on the child's stdout.
const PROTO: &str = "@shmesh ";

/// Numbers the copies of the test binary made by [`SharedExe`].
static NEXT_EXE: AtomicU32 = AtomicU32::new(0);

/// The command that runs this test binary as the child `role` with `args`: `program` (with
/// `prefix` arguments, e.g. `unshare -p -f --kill-child`) runs `exe`, or `exe` itself when
/// `program` is `None`.
pub fn child_command(
    wrapper: Option<(&str, &[&str])>,
    exe: &Path,
    role: &str,
    args: &[&dyn Display],
) -> Command {
    let mut spec = role.to_owned();
    for arg in args {
        spec.push(' ');
        spec.push_str(&arg.to_string());
    }
    let libtest = [
        "--exact",
        "child_entry",
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ];
    let mut cmd = match wrapper {
        Some((program, prefix)) => {
            let mut cmd = Command::new(program);
            cmd.args(prefix).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.args(libtest).env(CHILD_ENV, spec);
    cmd
}

/// This test binary.
pub fn this_exe() -> PathBuf {
    std::env::current_exe().expect("current_exe")
}

/// A running child process: its protocol lines, its output (kept for failure messages), its
/// stdin. Killed and reaped on drop unless it has been waited for.
pub struct Proc {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("label", &self.label)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Proc {
    /// Runs this test binary as the child `role` with `args`.
    pub fn spawn(role: &str, args: &[&dyn Display]) -> Proc {
        Proc::spawn_cmd(role, child_command(None, &this_exe(), role, args))
    }

    /// Runs `cmd` (made by [`child_command`]) with piped stdio; `label` names it in messages.
    pub fn spawn_cmd(label: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {label} ({cmd:?}): {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let out_log = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have started the line ("test child_entry ... ").
                if let Some(at) = line.find(PROTO) {
                    let _ = tx.send(line[at + PROTO.len()..].to_owned());
                }
                let mut log = out_log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let err_log = Arc::clone(&log);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                let mut log = err_log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = child.stdin.take();
        Proc {
            label: label.to_owned(),
            child,
            stdin,
            lines,
            log,
            status: None,
        }
    }

    /// The child's pid (in the parent's pid namespace).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last 60 lines the child printed.
    pub fn output(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<&str> = log.lines().collect();
        let skipped = lines.len().saturating_sub(60);
        let mut out = if skipped > 0 {
            format!("[{skipped} lines skipped]\n")
        } else {
            String::new()
        };
        for line in &lines[skipped..] {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Panics with `msg` and the child's output.
    #[track_caller]
    pub fn fail(&self, msg: impl Display) -> ! {
        panic!(
            "{}: {msg}\n--- output of child '{}' (pid {}) ---\n{}--- end of output ---",
            self.label,
            self.label,
            self.child.id(),
            self.output()
        )
    }

    /// Waits for the next protocol line, which must be `key`, and returns its value.
    #[track_caller]
    pub fn expect(&mut self, key: &str) -> String {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => {
                let (k, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                if k != key {
                    self.fail(format!("expected '{key}' from the child, got '{line}'"));
                }
                value.to_owned()
            }
            Err(RecvTimeoutError::Timeout) => {
                self.fail(format!("no '{key}' from the child within {DEADLINE:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.wait();
                self.fail(format!("the child ended ({status}) before saying '{key}'"))
            }
        }
    }

    /// Every protocol line the child printed so far and has not been taken yet. Call after the
    /// child ended (waited for or killed) to get all of them: its stdout reader stops when the
    /// pipe closes, and this waits (up to [`DEADLINE`]) for that.
    pub fn remaining_lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match self.lines.recv_timeout(DEADLINE) {
                Ok(line) => out.push(line),
                Err(RecvTimeoutError::Disconnected) => return out,
                Err(RecvTimeoutError::Timeout) => {
                    self.fail("the child's stdout did not close within the deadline")
                }
            }
        }
    }

    /// Closes the child's stdin: "go on" or "you may end now", depending on the role.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Writes one line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("write to child stdin");
    }

    /// Kills the child with SIGKILL and reaps it: when this returns, the kernel has closed all
    /// its files and released its locks.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("wait for killed child"));
        }
    }

    /// Closes the child's stdin and waits for it to end; kills it and fails after [`DEADLINE`].
    #[track_caller]
    pub fn wait(&mut self) -> ExitStatus {
        self.close_stdin();
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                self.fail(format!("the child did not end within {DEADLINE:?}; killed"));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the child to end and fails unless it exited with status 0.
    #[track_caller]
    pub fn wait_success(&mut self) {
        let status = self.wait();
        if !status.success() {
            self.fail(format!("the child failed: {status}"));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Aborts the whole test binary if the test that made it is still running after `limit`: the
/// last line of defence against a hang in code the test calls directly (its children are
/// bounded by [`DEADLINE`] already). Disarmed on drop, also when the test panics.
#[derive(Debug)]
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    /// Arms a watchdog for the test `test`.
    pub fn new(test: &'static str, limit: Duration) -> Self {
        let (disarm, armed) = mpsc::channel::<()>();
        thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
                eprintln!(
                    "test {test} is still running after {limit:?}: it hangs; aborting the test \
                     binary (its children end when their stdin closes)"
                );
                std::process::exit(124);
            }
        });
        Watchdog { _disarm: disarm }
    }
}

// ---- child side ----

/// Announces `key value` to the parent (a protocol line on stdout).
pub fn say(key: &str, value: impl Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PROTO}{key} {value}");
    let _ = out.flush();
}

/// Blocks until the parent closes our stdin (or dies). Returns the lines it sent meanwhile.
pub fn wait_for_parent() -> Vec<String> {
    std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .collect()
}

/// A flag that becomes true when the parent closes our stdin (or dies): for roles that loop.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    thread::spawn(move || {
        wait_for_parent();
        set.store(true, Ordering::Release);
    });
    flag
}

/// Ends this child after [`CHILD_MAX_LIFETIME`] whatever it is doing.
pub fn arm_child_lifetime() {
    thread::spawn(|| {
        thread::sleep(CHILD_MAX_LIFETIME);
        eprintln!("child still running after {CHILD_MAX_LIFETIME:?}: exiting");
        std::process::exit(99);
    });
}

// ---- privileged tools ----

/// Whether this process runs as root (its effective uid, from `/proc/self/status`).
pub fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("a Uid: line in /proc/self/status");
    // Real, effective, saved, filesystem.
    uids.split_whitespace().nth(1) == Some("0")
}

/// Checks that `program args...` runs and exits 0, or panics saying what to install or grant.
pub fn require_tool(program: &str, args: &[&str], needs: &str) {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{program} {}` failed ({}): {}\nthis test needs {needs}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` not found: install util-linux (Debian/Ubuntu: `apt-get install \
             util-linux`); this test needs {needs}"
        ),
        Err(e) => panic!("cannot run `{program}`: {e}; this test needs {needs}"),
    }
}

/// A copy of (or the path to) this test binary that another user can execute.
#[derive(Debug)]
pub struct SharedExe {
    path: PathBuf,
    dir: Option<PathBuf>,
}

// `new` copies a file: not what a `Default` should do.
#[allow(clippy::new_without_default)]
impl SharedExe {
    /// This test binary if every directory above it lets others in and the file is readable
    /// and executable by others; else a copy in a fresh 0755 directory under the temp dir.
    pub fn new() -> Self {
        let exe = this_exe();
        if others_can_execute(&exe) {
            return SharedExe {
                path: exe,
                dir: None,
            };
        }
        let dir = std::env::temp_dir().join(format!(
            "shmesh-test-exe-{}-{}",
            std::process::id(),
            NEXT_EXE.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create dir for the test binary copy");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let path = dir.join(exe.file_name().unwrap_or(OsStr::new("test")));
        fs::copy(&exe, &path).expect("copy the test binary");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod copy");
        assert!(
            others_can_execute(&path),
            "the copy {} of the test binary is not executable by other users (is the temp dir \
             mounted noexec or not traversable? set TMPDIR)",
            path.display()
        );
        SharedExe {
            path,
            dir: Some(dir),
        }
    }

    /// The path to execute.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SharedExe {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn others_can_execute(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    if meta.mode() & 0o005 != 0o005 {
        return false;
    }
    path.ancestors().skip(1).all(|dir| {
        dir.as_os_str().is_empty() || fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 != 0)
    })
}

// ---- child roles ----

/// The arguments of a child role, parsed on demand.
#[derive(Debug)]
pub struct Args(pub Vec<String>);

impl Args {
    /// Argument `i` as a string.
    pub fn s(&self, i: usize) -> &str {
        self.0
            .get(i)
            .unwrap_or_else(|| panic!("missing child argument {i}"))
    }

    /// Argument `i`, parsed.
    pub fn get<T: std::str::FromStr>(&self, i: usize) -> T {
        self.s(i)
            .parse()
            .unwrap_or_else(|_| panic!("bad child argument {i}: {}", self.s(i)))
    }
}

/// The role and arguments this test binary was started with as a child, if it was: arms the
/// child's lifetime guard too.
pub fn child_role() -> Option<(String, Args)> {
    let spec = std::env::var(CHILD_ENV).ok()?;
    arm_child_lifetime();
    let mut words = spec.split_whitespace();
    let role = words.next().expect("a role").to_owned();
    Some((role, Args(words.map(str::to_owned).collect())))
}
