//! The bridge wire format: how two bridges frame what they say to each other.
//!
//! Every message is one self-delimiting, checksummed frame. The layout follows the usual
//! shape of binary protocols on a byte stream (a fixed header that announces the length, the
//! payload, a trailing checksum), so a reader learns a frame's length from its first
//! [`HEADER_LEN`] bytes ([`decode_header`], [`frame_len`]) before the rest has arrived, and
//! checks the whole frame at once ([`decode`]).
//!
//! ```text
//!  offset  size  field     (all integers little-endian)
//!   0      4     magic     0x424D4853 (b"SHMB" read as a LE u32)
//!   4      1     type      FrameType code, 1..=13
//!   5      1     flags     0 in this version
//!   6      2     reserved  0
//!   8      4     stream    stream id; 0 for connection-level frames
//!  12      4     len       payload length, <= MAX_PAYLOAD
//!  16      8     seq
//!  24      8     aux
//!  32      len   payload
//!  32+len  4     CRC-32 (IEEE, crc32fast) of header and payload
//! ```
//!
//! Frames come from the network: decoding is bounds-checked everywhere, never panics, and never
//! allocates according to a length it has not checked against the bytes actually present.
//! Encoding enforces the same rules decoding does, so every frame this module writes decodes.
//!
//! What each [`FrameType`] means, and the typed views of their payloads ([`Hello`], [`Offer`],
//! [`Reason`], [`DataPayload`], [`RegionPartPayload`], [`RegionEndPayload`],
//! [`LifecyclePayload`]) are documented on the types; [`Frame::body`] decodes a checked frame
//! into one [`Body`].
//!
//! # Versions
//!
//! [`PROTOCOL_VERSION`] 2 added [`FrameType::Lifecycle`] (an SPSC ring's writer or reader
//! went or came back). Bridges of different versions refuse each other at the hello, with an
//! error naming both versions.
//!
//! # Examples
//!
//! ```
//! use shmesh_bridge::wire::{self, Body};
//!
//! let mut out = Vec::new();
//! wire::encode_data(&mut out, 7, 100, 132, 3, b"record bytes")?;
//! let frame = wire::decode(&out)?;
//! assert_eq!(frame.header.stream, 7);
//! match frame.body()? {
//!     Body::Data { before, after, payload } => {
//!         assert_eq!((before, after), (100, 132));
//!         assert_eq!(payload.record_kind, 3);
//!         assert_eq!(payload.bytes, b"record bytes");
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), wire::WireError>(())
//! ```

use shmesh_ring::BroadcastPolicy;

/// The first four bytes of every frame: b"SHMB" read as a little-endian u32.
pub const MAGIC: u32 = 0x424D_4853;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 32;
/// Bytes in a frame trailer (the CRC-32).
pub const TRAILER_LEN: usize = 4;
/// Largest payload a frame may carry: 64 MiB.
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// The protocol version this module speaks, sent in [`Hello`].
pub const PROTOCOL_VERSION: u16 = 2;
/// Most imports one [`Hello`] may request.
pub const MAX_IMPORTS: usize = 4096;
/// Longest string (in UTF-8 bytes) a payload can carry: its length is a u16.
pub const MAX_STR: usize = u16::MAX as usize;
/// Largest ring record a [`FrameType::Data`] frame can carry (the payload minus the record
/// kind). A ring whose records can be longer cannot be mirrored.
pub const MAX_RECORD: usize = MAX_PAYLOAD as usize - 4;
/// Most region bytes one [`FrameType::RegionPart`] frame can carry (the payload minus the
/// offset).
pub const MAX_REGION_CHUNK: usize = MAX_PAYLOAD as usize - 8;

/// [`Offer`] kind code of a single-producer/single-consumer ring (the `SegmentKind` code).
const KIND_SPSC: u8 = 1;
/// [`Offer`] kind code of a broadcast ring.
const KIND_BROADCAST: u8 = 4;
/// [`Offer`] kind code of a region.
const KIND_REGION: u8 = 5;

/// What a frame is. The code is the byte at offset 4 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Stream 0. Opens a connection: payload is a [`Hello`] (version, bridge name, imports).
    Hello = 1,
    /// The exporter's answer to one import: payload is an [`Offer`] describing the segment.
    Offer = 2,
    /// The exporter cannot serve an import: payload is a [`Reason`].
    Refuse = 3,
    /// The importer is ready for data: `seq` = its cursor, `aux` = 1 if the cursor is
    /// meaningful (resuming) else 0. No payload.
    Ready = 4,
    /// One ring record: `seq` = cursor before it, `aux` = cursor after it; payload is a
    /// [`DataPayload`].
    Data = 5,
    /// The receiver has delivered everything through cursor `seq`. No payload.
    Ack = 6,
    /// The receiver is at cursor `seq` and asks to be sent everything again from there. No
    /// payload.
    Resend = 7,
    /// Part of a region version: `seq` = version sent, `aux` = base version (0 = full
    /// snapshot); payload is a [`RegionPartPayload`].
    RegionPart = 8,
    /// The last frame of a region version: `seq` = version, `aux` = base version; payload is a
    /// [`RegionEndPayload`].
    RegionEnd = 9,
    /// Stream 0. Liveness probe: `seq` = a nonce the peer echoes in a [`FrameType::Pong`]. No
    /// payload.
    Ping = 10,
    /// Stream 0. Answer to a [`FrameType::Ping`]: `seq` = its nonce. No payload.
    Pong = 11,
    /// Stream 0. The sender ends the connection: payload is a [`Reason`].
    Close = 12,
    /// SPSC ring streams only: an end of the mirrored ring went away or came (back). `seq` =
    /// a stream cursor, `aux` = 0; payload is a [`LifecyclePayload`].
    ///
    /// The exporter watches the source ring's writer (its producer), the importer the copy's
    /// reader (its consumer). A frame about the end the sender watches is a *report*: a writer
    /// is reported gone once every record it committed was delivered and acknowledged, with
    /// `seq` the cursor after its last record (the importer detaches from the copy once it
    /// delivered through there); otherwise `seq` is where the sender is. A frame about the
    /// end the receiver watches echoes that side's report back, confirming it. Reports are
    /// numbered; a sender repeats its latest report until it is confirmed, and a receiver
    /// applies only a report numbered above the last one it applied on the connection, so
    /// lost, repeated and reordered frames change nothing.
    Lifecycle = 13,
}

impl FrameType {
    /// The code written in the header.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The frame type with this code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => FrameType::Hello,
            2 => FrameType::Offer,
            3 => FrameType::Refuse,
            4 => FrameType::Ready,
            5 => FrameType::Data,
            6 => FrameType::Ack,
            7 => FrameType::Resend,
            8 => FrameType::RegionPart,
            9 => FrameType::RegionEnd,
            10 => FrameType::Ping,
            11 => FrameType::Pong,
            12 => FrameType::Close,
            13 => FrameType::Lifecycle,
            _ => return None,
        })
    }

    /// Whether frames of this type concern the whole connection (stream 0) rather than one
    /// import (a non-zero stream id).
    pub fn is_connection_level(self) -> bool {
        matches!(
            self,
            FrameType::Hello | FrameType::Ping | FrameType::Pong | FrameType::Close
        )
    }

    /// Whether frames of this type carry a payload (the others must have `len` 0).
    pub fn has_payload(self) -> bool {
        !matches!(
            self,
            FrameType::Ready
                | FrameType::Ack
                | FrameType::Resend
                | FrameType::Ping
                | FrameType::Pong
        )
    }
}

