//! What a receiver of a hostile sender reads, shared by `tests/channel_hostile.rs` and the fuzz
//! target `fuzz/fuzz_targets/typed_decode.rs` (which includes this file by path): the message
//! type, and a reader of every field that checks each part lies inside the message first.

#![allow(dead_code)] // the fuzz target does not switch maps to `iter`

use std::collections::BTreeMap;
use std::mem::{size_of, size_of_val};
use std::sync::atomic::{AtomicBool, Ordering};

use rkyv::string::ArchivedString;

/// The channel's message type: every kind of field rkyv archives with relative pointers.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct Rich {
    pub name: String,
    pub values: Vec<u32>,
    pub note: Option<String>,
    pub shape: Shape,
    pub tags: BTreeMap<u32, String>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub enum Shape {
    Empty,
    Point(i32, i32),
    Label { text: String, weight: u64 },
    Many(Vec<String>),
}

/// Panics unless `[ptr, ptr + len)` lies inside `msg`. Called before the bytes are read.
pub fn assert_inside(msg: &[u8], ptr: *const u8, len: usize, what: &str) {
    let (start, end) = (msg.as_ptr() as usize, msg.as_ptr() as usize + msg.len());
    let p = ptr as usize;
    assert!(
        p >= start && p.checked_add(len).is_some_and(|e| e <= end),
        "a validated message led the reader outside it: {what} at offset {} ({len} bytes) of a \
         {}-byte message",
        p as isize - start as isize,
        msg.len()
    );
}

pub fn assert_ref_inside<T>(msg: &[u8], r: &T, what: &str) {
    assert_inside(msg, (r as *const T).cast(), size_of::<T>(), what);
}

/// Reads a string after checking that its bytes are inside the message and UTF-8.
pub fn read_str(msg: &[u8], s: &ArchivedString, what: &str) -> u64 {
    assert_ref_inside(msg, s, what);
    assert_inside(msg, s.as_ptr(), s.len(), what);
    assert!(
        std::str::from_utf8(s.as_bytes()).is_ok(),
        "a validated message holds a {what} that is not UTF-8"
    );
    s.as_str()
        .chars()
        .fold(s.len() as u64, |h, c| h.wrapping_mul(31) ^ u64::from(c))
}

/// Read maps with `ArchivedBTreeMap::iter` instead of `visit` (the upstream-bug tests only).
pub static MAP_ITER: AtomicBool = AtomicBool::new(false);

/// Reads every field of a message as an application would (the map with `visit` and `get`),
/// checking first that each part lies inside `msg`, the message's bytes, and that the map yields
/// as many entries as it declares (validation counted that many). Returns a digest of what it
/// read.
pub fn read_all(msg: &[u8], m: &ArchivedRich) -> u64 {
    assert_ref_inside(msg, m, "the root object");
    let mut h = read_str(msg, &m.name, "name");
    let values = m.values.as_slice();
    assert_inside(msg, values.as_ptr().cast(), size_of_val(values), "values");
    h ^= values
        .iter()
        .fold(0u64, |sum, v| sum.wrapping_add(u64::from(v.to_native())));
    if let Some(note) = m.note.as_ref() {
        h ^= read_str(msg, note, "note");
    }
    h ^= match &m.shape {
        ArchivedShape::Empty => 1,
        ArchivedShape::Point(x, y) => (i64::from(x.to_native()) ^ i64::from(y.to_native())) as u64,
        ArchivedShape::Label { text, weight } => read_str(msg, text, "label") ^ weight.to_native(),
        ArchivedShape::Many(list) => {
            let items = list.as_slice();
            assert_inside(msg, items.as_ptr().cast(), size_of_val(items), "list");
            items
                .iter()
                .fold(0, |h, s| h ^ read_str(msg, s, "list item"))
        }
    };
    // `visit` and `get`, not `iter`: with rkyv 0.8.18, `ArchivedBTreeMap::iter` reads outside a
    // validated archive whose map has an empty leaf or a missing first subtree (see the
    // `..._iter_upstream_bug` tests); `visit` follows the node lengths and pointers validation
    // checked.
    let mut entries = 0usize;
    let mut entry = |key: &rkyv::Archived<u32>, value: &ArchivedString| {
        assert_ref_inside(msg, key, "map key");
        h ^= u64::from(key.to_native()) ^ read_str(msg, value, "map value");
        if let Some(found) = m.tags.get(key) {
            h ^= read_str(msg, found, "map value (get)");
        }
        entries += 1;
    };
    if MAP_ITER.load(Ordering::Relaxed) {
        m.tags.iter().for_each(|(k, v)| entry(k, v));
    } else {
        m.tags.visit(|k, v| {
            entry(k, v);
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    assert_eq!(
        entries,
        m.tags.len(),
        "a validated map yields as many entries as it declares"
    );
    h
}
