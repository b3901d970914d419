//! `Consumer::read_async` and `poll_readable` on the heap and in shared memory, with producers
//! in threads and in real child processes, driven by a minimal executor (park the thread until
//! the waker unparks it): the ring crate depends on no async runtime.
//!
//! Every wait is bounded by [`DEADLINE`], which turns a lost wake-up into a failure; no test
//! judges speed.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `*_in_order` | thousands of records of varying sizes through a small ring arrive intact and in order, then `PeerGone` when the producer detaches |
//! | `*_killed_*` | a producer that dies (heap: its token dropped; shm: SIGKILL) while the task waits wakes no one; the task notices at the end of a slice: what was committed, then `PeerGone` |
//! | `helper_thread_*` | the helper thread starts on the first wait, serves every later wait, and ends with the consumer |

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use common::{
    arm_child_lifetime, say, wait_for_parent, wait_until, Proc, ShmName, Watchdog, DEADLINE,
};
use shmesh_ring::{spsc, Producer, ReadError, RingMemory, Segment, SegmentBuilder};

/// A test's own time limit (its waits have [`DEADLINE`] each).
const TEST_LIMIT: Duration = Duration::from_secs(300);
/// Name of the helper threads (see `shmesh_ring::park`).
const HELPER: &str = "shmesh-park";

/// Runs `future` on this thread: polls it, and parks until its waker unparks the thread.
/// Fails if it has not finished within [`DEADLINE`].
fn block_on<F: Future>(what: &str, future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        let now = Instant::now();
        assert!(now < deadline, "{what} did not finish within {DEADLINE:?}");
        thread::park_timeout(deadline - now);
    }
}

/// A waker that does nothing, for single polls.
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Polls the consumer once; true if it is pending (its helper now sleeps for it).
fn pending<M: RingMemory>(rx: &mut spsc::Consumer<M>) -> bool {
    let waker = Waker::from(Arc::new(Noop));
    rx.poll_readable(&mut Context::from_waker(&waker))
        .is_pending()
}

/// The payload of record `seq`: its number, then `seq % 57` bytes derived from it.
fn payload(seq: u64) -> Vec<u8> {
    let mut bytes = seq.to_le_bytes().to_vec();
    bytes.extend((0..seq % 57).map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8)));
    bytes
}

fn send<M: RingMemory>(tx: &mut Producer<M>, seq: u64) {
    let bytes = payload(seq);
    let mut grant = tx
        .claim_timeout(bytes.len(), DEADLINE)
        .unwrap_or_else(|e| panic!("claim for record {seq}: {e}"));
    grant.copy_from_slice(&bytes);
    grant.commit(bytes.len());
}

/// Reads records `0..count` with `read_async`, checking each.
fn receive<M: RingMemory>(rx: &mut spsc::Consumer<M>, count: u64) {
    for seq in 0..count {
        let record = block_on("read_async", rx.read_async())
            .unwrap_or_else(|e| panic!("read_async {seq}: {e}"));
        assert_eq!(&*record, &payload(seq)[..], "record {seq}");
    }
}

/// How many helper threads this process has.
fn helper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == HELPER)
        })
        .count()
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(common::CHILD_ENV) else {
        return;
    };
    arm_child_lifetime();
    let words: Vec<&str> = spec.split_whitespace().collect();
    match words.as_slice() {
        ["produce", name, count] => role_produce(name, count.parse().expect("count")),
        ["helper_threads"] => role_helper_threads(),
        other => panic!("unknown child role {other:?}"),
    }
}

/// Attaches as producer, writes records `0..count`, says `wrote`, then waits for the parent
/// (which closes our stdin, or kills us).
fn role_produce(name: &str, count: u64) {
    let seg = SegmentBuilder::new(name).open().expect("open segment");
    let mut tx = seg.producer().expect("attach producer");
    for seq in 0..count {
        send(&mut tx, seq);
    }
    say("wrote", count);
    wait_for_parent();
}

