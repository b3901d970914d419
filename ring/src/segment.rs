//! Named POSIX shared-memory segments: creation, opening with validation, removal, and the
//! shared-memory endpoints of the rings inside them.
//!
//! A segment named `demo` is the POSIX shared-memory object `/shmesh.demo`, that is the file
//! `/dev/shm/shmesh.demo` on Linux. Names are 1 to [`MAX_NAME_LEN`] characters from
//! `[A-Za-z0-9._-]`, not starting with a dot.
//!
//! # Lifecycle
//!
//! - [`SegmentBuilder::create`] makes the object with `O_CREAT | O_EXCL`, sets its mode with
//!   `fchmod` (0600 unless widened, whatever the umask), reserves its memory with `fallocate`
//!   (so a full `/dev/shm` is [`SegmentError::NoSpace`] now, not a `SIGBUS` later), writes the
//!   header and publishes the magic last with `Release` (iceoryx2
//!   `dynamic_storage/posix_shared_memory.rs`, Aeron's cnc file).
//! - [`SegmentBuilder::open`] checks owner and mode with `fstat`, waits (bounded) for a header
//!   still being written, then validates magic, layout version, kind, sizes, capacity and
//!   schema. Every mismatch is a [`SegmentError`] naming the field, expected and found values.
//! - The creating handle unlinks the name when its last clone (and every endpoint made from
//!   it) is dropped; [`Segment::remove`] unlinks explicitly.
//!
//! # Liveness tokens
//!
//! Every handle holds a shared OFD lock on byte 0 of the object ("in use"); every endpoint holds
//! an exclusive OFD lock on its own byte (1 = producer, 2 = consumer) through its own open file
//! description. The kernel releases them when the process dies, however it dies. So:
//! - a peer is alive exactly while it holds its byte (an OFD lock: it belongs to an open file
//!   description, not a process, and the kernel drops it when the process dies);
//! - a second producer or consumer is refused while the first is alive, and may take over after;
//! - `create` of a name whose object no live process holds (left behind by a crash, even one
//!   in the middle of creation) removes it and creates afresh; a name in use is
//!   [`SegmentError::AlreadyExists`].

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::shm::OFlags as ShmOFlags;
use thiserror::Error;

use crate::error::AttachError;
use crate::layout::{
    self, pack_text, unpack_text, BroadcastControl, EndpointSlot, RegionControl, RegionShape,
    RingControl, SchemaBlock, SegmentHeader, CONTROL_OFFSET, DATA_OFFSET, EXT_OFFSET,
    LAYOUT_VERSION, MAGIC, MAX_HISTORY, MAX_SLOTS, SCHEMA_OFFSET, SLOT_ATTACHED,
};
use crate::memory::{BroadcastPolicy, RingMemory, Side};
use crate::os::{self, LockKind};
use crate::park::FutexHost;
use crate::region;
use crate::spsc::{self, Consumer, Producer};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Prefix of every shmesh object name in `/dev/shm`.
pub const NAME_PREFIX: &str = "shmesh.";
/// Longest segment name (without the prefix).
pub const MAX_NAME_LEN: usize = 200;
/// Default mode of a new segment: owner read/write only.
pub const DEFAULT_MODE: u32 = 0o600;
/// How long [`SegmentBuilder::open`] waits by default for a creator to finish the header.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// Byte of the "in use" lock held shared by every handle.
const USERS_BYTE: u64 = 0;

/// Byte of the liveness lock of endpoint slot `index`.
pub(crate) fn endpoint_byte(index: usize) -> u64 {
    1 + index as u64
}

/// Default number of many-side endpoint slots (MPSC writers, broadcast readers).
pub const DEFAULT_ENDPOINTS: usize = 16;
/// Default number of buffers of a region.
pub const DEFAULT_REGION_BUFFERS: usize = 3;
/// Default change-tracking chunk of a region, in bytes.
pub const DEFAULT_REGION_CHUNK: usize = 4096;
/// Default change history of a region, in versions.
pub const DEFAULT_REGION_HISTORY: usize = 64;

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// A single-producer/single-consumer byte ring ([`crate::spsc`]).
    SpscRing,
    /// A cache-line ping-pong probe ([`crate::probe`]): no data area.
    Probe,
    /// A multi-producer/single-consumer byte ring ([`crate::mpsc`]).
    MpscRing,
    /// A one-writer, many-reader broadcast ring ([`crate::broadcast`]).
    BroadcastRing,
    /// A versioned region: one writer, many readers of whole versions ([`crate::region`]).
    Region,
}

impl SegmentKind {
    /// The code stored in the header.
    pub fn code(self) -> u32 {
        match self {
            SegmentKind::SpscRing => 1,
            SegmentKind::Probe => 2,
            SegmentKind::MpscRing => 3,
            SegmentKind::BroadcastRing => 4,
            SegmentKind::Region => 5,
        }
    }

    /// Whether segments of this kind have a data area (all but the probe).
    pub fn is_ring(self) -> bool {
        !matches!(self, SegmentKind::Probe | SegmentKind::Region)
    }

    /// Whether segments of this kind have a table of many-side endpoint slots.
    pub fn has_many_side(self) -> bool {
        matches!(self, SegmentKind::MpscRing | SegmentKind::BroadcastRing)
    }

    /// The kind with this header code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(SegmentKind::SpscRing),
            2 => Some(SegmentKind::Probe),
            3 => Some(SegmentKind::MpscRing),
            4 => Some(SegmentKind::BroadcastRing),
            5 => Some(SegmentKind::Region),
            _ => None,
        }
    }
}

impl fmt::Display for SegmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SegmentKind::SpscRing => "spsc ring",
            SegmentKind::Probe => "cache-line probe",
            SegmentKind::MpscRing => "mpsc ring",
            SegmentKind::BroadcastRing => "broadcast ring",
            SegmentKind::Region => "region",
        })
    }
}

/// Why a segment could not be created, opened or removed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SegmentError {
    /// The name is not a valid segment name.
    #[error(
        "invalid segment name '{name}': {reason} (use 1 to {MAX_NAME_LEN} characters from \
         [A-Za-z0-9._-], not starting with '.')"
    )]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A live process holds a segment of this name.
    #[error(
        "segment '{name}' already exists and a live process uses it: pick another name, or stop \
         the processes using it"
    )]
    AlreadyExists {
        /// Segment name.
        name: String,
    },
    /// No segment of this name exists.
    #[error("segment '{name}' does not exist (no /dev/shm/{NAME_PREFIX}{name}): create it first")]
    NotFound {
        /// Segment name.
        name: String,
    },
    /// The operating system refused access.
    #[error(
        "permission denied for segment '{name}': it belongs to another user or its mode does \
         not let you in"
    )]
    PermissionDenied {
        /// Segment name.
        name: String,
    },
    /// `/dev/shm` has not enough free memory.
    #[error(
        "no space in /dev/shm for segment '{name}' of {size} bytes: free memory in /dev/shm \
         (`shmesh gc`, or remove old segments) or ask for a smaller capacity"
    )]
    NoSpace {
        /// Segment name.
        name: String,
        /// Bytes asked for.
        size: u64,
    },
    /// The object belongs to another user: it may have been squatted.
    #[error(
        "segment '{name}' belongs to uid {found}, expected uid {expected}: refusing a name that \
         another user may have squatted; remove it or use another name"
    )]
    NotOwner {
        /// Segment name.
        name: String,
        /// The uid expected.
        expected: u32,
        /// The uid found.
        found: u32,
    },
    /// The object's mode lets in more than the opener allows.
    #[error(
        "segment '{name}' has mode {found:o}, wider than the allowed {allowed:o}: others could \
         read or write it; recreate it, or widen the allowed mode with .mode(..) if intended"
    )]
    ModeTooWide {
        /// Segment name.
        name: String,
        /// The widest mode accepted.
        allowed: u32,
        /// The mode found.
        found: u32,
    },
    /// A header field differs from what was expected.
    #[error("segment '{name}': {field} is {found}, expected {expected}")]
    Mismatch {
        /// Segment name.
        name: String,
        /// Which field.
        field: &'static str,
        /// What the opener expected.
        expected: String,
        /// What the header says.
        found: String,
    },
    /// The segment holds messages of another type (its schema fingerprint differs).
    #[error(transparent)]
    SchemaMismatch(Box<SchemaMismatch>),
    /// The header was still not published after the open timeout.
    #[error(
        "segment '{name}' was not initialized within {waited:?}: its creator is slow or died \
         while creating it (a new create() of the name reclaims it)"
    )]
    NotInitialized {
        /// Segment name.
        name: String,
        /// How long the opener waited.
        waited: Duration,
    },
    /// The capacity is not usable.
    #[error(transparent)]
    Capacity(#[from] AttachError),
    /// A shape parameter (endpoints, history) is out of range.
    #[error("segment '{name}': {found} {what} asked for, at most {max} (and at least 1 endpoint)")]
    Shape {
        /// Segment name.
        name: String,
        /// Which parameter.
        what: &'static str,
        /// The value asked for.
        found: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A region parameter (size, buffers, chunk size, history) is out of range.
    #[error("region '{name}': {what} {found} is out of range: use {allowed}")]
    RegionShape {
        /// Segment name.
        name: String,
        /// Which parameter.
        what: &'static str,
        /// The value asked for.
        found: u64,
        /// What is allowed.
        allowed: String,
    },
    /// Another operating-system call failed.
    #[error("{op} failed for segment '{name}': {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// Segment name.
        name: String,
        /// The errno.
        source: Errno,
    },
}