/// Why bytes are not a valid frame or payload (decoding), or why a frame cannot be written
/// (encoding). A peer that sends an invalid frame is broken or hostile, or the link damaged the
/// frame: mirroring treats a frame that fails [`decode`] as lost and asks for a resend; a link
/// that cannot even find the frame boundary ([`decode_header`] failed) must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first four bytes are not [`MAGIC`].
    #[error(
        "bad magic {found:#010x} (expected {MAGIC:#010x}): the peer is not a shmesh bridge or \
         the byte stream lost its framing; drop the connection"
    )]
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// The type byte is not a known [`FrameType`] code.
    #[error(
        "unknown frame type {0}: the peer speaks another protocol version (this is \
         {PROTOCOL_VERSION}); upgrade the older bridge"
    )]
    UnknownType(u8),
    /// The flags byte is not 0.
    #[error(
        "frame flags {0:#04x} set, but protocol version {PROTOCOL_VERSION} defines none; the \
         peer speaks a newer protocol or the frame is damaged"
    )]
    BadFlags(u8),
    /// The reserved header field is not 0.
    #[error(
        "reserved header field is {0:#06x}, must be 0 in protocol version {PROTOCOL_VERSION}; \
         the peer speaks a newer protocol or the frame is damaged"
    )]
    BadReserved(u16),
    /// A payload is longer than [`MAX_PAYLOAD`].
    #[error("payload of {len} bytes is longer than the {max}-byte limit of a frame")]
    TooLong {
        /// The payload length announced (decoding) or requested (encoding).
        len: u64,
        /// [`MAX_PAYLOAD`].
        max: u32,
    },
    /// Fewer bytes than a frame header or the frame needs.
    #[error("frame truncated: needs {need} bytes, has {have}")]
    Truncated {
        /// Bytes the header or frame needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// More bytes than the frame's header announces.
    #[error(
        "frame length mismatch: its header announces {expected} bytes in all, {found} given; \
         pass exactly one frame"
    )]
    LengthMismatch {
        /// Bytes the header announces (header, payload and trailer).
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// The CRC-32 in the trailer does not match the header and payload.
    #[error(
        "bad checksum: header and payload hash to {expected:#010x}, the frame says \
         {found:#010x}; the frame was damaged in transit"
    )]
    BadChecksum {
        /// The CRC-32 of the frame's header and payload.
        expected: u32,
        /// The CRC-32 the frame carries.
        found: u32,
    },
    /// A connection-level frame on a stream, or a stream frame on stream 0.
    #[error(
        "{kind:?} frame on stream {stream}: {kind:?} frames belong on {}",
        if kind.is_connection_level() { "stream 0" } else { "a non-zero stream id" }
    )]
    WrongStream {
        /// The frame type.
        kind: FrameType,
        /// The stream id it carried.
        stream: u32,
    },
    /// A frame type without payload has a non-zero length.
    #[error("{kind:?} frames carry no payload, this one has {len} bytes")]
    UnexpectedPayload {
        /// The frame type.
        kind: FrameType,
        /// The payload length it carried.
        len: u32,
    },
    /// A payload ends inside a field.
    #[error("payload ends inside {field}: it needs {need} more bytes, {have} are left")]
    ShortPayload {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the payload.
        have: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    BadString {
        /// The field.
        field: &'static str,
    },
    /// A string is too long for its u16 length prefix (encoding).
    #[error("{field} is {len} bytes long, at most {MAX_STR} fit in a frame; shorten it")]
    StringTooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A hello requests more than [`MAX_IMPORTS`] imports.
    #[error(
        "a hello requests {count} imports, at most {MAX_IMPORTS} are allowed; split them \
         across bridges"
    )]
    TooManyImports {
        /// Imports requested.
        count: usize,
    },
    /// A hello requests two imports with the same stream id, or one with stream id 0.
    #[error("hello import stream id {stream} is {}", if *stream == 0 { "0, which is reserved for the connection" } else { "used twice" })]
    BadImportStream {
        /// The offending stream id.
        stream: u32,
    },
    /// A field holds a value outside its range.
    #[error("{field} is {value}, which is not a valid value ({expected})")]
    BadValue {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
        /// What is allowed.
        expected: &'static str,
    },
    /// A hello from a bridge speaking another protocol version.
    #[error(
        "the peer speaks protocol version {found}, this bridge speaks {PROTOCOL_VERSION}; run \
         the same shmesh-bridge version on both ends"
    )]
    UnsupportedVersion {
        /// The version the peer sent.
        found: u16,
    },
    /// A payload has bytes after its last field.
    #[error("{what} payload has {extra} bytes after its last field")]
    TrailingBytes {
        /// The payload type.
        what: &'static str,
        /// Bytes left over.
        extra: usize,
    },
}

/// A decoded frame header (magic, flags and reserved are checked and not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// What the frame is.
    pub kind: FrameType,
    /// The stream (import) it concerns; 0 for connection-level frames.
    pub stream: u32,
    /// Payload length in bytes, at most [`MAX_PAYLOAD`].
    pub len: u32,
    /// Type-specific: a cursor, version or nonce (see [`FrameType`]).
    pub seq: u64,
    /// Type-specific: a second cursor, base version or flag (see [`FrameType`]).
    pub aux: u64,
}

/// The header fields as read, before any check beyond the magic.
struct RawHeader {
    kind: u8,
    flags: u8,
    reserved: u16,
    stream: u32,
    len: u32,
    seq: u64,
    aux: u64,
}

fn read_raw_header(bytes: &[u8]) -> Result<RawHeader, WireError> {
    let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(WireError::Truncated {
            need: HEADER_LEN,
            have: bytes.len(),
        });
    };
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    let raw = RawHeader {
        kind: h[4],
        flags: h[5],
        reserved: u16::from_le_bytes([h[6], h[7]]),
        stream: u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
        len: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
        seq: u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]),
        aux: u64::from_le_bytes([h[24], h[25], h[26], h[27], h[28], h[29], h[30], h[31]]),
    };
    if raw.len > MAX_PAYLOAD {
        return Err(WireError::TooLong {
            len: raw.len.into(),
            max: MAX_PAYLOAD,
        });
    }
    Ok(raw)
}

/// The rules every header obeys, shared by decoding and encoding.
fn check_header(raw: &RawHeader) -> Result<Header, WireError> {
    let kind = FrameType::from_code(raw.kind).ok_or(WireError::UnknownType(raw.kind))?;
    if raw.flags != 0 {
        return Err(WireError::BadFlags(raw.flags));
    }
    if raw.reserved != 0 {
        return Err(WireError::BadReserved(raw.reserved));
    }
    check_rules(kind, raw.stream, raw.len, raw.aux)?;
    Ok(Header {
        kind,
        stream: raw.stream,
        len: raw.len,
        seq: raw.seq,
        aux: raw.aux,
    })
}

