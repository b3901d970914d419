//! Regions: named shared state that one process writes and any number read, in whole versions.
//!
//! A message goes from one process to another once; a region is *state*: a configuration, a
//! map, a model's parameters, the latest reading of a sensor. Its writer changes it and
//! publishes a new version; readers take a snapshot of the latest version whenever they like,
//! or wait for the next one. The bridge (a later layer) mirrors regions to other hosts by
//! their changed chunks, which is what makes this distributed shared memory.
//!
//! - [`Region`]: a fixed number of bytes. Write with a [`WriteScope`] (`write_at`,
//!   `bytes_mut`, `write_diff`), read with [`RegionReader`] (`read_into`, `snapshot`,
//!   `wait_for`, `changes_since`, `read_changes`).
//! - [`TypedRegion<T>`]: one rkyv-archived value of `T` (rich types: `String`, `Vec`, maps,
//!   enums). [`TypedWriter::publish`] serializes a new value; [`TypedReader::read`] gives a
//!   validated `&Archived<T>` of the latest version. The schema is checked at open like a
//!   channel's.
//!
//! # The model
//!
//! - **One writer**, enforced with a liveness token: a second live writer is refused
//!   ([`RegionError::Attach`] naming its pid); once it dies, a new writer takes over and
//!   continues the version sequence.
//! - **Versions** are 64-bit and only go up. A new region is version 0, all zero bytes (a new
//!   typed region publishes its initial value as version 1).
//! - **Snapshots are whole versions**, never a mix of two, and say which version they are. A
//!   reader copies the version out (at memory bandwidth), checking the buffer's version word
//!   before and after; the writer never waits for readers, and a slow or dead reader holds
//!   nothing. How: [`shmesh_ring::region`], which also gives the costs.
//! - **Waiting**: [`RegionReader::wait_for`] sleeps on a futex in the region until a version at
//!   least `v` is published; the writer makes a wake-up call only when a reader sleeps.
//! - **Change tracking**: each version records which chunks (4 KiB by default) it changed.
//!   [`RegionReader::changes_since`] lists the chunks changed after a version, or says it is
//!   too old: take a full snapshot.
//! - A writer killed inside a write scope publishes nothing: readers keep the last version.
//!
//! # Examples
//!
//! ```
//! use shmesh::region::Region;
//!
//! # let name = format!("doc-region-{}", std::process::id());
//! let region = Region::create(&name, 1 << 16)?;
//! let mut writer = region.writer()?;
//! let mut scope = writer.write();
//! scope.write_at(0, b"state");
//! let v = scope.publish();
//!
//! // Anywhere else, in any number of processes:
//! let reader = Region::open(&name)?.reader();
//! let (version, bytes) = reader.snapshot()?;
//! assert_eq!((version, &bytes[..5]), (v, &b"state"[..]));
//! assert_eq!(reader.changes_since(0)?.chunks, vec![0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::Duration;

use rkyv::rancor;
use rkyv::ser::allocator::Arena;
use rkyv::ser::sharing::Share;
use rkyv::ser::{Positional, Serializer};
use rkyv::util::AlignedVec;
use rkyv::Archived;
use shmesh_ring::layout::RegionShape;
use shmesh_ring::region as ring;
use shmesh_ring::{AttachError, SchemaId, Segment, SegmentBuilder, SegmentError, SegmentKind};
use thiserror::Error;

use crate::channel::{Message, Schema, SliceWriter};

pub use shmesh_ring::region::{Changes, ChangesError, Delta, WaitTimeout};
pub use shmesh_ring::segment::{
    DEFAULT_REGION_BUFFERS, DEFAULT_REGION_CHUNK, DEFAULT_REGION_HISTORY,
};
pub use shmesh_ring::Corruption;
pub use shmesh_ring::{ShmRegion, WaitStrategy};

