//! Per-endpoint message counters, kept in the endpoint's own slot for tools (`shmesh ls`,
//! `shmesh stat`).
//!
//! An endpoint counts in process memory and stores the totals into its slot when it publishes
//! (writers) or releases (readers): plain `Relaxed` stores to a line only it writes, so the
//! fast path shares nothing new with the peer.

use crate::layout::EndpointSlot;
use crate::sync::Ordering;

/// Running totals of one endpoint, continued from what its slot held when it attached (so
/// they survive takeovers).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    messages: u64,
    bytes: u64,
    waits: u64,
    dropped: u64,
    dirty: bool,
}

impl Counters {
    /// Continues the totals stored in `slot`.
    pub(crate) fn resume(slot: &EndpointSlot) -> Self {
        Counters {
            messages: slot.messages.load(Ordering::Relaxed),
            bytes: slot.bytes.load(Ordering::Relaxed),
            waits: slot.waits.load(Ordering::Relaxed),
            dropped: slot.dropped.load(Ordering::Relaxed),
            dirty: false,
        }
    }

    /// One message of `bytes` payload bytes.
    #[inline]
    pub(crate) fn message(&mut self, bytes: u64) {
        self.messages = self.messages.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(bytes);
        self.dirty = true;
    }

    /// One wait (ring full for a writer, empty for a reader).
    #[inline]
    pub(crate) fn wait(&mut self) {
        self.waits = self.waits.wrapping_add(1);
        self.dirty = true;
    }

    /// `n` records lost (lapped broadcast reader).
    #[inline]
    pub(crate) fn dropped(&mut self, n: u64) {
        self.dropped = self.dropped.wrapping_add(n);
        self.dirty = true;
    }

    /// Stores the totals into `slot` if they changed.
    #[inline]
    pub(crate) fn flush(&mut self, slot: &EndpointSlot) {
        if self.dirty {
            self.dirty = false;
            slot.messages.store(self.messages, Ordering::Relaxed);
            slot.bytes.store(self.bytes, Ordering::Relaxed);
            slot.waits.store(self.waits, Ordering::Relaxed);
            slot.dropped.store(self.dropped, Ordering::Relaxed);
        }
    }
}
