//! The ring between real processes: futex wake-ups across address spaces, `kill -9` at the
//! worst moments, a hostile process scribbling on the ring, pid namespaces, other users.
//!
//! Each test runs this test binary again as its child processes (see `common/mod.rs`): the
//! `child_entry` test plays the role named in `SHMESH_TEST_CHILD` and does nothing otherwise.
//! Children report over stdout lines, the parent answers by closing their stdin; every wait has a
//! deadline, every child is killed when its test ends, every segment name is unique.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `ping_pong_*` | 10^6 round trips with both sides parking on the futex: no lost wake-up, shared (not private) futex |
//! | `writer_killed_*`, `parked_reader_*` | a writer killed between claim and commit: the committed records, never the claimed one, then `PeerGone`; takeover |
//! | `reader_killed_*` | a reader killed holding a record: a full writer gets `PeerGone`, not a hang; a new reader loses nothing |
//! | `killed_creator_*`, `unlocked_leftover_*` | a creator killed before, during or after initialization leaves a name that can be created again; openers get `NotInitialized` |
//! | `scribbler_*` | random bytes over the control block and data area: errors or junk, never a crash or a hang |
//! | `peer_in_another_pid_namespace_*` | liveness is not fooled by pids (the producer is pid 1 in its namespace) |
//! | `*_user_*`, `squatted_*`, `mode_*`, `umask_*`, `symlinked_*` | permissions, across users (uid 65534 via `setpriv`) |
//! | `second_producer_*` | a second producer is `Busy` while the first lives, takes over after it dies |
//! | `*_racing_*` | opens and creates racing a reclaim of a dead segment's name (the racer is stopped with `SIGSTOP` inside its call) |
//!
//! Run: `cargo test -p shmesh-ring --test processes` (about 15 s in a debug build, 6 s with
//! `--release`). The privileged tests need root and util-linux (`unshare`, `setpriv`): without
//! root they print why they skip; as root without the tools they fail saying what to install.

mod common;

use std::fmt::Display;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    child_command, is_root, peek_u32, peek_u64, require_tool, say, shm_path, stop_flag, this_exe,
    wait_for_parent, wait_until, Proc, SharedExe, ShmName, Watchdog, DEADLINE, NOBODY,
};
use shmesh_ring::layout::{EndpointSlot, RingControl, CONTROL_OFFSET, DATA_OFFSET, SLOTS_OFFSET};
use shmesh_ring::{
    AttachError, ClaimError, Consumer, PeerState, Producer, ReadError, Segment, SegmentBuilder,
    SegmentError, ShmMemory, TryClaimError, TryReadError, WaitStrategy,
};

/// Capacity of the rings of most tests.
const CAP: u64 = 4096;
/// Payload length of a test record.
const RECORD_LEN: usize = 24;
/// How long one test may run before the watchdog aborts the binary.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// Offset of the consumer's parked word in the segment.
const CONSUMER_PARKED: u64 =
    (CONTROL_OFFSET + std::mem::offset_of!(RingControl, consumer_parked)) as u64;
/// Offset of the producer's parked word in the segment.
const PRODUCER_PARKED: u64 =
    (CONTROL_OFFSET + std::mem::offset_of!(RingControl, producer_parked)) as u64;
/// Offset of the producer's endpoint slot.
const PRODUCER_SLOT: usize = SLOTS_OFFSET;
/// Offset of the producer slot's pid.
const PRODUCER_PID: u64 = (PRODUCER_SLOT + std::mem::offset_of!(EndpointSlot, pid)) as u64;
/// Offset of the producer slot's attach count.
const PRODUCER_ATTACHES: u64 =
    (PRODUCER_SLOT + std::mem::offset_of!(EndpointSlot, attach_count)) as u64;

// ---- records ----

/// The payload of record `seq`: the sequence number, its complement and a hash, so that a torn,
/// foreign or partial record cannot pass [`check`].
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
    assert_eq!(
        bytes,
        record(seq),
        "record {seq} is torn or not a record of ours"
    );
    seq
}

/// A payload that [`check`] rejects: what a writer puts in a claim it never commits.
const MARKER: [u8; RECORD_LEN] = [0xEE; RECORD_LEN];

#[track_caller]
fn send(tx: &mut Producer<ShmMemory>, seq: u64) {
    let mut grant = tx
        .claim_timeout(RECORD_LEN, DEADLINE)
        .unwrap_or_else(|e| panic!("claim for record {seq}: {e}"));
    grant.copy_from_slice(&record(seq));
    grant.commit(RECORD_LEN);
}

#[track_caller]
fn recv(rx: &mut Consumer<ShmMemory>) -> u64 {
    let record = rx
        .read_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("read: {e}"));
    check(&record)
}

/// Reads the records `seqs` in order, failing with `peer`'s output on any error.
#[track_caller]
fn recv_all(rx: &mut Consumer<ShmMemory>, seqs: std::ops::Range<u64>, peer: &Proc) {
    for seq in seqs {
        match rx.read_timeout(DEADLINE) {
            Ok(r) => assert_eq!(check(&r), seq, "records out of order"),
            Err(e) => peer.fail(format!("reading record {seq}: {e}")),
        }
    }
}

/// Runs `f` on a thread; fails if it has not returned within [`DEADLINE`].
#[track_caller]
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what} did not return within {DEADLINE:?}"))
}

fn create(name: &ShmName, capacity: u64) -> Segment {
    SegmentBuilder::new(name.as_str())
        .capacity(capacity)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

/// Both ends park on the futex at once when they wait.
const PARK: WaitStrategy = WaitStrategy::Futex { spins: 0 };

fn wait_strategy(name: &str) -> WaitStrategy {
    match name {
        "park" => PARK,
        "default" => WaitStrategy::futex(),
        other => panic!("unknown wait strategy {other}"),
    }
}

/// A short, stable name for an open/create outcome, for children to report.
fn outcome(result: &Result<Segment, SegmentError>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(SegmentError::NotOwner {
            expected, found, ..
        }) => format!("NotOwner {expected} {found}"),
        Err(SegmentError::PermissionDenied { .. }) => "PermissionDenied".to_owned(),
        Err(SegmentError::ModeTooWide { allowed, found, .. }) => {
            format!("ModeTooWide {allowed:o} {found:o}")
        }
        Err(SegmentError::AlreadyExists { .. }) => "AlreadyExists".to_owned(),
        Err(SegmentError::NotFound { .. }) => "NotFound".to_owned(),
        Err(SegmentError::NotInitialized { .. }) => "NotInitialized".to_owned(),
        Err(e) => format!("other {e:?}"),
    }
}

