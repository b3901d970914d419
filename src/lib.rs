//! shmesh is zero-copy inter-process communication for Rust: co-located processes talk through
//! lock-free rings in POSIX shared memory, and messages are read in place.
//!
//! This crate is the typed layer above [`shmesh_ring`] (which knows bytes and owns every
//! `unsafe` that touches shared memory). For now it holds the machinery of the `shmesh`
//! command-line tool:
//!
//! - [`bench`](mod@bench): `shmesh bench pingpong | throughput | memcpy`, which measures the ring against
//!   Unix sockets, pipes and TCP loopback between two real processes, each figure next to the
//!   cache-line round trip of the machine at that moment.
//!
//! # Examples
//!
//! Parse a message size the way `shmesh bench --size` does:
//!
//! ```
//! assert_eq!(shmesh::bench::parse_size("64k"), Ok(65536));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bench;
