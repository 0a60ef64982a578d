//! Facts about a socket and its options, read or set through the real
//! libc calls: family, identity, flags, the options copied to the real
//! connection.

use super::*;

pub(super) fn sockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut l = size_of::<c_int>() as socklen_t;
    // SAFETY: `v` and `l` are ours and describe an `int` of `l` bytes.
    let r =
        unsafe { libc::getsockopt(fd, level, name, &mut v as *mut c_int as *mut c_void, &mut l) };
    (r == 0).then_some(v)
}

/// A socket's identity: its inode number. `None` for anything but a
/// socket (a file's inode number says nothing about sockets).
pub(super) fn socket_id(fd: c_int) -> Option<u64> {
    // SAFETY: `stat` is plain data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: `st` is ours, of the size `fstat` writes.
    (unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
        .then_some(st.st_ino)
}

/// How many of this process's descriptors name the socket with identity
/// `id` (`/proc/self/fd` shows each as `socket:[inode]`).
pub(super) fn descriptors_of(id: u64) -> usize {
    descriptors_in("self", id).unwrap_or(0)
}

/// How many descriptors of process `pid` (`self` for this one) name the
/// socket with identity `id`; the error when its `/proc/PID/fd` cannot
/// be read.
fn descriptors_in(pid: &str, id: u64) -> std::io::Result<usize> {
    let name = format!("socket:[{id}]");
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == name.as_str()))
        .count())
}

/// Whether a descendant of this process may hold a descriptor of socket
/// `id` (a copy a child inherited at `fork` or `posix_spawn`). When
/// `/proc` cannot tell, whether the process forked: the connect then goes
/// on, as it would for a holder.
pub(super) fn held_by_descendants(id: u64) -> bool {
    if !crate::daemon::proc_is_ours() {
        return crate::fork::has_forked();
    }
    let children_of = |pid: &str| -> Option<Vec<String>> {
        let mut all = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let list = std::fs::read_to_string(task.path().join("children")).ok()?;
            all.extend(list.split_whitespace().map(str::to_string));
        }
        Some(all)
    };
    let Some(mut queue) = children_of("self") else {
        return crate::fork::has_forked();
    };
    // Bounded: a process with more descendants than this is taken to
    // hold it.
    for _ in 0..256 {
        let Some(pid) = queue.pop() else {
            return false;
        };
        let holds = match descriptors_in(&pid, id) {
            Ok(n) => n > 0,
            // Gone meanwhile: it holds nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            // Not readable (it changed its user, or ran a set-user-ID
            // program): it may hold it.
            Err(_) => true,
        };
        if holds {
            return true;
        }
        queue.extend(children_of(&pid).unwrap_or_default());
    }
    true
}

/// The family of a TCP socket, or `None` for anything else.
pub(super) fn tcp_family(fd: c_int) -> Option<c_int> {
    let ty = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let family = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let proto = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    // MPTCP too: its connections are TCP on the wire, and would otherwise
    // leave in the clear (the real connection the shim makes is TCP).
    (ty == libc::SOCK_STREAM
        && (family == AF_INET || family == AF_INET6)
        && (proto == libc::IPPROTO_TCP || proto == libc::IPPROTO_MPTCP))
        .then_some(family)
}

/// A socket option holding a plain C struct `T` (`None`: the call failed).
fn sockopt_struct<T: Copy>(fd: c_int, level: c_int, name: c_int) -> Option<T> {
    // SAFETY: the callers' `T` (`timeval`, `linger`) are plain data; all
    // zeroes is a valid value.
    let mut v: T = unsafe { zeroed() };
    let mut l = size_of::<T>() as socklen_t;
    // SAFETY: `v` and `l` are ours and describe a `T`.
    let r =
        unsafe { (real().getsockopt)(fd, level, name, &mut v as *mut T as *mut c_void, &mut l) };
    (r == 0).then_some(v)
}

