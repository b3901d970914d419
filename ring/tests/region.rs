//! Regions in shared memory: the segment side of `shmesh_ring::region` (shape parameters through
//! create and open, typed refusals, the writer's liveness token, kind checks), and waiting across
//! processes on the region's futex.
//!
//! Tests that need a second process run this test binary again as the child (see
//! `common/mod.rs` and `shmesh-testkit`): `child_entry` plays the role named in
//! `SHMESH_TEST_CHILD` and does nothing otherwise. Every wait has a deadline, every child is
//! killed when its test ends, every segment name is unique to the test and the process.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `every_shape_*`, `defaults_*` | size, buffers, chunk size and history survive create → open, and bytes published through one handle are read through the other |
//! | `opening_with_*` | an opener asking for another size, buffer count, chunk size, history or kind gets `Mismatch` naming that field |
//! | `invalid_parameters_*` | out-of-range parameters at create are `RegionShape` naming the parameter, and leave no object behind |
//! | `a_second_writer_*` | a second live writer is `Busy`: from this process (same or another `Segment` handle: the token is an OFD lock) and from another process, both ways |
//! | `a_writer_dropped_cleanly_*` | the next writer continues the version sequence and the content, and it is not counted as a takeover |
//! | `kind_mismatches_*` | region endpoints on a ring, ring endpoints on a region: `NotARing` |
//! | `a_reader_in_another_process_*`, `a_writer_in_another_process_*` | `wait_for` sleeps on a *shared* futex: a waker in another process finds the sleeper, and a publish in another process wakes a sleeper here |
//! | `wait_timeout_*` | `WaitTimeout::writer_alive` says whether a writer is attached: never attached, live in this or another process, dropped, killed |
//!
//! Run: `cargo test --release -p shmesh-ring --test region` (a fraction of a second; about
//! 2 s in a debug build).
#![cfg(not(miri))]

mod common;

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::{say, wait_for_parent, wait_until, Proc, ShmName, Watchdog, DEADLINE};
use shmesh_ring::layout::RegionShape;
use shmesh_ring::region::{RegionMemory, WaitTimeout, Writer};
use shmesh_ring::segment::{DEFAULT_REGION_BUFFERS, DEFAULT_REGION_CHUNK, DEFAULT_REGION_HISTORY};
use shmesh_ring::{
    AttachError, Segment, SegmentBuilder, SegmentError, SegmentKind, ShmRegion, WaitStrategy,
};

/// How long one test may run before the watchdog aborts the binary.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// A wait that must time out: the timeout value is irrelevant to what is checked.
const SHORT: Duration = Duration::from_millis(5);

// ---- helpers ----

fn builder(name: &str) -> SegmentBuilder {
    SegmentBuilder::new(name).kind(SegmentKind::Region)
}

fn create(name: &ShmName, size: u64, buffers: usize, chunk: usize, history: usize) -> Segment {
    builder(name.as_str())
        .capacity(size)
        .buffers(buffers)
        .chunk_size(chunk)
        .history(history)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

fn open(name: &str) -> Segment {
    builder(name)
        .open()
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

/// The bytes version `v` of a test sequence writes: 16 bytes saying `v`, at a place that
/// depends on `v` (so that versions overlap, and carrying the previous version forward matters).
fn change(v: u64, size: usize) -> (usize, [u8; 16]) {
    let at = (v as usize).wrapping_mul(7919) % (size - 15);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&v.to_le_bytes());
    bytes[8..].copy_from_slice(&(!v).to_le_bytes());
    (at, bytes)
}

/// The content of version `n` of the test sequence from version `from` (whose content is
/// `base`).
fn model(base: &[u8], from: u64, n: u64) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for v in from + 1..=n {
        let (at, data) = change(v, bytes.len());
        bytes[at..at + 16].copy_from_slice(&data);
    }
    bytes
}

/// Publishes the versions after the writer's latest up to `n`, as [`model`] describes them.
#[track_caller]
fn publish_up_to(w: &mut Writer<ShmRegion>, n: u64) {
    let size = w.shape().size;
    while w.version() < n {
        let v = w.version() + 1;
        let mut scope = w.write();
        let (at, data) = change(v, size);
        scope.write_at(at, &data);
        assert_eq!(scope.publish(), v);
    }
}

