//! The records of a `shmesh::world` ring, as another process may write them: a sequence of
//! (kind, payload) records decoded and assembled like a rank does. Nothing may panic, no
//! assembly may hold more bytes than it announced, and a completed message has exactly the
//! bytes its records carried.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmesh::world::frame::{self, Assembled};

/// The kinds a record may have: the world's five and two it never writes.
const KINDS: [u32; 7] = [
    frame::KIND_WHOLE,
    frame::KIND_FIRST,
    frame::KIND_MORE,
    frame::KIND_FIN,
    frame::KIND_ABORT,
    0,
    u32::MAX - 1,
];

fuzz_target!(|data: &[u8]| {
    let mut partial = None;
    let mut rest = data;
    // Each record: one byte picking the kind, one byte of length, then that many bytes.
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, after) = tail.split_at(len);
        rest = after;
        let Ok(decoded) = frame::decode(KINDS[usize::from(*kind) % KINDS.len()], payload) else {
            continue;
        };
        let received_before = partial.as_ref().map_or(0, |a: &frame::Assembly| a.bytes.len());
        match frame::assemble(&mut partial, decoded) {
            Ok(Assembled::Message(_, bytes)) => {
                assert!(bytes.len() <= received_before + payload.len());
            }
            Ok(_) | Err(_) => {}
        }
        if let Some(open) = &partial {
            assert!(open.bytes.len() as u64 <= open.total);
        }
    }
});
