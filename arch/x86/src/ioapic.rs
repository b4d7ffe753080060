//! The IOAPIC as the cells see it: its register page traps (the nested page tables leave it
//! out), and each access is decided by `cellvisor-apic`'s [`IoApic`], which keeps who owns
//! which pin, each CPU's index register, and which destinations a cell may name. The
//! hypervisor reaches the hardware through its own index and window ([`Physical`]), under
//! one lock.

use cellvisor_apic::ioapic::{Access, Accessor, IoApicViolation, Outcome};
use cellvisor_apic::{IoApic, IoApicRegisters, Topology};
use cellvisor_sync::Mutex;

/// The IOAPIC's register page (the q35 chipset's, as the MADT reports it).
pub const BASE: u64 = 0xfec0_0000;
/// The index register, the data window and the EOI register (82093AA datasheet, §3.0; EOI
/// from version 0x20).
const INDEX: u64 = 0x00;
const WINDOW: u64 = 0x10;
const EOI: u64 = 0x40;

/// The IOAPIC's registers, reached by the hypervisor (the caller holds [`IOAPIC`]'s lock).
#[derive(Debug)]
pub struct Physical;

impl Physical {
    fn write32(offset: u64, value: u32) {
        // SAFETY: the IOAPIC's page is mapped uncached in the hypervisor's boot map; only
        // the hypervisor writes the physical registers, under IOAPIC's lock.
        unsafe { ((BASE + offset) as *mut u32).write_volatile(value) }
    }

    fn read32(offset: u64) -> u32 {
        // SAFETY: as for writes; a window read has no side effect.
        unsafe { ((BASE + offset) as *const u32).read_volatile() }
    }
}

impl IoApicRegisters for Physical {
    fn read(&mut self, index: u8) -> u32 {
        Self::write32(INDEX, u32::from(index));
        Self::read32(WINDOW)
    }

    fn write(&mut self, index: u8, value: u32) {
        Self::write32(INDEX, u32::from(index));
        Self::write32(WINDOW, value);
    }

    fn eoi(&mut self, vector: u8) {
        Self::write32(EOI, u32::from(vector));
    }
}

/// The IOAPIC's books, once the boot CPU probed it.
pub static IOAPIC: Mutex<Option<IoApic>> = Mutex::new(None);

/// Reads what the IOAPIC has (its pins, every pin the root cell's); the boot CPU, before
/// any cell runs.
pub fn probe() {
    *IOAPIC.lock() = Some(IoApic::probe(&mut Physical));
}

/// One trapped access by `by`.
pub fn access(
    topology: &Topology,
    by: Accessor<'_>,
    access: Access,
) -> Result<Outcome, IoApicViolation> {
    let mut ioapic = IOAPIC.lock();
    match ioapic.as_mut() {
        Some(ioapic) => ioapic.access(&mut Physical, topology, by, access),
        // Not probed: an empty page.
        None => Ok(Outcome::Read(0)),
    }
}