fn takeovers(seg: &Segment) -> u64 {
    seg.region_reader()
        .expect("a reader")
        .memory()
        .control()
        .takeovers
        .load(Ordering::Relaxed)
}

#[track_caller]
fn expect_mismatch(
    result: Result<Segment, SegmentError>,
    field: &str,
    expected: &str,
    found: &str,
) {
    match result {
        Err(SegmentError::Mismatch {
            field: f,
            expected: e,
            found: x,
            ..
        }) => assert_eq!(
            (f, e.as_str(), x.as_str()),
            (field, expected, found),
            "the mismatch names the field, what was asked and what the segment holds"
        ),
        Err(other) => panic!("expected a Mismatch of '{field}', got {other:?}"),
        Ok(_) => panic!("expected a Mismatch of '{field}', the open succeeded"),
    }
}

#[track_caller]
fn expect_busy(result: Result<Writer<ShmRegion>, AttachError>, holder: u32) {
    match result {
        Err(AttachError::Busy { pid, .. }) => assert_eq!(pid, holder, "Busy names the holder"),
        Err(other) => panic!("expected Busy, got {other:?}"),
        Ok(_) => panic!("expected Busy, a second writer attached"),
    }
}

#[track_caller]
fn expect_not_a_ring<T: std::fmt::Debug>(
    result: Result<T, AttachError>,
    kind: &str,
    expected: &str,
) {
    match result {
        Err(AttachError::NotARing {
            kind: k,
            expected: e,
            ..
        }) => assert_eq!((k.as_str(), e), (kind, expected)),
        other => panic!("expected NotARing ({kind}, not {expected}), got {other:?}"),
    }
}

/// The scheduler state of thread `tid` of this process (`R`, `S`, ...).
fn thread_state(tid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .unwrap_or_else(|e| panic!("read the stat of thread {tid}: {e}"));
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or('?')
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Some((role, a)) = common::child_role() else {
        return;
    };
    match role.as_str() {
        "try_writer" => role_try_writer(a.s(0)),
        "write" => role_write(a.s(0), a.get::<u64>(1)),
        "wait" => role_wait(a.s(0), a.get::<u64>(1)),
        "publish_on_command" => role_publish_on_command(a.s(0)),
        other => panic!("unknown child role '{other}'"),
    }
}

/// Tries to attach as the region's writer and reports the outcome.
fn role_try_writer(name: &str) {
    let seg = open(name);
    match seg.region_writer() {
        Ok(_) => say("attach", "ok"),
        Err(AttachError::Busy { pid, .. }) => say("attach", format!("Busy {pid}")),
        Err(e) => say("attach", format!("other {e:?}")),
    }
}

/// Attaches as the writer, publishes the test sequence up to version `n`, says so, and holds
/// the writer until the parent closes stdin; then detaches cleanly.
fn role_write(name: &str, n: u64) {
    let seg = open(name);
    let mut w = seg.region_writer().expect("attach writer");
    say("attached", w.version());
    publish_up_to(&mut w, n);
    say("published", w.version());
    wait_for_parent();
    drop(w);
    say("detached", "");
}

/// Waits for version `v` with no timeout, parking on the futex at once.
fn role_wait(name: &str, v: u64) {
    let seg = open(name);
    let r = seg
        .region_reader()
        .expect("a reader")
        .with_wait(WaitStrategy::Futex { spins: 0 });
    say("waiting", v);
    match r.wait_for(v, None) {
        Ok(latest) => say("woke", latest),
        Err(e) => say("error", e),
    }
}

/// Attaches as the writer; publishes one version for each `publish` line on stdin.
fn role_publish_on_command(name: &str) {
    let seg = open(name);
    let mut w = seg.region_writer().expect("attach writer");
    say("ready", w.version());
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        assert_eq!(line.trim(), "publish", "unknown command");
        line.clear();
        let mut scope = w.write();
        scope.write_at(0, &[1]);
        say("published", scope.publish());
    }
}

// ---- shape parameters ----

