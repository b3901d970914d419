//! The ring ends of a [`Channel`](super::Channel): SPSC, or MPSC when it was created with
//! [`senders(n)`](super::ChannelBuilder::senders). One match per operation picks the ring.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use rkyv::rancor;
use shmesh_ring::{
    mpsc, ClaimError, Consumer, Grant, PeerState, Producer, Record, ShmMemory, TryClaimError,
    WaitStrategy,
};

use super::ends::{RingRx, RingTx, RxFail, RxRecord, TxGrant};
use super::View;

/// The writing end of a channel's ring.
#[derive(Debug)]
pub(crate) enum Tx {
    Spsc(Producer<ShmMemory>),
    Mpsc(mpsc::Writer<ShmMemory>),
}

/// Space claimed in a channel's ring.
#[derive(Debug)]
pub enum AnyGrant<'a> {
    /// In an SPSC ring.
    Spsc(Grant<'a, ShmMemory>),
    /// In an MPSC ring.
    Mpsc(mpsc::Grant<'a, ShmMemory>),
}

impl AnyGrant<'_> {
    /// The position of the claim in the ring (for diagnostics).
    pub(crate) fn position(&self) -> u64 {
        match self {
            AnyGrant::Spsc(g) => g.position(),
            AnyGrant::Mpsc(g) => g.position(),
        }
    }

    /// Publishes the first `len` bytes as a record.
    pub(crate) fn commit(self, len: usize) {
        match self {
            AnyGrant::Spsc(g) => g.commit(len),
            AnyGrant::Mpsc(g) => g.commit(len),
        }
    }
}

impl Deref for AnyGrant<'_> {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            AnyGrant::Spsc(g) => g,
            AnyGrant::Mpsc(g) => g,
        }
    }
}

impl DerefMut for AnyGrant<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            AnyGrant::Spsc(g) => g,
            AnyGrant::Mpsc(g) => g,
        }
    }
}

impl TxGrant for AnyGrant<'_> {
    #[inline]
    fn set_record_kind(&mut self, kind: u32) {
        match self {
            AnyGrant::Spsc(g) => g.set_kind(kind),
            AnyGrant::Mpsc(g) => g.set_kind(kind),
        }
    }

    #[inline]
    fn commit_len(self, len: usize) {
        self.commit(len);
    }
}

impl Tx {
    pub(crate) fn check_space(&mut self, len: usize) -> Result<(), TryClaimError> {
        match self {
            Tx::Spsc(p) => p.check_space(len),
            Tx::Mpsc(w) => w.check_space(len),
        }
    }

    pub(crate) fn peer(&self) -> PeerState {
        match self {
            Tx::Spsc(p) => p.peer(),
            Tx::Mpsc(w) => w.peer(),
        }
    }

    pub(crate) fn wait_strategy(&self) -> WaitStrategy {
        match self {
            Tx::Spsc(p) => p.wait_strategy(),
            Tx::Mpsc(w) => w.wait_strategy(),
        }
    }

    pub(crate) fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        match self {
            Tx::Spsc(p) => p.set_wait_strategy(wait),
            Tx::Mpsc(w) => w.set_wait_strategy(wait),
        }
    }
}

impl Tx {
    /// Claims `len` bytes, waiting at most `timeout` (`Duration::MAX`: forever) while the ring
    /// is full.
    pub(crate) fn claim_timeout(
        &mut self,
        len: usize,
        timeout: Duration,
    ) -> Result<AnyGrant<'_>, ClaimError> {
        match self {
            Tx::Spsc(p) => p.claim_timeout(len, timeout).map(AnyGrant::Spsc),
            Tx::Mpsc(w) => w.claim_timeout(len, timeout).map(AnyGrant::Mpsc),
        }
    }
}

impl RingTx for Tx {
    type Grant<'a> = AnyGrant<'a>;

    #[inline]
    fn try_claim(&mut self, len: usize) -> Result<AnyGrant<'_>, TryClaimError> {
        match self {
            Tx::Spsc(p) => p.try_claim(len).map(AnyGrant::Spsc),
            Tx::Mpsc(w) => w.try_claim(len).map(AnyGrant::Mpsc),
        }
    }

    fn wait_for_space(&mut self, len: usize, timeout: Duration) -> Result<(), ClaimError> {
        match self {
            Tx::Spsc(p) => p.wait_for_space(len, timeout),
            Tx::Mpsc(w) => w.wait_for_space(len, timeout),
        }
    }

    #[inline]
    fn capacity(&self) -> u64 {
        match self {
            Tx::Spsc(p) => p.capacity(),
            Tx::Mpsc(w) => w.capacity(),
        }
    }

    #[inline]
    fn max_payload(&self) -> u64 {
        match self {
            Tx::Spsc(p) => p.max_payload(),
            Tx::Mpsc(w) => w.max_payload(),
        }
    }
}

/// The reading end of a channel's ring.
#[derive(Debug)]
pub(crate) enum Rx {
    Spsc(Consumer<ShmMemory>),
    Mpsc(mpsc::Consumer<ShmMemory>),
}

