//! Zero heap allocations per message on the fast path: a counting global allocator watches
//! claim/commit/read/release (single and batch, try and blocking) on heap and shared memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use shmesh_ring::{Consumer, Producer, RingMemory};

struct Counting;

thread_local! {
    /// Allocations made by this thread (tests run in parallel threads).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALLOCS.with(|c| c.set(c.get() + 1));
}

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn messages<M: RingMemory>(tx: &mut Producer<M>, rx: &mut Consumer<M>, n: u64) -> u64 {
    let mut sum = 0u64;
    for seq in 0..n {
        let mut g = tx.try_claim(64).unwrap();
        g[..8].copy_from_slice(&seq.to_le_bytes());
        g.commit(64);
        let mut g = tx.claim(100).unwrap();
        g.fill(1);
        g.commit(100);
        {
            let mut batch = tx.batch();
            for _ in 0..3 {
                let mut g = batch.try_claim(24).unwrap();
                g.fill(2);
                g.commit(24);
            }
        }
        sum += u64::from(rx.try_read().unwrap()[0]);
        sum += u64::from(rx.read().unwrap()[0]);
        let mut batch = rx.batch();
        for _ in 0..3 {
            sum += u64::from(batch.try_read().unwrap()[0]);
        }
    }
    sum
}

fn no_allocations<M: RingMemory>(mut tx: Producer<M>, mut rx: Consumer<M>) {
    let n = if cfg!(miri) { 100 } else { 10_000 };
    messages(&mut tx, &mut rx, n / 10); // warm up (and wrap the ring many times)
    let before = allocations();
    let sum = messages(&mut tx, &mut rx, n);
    let after = allocations();
    assert!(sum > 0);
    assert_eq!(
        after - before,
        0,
        "the fast path allocated {} times",
        after - before
    );
}

#[test]
fn heap_ring_fast_path_does_not_allocate() {
    let (tx, rx) = shmesh_ring::spsc::channel(4096).unwrap();
    no_allocations(tx, rx);
}

#[test]
#[cfg_attr(miri, ignore = "miri cannot use POSIX shared memory")]
fn shm_ring_fast_path_does_not_allocate() {
    let name = format!("alloc-test.{}", std::process::id());
    let seg = shmesh_ring::SegmentBuilder::new(&name)
        .capacity(4096)
        .create()
        .unwrap();
    let tx = seg.producer().unwrap();
    let rx = shmesh_ring::SegmentBuilder::new(&name)
        .open()
        .unwrap()
        .consumer()
        .unwrap();
    no_allocations(tx, rx);
}

/// Writes (small spans and a whole-region diff), publishes and reads `n` versions.
fn versions<M: shmesh_ring::region::RegionMemory>(
    w: &mut shmesh_ring::region::Writer<M>,
    r: &shmesh_ring::region::Reader<M>,
    n: u64,
) -> u64 {
    let mut out = [0u8; 256];
    let mut state = [0u8; 256];
    let mut sum = 0;
    for seq in 0..n {
        let mut scope = w.write();
        scope.write_at((seq % 200) as usize, &seq.to_le_bytes());
        scope.write_at(250, &[seq as u8]);
        scope.publish();
        state[(seq % 256) as usize] = seq as u8;
        let mut scope = w.write();
        scope.write_diff(0, &state);
        scope.publish();
        drop(w.write()); // an aborted scope
        sum += r.read_into(&mut out).unwrap();
        sum += u64::from(out[250]);
    }
    sum
}

#[test]
fn region_writes_and_reads_do_not_allocate() {
    use shmesh_ring::region::{HeapRegion, Reader, Writer};
    let mem = HeapRegion::new(256, 3, 64, 8).unwrap();
    let mut w = Writer::new(mem.clone()).unwrap();
    let r = Reader::new(mem);
    let n = if cfg!(miri) { 50 } else { 10_000 };
    versions(&mut w, &r, 10); // warm up: the writer's span lists grow once
    let before = allocations();
    let sum = versions(&mut w, &r, n);
    let after = allocations();
    assert!(sum > 0);
    assert_eq!(
        after - before,
        0,
        "{n} versions allocated {} times",
        after - before
    );
}