#[test]
fn every_shape_parameter_survives_create_and_open() {
    // (size, buffers, chunk size, history): the extremes of each parameter, and sizes that
    // are not multiples of the chunk or of a cache line.
    let shapes = [
        (1u64, 2usize, 64usize, 2usize),
        (100, 3, 64, 3),
        (10_000, 4, 256, 10),
        (3 * 4096 + 1, 5, 4096, 7),
        (1 << 20, 8, 1 << 24, 4096),
        (200_000, 2, 128, 4096),
    ];
    for (size, buffers, chunk, history) in shapes {
        let name = ShmName::new("rg-shape");
        let seg = create(&name, size, buffers, chunk, history);
        let shape = RegionShape::new(size, buffers, chunk, history).expect("a valid shape");
        assert_eq!(seg.kind(), SegmentKind::Region);
        assert_eq!(seg.capacity(), size);
        assert_eq!(seg.region_shape(), Some(shape));
        let page = rustix::param::page_size() as u64;
        assert_eq!(seg.total_size(), (shape.end as u64).div_ceil(page) * page);

        // Opened without parameters: everything comes from the segment.
        let any = open(name.as_str());
        assert_eq!(any.region_shape(), Some(shape));
        assert_eq!(any.capacity(), size);
        // Opened asking for exactly what it holds.
        let exact = builder(name.as_str())
            .capacity(size)
            .buffers(buffers)
            .chunk_size(chunk)
            .history(history)
            .open()
            .unwrap_or_else(|e| panic!("open {name} with its own shape: {e}"));
        assert_eq!(exact.region_shape(), Some(shape));

        // Bytes published through the creator's handle are read through the opener's.
        let mut w = seg.region_writer().expect("attach writer");
        assert_eq!(w.shape(), &shape);
        let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8 + 1).collect();
        let mut scope = w.write();
        scope.write_at(0, &bytes);
        assert_eq!(scope.publish(), 1);
        let r = exact.region_reader().expect("a reader");
        assert_eq!(r.shape(), &shape);
        assert!(
            r.snapshot() == Ok((1, bytes.clone())),
            "{shape:?}: version 1"
        );
        let chunks: Vec<usize> = (0..shape.chunks).collect();
        assert_eq!(r.changes_since(0).expect("changes").chunks, chunks);

        // Versions that each change a run of bytes (across a chunk boundary where there is
        // one) and the region's last byte, until every buffer came round twice: each version
        // carries the others forward, and its delta is exactly its chunks.
        let mut model = bytes;
        let size = size as usize;
        for v in 2..=1 + 2 * buffers as u64 {
            let at = (v as usize * 7919) % size;
            let end = (at + 70).min(size);
            let data: Vec<u8> = (at..end).map(|i| (i as u64 ^ v) as u8).collect();
            let mut scope = w.write();
            scope.write_at(at, &data);
            scope.write_at(size - 1, &[v as u8]);
            model[at..end].copy_from_slice(&data);
            model[size - 1] = v as u8;
            assert_eq!(scope.publish(), v);
            assert!(
                r.snapshot() == Ok((v, model.clone())),
                "{shape:?}: version {v}"
            );
            let delta = r.read_changes(v - 1).expect("the changes of one version");
            let mut chunks: Vec<usize> = (at / chunk..=(end - 1) / chunk).collect();
            chunks.push((size - 1) / chunk);
            chunks.dedup();
            assert_eq!(delta.changes.chunks, chunks, "{shape:?}: version {v}");
            let expected: Vec<u8> = chunks
                .iter()
                .flat_map(|&c| {
                    model[c * chunk..((c + 1) * chunk).min(size)]
                        .iter()
                        .copied()
                })
                .collect();
            assert!(
                delta.bytes == expected,
                "{shape:?}: the bytes of version {v}'s chunks"
            );
        }
    }
}

#[test]
fn defaults_apply_when_only_the_size_is_given() {
    let name = ShmName::new("rg-defaults");
    let seg = builder(name.as_str())
        .capacity(5000)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    let expected = RegionShape::new(
        5000,
        DEFAULT_REGION_BUFFERS,
        DEFAULT_REGION_CHUNK,
        DEFAULT_REGION_HISTORY,
    )
    .expect("the defaults are valid");
    assert_eq!(seg.region_shape(), Some(expected));
    assert_eq!(open(name.as_str()).region_shape(), Some(expected));
}

