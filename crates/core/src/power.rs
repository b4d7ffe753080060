//! vCPU power states: what CPU_ON, CPU_OFF and AFFINITY_INFO (PSCI on Arm, INIT/SIPI on
//! x86) act on, lock free, from any CPU. The architecture maps [`CpuOnError`] to its own
//! return codes.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// The power state of one vCPU, as AFFINITY_INFO reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PowerState {
    /// Running.
    On,
    /// Off: the physical CPU waits in the hypervisor.
    Off,
    /// CPU_ON accepted, the CPU has not entered the cell yet.
    OnPending,
}

const OFF: u8 = 0;
/// CPU_ON is writing the entry point.
const CLAIMED: u8 = 1;
const PENDING: u8 = 2;
const ON: u8 = 3;
/// Off and lent to a cell being created: CPU_ON of the root cell is refused.
const LENT: u8 = 4;

/// A vCPU's power state and the entry point a CPU_ON gave it.
#[derive(Debug)]
pub struct VcpuPower {
    state: AtomicU8,
    entry: AtomicU64,
    context: AtomicU64,
}

/// Why CPU_ON refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CpuOnError {
    /// The vCPU runs (ALREADY_ON).
    AlreadyOn,
    /// A CPU_ON for it is under way (ON_PENDING).
    OnPending,
    /// The CPU is being given to another cell (DENIED).
    Lent,
}

impl VcpuPower {
    /// A vCPU that is off.
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(OFF),
            entry: AtomicU64::new(0),
            context: AtomicU64::new(0),
        }
    }

    /// The state AFFINITY_INFO reports.
    pub fn state(&self) -> PowerState {
        match self.state.load(Ordering::Acquire) {
            ON => PowerState::On,
            OFF | LENT => PowerState::Off,
            _ => PowerState::OnPending,
        }
    }

    /// CPU_ON: records the entry point and context of an off vCPU and makes it pending.
    /// The caller then wakes the physical CPU.
    pub fn power_on(&self, entry: u64, context: u64) -> Result<(), CpuOnError> {
        match self
            .state
            .compare_exchange(OFF, CLAIMED, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {
                self.entry.store(entry, Ordering::Relaxed);
                self.context.store(context, Ordering::Relaxed);
                self.state.store(PENDING, Ordering::Release);
                Ok(())
            }
            Err(ON) => Err(CpuOnError::AlreadyOn),
            Err(LENT) => Err(CpuOnError::Lent),
            Err(_) => Err(CpuOnError::OnPending),
        }
    }

    /// On the vCPU's own physical CPU: takes a pending start, marking the vCPU on; returns
    /// its entry point and context.
    pub fn take_start(&self) -> Option<(u64, u64)> {
        if self.state.load(Ordering::Acquire) != PENDING {
            return None;
        }
        let start = (
            self.entry.load(Ordering::Relaxed),
            self.context.load(Ordering::Relaxed),
        );
        self.state
            .compare_exchange(PENDING, ON, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| start)
    }

    /// Marks the vCPU on without a CPU_ON (the boot CPU of a cell).
    pub fn set_on(&self) {
        self.state.store(ON, Ordering::Release);
    }

    /// CPU_OFF, on the vCPU's own physical CPU.
    pub fn power_off(&self) {
        self.state.store(OFF, Ordering::Release);
    }

    /// Off, whatever the state: the parked CPU changes cells, and nothing its old cell
    /// asked for stays (a lend ends, a start not taken is dropped).
    pub fn clear(&self) {
        self.state.store(OFF, Ordering::Release);
    }

    /// The vCPU stopped (its CPU parks): a running vCPU is off; a pending start stays for
    /// the CPU to take, and a lent one stays lent.
    pub fn stopped(&self) {
        let _ = self
            .state
            .compare_exchange(ON, OFF, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Takes an off vCPU away from its cell's CPU_ON (the CPU is being given to a new
    /// cell); fails unless it is off. From now on CPU_ON answers [`CpuOnError::Lent`], so
    /// a CPU_ON racing with the hand-over cannot start the CPU in its old cell.
    pub fn lend(&self) -> bool {
        self.state
            .compare_exchange(OFF, LENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Ends a [`lend`](Self::lend): the vCPU is off and CPU_ON works again (the hand-over
    /// failed, or the CPU came back).
    pub fn reclaim(&self) {
        let _ = self
            .state
            .compare_exchange(LENT, OFF, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl Default for VcpuPower {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_on_off_state_machine() {
        let vcpu = VcpuPower::new();
        assert_eq!(vcpu.state(), PowerState::Off);
        assert_eq!(vcpu.take_start(), None);
        vcpu.power_on(0x4000_1000, 7).unwrap();
        assert_eq!(vcpu.state(), PowerState::OnPending);
        assert_eq!(vcpu.power_on(0, 0), Err(CpuOnError::OnPending));
        assert_eq!(vcpu.take_start(), Some((0x4000_1000, 7)));
        assert_eq!(vcpu.state(), PowerState::On);
        assert_eq!(vcpu.power_on(0, 0), Err(CpuOnError::AlreadyOn));
        vcpu.power_off();
        assert_eq!(vcpu.state(), PowerState::Off);
        vcpu.power_on(0x5000, 8).unwrap();
        assert_eq!(vcpu.take_start(), Some((0x5000, 8)));
        // Lent: CPU_ON refused until reclaimed; only an off vCPU can be lent.
        assert!(!vcpu.lend(), "an on vCPU is not lent");
        vcpu.power_off();
        assert!(vcpu.lend());
        assert_eq!(vcpu.state(), PowerState::Off);
        assert_eq!(vcpu.power_on(0, 0), Err(CpuOnError::Lent));
        assert!(!vcpu.lend(), "lent once");
        vcpu.reclaim();
        vcpu.power_on(0x6000, 9).unwrap();
        vcpu.reclaim();
        assert_eq!(
            vcpu.state(),
            PowerState::OnPending,
            "reclaim ends a lend only"
        );
        // A stopped vCPU: on becomes off; pending and lent stay.
        vcpu.stopped();
        assert_eq!(vcpu.state(), PowerState::OnPending);
        vcpu.take_start().unwrap();
        vcpu.stopped();
        assert_eq!(vcpu.state(), PowerState::Off);
        assert!(vcpu.lend());
        vcpu.stopped();
        assert_eq!(vcpu.power_on(0, 0), Err(CpuOnError::Lent));
    }

    #[test]
    fn concurrent_cpu_on_admits_exactly_one() {
        use std::sync::Arc;
        let vcpu = Arc::new(VcpuPower::new());
        let handles: std::vec::Vec<_> = (0..8)
            .map(|i| {
                let vcpu = Arc::clone(&vcpu);
                std::thread::spawn(move || vcpu.power_on(i, i).is_ok())
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(winners, 1);
        let (entry, context) = vcpu.take_start().unwrap();
        assert_eq!(
            entry, context,
            "entry and context come from the same CPU_ON"
        );
    }
}
