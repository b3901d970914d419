//! Throughput with several peer processes: the `mpsc` transport (`--writers` writer processes
//! into the parent, which reads) and the `broadcast` transport (the parent writes to
//! `--readers` reader processes).
//!
//! # How a measurement runs
//!
//! The parent creates the ring (`<tag>.data`, one endpoint slot per peer) and attaches its end,
//! then starts the N peers with the same plumbing as the single peer of the other transports
//! ([`Peer`]: same binary, dies with its parent, stderr captured), each pinned to a CPU of its
//! own when there are enough (peer `i` on the `1 + i mod (cpus - 1)`-th CPU the run may use,
//! the parent on the first). The parent talks to them through a line protocol on their stdin
//! and stdout:
//!
//! 1. Each peer attaches its end (an MPSC writer, or a broadcast reader joined before the
//!    first record) and prints `ready`. The parent waits for every one, under a deadline and
//!    checking that each still runs, then checks the ring agrees (every reader joined).
//! 2. **Cache-line probe.** The parent tells peer 0 `probe` and takes `cl_ns` with it, as for
//!    the other transports, while the other peers sleep in a blocking read (so they leave the
//!    CPUs alone).
//! 3. **Start barrier.** The parent tells every peer `go`, one after the other (a few
//!    microseconds apart), and everyone runs.
//!
//! Every message carries its writer id and sequence number in its first 8 bytes ([`tag`]:
//! the id in the top 16 bits, the sequence number below); with `--touch all` the rest is
//! filled as for the other transports, and the reader reads one word of every cache line.
//! Every reader checks each writer's messages arrive in order and exactly once ([`Tally`]):
//! a duplicate, a reordering, a message from a writer that does not exist or (but for a
//! lapped broadcast reader) a lost message is an error, never a figure.
//!
//! Each writer sends `warmup + measured` messages. Each reader times what it receives
//! ([`Clock`]): from the end of the warm-up (which also covers the peers' start-up skew) to
//! the receipt of its last message, and its rate is the messages it received in between over
//! that time. The MPSC reader's warm-up ends at its `writers x warmup`-th message; a broadcast
//! reader's at the writer's last warm-up message (or, lapped past it, the first one after it).
//!
//! - *mpsc*: the parent is the reader; the row's rate is the aggregate of the writers.
//! - *broadcast*: each reader process times itself and prints `result MEASURED NS LOST` before
//!   it exits; the row gives each reader's rate, and its `msgs_per_s` is the minimum: the rate
//!   every reader kept up with. Under `--policy lap` a reader that falls a ring behind loses
//!   records: it counts them, checks its count against the ring's, and its rate is what it
//!   received.
//!
//! A peer that dies or fails is an error, as is one that stalls (the watchdog then kills all
//! of them). The ring's name is removed when the parent's handles drop, whatever happened.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use shmesh_ring::broadcast::{self, Start};
use shmesh_ring::{mpsc, BroadcastPolicy, CacheLineProbe, PeerState, SegmentKind, ShmMemory};

use super::error::BenchError;
use super::process::{Peer, Watchdog};
use super::report::{Fan, Row, ThroughputRow};
use super::rings::{create_broadcast, create_mpsc, open};
use super::transport::{attach, touch, write_message, Plan, Transport};
use super::{measure_cl, Bench, Ctx, PeerArgs, Touch, OP_TIMEOUT, STALL};

/// The smallest message of a fanned-out throughput: the 8 bytes of [`tag`].
pub(super) const MIN_SIZE: usize = 8;

/// Bits of the first word that hold the sequence number; the writer id is above them.
const SEQ_BITS: u32 = 48;
/// The largest sequence number a message can carry.
const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

/// The first word of message `seq` of writer `writer`.
#[inline]
pub(crate) fn tag(writer: usize, seq: u64) -> u64 {
    debug_assert!(seq <= MAX_SEQ && writer < 1 << (64 - SEQ_BITS));
    ((writer as u64) << SEQ_BITS) | seq
}

/// The writer id and sequence number in a message's first word.
#[inline]
pub(crate) fn untag(word: u64) -> (usize, u64) {
    ((word >> SEQ_BITS) as usize, word & MAX_SEQ)
}

/// Warm-up and measured messages per writer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counts {
    /// Not timed.
    pub(super) warmup: u64,
    /// Timed.
    pub(super) measured: u64,
}