/// The per-type rules: which stream, whether a payload, Ready's flag.
fn check_rules(kind: FrameType, stream: u32, len: u32, aux: u64) -> Result<(), WireError> {
    if kind.is_connection_level() != (stream == 0) {
        return Err(WireError::WrongStream { kind, stream });
    }
    if !kind.has_payload() && len != 0 {
        return Err(WireError::UnexpectedPayload { kind, len });
    }
    if kind == FrameType::Ready && aux > 1 {
        return Err(WireError::BadValue {
            field: "Ready aux (cursor meaningful)",
            value: aux,
            expected: "0 or 1",
        });
    }
    if kind == FrameType::Lifecycle && aux != 0 {
        return Err(WireError::BadValue {
            field: "Lifecycle aux",
            value: aux,
            expected: "0",
        });
    }
    Ok(())
}

/// Decodes and checks the header at the start of `bytes` (the rest of the frame need not have
/// arrived): magic, type, flags, reserved field, payload length, and the per-type rules
/// (connection-level types on stream 0 and the others not, no payload where the type has
/// none, Ready's `aux` 0 or 1, Lifecycle's 0). The frame is [`frame_len`] bytes long.
///
/// # Errors
///
/// [`WireError::Truncated`] with fewer than [`HEADER_LEN`] bytes; otherwise the first rule the
/// header breaks. A link that gets an error here has lost the frame boundary and must drop the
/// connection.
///
/// # Examples
///
/// ```
/// use shmesh_bridge::wire::{self, FrameType};
///
/// let mut out = Vec::new();
/// wire::encode(&mut out, FrameType::Ack, 3, 42, 0, &[])?;
/// let header = wire::decode_header(&out[..wire::HEADER_LEN])?;
/// assert_eq!((header.kind, header.stream, header.seq), (FrameType::Ack, 3, 42));
/// assert_eq!(wire::frame_len(&header), out.len());
/// # Ok::<(), wire::WireError>(())
/// ```
pub fn decode_header(bytes: &[u8]) -> Result<Header, WireError> {
    check_header(&read_raw_header(bytes)?)
}

/// Bytes in the whole frame this header starts: header, payload and trailer.
pub fn frame_len(header: &Header) -> usize {
    HEADER_LEN + header.len as usize + TRAILER_LEN
}

/// A checked frame: its header and a view of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: Header,
    /// The payload (`header.len` bytes).
    pub payload: &'a [u8],
}

/// Decodes one whole frame: `bytes` must be exactly one frame. Checks the length, then the
/// checksum, then the header rules of [`decode_header`]; the payload's contents are checked by
/// [`Frame::body`] or the payload types' `decode`.
///
/// # Errors
///
/// [`WireError::BadMagic`]/[`WireError::TooLong`] when the header cannot announce a length,
/// [`WireError::Truncated`] or [`WireError::LengthMismatch`] when `bytes` is not that long,
/// [`WireError::BadChecksum`] when the frame was damaged, otherwise the header rule it breaks.
///
/// # Examples
///
/// ```
/// use shmesh_bridge::wire::{self, FrameType, WireError};
///
/// let mut out = Vec::new();
/// wire::encode(&mut out, FrameType::Ping, 0, 9, 0, &[])?;
/// assert_eq!(wire::decode(&out)?.header.seq, 9);
/// out[20] ^= 1; // damage the nonce
/// assert!(matches!(wire::decode(&out), Err(WireError::BadChecksum { .. })));
/// # Ok::<(), WireError>(())
/// ```
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, WireError> {
    let raw = read_raw_header(bytes)?;
    let total = HEADER_LEN + raw.len as usize + TRAILER_LEN;
    if bytes.len() < total {
        return Err(WireError::Truncated {
            need: total,
            have: bytes.len(),
        });
    }
    if bytes.len() > total {
        return Err(WireError::LengthMismatch {
            expected: total,
            found: bytes.len(),
        });
    }
    let (body, trailer) = bytes.split_at(total - TRAILER_LEN);
    let found = match trailer.first_chunk::<TRAILER_LEN>() {
        Some(t) => u32::from_le_bytes(*t),
        None => {
            return Err(WireError::Truncated {
                need: total,
                have: bytes.len(),
            })
        }
    };
    let expected = crc32fast::hash(body);
    if expected != found {
        return Err(WireError::BadChecksum { expected, found });
    }
    let header = check_header(&raw)?;
    let payload = body.get(HEADER_LEN..).unwrap_or_default();
    Ok(Frame { header, payload })
}

/// Appends one frame to `out`: header, the concatenation of `parts` as payload, checksum.
fn encode_parts(
    out: &mut Vec<u8>,
    kind: FrameType,
    stream: u32,
    seq: u64,
    aux: u64,
    parts: &[&[u8]],
) -> Result<(), WireError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = match u32::try_from(len) {
        Ok(l) if l <= MAX_PAYLOAD => l,
        _ => {
            return Err(WireError::TooLong {
                len: len as u64,
                max: MAX_PAYLOAD,
            })
        }
    };
    check_rules(kind, stream, len, aux)?;
    let start = out.len();
    out.reserve(HEADER_LEN + len as usize + TRAILER_LEN);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(kind.code());
    out.push(0); // flags
    out.extend_from_slice(&0u16.to_le_bytes()); // reserved
    out.extend_from_slice(&stream.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&aux.to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Appends one frame to `out`. The payload is written as given: build it with the payload
/// types' `encode` (or use [`encode_data`] / [`encode_region_part`] for bulk data, which avoid
/// the copy).
///
/// # Errors
///
/// [`WireError::TooLong`] for a payload over [`MAX_PAYLOAD`]; [`WireError::WrongStream`],
/// [`WireError::UnexpectedPayload`] or [`WireError::BadValue`] when the frame would break the
/// header rules of [`decode_header`]. Nothing is appended then.
///
/// # Examples
///
/// ```
/// use shmesh_bridge::wire::{self, FrameType, Reason};
///
/// let mut out = Vec::new();
/// wire::encode(&mut out, FrameType::Close, 0, 0, 0, &Reason::new("shutting down").encode())?;
/// let frame = wire::decode(&out)?;
/// assert_eq!(Reason::decode(frame.payload)?.text, "shutting down");
/// # Ok::<(), wire::WireError>(())
/// ```
pub fn encode(
    out: &mut Vec<u8>,
    kind: FrameType,
    stream: u32,
    seq: u64,
    aux: u64,
    payload: &[u8],
) -> Result<(), WireError> {
    encode_parts(out, kind, stream, seq, aux, &[payload])
}

/// Appends a [`FrameType::Data`] frame carrying one ring record straight from `bytes` (no
/// intermediate payload buffer): `seq` = cursor before the record, `aux` = cursor after it.
///
/// # Errors
///
/// [`WireError::TooLong`] for a record over [`MAX_RECORD`] bytes; [`WireError::WrongStream`]
/// for stream 0. Nothing is appended then.
pub fn encode_data(
    out: &mut Vec<u8>,
    stream: u32,
    seq: u64,
    aux: u64,
    record_kind: u32,
    bytes: &[u8],
) -> Result<(), WireError> {
    encode_parts(
        out,
        FrameType::Data,
        stream,
        seq,
        aux,
        &[&record_kind.to_le_bytes(), bytes],
    )
}

/// Appends a [`FrameType::RegionPart`] frame: `bytes` to write at `offset` of version
/// `version`, a delta against `base` (0 = full snapshot). No intermediate payload buffer.
///
/// # Errors
///
/// [`WireError::TooLong`] for more than [`MAX_REGION_CHUNK`] bytes; [`WireError::WrongStream`]
/// for stream 0. Nothing is appended then.
pub fn encode_region_part(
    out: &mut Vec<u8>,
    stream: u32,
    version: u64,
    base: u64,
    offset: u64,
    bytes: &[u8],
) -> Result<(), WireError> {
    encode_parts(
        out,
        FrameType::RegionPart,
        stream,
        version,
        base,
        &[&offset.to_le_bytes(), bytes],
    )
}

/// A bounds-checked cursor over a payload.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(payload: &'a [u8]) -> Self {
        Reader { rest: payload }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::ShortPayload {
                field,
                need: n,
                have: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(*head)
            }
            None => Err(WireError::ShortPayload {
                field,
                need: N,
                have: self.rest.len(),
            }),
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.array(field).map(u16::from_le_bytes)
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.array(field).map(u32::from_le_bytes)
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let len = self.u16(field)?;
        let bytes = self.take(len.into(), field)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::BadString { field })
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn finish(self, what: &'static str) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                what,
                extra: self.rest.len(),
            })
        }
    }
}

