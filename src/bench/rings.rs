//! The `mpsc` and `broadcast` transports: shmesh's multi-producer/single-consumer ring
//! ([`shmesh_ring::mpsc`]) and one-writer, many-reader ring ([`shmesh_ring::broadcast`]).
//!
//! - *pingpong*: one ring per direction, each with one writer and one reader, created by the
//!   parent (`<tag>.ping`, `<tag>.pong`) before the peer starts; driven through
//!   [`Endpoint`] like the SPSC transport (claim, fill, commit; read, check, release).
//! - *throughput*: one ring (`<tag>.data`) and several peer processes, driven by
//!   [`super::fanout`]: `--writers` writer processes into the parent (MPSC), or the parent
//!   writing to `--readers` reader processes (broadcast). This module makes and opens the
//!   segments for both.
//!
//! Rings are sized as for the SPSC transport ([`ring_capacity`]); a broadcast ring has no
//! history (its readers join before the first record) and the `--policy` given.

use shmesh_ring::broadcast::{self, Start};
use shmesh_ring::{
    mpsc, BroadcastPolicy, PeerState, Segment, SegmentBuilder, SegmentKind, ShmMemory,
};

use super::error::BenchError;
use super::transport::{
    attach, check, peers_attached, ring_capacity, write_message, Alive, Endpoint, Plan,
};
use super::{Bench, Touch};

fn segment_error(name: &str) -> impl FnOnce(shmesh_ring::SegmentError) -> BenchError + '_ {
    move |source| BenchError::Segment {
        name: name.to_owned(),
        source,
    }
}

/// Creates the MPSC ring `name` for messages of `size` bytes and up to `writers` writers.
pub(crate) fn create_mpsc(name: &str, size: usize, writers: usize) -> Result<Segment, BenchError> {
    SegmentBuilder::new(name)
        .kind(SegmentKind::MpscRing)
        .capacity(ring_capacity(size))
        .endpoints(writers)
        .create()
        .map_err(segment_error(name))
}

/// Creates the broadcast ring `name` for messages of `size` bytes and up to `readers` readers.
pub(crate) fn create_broadcast(
    name: &str,
    size: usize,
    readers: usize,
    policy: BroadcastPolicy,
) -> Result<Segment, BenchError> {
    SegmentBuilder::new(name)
        .kind(SegmentKind::BroadcastRing)
        .capacity(ring_capacity(size))
        .endpoints(readers)
        .policy(policy)
        .create()
        .map_err(segment_error(name))
}

/// Opens the ring `name` of `kind` made by the parent.
pub(crate) fn open(name: &str, kind: SegmentKind) -> Result<Segment, BenchError> {
    SegmentBuilder::new(name)
        .kind(kind)
        .open()
        .map_err(segment_error(name))
}

fn wrong_direction(what: &str) -> BenchError {
    BenchError::Usage(format!(
        "internal error: this end of the transport does not {what}"
    ))
}

/// One end of the `mpsc` ping-pong transport: the writer of one ring, the consumer of the other.
#[derive(Debug)]
pub(crate) struct MpscEndpoint {
    tx: Option<mpsc::Writer<ShmMemory>>,
    rx: Option<mpsc::Consumer<ShmMemory>>,
    size: usize,
    touch: Touch,
}

impl Endpoint for MpscEndpoint {
    #[inline]
    fn send(&mut self, seq: u64) -> Result<(), BenchError> {
        let tx = self.tx.as_mut().ok_or_else(|| wrong_direction("send"))?;
        // Waits with the wait strategy while the ring is full; ends with `PeerGone` if the
        // consumer dies (and the parent's stall watchdog kills a peer that hangs).
        let mut grant = tx.claim(self.size).map_err(BenchError::Claim)?;
        write_message(&mut grant, seq, self.touch);
        grant.commit(self.size);
        Ok(())
    }

    #[inline]
    fn recv(&mut self, seq: u64) -> Result<(), BenchError> {
        let rx = self.rx.as_mut().ok_or_else(|| wrong_direction("receive"))?;
        // As in `send`: bounded by `PeerGone` and the stall watchdog.
        let record = rx.read().map_err(BenchError::Read)?;
        check(&record, seq, self.size, self.touch)
    }
}

/// One end of the `broadcast` ping-pong transport: the writer of one ring, the only reader of
/// the other.
#[derive(Debug)]
pub(crate) struct BroadcastEndpoint {
    tx: Option<broadcast::Writer<ShmMemory>>,
    rx: Option<broadcast::Reader<ShmMemory>>,
    size: usize,
    touch: Touch,
}

impl Endpoint for BroadcastEndpoint {
    #[inline]
    fn send(&mut self, seq: u64) -> Result<(), BenchError> {
        let tx = self.tx.as_mut().ok_or_else(|| wrong_direction("send"))?;
        // Block: waits while the reader is a ring behind (never in ping-pong); Lap: never waits.
        let mut grant = tx.claim(self.size).map_err(BenchError::Claim)?;
        write_message(&mut grant, seq, self.touch);
        grant.commit(self.size);
        Ok(())
    }

    #[inline]
    fn recv(&mut self, seq: u64) -> Result<(), BenchError> {
        let rx = self.rx.as_mut().ok_or_else(|| wrong_direction("receive"))?;
        // With one message in flight a reader is never lapped: `Lapped` is an error here.
        let record = rx.read().map_err(BenchError::BroadcastRead)?;
        check(&record, seq, self.size, self.touch)
    }
}

