//! `libtcpcrypt.so`: encrypts the TCP connections of unmodified,
//! dynamically linked programs with tcpcrypt when the peer speaks it, and
//! leaves them plain when it does not.
//!
//! ```sh
//! LD_PRELOAD=/path/to/libtcpcrypt.so curl http://host/
//! ```
//!
//! The program keeps real kernel TCP sockets; each one is connected over
//! loopback to a relay on a background runtime inside the process, which
//! holds the real connection as a `TcpcryptStream`. Design and the reasons
//! behind it: `docs/SHIM.md`. All `unsafe` code is in the `ffi` module.

mod env;
mod ffi;
mod fork;
mod options;
mod registry;
mod relay;
pub mod status;

pub use registry::SessionState;