/// Checks a segment name and returns the POSIX object name (`/shmesh.<name>`).
///
/// # Errors
///
/// [`SegmentError::InvalidName`] saying what is wrong.
pub fn object_name(name: &str) -> Result<String, SegmentError> {
    let invalid = |reason| SegmentError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is too long"));
    }
    if name.starts_with('.') {
        return Err(invalid("it starts with '.'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(invalid("it has a character outside [A-Za-z0-9._-]"));
    }
    Ok(format!("/{NAME_PREFIX}{name}"))
}

fn os_err<'a>(op: &'static str, name: &'a str) -> impl FnOnce(Errno) -> SegmentError + 'a {
    move |source| SegmentError::Os {
        op,
        name: name.to_owned(),
        source,
    }
}

/// Builds a [`Segment`]: `SegmentBuilder::new(name).capacity(..).mode(..).create()` or
/// `.open()`.
///
/// # Examples
///
/// ```no_run
/// use shmesh_ring::SegmentBuilder;
///
/// let seg = SegmentBuilder::new("doc-example").capacity(1 << 16).create()?;
/// let mut tx = seg.producer()?;
/// // in another process:
/// let mut rx = SegmentBuilder::new("doc-example").open()?.consumer()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SegmentBuilder {
    name: String,
    kind: SegmentKind,
    capacity: Option<u64>,
    mode: u32,
    owner: Option<u32>,
    schema: Option<[u64; 4]>,
    schema_text: String,
    open_timeout: Duration,
    start: u64,
    endpoints: Option<usize>,
    policy: Option<BroadcastPolicy>,
    history: Option<usize>,
    any_ring: bool,
    any_kind: bool,
    buffers: Option<usize>,
    chunk_size: Option<usize>,
    persist: bool,
}

impl SegmentBuilder {
    /// A builder for the segment `name` (see the module docs for valid names).
    pub fn new(name: impl Into<String>) -> Self {
        SegmentBuilder {
            name: name.into(),
            kind: SegmentKind::SpscRing,
            capacity: None,
            mode: DEFAULT_MODE,
            owner: None,
            schema: None,
            schema_text: String::new(),
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            start: 0,
            endpoints: None,
            policy: None,
            history: None,
            any_ring: false,
            any_kind: false,
            buffers: None,
            chunk_size: None,
            persist: false,
        }
    }

    /// Create: keep the name when the creating handle drops, instead of unlinking it. For a
    /// segment that outlives its creator on purpose, such as the copy of a ring that a bridge
    /// mirrors from another host: the bridge may restart while local programs use the copy.
    /// The name stays until [`Segment::remove`] (or `shmesh gc` once nobody uses it).
    pub fn persist(mut self, persist: bool) -> Self {
        self.persist = persist;
        self
    }

    /// Regions. Create: how many copies of the region to keep ([`DEFAULT_REGION_BUFFERS`] by
    /// default, 2 to 8; see [`crate::region`] for the trade-off). Open: the number required,
    /// when given.
    pub fn buffers(mut self, n: usize) -> Self {
        self.buffers = Some(n);
        self
    }

