//! The `region` transport: shmesh's versioned regions ([`shmesh_ring::region`]) as a
//! ping-pong, one region per direction.
//!
//! The parent creates two regions of `size` bytes (`<tag>.ping`, which it writes, and
//! `<tag>.pong`, which the peer writes) with the default shape (3 buffers, 4 KiB chunks) and
//! attaches as the writer of `ping` and a reader of `pong` before the peer starts; the peer
//! opens both and attaches the other way round. Message `seq` is version `seq + 1` of its
//! region (a new region is at version 0):
//!
//! 1. the sender opens a write scope, writes the message into it
//!    ([`WriteScope::bytes_mut`](shmesh_ring::region::WriteScope::bytes_mut): with `--touch
//!    all` every byte, [`fill`](super::transport::fill); with `--touch none` the sequence
//!    number only) and publishes;
//! 2. the receiver waits for that version ([`Reader::wait_for`] with the `--wait` strategy),
//!    copies a snapshot into its own buffer ([`Reader::read_into`]: all `size` bytes with
//!    `--touch all`, the sequence number's bytes only with `--touch none`), checks it is that
//!    version, then checks the message as every transport does
//!    ([`check`](super::transport::check)).
//!
//! A region keeps its latest version only: a reader slower than the writer would skip
//! versions. In a ping-pong one message is in flight at a time, so none is skipped (a skipped
//! or repeated version is an error, never a figure); a throughput over a region would count
//! versions that nobody read, so `shmesh bench throughput` refuses the transport and names
//! `pingpong` and `snapshot` instead (see [`super::snapshot`]).
//!
//! A region's writer never waits, and a reader that waits for a version does not notice by
//! itself that the writer died: both ends wait in slices of [`WAIT_SLICE`] and, between
//! them, give up when the other end's writer token is no longer held. The parent's stall
//! watchdog kills a peer that hangs, which ends the parent's wait the same way.

use std::time::Duration;

use shmesh_ring::region::{self, RegionMemory};
use shmesh_ring::{Segment, SegmentBuilder, SegmentKind, ShmRegion};

use super::error::BenchError;
use super::transport::{attach, check, write_message, Alive, Endpoint, Plan};
use super::{Bench, Touch};

/// How long one [`Reader::wait_for`](region::Reader::wait_for) call waits before the waiter
/// checks that the writer of the region it waits on is still attached.
pub(crate) const WAIT_SLICE: Duration = Duration::from_millis(100);

fn segment_error(name: &str) -> impl FnOnce(shmesh_ring::SegmentError) -> BenchError + '_ {
    move |source| BenchError::Segment {
        name: name.to_owned(),
        source,
    }
}

/// Creates the region `name` of `size` bytes, with the default shape.
pub(crate) fn create(name: &str, size: usize) -> Result<Segment, BenchError> {
    SegmentBuilder::new(name)
        .kind(SegmentKind::Region)
        .capacity(size as u64)
        .create()
        .map_err(segment_error(name))
}

/// Opens the region `name` the parent made, checking it has `size` bytes.
pub(crate) fn open(name: &str, size: usize) -> Result<Segment, BenchError> {
    SegmentBuilder::new(name)
        .kind(SegmentKind::Region)
        .capacity(size as u64)
        .open()
        .map_err(segment_error(name))
}

/// Waits until `reader` (of the region `name`) sees a version `>= version`, and returns the
/// latest version. Waits with the reader's strategy, in slices of [`WAIT_SLICE`]; between
/// slices it fails if the region's writer is gone. `seq` is the message waited for (for the
/// error).
pub(crate) fn wait_version(
    reader: &region::Reader<ShmRegion>,
    name: &str,
    version: u64,
    seq: u64,
) -> Result<u64, BenchError> {
    loop {
        match reader.wait_for(version, Some(WAIT_SLICE)) {
            Ok(latest) => return Ok(latest),
            Err(timeout) if !timeout.writer_alive => {
                return Err(BenchError::RegionWriterGone {
                    name: name.to_owned(),
                    seq,
                    latest: timeout.latest,
                })
            }
            // The writer is alive, only slow (or stalled: the parent's watchdog ends that).
            Err(_) => {}
        }
    }
}