/// The writer of a byte region: [`write`](ring::Writer::write) begins a [`WriteScope`].
pub type RegionWriter = ring::Writer<ShmRegion>;
/// A reader of a byte region.
pub type RegionReader = ring::Reader<ShmRegion>;
/// One version being written (see [`ring::WriteScope`]).
pub type WriteScope<'a> = ring::WriteScope<'a, ShmRegion>;

/// Default size of a typed region: 64 KiB (values archive to at most 64 KiB - 16 bytes).
pub const DEFAULT_TYPED_CAPACITY: u64 = 1 << 16;
/// Bytes in front of a typed region's archive: its length (`u64`, little-endian), then 8
/// reserved bytes, so the archive starts 16-byte aligned.
pub const TYPED_HEADER: usize = 16;

/// Why a region could not be created or opened, or its writer attached.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegionError {
    /// The segment could not be created or opened (name, permissions, space, shape).
    #[error(transparent)]
    Segment(SegmentError),
    /// The region holds another type.
    #[error(transparent)]
    SchemaMismatch(Box<RegionSchemaMismatch>),
    /// The writer is taken by a live process, or the region is unusable.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The initial value of a new typed region could not be written.
    #[error(transparent)]
    Write(#[from] RegionWriteError),
}

impl RegionError {
    fn from_segment(e: SegmentError) -> RegionError {
        match e {
            SegmentError::SchemaMismatch(m) => {
                RegionError::SchemaMismatch(Box::new(RegionSchemaMismatch {
                    region: m.name,
                    ours: m.ours,
                    theirs: m.theirs,
                }))
            }
            e => RegionError::Segment(e),
        }
    }
}

/// A typed region was opened with another type than it holds.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "region '{region}': you asked for {}, but the region holds {}; use the same type (and \
     version) on both sides",
    .ours.text, .theirs.text
)]
pub struct RegionSchemaMismatch {
    /// Region name.
    pub region: String,
    /// The type asked for.
    pub ours: SchemaId,
    /// The type the region holds.
    pub theirs: SchemaId,
}

/// Why a typed value could not be published.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegionWriteError {
    /// The value's archive does not fit the region.
    #[error(
        "region '{region}': the value archives to more than {max} bytes, the most its {size}-byte \
         region holds; create the region with a larger capacity"
    )]
    TooLarge {
        /// Region name.
        region: String,
        /// The region's size.
        size: usize,
        /// The largest archive it holds (`size - 16`).
        max: usize,
    },
    /// A `Serialize` impl of the type failed.
    #[error("region '{region}': serializing the value failed: {detail}")]
    Serialize {
        /// Region name.
        region: String,
        /// What rkyv said.
        detail: String,
    },
}

/// Why a typed read gave no value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegionReadError {
    /// No value was published yet (version 0 of a region whose creator died before publishing
    /// its initial value).
    #[error("region '{region}' holds no value yet (version 0): wait for its writer to publish")]
    Empty {
        /// Region name.
        region: String,
    },
    /// The bytes of the version are not a valid archive of the type: the writer is buggy or
    /// hostile, or wrote the region as bytes.
    #[error(
        "region '{region}': version {version} is not a valid archive of the region's type \
         ({detail}); its writer is buggy or hostile, or wrote it as raw bytes"
    )]
    Invalid {
        /// Region name.
        region: String,
        /// The version read.
        version: u64,
        /// What is wrong.
        detail: String,
    },
    /// The region's shared state is impossible (another process wrote its control words).
    #[error("region '{region}': {source}")]
    Corrupt {
        /// Region name.
        region: String,
        /// What is wrong.
        source: Corruption,
    },
    /// The wait for a version timed out.
    #[error("region '{region}': {source}")]
    Timeout {
        /// Region name.
        region: String,
        /// The wait's error.
        source: WaitTimeout,
    },
}

/// Builds a [`Region`]: `Region::builder(name).size(..).buffers(..).create()` or `.open()`.
#[derive(Debug, Clone)]
pub struct RegionBuilder {
    name: String,
    size: Option<u64>,
    buffers: Option<usize>,
    chunk_size: Option<usize>,
    history: Option<usize>,
    mode: Option<u32>,
    owner: Option<u32>,
    open_timeout: Option<Duration>,
    wait: WaitStrategy,
    schema: Option<Schema>,
}

