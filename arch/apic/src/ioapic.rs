//! IOAPIC partitioning by pin: [`IoApic`].
//!
//! An IOAPIC (Intel 82093AA datasheet §3; the ICH/PCH datasheets for the EOI register) has an
//! index register (`IOREGSEL`, 0x00), a data window (`IOWIN`, 0x10) and, from version 0x20, an
//! EOI register (0x40). Behind the window: ID (0), version (1), arbitration (2) and one 64-bit
//! redirection entry per pin at indices `0x10 + 2 pin` (low) and `0x11 + 2 pin` (high).
//!
//! All cells share the register page, so the hypervisor traps it and emulates it:
//!
//! - each CPU has its own `IOREGSEL` (kept here), and every window access runs select and
//!   window on the hardware in one go under the caller's lock;
//! - a pin belongs to one cell ([`IoApic::assign`]); its entry is read and written through,
//!   with the destination of an unmasked entry checked: physical to a CPU of the cell, or
//!   logical, which the hardware gets as physical to the first CPU of the cell that accepts
//!   it (xAPIC logical IDs are chosen by each cell's software and collide across cells: two
//!   kernels both call their first CPU 1); SMI, INIT and the reserved modes are never
//!   written unmasked, ExtINT only by the root cell;
//! - the cell reads back what it wrote (destination mode and field, kept per pin), with the
//!   hardware's mask, delivery status and remote IRR;
//! - another cell's pin reads as masked and ignores writes for the root cell
//!   ([`Outcome::Refused`]), and stops any other cell ([`IoApicViolation`]);
//! - ID, version and arbitration read through; writes to them are dropped;
//! - an EOI is passed on when one of the cell's pins uses the vector.
//!
//! A pin changing cells is masked first; the root cell's entry is kept and written back when
//! the pin comes home.

use core::fmt;

use cellvisor_cell::CellId;
use cellvisor_config::CpuSet;

use crate::icr::{ApicMode, DeliveryMode};
use crate::topology::{Topology, MAX_CPUS};

/// Offset of the index register.
pub const IOREGSEL: u64 = 0x00;
/// Offset of the data window.
pub const IOWIN: u64 = 0x10;
/// Offset of the EOI register (version 0x20 and later).
pub const IOAPIC_EOI: u64 = 0x40;
/// Index of the ID register.
pub const INDEX_ID: u8 = 0x00;
/// Index of the version register (maximum redirection entry in bits 23:16).
pub const INDEX_VERSION: u8 = 0x01;
/// Index of the arbitration register.
pub const INDEX_ARBITRATION: u8 = 0x02;
/// Index of pin 0's redirection entry, low half.
pub const INDEX_REDIRECTION: u8 = 0x10;
/// Pins an IOAPIC can have: (0xff - 0x10 + 1) / 2 indices.
pub const MAX_PINS: usize = 120;

/// Redirection entry bit 16: masked.
pub const ENTRY_MASKED: u32 = 1 << 16;
/// Redirection entry bit 11: logical destination.
const ENTRY_LOGICAL: u32 = 1 << 11;
/// Redirection entry bits 12 (delivery status) and 14 (remote IRR): read-only.
const ENTRY_READ_ONLY: u32 = 1 << 12 | 1 << 14;

/// The physical IOAPIC: one index-then-window access at a time, under the caller's lock.
pub trait IoApicRegisters {
    /// Reads the register at `index`.
    fn read(&mut self, index: u8) -> u32;
    /// Writes the register at `index`.
    fn write(&mut self, index: u8, value: u32);
    /// Writes `vector` to the EOI register.
    fn eoi(&mut self, vector: u8);
}

/// Who accesses the IOAPIC.
#[derive(Clone, Copy, Debug)]
pub struct Accessor<'a> {
    /// The cell.
    pub cell: CellId,
    /// Its CPUs.
    pub cpus: &'a CpuSet,
    /// The CPU it accesses from (index).
    pub cpu: u32,
}

/// One trapped access to the register page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Access {
    /// Offset in the page.
    pub offset: u64,
    /// Access size in bytes.
    pub size: u8,
    /// The value written, or `None` for a read.
    pub write: Option<u32>,
}

