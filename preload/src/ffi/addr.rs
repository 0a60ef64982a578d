//! Socket addresses between C and Rust: reading what the application
//! passes, writing what it asks for, in the form its socket family uses.

use super::*;

/// The length of an IPv6 socket address without its scope id.
const SIN6_LEN_RFC2133: usize = 24;

/// Reads a socket address the caller passed: only the bytes `len` covers,
/// with unaligned reads (nothing obliges a caller to align its buffer).
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes.
pub(super) unsafe fn read_addr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    // The family is the first two bytes: nothing to read below that.
    if addr.is_null() || len < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the two bytes of the family are readable.
    let family = c_int::from(unsafe { std::ptr::read_unaligned(addr as *const libc::sa_family_t) });
    match family {
        AF_INET if len >= size_of::<sockaddr_in>() => {
            // SAFETY: `len` covers a whole `sockaddr_in`.
            let a = unsafe { std::ptr::read_unaligned(addr as *const sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        // The kernel takes 24 bytes (RFC 2133's form, without the scope
        // id) as well as the full 28.
        AF_INET6 if len >= SIN6_LEN_RFC2133 => {
            // SAFETY: at least 24 bytes are readable at `addr`.
            let a = unsafe { std::ptr::read_unaligned(addr as *const [u8; SIN6_LEN_RFC2133]) };
            let scope = if len >= size_of::<sockaddr_in6>() {
                // SAFETY: `len` covers the whole structure.
                unsafe { std::ptr::read_unaligned(addr as *const sockaddr_in6) }.sin6_scope_id
            } else {
                0
            };
            let ip: [u8; 16] = a[8..24].try_into().expect("16 bytes");
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                u16::from_be_bytes([a[2], a[3]]),
                u32::from_ne_bytes(a[4..8].try_into().expect("4 bytes")),
                scope,
            )))
        }
        _ => None,
    }
}

/// `addr` in the form a socket of `family` uses (IPv4 addresses on IPv6
/// sockets are v4-mapped).
pub(super) fn encode_addr(addr: SocketAddr, family: c_int) -> (sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut st: sockaddr_storage = unsafe { zeroed() };
    let v6 = |a: SocketAddrV6, st: &mut sockaddr_storage| {
        // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
        let s = unsafe { &mut *(st as *mut sockaddr_storage as *mut sockaddr_in6) };
        s.sin6_family = AF_INET6 as libc::sa_family_t;
        s.sin6_port = a.port().to_be();
        s.sin6_addr.s6_addr = a.ip().octets();
        s.sin6_flowinfo = a.flowinfo();
        s.sin6_scope_id = a.scope_id();
        size_of::<sockaddr_in6>() as socklen_t
    };
    let len = match (addr, family) {
        (SocketAddr::V4(a), AF_INET6) => v6(
            SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
            &mut st,
        ),
        (SocketAddr::V6(a), _) => v6(a, &mut st),
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
///
/// # Safety
/// `len` must point to the buffer's size, and `out` to at least that many
/// writable bytes, as for `getpeername`.
pub(super) unsafe fn write_addr(
    addr: SocketAddr,
    family: c_int,
    out: *mut sockaddr,
    len: *mut socklen_t,
) {
    let (st, n) = encode_addr(addr, family);
    // SAFETY: the caller's buffer, as for `copy_addr`.
    unsafe { copy_addr(&st, n, out, len) }
}

/// Copies an address of `n` bytes to a caller's buffer of `*len` bytes,
/// truncated to fit, and sets `*len` to `n`, as the kernel does. Nothing
/// when either pointer is null (a caller that does not want it).
///
/// # Safety
/// `out` must have room for `*len` bytes when both are non-null.
pub(super) unsafe fn copy_addr(
    st: &sockaddr_storage,
    n: socklen_t,
    out: *mut sockaddr,
    len: *mut socklen_t,
) {
    if out.is_null() || len.is_null() {
        return;
    }
    // SAFETY: at most `*len` bytes to `out`, at most `n` (within `st`) read.
    unsafe {
        let room = (*len).min(n) as usize;
        std::ptr::copy_nonoverlapping(
            st as *const sockaddr_storage as *const u8,
            out as *mut u8,
            room,
        );
        *len = n;
    }
}

/// Answers `getpeername`/`getsockname` for a relayed socket with a real
/// address, in the form its family uses.
///
/// # Safety
/// As `copy_addr`.
pub(super) unsafe fn write_name(
    fd: c_int,
    a: SocketAddr,
    out: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    if out.is_null() || len.is_null() {
        set_errno(libc::EFAULT);
        return -1;
    }
    let family = tcp_family(fd).unwrap_or(AF_INET6);
    // SAFETY: the caller's buffer.
    unsafe { write_addr(a, family, out, len) };
    0
}

/// Whether `a` is a loopback address (v4-mapped included): an
/// application socket the shim relays is connected to one.
pub(super) fn is_loopback(a: SocketAddr) -> bool {
    canonical(a).ip().is_loopback()
}

/// The peer of a socket, through the real call (`None`: not connected,
/// or not an IP socket).
pub(super) fn peer_addr(fd: c_int) -> Option<SocketAddr> {
    name_of(fd, real().getpeername)
}

/// The local address of a socket, through the real call.
pub(super) fn local_addr(fd: c_int) -> Option<SocketAddr> {
    name_of(fd, real().getsockname)
}

/// A socket's address by `getpeername` or `getsockname`.
fn name_of(fd: c_int, call: NameFn) -> Option<SocketAddr> {
    // SAFETY: plain data; all zeroes is a valid value.
    let mut st: sockaddr_storage = unsafe { zeroed() };
    let mut l = size_of::<sockaddr_storage>() as socklen_t;
    // SAFETY: `st` has room for `l` bytes.
    let r = unsafe {
        call(
            fd,
            &mut st as *mut sockaddr_storage as *mut sockaddr,
            &mut l,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: the kernel wrote `l` bytes of address.
    unsafe { read_addr(&st as *const sockaddr_storage as *const sockaddr, l) }
}

pub(super) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}
