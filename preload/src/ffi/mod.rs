//! The libc functions this library replaces, and everything `unsafe` it
//! needs: symbol lookup, raw socket addresses, errno, the loopback pairing.
//! The hooks are here; what they do is in one module per concern (`addr`,
//! `socket`, `pair`, `connect`, `accept`, `query`). Every hook falls back
//! to the real function when the socket is not ours to handle, when it is
//! called from inside another hook (a thread-local flag), and when
//! anything panics (`catch_unwind`): the host program is never aborted by
//! this library.

use std::cell::Cell;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use libc::{
    AF_INET, AF_INET6, c_int, c_void, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage,
    socklen_t,
};

use crate::options::{self, MIRRORED, Setting};
use crate::registry::{self, Entry, Known};
use crate::wire::{ConnState, Reply, Request};

mod accept;
mod addr;
mod connect;
mod pair;
mod query;
mod reserve;
mod socket;

use accept::*;
use addr::*;
use connect::*;
use pair::*;
use query::*;
use reserve::*;
use socket::*;

pub(crate) use socket::finish_lazy_values;

thread_local! {
    static BYPASS: Cell<bool> = const { Cell::new(false) };
}

/// Set while a hook runs, so that the hook's own socket calls (and those
/// of the standard library it uses) go straight to libc.
struct Guard(bool);

impl Guard {
    /// Sets the flag for the length of a hook that must run whatever it
    /// says (see `connect`); puts back what it was.
    fn enter_always() -> Guard {
        Guard(BYPASS.with(|b| b.replace(true)))
    }

    fn enter() -> Option<Guard> {
        BYPASS.with(|b| {
            if b.get() {
                None
            } else {
                b.set(true);
                Some(Guard(false))
            }
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        BYPASS.with(|b| b.set(self.0));
    }
}

type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type Accept4Fn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
type NameFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type ListenFn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type GetsockoptFn = unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int;
type SetsockoptFn = unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int;
type SendtoFn =
    unsafe extern "C" fn(c_int, *const c_void, usize, c_int, *const sockaddr, socklen_t) -> isize;
type SendmsgFn = unsafe extern "C" fn(c_int, *const libc::msghdr, c_int) -> isize;
type SendmmsgFn = unsafe extern "C" fn(c_int, *mut libc::mmsghdr, libc::c_uint, c_int) -> c_int;

struct Real {
    connect: ConnectFn,
    accept4: Accept4Fn,
    getpeername: NameFn,
    getsockname: NameFn,
    close: CloseFn,
    listen: ListenFn,
    getsockopt: GetsockoptFn,
    setsockopt: SetsockoptFn,
    sendto: SendtoFn,
    sendmsg: SendmsgFn,
    sendmmsg: SendmmsgFn,
}

// The system calls themselves, for when `dlsym` finds no next definition.
unsafe extern "C" fn sys_connect(fd: c_int, a: *const sockaddr, l: socklen_t) -> c_int {
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { libc::syscall(libc::SYS_connect, fd, a, l) as c_int }
}
unsafe extern "C" fn sys_accept4(
    fd: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
    f: c_int,
) -> c_int {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_accept4, fd, a, l, f) as c_int }
}
unsafe extern "C" fn sys_getpeername(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> c_int {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_getpeername, fd, a, l) as c_int }
}
unsafe extern "C" fn sys_getsockname(fd: c_int, a: *mut sockaddr, l: *mut socklen_t) -> c_int {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_getsockname, fd, a, l) as c_int }
}
unsafe extern "C" fn sys_close(fd: c_int) -> c_int {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close, fd) as c_int }
}
unsafe extern "C" fn sys_listen(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_listen, fd, backlog) as c_int }
}
unsafe extern "C" fn sys_setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    v: *const c_void,
    l: socklen_t,
) -> c_int {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_setsockopt, fd, level, name, v, l) as c_int }
}
unsafe extern "C" fn sys_getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    v: *mut c_void,
    l: *mut socklen_t,
) -> c_int {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_getsockopt, fd, level, name, v, l) as c_int }
}
unsafe extern "C" fn sys_sendto(
    fd: c_int,
    b: *const c_void,
    n: usize,
    f: c_int,
    a: *const sockaddr,
    l: socklen_t,
) -> isize {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_sendto, fd, b, n, f, a, l) as isize }
}
unsafe extern "C" fn sys_sendmsg(fd: c_int, m: *const libc::msghdr, f: c_int) -> isize {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_sendmsg, fd, m, f) as isize }
}
unsafe extern "C" fn sys_sendmmsg(
    fd: c_int,
    m: *mut libc::mmsghdr,
    n: libc::c_uint,
    f: c_int,
) -> c_int {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_sendmmsg, fd, m, n, f) as c_int }
}

