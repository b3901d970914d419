//! shmesh is zero-copy inter-process communication for Rust: co-located processes talk through
//! lock-free rings in POSIX shared memory, and messages are read in place.
//!
//! This crate is the typed layer above [`shmesh_ring`] (which knows bytes and owns every
//! `unsafe` that touches shared memory):
//!
//! - [`channel`]: [`Channel<T>`], a named channel of rkyv-archived messages — [`Sender<T>`]
//!   serializes straight into the ring, [`Receiver<T>`] reads `&Archived<T>` in place; rich
//!   types (`String`, `Vec`, enums, maps) included, schema checked at connect.
//! - [`topic`]: publish/subscribe — one [`Publisher<T>`], many [`Subscriber<T>`]s (a
//!   broadcast ring, `Block` or `Lap` for slow subscribers, optional history); the table of
//!   which pattern maps to which ring is there.
//! - [`service`]: request/reply — a [`Server<Req, Resp>`] answers many [`Client`]s.
//! - [`region`](mod@region): shared state in whole versions — one writer publishes, any number
//!   of readers take consistent snapshots or wait for the next version; [`Region`] holds bytes,
//!   [`TypedRegion<T>`] an rkyv-archived value; each version records the chunks it changed.
//! - [`world`]: MPI-style message passing — ranks started by `shmesh run` (or `mpirun`,
//!   `srun`), tagged point-to-point messages, non-blocking requests, and collectives
//!   (barrier, broadcast, scatter, gather, all-gather, reduce, all-reduce).
//! - [`bench`](mod@bench): `shmesh bench`, which measures shmesh against the cache-line limit,
//!   Unix sockets, pipes, TCP (and, with the `peers` feature, iceoryx2 and ipc-channel) between
//!   two real processes.
//!
//! # Examples
//!
//! ```
//! use shmesh::Channel;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize)]
//! enum Command {
//!     Move { x: i32, y: i32 },
//!     Say(String),
//! }
//!
//! # let name = format!("doc-lib-{}", std::process::id());
//! let channel = Channel::<Command>::create(&name)?;
//! let (mut tx, mut rx) = (channel.sender()?, channel.receiver()?);
//! tx.send(&Command::Say("hi".into()))?;
//! match &*rx.recv()? {
//!     ArchivedCommand::Say(text) => assert_eq!(text, "hi"),
//!     ArchivedCommand::Move { .. } => unreachable!(),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The only `unsafe` in this crate is the constructor of the `Trusted` access mode and the
//! unchecked read it enables ([`channel::Access`]); everything else is safe code over
//! `shmesh-ring`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod bench;
pub mod channel;
pub mod region;
pub mod tools;
pub mod world;

pub use channel::service::{self, Client, Server};
pub use channel::topic::{self, Publisher, Subscriber, Topic};
pub use channel::{Channel, Receiver, Sender};
pub use region::{Region, TypedRegion};
