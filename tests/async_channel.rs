//! `Receiver::recv_async` on tokio's current-thread and multi-thread runtimes, with senders in
//! real child processes.
//!
//! Each test runs this test binary again as its child processes (see `common/mod.rs`): the
//! `child_entry` test plays the role named in `SHMESH_TEST_CHILD` and does nothing otherwise.
//! Every await is bounded by a timeout ([`DEADLINE`]) that turns a lost wake-up into a failure;
//! no test judges speed. The one measured quantity is CPU time against wall time, a ratio.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `many_*` | rich messages and a long stream through a small ring (the sender waits often) arrive complete and in order, then `Disconnected` when the sender detaches |
//! | `sender_killed_*` | a sender killed with SIGKILL while the task waits: what it sent arrives, then `Disconnected` |
//! | `idle_*` | a task waiting ~1 s on an empty channel uses under 10 % of a CPU (no busy polling), and a message from another process wakes it |
//! | `the_cpu_measure_*` | the same measure sees a busy-polling task (so the idle test can fail) |
//! | `dropped_*`, `select_*` | cancelling a pending receive (drop, `select!` with a timeout) loses no message |
//! | `refused_opener_*` | a process opening the channel with another type is reported to the waiting task |

mod common;

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::str::FromStr;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{
    check_received, rich, say, wait_for_parent, ChannelName, Proc, Rich, Watchdog, DEADLINE,
    TEST_LIMIT,
};
use rkyv::{Archive, Deserialize, Serialize};
use shmesh::channel::{Channel, ChannelError, Receiver, RecvError, SendError, SendFailure};

/// Ring capacity for the rich messages (up to 100 KiB each).
const RICH_CAP: u64 = 256 * 1024;
/// A small ring: the stream's sender fills it and waits for the receiver all the time.
const SMALL_CAP: u64 = 4096;
/// The largest share of one CPU an idle waiting receiver may use.
const IDLE_CPU_MAX: f64 = 0.10;
/// How long the idle receiver waits before the message comes.
const IDLE_FOR: Duration = Duration::from_secs(1);

/// The other message type a child opens the channel with.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct Other {
    x: u64,
}

// ---- runtimes ----

const FLAVORS: [&str; 2] = ["current", "multi"];

/// Runs `future` to completion on a tokio runtime of `flavor`: on the current thread, or (multi)
/// as a task spawned on a two-worker runtime, so that it may move between workers.
fn run<F>(flavor: &str, future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match flavor {
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("current-thread runtime")
            .block_on(future),
        "multi" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("multi-thread runtime");
            runtime
                .block_on(runtime.spawn(future))
                .expect("the task panicked")
        }
        other => panic!("unknown runtime flavor {other}"),
    }
}

/// Awaits `future`, failing if it has not finished within [`DEADLINE`].
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {DEADLINE:?}"),
    }
}

/// Process CPU time (user + system, all threads) from `/proc/self/stat`.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after the command name, which is in parentheses: field 3 (state) first, then
    // utime and stime are fields 14 and 15, in clock ticks of USER_HZ = 100 on Linux.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Some((role, a)) = common::child_role() else {
        return;
    };
    match role.as_str() {
        "send_rich" => role_send_rich(a.s(0), a.get(1), a.s(2) == "hold"),
        "send_u64" => role_send_u64(a.s(0), a.get(1), a.get(2)),
        "idle_recv" => role_idle_recv(a.s(0), a.s(1)),
        "busy_poll" => role_busy_poll(a.s(0)),
        "open_other" => role_open_other(a.s(0)),
        other => panic!("unknown child role '{other}'"),
    }
}

fn parse<T: FromStr>(s: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| panic!("bad child argument {s}"))
}

/// Sends `rich(0..count)`, says `sent`, then waits for the parent: ends (detaching the sender)
/// when it closes our stdin, or is killed while it waits (`hold`).
fn role_send_rich(name: &str, count: u64, hold: bool) {
    let channel = Channel::<Rich>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut tx = channel.sender().expect("attach sender");
    for seq in 0..count {
        tx.send_timeout(&rich(seq), DEADLINE)
            .unwrap_or_else(|e| panic!("send {seq}: {e}"));
    }
    say("sent", count);
    wait_for_parent();
    assert!(!hold, "a holding sender must be killed, not told to end");
}

