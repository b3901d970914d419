//! `shmesh inspect NAME`: every field of a segment, decoded, with its problems next to it.

use std::fmt::Write as _;

use serde::Serialize;
use shmesh_ring::inspect::{Decoded, Endpoint, EntryState, Problem, Region, SegmentFile};
use shmesh_ring::layout::{MAGIC, MAX_REGION_BUFFERS, REGION_WRITING};
use shmesh_ring::SegmentKind;

use super::view::{age, clean, hex, human_age, human_bytes, kind_name, message_type};

/// `shmesh inspect --json`: the whole decoding of one segment.
#[derive(Debug, Clone, Serialize)]
pub struct InspectView {
    /// Segment name.
    pub name: String,
    /// The file in `/dev/shm`.
    pub file: String,
    /// Object size in bytes.
    pub size: u64,
    /// Owner of the object.
    pub owner_uid: u32,
    /// Permission bits, octal.
    pub mode: String,
    /// Whether some process holds the "in use" lock.
    pub in_use: Option<bool>,
    /// Whether no position moved while the copy was taken (position checks ran).
    pub settled: bool,
    /// Whether no problem was found.
    pub valid: bool,
    /// Everything wrong.
    pub problems: Vec<ProblemView>,
    /// The header, when the object holds one.
    pub header: Option<HeaderView>,
    /// The schema block, when the object holds one.
    pub schema: Option<SchemaView>,
    /// The ring control block, when the object holds one.
    pub control: Option<ControlView>,
    /// The broadcast block of the many-endpoint kinds.
    pub broadcast: Option<BroadcastView>,
    /// A region's control block and latest history.
    pub region: Option<RegionView>,
    /// Every endpoint slot decoded.
    pub endpoints: Vec<SlotView>,
}

/// A problem: the field and what is wrong.
#[derive(Debug, Clone, Serialize)]
pub struct ProblemView {
    /// The field concerned.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The header, field by field.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderView {
    /// Magic, hex.
    pub magic: String,
    /// Layout version.
    pub layout_version: u32,
    /// Kind code.
    pub kind_code: u32,
    /// Kind name (`unknown` for an unknown code).
    pub kind: String,
    /// Object size the creator made.
    pub total_size: u64,
    /// Data capacity.
    pub capacity: u64,
    /// Data offset.
    pub data_offset: u64,
    /// Creator pid.
    pub creator_pid: u32,
    /// Endpoint slots.
    pub slot_count: u32,
    /// Creator start time, clock ticks since boot.
    pub creator_start_time: u64,
    /// Creation time, ns since the epoch.
    pub created_unix_ns: u64,
    /// Schema fingerprint, hex.
    pub schema: String,
    /// Broadcast policy code.
    pub policy: u32,
    /// Broadcast history length.
    pub history: u32,
    /// Reserved words.
    pub reserved: [u64; 3],
}

/// The schema block.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaView {
    /// The message type's description.
    pub text: String,
    /// Openers refused for another type.
    pub rejections: u64,
    /// Last refused opener's pid.
    pub rejected_pid: u32,
    /// Its fingerprint, hex.
    pub rejected_schema: String,
    /// Its description.
    pub rejected_text: String,
}

/// The ring control block.
#[derive(Debug, Clone, Serialize)]
pub struct ControlView {
    /// Tail position.
    pub tail: u64,
    /// Head position.
    pub head: u64,
    /// Bytes written and not yet read.
    pub fill_bytes: Option<u64>,
    /// Consumer parked word.
    pub consumer_parked: u32,
    /// Producer parked word.
    pub producer_parked: u32,
}

/// The broadcast block.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastView {
    /// Writer's intent.
    pub tail_intent: u64,
    /// Block limit.
    pub limit: u64,
    /// Records published.
    pub published: u64,
    /// First position.
    pub start: u64,
}

