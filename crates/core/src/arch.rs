//! What an architecture provides to the core: small traits, each a handful of methods, in the
//! spirit of Bao's architecture hooks and Hafnium's fake architecture. [`Arch`] gathers them.
//!
//! | trait | what | Arm (`cellvisor-aarch64`) | x86 |
//! |---|---|---|---|
//! | [`Cpus`] | CPU index, counter, sleep and wake | TPIDR_EL2, CNTPCT_EL0, WFI + an SGI, CNTHP | a per-CPU GS field, TSC, HLT + an IPI |
//! | [`Memory`] | volatile copies of physical memory, cache cleaning | identity map, `dc civac` | identity map, nothing (coherent) |
//! | [`Translation`] | second-stage format, table memory, TLB flushes | VMSA stage 2, `tlbi` | EPT or NPT, INVEPT / ASID flush |
//! | [`Vcpus`] | retire and activate a vCPU on a CPU | GIC CPU interface, HCR/VTTBR, scrub | VMCS/VMCB, APIC |
//! | [`InterruptChip`] | move interrupt lines between cells | GIC distributor | IOAPIC, interrupt remapping |
//! | [`IoPorts`] | move I/O ports between cells | none (a configuration has none) | the I/O permission maps |
//! | [`PciFunctions`] | move PCI functions between cells | none yet (refused) | `cellvisor-pci` behind 0xCF8 and ECAM |
//! | [`Output`] | the hypervisor console | PL011, Cadence UART | 8250 |
//!
//! Every method is called with the core's own locks as documented on it; none may call back
//! into the core.

use cellvisor_abi::comm;
use cellvisor_cell::CellId;
use cellvisor_config::PciAddress;
use cellvisor_paging::{Format, GuestPhysAddr, Mapping, PhysAddr, PhysMemory};

/// The CPUs: who runs, what time it is, sleeping and waking.
pub trait Cpus {
    /// The hypervisor index of the running CPU (0 is the boot CPU), below
    /// [`MAX_CPUS`](crate::MAX_CPUS).
    fn cpu_index(&self) -> usize;

    /// A counter that runs at [`frequency`](Self::frequency) on every CPU alike (Arm: the
    /// system counter; x86: an invariant TSC).
    fn now(&self) -> u64;

    /// Ticks of [`now`](Self::now) per second (at least 1).
    fn frequency(&self) -> u64;

    /// Wakes CPU `cpu` from [`wait_until`](Self::wait_until), or makes its next wait look at
    /// its condition at once if it is not waiting.
    fn kick(&self, cpu: usize);

    /// Sleeps until `done` returns true or [`now`](Self::now) passes `deadline`; returns the
    /// last result of `done`. `done` is called before each sleep, so a [`kick`](Self::kick)
    /// after the call started is never lost. Without a deadline it returns only once `done`
    /// holds (a host fake may give up when its test ends).
    fn wait_until(&self, deadline: Option<u64>, done: &mut dyn FnMut() -> bool) -> bool;
}

/// Physical memory that cells or root userspace can write: reached only through volatile
/// copies, never through a Rust reference (the other side may change it at any time).
///
/// Addresses are physical; the caller has checked that each range is memory the hypervisor
/// may touch (a cell's loadable RAM, the management data window, a communication page).
pub trait Memory {
    /// Copies `out.len()` bytes from `from`.
    fn read(&self, from: PhysAddr, out: &mut [u8]);

    /// Copies `bytes` to `to`.
    fn write(&self, to: PhysAddr, bytes: &[u8]);

    /// Sets `len` bytes at `to` to `byte`.
    fn fill(&self, to: PhysAddr, byte: u8, len: u64);

    /// Copies `len` bytes from `from` to `to` (the ranges do not overlap).
    fn copy(&self, to: PhysAddr, from: PhysAddr, len: u64);

    /// Reads the aligned 32-bit word at `at`.
    fn read_u32(&self, at: PhysAddr) -> u32;

    /// Writes the aligned 32-bit word at `at`, visible to other CPUs when it returns.
    fn write_u32(&self, at: PhysAddr, value: u32);

    /// Makes `[at, at + len)` visible to a CPU that reads memory with its caches off (a cell
    /// starting with its MMU off): clean and invalidate to the point of coherency.
    fn clean(&self, at: PhysAddr, len: u64);
}

/// Copies `len` bytes from `from` to `to`, 8 bytes at a time where both are 8-byte aligned,
/// each access volatile: for an architecture's [`Memory`] over an identity map, where one side
/// is memory a cell or root userspace can write at any time (so no Rust reference may point
/// into it).
///
/// # Safety
///
/// Both ranges are mapped for `len` bytes and do not overlap.
pub unsafe fn volatile_copy(to: *mut u8, from: *const u8, len: usize) {
    let mut done = 0;
    if (to as usize | from as usize).is_multiple_of(8) {
        while done + 8 <= len {
            // SAFETY: the caller guarantees both ranges are mapped for `len` bytes; aligned
            // 8-byte accesses inside them.
            unsafe {
                to.add(done)
                    .cast::<u64>()
                    .write_volatile(from.add(done).cast::<u64>().read_volatile())
            };
            done += 8;
        }
    }
    while done < len {
        // SAFETY: as above, single bytes.
        unsafe { to.add(done).write_volatile(from.add(done).read_volatile()) };
        done += 1;
    }
}