/// Whether this process maps the object `name` after it was unlinked: a segment nobody else can
/// find any more.
fn maps_unlinked(name: &str) -> bool {
    let needle = format!("{} (deleted)", shm_path(name).display());
    fs::read_to_string("/proc/self/maps")
        .is_ok_and(|maps| maps.lines().any(|l| l.ends_with(&needle)))
}

fn file_mode(path: &Path) -> u32 {
    fs::metadata(path)
        .map(|m| m.mode() & 0o777)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn child_entry() {
    let Ok(spec) = std::env::var(common::CHILD_ENV) else {
        return;
    };
    common::arm_child_lifetime();
    let mut words = spec.split_whitespace();
    let role = words.next().expect("a role");
    let args: Vec<String> = words.map(str::to_owned).collect();
    let a = Args(&args);
    match role {
        "pong" => role_pong(a.s(0), a.s(1), a.get(2), a.s(3)),
        "claim_and_die" => role_claim_and_die(a.s(0), a.get(1)),
        "produce" => role_produce(a.s(0), a.get(1), a.get(2)),
        "produce_spread" => role_produce_spread(&args[1..], a.get(0)),
        "hold_record" => role_hold_record(a.s(0)),
        "consume" => role_consume(a.s(0), a.get(1), a.get(2)),
        "try_producer" => role_try_producer(a.s(0)),
        "raw_create" => role_raw_create(a.s(0), a.get(1), a.s(2) == "lock"),
        "create_and_hold" => role_create_and_hold(a.s(0)),
        "scribble_reader" => role_scribble_reader(a.s(0), a.get(1)),
        "scribble_writer" => role_scribble_writer(a.s(0)),
        "scribbler" => role_scribbler(a.s(0), a.get(1), a.get(2), a.get(3)),
        "open_report" => role_open_report(a.s(0), a.octal(1), a.s(2)),
        "squat" => role_squat(a.s(0), a.octal(1)),
        "create_umask" => role_create_umask(a.s(0), a.octal(1), a.octal(2)),
        "symlink" => role_symlink(a.s(0), a.s(1)),
        "open_on_command" => role_on_command(a.s(0), false, a.s(1)),
        "create_on_command" => role_on_command(a.s(0), true, a.s(1)),
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

fn open(name: &str) -> Segment {
    SegmentBuilder::new(name)
        .open()
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

/// Answers every ping with a pong of the same sequence number.
fn role_pong(ping: &str, pong: &str, count: u64, wait: &str) {
    let (ping, pong) = (open(ping), open(pong));
    let mut rx = ping.consumer().expect("attach ping consumer");
    let mut tx = pong.producer().expect("attach pong producer");
    rx.set_wait_strategy(wait_strategy(wait));
    tx.set_wait_strategy(wait_strategy(wait));
    say("ready", "");
    for seq in 0..count {
        assert_eq!(recv(&mut rx), seq, "pings out of order");
        send(&mut tx, seq);
    }
}

/// Commits `count` records, claims one more, writes a marker into it, and waits to be killed.
fn role_claim_and_die(name: &str, count: u64) {
    let seg = open(name);
    let mut tx = seg.producer().expect("attach producer");
    for seq in 0..count {
        send(&mut tx, seq);
    }
    let mut grant = tx.claim_timeout(RECORD_LEN, DEADLINE).expect("claim");
    grant.copy_from_slice(&MARKER);
    say("claimed", grant.position());
    wait_for_parent();
    // Only reached if the parent died without killing us: never commit the marker.
    std::process::exit(3);
}

/// Attaches as producer, commits the records `from..from + count`, and detaches cleanly when
/// the parent closes stdin.
fn role_produce(name: &str, from: u64, count: u64) {
    let seg = open(name);
    let mut tx = seg.producer().expect("attach producer");
    say("attached", std::process::id());
    for seq in from..from + count {
        send(&mut tx, seq);
    }
    say("wrote", count);
    wait_for_parent();
}

/// Attaches as producer of every ring named and writes records `0..count` to them in turn
/// (record `seq` to ring `seq % n`), pausing now and then so that the reader parks.
fn role_produce_spread(names: &[String], count: u64) {
    let segs: Vec<Segment> = names.iter().map(|n| open(n)).collect();
    let mut txs: Vec<_> = segs
        .iter()
        .map(|s| s.producer().expect("attach producer"))
        .collect();
    say("attached", std::process::id());
    let n = txs.len() as u64;
    for seq in 0..count {
        send(&mut txs[(seq % n) as usize], seq);
        if seq % 7 == 0 {
            thread::sleep(Duration::from_micros(300));
        }
    }
    say("wrote", count);
    wait_for_parent();
}

/// Attaches as consumer, reads record 0 and holds it until killed.
fn role_hold_record(name: &str) {
    let seg = open(name);
    let mut rx = seg.consumer().expect("attach consumer");
    let record = rx.read_timeout(DEADLINE).expect("read");
    say("holding", check(&record));
    wait_for_parent();
    std::process::exit(3);
}

/// Attaches as consumer and reads the records `from..from + count`.
fn role_consume(name: &str, from: u64, count: u64) {
    let seg = open(name);
    let mut rx = seg.consumer().expect("attach consumer");
    for seq in from..from + count {
        assert_eq!(recv(&mut rx), seq, "records out of order");
    }
    say("read", count);
}

/// Tries to attach as producer and reports the outcome.
fn role_try_producer(name: &str) {
    let seg = open(name);
    match seg.producer() {
        Ok(_) => say("attach", "ok"),
        Err(AttachError::Busy { pid, .. }) => say("attach", format!("Busy {pid}")),
        Err(e) => say("attach", format!("other {e:?}")),
    }
}

/// Does what a creator does before it publishes the header: makes the object (`O_EXCL`, 0600),
/// sizes it to `size` bytes (0: not yet), optionally takes the shared "in use" lock that the
/// real creator takes (byte 0 is covered by a whole-file lock), then waits to be killed.
fn role_raw_create(name: &str, size: u64, lock: bool) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(shm_path(name))
        .expect("create the raw object");
    if size > 0 {
        file.set_len(size).expect("size the raw object");
    }
    if lock {
        rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockShared)
            .expect("lock the raw object");
    }
    say("created", size);
    wait_for_parent();
    std::process::exit(3);
}

/// Creates a segment with the real API, commits one record, and waits to be killed.
fn role_create_and_hold(name: &str) {
    let seg = SegmentBuilder::new(name)
        .capacity(CAP)
        .create()
        .expect("create");
    let mut tx = seg.producer().expect("attach producer");
    send(&mut tx, 7);
    say("created", "");
    wait_for_parent();
    std::process::exit(3);
}

/// Reads for `millis` ms from a ring that a scribbler corrupts: every outcome is fine but a
/// crash or a hang. Reports what it saw.
fn role_scribble_reader(name: &str, millis: u64) {
    let seg = open(name);
    let mut rx = seg.consumer().expect("attach consumer");
    rx.set_wait_strategy(WaitStrategy::Futex { spins: 8 });
    say("ready", "");
    let (mut ok, mut bytes, mut empty, mut corrupt, mut gone) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut checksum = 0u8;
    let until = Instant::now() + Duration::from_millis(millis);
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let result = if i % 2 == 0 {
            rx.read_timeout(Duration::from_millis(2))
                .map_err(|e| match e {
                    ReadError::Timeout => TryReadError::Empty,
                    ReadError::PeerGone => TryReadError::PeerGone,
                    ReadError::Corrupt(c) => TryReadError::Corrupt(c),
                })
        } else {
            rx.try_read()
        };
        match &result {
            Ok(record) => {
                // Touch every byte: an out-of-bounds record would fault here.
                checksum ^= record.iter().fold(0u8, |a, b| a.wrapping_add(*b));
                bytes += record.len() as u64;
                ok += 1;
            }
            Err(TryReadError::Empty) => empty += 1,
            Err(TryReadError::Corrupt(_)) => corrupt += 1,
            Err(TryReadError::PeerGone) => gone += 1,
        }
        drop(result);
        if i % 1024 == 0 {
            let _ = rx.peer();
        }
    }
    std::hint::black_box(checksum);
    say(
        "stats",
        format!("records={ok} bytes={bytes} empty={empty} corrupt={corrupt} gone={gone}"),
    );
}

/// Writes records of varied lengths until the parent closes stdin, tolerating every error a
/// scribbled ring can cause.
fn role_scribble_writer(name: &str) {
    let seg = open(name);
    let mut tx = seg.producer().expect("attach producer");
    tx.set_wait_strategy(WaitStrategy::Futex { spins: 8 });
    let stop = stop_flag();
    say("ready", "");
    let max = tx.max_payload() as usize;
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut rng = Rng(0x5EED ^ u64::from(std::process::id()));
    while !stop.load(Ordering::Acquire) {
        let len = rng.below(max as u64 + 1) as usize;
        let claimed = if rng.below(2) == 0 {
            tx.try_claim(len).map_err(|_| ())
        } else {
            tx.claim_timeout(len, Duration::from_millis(2))
                .map_err(|_| ())
        };
        match claimed {
            Ok(mut grant) => {
                grant.fill(ok as u8);
                let commit = rng.below(len as u64 + 1) as usize;
                grant.commit(commit);
                ok += 1;
            }
            Err(()) => errors += 1,
        }
    }
    say("stats", format!("records={ok} errors={errors}"));
}

/// Writes random bytes over the ring's control block and data area (through the object's file,
/// which is the same memory as every mapping of it) until the parent closes stdin, pausing
/// `pause_us` µs between writes.
fn role_scribbler(name: &str, seed: u64, capacity: u64, pause_us: u64) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(name))
        .expect("open");
    let stop = stop_flag();
    say("ready", "");
    let mut rng = Rng(seed | 1);
    let words = [
        std::mem::offset_of!(RingControl, tail),
        std::mem::offset_of!(RingControl, head),
        std::mem::offset_of!(RingControl, consumer_parked),
        std::mem::offset_of!(RingControl, producer_parked),
    ];
    let control =
        CONTROL_OFFSET as u64..(CONTROL_OFFSET + std::mem::size_of::<RingControl>()) as u64;
    let data = DATA_OFFSET as u64..DATA_OFFSET as u64 + capacity;
    let mut writes = 0u64;
    while !stop.load(Ordering::Acquire) {
        let (offset, bytes): (u64, Vec<u8>) = match rng.below(10) {
            // An index or a parked word: nudged (plausible but wrong) or replaced.
            0..=3 => {
                let offset = (CONTROL_OFFSET + words[rng.below(4) as usize]) as u64;
                let mut current = [0u8; 8];
                let _ = file.read_exact_at(&mut current, offset);
                let current = u64::from_le_bytes(current);
                let value = match rng.below(6) {
                    0 => current.wrapping_add(16 * rng.below(8)),
                    1 => current.wrapping_sub(16 * rng.below(8)),
                    2 => current.wrapping_add(capacity),
                    3 => current.wrapping_add(rng.below(16)),
                    4 => u64::MAX - rng.below(64),
                    _ => rng.next(),
                };
                (offset, value.to_le_bytes().to_vec())
            }
            // Anywhere in the control block.
            4 => (
                control.start + rng.below(control.end - control.start - 8),
                rng.bytes(8),
            ),
            // A record header: a length in or near range, maybe negative, maybe padding.
            5..=7 => {
                let offset = data.start + rng.below(capacity / 8) * 8;
                let len = rng.below(capacity + 64) as i64 - 32;
                let kind = if rng.below(3) == 0 {
                    u32::MAX
                } else {
                    rng.next() as u32
                };
                let mut header = (len as i32).to_le_bytes().to_vec();
                header.extend_from_slice(&kind.to_le_bytes());
                (offset, header)
            }
            // Random bytes anywhere in the data area.
            _ => {
                let len = 1 + rng.below(32);
                (
                    data.start + rng.below(capacity - len),
                    rng.bytes(len as usize),
                )
            }
        };
        file.write_all_at(&bytes, offset).expect("scribble");
        writes += 1;
        if pause_us > 0 {
            thread::sleep(Duration::from_micros(pause_us));
        }
    }
    say("stats", writes);
}