    /// Regions. Create: the change-tracking chunk in bytes ([`DEFAULT_REGION_CHUNK`] by
    /// default; a power of two from 64 to 16 MiB). Open: the size required, when given.
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = Some(bytes);
        self
    }

    /// The shape of the region this builder creates.
    fn region_shape(&self) -> Result<RegionShape, SegmentError> {
        RegionShape::new(
            self.capacity.unwrap_or(0),
            self.buffers.unwrap_or(DEFAULT_REGION_BUFFERS),
            self.chunk_size.unwrap_or(DEFAULT_REGION_CHUNK),
            self.history.unwrap_or(DEFAULT_REGION_HISTORY),
        )
        .map_err(|(what, found, allowed)| SegmentError::RegionShape {
            name: self.name.clone(),
            what,
            found,
            allowed,
        })
    }

    /// Open: accept a ring of any kind (SPSC, MPSC, broadcast) instead of the builder's kind;
    /// [`Segment::kind`] then says which it is.
    pub fn any_ring(mut self) -> Self {
        self.any_ring = true;
        self
    }

    /// Open: accept a segment of any kind (rings, regions) instead of the builder's kind;
    /// [`Segment::kind`] then says which it is. For programs that handle every kind, such as
    /// the bridge.
    pub fn any_kind(mut self) -> Self {
        self.any_kind = true;
        self
    }

    /// MPSC and broadcast rings. Create: how many endpoints the many side may have at once
    /// (writers of an MPSC ring, readers of a broadcast ring; [`DEFAULT_ENDPOINTS`] by
    /// default, at most 1024). Open: the number required, when given.
    pub fn endpoints(mut self, n: usize) -> Self {
        self.endpoints = Some(n);
        self
    }

    /// Broadcast rings. Create: the slow-reader policy ([`BroadcastPolicy::Block`] by
    /// default). Open: the policy required, when given.
    pub fn policy(mut self, policy: BroadcastPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Broadcast rings. Create: how many of the last records the writer keeps for readers that
    /// join late (0 by default, at most 65528). Regions: how many versions the change history
    /// covers ([`DEFAULT_REGION_HISTORY`] by default; at least the buffer count, at most 4096).
    /// Open: the number required, when given.
    pub fn history(mut self, records: usize) -> Self {
        self.history = Some(records);
        self
    }

    /// The endpoint slot count and history length a new segment of this builder gets.
    fn shape(&self) -> (usize, usize) {
        if self.kind.has_many_side() {
            let history = match self.kind {
                // The table holds more entries than the records joiners may ask for.
                SegmentKind::BroadcastRing => crate::broadcast::table_len(
                    self.policy.unwrap_or(BroadcastPolicy::Block),
                    self.history.unwrap_or(0),
                ),
                _ => 0,
            };
            (2 + self.endpoints.unwrap_or(DEFAULT_ENDPOINTS), history)
        } else {
            (2, 0)
        }
    }

    /// The kind of segment; an SPSC ring by default.
    pub fn kind(mut self, kind: SegmentKind) -> Self {
        self.kind = kind;
        self
    }

    /// Data capacity in bytes, a power of two (create: required for rings; open: checked when
    /// given). For regions: the region's size in bytes, any size from 1 byte to 1 TiB.
    pub fn capacity(mut self, capacity: u64) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Create: the permission bits of the new object (0600 by default; the umask does not
    /// apply). Open: the widest mode accepted.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }

    /// Open: the uid that must own the object (the effective uid by default).
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// Create: the schema fingerprint stored in the header. Open: the fingerprint required.
    pub fn schema(mut self, fingerprint: [u64; 4]) -> Self {
        self.schema = Some(fingerprint);
        self
    }

    /// Create: the description of the message type stored next to the fingerprint (at most 256
    /// bytes are kept). Open: the description reported, in the header of the segment and in
    /// the error, when the fingerprints differ. For messages and tools only; the fingerprint
    /// alone decides.
    pub fn schema_text(mut self, text: impl Into<String>) -> Self {
        self.schema_text = text.into();
        self
    }

    /// Open: how long to wait for a creator to finish writing the header.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Create: the position the ring starts at (a multiple of 16; 0 by default). For tests of
    /// 64-bit position wrap-around.
    pub fn start_position(mut self, start: u64) -> Self {
        self.start = start;
        self
    }

    fn total_size(&self, capacity: u64) -> u64 {
        let (slots, history) = self.shape();
        let bytes = match self.kind {
            SegmentKind::SpscRing => DATA_OFFSET as u64 + capacity,
            SegmentKind::Probe => DATA_OFFSET as u64,
            SegmentKind::MpscRing | SegmentKind::BroadcastRing => {
                layout::data_offset(slots, history) as u64 + capacity
            }
            SegmentKind::Region => self.region_shape().map_or(0, |s| s.end as u64),
        };
        let page = rustix::param::page_size() as u64;
        bytes.div_ceil(page) * page
    }

    /// Creates the segment.
    ///
    /// # Errors
    ///
    /// [`SegmentError::InvalidName`], `Capacity` (not a power of two in range, or missing for
    /// a ring), `AlreadyExists` (a live process uses the name), `NotOwner` (the name is held by
    /// another user's object), `PermissionDenied`, `NoSpace`, `Os`.
    pub fn create(&self) -> Result<Segment, SegmentError> {
        let path = object_name(&self.name)?;
        let capacity = match self.kind {
            SegmentKind::Probe => 0,
            SegmentKind::Region => self.region_shape()?.size as u64,
            _ => {
                let capacity = self.capacity.unwrap_or(0);
                spsc::check_capacity(capacity)?;
                if self.start % 16 != 0 {
                    return Err(AttachError::StartPosition(self.start).into());
                }
                capacity
            }
        };
        let (slots, history) = self.shape();
        if slots > MAX_SLOTS || (self.kind.has_many_side() && slots < 3) {
            return Err(SegmentError::Shape {
                name: self.name.clone(),
                what: "endpoints",
                found: (slots - 2) as u64,
                max: (MAX_SLOTS - 2) as u64,
            });
        }
        let records = match self.kind {
            SegmentKind::BroadcastRing => self.history.unwrap_or(0),
            _ => 0,
        };
        if history > MAX_HISTORY || records > crate::broadcast::MAX_HISTORY_RECORDS {
            return Err(SegmentError::Shape {
                name: self.name.clone(),
                what: "history",
                found: records as u64,
                max: crate::broadcast::MAX_HISTORY_RECORDS as u64,
            });
        }
        let total = self.total_size(capacity);
        for _ in 0..16 {
            let flags = ShmOFlags::CREATE | ShmOFlags::EXCL | ShmOFlags::RDWR;
            let fd = match rustix::shm::open(path.as_str(), flags, Mode::from_raw_mode(self.mode)) {
                Ok(fd) => fd,
                Err(Errno::EXIST) => {
                    if self.reclaim(&path)? {
                        continue;
                    }
                    return Err(SegmentError::AlreadyExists {
                        name: self.name.clone(),
                    });
                }
                Err(Errno::ACCESS) => {
                    return Err(SegmentError::PermissionDenied {
                        name: self.name.clone(),
                    })
                }
                Err(e) => return Err(os_err("shm_open", &self.name)(e)),
            };
            // Take the "in use" lock at once. If a reclaimer holds it exclusively it is about to
            // unlink this brand-new object: start again.
            match os::try_lock(fd.as_fd(), USERS_BYTE, LockKind::Shared) {
                // A reclaimer may have unlinked it between our shm_open and our lock.
                Ok(true) if same_object(&path, &fd) => {}
                Ok(_) => continue,
                Err(e) => {
                    unlink_if_same(&path, &fd);
                    return Err(os_err("fcntl(F_OFD_SETLK)", &self.name)(e));
                }
            }
            let keep = fd.try_clone().ok();
            return self
                .initialize(fd, &path, capacity, total)
                .inspect_err(|_| {
                    if let Some(fd) = &keep {
                        unlink_if_same(&path, fd);
                    }
                });
        }
        Err(SegmentError::AlreadyExists {
            name: self.name.clone(),
        })
    }

    /// Removes an existing object of our name if no live process uses it. `Ok(true)`: removed
    /// or already gone, try creating again; `Ok(false)`: in use.
    fn reclaim(&self, path: &str) -> Result<bool, SegmentError> {
        let fd = match open_nofollow(path) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(true),
            Err(Errno::LOOP) => return Err(self.symlink_error(path)),
            Err(Errno::ACCESS) => {
                return Err(SegmentError::PermissionDenied {
                    name: self.name.clone(),
                })
            }
            Err(e) => return Err(os_err("open", &self.name)(e)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(os_err("fstat", &self.name))?;
        let me = rustix::process::geteuid().as_raw();
        if stat.st_uid != me {
            return Err(SegmentError::NotOwner {
                name: self.name.clone(),
                expected: me,
                found: stat.st_uid,
            });
        }
        match os::try_lock(fd.as_fd(), USERS_BYTE, LockKind::Exclusive) {
            Ok(true) => {}
            Ok(false) => {
                // An exclusive holder is another reclaimer (a concurrent create, `shmesh rm` or
                // `gc`) about to unlink a dead object, not a user: give it a moment and let the
                // caller try again, rather than report the name as in use.
                if let Ok(Some(LockKind::Exclusive)) = os::held_lock(fd.as_fd(), USERS_BYTE) {
                    std::thread::sleep(Duration::from_millis(1));
                    return Ok(true);
                }
                return Ok(false);
            }
            Err(e) => return Err(os_err("fcntl(F_OFD_SETLK)", &self.name)(e)),
        }
        // Nobody alive uses it. Unlink it if the name still refers to this very object.
        if same_object(path, &fd) {
            match rustix::shm::unlink(path) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(os_err("shm_unlink", &self.name)(e)),
            }
        }
        Ok(true)
    }

    fn initialize(
        &self,
        fd: OwnedFd,
        path: &str,
        capacity: u64,
        total: u64,
    ) -> Result<Segment, SegmentError> {
        // fchmod: the mode given to shm_open was filtered by the umask.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(self.mode))
            .map_err(os_err("fchmod", &self.name))?;
        match rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, total) {
            Ok(()) => {}
            Err(Errno::NOSPC) => {
                return Err(SegmentError::NoSpace {
                    name: self.name.clone(),
                    size: total,
                })
            }
            Err(Errno::OPNOTSUPP) => {
                rustix::fs::ftruncate(&fd, total).map_err(os_err("ftruncate", &self.name))?
            }
            Err(e) => return Err(os_err("fallocate", &self.name)(e)),
        }
        let file = File::from(fd);
        // MAP_POPULATE: fault the whole ring in now, not one page at a time on the fast path
        // (a minor fault costs microseconds; a 64-byte stream crosses a page every 51 records).
        let map = MmapOptions::new()
            .len(total as usize)
            .populate()
            .map_raw(&file)
            .map_err(|e| os_err("mmap", &self.name)(io_errno(&e)))?;
        let (slots, history) = self.shape();
        let policy = match self.kind {
            SegmentKind::BroadcastRing => Some(self.policy.unwrap_or(BroadcastPolicy::Block)),
            _ => None,
        };
        let region = match self.kind {
            SegmentKind::Region => Some(self.region_shape()?),
            _ => None,
        };
        let (history, data_offset) = match (self.kind, region) {
            (_, Some(shape)) => (shape.history, shape.buffer_offset),
            (SegmentKind::SpscRing | SegmentKind::Probe, _) => (history, DATA_OFFSET),
            _ => (history, layout::data_offset(slots, history)),
        };
        let inner = Inner {
            name: self.name.clone(),
            path: path.to_owned(),
            kind: self.kind,
            capacity,
            total_size: total,
            slot_count: slots,
            history,
            policy,
            data_offset,
            local_broadcast: BroadcastControl::new(0),
            region,
            creator: true,
            unlink_on_drop: !self.persist,
            map,
            file,
        };
        let h = inner.header();
        h.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.kind.store(self.kind.code(), Ordering::Relaxed);
        h.total_size.store(total, Ordering::Relaxed);
        h.capacity.store(capacity, Ordering::Relaxed);
        h.data_offset.store(data_offset as u64, Ordering::Relaxed);
        h.slot_count.store(slots as u32, Ordering::Relaxed);
        h.policy
            .store(policy.map_or(0, BroadcastPolicy::code), Ordering::Relaxed);
        h.history.store(history as u32, Ordering::Relaxed);
        h.creator_pid.store(std::process::id(), Ordering::Relaxed);
        h.creator_start_time
            .store(os::process_start_time(), Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        h.created_unix_ns
            .store(now.as_nanos() as u64, Ordering::Relaxed);
        for (word, value) in h.schema.iter().zip(self.schema.unwrap_or_default()) {
            word.store(value, Ordering::Relaxed);
        }
        for (word, value) in inner.schema().text.iter().zip(pack_text(&self.schema_text)) {
            word.store(value, Ordering::Relaxed);
        }
        let control = inner.control();
        control.tail.0.store(self.start, Ordering::Relaxed);
        control.head.0.store(self.start, Ordering::Relaxed);
        for index in 0..slots {
            inner.slot(index).intent.store(u64::MAX, Ordering::Relaxed);
        }
        if self.kind == SegmentKind::BroadcastRing {
            let b = inner.broadcast();
            b.tail_intent.store(self.start, Ordering::Relaxed);
            b.limit.store(self.start, Ordering::Relaxed);
            b.start.store(self.start, Ordering::Relaxed);
            for word in inner.history() {
                word.store(self.start, Ordering::Relaxed);
            }
        }
        if let Some(shape) = &region {
            // The object is fresh (zero): version 0 is all zero bytes, in every buffer.
            inner.region_control().store_shape(shape);
            for word in inner.region_history().iter().step_by(shape.entry_words) {
                word.store(layout::REGION_WRITING, Ordering::Relaxed);
            }
        }
        // Published last: an opener that sees the magic (Acquire) sees everything above.
        h.magic.store(MAGIC, Ordering::Release);
        Ok(Segment {
            inner: Arc::new(inner),
        })
    }

    /// Opens an existing segment, checking owner, mode and every header field.
    ///
    /// # Errors
    ///
    /// [`SegmentError::InvalidName`], `NotFound`, `PermissionDenied`, `NotOwner`,
    /// `ModeTooWide`, `NotInitialized` (the header was not published within the open timeout),
    /// `Mismatch` (magic, layout version, kind, total size, data offset or capacity),
    /// `SchemaMismatch` (another message type: the segment records the refusal for its users),
    /// `Os`.
    pub fn open(&self) -> Result<Segment, SegmentError> {
        let path = object_name(&self.name)?;
        let started = Instant::now();
        // A timeout too long for the clock (Duration::MAX) means no deadline.
        let deadline = started.checked_add(self.open_timeout);
        let not_initialized = || SegmentError::NotInitialized {
            name: self.name.clone(),
            waited: started.elapsed(),
        };
        // Until the creator has sized the object and published its header we hold nothing:
        // an opener that waits must not keep the "in use" lock, or a new `create` could never
        // reclaim a name whose creator died half-way.
        // Whether an uninitialized object of this name was seen: if it then vanishes, a create
        // is reclaiming it (unlink, then a fresh object), so keep waiting for the new one.
        let mut seen = false;
        let (fd, size) = loop {
            let fd = match open_nofollow(&path) {
                Ok(fd) => fd,
                Err(Errno::LOOP) => return Err(self.symlink_error(&path)),
                Err(Errno::NOENT) if seen && deadline.is_none_or(|d| Instant::now() < d) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(Errno::NOENT) => {
                    return Err(SegmentError::NotFound {
                        name: self.name.clone(),
                    })
                }
                Err(Errno::ACCESS) => {
                    return Err(SegmentError::PermissionDenied {
                        name: self.name.clone(),
                    })
                }
                Err(e) => return Err(os_err("shm_open", &self.name)(e)),
            };
            self.check_owner_and_mode(&fd)?;
            let locked = os::try_lock(fd.as_fd(), USERS_BYTE, LockKind::Shared)
                .map_err(os_err("fcntl(F_OFD_SETLK)", &self.name))?;
            // The name must still refer to what we locked: a reclaimer may have unlinked it.
            if locked && same_object(&path, &fd) {
                let stat = rustix::fs::fstat(&fd).map_err(os_err("fstat", &self.name))?;
                let size = stat.st_size as u64;
                if size >= DATA_OFFSET as u64 && published_magic(&fd) != 0 {
                    break (fd, size);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(not_initialized());
                }
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                // A reclaimer kept removing a dead object of this name.
                return Err(SegmentError::NotFound {
                    name: self.name.clone(),
                });
            }
            seen = true;
            drop(fd);
            std::thread::sleep(Duration::from_millis(1));
        };
        let file = File::from(fd);
        // MAP_POPULATE: fault the whole ring in now, not one page at a time on the fast path
        // (a minor fault costs microseconds; a 64-byte stream crosses a page every 51 records).
        let map = MmapOptions::new()
            .len(size as usize)
            .populate()
            .map_raw(&file)
            .map_err(|e| os_err("mmap", &self.name)(io_errno(&e)))?;
        let mut inner = Inner {
            name: self.name.clone(),
            path,
            kind: self.kind,
            capacity: 0,
            total_size: size,
            slot_count: 2,
            history: 0,
            policy: None,
            data_offset: DATA_OFFSET,
            local_broadcast: BroadcastControl::new(0),
            region: None,
            creator: false,
            unlink_on_drop: false,
            map,
            file,
        };
        let h = inner.header();
        // The loop above saw a published (non-zero) magic; this Acquire load is what makes the
        // rest of the header visible.
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(self.mismatch("magic", format!("{MAGIC:#018x}"), format!("{magic:#018x}")));
        }
        let version = h.layout_version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(self.mismatch("layout version", LAYOUT_VERSION, version));
        }
        let code = h.kind.load(Ordering::Relaxed);
        let kind = match SegmentKind::from_code(code) {
            Some(found) if found == self.kind => found,
            Some(found) if self.any_ring && found.is_ring() => found,
            Some(found) if self.any_kind => found,
            found => {
                let found = found.map_or(format!("unknown kind {code}"), |k| k.to_string());
                let expected = if self.any_kind {
                    "a segment of any kind".to_owned()
                } else if self.any_ring {
                    "a ring of any kind".to_owned()
                } else {
                    self.kind.to_string()
                };
                return Err(self.mismatch("kind", expected, found));
            }
        };
        let total = h.total_size.load(Ordering::Relaxed);
        if total != size {
            return Err(self.mismatch("total size (header vs fstat)", size, total));
        }
        let slots = h.slot_count.load(Ordering::Relaxed) as usize;
        let history = h.history.load(Ordering::Relaxed) as usize;
        let policy_code = h.policy.load(Ordering::Relaxed);
        let mut found_policy = None;
        let mut region = None;
        let expected_offset = if kind == SegmentKind::Region {
            if slots != 2 {
                return Err(self.mismatch("slot count", 2, slots));
            }
            let shape = self.open_region_shape(&inner, size)?;
            region = Some(shape);
            shape.buffer_offset
        } else if kind.has_many_side() {
            if !(3..=MAX_SLOTS).contains(&slots) {
                return Err(self.mismatch("slot count", format!("3 to {MAX_SLOTS}"), slots));
            }
            if let Some(n) = self.endpoints {
                if n + 2 != slots {
                    return Err(self.mismatch("endpoints", n, slots - 2));
                }
            }
            let history_max = if kind == SegmentKind::BroadcastRing {
                MAX_HISTORY
            } else {
                0
            };
            if history > history_max {
                return Err(self.mismatch("history", format!("0 to {history_max}"), history));
            }
            if kind == SegmentKind::BroadcastRing {
                let Some(policy) = BroadcastPolicy::from_code(policy_code) else {
                    return Err(self.mismatch("policy", "1 (block) or 2 (lap)", policy_code));
                };
                if let Some(expected) = self.policy {
                    if expected != policy {
                        return Err(self.mismatch("policy", expected, policy));
                    }
                }
                found_policy = Some(policy);
                if let Some(n) = self.history {
                    if crate::broadcast::table_len(policy, n) != history {
                        return Err(self.mismatch(
                            "history",
                            n,
                            crate::broadcast::history_records(history),
                        ));
                    }
                }
            }
            layout::data_offset(slots, history)
        } else {
            if slots != 2 {
                return Err(self.mismatch("slot count", 2, slots));
            }
            DATA_OFFSET
        };
        let data_offset = h.data_offset.load(Ordering::Relaxed);
        if data_offset != expected_offset as u64 {
            return Err(self.mismatch("data offset", expected_offset, data_offset));
        }
        let capacity = h.capacity.load(Ordering::Relaxed);
        match kind {
            SegmentKind::SpscRing | SegmentKind::MpscRing | SegmentKind::BroadcastRing => {
                if spsc::check_capacity(capacity).is_err()
                    || expected_offset as u64 + capacity > size
                {
                    return Err(self.mismatch(
                        "capacity",
                        format!("a power of two that fits the {size}-byte object"),
                        capacity,
                    ));
                }
            }
            SegmentKind::Probe if capacity != 0 => {
                return Err(self.mismatch("capacity", 0, capacity))
            }
            SegmentKind::Probe => {}
            SegmentKind::Region => {
                let size = region.map_or(0, |r| r.size as u64);
                if capacity != size {
                    return Err(self.mismatch("capacity (region size)", size, capacity));
                }
            }
        }
        if let Some(expected) = self.capacity {
            if expected != capacity {
                return Err(self.mismatch("capacity", expected, capacity));
            }
        }
        if let Some(expected) = self.schema {
            let found = inner.fingerprint();
            if found != expected {
                // Leave a note for the creator and its peers: they report the mismatch too.
                let block = inner.schema();
                block
                    .rejected_pid
                    .store(std::process::id(), Ordering::Relaxed);
                for (word, value) in block.rejected_schema.iter().zip(expected) {
                    word.store(value, Ordering::Relaxed);
                }
                for (word, value) in block.rejected_text.iter().zip(pack_text(&self.schema_text)) {
                    word.store(value, Ordering::Relaxed);
                }
                // SYNC POINT: pairs with the Acquire load in `Segment::schema_rejections`.
                block.rejections.fetch_add(1, Ordering::Release);
                return Err(SegmentError::SchemaMismatch(Box::new(SchemaMismatch {
                    name: self.name.clone(),
                    ours: SchemaId {
                        fingerprint: expected,
                        text: self.schema_text.clone(),
                    },
                    theirs: SchemaId {
                        fingerprint: found,
                        text: unpack_text(&load_words(&block.text)),
                    },
                })));
            }
        }
        inner.kind = kind;
        inner.capacity = capacity;
        inner.data_offset = expected_offset;
        inner.policy = found_policy;
        inner.region = region;
        if kind == SegmentKind::Region {
            inner.history = history;
        }
        if kind.has_many_side() {
            inner.slot_count = slots;
            inner.history = history;
        }
        Ok(Segment {
            inner: Arc::new(inner),
        })
    }

    /// Reads a region's shape parameters, recomputes the shape and checks every stored offset
    /// against it, and against what the builder asks for.
    fn open_region_shape(&self, inner: &Inner, size: u64) -> Result<RegionShape, SegmentError> {
        if size < (layout::REGION_HISTORY_OFFSET as u64) {
            return Err(self.mismatch("total size", "room for a region's control block", size));
        }
        let ctl = inner.region_control();
        let stored_size = ctl.size.load(Ordering::Relaxed);
        let buffers = ctl.buffers.load(Ordering::Relaxed) as usize;
        let chunk = ctl.chunk_size.load(Ordering::Relaxed) as usize;
        let history = ctl.history.load(Ordering::Relaxed) as usize;
        let shape = RegionShape::new(stored_size, buffers, chunk, history)
            .map_err(|(what, found, allowed)| self.mismatch(what, allowed, found))?;
        let checks: [(&'static str, u64, u64); 5] = [
            (
                "region entry words",
                shape.entry_words as u64,
                ctl.entry_words.load(Ordering::Relaxed).into(),
            ),
            (
                "region buffer offset",
                shape.buffer_offset as u64,
                ctl.buffer_offset.load(Ordering::Relaxed),
            ),
            (
                "region buffer stride",
                shape.stride as u64,
                ctl.stride.load(Ordering::Relaxed),
            ),
            (
                "history",
                shape.history as u64,
                inner.header().history.load(Ordering::Relaxed).into(),
            ),
            (
                "total size",
                (shape.end as u64).div_ceil(rustix::param::page_size() as u64)
                    * rustix::param::page_size() as u64,
                size,
            ),
        ];
        for (field, expected, found) in checks {
            if expected != found {
                return Err(self.mismatch(field, expected, found));
            }
        }
        let asked: [(&'static str, Option<usize>, usize); 4] = [
            ("region size", self.capacity.map(|c| c as usize), shape.size),
            ("buffers", self.buffers, shape.buffers),
            ("chunk size", self.chunk_size, shape.chunk_size),
            ("history", self.history, shape.history),
        ];
        for (field, expected, found) in asked {
            if let Some(expected) = expected {
                if expected != found {
                    return Err(self.mismatch(field, expected, found));
                }
            }
        }
        Ok(shape)
    }

    fn check_owner_and_mode(&self, fd: &OwnedFd) -> Result<(), SegmentError> {
        let stat = rustix::fs::fstat(fd).map_err(os_err("fstat", &self.name))?;
        let expected = self
            .owner
            .unwrap_or_else(|| rustix::process::geteuid().as_raw());
        if stat.st_uid != expected {
            return Err(SegmentError::NotOwner {
                name: self.name.clone(),
                expected,
                found: stat.st_uid,
            });
        }
        let mode = stat.st_mode & 0o777;
        if mode & !self.mode != 0 {
            return Err(SegmentError::ModeTooWide {
                name: self.name.clone(),
                allowed: self.mode,
                found: mode,
            });
        }
        Ok(())
    }

    /// The error for a name that is a symbolic link: someone else's doing, never ours.
    fn symlink_error(&self, path: &str) -> SegmentError {
        let file = format!("/dev/shm{path}");
        let found = rustix::fs::lstat(file.as_str()).map_or(u32::MAX, |st| st.st_uid);
        let expected = self
            .owner
            .unwrap_or_else(|| rustix::process::geteuid().as_raw());
        SegmentError::NotOwner {
            name: self.name.clone(),
            expected,
            found,
        }
    }

    fn mismatch(
        &self,
        field: &'static str,
        expected: impl fmt::Display,
        found: impl fmt::Display,
    ) -> SegmentError {
        SegmentError::Mismatch {
            name: self.name.clone(),
            field,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

fn hex(words: &[u64]) -> String {
    words.iter().map(|w| format!("{w:016x}")).collect()
}

fn load_words(words: &[AtomicU64]) -> Vec<u64> {
    words.iter().map(|w| w.load(Ordering::Relaxed)).collect()
}

/// A message type as a segment records it: fingerprint and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaId {
    /// The fingerprint (all zero for byte rings).
    pub fingerprint: [u64; 4],
    /// The description (may be empty).
    pub text: String,
}

impl fmt::Display for SchemaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = if self.text.is_empty() {
            "an undescribed type"
        } else {
            &self.text
        };
        write!(f, "{text} (fingerprint {})", &hex(&self.fingerprint)[..16])
    }
}

/// An opener asked for a segment with another message type than the one it holds.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "segment '{name}' carries messages of another type: it has {theirs}, you asked for {ours}; \
     open it with the same message type (and version) as its creator, or use another name"
)]
pub struct SchemaMismatch {
    /// Segment name.
    pub name: String,
    /// The schema the opener asked for.
    pub ours: SchemaId,
    /// The schema in the segment.
    pub theirs: SchemaId,
}

