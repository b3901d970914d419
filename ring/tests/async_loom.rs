//! loom models of the async read path (run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shmesh-ring --release --test
//! async_loom`).
//!
//! The task, its helper thread and the producer are loom threads; the futex is a loom mutex +
//! condvar with no timeout, so a wake-up lost anywhere on the way producer → futex → helper →
//! task waker is a deadlock in the model, and so is a helper that the consumer's drop fails to
//! stop. The task runs in [`block_on`], which parks its thread until its waker is called.
#![cfg(loom)]

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use loom::thread;
use shmesh_ring::{spsc, ReadError};

/// Polls `future` on this loom thread, parking the thread between polls until the waker
/// unparks it (as `loom::future::block_on`, which needs loom's `futures` feature).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// A waker that does nothing: for a single poll.
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// A publish racing the task's park (arm, fence, second look, hand-off to the helper): the
/// task is always woken, and reads the record.
#[test]
fn async_read_never_misses_a_publish() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel(128).unwrap();
        let writer = thread::spawn(move || {
            let mut grant = tx.try_claim(8).unwrap();
            grant.copy_from_slice(b"12345678");
            grant.commit(8);
            // Kept alive: its detach would wake the task too and hide a lost publish wake.
            tx
        });
        let got = block_on(async { rx.read_async().await.map(|r| r.to_vec()) }).unwrap();
        assert_eq!(got, b"12345678");
        let tx = writer.join().unwrap();
        drop(rx);
        drop(tx);
    });
}

/// The producer detaches while the task waits: the task is woken and told `PeerGone`.
#[test]
fn async_read_hears_the_producer_leave() {
    loom::model(|| {
        let (tx, mut rx) = spsc::channel(128).unwrap();
        let writer = thread::spawn(move || drop(tx));
        let got = block_on(async { rx.read_async().await.map(|r| r.len()) });
        assert_eq!(got.unwrap_err(), ReadError::PeerGone);
        writer.join().unwrap();
    });
}

/// The consumer is dropped while its helper is about to sleep or asleep on the futex: the
/// drop stops and joins it in every interleaving.
#[test]
fn dropping_the_consumer_stops_its_helper() {
    loom::model(|| {
        let (tx, mut rx) = spsc::channel(128).unwrap();
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_readable(&mut cx).is_pending());
        drop(rx);
        drop(tx);
    });
}

/// A poll with one waker, then, while the helper may be asleep, a re-poll with another (the
/// fast path only swaps the waker): the publish wakes the second.
#[test]
fn a_repoll_with_a_new_waker_is_woken() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::channel(128).unwrap();
        let noop = Waker::from(Arc::new(Noop));
        assert!(rx
            .poll_readable(&mut Context::from_waker(&noop))
            .is_pending());
        let writer = thread::spawn(move || {
            let mut grant = tx.try_claim(8).unwrap();
            grant.copy_from_slice(b"87654321");
            grant.commit(8);
            tx
        });
        block_on(poll_fn(|cx| rx.poll_readable(cx))).unwrap();
        assert_eq!(&*rx.try_read().unwrap(), b"87654321");
        let tx = writer.join().unwrap();
        drop(rx);
        drop(tx);
    });
}
