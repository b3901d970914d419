//! Request/reply with [`Server`] and [`Client`], in one process and between real processes.
//!
//! | test | what it shows |
//! |------|---------------|
//! | `call_*` | a call gets the reply to its own request: ids count from 1 per client, contents computed from the request |
//! | `pipelining_*` | `send_request` many, then `recv_reply` many: replies in order, each with its request's id |
//! | `*_clients_*_own_replies` | many clients (threads, then processes) calling at once: each gets only its own replies (ids and contents); the server sees one stable client id per client |
//! | `call_timeout_*` | a call that times out returns `Timeout`; its late reply is dropped by the next call |
//! | `too_large_*` | a request larger than the request ring, or a reply larger than the client's reply ring, is refused with `TooLarge`; the service works on |
//! | `*_does_not_read_*` | a live client that does not read its replies: the reply waits the reply timeout and returns `Stuck`, the server goes on; once the client reads, it is served again |
//! | `connect_*` | connecting with other types or another version, to no service, or beyond the client slots fails with a typed error and leaves nothing behind |
//! | `dropped_client_*` | a client that drops says goodbye: its reply ring is gone and the server forgets it |
//! | `child_server_*` | a server in another process |
//!
//! The service ends have no access-mode option: requests and replies are validated in place.
//! Every segment is named under the test's [`Prefix`]; each test ends by checking that nothing
//! of it is left in `/dev/shm`.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use common::{
    check_shape, child_role, say, shm_path, text, Prefix, Proc, Shape, Watchdog, DEADLINE,
    TEST_LIMIT,
};
use rkyv::{Archive, Deserialize, Serialize};
use shmesh::channel::{ChannelError, RecvError, SendFailure};
use shmesh::service::{CallError, Client, ReplyError, Server, ServiceError};
use shmesh_ring::{AttachError, SegmentError};

/// A request: who asks, its number, and data the answer is computed from.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
struct Ask {
    who: String,
    n: u64,
    text: String,
    values: Vec<u64>,
    /// The length of the text the answer should carry (to make replies of any size).
    pad: u32,
}

/// A reply, computed from the deserialized request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
struct Answer {
    who: String,
    n: u64,
    reversed: String,
    sum: u64,
    shape: Shape,
    pad: String,
}

/// Another request type, for schema mismatches.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct Other {
    x: u64,
}

fn ask(who: &str, n: u64) -> Ask {
    Ask {
        who: who.to_owned(),
        n,
        text: text(n ^ who.len() as u64, (n % 50) as usize),
        values: (0..n % 6).map(|i| n * 10 + i).collect(),
        pad: 0,
    }
}

fn answer(a: &Ask) -> Answer {
    Answer {
        who: a.who.clone(),
        n: a.n,
        reversed: a.text.chars().rev().collect(),
        sum: a.values.iter().sum(),
        shape: if a.n % 2 == 0 {
            Shape::Point(a.n as i32, a.values.len() as i64)
        } else {
            Shape::Labeled {
                label: a.who.clone(),
                weights: a.values.iter().map(|&v| v as f64).collect(),
            }
        },
        pad: "p".repeat(a.pad as usize),
    }
}

/// Checks a reply against the answer to `want`.
#[track_caller]
fn check_answer(got: &ArchivedAnswer, want: &Ask) {
    let a = answer(want);
    assert_eq!(
        got.who.as_str(),
        a.who,
        "reply for {}/{}: who",
        want.who,
        want.n
    );
    assert_eq!(
        got.n.to_native(),
        a.n,
        "reply for {}/{}: n",
        want.who,
        want.n
    );
    assert_eq!(
        got.reversed.as_str(),
        a.reversed,
        "reply {}/{}",
        want.who,
        want.n
    );
    assert_eq!(
        got.sum.to_native(),
        a.sum,
        "reply {}/{}: sum",
        want.who,
        want.n
    );
    check_shape(&got.shape, &a.shape, "reply shape");
    assert_eq!(
        got.pad.len(),
        a.pad.len(),
        "reply {}/{}: pad",
        want.who,
        want.n
    );
}

/// What a server saw of its clients: one client id per `who`, and each id for one `who`.
#[derive(Debug, Default)]
struct Seen {
    ids: HashMap<String, u64>,
}

impl Seen {
    #[track_caller]
    fn client(&mut self, who: &str, id: u64) {
        let known = *self.ids.entry(who.to_owned()).or_insert(id);
        assert_eq!(known, id, "client {who} changed ids");
        let owners: Vec<&String> = self
            .ids
            .iter()
            .filter(|(_, &i)| i == id)
            .map(|(w, _)| w)
            .collect();
        assert_eq!(owners.len(), 1, "client id {id:#x} used by {owners:?}");
    }
}

