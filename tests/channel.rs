//! The typed channel in one process: a sender and a receiver on the same channel.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `*_round_trip*` | strings, nested vectors, options, enums with data, maps and a struct of all of them arrive equal, field by field and deserialized, in every access mode |
//! | `*_wrap*`, `*_stream*` | many messages of varying sizes through a 4 KiB ring: wrap-around padding, the claim estimate, and the re-serialization of a message larger than the estimate |
//! | `access_modes_*` | validated, untrusted and trusted receivers read the same values from the same bytes |
//! | `try_recv_*`, `full_ring_*`, `send_timeout_*` | `Empty`, `Timeout` and `Full` where they belong, and sends succeed again after a receive |
//! | `too_large_*` | a message that can never fit: `TooLarge` with its archived size, the limit, and a capacity that takes it |
//! | `a_failed_serialization_*` | a value whose serialization fails half-way leaves nothing in the ring |
//! | `timeouts_too_long_*` | `Duration::MAX` means no deadline, not a panic |
//! | `*_dropped_*` | a gone receiver makes sends `Disconnected`; a gone sender's messages are all read, then `Disconnected` |
//! | `loan*` | loans of `[u8; 4096]` and of byte slices: read back equal, byte for byte what rkyv writes for the same `Vec<u8>`; a dropped loan is never seen |
//! | `schema_*`, `*_mismatch_*` | another type or version is refused at open, naming both types; the attached ends hear of it once and keep working |
//! | `second_*_is_busy` | one sender and one receiver per channel |
//! | `create_and_open_*`, `the_name_lives_*` | segment errors at create and open; the name lasts as long as the creator or its ends |
//!
//! Every blocking call has a timeout or runs under [`within`], and every test arms a
//! [`Watchdog`]: a bug fails a test, it does not hang it. No assertion is about speed.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::time::Duration;

use common::{
    check_received, check_rich, rich, text, within, ArchivedShape, ChannelName, Inner, Rich, Rng,
    Shape, Watchdog, DEADLINE, TEST_LIMIT,
};
use rkyv::api::high::HighDeserializer;
use rkyv::rancor;
use rkyv::{Archive, Archived, Deserialize, Serialize};
use shmesh::channel::{
    Access, Channel, ChannelError, LoanError, Message, RecvError, SendError, SendFailure,
    SendTimeoutError, TryRecvError, TrySendError, DEFAULT_CAPACITY,
};
use shmesh_ring::{AttachError, PeerState, SegmentError};

/// A timeout that is meant to expire: what the call returns matters, never how long it took.
const EXPIRE: Duration = Duration::from_millis(20);
/// A timeout for calls that must return something other than `Timeout` (a disconnection, a
/// schema mismatch) well before it: long enough that a `Timeout` means they missed it.
const LONG: Duration = Duration::from_secs(10);
/// The small ring of the wrap-around tests (messages up to 2024 bytes).
const SMALL: u64 = 4096;

fn create<T: Message>(name: &ChannelName, capacity: u64) -> Channel<T> {
    Channel::<T>::builder(name.as_str())
        .capacity(capacity)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

/// The three access modes, with a label for messages.
fn modes() -> [(&'static str, Access); 3] {
    [
        ("validated", Access::validated()),
        ("untrusted", Access::untrusted()),
        // SAFETY: every message on the channels of these tests is written by a `Sender` of the
        // same type in this same test binary, and nothing else writes to them.
        ("trusted", unsafe { Access::trusted() }),
    ]
}

/// Sends each value and receives it at once, in every access mode; `check` compares the archive
/// with the original field by field, and the deserialized copy must be `==`. The archived bytes
/// must be the same in every mode. Returns the archived bytes of each value.
fn round_trip<T>(test: &str, values: &[T], check: impl Fn(&Archived<T>, &T)) -> Vec<Vec<u8>>
where
    T: Message + PartialEq + Debug,
    Archived<T>: Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let _watchdog = Watchdog::new("round_trip", TEST_LIMIT);
    let mut first: Option<Vec<Vec<u8>>> = None;
    for (mode_name, access) in modes() {
        let name = ChannelName::new(test);
        let channel = create::<T>(&name, DEFAULT_CAPACITY);
        let mut tx = channel.sender().unwrap();
        let mode = access.mode();
        let mut rx = channel.receiver_with(access).unwrap();
        assert_eq!(rx.access_mode(), mode);
        let mut bytes = Vec::new();
        for (i, value) in values.iter().enumerate() {
            tx.send_timeout(value, DEADLINE)
                .unwrap_or_else(|e| panic!("{mode_name}: send value {i}: {e}"));
            let got = rx
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|e| panic!("{mode_name}: recv value {i}: {e}"));
            check(&got, value);
            let owned = got
                .deserialize()
                .unwrap_or_else(|e| panic!("{mode_name}: deserialize value {i}: {e}"));
            assert_eq!(&owned, value, "{mode_name}: value {i} deserialized");
            assert_eq!(
                got.bytes().len(),
                tx.message_size(value).unwrap(),
                "{mode_name}: value {i}: received length vs message_size"
            );
            bytes.push(got.bytes().to_vec());
        }
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            "{mode_name}: nothing more"
        );
        match &first {
            None => first = Some(bytes),
            Some(validated) => assert!(
                validated == &bytes,
                "{mode_name}: the archived bytes differ from the validated receiver's"
            ),
        }
    }
    first.unwrap()
}

// ---- rich types ----

#[test]
fn strings_round_trip() {
    let long = text(7, 100 * 1024);
    assert!(long.len() >= 100 * 1024 && !long.is_ascii());
    let values = vec![
        String::new(),
        "a".to_owned(),
        "grüße 🚀".to_owned(),
        "exactly8".to_owned(),
        "\0 nul and \u{10FFFF}".to_owned(),
        long,
    ];
    round_trip("strings", &values, |got, want| {
        assert_eq!(got.len(), want.len());
        assert_eq!(got.as_str(), want);
        assert!(*got == **want, "ArchivedString == str");
    });
}

#[test]
fn nested_vectors_round_trip() {
    let values: Vec<Vec<Vec<u32>>> = vec![
        vec![],
        vec![vec![]],
        vec![vec![1, 2, 3], vec![], vec![u32::MAX; 1000], vec![0]],
        (0..100).map(|i| (0..i).collect()).collect(),
    ];
    round_trip("nested-vecs", &values, |got, want| {
        assert_eq!(got.len(), want.len());
        for (row, want_row) in got.iter().zip(want) {
            let row: Vec<u32> = row.iter().map(|x| x.to_native()).collect();
            assert_eq!(&row, want_row);
        }
    });
}

#[test]
fn options_round_trip() {
    let strings = vec![None, Some(String::new()), Some("grüße 🚀".to_owned())];
    round_trip("opt-string", &strings, |got, want| {
        assert_eq!(got.as_ref().map(|s| s.as_str()), want.as_deref());
    });
    let numbers = vec![None, Some(0u64), Some(u64::MAX)];
    round_trip("opt-u64", &numbers, |got, want| {
        assert_eq!(got.as_ref().map(|n| n.to_native()), *want);
    });
}

