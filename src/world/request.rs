//! Non-blocking point-to-point: [`World::isend`], [`World::irecv`] and their requests.

use std::time::Instant;

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::Archived;

use super::{
    write_some, Element, Envelope, Needs, Outflow, Outgoing, Posted, ReqState, Source, Spin,
    Status, Tag, Wire, World, WorldError,
};

/// A pending [`isend`](World::isend) or [`irecv`](World::irecv): complete it with
/// [`World::wait`], [`World::wait_all`] or [`World::wait_any`], or poll it with
/// [`World::test`]. Dropping it abandons the result (a send still goes out; a receive stays
/// posted and takes its message).
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a request does nothing visible until it is waited for"]
pub struct Request {
    id: u64,
}

impl Request {
    /// The request's number, unique in its world.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// How a request completed.
#[derive(Debug)]
pub enum Completion {
    /// The send's payload is all in the ring.
    Sent,
    /// The receive got this message.
    Received(OwnedMessage),
}

impl Completion {
    /// The message, if this was a receive.
    pub fn into_message(self) -> Option<OwnedMessage> {
        match self {
            Completion::Received(message) => Some(message),
            Completion::Sent => None,
        }
    }
}

/// A message this rank holds (a completed [`irecv`](World::irecv)): its bytes, 16-byte
/// aligned, viewed as an archived `T` or as elements on demand.
#[derive(Debug)]
pub struct OwnedMessage {
    status: Status,
    bytes: AlignedVec,
}

impl OwnedMessage {
    /// Who sent it, with which tag, how long.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The sender's rank.
    pub fn source(&self) -> usize {
        self.status.source
    }

    /// The tag.
    pub fn tag(&self) -> u32 {
        self.status.tag
    }

    /// The payload.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The payload validated as an archived `T`.
    ///
    /// # Errors
    ///
    /// [`WorldError::Invalid`] when it is not a valid `T`.
    pub fn access<T: Wire>(&self) -> Result<&Archived<T>, WorldError> {
        rkyv::access::<Archived<T>, rancor::Error>(&self.bytes).map_err(|cause| {
            WorldError::Invalid {
                rank: self.status.source,
                tag: self.status.tag,
                type_name: std::any::type_name::<T>(),
                cause,
            }
        })
    }

    /// The payload as elements.
    ///
    /// # Errors
    ///
    /// [`WorldError::Misfit`] when it is not a whole number of `E`.
    pub fn to_vec<E: Element>(&self) -> Result<Vec<E>, WorldError> {
        let size = std::mem::size_of::<E>();
        if self.bytes.len() % size != 0 {
            return Err(WorldError::Misfit {
                rank: self.status.source,
                tag: self.status.tag,
                len: self.bytes.len() as u64,
                size,
            });
        }
        let mut out = vec![E::zeroed(); self.bytes.len() / size];
        bytemuck::cast_slice_mut::<E, u8>(&mut out).copy_from_slice(&self.bytes);
        Ok(out)
    }

    fn from_envelope(env: Envelope) -> OwnedMessage {
        OwnedMessage {
            status: Status {
                source: env.source,
                tag: env.tag,
                len: env.bytes.len(),
            },
            bytes: env.bytes,
        }
    }
}

impl World {
    fn new_request(&mut self, state: ReqState) -> Request {
        let id = self.next_request;
        self.next_request += 1;
        self.inbox.requests.insert(id, state);
        Request { id }
    }

    /// Starts sending `value` to `dest` with `tag` and returns at once: serialized now (the
    /// caller may change `value` right after), written to the ring as it has room, during
    /// this and later calls on the world. Sends to one rank leave in the order started,
    /// blocking and non-blocking alike.
    ///
    /// # Errors
    ///
    /// `NoSuchRank`, `ReservedTag`, `Serialize`, `Corrupt`, `PeerGone(dest)`.
    pub fn isend<T: Wire>(
        &mut self,
        dest: usize,
        tag: u32,
        value: &T,
    ) -> Result<Request, WorldError> {
        self.check_rank(dest)?;
        Self::check_tag(tag)?;
        let bytes = self.serialize(value)?;
        self.isend_bytes(dest, tag, &bytes)
    }

    /// Starts sending a slice of elements to `dest` with `tag`: as [`isend`](Self::isend);
    /// copied into the ring at once if it has room, otherwise into a queue.
    ///
    /// # Errors
    ///
    /// As [`isend`](Self::isend).
    pub fn isend_slice<E: Element>(
        &mut self,
        dest: usize,
        tag: u32,
        data: &[E],
    ) -> Result<Request, WorldError> {
        self.check_rank(dest)?;
        Self::check_tag(tag)?;
        self.isend_bytes(dest, tag, bytemuck::cast_slice(data))
    }

