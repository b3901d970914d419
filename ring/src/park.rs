//! Waiting for a ring from async code: a task waits on the same futex word, with the same
//! parked-flag protocol, as a blocking reader, without blocking its executor's thread and
//! without busy polling.
//!
//! A future cannot sleep in `FUTEX_WAIT` itself: that would block the executor's thread. So the
//! sleep is handed to a helper thread, and only the sleep:
//!
//! 1. the task looks at the ring; a record is there → ready;
//! 2. the task **arms** the endpoint's parked word (stores 1), issues the sleeper's fence
//!    ([`crate::wait`], SYNC POINT C of [`crate::spsc`]) and looks again (and at its peer's
//!    liveness): ready, or the peer is gone → the wait ends and the word is cleared;
//! 3. otherwise it hands the wait to its helper thread with its [`Waker`] and returns
//!    `Pending`. The helper calls `FUTEX_WAIT(word, 1, slice)` through the ring's memory
//!    ([`RingMemory::futex_wait`]: a shared futex in shared memory, a private one on the heap)
//!    and, when that returns (woken by a writer, spuriously, or at the end of the slice), wakes
//!    the task, which polls again from step 1.
//!
//! The handshake is exactly the blocking reader's: the writer publishes, fences and, when it
//! reads 1, swaps the word to 0 and wakes the futex. Either the task's second look sees the
//! record, or the writer sees the 1; in the second case the helper is either asleep (the wake
//! finds it) or not yet (its `FUTEX_WAIT` finds 0 and returns at once). No wake-up is lost, and
//! the writer makes no syscall for a reader that does not sleep.
//!
//! **The slice.** A writer killed with SIGKILL never wakes anyone, and the typed layer also
//! watches for refused openers, so the helper sleeps at most [`ASYNC_PARK_SLICE`] (100 ms)
//! before it wakes the task to look again (liveness token, refusals). An idle reader therefore
//! costs one wake-up of its task, a futex timeout and a liveness check every 100 ms: a handful
//! of system calls ten times a second, not busy polling. (Where the sleeper's heavy barrier
//! fails, the slice drops to 1 ms, as for blocking readers: see [`crate::wait`].)
//!
//! **One helper thread per endpoint.** A thread in `FUTEX_WAIT` waits on one word; waiting on
//! several at once needs `FUTEX_WAITV` (Linux 5.16) or an fd per word. So each endpoint that
//! waits asynchronously gets its own helper, spawned on its first `Pending`, named
//! `shmesh-park`, parked on a private condition variable between waits (costing nothing) and
//! stopped and joined when the endpoint drops. A poll that finds the helper still asleep on the
//! armed word (a re-poll of a `select!`, say) only refreshes the waker: no syscall.
//!
//! **Stopping** is race-free: the owner clears the word and wakes the futex, as a writer would,
//! so a helper about to sleep finds 0 and one asleep is woken. Waking is always allowed by the
//! protocol (every sleeper re-checks), so this holds for a word several readers share as well;
//! there another reader may re-arm the word before the helper sleeps, and the join then waits
//! at most one slice.
//!
//! The helper keeps the ring's memory alive while it waits through a `Send + 'static` handle,
//! [`RingMemory::futex_host`]: the segment's mapping or the heap ring. A record is only taken
//! when a poll returns it, so dropping a pending future loses nothing.
//!
//! Readers of every ring kind use the same two crate-internal pieces: a `ParkWord` naming
//! their `consumer_parked`-style word, and an `AsyncPark` whose `poll` runs the steps above
//! around the reader's own look at its ring ([`Consumer::poll_readable`] is the SPSC reader's).
//!
//! [`Consumer::poll_readable`]: crate::Consumer::poll_readable
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::task::{Context, Poll, Wake};
//!
//! let (mut tx, mut rx) = shmesh_ring::spsc::channel(4096)?;
//! # struct Flag(std::sync::atomic::AtomicBool);
//! # impl Wake for Flag { fn wake(self: Arc<Self>) { self.0.store(true, std::sync::atomic::Ordering::SeqCst) } }
//! # let flag = Arc::new(Flag(Default::default()));
//! # let waker = flag.clone().into();
//! let mut cx = Context::from_waker(&waker);
//! // Empty: the helper thread now sleeps on the futex for this task.
//! assert!(rx.poll_readable(&mut cx).is_pending());
//! let mut grant = tx.try_claim(2)?;
//! grant.copy_from_slice(b"hi");
//! grant.commit(2); // the commit wakes the helper, which wakes the task
//! # while !flag.0.load(std::sync::atomic::Ordering::SeqCst) { std::thread::yield_now() }
//! assert!(matches!(rx.poll_readable(&mut cx), Poll::Ready(Ok(()))));
//! assert_eq!(&*rx.try_read()?, b"hi");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

