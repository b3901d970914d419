//! The `ipc-channel` transport (feature `peers`): servo's ipc-channel, sending the typed
//! [`BenchMessage`] through serde and bincode.
//!
//! One channel per direction, `IpcSender<BenchMessage>` / `IpcReceiver<BenchMessage>`. The
//! parent makes an `IpcOneShotServer` before it starts the peer and passes its name as the
//! peer's `--endpoint`; the peer connects to it, makes the channels and sends the parent its
//! ends ([`Hello`]). `accept` has no timeout: the parent waits for it on a thread, under a
//! deadline and checking the peer, and on failure releases the thread by connecting to its own
//! server.
//!
//! Per message: with `--touch all` the sender refills the message in place
//! ([`BenchMessage::refill`]) and the receiver checks every field ([`BenchMessage::check`]);
//! with `--touch none` only `seq` is set and checked, but serde still encodes and decodes the
//! whole message. `IpcSender::send` takes the message by value and the receiver gets a freshly
//! decoded one: in ping-pong each side sends back the message it received (no allocation but
//! the decoder's), in throughput the sender clones its message for every send.
//!
//! A receive blocks in the kernel until a message comes or the other end closes (a dead
//! process closes its end): the stall watchdog ends any other wait.

use ipc_channel::ipc::{self, IpcError, IpcOneShotServer, IpcReceiver, IpcSender};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::error::BenchError;
use super::message::BenchMessage;
use super::transport::{Alive, Endpoint, Plan};
use super::{Bench, Touch, OP_TIMEOUT};

const LIB: &str = "ipc-channel";

fn lib<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> BenchError {
    BenchError::library(LIB, what)
}

/// The encoded size of a [`BenchMessage`] (bincode, as ipc-channel sends it); the same for
/// every sequence number.
pub(crate) fn message_size() -> usize {
    bincode::serialized_size(&BenchMessage::new(0))
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

/// What the peer sends the parent through the one-shot server.
#[derive(serde::Serialize, serde::Deserialize)]
enum Hello {
    /// The parent's ends of the channels.
    Channels {
        /// Parent to peer (ping-pong only).
        to_peer: Option<IpcSender<BenchMessage>>,
        /// Peer to parent.
        from_peer: IpcReceiver<BenchMessage>,
    },
    /// Sent by the parent to its own server to end a pending `accept`.
    Cancel,
}

/// One end of a connected ipc-channel transport.
#[derive(Debug)]
struct IpcEndpoint {
    tx: Option<IpcSender<BenchMessage>>,
    rx: Option<IpcReceiver<BenchMessage>>,
    /// The message to send next: the one last received (ping-pong), reused.
    spare: Option<BenchMessage>,
    /// What the sender clones when it has no spare message (throughput).
    template: BenchMessage,
    touch: Touch,
}

impl IpcEndpoint {
    fn new(
        tx: Option<IpcSender<BenchMessage>>,
        rx: Option<IpcReceiver<BenchMessage>>,
        touch: Touch,
    ) -> Self {
        IpcEndpoint {
            tx,
            rx,
            spare: None,
            template: BenchMessage::new(0),
            touch,
        }
    }
}

fn send_error(seq: u64) -> impl FnOnce(bincode::Error) -> BenchError {
    move |e| match *e {
        bincode::ErrorKind::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            BenchError::Closed { seq }
        }
        _ => lib(format!("sending message {seq}"))(e),
    }
}

impl Endpoint for IpcEndpoint {
    #[inline]
    fn send(&mut self, seq: u64) -> Result<(), BenchError> {
        let tx = self.tx.as_ref().ok_or_else(|| {
            BenchError::Usage("internal error: this end of the transport does not send".into())
        })?;
        let mut msg = match self.spare.take() {
            Some(msg) => msg,
            None => self.template.clone(),
        };
        match self.touch {
            Touch::All => msg.refill(seq),
            Touch::None => msg.seq = seq,
        }
        tx.send(msg).map_err(send_error(seq))
    }

    #[inline]
    fn recv(&mut self, seq: u64) -> Result<(), BenchError> {
        let rx = self.rx.as_ref().ok_or_else(|| {
            BenchError::Usage("internal error: this end of the transport does not receive".into())
        })?;
        let msg = rx.recv().map_err(|e| match e {
            IpcError::Disconnected => BenchError::Closed { seq },
            e => lib(format!("receiving message {seq}"))(e),
        })?;
        match self.touch {
            Touch::All => msg.check(seq)?,
            Touch::None => msg.check_seq(seq)?,
        }
        self.spare = Some(msg);
        Ok(())
    }
}

/// The parent's side before the peer starts: the one-shot server.
pub(crate) struct Setup {
    server: IpcOneShotServer<Hello>,
    name: String,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ipc::Setup")
            .field("name", &self.name)
            .finish()
    }
}

