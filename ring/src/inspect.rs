//! Read-only decoding of any shmesh segment, for the tools (`shmesh ls`, `inspect`, `stat`,
//! `rm`, `gc`).
//!
//! A tool looks at segments that other processes are using, and trusts nothing it reads:
//!
//! - [`SegmentFile::open`] opens `/dev/shm/shmesh.<name>` read-only (`O_RDONLY | O_NOFOLLOW`,
//!   after an `lstat` that refuses anything but a regular file) and never takes a lock: a lock
//!   held by a tool would make a concurrent `create` of the name see it as in use. Liveness is
//!   asked with `F_OFD_GETLK` (which needs no write access): endpoint slot `i` is alive while
//!   someone holds byte `1 + i`, and the segment is in use while someone holds byte 0 (see
//!   [`crate::segment`]).
//! - [`SegmentFile::snapshot`] maps the first bytes of the object read-only, copies the
//!   metadata (header, endpoint slots, ring control, schema block, broadcast control) with
//!   `Relaxed` atomic loads of each field's own size, and unmaps. Positions are copied so that
//!   they can be compared: the tail is read after every head and cursor, and the copy is taken
//!   again while a head or cursor moved meanwhile ([`Snapshot::settled`]).
//! - Regions (kind 5) have no positions: the snapshot copies their control block (latest
//!   version, the version word of each buffer, the shape) and the change-history entries of
//!   the latest [`HISTORY_SHOWN`] versions after loading `latest` (then an `Acquire` fence),
//!   checks each entry's version tag again after copying it (the entries are seqlocks, see
//!   [`crate::region`]), and loads `latest` again at the end: the copy is settled when neither
//!   moved, and taken again otherwise. A settled copy shows the region as it was when `latest`
//!   was read, so the checks that compare versions (the latest version's buffer holds it, each
//!   shown entry describes its version) report junk, never a race.
//! - [`Snapshot::decode`] is plain safe code over those bytes: every field as found, and a
//!   [`Problem`] for everything `SegmentBuilder::open` would refuse and a few more impossible
//!   values. It never panics, whatever the bytes (a property test feeds it random ones).
//!
//! A [`Snapshot`] can also be built from any bytes ([`Snapshot::from_bytes`]), for tests and
//! fuzzing.
//!
//! # Truncation
//!
//! Like every process that maps a segment, a tool gets `SIGBUS` if a process of the same user
//! truncates the object while the tool copies it. shmesh never truncates a segment; a tool maps
//! at most [`MAX_METADATA`] bytes (for a region, up to the end of its change history, at most
//! [`REGION_MAP_LIMIT`] bytes), for the duration of one copy.
//!
//! # Examples
//!
//! ```no_run
//! use shmesh_ring::inspect::SegmentFile;
//!
//! let file = SegmentFile::open("demo")?;
//! let decoded = file.snapshot()?.decode();
//! for problem in &decoded.problems {
//!     println!("problem: {problem}");
//! }
//! for endpoint in &decoded.endpoints {
//!     println!("{} pid {}: {}", endpoint.role, endpoint.pid, endpoint.status());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use memmap2::MmapOptions;
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use thiserror::Error;

use crate::layout::{
    self, slot_offset, unpack_text, RegionShape, CONTROL_OFFSET, DATA_OFFSET, EXTRA_SLOTS_OFFSET,
    EXT_OFFSET, LAYOUT_VERSION, LINE, MAGIC, MAX_HISTORY, MAX_REGION_BUFFERS, MAX_SLOTS,
    POLICY_BLOCK, POLICY_LAP, RECORD_ALIGN, REGION_HISTORY_OFFSET, REGION_OFFSET, REGION_WRITING,
    SCHEMA_OFFSET, SCHEMA_TEXT_LEN, SLOTS_OFFSET, SLOT_ATTACHED, SLOT_CLOSED, SLOT_NEVER,
};
use crate::memory::BroadcastPolicy;
use crate::os;
use crate::segment::{object_name, SegmentError, SegmentKind, NAME_PREFIX};
use crate::spsc::check_capacity;
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// The directory of POSIX shared-memory objects on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// The most bytes a snapshot copies (and maps): from the header to the end of the largest slot
/// table.
pub const MAX_METADATA: usize = slot_offset(MAX_SLOTS);

/// How many times a snapshot is taken again while heads or cursors move under it.
const SETTLE_ATTEMPTS: usize = 16;

/// Regions: how many of the latest versions' change-history entries a snapshot copies.
pub const HISTORY_SHOWN: usize = 8;

/// Regions: the longest history entry a snapshot copies whole, in words (the version tag and
/// a bitmap of 1 Mi chunks). Of a longer entry only the tag is copied: the decoding says the
/// version is there but not how many chunks it changed.
pub const MAX_ENTRY_WORDS: usize = 1 + (1 << 14);

/// Regions: the most bytes of the object a snapshot maps to reach the change history (from
/// the start of the object). Entries past it are not copied.
pub const REGION_MAP_LIMIT: usize = 64 << 20;

/// Offsets of the fields inside the segment header (see [`layout::SegmentHeader`]).
mod at {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const KIND: usize = 12;
    pub const TOTAL_SIZE: usize = 16;
    pub const CAPACITY: usize = 24;
    pub const DATA_OFFSET: usize = 32;
    pub const CREATOR_PID: usize = 40;
    pub const SLOT_COUNT: usize = 44;
    pub const CREATOR_START: usize = 48;
    pub const CREATED: usize = 56;
    pub const SCHEMA: usize = 64;
    pub const POLICY: usize = 96;
    pub const HISTORY: usize = 100;
    pub const RESERVED: usize = 104;
    pub const HEADER_END: usize = 128;

    // Inside an endpoint slot.
    pub const STATE: usize = 0;
    pub const PID: usize = 4;
    pub const START_TIME: usize = 8;
    pub const ATTACH_COUNT: usize = 16;
    pub const CURSOR: usize = 24;
    pub const MESSAGES: usize = 32;
    pub const BYTES: usize = 40;
    pub const WAITS: usize = 48;
    pub const DROPPED: usize = 56;
    pub const INTENT: usize = 64;

    // Inside the schema block.
    pub const REJECTIONS: usize = super::SCHEMA_TEXT_LEN;
    pub const REJECTED_PID: usize = REJECTIONS + 8;
    pub const REJECTED_SCHEMA: usize = REJECTIONS + 16;
    pub const REJECTED_TEXT: usize = REJECTIONS + 48;
    pub const SCHEMA_END: usize = REJECTED_TEXT + super::SCHEMA_TEXT_LEN;
}

#[cfg(not(loom))]
const _: () = {
    use crate::layout::{EndpointSlot, SchemaBlock, SegmentHeader};
    use std::mem::{offset_of, size_of};
    assert!(offset_of!(SegmentHeader, magic) == at::MAGIC);
    assert!(offset_of!(SegmentHeader, layout_version) == at::VERSION);
    assert!(offset_of!(SegmentHeader, kind) == at::KIND);
    assert!(offset_of!(SegmentHeader, total_size) == at::TOTAL_SIZE);
    assert!(offset_of!(SegmentHeader, capacity) == at::CAPACITY);
    assert!(offset_of!(SegmentHeader, data_offset) == at::DATA_OFFSET);
    assert!(offset_of!(SegmentHeader, creator_pid) == at::CREATOR_PID);
    assert!(offset_of!(SegmentHeader, slot_count) == at::SLOT_COUNT);
    assert!(offset_of!(SegmentHeader, creator_start_time) == at::CREATOR_START);
    assert!(offset_of!(SegmentHeader, created_unix_ns) == at::CREATED);
    assert!(offset_of!(SegmentHeader, schema) == at::SCHEMA);
    assert!(offset_of!(SegmentHeader, policy) == at::POLICY);
    assert!(offset_of!(SegmentHeader, history) == at::HISTORY);
    assert!(offset_of!(SegmentHeader, reserved) == at::RESERVED);
    assert!(size_of::<SegmentHeader>() == at::HEADER_END);
    assert!(offset_of!(EndpointSlot, state) == at::STATE);
    assert!(offset_of!(EndpointSlot, pid) == at::PID);
    assert!(offset_of!(EndpointSlot, start_time) == at::START_TIME);
    assert!(offset_of!(EndpointSlot, attach_count) == at::ATTACH_COUNT);
    assert!(offset_of!(EndpointSlot, cursor) == at::CURSOR);
    assert!(offset_of!(EndpointSlot, messages) == at::MESSAGES);
    assert!(offset_of!(EndpointSlot, bytes) == at::BYTES);
    assert!(offset_of!(EndpointSlot, waits) == at::WAITS);
    assert!(offset_of!(EndpointSlot, dropped) == at::DROPPED);
    assert!(offset_of!(EndpointSlot, intent) == at::INTENT);
    assert!(offset_of!(SchemaBlock, rejections) == at::REJECTIONS);
    assert!(offset_of!(SchemaBlock, rejected_pid) == at::REJECTED_PID);
    assert!(offset_of!(SchemaBlock, rejected_schema) == at::REJECTED_SCHEMA);
    assert!(offset_of!(SchemaBlock, rejected_text) == at::REJECTED_TEXT);
    assert!(at::SCHEMA_END <= size_of::<SchemaBlock>());
    assert!(SCHEMA_OFFSET + size_of::<SchemaBlock>() == EXT_OFFSET);
};

/// Offsets of the fields of a region's control block, from [`REGION_OFFSET`] (see
/// [`layout::RegionControl`]).
mod rat {
    pub const LATEST: usize = 0;
    pub const BUFFER_VERSION: usize = 8;
    pub const NOTIFY: usize = 72;
    pub const RESERVED0: usize = 76;
    pub const RESERVED1: usize = 80;
    pub const PARKED: usize = 128;
    pub const RESERVED2: usize = 132;
    pub const SIZE: usize = 256;
    pub const BUFFERS: usize = 264;
    pub const CHUNK_SIZE: usize = 268;
    pub const HISTORY: usize = 272;
    pub const ENTRY_WORDS: usize = 276;
    pub const BUFFER_OFFSET: usize = 280;
    pub const STRIDE: usize = 288;
    pub const PUBLISHES: usize = 296;
    pub const TAKEOVERS: usize = 304;
    pub const RESERVED3: usize = 312;
    pub const END: usize = 384;

    /// Whether the 8-byte word at `off` (from the block's start) holds two `u32` fields.
    pub fn holds_u32_pair(off: usize) -> bool {
        off == NOTIFY || (PARKED..SIZE).contains(&off) || off == BUFFERS || off == HISTORY
    }
}

#[cfg(not(loom))]
const _: () = {
    use crate::layout::RegionControl;
    use std::mem::{offset_of, size_of};
    assert!(offset_of!(RegionControl, latest) == rat::LATEST);
    assert!(offset_of!(RegionControl, buffer_version) == rat::BUFFER_VERSION);
    assert!(offset_of!(RegionControl, notify) == rat::NOTIFY);
    assert!(offset_of!(RegionControl, reserved0) == rat::RESERVED0);
    assert!(offset_of!(RegionControl, reserved1) == rat::RESERVED1);
    assert!(offset_of!(RegionControl, parked) == rat::PARKED);
    assert!(offset_of!(RegionControl, reserved2) == rat::RESERVED2);
    assert!(offset_of!(RegionControl, size) == rat::SIZE);
    assert!(offset_of!(RegionControl, buffers) == rat::BUFFERS);
    assert!(offset_of!(RegionControl, chunk_size) == rat::CHUNK_SIZE);
    assert!(offset_of!(RegionControl, history) == rat::HISTORY);
    assert!(offset_of!(RegionControl, entry_words) == rat::ENTRY_WORDS);
    assert!(offset_of!(RegionControl, buffer_offset) == rat::BUFFER_OFFSET);
    assert!(offset_of!(RegionControl, stride) == rat::STRIDE);
    assert!(offset_of!(RegionControl, publishes) == rat::PUBLISHES);
    assert!(offset_of!(RegionControl, takeovers) == rat::TAKEOVERS);
    assert!(offset_of!(RegionControl, reserved3) == rat::RESERVED3);
    assert!(size_of::<RegionControl>() == rat::END);
    assert!(REGION_OFFSET + rat::END == REGION_HISTORY_OFFSET);
    assert!(rat::BUFFER_VERSION + 8 * MAX_REGION_BUFFERS == rat::NOTIFY);
};

