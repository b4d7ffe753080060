//! Without installed hooks (a separate test program, so none are), contended CPUs spin and
//! the mutex still excludes.

use std::sync::Arc;
use std::thread;

use cellvisor_sync::{waiting, Mutex};

#[test]
fn without_hooks_waiters_spin_and_exclude() {
    assert!(waiting().is_none());
    let counter = Arc::new(Mutex::new(0u64));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let counter = Arc::clone(&counter);
            thread::spawn(move || {
                for _ in 0..1_000 {
                    let mut value = counter.lock();
                    let before = *value;
                    thread::yield_now();
                    *value = before + 1;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(*counter.lock(), 4_000);
    // SAFETY: only reads the raw lock's waiter mask.
    let waiters = unsafe { counter.raw() }.waiters();
    assert_eq!(waiters, 0, "nobody registers without hooks");
}
