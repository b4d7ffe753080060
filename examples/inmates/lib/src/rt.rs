//! The runtime proper, for the target only: the entry code, the exception vectors, the start
//! in Rust, the fault report and the panic handler.

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::console::{self, Uart};
use crate::esr::Esr;
use crate::{irq, park, platform, println, sysreg, timer, Platform};

/// Bare builds: every CPU of the machine starts at `_start` (QEMU starts all CPUs at the entry
/// of an ELF that is not a Linux kernel); all but the first park there.
const PARK_SECONDARY_CPUS: u64 = cfg!(any(feature = "bare-virt", feature = "bare-zcu102")) as u64;
/// Bytes the IRQ vector saves: x0-x18, x29, x30, ELR_EL1, SPSR_EL1, FPSR, FPCR (padded to 16
/// bytes), then q0-q31. Compiled Rust code uses the FP/SIMD registers, so the handler may
/// clobber any of them.
const IRQ_FRAME_SIZE: u64 = 0xd0 + 32 * 16;

/// ELF relocation type R_AARCH64_RELATIVE (ELF for the Arm 64-bit Architecture, "Dynamic
/// relocations"): the place gets the load base plus the addend. With symbol index 0 it is also the whole
/// `r_info` of an `Elf64_Rela` entry.
const R_AARCH64_RELATIVE: u64 = 1027;

// Entry (the first byte of the image). The hypervisor enters at EL1 with the MMU off and
// DAIF masked; nothing else about the CPU state is assumed, nor where the image is: it is a
// position-independent executable linked at INMATE_BASE (see inmate.ld), and the code below
// only uses PC-relative addresses until it has applied the relocations.
//
// Registers kept until the call into Rust: x19 = the virtual count at the first instruction,
// x20/x21 = `r_info`/`r_offset` of the first relocation that is not R_AARCH64_RELATIVE (or
// x20 = 0), x22 = the FP/SIMD registers at entry ORed together, x23 = x0 at entry (the
// boot argument: 0 in a cell started by `cellvisor cell start`, the device tree's address
// when started like a Linux kernel).
core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
    .type _start, %function
_start:
    // First of all, for `start_counter()`: the earliest point of the inmate on the count.
    mrs     x19, cntvct_el0
    mov     x23, x0
    msr     daifset, #0xf
    mov     x9, #{park_secondary_cpus}
    cbz     x9, 1f
    mrs     x9, mpidr_el1
    and     x9, x9, #0xffffff           // Aff2.Aff1.Aff0
    cbnz    x9, 9f
1:
    msr     spsel, #1                   // run on SP_EL1

    // Relocation: the load base is where `_start` runs minus where it was linked (its link
    // address INMATE_BASE is an absolute symbol, so these moves need no relocation
    // themselves). Every R_AARCH64_RELATIVE entry sets the 64-bit place at load base +
    // r_offset to load base + r_addend; also for a load base of 0, as the linker leaves the
    // places zero. Data accesses go to Device memory (MMU off): only aligned 64-bit ones.
    // Done before the instruction cache is invalidated and enabled below, so that the
    // instructions fetched later see any place in the code too.
    adr     x9, _start
    movz    x10, #:abs_g3:INMATE_BASE
    movk    x10, #:abs_g2_nc:INMATE_BASE
    movk    x10, #:abs_g1_nc:INMATE_BASE
    movk    x10, #:abs_g0_nc:INMATE_BASE
    sub     x9, x9, x10                 // load base
    adrp    x10, __rela_start
    add     x10, x10, :lo12:__rela_start
    adrp    x11, __rela_end
    add     x11, x11, :lo12:__rela_end
    mov     x20, xzr
    mov     x21, xzr
4:  cmp     x10, x11
    b.hs    6f
    ldp     x12, x13, [x10], #16        // r_offset, r_info
    ldr     x14, [x10], #8              // r_addend
    cmp     x13, #{r_aarch64_relative}
    b.ne    5f
    tst     x12, #7
    b.ne    5f
    add     x14, x14, x9
    str     x14, [x12, x9]
    b       4b
5:  cbnz    x20, 4b                     // keep the first unsupported entry for the report
    mov     x20, x13
    mov     x21, x12
    cbnz    x20, 4b
    mov     x20, #-1                    // r_info 0 (R_AARCH64_NONE) is unsupported as well
    b       4b