/// Offsets of the ring control words (see [`layout::RingControl`]).
const TAIL: usize = CONTROL_OFFSET;
const HEAD: usize = CONTROL_OFFSET + LINE;
const CONSUMER_PARKED: usize = CONTROL_OFFSET + 2 * LINE;
const PRODUCER_PARKED: usize = CONTROL_OFFSET + 3 * LINE;

/// Why a segment could not be looked at.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InspectError {
    /// The name is not a valid segment name.
    #[error(transparent)]
    Name(#[from] SegmentError),
    /// No object of this name exists.
    #[error(
        "segment '{name}' does not exist (no {SHM_DIR}/{NAME_PREFIX}{name}): `shmesh ls` lists \
         the segments there are"
    )]
    NotFound {
        /// Segment name.
        name: String,
    },
    /// The object is not readable by this user.
    #[error(
        "permission denied reading segment '{name}' (owner uid {owner}, mode {mode:o}): run the \
         tool as its owner"
    )]
    PermissionDenied {
        /// Segment name.
        name: String,
        /// The uid that owns the object.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The name refers to something other than a regular file (a symbolic link, a directory,
    /// a FIFO...): not a segment shmesh made.
    #[error(
        "{SHM_DIR}/{NAME_PREFIX}{name} is {what}, not a shared-memory object made by shmesh: \
         left alone (remove it by hand if it is yours and unwanted)"
    )]
    NotAFile {
        /// Segment name.
        name: String,
        /// What it is instead.
        what: &'static str,
    },
    /// Another operating-system call failed.
    #[error("{op} failed for {SHM_DIR}/{NAME_PREFIX}{name}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// Segment name.
        name: String,
        /// The errno.
        source: Errno,
    },
}

fn os_err<'a>(op: &'static str, name: &'a str) -> impl FnOnce(Errno) -> InspectError + 'a {
    move |source| InspectError::Os {
        op,
        name: name.to_owned(),
        source,
    }
}

/// A segment's object opened read-only, without any lock: the handle of the tools.
///
/// Holding it keeps the object's memory alive after an unlink (as any descriptor does) but
/// makes no difference to the processes using the segment, to `create`, or to
/// `Segment::remove_unused`.
#[derive(Debug)]
pub struct SegmentFile {
    name: String,
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    owner: u32,
    mode: u32,
}

impl SegmentFile {
    /// Opens the segment `name` (`/dev/shm/shmesh.<name>`) read-only.
    ///
    /// # Errors
    ///
    /// [`InspectError::Name`] (not a valid segment name), `NotFound`, `PermissionDenied`,
    /// `NotAFile` (a symbolic link, directory, FIFO, device...), `Os`.
    pub fn open(name: &str) -> Result<Self, InspectError> {
        object_name(name)?;
        Self::open_unchecked(name)
    }

    /// Opens `/dev/shm/shmesh.<name>` for a `name` that need not be a valid segment name (but
    /// is one path component: listed from the directory).
    fn open_unchecked(name: &str) -> Result<Self, InspectError> {
        let path = object_path(name);
        // Look before opening: opening a FIFO or a device can block or have side effects.
        let before = match rustix::fs::lstat(path.as_str()) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => {
                return Err(InspectError::NotFound {
                    name: name.to_owned(),
                })
            }
            Err(e) => return Err(os_err("lstat", name)(e)),
        };
        not_a_file(name, before.st_mode)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(path.as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                return Err(InspectError::NotFound {
                    name: name.to_owned(),
                })
            }
            Err(Errno::LOOP) => {
                return Err(InspectError::NotAFile {
                    name: name.to_owned(),
                    what: "a symbolic link",
                })
            }
            Err(Errno::ACCESS | Errno::PERM) => {
                return Err(InspectError::PermissionDenied {
                    name: name.to_owned(),
                    owner: before.st_uid,
                    mode: before.st_mode & 0o7777,
                })
            }
            Err(e) => return Err(os_err("open", name)(e)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(os_err("fstat", name))?;
        not_a_file(name, stat.st_mode)?;
        Ok(SegmentFile {
            name: name.to_owned(),
            fd,
            dev: stat.st_dev,
            ino: stat.st_ino,
            owner: stat.st_uid,
            mode: stat.st_mode & 0o7777,
        })
    }

    /// The segment name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file of the object (`/dev/shm/shmesh.<name>`).
    pub fn path(&self) -> String {
        object_path(&self.name)
    }

    /// Device and inode of the object opened: which object this is, whatever its name refers
    /// to later.
    pub fn identity(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// The uid that owns the object.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The object's permission bits.
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// Whether the name still refers to the object opened (`false` once it was removed, or
    /// removed and created again).
    ///
    /// # Errors
    ///
    /// [`InspectError::Os`] when `stat` fails other than with `ENOENT`.
    pub fn still_named(&self) -> Result<bool, InspectError> {
        match rustix::fs::lstat(self.path().as_str()) {
            Ok(stat) => Ok((stat.st_dev, stat.st_ino) == (self.dev, self.ino)),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(os_err("lstat", &self.name)(e)),
        }
    }

    /// Copies the segment's metadata and asks the kernel which liveness tokens are held.
    ///
    /// # Errors
    ///
    /// [`InspectError::Os`] when `fstat` or `mmap` fails.
    pub fn snapshot(&self) -> Result<Snapshot, InspectError> {
        let stat = rustix::fs::fstat(&self.fd).map_err(os_err("fstat", &self.name))?;
        let file_size = u64::try_from(stat.st_size).unwrap_or(0);
        let map_len = (file_size.min(MAX_METADATA as u64) as usize) & !7;
        let mut snapshot = Snapshot {
            bytes: Vec::new(),
            file_size,
            in_use: None,
            tokens: Vec::new(),
            settled: true,
            region_history: Vec::new(),
        };
        let map = |len: usize| {
            MmapOptions::new()
                .len(len)
                .map_raw_read_only(&self.fd)
                .map_err(|e| {
                    let errno = Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO));
                    os_err("mmap", &self.name)(errno)
                })
        };
        if map_len > 0 {
            let first = map(map_len)?;
            let words = Words {
                base: first.as_ptr(),
                len: map_len,
            };
            copy_settled(&words, &mut snapshot);
            if is_region(&snapshot.bytes) {
                // The change history may reach past the metadata: map up to its end.
                let len = (region_extent(&words).min(REGION_MAP_LIMIT) as u64).min(file_size)
                    as usize
                    & !7;
                let copy = if len > map_len {
                    let whole = map(len)?;
                    copy_region(&Words {
                        base: whole.as_ptr(),
                        len,
                    })
                    // `whole` is unmapped here.
                } else {
                    copy_region(&words)
                };
                if let Some(copy) = copy {
                    snapshot.apply_region(copy);
                }
            }
            // `first` is unmapped here: nothing else reads it.
        }
        let fd = self.fd.as_fd();
        snapshot.in_use = os::is_locked(fd, 0).ok();
        snapshot.tokens = (0..decoded_slots(&snapshot.bytes))
            .map(|i| os::is_locked(fd, 1 + i as u64).ok())
            .collect();
        Ok(snapshot)
    }
}

/// `Err(NotAFile)` unless `mode` is a regular file's.
fn not_a_file(name: &str, mode: u32) -> Result<(), InspectError> {
    let what = match FileType::from_raw_mode(mode) {
        FileType::RegularFile => return Ok(()),
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Unknown => "of an unknown file type",
    };
    Err(InspectError::NotAFile {
        name: name.to_owned(),
        what,
    })
}

/// `/dev/shm/shmesh.<name>`.
fn object_path(name: &str) -> String {
    format!("{SHM_DIR}/{NAME_PREFIX}{name}")
}

/// A `shmesh.*` entry of `/dev/shm`, opened read-only.
#[derive(Debug)]
pub struct Listed {
    /// The name after the `shmesh.` prefix.
    pub name: String,
    /// Why the name is not one shmesh could have made, if it is not.
    pub name_error: Option<SegmentError>,
    /// The object, or why it could not be opened.
    pub file: Result<SegmentFile, InspectError>,
}

/// Every `shmesh.*` entry of `/dev/shm`, sorted by name; entries that vanish while they are
/// listed are left out. Other files are not shmesh's and are ignored.
///
/// # Errors
///
/// [`InspectError::Os`] when `/dev/shm` cannot be read.
pub fn list() -> Result<Vec<Listed>, InspectError> {
    let dir_err = |e: std::io::Error| InspectError::Os {
        op: "read_dir",
        name: "*".to_owned(),
        source: Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)),
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        let file_name = entry.file_name();
        let Some(name) = file_name.as_bytes().strip_prefix(NAME_PREFIX.as_bytes()) else {
            continue;
        };
        // A name that is not UTF-8 is not one shmesh made; show it lossily.
        names.push(String::from_utf8_lossy(name).into_owned());
    }
    names.sort();
    names.dedup();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let name_error = object_name(&name).err();
        let file = if name.is_empty() || name.contains(char::REPLACEMENT_CHARACTER) {
            Err(InspectError::Name(name_error.clone().unwrap_or_else(
                || SegmentError::InvalidName {
                    name: name.clone(),
                    reason: "it is not UTF-8",
                },
            )))
        } else {
            SegmentFile::open_unchecked(&name)
        };
        if matches!(file, Err(InspectError::NotFound { .. })) {
            continue;
        }
        out.push(Listed {
            name,
            name_error,
            file,
        });
    }
    Ok(out)
}

/// Read access to the first `len` bytes of a read-only mapping.
struct Words {
    base: *const u8,
    /// A multiple of 8.
    len: usize,
}

impl Words {
    /// The `u64` field at `off` (a multiple of 8), `Relaxed`.
    fn u64(&self, off: usize) -> u64 {
        assert!(
            off % 8 == 0 && off + 8 <= self.len,
            "word {off} outside the copy"
        );
        // SAFETY: `base` is the page-aligned start of a live mapping of at least `len` bytes
        // (the caller keeps it mapped while `self` lives) and `off + 8 <= len`, `off % 8 == 0`:
        // the word is inside and 8-aligned. The mapping is read-only: a `Relaxed` atomic load
        // of at most 8 bytes is a plain load on x86-64 and aarch64, which std documents as
        // defined on read-only memory ("Atomic accesses to read-only memory"). The field is an
        // `AtomicU64` in the layout, so other processes access it with the same size.
        let word = unsafe { &*self.base.add(off).cast::<AtomicU64>() };
        word.load(Ordering::Relaxed)
    }

    /// The `u32` field at `off` (a multiple of 4), `Relaxed`.
    fn u32(&self, off: usize) -> u32 {
        assert!(
            off % 4 == 0 && off + 4 <= self.len,
            "word {off} outside the copy"
        );
        // SAFETY: as in `u64`, for a 4-aligned 4-byte `AtomicU32` field inside the mapping.
        let word = unsafe { &*self.base.add(off).cast::<AtomicU32>() };
        word.load(Ordering::Relaxed)
    }

    /// The 8 bytes at `off` as the layout defines them: two `u32` fields or one `u64`.
    fn word(&self, off: usize) -> [u8; 8] {
        if holds_u32_pair(off) {
            let (lo, hi) = (self.u32(off), self.u32(off + 4));
            (u64::from(lo) | u64::from(hi) << 32).to_le_bytes()
        } else {
            self.u64(off).to_le_bytes()
        }
    }
}

/// Whether the 8-byte word at `off` holds two `u32` fields (or a `u32` and its padding):
/// they are read with 32-bit loads, as their writers store them.
fn holds_u32_pair(off: usize) -> bool {
    let in_slot = |start: usize| off >= start && (off - start) % LINE == 0;
    matches!(off, at::VERSION | at::CREATOR_PID | at::POLICY)
        || (in_slot(SLOTS_OFFSET) && off < CONTROL_OFFSET)
        || off == CONSUMER_PARKED
        || off == PRODUCER_PARKED
        || off == SCHEMA_OFFSET + at::REJECTED_PID
        || in_slot(EXTRA_SLOTS_OFFSET)
}

