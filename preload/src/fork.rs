//! `fork` while another thread holds the shim's table lock: the child has
//! only the forking thread, so a lock another thread held at that moment
//! would stay held in the child forever. The forking thread takes it just
//! before `fork` and releases it just after, in the parent and in the
//! child (`pthread_atfork`, installed by `ffi::install_fork_handlers`).
//! Nothing else of the shim needs care across `fork`: no thread, no
//! runtime and no relay socket lives in the program.

use std::any::Any;
use std::cell::RefCell;

/// Whether this process has forked since the library loaded (its
/// children may hold copies of its sockets).
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process has forked (through `fork`, which runs the fork
/// handlers; `posix_spawn` and `vfork` do not).
pub(crate) fn has_forked() -> bool {
    FORKED.load(std::sync::atomic::Ordering::Relaxed)
}

thread_local! {
    /// The lock the forking thread holds across `fork`.
    static HELD: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Before `fork`. Values made once, on first use, by whichever thread
/// needs them are finished first: one half made by another thread would
/// stay half made in the child.
pub(crate) fn before() {
    crate::env::settings();
    crate::log::init();
    crate::ffi::finish_lazy_values();
    crate::daemon::proc_is_ours();
    FORKED.store(true, std::sync::atomic::Ordering::Relaxed);
    let held: Box<dyn Any> = Box::new(crate::registry::hold_for_fork());
    HELD.with(|h| *h.borrow_mut() = Some(held));
}

/// After `fork`, in the parent and in the child: releases it.
pub(crate) fn after() {
    HELD.with(|h| h.borrow_mut().take());
}