#[test]
fn opening_with_another_parameter_is_a_mismatch_naming_it() {
    let name = ShmName::new("rg-mismatch");
    let _seg = create(&name, 10_000, 4, 256, 10);
    let n = name.as_str();
    expect_mismatch(
        builder(n).capacity(10_001).open(),
        "region size",
        "10001",
        "10000",
    );
    expect_mismatch(builder(n).buffers(3).open(), "buffers", "3", "4");
    expect_mismatch(
        builder(n).chunk_size(512).open(),
        "chunk size",
        "512",
        "256",
    );
    expect_mismatch(builder(n).history(11).open(), "history", "11", "10");
    // The other parameters right, one wrong: still named.
    expect_mismatch(
        builder(n)
            .capacity(10_000)
            .buffers(4)
            .chunk_size(256)
            .history(64)
            .open(),
        "history",
        "64",
        "10",
    );
    // A region is not a ring, nor a ring a region.
    expect_mismatch(SegmentBuilder::new(n).open(), "kind", "spsc ring", "region");
    expect_mismatch(
        SegmentBuilder::new(n).any_ring().open(),
        "kind",
        "a ring of any kind",
        "region",
    );
    let ring = ShmName::new("rg-mismatch-ring");
    let _ring = SegmentBuilder::new(ring.as_str())
        .capacity(4096)
        .create()
        .expect("create an SPSC ring");
    expect_mismatch(builder(ring.as_str()).open(), "kind", "region", "spsc ring");
}

#[test]
fn invalid_parameters_at_create_name_the_parameter() {
    let tib = 1u64 << 40;
    // (size, buffers, chunk, history, the parameter named)
    let cases: [(u64, usize, usize, usize, &str); 11] = [
        (0, 3, 4096, 64, "size"),
        (tib + 1, 3, 4096, 64, "size"),
        (4096, 1, 4096, 64, "buffers"),
        (4096, 9, 4096, 64, "buffers"),
        (4096, 0, 4096, 64, "buffers"),
        (4096, 3, 32, 64, "chunk size"),
        (4096, 3, 100, 64, "chunk size"),
        (4096, 3, 1 << 25, 64, "chunk size"),
        (4096, 3, 0, 64, "chunk size"),
        (4096, 4, 4096, 3, "history"),
        (4096, 3, 4096, 4097, "history"),
    ];
    for (size, buffers, chunk, history, what) in cases {
        let name = ShmName::new("rg-invalid");
        let result = builder(name.as_str())
            .capacity(size)
            .buffers(buffers)
            .chunk_size(chunk)
            .history(history)
            .create();
        match &result {
            Err(SegmentError::RegionShape { what: w, found, .. }) => {
                let value = match what {
                    "size" => size,
                    "buffers" => buffers as u64,
                    "chunk size" => chunk as u64,
                    _ => history as u64,
                };
                assert_eq!((*w, *found), (what, value), "the parameter and its value");
                let message = result.as_ref().unwrap_err().to_string();
                assert!(
                    message.contains(what) && message.contains("use "),
                    "the message names the parameter and what to use: {message}"
                );
            }
            other => panic!(
                "({size}, {buffers}, {chunk}, {history}): expected RegionShape naming \
                 '{what}', got {other:?}"
            ),
        }
        assert!(
            !name.path().exists(),
            "a refused create leaves no object behind"
        );
    }
    // No size at all is a size of 0.
    let name = ShmName::new("rg-invalid");
    assert!(matches!(
        builder(name.as_str()).create(),
        Err(SegmentError::RegionShape {
            what: "size",
            found: 0,
            ..
        })
    ));
}

// ---- the writer's token ----

#[test]
fn a_second_writer_in_this_process_is_busy() {
    let name = ShmName::new("rg-busy-here");
    let seg = create(&name, 4096, 3, 256, 8);
    let me = std::process::id();
    let mut w = seg.region_writer().expect("the first writer");
    // Through the same handle: each writer takes its token through its own open file
    // description, so the second one conflicts with the first.
    expect_busy(seg.region_writer(), me);
    // Through another handle of this process.
    let other = open(name.as_str());
    expect_busy(other.region_writer(), me);
    publish_up_to(&mut w, 3);
    // The refusals changed nothing.
    assert_eq!(takeovers(&seg), 0);
    assert_eq!(other.region_reader().unwrap().version(), 3);
    drop(w);
    // A child process another test of this binary forks at this moment inherits our open file
    // descriptions, the token's lock with them, until it execs: the token may stay taken for
    // that instant. Retry briefly (a known limit of OFD-lock tokens with fork, noted open).
    let start = std::time::Instant::now();
    let w = loop {
        match other.region_writer() {
            Ok(w) => break w,
            Err(e) if start.elapsed() < std::time::Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("a writer after the first detached: {e:?}"),
        }
    };
    assert_eq!(w.version(), 3);
    expect_busy(seg.region_writer(), me);
}

