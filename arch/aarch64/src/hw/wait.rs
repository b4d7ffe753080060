//! Waiting at EL2 without spinning: a CPU with nothing to do sleeps in WFI and is woken by an
//! interrupt, the way Jailhouse parks CPUs.
//!
//! - **Wake-ups.** The event SGI ([`gic::EVENT_SGI`], "look at your flags again"), sent by
//!   [`kick`], and the EL2 physical timer (CNTHP) for a wait with a deadline. Both have the
//!   hypervisor's own priority, above every priority a cell can give its interrupts
//!   ([`cellvisor_gic::HIGHEST_CELL_PRIORITY`]).
//! - **What a wait masks.** While it waits, a CPU raises its priority mask so that only those
//!   two wake it: the cell interrupts that arrive meanwhile stay pending in the GIC, untouched,
//!   and are taken when the CPU returns to its vCPU (or by the next vCPU of its cell). A wait
//!   inside a trap handler therefore loses no interrupt of the vCPU, and a parked CPU is not
//!   woken by a level interrupt of a stopped cell again and again.
//! - **No lost wake-up.** The condition is checked before every WFI; a kick sent after the
//!   check leaves the SGI pending, and a pending SGI ends the WFI at once (Arm ARM, "Wait For
//!   Interrupt", the WFI wake-up events: a physical IRQ the GIC signals wakes the PE whatever
//!   PSTATE.I says). Wake-up interrupts are only acknowledged after the WFI, then the
//!   condition is checked again.
//!
//! Before its GIC CPU interface is set up a CPU cannot be woken, so there it spins: the boot
//! CPU while the secondaries come up without a system configuration (no GIC to use), and a
//! secondary waiting for the console lock with its first log line.

use super::{cells, cpu_index, gic};
use aarch64_cpu::registers::{Readable, Writeable, CNTHP_CTL_EL2, CNTPCT_EL0};

/// Wakes `cpu` from a wait (or makes its next wait check its condition at once).
pub fn kick(cpu: usize) {
    gic::send_event(cpu);
}

/// Waits until `done()` holds, or until the counter (CNTPCT_EL0) reaches `deadline`.
/// Returns the last value of `done()`.
///
/// In a trap handler, a stop request that arrives while the CPU waits is not taken here (the
/// handler may hold locks): its event SGI is sent again, and the CPU stops at the trap it
/// takes right after returning to its vCPU.
pub fn until(deadline: Option<u64>, mut done: impl FnMut() -> bool) -> bool {
    let cpu = cpu_index();
    let Some(mask) = gic::mask_for_wait(cpu) else {
        return spin_until(deadline, done);
    };
    let result = loop {
        if done() {
            break true;
        }
        if let Some(deadline) = deadline {
            if CNTPCT_EL0.get() >= deadline {
                break false;
            }
            arm_timer(deadline);
        }
        aarch64_cpu::asm::wfi();
        if deadline.is_some() {
            disarm_timer();
        }
        gic::take_wakeups(cpu);
    };
    gic::unmask_after_wait(cpu, mask);
    if !cells::is_parked(cpu) && cells::stop_requested(cpu) {
        gic::send_event(cpu);
    }
    result
}

/// [`until`] for a CPU that cannot sleep yet.
fn spin_until(deadline: Option<u64>, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if deadline.is_some_and(|deadline| CNTPCT_EL0.get() >= deadline) {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// The `sleep` hook of `cellvisor-sync`: a CPU waiting for a lock sleeps until it is free.
pub fn sleep_until_ready(ready: &dyn Fn() -> bool) {
    until(None, ready);
}

/// The counter value `millis` milliseconds from now.
pub fn deadline_in(millis: u64) -> u64 {
    cells::ticks() + cells::frequency() * millis / 1000
}

/// Arms the EL2 physical timer (CNTHP) to fire at counter value `deadline` (Arm ARM, "The
/// Generic Timer": the timer condition is CNTPCT - CVAL >= 0; ENABLE set, IMASK clear).
fn arm_timer(deadline: u64) {
    // CNTHP_CVAL_EL2 through hw/sysreg.rs: aarch64-cpu 11 has only CNTHP_CTL_EL2.
    super::sysreg::set_cnthp_cval(deadline);
    CNTHP_CTL_EL2.write(CNTHP_CTL_EL2::ENABLE::SET + CNTHP_CTL_EL2::IMASK::CLEAR);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// Switches the EL2 timer off, which also takes its level-sensitive interrupt away.
pub fn disarm_timer() {
    // ENABLE clear, and IMASK: the whole register 0.
    CNTHP_CTL_EL2.write(CNTHP_CTL_EL2::ENABLE::CLEAR + CNTHP_CTL_EL2::IMASK::CLEAR);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