/// One reader's check of what it receives: every writer's messages in order, each exactly
/// once; with `gaps_allowed` (a lapped broadcast reader), messages may be missing, and are
/// counted.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Per writer, the sequence number of its next message.
    next: Vec<u64>,
    /// Messages each writer sends.
    total: u64,
    size: usize,
    touch: Touch,
    gaps_allowed: bool,
    /// Messages received.
    received: u64,
    /// Messages found missing (only with `gaps_allowed`).
    missing: u64,
    /// Writers whose last message was received.
    complete: usize,
}

impl Tally {
    pub(crate) fn new(
        writers: usize,
        total: u64,
        size: usize,
        touch: Touch,
        gaps_allowed: bool,
    ) -> Self {
        Tally {
            next: vec![0; writers],
            total,
            size,
            touch,
            gaps_allowed,
            received: 0,
            missing: 0,
            complete: 0,
        }
    }

    /// Checks the message in `buf` and counts it; returns its sequence number.
    ///
    /// # Errors
    ///
    /// [`BenchError::Corrupt`] when it has the wrong length, names a writer that does not
    /// exist, repeats or reorders a writer's messages, or (without `gaps_allowed`) skips one.
    #[inline]
    pub(crate) fn accept(&mut self, buf: &[u8]) -> Result<u64, BenchError> {
        if buf.len() != self.size {
            return Err(BenchError::Corrupt {
                seq: self.received,
                detail: format!(
                    "message {} received is {} bytes long, expected {}",
                    self.received,
                    buf.len(),
                    self.size
                ),
            });
        }
        let mut head = [0u8; 8];
        head.copy_from_slice(&buf[..8]);
        let (writer, seq) = untag(u64::from_le_bytes(head));
        let Some(next) = self.next.get_mut(writer) else {
            return Err(BenchError::Corrupt {
                seq,
                detail: format!(
                    "it names writer {writer}, but there are {} writers",
                    self.next.len()
                ),
            });
        };
        let expected = *next;
        if seq != expected {
            let why = if seq < expected {
                "a duplicate or a reordering"
            } else if seq >= self.total {
                "beyond the last message"
            } else if self.gaps_allowed {
                ""
            } else {
                "messages were lost"
            };
            if !why.is_empty() {
                return Err(BenchError::Corrupt {
                    seq: expected,
                    detail: format!(
                        "writer {writer}'s next message is {expected}, but message {seq} came \
                         ({why})"
                    ),
                });
            }
            self.missing += seq - expected;
        }
        *next = seq + 1;
        if *next == self.total {
            self.complete += 1;
        }
        self.received += 1;
        if self.touch == Touch::All {
            std::hint::black_box(touch(buf));
        }
        Ok(seq)
    }

    /// Whether every writer's last message was received.
    #[inline]
    pub(crate) fn done(&self) -> bool {
        self.complete == self.next.len()
    }

    /// Messages received.
    #[inline]
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Messages found missing.
    pub(crate) fn missing(&self) -> u64 {
        self.missing
    }
}

/// A reader's clock: started after the warm-up ([`start_if`](Self::start_if)), stopped at
/// the last message.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    /// When it started, and the messages received then.
    start: Option<(Instant, u64)>,
}

/// What a reader timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Timed {
    /// Messages received while the clock ran.
    pub(crate) messages: u64,
    /// How long it ran.
    pub(crate) elapsed: Duration,
}

impl Timed {
    /// Messages per second (0 when nothing was timed).
    pub(crate) fn rate(self) -> f64 {
        if self.messages == 0 {
            return 0.0;
        }
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Clock {
    /// Called after each message with the count received so far: starts the clock the first
    /// time `warm` (the warm-up is over) holds.
    #[inline]
    pub(crate) fn start_if(&mut self, warm: bool, received: u64) {
        if warm && self.start.is_none() {
            self.start = Some((Instant::now(), received));
        }
    }

    /// Stops the clock after the last message (`received` in all).
    pub(crate) fn stop(&self, received: u64) -> Timed {
        let now = Instant::now();
        match self.start {
            Some((at, then)) => Timed {
                messages: received - then,
                elapsed: now - at,
            },
            None => Timed {
                messages: 0,
                elapsed: Duration::ZERO,
            },
        }
    }
}

/// What a broadcast reader process reports on its last line of stdout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ReaderResult {
    /// What it timed.
    pub(crate) timed: Timed,
    /// Messages it lost to being lapped.
    pub(crate) lost: u64,
}

impl ReaderResult {
    /// `result MEASURED NS LOST`.
    pub(crate) fn to_line(self) -> String {
        format!(
            "result {} {} {}",
            self.timed.messages,
            self.timed.elapsed.as_nanos(),
            self.lost
        )
    }