impl BroadcastEndpoint {
    /// Whether the peer has joined the ring this end writes and attached as the writer of the
    /// one it reads.
    fn peers_attached(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| tx.live_readers() > 0)
            && self
                .rx
                .as_ref()
                .is_none_or(|rx| rx.peer() != PeerState::NotYet)
    }
}

/// The parent's ends of the ping-pong rings of `plan` (`Mpsc` or `Broadcast`): it writes
/// `<tag>.ping` and reads `<tag>.pong`.
#[derive(Debug)]
pub(crate) enum ParentRings {
    /// The MPSC rings.
    Mpsc(MpscEndpoint),
    /// The broadcast rings.
    Broadcast(BroadcastEndpoint),
}

fn ping_pong_names(tag: &str) -> (String, String) {
    (format!("{tag}.ping"), format!("{tag}.pong"))
}

impl ParentRings {
    /// Creates both rings and attaches the parent's ends; the peer's endpoint argument is the
    /// name stem, `plan.tag`.
    pub(crate) fn new(plan: &Plan<'_>) -> Result<ParentRings, BenchError> {
        debug_assert_eq!(plan.bench, Bench::PingPong, "throughput runs in fanout");
        let (ping, pong) = ping_pong_names(plan.tag);
        let (size, touch) = (plan.size, plan.touch);
        match plan.transport {
            super::Transport::Mpsc => {
                let mut tx = attach(&ping, create_mpsc(&ping, size, 1)?.mpsc_writer())?;
                let mut rx = attach(&pong, create_mpsc(&pong, size, 1)?.mpsc_consumer())?;
                tx.set_wait_strategy(plan.wait);
                rx.set_wait_strategy(plan.wait);
                Ok(ParentRings::Mpsc(MpscEndpoint {
                    tx: Some(tx),
                    rx: Some(rx),
                    size,
                    touch,
                }))
            }
            _ => {
                let mut tx = attach(
                    &ping,
                    create_broadcast(&ping, size, 1, plan.policy)?.broadcast_writer(),
                )?;
                // Joined before the peer starts: it sees every record the peer writes.
                let mut rx = attach(
                    &pong,
                    create_broadcast(&pong, size, 1, plan.policy)?.broadcast_reader(Start::Latest),
                )?;
                tx.set_wait_strategy(plan.wait);
                rx.set_wait_strategy(plan.wait);
                Ok(ParentRings::Broadcast(BroadcastEndpoint {
                    tx: Some(tx),
                    rx: Some(rx),
                    size,
                    touch,
                }))
            }
        }
    }

    /// Waits (checking the peer) until the peer has attached its ends. Under `Block` the
    /// peer's reader must have joined before the first record, or it would start after it.
    pub(crate) fn connect(self, alive: Alive<'_>) -> Result<Box<dyn Endpoint>, BenchError> {
        let what = "the peer to attach to the rings";
        match self {
            ParentRings::Mpsc(ep) => {
                super::transport::wait_for(what, alive, || {
                    Ok(peers_attached(
                        ep.tx.as_ref().map(mpsc::Writer::peer),
                        ep.rx.as_ref().map(mpsc::Consumer::peer),
                    )
                    .then_some(()))
                })?;
                Ok(Box::new(ep))
            }
            ParentRings::Broadcast(ep) => {
                super::transport::wait_for(what, alive, || Ok(ep.peers_attached().then_some(())))?;
                Ok(Box::new(ep))
            }
        }
    }
}

/// The peer's ends of the ping-pong rings under the stem `endpoint`: it reads `<stem>.ping`
/// and writes `<stem>.pong`.
pub(crate) fn connect_peer(
    plan: &Plan<'_>,
    endpoint: &str,
) -> Result<Box<dyn Endpoint>, BenchError> {
    if plan.bench != Bench::PingPong {
        return Err(BenchError::Usage(
            "internal error: mpsc and broadcast throughput run through fanout".into(),
        ));
    }
    let (ping, pong) = ping_pong_names(endpoint);
    let (size, touch) = (plan.size, plan.touch);
    match plan.transport {
        super::Transport::Mpsc => {
            let mut rx = attach(&ping, open(&ping, SegmentKind::MpscRing)?.mpsc_consumer())?;
            let mut tx = attach(&pong, open(&pong, SegmentKind::MpscRing)?.mpsc_writer())?;
            tx.set_wait_strategy(plan.wait);
            rx.set_wait_strategy(plan.wait);
            Ok(Box::new(MpscEndpoint {
                tx: Some(tx),
                rx: Some(rx),
                size,
                touch,
            }))
        }
        _ => {
            let mut rx = attach(
                &ping,
                open(&ping, SegmentKind::BroadcastRing)?.broadcast_reader(Start::Latest),
            )?;
            let mut tx = attach(
                &pong,
                open(&pong, SegmentKind::BroadcastRing)?.broadcast_writer(),
            )?;
            tx.set_wait_strategy(plan.wait);
            rx.set_wait_strategy(plan.wait);
            Ok(Box::new(BroadcastEndpoint {
                tx: Some(tx),
                rx: Some(rx),
                size,
                touch,
            }))
        }
    }
}
