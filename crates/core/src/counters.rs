//! Per-CPU trap counters: how often each CPU entered the hypervisor, by
//! architecture-neutral [`TrapReason`], and how many hypervisor instructions those traps
//! cost where the CPU can count them.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Why a cell's CPU entered the hypervisor, for the counters. The reasons are the same on
/// every architecture; each variant says what it is on Arm and on x86.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
pub enum TrapReason {
    /// A physical interrupt, injected into the cell (Arm: an IRQ at EL2; x86: an external
    /// interrupt exit).
    Irq,
    /// The interrupt controller's maintenance interrupt (Arm: GIC list registers refilled;
    /// x86: an interrupt-window exit).
    Maintenance,
    /// Emulated shared interrupt-controller registers (Arm: the GIC distributor; x86: the
    /// IOAPIC).
    Distributor,
    /// Emulated per-CPU interrupt-controller registers (Arm: a GICv3 redistributor; x86: the
    /// local APIC's registers other than the ICR).
    Redistributor,
    /// An inter-processor interrupt sent (Arm: an `ICC_SGI1R_EL1` or other SGI register
    /// write; x86: an ICR write).
    SgiRegister,
    /// Another trapped system register (Arm: MSR/MRS; x86: RDMSR/WRMSR, CPUID, CR access).
    OtherSysreg,
    /// A CPU power call (Arm: PSCI; x86: INIT and SIPI).
    Psci,
    /// Another firmware or hypervisor call (Arm: SMCCC through SMC or HVC; x86: VMCALL or
    /// VMMCALL).
    Smccc,
    /// Root cell access to the management control page (a management command or register).
    Management,
    /// Access outside the cell's configuration (an abort injected, or the cell stopped).
    OutsideConfig,
    /// Anything else.
    Other,
}

impl TrapReason {
    /// Every reason, in counter order.
    pub const ALL: [TrapReason; 11] = [
        Self::Irq,
        Self::Maintenance,
        Self::Distributor,
        Self::Redistributor,
        Self::SgiRegister,
        Self::OtherSysreg,
        Self::Psci,
        Self::Smccc,
        Self::Management,
        Self::OutsideConfig,
        Self::Other,
    ];

    /// Short name for the counter table (the names of the management interface).
    pub const fn name(self) -> &'static str {
        cellvisor_abi::TRAP_REASONS[self as usize]
    }
}

/// Traps costing more hypervisor instructions than this are not measured: only management
/// commands that copy images or wait for CPUs take that long.
pub const MAX_MEASURED_INSTRUCTIONS: u64 = 1 << 20;

/// A trap costing more than this many times the fewest instructions of its reason, and more
/// than [`OUTLIER_FLOOR`], is an outlier and not measured: on QEMU another CPU ran in the
/// middle of its entry or exit path (its instruction count is global), or it was a rare slow
/// path (a management command that builds tables, a queue overflow). The figures are those
/// of the common path.
pub const OUTLIER_FACTOR: u64 = 8;
/// See [`OUTLIER_FACTOR`].
pub const OUTLIER_FLOOR: u64 = 4096;

/// One CPU's trap counters, by reason, and the hypervisor instructions the traps cost.
/// Written only by their CPU (plain load and store, no atomic read-modify-write), read by
/// anyone.
#[derive(Debug)]
pub struct TrapCounters {
    counts: [AtomicU64; TrapReason::ALL.len()],
    instructions: [AtomicU64; TrapReason::ALL.len()],
    measured: [AtomicU64; TrapReason::ALL.len()],
    /// The fewest instructions, complemented (so that the all-zero initial state, which
    /// lets the counters live in `.bss`, means none).
    min_complement: [AtomicU32; TrapReason::ALL.len()],
    max: [AtomicU32; TrapReason::ALL.len()],
    /// One more than the reason of the trap being handled, 0 outside a trap.
    current: AtomicUsize,
    /// The instruction counter at the end of the previous trap's handler.
    mark: AtomicU64,
}