/// Second-stage translation: the format of a cell's tables and their TLB maintenance.
pub trait Translation {
    /// The table format every cell uses (Arm stage 2, EPT or NPT).
    type Format: Format<Input = GuestPhysAddr> + Copy;

    /// How the core reads and writes table descriptors.
    type Tables: PhysMemory;

    /// An accessor for the table frames of the pool the core was given.
    fn table_memory(&self) -> Self::Tables;

    /// The root cell's tables changed while its CPUs run them: drop their cached
    /// translations on every CPU (called on a root-cell CPU, under the core's table lock).
    fn flush_root(&self);

    /// A cell's tables were freed; the next cell in slot `cell` reuses its translation tag
    /// (VMID, VPID, ASID): drop every cached translation of it on every CPU.
    fn flush_cell(&self, cell: CellId);
}

/// Which of a cell's CPUs its start starts by default ([`Vcpus::cell_start`]); a start
/// with [`cellvisor_abi::start::BOOT_CPU_ONLY`] is always [`CellStart::FirstCpu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellStart {
    /// Every CPU, at the cell's reset address; a cell cannot power its own CPUs on (the
    /// inmates of the Arm boards).
    AllCpus,
    /// The first (lowest) CPU at the reset address; the others wait, off, until a CPU of
    /// the cell powers them on ([`Hypervisor::power_on`](crate::Hypervisor::power_on)), as
    /// a PC's application processors wait for INIT and a start-up IPI.
    FirstCpu,
}

/// Running vCPUs on a CPU.
pub trait Vcpus {
    /// Which of a cell's CPUs its start starts.
    fn cell_start(&self) -> CellStart;

    /// On CPU `cpu` (the running one): the vCPU it ran is gone, as after a power-off. Its
    /// pending virtual interrupts are dropped and its timers stopped (they would keep their
    /// interrupt lines asserted). Called before the CPU parks.
    fn retire(&self, cpu: usize);

    /// On CPU `cpu` (the running one), before it enters a fresh vCPU of `cell` whose
    /// second-stage tables start at `tables`: activate the tables, reset the CPU's private
    /// interrupts and leave no register state of the previous vCPU behind.
    fn activate(&self, cpu: usize, cell: CellId, tables: PhysAddr);
}

/// The interrupt controller, for moving lines between cells.
pub trait InterruptChip {
    /// Moves shared interrupt lines `irqs` from cell `from` to cell `to`: disabled and
    /// quiesced in the old owner, routed to the new one, their state as the new owner
    /// expects it. On error nothing changed; the message says why.
    fn move_irqs(&self, from: CellId, to: CellId, irqs: &[u32]) -> Result<(), &'static str>;

    /// A device window every cell's tables map (GICv2: the virtual CPU interface at the CPU
    /// interface's address), if the controller has one.
    fn cell_window(&self) -> Option<Mapping<GuestPhysAddr>>;

    /// What a cell with CPUs `cpus` finds in its communication region about the machine:
    /// interrupt controller, timer and its console `(kind, address)`.
    fn platform(&self, cpus: u64, console: (u32, u64)) -> comm::Platform;
}

/// I/O ports (x86).
pub trait IoPorts {
    /// Moves ports `[base, base + count)` from cell `from` to cell `to`: the new owner's
    /// accesses reach them, the old owner's trap. On error nothing changed.
    fn move_ports(
        &self,
        from: CellId,
        to: CellId,
        base: u32,
        count: u32,
    ) -> Result<(), &'static str>;
}

/// PCI functions, whose configuration space the hypervisor emulates.
pub trait PciFunctions {
    /// Moves PCI function `device` from cell `from` to cell `to`: the new owner's
    /// configuration accesses reach it, the old owner finds no function there. On error
    /// nothing changed; the message says why.
    fn move_pci(&self, from: CellId, to: CellId, device: PciAddress) -> Result<(), &'static str>;
}

/// The hypervisor console.
pub trait Output {
    /// Prints to the console. The architecture copies what it prints into the core's ring
    /// ([`crate::Hypervisor::ring`]) unless the running CPU's ring flag is off
    /// ([`crate::Hypervisor::ring_off`]).
    fn print(&self, args: core::fmt::Arguments<'_>);

    /// Runs `f` under the console lock, so that what it writes to the ring does not
    /// interleave with another CPU's output.
    fn exclusive(&self, f: &mut dyn FnMut());
}

/// Everything the core needs from an architecture.
pub trait Arch:
    Cpus + Memory + Translation + Vcpus + InterruptChip + IoPorts + PciFunctions + Output + Sync
{
}

impl<
        T: Cpus
            + Memory
            + Translation
            + Vcpus
            + InterruptChip
            + IoPorts
            + PciFunctions
            + Output
            + Sync,
    > Arch for T
{
}
