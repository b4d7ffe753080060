//! An in-memory IOAPIC for host tests: [`FakeIoApic`].

use crate::ioapic::{IoApicRegisters, INDEX_REDIRECTION, INDEX_VERSION};

/// An IOAPIC with `pins` redirection entries in memory: version 0x20, the read-only bits of
/// the entries (delivery status, remote IRR) kept on writes, the ID and arbitration registers
/// writable, the EOIs recorded. Entries start masked, as after reset.
#[derive(Clone, Debug)]
pub struct FakeIoApic {
    registers: [u32; 256],
    /// The vectors written to the EOI register, in order.
    pub eois: alloc::vec::Vec<u8>,
}

impl FakeIoApic {
    /// An IOAPIC with `pins` pins (1 to 120).
    pub fn new(pins: u8) -> Self {
        let mut registers = [0; 256];
        registers[usize::from(INDEX_VERSION)] = (u32::from(pins.clamp(1, 120)) - 1) << 16 | 0x20;
        for pin in 0..usize::from(pins.clamp(1, 120)) {
            registers[usize::from(INDEX_REDIRECTION) + 2 * pin] = crate::ioapic::ENTRY_MASKED;
        }
        Self {
            registers,
            eois: alloc::vec::Vec::new(),
        }
    }

    /// The register at `index`, as the hardware holds it.
    pub fn get(&self, index: u8) -> u32 {
        self.registers[usize::from(index)]
    }

    /// Sets the register at `index`, read-only bits included (to model remote IRR).
    pub fn set(&mut self, index: u8, value: u32) {
        self.registers[usize::from(index)] = value;
    }
}

impl IoApicRegisters for FakeIoApic {
    fn read(&mut self, index: u8) -> u32 {
        self.registers[usize::from(index)]
    }

    fn write(&mut self, index: u8, value: u32) {
        const READ_ONLY: u32 = 1 << 12 | 1 << 14;
        let slot = &mut self.registers[usize::from(index)];
        if index == INDEX_VERSION {
            return;
        }
        if index >= INDEX_REDIRECTION && index.is_multiple_of(2) {
            *slot = (*slot & READ_ONLY) | (value & !READ_ONLY);
        } else {
            *slot = value;
        }
    }

    fn eoi(&mut self, vector: u8) {
        self.eois.push(vector);
    }
}