fn put_str(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), WireError> {
    let len = u16::try_from(s.len()).map_err(|_| WireError::StringTooLong {
        field,
        len: s.len(),
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn check_payload_len(payload: &[u8]) -> Result<(), WireError> {
    if payload.len() > MAX_PAYLOAD as usize {
        return Err(WireError::TooLong {
            len: payload.len() as u64,
            max: MAX_PAYLOAD,
        });
    }
    Ok(())
}

/// One import a [`Hello`] requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImportReq {
    /// The stream id the importer assigned to it: non-zero, unique within the hello.
    pub stream: u32,
    /// The name of the exported segment.
    pub name: String,
    /// Where the importer is (resuming after a reconnect), or `None` for a fresh import.
    pub cursor: Option<u64>,
}

/// Payload of a [`FrameType::Hello`]: `u16 version`, `str name`, `u16 n`, then `n` imports of
/// `u32 stream`, `str name`, `u8 has_cursor` (0 or 1), `u64 cursor` (0 when `has_cursor` is 0).
///
/// # Examples
///
/// ```
/// use shmesh_bridge::wire::{Hello, ImportReq, PROTOCOL_VERSION};
///
/// let hello = Hello {
///     version: PROTOCOL_VERSION,
///     name: "host-a".into(),
///     imports: vec![ImportReq { stream: 1, name: "prices".into(), cursor: Some(4096) }],
/// };
/// assert_eq!(Hello::decode(&hello.encode()?)?, hello);
/// # Ok::<(), shmesh_bridge::wire::WireError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hello {
    /// The sender's protocol version: [`PROTOCOL_VERSION`] (others fail to decode).
    pub version: u16,
    /// The sending bridge's name.
    pub name: String,
    /// The segments it imports, at most [`MAX_IMPORTS`].
    pub imports: Vec<ImportReq>,
}

/// Smallest encoded import: stream, empty name, has_cursor, cursor.
const MIN_IMPORT_LEN: usize = 4 + 2 + 1 + 8;

fn check_imports<'s>(streams: impl Iterator<Item = &'s u32>) -> Result<(), WireError> {
    let mut ids: Vec<u32> = streams.copied().collect();
    ids.sort_unstable();
    if ids.first() == Some(&0) {
        return Err(WireError::BadImportStream { stream: 0 });
    }
    match ids.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(WireError::BadImportStream { stream: w[0] }),
        None => Ok(()),
    }
}

impl Hello {
    /// Encodes the payload.
    ///
    /// # Errors
    ///
    /// [`WireError::TooManyImports`], [`WireError::BadImportStream`] (0 or repeated),
    /// [`WireError::StringTooLong`], or [`WireError::TooLong`] when the whole does not fit in
    /// a frame.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.imports.len() > MAX_IMPORTS {
            return Err(WireError::TooManyImports {
                count: self.imports.len(),
            });
        }
        check_imports(self.imports.iter().map(|i| &i.stream))?;
        let mut out = Vec::new();
        out.extend_from_slice(&self.version.to_le_bytes());
        put_str(&mut out, "hello bridge name", &self.name)?;
        // Fits: checked against MAX_IMPORTS above.
        out.extend_from_slice(&(self.imports.len() as u16).to_le_bytes());
        for import in &self.imports {
            out.extend_from_slice(&import.stream.to_le_bytes());
            put_str(&mut out, "hello import name", &import.name)?;
            out.push(u8::from(import.cursor.is_some()));
            out.extend_from_slice(&import.cursor.unwrap_or(0).to_le_bytes());
        }
        check_payload_len(&out)?;
        Ok(out)
    }

    /// Decodes and checks a payload.
    ///
    /// # Errors
    ///
    /// [`WireError::UnsupportedVersion`] for another protocol version (nothing after the
    /// version is read then); [`WireError::ShortPayload`], [`WireError::BadString`],
    /// [`WireError::TooManyImports`], [`WireError::BadImportStream`], [`WireError::BadValue`]
    /// (a `has_cursor` other than 0/1, or a cursor without it), [`WireError::TrailingBytes`].
    pub fn decode(payload: &[u8]) -> Result<Hello, WireError> {
        let mut r = Reader::new(payload);
        let version = r.u16("hello protocol version")?;
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion { found: version });
        }
        let name = r.str("hello bridge name")?.to_owned();
        let count = usize::from(r.u16("hello import count")?);
        if count > MAX_IMPORTS {
            return Err(WireError::TooManyImports { count });
        }
        // Never reserve more than the bytes present could hold.
        let mut imports = Vec::with_capacity(count.min(r.rest.len() / MIN_IMPORT_LEN));
        for _ in 0..count {
            let stream = r.u32("hello import stream")?;
            let name = r.str("hello import name")?.to_owned();
            let has_cursor = r.u8("hello import has_cursor")?;
            let cursor = r.u64("hello import cursor")?;
            let cursor = match (has_cursor, cursor) {
                (1, c) => Some(c),
                (0, 0) => None,
                (0, c) => {
                    return Err(WireError::BadValue {
                        field: "hello import cursor without has_cursor",
                        value: c,
                        expected: "0",
                    })
                }
                (h, _) => {
                    return Err(WireError::BadValue {
                        field: "hello import has_cursor",
                        value: h.into(),
                        expected: "0 or 1",
                    })
                }
            };
            imports.push(ImportReq {
                stream,
                name,
                cursor,
            });
        }
        r.finish("hello")?;
        check_imports(imports.iter().map(|i| &i.stream))?;
        Ok(Hello {
            version,
            name,
            imports,
        })
    }
}

