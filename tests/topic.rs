//! Publish/subscribe with [`Topic`], in one process and between real processes.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `block_*_every_subscriber_*` | under `Block` every subscriber gets every message, in order: rich structs (strings, nested vectors, options, enums, maps; up to 100 KiB), enums, vectors of strings; in every access mode |
//! | `*_joining_mid_stream_*` | a subscriber that joins while messages flow starts at the next message published, no earlier, no later |
//! | `history_*` | with `history(k)`, a late subscriber asking for the last `j` gets exactly the last `min(j, k)` (all of them if fewer were published), then the live stream |
//! | `lap_*` | under `Lap` a slow subscriber gets `Lapped { lost }` with the exact count, then valid messages in order; a subscriber that keeps up is never lapped; in every access mode |
//! | `block_publisher_*` | a `Block` publisher waits for a live subscriber (`Full`, `Timeout`), never for a dropped one, and never when nobody subscribes |
//! | `schema_mismatch_*` | opening a topic with another type or version is refused naming both types, and the topic's ends hear of it once |
//! | `*_slots_*`, `*_publisher_*` | subscriber slots are limited and freed on drop; one publisher at a time; a new publisher continues the stream |
//! | `too_large_*` | a message larger than the ring allows is refused with the capacity that would do |
//! | `child_*` | the same between processes: child subscribers in every access mode, a child publisher, a child joining mid-stream, a child lapped while it was not reading |
//!
//! Every segment is named under the test's [`Prefix`]; each test ends by checking that nothing
//! of it is left in `/dev/shm`.

mod common;

use std::thread;
use std::time::Duration;

use common::{
    access, check_received, check_shape, check_tick, child_role, rich, say, text, tick,
    wait_for_parent, Prefix, Proc, Rich, Shape, Tick, Watchdog, ACCESS_MODES, DEADLINE, TEST_LIMIT,
};
use rkyv::{Archive, Deserialize, Serialize};
use shmesh::channel::{
    Channel, ChannelError, RecvError, SendError, SendFailure, SendTimeoutError, TryRecvError,
    TrySendError,
};
use shmesh::topic::{BroadcastPolicy, Start, Subscriber, Topic};
use shmesh_ring::AttachError;

/// Ring capacity for rich messages: the 100 KiB ones fit (at most 128 KiB).
const RICH_CAP: u64 = 256 * 1024;
/// A small ring, so that streams wrap and the publisher waits often.
const SMALL_CAP: u64 = 4096;

/// The other message type some tests open a topic with.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct Other {
    x: u64,
}

