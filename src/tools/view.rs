//! What the tools show of a segment: the JSON records of `shmesh ls --json` and the human
//! table, built from a decoded snapshot ([`shmesh_ring::inspect`]).
//!
//! Everything shown comes from memory other processes write: text is shown with control
//! characters escaped (a hostile schema text cannot drive the terminal), numbers as found.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use shmesh_ring::inspect::{Decoded, Endpoint, EndpointStatus, InspectError, Role, SegmentFile};
use shmesh_ring::{BroadcastPolicy, SegmentError, SegmentKind};

/// One line of `shmesh ls --json`: one segment (see the [module docs](super) for the fields).
#[derive(Debug, Clone, Serialize)]
pub struct SegmentView {
    /// The segment name (after the `shmesh.` prefix).
    pub name: String,
    /// The file in `/dev/shm`.
    pub file: String,
    /// Whether the segment decodes without any problem.
    pub valid: bool,
    /// Why the object could not be read at all.
    pub error: Option<String>,
    /// Every problem found, `field: message`.
    pub problems: Vec<String>,
    /// `spsc`, `probe`, `mpsc`, `broadcast`, `region`, or `unknown`.
    pub kind: Option<String>,
    /// The kind code of the header.
    pub kind_code: Option<u32>,
    /// The message type's description; `bytes` for byte rings.
    pub message_type: Option<String>,
    /// The schema fingerprint, 64 hex digits.
    pub fingerprint: Option<String>,
    /// Data capacity in bytes (when usable; rings only).
    pub capacity: Option<u64>,
    /// Bytes written and not yet read.
    pub fill_bytes: Option<u64>,
    /// `fill_bytes / capacity`.
    pub fill_ratio: Option<f64>,
    /// Object size in bytes.
    pub size: Option<u64>,
    /// Owner of the object.
    pub owner_uid: Option<u32>,
    /// Permission bits, octal.
    pub mode: Option<String>,
    /// Whether some process holds the segment's "in use" lock.
    pub in_use: Option<bool>,
    /// Pid of the creator (display only).
    pub creator_pid: Option<u32>,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: Option<u64>,
    /// Seconds since creation.
    pub age_s: Option<f64>,
    /// Broadcast rings: `block` or `lap`.
    pub policy: Option<String>,
    /// Broadcast rings: how many of the last records a late joiner may ask for (the history
    /// table less its slack). Regions: how many versions the change history covers.
    pub history: Option<u32>,
    /// Regions: the latest published version.
    pub version: Option<u64>,
    /// Regions: bytes of the region (of one version).
    pub region_size: Option<u64>,
    /// Messages written so far (producer and writers).
    pub messages: u64,
    /// Payload bytes written so far.
    pub bytes: u64,
    /// Messages read so far (consumer and readers).
    pub read_messages: u64,
    /// Payload bytes read so far.
    pub read_bytes: u64,
    /// Records lost by lapped readers.
    pub dropped: u64,
    /// Endpoints a live process holds.
    pub endpoints_alive: usize,
    /// Every endpoint slot that was ever used.
    pub endpoints: Vec<EndpointView>,
}

/// One endpoint in `shmesh ls --json`.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// Slot index.
    pub slot: usize,
    /// `producer`, `consumer`, `writer`, `reader` or `unused`.
    pub role: String,
    /// Pid of its process (display only: in that process's pid namespace).
    pub pid: u32,
    /// `alive`, `dead`, `closed`, `free` or `unknown`.
    pub status: String,
    /// Whether a live process holds the slot's liveness token.
    pub alive: bool,
    /// Messages written or read through the slot.
    pub messages: u64,
    /// Payload bytes of those.
    pub bytes: u64,
    /// Times the ring was full (writers) or empty (readers).
    pub waits: u64,
    /// Records lost to being lapped.
    pub dropped: u64,
    /// Broadcast readers: next position to read.
    pub cursor: Option<u64>,
    /// How many endpoints attached to this slot so far.
    pub attach_count: u64,
}

impl EndpointView {
    pub(crate) fn of(e: &Endpoint) -> Self {
        EndpointView {
            slot: e.index,
            role: e.role.to_string(),
            pid: e.pid,
            status: e.status().to_string(),
            alive: e.is_alive(),
            messages: e.messages,
            bytes: e.bytes,
            waits: e.waits,
            dropped: e.dropped,
            cursor: (e.role == Role::Reader).then_some(e.cursor),
            attach_count: e.attach_count,
        }
    }
}

/// The short name of a kind code.
pub(crate) fn kind_name(kind: Option<SegmentKind>) -> &'static str {
    match kind {
        Some(SegmentKind::SpscRing) => "spsc",
        Some(SegmentKind::Probe) => "probe",
        Some(SegmentKind::MpscRing) => "mpsc",
        Some(SegmentKind::BroadcastRing) => "broadcast",
        Some(SegmentKind::Region) => "region",
        None => "unknown",
    }
}

