//! The one door to atomics, fences and spin hints.
//!
//! Every atomic the ring protocols touch comes from here, so `--cfg loom` swaps the whole
//! crate onto loom's model-checked primitives at once (the pattern of crossbeam's `primitive`
//! module and tokio's `src/loom/mod.rs`). Under loom, [`spin_loop`] yields to the scheduler so
//! spin-waits terminate in the model.
//!
//! Shared-memory code (segments, liveness) is not built under loom: loom cannot see across
//! processes, which is why the ring protocol is generic over its memory (see
//! [`crate::memory`]).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64};

pub(crate) use std::sync::atomic::Ordering;

/// A hint inside a spin-wait loop; a yield to the model scheduler under loom.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Gives the rest of the time slice to another thread (or the loom scheduler).
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}
