//! Surviving one synchronous exception on purpose: [`catch`] runs a closure with the EL1
//! synchronous vector armed, so that an exception the closure provokes (an undefined
//! instruction, an abort injected by the hypervisor) is recorded and the closure resumes
//! after the faulting instruction instead of the runtime reporting it and parking the CPU.
//!
//! For programs that test what a hypervisor does with hostile accesses. The vector skips
//! exactly one 4-byte instruction and disarms itself, so a second exception (or one whose
//! return address is not the faulting instruction, such as an instruction abort on a branch
//! target) is reported and parks as usual.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::esr::Esr;

/// What the EL1 synchronous vector of the runtime (`rt.rs`) reads and writes, by byte
/// offset: armed flag (0), exceptions caught (8), ESR_EL1 (16), FAR_EL1 (24), ELR_EL1 (32).
/// Plain 64-bit loads and stores on both sides: exclusives need not work with the MMU off.
#[repr(C)]
pub(crate) struct Caught {
    armed: AtomicU64,
    count: AtomicU64,
    esr: AtomicU64,
    far: AtomicU64,
    elr: AtomicU64,
}

/// The record the vector fills (its symbol name is part of the vector's code).
#[unsafe(no_mangle)]
pub(crate) static CELLVISOR_INMATE_CAUGHT: Caught = Caught {
    armed: AtomicU64::new(0),
    count: AtomicU64::new(0),
    esr: AtomicU64::new(0),
    far: AtomicU64::new(0),
    elr: AtomicU64::new(0),
};

/// A synchronous exception that [`catch`] caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Its syndrome, ESR_EL1.
    pub esr: Esr,
    /// FAR_EL1 at the exception (meaningful for aborts only).
    pub far: u64,
    /// The address of the faulting instruction, ELR_EL1.
    pub elr: u64,
}

/// Runs `f`; if it takes a synchronous exception at EL1, the instruction that faulted is
/// skipped and the exception returned (the first one only: a second one is reported and
/// parks). On the host nothing can fault, so it returns `None`.
pub fn catch(f: impl FnOnce()) -> Option<Fault> {
    let caught = &CELLVISOR_INMATE_CAUGHT;
    let before = caught.count.load(Ordering::Relaxed);
    caught.armed.store(1, Ordering::Relaxed);
    compiler_barrier();
    f();
    compiler_barrier();
    caught.armed.store(0, Ordering::Relaxed);
    (caught.count.load(Ordering::Relaxed) != before).then(|| Fault {
        esr: Esr(caught.esr.load(Ordering::Relaxed)),
        far: caught.far.load(Ordering::Relaxed),
        elr: caught.elr.load(Ordering::Relaxed),
    })
}

/// Keeps the compiler from moving the closure's accesses across the arming and disarming.
fn compiler_barrier() {
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_faults_on_the_host() {
        let mut ran = false;
        assert_eq!(catch(|| ran = true), None);
        assert!(ran);
        assert_eq!(CELLVISOR_INMATE_CAUGHT.armed.load(Ordering::Relaxed), 0);
    }
}
