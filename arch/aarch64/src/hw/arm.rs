//! The AArch64 implementation of `cellvisor-core`'s architecture traits for [`Aarch64`]
//! (defined, with the one hypervisor value `HV`, in the parent module, so that the modules
//! these implementations use can reach `HV` without a circle).

use super::{cache, cell, gic, scrub, wait, Aarch64};
use aarch64_cpu::registers::{
    Readable, Writeable, CNTFRQ_EL0, CNTPCT_EL0, CNTP_CTL_EL0, CNTV_CTL_EL0,
};
use cellvisor_abi::comm;
use cellvisor_cell::CellId;
use cellvisor_core::arch::{
    Cpus, InterruptChip, IoPorts, Memory, Output, PciFunctions, Translation, Vcpus,
};
use cellvisor_paging::{
    Access, Attributes, GuestPhysAddr, LinearMemory, Mapping, MemoryType, PhysAddr, Stage2,
};

impl Cpus for Aarch64 {
    fn cpu_index(&self) -> usize {
        super::cpu_index()
    }

    fn now(&self) -> u64 {
        CNTPCT_EL0.get()
    }

    fn frequency(&self) -> u64 {
        CNTFRQ_EL0.get().max(1)
    }

    fn kick(&self, cpu: usize) {
        wait::kick(cpu);
    }

    fn wait_until(&self, deadline: Option<u64>, done: &mut dyn FnMut() -> bool) -> bool {
        wait::until(deadline, done)
    }
}

/// [`cellvisor_core::arch::volatile_copy`] for ranges the core checked, all mapped at EL2.
fn volatile_copy(to: *mut u8, from: *const u8, len: usize) {
    // SAFETY: the core passes ranges it checked (data window, cell RAM, communication
    // pages), all identity mapped at EL2, and never overlapping ones.
    unsafe { cellvisor_core::arch::volatile_copy(to, from, len) }
}

impl Memory for Aarch64 {
    fn read(&self, from: PhysAddr, out: &mut [u8]) {
        // The core passes ranges it checked (data window, cell RAM, communication pages),
        // all mapped at EL2.
        volatile_copy(out.as_mut_ptr(), from.as_u64() as *const u8, out.len());
    }

    fn write(&self, to: PhysAddr, bytes: &[u8]) {
        volatile_copy(to.as_u64() as *mut u8, bytes.as_ptr(), bytes.len());
    }

    fn fill(&self, to: PhysAddr, byte: u8, len: u64) {
        // SAFETY: a checked range mapped at EL2 (see `read`), no reference into it.
        unsafe { core::ptr::write_bytes(to.as_u64() as *mut u8, byte, len as usize) };
    }

    fn copy(&self, to: PhysAddr, from: PhysAddr, len: u64) {
        volatile_copy(
            to.as_u64() as *mut u8,
            from.as_u64() as *const u8,
            len as usize,
        );
    }

    fn read_u32(&self, at: PhysAddr) -> u32 {
        // SAFETY: an aligned word of a communication page, mapped at EL2.
        unsafe { (at.as_u64() as *const u32).read_volatile() }
    }

    fn write_u32(&self, at: PhysAddr, value: u32) {
        // SAFETY: as in `read_u32`.
        unsafe { (at.as_u64() as *mut u32).write_volatile(value) };
        aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
    }

    fn clean(&self, at: PhysAddr, len: u64) {
        cache::clean_invalidate(at.as_u64() as usize, len as usize);
    }
}

impl Translation for Aarch64 {
    type Format = Stage2;
    type Tables = LinearMemory;

    fn table_memory(&self) -> LinearMemory {
        // SAFETY: EL2 runs identity mapped (offset 0) and the table pool's frames are
        // hypervisor memory the EL2 map covers read-write, used for nothing else.
        unsafe { LinearMemory::new(0) }
    }

    fn flush_root(&self) {
        // Run on a root-cell CPU, whose VTTBR_EL2 holds the root cell's VMID: all of the
        // VMID's entries, inner shareable.
        // SAFETY: TLB maintenance drops cached translations only.
        unsafe {
            core::arch::asm!(
                "dsb ishst",
                "tlbi vmalls12e1is",
                "dsb ish",
                "isb",
                options(nostack)
            )
        };
    }

