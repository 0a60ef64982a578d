//! The shim's side of the relay daemon: reaching it (starting it when none
//! answers), handing connections over, asking about them. Safe code: the
//! descriptors travel with `nix`'s `sendmsg`.

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg, sockopt};

use crate::wire::{self, Reply, Request};

/// How long the shim waits for the daemon to answer; a program's thread
/// is blocked meanwhile, so a daemon that hangs costs this, not forever.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// How long the shim waits for a daemon that has let a question go
/// unanswered already (or is stopped at a tracer's breakpoint): while it
/// does not answer, each new connection costs this much, not
/// `ANSWER_DEADLINE`; long enough for a loaded daemon that does answer.
const SUSPECT_DEADLINE: Duration = Duration::from_secs(1);

/// Whether a question to the daemon went unanswered in this process (and
/// none has been answered since).
static UNANSWERED: AtomicBool = AtomicBool::new(false);

/// Whether a question to the daemon went unanswered and none has been
/// answered since: a hand-over now would wait for nothing.
pub fn is_unanswered() -> bool {
    UNANSWERED.load(Ordering::Relaxed)
}

/// Notes that the daemon let a question go unanswered.
fn unanswered() {
    if !UNANSWERED.swap(true, Ordering::Relaxed) {
        crate::log::log!(
            Warn,
            "the daemon does not answer: until it does, new connections go \
             unencrypted, or under the mandatory policy are refused"
        );
    }
}

/// Whether an error is a deadline that passed.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reaches this user's daemon (starting one if none answers) and checks
/// that it can answer, before the caller has touched anything: a daemon
/// that is stopped (`SIGSTOP`, a terminal's `^Z`) or hung is then, for
/// this connection, as good as none (plain or refused, by the policy),
/// instead of taking a hand-over it could carry out later, after the
/// program gave up. A stopped daemon is seen in its process state, which
/// costs no round trip; one that let a question go unanswered is asked
/// again, with a short deadline, until it answers. The link returned has
/// not been used: the caller may ask its question on it.
pub fn ready() -> io::Result<Link> {
    let suspect = UNANSWERED.load(Ordering::Relaxed);
    let deadline = if suspect {
        SUSPECT_DEADLINE
    } else {
        ANSWER_DEADLINE
    };
    let link = Link::reach(deadline)?;
    let state = link.daemon_state();
    if state == Some(b'T') {
        unanswered();
        crate::log::log!(
            Warn,
            "the daemon is stopped: this connection is not carried"
        );
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the daemon is stopped",
        ));
    }
    // Stopped by a tracer (strace stops it at each system call, briefly):
    // asked, with the short deadline.
    if !suspect && state != Some(b't') {
        return Ok(link);
    }
    match link.ask(&Request::Ping, &[]) {
        Ok(Reply::Ok) => {
            UNANSWERED.store(false, Ordering::Relaxed);
            crate::log::log!(Info, "the daemon answers again");
            Link::existing()
        }
        Ok(other) => Err(io::Error::other(format!("the daemon answered {other:?}"))),
        Err(e) => {
            crate::log::log!(
                Warn,
                "the daemon does not answer: this connection is not carried"
            );
            Err(e)
        }
    }
}

/// A connection to the daemon, for one request.
pub(crate) struct Link {
    stream: UnixStream,
    /// The daemon's process, from the socket's credentials.
    daemon: i32,
}

impl Link {
    /// Reaches this user's daemon, starting one if none answers.
    pub fn open() -> io::Result<Link> {
        Link::reach(ANSWER_DEADLINE)
    }

    /// `open`, waiting at most `deadline` for each step.
    fn reach(deadline: Duration) -> io::Result<Link> {
        wire::runtime_dir()?;
        match Link::existing_within(deadline) {
            Err(e) if absent(&e) => {
                start()?;
                Link::existing_within(deadline)
            }
            other => other,
        }
    }

    /// Reaches this user's daemon if one runs: queries never start one,
    /// nor make its directory.
    pub fn existing() -> io::Result<Link> {
        Link::existing_within(ANSWER_DEADLINE)
    }

