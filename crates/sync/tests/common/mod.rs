//! What the test programs share.

use std::sync::Arc;
use std::thread;

use cellvisor_sync::Mutex;

/// `cpus` threads (each first calling `as_cpu` with its number) add 1 to a counter under the
/// mutex `rounds` times each, holding the lock across a yield so that the others find it
/// taken. Returns the counter, which must read `cpus * rounds`.
pub fn count_under_contention(cpus: usize, rounds: usize, as_cpu: fn(usize)) -> Arc<Mutex<u64>> {
    let counter = Arc::new(Mutex::new(0u64));
    let handles: Vec<_> = (0..cpus)
        .map(|n| {
            let counter = Arc::clone(&counter);
            thread::spawn(move || {
                as_cpu(n);
                for _ in 0..rounds {
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
    counter
}
