//! The bridges of a job that spans hosts: one `shmesh-bridge` per host, started before the
//! ranks and stopped after them, each configured with exactly the job's rings that cross hosts.
//!
//! A ring from rank `a` to rank `b` on another host is `world.<job>.<a>.<b>`: rank `a` makes
//! it on its host, that host's bridge exports it to `b`'s host, whose bridge imports it under
//! the same name, where rank `b` reads it (see `shmesh::world`). The configuration goes to each
//! bridge on its stdin (`--config /dev/stdin`), so nothing needs to be copied to the hosts;
//! with `--bridge-certs DIR` (made by `shmesh-bridge gen-certs --out DIR HOST...`, the same path
//! on every host) the bridges authenticate each other with TLS, `--bridge-insecure` runs them
//! in plaintext. Each bridge's log goes to `<temp dir>/shmesh-run-<job>/bridge-<host>.log`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Host, Plan, RunArgs, RunError};

/// How long a bridge has to start (bind its address) before the job is abandoned.
const START_LIMIT: Duration = Duration::from_secs(20);
/// The line a bridge logs once it listens (`shmesh-bridge[NAME]: started (...)`).
const STARTED: &str = "]: started (";

/// The bridges running for a job; [`JobBridges::stop`] ends them.
#[derive(Debug)]
pub(crate) struct JobBridges {
    running: Vec<(String, Child)>,
    dir: PathBuf,
}

/// A TOML basic string: JSON's escapes are TOML's.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// The configuration of the bridge on `plan.hosts[me]` for `job`.
pub(crate) fn config(plan: &Plan, me: usize, job: &str, certs: Option<&Path>) -> String {
    let host = |i: usize| &plan.hosts[i].0;
    let mut out = String::new();
    let own = host(me);
    let _ = writeln!(out, "name = {}", quoted(&own.name));
    let _ = writeln!(
        out,
        "listen = {}",
        quoted(own.bridge.as_deref().unwrap_or_default())
    );
    let _ = writeln!(
        out,
        "liveness_timeout = \"3s\"\nreconnect_interval = \"100ms\""
    );
    let others: Vec<usize> = (0..plan.hosts.len()).filter(|&i| i != me).collect();
    match certs {
        Some(dir) => {
            let file = |name: &str| quoted(&dir.join(name).to_string_lossy());
            let allow: Vec<String> = others.iter().map(|&i| quoted(&host(i).name)).collect();
            let _ = writeln!(
                out,
                "[tls]\nenabled = true\ncert = {}\nkey = {}\nca = {}\nallow = [{}]",
                file(&format!("{}.pem", own.name)),
                file(&format!("{}.key", own.name)),
                file("ca.pem"),
                allow.join(", ")
            );
        }
        None => {
            let _ = writeln!(out, "[tls]\nenabled = false");
        }
    }
    for &i in &others {
        let _ = writeln!(
            out,
            "[[peers]]\nname = {}\naddress = {}",
            quoted(&host(i).name),
            quoted(host(i).bridge.as_deref().unwrap_or_default())
        );
    }
    let n = plan.ranks.len();
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let (ha, hb) = (plan.ranks[a].host, plan.ranks[b].host);
            if ha == hb {
                continue;
            }
            let ring = quoted(&crate::world::ring_name(job, a, b));
            if ha == me {
                let _ = writeln!(
                    out,
                    "[[export]]\nname = {ring}\npeers = [{}]",
                    quoted(&host(hb).name)
                );
            } else if hb == me {
                let _ = writeln!(
                    out,
                    "[[import]]\npeer = {}\nname = {ring}",
                    quoted(&host(ha).name)
                );
            }
        }
    }
    out
}

/// The `shmesh-bridge` to run: `--bridge-bin`, else the one next to this executable, else
/// the one on `PATH`.
fn bridge_binary(args: &RunArgs) -> PathBuf {
    if let Some(bin) = &args.bridge_bin {
        return bin.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("shmesh-bridge")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("shmesh-bridge"))
}