    fn isend_bytes(&mut self, dest: usize, tag: u32, data: &[u8]) -> Result<Request, WorldError> {
        if dest == self.id.rank {
            let mut bytes = AlignedVec::with_capacity(data.len());
            bytes.extend_from_slice(data);
            self.inbox.deliver(Envelope {
                source: dest,
                tag,
                bytes,
            });
            return Ok(self.new_request(ReqState::Sent));
        }
        let mut flow = Outflow::default();
        if self.peers[dest].outbox.is_empty() {
            let fragment = self.fragment;
            let tx = self.peers[dest].tx.as_mut().expect("rings to other ranks");
            if write_some(tx, dest, tag, data, &mut flow, fragment)? {
                return Ok(self.new_request(ReqState::Sent));
            }
        }
        let request = self.new_request(ReqState::Sending(dest));
        self.peers[dest].outbox.push_back(Outgoing {
            request: request.id,
            tag,
            data: data.to_vec(),
            flow,
        });
        Ok(request)
    }

    /// Posts a receive from `source` with `tag` and returns at once. Messages go to the
    /// posted receives in the order they were posted (before a blocking receive that starts
    /// later); the message is copied out of the ring into the request.
    ///
    /// # Errors
    ///
    /// `NoSuchRank`, `ReservedTag`.
    pub fn irecv(&mut self, source: Source, tag: Tag) -> Result<Request, WorldError> {
        self.check_source(source)?;
        Self::check_tag_match(tag)?;
        if let Some(env) = self.inbox.take(source, tag) {
            return Ok(self.new_request(ReqState::Received(env)));
        }
        let request = self.new_request(ReqState::Receiving(source));
        self.inbox.posted.push_back(Posted {
            request: request.id,
            source,
            tag,
        });
        Ok(request)
    }

    /// Moves every queued send on and takes in every message that arrived, without waiting.
    fn progress(&mut self) -> Result<(), WorldError> {
        self.push_all_outboxes();
        let me = self.id.rank;
        for src in (0..self.id.size).filter(|&r| r != me) {
            while self.drain_one(src)? {}
        }
        Ok(())
    }

    /// Fails the pending request `id` if the rank it needs is gone (for a receive from any
    /// source: if every other rank is). What those ranks sent before is delivered first.
    fn check_request(&mut self, id: u64) -> Result<(), WorldError> {
        let failure = match self.inbox.requests.get(&id) {
            Some(ReqState::Receiving(Source::Rank(r))) => {
                let r = *r;
                self.gone_and_drained(r, None)?
                    .then_some(WorldError::PeerGone(r))
            }
            Some(ReqState::Receiving(Source::Any)) => {
                let me = self.id.rank;
                let mut first = None;
                let mut all = true;
                for r in (0..self.id.size).filter(|&r| r != me) {
                    if self.gone_and_drained(r, None)? {
                        first.get_or_insert(r);
                    } else {
                        all = false;
                    }
                }
                first.filter(|_| all).map(WorldError::PeerGone)
            }
            // A queued send fails when its ring is full and its reader gone (`push_outbox`),
            // as a blocking send would.
            _ => None,
        };
        // The drains above may have completed the request: only a pending one fails.
        let pending = matches!(
            self.inbox.requests.get(&id),
            Some(ReqState::Receiving(_) | ReqState::Sending(_))
        );
        if let (Some(e), true) = (failure, pending) {
            if let Some(i) = self.inbox.posted.iter().position(|p| p.request == id) {
                self.inbox.posted.remove(i);
            }
            if let Some(ReqState::Sending(dest)) = self.inbox.requests.get(&id) {
                let dest = *dest;
                self.peers[dest].outbox.retain(|o| o.request != id);
            }
            self.inbox.requests.insert(id, ReqState::Failed(e));
        }
        Ok(())
    }

    /// Whether `request` has completed (successfully or not): then [`wait`](Self::wait)
    /// returns at once. Moves every pending operation on; never waits.
    ///
    /// # Errors
    ///
    /// `UnknownRequest`, `Protocol`, `Corrupt` (of the rings, not of this request: its own
    /// failure is returned by `wait`).
    pub fn test(&mut self, request: &Request) -> Result<bool, WorldError> {
        self.progress()?;
        self.check_request(request.id)?;
        match self.inbox.requests.get(&request.id) {
            None => Err(WorldError::UnknownRequest(request.id)),
            Some(ReqState::Sending(_) | ReqState::Receiving(_)) => Ok(false),
            Some(_) => Ok(true),
        }
    }

