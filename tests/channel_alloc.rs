//! The steady state of a channel allocates nothing: after a warm-up, sending and receiving
//! (and reading every field of what was received) makes no heap allocation, in every access
//! mode.
//!
//! A counting global allocator wraps the system allocator. It counts only on threads that
//! asked for it ([`Counting::measure`]), so the test harness's own threads (which print results
//! and start other tests) cannot pollute the count; the channel itself runs no thread of its
//! own, so the thread that sends and receives sees every allocation the channel makes.
//! The tests of this file also take a lock, so that they run one at a time.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use common::{ChannelName, Watchdog, DEADLINE, TEST_LIMIT};
use rkyv::{Archive, Serialize};
use shmesh::channel::{Access, Channel, Receiver, Sender};

/// The system allocator, counting the allocations of the threads that measure.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's allocations are counted. `const`-initialized and without a
    /// destructor, so reading it allocates nothing and works at any time.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

impl Counting {
    fn note() {
        if MEASURING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs `f` on this thread and returns its result and the number of heap allocations
    /// (`alloc`, `alloc_zeroed` and `realloc` calls) it made.
    fn measure<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        MEASURING.with(|m| m.set(true));
        let result = f();
        MEASURING.with(|m| m.set(false));
        (result, ALLOCATIONS.load(Ordering::Relaxed) - before)
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so each
// upholds `GlobalAlloc`'s contract exactly as `System` does; the counting around them touches
// only an atomic and a const-initialized thread-local `Cell`, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Counting::note();
        // SAFETY: the caller guarantees `layout` has a non-zero size, as `System.alloc` needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Counting::note();
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Counting::note();
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator (that is, by
        // `System`) with `layout`, and that `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator (by `System`)
        // with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A nested struct.
#[derive(Archive, Serialize, Debug, Clone)]
struct Header {
    id: u64,
    source: String,
    flags: u32,
}

/// A message with a string, a vector and a nested struct.
#[derive(Archive, Serialize, Debug, Clone)]
struct Sample {
    seq: u64,
    label: String,
    values: Vec<u32>,
    header: Header,
}

/// `n` different messages, from a few bytes to a few KiB.
fn samples(n: u64) -> Vec<Sample> {
    (0..n)
        .map(|i| Sample {
            seq: i,
            label: "grüße 🚀 ".repeat(i as usize % 13),
            values: (0..(i * 37 % 700) as u32).collect(),
            header: Header {
                id: !i,
                source: format!("sensor-{i}"),
                flags: i as u32 * 3,
            },
        })
        .collect()
}

/// Reads every field of a received message and checks it against the original, allocating
/// nothing.
#[inline(never)]
fn read_all(got: &ArchivedSample, want: &Sample) -> u64 {
    assert_eq!(got.seq, want.seq);
    assert!(got.label == *want.label);
    assert!(got.values.as_slice() == want.values.as_slice());
    assert_eq!(got.header.id, want.header.id);
    assert!(got.header.source == *want.header.source);
    assert_eq!(got.header.flags, want.header.flags);
    // Wrapping: `header.id` is `!seq`, near u64::MAX.
    let mut sum = got.seq.to_native() ^ got.header.id.to_native();
    sum = sum.wrapping_add(got.label.len() as u64 + u64::from(got.header.flags.to_native()));
    sum = sum.wrapping_add(got.header.source.bytes().map(u64::from).sum::<u64>());
    sum = sum.wrapping_add(
        got.values
            .iter()
            .map(|v| u64::from(v.to_native()))
            .sum::<u64>(),
    );
    black_box(sum)
}

/// Sends `messages[i % len]` and receives it, `rounds` times.
fn exchange(
    tx: &mut Sender<Sample>,
    rx: &mut Receiver<Sample>,
    messages: &[Sample],
    rounds: usize,
) -> u64 {
    let mut sum = 0;
    for i in 0..rounds {
        let want = &messages[i % messages.len()];
        if let Err(e) = tx.send_timeout(want, DEADLINE) {
            panic!("send {i}: {e}");
        }
        match rx.recv_timeout(DEADLINE) {
            Ok(got) => sum += read_all(&got, want),
            Err(e) => panic!("recv {i}: {e}"),
        }
    }
    sum
}

fn steady_state_allocates_nothing(label: &str, access: Access) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = Watchdog::new("steady_state_allocates_nothing", TEST_LIMIT);
    let name = ChannelName::new("alloc");
    // Small enough that the 10 000 messages wrap around the ring many times.
    let channel = Channel::<Sample>::builder(name.as_str())
        .capacity(64 * 1024)
        .create()
        .unwrap();
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver_with(access).unwrap();
    let messages = samples(64);

    // Warm-up: every message once or more, so that the sender's scratch arena and the
    // receiver's private buffer (untrusted mode) have grown to their largest.
    exchange(&mut tx, &mut rx, &messages, 300);
    let (_, allocations) = Counting::measure(|| exchange(&mut tx, &mut rx, &messages, 10_000));
    assert_eq!(
        allocations, 0,
        "{label}: 10 000 send + recv pairs after a warm-up made {allocations} heap allocations"
    );
}

#[test]
fn steady_state_allocates_nothing_validated() {
    steady_state_allocates_nothing("validated", Access::validated());
}

#[test]
fn steady_state_allocates_nothing_untrusted() {
    steady_state_allocates_nothing("untrusted", Access::untrusted());
}

#[test]
fn steady_state_allocates_nothing_trusted() {
    // SAFETY: the only sender of this channel is the `Sender<Sample>` of this test.
    steady_state_allocates_nothing("trusted", unsafe { Access::trusted() });
}

/// Slice loans allocate nothing either.
#[test]
fn loans_allocate_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = Watchdog::new("loans_allocate_nothing", TEST_LIMIT);
    let name = ChannelName::new("alloc-loan");
    let channel = Channel::<Vec<u8>>::builder(name.as_str())
        .capacity(64 * 1024)
        .create()
        .unwrap();
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let mut round = |i: usize| {
        let n = i * 131 % 3000;
        let mut loan = tx.loan_slice_timeout(n, DEADLINE).expect("loan");
        loan.fill(i as u8);
        loan.send();
        let got = rx.recv_timeout(DEADLINE).expect("recv");
        assert_eq!(got.len(), n);
        assert!(got.iter().all(|&b| b == i as u8));
    };
    for i in 0..300 {
        round(i);
    }
    let ((), allocations) = Counting::measure(|| (0..10_000).for_each(&mut round));
    assert_eq!(
        allocations, 0,
        "10 000 slice loans made {allocations} allocations"
    );
}

/// The counter works: building message values allocates, and is counted.
#[test]
fn the_counter_sees_allocations() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (messages, allocations) = Counting::measure(|| samples(10));
    // Each message: a label (except the first), a values vector (except the first) and a
    // source string.
    assert!(
        allocations >= 10,
        "building 10 messages made only {allocations} counted allocations"
    );
    let (copy, allocations) = Counting::measure(|| black_box(messages[5].clone()));
    assert_eq!(
        allocations, 3,
        "a clone of a message with a label, values and a source allocates three times"
    );
    // Another thread's allocations are not counted here (spawning it allocates a little on
    // this thread, far less than the 1000 allocations it makes).
    let ((), allocations) = Counting::measure(|| {
        std::thread::scope(|s| {
            s.spawn(|| (0..1000).for_each(|i| drop(black_box(Box::new(i)))));
        })
    });
    assert!(
        allocations < 100,
        "another thread's 1000 allocations were counted on this one: {allocations}"
    );
    drop(copy);
}