#[cfg(loom)]
use loom::{
    sync::{Condvar, Mutex, MutexGuard},
    thread,
};
#[cfg(not(loom))]
use std::{
    sync::{Condvar, Mutex, MutexGuard},
    thread,
};

use crate::memory::RingMemory;
use crate::sync::{AtomicU32, Ordering};
use crate::wait::{sleeper_fence, DEGRADED_PARK_SLICE};

/// How long the helper thread sleeps on the futex at most before it wakes the task to look at
/// its peer's liveness (a writer killed with SIGKILL cannot wake it) and whatever else the
/// caller watches (refused openers). An idle task is woken this often.
pub const ASYNC_PARK_SLICE: Duration = Duration::from_millis(100);

/// The name of the helper threads.
const THREAD_NAME: &str = "shmesh-park";

/// What a thread other than an endpoint's needs to sleep on one of the ring's futex words for
/// it: a handle that keeps the ring's memory mapped (or allocated) while it lives, and waits
/// and wakes as [`RingMemory::futex_wait`] and [`RingMemory::futex_wake`] do. Made by
/// [`RingMemory::futex_host`]; the helper threads of [this module](self) hold one.
pub trait FutexHost: Send + Sync + 'static {
    /// Sleeps while `word == expected`, up to `timeout`; may return early or spuriously.
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every thread sleeping in [`futex_wait`](Self::futex_wait) on `word`.
    fn futex_wake(&self, word: &AtomicU32);
}

/// An endpoint's parked word (`consumer_parked`-style: 1 while its owner sleeps or is about to,
/// set only by the owner, cleared by wakers with a swap before they wake the futex), usable
/// from any thread: it keeps the ring's memory alive.
pub(crate) struct ParkWord {
    host: Arc<dyn FutexHost>,
    /// Points into the memory `host` keeps alive (see [`ParkWord::new`]).
    word: NonNull<AtomicU32>,
}

// SAFETY: `word` points to an atomic inside the memory that `host` (Send + Sync) keeps alive
// at the same address for as long as `self` lives; an atomic may be used from any thread.
unsafe impl Send for ParkWord {}
// SAFETY: as above; `ParkWord` hands out only shared references to the atomic.
unsafe impl Sync for ParkWord {}

impl ParkWord {
    /// The parked word `word` of the ring in `mem`.
    ///
    /// # Safety
    ///
    /// `word` lies in the memory behind `mem.control()`, `mem.slot(_)` or `mem.broadcast()`,
    /// which [`RingMemory::futex_host`] keeps alive.
    pub(crate) unsafe fn new<M: RingMemory>(mem: &M, word: &AtomicU32) -> Self {
        ParkWord {
            host: mem.futex_host(),
            word: NonNull::from(word),
        }
    }

    /// The consumer's parked word (`control().consumer_parked`): SPSC and MPSC consumers.
    pub(crate) fn consumer_parked<M: RingMemory>(mem: &M) -> Self {
        // SAFETY: the word is in the control block.
        unsafe { Self::new(mem, &mem.control().consumer_parked.0) }
    }

