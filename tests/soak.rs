//! Soak: publishers and subscribers in many processes, one of them killed with SIGKILL and
//! restarted every 1 to 2 seconds, for `SHMESH_SOAK_SECS` seconds (20 by default; keep it at 60
//! or less in CI).
//!
//! - Each of [`PUBLISHERS`] publisher processes publishes on its own `Block` topic, numbering
//!   its messages from 0; a message carries `(publisher pid, start time, seq)` and a payload
//!   derived from them. A restarted publisher takes the killed one's place on the same topic.
//! - Each of [`SUBSCRIBERS`] subscriber processes subscribes to every topic and polls them in
//!   turn with `try_recv`. It checks every payload and, per topic and publisher instance, that
//!   sequence numbers follow each other: no duplicate, no reordering, no gap, except where it
//!   joined (its first message of a topic may be any). A publisher instance that follows
//!   another on a topic must start at 0 (the subscriber was subscribed when it attached), and
//!   an instance that was followed must never show up again. A violation is reported (`bad`)
//!   and fails the test.
//! - Subscribers report progress every 200 ms; none may go 10 s without receiving anything
//!   (their publishers are restarted at once, so some are always alive). A child that ends on
//!   its own fails the test.
//! - After the kills stop, every subscriber must hear from every current publisher on every
//!   topic (a taken-over topic works for the subscribers that were on it); then everything
//!   shuts down cleanly (stdin closed), every child exits 0, and nothing with the test's prefix
//!   is left in `/dev/shm` — without any garbage collection.
//!
//! The topics are created by the test process, so a killed child never leaves a segment of its
//! own. The run prints its random seed; `SHMESH_SOAK_SEED` replays the same kill choices.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    child_command, child_role, say, stop_flag, this_exe, Prefix, Rng, Watchdog, DEADLINE,
};
use rkyv::{Archive, Deserialize, Serialize};
use shmesh::channel::{RecvError, SendTimeoutError, TryRecvError};
use shmesh::topic::Topic;

/// Publisher processes (one topic each).
const PUBLISHERS: usize = 3;
/// Subscriber processes (on every topic).
const SUBSCRIBERS: usize = 3;
/// The longest a subscriber may go without receiving anything.
const STALL: Duration = Duration::from_secs(10);
/// How often subscribers report progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Ring capacity of each topic: small, so that publishers wait for subscribers all the time.
const CAPACITY: u64 = 16 * 1024;

/// One message: who published it (pid and start time: one publisher instance), its number in
/// that instance's stream, and a payload of 0 to 199 bytes derived from all three.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct Stamp {
    pid: u32,
    epoch: u64,
    seq: u64,
    payload: Vec<u8>,
}

fn payload(pid: u32, epoch: u64, seq: u64) -> Vec<u8> {
    (0..seq % 200)
        .map(|i| (seq.wrapping_mul(31) ^ i ^ epoch ^ u64::from(pid)) as u8)
        .collect()
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Some((role, a)) = child_role() else {
        return;
    };
    match role.as_str() {
        "publisher" => role_publisher(a.s(0)),
        "subscriber" => role_subscriber(&a.0),
        other => panic!("unknown child role '{other}'"),
    }
}

/// Publishes on `name` until told to stop (stdin closed), never waiting longer than 100 ms at
/// a time.
fn role_publisher(name: &str) {
    let stop = stop_flag();
    let topic = Topic::<Stamp>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut publisher = topic.publisher().expect("attach the publisher");
    let pid = std::process::id();
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    say("attached", pid);
    let mut stamp = Stamp {
        pid,
        epoch,
        seq: 0,
        payload: Vec::new(),
    };
    while !stop.load(Ordering::Acquire) {
        stamp.payload = payload(pid, epoch, stamp.seq);
        match publisher.publish_timeout(&stamp, Duration::from_millis(100)) {
            Ok(()) => stamp.seq += 1,
            Err(SendTimeoutError::Timeout) => {}
            Err(e) => panic!("publish {}: {e}", stamp.seq),
        }
    }
    say("final", stamp.seq);
}

/// What a subscriber knows of one topic's stream.
#[derive(Default)]
struct Track {
    /// The publisher instance of the last message, and the next number expected from it.
    current: Option<((u32, u64), u64)>,
    /// Instances that were followed by another: never to be seen again.
    retired: HashSet<(u32, u64)>,
}

/// Reports a violation and fails.
fn bad(what: String) -> ! {
    say("bad", &what);
    panic!("{what}");
}