/// An opener that was refused because its message type differed ([`Segment::last_rejection`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRejection {
    /// How many openers have been refused so far.
    pub count: u64,
    /// Pid of the last one, in its own pid namespace.
    pub pid: u32,
    /// What it asked for.
    pub schema: SchemaId,
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Opens the existing object `path` (`/shmesh.<name>`) without following a symbolic link:
/// `shm_open` would follow one planted by another user to a segment of ours.
fn open_nofollow(path: &str) -> Result<OwnedFd, Errno> {
    let file = format!("/dev/shm{path}");
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::open(file.as_str(), flags, Mode::empty())
}

/// The magic word at the start of the object, read with `pread` (0 when not yet published or
/// unreadable); the mapping's `Acquire` load stays the authority.
fn published_magic(fd: &OwnedFd) -> u64 {
    let mut word = [0u8; 8];
    match rustix::io::pread(fd, &mut word, 0) {
        Ok(8) => u64::from_le_bytes(word),
        _ => 0,
    }
}

/// Unlinks `path` if it still names the object `fd` refers to.
fn unlink_if_same(path: &str, fd: &impl AsFd) {
    if same_object(path, fd) {
        let _ = rustix::shm::unlink(path);
    }
}

/// Whether the object `path` names now is the one `fd` refers to.
fn same_object(path: &str, fd: &impl AsFd) -> bool {
    let Ok(ours) = rustix::fs::fstat(fd) else {
        return false;
    };
    let file = format!("/dev/shm{path}");
    match rustix::fs::stat(file.as_str()) {
        Ok(theirs) => theirs.st_dev == ours.st_dev && theirs.st_ino == ours.st_ino,
        Err(_) => false,
    }
}

