//! Single-core `memcpy` bandwidth: the reference for throughput targets ("1 MiB messages at
//! half of memcpy or better").
//!
//! Two buffers of `2 × size` bytes; each copy moves `size` bytes from one half of the source
//! to the other half of the destination, alternating, like a writer filling a ring while a
//! reader drains it. One warm-up run, then the median of [`RUNS`] timed runs of enough copies
//! to move [`BYTES_PER_RUN`] bytes (at least 16 copies, at most 4 Mi copies).

use std::hint::black_box;
use std::time::Instant;

use super::transport::fill;

/// Timed runs per size; the median is reported.
pub const RUNS: usize = 7;
/// Bytes copied per run (fewer for small sizes, see the module docs).
pub const BYTES_PER_RUN: usize = 256 << 20;

/// The median single-core copy bandwidth for copies of `size` bytes, in bytes per second.
pub fn bandwidth(size: usize) -> f64 {
    let size = size.max(1);
    let mut src = vec![0u8; 2 * size];
    fill(&mut src, 0x1234_5678);
    let mut dst = vec![0u8; 2 * size];
    let copies = (BYTES_PER_RUN / size).clamp(16, 4 << 20);
    let mut run = || {
        let start = Instant::now();
        for i in 0..copies {
            let (from, to) = if i % 2 == 0 { (0, size) } else { (size, 0) };
            dst[to..to + size].copy_from_slice(black_box(&src[from..from + size]));
            black_box(&mut dst);
        }
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        (copies * size) as f64 / secs
    };
    run();
    let mut rates: Vec<f64> = (0..RUNS).map(|_| run()).collect();
    rates.sort_by(f64::total_cmp);
    rates[RUNS / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_is_positive_and_finite() {
        let b = bandwidth(4096);
        assert!(b.is_finite() && b > 0.0, "{b}");
    }
}
