//! `libtcpcrypt.so`: encrypts the TCP connections of unmodified,
//! dynamically linked programs with tcpcrypt when the peer speaks it, and
//! leaves them plain when it does not.
//!
//! ```sh
//! LD_PRELOAD=/path/to/libtcpcrypt.so curl http://host/
//! ```
//!
//! The library only hooks: it makes the real connection (or accepts it),
//! hands it to the user's relay daemon (`tcpcrypt daemon`, started on
//! demand) with `SCM_RIGHTS`, and connects the program's own socket to the
//! daemon over loopback. No thread, runtime or relay socket lives in the
//! program. Design and the reasons behind it: `docs/SHIM.md`. All
//! `unsafe` code is in the `ffi` module, each block with a `SAFETY`
//! comment.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod daemon;
mod env;
#[allow(unsafe_code)]
mod ffi;
mod fork;
mod log;
mod log_file;
mod options;
mod registry;
mod rule;
pub mod wire;
