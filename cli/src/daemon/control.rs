//! The daemon's control socket: one request per connection, from a
//! process of the daemon's own user only (`SO_PEERCRED`), descriptors
//! attached with `SCM_RIGHTS`; and the blocking client side used by the
//! `tcpcrypt` command itself (`status`, `daemon --stop`).

use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use super::Daemon;
use crate::wire::{self, Reply, Request};

/// How long a client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

pub async fn serve_one(mut stream: UnixStream, daemon: Arc<Daemon>) {
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    if cred.uid() != daemon.uid {
        tracing::warn!(uid = cred.uid(), "request from another user refused");
        return;
    }
    let pid = cred.pid().unwrap_or(0).max(0) as u32;
    let request = tokio::time::timeout(REQUEST_DEADLINE, read_request(&stream)).await;
    let (req, fds) = match request {
        Ok(Ok(r)) => r,
        // A caller that only checked that the socket exists.
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof && e.get_ref().is_none() => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "bad request");
            return;
        }
        Err(_) => return,
    };
    let reply = daemon.handle(req, fds, pid);
    let _ = stream.write_all(&reply.encode()).await;
}

/// Reads one request and the descriptors that came with it: exactly as
/// many as the request says, or it is refused (and they are closed).
async fn read_request(stream: &UnixStream) -> io::Result<(Request, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; wire::MAX_MESSAGE];
    let mut filled = 0;
    let mut fds = Vec::new();
    loop {
        if let Some(body) = wire::unframe(&buf[..filled])? {
            let req = Request::decode(body)?;
            if fds.len() != req.fds() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "wrong number of descriptors",
                ));
            }
            return Ok((req, fds));
        }
        if filled == buf.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        stream.readable().await?;
        let raw = stream.as_raw_fd();
        let n = match stream.try_io(Interest::READABLE, || {
            recv_with_fds(raw, &mut buf[filled..], &mut fds)
        }) {
            // Nothing at all: a caller that only checked that the socket
            // exists (told apart from a request cut short).
            Ok(0) if filled == 0 && fds.is_empty() => {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the request ends early",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        filled += n;
    }
}

fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; wire::MAX_FDS]);
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel has just installed `r` in this
                // process for this message; nothing else refers to it.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > wire::MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors",
        ));
    }
    Ok(msg.bytes)
}

/// Asks the daemon of `dir` (the caller checked it is the user's own) one
/// question that carries no descriptor, and waits at most 5 s.
pub fn ask(dir: &Path, req: &Request) -> io::Result<Reply> {
    // Bounded: a stopped daemon's full backlog would block the connect
    // for good.
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.connect_timeout(
        &socket2::SockAddr::unix(wire::socket_path(dir))?,
        REQUEST_DEADLINE,
    )?;
    socket.set_nonblocking(false)?;
    let mut s = std::os::unix::net::UnixStream::from(OwnedFd::from(socket));
    // The directory is the user's own; the daemon must be too, as the
    // shim checks.
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)?;
    if cred.uid() != wire::current_uid()? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the daemon's socket belongs to another user",
        ));
    }
    // A stopped daemon would take the question and leave it unanswered:
    // say so at once instead of after the deadline.
    if is_stopped(cred.pid()) {
        return Err(io::Error::other(Stopped(cred.pid())));
    }
    s.set_read_timeout(Some(REQUEST_DEADLINE))?;
    s.set_write_timeout(Some(REQUEST_DEADLINE))?;
    s.write_all(&req.encode())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(body) = wire::unframe(&buf)? {
            return Reply::decode(body);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The daemon is stopped by a signal (`SIGSTOP`, a terminal's `^Z`): it
/// answers nothing until it is continued.
#[derive(Debug)]
pub struct Stopped(pub i32);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pid = self.0;
        write!(
            f,
            "the daemon (pid {pid}) is stopped; `kill -CONT {pid}` lets it go on"
        )
    }
}

impl std::error::Error for Stopped {}

/// Whether `pid` is stopped by a signal (state `T` in `/proc`; not `t`, a
/// tracer's stop, which a debugger ends). `false` when `/proc` cannot
/// tell: another PID namespace's, or a process hidden from us.
fn is_stopped(pid: i32) -> bool {
    let ours = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<u32>().ok())
        == Some(std::process::id());
    if !ours || pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last parenthesis.
    stat.iter()
        .rposition(|&b| b == b')')
        .and_then(|close| stat.get(close + 2))
        == Some(&b'T')
}

/// The stopped daemon an error of [`ask`] names, if that is what it says.
pub fn stopped(e: &io::Error) -> Option<i32> {
    e.get_ref()?.downcast_ref::<Stopped>().map(|s| s.0)
}
