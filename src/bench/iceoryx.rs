//! The `iceoryx2` transport (feature `peers`): iceoryx2 publish-subscribe between the two
//! processes.
//!
//! Set up the way iceoryx2's own benchmark is (`benchmarks/publish-subscribe` in the iceoryx2
//! repository): one service per direction (`ping` and `pong`; `data` for throughput), history
//! 0, a `[u8]` slice payload of `size` bytes loaned with `loan_slice_uninit`, subscribers that
//! busy-poll `receive()`. One difference: no overflow. The publisher retries until the sample
//! is delivered, so throughput loses nothing (a lost message would fail the sanity check). The
//! subscriber buffer holds one sample for ping-pong (one message is ever in flight) and 4 MiB
//! worth of samples (2 to 256) for throughput.
//!
//! A publisher retries only while its subscriber is connected: one whose buffer fills before
//! the subscriber has connected drops samples. So in throughput the peer waits for a start
//! sample on a fourth service, `go`, which the parent sends once its subscriber is connected
//! (`update_connections`). Ping-pong needs none: one message in flight never fills a buffer.
//!
//! # Touch modes in safe Rust
//!
//! - `all`: payload `[u8]`. The sender writes every byte with `write_from_fn`, then the
//!   sequence number over the first 8; the receiver checks as for every transport
//!   ([`check`]).
//! - `none`: payload `[MaybeUninit<u8>]` with a `u64` user header. iceoryx2's benchmark sends a
//!   loan untouched through `unsafe { assume_init() }`; shmesh forbids `unsafe`, so the loan is
//!   marked written with `write_from_fn(|_| MaybeUninit::uninit())`, which stores nothing (the
//!   compiler drops stores of uninitialized bytes), and the sequence number goes in the user
//!   header, the part of a sample safe code may write and read. The receiver reads the header
//!   and the payload length.
//!
//! # Isolation and clean-up
//!
//! Each measurement has its own iceoryx2 configuration: the root directory (node and service
//! descriptions; iceoryx2's default is `/tmp/iceoryx2`) is `iox2.<n>` in the run's private
//! temporary directory, and the files iceoryx2 makes in /dev/shm start with
//! `shmesh_iox2.<pid>.<n>.`. Parallel runs cannot collide, iceoryx2 removes its files when both
//! ends drop their ports and nodes, and [`clean_up`] removes whatever a dead end left behind
//! (as does the run's signal handler). No signal handler of iceoryx2's is installed.

use std::fmt::Debug;
use std::mem::MaybeUninit;
use std::path::Path as StdPath;
use std::time::Instant;

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory as PubSub;

use super::error::BenchError;
use super::transport::{check, fill_byte, wait_for, write_seq, Alive, Endpoint, Plan};
use super::{Bench, Touch, OP_TIMEOUT};

type Svc = ipc::Service;

const LIB: &str = "iceoryx2";

/// How many receive polls between two looks at the clock.
const POLLS_PER_CLOCK_CHECK: u32 = 4096;

/// The sequence number of the start sample of throughput, on the `go` service.
const GO: u64 = u64::MAX;

fn lib<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> BenchError {
    BenchError::library(LIB, what)
}

/// The prefix of the /dev/shm files of measurement `tag` (`bench.<pid>.<n>`).
fn file_prefix(tag: &str) -> String {
    format!("shmesh_iox2.{}.", tag.strip_prefix("bench.").unwrap_or(tag))
}

/// The prefix of every /dev/shm file of the run of process `pid`.
pub(crate) fn run_prefix(pid: u32) -> String {
    format!("shmesh_iox2.{pid}.")
}

/// Where measurement `tag` keeps its iceoryx2 files: the root directory and the /dev/shm file
/// prefix. The peer gets it as its `--endpoint`, `<tag>@<root directory>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    tag: String,
    root: String,
}

impl Location {
    fn endpoint(&self) -> String {
        format!("{}@{}", self.tag, self.root)
    }

    fn parse(endpoint: &str) -> Result<Location, BenchError> {
        let (tag, root) = endpoint.split_once('@').ok_or_else(|| {
            BenchError::Usage(format!(
                "internal error: the iceoryx2 endpoint '{endpoint}' is not TAG@ROOT"
            ))
        })?;
        Ok(Location {
            tag: tag.to_owned(),
            root: root.to_owned(),
        })
    }