#[test]
fn a_second_writer_in_another_process_is_busy() {
    let _dog = Watchdog::new("a_second_writer_in_another_process_is_busy", TEST_LIMIT);
    let name = ShmName::new("rg-busy-there");
    let seg = create(&name, 4096, 3, 256, 8);

    // Our writer is live: another process is refused, and told our pid.
    let w = seg.region_writer().expect("attach writer");
    let mut child = Proc::spawn("try_writer", &[&name]);
    assert_eq!(
        child.expect("attach"),
        format!("Busy {}", std::process::id())
    );
    child.wait_success();
    drop(w);

    // The other way round: a writer in another process holds the token.
    let mut holder = Proc::spawn("write", &[&name, &5]);
    assert_eq!(holder.expect("attached"), "0");
    assert_eq!(holder.expect("published"), "5");
    expect_busy(seg.region_writer(), holder.pid());
    let mut child = Proc::spawn("try_writer", &[&name]);
    assert_eq!(child.expect("attach"), format!("Busy {}", holder.pid()));
    child.wait_success();
    holder.close_stdin();
    holder.expect("detached");
    holder.wait_success();

    // It detached cleanly: we continue where it stopped, and it is no takeover.
    let mut w = seg
        .region_writer()
        .expect("attach after the holder detached");
    assert_eq!(w.version(), 5);
    publish_up_to(&mut w, 6);
    assert_eq!(takeovers(&seg), 0);
    let r = seg.region_reader().unwrap();
    assert_eq!(r.snapshot(), Ok((6, model(&[0; 4096], 0, 6))));
}

#[test]
fn a_writer_dropped_cleanly_is_continued_without_a_takeover() {
    let name = ShmName::new("rg-clean");
    let (size, buffers) = (3000usize, 3usize);
    let seg = create(&name, size as u64, buffers, 64, 16);
    let other = open(name.as_str());
    let r = other.region_reader().unwrap();
    let zero = vec![0u8; size];
    // Each writer publishes a few versions and detaches; the next one attaches through the
    // other handle. Counts that are not multiples of the buffer count leave every buffer
    // holding another version when the next writer starts.
    let mut n = 0;
    for (round, count) in [5u64, 1, 2, 7, 3].into_iter().enumerate() {
        let handle = if round % 2 == 0 { &seg } else { &other };
        let mut w = handle.region_writer().expect("attach writer");
        assert_eq!(w.version(), n, "the new writer continues the sequence");
        // Its first scope starts from the latest version's bytes.
        let scope = w.write();
        let mut bytes = vec![0u8; size];
        scope.read_at(0, &mut bytes);
        assert_eq!(
            bytes,
            model(&zero, 0, n),
            "the scope starts from version {n}"
        );
        drop(scope);
        publish_up_to(&mut w, n + count);
        n += count;
        assert_eq!(r.snapshot(), Ok((n, model(&zero, 0, n))));
        drop(w);
    }
    let ctl = r.memory().control();
    assert_eq!(ctl.takeovers.load(Ordering::Relaxed), 0);
    assert_eq!(ctl.publishes.load(Ordering::Relaxed), n);
    // The history spans the writers.
    let changes = r.changes_since(n - 4).expect("changes");
    let mut chunks: Vec<usize> = (n - 3..=n)
        .flat_map(|v| {
            let (at, _) = change(v, size);
            [at / 64, (at + 15) / 64]
        })
        .collect();
    chunks.sort_unstable();
    chunks.dedup();
    assert_eq!(changes.chunks, chunks);
}

// ---- kinds ----

