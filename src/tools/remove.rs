//! `shmesh rm` and `shmesh gc`: remove segments no live process uses.
//!
//! Both decide in two steps. First a read-only look ([`SegmentFile`]): a segment with a live
//! endpoint (someone holds its liveness token) or a live handle (someone holds its "in use"
//! byte) is kept, and `rm` says who holds it. Then [`Segment::remove_unused`], which takes the
//! "in use" byte exclusively and unlinks only if the name still refers to the object it locked:
//! a process that attaches, opens or creates the name meanwhile is never the one removed (a
//! creator that finds the byte taken starts afresh with a new object).

use std::io::Write;

use shmesh_ring::inspect::{self, Decoded, InspectError, SegmentFile};
use shmesh_ring::{Segment, SegmentError};

use super::view::{clean, endpoint_label, removal_reason};
use super::{GcArgs, RmArgs, ToolsError};

/// Removes one segment, or says why not.
fn rm_one(name: &str) -> Result<(), ToolsError> {
    let file = SegmentFile::open(name)?;
    let d = file.snapshot()?.decode();
    refuse_if_live(name, &d)?;
    drop(file);
    match Segment::remove_unused(name) {
        Ok(true) => Ok(()),
        Ok(false) => {
            // Something holds it now: say what, if it is an endpoint.
            let now = SegmentFile::open(name).and_then(|f| Ok(f.snapshot()?.decode()));
            if let Ok(d) = &now {
                refuse_if_live(name, d)?;
            }
            Err(ToolsError::InUse {
                name: name.to_owned(),
                creator: now
                    .ok()
                    .and_then(|d| d.header.map(|h| h.creator_pid))
                    .or(d.header.as_ref().map(|h| h.creator_pid))
                    .unwrap_or(0),
            })
        }
        Err(SegmentError::NotFound { .. }) => Err(InspectError::NotFound {
            name: name.to_owned(),
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// `Err(LiveEndpoints)` when a live process holds an endpoint of the segment.
fn refuse_if_live(name: &str, d: &Decoded) -> Result<(), ToolsError> {
    let live: Vec<String> = d.live_endpoints().map(endpoint_label).collect();
    if live.is_empty() {
        Ok(())
    } else {
        Err(ToolsError::LiveEndpoints {
            name: name.to_owned(),
            live: live.join(", "),
        })
    }
}

/// Runs `shmesh rm NAME...`.
pub(crate) fn rm(args: &RmArgs, out: &mut impl Write) -> Result<(), ToolsError> {
    let mut failed = 0;
    for name in &args.names {
        match rm_one(name) {
            Ok(()) => writeln!(out, "removed {}", clean(name))?,
            Err(e) if args.names.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(ToolsError::SomeFailed {
            failed,
            total: args.names.len(),
        });
    }
    Ok(())
}

/// What `gc` did, for its summary line.
#[derive(Debug, Default)]
struct Tally {
    removed: usize,
    in_use: usize,
    skipped: usize,
    failed: usize,
}

/// Runs `shmesh gc [--dry-run] [--prefix P]`.
pub(crate) fn gc(args: &GcArgs, out: &mut impl Write) -> Result<(), ToolsError> {
    let me = nix::unistd::geteuid().as_raw();
    let mut tally = Tally::default();
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for listed in inspect::list()? {
        let name = listed.name.as_str();
        if args.prefix.as_deref().is_some_and(|p| !name.starts_with(p)) {
            continue;
        }
        if listed.name_error.is_some() {
            // Not a name shmesh makes: not ours to judge.
            tally.skipped += 1;
            continue;
        }
        let file = match listed.file {
            Ok(file) => file,
            Err(InspectError::NotAFile { .. } | InspectError::PermissionDenied { .. }) => {
                tally.skipped += 1;
                continue;
            }
            Err(e) => {
                eprintln!("error: {e}");
                tally.failed += 1;
                continue;
            }
        };
        if file.owner() != me {
            // Another user's segment: never removed (remove_unused refuses it too).
            tally.skipped += 1;
            continue;
        }
        let d = match file.snapshot() {
            Ok(s) => s.decode(),
            Err(e) => {
                eprintln!("error: {e}");
                tally.failed += 1;
                continue;
            }
        };
        drop(file);
        if d.in_use != Some(false) || d.live_endpoints().next().is_some() {
            tally.in_use += 1;
            continue;
        }
        let reason = removal_reason(&d);
        if args.dry_run {
            writeln!(out, "{verb} {}: {reason}", clean(name))?;
            tally.removed += 1;
            continue;
        }
        match Segment::remove_unused(name) {
            Ok(true) => {
                writeln!(out, "{verb} {}: {reason}", clean(name))?;
                tally.removed += 1;
            }
            Ok(false) => {
                writeln!(
                    out,
                    "kept {}: a process started using it meanwhile",
                    clean(name)
                )?;
                tally.in_use += 1;
            }
            // Removed by someone else meanwhile (a create reclaiming it, another gc).
            Err(SegmentError::NotFound { .. }) => {}
            Err(SegmentError::NotOwner { .. }) => tally.skipped += 1,
            Err(e) => {
                eprintln!("error: {e}");
                tally.failed += 1;
            }
        }
    }
    writeln!(
        out,
        "gc{}: {verb} {} segment(s), kept {} in use, skipped {} (other users', not shmesh's){}",
        if args.dry_run { " --dry-run" } else { "" },
        tally.removed,
        tally.in_use,
        tally.skipped,
        if tally.failed > 0 {
            format!(", {} failed", tally.failed)
        } else {
            String::new()
        }
    )?;
    if tally.failed > 0 {
        return Err(ToolsError::SomeFailed {
            failed: tally.failed,
            total: tally.failed + tally.removed + tally.in_use + tally.skipped,
        });
    }
    Ok(())
}