impl RegionBuilder {
    fn new(name: String) -> Self {
        RegionBuilder {
            name,
            size: None,
            buffers: None,
            chunk_size: None,
            history: None,
            mode: None,
            owner: None,
            open_timeout: None,
            wait: WaitStrategy::default(),
            schema: None,
        }
    }

    /// Create: the region's size in bytes (required; 1 byte to 1 TiB). Open: the size
    /// required, when given.
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    /// Create: how many copies of the region to keep ([`DEFAULT_REGION_BUFFERS`], 2 to 8). A
    /// reader's copy must finish before the writer publishes `buffers - 1` more versions, or
    /// it starts again: more buffers for large regions written fast; memory is
    /// `buffers × size`. Open: the number required, when given.
    pub fn buffers(mut self, n: usize) -> Self {
        self.buffers = Some(n);
        self
    }

    /// Create: the change-tracking chunk in bytes ([`DEFAULT_REGION_CHUNK`]; a power of two,
    /// 64 B to 16 MiB). Open: the size required, when given.
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = Some(bytes);
        self
    }

    /// Create: how many versions the change history covers ([`DEFAULT_REGION_HISTORY`]; at
    /// least `buffers`, at most 4096). Open: the number required, when given.
    pub fn history(mut self, versions: usize) -> Self {
        self.history = Some(versions);
        self
    }

    /// Create: the permission bits (0600 by default). Open: the widest mode accepted.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Open: the uid that must own the region (the effective uid by default).
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// Open: how long to wait for a creator still writing the header (2 s by default).
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = Some(timeout);
        self
    }

    /// How readers made from the region wait in `wait_for` (spin, then futex, by default).
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    fn segment(&self) -> SegmentBuilder {
        let mut b = SegmentBuilder::new(&self.name).kind(SegmentKind::Region);
        if let Some(size) = self.size {
            b = b.capacity(size);
        }
        if let Some(n) = self.buffers {
            b = b.buffers(n);
        }
        if let Some(n) = self.chunk_size {
            b = b.chunk_size(n);
        }
        if let Some(n) = self.history {
            b = b.history(n);
        }
        if let Some(mode) = self.mode {
            b = b.mode(mode);
        }
        if let Some(uid) = self.owner {
            b = b.owner(uid);
        }
        if let Some(t) = self.open_timeout {
            b = b.open_timeout(t);
        }
        if let Some(schema) = &self.schema {
            b = b
                .schema(schema.fingerprint())
                .schema_text(schema.description());
        }
        b
    }

    /// Creates the region at version 0 (all zero). The handle removes the name when it (and
    /// every writer and reader made from it) is dropped.
    ///
    /// # Errors
    ///
    /// [`RegionError::Segment`]: no size given, a parameter out of range
    /// ([`SegmentError::RegionShape`] names it), an invalid name, a name a live process uses,
    /// permissions, no space in `/dev/shm`.
    pub fn create(self) -> Result<Region, RegionError> {
        // No size is size 0, which the segment's shape check refuses naming the size.
        let segment = self.segment().create().map_err(RegionError::from_segment)?;
        Ok(Region {
            segment,
            wait: self.wait,
        })
    }

    /// Opens an existing region.
    ///
    /// # Errors
    ///
    /// [`RegionError::Segment`]: no such region, another kind of segment, a shape other than
    /// the one asked for, permissions; [`RegionError::SchemaMismatch`] (typed regions).
    pub fn open(self) -> Result<Region, RegionError> {
        let segment = self.segment().open().map_err(RegionError::from_segment)?;
        Ok(Region {
            segment,
            wait: self.wait,
        })
    }
}

/// A named region of shared memory in whole versions (see the [module docs](self)).
#[derive(Clone)]
pub struct Region {
    segment: Segment,
    wait: WaitStrategy,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("name", &self.segment.name())
            .field("shape", &self.segment.region_shape())
            .finish()
    }
}

