//! criterion benches of the in-process SPSC ring (heap memory): throughput by record size,
//! single commit vs batch commit, and a two-thread stream.
//!
//! `cargo bench --bench ring`. Cross-process figures come from `shmesh bench`.

use std::hint::black_box;
use std::thread;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shmesh_ring::{spsc, WaitStrategy};

const RING: u64 = 1 << 20;
const BURST: usize = 64;

/// Writes a burst of records one commit each, then reads them one release each.
fn single(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring/single");
    for size in [8usize, 64, 512, 4096] {
        group.throughput(Throughput::Bytes((size * BURST) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            let (mut tx, mut rx) = spsc::channel(RING).unwrap();
            b.iter(|| {
                for i in 0..BURST {
                    let mut g = tx.try_claim(size).unwrap();
                    g.fill(i as u8);
                    g.commit(size);
                }
                let mut sum = 0u64;
                for _ in 0..BURST {
                    let r = rx.try_read().unwrap();
                    sum += r.chunks(64).map(|c| u64::from(c[0])).sum::<u64>();
                }
                black_box(sum)
            });
        });
    }
    group.finish();
}

/// The same burst with one index store on each side.
fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring/batch");
    for size in [8usize, 64, 512, 4096] {
        group.throughput(Throughput::Bytes((size * BURST) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            let (mut tx, mut rx) = spsc::channel(RING).unwrap();
            b.iter(|| {
                {
                    let mut batch = tx.batch();
                    for i in 0..BURST {
                        let mut g = batch.try_claim(size).unwrap();
                        g.fill(i as u8);
                        g.commit(size);
                    }
                }
                let mut sum = 0u64;
                let mut batch = rx.batch();
                for _ in 0..BURST {
                    let r = batch.try_read().unwrap();
                    sum += r.chunks(64).map(|c| u64::from(c[0])).sum::<u64>();
                }
                black_box(sum)
            });
        });
    }
    group.finish();
}

/// A producer thread streaming to a consumer thread (the two vCPUs of this machine may be
/// "near" or "far": compare with `shmesh bench` figures and their `cl_ns`).
fn stream(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring/stream");
    const MESSAGES: u64 = 10_000;
    for size in [64usize, 4096] {
        group.throughput(Throughput::Bytes(size as u64 * MESSAGES));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter_custom(|iters| {
                let (mut tx, mut rx) = spsc::channel(RING).unwrap();
                tx.set_wait_strategy(WaitStrategy::Spin);
                rx.set_wait_strategy(WaitStrategy::Spin);
                let total = iters * MESSAGES;
                let start = std::time::Instant::now();
                let writer = thread::spawn(move || {
                    for i in 0..total {
                        let mut g = tx.claim(size).unwrap();
                        g.fill(i as u8);
                        g.commit(size);
                    }
                });
                let mut sum = 0u64;
                for _ in 0..total {
                    let r = rx.read().unwrap();
                    sum += r.chunks(64).map(|c| u64::from(c[0])).sum::<u64>();
                }
                let elapsed = start.elapsed();
                writer.join().unwrap();
                black_box(sum);
                elapsed
            });
        });
    }
    group.finish();
}

criterion_group!(benches, single, batch, stream);
criterion_main!(benches);