/// Counts helper threads around the life of a consumer, on the heap and in shared memory (in a
/// process of its own, so that other tests' helpers do not count). A new thread names itself
/// and an ended one leaves `/proc` a moment after its join: the counts are awaited.
fn role_helper_threads() {
    let helpers_are = |n: usize, what: &str| {
        wait_until(&format!("{what}: {n} helper threads"), || {
            helper_threads() == n
        })
    };
    assert_eq!(helper_threads(), 0, "no consumer yet");
    let (mut tx, mut rx) = spsc::channel(256).expect("channel");
    send(&mut tx, 0);
    receive(&mut rx, 1);
    assert_eq!(
        helper_threads(),
        0,
        "a read that did not wait starts no thread"
    );
    for seq in 1..4 {
        assert!(pending(&mut rx), "empty ring");
        helpers_are(1, "one helper serves every wait of a consumer");
        send(&mut tx, seq);
        let record = block_on("read_async", rx.read_async()).expect("read_async");
        assert_eq!(&*record, &payload(seq)[..]);
    }
    assert_eq!(
        helper_threads(),
        1,
        "one helper serves every wait of a consumer"
    );
    drop(rx);
    helpers_are(0, "the consumer's drop ends its helper");

    let name = format!("async-helper-{}", std::process::id());
    let seg = SegmentBuilder::new(&name)
        .capacity(4096)
        .create()
        .expect("create");
    let mut rx = seg.consumer().expect("consumer");
    assert!(pending(&mut rx), "empty ring");
    helpers_are(1, "a shared-memory consumer's wait");
    drop(rx);
    helpers_are(0, "the shared-memory consumer's drop ends its helper");
    say("helpers", "ok");
}

// ---- the tests ----

#[test]
fn heap_records_from_a_thread_arrive_in_order() {
    let _watchdog = Watchdog::new("heap_in_order", TEST_LIMIT);
    let (mut tx, mut rx) = spsc::channel(256).expect("channel");
    let count = 5_000;
    let writer = thread::spawn(move || {
        for seq in 0..count {
            send(&mut tx, seq);
        }
    });
    receive(&mut rx, count);
    writer.join().expect("writer");
    assert_eq!(
        block_on("read_async", rx.read_async()).unwrap_err(),
        ReadError::PeerGone
    );
}

#[test]
fn shm_records_from_a_producer_process_arrive_in_order() {
    let _watchdog = Watchdog::new("shm_in_order", TEST_LIMIT);
    let name = ShmName::new("async-order");
    let seg = SegmentBuilder::new(name.as_str())
        .capacity(4096)
        .create()
        .expect("create");
    let mut rx = seg.consumer().expect("consumer");
    let count = 5_000;
    let mut child = Proc::spawn("produce", &[&name, &count]);
    receive(&mut rx, count);
    assert_eq!(child.expect("wrote"), count.to_string());
    child.close_stdin();
    assert_eq!(
        block_on("read_async", rx.read_async()).unwrap_err(),
        ReadError::PeerGone
    );
    child.wait_success();
}

#[test]
fn heap_producer_killed_while_the_task_waits_is_gone() {
    let _watchdog = Watchdog::new("heap_killed", TEST_LIMIT);
    let (mut tx, mut rx) = spsc::channel(256).expect("channel");
    send(&mut tx, 0);
    receive(&mut rx, 1);
    assert!(pending(&mut rx), "empty ring");
    // A death: the token goes, no detach, no wake. `tx` stays alive (and silent).
    rx.memory().kill(0);
    assert_eq!(
        block_on("read_async", rx.read_async()).unwrap_err(),
        ReadError::PeerGone
    );
    drop(tx);
}

#[test]
fn shm_producer_killed_while_the_task_waits_is_gone() {
    let _watchdog = Watchdog::new("shm_killed", TEST_LIMIT);
    let name = ShmName::new("async-killed");
    let seg: Segment = SegmentBuilder::new(name.as_str())
        .capacity(4096)
        .create()
        .expect("create");
    let mut rx = seg.consumer().expect("consumer");
    let count = 20;
    let mut child = Proc::spawn("produce", &[&name, &count]);
    assert_eq!(child.expect("wrote"), count.to_string());
    receive(&mut rx, count);
    assert!(pending(&mut rx), "empty ring");
    child.kill();
    assert_eq!(
        block_on("read_async", rx.read_async()).unwrap_err(),
        ReadError::PeerGone
    );
}

#[test]
fn helper_thread_starts_on_the_first_wait_and_ends_with_the_consumer() {
    let _watchdog = Watchdog::new("helper_threads", TEST_LIMIT);
    let mut child = Proc::spawn("helper_threads", &[]);
    assert_eq!(child.expect("helpers"), "ok");
    child.wait_success();
}