/// Why the root cell's access was refused (read as masked or zero, write dropped), or why
/// another cell is stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    /// The pin belongs to another cell (or to none).
    ForeignPin(u8),
    /// An index beyond the IOAPIC's registers.
    NoSuchIndex(u8),
    /// An offset with no register, or an access that is not 32 bits wide (8 bits are fine
    /// for `IOREGSEL`).
    BadAccess {
        /// Offset.
        offset: u64,
        /// Size in bytes.
        size: u8,
    },
    /// An unmasked entry with a delivery mode the cell may not use.
    DeliveryMode(u8, DeliveryMode),
    /// An unmasked entry whose destination is no CPU of the cell.
    Destination {
        /// The pin.
        pin: u8,
        /// The destination field (bits 63:56).
        destination: u8,
        /// Whether it is logical.
        logical: bool,
    },
    /// An EOI for a vector none of the cell's pins uses.
    ForeignVector(u8),
    /// A write to the ID or arbitration register, which the hypervisor keeps.
    Identification(u8),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ForeignPin(pin) => write!(f, "pin {pin} belongs to another cell"),
            Self::NoSuchIndex(index) => write!(f, "no register at index {index:#x}"),
            Self::BadAccess { offset, size } => {
                write!(
                    f,
                    "{size}-byte access at offset {offset:#x}: no such register"
                )
            }
            Self::DeliveryMode(pin, mode) => {
                write!(f, "pin {pin}: delivery mode {mode} is not allowed")
            }
            Self::Destination {
                pin,
                destination,
                logical,
            } => write!(
                f,
                "pin {pin}: {} destination {destination:#x} is no CPU of the cell",
                if *logical { "logical" } else { "physical" }
            ),
            Self::ForeignVector(vector) => {
                write!(
                    f,
                    "EOI for vector {vector:#x}, which none of the cell's pins uses"
                )
            }
            Self::Identification(index) => {
                write!(
                    f,
                    "write to index {index:#x} (identification), which is not the cell's"
                )
            }
        }
    }
}

/// What became of an access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// A read: complete it with this value.
    Read(u32),
    /// A write, done.
    Written,
    /// The root cell's access was refused harmlessly: complete a read with `read`, drop the
    /// write; worth a report.
    Refused {
        /// The value a read returns (masked or zero).
        read: u32,
        /// Why.
        why: Reason,
    },
}

/// A non-root cell's access that breaks the partition: stop the cell. Nothing was changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IoApicViolation {
    /// The access.
    pub access: Access,
    /// Why.
    pub why: Reason,
}

impl fmt::Display for IoApicViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.access.write.is_some() {
            "write"
        } else {
            "read"
        };
        write!(
            f,
            "IOAPIC {kind} at offset {:#x}: {}",
            self.access.offset, self.why
        )
    }
}

impl core::error::Error for IoApicViolation {}

/// Why an ownership change was refused. Nothing changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PinError {
    /// The IOAPIC has no such pin.
    NoSuchPin(u8),
    /// The pin is not the root cell's to give.
    NotRoots {
        /// The pin.
        pin: u8,
        /// Its owner.
        owner: Option<CellId>,
    },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchPin(pin) => write!(f, "pin {pin}: the IOAPIC has no such pin"),
            Self::NotRoots {
                pin,
                owner: Some(owner),
            } => write!(f, "pin {pin} belongs to cell {} already", owner.0),
            Self::NotRoots { pin, owner: None } => write!(f, "pin {pin} belongs to no cell"),
        }
    }
}

impl core::error::Error for PinError {}

/// One pin's books.
#[derive(Clone, Copy, Debug)]
struct Pin {
    owner: Option<CellId>,
    /// The entry's destination mode and high half as its cell wrote them: the hardware holds
    /// a logical destination translated into a physical one.
    logical: bool,
    high: u32,
    /// The root cell's books and hardware entry (low, high) while another cell has the pin.
    saved: (bool, u32, u32, u32),
}

/// One IOAPIC shared by the cells: pin owners, each CPU's index register, the entries as the
/// cells wrote them.
#[derive(Clone, Debug)]
pub struct IoApic {
    pins: [Pin; MAX_PINS],
    count: u8,
    select: [u8; MAX_CPUS],
}

impl IoApic {
    /// Reads the number of pins from the version register; every pin is the root cell's,
    /// with the entry the hardware holds.
    pub fn probe(regs: &mut impl IoApicRegisters) -> Self {
        let count = ((regs.read(INDEX_VERSION) >> 16) & 0xff) as usize + 1;
        let count = count.min(MAX_PINS);
        let mut pins = [Pin {
            owner: None,
            logical: false,
            high: 0,
            saved: (false, 0, ENTRY_MASKED, 0),
        }; MAX_PINS];
        for (pin, books) in pins.iter_mut().enumerate().take(count) {
            books.owner = Some(CellId::ROOT);
            books.logical = regs.read(low_index(pin as u8)) & ENTRY_LOGICAL != 0;
            books.high = regs.read(high_index(pin as u8));
        }
        Self {
            pins,
            count: count as u8,
            select: [0; MAX_CPUS],
        }
    }

