//! The `typed` transport: shmesh's own typed channel ([`crate::channel`]) sending the
//! [`BenchMessage`] (about 1 KiB archived: a `String`, a `Vec<u32>`, a few numbers), the same
//! message ipc-channel sends through serde.
//!
//! One channel per direction (`<tag>.ping`, `<tag>.pong`; `<tag>.data` for throughput), created
//! by the parent before the peer starts and opened by the peer, both with the schema check.
//! Per message: the sender serializes the message straight into the ring with rkyv; the
//! receiver validates it in place (the default access mode) and, with `--touch all`, reads
//! every field ([`ArchivedBenchMessage::check`](super::message::ArchivedBenchMessage::check));
//! with `--touch none` it reads only `seq`. Either way the sender serializes the whole message:
//! a typed channel has nothing to loan.

use crate::channel::{Channel, ChannelError, Receiver, Sender};

use super::error::BenchError;
use super::message::BenchMessage;
use super::transport::{ring_capacity, Alive, Endpoint, Plan};
use super::{Bench, Touch};

/// The archived size of a [`BenchMessage`]; the same for every sequence number.
pub(crate) fn message_size() -> usize {
    rkyv::to_bytes::<rkyv::rancor::Error>(&BenchMessage::new(0))
        .map(|b| b.len())
        .unwrap_or(0)
}

fn channel_name(tag: &str, what: &str) -> String {
    format!("{tag}.{what}")
}

fn create(plan: &Plan<'_>, name: &str) -> Result<Channel<BenchMessage>, BenchError> {
    Channel::<BenchMessage>::builder(name)
        .capacity(ring_capacity(message_size()))
        .wait(plan.wait)
        .create()
        .map_err(BenchError::typed(format!("creating channel {name}")))
}

fn open(plan: &Plan<'_>, name: &str) -> Result<Channel<BenchMessage>, BenchError> {
    Channel::<BenchMessage>::builder(name)
        .wait(plan.wait)
        .open()
        .map_err(BenchError::typed(format!("opening channel {name}")))
}

fn attach<T>(name: &str, end: Result<T, ChannelError>) -> Result<T, BenchError> {
    end.map_err(BenchError::typed(format!("attaching to channel {name}")))
}

/// One end of a connected typed transport.
#[derive(Debug)]
pub(crate) struct TypedEndpoint {
    tx: Option<Sender<BenchMessage>>,
    rx: Option<Receiver<BenchMessage>>,
    /// The message to send, refilled in place.
    msg: BenchMessage,
    touch: Touch,
}

impl TypedEndpoint {
    fn new(
        tx: Option<Sender<BenchMessage>>,
        rx: Option<Receiver<BenchMessage>>,
        touch: Touch,
    ) -> Self {
        TypedEndpoint {
            tx,
            rx,
            msg: BenchMessage::new(0),
            touch,
        }
    }

    /// Whether the peer's end of every channel this end uses has attached.
    pub(crate) fn peers_attached(&self) -> bool {
        super::transport::peers_attached(
            self.tx.as_ref().map(Sender::peer),
            self.rx.as_ref().map(Receiver::peer),
        )
    }
}

impl Endpoint for TypedEndpoint {
    #[inline]
    fn send(&mut self, seq: u64) -> Result<(), BenchError> {
        let tx = self.tx.as_mut().ok_or_else(|| {
            BenchError::Usage("internal error: this end of the transport does not send".into())
        })?;
        match self.touch {
            Touch::All => self.msg.refill(seq),
            Touch::None => self.msg.seq = seq,
        }
        // `send` returns at once when there is room; when the ring is full it waits, and ends
        // with `Disconnected` if the receiver dies (the parent's stall watchdog kills a peer
        // that hangs).
        // The error's text is made only on failure: a `format!` per message would cost more
        // than the send.
        tx.send(&self.msg)
            .map_err(|e| BenchError::typed(format!("sending message {seq}"))(e))
    }

    #[inline]
    fn recv(&mut self, seq: u64) -> Result<(), BenchError> {
        let rx = self.rx.as_mut().ok_or_else(|| {
            BenchError::Usage("internal error: this end of the transport does not receive".into())
        })?;
        let msg = rx
            .recv()
            .map_err(|e| BenchError::typed(format!("receiving message {seq}"))(e))?;
        match self.touch {
            Touch::All => msg.check(seq),
            Touch::None => msg.check_seq(seq),
        }
    }
}

/// The parent's side: creates the channels and attaches its ends; the endpoint argument for
/// the peer is the name stem.
pub(crate) fn parent(plan: &Plan<'_>) -> Result<(TypedEndpoint, String), BenchError> {
    let tag = plan.tag;
    let ep = match plan.bench {
        Bench::PingPong => {
            let (ping, pong) = (channel_name(tag, "ping"), channel_name(tag, "pong"));
            let tx = attach(&ping, create(plan, &ping)?.sender())?;
            let rx = attach(&pong, create(plan, &pong)?.receiver())?;
            TypedEndpoint::new(Some(tx), Some(rx), plan.touch)
        }
        Bench::Throughput => {
            let data = channel_name(tag, "data");
            let rx = attach(&data, create(plan, &data)?.receiver())?;
            TypedEndpoint::new(None, Some(rx), plan.touch)
        }
    };
    Ok((ep, tag.to_owned()))
}

/// Waits (checking the peer) until the peer has attached its ends.
pub(crate) fn connect(
    ep: TypedEndpoint,
    alive: Alive<'_>,
) -> Result<Box<dyn Endpoint>, BenchError> {
    super::transport::wait_for("the peer to attach to the typed channels", alive, || {
        Ok(ep.peers_attached().then_some(()))
    })?;
    Ok(Box::new(ep))
}

/// The peer's side: opens the channels under the stem `endpoint`.
pub(crate) fn connect_peer(
    plan: &Plan<'_>,
    endpoint: &str,
) -> Result<Box<dyn Endpoint>, BenchError> {
    let ep = match plan.bench {
        Bench::PingPong => {
            let (ping, pong) = (
                channel_name(endpoint, "ping"),
                channel_name(endpoint, "pong"),
            );
            let rx = attach(&ping, open(plan, &ping)?.receiver())?;
            let tx = attach(&pong, open(plan, &pong)?.sender())?;
            TypedEndpoint::new(Some(tx), Some(rx), plan.touch)
        }
        Bench::Throughput => {
            let data = channel_name(endpoint, "data");
            let tx = attach(&data, open(plan, &data)?.sender())?;
            TypedEndpoint::new(Some(tx), None, plan.touch)
        }
    };
    Ok(Box::new(ep))
}