impl Setup {
    /// Makes the one-shot server; returns it and its name, the peer's `--endpoint`.
    pub(crate) fn new() -> Result<(Setup, String), BenchError> {
        let (server, name) =
            IpcOneShotServer::new().map_err(lib("creating the one-shot server"))?;
        Ok((
            Setup {
                server,
                name: name.clone(),
            },
            name,
        ))
    }

    /// Accepts the peer's connection (bounded, checking the peer) and takes its channels.
    pub(crate) fn connect(
        self,
        plan: &Plan<'_>,
        alive: Alive<'_>,
    ) -> Result<Box<dyn Endpoint>, BenchError> {
        let Setup { server, name } = self;
        let (done_tx, done_rx) = mpsc::channel();
        let acceptor = std::thread::Builder::new()
            .name("bench-ipc-accept".into())
            .spawn(move || {
                let _ = done_tx.send(server.accept().map(|(_, hello)| hello));
            })
            .map_err(BenchError::io("starting the ipc-channel accept thread"))?;
        let start = Instant::now();
        let outcome = loop {
            match done_rx.recv_timeout(Duration::from_millis(10)) {
                Ok(result) => break result.map_err(lib("accepting the peer's connection")),
                Err(RecvTimeoutError::Disconnected) => {
                    break Err(BenchError::Usage(
                        "internal error: the ipc-channel accept thread ended without a result"
                            .into(),
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {
                    let failure = match alive() {
                        Err(e) => Some(e),
                        Ok(()) if start.elapsed() > OP_TIMEOUT => Some(BenchError::Timeout {
                            what: "the peer to connect to the ipc-channel one-shot server",
                            waited: OP_TIMEOUT,
                        }),
                        Ok(()) => None,
                    };
                    if let Some(e) = failure {
                        // Release `accept` with a connection of our own, then report.
                        if let Ok(tx) = IpcSender::<Hello>::connect(name.clone()) {
                            let _ = tx.send(Hello::Cancel);
                        }
                        break Err(e);
                    }
                }
            }
        };
        if outcome.is_err() {
            // The cancel (or the late peer) ends `accept` at once; should neither get through,
            // the thread is left blocked and ends with the process.
            let _ = done_rx.recv_timeout(Duration::from_secs(1));
        }
        if outcome.is_ok() || acceptor.is_finished() {
            let _ = acceptor.join();
        }
        match outcome? {
            Hello::Channels { to_peer, from_peer } => {
                if plan.bench == Bench::PingPong && to_peer.is_none() {
                    return Err(BenchError::Corrupt {
                        seq: 0,
                        detail: "the peer sent no channel for the parent's messages".into(),
                    });
                }
                Ok(Box::new(IpcEndpoint::new(
                    to_peer,
                    Some(from_peer),
                    plan.touch,
                )))
            }
            Hello::Cancel => Err(BenchError::Corrupt {
                seq: 0,
                detail: "the one-shot server got a cancel instead of the peer's channels".into(),
            }),
        }
    }
}

/// The peer's end: connects to the parent's one-shot server named `endpoint`, makes the
/// channels and sends the parent its ends.
pub(crate) fn connect_peer(
    plan: &Plan<'_>,
    endpoint: &str,
) -> Result<Box<dyn Endpoint>, BenchError> {
    let hello = IpcSender::<Hello>::connect(endpoint.to_owned()).map_err(lib(format!(
        "connecting to the parent's one-shot server {endpoint}"
    )))?;
    let (to_peer, from_parent) = match plan.bench {
        Bench::PingPong => {
            let (tx, rx) = ipc::channel().map_err(lib("creating a channel"))?;
            (Some(tx), Some(rx))
        }
        Bench::Throughput => (None, None),
    };
    let (to_parent, from_peer) = ipc::channel().map_err(lib("creating a channel"))?;
    hello
        .send(Hello::Channels { to_peer, from_peer })
        .map_err(lib("sending the channels to the parent"))?;
    Ok(Box::new(IpcEndpoint::new(
        Some(to_parent),
        from_parent,
        plan.touch,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_about_one_kib() {
        assert_eq!(message_size(), 1017);
    }

    #[test]
    fn messages_cross_a_channel_and_are_checked() {
        let (tx, rx) = ipc::channel().unwrap();
        let (tx_back, rx_back) = ipc::channel().unwrap();
        let mut a = IpcEndpoint::new(Some(tx), Some(rx_back), Touch::All);
        let mut b = IpcEndpoint::new(Some(tx_back), Some(rx), Touch::All);
        for seq in 0..5 {
            a.send(seq).unwrap();
            b.recv(seq).unwrap();
            b.send(seq).unwrap();
            a.recv(seq).unwrap();
        }
        a.send(9).unwrap();
        let err = b.recv(10).unwrap_err().to_string();
        assert!(err.contains("sequence number 9"), "{err}");
        drop(a);
        assert!(matches!(b.recv(11), Err(BenchError::Closed { seq: 11 })));
    }
}