/// Subscribes to every topic named, then polls them in turn with `try_recv` until told to
/// stop, checking every message.
fn role_subscriber(names: &[String]) {
    let stop = stop_flag();
    let topics: Vec<Topic<Stamp>> = names
        .iter()
        .map(|n| Topic::open(n).unwrap_or_else(|e| panic!("open {n}: {e}")))
        .collect();
    let mut subs: Vec<_> = topics
        .iter()
        .map(|t| t.subscriber().expect("subscribe"))
        .collect();
    let mut tracks: Vec<Track> = names.iter().map(|_| Track::default()).collect();
    say("subscribed", std::process::id());
    let (mut total, mut last_report) = (0u64, Instant::now());
    while !stop.load(Ordering::Acquire) {
        let mut got_any = false;
        for (t, sub) in subs.iter_mut().enumerate() {
            let m = match sub.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => continue,
                // The publisher was killed; a new one takes its place and this subscriber
                // reads on.
                Err(TryRecvError::Failed(RecvError::Disconnected)) => continue,
                Err(e) => bad(format!("topic {t}: {e}")),
            };
            got_any = true;
            total += 1;
            let (pid, epoch, seq) = (m.pid.to_native(), m.epoch.to_native(), m.seq.to_native());
            if m.payload.as_slice() != payload(pid, epoch, seq) {
                bad(format!("topic {t}: payload of {pid}/{seq} damaged"));
            }
            let instance = (pid, epoch);
            let track = &mut tracks[t];
            match track.current {
                Some((cur, next)) if cur == instance => {
                    if seq != next {
                        bad(format!(
                            "topic {t}: publisher {pid}: message {seq} after {} ({})",
                            next - 1,
                            if seq < next {
                                "duplicate or reordered"
                            } else {
                                "gap"
                            }
                        ));
                    }
                }
                Some((cur, _)) => {
                    if track.retired.contains(&instance) {
                        bad(format!(
                            "topic {t}: publisher {pid} again after its successor"
                        ));
                    }
                    track.retired.insert(cur);
                    if seq != 0 {
                        bad(format!(
                            "topic {t}: new publisher {pid} (after {}) starts at {seq}, not 0",
                            cur.0
                        ));
                    }
                    say("seen", format!("{t} {pid}"));
                }
                // Joined: the first message may be any.
                None => say("seen", format!("{t} {pid}")),
            }
            track.current = Some((instance, seq + 1));
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            say("progress", total);
            last_report = Instant::now();
        }
        if !got_any {
            thread::sleep(Duration::from_micros(100));
        }
    }
    drop(subs);
    say("final", total);
}

// ---- the parent side ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher(usize),
    Subscriber(usize),
}

/// A child of the soak: its stdin, its protocol lines (on the shared event channel) and the
/// last lines of its output for failure messages.
struct Kid {
    role: Role,
    child: Child,
    stdin: Option<ChildStdin>,
    log: Arc<Mutex<Vec<String>>>,
    started: Instant,
    /// Subscribers: the last progress count, and when it last grew.
    progress: (u64, Instant),
    /// Subscribers: per topic, the publisher pids heard from.
    seen: Vec<HashSet<u32>>,
    /// Publishers: the pid it announced once attached.
    attached: bool,
}

/// A line of a child: its pid, the key and the value.
type Event = (u32, String, String);

