//! Results of `shmesh bench`: one [`Row`] per measurement, printed as a table row or as one
//! JSON object per line.
//!
//! The JSON keys are fixed per kind of row; rows of the transports with several peer
//! processes add theirs after the common ones:
//!
//! ```text
//! {"bench":"pingpong","transport":"shm","size":64,"wait":"spin","touch":"all","samples":20000,
//!  "cl_ns":46,"p50_ns":101,"p99_ns":150,"p999_ns":400,"max_ns":9000}
//! {"bench":"throughput","transport":"shm","size":64,"wait":"spin","touch":"all","cl_ns":46,
//!  "msgs_per_s":20000000,"bytes_per_s":1280000000}
//! {"bench":"memcpy","size":1048576,"bytes_per_s":12000000000}
//! {"bench":"snapshot","transport":"memcpy","size":1048576,"cl_ns":46,"bytes_per_s":12000000000}
//! {"bench":"snapshot","transport":"region","size":1048576,"cl_ns":46,"bytes_per_s":11000000000,
//!  "vs_memcpy":0.917}
//! ```
//!
//! - mpsc throughput: `"writers":N`; `msgs_per_s` is the aggregate of the writers.
//! - broadcast throughput: `"readers":N,"policy":"block","per_reader_msgs_per_s":[..],
//!   "min_reader_msgs_per_s":M,"lost":[..]`; `msgs_per_s` is the minimum reader rate (`M`),
//!   `lost` the messages each reader lost to being lapped (always 0 under `block`).
//! - broadcast pingpong: `"policy":"block"` (or `"lap"`) after the common keys.
//! - `allreduce` and `world-pingpong` (module `world`): `{"bench":"allreduce","transport":
//!   "shmesh","ranks":2,"size":8,"iters":5000,"cl_ns":46,"p50_ns":900,"p99_ns":2000,
//!   "p999_ns":9000,"max_ns":30000}`, transport `shmesh` or `openmpi`; the bench
//!   `world-pingpong` has the same keys (its `ranks` is always 2).
//! - snapshot `region-busy`: the `region` keys, then `"interval_ns":I,"publishes_per_s":P,
//!   "snapshots":N,"retries":R` (the busy writer's interval and rate; the snapshots timed and
//!   the copies among them that the writer lapped and the reader retried).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::snapshot::SnapshotTransport;
use super::transport::Transport;
use super::{Policy, Touch, Wait};

/// Round-trip latency of one transport at one message size.
#[derive(Debug, Clone, PartialEq)]
pub struct PingPongRow {
    /// The transport.
    pub transport: Transport,
    /// Message size in bytes (each way).
    pub size: usize,
    /// The wait strategy (used by the shm ring only).
    pub wait: Wait,
    /// How much of each message was written and read.
    pub touch: Touch,
    /// Round trips recorded (after the warm-up).
    pub samples: u64,
    /// The cache-line round trip measured right before, in ns (median).
    pub cl_ns: u64,
    /// Median round trip, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Slowest round trip, ns.
    pub max_ns: u64,
    /// The broadcast rings' policy (broadcast rows only).
    pub policy: Option<Policy>,
}

impl PingPongRow {
    /// The row for round trips recorded in `hist` (nanoseconds).
    pub fn from_histogram(
        transport: Transport,
        size: usize,
        wait: Wait,
        touch: Touch,
        cl_ns: u64,
        hist: &Histogram<u64>,
    ) -> Self {
        PingPongRow {
            transport,
            size,
            wait,
            touch,
            samples: hist.len(),
            cl_ns,
            p50_ns: hist.value_at_quantile(0.5),
            p99_ns: hist.value_at_quantile(0.99),
            p999_ns: hist.value_at_quantile(0.999),
            max_ns: hist.max(),
            policy: None,
        }
    }
}

/// Streaming rate of one transport at one message size.
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputRow {
    /// The transport.
    pub transport: Transport,
    /// Message size in bytes.
    pub size: usize,
    /// The wait strategy (used by the shm ring only).
    pub wait: Wait,
    /// How much of each message was written and read.
    pub touch: Touch,
    /// Messages timed (after the warm-up): by the reader of all writers together (mpsc), by
    /// each reader (broadcast).
    pub messages: u64,
    /// The cache-line round trip measured right before, in ns (median).
    pub cl_ns: u64,
    /// Messages per second (mpsc: the writers' aggregate; broadcast: the slowest reader's).
    pub msgs_per_s: f64,
    /// Payload bytes per second.
    pub bytes_per_s: f64,
    /// The peer processes of the mpsc and broadcast transports; `None` for the others.
    pub fan: Option<Fan>,
}