/// A region (`shmesh inspect --json`): its control block as found, the shape re-derived from
/// its parameters, its writer and the change history of its latest versions.
#[derive(Debug, Clone, Serialize)]
pub struct RegionView {
    /// The latest published version.
    pub latest: u64,
    /// The buffer that holds it (`latest % buffers`), when the shape is valid.
    pub latest_buffer: Option<usize>,
    /// The oldest version `changes_since` lists changes from, when the shape is valid.
    pub oldest_changes: Option<u64>,
    /// Bytes of the region.
    pub size: u64,
    /// Number of buffers.
    pub buffers: u32,
    /// Bytes per change-tracking chunk.
    pub chunk_size: u32,
    /// Versions of change history.
    pub history: u32,
    /// Words per history entry.
    pub entry_words: u32,
    /// Offset of buffer 0.
    pub buffer_offset: u64,
    /// Distance between buffers.
    pub stride: u64,
    /// The shape re-derived from size, buffers, chunk size and history (`null`: one of them
    /// is out of range).
    pub shape: Option<ShapeView>,
    /// The version word of each buffer (of all the block's words, when the shape is invalid).
    pub buffer_versions: Vec<BufferView>,
    /// The writer's slot (slot 0).
    pub writer: Option<WriterView>,
    /// Versions published by all writers.
    pub publishes: u64,
    /// Writers that took over from a dead one.
    pub takeovers: u64,
    /// 1 while a reader may sleep in `wait_for`.
    pub parked: u32,
    /// The futex word readers sleep on.
    pub notify: u32,
    /// Whether the reserved words are zero.
    pub reserved_zero: bool,
    /// The change history of the latest versions, newest first.
    pub changes: Vec<ChangeView>,
}

/// A region's shape as an opener computes it.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeView {
    /// Chunks of the region.
    pub chunks: usize,
    /// Words per history entry.
    pub entry_words: usize,
    /// Offset of buffer 0.
    pub buffer_offset: usize,
    /// Distance between buffers.
    pub stride: usize,
    /// End of the last buffer.
    pub end: usize,
}

/// One buffer's version word.
#[derive(Debug, Clone, Serialize)]
pub struct BufferView {
    /// Buffer index.
    pub buffer: usize,
    /// The word as found.
    pub word: u64,
    /// The version it holds (`null` while the writer rewrites it).
    pub version: Option<u64>,
    /// Whether the writer is rewriting it (or died doing so).
    pub writing: bool,
}

/// A region's writer.
#[derive(Debug, Clone, Serialize)]
pub struct WriterView {
    /// Pid of the writer's process (display only).
    pub pid: u32,
    /// Alive, dead, closed, free or unknown.
    pub status: String,
    /// Whether a live process holds the writer's liveness token.
    pub alive: bool,
    /// Writers attached so far.
    pub attach_count: u64,
}

/// What the change history says about one version.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeView {
    /// The version.
    pub version: u64,
    /// Its entry's index in the history table.
    pub entry: usize,
    /// `present`, `writing`, `other` (the entry describes another version) or `not copied`.
    pub state: String,
    /// The version an `other` entry describes.
    pub found: Option<u64>,
    /// Chunks the version changed (`null` unless present and copied whole).
    pub changed_chunks: Option<u64>,
    /// The first of them, ascending.
    pub first_chunks: Vec<usize>,
}

