//! A session with a hostile peer of an MPSC ring, driven by arbitrary bytes: shared by the
//! property test (`ring/tests/mpsc_hostile.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/mpsc_reader.rs`).

use std::ops::Range;
use std::sync::atomic::Ordering;

use shmesh_ring::mpsc;
use shmesh_ring::{HeapMemory, RingMemory, TryReadError};

struct Bytes<'a>(std::slice::Iter<'a, u8>);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
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
    let shape = b.u8();
    let cap = 128u64 << (shape % 4);
    let start = if shape & 0x80 != 0 {
        u64::MAX - 15 - u64::from(shape & 0x70)
    } else {
        0
    };
    let (ws, mut rx) = mpsc::channel_at(cap, 3, start).expect("valid ring");
    let mem = ws.memory().clone();
    let range = data_range(&mem);
    let mut txs: Vec<_> = (0..2).map(|_| ws.writer().unwrap()).collect();
    while b.0.len() > 0 {
        let op = b.u8();
        match op % 10 {
            // An honest write (or abort) by one of the writers.
            0 | 1 => {
                let tx = &mut txs[usize::from(op >> 7)];
                let len = usize::from(b.u8()) % (tx.max_payload() as usize + 1);
                if let Ok(mut g) = tx.try_claim(len) {
                    assert!(inside(&range, &g), "grant outside the data area");
                    g.fill(op);
                    match b.u8() {
                        0..=31 => g.abort(),
                        n => g.commit(usize::from(n).min(len)),
                    }
                }
            }
            // Scribble over the data area (record headers and payloads).
            2 => {
                let offset = b.u64();
                let n = usize::from(b.u8() % 32);
                let junk: Vec<u8> = (0..n).map(|_| b.u8()).collect();
                // SAFETY: one thread, and no grant or record is alive between operations.
                unsafe { mem.scribble(offset, &junk) };
            }
            // A header that looks like a claim, a commit or padding, with any tag.
            3 => {
                let offset = b.u64() & !15;
                let len = (b.u64() as i64 % (2 * cap as i64 + 64)) as i32;
                let kind = if b.u8() % 2 == 0 {
                    u32::MAX
                } else {
                    b.u64() as u32
                };
                let mut bytes = len.to_le_bytes().to_vec();
                bytes.extend_from_slice(&kind.to_le_bytes());
                // SAFETY: as above.
                unsafe { mem.scribble(offset, &bytes) };
            }
            // Impossible (or merely unexpected) shared positions.
            4 => {
                let control = mem.control();
                let word = if b.u8() % 2 == 0 {
                    &control.tail.0
                } else {
                    &control.head.0
                };
                let value = match b.u8() % 3 {
                    0 => word
                        .load(Ordering::Relaxed)
                        .wrapping_add(16 * u64::from(b.u8())),
                    1 => word
                        .load(Ordering::Relaxed)
                        .wrapping_sub(16 * u64::from(b.u8())),
                    _ => b.u64(),
                };
                word.store(value, Ordering::Release);
            }
            // The writers' slots: intents, states, attach counts.
            5 => {
                let slot = mem.slot(2 + usize::from(b.u8() % 3));
                match b.u8() % 3 {
                    0 => slot.intent.store(b.u64(), Ordering::Release),
                    1 => slot.state.store(u32::from(b.u8() % 5), Ordering::Release),
                    _ => slot.attach_count.store(b.u64(), Ordering::Release),
                }
            }
            // A writer's death (its slot's token goes).
            6 => mem.kill(2 + usize::from(b.u8() % 3)),
            // Reads, unblocks.
            7 | 8 => {
                for _ in 0..(b.u8() % 8) {
                    let empty = match rx.try_read() {
                        Ok(r) => {
                            assert!(inside(&range, &r), "record outside the data area");
                            std::hint::black_box(r.iter().map(|&x| u64::from(x)).sum::<u64>());
                            false
                        }
                        Err(TryReadError::Empty) => true,
                        Err(_) => break,
                    };
                    if empty {
                        let _ = rx.unblock();
                    }
                }
            }
            _ => {
                let n = b.u8() % 8;
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
    // The blocking calls end too (with their timeouts) whatever the state.
    let _ = rx.read_timeout(std::time::Duration::from_millis(1));
    let _ = txs[0].claim_timeout(8, std::time::Duration::from_millis(1));
}
