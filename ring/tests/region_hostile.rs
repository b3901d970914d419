//! Property test: whatever a hostile process stores into a region's shared words (`latest`,
//! the buffers' version words, the futex word and the parked flag, the change history's tags
//! and bitmaps, the buffers' bytes), interleaved with the writer's scopes (published, aborted,
//! or lost with the writer, which another then takes over) and the readers' calls, nothing
//! panics or hangs: a snapshot has the region's length or is refused as corruption, a single
//! attempt (`try_read_with`) returns the region or nothing, `changes_since` and
//! `read_changes` return a listing or an error, a takeover is refused or continues.
//!
//! A hostile `latest` whose buffer never says that version makes `read_with` (and so
//! `snapshot`, `read_into`, `read_changes`) retry until it gives up with a corruption error
//! after 65536 attempts at the same `latest`. That costs milliseconds natively and minutes
//! under miri, so under miri the session only takes snapshots with `try_read_with` and calls
//! `read_changes` only when `latest`'s buffer says `latest`. `wait_for` is only called with a
//! zero timeout.
//!
//! The session is shared with the fuzz target (`fuzz/fuzz_targets/region_reader.rs`, which
//! includes this file as a module): everything outside `mod tests` builds without proptest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shmesh_ring::layout::{MAX_REGION_BUFFERS, REGION_WRITING};
use shmesh_ring::region::{ChangesError, HeapRegion, Reader, RegionMemory, Writer};

/// The session's input, read a byte at a time (zeros once it runs out).
struct Bytes<'a>(std::slice::Iter<'a, u8>);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }

    /// A version-like value: near `around` most of the time, else an edge or anything.
    fn version(&mut self, around: u64) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            // u64::MAX is also REGION_WRITING.
            1 => u64::MAX - u64::from(self.u8() % 2),
            2 => self.u64(),
            k => around
                .wrapping_add(u64::from(self.u8() % 8))
                .wrapping_sub(u64::from(k)),
        }
    }
}

/// The region's shape from the first bytes: small, all parameters in range.
pub fn shape(b: &mut impl FnMut() -> u8) -> (u64, usize, usize, usize) {
    let size = 1 + (u64::from(b()) | u64::from(b() % 2) << 8); // 1 ..= 512
    let buffers = 2 + usize::from(b() % 3); // 2 ..= 4
    let chunk = if b() % 2 == 0 { 64 } else { 128 };
    let history = buffers + usize::from(b() % 5);
    (size, buffers, chunk, history)
}

/// Checks a listing of changes for what any answer must satisfy.
fn check_changes(asked: u64, chunks: &[usize], from: u64, to: u64, limit: usize) {
    assert_eq!(from, asked, "a listing from another version than asked");
    assert!(to >= from, "a listing from {from} to {to}");
    assert!(
        chunks.windows(2).all(|w| w[0] < w[1]),
        "chunks not ascending: {chunks:?}"
    );
    assert!(
        chunks.iter().all(|&c| c < limit),
        "a chunk past the region's {limit}: {chunks:?}"
    );
}

/// Stores `data` at byte `off` of a buffer, a word at a time (as a writer would).
fn poke(words: &[AtomicU64], off: usize, data: &[u8]) {
    for (i, &byte) in data.iter().enumerate() {
        let at = off + i;
        let word = &words[at / 8];
        let mut bytes = word.load(Ordering::Relaxed).to_le_bytes();
        bytes[at % 8] = byte;
        word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
    }
}