struct Inner {
    name: String,
    path: String,
    kind: SegmentKind,
    /// Validated once at create/open; never re-read from shared memory.
    capacity: u64,
    total_size: u64,
    /// Endpoint slots (validated, kept in process memory).
    slot_count: usize,
    /// Broadcast history length (validated).
    history: usize,
    /// Broadcast policy (validated).
    policy: Option<BroadcastPolicy>,
    /// Offset of the data area (validated).
    data_offset: usize,
    /// Stands in for the broadcast block of kinds that have none.
    local_broadcast: BroadcastControl,
    /// Regions: the shape (validated).
    region: Option<RegionShape>,
    creator: bool,
    /// The creator unlinks the name on drop unless it was built to [persist](SegmentBuilder::persist).
    unlink_on_drop: bool,
    map: MmapRaw,
    /// Holds the shared "in use" lock while open.
    file: File,
}

impl Inner {
    #[inline]
    fn base(&self) -> NonNull<u8> {
        NonNull::new(self.map.as_mut_ptr()).expect("mmap never returns null")
    }

    #[inline]
    fn header(&self) -> &SegmentHeader {
        // SAFETY: the mapping is at least DATA_OFFSET bytes (checked at create/open), page
        // aligned, and lives as long as `self`; `SegmentHeader` is all atomics, valid for any
        // bit pattern and safe to share across processes.
        unsafe { self.base().cast::<SegmentHeader>().as_ref() }
    }