    /// The iceoryx2 configuration: iceoryx2's defaults with this root and prefix.
    fn config(&self) -> Result<Config, BenchError> {
        let mut config = Config::default();
        let root = Path::new(self.root.as_bytes())
            .map_err(lib(format!("using '{}' as the root directory", self.root)))?;
        config.global.set_root_path(&root);
        let prefix = file_prefix(&self.tag);
        config.global.prefix = FileName::new(prefix.as_bytes())
            .map_err(lib(format!("using the prefix '{prefix}'")))?;
        Ok(config)
    }

    fn node(&self) -> Result<Node<Svc>, BenchError> {
        NodeBuilder::new()
            .config(&self.config()?)
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<Svc>()
            .map_err(lib(format!(
                "creating a node in {} (is the directory writable?)",
                self.root
            )))
    }

    fn service_name(&self, what: &str) -> Result<ServiceName, BenchError> {
        let name = format!("shmesh/{}/{what}", self.tag);
        ServiceName::new(&name).map_err(lib(format!("naming the service '{name}'")))
    }
}

/// Samples a subscriber can hold: one for ping-pong, 4 MiB worth (2 to 256) for throughput.
fn buffer_depth(bench: Bench, size: usize) -> usize {
    match bench {
        Bench::PingPong => 1,
        Bench::Throughput => ((4 << 20) / size.max(1)).clamp(2, 256),
    }
}

/// One end: its ports, the services they belong to, and the node.
///
/// `E` is the payload element (`u8`, or `MaybeUninit<u8>` with `--touch none`), `H` the user
/// header (`()`, or the `u64` sequence number with `--touch none`).
pub(crate) struct End<E: Debug + ZeroCopySend + 'static, H: Debug + ZeroCopySend + 'static> {
    tx: Option<Publisher<Svc, [E], H>>,
    rx: Option<Subscriber<Svc, [E], H>>,
    /// The service `tx` publishes on.
    out_service: Option<PubSub<Svc, [E], H>>,
    /// The service `rx` subscribes to.
    in_service: Option<PubSub<Svc, [E], H>>,
    _node: Node<Svc>,
    size: usize,
    bench: Bench,
}

impl<E: Debug + ZeroCopySend + 'static, H: Debug + ZeroCopySend + 'static> Debug for End<E, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("iceoryx2::End")
            .field("sends", &self.tx.is_some())
            .field("receives", &self.rx.is_some())
            .field("size", &self.size)
            .finish()
    }
}

impl<E: Debug + ZeroCopySend + 'static, H: Debug + ZeroCopySend + 'static> End<E, H> {
    /// Creates (the parent) or opens (the peer) the services and makes this end's ports.
    fn new(plan: &Plan<'_>, location: &Location, parent: bool) -> Result<Self, BenchError> {
        let node = location.node()?;
        let depth = buffer_depth(plan.bench, plan.size);
        let service = |what: &str| -> Result<PubSub<Svc, [E], H>, BenchError> {
            let name = location.service_name(what)?;
            let builder = node
                .service_builder(&name)
                .publish_subscribe::<[E]>()
                .user_header::<H>()
                .max_publishers(1)
                .max_subscribers(1)
                .max_nodes(2)
                .history_size(0)
                .subscriber_max_buffer_size(depth)
                .subscriber_max_borrowed_samples(1)
                .enable_safe_overflow(false);
            if parent {
                builder
                    .create()
                    .map_err(lib(format!("creating the service '{name}'")))
            } else {
                builder
                    .open()
                    .map_err(lib(format!("opening the service '{name}'")))
            }
        };
        // Which services this end sends on and receives from.
        let (out_name, in_name) = match (plan.bench, parent) {
            (Bench::PingPong, true) => (Some("ping"), Some("pong")),
            (Bench::PingPong, false) => (Some("pong"), Some("ping")),
            (Bench::Throughput, true) => (Some("go"), Some("data")),
            (Bench::Throughput, false) => (Some("data"), Some("go")),
        };
        // The parent creates every service before the peer opens them, in this order.
        let mut out_service = None;
        let mut in_service = None;
        for name in ["ping", "pong", "data", "go"] {
            if out_name == Some(name) {
                out_service = Some(service(name)?);
            } else if in_name == Some(name) {
                in_service = Some(service(name)?);
            }
        }
        let tx = match &out_service {
            Some(s) => Some(
                s.publisher_builder()
                    .initial_max_slice_len(plan.size)
                    .max_loaned_samples(1)
                    .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                    .create()
                    .map_err(lib("creating the publisher"))?,
            ),
            None => None,
        };
        let rx = match &in_service {
            Some(s) => Some(
                s.subscriber_builder()
                    .buffer_size(depth)
                    .create()
                    .map_err(lib("creating the subscriber"))?,
            ),
            None => None,
        };
        Ok(End {
            tx,
            rx,
            out_service,
            in_service,
            _node: node,
            size: plan.size,
            bench: plan.bench,
        })
    }