/// Runs one hostile session. Panics only if the region misbehaves.
pub fn session(data: &[u8]) {
    let mut b = Bytes(data.iter());
    let (size, buffers, chunk, history) = shape(&mut || b.u8());
    let mem = HeapRegion::new(size, buffers, chunk, history).expect("valid shape");
    let shape = *mem.shape();
    let size = shape.size;
    let reader = Reader::new(mem.clone());
    let mut writer = Some(Writer::new(mem.clone()).expect("a new region is sane"));
    let ctl = mem.control();
    while b.0.len() > 0 {
        let op = b.u8();
        match op % 12 {
            // A write scope: a few writes, then published, aborted, or lost with its writer.
            0..=2 => {
                let Some(w) = writer.as_mut() else { continue };
                // The writer goes on from its own version, whatever `latest` says now.
                let mut scope = w.write();
                let target = (scope.version() % shape.buffers as u64) as usize;
                let mut written = Vec::new();
                for _ in 0..b.u8() % 3 {
                    let off = usize::from(b.u8()) * 2 % size;
                    let len = usize::from(b.u8()) % (size - off + 1);
                    let data = vec![b.u8(); len];
                    if b.u8() % 2 == 0 {
                        scope.write_at(off, &data);
                    } else {
                        scope.write_diff(off, &data);
                    }
                    let mut back = vec![0u8; len];
                    scope.read_at(off, &mut back);
                    assert!(back == data, "a scope reads back other bytes than it wrote");
                    written.push((off, data));
                }
                match op % 3 {
                    0 => {
                        let v = scope.version();
                        assert_eq!(scope.publish(), v);
                    }
                    1 => drop(scope),
                    _ => {
                        // A writer killed inside its scope leaves the target buffer marked
                        // WRITING with the scope's bytes in it. `mem::forget(scope)` would
                        // leave exactly that but leak the scope's span list (which fails the
                        // fuzzer's and miri's leak checks): undo, then put it back by hand.
                        drop(scope);
                        ctl.buffer_version[target].store(REGION_WRITING, Ordering::Relaxed);
                        for (off, data) in written {
                            poke(mem.buffer(target), off, &data);
                        }
                        writer = None;
                    }
                }
            }
            // A takeover: refused (the words are inconsistent) or continuing from `latest`.
            3 => {
                writer = None;
                let latest = ctl.latest.load(Ordering::Acquire);
                match Writer::new(mem.clone()) {
                    Ok(w) => {
                        assert_eq!(w.version(), latest);
                        writer = Some(w);
                    }
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
            // Hostile stores into the control block.
            4 => {
                let latest = ctl.latest.load(Ordering::Relaxed);
                let v = b.version(latest);
                ctl.latest.store(v, Ordering::Release);
            }
            5 => {
                let latest = ctl.latest.load(Ordering::Relaxed);
                let i = usize::from(b.u8()) % MAX_REGION_BUFFERS;
                let v = if b.u8() % 4 == 0 {
                    REGION_WRITING
                } else {
                    b.version(latest)
                };
                ctl.buffer_version[i].store(v, Ordering::Release);
            }
            6 => {
                ctl.notify.store(b.u64() as u32, Ordering::Relaxed);
                ctl.parked.store(u32::from(b.u8() % 3), Ordering::Relaxed);
            }
            // Hostile stores into the history (tags and bitmaps) and the buffers' bytes.
            7 => {
                let words = mem.history();
                let i = usize::from(b.u8()) % words.len();
                let v = if i % shape.entry_words == 0 {
                    b.version(ctl.latest.load(Ordering::Relaxed))
                } else {
                    b.u64()
                };
                words[i].store(v, Ordering::Release);
            }
            8 => {
                let buf = mem.buffer(usize::from(b.u8()) % shape.buffers);
                let i = usize::from(b.u8()) % buf.len();
                buf[i].store(b.u64(), Ordering::Relaxed);
            }
            // One snapshot attempt, and a copy at any offset.
            9 => {
                let off = b.u64() as usize % (size + 8);
                let len = usize::from(b.u8());
                let got = reader.try_read_with(|p| {
                    assert_eq!(p.len(), size);
                    let mut all = vec![0u8; size];
                    assert!(p.copy_to(0, &mut all));
                    let mut part = vec![0u8; len];
                    let fits = off + len <= size;
                    assert_eq!(p.copy_to(off, &mut part), fits);
                    assert!(!p.copy_to(usize::MAX, &mut [0u8; 1]));
                    all
                });
                if let Some((_, bytes)) = got {
                    assert_eq!(bytes.len(), size);
                }
                if !cfg!(miri) && b.u8() % 8 == 0 {
                    match reader.snapshot() {
                        Ok((_, bytes)) => assert_eq!(bytes.len(), size),
                        Err(e) => assert!(!e.to_string().is_empty()),
                    }
                }
            }
            // The changes since some version, and with their bytes when that terminates.
            10 => {
                let latest = reader.version();
                let asked = b.version(latest);
                match reader.changes_since(asked) {
                    Ok(c) => check_changes(asked, &c.chunks, c.from, c.to, shape.chunks),
                    Err(ChangesError::Ahead {
                        asked: a,
                        latest: l,
                    }) => {
                        assert_eq!(a, asked);
                        assert!(a > l);
                    }
                    Err(ChangesError::TooOld {
                        asked: a,
                        oldest,
                        latest: l,
                    }) => {
                        assert_eq!(a, asked);
                        assert!(a < oldest && oldest <= l);
                    }
                    Err(ChangesError::Corrupt(e)) => assert!(!e.to_string().is_empty()),
                }
                let index = (latest % shape.buffers as u64) as usize;
                let sane = ctl.buffer_version[index].load(Ordering::Acquire) == latest;
                if sane || !cfg!(miri) {
                    if let Ok(d) = reader.read_changes(asked) {
                        let c = &d.changes;
                        check_changes(asked, &c.chunks, c.from, c.to, shape.chunks);
                        let want: usize = c
                            .chunks
                            .iter()
                            .map(|&k| (size - k * chunk).min(chunk))
                            .sum();
                        assert_eq!(d.bytes.len(), want);
                    }
                }
            }
            // A wait that gives up at once (the parked flag and futex word may be anything).
            _ => {
                let latest = reader.version();
                let want = b.version(latest);
                match reader.wait_for(want, Some(Duration::ZERO)) {
                    Ok(v) => assert!(v >= want),
                    Err(e) => assert_eq!(e.wanted, want),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use shmesh_ring::Corruption;
    use Ordering::Release;

    /// A foreign `latest` whose buffer does not say that version: every snapshot attempt fails
    /// (and `snapshot` gives up saying so), the changes cannot be listed, a takeover is
    /// refused; the writer, which publishes from its own version, puts everything right.
    #[test]
    fn a_foreign_latest_stalls_readers_until_the_writer_publishes() {
        let mem = HeapRegion::new(100, 3, 64, 4).unwrap();
        let mut w = Writer::new(mem.clone()).unwrap();
        let r = Reader::new(mem.clone());
        let mut s = w.write();
        s.write_at(0, b"one");
        assert_eq!(s.publish(), 1);
        mem.control().latest.store(7, Release); // buffer 1 holds version 1
        for _ in 0..3 {
            assert_eq!(r.try_read_with(|p| p.version()), None);
        }
        if !cfg!(miri) {
            // 65536 attempts: minutes under miri.
            let e = r.snapshot().unwrap_err();
            assert_eq!(
                (e.what, e.found),
                ("version word of the latest version's buffer", 1)
            );
        }
        // History 4: listable from 7 - 3 = 4 on, but the entries of 5..=7 were never written.
        assert_eq!(
            r.changes_since(1),
            Err(ChangesError::TooOld {
                asked: 1,
                oldest: 4,
                latest: 7
            })
        );
        assert_eq!(
            r.changes_since(5),
            Err(ChangesError::TooOld {
                asked: 5,
                oldest: 7,
                latest: 7
            })
        );
        assert_eq!(
            r.changes_since(8),
            Err(ChangesError::Ahead {
                asked: 8,
                latest: 7
            })
        );
        let e: Corruption = Writer::new(mem.clone()).unwrap_err();
        assert_eq!(
            (e.what, e.found),
            ("version word of the latest version's buffer", 1)
        );
        let mut s = w.write();
        s.write_at(3, b"two");
        assert_eq!(s.publish(), 2);
        let (v, bytes) = r.snapshot().unwrap();
        assert_eq!((v, &bytes[..6]), (2, &b"onetwo"[..]));
        assert_eq!(r.changes_since(1).unwrap().chunks, vec![0]);
    }

    /// Regression: `latest = u64::MAX` is also REGION_WRITING, the mark a dead writer leaves on
    /// its buffer, so a takeover's check "the latest version's buffer says that version" used
    /// to pass on a buffer nobody completed and its first scope computed `u64::MAX + 1`;
    /// readers copied that buffer as version u64::MAX. Versions above `MAX_VERSION` are now
    /// refused as corruption.
    #[test]
    fn a_takeover_refuses_latest_max() {
        let mem = HeapRegion::new(64, 2, 64, 2).unwrap();
        let ctl = mem.control();
        ctl.buffer_version[1].store(REGION_WRITING, Release); // a writer died rewriting it
        ctl.latest.store(u64::MAX, Release); // and a foreign store
        let r = Reader::new(mem.clone());
        assert_eq!(r.try_read_with(|p| p.version()), None);
        assert!(r.changes_since(u64::MAX).is_err());
        assert!(Writer::new(mem.clone()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 2048 }, ..ProptestConfig::default() })]

        #[test]
        fn hostile_stores_cannot_break_the_region(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            session(&data);
        }
    }
}