6:  dsb     sy

    // FP/SIMD at EL1 and EL0 (CPACR_EL1.FPEN = 0b11, Arm ARM D17.2.30): compiled Rust uses
    // the vector registers.
    mov     x9, #(3 << 20)
    msr     cpacr_el1, x9
    isb
    // What the FP/SIMD registers held at entry, for `entry_fp_residue()`: the OR of V0..V31
    // (both halves) and FPSR into x22. A hypervisor must leave them zero (nothing of the vCPU
    // that ran on this CPU before).
    orr     v0.16b, v0.16b, v1.16b
    orr     v2.16b, v2.16b, v3.16b
    orr     v4.16b, v4.16b, v5.16b
    orr     v6.16b, v6.16b, v7.16b
    orr     v8.16b, v8.16b, v9.16b
    orr     v10.16b, v10.16b, v11.16b
    orr     v12.16b, v12.16b, v13.16b
    orr     v14.16b, v14.16b, v15.16b
    orr     v16.16b, v16.16b, v17.16b
    orr     v18.16b, v18.16b, v19.16b
    orr     v20.16b, v20.16b, v21.16b
    orr     v22.16b, v22.16b, v23.16b
    orr     v24.16b, v24.16b, v25.16b
    orr     v26.16b, v26.16b, v27.16b
    orr     v28.16b, v28.16b, v29.16b
    orr     v30.16b, v30.16b, v31.16b
    orr     v0.16b, v0.16b, v2.16b
    orr     v4.16b, v4.16b, v6.16b
    orr     v8.16b, v8.16b, v10.16b
    orr     v12.16b, v12.16b, v14.16b
    orr     v16.16b, v16.16b, v18.16b
    orr     v20.16b, v20.16b, v22.16b
    orr     v24.16b, v24.16b, v26.16b
    orr     v28.16b, v28.16b, v30.16b
    orr     v0.16b, v0.16b, v4.16b
    orr     v8.16b, v8.16b, v12.16b
    orr     v16.16b, v16.16b, v20.16b
    orr     v24.16b, v24.16b, v28.16b
    orr     v0.16b, v0.16b, v8.16b
    orr     v16.16b, v16.16b, v24.16b
    orr     v0.16b, v0.16b, v16.16b
    umov    x22, v0.d[0]
    umov    x9, v0.d[1]
    orr     x22, x22, x9
    mrs     x9, fpsr
    orr     x22, x22, x9
    bl      cellvisor_inmate_icache

    adrp    x9, __stack_top
    add     x9, x9, :lo12:__stack_top
    mov     sp, x9

    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
2:  cmp     x9, x10
    b.hs    3f
    stp     xzr, xzr, [x9], #16
    b       2b
3:
    adrp    x9, cellvisor_inmate_vectors
    add     x9, x9, :lo12:cellvisor_inmate_vectors
    msr     vbar_el1, x9
    isb
    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    mov     x3, x22
    mov     x4, x23
    bl      cellvisor_inmate_start
9:  wfi                         // nothing more to run: sleep
    b       9b
    .size _start, . - _start

    // With the MMU off, instruction fetches are cacheable only with SCTLR_EL1.I set (Arm ARM
    // D8.2.11); invalidate whatever the instruction cache holds for this memory first. Data
    // accesses stay Device-nGnRnE, which also rules out unaligned accesses (the target has
    // +strict-align), so alignment checking (SCTLR_EL1.A) is left off. Uses x9 only; called
    // by `_start` and the secondary entry.
    .global cellvisor_inmate_icache
    .type cellvisor_inmate_icache, %function
cellvisor_inmate_icache:
    ic      iallu
    dsb     nsh
    isb
    mrs     x9, sctlr_el1
    orr     x9, x9, #(1 << 12)
    bic     x9, x9, #(1 << 1)
    msr     sctlr_el1, x9
    isb
    ret
    .size cellvisor_inmate_icache, . - cellvisor_inmate_icache
"#,
    park_secondary_cpus = const PARK_SECONDARY_CPUS,
    r_aarch64_relative = const R_AARCH64_RELATIVE,
);