    #[inline]
    fn slot(&self, index: usize) -> &EndpointSlot {
        assert!(
            index < self.slot_count,
            "endpoint slot {index} out of range"
        );
        let off = layout::slot_offset(index);
        // SAFETY: as in `header`: slot `index < slot_count` lies below the data offset (checked
        // against the slot count at create/open), 128-aligned, all atomics.
        unsafe { self.base().add(off).cast::<EndpointSlot>().as_ref() }
    }

    #[inline]
    fn broadcast(&self) -> &BroadcastControl {
        if !self.kind.has_many_side() {
            // SPSC rings and probes have no such block (their data area starts at 1544).
            return &self.local_broadcast;
        }
        // SAFETY: as in `header`: for the many-endpoint kinds the block lies at EXT_OFFSET,
        // below slot 2 and the data offset (checked at create/open), 128-aligned, all atomics.
        unsafe {
            self.base()
                .add(EXT_OFFSET)
                .cast::<BroadcastControl>()
                .as_ref()
        }
    }

    #[inline]
    fn history(&self) -> &[AtomicU64] {
        let off = layout::history_offset(self.slot_count);
        // SAFETY: the table of `history` words lies between the slots and the data offset
        // (checked at create/open), 8-aligned, all atomics.
        unsafe {
            std::slice::from_raw_parts(
                self.base().add(off).cast::<AtomicU64>().as_ptr(),
                self.history,
            )
        }
    }

    /// Whether the endpoint of slot `index` is attached and alive now (its liveness token is
    /// held): a system call, for tools and slow paths.
    fn endpoint_alive(&self, index: usize) -> bool {
        self.slot(index).state.load(Ordering::Acquire) == SLOT_ATTACHED
            // An error here (there should be none) must not declare a live endpoint dead.
            && os::is_locked(self.file.as_fd(), endpoint_byte(index)).unwrap_or(true)
    }

    /// The region control block. Only for segments whose mapping is at least
    /// `REGION_HISTORY_OFFSET` bytes (checked at create/open before the first call).
    #[inline]
    fn region_control(&self) -> &RegionControl {
        assert!(self.map.len() >= layout::REGION_HISTORY_OFFSET);
        // SAFETY: the block lies at REGION_OFFSET, below REGION_HISTORY_OFFSET, which is inside
        // the mapping (asserted); 128-aligned on a page-aligned mapping; all atomics.
        unsafe {
            self.base()
                .add(layout::REGION_OFFSET)
                .cast::<RegionControl>()
                .as_ref()
        }
    }

    /// A region's change history (empty for other kinds).
    #[inline]
    fn region_history(&self) -> &[AtomicU64] {
        let Some(shape) = &self.region else {
            return &[];
        };
        // SAFETY: the validated shape puts `history × entry_words` words at
        // REGION_HISTORY_OFFSET, before the buffers, inside the mapping (its size was checked
        // against the shape); 8-aligned; all atomics.
        unsafe {
            std::slice::from_raw_parts(
                self.base()
                    .add(layout::REGION_HISTORY_OFFSET)
                    .cast::<AtomicU64>()
                    .as_ptr(),
                shape.history * shape.entry_words,
            )
        }
    }

    /// Buffer `index` of a region, as words.
    #[inline]
    fn region_buffer(&self, index: usize) -> &[AtomicU64] {
        let shape = self.region.as_ref().expect("a region segment");
        assert!(index < shape.buffers, "region buffer {index} out of range");
        // SAFETY: the validated shape puts `buffers` buffers of `stride` bytes (a multiple of
        // 128) at the page-aligned buffer offset, inside the mapping; all atomics.
        unsafe {
            std::slice::from_raw_parts(
                self.base()
                    .add(shape.buffer_offset + index * shape.stride)
                    .cast::<AtomicU64>()
                    .as_ptr(),
                shape.stride / 8,
            )
        }
    }

    #[inline]
    fn schema(&self) -> &SchemaBlock {
        // SAFETY: as in `header`: the schema block lies below DATA_OFFSET, 128-aligned, all
        // atomics.
        unsafe {
            self.base()
                .add(SCHEMA_OFFSET)
                .cast::<SchemaBlock>()
                .as_ref()
        }
    }

    fn fingerprint(&self) -> [u64; 4] {
        let words = &self.header().schema;
        std::array::from_fn(|i| words[i].load(Ordering::Relaxed))
    }

    #[inline]
    fn control(&self) -> &RingControl {
        // SAFETY: as in `header`: the control block lies below DATA_OFFSET, 128-aligned, all
        // atomics (with padding that is never read).
        unsafe {
            self.base()
                .add(CONTROL_OFFSET)
                .cast::<RingControl>()
                .as_ref()
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.unlink_on_drop {
            unlink_if_same(&self.path, &self.file);
        }
    }
}

/// An open shared-memory segment. Cloning is cheap and shares the mapping; the creating
/// handle's last clone unlinks the name.
#[derive(Clone)]
pub struct Segment {
    inner: Arc<Inner>,
}

impl Segment {
    /// Removes the segment's name now (existing mappings stay valid until unmapped).
    ///
    /// # Errors
    ///
    /// [`SegmentError::InvalidName`], `NotFound`, `PermissionDenied`, `Os`.
    pub fn remove(name: &str) -> Result<(), SegmentError> {
        let path = object_name(name)?;
        rustix::shm::unlink(path.as_str()).map_err(|e| match e {
            Errno::NOENT => SegmentError::NotFound {
                name: name.to_owned(),
            },
            Errno::ACCESS | Errno::PERM => SegmentError::PermissionDenied {
                name: name.to_owned(),
            },
            e => os_err("shm_unlink", name)(e),
        })
    }

    /// Removes the segment `name` if no live process uses it: no handle anywhere holds its
    /// "in use" token (every handle holds it, so every endpoint does). `Ok(true)`: removed (by
    /// this call, or by a concurrent `create`, `rm` or `gc` that was removing it already);
    /// `Ok(false)`: in use, left alone. Safe against a concurrent `create` of the same name: the
    /// check takes the token exclusively, and a creator that finds it taken starts afresh,
    /// so the new segment is never the one removed.
    ///
    /// # Errors
    ///
    /// [`SegmentError::InvalidName`], `NotFound`, `NotOwner` (another user's object: never
    /// removed), `PermissionDenied`, `Os`.
    pub fn remove_unused(name: &str) -> Result<bool, SegmentError> {
        let path = object_name(name)?;
        let builder = SegmentBuilder::new(name);
        match open_nofollow(&path) {
            Ok(_) => {}
            Err(Errno::NOENT) => {
                return Err(SegmentError::NotFound {
                    name: name.to_owned(),
                })
            }
            Err(Errno::LOOP) => return Err(builder.symlink_error(&path)),
            Err(Errno::ACCESS) => {
                return Err(SegmentError::PermissionDenied {
                    name: name.to_owned(),
                })
            }
            Err(e) => return Err(os_err("open", name)(e)),
        }
        builder.reclaim(&path)
    }