/// The message type as the segment describes it: its text, `bytes` for a byte ring, or the
/// start of the fingerprint.
pub(crate) fn message_type(d: &Decoded) -> Option<String> {
    let h = d.header.as_ref()?;
    let text = d.schema.as_ref().map(|s| s.text.as_str()).unwrap_or("");
    Some(if !text.is_empty() {
        text.to_owned()
    } else if h.schema == [0; 4] {
        "bytes".to_owned()
    } else {
        format!("fingerprint {}", &hex(&h.schema)[..16])
    })
}

/// Words as hex digits, most significant first within each word.
pub(crate) fn hex(words: &[u64]) -> String {
    words.iter().fold(String::new(), |mut s, w| {
        let _ = write!(s, "{w:016x}");
        s
    })
}

/// Time since `created_unix_ns` (zero for a time in the future).
pub(crate) fn age(created_unix_ns: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(Duration::from_nanos(created_unix_ns))
}

impl SegmentView {
    /// The view of a segment that could be read.
    pub fn of(file: &SegmentFile, d: &Decoded) -> Self {
        let header = d.header.as_ref();
        let totals = d.totals();
        let capacity = d.capacity();
        let fill = d.fill();
        SegmentView {
            name: file.name().to_owned(),
            file: file.path(),
            valid: d.is_valid(),
            error: None,
            problems: d.problems.iter().map(ToString::to_string).collect(),
            kind: header.map(|_| kind_name(d.kind).to_owned()),
            kind_code: header.map(|h| h.kind),
            message_type: message_type(d),
            fingerprint: header.map(|h| hex(&h.schema)),
            capacity,
            fill_bytes: fill,
            fill_ratio: fill.zip(capacity).map(|(f, c)| f as f64 / c as f64),
            size: Some(d.file_size),
            owner_uid: Some(file.owner()),
            mode: Some(format!("{:04o}", file.mode())),
            in_use: d.in_use,
            creator_pid: header.map(|h| h.creator_pid),
            created_unix_ns: header.map(|h| h.created_unix_ns),
            age_s: header
                .filter(|h| h.magic != 0)
                .map(|h| age(h.created_unix_ns).as_secs_f64()),
            policy: d.policy.map(|p: BroadcastPolicy| p.to_string()),
            history: match d.kind {
                Some(SegmentKind::BroadcastRing) => header
                    .map(|h| shmesh_ring::broadcast::history_records(h.history as usize) as u32),
                Some(SegmentKind::Region) => d.region.as_ref().map(|r| r.history),
                _ => None,
            },
            version: d.region.as_ref().map(|r| r.latest),
            region_size: d.region.as_ref().map(|r| r.size),
            messages: totals.written_messages,
            bytes: totals.written_bytes,
            read_messages: totals.read_messages,
            read_bytes: totals.read_bytes,
            dropped: totals.dropped,
            endpoints_alive: d.live_endpoints().count(),
            endpoints: d
                .endpoints
                .iter()
                .filter(|e| e.is_used())
                .map(EndpointView::of)
                .collect(),
        }
    }

    /// The view of an object that could not be read (or whose name shmesh cannot have made).
    pub fn unreadable(name: &str, error: &InspectError, name_error: Option<&SegmentError>) -> Self {
        let mut problems = Vec::new();
        if let Some(e) = name_error {
            problems.push(format!("name: {e}"));
        }
        SegmentView {
            name: name.to_owned(),
            file: format!(
                "{}/{}{name}",
                shmesh_ring::inspect::SHM_DIR,
                shmesh_ring::segment::NAME_PREFIX
            ),
            valid: false,
            error: Some(error.to_string()),
            problems,
            kind: None,
            kind_code: None,
            message_type: None,
            fingerprint: None,
            capacity: None,
            fill_bytes: None,
            fill_ratio: None,
            size: None,
            owner_uid: match error {
                InspectError::PermissionDenied { owner, .. } => Some(*owner),
                _ => None,
            },
            mode: None,
            in_use: None,
            creator_pid: None,
            created_unix_ns: None,
            age_s: None,
            policy: None,
            history: None,
            version: None,
            region_size: None,
            messages: 0,
            bytes: 0,
            read_messages: 0,
            read_bytes: 0,
            dropped: 0,
            endpoints_alive: 0,
            endpoints: Vec::new(),
        }
    }
}

/// `text` with control characters (and the escape character) escaped, for a terminal.
pub(crate) fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Widest TYPE cell of the `ls` table (the whole text is in `--json` and `inspect`).
const TYPE_WIDTH: usize = 40;

