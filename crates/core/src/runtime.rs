//! Cells at run time: which cell each CPU runs, stop requests, the park loop where a CPU
//! without a vCPU sleeps, starting a cell's CPUs, and what happens when a cell breaks the
//! rules.

use crate::arch::Arch;
use crate::{Hypervisor, PowerState, MAX_CELLS, MAX_CPUS};
use cellvisor_abi::CellState;
use cellvisor_cell::CellId;
use cellvisor_paging::PhysAddr;
use core::sync::atomic::Ordering;

/// What a parked CPU enters: its cell, the entry point and the first argument register
/// (x0 on Arm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The cell the vCPU belongs to.
    pub cell: CellId,
    /// Where it starts.
    pub pc: u64,
    /// Its first argument register.
    pub arg: u64,
    /// What started it.
    pub by: StartedBy,
}

/// What started a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartedBy {
    /// Its cell's start, at the cell's reset address.
    CellStart,
    /// A power-on of its cell's ([`Hypervisor::power_on`]: PSCI CPU_ON, a start-up IPI).
    PowerOn,
}

/// Why [`Hypervisor::power_on`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerOnError {
    /// The caller is another cell than the root cell, whose start started all its CPUs (it
    /// powers none on, see [`cellvisor_abi::start::BOOT_CPU_ONLY`]), or the CPU is not the
    /// caller's.
    Denied,
    /// The entry point is not in executable RAM of the root cell's configuration (another
    /// cell: not in its RAM), or not aligned.
    InvalidAddress,
    /// The vCPU runs or is being started.
    Busy(crate::CpuOnError),
}

/// What to do with a cell that accessed something outside its configuration or otherwise
/// broke the rules ([`Hypervisor::violation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The root cell: it gets an abort (or the architecture's equivalent) and goes on; its
    /// kernel reports the fault.
    InjectAbort,
    /// Another cell: it is stopped (failed) and its CPUs park; the root cell may destroy it.
    StopCell,
}

impl<A: Arch> Hypervisor<A> {
    /// The cell `cpu` belongs to.
    #[inline]
    pub fn owner(&self, cpu: usize) -> CellId {
        CellId(u32::from(self.cpu(cpu).owner.load(Ordering::Acquire)))
    }

    /// The name of `cpu`'s cell, for reports.
    pub fn name_of(&self, cpu: usize) -> heapless::String<32> {
        self.cell(self.owner(cpu)).name()
    }

    /// Whether `cpu` belongs to the root cell and is one of its CPUs.
    pub fn root_owns(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.owner(cpu).0 == 0 && self.cells[0].cpus() & 1 << cpu != 0
    }

    /// Whether `cpu` waits in the park loop.
    pub fn is_parked(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.cpu(cpu).parked.load(Ordering::Acquire)
    }

    /// Takes the stop request of `cpu`, if any.
    #[inline]
    pub fn take_stop(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.cpu(cpu).stop.swap(false, Ordering::AcqRel)
    }

    /// Whether a stop request for `cpu` waits to be taken.
    #[inline]
    pub fn stop_requested(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.cpu(cpu).stop.load(Ordering::Acquire)
    }

    /// Asks `cpu` to stop running its vCPU and waits, asleep, until it is parked (it wakes
    /// this CPU then) or about 100 ms passed. Returns whether it is parked; a parked CPU
    /// then stays parked until [`start_cpu`](Self::start_cpu) or its root cell's CPU_ON: a
    /// start it was given and has not taken is revoked.
    pub fn stop_cpu(&self, cpu: usize) -> bool {
        if cpu >= MAX_CPUS {
            return false;
        }
        let state = self.cpu(cpu);
        // The request before the revocation, both before looking at `parked` (all SeqCst):
        // a parked CPU that took the start already clears `parked`, then sees the request
        // and stays (`take_entry`). Without that, a CPU woken by a start could still be
        // entering its cell while this CPU saw it parked and gave it to another cell.
        state.stop.store(true, Ordering::SeqCst);
        state.start.store(false, Ordering::SeqCst);
        if self.is_parked(cpu) {
            return true;
        }
        let me = 1u64 << self.arch.cpu_index().min(63);
        self.park_watchers.fetch_or(me, Ordering::SeqCst);
        core::sync::atomic::fence(Ordering::SeqCst);
        self.arch.kick(cpu);
        // `park` marks the CPU parked, then looks at the watchers (both SeqCst): it wakes
        // this CPU, or this CPU sees it parked before sleeping.
        let deadline = self.deadline_in(100);
        let parked = self
            .arch
            .wait_until(Some(deadline), &mut || self.is_parked(cpu));
        self.park_watchers.fetch_and(!me, Ordering::SeqCst);
        parked
    }

