//! Shared helpers of the `shmesh` crate's channel tests: unique channel names, deadlines, a
//! harness for real child processes, and the rich message type the tests send.
//!
//! The child-process harness follows `ring/tests/common/mod.rs` (that crate's dev-dependencies,
//! such as `rustix`, are not ours, so it is adapted rather than shared): a test binary
//! re-executes itself as the child, running `current_exe() --exact child_entry --nocapture
//! --test-threads=1 --include-ignored` with [`CHILD_ENV`] set to `"<role> <arg>..."`; the
//! `child_entry` test returns at once unless that variable is set, and otherwise plays the role.
//!
//! Parent and child talk over the child's stdin and stdout:
//! - the child announces progress with lines `@shmesh <key> <value>` ([`say`]); the parent waits
//!   for them with [`Proc::expect`], under a deadline;
//! - the parent tells the child to go on, or to end, by closing its stdin ([`Proc::close_stdin`]);
//!   a child blocked in [`wait_for_parent`] also ends when the parent dies.
//!
//! Every wait has a deadline ([`DEADLINE`]) that turns a hang into a failure and never judges
//! speed; every child is killed and reaped when its [`Proc`] drops (also when the test panics);
//! every channel name is unique to its test and process ([`ChannelName`]), so tests run in
//! parallel and leave nothing behind.

#![allow(dead_code)] // each test binary uses its own part of the helpers

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt::Display;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rkyv::{Archive, Deserialize, Serialize};

// ---- deadlines and names ----

/// The environment variable that makes the test binary play a child role: `"<role> <arg>..."`.
pub const CHILD_ENV: &str = "SHMESH_TEST_CHILD";
/// How long any single wait of a test may last before the test fails. Generous: it exists to
/// turn a hang into a failure, never to judge speed.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// How long one test may run before its [`Watchdog`] aborts the test binary.
pub const TEST_LIMIT: Duration = Duration::from_secs(300);
/// A child ends itself after this long, whatever happens (a last guard against leaked processes).
pub const CHILD_MAX_LIFETIME: Duration = Duration::from_secs(600);
/// The uid and gid of the unprivileged user the permission tests run children as.
pub const NOBODY: u32 = 65534;

/// Prefix of the lines of the parent/child protocol on the child's stdout.
const PROTO: &str = "@shmesh ";

/// A channel name unique to a test and to this process (`chan-<pid>-<test>-<n>`). On drop,
/// removes the shared-memory object of that name if something (a killed child, a failed test)
/// left it behind.
#[derive(Debug)]
pub struct ChannelName(String);

impl ChannelName {
    /// A fresh name for the test `test` (a short `[a-z0-9-]` label).
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        ChannelName(format!("chan-{}-{test}-{n}", std::process::id()))
    }

    /// The channel name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file of the channel's POSIX shared-memory object on Linux.
    pub fn path(&self) -> PathBuf {
        shm_path(&self.0)
    }
}

impl Display for ChannelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for ChannelName {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path());
    }
}

/// `/dev/shm/shmesh.<name>`: the file behind the channel `name`.
pub fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/shmesh.{name}"))
}

/// Runs `f` on a thread; fails if it has not returned within [`DEADLINE`]. For calls that block
/// without a timeout of their own (`send`, `recv`): a bug then fails the test instead of hanging
/// it (the stuck thread is left behind).
#[track_caller]
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not return within {DEADLINE:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Aborts the whole test binary if the test that made it is still running after `limit`: the
/// last line of defence against a hang in code the test calls directly. Disarmed on drop, also
/// when the test panics.
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

// ---- the rich message type ----

/// An enum with unit, tuple and struct variants.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum Shape {
    /// A unit variant.
    Empty,
    /// A tuple variant.
    Point(i32, i64),
    /// A struct variant with heap data.
    Labeled {
        /// A label.
        label: String,
        /// Some weights.
        weights: Vec<f64>,
    },
}

/// A nested struct.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct Inner {
    /// An identifier.
    pub id: u64,
    /// Tags.
    pub tags: Vec<String>,
    /// An optional nested shape.
    pub shape: Option<Shape>,
}