impl Region {
    /// A builder for the region `name` (1 to 200 characters from `[A-Za-z0-9._-]`).
    pub fn builder(name: impl Into<String>) -> RegionBuilder {
        RegionBuilder::new(name.into())
    }

    /// Creates the region `name` of `size` bytes with the default shape.
    ///
    /// # Errors
    ///
    /// As [`RegionBuilder::create`].
    pub fn create(name: impl Into<String>, size: u64) -> Result<Region, RegionError> {
        Self::builder(name).size(size).create()
    }

    /// Opens the existing region `name`.
    ///
    /// # Errors
    ///
    /// As [`RegionBuilder::open`].
    pub fn open(name: impl Into<String>) -> Result<Region, RegionError> {
        Self::builder(name).open()
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        self.segment.name()
    }

    /// The region's shape: size, buffers, chunk size, history.
    pub fn shape(&self) -> RegionShape {
        self.segment
            .region_shape()
            .expect("a Region is made from a region segment")
    }

    /// Bytes of the region.
    pub fn size(&self) -> usize {
        self.shape().size
    }

    /// The latest published version.
    pub fn version(&self) -> u64 {
        self.reader().version()
    }

    /// Attaches as the region's writer, continuing from the latest version (and taking over
    /// from a writer that died).
    ///
    /// # Errors
    ///
    /// [`RegionError::Attach`]: another live process is the writer (its pid is named), or the
    /// region's state is corrupt.
    pub fn writer(&self) -> Result<RegionWriter, RegionError> {
        Ok(self.segment.region_writer()?)
    }

    /// A reader. Any number may read; readers hold nothing the writer waits for.
    pub fn reader(&self) -> RegionReader {
        self.segment
            .region_reader()
            .expect("a Region is made from a region segment")
            .with_wait(self.wait)
    }

    /// The segment underneath (for tools and the bridge).
    pub fn segment(&self) -> &Segment {
        &self.segment
    }
}

/// Builds a [`TypedRegion`]: `TypedRegion::<T>::builder(name).capacity(..).create(&initial)`.
#[derive(Debug, Clone)]
pub struct TypedRegionBuilder<T> {
    region: RegionBuilder,
    schema: Schema,
    _type: PhantomData<fn() -> T>,
}

impl<T: Message> TypedRegionBuilder<T> {
    /// Create: the region's size in bytes ([`DEFAULT_TYPED_CAPACITY`]); values archive to at
    /// most 16 bytes less. Open: the size required, when given.
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.region = self.region.size(bytes);
        self
    }

    /// As [`RegionBuilder::buffers`].
    pub fn buffers(mut self, n: usize) -> Self {
        self.region = self.region.buffers(n);
        self
    }

    /// As [`RegionBuilder::chunk_size`].
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.region = self.region.chunk_size(bytes);
        self
    }

    /// As [`RegionBuilder::history`].
    pub fn history(mut self, versions: usize) -> Self {
        self.region = self.region.history(versions);
        self
    }

    /// As [`RegionBuilder::mode`].
    pub fn mode(mut self, mode: u32) -> Self {
        self.region = self.region.mode(mode);
        self
    }

    /// As [`RegionBuilder::owner`].
    pub fn owner(mut self, uid: u32) -> Self {
        self.region = self.region.owner(uid);
        self
    }

    /// As [`RegionBuilder::open_timeout`].
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.region = self.region.open_timeout(timeout);
        self
    }

    /// As [`RegionBuilder::wait`].
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.region = self.region.wait(wait);
        self
    }

    /// The schema version of `T` (0 by default): change it when `T`'s fields change.
    pub fn version(mut self, version: u32) -> Self {
        self.schema.version = version;
        self
    }

    /// The type name recorded in the schema (`std::any::type_name::<T>()` by default).
    pub fn type_name(mut self, name: impl Into<String>) -> Self {
        self.schema.type_name = name.into();
        self
    }

    fn with_schema(mut self) -> RegionBuilder {
        self.region.schema = Some(self.schema);
        self.region
    }

    /// Creates the region and publishes `initial` as version 1.
    ///
    /// # Errors
    ///
    /// As [`RegionBuilder::create`]; [`RegionError::Write`] if `initial` does not fit.
    pub fn create(mut self, initial: &T) -> Result<TypedRegion<T>, RegionError> {
        if self.region.size.is_none() {
            self.region = self.region.size(DEFAULT_TYPED_CAPACITY);
        }
        let schema = self.schema.clone();
        let region = self.with_schema().create()?;
        let typed = TypedRegion {
            region,
            schema,
            _type: PhantomData,
        };
        typed.writer()?.publish(initial)?;
        Ok(typed)
    }

    /// Opens an existing typed region.
    ///
    /// # Errors
    ///
    /// [`RegionError::SchemaMismatch`] when it holds another type; otherwise as
    /// [`RegionBuilder::open`].
    pub fn open(self) -> Result<TypedRegion<T>, RegionError> {
        let schema = self.schema.clone();
        let region = self.with_schema().open()?;
        Ok(TypedRegion {
            region,
            schema,
            _type: PhantomData,
        })
    }
}