    #[inline]
    fn word(&self) -> &AtomicU32 {
        // SAFETY: `host` keeps the memory of the word alive and in place while `self` lives
        // (the contract of `new` and of `RingMemory::futex_host`).
        unsafe { self.word.as_ref() }
    }

    /// Stores 1 and issues the sleeper's fence (SYNC POINT C); false if the heavy barrier
    /// failed, in which case sleeps must be short ([`DEGRADED_PARK_SLICE`]).
    fn arm(&self) -> bool {
        self.word().store(1, Ordering::Relaxed);
        // SYNC POINT C: pairs with the writer's `waker_fence` in `wake_if_parked`.
        sleeper_fence()
    }

    /// Stores 0: the owner no longer sleeps (what a blocking reader does after its sleep).
    fn disarm(&self) {
        self.word().store(0, Ordering::Relaxed);
    }

    fn is_armed(&self) -> bool {
        self.word().load(Ordering::Relaxed) == 1
    }

    /// Sleeps while the word is 1, at most `slice`.
    fn sleep(&self, slice: Duration) {
        self.host.futex_wait(self.word(), 1, Some(slice));
    }

    /// Clears the word and wakes every sleeper on it, as a writer does: a helper about to
    /// sleep finds 0, one asleep is woken.
    fn kick(&self) {
        self.word().store(0, Ordering::Release);
        self.host.futex_wake(self.word());
    }
}

impl fmt::Debug for ParkWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParkWord")
            .field("word", &self.word().load(Ordering::Relaxed))
            .finish()
    }
}

/// Which look at the ring [`AsyncPark::poll`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// Is there something to read? Look at the ring only (no syscall): the fast path.
    First,
    /// The word is armed and fenced: look at the ring again, then at the peer's liveness. What
    /// this finds is final for this round: `Ok(None)` puts the task to sleep.
    Armed,
}

/// An endpoint's async waits: its parked word and its helper thread (see the
/// [module docs](self)). Owned by the endpoint, like the endpoint used by one task at a time.
pub(crate) struct AsyncPark {
    shared: Arc<Shared>,
    helper: Option<thread::JoinHandle<()>>,
    /// Whether this endpoint armed the word and has not cleared it since.
    armed: bool,
}

/// What the endpoint and its helper thread share.
struct Shared {
    word: ParkWord,
    state: Mutex<State>,
    /// Signalled when a request or the stop arrives.
    wake_helper: Condvar,
}