    /// `existing`, waiting at most `deadline` for each step.
    fn existing_within(deadline: Duration) -> io::Result<Link> {
        let dir = wire::existing_runtime_dir()?;
        // Bounded: a stopped daemon's full backlog would block a plain
        // connect for good.
        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
        socket
            .connect_timeout(&socket2::SockAddr::unix(wire::socket_path(&dir))?, deadline)
            .inspect_err(|e| {
                if timed_out(e) {
                    unanswered();
                }
            })?;
        socket.set_nonblocking(false)?;
        let s = UnixStream::from(std::os::fd::OwnedFd::from(socket));
        // The directory is the user's own (checked); the peer must be too.
        let cred = nix::sys::socket::getsockopt(&s, sockopt::PeerCredentials)?;
        if cred.uid() != wire::current_uid()? {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the daemon's socket belongs to another user",
            ));
        }
        s.set_read_timeout(Some(deadline))?;
        s.set_write_timeout(Some(deadline))?;
        Ok(Link {
            stream: s,
            daemon: cred.pid(),
        })
    }

    /// Sends `req` with `fds` attached and reads the reply. A signal that
    /// interrupts either (a forking server's SIGCHLD) is not a failure:
    /// the call is made again, as the kernel restarts the program's own.
    pub fn ask(self, req: &Request, fds: &[RawFd]) -> io::Result<Reply> {
        self.exchange(req, fds).inspect_err(|e| {
            if timed_out(e) {
                unanswered();
            }
        })
    }

    /// The daemon's process state in `/proc` (`T` stopped by a signal,
    /// `t` by a tracer), when it can be read: not when `/proc` belongs to
    /// another PID namespace than this process (its numbers would name
    /// other processes) or hides other processes (`hidepid`).
    fn daemon_state(&self) -> Option<u8> {
        if !proc_is_ours() {
            return None;
        }
        let stat = std::fs::read(format!("/proc/{}/stat", self.daemon)).ok()?;
        // "pid (comm) S ...": the state follows the last parenthesis.
        let close = stat.iter().rposition(|&b| b == b')')?;
        stat.get(close + 2).copied()
    }

    fn exchange(mut self, req: &Request, fds: &[RawFd]) -> io::Result<Reply> {
        let bytes = req.encode();
        let iov = [IoSlice::new(&bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        let sent = loop {
            match sendmsg::<UnixAddr>(
                self.stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                sent => break sent?,
            }
        };
        if sent != bytes.len() {
            // Requests are far below a socket buffer: a short send means
            // the daemon went away.
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(body) = wire::unframe(&buf)? {
                return Reply::decode(body);
            }
            let n = match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                n => n?,
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Whether `/proc` shows this process's PID namespace: `/proc/self`
/// names this process. Asked once (a fork keeps the namespace).
pub(crate) fn proc_is_ours() -> bool {
    static OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OURS.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            == Some(std::process::id())
    })
}

/// Whether an error means that no daemon listens.
fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// Asks a question of the daemon if one runs (`Reply::Unknown` if none).
/// A stopped daemon is not asked (an error, not `Unknown`: it may relay
/// the socket), and one that let a question go unanswered is given the
/// short deadline.
pub(crate) fn query(req: &Request) -> io::Result<Reply> {
    let deadline = if is_unanswered() {
        SUSPECT_DEADLINE
    } else {
        ANSWER_DEADLINE
    };
    match Link::existing_within(deadline) {
        Ok(link) if link.daemon_state() == Some(b'T') => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the daemon is stopped",
        )),
        Ok(link) => link.ask(req, &[]),
        Err(e) if absent(&e) => Ok(Reply::Unknown),
        Err(e) => Err(e),
    }
}

/// The `tcpcrypt` executable: `TCPCRYPT_DAEMON`, or the one beside this
/// library (a cargo build and the package both put them together).
fn daemon_program() -> io::Result<PathBuf> {
    if let Some(p) = wire::env_var("TCPCRYPT_DAEMON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let lib = this_library()?;
    let dir = lib.parent().unwrap_or(std::path::Path::new("/"));
    for candidate in [
        dir.join("tcpcrypt"),
        dir.join("../../bin/tcpcrypt"),
        dir.join("../bin/tcpcrypt"),
    ] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no tcpcrypt executable beside {} (set TCPCRYPT_DAEMON)",
            lib.display()
        ),
    ))
}

/// The path of this library, from the mapping that holds this function.
fn this_library() -> io::Result<PathBuf> {
    let here = this_library as fn() -> io::Result<PathBuf> as usize;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(path)) = (fields.next(), fields.nth(4)) else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        if (lo..hi).contains(&here) && path.starts_with('/') {
            return Ok(PathBuf::from(path));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "this library's path",
    ))
}

/// Starts the daemon and returns once it answers (`tcpcrypt daemon`
/// returns then). Concurrent starts, in this process or others, leave one
/// daemon: the daemons elect one with a lock, and the others exit.
fn start() -> io::Result<()> {
    // One start at a time in this process, but never a wait without end:
    // a child forked while another thread held this lock would otherwise
    // wait forever (the daemons elect one among themselves anyway).
    static STARTING: Mutex<()> = Mutex::new(());
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let _one_at_a_time = loop {
        match STARTING.try_lock() {
            Ok(g) => break Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => break Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(std::sync::TryLockError::WouldBlock) => break None,
        }
    };
    if Link::existing().is_ok() {
        return Ok(());
    }
    let program = daemon_program()?;
    crate::log::log!(Info, "starting the daemon: {}", program.display());
    // The detaching `tcpcrypt daemon` exits as soon as the daemon answers,
    // and is waited for here: no child is left to the program.
    let status = std::process::Command::new(&program)
        .arg("daemon")
        // As the program had them when it started, should it have
        // cleared its environment since.
        .envs(wire::daemon_environment())
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        // A program that reaps every child itself (or ignores SIGCHLD)
        // can take the status first: the daemon may well be up.
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(()),
        Ok(s) => Err(io::Error::other(format!(
            "{} daemon: {s}",
            program.display()
        ))),
        Err(e) => Err(e),
    }
}