/// How many bytes of metadata a header announces (what a snapshot copies): up to the end of
/// the slot table for the many-endpoint kinds, up to the end of the schema block otherwise.
fn metadata_len(kind: u32, slots: u32) -> usize {
    match SegmentKind::from_code(kind) {
        Some(k) if k.has_many_side() => slot_offset((slots as usize).clamp(3, MAX_SLOTS)),
        _ => EXT_OFFSET,
    }
}

/// Copies the metadata into `snapshot.bytes`, again while heads or cursors move under it.
fn copy_settled(words: &Words, snapshot: &mut Snapshot) {
    if words.len < at::HEADER_END {
        snapshot.bytes = (0..words.len)
            .step_by(8)
            .flat_map(|off| words.word(off))
            .collect();
        return;
    }
    for _ in 0..SETTLE_ATTEMPTS {
        // The magic first, then an Acquire fence: if it is published, so is the header
        // (Relaxed loads only: the mapping is read-only).
        let magic = words.u64(at::MAGIC);
        fence(Ordering::Acquire);
        let len = metadata_len(words.u32(at::KIND), words.u32(at::SLOT_COUNT)).min(words.len);
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&magic.to_le_bytes());
        for off in (8..len).step_by(8) {
            bytes.extend_from_slice(&words.word(off));
        }
        // The tail last: positions only grow, so every head and cursor copied above is at or
        // below it, unless the bytes are junk.
        if TAIL + 8 <= len {
            bytes[TAIL..TAIL + 8].copy_from_slice(&words.word(TAIL));
        }
        // Settled if no head or cursor moved while we copied: then tail and each of them held
        // together at the moment the tail was read.
        let mut positions = Vec::new();
        if HEAD + 8 <= len {
            positions.push(HEAD);
        }
        positions.extend((0..decoded_slots(&bytes)).map(|i| slot_offset(i) + at::CURSOR));
        let settled = positions
            .iter()
            .all(|&off| words.word(off) == bytes[off..off + 8]);
        snapshot.bytes = bytes;
        snapshot.settled = settled;
        if settled {
            return;
        }
    }
}

/// What a snapshot copies from: a read-only mapping of the object ([`Words`]), or bytes that
/// stand for the object ([`Snapshot::from_bytes`]).
trait Source {
    /// How many bytes can be read.
    fn len(&self) -> usize;
    /// The `u64` field at `off` (8-aligned, `off + 8 <= len`).
    fn u64(&self, off: usize) -> u64;
    /// The `u32` field at `off` (4-aligned, `off + 4 <= len`).
    fn u32(&self, off: usize) -> u32;
}

impl Source for Words {
    fn len(&self) -> usize {
        self.len
    }

    fn u64(&self, off: usize) -> u64 {
        Words::u64(self, off)
    }

    fn u32(&self, off: usize) -> u32 {
        Words::u32(self, off)
    }
}

impl Source for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn u64(&self, off: usize) -> u64 {
        u64_at(self, off).unwrap_or(0)
    }

    fn u32(&self, off: usize) -> u32 {
        u32_at(self, off).unwrap_or(0)
    }
}

/// Whether the header in `bytes` says region.
fn is_region(bytes: &[u8]) -> bool {
    u32_at(bytes, at::KIND).and_then(SegmentKind::from_code) == Some(SegmentKind::Region)
}

/// The 8 bytes at `off` of a region's control block, loaded as the layout defines them.
fn region_word<S: Source + ?Sized>(src: &S, off: usize) -> [u8; 8] {
    if rat::holds_u32_pair(off - REGION_OFFSET) {
        let (lo, hi) = (src.u32(off), src.u32(off + 4));
        (u64::from(lo) | u64::from(hi) << 32).to_le_bytes()
    } else {
        src.u64(off).to_le_bytes()
    }
}

/// The shape a region's control block (its bytes, [`rat::END`] of them) stores, re-derived
/// from its four parameters; `None` when they are out of range or the stored entry length
/// differs (then the history cannot be located).
fn stored_shape(control: &[u8]) -> Option<RegionShape> {
    let shape = RegionShape::new(
        u64_at(control, rat::SIZE)?,
        u32_at(control, rat::BUFFERS)? as usize,
        u32_at(control, rat::CHUNK_SIZE)? as usize,
        u32_at(control, rat::HISTORY)? as usize,
    )
    .ok()?;
    (u32_at(control, rat::ENTRY_WORDS)? as usize == shape.entry_words).then_some(shape)
}

/// The versions whose change-history entries a snapshot copies, newest first: the latest
/// [`HISTORY_SHOWN`] of those a reader's `changes_since` may use (from `latest - history + 2`
/// on: the entry of `latest - history + 1` is the one the writer rewrites for `latest + 1`),
/// never version 0 (which has no entry).
pub fn shown_versions(latest: u64, history: usize) -> impl Iterator<Item = u64> {
    let first = latest
        .saturating_add(2)
        .saturating_sub(history as u64)
        .max(1);
    (first..=latest).rev().take(HISTORY_SHOWN)
}

/// Where the change-history entry of `version` starts, in bytes from the object's start.
fn entry_offset(shape: &RegionShape, version: u64) -> usize {
    REGION_HISTORY_OFFSET + (version % shape.history as u64) as usize * shape.entry_words * 8
}

/// How far into the object a region's change history reaches, by the shape its control block
/// stores (just its control block when the shape is unusable or the object too short).
fn region_extent<S: Source + ?Sized>(src: &S) -> usize {
    if src.len() < REGION_HISTORY_OFFSET {
        return REGION_HISTORY_OFFSET;
    }
    let control: Vec<u8> = (REGION_OFFSET..REGION_HISTORY_OFFSET)
        .step_by(8)
        .flat_map(|off| region_word(src, off))
        .collect();
    stored_shape(&control).map_or(REGION_HISTORY_OFFSET, |shape| {
        REGION_HISTORY_OFFSET + shape.history * shape.entry_words * 8
    })
}

/// The change-history entry of one version, as copied (see [`Snapshot::region_history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCopy {
    /// The version whose entry this is (by its place in the table).
    pub version: u64,
    /// The entry's words as found: the version tag (it describes that version if it equals
    /// `version`; [`REGION_WRITING`] also when the entry changed while it was copied), then the
    /// chunk bitmap. Only the tag when the entry is longer than [`MAX_ENTRY_WORDS`]; empty
    /// when the entry lies past the end of the object or of what the tool maps.
    pub words: Vec<u64>,
}

/// A region's control block and latest history entries, copied together.
struct RegionCopy {
    control: Vec<u8>,
    history: Vec<HistoryCopy>,
    settled: bool,
}

/// Copies a region's control block and the history entries of its latest versions, again
/// while `latest` moves under the copy; `None` when the object is too short for the block.
fn copy_region<S: Source + ?Sized>(src: &S) -> Option<RegionCopy> {
    if src.len() < REGION_HISTORY_OFFSET {
        return None;
    }
    let mut copy = None;
    for _ in 0..SETTLE_ATTEMPTS {
        let latest = src.u64(REGION_OFFSET + rat::LATEST);
        // Pairs with the writer's Release store of `latest`: the buffer words and the history
        // entries of that version, loaded below, are at least as new.
        fence(Ordering::Acquire);
        let mut control = Vec::with_capacity(rat::END);
        control.extend_from_slice(&latest.to_le_bytes());
        for off in (REGION_OFFSET + 8..REGION_HISTORY_OFFSET).step_by(8) {
            control.extend_from_slice(&region_word(src, off));
        }
        let mut history = Vec::new();
        let mut torn = false;
        if let Some(shape) = stored_shape(&control) {
            for version in shown_versions(latest, shape.history) {
                let start = entry_offset(&shape, version);
                // Of an entry too long to copy, the tag only.
                let len = if shape.entry_words <= MAX_ENTRY_WORDS {
                    shape.entry_words
                } else {
                    1
                };
                if start + len * 8 > src.len() {
                    history.push(HistoryCopy {
                        version,
                        words: Vec::new(),
                    });
                    continue;
                }
                let tag = src.u64(start);
                fence(Ordering::Acquire);
                let mut words: Vec<u64> = std::iter::once(tag)
                    .chain((1..len).map(|i| src.u64(start + 8 * i)))
                    .collect();
                // The entry is a seqlock (SYNC POINT B of `crate::region`): bits of a rewrite
                // copied above show in the tag loaded after this fence.
                fence(Ordering::Acquire);
                if src.u64(start) != tag {
                    torn = true;
                    words[0] = REGION_WRITING;
                }
                history.push(HistoryCopy { version, words });
            }
        }
        fence(Ordering::Acquire);
        let settled = !torn && src.u64(REGION_OFFSET + rat::LATEST) == latest;
        copy = Some(RegionCopy {
            control,
            history,
            settled,
        });
        if settled {
            break;
        }
    }
    copy
}

/// How many endpoint slots the bytes hold: 2 for SPSC rings, probes and unknown kinds, the
/// header's slot count (within `3..=MAX_SLOTS`) for the many-endpoint kinds; only whole slots
/// inside the bytes.
fn decoded_slots(bytes: &[u8]) -> usize {
    let (Some(kind), Some(slots)) = (u32_at(bytes, at::KIND), u32_at(bytes, at::SLOT_COUNT)) else {
        return 0;
    };
    let wanted = match SegmentKind::from_code(kind) {
        Some(k) if k.has_many_side() => (slots as usize).clamp(3, MAX_SLOTS),
        _ => 2,
    };
    (0..wanted)
        .take_while(|&i| slot_offset(i) + LINE <= bytes.len())
        .count()
}

fn u64_at(bytes: &[u8], off: usize) -> Option<u64> {
    let b = bytes.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

fn u32_at(bytes: &[u8], off: usize) -> Option<u32> {
    let b = bytes.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn words_at<const N: usize>(bytes: &[u8], off: usize) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    for (i, word) in out.iter_mut().enumerate() {
        *word = u64_at(bytes, off + 8 * i)?;
    }
    Some(out)
}

fn text_at(bytes: &[u8], off: usize) -> Option<String> {
    let words: [u64; SCHEMA_TEXT_LEN / 8] = words_at(bytes, off)?;
    Some(unpack_text(&words))
}

/// A copy of a segment's metadata, and what the kernel said about its liveness tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The first bytes of the object: header, slots, control, schema and broadcast blocks, the
    /// slot table (at most [`MAX_METADATA`]; fewer when the file is shorter).
    pub bytes: Vec<u8>,
    /// The size of the object (`fstat`).
    pub file_size: u64,
    /// Whether some process holds the "in use" lock (byte 0); `None` when unknown.
    pub in_use: Option<bool>,
    /// For each decoded endpoint slot, whether some process holds its liveness token; `None`
    /// when unknown.
    pub tokens: Vec<Option<bool>>,
    /// Whether no head or cursor moved while the copy was taken, so that positions can be
    /// compared with each other (regions: the latest version did not change and no history
    /// entry copied was rewritten). When `false`, position and version checks are skipped.
    pub settled: bool,
    /// Regions: the change-history entries of the latest versions ([`shown_versions`]),
    /// newest first, copied after the control block (which is in `bytes`).
    pub region_history: Vec<HistoryCopy>,
}

