//! What the firmware tells about the machine, from its ACPI tables (the `acpi` crate): the
//! CPUs' local APIC IDs from the MADT (ACPI 6.5 §5.2.12), boot CPU first as the firmware
//! lists it.

use core::fmt;
use core::ptr::NonNull;

use acpi::address::AddressSpace;
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::mcfg::Mcfg;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

/// CPUs the hypervisor takes.
pub const MAX_CPUS: usize = 8;

/// Physical memory is reached at its own address (the boot map is one to one).
#[derive(Clone, Copy, Debug)]
struct OneToOne;

impl AcpiHandler for OneToOne {
    unsafe fn map_physical_region<T>(
        &self,
        physical: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let virtual_start = NonNull::new(physical as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: the first 4 GiB are mapped one to one (boot.rs); the tables are the
        // firmware's, below 4 GiB, and only read.
        unsafe { PhysicalMapping::new(physical, virtual_start, size, size, *self) }
    }

    fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}
}

/// Why the CPUs could not be found.
#[derive(Debug)]
pub struct FirmwareError(acpi::AcpiError);

impl fmt::Display for FirmwareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ACPI tables: {:?}", self.0)
    }
}

/// The firmware's ACPI tables, found through the RSDP in the BIOS areas.
fn tables() -> Result<AcpiTables<OneToOne>, FirmwareError> {
    // SAFETY: the BIOS areas the search reads (the EBDA and 0xE0000-0xFFFFF) are mapped and
    // hold no device registers.
    unsafe { AcpiTables::search_for_rsdp_bios(OneToOne) }.map_err(FirmwareError)
}

/// The enabled CPUs' APIC IDs, at most [`MAX_CPUS`]; the second value counts those left out.
pub fn cpus() -> Result<(heapless::Vec<u32, MAX_CPUS>, usize), FirmwareError> {
    let tables = tables()?;
    let madt = tables.find_table::<Madt>().map_err(FirmwareError)?;
    let mut ids = heapless::Vec::new();
    let mut left_out = 0;
    for entry in madt.get().entries() {
        let id = match entry {
            MadtEntry::LocalApic(e) if e.flags & 1 != 0 => u32::from(e.apic_id),
            MadtEntry::LocalX2Apic(e) if e.flags & 1 != 0 => e.x2apic_id,
            _ => continue,
        };
        if ids.push(id).is_err() {
            left_out += 1;
        }
    }
    Ok((ids, left_out))
}

/// The I/O port of the ACPI PM1a control register (the FADT's `X_PM1a_CNT_BLK` or
/// `PM1a_CNT_BLK`), where the operating system writes `SLP_TYP` and `SLP_EN` to power off.
pub fn pm1a_control() -> Result<u64, FirmwareError> {
    let tables = tables()?;
    let fadt = tables.find_table::<Fadt>().map_err(FirmwareError)?;
    let block = fadt.pm1a_control_block().map_err(FirmwareError)?;
    if block.address_space != AddressSpace::SystemIo {
        return Err(FirmwareError(acpi::AcpiError::InvalidGenericAddress));
    }
    Ok(block.address)
}

/// The ECAM window of PCI segment 0 from the MCFG (PCI Firmware Specification 3.2 §4.1.2).
pub fn ecam() -> Result<crate::pci::Ecam, FirmwareError> {
    let tables = tables()?;
    let mcfg = tables.find_table::<Mcfg>().map_err(FirmwareError)?;
    mcfg.entries()
        .iter()
        .find(|entry| entry.pci_segment_group == 0)
        .map(|entry| crate::pci::Ecam {
            // Bus 0's address, whatever the first bus is.
            base: entry.base_address,
            first_bus: entry.bus_number_start,
            last_bus: entry.bus_number_end,
        })
        .ok_or(FirmwareError(acpi::AcpiError::TableMissing(
            acpi::sdt::Signature::MCFG,
        )))
}
