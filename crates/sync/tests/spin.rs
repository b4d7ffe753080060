//! Without installed hooks (a separate test program, so none are), contended CPUs spin and
//! the mutex still excludes.

mod common;

use cellvisor_sync::waiting;

#[test]
fn without_hooks_waiters_spin_and_exclude() {
    assert!(waiting().is_none());
    let counter = common::count_under_contention(4, 1_000, |_| {});
    assert_eq!(*counter.lock(), 4_000);
    // SAFETY: only reads the raw lock's waiter mask.
    let waiters = unsafe { counter.raw() }.waiters();
    assert_eq!(waiters, 0, "nobody registers without hooks");
}
