//! Fuzzes the typed decode path: each input is committed as one message on two channels of
//! `Rich` by a raw producer (as a hostile sender would), and received by a `Validated` and an
//! `Untrusted` receiver. A receiver must return `RecvError::Invalid` or a message whose every
//! field reads from inside the message, and then receive an honest message intact.
//! See `tests/channel_hostile.rs` for the property tests of the same path.
#![no_main]

use std::sync::{Mutex, OnceLock};

use shmesh::channel::{Access, Channel, Receiver, RecvError, TryRecvError};
use shmesh_ring::{Producer, Segment, SegmentBuilder, ShmMemory};

/// The message type and the field reader of `tests/channel_hostile.rs` (whose ignored test
/// `write_fuzz_seeds` writes the seed corpus `fuzz/corpus/typed_decode`).
#[path = "../../tests/hostile_reader/mod.rs"]
mod hostile_reader;
use hostile_reader::*;

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
