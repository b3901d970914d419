//! The typed channel between real processes.
//!
//! Each test runs this test binary again as its child processes (see `common/mod.rs`): the
//! `child_entry` test plays the role named in `SHMESH_TEST_CHILD` and does nothing otherwise.
//! Children report over stdout lines and their exit status; every wait has a deadline, every
//! child is killed when its test ends, every channel name is unique.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `child_sends_*`, `parent_sends_*` | a sequence of rich messages (strings, nested vectors, options, enums, maps; up to 100 KiB) crosses processes intact, in every access mode |
//! | `ping_pong_*` | 1000 round trips of rich messages over two channels, each reply computed from the deserialized request |
//! | `*_schema_mismatch_*` | a process that opens the channel with another type is refused, and the creator blocked in `recv_timeout` or in `send` on a full ring hears of it (not a timeout, not a hang) |
//! | `sender_killed_*` | a sender killed with SIGKILL mid-stream: every message it committed arrives valid and in order, then `Disconnected`; a new sender takes over |
//! | `receiver_killed_*` | a receiver killed holding a message: a sender blocked on the full ring gets `Disconnected`; a new receiver gets every unreleased message, the held one included |
//! | `other_user_*` | a child running as uid 65534 cannot open the channel (root only) |

mod common;

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use common::{
    arm_child_lifetime, check_received, child_command, is_root, require_tool, rich, say,
    wait_for_parent, ChannelName, Proc, Rich, Shape, SharedExe, Watchdog, DEADLINE, NOBODY,
    TEST_LIMIT,
};
use rkyv::{Archive, Deserialize, Serialize};
use shmesh::channel::{
    Access, Channel, ChannelError, RecvError, SendError, SendFailure, TryRecvError, TrySendError,
};
use shmesh_ring::SegmentError;

/// Ring capacity of the streams: 256 KiB, so that the 100 KiB messages fit (at most 128 KiB)
/// and the sender still fills the ring and waits often.
const CAP: u64 = 256 * 1024;
/// How long the creator of a channel blocks while another process opens it with another type:
/// it must hear of the mismatch well before (a `Timeout` means it did not).
const MISMATCH_WAIT: Duration = Duration::from_secs(10);

/// The other message type a child opens the channel with.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct Other {
    x: u64,
}

fn access(mode: &str) -> Access {
    match mode {
        "validated" => Access::validated(),
        "untrusted" => Access::untrusted(),
        // SAFETY: the only sender on the channels of these tests is this test binary (in the
        // parent or a child process), sending `Rich` values with a `Sender<Rich>`.
        "trusted" => unsafe { Access::trusted() },
        other => panic!("unknown access mode {other}"),
    }
}

const MODES: [&str; 3] = ["validated", "untrusted", "trusted"];

/// The reply to a request: computed from the deserialized request, so that the reply depends
/// on every field the child read.
fn reply(mut r: Rich) -> Rich {
    r.seq += 1_000_000;
    r.name = r.name.chars().rev().collect();
    r.text.push_str(" (pong)");
    r.matrix.reverse();
    for row in &mut r.matrix {
        row.iter_mut().for_each(|x| *x = x.wrapping_add(1));
    }
    r.maybe = r.maybe.map(|s| s.to_uppercase());
    r.number = r.number.map(|n| !n);
    r.shapes
        .push(Shape::Point(r.shapes.len() as i32, r.seq as i64));
    for v in r.counts.values_mut() {
        *v = v.wrapping_mul(3);
    }
    r.names.insert(u32::MAX, "last".to_owned());
    r.inner.tags.push(format!("reply-{}", r.seq));
    r.flag = !r.flag;
    r.bytes.reverse();
    r
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(common::CHILD_ENV) else {
        return;
    };
    arm_child_lifetime();
    let mut words = spec.split_whitespace();
    let role = words.next().expect("a role");
    let args: Vec<String> = words.map(str::to_owned).collect();
    let a = Args(&args);
    match role {
        "send_rich" => role_send_rich(a.s(0), a.get(1)),
        "recv_rich" => role_recv_rich(a.s(0), a.get(1), a.s(2)),
        "pong" => role_pong(a.s(0), a.s(1), a.get(2)),
        "open_other" => role_open_other(a.s(0), a.s(1) == "on-go"),
        "stream" => role_stream(a.s(0)),
        "hold" => role_hold(a.s(0)),
        "open_report" => role_open_report(a.s(0), a.octal(1), None),
        "open_report_owner" => role_open_report(a.s(0), a.octal(1), Some(0)),
        other => panic!("unknown child role '{other}'"),
    }
}

