//! Collectives: barrier, broadcast, scatter, gather, all-gather, reduce, all-reduce.
//!
//! Every rank calls the same collectives in the same order; each collective has its own tag
//! (from a counter every rank keeps in step), so its messages never mix with another's or with
//! point-to-point ones. The algorithms are the classic ones for a machine where every pair of
//! ranks has its own channel (Thakur, Rabenseifner and Gropp, "Optimization of Collective
//! Communication Operations in MPICH", 2005), chosen so that no rank waits for a ring another
//! rank fills:
//!
//! | collective | algorithm | steps |
//! |---|---|---|
//! | barrier | dissemination | ⌈log₂ n⌉ exchanges of empty messages |
//! | broadcast | binomial tree | ⌈log₂ n⌉ rounds |
//! | scatter, gather | linear from / to the root (the root's rings are independent) | n − 1 messages |
//! | all-gather | ring | n − 1 exchanges of one block |
//! | reduce | binomial tree | ⌈log₂ n⌉ rounds |
//! | all-reduce, ≤ 64 KiB or fewer elements than ranks | recursive doubling (non-powers of two fold the extra ranks in first) | ⌊log₂ n⌋ (+ 2) exchanges of the whole buffer |
//! | all-reduce, larger | ring reduce-scatter, then ring all-gather | 2 (n − 1) exchanges of 1/n of the buffer |
//!
//! Received data goes from the ring straight into the caller's buffer, or is combined from the
//! ring into it: no intermediate copy. Reductions combine in a fixed order, so every rank of an
//! all-reduce ends with bit-identical results (floats included). User closures must be
//! associative and commutative, as MPI asks of its operations.

use std::ops::Range;
use std::time::Instant;

use super::element::{elements, max, min};
use super::{write_some, Element, Inflow, Needs, Op, Outflow, Sink, Spin, Step, World, WorldError};

/// All-reduce buffers up to this many bytes use recursive doubling; larger ones the ring.
pub const ALL_REDUCE_RING_ABOVE: usize = 64 << 10;

/// A sink that copies a message of exactly `out.len()` bytes into `out`.
fn copy_into<'a>(
    out: &'a mut [u8],
    src: usize,
    what: &'static str,
) -> impl FnMut(u64, &[u8], u64) -> Result<(), WorldError> + 'a {
    move |off, bytes, total| {
        if total != out.len() as u64 {
            return Err(mismatch(what, src, total, out.len()));
        }
        out[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

/// A sink that combines a message of `acc.len()` elements into `acc`: `acc[i] = f(acc[i], in[i])`
/// when this side is first in the order, `f(in[i], acc[i])` otherwise.
fn combine_into<'a, E: Element, F: Fn(E, E) -> E>(
    acc: &'a mut [E],
    f: &'a F,
    mine_first: bool,
    src: usize,
) -> impl FnMut(u64, &[u8], u64) -> Result<(), WorldError> + 'a {
    let mut scratch: Vec<E> = Vec::new();
    let size = std::mem::size_of::<E>();
    move |off, bytes, total| {
        if total != std::mem::size_of_val(acc) as u64 {
            return Err(mismatch(
                "reduction",
                src,
                total,
                std::mem::size_of_val(acc),
            ));
        }
        if off as usize % size != 0 || bytes.len() % size != 0 {
            return Err(WorldError::Protocol {
                rank: src,
                what: format!(
                    "a fragment at byte {off} of {} bytes splits an element",
                    bytes.len()
                ),
            });
        }
        let start = off as usize / size;
        let incoming = elements::<E>(bytes, &mut scratch);
        let target = &mut acc[start..start + incoming.len()];
        if mine_first {
            target
                .iter_mut()
                .zip(incoming)
                .for_each(|(a, &b)| *a = f(*a, b));
        } else {
            target
                .iter_mut()
                .zip(incoming)
                .for_each(|(a, &b)| *a = f(b, *a));
        }
        Ok(())
    }
}

fn mismatch(what: &str, src: usize, got: u64, want: usize) -> WorldError {
    WorldError::Mismatch(format!(
        "{what}: rank {src} sent {got} bytes where this rank expects {want}: every rank must \
         call the collective with buffers of matching sizes"
    ))
}

/// The `i`-th of `n` nearly equal blocks of `len` elements.
fn block(i: usize, n: usize, len: usize) -> Range<usize> {
    (i * len / n)..((i + 1) * len / n)
}