fn region_view(r: &Region, writer: Option<&Endpoint>) -> RegionView {
    let shown = r.shape.map_or(MAX_REGION_BUFFERS, |s| s.buffers);
    RegionView {
        latest: r.latest,
        latest_buffer: r.latest_buffer(),
        oldest_changes: r.oldest_changes(),
        size: r.size,
        buffers: r.buffers,
        chunk_size: r.chunk_size,
        history: r.history,
        entry_words: r.entry_words,
        buffer_offset: r.buffer_offset,
        stride: r.stride,
        shape: r.shape.map(|s| ShapeView {
            chunks: s.chunks,
            entry_words: s.entry_words,
            buffer_offset: s.buffer_offset,
            stride: s.stride,
            end: s.end,
        }),
        buffer_versions: r.buffer_versions[..shown]
            .iter()
            .enumerate()
            .map(|(buffer, &word)| BufferView {
                buffer,
                word,
                version: (word != REGION_WRITING).then_some(word),
                writing: word == REGION_WRITING,
            })
            .collect(),
        writer: writer.map(|e| WriterView {
            pid: e.pid,
            status: e.status().to_string(),
            alive: e.is_alive(),
            attach_count: e.attach_count,
        }),
        publishes: r.publishes,
        takeovers: r.takeovers,
        parked: r.parked,
        notify: r.notify,
        reserved_zero: r.reserved_zero,
        changes: r
            .changes
            .iter()
            .map(|c| {
                let (state, found, changed, first) = match &c.state {
                    EntryState::Present { changed, first, .. } => {
                        ("present", None, *changed, first.clone())
                    }
                    EntryState::Writing => ("writing", None, None, Vec::new()),
                    EntryState::Other(tag) => ("other", Some(*tag), None, Vec::new()),
                    EntryState::NotCopied => ("not copied", None, None, Vec::new()),
                };
                ChangeView {
                    version: c.version,
                    entry: c.entry,
                    state: state.to_owned(),
                    found,
                    changed_chunks: changed,
                    first_chunks: first,
                }
            })
            .collect(),
    }
}

/// One endpoint slot, every field.
#[derive(Debug, Clone, Serialize)]
pub struct SlotView {
    /// Slot index.
    pub slot: usize,
    /// Role by kind and index.
    pub role: String,
    /// Alive, dead, closed, free or unknown.
    pub status: String,
    /// Liveness token held (`null`: unknown).
    pub token: Option<bool>,
    /// Slot state word.
    pub state: u32,
    /// Pid.
    pub pid: u32,
    /// Process start time.
    pub start_time: u64,
    /// Attachments so far.
    pub attach_count: u64,
    /// Reader cursor.
    pub cursor: u64,
    /// Messages.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
    /// Waits.
    pub waits: u64,
    /// Dropped records.
    pub dropped: u64,
    /// MPSC writer intent.
    pub intent: u64,
}

fn slot_view(e: &Endpoint) -> SlotView {
    SlotView {
        slot: e.index,
        role: e.role.to_string(),
        status: e.status().to_string(),
        token: e.token,
        state: e.state,
        pid: e.pid,
        start_time: e.start_time,
        attach_count: e.attach_count,
        cursor: e.cursor,
        messages: e.messages,
        bytes: e.bytes,
        waits: e.waits,
        dropped: e.dropped,
        intent: e.intent,
    }
}

impl InspectView {
    /// The JSON view of a decoded segment.
    pub fn of(file: &SegmentFile, d: &Decoded) -> Self {
        InspectView {
            name: file.name().to_owned(),
            file: file.path(),
            size: d.file_size,
            owner_uid: file.owner(),
            mode: format!("{:04o}", file.mode()),
            in_use: d.in_use,
            settled: d.settled,
            valid: d.is_valid(),
            problems: d
                .problems
                .iter()
                .map(|p| ProblemView {
                    field: p.field.clone(),
                    message: p.message.clone(),
                })
                .collect(),
            header: d.header.as_ref().map(|h| HeaderView {
                magic: format!("{:#018x}", h.magic),
                layout_version: h.layout_version,
                kind_code: h.kind,
                kind: kind_name(d.kind).to_owned(),
                total_size: h.total_size,
                capacity: h.capacity,
                data_offset: h.data_offset,
                creator_pid: h.creator_pid,
                slot_count: h.slot_count,
                creator_start_time: h.creator_start_time,
                created_unix_ns: h.created_unix_ns,
                schema: hex(&h.schema),
                policy: h.policy,
                history: h.history,
                reserved: h.reserved,
            }),
            schema: d.schema.as_ref().map(|s| SchemaView {
                text: s.text.clone(),
                rejections: s.rejections,
                rejected_pid: s.rejected_pid,
                rejected_schema: hex(&s.rejected_schema),
                rejected_text: s.rejected_text.clone(),
            }),
            control: d.control.map(|c| ControlView {
                tail: c.tail,
                head: c.head,
                fill_bytes: d.fill(),
                consumer_parked: c.consumer_parked,
                producer_parked: c.producer_parked,
            }),
            broadcast: d.broadcast.map(|b| BroadcastView {
                tail_intent: b.tail_intent,
                limit: b.limit,
                published: b.published,
                start: b.start,
            }),
            region: d
                .region
                .as_ref()
                .map(|r| region_view(r, d.endpoints.first())),
            endpoints: d.endpoints.iter().map(slot_view).collect(),
        }
    }
}