    /// Waits up to `millis` milliseconds for `cpu` to be off and parked, without asking it
    /// to stop: a CPU its cell switched off may still be on its way into the park loop.
    /// Returns whether it is.
    pub fn await_off_and_parked(&self, cpu: usize, millis: u64) -> bool {
        let done = || self.is_parked(cpu) && self.cpu(cpu).power.state() == PowerState::Off;
        if cpu >= MAX_CPUS || done() {
            return cpu < MAX_CPUS;
        }
        let me = 1u64 << self.arch.cpu_index().min(63);
        self.park_watchers.fetch_or(me, Ordering::SeqCst);
        core::sync::atomic::fence(Ordering::SeqCst);
        // As in `stop_cpu`: `park` marks the CPU parked, then wakes the watchers.
        let deadline = self.deadline_in(millis);
        let off = self.arch.wait_until(Some(deadline), &mut || done());
        self.park_watchers.fetch_and(!me, Ordering::SeqCst);
        off
    }

    /// Marks `cpu` to enter its cell at the next chance and wakes it. A stop request left
    /// from before (the CPU was parked already) is dropped.
    pub fn start_cpu(&self, cpu: usize) {
        if cpu < MAX_CPUS {
            self.cpu(cpu).stop.store(false, Ordering::SeqCst);
            self.cpu(cpu).start.store(true, Ordering::SeqCst);
            self.arch.kick(cpu);
        }
    }

    /// The park loop of `cpu` (the running CPU): it runs no vCPU and sleeps until its cell
    /// gives it one: the root cell through a CPU_ON, another cell through its start (both
    /// kick it). The vCPU it ran is gone ([`crate::arch::Vcpus::retire`]); the new one
    /// finds the CPU reset ([`crate::arch::Vcpus::activate`]). Returns what to enter;
    /// `None` only if the architecture's wait gave up (a host fake whose test ends).
    pub fn park(&self, cpu: usize) -> Option<Entry> {
        let state = self.cpus.get(cpu)?;
        self.arch.retire(cpu);
        if self.owner(cpu).0 != 0 {
            // A cell's vCPU is off once its CPU parks (the root cell's architecture code
            // switches its own off: an INIT, a CPU_OFF).
            state.power.stopped();
        }
        state.parked.store(true, Ordering::SeqCst);
        self.wake_park_watchers();
        let mut entry = None;
        self.arch.wait_until(None, &mut || {
            entry = self.take_entry(cpu);
            entry.is_some()
        });
        let entry = entry?;
        let tables = self.cell(entry.cell).tables();
        self.arch.activate(cpu, entry.cell, PhysAddr::new(tables));
        state.parked.store(false, Ordering::Release);
        Some(entry)
    }

    /// Wakes the CPUs waiting in [`stop_cpu`](Self::stop_cpu) for a CPU to park.
    fn wake_park_watchers(&self) {
        let mut watchers = self.park_watchers.load(Ordering::SeqCst);
        while watchers != 0 {
            self.arch.kick(watchers.trailing_zeros() as usize);
            watchers &= watchers - 1;
        }
    }

    /// What a parked `cpu` is to enter, if anything.
    fn take_entry(&self, cpu: usize) -> Option<Entry> {
        let cell = self.owner(cpu);
        let state = self.cpu(cpu);
        if cell.0 == 0 {
            let (pc, arg) = state.power.take_start()?;
            // A stop request left from the CPU's last cell does not stop the root cell's
            // vCPU (nobody stops a root-cell CPU).
            state.stop.store(false, Ordering::Release);
            return Some(Entry {
                cell,
                pc,
                arg,
                by: StartedBy::PowerOn,
            });
        }
        // The cell's start, or a power-on by one of its CPUs.
        let powered = if state.start.swap(false, Ordering::SeqCst) {
            None
        } else {
            Some(state.power.take_start()?)
        };
        // Leaving the park loop, then looking for a stop request (SeqCst, the reverse of
        // `stop_cpu`): a CPU that saw this one parked made its request first, so it is seen
        // here, and the CPU stays parked.
        state.parked.store(false, Ordering::SeqCst);
        let runtime = self.cell(cell);
        if state.stop.load(Ordering::SeqCst) || !runtime.may_start() {
            if powered.is_some() {
                state.power.stopped();
            }
            state.parked.store(true, Ordering::SeqCst);
            self.wake_park_watchers();
            return None;
        }
        Some(match powered {
            Some((pc, arg)) => Entry {
                cell,
                pc,
                arg,
                by: StartedBy::PowerOn,
            },
            None => {
                // The cell's start powers its vCPU on (a CPU of its own may then find it
                // on with PSCI AFFINITY_INFO, and may not power it on again).
                state.power.set_on();
                Entry {
                    cell,
                    pc: runtime.reset.load(Ordering::Acquire),
                    arg: runtime.start_arg.load(Ordering::Acquire),
                    by: StartedBy::CellStart,
                }
            }
        })
    }

