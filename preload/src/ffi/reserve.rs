//! Descriptors kept free for a hand-over, taken before anything the
//! application could see has happened: a process short of them is
//! answered as the kernel answers it (`docs/SHIM.md`, "connect" and
//! "accept").

use super::*;

/// Descriptors held only to keep their numbers free: each is closed just
/// before the hand-over needs one. They name an `eventfd` of their own,
/// never a socket of the program's: a child that a `fork` in another
/// thread gives copies of them keeps nothing of the program's alive.
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

/// Takes `count` descriptors, or the error a process out of them gets.
pub(super) fn reserve(count: usize) -> Result<Reserved, c_int> {
    let mut held: Vec<OwnedFd> = Vec::with_capacity(count);
    for _ in 0..count {
        // SAFETY: plain system calls; the new descriptor is checked, and
        // `first` is one made here and still held.
        let d = unsafe {
            match held.first() {
                Some(first) => libc::fcntl(first.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0),
                None => libc::eventfd(0, libc::EFD_CLOEXEC),
            }
        };
        if d < 0 {
            return Err(errno());
        }
        // SAFETY: `d` was just made and is owned by no one else.
        held.push(unsafe { OwnedFd::from_raw_fd(d) });
    }
    Ok(Reserved { held })
}