/// Serves `count` requests, answering each with [`answer`] of the deserialized request, and
/// checking that request ids count from 1 per client.
fn serve(server: &mut Server<Ask, Answer>, count: u64, seen: &mut Seen) {
    let mut next_id: HashMap<u64, u64> = HashMap::new();
    for i in 0..count {
        let request = match server.recv_timeout(DEADLINE) {
            Ok(r) => r,
            Err(e) => panic!("server: request {i} of {count}: {e}"),
        };
        let ask: Ask = rkyv::deserialize::<Ask, rkyv::rancor::Error>(&*request).unwrap();
        seen.client(&ask.who, request.client());
        let want = next_id.entry(request.client()).or_insert(1);
        assert_eq!(request.id(), *want, "request ids of {}", ask.who);
        *want += 1;
        request
            .reply(&answer(&ask))
            .unwrap_or_else(|e| panic!("reply to {}/{}: {e}", ask.who, ask.n));
    }
}

fn create(prefix: &Prefix) -> (String, Server<Ask, Answer>) {
    let name = prefix.name("svc");
    let server = Server::<Ask, Answer>::builder(&name)
        .capacity(16 * 1024)
        .serve()
        .unwrap_or_else(|e| panic!("serve {name}: {e}"));
    (name, server)
}

fn connect(name: &str) -> Client<Ask, Answer> {
    Client::<Ask, Answer>::builder(name)
        .reply_capacity(8192)
        .connect()
        .unwrap_or_else(|e| panic!("connect {name}: {e}"))
}

/// Makes `calls` requests of `who` on `client`: one in three by `call`, the rest in pipelined
/// batches of up to 8; checks every reply's id and contents.
fn client_run(client: &mut Client<Ask, Answer>, who: &str, calls: u64) {
    let mut n = 0;
    let mut next_id = 1;
    while n < calls {
        if n % 3 == 0 {
            let want = ask(who, n);
            let reply = client
                .call_timeout(&want, DEADLINE)
                .unwrap_or_else(|e| panic!("{who}: call {n}: {e}"));
            assert_eq!(reply.id(), next_id, "{who}: id of call {n}");
            check_answer(&reply, &want);
            n += 1;
            next_id += 1;
        } else {
            let batch: Vec<Ask> = (n..(n + 8).min(calls)).map(|i| ask(who, i)).collect();
            let mut ids = Vec::new();
            for a in &batch {
                ids.push(
                    client
                        .send_request(a)
                        .unwrap_or_else(|e| panic!("{who}: send_request {}: {e}", a.n)),
                );
            }
            let want_ids: Vec<u64> = (next_id..next_id + batch.len() as u64).collect();
            assert_eq!(ids, want_ids, "{who}: ids of a pipelined batch");
            for (a, id) in batch.iter().zip(ids) {
                let reply = client
                    .recv_reply()
                    .unwrap_or_else(|e| panic!("{who}: recv_reply {}: {e}", a.n));
                assert_eq!(reply.id(), id, "{who}: reply order");
                check_answer(&reply, a);
            }
            n += batch.len() as u64;
            next_id += batch.len() as u64;
        }
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
        "client" => {
            let (name, who, calls): (&str, &str, u64) = (a.s(0), a.s(1), a.get(2));
            let mut client = connect(name);
            say("connected", client.id());
            client_run(&mut client, who, calls);
            say("done", calls);
        }
        "server" => {
            let (name, count): (&str, u64) = (a.s(0), a.get(1));
            let mut server = Server::<Ask, Answer>::builder(name)
                .capacity(16 * 1024)
                .serve()
                .unwrap_or_else(|e| panic!("serve {name}: {e}"));
            say("serving", name);
            serve(&mut server, count, &mut Seen::default());
            say("served", count);
            common::wait_for_parent();
        }
        other => panic!("unknown child role '{other}'"),
    }
}

// ---- in one process ----

#[test]
fn call_gets_the_reply_to_its_own_request() {
    let _watchdog = Watchdog::new("call", TEST_LIMIT);
    let prefix = Prefix::new("call");
    let (name, mut server) = create(&prefix);
    let mut client = connect(&name);
    let server_thread = thread::spawn(move || {
        serve(&mut server, 100, &mut Seen::default());
        server
    });
    for n in 0..100 {
        let want = ask("solo", n);
        let reply = client.call(&want).unwrap();
        assert_eq!(reply.id(), n + 1);
        check_answer(&reply, &want);
        assert_eq!(reply.deserialize().unwrap(), answer(&want));
    }
    let server = server_thread.join().expect("the server thread");
    assert_eq!(server.clients(), 1);
    drop((client, server));
    prefix.assert_only(&[]);
}