#[test]
fn kind_mismatches_are_not_a_ring() {
    let ring = ShmName::new("rg-kind-spsc");
    let spsc = SegmentBuilder::new(ring.as_str())
        .capacity(4096)
        .create()
        .expect("create an SPSC ring");
    expect_not_a_ring(spsc.region_reader(), "spsc ring", "a region");
    expect_not_a_ring(spsc.region_writer(), "spsc ring", "a region");
    assert_eq!(spsc.region_shape(), None);

    let mpsc_name = ShmName::new("rg-kind-mpsc");
    let mpsc = SegmentBuilder::new(mpsc_name.as_str())
        .kind(SegmentKind::MpscRing)
        .capacity(4096)
        .create()
        .expect("create an MPSC ring");
    expect_not_a_ring(mpsc.region_reader(), "mpsc ring", "a region");
    let bc_name = ShmName::new("rg-kind-bc");
    let bc = SegmentBuilder::new(bc_name.as_str())
        .kind(SegmentKind::BroadcastRing)
        .capacity(4096)
        .create()
        .expect("create a broadcast ring");
    expect_not_a_ring(bc.region_writer(), "broadcast ring", "a region");

    let name = ShmName::new("rg-kind-region");
    let region = create(&name, 4096, 3, 4096, 8);
    expect_not_a_ring(region.producer(), "region", "an SPSC ring");
    expect_not_a_ring(region.consumer(), "region", "an SPSC ring");
    assert!(matches!(
        region.mpsc_writer(),
        Err(AttachError::NotARing { .. })
    ));
    assert!(matches!(
        region.mpsc_consumer(),
        Err(AttachError::NotARing { .. })
    ));
    assert!(matches!(
        region.broadcast_writer(),
        Err(AttachError::NotARing { .. })
    ));
    assert!(matches!(
        region.broadcast_reader(shmesh_ring::broadcast::Start::Latest),
        Err(AttachError::NotARing { .. })
    ));
    // The refused ring endpoints took no token: the region's writer still attaches.
    region.region_writer().expect("attach the region's writer");
}

// ---- waiting across processes ----

