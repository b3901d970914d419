//! Regions through the `shmesh` API: [`Region`] (bytes) and [`TypedRegion`] (one rkyv value),
//! in one process and between real processes.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `typed_*_rich_*` | rich values (strings, nested vectors, options, enums, maps; up to 100 KiB) round-trip version after version, read in place from the reader's copy |
//! | `typed_publish_rewrites_only_changed_chunks` | publishing a value that changed a little records (and so ships) only a few chunks |
//! | `schema_mismatch_*` | opening a typed region with another type or version is a typed error naming both |
//! | `too_large_*` | a value larger than the region is refused, and nothing is published |
//! | `invalid_bytes_*` | bytes that are not an archive of the type (a writer that wrote raw bytes) are an `Invalid` error, never a panic |
//! | `second_writer_*`, `writer_takeover_*` | one writer at a time, named in the error; a new writer continues the version sequence |
//! | `shape_errors_*` | a missing size and out-of-range parameters name the parameter |
//! | `child_*` | a writer process and a reader process: the reader follows versions with `next()` and checks each snapshot whole |
//!
//! Every region is named under the test's [`Prefix`]; each test ends by checking that nothing
//! of it is left in `/dev/shm`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{check_rich, child_role, rich, say, wait_for_parent, Prefix, Proc, Rich, DEADLINE};
use rkyv::{Archive, Deserialize, Serialize};
use shmesh::region::{
    Region, RegionError, RegionReadError, RegionWriteError, TypedRegion, DEFAULT_TYPED_CAPACITY,
};
use shmesh_ring::{AttachError, SegmentError};

