//! Socket addresses between C and Rust: reading what the application
//! passes, writing what it asks for, in the form its socket family uses.

use super::*;

/// Reads a socket address the caller passed.
pub(super) unsafe fn read_addr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
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
pub(super) fn encode_addr(addr: SocketAddr, family: c_int) -> (sockaddr_storage, socklen_t) {
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
pub(super) unsafe fn write_addr(
    addr: SocketAddr,
    family: c_int,
    out: *mut sockaddr,
    len: *mut socklen_t,
) {
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

pub(super) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

pub(super) fn local_addr(fd: c_int) -> Option<SocketAddr> {
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
