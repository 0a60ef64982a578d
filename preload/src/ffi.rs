//! The libc functions this library replaces, and everything `unsafe` it
//! needs: symbol lookup, raw socket addresses, errno. Every hook falls back
//! to the real function when the socket is not ours to handle, when it is
//! called from the relay's own threads (a thread-local bypass flag), and
//! when anything panics (`catch_unwind`): the host program is never
//! aborted by this library.

use std::cell::Cell;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

use libc::{
    AF_INET, AF_INET6, c_int, c_void, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage,
    socklen_t,
};

use crate::options::{self, MIRRORED, Setting};
use crate::registry::{self, Entry, SessionState};
use crate::relay::{self, Job, PendingConnect, Shared};

thread_local! {
    static BYPASS: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one whose socket calls must never be
/// intercepted (the relay's runtime threads).
pub(crate) fn bypass_hooks_on_this_thread() {
    BYPASS.with(|b| b.set(true));
}

/// Set while a hook runs, so that the hook's own socket calls go straight
/// to libc.
struct Guard;

impl Guard {
    fn enter() -> Option<Guard> {
        BYPASS.with(|b| {
            if b.get() {
                None
            } else {
                b.set(true);
                Some(Guard)
            }
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        BYPASS.with(|b| b.set(false));
    }
}

type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type Accept4Fn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
type NameFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type GetsockoptFn = unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int;
type SetsockoptFn = unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int;

struct Real {
    connect: ConnectFn,
    accept4: Accept4Fn,
    getpeername: NameFn,
    getsockname: NameFn,
    close: CloseFn,
    getsockopt: GetsockoptFn,
    setsockopt: SetsockoptFn,
}

unsafe extern "C" fn sys_connect(fd: c_int, a: *const sockaddr, l: socklen_t) -> c_int {
    unsafe { libc::syscall(libc::SYS_connect, fd, a, l) as c_int }
}
unsafe extern "C" fn sys_accept4(
    fd: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
    f: c_int,
) -> c_int {
    unsafe { libc::syscall(libc::SYS_accept4, fd, a, l, f) as c_int }
}
unsafe extern "C" fn sys_getpeername(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> c_int {
    unsafe { libc::syscall(libc::SYS_getpeername, fd, a, l) as c_int }
}
unsafe extern "C" fn sys_getsockname(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> c_int {
    unsafe { libc::syscall(libc::SYS_getsockname, fd, a, l) as c_int }
}
unsafe extern "C" fn sys_close(fd: c_int) -> c_int {
    unsafe { libc::syscall(libc::SYS_close, fd) as c_int }
}
unsafe extern "C" fn sys_setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    v: *const c_void,
    l: socklen_t,
) -> c_int {
    unsafe { libc::syscall(libc::SYS_setsockopt, fd, level, name, v, l) as c_int }
}
unsafe extern "C" fn sys_getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    v: *mut c_void,
    l: *mut socklen_t,
) -> c_int {
    unsafe { libc::syscall(libc::SYS_getsockopt, fd, level, name, v, l) as c_int }
}

/// The next definition of `name` after this library, or `fallback`.
unsafe fn next<F: Copy>(name: &std::ffi::CStr, fallback: F) -> F {
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if p.is_null() {
        fallback
    } else {
        // SAFETY: F is the function pointer type of the libc symbol `name`.
        unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
    }
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| unsafe {
        Real {
            connect: next(c"connect", sys_connect as ConnectFn),
            accept4: next(c"accept4", sys_accept4 as Accept4Fn),
            getpeername: next(c"getpeername", sys_getpeername as NameFn),
            getsockname: next(c"getsockname", sys_getsockname as NameFn),
            close: next(c"close", sys_close as CloseFn),
            getsockopt: next(c"getsockopt", sys_getsockopt as GetsockoptFn),
            setsockopt: next(c"setsockopt", sys_setsockopt as SetsockoptFn),
        }
    })
}

fn set_errno(e: c_int) {
    unsafe { *libc::__errno_location() = e };
}

fn errno() -> c_int {
    unsafe { *libc::__errno_location() }
}

/// Reads a socket address the caller passed.
unsafe fn read_addr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() {
        return None;
    }
    let family = c_int::from(unsafe { (*addr).sa_family });
    match family {
        AF_INET if len as usize >= size_of::<sockaddr_in>() => {
            let a = unsafe { &*(addr as *const sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        AF_INET6 if len as usize >= size_of::<sockaddr_in6>() => {
            let a = unsafe { &*(addr as *const sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `addr` in the form a socket of `family` uses (IPv4 addresses on IPv6
/// sockets are v4-mapped).
fn encode_addr(addr: SocketAddr, family: c_int) -> (sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut st: sockaddr_storage = unsafe { zeroed() };
    let v6 = |ip: Ipv6Addr, port: u16, st: &mut sockaddr_storage| {
        // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
        let a = unsafe { &mut *(st as *mut sockaddr_storage as *mut sockaddr_in6) };
        a.sin6_family = AF_INET6 as libc::sa_family_t;
        a.sin6_port = port.to_be();
        a.sin6_addr.s6_addr = ip.octets();
        size_of::<sockaddr_in6>() as socklen_t
    };
    let len = match (addr, family) {
        (SocketAddr::V4(a), AF_INET6) => v6(a.ip().to_ipv6_mapped(), a.port(), &mut st),
        (SocketAddr::V6(a), _) => v6(*a.ip(), a.port(), &mut st),
        (SocketAddr::V4(a), _) => {
            // SAFETY: as above, for sockaddr_in.
            let s = unsafe { &mut *(&mut st as *mut sockaddr_storage as *mut sockaddr_in) };
            s.sin_family = AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<sockaddr_in>() as socklen_t
        }
    };
    (st, len)
}

/// Writes `addr` to a caller's buffer with `getpeername`'s truncation rule.
unsafe fn write_addr(addr: SocketAddr, family: c_int, out: *mut sockaddr, len: *mut socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    let (st, n) = encode_addr(addr, family);
    let room = unsafe { *len }.min(n) as usize;
    unsafe {
        std::ptr::copy_nonoverlapping(
            &st as *const sockaddr_storage as *const u8,
            out as *mut u8,
            room,
        );
        *len = n;
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn sockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut l = size_of::<c_int>() as socklen_t;
    let r =
        unsafe { libc::getsockopt(fd, level, name, &mut v as *mut c_int as *mut c_void, &mut l) };
    (r == 0).then_some(v)
}

/// A socket's identity: its inode number.
fn socket_id(fd: c_int) -> Option<u64> {
    let mut st: libc::stat = unsafe { zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

/// The registry's entry for `fd`, if it still names the same socket.
fn lookup(fd: c_int) -> Option<Entry> {
    registry::get(fd, || socket_id(fd))
}

/// The family of a TCP socket, or `None` for anything else.
fn tcp_family(fd: c_int) -> Option<c_int> {
    let ty = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let family = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let proto = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    (ty == libc::SOCK_STREAM
        && (family == AF_INET || family == AF_INET6)
        && proto == libc::IPPROTO_TCP)
        .then_some(family)
}

fn local_addr(fd: c_int) -> Option<SocketAddr> {
    let mut st: sockaddr_storage = unsafe { zeroed() };
    let mut l = size_of::<sockaddr_storage>() as socklen_t;
    let r = unsafe {
        (real().getsockname)(
            fd,
            &mut st as *mut sockaddr_storage as *mut sockaddr,
            &mut l,
        )
    };
    if r != 0 {
        return None;
    }
    unsafe { read_addr(&st as *const sockaddr_storage as *const sockaddr, l) }
}

/// Binds `fd` to an ephemeral loopback port and connects it to the relay,
/// waiting (at most 5 s) if the socket is non-blocking. Returns the
/// loopback address the relay will see.
fn attach_to_relay(
    fd: c_int,
    family: c_int,
    relay: &relay::Relay,
    job: Job,
    shared: Shared,
) -> Result<(), c_int> {
    let bind_to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let (st, l) = encode_addr(bind_to, family);
    if unsafe { libc::bind(fd, &st as *const sockaddr_storage as *const sockaddr, l) } != 0 {
        return Err(errno());
    }
    let app_end = canonical(local_addr(fd).ok_or(libc::EADDRNOTAVAIL)?);
    relay.expect(app_end, job, shared);
    let (st, l) = encode_addr(relay.listen_addr(), family);
    let r = unsafe { (real().connect)(fd, &st as *const sockaddr_storage as *const sockaddr, l) };
    if r != 0 {
        let e = errno();
        if e != libc::EINPROGRESS {
            relay.cancel(app_end);
            return Err(e);
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ready = loop {
            let r = unsafe { libc::poll(&mut p, 1, 5000) };
            if r >= 0 || errno() != libc::EINTR {
                break r;
            }
        };
        let so_error = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(libc::EIO);
        if ready != 1 || so_error != 0 {
            relay.cancel(app_end);
            return Err(if so_error != 0 {
                so_error
            } else {
                libc::ETIMEDOUT
            });
        }
    }
    Ok(())
}

/// `connect` on a TCP socket the shim handles: the real connection first
/// (its error is the application's), then the application's socket joins
/// the relay. `None`: not ours, call the real `connect`.
fn intercept_connect(fd: c_int, dest: SocketAddr) -> Option<c_int> {
    if let Some(entry) = lookup(fd) {
        return Some(connect_again(&entry));
    }
    let family = tcp_family(fd)?;
    let dest = canonical(dest);
    if crate::env::settings().excluded(dest) || dest.ip().is_unspecified() || dest.port() == 0 {
        return None;
    }
    // A socket the application bound itself keeps its own source address.
    if local_addr(fd).is_some_and(|a| a.port() != 0) {
        return None;
    }
    let relay = relay::get().ok()?;
    if dest == relay.listen_addr() {
        return None;
    }
    let settings = read_options(fd);
    let tcp = match start_real_connect(dest, &settings) {
        Ok(t) => t,
        Err(e) => {
            set_errno(e);
            return Some(-1);
        }
    };
    let mirror = options::new(settings);
    if is_nonblocking(fd) {
        return Some(connect_in_background(
            fd,
            family,
            tcp,
            dest,
            relay,
            mirror,
            libc::EINPROGRESS,
        ));
    }
    match wait_connected(&tcp, sockopt_timeval(fd, libc::SO_SNDTIMEO)) {
        Ok(()) => {}
        // Interrupted or timed out: as in the kernel, the connect goes on
        // and the application learns its outcome as a non-blocking one.
        Err(e @ (libc::EINTR | libc::EINPROGRESS)) => {
            return Some(connect_in_background(
                fd, family, tcp, dest, relay, mirror, e,
            ));
        }
        Err(e) => {
            set_errno(e);
            return Some(-1);
        }
    }
    let local = tcp.local_addr().ok()?;
    let state = Arc::new(Mutex::new(SessionState::Negotiating));
    let shared = Shared {
        state: state.clone(),
        mirror: mirror.clone(),
    };
    match attach_to_relay(fd, family, relay, Job::Outbound { tcp, dest }, shared) {
        Ok(()) => {
            registry::insert(
                fd,
                Entry {
                    id: socket_id(fd).unwrap_or(0),
                    local,
                    peer: dest,
                    state,
                    cancel: None,
                    mirror,
                },
            );
            Some(0)
        }
        Err(e) => {
            set_errno(e);
            Some(-1)
        }
    }
}

/// Starts the real connection to `dest` on a socket of the shim's own,
/// non-blocking: the socket with its handshake under way, or the errno the
/// kernel reported at once.
fn start_real_connect(
    dest: SocketAddr,
    settings: &[Setting],
) -> Result<std::net::TcpStream, c_int> {
    let family = if dest.is_ipv4() { AF_INET } else { AF_INET6 };
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `fd` is a socket this function just made and owns.
    let sock = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    // Before the SYN: its TOS, keepalive from the start.
    for s in settings {
        apply_option(sock.as_raw_fd(), s);
    }
    let (st, l) = encode_addr(dest, family);
    let r = unsafe { (real().connect)(fd, &st as *const sockaddr_storage as *const sockaddr, l) };
    if r != 0 && errno() != libc::EINPROGRESS {
        return Err(errno());
    }
    Ok(sock)
}

/// A socket option holding a `timeval`, in milliseconds (`None`: none set).
fn sockopt_timeval(fd: c_int, name: c_int) -> Option<c_int> {
    let mut tv: libc::timeval = unsafe { zeroed() };
    let mut l = size_of::<libc::timeval>() as socklen_t;
    let r = unsafe {
        (real().getsockopt)(
            fd,
            libc::SOL_SOCKET,
            name,
            &mut tv as *mut libc::timeval as *mut c_void,
            &mut l,
        )
    };
    let ms = tv.tv_sec * 1000 + tv.tv_usec / 1000;
    (r == 0 && ms > 0).then(|| ms.min(i64::from(c_int::MAX)) as c_int)
}

/// Waits in the calling thread, as a blocking `connect` does, for the
/// real handshake: `Ok` once connected, or its errno. `timeout_ms` is the
/// application socket's `SO_SNDTIMEO`, which bounds a blocking connect
/// (`EINPROGRESS` then, as from the kernel). A signal ends the wait with
/// `EINTR` unless the kernel would have restarted the connect.
fn wait_connected(sock: &std::net::TcpStream, timeout_ms: Option<c_int>) -> Result<(), c_int> {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms.unwrap_or(-1)) };
        match r {
            1 => break,
            0 => return Err(libc::EINPROGRESS),
            _ if errno() == libc::EINTR => {
                // signal(7): connect is restarted after a handler with
                // SA_RESTART, unless the socket has a send timeout.
                if timeout_ms.is_some() || !handlers_restart() {
                    return Err(libc::EINTR);
                }
            }
            _ => return Err(errno()),
        }
    }
    match sockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR) {
        Some(0) => Ok(()),
        Some(e) => Err(e),
        None => Err(errno()),
    }
}

/// Whether every signal handler the process installed has `SA_RESTART`:
/// which signal interrupted the wait is unknown, so any handler without it
/// could have been the one.
fn handlers_restart() -> bool {
    (1..=libc::SIGRTMAX()).all(|sig| {
        let mut old: libc::sigaction = unsafe { zeroed() };
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            return true;
        }
        old.sa_sigaction == libc::SIG_DFL
            || old.sa_sigaction == libc::SIG_IGN
            || old.sa_flags & libc::SA_RESTART != 0
    })
}

fn is_nonblocking(fd: c_int) -> bool {
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    flags >= 0 && flags & libc::O_NONBLOCK != 0
}

/// `connect` again on a socket the shim already connected (or is
/// connecting): what the kernel would answer.
fn connect_again(entry: &Entry) -> c_int {
    let e = match registry::state_of(entry) {
        SessionState::Connecting => libc::EALREADY,
        SessionState::ConnectFailed(e) => {
            registry::set_state(&entry.state, SessionState::ConnectFailedReported);
            e
        }
        SessionState::ConnectFailedReported => libc::ECONNABORTED,
        _ => libc::EISCONN,
    };
    set_errno(e);
    -1
}

/// Zero bytes to fill a send queue with.
static FILLER: [u8; 64 * 1024] = [0; 64 * 1024];

/// Sets `TCP_NOTSENT_LOWAT` (0: the system default). Through the real
/// call: the `setsockopt` hook is for the application's own options.
fn set_notsent_lowat(fd: c_int, bytes: c_int) -> bool {
    let r = unsafe {
        (real().setsockopt)(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &bytes as *const c_int as *const c_void,
            size_of::<c_int>() as socklen_t,
        )
    };
    r == 0
}

/// Makes the application's socket writable again once the relay has
/// discarded the filler (see `connect_in_background`): the application's
/// own value comes back.
pub(crate) fn restore_notsent_lowat(socket: &OwnedFd, value: c_int) {
    set_notsent_lowat(socket.as_raw_fd(), value);
}

/// Bytes written to a socket and not sent yet.
fn unsent_bytes(fd: c_int) -> c_int {
    let mut n: c_int = 0;
    if unsafe { libc::ioctl(fd, libc::SIOCOUTQNSD, &mut n) } != 0 {
        return 0;
    }
    n
}

/// Writes filler to the application's socket until some of it stays
/// unsent (the relay's window is closed); returns how many bytes went in.
/// A full send buffer alone is not enough: with a small `SO_SNDBUF` the
/// buffer drains as ACKs come, and the socket would turn writable.
fn fill_until_held(fd: c_int) -> Result<usize, c_int> {
    let mut total = 0;
    // Bounded: a loopback connection's queues hold a few MiB at most.
    for _ in 0..4096 {
        let n = unsafe {
            libc::send(
                fd,
                FILLER.as_ptr() as *const c_void,
                FILLER.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            total += n as usize;
            continue;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN if unsent_bytes(fd) > 0 => return Ok(total),
            libc::EAGAIN => {
                // Wait for ACKs to make room, then write more.
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                unsafe { libc::poll(&mut p, 1, 20) };
            }
            e => return Err(e),
        }
    }
    Err(libc::ENOBUFS)
}

/// A non-blocking `connect`: answers `EINPROGRESS` at once, as the kernel
/// does, while the real TCP handshake goes on in the relay.
///
/// Until the real connection is up, the application's socket must poll
/// neither writable nor failed. So it is connected to the relay, which does
/// not read it yet, and filled with filler bytes until its send queue
/// blocks, with `TCP_NOTSENT_LOWAT` at one byte: a socket with unsent bytes
/// then polls not writable. When the real handshake succeeds, the relay
/// discards exactly the filler and restores the option; the socket turns
/// writable at that moment and `SO_ERROR` is 0. When it fails, the relay
/// resets the loopback connection and `SO_ERROR` (answered here) is the
/// real errno.
fn connect_in_background(
    fd: c_int,
    family: c_int,
    sock: std::net::TcpStream,
    dest: SocketAddr,
    relay: &relay::Relay,
    mirror: options::SharedMirror,
    report: c_int,
) -> c_int {
    let fail = |e: c_int| {
        set_errno(e);
        -1
    };
    let Some(local) = local_addr(sock.as_raw_fd()) else {
        return fail(libc::EADDRNOTAVAIL);
    };
    // The relay's own reference to the application's socket, for
    // restoring the option: the application may close its descriptor and
    // reuse the number meanwhile.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return -1;
    }
    // SAFETY: `dup` is a descriptor this function just made and owns.
    let app_socket = unsafe { OwnedFd::from_raw_fd(dup) };
    let (filled, filler) = tokio::sync::oneshot::channel();
    let cancel = Arc::new(tokio::sync::Notify::new());
    let state = Arc::new(Mutex::new(SessionState::Connecting));
    let lowat = sockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT).unwrap_or(0);
    let job = Job::Connecting(PendingConnect {
        real: sock,
        dest,
        filler,
        app_socket,
        app_lowat: lowat,
        cancel: cancel.clone(),
    });
    let shared = Shared {
        state: state.clone(),
        mirror: mirror.clone(),
    };
    if let Err(e) = attach_to_relay(fd, family, relay, job, shared) {
        return fail(e);
    }
    registry::insert(
        fd,
        Entry {
            id: socket_id(fd).unwrap_or(0),
            local,
            peer: dest,
            state,
            cancel: Some(cancel),
            mirror,
        },
    );
    if !set_notsent_lowat(fd, 1) {
        registry::remove(fd);
        return fail(errno());
    }
    match fill_until_held(fd) {
        Ok(n) => {
            let _ = filled.send(n);
            fail(report)
        }
        Err(e) => {
            registry::remove(fd);
            fail(e)
        }
    }
}

/// `accept4` on a listening TCP socket the shim handles: the real
/// connection goes to the relay and the application gets the other end of
/// a fresh loopback connection instead. `Err(c)`: not ours, hand `c` out.
fn intercept_accept(
    listener: c_int,
    c: c_int,
    peer: SocketAddr,
    flags: c_int,
) -> Result<c_int, c_int> {
    let Some(family) = tcp_family(c) else {
        return Err(c);
    };
    let Some(local) = local_addr(c) else {
        return Err(c);
    };
    if crate::env::settings().excluded(canonical(local)) {
        return Err(c);
    }
    let Ok(relay) = relay::get() else {
        return Err(c);
    };
    let app = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if app < 0 {
        return Err(c);
    }
    // An accepted socket inherits the listening socket's options; the
    // one the application gets instead does too.
    for setting in read_options(listener).into_iter().chain(read_option(
        listener,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
    )) {
        apply_option(app, &setting);
    }
    // SAFETY: `c` is a connected socket we own from here on.
    let tcp = unsafe { std::net::TcpStream::from_raw_fd(c) };
    let state = Arc::new(Mutex::new(SessionState::Negotiating));
    let job = Job::Inbound {
        tcp,
        peer: canonical(peer),
    };
    // The accepted real socket has the listener's options already; the
    // mirror carries those the application sets on its socket later.
    let mirror = options::new(Vec::new());
    let shared = Shared {
        state: state.clone(),
        mirror: mirror.clone(),
    };
    if attach_to_relay(app, family, relay, job, shared).is_err() {
        unsafe { (real().close)(app) };
        // The real connection went with the job; the caller sees an
        // aborted connection, as if the client had reset it.
        return Ok(-1);
    }
    if flags & libc::SOCK_NONBLOCK != 0 {
        unsafe {
            let fl = libc::fcntl(app, libc::F_GETFL);
            libc::fcntl(app, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    if flags & libc::SOCK_CLOEXEC == 0 {
        unsafe { libc::fcntl(app, libc::F_SETFD, 0) };
    }
    registry::insert(
        app,
        Entry {
            id: socket_id(app).unwrap_or(0),
            local: canonical(local),
            peer: canonical(peer),
            state,
            cancel: None,
            mirror,
        },
    );
    Ok(app)
}

/// # Safety
/// As libc's `connect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(_guard) = Guard::enter() else {
        return unsafe { (real().connect)(fd, addr, len) };
    };
    let Some(dest) = (unsafe { read_addr(addr, len) }) else {
        return unsafe { (real().connect)(fd, addr, len) };
    };
    match catch_unwind(AssertUnwindSafe(|| intercept_connect(fd, dest))) {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => unsafe { (real().connect)(fd, addr, len) },
    }
}

/// # Safety
/// As libc's `accept4`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let Some(_guard) = Guard::enter() else {
        return unsafe { (real().accept4)(fd, addr, len, flags) };
    };
    let mut st: sockaddr_storage = unsafe { zeroed() };
    let mut l = size_of::<sockaddr_storage>() as socklen_t;
    let c = unsafe {
        (real().accept4)(
            fd,
            &mut st as *mut sockaddr_storage as *mut sockaddr,
            &mut l,
            flags,
        )
    };
    if c < 0 {
        return c;
    }
    let family = c_int::from(st.ss_family);
    let peer = unsafe { read_addr(&st as *const sockaddr_storage as *const sockaddr, l) };
    let fd_out = match peer {
        Some(p) => match catch_unwind(AssertUnwindSafe(|| intercept_accept(fd, c, p, flags))) {
            Ok(Ok(app)) => app,
            Ok(Err(c)) => c,
            Err(_) => c,
        },
        None => c,
    };
    if fd_out >= 0 {
        if let Some(p) = peer {
            unsafe { write_addr(p, family, addr, len) };
        }
    } else {
        set_errno(libc::ECONNABORTED);
    }
    fd_out
}

/// # Safety
/// As libc's `accept`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    unsafe { accept4(fd, addr, len, 0) }
}

/// Answers `getpeername`/`getsockname` for a relayed socket with the real
/// connection's address (`pick` chooses which); `None` for any other
/// socket. Only relayed sockets pay for the family lookup.
unsafe fn relayed_name(
    fd: c_int,
    pick: fn(&Entry) -> SocketAddr,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Option<c_int> {
    if BYPASS.with(|b| b.get()) {
        return None;
    }
    let entry = lookup(fd)?;
    let family = tcp_family(fd)?;
    unsafe { write_addr(pick(&entry), family, addr, len) };
    Some(0)
}

/// Whether a relayed socket's real connection is not (or never was) up.
fn not_connected(fd: c_int) -> bool {
    lookup(fd).is_some_and(|e| {
        matches!(
            registry::state_of(&e),
            SessionState::Connecting
                | SessionState::ConnectFailed(_)
                | SessionState::ConnectFailedReported
        )
    })
}

/// # Safety
/// As libc's `getpeername`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if !BYPASS.with(|b| b.get()) && catch_unwind(|| not_connected(fd)).unwrap_or(false) {
        set_errno(libc::ENOTCONN);
        return -1;
    }
    unsafe { relayed_name(fd, |e| e.peer, addr, len) }
        .unwrap_or_else(|| unsafe { (real().getpeername)(fd, addr, len) })
}

/// # Safety
/// As libc's `getsockname`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    unsafe {
        relayed_name(
            fd,
            |e| options::local(&e.mirror).unwrap_or(e.local),
            addr,
            len,
        )
    }
    .unwrap_or_else(|| unsafe { (real().getsockname)(fd, addr, len) })
}

/// # Safety
/// As libc's `close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if !BYPASS.with(|b| b.get()) {
        registry::remove(fd);
    }
    unsafe { (real().close)(fd) }
}

/// The read-only options of `tcpcrypt.h` (values of this library's own).
mod opt {
    pub const SESSID: i32 = 0x5443_0001;
    pub const NEGTEP: i32 = 0x5443_0002;
    pub const ROLE: i32 = 0x5443_0003;
    pub const SELF_NAME: i32 = 0x5443_0004;
    pub const PEER_NAME: i32 = 0x5443_0005;
    pub const TRANSCRIPT: i32 = 0x5443_0006;
    pub const PEER_GOPT: i32 = 0x5443_0007;
    pub const CRYPT_CONF: i32 = 0x5443_0008;
    pub const ALL: [i32; 8] = [
        SESSID, NEGTEP, ROLE, SELF_NAME, PEER_NAME, TRANSCRIPT, PEER_GOPT, CRYPT_CONF,
    ];
}

/// The value of a `tcpcrypt.h` option for `fd`, or the errno to report.
fn option_value(fd: c_int, name: c_int) -> Result<Vec<u8>, c_int> {
    let entry = lookup(fd).ok_or(libc::EINVAL)?;
    let info = match registry::state_of(&entry) {
        SessionState::Encrypted(info) => info,
        SessionState::Negotiating | SessionState::Connecting => return Err(libc::ENOTCONN),
        _ => return Err(libc::EINVAL),
    };
    let int = |v: i32| v.to_ne_bytes().to_vec();
    Ok(match name {
        opt::SESSID => info.session_id.as_bytes().to_vec(),
        opt::NEGTEP => int(i32::from(info.tep_byte)),
        opt::ROLE => int(i32::from(info.role.as_u8())),
        opt::SELF_NAME => info.self_name(),
        opt::PEER_NAME => info.peer_name(),
        opt::TRANSCRIPT => info.transcript.clone(),
        opt::PEER_GOPT => int(i32::from(info.peer_global)),
        opt::CRYPT_CONF => int(i32::from(info.aead.id())),
        _ => return Err(libc::ENOPROTOOPT),
    })
}

/// Copies option `name` of `fd` into `out` (room for `room` bytes) and
/// returns its length, or -1 with errno set (EINVAL also when it does not
/// fit).
unsafe fn copy_option(fd: c_int, name: c_int, out: *mut u8, room: usize) -> c_int {
    match catch_unwind(|| option_value(fd, name)) {
        Ok(Ok(v)) if !out.is_null() && room >= v.len() => {
            unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, v.len()) };
            v.len() as c_int
        }
        Ok(Err(e)) => {
            set_errno(e);
            -1
        }
        _ => {
            set_errno(libc::EINVAL);
            -1
        }
    }
}