/// What an exported segment is, as an [`Offer`] states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OfferKind {
    /// A single-producer/single-consumer ring (kind code 1, policy byte 0).
    Spsc,
    /// A broadcast ring (kind code 4) with its slow-reader policy (policy byte 0 Block, 1 Lap).
    Broadcast(BroadcastPolicy),
    /// A versioned region (kind code 5, policy byte 0).
    Region,
}

/// Payload of a [`FrameType::Offer`]: `u8 kind` (`SegmentKind` code: 1 spsc, 4 broadcast,
/// 5 region), `u64 capacity`, `[u64; 4] fingerprint`, `str schema_text`, `u8 policy`
/// (broadcast: 0 block, 1 lap; else 0), `u32 history`, `u32 buffers`, `u32 chunk_size`.
///
/// # Examples
///
/// ```
/// use shmesh_bridge::wire::{Offer, OfferKind};
///
/// let offer = Offer {
///     kind: OfferKind::Spsc,
///     capacity: 1 << 20,
///     fingerprint: [1, 2, 3, 4],
///     schema: "struct Tick { price: u64 }".into(),
///     history: 0,
///     buffers: 0,
///     chunk_size: 0,
/// };
/// assert_eq!(Offer::decode(&offer.encode()?)?, offer);
/// # Ok::<(), shmesh_bridge::wire::WireError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Offer {
    /// The segment's kind (and a broadcast ring's policy).
    pub kind: OfferKind,
    /// The data capacity in bytes.
    pub capacity: u64,
    /// The schema fingerprint of its message type.
    pub fingerprint: [u64; 4],
    /// The schema description stored next to the fingerprint.
    pub schema: String,
    /// History entries (0 where not applicable).
    pub history: u32,
    /// Buffers (0 where not applicable).
    pub buffers: u32,
    /// Chunk size (0 where not applicable).
    pub chunk_size: u32,
}

impl Offer {
    /// Encodes the payload.
    ///
    /// # Errors
    ///
    /// [`WireError::StringTooLong`] for a schema text over [`MAX_STR`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let (kind, policy) = match self.kind {
            OfferKind::Spsc => (KIND_SPSC, 0),
            OfferKind::Broadcast(BroadcastPolicy::Block) => (KIND_BROADCAST, 0),
            OfferKind::Broadcast(BroadcastPolicy::Lap) => (KIND_BROADCAST, 1),
            OfferKind::Region => (KIND_REGION, 0),
        };
        let mut out = Vec::with_capacity(1 + 8 + 32 + 2 + self.schema.len() + 1 + 12);
        out.push(kind);
        out.extend_from_slice(&self.capacity.to_le_bytes());
        for word in self.fingerprint {
            out.extend_from_slice(&word.to_le_bytes());
        }
        put_str(&mut out, "offer schema text", &self.schema)?;
        out.push(policy);
        out.extend_from_slice(&self.history.to_le_bytes());
        out.extend_from_slice(&self.buffers.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        Ok(out)
    }

    /// Decodes and checks a payload.
    ///
    /// # Errors
    ///
    /// [`WireError::BadValue`] for an unknown kind or a policy byte the kind does not allow;
    /// [`WireError::ShortPayload`], [`WireError::BadString`], [`WireError::TrailingBytes`].
    pub fn decode(payload: &[u8]) -> Result<Offer, WireError> {
        let mut r = Reader::new(payload);
        let kind = r.u8("offer kind")?;
        let capacity = r.u64("offer capacity")?;
        let mut fingerprint = [0u64; 4];
        for word in &mut fingerprint {
            *word = r.u64("offer fingerprint")?;
        }
        let schema = r.str("offer schema text")?.to_owned();
        let policy = r.u8("offer policy")?;
        let history = r.u32("offer history")?;
        let buffers = r.u32("offer buffers")?;
        let chunk_size = r.u32("offer chunk_size")?;
        r.finish("offer")?;
        let kind = match (kind, policy) {
            (KIND_SPSC, 0) => OfferKind::Spsc,
            (KIND_BROADCAST, 0) => OfferKind::Broadcast(BroadcastPolicy::Block),
            (KIND_BROADCAST, 1) => OfferKind::Broadcast(BroadcastPolicy::Lap),
            (KIND_REGION, 0) => OfferKind::Region,
            (KIND_SPSC | KIND_REGION, p) => {
                return Err(WireError::BadValue {
                    field: "offer policy",
                    value: p.into(),
                    expected: "0 for spsc rings and regions",
                })
            }
            (KIND_BROADCAST, p) => {
                return Err(WireError::BadValue {
                    field: "offer policy",
                    value: p.into(),
                    expected: "0 block or 1 lap for broadcast rings",
                })
            }
            (k, _) => {
                return Err(WireError::BadValue {
                    field: "offer kind",
                    value: k.into(),
                    expected: "1 spsc, 4 broadcast or 5 region",
                })
            }
        };
        Ok(Offer {
            kind,
            capacity,
            fingerprint,
            schema,
            history,
            buffers,
            chunk_size,
        })
    }
}

/// Payload of a [`FrameType::Refuse`] or [`FrameType::Close`]: `str reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reason {
    /// Why, for a human: at most [`MAX_STR`] bytes are sent.
    pub text: String,
}

impl Reason {
    /// A reason with this text.
    pub fn new(text: impl Into<String>) -> Self {
        Reason { text: text.into() }
    }

    /// Encodes the payload. A text over [`MAX_STR`] bytes is cut at the last character
    /// boundary that fits (a reason is for humans; losing its tail is better than failing to
    /// say it).
    pub fn encode(&self) -> Vec<u8> {
        let mut end = self.text.len().min(MAX_STR);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &self.text[..end];
        let mut out = Vec::with_capacity(2 + text.len());
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// Decodes a payload.
    ///
    /// # Errors
    ///
    /// [`WireError::ShortPayload`], [`WireError::BadString`], [`WireError::TrailingBytes`].
    pub fn decode(payload: &[u8]) -> Result<Reason, WireError> {
        let mut r = Reader::new(payload);
        let text = r.str("reason")?.to_owned();
        r.finish("reason")?;
        Ok(Reason { text })
    }
}

/// Payload of a [`FrameType::Data`]: `u32 record_kind`, then the record's bytes. Borrows them
/// from the frame. [`encode_data`] writes a whole Data frame without building this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataPayload<'a> {
    /// The record's kind, as the ring stores it.
    pub record_kind: u32,
    /// The record's bytes.
    pub bytes: &'a [u8],
}

impl<'a> DataPayload<'a> {
    /// Encodes the payload (a copy: prefer [`encode_data`] on hot paths).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.bytes.len());
        out.extend_from_slice(&self.record_kind.to_le_bytes());
        out.extend_from_slice(self.bytes);
        out
    }

    /// Decodes a payload.
    ///
    /// # Errors
    ///
    /// [`WireError::ShortPayload`] under 4 bytes.
    pub fn decode(payload: &'a [u8]) -> Result<DataPayload<'a>, WireError> {
        let mut r = Reader::new(payload);
        let record_kind = r.u32("data record kind")?;
        Ok(DataPayload {
            record_kind,
            bytes: r.rest(),
        })
    }
}