    /// The segment name (without prefix).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What the segment holds.
    pub fn kind(&self) -> SegmentKind {
        self.inner.kind
    }

    /// Capacity of the data area in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Size of the shared-memory object in bytes.
    pub fn total_size(&self) -> u64 {
        self.inner.total_size
    }

    /// The message type this segment was created for (all-zero fingerprint and empty text for
    /// a byte ring).
    pub fn schema(&self) -> SchemaId {
        SchemaId {
            fingerprint: self.inner.fingerprint(),
            text: unpack_text(&load_words(&self.inner.schema().text)),
        }
    }

    /// How many openers have been refused so far because their message type differed. One
    /// `Acquire` load of a line that changes only on a refusal: cheap enough to poll.
    #[inline]
    pub fn schema_rejections(&self) -> u64 {
        // SYNC POINT: pairs with the Release increment in `SegmentBuilder::open`.
        self.inner.schema().rejections.load(Ordering::Acquire)
    }

    /// The last opener refused because its message type differed, if any.
    pub fn last_rejection(&self) -> Option<SchemaRejection> {
        let block = self.inner.schema();
        let count = self.schema_rejections();
        (count > 0).then(|| SchemaRejection {
            count,
            pid: block.rejected_pid.load(Ordering::Relaxed),
            schema: SchemaId {
                fingerprint: std::array::from_fn(|i| {
                    block.rejected_schema[i].load(Ordering::Relaxed)
                }),
                text: unpack_text(&load_words(&block.rejected_text)),
            },
        })
    }

    /// Whether this handle created the segment (and will unlink it, unless it was made to
    /// [persist](SegmentBuilder::persist)).
    pub fn is_creator(&self) -> bool {
        self.inner.creator
    }

    /// Attaches as the producer of the SPSC ring.
    ///
    /// # Errors
    ///
    /// [`AttachError::Busy`] while another live process is the producer, `NotARing`, `Corrupt`
    /// (impossible indices), `Os`.
    pub fn producer(&self) -> Result<Producer<ShmMemory>, AttachError> {
        Producer::new(self.attach(Side::Producer)?)
    }

    /// Attaches as the consumer of the SPSC ring.
    ///
    /// # Errors
    ///
    /// As [`producer`](Self::producer).
    pub fn consumer(&self) -> Result<Consumer<ShmMemory>, AttachError> {
        Consumer::new(self.attach(Side::Consumer)?)
    }

    fn attach(&self, side: Side) -> Result<ShmMemory, AttachError> {
        self.expect_kind(SegmentKind::SpscRing, "an SPSC ring")?;
        let inner = &self.inner;
        let lock = self.reopen().map_err(self.attach_os("reopen"))?;
        match self.lock_slot(&lock, side.index())? {
            true => Ok(self.attached(lock, side.index())),
            false => Err(AttachError::Busy {
                name: inner.name.clone(),
                side,
                endpoint: match side {
                    Side::Producer => "producer",
                    Side::Consumer => "consumer",
                },
                kind: "an SPSC ring",
                pid: inner.slot(side.index()).pid.load(Ordering::Relaxed),
            }),
        }
    }

    /// `Err(NotARing)` unless the segment is of kind `kind`.
    pub(crate) fn expect_kind(
        &self,
        kind: SegmentKind,
        expected: &'static str,
    ) -> Result<(), AttachError> {
        if self.inner.kind == kind {
            Ok(())
        } else {
            Err(AttachError::NotARing {
                name: self.inner.name.clone(),
                kind: self.inner.kind.to_string(),
                expected,
            })
        }
    }

    fn attach_os(&self, op: &'static str) -> impl Fn(Errno) -> AttachError + '_ {
        move |source| AttachError::Os {
            op,
            name: self.inner.name.clone(),
            source,
        }
    }

    /// Tries to take the liveness token of slot `index` through `lock`.
    fn lock_slot(&self, lock: &OwnedFd, index: usize) -> Result<bool, AttachError> {
        os::try_lock(lock.as_fd(), endpoint_byte(index), LockKind::Exclusive)
            .map_err(self.attach_os("fcntl(F_OFD_SETLK)"))
    }

    /// Fills in slot `index`, whose token `lock` holds, and makes the endpoint memory.
    fn attached(&self, lock: OwnedFd, index: usize) -> ShmMemory {
        let slot = self.inner.slot(index);
        slot.pid.store(std::process::id(), Ordering::Relaxed);
        slot.start_time
            .store(os::process_start_time(), Ordering::Relaxed);
        slot.attach_count.fetch_add(1, Ordering::Relaxed);
        slot.state.store(SLOT_ATTACHED, Ordering::Release);
        ShmMemory {
            seg: Arc::clone(&self.inner),
            lock,
            slot: index,
        }
    }

    /// Attaches to a fixed endpoint slot (0 or 1) of a many-endpoint ring: the broadcast
    /// writer or the MPSC consumer. `what` names it in the error.
    ///
    /// The slot is marked attached before this returns; the caller's endpoint initializes its
    /// own words.
    pub(crate) fn attach_single(
        &self,
        kind: SegmentKind,
        expected: &'static str,
        index: usize,
        side: Side,
    ) -> Result<ShmMemory, AttachError> {
        self.expect_kind(kind, expected)?;
        let lock = self.reopen().map_err(self.attach_os("reopen"))?;
        if self.lock_slot(&lock, index)? {
            Ok(self.attached(lock, index))
        } else {
            Err(AttachError::Busy {
                name: self.inner.name.clone(),
                side,
                endpoint: match side {
                    Side::Producer => "writer",
                    Side::Consumer => "consumer",
                },
                kind: expected,
                pid: self.inner.slot(index).pid.load(Ordering::Relaxed),
            })
        }
    }

    /// Attaches to the first free slot of the many side (slots 2..) of a many-endpoint ring: a
    /// slot whose token no live endpoint holds (never used, detached, or its process died).
    /// `before` runs with the token held and before the slot is marked attached: an endpoint
    /// taking over a dead one's slot cleans up after it there.
    pub(crate) fn attach_many(
        &self,
        kind: SegmentKind,
        expected: &'static str,
        what: &'static str,
        before: impl FnOnce(&EndpointSlot),
    ) -> Result<ShmMemory, AttachError> {
        self.expect_kind(kind, expected)?;
        let lock = self.reopen().map_err(self.attach_os("reopen"))?;
        for index in 2..self.inner.slot_count {
            if self.lock_slot(&lock, index)? {
                before(self.inner.slot(index));
                return Ok(self.attached(lock, index));
            }
        }
        Err(AttachError::NoFreeSlot {
            name: self.inner.name.clone(),
            what,
            slots: self.inner.slot_count - 2,
        })
    }

    /// How many endpoints of slots `range` are attached and alive now (their liveness token is
    /// held). One system call per attached slot: for tools and for waiting until peers have
    /// joined, not for the fast path.
    pub fn live_endpoints(&self, range: std::ops::Range<usize>) -> usize {
        range
            .filter(|&i| i < self.inner.slot_count && self.inner.endpoint_alive(i))
            .count()
    }

    /// Number of endpoint slots (2 for SPSC rings; 2 + the many side's for the others).
    pub fn slot_count(&self) -> usize {
        self.inner.slot_count
    }

    /// The broadcast policy (`None` for other kinds).
    pub fn policy(&self) -> Option<BroadcastPolicy> {
        self.inner.policy
    }

    /// The broadcast history length: how many of the last records a late joiner may ask for
    /// (0 for other kinds; the table holds 8 entries more, see [`crate::broadcast`]).
    pub fn history_len(&self) -> usize {
        crate::broadcast::history_records(self.inner.history)
    }

    /// A new open file description of the same object, for an endpoint's own lock.
    fn reopen(&self) -> Result<OwnedFd, Errno> {
        let proc_path = format!("/proc/self/fd/{}", self.inner.file.as_raw_fd());
        match rustix::fs::open(
            proc_path.as_str(),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(fd),
            Err(_) => {
                // No /proc: open by name and make sure it is the same object.
                let fd = open_nofollow(&self.inner.path)?;
                let (ours, theirs) = (
                    rustix::fs::fstat(&self.inner.file)?,
                    rustix::fs::fstat(&fd)?,
                );
                if (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino) {
                    Ok(fd)
                } else {
                    Err(Errno::STALE)
                }
            }
        }
    }

    /// A region's shape (`None` for other kinds).
    pub fn region_shape(&self) -> Option<RegionShape> {
        self.inner.region
    }

    /// Attaches as the writer of a region: takes the writer's liveness token and continues
    /// from the latest published version (taking over from a writer that died, if one did).
    ///
    /// # Errors
    ///
    /// [`AttachError::Busy`] while another live process is the writer, `NotARing` for another
    /// kind, `Corrupt` if the region's state is impossible, `Os`.
    pub fn region_writer(&self) -> Result<region::Writer<ShmRegion>, AttachError> {
        self.expect_kind(SegmentKind::Region, "a region")?;
        let slot = self.inner.slot(0);
        let lock = self.reopen().map_err(self.attach_os("reopen"))?;
        if !self.lock_slot(&lock, 0)? {
            return Err(AttachError::Busy {
                name: self.inner.name.clone(),
                side: Side::Producer,
                endpoint: "writer",
                kind: "a region",
                pid: slot.pid.load(Ordering::Relaxed),
            });
        }
        // A writer attached before and never closed: it died, and this is a takeover.
        if slot.state.load(Ordering::Acquire) == SLOT_ATTACHED {
            self.inner
                .region_control()
                .takeovers
                .fetch_add(1, Ordering::Relaxed);
        }
        let endpoint = self.attached(lock, 0);
        let mem = ShmRegion {
            seg: Arc::clone(&self.inner),
            writer: Some(endpoint),
        };
        region::Writer::new(mem).map_err(AttachError::Corrupt)
    }

    /// A reader of a region. Readers take no slot: any number may read.
    ///
    /// # Errors
    ///
    /// [`AttachError::NotARing`] for another kind.
    pub fn region_reader(&self) -> Result<region::Reader<ShmRegion>, AttachError> {
        self.expect_kind(SegmentKind::Region, "a region")?;
        Ok(region::Reader::new(ShmRegion {
            seg: Arc::clone(&self.inner),
            writer: None,
        }))
    }

    /// The probe word of a [`SegmentKind::Probe`] segment.
    pub(crate) fn probe_word(&self) -> Option<&AtomicU64> {
        (self.inner.kind == SegmentKind::Probe).then(|| &self.inner.control().tail.0)
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.inner.name)
            .field("kind", &self.inner.kind)
            .field("capacity", &self.inner.capacity)
            .field("total_size", &self.inner.total_size)
            .field("creator", &self.inner.creator)
            .finish()
    }
}

/// The memory of one endpoint of a ring in a shared-memory segment: the mapping, and the
/// endpoint's own open file description holding its liveness lock.
pub struct ShmMemory {
    seg: Arc<Inner>,
    lock: OwnedFd,
    slot: usize,
}

impl fmt::Debug for ShmMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmMemory")
            .field("segment", &self.seg.name)
            .field("slot", &self.slot)
            .finish()
    }
}