/// The next definition of `name` after this library, or `fallback`.
///
/// # Safety
/// `F` must be the function pointer type of the symbol `name`.
unsafe fn next<F: Copy>(name: &std::ffi::CStr, fallback: F) -> F {
    // SAFETY: `name` is a NUL-terminated string.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if p.is_null() {
        fallback
    } else {
        // SAFETY: F is the function pointer type of the libc symbol `name`.
        unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
    }
}

/// Runs when the library is loaded, before a preloaded program has threads
/// of its own: the fork handlers are in place before any thread can fork.
/// The settings, the log and the daemon's environment are read now, while
/// the environment is the one the user gave: a program may clear it later
/// (nginx does for its workers), and a worker must not lose the policy.
#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = {
    extern "C" fn on_load() {
        let _ = catch_unwind(|| {
            install_fork_handlers();
            crate::wire::remember_environment();
            crate::env::settings();
            crate::log::init();
        });
    }
    on_load
};

/// Registers `crate::fork`'s handlers with `pthread_atfork`, once.
fn install_fork_handlers() {
    extern "C" fn prepare() {
        let _ = catch_unwind(crate::fork::before);
    }
    extern "C" fn after() {
        let _ = catch_unwind(crate::fork::after);
    }
    // SAFETY: the handlers are `extern "C"` functions that never unwind.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(after), Some(after));
    }
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    // SAFETY: each name is paired with its own function type.
    REAL.get_or_init(|| unsafe {
        Real {
            connect: next(c"connect", sys_connect as ConnectFn),
            accept4: next(c"accept4", sys_accept4 as Accept4Fn),
            getpeername: next(c"getpeername", sys_getpeername as NameFn),
            getsockname: next(c"getsockname", sys_getsockname as NameFn),
            close: next(c"close", sys_close as CloseFn),
            listen: next(c"listen", sys_listen as ListenFn),
            getsockopt: next(c"getsockopt", sys_getsockopt as GetsockoptFn),
            setsockopt: next(c"setsockopt", sys_setsockopt as SetsockoptFn),
            sendto: next(c"sendto", sys_sendto as SendtoFn),
            sendmsg: next(c"sendmsg", sys_sendmsg as SendmsgFn),
            sendmmsg: next(c"sendmmsg", sys_sendmmsg as SendmmsgFn),
        }
    })
}

fn set_errno(e: c_int) {
    // SAFETY: errno is thread-local; its location is always valid.
    unsafe { *libc::__errno_location() = e };
}

fn errno() -> c_int {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

/// # Safety
/// As libc's `connect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // Not skipped when another hook of this thread runs: the shim's own
    // code never calls `connect` on an IP socket (it calls the real one),
    // and a flag left set by a signal handler that jumped out of a hook
    // (`siglongjmp`, as `wget -T` does) must not let a later connection
    // out in the clear.
    let _guard = Guard::enter_always();
    // SAFETY: the caller passes `len` readable bytes at `addr`.
    let Some(dest) = (unsafe { read_addr(addr, len) }) else {
        // SAFETY: as above.
        return unsafe { (real().connect)(fd, addr, len) };
    };
    match catch_unwind(AssertUnwindSafe(|| intercept_connect(fd, dest))) {
        Ok(Some(r)) => r,
        // SAFETY: the caller's arguments, passed on unchanged.
        Ok(None) => unsafe { (real().connect)(fd, addr, len) },
        Err(_) => match refuse_if_mandatory("the shim failed") {
            Some(r) => r,
            // SAFETY: as above.
            None => unsafe { (real().connect)(fd, addr, len) },
        },
    }
}

