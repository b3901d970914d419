//! Single-core `memcpy` bandwidth: the reference for throughput targets ("1 MiB messages at
//! half of memcpy or better") and for snapshot reads (`shmesh bench snapshot`).
//!
//! Two buffers of `2 × size` bytes; each copy moves `size` bytes from one half of the source
//! to the other half of the destination, alternating, like a writer filling a ring while a
//! reader drains it. One warm-up run, then the median of [`RUNS`] timed runs of enough copies
//! to move [`BYTES_PER_RUN`] bytes (at least 16 copies, at most 4 Mi copies:
//! [`copies_per_run`]). [`median_of_runs`] is the same procedure for any copy loop.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Instant;

use super::transport::fill;

/// Timed runs per size; the median is reported.
pub const RUNS: usize = 7;
/// Bytes copied per run (fewer for small sizes, see the module docs).
pub const BYTES_PER_RUN: usize = 256 << 20;

/// Copies of `size` bytes per run: about [`BYTES_PER_RUN`] bytes, at least 16 copies, at most
/// 4 Mi.
pub fn copies_per_run(size: usize) -> usize {
    (BYTES_PER_RUN / size.max(1)).clamp(16, 4 << 20)
}

/// The median single-core copy bandwidth for copies of `size` bytes, in bytes per second.
pub fn bandwidth(size: usize) -> f64 {
    bandwidth_with(size, copies_per_run(size))
}

/// [`bandwidth`] with `copies` copies per run (at least one).
pub fn bandwidth_with(size: usize, copies: usize) -> f64 {
    let size = size.max(1);
    let copies = copies.max(1);
    let mut src = vec![0u8; 2 * size];
    fill(&mut src, 0x1234_5678);
    let mut dst = vec![0u8; 2 * size];
    let result = median_of_runs(|| {
        let start = Instant::now();
        for i in 0..copies {
            let (from, to) = if i % 2 == 0 { (0, size) } else { (size, 0) };
            dst[to..to + size].copy_from_slice(black_box(&src[from..from + size]));
            black_box(&mut dst);
        }
        Ok::<_, Infallible>(rate(copies * size, start))
    });
    match result {
        Ok(rate) => rate,
        Err(never) => match never {},
    }
}

/// Bytes per second for `bytes` moved since `start`.
pub(crate) fn rate(bytes: usize, start: Instant) -> f64 {
    bytes as f64 / start.elapsed().as_secs_f64().max(1e-9)
}

/// Runs `run` once to warm up, then [`RUNS`] times, and returns the median of the rates the
/// timed runs return; the first error ends it.
///
/// # Errors
///
/// The first error of `run`.
pub fn median_of_runs<E>(mut run: impl FnMut() -> Result<f64, E>) -> Result<f64, E> {
    run()?;
    let mut rates = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        rates.push(run()?);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[RUNS / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_is_positive_and_finite() {
        let b = bandwidth(4096);
        assert!(b.is_finite() && b > 0.0, "{b}");
        let b = bandwidth_with(64, 1);
        assert!(b.is_finite() && b > 0.0, "{b}");
    }

    #[test]
    fn copies_per_run_moves_about_256_mib() {
        assert_eq!(copies_per_run(1 << 20), 256);
        assert_eq!(copies_per_run(64 << 20), 16);
        assert_eq!(copies_per_run(8), 4 << 20);
        assert_eq!(copies_per_run(0), 4 << 20);
    }

    #[test]
    fn median_of_runs_warms_up_then_takes_the_median() {
        let mut calls = 0;
        let rates = [100.0, 5.0, 1.0, 7.0, 3.0, 6.0, 2.0, 4.0];
        let median = median_of_runs(|| {
            calls += 1;
            Ok::<_, ()>(rates[calls - 1])
        });
        // The warm-up's 100 is dropped; the median of 5 1 7 3 6 2 4 is 4.
        assert_eq!(median, Ok(4.0));
        assert_eq!(calls, RUNS + 1);
        let mut calls = 0;
        let failed = median_of_runs(|| {
            calls += 1;
            if calls == 3 {
                Err("third")
            } else {
                Ok(1.0)
            }
        });
        assert_eq!(failed, Err("third"));
        assert_eq!(calls, 3);
    }
}