    /// A CPU_ON (Arm PSCI) or start-up IPI (x86) from a CPU of `caller` for its CPU `cpu`:
    /// the vCPU starts at `entry` with `context` in its first argument register. For the
    /// root cell `entry` must lie in executable RAM (not I/O) of its configured memory,
    /// for another cell (one started on its boot CPU only, which powers the others on) in
    /// its RAM; and be a multiple of `align`. The CPU is woken; it enters from its park loop.
    pub fn power_on(
        &self,
        caller: CellId,
        cpu: usize,
        entry: u64,
        context: u64,
        align: u64,
    ) -> Result<(), PowerOnError> {
        let may = caller.0 == 0 || self.cell(caller).boot_cpu_only.load(Ordering::SeqCst);
        if !may || !self.cell_has_cpu(caller, cpu) {
            return Err(PowerOnError::Denied);
        }
        let startable = if caller.0 != 0 {
            if !self.cell(caller).may_start() {
                return Err(PowerOnError::Denied);
            }
            self.ram_address(caller, entry).is_some()
        } else {
            match self.root_executable.get() {
                Some(Some(ranges)) => ranges
                    .iter()
                    .any(|(start, end)| (*start..*end).contains(&entry)),
                _ => {
                    let system = self.system.get().ok_or(PowerOnError::Denied)?;
                    system
                        .root_cell()
                        .memory_regions()
                        .any(|region| executable_ram(&region).is_some_and(|r| r.contains(&entry)))
                }
            }
        };
        if !startable || !entry.is_multiple_of(align.max(1)) {
            return Err(PowerOnError::InvalidAddress);
        }
        self.cpu(cpu)
            .power
            .power_on(entry, context)
            .map_err(PowerOnError::Busy)?;
        self.arch.kick(cpu);
        Ok(())
    }

    /// An INIT (x86) from a CPU of `caller`, a cell other than the root cell, for `cpu`,
    /// another CPU of its own: the vCPU stops, and the CPU parks, off, until a CPU of the
    /// cell powers it on ([`power_on`](Self::power_on)). Returns whether it is parked
    /// (within about 100 ms, as [`stop_cpu`](Self::stop_cpu)).
    pub fn init_cpu(&self, caller: CellId, cpu: usize) -> Result<bool, PowerOnError> {
        if caller.0 == 0 || !self.cell_has_cpu(caller, cpu) {
            return Err(PowerOnError::Denied);
        }
        let runtime = self.cell(caller);
        let state = self.cpu(cpu);
        if self.is_parked(cpu) && state.power.state() == PowerState::Off {
            return Ok(true);
        }
        let parked = self.stop_cpu(cpu);
        // The INIT's stop request is done once the CPU parked: a start-up may start it
        // again. A cell being stopped meanwhile keeps it parked all the same: whoever
        // stops it sets `stopping` first, and neither `power_on` nor the park loop starts
        // a CPU of a stopping cell, even if this clears the stopper's request too.
        if parked && !runtime.stopping.load(Ordering::SeqCst) {
            state.stop.store(false, Ordering::SeqCst);
        }
        Ok(parked)
    }

    /// Gives `cpu` to `cell` (the CPU is parked).
    pub(crate) fn set_owner(&self, cpu: usize, cell: CellId) {
        if cpu < MAX_CPUS && (cell.0 as usize) < MAX_CELLS {
            self.cpu(cpu).owner.store(cell.0 as u16, Ordering::Release);
            for (id, runtime) in self.cells.iter().enumerate() {
                if id == cell.0 as usize {
                    runtime.cpus.fetch_or(1 << cpu, Ordering::AcqRel);
                } else {
                    runtime.cpus.fetch_and(!(1 << cpu), Ordering::AcqRel);
                }
            }
            self.cpu(cpu).counters.reset();
            if cell.0 == 0 {
                // Back in the root cell: off (whatever its cell left: on, or a start it did
                // not take), and the root cell's CPU_ON works again.
                self.cpu(cpu).power.clear();
            }
        }
    }

    /// Whether hypervisor CPU `cpu` is one of cell `cell`'s CPUs.
    pub fn cell_has_cpu(&self, cell: CellId, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.cell(cell).cpus() & 1 << cpu != 0
    }