/// A named region holding one rkyv-archived value of `T`, in whole versions.
///
/// The region holds the archive's length (8 bytes, little-endian), 8 reserved bytes, then the
/// archive. Publishing rewrites only the chunks whose bytes changed, so a mirror ships little
/// when little changed.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use shmesh::TypedRegion;
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
/// struct Config {
///     name: String,
///     limits: BTreeMap<String, u32>,
/// }
///
/// # let name = format!("doc-typed-region-{}", std::process::id());
/// let mut config = Config { name: "edge".into(), limits: BTreeMap::new() };
/// let region = TypedRegion::create(&name, &config)?;
/// let mut writer = region.writer()?;
/// config.limits.insert("rps".into(), 500);
/// writer.publish(&config)?;
///
/// let mut reader = TypedRegion::<Config>::open(&name)?.reader();
/// let now = reader.read()?;
/// assert_eq!(now.version(), 2);
/// assert_eq!(now.limits.get("rps").map(|v| v.to_native()), Some(500));
/// assert_eq!(now.deserialize()?, config);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TypedRegion<T> {
    region: Region,
    schema: Schema,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for TypedRegion<T> {
    fn clone(&self) -> Self {
        TypedRegion {
            region: self.region.clone(),
            schema: self.schema.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for TypedRegion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedRegion")
            .field("name", &self.region.name())
            .field("schema", &self.schema.description())
            .finish()
    }
}

impl<T: Message> TypedRegion<T> {
    /// A builder for the typed region `name`.
    pub fn builder(name: impl Into<String>) -> TypedRegionBuilder<T> {
        const {
            assert!(
                std::mem::align_of::<Archived<T>>() <= 16,
                "a region's type must archive with an alignment of at most 16 bytes"
            )
        };
        TypedRegionBuilder {
            region: Region::builder(name),
            schema: Schema::of::<T>(),
            _type: PhantomData,
        }
    }

    /// Creates the region `name` ([`DEFAULT_TYPED_CAPACITY`] bytes) and publishes `initial`
    /// as version 1.
    ///
    /// # Errors
    ///
    /// As [`TypedRegionBuilder::create`].
    pub fn create(name: impl Into<String>, initial: &T) -> Result<TypedRegion<T>, RegionError> {
        Self::builder(name).create(initial)
    }

    /// Opens the existing typed region `name`.
    ///
    /// # Errors
    ///
    /// As [`TypedRegionBuilder::open`].
    pub fn open(name: impl Into<String>) -> Result<TypedRegion<T>, RegionError> {
        Self::builder(name).open()
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        self.region.name()
    }

    /// The schema of `T` recorded in the region.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The latest published version.
    pub fn version(&self) -> u64 {
        self.region.version()
    }

    /// The byte region underneath (its change tracking, its segment).
    pub fn bytes(&self) -> &Region {
        &self.region
    }

    /// Attaches as the writer (see [`Region::writer`]).
    ///
    /// # Errors
    ///
    /// As [`Region::writer`].
    pub fn writer(&self) -> Result<TypedWriter<T>, RegionError> {
        Ok(TypedWriter {
            writer: self.region.writer()?,
            name: self.region.name().to_owned(),
            arena: Arena::new(),
            scratch: Vec::new(),
            _type: PhantomData,
        })
    }

    /// A reader of the latest value.
    pub fn reader(&self) -> TypedReader<T> {
        TypedReader {
            reader: self.region.reader(),
            name: self.region.name().to_owned(),
            copy: AlignedVec::new(),
            last: None,
            _type: PhantomData,
        }
    }
}

/// The writer of a [`TypedRegion`].
pub struct TypedWriter<T> {
    writer: RegionWriter,
    name: String,
    arena: Arena,
    /// The archive of the value being published, grown as values need.
    scratch: Vec<u8>,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedWriter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedWriter")
            .field("region", &self.name)
            .field("version", &self.writer.version())
            .finish()
    }
}

