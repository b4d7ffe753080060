//! The system registers and instructions the runtime uses, one function each.
//!
//! On the target they are single `mrs`/`msr` instructions. Elsewhere (host builds and tests)
//! they act on a per-thread fake register file: reads return the last value written (tests set
//! values with `fake::set`), and tests can inspect every write. Outside tests the fake reads 0
//! and ignores writes.

/// Defines a function that reads a system register.
macro_rules! read_sysreg {
    ($(#[$doc:meta])* $function:ident, $register:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $function() -> u64 {
            #[cfg(inmate_hw)]
            {
                let value: u64;
                // SAFETY: reading this register at EL1 touches no memory; where the read has an
                // effect on the hardware (ICC_IAR1_EL1 acknowledges an interrupt) the caller
                // is documented to handle it.
                unsafe {
                    core::arch::asm!(
                        concat!("mrs {}, ", $register),
                        out(reg) value,
                        options(nostack, preserves_flags),
                    );
                }
                value
            }
            #[cfg(not(inmate_hw))]
            {
                fake::read($register)
            }
        }
    };
}

/// Defines a function that writes a system register.
macro_rules! write_sysreg {
    ($(#[$doc:meta])* $function:ident, $register:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $function(value: u64) {
            #[cfg(inmate_hw)]
            // SAFETY: the runtime's registers configure its own CPU (timer, GIC CPU interface,
            // interrupt masks) and none of them changes memory that Rust code can see.
            unsafe {
                core::arch::asm!(
                    concat!("msr ", $register, ", {}"),
                    in(reg) value,
                    options(nostack, preserves_flags),
                );
            }
            #[cfg(not(inmate_hw))]
            {
                fake::write($register, value);
            }
        }
    };
}

/// Defines a function that runs one instruction without operands.
macro_rules! instruction {
    ($(#[$doc:meta])* $function:ident, $instruction:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $function() {
            #[cfg(inmate_hw)]
            // SAFETY: a barrier, a wait or an interrupt-mask change has no effect on memory
            // safety; the interrupt handlers only touch state that is made for sharing with
            // them.
            unsafe {
                core::arch::asm!($instruction, options(nostack, preserves_flags));
            }
            #[cfg(not(inmate_hw))]
            {
                fake::instruction($instruction);
            }
        }
    };
}