    /// Parses [`to_line`](Self::to_line).
    pub(crate) fn parse(line: &str) -> Option<ReaderResult> {
        let mut words = line.split_ascii_whitespace();
        if words.next()? != "result" {
            return None;
        }
        let mut number = || words.next()?.parse::<u64>().ok();
        let (messages, ns, lost) = (number()?, number()?, number()?);
        Some(ReaderResult {
            timed: Timed {
                messages,
                elapsed: Duration::from_nanos(ns),
            },
            lost,
        })
    }
}

/// Warns, once per run, when a fanned-out throughput puts more busy processes than CPUs.
pub(super) fn warn_if_oversubscribed(ctx: &Ctx, measurements: &[(usize, Transport)]) {
    let Some(peers) = measurements
        .iter()
        .filter(|(_, t)| t.fans_out(ctx.bench))
        .map(|&(_, t)| ctx.peers_of(t))
        .max()
    else {
        return;
    };
    let cpus = ctx.cpus.len().max(1);
    if peers + 1 > cpus {
        let spin = if ctx.wait == super::Wait::Spin {
            ": a waiting process that spins burns the time slice the one it waits for needs, \
             and the figures measure the scheduler as much as the ring; compare with --wait \
             futex or yield"
        } else {
            ""
        };
        eprintln!(
            "warning: the mpsc/broadcast throughput runs {} busy processes on {cpus} CPUs, so \
             the peers share CPUs{spin}",
            peers + 1
        );
    }
}

/// The parent's end of the ring.
enum ParentEnd {
    /// MPSC: the consumer.
    Reader(mpsc::Consumer<ShmMemory>),
    /// Broadcast: the writer.
    Writer(broadcast::Writer<ShmMemory>),
}

/// What the parent measured itself.
struct ParentRun {
    cl_ns: u64,
    /// MPSC: what the parent's reader timed.
    timed: Option<Timed>,
}

/// One fanned-out throughput measurement: sets the ring up, starts the peers, runs the parent's
/// side, collects the peers and makes the row.
pub(super) fn measure(
    ctx: &Ctx,
    plan: &Plan<'_>,
    probe: &mut CacheLineProbe,
    probe_name: &str,
    counts: Counts,
    bar: &ProgressBar,
    label: String,
) -> Result<Row, BenchError> {
    let n = plan.peers;
    let total = counts.warmup + counts.measured;
    if total > MAX_SEQ {
        return Err(BenchError::Usage(format!(
            "--iters is too large for the {} throughput: at most {MAX_SEQ} messages per writer",
            plan.transport
        )));
    }
    let data = format!("{}.data", plan.tag);
    let mut end = match plan.transport {
        Transport::Mpsc => {
            let mut rx = attach(&data, create_mpsc(&data, plan.size, n)?.mpsc_consumer())?;
            rx.set_wait_strategy(plan.wait);
            ParentEnd::Reader(rx)
        }
        Transport::Broadcast => {
            let seg = create_broadcast(&data, plan.size, n, plan.policy)?;
            let mut tx = attach(&data, seg.broadcast_writer())?;
            tx.set_wait_strategy(plan.wait);
            ParentEnd::Writer(tx)
        }
        other => {
            return Err(BenchError::Usage(format!(
                "internal error: {other} does not fan out"
            )))
        }
    };
    let mut peers = Vec::with_capacity(n);
    for index in 0..n {
        let mut args = vec![
            "__bench-peer".to_owned(),
            format!("--bench={}", Bench::Throughput),
            format!("--transport={}", plan.transport),
            format!("--size={}", plan.size),
            format!("--wait={}", ctx.wait),
            format!("--touch={}", ctx.touch),
            format!("--messages={total}"),
            format!("--warmup={}", counts.warmup),
            format!("--endpoint={}", plan.tag),
            format!("--parent={}", ctx.pid),
            format!("--peers={n}"),
            format!("--index={index}"),
            format!("--policy={}", ctx.policy),
        ];
        if index == 0 {
            args.push(format!("--probe={probe_name}"));
        }
        if ctx.cpus.len() >= 2 {
            args.push(format!(
                "--cpu={}",
                ctx.cpus[1 + index % (ctx.cpus.len() - 1)]
            ));
        }
        // On failure, dropping `peers` kills and reaps those already started.
        peers.push(Peer::spawn_piped(&args)?);
    }
    let outcome = parent_side(plan, &mut end, probe, &mut peers, counts, bar, label);
    let failed = outcome.is_err();
    let mut peer_error = None;
    let mut lines = Vec::with_capacity(n);
    for peer in &mut peers {
        match peer.finish(failed) {
            Ok(()) => lines.push(peer.last_line()),
            Err(e) => {
                peer_error.get_or_insert(e);
            }
        }
    }
    // The parent's end lives until every peer is finished (see `super::measure`).
    drop(end);
    let run = match (outcome, peer_error) {
        (Ok(run), None) => run,
        // The watchdog killed the peers: that is the story, not their deaths.
        (Err(e @ BenchError::Stalled(_)), _) => return Err(e),
        // When a peer failed, its error is the cause; the parent's is a consequence.
        (_, Some(peer_error)) => return Err(peer_error),
        (Err(e), None) => return Err(e),
    };
    let row = |msgs_per_s: f64, messages: u64, fan: Fan| {
        Row::Throughput(ThroughputRow {
            transport: plan.transport,
            size: plan.size,
            wait: ctx.wait,
            touch: ctx.touch,
            messages,
            cl_ns: run.cl_ns,
            msgs_per_s,
            bytes_per_s: msgs_per_s * plan.size as f64,
            fan: Some(fan),
        })
    };
    match run.timed {
        Some(timed) => Ok(row(timed.rate(), timed.messages, Fan::Writers(n))),
        None => {
            let mut results = Vec::with_capacity(n);
            for (index, line) in lines.into_iter().enumerate() {
                let result = line
                    .as_deref()
                    .and_then(ReaderResult::parse)
                    .ok_or_else(|| BenchError::PeerFailed {
                        status: format!(
                            "(reader {index}) exited without its result (its last line was \
                             {line:?})"
                        ),
                        stderr: String::new(),
                    })?;
                if plan.policy == BroadcastPolicy::Block && result.lost != 0 {
                    return Err(BenchError::Corrupt {
                        seq: 0,
                        detail: format!(
                            "reader {index} lost {} messages under the block policy",
                            result.lost
                        ),
                    });
                }
                results.push(result);
            }
            let per_reader: Vec<f64> = results.iter().map(|r| r.timed.rate()).collect();
            let min = per_reader.iter().copied().fold(f64::INFINITY, f64::min);
            let fan = Fan::Readers {
                policy: ctx.policy,
                per_reader_msgs_per_s: per_reader,
                lost: results.iter().map(|r| r.lost).collect(),
            };
            Ok(row(min, counts.measured, fan))
        }
    }
}

/// The parent's side: waits for the peers, takes the probe, releases them, and reads
/// (MPSC) or writes (broadcast) every message.
fn parent_side(
    plan: &Plan<'_>,
    end: &mut ParentEnd,
    probe: &mut CacheLineProbe,
    peers: &mut [Peer],
    counts: Counts,
    bar: &ProgressBar,
    label: String,
) -> Result<ParentRun, BenchError> {
    let n = peers.len();
    for peer in peers.iter_mut() {
        let line = peer.expect_line("a peer process to attach to the ring", OP_TIMEOUT)?;
        if line != "ready" {
            return Err(BenchError::Usage(format!(
                "internal error: a peer said '{line}', expected 'ready'"
            )));
        }
    }
    match end {
        ParentEnd::Writer(tx) if tx.live_readers() != n => {
            return Err(BenchError::Usage(format!(
                "internal error: {} of the {n} reader processes joined the broadcast ring",
                tx.live_readers()
            )));
        }
        ParentEnd::Reader(rx) if rx.peer() != PeerState::Alive => {
            return Err(BenchError::Usage(
                "internal error: no writer process attached to the mpsc ring".into(),
            ));
        }
        _ => {}
    }
    let first = peers
        .first_mut()
        .ok_or_else(|| BenchError::Usage("internal error: no peer process".into()))?;
    first.tell("probe")?;
    let cl_ns = measure_cl(probe, first)?;

    let total = counts.warmup + counts.measured;
    let expected = match end {
        ParentEnd::Reader(_) => n as u64 * total,
        ParentEnd::Writer(_) => total,
    };
    let ticker = bar.clone();
    let watchdog = Watchdog::start(STALL, peers.iter().map(Peer::pid).collect(), move |done| {
        ticker.set_message(format!("{label} {}%", done * 100 / expected.max(1)));
    })?;
    let progress = watchdog.progress();
    for peer in peers.iter_mut() {
        peer.tell("go")?;
    }
    let result = match end {
        ParentEnd::Reader(rx) => read_mpsc(rx, plan, n, counts, progress).map(|timed| ParentRun {
            cl_ns,
            timed: Some(timed),
        }),
        ParentEnd::Writer(tx) => {
            write_broadcast(tx, plan, total, progress).map(|()| ParentRun { cl_ns, timed: None })
        }
    };
    if watchdog.stalled() {
        return Err(BenchError::Stalled(STALL));
    }
    result
}

/// The MPSC reader: every message of `writers` writers, checked and timed.
fn read_mpsc(
    rx: &mut mpsc::Consumer<ShmMemory>,
    plan: &Plan<'_>,
    writers: usize,
    counts: Counts,
    progress: &AtomicU64,
) -> Result<Timed, BenchError> {
    let total = counts.warmup + counts.measured;
    let mut tally = Tally::new(writers, total, plan.size, plan.touch, false);
    let mut clock = Clock::default();
    let warmup = writers as u64 * counts.warmup;
    while !tally.done() {
        // Waits with the wait strategy; ends with `PeerGone` once every writer is gone, and
        // the stall watchdog kills writers that hang.
        let record = rx.read().map_err(BenchError::Read)?;
        tally.accept(&record)?;
        drop(record);
        clock.start_if(tally.received() >= warmup, tally.received());
        progress.store(tally.received(), Ordering::Relaxed);
    }
    Ok(clock.stop(tally.received()))
}

/// The broadcast writer (writer id 0): `total` messages.
fn write_broadcast(
    tx: &mut broadcast::Writer<ShmMemory>,
    plan: &Plan<'_>,
    total: u64,
    progress: &AtomicU64,
) -> Result<(), BenchError> {
    for seq in 0..total {
        // Block: waits for the slowest live reader; Lap: never waits.
        let mut grant = tx.claim(plan.size).map_err(BenchError::Claim)?;
        write_message(&mut grant, tag(0, seq), plan.touch);
        grant.commit(plan.size);
        progress.store(seq + 1, Ordering::Relaxed);
    }
    Ok(())
}

/// Prints `line` on stdout for the parent.
fn say(line: &str) -> Result<(), BenchError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(BenchError::io("writing to the parent"))
}