/// A struct with every kind of field the channel must carry.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Rich {
    /// The sequence number.
    pub seq: u64,
    /// A short string (empty, ASCII or not).
    pub name: String,
    /// A string of any length (up to 100 KiB).
    pub text: String,
    /// A nested vector.
    pub matrix: Vec<Vec<u32>>,
    /// An option that is `Some` or `None`.
    pub maybe: Option<String>,
    /// Another option.
    pub number: Option<u64>,
    /// Enums with data.
    pub shapes: Vec<Shape>,
    /// A hash map.
    pub counts: HashMap<String, u64>,
    /// An ordered map.
    pub names: BTreeMap<u32, String>,
    /// A nested struct.
    pub inner: Inner,
    /// A flag.
    pub flag: bool,
    /// A char.
    pub letter: char,
    /// Raw bytes.
    pub bytes: Vec<u8>,
}

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Non-ASCII words the generated strings are made of.
const WORDS: [&str; 8] = [
    "grüße",
    "🚀",
    "naïve",
    "日本語",
    "ascii",
    "",
    "Ωμέγα",
    "\u{0}nul",
];

/// A string of about `len` bytes, different for each `seed`.
pub fn text(seed: u64, len: usize) -> String {
    let mut rng = Rng(seed);
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        s.push(char::from(b'a' + rng.below(26) as u8));
    }
    s
}

/// The rich message number `seq`: every field depends on `seq`, sizes vary from a few hundred
/// bytes to several KiB, and every 50th message carries a 100 KiB string.
pub fn rich(seq: u64) -> Rich {
    let mut rng = Rng(seq ^ 0x5EED_0000);
    let text_len = if seq % 50 == 49 {
        100 * 1024
    } else {
        rng.below(3000) as usize
    };
    let rows = rng.below(6) as usize;
    let matrix = (0..rows)
        .map(|r| {
            (0..rng.below(40))
                .map(|c| (seq as u32).wrapping_mul(31) ^ (r as u32) << 8 ^ c as u32)
                .collect()
        })
        .collect();
    let shapes = (0..rng.below(5))
        .map(|i| match (seq + i) % 3 {
            0 => Shape::Empty,
            1 => Shape::Point(-(seq as i32) - i as i32, i64::MIN + seq as i64),
            _ => Shape::Labeled {
                label: text(seq * 7 + i, (i * 5) as usize),
                weights: (0..i).map(|w| w as f64 * 0.5 - seq as f64).collect(),
            },
        })
        .collect();
    let counts = (0..rng.below(8))
        .map(|i| (format!("k{i}-{}", text(seq + i, 3)), seq * 1000 + i))
        .collect();
    let names = (0..rng.below(8))
        .map(|i| ((i * 3 + seq) as u32, text(seq ^ i, i as usize)))
        .collect();
    Rich {
        seq,
        name: if seq % 4 == 0 {
            String::new()
        } else {
            format!("grüße 🚀 #{seq}")
        },
        text: text(seq, text_len),
        matrix,
        maybe: (seq % 3 != 0).then(|| text(seq + 1, 10)),
        number: (seq % 2 == 0).then_some(seq.wrapping_mul(0xDEAD_BEEF)),
        shapes,
        counts,
        names,
        inner: Inner {
            id: !seq,
            tags: (0..seq % 4).map(|t| format!("tag{t}")).collect(),
            shape: match seq % 3 {
                0 => None,
                1 => Some(Shape::Point(seq as i32, -1)),
                _ => Some(Shape::Empty),
            },
        },
        flag: seq % 2 == 1,
        letter: ['a', 'ß', '🚀', '\u{10FFFF}'][(seq % 4) as usize],
        bytes: (0..rng.below(300))
            .map(|b| (b as u8) ^ (seq as u8))
            .collect(),
    }
}

/// Compares a shape in the archive with the original, variant by variant.
#[track_caller]
pub fn check_shape(got: &ArchivedShape, want: &Shape, what: &str) {
    match (got, want) {
        (ArchivedShape::Empty, Shape::Empty) => {}
        (ArchivedShape::Point(a, b), Shape::Point(x, y)) => {
            assert_eq!((a.to_native(), b.to_native()), (*x, *y), "{what}: Point")
        }
        (
            ArchivedShape::Labeled { label, weights },
            Shape::Labeled {
                label: l,
                weights: w,
            },
        ) => {
            assert_eq!(label.as_str(), l, "{what}: label");
            let got: Vec<f64> = weights.iter().map(|x| x.to_native()).collect();
            assert_eq!(&got, w, "{what}: weights");
        }
        (got, want) => panic!("{what}: variant differs: got {got:?}, want {want:?}"),
    }
    // And the comparison the derive generates agrees.
    assert!(got == want, "{what}: ArchivedShape == Shape");
}

