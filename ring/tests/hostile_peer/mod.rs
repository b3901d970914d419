//! A session with a hostile peer, driven by arbitrary bytes: shared by the property test
//! (`ring/tests/hostile.rs`) and the fuzz target (`fuzz/fuzz_targets/ring_reader.rs`).
//!
//! The bytes choose a ring, then a sequence of operations: honest writes, scribbles over the
//! data area, impossible values stored to the shared tail and head, and reads. Whatever the
//! bytes, both ends must return values or errors, never panic, and every record or grant they
//! hand out must lie inside the data area.

use std::ops::Range;

use shmesh_ring::{spsc, HeapMemory, RingMemory};

struct Bytes<'a>(std::slice::Iter<'a, u8>);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        self.0.next().copied()
    }

    fn u64(&mut self) -> Option<u64> {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.u8()?;
        }
        Some(u64::from_le_bytes(v))
    }
}

fn data_range(mem: &HeapMemory) -> Range<usize> {
    let start = mem.data().as_ptr() as usize;
    start..start + mem.capacity() as usize
}

fn inside(range: &Range<usize>, bytes: &[u8]) -> bool {
    let p = bytes.as_ptr() as usize;
    range.start <= p && p + bytes.len() <= range.end
}

/// Runs one hostile session. Panics only if the ring misbehaves.
pub fn session(data: &[u8]) {
    let mut b = Bytes(data.iter());
    let Some(shape) = b.u8() else { return };
    let cap = 128u64 << (shape % 4);
    let start = if shape & 0x80 != 0 {
        u64::MAX - 15 - u64::from(shape & 0x70)
    } else {
        0
    };
    let (mut tx, mut rx) = spsc::channel_at(cap, start).expect("valid ring");
    let mem = rx.memory().clone();
    let range = data_range(&mem);
    while let Some(op) = b.u8() {
        match op % 8 {
            // An honest write.
            0 | 1 => {
                let len = usize::from(b.u8().unwrap_or(0)) % (tx.max_payload() as usize + 1);
                if let Ok(mut g) = tx.try_claim(len) {
                    assert!(inside(&range, &g), "grant outside the data area");
                    g.fill(op);
                    let n = usize::from(b.u8().unwrap_or(0)).min(len);
                    g.commit(n);
                }
            }
            // Scribble over the data area (record headers and payloads).
            2 => {
                let offset = b.u64().unwrap_or(0);
                let n = usize::from(b.u8().unwrap_or(0) % 32);
                let junk: Vec<u8> = (0..n).filter_map(|_| b.u8()).collect();
                // SAFETY: one thread, and no grant or record is alive between operations.
                unsafe { mem.scribble(offset, &junk) };
            }
            // An impossible (or merely unexpected) tail from a hostile producer.
            3 => {
                let tail = b.u64().unwrap_or(0);
                mem.control()
                    .tail
                    .0
                    .store(tail, std::sync::atomic::Ordering::Release);
            }
            // An impossible head from a hostile consumer.
            4 => {
                let head = b.u64().unwrap_or(0);
                mem.control()
                    .head
                    .0
                    .store(head, std::sync::atomic::Ordering::Release);
            }
            // Reads.
            5 | 6 => {
                if let Ok(r) = rx.try_read() {
                    assert!(inside(&range, &r), "record outside the data area");
                    std::hint::black_box(r.iter().map(|&x| u64::from(x)).sum::<u64>());
                }
            }
            _ => {
                let n = b.u8().unwrap_or(0) % 8;
                let mut batch = rx.batch();
                for _ in 0..n {
                    match batch.try_read() {
                        Ok(r) => assert!(inside(&range, &r), "record outside the data area"),
                        Err(_) => break,
                    }
                }
            }
        }
    }
}
