//! A session with a hostile process writing into a broadcast ring, driven by arbitrary bytes:
//! shared by the property test (`ring/tests/broadcast_hostile.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/broadcast_reader.rs`).

use std::ops::Range;
use std::sync::atomic::Ordering;

use shmesh_ring::broadcast::{self, Reader, Start, TryReadError};
use shmesh_ring::{BroadcastPolicy, HeapMemory, RingMemory, TryClaimError};

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
    let policy = if shape & 0x10 != 0 {
        BroadcastPolicy::Lap
    } else {
        BroadcastPolicy::Block
    };
    let start = if shape & 0x80 != 0 {
        u64::MAX - 15 - u64::from(shape & 0x60)
    } else {
        0
    };
    let (mut tx, joiner) = broadcast::channel_at(cap, 2, policy, 2, start).unwrap();
    let mem = joiner.memory().clone();
    let range = data_range(&mem);
    let mut rx: [Option<Reader<HeapMemory>>; 2] = [None, None];
    while b.0.len() > 0 {
        let op = b.u8();
        match op % 10 {
            // An honest write.
            0 | 1 => {
                let len = usize::from(b.u8()) % (tx.max_payload() as usize + 1);
                match tx.try_claim(len) {
                    Ok(mut g) => {
                        assert!(inside(&range, &g), "grant outside the data area");
                        g.fill(op);
                        let n = usize::from(b.u8()).min(len);
                        g.commit(n);
                    }
                    Err(TryClaimError::Full { .. } | TryClaimError::Corrupt(_)) => {}
                    Err(e) => panic!("unexpected claim error {e}"),
                }
            }
            // Scribble over the data area.
            2 => {
                let offset = b.u64();
                let n = usize::from(b.u8() % 32);
                let junk: Vec<u8> = (0..n).map(|_| b.u8()).collect();
                // SAFETY: one thread, and no grant or record is alive between operations.
                unsafe { mem.scribble(offset, &junk) };
            }
            // Impossible values in the shared words readers and writer trust least.
            3 => {
                let value = b.u64();
                let bc = mem.broadcast();
                match b.u8() % 5 {
                    0 => bc.published.store(value, Ordering::Release),
                    1 => bc.limit.store(value, Ordering::Release),
                    2 => bc.tail_intent.store(value, Ordering::Release),
                    3 => {
                        let table = mem.history();
                        let i = usize::from(b.u8()) % table.len();
                        table[i].store(value, Ordering::Release);
                    }
                    _ => {
                        let slot = 2 + usize::from(b.u8() % 2);
                        mem.slot(slot).cursor.store(value, Ordering::Release);
                    }
                }
            }
            // Joins and leaves.
            4 => {
                let i = usize::from(b.u8() % 2);
                if rx[i].is_some() {
                    rx[i] = None;
                } else {
                    let start = match b.u8() % 3 {
                        0 => Start::Latest,
                        k => Start::History(usize::from(k)),
                    };
                    // A join against junk gives up with an error, it does not spin forever.
                    rx[i] = joiner.join(start).ok();
                }
            }
            // Reads.
            _ => {
                let i = usize::from(op % 2);
                if let Some(reader) = rx[i].as_mut() {
                    match reader.try_read() {
                        Ok(r) => {
                            if policy == BroadcastPolicy::Block {
                                assert!(inside(&range, &r), "record outside the data area");
                            }
                            std::hint::black_box(r.iter().map(|&x| u64::from(x)).sum::<u64>());
                        }
                        Err(TryReadError::Lapped { lost }) => {
                            assert_eq!(policy, BroadcastPolicy::Lap);
                            assert!(lost > 0);
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    }
}