/// Compares a received archive with the original, field by field (through the archived types'
/// own accessors and comparisons, no deserialization).
#[track_caller]
pub fn check_rich(got: &ArchivedRich, want: &Rich) {
    let seq = want.seq;
    assert_eq!(got.seq, want.seq, "seq");
    assert_eq!(got.name, *want.name, "message {seq}: name");
    assert_eq!(
        got.text.len(),
        want.text.len(),
        "message {seq}: text length"
    );
    assert!(got.text == *want.text, "message {seq}: text differs");
    assert_eq!(got.matrix.len(), want.matrix.len(), "message {seq}: rows");
    for (r, (row, want_row)) in got.matrix.iter().zip(&want.matrix).enumerate() {
        let row: Vec<u32> = row.iter().map(|x| x.to_native()).collect();
        assert_eq!(&row, want_row, "message {seq}: matrix row {r}");
    }
    assert_eq!(
        got.maybe.as_ref().map(|s| s.as_str()),
        want.maybe.as_deref(),
        "message {seq}: maybe"
    );
    assert_eq!(
        got.number.as_ref().map(|n| n.to_native()),
        want.number,
        "message {seq}: number"
    );
    assert_eq!(got.shapes.len(), want.shapes.len(), "message {seq}: shapes");
    for (i, (s, w)) in got.shapes.iter().zip(&want.shapes).enumerate() {
        check_shape(s, w, &format!("message {seq}: shape {i}"));
    }
    assert_eq!(got.counts.len(), want.counts.len(), "message {seq}: counts");
    for (k, v) in &want.counts {
        assert_eq!(
            got.counts.get(k.as_str()).map(|v| v.to_native()),
            Some(*v),
            "message {seq}: counts[{k:?}]"
        );
    }
    for (k, v) in got.counts.iter() {
        assert_eq!(
            want.counts.get(k.as_str()),
            Some(&v.to_native()),
            "message {seq}: extra key {k:?}"
        );
    }
    // (rkyv's `ArchivedHashMap<ArchivedString, _> == HashMap<String, _>` does not compile: it
    // wants `String: Borrow<ArchivedString>`; the two loops above are that comparison.)
    assert_eq!(got.names.len(), want.names.len(), "message {seq}: names");
    let names: Vec<(u32, &str)> = got
        .names
        .iter()
        .map(|(k, v)| (k.to_native(), v.as_str()))
        .collect();
    let want_names: Vec<(u32, &str)> = want.names.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(names, want_names, "message {seq}: names, in order");
    assert!(got.names == want.names, "message {seq}: names ==");
    assert_eq!(got.inner.id, want.inner.id, "message {seq}: inner.id");
    let tags: Vec<&str> = got.inner.tags.iter().map(|t| t.as_str()).collect();
    assert_eq!(tags, want.inner.tags, "message {seq}: inner.tags");
    match (got.inner.shape.as_ref(), &want.inner.shape) {
        (None, None) => {}
        (Some(s), Some(w)) => check_shape(s, w, &format!("message {seq}: inner.shape")),
        (g, w) => panic!("message {seq}: inner.shape: got {g:?}, want {w:?}"),
    }
    assert!(got.inner == want.inner, "message {seq}: inner ==");
    assert_eq!(got.flag, want.flag, "message {seq}: flag");
    assert_eq!(got.letter, want.letter, "message {seq}: letter");
    assert_eq!(got.bytes.as_slice(), want.bytes, "message {seq}: bytes");
}

/// Checks a received archive against the original field by field, and its deserialized copy
/// with `==`.
#[track_caller]
pub fn check_received(got: &shmesh::channel::Received<'_, Rich>, want: &Rich) {
    check_rich(got, want);
    let owned: Rich = got
        .deserialize()
        .unwrap_or_else(|e| panic!("message {}: deserialize: {e}", want.seq));
    assert_eq!(&owned, want, "message {}: deserialized", want.seq);
}

// ---- child processes ----

/// The command that runs this test binary as the child `role` with `args`: `wrapper` (a program
/// and its leading arguments, e.g. `setpriv --reuid ...`) runs `exe`, or `exe` itself when
/// `wrapper` is `None`.
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

    /// The child's pid.
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

/// Ends this child after [`CHILD_MAX_LIFETIME`] whatever it is doing.
pub fn arm_child_lifetime() {
    thread::spawn(|| {
        thread::sleep(CHILD_MAX_LIFETIME);
        eprintln!("child still running after {CHILD_MAX_LIFETIME:?}: exiting");
        std::process::exit(99);
    });
}

// ---- other users ----

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
            "shmesh-test-exe-{}",
            ChannelName::new("exe").as_str()
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
