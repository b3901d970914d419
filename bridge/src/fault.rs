//! A [`Link`] wrapper that damages what it receives, on purpose and reproducibly.
//!
//! [`FaultyLink`] wraps any link and, on the **receiving** side only, drops, duplicates,
//! reorders, corrupts, truncates or delays whole frames with the probabilities of a
//! [`FaultPlan`]: it takes each frame the inner link received and hands out the altered result
//! from [`Link::recv`]. Sending, polling and everything else pass through untouched, so to
//! damage both directions wrap both ends. A damaged frame fails [`crate::wire::decode`] (the
//! CRC-32 catches every single-bit flip, the length check every truncation); mirroring treats
//! it as lost, which is exactly what the wrapper exists to exercise.
//!
//! The randomness is a SplitMix64 generator (Steele, Lea and Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014) seeded from the plan, so a failing run
//! reproduces from its seed. What the wrapper did is counted in [`FaultStats`].
//!
//! # Examples
//!
//! ```
//! use shmesh_bridge::fault::{FaultPlan, FaultyLink};
//! # use shmesh_bridge::link::{Link, LinkError};
//! # #[derive(Debug, Default)]
//! # struct Loopback(std::collections::VecDeque<Vec<u8>>);
//! # impl Link for Loopback {
//! #     fn send(&mut self, f: &[u8]) -> Result<bool, LinkError> { self.0.push_back(f.to_vec()); Ok(true) }
//! #     fn poll(&mut self) -> Result<bool, LinkError> { Ok(false) }
//! #     fn recv(&mut self, out: &mut Vec<u8>) -> Result<bool, LinkError> {
//! #         Ok(self.0.pop_front().map(|f| *out = f).is_some())
//! #     }
//! #     fn queued(&self) -> usize { 0 }
//! # }
//!
//! let plan = FaultPlan { drop: 1.0, seed: 7, ..FaultPlan::default() };
//! let mut link = FaultyLink::new(Loopback::default(), plan)?;
//! link.send(b"a frame")?;
//! let mut out = Vec::new();
//! assert!(!link.recv(&mut out)?); // dropped
//! assert_eq!(link.stats().dropped, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::link::{Link, LinkError};

/// What [`FaultyLink`] does to received frames. Each probability applies to every frame
/// independently and must be within `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultPlan {
    /// Probability that a frame is skipped.
    pub drop: f64,
    /// Probability that a frame is handed out twice in a row.
    pub duplicate: f64,
    /// Probability that a frame is held back and handed out after the next one. At most one
    /// frame (with its duplicate) is held at a time; a held frame is released as soon as the
    /// inner link has nothing more, so reordering never stalls a frame.
    pub reorder: f64,
    /// Probability that one random bit of a frame is flipped.
    pub corrupt: f64,
    /// Probability that a frame is cut to a random shorter length (possibly empty).
    pub truncate: f64,
    /// If set, every frame is held until this long after the wrapper took it from the inner
    /// link.
    pub delay: Option<Duration>,
    /// Seed of the generator that decides the faults: the same seed and the same frames give
    /// the same faults.
    pub seed: u64,
}

/// A [`FaultPlan`] that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultPlanError {
    /// A probability outside `0.0..=1.0` (or NaN).
    #[error("fault probability `{name}` is {value}; give a value within 0.0..=1.0")]
    BadProbability {
        /// The plan field.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

impl FaultPlan {
    /// Checks every probability is within `0.0..=1.0`.
    ///
    /// # Errors
    ///
    /// [`FaultPlanError::BadProbability`] naming the first field that is not.
    pub fn validate(&self) -> Result<(), FaultPlanError> {
        for (name, value) in [
            ("drop", self.drop),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
            ("truncate", self.truncate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultPlanError::BadProbability { name, value });
            }
        }
        Ok(())
    }
}

/// What a [`FaultyLink`] has done so far. Each count is of frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FaultStats {
    /// Frames taken from the inner link.
    pub received: u64,
    /// Frames handed out by [`Link::recv`] (duplicates included).
    pub delivered: u64,
    /// Frames skipped.
    pub dropped: u64,
    /// Frames handed out twice.
    pub duplicated: u64,
    /// Frames handed out after a frame the inner link received later.
    pub reordered: u64,
    /// Frames with one bit flipped.
    pub corrupted: u64,
    /// Frames cut short.
    pub truncated: u64,
    /// Frames held for the plan's delay.
    pub delayed: u64,
}

/// SplitMix64: a tiny, well-mixed generator; good enough to pick faults, not for secrets.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p` (`p` within `0.0..=1.0`).
    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a uniform value in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        unit < p
    }

    /// A value in `0..n` (`n` > 0); the modulo bias is irrelevant for picking faults.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A [`Link`] that damages the frames it receives according to a [`FaultPlan`] (see the
