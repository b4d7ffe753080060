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
        cell: cell.0 as u16,
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
    // SCTLR_EL1: RES1 bits only (MMU, caches and alignment checks off): bits 29, 28, 23,
    // 22, 20 and 11 of the ARMv8.0 layout.
    SCTLR_EL1.set(0x30d0_0800);
    frame.x = [0; 31];
    frame.x[0] = x0;
    frame.sp = 0;
    frame.elr = entry;
    frame.spsr = crate::trap::SPSR_EL1H_MASKED;
}
