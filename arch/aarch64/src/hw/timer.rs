//! The EL2 physical timer (CNTHP), which ends a wait with a deadline ([`super::wait`]).

use aarch64_cpu::registers::{Writeable, CNTHP_CTL_EL2};

/// Arms the EL2 physical timer (CNTHP) to fire at counter value `deadline` (Arm ARM, "The
/// Generic Timer": the timer condition is CNTPCT - CVAL >= 0; ENABLE set, IMASK clear).
pub fn arm(deadline: u64) {
    // CNTHP_CVAL_EL2 through hw/sysreg.rs: aarch64-cpu 11 has only CNTHP_CTL_EL2.
    super::sysreg::set_cnthp_cval(deadline);
    CNTHP_CTL_EL2.write(CNTHP_CTL_EL2::ENABLE::SET + CNTHP_CTL_EL2::IMASK::CLEAR);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// Switches the EL2 timer off, which also takes its level-sensitive interrupt away.
pub fn disarm() {
    // ENABLE clear, and IMASK: the whole register 0.
    CNTHP_CTL_EL2.write(CNTHP_CTL_EL2::ENABLE::CLEAR + CNTHP_CTL_EL2::IMASK::CLEAR);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
