//! Shared helpers of the ring's multi-process tests: unique segment names and peeks into a
//! segment's bytes. The child-process harness (roles, `Proc`, deadlines, watchdogs, other
//! users) is `shmesh-testkit`, re-exported here.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::fmt::Display;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use shmesh_testkit::*;

/// A segment name unique to a test and to this process. On drop, removes the object of that
/// name if something (a killed child, a failed test) left it behind.
#[derive(Debug)]
pub struct ShmName(String);

impl ShmName {
    /// A fresh name for the test `test` (a short `[a-z0-9-]` label).
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        ShmName(format!("proc-{}-{test}-{n}", std::process::id()))
    }

    /// The segment name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file of the POSIX shared-memory object on Linux.
    pub fn path(&self) -> PathBuf {
        shm_path(&self.0)
    }
}

impl Display for ShmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for ShmName {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path());
    }
}

/// `/dev/shm/shmesh.<name>`: the file behind segment `name`.
pub fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/shmesh.{name}"))
}

/// Reads a little-endian `u32` at `offset` of a segment's file (a peek at shared state, for
/// handshakes such as "the peer is parked now").
pub fn peek_u32(name: &str, offset: u64) -> u32 {
    use std::os::unix::fs::FileExt;
    let file = fs::File::open(shm_path(name)).expect("open segment file");
    let mut word = [0u8; 4];
    file.read_exact_at(&mut word, offset)
        .expect("read segment file");
    u32::from_le_bytes(word)
}

/// Reads a little-endian `u64` at `offset` of a segment's file.
pub fn peek_u64(name: &str, offset: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let file = fs::File::open(shm_path(name)).expect("open segment file");
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, offset)
        .expect("read segment file");
    u64::from_le_bytes(word)
}

/// Polls `cond` until it holds; panics with `what` after [`DEADLINE`]. For conditions no
/// handshake can announce (a peer parked on a futex, a process gone).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}