#[test]
fn pipelining_replies_come_in_order_each_with_its_requests_id() {
    let _watchdog = Watchdog::new("pipelining", TEST_LIMIT);
    let prefix = Prefix::new("pipelining");
    let (name, mut server) = create(&prefix);
    let mut client = connect(&name);
    // One thread: 40 requests in flight, then 40 replies.
    let asks: Vec<Ask> = (0..40).map(|n| ask("pipe", n)).collect();
    let ids: Vec<u64> = asks
        .iter()
        .map(|a| client.send_request(a).unwrap())
        .collect();
    assert_eq!(ids, (1..=40).collect::<Vec<u64>>());
    serve(&mut server, 40, &mut Seen::default());
    for (a, id) in asks.iter().zip(&ids) {
        let reply = client.recv_reply().unwrap();
        assert_eq!(reply.id(), *id);
        check_answer(&reply, a);
    }
    drop((client, server));
    prefix.assert_only(&[]);
}

#[test]
fn many_client_threads_each_get_only_their_own_replies() {
    let _watchdog = Watchdog::new("client_threads", TEST_LIMIT);
    const CLIENTS: usize = 4;
    const CALLS: u64 = 500;
    let prefix = Prefix::new("threads");
    let (name, mut server) = create(&prefix);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = connect(&name);
            thread::spawn(move || client_run(&mut client, &format!("t{c}"), CALLS))
        })
        .collect();
    let mut seen = Seen::default();
    serve(&mut server, CLIENTS as u64 * CALLS, &mut seen);
    for c in clients {
        c.join().expect("a client thread");
    }
    assert_eq!(seen.ids.len(), CLIENTS);
    // The clients said goodbye: the server forgets them on its next receive.
    common::wait_until("the server forgets the clients", || {
        let _ = server.recv_timeout(Duration::from_millis(1));
        server.clients() == 0
    });
    drop(server);
    prefix.assert_only(&[]);
}

#[test]
fn call_timeout_times_out_and_the_late_reply_is_dropped_by_the_next_call() {
    let _watchdog = Watchdog::new("call_timeout", TEST_LIMIT);
    let prefix = Prefix::new("call-timeout");
    let (name, mut server) = create(&prefix);
    let mut client = connect(&name);
    match client.call_timeout(&ask("late", 0), Duration::from_millis(30)) {
        Err(CallError::Timeout) => {}
        other => panic!("a call nobody answers: {:?}", other.map(|r| r.id())),
    }
    // The server answers both the timed-out request and the next one.
    let server_thread = thread::spawn(move || {
        serve(&mut server, 2, &mut Seen::default());
        server
    });
    let want = ask("late", 1);
    let reply = client.call_timeout(&want, DEADLINE).unwrap();
    assert_eq!(
        reply.id(),
        2,
        "the reply to the second request, not the late first"
    );
    check_answer(&reply, &want);
    drop(reply);
    let server = server_thread.join().unwrap();
    drop((client, server));
    prefix.assert_only(&[]);
}

