//! The broadcast ring between real processes: readers in child processes (this test binary run
//! again, see `common/mod.rs`), the writer in the test process.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `two_reader_processes_*` | 1 writer, 2 reader processes: every record once, in order, then `PeerGone` |
//! | `killed_reader_*` | Block: a reader SIGKILLed while it holds the writer back is dropped, and the writer goes on |
//! | `stopped_reader_*` | Lap: a reader stopped (SIGSTOP) while the writer laps it gets `Lapped` with the exact count, then valid records in order |
//! | `late_joiner_*` | a reader process joining with history gets exactly the last k records, then the new ones |
#![cfg(not(miri))]

mod common;

use std::time::Duration;

use common::{say, wait_for_parent, wait_until, Proc, ShmName, Watchdog, DEADLINE};
use shmesh_ring::broadcast::{ReadError, Start, Writer};
use shmesh_ring::{
    BroadcastPolicy, Segment, SegmentBuilder, SegmentKind, ShmMemory, TryClaimError,
};

/// Payload length of a test record: 24 bytes, 32 with the header.
const RECORD_LEN: usize = 24;
/// How long one test may run before the watchdog aborts the binary.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// The payload of record `seq`: the sequence number, its complement and a hash.
fn record(seq: u64) -> [u8; RECORD_LEN] {
    let mut bytes = [0u8; RECORD_LEN];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8..16].copy_from_slice(&(!seq).to_le_bytes());
    bytes[16..].copy_from_slice(&seq.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    bytes
}

/// The sequence number of a record made by [`record`]; panics on anything else.
#[track_caller]
fn check(bytes: &[u8]) -> u64 {
    assert_eq!(bytes.len(), RECORD_LEN, "record length");
    let seq = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(bytes, record(seq), "record {seq} is torn or not ours");
    seq
}

#[track_caller]
fn send(tx: &mut Writer<ShmMemory>, seq: u64) {
    let mut grant = tx
        .claim_timeout(RECORD_LEN, DEADLINE)
        .unwrap_or_else(|e| panic!("claim for record {seq}: {e}"));
    grant.copy_from_slice(&record(seq));
    grant.commit(RECORD_LEN);
}

fn create(name: &ShmName, policy: BroadcastPolicy, history: usize) -> Segment {
    SegmentBuilder::new(name.as_str())
        .kind(SegmentKind::BroadcastRing)
        .capacity(4096)
        .endpoints(4)
        .policy(policy)
        .history(history)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

fn open(name: &str) -> Segment {
    SegmentBuilder::new(name)
        .kind(SegmentKind::BroadcastRing)
        .open()
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

/// Whether process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(common::CHILD_ENV) else {
        return;
    };
    common::arm_child_lifetime();
    let args: Vec<String> = spec.split_whitespace().map(str::to_owned).collect();
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    match args[0].as_str() {
        "read" => role_read(&args[1], num(2), num(3)),
        "stuck" => role_stuck(&args[1]),
        "lap" => role_lap(&args[1], num(2), num(3)),
        other => panic!("unknown child role '{other}'"),
    }
}

/// Joins with `Start::History(history)` (0: latest), says where it starts, reads `count`
/// records in order, says so, then waits for the writer to leave and says `gone`.
fn role_read(name: &str, history: u64, count: u64) {
    let seg = open(name);
    let start = match history {
        0 => Start::Latest,
        k => Start::History(k as usize),
    };
    let mut rx = seg.broadcast_reader(start).expect("join");
    let first = rx.record_number();
    say("joined", first);
    for seq in first..first + count {
        let r = rx
            .read_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("reading record {seq}: {e}"));
        assert_eq!((r.number(), check(&r)), (seq, seq), "records out of order");
    }
    say("read", count);
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
    say("gone", "");
}

/// Joins and never reads: holds a Block writer back until it is killed.
fn role_stuck(name: &str) {
    let seg = open(name);
    let rx = seg.broadcast_reader(Start::Latest).expect("join");
    say("joined", rx.slot_index());
    wait_for_parent();
    std::process::exit(3);
}

/// Joins, reads `first` records, says so, then keeps reading: reports the lap it finds, then
/// reads every record up to `total` and checks each is the one its number says.
fn role_lap(name: &str, first: u64, total: u64) {
    let seg = open(name);
    let mut rx = seg.broadcast_reader(Start::Latest).expect("join");
    say("joined", rx.record_number());
    for seq in 0..first {
        assert_eq!(check(&rx.read_timeout(DEADLINE).expect("read")), seq);
    }
    say("read", first);
    let lost = match rx.read_timeout(DEADLINE) {
        Err(ReadError::Lapped { lost }) => lost,
        Ok(r) => panic!("expected a lap, read record {}", r.number()),
        Err(e) => panic!("expected a lap: {e}"),
    };
    say("lapped", lost);
    say("resumes", rx.record_number());
    let mut n = 0;
    while rx.record_number() < total {
        let r = rx.read_timeout(DEADLINE).expect("read after the lap");
        assert_eq!(
            check(&r),
            r.number(),
            "a record after the lap is the one its number says"
        );
        n += 1;
    }
    say("done", n);
    wait_for_parent();
}

