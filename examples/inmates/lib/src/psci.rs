//! PSCI calls (Arm DEN 0022) through the conduit the device tree names (`/psci` `method`),
//! and the start of a secondary CPU at a Rust function ([`start_cpu`]).
//!
//! The runtime drives one CPU; a program that wants a second one starts it with
//! [`start_cpu`], which gives it the runtime's one secondary stack (so one secondary CPU
//! at a time). The secondary has the exception vectors but no console of its own: the
//! polled console may be used from it while the boot CPU does not print. With the MMU off
//! all memory is Device memory, where exclusive accesses need not work: the two CPUs share
//! data through plain loads and stores only (`AtomicU64::load`/`store`, not `swap` or
//! `fetch_add`).

use core::sync::atomic::{AtomicU64, Ordering};

/// How PSCI is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc #0`: the hypervisor (a cell's PSCI).
    Hvc,
    /// `smc #0`: the secure firmware.
    Smc,
}

/// PSCI function IDs (DEN 0022 §5.1), the 64-bit ones where there are two.
pub mod function {
    /// PSCI_VERSION.
    pub const VERSION: u32 = 0x8400_0000;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// CPU_ON (SMC64).
    pub const CPU_ON: u32 = 0xc400_0003;
    /// AFFINITY_INFO (SMC64).
    pub const AFFINITY_INFO: u32 = 0xc400_0004;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
}

/// PSCI return codes (DEN 0022 §5.2.2).
pub mod status {
    /// SUCCESS.
    pub const SUCCESS: i64 = 0;
    /// NOT_SUPPORTED.
    pub const NOT_SUPPORTED: i64 = -1;
    /// INVALID_PARAMETERS.
    pub const INVALID_PARAMETERS: i64 = -2;
    /// DENIED.
    pub const DENIED: i64 = -3;
    /// ALREADY_ON.
    pub const ALREADY_ON: i64 = -4;
}

/// AFFINITY_INFO's answers (DEN 0022 §5.7).
pub mod affinity {
    /// ON.
    pub const ON: i64 = 0;
    /// OFF.
    pub const OFF: i64 = 1;
    /// ON_PENDING.
    pub const ON_PENDING: i64 = 2;
}

/// Calls PSCI `function` with up to three arguments; returns x0.
#[cfg(inmate_hw)]
pub fn call(conduit: Conduit, function: u32, args: [u64; 3]) -> i64 {
    let mut x0 = u64::from(function);
    match conduit {
        // SAFETY: an SMCCC call (DEN 0028): x0-x3 in, x0-x3 out (x4-x17 may be clobbered
        // by the callee under SMCCC 1.0); no memory of this program is touched.
        Conduit::Hvc => unsafe {
            core::arch::asm!(
                "hvc #0",
                inout("x0") x0,
                inout("x1") args[0] => _,
                inout("x2") args[1] => _,
                inout("x3") args[2] => _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                out("x16") _, out("x17") _,
                options(nostack),
            );
        },
        // SAFETY: as above, through the secure monitor.
        Conduit::Smc => unsafe {
            core::arch::asm!(
                "smc #0",
                inout("x0") x0,
                inout("x1") args[0] => _,
                inout("x2") args[1] => _,
                inout("x3") args[2] => _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                out("x16") _, out("x17") _,
                options(nostack),
            );
        },
    }
    x0 as i64
}

/// Host builds have no firmware: every call is NOT_SUPPORTED.
#[cfg(not(inmate_hw))]
pub fn call(_conduit: Conduit, _function: u32, _args: [u64; 3]) -> i64 {
    status::NOT_SUPPORTED
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
/// `argument` and must not return (it ends with [`cpu_off`] or parks). Returns the PSCI
/// status. The CPU runs on the runtime's one secondary stack: start one secondary at a
/// time, the next only once AFFINITY_INFO says the last one is off.
pub fn start_cpu(
    conduit: Conduit,
    mpidr: u64,
    main: extern "C" fn(u64) -> !,
    argument: u64,
) -> i64 {
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
    call(
        conduit,
        function::CPU_ON,
        [mpidr, entry, &raw const SECONDARY as u64],
    )
}

/// CPU_OFF of the calling CPU; returns only if the call failed (with its status).
pub fn cpu_off(conduit: Conduit) -> i64 {
    call(conduit, function::CPU_OFF, [0; 3])
}

/// AFFINITY_INFO of the CPU with MPIDR affinity `mpidr` (level 0).
pub fn affinity_info(conduit: Conduit, mpidr: u64) -> i64 {
    call(conduit, function::AFFINITY_INFO, [mpidr, 0, 0])
}

/// The PSCI version, as major << 16 | minor, or a negative status.
pub fn version(conduit: Conduit) -> i64 {
    call(conduit, function::VERSION, [0; 3])
}

/// SYSTEM_OFF; returns only if the call failed.
pub fn system_off(conduit: Conduit) -> i64 {
    call(conduit, function::SYSTEM_OFF, [0; 3])
}

/// SYSTEM_RESET; returns only if the call failed.
pub fn system_reset(conduit: Conduit) -> i64 {
    call(conduit, function::SYSTEM_RESET, [0; 3])
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
        assert_eq!(version(Conduit::Hvc), status::NOT_SUPPORTED);
        assert_eq!(start_cpu(Conduit::Smc, 1, never, 0), status::NOT_SUPPORTED);
        assert_eq!(SECONDARY.argument.load(Ordering::Relaxed), 0);
        assert_ne!(SECONDARY.stack_top.load(Ordering::Relaxed), 0);
    }
}
