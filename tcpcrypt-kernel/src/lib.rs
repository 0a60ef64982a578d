//! TCP-ENO (RFC 8547) in the SYN, on an unmodified Linux kernel.
//!
//! A BPF `sock_ops` program (`bpf/eno.bpf.c`, compiled by clang when this
//! crate is built) writes and reads the ENO option in the SYN, the SYN-ACK
//! and A's third segment of the connections of the processes in the cgroup
//! v2 directories it is attached to. It only carries bytes: the library
//! writes each socket's SYN-form option (or, for a listener, its answer
//! template) into the socket's record before `connect` (or `listen`), and
//! reads back what was negotiated. See `docs/PROTOCOL.md`, "The kernel
//! carriage".
//!
//! * [`attach`]: `tcpcrypt kernel enable | disable | status` (root).
//! * [`Sockets`]: the per-socket records, for any user.
//!
//! ```no_run
//! use tcpcrypt_kernel::{Outcome, Sockets};
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let sockets = Sockets::open()?; // Err(NotEnabled) without `tcpcrypt kernel enable`
//! let socket = std::net::TcpListener::bind("127.0.0.1:0")?; // any socket the caller holds
//! match sockets.outcome(&socket) {
//!     Outcome::Negotiated { syn, synack, .. } => println!("ENO: {syn:02x?} then {synack:02x?}"),
//!     other => println!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
mod record;
mod socket;

use std::path::{Path, PathBuf};

pub use record::{Listening, MAX_SYN_OPTION, MAX_TEMPLATE, Outcome};
pub use socket::{RESUME_NONCE, ResumeEntry, Resumptions, Sockets};

/// Where the program, its maps and its links are pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf/tcpcrypt";

/// Why the kernel carriage cannot be used or set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Attaching and detaching need root.
    #[error("this needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")]
    NotRoot,
    /// The build had no clang or libbpf headers.
    #[error(
        "this tcpcrypt was built without its BPF program (clang and libbpf-dev were missing at build time): install them and rebuild"
    )]
    BuiltWithoutProgram,
    /// `tcpcrypt kernel enable` has not run on this machine.
    #[error("the kernel carriage is not enabled on this machine (tcpcrypt kernel enable)")]
    NotEnabled,
    /// No BPF file system is mounted at `/sys/fs/bpf` in this mount
    /// namespace, so the pins cannot be seen (whether or not the carriage
    /// is enabled).
    #[error(
        "no BPF file system at /sys/fs/bpf here, so the kernel carriage cannot be seen (`ip netns exec` mounts a /sys of its own: enter the namespace with `nsenter --net=/run/netns/NAME` instead)"
    )]
    NoBpfFs,
    /// The directory is not on a cgroup v2 file system.
    #[error("{0} is not a cgroup v2 directory")]
    NotCgroup2(PathBuf),
    /// An option or template larger than a SYN can carry.
    #[error("an ENO option of {0} bytes does not fit in a SYN beside Linux's own options")]
    OptionTooLong(usize),
    /// The kernel refused a BPF operation (no BPF support, or the verifier).
    #[error("BPF: {0}")]
    Bpf(String),
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Whether a BPF file system is mounted at `/sys/fs/bpf` (where the pins
/// live) in this mount namespace.
pub fn bpf_fs_mounted() -> bool {
    nix::sys::statfs::statfs("/sys/fs/bpf")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// The error for a missing pin: not enabled, or not visible from here.
fn missing_pin() -> Error {
    if bpf_fs_mounted() {
        Error::NotEnabled
    } else {
        Error::NoBpfFs
    }
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn bpf(e: impl std::error::Error) -> Self {
        // The whole chain: aya's outer errors name the call, the inner
        // ones the errno or the verifier's log.
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        Error::Bpf(text)
    }
}
