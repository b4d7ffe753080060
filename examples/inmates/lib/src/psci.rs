//! PSCI calls (Arm DEN 0022, made by the `smccc` crate) through the conduit the device tree
//! names (`/psci` `method`), and the start of a secondary CPU at a Rust function
//! ([`start_cpu`]).
//!
//! The runtime drives one CPU; a program that wants a second one starts it with
//! [`start_cpu`], which gives it the runtime's one secondary stack (so one secondary CPU
//! at a time). The secondary has the exception vectors but no console of its own: the
//! polled console may be used from it while the boot CPU does not print. With the MMU off
//! all memory is Device memory, where exclusive accesses need not work: the two CPUs share
//! data through plain loads and stores only (`AtomicU64::load`/`store`, not `swap` or
//! `fetch_add`).

use core::sync::atomic::{AtomicU64, Ordering};

pub use smccc::psci::{AffinityState, Error, Version};

/// How PSCI is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc #0`: the hypervisor (a cell's PSCI).
    Hvc,
    /// `smc #0`: the secure firmware.
    Smc,
}

/// Calls `smccc::psci::$function` through the conduit (the `smccc` crate's SMCCC calls);
/// host builds have no firmware: every call is NOT_SUPPORTED.
macro_rules! psci {
    ($conduit:expr, $function:ident($($argument:expr),*)) => {{
        #[cfg(inmate_hw)]
        let result = match $conduit {
            Conduit::Hvc => smccc::psci::$function::<smccc::Hvc>($($argument),*),
            Conduit::Smc => smccc::psci::$function::<smccc::Smc>($($argument),*),
        };
        #[cfg(not(inmate_hw))]
        let result = {
            let _ = ($conduit, $($argument),*);
            Err(Error::NotSupported)
        };
        result
    }};
}

/// What [`start_cpu`] hands the secondary entry (the layout `rt.rs` reads): its stack top,
/// the function and its argument.
#[repr(C)]
#[derive(Debug)]
pub struct Secondary {
    stack_top: AtomicU64,
    main: AtomicU64,
    argument: AtomicU64,
}

/// The one secondary CPU's record.
static SECONDARY: Secondary = Secondary {
    stack_top: AtomicU64::new(0),
    main: AtomicU64::new(0),
    argument: AtomicU64::new(0),
};

/// Bytes of the secondary stack.
const SECONDARY_STACK_SIZE: usize = 16 * 1024;

/// The secondary CPU's stack (16-byte aligned).
#[repr(C, align(16))]
struct Stack([u8; SECONDARY_STACK_SIZE]);

/// Only its address is used (the secondary CPU writes it through SP).
static mut SECONDARY_STACK: Stack = Stack([0; SECONDARY_STACK_SIZE]);

#[cfg(inmate_hw)]
unsafe extern "C" {
    /// The secondary entry in `rt.rs`.
    fn cellvisor_inmate_secondary();
}

/// Starts the CPU with MPIDR affinity `mpidr` (PSCI CPU_ON) at `main`, which gets
/// `argument` and must not return (it ends with [`cpu_off`] or parks). The CPU runs on the
/// runtime's one secondary stack: start one secondary at a time, the next only once
/// AFFINITY_INFO says the last one is off.
pub fn start_cpu(
    conduit: Conduit,
    mpidr: u64,
    main: extern "C" fn(u64) -> !,
    argument: u64,
) -> Result<(), Error> {
    let stack = &raw const SECONDARY_STACK;
    SECONDARY.stack_top.store(
        stack as u64 + SECONDARY_STACK_SIZE as u64,
        Ordering::Relaxed,
    );
    SECONDARY
        .main
        .store(main as usize as u64, Ordering::Relaxed);
    SECONDARY.argument.store(argument, Ordering::Relaxed);
    // The record is in Device memory (MMU off) and written before the call: the secondary
    // reads it once it runs.
    core::sync::atomic::fence(Ordering::SeqCst);
    #[cfg(inmate_hw)]
    let entry = cellvisor_inmate_secondary as *const () as u64;
    #[cfg(not(inmate_hw))]
    let entry = 0;
    let context = &raw const SECONDARY as u64;
    psci!(conduit, cpu_on(mpidr, entry, context))
}

/// CPU_OFF of the calling CPU; returns only if the call failed.
pub fn cpu_off(conduit: Conduit) -> Error {
    match psci!(conduit, cpu_off()) {
        Ok(()) => Error::Unknown(0),
        Err(error) => error,
    }
}

/// AFFINITY_INFO of the CPU with MPIDR affinity `mpidr` (all affinity levels valid).
pub fn affinity_info(conduit: Conduit, mpidr: u64) -> Result<AffinityState, Error> {
    let level = smccc::psci::LowestAffinityLevel::All;
    psci!(conduit, affinity_info(mpidr, level))
}

/// The PSCI version.
pub fn version(conduit: Conduit) -> Result<Version, Error> {
    psci!(conduit, version())
}

/// SYSTEM_OFF; returns only if the call failed.
pub fn system_off(conduit: Conduit) -> Error {
    match psci!(conduit, system_off()) {
        Ok(()) => Error::Unknown(0),
        Err(error) => error,
    }
}

/// SYSTEM_RESET; returns only if the call failed.
pub fn system_reset(conduit: Conduit) -> Error {
    match psci!(conduit, system_reset()) {
        Ok(()) => Error::Unknown(0),
        Err(error) => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secondary_record_is_laid_out_as_the_entry_reads_it() {
        assert_eq!(core::mem::offset_of!(Secondary, stack_top), 0);
        assert_eq!(core::mem::offset_of!(Secondary, main), 8);
        assert_eq!(core::mem::offset_of!(Secondary, argument), 16);
    }

    #[test]
    fn without_firmware_every_call_is_not_supported() {
        extern "C" fn never(_: u64) -> ! {
            panic!("never started on the host")
        }
        assert_eq!(version(Conduit::Hvc), Err(Error::NotSupported));
        assert_eq!(
            start_cpu(Conduit::Smc, 1, never, 0),
            Err(Error::NotSupported)
        );
        assert_eq!(SECONDARY.argument.load(Ordering::Relaxed), 0);
        assert_ne!(SECONDARY.stack_top.load(Ordering::Relaxed), 0);
    }
}
