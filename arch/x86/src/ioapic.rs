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

/// Moves interrupt lines (global system interrupts, the IOAPIC's pins from 0) between the
/// root cell and another cell: to a cell they are masked and the root cell's entries kept;
/// back to the root cell, every pin of the cell returns with the entry the root cell had.
pub fn transfer(
    from: cellvisor_cell::CellId,
    to: cellvisor_cell::CellId,
    irqs: &[u32],
) -> Result<(), &'static str> {
    use cellvisor_cell::CellId;
    let mut guard = IOAPIC.lock();
    let ioapic = guard.as_mut().ok_or("no IOAPIC")?;
    let mut pins = heapless::Vec::<u8, 256>::new();
    for &irq in irqs {
        let pin = u8::try_from(irq)
            .ok()
            .filter(|&pin| pin < ioapic.pins())
            .ok_or("an interrupt line the IOAPIC does not have")?;
        pins.push(pin).map_err(|_| "too many interrupt lines")?;
    }
    match (from, to) {
        (CellId::ROOT, CellId::ROOT) => Ok(()),
        (CellId::ROOT, cell) => ioapic
            .assign(&mut Physical, cell, &pins)
            .map_err(|_| "a pin is not the root cell's"),
        (cell, CellId::ROOT) => {
            ioapic.release(&mut Physical, cell);
            Ok(())
        }
        _ => Err("lines move only between the root cell and another cell"),
    }
}
