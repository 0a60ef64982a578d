//! Opening a log file named by the environment (`TCPCRYPT_LOG_FILE` for
//! the shim, `TCPCRYPT_DAEMON_LOG` for the daemon): appended to, created
//! private to its user, never through a symbolic link, and never a file
//! another user made. The path may be in a shared directory such as
//! `/tmp`, where a file made in advance by someone else would let them
//! read what is logged (destinations, session IDs).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for appending, creating it with mode 0600: a file of this
/// user's, or a character device (a terminal, `/dev/null`).
pub fn open(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO without a reader must not hang the program
        // (nor its fork, which may open it first).
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.uid() == nix::unistd::geteuid().as_raw() || meta.file_type().is_char_device() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: owned by another user", path.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_log_is_private_and_a_file_of_another_user_is_refused() {
        let dir = std::env::temp_dir().join(format!("tcpcrypt-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mine = dir.join("mine.log");
        open(&mine).unwrap();
        let mode = std::fs::metadata(&mine).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(open(Path::new("/dev/null")).is_ok());
        // A file someone else owns (root can give one away).
        if nix::unistd::geteuid().is_root() {
            let theirs = dir.join("theirs.log");
            std::fs::write(&theirs, b"").unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = open(&theirs).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        } else {
            eprintln!("not root: the refusal of another user's file is not checked here");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
