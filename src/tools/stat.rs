//! `shmesh stat NAME`: live rates of one segment from the deltas of its endpoints' counters;
//! for a region, versions per second and the chunks changed per version from its history.

use std::io::{IsTerminal, Write};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use shmesh_ring::inspect::{Decoded, EntryState, SegmentFile, Totals};

use super::view::{clean, human_bytes};
use super::{StatArgs, ToolsError};

/// One refresh of `shmesh stat --json` (see the [module docs](super) for the fields).
#[derive(Debug, Clone, Serialize)]
pub struct StatLine {
    /// Segment name.
    pub name: String,
    /// Seconds since `stat` started.
    pub t_s: f64,
    /// Seconds the rates were measured over.
    pub interval_s: f64,
    /// Messages written per second.
    pub written_msgs_per_s: f64,
    /// Payload bytes written per second.
    pub written_bytes_per_s: f64,
    /// Messages read per second (each broadcast reader counts).
    pub read_msgs_per_s: f64,
    /// Payload bytes read per second.
    pub read_bytes_per_s: f64,
    /// Records lost by lapped readers per second.
    pub dropped_per_s: f64,
    /// Waits (full or empty ring) per second.
    pub waits_per_s: f64,
    /// Messages written so far.
    pub messages: u64,
    /// Payload bytes written so far.
    pub bytes: u64,
    /// Records lost so far.
    pub dropped: u64,
    /// Bytes written and not yet read.
    pub fill_bytes: Option<u64>,
    /// `fill_bytes / capacity`.
    pub fill_ratio: Option<f64>,
    /// Endpoints a live process holds.
    pub endpoints_alive: usize,
    /// Endpoint slots ever used.
    pub endpoints: usize,
    /// Regions: the latest version.
    pub version: Option<u64>,
    /// Regions: versions published per second.
    pub versions_per_s: Option<f64>,
    /// Regions: chunks changed per version, the mean over the versions of the interval whose
    /// history entries were copied (the latest few); `null` when none was.
    pub chunks_per_version: Option<f64>,
}

/// What `stat` keeps of one refresh for the next.
#[derive(Debug, Clone, Copy)]
struct Before {
    totals: Totals,
    /// Regions: the latest version.
    version: Option<u64>,
}

impl Before {
    fn of(d: &Decoded) -> Self {
        Before {
            totals: d.totals(),
            version: d.region.as_ref().map(|r| r.latest),
        }
    }
}

/// The mean of the chunks changed by the versions after `since` that the snapshot's history
/// shows (those too long to count are left out).
fn chunks_per_version(d: &Decoded, since: u64) -> Option<f64> {
    let counts: Vec<u64> = d
        .region
        .as_ref()?
        .changes
        .iter()
        .filter(|c| c.version > since)
        .filter_map(|c| match c.state {
            EntryState::Present { changed, .. } => changed,
            _ => None,
        })
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum::<u64>() as f64 / counts.len() as f64)
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    // Counters only grow; one that went down (a scribbled slot) counts as no progress.
    now.saturating_sub(before) as f64 / secs
}

impl StatLine {
    fn new(name: &str, t: Duration, dt: Duration, before: &Before, d: &Decoded) -> Self {
        let version = d.region.as_ref().map(|r| r.latest);
        let region_before = before.version.unwrap_or(0);
        let before = &before.totals;
        let now = d.totals();
        let secs = dt.as_secs_f64().max(1e-9);
        let capacity = d.capacity();
        let fill = d.fill();
        StatLine {
            name: name.to_owned(),
            t_s: t.as_secs_f64(),
            interval_s: dt.as_secs_f64(),
            written_msgs_per_s: rate(now.written_messages, before.written_messages, secs),
            written_bytes_per_s: rate(now.written_bytes, before.written_bytes, secs),
            read_msgs_per_s: rate(now.read_messages, before.read_messages, secs),
            read_bytes_per_s: rate(now.read_bytes, before.read_bytes, secs),
            dropped_per_s: rate(now.dropped, before.dropped, secs),
            waits_per_s: rate(now.waits, before.waits, secs),
            messages: now.written_messages,
            bytes: now.written_bytes,
            dropped: now.dropped,
            fill_bytes: fill,
            fill_ratio: fill.zip(capacity).map(|(f, c)| f as f64 / c as f64),
            endpoints_alive: d.live_endpoints().count(),
            endpoints: d.endpoints.iter().filter(|e| e.is_used()).count(),
            version,
            versions_per_s: version.map(|v| rate(v, region_before, secs)),
            chunks_per_version: version.and_then(|_| chunks_per_version(d, region_before)),
        }
    }

