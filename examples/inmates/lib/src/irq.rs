//! Interrupts: masking, a mutex for state shared with the interrupt handler, and dispatch of
//! IRQs to one handler function.
//!
//! The IRQ vector saves the interrupted registers, reads the virtual count as its first act
//! (so that a handler can measure its own latency) and calls the dispatcher, which
//! acknowledges every pending interrupt at the GIC, calls the handler for each and ends it.
//! Handlers run with IRQs masked and do not nest.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::gic::Gic;
use crate::sysreg;

/// An interrupt delivered to the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// Its INTID.
    pub intid: u32,
    /// The virtual count when the CPU entered the IRQ vector.
    pub entry_counter: u64,
}

/// An interrupt handler.
pub type Handler = fn(Interrupt);

/// Unmasks IRQs: from here on the handler may run between any two instructions.
pub fn enable() {
    sysreg::unmask_irq();
}

/// Masks IRQs.
pub fn disable() {
    sysreg::mask_irq();
}

/// Runs `f` with IRQs masked, then restores the previous mask.
pub fn free<R>(f: impl FnOnce() -> R) -> R {
    let saved = sysreg::daif();
    sysreg::mask_irq();
    let result = f();
    sysreg::set_daif(saved);
    result
}

/// Data shared between the main program and the interrupt handler: `lock` runs a closure on it
/// with IRQs masked.
///
/// On the target this relies on the runtime's single CPU: masking IRQs is all the exclusion
/// needed. Locking it again from inside the closure panics. (In host builds it is a spin lock.)
#[derive(Debug)]
pub struct IrqMutex<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: `lock` gives out the only reference to the value: on the target IRQs are masked and
// the runtime runs on one CPU, so nothing else runs until the closure returns, and a nested
// `lock` panics before it makes a second reference; in host builds `locked` is a real lock.
// The value may be used from the handler context, so it must be `Send`.
unsafe impl<T: Send> Sync for IrqMutex<T> {}

impl<T> IrqMutex<T> {
    /// A mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` on the value with IRQs masked.
    pub fn lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        free(|| {
            self.acquire();
            // SAFETY: `acquire` made this the only user of the value until `release` (see the
            // `Sync` implementation).
            let result = f(unsafe { &mut *self.value.get() });
            self.locked.store(false, Ordering::Release);
            result
        })
    }

    #[cfg(inmate_hw)]
    fn acquire(&self) {
        // Plain loads and stores: with the MMU off, memory is Device memory, where exclusive
        // accesses (compare-and-swap) need not work (Arm ARM B2.9.5); one CPU does not need
        // them.
        if self.locked.load(Ordering::Relaxed) {
            panic!("IrqMutex locked again while locked");
        }
        self.locked.store(true, Ordering::Relaxed);
    }

    #[cfg(not(inmate_hw))]
    fn acquire(&self) {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
    }
}

/// The GIC and handler that IRQs go to.
static HANDLER: IrqMutex<Option<(Gic, Handler)>> = IrqMutex::new(None);

/// Sends the IRQs that `gic` signals to `handler`. Call it before unmasking IRQs.
pub fn set_handler(gic: Gic, handler: Handler) {
    HANDLER.lock(|slot| *slot = Some((gic, handler)));
}

/// Handles an IRQ exception: every interrupt pending at the GIC goes to the handler.
/// `entry_counter` is the virtual count read at the IRQ vector.
// Only the target runtime (`rt`) uses it.
#[cfg_attr(not(inmate_hw), allow(dead_code))]
pub(crate) fn dispatch(entry_counter: u64) {
    let Some((gic, handler)) = HANDLER.lock(|slot| *slot) else {
        crate::println!("inmate: IRQ without a handler");
        crate::park();
    };
    while let Some(acknowledged) = gic.acknowledge() {
        handler(Interrupt {
            intid: acknowledged.intid(),
            entry_counter,
        });
        gic.end_of_interrupt(acknowledged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysreg::fake;

    #[test]
    fn lock_masks_irqs_and_restores_the_mask() {
        fake::reset();
        fake::set("daif", 0x3c0);
        let counter = IrqMutex::new(1);
        assert_eq!(counter.lock(|c| core::mem::replace(c, 5)), 1);
        assert_eq!(counter.lock(|c| *c), 5);
        assert_eq!(fake::take_writes(), [("daif", 0x3c0), ("daif", 0x3c0)]);
    }
}
