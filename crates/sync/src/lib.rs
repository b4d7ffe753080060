//! # cellvisor-sync
//!
//! A mutex for the CPUs of a partitioning hypervisor that sleeps while it waits instead of
//! spinning: [`Mutex`] (a [`lock_api::Mutex`] over [`RawSleepLock`]).
//!
//! A CPU of a hypervisor that spins on a lock burns power and memory bandwidth on hardware
//! and, under an emulator that runs each virtual CPU in a host thread (QEMU's multi-threaded
//! TCG), takes a host core from the CPU that holds the lock and stalls every operation that
//! must wait for all virtual CPUs (a broadcast TLB invalidation). The hypervisor knows how
//! to sleep and how to wake a CPU (WFI and an SGI on Arm, HLT and an IPI on x86); this crate
//! knows none of that and takes it as [`Waiting`] hooks through [`install`]:
//!
//! - a CPU that finds the lock taken sets its bit in the lock's waiter mask and sleeps until
//!   the lock is free;
//! - the CPU that unlocks wakes every CPU in the mask.
//!
//! Until the hooks are installed (early boot, host tests of other crates), or for a CPU
//! number beyond 63, a waiting CPU spins as with any spinlock. The uncontended path is one
//! compare-and-swap to lock, one store, one fence and one load to unlock.
//!
//! ```
//! use cellvisor_sync::Mutex;
//!
//! static COUNTER: Mutex<u64> = Mutex::new(0);
//!
//! *COUNTER.lock() += 1;
//! assert_eq!(*COUNTER.lock(), 1);
//! ```
//!
//! ## The contract of the hooks
//!
//! [`Waiting::sleep`] is called with a condition ("the lock is free") after the CPU has
//! registered as a waiter. It must return once the condition holds, and it may return
//! earlier (the lock then loops). It must not miss a [`Waiting::wake`] of its CPU that
//! happens after the registration, even one that comes before it goes to sleep: on Arm an
//! SGI that is sent between the check and the WFI stays pending and ends the WFI at once.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// How the hypervisor lets a CPU sleep and wakes it; see the
/// [crate documentation](crate#the-contract-of-the-hooks).
#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    /// The number of the CPU this runs on, 0 to 63 (others spin).
    pub cpu: fn() -> usize,
    /// Sleeps until the condition holds (it may return before).
    pub sleep: fn(&dyn Fn() -> bool),
    /// Wakes CPU `cpu` from its sleep, or makes its next sleep end at once.
    pub wake: fn(cpu: usize),
}

static WAITING: spin::Once<Waiting> = spin::Once::new();

/// Installs the hooks every [`RawSleepLock`] uses from now on. The first call wins; returns
/// whether this one did.
pub fn install(waiting: Waiting) -> bool {
    let mut installed = false;
    WAITING.call_once(|| {
        installed = true;
        waiting
    });
    installed
}

/// The installed hooks, if any.
pub fn waiting() -> Option<&'static Waiting> {
    WAITING.get()
}

/// The raw lock: a flag and the mask of CPUs sleeping until it is free.
#[derive(Debug)]
pub struct RawSleepLock {
    locked: AtomicBool,
    /// Bit n: CPU n sleeps (or is about to) until the lock is free.
    waiters: AtomicU64,
}

impl RawSleepLock {
    /// A free lock.
    pub const fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
            waiters: AtomicU64::new(0),
        }
    }

    /// The CPUs registered as waiting (bit n: CPU n), for diagnostics.
    pub fn waiters(&self) -> u64 {
        self.waiters.load(Ordering::Relaxed)
    }

    fn try_acquire(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn is_free(&self) -> bool {
        !self.locked.load(Ordering::Relaxed)
    }

    #[cold]
    fn acquire_contended(&self) {
        let Some(waiting) = WAITING.get() else {
            return self.spin();
        };
        let cpu = (waiting.cpu)();
        if cpu >= 64 {
            return self.spin();
        }
        let bit = 1 << cpu;
        loop {
            self.waiters.fetch_or(bit, Ordering::Relaxed);
            // Orders the registration before the look at the lock, as `unlock` orders its
            // release before its look at the waiters: either this CPU sees the lock free, or
            // the unlocking CPU sees the bit and wakes it (a store-load pair on each side).
            fence(Ordering::SeqCst);
            if self.try_acquire() {
                self.waiters.fetch_and(!bit, Ordering::Relaxed);
                return;
            }
            (waiting.sleep)(&|| self.is_free());
        }
    }

    fn spin(&self) {
        while !self.try_acquire() {
            while !self.is_free() {
                core::hint::spin_loop();
            }
        }
    }
}

impl Default for RawSleepLock {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `lock` and `try_lock` return only once `locked` went from false to true by this
// caller's compare-and-swap (Acquire), and `unlock` stores false (Release): one holder at a
// time, and the holder's accesses to the protected data happen between the two.
unsafe impl lock_api::RawMutex for RawSleepLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self::new();

    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        if !self.try_acquire() {
            self.acquire_contended();
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        self.try_acquire()
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
        // See `acquire_contended`.
        fence(Ordering::SeqCst);
        let mut waiters = self.waiters.load(Ordering::Relaxed);
        if waiters != 0 {
            if let Some(waiting) = WAITING.get() {
                while waiters != 0 {
                    (waiting.wake)(waiters.trailing_zeros() as usize);
                    waiters &= waiters - 1;
                }
            }
        }
    }

    #[inline]
    fn is_locked(&self) -> bool {
        !self.is_free()
    }
}

/// A mutex whose waiters sleep through the installed [`Waiting`] hooks.
pub type Mutex<T> = lock_api::Mutex<RawSleepLock, T>;

/// The guard of a locked [`Mutex`].
pub type MutexGuard<'a, T> = lock_api::MutexGuard<'a, RawSleepLock, T>;

/// Compiles the examples in README.md.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