/// Sends `0..count`, pausing `pause_us` microseconds after each message (0: as fast as the
/// ring allows), then ends.
fn role_send_u64(name: &str, count: u64, pause_us: u64) {
    let channel = Channel::<u64>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut tx = channel.sender().expect("attach sender");
    for n in 0..count {
        tx.send_timeout(&n, DEADLINE)
            .unwrap_or_else(|e| panic!("send {n}: {e}"));
        if pause_us > 0 {
            std::thread::sleep(Duration::from_micros(pause_us));
        }
    }
    say("sent", count);
}

/// Attaches a receiver, says `ready`, then awaits one message on a runtime of `flavor` and
/// reports it with the CPU time the process used while it waited and the wall time.
fn role_idle_recv(name: &str, flavor: &str) {
    let channel = Channel::<u64>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut rx = channel.receiver().expect("attach receiver");
    let (value, cpu, wall) = run(flavor, async move {
        // Started before `ready`, so the wall time covers the parent's whole pause.
        let (cpu0, wall0) = (process_cpu(), Instant::now());
        say("ready", "");
        let message = bounded("recv_async", rx.recv_async())
            .await
            .expect("recv_async");
        let value = message.to_native();
        (value, process_cpu() - cpu0, wall0.elapsed())
    });
    say(
        "got",
        format!("{value} {} {}", cpu.as_millis(), wall.as_millis()),
    );
}