/// A record of a channel's ring.
pub(crate) enum AnyRecord<'a> {
    Spsc(Record<'a, ShmMemory>),
    Mpsc(mpsc::Record<'a, ShmMemory>),
}

impl Deref for AnyRecord<'_> {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            AnyRecord::Spsc(r) => r,
            AnyRecord::Mpsc(r) => r,
        }
    }
}

impl<'a> RxRecord<'a> for AnyRecord<'a> {
    fn position(&self) -> u64 {
        match self {
            AnyRecord::Spsc(r) => r.position(),
            AnyRecord::Mpsc(r) => r.position(),
        }
    }

    fn view<A: ?Sized>(
        self,
        f: impl for<'b> FnOnce(&'b [u8]) -> Result<&'b A, rancor::Error>,
    ) -> Result<View<'a, A>, rancor::Error> {
        match self {
            AnyRecord::Spsc(r) => r.map(f).map(View::Spsc),
            AnyRecord::Mpsc(r) => r.map(f).map(View::Mpsc),
        }
    }
}

impl Rx {
    /// Async readiness (see `shmesh_ring::park`).
    pub(crate) fn poll_readable(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), shmesh_ring::ReadError>> {
        match self {
            Rx::Spsc(c) => c.poll_readable(cx),
            Rx::Mpsc(c) => c.poll_readable(cx),
        }
    }

    pub(crate) fn peer(&self) -> PeerState {
        match self {
            Rx::Spsc(c) => c.peer(),
            Rx::Mpsc(c) => c.peer(),
        }
    }

    pub(crate) fn wait_strategy(&self) -> WaitStrategy {
        match self {
            Rx::Spsc(c) => c.wait_strategy(),
            Rx::Mpsc(c) => c.wait_strategy(),
        }
    }

    pub(crate) fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        match self {
            Rx::Spsc(c) => c.set_wait_strategy(wait),
            Rx::Mpsc(c) => c.set_wait_strategy(wait),
        }
    }
}

impl RingRx for Rx {
    type Record<'a> = AnyRecord<'a>;

    #[inline]
    fn try_read(&mut self) -> Result<AnyRecord<'_>, RxFail> {
        match self {
            Rx::Spsc(c) => c.try_read().map(AnyRecord::Spsc).map_err(RxFail::from),
            Rx::Mpsc(c) => c.try_read().map(AnyRecord::Mpsc).map_err(RxFail::from),
        }
    }

    #[inline]
    fn check_record(&mut self) -> Result<(), RxFail> {
        match self {
            Rx::Spsc(c) => c.check_record().map_err(RxFail::from),
            Rx::Mpsc(c) => c.check_record().map_err(RxFail::from),
        }
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<(), RxFail> {
        match self {
            Rx::Spsc(c) => c.wait_timeout(timeout).map_err(RxFail::from),
            Rx::Mpsc(c) => c.wait_timeout(timeout).map_err(RxFail::from),
        }
    }
}

impl RingTx for mpsc::Writer<ShmMemory> {
    type Grant<'a> = mpsc::Grant<'a, ShmMemory>;

    #[inline]
    fn try_claim(&mut self, len: usize) -> Result<Self::Grant<'_>, TryClaimError> {
        mpsc::Writer::try_claim(self, len)
    }

    fn wait_for_space(&mut self, len: usize, timeout: Duration) -> Result<(), ClaimError> {
        mpsc::Writer::wait_for_space(self, len, timeout)
    }

    #[inline]
    fn capacity(&self) -> u64 {
        mpsc::Writer::capacity(self)
    }

    #[inline]
    fn max_payload(&self) -> u64 {
        mpsc::Writer::max_payload(self)
    }
}

impl TxGrant for mpsc::Grant<'_, ShmMemory> {
    #[inline]
    fn set_record_kind(&mut self, kind: u32) {
        self.set_kind(kind);
    }

    #[inline]
    fn commit_len(self, len: usize) {
        self.commit(len);
    }
}

impl RingRx for mpsc::Consumer<ShmMemory> {
    type Record<'a> = mpsc::Record<'a, ShmMemory>;

    #[inline]
    fn try_read(&mut self) -> Result<Self::Record<'_>, RxFail> {
        mpsc::Consumer::try_read(self).map_err(RxFail::from)
    }

    #[inline]
    fn check_record(&mut self) -> Result<(), RxFail> {
        mpsc::Consumer::check_record(self).map_err(RxFail::from)
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<(), RxFail> {
        mpsc::Consumer::wait_timeout(self, timeout).map_err(RxFail::from)
    }
}

impl<'a> RxRecord<'a> for mpsc::Record<'a, ShmMemory> {
    fn position(&self) -> u64 {
        mpsc::Record::position(self)
    }

    fn view<A: ?Sized>(
        self,
        f: impl for<'b> FnOnce(&'b [u8]) -> Result<&'b A, rancor::Error>,
    ) -> Result<View<'a, A>, rancor::Error> {
        self.map(f).map(View::Mpsc)
    }
}
