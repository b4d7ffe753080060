//! Cells at run time, the Arm side: the park loop with a trap frame to rewrite, and the
//! requester the GIC emulation checks. The bookkeeping (owners, stop requests, parking,
//! starting) is `cellvisor-core`'s, in [`super::HV`].

use super::frame::TrapFrame;
use super::gic;
use super::HV;

/// The requester for GIC emulation: the cell of `cpu` and its CPUs.
pub fn requester(cpu: usize) -> gic::Requester {
    let cell = HV.owner(cpu);
    gic::Requester {
        cell,
        cpus: HV.cell(cell).cpus(),
        cpu,
    }
}

/// The park loop: `cpu` runs no vCPU and sleeps until its cell gives it one
/// ([`cellvisor_core::Hypervisor::park`]). Rewrites `frame` for the entry and returns; the
/// caller's `eret` enters the cell.
pub fn park(cpu: usize, frame: &mut TrapFrame) {
    // Without a deadline the core's park returns only with an entry.
    let Some(entry) = HV.park(cpu) else {
        super::report(format_args!(
            "cellvisor: FATAL: CPU {cpu} left the park loop without an entry\n"
        ));
        super::park()
    };
    enter_frame(frame, entry.pc, entry.arg);
}

/// Rewrites `frame` so that its `eret` enters a vCPU at `entry` with x0 = `x0`, EL1h with
/// D, A, I, F masked, and EL1's MMU and caches off (the state of a CPU after reset).
pub fn enter_frame(frame: &mut TrapFrame, entry: u64, x0: u64) {
    use aarch64_cpu::registers::{Writeable, SCTLR_EL1};
    use tock_registers::fields::FieldValue;
    // SCTLR_EL1: the RES1 bits of the Armv8.0 layout set, everything else clear (MMU, caches
    // and alignment checks off). Later versions name those bits (Arm ARM D23 "SCTLR_EL1"):
    // LSMAOE (29), nTLSMD (28), SPAN (23), EIS (22), TSCXT (20), EOS (11), 1 being the Armv8.0
    // behaviour for each; aarch64-cpu 11 names none of them.
    const RES1: u64 = 1 << 29 | 1 << 28 | 1 << 23 | 1 << 22 | 1 << 20 | 1 << 11;
    const RES1_BITS: FieldValue<u64, SCTLR_EL1::Register> =
        FieldValue::<u64, _>::new(RES1, 0, RES1);
    SCTLR_EL1.write(
        RES1_BITS
            + SCTLR_EL1::M::Disable
            + SCTLR_EL1::A::Disable
            + SCTLR_EL1::C::NonCacheable
            + SCTLR_EL1::I::NonCacheable,
    );
    frame.x = [0; 31];
    frame.x[0] = x0;
    frame.sp = 0;
    frame.elr = entry;
    frame.spsr = crate::trap::SPSR_EL1H_MASKED;
}
