//! The generic timer's virtual timer (Arm ARM D11 "The Generic Timer in AArch64 state"): the
//! virtual count CNTVCT_EL0 and a compare-value deadline that raises PPI 27 while the count is
//! at or past it. Under cellvisor the virtual offset is 0, so the virtual count is the system
//! count.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::sysreg;

/// The virtual timer's interrupt: PPI 11, INTID 27 (Arm Base System Architecture).
pub const VIRTUAL_TIMER_INTID: u32 = 27;

/// CNTV_CTL_EL0.ENABLE.
const CTL_ENABLE: u64 = 1 << 0;
/// CNTV_CTL_EL0.IMASK: the condition does not raise the interrupt.
const CTL_IMASK: u64 = 1 << 1;
/// CNTV_CTL_EL0.ISTATUS: the condition is met.
const CTL_ISTATUS: u64 = 1 << 2;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The virtual count at the inmate's first instruction (plain loads and stores only: the
/// memory is Device memory, where exclusive accesses need not work).
static START_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The virtual count (CNTVCT_EL0) at the inmate's first instruction: `_start` reads it before
/// anything else, so it marks the moment the hypervisor (or, bare, QEMU) entered the image.
/// In the same time base as [`counter`]; 0 in host builds.
pub fn start_counter() -> u64 {
    START_COUNTER.load(Ordering::Relaxed)
}

/// Keeps the count `_start` read at the first instruction, for [`start_counter`].
// Only the target runtime (`rt`) calls it.
#[cfg_attr(not(inmate_hw), allow(dead_code))]
pub(crate) fn set_start_counter(count: u64) {
    START_COUNTER.store(count, Ordering::Relaxed);
}

/// The counter frequency in Hz (CNTFRQ_EL0, set up by firmware).
pub fn frequency() -> u64 {
    sysreg::cntfrq_el0()
}

/// The virtual count now, in ticks; the read is ordered after the instructions before it.
pub fn counter() -> u64 {
    // Without the barrier the read may happen early (Arm ARM D11.2.2).
    sysreg::isb();
    sysreg::cntvct_el0()
}

/// Arms the virtual timer: its interrupt becomes pending once the count reaches `deadline`
/// (right away if it already has) and stays pending until a later deadline is set or the
/// timer is stopped.
pub fn set_deadline(deadline: u64) {
    sysreg::set_cntv_cval_el0(deadline);
    sysreg::set_cntv_ctl_el0(CTL_ENABLE);
    sysreg::isb();
}

/// The deadline last set.
pub fn deadline() -> u64 {
    sysreg::cntv_cval_el0()
}

/// Whether the timer is enabled and its deadline has passed.
pub fn expired() -> bool {
    let ctl = sysreg::cntv_ctl_el0();
    ctl & CTL_ENABLE != 0 && ctl & CTL_ISTATUS != 0
}

/// Stops the virtual timer (its interrupt is no longer raised).
pub fn stop() {
    sysreg::set_cntv_ctl_el0(CTL_IMASK);
    sysreg::isb();
}

/// Converts ticks at `frequency` Hz to nanoseconds (0 for a frequency of 0).
pub fn ticks_to_ns(ticks: u64, frequency: u64) -> u64 {
    if frequency == 0 {
        return 0;
    }
    (u128::from(ticks) * u128::from(NANOS_PER_SECOND) / u128::from(frequency))
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Converts nanoseconds to ticks at `frequency` Hz, rounding down.
pub fn ns_to_ticks(ns: u64, frequency: u64) -> u64 {
    (u128::from(ns) * u128::from(frequency) / u128::from(NANOS_PER_SECOND))
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Busy-waits until the count reaches `deadline`, calling `poll` on every round; returns early
/// with the value of the first `poll` that returns `Some`.
pub fn wait_until<T>(deadline: u64, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    while counter() < deadline {
        if let Some(value) = poll() {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysreg::fake;
    use std::vec;

    #[test]
    fn conversions() {
        assert_eq!(ticks_to_ns(1, 62_500_000), 16);
        assert_eq!(ticks_to_ns(62_500_000, 62_500_000), 1_000_000_000);
        assert_eq!(ticks_to_ns(100, 0), 0);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
        assert_eq!(ns_to_ticks(10_000_000, 62_500_000), 625_000);
        assert_eq!(ns_to_ticks(10_000_000, 100_000_000), 1_000_000);
        assert_eq!(ns_to_ticks(15, 62_500_000), 0);
    }

    #[test]
    fn the_start_counter_is_what_the_entry_read() {
        set_start_counter(4321);
        assert_eq!(start_counter(), 4321);
        assert_eq!(crate::start_counter(), 4321);
    }

    #[test]
    fn deadline_arms_and_stop_masks() {
        fake::reset();
        set_deadline(1234);
        assert_eq!(deadline(), 1234);
        stop();
        assert_eq!(
            fake::take_writes(),
            vec![
                ("cntv_cval_el0", 1234),
                ("cntv_ctl_el0", CTL_ENABLE),
                ("cntv_ctl_el0", CTL_IMASK),
            ]
        );
        fake::set("cntv_ctl_el0", CTL_ENABLE | CTL_ISTATUS);
        assert!(expired());
        fake::set("cntv_ctl_el0", CTL_IMASK | CTL_ISTATUS);
        assert!(!expired());
    }

    #[test]
    fn wait_until_returns_what_poll_found() {
        fake::reset();
        fake::set("cntvct_el0", 10);
        let mut rounds = 0;
        let found = wait_until(20, || {
            rounds += 1;
            (rounds == 3).then_some("found")
        });
        assert_eq!(found, Some("found"));
        assert_eq!(wait_until(5, || Some(1)), None);
    }
}