    /// The policy for a cell on `cpu` that broke the rules: the root cell gets an abort,
    /// another cell is stopped ([`stop_cell_from_inside`](Self::stop_cell_from_inside) with
    /// [`CellState::Failed`]); the caller parks the CPU next.
    pub fn violation(&self, cpu: usize) -> Verdict {
        if self.owner(cpu).0 == 0 {
            Verdict::InjectAbort
        } else {
            self.stop_cell_from_inside(cpu, CellState::Failed);
            Verdict::StopCell
        }
    }

    /// On a CPU of a non-root cell: the cell stops itself (failure or its own power-off). Its
    /// other CPUs are told to stop; this CPU parks next.
    pub fn stop_cell_from_inside(&self, cpu: usize, state: CellState) {
        let cell = self.owner(cpu);
        if cell.0 == 0 {
            return;
        }
        let runtime = self.cell(cell);
        runtime.stopping.store(true, Ordering::SeqCst);
        runtime.state.store(state as u32, Ordering::Release);
        let cpus = runtime.cpus();
        for other in (0..MAX_CPUS).filter(|&c| c != cpu && cpus & 1 << c != 0) {
            self.stop_cpu(other);
        }
    }

    /// On a CPU of a non-root cell: the cell resets itself (Arm PSCI SYSTEM_RESET). Its
    /// CPUs stop, then it starts again as its start did: at the same address with the same
    /// argument, on its first CPU or on all. Its memory is kept (nothing is reloaded), as
    /// are its devices and interrupts. The caller parks this CPU next; it takes the new start
    /// from the park loop.
    ///
    /// The reset is a management operation: it waits for the management interface, so that
    /// the root cell's shutdown or destroy of the cell comes before or after it, never in
    /// between. A stop the root cell asked for meanwhile wins (the cell stays stopped).
    /// Returns what happened.
    pub fn restart_cell_from_inside(&self, cpu: usize) -> Restart {
        let cell = self.owner(cpu);
        if cell.0 == 0 || !self.cell_has_cpu(cell, cpu) {
            return Restart::NotACell;
        }
        let Some(management) = self.management.get() else {
            return Restart::NotACell;
        };
        let books = loop {
            if let Some(books) = management.try_lock() {
                break books;
            }
            // The root cell may be stopping this very CPU, holding the lock until it parks.
            if self.stop_requested(cpu) {
                return Restart::Stopped;
            }
            core::hint::spin_loop();
        };
        let runtime = self.cell(cell);
        if self.stop_requested(cpu) || !runtime.may_start() {
            return Restart::Stopped;
        }
        if runtime.no_restart_in_place.load(Ordering::Acquire) {
            drop(books);
            self.stop_cell_from_inside(cpu, CellState::Reset);
            return Restart::ForLoader;
        }
        // No CPU of the cell powers another on while they stop.
        runtime.stopping.store(true, Ordering::SeqCst);
        let cpus = runtime.cpus();
        // Every other CPU is asked, also after one did not stop: a failed cell keeps none
        // running.
        let mut stuck = None;
        for other in (0..MAX_CPUS).filter(|&c| c != cpu && cpus & 1 << c != 0) {
            if !self.stop_cpu(other) {
                stuck = stuck.or(Some(other));
            }
        }
        if let Some(other) = stuck {
            runtime
                .state
                .store(CellState::Failed as u32, Ordering::Release);
            return Restart::Stuck(other);
        }
        // This CPU is off until it takes the new start (or, if another CPU is the first,
        // until that one powers it on, which may come before this one parked).
        self.cpu(cpu).power.stopped();
        self.launch(cell, cpus);
        drop(books);
        Restart::Restarted
    }
}

/// What [`Hypervisor::restart_cell_from_inside`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// The cell starts again; the calling CPU parks and takes its start.
    Restarted,
    /// The root cell is stopping the cell: it stays stopped.
    Stopped,
    /// The cell's start said it cannot restart in place
    /// ([`cellvisor_abi::start::NO_RESTART_IN_PLACE`]): it stopped in state
    /// [`CellState::Reset`] instead, for its loader to boot it again.
    ForLoader,
    /// This CPU of the cell did not stop within about 100 ms: the cell failed and stays
    /// stopped.
    Stuck(usize),
    /// The CPU runs the root cell (or belongs to no cell): nothing was done.
    NotACell,
}

/// The root-cell addresses of `region` when it is RAM a CPU may start in: executable, not
/// I/O.
pub(crate) fn executable_ram(
    region: &cellvisor_config::MemoryRegion,
) -> Option<core::ops::Range<u64>> {
    use cellvisor_config::MemoryFlags;
    (region.flags.contains(MemoryFlags::EXECUTE) && !region.flags.contains(MemoryFlags::IO))
        .then(|| region.virt_start..region.virt_start.saturating_add(region.size))
}