/// Starts the job's bridges when its ranks span more than one host and every such host has a
/// `bridge=` address; `None` otherwise (with a note on stderr when a host lacks one).
///
/// # Errors
///
/// [`RunError::Bridge`] when neither `--bridge-certs` nor `--bridge-insecure` was given, or a
/// bridge does not start (the ones started are stopped).
pub(crate) fn start(
    plan: &Plan,
    job: &str,
    args: &RunArgs,
) -> Result<Option<JobBridges>, RunError> {
    if plan.hosts.len() < 2 {
        return Ok(None);
    }
    let fail = |host: &str, problem: String| RunError::Bridge {
        host: host.to_owned(),
        problem,
    };
    let without: Vec<&str> = plan
        .hosts
        .iter()
        .filter(|(h, _)| h.bridge.is_none())
        .map(|(h, _)| h.name.as_str())
        .collect();
    if !without.is_empty() {
        // Programs that do not talk across hosts still run; shmesh::world ranks would not
        // meet their peers on other hosts, so say why here.
        eprintln!(
            "shmesh run: note: no bridges started, as {} {} no `bridge=ADDR:PORT` in the hosts \
             file: ranks on different hosts cannot exchange messages",
            without.join(", "),
            if without.len() == 1 { "has" } else { "have" }
        );
        return Ok(None);
    }
    let certs =
        match (&args.bridge_certs, args.bridge_insecure) {
            (Some(dir), false) => Some(dir.as_path()),
            (None, true) => None,
            (Some(_), true) => {
                return Err(fail(
                    &plan.hosts[0].0.name,
                    "--bridge-certs and --bridge-insecure exclude each other".into(),
                ))
            }
            (None, false) => return Err(fail(
                &plan.hosts[0].0.name,
                "the ranks span several hosts: give --bridge-certs DIR (made by `shmesh-bridge \
                 gen-certs --out DIR HOST...`) for authenticated bridges, or --bridge-insecure \
                 for plaintext on a trusted network"
                    .into(),
            )),
        };
    let dir = std::env::temp_dir().join(format!("shmesh-run-{job}"));
    std::fs::create_dir_all(&dir).map_err(|e| {
        fail(
            &plan.hosts[0].0.name,
            format!("cannot make the log directory {}: {e}", dir.display()),
        )
    })?;
    let binary = bridge_binary(args);
    let mut bridges = JobBridges {
        running: Vec::new(),
        dir,
    };
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    for (i, (host, _)) in plan.hosts.iter().enumerate() {
        let log_path = bridges.log(&host.name);
        let log = File::create(&log_path).map_err(|e| {
            fail(
                &host.name,
                format!("cannot write {}: {e}", log_path.display()),
            )
        })?;
        let mut cmd = command(host, &binary);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let shown = format!("{cmd:?}");
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                bridges.stop(Duration::ZERO);
                return Err(fail(&host.name, format!("cannot run {shown}: {e}")));
            }
        };
        let text = config(plan, i, job, certs);
        let fed = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(text.as_bytes()));
        let stderr = child.stderr.take();
        bridges.running.push((host.name.clone(), child));
        if let Some(Err(e)) = fed {
            bridges.stop(Duration::ZERO);
            return Err(fail(
                &host.name,
                format!("cannot hand {shown} its configuration: {e}"),
            ));
        }
        let tx = ready_tx.clone();
        thread::spawn(move || follow(i, stderr, log, tx));
    }
    drop(ready_tx);
    let deadline = Instant::now() + START_LIMIT;
    let mut started = 0;
    while started < plan.hosts.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let problem = match ready_rx.recv_timeout(left) {
            Ok((_, Ok(()))) => {
                started += 1;
                continue;
            }
            Ok((i, Err(problem))) => Some((i, problem)),
            Err(_) => None,
        };
        let (i, problem) = problem.unwrap_or((0, format!("did not start within {START_LIMIT:?}")));
        let name = plan.hosts[i].0.name.clone();
        let log = bridges.log(&name);
        bridges.stop(Duration::ZERO);
        return Err(fail(
            &name,
            format!("{problem} (its log: {})", log.display()),
        ));
    }
    Ok(Some(bridges))
}

