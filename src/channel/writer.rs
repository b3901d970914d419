//! rkyv writers over claimed ring space: one that writes into a slice and notes when it runs
//! out of room, and one that only counts (to learn a message's exact size).

use rkyv::rancor::{fail, Fallible, Source};
use rkyv::ser::{Positional, Writer};

/// Writes an archive into a fixed slice (the payload of a ring claim). Running out of room is
/// an error that the sender tells from others by [`SliceWriter::overflowed`].
#[derive(Debug)]
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflowed: bool,
}

impl<'a> SliceWriter<'a> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter {
            buf,
            pos: 0,
            overflowed: false,
        }
    }

    /// Whether a write did not fit.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

/// The archive did not fit the space claimed for it.
#[derive(Debug, thiserror::Error)]
#[error("the archive does not fit the {room} bytes claimed for it")]
pub struct Overflow {
    room: usize,
}

impl Fallible for SliceWriter<'_> {
    type Error = rkyv::rancor::Error;
}

impl Positional for SliceWriter<'_> {
    #[inline]
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: Source> Writer<E> for SliceWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
                Ok(())
            }
            None => {
                self.overflowed = true;
                fail!(Overflow {
                    room: self.buf.len()
                })
            }
        }
    }
}

/// Counts the bytes an archive takes without storing them.
#[derive(Debug, Default)]
pub struct CountingWriter {
    pos: usize,
}

impl Positional for CountingWriter {
    #[inline]
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E> Writer<E> for CountingWriter {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.pos += bytes.len();
        Ok(())
    }
}