/// A reader in another process parks in `wait_for` with no timeout; a futex wake issued from
/// this process on the region's parked word must find it (it would not if the reader slept on a
/// private futex: its slices would end it, but no wake from here would ever count it); then a
/// publish here must end its wait.
#[test]
fn a_reader_in_another_process_sleeps_on_a_shared_futex() {
    let _dog = Watchdog::new(
        "a_reader_in_another_process_sleeps_on_a_shared_futex",
        TEST_LIMIT,
    );
    use rustix::thread::futex;
    let name = ShmName::new("rg-wait-child");
    let seg = create(&name, 256, 2, 64, 4);
    let mut w = seg.region_writer().expect("attach writer");
    let r = seg.region_reader().unwrap();
    let ctl = r.memory().control();
    let mut child = Proc::spawn("wait", &[&name, &1]);
    assert_eq!(child.expect("waiting"), "1");
    wait_until("the reader parks", || {
        ctl.parked.load(Ordering::Acquire) == 1
    });
    // The reader re-parks after each slice (and after our wake-ups): keep waking until one
    // wake-up found it asleep. A reader on a private futex is never found: the wait below
    // fails at its deadline.
    let deadline = Instant::now() + DEADLINE;
    let mut found = 0;
    while found == 0 && Instant::now() < deadline {
        found =
            futex::wake(&ctl.parked, futex::Flags::empty(), i32::MAX as u32).expect("futex wake");
        if found == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    if found != 1 {
        child.fail(format!(
            "no shared futex wake-up from another process found the parked reader within \
             {DEADLINE:?} ({found} woken): it does not sleep on a shared futex"
        ));
    }
    // A spurious wake-up is not a version: the reader still waits.
    wait_until("the reader parks again", || {
        ctl.parked.load(Ordering::Acquire) == 1
    });
    let mut scope = w.write();
    scope.write_at(0, b"go");
    assert_eq!(scope.publish(), 1);
    assert_eq!(child.expect("woke"), "1");
    child.wait_success();
}

/// A thread of this process sleeps on the region's parked word with a shared futex and no
/// timeout short of the deadline; a writer in another process publishes. The sleeper must be
/// woken by that publish (a writer waking a private futex would never reach it).
#[test]
fn a_writer_in_another_process_wakes_a_shared_futex_sleeper() {
    let _dog = Watchdog::new(
        "a_writer_in_another_process_wakes_a_shared_futex_sleeper",
        TEST_LIMIT,
    );
    use rustix::thread::futex;
    let name = ShmName::new("rg-wake-child");
    let seg = create(&name, 256, 2, 64, 4);
    let mut child = Proc::spawn("publish_on_command", &[&name]);
    assert_eq!(child.expect("ready"), "0");
    let r = seg.region_reader().unwrap();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let sleeper = {
        let seg = seg.clone();
        thread::spawn(move || {
            let r = seg.region_reader().unwrap();
            let ctl = r.memory().control();
            tid_tx
                .send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            // What `Reader::wait_for` does before it sleeps, with one long sleep.
            ctl.parked.store(1, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
            assert_eq!(ctl.latest.load(Ordering::Acquire), 0);
            let timeout = rustix::time::Timespec {
                tv_sec: DEADLINE.as_secs() as i64,
                tv_nsec: 0,
            };
            futex::wait(&ctl.parked, futex::Flags::empty(), 1, Some(&timeout))
        })
    };
    let tid = tid_rx.recv_timeout(DEADLINE).expect("the sleeper's tid");
    wait_until("the sleeper thread sleeps", || {
        r.memory().control().parked.load(Ordering::Acquire) == 1 && thread_state(tid) == 'S'
    });
    child.send("publish");
    assert_eq!(child.expect("published"), "1");
    let woke = sleeper.join().expect("the sleeper thread");
    assert_eq!(
        woke,
        Ok(()),
        "the publish in another process must wake the sleeper (ETIMEDOUT: it never did)"
    );
    let ctl = r.memory().control();
    assert_eq!(
        ctl.parked.load(Ordering::Acquire),
        0,
        "the writer took the flag"
    );
    assert_eq!(ctl.notify.load(Ordering::Acquire), 1);
    child.wait_success();
}

// ---- WaitTimeout::writer_alive ----

#[track_caller]
fn timed_out(seg: &Segment, wanted: u64) -> WaitTimeout {
    let r = seg.region_reader().unwrap();
    let latest = r.version();
    let e = r
        .wait_for(wanted, Some(SHORT))
        .expect_err("nothing publishes: the wait times out");
    assert_eq!((e.wanted, e.latest), (wanted, latest));
    e
}

#[test]
fn wait_timeout_says_whether_a_writer_is_alive() {
    let _dog = Watchdog::new("wait_timeout_says_whether_a_writer_is_alive", TEST_LIMIT);
    let name = ShmName::new("rg-alive");
    let seg = create(&name, 256, 3, 64, 8);
    let other = open(name.as_str());
    // A reader made before any writer attached, asked again at the end.
    let early = other.region_reader().unwrap();

    let e = timed_out(&other, 1);
    assert!(!e.writer_alive, "no writer ever attached");
    assert!(
        e.to_string().contains("no writer is attached"),
        "the message says so: {e}"
    );

    // A writer in this process, through another handle.
    let mut w = seg.region_writer().expect("attach writer");
    publish_up_to(&mut w, 2);
    let e = timed_out(&other, 3);
    assert!(e.writer_alive, "our writer is attached");
    assert!(
        timed_out(&seg, 3).writer_alive,
        "our writer is attached, seen through the writer's own segment handle"
    );
    assert!(!e.to_string().contains("no writer"), "{e}");
    // The writer's own memory says it is alive too.
    assert!(w.memory().writer_alive());
    drop(w);
    assert!(!timed_out(&other, 3).writer_alive, "the writer detached");

    // A writer in another process: alive, then detached cleanly.
    let mut child = Proc::spawn("write", &[&name, &4]);
    assert_eq!(child.expect("attached"), "2");
    assert_eq!(child.expect("published"), "4");
    assert!(timed_out(&other, 5).writer_alive, "the child's writer");
    child.close_stdin();
    child.expect("detached");
    child.wait_success();
    assert!(!timed_out(&other, 5).writer_alive, "the child detached");

    // A writer in another process, killed: its token went with it, though its slot still says
    // attached.
    let mut child = Proc::spawn("write", &[&name, &6]);
    assert_eq!(child.expect("attached"), "4");
    assert_eq!(child.expect("published"), "6");
    assert!(timed_out(&other, 7).writer_alive, "the child's writer");
    child.kill();
    assert!(!timed_out(&other, 7).writer_alive, "the child was killed");
    // And the next writer is a takeover.
    let w = seg.region_writer().expect("take over");
    assert_eq!(w.version(), 6);
    assert_eq!(takeovers(&seg), 1);
    assert!(timed_out(&other, 7).writer_alive);
    let e = early
        .wait_for(7, Some(SHORT))
        .expect_err("nothing publishes");
    assert!(e.writer_alive, "a reader older than the writer sees it too");
    drop(w);
}
