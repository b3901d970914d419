//! The records of a world ring, and their checked decoding: the bytes another process wrote.
//!
//! Each record of a ring from one rank to another has a kind (the ring's record kind) and a
//! payload:
//!
//! | kind | payload |
//! |---|---|
//! | [`KIND_WHOLE`] | envelope (16 bytes: tag u32, reserved u32, total length u64, little-endian), then the whole message (`total` bytes) |
//! | [`KIND_FIRST`] | envelope, then the first fragment of a message of `total` bytes (fewer than `total`) |
//! | [`KIND_MORE`] | the next fragment of the message started by the last `KIND_FIRST` |
//! | [`KIND_FIN`] | nothing: the sender left the world in order |
//! | [`KIND_ABORT`] | envelope whose length field is the rank whose death broke a collective |
//!
//! [`decode`] checks one record and [`Assembly`] puts fragments together; neither trusts a
//! length it read (no allocation larger than the bytes received, no index outside the record)
//! and neither panics. Property tests and the fuzz target `world_frames` hold them to that.

use rkyv::util::AlignedVec;

/// Bytes of the envelope in front of a message's payload: tag (u32), reserved (u32), total
/// length (u64), little-endian. A multiple of 16, so an archive after it stays aligned.
pub const ENVELOPE: usize = 16;
/// A whole message in one record.
pub const KIND_WHOLE: u32 = 0x574c_0001;
/// The first record of a message in fragments.
pub const KIND_FIRST: u32 = 0x574c_0002;
/// A further fragment.
pub const KIND_MORE: u32 = 0x574c_0003;
/// The last record a rank writes to each ring when it leaves the world in order.
pub const KIND_FIN: u32 = 0x574c_0004;
/// A collective failed on the sender because a rank died: the envelope's length field names
/// that rank. Makes every rank's collectives fail, not only those of the dead rank's partners.
pub const KIND_ABORT: u32 = 0x574c_0005;

/// The envelope of a message with `tag` and `total` bytes.
pub fn envelope(tag: u32, total: u64) -> [u8; ENVELOPE] {
    let mut e = [0u8; ENVELOPE];
    e[..4].copy_from_slice(&tag.to_le_bytes());
    e[8..].copy_from_slice(&total.to_le_bytes());
    e
}

/// One record, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole message.
    Whole {
        /// Its tag.
        tag: u32,
        /// Its bytes.
        body: &'a [u8],
    },
    /// The first fragment of a message of `total` bytes.
    First {
        /// Its tag.
        tag: u32,
        /// The message's length.
        total: u64,
        /// The first fragment.
        body: &'a [u8],
    },
    /// A further fragment.
    More(&'a [u8]),
    /// The sender left in order.
    Fin,
    /// A collective broke on the sender: this rank is dead (as written: check it against the
    /// world size before use).
    Abort {
        /// The dead rank.
        dead: u64,
    },
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The record is shorter than the envelope its kind needs.
    #[error("a record of kind {kind:#x} has {len} bytes, fewer than the 16-byte envelope")]
    Short {
        /// The record kind.
        kind: u32,
        /// Its length.
        len: usize,
    },
    /// The payload's length disagrees with the length the envelope announces.
    #[error("a record of {body} payload bytes announces a message of {total}")]
    Length {
        /// Payload bytes in the record.
        body: usize,
        /// The announced length.
        total: u64,
    },
    /// A kind the world does not write, or not where it came.
    #[error("record kind {kind:#x} {context}")]
    Kind {
        /// The record kind.
        kind: u32,
        /// Where it came.
        context: &'static str,
    },
    /// Fragments add up to more than the message announced.
    #[error("fragments add up to {got} bytes, more than the {total} announced")]
    Overrun {
        /// Bytes so far.
        got: u64,
        /// The announced length.
        total: u64,
    },
}

fn read_envelope(kind: u32, bytes: &[u8]) -> Result<(u32, u64, &[u8]), FrameError> {
    let (head, body) = bytes.split_at_checked(ENVELOPE).ok_or(FrameError::Short {
        kind,
        len: bytes.len(),
    })?;
    let tag = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let mut total = [0u8; 8];
    total.copy_from_slice(&head[8..]);
    Ok((tag, u64::from_le_bytes(total), body))
}