struct Args<'a>(&'a [String]);

impl Args<'_> {
    fn s(&self, i: usize) -> &str {
        self.0
            .get(i)
            .unwrap_or_else(|| panic!("missing child argument {i}"))
    }

    fn get<T: FromStr>(&self, i: usize) -> T {
        self.s(i)
            .parse()
            .unwrap_or_else(|_| panic!("bad child argument {i}: {}", self.s(i)))
    }

    fn octal(&self, i: usize) -> u32 {
        u32::from_str_radix(self.s(i), 8).unwrap_or_else(|_| panic!("bad octal {}", self.s(i)))
    }
}

fn open(name: &str) -> Channel<Rich> {
    Channel::<Rich>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"))
}

/// Sends `rich(0..count)`, then ends (which detaches the sender).
fn role_send_rich(name: &str, count: u64) {
    let channel = open(name);
    let mut tx = channel.sender().expect("attach sender");
    for seq in 0..count {
        tx.send_timeout(&rich(seq), DEADLINE)
            .unwrap_or_else(|e| panic!("send {seq}: {e}"));
    }
    say("sent", count);
}

/// Receives `rich(0..count)` and checks each, then expects `Disconnected`. Exits 0 only if all
/// of it holds (a failed check panics: exit status 101).
fn role_recv_rich(name: &str, count: u64, mode: &str) {
    let channel = open(name);
    let mut rx = channel
        .receiver_with(access(mode))
        .expect("attach receiver");
    for seq in 0..count {
        let got = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("recv {seq}: {e}"));
        check_received(&got, &rich(seq));
    }
    match rx.recv_timeout(DEADLINE) {
        Err(RecvError::Disconnected) => {}
        Ok(got) => panic!("a message after the last one: seq {}", got.seq),
        Err(e) => panic!("after the last message: expected Disconnected, got {e}"),
    }
    say("verified", count);
}

/// Answers each of `count` requests on `ping` with its [`reply`] on `pong`.
fn role_pong(ping: &str, pong: &str, count: u64) {
    let (ping, pong) = (open(ping), open(pong));
    let mut rx = ping.receiver().expect("attach ping receiver");
    let mut tx = pong.sender().expect("attach pong sender");
    for seq in 0..count {
        let request = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("ping {seq}: {e}"));
        check_received(&request, &rich(seq));
        let answer = reply(request.deserialize().expect("deserialize the request"));
        drop(request);
        tx.send_timeout(&answer, DEADLINE)
            .unwrap_or_else(|e| panic!("pong {seq}: {e}"));
    }
    say("answered", count);
}

/// Opens the channel as `Channel<Other>` (at once, or once the parent closes our stdin when
/// `on_go`); exits 0 only if that is a schema mismatch naming both types.
fn role_open_other(name: &str, on_go: bool) {
    if on_go {
        wait_for_parent();
    }
    match Channel::<Other>::open(name) {
        Err(ChannelError::SchemaMismatch(m)) => {
            assert!(m.ours.text.contains("Other"), "ours: {}", m.ours.text);
            assert!(m.other.text.contains("Rich"), "other: {}", m.other.text);
            say("open", "SchemaMismatch");
        }
        Err(e) => panic!("open as Channel<Other>: expected SchemaMismatch, got {e:?}"),
        Ok(_) => panic!("open as Channel<Other> succeeded on a Channel<Rich>"),
    }
}

