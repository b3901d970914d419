//! The async receive path: [`Receiver::recv_async`], for tokio or any other executor.
//!
//! The task waits on the same futex as the blocking [`Receiver::recv`], with the same
//! protocol: it arms the ring's parked word and looks again, then a helper thread of the
//! receiver sleeps on the futex and wakes the task when the sender publishes (see
//! [`shmesh_ring::park`]). No executor thread blocks and none busy-polls. While the channel
//! stays empty the helper also wakes the task every 100 ms
//! ([`ASYNC_PARK_SLICE`](shmesh_ring::park::ASYNC_PARK_SLICE)), so that it sees a sender killed
//! without a chance to wake anyone, and a refused opener, as `recv` does in its 100 ms slices.
//!
//! There is no `Stream` impl: a [`Received`] borrows the receiver (it is a view into the ring),
//! which a `Stream` item cannot do.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use shmesh_ring::ReadError;

use super::{Message, Received, Receiver, RecvError};

/// The future of [`Receiver::recv_async`]: resolves to the next message.
#[must_use = "futures do nothing unless polled"]
pub struct RecvAsync<'a, T> {
    /// `None` once the future resolved.
    receiver: Option<&'a mut Receiver<T>>,
}

impl<T: Message> Receiver<T> {
    /// Receives the next message without blocking the thread: a future for async code, on
    /// any executor (tokio's current-thread and multi-thread runtimes included).
    ///
    /// While there is no message the task sleeps, woken by the sender's publish through the
    /// receiver's helper thread, which sleeps on the ring's futex for it (started on first
    /// use, stopped when the receiver drops); also every 100 ms while the channel stays empty,
    /// to check the sender's liveness and refused openers, as `recv` does in its 100 ms slices.
    /// No busy polling: see [`shmesh_ring::park`].
    ///
    /// Cancellation safe: a message is taken only when the future resolves to it. Dropping the
    /// future before (a `select!` that took another branch, a timeout) loses nothing: the
    /// next receive gets the message.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv): [`RecvError::Disconnected`] when the sender is gone and every
    /// message was read; `Invalid` when a message fails validation (it is dropped); a
    /// `SchemaMismatch` when a process tried to open the channel with another type (once; the
    /// channel still works); `Corrupt`. Never `Timeout`: wrap the future in your executor's
    /// timeout.
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the helper thread (as [`std::thread::spawn`]), or
    /// if the future is polled again after it resolved.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmesh::Channel;
    ///
    /// # let name = format!("doc-recv-async-{}", std::process::id());
    /// let channel = Channel::<String>::create(&name)?;
    /// let (mut tx, mut rx) = (channel.sender()?, channel.receiver()?);
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    /// runtime.block_on(async {
    ///     let sending = std::thread::spawn(move || tx.send(&"hello".to_owned()));
    ///     let message = rx.recv_async().await?; // the task sleeps until the send
    ///     assert_eq!(message.as_str(), "hello");
    ///     drop(message);
    ///     sending.join().unwrap()?;
    ///     // The sender is gone now.
    ///     assert!(rx.recv_async().await.unwrap_err().is_disconnected());
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_async(&mut self) -> RecvAsync<'_, T> {
        RecvAsync {
            receiver: Some(self),
        }
    }
}

impl<'a, T: Message> Future for RecvAsync<'a, T> {
    type Output = Result<Received<'a, T>, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let receiver = this
            .receiver
            .take()
            .expect("RecvAsync polled after it resolved");
        // Each wake-up of the task (at least every slice while the channel stays empty) looks
        // for a refused opener first, as `recv` does between its slices.
        if let Some(mismatch) = receiver.watch.check() {
            return Poll::Ready(Err(RecvError::SchemaMismatch(mismatch)));
        }
        match receiver.consumer.poll_readable(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(receiver.dec.recv(
                &mut receiver.consumer,
                &mut receiver.watch,
                None,
                0,
            )),
            Poll::Ready(Err(ReadError::PeerGone)) => Poll::Ready(Err(RecvError::Disconnected)),
            Poll::Ready(Err(ReadError::Corrupt(c))) => Poll::Ready(Err(RecvError::Corrupt(c))),
            // `poll_readable` has no deadline; mapped for completeness.
            Poll::Ready(Err(ReadError::Timeout)) => Poll::Ready(Err(RecvError::Timeout)),
            Poll::Pending => {
                this.receiver = Some(receiver);
                Poll::Pending
            }
        }
    }
}

impl<T> fmt::Debug for RecvAsync<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvAsync")
            .field("receiver", &self.receiver)
            .finish()
    }
}