/// Checks one record of kind `kind` with payload `bytes`.
///
/// # Errors
///
/// [`FrameError`] saying what is wrong; never panics.
pub fn decode(kind: u32, bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    match kind {
        KIND_WHOLE | KIND_FIRST => {
            let (tag, total, body) = read_envelope(kind, bytes)?;
            let whole = body.len() as u64 == total;
            if (kind == KIND_WHOLE) != whole || body.len() as u64 > total {
                return Err(FrameError::Length {
                    body: body.len(),
                    total,
                });
            }
            Ok(if kind == KIND_WHOLE {
                Frame::Whole { tag, body }
            } else {
                Frame::First { tag, total, body }
            })
        }
        KIND_MORE => Ok(Frame::More(bytes)),
        KIND_FIN if bytes.is_empty() => Ok(Frame::Fin),
        KIND_FIN => Err(FrameError::Length {
            body: bytes.len(),
            total: 0,
        }),
        KIND_ABORT => {
            let (_, dead, _) = read_envelope(kind, bytes)?;
            Ok(Frame::Abort { dead })
        }
        kind => Err(FrameError::Kind {
            kind,
            context: "is not a world record",
        }),
    }
}

/// A message in fragments being put together.
#[derive(Debug)]
pub struct Assembly {
    /// Its tag.
    pub tag: u32,
    /// Its announced length.
    pub total: u64,
    /// The bytes so far (grown as fragments come, never to more than received).
    pub bytes: AlignedVec,
}

/// What [`assemble`] made of a record.
#[derive(Debug)]
pub enum Assembled {
    /// A whole message: tag and bytes.
    Message(u32, AlignedVec),
    /// A fragment was added; the message is not complete yet.
    Partial,
    /// The sender left in order.
    Fin,
    /// A collective broke on the sender because this rank died (unchecked).
    Abort(u64),
}

/// Adds `frame` to the message being assembled in `partial` (the state of one ring).
///
/// # Errors
///
/// [`FrameError::Kind`] for a fragment without a first record or a new message inside one,
/// [`FrameError::Overrun`] for fragments longer than announced. After an error the state is
/// as it was.
pub fn assemble(partial: &mut Option<Assembly>, frame: Frame<'_>) -> Result<Assembled, FrameError> {
    match (frame, partial.as_mut()) {
        (Frame::More(body), Some(open)) => {
            let got = open.bytes.len() as u64 + body.len() as u64;
            if got > open.total {
                return Err(FrameError::Overrun {
                    got,
                    total: open.total,
                });
            }
            open.bytes.extend_from_slice(body);
            if got < open.total {
                return Ok(Assembled::Partial);
            }
            let done = partial.take().map(|a| (a.tag, a.bytes));
            Ok(done.map_or(Assembled::Partial, |(tag, bytes)| {
                Assembled::Message(tag, bytes)
            }))
        }
        (Frame::Whole { tag, body }, None) => {
            let mut bytes = AlignedVec::with_capacity(body.len());
            bytes.extend_from_slice(body);
            Ok(Assembled::Message(tag, bytes))
        }
        (Frame::First { tag, total, body }, None) => {
            let mut bytes = AlignedVec::with_capacity(body.len());
            bytes.extend_from_slice(body);
            *partial = Some(Assembly { tag, total, bytes });
            Ok(Assembled::Partial)
        }
        (Frame::Fin, None) => Ok(Assembled::Fin),
        // A message in fragments that an abort interrupts was a broken collective's.
        (Frame::Abort { dead }, _) => {
            *partial = None;
            Ok(Assembled::Abort(dead))
        }
        (Frame::More(_), None) => Err(FrameError::Kind {
            kind: KIND_MORE,
            context: "where a message should start",
        }),
        (_, Some(_)) => Err(FrameError::Kind {
            kind: KIND_FIRST,
            context: "inside a message in fragments",
        }),
    }
}