/// Payload of a [`FrameType::RegionPart`]: `u64 offset`, then the bytes to write there.
/// Borrows them from the frame. [`encode_region_part`] writes a whole frame without building
/// this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionPartPayload<'a> {
    /// Where in the region the bytes go.
    pub offset: u64,
    /// The bytes.
    pub bytes: &'a [u8],
}

impl<'a> RegionPartPayload<'a> {
    /// Encodes the payload (a copy: prefer [`encode_region_part`] on hot paths).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.bytes.len());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(self.bytes);
        out
    }

    /// Decodes a payload. The offset is not checked against the region (this module does not
    /// know it): the caller checks `offset + bytes.len()` against the region size, overflow
    /// included.
    ///
    /// # Errors
    ///
    /// [`WireError::ShortPayload`] under 8 bytes.
    pub fn decode(payload: &'a [u8]) -> Result<RegionPartPayload<'a>, WireError> {
        let mut r = Reader::new(payload);
        let offset = r.u64("region part offset")?;
        Ok(RegionPartPayload {
            offset,
            bytes: r.rest(),
        })
    }
}

/// Payload of a [`FrameType::RegionEnd`]: `u64 region_size`, `u64 parts`, `u64 bytes`: the
/// region's size, and how many `RegionPart` frames with how many bytes in all made this
/// version, so the receiver applies it only when every part arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionEndPayload {
    /// The region's size in bytes.
    pub size: u64,
    /// How many parts the version was sent in.
    pub parts: u64,
    /// Bytes in those parts.
    pub bytes: u64,
}

impl RegionEndPayload {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        for word in [self.size, self.parts, self.bytes] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Decodes a payload.
    ///
    /// # Errors
    ///
    /// [`WireError::ShortPayload`], [`WireError::TrailingBytes`]: it must be exactly 24 bytes.
    pub fn decode(payload: &[u8]) -> Result<RegionEndPayload, WireError> {
        let mut r = Reader::new(payload);
        let size = r.u64("region end size")?;
        let parts = r.u64("region end parts")?;
        let bytes = r.u64("region end bytes")?;
        r.finish("region end")?;
        Ok(RegionEndPayload { size, parts, bytes })
    }
}

/// Which end of a mirrored SPSC ring a [`FrameType::Lifecycle`] frame is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingEnd {
    /// The source ring's writer (its producer), on the exporting host (code 0).
    Writer,
    /// The copy's reader (its consumer), on the importing host (code 1).
    Reader,
}

/// Payload of a [`FrameType::Lifecycle`]: `u8 end` (0 writer, 1 reader), `u8 attached` (0
/// gone, 1 attached or not attached yet), `u64 report` (the report's number, from 1): 10
/// bytes.
///
/// # Examples
///
/// ```
/// use shmesh_bridge::wire::{LifecyclePayload, RingEnd};
///
/// let gone = LifecyclePayload { end: RingEnd::Writer, attached: false, report: 3 };
/// assert_eq!(LifecyclePayload::decode(&gone.encode())?, gone);
/// # Ok::<(), shmesh_bridge::wire::WireError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LifecyclePayload {
    /// The end it is about.
    pub end: RingEnd,
    /// Whether that end is attached (or was never attached yet); `false`: it detached or its
    /// process died.
    pub attached: bool,
    /// The report's number: increases with each report a bridge makes, never 0.
    pub report: u64,
}

impl LifecyclePayload {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10);
        out.push(match self.end {
            RingEnd::Writer => 0,
            RingEnd::Reader => 1,
        });
        out.push(u8::from(self.attached));
        out.extend_from_slice(&self.report.to_le_bytes());
        out
    }

    /// Decodes and checks a payload.
    ///
    /// # Errors
    ///
    /// [`WireError::BadValue`] for an end or attached byte other than 0/1 or a report number
    /// 0; [`WireError::ShortPayload`], [`WireError::TrailingBytes`]: it must be exactly 10
    /// bytes.
    pub fn decode(payload: &[u8]) -> Result<LifecyclePayload, WireError> {
        let mut r = Reader::new(payload);
        let end = r.u8("lifecycle end")?;
        let attached = r.u8("lifecycle attached")?;
        let report = r.u64("lifecycle report")?;
        r.finish("lifecycle")?;
        let end = match end {
            0 => RingEnd::Writer,
            1 => RingEnd::Reader,
            e => {
                return Err(WireError::BadValue {
                    field: "lifecycle end",
                    value: e.into(),
                    expected: "0 writer or 1 reader",
                })
            }
        };
        let attached = match attached {
            0 => false,
            1 => true,
            a => {
                return Err(WireError::BadValue {
                    field: "lifecycle attached",
                    value: a.into(),
                    expected: "0 gone or 1 attached",
                })
            }
        };
        if report == 0 {
            return Err(WireError::BadValue {
                field: "lifecycle report",
                value: 0,
                expected: "a report number from 1",
            });
        }
        Ok(LifecyclePayload {
            end,
            attached,
            report,
        })
    }
}

/// A frame's meaning: its type with the header fields and payload decoded into what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    /// See [`FrameType::Hello`].
    Hello(Hello),
    /// See [`FrameType::Offer`].
    Offer(Offer),
    /// See [`FrameType::Refuse`].
    Refuse(Reason),
    /// See [`FrameType::Ready`].
    Ready {
        /// The importer's cursor when resuming (`aux` 1), `None` for a fresh import.
        cursor: Option<u64>,
    },
    /// See [`FrameType::Data`].
    Data {
        /// The cursor before the record (`seq`).
        before: u64,
        /// The cursor after the record (`aux`).
        after: u64,
        /// The record.
        payload: DataPayload<'a>,
    },
    /// See [`FrameType::Ack`].
    Ack {
        /// The cursor delivered through (`seq`).
        through: u64,
    },
    /// See [`FrameType::Resend`].
    Resend {
        /// The cursor to send again from (`seq`).
        from: u64,
    },
    /// See [`FrameType::RegionPart`].
    RegionPart {
        /// The version being sent (`seq`).
        version: u64,
        /// The base version, 0 for a full snapshot (`aux`).
        base: u64,
        /// Where and what to write.
        payload: RegionPartPayload<'a>,
    },
    /// See [`FrameType::RegionEnd`].
    RegionEnd {
        /// The version completed (`seq`).
        version: u64,
        /// The base version, 0 for a full snapshot (`aux`).
        base: u64,
        /// The region size, for a sanity check.
        payload: RegionEndPayload,
    },
    /// See [`FrameType::Ping`].
    Ping {
        /// The nonce to echo (`seq`).
        nonce: u64,
    },
    /// See [`FrameType::Pong`].
    Pong {
        /// The echoed nonce (`seq`).
        nonce: u64,
    },
    /// See [`FrameType::Close`].
    Close(Reason),
    /// See [`FrameType::Lifecycle`].
    Lifecycle {
        /// The stream cursor (`seq`).
        cursor: u64,
        /// Which end, and what became of it.
        payload: LifecyclePayload,
    },
}