/// Sends `rich(0..)` until killed, announcing each message once `send` returned.
fn role_stream(name: &str) {
    let channel = open(name);
    let mut tx = channel.sender().expect("attach sender");
    say("attached", std::process::id());
    for seq in 0.. {
        match tx.send_timeout(&rich(seq), DEADLINE) {
            Ok(()) => say("sent", seq),
            // The parent is gone: nothing more to do.
            Err(e) => panic!("send {seq}: {e}"),
        }
    }
}

/// Receives message 0, checks it and holds it (the guard keeps its record) until killed.
fn role_hold(name: &str) {
    let channel = open(name);
    let mut rx = channel.receiver().expect("attach receiver");
    let got = rx.recv_timeout(DEADLINE).expect("recv");
    check_received(&got, &rich(0));
    say("holding", got.seq);
    wait_for_parent();
    // Only reached if the parent died without killing us.
    std::process::exit(3);
}

/// Opens the channel accepting modes up to `mode` and reports the outcome.
fn role_open_report(name: &str, mode: u32, owner: Option<u32>) {
    let builder = Channel::<Rich>::builder(name).mode(mode);
    let builder = match owner {
        Some(uid) => builder.owner(uid),
        None => builder,
    };
    let outcome = match builder.open() {
        Ok(_) => "ok".to_owned(),
        Err(ChannelError::Segment(SegmentError::PermissionDenied { .. })) => {
            "PermissionDenied".to_owned()
        }
        Err(ChannelError::Segment(SegmentError::NotOwner {
            expected, found, ..
        })) => format!("NotOwner {expected} {found}"),
        Err(ChannelError::Segment(SegmentError::ModeTooWide { allowed, found, .. })) => {
            format!("ModeTooWide {allowed:o} {found:o}")
        }
        Err(e) => format!("other {e:?}"),
    };
    say("open", outcome);
    wait_for_parent();
}

// ---- the parent side ----

