//! Waiting for the other side: spin, spin-then-yield, or sleep on a futex in shared memory.
//!
//! Steps from spinning to parking like crossbeam's `Backoff` (`spin`, `snooze`), then parks on a
//! futex word that lives in the ring's control block. The protocol around the parked word (the
//! "parked flag") is in [`crate::spsc`]: the sleeper sets the word to 1, issues a `SeqCst`
//! fence, re-checks the ring and sleeps while the word is still 1; the other side publishes,
//! issues a `SeqCst` fence and, only when it sees 1, swaps it to 0 and makes the wake syscall.
//! The two fences make it a Dekker handshake: at least one side sees the other, so no wake-up is
//! lost, and a side whose peer never sleeps never makes a syscall.
//!
//! The waker's fence sits on every commit and release, the fast path. Where the kernel offers
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, the handshake is made asymmetric (the
//! technique of folly's `asymmetricHeavyBarrier`, across processes): every process registers
//! for expedited global barriers when it attaches an endpoint, the waker then needs only a
//! compiler fence, and the sleeper, already on its slow path, issues the membarrier, which runs a
//! full barrier on every CPU currently running a registered process. Either the waker's store
//! was globally visible before that barrier (the sleeper's re-check sees it), or its load of the
//! parked word comes after it (the waker sees 1). loom models the symmetric form (under loom
//! both sides use `SeqCst` fences); the asymmetric form rests on the kernel's guarantee. If a
//! sleeper's membarrier call fails (a seccomp filter, say), it sleeps at most
//! 1 ms at a time, so a wake-up can be late by that much, never lost.
//!
//! Futexes on shared memory must not use `FUTEX_PRIVATE_FLAG`: a private futex is keyed by the
//! virtual address in one process, so a waker in another process never finds the sleeper.

use std::time::{Duration, Instant};

#[cfg(not(loom))]
use crate::sync::AtomicU32;

/// How a blocking call waits when the ring is empty (reader) or full (writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Busy-spin on the index. Lowest latency; burns a core while waiting.
    Spin,
    /// Spin `spins` times, then `sched_yield` between checks.
    SpinYield {
        /// Spins before the first yield.
        spins: u32,
    },
    /// Spin `spins` times, then sleep on a futex in the segment until the peer wakes us. Costs
    /// nothing while idle; the peer makes a wake syscall only when we actually sleep.
    Futex {
        /// Spins before the first sleep (0 sleeps at once).
        spins: u32,
    },
}

impl WaitStrategy {
    /// Spin-then-yield with the default spin count.
    pub const fn spin_yield() -> Self {
        WaitStrategy::SpinYield { spins: 128 }
    }

    /// Spin-then-futex with the default spin count: enough to ride out a peer that answers
    /// within a few microseconds without a syscall.
    pub const fn futex() -> Self {
        WaitStrategy::Futex { spins: 1024 }
    }
}

impl Default for WaitStrategy {
    /// [`WaitStrategy::futex()`]: cheap when idle, fast when busy.
    fn default() -> Self {
        Self::futex()
    }
}

/// How long one futex sleep lasts at most before the sleeper checks its peer's liveness token:
/// a peer killed with SIGKILL cannot wake us, so this bounds how late `PeerGone` is noticed.
pub(crate) const PARK_SLICE: Duration = Duration::from_millis(20);
/// The longest sleep of a sleeper whose membarrier failed (see the module docs).
pub(crate) const DEGRADED_PARK_SLICE: Duration = Duration::from_millis(1);

/// Whether this process can wake with a compiler fence only: it registered for expedited
/// global membarriers (done once, on first use; endpoints call it when they attach).
#[inline]
pub(crate) fn light_wakes() -> bool {
    #[cfg(any(loom, miri))]
    {
        false
    }
    #[cfg(not(any(loom, miri)))]
    {
        use rustix::thread::{membarrier, membarrier_query, MembarrierCommand};
        static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *REGISTERED.get_or_init(|| {
            let query = membarrier_query();
            query.contains_command(MembarrierCommand::GlobalExpedited)
                && query.contains_command(MembarrierCommand::RegisterGlobalExpedited)
                && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
        })
    }
}

/// The waker's half of the parked-flag handshake (SYNC POINT C): a full fence, or only a
/// compiler fence where sleepers issue the heavy barrier.
#[inline]
pub(crate) fn waker_fence(light: bool) {
    if light {
        std::sync::atomic::compiler_fence(crate::sync::Ordering::SeqCst);
    } else {
        crate::sync::fence(crate::sync::Ordering::SeqCst);
    }
}

/// The sleeper's half of the handshake: a full fence, then the heavy barrier that stands in
/// for the fence light wakers skip. Returns false if the heavy barrier failed, in which case
/// the caller must only sleep briefly ([`DEGRADED_PARK_SLICE`]).
#[inline]
pub(crate) fn sleeper_fence() -> bool {
    crate::sync::fence(crate::sync::Ordering::SeqCst);
    #[cfg(any(loom, miri))]
    {
        true
    }
    #[cfg(not(any(loom, miri)))]
    {
        use rustix::thread::{membarrier, MembarrierCommand};
        // Always issued, whatever this process's own registration: the waker may be another
        // process that registered. A failure (old kernel, seccomp) means a light waker could
        // miss us: the caller then sleeps in short slices.
        membarrier(MembarrierCommand::GlobalExpedited).is_ok()
    }
}