impl<T: Message> TypedWriter<T> {
    /// The latest published version.
    pub fn version(&self) -> u64 {
        self.writer.version()
    }

    /// Publishes `value` as the next version and returns it. Only the chunks whose bytes
    /// changed are written and recorded as changed.
    ///
    /// # Errors
    ///
    /// [`RegionWriteError::TooLarge`] when the archive does not fit the region; `Serialize`
    /// when a `Serialize` impl fails. Nothing is published then.
    pub fn publish(&mut self, value: &T) -> Result<u64, RegionWriteError> {
        let size = self.writer.shape().size;
        let max = size.saturating_sub(TYPED_HEADER);
        let len = loop {
            // Grow the scratch until the archive fits, up to what the region holds.
            if self.scratch.is_empty() {
                self.scratch.resize(max.min(4096), 0);
            }
            let mut serializer = Serializer::new(
                SliceWriter::new(&mut self.scratch),
                self.arena.acquire(),
                Share::new(),
            );
            let result = rkyv::api::serialize_using::<_, rancor::Error>(value, &mut serializer);
            let overflowed = serializer.writer.overflowed();
            let len = serializer.writer.pos();
            drop(serializer);
            match result {
                Ok(_) if !overflowed => break len,
                Err(e) if !overflowed => {
                    return Err(RegionWriteError::Serialize {
                        region: self.name.clone(),
                        detail: e.to_string(),
                    })
                }
                _ if self.scratch.len() >= max => {
                    return Err(RegionWriteError::TooLarge {
                        region: self.name.clone(),
                        size,
                        max,
                    })
                }
                _ => {
                    let grown = (self.scratch.len() * 2).clamp(64, max);
                    self.scratch.resize(grown, 0);
                }
            }
        };
        let mut scope = self.writer.write();
        let mut header = [0u8; TYPED_HEADER];
        header[..8].copy_from_slice(&(len as u64).to_le_bytes());
        scope.write_diff(0, &header);
        scope.write_diff(TYPED_HEADER, &self.scratch[..len]);
        Ok(scope.publish())
    }
}

/// A reader of a [`TypedRegion`]. Keeps a private copy of the last version it read, so
/// reading again allocates nothing once the copy has grown to the value's size.
pub struct TypedReader<T> {
    reader: RegionReader,
    name: String,
    copy: AlignedVec<16>,
    /// The version of the copy, once read.
    last: Option<u64>,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedReader<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedReader")
            .field("region", &self.name)
            .field("last", &self.last)
            .finish()
    }
}

/// The value of one version, validated: derefs to `&Archived<T>`. Borrowed from the reader's
/// private copy, so the writer is never held up by it.
pub struct Snapshot<'a, T: rkyv::Archive> {
    version: u64,
    value: &'a Archived<T>,
    bytes: &'a [u8],
}

