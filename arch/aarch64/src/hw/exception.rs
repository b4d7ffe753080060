//! EL2 exception vectors. Exceptions from a cell (lower EL, AArch64) go to the trap handler
//! in `guest.rs`; every other exception is unexpected: the handler prints the decoded
//! syndrome, the addresses and the registers, then parks the CPU. Both run on the CPU's
//! exception stack (SP_EL2).

use super::frame::TrapFrame;
use crate::esr::Esr;
use crate::hw::{cpu_index, park, report};
use aarch64_cpu::registers::{Readable, ESR_EL2, FAR_EL2};

// 16 vectors of 128 bytes (Arm ARM D1.3.1 "Exception vectors"): current EL with SP_EL0,
// current EL with SP_ELx, lower EL AArch64, lower EL AArch32; each sync, IRQ, FIQ, SError.
core::arch::global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 0x800
    .global cellvisor_vectors
cellvisor_vectors:
    .irp kind, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 0x80
    sub     sp, sp, #(34 * 8)
    stp     x0, x1, [sp, #(0 * 8)]
    mov     x0, #\kind
    b       cellvisor_vector_common
    .endr

cellvisor_vector_common:
    stp     x2, x3, [sp, #(2 * 8)]
    stp     x4, x5, [sp, #(4 * 8)]
    stp     x6, x7, [sp, #(6 * 8)]
    stp     x8, x9, [sp, #(8 * 8)]
    stp     x10, x11, [sp, #(10 * 8)]
    stp     x12, x13, [sp, #(12 * 8)]
    stp     x14, x15, [sp, #(14 * 8)]
    stp     x16, x17, [sp, #(16 * 8)]
    stp     x18, x19, [sp, #(18 * 8)]
    stp     x20, x21, [sp, #(20 * 8)]
    stp     x22, x23, [sp, #(22 * 8)]
    stp     x24, x25, [sp, #(24 * 8)]
    stp     x26, x27, [sp, #(26 * 8)]
    stp     x28, x29, [sp, #(28 * 8)]
    mrs     x1, sp_el0
    stp     x30, x1, [sp, #(30 * 8)]
    mrs     x1, elr_el2
    mrs     x2, spsr_el2
    stp     x1, x2, [sp, #(32 * 8)]
    mov     x1, sp
    bl      cellvisor_exception
    // Only traps of a cell return: back to it (hw/guest.rs).
    b       cellvisor_guest_return
"#
);

/// Every exception, with the registers saved in `frame` (on the exception stack): a cell's
/// trap (lower EL, AArch64, vectors 8 to 11) is handled and returns to the cell; anything
/// else is unexpected and never returns.
#[unsafe(no_mangle)]
extern "C" fn cellvisor_exception(kind: u64, frame: &mut TrapFrame) {
    match kind {
        8..=11 => super::guest::trap(kind, frame),
        _ => cellvisor_unexpected_exception(kind, frame),
    }
}

/// Names of the 16 vectors.
const VECTORS: [&str; 16] = [
    "synchronous, EL2 with SP_EL0",
    "IRQ, EL2 with SP_EL0",
    "FIQ, EL2 with SP_EL0",
    "SError, EL2 with SP_EL0",
    "synchronous, EL2 with SP_EL2",
    "IRQ, EL2 with SP_EL2",
    "FIQ, EL2 with SP_EL2",
    "SError, EL2 with SP_EL2",
    "synchronous, lower EL AArch64",
    "IRQ, lower EL AArch64",
    "FIQ, lower EL AArch64",
    "SError, lower EL AArch64",
    "synchronous, lower EL AArch32",
    "IRQ, lower EL AArch32",
    "FIQ, lower EL AArch32",
    "SError, lower EL AArch32",
];

/// Reports an exception nobody expected and parks the CPU.
fn cellvisor_unexpected_exception(kind: u64, frame: &TrapFrame) -> ! {
    let esr = Esr(ESR_EL2.get());
    let far = FAR_EL2.get();
    let vector = VECTORS.get(kind as usize).copied().unwrap_or("?");
    report(format_args!(
        "\ncellvisor: FATAL: CPU {}: unexpected exception ({vector})\n  {esr}\n  ELR {:#018x}  FAR {far:#018x}  SPSR {:#010x}  SP {:#018x}\n",
        cpu_index(),
        frame.elr,
        frame.spsr,
        frame.sp,
    ));
    for (row, regs) in frame.x.chunks(4).enumerate() {
        let mut line = heapless::String::<128>::new();
        for (i, value) in regs.iter().enumerate() {
            let _ = core::fmt::Write::write_fmt(
                &mut line,
                format_args!("  x{:<2} {value:#018x}", row * 4 + i),
            );
        }
        report(format_args!("{line}\n"));
    }
    report(format_args!("cellvisor: CPU {} parked\n", cpu_index()));
    park()
}