impl Snapshot {
    /// A snapshot of arbitrary bytes (an object of `bytes.len()` bytes), with liveness
    /// unknown: for tests and fuzzing.
    ///
    /// A region's history entries are copied out of `bytes` as a tool copies them out of an
    /// object (see [`region_history`](Self::region_history)).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let region_history = if is_region(&bytes) {
            copy_region(&bytes[..]).map_or_else(Vec::new, |copy| copy.history)
        } else {
            Vec::new()
        };
        Snapshot {
            file_size: bytes.len() as u64,
            bytes,
            in_use: None,
            tokens: Vec::new(),
            settled: true,
            region_history,
        }
    }

    /// Takes a region's copy: its control block replaces what the linear copy read there.
    fn apply_region(&mut self, copy: RegionCopy) {
        self.bytes.truncate(REGION_OFFSET);
        if self.bytes.len() == REGION_OFFSET {
            self.bytes.extend_from_slice(&copy.control);
        }
        self.region_history = copy.history;
        self.settled &= copy.settled;
    }

    /// Decodes every field and lists what is wrong. Never panics.
    pub fn decode(&self) -> Decoded {
        Decoder::new(self).run()
    }
}

/// The segment header, field by field, as found (see [`layout::SegmentHeader`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// [`MAGIC`] once initialized, 0 while being created.
    pub magic: u64,
    /// The creator's layout version.
    pub layout_version: u32,
    /// The kind code (1 SPSC ring, 2 probe, 3 MPSC ring, 4 broadcast ring, 5 region).
    pub kind: u32,
    /// The object size the creator made.
    pub total_size: u64,
    /// Size of the data area (regions: the region's size).
    pub capacity: u64,
    /// Offset of the data area (regions: of buffer 0).
    pub data_offset: u64,
    /// Pid of the creator (in its pid namespace).
    pub creator_pid: u32,
    /// Number of endpoint slots.
    pub slot_count: u32,
    /// Start time of the creator, in clock ticks since boot.
    pub creator_start_time: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Schema fingerprint of the message type.
    pub schema: [u64; 4],
    /// Broadcast policy code.
    pub policy: u32,
    /// Broadcast history length (regions: versions of change history).
    pub history: u32,
    /// Reserved words (zero).
    pub reserved: [u64; 3],
}

impl Header {
    fn read(bytes: &[u8]) -> Option<Header> {
        Some(Header {
            magic: u64_at(bytes, at::MAGIC)?,
            layout_version: u32_at(bytes, at::VERSION)?,
            kind: u32_at(bytes, at::KIND)?,
            total_size: u64_at(bytes, at::TOTAL_SIZE)?,
            capacity: u64_at(bytes, at::CAPACITY)?,
            data_offset: u64_at(bytes, at::DATA_OFFSET)?,
            creator_pid: u32_at(bytes, at::CREATOR_PID)?,
            slot_count: u32_at(bytes, at::SLOT_COUNT)?,
            creator_start_time: u64_at(bytes, at::CREATOR_START)?,
            created_unix_ns: u64_at(bytes, at::CREATED)?,
            schema: words_at(bytes, at::SCHEMA)?,
            policy: u32_at(bytes, at::POLICY)?,
            history: u32_at(bytes, at::HISTORY)?,
            reserved: words_at(bytes, at::RESERVED)?,
        })
    }
}

/// The schema block: what the message type is, and the last opener refused for another one
/// (see [`layout::SchemaBlock`]). Display only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// The creator's description of the message type (lossy UTF-8).
    pub text: String,
    /// How many openers were refused for another type.
    pub rejections: u64,
    /// Pid of the last refused opener.
    pub rejected_pid: u32,
    /// Fingerprint of the last refused opener's type.
    pub rejected_schema: [u64; 4],
    /// Description of the last refused opener's type.
    pub rejected_text: String,
}

impl Schema {
    fn read(bytes: &[u8]) -> Option<Schema> {
        Some(Schema {
            text: text_at(bytes, SCHEMA_OFFSET)?,
            rejections: u64_at(bytes, SCHEMA_OFFSET + at::REJECTIONS)?,
            rejected_pid: u32_at(bytes, SCHEMA_OFFSET + at::REJECTED_PID)?,
            rejected_schema: words_at(bytes, SCHEMA_OFFSET + at::REJECTED_SCHEMA)?,
            rejected_text: text_at(bytes, SCHEMA_OFFSET + at::REJECTED_TEXT)?,
        })
    }
}

/// The ring control block (see [`layout::RingControl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// Next position the writer(s) will write.
    pub tail: u64,
    /// Next position the consumer will read (SPSC and MPSC rings).
    pub head: u64,
    /// 1 while the consumer sleeps on the futex.
    pub consumer_parked: u32,
    /// 1 while the producer sleeps on the futex.
    pub producer_parked: u32,
}

/// The broadcast writer's block (see [`layout::BroadcastControl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broadcast {
    /// End of the region the writer may be overwriting now.
    pub tail_intent: u64,
    /// `Block`: how far the writer may go without looking at the readers again.
    pub limit: u64,
    /// Records published so far.
    pub published: u64,
    /// Position of the first record ever written.
    pub start: u64,
}

/// A region's control block, field by field as found (see [`layout::RegionControl`]), and
/// the change history of its latest versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The latest published version.
    pub latest: u64,
    /// The version word of every buffer slot of the block ([`REGION_WRITING`]: being
    /// rewritten); only the first `buffers` are used.
    pub buffer_versions: [u64; MAX_REGION_BUFFERS],
    /// The futex word readers sleep on (the low 32 bits of `latest` once published).
    pub notify: u32,
    /// 1 while a reader may sleep in `wait_for`.
    pub parked: u32,
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
    /// Versions published by all writers (display only).
    pub publishes: u64,
    /// Writers that took over from a dead one (display only).
    pub takeovers: u64,
    /// Whether every reserved word is zero.
    pub reserved_zero: bool,
    /// The shape re-derived from `size`, `buffers`, `chunk_size` and `history` (what an opener
    /// computes); `None` when one of them is out of range.
    pub shape: Option<RegionShape>,
    /// The change history of the latest versions ([`shown_versions`]), newest first.
    pub changes: Vec<VersionChanges>,
}

/// What the change history says about one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionChanges {
    /// The version.
    pub version: u64,
    /// Its entry's index in the history table.
    pub entry: usize,
    /// What the entry holds.
    pub state: EntryState,
}

/// The state of a version's change-history entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// The entry describes the version.
    Present {
        /// How many chunks the version changed; `None` when the entry was too long to copy
        /// ([`MAX_ENTRY_WORDS`]).
        changed: Option<u64>,
        /// The first changed chunks, ascending (at most [`CHUNKS_LISTED`]).
        first: Vec<usize>,
        /// Bits set for chunks past the region's last chunk (junk: readers ignore them).
        beyond: bool,
    },
    /// The entry is being written (or its writer died writing it, or it changed while it was
    /// copied).
    Writing,
    /// The entry describes another version.
    Other(u64),
    /// The entry was not copied: it lies past the end of the object or of what a tool maps.
    NotCopied,
}

/// How many changed chunks of a version [`EntryState::Present`] lists.
pub const CHUNKS_LISTED: usize = 16;

impl Region {
    /// The control block in `bytes` (at [`REGION_OFFSET`]) and the history entries copied,
    /// or `None` when `bytes` end before the block does.
    fn read(bytes: &[u8], history: &[HistoryCopy]) -> Option<Region> {
        let control = bytes.get(REGION_OFFSET..REGION_HISTORY_OFFSET)?;
        let u64f = |off| u64_at(control, off).unwrap_or(0);
        let u32f = |off| u32_at(control, off).unwrap_or(0);
        let zero = |range: std::ops::Range<usize>| control[range].iter().all(|&b| b == 0);
        let mut region = Region {
            latest: u64f(rat::LATEST),
            buffer_versions: words_at(control, rat::BUFFER_VERSION)?,
            notify: u32f(rat::NOTIFY),
            parked: u32f(rat::PARKED),
            size: u64f(rat::SIZE),
            buffers: u32f(rat::BUFFERS),
            chunk_size: u32f(rat::CHUNK_SIZE),
            history: u32f(rat::HISTORY),
            entry_words: u32f(rat::ENTRY_WORDS),
            buffer_offset: u64f(rat::BUFFER_OFFSET),
            stride: u64f(rat::STRIDE),
            publishes: u64f(rat::PUBLISHES),
            takeovers: u64f(rat::TAKEOVERS),
            reserved_zero: zero(rat::RESERVED0..rat::PARKED)
                && zero(rat::RESERVED2..rat::SIZE)
                && zero(rat::RESERVED3..rat::END),
            shape: None,
            changes: Vec::new(),
        };
        region.shape = region.derived_shape().ok();
        if let Some(shape) = stored_shape(control) {
            region.changes = shown_versions(region.latest, shape.history)
                .map(|version| VersionChanges {
                    version,
                    entry: (version % shape.history as u64) as usize,
                    state: history
                        .iter()
                        .find(|c| c.version == version)
                        .map_or(EntryState::NotCopied, |c| entry_state(&shape, c)),
                })
                .collect();
        }
        Some(region)
    }

    /// The shape re-derived from the four parameters, or which one is out of range (its name,
    /// the value, and what is allowed).
    pub fn derived_shape(&self) -> Result<RegionShape, (&'static str, u64, String)> {
        RegionShape::new(
            self.size,
            self.buffers as usize,
            self.chunk_size as usize,
            self.history as usize,
        )
    }

    /// The buffer that holds the latest version (`latest % buffers`), when the shape is valid.
    pub fn latest_buffer(&self) -> Option<usize> {
        let shape = self.shape?;
        Some((self.latest % shape.buffers as u64) as usize)
    }

    /// The oldest version `changes_since` can list the changes from (`latest - (history -
    /// 1)`), when the shape is valid.
    pub fn oldest_changes(&self) -> Option<u64> {
        let shape = self.shape?;
        Some(self.latest.saturating_sub(shape.history as u64 - 1))
    }

    /// The version word of buffer `index` as a person reads it: the version, or `writing`.
    pub fn buffer_label(word: u64) -> String {
        if word == REGION_WRITING {
            "writing".to_owned()
        } else {
            word.to_string()
        }
    }
}

/// What a copied entry says about its version.
fn entry_state(shape: &RegionShape, copy: &HistoryCopy) -> EntryState {
    let Some(&tag) = copy.words.first() else {
        return EntryState::NotCopied;
    };
    if tag == REGION_WRITING {
        return EntryState::Writing;
    }
    if tag != copy.version {
        return EntryState::Other(tag);
    }
    let bitmap = &copy.words[1..];
    if bitmap.len() + 1 < shape.entry_words {
        return EntryState::Present {
            changed: None,
            first: Vec::new(),
            beyond: false,
        };
    }
    let mut changed = 0u64;
    let mut first = Vec::new();
    let mut beyond = false;
    for (i, &word) in bitmap.iter().enumerate() {
        let mut w = word;
        while w != 0 {
            let chunk = i * 64 + w.trailing_zeros() as usize;
            w &= w - 1;
            if chunk >= shape.chunks {
                beyond = true;
                continue;
            }
            changed += 1;
            if first.len() < CHUNKS_LISTED {
                first.push(chunk);
            }
        }
    }
    EntryState::Present {
        changed: Some(changed),
        first,
        beyond,
    }
}

/// What an endpoint slot is for, by kind and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Slot 0 of an SPSC ring.
    Producer,
    /// Slot 1 of an SPSC or MPSC ring.
    Consumer,
    /// Slot 0 of a broadcast ring and of a region, slots 2.. of an MPSC ring.
    Writer,
    /// Slots 2.. of a broadcast ring.
    Reader,
    /// A slot the kind does not use (probes, slot 0 of MPSC, slot 1 of broadcast rings and
    /// regions) or of an unknown kind.
    Unused,
}

impl Role {
    /// The role of slot `index` in a segment of kind `kind`.
    pub fn of(kind: Option<SegmentKind>, index: usize) -> Role {
        match (kind, index) {
            (Some(SegmentKind::SpscRing), 0) => Role::Producer,
            (Some(SegmentKind::SpscRing | SegmentKind::MpscRing), 1) => Role::Consumer,
            (Some(SegmentKind::MpscRing), 2..)
            | (Some(SegmentKind::BroadcastRing | SegmentKind::Region), 0) => Role::Writer,
            (Some(SegmentKind::BroadcastRing), 2..) => Role::Reader,
            _ => Role::Unused,
        }
    }