impl<T: rkyv::Archive> Deref for Snapshot<'_, T> {
    type Target = Archived<T>;

    fn deref(&self) -> &Archived<T> {
        self.value
    }
}

impl<T: rkyv::Archive> Snapshot<'_, T> {
    /// The version this value was published as.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The archived bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    /// Deserializes the value into an owned `T`.
    ///
    /// # Errors
    ///
    /// When a `Deserialize` impl of the type fails.
    pub fn deserialize(&self) -> Result<T, rancor::Error>
    where
        Archived<T>: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    {
        rkyv::deserialize::<T, rancor::Error>(self.value)
    }
}

impl<T: rkyv::Archive> fmt::Debug for Snapshot<'_, T>
where
    Archived<T>: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("value", self.value)
            .finish()
    }
}

impl<T: Message> TypedReader<T> {
    /// The latest published version.
    pub fn version(&self) -> u64 {
        self.reader.version()
    }

    /// The version this reader read last (`None` before its first read).
    pub fn last_read(&self) -> Option<u64> {
        self.last
    }

    /// The latest value.
    ///
    /// # Errors
    ///
    /// [`RegionReadError::Empty`] before a value was published; `Invalid` when the bytes are
    /// not a valid archive of `T` (never a panic, whatever the writer wrote); `Corrupt` when
    /// the region's control words are impossible.
    pub fn read(&mut self) -> Result<Snapshot<'_, T>, RegionReadError> {
        let max = self.reader.shape().size.saturating_sub(TYPED_HEADER);
        let copy = &mut self.copy;
        let (version, len) = self
            .reader
            .read_with(|peek| {
                let mut header = [0u8; 8];
                if !peek.copy_to(0, &mut header) {
                    return Err(0);
                }
                let len = u64::from_le_bytes(header);
                if len > max as u64 {
                    return Err(len);
                }
                let len = len as usize;
                copy.clear();
                copy.resize(len, 0);
                peek.copy_to(TYPED_HEADER, &mut copy[..]);
                Ok(len)
            })
            .map_err(|e| RegionReadError::Corrupt {
                region: self.name.clone(),
                source: e,
            })?;
        self.last = Some(version);
        let len = match len {
            Ok(0) if version == 0 => {
                return Err(RegionReadError::Empty {
                    region: self.name.clone(),
                })
            }
            Ok(len) => len,
            Err(len) => {
                return Err(RegionReadError::Invalid {
                    region: self.name.clone(),
                    version,
                    detail: format!(
                        "its length word says {len} bytes, more than the {max} it can hold"
                    ),
                })
            }
        };
        let bytes = &self.copy[..len];
        let value = rkyv::access::<Archived<T>, rancor::Error>(bytes).map_err(|e| {
            RegionReadError::Invalid {
                region: self.name.clone(),
                version,
                detail: e.to_string(),
            }
        })?;
        Ok(Snapshot {
            version,
            value,
            bytes,
        })
    }

    /// Waits until a version at least `version` is published (for ever with `None`), then
    /// reads the latest value.
    ///
    /// # Errors
    ///
    /// [`RegionReadError::Timeout`] (saying whether a writer is attached); otherwise as
    /// [`read`](Self::read).
    pub fn wait_for(
        &mut self,
        version: u64,
        timeout: Option<Duration>,
    ) -> Result<Snapshot<'_, T>, RegionReadError> {
        self.reader
            .wait_for(version, timeout)
            .map_err(|source| RegionReadError::Timeout {
                region: self.name.clone(),
                source,
            })?;
        self.read()
    }

    /// Waits for a version newer than the one this reader read last (version 1 or later if it
    /// read none), then reads the latest value: the loop of a reader following a region.
    ///
    /// # Errors
    ///
    /// As [`wait_for`](Self::wait_for).
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Snapshot<'_, T>, RegionReadError> {
        let want = self.last.map_or(1, |v| v + 1);
        self.wait_for(want, timeout)
    }
}