impl Kid {
    fn spawn(role: Role, topics: &[String], events: &mpsc::Sender<Event>) -> Kid {
        let names: Vec<&dyn std::fmt::Display> =
            topics.iter().map(|t| t as &dyn std::fmt::Display).collect();
        let mut cmd = match role {
            Role::Publisher(i) => child_command(None, &this_exe(), "publisher", &[&topics[i]]),
            Role::Subscriber(_) => child_command(None, &this_exe(), "subscriber", &names),
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn a soak child");
        let pid = child.id();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let (tx, out_log) = (events.clone(), Arc::clone(&log));
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("@shmesh ") {
                    let rest = &line[at + "@shmesh ".len()..];
                    let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                    let _ = tx.send((pid, k.to_owned(), v.to_owned()));
                }
                push_log(&out_log, line);
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let err_log = Arc::clone(&log);
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            for line in text.lines() {
                push_log(&err_log, line.to_owned());
            }
        });
        Kid {
            role,
            stdin: child.stdin.take(),
            child,
            log,
            started: Instant::now(),
            progress: (0, Instant::now()),
            seen: vec![HashSet::new(); topics.len()],
            attached: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "{what}\n--- output of {:?} (pid {}) ---\n{}\n--- end ---",
            self.role,
            self.pid(),
            self.output()
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

fn push_log(log: &Mutex<Vec<String>>, line: String) {
    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
    if log.len() >= 80 {
        log.remove(0);
    }
    log.push(line);
}

/// Handles one event of a child; fails on a violation.
fn handle(kids: &mut [Kid], (pid, key, value): Event) {
    // Lines of a killed child may still arrive: ignore them.
    let Some(kid) = kids.iter_mut().find(|k| k.pid() == pid) else {
        return;
    };
    match key.as_str() {
        "bad" => kid.fail(format!("violation: {value}")),
        "progress" => {
            let n: u64 = value.parse().unwrap();
            if n > kid.progress.0 {
                kid.progress = (n, Instant::now());
            }
        }
        "seen" => {
            let (t, p) = value.split_once(' ').unwrap();
            kid.seen[t.parse::<usize>().unwrap()].insert(p.parse().unwrap());
        }
        "attached" => kid.attached = true,
        _ => {}
    }
}

/// Fails if a child ended on its own or a subscriber stalled.
fn check(kids: &mut [Kid]) {
    for kid in kids.iter_mut() {
        if let Ok(Some(status)) = kid.child.try_wait() {
            kid.fail(format!("ended on its own: {status}"));
        }
        if let Role::Subscriber(_) = kid.role {
            let since = kid.progress.1.max(kid.started);
            if since.elapsed() > STALL {
                kid.fail(format!(
                    "stalled: no message for {:?} (received {} in all)",
                    since.elapsed(),
                    kid.progress.0
                ));
            }
        }
    }
}

#[test]
fn soak_publishers_and_subscribers_survive_random_kills() {
    let secs: u64 = std::env::var("SHMESH_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("SHMESH_SOAK_SECS: a number of seconds"))
        .unwrap_or(20);
    let duration = Duration::from_secs(secs);
    let _watchdog = Watchdog::new("soak", duration + 4 * DEADLINE);
    let seed: u64 = std::env::var("SHMESH_SOAK_SEED")
        .ok()
        .map(|s| s.parse().expect("SHMESH_SOAK_SEED: a number"))
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                ^ u64::from(std::process::id())
        });
    eprintln!("soak: {secs} s, seed {seed} (SHMESH_SOAK_SEED to replay)");
    let mut rng = Rng(seed);

    let prefix = Prefix::new("soak");
    let names: Vec<String> = (0..PUBLISHERS)
        .map(|i| prefix.name(&format!("t{i}")))
        .collect();
    let topics: Vec<Topic<Stamp>> = names
        .iter()
        .map(|n| {
            Topic::<Stamp>::builder(n)
                .capacity(CAPACITY)
                .subscribers(SUBSCRIBERS + 4)
                .create()
                .unwrap()
        })
        .collect();
    let (events, rx) = mpsc::channel::<Event>();
    let roles: Vec<Role> = (0..PUBLISHERS)
        .map(Role::Publisher)
        .chain((0..SUBSCRIBERS).map(Role::Subscriber))
        .collect();
    let mut kids: Vec<Kid> = roles
        .iter()
        .map(|&r| Kid::spawn(r, &names, &events))
        .collect();

    let start = Instant::now();
    let mut next_kill = start + Duration::from_millis(1000 + rng.below(1000));
    let mut kills: HashMap<&'static str, u32> = HashMap::new();
    while start.elapsed() < duration {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(event) => handle(&mut kids, event),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("events: {e}"),
        }
        check(&mut kids);
        if Instant::now() >= next_kill {
            let victim = rng.below(kids.len() as u64) as usize;
            let role = kids[victim].role;
            kids[victim].kill();
            kids[victim] = Kid::spawn(role, &names, &events);
            *kills
                .entry(match role {
                    Role::Publisher(_) => "publishers",
                    Role::Subscriber(_) => "subscribers",
                })
                .or_default() += 1;
            next_kill = Instant::now() + Duration::from_millis(1000 + rng.below(1000));
        }
    }

    // Settle: every subscriber hears from every current publisher on its topic.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let publishers: Vec<Option<u32>> = (0..PUBLISHERS)
            .map(|i| {
                kids.iter()
                    .find(|k| k.role == Role::Publisher(i))
                    .map(Kid::pid)
            })
            .collect();
        let missing: Vec<String> = kids
            .iter()
            .filter(|k| matches!(k.role, Role::Subscriber(_)))
            .flat_map(|k| {
                publishers.iter().enumerate().filter_map(move |(t, p)| {
                    let p = p.expect("a publisher per topic");
                    (!k.seen[t].contains(&p))
                        .then(|| format!("subscriber {} on topic {t} (publisher {p})", k.pid()))
                })
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the kills stopped, within {DEADLINE:?}, nothing from: {missing:?}"
        );
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(event) => handle(&mut kids, event),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("events: {e}"),
        }
        check(&mut kids);
    }

    // Clean shutdown: every child ends with status 0 and says what it did.
    for kid in &mut kids {
        drop(kid.stdin.take());
    }
    let deadline = Instant::now() + DEADLINE;
    for kid in &mut kids {
        loop {
            match kid.child.try_wait().expect("try_wait") {
                Some(status) if status.success() => break,
                Some(status) => kid.fail(format!("failed at shutdown: {status}")),
                None if Instant::now() > deadline => kid.fail("did not end at shutdown"),
                None => thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    let mut finals = Vec::new();
    drop(events);
    // The children ended: their stdout readers end, and with them the event channel.
    let events = std::iter::from_fn(|| match rx.recv_timeout(DEADLINE) {
        Ok(event) => Some(event),
        Err(mpsc::RecvTimeoutError::Disconnected) => None,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the children's output did not end"),
    });
    for (pid, key, value) in events {
        if key == "bad" {
            handle(&mut kids, (pid, key, value));
        } else if key == "final" {
            if let Some(kid) = kids.iter().find(|k| k.pid() == pid) {
                finals.push(format!("{:?}: {value}", kid.role));
            }
        }
    }
    finals.sort();
    eprintln!("soak: kills {kills:?}; final counts {finals:?}");
    assert_eq!(finals.len(), kids.len(), "every child said its final count");
    drop(kids);
    drop(topics);
    assert_eq!(
        prefix.segments(),
        Vec::<String>::new(),
        "left in /dev/shm after a clean shutdown"
    );
}