/// [module docs](self)). Faults apply in this order to each frame taken from the inner link:
/// drop; corrupt; truncate; duplicate; reorder; delay.
#[derive(Debug)]
pub struct FaultyLink<L: Link> {
    inner: L,
    plan: FaultPlan,
    rng: SplitMix64,
    /// Where the inner link's frames land.
    scratch: Vec<u8>,
    /// Frames held back by a reorder (a frame and its duplicate), released after the next one.
    held: Vec<Vec<u8>>,
    /// Frames to hand out, each with the instant it may go (with a delay), in order.
    ready: VecDeque<(Option<Instant>, Vec<u8>)>,
    stats: FaultStats,
}

impl<L: Link> FaultyLink<L> {
    /// Wraps `inner`.
    ///
    /// # Errors
    ///
    /// [`FaultPlanError`] when a probability of `plan` is out of range.
    pub fn new(inner: L, plan: FaultPlan) -> Result<Self, FaultPlanError> {
        plan.validate()?;
        Ok(FaultyLink {
            inner,
            plan,
            rng: SplitMix64(plan.seed),
            scratch: Vec::new(),
            held: Vec::new(),
            ready: VecDeque::new(),
            stats: FaultStats::default(),
        })
    }

    /// What the wrapper has done so far.
    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// The plan in force.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// The wrapped link.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// The wrapped link, mutably.
    pub fn inner_mut(&mut self) -> &mut L {
        &mut self.inner
    }

    /// Unwraps the inner link. Frames held or delayed by the wrapper are lost.
    pub fn into_inner(self) -> L {
        self.inner
    }

    /// Applies drop, corrupt, truncate, duplicate and reorder to one received frame.
    fn process(&mut self, mut frame: Vec<u8>) {
        let plan = self.plan;
        if self.rng.chance(plan.drop) {
            self.stats.dropped += 1;
            return;
        }
        if self.rng.chance(plan.corrupt) && !frame.is_empty() {
            let byte = self.rng.below(frame.len());
            let bit = self.rng.below(8);
            frame[byte] ^= 1 << bit;
            self.stats.corrupted += 1;
        }
        if self.rng.chance(plan.truncate) && !frame.is_empty() {
            let len = self.rng.below(frame.len());
            frame.truncate(len);
            self.stats.truncated += 1;
        }
        let twice = self.rng.chance(plan.duplicate);
        if twice {
            self.stats.duplicated += 1;
        }
        let hold = self.rng.chance(plan.reorder) && self.held.is_empty();
        let copies = if twice {
            vec![frame.clone(), frame]
        } else {
            vec![frame]
        };
        if hold {
            self.held = copies;
            return;
        }
        for copy in copies {
            self.enqueue(copy);
        }
        if !self.held.is_empty() {
            self.stats.reordered += 1;
            for copy in std::mem::take(&mut self.held) {
                self.enqueue(copy);
            }
        }
    }

    /// Queues a frame for handing out, after the plan's delay if any.
    fn enqueue(&mut self, frame: Vec<u8>) {
        let due = self.plan.delay.map(|d| {
            self.stats.delayed += 1;
            Instant::now() + d
        });
        self.ready.push_back((due, frame));
    }
}

impl<L: Link> Link for FaultyLink<L> {
    fn send(&mut self, frame: &[u8]) -> Result<bool, LinkError> {
        self.inner.send(frame)
    }

    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.fd()
    }

    fn poll(&mut self) -> Result<bool, LinkError> {
        self.inner.poll()
    }

    fn recv(&mut self, out: &mut Vec<u8>) -> Result<bool, LinkError> {
        loop {
            if let Some((due, _)) = self.ready.front() {
                if due.is_none_or(|due| Instant::now() >= due) {
                    if let Some((_, frame)) = self.ready.pop_front() {
                        *out = frame;
                        self.stats.delivered += 1;
                        return Ok(true);
                    }
                }
            }
            if self.inner.recv(&mut self.scratch)? {
                self.stats.received += 1;
                let frame = std::mem::take(&mut self.scratch);
                self.process(frame);
            } else if !self.held.is_empty() {
                // Nothing follows the held frame now: release it rather than stall it.
                for copy in std::mem::take(&mut self.held) {
                    self.enqueue(copy);
                }
            } else {
                return Ok(false);
            }
        }
    }

    fn queued(&self) -> usize {
        self.inner.queued()
    }

    fn is_established(&self) -> bool {
        self.inner.is_established()
    }

    fn peer_name(&self) -> Option<&str> {
        self.inner.peer_name()
    }
}