fn create(name: &ChannelName, capacity: u64) -> Channel<Rich> {
    Channel::<Rich>::builder(name.as_str())
        .capacity(capacity)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

#[test]
fn child_sends_rich_messages_and_the_parent_verifies_each() {
    let _watchdog = Watchdog::new("child_sends", TEST_LIMIT);
    const COUNT: u64 = 300;
    for mode in MODES {
        let name = ChannelName::new("child-sends");
        let channel = create(&name, CAP);
        let mut rx = channel.receiver_with(access(mode)).unwrap();
        let mut child = Proc::spawn("send_rich", &[&name, &COUNT]);
        for seq in 0..COUNT {
            match rx.recv_timeout(DEADLINE) {
                Ok(got) => check_received(&got, &rich(seq)),
                Err(e) => child.fail(format!("{mode}: recv {seq}: {e}")),
            }
        }
        assert_eq!(child.expect("sent"), COUNT.to_string());
        child.wait_success();
        match rx.recv_timeout(DEADLINE) {
            Err(RecvError::Disconnected) => {}
            Ok(got) => panic!("{mode}: a message after the last one: seq {}", got.seq),
            Err(e) => panic!("{mode}: after the child ended: expected Disconnected, got {e}"),
        };
    }
}

#[test]
fn parent_sends_rich_messages_and_the_child_verifies_each() {
    let _watchdog = Watchdog::new("parent_sends", TEST_LIMIT);
    const COUNT: u64 = 300;
    for mode in MODES {
        let name = ChannelName::new("parent-sends");
        let channel = create(&name, CAP);
        let mut tx = channel.sender().unwrap();
        let mut child = Proc::spawn("recv_rich", &[&name, &COUNT, &mode]);
        for seq in 0..COUNT {
            if let Err(e) = tx.send_timeout(&rich(seq), DEADLINE) {
                child.fail(format!("{mode}: send {seq}: {e}"));
            }
        }
        // The child expects Disconnected after the last message.
        drop(tx);
        assert_eq!(child.expect("verified"), COUNT.to_string());
        child.wait_success();
    }
}

#[test]
fn ping_pong_of_1000_rich_messages_over_two_channels() {
    let _watchdog = Watchdog::new("ping_pong", TEST_LIMIT);
    const COUNT: u64 = 1000;
    let (ping_name, pong_name) = (ChannelName::new("ping"), ChannelName::new("pong"));
    let ping = create(&ping_name, CAP);
    let pong = create(&pong_name, CAP);
    let mut tx = ping.sender().unwrap();
    let mut rx = pong.receiver().unwrap();
    let mut child = Proc::spawn("pong", &[&ping_name, &pong_name, &COUNT]);
    for seq in 0..COUNT {
        let request = rich(seq);
        if let Err(e) = tx.send_timeout(&request, DEADLINE) {
            child.fail(format!("ping {seq}: {e}"));
        }
        match rx.recv_timeout(DEADLINE) {
            Ok(got) => check_received(&got, &reply(request)),
            Err(e) => child.fail(format!("pong {seq}: {e}")),
        }
    }
    assert_eq!(child.expect("answered"), COUNT.to_string());
    child.wait_success();
}

// ---- schema mismatch between processes ----

#[test]
fn a_receiver_blocked_in_recv_timeout_hears_of_a_schema_mismatch_in_another_process() {
    let _watchdog = Watchdog::new("mismatch_receiver", TEST_LIMIT);
    let name = ChannelName::new("mismatch-rx");
    let channel = create(&name, CAP);
    let mut rx = channel.receiver().unwrap();
    // Attached now, so that it hears of the mismatch too (checked below).
    let mut tx = channel.sender().unwrap();
    let mut child = Proc::spawn("open_other", &[&name, &"now"]);
    let pid = child.pid();
    match rx.recv_timeout(MISMATCH_WAIT) {
        Err(RecvError::SchemaMismatch(m)) => {
            assert!(m.who.contains(&pid.to_string()), "names the child: {m}");
            assert!(m.ours.text.contains("Rich"), "ours: {}", m.ours.text);
            assert!(m.other.text.contains("Other"), "other: {}", m.other.text);
        }
        Err(RecvError::Timeout) => child.fail(format!(
            "recv_timeout({MISMATCH_WAIT:?}) timed out: the receiver never heard of the child \
             that opened the channel with another type"
        )),
        Err(e) => child.fail(format!("recv_timeout: expected SchemaMismatch, got {e}")),
        Ok(got) => child.fail(format!("a message arrived: seq {}", got.seq)),
    }
    assert_eq!(child.expect("open"), "SchemaMismatch");
    child.wait_success();
    // Once: the channel works on.
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(20)),
        Err(RecvError::Timeout)
    ));
    match tx.send_timeout(&rich(5), DEADLINE) {
        Err(shmesh::channel::SendTimeoutError::Failed(SendFailure::SchemaMismatch(m))) => {
            assert!(m.who.contains(&pid.to_string()), "names the child: {m}");
        }
        other => panic!("the sender was not told: {other:?}"),
    }
    tx.send_timeout(&rich(5), DEADLINE).unwrap();
    check_received(&rx.recv_timeout(DEADLINE).unwrap(), &rich(5));
}