#[test]
fn enums_with_data_round_trip() {
    let values = vec![
        Shape::Empty,
        Shape::Point(-1, i64::MIN),
        Shape::Point(i32::MAX, 0),
        Shape::Labeled {
            label: String::new(),
            weights: vec![],
        },
        Shape::Labeled {
            label: "grüße 🚀".to_owned(),
            weights: vec![0.5, -1e300, f64::INFINITY],
        },
    ];
    round_trip("enums", &values, |got, want| {
        common::check_shape(got, want, "shape");
        // The variant is the one sent (check_shape matched it; say it once more plainly).
        let same = matches!(
            (got, want),
            (ArchivedShape::Empty, Shape::Empty)
                | (ArchivedShape::Point(..), Shape::Point(..))
                | (ArchivedShape::Labeled { .. }, Shape::Labeled { .. })
        );
        assert!(same);
    });
}

#[test]
fn maps_round_trip() {
    let hashes: Vec<HashMap<String, u64>> = vec![
        HashMap::new(),
        HashMap::from([("grüße 🚀".to_owned(), 1)]),
        (0..1000).map(|i| (format!("key-{i}"), i * i)).collect(),
    ];
    round_trip("hashmap", &hashes, |got, want| {
        assert_eq!(got.len(), want.len());
        for (k, v) in want {
            assert_eq!(got.get(k.as_str()).map(|v| v.to_native()), Some(*v), "{k}");
        }
        assert!(got.get("absent").is_none());
        for (k, v) in got.iter() {
            assert_eq!(
                want.get(k.as_str()),
                Some(&v.to_native()),
                "extra key {k:?}"
            );
        }
    });
    let trees: Vec<BTreeMap<u32, String>> = vec![
        BTreeMap::new(),
        BTreeMap::from([(7, "grüße 🚀".to_owned())]),
        (0..1000)
            .map(|i| (i * 7919 % 1000, text(i.into(), 5)))
            .collect(),
    ];
    round_trip("btreemap", &trees, |got, want| {
        assert_eq!(got.len(), want.len());
        let pairs: Vec<(u32, &str)> = got
            .iter()
            .map(|(k, v)| (k.to_native(), v.as_str()))
            .collect();
        let want_pairs: Vec<(u32, &str)> = want.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(pairs, want_pairs, "in key order");
        assert!(*got == *want, "ArchivedBTreeMap == BTreeMap");
    });
}

/// A `Rich` with every field empty.
fn empty_rich() -> Rich {
    Rich {
        seq: 0,
        name: String::new(),
        text: String::new(),
        matrix: vec![],
        maybe: None,
        number: None,
        shapes: vec![],
        counts: HashMap::new(),
        names: BTreeMap::new(),
        inner: Inner {
            id: 0,
            tags: vec![],
            shape: None,
        },
        flag: false,
        letter: '\0',
        bytes: vec![],
    }
}

#[test]
fn struct_of_everything_round_trips() {
    let mut values = vec![empty_rich()];
    values.extend((0..120).map(rich));
    assert!(values.iter().any(|r| r.text.len() >= 100 * 1024));
    round_trip("rich", &values, check_rich);
}

/// A message of no bytes at all.
#[test]
fn unit_round_trips() {
    let sizes = round_trip("unit", &[(), (), ()], |_, _| {});
    assert!(sizes.iter().all(Vec::is_empty), "() archives to nothing");
}

// ---- many messages, wrap-around, the claim estimate ----

/// A message for the 4 KiB ring: its size is chosen by the test.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(compare(PartialEq), derive(Debug))]
struct Piece {
    seq: u64,
    text: String,
    values: Vec<u32>,
}

fn piece(seq: u64, text_len: usize, values: usize) -> Piece {
    Piece {
        seq,
        text: common::text(seq, text_len),
        values: (0..values as u32).map(|v| v ^ seq as u32).collect(),
    }
}

#[track_caller]
fn check_piece(got: &ArchivedPiece, want: &Piece) {
    assert_eq!(got.seq, want.seq, "seq");
    assert_eq!(got.text.as_str(), want.text, "message {}: text", want.seq);
    let values: Vec<u32> = got.values.iter().map(|v| v.to_native()).collect();
    assert_eq!(values, want.values, "message {}: values", want.seq);
    assert!(*got == *want);
}

/// Pieces whose archived sizes follow a schedule meant to defeat the sender's estimate of the
/// next message's size: runs of tiny messages, each followed by one much bigger; sizes growing
/// one step at a time; and random sizes up to the ring's limit.
fn schedule(max: usize) -> Vec<Piece> {
    let mut rng = Rng(0xC1A1);
    let mut pieces = Vec::new();
    let mut seq = 0u64;
    let mut push = |text_len: usize, values: usize, pieces: &mut Vec<Piece>| {
        pieces.push(piece(seq, text_len, values));
        seq += 1;
    };
    for round in 0..40 {
        for _ in 0..(round % 7) * 10 {
            push(rng.below(8) as usize, rng.below(2) as usize, &mut pieces);
        }
        // One much bigger than every recent message.
        push(900 + rng.below(600) as usize, 100, &mut pieces);
    }
    for step in 0..300 {
        push(step * 5, step % 17, &mut pieces);
    }
    for _ in 0..3000 {
        push(
            rng.below(1500) as usize,
            rng.below(100) as usize,
            &mut pieces,
        );
    }
    let mut sizer = Sizer::new();
    for p in &pieces {
        assert!(
            sizer.size(p) <= max,
            "the schedule must fit the ring ({} bytes for message {})",
            sizer.size(p),
            p.seq
        );
    }
    pieces
}

/// Archived sizes, measured with a sender of a scratch channel.
struct Sizer {
    _name: ChannelName,
    tx: shmesh::Sender<Piece>,
}

impl Sizer {
    fn new() -> Self {
        let name = ChannelName::new("sizer");
        let tx = create::<Piece>(&name, SMALL).sender().unwrap();
        Sizer { _name: name, tx }
    }

    fn size(&mut self, p: &Piece) -> usize {
        self.tx.message_size(p).unwrap()
    }
}

#[test]
fn varying_sizes_wrap_around_a_small_ring_in_one_thread() {
    let _watchdog = Watchdog::new("varying_sizes_wrap", TEST_LIMIT);
    for (mode_name, access) in modes() {
        let name = ChannelName::new("wrap");
        let channel = create::<Piece>(&name, SMALL);
        assert_eq!(channel.max_message(), 2024);
        let pieces = schedule(channel.max_message() as usize);
        let mut tx = channel.sender().unwrap();
        let mut rx = channel.receiver_with(access).unwrap();
        let sizes: Vec<usize> = pieces.iter().map(|p| tx.message_size(p).unwrap()).collect();
        let mut rng = Rng(0x5EED);
        let mut pending = VecDeque::new();
        let mut receive_one = |pending: &mut VecDeque<usize>| {
            let i = pending.pop_front().expect("a message in flight");
            let got = rx
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|e| panic!("{mode_name}: recv message {i}: {e}"));
            check_piece(&got, &pieces[i]);
            assert_eq!(got.bytes().len(), sizes[i], "message {i}: length");
        };
        for (i, p) in pieces.iter().enumerate() {
            loop {
                match tx.try_send(p) {
                    Ok(()) => break,
                    Err(TrySendError::Full) => {
                        assert!(
                            !pending.is_empty(),
                            "{mode_name}: try_send of message {i} ({} bytes) says Full on an \
                             empty ring",
                            sizes[i]
                        );
                        receive_one(&mut pending);
                    }
                    Err(e) => panic!("{mode_name}: send message {i}: {e}"),
                }
            }
            pending.push_back(i);
            // Receive now and then, so the ring's fill level (and where records wrap) varies.
            while !pending.is_empty() && rng.below(3) == 0 {
                receive_one(&mut pending);
            }
        }
        while !pending.is_empty() {
            receive_one(&mut pending);
        }
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }
}