    /// The number of pins.
    pub fn pins(&self) -> u8 {
        self.count
    }

    /// The cell pin `pin` belongs to.
    pub fn owner(&self, pin: u8) -> Option<CellId> {
        self.pin(pin).and_then(|p| p.owner)
    }

    fn pin(&self, pin: u8) -> Option<&Pin> {
        self.pins[..usize::from(self.count)].get(usize::from(pin))
    }

    /// Gives `pins` from the root cell to `cell`, all or none: each entry is masked on the
    /// hardware, and the root cell's entry is kept for [`release`](Self::release).
    pub fn assign(
        &mut self,
        regs: &mut impl IoApicRegisters,
        cell: CellId,
        pins: &[u8],
    ) -> Result<(), PinError> {
        for &pin in pins {
            match self.pin(pin) {
                None => return Err(PinError::NoSuchPin(pin)),
                Some(p) if p.owner != Some(CellId::ROOT) => {
                    return Err(PinError::NotRoots {
                        pin,
                        owner: p.owner,
                    })
                }
                Some(_) => {}
            }
        }
        for &pin in pins {
            let low = regs.read(low_index(pin)) & !ENTRY_READ_ONLY;
            let high = regs.read(high_index(pin));
            regs.write(low_index(pin), low | ENTRY_MASKED);
            let books = &mut self.pins[usize::from(pin)];
            books.saved = (books.logical, books.high, low, high);
            books.owner = Some(cell);
            books.logical = low & ENTRY_LOGICAL != 0;
            books.high = high;
        }
        Ok(())
    }

    /// Gives every pin of `cell` back to the root cell with the entry it had: masked first,
    /// then the destination, then the root's low half. Returns how many pins came back.
    pub fn release(&mut self, regs: &mut impl IoApicRegisters, cell: CellId) -> usize {
        if cell == CellId::ROOT {
            return 0;
        }
        let mut count = 0;
        for pin in 0..self.count {
            let books = &mut self.pins[usize::from(pin)];
            if books.owner != Some(cell) {
                continue;
            }
            let (logical, shadow_high, low, high) = books.saved;
            regs.write(low_index(pin), ENTRY_MASKED);
            regs.write(high_index(pin), high);
            regs.write(low_index(pin), low);
            books.owner = Some(CellId::ROOT);
            books.logical = logical;
            books.high = shadow_high;
            count += 1;
        }
        count
    }

    /// The low half of `pin`'s entry as its cell sees it.
    fn guest_low(&self, regs: &mut impl IoApicRegisters, pin: u8) -> u32 {
        let low = regs.read(low_index(pin)) & !ENTRY_LOGICAL;
        if self.pins[usize::from(pin)].logical {
            low | ENTRY_LOGICAL
        } else {
            low
        }
    }

    /// Emulates one access of `by`.
    pub fn access(
        &mut self,
        regs: &mut impl IoApicRegisters,
        topology: &Topology,
        by: Accessor<'_>,
        access: Access,
    ) -> Result<Outcome, IoApicViolation> {
        self.decide(regs, topology, by, access)
            .or_else(|(read, why)| {
                if by.cell == CellId::ROOT {
                    Ok(Outcome::Refused { read, why })
                } else {
                    Err(IoApicViolation { access, why })
                }
            })
    }

    /// The access, or what a refused read returns and why.
    fn decide(
        &mut self,
        regs: &mut impl IoApicRegisters,
        topology: &Topology,
        by: Accessor<'_>,
        access: Access,
    ) -> Result<Outcome, (u32, Reason)> {
        let bad = (
            0,
            Reason::BadAccess {
                offset: access.offset,
                size: access.size,
            },
        );
        let cpu = by.cpu as usize % MAX_CPUS;
        match (access.offset, access.size) {
            (IOREGSEL, 1 | 4) => match access.write {
                Some(value) => {
                    self.select[cpu] = value as u8;
                    Ok(Outcome::Written)
                }
                None => Ok(Outcome::Read(u32::from(self.select[cpu]))),
            },
            (IOWIN, 4) => self.window(regs, topology, by, self.select[cpu], access.write),
            (IOAPIC_EOI, 4) => {
                let Some(value) = access.write else {
                    return Ok(Outcome::Read(0));
                };
                let vector = value as u8;
                let own = (0..self.count).any(|pin| {
                    self.owner(pin) == Some(by.cell) && regs.read(low_index(pin)) as u8 == vector
                });
                if !own {
                    return Err((0, Reason::ForeignVector(vector)));
                }
                regs.eoi(vector);
                Ok(Outcome::Written)
            }
            _ => Err(bad),
        }
    }