#[test]
fn too_large_requests_and_replies_are_refused_and_the_service_works_on() {
    let _watchdog = Watchdog::new("too_large", TEST_LIMIT);
    let prefix = Prefix::new("too-large");
    let name = prefix.name("svc");
    let mut server = Server::<Ask, Answer>::builder(&name)
        .capacity(4096)
        .serve()
        .unwrap();
    let mut client = Client::<Ask, Answer>::builder(&name)
        .reply_capacity(4096)
        .connect()
        .unwrap();
    // A request larger than the request ring.
    let mut big = ask("big", 0);
    big.text = "x".repeat(3000);
    match client.send_request(&big) {
        Err(CallError::Send(SendFailure::TooLarge { capacity, .. })) => {
            assert_eq!(capacity, 4096)
        }
        other => panic!("a 3000-byte request in a 4 KiB ring: {other:?}"),
    }
    // A reply larger than the client's reply ring.
    let mut wants_big = ask("big", 1);
    wants_big.pad = 3000;
    let id = client.send_request(&wants_big).unwrap();
    assert_eq!(id, 1, "the refused request took no id");
    {
        let request = server.recv_timeout(DEADLINE).unwrap();
        let ask: Ask = rkyv::deserialize::<Ask, rkyv::rancor::Error>(&*request).unwrap();
        match request.reply(&answer(&ask)) {
            Err(ReplyError::Failed(SendFailure::TooLarge { capacity, .. })) => {
                assert_eq!(capacity, 4096)
            }
            other => panic!("a 3000-byte reply in a 4 KiB reply ring: {other:?}"),
        }
    }
    // The client got nothing for it, and both work on.
    assert!(matches!(
        client.call_timeout(&ask("big", 2), Duration::from_millis(20)),
        Err(CallError::Timeout)
    ));
    let want = ask("big", 3);
    let server_thread = thread::spawn(move || {
        // Request 2 (its call timed out), then request 3.
        for id in [2, 3] {
            let request = server.recv_timeout(DEADLINE).unwrap();
            assert_eq!(request.id(), id);
            let ask: Ask = rkyv::deserialize::<Ask, rkyv::rancor::Error>(&*request).unwrap();
            request.reply(&answer(&ask)).unwrap();
        }
        server
    });
    let reply = client.call_timeout(&want, DEADLINE).unwrap();
    assert_eq!(reply.id(), 3);
    check_answer(&reply, &want);
    drop(reply);
    let server = server_thread.join().unwrap();
    drop((client, server));
    prefix.assert_only(&[]);
}

#[test]
fn connect_fails_with_a_typed_error_for_other_types_no_service_or_no_free_slot() {
    let _watchdog = Watchdog::new("connect", TEST_LIMIT);
    let prefix = Prefix::new("connect");
    let name = prefix.name("svc");
    match Client::<Ask, Answer>::connect(&name) {
        Err(ServiceError::Channel(ChannelError::Segment(SegmentError::NotFound { .. }))) => {}
        other => panic!("connect to no service: {other:?}"),
    }
    let server = Server::<Ask, Answer>::builder(&name)
        .clients(2)
        .serve()
        .unwrap();
    match Server::<Ask, Answer>::create(&name) {
        Err(ServiceError::Channel(ChannelError::Segment(SegmentError::AlreadyExists {
            ..
        }))) => {}
        other => panic!("a second server: {other:?}"),
    }
    match Client::<Other, Answer>::connect(&name) {
        Err(ServiceError::Channel(ChannelError::SchemaMismatch(m))) => {
            assert!(m.ours.text.contains("Other"), "{m}");
            assert!(m.other.text.contains("Ask"), "{m}");
        }
        other => panic!("connect with another request type: {other:?}"),
    }
    match Client::<Ask, Other>::connect(&name) {
        Err(ServiceError::Channel(ChannelError::SchemaMismatch(m))) => {
            assert!(m.ours.text.contains("Other"), "{m}");
        }
        other => panic!("connect with another reply type: {other:?}"),
    }
    match Client::<Ask, Answer>::builder(&name).version(3).connect() {
        Err(ServiceError::Channel(ChannelError::SchemaMismatch(_))) => {}
        other => panic!("connect with another version: {other:?}"),
    }
    let (a, b) = (connect(&name), connect(&name));
    assert_ne!(a.id(), b.id());
    match Client::<Ask, Answer>::connect(&name) {
        Err(ServiceError::Channel(ChannelError::Attach(AttachError::NoFreeSlot {
            slots: 2,
            ..
        }))) => {}
        other => panic!("a third client of a 2-client service: {other:?}"),
    }
    // Only the service and the two clients' reply rings exist: the refused ones left nothing.
    let mut live = vec![
        name.clone(),
        format!("{name}.reply.{:x}", a.id()),
        format!("{name}.reply.{:x}", b.id()),
    ];
    live.sort();
    assert_eq!(prefix.segments(), live);
    drop((a, b, server));
    prefix.assert_only(&[]);
}

#[test]
fn dropped_client_removes_its_reply_ring_and_the_server_forgets_it() {
    let _watchdog = Watchdog::new("dropped_client", TEST_LIMIT);
    let prefix = Prefix::new("dropped");
    let (name, mut server) = create(&prefix);
    let mut client = connect(&name);
    let reply_ring = shm_path(&format!("{name}.reply.{:x}", client.id()));
    assert!(reply_ring.exists());
    client.send_request(&ask("gone", 0)).unwrap();
    serve(&mut server, 1, &mut Seen::default());
    assert_eq!(server.clients(), 1);
    check_answer(&client.recv_reply().unwrap(), &ask("gone", 0));
    drop(client);
    assert!(!reply_ring.exists(), "the client's reply ring outlived it");
    assert!(matches!(
        server.recv_timeout(Duration::from_millis(10)),
        Err(RecvError::Timeout)
    ));
    assert_eq!(server.clients(), 0, "the server did not forget the client");
    drop(server);
    prefix.assert_only(&[]);
}