// SAFETY: the mapping is at least data_offset + capacity bytes (validated at create/open, both
// kept in process memory, never re-read from the segment) and stays mapped while the
// `Arc<Inner>` lives; data offsets are ≡ 8 (mod 64) on a page-aligned mapping; the slot count
// and history length were validated against the data offset.
unsafe impl RingMemory for ShmMemory {
    #[inline]
    fn control(&self) -> &RingControl {
        self.seg.control()
    }

    #[inline]
    fn slot(&self, index: usize) -> &EndpointSlot {
        self.seg.slot(index)
    }

    #[inline]
    fn slot_count(&self) -> usize {
        self.seg.slot_count
    }

    #[inline]
    fn broadcast(&self) -> &BroadcastControl {
        self.seg.broadcast()
    }

    #[inline]
    fn history(&self) -> &[AtomicU64] {
        self.seg.history()
    }

    #[inline]
    fn data(&self) -> NonNull<u8> {
        // SAFETY: the data offset is inside the mapping (see the impl's SAFETY).
        unsafe { self.seg.base().add(self.seg.data_offset) }
    }

    #[inline]
    fn capacity(&self) -> u64 {
        self.seg.capacity
    }

    #[inline]
    unsafe fn header(&self, off: u64) -> &AtomicU64 {
        // SAFETY: the data area is `capacity` bytes at DATA_OFFSET ≡ 8 (mod 16) of a page-aligned
        // mapping that `self` keeps alive; the caller guarantees `off` is 16-aligned and below
        // the capacity.
        unsafe { crate::memory::header_in_place(self.data(), off) }
    }

    #[inline]
    fn token_held(&self, index: usize) -> bool {
        // An error here (there should be none) must not declare a live peer dead.
        os::is_locked(self.lock.as_fd(), endpoint_byte(index)).unwrap_or(true)
    }

    #[inline]
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        crate::wait::futex_wait(word, expected, timeout, true);
    }

    #[inline]
    fn futex_wake(&self, word: &AtomicU32) {
        crate::wait::futex_wake(word, true);
    }

    fn futex_host(&self) -> Arc<dyn FutexHost> {
        Arc::clone(&self.seg) as Arc<dyn FutexHost>
    }
}

/// The memory of a region in a shared-memory segment, for its writer (holding the writer's
/// liveness token) or a reader.
pub struct ShmRegion {
    seg: Arc<Inner>,
    /// The writer's endpoint (its token and slot); `None` for readers.
    writer: Option<ShmMemory>,
}

impl fmt::Debug for ShmRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmRegion")
            .field("segment", &self.seg.name)
            .field("writer", &self.writer.is_some())
            .finish()
    }
}

impl ShmRegion {
    /// The segment's name.
    pub fn segment_name(&self) -> &str {
        &self.seg.name
    }
}

impl Drop for ShmRegion {
    fn drop(&mut self) {
        if self.writer.is_some() {
            // A clean detach: the next writer is not a takeover.
            self.seg
                .slot(0)
                .state
                .store(layout::SLOT_CLOSED, Ordering::Release);
        }
    }
}

// SAFETY: the shape was validated at create/open and is kept in process memory; the mapping
// covers it (its size was checked against the shape) and stays mapped while the `Arc<Inner>`
// lives.
unsafe impl region::RegionMemory for ShmRegion {
    #[inline]
    fn shape(&self) -> &RegionShape {
        self.seg.region.as_ref().expect("a region segment")
    }

    #[inline]
    fn control(&self) -> &RegionControl {
        self.seg.region_control()
    }

    #[inline]
    fn history(&self) -> &[AtomicU64] {
        self.seg.region_history()
    }

    #[inline]
    fn buffer(&self, index: usize) -> &[AtomicU64] {
        self.seg.region_buffer(index)
    }

    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        crate::wait::futex_wait(word, expected, timeout, true);
    }

    fn futex_wake(&self, word: &AtomicU32) {
        crate::wait::futex_wake(word, true);
    }

    fn writer_alive(&self) -> bool {
        if self.writer.is_some() {
            return true;
        }
        self.seg.endpoint_alive(0)
    }
}

/// The mapping stays while the `Arc<Inner>` lives (it unmaps on drop); its futexes are shared,
/// like those of [`ShmMemory`].
impl FutexHost for Inner {
    fn futex_wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        crate::wait::futex_wait(word, expected, timeout, true);
    }

    fn futex_wake(&self, word: &AtomicU32) {
        crate::wait::futex_wake(word, true);
    }
}

impl ShmMemory {
    /// Which endpoint this is, for the two fixed slots (0: producer or broadcast writer; 1:
    /// consumer). Many-side endpoints (slots 2..) report [`Side::Producer`] for MPSC writers
    /// and [`Side::Consumer`] for broadcast readers.
    pub fn side(&self) -> Side {
        match (self.slot, self.seg.kind) {
            (0, _) | (2.., SegmentKind::MpscRing) => Side::Producer,
            _ => Side::Consumer,
        }
    }

    /// The index of this endpoint's slot.
    pub fn slot_index(&self) -> usize {
        self.slot
    }

    /// The segment's name.
    pub fn segment_name(&self) -> &str {
        &self.seg.name
    }
}
