//! The few operating-system calls rustix does not wrap for us: open-file-description (OFD)
//! byte-range locks, which are the liveness tokens, and the process start time.
//!
//! An OFD lock belongs to an open file description, not to a process: two descriptors from two
//! `open` calls conflict even inside one process, and the kernel drops the lock when the last
//! descriptor of that description closes, which includes the process dying for any reason. That
//! is what makes it a liveness token that pids (reused, namespaced) and timeouts are not.

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

/// Shared (read) or exclusive (write) lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    Shared,
    Exclusive,
}

fn flock(kind: libc::c_short, byte: u64) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct for which all-zero is a valid value (l_pid must
    // be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    fl
}

/// Tries to take an OFD lock on one byte. `Ok(false)` when another open file description holds
/// a conflicting lock.
pub(crate) fn try_lock(fd: BorrowedFd<'_>, byte: u64, kind: LockKind) -> Result<bool, Errno> {
    let ty = match kind {
        LockKind::Shared => libc::F_RDLCK,
        LockKind::Exclusive => libc::F_WRLCK,
    };
    let mut fl = flock(ty as libc::c_short, byte);
    // SAFETY: `fd` is a valid open descriptor for the duration of the call and `fl` a valid,
    // initialized `struct flock` that the kernel reads.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if rc == 0 {
        return Ok(true);
    }
    match Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) {
        e if e == Errno::AGAIN || e == Errno::ACCESS => Ok(false),
        e => Err(e),
    }
}

/// Whether another open file description holds any lock on `byte` that would conflict with an
/// exclusive lock (that is, any lock at all).
pub(crate) fn is_locked(fd: BorrowedFd<'_>, byte: u64) -> Result<bool, Errno> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: as in `try_lock`; F_OFD_GETLK writes the result back into `fl`.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The kind of lock another open file description holds on `byte` (`None`: none). When
/// several hold shared locks, one of them is reported.
pub(crate) fn held_lock(fd: BorrowedFd<'_>, byte: u64) -> Result<Option<LockKind>, Errno> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: as in `try_lock`; F_OFD_GETLK writes the result back into `fl`.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    Ok(match fl.l_type {
        t if t == libc::F_RDLCK as libc::c_short => Some(LockKind::Shared),
        t if t == libc::F_WRLCK as libc::c_short => Some(LockKind::Exclusive),
        _ => None,
    })
}

/// This process's start time in clock ticks since boot (`/proc/self/stat` field 22), or 0
/// when `/proc` is not readable. Display only: with the pid it tells a reused pid apart.
pub(crate) fn process_start_time() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    // `rest` starts at field 3 (state); field 22 is the 20th from there.
    rest.split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot read /proc")]
    fn start_time_is_read() {
        assert!(process_start_time() > 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri does not emulate OFD locks")]
    fn ofd_locks_conflict_between_descriptions_of_one_process() {
        let dir = std::env::temp_dir().join(format!("shmesh-ofd-{}", std::process::id()));
        std::fs::write(&dir, b"x").unwrap();
        let a = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dir)
            .unwrap();
        let b = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dir)
            .unwrap();
        assert!(!is_locked(b.as_fd(), 3).unwrap());
        assert!(try_lock(a.as_fd(), 3, LockKind::Exclusive).unwrap());
        assert!(is_locked(b.as_fd(), 3).unwrap());
        assert!(!try_lock(b.as_fd(), 3, LockKind::Shared).unwrap());
        assert!(try_lock(b.as_fd(), 4, LockKind::Shared).unwrap());
        assert!(try_lock(a.as_fd(), 4, LockKind::Shared).unwrap());
        drop(a);
        assert!(
            !is_locked(b.as_fd(), 3).unwrap(),
            "closing the description releases its lock"
        );
        std::fs::remove_file(&dir).unwrap();
    }
}
