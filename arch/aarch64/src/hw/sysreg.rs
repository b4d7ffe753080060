//! System registers `aarch64-cpu` 11 does not provide, accessed by their generic
//! `S<op0>_<op1>_C<n>_C<m>_<op2>` names:
//!
//! - GICv3 CPU interface (IHI 0069 §12.2): `ICC_IAR1_EL1`, `ICC_EOIR1_EL1`, `ICC_DIR_EL1`,
//!   `ICC_PMR_EL1`, `ICC_BPR1_EL1`, `ICC_IGRPEN1_EL1`, `ICC_SGI1R_EL1`, and `ICC_CTLR_EL1`,
//!   which `aarch64-cpu` has read-only (with ExtRange alone: no EOImode, no write);
//! - GICv3 virtual interface (IHI 0069 §12.4): `ICH_ELRSR_EL2`;
//! - `VPIDR_EL2`, `CNTHP_CVAL_EL2`, `ZCR_EL2`, `SMCR_EL2`;
//! - the ID registers `ID_AA64MMFR3_EL1` and `ID_AA64ISAR2_EL1`.
//!
//! `aarch64-cpu` does have the other ICH registers the hypervisor uses (`ICH_HCR_EL2`,
//! `ICH_VTR_EL2`, `ICH_VMCR_EL2`, `ICH_AP0R<n>_EL2`, `ICH_AP1R<n>_EL2`, `ICH_LR<n>_EL2`) and
//! `ICC_SRE_EL2`: the code uses those directly. [`ich_lr`] only picks `aarch64-cpu`'s
//! `ICH_LR<n>_EL2` for an index known at run time; [`set_ich_lr`] writes the list registers
//! raw, to keep the injection path's instruction count (see there).

use aarch64_cpu::registers::Readable;

macro_rules! sysreg {
    ($(#[$doc:meta])* $read:ident, $write:ident, $name:literal) => {
        $(#[$doc])*
        #[allow(dead_code)]
        #[inline(always)]
        pub fn $read() -> u64 {
            let value: u64;
            // SAFETY: reading this register at EL2 has no side effect on memory; the GIC
            // acknowledge register's side effect (the interrupt becomes active) is what the
            // caller asks for.
            unsafe {
                core::arch::asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags));
            }
            value
        }

        $(#[$doc])*
        #[allow(dead_code)]
        #[inline(always)]
        pub fn $write(value: u64) {
            // SAFETY: writing this register at EL2 changes interrupt controller or
            // virtualization state only, never memory the compiler knows about.
            unsafe {
                core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) value, options(nostack, preserves_flags));
            }
        }
    };
}

sysreg!(
    /// `ICC_IAR1_EL1`: acknowledge a Group 1 interrupt.
    icc_iar1, _icc_iar1_w, "S3_0_C12_C12_0"
);
sysreg!(
    /// `ICC_EOIR1_EL1`: priority drop (EOImode = 1).
    _icc_eoir1_r, icc_eoir1, "S3_0_C12_C12_1"
);
sysreg!(
    /// `ICC_DIR_EL1`: deactivate.
    _icc_dir_r, icc_dir, "S3_0_C12_C11_1"
);
sysreg!(
    /// `ICC_PMR_EL1`: priority mask.
    icc_pmr, set_icc_pmr, "S3_0_C4_C6_0"
);
sysreg!(
    /// `ICC_BPR1_EL1`: binary point.
    icc_bpr1, set_icc_bpr1, "S3_0_C12_C12_3"
);
sysreg!(
    /// `ICC_CTLR_EL1`.
    icc_ctlr, set_icc_ctlr, "S3_0_C12_C12_4"
);
sysreg!(
    /// `ICC_IGRPEN1_EL1`: Group 1 enable.
    icc_igrpen1, set_icc_igrpen1, "S3_0_C12_C12_7"
);
sysreg!(
    /// `ICC_SGI1R_EL1`: send a Group 1 SGI.
    _icc_sgi1r_r, icc_sgi1r, "S3_0_C12_C11_5"
);
sysreg!(
    /// `ICH_ELRSR_EL2`: empty list registers.
    ich_elrsr, _ich_elrsr_w, "S3_4_C12_C11_5"
);
sysreg!(
    /// `VPIDR_EL2`: the MIDR_EL1 value EL1 reads.
    _vpidr, set_vpidr, "S3_4_C0_C0_0"
);