/// glibc's exported alias of `connect`, which a program may call by that
/// name: the same hook.
///
/// # Safety
/// As libc's `connect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { connect(fd, addr, len) }
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
    // Never skipped, as `connect`: the shim's own code calls the real one.
    let _guard = Guard::enter_always();
    // The hand-over's descriptors, before the connection leaves the queue;
    // held across a non-blocking accept (it returns at once), only checked
    // before a blocking one (which may wait long while other threads need
    // descriptors).
    let reserved = match tcp_family(fd).map(|_| reserve(ACCEPT_HANDOVER_FDS)) {
        Some(Err(e @ (libc::EMFILE | libc::ENFILE))) => {
            set_errno(e);
            return -1;
        }
        Some(Ok(mut r)) if is_nonblocking(fd) => {
            r.free_one();
            Some(r)
        }
        _ => None,
    };
    // SAFETY: plain data; all zeroes is a valid value.
    let mut st: sockaddr_storage = unsafe { zeroed() };
    let mut l = size_of::<sockaddr_storage>() as socklen_t;
    // SAFETY: `st` has room for `l` bytes.
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
    // Free for the hand-over; the connection's number is made the lowest
    // again whatever happens to it.
    let renumber = reserved.is_some();
    drop(reserved);
    // SAFETY: the kernel wrote `l` bytes of address to `st`.
    let peer = unsafe { read_addr(&st as *const sockaddr_storage as *const sockaddr, l) };
    let untouched = |c: c_int| {
        // -1: refused (and reset) under the mandatory policy.
        if c < 0 || !renumber {
            return c;
        }
        // SAFETY: `c` is the connection just accepted, handed out as it is.
        let c = unsafe { OwnedFd::from_raw_fd(c) };
        let c = lowest_numbered(c, flags & libc::SOCK_CLOEXEC != 0);
        std::os::fd::IntoRawFd::into_raw_fd(c)
    };
    let fd_out = match peer {
        Some(p) => match catch_unwind(AssertUnwindSafe(|| intercept_accept(fd, c, p, flags))) {
            Ok(Ok(app)) => app,
            Ok(Err(c)) => untouched(c),
            // The hook owned `c` and closed it while unwinding: the
            // caller gets the error of a connection that went away.
            Err(_) => -1,
        },
        None => untouched(c),
    };
    if fd_out < 0 {
        set_errno(libc::ECONNABORTED);
        return fd_out;
    }
    // The address as the kernel wrote it, whatever the family (AF_UNIX
    // included): scope id and flow label of an IPv6 peer kept.
    // SAFETY: the caller passes room for `*len` bytes at `addr`.
    unsafe { copy_addr(&st, l, addr, len) };
    fd_out
}

/// # Safety
/// As libc's `listen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let guard = Guard::enter();
    if guard.is_some() {
        let _ = catch_unwind(|| prepare_listen(fd));
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    let r = unsafe { (real().listen)(fd, backlog) };
    if r == 0 && guard.is_some() {
        let saved = errno();
        let _ = catch_unwind(|| note_listening(fd));
        set_errno(saved);
    }
    r
}

/// # Safety
/// As libc's `accept`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe { accept4(fd, addr, len, 0) }
}

/// # Safety
/// As libc's `getpeername`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let Some(_guard) = Guard::enter() else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { (real().getpeername)(fd, addr, len) };
    };
    match catch_unwind(|| relayed_names(fd)) {
        Ok(Some(k)) => match k.state {
            ConnState::Connecting | ConnState::Failed(_) => {
                set_errno(libc::ENOTCONN);
                -1
            }
            // SAFETY: the caller passes room for `*len` bytes at `addr`.
            _ => unsafe { write_name(fd, k.peer, addr, len) },
        },
        // SAFETY: the caller's arguments, passed on unchanged.
        _ => unsafe { (real().getpeername)(fd, addr, len) },
    }
}

/// # Safety
/// As libc's `getsockname`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let Some(_guard) = Guard::enter() else {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { (real().getsockname)(fd, addr, len) };
    };
    match catch_unwind(|| relayed_names(fd)) {
        // SAFETY: the caller passes room for `*len` bytes at `addr`.
        Ok(Some(k)) => unsafe { write_name(fd, k.local, addr, len) },
        // SAFETY: the caller's arguments, passed on unchanged.
        _ => unsafe { (real().getsockname)(fd, addr, len) },
    }
}

