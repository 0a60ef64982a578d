//! `fork` while other threads hold the shim's process-wide locks. The
//! child has only the forking thread: a lock another thread held at that
//! moment would stay held in the child forever, and its first connection
//! would hang. So the forking thread takes those locks just before `fork`
//! and releases them just after, in the parent and in the child
//! (`pthread_atfork`, installed by `ffi::install_fork_handlers`).

use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// The locks the forking thread holds across `fork`.
    static HELD: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Before `fork`: takes the locks, always in this order (nothing takes two
/// of them at once otherwise, so the order cannot deadlock).
pub(crate) fn before() {
    // Values made once, on first use, by whichever thread needs them: one
    // being made by another thread at this moment would stay half made in
    // the child, whose first use would then wait for it forever. Finished
    // here first (waiting, if need be, for the thread making them).
    crate::env::settings();
    crate::ffi::finish_lazy_values();
    let held: [Box<dyn Any>; 3] = [
        Box::new(crate::relay::hold_for_fork()),
        Box::new(crate::status::hold_for_fork()),
        Box::new(crate::registry::hold_for_fork()),
    ];
    HELD.with(|h| h.borrow_mut().extend(held));
}

/// After `fork`, in the parent: releases them.
pub(crate) fn after() {
    HELD.with(|h| h.borrow_mut().clear());
}

/// After `fork`, in the child: releases them, and forgets the parent's
/// running relays, which are not the child's.
pub(crate) fn after_child() {
    after();
    crate::registry::forget_relays();
}
