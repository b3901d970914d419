//! The discovery and lifecycle tools: `shmesh ls`, `inspect`, `stat`, `rm` and `gc`.
//!
//! They look at segments with [`shmesh_ring::inspect`]: read-only, without taking any lock
//! (a tool never makes a segment look in use), and without trusting a byte of what they read.
//! An endpoint is alive while a process holds its kernel-released liveness token, whatever its
//! slot says.
//!
//! - `shmesh ls [--json] [--prefix P]`: every `shmesh.*` object in `/dev/shm` (a table, or one
//!   JSON object per line). Invalid ones (too small, bad magic, unknown version...) are listed
//!   as `INVALID` with their first problem; objects that cannot be read say why. Regions show
//!   their size under CAPACITY and their latest version in a VERSION column (there when a
//!   region is listed).
//! - `shmesh inspect NAME [--json]`: the header, schema block, ring control, broadcast control
//!   and every used endpoint slot decoded field by field, each problem under its field. For a
//!   region: its shape (each stored field against the one re-derived from size, buffers, chunk
//!   size and history), the latest version, each buffer's version, the writer, and the change
//!   history of the latest versions (how many chunks each changed).
//! - `shmesh stat NAME [--interval MS] [--count N] [--json]`: rates from the deltas of the
//!   endpoints' counters, one refresh per interval: rewritten in place on a terminal, one line
//!   per refresh otherwise (and always with `--json`). For a region: versions per second and
//!   chunks changed per version. Ends after `N` refreshes, or with an error when the segment
//!   vanishes (removed, or replaced by a new one of the same name).
//! - `shmesh rm NAME...`: removes segments no live process uses. A segment with a live endpoint
//!   is refused, listing the endpoints (role, slot, pid), with a non-zero exit status; so is
//!   one a live process holds open without an endpoint.
//! - `shmesh gc [--dry-run] [--prefix P]`: removes (or lists) every segment of this user that no
//!   live process uses, valid or not. Never another user's, never an object that is not a
//!   regular file.
//!
//! `rm` and `gc` are safe against a concurrent `create` of the same name: see
//! [`Segment::remove_unused`](shmesh_ring::Segment::remove_unused).
//!
//! # JSON records
//!
//! `shmesh ls --json`, one object per segment per line ([`SegmentView`]):
//!
//! | field | meaning |
//! |-------|---------|
//! | `name`, `file` | the segment name and its file in `/dev/shm` |
//! | `valid`, `problems` | whether it decodes cleanly; each problem as `field: message` |
//! | `error` | why it could not be read at all (then most fields are `null`) |
//! | `kind`, `kind_code` | `spsc`, `probe`, `mpsc`, `broadcast`, `region` or `unknown`; the header code |
//! | `message_type`, `fingerprint` | the schema text (`bytes` for byte rings); 64 hex digits |
//! | `capacity`, `fill_bytes`, `fill_ratio` | rings: data bytes; bytes written and not yet read (broadcast: behind the oldest live reader); `null` for regions |
//! | `size`, `owner_uid`, `mode` | the object's size, owner and permission bits (octal string) |
//! | `in_use` | whether a live process holds the segment at all |
//! | `creator_pid`, `created_unix_ns`, `age_s` | the creator (display only) and creation time |
//! | `policy`, `history` | broadcast rings: `block`/`lap` and history length; regions: `null` and the versions of change history; `null` otherwise |
//! | `version`, `region_size` | regions: the latest published version and the bytes of the region; `null` otherwise |
//! | `messages`, `bytes` | written so far (producer and writers) |
//! | `read_messages`, `read_bytes`, `dropped` | read so far (every reader counts), records lost by lapped readers |
//! | `endpoints_alive`, `endpoints` | live endpoints; every slot ever used: `slot`, `role`, `pid`, `status` (`alive`, `dead`, `closed`, `unknown`), `alive`, `messages`, `bytes`, `waits`, `dropped`, `cursor` (readers), `attach_count` |
//!
//! `shmesh stat --json`, one object per refresh ([`StatLine`]): `name`, `t_s` (since start),
//! `interval_s`, `written_msgs_per_s`, `written_bytes_per_s`, `read_msgs_per_s`,
//! `read_bytes_per_s`, `dropped_per_s`, `waits_per_s`, the totals `messages`, `bytes`,
//! `dropped`, `fill_bytes`, `fill_ratio`, `endpoints_alive`, `endpoints`, and for regions
//! (`null` otherwise) `version`, `versions_per_s` and `chunks_per_version` (the mean over the
//! versions of the interval whose history entries were copied: the latest
//! [`HISTORY_SHOWN`](shmesh_ring::inspect::HISTORY_SHOWN) at most).
//!
//! `shmesh inspect --json` ([`InspectView`]): `name`, `file`, `size`, `owner_uid`, `mode`,
//! `in_use`, `settled`, `valid`, `problems` (`field`, `message`), and `header`, `schema`,
//! `control`, `broadcast`, `region`, `endpoints` with every field of the layout
//! ([`shmesh_ring::layout`]). `region` ([`RegionView`]) adds the re-derived `shape`, the
//! `latest_buffer`, the `oldest_changes` version `changes_since` answers from, the `writer`
//! (`pid`, `status`, `alive`, `attach_count`), and `changes`: per version, newest first, its
//! history `entry` and `state` (`present`, `writing`, `other`, `not copied`), `found` (the
//! version an `other` entry describes), `changed_chunks` and `first_chunks`.

mod detail;
mod remove;
mod stat;
mod view;

use std::io::Write;

use shmesh_ring::inspect::{self, InspectError, SegmentFile};
use shmesh_ring::SegmentError;
use thiserror::Error;

pub use detail::{InspectView, RegionView};
pub use stat::StatLine;
pub use view::{EndpointView, SegmentView};

