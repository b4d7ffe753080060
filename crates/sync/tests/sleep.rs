//! The mutex with sleeping waiters: host threads stand for CPUs, `std::thread::park` for WFI
//! and `unpark` for the wake-up SGI (an `unpark` before the `park` makes it return at once,
//! as a pending SGI ends the next WFI).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex as StdMutex, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

use cellvisor_sync::{install, waiting, Mutex, Waiting};

const CPUS: usize = 8;

/// The thread of each "CPU".
static THREADS: OnceLock<StdMutex<Vec<Option<Thread>>>> = OnceLock::new();
static SLEEPS: AtomicUsize = AtomicUsize::new(0);
static WAKES: AtomicUsize = AtomicUsize::new(0);
/// Sleeps that ended by the timeout, not by a wake-up: a lost wake-up.
static TIMEOUTS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static CPU: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn cpu() -> usize {
    CPU.with(std::cell::Cell::get)
}

/// Far longer than any holder keeps the lock: reaching it means nobody woke the sleeper.
const LOST: Duration = Duration::from_secs(5);

fn sleep(ready: &dyn Fn() -> bool) {
    if ready() {
        return;
    }
    SLEEPS.fetch_add(1, Ordering::Relaxed);
    let start = std::time::Instant::now();
    thread::park_timeout(LOST);
    if start.elapsed() >= LOST && !ready() {
        TIMEOUTS.fetch_add(1, Ordering::Relaxed);
    }
}

fn wake(cpu: usize) {
    WAKES.fetch_add(1, Ordering::Relaxed);
    let threads = THREADS.get().unwrap().lock().unwrap();
    if let Some(thread) = &threads[cpu] {
        thread.unpark();
    }
}

fn setup() {
    THREADS.get_or_init(|| StdMutex::new(vec![None; CPUS]));
    install(Waiting { cpu, sleep, wake });
}

fn as_cpu(n: usize) {
    CPU.with(|c| c.set(n));
    THREADS.get().unwrap().lock().unwrap()[n] = Some(thread::current());
}

#[test]
fn install_takes_the_first_hooks() {
    setup();
    fn other(_: &dyn Fn() -> bool) {}
    assert!(!install(Waiting {
        cpu,
        sleep: other,
        wake
    }));
    assert!(std::ptr::fn_addr_eq(
        waiting().unwrap().sleep,
        sleep as fn(&dyn Fn() -> bool)
    ));
}

#[test]
fn contended_cpus_sleep_and_are_woken_without_losing_a_wakeup() {
    setup();
    let rounds = 2_000;
    let counter = common::count_under_contention(CPUS, rounds, as_cpu);
    assert_eq!(*counter.lock(), (CPUS * rounds) as u64);
    assert!(
        SLEEPS.load(Ordering::Relaxed) > 0,
        "no CPU ever found the lock taken"
    );
    assert!(
        WAKES.load(Ordering::Relaxed) > 0,
        "no waiter was ever woken"
    );
    assert_eq!(TIMEOUTS.load(Ordering::Relaxed), 0, "a wake-up was lost");
    assert!(!counter.is_locked());
}

#[test]
fn an_uncontended_lock_leaves_no_waiter() {
    setup();
    static LOCK: Mutex<u32> = Mutex::new(0);
    as_cpu(0);
    for _ in 0..1000 {
        *LOCK.lock() += 1;
    }
    assert!(LOCK.try_lock().is_some());
    let guard = LOCK.lock();
    assert!(LOCK.try_lock().is_none(), "a held lock is taken again");
    drop(guard);
    assert_eq!(*LOCK.lock(), 1000);
    assert_eq!(unsafe_waiters(&LOCK), 0);
}

fn unsafe_waiters(lock: &Mutex<u32>) -> u64 {
    // SAFETY: only reads the raw lock's waiter mask.
    unsafe { lock.raw() }.waiters()
}