/// The records a sender writes for a message of `data` with `tag`, cut into fragments of at
/// most `fragment` bytes (a multiple of 64): for tests and tools; the world writes the same
/// straight into ring claims.
pub fn records(tag: u32, data: &[u8], fragment: usize) -> Vec<(u32, Vec<u8>)> {
    let fragment = fragment.max(64);
    let env = envelope(tag, data.len() as u64);
    if data.len() <= fragment {
        return vec![(KIND_WHOLE, [&env[..], data].concat())];
    }
    let mut out = vec![(KIND_FIRST, [&env[..], &data[..fragment]].concat())];
    out.extend(
        data[fragment..]
            .chunks(fragment)
            .map(|chunk| (KIND_MORE, chunk.to_vec())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds records through `decode` and `assemble`; the messages, or the first error.
    fn replay(records: &[(u32, Vec<u8>)]) -> Result<Vec<(u32, Vec<u8>)>, FrameError> {
        let mut partial = None;
        let mut out = Vec::new();
        for (kind, bytes) in records {
            if let Assembled::Message(tag, bytes) = assemble(&mut partial, decode(*kind, bytes)?)? {
                out.push((tag, bytes.to_vec()));
            }
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn messages_survive_framing(
            messages in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..700)), 0..8),
            fragment in 64usize..300,
        ) {
            let fragment = fragment / 64 * 64;
            let records: Vec<_> = messages
                .iter()
                .flat_map(|(tag, data)| records(*tag, data, fragment))
                .collect();
            prop_assert_eq!(replay(&records).unwrap(), messages);
        }

        #[test]
        fn any_records_are_decoded_or_refused_without_panic(
            records in prop::collection::vec(
                (prop::sample::select(vec![KIND_WHOLE, KIND_FIRST, KIND_MORE, KIND_FIN, KIND_ABORT, 0, 7]),
                 prop::collection::vec(any::<u8>(), 0..64)),
                0..16),
        ) {
            let mut partial = None;
            for (kind, bytes) in &records {
                if let Ok(frame) = decode(*kind, bytes) {
                    if let Ok(Assembled::Message(_, bytes)) = assemble(&mut partial, frame) {
                        prop_assert!(bytes.len() <= 64 * records.len());
                    }
                }
                if let Some(open) = &partial {
                    prop_assert!(open.bytes.len() as u64 <= open.total);
                }
            }
        }

        #[test]
        fn a_damaged_length_is_refused(tag in any::<u32>(), data in prop::collection::vec(any::<u8>(), 0..200), delta in 1u64..1000) {
            let mut record = records(tag, &data, 4096).remove(0);
            let total = data.len() as u64 + delta;
            record.1[8..16].copy_from_slice(&total.to_le_bytes());
            prop_assert!(decode(record.0, &record.1).is_err());
        }
    }

    #[test]
    fn out_of_place_records_are_errors() {
        assert!(replay(&[(KIND_MORE, vec![1, 2])]).is_err());
        let first = records(1, &[0u8; 200], 64);
        assert!(replay(&[first[0].clone(), first[0].clone()]).is_err());
        let mut long = first.clone();
        long[1].1.extend_from_slice(&[0u8; 300]);
        assert!(matches!(replay(&long), Err(FrameError::Overrun { .. })));
        assert!(replay(&[(KIND_FIN, vec![1])]).is_err());
        assert!(replay(&[(KIND_WHOLE, vec![0; 15])]).is_err());
        assert!(replay(&[(0x1234, vec![])]).is_err());
    }

    #[test]
    fn an_abort_ends_a_message_in_fragments() {
        let mut partial = None;
        let recs = records(5, &[9u8; 300], 64);
        assemble(&mut partial, decode(recs[0].0, &recs[0].1).unwrap()).unwrap();
        let abort = envelope(0, 3);
        match assemble(&mut partial, decode(KIND_ABORT, &abort).unwrap()).unwrap() {
            Assembled::Abort(3) => {}
            other => panic!("{other:?}"),
        }
        assert!(partial.is_none());
    }
}