/// Arguments of `shmesh ls`.
#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    /// One JSON object per segment per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only segments whose name starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
}

/// Arguments of `shmesh inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The segment name (without the `shmesh.` prefix).
    pub name: String,
    /// One JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `shmesh stat`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatArgs {
    /// The segment name.
    pub name: String,
    /// Milliseconds between two refreshes.
    #[arg(long, default_value_t = 1000)]
    pub interval: u64,
    /// Stop after this many refreshes (default: until the segment vanishes or Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// One JSON object per refresh per line.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `shmesh rm`.
#[derive(Debug, Clone, clap::Args)]
pub struct RmArgs {
    /// The segments to remove.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Arguments of `shmesh gc`.
#[derive(Debug, Clone, clap::Args)]
pub struct GcArgs {
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only segments whose name starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
}

/// Why a tool failed.
#[derive(Debug, Error)]
pub enum ToolsError {
    /// The segment could not be looked at.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// Removal failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// `rm` of a segment with live endpoints.
    #[error(
        "segment '{name}' has live endpoints: {live}; rm never removes a segment in use: stop \
         those processes first"
    )]
    LiveEndpoints {
        /// Segment name.
        name: String,
        /// The live endpoints: role, slot, pid.
        live: String,
    },
    /// `rm` of a segment a live process holds without an endpoint.
    #[error(
        "segment '{name}' is in use: a live process holds it open without an endpoint (its \
         creator was pid {creator}); rm never removes a segment in use: stop that process first"
    )]
    InUse {
        /// Segment name.
        name: String,
        /// The creator's pid, from the header (display only).
        creator: u32,
    },
    /// The segment `stat` watched is gone.
    #[error(
        "segment '{name}' vanished: it was removed{}; stat ends",
        if *replaced { " and created again (run stat again for the new one)" } else { "" }
    )]
    Vanished {
        /// Segment name.
        name: String,
        /// Whether a new segment of the same name exists now.
        replaced: bool,
    },
    /// Some of several removals failed (each was reported).
    #[error("{failed} of {total} segment(s) could not be removed (see the errors above)")]
    SomeFailed {
        /// How many failed.
        failed: usize,
        /// How many were tried.
        total: usize,
    },
    /// `--interval 0`.
    #[error("--interval must be at least 1 millisecond")]
    Interval,
    /// Writing the output failed (a closed pipe, a full disk).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn json_line(out: &mut impl Write, value: &impl serde::Serialize) -> Result<(), ToolsError> {
    let json = serde_json::to_string(value).map_err(std::io::Error::other)?;
    writeln!(out, "{json}")?;
    Ok(())
}

/// Runs `shmesh ls`, writing to `out`.
///
/// # Errors
///
/// [`ToolsError::Inspect`] when `/dev/shm` cannot be read; `Output`.
pub fn ls(args: &LsArgs, out: &mut impl Write) -> Result<(), ToolsError> {
    let mut views = Vec::new();
    for listed in inspect::list()? {
        if args
            .prefix
            .as_deref()
            .is_some_and(|p| !listed.name.starts_with(p))
        {
            continue;
        }
        let looked = listed
            .file
            .and_then(|file| file.snapshot().map(|s| (file, s.decode())));
        let mut view = match &looked {
            Ok((file, d)) => SegmentView::of(file, d),
            // Gone between the listing and the look.
            Err(InspectError::NotFound { .. }) => continue,
            Err(e) => SegmentView::unreadable(&listed.name, e, listed.name_error.as_ref()),
        };
        if let (Some(e), Ok(_)) = (&listed.name_error, &looked) {
            view.valid = false;
            view.problems.insert(0, format!("name: {e}"));
        }
        views.push(view);
    }
    if args.json {
        for view in &views {
            json_line(out, view)?;
        }
    } else if views.is_empty() {
        writeln!(out, "no shmesh segments in {}", inspect::SHM_DIR)?;
    } else {
        out.write_all(view::table(&views).as_bytes())?;
    }
    Ok(())
}

/// Runs `shmesh inspect`, writing to `out`. A segment with problems is reported, not an error.
///
/// # Errors
///
/// [`ToolsError::Inspect`] when the segment cannot be read; `Output`.
pub fn inspect(args: &InspectArgs, out: &mut impl Write) -> Result<(), ToolsError> {
    let file = SegmentFile::open(&args.name)?;
    let d = file.snapshot()?.decode();
    if args.json {
        json_line(out, &InspectView::of(&file, &d))
    } else {
        out.write_all(detail::report(&file, &d).as_bytes())?;
        Ok(())
    }
}

/// Runs `shmesh stat`, writing to `out`.
///
/// # Errors
///
/// [`ToolsError::Inspect`] when the segment cannot be read, `Vanished` when it is removed,
/// `Interval`, `Output`.
pub fn stat(args: &StatArgs, out: &mut impl Write) -> Result<(), ToolsError> {
    stat::run(args, out)
}

/// Runs `shmesh rm`, writing to `out`.
///
/// # Errors
///
/// With one name, why it was not removed: [`ToolsError::LiveEndpoints`], `InUse`, `Inspect`
/// (not found, not a segment), `Segment` (another user's, an OS error). With several,
/// `SomeFailed` after reporting each on stderr.
pub fn rm(args: &RmArgs, out: &mut impl Write) -> Result<(), ToolsError> {
    remove::rm(args, out)
}

/// Runs `shmesh gc`, writing to `out`.
///
/// # Errors
///
/// [`ToolsError::Inspect`] when `/dev/shm` cannot be read, `SomeFailed` when a removal failed
/// (each is reported on stderr), `Output`.
pub fn gc(args: &GcArgs, out: &mut impl Write) -> Result<(), ToolsError> {
    remove::gc(args, out)
}