/// The real errno of a failed non-blocking connect, once, as `SO_ERROR`
/// reports it (the kernel's own error, a reset from the relay, is cleared).
fn take_connect_error(fd: c_int) -> Option<c_int> {
    let entry = lookup(fd)?;
    let SessionState::ConnectFailed(e) = registry::state_of(&entry) else {
        return None;
    };
    registry::set_state(&entry.state, SessionState::ConnectFailedReported);
    let mut kernel: c_int = 0;
    let mut l = size_of::<c_int>() as socklen_t;
    unsafe {
        (real().getsockopt)(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut kernel as *mut c_int as *mut c_void,
            &mut l,
        )
    };
    Some(e)
}

/// Applies an application's socket option to a real socket. An option
/// the real socket refuses (an IPv6 option on an IPv4 socket, as the
/// kernel itself ignores on a v4-mapped connection) is left as it is: the
/// application's own call succeeded, on its socket.
pub(crate) fn apply_option(fd: c_int, setting: &Setting) {
    let (level, name, value) = (setting.0, setting.1, &setting.2);
    unsafe {
        (real().setsockopt)(
            fd,
            level,
            name,
            value.as_ptr() as *const c_void,
            value.len() as socklen_t,
        )
    };
}

/// A socket's current value of one option.
fn read_option(fd: c_int, level: c_int, name: c_int) -> Option<Setting> {
    let mut buf = [0u8; 16];
    let mut len = options::value_len(level, name) as socklen_t;
    let r =
        unsafe { (real().getsockopt)(fd, level, name, buf.as_mut_ptr() as *mut c_void, &mut len) };
    (r == 0).then(|| (level, name, buf[..len as usize].to_vec()))
}

