//! Nothing of a vCPU survives into the next one on the same CPU.
//!
//! EL1 state stays in the registers between traps (see [`super::guest`]), so when a CPU
//! passes from one vCPU to the next (a cell's CPU returned to the root cell, given to another
//! cell, or powered on again), the registers still hold what the last one left: its FP/SIMD
//! and SVE registers (where kernels keep cipher state), its pointer-authentication keys, its
//! thread pointers, its translation table bases, its timers' compare values. Another cell
//! could read all of them. [`el1_state`] zeroes them before the new vCPU starts, as a reset
//! would leave them UNKNOWN.
//!
//! Registers the entry sets anyway (SCTLR_EL1, the general-purpose registers, SP_EL0 through
//! the trap frame) and the timers' control registers (switched off by the park loop) are not
//! repeated here.

use aarch64_cpu::registers::{Readable, ID_AA64ISAR1_EL1, ID_AA64PFR0_EL1, ID_AA64PFR1_EL1};

/// Zeroes the EL1 and EL0 state a vCPU can read; see the [module documentation](self).
/// Called at EL2 on the CPU about to enter a new vCPU, with `CPTR_EL2` not trapping FP/SIMD,
/// SVE or SME (as [`super::cell::prepare_cpu_for`] leaves it).
pub fn el1_state() {
    use aarch64_cpu::registers::{
        Writeable, AFSR0_EL1, AFSR1_EL1, AMAIR_EL1, CNTKCTL_EL1, CNTP_CVAL_EL0, CNTV_CVAL_EL0,
        CONTEXTIDR_EL1, CPACR_EL1, CSSELR_EL1, ELR_EL1, ESR_EL1, FAR_EL1, MAIR_EL1, MDSCR_EL1,
        PAR_EL1, SPSR_EL1, SP_EL1, TCR_EL1, TPIDRRO_EL0, TPIDR_EL0, TPIDR_EL1, TTBR0_EL1,
        TTBR1_EL1, VBAR_EL1,
    };
    // EL1 and EL0 registers only: EL2 runs on its own (and is built soft-float, so the
    // FP/SIMD registers zeroed below are not its either).
    TTBR0_EL1.set(0);
    TTBR1_EL1.set(0);
    TCR_EL1.set(0);
    MAIR_EL1.set(0);
    AMAIR_EL1.set(0);
    VBAR_EL1.set(0);
    CONTEXTIDR_EL1.set(0);
    TPIDR_EL0.set(0);
    TPIDRRO_EL0.set(0);
    TPIDR_EL1.set(0);
    SP_EL1.set(0);
    ELR_EL1.set(0);
    SPSR_EL1.set(0);
    ESR_EL1.set(0);
    FAR_EL1.set(0);
    PAR_EL1.set(0);
    AFSR0_EL1.set(0);
    AFSR1_EL1.set(0);
    CNTKCTL_EL1.set(0);
    CNTV_CVAL_EL0.set(0);
    CNTP_CVAL_EL0.set(0);
    MDSCR_EL1.set(0);
    CSSELR_EL1.set(0);
    // CPACR_EL1 = 0: the new kernel's FP/SIMD use traps to it until it enables it.
    CPACR_EL1.set(0);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    // Streaming mode off first: leaving it zeroes the SVE registers, which come next.
    if ID_AA64PFR1_EL1.get() >> 24 & 0xf != 0 {
        sme_off();
    }
    let sve = ID_AA64PFR0_EL1.get() >> 32 & 0xf != 0;
    // SAFETY: the function writes zeros to FP/SIMD (and, with `sve`, SVE predicate) registers
    // only, which EL2 does not use; SVE instructions run only if the CPU has SVE.
    unsafe { cellvisor_scrub_fp_simd(u64::from(sve)) };
    // APA [7:4], API [11:8], GPA [27:24], GPI [31:28] (and ISAR2's APA3/GPA3, which imply
    // one of these on every CPU that has them).
    if ID_AA64ISAR1_EL1.get() & super::cell::PAUTH_ISAR1 != 0
        || super::sysreg::id_aa64isar2() & super::cell::PAUTH_ISAR2 != 0
    {
        pointer_authentication_keys();
    }
}

