//! The importing bridge's delivery state: how far a mirrored stream got, kept in shared memory
//! next to the local copy so that it survives a restart of the bridge (SIGKILL included).
//!
//! The cursor (how far the far side's records or versions were delivered) must change together
//! with the local copy, or a restart would lose or repeat records. Shared memory offers no
//! transaction over two segments, so the bridge writes its *intent* first, then publishes:
//! before it makes a batch of records (or a region version) visible it stores
//! `{cursor_before, cursor_after, local_before, local_after}`, where `local` is the local
//! copy's position (a ring's producer position, a region's version). The ring publishes a
//! whole batch with one store, so after a crash the local copy is at exactly `local_before`
//! (nothing published: the cursor is `cursor_before`) or `local_after` (all of it: the
//! cursor is `cursor_after`). Anything else means something other than this bridge wrote the
//! copy, and the stream is refused rather than guessed at.
//!
//! The state lives in a small region segment named `<local name>.bridge-state`, which
//! persists (its name is kept when the bridge exits) until removed with `shmesh gc` or by hand.
//!
//! It also says whether the bridge detached from an SPSC copy because the source ring's
//! writer is gone ([`StateStore::record_writer_gone`]): a restarted bridge then stays detached
//! (the copy's readers keep seeing their writer gone) until the exporter reports a writer
//! again.
//!
//! Layout (64 bytes, little-endian u64 words): magic, layout (1), `cursor_before`,
//! `cursor_after`, `local_before`, `local_after`, flags (bit 0: writer gone; 0 in states
//! written before the flag existed), reserved (0).

use shmesh_ring::region::Writer;
use shmesh_ring::{Segment, SegmentBuilder, SegmentKind, ShmRegion};

const MAGIC: u64 = u64::from_le_bytes(*b"SHMBSTAT");
const LAYOUT: u64 = 1;
const SIZE: usize = 64;
/// Flags word bit: the copy's producer was detached because the source's writer is gone,
/// after everything through `cursor_after` was delivered.
const WRITER_GONE: u64 = 1;

/// Why the delivery state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state segment cannot be created, opened or written.
    #[error("delivery state '{name}': {message}")]
    Segment {
        /// The state segment's name.
        name: String,
        /// What failed.
        message: String,
    },
    /// The local copy is not where the state says this bridge left it.
    #[error(
        "the local copy '{local}' is at position {found}, but this bridge left it at \
         {before} or {after}: something else wrote it, or it was recreated. Remove '{local}' and \
         '{local}.bridge-state' (shmesh gc, or by hand) to mirror it afresh"
    )]
    Inconsistent {
        /// The local copy's name.
        local: String,
        /// Its position now.
        found: u64,
        /// Where it was before the last publication.
        before: u64,
        /// Where it was after it.
        after: u64,
    },
    /// The state segment holds something else.
    #[error(
        "delivery state '{name}' is not a shmesh-bridge state (bad magic or layout): remove it"
    )]
    Foreign {
        /// The state segment's name.
        name: String,
    },
}

/// What the bridge is about to publish (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent {
    /// The cursor before the publication.
    pub cursor_before: u64,
    /// The cursor once it is published.
    pub cursor_after: u64,
    /// The local copy's position before.
    pub local_before: u64,
    /// The local copy's position after.
    pub local_after: u64,
}

/// What the delivery state holds (see [`StateStore::saved`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// The last publication's intent.
    pub intent: Intent,
    /// The bridge detached from the copy because the source's writer is gone: nothing was
    /// published since, and `intent.cursor_after` is where delivery stands.
    pub writer_gone: bool,
}

/// The delivery state of one imported stream.
pub struct StateStore {
    name: String,
    segment: Segment,
    writer: Writer<ShmRegion>,
    scratch: [u8; SIZE],
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("name", &self.name)
            .finish()
    }
}

impl StateStore {
    /// The name of the state segment of the local copy `local`.
    pub fn segment_name(local: &str) -> String {
        format!("{local}.bridge-state")
    }

    /// Opens (or creates) the state of the local copy `local`.
    ///
    /// # Errors
    ///
    /// [`StateError::Segment`] when the segment cannot be made or attached (another live
    /// bridge imports the same copy: its writer is busy).
    pub fn open(local: &str) -> Result<Self, StateError> {
        let name = Self::segment_name(local);
        let fail = |message: String| StateError::Segment {
            name: name.clone(),
            message,
        };
        let builder = SegmentBuilder::new(&name)
            .kind(SegmentKind::Region)
            .capacity(SIZE as u64)
            .buffers(2)
            .chunk_size(SIZE)
            .history(2)
            .persist(true);
        let segment = match builder.open() {
            Ok(segment) => segment,
            Err(shmesh_ring::SegmentError::NotFound { .. }) => match builder.create() {
                Ok(segment) => segment,
                Err(shmesh_ring::SegmentError::AlreadyExists { .. }) => {
                    builder.open().map_err(|e| fail(e.to_string()))?
                }
                Err(e) => return Err(fail(e.to_string())),
            },
            Err(e) => return Err(fail(e.to_string())),
        };
        let writer = segment.region_writer().map_err(|e| fail(e.to_string()))?;
        Ok(StateStore {
            name,
            segment,
            writer,
            scratch: [0; SIZE],
        })
    }

