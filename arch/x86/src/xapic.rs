//! A CPU's local APIC as the root cell sees it in xAPIC mode: its register page traps (the
//! nested page tables leave it out) and each access is decided by `cellvisor-apic`'s policy.
//! Reads and the cell's own writes go to the physical registers; an interrupt command is
//! routed to the cell's CPUs only and sent by the hypervisor; what the policy refuses is not
//! done and is returned for a report.

use cellvisor_apic::lapic::{self, LapicViolation, Read, Register, Write, Writer};
use cellvisor_apic::{ApicMode, IpiKind, Route, Topology};
use cellvisor_config::CpuSet;

/// The local APIC's register page (the architectural default, which the MADT of every
/// firmware this runs on reports).
pub const BASE: u64 = 0xfee0_0000;
/// ICR low and high.
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
/// ICR: delivery status (send pending).
const ICR_PENDING: u32 = 1 << 12;
/// ICR delivery mode NMI.
pub const ICR_NMI: u32 = 0b100 << 8;

/// Reads a physical register.
fn read_physical(offset: u64) -> u32 {
    // SAFETY: the local APIC's page is mapped uncached in the hypervisor's boot map; a read
    // of a register has no side effect the policy did not allow.
    unsafe { ((BASE + offset) as *const u32).read_volatile() }
}

/// Writes a physical register.
fn write_physical(offset: u64, value: u32) {
    // SAFETY: as for reads; the policy decided that this write is the cell's own.
    unsafe { ((BASE + offset) as *mut u32).write_volatile(value) }
}

/// One CPU's local APIC in a cell.
#[derive(Debug)]
pub struct LocalApic {
    /// This CPU's index.
    pub cpu: u32,
    /// The cell's CPUs.
    pub cell_cpus: CpuSet,
    /// Whether the cell is the root cell.
    pub root: bool,
    /// The ICR high half the cell last wrote.
    icr_high: u32,
}

/// What a write asked for that the hypervisor does not do itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Nothing: the write was done, kept or ignored.
    None,
    /// Raise #GP in the vCPU.
    Fault,
    /// INIT or a start-up IPI for these CPUs of the cell (CPU hotplug, served by the caller).
    Power(IpiKind, CpuSet),
    /// An NMI for these CPUs of the cell: the caller marks it as the cell's and sends it
    /// (NMIs between the hypervisor's CPUs are kicks, see `wait`).
    Nmi(CpuSet),
}

impl LocalApic {
    /// The local APIC of `cpu` in the cell owning `cell_cpus`.
    pub fn new(cpu: u32, cell_cpus: CpuSet, root: bool) -> Self {
        Self {
            cpu,
            cell_cpus,
            root,
            icr_high: 0,
        }
    }

    /// A 32-bit read at `offset` in the page.
    pub fn read(&self, offset: u64) -> u32 {
        let Some(register) = Register::from_xapic_offset(offset as u32) else {
            return 0;
        };
        match lapic::read(register, ApicMode::XApic) {
            Read::Pass => read_physical(offset),
            Read::IcrHigh => self.icr_high,
            Read::Fault => 0,
        }
    }

    /// A 32-bit write of `value` at `offset` in the page; `topology` is the machine's, with the
    /// logical IDs every CPU's software set (shared by the cell's CPUs, under a lock).
    pub fn write(
        &mut self,
        offset: u64,
        value: u32,
        topology: &mut Topology,
    ) -> Result<Request, LapicViolation> {
        let Some(register) = Register::from_xapic_offset(offset as u32) else {
            return Ok(Request::None);
        };
        let writer = Writer {
            cpu: self.cpu,
            cell_cpus: &self.cell_cpus,
            root: self.root,
        };
        let decision = lapic::write(
            register,
            ApicMode::XApic,
            u64::from(value),
            self.icr_high,
            writer,
            topology,
        )?;
        Ok(match decision {
            Write::Pass | Write::PassTracked => {
                write_physical(offset, value);
                Request::None
            }
            Write::KeepIcrHigh(high) => {
                self.icr_high = high;
                Request::None
            }
            Write::Ipi(Route::Ignore(_)) | Write::Ignore => Request::None,
            Write::Fault => Request::Fault,
            Write::Ipi(Route::Send { kind, cpus }) => match kind {
                IpiKind::Fixed(vector) => {
                    send(topology, &cpus, u32::from(vector));
                    Request::None
                }
                IpiKind::Nmi => Request::Nmi(cpus),
                IpiKind::Init | IpiKind::Startup(_) => Request::Power(kind, cpus),
            },
        })
    }
}

/// Sends `low` (fixed or NMI, physical destination, edge) to each of `cpus`.
fn send(topology: &Topology, cpus: &CpuSet, low: u32) {
    for cpu in cpus.iter() {
        if let Some(apic_id) = topology.apic_id(cpu) {
            send_physical(apic_id, low);
        }
    }
}

/// Sends `low` to the CPU with APIC ID `apic_id`: an NMI with [`ICR_NMI`], a fixed interrupt
/// with its vector.
pub fn send_physical(apic_id: u32, low: u32) {
    while read_physical(ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
    write_physical(ICR_HIGH, apic_id << 24);
    write_physical(ICR_LOW, low);
}

/// What INIT does to this CPU's local APIC (Intel SDM Vol. 3A §11.4.7.3, "Local APIC State
/// After an INIT Reset"), done by the hypervisor because the INIT a cell sends is not sent
/// on the wire: the timer stopped, every LVT entry masked, TPR 0, the interrupts the cell left
/// pending taken and ended here, the logical destination cleared, the APIC software-disabled.
pub fn init_reset() {
    const TPR: u64 = 0x80;
    const EOI: u64 = 0xb0;
    const LDR: u64 = 0xd0;
    const DFR: u64 = 0xe0;
    const SVR: u64 = 0xf0;
    const ISR: u64 = 0x100;
    const IRR: u64 = 0x200;
    const ESR: u64 = 0x280;
    const LVTS: [u64; 6] = [0x320, 0x330, 0x340, 0x350, 0x360, 0x370];
    const INITIAL_COUNT: u64 = 0x380;
    const DIVIDE: u64 = 0x3e0;
    const MASKED: u32 = 1 << 16;
    write_physical(INITIAL_COUNT, 0);
    for lvt in LVTS {
        write_physical(lvt, MASKED);
    }
    write_physical(TPR, 0);
    // Pending interrupts are delivered only while the APIC is enabled.
    write_physical(SVR, read_physical(SVR) | 0x100);
    let any = |base: u64| (0..8).any(|i| read_physical(base + 0x10 * i) != 0);
    for _ in 0..256 {
        let (in_service, requested) = (any(ISR), any(IRR));
        if !in_service && !requested {
            break;
        }
        if in_service {
            write_physical(EOI, 0);
        }
        crate::wait::drain();
    }
    write_physical(DIVIDE, 0);
    write_physical(LDR, 0);
    write_physical(DFR, u32::MAX);
    write_physical(ESR, 0);
    write_physical(SVR, 0xff);
}