/// The peer processes of a throughput row of the mpsc or broadcast transport.
#[derive(Debug, Clone, PartialEq)]
pub enum Fan {
    /// mpsc: this many writer processes into one reader.
    Writers(usize),
    /// broadcast: one writer to one reader process per entry.
    Readers {
        /// The slow-reader policy.
        policy: Policy,
        /// Each reader's rate, messages per second.
        per_reader_msgs_per_s: Vec<f64>,
        /// Messages each reader lost to being lapped (always 0 under `block`).
        lost: Vec<u64>,
    },
}

impl Fan {
    /// The extra JSON keys, each with its leading comma.
    fn json(&self) -> String {
        match self {
            Fan::Writers(n) => format!(",\"writers\":{n}"),
            Fan::Readers {
                policy,
                per_reader_msgs_per_s,
                lost,
            } => {
                let rates: Vec<String> = per_reader_msgs_per_s
                    .iter()
                    .map(|&r| rate(r).to_string())
                    .collect();
                let lost: Vec<String> = lost.iter().map(u64::to_string).collect();
                format!(
                    ",\"readers\":{},\"policy\":\"{policy}\",\"per_reader_msgs_per_s\":[{}],\
                     \"min_reader_msgs_per_s\":{},\"lost\":[{}]",
                    per_reader_msgs_per_s.len(),
                    rates.join(","),
                    rate(min_rate(per_reader_msgs_per_s)),
                    lost.join(",")
                )
            }
        }
    }

    /// The note after a table row.
    fn note(&self) -> String {
        match self {
            Fan::Writers(n) => format!("  {n} writers (aggregate)"),
            Fan::Readers {
                policy,
                per_reader_msgs_per_s,
                lost,
            } => {
                let rates: Vec<String> = per_reader_msgs_per_s
                    .iter()
                    .map(|&r| rate(r).to_string())
                    .collect();
                let lost: Vec<String> = lost.iter().map(u64::to_string).collect();
                format!(
                    "  {} readers ({policy}, slowest shown): {} msgs/s, lost {}",
                    per_reader_msgs_per_s.len(),
                    rates.join(" "),
                    lost.join(" ")
                )
            }
        }
    }
}

/// The smallest of `rates` (0 for none).
fn min_rate(rates: &[f64]) -> f64 {
    rates.iter().copied().reduce(f64::min).unwrap_or(0.0)
}

/// Single-core copy bandwidth at one size.
#[derive(Debug, Clone, PartialEq)]
pub struct MemcpyRow {
    /// Bytes per copy.
    pub size: usize,
    /// Bytes copied per second (median of several runs).
    pub bytes_per_s: f64,
}

/// Snapshot (or memcpy reference) bandwidth at one region size.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    /// memcpy (the reference), region (writer idle) or region-busy.
    pub transport: SnapshotTransport,
    /// Region size (bytes per copy).
    pub size: usize,
    /// The cache-line round trip between the reader and the writer process, measured before,
    /// in ns (median).
    pub cl_ns: u64,
    /// Bytes of completed copies per second (median of several runs).
    pub bytes_per_s: f64,
    /// `bytes_per_s` over memcpy's at the same size (`None` for memcpy itself).
    pub vs_memcpy: Option<f64>,
    /// The busy writer (region-busy only).
    pub busy: Option<BusyWriter>,
}

/// The writer of a `region-busy` snapshot row, and what it cost the reader.
#[derive(Debug, Clone, PartialEq)]
pub struct BusyWriter {
    /// The interval between two versions the writer aimed at.
    pub interval: std::time::Duration,
    /// Versions it published per second while the reader was timed.
    pub publishes_per_s: f64,
    /// Snapshots timed (all runs but the warm-up).
    pub snapshots: u64,
    /// Copies among them the writer lapped, thrown away and retried.
    pub retries: u64,
}