/// # Safety
/// As libc's `close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let Some(_guard) = Guard::enter() else {
        // SAFETY: the caller's argument, passed on unchanged.
        return unsafe { (real().close)(fd) };
    };
    let entry = catch_unwind(|| registry::remove(fd))
        .ok()
        .flatten()
        .filter(|e| socket_id(fd) == Some(e.id));
    // An abortive close lets the daemon take what is queued first (a
    // forked child's too: its close may be the last).
    let held = || matches!(settled_by_socket(fd), Some(Outcome::Connecting));
    if entry.is_some() {
        let _ = catch_unwind(|| send_before_abortive_close(fd, held));
    }
    // A connect of this process still under way (not merely unconfirmed:
    // a program that learnt the outcome by writing never asked SO_ERROR).
    let pending = entry.filter(|e| {
        e.pending
            && !e.reported
            && e.owner == std::process::id()
            && catch_unwind(held).unwrap_or(false)
    });
    // SAFETY: as above.
    let r = unsafe { (real().close)(fd) };
    if let Some(entry) = pending {
        let saved = errno();
        let _ = catch_unwind(|| abandon_if_last(entry.id));
        set_errno(saved);
    }
    r
}

/// glibc's exported alias of `close`: the same hook.
///
/// # Safety
/// As libc's `close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __close(fd: c_int) -> c_int {
    // SAFETY: the caller's argument, passed on unchanged.
    unsafe { close(fd) }
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
    if (level, name) == (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT)
        && !val.is_null()
        && len as usize >= size_of::<c_int>()
        && let Some(_guard) = Guard::enter()
    {
        // SAFETY: the caller passes `len` bytes at `val`, an int's at least.
        let lowat = unsafe { (val as *const c_int).read_unaligned() };
        if catch_unwind(|| set_held_lowat(fd, lowat)).unwrap_or(false) {
            return 0;
        }
    }
    // SAFETY: the caller's arguments, passed on unchanged.
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
    // SAFETY: as above: at most `len` bytes the kernel has just read.
    let value = unsafe { std::slice::from_raw_parts(val as *const u8, n) }.to_vec();
    let _ = catch_unwind(|| mirror_option(fd, (level, name, value)));
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
    let lowat = (level, name) == (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT);
    let ours = (level == libc::SOL_SOCKET && name == libc::SO_ERROR)
        || lowat
        || (level == libc::IPPROTO_TCP && opt::ALL.contains(&name));
    let guard = if ours { Guard::enter() } else { None };
    if guard.is_none() {
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { (real().getsockopt)(fd, level, name, val, len) };
    }
    if level == libc::SOL_SOCKET || lowat {
        // SAFETY: checked for room before writing.
        let room =
            !val.is_null() && !len.is_null() && unsafe { *len } as usize >= size_of::<c_int>();
        let answer = || {
            if lowat {
                held_lowat(fd)
            } else {
                connect_error(fd)
            }
        };
        if room && let Ok(Some(e)) = catch_unwind(answer) {
            // SAFETY: room for an int checked above.
            unsafe {
                *(val as *mut c_int) = e;
                *len = size_of::<c_int>() as socklen_t;
            }
            return 0;
        }
        // SAFETY: the caller's arguments, passed on unchanged.
        return unsafe { (real().getsockopt)(fd, level, name, val, len) };
    }
    if len.is_null() {
        set_errno(libc::EFAULT);
        return -1;
    }
    // SAFETY: the caller passes room for `*len` bytes at `val`.
    let n = unsafe { copy_option(fd, name, val as *mut u8, *len as usize) };
    if n < 0 {
        return -1;
    }
    // SAFETY: checked non-null above.
    unsafe { *len = n as socklen_t };
    0
}