    /// Whether this endpoint writes messages (its counters count messages written).
    pub fn writes(self) -> bool {
        matches!(self, Role::Producer | Role::Writer)
    }

    /// Whether this endpoint reads messages.
    pub fn reads(self) -> bool {
        matches!(self, Role::Consumer | Role::Reader)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Unused => "unused",
        })
    }
}

/// Whether an endpoint is there, from its slot state and its liveness token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointStatus {
    /// A process holds the slot's liveness token.
    Alive,
    /// The slot says attached but nobody holds the token: the process died without detaching.
    Dead,
    /// The endpoint detached cleanly.
    Closed,
    /// No endpoint ever attached.
    Free,
    /// The token could not be asked.
    Unknown,
}

impl fmt::Display for EndpointStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointStatus::Alive => "alive",
            EndpointStatus::Dead => "dead",
            EndpointStatus::Closed => "closed",
            EndpointStatus::Free => "free",
            EndpointStatus::Unknown => "unknown",
        })
    }
}

/// One endpoint slot, field by field (see [`layout::EndpointSlot`]), and its liveness token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Slot index (its token is byte `1 + index`).
    pub index: usize,
    /// What the slot is for.
    pub role: Role,
    /// Slot state (0 never attached, 1 attached, 2 closed).
    pub state: u32,
    /// Pid of the endpoint's process, in its pid namespace. Display only.
    pub pid: u32,
    /// Start time of that process, in clock ticks since boot.
    pub start_time: u64,
    /// How many endpoints have attached to the slot so far.
    pub attach_count: u64,
    /// Broadcast readers: the next position to read.
    pub cursor: u64,
    /// Messages written or read through the slot so far.
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Times the ring was full (writers) or empty (readers).
    pub waits: u64,
    /// Records lost to being lapped (broadcast `Lap` readers).
    pub dropped: u64,
    /// MPSC writers: the tail this writer claims at (`u64::MAX` when none).
    pub intent: u64,
    /// Whether a process holds the slot's liveness token; `None` when unknown.
    pub token: Option<bool>,
}

impl Endpoint {
    fn read(bytes: &[u8], index: usize, kind: Option<SegmentKind>, token: Option<bool>) -> Self {
        let base = slot_offset(index);
        let u64f = |off| u64_at(bytes, base + off).unwrap_or(0);
        Endpoint {
            index,
            role: Role::of(kind, index),
            state: u32_at(bytes, base + at::STATE).unwrap_or(0),
            pid: u32_at(bytes, base + at::PID).unwrap_or(0),
            start_time: u64f(at::START_TIME),
            attach_count: u64f(at::ATTACH_COUNT),
            cursor: u64f(at::CURSOR),
            messages: u64f(at::MESSAGES),
            bytes: u64f(at::BYTES),
            waits: u64f(at::WAITS),
            dropped: u64f(at::DROPPED),
            intent: u64f(at::INTENT),
            token,
        }
    }

    /// Alive, dead, closed, free or unknown: the liveness token decides, the slot state tells
    /// the rest.
    pub fn status(&self) -> EndpointStatus {
        match (self.token, self.state) {
            (Some(true), _) => EndpointStatus::Alive,
            (_, SLOT_NEVER) if self.attach_count == 0 => EndpointStatus::Free,
            (_, SLOT_CLOSED) => EndpointStatus::Closed,
            (Some(false), _) => EndpointStatus::Dead,
            (None, _) => EndpointStatus::Unknown,
        }
    }

    /// Whether a live process holds this endpoint.
    pub fn is_alive(&self) -> bool {
        self.token == Some(true)
    }

    /// Whether anything ever attached to this slot (or someone holds it now).
    pub fn is_used(&self) -> bool {
        self.status() != EndpointStatus::Free
    }
}

/// Something wrong with a segment: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field (or part of the object) concerned.
    pub field: String,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Everything decoded from a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The size of the object.
    pub file_size: u64,
    /// The header, when the object holds one.
    pub header: Option<Header>,
    /// The kind, when the header's code is known.
    pub kind: Option<SegmentKind>,
    /// The broadcast policy, when the kind is a broadcast ring and the code is known.
    pub policy: Option<BroadcastPolicy>,
    /// The schema block, when the object holds one.
    pub schema: Option<Schema>,
    /// The ring control block, when the object holds one.
    pub control: Option<Control>,
    /// The broadcast block (many-endpoint kinds), when the object holds one.
    pub broadcast: Option<Broadcast>,
    /// A region's control block and latest history, when the kind is a region and the object
    /// holds the block.
    pub region: Option<Region>,
    /// The endpoint slots the object holds (2 for SPSC rings).
    pub endpoints: Vec<Endpoint>,
    /// Whether some process holds the "in use" lock; `None` when unknown.
    pub in_use: Option<bool>,
    /// See [`Snapshot::settled`].
    pub settled: bool,
    /// Everything wrong found; empty for a valid segment.
    pub problems: Vec<Problem>,
}

/// Messages and bytes that went through a segment, added up over its endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages written (producer and writers).
    pub written_messages: u64,
    /// Payload bytes written.
    pub written_bytes: u64,
    /// Messages read (consumer and readers: a broadcast message counts once per reader).
    pub read_messages: u64,
    /// Payload bytes read.
    pub read_bytes: u64,
    /// Records lost by lapped readers.
    pub dropped: u64,
    /// Waits of every endpoint (full for writers, empty for readers).
    pub waits: u64,
}

impl Decoded {
    /// Whether nothing is wrong.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether the header is published (non-zero magic).
    pub fn is_initialized(&self) -> bool {
        self.header.as_ref().is_some_and(|h| h.magic != 0)
    }

    /// The capacity, when it is a usable one (a power of two in range).
    pub fn capacity(&self) -> Option<u64> {
        let capacity = self.header.as_ref()?.capacity;
        (self.kind.is_some_and(SegmentKind::is_ring) && check_capacity(capacity).is_ok())
            .then_some(capacity)
    }

    /// Bytes written and not yet read, at most the capacity: `tail - head` for SPSC and MPSC
    /// rings, `tail - ` the oldest live reader's cursor for broadcast rings (0 without live
    /// readers). `None` for probes, unknown kinds and unusable capacities.
    pub fn fill(&self) -> Option<u64> {
        let capacity = self.capacity()?;
        let control = self.control?;
        let behind = |pos: u64| {
            let d = control.tail.wrapping_sub(pos);
            // A position ahead of the tail (junk, or a copy that did not settle) is not behind.
            if d > i64::MAX as u64 {
                0
            } else {
                d.min(capacity)
            }
        };
        match self.kind? {
            SegmentKind::SpscRing | SegmentKind::MpscRing => Some(behind(control.head)),
            SegmentKind::BroadcastRing => Some(
                self.endpoints
                    .iter()
                    .filter(|e| e.role == Role::Reader && e.is_alive())
                    .map(|e| behind(e.cursor))
                    .max()
                    .unwrap_or(0),
            ),
            SegmentKind::Probe | SegmentKind::Region => None,
        }
    }

    /// Counters added up over the endpoints, by role.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for e in &self.endpoints {
            if e.role.writes() {
                t.written_messages = t.written_messages.wrapping_add(e.messages);
                t.written_bytes = t.written_bytes.wrapping_add(e.bytes);
            } else if e.role.reads() {
                t.read_messages = t.read_messages.wrapping_add(e.messages);
                t.read_bytes = t.read_bytes.wrapping_add(e.bytes);
                t.dropped = t.dropped.wrapping_add(e.dropped);
            }
            t.waits = t.waits.wrapping_add(e.waits);
        }
        t
    }

    /// The endpoints a live process holds.
    pub fn live_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.is_alive())
    }

    /// The data offset a valid segment of this header's kind and shape has, when it can be
    /// told.
    pub fn expected_data_offset(&self) -> Option<u64> {
        let h = self.header.as_ref()?;
        let slots = h.slot_count as usize;
        let offset = match self.kind? {
            SegmentKind::SpscRing | SegmentKind::Probe => DATA_OFFSET,
            SegmentKind::MpscRing if (3..=MAX_SLOTS).contains(&slots) => {
                layout::data_offset(slots, 0)
            }
            SegmentKind::BroadcastRing
                if (3..=MAX_SLOTS).contains(&slots) && h.history as usize <= MAX_HISTORY =>
            {
                layout::data_offset(slots, h.history as usize)
            }
            SegmentKind::Region => self.region.as_ref()?.shape?.buffer_offset,
            _ => return None,
        };
        Some(offset as u64)
    }
}

/// The decoding of one snapshot: fields first, then checks.
struct Decoder<'a> {
    snap: &'a Snapshot,
    out: Decoded,
}