// ---- the tests ----

#[test]
fn two_reader_processes_see_every_record_in_order() {
    let _dog = Watchdog::new("two_reader_processes", TEST_LIMIT);
    let name = ShmName::new("bc-two");
    let seg = create(&name, BroadcastPolicy::Block, 0);
    let count = 20_000u64;
    let mut readers: Vec<Proc> = (0..2)
        .map(|_| Proc::spawn("read", &[&name, &0, &count]))
        .collect();
    for r in &mut readers {
        assert_eq!(r.expect("joined"), "0");
    }
    let mut tx = seg.broadcast_writer().expect("attach writer");
    for seq in 0..count {
        send(&mut tx, seq);
    }
    for r in &mut readers {
        assert_eq!(r.expect("read"), count.to_string());
    }
    drop(tx);
    for r in &mut readers {
        r.expect("gone");
        r.wait_success();
    }
}

#[test]
fn killed_reader_is_dropped_and_the_block_writer_goes_on() {
    let _dog = Watchdog::new("killed_reader", TEST_LIMIT);
    let name = ShmName::new("bc-kill");
    let seg = create(&name, BroadcastPolicy::Block, 0);
    let mut tx = seg.broadcast_writer().expect("attach writer");
    let mut stuck = Proc::spawn("stuck", &[&name]);
    stuck.expect("joined");
    let count = 1000u64; // 32 000 bytes through a 4096-byte ring
    let mut reader = Proc::spawn("read", &[&name, &0, &count]);
    reader.expect("joined");
    // The stuck reader holds the writer back once the ring is full.
    let mut seq = 0;
    loop {
        match tx.try_claim(RECORD_LEN) {
            Ok(mut g) => {
                g.copy_from_slice(&record(seq));
                g.commit(RECORD_LEN);
                seq += 1;
            }
            Err(TryClaimError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        seq < count,
        "the ring filled before the stuck reader was killed"
    );
    assert!(tx
        .claim_timeout(RECORD_LEN, Duration::from_millis(50))
        .is_err());
    assert_eq!(tx.live_readers(), 2);
    stuck.kill();
    for s in seq..count {
        send(&mut tx, s);
    }
    assert_eq!(tx.live_readers(), 1);
    assert_eq!(reader.expect("read"), count.to_string());
    drop(tx);
    reader.expect("gone");
    reader.wait_success();
}

#[test]
fn stopped_reader_is_lapped_with_the_exact_count_then_reads_on() {
    let _dog = Watchdog::new("stopped_reader", TEST_LIMIT);
    let name = ShmName::new("bc-lap");
    let seg = create(&name, BroadcastPolicy::Lap, 0);
    let mut tx = seg.broadcast_writer().expect("attach writer");
    let (first, total) = (10u64, 10 + 300u64);
    let mut child = Proc::spawn("lap", &[&name, &first, &total]);
    // It joins before the first record.
    assert_eq!(child.expect("joined"), "0");
    for seq in 0..first {
        send(&mut tx, seq);
    }
    assert_eq!(child.expect("read"), first.to_string());
    signal(child.pid(), "-STOP");
    wait_until("the reader is stopped", || stopped(child.pid()));
    // 300 records of 32 bytes: more than two laps of the 4096-byte ring.
    for seq in first..total {
        send(&mut tx, seq);
    }
    signal(child.pid(), "-CONT");
    // The writer's intent ends 16 bytes past its last record: record j (at 32 j) is intact
    // while 32 j >= 32 total + 16 - 4096, that is from total - 127 on.
    let oldest = total - 127;
    assert_eq!(child.expect("lapped"), (oldest - first).to_string());
    assert_eq!(child.expect("resumes"), oldest.to_string());
    assert_eq!(child.expect("done"), (total - oldest).to_string());
    child.wait_success();
}

#[test]
fn late_joiner_gets_the_last_k_records_then_the_new_ones() {
    let _dog = Watchdog::new("late_joiner", TEST_LIMIT);
    let name = ShmName::new("bc-late");
    let seg = create(&name, BroadcastPolicy::Block, 10);
    let mut tx = seg.broadcast_writer().expect("attach writer");
    for seq in 0..50 {
        send(&mut tx, seq);
    }
    let mut child = Proc::spawn("read", &[&name, &10, &15]);
    assert_eq!(child.expect("joined"), "40");
    for seq in 50..55 {
        send(&mut tx, seq);
    }
    assert_eq!(child.expect("read"), "15");
    drop(tx);
    child.expect("gone");
    child.wait_success();
}