#[test]
fn varying_sizes_stream_between_two_threads() {
    let _watchdog = Watchdog::new("varying_sizes_stream", TEST_LIMIT);
    let name = ChannelName::new("stream");
    let channel = create::<Piece>(&name, SMALL);
    let pieces = schedule(channel.max_message() as usize);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let to_send = pieces.clone();
    let sender = std::thread::spawn(move || {
        for (i, p) in to_send.iter().enumerate() {
            // `send` blocks while the ring is full; the receiver below never stops reading.
            tx.send(p)
                .unwrap_or_else(|e| panic!("send message {i}: {e}"));
        }
    });
    for (i, want) in pieces.iter().enumerate() {
        let got = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("recv message {i}: {e}"));
        check_piece(&got, want);
    }
    sender.join().expect("the sender thread");
    assert!(matches!(
        rx.recv_timeout(DEADLINE),
        Err(RecvError::Disconnected)
    ));
}

// ---- access modes ----

#[test]
fn access_modes_give_the_same_values_from_the_same_bytes() {
    let _watchdog = Watchdog::new("access_modes", TEST_LIMIT);
    let values: Vec<Rich> = (0..200).map(rich).collect();
    /// What one receiver saw: its mode, the archived bytes and the deserialized values.
    type Seen = (&'static str, Vec<Vec<u8>>, Vec<Rich>);
    let mut seen: Vec<Seen> = Vec::new();
    for (mode_name, access) in modes() {
        let name = ChannelName::new("modes");
        let channel = create::<Rich>(&name, 256 * 1024);
        let mut tx = channel.sender().unwrap();
        let mode = access.mode();
        let mut rx = channel.receiver_with(access).unwrap();
        assert_eq!(rx.access_mode(), mode);
        let (mut bytes, mut owned) = (Vec::new(), Vec::new());
        // Several messages in flight at a time.
        for chunk in values.chunks(5) {
            for v in chunk {
                tx.send_timeout(v, DEADLINE).unwrap();
            }
            for v in chunk {
                let got = rx
                    .recv_timeout(DEADLINE)
                    .unwrap_or_else(|e| panic!("{mode_name}: recv {}: {e}", v.seq));
                check_received(&got, v);
                bytes.push(got.bytes().to_vec());
                owned.push(got.deserialize().unwrap());
            }
        }
        seen.push((mode_name, bytes, owned));
    }
    let (_, bytes, owned) = &seen[0];
    assert_eq!(owned, &values);
    for (mode_name, other_bytes, other_owned) in &seen[1..] {
        assert!(bytes == other_bytes, "{mode_name}: bytes differ");
        assert_eq!(owned, other_owned, "{mode_name}: values differ");
    }
}

// ---- empty, full, timeouts ----

#[test]
fn try_recv_on_empty_is_empty_and_recv_timeout_times_out() {
    let _watchdog = Watchdog::new("empty", TEST_LIMIT);
    let name = ChannelName::new("empty");
    let channel = create::<Rich>(&name, SMALL);
    let mut rx = channel.receiver().unwrap();
    // No sender yet, then a sender that sends nothing.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(rx.recv_timeout(EXPIRE), Err(RecvError::Timeout)));
    let _tx = channel.sender().unwrap();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(rx.recv_timeout(EXPIRE), Err(RecvError::Timeout)));
    assert!(matches!(
        rx.recv_timeout(Duration::ZERO),
        Err(RecvError::Timeout)
    ));
}

/// Fills the ring with `value` by `try_send` until it is `Full`; returns how many went in.
fn fill<T: Message>(tx: &mut shmesh::Sender<T>, value: &T) -> usize {
    let mut sent = 0;
    loop {
        match tx.try_send(value) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full) => return sent,
            Err(e) => panic!("try_send while filling: {e}"),
        }
        assert!(sent < 100_000, "the ring never became full");
    }
}