/// Publishes `messages[i % len]` to a typed region and reads it back, `rounds` times.
fn region_rounds(
    writer: &mut shmesh::region::TypedWriter<Sample>,
    reader: &mut shmesh::region::TypedReader<Sample>,
    messages: &[Sample],
    rounds: usize,
) -> u64 {
    let mut sum = 0;
    for i in 0..rounds {
        let want = &messages[i % messages.len()];
        let version = writer
            .publish(want)
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
        match reader.read() {
            Ok(got) => {
                assert_eq!(got.version(), version);
                sum += read_all(&got, want);
            }
            Err(e) => panic!("read {i}: {e}"),
        }
    }
    sum
}

#[test]
fn typed_region_publish_and_read_allocate_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = Watchdog::new("typed_region_publish_and_read_allocate_nothing", TEST_LIMIT);
    let name = ChannelName::new("alloc-region");
    let messages = samples(64);
    let region = shmesh::TypedRegion::<Sample>::builder(name.as_str())
        .capacity(64 * 1024)
        .create(&messages[0])
        .unwrap();
    let mut writer = region.writer().unwrap();
    let mut reader = region.reader();
    // Warm-up: the writer's scratch and the reader's copy grow to the largest sample.
    region_rounds(&mut writer, &mut reader, &messages, 300);
    let (_, allocations) =
        Counting::measure(|| region_rounds(&mut writer, &mut reader, &messages, 5_000));
    assert_eq!(
        allocations, 0,
        "5 000 publish + read pairs after a warm-up made {allocations} heap allocations"
    );
}