impl<'a> Decoder<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        Decoder {
            snap,
            out: Decoded {
                file_size: snap.file_size,
                header: None,
                kind: None,
                policy: None,
                schema: None,
                control: None,
                broadcast: None,
                region: None,
                endpoints: Vec::new(),
                in_use: snap.in_use,
                settled: snap.settled,
                problems: Vec::new(),
            },
        }
    }

    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.problems.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn run(mut self) -> Decoded {
        let bytes = &self.snap.bytes[..];
        let size = self.snap.file_size;
        let Some(header) = Header::read(bytes) else {
            self.problem(
                "file",
                format!(
                    "{size} bytes, too small for the {}-byte header: truncated, or not made by \
                     shmesh",
                    at::HEADER_END
                ),
            );
            return self.out;
        };
        let kind = SegmentKind::from_code(header.kind);
        self.out.kind = kind;
        if kind == Some(SegmentKind::BroadcastRing) {
            self.out.policy = BroadcastPolicy::from_code(header.policy);
        }
        self.out.schema = Schema::read(bytes);
        let region = kind == Some(SegmentKind::Region);
        if region {
            // A region leaves the ring control block unused.
            self.out.region = Region::read(bytes, &self.snap.region_history);
        } else if let (Some(tail), Some(head)) = (u64_at(bytes, TAIL), u64_at(bytes, HEAD)) {
            self.out.control = Some(Control {
                tail,
                head,
                consumer_parked: u32_at(bytes, CONSUMER_PARKED).unwrap_or(0),
                producer_parked: u32_at(bytes, PRODUCER_PARKED).unwrap_or(0),
            });
        }
        if kind.is_some_and(SegmentKind::has_many_side) {
            if let Some([tail_intent, limit, published, start]) = words_at(bytes, EXT_OFFSET) {
                self.out.broadcast = Some(Broadcast {
                    tail_intent,
                    limit,
                    published,
                    start,
                });
            }
        }
        self.out.endpoints = (0..decoded_slots(bytes))
            .map(|i| {
                let token = self.snap.tokens.get(i).copied().flatten();
                Endpoint::read(bytes, i, kind, token)
            })
            .collect();
        self.out.header = Some(header.clone());

        if size < DATA_OFFSET as u64 {
            self.problem(
                "file",
                format!(
                    "{size} bytes, too small for a segment (at least {DATA_OFFSET}): truncated"
                ),
            );
        }
        if header.magic == 0 {
            self.problem(
                "magic",
                "0: not initialized (being created right now, or its creator died while \
                 creating it; a new create() of the name reclaims it)",
            );
            return self.out;
        }
        self.check_header(&header, kind);
        self.check_positions(kind);
        self.check_slots();
        if region {
            self.check_region(&header);
        }
        self.out
    }

    fn check_header(&mut self, h: &Header, kind: Option<SegmentKind>) {
        let size = self.snap.file_size;
        if h.magic != MAGIC {
            self.problem(
                "magic",
                format!(
                    "{:#018x}, expected {MAGIC:#018x} (\"SHMESH\\0\\x01\"): not a shmesh \
                     segment, or overwritten",
                    h.magic
                ),
            );
        }
        if h.layout_version != LAYOUT_VERSION {
            self.problem(
                "layout version",
                format!(
                    "{}, this tool reads version {LAYOUT_VERSION}: the fields below may be \
                     misread",
                    h.layout_version
                ),
            );
        }
        if h.total_size != size {
            self.problem(
                "total size",
                format!(
                    "{} in the header, but the object is {size} bytes",
                    h.total_size
                ),
            );
        }
        if h.reserved != [0; 3] {
            self.problem(
                "reserved",
                "not zero: written by a newer or a buggy creator, or overwritten",
            );
        }
        let Some(kind) = kind else {
            self.problem(
                "kind",
                format!(
                    "{} is unknown (1 spsc ring, 2 probe, 3 mpsc ring, 4 broadcast ring, 5 \
                     region): the kind-specific fields are not checked",
                    h.kind
                ),
            );
            return;
        };
        let slots = h.slot_count as usize;
        match kind {
            SegmentKind::SpscRing | SegmentKind::Probe | SegmentKind::Region if slots != 2 => {
                self.problem("slot count", format!("{slots}, expected 2 for a {kind}"));
            }
            SegmentKind::MpscRing | SegmentKind::BroadcastRing
                if !(3..=MAX_SLOTS).contains(&slots) =>
            {
                self.problem(
                    "slot count",
                    format!("{slots}, expected 3 to {MAX_SLOTS} for a {kind}"),
                );
            }
            _ => {}
        }
        if kind == SegmentKind::BroadcastRing {
            if !matches!(h.policy, POLICY_BLOCK | POLICY_LAP) {
                self.problem(
                    "policy",
                    format!(
                        "{}, expected {POLICY_BLOCK} (block) or {POLICY_LAP} (lap)",
                        h.policy
                    ),
                );
            }
            if h.history as usize > MAX_HISTORY {
                self.problem(
                    "history",
                    format!("{} records, at most {MAX_HISTORY}", h.history),
                );
            }
        } else {
            if h.policy != 0 {
                self.problem("policy", format!("{}, expected 0 for a {kind}", h.policy));
            }
            // A region's history is checked against its control block (`check_region`).
            if h.history != 0 && kind != SegmentKind::Region {
                self.problem("history", format!("{}, expected 0 for a {kind}", h.history));
            }
        }
        let expected_offset = self.out.expected_data_offset();
        match expected_offset {
            Some(expected) if expected != h.data_offset => self.problem(
                "data offset",
                format!("{}, expected {expected}", h.data_offset),
            ),
            Some(_) => {}
            None => self.problem(
                "data offset",
                format!(
                    "{}: not checked, {}",
                    h.data_offset,
                    if kind == SegmentKind::Region {
                        "the region's shape is invalid"
                    } else {
                        "the slot count or history is invalid"
                    }
                ),
            ),
        }
        if kind.is_ring() {
            if check_capacity(h.capacity).is_err() {
                self.problem(
                    "capacity",
                    format!(
                        "{}, expected a power of two from {} to {}",
                        h.capacity,
                        crate::spsc::MIN_CAPACITY,
                        crate::spsc::MAX_CAPACITY
                    ),
                );
            } else if h
                .data_offset
                .checked_add(h.capacity)
                .is_none_or(|end| end > size)
            {
                self.problem(
                    "capacity",
                    format!(
                        "{} bytes at offset {} do not fit the {size}-byte object",
                        h.capacity, h.data_offset
                    ),
                );
            }
        } else if h.capacity != 0 && kind != SegmentKind::Region {
            // A region's capacity is its size: checked in `check_region`.
            self.problem(
                "capacity",
                format!("{}, expected 0 for a {kind}", h.capacity),
            );
        }
        let needed = metadata_len(h.kind, h.slot_count) as u64;
        if kind.has_many_side() && size < needed {
            self.problem(
                "file",
                format!("{size} bytes, too small for its {} endpoint slots", slots),
            );
        }
    }

    fn check_positions(&mut self, kind: Option<SegmentKind>) {
        let Some(control) = self.out.control else {
            return;
        };
        // The SPSC ring's parked words are flags; the many-endpoint kinds may count sleepers.
        if kind == Some(SegmentKind::SpscRing) {
            for (field, value) in [
                ("consumer parked", control.consumer_parked),
                ("producer parked", control.producer_parked),
            ] {
                if value > 1 {
                    self.problem(field, format!("{value}, expected 0 or 1"));
                }
            }
        }
        let Some(kind) = kind.filter(|k| k.is_ring()) else {
            return;
        };
        let Some(capacity) = self.out.capacity() else {
            return;
        };
        if control.tail % RECORD_ALIGN != 0 {
            self.problem(
                "tail",
                format!("{}, not a multiple of {RECORD_ALIGN}", control.tail),
            );
        }
        if !self.snap.settled {
            // Positions moved while copied: comparing them could report a race as junk.
            return;
        }
        match kind {
            SegmentKind::SpscRing | SegmentKind::MpscRing => {
                if control.head % RECORD_ALIGN != 0 {
                    self.problem(
                        "head",
                        format!("{}, not a multiple of {RECORD_ALIGN}", control.head),
                    );
                }
                let used = control.tail.wrapping_sub(control.head);
                if used > capacity {
                    self.problem(
                        "tail/head",
                        format!(
                            "tail {} and head {} are {} bytes apart, more than the {capacity}-byte \
                             capacity (or head ahead of tail)",
                            control.tail, control.head, used as i64
                        ),
                    );
                }
            }
            SegmentKind::BroadcastRing => {
                let ahead: Vec<(usize, u64)> = self
                    .out
                    .endpoints
                    .iter()
                    .filter(|e| e.role == Role::Reader && e.is_alive())
                    .filter(|e| control.tail.wrapping_sub(e.cursor) > i64::MAX as u64)
                    .map(|e| (e.index, e.cursor))
                    .collect();
                for (index, cursor) in ahead {
                    self.problem(
                        format!("slot {index} cursor"),
                        format!("{cursor}, ahead of the tail {}", control.tail),
                    );
                }
            }
            SegmentKind::Probe | SegmentKind::Region => {}
        }
    }

    /// A region's control block against its header, its own shape and its latest version.
    fn check_region(&mut self, h: &Header) {
        let size = self.snap.file_size;
        let Some(region) = self.out.region.clone() else {
            self.problem(
                "file",
                format!(
                    "{size} bytes, too small for a region's control block (at least \
                     {REGION_HISTORY_OFFSET})"
                ),
            );
            return;
        };
        if !region.reserved_zero {
            self.problem(
                "region reserved",
                "not zero: written by a newer or a buggy creator, or overwritten",
            );
        }
        if region.parked > 1 {
            self.problem("parked", format!("{}, expected 0 or 1", region.parked));
        }
        let shape = match region.derived_shape() {
            Ok(shape) => shape,
            Err((what, found, allowed)) => {
                self.problem(
                    format!("region {what}"),
                    format!("{found}, expected {allowed}"),
                );
                return;
            }
        };
        for (field, found, expected) in [
            (
                "region entry words",
                u64::from(region.entry_words),
                shape.entry_words as u64,
            ),
            (
                "region buffer offset",
                region.buffer_offset,
                shape.buffer_offset as u64,
            ),
            ("region stride", region.stride, shape.stride as u64),
            ("capacity", h.capacity, shape.size as u64),
            ("history", u64::from(h.history), shape.history as u64),
        ] {
            if found != expected {
                self.problem(
                    field,
                    format!("{found}, expected {expected} for the region's shape"),
                );
            }
        }
        let page = rustix::param::page_size() as u64;
        let total = (shape.end as u64).div_ceil(page) * page;
        if h.total_size != total {
            self.problem(
                "total size",
                format!(
                    "{}, expected {total} for the region's shape (its buffers end at {})",
                    h.total_size, shape.end
                ),
            );
        }
        for (i, &word) in region.buffer_versions.iter().enumerate() {
            if i >= shape.buffers && word != 0 {
                self.problem(
                    format!("buffer {i}"),
                    format!(
                        "{word}, expected 0: the region has {} buffers",
                        shape.buffers
                    ),
                );
            }
        }
        if !self.snap.settled {
            // The latest version moved while it was copied: comparing versions could report a
            // race as junk.
            return;
        }
        let latest = region.latest;
        for (i, &word) in region.buffer_versions[..shape.buffers].iter().enumerate() {
            // The writer marks a buffer with the next version just before `latest` says it.
            if word != REGION_WRITING && word > latest.saturating_add(1) {
                self.problem(
                    format!("buffer {i}"),
                    format!("version {word}, ahead of the latest version {latest}"),
                );
            }
        }
        let index = (latest % shape.buffers as u64) as usize;
        let word = region.buffer_versions[index];
        if word != latest {
            self.problem(
                format!("buffer {index}"),
                format!(
                    "{}, expected {latest}: the latest version lives in buffer {index} (latest % \
                     buffers), and readers look for it there (they retry for ever)",
                    Region::buffer_label(word)
                ),
            );
        }
        for c in &region.changes {
            let found = match c.state {
                EntryState::Present { beyond: true, .. } => {
                    self.problem(
                        format!("version {}", c.version),
                        format!(
                            "history entry {} has bits set past the last chunk ({}): readers \
                             ignore them",
                            c.entry,
                            shape.chunks - 1
                        ),
                    );
                    continue;
                }
                EntryState::Present { .. } | EntryState::NotCopied => continue,
                EntryState::Writing => "being written".to_owned(),
                EntryState::Other(tag) => format!("version {tag}"),
            };
            self.problem(
                format!("version {}", c.version),
                format!(
                    "history entry {} says {found}, expected version {}: changes_since over it \
                     fails (readers take full snapshots)",
                    c.entry, c.version
                ),
            );
        }
    }

    fn check_slots(&mut self) {
        let odd: Vec<(usize, u32)> = self
            .out
            .endpoints
            .iter()
            .filter(|e| !matches!(e.state, SLOT_NEVER | SLOT_ATTACHED | SLOT_CLOSED))
            .map(|e| (e.index, e.state))
            .collect();
        for (index, state) in odd {
            self.problem(
                format!("slot {index} state"),
                format!("{state}, expected 0 (never), 1 (attached) or 2 (closed)"),
            );
        }
    }
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use super::*;
    use crate::segment::SegmentBuilder;
    use crate::BroadcastPolicy;
    use proptest::prelude::*;
    use std::os::unix::fs::FileExt;

    fn name(test: &str) -> String {
        format!("inspect-{}-{test}", std::process::id())
    }

    /// Removes the object of a test's name, whatever happens.
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(object_path(&self.0));
        }
    }

    fn decode(name: &str) -> Decoded {
        SegmentFile::open(name)
            .unwrap()
            .snapshot()
            .unwrap()
            .decode()
    }

    #[test]
    fn a_fresh_spsc_ring_decodes_without_problems_and_tokens_are_seen_read_only() {
        let name = name("spsc");
        let _clean = Cleanup(name.clone());
        let seg = SegmentBuilder::new(&name)
            .capacity(4096)
            .schema([1, 2, 3, 4])
            .schema_text("demo::Msg")
            .create()
            .unwrap();
        let d = decode(&name);
        assert!(d.is_valid(), "{:?}", d.problems);
        let h = d.header.as_ref().unwrap();
        assert_eq!(h.magic, MAGIC);
        assert_eq!(h.layout_version, LAYOUT_VERSION);
        assert_eq!(d.kind, Some(SegmentKind::SpscRing));
        assert_eq!(h.capacity, 4096);
        assert_eq!(h.total_size, seg.total_size());
        assert_eq!(h.creator_pid, std::process::id());
        assert_eq!(h.schema, [1, 2, 3, 4]);
        assert_eq!(d.schema.as_ref().unwrap().text, "demo::Msg");
        assert_eq!(d.in_use, Some(true), "the creator's handle holds byte 0");
        assert_eq!(d.endpoints.len(), 2);
        assert!(d
            .endpoints
            .iter()
            .all(|e| e.status() == EndpointStatus::Free));
        assert_eq!(d.fill(), Some(0));

        let mut tx = seg.producer().unwrap();
        let mut rx = seg.consumer().unwrap();
        for _ in 0..3 {
            tx.claim(10).unwrap().commit(10);
        }
        drop(rx.read().unwrap());
        let d = decode(&name);
        assert!(d.is_valid(), "{:?}", d.problems);
        assert_eq!(d.endpoints[0].status(), EndpointStatus::Alive);
        assert_eq!(d.endpoints[1].status(), EndpointStatus::Alive);
        assert_eq!(d.endpoints[0].role, Role::Producer);
        assert_eq!(d.endpoints[0].pid, std::process::id());
        let t = d.totals();
        assert_eq!((t.written_messages, t.written_bytes), (3, 30));
        assert_eq!((t.read_messages, t.read_bytes), (1, 10));
        assert_eq!(d.fill(), Some(2 * 32));
        drop(tx);
        let d = decode(&name);
        assert_eq!(d.endpoints[0].status(), EndpointStatus::Closed);
        assert_eq!(d.endpoints[1].status(), EndpointStatus::Alive);
    }

    #[test]
    fn many_endpoint_kinds_decode_their_shape() {
        let mpsc = name("mpsc");
        let _a = Cleanup(mpsc.clone());
        let _m = SegmentBuilder::new(&mpsc)
            .kind(SegmentKind::MpscRing)
            .capacity(1 << 12)
            .endpoints(5)
            .create()
            .unwrap();
        let d = decode(&mpsc);
        assert!(d.is_valid(), "{:?}", d.problems);
        assert_eq!(d.kind, Some(SegmentKind::MpscRing));
        assert_eq!(d.endpoints.len(), 7);
        assert_eq!(d.endpoints[1].role, Role::Consumer);
        assert_eq!(d.endpoints[6].role, Role::Writer);
        assert_eq!(
            d.header.as_ref().unwrap().data_offset as usize,
            layout::data_offset(7, 0)
        );
        assert!(d.broadcast.is_some());

        let bcast = name("bcast");
        let _b = Cleanup(bcast.clone());
        let _s = SegmentBuilder::new(&bcast)
            .kind(SegmentKind::BroadcastRing)
            .capacity(1 << 12)
            .endpoints(3)
            .policy(BroadcastPolicy::Lap)
            .history(8)
            .start_position(4096)
            .create()
            .unwrap();
        let d = decode(&bcast);
        assert!(d.is_valid(), "{:?}", d.problems);
        assert_eq!(d.policy, Some(BroadcastPolicy::Lap));
        assert_eq!(
            d.header.as_ref().unwrap().history as usize,
            crate::broadcast::table_len(BroadcastPolicy::Lap, 8)
        );
        assert_eq!(d.endpoints[0].role, Role::Writer);
        assert_eq!(d.endpoints[4].role, Role::Reader);
        assert_eq!(d.broadcast.unwrap().start, 4096);
        assert_eq!(d.fill(), Some(0), "no live reader");
    }

    #[test]
    fn scribbled_headers_list_each_problem() {
        let name = name("scribble");
        let _clean = Cleanup(name.clone());
        let _seg = SegmentBuilder::new(&name).capacity(4096).create().unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(object_path(&name))
            .unwrap();
        let put = |off: u64, v: u64| file.write_all_at(&v.to_le_bytes(), off).unwrap();
        put(0, 0xdead_beef);
        put(8, 7 | 1 << 32); // version 7, kind 1
        put(24, 1000);
        put(32, 64);
        let d = decode(&name);
        let fields: Vec<&str> = d.problems.iter().map(|p| p.field.as_str()).collect();
        for f in ["magic", "layout version", "capacity", "data offset"] {
            assert!(fields.contains(&f), "{f} missing from {:?}", d.problems);
        }
        put(8, 3 | 9 << 32); // kind 9
        let d = decode(&name);
        assert!(d
            .problems
            .iter()
            .any(|p| p.field == "kind" && p.message.contains('9')));
    }

    #[test]
    fn a_truncated_or_tiny_file_is_called_out() {
        for len in [0usize, 5, 127, 128, 1000, 1543] {
            let name = name(&format!("tiny{len}"));
            let _clean = Cleanup(name.clone());
            std::fs::write(object_path(&name), vec![0x5au8; len]).unwrap();
            let d = decode(&name);
            assert!(!d.is_valid(), "{len} bytes");
            assert!(
                d.problems.iter().any(|p| p.field == "file"),
                "{len}: {:?}",
                d.problems
            );
            assert_eq!(d.in_use, Some(false));
        }
    }

    #[test]
    fn other_files_are_refused_without_being_opened() {
        let name = name("fifo");
        let _clean = Cleanup(name.clone());
        rustix::fs::mknodat(
            rustix::fs::CWD,
            object_path(&name).as_str(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            SegmentFile::open(&name),
            Err(InspectError::NotAFile { what: "a FIFO", .. })
        ));
        let listed = list().unwrap();
        let entry = listed.iter().find(|l| l.name == name).expect("listed");
        assert!(matches!(entry.file, Err(InspectError::NotAFile { .. })));
        assert!(matches!(
            SegmentFile::open("../etc"),
            Err(InspectError::Name(SegmentError::InvalidName { .. }))
        ));
    }

    /// The metadata of a valid broadcast ring with 6 slots, copied once.
    fn valid_bytes() -> Vec<u8> {
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        BYTES
            .get_or_init(|| {
                let name = name("valid");
                let _clean = Cleanup(name.clone());
                let _seg = SegmentBuilder::new(&name)
                    .kind(SegmentKind::BroadcastRing)
                    .capacity(4096)
                    .endpoints(4)
                    .create()
                    .unwrap();
                let snap = SegmentFile::open(&name).unwrap().snapshot().unwrap();
                assert!(snap.decode().is_valid());
                snap.bytes
            })
            .clone()
    }

    fn put(bytes: &mut [u8], off: usize, value: u64) {
        bytes[off..off + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn broadcast_fill_counts_the_oldest_live_reader_and_cursors_ahead_are_called_out() {
        let mut bytes = valid_bytes();
        put(&mut bytes, TAIL, 1024);
        for (slot, cursor) in [(2, 512), (3, 96), (4, 896)] {
            put(
                &mut bytes,
                slot_offset(slot) + at::STATE,
                u64::from(SLOT_ATTACHED),
            );
            put(&mut bytes, slot_offset(slot) + at::CURSOR, cursor);
        }
        let total = u64_at(&bytes, at::TOTAL_SIZE).unwrap();
        let mut snap = Snapshot::from_bytes(bytes);
        snap.file_size = total;
        // Slot 3 (the oldest cursor) is dead: it holds nobody back.
        snap.tokens = vec![
            Some(false),
            Some(false),
            Some(true),
            Some(false),
            Some(true),
        ];
        let d = snap.decode();
        assert!(d.is_valid(), "{:?}", d.problems);
        assert_eq!(d.endpoints[3].status(), EndpointStatus::Dead);
        assert_eq!(d.fill(), Some(1024 - 512));

        put(&mut snap.bytes, slot_offset(4) + at::CURSOR, 2048);
        let d = snap.decode();
        assert!(
            d.problems.iter().any(|p| p.field == "slot 4 cursor"),
            "{:?}",
            d.problems
        );
        assert_eq!(d.fill(), Some(512), "a cursor ahead is not behind");
    }

    #[test]
    fn positions_are_compared_only_in_a_settled_copy() {
        let name = name("positions");
        let _clean = Cleanup(name.clone());
        let _seg = SegmentBuilder::new(&name).capacity(4096).create().unwrap();
        let mut snap = SegmentFile::open(&name).unwrap().snapshot().unwrap();
        assert!(snap.settled, "nothing moves");
        put(&mut snap.bytes, TAIL, 8192);
        put(&mut snap.bytes, HEAD, 16);
        let d = snap.decode();
        assert!(
            d.problems.iter().any(|p| p.field == "tail/head"),
            "{:?}",
            d.problems
        );
        assert_eq!(d.fill(), Some(4096), "clamped to the capacity");
        snap.settled = false;
        assert!(snap.decode().is_valid());
        put(&mut snap.bytes, CONSUMER_PARKED, 7);
        assert!(snap
            .decode()
            .problems
            .iter()
            .any(|p| p.field == "consumer parked"));
    }

    /// A region of 1000 bytes in 64-byte chunks (16 chunks), 3 buffers, history 8.
    fn region(name: &str) -> crate::Segment {
        SegmentBuilder::new(name)
            .kind(SegmentKind::Region)
            .capacity(1000)
            .buffers(3)
            .chunk_size(64)
            .history(8)
            .create()
            .unwrap()
    }

    /// Version `v` of the regions of these tests changes chunks `v % 16` and `(v + 3) % 16`.
    fn publish(writer: &mut crate::region::Writer<crate::segment::ShmRegion>, times: u64) {
        for _ in 0..times {
            let v = writer.version() + 1;
            let mut scope = writer.write();
            scope.write_at((v % 16) as usize * 64, &[v as u8]);
            scope.write_at(((v + 3) % 16) as usize * 64, &[v as u8]);
            assert_eq!(scope.publish(), v);
        }
    }

    #[test]
    fn a_fresh_region_decodes_without_problems() {
        let name = name("region-fresh");
        let _clean = Cleanup(name.clone());
        let seg = region(&name);
        let d = decode(&name);
        assert!(d.is_valid(), "{:?}", d.problems);
        assert_eq!(d.kind, Some(SegmentKind::Region));
        assert!(d.control.is_none() && d.broadcast.is_none());
        let h = d.header.as_ref().unwrap();
        assert_eq!(h.capacity, 1000);
        assert_eq!(h.history, 8);
        let r = d.region.as_ref().expect("the region block");
        let shape = seg.region_shape().unwrap();
        assert_eq!(r.shape, Some(shape));
        assert_eq!(d.expected_data_offset(), Some(shape.buffer_offset as u64));
        assert_eq!(h.data_offset, shape.buffer_offset as u64);
        assert_eq!(
            (r.size, r.buffers, r.chunk_size, r.history),
            (1000, 3, 64, 8)
        );
        assert_eq!(r.entry_words as usize, shape.entry_words);
        assert_eq!(r.stride as usize, shape.stride);
        assert_eq!(r.latest, 0);
        assert_eq!(r.buffer_versions, [0; 8]);
        assert_eq!((r.publishes, r.takeovers, r.parked), (0, 0, 0));
        assert!(r.changes.is_empty(), "version 0 has no history entry");
        assert_eq!(r.oldest_changes(), Some(0));
        assert_eq!(r.latest_buffer(), Some(0));
        assert_eq!(d.endpoints.len(), 2);
        assert_eq!(d.endpoints[0].role, Role::Writer);
        assert_eq!(d.endpoints[1].role, Role::Unused);
        assert_eq!(d.endpoints[0].status(), EndpointStatus::Free);
        assert_eq!(d.in_use, Some(true));
        assert_eq!(d.fill(), None);
    }

    #[test]
    fn a_written_region_shows_its_version_buffers_writer_and_history() {
        let name = name("region-written");
        let _clean = Cleanup(name.clone());
        let seg = region(&name);
        let mut writer = seg.region_writer().unwrap();
        publish(&mut writer, 10);
        let d = decode(&name);
        assert!(d.is_valid(), "{:?}", d.problems);
        let r = d.region.as_ref().unwrap();
        assert_eq!(r.latest, 10);
        assert_eq!(r.publishes, 10);
        assert_eq!(r.notify, 10);
        assert_eq!(r.latest_buffer(), Some(1));
        assert_eq!(&r.buffer_versions[..3], &[9, 10, 8]);
        // History 8: `changes_since` answers from version 3, with the entries of 4 ..= 10.
        assert_eq!(r.oldest_changes(), Some(3));
        let reader = seg.region_reader().unwrap();
        assert!(reader.changes_since(3).is_ok());
        assert!(reader.changes_since(2).is_err());
        let versions: Vec<u64> = r.changes.iter().map(|c| c.version).collect();
        assert_eq!(versions, (4..=10).rev().collect::<Vec<_>>());
        for c in &r.changes {
            let mut chunks = vec![(c.version % 16) as usize, ((c.version + 3) % 16) as usize];
            chunks.sort();
            assert_eq!(c.entry, (c.version % 8) as usize);
            assert_eq!(
                c.state,
                EntryState::Present {
                    changed: Some(2),
                    first: chunks,
                    beyond: false
                },
                "version {}",
                c.version
            );
        }
        let w = &d.endpoints[0];
        assert_eq!(w.role, Role::Writer);
        assert_eq!(w.status(), EndpointStatus::Alive);
        assert_eq!((w.pid, w.attach_count), (std::process::id(), 1));

        // Many more versions than the history: only the latest few are copied.
        publish(&mut writer, 30);
        let d = decode(&name);
        assert!(d.is_valid(), "{:?}", d.problems);
        let r = d.region.as_ref().unwrap();
        assert_eq!(r.latest, 40);
        assert_eq!(r.changes.first().map(|c| c.version), Some(40));
        assert_eq!(r.changes.last().map(|c| c.version), Some(34));

        // A clean detach, then a second writer: no takeover.
        drop(writer);
        assert_eq!(decode(&name).endpoints[0].status(), EndpointStatus::Closed);
        let mut writer = seg.region_writer().unwrap();
        publish(&mut writer, 1);
        let d = decode(&name);
        let r = d.region.as_ref().unwrap();
        assert_eq!((r.latest, r.takeovers), (41, 0));
        assert_eq!(d.endpoints[0].attach_count, 2);
        // A scope being written: its buffer says so, and nothing is wrong.
        let scope = writer.write();
        let d = decode(&name);
        assert!(d.is_valid(), "{:?}", d.problems);
        let r = d.region.as_ref().unwrap();
        assert_eq!(r.buffer_versions[42 % 3], REGION_WRITING);
        assert_eq!(Region::buffer_label(r.buffer_versions[42 % 3]), "writing");
        drop(scope);
    }

    #[test]
    fn the_history_is_read_past_the_metadata_mapping() {
        // 16 Ki chunks: 257-word entries, a table of 128 of them ends far past MAX_METADATA.
        let name = name("region-long");
        let _clean = Cleanup(name.clone());
        let seg = SegmentBuilder::new(&name)
            .kind(SegmentKind::Region)
            .capacity(1 << 20)
            .buffers(2)
            .chunk_size(64)
            .history(128)
            .create()
            .unwrap();
        let shape = seg.region_shape().unwrap();
        assert!(entry_offset(&shape, 127) > MAX_METADATA);
        let mut writer = seg.region_writer().unwrap();
        for v in 1..=127u64 {
            let mut scope = writer.write();
            scope.write_at(v as usize * 8192, &[1]);
            scope.write_at(v as usize * 8192 + 64, &[1]);
            scope.write_at(v as usize * 8192 + 640, &[1]);
            scope.publish();
        }
        let d = decode(&name);
        assert!(d.is_valid(), "{:?}", d.problems);
        let r = d.region.as_ref().unwrap();
        assert_eq!(r.changes.len(), HISTORY_SHOWN);
        for c in &r.changes {
            let first = c.version as usize * 128;
            assert_eq!(
                c.state,
                EntryState::Present {
                    changed: Some(3),
                    first: vec![first, first + 1, first + 10],
                    beyond: false
                }
            );
        }
    }

    /// The whole file of a region with a live writer after 10 versions, read once.
    fn region_file() -> Vec<u8> {
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        BYTES
            .get_or_init(|| {
                let name = name("region-file");
                let _clean = Cleanup(name.clone());
                let seg = region(&name);
                let mut writer = seg.region_writer().unwrap();
                publish(&mut writer, 10);
                std::fs::read(object_path(&name)).unwrap()
            })
            .clone()
    }

    fn fields(d: &Decoded) -> Vec<&str> {
        d.problems.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn scribbled_region_fields_are_each_a_problem() {
        let valid = region_file();
        let d = Snapshot::from_bytes(valid.clone()).decode();
        assert!(d.is_valid(), "{:?}", d.problems);
        assert_eq!(d.region.as_ref().unwrap().changes.len(), 7);
        let ctl = |off: usize| REGION_OFFSET + off;
        let entry = |v: usize| REGION_HISTORY_OFFSET + (v % 8) * 2 * 8;
        // (what is scribbled, where, the value, the problem's field)
        let cases: [(&str, usize, u64, &str); 11] = [
            ("stride", ctl(rat::STRIDE), 4096, "region stride"),
            (
                "buffer offset",
                ctl(rat::BUFFER_OFFSET),
                64,
                "region buffer offset",
            ),
            (
                "entry words",
                ctl(rat::HISTORY),
                8 | 5 << 32,
                "region entry words",
            ),
            (
                "chunk size",
                ctl(rat::BUFFERS),
                3 | 100 << 32,
                "region chunk size",
            ),
            ("buffers", ctl(rat::BUFFERS), 9 | 64 << 32, "region buffers"),
            ("size", ctl(rat::SIZE), 2000, "capacity"),
            (
                "latest's buffer",
                ctl(rat::BUFFER_VERSION + 8),
                7,
                "buffer 1",
            ),
            (
                "unused buffer",
                ctl(rat::BUFFER_VERSION + 5 * 8),
                3,
                "buffer 5",
            ),
            ("history tag", entry(9), 1, "version 9"),
            ("history bits", entry(8) + 8, 1 << 20, "version 8"),
            ("reserved", ctl(rat::RESERVED3), 1, "region reserved"),
        ];
        for (what, off, value, field) in cases {
            let mut bytes = valid.clone();
            put(&mut bytes, off, value);
            let d = Snapshot::from_bytes(bytes).decode();
            assert!(
                fields(&d).contains(&field),
                "{what}: {field} missing from {:?}",
                d.problems
            );
        }
        // The header against the region's block.
        let mut bytes = valid.clone();
        put(&mut bytes, at::POLICY, 64 << 32); // policy 0, history 64
        put(&mut bytes, at::DATA_OFFSET, 8192);
        let d = Snapshot::from_bytes(bytes).decode();
        for field in ["history", "data offset"] {
            assert!(fields(&d).contains(&field), "{field}: {:?}", d.problems);
        }
        // Versions are compared only in a settled copy; the shape always.
        let mut snap = Snapshot::from_bytes(valid.clone());
        put(&mut snap.bytes, ctl(rat::BUFFER_VERSION + 8), 7);
        put(&mut snap.bytes, ctl(rat::STRIDE), 4096);
        snap.settled = false;
        assert_eq!(fields(&snap.decode()), vec!["region stride"]);
        // A file too short for the block.
        let d = Snapshot::from_bytes(valid[..1800].to_vec()).decode();
        assert!(d.region.is_none());
        assert!(fields(&d).contains(&"file"), "{:?}", d.problems);
    }

    #[test]
    fn history_entries_past_the_copy_limits_are_said_so() {
        // The block of a region whose entries are too long to copy: the tag only.
        let mut bytes = region_file()[..REGION_HISTORY_OFFSET].to_vec();
        let size = (MAX_ENTRY_WORDS as u64) * 64 * 64;
        let shape = RegionShape::new(size, 2, 64, 2).unwrap();
        assert!(shape.entry_words > MAX_ENTRY_WORDS);
        let ctl = |off: usize| REGION_OFFSET + off;
        put(&mut bytes, ctl(rat::LATEST), 1);
        put(&mut bytes, ctl(rat::SIZE), size);
        put(&mut bytes, ctl(rat::BUFFERS), 2 | 64 << 32);
        put(
            &mut bytes,
            ctl(rat::HISTORY),
            2 | (shape.entry_words as u64) << 32,
        );
        bytes.resize(entry_offset(&shape, 1) + 8, 0);
        put(&mut bytes, entry_offset(&shape, 1), 1);
        let d = Snapshot::from_bytes(bytes.clone()).decode();
        let r = d.region.unwrap();
        assert_eq!(r.shape, Some(shape));
        assert_eq!(r.changes.len(), 1);
        assert_eq!(
            r.changes[0].state,
            EntryState::Present {
                changed: None,
                first: vec![],
                beyond: false
            }
        );
        // Shorter than the entry's tag: not copied.
        bytes.truncate(entry_offset(&shape, 1));
        let r = Snapshot::from_bytes(bytes).decode().region.unwrap();
        assert_eq!(r.changes[0].state, EntryState::NotCopied);
    }

    /// Writes whole segment files as seeds for the `inspect_decode` fuzz target: `cargo test
    /// --release -p shmesh-ring --lib -- --ignored write_fuzz_seeds`.
    #[test]
    #[ignore = "writes fuzz/corpus/inspect_decode; run it when the layout changes"]
    fn write_fuzz_seeds() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/inspect_decode");
        std::fs::create_dir_all(dir).unwrap();
        let seed = |file: &str, name: &str| {
            let bytes = std::fs::read(object_path(name)).unwrap();
            std::fs::write(format!("{dir}/{file}"), bytes).unwrap();
        };
        let ring = |file: &str, make: &dyn Fn(&str) -> SegmentBuilder| {
            let name = name(file);
            let _clean = Cleanup(name.clone());
            let _seg = make(&name).create().unwrap();
            seed(file, &name);
        };
        ring("spsc", &|n| SegmentBuilder::new(n).capacity(4096));
        ring("mpsc", &|n| {
            SegmentBuilder::new(n)
                .kind(SegmentKind::MpscRing)
                .capacity(4096)
                .endpoints(3)
        });
        ring("broadcast", &|n| {
            SegmentBuilder::new(n)
                .kind(SegmentKind::BroadcastRing)
                .capacity(4096)
                .endpoints(3)
                .history(4)
        });
        let name = name("seed-region");
        let _clean = Cleanup(name.clone());
        let seg = region(&name);
        seed("region-fresh", &name);
        let mut writer = seg.region_writer().unwrap();
        publish(&mut writer, 10);
        seed("region-written", &name);
        let scope = writer.write();
        seed("region-writing", &name);
        drop(scope);
        publish(&mut writer, 100);
        seed("region-wrapped", &name);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let d = Snapshot::from_bytes(bytes).decode();
            let _ = (d.fill(), d.totals(), d.expected_data_offset());
        }

        #[test]
        fn decoding_scribbled_headers_never_panics(
            writes in proptest::collection::vec((0usize..2200, any::<u64>()), 1..16),
            cut in 0usize..2400,
        ) {
            let mut bytes = valid_bytes();
            for (off, value) in writes {
                let off = off.min(bytes.len().saturating_sub(8)) & !7;
                bytes[off..off + 8].copy_from_slice(&value.to_le_bytes());
            }
            bytes.truncate(cut);
            let mut snap = Snapshot::from_bytes(bytes);
            snap.tokens = vec![Some(true); 8];
            let d = snap.decode();
            let _ = (d.fill(), d.totals(), d.expected_data_offset());
            for e in &d.endpoints {
                let _ = (e.status(), e.role.to_string());
            }
        }

        #[test]
        fn decoding_scribbled_regions_never_panics(
            writes in proptest::collection::vec((0usize..4600, any::<u64>()), 1..16),
            copies in proptest::collection::vec(
                (any::<u64>(), proptest::collection::vec(any::<u64>(), 0..4)),
                0..4,
            ),
            cut in 0usize..5000,
            settled in any::<bool>(),
        ) {
            let mut bytes = region_file();
            for (off, value) in writes {
                // Mostly the header and the region's block and history.
                let off = if off < 2400 { off } else { off * 2 };
                let off = off.min(bytes.len().saturating_sub(8)) & !7;
                bytes[off..off + 8].copy_from_slice(&value.to_le_bytes());
            }
            bytes.truncate(cut * 2);
            let mut snap = Snapshot::from_bytes(bytes);
            snap.settled = settled;
            snap.tokens = vec![Some(true); 2];
            let d = snap.decode();
            let _ = (d.fill(), d.totals(), d.expected_data_offset());
            if let Some(r) = &d.region {
                let _ = (r.latest_buffer(), r.oldest_changes(), r.derived_shape());
            }
            // Copies that do not match the table (a foreign snapshot): decoded all the same.
            snap.region_history = copies
                .into_iter()
                .map(|(version, words)| HistoryCopy { version, words })
                .collect();
            let _ = snap.decode();
        }
    }
}