fn create<T: shmesh::channel::Message>(name: &str, cap: u64, policy: BroadcastPolicy) -> Topic<T> {
    Topic::<T>::builder(name)
        .capacity(cap)
        .policy(policy)
        .create()
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

/// Receives the next message on `sub` or fails (a bounded wait).
macro_rules! next {
    ($sub:expr, $what:expr) => {{
        let received = match $sub.recv_timeout(DEADLINE) {
            Ok(m) => m,
            Err(e) => panic!("{}: {e}", $what),
        };
        received
    }};
}

/// Asserts that `sub` has nothing now.
#[track_caller]
fn assert_empty<T: shmesh::channel::Message>(sub: &mut Subscriber<T>, what: &str) {
    match sub.try_recv() {
        Err(TryRecvError::Empty) => {}
        Ok(_) => panic!("{what}: a message, expected none"),
        Err(e) => panic!("{what}: expected Empty, got {e}"),
    }
}

/// Asserts that `sub` reports the publisher gone.
#[track_caller]
fn assert_disconnected<T: shmesh::channel::Message>(sub: &mut Subscriber<T>, what: &str) {
    match sub.recv_timeout(DEADLINE) {
        Err(RecvError::Disconnected) => {}
        Ok(_) => panic!("{what}: a message, expected Disconnected"),
        Err(e) => panic!("{what}: expected Disconnected, got {e}"),
    }
}

// ---- the child side ----

/// Plays a child role when `SHMESH_TEST_CHILD` says so; passes at once otherwise.
#[test]
fn child_entry() {
    let Some((role, a)) = child_role() else {
        return;
    };
    match role.as_str() {
        "sub_rich" => role_sub_rich(a.s(0), a.get(1), a.s(2)),
        "sub_ticks" => role_sub_ticks(a.s(0), a.get(1), a.get(2)),
        "pub_ticks" => role_pub_ticks(a.s(0), a.get(1), a.get(2)),
        "sub_lapped" => role_sub_lapped(a.s(0), a.get(1), a.s(2)),
        other => panic!("unknown child role '{other}'"),
    }
}

/// Subscribes in `mode`, says so, receives `rich(0..count)` checking each, then expects
/// `Disconnected`.
fn role_sub_rich(name: &str, count: u64, mode: &str) {
    let topic = Topic::<Rich>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut sub = topic
        .subscriber_from(Start::Latest, access(mode))
        .expect("subscribe");
    say("subscribed", mode);
    for seq in 0..count {
        let got = next!(sub, format!("{mode}: recv {seq}"));
        check_received(&got, &rich(seq));
    }
    assert_disconnected(&mut sub, mode);
    say("verified", count);
}

/// Subscribes (at the next message), says so, and expects exactly ticks `first..end`, then
/// `Disconnected`.
fn role_sub_ticks(name: &str, first: u64, end: u64) {
    let topic = Topic::<Tick>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut sub = topic.subscriber().expect("subscribe");
    say("subscribed", first);
    for seq in first..end {
        check_tick(&*next!(sub, format!("recv {seq}")), seq);
    }
    assert_disconnected(&mut sub, "after the last tick");
    say("verified", end - first);
}

/// Publishes ticks `from..to`, says so, then waits for the parent before it ends (which
/// detaches the publisher).
fn role_pub_ticks(name: &str, from: u64, to: u64) {
    let topic = Topic::<Tick>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut publisher = topic.publisher().expect("attach the publisher");
    for seq in from..to {
        publisher
            .publish_timeout(&tick(seq), DEADLINE)
            .unwrap_or_else(|e| panic!("publish {seq}: {e}"));
    }
    say("published", to);
    wait_for_parent();
}

/// Subscribes in `mode`, says so, waits for the parent (which publishes `total` ticks
/// meanwhile), then reads to the end: every `Lapped { lost }` must be followed by tick
/// `expected + lost`, and lost plus received must be `total`. Reports the loss.
fn role_sub_lapped(name: &str, total: u64, mode: &str) {
    let topic = Topic::<Tick>::open(name).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let mut sub = topic
        .subscriber_from(Start::Latest, access(mode))
        .expect("subscribe");
    say("subscribed", mode);
    wait_for_parent();
    let (mut expected, mut lost, mut laps) = (0u64, 0u64, 0u64);
    loop {
        match sub.recv_timeout(DEADLINE) {
            Ok(got) => {
                check_tick(&got, expected);
                expected += 1;
            }
            Err(RecvError::Lapped { lost: n }) => {
                assert!(n > 0, "Lapped with 0 lost");
                laps += 1;
                lost += n;
                expected += n;
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("recv after {expected}: {e}"),
        }
    }
    assert_eq!(expected, total, "lost plus received");
    assert_eq!(sub.lost(), lost, "Subscriber::lost");
    say("lost", format!("{lost} {laps}"));
}

// ---- in one process ----

/// Publishes `count` values of `make` to one subscriber per access mode, each receiving on its
/// own thread and checking every value with `check`, then `Disconnected`.
fn fan_out<T, M, C>(test: &str, cap: u64, count: u64, make: M, check: C)
where
    T: shmesh::channel::Message + Send + 'static,
    M: Fn(u64) -> T + Send + Sync + Copy + 'static,
    C: Fn(&shmesh::channel::Received<'_, T>, &T) + Send + Sync + Copy + 'static,
{
    let prefix = Prefix::new(test);
    let name = prefix.name("topic");
    let topic = create::<T>(&name, cap, BroadcastPolicy::Block);
    let mut publisher = topic.publisher().unwrap();
    let readers: Vec<_> = ACCESS_MODES
        .iter()
        .map(|&mode| {
            let mut sub = topic.subscriber_from(Start::Latest, access(mode)).unwrap();
            thread::spawn(move || {
                for seq in 0..count {
                    let got = next!(sub, format!("{mode}: recv {seq}"));
                    check(&got, &make(seq));
                }
                assert_disconnected(&mut sub, mode);
            })
        })
        .collect();
    assert_eq!(topic.subscribers(), ACCESS_MODES.len());
    for seq in 0..count {
        publisher
            .publish_timeout(&make(seq), DEADLINE)
            .unwrap_or_else(|e| panic!("publish {seq}: {e}"));
    }
    drop(publisher);
    for r in readers {
        r.join().expect("a subscriber failed");
    }
    drop(topic);
    prefix.assert_only(&[]);
}

#[test]
fn block_every_subscriber_gets_every_rich_message_in_order_in_every_access_mode() {
    let _watchdog = Watchdog::new("block_rich", TEST_LIMIT);
    fan_out("block-rich", RICH_CAP, 300, rich, |got, want| {
        check_received(got, want)
    });
}

#[test]
fn block_every_subscriber_gets_every_enum_and_vector_message_through_a_small_ring() {
    let _watchdog = Watchdog::new("block_enums", TEST_LIMIT);
    let shape = |seq: u64| match seq % 3 {
        0 => Shape::Empty,
        1 => Shape::Point(seq as i32, -(seq as i64)),
        _ => Shape::Labeled {
            label: text(seq, (seq % 100) as usize),
            weights: (0..seq % 9).map(|w| w as f64 / 3.0).collect(),
        },
    };
    fan_out("block-enum", SMALL_CAP, 3000, shape, |got, want| {
        check_shape(got, want, "shape")
    });
    let strings = |seq: u64| -> Vec<String> { (0..seq % 5).map(|i| text(seq + i, 20)).collect() };
    fan_out("block-vec", SMALL_CAP, 3000, strings, |got, want| {
        let got: Vec<&str> = got.iter().map(|s| s.as_str()).collect();
        assert_eq!(got, *want);
    });
    fan_out("block-tick", SMALL_CAP, 3000, tick, |got, want| {
        check_tick(got, want.seq)
    });
}

#[test]
fn a_subscriber_joining_mid_stream_starts_at_the_next_message() {
    let _watchdog = Watchdog::new("mid_stream", TEST_LIMIT);
    for policy in [BroadcastPolicy::Block, BroadcastPolicy::Lap] {
        let prefix = Prefix::new("mid-stream");
        let topic = create::<Tick>(&prefix.name("topic"), 64 * 1024, policy);
        let mut publisher = topic.publisher().unwrap();
        let mut early = topic.subscriber().unwrap();
        for seq in 0..10 {
            publisher.try_publish(&tick(seq)).unwrap();
        }
        let mut late = topic.subscriber().unwrap();
        assert_empty(&mut late, "a subscriber that joined after 10 messages");
        for seq in 10..20 {
            publisher.try_publish(&tick(seq)).unwrap();
        }
        for seq in 10..20 {
            check_tick(&*next!(late, format!("{policy:?}: late {seq}")), seq);
        }
        assert_empty(&mut late, "after the 20th message");
        for seq in 0..20 {
            check_tick(&*next!(early, format!("{policy:?}: early {seq}")), seq);
        }
        assert_empty(&mut early, "after the 20th message");
        drop(publisher);
        assert_disconnected(&mut late, "late");
        assert_disconnected(&mut early, "early");
        drop((late, early, topic));
        prefix.assert_only(&[]);
    }
}

#[test]
fn history_gives_a_late_subscriber_exactly_the_last_k_messages() {
    let _watchdog = Watchdog::new("history", TEST_LIMIT);
    const K: usize = 5;
    for policy in [BroadcastPolicy::Block, BroadcastPolicy::Lap] {
        let prefix = Prefix::new("history");
        let topic = Topic::<Tick>::builder(prefix.name("topic"))
            .capacity(64 * 1024)
            .policy(policy)
            .history(K)
            .create()
            .unwrap();
        let mut publisher = topic.publisher().unwrap();
        for seq in 0..20 {
            publisher.try_publish(&tick(seq)).unwrap();
        }
        // Asking for j <= k: exactly the last j. Under Block, asking for more than k gets k
        // (the topic keeps k); under Lap the ring keeps what its lap index holds.
        let mut asks = vec![(K, 15), (2, 18), (1, 19), (0, 20)];
        if policy == BroadcastPolicy::Block {
            asks.push((50, 15));
        }
        let mut subs = Vec::new();
        for (j, first) in asks {
            let mut sub = topic
                .subscriber_from(Start::History(j), access("validated"))
                .unwrap();
            for seq in first..20 {
                check_tick(&*next!(sub, format!("{policy:?} History({j}): {seq}")), seq);
            }
            assert_empty(
                &mut sub,
                &format!("{policy:?} History({j}) after the last kept"),
            );
            subs.push(sub);
        }
        // Then the live stream, for all of them.
        publisher.try_publish(&tick(20)).unwrap();
        for sub in &mut subs {
            check_tick(&*next!(sub, "the next live message"), 20);
        }
        drop((subs, publisher, topic));

        // Fewer published than asked for: all of them.
        let topic = Topic::<Tick>::builder(prefix.name("few"))
            .capacity(64 * 1024)
            .policy(policy)
            .history(K)
            .create()
            .unwrap();
        let mut publisher = topic.publisher().unwrap();
        let mut none = topic
            .subscriber_from(Start::History(K), access("untrusted"))
            .unwrap();
        assert_empty(&mut none, "History before anything was published");
        for seq in 0..3 {
            publisher.try_publish(&tick(seq)).unwrap();
        }
        let mut sub = topic
            .subscriber_from(Start::History(K), access("untrusted"))
            .unwrap();
        for seq in 0..3 {
            check_tick(
                &*next!(sub, format!("{policy:?} History({K}) of 3: {seq}")),
                seq,
            );
            check_tick(&*next!(none, format!("{policy:?} early: {seq}")), seq);
        }
        assert_empty(&mut sub, "after the 3 published");
        drop((sub, none, publisher, topic));
        prefix.assert_only(&[]);
    }
}

#[test]
fn lap_a_slow_subscriber_gets_the_exact_loss_then_messages_in_order_in_every_access_mode() {
    let _watchdog = Watchdog::new("lap", TEST_LIMIT);
    const N: u64 = 2000;
    for mode in ACCESS_MODES {
        let prefix = Prefix::new("lap");
        let topic = create::<Tick>(&prefix.name("topic"), SMALL_CAP, BroadcastPolicy::Lap);
        assert_eq!(topic.policy(), BroadcastPolicy::Lap);
        let mut publisher = topic.publisher().unwrap();
        let mut fast = topic.subscriber_from(Start::Latest, access(mode)).unwrap();
        let mut slow = topic.subscriber_from(Start::Latest, access(mode)).unwrap();
        // The slow one reads 7 messages, then nothing while the publisher goes on.
        let mut slow_next = 0u64;
        for seq in 0..N {
            // A Lap publisher never waits: try_publish always succeeds.
            publisher
                .try_publish(&tick(seq))
                .unwrap_or_else(|e| panic!("{mode}: try_publish {seq}: {e}"));
            match fast.try_recv() {
                Ok(got) => check_tick(&got, seq),
                Err(e) => panic!("{mode}: the subscriber that keeps up, message {seq}: {e}"),
            }
            if seq < 7 {
                check_tick(&*next!(slow, "slow, before it stops reading"), seq);
                slow_next += 1;
            }
        }
        assert_eq!(fast.lost(), 0);
        // The slow one: lapped once, by an exact count, then in order to the end.
        let lost = match slow.recv_timeout(DEADLINE) {
            Err(RecvError::Lapped { lost }) => lost,
            Ok(got) => panic!("{mode}: not lapped: got {}", got.seq),
            Err(e) => panic!("{mode}: expected Lapped, got {e}"),
        };
        assert!(lost > 0 && slow_next + lost < N, "{mode}: lost {lost}");
        assert_eq!(slow.lost(), lost);
        slow_next += lost;
        let resumed_at = slow_next;
        loop {
            match slow.try_recv() {
                Ok(got) => {
                    check_tick(&got, slow_next);
                    slow_next += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(e) => panic!("{mode}: after the lap, at {slow_next}: {e}"),
            }
        }
        assert_eq!(slow_next, N, "{mode}: lost {lost}, resumed at {resumed_at}");
        // A second lap, counted from where it stood; try_recv reports it too.
        for seq in N..3 * N {
            publisher.try_publish(&tick(seq)).unwrap();
            check_tick(&fast.try_recv().unwrap(), seq);
        }
        let lost2 = match slow.try_recv() {
            Err(TryRecvError::Failed(RecvError::Lapped { lost })) => lost,
            Ok(got) => panic!("{mode}: not lapped again: got {}", got.seq),
            Err(e) => panic!("{mode}: expected Lapped again, got {e}"),
        };
        assert_eq!(slow.lost(), lost + lost2);
        check_tick(&*next!(slow, "after the second lap"), N + lost2);
        drop(publisher);
        let mut rest = 0;
        while slow.recv_timeout(DEADLINE).is_ok() {
            rest += 1;
        }
        assert_eq!(
            N + lost2 + 1 + rest,
            3 * N,
            "{mode}: the rest of the stream"
        );
        assert_disconnected(&mut fast, mode);
        drop((fast, slow, topic));
        prefix.assert_only(&[]);
    }
}

#[test]
fn block_publisher_waits_for_a_live_subscriber_but_not_for_a_dropped_one_or_nobody() {
    let _watchdog = Watchdog::new("block_waits", TEST_LIMIT);
    let prefix = Prefix::new("block-waits");
    let topic = create::<Tick>(&prefix.name("topic"), SMALL_CAP, BroadcastPolicy::Block);
    let mut publisher = topic.publisher().unwrap();
    // Nobody subscribed: messages go to nobody, the publisher never waits.
    for seq in 0..1000 {
        publisher
            .try_publish(&tick(seq))
            .unwrap_or_else(|e| panic!("no subscriber, message {seq}: {e}"));
    }
    let mut sub = topic.subscriber().unwrap();
    let mut sent = 0u64;
    loop {
        match publisher.try_publish(&tick(sent)) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full) => break,
            Err(e) => panic!("filling: {e}"),
        }
        assert!(
            sent < 10_000,
            "a 4 KiB ring took 10000 messages: it does not wait"
        );
    }
    assert!(sent > 0);
    match publisher.publish_timeout(&tick(sent), Duration::from_millis(20)) {
        Err(SendTimeoutError::Timeout) => {}
        other => panic!("publish_timeout on a full ring: {other:?}"),
    }
    // Reading makes room (20 messages: more than the largest tick takes).
    for seq in 0..20 {
        check_tick(&*next!(sub, "reading to make room"), seq);
    }
    let mut more = 0;
    while publisher.try_publish(&tick(sent)).is_ok() {
        sent += 1;
        more += 1;
    }
    assert!(more >= 1, "no room after the subscriber read a message");
    // A dropped subscriber holds nothing back.
    drop(sub);
    assert_eq!(topic.subscribers(), 0);
    for _ in 0..1000 {
        publisher.try_publish(&tick(sent)).unwrap();
        sent += 1;
    }
    drop((publisher, topic));
    prefix.assert_only(&[]);
}

#[test]
fn schema_mismatch_on_open_is_refused_and_the_topic_ends_hear_of_it() {
    let _watchdog = Watchdog::new("schema", TEST_LIMIT);
    let prefix = Prefix::new("schema");
    let name = prefix.name("topic");
    let topic = create::<Tick>(&name, SMALL_CAP, BroadcastPolicy::Block);
    let mut publisher = topic.publisher().unwrap();
    let mut sub = topic.subscriber().unwrap();
    match Topic::<Other>::open(&name) {
        Err(ChannelError::SchemaMismatch(m)) => {
            assert!(m.ours.text.contains("Other"), "ours: {}", m.ours.text);
            assert!(m.other.text.contains("Tick"), "other: {}", m.other.text);
            assert!(m.to_string().contains(&name), "names the topic: {m}");
        }
        other => panic!("open with another type: {other:?}"),
    }
    // The subscriber, waiting, hears of it (once), and so does the publisher.
    match sub.recv_timeout(DEADLINE) {
        Err(RecvError::SchemaMismatch(m)) => {
            assert_eq!(m.opener_pid, Some(std::process::id()));
            assert!(m.other.text.contains("Other"), "{m}");
        }
        Ok(_) => panic!("a message"),
        Err(e) => panic!("the subscriber was not told: {e}"),
    }
    match publisher.publish(&tick(0)) {
        Err(SendError::Failed(SendFailure::SchemaMismatch(m))) => {
            assert!(m.other.text.contains("Other"), "{m}")
        }
        other => panic!("the publisher was not told: {other:?}"),
    }
    // Another version of the same type is another schema.
    match Topic::<Tick>::builder(&name).version(2).open() {
        Err(ChannelError::SchemaMismatch(m)) => {
            assert!(m.ours.text.contains("Tick"), "{m}");
            assert_ne!(m.ours.fingerprint, m.other.fingerprint);
        }
        other => panic!("open with another version: {other:?}"),
    }
    assert!(matches!(
        sub.try_recv(),
        Err(TryRecvError::Failed(RecvError::SchemaMismatch(_)))
    ));
    assert!(matches!(
        publisher.try_publish(&tick(1)),
        Err(TrySendError::Failed(SendFailure::SchemaMismatch(_)))
    ));
    // Once each: the topic works on.
    publisher.publish(&tick(1)).unwrap();
    check_tick(&*next!(sub, "after the mismatch"), 1);
    // A topic is not a channel, and a channel is not a topic.
    match Channel::<Tick>::open(&name) {
        Err(ChannelError::Attach(AttachError::NotARing { .. })) => {}
        other => panic!("a topic opened as a channel: {other:?}"),
    }
    let channel_name = prefix.name("channel");
    let channel = Channel::<Tick>::create(&channel_name).unwrap();
    match Topic::<Tick>::open(&channel_name) {
        Err(ChannelError::Segment(e)) => {
            assert!(e.to_string().contains(&channel_name), "{e}")
        }
        other => panic!("a channel opened as a topic: {other:?}"),
    }
    drop((sub, publisher, topic, channel));
    prefix.assert_only(&[]);
}

#[test]
fn subscriber_slots_are_limited_and_freed_and_one_publisher_at_a_time_continues_the_stream() {
    let _watchdog = Watchdog::new("slots", TEST_LIMIT);
    let prefix = Prefix::new("slots");
    let topic = Topic::<Tick>::builder(prefix.name("topic"))
        .capacity(SMALL_CAP)
        .subscribers(2)
        .create()
        .unwrap();
    let mut a = topic.subscriber().unwrap();
    let b = topic.subscriber().unwrap();
    assert_eq!(topic.subscribers(), 2);
    match topic.subscriber() {
        Err(ChannelError::Attach(AttachError::NoFreeSlot { slots: 2, .. })) => {}
        other => panic!("a third subscriber: {other:?}"),
    }
    drop(b);
    assert_eq!(topic.subscribers(), 1);
    let mut c = topic.subscriber().expect("a subscriber in the freed slot");
    let mut publisher = topic.publisher().unwrap();
    match topic.publisher() {
        Err(ChannelError::Attach(AttachError::Busy { .. })) => {}
        other => panic!("a second publisher: {other:?}"),
    }
    for seq in 0..10 {
        publisher.publish_timeout(&tick(seq), DEADLINE).unwrap();
    }
    drop(publisher);
    for seq in 0..10 {
        check_tick(&*next!(a, "a"), seq);
        check_tick(&*next!(c, "c"), seq);
    }
    assert_disconnected(&mut a, "a, publisher dropped");
    // A new publisher continues the numbering where the first left off.
    let mut publisher = topic
        .publisher()
        .expect("a publisher after the first dropped");
    for seq in 10..20 {
        publisher.publish_timeout(&tick(seq), DEADLINE).unwrap();
    }
    for seq in 10..20 {
        check_tick(&*next!(a, "a, second publisher"), seq);
        check_tick(&*next!(c, "c, second publisher"), seq);
    }
    drop((a, c, publisher, topic));
    prefix.assert_only(&[]);
}

#[test]
fn too_large_a_message_is_refused_with_the_capacity_that_would_do() {
    let _watchdog = Watchdog::new("too_large", TEST_LIMIT);
    let prefix = Prefix::new("too-large");
    let topic = create::<String>(&prefix.name("topic"), SMALL_CAP, BroadcastPolicy::Block);
    let mut publisher = topic.publisher().unwrap();
    let mut sub = topic.subscriber().unwrap();
    let big = "x".repeat(3000);
    match publisher.publish(&big) {
        Err(SendError::Failed(SendFailure::TooLarge {
            size,
            max,
            capacity,
            needed,
        })) => {
            assert!(size >= 3000, "size {size}");
            assert_eq!((max, capacity), (SMALL_CAP / 2 - 24, SMALL_CAP));
            assert_eq!(needed, Some(8192));
        }
        other => panic!("a 3000-byte message in a 4 KiB ring: {other:?}"),
    }
    assert!(matches!(
        publisher.try_publish(&big),
        Err(TrySendError::Failed(SendFailure::TooLarge { .. }))
    ));
    assert_empty(&mut sub, "after a refused message");
    publisher.publish(&"small".to_owned()).unwrap();
    assert_eq!(next!(sub, "after the refused one").as_str(), "small");
    drop((sub, publisher, topic));
    prefix.assert_only(&[]);
}

// ---- between processes ----

#[test]
fn child_subscribers_in_every_access_mode_get_every_rich_message_in_order() {
    let _watchdog = Watchdog::new("child_subs", TEST_LIMIT);
    const COUNT: u64 = 300;
    let prefix = Prefix::new("child-subs");
    let name = prefix.name("topic");
    let topic = create::<Rich>(&name, RICH_CAP, BroadcastPolicy::Block);
    let mut publisher = topic.publisher().unwrap();
    let mut children: Vec<Proc> = ACCESS_MODES
        .iter()
        .map(|mode| Proc::spawn("sub_rich", &[&name, &COUNT, mode]))
        .collect();
    for (child, mode) in children.iter_mut().zip(ACCESS_MODES) {
        assert_eq!(child.expect("subscribed"), mode);
    }
    assert_eq!(topic.subscribers(), 3);
    for seq in 0..COUNT {
        if let Err(e) = publisher.publish_timeout(&rich(seq), DEADLINE) {
            children[0].fail(format!("publish {seq}: {e}"));
        }
    }
    drop(publisher);
    for child in &mut children {
        assert_eq!(child.expect("verified"), COUNT.to_string());
        child.wait_success();
    }
    drop(topic);
    prefix.assert_only(&[]);
}

#[test]
fn child_publisher_feeds_subscribers_and_a_late_one_gets_the_history() {
    let _watchdog = Watchdog::new("child_pub", TEST_LIMIT);
    let prefix = Prefix::new("child-pub");
    let name = prefix.name("topic");
    let topic = Topic::<Tick>::builder(&name)
        .capacity(SMALL_CAP)
        .history(10)
        .create()
        .unwrap();
    let mut early = topic.subscriber().unwrap();
    let mut child = Proc::spawn("pub_ticks", &[&name, &0, &50]);
    // A 4 KiB ring does not hold 50 ticks: the child waits for `early` as it reads.
    for seq in 0..50 {
        match early.recv_timeout(DEADLINE) {
            Ok(got) => check_tick(&got, seq),
            Err(e) => child.fail(format!("recv {seq}: {e}")),
        }
    }
    assert_eq!(child.expect("published"), "50");
    let mut late = topic
        .subscriber_from(Start::History(10), access("validated"))
        .unwrap();
    for seq in 40..50 {
        check_tick(&*next!(late, format!("history {seq}")), seq);
    }
    assert_empty(&mut late, "after the history");
    child.wait_success();
    assert_disconnected(&mut early, "early, the child publisher ended");
    assert_disconnected(&mut late, "late, the child publisher ended");
    // A second child publisher continues the stream for the same subscribers (once it is
    // attached: until then they see no publisher, Disconnected).
    let mut child = Proc::spawn("pub_ticks", &[&name, &50, &60]);
    assert_eq!(child.expect("published"), "60");
    for seq in 50..60 {
        check_tick(&*next!(early, format!("early, second child, {seq}")), seq);
        check_tick(&*next!(late, format!("late, second child, {seq}")), seq);
    }
    child.wait_success();
    drop((early, late, topic));
    prefix.assert_only(&[]);
}

#[test]
fn child_joining_mid_stream_gets_exactly_the_messages_published_after_it_subscribed() {
    let _watchdog = Watchdog::new("child_mid_stream", TEST_LIMIT);
    let prefix = Prefix::new("child-mid");
    let name = prefix.name("topic");
    let topic = create::<Tick>(&name, SMALL_CAP, BroadcastPolicy::Block);
    let mut publisher = topic.publisher().unwrap();
    let mut sub = topic.subscriber().unwrap();
    let reader = thread::spawn(move || {
        for seq in 0..400 {
            check_tick(&*next!(sub, format!("parent subscriber, {seq}")), seq);
        }
        assert_disconnected(&mut sub, "parent subscriber");
    });
    for seq in 0..200 {
        publisher.publish_timeout(&tick(seq), DEADLINE).unwrap();
    }
    let mut child = Proc::spawn("sub_ticks", &[&name, &200, &400]);
    assert_eq!(child.expect("subscribed"), "200");
    for seq in 200..400 {
        if let Err(e) = publisher.publish_timeout(&tick(seq), DEADLINE) {
            child.fail(format!("publish {seq}: {e}"));
        }
    }
    drop(publisher);
    assert_eq!(child.expect("verified"), "200");
    child.wait_success();
    reader.join().expect("the parent's subscriber");
    drop(topic);
    prefix.assert_only(&[]);
}

#[test]
fn child_lapped_while_not_reading_gets_the_exact_loss_in_every_access_mode() {
    let _watchdog = Watchdog::new("child_lapped", TEST_LIMIT);
    const TOTAL: u64 = 5000;
    for mode in ACCESS_MODES {
        let prefix = Prefix::new("child-lap");
        let name = prefix.name("topic");
        let topic = create::<Tick>(&name, SMALL_CAP, BroadcastPolicy::Lap);
        let mut publisher = topic.publisher().unwrap();
        let mut child = Proc::spawn("sub_lapped", &[&name, &TOTAL, &mode]);
        assert_eq!(child.expect("subscribed"), mode);
        for seq in 0..TOTAL {
            publisher.try_publish(&tick(seq)).unwrap();
        }
        drop(publisher);
        child.close_stdin();
        let report = child.expect("lost");
        let (lost, laps) = report.split_once(' ').unwrap();
        let (lost, laps): (u64, u64) = (lost.parse().unwrap(), laps.parse().unwrap());
        assert!(lost > 0 && lost < TOTAL, "{mode}: lost {lost} of {TOTAL}");
        assert_eq!(
            laps, 1,
            "{mode}: lapped once (it read nothing while the publisher ran)"
        );
        child.wait_success();
        drop(topic);
        prefix.assert_only(&[]);
    }
}