    fn window(
        &mut self,
        regs: &mut impl IoApicRegisters,
        topology: &Topology,
        by: Accessor<'_>,
        index: u8,
        write: Option<u32>,
    ) -> Result<Outcome, (u32, Reason)> {
        if index < INDEX_REDIRECTION {
            return match (index, write) {
                (INDEX_ID | INDEX_VERSION | INDEX_ARBITRATION, None) => {
                    Ok(Outcome::Read(regs.read(index)))
                }
                (INDEX_ID | INDEX_VERSION | INDEX_ARBITRATION, Some(_)) => {
                    Err((0, Reason::Identification(index)))
                }
                _ => Err((0, Reason::NoSuchIndex(index))),
            };
        }
        let pin = (index - INDEX_REDIRECTION) / 2;
        let is_high = index & 1 == 1;
        if pin >= self.count {
            return Err((0, Reason::NoSuchIndex(index)));
        }
        if self.owner(pin) != Some(by.cell) {
            let read = if is_high { 0 } else { ENTRY_MASKED };
            return Err((read, Reason::ForeignPin(pin)));
        }
        let Some(value) = write else {
            return Ok(Outcome::Read(if is_high {
                self.pins[usize::from(pin)].high
            } else {
                self.guest_low(regs, pin)
            }));
        };
        let (low, high) = if is_high {
            (self.guest_low(regs, pin) & !ENTRY_READ_ONLY, value)
        } else {
            (value & !ENTRY_READ_ONLY, self.pins[usize::from(pin)].high)
        };
        let (hardware_low, hardware_high) = match check(topology, by, pin, low, high)? {
            Some(apic_id) => (low & !ENTRY_LOGICAL, apic_id << 24 | (high & 0x00ff_ffff)),
            None => (low, high),
        };
        // Destination first, so that an unmasked entry is never live with the old one.
        regs.write(high_index(pin), hardware_high);
        regs.write(low_index(pin), hardware_low);
        let books = &mut self.pins[usize::from(pin)];
        books.logical = low & ENTRY_LOGICAL != 0;
        books.high = high;
        Ok(Outcome::Written)
    }
}

/// Checks the entry `(low, high)` of `by`'s pin. `Some(apic_id)`: a logical destination,
/// delivered as physical to that CPU, the first of the cell's CPUs that accepts it; `None`:
/// the entry goes to the hardware as it is (masked, or physical to a CPU of the cell).
fn check(
    topology: &Topology,
    by: Accessor<'_>,
    pin: u8,
    low: u32,
    high: u32,
) -> Result<Option<u32>, (u32, Reason)> {
    if low & ENTRY_MASKED != 0 {
        return Ok(None);
    }
    let mode = DeliveryMode::from_bits(low >> 8);
    match mode {
        DeliveryMode::Fixed | DeliveryMode::LowestPriority | DeliveryMode::Nmi => {}
        DeliveryMode::ExtInt if by.cell == CellId::ROOT => {}
        _ => return Err((0, Reason::DeliveryMode(pin, mode))),
    }
    let destination = (high >> 24) as u8;
    let logical = low & ENTRY_LOGICAL != 0;
    let refused = (
        0,
        Reason::Destination {
            pin,
            destination,
            logical,
        },
    );
    if logical {
        let cpu = topology
            .logical_targets(by.cpus, ApicMode::XApic, u32::from(destination))
            .iter()
            .next()
            .ok_or(refused)?;
        topology.apic_id(cpu).map(Some).ok_or(refused)
    } else {
        match topology.cpu_of(u32::from(destination)) {
            Some(cpu) if by.cpus.contains(cpu) => Ok(None),
            _ => Err(refused),
        }
    }
}

/// The index of `pin`'s low half.
pub const fn low_index(pin: u8) -> u8 {
    INDEX_REDIRECTION + 2 * pin
}

/// The index of `pin`'s high half.
pub const fn high_index(pin: u8) -> u8 {
    INDEX_REDIRECTION + 2 * pin + 1
}