core::arch::global_asm!(
    r#"
    .section .text.cellvisor_scrub_fp_simd, "ax"
    .global cellvisor_scrub_fp_simd
    .type cellvisor_scrub_fp_simd, %function
// Zeroes V0..V31 (with SVE the whole Z registers: an FP/SIMD write zeroes the bits above
// 128), FPCR and FPSR; with x0 != 0 also the SVE predicates P0..P15 and FFR. The only FP/SIMD
// instructions in the image (the image check allows them in this function alone).
cellvisor_scrub_fp_simd:
    .arch_extension fp
    .arch_extension simd
    .arch_extension sve
    movi    v0.2d, #0
    movi    v1.2d, #0
    movi    v2.2d, #0
    movi    v3.2d, #0
    movi    v4.2d, #0
    movi    v5.2d, #0
    movi    v6.2d, #0
    movi    v7.2d, #0
    movi    v8.2d, #0
    movi    v9.2d, #0
    movi    v10.2d, #0
    movi    v11.2d, #0
    movi    v12.2d, #0
    movi    v13.2d, #0
    movi    v14.2d, #0
    movi    v15.2d, #0
    movi    v16.2d, #0
    movi    v17.2d, #0
    movi    v18.2d, #0
    movi    v19.2d, #0
    movi    v20.2d, #0
    movi    v21.2d, #0
    movi    v22.2d, #0
    movi    v23.2d, #0
    movi    v24.2d, #0
    movi    v25.2d, #0
    movi    v26.2d, #0
    movi    v27.2d, #0
    movi    v28.2d, #0
    movi    v29.2d, #0
    movi    v30.2d, #0
    movi    v31.2d, #0
    msr     fpcr, xzr
    msr     fpsr, xzr
    cbz     x0, 1f
    pfalse  p0.b
    pfalse  p1.b
    pfalse  p2.b
    pfalse  p3.b
    pfalse  p4.b
    pfalse  p5.b
    pfalse  p6.b
    pfalse  p7.b
    pfalse  p8.b
    pfalse  p9.b
    pfalse  p10.b
    pfalse  p11.b
    pfalse  p12.b
    pfalse  p13.b
    pfalse  p14.b
    pfalse  p15.b
    wrffr   p0.b
1:  ret
    .size cellvisor_scrub_fp_simd, . - cellvisor_scrub_fp_simd
"#
);

unsafe extern "C" {
    fn cellvisor_scrub_fp_simd(sve: u64);
}

/// Leaves streaming mode and switches ZA off (SVCR = 0; ZA reads as zero when it is switched
/// on again), and TPIDR2_EL0.
fn sme_off() {
    // aarch64-cpu 11 has neither register. SVCR is S3_3_C4_C2_2, TPIDR2_EL0 S3_3_C13_C0_5.
    // SAFETY: EL0/EL1 SME state only, which EL2 does not use; no memory is touched.
    unsafe {
        core::arch::asm!(
            "msr S3_3_C4_C2_2, xzr",
            "msr S3_3_C13_C0_5, xzr",
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// The five pointer-authentication keys (APIA, APIB, APDA, APDB, APGA), low and high halves.
fn pointer_authentication_keys() {
    // Raw, by their generic names (op0 3, op1 0, CRn 2, CRm 1..3): aarch64-cpu's APIAKEYLO_EL1
    // and the others write them by name, which the assembler only accepts when the target has
    // the `pauth` feature, and the image is built for plain Armv8.0.
    // SAFETY: EL1 key registers only, which EL2 does not use; no memory is touched.
    unsafe {
        core::arch::asm!(
            "msr S3_0_C2_C1_0, xzr",
            "msr S3_0_C2_C1_1, xzr",
            "msr S3_0_C2_C1_2, xzr",
            "msr S3_0_C2_C1_3, xzr",
            "msr S3_0_C2_C2_0, xzr",
            "msr S3_0_C2_C2_1, xzr",
            "msr S3_0_C2_C2_2, xzr",
            "msr S3_0_C2_C2_3, xzr",
            "msr S3_0_C2_C3_0, xzr",
            "msr S3_0_C2_C3_1, xzr",
            options(nomem, nostack, preserves_flags)
        );
    }
}