/// A task that polls without sleeping (it wakes itself each time it is pending), for as long
/// as the idle receiver waits: reports its CPU and wall time like `idle_recv`.
fn role_busy_poll(flavor: &str) {
    let (cpu, wall) = run(flavor, async move {
        let (cpu0, wall0) = (process_cpu(), Instant::now());
        poll_fn(|cx| {
            if wall0.elapsed() >= IDLE_FOR {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
        (process_cpu() - cpu0, wall0.elapsed())
    });
    say("got", format!("0 {} {}", cpu.as_millis(), wall.as_millis()));
}

/// Opens the channel as a `Channel<Other>`, which must be refused.
fn role_open_other(name: &str) {
    match Channel::<Other>::open(name) {
        Err(ChannelError::SchemaMismatch(_)) => say("open", "SchemaMismatch"),
        Err(e) => panic!("open as Channel<Other>: expected SchemaMismatch, got {e:?}"),
        Ok(_) => panic!("open as Channel<Other> succeeded on a Channel<Rich>"),
    }
}

// ---- the tests ----

/// Receives `rich(0..count)` with `recv_async`, checking each message.
async fn receive_rich(rx: &mut Receiver<Rich>, count: u64) {
    for seq in 0..count {
        let got = bounded("recv_async", rx.recv_async())
            .await
            .unwrap_or_else(|e| panic!("recv_async {seq}: {e}"));
        check_received(&got, &rich(seq));
    }
}

fn many_rich_messages_from_a_child_arrive_in_order(flavor: &'static str) {
    let _watchdog = Watchdog::new("many_rich", TEST_LIMIT);
    let name = ChannelName::new("async-rich");
    let channel = Channel::<Rich>::builder(name.as_str())
        .capacity(RICH_CAP)
        .create()
        .expect("create");
    let mut rx = channel.receiver().expect("receiver");
    let count = 300;
    let mut child = Proc::spawn("send_rich", &[&name, &count, &"end"]);
    run(flavor, async move {
        receive_rich(&mut rx, count).await;
        assert_eq!(child.expect("sent"), count.to_string());
        child.close_stdin(); // the child ends: its sender detaches
        match bounded("recv_async after the end", rx.recv_async()).await {
            Err(RecvError::Disconnected) => {}
            other => panic!("after the last message: expected Disconnected, got {other:?}"),
        }
        child.wait_success();
    });
}

#[test]
fn many_rich_messages_in_order_current_thread() {
    many_rich_messages_from_a_child_arrive_in_order(FLAVORS[0]);
}

#[test]
fn many_rich_messages_in_order_multi_thread() {
    many_rich_messages_from_a_child_arrive_in_order(FLAVORS[1]);
}

/// A long stream through a small ring: the sender fills it and waits, the receiver empties it
/// and parks, over and over: every wake-up in both directions has to work.
fn many_small_messages_through_a_small_ring(flavor: &'static str) {
    let _watchdog = Watchdog::new("many_small", TEST_LIMIT);
    let name = ChannelName::new("async-stream");
    let channel = Channel::<u64>::builder(name.as_str())
        .capacity(SMALL_CAP)
        .create()
        .expect("create");
    let mut rx = channel.receiver().expect("receiver");
    let count: u64 = 20_000;
    let mut child = Proc::spawn("send_u64", &[&name, &count, &0]);
    run(flavor, async move {
        for n in 0..count {
            let got = bounded("recv_async", rx.recv_async())
                .await
                .unwrap_or_else(|e| panic!("recv_async {n}: {e}"))
                .to_native();
            assert_eq!(got, n, "messages out of order");
            if n % 1000 == 999 {
                // Let other tasks run now and then, as a real program would.
                tokio::task::yield_now().await;
            }
        }
        match bounded("recv_async after the end", rx.recv_async()).await {
            Err(RecvError::Disconnected) => {}
            other => panic!("after the stream: expected Disconnected, got {other:?}"),
        }
        assert_eq!(child.expect("sent"), count.to_string());
        child.wait_success();
    });
}

#[test]
fn many_small_messages_through_a_small_ring_current_thread() {
    many_small_messages_through_a_small_ring(FLAVORS[0]);
}

#[test]
fn many_small_messages_through_a_small_ring_multi_thread() {
    many_small_messages_through_a_small_ring(FLAVORS[1]);
}

fn sender_killed_while_the_task_waits_is_disconnected(flavor: &'static str) {
    let _watchdog = Watchdog::new("sender_killed", TEST_LIMIT);
    let name = ChannelName::new("async-killed");
    let channel = Channel::<Rich>::builder(name.as_str())
        .capacity(RICH_CAP)
        .create()
        .expect("create");
    let mut rx = channel.receiver().expect("receiver");
    let count = 5;
    let mut child = Proc::spawn("send_rich", &[&name, &count, &"hold"]);
    run(flavor, async move {
        assert_eq!(child.expect("sent"), count.to_string());
        receive_rich(&mut rx, count).await;
        // The task now waits on an empty ring; kill the sender while it does. A killed
        // process wakes no one: the task must notice at the end of a slice.
        let mut recv = pin!(rx.recv_async());
        let first = poll_fn(|cx| Poll::Ready(recv.as_mut().poll(cx).is_pending())).await;
        assert!(first, "nothing was sent, yet the receive is ready");
        child.kill();
        match bounded("recv_async after the kill", recv).await {
            Err(RecvError::Disconnected) => {}
            other => panic!("after the kill: expected Disconnected, got {other:?}"),
        }
    });
}

#[test]
fn sender_killed_while_the_task_waits_current_thread() {
    sender_killed_while_the_task_waits_is_disconnected(FLAVORS[0]);
}

#[test]
fn sender_killed_while_the_task_waits_multi_thread() {
    sender_killed_while_the_task_waits_is_disconnected(FLAVORS[1]);
}

/// Runs a child that measures its CPU time while it waits; returns (value, cpu, wall) as the
/// child reported them, after the parent sent `value` (if `send`) once the child was ready
/// and [`IDLE_FOR`] passed.
fn measured_child(role: &str, flavor: &str, send: Option<u64>) -> (u64, Duration, Duration) {
    let name = ChannelName::new("async-idle");
    let channel = Channel::<u64>::builder(name.as_str())
        .capacity(SMALL_CAP)
        .create()
        .expect("create");
    let mut tx = channel.sender().expect("sender");
    let mut child = match send {
        Some(_) => Proc::spawn(role, &[&name, &flavor]),
        None => Proc::spawn(role, &[&flavor]),
    };
    if let Some(value) = send {
        child.expect("ready");
        // Not a timing threshold: how long the child's task has nothing to do.
        std::thread::sleep(IDLE_FOR);
        tx.send(&value).expect("send");
    }
    let got = child.expect("got");
    child.wait_success();
    let fields: Vec<u64> = got.split_whitespace().map(parse).collect();
    (
        fields[0],
        Duration::from_millis(fields[1]),
        Duration::from_millis(fields[2]),
    )
}

fn idle_task_uses_little_cpu_and_wakes_on_a_message(flavor: &'static str) {
    let _watchdog = Watchdog::new("idle", TEST_LIMIT);
    let (value, cpu, wall) = measured_child("idle_recv", flavor, Some(42));
    assert_eq!(value, 42, "the message from the other process");
    assert!(
        wall >= IDLE_FOR,
        "the child did not wait for the message: {wall:?}"
    );
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "idle recv_async ({flavor}): {cpu:?} of CPU in {wall:?} ({:.1} %)",
        share * 100.0
    );
    assert!(
        share < IDLE_CPU_MAX,
        "a task waiting on an empty channel used {cpu:?} of CPU in {wall:?} ({:.1} %): busy polling",
        share * 100.0
    );
}

#[test]
fn idle_task_uses_little_cpu_and_wakes_on_a_message_current_thread() {
    idle_task_uses_little_cpu_and_wakes_on_a_message(FLAVORS[0]);
}

#[test]
fn idle_task_uses_little_cpu_and_wakes_on_a_message_multi_thread() {
    idle_task_uses_little_cpu_and_wakes_on_a_message(FLAVORS[1]);
}

/// The idle tests could not fail if the measure missed a busy poller: it does not. A busy
/// process gets less than a whole CPU when others compete for the two of the machine, so a
/// share at or under the bound is measured again (up to three times) before the test fails.
#[test]
fn the_cpu_measure_sees_a_busy_polling_task() {
    let _watchdog = Watchdog::new("busy", TEST_LIMIT);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (_, cpu, wall) = measured_child("busy_poll", "current", None);
        let share = cpu.as_secs_f64() / wall.as_secs_f64();
        eprintln!(
            "busy polling: {cpu:?} of CPU in {wall:?} ({:.1} %)",
            share * 100.0
        );
        if share > IDLE_CPU_MAX {
            return;
        }
        seen.push(format!("{cpu:?} in {wall:?}"));
    }
    panic!("a busy-polling task used only {seen:?} of CPU: the measure is blind");
}

/// Dropping a pending `recv_async` (here: after the message came and woke it, before it was
/// polled again) loses nothing: the next receive gets the message.
fn dropped_pending_receive_loses_no_message(flavor: &'static str) {
    let _watchdog = Watchdog::new("dropped", TEST_LIMIT);
    let name = ChannelName::new("async-dropped");
    let channel = Channel::<u64>::create(name.as_str()).expect("create");
    let (mut tx, mut rx) = (
        channel.sender().expect("sender"),
        channel.receiver().expect("receiver"),
    );
    run(flavor, async move {
        for n in 0..50u64 {
            {
                let mut recv = pin!(rx.recv_async());
                let first = poll_fn(|cx| Poll::Ready(recv.as_mut().poll(cx).is_pending())).await;
                assert!(
                    first,
                    "round {n}: nothing was sent, yet the receive is ready"
                );
                tx.send(&n).expect("send");
                // The future is dropped here, woken but not polled again.
            }
            let got = bounded("recv_async", rx.recv_async())
                .await
                .expect("recv_async");
            assert_eq!(
                got.to_native(),
                n,
                "the message sent while a future was pending"
            );
        }
        drop(tx);
        assert!(matches!(
            bounded("recv_async", rx.recv_async()).await,
            Err(RecvError::Disconnected)
        ));
    });
}

#[test]
fn dropped_pending_receive_loses_no_message_current_thread() {
    dropped_pending_receive_loses_no_message(FLAVORS[0]);
}

#[test]
fn dropped_pending_receive_loses_no_message_multi_thread() {
    dropped_pending_receive_loses_no_message(FLAVORS[1]);
}

/// `select!` of `recv_async` against a timer, over and over, while another process sends: the
/// receives the timer cancels lose nothing, every message comes exactly once and in order.
fn select_with_a_timeout_cancels_without_loss(flavor: &'static str) {
    let _watchdog = Watchdog::new("select", TEST_LIMIT);
    let name = ChannelName::new("async-select");
    let channel = Channel::<u64>::builder(name.as_str())
        .capacity(SMALL_CAP)
        .create()
        .expect("create");
    let mut rx = channel.receiver().expect("receiver");
    run(flavor, async move {
        // Nothing sent: the timer wins.
        tokio::select! {
            got = rx.recv_async() => panic!("nothing was sent, yet recv_async gave {:?}", got.map(|m| m.to_native())),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let count: u64 = 1_000;
        // A paced sender: the ring is often empty, so receives often wait and get cancelled.
        let mut child = Proc::spawn("send_u64", &[&name, &count, &100]);
        let (mut next, mut round, mut cancelled) = (0, 0u64, 0u64);
        let started = Instant::now();
        while next < count {
            assert!(started.elapsed() < DEADLINE, "the stream stalled at {next}");
            round += 1;
            // The other branch: a timer, or a yield (ready on its second poll), so that many
            // receives are cancelled after the task armed the word and the helper slept.
            let other = async move {
                if round % 2 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await
                } else {
                    tokio::task::yield_now().await
                }
            };
            tokio::select! {
                biased;
                got = rx.recv_async() => {
                    let got = got.unwrap_or_else(|e| panic!("recv_async {next}: {e}"));
                    assert_eq!(got.to_native(), next, "a message was lost or repeated");
                    next += 1;
                }
                () = other => cancelled += 1,
            }
        }
        eprintln!("select ({flavor}): {count} messages, {cancelled} receives cancelled");
        assert_eq!(child.expect("sent"), count.to_string());
        child.wait_success();
        assert!(matches!(
            bounded("recv_async", rx.recv_async()).await,
            Err(RecvError::Disconnected)
        ));
        drop(name);
    });
}

#[test]
fn select_with_a_timeout_cancels_without_loss_current_thread() {
    select_with_a_timeout_cancels_without_loss(FLAVORS[0]);
}

#[test]
fn select_with_a_timeout_cancels_without_loss_multi_thread() {
    select_with_a_timeout_cancels_without_loss(FLAVORS[1]);
}

/// A process that opens the channel with another type is reported to a task waiting in
/// `recv_async` (within a slice, not at the next message), and the channel still works.
#[test]
fn refused_opener_is_reported_to_the_waiting_task() {
    let _watchdog = Watchdog::new("refused", TEST_LIMIT);
    let name = ChannelName::new("async-refused");
    let channel = Channel::<Rich>::builder(name.as_str())
        .capacity(RICH_CAP)
        .create()
        .expect("create");
    let (mut tx, mut rx) = (
        channel.sender().expect("sender"),
        channel.receiver().expect("receiver"),
    );
    run("current", async move {
        let mut recv = pin!(rx.recv_async());
        let first = poll_fn(|cx| Poll::Ready(recv.as_mut().poll(cx).is_pending())).await;
        assert!(first, "nothing was sent, yet the receive is ready");
        let mut child = Proc::spawn("open_other", &[&name]);
        assert_eq!(child.expect("open"), "SchemaMismatch");
        child.wait_success();
        match bounded("recv_async while a refused opener", recv).await {
            Err(RecvError::SchemaMismatch(m)) => {
                assert!(
                    m.other.text.contains("Other"),
                    "the opener's type: {}",
                    m.other.text
                )
            }
            other => panic!("expected SchemaMismatch, got {other:?}"),
        }
        // The sender is told of the refused opener too, once (as on every channel).
        match tx.send(&rich(7)) {
            Err(SendError::Failed(SendFailure::SchemaMismatch(_))) => {}
            other => panic!("the sender's first send: expected SchemaMismatch, got {other:?}"),
        }
        tx.send(&rich(7)).expect("send");
        let got = bounded("recv_async", rx.recv_async())
            .await
            .expect("the channel still works");
        check_received(&got, &rich(7));
    });
}

/// A received message is `Send`: a task on a multi-thread runtime may hold it across an
/// `.await` (and so move between workers while it holds a view into the ring).
#[test]
fn a_received_message_can_be_held_across_an_await() {
    let name = ChannelName::new("async-hold");
    run("multi", async move {
        let channel = Channel::<String>::create(name.as_str()).expect("create");
        let mut tx = channel.sender().expect("sender");
        let mut rx = channel.receiver().expect("receiver");
        tx.send(&"held".to_owned()).expect("send");
        let message = bounded("recv_async", rx.recv_async()).await.expect("recv");
        tokio::task::yield_now().await;
        assert_eq!(message.as_str(), "held");
    });
}

/// An MPSC channel's receiver waits asynchronously too: messages of two senders arrive, each
/// sender's in order, and the task wakes for each.
#[test]
fn an_mpsc_receiver_receives_asynchronously() {
    for flavor in FLAVORS {
        let name = ChannelName::new("async-mpsc");
        run(flavor, async move {
            let channel = Channel::<u64>::builder(name.as_str())
                .senders(2)
                .capacity(4096)
                .create()
                .expect("create");
            let mut rx = channel.receiver().expect("receiver");
            let senders: Vec<_> = (0..2u64)
                .map(|id| {
                    let mut tx = channel.sender().expect("sender");
                    std::thread::spawn(move || {
                        for seq in 0..2000u64 {
                            std::thread::sleep(Duration::from_micros(seq % 3 * 50));
                            tx.send(&(id << 32 | seq)).expect("send");
                        }
                    })
                })
                .collect();
            let mut next = [0u64; 2];
            for _ in 0..4000 {
                let message = bounded("recv_async", rx.recv_async()).await.expect("recv");
                let value = message.to_native();
                let (id, seq) = ((value >> 32) as usize, value & 0xffff_ffff);
                assert_eq!(seq, next[id], "sender {id} out of order");
                next[id] += 1;
            }
            for sender in senders {
                sender.join().expect("sender thread");
            }
            assert!(bounded("recv_async", rx.recv_async())
                .await
                .unwrap_err()
                .is_disconnected());
        });
    }
}