/// A socket option holding a `timeval`, in milliseconds (`None`: none set).
pub(super) fn sockopt_timeval(fd: c_int, name: c_int) -> Option<c_int> {
    let tv: libc::timeval = sockopt_struct(fd, libc::SOL_SOCKET, name)?;
    let ms = tv.tv_sec * 1000 + tv.tv_usec / 1000;
    (ms > 0).then(|| ms.min(i64::from(c_int::MAX)) as c_int)
}

/// Whether a TCP socket may still send what it holds: established, or
/// closing with data still allowed out (`TCP_INFO`'s state); not reset,
/// closed, nor connecting.
pub(super) fn may_still_send(fd: c_int) -> bool {
    // The state is the first byte of `struct tcp_info`.
    sockopt_struct::<[u8; 8]>(fd, libc::IPPROTO_TCP, libc::TCP_INFO)
        .is_some_and(|info| SENDING_STATES.contains(&info[0]))
}

/// ESTABLISHED, FIN_WAIT1, CLOSE_WAIT, LAST_ACK and CLOSING
/// (`include/net/tcp_states.h`): the states whose queued bytes still go.
const SENDING_STATES: [u8; 5] = [1, 4, 8, 9, 11];

/// Whether closing the socket resets it (`SO_LINGER` on, with 0 seconds).
pub(super) fn closes_abortively(fd: c_int) -> bool {
    sockopt_struct::<libc::linger>(fd, libc::SOL_SOCKET, libc::SO_LINGER)
        .is_some_and(|l| l.l_onoff != 0 && l.l_linger == 0)
}

pub(super) fn is_nonblocking(fd: c_int) -> bool {
    // SAFETY: F_GETFL takes no argument and touches no memory of ours.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    flags >= 0 && flags & libc::O_NONBLOCK != 0
}

/// Applies an application's socket option to a real socket. An option
/// the real socket refuses (an IPv6 option on an IPv4 socket, as the
/// kernel itself ignores on a v4-mapped connection) is left as it is: the
/// application's own call succeeded, on its socket.
pub(super) fn apply_option(fd: c_int, setting: &Setting) {
    let (level, name, value) = (setting.0, setting.1, &setting.2);
    // SAFETY: `value` is a live slice of `value.len()` bytes.
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
pub(super) fn read_option(fd: c_int, level: c_int, name: c_int) -> Option<Setting> {
    let mut buf = [0u8; 16];
    let mut len = options::value_len(level, name) as socklen_t;
    // SAFETY: `buf` has room for `len` (at most 16) bytes.
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

/// The mirrored options of a new TCP socket of `family`, read once per
/// process from a socket made for the purpose.
fn fresh_options(family: c_int) -> &'static [Setting] {
    static V4: OnceLock<Vec<Setting>> = OnceLock::new();
    static V6: OnceLock<Vec<Setting>> = OnceLock::new();
    let cell = if family == AF_INET6 { &V6 } else { &V4 };
    cell.get_or_init(|| {
        // SAFETY: plain system call with no pointer arguments.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Vec::new();
        }
        let options = read_options(fd);
        // SAFETY: `fd` is the socket made just above, closed once.
        unsafe { (real().close)(fd) };
        options
    })
}

/// Makes the values made once per process that a `fork` could otherwise
/// catch half made (see `crate::fork::before`).
pub(crate) fn finish_lazy_values() {
    fresh_options(AF_INET);
    fresh_options(AF_INET6);
}

/// The mirrored options of `fd` (a TCP socket of `family`) whose values
/// differ from a new socket's: what the application changed, and all a
/// new real socket needs. Copying only these saves a system call per
/// option on every connection.
pub(super) fn changed_options(fd: c_int, family: c_int) -> Vec<Setting> {
    let fresh = fresh_options(family);
    read_options(fd)
        .into_iter()
        .filter(|s| !fresh.contains(s))
        .collect()
}