/// The command that runs the bridge on `host`, reading its configuration from stdin.
fn command(host: &Host, binary: &Path) -> Command {
    let mut cmd = match host.exec.split_first() {
        None => Command::new(binary),
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(binary);
            cmd
        }
    };
    cmd.args(["--config", "/dev/stdin", "--idle", "backoff"]);
    cmd
}

/// Copies a bridge's log lines to its file and reports once whether it started.
fn follow(
    i: usize,
    stderr: Option<std::process::ChildStderr>,
    mut log: File,
    ready: mpsc::Sender<(usize, Result<(), String>)>,
) {
    let Some(stderr) = stderr else {
        let _ = ready.send((i, Err("its log could not be read".into())));
        return;
    };
    let mut told = false;
    let mut last = String::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        if !told && line.contains(STARTED) {
            told = true;
            let _ = ready.send((i, Ok(())));
        }
        last = line;
    }
    if !told {
        let _ = ready.send((i, Err(format!("exited before it started: {last}"))));
    }
}

impl JobBridges {
    fn log(&self, host: &str) -> PathBuf {
        self.dir.join(format!("bridge-{host}.log"))
    }

    /// Where the bridges' logs are.
    pub(crate) fn log_dir(&self) -> &Path {
        &self.dir
    }

    /// Stops every bridge: SIGTERM, then SIGKILL after `grace`; reaps them.
    pub(crate) fn stop(&mut self, grace: Duration) {
        for (_, child) in &self.running {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for (_, child) in &mut self.running {
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.running.clear();
    }
}

impl Drop for JobBridges {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::super::Place;
    use super::*;

    fn host(name: &str, slots: usize, bridge: &str) -> Host {
        Host {
            name: name.into(),
            slots,
            exec: Vec::new(),
            bridge: Some(bridge.into()),
        }
    }

    #[test]
    fn each_bridge_exports_its_writers_rings_and_imports_its_readers() {
        let plan = Plan {
            hosts: vec![
                (host("a", 2, "10.0.0.1:7000"), 2),
                (host("b", 1, "10.0.0.2:7000"), 1),
            ],
            ranks: vec![
                Place {
                    host: 0,
                    local_rank: 0,
                },
                Place {
                    host: 0,
                    local_rank: 1,
                },
                Place {
                    host: 1,
                    local_rank: 0,
                },
            ],
        };
        let a = config(&plan, 0, "j1", Some(Path::new("/certs")));
        assert!(
            a.contains("name = \"a\"\nlisten = \"10.0.0.1:7000\""),
            "{a}"
        );
        assert!(a.contains("cert = \"/certs/a.pem\""), "{a}");
        assert!(a.contains("allow = [\"b\"]"), "{a}");
        assert!(
            a.contains("[[peers]]\nname = \"b\"\naddress = \"10.0.0.2:7000\""),
            "{a}"
        );
        for ring in ["world.j1.0.2", "world.j1.1.2"] {
            assert!(
                a.contains(&format!("[[export]]\nname = \"{ring}\"\npeers = [\"b\"]")),
                "{a}"
            );
        }
        for ring in ["world.j1.2.0", "world.j1.2.1"] {
            assert!(
                a.contains(&format!("[[import]]\npeer = \"b\"\nname = \"{ring}\"")),
                "{a}"
            );
        }
        assert!(
            !a.contains("world.j1.0.1"),
            "same-host rings are not bridged: {a}"
        );
        let b = config(&plan, 1, "j1", None);
        assert!(b.contains("[tls]\nenabled = false"), "{b}");
        assert_eq!(b.matches("[[export]]").count(), 2, "{b}");
        assert_eq!(b.matches("[[import]]").count(), 2, "{b}");
    }
}
