//! The MPSC ring between real processes: several writer processes and a consumer, writers
//! killed with SIGKILL in the middle of a claim, a writer stopped with SIGSTOP in the middle of
//! a claim, a writer that died between its CAS and its claimed header (the header scribbled back
//! to zero through the segment's file, since no process can be stopped reliably at that
//! instruction), and a new writer taking over a dead writer's slot.
//!
//! Each test runs this test binary again as its child processes (see `common/mod.rs` and
//! `shmesh-testkit`): `child_entry` plays the role named in `SHMESH_TEST_CHILD`. Every wait has a
//! deadline, every child is killed when its test ends, every segment name is unique.

#![cfg(not(miri))]

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{say, shm_path, wait_for_parent, Proc, ShmName, Watchdog, DEADLINE};
use shmesh_ring::mpsc::{Consumer, Writer};
use shmesh_ring::{
    layout, PeerState, ReadError, RingMemory, Segment, SegmentBuilder, SegmentKind, ShmMemory,
    WaitStrategy,
};

/// Capacity of the rings.
const CAP: u64 = 4096;
/// Writer slots of the rings.
const ENDPOINTS: usize = 4;
/// Payload length of a test record.
const RECORD_LEN: usize = 24;
/// How long one test may run before the watchdog aborts the binary.
const TEST_LIMIT: Duration = Duration::from_secs(300);
/// A read that must find nothing: long enough for the consumer's slow path (liveness checks,
/// unblock attempts, futex slices) to run many times.
const NOTHING: Duration = Duration::from_millis(300);

/// The payload of record `seq` of writer `id`: id, sequence number, and a hash of both, so that
/// a torn, foreign or partial record cannot pass [`check`].
fn record(id: u64, seq: u64) -> [u8; RECORD_LEN] {
    let mut bytes = [0u8; RECORD_LEN];
    bytes[..8].copy_from_slice(&id.to_le_bytes());
    bytes[8..16].copy_from_slice(&seq.to_le_bytes());
    bytes[16..].copy_from_slice(
        &(seq ^ id << 48)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .to_le_bytes(),
    );
    bytes
}

/// The writer and sequence number of a record made by [`record`]; panics on anything else.
#[track_caller]
fn check(bytes: &[u8]) -> (u64, u64) {
    assert_eq!(bytes.len(), RECORD_LEN, "record length");
    let id = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    assert_eq!(
        bytes,
        record(id, seq),
        "record {seq} of writer {id} is torn or foreign"
    );
    (id, seq)
}

/// What a writer puts in a claim it never commits: [`check`] rejects it.
const MARKER: [u8; RECORD_LEN] = [0xEE; RECORD_LEN];

#[track_caller]
fn send(tx: &mut Writer<ShmMemory>, id: u64, seq: u64) {
    let mut grant = tx
        .claim_timeout(RECORD_LEN, DEADLINE)
        .unwrap_or_else(|e| panic!("claim for record {seq}: {e}"));
    grant.copy_from_slice(&record(id, seq));
    grant.commit(RECORD_LEN);
}

/// Per-writer expectations of a consumer: the next sequence number of each writer id.
struct Expect(Vec<u64>);

impl Expect {
    fn new() -> Self {
        Expect(vec![0; 16])
    }

    /// Reads `n` records (of any writers), each writer's in order; fails with `peers`' output.
    #[track_caller]
    fn read(&mut self, rx: &mut Consumer<ShmMemory>, n: u64, peers: &[&Proc]) {
        for i in 0..n {
            let result = rx.read_timeout(DEADLINE).map(|r| check(&r));
            match result {
                Ok((id, seq)) => {
                    let next = &mut self.0[id as usize];
                    assert_eq!(seq, *next, "writer {id}: records out of order or lost");
                    *next += 1;
                }
                Err(e) => {
                    let outputs: Vec<String> = peers.iter().map(|p| p.output()).collect();
                    panic!(
                        "reading record {i} of {n}: {e}\n--- children's output ---\n{}",
                        outputs.join("\n---\n")
                    )
                }
            }
        }
    }
}