/// Opens `name` accepting modes up to `mode` and the owner `owner` (`-`: ourselves), and
/// reports the outcome.
fn role_open_report(name: &str, mode: u32, owner: &str) {
    let mut builder = SegmentBuilder::new(name).mode(mode);
    if owner != "-" {
        builder = builder.owner(owner.parse().expect("owner uid"));
    }
    say("open", outcome(&builder.open()));
}

/// Creates `name` with `mode` and keeps it until killed.
fn role_squat(name: &str, mode: u32) {
    let seg = SegmentBuilder::new(name)
        .capacity(CAP)
        .mode(mode)
        .create()
        .expect("squat");
    say("created", rustix::process::geteuid().as_raw());
    wait_for_parent();
    drop(seg);
}

/// Creates `name` with `mode` under the umask `umask`, reports the object's mode, and keeps it
/// until the parent closes stdin.
fn role_create_umask(name: &str, umask: u32, mode: u32) {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
    let seg = SegmentBuilder::new(name)
        .capacity(CAP)
        .mode(mode)
        .create()
        .expect("create");
    say("created", format!("{:o}", file_mode(&shm_path(name))));
    wait_for_parent();
    drop(seg);
}

/// Makes the name `link` a symbolic link to the object of `target`.
fn role_symlink(link: &str, target: &str) {
    std::os::unix::fs::symlink(shm_path(target), shm_path(link)).expect("symlink");
    say("linked", "");
}

