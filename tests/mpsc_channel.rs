//! Many senders, one receiver: a [`Channel`] created with `senders(n)` (an MPSC ring), in one
//! process and between real processes.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `threads_*` | senders on threads: each sender's messages arrive in its order, every message exactly once, in every access mode; `Disconnected` only once every sender is gone and all was read |
//! | `sender_slots_*` | `senders(n)` slots: the n+1st is refused, a dropped sender's slot is reused, `max_senders` is the creator's for an opener too; one receiver |
//! | `loans_*` | loans of arrays and slices from several senders: read in claim order (a live loan holds back the records claimed after it), a dropped loan is never seen |
//! | `receiver_gone_*` | a sender on a full ring whose receiver left gets `Disconnected` |
//! | `child_senders_*` | N sender processes (rich messages, plain sends, loans and slice loans): per-sender order, exactly once, contents intact, in every access mode |
//!
//! Every segment is named under the test's [`Prefix`]; each test ends by checking that nothing
//! of it is left in `/dev/shm`.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use common::{
    access, check_frame, check_shape, child_role, frame, say, text, wait_for_parent, Prefix, Proc,
    Shape, Watchdog, ACCESS_MODES, DEADLINE, TEST_LIMIT,
};
use rkyv::{Archive, Deserialize, Serialize};
use shmesh::channel::{
    Channel, ChannelError, LoanError, Receiver, RecvError, SendError, TryRecvError, TrySendError,
};
use shmesh_ring::AttachError;

/// A message of one sender, with heap data that depends on both numbers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
struct Note {
    sender: u32,
    seq: u64,
    text: String,
    shape: Shape,
    data: Vec<u64>,
}

fn note(sender: u32, seq: u64) -> Note {
    let key = u64::from(sender) << 40 | seq;
    Note {
        sender,
        seq,
        text: text(key, ((seq * 7 + u64::from(sender)) % 300) as usize),
        shape: match seq % 3 {
            0 => Shape::Empty,
            1 => Shape::Point(sender as i32, seq as i64),
            _ => Shape::Labeled {
                label: format!("s{sender}"),
                weights: vec![seq as f64; (seq % 4) as usize],
            },
        },
        data: (0..seq % 9).map(|i| key ^ i).collect(),
    }
}

/// Checks `got` against `note(sender, seq)`.
#[track_caller]
fn check_note(got: &ArchivedNote, sender: u32, seq: u64) {
    let want = note(sender, seq);
    assert_eq!(
        (got.sender.to_native(), got.seq.to_native()),
        (sender, seq),
        "note"
    );
    assert_eq!(got.text.as_str(), want.text, "note {sender}/{seq}: text");
    check_shape(&got.shape, &want.shape, "note shape");
    let data: Vec<u64> = got.data.iter().map(|x| x.to_native()).collect();
    assert_eq!(data, want.data, "note {sender}/{seq}: data");
}

/// Per-sender order and exactly-once, for messages carrying `(sender, seq)`.
#[derive(Debug, Default)]
struct Tally {
    next: HashMap<u32, u64>,
}

impl Tally {
    /// Records message `seq` of `sender`, which must be the next one of that sender.
    #[track_caller]
    fn take(&mut self, sender: u32, seq: u64) {
        let next = self.next.entry(sender).or_insert(0);
        assert_eq!(
            seq, *next,
            "sender {sender}: message {seq} arrived where {next} was due (reordered, lost or \
             duplicated)"
        );
        *next += 1;
    }

    #[track_caller]
    fn assert_all(&self, senders: u32, count: u64) {
        for s in 0..senders {
            assert_eq!(
                self.next.get(&s).copied().unwrap_or(0),
                count,
                "messages from sender {s}"
            );
        }
        assert_eq!(self.next.len(), senders as usize, "senders heard from");
    }
}