/// The peer's side of the start barrier: says `ready`, answers the probe if told to, and
/// returns at `go`.
fn barrier(args: &PeerArgs) -> Result<(), BenchError> {
    say("ready")?;
    let mut input = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        line.clear();
        let read = input
            .read_line(&mut line)
            .map_err(BenchError::io("reading the parent's commands"))?;
        if read == 0 {
            return Err(BenchError::Usage(
                "the parent closed the start barrier before the start (it failed or stopped)"
                    .into(),
            ));
        }
        match line.trim() {
            "probe" => {
                let name = args.probe.as_deref().ok_or_else(|| {
                    BenchError::Usage("internal error: the peer was given no --probe".into())
                })?;
                let probe = CacheLineProbe::open(name).map_err(|source| BenchError::Segment {
                    name: name.to_owned(),
                    source,
                })?;
                probe.serve(OP_TIMEOUT).map_err(BenchError::Probe)?;
            }
            "go" => return Ok(()),
            other => {
                return Err(BenchError::Usage(format!(
                    "internal error: the parent said '{other}'"
                )))
            }
        }
    }
}

/// A peer process of a fanned-out throughput: an MPSC writer or a broadcast reader.
pub(super) fn run_peer(args: &PeerArgs, plan: &Plan<'_>) -> Result<(), BenchError> {
    let data = format!("{}.data", args.endpoint);
    let total = args.messages;
    match plan.transport {
        Transport::Mpsc => {
            let mut tx = attach(&data, open(&data, SegmentKind::MpscRing)?.mpsc_writer())?;
            tx.set_wait_strategy(plan.wait);
            barrier(args)?;
            for seq in 0..total {
                // Waits with the wait strategy while the ring is full; `PeerGone` if the
                // reader dies.
                let mut grant = tx.claim(plan.size).map_err(BenchError::Claim)?;
                write_message(&mut grant, tag(args.index, seq), plan.touch);
                grant.commit(plan.size);
            }
            Ok(())
        }
        Transport::Broadcast => {
            let seg = open(&data, SegmentKind::BroadcastRing)?;
            let mut rx = attach(&data, seg.broadcast_reader(Start::Latest))?;
            rx.set_wait_strategy(plan.wait);
            let lap = plan.policy == BroadcastPolicy::Lap;
            barrier(args)?;
            let mut tally = Tally::new(1, total, plan.size, plan.touch, lap);
            let mut clock = Clock::default();
            // The clock starts at the last warm-up message, or (lapped past it) the first
            // message after it.
            let last_warmup = args.warmup.saturating_sub(1);
            while !tally.done() {
                let seq = match rx.read() {
                    Ok(record) => tally.accept(&record)?,
                    // The reader now stands at the oldest intact record; the gap shows in the
                    // sequence numbers, and is checked against the ring's count below.
                    Err(broadcast::ReadError::Lapped { .. }) if lap => continue,
                    Err(e) => return Err(BenchError::BroadcastRead(e)),
                };
                clock.start_if(seq >= last_warmup, tally.received());
            }
            let timed = clock.stop(tally.received());
            if tally.missing() != rx.lost() {
                return Err(BenchError::Corrupt {
                    seq: total,
                    detail: format!(
                        "{} messages were missing, but the ring reported {} lost",
                        tally.missing(),
                        rx.lost()
                    ),
                });
            }
            say(&ReaderResult {
                timed,
                lost: rx.lost(),
            }
            .to_line())
        }
        other => Err(BenchError::Usage(format!(
            "internal error: {other} does not fan out"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::transport::fill;

    fn message(writer: usize, seq: u64, size: usize) -> Vec<u8> {
        let mut buf = vec![0u8; size];
        fill(&mut buf, tag(writer, seq));
        buf
    }

    #[test]
    fn tags_round_trip() {
        assert_eq!(untag(tag(0, 0)), (0, 0));
        assert_eq!(untag(tag(3, 12345)), (3, 12345));
        assert_eq!(untag(tag(63, MAX_SEQ)), (63, MAX_SEQ));
    }

    #[test]
    fn tally_takes_interleaved_writers_in_order() {
        let mut t = Tally::new(2, 3, 64, Touch::All, false);
        for (w, seq) in [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2), (1, 2)] {
            assert!(!t.done());
            t.accept(&message(w, seq, 64)).unwrap();
        }
        assert!(t.done());
        assert_eq!(t.received(), 6);
        assert_eq!(t.missing(), 0);
    }

    #[test]
    fn tally_refuses_duplicates_gaps_strangers_and_wrong_lengths() {
        let mut t = Tally::new(2, 10, 16, Touch::None, false);
        t.accept(&message(0, 0, 16)).unwrap();
        let dup = t.accept(&message(0, 0, 16)).unwrap_err().to_string();
        assert!(dup.contains("duplicate"), "{dup}");
        let gap = t.accept(&message(1, 1, 16)).unwrap_err().to_string();
        assert!(gap.contains("lost"), "{gap}");
        let stranger = t.accept(&message(2, 0, 16)).unwrap_err().to_string();
        assert!(stranger.contains("writer 2"), "{stranger}");
        let beyond = t.accept(&message(1, 10, 16)).unwrap_err().to_string();
        assert!(beyond.contains("beyond"), "{beyond}");
        assert!(t.accept(&message(1, 0, 15)).is_err());
    }

    #[test]
    fn a_lapped_tally_counts_what_is_missing() {
        let mut t = Tally::new(1, 10, 8, Touch::All, true);
        t.accept(&message(0, 0, 8)).unwrap();
        t.accept(&message(0, 4, 8)).unwrap();
        assert!(t.accept(&message(0, 4, 8)).is_err(), "still no duplicates");
        t.accept(&message(0, 9, 8)).unwrap();
        assert!(t.done());
        assert_eq!((t.received(), t.missing()), (3, 7));
    }

    #[test]
    fn the_clock_starts_after_the_warmup() {
        let mut c = Clock::default();
        c.start_if(false, 1);
        assert!(c.start.is_none());
        c.start_if(true, 2);
        c.start_if(true, 3);
        let timed = c.stop(10);
        assert_eq!(timed.messages, 8);
        assert!(timed.rate() > 0.0);
        assert_eq!(Clock::default().stop(3).rate(), 0.0);
    }

    #[test]
    fn reader_results_round_trip_as_lines() {
        let r = ReaderResult {
            timed: Timed {
                messages: 900,
                elapsed: Duration::from_nanos(123_456),
            },
            lost: 7,
        };
        assert_eq!(r.to_line(), "result 900 123456 7");
        assert_eq!(ReaderResult::parse(&r.to_line()), Some(r));
        assert_eq!(ReaderResult::parse("ready"), None);
        assert_eq!(ReaderResult::parse("result 1 2"), None);
    }
}