/// A socket's current values of the mirrored options.
fn read_options(fd: c_int) -> Vec<Setting> {
    MIRRORED
        .into_iter()
        .filter_map(|(level, name)| read_option(fd, level, name))
        .collect()
}

/// # Safety
/// As libc's `setsockopt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let r = unsafe { (real().setsockopt)(fd, level, name, val, len) };
    if r != 0 || val.is_null() || !MIRRORED.contains(&(level, name)) {
        return r;
    }
    let Some(_guard) = Guard::enter() else {
        return r;
    };
    // SAFETY: the kernel has just read this many bytes at `val` (it reads
    // an `int` option's first four bytes whatever `len` says).
    let n = (len as usize).min(options::value_len(level, name));
    let value = unsafe { std::slice::from_raw_parts(val as *const u8, n) }.to_vec();
    let _ = catch_unwind(|| {
        if let Some(entry) = lookup(fd) {
            options::set(&entry.mirror, (level, name, value));
        }
    });
    r
}

/// # Safety
/// As libc's `getsockopt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let room = !val.is_null() && !len.is_null() && unsafe { *len } as usize >= size_of::<c_int>();
    if level == libc::SOL_SOCKET && name == libc::SO_ERROR && room && !BYPASS.with(|b| b.get()) {
        if let Ok(Some(e)) = catch_unwind(|| take_connect_error(fd)) {
            unsafe {
                *(val as *mut c_int) = e;
                *len = size_of::<c_int>() as socklen_t;
            }
            return 0;
        }
    }
    let ours = level == libc::IPPROTO_TCP && opt::ALL.contains(&name) && !BYPASS.with(|b| b.get());
    if !ours {
        return unsafe { (real().getsockopt)(fd, level, name, val, len) };
    }
    if len.is_null() {
        set_errno(libc::EFAULT);
        return -1;
    }
    let n = unsafe { copy_option(fd, name, val as *mut u8, *len as usize) };
    if n < 0 {
        return -1;
    }
    unsafe { *len = n as socklen_t };
    0
}

/// See `tcpcrypt.h`.
///
/// # Safety
/// `buf` must be valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcpcrypt_session_id(fd: c_int, buf: *mut u8, len: usize) -> c_int {
    unsafe { copy_option(fd, opt::SESSID, buf, len) }
}

/// See `tcpcrypt.h`.
#[unsafe(no_mangle)]
pub extern "C" fn tcpcrypt_is_encrypted(fd: c_int) -> c_int {
    match catch_unwind(|| lookup(fd).map(|e| registry::state_of(&e))) {
        Ok(Some(SessionState::Encrypted(_))) => 1,
        Ok(Some(SessionState::Negotiating | SessionState::Connecting)) => {
            set_errno(libc::ENOTCONN);
            -1
        }
        _ => 0,
    }
}