read_sysreg!(
    /// CNTFRQ_EL0: the system counter frequency in Hz.
    cntfrq_el0,
    "cntfrq_el0"
);
read_sysreg!(
    /// CNTVCT_EL0: the virtual count (physical count minus CNTVOFF_EL2). Not ordered: use
    /// [`timer::counter`](crate::timer::counter) for a read that follows the code before it.
    cntvct_el0,
    "cntvct_el0"
);
read_sysreg!(
    /// CNTV_CTL_EL0: the virtual timer's control (ENABLE, IMASK, ISTATUS).
    cntv_ctl_el0,
    "cntv_ctl_el0"
);
write_sysreg!(
    /// Writes CNTV_CTL_EL0.
    set_cntv_ctl_el0,
    "cntv_ctl_el0"
);
read_sysreg!(
    /// CNTV_CVAL_EL0: the virtual timer's compare value (deadline).
    cntv_cval_el0,
    "cntv_cval_el0"
);
write_sysreg!(
    /// Writes CNTV_CVAL_EL0.
    set_cntv_cval_el0,
    "cntv_cval_el0"
);
read_sysreg!(
    /// ICC_SRE_EL1: GICv3 system register interface enable.
    icc_sre_el1,
    "icc_sre_el1"
);
write_sysreg!(
    /// Writes ICC_SRE_EL1.
    set_icc_sre_el1,
    "icc_sre_el1"
);
write_sysreg!(
    /// Writes ICC_PMR_EL1, the priority mask.
    set_icc_pmr_el1,
    "icc_pmr_el1"
);
write_sysreg!(
    /// Writes ICC_BPR1_EL1, the group 1 binary point.
    set_icc_bpr1_el1,
    "icc_bpr1_el1"
);
write_sysreg!(
    /// Writes ICC_IGRPEN1_EL1, the group 1 interrupt enable.
    set_icc_igrpen1_el1,
    "icc_igrpen1_el1"
);
read_sysreg!(
    /// ICC_IAR1_EL1: acknowledges the highest-priority pending group 1 interrupt and returns
    /// its INTID (1023: none).
    icc_iar1_el1,
    "icc_iar1_el1"
);
write_sysreg!(
    /// Writes ICC_EOIR1_EL1: ends (and, with EOImode 0, deactivates) an interrupt.
    set_icc_eoir1_el1,
    "icc_eoir1_el1"
);
read_sysreg!(
    /// ID_AA64PFR0_EL1: processor features (bits 27:24: GIC system register interface).
    id_aa64pfr0_el1,
    "id_aa64pfr0_el1"
);
read_sysreg!(
    /// MPIDR_EL1: this CPU's affinity.
    mpidr_el1,
    "mpidr_el1"
);
read_sysreg!(
    /// ESR_EL1: the syndrome of the last exception taken to EL1.
    esr_el1,
    "esr_el1"
);
read_sysreg!(
    /// ELR_EL1: where the last exception was taken.
    elr_el1,
    "elr_el1"
);
read_sysreg!(
    /// FAR_EL1: the faulting address of the last abort.
    far_el1,
    "far_el1"
);
read_sysreg!(
    /// SPSR_EL1: the PSTATE of the interrupted code.
    spsr_el1,
    "spsr_el1"
);
read_sysreg!(
    /// DAIF: the exception masks.
    daif,
    "daif"
);
write_sysreg!(
    /// Writes DAIF.
    set_daif,
    "daif"
);
instruction!(
    /// Masks IRQs (PSTATE.I = 1).
    mask_irq,
    "msr daifset, #2"
);
instruction!(
    /// Unmasks IRQs (PSTATE.I = 0).
    unmask_irq,
    "msr daifclr, #2"
);
instruction!(
    /// Masks every exception that can be masked (debug, SError, IRQ, FIQ).
    mask_all,
    "msr daifset, #0xf"
);
instruction!(
    /// Instruction synchronization barrier: system register writes before it take effect for
    /// the instructions after it.
    isb,
    "isb"
);
instruction!(
    /// Full-system data synchronization barrier.
    dsb_sy,
    "dsb sy"
);
instruction!(
    /// Waits for an interrupt (it returns when one is pending, masked or not).
    wfi,
    "wfi"
);
instruction!(
    /// Waits for an event.
    wfe,
    "wfe"
);

/// The fake register file of host builds.
#[cfg(not(inmate_hw))]
pub mod fake {
    #[cfg(test)]
    use std::{cell::RefCell, collections::BTreeMap, vec::Vec};

    #[cfg(test)]
    std::thread_local! {
        static REGISTERS: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
        static LOG: RefCell<Vec<(&'static str, u64)>> = const { RefCell::new(Vec::new()) };
    }

    /// Reads a fake register: the last value written or set (0 outside tests).
    pub fn read(register: &'static str) -> u64 {
        #[cfg(test)]
        {
            REGISTERS.with(|r| r.borrow().get(register).copied().unwrap_or(0))
        }
        #[cfg(not(test))]
        {
            let _ = register;
            0
        }
    }

    /// Writes a fake register (and logs the write, in tests).
    pub fn write(register: &'static str, value: u64) {
        #[cfg(test)]
        {
            REGISTERS.with(|r| r.borrow_mut().insert(register, value));
            LOG.with(|l| l.borrow_mut().push((register, value)));
        }
        #[cfg(not(test))]
        {
            let _ = (register, value);
        }
    }

    /// Runs an instruction: nothing to do on the host.
    pub fn instruction(instruction: &'static str) {
        let _ = instruction;
    }

    /// Sets a fake register without logging.
    #[cfg(test)]
    pub fn set(register: &'static str, value: u64) {
        REGISTERS.with(|r| r.borrow_mut().insert(register, value));
    }

    /// The writes of this thread so far, in order, and forgets them.
    #[cfg(test)]
    pub fn take_writes() -> Vec<(&'static str, u64)> {
        LOG.with(|l| core::mem::take(&mut *l.borrow_mut()))
    }

    /// Forgets every register value and write of this thread.
    #[cfg(test)]
    pub fn reset() {
        REGISTERS.with(|r| r.borrow_mut().clear());
        LOG.with(|l| l.borrow_mut().clear());
    }
}