// Entry of a secondary CPU (`psci::start_cpu`): a PSCI CPU_ON enters here at EL1 with the
// MMU off and x0 = the context, the address of a `psci::Secondary` record (stack top,
// function, argument; 8 bytes each). The image is relocated already (the boot CPU did it),
// so only the CPU's own state is set up: SP_EL1, FP/SIMD, the instruction cache, the
// vectors. Then the function is called with the argument; it does not return.
core::arch::global_asm!(
    r#"
    .section .text, "ax"
    .global cellvisor_inmate_secondary
    .type cellvisor_inmate_secondary, %function
    .balign 4
cellvisor_inmate_secondary:
    msr     daifset, #0xf
    msr     spsel, #1
    mov     x9, #(3 << 20)
    msr     cpacr_el1, x9
    isb
    bl      cellvisor_inmate_icache
    ldr     x9, [x0]
    mov     sp, x9
    adrp    x9, cellvisor_inmate_vectors
    add     x9, x9, :lo12:cellvisor_inmate_vectors
    msr     vbar_el1, x9
    isb
    ldr     x9, [x0, #8]
    ldr     x0, [x0, #16]
    blr     x9
1:  wfi
    b       1b
    .size cellvisor_inmate_secondary, . - cellvisor_inmate_secondary
"#
);

// Exception vectors (Arm ARM D1.3.1): 16 entries of 0x80 bytes; per origin (EL1 on SP_EL0,
// EL1 on SP_EL1, EL0 AArch64, EL0 AArch32) synchronous, IRQ, FIQ, SError. The inmate runs on
// SP_EL1, so entry 5 is its IRQ and entry 4 its synchronous exceptions: those are recorded
// and skipped while `fault::catch` has armed the vector (the record's layout is
// `fault::Caught`), else reported like every other entry, which parks.
core::arch::global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 0x800
    .global cellvisor_inmate_vectors
cellvisor_inmate_vectors:
    .irp kind, 0,1,2,3
    .balign 0x80
    mov     x0, #\kind
    b       cellvisor_inmate_report_entry
    .endr

    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    adrp    x0, CELLVISOR_INMATE_CAUGHT
    add     x0, x0, :lo12:CELLVISOR_INMATE_CAUGHT
    ldr     x1, [x0]                    // armed?
    cbz     x1, 1f
    str     xzr, [x0]                   // one exception per `catch`
    mrs     x1, esr_el1
    str     x1, [x0, #16]
    mrs     x1, far_el1
    str     x1, [x0, #24]
    mrs     x1, elr_el1
    str     x1, [x0, #32]
    add     x1, x1, #4                  // resume after the faulting instruction
    msr     elr_el1, x1
    ldr     x1, [x0, #8]
    add     x1, x1, #1
    str     x1, [x0, #8]
    ldp     x0, x1, [sp], #16
    eret
1:  ldp     x0, x1, [sp], #16
    mov     x0, #4
    b       cellvisor_inmate_report_entry

    .balign 0x80
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0x00]
    // The count first, for the handler's latency measurement.
    mrs     x0, cntvct_el0
    b       cellvisor_inmate_irq_entry

    .irp kind, 6,7,8,9,10,11,12,13,14,15
    .balign 0x80
    mov     x0, #\kind
    b       cellvisor_inmate_report_entry
    .endr

cellvisor_inmate_report_entry:
    // The report runs on its own stack: the fault may come from a broken one.
    adrp    x1, __exception_stack_top
    add     x1, x1, :lo12:__exception_stack_top
    mov     sp, x1
    bl      cellvisor_inmate_exception
1:  wfi
    b       1b

cellvisor_inmate_irq_entry:
    stp     x2, x3, [sp, #0x10]
    stp     x4, x5, [sp, #0x20]
    stp     x6, x7, [sp, #0x30]
    stp     x8, x9, [sp, #0x40]
    stp     x10, x11, [sp, #0x50]
    stp     x12, x13, [sp, #0x60]
    stp     x14, x15, [sp, #0x70]
    stp     x16, x17, [sp, #0x80]
    stp     x18, x29, [sp, #0x90]
    mrs     x1, elr_el1
    stp     x30, x1, [sp, #0xa0]
    mrs     x1, spsr_el1
    mrs     x2, fpsr
    stp     x1, x2, [sp, #0xb0]
    mrs     x1, fpcr
    str     x1, [sp, #0xc0]
    stp     q0, q1, [sp, #0xd0]
    stp     q2, q3, [sp, #0xf0]
    stp     q4, q5, [sp, #0x110]
    stp     q6, q7, [sp, #0x130]
    stp     q8, q9, [sp, #0x150]
    stp     q10, q11, [sp, #0x170]
    stp     q12, q13, [sp, #0x190]
    stp     q14, q15, [sp, #0x1b0]
    stp     q16, q17, [sp, #0x1d0]
    stp     q18, q19, [sp, #0x1f0]
    stp     q20, q21, [sp, #0x210]
    stp     q22, q23, [sp, #0x230]
    stp     q24, q25, [sp, #0x250]
    stp     q26, q27, [sp, #0x270]
    stp     q28, q29, [sp, #0x290]
    stp     q30, q31, [sp, #0x2b0]

    bl      cellvisor_inmate_irq

    ldp     q30, q31, [sp, #0x2b0]
    ldp     q28, q29, [sp, #0x290]
    ldp     q26, q27, [sp, #0x270]
    ldp     q24, q25, [sp, #0x250]
    ldp     q22, q23, [sp, #0x230]
    ldp     q20, q21, [sp, #0x210]
    ldp     q18, q19, [sp, #0x1f0]
    ldp     q16, q17, [sp, #0x1d0]
    ldp     q14, q15, [sp, #0x1b0]
    ldp     q12, q13, [sp, #0x190]
    ldp     q10, q11, [sp, #0x170]
    ldp     q8, q9, [sp, #0x150]
    ldp     q6, q7, [sp, #0x130]
    ldp     q4, q5, [sp, #0x110]
    ldp     q2, q3, [sp, #0xf0]
    ldp     q0, q1, [sp, #0xd0]
    ldr     x1, [sp, #0xc0]
    msr     fpcr, x1
    ldp     x1, x2, [sp, #0xb0]
    msr     spsr_el1, x1
    msr     fpsr, x2
    ldp     x30, x1, [sp, #0xa0]
    msr     elr_el1, x1
    ldp     x18, x29, [sp, #0x90]
    ldp     x16, x17, [sp, #0x80]
    ldp     x14, x15, [sp, #0x70]
    ldp     x12, x13, [sp, #0x60]
    ldp     x10, x11, [sp, #0x50]
    ldp     x8, x9, [sp, #0x40]
    ldp     x6, x7, [sp, #0x30]
    ldp     x4, x5, [sp, #0x20]
    ldp     x2, x3, [sp, #0x10]
    ldp     x0, x1, [sp, #0x00]
    add     sp, sp, #{frame}
    eret
"#,
    frame = const IRQ_FRAME_SIZE,
);

unsafe extern "Rust" {
    /// The inmate's main function, defined by `cellvisor_inmate::entry!`.
    fn inmate_main(platform: &Platform) -> !;
}

/// Called by `_start` on the main stack with the image relocated, `.bss` zeroed and the
/// vectors installed; with the virtual count at the first instruction, and `r_info` and
/// `r_offset` of the first relocation `_start` could not apply (`r_info` 0: none, all-ones: an
/// `r_info` of 0), the FP/SIMD residue and x0 at entry.
#[unsafe(no_mangle)]
extern "C" fn cellvisor_inmate_start(
    start_counter: u64,
    bad_info: u64,
    bad_offset: u64,
    entry_fp: u64,
    boot_argument: u64,
) -> ! {
    timer::set_start_counter(start_counter);
    crate::set_entry_fp_residue(entry_fp);
    crate::set_boot_argument(boot_argument);
    // Without a platform there is not even a console to complain on; the hypervisor sees a
    // cell that never answers.
    let Some(platform) = platform::discover() else {
        park();
    };
    if let Some(uart) = Uart::from_platform(&platform) {
        console::init(uart);
    }
    if bad_info != 0 {
        // Some address in data may be wrong: report with as little of it as possible.
        let (kind, misaligned) = match bad_info {
            u64::MAX => (0, false),
            info if info == R_AARCH64_RELATIVE => (info, true),
            info => (info & 0xffff_ffff, false),
        };
        if misaligned {
            println!("inmate: misaligned R_AARCH64_RELATIVE relocation at {bad_offset:#x}");
        } else {
            println!("inmate: unsupported relocation type {kind} at {bad_offset:#x}");
        }
        println!("inmate: CPU parked");
        console::flush();
        park();
    }
    // SAFETY: `entry!` defines `inmate_main` with exactly this signature; an inmate without
    // it does not link.
    unsafe { inmate_main(&platform) }
}

/// Called by the IRQ vector with the virtual count at entry.
#[unsafe(no_mangle)]
extern "C" fn cellvisor_inmate_irq(entry_counter: u64) {
    irq::dispatch(entry_counter);
}

/// Set while a fault is reported: a fault in the report itself parks at once.
static REPORTING: AtomicBool = AtomicBool::new(false);

/// Called by every vector but the IRQ one, on the exception stack: reports and parks.
#[unsafe(no_mangle)]
extern "C" fn cellvisor_inmate_exception(kind: u64) -> ! {
    // Plain load and store: exclusive accesses need not work on Device memory.
    if REPORTING.load(Ordering::Relaxed) {
        park();
    }
    REPORTING.store(true, Ordering::Relaxed);

    let what = ["synchronous", "IRQ", "FIQ", "SError"][(kind % 4) as usize];
    let from =
        ["EL1 on SP_EL0", "EL1", "EL0 (AArch64)", "EL0 (AArch32)"][((kind / 4) % 4) as usize];
    let esr = Esr(sysreg::esr_el1());
    println!("inmate: unhandled {what} exception from {from}: {esr}");
    println!(
        "inmate:   ESR_EL1 {:#010x}  ELR_EL1 {:#x}  FAR_EL1 {:#x}  SPSR_EL1 {:#x}",
        esr.0,
        sysreg::elr_el1(),
        sysreg::far_el1(),
        sysreg::spsr_el1(),
    );
    println!("inmate: CPU parked");
    console::flush();
    park()
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("inmate: {info}");
    println!("inmate: CPU parked");
    console::flush();
    park()
}
