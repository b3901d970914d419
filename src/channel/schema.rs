//! The schema of a channel's message type: what the segment header records so that both ends
//! agree on the bytes before any message passes.
//!
//! The fingerprint covers the type's name, the size and alignment of its archived form, the
//! rkyv format (endianness, relative pointer width, aligned or unaligned primitives) and a user
//! version. Two ends with the same fingerprint read each other's archives; any difference is
//! refused at open. The fingerprint does not see the fields themselves: change the version when
//! you change a type's fields without renaming it (bytecheck validation still catches most such
//! mistakes at run time, as errors).

use std::any::type_name;
use std::fmt;
use std::mem::{align_of, size_of};
use std::sync::OnceLock;

use rkyv::Archive;

/// The rkyv wire format this build uses, read off rkyv itself (its cargo features decide it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Archived primitives are little-endian.
    pub little_endian: bool,
    /// Width in bits of archived `usize` and relative pointers (16, 32 or 64).
    pub pointer_width: u32,
    /// Archived primitives have their natural alignment (rkyv's default), not 1.
    pub aligned: bool,
}

impl Format {
    /// The format of this build.
    pub fn current() -> Format {
        static FORMAT: OnceLock<Format> = OnceLock::new();
        *FORMAT.get_or_init(|| {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&0x0102_0304_u32)
                .map(|b| b.as_slice().first().copied())
                .ok()
                .flatten();
            Format {
                little_endian: bytes == Some(0x04),
                pointer_width: 8 * size_of::<rkyv::Archived<usize>>() as u32,
                aligned: align_of::<rkyv::Archived<u32>>() == 4,
            }
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rkyv 0.8 {}/{}-bit/{}",
            if self.little_endian { "le" } else { "be" },
            self.pointer_width,
            if self.aligned { "aligned" } else { "unaligned" }
        )
    }
}

/// The schema of a message type `T`, as the channel header records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// The type's name: `std::any::type_name::<T>()` unless set with
    /// [`ChannelBuilder::type_name`](super::ChannelBuilder::type_name).
    pub type_name: String,
    /// The user version ([`ChannelBuilder::version`](super::ChannelBuilder::version), 0 by
    /// default).
    pub version: u32,
    /// `size_of::<Archived<T>>()`.
    pub archived_size: usize,
    /// `align_of::<Archived<T>>()`.
    pub archived_align: usize,
    /// The rkyv format.
    pub format: Format,
}

impl Schema {
    /// The schema of `T` under its own type name and version 0.
    pub fn of<T: Archive>() -> Schema {
        Schema {
            type_name: type_name::<T>().to_owned(),
            version: 0,
            archived_size: size_of::<T::Archived>(),
            archived_align: align_of::<T::Archived>(),
            format: Format::current(),
        }
    }

    /// The description stored in the header and shown in errors and by tools.
    pub fn description(&self) -> String {
        self.to_string()
    }

    /// The 256-bit fingerprint: four FNV-1a hashes (different offset bases) of the
    /// description. An equality check between cooperating processes, not a cryptographic
    /// hash.
    pub fn fingerprint(&self) -> [u64; 4] {
        let text = self.description();
        std::array::from_fn(|i| fnv1a(FNV_OFFSET ^ (i as u64 + 1).wrapping_mul(SPREAD), &text))
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{} (archived {} B, align {}, {})",
            self.type_name, self.version, self.archived_size, self.archived_align, self.format
        )
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

fn fnv1a(basis: u64, text: &str) -> u64 {
    text.bytes()
        .fold(basis, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct A {
        _x: u32,
    }

    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct B {
        _x: u64,
    }

    #[test]
    fn the_format_of_this_build_is_rkyvs_default() {
        let f = Format::current();
        assert_eq!(
            (f.little_endian, f.pointer_width, f.aligned),
            (true, 32, true)
        );
        assert_eq!(f.to_string(), "rkyv 0.8 le/32-bit/aligned");
    }

    #[test]
    fn fingerprints_differ_by_name_version_and_layout() {
        let a = Schema::of::<A>();
        assert_eq!(a.fingerprint(), Schema::of::<A>().fingerprint());
        assert_ne!(a.fingerprint(), Schema::of::<B>().fingerprint());
        let v1 = Schema {
            version: 1,
            ..a.clone()
        };
        assert_ne!(a.fingerprint(), v1.fingerprint());
        let renamed = Schema {
            type_name: "other::A".into(),
            ..a.clone()
        };
        assert_ne!(a.fingerprint(), renamed.fingerprint());
        let words = a.fingerprint();
        assert!(words.iter().all(|&w| w != 0) && words[0] != words[1]);
        assert!(a
            .description()
            .contains("::A v0 (archived 4 B, align 4, rkyv 0.8"));
    }
}