/// One end of the region ping-pong: the writer of one region, a reader of the other.
#[derive(Debug)]
pub(crate) struct RegionEndpoint {
    tx: region::Writer<ShmRegion>,
    rx: region::Reader<ShmRegion>,
    /// The region `rx` reads, for errors.
    rx_name: String,
    /// The receiver's own buffer snapshots are copied into.
    buf: Vec<u8>,
    size: usize,
    touch: Touch,
}

impl RegionEndpoint {
    fn new(
        tx: region::Writer<ShmRegion>,
        rx: region::Reader<ShmRegion>,
        rx_name: String,
        plan: &Plan<'_>,
    ) -> Self {
        RegionEndpoint {
            tx,
            rx: rx.with_wait(plan.wait),
            rx_name,
            buf: vec![0; plan.size],
            size: plan.size,
            touch: plan.touch,
        }
    }

    /// The bytes of a message each side writes and reads: all of them, or (`--touch none`)
    /// those of the sequence number.
    #[inline]
    fn touched(&self) -> usize {
        match self.touch {
            Touch::All => self.size,
            Touch::None => self.size.min(8),
        }
    }

    /// Whether the peer has attached as the writer of the region this end reads.
    fn peer_attached(&self) -> bool {
        self.rx.memory().writer_alive()
    }
}

impl Endpoint for RegionEndpoint {
    #[inline]
    fn send(&mut self, seq: u64) -> Result<(), BenchError> {
        let n = self.touched();
        let mut scope = self.tx.write();
        write_message(scope.bytes_mut(0..n), seq, self.touch);
        let version = scope.publish();
        if version != seq + 1 {
            return Err(BenchError::Corrupt {
                seq,
                detail: format!(
                    "it was published as version {version} of its region, expected {}",
                    seq + 1
                ),
            });
        }
        Ok(())
    }

    #[inline]
    fn recv(&mut self, seq: u64) -> Result<(), BenchError> {
        let want = seq + 1;
        wait_version(&self.rx, &self.rx_name, want, seq)?;
        let n = self.touched();
        let version = self
            .rx
            .read_into(&mut self.buf[..n])
            .map_err(|e| BenchError::Corrupt {
                seq,
                detail: e.to_string(),
            })?;
        if version != want {
            return Err(BenchError::Corrupt {
                seq,
                detail: format!(
                    "the region holds version {version}, expected {want} (one message in \
                     flight: no version may be skipped)"
                ),
            });
        }
        check(&self.buf[..n], seq, n, self.touch)
    }
}

fn ping_pong_names(stem: &str) -> (String, String) {
    (format!("{stem}.ping"), format!("{stem}.pong"))
}

/// The parent's side: creates both regions and attaches as the writer of `<tag>.ping` and a
/// reader of `<tag>.pong`. The peer's endpoint argument is the name stem, `plan.tag`.
pub(crate) fn parent(plan: &Plan<'_>) -> Result<RegionEndpoint, BenchError> {
    no_throughput(plan.bench)?;
    let (ping, pong) = ping_pong_names(plan.tag);
    let tx = attach(&ping, create(&ping, plan.size)?.region_writer())?;
    let rx = attach(&pong, create(&pong, plan.size)?.region_reader())?;
    Ok(RegionEndpoint::new(tx, rx, pong, plan))
}

/// Waits (checking the peer) until the peer has attached as the writer of `<tag>.pong`: from
/// then on, its death ends the parent's waits ([`wait_version`]). It needs nothing from the
/// peer's reader of `<tag>.ping`: readers take no slot, and a version published before the
/// peer looked is still the latest when it does.
pub(crate) fn connect(
    ep: RegionEndpoint,
    alive: Alive<'_>,
) -> Result<Box<dyn Endpoint>, BenchError> {
    super::transport::wait_for(
        "the peer to attach as the writer of its region",
        alive,
        || Ok(ep.peer_attached().then_some(())),
    )?;
    Ok(Box::new(ep))
}

/// The peer's side under the stem `endpoint`: a reader of `<stem>.ping`, the writer of
/// `<stem>.pong`.
pub(crate) fn connect_peer(
    plan: &Plan<'_>,
    endpoint: &str,
) -> Result<Box<dyn Endpoint>, BenchError> {
    no_throughput(plan.bench)?;
    let (ping, pong) = ping_pong_names(endpoint);
    let rx = attach(&ping, open(&ping, plan.size)?.region_reader())?;
    let tx = attach(&pong, open(&pong, plan.size)?.region_writer())?;
    Ok(Box::new(RegionEndpoint::new(tx, rx, ping, plan)))
}

