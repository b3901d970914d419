//! Fuzzes the typed decode path: each input is committed as one message on two channels of
//! `Rich` by a raw producer (as a hostile sender would), and received by a `Validated` and an
//! `Untrusted` receiver. A receiver must return `RecvError::Invalid` or a message whose every
//! field reads from inside the message, and then receive an honest message intact.
//! See `tests/channel_hostile.rs` for the property tests of the same path.
#![no_main]

use std::collections::BTreeMap;
use std::mem::size_of;
use std::sync::{Mutex, OnceLock};

use rkyv::string::ArchivedString;
use shmesh::channel::{Access, Channel, Receiver, RecvError, TryRecvError};
use shmesh_ring::{Producer, Segment, SegmentBuilder, ShmMemory};

/// The message type of `tests/channel_hostile.rs` (whose ignored test `write_fuzz_seeds` writes
/// the seed corpus `fuzz/corpus/typed_decode`).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
struct Rich {
    name: String,
    values: Vec<u32>,
    note: Option<String>,
    shape: Shape,
    tags: BTreeMap<u32, String>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
enum Shape {
    Empty,
    Point(i32, i32),
    Label { text: String, weight: u64 },
    Many(Vec<String>),
}

/// Ring capacity; inputs longer than a message can be are cut to its largest size.
const CAPACITY: u64 = 1 << 16;

/// A receiver in one mode, the raw producer of its channel, and an honest message.
struct End {
    rx: Receiver<Rich>,
    peer: Producer<ShmMemory>,
    honest: Vec<u8>,
    expected: Rich,
    _channel: Channel<Rich>,
}

impl End {
    fn new(mode: &str, access: Access) -> End {
        let name = format!("fuzz-typed-{}-{mode}", std::process::id());
        let channel = Channel::<Rich>::builder(&name)
            .capacity(CAPACITY)
            .create()
            .expect("create the channel");
        let rx = channel.receiver_with(access).expect("attach the receiver");
        let peer = SegmentBuilder::new(&name)
            .open()
            .expect("open the segment raw")
            .producer()
            .expect("attach as the producer");
        // Every end is attached: the name can go now, so a run that libFuzzer ends (or a
        // crash) leaves nothing in /dev/shm.
        Segment::remove(&name).expect("remove the name");
        let expected = Rich {
            name: "an honest message after a hostile one".into(),
            values: vec![1, 2, 3],
            note: Some("note".into()),
            shape: Shape::Many(vec!["x".into(), "a longer item, out of line".into()]),
            tags: (1..=6).map(|k| (k, format!("value {k}"))).collect(),
        };
        End {
            rx,
            peer,
            honest: rkyv::to_bytes::<rkyv::rancor::Error>(&expected)
                .expect("serializes")
                .to_vec(),
            expected,
            _channel: channel,
        }
    }

    fn commit(&mut self, bytes: &[u8]) {
        let mut grant = self.peer.try_claim(bytes.len()).expect("an empty ring");
        grant.copy_from_slice(bytes);
        grant.commit(bytes.len());
    }

    fn session(&mut self, data: &[u8]) {
        let data = &data[..data.len().min(self.peer.max_payload() as usize)];
        self.commit(data);
        match self.rx.try_recv() {
            Ok(msg) => {
                assert_eq!(msg.bytes().len(), data.len());
                std::hint::black_box(read_all(msg.bytes(), &msg));
                let _ = std::hint::black_box(msg.deserialize());
            }
            Err(TryRecvError::Failed(RecvError::Invalid { len, .. })) => {
                assert_eq!(len, data.len());
            }
            Err(e) => panic!("expected a message or Invalid, got: {e}"),
        }
        let honest = self.honest.clone();
        self.commit(&honest);
        let msg = self.rx.try_recv().expect("the honest message");
        assert_eq!(msg.deserialize().expect("deserializes"), self.expected);
    }
}

/// Panics unless `[ptr, ptr + len)` lies inside `msg`. Called before the bytes are read.
fn assert_inside(msg: &[u8], ptr: *const u8, len: usize, what: &str) {
    let (start, end) = (msg.as_ptr() as usize, msg.as_ptr() as usize + msg.len());
    let p = ptr as usize;
    assert!(
        p >= start && p.checked_add(len).is_some_and(|e| e <= end),
        "a validated message led the reader outside it: {what}"
    );
}

fn assert_ref_inside<T>(msg: &[u8], r: &T, what: &str) {
    assert_inside(msg, (r as *const T).cast(), size_of::<T>(), what);
}

fn read_str(msg: &[u8], s: &ArchivedString, what: &str) -> u64 {
    assert_ref_inside(msg, s, what);
    assert_inside(msg, s.as_ptr(), s.len(), what);
    assert!(
        std::str::from_utf8(s.as_bytes()).is_ok(),
        "{what} is not UTF-8"
    );
    s.chars()
        .fold(s.len() as u64, |h, c| h.wrapping_mul(31) ^ u64::from(c))
}

/// Reads every field, checking first that each part lies inside the message.
fn read_all(msg: &[u8], m: &ArchivedRich) -> u64 {
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
    // `visit` and `get`, not `iter`: with rkyv 0.8.18 `ArchivedBTreeMap::iter` reads outside a
    // validated archive whose map has an empty leaf or a missing first subtree (an upstream bug;
    // see tests/channel_hostile.rs). The receivers document `visit`/`get` for hostile senders.
    let mut entries = 0usize;
    m.tags.visit(|key, value| {
        assert_ref_inside(msg, key, "map key");
        h ^= u64::from(key.to_native()) ^ read_str(msg, value, "map value");
        if let Some(found) = m.tags.get(key) {
            h ^= read_str(msg, found, "map value (get)");
        }
        entries += 1;
        std::ops::ControlFlow::<()>::Continue(())
    });
    assert_eq!(entries, m.tags.len(), "map entries");
    h
}

/// The two ends, made once per process.
fn ends() -> &'static Mutex<[End; 2]> {
    static ENDS: OnceLock<Mutex<[End; 2]>> = OnceLock::new();
    ENDS.get_or_init(|| {
        Mutex::new([
            End::new("validated", Access::validated()),
            End::new("untrusted", Access::untrusted()),
        ])
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut ends = ends()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for end in ends.iter_mut() {
        end.session(data);
    }
});
