//! The peer process and what keeps a run bounded: spawning, CPU pinning, the stall watchdog,
//! the private temporary directory.

use std::fs::DirBuilder;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

use super::error::BenchError;

/// How long the parent waits for its peer to exit at the end of a measurement.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed measurement lets the peer exit by itself (so that its own error, often
/// the cause, is reported) before killing it.
const FAILURE_GRACE: Duration = Duration::from_millis(300);
/// How often the watchdog looks at the progress counter.
const TICK: Duration = Duration::from_millis(200);

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Result<Vec<usize>, BenchError> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(BenchError::os("sched_getaffinity"))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// The CPUs for the parent and the peer: the first two this process may use, or none when
/// there are fewer than two.
pub(crate) fn pick_cpus() -> Result<Option<(usize, usize)>, BenchError> {
    let cpus = allowed_cpus()?;
    Ok(match cpus.as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    })
}

/// Lets the calling process run on every CPU of `cpus` again (after [`pin`]), so that the
/// processes it starts next inherit all of them.
pub(crate) fn unpin(cpus: &[usize]) -> Result<(), BenchError> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)
            .map_err(BenchError::os(format!("selecting CPU {cpu}")))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(BenchError::os(format!(
        "sched_setaffinity to CPUs {cpus:?}"
    )))
}

/// Pins the calling process (its current and future threads) to `cpu`.
pub(crate) fn pin(cpu: usize) -> Result<(), BenchError> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .map_err(BenchError::os(format!("selecting CPU {cpu}")))?;
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(BenchError::os(format!("sched_setaffinity to CPU {cpu}")))
}

/// A private directory for sockets and FIFOs, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/shmesh-bench.<pid>.<k>` with mode 0700.
    pub(crate) fn new() -> Result<TempDir, BenchError> {
        let base = std::env::temp_dir();
        let pid = std::process::id();
        for k in 0..100 {
            let path = base.join(format!("shmesh-bench.{pid}.{k}"));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(BenchError::io(format!(
                        "creating the directory {} (set TMPDIR to a writable directory)",
                        path.display()
                    ))(e))
                }
            }
        }
        Err(BenchError::Usage(format!(
            "could not create a fresh directory shmesh-bench.{pid}.* in {}: remove old ones",
            base.display()
        )))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP remove this run's shared-memory segments
/// (`bench.<pid>.*`, and iceoryx2's files) and `dir`, then exit with 128 + the signal number. The peer dies with us
/// (`PR_SET_PDEATHSIG`).
///
/// Blocks those signals in the calling thread and so in every thread it starts afterwards: call
/// it first, from the main thread. A dedicated thread takes them with `sigwait`.
pub(crate) fn clean_up_on_signal(dir: PathBuf) -> Result<(), BenchError> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block()
        .map_err(BenchError::os("blocking SIGINT, SIGTERM and SIGHUP"))?;
    let pid = std::process::id();
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            if let Ok(signal) = set.wait() {
                remove_segments(pid);
                let _ = std::fs::remove_dir_all(&dir);
                eprintln!("shmesh bench: {signal}: stopped, temporary segments and files removed");
                std::process::exit(128 + signal as i32);
            }
        })
        .map_err(BenchError::io("starting the signal thread"))?;
    Ok(())
}

/// Removes the segments `bench.<pid>.*` left by a run of process `pid`, and the iceoryx2 files
/// of its measurements.
fn remove_segments(pid: u32) {
    #[cfg(feature = "peers")]
    super::iceoryx::remove_shm_files(&super::iceoryx::run_prefix(pid));
    for name in segments_named(&format!("bench.{pid}.")) {
        let _ = shmesh_ring::Segment::remove(&name);
    }
}

/// The names (without `shmesh.`) of the segments in `/dev/shm` that start with `prefix`.
pub(crate) fn segments_named(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().into_string().ok()?;
            let name = file.strip_prefix(shmesh_ring::segment::NAME_PREFIX)?;
            name.starts_with(prefix).then(|| name.to_owned())
        })
        .collect()
}

/// The running peer process. Killed and reaped on drop if still running.
#[derive(Debug)]
pub(crate) struct Peer {
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
    status: Option<ExitStatus>,
    /// [`spawn_piped`](Self::spawn_piped): the peer's stdin, for the parent's commands.
    stdin: Option<ChildStdin>,
    /// [`spawn_piped`](Self::spawn_piped): the lines of the peer's stdout, as they come.
    lines: Option<Receiver<String>>,
}