/// For each line on stdin, opens (or creates) `name` once and reports whether that worked and
/// whether the segment it got is one that nobody can find by its name any more.
fn role_on_command(name: &str, create: bool, cpu: &str) {
    if let Ok(cpu) = cpu.parse() {
        pin_to_cpu(cpu);
    }
    say("ready", "");
    for line in std::io::stdin().lines() {
        if line.is_err() {
            break;
        }
        let builder = SegmentBuilder::new(name);
        let result = if create {
            builder.capacity(CAP).create()
        } else {
            builder.open()
        };
        let orphan = result.is_ok() && maps_unlinked(name);
        let capacity = result.as_ref().map_or(0, Segment::capacity);
        let outcome = outcome(&result);
        drop(result);
        say(
            "done",
            format!("{outcome} capacity={capacity} orphan={orphan}"),
        );
    }
}

/// xorshift64*: enough randomness for a scribbler, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---- 1. ping-pong with futex waits ----

/// Round trips of the ping-pong test that parks at once (10 to 20 s in a debug build on a
/// loaded two-core machine, 4 to 7 s in a release build: no need to scale it down for debug).
const PING_PONGS: u64 = 1_000_000;
/// Round trips with the default strategy, which spins before it parks: on a machine with fewer
/// free cores than spinners a round trip then costs the whole spin budget, so fewer of them.
const DEFAULT_PING_PONGS: u64 = if cfg!(debug_assertions) {
    20_000
} else {
    100_000
};