#[test]
fn a_client_that_does_not_read_its_replies_makes_the_reply_stuck_not_the_server() {
    let _watchdog = Watchdog::new("stuck", TEST_LIMIT);
    let prefix = Prefix::new("stuck");
    let name = prefix.name("svc");
    let wait = Duration::from_millis(30);
    let mut server = Server::<Ask, Answer>::builder(&name)
        .capacity(64 * 1024)
        .reply_timeout(wait)
        .serve()
        .unwrap();
    let mut client = Client::<Ask, Answer>::builder(&name)
        .reply_capacity(4096)
        .connect()
        .unwrap();
    let asks: Vec<Ask> = (0..100).map(|n| ask("slow", n)).collect();
    for a in &asks {
        client.send_request(a).unwrap();
    }
    // Replies fill the 4 KiB reply ring; then a reply waits `wait` and reports Stuck.
    let mut replied = 0usize;
    let stuck_at = loop {
        let request = server.recv_timeout(DEADLINE).unwrap();
        let n = request.n.to_native();
        match request.reply(&answer(&asks[n as usize])) {
            Ok(()) => replied += 1,
            Err(ReplyError::Stuck { client: c, waited }) => {
                assert_eq!((c, waited), (client.id(), wait));
                break n;
            }
            Err(e) => panic!("reply {n}: {e}"),
        }
        assert!(replied < asks.len(), "a 4 KiB reply ring took 100 replies");
    };
    assert_eq!(stuck_at, replied as u64);
    // The client is still served once it reads (the stuck reply was not sent).
    for a in &asks[..replied] {
        check_answer(&client.recv_reply().unwrap(), a);
    }
    let request = server.recv_timeout(DEADLINE).unwrap();
    let n = request.n.to_native();
    request.reply(&answer(&asks[n as usize])).unwrap();
    let reply = client.recv_reply().unwrap();
    assert_eq!(reply.id(), n + 1);
    check_answer(&reply, &asks[n as usize]);
    drop(reply);
    assert_eq!(server.clients(), 1);
    drop((client, server));
    prefix.assert_only(&[]);
}

// ---- between processes ----

#[test]
fn many_client_processes_each_get_only_their_own_replies() {
    let _watchdog = Watchdog::new("client_processes", TEST_LIMIT);
    const CLIENTS: usize = 4;
    const CALLS: u64 = 1000;
    let prefix = Prefix::new("procs");
    let (name, mut server) = create(&prefix);
    let mut children: Vec<Proc> = (0..CLIENTS)
        .map(|c| Proc::spawn("client", &[&name, &format!("p{c}"), &CALLS]))
        .collect();
    let mut seen = Seen::default();
    serve(&mut server, CLIENTS as u64 * CALLS, &mut seen);
    let mut ids = Vec::new();
    for child in &mut children {
        let id: u64 = child.expect("connected").parse().unwrap();
        assert_eq!(
            id >> 32,
            u64::from(child.pid()),
            "a client id starts with its pid"
        );
        ids.push(id);
        assert_eq!(child.expect("done"), CALLS.to_string());
        child.wait_success();
    }
    // The server saw each child under the id the child has.
    for (c, id) in ids.iter().enumerate() {
        assert_eq!(seen.ids.get(&format!("p{c}")), Some(id), "client p{c}");
    }
    common::wait_until("the server forgets the clients", || {
        let _ = server.recv_timeout(Duration::from_millis(1));
        server.clients() == 0
    });
    assert_eq!(prefix.segments(), vec![name.clone()]);
    drop(server);
    prefix.assert_only(&[]);
}

#[test]
fn child_server_answers_clients_in_this_process() {
    let _watchdog = Watchdog::new("child_server", TEST_LIMIT);
    let prefix = Prefix::new("child-server");
    let name = prefix.name("svc");
    let mut child = Proc::spawn("server", &[&name, &300]);
    assert_eq!(child.expect("serving"), name);
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let mut client = connect(&name);
            thread::spawn(move || client_run(&mut client, &format!("c{c}"), 100))
        })
        .collect();
    for c in clients {
        c.join().expect("a client thread");
    }
    assert_eq!(child.expect("served"), "300");
    child.wait_success();
    prefix.assert_only(&[]);
}