/// How often a spinning waiter checks its peer's liveness token.
const PEER_CHECK_EVERY: Duration = Duration::from_millis(1);
/// Spin iterations between two reads of the clock.
const CLOCK_EVERY: u32 = 64;

/// One step of a wait loop, as decided by [`Waiter::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Re-check the ring now.
    Retry,
    /// Check the peer's liveness token, then re-check the ring.
    CheckPeer,
    /// Sleep on the futex for at most this long (after the parked-flag handshake).
    Park(Duration),
    /// The deadline passed.
    TimedOut,
}

/// The state of one wait: where it is between spinning and parking, and its deadline.
#[derive(Debug)]
pub(crate) struct Waiter {
    strategy: WaitStrategy,
    deadline: Option<Instant>,
    iter: u32,
    next_peer_check: Option<Instant>,
}

impl Waiter {
    pub(crate) fn new(strategy: WaitStrategy, deadline: Option<Instant>) -> Self {
        Waiter {
            strategy,
            deadline,
            iter: 0,
            next_peer_check: None,
        }
    }

    /// What to do next. Spin and yield steps have already spun or yielded when this returns.
    pub(crate) fn next(&mut self) -> Step {
        self.iter = self.iter.wrapping_add(1);
        let parking = matches!(self.strategy, WaitStrategy::Futex { spins } if self.iter > spins);
        if parking || self.iter % CLOCK_EVERY == 0 {
            let now = Instant::now();
            if let Some(deadline) = self.deadline {
                if now >= deadline {
                    return Step::TimedOut;
                }
            }
            if parking {
                let slice = match self.deadline {
                    Some(deadline) => PARK_SLICE.min(deadline - now),
                    None => PARK_SLICE,
                };
                return Step::Park(slice);
            }
            // The first clock read only arms the check: a short wait makes no syscall.
            match self.next_peer_check {
                None => self.next_peer_check = Some(now + PEER_CHECK_EVERY),
                Some(at) if now >= at => {
                    self.next_peer_check = Some(now + PEER_CHECK_EVERY);
                    return Step::CheckPeer;
                }
                Some(_) => {}
            }
        }
        match self.strategy {
            WaitStrategy::SpinYield { spins } if self.iter > spins => crate::sync::yield_now(),
            _ => crate::sync::spin_loop(),
        }
        Step::Retry
    }
}

/// `FUTEX_WAIT` on `word` while it equals `expected`, for at most `timeout`. `shared` must be
/// true for memory mapped into more than one process. Interruptions, timeouts and value
/// changes all just return: callers re-check their condition.
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>, shared: bool) {
    use rustix::thread::futex;
    let flags = if shared {
        futex::Flags::empty()
    } else {
        futex::Flags::PRIVATE
    };
    let ts = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    // EAGAIN (value changed), ETIMEDOUT and EINTR are all "go and look again".
    let _ = futex::wait(word, flags, expected, ts.as_ref());
}

/// `FUTEX_WAKE` for every sleeper on `word`.
#[cfg(not(loom))]
pub(crate) fn futex_wake(word: &AtomicU32, shared: bool) {
    use rustix::thread::futex;
    let flags = if shared {
        futex::Flags::empty()
    } else {
        futex::Flags::PRIVATE
    };
    let _ = futex::wake(word, flags, i32::MAX as u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "miri has no membarrier")]
    fn a_process_that_wakes_lightly_can_issue_the_heavy_barrier() {
        if light_wakes() {
            assert!(
                sleeper_fence(),
                "registered for membarrier, yet the barrier fails"
            );
        } else {
            // Not an error: wakers then fence on every commit, which is correct but slower.
            eprintln!("membarrier(GLOBAL_EXPEDITED) unavailable: wakers use full fences");
        }
    }

    #[test]
    fn futex_strategy_parks_after_its_spins() {
        let mut w = Waiter::new(WaitStrategy::Futex { spins: 3 }, None);
        let steps: Vec<Step> = (0..5).map(|_| w.next()).collect();
        assert_eq!(&steps[..3], &[Step::Retry, Step::Retry, Step::Retry]);
        assert_eq!(steps[3], Step::Park(PARK_SLICE));
    }

    #[test]
    fn deadline_in_the_past_times_out() {
        let mut w = Waiter::new(WaitStrategy::Futex { spins: 0 }, Some(Instant::now()));
        assert_eq!(w.next(), Step::TimedOut);
        let mut w = Waiter::new(WaitStrategy::Spin, Some(Instant::now()));
        let timed_out = (0..CLOCK_EVERY).any(|_| w.next() == Step::TimedOut);
        assert!(timed_out);
    }

    #[test]
    fn spinner_checks_its_peer_only_after_a_while() {
        let mut w = Waiter::new(WaitStrategy::Spin, None);
        let early = (0..CLOCK_EVERY)
            .filter(|_| w.next() == Step::CheckPeer)
            .count();
        assert_eq!(early, 0, "a short wait must not make a syscall");
        std::thread::sleep(PEER_CHECK_EVERY);
        let later = (0..CLOCK_EVERY)
            .filter(|_| w.next() == Step::CheckPeer)
            .count();
        assert_eq!(later, 1);
    }
}