/// Room for the largest rich value (a 100 KiB string and more).
const RICH_CAP: u64 = 256 * 1024;

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
enum Mode {
    Off,
    Manual { gain: f32 },
    Auto(String),
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
struct Settings {
    title: String,
    limits: BTreeMap<String, u64>,
    modes: Vec<Mode>,
    weights: Vec<f64>,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
struct Other {
    x: u64,
}

fn settings(n: u64) -> Settings {
    Settings {
        title: format!("settings #{n} — größe"),
        limits: (0..n % 7).map(|i| (format!("limit-{i}"), i * n)).collect(),
        modes: vec![
            Mode::Off,
            Mode::Manual { gain: n as f32 },
            Mode::Auto("x".repeat(n as usize % 50)),
        ],
        weights: (0..1000).map(|i| (i as f64) * 0.5).collect(),
    }
}

/// Attaches as the writer, retrying while the token looks held by this very process: a child
/// that another test thread is spawning shares this process's open files (and the liveness
/// locks with them) between its fork and its exec, so a writer dropped a moment ago can look
/// alive for that long. Any other error, or a holder that is another process, fails at once.
fn attach<W>(what: &str, mut attach: impl FnMut() -> Result<W, RegionError>) -> W {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match attach() {
            Ok(w) => return w,
            Err(RegionError::Attach(AttachError::Busy { pid, .. }))
                if pid == std::process::id() && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Some((role, a)) = child_role() else {
        return;
    };
    match role.as_str() {
        "write_rich" => role_write_rich(a.s(0), a.get(1)),
        other => panic!("unknown child role '{other}'"),
    }
}

/// Opens the typed region, becomes its writer, says so, publishes `rich(1..=count)`, and waits
/// for the parent before it ends.
fn role_write_rich(name: &str, count: u64) {
    let region = TypedRegion::<Rich>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut writer = attach("writer", || region.writer());
    say("writer", writer.version());
    for seq in 1..=count {
        writer.publish(&rich(seq)).expect("publish");
    }
    say("published", writer.version());
    wait_for_parent();
}

// ---- typed regions ----

#[test]
fn typed_region_round_trips_rich_values_version_after_version() {
    let prefix = Prefix::new("region-rich");
    let name = prefix.name("r");
    let region = TypedRegion::<Rich>::builder(&name)
        .capacity(RICH_CAP)
        .create(&rich(0))
        .expect("create");
    let mut writer = attach("writer", || region.writer());
    let mut reader = TypedRegion::<Rich>::open(&name).expect("open").reader();
    {
        let first = reader.read().expect("read");
        assert_eq!(first.version(), 1);
        check_rich(&first, &rich(0));
    }
    for seq in 1..=120 {
        let version = writer.publish(&rich(seq)).expect("publish");
        assert_eq!(version, seq + 1);
        let got = reader.next(Some(DEADLINE)).expect("next");
        assert_eq!(got.version(), version);
        check_rich(&got, &rich(seq));
        assert_eq!(got.deserialize().expect("deserialize"), rich(seq));
    }
    drop((writer, reader, region));
    prefix.assert_only(&[]);
}

#[test]
fn typed_region_holds_enums_maps_and_vectors() {
    let prefix = Prefix::new("region-settings");
    let name = prefix.name("s");
    let region = TypedRegion::create(&name, &settings(1)).expect("create");
    let mut writer = attach("writer", || region.writer());
    let mut reader = region.reader();
    for n in 2..20 {
        writer.publish(&settings(n)).expect("publish");
        let got = reader.read().expect("read");
        assert_eq!(got.deserialize().expect("deserialize"), settings(n));
        match &got.modes[2] {
            ArchivedMode::Auto(text) => assert_eq!(text.len(), n as usize % 50),
            _ => panic!("mode 2 is not Auto"),
        }
    }
    drop((writer, reader, region));
    prefix.assert_only(&[]);
}

#[test]
fn typed_publish_rewrites_only_changed_chunks() {
    let prefix = Prefix::new("region-diff");
    let name = prefix.name("d");
    let mut value = settings(3);
    let region = TypedRegion::<Settings>::builder(&name)
        .chunk_size(256)
        .create(&value)
        .expect("create");
    let mut writer = attach("writer", || region.writer());
    let before = writer.version();
    value.weights[700] = -1.0; // one f64 inside an 8000-byte vector
    writer.publish(&value).expect("publish");
    let changes = region
        .bytes()
        .reader()
        .changes_since(before)
        .expect("changes");
    // The weight's chunk; the root at the end of the archive is unchanged (same lengths).
    assert_eq!(changes.chunks.len(), 1, "{changes:?}");
    let chunk = changes.chunks[0];
    let (v, bytes) = region.bytes().reader().snapshot().unwrap();
    assert_eq!(v, before + 1);
    let needle = (-1.0f64).to_le_bytes();
    let at = bytes
        .windows(8)
        .position(|w| w == needle)
        .expect("the new weight is in the region");
    assert_eq!(at / 256, chunk);
    // Publishing the same value again changes nothing.
    writer.publish(&value).expect("publish");
    let changes = region
        .bytes()
        .reader()
        .changes_since(before + 1)
        .expect("changes");
    assert_eq!(changes.chunks, Vec::<usize>::new());
    drop((writer, region));
    prefix.assert_only(&[]);
}

#[test]
fn schema_mismatch_names_both_types_and_versions() {
    let prefix = Prefix::new("region-schema");
    let name = prefix.name("m");
    let region = TypedRegion::create(&name, &settings(1)).expect("create");
    match TypedRegion::<Other>::open(&name) {
        Err(RegionError::SchemaMismatch(m)) => {
            assert!(m.ours.text.contains("Other"), "{m:?}");
            assert!(m.theirs.text.contains("Settings"), "{m:?}");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    let e = TypedRegion::<Settings>::builder(&name)
        .version(2)
        .open()
        .expect_err("another version");
    assert!(matches!(e, RegionError::SchemaMismatch(_)), "{e}");
    assert!(e.to_string().contains("v2"), "{e}");
    drop(region);
    prefix.assert_only(&[]);
}

#[test]
fn too_large_values_are_refused_and_nothing_is_published() {
    let prefix = Prefix::new("region-large");
    let name = prefix.name("l");
    let region = TypedRegion::<Vec<u8>>::builder(&name)
        .capacity(1024)
        .create(&vec![1; 100])
        .expect("create");
    let mut writer = attach("writer", || region.writer());
    match writer.publish(&vec![7; 5000]) {
        Err(RegionWriteError::TooLarge { size, max, .. }) => assert_eq!((size, max), (1024, 1008)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(writer.version(), 1);
    let mut reader = region.reader();
    assert_eq!(reader.read().expect("read").len(), 100);
    // The largest value that fits still goes through.
    let fits = vec![9u8; 1000];
    writer.publish(&fits).expect("a value that fits");
    assert_eq!(reader.read().expect("read").len(), 1000);
    // Too large for the default capacity, too.
    let e = TypedRegion::create(
        prefix.name("l2"),
        &vec![0u8; DEFAULT_TYPED_CAPACITY as usize],
    )
    .expect_err("too large");
    assert!(
        matches!(e, RegionError::Write(RegionWriteError::TooLarge { .. })),
        "{e}"
    );
    drop((writer, reader, region));
    prefix.assert_only(&[]);
}

#[test]
fn invalid_bytes_are_an_error_never_a_panic() {
    let prefix = Prefix::new("region-invalid");
    let name = prefix.name("i");
    let region = TypedRegion::create(&name, &settings(1)).expect("create");
    // Another process writes the same region as raw bytes (it may: bytes need no schema).
    let raw = Region::open(&name).expect("open as bytes");
    let mut reader = region.reader();
    let cases: [(&str, Vec<u8>); 3] = [
        ("a length past the end", u64::MAX.to_le_bytes().to_vec()),
        ("a zero length", 0u64.to_le_bytes().to_vec()),
        ("garbage", {
            let mut b = 64u64.to_le_bytes().to_vec();
            b.extend([0xFFu8; 72]);
            b
        }),
    ];
    for (what, bytes) in cases {
        let mut writer = attach("raw writer", || raw.writer());
        let mut scope = writer.write();
        scope.write_at(0, &bytes);
        let version = scope.publish();
        drop(writer);
        match reader.read() {
            Err(RegionReadError::Invalid { version: v, .. }) => assert_eq!(v, version, "{what}"),
            other => panic!(
                "{what}: expected Invalid, got {:?}",
                other.map(|s| s.version())
            ),
        }
    }
    drop((reader, raw, region));
    prefix.assert_only(&[]);
}

// ---- byte regions ----

#[test]
fn second_writer_is_refused_naming_the_first() {
    let prefix = Prefix::new("region-busy");
    let name = prefix.name("b");
    let region = Region::create(&name, 4096).expect("create");
    let writer = attach("writer", || region.writer());
    let e = Region::open(&name)
        .expect("open")
        .writer()
        .expect_err("a second writer");
    match &e {
        RegionError::Attach(AttachError::Busy { pid, .. }) => assert_eq!(*pid, std::process::id()),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(
        e.to_string().contains(&std::process::id().to_string()),
        "{e}"
    );
    drop((writer, region));
    prefix.assert_only(&[]);
}

#[test]
fn writer_takeover_continues_the_version_sequence() {
    let prefix = Prefix::new("region-takeover");
    let name = prefix.name("t");
    let region = Region::create(&name, 10_000).expect("create");
    let mut writer = attach("writer", || region.writer());
    for i in 0..5u8 {
        let mut scope = writer.write();
        scope
            .bytes_mut(1000 * i as usize..1000 * i as usize + 10)
            .fill(i + 1);
        scope.publish();
    }
    drop(writer);
    let reopened = Region::open(&name).expect("open");
    let mut writer = attach("writer", || reopened.writer());
    assert_eq!(writer.version(), 5);
    let mut scope = writer.write();
    scope.write_at(9990, b"tail");
    assert_eq!(scope.publish(), 6);
    let (v, bytes) = region.reader().snapshot().unwrap();
    assert_eq!(v, 6);
    for i in 0..5u8 {
        assert_eq!(bytes[1000 * i as usize], i + 1);
    }
    assert_eq!(&bytes[9990..9994], b"tail");
    drop((writer, region));
    prefix.assert_only(&[]);
}

#[test]
fn shape_errors_name_the_parameter() {
    let prefix = Prefix::new("region-shape");
    let e = Region::builder(prefix.name("a"))
        .create()
        .expect_err("no size");
    assert!(e.to_string().contains("size"), "{e}");
    let e = Region::builder(prefix.name("b"))
        .size(4096)
        .buffers(1)
        .create()
        .expect_err("one buffer");
    match e {
        RegionError::Segment(SegmentError::RegionShape { what, .. }) => assert_eq!(what, "buffers"),
        other => panic!("expected RegionShape, got {other:?}"),
    }
    let e = Region::builder(prefix.name("c"))
        .size(4096)
        .chunk_size(100)
        .create()
        .expect_err("chunk not a power of two");
    assert!(e.to_string().contains("chunk size 100"), "{e}");
    let region = Region::builder(prefix.name("d"))
        .size(4096)
        .buffers(4)
        .create()
        .expect("create");
    let e = Region::builder(prefix.name("d"))
        .buffers(2)
        .open()
        .expect_err("another buffer count");
    assert!(e.to_string().contains("buffers"), "{e}");
    drop(region);
    prefix.assert_only(&[]);
}

// ---- between processes ----

#[test]
fn child_writer_publishes_and_a_reader_follows_every_snapshot_whole() {
    let prefix = Prefix::new("region-child");
    let name = prefix.name("c");
    let region = TypedRegion::<Rich>::builder(&name)
        .capacity(RICH_CAP)
        .create(&rich(0))
        .expect("create");
    let mut reader = region.reader();
    let mut child = Proc::spawn("write_rich", &[&name, &300]);
    assert_eq!(child.expect("writer"), "1");
    let mut last = reader.read().expect("read").version();
    while last < 301 {
        let got = reader
            .next(Some(Duration::from_secs(30)))
            .unwrap_or_else(|e| child.fail(format!("next after {last}: {e}")));
        assert!(got.version() > last, "versions go up");
        last = got.version();
        // Version v holds rich(v - 1): a whole value, never a mix.
        check_rich(&got, &rich(last - 1));
    }
    assert_eq!(child.expect("published"), "301");
    child.close_stdin();
    child.wait_success();
    drop((reader, region));
    prefix.assert_only(&[]);
}