/// Builds the report one field per line, each followed by the problems of that field.
struct Report<'a> {
    out: String,
    problems: &'a [Problem],
    shown: Vec<bool>,
}

impl<'a> Report<'a> {
    fn section(&mut self, title: &str) {
        let _ = writeln!(self.out, "{title}");
    }

    fn field(&mut self, label: &str, value: impl AsRef<str>) {
        let _ = writeln!(self.out, "  {label:<18} {}", value.as_ref());
        self.problems_of(label);
    }

    /// The problems of `label`, under the line above.
    fn problems_of(&mut self, label: &str) {
        for (p, shown) in self.problems.iter().zip(self.shown.iter_mut()) {
            if p.field == label {
                let _ = writeln!(self.out, "  {:<18} ^ PROBLEM: {}", "", clean(&p.message));
                *shown = true;
            }
        }
    }
}

/// A stored value of a region's shape, with the re-derived one when they differ.
fn against(found: u64, derived: Option<usize>) -> String {
    match derived {
        Some(expected) if expected as u64 != found => format!("{found} (expected {expected})"),
        _ => found.to_string(),
    }
}

/// The region section of `shmesh inspect`.
fn region_report(r: &mut Report<'_>, region: &Region, writer: Option<&Endpoint>) {
    let shape = region.shape;
    r.section("region");
    r.field(
        "region size",
        format!("{} ({})", region.size, human_bytes(region.size)),
    );
    r.field("region buffers", region.buffers.to_string());
    r.field(
        "region chunk size",
        match shape {
            Some(s) => format!("{} ({} chunks)", region.chunk_size, s.chunks),
            None => region.chunk_size.to_string(),
        },
    );
    r.field("region history", format!("{} versions", region.history));
    r.field(
        "region entry words",
        against(region.entry_words.into(), shape.map(|s| s.entry_words)),
    );
    r.field(
        "region buffer offset",
        against(region.buffer_offset, shape.map(|s| s.buffer_offset)),
    );
    r.field(
        "region stride",
        against(region.stride, shape.map(|s| s.stride)),
    );
    if shape.is_none() {
        let _ = writeln!(
            r.out,
            "  (the shape cannot be derived: the fields above are not checked)"
        );
    }
    r.field("latest version", region.latest.to_string());
    let latest_buffer = region.latest_buffer();
    let shown = shape.map_or(MAX_REGION_BUFFERS, |s| s.buffers);
    for (i, &word) in region.buffer_versions.iter().enumerate() {
        if i >= shown && word == 0 {
            continue;
        }
        let mut value = Region::buffer_label(word);
        if word == REGION_WRITING {
            value.push_str(" (the writer is rewriting it, or died doing so)");
        }
        if latest_buffer == Some(i) {
            value.push_str(" <- holds the latest version");
        }
        if i >= shown {
            value.push_str(" (unused)");
        }
        r.field(&format!("buffer {i}"), value);
    }
    r.field(
        "writer",
        match writer {
            Some(e) if e.is_used() => format!(
                "pid {}: {}, attached {} time(s)",
                e.pid,
                e.status(),
                e.attach_count
            ),
            _ => "none ever attached".to_owned(),
        },
    );
    r.field("publishes", region.publishes.to_string());
    r.field("takeovers", region.takeovers.to_string());
    r.field("parked", region.parked.to_string());
    r.field("notify", region.notify.to_string());
    r.field(
        "region reserved",
        if region.reserved_zero {
            "zero"
        } else {
            "not zero"
        },
    );
    if let Some(oldest) = region.oldest_changes() {
        r.field(
            "oldest changes",
            format!("changes_since answers from version {oldest} on (older: a full snapshot)"),
        );
    }
    if region.changes.is_empty() {
        r.field("history", "no version published yet");
    }
    for c in &region.changes {
        let state = match &c.state {
            EntryState::Present {
                changed: Some(n),
                first,
                ..
            } => {
                let list: Vec<String> = first.iter().map(ToString::to_string).collect();
                let more = if (*n as usize) > first.len() {
                    ", ..."
                } else {
                    ""
                };
                if *n == 0 {
                    "no chunk changed".to_owned()
                } else {
                    format!("{n} chunk(s) changed: {}{more}", list.join(", "))
                }
            }
            EntryState::Present { changed: None, .. } => {
                "present (too long to copy: chunks not counted)".to_owned()
            }
            EntryState::Writing => "being written".to_owned(),
            EntryState::Other(tag) => format!("describes version {tag}"),
            EntryState::NotCopied => {
                "not copied (past the end of the object or of what the tool maps)".to_owned()
            }
        };
        r.field(
            &format!("version {}", c.version),
            format!("entry {}: {state}", c.entry),
        );
    }
}