/// `text` cut to `width` characters, the cut marked with `…`.
pub(crate) fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// `n` bytes in binary units: `512 B`, `64 KiB`, `1.5 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration in two units at most: `45s`, `3m12s`, `2h03m`, `4d02h`.
pub(crate) fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The ENDPOINTS cell: each used endpoint (`producer 123 alive`), or a count per role when
/// there are many.
fn endpoints_cell(v: &SegmentView) -> String {
    if v.endpoints.is_empty() {
        return "none attached".to_owned();
    }
    if v.endpoints.len() <= 3 {
        return v
            .endpoints
            .iter()
            .map(|e| format!("{} {} {}", e.role, e.pid, e.status))
            .collect::<Vec<_>>()
            .join(", ");
    }
    let mut parts = Vec::new();
    for role in ["producer", "consumer", "writer", "reader", "unused"] {
        let of_role: Vec<&EndpointView> = v.endpoints.iter().filter(|e| e.role == role).collect();
        if of_role.is_empty() {
            continue;
        }
        let alive = of_role.iter().filter(|e| e.alive).count();
        parts.push(format!(
            "{} {role}{} ({alive} alive)",
            of_role.len(),
            if of_role.len() > 1 { "s" } else { "" }
        ));
    }
    parts.join(", ")
}

/// The human table of `shmesh ls`. A VERSION column (after FILL) appears when a region is
/// listed; a region's CAPACITY is its size, its FILL, MESSAGES and BYTES are `-`.
pub(crate) fn table(views: &[SegmentView]) -> String {
    let regions = views.iter().any(|v| v.version.is_some());
    let mut header = vec![
        "NAME",
        "KIND",
        "TYPE",
        "CAPACITY",
        "FILL",
        "MESSAGES",
        "BYTES",
        "AGE",
        "ENDPOINTS",
    ];
    if regions {
        header.insert(5, "VERSION");
    }
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let region = v.kind.as_deref() == Some("region");
            let status = if let Some(error) = &v.error {
                format!("unreadable: {error}")
            } else if !v.valid {
                let first = v.problems.first().cloned().unwrap_or_default();
                match v.problems.len() {
                    1 => format!("INVALID: {first}"),
                    n => format!("INVALID: {first} (+{} more; shmesh inspect)", n - 1),
                }
            } else {
                endpoints_cell(v)
            };
            let mut row = vec![
                clean(&v.name),
                v.kind.clone().unwrap_or_else(dash),
                v.message_type
                    .as_deref()
                    .map(|t| shorten(&clean(t), TYPE_WIDTH))
                    .unwrap_or_else(dash),
                v.capacity
                    .or(v.region_size)
                    .map(human_bytes)
                    .unwrap_or_else(dash),
                v.fill_ratio
                    .map(|r| format!("{:.1}%", r * 100.0))
                    .unwrap_or_else(dash),
                if v.kind.is_some() && !region {
                    v.messages.to_string()
                } else {
                    dash()
                },
                if v.kind.is_some() && !region {
                    human_bytes(v.bytes)
                } else {
                    dash()
                },
                v.age_s
                    .map(|s| human_age(Duration::try_from_secs_f64(s).unwrap_or_default()))
                    .unwrap_or_else(dash),
                clean(&status),
            ];
            if regions {
                row.insert(5, v.version.map(|n| n.to_string()).unwrap_or_else(dash));
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// How an endpoint is listed by `rm` and `gc`: `producer (slot 0, pid 123)`.
pub(crate) fn endpoint_label(e: &Endpoint) -> String {
    format!("{} (slot {}, pid {})", e.role, e.index, e.pid)
}

/// Why a segment can go, for `gc`: what its endpoints were, or what is wrong with it.
pub(crate) fn removal_reason(d: &Decoded) -> String {
    if d.header.as_ref().is_some_and(|h| h.magic == 0) {
        return "never initialized (its creator died while creating it), and no process holds it"
            .to_owned();
    }
    if !d.is_valid() {
        let first = d
            .problems
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        return format!("invalid ({}), and no process holds it", clean(&first));
    }
    let used: Vec<String> = d
        .endpoints
        .iter()
        .filter(|e| e.is_used())
        .map(|e| {
            let status = match e.status() {
                EndpointStatus::Dead => "dead",
                EndpointStatus::Closed => "closed",
                other => return format!("{} pid {} {other}", e.role, e.pid),
            };
            format!("{} pid {} {status}", e.role, e.pid)
        })
        .collect();
    if used.is_empty() {
        "no process holds it, no endpoint ever attached".to_owned()
    } else {
        format!("no process holds it ({})", used.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_ages_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(65536), "64 KiB");
        assert_eq!(human_bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384 PiB");
        assert_eq!(human_age(Duration::from_secs(45)), "45s");
        assert_eq!(human_age(Duration::from_secs(192)), "3m12s");
        assert_eq!(human_age(Duration::from_secs(7380)), "2h03m");
        assert_eq!(human_age(Duration::from_secs(4 * 86400 + 7200)), "4d02h");
        assert_eq!(shorten("abcdef", 6), "abcdef");
        assert_eq!(shorten("abcdefg", 6), "abcde…");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(clean("plain::Type"), "plain::Type");
        let hostile = clean("evil\x1b[2J\x07type\n");
        assert!(!hostile.chars().any(char::is_control), "{hostile}");
        assert!(hostile.contains("evil") && hostile.contains("type"));
    }
}