#[test]
fn a_sender_blocked_in_send_on_a_full_ring_hears_of_a_schema_mismatch_in_another_process() {
    let _watchdog = Watchdog::new("mismatch_sender", TEST_LIMIT);
    let name = ChannelName::new("mismatch-tx");
    let channel = create(&name, 64 * 1024);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let value = rich(1);
    let mut filled = 0;
    loop {
        match tx.try_send(&value) {
            Ok(()) => filled += 1,
            Err(TrySendError::Full) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    assert!(filled > 0);
    let mut child = Proc::spawn("open_other", &[&name, &"on-go"]);
    let pid = child.pid();
    // `send` has no timeout: it runs on a thread that the test gives up on after DEADLINE.
    let blocked = std::thread::spawn(move || {
        let result = tx.send(&rich(2));
        (tx, result)
    });
    // The child opens once told to; by then the send is (almost certainly) waiting for room.
    // Either way it must report the mismatch.
    child.close_stdin();
    assert_eq!(child.expect("open"), "SchemaMismatch");
    child.wait_success();
    let deadline = std::time::Instant::now() + DEADLINE;
    while !blocked.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "send on a full ring did not return within {DEADLINE:?} after another process was \
             refused the channel"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (mut tx, result) = blocked.join().expect("the sending thread");
    match result {
        Err(SendError::Failed(SendFailure::SchemaMismatch(m))) => {
            assert!(m.who.contains(&pid.to_string()), "names the child: {m}");
            assert!(m.other.text.contains("Other"), "other: {}", m.other.text);
        }
        other => panic!("send on a full ring: expected SchemaMismatch, got {other:?}"),
    }
    // The receiver hears of the mismatch too, once, on its next operation.
    match rx.try_recv() {
        Err(TryRecvError::Failed(RecvError::SchemaMismatch(m))) => {
            assert!(m.who.contains(&pid.to_string()), "names the child: {m}");
        }
        Ok(got) => panic!("the receiver was not told, and got message {}", got.seq),
        Err(e) => panic!("the receiver was not told: {e}"),
    }
    // The refused send sent nothing, and the channel works on.
    for i in 0..filled {
        match rx.recv_timeout(DEADLINE) {
            Ok(got) => check_received(&got, &value),
            Err(e) => panic!("draining message {i} of {filled}: {e}"),
        }
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    tx.send_timeout(&rich(3), DEADLINE).unwrap();
    check_received(&rx.recv_timeout(DEADLINE).unwrap(), &rich(3));
}

// ---- a sender killed mid-stream ----

/// How many messages a stream child announced ("sent N" lines: 0..N in order) before it ended.
fn announced(child: &mut Proc) -> u64 {
    let mut count = 0;
    for line in child.remaining_lines() {
        if let Some(n) = line.strip_prefix("sent ") {
            let n: u64 = n.parse().expect("a sequence number");
            assert_eq!(n, count, "announcements out of order");
            count += 1;
        }
    }
    count
}

#[test]
fn sender_killed_mid_stream_loses_no_committed_message_and_disconnects() {
    let _watchdog = Watchdog::new("sender_killed", TEST_LIMIT);
    let name = ChannelName::new("killed");
    let channel = create(&name, CAP);
    let mut rx = channel.receiver().unwrap();
    // The same channel for every round: each new sender takes over from the killed one.
    for (round, before_kill) in [(0, 1u64), (1, 120), (2, 777)] {
        let mut child = Proc::spawn("stream", &[&name]);
        assert_eq!(child.expect("attached"), child.pid().to_string());
        let mut next = 0u64;
        while next < before_kill {
            match rx.recv_timeout(DEADLINE) {
                Ok(got) => check_received(&got, &rich(next)),
                Err(e) => child.fail(format!("round {round}: recv {next}: {e}")),
            }
            next += 1;
        }
        // SIGKILL while the child is streaming (sending, or waiting for room).
        child.kill();
        loop {
            match rx.recv_timeout(DEADLINE) {
                Ok(got) => {
                    assert_eq!(got.seq, next, "round {round}: messages out of order");
                    check_received(&got, &rich(next));
                    next += 1;
                }
                Err(RecvError::Disconnected) => break,
                Err(e) => child.fail(format!("round {round}: after the kill, recv {next}: {e}")),
            }
        }
        // Every message whose `send` returned was received; at most one more was committed
        // before the child could say so.
        let announced = announced(&mut child);
        assert!(
            announced <= next && next <= announced + 1,
            "round {round}: received {next} messages; the child had announced {announced}"
        );
        eprintln!("round {round}: killed after {announced} announced, {next} received");
    }
}

/// A receiver killed while it holds a message: the sender, blocked on the full ring, is told
/// `Disconnected` (no hang), and a new receiver reads every message the killed one did not
/// release, the held one included.
#[test]
fn receiver_killed_holding_a_message_disconnects_a_blocked_sender() {
    let _watchdog = Watchdog::new("receiver_killed", TEST_LIMIT);
    let name = ChannelName::new("rx-killed");
    let channel = create(&name, 64 * 1024);
    let mut tx = channel.sender().unwrap();
    let mut child = Proc::spawn("hold", &[&name]);
    tx.send_timeout(&rich(0), DEADLINE).unwrap();
    assert_eq!(child.expect("holding"), "0");
    let mut sent = 1;
    loop {
        match tx.try_send(&rich(sent)) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full) => break,
            Err(e) => child.fail(format!("filling: {e}")),
        }
    }
    child.kill();
    let (tx, result) = {
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = tx.send(&rich(sent));
            let _ = done.send((tx, result));
        });
        wait.recv_timeout(DEADLINE)
            .expect("send on a full ring whose receiver was killed did not return")
    };
    match result {
        Err(SendError::Disconnected) => {}
        other => panic!("send after the receiver was killed: {other:?}"),
    }
    drop(tx);
    // Nothing is lost for a new receiver: the held message was never released, so it comes
    // again, then every message after it.
    let mut rx = channel
        .receiver()
        .expect("a new receiver after the killed one");
    for seq in 0..sent {
        match rx.recv_timeout(DEADLINE) {
            Ok(got) => check_received(&got, &rich(seq)),
            Err(e) => panic!("message {seq} of {sent}: {e}"),
        }
    }
    match rx.recv_timeout(DEADLINE) {
        Err(RecvError::Disconnected) => {}
        Ok(got) => panic!("an extra message: seq {}", got.seq),
        Err(e) => panic!("after the last message: {e}"),
    };
}