/// The human report of `shmesh inspect`.
pub(crate) fn report(file: &SegmentFile, d: &Decoded) -> String {
    let mut r = Report {
        out: String::new(),
        problems: &d.problems,
        shown: vec![false; d.problems.len()],
    };
    let _ = writeln!(r.out, "segment '{}' ({})", clean(file.name()), file.path());
    r.section("file");
    r.field(
        "file",
        format!("{} bytes ({})", d.file_size, human_bytes(d.file_size)),
    );
    r.field("owner uid", file.owner().to_string());
    r.field("mode", format!("{:04o}", file.mode()));
    r.field(
        "in use",
        match d.in_use {
            Some(true) => "yes: a live process holds the segment",
            Some(false) => "no: no live process holds the segment",
            None => "unknown (the lock could not be queried)",
        },
    );
    if let Some(h) = &d.header {
        r.section("header");
        let magic_note = if h.magic == MAGIC {
            " (\"SHMESH\\0\\x01\")"
        } else {
            ""
        };
        r.field("magic", format!("{:#018x}{magic_note}", h.magic));
        r.field("layout version", h.layout_version.to_string());
        r.field(
            "kind",
            match d.kind {
                Some(k) => format!("{} ({k})", h.kind),
                None => format!("{} (unknown)", h.kind),
            },
        );
        r.field("total size", h.total_size.to_string());
        let region_note = if d.kind == Some(SegmentKind::Region) {
            ", the region's size"
        } else {
            ""
        };
        r.field(
            "capacity",
            format!("{} ({}{region_note})", h.capacity, human_bytes(h.capacity)),
        );
        let expected = d
            .expected_data_offset()
            .map(|e| format!(" (expected {e})"))
            .unwrap_or_default();
        r.field("data offset", format!("{}{expected}", h.data_offset));
        r.field("creator pid", h.creator_pid.to_string());
        r.field("slot count", h.slot_count.to_string());
        r.field(
            "creator start",
            format!("{} clock ticks after boot", h.creator_start_time),
        );
        r.field(
            "created",
            format!(
                "{}.{:09} s since the epoch ({} ago)",
                h.created_unix_ns / 1_000_000_000,
                h.created_unix_ns % 1_000_000_000,
                human_age(age(h.created_unix_ns))
            ),
        );
        r.field("schema", hex(&h.schema));
        r.field(
            "policy",
            match (d.kind, d.policy) {
                (Some(SegmentKind::BroadcastRing), Some(p)) => format!("{} ({p})", h.policy),
                _ => h.policy.to_string(),
            },
        );
        r.field(
            "history",
            match d.kind {
                Some(SegmentKind::BroadcastRing) => format!(
                    "table of {} entries ({} records for late joiners)",
                    h.history,
                    shmesh_ring::broadcast::history_records(h.history as usize)
                ),
                Some(SegmentKind::Region) => format!("{} versions of change history", h.history),
                _ => h.history.to_string(),
            },
        );
        r.field(
            "reserved",
            h.reserved
                .iter()
                .map(|w| format!("{w:#x}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    if let Some(s) = &d.schema {
        r.section("schema block");
        r.field(
            "message type",
            message_type(d).map(|t| clean(&t)).unwrap_or_default(),
        );
        r.field("text", format!("\"{}\"", clean(&s.text)));
        r.field("rejections", s.rejections.to_string());
        if s.rejections > 0 {
            r.field("rejected pid", s.rejected_pid.to_string());
            r.field("rejected schema", hex(&s.rejected_schema));
            r.field("rejected text", format!("\"{}\"", clean(&s.rejected_text)));
        }
    }
    if let Some(c) = d.control {
        r.section("ring control");
        r.field("tail", c.tail.to_string());
        r.field("head", c.head.to_string());
        r.problems_of("tail/head");
        let fill = match (d.fill(), d.capacity()) {
            (Some(f), Some(cap)) => {
                format!("{f} bytes ({:.1}%)", f as f64 * 100.0 / cap as f64)
            }
            _ => "-".to_owned(),
        };
        r.field("fill", fill);
        r.field("consumer parked", c.consumer_parked.to_string());
        r.field("producer parked", c.producer_parked.to_string());
    }
    if let Some(b) = d.broadcast {
        r.section("broadcast control");
        r.field("tail intent", b.tail_intent.to_string());
        r.field("limit", b.limit.to_string());
        r.field("published", b.published.to_string());
        r.field("start", b.start.to_string());
    }
    if let Some(region) = &d.region {
        region_report(&mut r, region, d.endpoints.first());
    }
    if !d.endpoints.is_empty() {
        r.section("endpoints");
        let mut free = 0;
        for e in &d.endpoints {
            if !e.is_used() {
                free += 1;
                continue;
            }
            r.field(
                &format!("slot {}", e.index),
                format!(
                    "{}: {}, pid {} (started {} ticks after boot), attached {} time(s)",
                    e.role,
                    e.status(),
                    e.pid,
                    e.start_time,
                    e.attach_count
                ),
            );
            r.field(
                &format!("slot {} state", e.index),
                format!("{} (0 never, 1 attached, 2 closed)", e.state),
            );
            r.field(
                &format!("slot {} counters", e.index),
                format!(
                    "messages {}, bytes {}, waits {}, dropped {}",
                    e.messages, e.bytes, e.waits, e.dropped
                ),
            );
            r.field(&format!("slot {} cursor", e.index), e.cursor.to_string());
            if e.intent != u64::MAX {
                r.field(&format!("slot {} intent", e.index), e.intent.to_string());
            }
        }
        if free > 0 {
            let _ = writeln!(r.out, "  ({free} free slot(s) not shown)");
        }
    }
    // Problems of fields that have no line of their own (free slots, sections the file is too
    // short to hold), then the summary.
    let unshown: Vec<String> = d
        .problems
        .iter()
        .zip(&r.shown)
        .filter(|(_, shown)| !**shown)
        .map(|(p, _)| clean(&p.to_string()))
        .collect();
    for p in unshown {
        let _ = writeln!(r.out, "  PROBLEM: {p}");
    }
    if !d.settled {
        let _ = writeln!(
            r.out,
            "note: positions moved while they were copied; their checks were skipped"
        );
    }
    match d.problems.len() {
        0 => r.out.push_str("valid: no problems found\n"),
        n => {
            let _ = writeln!(r.out, "INVALID: {n} problem(s)");
        }
    }
    r.out
}
