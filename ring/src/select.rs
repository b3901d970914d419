//! Waiting on several ring ends at once: a reader of many rings (the ranks of
//! `shmesh::world` receive from any source) or a writer that must also keep reading, so that two
//! processes writing to each other never both wait for space.
//!
//! [`park`] takes the slow half of each end's wait, the parked-flag handshake of
//! [`crate::spsc`] (SYNC POINT C), for every end at once, and sleeps in one `futex_waitv(2)`
//! (Linux 5.16) on all their parked words:
//!
//! 1. store 1 to every end's parked word;
//! 2. one sleeper fence for them all (see [`crate::wait`]);
//! 3. re-check every end: a record to read, the space asked for, or a peer gone. If one is
//!    ready, clear the words and return its index;
//! 4. otherwise sleep until one of the words is no longer 1 (the other side of that ring
//!    published or released, saw the flag, swapped it to 0 and woke it) or the slice ends;
//! 5. clear the words.
//!
//! Each ring's other side keeps its part unchanged (publish, fence, wake if the word says 1), so
//! the proof of each single-ring wait carries over word by word: whichever end becomes ready
//! after step 2, its waker sees its word at 1 and wakes us, or step 3 sees it. A waker that
//! clears its word while we are still checking makes `futex_waitv` return at once, since the
//! word no longer holds the value waited for.
//!
//! The caller spins (or yields) on the ends' `try_` calls first and calls [`park`] only when
//! they stay idle; `park` is the syscall path.

use std::time::Duration;

use crate::memory::{PeerState, RingMemory};
use crate::spsc::{Consumer, Producer};
use crate::sync::{AtomicU32, Ordering};
use crate::wait::{sleeper_fence, DEGRADED_PARK_SLICE};

/// The most words one `futex_waitv` call takes (the kernel's `FUTEX_WAITV_MAX`). Beyond it,
/// [`park`] sleeps in slices of at most [`DEGRADED_PARK_SLICE`] so the other ends are still
/// looked at often.
pub const MAX_WAIT_WORDS: usize = 128;

/// One ring end [`park`] waits on, and what it waits for.
#[derive(Debug)]
pub enum Interest<'a, M: RingMemory> {
    /// A record to read (or the producer gone).
    Record(&'a mut Consumer<M>),
    /// Room for a claim of this many bytes (or the consumer gone).
    Space(&'a mut Producer<M>, usize),
}

impl<M: RingMemory> Interest<'_, M> {
    fn word(&self) -> &AtomicU32 {
        match self {
            Interest::Record(c) => c.parked_word(),
            Interest::Space(p, _) => p.parked_word(),
        }
    }

    fn shared(&self) -> bool {
        match self {
            Interest::Record(c) => c.memory().futex_shared(),
            Interest::Space(p, _) => p.memory().futex_shared(),
        }
    }

    /// Makes what this end wrote visible (a producer's unpublished batch, a consumer's
    /// unreleased reads): the other side may be waiting for exactly that.
    fn flush(&mut self) {
        match self {
            Interest::Record(c) => c.flush_for_select(),
            Interest::Space(p, _) => p.flush_for_select(),
        }
    }

    fn ready(&mut self) -> bool {
        match self {
            Interest::Record(c) => c.ready_for_select(),
            Interest::Space(p, len) => p.ready_for_select(*len),
        }
    }

    fn peer_gone(&self) -> bool {
        match self {
            Interest::Record(c) => c.peer() == PeerState::Gone,
            Interest::Space(p, _) => p.peer() == PeerState::Gone,
        }
    }
}

/// Sleeps until one of `interests` may be ready, or `slice` passes: the slow path of a wait
/// on several rings (see the module docs).
///
/// Returns `Some(i)` when the re-check after arming found `interests[i]` ready (a record, the
/// space, or its peer gone: the caller's next `try_` call on it says which), `None` after a
/// sleep, woken or not. Either way the caller re-checks its ends; `park` takes nothing.
///
/// An empty `interests` sleeps for `slice`. Keep `slice` short enough (tens of milliseconds)
/// that the caller checks its peers' liveness often: a peer killed with SIGKILL wakes nobody.
pub fn park<M: RingMemory>(interests: &mut [Interest<'_, M>], slice: Duration) -> Option<usize> {
    for interest in interests.iter_mut() {
        interest.flush();
        interest.word().store(1, Ordering::Relaxed);
    }
    // SYNC POINT C, for every ring at once: pairs with each waker's `wake_if_parked`.
    let barrier_ok = sleeper_fence();
    let found = interests
        .iter_mut()
        .position(|i| i.ready() || i.peer_gone());
    if found.is_none() {
        let mut slice = slice;
        if !barrier_ok || interests.len() > MAX_WAIT_WORDS {
            slice = slice.min(DEGRADED_PARK_SLICE);
        }
        wait_any(&interests[..interests.len().min(MAX_WAIT_WORDS)], slice);
    }
    for interest in interests.iter() {
        interest.word().store(0, Ordering::Relaxed);
    }
    found
}

/// Sleeps while every word is still 1, for at most `slice`.
#[cfg(not(any(loom, miri)))]
fn wait_any<M: RingMemory>(interests: &[Interest<'_, M>], slice: Duration) {
    use rustix::thread::futex;
    use rustix::time::{clock_gettime, ClockId, Timespec};

    if interests.is_empty() {
        std::thread::sleep(slice);
        return;
    }
    let mut waits = [futex::Wait::new(); MAX_WAIT_WORDS];
    for (wait, interest) in waits.iter_mut().zip(interests) {
        wait.val = 1;
        wait.uaddr = futex::WaitPtr::new(interest.word().as_ptr().cast());
        wait.flags = if interest.shared() {
            futex::WaitFlags::SIZE_U32
        } else {
            futex::WaitFlags::SIZE_U32 | futex::WaitFlags::PRIVATE
        };
    }
    let now = clock_gettime(ClockId::Monotonic);
    let nanos = now.tv_nsec + i64::from(slice.subsec_nanos());
    let deadline = Timespec {
        tv_sec: now
            .tv_sec
            .saturating_add(slice.as_secs().min(i64::MAX as u64 / 2) as i64)
            .saturating_add(nanos / 1_000_000_000),
        tv_nsec: nanos % 1_000_000_000,
    };
    // Woken, a word that already changed (EAGAIN), a timeout or a signal: all mean "look
    // again". The words point into memory that `interests` keeps mapped for the whole call.
    let _ = futex::waitv(
        &waits[..interests.len()],
        futex::WaitvFlags::empty(),
        Some(&deadline),
        ClockId::Monotonic,
    );
}

/// Under loom and miri there is no `futex_waitv`: wait by yielding until a waker clears one of
/// the words (which is what wakes `futex_waitv`). A lost wake-up never ends this loop, which
/// loom reports.
#[cfg(any(loom, miri))]
fn wait_any<M: RingMemory>(interests: &[Interest<'_, M>], slice: Duration) {
    #[cfg(miri)]
    let deadline = std::time::Instant::now() + slice;
    #[cfg(loom)]
    let _ = slice;
    while !interests.is_empty()
        && interests
            .iter()
            .all(|i| i.word().load(Ordering::Relaxed) == 1)
    {
        #[cfg(miri)]
        if std::time::Instant::now() >= deadline {
            return;
        }
        crate::sync::yield_now();
    }
}