    /// Forgets request `id`: a posted receive is withdrawn (a queued send still goes out).
    fn cancel(&mut self, id: u64) {
        if let Some(i) = self.inbox.posted.iter().position(|p| p.request == id) {
            self.inbox.posted.remove(i);
        }
        self.inbox.requests.remove(&id);
    }

    /// Takes the result of a finished request.
    fn finish(&mut self, id: u64) -> Option<Result<Completion, WorldError>> {
        match self.inbox.requests.get(&id)? {
            ReqState::Sending(_) | ReqState::Receiving(_) => None,
            _ => match self.inbox.requests.remove(&id)? {
                ReqState::Sent => Some(Ok(Completion::Sent)),
                ReqState::Received(env) => {
                    Some(Ok(Completion::Received(OwnedMessage::from_envelope(env))))
                }
                ReqState::Failed(e) => Some(Err(e)),
                ReqState::Sending(_) | ReqState::Receiving(_) => unreachable!("checked above"),
            },
        }
    }

    /// Waits until `request` completes.
    ///
    /// # Errors
    ///
    /// The request's failure (`PeerGone` of the rank it needed, ...), or `UnknownRequest`.
    pub fn wait(&mut self, request: Request) -> Result<Completion, WorldError> {
        let mut list = vec![request];
        self.wait_any(&mut list).map(|(_, completion)| completion)
    }

    /// Waits until every request completes; the results in the same order.
    ///
    /// # Errors
    ///
    /// The first failure among them, once all of them ended (none is left pending).
    pub fn wait_all(&mut self, requests: Vec<Request>) -> Result<Vec<Completion>, WorldError> {
        let mut done: Vec<Option<Result<Completion, WorldError>>> = Vec::new();
        done.resize_with(requests.len(), || None);
        let mut pending: Vec<(usize, Request)> = requests.into_iter().enumerate().collect();
        while !pending.is_empty() {
            let mut list: Vec<Request> =
                pending.iter().map(|(_, r)| Request { id: r.id }).collect();
            let (i, outcome) = match self.wait_any_inner(&mut list) {
                Ok(done) => done,
                Err(e) => {
                    // None is left pending: a posted receive nobody waits for would take a
                    // message a later receive asks for.
                    for (_, r) in &pending {
                        self.cancel(r.id);
                    }
                    return Err(e);
                }
            };
            let (slot, _) = pending.remove(i);
            done[slot] = Some(outcome);
        }
        let mut out = Vec::with_capacity(done.len());
        let mut first_error = None;
        for result in done.into_iter().flatten() {
            match result {
                Ok(c) => out.push(c),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Waits until one of `requests` completes, removes it from the list and returns its
    /// index and result (the first completed in list order, if several are).
    ///
    /// # Errors
    ///
    /// The failure of the request that completed (it is removed too), `UnknownRequest`, or
    /// `Mismatch` for an empty list.
    pub fn wait_any(
        &mut self,
        requests: &mut Vec<Request>,
    ) -> Result<(usize, Completion), WorldError> {
        let (i, outcome) = self.wait_any_inner(requests)?;
        outcome.map(|completion| (i, completion))
    }

    /// Waits until one of `requests` completes; `(index, result)`, removed from the list.
    /// The outer error is the world's own (an empty list, an unknown request, a corrupt ring).
    fn wait_any_inner(
        &mut self,
        requests: &mut Vec<Request>,
    ) -> Result<(usize, Result<Completion, WorldError>), WorldError> {
        if requests.is_empty() {
            return Err(WorldError::Mismatch(
                "wait_any: no requests to wait for".into(),
            ));
        }
        if let Some(r) = requests
            .iter()
            .find(|r| !self.inbox.requests.contains_key(&r.id))
        {
            return Err(WorldError::UnknownRequest(r.id));
        }
        let mut spin = Spin::new();
        // Liveness costs a system call per rank: look every millisecond, not every poll.
        let mut next_check = Instant::now();
        loop {
            self.progress()?;
            let check = Instant::now() >= next_check;
            if check {
                next_check = Instant::now() + super::LIVENESS_EVERY;
            }
            for i in 0..requests.len() {
                let id = requests[i].id;
                if check {
                    self.check_request(id)?;
                }
                if let Some(outcome) = self.finish(id) {
                    drop(requests.remove(i));
                    return Ok((i, outcome));
                }
            }
            self.idle(&mut spin, Needs::Nothing, None, None)?;
        }
    }
}