/// Why a region has no throughput, and what to measure instead.
pub(crate) const NO_THROUGHPUT: &str = "the region transport has no throughput: a region \
     keeps only its latest version, so a reader slower than the writer skips versions and a \
     rate of versions would count what nobody read; measure a region's latency with `shmesh \
     bench pingpong --transport region` and its snapshot bandwidth with `shmesh bench \
     snapshot`";

/// Fails for a throughput (see [`NO_THROUGHPUT`]).
pub(crate) fn no_throughput(bench: Bench) -> Result<(), BenchError> {
    match bench {
        Bench::PingPong => Ok(()),
        Bench::Throughput => Err(BenchError::Usage(NO_THROUGHPUT.into())),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use shmesh_ring::{BroadcastPolicy, WaitStrategy};

    use super::*;

    fn plan<'a>(tag: &'a str, size: usize, touch: Touch) -> Plan<'a> {
        Plan {
            transport: super::super::Transport::Region,
            bench: Bench::PingPong,
            size,
            wait: WaitStrategy::Spin,
            touch,
            tag,
            dir: Path::new(""),
            policy: BroadcastPolicy::Block,
            peers: 1,
        }
    }

    fn tag(test: &str) -> String {
        format!("bench-test.{}.{test}", std::process::id())
    }

    /// The objects of `tag` in /dev/shm.
    fn left(tag: &str) -> Vec<String> {
        let prefix = format!("{}{tag}.", shmesh_ring::segment::NAME_PREFIX);
        std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn messages_go_both_ways_as_versions() {
        for (size, touch) in [
            (1, Touch::All),
            (3, Touch::None),
            (64, Touch::All),
            (64, Touch::None),
            (5000, Touch::All),
        ] {
            let tag = tag(&format!("both-ways-{size}"));
            let plan = plan(&tag, size, touch);
            let mut parent = parent(&plan).unwrap();
            assert!(!parent.peer_attached(), "nobody writes pong yet");
            let mut peer = connect_peer(&plan, &tag).unwrap();
            assert!(parent.peer_attached());
            for seq in 0..20 {
                parent.send(seq).unwrap();
                peer.recv(seq).unwrap();
                peer.send(seq).unwrap();
                parent.recv(seq).unwrap();
            }
            drop((parent, peer));
            assert_eq!(left(&tag), Vec::<String>::new());
        }
    }

    #[test]
    fn a_skipped_or_wrong_version_is_an_error() {
        let tag = tag("skipped");
        let plan = plan(&tag, 64, Touch::All);
        let mut parent = parent(&plan).unwrap();
        let mut peer = connect_peer(&plan, &tag).unwrap();
        parent.send(0).unwrap();
        parent.send(1).unwrap();
        let e = peer.recv(0).unwrap_err().to_string();
        assert!(e.contains("version 2, expected 1"), "{e}");
        // The sender's side: its region is at version 2, so message 5 cannot be version 6.
        let e = parent.send(5).unwrap_err().to_string();
        assert!(e.contains("version 3 of its region, expected 6"), "{e}");
    }

    #[test]
    fn a_wait_ends_when_the_writer_is_gone() {
        let tag = tag("writer-gone");
        let name = format!("{tag}.r");
        let seg = create(&name, 64).unwrap();
        let mut writer = seg.region_writer().unwrap();
        let reader = seg
            .region_reader()
            .unwrap()
            .with_wait(WaitStrategy::futex());
        writer.write().publish();
        assert_eq!(wait_version(&reader, &name, 1, 0).unwrap(), 1);
        drop(writer);
        match wait_version(&reader, &name, 2, 1) {
            Err(BenchError::RegionWriterGone {
                name: n,
                seq: 1,
                latest: 1,
            }) => assert_eq!(n, name),
            other => panic!("{other:?}"),
        }
        drop((reader, seg));
        assert_eq!(left(&tag), Vec::<String>::new());
    }

    #[test]
    fn a_region_has_no_throughput() {
        let tag = tag("no-throughput");
        let mut p = plan(&tag, 64, Touch::All);
        p.bench = Bench::Throughput;
        let e = parent(&p).unwrap_err().to_string();
        assert!(e.contains("no throughput"), "{e}");
        assert!(connect_peer(&p, &tag).is_err());
        assert_eq!(left(&tag), Vec::<String>::new(), "nothing was created");
    }
}