/// `count` round trips between this process and a child over two rings (ping, pong), each
/// message carrying a checked sequence number, both sides waiting with `wait`.
///
/// With `Futex { spins: 0 }` every wait parks on the futex at once, so every message needs a
/// wake-up from the other process. A waiter re-checks its ring every `PARK_SLICE` (20 ms) even
/// without a wake-up, so a lost wake-up costs 20 ms rather than hanging forever; a systematic
/// one (a private futex, which a waker in another process never finds; a broken parked-flag
/// handshake) makes each round trip last at least 20 ms, and 10^6 round trips over five hours:
/// the loop's deadline (10 min) turns that into a failure, far above what a working ring needs.
fn ping_pong(test: &'static str, count: u64, wait: &str) {
    let _watchdog = Watchdog::new(test, Duration::from_secs(900));
    let ping_name = ShmName::new("ping");
    let pong_name = ShmName::new("pong");
    let ping = create(&ping_name, CAP);
    let pong = create(&pong_name, CAP);
    let mut tx = ping.producer().unwrap();
    let mut rx = pong.consumer().unwrap();
    tx.set_wait_strategy(wait_strategy(wait));
    rx.set_wait_strategy(wait_strategy(wait));
    let mut child = Proc::spawn("pong", &[&ping_name, &pong_name, &count, &wait]);
    child.expect("ready");
    let deadline = Duration::from_secs(600);
    let started = Instant::now();
    for seq in 0..count {
        send(&mut tx, seq);
        match rx.read_timeout(DEADLINE) {
            Ok(r) => assert_eq!(check(&r), seq, "pongs out of order"),
            Err(e) => child.fail(format!("pong {seq}: {e}")),
        }
        if seq % 4096 == 0 && started.elapsed() > deadline {
            child.fail(format!(
                "only {seq} of {count} round trips after {deadline:?}: wake-ups are lost (a \
                 private futex, or a broken parked-flag handshake), each one costing a park slice"
            ));
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{test}: {count} round trips in {elapsed:?} ({:?} each, measured, not asserted)",
        elapsed / count as u32
    );
    child.wait_success();
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn ping_pong_parking_at_once_loses_no_wake_up() {
    ping_pong(
        "ping_pong_parking_at_once_loses_no_wake_up",
        PING_PONGS,
        "park",
    );
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn ping_pong_with_the_default_futex_strategy() {
    ping_pong(
        "ping_pong_with_the_default_futex_strategy",
        DEFAULT_PING_PONGS,
        "default",
    );
}

// ---- 2. a writer killed between claim and commit ----

/// `select::park` on three rings written by another process: every record arrives, in order
/// per ring, and every sleep is ended by the writer's wake-up. The sleeps ask for 10 minutes, so
/// a lost wake-up (or a private futex, which a waker in another process never finds) shows as
/// the watchdog firing, not as a slow pass.
#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn select_parks_on_three_rings_written_by_another_process() {
    use shmesh_ring::select::{self, Interest};
    let _watchdog = Watchdog::new("select_parks_on_three_rings", TEST_LIMIT);
    const COUNT: u64 = 3000;
    let names: Vec<ShmName> = (0..3)
        .map(|i| ShmName::new(&format!("select-{i}")))
        .collect();
    let segs: Vec<Segment> = names.iter().map(|n| create(n, CAP)).collect();
    let mut rxs: Vec<_> = segs.iter().map(|s| s.consumer().unwrap()).collect();
    let mut writer = Proc::spawn("produce_spread", &[&COUNT, &names[0], &names[1], &names[2]]);
    writer.expect("attached");
    let mut next = [0u64, 1, 2];
    let mut got = 0;
    let mut parks = 0;
    while got < COUNT {
        let mut progressed = false;
        for (i, rx) in rxs.iter_mut().enumerate() {
            match rx.try_read() {
                Ok(r) => {
                    assert_eq!(check(&r), next[i], "ring {i}: records out of order");
                    next[i] += 3;
                    got += 1;
                    progressed = true;
                }
                Err(TryReadError::Empty) => {}
                Err(e) => writer.fail(format!("ring {i}: {e}")),
            }
        }
        if !progressed {
            let mut interests: Vec<Interest<'_, ShmMemory>> =
                rxs.iter_mut().map(Interest::Record).collect();
            select::park(&mut interests, Duration::from_secs(600));
            parks += 1;
        }
    }
    writer.expect("wrote");
    writer.close_stdin();
    writer.wait_success();
    println!("{COUNT} records over 3 rings, {parks} sleeps");
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn writer_killed_between_claim_and_commit_loses_only_the_claim() {
    let _watchdog = Watchdog::new("writer_killed_between_claim_and_commit", TEST_LIMIT);
    const K: u64 = 10;
    let name = ShmName::new("claim-kill");
    let seg = create(&name, CAP);
    let mut rx = seg.consumer().unwrap();
    rx.set_wait_strategy(PARK);
    let mut writer = Proc::spawn("claim_and_die", &[&name, &K]);
    writer.expect("claimed");
    assert_eq!(rx.peer(), PeerState::Alive);
    recv_all(&mut rx, 0..K / 2, &writer);
    writer.kill();
    // Committed before the death: still there. The claimed record: never.
    recv_all(&mut rx, K / 2..K, &writer);
    match rx.read_timeout(DEADLINE) {
        Err(ReadError::PeerGone) => {}
        Ok(r) => panic!(
            "read the dead writer's uncommitted claim: {:?} = {:x?}",
            r, &*r
        ),
        Err(e) => panic!("expected PeerGone, got {e}"),
    }
    assert_eq!(rx.peer(), PeerState::Gone);
    // A new producer takes over where the committed records end.
    let mut heir = Proc::spawn("produce", &[&name, &K, &K]);
    heir.expect("attached");
    heir.expect("wrote");
    assert_eq!(rx.peer(), PeerState::Alive);
    recv_all(&mut rx, K..2 * K, &heir);
    heir.wait_success();
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn parked_reader_wakes_with_peer_gone_when_the_writer_is_killed() {
    let _watchdog = Watchdog::new("parked_reader_wakes_with_peer_gone", TEST_LIMIT);
    let name = ShmName::new("parked-reader");
    let seg = create(&name, CAP);
    let mut rx = seg.consumer().unwrap();
    rx.set_wait_strategy(PARK);
    let mut writer = Proc::spawn("produce", &[&name, &0, &3]);
    writer.expect("attached");
    writer.expect("wrote");
    recv_all(&mut rx, 0..3, &writer);
    let reader = thread::spawn(move || {
        let result = rx.read_timeout(DEADLINE).map(|r| check(&r));
        (rx, result)
    });
    wait_until("the reader is parked on the futex", || {
        peek_u32(name.as_str(), CONSUMER_PARKED) == 1
    });
    writer.kill();
    let (rx, result) = reader.join().expect("reader thread");
    assert_eq!(
        result,
        Err(ReadError::PeerGone),
        "a parked reader must notice the writer's death"
    );
    assert_eq!(rx.peer(), PeerState::Gone);
}

// ---- 3. a reader killed holding a record ----

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn reader_killed_holding_a_record_makes_a_full_writer_see_peer_gone() {
    let _watchdog = Watchdog::new("reader_killed_holding_a_record", TEST_LIMIT);
    let name = ShmName::new("hold-kill");
    let seg = create(&name, CAP);
    let mut tx = seg.producer().unwrap();
    tx.set_wait_strategy(PARK);
    send(&mut tx, 0);
    let mut reader = Proc::spawn("hold_record", &[&name]);
    assert_eq!(reader.expect("holding"), "0");
    // Fill the ring while the reader lives: full, not gone.
    let mut written = 1;
    loop {
        match tx.try_claim(RECORD_LEN) {
            Ok(mut grant) => {
                grant.copy_from_slice(&record(written));
                grant.commit(RECORD_LEN);
                written += 1;
            }
            Err(TryClaimError::Full { .. }) => break,
            Err(e) => reader.fail(format!("filling the ring: {e}")),
        }
    }
    assert_eq!(tx.peer(), PeerState::Alive);
    // Block in a claim, parked on the futex, then kill the reader.
    let writer = thread::spawn(move || {
        let result = tx.claim_timeout(RECORD_LEN, DEADLINE).map(drop);
        (tx, result)
    });
    wait_until("the writer is parked on the futex", || {
        peek_u32(name.as_str(), PRODUCER_PARKED) == 1
    });
    reader.kill();
    let (mut tx, result) = writer.join().expect("writer thread");
    assert_eq!(
        result,
        Err(ClaimError::PeerGone),
        "a parked writer must notice the reader's death"
    );
    assert_eq!(tx.peer(), PeerState::Gone);
    assert_eq!(
        tx.claim_timeout(RECORD_LEN, DEADLINE).map(drop),
        Err(ClaimError::PeerGone)
    );
    // A new reader takes over from the record the dead one held: nothing is lost.
    let mut heir = Proc::spawn("consume", &[&name, &0, &written]);
    assert_eq!(heir.expect("read"), written.to_string());
    heir.wait_success();
}

// ---- 4. creators killed during creation ----

/// A creator killed after `shm_open(O_CREAT | O_EXCL)`, before it published the header: the
/// object is `size` bytes, and `locked` says whether it had taken the "in use" lock.
fn creator_killed_during_creation(test: &'static str, size: u64, locked: bool) {
    let _watchdog = Watchdog::new(test, TEST_LIMIT);
    let name = ShmName::new("half-created");
    let lock = if locked { "lock" } else { "nolock" };
    let mut creator = Proc::spawn("raw_create", &[&name, &size, &lock]);
    creator.expect("created");
    // While the creator lives: an opener waits (bounded) and gets NotInitialized.
    let opener = SegmentBuilder::new(name.as_str()).open_timeout(Duration::from_millis(200));
    let opened = within("open of a half-created segment", move || opener.open());
    assert!(
        matches!(opened, Err(SegmentError::NotInitialized { .. })),
        "open of a half-created segment: {opened:?}"
    );
    if locked {
        // The creator holds the "in use" lock: its name is taken, not reclaimed.
        let again = SegmentBuilder::new(name.as_str()).capacity(CAP).create();
        assert!(
            matches!(again, Err(SegmentError::AlreadyExists { .. })),
            "create: {again:?}"
        );
    }
    creator.kill();
    // Dead: the name can be created again without any cleanup, and the ring works.
    let seg = create(&name, CAP);
    let (mut tx, mut rx) = (seg.producer().unwrap(), seg.consumer().unwrap());
    send(&mut tx, 1);
    assert_eq!(recv(&mut rx), 1);
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn killed_creator_before_sizing_leaves_a_reclaimable_name() {
    creator_killed_during_creation("killed_creator_before_sizing", 0, true);
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn killed_creator_before_publishing_the_header_leaves_a_reclaimable_name() {
    creator_killed_during_creation("killed_creator_before_publishing", 2 * CAP, true);
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn unlocked_leftover_object_is_reclaimed() {
    creator_killed_during_creation("unlocked_leftover_object_is_reclaimed", 2 * CAP, false);
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn killed_creator_of_a_live_segment_leaves_a_reclaimable_name() {
    let _watchdog = Watchdog::new("killed_creator_of_a_live_segment", TEST_LIMIT);
    let name = ShmName::new("dead-creator");
    let mut creator = Proc::spawn("create_and_hold", &[&name]);
    creator.expect("created");
    creator.kill();
    {
        // Left behind fully initialized: it still opens, and what was committed is readable.
        let old = SegmentBuilder::new(name.as_str())
            .open()
            .expect("open the dead creator's segment");
        let mut rx = old.consumer().unwrap();
        assert_eq!(recv(&mut rx), 7);
        assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
        // While we use it, the name is in use.
        let again = SegmentBuilder::new(name.as_str()).capacity(CAP).create();
        assert!(
            matches!(again, Err(SegmentError::AlreadyExists { .. })),
            "create: {again:?}"
        );
    }
    // Nobody uses it any more: a new creator reclaims the name and gets a fresh ring.
    let seg = create(&name, 2 * CAP);
    assert_eq!(seg.capacity(), 2 * CAP);
    let mut rx = seg.consumer().unwrap();
    assert_eq!(rx.try_read().unwrap_err(), TryReadError::Empty);
    assert_eq!(rx.peer(), PeerState::NotYet);
}

// ---- 5. a scribbler ----

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn scribbler_causes_errors_or_junk_never_a_crash_or_a_hang() {
    let _watchdog = Watchdog::new("scribbler", TEST_LIMIT);
    let seed = std::env::var("SHMESH_SCRIBBLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
    eprintln!("scribbler seed {seed} (rerun with SHMESH_SCRIBBLE_SEED={seed})");
    // Hammering corrupts the ring at once; a drizzle lets many good records through between
    // nudged indices and bad headers (a bad header in the unread span wedges the reader on
    // `Corrupt` for good: as documented, the ring cannot be trusted any more).
    for pause_us in [0u64, 200] {
        let capacity = 1024;
        let name = ShmName::new("scribble");
        let _seg = create(&name, capacity);
        let mut reader = Proc::spawn("scribble_reader", &[&name, &1000]);
        reader.expect("ready");
        let mut writer = Proc::spawn("scribble_writer", &[&name]);
        writer.expect("ready");
        let mut scribbler = Proc::spawn("scribbler", &[&name, &seed, &capacity, &pause_us]);
        scribbler.expect("ready");
        let read = reader.expect("stats");
        reader.wait_success();
        writer.close_stdin();
        let wrote = writer.expect("stats");
        writer.wait_success();
        scribbler.close_stdin();
        let scribbles: u64 = scribbler.expect("stats").parse().unwrap();
        scribbler.wait_success();
        eprintln!(
            "scribbling every {pause_us} µs: reader {read}; writer {wrote}; scribbler {scribbles} \
             writes (seed {seed})"
        );
        assert!(scribbles > 0, "the scribbler never wrote (seed {seed})");
    }
}

// ---- 6. a peer in another pid namespace ----

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn peer_in_another_pid_namespace_is_alive_then_gone() {
    let _watchdog = Watchdog::new("peer_in_another_pid_namespace", TEST_LIMIT);
    if !is_root() {
        eprintln!("skipped: creating a pid namespace with unshare needs root");
        return;
    }
    let unshare = ["-p", "-f", "--kill-child"];
    require_tool(
        "unshare",
        &[&unshare[..], &["true"]].concat(),
        "root (CAP_SYS_ADMIN) for pid namespaces",
    );
    assert!(
        Path::new("/proc/1").exists(),
        "this test assumes a process with pid 1 in our namespace"
    );
    const K: u64 = 6;
    let name = ShmName::new("pidns");
    let seg = create(&name, CAP);
    let mut rx = seg.consumer().unwrap();
    let cmd = child_command(
        Some(("unshare", &unshare)),
        &this_exe(),
        "produce",
        &[&name, &0, &K],
    );
    let mut producer = Proc::spawn_cmd("produce (in its own pid namespace)", cmd);
    let pid: u32 = producer.expect("attached").parse().unwrap();
    producer.expect("wrote");
    assert!(
        pid <= 2,
        "the producer should be pid 1 in its new pid namespace, is {pid}"
    );
    assert_eq!(
        peek_u32(name.as_str(), PRODUCER_PID),
        pid,
        "the slot records the namespaced pid"
    );
    assert_eq!(rx.peer(), PeerState::Alive);
    match seg.producer() {
        Err(AttachError::Busy { pid: busy, .. }) => assert_eq!(busy, pid),
        other => panic!("a second producer must be Busy: {other:?}"),
    }
    recv_all(&mut rx, 0..K / 2, &producer);
    // Kill `unshare`; --kill-child SIGKILLs the producer (pid 1 of its namespace) in turn.
    producer.kill();
    recv_all(&mut rx, K / 2..K, &producer);
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
    assert_eq!(rx.peer(), PeerState::Gone);
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "a process with the dead producer's pid {pid} lives in our namespace, and did not fool us"
    );
}

// ---- 7. permissions ----

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

/// Runs this binary as uid/gid 65534 in the child `role`.
fn spawn_as_nobody(exe: &SharedExe, role: &str, args: &[&dyn Display]) -> Proc {
    let setpriv = ["--reuid", "65534", "--regid", "65534", "--clear-groups"];
    let mut cmd = child_command(Some(("setpriv", &setpriv)), exe.path(), role, args);
    cmd.current_dir("/");
    Proc::spawn_cmd(&format!("{role} (as uid {NOBODY})"), cmd)
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn other_user_cannot_open_a_private_segment() {
    let _watchdog = Watchdog::new("other_user_cannot_open_a_private_segment", TEST_LIMIT);
    let Some(exe) = nobody_exe() else { return };
    let name = ShmName::new("private");
    let _seg = create(&name, CAP);
    assert_eq!(file_mode(&name.path()), 0o600);
    // Even accepting any owner and mode, the kernel refuses.
    let mut child = spawn_as_nobody(&exe, "open_report", &[&name, &"777", &0]);
    assert_eq!(child.expect("open"), "PermissionDenied");
    child.wait_success();
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn squatted_name_is_refused() {
    let _watchdog = Watchdog::new("squatted_name_is_refused", TEST_LIMIT);
    let Some(exe) = nobody_exe() else { return };
    let name = ShmName::new("squatted");
    let mut squatter = spawn_as_nobody(&exe, "squat", &[&name, &"666"]);
    assert_eq!(squatter.expect("created"), NOBODY.to_string());
    for phase in ["while the squatter lives", "after the squatter died"] {
        let opened = SegmentBuilder::new(name.as_str()).open();
        assert_eq!(
            outcome(&opened),
            format!("NotOwner 0 {NOBODY}"),
            "open {phase}"
        );
        let created = SegmentBuilder::new(name.as_str()).capacity(CAP).create();
        assert!(
            matches!(
                created,
                Err(SegmentError::NotOwner { .. } | SegmentError::AlreadyExists { .. })
            ),
            "create {phase} must be refused: {created:?}"
        );
        let meta = fs::metadata(name.path()).expect("the squatter's object is still there");
        assert_eq!(
            meta.uid(),
            NOBODY,
            "{phase}: the object must be the squatter's, untouched"
        );
        squatter.kill();
    }
    // Trusting that owner explicitly is allowed.
    let trusted = SegmentBuilder::new(name.as_str())
        .owner(NOBODY)
        .mode(0o666)
        .open();
    assert_eq!(outcome(&trusted), "ok");
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn mode_too_wide_is_refused_unless_allowed() {
    let _watchdog = Watchdog::new("mode_too_wide_is_refused_unless_allowed", TEST_LIMIT);
    let name = ShmName::new("wide");
    let _seg = SegmentBuilder::new(name.as_str())
        .capacity(CAP)
        .mode(0o666)
        .create()
        .unwrap();
    assert_eq!(file_mode(&name.path()), 0o666);
    let mut strict = Proc::spawn("open_report", &[&name, &"600", &"-"]);
    assert_eq!(strict.expect("open"), "ModeTooWide 600 666");
    strict.wait_success();
    let mut allowing = Proc::spawn("open_report", &[&name, &"666", &"-"]);
    assert_eq!(allowing.expect("open"), "ok");
    allowing.wait_success();
    // The widened mode does let another user in (when it trusts the owner).
    let Some(exe) = nobody_exe() else { return };
    let mut other = spawn_as_nobody(&exe, "open_report", &[&name, &"666", &0]);
    assert_eq!(other.expect("open"), "ok");
    other.wait_success();
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn umask_does_not_change_the_mode() {
    let _watchdog = Watchdog::new("umask_does_not_change_the_mode", TEST_LIMIT);
    for (umask, mode) in [
        ("077", "640"),
        ("000", "600"),
        ("777", "600"),
        ("022", "660"),
    ] {
        let name = ShmName::new("umask");
        let mut creator = Proc::spawn("create_umask", &[&name, &umask, &mode]);
        assert_eq!(
            creator.expect("created"),
            mode,
            "mode {mode} under umask {umask}, as seen by the creator"
        );
        assert_eq!(
            format!("{:o}", file_mode(&name.path())),
            mode,
            "mode {mode} under umask {umask}"
        );
        creator.wait_success();
        assert!(
            !name.path().exists(),
            "the creator unlinks its segment when it ends"
        );
    }
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn symlinked_name_is_refused() {
    let _watchdog = Watchdog::new("symlinked_name_is_refused", TEST_LIMIT);
    let Some(exe) = nobody_exe() else { return };
    let private = ShmName::new("symlink-target");
    let link = ShmName::new("symlink");
    let seg = SegmentBuilder::new(private.as_str())
        .capacity(2 * CAP)
        .create()
        .unwrap();
    // Another user makes our name `link` point at our own private segment.
    let mut squatter = spawn_as_nobody(&exe, "symlink", &[&link, &private]);
    squatter.expect("linked");
    squatter.wait_success();
    let opened = SegmentBuilder::new(link.as_str()).open();
    if let Ok(other) = &opened {
        panic!(
            "open('{link}') followed uid {NOBODY}'s symlink /dev/shm/shmesh.{link} -> \
             /dev/shm/shmesh.{private} and returned our segment '{private}' (capacity {}): a name \
             another user squatted must be refused (open the object with O_NOFOLLOW, as glibc's \
             shm_open does; fs.protected_symlinks is {})",
            other.capacity(),
            fs::read_to_string("/proc/sys/fs/protected_symlinks")
                .unwrap_or_default()
                .trim()
        );
    }
    let _ = SegmentBuilder::new(link.as_str()).capacity(CAP).create();
    assert_eq!(seg.capacity(), 2 * CAP);
    assert!(
        private.path().exists(),
        "the symlink's target must be left alone"
    );
}

// ---- 8. attach refusal and takeover ----

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn second_producer_is_busy_until_the_first_dies_then_takes_over() {
    let _watchdog = Watchdog::new("second_producer_is_busy", TEST_LIMIT);
    const K: u64 = 8;
    let name = ShmName::new("busy");
    let seg = create(&name, CAP);
    let mut rx = seg.consumer().unwrap();
    let mut first = Proc::spawn("produce", &[&name, &0, &K]);
    assert_eq!(first.expect("attached"), first.pid().to_string());
    first.expect("wrote");
    let mut second = Proc::spawn("try_producer", &[&name]);
    assert_eq!(second.expect("attach"), format!("Busy {}", first.pid()));
    second.wait_success();
    match seg.producer() {
        Err(AttachError::Busy { pid, .. }) => assert_eq!(pid, first.pid()),
        other => panic!("a second producer in this process must be Busy too: {other:?}"),
    }
    recv_all(&mut rx, 0..K / 2, &first);
    first.kill();
    recv_all(&mut rx, K / 2..K, &first);
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
    let mut heir = Proc::spawn("produce", &[&name, &K, &K]);
    heir.expect("attached");
    heir.expect("wrote");
    recv_all(&mut rx, K..2 * K, &heir);
    assert_eq!(
        peek_u64(name.as_str(), PRODUCER_ATTACHES),
        2,
        "refused attaches do not count"
    );
    heir.wait_success();
    assert_eq!(rx.read_timeout(DEADLINE).unwrap_err(), ReadError::PeerGone);
}

// ---- races with a reclaim ----

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

/// Runs the calling thread on `cpu` only.
fn pin_to_cpu(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
}

/// Pins the calling thread to one CPU; restores its affinity on drop.
struct PinnedThread(rustix::thread::CpuSet);

impl PinnedThread {
    fn new(cpu: usize) -> Self {
        let before = rustix::thread::sched_getaffinity(None).expect("sched_getaffinity");
        pin_to_cpu(cpu);
        PinnedThread(before)
    }
}

impl Drop for PinnedThread {
    fn drop(&mut self) {
        let _ = rustix::thread::sched_setaffinity(None, &self.0);
    }
}

/// Busy-waits `micros` µs: a random point in the racer's `open`/`create` to stop it at.
fn spin_for(micros: u64) {
    let until = Instant::now() + Duration::from_micros(micros);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// A racer process opens (or creates) `name` while this process reclaims the name of a dead
/// segment and creates it afresh. Whatever the interleaving, the racer must never end up with a
/// segment nobody can find by name (an orphan): for an open, a consumer that waits forever for
/// a producer that attaches elsewhere; for a create, two creators both believing they own the
/// name.
///
/// The window is the few microseconds between the racer's `shm_open` and its "in use" lock. To
/// hit it, the racer is stopped with SIGSTOP at a chosen delay after we tell it to go, we
/// reclaim and create while it is stopped, then let it go on. Each trial's outcome says whether
/// the stop came too early (the racer then finds our new segment) or too late (it already holds
/// the lock, or is done), and the delay moves towards the window. A trial that hits the window
/// with correct code just sees the racer retry and find our segment.
fn race_with_reclaim(test: &'static str, racer_creates: bool, trials: u32) {
    let _watchdog = Watchdog::new(test, TEST_LIMIT);
    // The bytes of a valid segment of capacity CAP whose users are all gone: written as a plain
    // file, nobody holds its "in use" lock, so a create reclaims it.
    let template = {
        let name = ShmName::new("template");
        let _seg = create(&name, CAP);
        fs::read(name.path()).unwrap()
    };
    let name = ShmName::new("race");
    let role = if racer_creates {
        "create_on_command"
    } else {
        "open_on_command"
    };
    // The racer and this thread on two different CPUs, when there are two: then a racer woken
    // by our "go" does not preempt us on our CPU and run to the end before we can stop it.
    let cpus = rustix::thread::sched_getaffinity(None).expect("sched_getaffinity");
    let mut ours = (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| cpus.is_set(c));
    let (racer_cpu, our_cpu) = match (ours.next(), ours.next()) {
        (Some(a), Some(b)) => (a.to_string(), Some(b)),
        _ => ("-".to_owned(), None),
    };
    let mut racer = Proc::spawn(role, &[&name, &racer_cpu]);
    racer.expect("ready");
    let _pinned = our_cpu.map(PinnedThread::new);
    let mut rng = Rng(0x00DD_BA11 ^ u64::from(std::process::id()));
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    let mut delay = 20u64; // µs, adapted to where the racer's window is
    for trial in 0..trials {
        let _ = fs::remove_file(name.path());
        if !racer_creates {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(name.path())
                .and_then(|f| f.write_all_at(&template, 0))
                .expect("write the dead segment");
        }
        racer.send("go");
        spin_for(delay + rng.below(8));
        stop(&racer);
        // Ours has capacity 2 * CAP: the racer tells which segment it got by its capacity.
        let ours = SegmentBuilder::new(name.as_str())
            .capacity(2 * CAP)
            .create();
        resume(&racer);
        let theirs = racer.expect("done");
        let key = format!("ours={} theirs={theirs}", outcome(&ours));
        *outcomes.entry(key).or_default() += 1;
        if theirs.ends_with("orphan=true") {
            racer.fail(format!(
                "trial {trial}: we got {} and the racer got '{theirs}': the racer's {} took an \
                 object that our reclaim had unlinked, and kept it. After taking the \"in use\" \
                 lock, open() and create() must check that the name still refers to their \
                 object (same_object), and retry if not. Outcomes so far: {outcomes:?}",
                outcome(&ours),
                if racer_creates { "create" } else { "open" },
            ));
        }
        let too_early = if racer_creates {
            theirs.starts_with("AlreadyExists")
        } else {
            theirs.starts_with(&format!("ok capacity={}", 2 * CAP))
        };
        delay = if too_early {
            delay + 2
        } else {
            delay.saturating_sub(2)
        };
        drop(ours);
    }
    eprintln!("{test}: {outcomes:?}, final delay {delay} µs");
    racer.wait_success();
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn open_racing_a_reclaim_never_gets_an_orphan() {
    race_with_reclaim("open_racing_a_reclaim_never_gets_an_orphan", false, 1000);
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot run processes or shm_open")]
fn create_racing_a_reclaim_never_both_win() {
    race_with_reclaim("create_racing_a_reclaim_never_both_win", true, 1000);
}
