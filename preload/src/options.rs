//! Socket options that the application sets on its socket and that matter
//! on the real connection: keepalive and its timers, the user timeout, the
//! TOS or traffic class, the priority and the congestion control. The
//! application's socket only reaches the daemon over loopback, so these
//! are copied to the real socket when it is made (before its SYN), and
//! sent to the daemon when the application changes one later.

use libc::c_int;

/// The options copied, as (level, name), in the order they are applied:
/// the priority last, because setting the TOS resets it.
pub(crate) const MIRRORED: [(c_int, c_int); 9] = [
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
];

/// The most bytes of an option value kept: an `int`, or a congestion
/// control name (`TCP_CA_NAME_MAX`).
pub(crate) fn value_len(level: c_int, name: c_int) -> usize {
    if (level, name) == (libc::IPPROTO_TCP, libc::TCP_CONGESTION) {
        16
    } else {
        std::mem::size_of::<c_int>()
    }
}

/// One option's value, as the application passed it.
pub(crate) use crate::wire::Setting;
