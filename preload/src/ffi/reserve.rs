//! Descriptors kept free for a hand-over, taken before anything the
//! application could see has happened: a process short of them is
//! answered as the kernel answers it (`docs/SHIM.md`, "Descriptors").

use super::*;

/// Copies of one of the caller's descriptors, held only to keep their
/// numbers free: each is closed just before the hand-over needs one.
pub(super) struct Reserved {
    /// Closed when dropped or freed: that is their whole use.
    held: Vec<OwnedFd>,
}

impl Reserved {
    /// Frees one, for the next descriptor the hand-over takes.
    pub(super) fn free_one(&mut self) {
        self.held.pop();
    }

    /// Frees them all: the hand-over takes them from here.
    pub(super) fn free_all(&mut self) {
        self.held.clear();
    }
}

/// Takes `count` descriptors (copies of `like`), or the error a process
/// out of them gets.
pub(super) fn reserve(like: c_int, count: usize) -> Result<Reserved, c_int> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        // SAFETY: plain system call on the caller's descriptor; the copy
        // is owned here.
        let d = unsafe { libc::fcntl(like, libc::F_DUPFD_CLOEXEC, 0) };
        if d < 0 {
            return Err(errno());
        }
        // SAFETY: `d` was just made and is owned by no one else.
        held.push(unsafe { OwnedFd::from_raw_fd(d) });
    }
    Ok(Reserved { held })
}