fn create(name: &ShmName) -> Segment {
    SegmentBuilder::new(name.as_str())
        .kind(SegmentKind::MpscRing)
        .capacity(CAP)
        .endpoints(ENDPOINTS)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

fn open(name: &str) -> Segment {
    SegmentBuilder::new(name)
        .kind(SegmentKind::MpscRing)
        .open()
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

fn consumer(seg: &Segment) -> Consumer<ShmMemory> {
    let mut rx = seg.mpsc_consumer().expect("attach consumer");
    rx.set_wait_strategy(WaitStrategy::Futex { spins: 64 });
    rx
}

/// Offset in the segment's file of data-area position `pos`.
fn data_offset(pos: u64) -> u64 {
    layout::data_offset(2 + ENDPOINTS, 0) as u64 + (pos & (CAP - 1))
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Some((role, a)) = common::child_role() else {
        return;
    };
    match role.as_str() {
        "produce" => role_produce(a.s(0), a.get::<u64>(1), a.get::<u64>(2)),
        "claim_and_die" => role_claim_and_die(a.s(0), a.get::<u64>(1), a.get::<u64>(2)),
        "claim_and_wait" => role_claim_and_wait(a.s(0), a.get::<u64>(1), a.get::<u64>(2)),
        other => panic!("unknown child role '{other}'"),
    }
}

/// Attaches a writer, commits records `0..count` as writer `id`, reports, and detaches when the
/// parent closes stdin.
fn role_produce(name: &str, id: u64, count: u64) {
    let seg = open(name);
    let mut tx = seg.mpsc_writer().expect("attach writer");
    tx.set_wait_strategy(WaitStrategy::Futex { spins: 64 });
    say("attached", tx.slot_index());
    for seq in 0..count {
        send(&mut tx, id, seq);
    }
    say("wrote", count);
    wait_for_parent();
}

/// Commits records `0..count` as writer `id`, claims one more, writes a marker into it,
/// reports its position, and waits to be killed.
fn role_claim_and_die(name: &str, id: u64, count: u64) {
    let seg = open(name);
    let mut tx = seg.mpsc_writer().expect("attach writer");
    say("attached", tx.slot_index());
    for seq in 0..count {
        send(&mut tx, id, seq);
    }
    let mut grant = tx.claim_timeout(RECORD_LEN, DEADLINE).expect("claim");
    grant.copy_from_slice(&MARKER);
    say("claimed", grant.position());
    wait_for_parent();
    // Only reached if the parent died without killing us: never commit the marker.
    std::process::exit(3);
}

/// Commits records `0..count` as writer `id`, claims record `count`, reports, waits for a line
/// from the parent (it may be stopped meanwhile), then commits it and reports.
fn role_claim_and_wait(name: &str, id: u64, count: u64) {
    let seg = open(name);
    let mut tx = seg.mpsc_writer().expect("attach writer");
    for seq in 0..count {
        send(&mut tx, id, seq);
    }
    let mut grant = tx.claim_timeout(RECORD_LEN, DEADLINE).expect("claim");
    grant.copy_from_slice(&record(id, count));
    say("claimed", grant.position());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("read stdin");
    grant.commit(RECORD_LEN);
    say("committed", count);
    wait_for_parent();
}

// ---- the tests ----

#[test]
fn several_writer_processes_each_in_order_exactly_once() {
    let _watchdog = Watchdog::new("several_writer_processes", TEST_LIMIT);
    const N: u64 = 20_000;
    let name = ShmName::new("mpsc-many");
    let seg = create(&name);
    let mut rx = consumer(&seg);
    let mut writers: Vec<Proc> = (0..3u64)
        .map(|id| Proc::spawn("produce", &[&name, &id, &N]))
        .collect();
    let mut slots: Vec<String> = writers.iter_mut().map(|w| w.expect("attached")).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), 3, "each writer has its own slot");
    let mut expect = Expect::new();
    let peers: Vec<&Proc> = writers.iter().collect();
    expect.read(&mut rx, 3 * N, &peers);
    assert_eq!(&expect.0[..3], &[N; 3]);
    for w in &mut writers {
        w.expect("wrote");
        w.wait_success();
    }
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
    // Counters: every writer's slot counted its messages, the consumer's all of them.
    let mem = rx.memory();
    let messages = |i: usize| {
        mem.slot(i)
            .messages
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!((2..5).map(messages).sum::<u64>(), 3 * N);
    assert_eq!(messages(1), 3 * N);
}

#[test]
fn a_writer_killed_mid_claim_does_not_wedge_the_ring() {
    let _watchdog = Watchdog::new("writer_killed_mid_claim", TEST_LIMIT);
    const K: u64 = 10;
    // More than a ring of records each: the others would block for good behind the claim.
    const N: u64 = 1000;
    let name = ShmName::new("mpsc-kill");
    let seg = create(&name);
    let mut rx = consumer(&seg);
    let mut dying = Proc::spawn("claim_and_die", &[&name, &0, &K]);
    let dead_slot = dying.expect("attached");
    dying.expect("claimed");
    let mut others: Vec<Proc> = (1..3u64)
        .map(|id| Proc::spawn("produce", &[&name, &id, &N]))
        .collect();
    for w in &mut others {
        w.expect("attached");
    }
    let mut expect = Expect::new();
    expect.read(&mut rx, K, &[&dying]);
    // The claimant lives: the consumer waits at its claim.
    assert_eq!(
        rx.read_timeout(NOTHING).unwrap_err(),
        ReadError::Timeout,
        "read past a live writer's claim"
    );
    assert_eq!(rx.peer(), PeerState::Alive);
    dying.kill();
    let peers: Vec<&Proc> = others.iter().collect();
    expect.read(&mut rx, 2 * N, &peers);
    assert_eq!(
        &expect.0[..3],
        &[K, N, N],
        "the dead claim is skipped, nothing else"
    );
    for w in &mut others {
        w.expect("wrote");
    }
    // A new writer takes over the dead writer's slot (the first free one): the dead claim stays
    // dead, the new writer's records arrive.
    let mut heir = Proc::spawn("produce", &[&name, &3, &N]);
    assert_eq!(
        heir.expect("attached"),
        dead_slot,
        "the heir reuses the dead slot"
    );
    expect.read(&mut rx, N, &[&heir]);
    heir.expect("wrote");
    for w in others.iter_mut().chain([&mut heir]) {
        w.wait_success();
    }
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
}

#[test]
fn a_writer_stopped_mid_claim_is_not_skipped() {
    let _watchdog = Watchdog::new("writer_stopped_mid_claim", TEST_LIMIT);
    const K: u64 = 5;
    const N: u64 = 1000;
    let name = ShmName::new("mpsc-stop");
    let seg = create(&name);
    let mut rx = consumer(&seg);
    let mut slow = Proc::spawn("claim_and_wait", &[&name, &0, &K]);
    slow.expect("claimed");
    let mut other = Proc::spawn("produce", &[&name, &1, &N]);
    other.expect("attached");
    let mut expect = Expect::new();
    expect.read(&mut rx, K, &[&slow]);
    stop(&slow);
    for _ in 0..3 {
        assert_eq!(
            rx.read_timeout(NOTHING).unwrap_err(),
            ReadError::Timeout,
            "read past a stopped (live) writer's claim"
        );
    }
    assert!(!rx.unblock().unwrap(), "unblocked a live writer's claim");
    resume(&slow);
    slow.send("commit");
    slow.expect("committed");
    // The stopped writer's record first (it was claimed first), then all of the other's.
    let r = rx.read_timeout(DEADLINE).expect("the slow writer's record");
    assert_eq!(check(&r), (0, K));
    drop(r);
    expect.0[0] = K + 1;
    expect.read(&mut rx, N, &[&other]);
    other.expect("wrote");
    other.wait_success();
    slow.wait_success();
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
}

#[test]
fn a_writer_dead_between_its_cas_and_its_header_is_skipped() {
    let _watchdog = Watchdog::new("writer_dead_before_header", TEST_LIMIT);
    const N: u64 = 1000;
    let name = ShmName::new("mpsc-cas");
    let seg = create(&name);
    let mut rx = consumer(&seg);
    let mut dying = Proc::spawn("claim_and_die", &[&name, &0, &0]);
    dying.expect("attached");
    let pos: u64 = dying.expect("claimed").parse().expect("a position");
    // The ring as a writer leaves it when it stops right after its CAS of the tail: no header
    // and no payload yet (32 bytes claimed: header and 24 payload bytes, aligned).
    let file = fs::OpenOptions::new()
        .write(true)
        .open(shm_path(name.as_str()))
        .expect("open the segment's file");
    file.write_all_at(&[0; 32], data_offset(pos))
        .expect("zero the claim");
    let mut other = Proc::spawn("produce", &[&name, &1, &N]);
    other.expect("attached");
    // Alive, its intent names the head: it may be slow, the consumer waits.
    assert_eq!(rx.read_timeout(NOTHING).unwrap_err(), ReadError::Timeout);
    dying.kill();
    let mut expect = Expect::new();
    expect.read(&mut rx, N, &[&other]);
    other.expect("wrote");
    other.wait_success();
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
}

/// Stops `proc` with SIGSTOP and waits until it is stopped.
fn stop(proc: &Proc) {
    use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};
    let pid = Pid::from_raw(proc.pid() as i32).expect("pid");
    kill_process(pid, Signal::STOP).expect("SIGSTOP");
    match waitpid(Some(pid), WaitOptions::UNTRACED) {
        Ok(Some((_, status))) if status.stopped() => {}
        other => proc.fail(format!("the child did not stop: {other:?}")),
    }
}

fn resume(proc: &Proc) {
    use rustix::process::{kill_process, Pid, Signal};
    kill_process(Pid::from_raw(proc.pid() as i32).expect("pid"), Signal::CONT).expect("SIGCONT");
}