/// One measurement of `shmesh bench allreduce` or `world-pingpong`: latency percentiles of
/// one operation (all-reduce: the slowest rank's time of each iteration; ping-pong: the round
/// trip at rank 0).
#[derive(Debug, Clone, PartialEq)]
pub struct WorldRow {
    /// `allreduce` or `world-pingpong`.
    pub bench: &'static str,
    /// `shmesh` or `openmpi`.
    pub transport: &'static str,
    /// Ranks of the job.
    pub ranks: usize,
    /// Bytes reduced or sent each way per operation.
    pub size: usize,
    /// Operations timed (after the warm-up).
    pub iters: u64,
    /// The cache-line round trip measured right before, in ns (median).
    pub cl_ns: u64,
    /// Median, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Slowest, ns.
    pub max_ns: u64,
}

/// A ratio with three decimals (non-finite: 0).
fn ratio(value: f64) -> String {
    if value.is_finite() && value > 0.0 {
        format!("{value:.3}")
    } else {
        "0".to_owned()
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// `shmesh bench pingpong`.
    PingPong(PingPongRow),
    /// `shmesh bench throughput`.
    Throughput(ThroughputRow),
    /// `shmesh bench memcpy`.
    Memcpy(MemcpyRow),
    /// `shmesh bench snapshot`.
    Snapshot(SnapshotRow),
    /// `shmesh bench allreduce` and `world-pingpong`.
    World(WorldRow),
}

/// A JSON number for a rate: rounded to an integer (a rate is never NaN or infinite here, but
/// JSON has no spelling for those, so they become 0).
fn rate(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

impl Row {
    /// The row as one line of JSON (no trailing newline), with exactly the documented keys.
    pub fn to_json(&self) -> String {
        match self {
            Row::PingPong(r) => format!(
                "{{\"bench\":\"pingpong\",\"transport\":\"{}\",\"size\":{},\"wait\":\"{}\",\
                 \"touch\":\"{}\",\"samples\":{},\"cl_ns\":{},\"p50_ns\":{},\"p99_ns\":{},\
                 \"p999_ns\":{},\"max_ns\":{}{}}}",
                r.transport,
                r.size,
                r.wait,
                r.touch,
                r.samples,
                r.cl_ns,
                r.p50_ns,
                r.p99_ns,
                r.p999_ns,
                r.max_ns,
                r.policy
                    .map(|p| format!(",\"policy\":\"{p}\""))
                    .unwrap_or_default()
            ),
            Row::Throughput(r) => format!(
                "{{\"bench\":\"throughput\",\"transport\":\"{}\",\"size\":{},\"wait\":\"{}\",\
                 \"touch\":\"{}\",\"cl_ns\":{},\"msgs_per_s\":{},\"bytes_per_s\":{}{}}}",
                r.transport,
                r.size,
                r.wait,
                r.touch,
                r.cl_ns,
                rate(r.msgs_per_s),
                rate(r.bytes_per_s),
                r.fan.as_ref().map(Fan::json).unwrap_or_default()
            ),
            Row::Memcpy(r) => format!(
                "{{\"bench\":\"memcpy\",\"size\":{},\"bytes_per_s\":{}}}",
                r.size,
                rate(r.bytes_per_s)
            ),
            Row::Snapshot(r) => {
                let mut json = format!(
                    "{{\"bench\":\"snapshot\",\"transport\":\"{}\",\"size\":{},\"cl_ns\":{},\
                     \"bytes_per_s\":{}",
                    r.transport,
                    r.size,
                    r.cl_ns,
                    rate(r.bytes_per_s)
                );
                if let Some(vs) = r.vs_memcpy {
                    let _ = write!(json, ",\"vs_memcpy\":{}", ratio(vs));
                }
                if let Some(b) = &r.busy {
                    let _ = write!(
                        json,
                        ",\"interval_ns\":{},\"publishes_per_s\":{},\"snapshots\":{},\
                         \"retries\":{}",
                        b.interval.as_nanos(),
                        rate(b.publishes_per_s),
                        b.snapshots,
                        b.retries
                    );
                }
                json + "}"
            }
            Row::World(r) => format!(
                "{{\"bench\":\"{}\",\"transport\":\"{}\",\"ranks\":{},\"size\":{},\
                 \"iters\":{},\"cl_ns\":{},\"p50_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\
                 \"max_ns\":{}}}",
                r.bench,
                r.transport,
                r.ranks,
                r.size,
                r.iters,
                r.cl_ns,
                r.p50_ns,
                r.p99_ns,
                r.p999_ns,
                r.max_ns
            ),
        }
    }

    /// The row as a table line, aligned with [`Table::header`].
    pub fn to_table(&self) -> String {
        match self {
            Row::PingPong(r) => {
                let lat = |ns| with_ratio(ns, r.cl_ns);
                let mut row = format!(
                    "{:<11} {:>8} {:<5} {:<5} {:>8} {:>6} {:>15} {:>15} {:>15} {:>16}",
                    r.transport.name(),
                    format_size(r.size),
                    r.wait.name(),
                    r.touch.name(),
                    r.samples,
                    r.cl_ns,
                    lat(r.p50_ns),
                    lat(r.p99_ns),
                    lat(r.p999_ns),
                    lat(r.max_ns)
                );
                if let Some(policy) = r.policy {
                    let _ = write!(row, "  ({policy})");
                }
                row
            }
            Row::Throughput(r) => {
                let mut row = format!(
                    "{:<11} {:>8} {:<5} {:<5} {:>9} {:>6} {:>12} {:>10.1}",
                    r.transport.name(),
                    format_size(r.size),
                    r.wait.name(),
                    r.touch.name(),
                    r.messages,
                    r.cl_ns,
                    rate(r.msgs_per_s),
                    r.bytes_per_s / 1e6
                );
                if let Some(fan) = &r.fan {
                    row += &fan.note();
                }
                row
            }
            Row::Memcpy(r) => format!(
                "{:>7} {:>10.2} {:>14}",
                format_size(r.size),
                r.bytes_per_s / 1e9,
                rate(r.bytes_per_s)
            ),
            Row::Snapshot(r) => {
                let vs = r.vs_memcpy.map(|v| format!("{v:.2}x")).unwrap_or_default();
                let mut row = format!(
                    "{:<11} {:>8} {:>6} {:>10.2} {:>9}",
                    r.transport.name(),
                    format_size(r.size),
                    r.cl_ns,
                    r.bytes_per_s / 1e9,
                    vs
                );
                if let Some(b) = &r.busy {
                    let _ = write!(
                        row,
                        "  writer every {:?} ({} versions/s): {} snapshots, {} retries",
                        b.interval,
                        rate(b.publishes_per_s),
                        b.snapshots,
                        b.retries
                    );
                }
                row
            }
            Row::World(r) => {
                let lat = |ns| with_ratio(ns, r.cl_ns);
                format!(
                    "{:<14} {:<9} {:>5} {:>8} {:>7} {:>6} {:>15} {:>15} {:>15} {:>16}",
                    r.bench,
                    r.transport,
                    r.ranks,
                    format_size(r.size),
                    r.iters,
                    r.cl_ns,
                    lat(r.p50_ns),
                    lat(r.p99_ns),
                    lat(r.p999_ns),
                    lat(r.max_ns)
                )
            }
        }
    }
}

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Ping-pong latencies.
    PingPong,
    /// Throughput.
    Throughput,
    /// memcpy bandwidth.
    Memcpy,
    /// Snapshot bandwidth against memcpy.
    Snapshot,
    /// All-reduce and World ping-pong latencies.
    World,
}

impl Table {
    /// The header line (latency columns in ns, with the multiple of `cl_ns` in brackets).
    pub fn header(self) -> String {
        match self {
            Table::PingPong => format!(
                "{:<11} {:>8} {:<5} {:<5} {:>8} {:>6} {:>15} {:>15} {:>15} {:>16}",
                "transport",
                "size",
                "wait",
                "touch",
                "samples",
                "cl_ns",
                "p50 ns (x cl)",
                "p99 ns (x cl)",
                "p99.9 ns (x cl)",
                "max ns (x cl)"
            ),
            Table::Throughput => format!(
                "{:<11} {:>8} {:<5} {:<5} {:>9} {:>6} {:>12} {:>10}",
                "transport", "size", "wait", "touch", "messages", "cl_ns", "msgs/s", "MB/s"
            ),
            Table::Memcpy => format!("{:>7} {:>10} {:>14}", "size", "GB/s", "bytes/s"),
            Table::Snapshot => format!(
                "{:<11} {:>8} {:>6} {:>10} {:>9}",
                "transport", "size", "cl_ns", "GB/s", "vs memcpy"
            ),
            Table::World => format!(
                "{:<14} {:<9} {:>5} {:>8} {:>7} {:>6} {:>15} {:>15} {:>15} {:>16}",
                "bench",
                "transport",
                "ranks",
                "size",
                "iters",
                "cl_ns",
                "p50 ns (x cl)",
                "p99 ns (x cl)",
                "p99.9 ns (x cl)",
                "max ns (x cl)"
            ),
        }
    }
}

/// `1234 (2.7x)`: a latency and its multiple of the cache-line round trip (one decimal below
/// 100x). Without a cache-line figure, the latency alone.
pub fn with_ratio(ns: u64, cl_ns: u64) -> String {
    if cl_ns == 0 {
        return ns.to_string();
    }
    let ratio = ns as f64 / cl_ns as f64;
    let mut s = ns.to_string();
    if ratio < 100.0 {
        let _ = write!(s, " ({ratio:.1}x)");
    } else {
        let _ = write!(s, " ({ratio:.0}x)");
    }
    s
}

/// `8 B`, `4 KiB`, `1 MiB`; sizes that are not a whole number of KiB or MiB in bytes.
pub fn format_size(size: usize) -> String {
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    if size >= MIB && size % MIB == 0 {
        format!("{} MiB", size / MIB)
    } else if size >= KIB && size % KIB == 0 {
        format!("{} KiB", size / KIB)
    } else {
        format!("{size} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(json: &str) -> Vec<String> {
        // Minimal: our lines have no nested objects and no commas or colons inside strings.
        let body = json
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .expect("an object");
        body.split(',')
            .map(|kv| {
                kv.split(':')
                    .next()
                    .expect("a key")
                    .trim_matches('"')
                    .to_owned()
            })
            .collect()
    }

    fn pingpong_row() -> PingPongRow {
        PingPongRow {
            transport: Transport::Shm,
            size: 64,
            wait: Wait::Spin,
            touch: Touch::All,
            samples: 20_000,
            cl_ns: 45,
            p50_ns: 100,
            p99_ns: 180,
            p999_ns: 900,
            max_ns: 45_000,
            policy: None,
        }
    }

    #[test]
    fn pingpong_json_has_exactly_the_required_keys() {
        let json = Row::PingPong(pingpong_row()).to_json();
        assert_eq!(
            keys(&json),
            [
                "bench",
                "transport",
                "size",
                "wait",
                "touch",
                "samples",
                "cl_ns",
                "p50_ns",
                "p99_ns",
                "p999_ns",
                "max_ns"
            ]
        );
        assert_eq!(
            json,
            r#"{"bench":"pingpong","transport":"shm","size":64,"wait":"spin","touch":"all","samples":20000,"cl_ns":45,"p50_ns":100,"p99_ns":180,"p999_ns":900,"max_ns":45000}"#
        );
    }

    #[test]
    fn throughput_json_has_exactly_the_required_keys() {
        let row = Row::Throughput(ThroughputRow {
            transport: Transport::Uds,
            size: 4096,
            wait: Wait::Futex,
            touch: Touch::None,
            messages: 10,
            cl_ns: 420,
            msgs_per_s: 123_456.6,
            bytes_per_s: 505_678_643.2,
            fan: None,
        });
        let json = row.to_json();
        assert_eq!(
            keys(&json),
            [
                "bench",
                "transport",
                "size",
                "wait",
                "touch",
                "cl_ns",
                "msgs_per_s",
                "bytes_per_s"
            ]
        );
        assert!(
            json.contains(r#""msgs_per_s":123457,"bytes_per_s":505678643}"#),
            "{json}"
        );
        assert!(json.contains(r#""wait":"futex","touch":"none""#), "{json}");
    }

    fn fan_row(fan: Fan) -> ThroughputRow {
        ThroughputRow {
            transport: Transport::Broadcast,
            size: 64,
            wait: Wait::Spin,
            touch: Touch::All,
            messages: 1000,
            cl_ns: 45,
            msgs_per_s: 1_000_000.4,
            bytes_per_s: 64_000_025.6,
            fan: Some(fan),
        }
    }

    #[test]
    fn fanned_out_rows_add_their_keys_after_the_common_ones() {
        let common = [
            "bench",
            "transport",
            "size",
            "wait",
            "touch",
            "cl_ns",
            "msgs_per_s",
            "bytes_per_s",
        ];
        let mut row = fan_row(Fan::Writers(2));
        row.transport = Transport::Mpsc;
        let json = Row::Throughput(row).to_json();
        assert_eq!(keys(&json), [&common[..], &["writers"]].concat(), "{json}");
        assert!(
            json.ends_with(r#""bytes_per_s":64000026,"writers":2}"#),
            "{json}"
        );

        let row = fan_row(Fan::Readers {
            policy: Policy::Lap,
            per_reader_msgs_per_s: vec![1_500_000.2, 1_000_000.4],
            lost: vec![3, 0],
        });
        let json = Row::Throughput(row.clone()).to_json();
        assert!(
            json.ends_with(
                r#""readers":2,"policy":"lap","per_reader_msgs_per_s":[1500000,1000000],"min_reader_msgs_per_s":1000000,"lost":[3,0]}"#
            ),
            "{json}"
        );
        let table = Row::Throughput(row).to_table();
        assert!(
            table.ends_with("  2 readers (lap, slowest shown): 1500000 1000000 msgs/s, lost 3 0"),
            "{table}"
        );

        let mut ping = pingpong_row();
        ping.transport = Transport::Broadcast;
        ping.policy = Some(Policy::Block);
        let json = Row::PingPong(ping.clone()).to_json();
        assert!(
            json.ends_with(r#""max_ns":45000,"policy":"block"}"#),
            "{json}"
        );
        assert!(Row::PingPong(ping).to_table().ends_with("  (block)"));
    }

    #[test]
    fn memcpy_json_has_exactly_the_required_keys() {
        let json = Row::Memcpy(MemcpyRow {
            size: 1 << 20,
            bytes_per_s: 1.5e10,
        })
        .to_json();
        assert_eq!(
            json,
            r#"{"bench":"memcpy","size":1048576,"bytes_per_s":15000000000}"#
        );
        let nan = Row::Memcpy(MemcpyRow {
            size: 8,
            bytes_per_s: f64::NAN,
        })
        .to_json();
        assert!(nan.ends_with(r#""bytes_per_s":0}"#), "{nan}");
    }

    fn snapshot_row(transport: SnapshotTransport) -> SnapshotRow {
        SnapshotRow {
            transport,
            size: 1 << 20,
            cl_ns: 46,
            bytes_per_s: 9.3e9,
            vs_memcpy: (transport != SnapshotTransport::Memcpy).then_some(0.93),
            busy: (transport == SnapshotTransport::RegionBusy).then(|| BusyWriter {
                interval: std::time::Duration::from_micros(100),
                publishes_per_s: 9_999.6,
                snapshots: 1792,
                retries: 12,
            }),
        }
    }

    #[test]
    fn snapshot_json_has_exactly_the_required_keys() {
        let json = Row::Snapshot(SnapshotRow {
            bytes_per_s: 1e10,
            ..snapshot_row(SnapshotTransport::Memcpy)
        })
        .to_json();
        assert_eq!(
            json,
            r#"{"bench":"snapshot","transport":"memcpy","size":1048576,"cl_ns":46,"bytes_per_s":10000000000}"#
        );
        let json = Row::Snapshot(snapshot_row(SnapshotTransport::Region)).to_json();
        assert_eq!(
            json,
            r#"{"bench":"snapshot","transport":"region","size":1048576,"cl_ns":46,"bytes_per_s":9300000000,"vs_memcpy":0.930}"#
        );
        let json = Row::Snapshot(snapshot_row(SnapshotTransport::RegionBusy)).to_json();
        assert_eq!(
            keys(&json),
            [
                "bench",
                "transport",
                "size",
                "cl_ns",
                "bytes_per_s",
                "vs_memcpy",
                "interval_ns",
                "publishes_per_s",
                "snapshots",
                "retries"
            ]
        );
        assert!(
            json.starts_with(r#"{"bench":"snapshot","transport":"region-busy","#),
            "{json}"
        );
        assert!(
            json.ends_with(
                r#""interval_ns":100000,"publishes_per_s":10000,"snapshots":1792,"retries":12}"#
            ),
            "{json}"
        );
        let mut odd = snapshot_row(SnapshotTransport::Region);
        odd.vs_memcpy = Some(f64::NAN);
        assert!(Row::Snapshot(odd).to_json().ends_with(r#""vs_memcpy":0}"#));
    }

    fn world_row() -> WorldRow {
        WorldRow {
            bench: "allreduce",
            transport: "openmpi",
            ranks: 4,
            size: 1 << 20,
            iters: 256,
            cl_ns: 300,
            p50_ns: 1_500_000,
            p99_ns: 1_600_000,
            p999_ns: 1_700_000,
            max_ns: 1_800_000,
        }
    }

    #[test]
    fn world_json_has_exactly_the_required_keys() {
        let json = Row::World(world_row()).to_json();
        assert_eq!(
            json,
            r#"{"bench":"allreduce","transport":"openmpi","ranks":4,"size":1048576,"iters":256,"cl_ns":300,"p50_ns":1500000,"p99_ns":1600000,"p999_ns":1700000,"max_ns":1800000}"#
        );
        let row = WorldRow {
            bench: "world-pingpong",
            transport: "shmesh",
            ranks: 2,
            size: 8,
            ..world_row()
        };
        let json = Row::World(row).to_json();
        assert!(
            json.starts_with(
                r#"{"bench":"world-pingpong","transport":"shmesh","ranks":2,"size":8,"#
            ),
            "{json}"
        );
        let table = Row::World(world_row()).to_table();
        let header = Table::World.header();
        assert_eq!(table.len(), header.len(), "\n{header}\n{table}");
        assert!(
            table.starts_with("allreduce      openmpi       4    1 MiB"),
            "{table}"
        );
        assert!(table.contains("1500000 (5000x)"), "{table}");
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_order() {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for ns in 1..=1000u64 {
            hist.record(ns * 10).unwrap();
        }
        hist.record(1_000_000).unwrap();
        let r = PingPongRow::from_histogram(Transport::Tcp, 8, Wait::Yield, Touch::All, 50, &hist);
        assert_eq!(r.samples, 1001);
        assert!((4990..=5020).contains(&r.p50_ns), "{r:?}");
        assert!((9890..=9920).contains(&r.p99_ns), "{r:?}");
        assert!(r.p50_ns <= r.p99_ns && r.p99_ns <= r.p999_ns && r.p999_ns <= r.max_ns);
        assert!((999_000..=1_001_000).contains(&r.max_ns), "{r:?}");
    }

    #[test]
    fn latencies_show_their_multiple_of_cl() {
        assert_eq!(with_ratio(1234, 457), "1234 (2.7x)");
        assert_eq!(with_ratio(45, 45), "45 (1.0x)");
        assert_eq!(with_ratio(45_000, 45), "45000 (1000x)");
        assert_eq!(with_ratio(99, 0), "99");
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(format_size(8), "8 B");
        assert_eq!(format_size(1000), "1000 B");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(65536), "64 KiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1536), "1536 B");
    }

    #[test]
    fn table_rows_line_up_with_their_header() {
        let row = Row::PingPong(pingpong_row()).to_table();
        let header = Table::PingPong.header();
        assert_eq!(row.len(), header.len(), "\n{header}\n{row}");
        assert!(row.contains("100 (2.2x)"), "{row}");
        assert!(row.starts_with("shm"), "{row}");
        let row = Row::Throughput(ThroughputRow {
            transport: Transport::Pipe,
            size: 1 << 20,
            wait: Wait::Spin,
            touch: Touch::All,
            messages: 1000,
            cl_ns: 45,
            msgs_per_s: 2000.0,
            bytes_per_s: 2000.0 * 1048576.0,
            fan: None,
        })
        .to_table();
        assert_eq!(row.len(), Table::Throughput.header().len(), "{row}");
        assert!(row.contains("1 MiB") && row.contains("2097.2"), "{row}");
        let row = Row::Memcpy(MemcpyRow {
            size: 64,
            bytes_per_s: 1.25e10,
        })
        .to_table();
        assert_eq!(row.len(), Table::Memcpy.header().len(), "{row}");
        assert!(row.contains("12.50"), "{row}");
        let header = Table::Snapshot.header();
        for t in [SnapshotTransport::Memcpy, SnapshotTransport::Region] {
            let row = Row::Snapshot(snapshot_row(t)).to_table();
            assert_eq!(row.len(), header.len(), "\n{header}\n{row}");
            assert!(row.starts_with(t.name()) && row.contains("9.30"), "{row}");
        }
        let row = Row::Snapshot(snapshot_row(SnapshotTransport::Region)).to_table();
        assert!(row.ends_with("0.93x"), "{row}");
        let row = Row::Snapshot(snapshot_row(SnapshotTransport::RegionBusy)).to_table();
        assert!(
            row.ends_with(
                "0.93x  writer every 100µs (10000 versions/s): 1792 snapshots, 12 retries"
            ),
            "{row}"
        );
    }
}