    /// Connects this end's subscriber to the publishers there are now.
    fn connect_subscriber(&self) -> Result<(), BenchError> {
        match &self.rx {
            Some(rx) => rx
                .update_connections()
                .map_err(lib("connecting the subscriber")),
            None => Ok(()),
        }
    }

    /// Whether the peer's ports exist: a subscriber on the service this end publishes on, a
    /// publisher on the one it subscribes to.
    fn peer_attached(&self) -> bool {
        let out = self
            .out_service
            .as_ref()
            .is_none_or(|s| s.dynamic_config().number_of_subscribers() > 0);
        let inp = self
            .in_service
            .as_ref()
            .is_none_or(|s| s.dynamic_config().number_of_publishers() > 0);
        out && inp
    }

    fn publisher(&self) -> Result<&Publisher<Svc, [E], H>, BenchError> {
        self.tx.as_ref().ok_or_else(|| {
            BenchError::Usage("internal error: this end of the transport does not send".into())
        })
    }

    /// The next sample, busy-polling; a timeout after [`OP_TIMEOUT`] without one (iceoryx2
    /// does not tell a subscriber that its publisher died).
    #[inline]
    fn receive(&self) -> Result<Sample<Svc, [E], H>, BenchError> {
        let rx = self.rx.as_ref().ok_or_else(|| {
            BenchError::Usage("internal error: this end of the transport does not receive".into())
        })?;
        let mut polls = 0u32;
        let mut since: Option<Instant> = None;
        loop {
            if let Some(sample) = rx.receive().map_err(lib("receiving a sample"))? {
                return Ok(sample);
            }
            polls = polls.wrapping_add(1);
            if polls % POLLS_PER_CLOCK_CHECK == 0 {
                let start = *since.get_or_insert_with(Instant::now);
                if start.elapsed() > OP_TIMEOUT {
                    return Err(BenchError::Timeout {
                        what: "an iceoryx2 sample from the peer",
                        waited: OP_TIMEOUT,
                    });
                }
            }
            std::hint::spin_loop();
        }
    }
}

/// `--touch all`: a `[u8]` payload, every byte written.
type AllEnd = End<u8, ()>;
/// `--touch none`: an unwritten payload and the sequence number in the user header.
type NoneEnd = End<MaybeUninit<u8>, u64>;

impl Endpoint for AllEnd {
    #[inline]
    fn send(&mut self, seq: u64) -> Result<(), BenchError> {
        let loan = self
            .publisher()?
            .loan_slice_uninit(self.size)
            .map_err(lib("loaning a sample"))?;
        let byte = fill_byte(seq);
        let mut sample = loan.write_from_fn(|_| byte);
        write_seq(sample.payload_mut(), seq);
        sample.send().map_err(lib("sending a sample"))?;
        Ok(())
    }

    #[inline]
    fn recv(&mut self, seq: u64) -> Result<(), BenchError> {
        let sample = self.receive()?;
        check(sample.payload(), seq, self.size, Touch::All)
    }
}

impl Endpoint for NoneEnd {
    #[inline]
    fn send(&mut self, seq: u64) -> Result<(), BenchError> {
        let loan = self
            .publisher()?
            .loan_slice_uninit(self.size)
            .map_err(lib("loaning a sample"))?;
        let mut sample = loan.write_from_fn(|_| MaybeUninit::uninit());
        *sample.user_header_mut() = seq;
        sample.send().map_err(lib("sending a sample"))?;
        Ok(())
    }

    #[inline]
    fn recv(&mut self, seq: u64) -> Result<(), BenchError> {
        let sample = self.receive()?;
        let len = sample.payload().len();
        if len != self.size {
            return Err(BenchError::Corrupt {
                seq,
                detail: format!("it is {len} bytes long, expected {}", self.size),
            });
        }
        let found = *sample.user_header();
        if found != seq {
            return Err(BenchError::Corrupt {
                seq,
                detail: format!("its user header holds sequence number {found}"),
            });
        }
        Ok(())
    }
}

/// The parent's side, made before the peer starts: node, services and the parent's ports.
#[derive(Debug)]
pub(crate) enum Setup {
    /// `--touch all`.
    All(AllEnd),
    /// `--touch none`.
    None(NoneEnd),
}

