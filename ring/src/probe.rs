//! The cache-line probe: two processes bounce one 8-byte word in shared memory.
//!
//! Its round trip is the physical floor for any shared-memory IPC on the machine (two
//! cache-line transfers between the cores), which is why `shmesh bench` takes it right before
//! every measurement and reports the others as multiples of it (`cl_ns`).
//!
//! The initiator stores an odd value `2k + 1` and spins until it reads `2k + 2`; the responder
//! spins for an odd value and answers with the next even one. [`CacheLineProbe::STOP`] ends the
//! responder.

use std::fmt;
use std::time::{Duration, Instant};

use crate::segment::{Segment, SegmentBuilder, SegmentError, SegmentKind};
use crate::sync::{AtomicU64, Ordering};

/// Why a probe round trip failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The peer did not answer in time (it died, or was never started).
    #[error("the cache-line probe peer did not answer within {0:?}")]
    Timeout(Duration),
    /// The word holds a value the protocol never writes.
    #[error(
        "the cache-line probe word holds {found}, expected {expected}: another process wrote it"
    )]
    Protocol {
        /// What was read.
        found: u64,
        /// What was expected.
        expected: u64,
    },
}

/// One end of a cache-line probe segment.
pub struct CacheLineProbe {
    seg: Segment,
    /// Last value this end wrote (initiator) or answered (responder).
    last: u64,
}

impl CacheLineProbe {
    /// Value that stops the responder.
    pub const STOP: u64 = u64::MAX;

    /// Creates the probe segment `name` (the initiator's side).
    ///
    /// # Errors
    ///
    /// As [`SegmentBuilder::create`].
    pub fn create(name: &str) -> Result<Self, SegmentError> {
        let seg = SegmentBuilder::new(name)
            .kind(SegmentKind::Probe)
            .create()?;
        Ok(CacheLineProbe { seg, last: 0 })
    }

    /// Opens the probe segment `name` (the responder's side).
    ///
    /// # Errors
    ///
    /// As [`SegmentBuilder::open`].
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        let seg = SegmentBuilder::new(name).kind(SegmentKind::Probe).open()?;
        let last = seg.probe_word().map_or(0, |w| w.load(Ordering::Acquire));
        Ok(CacheLineProbe { seg, last })
    }

    fn word(&self) -> &AtomicU64 {
        self.seg
            .probe_word()
            .expect("a probe handle is only made from a probe segment")
    }

    /// One round trip: write, then spin until the responder answers.
    ///
    /// # Errors
    ///
    /// [`ProbeError::Timeout`] when no answer comes within `timeout`, `Protocol` when the word
    /// holds an impossible value.
    pub fn round_trip(&mut self, timeout: Duration) -> Result<(), ProbeError> {
        let ping = self.last + 1;
        let pong = ping + 1;
        let word = self.word();
        word.store(ping, Ordering::Release);
        let mut spins = 0u32;
        let mut deadline = None;
        loop {
            let v = word.load(Ordering::Acquire);
            if v == pong {
                self.last = pong;
                return Ok(());
            }
            if v != ping {
                return Err(ProbeError::Protocol {
                    found: v,
                    expected: pong,
                });
            }
            spin_check(&mut spins, &mut deadline, timeout)?;
        }
    }

    /// Answers round trips until [`stop`](Self::stop) or until no ping comes within `idle`.
    /// Returns how many it answered.
    ///
    /// # Errors
    ///
    /// [`ProbeError::Timeout`] when idle for `idle`.
    pub fn serve(&self, idle: Duration) -> Result<u64, ProbeError> {
        let word = self.word();
        let mut served = 0;
        loop {
            let mut spins = 0u32;
            let mut deadline = None;
            let v = loop {
                let v = word.load(Ordering::Acquire);
                if v == Self::STOP || v % 2 == 1 {
                    break v;
                }
                spin_check(&mut spins, &mut deadline, idle)?;
            };
            if v == Self::STOP {
                return Ok(served);
            }
            word.store(v + 1, Ordering::Release);
            served += 1;
        }
    }

    /// Tells the responder to stop.
    pub fn stop(&self) {
        self.word().store(Self::STOP, Ordering::Release);
    }
}

/// Spins once; reads the clock every 4096 spins and fails after `timeout`.
#[inline]
fn spin_check(
    spins: &mut u32,
    deadline: &mut Option<Instant>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    *spins = spins.wrapping_add(1);
    if *spins % 4096 == 0 {
        let now = Instant::now();
        match *deadline {
            None => *deadline = Some(now + timeout),
            Some(d) if now >= d => return Err(ProbeError::Timeout(timeout)),
            Some(_) => {}
        }
    }
    crate::sync::spin_loop();
    Ok(())
}

impl fmt::Debug for CacheLineProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLineProbe")
            .field("segment", &self.seg)
            .field("last", &self.last)
            .finish()
    }
}