sysreg!(
    /// `ID_AA64MMFR3_EL1` (S1PIE, S1POE, ...; reads 0 on CPUs before Armv8.9).
    id_aa64mmfr3, _id_aa64mmfr3_w, "S3_0_C0_C7_3"
);
sysreg!(
    /// `ID_AA64ISAR2_EL1` (APA3, GPA3, ...; reads 0 on CPUs before Armv8.7).
    id_aa64isar2, _id_aa64isar2_w, "S3_0_C0_C6_2"
);
sysreg!(
    /// `ZCR_EL2`: SVE vector length for EL1 and EL0.
    _zcr_el2, set_zcr_el2, "S3_4_C1_C2_0"
);
sysreg!(
    /// `SMCR_EL2`: SME streaming vector length for EL1 and EL0.
    _smcr_el2, set_smcr_el2, "S3_4_C1_C2_6"
);
sysreg!(
    /// `CNTHP_CVAL_EL2`: compare value of the EL2 physical timer.
    _cnthp_cval, set_cnthp_cval, "S3_4_C14_C2_2"
);

/// `ICH_LR<n>_EL2`, n < 16 (0 for other indices): `aarch64-cpu`'s register of that index.
#[inline]
pub fn ich_lr(n: usize) -> u64 {
    macro_rules! read {
        ($($n:literal => $reg:ident),*) => {
            match n {
                $($n => aarch64_cpu::registers::$reg.get(),)*
                _ => 0,
            }
        };
    }
    read!(0 => ICH_LR0_EL2, 1 => ICH_LR1_EL2, 2 => ICH_LR2_EL2, 3 => ICH_LR3_EL2,
          4 => ICH_LR4_EL2, 5 => ICH_LR5_EL2, 6 => ICH_LR6_EL2, 7 => ICH_LR7_EL2,
          8 => ICH_LR8_EL2, 9 => ICH_LR9_EL2, 10 => ICH_LR10_EL2, 11 => ICH_LR11_EL2,
          12 => ICH_LR12_EL2, 13 => ICH_LR13_EL2, 14 => ICH_LR14_EL2, 15 => ICH_LR15_EL2)
}

/// Writes `ICH_LR<n>_EL2`, n < 16; other indices are ignored.
///
/// Raw, not `aarch64-cpu`'s `ICH_LR<n>_EL2.set`: that one is `nomem`, which lets the compiler
/// move the queue's stack stores across the write, and the maintenance interrupt's refill
/// loop (`ListRegisters::maintenance`, inlined into `gic::handle_own`) then takes one more
/// instruction per list register it fills. The injection path must not grow.
#[inline]
pub fn set_ich_lr(n: usize, value: u64) {
    macro_rules! write {
        ($($n:literal => $name:literal),*) => {
            match n {
                $($n => {
                    // SAFETY: a list register holds virtual interrupt state only.
                    unsafe { core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) value, options(nostack, preserves_flags)) };
                })*
                _ => {}
            }
        };
    }
    write!(0 => "S3_4_C12_C12_0", 1 => "S3_4_C12_C12_1", 2 => "S3_4_C12_C12_2", 3 => "S3_4_C12_C12_3",
           4 => "S3_4_C12_C12_4", 5 => "S3_4_C12_C12_5", 6 => "S3_4_C12_C12_6", 7 => "S3_4_C12_C12_7",
           8 => "S3_4_C12_C13_0", 9 => "S3_4_C12_C13_1", 10 => "S3_4_C12_C13_2", 11 => "S3_4_C12_C13_3",
           12 => "S3_4_C12_C13_4", 13 => "S3_4_C12_C13_5", 14 => "S3_4_C12_C13_6", 15 => "S3_4_C12_C13_7")
}