#[derive(Default)]
struct State {
    /// A sleep the helper has to start: its slice.
    request: Option<Duration>,
    /// The helper is in (or entering) `FUTEX_WAIT` for the endpoint.
    sleeping: bool,
    /// The task to wake when the sleep ends.
    waker: Option<Waker>,
    /// The endpoint is gone: end the thread.
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the state is still sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AsyncPark {
    /// Async waits on `word`. No thread is started until the first wait.
    pub(crate) fn new(word: ParkWord) -> Self {
        AsyncPark {
            shared: Arc::new(Shared {
                word,
                state: Mutex::new(State::default()),
                wake_helper: Condvar::new(),
            }),
            helper: None,
            armed: false,
        }
    }

    /// One poll of an async wait, in the order that loses no wake-up (the module docs):
    /// `look(Look::First)`; if nothing and a sleep for this endpoint is still under way on the
    /// armed word, only refresh the waker; otherwise arm the word, `look(Look::Armed)`, and if
    /// still nothing hand the sleep (at most `slice`) to the helper thread.
    ///
    /// `look` returns `Ok(Some(_))` to end the wait with a value, `Err(_)` to end it with an
    /// error, `Ok(None)` when there is nothing yet. The word is cleared whenever the wait ends.
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the helper thread (as [`std::thread::spawn`]).
    pub(crate) fn poll<T, E>(
        &mut self,
        cx: &mut Context<'_>,
        slice: Duration,
        mut look: impl FnMut(Look) -> Result<Option<T>, E>,
    ) -> Poll<Result<T, E>> {
        match look(Look::First) {
            Ok(None) => {}
            Ok(Some(value)) => return self.done(Ok(value)),
            Err(e) => return self.done(Err(e)),
        }
        if self.in_flight(cx.waker()) {
            return Poll::Pending;
        }
        self.armed = true;
        let slice = if self.shared.word.arm() {
            slice
        } else {
            slice.min(DEGRADED_PARK_SLICE)
        };
        match look(Look::Armed) {
            Ok(None) => {}
            Ok(Some(value)) => return self.done(Ok(value)),
            Err(e) => return self.done(Err(e)),
        }
        self.sleep(slice, cx.waker());
        Poll::Pending
    }

    /// Ends a wait with `result`: clears the word if this endpoint armed it.
    fn done<R>(&mut self, result: R) -> Poll<R> {
        if self.armed {
            self.armed = false;
            self.shared.word.disarm();
        }
        Poll::Ready(result)
    }

    /// Whether the helper still sleeps (or is about to) on the word armed for this endpoint;
    /// if so, it will wake `waker`. A writer that published since the word was armed has
    /// cleared it (and woken the helper), so an armed word means the sleep is still good.
    fn in_flight(&self, waker: &Waker) -> bool {
        if !self.armed || !self.shared.word.is_armed() {
            return false;
        }
        let mut state = self.shared.lock();
        if state.request.is_none() && !state.sleeping {
            return false;
        }
        set_waker(&mut state.waker, waker);
        true
    }

    /// Asks the helper thread (started now if need be) to sleep on the word for at most
    /// `slice`, then to wake `waker`.
    fn sleep(&mut self, slice: Duration, waker: &Waker) {
        {
            let mut state = self.shared.lock();
            state.request = Some(slice);
            set_waker(&mut state.waker, waker);
        }
        self.shared.wake_helper.notify_one();
        if self.helper.is_none() {
            let shared = Arc::clone(&self.shared);
            let handle = thread::Builder::new()
                .name(THREAD_NAME.to_owned())
                .spawn(move || helper(&shared))
                .unwrap_or_else(|e| panic!("cannot start the {THREAD_NAME} helper thread: {e}"));
            self.helper = Some(handle);
        }
    }
}

/// Stores a clone of `waker` unless the stored one wakes the same task.
fn set_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(current) if current.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// The helper thread: sleeps on the word when asked, then wakes the task; ends on stop.
fn helper(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        while !state.stop && state.request.is_none() {
            state = shared
                .wake_helper
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.stop {
            return;
        }
        let Some(slice) = state.request.take() else {
            continue;
        };
        state.sleeping = true;
        drop(state);
        shared.word.sleep(slice);
        state = shared.lock();
        state.sleeping = false;
        // A request made while we slept is answered by this wake-up: the task looks again and
        // starts a new round if need be.
        state.request = None;
        if state.stop {
            return;
        }
        if let Some(waker) = state.waker.take() {
            drop(state);
            waker.wake();
            state = shared.lock();
        }
    }
}

impl Drop for AsyncPark {
    fn drop(&mut self) {
        let Some(handle) = self.helper.take() else {
            if self.armed {
                self.shared.word.disarm();
            }
            return;
        };
        {
            let mut state = self.shared.lock();
            state.stop = true;
            state.waker = None;
        }
        self.shared.wake_helper.notify_one();
        // The helper may be asleep on the word, or about to be: clear it and wake it, as a
        // writer would (see the module docs).
        self.shared.word.kick();
        // A waker that drops the endpoint inside `wake` runs on the helper thread itself.
        if handle.thread().id() != thread::current().id() {
            // The helper does not panic; if a waker did, there is nothing left to clean up.
            let _ = handle.join();
        }
    }
}

impl fmt::Debug for AsyncPark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPark")
            .field("word", &self.shared.word)
            .field("armed", &self.armed)
            .field("helper", &self.helper.is_some())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::memory::HeapMemory;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;
    use std::time::Instant;