    /// The plain line of a region: `t=2.0s version 1200 | 600 versions/s | 2.5 chunks/version
    /// | alive 1/1`.
    fn plain_region(&self, version: u64) -> String {
        let chunks = match self.chunks_per_version {
            Some(c) => format!("{c:.1}"),
            None => "-".to_owned(),
        };
        format!(
            "t={:.1}s version {version} | {:.0} versions/s | {chunks} chunks/version | alive \
             {}/{}",
            self.t_s,
            self.versions_per_s.unwrap_or(0.0),
            self.endpoints_alive,
            self.endpoints
        )
    }

    /// The plain line: `t=2.0s written 1200 msg/s 75.0 KiB/s | read 1200 msg/s 75.0 KiB/s |
    /// dropped 0/s | waits 3/s | fill 1.2% | alive 2/2`.
    fn plain(&self) -> String {
        if let Some(version) = self.version {
            return self.plain_region(version);
        }
        let per_s = |b: f64| format!("{}/s", human_bytes(b.round() as u64));
        let fill = match self.fill_ratio {
            Some(r) => format!("{:.1}%", r * 100.0),
            None => "-".to_owned(),
        };
        format!(
            "t={:.1}s written {:.0} msg/s {} | read {:.0} msg/s {} | dropped {:.0}/s | waits \
             {:.0}/s | fill {fill} | alive {}/{}",
            self.t_s,
            self.written_msgs_per_s,
            per_s(self.written_bytes_per_s),
            self.read_msgs_per_s,
            per_s(self.read_bytes_per_s),
            self.dropped_per_s,
            self.waits_per_s,
            self.endpoints_alive,
            self.endpoints
        )
    }
}

/// Runs `shmesh stat`.
pub(crate) fn run(args: &StatArgs, out: &mut impl Write) -> Result<(), ToolsError> {
    if args.interval == 0 {
        return Err(ToolsError::Interval);
    }
    let interval = Duration::from_millis(args.interval);
    let file = SegmentFile::open(&args.name)?;
    let first = file.snapshot()?.decode();
    if !first.is_valid() {
        eprintln!(
            "warning: segment '{}' has {} problem(s) (see `shmesh inspect {}`); figures may be \
             junk",
            clean(&args.name),
            first.problems.len(),
            clean(&args.name)
        );
    }
    // Rewrite one line on a terminal; one line per refresh otherwise (and always in JSON).
    let live = !args.json && std::io::stdout().is_terminal();
    let started = Instant::now();
    let (mut at, mut before) = (started, Before::of(&first));
    let mut shown = 0u64;
    let result = loop {
        if args.count.is_some_and(|n| shown >= n) {
            break Ok(());
        }
        thread::sleep(interval);
        match file.still_named() {
            Ok(true) => {}
            Ok(false) => {
                let replaced = SegmentFile::open(&args.name).is_ok();
                break Err(ToolsError::Vanished {
                    name: args.name.clone(),
                    replaced,
                });
            }
            Err(e) => break Err(e.into()),
        }
        let d = match file.snapshot() {
            Ok(s) => s.decode(),
            Err(e) => break Err(e.into()),
        };
        let now = Instant::now();
        let line = StatLine::new(&args.name, now - started, now - at, &before, &d);
        let written = if args.json {
            serde_json::to_string(&line)
                .map_err(std::io::Error::other)
                .and_then(|json| writeln!(out, "{json}"))
        } else if live {
            write!(out, "\r\x1b[2K{}", line.plain())
        } else {
            writeln!(out, "{}", line.plain())
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            break Err(e.into());
        }
        (at, before) = (now, Before::of(&d));
        shown += 1;
    };
    if live && shown > 0 {
        let _ = writeln!(out);
    }
    result
}
