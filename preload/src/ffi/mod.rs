//! The libc functions this library replaces, and everything `unsafe` it
//! needs: symbol lookup, raw socket addresses, errno. The hooks are here;
//! what they do is in one module per concern (`addr`, `socket`, `connect`,
//! `accept`, `query`). Every hook falls back
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

mod accept;
mod addr;
mod connect;
mod query;
mod socket;

use accept::*;
use addr::*;
use connect::*;
use query::*;
use socket::*;

pub(crate) use connect::restore_notsent_lowat;
pub(crate) use socket::{apply_option, finish_lazy_values};

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

/// Runs when the library is loaded, before a preloaded program has threads
/// of its own: the fork handlers are in place before any thread can fork,
/// so no `fork` can catch their installation half done.
#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = {
    extern "C" fn on_load() {
        let _ = catch_unwind(install_fork_handlers);
    }
    on_load
};

/// Registers `crate::fork`'s handlers with `pthread_atfork`, once: a child
/// inherits them with the rest of the process.
pub(crate) fn install_fork_handlers() {
    extern "C" fn prepare() {
        let _ = catch_unwind(crate::fork::before);
    }
    extern "C" fn parent() {
        let _ = catch_unwind(crate::fork::after);
    }
    extern "C" fn child() {
        let _ = catch_unwind(crate::fork::after_child);
    }
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    });
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
        Ok(None) => unsafe { (real().connect)(fd, addr, len) },
        Err(_) => match refuse_if_mandatory("the shim failed") {
            Some(r) => r,
            None => unsafe { (real().connect)(fd, addr, len) },
        },
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
            Err(_) => refuse_accepted_if_mandatory(c, "the shim failed"),
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
    let Some(_guard) = Guard::enter() else {
        return unsafe { (real().close)(fd) };
    };
    let connecting = registry::remove(fd);
    let r = unsafe { (real().close)(fd) };
    if let Some((id, cancel)) = connecting {
        // The relay holds one descriptor of the socket while it connects;
        // one more is a copy the application still has.
        if catch_unwind(|| descriptors_of(id)).is_ok_and(|n| n <= 1) {
            cancel.notify_one();
        }
    }
    r
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