/// A Fast Open send (`MSG_FASTOPEN` with an address: an implicit
/// `connect`) to `dest`: `Some` with what the call returns when the shim
/// connected the socket (`send` then sends the data on it, without the
/// address) or refused; `None` when the real call is to go on unchanged.
fn fast_open(fd: c_int, dest: SocketAddr, send: impl FnOnce() -> isize) -> Option<isize> {
    match catch_unwind(AssertUnwindSafe(|| intercept_fastopen(fd, dest))) {
        Ok(Some(0)) => Some(send()),
        Ok(Some(_)) => Some(-1),
        Ok(None) => None,
        // Never the real call in the clear when the policy forbids it.
        Err(_) => refuse_if_mandatory("the shim failed").map(|r| r as isize),
    }
}

/// # Safety
/// As libc's `sendto`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: usize,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> isize {
    if flags & libc::MSG_FASTOPEN != 0
        && let _guard = Guard::enter_always()
        // SAFETY: the caller passes `len` readable bytes at `addr`.
        && let Some(dest) = unsafe { read_addr(addr, len) }
        && let Some(r) = fast_open(fd, dest, || {
            // SAFETY: the caller's buffer, on the now connected socket.
            unsafe {
                (real().sendto)(fd, buf, n, flags & !libc::MSG_FASTOPEN, std::ptr::null(), 0)
            }
        })
    {
        return r;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { (real().sendto)(fd, buf, n, flags, addr, len) }
}

/// # Safety
/// As libc's `sendmsg`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
    if flags & libc::MSG_FASTOPEN != 0
        && !msg.is_null()
        && let _guard = Guard::enter_always()
        // SAFETY: the caller passes a valid message header.
        && let Some(dest) = unsafe { read_addr((*msg).msg_name as *const sockaddr, (*msg).msg_namelen) }
        && let Some(r) = fast_open(fd, dest, || {
            // SAFETY: a copy of the caller's header without the address,
            // on the now connected socket.
            let mut m = unsafe { *msg };
            m.msg_name = std::ptr::null_mut();
            m.msg_namelen = 0;
            // SAFETY: `m` is a valid header whose buffers are the caller's.
            unsafe { (real().sendmsg)(fd, &m, flags & !libc::MSG_FASTOPEN) }
        })
    {
        return r;
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { (real().sendmsg)(fd, msg, flags) }
}

/// # Safety
/// As libc's `sendmmsg`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    n: libc::c_uint,
    flags: c_int,
) -> c_int {
    if flags & libc::MSG_FASTOPEN != 0 && n > 0 && !msgs.is_null() {
        // Fast Open: the first message connects the socket (through the
        // `sendmsg` hook), the others go on it, as the kernel would send
        // them one by one.
        // SAFETY: the caller passes `n` valid headers at `msgs`.
        let first = unsafe { &mut *msgs };
        // SAFETY: a valid header of the caller's.
        let sent = unsafe { sendmsg(fd, &first.msg_hdr, flags) };
        if sent < 0 {
            return -1;
        }
        first.msg_len = sent as libc::c_uint;
        if n == 1 {
            return 1;
        }
        // SAFETY: the caller's other `n - 1` headers.
        let rest =
            unsafe { (real().sendmmsg)(fd, msgs.add(1), n - 1, flags & !libc::MSG_FASTOPEN) };
        // Messages sent before an error are reported, not the error.
        return 1 + rest.max(0);
    }
    // SAFETY: the caller's arguments, passed on unchanged.
    unsafe { (real().sendmmsg)(fd, msgs, n, flags) }
}

/// See `tcpcrypt.h`.
///
/// # Safety
/// `buf` must be valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcpcrypt_session_id(fd: c_int, buf: *mut u8, len: usize) -> c_int {
    let Some(_guard) = Guard::enter() else {
        set_errno(libc::EINVAL);
        return -1;
    };
    // SAFETY: the caller passes room for `len` bytes at `buf`.
    unsafe { copy_option(fd, opt::SESSID, buf, len) }
}

/// See `tcpcrypt.h`.
#[unsafe(no_mangle)]
pub extern "C" fn tcpcrypt_is_encrypted(fd: c_int) -> c_int {
    let Some(_guard) = Guard::enter() else {
        return 0;
    };
    match catch_unwind(|| relayed(fd).map(|k| k.state)) {
        Ok(Some(ConnState::Encrypted(_))) => 1,
        Ok(Some(ConnState::Negotiating | ConnState::Connecting)) => {
            set_errno(libc::ENOTCONN);
            -1
        }
        _ => 0,
    }
}