impl<'a> Frame<'a> {
    /// Decodes the payload according to the frame's type.
    ///
    /// # Errors
    ///
    /// What the payload type's `decode` returns.
    pub fn body(&self) -> Result<Body<'a>, WireError> {
        let Header { kind, seq, aux, .. } = self.header;
        let p = self.payload;
        Ok(match kind {
            FrameType::Hello => Body::Hello(Hello::decode(p)?),
            FrameType::Offer => Body::Offer(Offer::decode(p)?),
            FrameType::Refuse => Body::Refuse(Reason::decode(p)?),
            FrameType::Ready => Body::Ready {
                cursor: (aux == 1).then_some(seq),
            },
            FrameType::Data => Body::Data {
                before: seq,
                after: aux,
                payload: DataPayload::decode(p)?,
            },
            FrameType::Ack => Body::Ack { through: seq },
            FrameType::Resend => Body::Resend { from: seq },
            FrameType::RegionPart => Body::RegionPart {
                version: seq,
                base: aux,
                payload: RegionPartPayload::decode(p)?,
            },
            FrameType::RegionEnd => Body::RegionEnd {
                version: seq,
                base: aux,
                payload: RegionEndPayload::decode(p)?,
            },
            FrameType::Ping => Body::Ping { nonce: seq },
            FrameType::Pong => Body::Pong { nonce: seq },
            FrameType::Close => Body::Close(Reason::decode(p)?),
            FrameType::Lifecycle => Body::Lifecycle {
                cursor: seq,
                payload: LifecyclePayload::decode(p)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameType, stream: u32, seq: u64, aux: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, kind, stream, seq, aux, payload).unwrap();
        out
    }

    /// Rewrites the checksum after a test edited the header, so the header rule is what fails.
    fn reseal(f: &mut [u8]) {
        let n = f.len() - TRAILER_LEN;
        let crc = crc32fast::hash(&f[..n]);
        f[n..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn layout_is_as_documented() {
        let f = frame(FrameType::Data, 0x0102_0304, 5, 6, &[9, 9]);
        assert_eq!(&f[0..4], b"SHMB");
        assert_eq!(f[4], 5);
        assert_eq!(&f[5..8], &[0, 0, 0]);
        assert_eq!(&f[8..12], &[4, 3, 2, 1]);
        assert_eq!(&f[12..16], &[2, 0, 0, 0]);
        assert_eq!(&f[16..24], &5u64.to_le_bytes());
        assert_eq!(&f[24..32], &6u64.to_le_bytes());
        assert_eq!(&f[32..34], &[9, 9]);
        assert_eq!(&f[34..], &crc32fast::hash(&f[..34]).to_le_bytes());
        assert_eq!(f.len(), HEADER_LEN + 2 + TRAILER_LEN);
    }

    #[test]
    fn header_rules_are_enforced_on_decode() {
        let base = frame(FrameType::Ack, 1, 0, 0, &[]);
        type Case = (usize, u8, fn(&WireError) -> bool);
        let cases: [Case; 6] = [
            (0, 0x00, |e| matches!(e, WireError::BadMagic { .. })),
            (4, 0x00, |e| matches!(e, WireError::UnknownType(0))),
            (4, 14, |e| matches!(e, WireError::UnknownType(14))),
            (5, 0x01, |e| matches!(e, WireError::BadFlags(1))),
            (6, 0x01, |e| matches!(e, WireError::BadReserved(1))),
            (4, FrameType::Ping.code(), |e| {
                matches!(e, WireError::WrongStream { .. })
            }),
        ];
        for (at, value, check) in cases {
            let mut f = base.clone();
            f[at] = value;
            reseal(&mut f);
            let err = decode(&f).unwrap_err();
            assert!(check(&err), "byte {at} = {value}: {err}");
            assert_eq!(decode_header(&f).unwrap_err(), err);
        }
    }

    #[test]
    fn lengths_are_checked() {
        let mut f = frame(FrameType::Close, 0, 0, 0, &Reason::new("x").encode());
        f[12..16].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(matches!(
            decode_header(&f),
            Err(WireError::TooLong { len, .. }) if len == u64::from(MAX_PAYLOAD) + 1
        ));
        let f = frame(FrameType::Ack, 2, 0, 0, &[]);
        let mut longer = f.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(WireError::LengthMismatch {
                expected: 36,
                found: 37
            })
        ));
        assert!(matches!(
            decode(&f[..35]),
            Err(WireError::Truncated { need: 36, have: 35 })
        ));
        assert!(matches!(
            decode_header(&f[..31]),
            Err(WireError::Truncated { need: 32, have: 31 })
        ));
    }

    #[test]
    fn encode_refuses_what_decode_would_reject() {
        let mut out = Vec::new();
        let e = encode(&mut out, FrameType::Ack, 1, 0, 0, &[1]).unwrap_err();
        assert!(matches!(e, WireError::UnexpectedPayload { .. }));
        let e = encode(&mut out, FrameType::Data, 0, 0, 0, &[0; 4]).unwrap_err();
        assert!(matches!(e, WireError::WrongStream { .. }));
        let e = encode(&mut out, FrameType::Hello, 3, 0, 0, &[]).unwrap_err();
        assert!(matches!(e, WireError::WrongStream { .. }));
        let e = encode(&mut out, FrameType::Ready, 3, 0, 2, &[]).unwrap_err();
        assert!(matches!(e, WireError::BadValue { .. }));
        let big = vec![0u8; MAX_RECORD + 1];
        let e = encode_data(&mut out, 1, 0, 0, 0, &big).unwrap_err();
        assert!(matches!(e, WireError::TooLong { .. }));
        assert!(out.is_empty(), "a refused frame appends nothing");
        encode_data(&mut out, 1, 0, 0, 0, &big[..MAX_RECORD]).unwrap();
        assert_eq!(decode(&out).unwrap().payload.len(), MAX_PAYLOAD as usize);
    }

    #[test]
    fn hello_rejects_bad_imports() {
        let import = |stream, cursor| ImportReq {
            stream,
            name: "n".into(),
            cursor,
        };
        let mut hello = Hello {
            version: PROTOCOL_VERSION,
            name: "b".into(),
            imports: vec![import(1, None), import(1, Some(3))],
        };
        assert_eq!(
            hello.encode(),
            Err(WireError::BadImportStream { stream: 1 })
        );
        hello.imports[0].stream = 0;
        assert_eq!(
            hello.encode(),
            Err(WireError::BadImportStream { stream: 0 })
        );
        hello.imports = (1..=MAX_IMPORTS as u32 + 1)
            .map(|s| import(s, None))
            .collect();
        assert!(matches!(
            hello.encode(),
            Err(WireError::TooManyImports { count: 4097 })
        ));
        hello.imports.pop();
        let mut bytes = hello.encode().unwrap();
        assert_eq!(Hello::decode(&bytes).unwrap(), hello);
        // The count field claims one more import than MAX_IMPORTS.
        let count_at = 2 + 2 + hello.name.len();
        bytes[count_at..count_at + 2].copy_from_slice(&(MAX_IMPORTS as u16 + 1).to_le_bytes());
        assert!(matches!(
            Hello::decode(&bytes),
            Err(WireError::TooManyImports { .. })
        ));
        // A count of 65535 with no imports behind it fails on the bytes, allocating little.
        let mut lie = vec![];
        lie.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        lie.extend_from_slice(&0u16.to_le_bytes());
        lie.extend_from_slice(&4096u16.to_le_bytes());
        assert!(matches!(
            Hello::decode(&lie),
            Err(WireError::ShortPayload { .. })
        ));
    }

    #[test]
    fn hello_canonical_cursor_and_version() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            name: String::new(),
            imports: vec![ImportReq {
                stream: 9,
                name: "x".into(),
                cursor: None,
            }],
        };
        let good = hello.encode().unwrap();
        let has_cursor_at = good.len() - 9;
        let mut bad = good.clone();
        bad[has_cursor_at] = 2;
        assert!(matches!(
            Hello::decode(&bad),
            Err(WireError::BadValue { value: 2, .. })
        ));
        let mut bad = good.clone();
        bad[has_cursor_at + 1] = 7; // a cursor without has_cursor
        assert!(matches!(
            Hello::decode(&bad),
            Err(WireError::BadValue { value: 7, .. })
        ));
        for old_or_new in [1, PROTOCOL_VERSION + 1] {
            let mut bad = good.clone();
            bad[..2].copy_from_slice(&old_or_new.to_le_bytes());
            let err = Hello::decode(&bad).unwrap_err();
            assert_eq!(err, WireError::UnsupportedVersion { found: old_or_new });
            // The message names both versions.
            let text = err.to_string();
            assert!(text.contains(&format!("version {old_or_new}")), "{text}");
            assert!(
                text.contains(&format!("speaks {PROTOCOL_VERSION}")),
                "{text}"
            );
        }
        let mut bad = good.clone();
        bad.push(0);
        assert!(matches!(
            Hello::decode(&bad),
            Err(WireError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn strings_are_checked() {
        let mut bad = vec![2, 0, 0xff, 0xfe];
        assert!(matches!(
            Reason::decode(&bad),
            Err(WireError::BadString { .. })
        ));
        bad[0] = 3;
        assert!(matches!(
            Reason::decode(&bad),
            Err(WireError::ShortPayload {
                need: 3,
                have: 2,
                ..
            })
        ));
        let long = "é".repeat(40_000); // 80 000 bytes, 2 per char
        let enc = Reason::new(long).encode();
        let dec = Reason::decode(&enc).unwrap();
        assert_eq!(dec.text.len(), MAX_STR - 1, "cut at a char boundary");
        let offer = Offer {
            kind: OfferKind::Region,
            capacity: 0,
            fingerprint: [0; 4],
            schema: "s".repeat(MAX_STR + 1),
            history: 0,
            buffers: 0,
            chunk_size: 0,
        };
        assert!(matches!(
            offer.encode(),
            Err(WireError::StringTooLong { .. })
        ));
    }

    #[test]
    fn offer_kinds_and_policies() {
        let mut offer = Offer {
            kind: OfferKind::Broadcast(BroadcastPolicy::Lap),
            capacity: 1,
            fingerprint: [1, 2, 3, 4],
            schema: "t".into(),
            history: 8,
            buffers: 0,
            chunk_size: 0,
        };
        let enc = offer.encode().unwrap();
        assert_eq!((enc[0], enc[1 + 8 + 32 + 3]), (4, 1));
        for kind in [
            OfferKind::Spsc,
            OfferKind::Region,
            OfferKind::Broadcast(BroadcastPolicy::Block),
        ] {
            offer.kind = kind;
            assert_eq!(Offer::decode(&offer.encode().unwrap()).unwrap(), offer);
        }
        let policy_at = 1 + 8 + 32 + 3;
        let mut bad = offer.encode().unwrap();
        bad[policy_at] = 2;
        assert!(matches!(
            Offer::decode(&bad),
            Err(WireError::BadValue { value: 2, .. })
        ));
        offer.kind = OfferKind::Spsc;
        let mut bad = offer.encode().unwrap();
        bad[policy_at] = 1;
        assert!(matches!(
            Offer::decode(&bad),
            Err(WireError::BadValue { value: 1, .. })
        ));
        bad[policy_at] = 0;
        bad[0] = 3; // mpsc rings are not offered
        assert!(matches!(
            Offer::decode(&bad),
            Err(WireError::BadValue { value: 3, .. })
        ));
    }

    #[test]
    fn lifecycle_frames_are_checked() {
        let report = LifecyclePayload {
            end: RingEnd::Reader,
            attached: false,
            report: 9,
        };
        let enc = report.encode();
        assert_eq!(enc, [1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        let f = frame(FrameType::Lifecycle, 3, 4096, 0, &enc);
        assert_eq!(
            decode(&f).unwrap().body().unwrap(),
            Body::Lifecycle {
                cursor: 4096,
                payload: report
            }
        );
        type Case = (usize, u8, &'static str);
        let cases: [Case; 4] = [
            (0, 2, "lifecycle end"),
            (1, 2, "lifecycle attached"),
            (1, 0xff, "lifecycle attached"),
            (2, 0, "lifecycle report"),
        ];
        for (at, value, field) in cases {
            let mut bad = enc.clone();
            bad[at] = value;
            match LifecyclePayload::decode(&bad) {
                Err(WireError::BadValue { field: f, .. }) => assert_eq!(f, field),
                other => panic!("byte {at} = {value}: {other:?}"),
            }
        }
        let mut long = enc.clone();
        long.push(0);
        assert!(matches!(
            LifecyclePayload::decode(&long),
            Err(WireError::TrailingBytes { extra: 1, .. })
        ));
        for len in 0..enc.len() {
            assert!(matches!(
                LifecyclePayload::decode(&enc[..len]),
                Err(WireError::ShortPayload { .. })
            ));
        }
        // The header rules: a stream frame, aux 0.
        let mut out = Vec::new();
        let e = encode(&mut out, FrameType::Lifecycle, 0, 0, 0, &enc).unwrap_err();
        assert!(matches!(e, WireError::WrongStream { .. }));
        let e = encode(&mut out, FrameType::Lifecycle, 1, 0, 1, &enc).unwrap_err();
        assert!(matches!(e, WireError::BadValue { value: 1, .. }));
        let mut f = frame(FrameType::Lifecycle, 3, 0, 0, &enc);
        f[24] = 1;
        reseal(&mut f);
        assert!(matches!(decode(&f), Err(WireError::BadValue { .. })));
    }

    #[test]
    fn body_reads_header_fields() {
        let f = frame(FrameType::Ready, 4, 77, 1, &[]);
        let body = decode(&f).unwrap().body().unwrap();
        assert_eq!(body, Body::Ready { cursor: Some(77) });
        let f = frame(FrameType::Ready, 4, 0, 0, &[]);
        let body = decode(&f).unwrap().body().unwrap();
        assert_eq!(body, Body::Ready { cursor: None });
        let mut out = Vec::new();
        encode_region_part(&mut out, 2, 10, 9, 4096, b"abc").unwrap();
        let body = decode(&out).unwrap().body().unwrap();
        assert_eq!(
            body,
            Body::RegionPart {
                version: 10,
                base: 9,
                payload: RegionPartPayload {
                    offset: 4096,
                    bytes: b"abc"
                }
            }
        );
        let f = frame(FrameType::RegionEnd, 2, 10, 9, &[1; 7]);
        assert!(matches!(
            decode(&f).unwrap().body(),
            Err(WireError::ShortPayload { .. })
        ));
    }
}