    /// What the state holds: `None` for a stream never delivered before.
    ///
    /// # Errors
    ///
    /// [`StateError::Foreign`], `Segment`.
    pub fn saved(&self) -> Result<Option<Saved>, StateError> {
        let reader = self
            .segment
            .region_reader()
            .map_err(|e| StateError::Segment {
                name: self.name.clone(),
                message: e.to_string(),
            })?;
        let mut bytes = [0u8; SIZE];
        let version = reader
            .read_into(&mut bytes)
            .map_err(|e| StateError::Segment {
                name: self.name.clone(),
                message: e.to_string(),
            })?;
        if version == 0 {
            return Ok(None);
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8"));
        if word(0) != MAGIC || word(1) != LAYOUT || word(6) & !WRITER_GONE != 0 {
            return Err(StateError::Foreign {
                name: self.name.clone(),
            });
        }
        Ok(Some(Saved {
            intent: Intent {
                cursor_before: word(2),
                cursor_after: word(3),
                local_before: word(4),
                local_after: word(5),
            },
            writer_gone: word(6) & WRITER_GONE != 0,
        }))
    }

    /// The cursor to resume from, given where the local copy is now: `None` for a stream never
    /// delivered before.
    ///
    /// # Errors
    ///
    /// [`StateError::Inconsistent`] (see the module docs), `Foreign`, `Segment`.
    pub fn recover(&self, local: &str, local_now: u64) -> Result<Option<u64>, StateError> {
        let Some(Saved { intent, .. }) = self.saved()? else {
            return Ok(None);
        };
        if local_now == intent.local_after {
            Ok(Some(intent.cursor_after))
        } else if local_now == intent.local_before {
            Ok(Some(intent.cursor_before))
        } else {
            Err(StateError::Inconsistent {
                local: local.to_owned(),
                found: local_now,
                before: intent.local_before,
                after: intent.local_after,
            })
        }
    }

    /// Records what is about to be published. Call it before publishing, every time. Clears
    /// the writer-gone mark.
    pub fn record(&mut self, intent: Intent) {
        self.write(intent, 0);
    }

    /// Records that the bridge detaches from the copy because the source's writer is gone,
    /// with everything through `cursor` delivered and the copy at `local` (its producer's
    /// position). Call it before dropping the producer.
    pub fn record_writer_gone(&mut self, cursor: u64, local: u64) {
        let intent = Intent {
            cursor_before: cursor,
            cursor_after: cursor,
            local_before: local,
            local_after: local,
        };
        self.write(intent, WRITER_GONE);
    }

    fn write(&mut self, intent: Intent, flags: u64) {
        let words = [
            MAGIC,
            LAYOUT,
            intent.cursor_before,
            intent.cursor_after,
            intent.local_before,
            intent.local_after,
            flags,
            0,
        ];
        for (i, w) in words.iter().enumerate() {
            self.scratch[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let mut scope = self.writer.write();
        scope.write_at(0, &self.scratch);
        scope.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_gone_mark_is_kept_and_cleared() {
        let local = format!("bridge-state-test.{}", std::process::id());
        let _ = Segment::remove(&StateStore::segment_name(&local));
        let mut store = StateStore::open(&local).unwrap();
        assert_eq!(store.saved().unwrap(), None);
        let intent = Intent {
            cursor_before: 16,
            cursor_after: 64,
            local_before: 32,
            local_after: 96,
        };
        store.record(intent);
        assert_eq!(
            store.saved().unwrap(),
            Some(Saved {
                intent,
                writer_gone: false
            })
        );
        store.record_writer_gone(64, 96);
        // A restarted bridge reads it back.
        drop(store);
        let mut store = StateStore::open(&local).unwrap();
        let saved = store.saved().unwrap().unwrap();
        assert!(saved.writer_gone);
        assert_eq!(
            (saved.intent.cursor_before, saved.intent.cursor_after),
            (64, 64)
        );
        assert_eq!(store.recover(&local, 96).unwrap(), Some(64));
        assert!(matches!(
            store.recover(&local, 112),
            Err(StateError::Inconsistent { found: 112, .. })
        ));
        // The next publication clears it.
        store.record(Intent {
            cursor_before: 64,
            cursor_after: 80,
            local_before: 96,
            local_after: 128,
        });
        assert!(!store.saved().unwrap().unwrap().writer_gone);
        drop(store);
        Segment::remove(&StateStore::segment_name(&local)).unwrap();
    }
}