/// Two disjoint ranges of `buf`: one to read, one to write.
fn two_blocks<E>(buf: &mut [E], read: Range<usize>, write: Range<usize>) -> (&[E], &mut [E]) {
    if read.start < write.start || (read.start == write.start && read.is_empty()) {
        let (lo, hi) = buf.split_at_mut(write.start);
        (&lo[read], &mut hi[..write.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(read.start);
        (&hi[..read.len()], &mut lo[write])
    }
}

fn as_bytes<E: Element>(data: &[E]) -> &[u8] {
    bytemuck::cast_slice(data)
}

impl World {
    /// Runs one collective: fails at once if an earlier one saw a rank die, and marks the
    /// collectives broken when this one does.
    fn collective<R>(
        &mut self,
        body: impl FnOnce(&mut World, u32) -> Result<R, WorldError>,
    ) -> Result<R, WorldError> {
        if let Some(r) = self.broken {
            return Err(WorldError::PeerGone(r));
        }
        let tag = self.next_collective_tag();
        let result = body(self, tag);
        if let Err(WorldError::PeerGone(r)) = &result {
            let dead = *self.broken.get_or_insert(*r);
            self.abort_collectives(tag, dead);
        }
        result
    }

    /// Sends `send` to its rank and receives from its rank into `recv`'s sink, both at once,
    /// so that neither waits for the other's ring.
    fn exchange(
        &mut self,
        tag: u32,
        send: Option<(usize, &[u8])>,
        recv: Option<(usize, &mut Sink<'_>)>,
    ) -> Result<(), WorldError> {
        let mut out = Outflow::default();
        let mut inflow = Inflow::default();
        let src = recv.as_ref().map(|(src, _)| *src);
        let result = self.exchange_steps(tag, send, recv, &mut out, &mut inflow);
        if result.is_err() {
            // Keep both rings framed for the point-to-point messages that go on: the rest of a
            // half-sent message still goes out (queued, to nobody's request), and the rest of a
            // half-received one is skipped when it comes.
            if let Some((dest, data)) = send.filter(|(_, data)| out.started && out.off < data.len())
            {
                self.peers[dest].outbox.push_front(super::Outgoing {
                    request: super::NO_REQUEST,
                    tag,
                    data: data.to_vec(),
                    flow: out,
                });
            }
            if let Some(src) = src.filter(|_| inflow.started && inflow.got < inflow.total) {
                self.peers[src].discard = true;
            }
        }
        result
    }

    fn exchange_steps(
        &mut self,
        tag: u32,
        send: Option<(usize, &[u8])>,
        recv: Option<(usize, &mut Sink<'_>)>,
        out: &mut Outflow,
        inflow: &mut Inflow,
    ) -> Result<(), WorldError> {
        let mut sent = send.is_none();
        let (src, mut sink) = match recv {
            Some((src, sink)) => (Some(src), Some(sink)),
            None => (None, None),
        };
        let mut received = src.is_none();
        let mut spin = Spin::new();
        loop {
            let mut progressed = false;
            if let (false, Some((dest, data))) = (sent, send) {
                if !self.peers[dest].outbox.is_empty() {
                    self.push_outbox(dest);
                }
                if self.peers[dest].outbox.is_empty() {
                    let before = (out.started, out.off);
                    let fragment = self.fragment;
                    let tx = self.peers[dest].tx.as_mut().expect("rings to other ranks");
                    sent = write_some(tx, dest, tag, data, out, fragment)?;
                    progressed |= before != (out.started, out.off);
                }
            }
            if let (false, Some(src), Some(sink)) = (received, src, sink.as_mut()) {
                match self.pull(src, tag, inflow, *sink)? {
                    Step::Done => {
                        received = true;
                        progressed = true;
                    }
                    Step::Progress => progressed = true,
                    Step::Idle => {}
                }
            }
            if sent && received {
                return Ok(());
            }
            if progressed {
                spin = Spin::new();
                continue;
            }
            let space = match send {
                Some((dest, data)) if !sent => {
                    Some((dest, super::space_needed(out, data.len(), self.fragment)))
                }
                _ => None,
            };
            let streaming = if inflow.started { src } else { None };
            let needs = Needs::Collective {
                from: src.filter(|_| !received),
                to: space.map(|(dest, _)| dest),
            };
            self.idle(&mut spin, needs, streaming, space)?;
        }
    }

    fn send_to(&mut self, tag: u32, dest: usize, data: &[u8]) -> Result<(), WorldError> {
        self.exchange(tag, Some((dest, data)), None)
    }

    fn recv_from(&mut self, tag: u32, src: usize, sink: &mut Sink<'_>) -> Result<(), WorldError> {
        self.exchange(tag, None, Some((src, sink)))
    }

    /// Waits until every rank reached the barrier. Dissemination barrier: in round k each rank
    /// signals rank + 2ᵏ and waits for rank − 2ᵏ.
    ///
    /// # Errors
    ///
    /// `PeerGone(r)` if rank `r` died (now or in an earlier collective); `Protocol`, `Corrupt`.
    pub fn barrier(&mut self) -> Result<(), WorldError> {
        self.collective(|world, tag| world.barrier_until(tag, None))
    }

    /// The barrier, with a deadline (for joining).
    pub(super) fn barrier_until(
        &mut self,
        tag: u32,
        deadline: Option<Instant>,
    ) -> Result<(), WorldError> {
        let (n, r) = (self.id.size, self.id.rank);
        self.deadline = deadline;
        let mut dist = 1;
        let mut result = Ok(());
        while dist < n && result.is_ok() {
            let (to, from) = ((r + dist) % n, (r + n - dist) % n);
            let mut sink = |_: u64, _: &[u8], total: u64| {
                if total == 0 {
                    Ok(())
                } else {
                    Err(mismatch("barrier", from, total, 0))
                }
            };
            result = self.exchange(tag, Some((to, &[])), Some((from, &mut sink)));
            dist *= 2;
        }
        self.deadline = None;
        result
    }

    /// Copies `buf` of rank `root` into `buf` of every rank. Binomial tree: a rank receives
    /// from its parent, then forwards to its children, so the root sends ⌈log₂ n⌉ times.
    ///
    /// # Errors
    ///
    /// `NoSuchRank`, `PeerGone`, `Mismatch` (buffers of different sizes), `Protocol`,
    /// `Corrupt`.
    pub fn broadcast<E: Element>(&mut self, root: usize, buf: &mut [E]) -> Result<(), WorldError> {
        self.check_rank(root)?;
        self.collective(|world, tag| {
            let (n, r) = (world.id.size, world.id.rank);
            let vr = (r + n - root) % n;
            let mut mask = 1;
            while mask < n {
                if vr & mask != 0 {
                    let parent = (vr - mask + root) % n;
                    let mut sink = copy_into(bytemuck::cast_slice_mut(buf), parent, "broadcast");
                    world.recv_from(tag, parent, &mut sink)?;
                    break;
                }
                mask <<= 1;
            }
            mask >>= 1;
            while mask > 0 {
                if vr + mask < n {
                    world.send_to(tag, (vr + mask + root) % n, as_bytes(buf))?;
                }
                mask >>= 1;
            }
            Ok(())
        })
    }

    /// Rank `root` hands block i of `send` (`size()` blocks of `recv.len()` elements) to rank
    /// i's `recv`. `send` is read on the root only. Linear: the root writes each rank's ring.
    ///
    /// # Errors
    ///
    /// `Mismatch` (`send.len() != size() * recv.len()` on the root, or ranks disagreeing on
    /// the block size), and as [`broadcast`](Self::broadcast).
    pub fn scatter<E: Element>(
        &mut self,
        root: usize,
        send: &[E],
        recv: &mut [E],
    ) -> Result<(), WorldError> {
        self.check_rank(root)?;
        self.collective(|world, tag| {
            let (n, r) = (world.id.size, world.id.rank);
            if r != root {
                let mut sink = copy_into(bytemuck::cast_slice_mut(recv), root, "scatter");
                return world.recv_from(tag, root, &mut sink);
            }
            let len = recv.len();
            if send.len() != n * len {
                return Err(WorldError::Mismatch(format!(
                    "scatter: the root's send buffer has {} elements, not {n} ranks × {len}",
                    send.len()
                )));
            }
            for dest in (0..n).filter(|&d| d != r) {
                world.send_to(tag, dest, as_bytes(&send[dest * len..(dest + 1) * len]))?;
            }
            recv.copy_from_slice(&send[r * len..(r + 1) * len]);
            Ok(())
        })
    }

    /// Every rank's `send` lands in block i (of `send.len()` elements) of `recv` on rank
    /// `root`; `recv` is written on the root only. Linear: the root reads each rank's ring.
    ///
    /// # Errors
    ///
    /// `Mismatch` (`recv.len() != size() * send.len()` on the root, or ranks disagreeing on
    /// the block size), and as [`broadcast`](Self::broadcast).
    pub fn gather<E: Element>(
        &mut self,
        root: usize,
        send: &[E],
        recv: &mut [E],
    ) -> Result<(), WorldError> {
        self.check_rank(root)?;
        self.collective(|world, tag| {
            let (n, r) = (world.id.size, world.id.rank);
            if r != root {
                return world.send_to(tag, root, as_bytes(send));
            }
            let len = send.len();
            if recv.len() != n * len {
                return Err(WorldError::Mismatch(format!(
                    "gather: the root's receive buffer has {} elements, not {n} ranks × {len}",
                    recv.len()
                )));
            }
            for src in (0..n).filter(|&s| s != r) {
                let out = bytemuck::cast_slice_mut(&mut recv[src * len..(src + 1) * len]);
                let mut sink = copy_into(out, src, "gather");
                world.recv_from(tag, src, &mut sink)?;
            }
            recv[r * len..(r + 1) * len].copy_from_slice(send);
            Ok(())
        })
    }

    /// Every rank's `send` lands in block i of every rank's `recv` (`size()` blocks of
    /// `send.len()` elements). Ring: in step s each rank passes the block it got in step s − 1
    /// to its right neighbour.
    ///
    /// # Errors
    ///
    /// `Mismatch` (`recv.len() != size() * send.len()`), and as
    /// [`broadcast`](Self::broadcast).
    pub fn all_gather<E: Element>(&mut self, send: &[E], recv: &mut [E]) -> Result<(), WorldError> {
        let (n, r) = (self.id.size, self.id.rank);
        let len = send.len();
        self.collective(|world, tag| {
            // Checked inside, so that every rank's collective count stays in step.
            if recv.len() != n * len {
                return Err(WorldError::Mismatch(format!(
                    "all_gather: the receive buffer has {} elements, not {n} ranks × {len}",
                    recv.len()
                )));
            }
            recv[r * len..(r + 1) * len].copy_from_slice(send);
            let (right, left) = ((r + 1) % n, (r + n - 1) % n);
            for s in 0..n.saturating_sub(1) {
                let out_block = (r + n - s) % n;
                let in_block = (r + 2 * n - s - 1) % n;
                let (out, into) = two_blocks(
                    recv,
                    out_block * len..(out_block + 1) * len,
                    in_block * len..(in_block + 1) * len,
                );
                let mut sink = copy_into(bytemuck::cast_slice_mut(into), left, "all_gather");
                world.exchange(tag, Some((right, as_bytes(out))), Some((left, &mut sink)))?;
            }
            Ok(())
        })
    }

    /// Combines every rank's `buf` with `op`, element by element, into `buf` on rank `root`;
    /// the other ranks' `buf` is left as it was. Binomial tree.
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    pub fn reduce<E: Element>(
        &mut self,
        root: usize,
        buf: &mut [E],
        op: Op,
    ) -> Result<(), WorldError> {
        match op {
            Op::Sum => self.reduce_with(root, buf, E::add),
            Op::Product => self.reduce_with(root, buf, E::mul),
            Op::Min => self.reduce_with(root, buf, min),
            Op::Max => self.reduce_with(root, buf, max),
        }
    }

    /// [`reduce`](Self::reduce) with a closure: `f(a, b)` combines two elements (it must be
    /// associative and commutative).
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    pub fn reduce_with<E: Element, F: Fn(E, E) -> E>(
        &mut self,
        root: usize,
        buf: &mut [E],
        f: F,
    ) -> Result<(), WorldError> {
        self.check_rank(root)?;
        self.collective(|world, tag| {
            let (n, r) = (world.id.size, world.id.rank);
            let vr = (r + n - root) % n;
            let mut own;
            let acc: &mut [E] = if r == root {
                buf
            } else {
                own = buf.to_vec();
                &mut own
            };
            let mut mask = 1;
            while mask < n {
                if vr & mask != 0 {
                    let parent = (vr - mask + root) % n;
                    return world.send_to(tag, parent, as_bytes(acc));
                }
                let child = vr | mask;
                if child < n {
                    let src = (child + root) % n;
                    let mut sink = combine_into(acc, &f, true, src);
                    world.recv_from(tag, src, &mut sink)?;
                }
                mask <<= 1;
            }
            Ok(())
        })
    }

    /// Combines every rank's `buf` with `op`, element by element, into `buf` on every rank,
    /// bit-identical everywhere. Recursive doubling up to 64 KiB (`ALL_REDUCE_RING_ABOVE`),
    /// ring reduce-scatter + all-gather above.
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    pub fn all_reduce<E: Element>(&mut self, buf: &mut [E], op: Op) -> Result<(), WorldError> {
        match op {
            Op::Sum => self.all_reduce_with(buf, E::add),
            Op::Product => self.all_reduce_with(buf, E::mul),
            Op::Min => self.all_reduce_with(buf, min),
            Op::Max => self.all_reduce_with(buf, max),
        }
    }

    /// [`all_reduce`](Self::all_reduce) with a closure: `f(a, b)` combines two elements (it
    /// must be associative and commutative).
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    pub fn all_reduce_with<E: Element, F: Fn(E, E) -> E>(
        &mut self,
        buf: &mut [E],
        f: F,
    ) -> Result<(), WorldError> {
        let n = self.id.size;
        self.collective(|world, tag| {
            if std::mem::size_of_val(buf) > ALL_REDUCE_RING_ABOVE && buf.len() >= n {
                world.ring_all_reduce(tag, buf, &f)
            } else {
                world.doubling_all_reduce(tag, buf, &f)
            }
        })
    }

    fn doubling_all_reduce<E: Element, F: Fn(E, E) -> E>(
        &mut self,
        tag: u32,
        buf: &mut [E],
        f: &F,
    ) -> Result<(), WorldError> {
        let (n, r) = (self.id.size, self.id.rank);
        let p = if n.is_power_of_two() {
            n
        } else {
            n.next_power_of_two() / 2
        };
        let rem = n - p;
        let mut tmp = std::mem::take(&mut self.tmp);
        let result = (|| {
            // Fold the extra ranks in: rank 2i hands its buffer to 2i + 1 (i < rem) and sits
            // out; the others are renumbered 0..p.
            let newrank = if r < 2 * rem {
                if r % 2 == 0 {
                    self.send_to(tag, r + 1, as_bytes(buf))?;
                    None
                } else {
                    let mut sink = combine_into(buf, f, false, r - 1);
                    self.recv_from(tag, r - 1, &mut sink)?;
                    Some(r / 2)
                }
            } else {
                Some(r - rem)
            };
            if let Some(nr) = newrank {
                let mut mask = 1;
                while mask < p {
                    let np = nr ^ mask;
                    let partner = if np < rem { np * 2 + 1 } else { np + rem };
                    tmp.clear();
                    tmp.extend_from_slice(as_bytes(buf));
                    let mut sink = combine_into(buf, f, nr < np, partner);
                    self.exchange(tag, Some((partner, &tmp)), Some((partner, &mut sink)))?;
                    mask <<= 1;
                }
            }
            if r < 2 * rem {
                if r % 2 == 1 {
                    self.send_to(tag, r - 1, as_bytes(buf))?;
                } else {
                    let mut sink = copy_into(bytemuck::cast_slice_mut(buf), r + 1, "all_reduce");
                    self.recv_from(tag, r + 1, &mut sink)?;
                }
            }
            Ok(())
        })();
        self.tmp = tmp;
        result
    }

    fn ring_all_reduce<E: Element, F: Fn(E, E) -> E>(
        &mut self,
        tag: u32,
        buf: &mut [E],
        f: &F,
    ) -> Result<(), WorldError> {
        let (n, r) = (self.id.size, self.id.rank);
        let len = buf.len();
        let (right, left) = ((r + 1) % n, (r + n - 1) % n);
        // Reduce-scatter: in step s, pass block r − s right and fold block r − s − 1 from
        // the left into ours; after n − 1 steps block r + 1 is complete here.
        for s in 0..n - 1 {
            let out_block = (r + n - s) % n;
            let in_block = (r + 2 * n - s - 1) % n;
            let (out, into) = two_blocks(buf, block(out_block, n, len), block(in_block, n, len));
            let mut sink = combine_into(into, f, false, left);
            self.exchange(tag, Some((right, as_bytes(out))), Some((left, &mut sink)))?;
        }
        // All-gather the complete blocks around the ring.
        for s in 0..n - 1 {
            let out_block = (r + 1 + n - s) % n;
            let in_block = (r + n - s) % n;
            let (out, into) = two_blocks(buf, block(out_block, n, len), block(in_block, n, len));
            let mut sink = copy_into(bytemuck::cast_slice_mut(into), left, "all_reduce");
            self.exchange(tag, Some((right, as_bytes(out))), Some((left, &mut sink)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_buffer_in_order() {
        for n in 1..9 {
            for len in 0..40 {
                let mut next = 0;
                for i in 0..n {
                    let b = block(i, n, len);
                    assert_eq!(b.start, next);
                    next = b.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn two_blocks_are_the_ranges_asked_for() {
        let mut buf: Vec<u32> = (0..10).collect();
        let (a, b) = two_blocks(&mut buf, 2..4, 6..9);
        assert_eq!(a, &[2, 3]);
        assert_eq!(b, &mut [6, 7, 8]);
        let (a, b) = two_blocks(&mut buf, 6..9, 0..2);
        assert_eq!(a, &[6, 7, 8]);
        assert_eq!(b, &mut [0, 1]);
        let (a, b) = two_blocks(&mut buf, 3..3, 3..5);
        assert!(a.is_empty());
        assert_eq!(b, &mut [3, 4]);
    }
}