    fn flush_cell(&self, _cell: CellId) {
        // The VMID is reused by the next cell in this slot: drop every EL1&0 translation.
        // SAFETY: TLB maintenance drops cached translations only.
        unsafe {
            core::arch::asm!(
                "dsb ishst",
                "tlbi alle1is",
                "dsb ish",
                "isb",
                options(nostack)
            )
        };
    }
}

impl Vcpus for Aarch64 {
    fn cell_start(&self) -> cellvisor_core::arch::CellStart {
        // The inmates start on every CPU of their cell (PSCI CPU_ON for cells comes with
        // Linux in a cell).
        cellvisor_core::arch::CellStart::AllCpus
    }

    fn retire(&self, cpu: usize) {
        gic::reset_cpu_interface(cpu);
        // The EL1 physical and virtual timers of the vCPU that left would keep their
        // interrupt lines asserted.
        CNTV_CTL_EL0.set(0);
        CNTP_CTL_EL0.set(0);
    }

    fn activate(&self, cpu: usize, cell: CellId, tables: PhysAddr) {
        // The new vCPU starts as after reset: no private interrupt of the previous one
        // (maybe of another cell) enabled, pending or active.
        gic::reset_private(cpu);
        cell::prepare_cpu_for(cell, tables);
        // Nor any of its EL1, FP/SIMD or key registers (with FP/SIMD untrapped by the line
        // above).
        scrub::el1_state();
    }
}

impl InterruptChip for Aarch64 {
    fn move_irqs(&self, from: CellId, to: CellId, irqs: &[u32]) -> Result<(), &'static str> {
        gic::transfer(from, to, irqs)
    }

    fn cell_window(&self) -> Option<Mapping<GuestPhysAddr>> {
        // GICv2: the cell's CPU interface is the virtual one, at the GICC address.
        cell::gicv().map(|(gicc, gicv, size)| Mapping {
            input: GuestPhysAddr::new(gicc),
            output: PhysAddr::new(gicv),
            size,
            attributes: Attributes::new(Access::RW, MemoryType::Device),
        })
    }

    fn platform(&self, cpus: u64, console: (u32, u64)) -> comm::Platform {
        let first = (0..64).find(|c| cpus & 1 << c != 0).unwrap_or(0);
        let (gic_version, gicr_or_gicc) = if gic::is_v3() {
            (comm::GIC_V3, gic::redistributor_of(first).unwrap_or(0))
        } else {
            (comm::GIC_V2, gic::cpu_interface().unwrap_or(0))
        };
        comm::Platform {
            gic_version: gic_version.into(),
            uart_kind: console.0.into(),
            gicd: gic::distributor_base().into(),
            gicr_or_gicc: gicr_or_gicc.into(),
            uart: console.1.into(),
            timer_frequency: self.frequency().into(),
            cpus: cpus.count_ones().into(),
            reserved: 0.into(),
        }
    }
}

impl IoPorts for Aarch64 {
    fn move_ports(
        &self,
        _from: CellId,
        _to: CellId,
        _base: u32,
        _count: u32,
    ) -> Result<(), &'static str> {
        // The configuration check refuses I/O ports on Arm: never called.
        Err("I/O ports exist only on x86")
    }
}

impl PciFunctions for Aarch64 {
    fn move_pci(
        &self,
        _from: CellId,
        _to: CellId,
        _device: cellvisor_config::PciAddress,
    ) -> Result<(), &'static str> {
        // The Arm boards' configuration space (an ECAM window) is the root cell's alone: it
        // is not trapped, so a function cannot be taken from it.
        Err("PCI functions are given to cells only on x86 (Arm's ECAM window is not trapped)")
    }
}

impl Output for Aarch64 {
    fn print(&self, args: core::fmt::Arguments<'_>) {
        super::print(args);
    }

    fn exclusive(&self, f: &mut dyn FnMut()) {
        let _guard = cellvisor_console::console().lock();
        f();
    }
}