    /// Counts wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wait_for(count: &Count, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while count.0.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "no wake-up within 60 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn heap_park() -> (HeapMemory, AsyncPark) {
        let mem = HeapMemory::new(128, 0);
        let park = AsyncPark::new(ParkWord::consumer_parked(&mem));
        (mem, park)
    }

    #[test]
    fn a_ready_look_needs_no_thread_and_leaves_the_word_clear() {
        let (mem, mut park) = heap_park();
        let waker = Waker::from(Arc::new(Count::default()));
        let mut cx = Context::from_waker(&waker);
        let r = park.poll(&mut cx, ASYNC_PARK_SLICE, |_| Ok::<_, ()>(Some(7)));
        assert_eq!(r, Poll::Ready(Ok(7)));
        assert!(park.helper.is_none());
        assert_eq!(mem.control().consumer_parked.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn what_the_armed_look_finds_ends_the_wait_and_clears_the_word() {
        let (mem, mut park) = heap_park();
        let waker = Waker::from(Arc::new(Count::default()));
        let mut cx = Context::from_waker(&waker);
        let mut looks = Vec::new();
        let r = park.poll(&mut cx, ASYNC_PARK_SLICE, |look| {
            looks.push(look);
            match look {
                Look::First => Ok(None),
                Look::Armed => Err("gone"),
            }
        });
        assert_eq!(r, Poll::Ready(Err::<(), _>("gone")));
        assert_eq!(looks, [Look::First, Look::Armed]);
        assert!(park.helper.is_none());
        assert_eq!(mem.control().consumer_parked.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_sleep_ends_with_a_wake_of_the_word_and_wakes_the_task() {
        if !sleeper_fence() {
            // Sleeps are then capped at 1 ms: the helper would wake the task by itself.
            eprintln!("membarrier unavailable: the sleep is not long enough to test the wake");
            return;
        }
        let (mem, mut park) = heap_park();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let slice = Duration::from_secs(3600);
        let r = park.poll(&mut cx, slice, |_| Ok::<Option<()>, ()>(None));
        assert!(r.is_pending());
        let word = &mem.control().consumer_parked.0;
        assert_eq!(word.load(Ordering::SeqCst), 1, "the task armed the word");
        // A re-poll while the helper sleeps on the armed word takes the fast path.
        let mut looks = 0;
        let r = park.poll(&mut cx, slice, |look| {
            looks += 1;
            assert_eq!(look, Look::First);
            Ok::<Option<()>, ()>(None)
        });
        assert!(r.is_pending());
        assert_eq!(looks, 1);
        // What a writer does: swap the word to 0 and wake the futex. The slice is an hour, so
        // only this wake can end the sleep in time.
        assert_eq!(word.swap(0, Ordering::AcqRel), 1);
        mem.futex_wake(word);
        wait_for(&count, 1);
        let r = park.poll(&mut cx, slice, |_| Ok::<_, ()>(Some(1)));
        assert_eq!(r, Poll::Ready(Ok(1)));
    }

    #[test]
    fn the_helper_wakes_the_task_after_each_slice() {
        let (_mem, mut park) = heap_park();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        for round in 1..=3 {
            let r = park.poll(&mut cx, Duration::from_millis(5), |_| {
                Ok::<Option<()>, ()>(None)
            });
            assert!(r.is_pending());
            wait_for(&count, round);
        }
    }

    #[test]
    fn dropping_the_park_stops_its_sleeping_helper() {
        let (mem, mut park) = heap_park();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let r = park.poll(&mut cx, Duration::from_secs(3600), |_| {
            Ok::<Option<()>, ()>(None)
        });
        assert!(r.is_pending());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(park); // joins the helper, asleep for an hour unless the drop wakes it
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the drop did not stop the helper");
        assert_eq!(mem.control().consumer_parked.0.load(Ordering::SeqCst), 0);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "a stopped helper wakes no one"
        );
    }
}