// ---- another user ----

/// The copy of this binary that uid 65534 can run, or `None` (with a printed reason) when not
/// root; panics if `setpriv` is missing.
fn nobody_exe() -> Option<SharedExe> {
    if !is_root() {
        eprintln!("skipped: running a child as uid {NOBODY} needs root");
        return None;
    }
    require_tool(
        "setpriv",
        &[
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "true",
        ],
        "root, to run children as uid 65534",
    );
    Some(SharedExe::new())
}

fn spawn_as_nobody(exe: &SharedExe, role: &str, args: &[&dyn Display]) -> Proc {
    let setpriv = ["--reuid", "65534", "--regid", "65534", "--clear-groups"];
    let mut cmd = child_command(Some(("setpriv", &setpriv)), exe.path(), role, args);
    cmd.current_dir("/");
    Proc::spawn_cmd(&format!("{role} (as uid {NOBODY})"), cmd)
}

#[test]
fn other_user_cannot_open_the_channel() {
    let _watchdog = Watchdog::new("other_user", TEST_LIMIT);
    let Some(exe) = nobody_exe() else { return };
    // The default mode, 0600: the kernel refuses the other user.
    let name = ChannelName::new("private");
    let _channel = create(&name, CAP);
    let mut child = spawn_as_nobody(&exe, "open_report", &[&name, &"777"]);
    assert_eq!(child.expect("open"), "PermissionDenied");
    child.wait_success();
    // Mode 0666 lets the other user's open() through, but the channel belongs to root: refused
    // as a possible squat unless the opener names root as the owner it expects.
    let name = ChannelName::new("shared-mode");
    let _channel = Channel::<Rich>::builder(name.as_str())
        .capacity(CAP)
        .mode(0o666)
        .create()
        .unwrap();
    let mut child = spawn_as_nobody(&exe, "open_report", &[&name, &"666"]);
    assert_eq!(child.expect("open"), format!("NotOwner {NOBODY} 0"));
    child.wait_success();
    let mut child = spawn_as_nobody(&exe, "open_report_owner", &[&name, &"666"]);
    assert_eq!(child.expect("open"), "ok");
    child.wait_success();
}