/// The instruction cost of one trap reason on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapCost {
    /// Instructions of the measured traps.
    pub instructions: u64,
    /// Measured traps.
    pub measured: u64,
    /// Fewest instructions of one trap (`u32::MAX` if none).
    pub min: u32,
    /// Most instructions of one trap.
    pub max: u32,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl TrapCounters {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; TrapReason::ALL.len()],
            instructions: [const { AtomicU64::new(0) }; TrapReason::ALL.len()],
            measured: [const { AtomicU64::new(0) }; TrapReason::ALL.len()],
            min_complement: [const { AtomicU32::new(0) }; TrapReason::ALL.len()],
            max: [const { AtomicU32::new(0) }; TrapReason::ALL.len()],
            current: AtomicUsize::new(0),
            mark: AtomicU64::new(0),
        }
    }

    /// Counts one trap; it is the one [`TrapCounters::measure`] charges next.
    pub fn count(&self, reason: TrapReason) {
        bump(&self.counts[reason as usize], 1);
        self.current.store(reason as usize + 1, Ordering::Relaxed);
    }

    /// The count for `reason`.
    pub fn get(&self, reason: TrapReason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    /// The instruction cost of the traps for `reason`.
    pub fn cost(&self, reason: TrapReason) -> TrapCost {
        let i = reason as usize;
        TrapCost {
            instructions: self.instructions[i].load(Ordering::Relaxed),
            measured: self.measured[i].load(Ordering::Relaxed),
            min: !self.min_complement[i].load(Ordering::Relaxed),
            max: self.max[i].load(Ordering::Relaxed),
        }
    }

    /// Starts a measurement at instruction count `now` (the CPU enters a cell after running
    /// something that is not a trap, or the counter was reset): the next trap is charged from
    /// here.
    pub fn start(&self, now: u64) {
        self.mark.store(now, Ordering::Relaxed);
        self.current.store(0, Ordering::Relaxed);
    }

    /// The handler of the current trap is done at instruction count `now`, a `bits`-bit
    /// counter: charges the instructions since the previous mark to the reason counted last,
    /// unless the count is implausible (the counter was reset or disabled in between) or an
    /// outlier (see [`OUTLIER_FACTOR`]).
    ///
    /// Returns whether the counter moved at all since the previous mark (a counter that
    /// stands still has been stopped).
    pub fn measure(&self, now: u64, bits: u32) -> bool {
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        let spent = now.wrapping_sub(self.mark.load(Ordering::Relaxed)) & mask;
        self.mark.store(now, Ordering::Relaxed);
        let current = self.current.load(Ordering::Relaxed);
        self.current.store(0, Ordering::Relaxed);
        if spent == 0 {
            return false;
        }
        let Some(reason) = current.checked_sub(1) else {
            return true;
        };
        if reason >= TrapReason::ALL.len() || spent > MAX_MEASURED_INSTRUCTIONS {
            return true;
        }
        let min = u64::from(!self.min_complement[reason].load(Ordering::Relaxed));
        if spent > OUTLIER_FLOOR && spent > min.saturating_mul(OUTLIER_FACTOR) {
            return true;
        }
        bump(&self.instructions[reason], spent);
        bump(&self.measured[reason], 1);
        let spent = spent as u32;
        if u64::from(spent) < min {
            self.min_complement[reason].store(!spent, Ordering::Relaxed);
        }
        if spent > self.max[reason].load(Ordering::Relaxed) {
            self.max[reason].store(spent, Ordering::Relaxed);
        }
        true
    }

    /// Sets every count to zero.
    pub fn reset(&self) {
        for i in 0..TrapReason::ALL.len() {
            self.counts[i].store(0, Ordering::Relaxed);
            self.instructions[i].store(0, Ordering::Relaxed);
            self.measured[i].store(0, Ordering::Relaxed);
            self.min_complement[i].store(0, Ordering::Relaxed);
            self.max[i].store(0, Ordering::Relaxed);
        }
        self.current.store(0, Ordering::Relaxed);
    }

    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        TrapReason::ALL.iter().map(|&r| self.get(r)).sum()
    }
}

impl Default for TrapCounters {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_per_reason() {
        let counters = TrapCounters::new();
        counters.count(TrapReason::Irq);
        counters.count(TrapReason::Irq);
        counters.count(TrapReason::Psci);
        assert_eq!(counters.get(TrapReason::Irq), 2);
        assert_eq!(counters.get(TrapReason::Psci), 1);
        assert_eq!(counters.get(TrapReason::Distributor), 0);
        assert_eq!(counters.total(), 3);
        // The last counted reason is charged; a 32-bit counter wraps.
        counters.start(0xffff_ff00);
        counters.count(TrapReason::Irq);
        assert!(counters.measure(0x40, 32));
        counters.count(TrapReason::Irq);
        counters.measure(0x100, 32);
        let irq = counters.cost(TrapReason::Irq);
        assert_eq!(irq.instructions, 0x140 + 0xc0);
        assert_eq!((irq.measured, irq.min, irq.max), (2, 0xc0, 0x140));
        // No reason counted, or a reset counter (a huge wrapped delta): nothing charged.
        counters.measure(0x200, 32);
        counters.count(TrapReason::Psci);
        counters.measure(0x10, 32);
        assert_eq!(counters.cost(TrapReason::Psci).measured, 0);
        assert_eq!(counters.cost(TrapReason::Irq).measured, 2);
        counters.count(TrapReason::Psci);
        counters.measure(0x60, 32);
        assert_eq!(counters.cost(TrapReason::Psci).instructions, 0x50);
        counters.count(TrapReason::Psci);
        counters.measure(0x90, 32);
        assert_eq!(counters.cost(TrapReason::Psci).measured, 2);
        // Outliers: more than 8 times the fewest and more than 4096 instructions.
        counters.count(TrapReason::Psci);
        counters.measure(0x90 + 5000, 32);
        assert_eq!(counters.cost(TrapReason::Psci).measured, 2);
        counters.count(TrapReason::Distributor);
        counters.measure(0x90 + 5000 + 100_000, 32);
        assert_eq!(counters.cost(TrapReason::Distributor).measured, 1);
        // A counter that did not move was stopped: nothing charged, and the caller is told.
        counters.count(TrapReason::Irq);
        assert!(!counters.measure(0x90 + 5000 + 100_000, 32));
        assert_eq!(counters.cost(TrapReason::Irq).measured, 2);
        counters.reset();
        assert_eq!(counters.total(), 0);
        assert_eq!(counters.cost(TrapReason::Irq).min, u32::MAX);
        let names: std::vec::Vec<_> = TrapReason::ALL.iter().map(|r| r.name()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }
}