/// Receives until `Disconnected`, feeding each `(sender, seq)` to the tally after `check`.
fn drain<T: shmesh::channel::Message>(
    rx: &mut Receiver<T>,
    tally: &mut Tally,
    check: impl Fn(&shmesh::channel::Received<'_, T>) -> (u32, u64),
) {
    loop {
        match rx.recv_timeout(DEADLINE) {
            Ok(got) => {
                let (sender, seq) = check(&got);
                tally.take(sender, seq);
            }
            Err(RecvError::Disconnected) => return,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// A slice message: a frame's first 12 bytes, then `seq % 300` bytes of pattern.
fn slice(sender: u32, seq: u64) -> Vec<u8> {
    let mut v = frame(sender, seq)[..12].to_vec();
    v.extend((0..seq % 300).map(|i| (i as u8) ^ (seq as u8) ^ 0x5a));
    v
}

#[track_caller]
fn check_slice(got: &[u8]) -> (u32, u64) {
    assert!(got.len() >= 12, "a slice of {} bytes", got.len());
    let sender = u32::from_le_bytes(got[..4].try_into().unwrap());
    let seq = u64::from_le_bytes(got[4..12].try_into().unwrap());
    assert_eq!(got, slice(sender, seq), "slice {sender}/{seq}");
    (sender, seq)
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Some((role, a)) = child_role() else {
        return;
    };
    match role.as_str() {
        "send_notes" => role_send_notes(a.s(0), a.get(1), a.get(2)),
        "send_frames" => role_send_frames(a.s(0), a.get(1), a.get(2)),
        "send_slices" => role_send_slices(a.s(0), a.get(1), a.get(2)),
        other => panic!("unknown child role '{other}'"),
    }
}

/// Attaches a sender to `name`, says so, and waits for the parent's go (stdin closed): so
/// that every sender is attached before any ends (the receiver sees `Disconnected` once all
/// are gone).
fn attach<T: shmesh::channel::Message>(name: &str) -> (Channel<T>, shmesh::Sender<T>) {
    let channel = Channel::<T>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    assert!(channel.max_senders() > 1, "an MPSC channel");
    let tx = channel.sender().expect("attach a sender");
    say("attached", std::process::id());
    wait_for_parent();
    (channel, tx)
}

fn role_send_notes(name: &str, sender: u32, count: u64) {
    let (_channel, mut tx) = attach::<Note>(name);
    for seq in 0..count {
        tx.send_timeout(&note(sender, seq), DEADLINE)
            .unwrap_or_else(|e| panic!("send {seq}: {e}"));
    }
    say("sent", count);
}

/// Frames by loan (two in three) and by plain send (one in three).
fn role_send_frames(name: &str, sender: u32, count: u64) {
    let (_channel, mut tx) = attach::<[u8; 128]>(name);
    for seq in 0..count {
        if seq % 3 == 2 {
            tx.send_timeout(&frame(sender, seq), DEADLINE)
                .unwrap_or_else(|e| panic!("send {seq}: {e}"));
        } else {
            let mut loan = tx
                .loan_timeout(DEADLINE)
                .unwrap_or_else(|e| panic!("loan {seq}: {e}"));
            loan.write(frame(sender, seq));
            loan.send();
        }
    }
    say("sent", count);
}

fn role_send_slices(name: &str, sender: u32, count: u64) {
    let (_channel, mut tx) = attach::<Vec<u8>>(name);
    for seq in 0..count {
        let want = slice(sender, seq);
        let mut loan = tx
            .loan_slice_timeout(want.len(), DEADLINE)
            .unwrap_or_else(|e| panic!("loan_slice {seq}: {e}"));
        loan.copy_from_slice(&want);
        loan.send();
    }
    say("sent", count);
}

// ---- in one process ----

#[test]
fn threads_each_senders_messages_arrive_in_order_exactly_once_in_every_access_mode() {
    let _watchdog = Watchdog::new("threads", TEST_LIMIT);
    const SENDERS: u32 = 4;
    const COUNT: u64 = 2000;
    for mode in ACCESS_MODES {
        let prefix = Prefix::new("threads");
        let channel = Channel::<Note>::builder(prefix.name("chan"))
            .capacity(16 * 1024)
            .senders(SENDERS as usize)
            .create()
            .unwrap();
        assert_eq!(channel.max_senders(), SENDERS as usize);
        let mut rx = channel.receiver_with(access(mode)).unwrap();
        // Every sender attaches before any sends (and so before any leaves).
        let senders: Vec<_> = (0..SENDERS).map(|_| channel.sender().unwrap()).collect();
        let threads: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(s, mut tx)| {
                thread::spawn(move || {
                    for seq in 0..COUNT {
                        tx.send_timeout(&note(s as u32, seq), DEADLINE)
                            .unwrap_or_else(|e| panic!("sender {s}: send {seq}: {e}"));
                    }
                })
            })
            .collect();
        let mut tally = Tally::default();
        drain(&mut rx, &mut tally, |got| {
            check_note(got, got.sender.to_native(), got.seq.to_native());
            (got.sender.to_native(), got.seq.to_native())
        });
        for t in threads {
            t.join().expect("a sender thread");
        }
        tally.assert_all(SENDERS, COUNT);
        drop((rx, channel));
        prefix.assert_only(&[]);
    }
}

#[test]
fn disconnected_only_once_every_sender_is_gone_and_everything_was_read() {
    let _watchdog = Watchdog::new("disconnected", TEST_LIMIT);
    let prefix = Prefix::new("disc");
    let channel = Channel::<Note>::builder(prefix.name("chan"))
        .senders(3)
        .create()
        .unwrap();
    let mut rx = channel.receiver().unwrap();
    let (mut a, mut b) = (channel.sender().unwrap(), channel.sender().unwrap());
    a.send(&note(0, 0)).unwrap();
    b.send(&note(1, 0)).unwrap();
    drop(a);
    check_note(&rx.recv_timeout(DEADLINE).unwrap(), 0, 0);
    check_note(&rx.recv_timeout(DEADLINE).unwrap(), 1, 0);
    // One sender left: empty, not disconnected.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(20)),
        Err(RecvError::Timeout)
    ));
    b.send(&note(1, 1)).unwrap();
    drop(b);
    check_note(&rx.recv_timeout(DEADLINE).unwrap(), 1, 1);
    assert!(matches!(
        rx.recv_timeout(DEADLINE),
        Err(RecvError::Disconnected)
    ));
    drop((rx, channel));
    prefix.assert_only(&[]);
}

#[test]
fn sender_slots_are_limited_and_reused_and_an_opener_sees_the_creators_senders() {
    let _watchdog = Watchdog::new("slots", TEST_LIMIT);
    let prefix = Prefix::new("slots");
    let name = prefix.name("chan");
    let channel = Channel::<Note>::builder(&name).senders(2).create().unwrap();
    let opened = Channel::<Note>::builder(&name)
        .senders(7) // ignored on open
        .open()
        .unwrap();
    assert_eq!(opened.max_senders(), 2);
    let mut rx = channel.receiver().unwrap();
    let a = opened.sender().unwrap();
    let mut b = channel.sender().unwrap();
    match opened.sender() {
        Err(ChannelError::Attach(AttachError::NoFreeSlot { slots: 2, .. })) => {}
        other => panic!("a third sender: {other:?}"),
    }
    match opened.receiver() {
        Err(ChannelError::Attach(AttachError::Busy { .. })) => {}
        other => panic!("a second receiver: {other:?}"),
    }
    drop(a);
    let mut c = opened.sender().expect("a sender in the freed slot");
    c.send(&note(2, 0)).unwrap();
    b.send(&note(1, 0)).unwrap();
    check_note(&rx.recv_timeout(DEADLINE).unwrap(), 2, 0);
    check_note(&rx.recv_timeout(DEADLINE).unwrap(), 1, 0);
    drop((b, c, rx, opened, channel));
    prefix.assert_only(&[]);
}

#[test]
fn loans_from_several_senders_are_read_in_claim_order_and_a_dropped_loan_is_never_seen() {
    let _watchdog = Watchdog::new("loans", TEST_LIMIT);
    for mode in ACCESS_MODES {
        let prefix = Prefix::new("loans");
        let channel = Channel::<[u8; 128]>::builder(prefix.name("chan"))
            .capacity(4096)
            .senders(3)
            .create()
            .unwrap();
        let mut rx = channel.receiver_with(access(mode)).unwrap();
        let mut tx: Vec<_> = (0..3).map(|_| channel.sender().unwrap()).collect();
        let [t0, t1, t2] = &mut tx[..] else {
            unreachable!()
        };
        for round in 0..100u64 {
            // Sender 0 claims first, sender 1 second and commits first: the receiver waits
            // for sender 0's record, then reads both in claim order.
            let mut first = t0.loan_timeout(DEADLINE).unwrap();
            let mut second = t1.loan_timeout(DEADLINE).unwrap();
            second.write(frame(1, round));
            second.send();
            assert!(
                matches!(rx.try_recv(), Err(TryRecvError::Empty)),
                "{mode}: a record claimed after a live loan was read before it"
            );
            // A loan dropped unsent becomes padding: never seen.
            let mut dropped = t2.loan_timeout(DEADLINE).unwrap();
            dropped.write(frame(2, 9999));
            drop(dropped);
            first.write(frame(0, round));
            first.send();
            assert_eq!(
                check_frame(&*rx.recv_timeout(DEADLINE).unwrap()),
                (0, round)
            );
            assert_eq!(
                check_frame(&*rx.recv_timeout(DEADLINE).unwrap()),
                (1, round)
            );
            t2.send_timeout(&frame(2, round), DEADLINE).unwrap();
            assert_eq!(
                check_frame(&*rx.recv_timeout(DEADLINE).unwrap()),
                (2, round)
            );
            assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        }
        drop((tx, rx, channel));
        prefix.assert_only(&[]);
    }
}

#[test]
fn receiver_gone_a_sender_on_a_full_ring_is_disconnected() {
    let _watchdog = Watchdog::new("rx_gone", TEST_LIMIT);
    let prefix = Prefix::new("rx-gone");
    let channel = Channel::<[u8; 128]>::builder(prefix.name("chan"))
        .capacity(4096)
        .senders(2)
        .create()
        .unwrap();
    let rx = channel.receiver().unwrap();
    let (mut a, mut b) = (channel.sender().unwrap(), channel.sender().unwrap());
    let mut sent = 0u64;
    loop {
        match a.try_send(&frame(0, sent)) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    drop(rx);
    match b.send(&frame(1, 0)) {
        Err(SendError::Disconnected) => {}
        other => panic!("send on a full ring without a receiver: {other:?}"),
    }
    match a.loan() {
        Err(LoanError::Disconnected) => {}
        other => panic!("loan on a full ring without a receiver: {other:?}"),
    }
    drop((a, b, channel));
    prefix.assert_only(&[]);
}

// ---- between processes ----

/// Spawns one child per sender playing `role` on `name`, waits until all attached, then lets
/// them go.
fn spawn_senders(role: &str, name: &str, senders: u32, count: u64) -> Vec<Proc> {
    let mut children: Vec<Proc> = (0..senders)
        .map(|s| Proc::spawn(role, &[&name, &s, &count]))
        .collect();
    for child in &mut children {
        let pid = child.expect("attached");
        assert_eq!(pid, child.pid().to_string());
    }
    for child in &mut children {
        child.close_stdin();
    }
    children
}

fn finish(children: &mut [Proc], count: u64) {
    for child in children {
        assert_eq!(child.expect("sent"), count.to_string());
        child.wait_success();
    }
}

#[test]
fn child_senders_rich_messages_per_sender_order_exactly_once_in_every_access_mode() {
    let _watchdog = Watchdog::new("child_notes", TEST_LIMIT);
    const SENDERS: u32 = 4;
    const COUNT: u64 = 3000;
    for mode in ACCESS_MODES {
        let prefix = Prefix::new("child-notes");
        let name = prefix.name("chan");
        let channel = Channel::<Note>::builder(&name)
            .capacity(16 * 1024)
            .senders(SENDERS as usize)
            .create()
            .unwrap();
        let mut rx = channel.receiver_with(access(mode)).unwrap();
        let mut children = spawn_senders("send_notes", &name, SENDERS, COUNT);
        let mut tally = Tally::default();
        drain(&mut rx, &mut tally, |got| {
            let (s, seq) = (got.sender.to_native(), got.seq.to_native());
            check_note(got, s, seq);
            (s, seq)
        });
        finish(&mut children, COUNT);
        tally.assert_all(SENDERS, COUNT);
        drop((rx, channel));
        prefix.assert_only(&[]);
    }
}

#[test]
fn child_senders_with_loans_and_plain_sends_per_sender_order_exactly_once() {
    let _watchdog = Watchdog::new("child_frames", TEST_LIMIT);
    const SENDERS: u32 = 4;
    const COUNT: u64 = 5000;
    for mode in ACCESS_MODES {
        let prefix = Prefix::new("child-frames");
        let name = prefix.name("chan");
        let channel = Channel::<[u8; 128]>::builder(&name)
            .capacity(4096)
            .senders(SENDERS as usize)
            .create()
            .unwrap();
        let mut rx = channel.receiver_with(access(mode)).unwrap();
        let mut children = spawn_senders("send_frames", &name, SENDERS, COUNT);
        let mut tally = Tally::default();
        drain(&mut rx, &mut tally, |got| check_frame(&**got));
        finish(&mut children, COUNT);
        tally.assert_all(SENDERS, COUNT);
        drop((rx, channel));
        prefix.assert_only(&[]);
    }
}

#[test]
fn child_senders_with_slice_loans_per_sender_order_exactly_once() {
    let _watchdog = Watchdog::new("child_slices", TEST_LIMIT);
    const SENDERS: u32 = 3;
    const COUNT: u64 = 3000;
    let prefix = Prefix::new("child-slices");
    let name = prefix.name("chan");
    let channel = Channel::<Vec<u8>>::builder(&name)
        .capacity(8192)
        .senders(SENDERS as usize)
        .create()
        .unwrap();
    let mut rx = channel.receiver_with(access("untrusted")).unwrap();
    let mut children = spawn_senders("send_slices", &name, SENDERS, COUNT);
    let mut tally = Tally::default();
    drain(&mut rx, &mut tally, |got| check_slice(got.as_slice()));
    finish(&mut children, COUNT);
    tally.assert_all(SENDERS, COUNT);
    drop((rx, channel));
    prefix.assert_only(&[]);
}