#[test]
fn full_ring_refuses_try_send_and_send_timeout_then_takes_more_after_a_recv() {
    let _watchdog = Watchdog::new("full_ring", TEST_LIMIT);
    let name = ChannelName::new("full");
    let channel = create::<u64>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let mut next = 0u64;
    let mut sent = 0u64;
    loop {
        match tx.try_send(&next) {
            Ok(()) => {
                next += 1;
                sent += 1;
            }
            Err(TrySendError::Full) => break,
            Err(e) => panic!("try_send: {e}"),
        }
        assert!(sent < 10_000, "the ring never became full");
    }
    assert!(sent > 1, "a 4 KiB ring holds more than one u64");
    assert!(matches!(tx.try_send(&next), Err(TrySendError::Full)));
    assert!(matches!(
        tx.send_timeout(&next, EXPIRE),
        Err(SendTimeoutError::Timeout)
    ));
    assert_eq!(*rx.recv_timeout(DEADLINE).unwrap(), 0);
    tx.try_send(&next)
        .expect("one receive makes room for one more message of the same size");
    next += 1;
    for want in 1..next {
        assert_eq!(*rx.recv_timeout(DEADLINE).unwrap(), want);
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

/// `try_send` says `Full` when a message does not fit now. After the receiver frees space, a
/// message that fits must go in: "fits" as the channel itself says, by a slice loan of exactly
/// the message's archived size (the loan is dropped, not sent). Checked for messages of many
/// sizes, so the ring's fill level and where the wrap falls differ.
#[test]
fn after_a_full_ring_a_message_that_fits_is_sent() {
    let _watchdog = Watchdog::new("message_that_fits", TEST_LIMIT);
    let mut failures = Vec::new();
    let mut fitting = 0;
    for len in [0usize, 1, 9, 30, 100, 200, 333, 500, 700, 1000, 1500, 2000] {
        let name = ChannelName::new("room");
        let channel = create::<Vec<u8>>(&name, SMALL);
        let mut tx = channel.sender().unwrap();
        let mut rx = channel.receiver().unwrap();
        let value = bytes_of(len, len);
        let size = tx.message_size(&value).unwrap();
        let n = fill(&mut tx, &value);
        assert!(n >= 1);
        for freed in 1..=n {
            assert_eq!(rx.recv_timeout(DEADLINE).unwrap().as_slice(), &value[..]);
            let fits = match tx.try_loan_slice(len) {
                Ok(loan) => {
                    drop(loan);
                    true
                }
                Err(LoanError::Full) => false,
                Err(e) => panic!("try_loan_slice({len}): {e}"),
            };
            if !fits {
                continue;
            }
            fitting += 1;
            match tx.try_send(&value) {
                Ok(()) => {}
                Err(e) => {
                    let blocking = match tx.send_timeout(&value, EXPIRE) {
                        Ok(()) => "sent".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    failures.push(format!(
                        "{size}-byte messages: {n} filled the ring; after {freed} received, a \
                         {size}-byte loan fits but try_send says: {e}; send_timeout: {blocking}"
                    ));
                }
            }
            break;
        }
    }
    assert!(
        fitting > 0,
        "no case where the message fits: the test proves nothing"
    );
    assert!(
        failures.is_empty(),
        "a message that fits (a loan of its exact size does) was refused:\n{}",
        failures.join("\n")
    );
}

#[test]
fn send_timeout_on_a_full_ring_times_out() {
    let _watchdog = Watchdog::new("send_timeout_full", TEST_LIMIT);
    let name = ChannelName::new("send-timeout");
    let channel = create::<Rich>(&name, 64 * 1024);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let value = rich(3);
    let n = fill(&mut tx, &value);
    assert!(matches!(
        tx.send_timeout(&value, EXPIRE),
        Err(SendTimeoutError::Timeout)
    ));
    // Nothing was sent by the failed calls: exactly the n messages come out.
    for _ in 0..n {
        check_received(&rx.recv_timeout(DEADLINE).unwrap(), &value);
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

// ---- a message that can never fit ----

#[track_caller]
fn expect_too_large(failure: SendFailure, size: usize, capacity: u64) -> u64 {
    match failure {
        SendFailure::TooLarge {
            size: s,
            max,
            capacity: c,
            needed,
        } => {
            assert_eq!(s, size, "size is the archived size");
            assert_eq!(c, capacity, "capacity");
            assert_eq!(max, shmesh_ring::spsc::max_payload(capacity), "max");
            assert!((s as u64) > max, "a message that fits is not TooLarge");
            let needed = needed.expect("a ring takes messages of this size");
            assert!(needed.is_power_of_two(), "needed {needed} is a capacity");
            assert!(
                shmesh_ring::spsc::max_payload(needed) >= s as u64,
                "a ring of {needed} bytes takes {s}-byte messages"
            );
            assert!(
                shmesh_ring::spsc::max_payload(needed / 2) < s as u64,
                "needed {needed} is the smallest capacity that does"
            );
            needed
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn too_large_message_reports_its_size_the_limit_and_a_capacity_that_takes_it() {
    let _watchdog = Watchdog::new("too_large", TEST_LIMIT);
    // An archived String is its bytes, padded to 4, and an 8-byte root: 2028 is just over the
    // 4 KiB ring's limit of 2024, 4072 exactly the limit of an 8 KiB ring, 4076 just over it.
    for archived in [2028usize, 3000, 4072, 4076, 100_000, 1_000_000] {
        let name = ChannelName::new("too-large");
        let channel = create::<String>(&name, SMALL);
        let mut tx = channel.sender().unwrap();
        let mut rx = channel.receiver().unwrap();
        let value = "y".repeat(archived - 8);
        let size = tx.message_size(&value).unwrap();
        assert_eq!(
            size, archived,
            "String archives to its bytes and an 8-byte root"
        );
        let needed = match tx.send(&value) {
            Err(SendError::Failed(f)) => expect_too_large(f, size, SMALL),
            other => panic!("send of {size} bytes: expected TooLarge, got {other:?}"),
        };
        let message = match tx.try_send(&value) {
            Err(TrySendError::Failed(f)) => {
                let message = f.to_string();
                assert_eq!(expect_too_large(f, size, SMALL), needed);
                message
            }
            other => panic!("try_send: expected TooLarge, got {other:?}"),
        };
        for number in [size.to_string(), SMALL.to_string(), needed.to_string()] {
            assert!(message.contains(&number), "'{message}' names {number}");
        }
        match tx.send_timeout(&value, DEADLINE) {
            Err(SendTimeoutError::Failed(f)) => {
                assert_eq!(expect_too_large(f, size, SMALL), needed)
            }
            other => panic!("send_timeout: expected TooLarge, got {other:?}"),
        }
        // Nothing was sent; the channel still works.
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        tx.send_timeout(&"small".to_owned(), DEADLINE).unwrap();
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap().as_str(), "small");

        // A channel of the capacity the error names takes the message.
        let big_name = ChannelName::new("too-large-fix");
        let big = create::<String>(&big_name, needed);
        let mut tx = big.sender().unwrap();
        let mut rx = big.receiver().unwrap();
        tx.send_timeout(&value, DEADLINE)
            .unwrap_or_else(|e| panic!("capacity {needed} was said to take {size} bytes: {e}"));
        let got = rx.recv_timeout(DEADLINE).unwrap();
        assert!(*got == *value);
        assert_eq!(got.bytes().len(), size);
    }
}

/// Beyond 1 GiB - 24 bytes no ring takes a message (a record's length is an `i32`), whatever its
/// capacity: `TooLarge` must not name a capacity that would do. Loans reach those sizes without
/// allocating them, up to sizes that do not fit a `usize`.
#[test]
fn too_large_beyond_any_ring_names_no_impossible_capacity() {
    let name = ChannelName::new("too-large-any");
    let channel = create::<Vec<u8>>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let largest = shmesh_ring::spsc::max_payload(shmesh_ring::spsc::MAX_CAPACITY);
    assert_eq!(largest, (1 << 30) - 24);
    let mut wrong = Vec::new();
    for n in [largest as usize - 8 + 1, 1 << 31, usize::MAX / 2] {
        match tx.try_loan_slice(n) {
            Err(LoanError::Failed(SendFailure::TooLarge {
                size, max, needed, ..
            })) => {
                assert_eq!(max, channel.max_message());
                if let Some(needed) = needed {
                    wrong.push(format!(
                        "loan_slice({n}): a {size}-byte message, and TooLarge says a capacity \
                         of {needed} takes it (a ring of that capacity takes at most {})",
                        shmesh_ring::spsc::max_payload(needed)
                    ));
                }
            }
            other => panic!("loan_slice({n}): expected TooLarge, got {other:?}"),
        }
    }
    // The root's position rounds n up to 4: near usize::MAX that overflows.
    for n in [usize::MAX, usize::MAX - 2] {
        match tx.try_loan_slice(n) {
            Err(LoanError::Failed(SendFailure::TooLarge { size, needed, .. })) => {
                if size < n || needed.is_some() {
                    wrong.push(format!(
                        "loan_slice({n}): TooLarge says the message is {size} bytes and a \
                         capacity of {needed:?} takes it"
                    ));
                }
            }
            other => panic!("loan_slice({n}): expected TooLarge, got {other:?}"),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A message that can never fit is `TooLarge` also when the ring is full at the time: waiting
/// for room cannot help it, and a caller that retries on `Timeout` or `Full` would retry forever.
#[test]
fn too_large_message_on_a_full_ring_is_too_large_not_a_timeout() {
    let _watchdog = Watchdog::new("too_large_full", TEST_LIMIT);
    let name = ChannelName::new("too-large-full");
    let channel = create::<String>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let _rx = channel.receiver().unwrap();
    fill(&mut tx, &"z".repeat(100));
    let value = "y".repeat(3000);
    let size = tx.message_size(&value).unwrap();
    match tx.send_timeout(&value, EXPIRE) {
        Err(SendTimeoutError::Failed(f)) => {
            expect_too_large(f, size, SMALL);
        }
        other => panic!("send_timeout of a message that never fits: {other:?}"),
    }
    match tx.try_send(&value) {
        Err(TrySendError::Failed(f)) => {
            expect_too_large(f, size, SMALL);
        }
        other => panic!("try_send of a message that never fits: {other:?}"),
    }
}

// ---- serialization failures ----

/// A message whose serialization fails when its path is not UTF-8: after `head` was written
/// into the claimed space.
#[derive(Archive, Serialize, Debug, Clone)]
struct Named {
    id: u64,
    head: Vec<u8>,
    #[rkyv(with = rkyv::with::AsString)]
    path: std::path::PathBuf,
}

fn named(id: u64, head: usize, valid: bool) -> Named {
    use std::os::unix::ffi::OsStringExt;
    let path = if valid {
        format!("/tmp/ok-{id}").into_bytes()
    } else {
        vec![b'/', 0xFF, 0xFE, b'x']
    };
    Named {
        id,
        head: bytes_of(head, id as usize),
        path: std::ffi::OsString::from_vec(path).into(),
    }
}

#[test]
fn a_failed_serialization_sends_nothing_and_the_channel_works_on() {
    let _watchdog = Watchdog::new("serialize_failure", TEST_LIMIT);
    let name = ChannelName::new("serialize-failure");
    let channel = create::<Named>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let mut rng = Rng(99);
    for i in 0..2000u64 {
        // Sometimes larger than the sender's estimate (the overflow path), sometimes not.
        let head = if i % 7 == 0 {
            1500
        } else {
            rng.below(200) as usize
        };
        let bad = named(i, head, false);
        assert!(matches!(
            tx.message_size(&bad),
            Err(SendFailure::Serialize(_))
        ));
        match tx.try_send(&bad) {
            Err(TrySendError::Failed(SendFailure::Serialize(_))) => {}
            other => panic!("try_send of an unserializable message {i}: {other:?}"),
        }
        match tx.send_timeout(&bad, DEADLINE) {
            Err(SendTimeoutError::Failed(SendFailure::Serialize(_))) => {}
            other => panic!("send_timeout of an unserializable message {i}: {other:?}"),
        }
        match tx.send(&bad) {
            Err(SendError::Failed(SendFailure::Serialize(_))) => {}
            other => panic!("send of an unserializable message {i}: {other:?}"),
        }
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            "message {i}: a failed serialization left a record"
        );
        let good = named(i, head, true);
        tx.send_timeout(&good, DEADLINE).unwrap();
        let got = rx.recv_timeout(DEADLINE).unwrap();
        assert_eq!(got.id, i);
        assert_eq!(got.head.as_slice(), &good.head[..]);
        assert_eq!(got.path.as_str(), good.path.to_str().unwrap());
    }
    // On a full ring, too, the cause is the serialization, not the lack of room.
    let good = named(0, 100, true);
    fill(&mut tx, &good);
    match tx.try_send(&named(1, 100, false)) {
        Err(TrySendError::Failed(SendFailure::Serialize(_))) => {}
        other => panic!("try_send of an unserializable message on a full ring: {other:?}"),
    }
}

// ---- timeouts beyond the clock ----

/// A timeout too long for `Instant` (`Duration::MAX`, a common way to say "no deadline") waits
/// without a deadline, as in `std::sync::mpsc` and crossbeam; it must not panic.
#[test]
fn timeouts_too_long_for_the_clock_wait_without_a_deadline() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let _watchdog = Watchdog::new("duration_max", TEST_LIMIT);
    let name = ChannelName::new("duration-max");
    let channel = create::<Vec<u8>>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let mut panics = Vec::new();
    let mut check =
        |what: &str, f: &mut dyn FnMut() -> bool| match catch_unwind(AssertUnwindSafe(f)) {
            Ok(true) => {}
            Ok(false) => panics.push(format!("{what}: wrong result")),
            Err(p) => panics.push(format!(
                "{what} panicked: {}",
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default()
            )),
        };
    // Each call has what it waits for already: none of them should wait at all.
    tx.try_send(&vec![1]).unwrap();
    check(
        "recv_timeout(Duration::MAX), a message waiting",
        &mut || rx.recv_timeout(Duration::MAX).is_ok_and(|m| m.len() == 1),
    );
    check("send_timeout(Duration::MAX), room in the ring", &mut || {
        tx.send_timeout(&vec![2, 2], Duration::MAX).is_ok()
    });
    check(
        "loan_slice_timeout(3, Duration::MAX), room in the ring",
        &mut || {
            tx.loan_slice_timeout(3, Duration::MAX)
                .map(|l| l.send())
                .is_ok()
        },
    );
    check(
        "open_timeout(Duration::MAX), the channel there",
        &mut || {
            Channel::<Vec<u8>>::builder(name.as_str())
                .open_timeout(Duration::MAX)
                .open()
                .is_ok()
        },
    );
    while rx.try_recv().is_ok() {}
    drop(tx);
    check("recv_timeout(Duration::MAX), the sender gone", &mut || {
        matches!(rx.recv_timeout(Duration::MAX), Err(RecvError::Disconnected))
    });
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

// ---- a gone peer ----

#[test]
fn receiver_dropped_with_a_full_ring_makes_sends_disconnected() {
    let _watchdog = Watchdog::new("receiver_dropped", TEST_LIMIT);
    let name = ChannelName::new("rx-gone");
    let channel = create::<u64>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let rx = channel.receiver().unwrap();
    assert_eq!(tx.peer(), PeerState::Alive);
    fill(&mut tx, &7);
    drop(rx);
    assert_eq!(tx.peer(), PeerState::Gone);
    let mut tx = within("send to a gone receiver", move || {
        match tx.send(&8) {
            Err(e @ SendError::Disconnected) => assert!(e.is_disconnected()),
            other => panic!("send: expected Disconnected, got {other:?}"),
        }
        tx
    });
    match tx.send_timeout(&9, LONG) {
        Err(e @ SendTimeoutError::Disconnected) => assert!(e.is_disconnected()),
        other => panic!("send_timeout: expected Disconnected, got {other:?}"),
    }
    // try_send asks for the receiver's liveness now and then: Full until it does.
    let mut tries = 0;
    loop {
        match tx.try_send(&10) {
            Err(TrySendError::Full) => tries += 1,
            Err(e @ TrySendError::Disconnected) => {
                assert!(e.is_disconnected());
                break;
            }
            other => panic!("try_send: expected Full or Disconnected, got {other:?}"),
        }
        assert!(
            tries < 100_000,
            "try_send never noticed the receiver is gone"
        );
    }
}

#[test]
fn sender_dropped_lets_the_receiver_drain_then_disconnects() {
    let _watchdog = Watchdog::new("sender_dropped", TEST_LIMIT);
    let name = ChannelName::new("tx-gone");
    let channel = create::<Rich>(&name, 256 * 1024);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let values: Vec<Rich> = (0..20).map(rich).collect();
    for v in &values {
        tx.send_timeout(v, DEADLINE).unwrap();
    }
    drop(tx);
    assert_eq!(rx.peer(), PeerState::Gone);
    for v in &values {
        let got = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("message {} after the sender left: {e}", v.seq));
        check_received(&got, v);
    }
    assert!(matches!(
        rx.recv_timeout(LONG),
        Err(RecvError::Disconnected)
    ));
    let mut rx = within("recv from a gone sender", move || {
        assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
        rx
    });
    let mut tries = 0;
    loop {
        match rx.try_recv() {
            Err(TryRecvError::Empty) => tries += 1,
            Err(TryRecvError::Failed(RecvError::Disconnected)) => break,
            other => panic!("try_recv: expected Empty or Disconnected, got {other:?}"),
        }
        assert!(tries < 100_000, "try_recv never noticed the sender is gone");
    }
}

/// The messages sent before the sender left are all there also when the receiver only uses
/// `recv` (no timeout).
#[test]
fn sender_dropped_then_recv_drains_in_order() {
    let _watchdog = Watchdog::new("sender_dropped_recv", TEST_LIMIT);
    let name = ChannelName::new("tx-gone-recv");
    let channel = create::<u64>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let n = fill(&mut tx, &0);
    drop(tx);
    within("draining recv", move || {
        for i in 0..n {
            match rx.recv() {
                Ok(got) => assert_eq!(*got, 0),
                Err(e) => panic!("message {i} of {n}: {e}"),
            }
        }
        assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    });
}

// ---- loans ----

#[test]
fn loan_of_a_byte_array_is_read_back() {
    let _watchdog = Watchdog::new("loan_array", TEST_LIMIT);
    for (mode_name, access) in modes() {
        let name = ChannelName::new("loan-array");
        // 4 records of 4 KiB fit: the loans wrap around many times.
        let channel = create::<[u8; 4096]>(&name, 32 * 1024);
        let mut tx = channel.sender().unwrap();
        let mut rx = channel.receiver_with(access).unwrap();
        let pattern = |i: usize| -> [u8; 4096] {
            std::array::from_fn(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8)
        };
        for i in 0..40 {
            let mut loan = if i == 0 {
                tx.loan().expect("loan")
            } else {
                tx.loan_timeout(DEADLINE).expect("loan")
            };
            if i % 2 == 0 {
                loan.write(pattern(i));
            } else {
                for (j, b) in loan.iter_mut().enumerate() {
                    *b = pattern(i)[j];
                }
            }
            assert_eq!(*loan, pattern(i), "a loan reads back what was written");
            loan.send();
            // A plain send on the same channel between loans.
            tx.send_timeout(&pattern(i + 1000), DEADLINE).unwrap();
            let got = rx.recv_timeout(DEADLINE).unwrap();
            assert!(*got == pattern(i), "{mode_name}: loan {i}");
            assert_eq!(got.bytes(), pattern(i), "{mode_name}: loan {i} bytes");
            drop(got);
            let got = rx.recv_timeout(DEADLINE).unwrap();
            assert!(
                *got == pattern(i + 1000),
                "{mode_name}: send after loan {i}"
            );
        }
    }
}

fn bytes_of(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(131) ^ seed.wrapping_mul(17) ^ (i >> 8)) as u8)
        .collect()
}

#[test]
fn loan_slice_is_read_back_as_the_archive_rkyv_writes() {
    let _watchdog = Watchdog::new("loan_slice", TEST_LIMIT);
    for (mode_name, access) in modes() {
        let name = ChannelName::new("loan-slice");
        let channel = create::<Vec<u8>>(&name, DEFAULT_CAPACITY);
        let mut tx = channel.sender().unwrap();
        let mut rx = channel.receiver_with(access).unwrap();
        for n in [0usize, 1, 3, 4, 5, 63, 64, 1000, 100_000] {
            let want = bytes_of(n, n);
            let mut loan = tx.loan_slice_timeout(n, DEADLINE).expect("loan_slice");
            assert_eq!(loan.len(), n);
            loan.copy_from_slice(&want);
            loan.send();
            let got = rx
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|e| panic!("{mode_name}: recv loan of {n}: {e}"));
            assert_eq!(got.len(), n, "{mode_name}: length of loan {n}");
            assert_eq!(got.as_slice(), &want[..], "{mode_name}: loan {n}");
            let rkyv_bytes = rkyv::to_bytes::<rancor::Error>(&want).unwrap();
            assert_eq!(
                got.bytes(),
                rkyv_bytes.as_slice(),
                "{mode_name}: loan of {n}: the archive differs from rkyv's for the same Vec<u8>"
            );
            assert_eq!(got.bytes().len(), tx.message_size(&want).unwrap());
            assert_eq!(got.deserialize().unwrap(), want);
        }
    }
}

/// Slice loans and plain sends of the same bytes, interleaved, through a small ring: the same
/// archives, wrap-around included.
#[test]
fn loan_slices_and_sends_agree_across_wrap_around() {
    let _watchdog = Watchdog::new("loan_slice_wrap", TEST_LIMIT);
    let name = ChannelName::new("loan-slice-wrap");
    let channel = create::<Vec<u8>>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    let mut rng = Rng(77);
    for i in 0..2000 {
        let n = match i % 10 {
            0 => 2016 - rng.below(4) as usize, // the largest: 2016 + 8 = the 2024-byte limit
            1..=5 => rng.below(16) as usize,
            _ => rng.below(1500) as usize,
        };
        let want = bytes_of(n, i);
        let mut loan = tx.loan_slice_timeout(n, DEADLINE).unwrap();
        loan.copy_from_slice(&want);
        loan.send();
        let loaned = rx.recv_timeout(DEADLINE).unwrap().bytes().to_vec();
        tx.send_timeout(&want, DEADLINE).unwrap();
        let sent = rx.recv_timeout(DEADLINE).unwrap();
        assert_eq!(sent.as_slice(), &want[..], "message {i} of {n} bytes");
        assert!(loaned == sent.bytes(), "message {i}: loan and send differ");
    }
}

#[test]
fn a_dropped_loan_is_never_seen() {
    let _watchdog = Watchdog::new("dropped_loan", TEST_LIMIT);
    let name = ChannelName::new("dropped-loan");
    let channel = create::<Vec<u8>>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    for round in 0..200 {
        {
            let mut loan = tx.loan_slice_timeout(100 + round, DEADLINE).unwrap();
            loan.fill(0xEE);
            // dropped, not sent
        }
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            "round {round}: a dropped loan was received"
        );
        let want = bytes_of(round, round);
        let mut loan = tx.loan_slice_timeout(round, DEADLINE).unwrap();
        loan.copy_from_slice(&want);
        loan.send();
        let got = rx.recv_timeout(DEADLINE).unwrap();
        assert_eq!(got.as_slice(), &want[..], "round {round}");
        drop(got);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    let name = ChannelName::new("dropped-loan-array");
    let channel = create::<[u8; 4096]>(&name, 16 * 1024);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    for round in 0..20u8 {
        tx.loan_timeout(DEADLINE).unwrap().write([0xEE; 4096]);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        let mut loan = tx.loan_timeout(DEADLINE).unwrap();
        loan.write([round; 4096]);
        loan.send();
        assert!(*rx.recv_timeout(DEADLINE).unwrap() == [round; 4096]);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }
}

#[test]
fn loans_report_full_timeout_and_too_large() {
    let _watchdog = Watchdog::new("loan_errors", TEST_LIMIT);
    let name = ChannelName::new("loan-errors");
    let channel = create::<Vec<u8>>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    // 2017 bytes and the 8-byte root: 2025, one over the limit.
    let want = vec![1u8; 2017];
    let size = tx.message_size(&want).unwrap();
    match tx.try_loan_slice(2017) {
        Err(LoanError::Failed(f)) => {
            expect_too_large(f, size, SMALL);
        }
        other => panic!("try_loan_slice(2017): expected TooLarge, got {other:?}"),
    }
    match tx.loan_slice(2017) {
        Err(LoanError::Failed(f)) => {
            expect_too_large(f, size, SMALL);
        }
        other => panic!("loan_slice(2017): expected TooLarge, got {other:?}"),
    }
    match tx.loan_slice(usize::MAX / 2) {
        Err(LoanError::Failed(SendFailure::TooLarge { .. })) => {}
        other => panic!("loan_slice(usize::MAX / 2): expected TooLarge, got {other:?}"),
    }
    let mut loans = 0;
    loop {
        match tx.try_loan_slice(500) {
            Ok(loan) => {
                loan.send();
                loans += 1;
            }
            Err(LoanError::Full) => break,
            Err(e) => panic!("try_loan_slice: {e}"),
        }
        assert!(loans < 100, "the ring never filled");
    }
    assert!(matches!(
        tx.loan_slice_timeout(500, EXPIRE),
        Err(LoanError::Timeout)
    ));
    for _ in 0..loans {
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap().len(), 500);
    }
    tx.try_loan_slice(500)
        .expect("room after the receiver read")
        .send();
}

// ---- schema ----

#[test]
fn schema_another_type_is_refused_at_open_naming_both_types() {
    let _watchdog = Watchdog::new("schema_type", TEST_LIMIT);
    let name = ChannelName::new("schema-type");
    let channel = create::<u32>(&name, SMALL);
    let err = Channel::<u64>::open(name.as_str()).unwrap_err();
    let message = err.to_string();
    let ChannelError::SchemaMismatch(m) = &err else {
        panic!("expected SchemaMismatch, got {err:?}");
    };
    assert_eq!(m.channel, name.as_str());
    assert!(m.ours.text.starts_with("u64 v0"), "ours: {}", m.ours.text);
    assert!(
        m.other.text.starts_with("u32 v0"),
        "other: {}",
        m.other.text
    );
    assert_ne!(m.ours.fingerprint, m.other.fingerprint);
    assert_eq!(m.other.fingerprint, channel.schema().fingerprint());
    for both in ["u32 v0", "u64 v0", name.as_str()] {
        assert!(message.contains(both), "'{message}' names {both}");
    }
    // A layout-compatible type under another name is refused too; the right type opens.
    assert!(matches!(
        Channel::<i32>::open(name.as_str()),
        Err(ChannelError::SchemaMismatch(_))
    ));
    Channel::<u32>::open(name.as_str()).expect("the right type opens");
}

/// The messages say which type was asked for and which type the channel carries: the
/// opener's, and the one the attached ends are told.
#[test]
fn schema_mismatch_messages_say_which_type_is_whose() {
    let name = ChannelName::new("schema-words");
    let channel = create::<u32>(&name, SMALL);
    let mut rx = channel.receiver().unwrap();
    let err = Channel::<u64>::open(name.as_str()).unwrap_err();
    let ChannelError::SchemaMismatch(m) = &err else {
        panic!("expected SchemaMismatch, got {err:?}");
    };
    assert_eq!(m.opener_pid, None, "the opener itself was refused");
    let message = err.to_string();
    assert!(
        message.contains("with message type u64 v0") && message.contains("carries u32 v0"),
        "the opener asked for u64 and the channel carries u32, but the message says: {message}"
    );
    let told = match rx.try_recv() {
        Err(TryRecvError::Failed(RecvError::SchemaMismatch(m))) => m,
        other => panic!("the receiver was not told: {other:?}"),
    };
    assert_eq!(told.opener_pid, Some(std::process::id()));
    let message = told.to_string();
    assert!(
        message.contains("with message type u64 v0") && message.contains("carries u32 v0"),
        "a process asked for u64 and the channel carries u32, but the message says: {message}"
    );
}

#[test]
fn schema_another_version_or_type_name_is_refused() {
    let _watchdog = Watchdog::new("schema_version", TEST_LIMIT);
    let name = ChannelName::new("schema-version");
    let _channel = Channel::<u32>::builder(name.as_str())
        .capacity(SMALL)
        .version(1)
        .create()
        .unwrap();
    for version in [0, 2, u32::MAX] {
        match Channel::<u32>::builder(name.as_str())
            .version(version)
            .open()
        {
            Err(ChannelError::SchemaMismatch(m)) => {
                let message = m.to_string();
                assert!(message.contains("u32 v1"), "{message}");
                assert!(message.contains(&format!("u32 v{version}")), "{message}");
            }
            other => panic!("version {version}: expected SchemaMismatch, got {other:?}"),
        }
    }
    Channel::<u32>::builder(name.as_str())
        .version(1)
        .open()
        .expect("the same version opens");

    let name = ChannelName::new("schema-type-name");
    let _channel = Channel::<u32>::builder(name.as_str())
        .capacity(SMALL)
        .type_name("sensor.Reading")
        .create()
        .unwrap();
    assert!(matches!(
        Channel::<u32>::open(name.as_str()),
        Err(ChannelError::SchemaMismatch(_))
    ));
    Channel::<u32>::builder(name.as_str())
        .type_name("sensor.Reading")
        .open()
        .expect("the same type name opens");
}

/// Refuses an opener of `Channel<u64>` on `name`.
fn refused_opener(name: &ChannelName) {
    assert!(matches!(
        Channel::<u64>::open(name.as_str()),
        Err(ChannelError::SchemaMismatch(_))
    ));
}

#[track_caller]
fn check_told(m: &shmesh::channel::SchemaMismatch, name: &ChannelName) {
    assert_eq!(m.channel, name.as_str());
    assert!(m.ours.text.starts_with("u32 v0"), "ours: {}", m.ours.text);
    assert!(
        m.other.text.starts_with("u64 v0"),
        "other: {}",
        m.other.text
    );
    assert!(
        m.who.contains(&std::process::id().to_string()),
        "who names the refused opener's pid: {}",
        m.who
    );
    assert_eq!(m.opener_pid, Some(std::process::id()));
}

#[test]
fn attached_ends_hear_of_a_refused_opener_once_and_keep_working() {
    let _watchdog = Watchdog::new("schema_told", TEST_LIMIT);
    let name = ChannelName::new("schema-told");
    let channel = create::<u32>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    tx.try_send(&1).unwrap();
    assert_eq!(*rx.try_recv().unwrap(), 1);

    // The try_ forms.
    refused_opener(&name);
    match rx.try_recv() {
        Err(TryRecvError::Failed(RecvError::SchemaMismatch(m))) => check_told(&m, &name),
        other => panic!("try_recv after a refused opener: {other:?}"),
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)), "once");
    match tx.try_send(&2) {
        Err(TrySendError::Failed(SendFailure::SchemaMismatch(m))) => check_told(&m, &name),
        other => panic!("try_send after a refused opener: {other:?}"),
    }
    tx.try_send(&3).expect("once; then the channel works");
    assert_eq!(*rx.try_recv().unwrap(), 3, "the refused send sent nothing");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

    // The timeout forms: told well before the timeout.
    refused_opener(&name);
    match rx.recv_timeout(LONG) {
        Err(RecvError::SchemaMismatch(m)) => check_told(&m, &name),
        other => panic!("recv_timeout after a refused opener: {other:?}"),
    }
    assert!(matches!(rx.recv_timeout(EXPIRE), Err(RecvError::Timeout)));
    match tx.send_timeout(&4, LONG) {
        Err(SendTimeoutError::Failed(SendFailure::SchemaMismatch(m))) => check_told(&m, &name),
        other => panic!("send_timeout after a refused opener: {other:?}"),
    }
    tx.send_timeout(&5, DEADLINE).unwrap();
    assert_eq!(*rx.recv_timeout(DEADLINE).unwrap(), 5);

    // The blocking forms.
    refused_opener(&name);
    let (mut tx, mut rx) = within("blocking send and recv after a refused opener", move || {
        match tx.send(&6) {
            Err(SendError::Failed(SendFailure::SchemaMismatch(_))) => {}
            other => panic!("send after a refused opener: {other:?}"),
        }
        match rx.recv() {
            Err(RecvError::SchemaMismatch(_)) => {}
            other => panic!("recv after a refused opener: {other:?}"),
        }
        tx.send(&7).unwrap();
        assert_eq!(*rx.recv().unwrap(), 7);
        (tx, rx)
    });

    // Two refused openers before the next operation: told (of the last one) once.
    refused_opener(&name);
    refused_opener(&name);
    match tx.try_send(&8) {
        Err(TrySendError::Failed(SendFailure::SchemaMismatch(_))) => {}
        other => panic!("try_send: {other:?}"),
    }
    tx.try_send(&9).unwrap();
    assert!(matches!(
        rx.try_recv(),
        Err(TryRecvError::Failed(RecvError::SchemaMismatch(_)))
    ));
    assert_eq!(*rx.recv_timeout(DEADLINE).unwrap(), 9);
    // The channel still opens with the right type, and was not disturbed.
    assert_eq!(
        Channel::<u32>::open(name.as_str()).unwrap().capacity(),
        SMALL
    );
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

#[test]
fn loans_hear_of_a_refused_opener_once() {
    let _watchdog = Watchdog::new("schema_loans", TEST_LIMIT);
    let name = ChannelName::new("schema-loans");
    let _channel = create::<Vec<u8>>(&name, SMALL);
    let channel = Channel::<Vec<u8>>::open(name.as_str()).unwrap();
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    assert!(matches!(
        Channel::<Vec<u16>>::open(name.as_str()),
        Err(ChannelError::SchemaMismatch(_))
    ));
    match tx.loan_slice_timeout(3, DEADLINE) {
        Err(LoanError::Failed(SendFailure::SchemaMismatch(m))) => {
            assert!(m.other.text.contains("u16"), "{m}");
        }
        other => panic!("loan after a refused opener: {other:?}"),
    }
    tx.loan_slice_timeout(3, DEADLINE)
        .unwrap()
        .copy_from_slice(b"abc");
    assert!(matches!(
        rx.try_recv(),
        Err(TryRecvError::Failed(RecvError::SchemaMismatch(_)))
    ));
    // The loan above was dropped: nothing to read.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

/// The ends hear of a refused opener "on their next operation": `try_recv`, `recv_timeout` and
/// `recv` report it before a message that is waiting.
#[test]
fn receivers_report_a_refused_opener_before_a_waiting_message() {
    let _watchdog = Watchdog::new("schema_before_message", TEST_LIMIT);
    let name = ChannelName::new("schema-first");
    let channel = create::<u32>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    let mut rx = channel.receiver().unwrap();
    tx.try_send(&1).unwrap();
    refused_opener(&name);
    let try_recv = match rx.try_recv() {
        Err(TryRecvError::Failed(RecvError::SchemaMismatch(_))) => "SchemaMismatch".to_owned(),
        Ok(v) => format!("message {}", *v),
        Err(e) => format!("{e:?}"),
    };
    assert_eq!(try_recv, "SchemaMismatch", "try_recv");
    assert_eq!(*rx.try_recv().unwrap(), 1);
    // The sender hears of it on its next operation.
    assert!(matches!(
        tx.try_send(&2),
        Err(TrySendError::Failed(SendFailure::SchemaMismatch(_)))
    ));

    tx.try_send(&2).unwrap();
    refused_opener(&name);
    let recv_timeout = match rx.recv_timeout(LONG) {
        Err(RecvError::SchemaMismatch(_)) => "SchemaMismatch".to_owned(),
        Ok(v) => format!("message {}", *v),
        Err(e) => format!("{e:?}"),
    };
    assert_eq!(
        recv_timeout, "SchemaMismatch",
        "recv_timeout with a message waiting after a refused opener"
    );
    assert_eq!(*rx.recv_timeout(DEADLINE).unwrap(), 2);
    assert!(matches!(
        tx.try_send(&3),
        Err(TrySendError::Failed(SendFailure::SchemaMismatch(_)))
    ));

    tx.try_send(&3).unwrap();
    refused_opener(&name);
    within(
        "recv with a message waiting after a refused opener",
        move || {
            let recv = match rx.recv() {
                Err(RecvError::SchemaMismatch(_)) => "SchemaMismatch".to_owned(),
                Ok(v) => format!("message {}", *v),
                Err(e) => format!("{e:?}"),
            };
            assert_eq!(recv, "SchemaMismatch", "recv");
            assert_eq!(*rx.recv().unwrap(), 3);
        },
    );
}

// ---- one sender, one receiver ----

#[test]
fn second_sender_and_second_receiver_are_busy() {
    let _watchdog = Watchdog::new("second_busy", TEST_LIMIT);
    let name = ChannelName::new("busy");
    let channel = create::<u32>(&name, SMALL);
    let other = Channel::<u32>::open(name.as_str()).unwrap();
    let tx = channel.sender().unwrap();
    let rx = channel.receiver().unwrap();
    let me = std::process::id();
    for (label, result) in [
        ("sender from the creator", channel.sender().map(drop)),
        ("sender from an opener", other.sender().map(drop)),
        ("receiver from the creator", channel.receiver().map(drop)),
        ("receiver from an opener", other.receiver().map(drop)),
    ] {
        match result {
            Err(ChannelError::Attach(AttachError::Busy { pid, name: n, .. })) => {
                assert_eq!(pid, me, "{label}: the holder's pid");
                assert_eq!(n, name.as_str(), "{label}: the channel");
            }
            other => panic!("{label}: expected Attach(Busy), got {other:?}"),
        }
    }
    // Once the first sender is gone, another may attach, and messages flow.
    drop(tx);
    let mut tx = other.sender().expect("a sender after the first left");
    let mut rx = rx;
    tx.send_timeout(&42, DEADLINE).unwrap();
    assert_eq!(*rx.recv_timeout(DEADLINE).unwrap(), 42);
}

#[test]
fn create_and_open_report_segment_errors() {
    let name = ChannelName::new("segment-errors");
    assert!(matches!(
        Channel::<u32>::open(name.as_str()),
        Err(ChannelError::Segment(SegmentError::NotFound { .. }))
    ));
    let channel = create::<u32>(&name, SMALL);
    assert!(matches!(
        Channel::<u32>::create(name.as_str()),
        Err(ChannelError::Segment(SegmentError::AlreadyExists { .. }))
    ));
    assert!(matches!(
        Channel::<u32>::builder(ChannelName::new("bad-capacity").as_str())
            .capacity(1000)
            .create(),
        Err(ChannelError::Segment(_))
    ));
    assert_eq!(channel.capacity(), SMALL);
    assert_eq!(channel.name(), name.as_str());
    drop(channel);
    assert!(
        !name.path().exists(),
        "the creator removes the name when it is dropped"
    );
}

#[test]
fn the_name_lives_while_the_creator_or_its_ends_do() {
    let _watchdog = Watchdog::new("name_lifetime", TEST_LIMIT);
    let name = ChannelName::new("name-lifetime");
    let channel = create::<u32>(&name, SMALL);
    let mut tx = channel.sender().unwrap();
    drop(channel);
    // The sender made from the creating handle keeps the name.
    let opened = Channel::<u32>::open(name.as_str()).expect("open while the sender lives");
    let mut rx = opened.receiver().unwrap();
    tx.send_timeout(&7, DEADLINE).unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap().to_native(), 7);
    drop(tx);
    assert!(
        !name.path().exists(),
        "the creator's last end is gone: the name must be too"
    );
    // The opener's mapping stays valid: what was sent is still readable, then Disconnected.
    assert!(matches!(
        rx.recv_timeout(LONG),
        Err(RecvError::Disconnected)
    ));
    assert!(matches!(
        Channel::<u32>::open(name.as_str()),
        Err(ChannelError::Segment(SegmentError::NotFound { .. }))
    ));
}