impl Setup {
    /// Whether the peer's ports exist and this end's subscriber is connected to them.
    fn ready(&self) -> bool {
        match self {
            Setup::All(end) => end.peer_attached() && end.connect_subscriber().is_ok(),
            Setup::None(end) => end.peer_attached() && end.connect_subscriber().is_ok(),
        }
    }

    /// Creates the services of `plan` under a root directory in the run's private directory;
    /// returns the setup and the peer's `--endpoint`.
    pub(crate) fn new(plan: &Plan<'_>) -> Result<(Setup, String), BenchError> {
        let n = plan.tag.rsplit('.').next().unwrap_or(plan.tag);
        let root = dir_arg(&plan.dir.join(format!("iox2.{n}")))?;
        let location = Location {
            tag: plan.tag.to_owned(),
            root,
        };
        let setup = match plan.touch {
            Touch::All => Setup::All(End::new(plan, &location, true)?),
            Touch::None => Setup::None(End::new(plan, &location, true)?),
        };
        Ok((setup, location.endpoint()))
    }

    /// Waits (bounded, checking the peer) until the peer's ports exist and this end's
    /// subscriber is connected to them; in throughput, then sends the peer its start sample.
    pub(crate) fn connect(self, alive: Alive<'_>) -> Result<Box<dyn Endpoint>, BenchError> {
        let bench = match &self {
            Setup::All(end) => end.bench,
            Setup::None(end) => end.bench,
        };
        wait_for("the peer to open the iceoryx2 services", alive, || {
            Ok(self.ready().then_some(()))
        })?;
        let mut end: Box<dyn Endpoint> = match self {
            Setup::All(end) => Box::new(end),
            Setup::None(end) => Box::new(end),
        };
        if bench == Bench::Throughput {
            end.send(GO)?;
        }
        Ok(end)
    }
}

/// iceoryx2 wants a directory path ending in a separator.
fn dir_arg(path: &StdPath) -> Result<String, BenchError> {
    let text = path.to_str().ok_or_else(|| {
        BenchError::Usage(format!(
            "the temporary path {} is not UTF-8: set TMPDIR to a plain directory",
            path.display()
        ))
    })?;
    Ok(format!("{text}/"))
}

/// The peer's end: opens the services the parent made and makes the peer's ports.
pub(crate) fn connect_peer(
    plan: &Plan<'_>,
    endpoint: &str,
) -> Result<Box<dyn Endpoint>, BenchError> {
    let location = Location::parse(endpoint)?;
    let mut end: Box<dyn Endpoint> = match plan.touch {
        Touch::All => Box::new(AllEnd::new(plan, &location, false)?),
        Touch::None => Box::new(NoneEnd::new(plan, &location, false)?),
    };
    if plan.bench == Bench::Throughput {
        // Bounded: a receive times out after OP_TIMEOUT.
        end.recv(GO)?;
    }
    Ok(end)
}

/// Removes the /dev/shm files of measurement `tag` that iceoryx2 left (none when both ends
/// ended normally).
pub(crate) fn clean_up(tag: &str) {
    remove_shm_files(&file_prefix(tag));
}

/// Removes the files in /dev/shm whose names start with `prefix`.
pub(crate) fn remove_shm_files(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(prefix))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_carries_tag_and_root() {
        let location = Location {
            tag: "bench.12.3".into(),
            root: "/tmp/shmesh-bench.12.0/iox2.3/".into(),
        };
        let endpoint = location.endpoint();
        assert_eq!(endpoint, "bench.12.3@/tmp/shmesh-bench.12.0/iox2.3/");
        assert_eq!(Location::parse(&endpoint).unwrap(), location);
        assert!(Location::parse("no-separator").is_err());
        assert_eq!(file_prefix("bench.12.3"), "shmesh_iox2.12.3.");
        assert!(file_prefix("bench.12.3").starts_with(&run_prefix(12)));
        location.config().unwrap();
    }

    #[test]
    fn buffers_hold_four_mib_for_throughput() {
        assert_eq!(buffer_depth(Bench::PingPong, 8), 1);
        assert_eq!(buffer_depth(Bench::Throughput, 64), 256);
        assert_eq!(buffer_depth(Bench::Throughput, 65536), 64);
        assert_eq!(buffer_depth(Bench::Throughput, 1 << 20), 4);
        assert_eq!(buffer_depth(Bench::Throughput, 64 << 20), 2);
    }
}