impl Peer {
    /// Starts this executable with `args`: no stdin, stdout discarded (it must not mix with
    /// ours), stderr captured for error reports.
    pub(crate) fn spawn(args: &[String]) -> Result<Peer, BenchError> {
        Self::start(args, &[], false)
    }

    /// Like [`spawn`](Self::spawn), with a line protocol both ways: the parent writes commands
    /// on the peer's stdin ([`tell`](Self::tell)) and reads the lines it prints on stdout
    /// ([`expect_line`](Self::expect_line), [`last_line`](Self::last_line)). Used by the
    /// fanned-out throughput, whose peers report readiness and results this way.
    pub(crate) fn spawn_piped(args: &[String]) -> Result<Peer, BenchError> {
        Self::start(args, &[], true)
    }

    /// Like [`spawn_piped`](Self::spawn_piped), with these environment variables set (the
    /// ranks of `shmesh bench allreduce`, which find their job in the environment).
    pub(crate) fn spawn_piped_env(
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<Peer, BenchError> {
        Self::start(args, env, true)
    }

    fn start(args: &[String], env: &[(&str, String)], piped: bool) -> Result<Peer, BenchError> {
        let exe = std::env::current_exe().map_err(BenchError::io(
            "finding the path of the running shmesh executable",
        ))?;
        Self::start_program(&exe, args, env, piped)
    }

    /// Starts `program` (not this executable) with `args` and `env`, stdin and stdout piped,
    /// stderr captured: `mpirun` for `shmesh bench allreduce`.
    pub(crate) fn spawn_program(
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<Peer, BenchError> {
        Self::start_program(program, args, env, true)
    }

    fn start_program(
        exe: &Path,
        args: &[String],
        env: &[(&str, String)],
        piped: bool,
    ) -> Result<Peer, BenchError> {
        let (stdin, stdout) = if piped {
            (Stdio::piped(), Stdio::piped())
        } else {
            (Stdio::null(), Stdio::null())
        };
        let mut child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BenchError::Spawn {
                exe: exe.display().to_string(),
                source,
            })?;
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            })
        });
        let lines = child.stdout.take().map(|pipe| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Ok(Peer {
            stdin: child.stdin.take(),
            child,
            stderr,
            status: None,
            lines,
        })
    }

    /// Writes `command` and a newline on the peer's stdin ([`spawn_piped`](Self::spawn_piped)).
    pub(crate) fn tell(&mut self, command: &str) -> Result<(), BenchError> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            BenchError::Usage("internal error: this peer has no command pipe".into())
        })?;
        match stdin
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| stdin.flush())
        {
            Ok(()) => Ok(()),
            // The peer is gone: its own error says why.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.check_alive()?;
                Err(BenchError::io(format!("telling the peer to {command}"))(e))
            }
            Err(e) => Err(BenchError::io(format!("telling the peer to {command}"))(e)),
        }
    }

    /// Waits (bounded by `timeout`, checking that the peer runs) for the next line the peer
    /// prints on stdout ([`spawn_piped`](Self::spawn_piped)); `what` names it in the error.
    pub(crate) fn expect_line(
        &mut self,
        what: &'static str,
        timeout: Duration,
    ) -> Result<String, BenchError> {
        let start = Instant::now();
        loop {
            let lines = self.lines.as_ref().ok_or_else(|| {
                BenchError::Usage("internal error: this peer has no output pipe".into())
            })?;
            match lines.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => return Ok(line),
                Err(RecvTimeoutError::Timeout) => {}
                // End of its output: it exited or is about to; its status says why.
                Err(RecvTimeoutError::Disconnected) => {
                    self.try_wait()?;
                    let status = match self.status {
                        Some(status) => status,
                        None => self.kill()?,
                    };
                    return Err(self.failure(status));
                }
            }
            self.check_alive()?;
            if start.elapsed() > timeout {
                return Err(BenchError::Timeout {
                    what,
                    waited: timeout,
                });
            }
        }
    }

    /// After the peer exited: the last line it printed on stdout, if any.
    pub(crate) fn last_line(&mut self) -> Option<String> {
        let lines = self.lines.as_ref()?;
        let mut last = None;
        // The reader thread ends at the end of the output, which an exited peer has reached.
        while let Ok(line) = lines.recv_timeout(EXIT_TIMEOUT) {
            last = Some(line);
        }
        last
    }

    /// After the peer exited: every line it printed on stdout not taken yet.
    pub(crate) fn remaining_lines(&mut self) -> Vec<String> {
        let Some(lines) = self.lines.as_ref() else {
            return Vec::new();
        };
        // The reader thread ends at the end of the output, which an exited peer has reached.
        let mut out = Vec::new();
        while let Ok(line) = lines.recv_timeout(EXIT_TIMEOUT) {
            out.push(line);
        }
        out
    }

    /// The peer's pid.
    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, BenchError> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(BenchError::io("waiting for the peer process"))?;
        }
        Ok(self.status)
    }

    fn kill(&mut self) -> Result<ExitStatus, BenchError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_err(BenchError::io("reaping the peer process"))?;
        self.status = Some(status);
        Ok(status)
    }

    fn failure(&mut self, status: ExitStatus) -> BenchError {
        let stderr = self
            .stderr
            .take()
            .and_then(|reader| reader.join().ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let status = match (status.code(), status.success()) {
            (_, true) => "exited before the benchmark was over".to_owned(),
            (Some(code), false) => format!("failed with exit code {code}"),
            (None, false) => format!("was killed ({status}) by another process or the kernel"),
        };
        BenchError::PeerFailed { status, stderr }
    }

    /// Whether the peer has exited: `None` while it runs, then `Ok` if it exited with
    /// success, the error describing its failure otherwise.
    pub(crate) fn poll_exit(&mut self) -> Result<Option<Result<(), BenchError>>, BenchError> {
        Ok(self.try_wait()?.map(|status| {
            if status.success() {
                Ok(())
            } else {
                Err(self.failure(status))
            }
        }))
    }

    /// Stops the peer: SIGTERM, up to `grace` to exit, then SIGKILL; reaped either way. For
    /// programs that clean up after their own children on SIGTERM (`mpirun`).
    pub(crate) fn terminate(&mut self, grace: Duration) {
        if self.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if self.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.kill();
    }

    /// Fails if the peer has exited: while the parent waits for it, any exit is a failure.
    pub(crate) fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => Err(self.failure(status)),
        }
    }

    /// Waits (bounded) for the peer to exit and reports how it ended.
    ///
    /// With `failed` (the parent's side failed), the peer gets a short grace to exit by itself
    /// and is then killed; `Ok` then means "nothing to add to the parent's error".
    pub(crate) fn finish(&mut self, failed: bool) -> Result<(), BenchError> {
        // No more commands: a peer still waiting for one sees the end of its input.
        self.stdin = None;
        let grace = if failed { FAILURE_GRACE } else { EXIT_TIMEOUT };
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.try_wait()? {
                break status;
            }
            if start.elapsed() >= grace {
                self.kill()?;
                return if failed {
                    Ok(())
                } else {
                    Err(BenchError::Timeout {
                        what: "the peer process to exit (it was killed)",
                        waited: grace,
                    })
                };
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if status.success() {
            Ok(())
        } else {
            Err(self.failure(status))
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill();
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    progress: AtomicU64,
    stop: AtomicBool,
    stalled: AtomicBool,
}

/// Kills the peers when the progress counter stops moving for too long, so that no wait of
/// any process can last forever: a dead peer ends every blocking call of the parent
/// (`PeerGone` on a ring, end of file on a socket or pipe). Also reports progress.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching: `tick` gets the progress counter every 200 ms; after `stall` without
    /// progress, every one of `victims` gets `SIGKILL`.
    pub(crate) fn start(
        stall: Duration,
        victims: Vec<Pid>,
        mut tick: impl FnMut(u64) + Send + 'static,
    ) -> Result<Watchdog, BenchError> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("bench-watchdog".into())
            .spawn(move || {
                let mut last = 0;
                let mut last_change = Instant::now();
                loop {
                    std::thread::park_timeout(TICK);
                    if theirs.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let now = theirs.progress.load(Ordering::Relaxed);
                    tick(now);
                    if now != last {
                        last = now;
                        last_change = Instant::now();
                    } else if last_change.elapsed() > stall {
                        theirs.stalled.store(true, Ordering::Release);
                        for &victim in &victims {
                            let _ = kill(victim, Signal::SIGKILL);
                        }
                        return;
                    }
                }
            })
            .map_err(BenchError::io("starting the watchdog thread"))?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// The counter the measured loop bumps.
    pub(crate) fn progress(&self) -> &AtomicU64 {
        &self.shared.progress
    }

    /// Whether the watchdog killed the peer.
    pub(crate) fn stalled(&self) -> bool {
        self.shared.stalled.load(Ordering::Acquire)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
